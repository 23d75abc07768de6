//! The journal: every accepted delivery, durable before it is answered 2xx.
//!
//! SQLite in WAL mode with `synchronous=FULL`, written by one thread. Group commit: the
//! writer takes everything that arrived while the previous commit ran and commits it in
//! one transaction, with one fsync, so many requests waiting at once share one fsync and
//! throughput grows with concurrency. The database is opened with an exclusive lock: a
//! second hubhook on the same data dir is refused at start instead of interleaving.
//!
//! A delivery stays unfinished until every handler it was dispatched to has recorded a
//! final outcome. A run cancelled by shutdown is not final: on the next start,
//! [`Journal::unfinished`] returns the delivery with the handlers still owed a run.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::oneshot;

use crate::handler::{DeliveryId, HandlerError, Outcome};

/// Most records one commit takes; the rest wait for the next one.
const MAX_BATCH: usize = 4096;
/// Longest outcome text kept per run.
const MAX_DETAIL: usize = 4096;

/// Why the journal could not be opened or written.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    /// The database could not be opened, created, locked or read.
    #[error("journal {path}: {reason}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// What went wrong, in SQLite's words where it has them.
        reason: String,
    },
    /// A commit failed; the deliveries in it were not accepted.
    #[error("journal write failed: {0}")]
    Write(String),
    /// The writer is gone (the journal was dropped).
    #[error("the journal is closed")]
    Closed,
}

/// A delivery as the journal keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// Its id.
    pub id: DeliveryId,
    /// The provider it came from.
    pub source: String,
    /// The message, serialized (`HubMessage`'s JSON).
    pub message: String,
    /// The handlers it was dispatched to (by name) that have not finished yet.
    pub pending: Vec<String>,
}

enum Op {
    Append(Accepted, oneshot::Sender<Result<(), String>>),
    Run {
        delivery: DeliveryId,
        handler: String,
        attempt: u32,
        started_ms: i64,
        status: &'static str,
        detail: String,
        final_: bool,
    },
    Unfinished(oneshot::Sender<Result<Vec<Accepted>, String>>),
}

/// The delivery journal. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    tx: std::sync::Mutex<mpsc::Sender<Op>>,
    stats: Arc<Stats>,
}

/// Commit counters for `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) commits: AtomicU64,
    pub(crate) records: AtomicU64,
    pub(crate) commit_micros: AtomicU64,
}

impl std::fmt::Debug for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Op")
    }
}

impl Journal {
    /// Opens (or creates) the journal at `path` and takes its lock.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, JournalError> {
        let path = path.as_ref().to_owned();
        let fail = |e: &dyn std::fmt::Display| JournalError::Open {
            path: path.clone(),
            reason: e.to_string(),
        };
        let conn = Connection::open(&path).map_err(|e| fail(&e))?;
        conn.execute_batch(
            "PRAGMA locking_mode = EXCLUSIVE;
             PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             BEGIN IMMEDIATE;
             CREATE TABLE IF NOT EXISTS deliveries (
                 id TEXT PRIMARY KEY,
                 received_ms INTEGER NOT NULL,
                 source TEXT NOT NULL,
                 message TEXT NOT NULL,
                 pending TEXT NOT NULL,
                 finished_ms INTEGER
             );
             CREATE INDEX IF NOT EXISTS unfinished ON deliveries (finished_ms, id);
             CREATE TABLE IF NOT EXISTS runs (
                 delivery TEXT NOT NULL,
                 handler TEXT NOT NULL,
                 attempt INTEGER NOT NULL,
                 started_ms INTEGER NOT NULL,
                 ended_ms INTEGER NOT NULL,
                 status TEXT NOT NULL,
                 detail TEXT NOT NULL
             );
             CREATE INDEX IF NOT EXISTS runs_by_delivery ON runs (delivery);
             COMMIT;",
        )
        .map_err(|e| match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
                fail(&"the database is locked: is another hubhook using this data dir?")
            }
            _ => fail(&e),
        })?;
        let (tx, rx) = mpsc::channel();
        let stats = Arc::new(Stats::default());
        let writer_stats = stats.clone();
        std::thread::Builder::new()
            .name("hubhook-journal".into())
            .spawn(move || writer(conn, rx, &writer_stats))
            .map_err(|e| fail(&e))?;
        Ok(Self {
            path,
            tx: std::sync::Mutex::new(tx),
            stats,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn send(&self, op: Op) -> Result<(), JournalError> {
        let tx = self.tx.lock().map_err(|_| JournalError::Closed)?;
        tx.send(op).map_err(|_| JournalError::Closed)
    }

    /// Records `delivery`; resolves once it is committed (fsync included).
    pub async fn append(&self, delivery: Accepted) -> Result<(), JournalError> {
        let (done, committed) = oneshot::channel();
        self.send(Op::Append(delivery, done))?;
        match committed.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(JournalError::Write(e)),
            Err(_) => Err(JournalError::Closed),
        }
    }

    /// Records one handler run. `final_` runs (success, failure, timeout, panic) take the
    /// handler off the delivery's pending list; a cancelled run leaves it owed.
    pub(crate) fn record_run(
        &self,
        delivery: DeliveryId,
        handler: &str,
        attempt: u32,
        started: SystemTime,
        result: &Result<Outcome, HandlerError>,
    ) {
        let (status, detail, final_) = match result {
            Ok(outcome) => ("ok", outcome.summary.clone(), true),
            Err(HandlerError::Cancelled) => ("cancelled", String::new(), false),
            Err(HandlerError::Timeout(_)) => ("timeout", result_text(result), true),
            Err(HandlerError::Panicked(_)) => ("panic", result_text(result), true),
            Err(HandlerError::Rejected(_)) => ("rejected", result_text(result), true),
            Err(_) => ("failed", result_text(result), true),
        };
        let detail: String = detail.chars().take(MAX_DETAIL).collect();
        let op = Op::Run {
            delivery,
            handler: handler.to_owned(),
            attempt,
            started_ms: millis(started),
            status,
            detail,
            final_,
        };
        if self.send(op).is_err() {
            tracing::error!(%delivery, handler, "the journal is closed: a run outcome was not recorded");
        }
    }

    /// Deliveries accepted but not finished, oldest first, with the handlers still owed.
    pub async fn unfinished(&self) -> Result<Vec<Accepted>, JournalError> {
        let (reply, answer) = oneshot::channel();
        self.send(Op::Unfinished(reply))?;
        match answer.await {
            Ok(Ok(list)) => Ok(list),
            Ok(Err(e)) => Err(JournalError::Write(e)),
            Err(_) => Err(JournalError::Closed),
        }
    }

    #[cfg(test)]
    pub(crate) fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The journal's counters in the Prometheus text format.
    pub(crate) fn render_metrics(&self) -> String {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (commits, records) = (load(&self.stats.commits), load(&self.stats.records));
        format!(
            "# HELP hubhook_journal_commits_total Journal transactions committed (one fsync each).\n\
             # TYPE hubhook_journal_commits_total counter\n\
             hubhook_journal_commits_total {commits}\n\
             # HELP hubhook_journal_records_total Records written (deliveries and run outcomes).\n\
             # TYPE hubhook_journal_records_total counter\n\
             hubhook_journal_records_total {records}\n\
             # HELP hubhook_journal_commit_seconds_total Time spent committing.\n\
             # TYPE hubhook_journal_commit_seconds_total counter\n\
             hubhook_journal_commit_seconds_total {}\n",
            load(&self.stats.commit_micros) as f64 / 1e6
        )
    }
}

fn result_text(result: &Result<Outcome, HandlerError>) -> String {
    match result {
        Ok(o) => o.summary.clone(),
        Err(e) => e.to_string(),
    }
}

fn millis(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The writer thread: group commits until the journal is dropped.
fn writer(mut conn: Connection, rx: mpsc::Receiver<Op>, stats: &Stats) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        // Queries answer in order with the writes around them.
        let started = Instant::now();
        let mut records = 0u64;
        let result = (|| -> rusqlite::Result<()> {
            let tx = conn.transaction()?;
            for op in &batch {
                match op {
                    Op::Append(d, _) => {
                        records += 1;
                        tx.execute(
                            "INSERT INTO deliveries (id, received_ms, source, message, pending)
                             VALUES (?1, ?2, ?3, ?4, ?5)",
                            params![
                                d.id.as_str(),
                                millis(SystemTime::now()),
                                d.source,
                                d.message,
                                d.pending.join("\n"),
                            ],
                        )?;
                    }
                    Op::Run {
                        delivery,
                        handler,
                        attempt,
                        started_ms,
                        status,
                        detail,
                        final_,
                    } => {
                        records += 1;
                        let now = millis(SystemTime::now());
                        tx.execute(
                            "INSERT INTO runs (delivery, handler, attempt, started_ms, ended_ms, status, detail)
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                            params![delivery.as_str(), handler, attempt, started_ms, now, status, detail],
                        )?;
                        if *final_ {
                            let pending: Option<String> = tx
                                .query_row(
                                    "SELECT pending FROM deliveries WHERE id = ?1",
                                    [delivery.as_str()],
                                    |row| row.get(0),
                                )
                                .optional()?;
                            if let Some(pending) = pending {
                                let left: Vec<&str> =
                                    pending.lines().filter(|h| *h != handler.as_str()).collect();
                                let finished = left.is_empty().then_some(now);
                                tx.execute(
                                    "UPDATE deliveries SET pending = ?2, finished_ms = ?3 WHERE id = ?1",
                                    params![delivery.as_str(), left.join("\n"), finished],
                                )?;
                            }
                        }
                    }
                    Op::Unfinished(_) => {}
                }
            }
            tx.commit()
        })();
        let elapsed = started.elapsed();
        stats.commits.fetch_add(1, Ordering::Relaxed);
        stats.records.fetch_add(records, Ordering::Relaxed);
        stats
            .commit_micros
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
        let outcome = result.map_err(|e| e.to_string());
        if let Err(e) = &outcome {
            tracing::error!(error = %e, "journal commit failed");
        }
        for op in batch {
            match op {
                Op::Append(_, done) => {
                    let _ = done.send(outcome.clone());
                }
                Op::Unfinished(reply) => {
                    let _ = reply.send(unfinished(&conn).map_err(|e| e.to_string()));
                }
                Op::Run { .. } => {}
            }
        }
    }
}

fn unfinished(conn: &Connection) -> rusqlite::Result<Vec<Accepted>> {
    let mut stmt = conn.prepare(
        "SELECT id, source, message, pending FROM deliveries
         WHERE finished_ms IS NULL ORDER BY id",
    )?;
    let rows = stmt.query_map([], |row| {
        Ok((
            row.get::<_, String>(0)?,
            row.get::<_, String>(1)?,
            row.get::<_, String>(2)?,
            row.get::<_, String>(3)?,
        ))
    })?;
    let mut list = Vec::new();
    for row in rows {
        let (id, source, message, pending) = row?;
        // An id that does not parse was not written by hubhook: skip it, loudly.
        match id.parse() {
            Ok(id) => list.push(Accepted {
                id,
                source,
                message,
                pending: pending.lines().map(str::to_owned).collect(),
            }),
            Err(_) => tracing::error!(id, "the journal holds a delivery id hubhook did not write"),
        }
    }
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("hubhook-journal-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        dir.join("journal.sqlite")
    }

    fn accepted(handlers: &[&str]) -> Accepted {
        Accepted {
            id: DeliveryId::generate(),
            source: "dockerhub".into(),
            message: "{}".into(),
            pending: handlers.iter().map(|h| (*h).to_owned()).collect(),
        }
    }

    async fn settle(journal: &Journal) {
        // An unfinished() query is answered after every write sent before it.
        journal.unfinished().await.expect("query");
    }

    #[tokio::test]
    async fn deliveries_stay_unfinished_until_every_handler_is_final() {
        let path = temp("pending");
        let journal = Journal::open(&path).expect("open");
        let a = accepted(&["log", "deploy"]);
        let b = accepted(&["log"]);
        journal.append(a.clone()).await.expect("append a");
        journal.append(b.clone()).await.expect("append b");
        let now = SystemTime::now();
        journal.record_run(a.id, "log", 1, now, &Ok(Outcome::new("logged")));
        journal.record_run(a.id, "deploy", 1, now, &Err(HandlerError::Cancelled));
        journal.record_run(b.id, "log", 1, now, &Err(HandlerError::Failed("x".into())));
        settle(&journal).await;
        let left = journal.unfinished().await.expect("unfinished");
        assert_eq!(left.len(), 1, "{left:?}");
        assert_eq!(left[0].id, a.id);
        assert_eq!(left[0].pending, ["deploy"], "a cancelled run is still owed");
        drop(journal);

        // Reopened: the same state, from disk.
        std::thread::sleep(std::time::Duration::from_millis(50));
        let journal = Journal::open(&path).expect("reopen");
        let left = journal.unfinished().await.expect("unfinished");
        assert_eq!(left.iter().map(|d| d.id).collect::<Vec<_>>(), [a.id]);
    }

    #[tokio::test]
    async fn concurrent_appends_share_commits() {
        let journal = Arc::new(Journal::open(temp("batch")).expect("open"));
        let mut tasks = Vec::new();
        for _ in 0..200 {
            let journal = journal.clone();
            tasks.push(tokio::spawn(async move {
                journal.append(accepted(&["log"])).await
            }));
        }
        for task in tasks {
            task.await.expect("task").expect("append");
        }
        let commits = journal.stats().commits.load(Ordering::Relaxed);
        assert!(
            commits < 200,
            "200 appends in {commits} commits: some were grouped"
        );
        assert_eq!(journal.unfinished().await.expect("query").len(), 200);
    }

    #[test]
    fn a_second_opener_and_a_corrupt_file_are_refused() {
        let path = temp("locked");
        let _first = Journal::open(&path).expect("open");
        let second = Journal::open(&path).expect_err("locked");
        assert!(second.to_string().contains("locked"), "{second}");
        assert!(second.to_string().contains("journal.sqlite"), "{second}");

        let bad = temp("corrupt");
        std::fs::write(&bad, vec![0x42u8; 8192]).expect("write junk");
        let e = Journal::open(&bad).expect_err("corrupt");
        assert!(e.to_string().contains("not a database"), "{e}");
    }
}
