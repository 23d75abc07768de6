//! The shell handler's environment, provider by provider, against the table in CONFIG.md:
//! every variable set for every provider, empty where the provider does not say.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::support::*;

const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const SECRET: &str = "github-secret-for-the-env-test";

/// The variable names CONFIG.md's shell table lists, in its order.
fn documented_names() -> Vec<String> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/CONFIG.md"))
        .expect("docs/CONFIG.md");
    doc.lines()
        .filter_map(|line| line.strip_prefix("| `HUBHOOK_"))
        .filter_map(|rest| rest.split_once('`'))
        .map(|(name, _)| format!("HUBHOOK_{name}"))
        .collect()
}

/// `VAR=value` lines as a map, without the `HUBHOOK_*` variables the test itself runs
/// with (CI sets `HUBHOOK_REQUIRE_DOCKER`), which the program inherits like any other.
fn parse_env(text: &str) -> BTreeMap<String, String> {
    let inherited: Vec<String> = std::env::vars().map(|(k, _)| k).collect();
    text.lines()
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| !inherited.iter().any(|i| i == k))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Waits for the file the handler writes for `source` and reads it.
fn written(dir: &Path, source: &str, server: &Server) -> BTreeMap<String, String> {
    let path = dir.join(format!("env-{source}"));
    eventually(
        Duration::from_secs(20),
        || {
            format!(
                "the handler writes the env for {source}:\n{}",
                server.stderr()
            )
        },
        || {
            let text = std::fs::read_to_string(&path).ok()?;
            text.ends_with("END\n").then(|| parse_env(&text))
        },
    )
}

fn delivery_id(body: &str) -> String {
    let value: serde_json::Value = serde_json::from_str(body).expect("202 body is JSON");
    value["delivery"]
        .as_str()
        .unwrap_or_else(|| panic!("no delivery in {body}"))
        .to_owned()
}

/// `openssl dgst -sha256 -hmac SECRET` of `body`: GitHub's signature, made by a tool
/// hubhook does not share code with.
fn github_signature(body: &str) -> String {
    let mut child = std::process::Command::new("openssl")
        .args(["dgst", "-sha256", "-hmac", SECRET, "-r"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("openssl is needed for this test");
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(body.as_bytes())
        .expect("write body");
    let out = child.wait_with_output().expect("openssl ran");
    let text = String::from_utf8_lossy(&out.stdout);
    let hex = text.split_whitespace().next().expect("a digest");
    format!("sha256={hex}")
}

fn expect(pairs: &[(&str, &str)], delivery: &str) -> BTreeMap<String, String> {
    let mut map: BTreeMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (format!("HUBHOOK_{k}"), (*v).to_owned()))
        .collect();
    map.insert("HUBHOOK_DELIVERY".into(), delivery.to_owned());
    map.insert("HUBHOOK_ATTEMPT".into(), "1".into());
    map
}

#[test]
fn every_provider_gives_the_shell_the_documented_environment() {
    let dir = TempDir::new("environment");
    let out = dir.path().display().to_string();
    let config = config(
        &dir,
        &format!(
            "[[hook]]\npath = \"/registry\"\nprovider = \"registry\"\nregistry = \"127.0.0.1:5000\"\napi_keys = [\"{KEY}\"]\n\
             [[hook]]\npath = \"/github\"\nprovider = \"github\"\nsecret = \"{SECRET}\"\n\
             [[hook]]\npath = \"/ci\"\nprovider = \"generic\"\nrepo_pointer = \"/image/name\"\ntag_pointer = \"/image/tag\"\n\
             digest_pointer = \"/image/digest\"\napi_keys = [\"{KEY}\"]\n\
             [[handler]]\nname = \"env\"\ntype = \"shell\"\n\
             command = [\"sh\", \"-c\", \"(env | grep ^HUBHOOK_ | sort; echo END) > \\\"$OUT/env-$HUBHOOK_SOURCE.tmp\\\" && mv \\\"$OUT/env-$HUBHOOK_SOURCE.tmp\\\" \\\"$OUT/env-$HUBHOOK_SOURCE\\\"\"]\n\
             env = {{ OUT = \"{out}\" }}\n"
        ),
    );
    // `[auth]` from `config` keeps the Docker Hub hook at its default path.
    let mut server = Server::start(
        &["--config", config.to_str().expect("utf8")],
        dir.path(),
        &[],
    );
    server.wait_for_stderr("listening on");
    let names = documented_names();
    assert_eq!(names.len(), 10, "CONFIG.md's table: {names:?}");

    // Docker Hub: the documented payload. No host, no digest.
    let (status, body) = request(
        server.addr,
        "POST",
        &format!("/hubhook?apikey={KEY}"),
        &["Content-Type: application/json"],
        hubhook_core::message::EXAMPLE_PAYLOAD.as_bytes(),
    );
    assert_eq!(status, 202, "{body}");
    let hub = written(dir.path(), "dockerhub", &server);
    let want = expect(
        &[
            ("REPO", "svendowideit/testhook"),
            ("TAG", "latest"),
            ("IMAGE", "svendowideit/testhook:latest"),
            ("REGISTRY", ""),
            ("DIGEST", ""),
            ("PUSHER", "trustedbuilder"),
            ("PUSHED_AT", "1417566161"),
            ("SOURCE", "dockerhub"),
        ],
        &delivery_id(&body),
    );
    assert_eq!(hub, want);

    // A registry notification: host from the hook's `registry`, time from the event.
    let envelope = format!(
        r#"{{"events":[{{"id":"ev-env-1","timestamp":"2016-03-09T14:44:26.402973972-08:00","action":"push",
        "target":{{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","repository":"team/app",
        "tag":"v1","digest":"{DIGEST}"}},"request":{{"host":"127.0.0.1:5000"}},"actor":{{"name":"alice"}}}}]}}"#
    );
    let (status, body) = request(
        server.addr,
        "POST",
        &format!("/registry?apikey={KEY}"),
        &["Content-Type: application/json"],
        envelope.as_bytes(),
    );
    assert_eq!(status, 202, "{body}");
    let registry = written(dir.path(), "registry", &server);
    let want = expect(
        &[
            ("REPO", "team/app"),
            ("TAG", "v1"),
            ("IMAGE", &format!("127.0.0.1:5000/team/app@{DIGEST}")),
            ("REGISTRY", "127.0.0.1:5000"),
            ("DIGEST", DIGEST),
            ("PUSHER", "alice"),
            ("PUSHED_AT", "1457563466"),
            ("SOURCE", "registry"),
        ],
        &delivery_id(&body),
    );
    assert_eq!(registry, want);

    // GitHub's package event, signed with openssl.
    let package = format!(
        r#"{{"action":"published","package":{{"name":"Site","package_type":"CONTAINER","owner":{{"login":"Acme"}},
        "package_version":{{"updated_at":"2021-03-03T13:36:35Z","container_metadata":{{"tag":{{"name":"v3","digest":"{DIGEST}"}}}}}},
        "registry":{{"url":"https://ghcr.io"}}}},"sender":{{"login":"bob"}}}}"#
    );
    let signature = format!("X-Hub-Signature-256: {}", github_signature(&package));
    let (status, body) = request(
        server.addr,
        "POST",
        "/github",
        &[
            "Content-Type: application/json",
            "X-GitHub-Event: package",
            &signature,
        ],
        package.as_bytes(),
    );
    assert_eq!(status, 202, "{body}");
    let github = written(dir.path(), "github", &server);
    let want = expect(
        &[
            ("REPO", "acme/site"),
            ("TAG", "v3"),
            ("IMAGE", &format!("ghcr.io/acme/site@{DIGEST}")),
            ("REGISTRY", "ghcr.io"),
            ("DIGEST", DIGEST),
            ("PUSHER", "bob"),
            ("PUSHED_AT", "1614778595"),
            ("SOURCE", "github"),
        ],
        &delivery_id(&body),
    );
    assert_eq!(github, want);

    // A generic sender: no pusher, and the time it arrived.
    let before = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let ci = format!(
        r#"{{"image":{{"name":"registry.example.com/team/api","tag":"v4","digest":"{DIGEST}"}}}}"#
    );
    let (status, body) = request(
        server.addr,
        "POST",
        &format!("/ci?apikey={KEY}"),
        &["Content-Type: application/json"],
        ci.as_bytes(),
    );
    assert_eq!(status, 202, "{body}");
    let after = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let mut generic = written(dir.path(), "generic", &server);
    let at: u64 = generic["HUBHOOK_PUSHED_AT"]
        .parse()
        .expect("PUSHED_AT is a number");
    assert!(
        (before..=after).contains(&at),
        "{at} not in {before}..={after}"
    );
    generic.insert("HUBHOOK_PUSHED_AT".into(), "received".into());
    let want = expect(
        &[
            ("REPO", "team/api"),
            ("TAG", "v4"),
            ("IMAGE", &format!("registry.example.com/team/api@{DIGEST}")),
            ("REGISTRY", "registry.example.com"),
            ("DIGEST", DIGEST),
            ("PUSHER", ""),
            ("PUSHED_AT", "received"),
            ("SOURCE", "generic"),
        ],
        &delivery_id(&body),
    );
    assert_eq!(generic, want);

    // Each provider set exactly the variables CONFIG.md lists.
    for env in [&hub, &registry, &github, &generic] {
        let mut got: Vec<&String> = env.keys().collect();
        let mut documented: Vec<&String> = names.iter().collect();
        got.sort();
        documented.sort();
        assert_eq!(got, documented);
    }

    // `deliveries list` shows the repository as `docker pull` names it, and `--repo` takes
    // what it shows.
    assert!(server.terminate().success());
    let list = |args: &[&str]| {
        let mut all = vec!["deliveries", "--config", "hubhook.toml", "list"];
        all.extend_from_slice(args);
        let out = hubhook(&all, dir.path());
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let everything = list(&[]);
    assert!(
        everything.contains("127.0.0.1:5000/team/app:v1"),
        "{everything}"
    );
    assert!(everything.contains("ghcr.io/acme/site:v3"), "{everything}");
    assert!(
        everything.contains(" svendowideit/testhook:latest"),
        "{everything}"
    );
    let one = list(&["--repo", "127.0.0.1:5000/team/app"]);
    assert_eq!(one.lines().count(), 2, "a header and one delivery:\n{one}");
    assert!(one.contains("127.0.0.1:5000/team/app:v1"), "{one}");
    let hub_only = list(&["--repo", "svendowideit/testhook"]);
    assert_eq!(hub_only.lines().count(), 2, "{hub_only}");
}
