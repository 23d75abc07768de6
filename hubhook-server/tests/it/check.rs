//! `hubhook check` on good and broken files: exit status and the exact message.

use crate::support::*;

/// Runs `hubhook check` on `text` and returns (exit code, stdout, stderr).
fn check(dir: &TempDir, text: &str) -> (i32, String, String) {
    dir.write("hubhook.toml", text);
    let out = hubhook(&["check", "--config", "hubhook.toml"], dir.path());
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn refused(dir: &TempDir, text: &str) -> String {
    let (code, stdout, stderr) = check(dir, text);
    assert_eq!(
        code, 1,
        "check should fail for:\n{text}\nstdout: {stdout}\nstderr: {stderr}"
    );
    assert!(stdout.is_empty(), "{stdout}");
    stderr.trim_end().to_owned()
}

const AUTH: &str = "[auth]\napi_keys = [\"0123456789abcdef0123\"]\n";

#[test]
fn a_good_file_passes() {
    let dir = TempDir::new("check-good");
    let (code, stdout, stderr) = check(
        &dir,
        &format!("listen = \"127.0.0.1:9999\"\n{AUTH}\n[[handler]]\nname = \"audit\"\ntype = \"log\"\nformat = \"json\"\n"),
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        stdout.lines().next().unwrap_or(""),
        "hubhook.toml: ok; listens on 127.0.0.1:9999/hubhook (plain HTTP), handlers: audit (log)"
    );
    assert!(
        stdout.contains("checked: data dir ") && stdout.contains(" can be created"),
        "check says what it checked: {stdout}"
    );
    assert!(
        !stdout.contains("0123456789abcdef"),
        "check never prints keys"
    );
}

#[test]
fn broken_files_name_file_line_and_key() {
    let dir = TempDir::new("check-broken");
    let cases: Vec<(String, &str)> = vec![
        // Not TOML at all.
        (
            format!("{AUTH}listen = \"127.0.0.1:80\nx = 1\n"),
            "error: hubhook.toml:3: invalid basic string",
        ),
        // Unknown handler type.
        (
            format!("{AUTH}\n[[handler]]\nname = \"deploy\"\ntype = \"shel\"\n"),
            "error: hubhook.toml:6: handler[0].type: unknown handler type \"shel\" (expected one of: log, shell, docker, compose, plugin)",
        ),
        // Bad listen address.
        (
            format!("listen = \"localhost\"\n{AUTH}"),
            "error: hubhook.toml:1: listen: \"localhost\" is not an address with a port (like \"127.0.0.1:8080\" or \"[::1]:8080\")",
        ),
        (
            format!("listen = \"127.0.0.1:99999\"\n{AUTH}"),
            "error: hubhook.toml:1: listen: \"127.0.0.1:99999\" is not an address with a port",
        ),
        // Queue settings.
        (
            format!("{AUTH}\n[[handler]]\ntype = \"log\"\ncoalesce = \"tag\"\n"),
            "error: hubhook.toml:6: handler[0].coalesce: unknown coalescing key \"tag\" (expected one of: repo+tag, repo, handler, off)",
        ),
        (
            format!("{AUTH}\n[[handler]]\ntype = \"log\"\nformat = \"yaml\"\n"),
            "error: hubhook.toml:6: handler[0].format: unknown log format \"yaml\" (expected one of: text, json)",
        ),
        (
            format!("{AUTH}\n[[handler]]\ntype = \"docker\"\nimage = \"acme/site\"\ncontainer = \"site\"\nstrategy = \"canary\"\n"),
            "error: hubhook.toml:8: handler[0].strategy: unknown strategy \"canary\" (expected one of: stop-first, blue-green)",
        ),
        (
            format!("{AUTH}\n[[handler]]\ntype = \"log\"\nretries = 1000\n"),
            "error: hubhook.toml:6: handler[0].retries: must be a whole number from 0 to 100, not 1000",
        ),
        (
            format!("{AUTH}\n[[handler]]\ntype = \"log\"\nmax_concurrency = 0\n"),
            "error: hubhook.toml:6: handler[0].max_concurrency: must be a whole number from 1 to 1024, not 0",
        ),
        (
            format!("{AUTH}\n[[handler]]\ntype = \"log\"\nretry_backoff = \"soon\"\n"),
            "error: hubhook.toml:6: handler[0].retry_backoff: \"soon\" is not a duration",
        ),
        // Journal and callback tables.
        (
            format!("journal = \"yes\"\n{AUTH}"),
            "error: hubhook.toml:1: journal: must be true, false or a table, not string",
        ),
        (
            format!("{AUTH}\n[journal]\nkeep_weeks = 2\n"),
            "error: hubhook.toml:5: journal.keep_weeks: unknown key `keep_weeks`",
        ),
        (
            format!("{AUTH}\n[journal]\nkeep_days = 9223372036854775807\n"),
            "error: hubhook.toml:4: journal.keep_days: 9223372036854775807 is more than 36500 days; use 0 to keep forever",
        ),
        (
            format!("{AUTH}\n[callback]\nenabled = true\nallow = [\"*.docker.com\"]\n"),
            "error: hubhook.toml:4: callback.allow: \"*.docker.com\" is not a host name",
        ),
        (
            format!("{AUTH}\n[callback]\nenabled = true\nca_file = \"missing-ca.pem\"\n"),
            "error: hubhook.toml:6: callback.ca_file: ",
        ),
        // Missing required key.
        (
            format!("{AUTH}\n[[handler]]\nname = \"audit\"\n"),
            "error: hubhook.toml:4: handler[0].type: missing required key `type` (one of: log, shell, docker, compose, plugin)",
        ),
        (
            format!("{AUTH}\n[tls]\nkey = \"key.pem\"\n"),
            "error: hubhook.toml:4: tls.cert: missing: set cert and key, or a [tls.acme] table",
        ),
        // Unreadable certificate and key files.
        (
            format!("{AUTH}\n[tls]\ncert = \"missing-cert.pem\"\nkey = \"missing-key.pem\"\n"),
            "error: hubhook.toml:5: tls.cert: TLS certificate ",
        ),
        // A key that is misspelled, and a value of the wrong type.
        (
            format!("lisen = \"127.0.0.1:1\"\n{AUTH}"),
            "error: hubhook.toml:1: lisen: unknown key `lisen`, expected one of `listen`",
        ),
        (
            format!("max_body = \"lots\"\n{AUTH}"),
            "error: hubhook.toml:1: max_body: \"lots\" is not a size",
        ),
        (
            format!("{AUTH}\n[[handler]]\ntype = \"log\"\ntag = 5\n"),
            "error: hubhook.toml:6: handler[0].tag: must be a string, not integer",
        ),
        // No key at all.
        (
            "listen = \"127.0.0.1:1\"\n".to_owned(),
            "error: hubhook.toml: auth: no API key",
        ),
        // Notifications.
        (
            format!("{AUTH}\n[[notify]]\nurl = \"smtp://mail.example.com/TOKEN\"\n"),
            "error: hubhook.toml:5: notify[0].url: notification: unknown scheme \"smtp\"",
        ),
        (
            format!("{AUTH}\n[[notify]]\nurl = \"slack://hooks.slack.com/services/T/B/X\"\non = [\"sometimes\"]\n"),
            "error: hubhook.toml:6: notify[0].on: notification: unknown outcome \"sometimes\"",
        ),
        (
            format!("{AUTH}\n[[notify]]\nurl = \"slack://hooks.slack.com/services/T/B/X\"\nhandlers = [\"deploy\"]\n"),
            "error: hubhook.toml:6: notify[0].handlers: no handler is named \"deploy\"",
        ),
        (
            format!("{AUTH}\n[[handler]]\ntype = \"log\"\nname = \"notify:x\"\n"),
            "error: hubhook.toml:6: handler[0].name: \"notify:x\" is hubhook's own name",
        ),
        // A provider this build does not know.
        (
            format!("{AUTH}\n[[hook]]\npath = \"/q\"\nprovider = \"quay\"\n"),
            "error: hubhook.toml:6: hook[0].provider: unknown provider \"quay\" (expected one of: dockerhub, registry, github, generic)",
        ),
        // A registry host written as a URL.
        (
            format!("{AUTH}\n[[hook]]\npath = \"/r\"\nprovider = \"registry\"\nregistry = \"https://reg.example.com/\"\napi_keys = [\"0123456789abcdef0123\"]\n"),
            "error: hubhook.toml:7: hook[0].registry: \"https://reg.example.com/\" is not a registry host",
        ),
    ];
    for (text, want) in cases {
        let got = refused(&dir, &text);
        assert!(
            got.starts_with(want),
            "for:\n{text}\nwant: {want}\ngot:  {got}"
        );
    }
}

#[test]
fn unreadable_cert_and_key_files_are_named() {
    let dir = TempDir::new("check-tls");
    let got = refused(
        &dir,
        &format!("{AUTH}\n[tls]\ncert = \"nope/cert.pem\"\nkey = \"nope/key.pem\"\n"),
    );
    assert!(
        got.contains("nope/cert.pem: cannot be read: No such file or directory"),
        "{got}"
    );

    // The certificate is fine, the key file is missing: the key is named.
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
    dir.write("cert.pem", &cert.cert.pem());
    let got = refused(
        &dir,
        &format!("{AUTH}\n[tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n"),
    );
    assert!(
        got.starts_with("error: hubhook.toml:6: tls.key: TLS key "),
        "{got}"
    );
    assert!(got.contains("key.pem: cannot be read"), "{got}");

    // A file that exists but holds no key.
    dir.write("key.pem", "not a key\n");
    let got = refused(
        &dir,
        &format!("{AUTH}\n[tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n"),
    );
    assert!(
        got.starts_with("error: hubhook.toml:6: tls.key: TLS key "),
        "{got}"
    );
    assert!(got.contains("holds no usable private key"), "{got}");

    // The keys file is checked too.
    let got = refused(&dir, "[auth]\napi_keys_file = \"keys.txt\"\n");
    assert!(
        got.starts_with("error: hubhook.toml:2: auth.api_keys_file: cannot read "),
        "{got}"
    );
}

#[test]
fn a_missing_file_is_named() {
    let dir = TempDir::new("check-missing");
    let out = hubhook(&["check", "--config", "absent.toml"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("error: absent.toml: cannot read the file: No such file"),
        "{stderr}"
    );
}

#[test]
fn the_sample_config_in_examples_passes() {
    // Once its placeholder key is replaced, as its comment says (until then check
    // refuses it: see placeholder_keys_are_refused_and_word_keys_warned_about).
    let sample = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/hubhook.toml"
    ))
    .expect("sample");
    let filled = sample.replace(
        "<paste the output of hubhook keygen>",
        "Zq3-Hk9vXw2Lr8Tn5Yb7Pd4Mf6Gc1Js0",
    );
    assert_ne!(filled, sample, "the sample holds the placeholder");
    let dir = TempDir::new("check-sample");
    dir.write_private("hubhook.toml", &filled);
    let out = hubhook(&["check", "--config", "hubhook.toml"], dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("handlers: audit (log), blog (docker)"),
        "{stdout}"
    );
}

#[test]
fn the_compose_example_passes() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/compose");
    let read = |name: &str| std::fs::read_to_string(format!("{root}/{name}")).expect(name);
    let dir = TempDir::new("check-compose-example");
    dir.write("docker-compose.yml", &read("docker-compose.yml"));
    dir.write_private(
        "hubhook.toml",
        &read("hubhook.toml").replace(
            "<paste the output of hubhook keygen>",
            "Zq3-Hk9vXw2Lr8Tn5Yb7Pd4Mf6Gc1Js0",
        ),
    );
    let out = hubhook(&["check", "--config", "hubhook.toml"], dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("handlers: site (compose)"), "{stdout}");
}

/// A planted key never appears in what `check`, `deliveries`, `keygen`-free commands or any
/// config error print, however the key is mistyped.
#[test]
fn a_planted_key_is_in_no_output() {
    const PLANTED: &str = "planted-secret-0123456789abcdefXYZ";
    let dir = TempDir::new("check-planted");
    let texts = [
        // Good: check prints a summary.
        format!("[auth]\napi_keys = [\"{PLANTED}\"]\n"),
        // A string where a list belongs.
        format!("[auth]\napi_keys = \"{PLANTED}\"\n"),
        // A key in the wrong table, or under a mistyped name.
        format!("[auth]\napi_key = [\"{PLANTED}\"]\n"),
        format!("[auth]\napi_keys = [\"{PLANTED}\"]\nlisten = \"{PLANTED}\"\n"),
        // A secret of the wrong type, and a hook's keys as a string.
        format!("[[hook]]\npath = \"/g\"\nprovider = \"github\"\nsecret = [\"{PLANTED}\"]\n"),
        format!("[[hook]]\npath = \"/r\"\nprovider = \"registry\"\nregistry = \"r.example\"\napi_keys = \"{PLANTED}\"\n"),
        // A key that is too short to be one: named, not shown.
        "[auth]\napi_keys = [\"planted\"]\n".to_owned(),
        // A TOML syntax error on the key's line.
        format!("[auth]\napi_keys = [\"{PLANTED}\"\n"),
        // A real key or secret pasted inside the docs' angle brackets.
        format!("[auth]\napi_keys = [\"<{PLANTED}>\"]\n"),
        format!("[[hook]]\npath = \"/g\"\nprovider = \"github\"\nsecret = \"<{PLANTED}>\"\n"),
    ];
    for text in &texts {
        let (_, stdout, stderr) = check(&dir, text);
        for out in [&stdout, &stderr] {
            assert!(!out.contains(PLANTED), "{text}\nprinted the key: {out}");
            assert!(
                !out.contains("planted\""),
                "{text}\nprinted the short key: {out}"
            );
        }
    }
    // The journal commands read the same file: no key in their output either.
    dir.write("hubhook.toml", &texts[0]);
    for args in [
        &["deliveries", "--config", "hubhook.toml", "list"][..],
        &["--help"][..],
    ] {
        let out = hubhook(args, dir.path());
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!all.contains(PLANTED), "{args:?}: {all}");
    }
}

/// Files that hold secrets must be private, as ssh requires: a key file or a TLS key that
/// its group or others can read is refused with the file and the chmod that fixes it; a
/// config file that holds keys gets a warning.
#[test]
fn secret_files_others_can_read_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("check-modes");
    let open = |name: &str| {
        std::fs::set_permissions(
            dir.path().join(name),
            std::fs::Permissions::from_mode(0o644),
        )
        .expect("chmod");
    };
    dir.write_private("keys.txt", "0123456789abcdef0123456789\n");
    open("keys.txt");
    let got = refused(&dir, "[auth]\napi_keys_file = \"keys.txt\"\n");
    assert!(
        got.starts_with("error: hubhook.toml:2: auth.api_keys_file: ")
            && got.contains("keys.txt is readable by its group or others (mode 644): chmod 600 "),
        "{got}"
    );
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
    dir.write("cert.pem", &cert.cert.pem());
    dir.write("key.pem", &cert.key_pair.serialize_pem());
    open("key.pem");
    let got = refused(
        &dir,
        &format!("{AUTH}\n[tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n"),
    );
    assert!(
        got.starts_with("error: hubhook.toml:6: tls.key: ")
            && got.contains("key.pem is readable by its group or others"),
        "{got}"
    );
    // Private, both pass; the config file itself (0644, with a key in it) is warned about.
    std::fs::set_permissions(
        dir.path().join("keys.txt"),
        std::fs::Permissions::from_mode(0o600),
    )
    .expect("chmod");
    std::fs::set_permissions(
        dir.path().join("key.pem"),
        std::fs::Permissions::from_mode(0o600),
    )
    .expect("chmod");
    let (code, _, stderr) = check(
        &dir,
        &format!("{AUTH}\n[tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n"),
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("warning: ")
            && stderr.contains("hubhook.toml is readable by its group or others")
            && stderr.contains("holds keys or secrets"),
        "{stderr}"
    );
}

/// `hubhook deliveries --config` reads only `data_dir`: a plugin that cannot load or a TLS
/// key that cannot be read does not stand between an operator and the journal.
#[test]
fn deliveries_reads_only_the_data_dir() {
    let dir = TempDir::new("check-deliveries");
    dir.write(
        "hubhook.toml",
        &format!("data_dir = \"journal-here\"\n{AUTH}\n[tls]\ncert = \"absent.pem\"\nkey = \"absent.key\"\n\
                  [[handler]]\ntype = \"plugin\"\npath = \"absent.so\"\n"),
    );
    let out = hubhook(
        &["deliveries", "--config", "hubhook.toml", "list"],
        dir.path(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("journal-here") && stderr.contains("no journal here"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("absent"),
        "nothing else was read: {stderr}"
    );
}

/// The docs' placeholder keys are refused, so none can be deployed by mistake and
/// authenticate; a key made of words passes with a warning naming `hubhook keygen`.
#[test]
fn placeholder_keys_are_refused_and_word_keys_warned_about() {
    let dir = TempDir::new("check-placeholders");
    let got = refused(
        &dir,
        "[auth]\napi_keys = [\"<paste the output of hubhook keygen>\"]\n",
    );
    assert_eq!(got, "error: hubhook.toml:2: auth.api_keys: still the placeholder (a value in <angle brackets>, or dots), not a key: put a key here; `hubhook keygen` makes one");
    for placeholder in [
        "output of hubhook keygen",
        "paste the output of `hubhook keygen` here",
    ] {
        let got = refused(&dir, &format!("[auth]\napi_keys = [\"{placeholder}\"]\n"));
        assert!(
            got.starts_with(
                "error: hubhook.toml:2: auth.api_keys: an API key may hold only letters, digits"
            ),
            "{placeholder}: {got}"
        );
    }
    // The shipped example holds one too: it fails check until the operator replaces it.
    let example = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/hubhook.toml"),
    )
    .expect("examples/hubhook.toml");
    let got = refused(&dir, &example);
    assert!(
        got.contains("auth.api_keys: still the placeholder"),
        "{got}"
    );

    let (code, _, stderr) = check(
        &dir,
        "[auth]\napi_keys = [\"replace-me-with-the-output-of-hubhook-keygen\"]\n",
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("hubhook.toml:2: auth.api_keys: a key that reads as words is easy to guess; make one with `hubhook keygen`"),
        "{stderr}"
    );
}

/// `check` verifies what `serve` will need from the machine, without starting anything:
/// a data dir it can create, and the programs its handlers run.
#[test]
fn check_verifies_the_data_dir_and_the_programs() {
    let dir = TempDir::new("check-preflight");
    dir.write("afile", "not a directory\n");
    for (extra, want) in [
        (
            "data_dir = \"afile/data\"\n".to_owned(),
            "error: hubhook.toml:1: data_dir: ./afile/data cannot be created: ",
        ),
        (
            "[[handler]]\ntype = \"shell\"\ncommand = [\"/nonexistent/deploy.sh\"]\n".to_owned(),
            "error: hubhook.toml:6: handler[0].command: /nonexistent/deploy.sh is not an executable file",
        ),
        (
            "[[handler]]\ntype = \"shell\"\ncommand = [\"no-such-program-hubhook\"]\n".to_owned(),
            "error: hubhook.toml:6: handler[0].command: \"no-such-program-hubhook\" is not a program in PATH",
        ),
        (
            "[[handler]]\ntype = \"docker\"\nimage = \"acme/site\"\ncontainer = \"site\"\ndocker = \"/nonexistent/docker\"\n".to_owned(),
            "error: hubhook.toml:8: handler[0].docker: /nonexistent/docker is not an executable file",
        ),
        (
            // The second handler's line, not the first one's.
            "[[handler]]\ntype = \"shell\"\ncommand = [\"/bin/sh\"]\n\n[[handler]]\ntype = \"shell\"\nname = \"two\"\ncommand = [\"/nonexistent/two.sh\"]\n".to_owned(),
            "error: hubhook.toml:11: handler[1].command: /nonexistent/two.sh is not an executable file",
        ),
    ] {
        let text = if extra.starts_with("data_dir") {
            format!("{extra}{AUTH}")
        } else {
            format!("{AUTH}\n{extra}")
        };
        let got = refused(&dir, &text);
        assert!(got.starts_with(want), "want {want}\ngot  {got}");
        // `serve` refuses to start with the same words, instead of failing at a push.
        let serve_err = serve_refuses(&["--config", "hubhook.toml"], dir.path());
        let words = want.trim_start_matches("error: ");
        assert!(serve_err.contains(words), "{serve_err}");
    }
}

/// The rows of CONFIG.md's "Errors `check` reports" table: (problem, message).
fn documented_errors() -> Vec<(String, String)> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/CONFIG.md"))
        .expect("docs/CONFIG.md");
    let table = doc
        .split("## Errors `check` reports")
        .nth(1)
        .expect("CONFIG.md has the errors table");
    table
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .filter(|l| l.starts_with("| ") && !l.starts_with("| problem"))
        .map(|row| {
            let (problem, message) = row[2..]
                .split_once(" | ")
                .unwrap_or_else(|| panic!("a row of two cells: {row}"));
            let message = message.trim_end_matches(" |");
            let message = match message.strip_prefix("`` ") {
                Some(inner) => inner.trim_end_matches(" ``"),
                None => message.trim_matches('`'),
            };
            (problem.to_owned(), message.to_owned())
        })
        .collect()
}

/// Whether `got` is `want`, where each `…` in `want` stands for any text.
fn matches_with_ellipses(want: &str, got: &str) -> bool {
    let mut parts = want.split('…');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = got.strip_prefix(first.trim_end()) else {
        return false;
    };
    let mut open = false;
    for part in parts {
        open = true;
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
        open = false;
    }
    open || rest.is_empty()
}

#[test]
fn every_row_of_the_errors_table_is_what_check_prints() {
    const A: &str = "[auth]\napi_keys = [\"Zq3-Hk9vXw2Lr8Tn5Yb7Pd4Mf6Gc1Js0\"]\n";
    // The file that shows each problem; a row without one here fails the test.
    let file_for = |problem: &str| -> Option<String> {
        Some(match problem {
            "not TOML" => format!("{A}listen = \"127.0.0.1:80\nx = 1\n"),
            "unknown key" => format!("lisen = \"127.0.0.1:8080\"\n{A}"),
            "wrong type" => format!("max_connections = \"many\"\n{A}"),
            "a duration without a unit" => format!("header_timeout = 10\n{A}"),
            "bad listen address" => format!("listen = \"localhost\"\n{A}"),
            "reserved hook path" => format!("path = \"/healthz\"\n{A}"),
            "unknown handler type" => {
                format!("{A}\n[[handler]]\nname = \"deploy\"\ntype = \"shel\"\n")
            }
            "missing required key" => format!("{A}\n[[handler]]\nname = \"deploy\"\n"),
            "a program that is not there" => {
                format!("{A}\n[[handler]]\ntype = \"shell\"\ncommand = [\"./deploy.sh\"]\n")
            }
            "unreadable certificate or key" => format!(
                "{A}\n[tls]\ncert = \"/etc/hubhook/cert.pem\"\nkey = \"/etc/hubhook/key.pem\"\n"
            ),
            "bad queue setting" => {
                format!("{A}\n[[handler]]\ntype = \"log\"\ncoalesce = \"tag\"\n")
            }
            "a placeholder left in" => {
                "[auth]\napi_keys = [\"<paste the output of hubhook keygen>\"]\n".to_owned()
            }
            "no key" => "listen = \"127.0.0.1:8080\"\n".to_owned(),
            "a plugin that will not load" => format!(
                "{A}\n[[handler]]\ntype = \"plugin\"\npath = \"/usr/lib/hubhook/libx.so\"\n"
            ),
            _ => return None,
        })
    };
    let dir = TempDir::new("check-table");
    let rows = documented_errors();
    assert!(rows.len() >= 10, "{rows:?}");
    for (problem, message) in rows {
        let text = file_for(&problem)
            .unwrap_or_else(|| panic!("CONFIG.md documents {problem:?}: give this test its file"));
        let got = refused(&dir, &text);
        let got = got
            .lines()
            .find_map(|l| l.strip_prefix("error: "))
            .unwrap_or_else(|| panic!("{problem}: no error line in {got}"));
        assert!(
            matches_with_ellipses(&message, got),
            "{problem}:\nCONFIG.md: {message}\ncheck:     {got}"
        );
    }
}

#[test]
fn compose_handlers_are_checked_against_compose_config() {
    let dir = TempDir::new("check-compose");
    dir.write(
        "site/docker-compose.yml",
        "version: \"3.7\"\nservices:\n  web:\n    image: acme/site:live\n  db:\n    image: postgres:16\n",
    );
    let handler = |keys: &str| {
        format!("{AUTH}\n[[handler]]\ntype = \"compose\"\nimage = \"acme/site\"\nproject_dir = \"site\"\n{keys}")
    };
    for (keys, want) in [
        (
            "services = [\"api\"]\n",
            "error: hubhook.toml:8: handler[0].services: the project has no service \"api\" (it has: db, web)",
        ),
        (
            "services = [\"db\"]\n",
            "error: hubhook.toml:8: handler[0].services: service \"db\" runs image \"postgres:16\", not the configured repository \"acme/site\"",
        ),
        (
            "services = [\"web\"]\ntag = \"v2\"\n",
            "error: hubhook.toml:9: handler[0].tag: the compose file names tag \"live\"",
        ),
        (
            "services = [\"web\"]\nfiles = [\"nope.yml\"]\n",
            "error: hubhook.toml:7: handler[0].project_dir: compose file invalid: ",
        ),
    ] {
        let got = refused(&dir, &handler(keys));
        assert!(got.starts_with(want), "for {keys}\nwant: {want}\ngot:  {got}");
        if keys.contains("nope.yml") {
            assert!(got.contains("nope.yml"), "compose's own reason: {got}");
        }
    }
    let (code, stdout, stderr) = check(&dir, &handler("services = [\"web\"]\n"));
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("compose"), "{stdout}");
}
