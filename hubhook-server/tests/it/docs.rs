//! Every TOML block in README.md, docs/ and examples/ goes through `hubhook check`, as a
//! newcomer would paste it: a block passes, or fails on a line that holds a placeholder
//! for something the reader supplies, and then `serve` refuses it too, so no placeholder
//! ever authenticates a request.

use std::path::{Path, PathBuf};

use crate::support::*;

/// A TOML block: where it is (file and first line) and its text.
struct Block {
    origin: String,
    text: String,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The ```toml blocks of a Markdown file, dedented (PLUGINS.md indents them in a list).
fn markdown_blocks(file: &str) -> Vec<Block> {
    let text = std::fs::read_to_string(root().join(file)).expect("a doc file");
    let mut blocks = Vec::new();
    let mut lines = text.lines().enumerate();
    while let Some((n, line)) = lines.next() {
        let fence = line.trim_start();
        if fence != "```toml" {
            continue;
        }
        let indent = line.len() - fence.len();
        let mut body = String::new();
        for (_, line) in lines.by_ref() {
            if line.trim_start() == "```" {
                break;
            }
            body.push_str(line.get(indent..).unwrap_or(line.trim_start()));
            body.push('\n');
        }
        blocks.push(Block {
            origin: format!("{file}:{}", n + 2),
            text: body,
        });
    }
    blocks
}

fn all_blocks() -> Vec<Block> {
    let mut files = vec!["README.md".to_owned()];
    let mut docs: Vec<String> = std::fs::read_dir(root().join("docs"))
        .expect("docs/")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".md"))
        .map(|name| format!("docs/{name}"))
        .collect();
    docs.sort();
    files.extend(docs);
    let mut blocks: Vec<Block> = files.iter().flat_map(|f| markdown_blocks(f)).collect();
    let mut examples: Vec<PathBuf> = std::fs::read_dir(root().join("examples"))
        .expect("examples/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    examples.sort();
    for path in examples {
        blocks.push(Block {
            origin: format!(
                "examples/{}",
                path.file_name().expect("name").to_string_lossy()
            ),
            text: std::fs::read_to_string(&path).expect("example"),
        });
    }
    blocks
}

/// Whether `line` marks a value the reader must supply: `<…>`, `"..."`, the words of a
/// key to paste, or a comment saying it is the reader's own (`# your script`).
fn holds_placeholder(line: &str) -> bool {
    let (value, comment) = line.split_once('#').unwrap_or((line, ""));
    value.contains("\"<")
        || value.contains("\"...\"")
        || value.contains("hubhook keygen")
        || comment.trim_start().starts_with("your ")
}

#[test]
fn every_toml_block_in_the_docs_passes_check_or_fails_on_a_placeholder() {
    // The README's first step: `hubhook serve` with no file, which makes the key that
    // CONFIG.md's "Without a file" block (and every fragment here) goes on using.
    let first = TempDir::new("docs-first-start");
    let server = Server::start(&["--listen", "127.0.0.1:0"], first.path(), &[]);
    assert!(server.terminate().success());
    let key = std::fs::read_to_string(first.path().join("hubhook-data/api-key"))
        .expect("the first start wrote its key");
    let key = key.trim().to_owned();

    // A fragment (`[[hook]]`, `[journal]`, one handler) goes into a file that has a key.
    const BASE: &str =
        "data_dir = \"hubhook-data\"\n[auth]\napi_keys_file = \"hubhook-data/api-key\"\n";
    let base_lines = BASE.lines().count();

    let blocks = all_blocks();
    assert!(blocks.len() >= 12, "found only {} blocks", blocks.len());
    let mut passed = 0;
    let mut placeholders = 0;
    for block in blocks {
        let table: toml::Table = match block.text.parse() {
            Ok(table) => table,
            Err(e) => panic!("{}: not TOML: {e}", block.origin),
        };
        if table.contains_key("package")
            || table.contains_key("lib")
            || table.contains_key("dependencies")
        {
            // A Cargo manifest: the plugin build test runs it.
            continue;
        }
        let whole = table.contains_key("auth")
            || table
                .values()
                .any(|v| !matches!(v, toml::Value::Table(_) | toml::Value::Array(_)));
        let (text, offset) = if whole {
            (block.text.clone(), 0)
        } else {
            (format!("{BASE}{}", block.text), base_lines)
        };
        eprintln!("checking {}", block.origin);
        let dir = TempDir::new("docs-block");
        std::fs::create_dir(dir.path().join("hubhook-data")).expect("data dir");
        let data = dir.path().join("hubhook-data");
        std::fs::set_permissions(&data, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .expect("chmod");
        dir.write_private("hubhook-data/api-key", &format!("{key}\n"));
        dir.write_private("hubhook.toml", &text);
        let out = hubhook(&["check", "--config", "hubhook.toml"], dir.path());
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if out.status.success() {
            passed += 1;
            continue;
        }
        // It failed: only on a line the reader is meant to fill in.
        let error = stderr
            .lines()
            .find_map(|l| l.strip_prefix("error: hubhook.toml:"))
            .unwrap_or_else(|| panic!("{}: check failed without a line:\n{stderr}", block.origin));
        let line: usize = error
            .split(':')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{}: {error}", block.origin));
        let written = line
            .checked_sub(offset + 1)
            .and_then(|i| block.text.lines().nth(i))
            .unwrap_or_else(|| {
                panic!(
                    "{}: the error points outside the block: {error}",
                    block.origin
                )
            });
        assert!(
            holds_placeholder(written),
            "{}: check fails on a line with no placeholder:\n  {written}\n  {error}",
            block.origin
        );
        placeholders += 1;
        // `serve` refuses the same file with the same words: it never listens, so the
        // placeholder authenticates nothing.
        let out = hubhook(
            &[
                "serve",
                "--config",
                "hubhook.toml",
                "--listen",
                "127.0.0.1:0",
            ],
            dir.path(),
        );
        let serve_err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{}: {serve_err}", block.origin);
        assert!(serve_err.contains(error), "{}: {serve_err}", block.origin);
        assert!(!serve_err.contains("listening on"), "{}", block.origin);
    }
    assert!(passed >= 5, "{passed} blocks passed");
    assert!(placeholders >= 3, "{placeholders} blocks hold placeholders");
}

/// CONFIG.md's "Without a file" block, written as a file beside the data dir of a first
/// start, takes the hook URL that start printed.
#[test]
fn the_without_a_file_block_keeps_the_first_starts_key() {
    let block = markdown_blocks("docs/CONFIG.md")
        .into_iter()
        .next()
        .expect("CONFIG.md's first block is \"Without a file\"");
    assert!(block.text.contains("api_keys_file"), "{}", block.text);
    let dir = TempDir::new("docs-without-a-file");
    let mut server = Server::start(&["--listen", "127.0.0.1:0"], dir.path(), &[]);
    let printed = server.wait_for_stdout("apikey=");
    assert!(server.terminate().success());
    let key = std::fs::read_to_string(dir.path().join("hubhook-data/api-key"))
        .expect("key file")
        .trim()
        .to_owned();
    assert!(
        printed.contains(&key),
        "the first start printed its URL: {printed}"
    );

    dir.write_private("hubhook.toml", &block.text);
    let server = Server::start(
        &["--config", "hubhook.toml", "--listen", "127.0.0.1:0"],
        dir.path(),
        &[],
    );
    let (status, body) = request(
        server.addr,
        "POST",
        &format!("/hubhook?apikey={key}"),
        &["Content-Type: application/json"],
        hubhook_core::message::EXAMPLE_PAYLOAD.as_bytes(),
    );
    assert_eq!(status, 202, "{body}");
    assert!(server.terminate().success());
}
