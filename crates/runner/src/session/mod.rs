//! A booted DUT: its QEMU process and the shell on its serial console.
//!
//! ```text
//!  boot() ─> Booting ─login()─> Shell ─prepare_shell()─> Ready ─install_overlay()─> Tests
//! ```
//!
//! Invariants:
//! - After `prepare_shell` the prompt is the runner's own (`dutlab-test: # `) and terminal echo
//!   is off, so nothing the runner types can be mistaken for DUT output.
//! - The overlay is installed once per boot, by the overlay disk when the DUT shows one
//!   (a plain tar; `tar` checks every header), else over the console (gzip, verified by
//!   sha256 in the DUT before use).
//! - Parse patterns are applied only between a run's STARTRUN and ENDRUN; so is a definition's
//!   `fixupdict` to TESTCASE signals (LAVA's default dictionary applies outside).
//! - Signals follow LAVA's test shell, whose state lasts a whole test action
//!   ([`ActionSignals`]): a TESTCASE before the action's first STARTRUN ends the job with a
//!   test error; the first job-ending signal (`lava-test-raise`, or one LAVA refuses with an
//!   error) ends the run there: nothing after it is read (the job ends, the DUT is powered
//!   off while the run may still be going).
//! - DUT output is untrusted: a run emits at most [`MAX_DROPPED_NOTES`] notes about dropped
//!   signals and pattern matches (control characters replaced), then one note with the count
//!   of the rest.
//! - Every wait has a deadline (a [`Limit`]); running out maps to timed-out with the level named.

use crate::multinode::MultinodeContext;
use crate::overlay::{OVERLAY_DISK_SERIAL, OVERLAY_ROOT, OverlayChannel, PackedOverlay, TestRun};
use crate::signals::{Signal, read_signal, result_word};
use crate::{JobEnd, Limit, RunEvent};
use driver::console::{ConsoleHub, ConsoleInput, Recorder, Viewer};
use driver::expect::{Expect, ExpectError, LineOr};
use driver::shell::{Shell, ShellError};
use proto::{CaseResult, TestCase};
use regex::bytes::Regex;
use tokio::sync::mpsc::UnboundedSender;

/// The prompt the runner sets once logged in.
pub const TEST_PROMPT: &str = "dutlab-test: # ";
/// Base64 characters per transfer command (a shell line holds ~1000).
const CHUNK: usize = 900;
/// Notes about dropped signals or pattern matches one run emits before it only counts them.
pub const MAX_DROPPED_NOTES: usize = 20;

/// How to log in, resolved from the job's boot action or the device defaults.
#[derive(Debug, Clone)]
pub struct Login {
    pub prompts: Vec<Regex>,
    pub login_prompt: Option<Regex>,
    pub username: String,
    pub password_prompt: Option<Regex>,
    pub password: Option<String>,
    pub login_commands: Vec<String>,
}

/// Whether the overlay is in the DUT yet (per boot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverlayState {
    Absent,
    Installed,
}

/// How a test run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunEnd {
    Completed,
    /// The shell came back without ENDRUN (a step called `exit`, or the script broke).
    Incomplete,
    /// A test error ends the job, as in LAVA: `lava-test-raise` (`reason` is
    /// `lava-test-raise: MESSAGE`), a signal LAVA refuses with an error, or a TESTCASE before
    /// the test action's first STARTRUN. `unfinished`: it came between the run's STARTRUN and
    /// ENDRUN, so LAVA marks the run failed (`lava/<run>`).
    Raised {
        reason: String,
        unfinished: bool,
    },
}

/// The signal state LAVA's test shell keeps for one test action, across its runs.
#[derive(Debug, Clone, Default)]
pub struct ActionSignals {
    /// The run whose STARTRUN came last in this action (LAVA's test uuid and definition
    /// name). `None`: no STARTRUN yet, and a TESTCASE is a test error. Between runs (install
    /// steps of the next one), LAVA files cases under this run.
    last_started: Option<String>,
}

/// Whether the runner's prompt and echo setting are in place (per boot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShellSetup {
    /// As the boot left it: the DUT's own prompt and echo (what interactive scripts see), or
    /// no shell at all (a boot that waited for nothing).
    AsBooted,
    /// `prepare_shell` ran: prompt `dutlab-test: # `, echo off.
    Prepared,
}

/// The console of a booted DUT: the runner's shell adapter over a viewer of its pump.
pub type Console = Shell<Viewer, ConsoleInput>;

/// The recorder of a DUT's console pump: every byte becomes a [`RunEvent::Console`], from
/// power-on to power-off, whether or not the job is waiting for output.
pub fn console_recorder(events: &UnboundedSender<RunEvent>) -> Recorder {
    let out = events.clone();
    Box::new(move |b| {
        let _ = out.send(RunEvent::Console(b.to_vec()));
    })
}

pub struct DutShell {
    shell: Console,
    pub overlay: OverlayState,
    pub setup: ShellSetup,
}

impl DutShell {
    /// The job's shell on the console of `hub`, reading from the console's first byte (the
    /// pump's recorder already logs every byte, so the expect engine shows nothing itself).
    pub fn new(hub: &ConsoleHub, events: &UnboundedSender<RunEvent>) -> DutShell {
        let input = events.clone();
        let expect = Expect::new(hub.subscribe_from_start(), Box::new(|_| {}));
        let shell = Shell::new(
            expect,
            hub.input(),
            Regex::new(&regex::escape(TEST_PROMPT)).expect("escaped prompt is a valid pattern"),
            Box::new(move |b| {
                let _ = input.send(RunEvent::Input(b.to_vec()));
            }),
        );
        DutShell {
            shell,
            overlay: OverlayState::Absent,
            setup: ShellSetup::AsBooted,
        }
    }

    /// The console itself, for actions that drive it without the runner's shell
    /// (interactive scripts, monitors).
    pub(crate) fn console(&mut self) -> &mut Console {
        &mut self.shell
    }

    /// Logs in on the console and waits for a shell prompt.
    pub async fn login(&mut self, login: &Login, limit: Limit) -> Result<(), JobEnd> {
        if let Some(login_prompt) = &login.login_prompt {
            self.expect_one(login_prompt, limit).await?;
            self.send_line(&login.username).await?;
            if let (Some(password_prompt), Some(password)) =
                (&login.password_prompt, &login.password)
            {
                self.expect_one(password_prompt, limit).await?;
                self.send_line(password).await?;
            }
        }
        self.expect_any(&login.prompts, limit).await?;
        for command in &login.login_commands {
            self.send_line(command).await?;
            self.expect_any(&login.prompts, limit).await?;
        }
        Ok(())
    }

    /// Sets the runner's prompt and turns echo off.
    pub async fn prepare_shell(&mut self, limit: Limit) -> Result<(), JobEnd> {
        // One line: each line typed while echo is on costs a slow round trip in the guest.
        // The split quotes keep the typed line from matching the prompt pattern.
        self.run_ok(
            "{ stty -echo cols 1000 rows 50 2>/dev/null || stty -echo; } && export PS1='dutlab''-test: # '",
            limit,
        )
        .await?;
        self.setup = ShellSetup::Prepared;
        Ok(())
    }

    /// Copies the packed overlay into the DUT and unpacks it under [`OVERLAY_ROOT`], by the
    /// overlay disk when `channel` is [`OverlayChannel::Disk`] and the DUT shows it, else over
    /// the console. Returns the channel that carried it.
    pub async fn install_overlay(
        &mut self,
        packed: &PackedOverlay,
        channel: OverlayChannel,
        limit: Limit,
    ) -> Result<OverlayChannel, JobEnd> {
        let disk = match channel {
            OverlayChannel::Disk => self.find_overlay_disk(limit).await?,
            OverlayChannel::Console => None,
        };
        let used = match disk {
            Some(device) => {
                self.overlay_from_disk(&device, limit).await?;
                OverlayChannel::Disk
            }
            None => {
                let compressed = packed
                    .for_console()
                    .map_err(|e| JobEnd::job_error(e.to_string()))?;
                self.overlay_over_console(&compressed, limit).await?;
                OverlayChannel::Console
            }
        };
        self.overlay = OverlayState::Installed;
        Ok(used)
    }

    /// The block device whose virtio serial is [`OVERLAY_DISK_SERIAL`], if the DUT has one.
    async fn find_overlay_disk(&mut self, limit: Limit) -> Result<Option<String>, JobEnd> {
        let out = self
            .run_ok(
                &format!(
                    "(for s in /sys/block/*/serial; do [ \"$(cat \"$s\" 2>/dev/null)\" = {OVERLAY_DISK_SERIAL} ] && b=${{s%/serial}} && echo \"overlay-disk=/dev/${{b##*/}}\"; done; true)"
                ),
                limit,
            )
            .await?;
        Ok(out.lines().find_map(|line| {
            let device = line.trim().strip_prefix("overlay-disk=")?;
            // DUT output is untrusted: accept only a plain device path.
            let name = device.strip_prefix("/dev/")?;
            (!name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric()))
                .then(|| device.to_string())
        }))
    }

    async fn overlay_from_disk(&mut self, device: &str, limit: Limit) -> Result<(), JobEnd> {
        // `tar` reads the device up to the archive's end blocks (the image is padded with
        // zeros). No sha256 here: the disk is read-only and local, tar checks every header,
        // and hashing 50 MB under TCG costs more than the copy itself.
        self.run_ok(
            &format!("rm -rf {OVERLAY_ROOT} && tar -xf {device} -C /"),
            limit,
        )
        .await
        .map_err(|e| match e.outcome {
            proto::Outcome::InfraError => JobEnd::infra_error(format!(
                "test overlay from {device} did not unpack: {}",
                e.reason
            )),
            _ => e,
        })?;
        Ok(())
    }

    async fn overlay_over_console(&mut self, packed: &[u8], limit: Limit) -> Result<(), JobEnd> {
        let encoded = base64(packed);
        self.run_ok(
            "rm -f /tmp/dutlab-overlay.b64 /tmp/dutlab-overlay.tgz",
            limit,
        )
        .await?;
        for chunk in encoded.as_bytes().chunks(CHUNK) {
            let chunk = std::str::from_utf8(chunk).expect("base64 output is ASCII");
            self.run_ok(
                &format!("printf %s {chunk} >>/tmp/dutlab-overlay.b64"),
                limit,
            )
            .await?;
        }
        let out = self
            .run_ok(
                "base64 -d /tmp/dutlab-overlay.b64 >/tmp/dutlab-overlay.tgz && sha256sum /tmp/dutlab-overlay.tgz",
                limit,
            )
            .await?;
        self.check_arrived(&out, packed)?;
        self.run_ok(
            &format!(
                "rm -rf {OVERLAY_ROOT} && tar -xzf /tmp/dutlab-overlay.tgz -C / && rm -f /tmp/dutlab-overlay.b64 /tmp/dutlab-overlay.tgz"
            ),
            limit,
        )
        .await?;
        Ok(())
    }

    fn check_arrived(&self, sha256_output: &str, packed: &[u8]) -> Result<(), JobEnd> {
        let want = crate::sha256_hex(packed);
        if sha256_output.contains(&want) {
            Ok(())
        } else {
            Err(JobEnd::infra_error(format!(
                "test overlay arrived damaged: sha256 in the DUT {:?}, sent {want}",
                sha256_output.trim()
            )))
        }
    }

    /// Runs one test definition, turning signals and parse-pattern matches into cases.
    /// `action` is shared by the runs of one test action.
    pub async fn run_test(
        &mut self,
        run: &TestRun,
        action: &mut ActionSignals,
        limit: Limit,
        events: &UnboundedSender<RunEvent>,
        cases: &mut Vec<TestCase>,
        multinode: Option<&MultinodeContext>,
    ) -> Result<RunEnd, JobEnd> {
        let pattern = match &run.definition.parse {
            Some(p) => Some(
                regex::Regex::new(&p.pattern)
                    .map_err(|e| JobEnd::job_error(format!("{}: parse.pattern: {e}", run.id)))?,
            ),
            None => None,
        };
        let command = run.command();
        self.send_line(&command).await?;
        let prompt = self.shell.prompt().clone();
        let mut reader = RunSignals::new(run, action, pattern);
        let mut first = true;
        loop {
            let next = self
                .shell
                .expect_mut()
                .next_line_or(&[&prompt], limit.at)
                .await
                .map_err(|e| limit.expect_error(e))?;
            let line = match next {
                LineOr::Matched(_) => break,
                LineOr::Line(line) => line,
            };
            if std::mem::take(&mut first) && line.ends_with(command.as_bytes()) {
                continue; // the echo, on shells that still echo
            }
            if let Some(call) = ::multinode::parse_call(&line) {
                self.multinode_call(call, multinode, &mut reader, limit, events, cases)
                    .await?;
                if reader.raised.is_some() {
                    break;
                }
                continue;
            }
            match reader.line(&line) {
                Some(Step::Case(case)) => push_case(cases, events, case),
                Some(Step::Note(text)) => {
                    let _ = events.send(RunEvent::Note(text));
                }
                None => {}
            }
            if reader.raised.is_some() {
                break; // LAVA's test action ends at a test error; so does the job
            }
        }
        if let Some(text) = reader.dropped_summary() {
            let _ = events.send(RunEvent::Note(text));
        }
        Ok(reader.end())
    }

    /// Answers one MultiNode call the DUT printed: hands it to the group's coordinator and
    /// types the reply back where the helper reads it. The call is recorded as LAVA records
    /// it (`multinode-<call>-<id>`, pass once answered); a test timeout while waiting records
    /// it failed and ends the job timed out.
    async fn multinode_call(
        &mut self,
        call: Result<::multinode::Call, ::multinode::CallError>,
        multinode: Option<&MultinodeContext>,
        reader: &mut RunSignals<'_>,
        limit: Limit,
        events: &UnboundedSender<RunEvent>,
        cases: &mut Vec<TestCase>,
    ) -> Result<(), JobEnd> {
        let Some(group) = multinode else {
            let _ = events.send(RunEvent::Note(format!(
                "{}: a MultiNode call in a job without protocols.lava-multinode is ignored",
                reader.run.id
            )));
            // Release a blocked helper (it reads one line) with the call's nack.
            if let Some(line) = call
                .ok()
                .map(|c| ::multinode::Reply::Nack {
                    call: c.kind(),
                    reason: ::multinode::NackReason::Invalid,
                })
                .and_then(|r| r.console_line())
            {
                self.send_line(&line).await?;
            }
            return Ok(());
        };
        let call = match call {
            Ok(call) => call,
            Err(refused) => {
                let _ = events.send(RunEvent::Note(crate::report::printable(&format!(
                    "{}: MultiNode call refused: {refused}",
                    reader.run.id
                ))));
                if let Some(line) = refused.nack().and_then(|r| r.console_line()) {
                    self.send_line(&line).await?;
                }
                return Ok(());
            }
        };
        let name = call.test_case_name();
        let seq = group.next_seq();
        let reply = match tokio::time::timeout_at(limit.at, group.link.call(seq, call)).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(gone)) => return Err(JobEnd::infra_error(gone.to_string())),
            Err(_) => {
                if let Some(Step::Case(case)) = reader.case(name.clone(), CaseResult::Fail) {
                    push_case(cases, events, case);
                }
                return Err(JobEnd::timed_out(format!(
                    "{} timeout ({}) fired while waiting for the group ({name})",
                    limit.level,
                    crate::human_duration(limit.length)
                )));
            }
        };
        if reply.ends_test() {
            reader.raise(format!(
                "Coordinator was unable to accept LAVA_SEND ({name})"
            ));
            return Ok(());
        }
        if let Some(line) = reply.console_line() {
            self.send_line(&line).await?;
        }
        if let Some(Step::Case(case)) = reader.case(name, CaseResult::Pass) {
            push_case(cases, events, case);
        }
        Ok(())
    }

    /// Asks the DUT to power itself off (best effort; the VM is stopped afterwards anyway).
    pub async fn send_line(&mut self, line: &str) -> Result<(), JobEnd> {
        self.shell
            .send_line(line)
            .await
            .map_err(|e| JobEnd::infra_error(format!("console: {e}")))
    }

    async fn run_ok(&mut self, command: &str, limit: Limit) -> Result<String, JobEnd> {
        let out = self
            .shell
            .run(command, limit.at)
            .await
            .map_err(|e| limit.shell_error(e))?;
        if out.status != 0 {
            return Err(JobEnd::infra_error(format!(
                "DUT command {command:?} exited with {}: {}",
                out.status, out.output
            )));
        }
        Ok(out.output)
    }

    async fn expect_one(&mut self, re: &Regex, limit: Limit) -> Result<(), JobEnd> {
        self.shell
            .expect_mut()
            .expect(&[re], limit.at)
            .await
            .map(|_| ())
            .map_err(|e| limit.expect_error(e))
    }

    async fn expect_any(&mut self, res: &[Regex], limit: Limit) -> Result<(), JobEnd> {
        let refs: Vec<&Regex> = res.iter().collect();
        self.shell
            .expect_mut()
            .expect(&refs, limit.at)
            .await
            .map(|_| ())
            .map_err(|e| limit.expect_error(e))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RunPhase {
    NotStarted,
    Running,
    Ended,
}

/// What one console line of a run gave.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    Case(TestCase),
    Note(String),
}

/// Reads one run's console lines as LAVA's test shell reads them (pure: no I/O).
struct RunSignals<'a> {
    run: &'a TestRun,
    action: &'a mut ActionSignals,
    pattern: Option<regex::Regex>,
    phase: RunPhase,
    set: Option<String>,
    /// The first test error, and whether it came inside the run.
    raised: Option<(String, bool)>,
    dropped: usize,
}

impl<'a> RunSignals<'a> {
    fn new(
        run: &'a TestRun,
        action: &'a mut ActionSignals,
        pattern: Option<regex::Regex>,
    ) -> RunSignals<'a> {
        RunSignals {
            run,
            action,
            pattern,
            phase: RunPhase::NotStarted,
            set: None,
            raised: None,
            dropped: 0,
        }
    }

    fn line(&mut self, line: &[u8]) -> Option<Step> {
        if self.raised.is_some() {
            return None; // LAVA stops reading at a test error
        }
        let parse = self.run.definition.parse.as_ref();
        // LAVA uses the definition's fixupdict from its STARTRUN to its ENDRUN.
        let fixupdict = match (self.phase, parse) {
            (RunPhase::Running, Some(p)) => Some(&p.fixupdict),
            _ => None,
        };
        let read = read_signal(line, fixupdict);
        let test_case = match &read {
            Ok(Some(Signal::TestCase { .. })) => true,
            Err(e) => e.signal() == "TESTCASE",
            Ok(_) => false,
        };
        if test_case && self.action.last_started.is_none() {
            self.raise(
                "Invalid TESTCASE signal: unknown test uuid, the STARTRUN signal for this test \
                 action was not received"
                    .into(),
            );
            return None;
        }
        let signal = match read {
            Ok(Some(signal)) => signal,
            Ok(None) => return self.pattern_line(line),
            Err(e) if e.ends_job() => {
                self.raise(e.to_string());
                return None;
            }
            Err(e) => return self.dropped(e.to_string()),
        };
        // Between runs LAVA files cases under the run that started last.
        let suite = match (self.phase, &self.action.last_started) {
            (RunPhase::NotStarted, Some(last)) => last.clone(),
            _ => self.run.id.clone(),
        };
        let mut case = match signal {
            Signal::StartRun { .. } => {
                self.phase = RunPhase::Running;
                self.action.last_started = Some(self.run.id.clone());
                return None;
            }
            Signal::EndRun { .. } => {
                self.phase = RunPhase::Ended;
                return None;
            }
            Signal::TestSetStart(name) => {
                self.set = Some(name);
                return None;
            }
            Signal::TestSetStop => {
                self.set = None;
                return None;
            }
            Signal::TestCase {
                id,
                result,
                measurement,
                units,
            } => {
                let mut case = TestCase::new(suite, id, result);
                (case.measurement, case.units) = (measurement, units);
                case
            }
            Signal::TestReference {
                id,
                result,
                reference,
            } => {
                let mut case = TestCase::new(suite, id, result);
                case.reference = Some(reference);
                case
            }
            Signal::TestRaise(message) => {
                self.raise(format!("lava-test-raise: {message}"));
                return None;
            }
            Signal::StartTestCase(_) | Signal::EndTestCase(_) => return None,
        };
        case.set = self.set.clone();
        Some(Step::Case(case))
    }

    /// A case the runner itself records in this run (a MultiNode call), filed as a TESTCASE
    /// signal would be.
    fn case(&mut self, id: String, result: CaseResult) -> Option<Step> {
        if self.raised.is_some() {
            return None;
        }
        let suite = match (self.phase, &self.action.last_started) {
            (RunPhase::NotStarted, Some(last)) => last.clone(),
            _ => self.run.id.clone(),
        };
        let mut case = TestCase::new(suite, id, result);
        case.set = self.set.clone();
        Some(Step::Case(case))
    }

    /// A non-signal line: a parse-pattern case while the run is running.
    fn pattern_line(&mut self, line: &[u8]) -> Option<Step> {
        if self.phase != RunPhase::Running {
            return None;
        }
        let (Some(re), Some(p)) = (&self.pattern, &self.run.definition.parse) else {
            return None;
        };
        match pattern_case(re, &p.fixupdict, &String::from_utf8_lossy(line))? {
            Ok(mut case) => {
                (case.suite, case.set) = (self.run.id.clone(), self.set.clone());
                Some(Step::Case(case))
            }
            Err(refused) => self.dropped(refused.to_string()),
        }
    }

    fn raise(&mut self, reason: String) {
        self.raised = Some((reason, self.phase == RunPhase::Running));
    }

    /// A note for a dropped signal or match, while under [`MAX_DROPPED_NOTES`] (control
    /// characters of the DUT's text replaced).
    fn dropped(&mut self, why: String) -> Option<Step> {
        self.dropped += 1;
        (self.dropped <= MAX_DROPPED_NOTES)
            .then(|| Step::Note(crate::report::printable(&format!("{}: {why}", self.run.id))))
    }

    /// The note that counts the dropped signals not noted one by one, if any.
    fn dropped_summary(&self) -> Option<String> {
        let more = self
            .dropped
            .checked_sub(MAX_DROPPED_NOTES)
            .filter(|n| *n > 0)?;
        Some(format!(
            "{}: and {more} more dropped signal(s) or pattern match(es)",
            self.run.id
        ))
    }

    fn end(self) -> RunEnd {
        match (self.raised, self.phase) {
            (Some((reason, unfinished)), _) => RunEnd::Raised { reason, unfinished },
            (None, RunPhase::Ended) => RunEnd::Completed,
            (None, _) => RunEnd::Incomplete,
        }
    }
}

pub(crate) fn push_case(
    cases: &mut Vec<TestCase>,
    events: &UnboundedSender<RunEvent>,
    case: TestCase,
) {
    let _ = events.send(RunEvent::Case(case.clone()));
    cases.push(case);
}

/// A parse-pattern match LAVA does not record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "parse pattern: case {id}: bad result {word:?} after the fixupdict (pass, fail, skip or unknown); the case is dropped"
)]
pub struct PatternRefusal {
    pub id: String,
    pub word: String,
}

/// Applies a definition's parse pattern to one output line (LAVA: named groups
/// `test_case_id`, `result`, optional `measurement`, `units`). The result word goes through
/// `fixupdict` (when it holds the word) and must then be exactly `pass`, `fail`, `skip` or
/// `unknown`, as LAVA's server requires (no case folding): another word is a
/// [`PatternRefusal`]. `None`: the line does not match, or has no id or result.
pub fn pattern_case(
    re: &regex::Regex,
    fixupdict: &std::collections::BTreeMap<String, String>,
    line: &str,
) -> Option<Result<TestCase, PatternRefusal>> {
    let caps = re.captures(line)?;
    let id = caps.name("test_case_id")?.as_str().trim();
    if id.is_empty() {
        return None;
    }
    let raw = caps.name("result")?.as_str().trim();
    let word = fixupdict.get(raw).map(String::as_str).unwrap_or(raw);
    let name: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(crate::signals::MAX_FIELD)
        .collect();
    let Some(result) = result_word(word) else {
        return Some(Err(PatternRefusal {
            id: name,
            word: word.chars().take(crate::signals::MAX_FIELD).collect(),
        }));
    };
    let mut case = TestCase::new("", name, result);
    case.measurement = caps
        .name("measurement")
        .map(|m| m.as_str().trim().to_string());
    case.units = caps.name("units").map(|m| m.as_str().trim().to_string());
    Some(Ok(case))
}

impl Limit {
    pub(crate) fn expect_error(self, e: ExpectError) -> JobEnd {
        match e {
            ExpectError::Timeout { waited_for, tail } => JobEnd::timed_out(format!(
                "{} timeout ({}) fired while waiting for {waited_for}; last output: {tail:?}",
                self.level,
                crate::human_duration(self.length)
            )),
            ExpectError::Closed { waited_for, tail } => JobEnd::infra_error(format!(
                "console closed while waiting for {waited_for}; last output: {tail:?}"
            )),
            ExpectError::Io(e) => JobEnd::infra_error(format!("console: {e}")),
        }
    }

    fn shell_error(self, e: ShellError) -> JobEnd {
        match e {
            ShellError::Expect(e) => self.expect_error(e),
            other => JobEnd::infra_error(format!("console: {other}")),
        }
    }
}

/// Standard base64 with padding (what busybox `base64 -d` reads).
pub fn base64(data: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(TABLE[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

mod remote;
#[cfg(test)]
mod tests;
