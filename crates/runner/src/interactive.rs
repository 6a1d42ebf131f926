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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use jobspec::Action;
    use proto::Outcome;
    use std::time::Duration;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::UnixStream;

    /// A U-Boot-like console: `=> ` prompt, echo of each line, a few answers.
    async fn fake_uboot(stream: UnixStream) {
        let (r, mut w) = stream.into_split();
        let mut lines = BufReader::new(r).lines();
        w.write_all(b"U-Boot 2024.01\r\n=> ").await.unwrap();
        while let Ok(Some(line)) = lines.next_line().await {
            let answer = match line.as_str() {
                "version" => "U-Boot 2024.01-fake\r\n",
                "dhcp" => "BOOTP broadcast 1\r\nTIMEOUT\r\n",
                "mmc" => "Card did not respond\r\n",
                "hang" => {
                    // Silent from now on, the console still open.
                    std::future::pending::<()>().await;
                    return;
                }
                _ => "Unknown command\r\n",
            };
            let out = format!("{line}\r\n{answer}=> ");
            if w.write_all(out.as_bytes()).await.is_err() {
                return;
            }
        }
    }

    fn scripts(yaml: &str) -> Vec<InteractiveScript> {
        let job = jobspec::parse_job(
            "t.yaml",
            &format!(
                "job_name: t\ndevice_type: qemu\nactions:\n- boot: {{method: qemu}}\n- test:\n    interactive:\n{yaml}"
            ),
        )
        .unwrap();
        match &job.actions[1] {
            Action::Test(t) => t.interactive.clone(),
            other => panic!("{other:?}"),
        }
    }

    /// Runs `yaml`'s scripts against the fake console: the cases and how the action ended.
    async fn run(yaml: &str, seconds: u64) -> (Vec<String>, Result<(), JobEnd>) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        tokio::spawn(fake_uboot(theirs));
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let (read, write) = ours.into_split();
        let hub =
            driver::console::ConsoleHub::spawn(read, write, crate::session::console_recorder(&tx));
        let mut shell = DutShell::new(&hub, &tx);
        let mut cases = Vec::new();
        let mut sink = Sink {
            events: &tx,
            cases: &mut cases,
        };
        let limit = Limit::new("test", Duration::from_secs(seconds));
        let end = run_scripts(
            &mut shell,
            &scripts(yaml),
            2,
            "actions[1].test",
            limit,
            &mut sink,
        )
        .await;
        let cases = cases
            .iter()
            .map(|c| format!("{}/{} {}", c.suite, c.name, c.result.as_str()))
            .collect();
        (cases, end)
    }

    #[tokio::test]
    async fn items_pass_and_fail_as_lava_decides() {
        let (cases, end) = run(
            "    - name: uboot\n      prompts: ['=> ']\n      echo: discard\n      script:\n\
             \x20     - {command: null, name: first-prompt}\n\
             \x20     - {command: version, name: version, successes: [{message: 'U-Boot 2024.01-fake'}]}\n\
             \x20     - {command: dhcp, name: dhcp, successes: [{message: bound}], failures: [{message: TIMEOUT}]}\n\
             \x20     - {command: nonsense, name: prompt-but-success-wanted, successes: [{message: never}]}\n\
             \x20     - {command: version, name: go-on, successes: [{message: fake}], wait_for_prompt: false}\n\
             \x20     - {command: version, name: stale-prompt-first, successes: [{message: fake}]}\n",
            30,
        )
        .await;
        assert!(end.is_ok(), "{end:?}");
        assert_eq!(
            cases,
            [
                "2_uboot/first-prompt pass",
                "2_uboot/version pass",
                "2_uboot/dhcp fail",
                "2_uboot/prompt-but-success-wanted fail",
                "2_uboot/go-on pass",
                // `discard` read the rest of the line before ("\r\n"); the prompt left by
                // the item before then comes first.
                "2_uboot/stale-prompt-first fail",
                "lava/2_uboot pass",
            ]
        );
    }

    #[tokio::test]
    async fn an_unnamed_failure_and_exceptions_end_the_job() {
        let (cases, end) = run(
            "    - name: a\n      prompts: ['=> ']\n      script:\n\
             \x20     - {command: null}\n\
             \x20     - {command: dhcp, failures: [{message: TIMEOUT}]}\n\
             \x20     - {command: version, name: never-run}\n",
            30,
        )
        .await;
        let end = end.unwrap_err();
        assert_eq!(end.outcome, Outcome::Failed);
        assert_eq!(
            end.reason,
            "actions[1].test.interactive[0].script[1]: Failed to run command 'dhcp'"
        );
        assert_eq!(cases, ["lava/2_a fail"]);
        for (exception, outcome) in [
            ("InfrastructureError", Outcome::InfraError),
            ("JobError", Outcome::JobError),
            ("TestError", Outcome::Failed),
        ] {
            let (cases, end) = run(
                &format!(
                    "    - name: a\n      prompts: ['=> ']\n      expected: [mmc, later]\n      script:\n\
                     \x20     - {{command: null}}\n\
                     \x20     - {{command: mmc, name: mmc, failures: [{{message: 'did not respond', exception: {exception}}}]}}\n\
                     \x20   - name: b\n      prompts: ['=> ']\n      expected: [other]\n      script: []\n"
                ),
                30,
            )
            .await;
            let end = end.unwrap_err();
            assert_eq!(end.outcome, outcome, "{exception}");
            assert_eq!(
                end.reason,
                format!(
                    "actions[1].test.interactive[0].script[1].failures[0]: {exception}: did not respond"
                )
            );
            assert_eq!(
                cases,
                [
                    "2_a/mmc fail",
                    "lava/2_a fail",
                    "2_a/later fail",
                    "2_b/other fail"
                ]
            );
        }
    }

    #[tokio::test]
    async fn a_console_that_goes_silent_ends_at_the_action_deadline() {
        let (cases, end) = run(
            "    - name: a\n      prompts: ['=> ']\n      script:\n\
             \x20     - {command: null}\n\
             \x20     - {command: hang, name: hangs}\n",
            2,
        )
        .await;
        let end = end.unwrap_err();
        assert_eq!(end.outcome, Outcome::TimedOut);
        assert!(
            end.reason
                .starts_with("test timeout (2s) fired while waiting for \"=> \""),
            "{end:?}"
        );
        assert_eq!(cases, ["2_a/hangs fail", "lava/2_a fail"]);
    }
}
