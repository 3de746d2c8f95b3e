//! JSON ↔ SOAP: a route's JSON request becomes a SOAP 1.1 or 1.2 envelope around the
//! configured operation element, and the XML answer becomes JSON.
//!
//! XML to JSON follows the common convention: an element with only text becomes a string
//! (`xsi:nil="true"` becomes null), other elements become objects whose attributes are
//! `@name` members and whose mixed text is `#text`; an element name seen more than once
//! under the same parent becomes an array. Namespace prefixes are dropped (local names).
//! A SOAP fault becomes a problem: a client fault (`Client`, `Sender`) is 400, anything
//! else 502, with the fault string as its detail.

use quick_xml::{
    XmlVersion,
    events::{BytesStart, Event},
};
use serde_json::{Map, Value};

use super::{MediationError, Violation, params::Parameter};

/// Which SOAP envelope the upstream speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SoapVersion {
    V1_1,
    V1_2,
}

impl SoapVersion {
    fn envelope_namespace(self) -> &'static str {
        match self {
            Self::V1_1 => "http://schemas.xmlsoap.org/soap/envelope/",
            Self::V1_2 => "http://www.w3.org/2003/05/soap-envelope",
        }
    }
}

/// A route's SOAP operation.
#[derive(Debug)]
pub struct SoapCall {
    /// Upstream path the envelope is POSTed to; `None`: the route's own upstream path.
    pub endpoint: Option<String>,
    pub version: SoapVersion,
    /// The operation's SOAPAction (a header in 1.1, a content-type parameter in 1.2).
    pub action: Option<String>,
    /// The element the request's values are wrapped in.
    pub operation: String,
    /// The operation's namespace (the default namespace of the operation element).
    pub namespace: Option<String>,
    /// The operation's child elements, in order; empty: the JSON body's members.
    pub parameters: Vec<Parameter>,
    /// The Body's content written by the operator, `{name}` replaced by each value
    /// (text escaped; an object or array as elements); `None`: the operation element
    /// with one child per value.
    pub template: Option<Vec<TemplatePart>>,
    /// The member of the response element returned; empty: all of it.
    pub result: Vec<String>,
}

/// A piece of a SOAP body template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplatePart {
    Literal(String),
    /// `{name}`: a value by name.
    Value(String),
}

/// Splits a template at its `{name}` placeholders (names of letters, digits and `_`;
/// other braces are literal).
pub fn parse_template(template: &str) -> Vec<TemplatePart> {
    let mut parts = Vec::new();
    let mut literal = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let name_len = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        if name_len > 0 && after[name_len..].starts_with('}') {
            literal.push_str(&rest[..open]);
            if !literal.is_empty() {
                parts.push(TemplatePart::Literal(std::mem::take(&mut literal)));
            }
            parts.push(TemplatePart::Value(after[..name_len].to_owned()));
            rest = &after[name_len + 1..];
        } else {
            literal.push_str(&rest[..=open]);
            rest = after;
        }
    }
    literal.push_str(rest);
    if !literal.is_empty() {
        parts.push(TemplatePart::Literal(literal));
    }
    parts
}

/// Deepest element nesting accepted in either direction.
const MAX_DEPTH: usize = 64;

impl SoapCall {
    /// The request's header lines: content type, and SOAPAction for SOAP 1.1.
    pub fn header_lines(&self, out: &mut Vec<u8>) {
        match self.version {
            SoapVersion::V1_1 => {
                out.extend_from_slice(b"content-type: text/xml; charset=utf-8\r\nsoapaction: \"");
                out.extend_from_slice(self.action.as_deref().unwrap_or_default().as_bytes());
                out.extend_from_slice(b"\"\r\n");
            }
            SoapVersion::V1_2 => {
                out.extend_from_slice(b"content-type: application/soap+xml; charset=utf-8");
                if let Some(action) = &self.action {
                    out.extend_from_slice(b"; action=\"");
                    out.extend_from_slice(action.as_bytes());
                    out.push(b'"');
                }
                out.extend_from_slice(b"\r\n");
            }
        }
        out.extend_from_slice(b"accept: text/xml, application/soap+xml\r\n");
    }

    /// Writes the envelope holding `values` as the operation's child elements.
    pub fn envelope(
        &self,
        values: &Map<String, Value>,
        out: &mut Vec<u8>,
    ) -> Result<(), Vec<Violation>> {
        out.extend_from_slice(
            b"<?xml version=\"1.0\" encoding=\"utf-8\"?><soap:Envelope xmlns:soap=\"",
        );
        out.extend_from_slice(self.version.envelope_namespace().as_bytes());
        out.extend_from_slice(b"\"><soap:Body>");
        if let Some(template) = &self.template {
            let mut violations = Vec::new();
            for part in template {
                match part {
                    TemplatePart::Literal(text) => out.extend_from_slice(text.as_bytes()),
                    TemplatePart::Value(name) => match values.get(name) {
                        None | Some(Value::Null) => {}
                        Some(Value::String(s)) => {
                            out.extend_from_slice(quick_xml::escape::escape(s.as_str()).as_bytes());
                        }
                        Some(Value::Object(members)) => {
                            for (child, v) in members {
                                write_element(
                                    out,
                                    child,
                                    v,
                                    &mut format!("/{name}/{child}"),
                                    0,
                                    &mut violations,
                                );
                            }
                        }
                        Some(Value::Array(items)) => {
                            for (i, item) in items.iter().enumerate() {
                                write_element(
                                    out,
                                    "item",
                                    item,
                                    &mut format!("/{name}/{i}"),
                                    0,
                                    &mut violations,
                                );
                            }
                        }
                        Some(scalar) => out.extend_from_slice(scalar.to_string().as_bytes()),
                    },
                }
            }
            out.extend_from_slice(b"</soap:Body></soap:Envelope>");
            return if violations.is_empty() {
                Ok(())
            } else {
                Err(violations)
            };
        }
        out.push(b'<');
        out.extend_from_slice(self.operation.as_bytes());
        if let Some(namespace) = &self.namespace {
            out.extend_from_slice(b" xmlns=\"");
            out.extend_from_slice(quick_xml::escape::escape(namespace.as_str()).as_bytes());
            out.push(b'"');
        }
        out.push(b'>');
        let mut violations = Vec::new();
        for (name, value) in values {
            write_element(
                out,
                name,
                value,
                &mut format!("/{name}"),
                0,
                &mut violations,
            );
        }
        out.extend_from_slice(b"</");
        out.extend_from_slice(self.operation.as_bytes());
        out.extend_from_slice(b"></soap:Body></soap:Envelope>");
        if violations.is_empty() {
            Ok(())
        } else {
            Err(violations)
        }
    }

    /// The JSON answer to the upstream's `status` and XML `body`.
    pub fn response(&self, status: u16, body: &[u8]) -> Result<Value, MediationError> {
        let bad = |why: String| MediationError::BadUpstreamBody(format!("status {status}: {why}"));
        let text =
            std::str::from_utf8(body).map_err(|_| bad("the SOAP response is not UTF-8".into()))?;
        let root = parse(text).map_err(bad)?;
        if root.name != "Envelope" {
            return Err(bad(format!(
                "expected a SOAP Envelope, found <{}>",
                root.name
            )));
        }
        let content = root
            .child("Body")
            .and_then(|b| b.children.first())
            .ok_or_else(|| bad("the SOAP Body is empty".into()))?;
        if content.name == "Fault" {
            return Err(fault(content));
        }
        if !(200..300).contains(&status) {
            return Err(bad("the SOAP upstream failed without a fault".into()));
        }
        let value = content.to_json();
        match super::select(&value, &self.result) {
            Some(selected) => Ok(selected.clone()),
            None => Err(MediationError::ResultMissing(self.result.join("."))),
        }
    }
}

/// Whether `name` can be written as an (unprefixed) XML element name.
pub fn is_element_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_alphabetic() || c == '_')
        && chars.all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && !name.to_ascii_lowercase().starts_with("xml")
}

fn write_element(
    out: &mut Vec<u8>,
    name: &str,
    value: &Value,
    pointer: &mut String,
    depth: usize,
    violations: &mut Vec<Violation>,
) {
    if !is_element_name(name) {
        violations.push(Violation::new(
            pointer.clone(),
            "is not a valid XML element name",
        ));
        return;
    }
    if depth >= MAX_DEPTH {
        violations.push(Violation::new(pointer.clone(), "is nested too deeply"));
        return;
    }
    if let Value::Array(items) = value {
        for (i, item) in items.iter().enumerate() {
            let len = pointer.len();
            pointer.push_str(&format!("/{i}"));
            write_element(out, name, item, pointer, depth + 1, violations);
            pointer.truncate(len);
        }
        return;
    }
    out.push(b'<');
    out.extend_from_slice(name.as_bytes());
    out.push(b'>');
    match value {
        Value::Null | Value::Array(_) => {}
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Number(n) => out.extend_from_slice(n.to_string().as_bytes()),
        Value::String(s) => out.extend_from_slice(quick_xml::escape::escape(s.as_str()).as_bytes()),
        Value::Object(members) => {
            for (child, v) in members {
                let len = pointer.len();
                pointer.push('/');
                pointer.push_str(child);
                write_element(out, child, v, pointer, depth + 1, violations);
                pointer.truncate(len);
            }
        }
    }
    out.extend_from_slice(b"</");
    out.extend_from_slice(name.as_bytes());
    out.push(b'>');
}

/// One parsed XML element: local names only.
#[derive(Debug, Default)]
struct Element {
    name: String,
    attributes: Vec<(String, String)>,
    children: Vec<Element>,
    text: String,
}

impl Element {
    fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    fn child_text(&self, path: &[&str]) -> Option<&str> {
        let mut at = self;
        for step in path {
            at = at.child(step)?;
        }
        Some(at.text.trim())
    }

    fn is_nil(&self) -> bool {
        self.attributes
            .iter()
            .any(|(k, v)| k == "nil" && v == "true")
    }

    fn to_json(&self) -> Value {
        if self.is_nil() {
            return Value::Null;
        }
        let attributes = self.attributes.iter().filter(|(k, _)| k != "nil");
        if self.children.is_empty() && attributes.clone().next().is_none() {
            return Value::String(self.text.clone());
        }
        let mut object = Map::new();
        for (key, value) in attributes {
            object.insert(format!("@{key}"), Value::String(value.clone()));
        }
        for child in &self.children {
            let value = child.to_json();
            match object.get_mut(&child.name) {
                Some(Value::Array(items)) if self.repeats(&child.name) => items.push(value),
                Some(_) => {}
                None if self.repeats(&child.name) => {
                    object.insert(child.name.clone(), Value::Array(vec![value]));
                }
                None => {
                    object.insert(child.name.clone(), value);
                }
            }
        }
        if !self.text.trim().is_empty() {
            object.insert("#text".into(), Value::String(self.text.trim().to_owned()));
        }
        Value::Object(object)
    }

    /// Whether more than one child has this name (its values become an array).
    fn repeats(&self, name: &str) -> bool {
        self.children
            .iter()
            .filter(|c| c.name == name)
            .nth(1)
            .is_some()
    }
}

/// The problem a SOAP 1.1 (`faultcode`, `faultstring`, `detail`) or SOAP 1.2 (`Code`,
/// `Reason`, `Detail`) fault describes.
fn fault(fault: &Element) -> MediationError {
    let code = fault
        .child_text(&["faultcode"])
        .or_else(|| fault.child_text(&["Code", "Value"]))
        .unwrap_or_default();
    let message = fault
        .child_text(&["faultstring"])
        .or_else(|| fault.child_text(&["Reason", "Text"]))
        .unwrap_or("SOAP fault");
    let detail = fault
        .child("detail")
        .or_else(|| fault.child("Detail"))
        .map_or(Value::Null, Element::to_json);
    let local = code.rsplit(':').next().unwrap_or_default();
    let class = local.split('.').next().unwrap_or_default();
    let status = if matches!(class, "Client" | "Sender") {
        400
    } else {
        502
    };
    MediationError::SoapFault {
        status,
        code: local.to_owned(),
        message: message.to_owned(),
        detail,
    }
}

fn local_name(raw: &str) -> String {
    raw.rsplit(':').next().unwrap_or(raw).to_owned()
}

fn start_element(start: &BytesStart<'_>) -> Result<Element, String> {
    let mut attributes = Vec::new();
    for attribute in start.attributes() {
        let attribute = attribute.map_err(|e| format!("invalid attribute: {e}"))?;
        let key = attribute.key.as_ref();
        if key == "xmlns" || key.starts_with("xmlns:") {
            continue;
        }
        let value = attribute
            .normalized_value(XmlVersion::Implicit1_0)
            .map_err(|e| format!("invalid attribute value: {e}"))?;
        attributes.push((local_name(key), value.into_owned()));
    }
    Ok(Element {
        name: local_name(start.name().as_ref()),
        attributes,
        ..Element::default()
    })
}

/// Whether `fragment` is well-formed XML content (a template with its values left out).
pub fn check_fragment(fragment: &str) -> Result<(), String> {
    parse(&format!("<fragment>{fragment}</fragment>"))
        .map(|_| ())
        .map_err(|e| format!("the template is not well-formed XML: {e}"))
}

/// Parses a whole XML document into its root element.
fn parse(text: &str) -> Result<Element, String> {
    let mut reader = quick_xml::Reader::from_str(text);
    let mut stack: Vec<Element> = Vec::new();
    let mut root = None;
    let invalid = |e: quick_xml::Error| format!("invalid XML: {e}");
    loop {
        let event = reader.read_event().map_err(invalid)?;
        match event {
            Event::Start(start) => {
                if stack.len() >= MAX_DEPTH {
                    return Err("XML nested too deeply".into());
                }
                stack.push(start_element(&start)?);
            }
            Event::Empty(start) => {
                let element = start_element(&start)?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(element),
                    None => root = Some(element),
                }
            }
            Event::End(_) => {
                let element = stack.pop().ok_or("unbalanced XML")?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(element),
                    None => root = Some(element),
                }
            }
            Event::Text(text) => {
                if let Some(current) = stack.last_mut() {
                    current
                        .text
                        .push_str(&text.xml_content(XmlVersion::Implicit1_0));
                }
            }
            Event::CData(data) => {
                if let Some(current) = stack.last_mut() {
                    current.text.push_str(&data);
                }
            }
            Event::GeneralRef(reference) => {
                let resolved = match reference.resolve_char_ref().map_err(invalid)? {
                    Some(c) => c.to_string(),
                    None => quick_xml::escape::resolve_predefined_entity(&reference)
                        .ok_or_else(|| format!("unknown XML entity &{};", &*reference))?
                        .to_owned(),
                };
                if let Some(current) = stack.last_mut() {
                    current.text.push_str(&resolved);
                }
            }
            Event::DocType(_) => return Err("XML document types are not accepted".into()),
            Event::Eof => break,
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
        }
    }
    if !stack.is_empty() {
        return Err("the XML document ends inside an element".into());
    }
    root.ok_or_else(|| "the XML document has no element".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(version: SoapVersion, result: &str) -> SoapCall {
        SoapCall {
            endpoint: None,
            version,
            action: Some("urn:GetUser".into()),
            operation: "GetUser".into(),
            namespace: Some("urn:users".into()),
            parameters: Vec::new(),
            template: None,
            result: result
                .split('.')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
        }
    }

    #[test]
    fn envelopes_wrap_json_as_elements() {
        let values = serde_json::json!({"id": 7, "name": "a<b & \"c\"", "tags": ["x", "y"], "addr": {"zip": null}});
        let mut out = Vec::new();
        call(SoapVersion::V1_1, "")
            .envelope(values.as_object().expect("object"), &mut out)
            .expect("valid");
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            "<?xml version=\"1.0\" encoding=\"utf-8\"?><soap:Envelope xmlns:soap=\"http://schemas.xmlsoap.org/soap/envelope/\">\
             <soap:Body><GetUser xmlns=\"urn:users\"><id>7</id><name>a&lt;b &amp; &quot;c&quot;</name>\
             <tags>x</tags><tags>y</tags><addr><zip></zip></addr></GetUser></soap:Body></soap:Envelope>"
        );
        let mut out = Vec::new();
        let bad = serde_json::json!({"ok": 1, "1st": 2, "a": {"b c": 3}});
        let violations = call(SoapVersion::V1_2, "")
            .envelope(bad.as_object().expect("object"), &mut out)
            .expect_err("invalid names");
        let pointers: Vec<_> = violations.iter().map(|v| v.pointer.as_str()).collect();
        assert_eq!(pointers, ["/1st", "/a/b c"]);
    }

    #[test]
    fn templates_place_escaped_values_where_the_operator_wrote_them() {
        let parts = parse_template(
            "<q:Find xmlns:q=\"urn:q\"><q:who>{name}</q:who><q:n>{n}</q:n>{filter}{x-y}</q:Find>",
        );
        assert!(parts.contains(&TemplatePart::Literal("{x-y}</q:Find>".into())));
        let call = SoapCall {
            template: Some(parts),
            ..call(SoapVersion::V1_1, "")
        };
        let values = serde_json::json!({"name": "A & <B>", "n": 3, "filter": {"active": true}});
        let mut out = Vec::new();
        call.envelope(values.as_object().expect("object"), &mut out)
            .expect("valid");
        let text = String::from_utf8(out).expect("utf8");
        assert!(
            text.ends_with("<soap:Body><q:Find xmlns:q=\"urn:q\"><q:who>A &amp; &lt;B&gt;</q:who><q:n>3</q:n><active>true</active>{x-y}</q:Find></soap:Body></soap:Envelope>"),
            "{text}"
        );
    }

    #[test]
    fn responses_become_json_with_arrays_attributes_and_entities() {
        let xml = r#"<?xml version="1.0"?>
            <s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/">
              <s:Header><t:Trace xmlns:t="urn:t">1</t:Trace></s:Header>
              <s:Body>
                <u:GetUserResponse xmlns:u="urn:users">
                  <u:user id="7">
                    <u:name>Ann &amp; Bob &#x263A;</u:name>
                    <u:role>admin</u:role><u:role>ops</u:role>
                    <u:note><![CDATA[<raw>]]></u:note>
                    <u:manager xsi:nil="true" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"/>
                  </u:user>
                </u:GetUserResponse>
              </s:Body>
            </s:Envelope>"#;
        let got = call(SoapVersion::V1_1, "user")
            .response(200, xml.as_bytes())
            .expect("translated");
        assert_eq!(
            got,
            serde_json::json!({
                "@id": "7", "name": "Ann & Bob ☺", "role": ["admin", "ops"],
                "note": "<raw>", "manager": null
            })
        );
        let missing = call(SoapVersion::V1_1, "account").response(200, xml.as_bytes());
        assert_eq!(missing.expect_err("missing").status(), 404);
    }

    #[test]
    fn faults_map_to_client_or_upstream_errors() {
        let v11 = r#"<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body>
            <soap:Fault><faultcode>soap:Client.Validation</faultcode><faultstring>id must be positive</faultstring>
            <detail><field>id</field></detail></soap:Fault></soap:Body></soap:Envelope>"#;
        match call(SoapVersion::V1_1, "").response(500, v11.as_bytes()) {
            Err(MediationError::SoapFault {
                status,
                code,
                message,
                detail,
            }) => {
                assert_eq!(
                    (status, code.as_str(), message.as_str()),
                    (400, "Client.Validation", "id must be positive")
                );
                assert_eq!(detail, serde_json::json!({"field": "id"}));
            }
            other => panic!("{other:?}"),
        }
        let v12 = r#"<env:Envelope xmlns:env="http://www.w3.org/2003/05/soap-envelope"><env:Body><env:Fault>
            <env:Code><env:Value>env:Receiver</env:Value></env:Code>
            <env:Reason><env:Text xml:lang="en">database down</env:Text></env:Reason></env:Fault></env:Body></env:Envelope>"#;
        let error = call(SoapVersion::V1_2, "")
            .response(500, v12.as_bytes())
            .expect_err("fault");
        assert_eq!(
            (error.status(), error.to_string().as_str()),
            (502, "database down")
        );
    }

    #[test]
    fn malformed_and_hostile_xml_is_refused() {
        let deep = "<a>".repeat(100) + &"</a>".repeat(100);
        for body in [
            "not xml",
            "<a><b></a>",
            "<Envelope><Body></Body></Envelope>",
            "<x/>",
            r#"<!DOCTYPE a [<!ENTITY e "boom">]><Envelope><Body><r>&e;</r></Body></Envelope>"#,
            "<Envelope><Body><r>&unknown;</r></Body></Envelope>",
            deep.as_str(),
        ] {
            let error = call(SoapVersion::V1_1, "")
                .response(200, body.as_bytes())
                .expect_err(body);
            assert_eq!(error.status(), 502, "{body}");
        }
    }
}
