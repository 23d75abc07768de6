//! The control socket: how `hubhook deliveries replay` reaches a running server.
//!
//! A Unix socket in the data dir (`control.sock`, mode 0600 inside the 0700 data dir, so
//! only the server's user can use it). One request per connection, one line each way:
//! `replay <delivery id>` in, `{"delivery":"<new id>"}` or `{"error":"..."}` out.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hubhook_core::{DeliveryId, HubhookService};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

/// The socket's file name in the data dir.
pub(crate) const SOCKET_FILE: &str = "control.sock";
/// The longest request line read.
const MAX_LINE: u64 = 256;
/// How long a client may take to send its line.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The socket, removed when dropped.
#[derive(Debug)]
pub(crate) struct Control {
    path: PathBuf,
}

impl Drop for Control {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds the socket in `data_dir` and answers requests on it in the background. The
/// caller holds the journal's lock, so a socket file already there is a leftover.
pub(crate) fn start(data_dir: &Path, service: HubhookService) -> Result<Control, String> {
    let path = data_dir.join(SOCKET_FILE);
    let _ = std::fs::remove_file(&path);
    // Created 0600 by the umask itself: no moment in which another user could connect.
    // (The umask is the process's; a file another thread creates meanwhile only gets
    // stricter modes.)
    use nix::sys::stat::{umask, Mode};
    let before = umask(Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(&path);
    umask(before);
    let listener =
        bound.map_err(|e| format!("cannot bind the control socket {}: {e}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("cannot restrict {}: {e}", path.display()))?;
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(answer(stream, service.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "control socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    Ok(Control { path })
}

async fn answer(stream: UnixStream, service: HubhookService) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(MAX_LINE));
    let reply = match tokio::time::timeout(READ_TIMEOUT, reader.read_line(&mut line)).await {
        Ok(Ok(_)) => respond(line.trim(), &service).await,
        Ok(Err(e)) => Err(format!("cannot read the request: {e}")),
        Err(_) => Err("no request line within 5 s".to_owned()),
    };
    let body = match reply {
        Ok(id) => serde_json::json!({ "delivery": id.as_str() }),
        Err(e) => serde_json::json!({ "error": e }),
    };
    let _ = write.write_all(format!("{body}\n").as_bytes()).await;
}

async fn respond(request: &str, service: &HubhookService) -> Result<DeliveryId, String> {
    let Some(id) = request.strip_prefix("replay ") else {
        return Err("unknown request (expected `replay <delivery id>`)".to_owned());
    };
    let id: DeliveryId = id.trim().parse().map_err(|e| format!("{e}"))?;
    service.replay(id).await.map_err(|e| e.to_string())
}

/// Asks the server listening on `data_dir`'s socket to replay `id`. `Ok(None)` when no
/// server listens there.
pub(crate) async fn replay(data_dir: &Path, id: DeliveryId) -> Result<Option<String>, String> {
    let path = data_dir.join(SOCKET_FILE);
    let stream = match UnixStream::connect(&path).await {
        Ok(stream) => stream,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None)
        }
        Err(e) => {
            return Err(format!(
                "cannot reach the server at {}: {e}",
                path.display()
            ))
        }
    };
    let (read, mut write) = stream.into_split();
    write
        .write_all(format!("replay {id}\n").as_bytes())
        .await
        .map_err(|e| format!("cannot talk to the server at {}: {e}", path.display()))?;
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(64 * 1024));
    tokio::time::timeout(Duration::from_secs(30), reader.read_line(&mut line))
        .await
        .map_err(|_| "the server did not answer within 30 s".to_owned())?
        .map_err(|e| format!("cannot read the server's answer: {e}"))?;
    let answer: serde_json::Value = serde_json::from_str(line.trim())
        .map_err(|_| format!("the server answered {:?}", line.trim()))?;
    match (answer["delivery"].as_str(), answer["error"].as_str()) {
        (Some(new), _) => Ok(Some(new.to_owned())),
        (_, Some(error)) => Err(error.to_owned()),
        _ => Err(format!("the server answered {answer}")),
    }
}
