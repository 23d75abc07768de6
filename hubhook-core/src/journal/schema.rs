//! The journal's file: its lock, its mode, and its tables.

use std::fs::File;
use std::path::{Path, PathBuf};

use rusqlite::Connection;

use crate::journal::{JournalError, SCHEMA_VERSION};

/// Opens (or creates) the database at `path` for writing, behind its lock file.
pub(crate) fn open(path: &Path) -> Result<(Connection, File), JournalError> {
    let fail = |e: &dyn std::fmt::Display| JournalError::Open {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    let lock_file = lock_path(path);
    let mut lock_options = File::options();
    lock_options.create(true).truncate(false).write(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut lock_options, 0o600);
    let lock = lock_options
        .open(&lock_file)
        .map_err(|e| fail(&format_args!("{}: {e}", lock_file.display())))?;
    lock.try_lock().map_err(|e| match e {
        std::fs::TryLockError::WouldBlock => {
            fail(&"the database is locked: is another hubhook using this data dir?")
        }
        std::fs::TryLockError::Error(e) => fail(&format_args!("{}: {e}", lock_file.display())),
    })?;
    // The journal holds every payload: readable by its owner only, also when the file
    // was made by someone else. (SQLite gives the -wal and -shm files the database
    // file's mode.)
    if !path.exists() {
        let mut options = File::options();
        options.create_new(true).write(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        if let Err(e) = options.open(path) {
            if e.kind() != std::io::ErrorKind::AlreadyExists {
                return Err(fail(&e));
            }
        }
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let private = std::fs::Permissions::from_mode(0o600);
        std::fs::set_permissions(path, private).map_err(|e| fail(&e))?;
    }
    let conn = Connection::open(path).map_err(|e| fail(&e))?;
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(|e| fail(&e))?;
    let tables: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_master", [], |row| row.get(0))
        .map_err(|e| fail(&e))?;
    if version != SCHEMA_VERSION && (version != 0 || tables != 0) {
        return Err(fail(&format_args!(
            "schema version {version}, this hubhook reads version {SCHEMA_VERSION}: move the file away to start a new journal"
        )));
    }
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         PRAGMA cache_size = -1024;
         BEGIN IMMEDIATE;
         CREATE TABLE IF NOT EXISTS deliveries (
             id TEXT PRIMARY KEY,
             received_ms INTEGER NOT NULL,
             source TEXT NOT NULL,
             repo TEXT NOT NULL,
             tag TEXT NOT NULL,
             message TEXT NOT NULL,
             handlers TEXT NOT NULL,
             status TEXT NOT NULL DEFAULT 'pending',
             finished_ms INTEGER
         ) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS runs (
             delivery TEXT NOT NULL,
             seq INTEGER NOT NULL,
             handler TEXT NOT NULL,
             attempt INTEGER NOT NULL,
             started_ms INTEGER NOT NULL,
             ended_ms INTEGER NOT NULL,
             status TEXT NOT NULL,
             detail TEXT NOT NULL,
             final INTEGER NOT NULL,
             PRIMARY KEY (delivery, seq)
         ) WITHOUT ROWID;
         -- What a chart over the retention window reads, without the payloads: status
         -- and finished_ms come after the message in a row, so a scan of the table
         -- would read every payload to reach them.
         CREATE INDEX IF NOT EXISTS deliveries_by_time
             ON deliveries (received_ms, status, finished_ms);
         PRAGMA user_version = 1;
         COMMIT;",
    )
    .map_err(|e| {
        if busy(&e) {
            fail(&"the database is locked by another process")
        } else {
            fail(&e)
        }
    })?;
    Ok((conn, lock))
}

/// The lock file that says "a hubhook writes this journal".
fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

fn busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}
