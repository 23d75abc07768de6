//! `hubhook deliveries list|show|replay`: the journal's history, readable while the
//! server runs.

use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use crate::error::Error;
use hubhook_core::journal::{Accepted, Filter, History, Journal};
use hubhook_core::DeliveryId;
use hubhook_core::RunStatus;

use crate::control;

/// The journal's file in the data dir.
pub(crate) const JOURNAL_FILE: &str = "journal.sqlite";

fn history(data_dir: &Path) -> Result<History, Error> {
    Ok(History::open(data_dir.join(JOURNAL_FILE))?)
}

/// A time as `2026-11-26T10:02:03Z`; a value outside years 1970 to 9999 (a journal
/// written by something else) as the raw number.
pub(crate) fn when(ms: i64) -> String {
    const YEAR_10000_MS: i64 = 253_402_300_800_000;
    if !(0..YEAR_10000_MS).contains(&ms) {
        return format!("{ms} ms");
    }
    let at = UNIX_EPOCH + Duration::from_millis(ms as u64);
    humantime::format_rfc3339_seconds(at).to_string()
}

/// `hubhook deliveries list`: newest first, one line each.
pub(crate) fn list(data_dir: &Path, filter: &Filter) -> Result<(), Error> {
    let list = history(data_dir)?.list(filter)?;
    println!(
        "{:<26}  {:<20}  {:<10}  {:<9}  {:<40}  HANDLERS",
        "ID", "RECEIVED", "STATUS", "SOURCE", "IMAGE"
    );
    for d in &list {
        println!(
            "{:<26}  {:<20}  {:<10}  {:<9}  {:<40}  {}",
            d.id,
            when(d.received_ms),
            d.status,
            d.source,
            format!("{}:{}", d.repo, d.tag),
            d.handlers.join(", ")
        );
    }
    Ok(())
}

/// `hubhook deliveries show ID`: the message's summary and every attempt.
pub(crate) fn show(data_dir: &Path, id: DeliveryId) -> Result<(), Error> {
    let (d, message, attempts) = history(data_dir)?
        .show(id)?
        .ok_or_else(|| format!("no delivery {id} in the journal"))?;
    let msg: serde_json::Value = serde_json::from_str(&message).unwrap_or_default();
    let field = |pointer: &str| {
        msg.pointer(pointer)
            .map(|v| match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .unwrap_or_else(|| "-".to_owned())
    };
    println!("delivery  {}", d.id);
    println!("received  {}", when(d.received_ms));
    println!("status    {}", d.status);
    println!("source    {}", d.source);
    println!("image     {}:{}", d.repo, d.tag);
    println!("pusher    {}", field("/push_data/pusher"));
    println!("digest    {}", field("/digest"));
    println!("handlers  {}", d.handlers.join(", "));
    if attempts.is_empty() {
        println!("attempts  none yet");
    } else {
        println!("attempts");
        for a in &attempts {
            let took = Duration::from_millis(a.ended_ms.saturating_sub(a.started_ms).max(0) as u64);
            println!(
                "  {:<16} #{:<2} {:<10} {}  {:>8}  {}{}",
                a.handler,
                a.attempt,
                a.status,
                when(a.started_ms),
                format!("{:.3}s", took.as_secs_f64()),
                if a.final_ || a.status == RunStatus::Ok {
                    ""
                } else {
                    "(not final) "
                },
                a.detail.lines().next().unwrap_or("")
            );
            for line in a.detail.lines().skip(1) {
                println!("      {line}");
            }
        }
    }
    Ok(())
}

/// `hubhook deliveries replay ID`: through the running server when there is one, or
/// journaled for the next start when there is none.
pub(crate) async fn replay(data_dir: &Path, id: DeliveryId) -> Result<(), Error> {
    if let Some(new) = control::replay(data_dir, id).await? {
        println!("replaying {id} as delivery {new}");
        return Ok(());
    }
    // No server: take the journal (its lock keeps a starting server out meanwhile) and
    // record a new delivery that the next start will run.
    let journal = Journal::open(data_dir.join(JOURNAL_FILE))?;
    let old = journal
        .get(id)
        .await?
        .ok_or_else(|| format!("no delivery {id} in the journal"))?;
    let summary = history(data_dir)?
        .show(id)?
        .map(|(s, _, _)| s)
        .ok_or_else(|| format!("no delivery {id} in the journal"))?;
    let new = DeliveryId::generate();
    journal
        .append(
            Accepted {
                id: new,
                source: old.source,
                message: old.message,
                pending: old.pending,
            },
            &summary.repo,
            &summary.tag,
        )
        .await?;
    println!("no server is running: {id} is journaled again as delivery {new}; it runs when `hubhook serve` starts");
    Ok(())
}
