//! Walking a loose [`Value`] tree into typed fields, with the field path in every error.
//!
//! Invariants:
//! - Every error built here carries the dotted/indexed path of the field it is about
//!   (`actions[2].test.definitions[0].path`), or of the mapping that lacks a required key.
//! - A key is consumed at most once; whatever is left in a mapping when [`Fields::finish`] runs
//!   becomes an "unknown key, ignored" warning, never an error.
//! - A key LAVA defines but dutlab does not act on is taken with [`Fields::ignore`] or warned
//!   about with [`Ctx::not_honoured`]: its warning starts with [`NOT_HONOURED`] and says why.
//! - A key whose value is YAML null counts as absent for optional fields and as missing for
//!   required ones.

use std::collections::BTreeMap;
use std::fmt;

use crate::yaml::Value;
use crate::{JobError, Warning};

/// Where a value sits in the document: `actions[2].test.definitions[0]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Path(String);

impl Path {
    pub(crate) fn root() -> Self {
        Self(String::new())
    }

    pub(crate) fn key(&self, key: &str) -> Self {
        if self.0.is_empty() {
            Self(key.to_owned())
        } else {
            Self(format!("{}.{key}", self.0))
        }
    }

    pub(crate) fn index(&self, i: usize) -> Self {
        Self(format!("{}[{i}]", self.0))
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("(top level)")
        } else {
            f.write_str(&self.0)
        }
    }
}

/// Parsing context: the file name for errors and the warnings gathered so far.
pub(crate) struct Ctx {
    pub(crate) file: String,
    pub(crate) warnings: Vec<Warning>,
}

impl Ctx {
    pub(crate) fn new(file: &str) -> Self {
        Self {
            file: file.to_owned(),
            warnings: Vec::new(),
        }
    }

    pub(crate) fn err(&self, path: &Path, reason: impl Into<String>) -> JobError {
        JobError::new(&self.file, path.to_string(), reason)
    }

    pub(crate) fn warn(&mut self, path: &Path, message: impl Into<String>) {
        self.warnings.push(Warning {
            field: path.to_string(),
            message: message.into(),
        });
    }

    /// Warns that the key at `path` is accepted but dutlab does not act on it, and why.
    pub(crate) fn not_honoured(&mut self, path: &Path, reason: &str) {
        self.warn(path, format!("{NOT_HONOURED}: {reason}"));
    }

    pub(crate) fn expected(&self, path: &Path, what: &str, found: &Value) -> JobError {
        self.err(path, format!("expected {what}, found {}", found.kind()))
    }
}

/// Start of the warning for LAVA keys that are accepted but not acted on; the reason follows
/// after `: `.
pub const NOT_HONOURED: &str = "accepted, not honoured by dutlab yet";

/// The entries of one mapping, taken out one key at a time.
pub(crate) struct Fields {
    pub(crate) path: Path,
    map: BTreeMap<String, Value>,
}

impl Fields {
    /// `value` must be a mapping.
    pub(crate) fn new(cx: &Ctx, path: Path, value: Value) -> Result<Self, JobError> {
        match value {
            Value::Map(map) => Ok(Self { path, map }),
            other => Err(cx.expected(&path, "a mapping", &other)),
        }
    }

    pub(crate) fn at(&self, key: &str) -> Path {
        self.path.key(key)
    }

    pub(crate) fn has(&self, key: &str) -> bool {
        matches!(self.map.get(key), Some(v) if *v != Value::Null)
    }

    pub(crate) fn keys(&self) -> impl Iterator<Item = &String> {
        self.map.keys()
    }

    /// The value of an optional key; null counts as absent.
    pub(crate) fn take(&mut self, key: &str) -> Option<Value> {
        match self.map.remove(key) {
            Some(Value::Null) | None => None,
            Some(v) => Some(v),
        }
    }

    /// The value of a key as written, null included (for keys where null means something).
    pub(crate) fn take_raw(&mut self, key: &str) -> Option<Value> {
        self.map.remove(key)
    }

    /// The value of a required key.
    pub(crate) fn req(&mut self, cx: &Ctx, key: &str) -> Result<Value, JobError> {
        self.take(key)
            .ok_or_else(|| cx.err(&self.path, format!("'{key}' is missing")))
    }

    pub(crate) fn opt_text(&mut self, cx: &Ctx, key: &str) -> Result<Option<String>, JobError> {
        let path = self.at(key);
        self.take(key).map(|v| text(cx, &path, v)).transpose()
    }

    pub(crate) fn req_text(&mut self, cx: &Ctx, key: &str) -> Result<String, JobError> {
        let path = self.at(key);
        let v = self.req(cx, key)?;
        text(cx, &path, v)
    }

    /// Like [`Self::req_text`], and the text must not be empty.
    pub(crate) fn req_nonempty(&mut self, cx: &Ctx, key: &str) -> Result<String, JobError> {
        let path = self.at(key);
        let s = self.req_text(cx, key)?;
        if s.trim().is_empty() {
            return Err(cx.err(&path, "must not be empty"));
        }
        Ok(s)
    }

    /// Drops the listed keys (`(key, reason)`), with a "not honoured" warning giving the
    /// reason for each one present, null or not.
    pub(crate) fn ignore(&mut self, cx: &mut Ctx, keys: &[(&str, &str)]) {
        for (key, reason) in keys {
            if self.map.remove(*key).is_some() {
                cx.not_honoured(&self.path.key(key), reason);
            }
        }
    }

    /// Warns about every key not consumed.
    pub(crate) fn finish(self, cx: &mut Ctx) {
        for key in self.map.keys() {
            cx.warn(&self.path.key(key), "unknown key, ignored");
        }
    }
}

/// A scalar as text; numbers and booleans are stringified.
pub(crate) fn text(cx: &Ctx, path: &Path, v: Value) -> Result<String, JobError> {
    match v {
        Value::Str(s) => Ok(s),
        other => other
            .scalar_text()
            .ok_or_else(|| cx.expected(path, "a string", &other)),
    }
}

/// A boolean; also accepts the YAML 1.1 spellings (`yes`, `no`, `on`, `off`) LAVA's
/// parser reads as booleans.
pub(crate) fn boolean(cx: &Ctx, path: &Path, v: Value) -> Result<bool, JobError> {
    match &v {
        Value::Bool(b) => Ok(*b),
        Value::Str(s) => match s.to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" | "y" => Ok(true),
            "false" | "no" | "off" | "n" => Ok(false),
            _ => Err(cx.err(path, format!("expected true or false, found '{s}'"))),
        },
        other => Err(cx.expected(path, "true or false", other)),
    }
}

/// A list of scalars, each stringified; a non-scalar item is an error naming its index.
pub(crate) fn text_list(cx: &Ctx, path: &Path, v: Value) -> Result<Vec<String>, JobError> {
    match v {
        Value::Seq(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, item)| item_text(cx, &path.index(i), item))
            .collect(),
        other => Err(cx.expected(path, "a list", &other)),
    }
}

/// A list of scalars, or one scalar standing for a list of one.
pub(crate) fn text_or_list(cx: &Ctx, path: &Path, v: Value) -> Result<Vec<String>, JobError> {
    match v {
        Value::Seq(_) => text_list(cx, path, v),
        other => Ok(vec![item_text(cx, path, other)?]),
    }
}

fn item_text(cx: &Ctx, path: &Path, v: Value) -> Result<String, JobError> {
    match v {
        Value::Str(s) => Ok(s),
        other => other
            .scalar_text()
            .ok_or_else(|| cx.expected(path, "a string, number or boolean", &other)),
    }
}

/// A mapping of scalars, stringified; null values become empty strings.
pub(crate) fn scalar_map(
    cx: &Ctx,
    path: &Path,
    v: Value,
) -> Result<BTreeMap<String, String>, JobError> {
    match v {
        Value::Map(map) => map
            .into_iter()
            .map(|(k, v)| {
                let value = match v {
                    Value::Null => String::new(),
                    other => item_text(cx, &path.key(&k), other)?,
                };
                Ok((k, value))
            })
            .collect(),
        other => Err(cx.expected(path, "a mapping", &other)),
    }
}
