//! `hubhook send`: what it prints about the URL, and which certificates `--cacert` trusts.

use std::path::Path;
use std::process::Command;

use crate::support::*;

/// A key planted in the URLs: it must never be printed.
const PLANTED: &str = "planted-secret-5f0e1d2c3b4a";

/// Runs `hubhook send ARGS`; returns the exit code, stdout and stderr.
fn send(args: &[&str], cwd: &Path) -> (i32, String, String) {
    let out = hubhook(&[&["send"], args].concat(), cwd);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A port on 127.0.0.1 that nothing listens on (bound, then let go).
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

#[test]
fn send_never_prints_the_key_or_password_in_a_url() {
    let dir = TempDir::new("send-redact");
    let port = closed_port();
    // (URL, words the error must still have)
    let cases = [
        (
            format!("htps://127.0.0.1:1/hubhook?apikey={PLANTED}"),
            vec!["htps://127.0.0.1:1/hubhook?…", "http://"],
        ),
        (
            format!("127.0.0.1:8080/hubhook?apikey={PLANTED}"),
            vec!["127.0.0.1:8080/hubhook?…", "http://"],
        ),
        (
            format!("localhost:8080?apikey={PLANTED}"),
            vec!["localhost:8080?…", "http://"],
        ),
        (
            format!("http://127.0.0.1:{port}/hub hook?apikey={PLANTED}"),
            vec!["not a URL"],
        ),
        (
            format!("http://[::1/hubhook?apikey={PLANTED}"),
            vec!["not a URL"],
        ),
        (
            format!("http://admin:{PLANTED}@127.0.0.1:{port}/hubhook"),
            vec!["cannot connect to 127.0.0.1:"],
        ),
        (
            format!("http:/admin:{PLANTED}@127.0.0.1:{port}/hubhook?apikey={PLANTED}"),
            vec![],
        ),
        (
            format!("ftp://admin:{PLANTED}@127.0.0.1:{port}/hubhook"),
            vec!["ftp://127.0.0.1:", "http://"],
        ),
        (
            format!("http://127.0.0.1:{port}/hubhook?apikey={PLANTED}"),
            vec!["cannot connect to 127.0.0.1:"],
        ),
        (
            format!("https://127.0.0.1:{port}/hubhook?apikey={PLANTED}"),
            vec!["cannot connect to 127.0.0.1:"],
        ),
    ];
    for (url, words) in &cases {
        let (code, stdout, stderr) = send(&[url, "--key", KEY], dir.path());
        assert_eq!(code, 1, "{url}: {stdout}{stderr}");
        for text in [&stdout, &stderr] {
            assert!(!text.contains(PLANTED), "{url} printed its secret: {text}");
            assert!(!text.contains("apikey"), "{url} printed its query: {text}");
        }
        assert!(stderr.starts_with("error: "), "{url}: {stderr}");
        for word in words {
            assert!(stderr.contains(word), "{url}: no {word:?} in {stderr}");
        }
    }
}

/// Makes a self-signed certificate as most people do (`openssl req -x509`, which marks it
/// CA:TRUE), as `NAME.pem` and `NAME.key` in `dir`.
fn openssl_self_signed(dir: &TempDir, name: &str, cn: &str, san: &str) {
    let version = Command::new("openssl").arg("version").output();
    assert!(
        version.is_ok_and(|v| v.status.success()),
        "these tests need the openssl command (Debian's package openssl)"
    );
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
        ])
        .args([
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
        ])
        .args(["-subj", &format!("/CN={cn}"), "-addext"])
        .arg(format!("subjectAltName={san}"))
        .current_dir(dir.path())
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl req failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn tls_server(dir: &TempDir, name: &str) -> Server {
    let config = dir.write(
        &format!("{name}.toml"),
        &format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = \"data-{name}\"\n\
             [tls]\ncert = \"{name}.pem\"\nkey = \"{name}.key\"\n\
             [auth]\napi_keys = [\"{KEY}\"]\n"
        ),
    );
    let server = Server::start(
        &["--config", config.to_str().expect("utf8")],
        dir.path(),
        &[],
    );
    assert_eq!(server.scheme, "https");
    server
}

#[test]
fn cacert_trusts_an_openssl_self_signed_certificate_and_nothing_else() {
    let dir = TempDir::new("send-selfsigned");
    openssl_self_signed(&dir, "cert", "localhost", "DNS:localhost,IP:127.0.0.1");
    openssl_self_signed(&dir, "other", "localhost", "DNS:localhost,IP:127.0.0.1");
    openssl_self_signed(&dir, "elsewhere", "other.example", "DNS:other.example");
    let mut server = tls_server(&dir, "cert");
    let port = server.addr.port();

    // The server's own certificate, given as its CA, as curl --cacert takes it.
    for host in ["localhost", "127.0.0.1"] {
        let url = format!("https://{host}:{port}/hubhook");
        let (code, stdout, stderr) =
            send(&[&url, "--key", KEY, "--cacert", "cert.pem"], dir.path());
        assert_eq!(code, 0, "{url}: {stdout}{stderr}");
        assert!(stdout.starts_with("HTTP 202 Accepted"), "{url}: {stdout}");
    }
    server.wait_for_stdout("push svendowideit/testhook:latest");

    // Another self-signed certificate is no stand-in for it: refused, in words.
    let url = format!("https://localhost:{port}/hubhook");
    let (code, stdout, stderr) = send(&[&url, "--key", KEY, "--cacert", "other.pem"], dir.path());
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(
        stderr.starts_with(&format!(
            "error: TLS handshake with localhost:{port} failed: "
        )),
        "{stderr}"
    );
    assert!(stderr.contains("other.pem"), "{stderr}");
    assert!(stderr.contains("certificate"), "{stderr}");
    for debug in ["Other(", "OtherError", "CaUsedAsEndEntity", "UnknownIssuer"] {
        assert!(!stderr.contains(debug), "a Debug dump: {stderr}");
    }
    assert!(server.terminate().success());

    // The certificate itself, but for another name: the name is still checked.
    let server = tls_server(&dir, "elsewhere");
    let url = server.url("/hubhook");
    let (code, stdout, stderr) = send(
        &[&url, "--key", KEY, "--cacert", "elsewhere.pem"],
        dir.path(),
    );
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(stderr.contains("not valid for"), "{stderr}");
    assert!(stderr.contains("127.0.0.1"), "{stderr}");
    assert!(stderr.contains("other.example"), "{stderr}");
    for debug in ["Other(", "OtherError", "CaUsedAsEndEntity"] {
        assert!(!stderr.contains(debug), "a Debug dump: {stderr}");
    }
    assert!(server.terminate().success());
}

/// The seed's setup: nginx in front, with a certificate from `openssl req -x509` (marked
/// CA:TRUE) and the repository's nginx snippet; `send --cacert` gets its 202 through it.
#[test]
fn cacert_through_nginx_with_an_openssl_certificate() {
    if std::process::Command::new("nginx")
        .arg("-v")
        .output()
        .is_err()
    {
        panic!("nginx is missing (Debian's nginx-light; .ci/run installs it)");
    }
    let dir = TempDir::new("send-nginx");
    openssl_self_signed(&dir, "cert", "localhost", "DNS:localhost,IP:127.0.0.1");
    let hub = dir.write(
        "hub.toml",
        &format!("listen = \"127.0.0.1:0\"\ndata_dir = \"data\"\n[auth]\napi_keys = [\"{KEY}\"]\n"),
    );
    let server = Server::start(&["--config", hub.to_str().expect("utf8")], dir.path(), &[]);
    let path = |name: &str| dir.path().join(name).display().to_string();
    let nginx = hubhook_testkit::Nginx::start(&dir, |port| {
        format!(
            "  server {{\n    listen 127.0.0.1:{port} ssl;\n    ssl_certificate {cert};\n    ssl_certificate_key {key};\n\
                 location = /hubhook {{ proxy_pass http://{upstream}; client_max_body_size 1m; }}\n  }}",
            cert = path("cert.pem"),
            key = path("cert.key"),
            upstream = server.addr,
        )
    });
    let port = nginx.port;
    let url = format!("https://localhost:{port}/hubhook");
    let (code, stdout, stderr) = send(&[&url, "--key", KEY, "--cacert", "cert.pem"], dir.path());
    drop(nginx);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.starts_with("HTTP 202 Accepted"), "{stdout}");
    drop(server);
}

/// `http://` sent to an HTTPS port says what is wrong and what to do.
#[test]
fn http_to_an_https_port_suggests_https() {
    let dir = TempDir::new("send-http-to-tls");
    openssl_self_signed(&dir, "cert", "localhost", "DNS:localhost,IP:127.0.0.1");
    let server = tls_server(&dir, "cert");
    let url = format!("http://127.0.0.1:{}/hubhook", server.addr.port());
    let (code, _, stderr) = send(&[&url, "--key", KEY], dir.path());
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("an HTTPS server? try https://"), "{stderr}");
}
