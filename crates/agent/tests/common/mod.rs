//! Test peers for the agent: a controller that speaks the link protocol over a real
//! WebSocket (tokio-tungstenite on 127.0.0.1:0), an HTTP server that never answers (to keep a
//! job busy in its deploy action), and an agent running in the test's runtime.
//!
//! Every wait has a deadline; nothing sleeps to synchronise.

#![allow(dead_code)]
// The handshake callback type is tungstenite's, large error and all.
#![allow(clippy::result_large_err)]

use anyhow::{Context, Result, bail};
use dutlab_agent::AgentConfig;
use futures_util::{SinkExt, StreamExt};
use proto::link::{AgentMessage, ControllerMessage, LogCursor, LogFrame, PROTOCOL_VERSION};
use proto::log::LogRecord;
use proto::{Epoch, JobId, LeaseId, Seq};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

/// How long any single expected thing may take.
pub const WAIT: Duration = Duration::from_secs(30);
pub const TOKEN: &str = "t0ken-for-tests-only";

/// The controller side of the link.
pub struct TestController {
    listener: TcpListener,
    pub url: String,
}

impl TestController {
    pub async fn start() -> Result<TestController> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        Ok(TestController { listener, url })
    }

    /// Accepts the next agent connection.
    pub async fn accept(&self) -> Result<Peer> {
        self.accept_within(WAIT).await
    }

    pub async fn accept_within(&self, within: Duration) -> Result<Peer> {
        let (stream, _) = tokio::time::timeout(within, self.listener.accept())
            .await
            .context("no agent connection in time")??;
        let (tx, rx) = std::sync::mpsc::channel();
        let callback = move |req: &Request, resp: Response| {
            let _ = tx.send((
                req.uri().path().to_owned(),
                req.headers()
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned),
            ));
            Ok(resp)
        };
        let ws = tokio::time::timeout(WAIT, tokio_tungstenite::accept_hdr_async(stream, callback))
            .await
            .context("no WebSocket handshake in time")??;
        let (path, authorization) = rx.recv().context("handshake callback")?;
        Ok(Peer {
            ws,
            path,
            authorization,
        })
    }
}

/// What the agent sent.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    Message(AgentMessage),
    Frame(LogFrame),
}

/// One agent connection, seen from the controller.
pub struct Peer {
    pub ws: WebSocketStream<TcpStream>,
    pub path: String,
    pub authorization: Option<String>,
}

/// A `Hello`, taken apart.
#[derive(Debug, Clone)]
pub struct Hello {
    pub agent: String,
    pub version: String,
    pub devices: Vec<proto::link::DeviceInfo>,
    pub held: Vec<proto::link::HeldLease>,
}

impl Peer {
    /// The next message or frame (heartbeats included; pings and pongs skipped).
    pub async fn recv(&mut self) -> Result<Incoming> {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .context("nothing from the agent in time")?
                .context("the agent closed the link")??;
            match msg {
                Message::Text(text) => {
                    return Ok(Incoming::Message(
                        serde_json::from_str(&text).with_context(|| format!("parsing {text}"))?,
                    ));
                }
                Message::Binary(bytes) => return Ok(Incoming::Frame(LogFrame::decode(&bytes)?)),
                Message::Close(_) => bail!("the agent closed the link"),
                _ => {}
            }
        }
    }

    /// The next message or frame that is not a heartbeat.
    pub async fn recv_work(&mut self) -> Result<Incoming> {
        loop {
            match self.recv().await? {
                Incoming::Message(AgentMessage::Heartbeat) => {}
                other => return Ok(other),
            }
        }
    }

    /// The next control message that is not a heartbeat; frames are collected into `log`.
    pub async fn recv_message(&mut self, log: &mut Vec<LogRecord>) -> Result<AgentMessage> {
        loop {
            match self.recv_work().await? {
                Incoming::Message(m) => return Ok(m),
                Incoming::Frame(f) => log.extend(f.records),
            }
        }
    }

    pub async fn hello(&mut self) -> Result<Hello> {
        match self.recv().await? {
            Incoming::Message(AgentMessage::Hello {
                protocol,
                agent,
                version,
                devices,
                held,
                sessions: _,
            }) => {
                anyhow::ensure!(protocol == PROTOCOL_VERSION, "protocol {protocol}");
                Ok(Hello {
                    agent,
                    version,
                    devices,
                    held,
                })
            }
            other => bail!("expected hello, got {other:?}"),
        }
    }

    pub async fn send(&mut self, msg: &ControllerMessage) -> Result<()> {
        self.send_text(&serde_json::to_string(msg)?).await
    }

    pub async fn send_text(&mut self, text: &str) -> Result<()> {
        tokio::time::timeout(WAIT, self.ws.send(Message::text(text.to_owned())))
            .await
            .context("send timed out")??;
        Ok(())
    }

    pub async fn welcome(&mut self, heartbeat_ms: u64, resume: Vec<LogCursor>) -> Result<()> {
        self.send(&ControllerMessage::Welcome {
            protocol: PROTOCOL_VERSION,
            heartbeat_ms,
            resume,
        })
        .await
    }

    pub async fn start_job(&mut self, lease: u64, device: &str, definition: &str) -> Result<()> {
        self.send(&ControllerMessage::StartJob {
            lease: LeaseId(u128::from(lease)),
            epoch: Epoch(1),
            job: JobId(lease * 10),
            device: device.to_owned(),
            definition: definition.to_owned(),
            sub_job: None,
        })
        .await
    }
}

/// Sequence numbers of `records`.
pub fn seqs(records: &[LogRecord]) -> Vec<u64> {
    records.iter().map(|r| r.seq.0).collect()
}

pub fn cursor(lease: u64, stored: u64) -> LogCursor {
    LogCursor {
        lease: LeaseId(u128::from(lease)),
        stored: Seq(stored),
    }
}

/// An HTTP server that accepts connections and never answers: a deploy from it hangs.
pub async fn silent_http_server() -> Result<(String, JoinHandle<()>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    Ok((format!("http://{addr}"), task))
}

/// A job that stays in its deploy action (downloading from a server that never answers).
pub fn hanging_job(base: &str) -> String {
    format!(
        "job_name: hang\ndevice_type: qemu\ntimeouts: {{job: 10m, action: 10m}}\nactions:\n\
         - deploy:\n    to: tmpfs\n    images:\n      kernel: {{url: '{base}/vmlinuz'}}\n"
    )
}

/// A job whose deploy image does not exist: a job error before anything boots.
pub const MISSING_IMAGE_JOB: &str = "job_name: missing image\ndevice_type: qemu\nactions:\n\
    - deploy:\n    to: tmpfs\n    images:\n      kernel: {url: file:///nonexistent/vmlinuz}\n\
    - boot: {method: qemu, prompts: ['# $']}\n";

/// A temporary lab host: token file and agent configuration.
pub struct Host {
    pub dir: tempfile::TempDir,
}

impl Host {
    pub fn new() -> Result<Host> {
        let dir = tempfile::Builder::new().prefix("dutlab-agent-").tempdir()?;
        std::fs::write(dir.path().join("token"), format!("{TOKEN}\n"))?;
        Ok(Host { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn work_dir(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    pub fn spool_dir(&self, lease: u64) -> PathBuf {
        self.work_dir().join("spool").join(lease.to_string())
    }

    /// A configuration with the given device entries (YAML list items). The operator allows
    /// images from the host directory and downloads from loopback (the test servers).
    pub fn config(&self, url: &str, devices: &str) -> Result<AgentConfig> {
        let path = self.dir.path().join("agent.yaml");
        std::fs::write(
            &path,
            format!(
                "controller: {url}\ntoken_file: token\nname: host-1\nwork_dir: work\n\
                 image_dirs: [.]\nallowed_destinations: [127.0.0.1]\ndevices:\n{devices}"
            ),
        )?;
        Ok(AgentConfig::load(&path)?)
    }

    /// Two plain QEMU devices.
    pub fn default_config(&self, url: &str) -> Result<AgentConfig> {
        self.config(
            url,
            "- {name: qemu-01, device_type: qemu, tags: [tcg]}\n- {name: qemu-02, device_type: qemu}\n",
        )
    }
}

/// An agent running in the test's runtime.
pub struct RunningAgent {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), dutlab_agent::AgentError>>,
}

impl RunningAgent {
    pub fn start(config: AgentConfig) -> RunningAgent {
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(dutlab_agent::run(config, async move {
            let _ = stopped.await;
        }));
        RunningAgent {
            stop: Some(stop),
            task,
        }
    }

    /// Asks the agent to shut down and waits for it.
    pub async fn shutdown(mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(WAIT, &mut self.task)
            .await
            .context("the agent did not shut down in time")???;
        Ok(())
    }

    pub fn abort(&self) {
        self.task.abort();
    }
}

/// Polls `cond` until it holds or `WAIT` passes.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) -> Result<()> {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        if tokio::time::Instant::now() > deadline {
            bail!("{what}: not within {WAIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}
