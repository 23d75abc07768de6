//! `[ui]`: the web page of deliveries, in a real browser (headless Chromium over its
//! DevTools protocol) and over plain HTTP for what a browser would not send.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use hubhook_testkit::{eventually, Browser, TempDir};
use serde_json::{json, Value};

use crate::support::*;

/// A handler that deploys every tag but `v2`, whose failure prints HTML.
const DEPLOY: &str = r#"[[handler]]
name = "deploy"
type = "shell"
command = ["/bin/sh", "-c", "if [ \"$HUBHOOK_TAG\" = v2 ]; then echo '<script>window.__pwned=1</script><b>v2 broke</b>'; exit 3; fi; echo deployed $HUBHOOK_TAG"]
[[handler]]
name = "log"
type = "log"
"#;

/// A pusher name that would run script if it were ever written as markup.
const PUSHER: &str = "<img src=x onerror=\"window.__pwned=2\">";

/// Starts a server with `[ui]` (plus `extra`) and returns it with the page's address.
fn serve_with_ui(dir: &TempDir, extra: &str) -> (Server, SocketAddr) {
    config(
        dir,
        &format!("{DEPLOY}{extra}\n[ui]\nlisten = \"127.0.0.1:0\"\n"),
    );
    let mut server = Server::start(&["--config", "hubhook.toml"], dir.path(), &[]);
    let line = server.wait_for_stderr("web page of deliveries on ");
    let addr = line
        .split("://")
        .nth(1)
        .and_then(|rest| rest.trim_end().strip_suffix('/'))
        .expect("the page's address")
        .parse()
        .expect("an address");
    (server, addr)
}

/// Posts a Docker Hub push of `repo:tag` by [`PUSHER`]; the delivery id.
fn push(server: &Server, repo: &str, tag: &str) -> String {
    let body = json!({
        "push_data": { "tag": tag, "pusher": PUSHER },
        "repository": { "repo_name": repo },
    })
    .to_string();
    let (status, answer) = request(
        server.addr,
        "POST",
        &format!("/hubhook?apikey={KEY}"),
        &["Content-Type: application/json"],
        body.as_bytes(),
    );
    assert_eq!(status, 202, "{answer}");
    let answer: Value = serde_json::from_str(&answer).expect("JSON");
    answer["delivery"].as_str().expect("delivery").to_owned()
}

/// A receiver on 127.0.0.1 that answers every request 200; its address.
fn answer_200() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buffer = [0u8; 16 * 1024];
            let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
            let _ = stream.read(&mut buffer);
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    addr
}

/// Where the test keeps its screenshots for the README.
fn screenshot_path(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/screenshots");
    std::fs::create_dir_all(&dir).expect("docs/screenshots");
    dir.join(name)
}

/// The list as the browser shows it: each row's image and badges (`text|class`).
fn rows(browser: &mut Browser) -> Value {
    browser.eval(
        "[...document.querySelectorAll('table.deliveries tbody tr')].map(tr => ({
            image: tr.querySelector('td.image').innerText,
            badges: [...tr.querySelectorAll('.badge')].map(b => b.innerText + '|' + b.className),
        }))",
    )
}

/// Reloads the list until no badge says pending (runs take a moment).
fn settled_rows(browser: &mut Browser, url: &str, count: usize) -> Value {
    eventually(Duration::from_secs(20), "the deliveries to settle", || {
        browser.open(url);
        let rows = rows(browser);
        let list = rows.as_array()?;
        let settled = list.len() == count && !rows.to_string().contains("pending");
        settled.then_some(rows)
    })
}

#[test]
fn the_page_in_a_real_browser() {
    let Some(mut browser) = Browser::start("the_page_in_a_real_browser") else {
        return;
    };
    let dir = TempDir::new("ui-browser");
    let receiver = answer_200();
    let (server, page) = serve_with_ui(
        &dir,
        &format!("[[notify]]\nname = \"ops\"\nurl = \"http://{receiver}/outcomes\"\n"),
    );
    push(&server, "acme/site", "v1");
    let failed = push(&server, "acme/site", "v2");
    push(&server, "acme/other", "v1");
    let base = format!("http://{page}");

    // Without a session, the page sends the browser to the login.
    browser.open(&format!("{base}/"));
    assert_eq!(browser.url(), format!("{base}/login"));
    browser.screenshot(&screenshot_path("ui-login.png"));
    browser.type_into("#password", "not the key");
    browser.follow("document.querySelector('form button[type=submit]').click()");
    let refused = browser.eval("document.querySelector('.problem').innerText");
    assert_eq!(refused, json!("That is not the password."));
    browser.type_into("#password", KEY);
    browser.follow("document.querySelector('form button[type=submit]').click()");
    assert_eq!(browser.url(), format!("{base}/"));

    // The list: newest first, each handler's outcome as a badge of its colour.
    let list = settled_rows(&mut browser, &format!("{base}/"), 3);
    assert_eq!(
        list,
        json!([
            { "image": "acme/other:v1", "badges": ["deploy: ok|badge ok", "log: ok|badge ok"] },
            { "image": "acme/site:v2", "badges": ["deploy: failed|badge failed", "log: ok|badge ok"] },
            { "image": "acme/site:v1", "badges": ["deploy: ok|badge ok", "log: ok|badge ok"] },
        ])
    );
    let bars = browser.eval("document.querySelectorAll('svg.chart rect.ok').length");
    assert_eq!(bars, json!(1), "today's bar");
    browser.screenshot(&screenshot_path("ui-list.png"));

    // The filters.
    browser.open(&format!("{base}/?status=failed"));
    assert_eq!(rows(&mut browser)[0]["image"], json!("acme/site:v2"));
    assert_eq!(rows(&mut browser).as_array().map(Vec::len), Some(1));
    browser.open(&format!("{base}/?repo=acme%2Fother"));
    assert_eq!(
        rows(&mut browser),
        json!([{ "image": "acme/other:v1", "badges": ["deploy: ok|badge ok", "log: ok|badge ok"] }])
    );

    // The failed delivery's page: its output tail and the pusher are text, never markup.
    browser.open(&format!("{base}/"));
    browser.follow(&format!(
        "document.querySelector('a[href=\"/deliveries/{failed}\"]').click()"
    ));
    assert_eq!(browser.url(), format!("{base}/deliveries/{failed}"));
    let output = browser.eval(
        "[...document.querySelectorAll('table.attempts tr')].find(tr => tr.innerText.startsWith('deploy')).querySelector('pre').innerText",
    );
    assert_eq!(
        output,
        json!("exit status 3; output: <script>window.__pwned=1</script><b>v2 broke</b>")
    );
    let pusher = browser.eval(
        "[...document.querySelectorAll('dl.facts dt')].find(dt => dt.innerText === 'Pusher').nextElementSibling.innerText",
    );
    assert_eq!(pusher, json!(PUSHER));
    let injected = browser.eval(
        "[typeof window.__pwned, document.querySelectorAll('main script, main img, main b').length]",
    );
    assert_eq!(injected, json!(["undefined", 0]));
    assert!(!browser.saw("Page.javascriptDialogOpening"));
    // The failure's notification, once sent, is listed with its result.
    let notified = eventually(
        Duration::from_secs(20),
        "the notification's attempt",
        || {
            browser.open(&format!("{base}/deliveries/{failed}"));
            let notes = browser.eval(
            "[...document.querySelectorAll('h2')].some(h => h.innerText === 'Notifications') ? document.querySelectorAll('table.attempts')[1].innerText : ''",
        );
            notes.as_str().filter(|t| !t.is_empty()).map(str::to_owned)
        },
    );
    assert!(
        notified.contains("notify:ops") && notified.contains("ok"),
        "{notified}"
    );
    browser.screenshot(&screenshot_path("ui-delivery.png"));

    // Replay: a POST with the CSRF token, answered with the new delivery's page.
    browser.follow("document.querySelector('form.replay button').click()");
    let replayed = browser.url();
    let new_id = replayed
        .strip_prefix(&format!("{base}/deliveries/"))
        .unwrap_or_else(|| panic!("on the new delivery's page, not {replayed}"))
        .to_owned();
    assert_ne!(new_id, failed);
    let again = eventually(
        Duration::from_secs(20),
        "the replay's deploy attempt",
        || {
            browser.open(&replayed);
            let text = browser.eval("document.querySelector('table.attempts') ? document.querySelector('table.attempts').innerText : ''");
            text.as_str()
                .filter(|t| t.contains("v2 broke"))
                .map(str::to_owned)
        },
    );
    assert!(again.contains("failed"), "{again}");
    let shown = hubhook(
        &["deliveries", "--config", "hubhook.toml", "show", &new_id],
        dir.path(),
    );
    assert!(shown.status.success(), "{shown:?}");
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.contains("acme/site:v2"), "{shown}");

    // The live refresh: a push shows up on the open list without a reload.
    browser.open(&format!("{base}/"));
    browser.eval("window.__same_page = true");
    push(&server, "acme/site", "v4");
    eventually(
        Duration::from_secs(20),
        "the new push on the open list",
        || {
            let first = rows(&mut browser)[0]["image"].clone();
            (first == json!("acme/site:v4")).then_some(())
        },
    );
    assert_eq!(browser.eval("window.__same_page === true"), json!(true));
}

/// One request to the page; a POST sends a form.
fn exchange(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[String],
    body: &str,
) -> (u16, Vec<(String, String)>, String) {
    let mut all: Vec<&str> = headers.iter().map(String::as_str).collect();
    if method == "POST" {
        all.push("Content-Type: application/x-www-form-urlencoded");
    }
    hubhook_testkit::exchange(addr, method, target, &all, body.as_bytes())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// Logs in with `password`; the cookie header to send.
fn log_in(page: SocketAddr, password: &str) -> String {
    let (status, headers, body) =
        exchange(page, "POST", "/login", &[], &format!("password={password}"));
    assert_eq!(status, 303, "{body}");
    let cookie = header(&headers, "set-cookie").expect("a session cookie");
    format!("Cookie: {}", cookie.split(';').next().expect("name=value"))
}

#[test]
fn without_a_session_or_its_token_nothing_is_shown_or_replayed() {
    let dir = TempDir::new("ui-auth");
    let (server, page) = serve_with_ui(&dir, "");
    let id = push(&server, "acme/site", "v1");
    let none: &[String] = &[];

    // No session: pages send to the login, anything else is refused.
    for target in ["/", "/?status=failed", &format!("/deliveries/{id}")] {
        let (status, headers, _) = exchange(page, "GET", target, none, "");
        assert_eq!(
            (status, header(&headers, "location")),
            (303, Some("/login")),
            "{target}"
        );
    }
    for target in [format!("/deliveries/{id}/replay"), "/logout".to_owned()] {
        let (status, _, _) = exchange(page, "POST", &target, none, "csrf=x");
        assert_eq!(status, 401, "{target}");
    }
    // A name the page does not know (DNS rebinding) is refused before anything else.
    let rebound =
        hubhook_testkit::exchange(page, "GET", "/login", &["Host: evil.example:8081"], b"");
    assert_eq!(rebound.0, 421);
    let forged = ["Cookie: hubhook_session=forged".to_owned()];
    let (status, _, _) = exchange(page, "GET", "/", &forged, "");
    assert_eq!(status, 303);
    let (status, _, body) = exchange(page, "POST", "/login", none, "password=wrong");
    assert_eq!(status, 401);
    assert!(body.contains("That is not the password."), "{body}");

    // A login: the cookie is HttpOnly and SameSite=Strict, and not Secure over plain HTTP.
    let (status, headers, _) = exchange(page, "POST", "/login", none, &format!("password={KEY}"));
    assert_eq!(status, 303);
    let set = header(&headers, "set-cookie").expect("set-cookie");
    assert!(
        set.contains("; HttpOnly") && set.contains("; SameSite=Strict"),
        "{set}"
    );
    assert!(!set.contains("Secure"), "{set}");
    let csp = header(&headers, "content-security-policy").expect("a CSP");
    assert!(csp.contains("script-src 'self'"), "{csp}");
    let cookie = [log_in(page, KEY)];
    let (status, _, body) = exchange(page, "GET", "/", &cookie, "");
    assert_eq!(status, 200);
    let csrf = body
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the page's CSRF token")
        .to_owned();

    // A replay without the session's token, or with another, is refused and runs nothing.
    let replay = format!("/deliveries/{id}/replay");
    for form in ["", "csrf=", "csrf=AAAA", &format!("csrf={csrf}x")] {
        let (status, _, _) = exchange(page, "POST", &replay, &cookie, form);
        assert_eq!(status, 403, "{form:?}");
    }
    let listed = hubhook(
        &["deliveries", "--config", "hubhook.toml", "list"],
        dir.path(),
    );
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert_eq!(listed.lines().count(), 2, "only the push:\n{listed}");
    // Another session's token is no good either.
    let other = [log_in(page, KEY)];
    let (status, _, _) = exchange(page, "POST", &replay, &other, &format!("csrf={csrf}"));
    assert_eq!(status, 403);
    // With it, the replay runs.
    let (status, headers, _) = exchange(page, "POST", &replay, &cookie, &format!("csrf={csrf}"));
    assert_eq!(status, 303);
    let location = header(&headers, "location").expect("the new delivery");
    assert!(
        location.starts_with("/deliveries/") && !location.contains(&id),
        "{location}"
    );

    // Logging out ends the session.
    let (status, _, _) = exchange(page, "POST", "/logout", &cookie, &format!("csrf={csrf}"));
    assert_eq!(status, 303);
    let (status, _, _) = exchange(page, "GET", "/", &cookie, "");
    assert_eq!(status, 303);
}

#[test]
fn a_password_hash_logs_in_and_tls_makes_the_cookie_secure() {
    let dir = TempDir::new("ui-tls");
    // The hash, as an operator makes it.
    let mut child = std::process::Command::new(BIN)
        .arg("ui-password")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("hubhook ui-password");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"correct horse battery\n")
        .expect("write the password");
    let made = child.wait_with_output().expect("its hash");
    assert!(made.status.success());
    let hash = String::from_utf8(made.stdout)
        .expect("text")
        .trim()
        .to_owned();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    let tls = hubhook(
        &["tls", "self-signed", "--host", "127.0.0.1", "--out", "tls"],
        dir.path(),
    );
    assert!(tls.status.success(), "{tls:?}");
    config(
        &dir,
        &format!(
            "[tls]\ncert = \"tls/cert.pem\"\nkey = \"tls/key.pem\"\n\
             [ui]\nlisten = \"127.0.0.1:0\"\ntls = true\npassword_hash = \"{hash}\"\n"
        ),
    );
    let mut server = Server::start(&["--config", "hubhook.toml"], dir.path(), &[]);
    let line = server.wait_for_stderr("web page of deliveries on https://");
    let url = line
        .split("on ")
        .last()
        .expect("the page's URL")
        .trim()
        .to_owned();
    let curl = |password: &str| {
        let out = std::process::Command::new("curl")
            .args([
                "-s",
                "-D",
                "-",
                "-o",
                "/dev/null",
                "--cacert",
                "tls/cert.pem",
            ])
            .args(["--data-urlencode", &format!("password={password}")])
            .arg(format!("{url}login"))
            .current_dir(dir.path())
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).to_lowercase()
    };
    let head = curl("correct horse battery");
    assert!(
        head.starts_with("http/2 303") || head.starts_with("http/1.1 303"),
        "{head}"
    );
    let cookie = head
        .lines()
        .find(|l| l.starts_with("set-cookie:"))
        .unwrap_or_else(|| panic!("a cookie in {head}"));
    for part in ["; httponly", "; samesite=strict", "; secure"] {
        assert!(cookie.contains(part), "{part} in {cookie}");
    }
    // With a password set, the API key is not a login.
    let head = curl(KEY);
    assert!(head.contains(" 401"), "{head}");
    // The hash is not written to the log.
    assert!(!server.stderr().contains(&hash));
}

#[test]
fn ui_settings_that_cannot_work_are_refused_with_their_line() {
    let dir = TempDir::new("ui-config");
    let cases = [
        (
            "journal = false\n[ui]\n",
            "hubhook.toml:4: ui.enabled: the page shows the journal",
        ),
        (
            "[ui]\npassword_hash = \"hunter2\"\n",
            "hubhook.toml:4: ui.password_hash: not a password hash in PHC form",
        ),
        (
            "[ui]\ntls = true\n",
            "hubhook.toml:4: ui.tls: needs [tls] cert and key files",
        ),
        (
            "[ui]\nlisten = \"nowhere\"\n",
            "hubhook.toml:4: ui.listen: \"nowhere\" is not an address",
        ),
        (
            "[ui]\nsesion_ttl = \"1h\"\n",
            "hubhook.toml:4: ui.sesion_ttl: unknown",
        ),
        (
            "[ui]\nsession_ttl = \"400d\"\n",
            "hubhook.toml:4: ui.session_ttl: must be between 1 minute and 30 days",
        ),
        (
            "[ui]\nhosts = [\"https://x\"]\n",
            "hubhook.toml:4: ui.hosts: \"https://x\" is not a Host value",
        ),
    ];
    for (extra, expected) in cases {
        config(&dir, extra);
        let out = hubhook(&["check", "--config", "hubhook.toml"], dir.path());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra}");
        assert!(stderr.contains(expected), "{extra}: {stderr}");
    }
}

#[test]
fn behind_nginx_the_page_answers_its_proxy_and_its_own_names_only() {
    let dir = TempDir::new("ui-nginx");
    let page = format!("127.0.0.1:{}", hubhook_testkit::free_port());
    config(
        &dir,
        &format!("{DEPLOY}\n[ui]\nlisten = \"{page}\"\nhosts = [\"ui.example\"]\n"),
    );
    let mut server = Server::start(&["--config", "hubhook.toml"], dir.path(), &[]);
    server.wait_for_stderr("web page of deliveries on ");
    let nginx = hubhook_testkit::Nginx::start(&dir, |port| {
        format!(
            "server {{ listen 127.0.0.1:{port};\n\
               location / {{ proxy_pass http://{page}; }}\n\
               location /public/ {{ proxy_set_header Host $host; proxy_pass http://{page}/; }}\n}}"
        )
    });
    let through: SocketAddr = format!("127.0.0.1:{}", nginx.port).parse().expect("addr");
    // nginx's default Host is the proxied address: allowed.
    let (status, _, body) = exchange(through, "GET", "/login", &[], "");
    assert_eq!(status, 200, "{body}");
    let cookie = [log_in(through, KEY)];
    let (status, _, body) = exchange(through, "GET", "/", &cookie, "");
    assert_eq!(status, 200);
    assert!(body.contains("table class=\"deliveries\""), "{body}");
    // Passing the client's Host on: the configured name is allowed, another is not.
    let named = ["Host: ui.example".to_owned()];
    assert_eq!(exchange(through, "GET", "/public/login", &named, "").0, 200);
    let other = ["Host: rebound.example".to_owned()];
    assert_eq!(exchange(through, "GET", "/public/login", &other, "").0, 421);
}
