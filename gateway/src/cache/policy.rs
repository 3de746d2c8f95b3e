//! HTTP caching rules for a shared cache (RFC 9111): what the `Cache-Control`
//! directives of requests and responses say, whether a response may be stored, and how
//! long it stays fresh. Pure functions over parsed fields, so they are tested alone.

use std::time::{Duration, SystemTime};

use crate::http::{fields::Fields, trim_ows};

/// Response `Cache-Control` directives that matter to a shared cache.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ResponseDirectives {
    pub max_age: Option<u64>,
    pub s_maxage: Option<u64>,
    pub no_store: bool,
    pub no_cache: bool,
    pub private: bool,
    pub public: bool,
    pub must_revalidate: bool,
    pub stale_while_revalidate: Option<u64>,
    pub stale_if_error: Option<u64>,
}

/// Request `Cache-Control` directives the cache honours.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RequestDirectives {
    pub no_store: bool,
    pub no_cache: bool,
    pub max_age: Option<u64>,
}

/// Every `Cache-Control` directive of `fields` as (lower-case name, value).
fn directives(fields: &Fields) -> impl Iterator<Item = (&[u8], Option<&[u8]>)> {
    fields.get_all(b"cache-control").flat_map(|value| {
        value.split(|&b| b == b',').filter_map(|item| {
            let item = trim_ows(item);
            if item.is_empty() {
                return None;
            }
            Some(match memchr::memchr(b'=', item) {
                Some(eq) => {
                    let v = trim_ows(&item[eq + 1..]);
                    let v = v
                        .strip_prefix(b"\"")
                        .and_then(|v| v.strip_suffix(b"\""))
                        .unwrap_or(v);
                    (trim_ows(&item[..eq]), Some(v))
                }
                None => (item, None),
            })
        })
    })
}

fn seconds(value: Option<&[u8]>) -> Option<u64> {
    let text = std::str::from_utf8(value?).ok()?;
    // Values too large to represent are treated as "a very long time" (RFC 9111 §1.2.2).
    text.parse::<u64>().ok().or_else(|| {
        text.bytes()
            .all(|b| b.is_ascii_digit())
            .then_some(u64::from(u32::MAX))
    })
}

impl ResponseDirectives {
    /// The directives of a response's fields.
    pub fn parse(fields: &Fields) -> Self {
        let mut d = Self::default();
        for (name, value) in directives(fields) {
            let is = |n: &[u8]| name.eq_ignore_ascii_case(n);
            if is(b"max-age") {
                d.max_age = seconds(value);
            } else if is(b"s-maxage") {
                d.s_maxage = seconds(value);
            } else if is(b"no-store") {
                d.no_store = true;
            } else if is(b"no-cache") {
                d.no_cache = true;
            } else if is(b"private") {
                d.private = true;
            } else if is(b"public") {
                d.public = true;
            } else if is(b"must-revalidate") || is(b"proxy-revalidate") {
                d.must_revalidate = true;
            } else if is(b"stale-while-revalidate") {
                d.stale_while_revalidate = seconds(value);
            } else if is(b"stale-if-error") {
                d.stale_if_error = seconds(value);
            }
        }
        d
    }
}

impl RequestDirectives {
    /// The directives of a request's fields (`Pragma: no-cache` counts as `no-cache`).
    pub fn parse(fields: &Fields) -> Self {
        let mut d = Self::default();
        for (name, value) in directives(fields) {
            if name.eq_ignore_ascii_case(b"no-store") {
                d.no_store = true;
            } else if name.eq_ignore_ascii_case(b"no-cache") {
                d.no_cache = true;
            } else if name.eq_ignore_ascii_case(b"max-age") {
                d.max_age = seconds(value);
            }
        }
        if fields.get(b"cache-control").is_none()
            && fields
                .get_all(b"pragma")
                .any(|v| trim_ows(v).eq_ignore_ascii_case(b"no-cache"))
        {
            d.no_cache = true;
        }
        d
    }
}

/// An HTTP date field as a time.
pub fn date_field(fields: &Fields, name: &[u8]) -> Option<SystemTime> {
    let value = std::str::from_utf8(fields.get(name)?).ok()?;
    httpdate::parse_http_date(value.trim()).ok()
}

/// Whether a response to a GET may be stored by a shared cache, and for how long it is
/// fresh. `None`: not storable. Responses without explicit freshness use `default_ttl`
/// (zero: not stored). `no-cache` responses are stored with no freshness, so every use
/// revalidates them.
pub fn storable_freshness(
    status: u16,
    res: &ResponseDirectives,
    fields: &Fields,
    request_had_authorization: bool,
    default_ttl: Duration,
) -> Option<Duration> {
    const STATUSES: [u16; 10] = [200, 203, 204, 300, 301, 308, 404, 405, 410, 501];
    if !STATUSES.contains(&status) || res.no_store || res.private {
        return None;
    }
    // A shared cache must not reuse an answer to an authorized request unless the
    // response explicitly allows it (RFC 9111 §3.5).
    if request_had_authorization && !(res.public || res.s_maxage.is_some() || res.must_revalidate) {
        return None;
    }
    if fields
        .get_all(b"vary")
        .any(|v| v.split(|&b| b == b',').any(|t| trim_ows(t) == b"*"))
        || fields.get(b"set-cookie").is_some()
    {
        return None;
    }
    if res.no_cache {
        return Some(Duration::ZERO);
    }
    let explicit = res
        .s_maxage
        .or(res.max_age)
        .map(Duration::from_secs)
        .or_else(|| {
            let expires = date_field(fields, b"expires");
            let date = date_field(fields, b"date").unwrap_or_else(SystemTime::now);
            match (fields.get(b"expires"), expires) {
                // An invalid Expires means "already expired".
                (Some(_), None) => Some(Duration::ZERO),
                (_, Some(expires)) => Some(expires.duration_since(date).unwrap_or(Duration::ZERO)),
                (None, None) => None,
            }
        });
    match explicit {
        Some(lifetime) => Some(lifetime),
        None if !default_ttl.is_zero() => Some(default_ttl),
        None => None,
    }
}

/// The response's `Age` as the upstream reported it.
pub fn initial_age(fields: &Fields) -> Duration {
    Duration::from_secs(seconds(fields.get(b"age").map(trim_ows)).unwrap_or(0))
}

/// Whether a client's conditional GET (`If-None-Match`, else `If-Modified-Since`) is
/// satisfied by a cached response with these validators: the client's copy is current.
pub fn not_modified(request: &Fields, etag: Option<&[u8]>, last_modified: Option<&[u8]>) -> bool {
    if let Some(wanted) = request.get(b"if-none-match") {
        let Some(etag) = etag else {
            return false;
        };
        let weak = |t: &[u8]| t.strip_prefix(b"W/").unwrap_or(t).to_vec();
        let ours = weak(etag);
        return wanted.split(|&b| b == b',').any(|candidate| {
            let candidate = trim_ows(candidate);
            candidate == b"*" || weak(candidate) == ours
        });
    }
    let (Some(since), Some(modified)) = (
        date_field(request, b"if-modified-since"),
        last_modified
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| httpdate::parse_http_date(v.trim()).ok()),
    ) else {
        return false;
    };
    modified <= since
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::http::response::fields_of as fields;

    fn fresh_for(lines: &str, authorized: bool, default_ttl: u64) -> Option<u64> {
        let f = fields(lines);
        let d = ResponseDirectives::parse(&f);
        storable_freshness(200, &d, &f, authorized, Duration::from_secs(default_ttl))
            .map(|d| d.as_secs())
    }

    #[test]
    fn freshness_comes_from_s_maxage_max_age_expires_or_the_default() {
        assert_eq!(
            fresh_for("Cache-Control: max-age=60, s-maxage=30\r\n", false, 0),
            Some(30)
        );
        assert_eq!(
            fresh_for("Cache-Control: public, max-age=\"60\"\r\n", false, 0),
            Some(60)
        );
        assert_eq!(
            fresh_for(
                "Date: Sun, 06 Nov 1994 08:49:37 GMT\r\nExpires: Sun, 06 Nov 1994 08:50:37 GMT\r\n",
                false,
                0
            ),
            Some(60)
        );
        assert_eq!(
            fresh_for("Expires: 0\r\n", false, 100),
            Some(0),
            "invalid: expired"
        );
        assert_eq!(fresh_for("", false, 0), None);
        assert_eq!(fresh_for("", false, 15), Some(15));
        assert_eq!(fresh_for("Cache-Control: no-cache\r\n", false, 0), Some(0));
        assert_eq!(
            fresh_for("Cache-Control: max-age=99999999999999999999\r\n", false, 0),
            Some(u64::from(u32::MAX))
        );
    }

    #[test]
    fn what_a_shared_cache_must_not_store() {
        for lines in [
            "Cache-Control: no-store, max-age=60\r\n",
            "Cache-Control: private, max-age=60\r\n",
            "Cache-Control: max-age=60\r\nVary: *\r\n",
            "Cache-Control: max-age=60\r\nSet-Cookie: a=b\r\n",
        ] {
            assert_eq!(fresh_for(lines, false, 60), None, "{lines}");
        }
        assert_eq!(fresh_for("Cache-Control: max-age=60\r\n", true, 0), None);
        assert_eq!(
            fresh_for("Cache-Control: public, max-age=60\r\n", true, 0),
            Some(60)
        );
        assert_eq!(
            fresh_for("Cache-Control: s-maxage=60\r\n", true, 0),
            Some(60)
        );
        let f = fields("Cache-Control: max-age=60\r\n");
        let d = ResponseDirectives::parse(&f);
        assert_eq!(storable_freshness(500, &d, &f, false, Duration::ZERO), None);
        assert_eq!(
            storable_freshness(404, &d, &f, false, Duration::ZERO),
            Some(Duration::from_secs(60))
        );
    }

    #[test]
    fn stale_extensions_and_request_directives() {
        let f =
            fields("Cache-Control: max-age=1, stale-while-revalidate=30, stale-if-error=600\r\n");
        let d = ResponseDirectives::parse(&f);
        assert_eq!(
            (d.stale_while_revalidate, d.stale_if_error),
            (Some(30), Some(600))
        );
        let r = RequestDirectives::parse(&fields("Cache-Control: no-cache, max-age=0\r\n"));
        assert!(r.no_cache && r.max_age == Some(0) && !r.no_store);
        assert!(RequestDirectives::parse(&fields("Pragma: no-cache\r\n")).no_cache);
        assert_eq!(initial_age(&fields("Age: 12\r\n")), Duration::from_secs(12));
    }

    #[test]
    fn conditional_requests_match_validators() {
        let etag = Some(&b"\"v1\""[..]);
        assert!(not_modified(
            &fields("If-None-Match: \"v0\", \"v1\"\r\n"),
            etag,
            None
        ));
        assert!(not_modified(
            &fields("If-None-Match: W/\"v1\"\r\n"),
            etag,
            None
        ));
        assert!(!not_modified(
            &fields("If-None-Match: \"v2\"\r\n"),
            etag,
            None
        ));
        assert!(not_modified(&fields("If-None-Match: *\r\n"), etag, None));
        let modified = Some(&b"Sun, 06 Nov 1994 08:49:37 GMT"[..]);
        assert!(not_modified(
            &fields("If-Modified-Since: Sun, 06 Nov 1994 08:49:37 GMT\r\n"),
            None,
            modified
        ));
        assert!(!not_modified(
            &fields("If-Modified-Since: Sun, 06 Nov 1994 08:00:00 GMT\r\n"),
            None,
            modified
        ));
    }
}
