//! Reading the journal: what `hubhook deliveries` lists and shows.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use crate::handler::DeliveryId;
use crate::journal::{lines, JournalError, SCHEMA_VERSION};
use crate::observe::{DeliveryStatus, RunStatus};

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
    /// The repository as `docker pull` names it: `[host/]namespace/name`.
    pub repo: String,
    /// The tag.
    pub tag: String,
    /// Where it stands.
    pub status: DeliveryStatus,
    /// The handlers it went to.
    pub handlers: Vec<String>,
    /// The image digest the message names, if any.
    pub digest: Option<String>,
    /// When it settled, in milliseconds since the Unix epoch; `None` while pending.
    pub finished_ms: Option<i64>,
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
    /// How it ended.
    pub status: RunStatus,
    /// The outcome's summary or the error, with the output tail for commands.
    pub detail: String,
    /// Whether this attempt settled the handler's share of the delivery.
    pub final_: bool,
}

impl Attempt {
    /// Whether this is a failed deploy that put the previous version back (the docker
    /// and compose handlers end such a failure with words that say so).
    pub fn rolled_back(&self) -> bool {
        crate::observe::rolled_back(self.status, &self.detail)
    }
}

/// When a delivery arrived, when it settled and how: one point of [`History::timings`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Timing {
    /// When it was received, in milliseconds since the Unix epoch.
    pub received_ms: i64,
    /// When it settled; `None` while pending.
    pub finished_ms: Option<i64>,
    /// Where it stands.
    pub status: DeliveryStatus,
}

impl Timing {
    /// A point made by hand (a chart's test, say).
    pub fn new(received_ms: i64, finished_ms: Option<i64>, status: DeliveryStatus) -> Self {
        Self {
            received_ms,
            finished_ms,
            status,
        }
    }
}

/// Which deliveries [`History::list`] returns.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Filter {
    /// Only this status.
    pub status: Option<DeliveryStatus>,
    /// Only this repository, written as the list shows it (`[host/]namespace/name`).
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
    pub fn status(mut self, status: DeliveryStatus) -> Self {
        self.status = Some(status);
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
            return Err(fail(
                &"no journal here (has `hubhook serve` run with this data dir? `journal = false` keeps none)",
            ));
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

    /// Deliveries, newest first. A row hubhook did not write (an id or a status it
    /// cannot read) is left out.
    pub fn list(&self, filter: &Filter) -> Result<Vec<Summary>, JournalError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, received_ms, source, repo, tag, status, handlers,
                        json_extract(message, '$.digest'), finished_ms FROM deliveries
                 WHERE (?1 IS NULL OR status = ?1) AND (?2 IS NULL OR repo = ?2)
                 ORDER BY id DESC LIMIT ?3",
            )
            .map_err(|e| self.fail(e))?;
        let limit = filter.limit.map_or(-1, |n| n.min(i64::MAX as u64) as i64);
        let status = filter.status.map(DeliveryStatus::as_str);
        let rows = stmt
            .query_map(params![status, filter.repo, limit], |row| {
                let (Ok(id), Ok(status)) = (
                    row.get::<_, String>(0)?.parse(),
                    row.get::<_, String>(5)?.parse(),
                ) else {
                    return Ok(None);
                };
                Ok(Some(Summary {
                    id,
                    received_ms: row.get(1)?,
                    source: row.get(2)?,
                    repo: row.get(3)?,
                    tag: row.get(4)?,
                    status,
                    handlers: lines(&row.get::<_, String>(6)?),
                    digest: digest(row, 7),
                    finished_ms: row.get(8)?,
                }))
            })
            .map_err(|e| self.fail(e))?;
        let mut list = Vec::new();
        for row in rows {
            list.extend(row.map_err(|e| self.fail(e))?);
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
                "SELECT received_ms, source, repo, tag, status, handlers, message,
                        json_extract(message, '$.digest'), finished_ms
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
                            status: word(row, 4)?,
                            handlers: lines(&row.get::<_, String>(5)?),
                            digest: digest(row, 7),
                            finished_ms: row.get(8)?,
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
            .query_map([id.as_str()], attempt)
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(|e| self.fail(e))?;
        Ok(Some((summary, message, attempts)))
    }

    /// Runs `read` on one snapshot of the journal: what it reads by several calls
    /// agrees, whatever the server writes meanwhile.
    pub fn snapshot<T>(
        &self,
        read: impl FnOnce(&Self) -> Result<T, JournalError>,
    ) -> Result<T, JournalError> {
        let snapshot = self
            .conn
            .unchecked_transaction()
            .map_err(|e| self.fail(e))?;
        let value = read(self)?;
        snapshot.commit().map_err(|e| self.fail(e))?;
        Ok(value)
    }

    /// Each handler's latest attempt at one delivery (the callback's and notifications'
    /// included), in the order they ran: what a list shows as the delivery's outcome.
    pub fn latest_attempts(&self, id: DeliveryId) -> Result<Vec<Attempt>, JournalError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT handler, attempt, started_ms, ended_ms, status, detail, final
                 FROM runs AS r WHERE delivery = ?1 AND seq =
                     (SELECT max(seq) FROM runs WHERE delivery = ?1 AND handler = r.handler)
                 ORDER BY seq",
            )
            .map_err(|e| self.fail(e))?;
        stmt.query_map([id.as_str()], attempt)
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(|e| self.fail(e))
    }

    /// Every delivery received at or after `since_ms`, oldest first, as arrival, settling
    /// and status only: what a chart over the retention window needs.
    pub fn timings(&self, since_ms: i64) -> Result<Vec<Timing>, JournalError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT received_ms, finished_ms, status FROM deliveries
                 WHERE received_ms >= ?1 ORDER BY received_ms",
            )
            .map_err(|e| self.fail(e))?;
        let rows = stmt
            .query_map([since_ms], |row| {
                let Ok(status) = row.get::<_, String>(2)?.parse() else {
                    return Ok(None);
                };
                Ok(Some(Timing {
                    received_ms: row.get(0)?,
                    finished_ms: row.get(1)?,
                    status,
                }))
            })
            .map_err(|e| self.fail(e))?;
        let mut timings = Vec::new();
        for row in rows {
            timings.extend(row.map_err(|e| self.fail(e))?);
        }
        Ok(timings)
    }
}

/// The digest a stored message names: a string, or nothing.
fn digest(row: &rusqlite::Row<'_>, i: usize) -> Option<String> {
    row.get::<_, Option<String>>(i).ok().flatten()
}

/// One row of `runs` as an [`Attempt`] (the columns in `show`'s order).
fn attempt(row: &rusqlite::Row<'_>) -> rusqlite::Result<Attempt> {
    Ok(Attempt {
        handler: row.get(0)?,
        attempt: row.get(1)?,
        started_ms: row.get(2)?,
        ended_ms: row.get(3)?,
        status: word(row, 4)?,
        detail: row.get(5)?,
        final_: row.get(6)?,
    })
}

/// A status word read back from the journal; one this hubhook does not know is an error.
fn word<T: std::str::FromStr>(row: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<T>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    let text = row.get::<_, String>(i)?;
    text.parse().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
    })
}
