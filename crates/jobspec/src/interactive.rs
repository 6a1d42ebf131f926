//! LAVA's console test actions that need no overlay and no POSIX shell: `test: interactive:`
//! (scripts of commands, prompts and patterns) and `test: monitors:` (patterns watched in the
//! console output), parsed to LAVA's schemas (`lava_common/schemas/test/interactive.py`,
//! `monitor.py`).
//!
//! Invariants of a parsed [`InteractiveScript`] and [`Monitor`]:
//! - Names match `[-_a-zA-Z0-9.]+` (LAVA's schema); prompts, success and failure messages and
//!   `expected` case names are not empty.
//! - Every prompt, message, `start`, `end` and `pattern` compiles with [`console_pattern`],
//!   the one place that says how the runner matches them (LAVA's pexpect: `.` matches a line
//!   break), within a bounded compiled size.
//! - A script item is exactly one [`ScriptStep`]: a `delay` wins over everything else in its
//!   item (as in LAVA), a multinode call over a command; an item with none of them is an
//!   error, since LAVA fails on it at run time. A command holds no line break or control
//!   character and fits a console line ([`MAX_COMMAND`]).
//! - `fixupdict` values of a monitor are `pass`, `fail`, `skip` or `unknown`.

use std::collections::BTreeMap;

use crate::JobError;
use crate::fields::{Ctx, Fields, Path, boolean, text, text_or_list};
use crate::testdef::{MAX_REGEX_BYTES, regex_reason};
use crate::yaml::Value;

/// Longest command an interactive step may send (a busybox or U-Boot line holds about 1000).
pub const MAX_COMMAND: usize = 1000;

/// Compiles a console pattern of an interactive script or a monitor the way the runner
/// matches it: LAVA hands these strings to pexpect, which compiles them with `re.DOTALL`.
pub fn console_pattern(pattern: &str) -> Result<regex::bytes::Regex, regex::Error> {
    regex::bytes::RegexBuilder::new(pattern)
        .dot_matches_new_line(true)
        .size_limit(MAX_REGEX_BYTES)
        .dfa_size_limit(MAX_REGEX_BYTES)
        .build()
}

/// One entry of `test.interactive`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InteractiveScript {
    /// The suite of its cases is `<stage>_<name>`.
    pub name: String,
    /// Patterns that say the console waits for the next command.
    pub prompts: Vec<String>,
    pub echo: Echo,
    /// Case names the script must report; others are forced to fail (LAVA's `expected`).
    pub expected: Vec<String>,
    pub script: Vec<ScriptStep>,
}

/// `echo:` of an interactive script.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Echo {
    /// What the console echoes is matched like any output.
    #[default]
    Keep,
    /// `echo: discard`: the first line after each command sent is dropped.
    Discard,
}

/// One item of an interactive script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScriptStep {
    /// `delay: N`: wait N seconds.
    Delay(u64),
    /// `lava-send`, `lava-wait`, `lava-wait-all`, `lava-sync`: needs a multinode job.
    Multinode {
        call: String,
        argument: String,
    },
    Command(CommandStep),
}

/// A `command` item (the command may be null: send nothing, just wait).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandStep {
    pub command: Option<String>,
    /// A named command is a test case; an unnamed one that fails ends the job.
    pub name: Option<String>,
    pub after_match: AfterMatch,
    pub successes: Vec<String>,
    pub failures: Vec<FailurePattern>,
}

/// `wait_for_prompt:` after a success or failure message matched.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AfterMatch {
    /// The default: wait for a prompt before the next item.
    #[default]
    WaitForPrompt,
    /// `wait_for_prompt: false`: go on at once.
    GoOn,
}

/// One of a command's `failures`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailurePattern {
    pub message: String,
    /// `exception:` ends the job with this kind of error.
    pub exception: Option<LavaException>,
    /// `error:` the reason given with the exception (else the matched text).
    pub error: Option<String>,
}

/// The errors a failure pattern may raise (LAVA's schema allows these three).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LavaException {
    InfrastructureError,
    JobError,
    TestError,
}

impl LavaException {
    pub fn as_str(self) -> &'static str {
        match self {
            LavaException::InfrastructureError => "InfrastructureError",
            LavaException::JobError => "JobError",
            LavaException::TestError => "TestError",
        }
    }
}

/// One entry of `test.monitors`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Monitor {
    /// The suite of its cases: the name lower-cased, spaces as `-` (LAVA's rule).
    pub name: String,
    pub start: String,
    pub end: String,
    /// Named groups `test_case_id`, `result`, `measurement`, `units`.
    pub pattern: String,
    pub fixupdict: BTreeMap<String, String>,
    pub expected: Vec<String>,
}

const MULTINODE_CALLS: [&str; 4] = ["lava-send", "lava-wait", "lava-wait-all", "lava-sync"];
const RESULT_WORDS: [&str; 4] = ["pass", "fail", "skip", "unknown"];

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn name(cx: &Ctx, f: &mut Fields, key: &str, required: bool) -> Result<Option<String>, JobError> {
    let value = if required {
        Some(f.req_text(cx, key)?)
    } else {
        f.opt_text(cx, key)?
    };
    if let Some(n) = &value
        && !valid_name(n)
    {
        return Err(cx.err(
            &f.at(key),
            format!("'{n}' is not a valid name (use letters, digits, '-', '_' and '.')"),
        ));
    }
    Ok(value)
}

fn pattern(cx: &Ctx, path: &Path, v: Value, nonempty: bool) -> Result<String, JobError> {
    let p = text(cx, path, v)?;
    if nonempty && p.is_empty() {
        return Err(cx.err(path, "must not be empty"));
    }
    console_pattern(&p).map_err(|e| {
        cx.err(
            path,
            format!("invalid regular expression: {}", regex_reason(&e)),
        )
    })?;
    Ok(p)
}

fn list(cx: &Ctx, path: &Path, v: Value, what: &str) -> Result<Vec<Value>, JobError> {
    match v {
        Value::Seq(items) => Ok(items),
        other => Err(cx.expected(path, what, &other)),
    }
}

fn expected(cx: &Ctx, f: &mut Fields) -> Result<Vec<String>, JobError> {
    let Some(v) = f.take("expected") else {
        return Ok(Vec::new());
    };
    let path = f.at("expected");
    let names = text_or_list(cx, &path, v)?;
    if let Some(i) = names.iter().position(String::is_empty) {
        return Err(cx.err(&path.index(i), "must not be empty"));
    }
    Ok(names)
}

/// `test.interactive`: a non-empty list of scripts.
pub(crate) fn scripts(
    cx: &mut Ctx,
    path: &Path,
    v: Value,
) -> Result<Vec<InteractiveScript>, JobError> {
    let items = list(cx, path, v, "a list of interactive scripts")?;
    if items.is_empty() {
        return Err(cx.err(path, "the list of interactive scripts is empty"));
    }
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| script(cx, path.index(i), item))
        .collect()
}

fn script(cx: &mut Ctx, path: Path, v: Value) -> Result<InteractiveScript, JobError> {
    let mut f = Fields::new(cx, path, v)?;
    let name = name(cx, &mut f, "name", true)?.unwrap_or_default();
    let ppath = f.at("prompts");
    let prompts = match f.req(cx, "prompts")? {
        Value::Seq(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, p)| pattern(cx, &ppath.index(i), p, true))
            .collect::<Result<Vec<_>, _>>()?,
        // LAVA's schema wants a list; one string is read as a list of one, like boot prompts.
        other => vec![pattern(cx, &ppath, other, true)?],
    };
    if prompts.is_empty() {
        return Err(cx.err(&ppath, "at least one prompt is needed"));
    }
    let echo = match f.opt_text(cx, "echo")?.as_deref() {
        None => Echo::Keep,
        Some("discard") => Echo::Discard,
        Some(other) => {
            return Err(cx.err(
                &f.at("echo"),
                format!("'{other}' is not an echo mode (LAVA knows only 'discard')"),
            ));
        }
    };
    let expected = expected(cx, &mut f)?;
    let spath = f.at("script");
    let items = list(cx, &spath, f.req(cx, "script")?, "a list of script items")?;
    let script = items
        .into_iter()
        .enumerate()
        .map(|(i, item)| step(cx, spath.index(i), item))
        .collect::<Result<Vec<_>, _>>()?;
    f.finish(cx);
    Ok(InteractiveScript {
        name,
        prompts,
        echo,
        expected,
        script,
    })
}

fn step(cx: &mut Ctx, path: Path, v: Value) -> Result<ScriptStep, JobError> {
    let mut f = Fields::new(cx, path, v)?;
    if let Some(v) = f.take("delay") {
        let dpath = f.at("delay");
        let seconds = match v {
            Value::Int(n) if n >= 0 => u64::try_from(n).ok(),
            _ => None,
        }
        .ok_or_else(|| cx.err(&dpath, "expected a whole number of seconds"))?;
        for key in f.keys().cloned().collect::<Vec<_>>() {
            cx.warn(
                &f.at(&key),
                "ignored: LAVA runs only the delay of an item that has one",
            );
        }
        return Ok(ScriptStep::Delay(seconds));
    }
    for call in MULTINODE_CALLS {
        if let Some(v) = f.take(call) {
            let argument = text(cx, &f.at(call), v)?;
            f.finish(cx);
            return Ok(ScriptStep::Multinode {
                call: call.to_owned(),
                argument,
            });
        }
    }
    let cpath = f.at("command");
    let command = match f.take_raw("command") {
        None => {
            return Err(cx.err(
                &f.path,
                "'command' is missing (give a command, null to send nothing and wait, or a \
                 delay)",
            ));
        }
        Some(Value::Null) => None,
        Some(v) => {
            let c = text(cx, &cpath, v)?;
            if c.len() > MAX_COMMAND {
                return Err(cx.err(
                    &cpath,
                    format!(
                        "{} bytes long; a console line holds at most {MAX_COMMAND}",
                        c.len()
                    ),
                ));
            }
            if c.bytes().any(|b| b < 0x20 && b != b'\t' || b == 0x7f) {
                return Err(cx.err(
                    &cpath,
                    "holds a line break or control character (one command per item)",
                ));
            }
            Some(c)
        }
    };
    let name = name(cx, &mut f, "name", false)?;
    let after_match = match f.take("wait_for_prompt") {
        Some(v) => match boolean(cx, &f.at("wait_for_prompt"), v)? {
            true => AfterMatch::WaitForPrompt,
            false => AfterMatch::GoOn,
        },
        None => AfterMatch::WaitForPrompt,
    };
    let successes = match f.take("successes") {
        Some(v) => {
            let path = f.at("successes");
            list(cx, &path, v, "a list of {message: ...}")?
                .into_iter()
                .enumerate()
                .map(|(i, item)| {
                    let mut m = Fields::new(cx, path.index(i), item)?;
                    let mpath = m.at("message");
                    let message = pattern(cx, &mpath, m.req(cx, "message")?, true)?;
                    m.finish(cx);
                    Ok(message)
                })
                .collect::<Result<Vec<_>, JobError>>()?
        }
        None => Vec::new(),
    };
    let failures = match f.take("failures") {
        Some(v) => {
            let path = f.at("failures");
            list(cx, &path, v, "a list of {message: ...}")?
                .into_iter()
                .enumerate()
                .map(|(i, item)| failure(cx, path.index(i), item))
                .collect::<Result<Vec<_>, JobError>>()?
        }
        None => Vec::new(),
    };
    f.finish(cx);
    Ok(ScriptStep::Command(CommandStep {
        command,
        name,
        after_match,
        successes,
        failures,
    }))
}

fn failure(cx: &mut Ctx, path: Path, v: Value) -> Result<FailurePattern, JobError> {
    let mut f = Fields::new(cx, path, v)?;
    let mpath = f.at("message");
    let message = pattern(cx, &mpath, f.req(cx, "message")?, true)?;
    let exception = match f.opt_text(cx, "exception")?.as_deref() {
        None => None,
        Some("InfrastructureError") => Some(LavaException::InfrastructureError),
        Some("JobError") => Some(LavaException::JobError),
        Some("TestError") => Some(LavaException::TestError),
        Some(other) => {
            return Err(cx.err(
                &f.at("exception"),
                format!("'{other}' is not one of InfrastructureError, JobError, TestError"),
            ));
        }
    };
    let error = f.opt_text(cx, "error")?;
    if error.as_deref() == Some("") {
        return Err(cx.err(&f.at("error"), "must not be empty"));
    }
    f.finish(cx);
    Ok(FailurePattern {
        message,
        exception,
        error,
    })
}

/// `test.monitors`: a non-empty list of monitors.
pub(crate) fn monitors(cx: &mut Ctx, path: &Path, v: Value) -> Result<Vec<Monitor>, JobError> {
    let items = list(cx, path, v, "a list of monitors")?;
    if items.is_empty() {
        return Err(cx.err(path, "the list of monitors is empty"));
    }
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| monitor(cx, path.index(i), item))
        .collect()
}

fn monitor(cx: &mut Ctx, path: Path, v: Value) -> Result<Monitor, JobError> {
    let mut f = Fields::new(cx, path, v)?;
    let name = name(cx, &mut f, "name", true)?.unwrap_or_default();
    let required = |f: &mut Fields, key: &str| -> Result<String, JobError> {
        let path = f.at(key);
        let v = f.req(cx, key)?;
        pattern(cx, &path, v, false)
    };
    let start = required(&mut f, "start")?;
    let end = required(&mut f, "end")?;
    let pattern_text = required(&mut f, "pattern")?;
    let fixupdict = match f.take("fixupdict") {
        Some(v) => {
            let fpath = f.at("fixupdict");
            let map = crate::fields::scalar_map(cx, &fpath, v)?;
            if let Some((k, v)) = map
                .iter()
                .find(|(_, v)| !RESULT_WORDS.contains(&v.as_str()))
            {
                return Err(cx.err(
                    &fpath.key(k),
                    format!("'{v}' is not a result (use pass, fail, skip or unknown)"),
                ));
            }
            map
        }
        None => BTreeMap::new(),
    };
    let expected = expected(cx, &mut f)?;
    f.finish(cx);
    Ok(Monitor {
        name,
        start,
        end,
        pattern: pattern_text,
        fixupdict,
        expected,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_patterns_match_across_lines_as_pexpect_does() -> Result<(), regex::Error> {
        let re = console_pattern("start.*end")?;
        assert!(re.is_match(b"start\r\nmiddle\r\nend"));
        Ok(())
    }
}
