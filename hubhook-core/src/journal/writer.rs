//! The writer thread: group commits until the journal is dropped.
//!
//! Whatever arrived while the previous commit ran goes into the next transaction, with one
//! fsync for all of it, so requests waiting at once share one fsync. A delivery (or a
//! read, or a sync) in the batch commits it at once: someone waits for it. Attempt and
//! finish records only linger up to [`LINGER`] for one, so a webhook's records usually
//! ride along with the next webhook's commit instead of taking one of their own.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use rusqlite::{params, Connection, OptionalExtension};

use crate::handler::DeliveryId;
use crate::journal::{millis, Stats};
use crate::observe::{Committed, DeliveryStatus, Record, RunStatus, Stored};

/// Most records one commit takes; the rest wait for the next one.
const MAX_BATCH: usize = 4096;
/// How long attempt and finish records may wait for a delivery's commit to ride along
/// with, before they get a commit of their own. Nobody waits for them; losing them in a
/// crash only means a delivery runs again (at least once).
const LINGER: Duration = Duration::from_millis(50);
/// The first wait before records of a failed commit are tried again; it doubles up to
/// [`MAX_RETRY`], so a full disk is not hammered.
const FIRST_RETRY: Duration = Duration::from_millis(100);
const MAX_RETRY: Duration = Duration::from_secs(5);

/// One line of a delivery's history.
#[derive(Debug)]
pub(crate) struct RunRecord {
    pub(crate) delivery: DeliveryId,
    pub(crate) handler: String,
    pub(crate) attempt: u32,
    pub(crate) started_ms: i64,
    pub(crate) ended_ms: i64,
    pub(crate) status: RunStatus,
    pub(crate) detail: String,
    pub(crate) final_: bool,
}

pub(crate) enum Op {
    /// Deliveries of one request, in one commit; `committed` is told how it went.
    Append(Vec<Record>, Committed),
    Run(RunRecord),
    /// Every handler of the delivery has a final attempt: set its status from them.
    Finish(DeliveryId, i64),
    /// Runs on the writer's connection after the batch before it has committed, so it
    /// sees every write sent before it.
    Read(Box<dyn FnOnce(&mut Connection) + Send>),
    /// Forces a commit of everything before it; answered with that commit's outcome.
    Sync(tokio::sync::oneshot::Sender<Result<(), String>>),
}

impl std::fmt::Debug for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Op::Append(..) => "Append",
            Op::Run(_) => "Run",
            Op::Finish(..) => "Finish",
            Op::Read(_) => "Read",
            Op::Sync(_) => "Sync",
        })
    }
}

impl Op {
    /// Whether someone waits for this op's commit.
    fn urgent(&self) -> bool {
        matches!(self, Op::Append(..) | Op::Read(_) | Op::Sync(_))
    }
}

/// The thread's loop; returns when every sender is gone and what was sent is written
/// (or cannot be).
pub(crate) fn writer(mut conn: Connection, rx: mpsc::Receiver<Op>, stats: &Stats) {
    let mut waiting: Vec<Op> = Vec::new();
    // Records of a failed commit, and when to try them again on their own.
    let mut retry_at: Option<Instant> = None;
    let mut retry_wait = FIRST_RETRY;
    let mut lingering_since: Option<Instant> = None;
    let mut closed = false;
    // Orders a delivery's history; the writer is the only one writing it.
    let mut seq: i64 = conn
        .query_row("SELECT coalesce(max(seq), 0) FROM runs", [], |row| {
            row.get(0)
        })
        .unwrap_or(0);
    loop {
        let deadline = [lingering_since.map(|since| since + LINGER), retry_at]
            .into_iter()
            .flatten()
            .min();
        let next = match deadline {
            _ if closed => Err(mpsc::RecvTimeoutError::Disconnected),
            None => rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
            Some(at) => rx.recv_timeout(at.saturating_duration_since(Instant::now())),
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
        let now = Instant::now();
        let urgent = waiting.iter().any(Op::urgent);
        let retry_due = retry_at.is_some_and(|at| at <= now);
        let since = *lingering_since.get_or_insert(now);
        if !urgent && !closed && !retry_due && now - since < LINGER && waiting.len() < MAX_BATCH {
            continue;
        }
        lingering_since = None;
        let batch = std::mem::take(&mut waiting);
        let outcome = commit_batch(&mut conn, &batch, &mut seq, stats);
        if let Err(e) = &outcome {
            tracing::error!(error = %e, "journal commit failed");
        }
        // Attempts and finishes of a failed commit go into a later one: losing them
        // would leave deliveries owed that already ran. (Deliveries in it were refused.)
        let mut retry = Vec::new();
        // Answers go out in order with the writes around them.
        for op in batch {
            match op {
                Op::Append(_, committed) => {
                    committed(outcome.clone().map_err(Into::into));
                }
                Op::Sync(done) => {
                    let _ = done.send(outcome.clone());
                }
                Op::Read(query) => query(&mut conn),
                op @ (Op::Run(_) | Op::Finish(..)) if outcome.is_err() => retry.push(op),
                Op::Run(_) | Op::Finish(..) => {}
            }
        }
        if retry.is_empty() {
            (retry_at, retry_wait) = (None, FIRST_RETRY);
        } else {
            if closed {
                tracing::error!(
                    records = retry.len(),
                    "the journal is closing and cannot commit: those deliveries run again at the next start"
                );
                return;
            }
            // Tried again with the next commit, or on their own after a backoff.
            retry_at = Some(Instant::now() + retry_wait);
            retry_wait = (retry_wait * 2).min(MAX_RETRY);
        }
        waiting = retry;
    }
}

/// Commits one batch and counts it for `/metrics`.
fn commit_batch(
    conn: &mut Connection,
    batch: &[Op],
    seq: &mut i64,
    stats: &Stats,
) -> Result<(), String> {
    let (mut records, mut deliveries) = (0u64, 0u64);
    for op in batch {
        match op {
            Op::Append(rows, _) => {
                records += rows.len() as u64;
                deliveries += rows.len() as u64;
            }
            Op::Run(_) | Op::Finish(..) => records += 1,
            Op::Read(_) | Op::Sync(_) => {}
        }
    }
    if records == 0 {
        return Ok(());
    }
    let started = Instant::now();
    let outcome = commit(conn, batch, seq).map_err(|e| e.to_string());
    stats.record(records, deliveries, started.elapsed());
    outcome
}

/// Writes one batch in one transaction.
fn commit(conn: &mut Connection, batch: &[Op], seq: &mut i64) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    let now = millis(SystemTime::now());
    for op in batch {
        match op {
            Op::Append(rows, _) => {
                let mut insert = tx.prepare_cached(
                    "INSERT INTO deliveries
                     (id, received_ms, source, repo, tag, message, handlers, status, finished_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                )?;
                for d in rows {
                    // A delivery no handler wanted is finished as it arrives.
                    let handlers = d.handlers.join("\n");
                    let (status, finished) = if d.handlers.is_empty() {
                        (DeliveryStatus::Unmatched, Some(now))
                    } else {
                        (DeliveryStatus::Pending, None)
                    };
                    insert.execute(params![
                        d.id.as_str(),
                        now,
                        d.source,
                        d.repo,
                        d.tag,
                        d.message,
                        handlers,
                        status.as_str(),
                        finished,
                    ])?;
                }
            }
            Op::Run(r) => {
                *seq += 1;
                tx.prepare_cached(
                    "INSERT INTO runs (delivery, seq, handler, attempt, started_ms, ended_ms, status, detail, final)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                )?
                .execute(params![
                    r.delivery.as_str(),
                    *seq,
                    r.handler,
                    r.attempt,
                    r.started_ms,
                    r.ended_ms,
                    r.status.as_str(),
                    r.detail,
                    r.final_,
                ])?;
            }
            Op::Finish(id, at) => finish(&tx, id.as_str(), *at)?,
            Op::Read(_) | Op::Sync(_) => {}
        }
    }
    tx.commit()
}

/// Sets a delivery's status from its final attempts on record (the callback's and the
/// notifications' lines aside), by [`DeliveryStatus::settle`]: the attempts of a run before a restart count too.
fn finish(conn: &Connection, id: &str, at: i64) -> rusqlite::Result<()> {
    let finals = conn
        .prepare_cached(
            "SELECT status FROM runs WHERE delivery = ?1 AND final = 1
             AND handler != 'callback' AND handler NOT LIKE 'notify:%'",
        )?
        .query_map([id], |row| row.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<String>>>()?;
    // A word this hubhook does not know was written by a newer one: count it as failed
    // rather than hide it.
    let status = DeliveryStatus::settle(
        finals
            .iter()
            .map(|s| s.parse().unwrap_or(RunStatus::Failed)),
    );
    conn.prepare_cached("UPDATE deliveries SET finished_ms = ?2, status = ?3 WHERE id = ?1")?
        .execute(params![id, at, status.as_str()])?;
    Ok(())
}

/// Deliveries accepted and not finished, oldest first, with the handlers still owed.
/// One whose handlers all settled before the process stopped (its finish was lost) is
/// finished here instead.
pub(crate) fn unfinished(conn: &Connection) -> rusqlite::Result<Vec<Stored>> {
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
            finish(conn, &id, millis(SystemTime::now()))?;
            continue;
        }
        list.push(Stored {
            id: parsed,
            source,
            message,
            handlers: pending,
        });
    }
    Ok(list)
}

/// One delivery by id, with every handler it went to.
pub(crate) fn get(conn: &Connection, id: DeliveryId) -> rusqlite::Result<Option<Stored>> {
    conn.query_row(
        "SELECT source, message, handlers FROM deliveries WHERE id = ?1",
        [id.as_str()],
        |row| {
            Ok(Stored {
                id,
                source: row.get(0)?,
                message: row.get(1)?,
                handlers: super::lines(&row.get::<_, String>(2)?),
            })
        },
    )
    .optional()
}

/// Counts one commit into `stats`.
impl Stats {
    fn record(&self, records: u64, deliveries: u64, elapsed: Duration) {
        let add = |a: &AtomicU64, n: u64| {
            a.fetch_add(n, Ordering::Relaxed);
        };
        add(&self.commits, 1);
        add(&self.records, records);
        add(&self.deliveries, deliveries);
        add(&self.commit_micros, elapsed.as_micros() as u64);
        for (bound, (r, d)) in super::BATCH_BUCKETS
            .iter()
            .zip(self.batch.iter().zip(&self.delivery_batch))
        {
            if records <= *bound {
                add(r, 1);
            }
            if deliveries <= *bound {
                add(d, 1);
            }
        }
        for (bound, n) in super::LATENCY_BUCKETS.iter().zip(&self.latency) {
            if elapsed.as_secs_f64() <= *bound {
                add(n, 1);
            }
        }
    }
}
