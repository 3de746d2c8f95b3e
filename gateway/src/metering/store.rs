//! The usage book on disk: one JSON document, written to a temporary file beside it,
//! synced and renamed over the old one, so a crash leaves either the old or the new book.

use std::{path::Path, sync::atomic::Ordering};

use serde::{Deserialize, Serialize};

use super::{
    Counter, UsageBook,
    calendar::{day_label, month_label, parse_day, parse_month},
};

/// Why the book could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("usage store {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("usage store {path}: not a usage book: {message}")]
    Format { path: String, message: String },
}

#[derive(Serialize, Deserialize)]
struct Book {
    version: u32,
    #[serde(default)]
    consumers: Vec<Line>,
    #[serde(default)]
    routes: Vec<Line>,
}

#[derive(Serialize, Deserialize)]
struct Line {
    consumer: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    route: Option<String>,
    day: String,
    day_requests: u64,
    month: String,
    month_requests: u64,
}

/// The saved form of `counter`; `None` when it never counted anything.
fn line(consumer: &str, route: Option<&str>, counter: &Counter) -> Option<Line> {
    let (day_word, month_word) = (
        counter.day.0.load(Ordering::Relaxed),
        counter.month.0.load(Ordering::Relaxed),
    );
    if month_word == 0 {
        return None;
    }
    let (day, day_requests) = super::unpack(day_word);
    let (month, month_requests) = super::unpack(month_word);
    Some(Line {
        consumer: consumer.to_owned(),
        route: route.map(str::to_owned),
        day: day_label(day),
        day_requests,
        month: month_label(month),
        month_requests,
    })
}

pub(super) fn save(path: &Path, book: &UsageBook) -> Result<(), StoreError> {
    let consumers = {
        let map = book.consumers.lock().unwrap_or_else(|e| e.into_inner());
        map.iter()
            .filter_map(|(c, counter)| line(c, None, counter))
            .collect()
    };
    let routes = {
        let map = book.routes.lock().unwrap_or_else(|e| e.into_inner());
        map.iter()
            .filter_map(|((c, r), counter)| line(c, Some(r), counter))
            .collect()
    };
    let text = serde_json::to_vec_pretty(&Book {
        version: 1,
        consumers,
        routes,
    })
    .unwrap_or_default();
    let io = |source| StoreError::Io {
        path: path.display().to_string(),
        source,
    };
    let temporary = path.with_extension("tmp");
    {
        use std::io::Write as _;
        let mut file = std::fs::File::create(&temporary).map_err(io)?;
        file.write_all(&text).map_err(io)?;
        file.sync_all().map_err(io)?;
    }
    std::fs::rename(&temporary, path).map_err(io)
}

pub(super) fn load(path: &Path, book: &UsageBook) -> Result<(), StoreError> {
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(StoreError::Io {
                path: path.display().to_string(),
                source,
            });
        }
    };
    let format = |message: String| StoreError::Format {
        path: path.display().to_string(),
        message,
    };
    let stored: Book = serde_json::from_slice(&text).map_err(|e| format(e.to_string()))?;
    if stored.version != 1 {
        return Err(format(format!("version {} is not 1", stored.version)));
    }
    let restore = |line: &Line, counter: &Counter| -> Result<(), StoreError> {
        let day = parse_day(&line.day).ok_or_else(|| format(format!("bad day {:?}", line.day)))?;
        let month = parse_month(&line.month)
            .ok_or_else(|| format(format!("bad month {:?}", line.month)))?;
        counter.day.set(day, line.day_requests);
        counter.month.set(month, line.month_requests);
        Ok(())
    };
    for line in &stored.consumers {
        restore(line, &book.consumer_counter(&line.consumer))?;
    }
    for line in &stored.routes {
        let route = line.route.as_deref().unwrap_or_default();
        restore(line, &book.route_counter(&line.consumer, route))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metering::Period;

    #[test]
    fn a_saved_book_loads_back_and_a_broken_one_is_refused() {
        let dir = tempfile_dir();
        let path = dir.join("usage.json");
        let book = UsageBook::open(Some(path.clone())).expect("empty book");
        let now = Period::now();
        let counter = book.route_counter("acme", "orders");
        counter.day.add(now.day);
        counter.month.add(now.month);
        book.consumer_counter("acme").month.add(now.month);
        book.dirty.store(true, Ordering::Relaxed);
        book.save_if_changed().expect("saved");
        let reopened = UsageBook::open(Some(path.clone())).expect("loaded");
        assert_eq!(reopened.usage(now)[0].day, 1);
        assert_eq!(reopened.totals(now)[0].month, 1);
        std::fs::write(&path, b"{\"version\": 1, \"routes\": [{\"consumer\": \"a\", \"day\": \"x\", \"day_requests\": 1, \"month\": \"2026-01\", \"month_requests\": 1}]}")
            .expect("write");
        assert!(UsageBook::open(Some(path.clone())).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "gateway-usage-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).expect("dir");
        dir
    }
}
