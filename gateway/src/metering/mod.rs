//! Usage metering and quotas: requests counted per consumer and route, per UTC day and
//! month, global across workers; plans cap a consumer's daily and monthly requests.
//!
//! Counters are atomics shared by every worker (a [`Counter`] packs the period and the
//! count into one word, so a new day starts with one compare-and-swap and no lock). The
//! process-wide [`UsageBook`] owns them by name, so a reload keeps counting on the same
//! counters; a snapshot's [`Meter`] is the index from (consumer, route) to them. The book
//! is saved to a JSON file (written aside, then renamed) every flush interval and at
//! shutdown, and loaded at start: counts survive restarts, losing at most one interval
//! on a crash.

mod calendar;
mod store;

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

pub use self::calendar::{Period, day_label, month_label};
pub use self::store::StoreError;

/// Bits of a packed counter holding the count (the rest hold the period).
const COUNT_BITS: u32 = 40;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;

fn pack(period: u64, count: u64) -> u64 {
    (period << COUNT_BITS) | (count & COUNT_MASK)
}

fn unpack(word: u64) -> (u64, u64) {
    (word >> COUNT_BITS, word & COUNT_MASK)
}

/// One period's count: the period number and the count in one atomic word.
#[derive(Debug, Default)]
pub struct PeriodCount(AtomicU64);

impl PeriodCount {
    /// The count in `period` (zero when the stored count is from another period).
    pub fn get(&self, period: u64) -> u64 {
        let (stored, count) = unpack(self.0.load(Ordering::Relaxed));
        if stored == period { count } else { 0 }
    }

    /// Adds one in `period`, starting from zero when the period changed.
    pub fn add(&self, period: u64) {
        let _ = self.take(period, u64::MAX);
    }

    /// Adds one in `period` unless the count already reached `limit`; returns the count
    /// after adding, or `None` when the limit is spent.
    pub fn take(&self, period: u64, limit: u64) -> Option<u64> {
        let mut current = self.0.load(Ordering::Relaxed);
        loop {
            let (stored, count) = unpack(current);
            let count = if stored == period { count } else { 0 };
            if count >= limit {
                return None;
            }
            match self.0.compare_exchange_weak(
                current,
                pack(period, count + 1),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(count + 1),
                Err(actual) => current = actual,
            }
        }
    }

    /// Takes one back in `period` (a request counted against a day whose month then
    /// refused it).
    fn give_back(&self, period: u64) {
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |word| {
                let (stored, count) = unpack(word);
                (stored == period && count > 0).then(|| pack(period, count - 1))
            });
    }

    fn set(&self, period: u64, count: u64) {
        self.0.store(pack(period, count), Ordering::Relaxed);
    }
}

/// The day and month counts of one consumer (and route).
#[derive(Debug, Default)]
pub struct Counter {
    pub day: PeriodCount,
    pub month: PeriodCount,
    /// The last day and month a quota exhaustion was reported (once per period).
    reported_day: AtomicU64,
    reported_month: AtomicU64,
}

/// A plan's quotas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Quota {
    pub per_day: Option<u64>,
    pub per_month: Option<u64>,
}

/// What a quota check decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaDecision {
    /// Admitted; what is left of each set quota afterwards.
    Admitted {
        day_left: Option<u64>,
        month_left: Option<u64>,
    },
    /// Refused: which period is spent, its limit, seconds until it renews, and whether
    /// this is the first refusal of the period (to report once).
    Exhausted {
        period: &'static str,
        limit: u64,
        renews_in: u64,
        first: bool,
    },
}

/// Every counter of the process, by name; outlives reloads.
#[derive(Debug, Default)]
pub struct UsageBook {
    routes: Mutex<HashMap<(String, String), Arc<Counter>>>,
    consumers: Mutex<HashMap<String, Arc<Counter>>>,
    /// Where the book is saved (none: counts are kept in memory only).
    path: Option<PathBuf>,
    /// A count changed since the last save.
    dirty: AtomicBool,
}

impl UsageBook {
    /// A book saved at `path`, loaded from it when it exists.
    pub fn open(path: Option<PathBuf>) -> Result<Self, StoreError> {
        let book = Self {
            path,
            ..Self::default()
        };
        if let Some(path) = &book.path {
            store::load(path, &book)?;
        }
        Ok(book)
    }

    fn route_counter(&self, consumer: &str, route: &str) -> Arc<Counter> {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        routes
            .entry((consumer.to_owned(), route.to_owned()))
            .or_default()
            .clone()
    }

    fn consumer_counter(&self, consumer: &str) -> Arc<Counter> {
        let mut consumers = self.consumers.lock().unwrap_or_else(|e| e.into_inner());
        consumers.entry(consumer.to_owned()).or_default().clone()
    }

    /// The index a snapshot's requests count through.
    pub fn meter(self: &Arc<Self>, config: &crate::config::Config) -> Meter {
        let routes = config.routes.len();
        let mut cells = Vec::with_capacity(config.consumers.len() * routes);
        let mut totals = Vec::with_capacity(config.consumers.len());
        let mut quotas = Vec::with_capacity(config.consumers.len());
        for consumer in &config.consumers {
            for route in &config.routes {
                cells.push(self.route_counter(&consumer.name, &route.name));
            }
            totals.push(self.consumer_counter(&consumer.name));
            quotas.push(consumer.plan.as_ref().map(|p| p.quota).unwrap_or_default());
        }
        Meter {
            book: self.clone(),
            routes,
            cells,
            totals,
            quotas,
        }
    }

    /// Saves the book every `interval` from a thread of its own, until `stop` is set;
    /// the caller saves once more after the workers stopped.
    pub fn spawn_saver(
        self: &Arc<Self>,
        interval: std::time::Duration,
        stop: Arc<AtomicBool>,
    ) -> Option<std::thread::JoinHandle<()>> {
        self.path.as_ref()?;
        let book = self.clone();
        std::thread::Builder::new()
            .name("usage-saver".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::park_timeout(interval);
                    if let Err(error) = book.save_if_changed() {
                        tracing::error!(%error, "saving usage counts failed; retrying");
                    }
                }
            })
            .ok()
    }

    /// Saves the book when a count changed since the last save.
    pub fn save_if_changed(&self) -> Result<(), StoreError> {
        if self.path.is_none() || !self.dirty.swap(false, Ordering::Relaxed) {
            return Ok(());
        }
        let result = self.save();
        if result.is_err() {
            self.dirty.store(true, Ordering::Relaxed);
        }
        result
    }

    fn save(&self) -> Result<(), StoreError> {
        match &self.path {
            Some(path) => store::save(path, self),
            None => Ok(()),
        }
    }

    /// Every (consumer, route) count of the current day and month, sorted.
    pub fn usage(&self, now: Period) -> Vec<Usage> {
        let routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<Usage> = routes
            .iter()
            .map(|((consumer, route), counter)| Usage {
                consumer: consumer.clone(),
                route: Some(route.clone()),
                day: counter.day.get(now.day),
                month: counter.month.get(now.month),
            })
            .filter(|u| u.month > 0)
            .collect();
        out.sort_by(|a, b| (&a.consumer, &a.route).cmp(&(&b.consumer, &b.route)));
        out
    }

    /// Each consumer's totals (what quotas count) in the current day and month.
    pub fn totals(&self, now: Period) -> Vec<Usage> {
        let consumers = self.consumers.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<Usage> = consumers
            .iter()
            .map(|(consumer, counter)| Usage {
                consumer: consumer.clone(),
                route: None,
                day: counter.day.get(now.day),
                month: counter.month.get(now.month),
            })
            .collect();
        out.sort_by(|a, b| a.consumer.cmp(&b.consumer));
        out
    }
}

/// One line of a usage report.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    pub consumer: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    pub day: u64,
    pub month: u64,
}

/// A snapshot's view of the book: the counters of each (consumer, route) by index.
#[derive(Debug)]
pub struct Meter {
    book: Arc<UsageBook>,
    routes: usize,
    /// consumer × routes + route.
    cells: Vec<Arc<Counter>>,
    /// By consumer: everything it called (what quotas count).
    totals: Vec<Arc<Counter>>,
    quotas: Vec<Quota>,
}

impl Meter {
    /// The book the counters belong to (a reload's snapshot counts in the same one).
    pub fn book(&self) -> &Arc<UsageBook> {
        &self.book
    }

    /// The plan quota of `consumer`.
    pub fn quota(&self, consumer: usize) -> Quota {
        self.quotas.get(consumer).copied().unwrap_or_default()
    }

    /// Counts one request of `consumer` on `route` at `now`, unless its plan's quota is
    /// spent.
    pub fn record(&self, consumer: usize, route: usize, now: Period) -> QuotaDecision {
        let (Some(total), Some(cell)) = (
            self.totals.get(consumer),
            self.cells.get(consumer * self.routes + route),
        ) else {
            return QuotaDecision::Admitted {
                day_left: None,
                month_left: None,
            };
        };
        let quota = self.quota(consumer);
        let day = total.day.take(now.day, quota.per_day.unwrap_or(u64::MAX));
        let Some(day_count) = day else {
            return exhausted(total, "day", quota.per_day, now);
        };
        let Some(month_count) = total
            .month
            .take(now.month, quota.per_month.unwrap_or(u64::MAX))
        else {
            total.day.give_back(now.day);
            return exhausted(total, "month", quota.per_month, now);
        };
        cell.day.add(now.day);
        cell.month.add(now.month);
        // Read first: a flag already set costs every worker a shared read, not a write.
        if !self.book.dirty.load(Ordering::Relaxed) {
            self.book.dirty.store(true, Ordering::Relaxed);
        }
        QuotaDecision::Admitted {
            day_left: quota.per_day.map(|q| q.saturating_sub(day_count)),
            month_left: quota.per_month.map(|q| q.saturating_sub(month_count)),
        }
    }
}

fn exhausted(
    counter: &Counter,
    period: &'static str,
    limit: Option<u64>,
    now: Period,
) -> QuotaDecision {
    let (reported, current, renews_in) = match period {
        "day" => (&counter.reported_day, now.day, now.seconds_to_next_day),
        _ => (
            &counter.reported_month,
            now.month,
            now.seconds_to_next_month,
        ),
    };
    let first = reported.swap(current, Ordering::Relaxed) != current;
    QuotaDecision::Exhausted {
        period,
        limit: limit.unwrap_or(0),
        renews_in,
        first,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn period(day: u64, month: u64) -> Period {
        Period {
            day,
            month,
            seconds_to_next_day: 60,
            seconds_to_next_month: 3600,
        }
    }

    #[test]
    fn counts_restart_with_each_period() {
        let count = PeriodCount::default();
        count.add(10);
        count.add(10);
        assert_eq!(count.get(10), 2);
        assert_eq!(count.get(11), 0);
        count.add(11);
        assert_eq!((count.get(10), count.get(11)), (0, 1));
        assert_eq!(count.take(11, 2), Some(2));
        assert_eq!(count.take(11, 2), None);
        assert_eq!(count.take(12, 2), Some(1));
    }

    #[test]
    fn quotas_refuse_once_spent_and_report_once_per_period() {
        let counter = Counter::default();
        let quota = Quota {
            per_day: Some(2),
            per_month: Some(3),
        };
        let take = |now: Period| {
            let day = counter.day.take(now.day, quota.per_day.unwrap_or(u64::MAX));
            match day {
                None => exhausted(&counter, "day", quota.per_day, now),
                Some(_) => match counter
                    .month
                    .take(now.month, quota.per_month.unwrap_or(u64::MAX))
                {
                    None => {
                        counter.day.give_back(now.day);
                        exhausted(&counter, "month", quota.per_month, now)
                    }
                    Some(_) => QuotaDecision::Admitted {
                        day_left: None,
                        month_left: None,
                    },
                },
            }
        };
        assert!(matches!(take(period(1, 1)), QuotaDecision::Admitted { .. }));
        assert!(matches!(take(period(1, 1)), QuotaDecision::Admitted { .. }));
        assert!(matches!(
            take(period(1, 1)),
            QuotaDecision::Exhausted {
                period: "day",
                first: true,
                ..
            }
        ));
        assert!(matches!(
            take(period(1, 1)),
            QuotaDecision::Exhausted {
                period: "day",
                first: false,
                ..
            }
        ));
        assert!(matches!(take(period(2, 1)), QuotaDecision::Admitted { .. }));
        assert!(matches!(
            take(period(2, 1)),
            QuotaDecision::Exhausted {
                period: "month",
                limit: 3,
                renews_in: 3600,
                first: true
            }
        ));
        assert_eq!(
            counter.day.get(2),
            1,
            "a request the month refused is not counted on the day"
        );
    }
}
