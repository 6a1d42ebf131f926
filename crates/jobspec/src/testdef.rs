//! LAVA test definitions (`Lava-Test Test Definition 1.0`): metadata, params, install and
//! run steps, and the optional result-parsing pattern.
//!
//! Invariants of a parsed [`TestDefinition`]:
//! - `metadata.format` is exactly [`TEST_DEFINITION_FORMAT`] and `metadata.name` is not empty.
//! - Steps are in file order, each a string (numbers and booleans are stringified). A step YAML
//!   read as a mapping (`- echo "check: pass"`) is an error whose reason shows the step quoted.
//! - Keys dutlab accepts but does not act on (`install.deps`, `install.git-repos`, `expected`,
//!   ...) are "not honoured" warnings naming the key.
//! - `parse.pattern`, when present, compiles with the `regex` crate within a bounded size.
//! - `params` merges LAVA's `params` and `parameters` (`parameters` wins on a clash, with a
//!   warning); null values are empty strings.
//! - `warnings` holds every warning raised while parsing this definition, with full paths.

use std::collections::BTreeMap;

use crate::fields::{Ctx, Fields, Path, scalar_map, text, text_list};
use crate::yaml::Value;
use crate::{JobError, Warning};

/// The only `metadata.format` LAVA (and this crate) accepts.
pub const TEST_DEFINITION_FORMAT: &str = "Lava-Test Test Definition 1.0";

/// Largest compiled size of a `parse.pattern` regex, in bytes.
pub(crate) const MAX_REGEX_BYTES: usize = 1 << 20;

/// A LAVA test definition: what runs in the DUT's shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestDefinition {
    pub metadata: DefinitionMetadata,
    /// Default values of the definition's shell variables.
    pub params: BTreeMap<String, String>,
    /// `install.steps`.
    pub install_steps: Vec<String>,
    /// `run.steps`; may be empty.
    pub run_steps: Vec<String>,
    /// `parse:` — a pattern that turns output lines into test-case results.
    pub parse: Option<ParsePattern>,
    pub warnings: Vec<Warning>,
}

/// The `metadata:` block of a test definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefinitionMetadata {
    /// Always [`TEST_DEFINITION_FORMAT`].
    pub format: String,
    pub name: String,
    pub description: Option<String>,
    /// Other scalar entries (`version`, ...), stringified.
    pub other: BTreeMap<String, String>,
    /// Other list entries (`maintainer`, `os`, `scope`, `devices`, ...).
    pub other_lists: BTreeMap<String, Vec<String>>,
}

/// `parse: {pattern, fixupdict}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsePattern {
    /// A regex (Python named groups `(?P<name>...)` work), validated to compile.
    pub pattern: String,
    /// Maps results found by the pattern to LAVA results (`PASS: pass`).
    pub fixupdict: BTreeMap<String, String>,
}

/// Parses a test definition mapping found at `path` (the root for a standalone file,
/// `actions[2].test.definitions[0].repository` for an inline one).
pub(crate) fn parse(cx: &mut Ctx, path: Path, v: Value) -> Result<TestDefinition, JobError> {
    let first_warning = cx.warnings.len();
    let mut f = Fields::new(cx, path, v)?;

    let metadata = metadata(cx, &mut f)?;
    let params = params(cx, &mut f)?;

    let mut install_steps = Vec::new();
    if let Some(v) = f.take("install") {
        let mut inst = Fields::new(cx, f.at("install"), v)?;
        if let Some(steps) = inst.take("steps") {
            install_steps = step_list(cx, &inst.at("steps"), steps)?;
        }
        let deps_variants: Vec<String> = inst
            .keys()
            .filter(|k| k.starts_with("deps-"))
            .cloned()
            .collect();
        const NO_PACKAGES: &str = "packages are not installed in the DUT; install them in a step";
        for key in &deps_variants {
            inst.ignore(cx, &[(key.as_str(), NO_PACKAGES)]);
        }
        inst.ignore(
            cx,
            &[
                ("deps", NO_PACKAGES),
                (
                    "git-repos",
                    "repositories are not cloned into the DUT; clone them in a step",
                ),
                ("keys", "package signing keys are not added in the DUT"),
                ("sources", "package sources are not added in the DUT"),
            ],
        );
        inst.finish(cx);
    }

    let mut run_steps = Vec::new();
    if let Some(v) = f.take("run") {
        let mut run = Fields::new(cx, f.at("run"), v)?;
        if !run.keys().any(|k| k == "steps") {
            return Err(cx.err(&run.path, "'steps' is missing"));
        }
        if let Some(steps) = run.take("steps") {
            run_steps = step_list(cx, &run.at("steps"), steps)?;
        }
        run.finish(cx);
    }

    let parse = match f.take("parse") {
        Some(v) => Some(parse_pattern(cx, f.at("parse"), v)?),
        None => None,
    };

    f.ignore(
        cx,
        &[(
            "expected",
            "test cases that never reported are not listed as missing",
        )],
    );
    f.finish(cx);
    Ok(TestDefinition {
        metadata,
        params,
        install_steps,
        run_steps,
        parse,
        warnings: cx.warnings[first_warning..].to_vec(),
    })
}

/// `install.steps` or `run.steps`: a list of shell commands. A step YAML read as a mapping
/// (a plain scalar with `: ` in it) is refused with the step shown quoted.
fn step_list(cx: &Ctx, path: &Path, v: Value) -> Result<Vec<String>, JobError> {
    if let Value::Seq(items) = &v
        && let Some((i, Value::Map(map))) = items
            .iter()
            .enumerate()
            .find(|(_, item)| matches!(item, Value::Map(_)))
    {
        return Err(cx.err(&path.index(i), mapping_step_reason(map)));
    }
    text_list(cx, path, v)
}

/// Why a step that is a mapping is refused, and how to write it as a string.
fn mapping_step_reason(map: &BTreeMap<String, Value>) -> String {
    let split = match map.iter().next() {
        Some((key, Value::Null)) if map.len() == 1 => Some((
            format!("{key}:"),
            format!("key '{key}' with no value, because of the ':' at its end"),
        )),
        Some((key, value)) if map.len() == 1 => value.scalar_text().map(|value| {
            (
                format!("{key}: {value}"),
                format!("key '{key}' and value '{value}', because of the ': ' in it"),
            )
        }),
        _ => None,
    };
    match split {
        Some((step, how)) => format!(
            "expected a string, found a mapping: YAML reads this step as a {how}; quote the \
             whole step: - '{}'",
            step.replace('\'', "''")
        ),
        None => "expected a string, found a mapping: a step is one shell command; quote \
                 the whole step in single quotes, e.g. - 'echo \"check: pass\"' (write '' \
                 for a ' inside)"
            .to_owned(),
    }
}

fn metadata(cx: &mut Ctx, f: &mut Fields) -> Result<DefinitionMetadata, JobError> {
    let v = f.req(cx, "metadata")?;
    let mut m = Fields::new(cx, f.at("metadata"), v)?;
    let format = m.req_text(cx, "format")?;
    if format.trim() != TEST_DEFINITION_FORMAT {
        return Err(cx.err(
            &m.at("format"),
            format!("'{format}' is not a supported format (use '{TEST_DEFINITION_FORMAT}')"),
        ));
    }
    let name = m.req_nonempty(cx, "name")?;
    let description = m.opt_text(cx, "description")?;
    let mut other = BTreeMap::new();
    let mut other_lists = BTreeMap::new();
    let rest: Vec<String> = m.keys().cloned().collect();
    for key in rest {
        let path = m.at(&key);
        match m.take(&key) {
            None => {
                other.insert(key, String::new());
            }
            Some(v @ Value::Seq(_)) => {
                other_lists.insert(key, text_list(cx, &path, v)?);
            }
            Some(Value::Map(_)) => cx.warn(&path, "a mapping here is not supported, ignored"),
            Some(v) => {
                other.insert(key, text(cx, &path, v)?);
            }
        }
    }
    m.finish(cx);
    Ok(DefinitionMetadata {
        format: TEST_DEFINITION_FORMAT.to_owned(),
        name,
        description,
        other,
        other_lists,
    })
}

/// LAVA accepts both `params` and `parameters`; they are merged, `parameters` winning.
pub(crate) fn params(cx: &mut Ctx, f: &mut Fields) -> Result<BTreeMap<String, String>, JobError> {
    let mut out = match f.take("params") {
        Some(v) => scalar_map(cx, &f.at("params"), v)?,
        None => BTreeMap::new(),
    };
    if let Some(v) = f.take("parameters") {
        let path = f.at("parameters");
        for (k, val) in scalar_map(cx, &path, v)? {
            if let Some(old) = out.get(&k)
                && *old != val
            {
                cx.warn(
                    &path.key(&k),
                    "also in 'params' with another value; 'parameters' wins",
                );
            }
            out.insert(k, val);
        }
    }
    Ok(out)
}

fn parse_pattern(cx: &mut Ctx, path: Path, v: Value) -> Result<ParsePattern, JobError> {
    let mut p = Fields::new(cx, path, v)?;
    let pattern_path = p.at("pattern");
    let pattern = p.req_text(cx, "pattern")?;
    let re = regex::RegexBuilder::new(&pattern)
        .size_limit(MAX_REGEX_BYTES)
        .dfa_size_limit(MAX_REGEX_BYTES)
        .build()
        .map_err(|e| {
            cx.err(
                &pattern_path,
                format!("invalid regular expression: {}", regex_reason(&e)),
            )
        })?;
    let names: Vec<&str> = re.capture_names().flatten().collect();
    for group in ["test_case_id", "result"] {
        if !names.contains(&group) {
            cx.warn(
                &pattern_path,
                format!(
                    "has no named group '{group}' (?P<{group}>...); lines cannot become results"
                ),
            );
        }
    }
    let fixupdict = match p.take("fixupdict") {
        Some(v) => scalar_map(cx, &p.at("fixupdict"), v)?,
        None => BTreeMap::new(),
    };
    p.finish(cx);
    Ok(ParsePattern { pattern, fixupdict })
}

/// The regex crate's messages span several lines with a caret; keep the last `error:` line.
pub(crate) fn regex_reason(e: &regex::Error) -> String {
    let msg = e.to_string();
    msg.lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("error:"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| msg.split_whitespace().collect::<Vec<_>>().join(" "))
}
