//! Header transformations of a route: names to remove, lines to add, and the value
//! templates those lines are rendered from (`"${client_ip}"`, `"v2-${route}"`).

use super::validate::{Problems, is_token};

/// A piece of request context a header value can carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Variable {
    ClientIp,
    Route,
    Consumer,
    Subject,
    RequestId,
    Host,
    Method,
    Path,
    /// A verified token claim (selected for identities at load).
    Claim(String),
}

/// One piece of a value template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Literal(String),
    Var(Variable),
}

/// A header value with `${variable}` placeholders, parsed once at load.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Template(pub Vec<Piece>);

/// What a route does to one side's headers: `remove` (lower-case names, which include
/// the names it sets) is applied first, then `lines` are added. A line whose value
/// renders empty (a variable the request does not have) is left out.
#[derive(Debug, Clone, Default)]
pub struct HeaderTransform {
    pub remove: Vec<String>,
    pub lines: Vec<(String, Template)>,
}

impl HeaderTransform {
    /// Whether the transform does nothing.
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.lines.is_empty()
    }

    /// Claims the templates read (so identities keep them).
    pub fn claims(&self) -> impl Iterator<Item = &String> {
        self.lines.iter().flat_map(|(_, t)| {
            t.0.iter().filter_map(|p| match p {
                Piece::Var(Variable::Claim(c)) => Some(c),
                _ => None,
            })
        })
    }
}

/// Headers a transform may not touch: framing and connection management stay the
/// gateway's.
const RESERVED: [&str; 8] = [
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
    "trailer",
    "keep-alive",
    "host",
];

/// Parses `"text ${variable} text"`.
pub fn parse_template(text: &str) -> Result<Template, String> {
    if text
        .chars()
        .any(|c| c.is_control() && c != '\t' || c == '\u{7f}')
    {
        return Err("a header value cannot hold control characters".into());
    }
    let mut pieces = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        if start > 0 {
            pieces.push(Piece::Literal(rest[..start].to_owned()));
        }
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unclosed \"${{\" in {text:?}"))?;
        let name = &after[..end];
        let variable = match name {
            "client_ip" => Variable::ClientIp,
            "route" => Variable::Route,
            "consumer" => Variable::Consumer,
            "subject" => Variable::Subject,
            "request_id" => Variable::RequestId,
            "host" => Variable::Host,
            "method" => Variable::Method,
            "path" => Variable::Path,
            _ => match name.strip_prefix("claim.") {
                Some(claim) if !claim.is_empty() => Variable::Claim(claim.to_owned()),
                _ => {
                    return Err(format!(
                        "unknown variable ${{{name}}}; known: client_ip, route, consumer, \
                         subject, request_id, host, method, path, claim.NAME"
                    ));
                }
            },
        };
        pieces.push(Piece::Var(variable));
        rest = &after[end + 1..];
    }
    if !rest.is_empty() {
        pieces.push(Piece::Literal(rest.to_owned()));
    }
    Ok(Template(pieces))
}

/// Validates `{ add, set, remove }` at `key`.
pub(super) fn validate_header_transform(
    key: &str,
    raw: &super::raw::RawHeaderTransform,
    problems: &mut Problems,
) -> HeaderTransform {
    let mut transform = HeaderTransform::default();
    let check_name = |what: &str, name: &str, problems: &mut Problems| -> Option<String> {
        let lower = name.to_ascii_lowercase();
        if !is_token(name) {
            problems.push(
                format!("{key}.{what}"),
                format!("invalid header name {name:?}"),
            );
            return None;
        }
        if RESERVED.contains(&lower.as_str()) {
            problems.push(
                format!("{key}.{what}"),
                format!("{name:?} is managed by the gateway and cannot be transformed"),
            );
            return None;
        }
        Some(lower)
    };
    for name in &raw.remove {
        if let Some(lower) = check_name("remove", name, problems) {
            transform.remove.push(lower);
        }
    }
    for (what, entries, replaces) in [("set", &raw.set, true), ("add", &raw.add, false)] {
        for (name, value) in entries {
            let Some(lower) = check_name(what, name, problems) else {
                continue;
            };
            match parse_template(value) {
                Ok(template) => {
                    if replaces && !transform.remove.contains(&lower) {
                        transform.remove.push(lower.clone());
                    }
                    transform.lines.push((lower, template));
                }
                Err(message) => problems.push(format!("{key}.{what}.{name}"), message),
            }
        }
    }
    transform
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_split_into_literals_and_variables() {
        assert_eq!(
            parse_template("v2-${route}/${claim.tenant}").expect("valid"),
            Template(vec![
                Piece::Literal("v2-".into()),
                Piece::Var(Variable::Route),
                Piece::Literal("/".into()),
                Piece::Var(Variable::Claim("tenant".into())),
            ])
        );
        assert_eq!(parse_template("").expect("valid"), Template(vec![]));
        assert!(parse_template("${nope}").is_err());
        assert!(parse_template("${route").is_err());
        assert!(parse_template("a\r\nb").is_err());
    }
}
