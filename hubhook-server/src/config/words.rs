//! serde's and toml's errors in the words `check` uses, and sizes.

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

/// Parses `1048576`, `"512KiB"`, `"1MiB"`, `"2MB"` into bytes.
pub(super) fn parse_size(value: &toml::Value) -> Result<u64, String> {
    let text = match value {
        toml::Value::Integer(n) if *n > 0 => return Ok(*n as u64),
        toml::Value::String(s) => s.trim(),
        _ => return Err("must be a positive number of bytes or a size like \"1MiB\"".into()),
    };
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
