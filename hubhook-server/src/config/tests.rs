//! The reader's own tests; `tests/it/check.rs` runs `hubhook check` on whole files.

use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Parser {
        file: Path::new("hubhook.toml"),
        text,
        warnings: Default::default(),
    }
    .parse()
}

fn error(text: &str) -> String {
    parse(text)
        .expect_err("config should be refused")
        .to_string()
}

const KEY: &str = "[auth]\napi_keys = [\"0123456789abcdef0123\"]\n";

#[test]
fn sizes() {
    let size = |value: &str| {
        parse(&format!("max_body = {value}\n{KEY}"))
            .map(|c| c.max_body)
            .map_err(|e| e.to_string())
    };
    assert_eq!(size("10"), Ok(10));
    assert_eq!(size("\"1MiB\""), Ok(1 << 20));
    assert_eq!(size("\"64 KiB\""), Ok(64 << 10));
    assert_eq!(size("\"2MB\""), Ok(2_000_000));
    assert!(size("\"1XB\"").is_err_and(|e| e.contains("unknown unit")));
    assert!(size("\"0\"").is_err_and(|e| e.contains("positive size")));
    assert!(size("-1").is_err_and(|e| e.contains("-1 is not a positive number")));
    assert!(size("true").is_err_and(|e| e.ends_with(
        "must be a positive number of bytes or a size like \"1MiB\", not boolean true"
    )));
}

#[test]
fn a_full_config() {
    let config = parse(&format!(
        "listen = \"0.0.0.0:9000\"\npath = \"/hooks/site\"\nmax_body = \"64KiB\"\n\
         header_timeout = \"5s\"\n{KEY}\n[[handler]]\nname = \"audit\"\ntype = \"log\"\n\
         format = \"json\"\nrepo = \"acme/*\"\ntag = \"v*\"\ntimeout = \"10m\"\n"
    ))
    .expect("valid config");
    assert_eq!(config.listen.to_string(), "0.0.0.0:9000");
    assert_eq!(config.path, "/hooks/site");
    assert_eq!(config.max_body, 64 << 10);
    assert_eq!(config.header_timeout, Duration::from_secs(5));
    assert_eq!(config.handlers.len(), 1);
    let h = &config.handlers[0];
    assert_eq!(h.name, "audit");
    assert_eq!(h.repo.as_deref(), Some("acme/*"));
    assert_eq!(h.timeout, Some(Duration::from_secs(600)));
    assert!(matches!(
        h.kind,
        HandlerKind::Log {
            format: LogFormat::Json
        }
    ));
}

#[test]
fn errors_name_line_and_key() {
    assert_eq!(
        error(&format!("listen = \"localhost\"\n{KEY}")),
        "hubhook.toml:1: listen: \"localhost\" is not an address with a port (like \"127.0.0.1:8080\" or \"[::1]:8080\")"
    );
    assert_eq!(
        error(&format!("{KEY}\n[[handler]]\ntype = \"shel\"\n")),
        "hubhook.toml:5: handler[0].type: unknown handler type \"shel\" (expected one of: log, shell, docker, compose, plugin)"
    );
    assert!(error(&format!("{KEY}[[handler]]\nname = \"x\"\n"))
        .starts_with("hubhook.toml:3: handler[0].type: missing required key `type`"));
    assert!(error(&format!(
        "{KEY}[[handler]]\ntype = \"log\"\nformatt = \"json\"\n"
    ))
    .starts_with("hubhook.toml:5: handler[0].formatt: unknown key `formatt`"));
    assert!(error(&format!("max_body = \"1XB\"\n{KEY}")).starts_with("hubhook.toml:1: max_body:"));
    assert!(error(&format!("\nheader_timeout = \"soon\"\n{KEY}"))
        .starts_with("hubhook.toml:2: header_timeout:"));
    let unknown = error(&format!("lisen = \"x\"\n{KEY}"));
    assert!(unknown.starts_with("hubhook.toml:1"), "{unknown}");
    assert!(unknown.contains("unknown key `lisen`"), "{unknown}");
    let bad_type = error(&format!("max_connections = \"many\"\n{KEY}"));
    assert!(
        bad_type.starts_with("hubhook.toml:1: max_connections:"),
        "{bad_type}"
    );
}

#[test]
fn shell_handlers() {
    let config = parse(&format!(
        "{KEY}[[handler]]\ntype = \"shell\"\ncommand = [\"deploy.sh\", \"--fast\"]\n\
         workdir = \"site\"\nenv = {{ STAGE = \"prod\" }}\n"
    ))
    .expect("valid shell handler");
    let HandlerKind::Shell {
        command,
        workdir,
        env,
        ..
    } = &config.handlers[0].kind
    else {
        panic!("not a shell handler");
    };
    assert_eq!(command, &["deploy.sh", "--fast"]);
    assert_eq!(
        workdir.as_deref(),
        Some(Path::new("./site")),
        "beside the config file"
    );
    assert_eq!(env.get("STAGE").map(String::as_str), Some("prod"));
    let e = error(&format!("{KEY}[[handler]]\ntype = \"shell\"\n"));
    assert!(
        e.starts_with("hubhook.toml:3: handler[0].command: missing required key `command`"),
        "{e}"
    );
    let e = error(&format!(
        "{KEY}[[handler]]\ntype = \"shell\"\ncommand = []\n"
    ));
    assert!(
        e.starts_with("hubhook.toml:5: handler[0].command: must name the program"),
        "{e}"
    );
    let e = error(&format!(
        "{KEY}[[handler]]\ntype = \"shell\"\ncommand = \"deploy.sh --fast\"\n"
    ));
    assert!(
        e.starts_with("hubhook.toml:5: handler[0].command: must be a list, not string"),
        "{e}"
    );
}

#[test]
fn docker_handlers() {
    let config = parse(&format!(
        "{KEY}[[handler]]\nname = \"blog\"\ntype = \"docker\"\nimage = \"nathanleclaire/octoblog\"\n\
         container = \"blog\"\nrun_args = [\"-p\", \"8000:80\"]\nhealth = \"http://127.0.0.1:8000/\"\n"
    ))
    .expect("valid docker handler");
    let h = &config.handlers[0];
    assert_eq!(
        h.tag.as_deref(),
        Some("latest"),
        "docker deploys latest unless told"
    );
    assert_eq!(h.repo.as_deref(), Some("nathanleclaire/octoblog"));
    assert!(matches!(h.kind, HandlerKind::Docker(_)));

    let e = error(&format!(
        "{KEY}[[handler]]\ntype = \"docker\"\nimage = \"a/b\"\n"
    ));
    assert!(
        e.starts_with("hubhook.toml:3: handler[0].container: set exactly one of"),
        "{e}"
    );
    let e = error(&format!(
        "{KEY}[[handler]]\ntype = \"docker\"\ncontainer = \"x\"\n"
    ));
    assert!(
        e.starts_with("hubhook.toml:3: handler[0].image: missing required key `image`"),
        "{e}"
    );
    let e = error(&format!(
        "{KEY}[[handler]]\ntype = \"docker\"\nimage = \"a/b:latest\"\ncontainer = \"x\"\n"
    ));
    assert!(
        e.starts_with(
            "hubhook.toml:5: handler[0].image: image \"a/b:latest\" is not a repository name"
        ),
        "{e}"
    );
    let e = error(&format!(
        "{KEY}[[handler]]\ntype = \"docker\"\nimage = \"a/b\"\ncontainer = \"x\"\nhealth = \"https://x\"\n"
    ));
    assert!(e.starts_with("hubhook.toml:7: handler[0].health:"), "{e}");
    let e = error(&format!(
        "{KEY}[[handler]]\ntype = \"docker\"\nimage = \"a/b\"\nservice = \"web\"\nrun_args = [\"-p\"]\n"
    ));
    assert!(
        e.starts_with("hubhook.toml:7: handler[0].run_args: applies to containers only"),
        "{e}"
    );
}

#[test]
fn blue_green_docker_handlers() {
    // Blue-green: its keys, and what it refuses.
    let bg = "type = \"docker\"\nimage = \"a/b\"\ncontainer = \"web\"\nstrategy = \"blue-green\"\n";
    let ok = "ports = [\"127.0.0.1:8001:80\", \"127.0.0.1:8002:80\"]\nupstream_file = \"web.upstream\"\n";
    parse(&format!("{KEY}[[handler]]\n{bg}{ok}")).expect("a blue-green handler");
    for (extra, want) in [
        (
            format!("{ok}run_args = [\"-p\", \"8000:80\"]\n"),
            "handler[0].run_args: \"-p\" publishes a port",
        ),
        (
            format!("{ok}run_args = [\"--publish=8000:80\"]\n"),
            "handler[0].run_args: \"--publish=8000:80\" publishes a port",
        ),
        (
            "upstream_file = \"u\"\n".to_owned(),
            "handler[0].ports: blue-green needs two port mappings",
        ),
        (
            "ports = [\"8001:80\", \"8002:80\"]\n".to_owned(),
            "handler[0].upstream_file: blue-green needs the file",
        ),
        (
            "ports = [\"8001:80\", \"8001:80\"]\nupstream_file = \"u\"\n".to_owned(),
            "handler[0].ports: \"8001:80\" and \"8001:80\" are the same port",
        ),
    ] {
        let e = error(&format!("{KEY}[[handler]]\n{bg}{extra}"));
        assert!(e.contains(want), "{want}: {e}");
    }
    let e = error(&format!(
        "{KEY}[[handler]]\ntype = \"docker\"\nimage = \"a/b\"\ncontainer = \"web\"\nports = [\"8001:80\", \"8002:80\"]\n"
    ));
    assert!(
        e.contains("handler[0].ports: applies to strategy = \"blue-green\" only"),
        "{e}"
    );
    // Keys a Swarm update cannot honour are refused with the reason, not ignored.
    for (key, value, why) in [
        (
            "health",
            "\"http://127.0.0.1:8000/\"",
            "Swarm gates a service update with the image's HEALTHCHECK",
        ),
        ("health_timeout", "\"30s\"", "Swarm gates a service update"),
        ("stop_timeout", "\"5s\"", "--stop-grace-period"),
        ("cleanup", "true", "every node keeps its own images"),
    ] {
        let e = error(&format!(
            "{KEY}[[handler]]\ntype = \"docker\"\nimage = \"a/b\"\nservice = \"web\"\n{key} = {value}\n"
        ));
        assert!(
            e.starts_with(&format!(
                "hubhook.toml:7: handler[0].{key}: applies to containers only: "
            )) && e.contains(why),
            "{e}"
        );
    }
}

#[test]
fn debug_shows_no_key() {
    let config = parse(&format!(
        "{KEY}[[hook]]\npath = \"/r\"\nprovider = \"registry\"\nregistry = \"r.example\"\napi_keys = [\"another-key-0123456789\"]\n"
    ))
    .expect("config");
    let shown = format!("{config:?}");
    assert!(!shown.contains("0123456789abcdef0123"), "{shown}");
    assert!(!shown.contains("another-key"), "{shown}");
    assert!(shown.contains("key(s), redacted"), "{shown}");
}

#[test]
fn hooks() {
    let config = parse(
        "[[hook]]\npath = \"/registry\"\nprovider = \"registry\"\nregistry = \"127.0.0.1:5000\"\napi_keys = [\"0123456789abcdef0123\"]\n\
         [[hook]]\npath = \"/github\"\nprovider = \"github\"\nsecret = \"s\"\n",
    )
    .expect("hooks only");
    assert!(
        !config.dockerhub_hook,
        "no Docker Hub hook unless asked for"
    );
    assert_eq!(config.hooks.len(), 2);
    assert_eq!(config.hooks[1].provider.name(), "github");

    assert_eq!(config.hooks[0].registry.as_deref(), Some("127.0.0.1:5000"));
    let e = error(
        "[[hook]]\npath = \"/r\"\nprovider = \"registry\"\napi_keys = [\"0123456789abcdef0123\"]\n",
    );
    assert!(
        e.starts_with("hubhook.toml:1: hook[0].registry: missing required key `registry` (the host its images live on"),
        "{e}"
    );
    let e = error(
        "[[hook]]\npath = \"/g\"\nprovider = \"github\"\nsecret = \"s\"\nregistry = \"ghcr.io\"\n",
    );
    assert!(
        e.starts_with("hubhook.toml:5: hook[0].registry: applies to provider = \"registry\" only"),
        "{e}"
    );
    let e =
        error("[[hook]]\npath = \"/r\"\nprovider = \"registry\"\nregistry = \"127.0.0.1:5000\"\n");
    assert!(
        e.starts_with("hubhook.toml:1: hook[0].api_keys: no API key for this hook"),
        "{e}"
    );
    let e = error("[[hook]]\npath = \"/g\"\nprovider = \"github\"\nsecret = \"\"\n");
    assert!(
        e.starts_with("hubhook.toml:4: hook[0].secret: `secret` must not be empty"),
        "{e}"
    );
    let e = error("[[hook]]\npath = \"/g\"\nprovider = \"github\"\n");
    assert!(
        e.starts_with("hubhook.toml:1: hook[0].secret: missing required key `secret`"),
        "{e}"
    );
    let e = error("[[hook]]\npath = \"/x\"\nprovider = \"quay\"\nallow_unauthenticated = true\n");
    assert!(
        e.starts_with("hubhook.toml:3: hook[0].provider: unknown provider \"quay\""),
        "{e}"
    );
    let e = error(&format!(
        "{KEY}[[hook]]\npath = \"/hubhook\"\nprovider = \"registry\"\nregistry = \"r.example\"\nallow_unauthenticated = true\n"
    ));
    assert!(
        e.starts_with("hubhook.toml:4: hook[0].path: \"/hubhook\" is already served"),
        "{e}"
    );
    let e = error("[[hook]]\npath = \"/c\"\nprovider = \"generic\"\nrepo_pointer = \"repo\"\ntag_pointer = \"/tag\"\nallow_unauthenticated = true\n");
    assert!(
        e.starts_with("hubhook.toml:4: hook[0].repo_pointer: \"repo\" is not a JSON pointer"),
        "{e}"
    );
}

#[test]
fn keys_are_required_unless_waived() {
    assert!(error("listen = \"127.0.0.1:1\"\n").contains("no API key"));
    assert!(error("[auth]\napi_keys = [\"short\"]\n").starts_with("hubhook.toml:2: auth.api_keys:"));
    let open = parse("[auth]\nallow_unauthenticated = true\n").expect("waived");
    assert!(open.api_keys.is_empty());
}

#[test]
fn duplicate_names_are_refused() {
    let e = error(&format!(
        "{KEY}[[handler]]\ntype = \"log\"\n[[handler]]\ntype = \"log\"\n"
    ));
    assert!(e.starts_with("hubhook.toml:5: handler[1].name:"), "{e}");
}
