//! Wall-clock helpers. Timestamps travel as RFC 3339 UTC strings with
//! millisecond precision; deadlines are kept as Unix milliseconds.

use std::time::{SystemTime, UNIX_EPOCH};

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The first millisecond of the year 10 000, which RFC 3339's four-digit
/// year cannot spell.
const YEAR_10000_MS: u64 = 253_402_300_800_000;

/// `1700000000123` → `2023-11-14T22:13:20.123Z`.
///
/// Written by hand rather than with `humantime` (its `Display` goes
/// through `core::fmt`): every record and every plan event spells a time,
/// and the formatter machinery was about 2 400 instructions of each. The
/// output is humantime's, byte for byte (a test compares them). A time
/// past the year 9999 (humantime's `Display` fails on it, and `to_string`
/// panicked) is spelled as the last millisecond of 9999, which still
/// parses.
pub fn rfc3339(ms: u64) -> String {
    let ms = ms.min(YEAR_10000_MS - 1);
    let (days, ms_of_day) = (ms / 86_400_000, ms % 86_400_000);
    let (year, month, day) = civil_from_days(days);
    let (secs, millis) = (ms_of_day / 1000, ms_of_day % 1000);
    let mut out = *b"0000-00-00T00:00:00.000Z";
    let mut put = |at: usize, value: u64, digits: usize| {
        let mut value = value;
        for i in (at..at + digits).rev() {
            out[i] = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(0, year, 4);
    put(5, month, 2);
    put(8, day, 2);
    put(11, secs / 3600, 2);
    put(14, secs / 60 % 60, 2);
    put(17, secs % 60, 2);
    put(20, millis, 3);
    std::str::from_utf8(&out).expect("ASCII digits").to_owned()
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian
/// calendar: Howard Hinnant's `civil_from_days`, for days ≥ 0.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

pub fn parse_rfc3339(text: &str) -> Option<u64> {
    humantime::parse_rfc3339(text)
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn humantime_rfc3339(ms: u64) -> String {
        humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
    }

    #[test]
    fn spells_times_as_humantime_does() {
        let edges = [
            0,
            1,
            999,
            1000,
            86_399_999,
            86_400_000,
            951_782_400_000,   // 2000-02-29, a leap day of a year divisible by 400
            4_107_542_400_000, // 2100-03-01, after a 28-day February
            YEAR_10000_MS - 1,
        ];
        for ms in edges {
            assert_eq!(rfc3339(ms), humantime_rfc3339(ms), "{ms}");
        }
        for past in [YEAR_10000_MS, YEAR_10000_MS + 86_400_123, u64::MAX] {
            assert_eq!(rfc3339(past), "9999-12-31T23:59:59.999Z");
        }
        // Every day from 1970 to 2200, at a time of day that moves.
        for day in 0..84_000u64 {
            let ms = day * 86_400_000 + (day * 7_919_993) % 86_400_000;
            assert_eq!(rfc3339(ms), humantime_rfc3339(ms), "{ms}");
        }
        // Spread over the rest of the four-digit years.
        let mut ms = 1u64;
        while ms < YEAR_10000_MS {
            assert_eq!(rfc3339(ms), humantime_rfc3339(ms), "{ms}");
            ms = ms * 3 + 12_345;
        }
    }

    #[test]
    fn round_trips() {
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(
            parse_rfc3339("2023-11-14T22:13:20.123Z"),
            Some(1_700_000_000_123)
        );
    }
}
