//! The developer portal: every route API consumers can call, with its methods, path,
//! the credentials it needs, its rate limit, the operations of its OpenAPI document when
//! the route names one, and a form that builds (and tries) the request. Rendered on the
//! server from the running snapshot; public, since it shows only what callers need.

use std::fmt::Write as _;

use serde_json::Value;

use crate::{
    auth::AuthMethod,
    config::{HostMatch, PathMatch, RouteConfig},
    proxy::Snapshot,
    ratelimit::LimitKey,
};

/// HTML-escapes `text`.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn path_of(route: &RouteConfig) -> (String, String) {
    match &route.path {
        PathMatch::Exact(p) => (p.clone(), p.clone()),
        PathMatch::Prefix(p) => (format!("{p}…"), p.clone()),
        PathMatch::Regex(re) => (format!("regex {}", re.as_str()), "/".into()),
    }
}

fn credentials(snapshot: &Snapshot, route: &RouteConfig) -> String {
    let auth = &snapshot.config.auth;
    if route.policy.auth.is_empty() {
        return "none (public)".into();
    }
    route
        .policy
        .auth
        .iter()
        .map(|m| match m {
            AuthMethod::Jwt(p) => format!("JWT bearer token ({})", auth.jwt[*p].name),
            AuthMethod::Introspection(p) => {
                format!("OAuth2 bearer token ({})", auth.introspection[*p].name)
            }
            AuthMethod::ApiKey => format!("API key in the {} header", auth.api_key_header),
        })
        .collect::<Vec<_>>()
        .join(" or ")
}

fn rate_limit(route: &RouteConfig) -> String {
    let Some(spec) = &route.policy.rate_limit else {
        return "none".into();
    };
    let per = spec.rate.per.as_secs_f64();
    let unit = match per {
        1.0 => "s".to_owned(),
        60.0 => "min".to_owned(),
        3600.0 => "h".to_owned(),
        other => format!("{other}s"),
    };
    let key = match &spec.key {
        LimitKey::ClientIp => "client address".to_owned(),
        LimitKey::Consumer => "consumer".to_owned(),
        LimitKey::Route => "whole route".to_owned(),
        LimitKey::Header(h) => format!("{h} header"),
        LimitKey::Claim(c) => format!("token claim {c}"),
    };
    match spec.mode {
        crate::ratelimit::LimitMode::Gcra => format!(
            "{}/{unit}, burst {}, per {key}",
            spec.rate.count, spec.rate.burst
        ),
        crate::ratelimit::LimitMode::SlidingWindow => format!(
            "{}/{unit} in any sliding window, per {key}",
            spec.rate.count
        ),
    }
}

/// Operations of an OpenAPI document: (method, path, summary).
fn operations(doc: &Value) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    if let Some(paths) = doc.get("paths").and_then(Value::as_object) {
        for (path, item) in paths {
            let Some(item) = item.as_object() else {
                continue;
            };
            for (method, op) in item {
                if ["get", "put", "post", "delete", "patch", "head", "options"]
                    .contains(&method.as_str())
                {
                    let summary = op
                        .get("summary")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned();
                    out.push((method.to_ascii_uppercase(), path.clone(), summary));
                }
            }
        }
    }
    out
}

/// The portal page; `base` is the public listener's URL for the try-it form.
pub fn page(snapshot: &Snapshot, base: &str) -> String {
    let mut html = String::from(PAGE_HEAD);
    let _ = write!(
        html,
        "<p>Base URL: <code id=\"base\">{}</code> · {} routes</p>",
        esc(base),
        snapshot.config.routes.len()
    );
    for route in &snapshot.config.routes {
        let (shown_path, example_path) = path_of(route);
        let methods = if route.methods.is_empty() {
            "any".to_owned()
        } else {
            route.methods.join(", ")
        };
        let host = match &route.host {
            None => "any".to_owned(),
            Some(HostMatch::Exact(h)) => h.clone(),
            Some(HostMatch::Suffix(s)) => format!("*{s}"),
        };
        let _ = write!(
            html,
            "<section class=\"route\" data-route=\"{name}\"><h2>{name}</h2><table>\
             <tr><th>methods</th><td>{methods}</td></tr>\
             <tr><th>path</th><td><code>{path}</code></td></tr>\
             <tr><th>host</th><td>{host}</td></tr>\
             <tr><th>credentials</th><td>{auth}</td></tr>",
            name = esc(&route.name),
            methods = esc(&methods),
            path = esc(&shown_path),
            host = esc(&host),
            auth = esc(&credentials(snapshot, route)),
        );
        if !route.policy.scopes.is_empty() {
            let _ = write!(
                html,
                "<tr><th>scopes</th><td>{}</td></tr>",
                esc(&route.policy.scopes.join(" "))
            );
        }
        let _ = write!(
            html,
            "<tr><th>rate limit</th><td>{}</td></tr></table>",
            esc(&rate_limit(route))
        );
        if let Some(doc) = &route.openapi {
            let _ = write!(
                html,
                "<h3>Operations ({})</h3><table class=\"ops\">",
                esc(doc
                    .get("info")
                    .and_then(|i| i.get("title"))
                    .and_then(Value::as_str)
                    .unwrap_or("OpenAPI"))
            );
            for (method, path, summary) in operations(doc) {
                let _ = write!(
                    html,
                    "<tr class=\"op\"><td><b>{}</b></td><td><code>{}</code></td><td>{}</td></tr>",
                    esc(&method),
                    esc(&path),
                    esc(&summary)
                );
            }
            html.push_str("</table>");
        }
        let method = route.methods.first().map_or("GET", String::as_str);
        let header = match route.policy.auth.first() {
            Some(AuthMethod::ApiKey) => {
                format!("{}: YOUR-KEY", snapshot.config.auth.api_key_header)
            }
            Some(_) => "Authorization: Bearer YOUR-TOKEN".into(),
            None => String::new(),
        };
        let _ = write!(
            html,
            "<form class=\"try\"><b>Try it</b> <input name=\"method\" value=\"{}\" size=\"7\"> \
             <input name=\"path\" value=\"{}\" size=\"30\"> <input name=\"header\" value=\"{}\" size=\"40\"> \
             <button type=\"submit\">send</button> <button type=\"button\" class=\"curl\">curl</button>\
             <pre class=\"out\"></pre></form></section>",
            esc(method),
            esc(&example_path),
            esc(&header)
        );
    }
    html.push_str(PAGE_TAIL);
    html
}

const PAGE_HEAD: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>API portal</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body { font: 14px system-ui, sans-serif; margin: 0 auto; max-width: 980px; padding: 20px; color: #1d2330; }
section { border: 1px solid #e3e6ec; border-radius: 6px; padding: 10px 16px; margin: 14px 0; }
h1 { font-size: 22px; } h2 { font-size: 17px; margin: 4px 0 8px; } h3 { font-size: 14px; }
th { text-align: left; color: #5b6475; font-weight: normal; padding-right: 16px; }
td, th { padding: 2px 8px 2px 0; vertical-align: top; }
pre { background: #f6f7f9; padding: 8px; white-space: pre-wrap; }
pre:empty { display: none; }
</style></head><body><h1>API portal</h1>
"#;

const PAGE_TAIL: &str = r#"<script>
"use strict";
const base = document.getElementById("base").textContent;
for (const form of document.querySelectorAll("form.try")) {
  const out = form.querySelector(".out");
  const parts = () => {
    const header = form.header.value.trim();
    return { method: form.method.value.trim().toUpperCase() || "GET", url: base + form.path.value, header };
  };
  form.querySelector(".curl").addEventListener("click", () => {
    const p = parts();
    out.textContent = `curl -i -X ${p.method} '${p.url}'` + (p.header ? ` -H '${p.header}'` : "");
  });
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const p = parts();
    const headers = {};
    if (p.header.includes(":")) headers[p.header.slice(0, p.header.indexOf(":")).trim()] = p.header.slice(p.header.indexOf(":") + 1).trim();
    try {
      const r = await fetch(p.url, { method: p.method, headers });
      out.textContent = `${r.status} ${r.statusText}\n` + (await r.text()).slice(0, 2000);
    } catch (err) {
      out.textContent = "the browser refused the request (" + err.message + "): the route may not allow this origin; use the curl command";
    }
  });
}
</script></body></html>
"#;
