//! API keys the server makes itself: `hubhook keygen`, and the key kept in the data dir
//! when no configuration file gives one.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;

/// The name of the key file in the data dir.
pub(crate) const KEY_FILE: &str = "api-key";

/// A new random key: 256 bits, base64url without padding (43 characters, URL-safe).
pub(crate) fn generate() -> io::Result<String> {
    loop {
        let mut bytes = [0u8; 32];
        getrandom::getrandom(&mut bytes).map_err(|e| io::Error::other(e.to_string()))?;
        let key = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        // One key in 32 would start with '-' or '_': a '-' reads as an option on a
        // command line (`hubhook send --key -V…`). Draw again; still 256 random bits.
        if key.starts_with(char::is_alphanumeric) {
            return Ok(key);
        }
    }
}

/// Beside the key: written once a start has printed the hook URL with the key in full.
pub(crate) const SHOWN_FILE: &str = "api-key.shown";

/// The key in `data_dir`, made (mode 0600, in a 0700 directory) if there is none yet.
/// Returns the key, the file, and whether it was made just now.
pub(crate) fn load_or_create(data_dir: &Path) -> io::Result<(String, PathBuf, bool)> {
    let path = data_dir.join(KEY_FILE);
    let context = |what: &str, e: io::Error| {
        io::Error::new(e.kind(), format!("cannot {what} {}: {e}", path.display()))
    };
    match fs::read_to_string(&path) {
        Ok(text) => {
            let key = text.trim().to_owned();
            if hubhook_core::auth::check_key(&key).is_err() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{} holds no usable key (delete it to make a new one)",
                        path.display()
                    ),
                ));
            }
            if let Ok(meta) = fs::metadata(&path) {
                if meta.permissions().mode() & 0o077 != 0 {
                    tracing::warn!(file = %path.display(), "the key file is readable by other users; chmod 600 it");
                }
            }
            return Ok((key, path, false));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(context("read", e)),
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data_dir)
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot create the data dir {}: {e}", data_dir.display()),
            )
        })?;
    let key = generate()?;
    // create_new: two servers starting at once cannot both write a key.
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| context("create", e))?;
    file.write_all(format!("{key}\n").as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| context("write", e))?;
    Ok((key, path, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_long_url_safe_and_distinct() {
        let a = generate().expect("key");
        let b = generate().expect("key");
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
    }

    #[test]
    fn keys_never_start_like_an_option() {
        for _ in 0..500 {
            let key = generate().expect("key");
            assert!(key.starts_with(char::is_alphanumeric), "{key}");
        }
    }

    #[test]
    fn the_data_dir_key_is_made_once_and_private() {
        let dir = std::env::temp_dir().join(format!("hubhook-keys-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let (first, path, created) = load_or_create(&dir).expect("made");
        assert!(created);
        assert_eq!(
            fs::metadata(&path).expect("meta").permissions().mode() & 0o777,
            0o600
        );
        let (again, _, created) = load_or_create(&dir).expect("read back");
        assert!(!created);
        assert_eq!(first, again);
        fs::remove_dir_all(&dir).expect("cleanup");
    }
}
