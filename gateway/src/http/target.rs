//! Request-target normalization, done once per request; the normalized path is both what
//! routes match and what is forwarded (after a route's own rewrite).
//!
//! The rule, in order:
//! 1. The path must start with `/` (origin-form; absolute-form is reduced to it first).
//! 2. Percent-escapes must be two hex digits. Escapes of unreserved characters
//!    (`A-Z a-z 0-9 - . _ ~`) are decoded; other escapes are kept with upper-case hex.
//! 3. `%2F` (`/`), `%5C` (`\`) and `%00` are rejected: backends disagree on whether they
//!    separate segments, so they are the classic way around path-based routing.
//!    A raw `\`, `#`, control bytes and non-ASCII bytes are rejected too.
//! 4. Empty segments (`//`) are merged, `.` and `..` segments removed as RFC 3986
//!    §5.2.4 does (`..` never climbs above `/`); a trailing `/` is kept.
//! 5. A `;` starts a segment's parameters (RFC 3986 §3.3). Many backends (Tomcat, Jetty,
//!    Spring) drop them before resolving the path, so `..;x` and `.;x` are dot segments
//!    there: they are refused here. Routes match the path with every segment's
//!    parameters removed ([`strip_parameters_into`]); the path is forwarded with them.

use super::{FramingError, hex_value};

const AMBIGUOUS: FramingError = FramingError::Malformed("ambiguous percent-encoding in path");
const BAD_ESCAPE: FramingError = FramingError::Malformed("invalid percent-encoding in path");
const BAD_BYTE: FramingError = FramingError::Malformed("invalid character in path");
const DOT_PARAMETERS: FramingError =
    FramingError::Malformed("a dot segment with parameters (..;) in path");

/// Writes the normalized `path` without its segments' `;parameters` into `out`: what
/// routes match, so `/admin;x` is routed as `/admin` (as such backends resolve it).
pub fn strip_parameters_into(path: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.push(b'/');
    let segments = path
        .strip_prefix(b"/")
        .unwrap_or(path)
        .split(|&b| b == b'/');
    for segment in segments {
        let name = &segment[..memchr::memchr(b';', segment).unwrap_or(segment.len())];
        // A segment that was all parameters leaves nothing (as `//` would not).
        if name.is_empty() {
            continue;
        }
        if out.last() != Some(&b'/') {
            out.push(b'/');
        }
        out.extend_from_slice(name);
    }
    if path.ends_with(b"/") && out.last() != Some(&b'/') {
        out.push(b'/');
    }
}

/// Normalizes `input` (the path, without query) into `out`.
pub fn normalize_path_into(input: &[u8], out: &mut Vec<u8>) -> Result<(), FramingError> {
    if input.first() != Some(&b'/') {
        return Err(FramingError::Malformed("path must start with '/'"));
    }
    out.clear();
    out.push(b'/');
    let mut trailing_slash = false;
    for raw_segment in input[1..].split(|&b| b == b'/') {
        if raw_segment.is_empty() {
            trailing_slash = true;
            continue;
        }
        let mark = out.len();
        if out.last() != Some(&b'/') {
            out.push(b'/');
        }
        let start = out.len();
        decode_segment(raw_segment, out)?;
        let name = match memchr::memchr(b';', &out[start..]) {
            Some(semicolon) => &out[start..start + semicolon],
            None => &out[start..],
        };
        if name.len() < out.len() - start && matches!(name, b"." | b"..") {
            return Err(DOT_PARAMETERS);
        }
        match &out[start..] {
            b"." => {
                out.truncate(mark);
                trailing_slash = true;
            }
            b".." => {
                out.truncate(mark);
                pop_segment(out);
                trailing_slash = true;
            }
            _ => trailing_slash = false,
        }
    }
    if trailing_slash && out.last() != Some(&b'/') {
        out.push(b'/');
    }
    Ok(())
}

/// Allocating convenience around [`normalize_path_into`].
pub fn normalize_path(input: &[u8]) -> Result<Vec<u8>, FramingError> {
    let mut out = Vec::with_capacity(input.len());
    normalize_path_into(input, &mut out)?;
    Ok(out)
}

fn pop_segment(out: &mut Vec<u8>) {
    if let Some(slash) = out.iter().rposition(|&b| b == b'/') {
        out.truncate(slash.max(1));
    }
    if out.is_empty() {
        out.push(b'/');
    }
}

fn decode_segment(segment: &[u8], out: &mut Vec<u8>) -> Result<(), FramingError> {
    let mut i = 0;
    while i < segment.len() {
        let b = segment[i];
        match b {
            b'%' => {
                let (Some(hi), Some(lo)) = (
                    segment.get(i + 1).and_then(|&h| hex_value(h)),
                    segment.get(i + 2).and_then(|&l| hex_value(l)),
                ) else {
                    return Err(BAD_ESCAPE);
                };
                let decoded = hi << 4 | lo;
                match decoded {
                    b'/' | b'\\' | 0 => return Err(AMBIGUOUS),
                    c if is_unreserved(c) => out.push(c),
                    c => out.extend_from_slice(&[
                        b'%',
                        HEX_UPPER[(c >> 4) as usize],
                        HEX_UPPER[(c & 15) as usize],
                    ]),
                }
                i += 3;
            }
            b'\\' | b'#' | 0..=0x20 | 0x7F..=0xFF => return Err(BAD_BYTE),
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    Ok(())
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// The raw (still percent-encoded) value of the first query parameter `name`.
pub fn query_param<'a>(query: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    query.split(|&b| b == b'&').find_map(|pair| {
        let (key, value) = match memchr::memchr(b'=', pair) {
            Some(eq) => (&pair[..eq], &pair[eq + 1..]),
            None => (pair, &b""[..]),
        };
        (key == name).then_some(value)
    })
}

/// Appends `query` without its `name` parameters (for stripping credentials).
pub fn query_without(query: &[u8], name: &[u8], out: &mut Vec<u8>) {
    for pair in query.split(|&b| b == b'&') {
        let key = memchr::memchr(b'=', pair).map_or(pair, |eq| &pair[..eq]);
        if key == name || pair.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push(b'&');
        }
        out.extend_from_slice(pair);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn query_parameters_are_found_and_stripped() {
        let query = b"a=1&token=abc&b&token=zzz";
        assert_eq!(super::query_param(query, b"token"), Some(&b"abc"[..]));
        assert_eq!(super::query_param(query, b"b"), Some(&b""[..]));
        assert_eq!(super::query_param(query, b"c"), None);
        let mut out = Vec::new();
        super::query_without(query, b"token", &mut out);
        assert_eq!(out, b"a=1&b");
    }

    use proptest::prelude::*;

    use super::*;

    fn norm(s: &str) -> Result<String, FramingError> {
        normalize_path(s.as_bytes()).map(|v| String::from_utf8(v).expect("ascii"))
    }

    #[test]
    fn normalizes_the_documented_cases() {
        for (input, expected) in [
            ("/", "/"),
            ("/a/b", "/a/b"),
            ("/a//b", "/a/b"),
            ("//a", "/a"),
            ("/a/./b", "/a/b"),
            ("/a/../b", "/b"),
            ("/../../a", "/a"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/a/", "/a/"),
            ("/%61%62c", "/abc"),
            ("/%2e%2e/secret", "/secret"),
            ("/a/%2E%2E/b", "/b"),
            ("/a%20b", "/a%20b"),
            ("/a%3fb", "/a%3Fb"),
            ("/~user/", "/~user/"),
        ] {
            assert_eq!(norm(input).as_deref(), Ok(expected), "input {input:?}");
        }
    }

    #[test]
    fn routes_see_the_path_without_segment_parameters() {
        for (input, expected) in [
            ("/admin;x", "/admin"),
            ("/admin;jsessionid=1/users;v=2", "/admin/users"),
            ("/a;/b;", "/a/b"),
            ("/;x/a", "/a"),
            ("/a/;x", "/a"),
            ("/a/b;x/", "/a/b/"),
            ("/plain/path/", "/plain/path/"),
        ] {
            let mut out = Vec::new();
            super::strip_parameters_into(input.as_bytes(), &mut out);
            assert_eq!(out, expected.as_bytes(), "input {input:?}");
        }
    }

    #[test]
    fn rejects_ambiguous_and_broken_paths() {
        for input in [
            "",
            "a/b",
            "/a%2Fb",
            "/a%2fb",
            "/a%5Cb",
            "/a%00",
            "/a\\b",
            "/%",
            "/%4",
            "/%zz",
            "/a#b",
            "/a b",
            "/a/..;/b",
            "/a/.;x/b",
            "/..;",
            "/a/%2e%2e;x/b",
        ] {
            assert!(norm(input).is_err(), "input {input:?} must be rejected");
        }
    }

    proptest! {
        #[test]
        fn normalization_is_idempotent(path in "/[a-zA-Z0-9._~%/-]{0,40}") {
            if let Ok(once) = normalize_path(path.as_bytes()) {
                let twice = normalize_path(&once).expect("a normalized path stays valid");
                prop_assert_eq!(&once, &twice);
                prop_assert!(!once.windows(2).any(|w| w == b"//"));
                let text = String::from_utf8(once).expect("ascii");
                prop_assert!(!text.split('/').any(|s| s == "." || s == ".."));
            }
        }
    }
}
