//! UTC days and months as numbers, and their labels (`2026-11-28`, `2026-11`), from the
//! wall clock (civil-from-days as in Howard Hinnant's date algorithms).

use std::time::{SystemTime, UNIX_EPOCH};

/// The current day and month, and how long until each renews.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    /// Days since 1970-01-01.
    pub day: u64,
    /// Months since year 0: `year * 12 + month - 1`.
    pub month: u64,
    pub seconds_to_next_day: u64,
    pub seconds_to_next_month: u64,
}

impl Period {
    /// The period at the current wall-clock time.
    pub fn now() -> Self {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Self::at(secs)
    }

    /// The period at `secs` since the epoch.
    pub fn at(secs: u64) -> Self {
        let day = secs / 86_400;
        let (year, month, _) = civil_from_days(day);
        let (next_year, next_month) = if month == 12 {
            (year + 1, 1)
        } else {
            (year, month + 1)
        };
        let next_month_start = days_from_civil(next_year, next_month, 1) * 86_400;
        Self {
            day,
            month: year * 12 + month - 1,
            seconds_to_next_day: (day + 1) * 86_400 - secs,
            seconds_to_next_month: next_month_start.saturating_sub(secs),
        }
    }
}

/// (year, month 1–12, day 1–31) of a day number.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// The day number of (year, month, day).
fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `2026-11-28` for a day number.
pub fn day_label(day: u64) -> String {
    let (y, m, d) = civil_from_days(day);
    format!("{y:04}-{m:02}-{d:02}")
}

/// `2026-11` for a month number.
pub fn month_label(month: u64) -> String {
    format!("{:04}-{:02}", month / 12, month % 12 + 1)
}

/// The day number of a `YYYY-MM-DD` label.
pub fn parse_day(label: &str) -> Option<u64> {
    let mut parts = label.splitn(3, '-').map(|p| p.parse::<u64>().ok());
    let (y, m, d) = (parts.next()??, parts.next()??, parts.next()??);
    ((1970..10_000).contains(&y) && (1..=12).contains(&m) && (1..=31).contains(&d))
        .then(|| days_from_civil(y, m, d))
}

/// The month number of a `YYYY-MM` label.
pub fn parse_month(label: &str) -> Option<u64> {
    let (y, m) = label.split_once('-')?;
    let (y, m) = (y.parse::<u64>().ok()?, m.parse::<u64>().ok()?);
    ((1970..10_000).contains(&y) && (1..=12).contains(&m)).then(|| y * 12 + m - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_and_months_round_trip_through_labels() {
        // 2026-11-28T00:33:25Z
        let p = Period::at(1_795_826_005);
        assert_eq!(day_label(p.day), "2026-11-28");
        assert_eq!(month_label(p.month), "2026-11");
        assert_eq!(p.seconds_to_next_day, 86_400 - 33 * 60 - 25);
        assert_eq!(p.seconds_to_next_month, 2 * 86_400 + p.seconds_to_next_day);
        for day in [0, 59, 365, 11_016, 20_000, 20_420, 40_000] {
            assert_eq!(parse_day(&day_label(day)), Some(day));
        }
        assert_eq!(parse_month("2026-11"), Some(p.month));
        assert_eq!(
            day_label(parse_day("2024-02-29").expect("leap day")),
            "2024-02-29"
        );
        let dec = Period::at(parse_day("2025-12-31").expect("day") * 86_400);
        assert_eq!(dec.seconds_to_next_month, 86_400);
        assert_eq!(parse_day("2026-13-01"), None);
        assert_eq!(parse_month("26-1x"), None);
    }
}
