//! The container swap, as steps the Docker engine itself records, and the reconciler that
//! finishes or undoes a swap that hubhook did not finish.
//!
//! A swap of container `NAME` goes through names, each change made by one atomic
//! `docker rename` or `docker run --name`, so the engine's own list of containers is the
//! durable record of how far it got:
//!
//! 1. the running `NAME` is renamed `NAME-hubhook-old`, then stopped;
//! 2. the new image runs as `NAME-hubhook-new` and goes through the health gate;
//! 3. passed: `NAME-hubhook-new` is renamed `NAME` (the commit), then the old one is
//!    removed; failed: the new one is removed, the old one is started and renamed back.
//!
//! So, whatever stopped hubhook and whenever, the reconciler reads these names:
//! a `-new` never passed its gate and goes; a `NAME` beside a `-old` passed, and the `-old`
//! goes; a `-old` alone is the last container that passed, and it is started and renamed
//! back. The last container that passed its gate is removed only after its successor is
//! `NAME`. Every container is found by its exact name and then addressed by its id.

use std::time::{Duration, Instant};

use hubhook_core::{Context, HandlerError, Outcome};

use super::cli::{Docker, Failure, Found};
use super::health::gate;
use super::Health;

/// One container's swap: its names and how its new container runs.
#[derive(Debug)]
pub(super) struct Swap<'a> {
    pub(super) docker: &'a Docker,
    pub(super) name: &'a str,
    /// The configured repository.
    pub(super) image: &'a str,
    pub(super) run_args: &'a [String],
    pub(super) command: &'a [String],
    pub(super) stop_timeout: Duration,
    pub(super) health: &'a Health,
    pub(super) health_timeout: Duration,
    pub(super) cleanup: bool,
    pub(super) blue_green: Option<&'a super::BlueGreen>,
}

/// The names of a swap in progress.
pub(super) fn old_name(name: &str) -> String {
    format!("{name}-hubhook-old")
}

pub(super) fn new_name(name: &str) -> String {
    format!("{name}-hubhook-new")
}

impl Swap<'_> {
    /// Brings an unfinished swap to a safe end from what docker reports; returns what it
    /// did, or `None` when there was nothing to repair.
    pub(super) async fn reconcile(&self) -> Result<Option<String>, Failure> {
        if let Some(bg) = self.blue_green {
            return self.reconcile_blue_green(bg).await;
        }
        let d = self.docker;
        let (old, new) = (old_name(self.name), new_name(self.name));
        let mut done = Vec::new();
        if let Some(candidate) = d.find(&new).await? {
            // It never became NAME: it did not pass its gate.
            d.run(&["rm", "--force", &candidate.id]).await?;
            done.push(format!(
                "removed {new}, which had not passed its health gate"
            ));
        }
        if let Some(previous) = d.find(&old).await? {
            match d.find(self.name).await? {
                Some(_) => {
                    // NAME passed its gate and took the name: the swap was committed.
                    d.run(&["rm", "--force", &previous.id]).await?;
                    done.push(format!("removed {old}: {} had passed its gate", self.name));
                }
                None => {
                    self.restore(&previous).await?;
                    done.push(format!(
                        "restored {old}, the last container that passed its gate, as {}",
                        self.name
                    ));
                }
            }
        }
        Ok((!done.is_empty()).then(|| done.join("; ")))
    }

    /// Starts the previous container and gives it its name back (started first: if this
    /// is cut short, it runs under `-old` and the reconciler renames it).
    async fn restore(&self, previous: &Found) -> Result<(), Failure> {
        if !previous.running {
            self.docker.run(&["start", &previous.id]).await?;
        }
        self.docker
            .run(&["rename", &previous.id, self.name])
            .await?;
        Ok(())
    }

    /// Stops the running container and starts `reference` in its place, behind the
    /// health gate; rolls back when the new one fails. Call with the deploy lock held,
    /// after [`reconcile`](Self::reconcile).
    pub(super) async fn run(
        &self,
        reference: &str,
        ctx: &Context,
        started: Instant,
        pulled: Duration,
    ) -> Result<Outcome, HandlerError> {
        if let Some(bg) = self.blue_green {
            return self
                .run_blue_green(bg, reference, ctx, started, pulled)
                .await;
        }
        let d = self.docker;
        let (old, new) = (old_name(self.name), new_name(self.name));
        // 1. Move the running container aside, keeping it for a rollback.
        let previous = d.find(self.name).await.map_err(step)?;
        let old_image = match &previous {
            Some(p) => {
                // Only cleanup needs the old image.
                let image = if self.cleanup {
                    let inspect = ["inspect", "--format", "{{.Image}}", &p.id];
                    Some(d.run(&inspect).await.map_err(step)?)
                } else {
                    None
                };
                if let Err(e) = d.run(&["rename", &p.id, &old]).await {
                    // It may have been renamed all the same (a slow daemon): name it back.
                    let back = self.restore(p).await;
                    return Err(failure(
                        format!("could not rename the running container, nothing changed: {e}"),
                        &e,
                        back.err(),
                    ));
                }
                let wait = self.stop_timeout.as_secs().to_string();
                let limit = self.stop_timeout + d.step_timeout;
                if let Err(e) = d.run_within(&["stop", "--time", &wait, &p.id], limit).await {
                    // The daemon may still be stopping it: start it in any case.
                    let back = self
                        .restore(&Found {
                            running: false,
                            ..p.clone()
                        })
                        .await;
                    return Err(failure(
                        format!("could not stop the running container, nothing changed: {e}"),
                        &e,
                        back.err(),
                    ));
                }
                image.map(|image| image.trim().to_owned())
            }
            None => None,
        };
        let swapped = started.elapsed();

        // 2. Run the new one and gate it.
        let mut argv: Vec<&str> = vec!["run", "--detach", "--name", &new];
        argv.extend(self.run_args.iter().map(String::as_str));
        argv.push(reference);
        argv.extend(self.command.iter().map(String::as_str));
        let result = match d.run(&argv).await {
            Ok(id) => {
                let id = id.trim().to_owned();
                match gate(d, &id, self.health, self.health_timeout, ctx).await {
                    Ok(()) => Ok(id),
                    Err(reason) => Err((reason, None)),
                }
            }
            Err(e) => Err((format!("docker run failed: {e}"), Some(e))),
        };
        let healthy = started.elapsed();
        let id = match result {
            Ok(id) => id,
            Err((reason, cause)) => {
                let cut_short = ctx.is_cancelled();
                let failure = self.roll_back(reference, &reason, cause, previous).await;
                return Err(super::owed_if_cancelled(failure, cut_short, self.name));
            }
        };

        // 3. Commit: the new container takes the name, then the old one goes.
        d.run(&["rename", &id, self.name]).await.map_err(step)?;
        let mut summary = format!(
            "deployed {reference} to container {} (pull {} ms, swap {} ms, health {} ms)",
            self.name,
            pulled.as_millis(),
            (swapped - pulled).as_millis(),
            (healthy - swapped).as_millis()
        );
        if let Some(p) = &previous {
            if let Err(e) = d.run(&["rm", "--force", &p.id]).await {
                summary.push_str(&format!("; {old} kept, the next deploy removes it: {e}"));
            }
        }
        if let Some(old_image) = old_image {
            self.remove_image(&id, &old_image, &mut summary).await;
        }
        Ok(Outcome::new(summary))
    }

    /// Removes the previous container's image, found by its id: every reference of the
    /// configured repository to that id (`repo:tag`, `repo@digest`) is removed, so the
    /// image goes unless something else names it. Never with `--force`: docker refuses to
    /// remove the last reference of an image a container uses, and the outcome says so.
    /// Nothing goes when the new container runs the same image (pushed again).
    async fn remove_image(&self, new_id: &str, old_image: &str, summary: &mut String) {
        let (d, image) = (self.docker, self.image);
        let new_image = d
            .run(&["inspect", "--format", "{{.Image}}", new_id])
            .await
            .unwrap_or_default();
        if old_image.is_empty() || new_image.trim() == old_image {
            return;
        }
        let listed = d
            .run(&[
                "image",
                "ls",
                "--no-trunc",
                "--digests",
                "--format",
                "{{.ID}} {{.Repository}}:{{.Tag}} {{.Repository}}@{{.Digest}}",
                image,
            ])
            .await
            .unwrap_or_default();
        let references: Vec<&str> = listed
            .lines()
            .filter_map(|line| line.split_once(' '))
            .filter(|(id, _)| *id == old_image)
            .flat_map(|(_, refs)| refs.split(' '))
            .filter(|r| !r.ends_with("<none>"))
            .collect();
        for reference in references {
            if let Err(e) = d.run(&["image", "rm", reference]).await {
                summary.push_str(&format!("; old image {reference} kept: {e}"));
            }
        }
    }

    /// The new container failed: it goes, with its last output in the report, and the
    /// previous one runs again.
    pub(super) async fn roll_back(
        &self,
        reference: &str,
        reason: &str,
        cause: Option<Failure>,
        previous: Option<Found>,
    ) -> HandlerError {
        let d = self.docker;
        let new = new_name(self.name);
        let mut report = format!("new container for {reference} failed: {reason}");
        if let Ok(Some(candidate)) = d.find(&new).await {
            let logs = d
                .run(&["logs", "--tail", "20", &candidate.id])
                .await
                .map(|out| out.trim().to_owned())
                .unwrap_or_default();
            if !logs.is_empty() {
                report.push_str(&format!("; its last output: {logs}"));
            }
            let _ = d.run(&["rm", "--force", &candidate.id]).await;
        }
        let mut restore_failed = None;
        if let Some(p) = &previous {
            let stopped = Found {
                running: false,
                ..p.clone()
            };
            match self.restore(&stopped).await {
                Ok(()) => report.push_str("; rollback done: the previous container runs again"),
                Err(e) => {
                    report.push_str(&format!(
                        "; ROLLBACK FAILED, the previous container is {} and stopped: {e}",
                        old_name(self.name)
                    ));
                    restore_failed = Some(e);
                }
            }
        }
        match (cause, restore_failed) {
            (Some(Failure::Timeout(_, limit)), _) | (_, Some(Failure::Timeout(_, limit))) => {
                tracing::warn!(container = self.name, "{report}");
                HandlerError::Timeout(limit)
            }
            _ => HandlerError::Failed(report),
        }
    }
}

/// A step that failed before anything was at risk (or after the commit).
pub(super) fn step(e: Failure) -> HandlerError {
    match e {
        Failure::Timeout(_, limit) => HandlerError::Timeout(limit),
        Failure::Cancelled => HandlerError::Cancelled,
        other => HandlerError::Failed(other.to_string()),
    }
}

/// A failed stop: a timeout stays a timeout (a hung daemon), with the report logged.
fn failure(report: String, cause: &Failure, restore: Option<Failure>) -> HandlerError {
    let report = match restore {
        Some(e) => format!("{report}; putting it back failed, the next deploy repairs it: {e}"),
        None => report,
    };
    match cause {
        Failure::Timeout(_, limit) => {
            tracing::warn!("{report}");
            HandlerError::Timeout(*limit)
        }
        _ => HandlerError::Failed(report),
    }
}
