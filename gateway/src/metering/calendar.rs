//! UTC days and months as numbers, and their labels (`2026-11-28`, `2026-11`), from the
//! wall clock. Calendar arithmetic is humantime's (RFC 3339 formatting and parsing); a
//! day is a count of whole days since the epoch, a month `year * 12 + month - 1`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

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

    /// The period at `secs` since the epoch. The calendar work runs once per day and
    /// thread; other calls are arithmetic on the cached month.
    pub fn at(secs: u64) -> Self {
        thread_local! {
            /// (day, month number, start of the next month) last computed here.
            static MONTH_OF_DAY: std::cell::Cell<(u64, u64, u64)> =
                const { std::cell::Cell::new((u64::MAX, 0, 0)) };
        }
        let day = secs / 86_400;
        let (month_number, next_month_start) = MONTH_OF_DAY.with(|cached| {
            let (cached_day, month, next) = cached.get();
            if cached_day == day {
                return (month, next);
            }
            let (year, month) = year_month(day);
            let month_number = year * 12 + month - 1;
            let next = month_start(month_number + 1).unwrap_or(u64::MAX);
            cached.set((day, month_number, next));
            (month_number, next)
        });
        Self {
            day,
            month: month_number,
            seconds_to_next_day: (day + 1) * 86_400 - secs,
            seconds_to_next_month: next_month_start.saturating_sub(secs),
        }
    }
}

/// `2026-11-28` for a day number.
pub fn day_label(day: u64) -> String {
    let stamp = humantime::format_rfc3339(UNIX_EPOCH + Duration::from_secs(day * 86_400));
    stamp.to_string()[..10].to_owned()
}

/// (year, month 1–12) of a day number.
fn year_month(day: u64) -> (u64, u64) {
    let label = day_label(day);
    let year = label[..4].parse().unwrap_or(1970);
    let month = label[5..7].parse().unwrap_or(1);
    (year, month)
}

/// Seconds since the epoch at the start of month number `month`.
fn month_start(month: u64) -> Option<u64> {
    let label = format!("{:04}-{:02}-01T00:00:00Z", month / 12, month % 12 + 1);
    let time = humantime::parse_rfc3339(&label).ok()?;
    Some(time.duration_since(UNIX_EPOCH).ok()?.as_secs())
}

/// `2026-11` for a month number.
pub fn month_label(month: u64) -> String {
    format!("{:04}-{:02}", month / 12, month % 12 + 1)
}

/// The day number of a `YYYY-MM-DD` label.
pub fn parse_day(label: &str) -> Option<u64> {
    if label.len() != 10 {
        return None;
    }
    let time = humantime::parse_rfc3339(&format!("{label}T00:00:00Z")).ok()?;
    Some(time.duration_since(UNIX_EPOCH).ok()?.as_secs() / 86_400)
}

/// The month number of a `YYYY-MM` label.
pub fn parse_month(label: &str) -> Option<u64> {
    let day = parse_day(&format!("{label}-01"))?;
    let (year, month) = year_month(day);
    Some(year * 12 + month - 1)
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
