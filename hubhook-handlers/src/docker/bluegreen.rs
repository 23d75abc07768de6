//! Blue-green behind nginx: the new container runs beside the old one on the other of two
//! ports, passes its gate, nginx's upstream file is switched to it and nginx reloaded, and
//! only then does the old one go. A broken image never takes an answer away from nginx.
//!
//! The record of how far a swap got: the new container's name (`NAME-hubhook-new` until
//! it takes `NAME`) and the upstream file (switched only after the gate). The reconciler
//! reads both: a `-new` that nginx does not point to never passed and goes; one that nginx
//! points to passed, the old container goes and the new one takes the name; nginx is
//! reloaded after any repair, in case the switch was written and not yet loaded.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use hubhook_core::{Context, HandlerError, Outcome};

use super::cli::Failure;
use super::health::gate;
use super::swap::{new_name, Swap};
use super::{DockerError, Health};

/// How long after a reload nginx may still send a request to the previous upstream.
const RELOAD_SETTLE: Duration = Duration::from_millis(500);

/// The two ports, the upstream file and nginx's reload command of a blue-green container.
///
/// ```
/// use hubhook_handlers::BlueGreen;
///
/// let bg = BlueGreen::new(
///     ["127.0.0.1:8001:80", "127.0.0.1:8002:80"],
///     "/etc/nginx/hubhook/blog.upstream",
/// )?;
/// # Ok::<(), hubhook_handlers::DockerError>(())
/// ```
#[derive(Debug, Clone)]
pub struct BlueGreen {
    ports: [Slot; 2],
    upstream_file: PathBuf,
    reload: Vec<String>,
}

/// One of the two `-p` values, and the address nginx reaches it at.
#[derive(Debug, Clone)]
struct Slot {
    publish: String,
    address: String,
}

impl BlueGreen {
    /// Blue-green over two `-p` values (`"127.0.0.1:8001:80"`, `"8002:80"`) used in turn,
    /// switching nginx through `upstream_file`; reloads with `nginx -s reload`.
    pub fn new(ports: [&str; 2], upstream_file: impl Into<PathBuf>) -> Result<Self, DockerError> {
        let [a, b] = ports.map(slot);
        let ports = [a?, b?];
        if ports[0].address == ports[1].address {
            return Err(DockerError::Ports(format!(
                "{:?} and {:?} are the same port",
                ports[0].publish, ports[1].publish
            )));
        }
        Ok(Self {
            ports,
            upstream_file: upstream_file.into(),
            reload: ["nginx", "-s", "reload"].map(str::to_owned).to_vec(),
        })
    }

    /// The command that makes nginx read the upstream file again, as an argv.
    #[must_use]
    pub fn reload<I: IntoIterator<Item = S>, S: Into<String>>(mut self, argv: I) -> Self {
        self.reload = argv.into_iter().map(Into::into).collect();
        self
    }

    /// The slot nginx points to now, from the upstream file.
    fn current(&self) -> Option<usize> {
        let text = std::fs::read_to_string(&self.upstream_file).ok()?;
        let address = text.trim().strip_prefix("server ")?.trim_end_matches(';');
        self.ports.iter().position(|s| s.address == address)
    }

    /// Points nginx at `slot`: the file is written beside its place and renamed over it.
    fn switch(&self, slot: usize) -> std::io::Result<()> {
        let mut temp = self.upstream_file.clone().into_os_string();
        temp.push(".hubhook-tmp");
        let temp = PathBuf::from(temp);
        let line = format!("server {};\n", self.ports[slot].address);
        {
            use std::io::Write;
            let mut file = std::fs::File::create(&temp)?;
            file.write_all(line.as_bytes())?;
            file.sync_all()?;
        }
        std::fs::rename(&temp, &self.upstream_file)?;
        if let Some(dir) = self
            .upstream_file
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
        {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    /// Runs the reload command within `limit`.
    async fn reload_nginx(&self, limit: Duration) -> Result<(), String> {
        let Some((program, args)) = self.reload.split_first() else {
            return Ok(());
        };
        let output = tokio::process::Command::new(program)
            .args(args)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        match tokio::time::timeout(limit, output).await {
            Err(_) => Err(format!("{program} did not finish within {limit:?}")),
            Ok(Err(e)) => Err(format!("cannot run {program}: {e}")),
            Ok(Ok(out)) if out.status.success() => {
                // nginx applies a reload in the background: new workers take new
                // connections, old ones finish theirs. The container they pointed to must
                // still answer until then.
                tokio::time::sleep(RELOAD_SETTLE).await;
                Ok(())
            }
            Ok(Ok(out)) => Err(format!(
                "{program} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )),
        }
    }
}

/// A `-p` value: `[IP:]HOST_PORT:CONTAINER_PORT`; nginx reaches it at `IP:HOST_PORT`
/// (127.0.0.1 when the IP is missing or unspecified).
fn slot(publish: &str) -> Result<Slot, DockerError> {
    let bad = || {
        DockerError::Ports(format!(
            "{publish:?} is not a port mapping like \"127.0.0.1:8001:80\""
        ))
    };
    let parts: Vec<&str> = publish.split(':').collect();
    let (ip, host, container) = match parts.as_slice() {
        [host, container] => ("127.0.0.1", *host, *container),
        [ip, host, container] => (*ip, *host, *container),
        _ => return Err(bad()),
    };
    let port = |p: &str| p.parse::<u16>().ok().filter(|n| *n > 0);
    if port(host).is_none() || port(container.split('/').next().unwrap_or("")).is_none() {
        return Err(bad());
    }
    let ip: std::net::IpAddr = ip.parse().map_err(|_| bad())?;
    let ip = if ip.is_unspecified() {
        "127.0.0.1".to_owned()
    } else {
        ip.to_string()
    };
    Ok(Slot {
        publish: publish.to_owned(),
        address: format!("{ip}:{host}"),
    })
}

impl Swap<'_> {
    /// The blue-green reconciler (see the module's doc).
    pub(super) async fn reconcile_blue_green(
        &self,
        bg: &BlueGreen,
    ) -> Result<Option<String>, Failure> {
        let d = self.docker;
        let new = new_name(self.name);
        let Some(candidate) = d.find(&new).await? else {
            return Ok(None);
        };
        let slot = d
            .run(&[
                "inspect",
                "--format",
                "{{index .Config.Labels \"hubhook.slot\"}}",
                &candidate.id,
            ])
            .await?;
        let slot = slot.trim().parse::<usize>().ok().filter(|s| *s < 2);
        let switched = slot.is_some() && bg.current() == slot;
        let done = if switched && candidate.running {
            // nginx may not have loaded the switch yet: load it before the old one goes.
            if let Err(e) = bg.reload_nginx(d.step_timeout).await {
                return Ok(Some(format!(
                    "{new} passed its gate and nginx points to it, but reloading nginx failed, so the previous container stays: {e}"
                )));
            }
            if let Some(previous) = d.find(self.name).await? {
                d.run(&["rm", "--force", &previous.id]).await?;
            }
            d.run(&["rename", &candidate.id, self.name]).await?;
            format!(
                "{new} had passed its gate and nginx points to it: it is {} now",
                self.name
            )
        } else {
            d.run(&["rm", "--force", &candidate.id]).await?;
            let done = match slot {
                // nginx points to it, but it stopped: back to the other port, where the
                // previous container (if any) still runs.
                Some(slot) if switched => {
                    bg.switch(1 - slot).map_err(|e| {
                        Failure::Command(format!(
                            "cannot write {}: {e}",
                            bg.upstream_file.display()
                        ))
                    })?;
                    format!("removed {new}, which had stopped; nginx points back to the previous container")
                }
                _ => format!("removed {new}, which nginx does not point to"),
            };
            // The switch may have been written (now, or before a crash) and not loaded.
            if let Err(e) = bg.reload_nginx(d.step_timeout).await {
                return Ok(Some(format!("{done}; reloading nginx failed: {e}")));
            }
            done
        };
        Ok(Some(done))
    }

    /// One blue-green deploy of `reference`; call with the deploy lock held, after the
    /// reconciler.
    pub(super) async fn run_blue_green(
        &self,
        bg: &BlueGreen,
        reference: &str,
        ctx: &Context,
        started: Instant,
        pulled: Duration,
    ) -> Result<Outcome, HandlerError> {
        let d = self.docker;
        let new = new_name(self.name);
        let previous = d.find(self.name).await.map_err(super::swap::step)?;
        // The other port than the one nginx points to now; the file cannot change while
        // the deploy lock is held.
        let previous_slot = bg.current();
        let slot = match previous_slot {
            Some(current) if previous.is_some() => 1 - current,
            _ => 0,
        };
        let label = format!("hubhook.slot={slot}");
        let mut argv: Vec<&str> = vec![
            "run",
            "--detach",
            "--name",
            &new,
            "--label",
            &label,
            "-p",
            &bg.ports[slot].publish,
        ];
        argv.extend(self.run_args.iter().map(String::as_str));
        argv.push(reference);
        argv.extend(self.command.iter().map(String::as_str));
        let health = match self.health {
            Health::Http(url) => Health::Http(at_address(url, &bg.ports[slot].address)),
            other => other.clone(),
        };
        let gated = match d.run(&argv).await {
            Ok(id) => {
                let id = id.trim().to_owned();
                gate(d, &id, &health, self.health_timeout, ctx)
                    .await
                    .map(|()| id)
                    .map_err(|reason| (reason, None))
            }
            Err(e) => Err((format!("docker run failed: {e}"), Some(e))),
        };
        let healthy = started.elapsed();
        let id = match gated {
            Ok(id) => id,
            Err((reason, cause)) => {
                // nginx still points to the old container: the new one just goes.
                let cut_short = ctx.is_cancelled();
                let failure = self.roll_back(reference, &reason, cause, None).await;
                return Err(super::owed_if_cancelled(failure, cut_short, self.name));
            }
        };
        // The switch: nginx points to the new container from here on.
        let switched = match bg.switch(slot) {
            Ok(()) => bg.reload_nginx(d.step_timeout).await,
            Err(e) => Err(format!("cannot write {}: {e}", bg.upstream_file.display())),
        };
        if let Err(reason) = switched {
            if let Some(back) = previous_slot {
                let _ = bg.switch(back);
                let _ = bg.reload_nginx(d.step_timeout).await;
            }
            return Err(self
                .roll_back(
                    reference,
                    &format!("switching nginx failed: {reason}"),
                    None,
                    None,
                )
                .await);
        }
        let switched_at = started.elapsed();
        // The old one goes, and the new one takes the name.
        let mut summary = String::new();
        if let Some(p) = &previous {
            let wait = self.stop_timeout.as_secs().to_string();
            let _ = d
                .run_within(
                    &["stop", "--time", &wait, &p.id],
                    self.stop_timeout + d.step_timeout,
                )
                .await;
            if let Err(e) = d.run(&["rm", "--force", &p.id]).await {
                summary.push_str(&format!(
                    "; the old container was kept, the next deploy removes it: {e}"
                ));
            }
        }
        d.run(&["rename", &id, self.name])
            .await
            .map_err(super::swap::step)?;
        Ok(Outcome::new(format!(
            "deployed {reference} to container {} blue-green on {} (pull {} ms, health {} ms, switch {} ms){summary}",
            self.name,
            bg.ports[slot].address,
            pulled.as_millis(),
            (healthy - pulled).as_millis(),
            (switched_at - healthy).as_millis(),
        )))
    }
}

/// `url` with its host and port replaced by `address` (the new container's slot).
fn at_address(url: &str, address: &str) -> String {
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let path = rest.find('/').map_or("/", |i| &rest[i..]);
    format!("http://{address}{path}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_mappings_and_addresses() {
        assert_eq!(
            slot("127.0.0.1:8001:80").map(|s| s.address).ok().as_deref(),
            Some("127.0.0.1:8001")
        );
        assert_eq!(
            slot("8002:80").map(|s| s.address).ok().as_deref(),
            Some("127.0.0.1:8002")
        );
        assert_eq!(
            slot("0.0.0.0:8003:80/tcp")
                .map(|s| s.address)
                .ok()
                .as_deref(),
            Some("127.0.0.1:8003")
        );
        for bad in ["80", "a:b:c", "127.0.0.1:0:80", "1:2:3:4", "x.y:80:80"] {
            assert!(slot(bad).is_err(), "{bad}");
        }
        assert!(BlueGreen::new(["8001:80", "127.0.0.1:8001:80"], "u").is_err());
        assert_eq!(
            at_address("http://127.0.0.1:8000/health?x=1", "127.0.0.1:8002"),
            "http://127.0.0.1:8002/health?x=1"
        );
        assert_eq!(
            at_address("http://localhost", "127.0.0.1:8002"),
            "http://127.0.0.1:8002/"
        );
    }
}
