//! Bounded YAML loading into a loose [`Value`] tree.
//!
//! This is the only module that talks to the YAML parser. Everything above it works on
//! [`Value`], so the typed layers never see parser details.
//!
//! Invariants:
//! - Input longer than [`MAX_DOCUMENT_BYTES`] is refused before the parser sees it.
//! - The parser runs with explicit budgets (nesting depth, nodes, events, aliases, anchors,
//!   alias replay), and the tree builder keeps its own account of nodes, depth and string
//!   bytes *after* alias expansion, so an alias bomb cannot make the tree larger than
//!   [`MAX_EXPANDED_BYTES`] / [`MAX_NODES`] however the parser's limits are tuned.
//! - A duplicate mapping key (as YAML sees it, e.g. `0xB` vs `11`, or after keys are turned
//!   into strings, e.g. `1` vs `"1"`) keeps its last value, as LAVA's YAML loader does, and is
//!   reported as a [`Duplicate`] naming the lines of both; the budgets count every entry,
//!   duplicates included, and at most [`MAX_DUPLICATES`] are reported one by one.
//! - Mapping keys are scalars; a sequence or mapping used as a key is an error.
//! - Exactly one YAML document per input.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_saphyr::budget::BudgetBreach;
use serde_saphyr::{DuplicateKeyPolicy, NonFiniteFloatPolicy, Spanned};

use crate::JobError;

/// Largest accepted input, in bytes (1 MiB). Checked before parsing.
pub const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;
/// Deepest accepted nesting of sequences and mappings.
pub const MAX_DEPTH: usize = 48;
/// Most nodes (scalars, sequences, mappings) in the expanded tree.
pub const MAX_NODES: usize = 200_000;
/// Most string bytes (scalars and keys) in the expanded tree.
pub const MAX_EXPANDED_BYTES: usize = 8 * 1024 * 1024;

/// Duplicate keys reported one by one; the rest are counted in the last report.
pub const MAX_DUPLICATES: usize = 20;

/// A mapping key given twice: the later value was kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Duplicate {
    pub(crate) key: String,
    /// 1-based line of the earlier occurrence (0 when the parser did not know).
    pub(crate) first_line: u64,
    /// 1-based line of the occurrence whose value is kept.
    pub(crate) line: u64,
}

/// What [`load`] read: the tree, and the duplicate keys it resolved.
#[derive(Debug)]
pub(crate) struct Loaded {
    pub(crate) value: Value,
    pub(crate) duplicates: Vec<Duplicate>,
    /// Duplicates beyond [`MAX_DUPLICATES`], not listed.
    pub(crate) more_duplicates: usize,
}

/// A loosely typed YAML node. Mappings are keyed by the key's string form.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Seq(Vec<Value>),
    Map(BTreeMap<String, Value>),
}

impl Value {
    /// "a string", "a mapping", ...: used in "expected X, found Y" messages.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    /// The text of a scalar, as a shell or a person would want it; `None` for
    /// null, lists and mappings.
    pub(crate) fn scalar_text(&self) -> Option<String> {
        match self {
            Value::Bool(b) => Some(b.to_string()),
            Value::Int(i) => Some(i.to_string()),
            Value::Float(f) => Some(float_text(*f)),
            Value::Str(s) => Some(s.clone()),
            Value::Null | Value::Seq(_) | Value::Map(_) => None,
        }
    }
}

/// Floats keep a fractional part (`1.0`, not `1`), as YAML authors wrote them.
pub(crate) fn float_text(f: f64) -> String {
    if f.is_finite() && f.fract() == 0.0 && f.abs() < 1e16 {
        format!("{f:.1}")
    } else {
        f.to_string()
    }
}

/// Counters shared by every node of one load.
struct Account {
    nodes: Cell<usize>,
    bytes: Cell<usize>,
    duplicates: RefCell<Vec<Duplicate>>,
    more_duplicates: Cell<usize>,
}

impl Account {
    fn duplicate(&self, d: Duplicate) {
        let mut list = self.duplicates.borrow_mut();
        if list.len() < MAX_DUPLICATES {
            list.push(d);
        } else {
            self.more_duplicates.set(self.more_duplicates.get() + 1);
        }
    }

    fn node<E: de::Error>(&self) -> Result<(), E> {
        let n = self.nodes.get() + 1;
        self.nodes.set(n);
        if n > MAX_NODES {
            return Err(E::custom(format!(
                "document has more than {MAX_NODES} nodes after alias expansion"
            )));
        }
        Ok(())
    }

    fn bytes<E: de::Error>(&self, len: usize) -> Result<(), E> {
        let n = self.bytes.get().saturating_add(len);
        self.bytes.set(n);
        if n > MAX_EXPANDED_BYTES {
            return Err(E::custom(format!(
                "document has more than {MAX_EXPANDED_BYTES} bytes of text after alias expansion"
            )));
        }
        Ok(())
    }
}

#[derive(Clone, Copy)]
struct NodeSeed<'a> {
    account: &'a Account,
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for NodeSeed<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        self.account.node()?;
        if self.depth > MAX_DEPTH {
            return Err(de::Error::custom(format!(
                "nesting is deeper than {MAX_DEPTH} levels"
            )));
        }
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for NodeSeed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a YAML scalar, sequence or mapping")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v.into()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Int(v.into()))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Value, E> {
        Ok(Value::Int(v))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
        i128::try_from(v)
            .map(Value::Int)
            .map_err(|_| E::custom("integer is too large"))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        self.account.bytes(v.len())?;
        Ok(Value::Str(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        self.account.bytes(v.len())?;
        Ok(Value::Str(v))
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Value, E> {
        self.account.bytes(v.len())?;
        String::from_utf8(v.to_vec())
            .map(Value::Str)
            .map_err(|_| E::custom("binary value is not UTF-8 text"))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_newtype_struct<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let child = NodeSeed {
            account: self.account,
            depth: self.depth + 1,
        };
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(child)? {
            items.push(item);
        }
        Ok(Value::Seq(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let child = NodeSeed {
            account: self.account,
            depth: self.depth + 1,
        };
        let mut entries = BTreeMap::new();
        let mut lines: BTreeMap<String, u64> = BTreeMap::new();
        while let Some(key) = map.next_key::<Spanned<KeyText>>()? {
            self.account.node()?;
            self.account.bytes(key.value.0.len())?;
            let line = key.referenced.line();
            let key = key.value.0;
            let value = map.next_value_seed(child)?;
            if let Some(first_line) = lines.insert(key.clone(), line) {
                self.account.duplicate(Duplicate {
                    key: key.clone(),
                    first_line,
                    line,
                });
            }
            entries.insert(key, value);
        }
        Ok(Value::Map(entries))
    }
}

/// A mapping key as text: scalars are stringified (null is the empty key); a list or mapping
/// used as a key is an error.
struct KeyText(String);

impl<'de> Deserialize<'de> for KeyText {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(KeyVisitor)
    }
}

struct KeyVisitor;

impl KeyVisitor {
    fn not_scalar<E: de::Error>(kind: &str) -> Result<KeyText, E> {
        Err(E::custom(format!(
            "mapping keys must be scalars, found {kind}"
        )))
    }
}

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = KeyText;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a scalar mapping key")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<KeyText, E> {
        Ok(KeyText(v.to_string()))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<KeyText, E> {
        Ok(KeyText(v.to_string()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<KeyText, E> {
        Ok(KeyText(v.to_string()))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<KeyText, E> {
        Ok(KeyText(v.to_string()))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<KeyText, E> {
        Ok(KeyText(v.to_string()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<KeyText, E> {
        Ok(KeyText(float_text(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<KeyText, E> {
        Ok(KeyText(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<KeyText, E> {
        Ok(KeyText(v))
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<KeyText, E> {
        String::from_utf8(v.to_vec())
            .map(KeyText)
            .map_err(|_| E::custom("binary key is not UTF-8 text"))
    }
    fn visit_unit<E: de::Error>(self) -> Result<KeyText, E> {
        Ok(KeyText(String::new()))
    }
    fn visit_none<E: de::Error>(self) -> Result<KeyText, E> {
        Ok(KeyText(String::new()))
    }
    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<KeyText, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_newtype_struct<D: de::Deserializer<'de>>(self, d: D) -> Result<KeyText, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, _seq: A) -> Result<KeyText, A::Error> {
        Self::not_scalar("a list")
    }
    fn visit_map<A: MapAccess<'de>>(self, _map: A) -> Result<KeyText, A::Error> {
        Self::not_scalar("a mapping")
    }
}

fn options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_depth: MAX_DEPTH,
            flow_nesting_limit: MAX_DEPTH,
            max_documents: 1,
            max_nodes: MAX_NODES,
            max_events: 2 * MAX_NODES + 16,
            max_aliases: 10_000,
            max_anchors: 10_000,
            max_recorded_anchor_events: 200_000,
            max_recorded_anchor_bytes: MAX_EXPANDED_BYTES,
            max_total_scalar_bytes: MAX_EXPANDED_BYTES,
            max_merge_keys: 1_000,
            max_inclusion_depth: 0,
        },
        alias_limits: serde_saphyr::alias_limits! {
            max_total_replayed_events: 200_000,
            max_replay_stack_depth: 16,
            max_alias_expansions_per_anchor: 1_000,
        },
        duplicate_keys: DuplicateKeyPolicy::PassThrough,
        strict_booleans: true,
        non_finite_float_policy: NonFiniteFloatPolicy::AsString,
        leading_zero_numbers_as_strings: true,
        underscored_numbers_as_strings: true,
        with_snippet: false,
        crop_radius: 0,
    }
}

/// Parses `text` into a [`Value`] within the budgets above. Errors name `file`
/// and, when the parser knows it, the line and column.
pub(crate) fn load(file: &str, text: &str) -> Result<Loaded, JobError> {
    if text.len() > MAX_DOCUMENT_BYTES {
        return Err(JobError::new(
            file,
            "(document)",
            format!(
                "document is {} bytes, larger than the limit of {MAX_DOCUMENT_BYTES} bytes",
                text.len()
            ),
        ));
    }
    let account = Account {
        nodes: Cell::new(0),
        bytes: Cell::new(0),
        duplicates: RefCell::new(Vec::new()),
        more_duplicates: Cell::new(0),
    };
    let seed = NodeSeed {
        account: &account,
        depth: 0,
    };
    let value = serde_saphyr::with_deserializer_from_str_with_options(text, options(), |d| {
        seed.deserialize(d)
    })
    .map_err(|e| yaml_error(file, &e))?;
    Ok(Loaded {
        value,
        duplicates: account.duplicates.into_inner(),
        more_duplicates: account.more_duplicates.get(),
    })
}

/// Warnings for the duplicate keys of a load: `line 9: duplicate key 'timeout' (also at line
/// 4); the value at line 9 is used, as LAVA does`.
pub(crate) fn duplicate_warnings(loaded: &Loaded) -> Vec<crate::Warning> {
    let mut out: Vec<crate::Warning> = loaded
        .duplicates
        .iter()
        .map(|d| crate::Warning {
            field: format!("line {}", d.line),
            message: format!(
                "duplicate key '{}' (also at line {}); the value at line {} is used, as LAVA does",
                d.key, d.first_line, d.line
            ),
        })
        .collect();
    if loaded.more_duplicates > 0 {
        out.push(crate::Warning {
            field: "(document)".into(),
            message: format!(
                "{} more duplicate keys; each keeps its last value",
                loaded.more_duplicates
            ),
        });
    }
    out
}

fn yaml_error(file: &str, err: &serde_saphyr::Error) -> JobError {
    // Alias and snippet wrappers add where an anchor was defined and used; the outer
    // location (where parsing stopped) is enough.
    let field = match err.location() {
        Some(loc) if loc.line() > 0 => format!("line {} column {}", loc.line(), loc.column()),
        _ => "(document)".to_owned(),
    };
    let mut inner = err;
    while let serde_saphyr::Error::AliasError { error, .. }
    | serde_saphyr::Error::WithSnippet { error, .. } = inner
    {
        inner = error;
    }
    let reason = match inner {
        serde_saphyr::Error::Budget { breach, .. } => budget_reason(breach),
        other => {
            use serde_saphyr::MessageFormatter as _;
            let msg = strip_location(&serde_saphyr::UserMessageFormatter.format_message(other));
            if msg.contains("recursion limit") {
                format!("nesting is deeper than {MAX_DEPTH} levels")
            } else {
                msg
            }
        }
    };
    JobError::new(file, field, format!("invalid YAML: {reason}"))
}

fn budget_reason(breach: &BudgetBreach) -> String {
    match breach {
        BudgetBreach::Depth { .. } => format!("nesting is deeper than {MAX_DEPTH} levels"),
        BudgetBreach::Aliases { .. }
        | BudgetBreach::AliasAnchorRatio { .. }
        | BudgetBreach::Anchors { .. }
        | BudgetBreach::RecordedAnchorEvents { .. }
        | BudgetBreach::RecordedAnchorBytes { .. } => {
            "too many aliases or anchors, or anchors too large (possible alias bomb)".to_owned()
        }
        BudgetBreach::Nodes { .. } | BudgetBreach::Events { .. } => {
            format!("document has more than {MAX_NODES} nodes")
        }
        BudgetBreach::ScalarBytes { .. } => {
            format!("document has more than {MAX_EXPANDED_BYTES} bytes of text")
        }
        BudgetBreach::Documents { .. } => "more than one YAML document".to_owned(),
        other => format!("resource limit exceeded ({other:?})"),
    }
}

/// The parser appends " at line L, column C"; the location already is in `field`.
fn strip_location(msg: &str) -> String {
    let msg = msg.trim();
    match msg.rfind(" at line ") {
        Some(i) if msg[i..].contains("column") => msg[..i].trim_end().to_owned(),
        _ => msg.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn scalars_and_collections() {
        let v = load(
            "t.yaml",
            "a: 1\nb: [x, 2.0, true, ~]\nc: {d: '07'}\ne: 0755\n",
        )
        .unwrap()
        .value;
        let Value::Map(m) = v else { panic!() };
        assert_eq!(m["a"], Value::Int(1));
        assert_eq!(
            m["b"],
            Value::Seq(vec![
                Value::Str("x".into()),
                Value::Float(2.0),
                Value::Bool(true),
                Value::Null
            ])
        );
        assert_eq!(m["e"], Value::Str("0755".into()));
        assert_eq!(Value::Float(2.0).scalar_text().unwrap(), "2.0");
    }

    #[test]
    fn yes_stays_a_string() {
        let v = load("t.yaml", "a: yes\n").unwrap().value;
        let Value::Map(m) = v else { panic!() };
        assert_eq!(m["a"], Value::Str("yes".into()));
    }

    #[test]
    fn syntax_error_has_location() {
        let e = load("job.yaml", "a: 1\nb: [1, 2\n").unwrap_err();
        assert!(e.field.starts_with("line "), "{e}");
        assert!(e.reason.starts_with("invalid YAML"), "{e}");
    }

    #[test]
    fn duplicate_after_stringification_keeps_the_last() {
        let l = load("t.yaml", "1: a\n'1': b\n").unwrap();
        let Value::Map(m) = &l.value else { panic!() };
        assert_eq!(m["1"], Value::Str("b".into()));
        assert_eq!(
            l.duplicates,
            vec![Duplicate {
                key: "1".into(),
                first_line: 1,
                line: 2
            }]
        );
    }

    #[test]
    fn duplicate_nested_keeps_the_last_and_names_both_lines() {
        let l = load("t.yaml", "a:\n  b: 1\n  c: 2\n  b: 3\nd: 4\n").unwrap();
        let Value::Map(m) = &l.value else { panic!() };
        let Value::Map(a) = &m["a"] else { panic!() };
        assert_eq!(a["b"], Value::Int(3));
        let w = duplicate_warnings(&l);
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].field, "line 4");
        assert!(w[0].message.contains("'b' (also at line 2)"), "{}", w[0]);
    }

    #[test]
    fn many_duplicates_are_counted() {
        let text: String = (0..50).map(|i| format!("k: {i}\n")).collect();
        let l = load("t.yaml", &text).unwrap();
        assert_eq!(l.duplicates.len(), MAX_DUPLICATES);
        assert_eq!(l.more_duplicates, 49 - MAX_DUPLICATES);
        let Value::Map(m) = &l.value else { panic!() };
        assert_eq!(m["k"], Value::Int(49));
    }

    #[test]
    fn complex_key_rejected() {
        let e = load("t.yaml", "? [a]\n: b\n").unwrap_err();
        assert!(e.reason.contains("keys must be scalars"), "{e}");
    }

    #[test]
    fn two_documents_rejected() {
        let e = load("t.yaml", "a: 1\n---\nb: 2\n").unwrap_err();
        assert!(e.reason.contains("invalid YAML"), "{e}");
    }
}
