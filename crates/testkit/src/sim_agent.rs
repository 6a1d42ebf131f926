//! A simulated agent for system tests: one link to a real `dutlab serve`, driven by hand with
//! the `proto` types over a real (blocking) WebSocket. Tests use it where a real agent could
//! not misbehave on purpose (forged results, disk-full resends, hostile hellos) or where QEMU
//! would only add time.
//!
//! Invariants:
//! - Every wait has a deadline ([`LIMIT`] unless given); nothing sleeps to synchronise.
//! - Reads poll with a short socket timeout, so a wait ends within about 100 ms of its deadline.

use anyhow::{Context, Result, bail};
use proto::link::{AgentMessage, ControllerMessage, DeviceInfo, HeldLease, LINK_PATH, LogFrame};
use proto::log::{LogKind, LogRecord};
use proto::{Epoch, JobId, JobReport, LeaseId, Millis, Outcome, Seq};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::{self, Message, WebSocket, client::IntoClientRequest};

/// How long a wait takes before it fails.
pub const LIMIT: Duration = Duration::from_secs(30);

/// A WebSocket to `path` on a plain-HTTP controller at `127.0.0.1:port`, with a bearer token.
/// Reads time out after 100 ms (and are retried by [`SimAgent::next`]).
pub fn socket(port: u16, path: &str, token: &str) -> Result<WebSocket<TcpStream>> {
    let url = format!("ws://127.0.0.1:{port}{path}");
    let mut request = url.as_str().into_client_request()?;
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    let tcp = TcpStream::connect(("127.0.0.1", port))?;
    tcp.set_read_timeout(Some(Duration::from_millis(100)))?;
    let (ws, _) = tungstenite::client::client(request, tcp)
        .map_err(|e| anyhow::anyhow!("websocket {path}: {e}"))?;
    Ok(ws)
}

/// One device of a hello: a name, its type, no tags.
pub fn device(name: &str, device_type: &str) -> DeviceInfo {
    DeviceInfo {
        name: name.into(),
        device_type: device_type.into(),
        tags: vec![],
        capabilities: vec!["power".into(), "console".into()],
    }
}

/// A simulated agent: one link.
pub struct SimAgent {
    ws: WebSocket<TcpStream>,
}

/// How a wait on a link ended.
#[derive(Debug)]
pub enum Heard {
    Message(ControllerMessage),
    /// Text that is not a controller message (follow streams send `FollowEvent`s).
    Text(String),
    Closed(String),
}

/// A job the simulated agent was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimLease {
    pub lease: LeaseId,
    pub epoch: Epoch,
    pub job: JobId,
}

impl SimLease {
    /// This lease as a hello's `held` entry on `device`.
    pub fn held(&self, device: &str) -> HeldLease {
        HeldLease {
            lease: self.lease,
            epoch: self.epoch,
            job: self.job,
            device: device.into(),
            report: None,
        }
    }
}

/// A report with this outcome and reason, no cases.
pub fn report(outcome: Outcome, reason: &str) -> JobReport {
    JobReport {
        job_name: "j".into(),
        outcome,
        reason: reason.into(),
        cases: vec![],
        duration_s: 0.1,
    }
}

/// A log frame of console records `first..first + texts.len()`.
pub fn console_frame(lease: SimLease, first: u64, texts: &[String]) -> LogFrame {
    LogFrame {
        lease: lease.lease,
        epoch: lease.epoch,
        records: texts
            .iter()
            .zip(first..)
            .map(|(text, seq)| LogRecord {
                seq: Seq(seq),
                at: Millis(seq),
                kind: LogKind::Console,
                text: text.clone(),
            })
            .collect(),
    }
}

impl SimAgent {
    /// Reads and writes another WebSocket (a follow stream, say) with the same waits.
    pub fn from_socket(ws: WebSocket<TcpStream>) -> SimAgent {
        SimAgent { ws }
    }

    /// Opens the agent link of the controller at `127.0.0.1:port` with `token` (no hello yet).
    pub fn open(port: u16, token: &str) -> Result<SimAgent> {
        Ok(SimAgent {
            ws: socket(port, LINK_PATH, token)?,
        })
    }

    /// Opens the link and says hello for `devices`; answers the resume cursors of the
    /// welcome, or the controller's refusal reason.
    pub fn connect(
        port: u16,
        token: &str,
        agent: &str,
        devices: Vec<DeviceInfo>,
        held: Vec<HeldLease>,
    ) -> Result<(
        SimAgent,
        std::result::Result<Vec<proto::link::LogCursor>, String>,
    )> {
        let mut sim = SimAgent::open(port, token)?;
        sim.hello_with(agent, devices, held)?;
        let answer = sim.expect("welcome or refused", |h| match h {
            Heard::Message(ControllerMessage::Welcome { resume, .. }) => Some(Ok(resume.clone())),
            Heard::Message(ControllerMessage::Refused { reason }) => Some(Err(reason.clone())),
            _ => None,
        })?;
        Ok((sim, answer))
    }

    /// Starts a clean close of the link (a close frame).
    pub fn close(&mut self) -> Result<()> {
        self.ws.close(None)?;
        Ok(())
    }

    pub fn send(&mut self, message: &AgentMessage) -> Result<()> {
        self.ws
            .send(Message::Text(serde_json::to_string(message)?.into()))?;
        Ok(())
    }

    /// Says hello for devices of type `qemu` named `devices`.
    pub fn hello(&mut self, agent: &str, devices: &[&str], held: Vec<HeldLease>) -> Result<()> {
        let devices = devices
            .iter()
            .map(|d| DeviceInfo {
                capabilities: vec![],
                ..device(d, "qemu")
            })
            .collect();
        self.hello_with(agent, devices, held)
    }

    /// Says hello for `devices`.
    pub fn hello_with(
        &mut self,
        agent: &str,
        devices: Vec<DeviceInfo>,
        held: Vec<HeldLease>,
    ) -> Result<()> {
        self.send(&AgentMessage::Hello {
            protocol: proto::link::PROTOCOL_VERSION,
            agent: agent.into(),
            version: "sim".into(),
            devices,
            held,
            sessions: Vec::new(),
        })
    }

    /// The next control message or the close, within `within`.
    pub fn next(&mut self, within: Duration) -> Result<Heard> {
        let deadline = Instant::now() + within;
        loop {
            match self.ws.read() {
                Ok(Message::Text(text)) => {
                    return Ok(match serde_json::from_str(text.as_str()) {
                        Ok(message) => Heard::Message(message),
                        Err(_) => Heard::Text(text.to_string()),
                    });
                }
                Ok(Message::Close(frame)) => {
                    return Ok(Heard::Closed(
                        frame.map(|f| f.reason.to_string()).unwrap_or_default(),
                    ));
                }
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    return Ok(Heard::Closed(String::new()));
                }
                Err(e) => return Ok(Heard::Closed(format!("socket error: {e}"))),
            }
            if Instant::now() > deadline {
                bail!("nothing heard within {within:?}");
            }
        }
    }

    /// Skips messages until one that `pick` takes; fails when the link closes first.
    pub fn expect<T>(
        &mut self,
        what: &str,
        mut pick: impl FnMut(&Heard) -> Option<T>,
    ) -> Result<T> {
        let deadline = Instant::now() + LIMIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let heard = self
                .next(left)
                .with_context(|| format!("waiting for {what}"))?;
            if let Some(value) = pick(&heard) {
                return Ok(value);
            }
            if let Heard::Closed(reason) = heard {
                bail!("link closed while waiting for {what}: {reason}");
            }
        }
    }

    pub fn welcome(&mut self) -> Result<Vec<proto::link::LogCursor>> {
        self.expect("welcome", |h| match h {
            Heard::Message(ControllerMessage::Welcome { resume, .. }) => Some(resume.clone()),
            _ => None,
        })
    }

    /// Waits for the refusal of a hello and the close; answers the reason.
    pub fn refused(&mut self) -> Result<String> {
        let reason = match self.next(LIMIT)? {
            Heard::Message(ControllerMessage::Refused { reason }) => reason,
            other => bail!("expected a refusal, got {other:?}"),
        };
        crate::wait_until("the refused link closes", LIMIT, || {
            Ok(matches!(self.next(LIMIT)?, Heard::Closed(_)).then_some(()))
        })?;
        Ok(reason)
    }

    /// Waits for `StartJob` (and says nothing back).
    pub fn start_job(&mut self) -> Result<(LeaseId, Epoch, JobId)> {
        self.expect("start-job", |h| match h {
            Heard::Message(ControllerMessage::StartJob {
                lease, epoch, job, ..
            }) => Some((*lease, *epoch, *job)),
            _ => None,
        })
    }

    /// Waits for `StartJob` and answers `JobStarted`.
    pub fn take_job(&mut self) -> Result<SimLease> {
        let (lease, epoch, job) = self.start_job()?;
        self.send(&AgentMessage::JobStarted { lease, epoch })?;
        Ok(SimLease { lease, epoch, job })
    }

    /// Sends one console record.
    pub fn log(&mut self, lease: LeaseId, epoch: Epoch, first: u64, text: &str) -> Result<()> {
        let sim = SimLease {
            lease,
            epoch,
            job: JobId(0),
        };
        self.frame(&console_frame(sim, first, &[text.to_owned()]))
    }

    /// Sends a log frame.
    pub fn frame(&mut self, frame: &LogFrame) -> Result<()> {
        self.ws.send(Message::Binary(frame.encode().into()))?;
        Ok(())
    }

    /// Sends a log frame; false when the link is closed (or closes while sending).
    pub fn try_frame(&mut self, frame: &LogFrame) -> bool {
        self.frame(frame).is_ok()
    }

    /// Reports the job: passed with no reason, failed with one.
    pub fn finished(
        &mut self,
        lease: LeaseId,
        epoch: Epoch,
        reason: &str,
        last: u64,
    ) -> Result<()> {
        let outcome = if reason.is_empty() {
            Outcome::Passed
        } else {
            Outcome::Failed
        };
        self.send(&AgentMessage::JobFinished {
            lease,
            epoch,
            report: report(outcome, reason),
            last_seq: Seq(last),
        })
    }

    /// Reports the job passed and waits for `FinishAcked`.
    pub fn finish(&mut self, lease: SimLease, last: u64) -> Result<()> {
        self.finished(lease.lease, lease.epoch, "", last)?;
        self.expect("finish-acked", |h| match h {
            Heard::Message(ControllerMessage::FinishAcked { lease: l, .. })
                if *l == lease.lease =>
            {
                Some(())
            }
            _ => None,
        })
    }

    /// Closes before the deadline, answering the close reason.
    pub fn closed_within(&mut self, within: Duration) -> Result<String> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("the link is still open after {within:?}");
            }
            match self.next(left) {
                Ok(Heard::Closed(reason)) => return Ok(reason),
                Ok(Heard::Message(_) | Heard::Text(_)) => {}
                Err(_) => bail!("the link is still open after {within:?}"),
            }
        }
    }
}
