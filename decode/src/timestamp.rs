//! RFC 3339 timestamps, without a date library: `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`.

use sluice_config::TimeUnit;

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn digits(s: &[u8], n: usize) -> Option<u32> {
    if s.len() < n || !s[..n].iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(s[..n].iter().fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0')))
}

/// Parses an RFC 3339 timestamp into a count of `unit` since the epoch.
/// Returns `None` for anything malformed or out of range.
pub fn parse_rfc3339(text: &str, unit: TimeUnit) -> Option<i64> {
    let s = text.as_bytes();
    if s.len() < 20 {
        return None;
    }
    let year = i64::from(digits(s, 4)?);
    let (month, day) = (digits(&s[5..], 2)?, digits(&s[8..], 2)?);
    let (hour, minute, second) = (digits(&s[11..], 2)?, digits(&s[14..], 2)?, digits(&s[17..], 2)?);
    if s[4] != b'-' || s[7] != b'-' || !matches!(s[10], b'T' | b't' | b' ') || s[13] != b':' || s[16] != b':' {
        return None;
    }
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        _ => return None,
    };
    if day == 0 || day > days_in_month || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut rest = &s[19..];
    let mut nanos: i64 = 0;
    if let Some(frac) = rest.strip_prefix(b".") {
        let n = frac.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return None;
        }
        for (i, d) in frac[..n].iter().enumerate().take(9) {
            nanos += i64::from(d - b'0') * 10i64.pow(8 - i as u32);
        }
        rest = &frac[n..];
    }
    let offset_secs: i64 = match rest {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let h = i64::from(digits(&[*h1, *h2], 2)?);
            let m = i64::from(digits(&[*m1, *m2], 2)?);
            if h > 23 || m > 59 {
                return None;
            }
            let secs = h * 3600 + m * 60;
            if *sign == b'+' { secs } else { -secs }
        }
        _ => return None,
    };
    let secs = days_from_civil(year, month, day) * 86_400
        + i64::from(hour) * 3600
        + i64::from(minute) * 60
        + i64::from(second.min(59))
        - offset_secs;
    match unit {
        TimeUnit::Seconds => Some(secs),
        TimeUnit::Milliseconds => secs.checked_mul(1_000)?.checked_add(nanos / 1_000_000),
        TimeUnit::Microseconds => secs.checked_mul(1_000_000)?.checked_add(nanos / 1_000),
        TimeUnit::Nanoseconds => secs.checked_mul(1_000_000_000)?.checked_add(nanos),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_valid_timestamps() {
        let ms = |t| parse_rfc3339(t, TimeUnit::Milliseconds);
        assert_eq!(ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(ms("2026-11-25T10:07:59.999Z"), Some(1_795_601_279_999));
        assert_eq!(ms("2026-11-25T12:07:59.999+02:00"), Some(1_795_601_279_999));
        assert_eq!(ms("2000-02-29T00:00:00Z"), Some(951_782_400_000));
        assert_eq!(ms("1969-12-31T23:59:59Z"), Some(-1_000));
        assert_eq!(
            parse_rfc3339("2026-11-25T10:07:59.123456789Z", TimeUnit::Nanoseconds),
            Some(1_795_601_279_123_456_789)
        );
        assert_eq!(parse_rfc3339("2026-11-25T10:07:59Z", TimeUnit::Seconds), Some(1_795_601_279));
    }

    #[test]
    fn refuses_malformed_timestamps() {
        for bad in [
            "",
            "2026-11-25",
            "2026-11-25T10:07:59",
            "2026-13-01T00:00:00Z",
            "2026-02-29T00:00:00Z",
            "2026-11-25T24:00:00Z",
            "2026-11-25T10:07:59.Z",
            "2026-11-25T10:07:59+2:00",
            "2026/11/25T10:07:59Z",
            "yesterday at noon, roughly",
        ] {
            assert_eq!(parse_rfc3339(bad, TimeUnit::Milliseconds), None, "{bad:?}");
        }
    }
}
