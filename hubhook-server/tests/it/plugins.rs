//! Plugins built here (cargo for Rust, cc for C) and loaded by the real `hubhook` binary.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{mpsc, OnceLock};
use std::time::Duration;

use crate::support::*;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Where the test plugins are built; outside the workspace's own target dirs' crates.
fn out_dir() -> PathBuf {
    root().join("target/plugins")
}

/// The plugins, built once per test run.
struct Built {
    notify: PathBuf,
    misbehave: PathBuf,
    pushlog: PathBuf,
    wrong_version: PathBuf,
    small_table: PathBuf,
    no_symbol: PathBuf,
    null_table: PathBuf,
}

fn plugins() -> &'static Built {
    static BUILT: OnceLock<Built> = OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        for manifest in [
            "examples/plugin-notify/Cargo.toml",
            "hubhook-server/tests/plugins/misbehave/Cargo.toml",
        ] {
            let out = Command::new(&cargo)
                .args(["build", "--release", "--quiet", "--manifest-path"])
                .arg(root().join(manifest))
                .arg("--target-dir")
                .arg(out_dir())
                .output()
                .expect("run cargo");
            assert!(
                out.status.success(),
                "building {manifest} failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let c_dir = out_dir().join("c");
        std::fs::create_dir_all(&c_dir).expect("c dir");
        let cc = |source: &str, define: Option<&str>, name: &str| -> PathBuf {
            let lib = c_dir.join(name);
            let mut command = Command::new("cc");
            command
                .args([
                    "-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-pthread", "-I",
                ])
                .arg(root());
            if let Some(d) = define {
                command.arg(format!("-D{d}"));
            }
            let out = command
                .arg("-o")
                .arg(&lib)
                .arg(root().join(source))
                .output()
                .expect("run cc");
            assert!(
                out.status.success(),
                "cc {source} failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            lib
        };
        let bad = "hubhook-server/tests/plugins/bad_abi.c";
        Built {
            notify: out_dir().join("release/libhubhook_notify.so"),
            misbehave: out_dir().join("release/libhubhook_misbehave.so"),
            pushlog: cc("examples/plugin-c/pushlog.c", None, "libpushlog.so"),
            wrong_version: cc(bad, Some("WRONG_VERSION"), "libwrong_version.so"),
            small_table: cc(bad, Some("SMALL_TABLE"), "libsmall_table.so"),
            no_symbol: cc(bad, Some("NO_SYMBOL"), "libno_symbol.so"),
            null_table: cc(bad, Some("NULL_TABLE"), "libnull_table.so"),
        }
    })
}

/// An HTTP receiver on 127.0.0.1: hands over each request body, answers 200.
fn receiver() -> (String, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/pushes", listener.local_addr().expect("addr"));
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let mut data = Vec::new();
            let mut chunk = [0u8; 4096];
            // Read the head, then as much body as Content-Length says.
            let body = loop {
                let Ok(n) = stream.read(&mut chunk) else {
                    break None;
                };
                if n == 0 {
                    break None;
                }
                data.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&data).into_owned();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let length: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().to_owned())
                        })
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    if body.len() >= length {
                        break Some(body.to_owned());
                    }
                }
            };
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            if let Some(body) = body {
                let _ = tx.send(body);
            }
        }
    });
    (url, rx)
}

fn plugin_table(name: &str, path: &Path, config: &str) -> String {
    format!("[[handler]]\nname = \"{name}\"\ntype = \"plugin\"\npath = \"{}\"\ntimeout = \"2s\"\n[handler.config]\n{config}\n", path.display())
}

#[test]
fn rust_and_c_plugins_receive_a_posted_webhook() {
    let built = plugins();
    let dir = TempDir::new("plugins-ok");
    let (url, pushes) = receiver();
    let log = dir.path().join("pushes.jsonl");
    let config = config(
        &dir,
        &format!(
            "{}{}",
            plugin_table("notify", &built.notify, &format!("url = \"{url}\"")),
            plugin_table(
                "pushlog",
                &built.pushlog,
                &format!("file = \"{}\"", log.display())
            ),
        ),
    );
    let mut server = Server::start(
        &["--config", config.to_str().expect("utf8")],
        dir.path(),
        &[],
    );
    let startup = server.wait_for_stderr("listening on");
    assert!(
        startup.contains("2 handler(s): notify, pushlog"),
        "{startup}"
    );

    let (status, answer) = request(
        server.addr,
        "POST",
        &format!("/hubhook?apikey={KEY}"),
        &[],
        hubhook_core::message::EXAMPLE_PAYLOAD.as_bytes(),
    );
    assert_eq!(status, 202, "{answer}");
    let delivery: serde_json::Value = serde_json::from_str(&answer).expect("json");
    let delivery = delivery["delivery"].as_str().expect("id").to_owned();

    // The Rust plugin posted its notification to the receiver.
    let body = pushes
        .recv_timeout(Duration::from_secs(20))
        .expect("a notification");
    let note: serde_json::Value = serde_json::from_str(&body).expect("notification is JSON");
    assert_eq!(note["event"], "push");
    assert_eq!(note["image"], "svendowideit/testhook:latest");
    assert_eq!(note["pusher"], "trustedbuilder");
    assert_eq!(note["delivery"], delivery.as_str());

    // The C plugin appended the delivery it was handed.
    let line = server.wait_for_stderr("appended the delivery");
    assert!(line.contains("pushlog"), "{line}");
    let written = std::fs::read_to_string(&log).expect("log file");
    let entry: serde_json::Value =
        serde_json::from_str(written.lines().next().expect("a line")).expect("JSON line");
    assert_eq!(entry["delivery"], delivery.as_str());
    assert_eq!(entry["attempt"], 1);
    assert_eq!(
        entry["message"]["repository"]["repo_name"],
        "svendowideit/testhook"
    );
    server.wait_for_stderr("notified 127.0.0.1");
    assert!(server.terminate().success());
}

#[test]
fn bad_plugins_are_refused_naming_the_library_and_the_reason() {
    let built = plugins();
    let dir = TempDir::new("plugins-bad");
    let text_file = dir.path().join("not-a-library.so");
    std::fs::write(&text_file, "just text\n").expect("write");
    let missing = dir.path().join("missing.so");
    // (library, its [handler.config], the reason after "plugin <library>: ")
    let cases: [(&PathBuf, &str, &str); 9] = [
        (&missing, "", "cannot load the library: "),
        (&text_file, "", "cannot load the library: "),
        (&built.no_symbol, "", "no `hubhook_plugin_v1` symbol"),
        (&built.null_table, "", "hubhook_plugin_v1 returned no table"),
        (
            &built.wrong_version,
            "",
            "ABI version 99, this hubhook speaks version 1",
        ),
        (
            &built.small_table,
            "",
            "its table is 48 bytes, version 1 needs 72",
        ),
        (
            &built.misbehave,
            "mode = \"refuse\"",
            "init failed: refusing to start: mode is \"refuse\"",
        ),
        (
            &built.misbehave,
            "mode = \"init-panic\"",
            "init failed: init panicked: init fell over",
        ),
        (&built.pushlog, "", "init failed: config needs \"file\""),
    ];
    for (path, plugin_config, reason) in cases {
        let want = format!("plugin {}: {reason}", path.display());
        config(&dir, &plugin_table("p", path, plugin_config));
        let out = hubhook(&["check", "--config", "hubhook.toml"], dir.path());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        let prefix = "error: hubhook.toml:6: handler[0].path: ";
        // (A panicking plugin's own panic hook may print first: look for our line.)
        assert!(
            stderr
                .lines()
                .any(|l| l.starts_with(&format!("{prefix}{want}"))),
            "want: {prefix}{want}\ngot:  {stderr}"
        );
        // And `serve` refuses to start with the same words.
        let out = hubhook(&["serve", "--config", "hubhook.toml"], dir.path());
        assert_eq!(out.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&out.stderr).contains(&want));
    }
}

#[test]
fn panics_and_hangs_are_contained_and_the_next_delivery_is_fine() {
    let built = plugins();
    let dir = TempDir::new("plugins-contained");
    let config = config(
        &dir,
        &format!(
            "{}{}{}",
            plugin_table("panicky", &built.misbehave, "mode = \"panic\""),
            // Every call its own run, at once: the flood below reaches the plugin's cap.
            plugin_table("hangs", &built.misbehave, "mode = \"hang\"").replace(
                "timeout = \"2s\"\n",
                "timeout = \"2s\"\ncoalesce = \"off\"\nmax_concurrency = 32\n"
            ),
            plugin_table("fails", &built.misbehave, "mode = \"fail\""),
        ),
    );
    let mut server = Server::start(
        &["--config", config.to_str().expect("utf8")],
        dir.path(),
        &[],
    );
    let addr = server.addr;
    let post = |tag: &str| post_push(addr, tag);
    assert_eq!(post("latest"), 202);
    let panicked = server.wait_for_stderr("handler panicked");
    assert!(
        panicked.contains("handler=\"panicky\"")
            && panicked.contains("the plugin panicked on acme/site:latest"),
        "{panicked}"
    );
    let failed = server.wait_for_stderr("failing acme/site:latest on purpose");
    assert!(failed.contains("handler=\"fails\""), "{failed}");
    let timed_out = server.wait_for_stderr("timed out after 2s");
    assert!(timed_out.contains("handler=\"hangs\""), "{timed_out}");

    // The server still serves, and the same plugins handle the next delivery normally.
    assert_eq!(request(server.addr, "GET", "/healthz", &[], b"").0, 200);
    assert_eq!(post("ok"), 202);
    eventually(
        Duration::from_secs(10),
        "three runs of the good delivery",
        || {
            (server
                .stderr()
                .matches("misbehave saw acme/site:ok")
                .count()
                == 3)
                .then_some(())
        },
    );
    assert_eq!(
        server
            .stderr()
            .matches("misbehave saw acme/site:ok")
            .count(),
        3,
        "{}",
        server.stderr()
    );
    let (_, metrics) = request(server.addr, "GET", "/metrics", &[], b"");
    assert!(
        metrics.contains("hubhook_handler_runs_total{handler=\"panicky\",outcome=\"panic\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("hubhook_handler_runs_total{handler=\"hangs\",outcome=\"timeout\"} 1"),
        "{metrics}"
    );
    // A hung plugin holds a blocking thread per call; past 16 such calls it fails fast
    // instead of taking every blocking thread of the server.
    for _ in 0..16 {
        assert_eq!(post("latest"), 202);
    }
    let busy = server.wait_for_stderr("calls still running");
    assert!(busy.contains("handler=\"hangs\""), "{busy}");
    assert_eq!(request(server.addr, "GET", "/healthz", &[], b"").0, 200);
    assert!(server.terminate().success());
}

#[test]
fn the_rust_plugin_uses_other_dependency_versions_than_the_host() {
    let version = |lock: &str, krate: &str| -> String {
        let text = std::fs::read_to_string(root().join(lock)).expect("lock file");
        let at = text
            .find(&format!("name = \"{krate}\"\nversion = \""))
            .unwrap_or_else(|| panic!("{krate} not in {lock}"));
        text[at..].lines().nth(1).unwrap_or("").to_owned()
    };
    for krate in ["tokio", "serde_json"] {
        let host = version("Cargo.lock", krate);
        let plugin = version("examples/plugin-notify/Cargo.lock", krate);
        assert_ne!(
            host, plugin,
            "{krate}: the plugin should pin another version than the host"
        );
    }
    // And it works: rust_and_c_plugins_receive_a_posted_webhook loads exactly that build.
    assert!(plugins().notify.exists());
}

/// Every relative path in the config resolves from the config file's folder, however
/// `--config` names the file: a plugin beside it loads with `name.toml`, `./name.toml` and
/// `dir/name.toml` alike (before, the bare form made dlopen search the library path).
#[test]
fn a_relative_plugin_path_is_the_config_files_neighbour() {
    let built = plugins();
    let dir = TempDir::new("relative-plugin");
    std::fs::create_dir_all(dir.path().join("conf")).expect("conf dir");
    for folder in [dir.path().to_path_buf(), dir.path().join("conf")] {
        std::fs::copy(&built.pushlog, folder.join("pushlog.so")).expect("copy plugin");
        std::fs::write(
            folder.join("p1.toml"),
            format!(
                "listen = \"127.0.0.1:0\"\n[auth]\napi_keys = [\"{KEY}\"]\n{}",
                plugin_table("log", Path::new("pushlog.so"), "file = \"push.log\"")
            ),
        )
        .expect("config");
    }
    for config in ["p1.toml", "./p1.toml", "conf/p1.toml"] {
        let out = hubhook(&["check", "--config", config], dir.path());
        assert!(
            out.status.success(),
            "{config}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The C build line of docs/PLUGINS.md, run exactly as written from a copy of the
/// repository's root, makes a library the server loads.
#[test]
fn the_c_build_line_in_plugins_md_works_as_written() {
    let doc = std::fs::read_to_string(root().join("docs/PLUGINS.md")).expect("PLUGINS.md");
    let line = doc
        .lines()
        .find(|l| l.starts_with("cc "))
        .expect("a cc line in a sh block of PLUGINS.md");
    let dir = TempDir::new("plugins-md");
    std::fs::create_dir_all(dir.path().join("examples/plugin-c")).expect("dirs");
    for file in ["hubhook_plugin.h", "examples/plugin-c/pushlog.c"] {
        std::fs::copy(root().join(file), dir.path().join(file)).expect("copy");
    }
    let out = Command::new("sh")
        .args(["-c", line])
        .current_dir(dir.path())
        .output()
        .expect("sh");
    assert!(
        out.status.success(),
        "{line}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir.write(
        "hubhook.toml",
        &format!(
            "listen = \"127.0.0.1:0\"\n[auth]\napi_keys = [\"{KEY}\"]\n{}",
            plugin_table("log", Path::new("libpushlog.so"), "file = \"push.log\"")
        ),
    );
    let check = hubhook(&["check", "--config", "hubhook.toml"], dir.path());
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
}

/// The fenced block of `kind` (`toml`, `rust,ignore`) that follows `after` in `doc`,
/// dedented.
fn block_after(doc: &str, after: &str, kind: &str) -> String {
    let from = doc
        .find(after)
        .unwrap_or_else(|| panic!("{after:?} in PLUGINS.md"));
    let mut lines = doc[from..].lines();
    let fence = lines
        .find(|l| l.trim_start() == format!("```{kind}"))
        .unwrap_or_else(|| panic!("a ```{kind} block after {after:?}"));
    let indent = fence.len() - fence.trim_start().len();
    let mut text = String::new();
    for line in lines.take_while(|l| l.trim_start() != "```") {
        text.push_str(line.get(indent..).unwrap_or(line.trim_start()));
        text.push('\n');
    }
    text
}

/// The Rust plugin of docs/PLUGINS.md, made from its four steps as written: the manifest
/// lines, the source, `cargo build --release`, and the `[[handler]]` table with the
/// built library's path. The only addition is a `[patch.crates-io]` that points the
/// `hubhook-core` the manifest asks for at this checkout.
#[test]
fn the_rust_plugin_in_plugins_md_builds_and_runs_as_written() {
    let doc = std::fs::read_to_string(root().join("docs/PLUGINS.md")).expect("PLUGINS.md");
    let manifest = block_after(&doc, "1. A `cdylib` crate", "toml");
    let source = block_after(&doc, "2. An ordinary `Handler`", "rust,ignore");
    let step3 = doc
        .lines()
        .find(|l| l.starts_with("3. `"))
        .and_then(|l| l.split('`').nth(1))
        .expect("step 3 names the build command");
    assert_eq!(step3, "cargo build --release");
    let handler = block_after(&doc, "4. Load it:", "toml");

    let dir = TempDir::new("plugins-md-rust");
    dir.write(
        "hello/Cargo.toml",
        &format!(
            "[package]\nname = \"hello\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n{manifest}\n\
             [patch.crates-io]\nhubhook-core = {{ path = {:?} }}\n\n[workspace]\n",
            root().join("hubhook-core").display().to_string()
        ),
    );
    dir.write("hello/src/lib.rs", &source);
    // The other test plugins' lock and target dir, so that the plugin builds with what is
    // compiled already (hubhook-core and its dependencies); cargo trims the lock to what
    // this plugin needs.
    std::fs::copy(
        root().join("hubhook-server/tests/plugins/misbehave/Cargo.lock"),
        dir.path().join("hello/Cargo.lock"),
    )
    .expect("lock");
    plugins();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut words = step3.split_whitespace();
    assert_eq!(words.next(), Some("cargo"));
    let out = Command::new(&cargo)
        .args(words)
        .current_dir(dir.path().join("hello"))
        // Shared with the other test plugins, so hubhook-core is compiled once.
        .env("CARGO_TARGET_DIR", out_dir())
        .output()
        .expect("run cargo");
    assert!(
        out.status.success(),
        "{step3} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lib = out_dir().join("release/libhello.so");
    assert!(lib.exists(), "step 3 promises target/release/libhello.so");

    let handler = handler.replace("/usr/lib/hubhook/libhello.so", &lib.display().to_string());
    let config = dir.write(
        "hubhook.toml",
        &format!("listen = \"127.0.0.1:0\"\ndata_dir = \"data\"\n[auth]\napi_keys = [\"{KEY}\"]\n{handler}"),
    );
    let check = hubhook(&["check", "--config", "hubhook.toml"], dir.path());
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let mut server = Server::start(
        &["--config", config.to_str().expect("utf8")],
        dir.path(),
        &[],
    );
    let (status, body) = request(
        server.addr,
        "POST",
        &format!("/hubhook?apikey={KEY}"),
        &[],
        hubhook_core::message::EXAMPLE_PAYLOAD.as_bytes(),
    );
    assert_eq!(status, 202, "{body}");
    // The greeting from [handler.config], through from_config, in the run's outcome.
    let line = server.wait_for_stderr("handler=\"hello\"");
    assert!(
        line.contains("deployed svendowideit/testhook:latest"),
        "{line}"
    );
    assert!(server.terminate().success());
}
