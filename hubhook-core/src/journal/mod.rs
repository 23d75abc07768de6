//! The journal: every accepted delivery, durable before it is answered 2xx, and every
//! handler attempt after it.
//!
//! SQLite in WAL mode with `synchronous=FULL`, written by one thread with group commit
//! (`writer`): everything that arrived while the previous commit ran goes into one
//! transaction with one fsync, so many requests waiting at once share one fsync and
//! throughput grows with concurrency. A lock file next to the database keeps a second
//! hubhook off the same journal; readers ([`History`], `hubhook deliveries`) may look at
//! it while the server writes.
//!
//! The journal observes deliveries through the service's lifecycle seam: it is the
//! service's durable store when given to [`HubhookServiceBuilder::journal`]. A delivery
//! stays unfinished until every handler it was dispatched to has recorded a final attempt
//! (success, failure after its retries, timeout, panic, rejection or superseded). A run
//! cancelled by shutdown is not final: on the next start, [`Journal::unfinished`] returns
//! the delivery with the handlers still owed a run.

mod history;
mod schema;
mod writer;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, OptionalExtension};
use tokio::sync::oneshot;

use crate::handler::DeliveryId;
use crate::metrics::write_histogram;
use crate::observe::{self, Committed, Observer, Record, Store, StoreError, Stored};
use crate::HubhookServiceBuilder;

pub use history::{Attempt, Filter, History, Summary, Timing};
use writer::{Op, RunRecord};

/// Longest outcome text kept per attempt, in characters.
const MAX_DETAIL: usize = 4096;
/// Most deliveries one pruning transaction deletes.
pub const PRUNE_CHUNK: usize = 2000;
/// The schema this code writes (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 1;
/// Upper bounds of the commit batch size histograms' buckets (records or deliveries).
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

impl From<Stored> for Accepted {
    fn from(stored: Stored) -> Self {
        Self {
            id: stored.id,
            source: stored.source,
            message: stored.message,
            pending: stored.handlers,
        }
    }
}

/// The delivery journal. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    tx: mpsc::Sender<Op>,
    stats: Arc<Stats>,
    /// The writer thread, joined by [`close`](Journal::close).
    writer: std::thread::JoinHandle<()>,
    _lock: std::fs::File,
}

/// Commit counters and histograms for `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) commits: AtomicU64,
    pub(crate) records: AtomicU64,
    pub(crate) deliveries: AtomicU64,
    pub(crate) commit_micros: AtomicU64,
    batch: [AtomicU64; BATCH_BUCKETS.len()],
    delivery_batch: [AtomicU64; BATCH_BUCKETS.len()],
    latency: [AtomicU64; LATENCY_BUCKETS.len()],
}

impl Journal {
    /// Opens (or creates) the journal at `path` and takes its lock: one writer per journal.
    /// The file is made readable by its owner only, also when it already existed.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, JournalError> {
        let path = path.as_ref().to_owned();
        let (conn, lock) = schema::open(&path)?;
        let (tx, rx) = mpsc::channel();
        let stats = Arc::new(Stats::default());
        let writer_stats = stats.clone();
        let writer = std::thread::Builder::new()
            .name("hubhook-journal".into())
            .stack_size(256 * 1024)
            .spawn(move || writer::writer(conn, rx, &writer_stats))
            .map_err(|e| JournalError::Open {
                path: path.clone(),
                reason: format!("cannot start the writer thread: {e}"),
            })?;
        Ok(Self {
            path,
            tx,
            stats,
            writer,
            _lock: lock,
        })
    }

    /// Closes the journal: when this returns, everything sent to it is committed, its
    /// writer thread has ended and its lock is released, so the file can be opened again
    /// at once. (Dropping it does the same in the background.)
    pub fn close(self) {
        let Journal {
            tx, writer, _lock, ..
        } = self;
        drop(tx);
        // The writer commits what is waiting, then returns; a panic in it is already
        // reported by the thread.
        let _ = writer.join();
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn send(&self, op: Op) -> Result<(), JournalError> {
        self.tx.send(op).map_err(|_| JournalError::Closed)
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
        let row = Record {
            id: delivery.id,
            source: delivery.source,
            repo: repo.to_owned(),
            tag: tag.to_owned(),
            message: delivery.message,
            handlers: delivery
                .pending
                .iter()
                .map(|h| Arc::from(h.as_str()))
                .collect(),
        };
        self.send(Op::Append(
            vec![row],
            Box::new(move |result| {
                let _ = done.send(result.map_err(|e| e.to_string()));
            }),
        ))?;
        match committed.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(JournalError::Write(e)),
            Err(_) => Err(JournalError::Closed),
        }
    }

    /// Runs `query` on the writer's connection, after every write sent before it.
    async fn read<T: Send + 'static>(
        &self,
        query: impl FnOnce(&mut rusqlite::Connection) -> rusqlite::Result<T> + Send + 'static,
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
        let list = self.read(|conn| writer::unfinished(conn)).await?;
        Ok(list.into_iter().map(Accepted::from).collect())
    }

    /// One delivery by id, for replay: its source, message and every handler it went to.
    pub async fn get(&self, id: DeliveryId) -> Result<Option<Accepted>, JournalError> {
        let found = self.read(move |conn| writer::get(conn, id)).await?;
        Ok(found.map(Accepted::from))
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

    /// The journal's counters in the Prometheus text format.
    fn render(&self, out: &mut String) {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let stats = &self.stats;
        let commits = load(&stats.commits);
        let counts = |bounds: &[String], counts: &[AtomicU64]| {
            bounds
                .iter()
                .cloned()
                .zip(counts.iter().map(load))
                .collect::<Vec<_>>()
        };
        let batch: Vec<String> = BATCH_BUCKETS.iter().map(u64::to_string).collect();
        let latency: Vec<String> = LATENCY_BUCKETS.iter().map(f64::to_string).collect();
        let series = [
            (
                "hubhook_journal_commit_records",
                "Records per journal commit (one fsync each).",
                counts(&batch, &stats.batch),
                load(&stats.records) as f64,
            ),
            (
                "hubhook_journal_commit_deliveries",
                "Deliveries per journal commit.",
                counts(&batch, &stats.delivery_batch),
                load(&stats.deliveries) as f64,
            ),
            (
                "hubhook_journal_commit_seconds",
                "How long journal commits took.",
                counts(&latency, &stats.latency),
                load(&stats.commit_micros) as f64 / 1e6,
            ),
        ];
        for (name, help, buckets, sum) in series {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
            write_histogram(out, name, "", buckets.into_iter(), commits, sum);
        }
    }

    fn record(&self, record: RunRecord) {
        if let Err(mpsc::SendError(Op::Run(record))) = self.tx.send(Op::Run(record)) {
            let (delivery, handler) = (record.delivery, record.handler);
            tracing::error!(%delivery, handler, "the journal is closed: an attempt was not recorded");
        }
    }
}

/// The journal as the service's durable store: every delivery appended before its 2xx,
/// every attempt and every settled delivery recorded as it happens.
impl Observer for Journal {
    fn attempt_finished(&self, e: &observe::AttemptFinished<'_>) {
        let mut detail = e.detail.to_string();
        if let Some((cut, _)) = detail.char_indices().nth(MAX_DETAIL) {
            detail.truncate(cut);
        }
        self.record(RunRecord {
            delivery: e.id,
            handler: e.handler.to_owned(),
            attempt: e.attempt,
            started_ms: millis(e.started),
            ended_ms: millis(SystemTime::now()),
            status: e.status,
            detail,
            final_: e.final_,
        });
    }

    fn settled(&self, e: &observe::Settled<'_>) {
        if self
            .send(Op::Finish(e.id, millis(SystemTime::now())))
            .is_err()
        {
            tracing::error!(delivery = %e.id, "the journal is closed: a finished delivery was not recorded");
        }
    }

    fn render_metrics(&self, out: &mut String) {
        self.render(out);
    }
}

#[async_trait::async_trait]
impl Store for Journal {
    fn append(&self, deliveries: Vec<Record>, committed: Committed) {
        if let Err(mpsc::SendError(Op::Append(_, committed))) =
            self.tx.send(Op::Append(deliveries, committed))
        {
            committed(Err(JournalError::Closed.into()));
        }
    }

    async fn unfinished(&self) -> Result<Vec<Stored>, StoreError> {
        Ok(self.read(|conn| writer::unfinished(conn)).await?)
    }

    async fn get(&self, id: DeliveryId) -> Result<Option<Stored>, StoreError> {
        Ok(self.read(move |conn| writer::get(conn, id)).await?)
    }

    async fn sync(&self) -> Result<(), StoreError> {
        Ok(Journal::sync(self).await?)
    }
}

impl HubhookServiceBuilder {
    /// Records every accepted delivery in `journal` before answering 2xx, and every
    /// handler run's outcome; [`HubhookService::recover`](crate::HubhookService::recover)
    /// runs what a previous process left unfinished.
    pub fn journal(self, journal: Journal) -> Self {
        self.journal_shared(Arc::new(journal))
    }

    /// Like [`journal`](Self::journal), for a journal the caller keeps using too (to
    /// prune it, for example).
    pub fn journal_shared(self, journal: Arc<Journal>) -> Self {
        self.store(journal)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::{DeliveryStatus, RunStatus};

    fn run(
        journal: &Journal,
        id: DeliveryId,
        handler: &str,
        attempt: u32,
        status: RunStatus,
        final_: bool,
    ) {
        let now = millis(SystemTime::now());
        journal.record(RunRecord {
            delivery: id,
            handler: handler.to_owned(),
            attempt,
            started_ms: now,
            ended_ms: now,
            status,
            detail: String::new(),
            final_,
        });
    }

    fn finish(journal: &Journal, id: DeliveryId) {
        journal
            .send(Op::Finish(id, millis(SystemTime::now())))
            .expect("open");
    }

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
        run(&journal, a.id, "log", 1, RunStatus::Ok, true);
        run(&journal, a.id, "deploy", 1, RunStatus::Failed, false);
        run(&journal, a.id, "deploy", 2, RunStatus::Cancelled, false);
        run(&journal, b.id, "log", 1, RunStatus::Failed, true);
        finish(&journal, b.id);
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
        assert_eq!(all[0].status, DeliveryStatus::Failed);
        assert_eq!(all[1].status, DeliveryStatus::Pending);
        let failed = history
            .list(&Filter::new().status(DeliveryStatus::Failed))
            .expect("list");
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
        journal.close();

        // Reopened: the same state, from disk.
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
        let commits = journal.stats.commits.load(Ordering::Relaxed);
        assert!(
            commits < 200,
            "200 appends in {commits} commits: some were grouped"
        );
        assert_eq!(journal.unfinished().await.expect("query").len(), 200);
        let mut text = String::new();
        journal.render(&mut text);
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
            run(&journal, *id, "log", 1, RunStatus::Ok, true);
            finish(&journal, *id);
        }
        // Keep 2 finished: ids[0] and ids[1] go, ids[4] (unfinished) stays.
        assert_eq!(journal.prune(None, Some(2)).await.expect("prune"), 2);
        let left = journal.unfinished().await.expect("unfinished");
        assert_eq!(left.iter().map(|d| d.id).collect::<Vec<_>>(), [ids[4]]);
        assert!(journal.get(ids[0]).await.expect("get").is_none());
        assert!(journal.get(ids[2]).await.expect("get").is_some());
        // Everything finished is older than zero seconds, once the clock has moved on: a
        // wait for time itself, which no event can stand for.
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
        run(&journal, late, "callback", 1, RunStatus::Ok, true);
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
