//! The list page's chart, drawn on the server as SVG: deliveries per day by outcome, and
//! the median time from a push's arrival to its deploy, over the journal's window.

use hubhook_core::journal::Timing;
use hubhook_core::DeliveryStatus;
use maud::{html, Markup};

const DAY_MS: i64 = 86_400_000;
const WIDTH: f64 = 720.0;
const BARS_HEIGHT: f64 = 120.0;
const TIMES_HEIGHT: f64 = 70.0;
const LEFT: f64 = 44.0;
const TOP: f64 = 14.0;
const GAP: f64 = 28.0;

/// One UTC day of the window.
#[derive(Debug, Default, Clone, PartialEq)]
pub(super) struct Day {
    pub(super) ok: u32,
    pub(super) failed: u32,
    /// Superseded, pending, or for no handler.
    pub(super) other: u32,
    /// The median, in milliseconds, from arrival to settling of the day's `ok` ones.
    pub(super) median_ms: Option<i64>,
}

/// `days` UTC days ending with today's (the day of `now_ms`), oldest first.
pub(super) fn days(timings: &[Timing], now_ms: i64, days: usize) -> Vec<Day> {
    let today = now_ms.div_euclid(DAY_MS);
    let first = today - days as i64 + 1;
    let mut out = vec![Day::default(); days];
    let mut times: Vec<Vec<i64>> = vec![Vec::new(); days];
    for t in timings {
        let Ok(i) = usize::try_from(t.received_ms.div_euclid(DAY_MS) - first) else {
            continue;
        };
        let Some(day) = out.get_mut(i) else { continue };
        match t.status {
            DeliveryStatus::Ok => {
                day.ok += 1;
                if let Some(end) = t.finished_ms {
                    times[i].push((end - t.received_ms).max(0));
                }
            }
            DeliveryStatus::Failed => day.failed += 1,
            _ => day.other += 1,
        }
    }
    for (day, mut list) in out.iter_mut().zip(times) {
        if !list.is_empty() {
            list.sort_unstable();
            day.median_ms = Some(list[list.len() / 2]);
        }
    }
    out
}

/// The chart of `days` (oldest first, the last ending at `now_ms`'s day).
pub(super) fn render(days: &[Day], now_ms: i64) -> Markup {
    let n = days.len().max(1);
    let slot = (WIDTH - LEFT - 8.0) / n as f64;
    let bar = (slot * 0.75).max(1.0);
    let max_count = days
        .iter()
        .map(|d| d.ok + d.failed + d.other)
        .max()
        .unwrap_or(0)
        .max(1);
    let max_ms = days
        .iter()
        .filter_map(|d| d.median_ms)
        .max()
        .unwrap_or(0)
        .max(1);
    let height = TOP + BARS_HEIGHT + GAP + TIMES_HEIGHT + 22.0;
    let bars_bottom = TOP + BARS_HEIGHT;
    let times_top = bars_bottom + GAP;
    let times_bottom = times_top + TIMES_HEIGHT;
    let scale = |count: u32| f64::from(count) / f64::from(max_count) * BARS_HEIGHT;
    let x = |i: usize| LEFT + i as f64 * slot + (slot - bar) / 2.0;
    let first_day = now_ms.div_euclid(DAY_MS) - n as i64 + 1;
    let points: Vec<String> = days
        .iter()
        .enumerate()
        .filter_map(|(i, d)| {
            d.median_ms.map(|ms| {
                let y = times_bottom - ms as f64 / max_ms as f64 * TIMES_HEIGHT;
                format!("{:.1},{:.1}", x(i) + bar / 2.0, y)
            })
        })
        .collect();
    html! {
        svg class="chart" xmlns="http://www.w3.org/2000/svg" role="img"
            viewBox=(format!("0 0 {WIDTH} {height}")) width=(WIDTH) height=(height)
            aria-label="Deliveries per day by outcome, and the median time from push to deploy" {
            title { "Deliveries per day by outcome, and the median time from push to deploy" }
            text x="0" y=(TOP - 2.0) class="axis" { (max_count) }
            text x="0" y=(bars_bottom) class="axis" { "0" }
            line x1=(LEFT) x2=(WIDTH) y1=(bars_bottom) y2=(bars_bottom) class="base" {}
            @for (i, d) in days.iter().enumerate() {
                @let (ok, failed, other) = (scale(d.ok), scale(d.failed), scale(d.other));
                @if d.ok + d.failed + d.other > 0 {
                    g {
                        title { (day_label(first_day + i as i64)) ": " (d.ok) " ok, " (d.failed) " failed, " (d.other) " other" }
                        rect class="ok" x=(fmt(x(i))) width=(fmt(bar)) y=(fmt(bars_bottom - ok)) height=(fmt(ok)) {}
                        rect class="failed" x=(fmt(x(i))) width=(fmt(bar)) y=(fmt(bars_bottom - ok - failed)) height=(fmt(failed)) {}
                        rect class="other" x=(fmt(x(i))) width=(fmt(bar)) y=(fmt(bars_bottom - ok - failed - other)) height=(fmt(other)) {}
                    }
                }
            }
            text x="0" y=(times_top + 8.0) class="axis" { (seconds(max_ms)) }
            text x="0" y=(times_bottom) class="axis" { "0" }
            line x1=(LEFT) x2=(WIDTH) y1=(times_bottom) y2=(times_bottom) class="base" {}
            @if !points.is_empty() {
                polyline class="times" points=(points.join(" ")) {}
            }
            @for (i, d) in days.iter().enumerate() {
                @if let Some(ms) = d.median_ms {
                    circle class="time" cx=(fmt(x(i) + bar / 2.0)) r="2.5"
                        cy=(fmt(times_bottom - ms as f64 / max_ms as f64 * TIMES_HEIGHT)) {
                        title { (day_label(first_day + i as i64)) ": median " (seconds(ms)) " from push to deploy" }
                    }
                }
            }
            text x=(LEFT) y=(height - 4.0) class="axis" { (day_label(first_day)) }
            text x=(WIDTH) y=(height - 4.0) class="axis end" { (day_label(first_day + n as i64 - 1)) }
        }
    }
}

fn fmt(v: f64) -> String {
    format!("{v:.1}")
}

/// `12.3 s`, or `40 ms` under a second.
fn seconds(ms: i64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else {
        format!("{:.1} s", ms as f64 / 1000.0)
    }
}

/// The date of a day number since the epoch, as `2026-11-30`.
fn day_label(day: i64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis((day.max(0) * DAY_MS) as u64);
    humantime::format_rfc3339_seconds(at).to_string()[..10].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing(received_ms: i64, took: Option<i64>, status: DeliveryStatus) -> Timing {
        Timing::new(received_ms, took.map(|d| received_ms + d), status)
    }

    #[test]
    fn days_count_by_outcome_and_take_the_median_of_deploys() {
        let now = 20 * DAY_MS + 3_600_000;
        let timings = [
            timing(20 * DAY_MS + 10, Some(1000), DeliveryStatus::Ok),
            timing(20 * DAY_MS + 20, Some(3000), DeliveryStatus::Ok),
            timing(20 * DAY_MS + 30, Some(2000), DeliveryStatus::Ok),
            timing(20 * DAY_MS + 40, Some(9000), DeliveryStatus::Failed),
            timing(19 * DAY_MS, None, DeliveryStatus::Superseded),
            // Outside the window: left out.
            timing(10 * DAY_MS, Some(1), DeliveryStatus::Ok),
        ];
        let days = days(&timings, now, 2);
        assert_eq!(
            days,
            vec![
                Day {
                    other: 1,
                    ..Day::default()
                },
                Day {
                    ok: 3,
                    failed: 1,
                    other: 0,
                    median_ms: Some(2000),
                },
            ]
        );
        let svg = render(&days, now).into_string();
        assert_eq!(svg.matches("<rect class=\"ok\"").count(), 2);
        assert!(svg.contains("1970-01-21: 3 ok, 1 failed, 0 other"), "{svg}");
        assert!(svg.contains("median 2.0 s"), "{svg}");
    }
}
