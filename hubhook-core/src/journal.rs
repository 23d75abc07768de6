//! The journal: every accepted delivery, durable before it is answered 2xx, and every
//! handler attempt after it.
//!
//! SQLite in WAL mode with `synchronous=FULL`, written by one thread. Group commit: the
//! writer takes everything that arrived while the previous commit ran and commits it in
//! one transaction, with one fsync, so many requests waiting at once share one fsync and
//! throughput grows with concurrency. A lock file next to the database keeps a second
//! hubhook off the same journal; readers ([`History`], `hubhook deliveries`) may look at
//! it while the server writes.
//!
//! A delivery stays unfinished until every handler it was dispatched to has recorded a
//! final attempt (success, failure after its retries, timeout, panic, rejection or
//! superseded). A run cancelled by shutdown is not final: on the next start,
//! [`Journal::unfinished`] returns the delivery with the handlers still owed a run.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use tokio::sync::oneshot;

use crate::handler::{DeliveryId, HandlerError, Outcome};
use crate::metrics::write_histogram;

/// Most records one commit takes; the rest wait for the next one.
const MAX_BATCH: usize = 4096;
/// How long attempt and finish records may wait for a delivery's commit to ride along
/// with, before they get a commit of their own. Nobody waits for them; losing them in a
/// crash only means a delivery runs again (at least once).
const LINGER: Duration = Duration::from_millis(50);
/// Longest outcome text kept per attempt, in characters.
const MAX_DETAIL: usize = 4096;
/// Most deliveries one pruning transaction deletes.
pub const PRUNE_CHUNK: usize = 2000;
/// The schema this code writes (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 1;
/// Upper bounds of the commit batch size histogram's buckets (records per commit).
const BATCH_BUCKETS: [u64; 9] = [1, 2, 4, 8, 16, 32, 64, 256, 1024];
/// Upper bounds, in seconds, of the commit latency histogram's buckets.
const LATENCY_BUCKETS: [f64; 9] = [0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.25, 1.0];

/// Why the journal could not be opened, read or written.
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
    /// A commit or a query failed; deliveries in a failed commit were not accepted.
    #[error("journal write failed: {0}")]
    Write(String),
    /// The writer is gone (the journal was dropped).
    #[error("the journal is closed")]
    Closed,
}

/// A delivery as the journal keeps it, to run it (again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// Its id.
    pub id: DeliveryId,
    /// The provider it came from.
    pub source: String,
    /// The message, serialized (`HubMessage`'s JSON).
    pub message: String,
    /// When appending: the handlers it is dispatched to. When read back by
    /// [`Journal::unfinished`]: those still owed a final attempt.
    pub pending: Vec<String>,
}

enum Op {
    Append {
        delivery: Accepted,
        repo: String,
        tag: String,
        done: oneshot::Sender<Result<(), String>>,
    },
    Run(RunRecord),
    /// Every handler of the delivery has a final attempt: set its status from them.
    Finish(DeliveryId, i64),
    /// Runs on the writer's connection after the batch before it has committed, so it
    /// sees every write sent before it.
    Read(Box<dyn FnOnce(&mut Connection) + Send>),
    /// Forces a commit of everything before it; answered with that commit's outcome.
    Sync(oneshot::Sender<Result<(), String>>),
}

struct RunRecord {
    delivery: DeliveryId,
    handler: String,
    attempt: u32,
    started_ms: i64,
    ended_ms: i64,
    status: &'static str,
    detail: String,
    final_: bool,
}

/// The delivery journal. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    tx: std::sync::Mutex<mpsc::Sender<Op>>,
    stats: Arc<Stats>,
    _lock: File,
}

/// Commit counters and histograms for `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) commits: AtomicU64,
    pub(crate) records: AtomicU64,
    pub(crate) commit_micros: AtomicU64,
    batch: [AtomicU64; BATCH_BUCKETS.len()],
    latency: [AtomicU64; LATENCY_BUCKETS.len()],
}

impl std::fmt::Debug for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Op")
    }
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

impl Journal {
    /// Opens (or creates) the journal at `path` and takes its lock: one writer per journal.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, JournalError> {
        let path = path.as_ref().to_owned();
        let fail = |e: &dyn std::fmt::Display| JournalError::Open {
            path: path.clone(),
            reason: e.to_string(),
        };
        let lock_file = lock_path(&path);
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
        // The journal holds every payload: readable by its owner only. (SQLite gives the
        // -wal and -shm files the database file's mode.)
        if !path.exists() {
            let mut options = File::options();
            options.create_new(true).write(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            if let Err(e) = options.open(&path) {
                if e.kind() != std::io::ErrorKind::AlreadyExists {
                    return Err(fail(&e));
                }
            }
        }
        let conn = Connection::open(&path).map_err(|e| fail(&e))?;
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
        let (tx, rx) = mpsc::channel();
        let stats = Arc::new(Stats::default());
        let writer_stats = stats.clone();
        std::thread::Builder::new()
            .name("hubhook-journal".into())
            .stack_size(256 * 1024)
            .spawn(move || writer(conn, rx, &writer_stats))
            .map_err(|e| fail(&e))?;
        Ok(Self {
            path,
            tx: std::sync::Mutex::new(tx),
            stats,
            _lock: lock,
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

    /// Records `delivery` (for `repo` and `tag`); resolves once it is committed (fsync
    /// included).
    pub async fn append(
        &self,
        delivery: Accepted,
        repo: &str,
        tag: &str,
    ) -> Result<(), JournalError> {
        let (done, committed) = oneshot::channel();
        self.send(Op::Append {
            delivery,
            repo: repo.to_owned(),
            tag: tag.to_owned(),
            done,
        })?;
        match committed.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(JournalError::Write(e)),
            Err(_) => Err(JournalError::Closed),
        }
    }

    /// Records one attempt of a handler. A `final_` attempt takes the handler off the
    /// delivery's owed list; any other (cancelled, or failed with retries left) keeps it.
    pub(crate) fn record_run(
        &self,
        delivery: DeliveryId,
        handler: &str,
        attempt: u32,
        started: SystemTime,
        result: &Result<Outcome, HandlerError>,
        final_: bool,
    ) {
        let status = match result {
            Ok(_) => "ok",
            Err(HandlerError::Cancelled) => "cancelled",
            Err(HandlerError::Timeout(_)) => "timeout",
            Err(HandlerError::Panicked(_)) => "panic",
            Err(HandlerError::Rejected(_)) => "rejected",
            Err(HandlerError::Superseded(_)) => "superseded",
            Err(_) => "failed",
        };
        let detail = match result {
            Ok(outcome) => outcome.summary.clone(),
            Err(HandlerError::Cancelled) => String::new(),
            Err(e) => e.to_string(),
        };
        self.record(delivery, handler, attempt, started, status, detail, final_);
    }

    /// Records one line of a delivery's history (an attempt, or the callback's result).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn record(
        &self,
        delivery: DeliveryId,
        handler: &str,
        attempt: u32,
        started: SystemTime,
        status: &'static str,
        mut detail: String,
        final_: bool,
    ) {
        if let Some((cut, _)) = detail.char_indices().nth(MAX_DETAIL) {
            detail.truncate(cut);
        }
        let op = Op::Run(RunRecord {
            delivery,
            handler: handler.to_owned(),
            attempt,
            started_ms: millis(started),
            ended_ms: millis(SystemTime::now()),
            status,
            detail,
            final_,
        });
        if self.send(op).is_err() {
            tracing::error!(%delivery, handler, "the journal is closed: an attempt was not recorded");
        }
    }

    /// Marks `delivery` finished: every handler has settled. Its status comes from the
    /// final attempts on record: `failed` if any failed, else `superseded` if any was,
    /// else `ok`.
    pub(crate) fn finish(&self, delivery: DeliveryId) {
        if self
            .send(Op::Finish(delivery, millis(SystemTime::now())))
            .is_err()
        {
            tracing::error!(%delivery, "the journal is closed: a finished delivery was not recorded");
        }
    }

    /// Runs `query` on the writer's connection, after every write sent before it.
    async fn read<T: Send + 'static>(
        &self,
        query: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, JournalError> {
        let (reply, answer) = oneshot::channel();
        self.send(Op::Read(Box::new(move |conn| {
            let _ = reply.send(query(conn).map_err(|e| e.to_string()));
        })))?;
        match answer.await {
            Ok(result) => result.map_err(JournalError::Write),
            Err(_) => Err(JournalError::Closed),
        }
    }

    /// Waits until everything recorded before this call is committed; an error when
    /// that commit failed.
    pub async fn sync(&self) -> Result<(), JournalError> {
        let (done, committed) = oneshot::channel();
        self.send(Op::Sync(done))?;
        match committed.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(JournalError::Write(e)),
            Err(_) => Err(JournalError::Closed),
        }
    }

    /// Deliveries accepted but not finished, oldest first, with the handlers still owed.
    pub async fn unfinished(&self) -> Result<Vec<Accepted>, JournalError> {
        self.read(|conn| unfinished(conn)).await
    }

    /// One delivery by id, for replay: its source, message and every handler it went to.
    pub async fn get(&self, id: DeliveryId) -> Result<Option<Accepted>, JournalError> {
        self.read(move |conn| {
            conn.query_row(
                "SELECT source, message, handlers FROM deliveries WHERE id = ?1",
                [id.as_str()],
                |row| {
                    Ok(Accepted {
                        id,
                        source: row.get(0)?,
                        message: row.get(1)?,
                        pending: lines(&row.get::<_, String>(2)?),
                    })
                },
            )
            .optional()
        })
        .await
    }

    /// Deletes finished deliveries (and their attempts) received more than `keep` ago, and
    /// all but the newest `keep_deliveries` finished ones. Unfinished deliveries are never
    /// pruned. Works in transactions of at most [`PRUNE_CHUNK`] deliveries, so webhooks
    /// arriving meanwhile wait for one chunk at most. Returns how many were deleted.
    pub async fn prune(
        &self,
        keep: Option<Duration>,
        keep_deliveries: Option<u64>,
    ) -> Result<usize, JournalError> {
        // A `keep` longer than the epoch's age keeps everything.
        let cutoff = keep.and_then(|keep| {
            millis(SystemTime::now()).checked_sub(i64::try_from(keep.as_millis()).ok()?)
        });
        // The newest delivery past the count limit: it and everything older may go.
        let edge: Option<String> = match keep_deliveries {
            None => None,
            Some(keep) => {
                self.read(move |conn| {
                    conn.query_row(
                        "SELECT id FROM deliveries WHERE finished_ms IS NOT NULL
                         ORDER BY id DESC LIMIT 1 OFFSET ?1",
                        [keep.min(i64::MAX as u64) as i64],
                        |row| row.get(0),
                    )
                    .optional()
                })
                .await?
            }
        };
        let mut total = 0;
        loop {
            let edge = edge.clone();
            let deleted = self
                .read(move |conn| {
                    let tx = conn.transaction()?;
                    let doomed: Vec<String> = tx
                        .prepare(
                            "SELECT id FROM deliveries WHERE finished_ms IS NOT NULL
                             AND (received_ms < ?1 OR id <= ?2) ORDER BY id LIMIT ?3",
                        )?
                        .query_map(params![cutoff, edge, PRUNE_CHUNK as i64], |row| row.get(0))?
                        .collect::<rusqlite::Result<_>>()?;
                    for id in &doomed {
                        tx.prepare_cached("DELETE FROM runs WHERE delivery = ?1")?
                            .execute([id])?;
                        tx.prepare_cached("DELETE FROM deliveries WHERE id = ?1")?
                            .execute([id])?;
                    }
                    tx.commit()?;
                    Ok(doomed.len())
                })
                .await?;
            total += deleted;
            if deleted < PRUNE_CHUNK {
                // A callback's line can arrive after its delivery was pruned by age.
                self.read(|conn| {
                    conn.execute(
                        "DELETE FROM runs WHERE delivery NOT IN (SELECT id FROM deliveries)",
                        [],
                    )
                })
                .await?;
                return Ok(total);
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The journal's counters in the Prometheus text format.
    pub(crate) fn render_metrics(&self, out: &mut String) {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let stats = &self.stats;
        let (commits, records) = (load(&stats.commits), load(&stats.records));
        let seconds = load(&stats.commit_micros) as f64 / 1e6;
        out.push_str(
            "# HELP hubhook_journal_commit_records Records per journal commit (one fsync each).\n\
             # TYPE hubhook_journal_commit_records histogram\n",
        );
        write_histogram(
            out,
            "hubhook_journal_commit_records",
            "",
            BATCH_BUCKETS
                .iter()
                .zip(&stats.batch)
                .map(|(b, n)| (b.to_string(), load(n))),
            commits,
            records as f64,
        );
        out.push_str(
            "# HELP hubhook_journal_commit_seconds How long journal commits took.\n\
             # TYPE hubhook_journal_commit_seconds histogram\n",
        );
        write_histogram(
            out,
            "hubhook_journal_commit_seconds",
            "",
            LATENCY_BUCKETS
                .iter()
                .zip(&stats.latency)
                .map(|(b, n)| (b.to_string(), load(n))),
            commits,
            seconds,
        );
    }
}

fn millis(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn lines(text: &str) -> Vec<String> {
    text.lines().map(str::to_owned).collect()
}

/// The writer thread: group commits until the journal is dropped.
///
/// A delivery (or a read) in the batch commits it at once: someone waits for it. A batch
/// of attempt and finish records only lingers up to [`LINGER`] for one, so a webhook's
/// records usually share the next webhook's fsync instead of taking one of their own.
fn writer(mut conn: Connection, rx: mpsc::Receiver<Op>, stats: &Stats) {
    let mut waiting: Vec<Op> = Vec::new();
    let mut lingering_since: Option<Instant> = None;
    let mut closed = false;
    // Orders a delivery's history; the writer is the only one writing it.
    let mut seq: i64 = conn
        .query_row("SELECT coalesce(max(seq), 0) FROM runs", [], |row| {
            row.get(0)
        })
        .unwrap_or(0);
    loop {
        let next = match lingering_since {
            _ if closed => Err(mpsc::RecvTimeoutError::Disconnected),
            None => rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
            Some(since) => rx.recv_timeout(LINGER.saturating_sub(since.elapsed())),
        };
        match next {
            Ok(op) => waiting.push(op),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) if waiting.is_empty() => return,
            // The journal is gone: write what is left, then stop.
            Err(mpsc::RecvTimeoutError::Disconnected) => closed = true,
        }
        while waiting.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => waiting.push(op),
                Err(_) => break,
            }
        }
        let urgent = waiting
            .iter()
            .any(|op| matches!(op, Op::Append { .. } | Op::Read(_) | Op::Sync(_)));
        let since = *lingering_since.get_or_insert_with(Instant::now);
        if !urgent && !closed && since.elapsed() < LINGER && waiting.len() < MAX_BATCH {
            continue;
        }
        lingering_since = None;
        let batch = std::mem::take(&mut waiting);
        let started = Instant::now();
        let records = batch
            .iter()
            .filter(|op| !matches!(op, Op::Read(_) | Op::Sync(_)))
            .count() as u64;
        let outcome = if records == 0 {
            Ok(())
        } else {
            commit(&mut conn, &batch, &mut seq).map_err(|e| e.to_string())
        };
        if records > 0 {
            let elapsed = started.elapsed();
            stats.commits.fetch_add(1, Ordering::Relaxed);
            stats.records.fetch_add(records, Ordering::Relaxed);
            stats
                .commit_micros
                .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
            for (bound, n) in BATCH_BUCKETS.iter().zip(&stats.batch) {
                if records <= *bound {
                    n.fetch_add(1, Ordering::Relaxed);
                }
            }
            for (bound, n) in LATENCY_BUCKETS.iter().zip(&stats.latency) {
                if elapsed.as_secs_f64() <= *bound {
                    n.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if let Err(e) = &outcome {
            tracing::error!(error = %e, "journal commit failed");
        }
        // Attempts and finishes of a failed commit go into the next one: losing them
        // would leave deliveries owed that already ran. (Deliveries in it were refused.)
        let mut retry = Vec::new();
        // Answers go out in order with the writes around them.
        for op in batch {
            match op {
                Op::Append { done, .. } | Op::Sync(done) => {
                    let _ = done.send(outcome.clone());
                }
                Op::Read(query) => query(&mut conn),
                op @ (Op::Run(_) | Op::Finish(..)) if outcome.is_err() => retry.push(op),
                Op::Run(_) | Op::Finish(..) => {}
            }
        }
        if closed && outcome.is_err() {
            tracing::error!(
                records = retry.len(),
                "the journal is closing and cannot commit: those deliveries run again at the next start"
            );
            return;
        }
        waiting = retry;
    }
}

/// Writes one batch in one transaction.
fn commit(conn: &mut Connection, batch: &[Op], seq: &mut i64) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    for op in batch {
        match op {
            Op::Append {
                delivery: d,
                repo,
                tag,
                ..
            } => {
                // A delivery no handler wanted is finished as it arrives.
                let now = millis(SystemTime::now());
                let (status, finished) = if d.pending.is_empty() {
                    ("unmatched", Some(now))
                } else {
                    ("pending", None)
                };
                tx.prepare_cached(
                    "INSERT INTO deliveries
                     (id, received_ms, source, repo, tag, message, handlers, status, finished_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                )?
                .execute(params![
                    d.id.as_str(),
                    now,
                    d.source,
                    repo,
                    tag,
                    d.message,
                    d.pending.join("\n"),
                    status,
                    finished,
                ])?;
            }
            Op::Run(r) => {
                tx.prepare_cached(
                    "INSERT INTO runs (delivery, seq, handler, attempt, started_ms, ended_ms, status, detail, final)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                )?
                .execute(params![
                    r.delivery.as_str(),
                    {
                        *seq += 1;
                        *seq
                    },
                    r.handler,
                    r.attempt,
                    r.started_ms,
                    r.ended_ms,
                    r.status,
                    r.detail,
                    r.final_,
                ])?;
            }
            Op::Finish(id, at) => {
                tx.prepare_cached(FINISH)?
                    .execute(params![id.as_str(), at])?;
            }
            Op::Read(_) | Op::Sync(_) => {}
        }
    }
    tx.commit()
}

/// Sets a delivery's status from its final attempts (the callback's line aside).
const FINISH: &str = "UPDATE deliveries SET finished_ms = ?2, status = (
        SELECT CASE
            WHEN sum(status IN ('failed', 'timeout', 'panic', 'rejected')) > 0 THEN 'failed'
            WHEN sum(status = 'superseded') > 0 THEN 'superseded'
            WHEN count(*) > 0 THEN 'ok'
            ELSE 'failed' END
        FROM runs WHERE delivery = ?1 AND final = 1 AND handler != 'callback')
    WHERE id = ?1";

fn unfinished(conn: &Connection) -> rusqlite::Result<Vec<Accepted>> {
    let mut stmt = conn.prepare(
        "SELECT id, source, message, handlers FROM deliveries
         WHERE finished_ms IS NULL ORDER BY id",
    )?;
    let mut settled = conn.prepare("SELECT handler FROM runs WHERE delivery = ?1 AND final = 1")?;
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
        let (id, source, message, handlers) = row?;
        // An id that does not parse was not written by hubhook: skip it, loudly.
        let Ok(parsed) = id.parse() else {
            tracing::error!(id, "the journal holds a delivery id hubhook did not write");
            continue;
        };
        let done = settled
            .query_map([&id], |row| row.get::<_, String>(0))?
            .collect::<rusqlite::Result<Vec<String>>>()?;
        let pending: Vec<String> = handlers
            .lines()
            .filter(|h| !done.iter().any(|d| d == h))
            .map(str::to_owned)
            .collect();
        if pending.is_empty() {
            // Every handler settled before the process stopped, the finish did not
            // make it: finish it now instead of running anything.
            conn.execute(FINISH, params![id, millis(SystemTime::now())])?;
            continue;
        }
        list.push(Accepted {
            id: parsed,
            source,
            message,
            pending,
        });
    }
    Ok(list)
}

/// A delivery as `hubhook deliveries list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Summary {
    /// Its id.
    pub id: DeliveryId,
    /// When it was received, in milliseconds since the Unix epoch.
    pub received_ms: i64,
    /// The provider it came from.
    pub source: String,
    /// Repository and tag.
    pub repo: String,
    /// The tag.
    pub tag: String,
    /// `pending` (handlers still owed), `ok`, `failed` or `superseded`.
    pub status: String,
    /// The handlers it went to.
    pub handlers: Vec<String>,
}

/// One line of a delivery's history: a handler attempt, or the callback.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Attempt {
    /// The handler (or `callback`).
    pub handler: String,
    /// Which attempt, from 1 (0 for a delivery superseded before it ran).
    pub attempt: u32,
    /// Start and end, in milliseconds since the Unix epoch.
    pub started_ms: i64,
    /// See `started_ms`.
    pub ended_ms: i64,
    /// `ok`, `failed`, `timeout`, `panic`, `rejected`, `cancelled` or `superseded`.
    pub status: String,
    /// The outcome's summary or the error, with the output tail for commands.
    pub detail: String,
    /// Whether this attempt settled the handler's share of the delivery.
    pub final_: bool,
}

/// Which deliveries [`History::list`] returns.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Filter {
    /// Only this status (`pending`, `ok`, `failed`, `superseded`).
    pub status: Option<String>,
    /// Only this repository (`namespace/name`).
    pub repo: Option<String>,
    /// At most this many, newest first.
    pub limit: Option<u64>,
}

impl Filter {
    /// Every delivery.
    pub fn new() -> Self {
        Self::default()
    }

    /// Only deliveries with this status.
    #[must_use]
    pub fn status(mut self, status: impl Into<String>) -> Self {
        self.status = Some(status.into());
        self
    }

    /// Only deliveries for this repository.
    #[must_use]
    pub fn repo(mut self, repo: impl Into<String>) -> Self {
        self.repo = Some(repo.into());
        self
    }

    /// At most `n`, newest first.
    #[must_use]
    pub fn limit(mut self, n: u64) -> Self {
        self.limit = Some(n);
        self
    }
}

/// A read-only view of a journal, safe to open while a server writes it.
#[derive(Debug)]
pub struct History {
    conn: Connection,
    path: PathBuf,
}

impl History {
    /// Opens the journal at `path` for reading.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, JournalError> {
        let path = path.as_ref().to_owned();
        let fail = |e: &dyn std::fmt::Display| JournalError::Open {
            path: path.clone(),
            reason: e.to_string(),
        };
        if !path.exists() {
            return Err(fail(&"no journal here (is `journal = true` set?)"));
        }
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| fail(&e))?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(|e| fail(&e))?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .map_err(|e| fail(&e))?;
        if version != SCHEMA_VERSION {
            return Err(fail(&format_args!(
                "schema version {version}, this hubhook reads version {SCHEMA_VERSION}"
            )));
        }
        Ok(Self { conn, path })
    }

    fn fail(&self, e: rusqlite::Error) -> JournalError {
        JournalError::Open {
            path: self.path.clone(),
            reason: e.to_string(),
        }
    }

    /// Deliveries, newest first.
    pub fn list(&self, filter: &Filter) -> Result<Vec<Summary>, JournalError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, received_ms, source, repo, tag, status, handlers FROM deliveries
                 WHERE (?1 IS NULL OR status = ?1) AND (?2 IS NULL OR repo = ?2)
                 ORDER BY id DESC LIMIT ?3",
            )
            .map_err(|e| self.fail(e))?;
        let limit = filter.limit.map_or(-1, |n| n.min(i64::MAX as u64) as i64);
        let rows = stmt
            .query_map(params![filter.status, filter.repo, limit], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    Summary {
                        id: DeliveryId::generate(),
                        received_ms: row.get(1)?,
                        source: row.get(2)?,
                        repo: row.get(3)?,
                        tag: row.get(4)?,
                        status: row.get(5)?,
                        handlers: lines(&row.get::<_, String>(6)?),
                    },
                ))
            })
            .map_err(|e| self.fail(e))?;
        let mut list = Vec::new();
        for row in rows {
            let (id, mut summary) = row.map_err(|e| self.fail(e))?;
            if let Ok(id) = id.parse() {
                summary.id = id;
                list.push(summary);
            }
        }
        Ok(list)
    }

    /// One delivery: its summary, its message (JSON) and every attempt, in order.
    pub fn show(
        &self,
        id: DeliveryId,
    ) -> Result<Option<(Summary, String, Vec<Attempt>)>, JournalError> {
        let found = self
            .conn
            .query_row(
                "SELECT received_ms, source, repo, tag, status, handlers, message
                 FROM deliveries WHERE id = ?1",
                [id.as_str()],
                |row| {
                    Ok((
                        Summary {
                            id,
                            received_ms: row.get(0)?,
                            source: row.get(1)?,
                            repo: row.get(2)?,
                            tag: row.get(3)?,
                            status: row.get(4)?,
                            handlers: lines(&row.get::<_, String>(5)?),
                        },
                        row.get::<_, String>(6)?,
                    ))
                },
            )
            .optional()
            .map_err(|e| self.fail(e))?;
        let Some((summary, message)) = found else {
            return Ok(None);
        };
        let mut stmt = self
            .conn
            .prepare(
                "SELECT handler, attempt, started_ms, ended_ms, status, detail, final
                 FROM runs WHERE delivery = ?1 ORDER BY seq",
            )
            .map_err(|e| self.fail(e))?;
        let attempts = stmt
            .query_map([id.as_str()], |row| {
                Ok(Attempt {
                    handler: row.get(0)?,
                    attempt: row.get(1)?,
                    started_ms: row.get(2)?,
                    ended_ms: row.get(3)?,
                    status: row.get(4)?,
                    detail: row.get(5)?,
                    final_: row.get(6)?,
                })
            })
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(|e| self.fail(e))?;
        Ok(Some((summary, message, attempts)))
    }
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

    #[tokio::test]
    async fn deliveries_stay_unfinished_until_every_handler_is_final() {
        let path = temp("pending");
        let journal = Journal::open(&path).expect("open");
        let a = accepted(&["log", "deploy"]);
        let b = accepted(&["log"]);
        journal
            .append(a.clone(), "acme/site", "v1")
            .await
            .expect("append a");
        journal
            .append(b.clone(), "acme/site", "v2")
            .await
            .expect("append b");
        let now = SystemTime::now();
        journal.record_run(a.id, "log", 1, now, &Ok(Outcome::new("logged")), true);
        journal.record_run(
            a.id,
            "deploy",
            1,
            now,
            &Err(HandlerError::Failed("x".into())),
            false,
        );
        journal.record_run(a.id, "deploy", 2, now, &Err(HandlerError::Cancelled), false);
        journal.record_run(
            b.id,
            "log",
            1,
            now,
            &Err(HandlerError::Failed("x".into())),
            true,
        );
        journal.finish(b.id);
        let left = journal.unfinished().await.expect("unfinished");
        assert_eq!(left.len(), 1, "{left:?}");
        assert_eq!(left[0].id, a.id);
        assert_eq!(
            left[0].pending,
            ["deploy"],
            "a retried and then cancelled run is still owed"
        );

        // A reader sees the history while the writer holds the journal.
        let history = History::open(&path).expect("reader");
        let all = history.list(&Filter::new()).expect("list");
        assert_eq!(all.iter().map(|s| s.id).collect::<Vec<_>>(), [b.id, a.id]);
        assert_eq!(all[0].status, "failed");
        assert_eq!(all[1].status, "pending");
        let failed = history.list(&Filter::new().status("failed")).expect("list");
        assert_eq!(failed.len(), 1);
        let (summary, _, attempts) = history.show(a.id).expect("show").expect("found");
        assert_eq!(summary.tag, "v1");
        let seen: Vec<(&str, u32, &str, bool)> = attempts
            .iter()
            .map(|a| (a.handler.as_str(), a.attempt, a.status.as_str(), a.final_))
            .collect();
        assert_eq!(
            seen,
            [
                ("log", 1, "ok", true),
                ("deploy", 1, "failed", false),
                ("deploy", 2, "cancelled", false)
            ]
        );
        drop(history);
        drop(journal);

        // Reopened: the same state, from disk.
        std::thread::sleep(Duration::from_millis(50));
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
                journal.append(accepted(&["log"]), "a/b", "t").await
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
        let mut text = String::new();
        journal.render_metrics(&mut text);
        assert!(
            text.contains(&format!("hubhook_journal_commit_records_count {commits}\n")),
            "{text}"
        );
        assert!(
            text.contains("hubhook_journal_commit_records_sum 200\n"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn prune_keeps_unfinished_and_the_newest() {
        let journal = Journal::open(temp("prune")).expect("open");
        let mut ids = Vec::new();
        for _ in 0..5 {
            let d = accepted(&["log"]);
            ids.push(d.id);
            journal.append(d, "a/b", "t").await.expect("append");
        }
        for id in &ids[..4] {
            journal.record_run(
                *id,
                "log",
                1,
                SystemTime::now(),
                &Ok(Outcome::default()),
                true,
            );
            journal.finish(*id);
        }
        // Keep 2 finished: ids[0] and ids[1] go, ids[4] (unfinished) stays.
        assert_eq!(journal.prune(None, Some(2)).await.expect("prune"), 2);
        let left = journal.unfinished().await.expect("unfinished");
        assert_eq!(left.iter().map(|d| d.id).collect::<Vec<_>>(), [ids[4]]);
        assert!(journal.get(ids[0]).await.expect("get").is_none());
        assert!(journal.get(ids[2]).await.expect("get").is_some());
        // Everything finished is older than zero seconds.
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(
            journal
                .prune(Some(Duration::ZERO), None)
                .await
                .expect("prune"),
            2
        );
        assert!(journal.get(ids[4]).await.expect("get").is_some());

        // A callback line recorded after its delivery was pruned goes with the next prune.
        let late = ids[0];
        journal.record(
            late,
            "callback",
            1,
            SystemTime::now(),
            "ok",
            "answered 200".into(),
            true,
        );
        async fn orphans(journal: &Journal, late: DeliveryId) -> i64 {
            journal
                .read(move |conn| {
                    conn.query_row(
                        "SELECT count(*) FROM runs WHERE delivery = ?1",
                        [late.as_str()],
                        |row| row.get::<_, i64>(0),
                    )
                })
                .await
                .expect("count")
        }
        journal.sync().await.expect("sync");
        assert_eq!(orphans(&journal, late).await, 1);
        journal.prune(None, Some(100)).await.expect("prune");
        assert_eq!(orphans(&journal, late).await, 0);
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
