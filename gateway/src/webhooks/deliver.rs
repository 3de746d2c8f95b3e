//! The dispatcher thread: delivers each event to each subscriber that wants it, and
//! schedules failed attempts again with exponential backoff.

use std::{
    io::{Read, Write},
    net::TcpStream,
    sync::mpsc::{Receiver, RecvTimeoutError},
    time::{Duration, Instant},
};

use super::{Delivery, Event, WebhookConfig, body, record, signature, subscribers, unix_now};

/// One event on its way to one subscriber.
struct Job {
    id: String,
    webhook: WebhookConfig,
    event: Event,
    created: u64,
    attempt: u32,
    due: Instant,
}

pub(super) fn run(inbox: Receiver<Event>) {
    let mut waiting: Vec<Job> = Vec::new();
    let mut sequence = 0u64;
    loop {
        let next_due = waiting.iter().map(|j| j.due).min();
        let received = match next_due {
            Some(due) => inbox.recv_timeout(due.saturating_duration_since(Instant::now())),
            None => inbox.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match received {
            Ok(event) => {
                let created = unix_now();
                for webhook in subscribers().iter().filter(|s| s.wants(event.kind())) {
                    sequence += 1;
                    let job = Job {
                        id: format!("dlv_{created:x}_{sequence:x}"),
                        webhook: webhook.clone(),
                        event: event.clone(),
                        created,
                        attempt: 1,
                        due: Instant::now(),
                    };
                    if let Some(retry) = attempt(job) {
                        waiting.push(retry);
                    }
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        let now = Instant::now();
        let (due, later): (Vec<Job>, Vec<Job>) = waiting.drain(..).partition(|j| j.due <= now);
        waiting = later;
        for job in due {
            if let Some(retry) = attempt(job) {
                waiting.push(retry);
            }
        }
    }
}

/// Makes one attempt; returns the job again, scheduled, when it should be retried.
fn attempt(mut job: Job) -> Option<Job> {
    let payload = body(&job.id, &job.event, job.created);
    let result = post(&job.webhook, &job.id, job.event.kind(), &payload);
    let retry = result.is_err() && job.attempt < job.webhook.max_attempts;
    let (status, error) = match &result {
        Ok(status) => (Some(*status), None),
        Err(Failure::Status(status)) => (Some(*status), Some(format!("answered {status}"))),
        Err(Failure::Io(message)) => (None, Some(message.clone())),
    };
    let outcome = match (&result, retry) {
        (Ok(_), _) => "delivered",
        (Err(_), true) => "retrying",
        (Err(_), false) => "failed",
    };
    if outcome == "failed" {
        tracing::warn!(webhook = %job.webhook.name, id = %job.id, attempts = job.attempt, ?error, "webhook delivery failed");
    }
    record(Delivery {
        id: job.id.clone(),
        webhook: job.webhook.name.clone(),
        event: job.event.kind(),
        attempt: job.attempt,
        at: unix_now(),
        status,
        error,
        outcome,
    });
    if !retry {
        return None;
    }
    let backoff = job
        .webhook
        .retry_backoff
        .saturating_mul(1 << (job.attempt - 1).min(16))
        .min(Duration::from_secs(300));
    job.attempt += 1;
    job.due = Instant::now() + backoff;
    Some(job)
}

enum Failure {
    Status(u16),
    Io(String),
}

/// POSTs `body` to the subscriber; `Ok` with a 2xx status.
fn post(webhook: &WebhookConfig, id: &str, kind: &str, body: &[u8]) -> Result<u16, Failure> {
    let url = &webhook.url;
    let io = |e: std::io::Error| Failure::Io(e.to_string());
    let host = url
        .host_str()
        .ok_or_else(|| Failure::Io("no host".into()))?;
    let addr = url
        .socket_addrs(|| None)
        .map_err(io)?
        .into_iter()
        .next()
        .ok_or_else(|| Failure::Io(format!("{host} does not resolve")))?;
    let stream = TcpStream::connect_timeout(&addr, webhook.timeout).map_err(io)?;
    stream.set_read_timeout(Some(webhook.timeout)).map_err(io)?;
    stream
        .set_write_timeout(Some(webhook.timeout))
        .map_err(io)?;
    let mut path = url.path().to_owned();
    if let Some(query) = url.query() {
        path.push('?');
        path.push_str(query);
    }
    let authority = match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    };
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nhost: {authority}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nuser-agent: gateway-webhooks\r\nx-gateway-event: {kind}\r\nx-gateway-delivery: {id}\r\nx-gateway-signature: {}\r\nconnection: close\r\n\r\n",
        body.len(),
        signature(webhook.secret.as_bytes(), unix_now(), body),
    )
    .into_bytes();
    request.extend_from_slice(body);
    let status = if url.scheme() == "https" {
        let config = crate::tls::client_config(webhook.ca_file.as_deref(), false)
            .map_err(|e| Failure::Io(e.to_string()))?;
        let name = rustls::pki_types::ServerName::try_from(host.to_owned())
            .map_err(|e| Failure::Io(e.to_string()))?;
        let connection =
            rustls::ClientConnection::new(config, name).map_err(|e| Failure::Io(e.to_string()))?;
        exchange(rustls::StreamOwned::new(connection, stream), &request)
    } else {
        exchange(stream, &request)
    }
    .map_err(io)?;
    if (200..300).contains(&status) {
        Ok(status)
    } else {
        Err(Failure::Status(status))
    }
}

/// Writes the request and reads the response's status.
fn exchange(mut stream: impl Read + Write, request: &[u8]) -> std::io::Result<u16> {
    stream.write_all(request)?;
    stream.flush()?;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 512];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.len() > 16 * 1024 {
            break;
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(&head) {
        Ok(_) => response
            .code
            .ok_or_else(|| std::io::Error::other("no status in the answer")),
        Err(e) => Err(std::io::Error::other(format!("invalid answer: {e}"))),
    }
}
