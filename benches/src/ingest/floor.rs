//! `ingest --floor-server PORT DIR`: the durable floor the journal is measured against.
//!
//! Bare hyper that keeps each request's body in SQLite before it answers: WAL,
//! `synchronous = FULL`, one writer thread that commits everything waiting in one
//! transaction (group commit, one fsync per group), then 200. It is the least a server
//! can do and still say "on disk before the answer" with this design on this disk, so
//! hubhook's durable figures are read against it.

use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use rusqlite::Connection;
use tokio::sync::oneshot;

type Job = (Bytes, oneshot::Sender<bool>);

pub(crate) fn floor_server(port: Option<&String>, dir: Option<&String>) -> ExitCode {
    let (Some(port), Some(dir)) = (port.and_then(|p| p.parse::<u16>().ok()), dir) else {
        eprintln!("ingest: --floor-server needs a port and a directory");
        return ExitCode::FAILURE;
    };
    let conn = match open(&Path::new(dir).join("floor.sqlite")) {
        Ok(conn) => conn,
        Err(e) => {
            eprintln!("ingest: floor server cannot open its database in {dir}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (tx, rx) = mpsc::channel::<Job>();
    std::thread::spawn(move || writer(conn, rx));
    crate::net::serve_http1("floor", port, move |req: Request<Incoming>| {
        let tx = tx.clone();
        async move {
            if req.method() == http::Method::GET {
                // The group commits, in the journal's series names, for the report.
                return Response::new(Full::new(Bytes::from(STATS.render())));
            }
            let mut response = Response::new(Full::default());
            let body = match req.into_body().collect().await {
                Ok(body) => body.to_bytes(),
                Err(_) => Bytes::new(),
            };
            let (done, committed) = oneshot::channel();
            let durable = tx.send((body, done)).is_ok() && committed.await.unwrap_or(false);
            if !durable {
                *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            }
            response
        }
    })
}

fn open(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         CREATE TABLE IF NOT EXISTS bodies (id INTEGER PRIMARY KEY, body BLOB NOT NULL);",
    )?;
    Ok(conn)
}

/// Commits counted by the writer: how many, bodies in them, and their time.
struct Stats {
    commits: AtomicU64,
    bodies: AtomicU64,
    micros: AtomicU64,
}

static STATS: Stats = Stats {
    commits: AtomicU64::new(0),
    bodies: AtomicU64::new(0),
    micros: AtomicU64::new(0),
};

impl Stats {
    fn render(&self) -> String {
        let load = |n: &AtomicU64| n.load(Ordering::Relaxed);
        let (commits, bodies) = (load(&self.commits), load(&self.bodies));
        format!(
            "hubhook_journal_commit_records_count {commits}\n\
             hubhook_journal_commit_records_sum {bodies}\n\
             hubhook_journal_commit_deliveries_sum {bodies}\n\
             hubhook_journal_commit_seconds_sum {}\n",
            load(&self.micros) as f64 / 1e6
        )
    }
}

/// Commits everything waiting in one transaction, then answers each request of it.
fn writer(mut conn: Connection, rx: mpsc::Receiver<Job>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        batch.extend(rx.try_iter());
        let started = Instant::now();
        let committed = (|| {
            let tx = conn.transaction()?;
            for (body, _) in &batch {
                tx.prepare_cached("INSERT INTO bodies (body) VALUES (?1)")?
                    .execute([body.as_ref()])?;
            }
            tx.commit()
        })()
        .is_ok();
        STATS.commits.fetch_add(1, Ordering::Relaxed);
        STATS
            .bodies
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        STATS
            .micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        for (_, done) in batch {
            let _ = done.send(committed);
        }
    }
}
