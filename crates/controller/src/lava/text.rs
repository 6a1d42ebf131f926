//! The text formats LAVA's clients read: YAML lists of flow mappings (job logs, test
//! results) and CSV with every field quoted (test results).
//!
//! Invariants:
//! - Every string is written as a YAML double-quoted scalar. Characters YAML does not allow
//!   in a stream (controls, DEL, C1 controls but NEL, U+FEFF, U+FFFE/U+FFFF) are written as
//!   escapes, so any job or DUT text reads back exactly, and nothing a DUT prints can open a
//!   new key, a tag, an anchor or a document: the value is one scalar whatever it holds.
//! - CSV fields are quoted with `"` doubled, as Python's `csv.QUOTE_ALL` writes them.

use std::fmt::Write;

/// A value of the YAML this module writes.
#[derive(Debug, Clone, PartialEq)]
pub enum Yaml {
    Str(String),
    Int(i64),
    Null,
    /// A flow mapping, keys in order.
    Map(Vec<(&'static str, Yaml)>),
}

impl Yaml {
    pub fn str(s: impl Into<String>) -> Yaml {
        Yaml::Str(s.into())
    }
}

/// Writes `s` as a YAML double-quoted scalar.
pub fn quoted(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\u{85}' => out.push_str("\\N"),
            c if printable(c) => out.push(c),
            c if (c as u32) <= 0xff => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
        }
    }
    out.push('"');
}

/// YAML's `c-printable`, less U+FEFF (a byte order mark inside a scalar confuses readers).
fn printable(c: char) -> bool {
    matches!(c as u32, 0x20..=0x7e | 0xa0..=0xd7ff | 0xe000..=0xfefe | 0xff00..=0xfffd | 0x10000..=0x10ffff)
}

fn write_yaml(out: &mut String, v: &Yaml) {
    match v {
        Yaml::Str(s) => quoted(out, s),
        Yaml::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Yaml::Null => out.push_str("null"),
        Yaml::Map(pairs) => {
            out.push('{');
            for (i, (k, v)) in pairs.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                quoted(out, k);
                out.push_str(": ");
                write_yaml(out, v);
            }
            out.push('}');
        }
    }
}

/// One list item on its own line: `- {...}\n`.
pub fn list_item(out: &mut String, v: &Yaml) {
    out.push_str("- ");
    write_yaml(out, v);
    out.push('\n');
}

/// A whole YAML list (`[]` when empty).
pub fn list(items: &[Yaml]) -> String {
    if items.is_empty() {
        return "[]\n".to_owned();
    }
    let mut out = String::new();
    for item in items {
        list_item(&mut out, item);
    }
    out
}

/// One CSV row, every field quoted, ended by `\r\n` (Python's default dialect).
pub fn csv_row(out: &mut String, fields: &[&str]) {
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('"');
        out.push_str(&f.replace('"', "\"\""));
        out.push('"');
    }
    out.push_str("\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[derive(Debug, serde::Deserialize, PartialEq)]
    struct Line {
        dt: String,
        lvl: String,
        msg: String,
    }

    #[test]
    fn hostile_text_reads_back_as_one_scalar() {
        let nasty = [
            "plain",
            "key: value\n- item\n---\n...",
            "\"quoted\" \\ back",
            "\u{1b}[31mred\u{7}\u{0}\u{7f}\u{85}\u{9c}\u{feff}\u{fffe}",
            "&anchor *alias !tag %YAML #comment",
            "  leading and trailing  ",
            "日本語 🦀",
            "",
        ];
        let items: Vec<Yaml> = nasty
            .iter()
            .map(|s| {
                Yaml::Map(vec![
                    ("dt", Yaml::str("2026-01-02T03:04:05.678000")),
                    ("lvl", Yaml::str("target")),
                    ("msg", Yaml::str(*s)),
                ])
            })
            .collect();
        let text = list(&items);
        assert_eq!(
            text.lines().count(),
            nasty.len(),
            "one line per item:\n{text}"
        );
        let back: Vec<Line> = serde_saphyr::from_str(&text).expect("valid YAML");
        let msgs: Vec<&str> = back.iter().map(|l| l.msg.as_str()).collect();
        assert_eq!(msgs, nasty);
        assert!(back.iter().all(|l| l.lvl == "target"));
    }

    #[test]
    fn nested_maps_and_nulls() {
        let text = list(&[Yaml::Map(vec![
            ("name", Yaml::str("boot")),
            ("job", Yaml::Int(3)),
            ("unit", Yaml::Null),
            ("metadata", Yaml::Map(vec![("result", Yaml::str("pass"))])),
        ])]);
        let back: Vec<BTreeMap<String, serde_json::Value>> =
            serde_saphyr::from_str(&text).expect("valid YAML");
        assert_eq!(back[0]["job"], serde_json::json!(3));
        assert_eq!(back[0]["unit"], serde_json::Value::Null);
        assert_eq!(back[0]["metadata"]["result"], "pass");
        assert_eq!(list(&[]), "[]\n");
    }

    #[test]
    fn csv_quotes_everything() {
        let mut out = String::new();
        csv_row(&mut out, &["a", "b \"c\"", "d,e\nf"]);
        assert_eq!(out, "\"a\",\"b \"\"c\"\"\",\"d,e\nf\"\r\n");
    }
}
