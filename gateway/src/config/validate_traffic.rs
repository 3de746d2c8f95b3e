//! Validation of traffic management: each route's timeouts and retry policy, and each
//! upstream's circuit breakers and retry budget.

use super::{
    RetryBudgetConfig, RetryPolicy, RouteTraffic,
    raw::{RawRetry, RawRetryBudget, RawRoute, RawUpstream},
    validate::Problems,
};

/// The route's `retry`, `timeout` and `per_try_timeout`.
pub(super) fn validate_route_traffic(
    key: &str,
    r: &RawRoute,
    problems: &mut Problems,
) -> RouteTraffic {
    for (name, value) in [
        ("timeout", r.timeout),
        ("per_try_timeout", r.per_try_timeout),
    ] {
        if value.is_some_and(|d| d.is_zero()) {
            problems.push(format!("{key}.{name}"), "must be greater than zero");
        }
    }
    if let (Some(total), Some(per_try)) = (r.timeout, r.per_try_timeout)
        && per_try > total
    {
        problems.push(
            format!("{key}.per_try_timeout"),
            "longer than the route's total timeout; it could never fire",
        );
    }
    RouteTraffic {
        retry: r
            .retry
            .as_ref()
            .map(|retry| validate_retry(&format!("{key}.retry"), retry, problems))
            .unwrap_or_default(),
        timeout: r.timeout,
        per_try_timeout: r.per_try_timeout,
    }
}

fn validate_retry(key: &str, raw: &RawRetry, problems: &mut Problems) -> RetryPolicy {
    if !(1..=10).contains(&raw.attempts) {
        problems.push(
            format!("{key}.attempts"),
            "between 1 (no retries) and 10 tries",
        );
    }
    if raw.max_backoff < raw.backoff {
        problems.push(
            format!("{key}.max_backoff"),
            "must be at least the base backoff",
        );
    }
    let mut policy = RetryPolicy {
        attempts: raw.attempts.clamp(1, 10),
        on_connect_failure: false,
        on_reset: false,
        on_timeout: false,
        on_statuses: Vec::new(),
        non_idempotent: raw.non_idempotent,
        backoff: raw.backoff,
        max_backoff: raw.max_backoff,
    };
    for (i, condition) in raw.on.iter().enumerate() {
        match condition.as_str() {
            "connect_failure" => policy.on_connect_failure = true,
            "reset" => policy.on_reset = true,
            "timeout" => policy.on_timeout = true,
            status => match status.parse::<u16>() {
                Ok(code @ 400..=599) => policy.on_statuses.push(code),
                _ => problems.push(
                    format!("{key}.on[{i}]"),
                    format!(
                        "unknown retry condition {condition:?}; write \"connect_failure\", \
                         \"reset\", \"timeout\" or a status such as \"503\""
                    ),
                ),
            },
        }
    }
    policy
}

/// The upstream's `max_connections`, `max_pending` and `retry_budget`.
pub(super) fn validate_circuit(
    key: &str,
    u: &RawUpstream,
    problems: &mut Problems,
) -> RetryBudgetConfig {
    if u.max_connections == Some(0) {
        problems.push(format!("{key}.max_connections"), "must be at least 1");
    }
    let RawRetryBudget {
        ratio,
        min_per_second,
    } = u.retry_budget;
    if !(0.0..=10.0).contains(&ratio) {
        problems.push(
            format!("{key}.retry_budget.ratio"),
            "a share of requests between 0 and 10",
        );
    }
    if !(0.0..=1_000_000.0).contains(&min_per_second) {
        problems.push(
            format!("{key}.retry_budget.min_per_second"),
            "between 0 and 1000000",
        );
    }
    RetryBudgetConfig {
        ratio,
        min_per_second,
    }
}
