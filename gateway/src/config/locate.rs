//! Maps a key path such as `routes[2].upstream` to its line in the config file, so every
//! problem can be reported as `file:line: key: message`.

use toml_edit::{Document, InlineTable, Item, Table, Value};

/// A parsed copy of the file that keeps the byte span of every key and value.
pub struct Locator<'a> {
    text: &'a str,
    doc: Option<Document<&'a str>>,
}

#[derive(Clone, Copy)]
enum Segment<'p> {
    Key(&'p str),
    Index(usize),
}

fn segments(path: &str) -> Vec<Segment<'_>> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (key, rest) = part
            .find('[')
            .map_or((part, ""), |i| (&part[..i], &part[i..]));
        if !key.is_empty() {
            out.push(Segment::Key(key));
        }
        for index in rest.split('[').filter(|s| !s.is_empty()) {
            if let Ok(i) = index.trim_end_matches(']').parse() {
                out.push(Segment::Index(i));
            }
        }
    }
    out
}

impl<'a> Locator<'a> {
    /// Parses `text`; a file that does not parse as TOML locates nothing.
    pub fn new(text: &'a str) -> Self {
        Self {
            text,
            doc: Document::parse(text).ok(),
        }
    }

    /// 1-based line of the deepest part of `path` that exists in the file.
    pub fn line_of(&self, path: &str) -> Option<usize> {
        let doc = self.doc.as_ref()?;
        in_table(doc.as_table(), &segments(path)).map(|offset| self.line_at(offset))
    }

    /// 1-based line of a byte offset.
    pub fn line_at(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }
}

/// Byte offset of the deepest existing part of `path` below `table`.
fn in_table(table: &Table, path: &[Segment<'_>]) -> Option<usize> {
    let Some((Segment::Key(key), rest)) = path.split_first() else {
        return table.span().map(|s| s.start);
    };
    let here = table.key(key).and_then(|k| k.span()).map(|s| s.start);
    let deeper = table.get(key).and_then(|item| in_item(item, rest));
    deeper.or(here).or_else(|| table.span().map(|s| s.start))
}

fn in_item(item: &Item, path: &[Segment<'_>]) -> Option<usize> {
    match item {
        Item::Table(table) => in_table(table, path),
        Item::Value(value) => in_value(value, path),
        Item::ArrayOfTables(array) => match path.split_first() {
            Some((Segment::Index(i), rest)) => array.get(*i).and_then(|t| in_table(t, rest)),
            _ => array.span().map(|s| s.start),
        },
        Item::None => None,
    }
}

fn in_value(value: &Value, path: &[Segment<'_>]) -> Option<usize> {
    let here = value.span().map(|s| s.start);
    let deeper = match (value, path.split_first()) {
        (Value::Array(array), Some((Segment::Index(i), rest))) => {
            array.get(*i).and_then(|v| in_value(v, rest))
        }
        (Value::InlineTable(table), Some((Segment::Key(key), rest))) => in_inline(table, key, rest),
        _ => None,
    };
    deeper.or(here)
}

fn in_inline(table: &InlineTable, key: &str, rest: &[Segment<'_>]) -> Option<usize> {
    let here = table.key(key).and_then(|k| k.span()).map(|s| s.start);
    table.get(key).and_then(|v| in_value(v, rest)).or(here)
}

#[cfg(test)]
mod tests {
    use super::Locator;

    #[test]
    fn finds_lines_of_nested_keys() {
        let text = "[gateway]\nworkers = 1\n\n[[routes]]\nname = \"a\"\n\n[[routes]]\nname = \"b\"\nupstream = \"x\"\nheaders = [ { name = \"h\" },\n  { name = \"k\" } ]\n";
        let locator = Locator::new(text);
        assert_eq!(locator.line_of("gateway.workers"), Some(2));
        assert_eq!(locator.line_of("routes[1].upstream"), Some(9));
        assert_eq!(locator.line_of("routes[1].headers[1].name"), Some(11));
        // A missing key falls back to its closest existing parent.
        assert_eq!(locator.line_of("routes[1].methods"), Some(7));
    }
}
