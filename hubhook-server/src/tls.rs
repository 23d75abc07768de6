//! `hubhook tls self-signed`: a certificate and a private key for `[tls]`, made here.

use std::io::Write;
use std::path::Path;

use sha2::{Digest, Sha256};

/// Writes `DIR/cert.pem` and `DIR/key.pem` (0600) for `hosts` (names or IP addresses),
/// and prints the `[tls]` lines and the certificate's SHA-256 fingerprint. Refuses to
/// overwrite either file.
pub(crate) fn self_signed(hosts: &[String], dir: &Path) -> Result<(), String> {
    if hosts.is_empty() {
        return Err("give at least one --host (a name or an IP address clients use)".into());
    }
    let made = rcgen::generate_simple_self_signed(hosts.to_vec())
        .map_err(|e| format!("cannot make a certificate for {}: {e}", hosts.join(", ")))?;
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    // Both or neither: never a new key beside an old certificate.
    if let Some(there) = [&cert, &key].into_iter().find(|p| p.exists()) {
        return Err(format!(
            "{} exists already; move it away or choose another --out",
            there.display()
        ));
    }
    write_new(&key, made.key_pair.serialize_pem().as_bytes(), 0o600)?;
    write_new(&cert, made.cert.pem().as_bytes(), 0o644)?;
    let fingerprint: Vec<String> = Sha256::digest(made.cert.der())
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect();
    println!("wrote {} and {} (mode 0600)", cert.display(), key.display());
    println!("SHA-256 fingerprint: {}", fingerprint.join(":"));
    println!();
    println!("[tls]");
    println!("cert = {:?}", cert.display().to_string());
    println!("key = {:?}", key.display().to_string());
    println!();
    println!(
        "Clients trust it with `hubhook send --cacert {}` or `curl --cacert {}`.",
        cert.display(),
        cert.display()
    );
    Ok(())
}

/// Creates `path` with `mode` from the start (never readable by others in between), and
/// refuses to replace a file that is already there.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => format!(
                "{} exists already; move it away or choose another --out",
                path.display()
            ),
            _ => format!("cannot create {}: {e}", path.display()),
        })?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}
