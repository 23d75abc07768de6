//! The pages, as maud templates: every value goes through maud's escaping, and nothing
//! from the journal is ever written as markup.

use hubhook_core::journal::{Attempt, Summary};
use hubhook_core::{DeliveryStatus, RunStatus};
use maud::{html, Markup, DOCTYPE};

use crate::deliveries::when;

/// Where the list's filters stand.
#[derive(Debug, Default)]
pub(super) struct ListQuery {
    pub(super) status: Option<DeliveryStatus>,
    pub(super) repo: Option<String>,
    pub(super) limit: u64,
}

impl ListQuery {
    /// The most the list shows at once.
    pub(super) const MAX_LIMIT: u64 = 1000;

    /// The address of the same list with 100 more rows, when this one (`shown` rows) is
    /// full and may have more to show.
    fn more(&self, shown: usize) -> Option<String> {
        if (shown as u64) < self.limit || self.limit >= Self::MAX_LIMIT {
            return None;
        }
        let mut query = vec![format!("limit={}", (self.limit + 100).min(Self::MAX_LIMIT))];
        if let Some(status) = self.status {
            query.push(format!("status={}", status.as_str()));
        }
        if let Some(repo) = &self.repo {
            query.push(format!("repo={}", percent_encoded(repo)));
        }
        Some(format!("/?{}", query.join("&")))
    }
}

/// `text` for a query string: every byte but the unreserved ones as `%XX`.
fn percent_encoded(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A delivery of the list, with each handler's latest attempt.
pub(super) struct Row {
    pub(super) summary: Summary,
    pub(super) attempts: Vec<Attempt>,
}

fn layout(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · hubhook" }
                link rel="stylesheet" href="/assets/ui.css";
                script src="/assets/ui.js" defer {}
            }
            body { (body) }
        }
    }
}

fn header(csrf: &str) -> Markup {
    html! {
        header {
            a.brand href="/" { "hubhook" }
            span.muted { "deliveries" }
            form.logout method="post" action="/logout" {
                input type="hidden" name="csrf" value=(csrf);
                button type="submit" { "Log out" }
            }
        }
    }
}

/// The login form, with what went wrong last time.
pub(super) fn login(problem: Option<&str>) -> Markup {
    layout(
        "Log in",
        html! {
            main.login {
                h1 { "hubhook" }
                form method="post" action="/login" {
                    label for="password" { "Password or API key" }
                    input #password type="password" name="password" autocomplete="current-password" autofocus required;
                    @if let Some(problem) = problem {
                        p.problem role="alert" { (problem) }
                    }
                    button type="submit" { "Log in" }
                }
            }
        },
    )
}

/// The outcome word and badge class of a handler's latest attempt.
fn badge(attempt: Option<&Attempt>) -> (&'static str, &'static str) {
    match attempt {
        None => ("pending", "pending"),
        Some(a) if a.rolled_back() => ("rolled back", "rolled-back"),
        Some(a) if !a.final_ && a.status != RunStatus::Ok => ("retrying", "pending"),
        Some(a) => match a.status {
            RunStatus::Ok => ("ok", "ok"),
            RunStatus::Failed => ("failed", "failed"),
            RunStatus::Panic => ("panic", "failed"),
            RunStatus::Timeout => ("timeout", "timeout"),
            RunStatus::Rejected => ("rejected", "rejected"),
            RunStatus::Cancelled => ("cancelled", "pending"),
            RunStatus::Superseded => ("superseded", "superseded"),
            _ => (a.status.as_str(), "rejected"),
        },
    }
}

fn status_class(status: DeliveryStatus) -> &'static str {
    match status {
        DeliveryStatus::Ok => "ok",
        DeliveryStatus::Failed => "failed",
        DeliveryStatus::Pending => "pending",
        DeliveryStatus::Superseded => "superseded",
        DeliveryStatus::Unmatched => "rejected",
        _ => "pending",
    }
}

/// `sha256:0123456789ab` from a full digest.
fn short_digest(digest: &str) -> &str {
    digest.get(..19).unwrap_or(digest)
}

/// `1.234 s`, or `…` while it runs.
fn took(from: i64, to: Option<i64>) -> String {
    match to {
        Some(to) => format!("{:.3} s", (to - from).max(0) as f64 / 1000.0),
        None => "…".to_owned(),
    }
}

/// `/`: the filters, the chart and the deliveries, newest first.
pub(super) fn list(csrf: &str, query: &ListQuery, rows: &[Row], chart: Markup) -> Markup {
    let status = query.status.map(DeliveryStatus::as_str);
    layout(
        "Deliveries",
        html! {
            (header(csrf))
            main {
                form.filters method="get" action="/" {
                    label { "Status "
                        select name="status" {
                            option value="" selected[status.is_none()] { "any" }
                            @for s in DeliveryStatus::ALL {
                                option value=(s.as_str()) selected[status == Some(s.as_str())] { (s.as_str()) }
                            }
                        }
                    }
                    label { "Repository "
                        input type="text" name="repo" value=(query.repo.as_deref().unwrap_or("")) placeholder="acme/site";
                    }
                    button type="submit" { "Filter" }
                    @if query.status.is_some() || query.repo.is_some() {
                        a href="/" { "clear" }
                    }
                }
                section #live data-refresh="5" {
                    figure { (chart) figcaption {
                        span.key.ok { "ok" } span.key.failed { "failed" } span.key.other { "other" }
                        " per day; the line is the median time from push to deploy" } }
                    p.muted {
                        (rows.len()) " newest deliveries"
                        @if let Some(more) = query.more(rows.len()) {
                            " · " a href=(more) { "show more" }
                        }
                    }
                    table.deliveries {
                        thead { tr { th { "Received" } th { "Source" } th { "Image" } th { "Digest" } th { "Handlers" } th { "Took" } } }
                        tbody {
                            @for row in rows {
                                @let d = &row.summary;
                                tr class=(status_class(d.status)) {
                                    td { a href=(format!("/deliveries/{}", d.id)) { (when(d.received_ms)) } }
                                    td { (d.source) }
                                    td.image { a href=(format!("/deliveries/{}", d.id)) { (d.repo) ":" (d.tag) } }
                                    td.digest { code { (d.digest.as_deref().map_or("-", short_digest)) } }
                                    td {
                                        @if d.handlers.is_empty() {
                                            span.badge.rejected { "no handler" }
                                        }
                                        @for handler in &d.handlers {
                                            @let (word, class) = badge(row.attempts.iter().find(|a| &a.handler == handler));
                                            span class=(format!("badge {class}")) title=(handler) { (handler) ": " (word) }
                                        }
                                    }
                                    td.took { (took(d.received_ms, d.finished_ms)) }
                                }
                            }
                        }
                    }
                    @if rows.is_empty() { p.muted { "No deliveries yet." } }
                }
            }
        },
    )
}

/// `/deliveries/ID`: the message, every attempt and the notifications, and Replay.
pub(super) fn detail(
    csrf: &str,
    d: &Summary,
    message: &serde_json::Value,
    attempts: &[Attempt],
) -> Markup {
    let field = |pointer: &str| match message.pointer(pointer) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => "-".to_owned(),
    };
    let (notes, runs): (Vec<&Attempt>, Vec<&Attempt>) = attempts
        .iter()
        .partition(|a| a.handler.starts_with("notify:") || a.handler == "callback");
    layout(
        &format!("{}:{}", d.repo, d.tag),
        html! {
            (header(csrf))
            main {
                p { a href="/" { "← deliveries" } }
                h1 { (d.repo) ":" (d.tag) " " span class=(format!("badge {}", status_class(d.status))) { (d.status.as_str()) } }
                dl.facts {
                    dt { "Delivery" } dd { code { (d.id) } }
                    dt { "Received" } dd { (when(d.received_ms)) }
                    dt { "Settled" } dd { (d.finished_ms.map_or("not yet".to_owned(), when)) " (" (took(d.received_ms, d.finished_ms)) ")" }
                    dt { "Source" } dd { (d.source) }
                    dt { "Pusher" } dd { (field("/push_data/pusher")) }
                    dt { "Digest" } dd { code { (field("/digest")) } }
                    dt { "Handlers" } dd { (d.handlers.join(", ")) }
                }
                form.replay method="post" action=(format!("/deliveries/{}/replay", d.id)) {
                    input type="hidden" name="csrf" value=(csrf);
                    button type="submit" { "Replay" }
                    span.muted { " runs this message again, as a new delivery, for the handlers that match it now" }
                }
                h2 { "Attempts" }
                (attempt_table(&runs))
                @if !notes.is_empty() {
                    h2 { "Notifications" }
                    (attempt_table(&notes))
                }
            }
        },
    )
}

fn attempt_table(attempts: &[&Attempt]) -> Markup {
    html! {
        @if attempts.is_empty() {
            p.muted { "None yet." }
        } @else {
            table.attempts {
                thead { tr { th { "Handler" } th { "#" } th { "Started" } th { "Took" } th { "Outcome" } th { "Output" } } }
                tbody {
                    @for a in attempts {
                        @let (word, class) = badge(Some(a));
                        tr {
                            td { (a.handler) }
                            td { (a.attempt) }
                            td { (when(a.started_ms)) }
                            td.took { (took(a.started_ms, Some(a.ended_ms))) }
                            td { span class=(format!("badge {class}")) { (word) } }
                            td { pre.output { (a.detail) } }
                        }
                    }
                }
            }
        }
    }
}

/// A page that says what went wrong.
pub(super) fn problem(title: &str, text: &str) -> Markup {
    layout(
        title,
        html! {
            main {
                h1 { (title) }
                p { (text) }
                p { a href="/" { "← deliveries" } }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_list_links_to_more_with_its_filters() {
        let mut query = ListQuery {
            status: Some(DeliveryStatus::Failed),
            repo: Some("registry.example:5000/acme/site&x=1".to_owned()),
            limit: 100,
        };
        assert_eq!(
            query.more(100).as_deref(),
            Some("/?limit=200&status=failed&repo=registry.example%3A5000%2Facme%2Fsite%26x%3D1")
        );
        assert_eq!(query.more(99), None, "not full: nothing more");
        query.limit = 1000;
        assert_eq!(query.more(1000), None, "the most it shows");
    }
}
