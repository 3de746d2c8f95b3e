//! Edits to JSON bodies by route: remove, rename, move and add members addressed by JSON
//! pointers (RFC 6901). Edits run in that order, each list in config order; an edit
//! whose source is absent does nothing, so one route can serve several body shapes.
//! Member order is kept (a renamed member stays where it was; added ones go last).

use serde_json::{Map, Value};

/// A parsed JSON pointer: its reference tokens, unescaped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pointer(Vec<String>);

impl Pointer {
    /// Parses `/a/b~1c` (the empty string is the whole document, which edits refuse).
    pub fn parse(text: &str) -> Option<Self> {
        let rest = text.strip_prefix('/')?;
        Some(Self(
            rest.split('/')
                .map(|t| t.replace("~1", "/").replace("~0", "~"))
                .collect(),
        ))
    }

    fn split_last(&self) -> (&[String], &str) {
        match self.0.split_last() {
            Some((last, parents)) => (parents, last),
            None => (&[], ""),
        }
    }
}

/// The edits of one direction of a route.
#[derive(Debug, Clone, Default)]
pub struct JsonEdits {
    pub remove: Vec<Pointer>,
    /// (member, its new name in the same object).
    pub rename: Vec<(Pointer, String)>,
    /// (from, to).
    pub moves: Vec<(Pointer, Pointer)>,
    /// (where, value): set, replacing what is there, creating objects on the way.
    pub add: Vec<(Pointer, Value)>,
}

impl JsonEdits {
    /// Applies every edit to `document`.
    pub fn apply(&self, document: &mut Value) {
        for pointer in &self.remove {
            take(document, pointer);
        }
        for (pointer, new_name) in &self.rename {
            let (parents, last) = pointer.split_last();
            if let Some(Value::Object(map)) = walk(document, parents)
                && map.contains_key(last)
                && last != new_name
            {
                *map = std::mem::take(map)
                    .into_iter()
                    .filter(|(k, _)| k != new_name)
                    .map(|(k, v)| {
                        if k == last {
                            (new_name.clone(), v)
                        } else {
                            (k, v)
                        }
                    })
                    .collect();
            }
        }
        for (from, to) in &self.moves {
            if let Some(value) = take(document, from) {
                put(document, to, value);
            }
        }
        for (pointer, value) in &self.add {
            put(document, pointer, value.clone());
        }
    }
}

/// The value at `tokens` below `at`, if present.
fn walk<'a>(mut at: &'a mut Value, tokens: &[String]) -> Option<&'a mut Value> {
    for token in tokens {
        at = match at {
            Value::Object(map) => map.get_mut(token)?,
            Value::Array(items) => items.get_mut(token.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(at)
}

/// Removes and returns the value at `pointer`.
fn take(document: &mut Value, pointer: &Pointer) -> Option<Value> {
    let (parents, last) = pointer.split_last();
    match walk(document, parents)? {
        Value::Object(map) => map.shift_remove(last),
        Value::Array(items) => {
            let index = last.parse::<usize>().ok().filter(|i| *i < items.len())?;
            Some(items.remove(index))
        }
        _ => None,
    }
}

/// Sets `value` at `pointer`, creating missing objects on the way (an existing
/// non-container in the way makes the edit a no-op).
fn put(document: &mut Value, pointer: &Pointer, value: Value) {
    let (parents, last) = pointer.split_last();
    let mut at = document;
    for token in parents {
        at = match at {
            Value::Object(map) => map
                .entry(token.clone())
                .or_insert_with(|| Value::Object(Map::new())),
            Value::Array(items) => match token.parse::<usize>().ok().and_then(|i| items.get_mut(i))
            {
                Some(item) => item,
                None => return,
            },
            _ => return,
        };
    }
    match at {
        Value::Object(map) => {
            map.insert(last.to_owned(), value);
        }
        Value::Array(items) if last == "-" => items.push(value),
        Value::Array(items) => {
            if let Some(index) = last.parse::<usize>().ok().filter(|i| *i <= items.len()) {
                items.insert(index, value);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Pointer {
        Pointer::parse(text).expect("pointer")
    }

    #[test]
    fn edits_apply_in_order_and_keep_member_order() {
        let edits = JsonEdits {
            remove: vec![p("/password"), p("/tags/0"), p("/absent/deep")],
            rename: vec![
                (p("/userName"), "user_name".into()),
                (p("/nope"), "x".into()),
            ],
            moves: vec![(p("/city"), p("/address/city")), (p("/ghost"), p("/x"))],
            add: vec![
                (p("/meta/source"), "gateway".into()),
                (p("/tags/-"), "new".into()),
                (p("/a~1b"), 1.into()),
            ],
        };
        let mut doc = serde_json::json!({
            "id": 1, "userName": "ann", "password": "s3cret", "city": "Oslo", "tags": ["old", "keep"], "z": true
        });
        edits.apply(&mut doc);
        assert_eq!(
            serde_json::to_string(&doc).expect("json"),
            r#"{"id":1,"user_name":"ann","tags":["keep","new"],"z":true,"address":{"city":"Oslo"},"meta":{"source":"gateway"},"a/b":1}"#
        );
    }

    #[test]
    fn edits_through_scalars_or_missing_indexes_do_nothing() {
        let edits = JsonEdits {
            add: vec![
                (p("/name/first"), 1.into()),
                (p("/list/5/x"), 1.into()),
                (p("/list/9"), 1.into()),
            ],
            rename: vec![(p("/list/0"), "x".into())],
            ..JsonEdits::default()
        };
        let mut doc = serde_json::json!({"name": "ann", "list": [1]});
        let before = doc.clone();
        edits.apply(&mut doc);
        assert_eq!(doc, before);
        assert_eq!(Pointer::parse("no-slash"), None);
    }
}
