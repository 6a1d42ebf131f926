//! A small QMP client: JSON lines over QEMU's unix monitor socket.
//!
//! Invariants:
//! - Capabilities are negotiated before any command is sent.
//! - Asynchronous events interleaved with replies are skipped (and counted), never mistaken for
//!   a reply; a command's reply is the next `return` or `error` object.
//! - Lines are bounded ([`MAX_LINE`]): a monitor that floods us gets an error, not our memory.
//! - A file descriptor passed to QEMU ([`Qmp::execute_with_fd`], SCM_RIGHTS) travels with the
//!   first bytes of its command, so QEMU takes it for that command and no other.

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

/// Longest QMP line accepted.
pub const MAX_LINE: usize = 1 << 20;

/// QMP failures.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("QMP socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("QMP socket closed")]
    Closed,
    #[error("QMP sent a line that is not JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("QMP sent a line longer than {MAX_LINE} bytes")]
    LineTooLong,
    #[error("QMP command {command} failed: {class}: {desc}")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
    #[error("QMP greeting missing: {0}")]
    Greeting(String),
}

/// A connected, negotiated QMP session.
pub struct Qmp {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    events_seen: u64,
}

impl Qmp {
    /// Reads the greeting and negotiates capabilities.
    pub async fn negotiate(stream: UnixStream) -> Result<Qmp, QmpError> {
        let (r, w) = stream.into_split();
        let mut qmp = Qmp {
            reader: BufReader::new(r),
            writer: w,
            events_seen: 0,
        };
        let greeting = qmp.read_value().await?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Greeting(greeting.to_string()));
        }
        qmp.execute("qmp_capabilities", None).await?;
        Ok(qmp)
    }

    /// Runs a command and returns its `return` value.
    pub async fn execute(&mut self, command: &str, args: Option<Value>) -> Result<Value, QmpError> {
        let line = request_line(command, args)?;
        self.writer.write_all(&line).await?;
        self.reply(command).await
    }

    /// Runs a command that takes a file descriptor (`add-fd`, `getfd`): `fd` is sent with
    /// the command's bytes as SCM_RIGHTS ancillary data. QEMU keeps its own copy.
    pub async fn execute_with_fd(
        &mut self,
        command: &str,
        args: Option<Value>,
        fd: std::os::fd::BorrowedFd<'_>,
    ) -> Result<Value, QmpError> {
        use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
        use std::os::fd::{AsFd, AsRawFd};
        let line = request_line(command, args)?;
        let socket: &UnixStream = self.writer.as_ref();
        let raw = socket.as_fd().as_raw_fd();
        let fds = [fd.as_raw_fd()];
        let sent = socket
            .async_io(tokio::io::Interest::WRITABLE, || {
                let iov = [std::io::IoSlice::new(&line)];
                sendmsg::<()>(
                    raw,
                    &iov,
                    &[ControlMessage::ScmRights(&fds)],
                    MsgFlags::empty(),
                    None,
                )
                .map_err(std::io::Error::from)
            })
            .await?;
        // The descriptor went with the first bytes; the rest of a long line follows plainly.
        self.writer.write_all(&line[sent..]).await?;
        self.reply(command).await
    }

    /// The reply to `command`: the next `return` or `error`, skipping events.
    async fn reply(&mut self, command: &str) -> Result<Value, QmpError> {
        loop {
            let v = self.read_value().await?;
            if v.get("event").is_some() {
                self.events_seen += 1;
                continue;
            }
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                let field = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                return Err(QmpError::Command {
                    command: command.to_string(),
                    class: field("class"),
                    desc: field("desc"),
                });
            }
        }
    }

    /// `query-status`: returns the run state (`running`, `paused`, `prelaunch`, ...).
    pub async fn status(&mut self) -> Result<String, QmpError> {
        let v = self.execute("query-status", None).await?;
        Ok(v.get("status")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_string())
    }

    /// How many asynchronous events were skipped so far.
    pub fn events_seen(&self) -> u64 {
        self.events_seen
    }

    async fn read_value(&mut self) -> Result<Value, QmpError> {
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = (&mut self.reader)
                .take(MAX_LINE as u64 + 1)
                .read_until(b'\n', &mut line)
                .await?;
            if n == 0 {
                return Err(QmpError::Closed);
            }
            if line.len() > MAX_LINE {
                return Err(QmpError::LineTooLong);
            }
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return Ok(serde_json::from_slice(&line)?);
        }
    }
}

/// One command as a JSON line.
fn request_line(command: &str, args: Option<Value>) -> Result<Vec<u8>, QmpError> {
    let mut request = json!({ "execute": command });
    if let Some(args) = args {
        request["arguments"] = args;
    }
    let mut line = serde_json::to_vec(&request)?;
    line.push(b'\n');
    Ok(line)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::net::UnixListener;

    /// A QMP peer speaking the wire protocol on a real unix socket.
    async fn fake_monitor(listener: UnixListener, script: Vec<&'static str>) {
        let (s, _) = listener.accept().await.unwrap();
        let (r, mut w) = s.into_split();
        let mut lines = BufReader::new(r).lines();
        w.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\r\n")
            .await
            .unwrap();
        for reply in script {
            if lines.next_line().await.unwrap().is_none() {
                return;
            }
            w.write_all(reply.as_bytes()).await.unwrap();
        }
    }

    #[tokio::test]
    async fn negotiates_skips_events_and_reports_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(fake_monitor(
            listener,
            vec![
                "{\"return\": {}}\n",
                "{\"event\": \"RESUME\", \"timestamp\": {}}\n{\"return\": {\"status\": \"running\", \"running\": true}}\n",
                "{\"error\": {\"class\": \"GenericError\", \"desc\": \"nope\"}}\n",
            ],
        ));
        let mut qmp = Qmp::negotiate(UnixStream::connect(&path).await.unwrap())
            .await
            .unwrap();
        assert_eq!(qmp.status().await.unwrap(), "running");
        assert_eq!(qmp.events_seen(), 1);
        let err = qmp.execute("frobnicate", None).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "QMP command frobnicate failed: GenericError: nope"
        );
        // The peer is gone: either the write or the read notices.
        let gone = qmp.execute("quit", None).await;
        assert!(
            matches!(gone, Err(QmpError::Closed) | Err(QmpError::Io(_))),
            "{gone:?}"
        );
    }
}
