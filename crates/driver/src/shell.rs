//! Console-to-shell adapter: runs commands in a DUT shell reached over a console.
//!
//! The adapter knows one prompt pattern. A command is written as one line; its output is what
//! the console shows between the end of the echoed line and the next prompt.
//!
//! Invariants:
//! - One command at a time: `run` writes only after the previous prompt was seen.
//! - Works with and without terminal echo: if the first output line ends with the command that
//!   was sent, it is the echo and is dropped.
//! - Exit status comes from a marker the shell prints (`DUTLAB_RC=<n>`); the marker as typed
//!   (`$?`) can never match, so an echoed command is never mistaken for its result.
//! - Every line sent is shown to the input observer, so transcripts show what was typed.

use crate::expect::{Expect, ExpectError, Matched, Observer};
use regex::bytes::Regex;
use std::sync::LazyLock;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

static STATUS: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"DUTLAB_RC=(\d+)").expect("status pattern is valid"));

/// Longest command line the adapter sends (busybox line editing stops at 1024).
pub const MAX_COMMAND: usize = 1000;

/// Why a shell command could not be run.
#[derive(Debug, thiserror::Error)]
pub enum ShellError {
    #[error(transparent)]
    Expect(#[from] ExpectError),
    #[error("console write failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("command is {len} bytes long, longer than the {MAX_COMMAND} a shell line may hold")]
    TooLong { len: usize },
    #[error("command contains a line break or control character")]
    ControlCharacter,
    #[error("no exit status in the output of {command:?}: {output:?}")]
    NoStatus { command: String, output: String },
}

/// Output and exit status of one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutput {
    pub status: i32,
    /// Output lines (echo and status marker removed), escape sequences stripped.
    pub output: String,
}

/// A shell on a console.
pub struct Shell<R, W> {
    expect: Expect<R>,
    writer: W,
    prompt: Regex,
    input_observer: Observer,
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Shell<R, W> {
    pub fn new(expect: Expect<R>, writer: W, prompt: Regex, input_observer: Observer) -> Self {
        Shell {
            expect,
            writer,
            prompt,
            input_observer,
        }
    }

    /// The prompt pattern in use.
    pub fn prompt(&self) -> &Regex {
        &self.prompt
    }

    /// Changes the prompt pattern (after the runner set `PS1`).
    pub fn set_prompt(&mut self, prompt: Regex) {
        self.prompt = prompt;
    }

    /// The expect engine, for waits that are not command-shaped.
    pub fn expect_mut(&mut self) -> &mut Expect<R> {
        &mut self.expect
    }

    /// Writes raw bytes to the console, as typed.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ShellError> {
        (self.input_observer)(bytes);
        self.writer.write_all(bytes).await?;
        self.writer.flush().await?;
        Ok(())
    }

    /// Writes one line followed by a newline.
    pub async fn send_line(&mut self, line: &str) -> Result<(), ShellError> {
        check_line(line)?;
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        self.send_raw(&bytes).await
    }

    /// Waits for the prompt; returns what came before it.
    pub async fn wait_prompt(&mut self, deadline: Instant) -> Result<Matched, ShellError> {
        let prompt = self.prompt.clone();
        Ok(self.expect.expect(&[&prompt], deadline).await?)
    }

    /// Runs `command` and returns its output and exit status.
    pub async fn run(
        &mut self,
        command: &str,
        deadline: Instant,
    ) -> Result<CommandOutput, ShellError> {
        let line = format!("{command}; echo DUTLAB_RC=$?");
        self.send_line(&line).await?;
        let before = self.wait_prompt(deadline).await?.before;
        let text = String::from_utf8_lossy(&before).replace('\r', "");
        let mut lines: Vec<&str> = text.split('\n').collect();
        if lines.first().is_some_and(|l| l.ends_with(&line)) {
            lines.remove(0);
        }
        let mut status = None;
        let mut output = Vec::new();
        for l in lines {
            match STATUS.captures(l.as_bytes()) {
                Some(c) if !l.contains("$?") => {
                    status = std::str::from_utf8(&c[1])
                        .ok()
                        .and_then(|s| s.parse::<i32>().ok());
                }
                _ => output.push(l),
            }
        }
        while output.last().is_some_and(|l| l.is_empty()) {
            output.pop();
        }
        let output = output.join("\n");
        match status {
            Some(status) => Ok(CommandOutput { status, output }),
            None => Err(ShellError::NoStatus {
                command: command.to_string(),
                output,
            }),
        }
    }
}

fn check_line(line: &str) -> Result<(), ShellError> {
    if line.len() > MAX_COMMAND {
        return Err(ShellError::TooLong { len: line.len() });
    }
    if line.bytes().any(|b| b < 0x20 && b != b'\t') {
        return Err(ShellError::ControlCharacter);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncBufReadExt, BufReader};

    /// A fake shell on the other end of a duplex pipe: echoes input, runs `echo`, `false`.
    async fn fake_shell(stream: tokio::io::DuplexStream, echo: bool) {
        let (r, mut w) = tokio::io::split(stream);
        let mut lines = BufReader::new(r).lines();
        w.write_all(b"\x1b[6n/ # ").await.unwrap();
        while let Ok(Some(line)) = lines.next_line().await {
            if echo {
                w.write_all(format!("{line}\r\n").as_bytes()).await.unwrap();
            }
            let (cmd, _) = line
                .split_once("; echo DUTLAB_RC=$?")
                .unwrap_or((&line, ""));
            let rc = if let Some(text) = cmd.strip_prefix("echo ") {
                w.write_all(format!("{text}\r\n").as_bytes()).await.unwrap();
                0
            } else {
                3
            };
            w.write_all(format!("DUTLAB_RC={rc}\r\n/ # ").as_bytes())
                .await
                .unwrap();
        }
    }

    async fn shell(echo: bool) -> Shell<impl AsyncRead + Unpin, impl AsyncWrite + Unpin> {
        let (ours, theirs) = tokio::io::duplex(4096);
        tokio::spawn(fake_shell(theirs, echo));
        let (r, w) = tokio::io::split(ours);
        let mut sh = Shell::new(
            Expect::new(r, Box::new(|_| {})),
            w,
            Regex::new(r"/ # ").unwrap(),
            Box::new(|_| {}),
        );
        sh.wait_prompt(deadline()).await.unwrap();
        sh
    }

    fn deadline() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[tokio::test]
    async fn runs_commands_with_and_without_echo() {
        for echo in [true, false] {
            let mut sh = shell(echo).await;
            let out = sh.run("echo hello world", deadline()).await.unwrap();
            assert_eq!(
                out,
                CommandOutput {
                    status: 0,
                    output: "hello world".into()
                }
            );
            let out = sh.run("false", deadline()).await.unwrap();
            assert_eq!(out.status, 3);
            assert_eq!(out.output, "");
        }
    }

    #[tokio::test]
    async fn refuses_multi_line_and_overlong_commands() {
        let mut sh = shell(true).await;
        assert!(matches!(
            sh.run("echo a\nrm -rf /", deadline()).await,
            Err(ShellError::ControlCharacter)
        ));
        let long = "x".repeat(MAX_COMMAND + 1);
        assert!(matches!(
            sh.run(&long, deadline()).await,
            Err(ShellError::TooLong { .. })
        ));
    }
}
