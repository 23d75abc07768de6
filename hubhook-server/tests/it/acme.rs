//! `[tls.acme]` end to end against Debian's pebble, with real challenge validation: pebble
//! (and its test DNS server, which answers every name with 127.0.0.1) is started here, its
//! VA connects to hubhook's own TLS port for TLS-ALPN-01, and a client that trusts only
//! pebble's root gets a 202 over HTTPS; a renewal swaps the certificate while a connection
//! made before it stays open and keeps working.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use hubhook_testkit::free_port;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

const DOMAIN: &str = "hooks.test";

/// pebble and pebble-challtestsrv, killed on drop.
struct Pebble {
    children: Vec<Child>,
    directory: String,
    management: u16,
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn wait_for_port(port: u16, what: &str) {
    eventually(Duration::from_secs(20), format!("{what} listens"), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
}

/// Starts pebble validating TLS-ALPN-01 on `tls_port`, serving its directory over HTTPS
/// with a certificate written to `dir/pebble.pem` (hubhook's `ca_file`).
fn pebble(dir: &TempDir, tls_port: u16) -> Pebble {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("pebble's certificate");
    dir.write("pebble.pem", &cert.cert.pem());
    dir.write_private("pebble.key", &cert.key_pair.serialize_pem());
    let (directory, management, dns, http) = (free_port(), free_port(), free_port(), free_port());
    let config = dir.write(
        "pebble.json",
        &serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{directory}"),
            "managementListenAddress": format!("127.0.0.1:{management}"),
            "certificate": dir.path().join("pebble.pem"),
            "privateKey": dir.path().join("pebble.key"),
            "httpPort": http,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        }})
        .to_string(),
    );
    let dns_server = Command::new("pebble-challtestsrv")
        .args([
            "-defaultIPv4",
            "127.0.0.1",
            "-defaultIPv6",
            "",
            "-dns01",
            &format!("127.0.0.1:{dns}"),
            "-http01",
            "",
            "-https01",
            "",
            "-tlsalpn01",
            "",
            "-management",
            &format!("127.0.0.1:{}", free_port()),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start pebble-challtestsrv (Debian's pebble)");
    let ca = Command::new("pebble")
        .args([
            "-config",
            config.to_str().expect("utf8"),
            "-dnsserver",
            &format!("127.0.0.1:{dns}"),
        ])
        // Real validation, no sleeps; no nonce rejections to retry.
        .env("PEBBLE_VA_NOSLEEP", "1")
        .env("PEBBLE_WFE_NONCEREJECT", "0")
        .env_remove("PEBBLE_VA_ALWAYS_VALID")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start pebble (Debian's pebble)");
    let pebble = Pebble {
        children: vec![dns_server, ca],
        directory: format!("https://127.0.0.1:{directory}/dir"),
        management,
    };
    wait_for_port(directory, "pebble");
    wait_for_port(management, "pebble's management API");
    pebble
}

/// pebble's current root, which signs what it issues.
fn root(dir: &TempDir, pebble: &Pebble) -> rustls::RootCertStore {
    let out = Command::new("curl")
        .args(["--silent", "--fail", "--cacert", "pebble.pem"])
        .arg(format!("https://127.0.0.1:{}/roots/0", pebble.management))
        .current_dir(dir.path())
        .output()
        .expect("curl (Debian's curl)");
    assert!(
        out.status.success(),
        "pebble's root: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&out.stdout) {
        roots.add(cert.expect("PEM")).expect("root");
    }
    roots
}

/// A TLS connection to hubhook as `DOMAIN`, trusting only `roots`.
async fn connect(
    addr: SocketAddr,
    roots: &rustls::RootCertStore,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from(DOMAIN).expect("name");
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("a TLS handshake that verifies against pebble's root")
}

/// One keep-alive POST of the documented payload; the status.
async fn post<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(io: &mut S) -> u16 {
    let body = hubhook_core::message::EXAMPLE_PAYLOAD;
    let head = format!(
        "POST /hubhook?apikey={KEY} HTTP/1.1\r\nHost: {DOMAIN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    io.write_all(head.as_bytes()).await.expect("write");
    io.write_all(body.as_bytes()).await.expect("write");
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = io.read(&mut buf).await.expect("read");
        assert!(n > 0, "the connection closed");
        seen.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&seen);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(str::to_owned)
                })
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if body.len() >= length {
                return head
                    .split(' ')
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
            }
        }
    }
}

fn leaf(stream: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> Vec<u8> {
    stream
        .get_ref()
        .1
        .peer_certificates()
        .expect("certificates")[0]
        .to_vec()
}

fn hubhook_config(dir: &TempDir, port: u16, pebble: &Pebble, renew: &str) -> std::path::PathBuf {
    dir.write(
        "hubhook.toml",
        &format!(
            "listen = \"127.0.0.1:{port}\"\ndata_dir = \"data\"\n[auth]\napi_keys = [\"{KEY}\"]\n\
             [tls.acme]\ndomains = [\"{DOMAIN}\"]\nemail = \"ops@{DOMAIN}\"\ndirectory = \"{}\"\n\
             ca_file = \"pebble.pem\"\ncheck_every = \"2s\"\n{renew}",
            pebble.directory
        ),
    )
}

fn installed(server: &Server) -> usize {
    server
        .stderr()
        .matches("installed a new ACME certificate")
        .count()
}

fn wait_for_install(server: &Server, at_least: usize) {
    eventually(
        Duration::from_secs(90),
        || format!("a certificate installed:\n{}", server.stderr()),
        || (installed(server) >= at_least).then_some(()),
    );
}

#[test]
fn acme_certificates_from_pebble_serve_and_renew_without_dropping_a_connection() {
    if Command::new("pebble").arg("-h").output().is_err() {
        panic!("pebble is missing (Debian's pebble; .ci/run installs it)");
    }
    let dir = TempDir::new("acme");
    let port = free_port();
    let pebble = pebble(&dir, port);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let rt = tokio::runtime::Runtime::new().expect("runtime");

    // First start: no certificate yet; hubhook fetches one, validated on its own port.
    hubhook_config(&dir, port, &pebble, "");
    let server = Server::start(&["--config", "hubhook.toml"], dir.path(), &[]);
    wait_for_install(&server, 1);
    let roots = root(&dir, &pebble);
    rt.block_on(async {
        let mut tls = connect(addr, &roots).await;
        assert_eq!(post(&mut tls).await, 202);
    });
    assert!(
        Path::new(&dir.path().join("data/acme/cert.pem")).exists(),
        "cached"
    );
    let mode = std::fs::metadata(dir.path().join("data/acme/key.pem"))
        .expect("cached key")
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );
    assert!(server.terminate().success());

    // Again, with every certificate due: it serves the cached one at once, renews, and
    // a connection opened before the renewal keeps working on its old certificate.
    hubhook_config(&dir, port, &pebble, "renew_before = \"100000d\"\n");
    let server = Server::start(&["--config", "hubhook.toml"], dir.path(), &[]);
    rt.block_on(async {
        let mut before = connect(addr, &roots).await;
        let old = leaf(&before);
        assert_eq!(post(&mut before).await, 202);
        // (The first start may still be installing the cached one's renewal: wait for
        // one more install than seen now.)
        let seen = installed(&server);
        wait_for_install(&server, seen + 1);
        let after = connect(addr, &roots).await;
        assert_ne!(leaf(&after), old, "a new certificate after the renewal");
        assert_eq!(
            post(&mut before).await,
            202,
            "the connection from before still works"
        );
    });
    assert!(server.terminate().success());
}
