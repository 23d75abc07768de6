//! Distribution's notifications (also GitLab's and Harbor's): an envelope of events, of
//! which only manifest pushes with a tag act; everything else is answered and ignored.

use serde_json::Value;

use super::{parse, text, Decoded, Push, Refusal};

/// Distribution's notification envelope: `{"events": [...]}`.
///
/// With the hook's `registry` host, an event for another host is skipped, and every
/// message names the configured host: the registry a message names comes from
/// configuration, never from a payload.
pub(super) fn decode(body: &[u8], registry: Option<&str>) -> Result<Decoded, Refusal> {
    let root = parse(body)?;
    let Some(events) = root.get("events").and_then(Value::as_array) else {
        return Err(Refusal::BadRequest(
            "not a registry notification: no \"events\" list".into(),
        ));
    };
    let mut messages = Vec::new();
    let mut skipped = Vec::new();
    for event in events {
        let action = event.get("action").and_then(Value::as_str).unwrap_or("");
        let media = text(event, "/target/mediaType").unwrap_or("");
        let tag = text(event, "/target/tag");
        let is_manifest = media.contains("manifest") || media.contains("image.index");
        match (action, is_manifest, tag) {
            ("push", true, Some(tag)) => {
                let Some(repository) = text(event, "/target/repository") else {
                    return Err(Refusal::BadRequest(
                        "a push event has no target.repository".into(),
                    ));
                };
                // Each message keeps its own event as raw JSON, not the whole envelope:
                // an envelope of many events must not cost events × envelope in memory.
                let msg = Push {
                    source: "registry",
                    registry: text(event, "/request/host"),
                    repository,
                    tag,
                    digest: text(event, "/target/digest"),
                    pusher: text(event, "/actor/name"),
                    pushed_at: text(event, "/timestamp").and_then(rfc3339_seconds),
                }
                .message(event.to_string().as_bytes())?;
                messages.push((msg, text(event, "/id").map(str::to_owned)));
            }
            ("push", true, None) => skipped.push("manifest push without a tag".to_owned()),
            ("push", false, _) => skipped.push("blob push".to_owned()),
            (other, _, _) => skipped.push(format!(
                "{} event",
                if other.is_empty() { "unnamed" } else { other }
            )),
        }
    }
    let Some(host) = registry else {
        // No configured host: the message names none. The event's `request.host` is the
        // pusher's Host header, which the sender chooses.
        for (msg, _) in &mut messages {
            msg.registry = None;
        }
        return finish(messages, skipped);
    };
    {
        let before = messages.len();
        messages.retain_mut(|(msg, _)| match msg.registry.take() {
            Some(named) if named.eq_ignore_ascii_case(host) => {
                msg.registry = Some(host.to_owned());
                true
            }
            _ => false,
        });
        if messages.is_empty() && before > 0 {
            return Ok(Decoded::Ignored(
                "every event is for another registry host".to_owned(),
            ));
        }
    }
    finish(messages, skipped)
}

/// The messages, or why there is nothing to deploy.
fn finish(
    messages: Vec<(crate::HubMessage, Option<String>)>,
    mut skipped: Vec<String>,
) -> Result<Decoded, Refusal> {
    if messages.is_empty() {
        skipped.dedup();
        let why = if skipped.is_empty() {
            "no events".to_owned()
        } else {
            skipped.join(", ")
        };
        return Ok(Decoded::Ignored(format!("nothing to deploy: {why}")));
    }
    Ok(Decoded::Messages(messages))
}

/// Seconds since the Unix epoch of an RFC 3339 time such as
/// `2016-03-09T14:44:26.402973972-08:00` (the form registries and GitHub send); `None`
/// for anything else.
pub(super) fn rfc3339_seconds(text: &str) -> Option<i64> {
    fn number(s: &str) -> Option<i64> {
        s.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| s.parse().ok())
            .flatten()
    }
    let b = text.as_bytes();
    // ASCII only, so that slicing by byte below never splits a character.
    if !text.is_ascii()
        || b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (year, month, day) = (
        number(&text[0..4])?,
        number(&text[5..7])?,
        number(&text[8..10])?,
    );
    let (hour, minute, second) = (
        number(&text[11..13])?,
        number(&text[14..16])?,
        number(&text[17..19])?,
    );
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    let days_in_month = match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    if day > days_in_month || second > 60 {
        return None;
    }
    // A leap second counts as the last second of its minute.
    let second = second.min(59);
    let mut rest = &text[19..];
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        rest = &fraction[digits..];
    }
    let offset = match rest.as_bytes() {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let (h, m) = (number(&rest[1..3])?, number(&rest[4..6])?);
            if h > 23 || m > 59 {
                return None;
            }
            let minutes = h * 60 + m;
            if *sign == b'-' {
                -minutes
            } else {
                minutes
            }
        }
        _ => return None,
    };
    // Days from 1970-01-01 to the civil date (proleptic Gregorian calendar).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hour * 3600 + minute * 60 + second - offset * 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_times_as_registries_and_github_send_them() {
        // `date -d 2016-03-09T14:44:26-08:00 +%s`
        assert_eq!(
            rfc3339_seconds("2016-03-09T14:44:26.402973972-08:00"),
            Some(1_457_563_466)
        );
        assert_eq!(rfc3339_seconds("2021-03-03T13:36:35Z"), Some(1_614_778_595));
        assert_eq!(rfc3339_seconds("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            rfc3339_seconds("2000-02-29t12:00:00+05:30"),
            Some(951_805_800)
        );
        assert_eq!(rfc3339_seconds("1969-12-31T23:59:59Z"), Some(-1));
        assert_eq!(rfc3339_seconds("2000-02-29T00:00:00Z"), Some(951_782_400));
        assert_eq!(rfc3339_seconds("2016-12-31T23:59:60Z"), Some(1_483_228_799));
        for bad in [
            "",
            "2021-03-03",
            "2021-03-03T13:36:35",
            "2021-13-03T13:36:35Z",
            "2021-03-03T24:00:00Z",
            "2021-03-03T13:36:35.Z",
            "2021-03-03T13:36:35+0100",
            "2021-03-03T13:36:35Z junk",
            "２０21-03-03T13:36:35Z",
            "+021-03-03T13:36:35Z",
            "2021-02-29T00:00:00Z",
            "2021-04-31T00:00:00Z",
            "2021-03-03T13:36:61Z",
        ] {
            assert_eq!(rfc3339_seconds(bad), None, "{bad:?}");
        }
    }
}
