//! What `hubhook check` verifies beyond the file itself, without starting anything: what
//! `serve` will need from the machine (a data dir it can create, programs it can run).

use std::path::{Path, PathBuf};

use crate::config::{Config, HandlerKind};

/// Checks what `serve` will need; returns what was checked, or the first problem as
/// `FILE[:LINE]: KEY: problem`.
pub(crate) fn check(config: &Config) -> Result<Vec<String>, String> {
    let at = |key: &str, line: Option<usize>, problem: String| {
        let file = config.file.as_deref().unwrap_or(Path::new("(no file)"));
        let line = line.map_or(String::new(), |line| format!(":{line}"));
        format!("{}{line}: {key}: {problem}", file.display())
    };
    let mut checked = Vec::new();
    let dir = &config.data_dir;
    let data_dir = |problem: String| at("data_dir", config.data_dir_line, problem);
    let Some(found) = existing_ancestor(dir) else {
        return Err(data_dir(format!(
            "{} has no existing parent",
            dir.display()
        )));
    };
    let verb = if found.as_path() == dir.as_path() {
        "written"
    } else {
        "created"
    };
    if !found.is_dir() {
        return Err(data_dir(format!(
            "{} cannot be {verb}: {} is not a directory",
            dir.display(),
            found.display()
        )));
    }
    if !writable(&found) {
        return Err(data_dir(format!(
            "{} cannot be {verb}: {} is not writable by this user",
            dir.display(),
            found.display()
        )));
    }
    checked.push(format!("data dir {} can be {verb}", dir.display()));
    for (i, spec) in config.handlers.iter().enumerate() {
        let (key, program) = match &spec.kind {
            HandlerKind::Shell { command, .. } => ("command", PathBuf::from(&command[0])),
            HandlerKind::Docker(handler) => ("docker", handler.docker_binary_path().to_owned()),
            HandlerKind::Compose(handler) => ("compose", PathBuf::from(&handler.compose_argv()[0])),
            _ => continue,
        };
        let found = executable(&program).ok_or_else(|| {
            at(
                &format!("handler[{i}].{key}"),
                spec.program_line,
                match program.components().count() {
                    1 => format!(
                        "{:?} is not a program in PATH",
                        program.display().to_string()
                    ),
                    _ => format!("{} is not an executable file", program.display()),
                },
            )
        })?;
        checked.push(format!("program {}", found.display()));
    }
    Ok(checked)
}

/// `path` itself when it exists, else its nearest ancestor that does.
fn existing_ancestor(path: &Path) -> Option<PathBuf> {
    if path.exists() {
        return Some(path.to_path_buf());
    }
    let absolute = std::path::absolute(path).ok()?;
    absolute
        .ancestors()
        .find(|p| p.exists())
        .map(Path::to_path_buf)
}

fn writable(dir: &Path) -> bool {
    use nix::unistd::{access, AccessFlags};
    access(dir, AccessFlags::W_OK | AccessFlags::X_OK).is_ok()
}

/// Where `program` is, if it can be run: a path with a '/' as it is, a bare name in PATH.
fn executable(program: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let runnable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.components().count() > 1 {
        return runnable(program).then(|| program.to_path_buf());
    }
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|p| runnable(p))
}
