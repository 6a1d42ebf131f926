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
//! - Signals and parse patterns are read only between a run's STARTRUN and ENDRUN.
//! - Every wait has a deadline (a [`Limit`]); running out maps to timed-out with the level named.

use crate::overlay::{OVERLAY_DISK_SERIAL, OVERLAY_ROOT, OverlayChannel, PackedOverlay, TestRun};
use crate::signals::{Signal, parse_signal};
use crate::{JobEnd, Limit, RunEvent};
use driver::expect::{Expect, ExpectError, LineOr};
use driver::shell::{Shell, ShellError};
use proto::{CaseResult, TestCase};
use regex::bytes::Regex;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc::UnboundedSender;

/// The prompt the runner sets once logged in.
pub const TEST_PROMPT: &str = "dutlab-test: # ";
/// Base64 characters per transfer command (a shell line holds ~1000).
const CHUNK: usize = 900;

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
    /// `lava-test-raise`.
    Raised(String),
}

pub struct DutShell {
    shell: Shell<OwnedReadHalf, OwnedWriteHalf>,
    pub overlay: OverlayState,
}

impl DutShell {
    pub fn new(console: tokio::net::UnixStream, events: &UnboundedSender<RunEvent>) -> DutShell {
        let (r, w) = console.into_split();
        let out = events.clone();
        let input = events.clone();
        let expect = Expect::new(
            r,
            Box::new(move |b| {
                let _ = out.send(RunEvent::Console(b.to_vec()));
            }),
        );
        let shell = Shell::new(
            expect,
            w,
            Regex::new(&regex::escape(TEST_PROMPT)).expect("escaped prompt is a valid pattern"),
            Box::new(move |b| {
                let _ = input.send(RunEvent::Input(b.to_vec()));
            }),
        );
        DutShell {
            shell,
            overlay: OverlayState::Absent,
        }
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
    pub async fn run_test(
        &mut self,
        run: &TestRun,
        limit: Limit,
        events: &UnboundedSender<RunEvent>,
        cases: &mut Vec<TestCase>,
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
        let mut phase = RunPhase::NotStarted;
        let mut set: Option<String> = None;
        let mut raised = None;
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
            if let Some(signal) = parse_signal(&line) {
                match signal {
                    Signal::StartRun { .. } => phase = RunPhase::Running,
                    Signal::EndRun { .. } => phase = RunPhase::Ended,
                    Signal::TestSetStart(name) => set = Some(name),
                    Signal::TestSetStop => set = None,
                    Signal::TestCase {
                        id,
                        result,
                        measurement,
                        units,
                    } => {
                        let mut case = TestCase::new(&run.id, id, result);
                        (case.set, case.measurement, case.units) =
                            (set.clone(), measurement, units);
                        push_case(cases, events, case);
                    }
                    Signal::TestReference {
                        id,
                        result,
                        reference,
                    } => {
                        let mut case = TestCase::new(&run.id, id, result);
                        (case.set, case.reference) = (set.clone(), Some(reference));
                        push_case(cases, events, case);
                    }
                    Signal::TestRaise(message) => raised = Some(message),
                    Signal::StartTestCase(_) | Signal::EndTestCase(_) => {}
                }
                continue;
            }
            if phase == RunPhase::Running
                && let (Some(re), Some(p)) = (&pattern, &run.definition.parse)
            {
                let text = String::from_utf8_lossy(&line);
                if let Some(mut case) = pattern_case(re, &p.fixupdict, &text) {
                    (case.suite, case.set) = (run.id.clone(), set.clone());
                    push_case(cases, events, case);
                }
            }
        }
        Ok(match (raised, phase) {
            (Some(message), _) => RunEnd::Raised(message),
            (None, RunPhase::Ended) => RunEnd::Completed,
            (None, _) => RunEnd::Incomplete,
        })
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

fn push_case(cases: &mut Vec<TestCase>, events: &UnboundedSender<RunEvent>, case: TestCase) {
    let _ = events.send(RunEvent::Case(case.clone()));
    cases.push(case);
}

/// Applies a definition's parse pattern to one output line (LAVA: named groups
/// `test_case_id`, `result`, optional `measurement`, `units`; `fixupdict` maps results).
pub fn pattern_case(
    re: &regex::Regex,
    fixupdict: &std::collections::BTreeMap<String, String>,
    line: &str,
) -> Option<TestCase> {
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
    let mut case = TestCase::new("", name, CaseResult::from_lava(word));
    case.measurement = caps
        .name("measurement")
        .map(|m| m.as_str().trim().to_string());
    case.units = caps.name("units").map(|m| m.as_str().trim().to_string());
    Some(case)
}

impl Limit {
    fn expect_error(self, e: ExpectError) -> JobEnd {
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), want);
        }
    }

    #[test]
    fn parse_pattern_with_fixupdict() {
        let re = regex::Regex::new(r"(?P<test_case_id>[^:]+):\s+(?P<result>PASS|FAIL)").unwrap();
        let mut fix = BTreeMap::new();
        fix.insert("PASS".to_string(), "pass".to_string());
        fix.insert("FAIL".to_string(), "fail".to_string());
        let c = pattern_case(&re, &fix, "disk io: FAIL").unwrap();
        assert_eq!(c.name, "disk_io");
        assert_eq!(c.result, CaseResult::Fail);
        assert!(pattern_case(&re, &fix, "nothing here").is_none());
    }

    #[test]
    fn parse_pattern_measurements() {
        let re = regex::Regex::new(
            r"^(?P<test_case_id>\w+) (?P<result>pass|fail) (?P<measurement>[\d.]+) (?P<units>\w+)$",
        )
        .unwrap();
        let c = pattern_case(&re, &BTreeMap::new(), "latency pass 3.5 ms").unwrap();
        assert_eq!(c.measurement.as_deref(), Some("3.5"));
        assert_eq!(c.units.as_deref(), Some("ms"));
    }
}
