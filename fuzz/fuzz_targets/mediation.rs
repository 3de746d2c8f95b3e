//! Mediation over hostile upstream answers and request bodies: arbitrary bytes as a SOAP
//! response (XML → JSON, faults), as a GraphQL response, and as a JSON body run through
//! edits and a SOAP envelope. Never panics; an accepted answer is JSON that serializes,
//! and every refusal maps to a 4xx or 5xx.
#![no_main]

use gateway::mediate::{
    graphql::GraphqlCall,
    json_edit::{JsonEdits, Pointer},
    soap::{SoapCall, SoapVersion},
};
use libfuzzer_sys::fuzz_target;

fn pointer(text: &str) -> Pointer {
    Pointer::parse(text).expect("fixed pointer")
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let status = [200, 201, 400, 500, 503][usize::from(selector) % 5];
    let soap = SoapCall {
        endpoint: None,
        version: if selector & 0x80 == 0 {
            SoapVersion::V1_1
        } else {
            SoapVersion::V1_2
        },
        action: Some("urn:a".into()),
        operation: "Op".into(),
        namespace: Some("urn:ns".into()),
        parameters: Vec::new(),
        template: None,
        result: if selector & 0x40 == 0 {
            Vec::new()
        } else {
            vec!["item".into(), "0".into()]
        },
    };
    match soap.response(status, body) {
        Ok(value) => assert!(serde_json::to_vec(&value).is_ok()),
        Err(error) => assert!((400..600).contains(&error.status()), "{error:?}"),
    }
    let graphql = GraphqlCall::new(
        "/graphql".into(),
        "{ a }",
        None,
        Vec::new(),
        vec!["a".into()],
    );
    match graphql.response(status, body) {
        Ok(value) => assert!(serde_json::to_vec(&value).is_ok()),
        Err(error) => assert!((400..600).contains(&error.status()), "{error:?}"),
    }
    if let Ok(mut document) = serde_json::from_slice::<serde_json::Value>(body) {
        let edits = JsonEdits {
            remove: vec![pointer("/a/0"), pointer("/b")],
            rename: vec![(pointer("/c"), "d".into()), (pointer("/e/f"), "c".into())],
            moves: vec![
                (pointer("/d"), pointer("/x/y/z")),
                (pointer("/a"), pointer("/a/-")),
            ],
            add: vec![
                (pointer("/x/-"), 1.into()),
                (pointer("/0/1"), serde_json::Value::Null),
            ],
        };
        edits.apply(&mut document);
        assert!(serde_json::to_vec(&document).is_ok());
        if let serde_json::Value::Object(members) = &document {
            let mut envelope = Vec::new();
            if soap.envelope(members, &mut envelope).is_ok() {
                assert!(std::str::from_utf8(&envelope).is_ok());
            }
        }
    }
});
