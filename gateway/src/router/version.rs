//! API versions: where a request says which version it wants (its first path segment
//! `/v2`, a header, or the `Accept` media type's `version` parameter or `vnd.….v2`
//! subtype), so routes for the same path can serve different versions.

use crate::{
    config::{VersionConfig, VersionSource},
    http::{request::RequestHead, trim_ows},
};

/// Whether `req` asks for the route's version.
pub fn matches(version: &VersionConfig, req: &RequestHead) -> bool {
    let wanted = version.value.as_bytes();
    match &version.from {
        VersionSource::Path => {
            path_version(req.routing_path()).is_some_and(|v| v.eq_ignore_ascii_case(wanted))
        }
        VersionSource::Header(name) => req
            .fields
            .get(name.as_bytes())
            .is_some_and(|v| trim_ows(v).eq_ignore_ascii_case(wanted)),
        VersionSource::Accept => req
            .fields
            .get_all(b"accept")
            .flat_map(|value| value.split(|&b| b == b','))
            .any(|range| accept_version(range).is_some_and(|v| v.eq_ignore_ascii_case(wanted))),
    }
}

/// `/v2/users` → `2`.
pub fn path_version(path: &[u8]) -> Option<&[u8]> {
    let rest = path.strip_prefix(b"/")?;
    let segment = &rest[..memchr::memchr(b'/', rest).unwrap_or(rest.len())];
    segment
        .strip_prefix(b"v")
        .or_else(|| segment.strip_prefix(b"V"))
        .filter(|v| !v.is_empty())
}

/// The version one media range names: its `version` (or `v`) parameter, or a vendor
/// subtype ending in `.v2` (before any `+json` suffix).
fn accept_version(range: &[u8]) -> Option<&[u8]> {
    let mut parts = range.split(|&b| b == b';');
    let media = trim_ows(parts.next()?);
    for param in parts {
        let param = trim_ows(param);
        let Some(eq) = memchr::memchr(b'=', param) else {
            continue;
        };
        let (name, value) = (trim_ows(&param[..eq]), trim_ows(&param[eq + 1..]));
        if name.eq_ignore_ascii_case(b"version") || name.eq_ignore_ascii_case(b"v") {
            let value = value
                .strip_prefix(b"\"")
                .and_then(|v| v.strip_suffix(b"\""))
                .unwrap_or(value);
            return Some(value);
        }
    }
    let subtype = &media[memchr::memchr(b'/', media)? + 1..];
    if !subtype.starts_with(b"vnd.") {
        return None;
    }
    let subtype = &subtype[..memchr::memchr(b'+', subtype).unwrap_or(subtype.len())];
    let last = &subtype[memchr::memrchr(b'.', subtype)? + 1..];
    last.strip_prefix(b"v").filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_versions_in_paths_and_media_types() {
        assert_eq!(path_version(b"/v2/users"), Some(&b"2"[..]));
        assert_eq!(path_version(b"/v10"), Some(&b"10"[..]));
        assert_eq!(path_version(b"/users"), None);
        assert_eq!(path_version(b"/v/x"), None);
        assert_eq!(
            accept_version(b"application/json; version=2"),
            Some(&b"2"[..])
        );
        assert_eq!(accept_version(b"application/json;v=\"3\""), Some(&b"3"[..]));
        assert_eq!(
            accept_version(b" application/vnd.acme.v2+json"),
            Some(&b"2"[..])
        );
        assert_eq!(accept_version(b"application/vnd.acme.v4"), Some(&b"4"[..]));
        assert_eq!(accept_version(b"application/json"), None);
        assert_eq!(accept_version(b"text/html;q=0.9"), None);
    }
}
