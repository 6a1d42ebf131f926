//! `test: interactive:`: LAVA's interactive scripts, run on the DUT's console as LAVA's
//! `lava-test-interactive` runs them, with no overlay and no POSIX shell assumed (a U-Boot
//! prompt works as well as a shell's).
//!
//! Per script (suite `<stage>_<name>`, `stage` counting the definitions test actions before
//! this one, as LAVA's does), per item:
//!
//! ```text
//!  delay N ──────────────────────────> sleep N s
//!  command (or null: send nothing) ──> [discard one echoed line] ─> wait for the first of
//!        prompts ┬ successes given: fail, else pass ─────────────────────────> next item
//!        failure ┼ fail (an `exception` ends the job) ┐
//!        success ┴ pass (named groups: `{name}` in later commands) ┴ [wait for a prompt]
//! ```
//!
//! Invariants:
//! - Nothing is typed but the script's commands (after `{group}` substitution), each as one
//!   line; the runner's own prompt, `stty` or status markers are never used.
//! - Every wait ends at the action's (or the job's) deadline, not at the connection timeout:
//!   LAVA's loop waits again when a connection timeout passes. A deadline that fires ends the
//!   job timed out; the case being waited for and the script (`lava/<suite>`) are recorded
//!   failed first, as LAVA records them in its `finally`.
//! - `{name}` in a command is replaced by what the named group `name` of an earlier success
//!   message of the same action matched (control characters removed, bounded).
//! - A named item is a case of the script's suite; an unnamed one that fails ends the job
//!   `failed` (LAVA's test error "Failed to run command"). Each script that ends adds
//!   `lava/<suite>` pass or fail.
//! - `expected`: a named case not in the list is forced to fail; a listed case that never
//!   reported is added as a fail, also when the job ends in the middle of the action.

use std::collections::BTreeMap;

use driver::expect::{LineOr, Matched};
use jobspec::{
    AfterMatch, CommandStep, Echo, InteractiveScript, LavaException, ScriptStep, console_pattern,
};
use proto::{CaseResult, TestCase};
use regex::bytes::Regex;
use tokio::sync::mpsc::UnboundedSender;

use crate::session::{DutShell, push_case};
use crate::{JobEnd, Limit, RunEvent};

/// Where the results of one test action go.
pub(crate) struct Sink<'a> {
    pub events: &'a UnboundedSender<RunEvent>,
    pub cases: &'a mut Vec<TestCase>,
}

impl Sink<'_> {
    pub(crate) fn case(&mut self, case: TestCase) {
        push_case(self.cases, self.events, case);
    }

    pub(crate) fn note(&self, text: String) {
        let _ = self.events.send(RunEvent::Note(text));
    }
}

/// Runs the scripts of one interactive test action (`field` is its `actions[N].test`).
pub(crate) async fn run_scripts(
    shell: &mut DutShell,
    scripts: &[InteractiveScript],
    stage: usize,
    field: &str,
    limit: Limit,
    sink: &mut Sink<'_>,
) -> Result<(), JobEnd> {
    // LAVA keeps one substitution table for the whole action.
    let mut substitutions = BTreeMap::new();
    for (i, script) in scripts.iter().enumerate() {
        let suite = format!("{stage}_{}", script.name);
        let mut run = ScriptRun {
            script,
            suite: suite.clone(),
            field: format!("{field}.interactive[{i}]"),
            reported: BTreeMap::new(),
            substitutions: &mut substitutions,
        };
        let end = run.run(shell, limit, sink).await;
        let result = match end {
            Ok(()) => CaseResult::Pass,
            Err(_) => CaseResult::Fail,
        };
        sink.case(TestCase::new("lava", suite.clone(), result));
        run.missing_expected(sink);
        if let Err(end) = end {
            // LAVA's cleanup reports the expected cases of the scripts that did not run.
            for later in &scripts[i + 1..] {
                let suite = format!("{stage}_{}", later.name);
                for name in &later.expected {
                    sink.case(TestCase::new(suite.clone(), name.clone(), CaseResult::Fail));
                }
            }
            return Err(end);
        }
    }
    Ok(())
}

struct ScriptRun<'a> {
    script: &'a InteractiveScript,
    suite: String,
    field: String,
    /// Named cases reported so far, with their results.
    reported: BTreeMap<String, CaseResult>,
    /// `{group}` -> text, from the named groups of success matches (of the whole action).
    substitutions: &'a mut BTreeMap<String, String>,
}

/// How one wait of a command item ended.
enum Found {
    Prompt,
    Failure(usize),
    Success(usize),
}

impl ScriptRun<'_> {
    async fn run(
        &mut self,
        shell: &mut DutShell,
        limit: Limit,
        sink: &mut Sink<'_>,
    ) -> Result<(), JobEnd> {
        let prompts = self.compile("prompts", &self.script.prompts)?;
        for (j, step) in self.script.script.iter().enumerate() {
            match step {
                ScriptStep::Delay(seconds) => {
                    let until =
                        tokio::time::Instant::now() + std::time::Duration::from_secs(*seconds);
                    if until > limit.at {
                        tokio::time::sleep_until(limit.at).await;
                        return Err(JobEnd::timed_out(format!(
                            "{} timeout ({}) fired during the delay of {}.script[{j}]",
                            limit.level,
                            crate::human_duration(limit.length),
                            self.field
                        )));
                    }
                    tokio::time::sleep_until(until).await;
                }
                // Refused by `jobspec::check_runnable` before the run.
                ScriptStep::Multinode { call, .. } => {
                    return Err(JobEnd::job_error(format!(
                        "{}.script[{j}].{call}: needs a multinode job",
                        self.field
                    )));
                }
                ScriptStep::Command(step) => {
                    let field = format!("{}.script[{j}]", self.field);
                    let outcome = self.command(shell, step, &prompts, &field, limit).await;
                    let result = match &outcome {
                        Ok(result) => *result,
                        Err(_) => CaseResult::Fail,
                    };
                    if let Some(name) = &step.name {
                        let result = self.unexpected(name, result, sink);
                        self.reported.insert(name.clone(), result);
                        sink.case(TestCase::new(self.suite.clone(), name.clone(), result));
                    }
                    let result = outcome?;
                    if step.name.is_none() && result == CaseResult::Fail {
                        return Err(JobEnd::failed(format!(
                            "{field}: Failed to run command '{}'",
                            step.command.as_deref().unwrap_or("None")
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    fn compile(&self, what: &str, patterns: &[String]) -> Result<Vec<Regex>, JobEnd> {
        patterns
            .iter()
            .map(|p| {
                console_pattern(p)
                    .map_err(|e| JobEnd::job_error(format!("{}.{what}: {p:?}: {e}", self.field)))
            })
            .collect()
    }

    /// One command item: its result, or how the job ends.
    async fn command(
        &mut self,
        shell: &mut DutShell,
        step: &CommandStep,
        prompts: &[Regex],
        field: &str,
        limit: Limit,
    ) -> Result<CaseResult, JobEnd> {
        let messages: Vec<String> = step.failures.iter().map(|f| f.message.clone()).collect();
        let failures = self.compile("failures", &messages)?;
        let successes = self.compile("successes", &step.successes)?;
        let console = shell.console();
        if let Some(command) = &step.command {
            let line = self.substitute(command);
            console
                .send_line(&line)
                .await
                .map_err(|e| JobEnd::infra_error(format!("{field}: console: {e}")))?;
            if self.script.echo == Echo::Discard {
                // LAVA's `readline`: the rest of the current line, whatever it holds.
                match console.expect_mut().next_line_or(&[], limit.at).await {
                    Ok(LineOr::Line(_) | LineOr::Matched(_)) => {}
                    Err(e) => return Err(limit.expect_error(e)),
                }
            }
        }
        let all: Vec<&Regex> = prompts.iter().chain(&failures).chain(&successes).collect();
        let matched = console
            .expect_mut()
            .expect(&all, limit.at)
            .await
            .map_err(|e| limit.expect_error(e))?;
        let found = if matched.index < prompts.len() {
            Found::Prompt
        } else if matched.index < prompts.len() + failures.len() {
            Found::Failure(matched.index - prompts.len())
        } else {
            Found::Success(matched.index - prompts.len() - failures.len())
        };
        let result = match found {
            Found::Prompt if !successes.is_empty() => return Ok(CaseResult::Fail),
            Found::Prompt => return Ok(CaseResult::Pass),
            Found::Failure(k) => {
                let failure = &step.failures[k];
                if let Some(exception) = failure.exception {
                    let text = String::from_utf8_lossy(&matched.text);
                    let reason = crate::report::printable(&format!(
                        "{field}.failures[{k}]: {}: {}",
                        exception.as_str(),
                        failure.error.as_deref().unwrap_or(&text)
                    ));
                    return Err(match exception {
                        LavaException::InfrastructureError => JobEnd::infra_error(reason),
                        LavaException::JobError => JobEnd::job_error(reason),
                        LavaException::TestError => JobEnd::failed(reason),
                    });
                }
                CaseResult::Fail
            }
            Found::Success(k) => {
                self.capture(&successes[k], &matched);
                CaseResult::Pass
            }
        };
        if step.after_match == AfterMatch::WaitForPrompt {
            let prompts: Vec<&Regex> = prompts.iter().collect();
            console
                .expect_mut()
                .expect(&prompts, limit.at)
                .await
                .map_err(|e| limit.expect_error(e))?;
        }
        Ok(result)
    }

    /// Keeps the named groups of a success match for `{name}` in later commands.
    fn capture(&mut self, re: &Regex, matched: &Matched) {
        let mut haystack = matched.before.clone();
        haystack.extend_from_slice(&matched.text);
        let Some(caps) = re.captures_at(&haystack, matched.before.len()) else {
            return;
        };
        for name in re.capture_names().flatten() {
            if let Some(m) = caps.name(name) {
                let value = String::from_utf8_lossy(m.as_bytes())
                    .chars()
                    .filter(|c| !c.is_control())
                    .take(crate::signals::MAX_FIELD)
                    .collect();
                self.substitutions.insert(format!("{{{name}}}"), value);
            }
        }
    }

    fn substitute(&self, command: &str) -> String {
        self.substitutions
            .iter()
            .fold(command.to_owned(), |line, (key, value)| {
                line.replace(key, value)
            })
    }

    /// LAVA's `handle_unexpected`: with `expected`, a case not in it is forced to fail.
    fn unexpected(&self, name: &str, result: CaseResult, sink: &Sink<'_>) -> CaseResult {
        if self.script.expected.is_empty() || self.script.expected.iter().any(|e| e == name) {
            return result;
        }
        sink.note(format!(
            "{}: case '{name}' is not in the expected list; recorded as fail",
            self.suite
        ));
        CaseResult::Fail
    }

    /// LAVA's `handle_expected`: every expected case that did not report is a fail.
    fn missing_expected(&self, sink: &mut Sink<'_>) {
        for name in &self.script.expected {
            if !self.reported.contains_key(name) {
                sink.case(TestCase::new(
                    self.suite.clone(),
                    name.clone(),
                    CaseResult::Fail,
                ));
            }
        }
    }
}
