//! Turning an upstream response into a [`Stored`] one, and refreshing a stored response
//! after a `304 Not Modified`.

use std::{
    rc::Rc,
    time::{Duration, Instant},
};

use super::{
    policy::{ResponseDirectives, initial_age, storable_freshness},
    store::Stored,
};
use crate::{
    config::RouteCache,
    http::{fields::Fields, response::ResponseHead, trim_ows},
};

/// What the request contributes to a stored response.
pub struct RequestSide<'a> {
    pub key: &'a [u8],
    pub fields: &'a Fields,
    pub authorization: bool,
}

/// The stale windows of a response: its own directives, else the route's defaults.
fn stale_windows(d: &ResponseDirectives, route: &RouteCache) -> (Duration, Duration) {
    (
        d.stale_while_revalidate
            .map_or(route.stale_while_revalidate, Duration::from_secs),
        d.stale_if_error
            .map_or(route.stale_if_error, Duration::from_secs),
    )
}

/// A storable response as a [`Stored`] one (`None` when the rules forbid storing it).
pub fn stored_response(
    request: &RequestSide<'_>,
    response: &ResponseHead,
    body: Vec<u8>,
    route: &RouteCache,
) -> Option<Stored> {
    let fields = &response.fields;
    let directives = ResponseDirectives::parse(fields);
    let freshness = storable_freshness(
        response.status,
        &directives,
        fields,
        request.authorization,
        route.default_ttl,
    )?;
    let mut vary = Vec::new();
    for value in fields.get_all(b"vary") {
        for name in value.split(|&b| b == b',') {
            let name = String::from_utf8_lossy(trim_ows(name)).to_ascii_lowercase();
            if !name.is_empty() && !vary.iter().any(|(n, _)| *n == name) {
                let wanted = request.fields.get(name.as_bytes()).map(<[u8]>::to_vec);
                vary.push((name, wanted));
            }
        }
    }
    let mut head = Vec::with_capacity(fields.raw.len());
    for i in 0..fields.len() {
        if fields.forwarded(i) && !fields.name(i).eq_ignore_ascii_case(b"age") {
            head.extend_from_slice(fields.name(i));
            head.extend_from_slice(b": ");
            head.extend_from_slice(fields.value(i));
            head.extend_from_slice(b"\r\n");
        }
    }
    let (stale_while_revalidate, stale_if_error) = stale_windows(&directives, route);
    Some(Stored {
        key: Rc::from(request.key),
        vary,
        status: response.status,
        head: Rc::from(head),
        body: Rc::from(body),
        stored_at: Instant::now(),
        initial_age: initial_age(fields),
        freshness,
        stale_while_revalidate,
        stale_if_error,
        must_revalidate: directives.must_revalidate || directives.no_cache,
        etag: fields.get(b"etag").map(<[u8]>::to_vec),
        last_modified: fields.get(b"last-modified").map(<[u8]>::to_vec),
    })
}

/// `stored` made fresh again by a `304` whose fields are `fields`: its freshness from
/// the 304's directives when it states any, its own otherwise; its body stays.
pub fn refreshed(stored: &Stored, fields: &Fields, route: &RouteCache) -> Stored {
    let directives = ResponseDirectives::parse(fields);
    let freshness = storable_freshness(200, &directives, fields, false, Duration::ZERO)
        .unwrap_or(stored.freshness);
    let (stale_while_revalidate, stale_if_error) = if fields.get(b"cache-control").is_some() {
        stale_windows(&directives, route)
    } else {
        (stored.stale_while_revalidate, stored.stale_if_error)
    };
    Stored {
        key: stored.key.clone(),
        vary: stored.vary.clone(),
        status: stored.status,
        head: stored.head.clone(),
        body: stored.body.clone(),
        stored_at: Instant::now(),
        initial_age: initial_age(fields),
        freshness,
        stale_while_revalidate,
        stale_if_error,
        must_revalidate: stored.must_revalidate,
        etag: fields
            .get(b"etag")
            .map(<[u8]>::to_vec)
            .or_else(|| stored.etag.clone()),
        last_modified: stored.last_modified.clone(),
    }
}

/// The conditional-request lines that revalidate `stored`.
pub fn validators(stored: &Stored, out: &mut Vec<u8>) {
    if let Some(etag) = &stored.etag {
        out.extend_from_slice(b"if-none-match: ");
        out.extend_from_slice(etag);
        out.extend_from_slice(b"\r\n");
    }
    if let Some(modified) = &stored.last_modified {
        out.extend_from_slice(b"if-modified-since: ");
        out.extend_from_slice(modified);
        out.extend_from_slice(b"\r\n");
    }
}
