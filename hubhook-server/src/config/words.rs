//! serde's and toml's errors in the words `check` uses, and the value types (durations,
//! sizes) that serde reads.

use std::time::Duration;

use serde::Deserialize;

/// The key a table's deserialization failed on, and serde's message. An unknown key has
/// no path yet: serde names it in the message.
pub(super) fn offending_key(e: serde_path_to_error::Error<toml::de::Error>) -> (String, String) {
    let path = e.path().to_string();
    let message = without_values(e.into_inner().message().trim());
    let name = if path == "." {
        message.split('`').nth(1).unwrap_or("").to_owned()
    } else {
        path
    };
    let leaf = name.rsplit('.').next().unwrap_or(&name).to_owned();
    (name, in_words(&leaf, &message))
}

/// The keys whose values are durations, in whatever table they appear.
pub(super) const DURATION_KEYS: &[&str] = &[
    "timeout",
    "header_timeout",
    "shutdown_grace",
    "stop_timeout",
    "health_timeout",
    "step_timeout",
    "retry_backoff",
    "renew_before",
    "check_every",
];

/// serde's wording (`invalid type: integer `10`, expected a string`, `missing field`,
/// `expected i64`) in the words the rest of `check` uses: what the key must be, then what
/// it is, then how to write it when that is plain.
pub(super) fn in_words(key: &str, message: &str) -> String {
    if let Some(field) = message.strip_prefix("missing field ") {
        return format!("missing required key {field}");
    }
    if let Some(rest) = message.strip_prefix("unknown field ") {
        return format!("unknown key {rest}");
    }
    if let Some(rest) = message.strip_prefix("unknown variant ") {
        return unknown_word(key, rest);
    }
    let Some((found, expected)) = message
        .strip_prefix("invalid type: ")
        .and_then(|rest| rest.split_once(", expected "))
    else {
        return message.to_owned();
    };
    if DURATION_KEYS.contains(&key) {
        return type_mismatch_message(key, found, "a duration like \"30s\" or \"10m\"");
    }
    let expected = match expected {
        "i64" | "u64" | "u32" | "u16" | "usize" | "i32" => "a whole number",
        "a boolean" => "true or false",
        "a sequence" => "a list",
        "a map" => "a table",
        other => other,
    };
    type_mismatch_message(key, found, expected)
}

/// serde's `` `shel`, expected one of `log`, `shell` `` (after "unknown variant") as
/// `unknown handler type "shel" (expected one of: log, shell)`, naming what the key holds.
fn unknown_word(key: &str, rest: &str) -> String {
    let noun = match key {
        "type" => "handler type",
        "coalesce" => "coalescing key",
        "format" => "log format",
        "strategy" => "strategy",
        "provider" => "provider",
        _ => "value",
    };
    let (found, expected) = rest.split_once(", expected ").unwrap_or((rest, ""));
    let words = |text: &str| -> Vec<String> {
        text.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect()
    };
    let found = words(found).concat();
    format!(
        "unknown {noun} {found:?} (expected one of: {})",
        words(expected).join(", ")
    )
}

/// `must be EXPECTED, not FOUND`, with a way to write it for a number given as a duration.
pub(super) fn type_mismatch_message(key: &str, found: &str, expected: &str) -> String {
    let found = found.replace('`', "");
    let hint = match found.strip_prefix("integer ") {
        Some(n) if DURATION_KEYS.contains(&key) => format!(": write \"{n}s\" for {n} seconds"),
        _ => String::new(),
    };
    format!("must be {expected}, not {found}{hint}")
}

/// serde's message without the value it quotes (`invalid type: string "…", expected a
/// sequence`): a mistyped `api_keys = "KEY"` or `secret = …` must not echo the secret.
pub(super) fn without_values(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find("string \"") {
        out.push_str(&rest[..at]);
        out.push_str("string");
        let quoted = &rest[at + "string \"".len()..];
        // The value ends at the first quote that is not escaped.
        let mut escaped = false;
        let end = quoted
            .char_indices()
            .find(|&(_, c)| {
                let close = c == '"' && !escaped;
                escaped = c == '\\' && !escaped;
                close
            })
            .map_or(quoted.len(), |(i, _)| i + 1);
        rest = &quoted[end..];
    }
    out.push_str(rest);
    out
}

/// A duration written as words (`"30s"`, `"10m"`, `"2h 30m"`), read by serde. A wrong
/// type names the key's expected form; a bad text says how to write one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct HumanDuration(pub(super) Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        let text = String::deserialize(de)?;
        humantime::parse_duration(&text)
            .map(HumanDuration)
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "{text:?} is not a duration like \"30s\" or \"10m\": {e}"
                ))
            })
    }
}

/// A size in bytes: `1048576`, `"512KiB"`, `"1MiB"`, `"2MB"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ByteSize(pub(super) u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        struct Size;
        impl serde::de::Visitor<'_> for Size {
            type Value = ByteSize;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a positive number of bytes or a size like \"1MiB\"")
            }

            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<ByteSize, E> {
                u64::try_from(n)
                    .ok()
                    .filter(|n| *n > 0)
                    .map(ByteSize)
                    .ok_or_else(|| E::custom(format!("{n} is not a positive number of bytes")))
            }

            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<ByteSize, E> {
                self.visit_i64(i64::try_from(n).unwrap_or(i64::MAX))
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<ByteSize, E> {
                parse_size(text).map(ByteSize).map_err(E::custom)
            }
        }
        de.deserialize_any(Size)
    }
}

/// Parses `"512KiB"`, `"1MiB"`, `"2MB"`, `"65536"` into bytes.
pub(super) fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size like \"1MiB\" or \"65536\""))?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        _ => {
            return Err(format!(
                "{text:?} has an unknown unit (use B, KiB, MiB, KB or MB)"
            ))
        }
    };
    match number.checked_mul(factor) {
        Some(0) | None => Err(format!("{text:?} must be a positive size below 16 EiB")),
        Some(bytes) => Ok(bytes),
    }
}
