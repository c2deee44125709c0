//! RFC 3339 `date-time`s (the CloudEvents Timestamp type) to and from
//! milliseconds since the Unix epoch, Hadron's event time. Written by hand
//! for the few lines it takes: four-digit years (0000 to 9999) only, as RFC
//! 3339 has them; no leap seconds, which milliseconds since the epoch
//! cannot hold either.

/// Milliseconds from 1970-01-01 to 0000-01-01 and to 10000-01-01: the
/// times RFC 3339's four-digit years can write.
pub const TIME_MS_MIN: i64 = -62_167_219_200_000;
pub const TIME_MS_END: i64 = 253_402_300_800_000;
const MS_PER_DAY: i64 = 86_400_000;

/// `ms` since the epoch as RFC 3339 in UTC with milliseconds
/// (`2024-05-06T07:08:09.010Z`); none outside years 0000 to 9999.
pub fn format_time(ms: i64) -> Option<String> {
    if !(TIME_MS_MIN..TIME_MS_END).contains(&ms) {
        return None;
    }
    let (days, ms_of_day) = (ms.div_euclid(MS_PER_DAY), ms.rem_euclid(MS_PER_DAY));
    let (year, month, day) = civil_from_days(days);
    let (hour, minute) = (ms_of_day / 3_600_000, ms_of_day / 60_000 % 60);
    let (second, milli) = (ms_of_day / 1000 % 60, ms_of_day % 1000);
    Some(format!(
        "{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{milli:03}Z"
    ))
}

/// An RFC 3339 `date-time` as milliseconds since the epoch; digits below a
/// millisecond are dropped (Hadron stores milliseconds).
pub fn parse_time(text: &str) -> Result<i64, String> {
    const FORM: &str = "expected RFC 3339, like 2024-05-06T07:08:09.010Z or ...+02:00";
    let b = text.as_bytes();
    let digits = |at: usize, n: usize| -> Result<i64, String> {
        let part = b.get(at..at + n).ok_or(FORM)?;
        if !part.iter().all(u8::is_ascii_digit) {
            return Err(FORM.into());
        }
        Ok(part.iter().fold(0, |v, d| v * 10 + i64::from(d - b'0')))
    };
    let punct = |at: usize, options: &[u8]| -> Result<(), String> {
        match b.get(at) {
            Some(c) if options.contains(c) => Ok(()),
            _ => Err(FORM.into()),
        }
    };
    let (year, month, day) = (digits(0, 4)?, digits(5, 2)?, digits(8, 2)?);
    punct(4, b"-")?;
    punct(7, b"-")?;
    punct(10, b"Tt ")?;
    let (hour, minute, second) = (digits(11, 2)?, digits(14, 2)?, digits(17, 2)?);
    punct(13, b":")?;
    punct(16, b":")?;
    let mut at = 19;
    let mut milli = 0;
    if b.get(at) == Some(&b'.') {
        let start = at + 1;
        at = start;
        while b.get(at).is_some_and(u8::is_ascii_digit) {
            at += 1;
        }
        if at == start {
            return Err(FORM.into());
        }
        let kept = (at - start).min(3);
        milli = digits(start, kept)? * 10_i64.pow(3 - kept as u32);
    }
    let offset_minutes = match b.get(at) {
        Some(b'Z' | b'z') if at + 1 == b.len() => 0,
        Some(sign @ (b'+' | b'-')) if at + 6 == b.len() => {
            punct(at + 3, b":")?;
            let (h, m) = (digits(at + 1, 2)?, digits(at + 4, 2)?);
            if h > 23 || m > 59 {
                return Err(format!("offset {h:02}:{m:02} is out of range"));
            }
            if *sign == b'-' {
                -(h * 60 + m)
            } else {
                h * 60 + m
            }
        }
        _ => return Err(FORM.into()),
    };
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return Err(format!("{year:04}-{month:02}-{day:02} is not a date"));
    }
    if hour > 23 || minute > 59 || second > 59 {
        return Err(format!(
            "{hour:02}:{minute:02}:{second:02} is not a time of day (a leap second is not taken)"
        ));
    }
    let seconds = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second
        - offset_minutes * 60;
    Ok(seconds * 1000 + milli)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date `days` after 1970-01-01 (Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_format_and_parse_as_rfc_3339() {
        for (ms, text) in [
            (0, "1970-01-01T00:00:00.000Z"),
            (1_700_000_000_123, "2023-11-14T22:13:20.123Z"),
            (-1, "1969-12-31T23:59:59.999Z"),
            (951_782_400_000, "2000-02-29T00:00:00.000Z"),
            (TIME_MS_MIN, "0000-01-01T00:00:00.000Z"),
            (TIME_MS_END - 1, "9999-12-31T23:59:59.999Z"),
        ] {
            assert_eq!(format_time(ms).as_deref(), Some(text), "{ms}");
            assert_eq!(parse_time(text), Ok(ms), "{text}");
        }
        assert_eq!(format_time(TIME_MS_MIN - 1), None);
        assert_eq!(format_time(TIME_MS_END), None);
        assert_eq!(format_time(i64::MAX), None);
    }

    #[test]
    fn parse_time_takes_offsets_fractions_and_no_fraction() {
        let base = parse_time("2024-05-06T07:08:09Z").unwrap();
        assert_eq!(parse_time("2024-05-06T09:08:09+02:00"), Ok(base));
        assert_eq!(parse_time("2024-05-06T02:38:09-04:30"), Ok(base));
        assert_eq!(parse_time("2024-05-06t07:08:09z"), Ok(base));
        assert_eq!(parse_time("2024-05-06 07:08:09.5Z"), Ok(base + 500));
        assert_eq!(
            parse_time("2024-05-06T07:08:09.123999999Z"),
            Ok(base + 123),
            "digits below a millisecond are dropped"
        );
        assert_eq!(format_time(base).unwrap(), "2024-05-06T07:08:09.000Z");
    }

    #[test]
    fn parse_time_refuses_what_is_not_rfc_3339() {
        for bad in [
            "",
            "2024-05-06",
            "2024-05-06T07:08:09",
            "2024-05-06T07:08Z",
            "2024-05-06T07:08:09.Z",
            "2024-05-06T07:08:09+0200",
            "2024-05-06T07:08:09Zjunk",
            "2024/05/06T07:08:09Z",
            "1715000000",
        ] {
            assert!(parse_time(bad).unwrap_err().contains("RFC 3339"), "{bad}");
        }
        assert!(
            parse_time("2023-02-29T00:00:00Z")
                .unwrap_err()
                .contains("not a date")
        );
        assert!(
            parse_time("2024-13-01T00:00:00Z")
                .unwrap_err()
                .contains("not a date")
        );
        assert!(
            parse_time("2024-01-01T24:00:00Z")
                .unwrap_err()
                .contains("time of day")
        );
        assert!(
            parse_time("2016-12-31T23:59:60Z")
                .unwrap_err()
                .contains("leap second")
        );
        assert!(
            parse_time("2024-01-01T00:00:00+24:00")
                .unwrap_err()
                .contains("offset")
        );
    }
}
