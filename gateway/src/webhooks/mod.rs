//! Webhooks: operators subscribe HTTP endpoints to the gateway's events (a target's
//! health changing, a consumer's quota spent, a live ACL change or L7 ban, a config
//! reload). Each delivery is a JSON POST signed with HMAC-SHA256 over the timestamp and
//! the body (`x-gateway-signature: t=UNIX,v1=HEX`), so a receiver can check it came
//! from the gateway and is fresh.
//!
//! Delivery never touches the request path: [`publish`] puts the event on a bounded
//! queue (dropped and counted when full) and one dispatcher thread delivers it to each
//! subscriber, retrying failures with exponential backoff up to the subscriber's
//! attempts. The last deliveries are kept for the admin API ([`deliveries`]).

mod deliver;
mod sign;

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde_json::{Value, json};

pub use self::sign::{signature, verify};

/// Something that happened, as subscribers receive it.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// An upstream target went out of rotation or came back.
    UpstreamHealth {
        upstream: String,
        target: String,
        healthy: bool,
    },
    /// A consumer's plan quota is spent for the day or month (once per period).
    QuotaExhausted {
        consumer: String,
        period: &'static str,
        limit: u64,
    },
    /// A live ACL entry was added, removed or expired.
    AclChange {
        action: &'static str,
        list: &'static str,
        cidr: String,
        by: String,
    },
    /// A source was banned at the edge for its rejected requests.
    Ban {
        ip: String,
        last_status: u16,
        seconds: u64,
    },
    /// A reload was applied or refused.
    ConfigReload {
        applied: bool,
        by: String,
        detail: String,
    },
}

impl Event {
    /// The event's type name, as subscribers filter on it.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::UpstreamHealth { .. } => "upstream_health",
            Self::QuotaExhausted { .. } => "quota_exhausted",
            Self::AclChange { .. } => "acl_change",
            Self::Ban { .. } => "ban",
            Self::ConfigReload { .. } => "config_reload",
        }
    }

    /// Every event type name.
    pub const KINDS: [&'static str; 5] = [
        "upstream_health",
        "quota_exhausted",
        "acl_change",
        "ban",
        "config_reload",
    ];

    fn data(&self) -> Value {
        match self {
            Self::UpstreamHealth {
                upstream,
                target,
                healthy,
            } => json!({ "upstream": upstream, "target": target, "healthy": healthy }),
            Self::QuotaExhausted {
                consumer,
                period,
                limit,
            } => json!({ "consumer": consumer, "period": period, "limit": limit }),
            Self::AclChange {
                action,
                list,
                cidr,
                by,
            } => json!({ "action": action, "list": list, "cidr": cidr, "by": by }),
            Self::Ban {
                ip,
                last_status,
                seconds,
            } => json!({ "ip": ip, "last_status": last_status, "seconds": seconds }),
            Self::ConfigReload {
                applied,
                by,
                detail,
            } => json!({ "applied": applied, "by": by, "detail": detail }),
        }
    }
}

/// One configured subscriber (`[[webhooks]]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookConfig {
    pub name: String,
    pub url: url::Url,
    /// The HMAC-SHA256 key.
    pub secret: String,
    /// Event types delivered; empty: all.
    pub events: Vec<String>,
    /// Longest wait for one delivery attempt.
    pub timeout: Duration,
    /// Attempts per event, the first included.
    pub max_attempts: u32,
    /// Wait before the second attempt; doubled for each further one.
    pub retry_backoff: Duration,
    /// CA bundle for an `https` URL (the system roots when unset).
    pub ca_file: Option<std::path::PathBuf>,
}

impl WebhookConfig {
    fn wants(&self, kind: &str) -> bool {
        self.events.is_empty() || self.events.iter().any(|e| e == kind)
    }
}

/// One delivery attempt, for the admin API's log.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Delivery {
    pub id: String,
    pub webhook: String,
    pub event: &'static str,
    pub attempt: u32,
    /// Unix seconds of the attempt.
    pub at: u64,
    /// The receiver's status, when it answered.
    pub status: Option<u16>,
    pub error: Option<String>,
    /// `delivered`, `retrying` or `failed`.
    pub outcome: &'static str,
}

/// Events waiting for the dispatcher, most.
const QUEUE: usize = 1024;
/// Deliveries kept for the admin API.
const LOG: usize = 256;

struct Bus {
    queue: mpsc::SyncSender<Event>,
    subscribers: arc_swap::ArcSwap<Vec<WebhookConfig>>,
    log: Mutex<VecDeque<Delivery>>,
    dropped: AtomicU64,
}

static BUS: OnceLock<Bus> = OnceLock::new();

/// Starts the dispatcher with `subscribers` (once per process; later calls only
/// replace the subscribers, as a reload does).
pub fn start(subscribers: &[WebhookConfig]) {
    if let Some(bus) = BUS.get() {
        configure(bus, subscribers);
        return;
    }
    let (queue, inbox) = mpsc::sync_channel(QUEUE);
    let bus = Bus {
        queue,
        subscribers: arc_swap::ArcSwap::from_pointee(subscribers.to_vec()),
        log: Mutex::new(VecDeque::with_capacity(LOG)),
        dropped: AtomicU64::new(0),
    };
    if BUS.set(bus).is_err() {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("webhooks".into())
        .spawn(move || deliver::run(inbox));
    if let Err(error) = spawned {
        tracing::error!(%error, "cannot start the webhook dispatcher; events are dropped");
    }
}

fn configure(bus: &Bus, subscribers: &[WebhookConfig]) {
    bus.subscribers.store(Arc::new(subscribers.to_vec()));
}

/// Queues `event` for its subscribers; never blocks or locks (a full queue drops it,
/// counted), so workers may publish.
pub fn publish(event: Event) {
    let Some(bus) = BUS.get() else {
        return;
    };
    let empty = bus
        .subscribers
        .load()
        .iter()
        .all(|s| !s.wants(event.kind()));
    if empty {
        return;
    }
    if bus.queue.try_send(event).is_err() {
        let dropped = bus.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::warn!(dropped, "webhook queue full: event dropped");
    }
}

/// The last deliveries, newest first, and how many events were dropped.
pub fn deliveries() -> (Vec<Delivery>, u64) {
    match BUS.get() {
        Some(bus) => (
            bus.log
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .rev()
                .cloned()
                .collect(),
            bus.dropped.load(Ordering::Relaxed),
        ),
        None => (Vec::new(), 0),
    }
}

fn record(delivery: Delivery) {
    if let Some(bus) = BUS.get() {
        let mut log = bus.log.lock().unwrap_or_else(|e| e.into_inner());
        if log.len() == LOG {
            log.pop_front();
        }
        log.push_back(delivery);
    }
}

fn subscribers() -> Arc<Vec<WebhookConfig>> {
    BUS.get()
        .map_or_else(Arc::default, |bus| bus.subscribers.load_full())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The JSON body of `event` with delivery id `id`.
fn body(id: &str, event: &Event, created: u64) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "id": id,
        "type": event.kind(),
        "created": created,
        "data": event.data(),
    }))
    .unwrap_or_default()
}
