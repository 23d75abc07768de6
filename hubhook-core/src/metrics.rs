//! Counters behind `GET /metrics`, written in the Prometheus text format.
//!
//! Everything is a relaxed atomic in a table fixed when the service is built (handler
//! names are known then), so recording costs no lock and no allocation.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::observe::{self, Observer, RunStatus};

/// The statuses the service answers with; anything else is counted as "other".
const STATUSES: [u16; 11] = [200, 202, 400, 401, 404, 405, 413, 415, 500, 503, 408];
/// Upper bounds, in seconds, of the handler duration histogram's buckets.
const BUCKETS: [f64; 10] = [0.005, 0.025, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0];

#[derive(Debug, Default)]
pub(crate) struct Metrics {
    requests: [AtomicU64; STATUSES.len() + 1],
    accepted: AtomicU64,
    handlers: BTreeMap<String, HandlerMetrics>,
}

#[derive(Debug, Default)]
struct HandlerMetrics {
    outcomes: [AtomicU64; RunStatus::ALL.len()],
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Metrics {
    pub(crate) fn new<'a>(handler_names: impl IntoIterator<Item = &'a str>) -> Self {
        Self {
            handlers: handler_names
                .into_iter()
                .map(|n| (n.to_owned(), HandlerMetrics::default()))
                .collect(),
            ..Self::default()
        }
    }

    pub(crate) fn record_status(&self, status: u16) {
        let slot = STATUSES
            .iter()
            .position(|s| *s == status)
            .unwrap_or(STATUSES.len());
        self.requests[slot].fetch_add(1, Ordering::Relaxed);
    }

    fn record_run(&self, handler: &str, status: RunStatus, elapsed: Duration) {
        let Some(h) = self.handlers.get(handler) else {
            return;
        };
        if let Some(slot) = RunStatus::ALL.iter().position(|s| *s == status) {
            h.outcomes[slot].fetch_add(1, Ordering::Relaxed);
        }
        let secs = elapsed.as_secs_f64();
        for (bound, bucket) in BUCKETS.iter().zip(&h.buckets) {
            if secs <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        h.count.fetch_add(1, Ordering::Relaxed);
        h.sum_micros
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }

    /// The Prometheus text exposition of every counter; `running` is the number of handler
    /// runs in progress.
    pub(crate) fn render(&self, running: usize, queues: &[(&str, usize, usize)]) -> String {
        let mut out = String::with_capacity(2048);
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        out.push_str("# HELP hubhook_requests_total HTTP requests answered, by status code.\n");
        out.push_str("# TYPE hubhook_requests_total counter\n");
        for (status, n) in STATUSES.iter().zip(&self.requests) {
            let _ = writeln!(
                out,
                "hubhook_requests_total{{status=\"{status}\"}} {}",
                load(n)
            );
        }
        let _ = writeln!(
            out,
            "hubhook_requests_total{{status=\"other\"}} {}",
            load(&self.requests[STATUSES.len()])
        );
        out.push_str(
            "# HELP hubhook_deliveries_accepted_total Webhooks accepted (answered 202).\n",
        );
        out.push_str("# TYPE hubhook_deliveries_accepted_total counter\n");
        let _ = writeln!(
            out,
            "hubhook_deliveries_accepted_total {}",
            load(&self.accepted)
        );
        out.push_str(
            "# HELP hubhook_handler_runs_total Finished handler runs, by handler and outcome.\n",
        );
        out.push_str("# TYPE hubhook_handler_runs_total counter\n");
        for (name, h) in &self.handlers {
            let name = escape(name);
            for (outcome, n) in RunStatus::ALL.iter().zip(&h.outcomes) {
                let _ = writeln!(
                    out,
                    "hubhook_handler_runs_total{{handler=\"{name}\",outcome=\"{outcome}\"}} {}",
                    load(n)
                );
            }
        }
        out.push_str("# HELP hubhook_handler_duration_seconds How long handler runs took.\n");
        out.push_str("# TYPE hubhook_handler_duration_seconds histogram\n");
        for (name, h) in &self.handlers {
            write_histogram(
                &mut out,
                "hubhook_handler_duration_seconds",
                &format!("handler=\"{}\",", escape(name)),
                BUCKETS
                    .iter()
                    .zip(&h.buckets)
                    .map(|(b, n)| (b.to_string(), load(n))),
                load(&h.count),
                load(&h.sum_micros) as f64 / 1e6,
            );
        }
        out.push_str(
            "# HELP hubhook_handler_runs_in_progress Handler runs started and not finished.\n",
        );
        out.push_str("# TYPE hubhook_handler_runs_in_progress gauge\n");
        let _ = writeln!(out, "hubhook_handler_runs_in_progress {running}");
        let gauges = [
            (
                "hubhook_queue_depth",
                "Deliveries waiting in a handler's queue (not running).",
                false,
            ),
            (
                "hubhook_queue_running",
                "Runs of a handler in progress.",
                true,
            ),
        ];
        for (metric, help, running) in gauges {
            let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} gauge");
            for queue in queues {
                let _ = writeln!(
                    out,
                    "{metric}{{handler=\"{}\"}} {}",
                    escape(queue.0),
                    if running { queue.2 } else { queue.1 }
                );
            }
        }
        out
    }
}

/// Counts what dispatch reports: deliveries accepted, attempts by handler and status.
impl Observer for Metrics {
    fn accepted(&self, _: &observe::Accepted<'_>) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
    }

    fn attempt_finished(&self, e: &observe::AttemptFinished<'_>) {
        self.record_run(e.handler, e.status, e.elapsed);
    }
}

/// Writes one histogram's series (after its HELP and TYPE lines): a cumulative bucket per
/// `(upper bound, count)`, `+Inf`, `_sum` and `_count`. `labels` is empty or ends in a
/// comma (`handler="log",`).
pub(crate) fn write_histogram(
    out: &mut String,
    name: &str,
    labels: &str,
    buckets: impl Iterator<Item = (String, u64)>,
    count: u64,
    sum: f64,
) {
    for (bound, n) in buckets {
        let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{bound}\"}} {n}");
    }
    let _ = writeln!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {count}");
    let labels = labels.trim_end_matches(',');
    let braces = if labels.is_empty() {
        String::new()
    } else {
        format!("{{{labels}}}")
    };
    let _ = writeln!(out, "{name}_sum{braces} {sum}");
    let _ = writeln!(out, "{name}_count{braces} {count}");
}

/// Escapes a label value as the text format requires.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histogram() {
        let m = Metrics::new(["log", "we\"ird"]);
        m.record_status(202);
        m.record_status(202);
        m.record_status(418);
        m.record_run("log", RunStatus::Ok, Duration::from_millis(30));
        m.record_run("log", RunStatus::Panic, Duration::from_millis(1));
        let text = m.render(3, &[("log", 2, 1)]);
        assert!(text.contains("hubhook_requests_total{status=\"202\"} 2\n"));
        assert!(text.contains("hubhook_requests_total{status=\"other\"} 1\n"));
        assert!(text.contains("hubhook_handler_runs_total{handler=\"log\",outcome=\"ok\"} 1\n"));
        assert!(text.contains("hubhook_handler_runs_total{handler=\"log\",outcome=\"panic\"} 1\n"));
        assert!(text
            .contains("hubhook_handler_duration_seconds_bucket{handler=\"log\",le=\"0.025\"} 1\n"));
        assert!(text
            .contains("hubhook_handler_duration_seconds_bucket{handler=\"log\",le=\"0.1\"} 2\n"));
        assert!(text.contains("hubhook_handler_duration_seconds_count{handler=\"log\"} 2\n"));
        assert!(text.contains("handler=\"we\\\"ird\""));
        assert!(text.contains("hubhook_handler_runs_in_progress 3\n"));
        assert!(text.contains("hubhook_queue_depth{handler=\"log\"} 2\n"));
        assert!(text.contains("hubhook_queue_running{handler=\"log\"} 1\n"));
    }
}
