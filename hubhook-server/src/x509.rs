//! Just enough DER to read a certificate's validity dates, without an X.509 crate.

/// The notBefore and notAfter of a DER certificate, in seconds since the Unix epoch.
pub(crate) fn validity(der: &[u8]) -> Option<(i64, i64)> {
    let (certificate, _) = der_read(der, 0x30)?;
    let (tbs, _) = der_read(certificate, 0x30)?;
    let mut rest = tbs;
    if rest.first() == Some(&0xa0) {
        rest = der_read(rest, 0xa0)?.1; // version
    }
    rest = der_read(rest, 0x02)?.1; // serialNumber
    rest = der_read(rest, 0x30)?.1; // signature
    rest = der_read(rest, 0x30)?.1; // issuer
    let (validity, _) = der_read(rest, 0x30)?;
    let &tag = validity.first()?;
    let (not_before, rest) = der_read(validity, tag)?;
    let not_before = der_time(tag, not_before)?;
    let &tag = rest.first()?;
    let (not_after, _) = der_read(rest, tag)?;
    Some((not_before, der_time(tag, not_after)?))
}

/// One DER element with tag `tag` at the start of `input`: its contents and what follows.
fn der_read(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&first, rest) = input.split_first()?;
    if first != tag {
        return None;
    }
    let (&len, mut rest) = rest.split_first()?;
    let len = if len < 0x80 {
        usize::from(len)
    } else {
        let n = usize::from(len & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let (bytes, after) = rest.split_at(n);
        rest = after;
        bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b))
    };
    (rest.len() >= len).then(|| rest.split_at(len))
}

/// A UTCTime (0x17, YYMMDDHHMMSSZ) or GeneralizedTime (0x18, YYYYMMDDHHMMSSZ) in seconds
/// since the Unix epoch.
fn der_time(tag: u8, text: &[u8]) -> Option<i64> {
    let digits = text.strip_suffix(b"Z")?;
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let num = |d: &[u8]| {
        d.iter()
            .fold(0i64, |acc, &b| acc * 10 + i64::from(b - b'0'))
    };
    let (year, rest) = match (tag, digits.len()) {
        (0x17, 12) => {
            let yy = num(&digits[..2]);
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, &digits[2..])
        }
        (0x18, 14) => (num(&digits[..4]), &digits[4..]),
        _ => return None,
    };
    let (month, day) = (num(&rest[0..2]), num(&rest[2..4]));
    let (hour, minute, second) = (num(&rest[4..6]), num(&rest[6..8]), num(&rest[8..10]));
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hour * 3600 + minute * 60 + second)
}
