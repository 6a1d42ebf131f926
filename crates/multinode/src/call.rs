//! The MultiNode calls a DUT makes, read from one console line as LAVA's dispatcher reads them.
//!
//! LAVA's helpers print `<LAVA_MULTI_NODE> <LAVA_NAME ARGS>`; the dispatcher matches
//! `<LAVA_MULTI_NODE> <LAVA_(\S+) ([^>]+)>` anywhere in a line and then:
//! - `SEND`: splits ARGS before every run of whitespace that is followed by `KEY=`; the first
//!   piece is the message id, each other piece is `KEY=VALUE` (split at its first `=`, so a
//!   value may hold `=` and spaces). A key repeated in one call keeps its first place and its
//!   last value (a Python dict).
//! - `WAIT ID`, `SYNC ID`, `WAIT_ALL ID [ROLE]`: ARGS split on whitespace; more arguments are
//!   an error (LAVA raises a test error).
//! - The name is matched case-insensitively (LAVA looks up `_on_<name.lower()>`).
//!
//! Differences from LAVA, all refusals of input LAVA would mishandle or that could forge
//! console output:
//! - keys may also hold `-` and `.` after their first character (`free-space=12G`, LAVA's own
//!   documentation example, which LAVA's `\w+=` would fold into the message id);
//! - message ids and roles are limited to [`limits::ID_CHARS`]; values may not hold control
//!   characters, `<` or `>` (a value is typed back into another DUT's terminal, where a
//!   control character is a keystroke and `<...>` could forge a result signal);
//! - every field is bounded ([`limits`]) and a call has at most [`limits::MAX_PAIRS`] pairs.
//!
//! Invariants: [`parse_call`] is total over any bytes; a returned [`Call`] passes
//! [`Call::validate`].

use serde::{Deserialize, Serialize};
use std::fmt;

/// The bounds on what a DUT may put in a call, and on what a group stores.
pub mod limits {
    /// Longest message id or role, in bytes.
    pub const MAX_ID: usize = 512;
    /// Longest key, in bytes.
    pub const MAX_KEY: usize = 512;
    /// Longest value, in bytes.
    pub const MAX_VALUE: usize = 512;
    /// Most `key=value` pairs in one `lava-send`.
    pub const MAX_PAIRS: usize = 64;
    /// Most bytes of message ids, keys, values and barrier ids one group's coordinator keeps;
    /// a `lava-send` or `lava-sync` past it is refused with a `nack`.
    pub const MAX_GROUP_BYTES: usize = 1 << 20;
    /// The characters of a message id or a role name (besides ASCII letters and digits).
    pub const ID_CHARS: &str = "_-.:+";
    /// The characters of a key after its first (an ASCII letter, digit or `_`), besides ASCII
    /// letters and digits.
    pub const KEY_CHARS: &str = "_-.";
}

/// Which MultiNode call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum CallKind {
    Send,
    Wait,
    WaitAll,
    Sync,
}

impl CallKind {
    /// The name in the console line: `SEND`, `WAIT`, `WAIT_ALL`, `SYNC`.
    pub fn lava_name(self) -> &'static str {
        match self {
            CallKind::Send => "SEND",
            CallKind::Wait => "WAIT",
            CallKind::WaitAll => "WAIT_ALL",
            CallKind::Sync => "SYNC",
        }
    }

    fn from_name(name: &str) -> Option<CallKind> {
        match name.to_ascii_uppercase().as_str() {
            "SEND" => Some(CallKind::Send),
            "WAIT" => Some(CallKind::Wait),
            "WAIT_ALL" => Some(CallKind::WaitAll),
            "SYNC" => Some(CallKind::Sync),
            _ => None,
        }
    }
}

impl fmt::Display for CallKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.lava_name())
    }
}

/// A message id (also a `lava-sync` barrier name): 1 to [`limits::MAX_ID`] bytes of ASCII
/// letters, digits and [`limits::ID_CHARS`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MessageId(String);

impl MessageId {
    /// Checks `id` and wraps it.
    pub fn new(id: &str) -> Result<MessageId, FieldProblem> {
        check_name(id)?;
        Ok(MessageId(id.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for MessageId {
    type Error = FieldProblem;
    fn try_from(id: String) -> Result<MessageId, FieldProblem> {
        check_name(&id)?;
        Ok(MessageId(id))
    }
}

impl From<MessageId> for String {
    fn from(id: MessageId) -> String {
        id.0
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a DUT helper asks of the group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Call {
    /// `lava-send ID [KEY=VALUE...]`: store this member's data for ID; never blocks.
    Send {
        id: MessageId,
        data: Vec<(String, String)>,
    },
    /// `lava-wait ID`: block until any member (this one included) has sent ID.
    Wait { id: MessageId },
    /// `lava-wait-all ID [ROLE]`: block until every member (of ROLE) has sent ID.
    WaitAll { id: MessageId, role: Option<String> },
    /// `lava-sync ID`: block until every member of the group has called `lava-sync ID`.
    Sync { id: MessageId },
}

impl Call {
    pub fn kind(&self) -> CallKind {
        match self {
            Call::Send { .. } => CallKind::Send,
            Call::Wait { .. } => CallKind::Wait,
            Call::WaitAll { .. } => CallKind::WaitAll,
            Call::Sync { .. } => CallKind::Sync,
        }
    }

    pub fn id(&self) -> &MessageId {
        match self {
            Call::Send { id, .. }
            | Call::Wait { id }
            | Call::WaitAll { id, .. }
            | Call::Sync { id } => id,
        }
    }

    /// The test case LAVA records for this call, in lower case:
    /// `multinode-send-ID`, `multinode-wait-ID`, `multinode-wait_all-ID`, `multinode-sync-ID`.
    pub fn test_case_name(&self) -> String {
        format!("multinode-{}-{}", self.kind().lava_name(), self.id()).to_ascii_lowercase()
    }

    /// Checks every field against [`limits`] (a call built in code or read back from storage
    /// is checked as a parsed one is).
    pub fn validate(&self) -> Result<(), CallError> {
        let kind = self.kind();
        // The id is a MessageId, checked when it was made.
        match self {
            Call::Send { data, .. } => {
                if data.len() > limits::MAX_PAIRS {
                    return Err(CallError::TooManyPairs { kind });
                }
                for (key, value) in data {
                    check_key(key).map_err(|problem| CallError::BadField {
                        kind,
                        field: Field::Key,
                        problem,
                    })?;
                    check_value(value).map_err(|problem| CallError::BadField {
                        kind,
                        field: Field::Value,
                        problem,
                    })?;
                }
            }
            Call::WaitAll {
                role: Some(role), ..
            } => check_name(role).map_err(|problem| CallError::BadField {
                kind,
                field: Field::Role,
                problem,
            })?,
            Call::Wait { .. } | Call::WaitAll { .. } | Call::Sync { .. } => {}
        }
        Ok(())
    }
}

/// Which field of a call is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Field {
    Id,
    Key,
    Value,
    Role,
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Field::Id => "message id",
            Field::Key => "key",
            Field::Value => "value",
            Field::Role => "role",
        })
    }
}

/// What is wrong with a field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum FieldProblem {
    #[error("is empty")]
    Empty,
    #[error("is longer than {max} bytes")]
    TooLong { max: usize },
    #[error("holds the character {0:?}, which is not allowed there")]
    BadChar(char),
}

/// A MultiNode line dutlab refuses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum CallError {
    #[error("LAVA_{0} is not a MultiNode call (SEND, WAIT, WAIT_ALL or SYNC)")]
    UnknownCall(String),
    #[error("LAVA_{0}: the arguments are not UTF-8")]
    NotUtf8(CallKind),
    #[error("LAVA_{kind}: the {field} {problem}")]
    BadField {
        kind: CallKind,
        field: Field,
        problem: FieldProblem,
    },
    #[error("LAVA_{kind}: more than {max} key=value pairs", max = limits::MAX_PAIRS)]
    TooManyPairs { kind: CallKind },
    #[error("LAVA_{kind}: unexpected argument {extra:?}")]
    ExtraArgument { kind: CallKind, extra: String },
}

impl CallError {
    /// The call the line meant, when its name was one: the runner answers a refused call with
    /// that call's `nack` line so that the DUT's helper does not block.
    pub fn kind(&self) -> Option<CallKind> {
        match self {
            CallError::UnknownCall(_) => None,
            CallError::NotUtf8(kind)
            | CallError::BadField { kind, .. }
            | CallError::TooManyPairs { kind }
            | CallError::ExtraArgument { kind, .. } => Some(*kind),
        }
    }
}

const PREFIX: &[u8] = b"<LAVA_MULTI_NODE> <LAVA_";
/// Longest bit of DUT text quoted in an error.
const QUOTE_MAX: usize = 64;

/// Reads the MultiNode call in one console line, if it holds one.
///
/// `None`: the line has no `<LAVA_MULTI_NODE> <LAVA_NAME ARGS>`. `Some(Err)`: it has one that
/// dutlab refuses (an unknown name, a bad field); the first such text in the line counts.
pub fn parse_call(line: &[u8]) -> Option<Result<Call, CallError>> {
    let (name, args) = find_call(line)?;
    let name = String::from_utf8_lossy(name);
    let Some(kind) = CallKind::from_name(&name) else {
        return Some(Err(CallError::UnknownCall(quote(&name))));
    };
    let Ok(args) = std::str::from_utf8(args) else {
        return Some(Err(CallError::NotUtf8(kind)));
    };
    Some(read_args(kind, args))
}

/// The first match of LAVA's pattern: `(NAME, ARGS)`.
fn find_call(line: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut from = 0;
    while let Some(at) = find(&line[from..], PREFIX) {
        let start = from + at + PREFIX.len();
        from = from + at + 1;
        let rest = &line[start..];
        // \S+ : a maximal run of non-whitespace; then exactly one space.
        let name_len = rest
            .iter()
            .position(|b| b.is_ascii_whitespace())
            .unwrap_or(rest.len());
        if name_len == 0 || rest.get(name_len) != Some(&b' ') {
            continue;
        }
        // [^>]+> : at least one byte before the first '>'.
        let args = &rest[name_len + 1..];
        match args.iter().position(|&b| b == b'>') {
            Some(end) if end > 0 => return Some((&rest[..name_len], &args[..end])),
            Some(_) => continue,
            // No '>' after here: no later prefix can match either (linear time on any line).
            None => return None,
        }
    }
    None
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn read_args(kind: CallKind, args: &str) -> Result<Call, CallError> {
    Ok(match kind {
        CallKind::Send => read_send(args)?,
        CallKind::Wait => Call::Wait {
            id: read_words(kind, args)?.0,
        },
        CallKind::WaitAll => {
            let (id, role) = read_words(kind, args)?;
            Call::WaitAll { id, role }
        }
        CallKind::Sync => Call::Sync {
            id: read_words(kind, args)?.0,
        },
    })
}

fn bad(kind: CallKind, field: Field) -> impl Fn(FieldProblem) -> CallError {
    move |problem| CallError::BadField {
        kind,
        field,
        problem,
    }
}

fn read_send(args: &str) -> Result<Call, CallError> {
    let kind = CallKind::Send;
    let mut pieces = split_send(args).into_iter();
    let id = pieces.next().unwrap_or_default().trim();
    let id = MessageId::new(id).map_err(bad(kind, Field::Id))?;
    let mut data: Vec<(String, String)> = Vec::new();
    for (count, piece) in pieces.enumerate() {
        if count >= limits::MAX_PAIRS {
            return Err(CallError::TooManyPairs { kind });
        }
        // split_send cuts only before `KEY=`.
        let (key, value) = piece.split_once('=').unwrap_or((piece, ""));
        let value = value.trim_end();
        check_key(key).map_err(bad(kind, Field::Key))?;
        check_value(value).map_err(bad(kind, Field::Value))?;
        match data.iter_mut().find(|(k, _)| k == key) {
            Some(pair) => pair.1 = value.to_string(),
            None => data.push((key.to_string(), value.to_string())),
        }
    }
    Ok(Call::Send { id, data })
}

/// `ID` or, for `WAIT_ALL`, `ID [ROLE]`.
fn read_words(kind: CallKind, args: &str) -> Result<(MessageId, Option<String>), CallError> {
    let mut words = args.split_whitespace();
    let id = MessageId::new(words.next().unwrap_or_default()).map_err(bad(kind, Field::Id))?;
    let role = match (kind, words.next()) {
        (CallKind::WaitAll, Some(role)) => {
            check_name(role).map_err(bad(kind, Field::Role))?;
            Some(role.to_string())
        }
        (CallKind::WaitAll, None) => None,
        (_, Some(extra)) => {
            return Err(CallError::ExtraArgument {
                kind,
                extra: quote(extra),
            });
        }
        (_, None) => None,
    };
    if let Some(extra) = words.next() {
        return Err(CallError::ExtraArgument {
            kind,
            extra: quote(extra),
        });
    }
    Ok((id, role))
}

/// Splits `lava-send` arguments before each maximal run of whitespace followed by `KEY=`
/// (LAVA's `re.split(r"\s+(?=\w+=)", ...)`, with our key characters).
fn split_send(args: &str) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut piece_start = 0;
    let mut prev_space = false;
    for (i, c) in args.char_indices() {
        let space = c.is_whitespace();
        if space && !prev_space {
            let run_end = args[i..]
                .char_indices()
                .find(|(_, c)| !c.is_whitespace())
                .map_or(args.len(), |(j, _)| i + j);
            if starts_with_key(&args[run_end..]) {
                pieces.push(&args[piece_start..i]);
                piece_start = run_end;
            }
        }
        prev_space = space;
    }
    pieces.push(&args[piece_start..]);
    pieces
}

/// Whether `text` begins with `KEY=` (looking no further than the key's characters).
fn starts_with_key(text: &str) -> bool {
    let end = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || limits::KEY_CHARS.contains(c)))
        .unwrap_or(text.len());
    text[end..].starts_with('=') && check_key(&text[..end]).is_ok()
}

fn check_name(name: &str) -> Result<(), FieldProblem> {
    if name.is_empty() {
        return Err(FieldProblem::Empty);
    }
    if name.len() > limits::MAX_ID {
        return Err(FieldProblem::TooLong {
            max: limits::MAX_ID,
        });
    }
    match name
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || limits::ID_CHARS.contains(c)))
    {
        Some(c) => Err(FieldProblem::BadChar(c)),
        None => Ok(()),
    }
}

fn check_key(key: &str) -> Result<(), FieldProblem> {
    let Some(first) = key.chars().next() else {
        return Err(FieldProblem::Empty);
    };
    if key.len() > limits::MAX_KEY {
        return Err(FieldProblem::TooLong {
            max: limits::MAX_KEY,
        });
    }
    if !(first.is_ascii_alphanumeric() || first == '_') {
        return Err(FieldProblem::BadChar(first));
    }
    match key
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || limits::KEY_CHARS.contains(c)))
    {
        Some(c) => Err(FieldProblem::BadChar(c)),
        None => Ok(()),
    }
}

fn check_value(value: &str) -> Result<(), FieldProblem> {
    if value.len() > limits::MAX_VALUE {
        return Err(FieldProblem::TooLong {
            max: limits::MAX_VALUE,
        });
    }
    match value
        .chars()
        .find(|&c| c.is_control() || c == '<' || c == '>')
    {
        Some(c) => Err(FieldProblem::BadChar(c)),
        None => Ok(()),
    }
}

/// At most [`QUOTE_MAX`] bytes of DUT text, for an error message.
fn quote(text: &str) -> String {
    let mut end = text.len().min(QUOTE_MAX);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

#[cfg(test)]
mod tests;
