//! The audit trail: every change made to a running gateway (reloads from the API or a
//! signal, and later ACL changes) as a JSON line with time, who, what, and a before/after
//! summary. The last entries are kept in memory for `GET /audit`; with
//! `gateway.audit_log` they are also appended to a file.

use std::{
    collections::VecDeque, fs::OpenOptions, io::Write, path::PathBuf, sync::Mutex, time::SystemTime,
};

use serde_json::{Value, json};

use crate::proxy::Snapshot;

/// Entries kept for `GET /audit`.
const KEEP: usize = 1000;

/// The process-wide audit trail (mutations are rare: a mutex is fine here).
#[derive(Debug)]
pub struct AuditLog {
    recent: Mutex<VecDeque<Value>>,
    file: Option<PathBuf>,
}

impl AuditLog {
    /// A trail kept in memory, and appended to `file` when given.
    pub fn new(file: Option<PathBuf>) -> Self {
        Self {
            recent: Mutex::new(VecDeque::new()),
            file,
        }
    }

    /// Records that `identity` did `action`, with what changed.
    pub fn record(&self, identity: &str, action: &str, outcome: Value) {
        let mut entry = json!({
            "time": humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            "identity": identity,
            "action": action,
        });
        if let (Value::Object(entry), Value::Object(outcome)) = (&mut entry, outcome) {
            entry.extend(outcome);
        }
        if let Some(path) = &self.file {
            let line = format!("{entry}\n");
            let written = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .and_then(|mut f| f.write_all(line.as_bytes()));
            if let Err(error) = written {
                tracing::warn!(path = %path.display(), %error, "cannot append to the audit log");
            }
        }
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if recent.len() == KEEP {
            recent.pop_front();
        }
        recent.push_back(entry);
    }

    /// The kept entries, oldest first.
    pub fn entries(&self) -> Vec<Value> {
        self.recent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

/// What a reload changes, for the trail: counts and a digest of the config text.
pub fn summary(snapshot: &Snapshot) -> Value {
    let digest = crate::auth::sha256(snapshot.config.text.as_bytes());
    json!({
        "config_sha256": hex::encode(digest),
        "routes": snapshot.config.routes.len(),
        "upstreams": snapshot.config.upstreams.len(),
        "consumers": snapshot.config.consumers.len(),
        "deny": snapshot.config.edge.deny.len(),
        "allow": snapshot.config.edge.allow.len(),
    })
}

/// Who an admin token is, without revealing it: a digest prefix.
pub fn token_identity(token: &str) -> String {
    format!(
        "token:{}",
        &hex::encode(crate::auth::sha256(token.as_bytes()))[..12]
    )
}
