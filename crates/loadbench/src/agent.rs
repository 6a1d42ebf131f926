//! A simulated agent: one real WebSocket to the controller's agent link, speaking the agent
//! protocol (`Hello`, `Heartbeat`, `JobStarted`, log frames, `JobFinished`). Its devices are
//! fake; what it does with a job is up to the scenario ([`Behaviour`]).
//!
//! Each agent is three tasks: a reader (controller messages, in order), a writer (everything
//! the agent sends goes through one bounded queue, so a slow socket slows the senders down)
//! and a heartbeat.

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use proto::link::{AgentMessage, ControllerMessage, DeviceInfo, LINK_PATH, LogFrame};
use proto::log::{LogKind, LogRecord};
use proto::{Epoch, JobId, JobReport, LeaseId, Millis, Outcome, Seq};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::http::header::AUTHORIZATION;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Device type of every simulated device.
pub const DEVICE_TYPE: &str = "bench";

/// How long an agent waits for `Welcome`.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(120);

/// A job the controller told the agent to start.
#[derive(Debug, Clone)]
pub struct StartJob {
    pub lease: LeaseId,
    pub epoch: Epoch,
    pub job: JobId,
    pub device: String,
    pub definition: String,
    /// When the reader got it.
    pub received: Instant,
}

/// What the scenario does with the agent's jobs. Called from the reader task: must not block.
pub trait Behaviour: Send + Sync + 'static {
    /// `Hello` for these devices is about to be sent.
    fn hello_sent(&self, _devices: &[String], _at: Instant) {}
    /// `StartJob` arrived (spawn the job; answering `JobStarted` is the behaviour's job).
    fn start(self: Arc<Self>, out: Outbox, job: StartJob);
    /// `LogAcked` arrived.
    fn log_acked(&self, _lease: LeaseId, _stored: Seq) {}
    /// `FinishAcked` arrived.
    fn finish_acked(&self, _lease: LeaseId) {}
    /// `DropLease` arrived: the controller ended the lease. Answers whether the scenario
    /// expected it (else it counts as unexpected).
    fn dropped(self: Arc<Self>, _out: Outbox, _lease: LeaseId) -> bool {
        false
    }
    /// `MultinodeReply` arrived (at `at`).
    fn multinode_reply(&self, _lease: LeaseId, _seq: u64, _reply: multinode::Reply, _at: Instant) {}
}

/// Things every agent counts that no scenario expects.
#[derive(Debug, Default)]
pub struct Oddities {
    pub unexpected: AtomicU64,
    pub links_lost: AtomicU64,
    pub first: Mutex<Option<String>>,
}

impl Oddities {
    fn note(&self, counter: &AtomicU64, what: String) {
        counter.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first.lock().unwrap_or_else(|p| p.into_inner());
        if first.is_none() {
            *first = Some(what);
        }
    }

    pub fn text(&self) -> Option<String> {
        let unexpected = self.unexpected.load(Ordering::Relaxed);
        let lost = self.links_lost.load(Ordering::Relaxed);
        if unexpected == 0 && lost == 0 {
            return None;
        }
        let first = self
            .first
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_default();
        Some(format!(
            "{unexpected} unexpected controller message(s), {lost} agent link(s) lost; first: {first}"
        ))
    }
}

/// The agent's send queue.
#[derive(Clone)]
pub struct Outbox(mpsc::Sender<Message>);

impl Outbox {
    pub async fn json(&self, message: &AgentMessage) -> anyhow::Result<()> {
        let text = serde_json::to_string(message)?;
        self.0
            .send(Message::text(text))
            .await
            .map_err(|_| anyhow::anyhow!("agent link closed"))
    }

    pub async fn frame(&self, frame: &LogFrame) -> anyhow::Result<()> {
        self.0
            .send(Message::binary(frame.encode()))
            .await
            .map_err(|_| anyhow::anyhow!("agent link closed"))
    }

    pub async fn started(&self, job: &StartJob) -> anyhow::Result<()> {
        self.json(&AgentMessage::JobStarted {
            lease: job.lease,
            epoch: job.epoch,
        })
        .await
    }

    pub async fn device_ready(&self, device: &str) -> anyhow::Result<()> {
        self.json(&AgentMessage::DeviceReady {
            device: device.to_owned(),
        })
        .await
    }

    pub async fn finished(
        &self,
        job: &StartJob,
        last_seq: u64,
        took: Duration,
    ) -> anyhow::Result<()> {
        self.json(&AgentMessage::JobFinished {
            lease: job.lease,
            epoch: job.epoch,
            report: JobReport {
                job_name: String::new(),
                outcome: Outcome::Passed,
                reason: String::new(),
                cases: Vec::new(),
                duration_s: took.as_secs_f64(),
            },
            last_seq: Seq(last_seq),
        })
        .await
    }
}

/// A connected agent; dropping it closes its link.
pub struct Agent {
    tasks: Vec<JoinHandle<()>>,
}

impl Agent {
    /// Waits until the controller closed the link (or it broke).
    pub async fn closed(&mut self) {
        if let Some(reader) = self.tasks.first_mut() {
            let _ = reader.await;
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Where agents dial, and their tokens: an agent token is bound to one agent name, so each
/// simulated agent gets its own, made by the admin on its first connection and kept.
#[derive(Clone)]
pub struct Dial {
    pub url: String,
    tokens_url: String,
    admin: String,
    http: reqwest::Client,
    tls: Option<Arc<rustls::ClientConfig>>,
    made: Arc<std::sync::Mutex<std::collections::HashMap<String, String>>>,
    /// `/api/v1/whoami` of every controller that must take a new token before it is used.
    known_at: Arc<Vec<String>>,
}

impl Dial {
    pub fn new(ws_base: &str, ctl: &crate::server::Controller) -> Dial {
        Dial {
            url: format!("{ws_base}{LINK_PATH}"),
            tokens_url: ctl.url("/api/v1/tokens"),
            admin: ctl.admin.clone(),
            http: ctl.http.clone(),
            tls: ctl.tls.clone(),
            made: Arc::default(),
            known_at: Arc::default(),
        }
    }

    /// Tokens made through the lab's first controller, used once every controller takes them;
    /// dials the first controller's agent link.
    pub fn for_lab(lab: &mut crate::cluster::Lab) -> Dial {
        let known_at = Arc::new(lab.whoami_urls());
        let first = lab.first();
        Dial {
            known_at,
            ..Dial::new(&first.ws_url(""), first)
        }
    }

    /// One dial per controller of the lab, in order, with the same tokens.
    pub fn to_each(&self, lab: &crate::cluster::Lab) -> Vec<Dial> {
        lab.controllers
            .iter()
            .map(|c| self.at(&c.ws_url("")))
            .collect()
    }

    /// The same agents' tokens (made through the same controller), dialing the agent link of
    /// another controller on the same database.
    pub fn at(&self, ws_base: &str) -> Dial {
        Dial {
            url: format!("{ws_base}{LINK_PATH}"),
            ..self.clone()
        }
    }

    /// The token of agent `name` (made on first use).
    pub async fn token_for(&self, name: &str) -> anyhow::Result<String> {
        if let Some(token) = self
            .made
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
        {
            return Ok(token.clone());
        }
        let r = self
            .http
            .post(&self.tokens_url)
            .bearer_auth(&self.admin)
            .json(&serde_json::json!({"name": name, "role": "agent"}))
            .send()
            .await
            .context("POST /api/v1/tokens")?;
        let status = r.status();
        if !status.is_success() {
            anyhow::bail!(
                "POST /api/v1/tokens answered {status}: {}",
                r.text().await.unwrap_or_default()
            );
        }
        let created: proto::api::CreatedToken =
            r.json().await.context("POST /api/v1/tokens: answer")?;
        crate::cluster::wait_known(&self.http, &self.known_at, &created.token).await?;
        self.made
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_owned(), created.token.clone());
        Ok(created.token)
    }
}

/// Small buffers: thousands of these live in one process.
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(16 << 10)
        .write_buffer_size(0)
        .max_message_size(Some(proto::link::MAX_FRAME))
        .max_frame_size(Some(proto::link::MAX_FRAME))
}

/// Opens a WebSocket with `Authorization: Bearer TOKEN` (over TLS with `tls` for `wss://`).
pub async fn open(
    url: &str,
    token: &str,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> anyhow::Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
> {
    let mut request = url.into_client_request()?;
    request.headers_mut().insert(
        AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}"))?,
    );
    let connector = tls.map(tokio_tungstenite::Connector::Rustls);
    let (ws, _) = tokio_tungstenite::connect_async_tls_with_config(
        request,
        Some(ws_config()),
        true,
        connector,
    )
    .await
    .with_context(|| format!("cannot open {url}"))?;
    Ok(ws)
}

/// Names of an agent's devices.
pub fn device_names(agent: &str, count: usize) -> Vec<String> {
    (0..count).map(|i| format!("{agent}-d{i}")).collect()
}

/// Connects, says hello with these devices and waits for `Welcome`; then serves the link.
pub async fn connect(
    dial: &Dial,
    name: &str,
    devices: &[String],
    behaviour: Arc<dyn Behaviour>,
    odd: Arc<Oddities>,
) -> anyhow::Result<Agent> {
    let token = dial.token_for(name).await?;
    let ws = open(&dial.url, &token, dial.tls.clone()).await?;
    let (mut sink, mut stream) = ws.split();
    let hello = AgentMessage::Hello {
        protocol: proto::link::PROTOCOL_VERSION,
        agent: name.to_owned(),
        version: "loadbench".into(),
        devices: devices
            .iter()
            .map(|d| DeviceInfo {
                name: d.clone(),
                device_type: DEVICE_TYPE.into(),
                tags: Vec::new(),
                capabilities: vec!["power".into(), "console".into()],
            })
            .collect(),
        held: Vec::new(),
        sessions: Vec::new(),
    };
    behaviour.hello_sent(devices, Instant::now());
    sink.send(Message::text(serde_json::to_string(&hello)?))
        .await
        .context("cannot send hello")?;
    // Until Welcome, nothing else may come but a refusal.
    let heartbeat = loop {
        let next = tokio::time::timeout(WELCOME_TIMEOUT, stream.next())
            .await
            .with_context(|| format!("agent {name}: no welcome within {WELCOME_TIMEOUT:?}"))?;
        let Some(Ok(message)) = next else {
            bail!("agent {name}: link closed before welcome");
        };
        let Message::Text(text) = message else {
            continue;
        };
        match serde_json::from_str::<ControllerMessage>(text.as_str())? {
            ControllerMessage::Welcome { heartbeat_ms, .. } => {
                break Duration::from_millis(heartbeat_ms.max(100));
            }
            ControllerMessage::Refused { reason } => bail!("agent {name} refused: {reason}"),
            other => bail!("agent {name}: {other:?} before welcome"),
        }
    };
    let (tx, mut rx) = mpsc::channel::<Message>(8);
    let out = Outbox(tx);
    let writer = tokio::spawn(async move {
        while let Some(message) = rx.recv().await {
            if sink.send(message).await.is_err() {
                break;
            }
        }
    });
    let beat = out.clone();
    let heartbeats = tokio::spawn(async move {
        let mut tick = tokio::time::interval(heartbeat);
        tick.tick().await;
        loop {
            tick.tick().await;
            if beat.json(&AgentMessage::Heartbeat).await.is_err() {
                break;
            }
        }
    });
    let agent = name.to_owned();
    let reader = tokio::spawn(async move {
        while let Some(incoming) = stream.next().await {
            let message = match incoming {
                Ok(Message::Text(text)) => {
                    match serde_json::from_str::<ControllerMessage>(text.as_str()) {
                        Ok(m) => m,
                        Err(e) => {
                            odd.note(&odd.unexpected, format!("agent {agent}: unreadable: {e}"));
                            continue;
                        }
                    }
                }
                Ok(Message::Close(_)) | Err(_) => break,
                Ok(_) => continue,
            };
            match message {
                ControllerMessage::StartJob {
                    lease,
                    epoch,
                    job,
                    device,
                    definition,
                    ..
                } => {
                    let start = StartJob {
                        lease,
                        epoch,
                        job,
                        device,
                        definition,
                        received: Instant::now(),
                    };
                    Arc::clone(&behaviour).start(out.clone(), start);
                }
                ControllerMessage::LogAcked { lease, stored, .. } => {
                    behaviour.log_acked(lease, stored);
                }
                ControllerMessage::FinishAcked { lease, .. } => behaviour.finish_acked(lease),
                ControllerMessage::DropLease { lease, epoch } => {
                    if !Arc::clone(&behaviour).dropped(out.clone(), lease) {
                        odd.note(
                            &odd.unexpected,
                            format!(
                                "agent {agent}: DropLease {{ lease: {lease}, epoch: {epoch} }}"
                            ),
                        );
                    }
                }
                ControllerMessage::MultinodeReply {
                    lease, seq, reply, ..
                } => behaviour.multinode_reply(lease, seq, reply, Instant::now()),
                other => odd.note(&odd.unexpected, format!("agent {agent}: {other:?}")),
            }
        }
        odd.note(&odd.links_lost, format!("agent {agent}: link closed"));
    });
    Ok(Agent {
        tasks: vec![reader, writer, heartbeats],
    })
}

/// Connects `count` agents named `{prefix}{i}` with `per_agent` devices each, `parallel` at a
/// time, agent `i` through `dials[i % dials.len()]`. Answers them in order.
pub async fn connect_many(
    dials: &[Dial],
    prefix: &str,
    range: std::ops::Range<usize>,
    per_agent: usize,
    parallel: usize,
    behaviour: Arc<dyn Behaviour>,
    odd: Arc<Oddities>,
) -> anyhow::Result<Vec<Agent>> {
    let mut agents = Vec::with_capacity(range.len());
    if dials.is_empty() {
        bail!("no controller to connect agents to");
    }
    let mut pending = futures_util::stream::iter(range.map(|i| {
        let dial = dials[i % dials.len()].clone();
        let behaviour = Arc::clone(&behaviour);
        let odd = Arc::clone(&odd);
        let name = format!("{prefix}{i}");
        async move {
            let devices = device_names(&name, per_agent);
            connect(&dial, &name, &devices, behaviour, odd).await
        }
    }))
    .buffered(parallel.max(1));
    while let Some(agent) = pending.next().await {
        agents.push(agent?);
    }
    Ok(agents)
}

/// Wall-clock milliseconds, as agents stamp their records.
pub fn wall_ms() -> Millis {
    Millis(u64::try_from(wall_micros() / 1000).unwrap_or(u64::MAX))
}

/// Wall-clock microseconds since the UNIX epoch.
pub fn wall_micros() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_micros()
}

/// A frame of console records with consecutive sequence numbers from `first`.
pub fn console_frame(job: &StartJob, first: u64, texts: Vec<String>) -> LogFrame {
    let at = wall_ms();
    LogFrame {
        lease: job.lease,
        epoch: job.epoch,
        records: texts
            .into_iter()
            .enumerate()
            .map(|(i, text)| LogRecord {
                seq: Seq(first + i as u64),
                at,
                kind: LogKind::Console,
                text,
            })
            .collect(),
    }
}
