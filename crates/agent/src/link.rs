//! The agent's end of the link: one WebSocket dialled to the controller.
//!
//! ```text
//!  dial ws(s)://host:port[/prefix]/api/v1/agent/link   (Authorization: Bearer <token file>)
//!    -> Hello { devices, held }  <- Welcome { heartbeat_ms, resume }   (or Refused: back off)
//!    <-> control messages (JSON text), log frames (binary), Heartbeat + Ping every heartbeat
//!  nothing heard for max(3 x heartbeat, 5 s), a failed or stalled write, a close: link dead
//! ```
//!
//! Invariants:
//! - The agent only dials out; it never listens.
//! - `wss://` trusts exactly the configuration's [`tls::Trust`]; a refused certificate is
//!   [`LinkDown::Tls`], naming the controller and the reason.
//! - The token is read from its file at every connect, sent only in the `Authorization`
//!   header (marked sensitive), and never put in a message, an error or a log line.
//! - Neither side's frames may exceed [`MAX_FRAME`]: tungstenite refuses longer ones.
//! - Every write has a deadline (the dead-link time), so a partitioned link cannot stall
//!   the agent: a write that does not finish in time drops the link.

use crate::AgentError;
use futures_util::{SinkExt, StreamExt};
use proto::link::{AgentMessage, ControllerMessage, LINK_PATH, MAX_FRAME, PROTOCOL_VERSION};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::http::header::AUTHORIZATION;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long dialling (TCP and the WebSocket upgrade) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the controller may take to answer `Hello`.
pub const WELCOME_TIMEOUT: Duration = Duration::from_secs(10);
/// The link is dead when nothing was heard for at least this long.
pub const MIN_DEAD_AFTER: Duration = Duration::from_secs(5);
/// Bounds on the heartbeat period the controller may ask for.
const MIN_HEARTBEAT: Duration = Duration::from_millis(100);
const MAX_HEARTBEAT: Duration = Duration::from_secs(60);

/// The WebSocket of one connection.
pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Where and how the agent dials: the link URL and, for `wss://`, its TLS configuration.
#[derive(Clone)]
pub struct Dialer {
    pub url: String,
    trust: tls::Trust,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dialer")
            .field("url", &self.url)
            .field("trust", &self.trust)
            .finish()
    }
}

impl Dialer {
    /// The link of `controller`, trusting `trust` when it is `https://` or `wss://`.
    pub fn new(controller: &str, trust: &tls::Trust) -> Result<Dialer, AgentError> {
        let url = link_url(controller)?;
        let tls = if url.starts_with("wss://") {
            let config = tls::client_config(trust).map_err(|e| AgentError::Controller {
                url: controller.to_owned(),
                reason: e.to_string(),
            })?;
            Some(Arc::new(config))
        } else {
            None
        };
        Ok(Dialer {
            url,
            trust: trust.clone(),
            tls,
        })
    }
}

/// The WebSocket URL of the agent link for a controller address:
/// `http://H:P[/prefix]` or `ws://...` -> `ws://H:P[/prefix]/api/v1/agent/link`, and
/// `https://` or `wss://` -> `wss://...`.
pub fn link_url(controller: &str) -> Result<String, AgentError> {
    websocket_url(controller).map_err(|reason| AgentError::Controller {
        url: controller.to_owned(),
        reason,
    })
}

/// [`link_url`], with the bare reason when the address cannot be used.
pub(crate) fn websocket_url(controller: &str) -> Result<String, String> {
    let (scheme, rest) = controller
        .split_once("://")
        .ok_or("not a URL (use http(s)://host:port or ws(s)://host:port)")?;
    let ws = match scheme.to_ascii_lowercase().as_str() {
        "http" | "ws" => "ws",
        "https" | "wss" => "wss",
        _ => return Err("the scheme must be http, https, ws or wss".into()),
    };
    let (authority, path) = match rest.find(['/', '?', '#']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if authority.is_empty() {
        return Err("the URL has no host".into());
    }
    if authority.contains('@') {
        return Err(
            "credentials do not belong in the URL; the token is read from token_file".into(),
        );
    }
    if path.contains(['?', '#']) {
        return Err("the URL must not have a query or fragment".into());
    }
    let prefix = path.trim_end_matches('/');
    if prefix.ends_with(LINK_PATH) {
        return Ok(format!("{ws}://{authority}{prefix}"));
    }
    Ok(format!("{ws}://{authority}{prefix}{LINK_PATH}"))
}

/// Why a connection attempt or a link ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkDown {
    /// The controller said no (`Refused`); the reason is the controller's.
    Refused(String),
    /// TLS refused the controller's certificate (wrong CA, wrong pin, wrong name, expired).
    Tls(String),
    /// Anything else: unreachable, timed out, closed, a failed write.
    Lost(String),
}

impl std::fmt::Display for LinkDown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkDown::Refused(reason) => write!(f, "the controller refused the agent: {reason}"),
            LinkDown::Tls(reason) | LinkDown::Lost(reason) => f.write_str(reason),
        }
    }
}

fn lost(reason: impl Into<String>) -> LinkDown {
    LinkDown::Lost(reason.into())
}

/// The answer to `Hello`.
#[derive(Debug, Clone, PartialEq)]
pub struct Welcome {
    pub heartbeat: Duration,
    pub resume: Vec<proto::link::LogCursor>,
}

/// Dials the controller, says hello and waits for the welcome.
pub async fn connect(
    dialer: &Dialer,
    token_file: &Path,
    hello: &AgentMessage,
) -> Result<(Socket, Welcome), LinkDown> {
    let url = dialer.url.as_str();
    let token = read_token(token_file)?;
    let mut request = url
        .into_client_request()
        .map_err(|e| lost(format!("{url}: {e}")))?;
    let mut value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
        lost(format!(
            "the token in {} holds characters an HTTP header cannot carry",
            token_file.display()
        ))
    })?;
    value.set_sensitive(true);
    request.headers_mut().insert(AUTHORIZATION, value);
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_FRAME))
        .max_frame_size(Some(MAX_FRAME));
    let (mut socket, _) = tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio_tungstenite::connect_async_tls_with_config(
            request,
            Some(config),
            true,
            dialer.tls.clone().map(tokio_tungstenite::Connector::Rustls),
        ),
    )
    .await
    .map_err(|_| lost(format!("{url}: no connection within {CONNECT_TIMEOUT:?}")))?
    .map_err(|e| match tls::explain(&e, &dialer.trust) {
        Some(reason) => LinkDown::Tls(format!("TLS with the controller at {url}: {reason}")),
        None => lost(format!("{url}: {e}")),
    })?;
    let text = serde_json::to_string(hello).map_err(|e| lost(format!("hello: {e}")))?;
    tokio::time::timeout(WELCOME_TIMEOUT, socket.send(Message::text(text)))
        .await
        .map_err(|_| lost("sending hello timed out"))?
        .map_err(|e| lost(format!("sending hello: {e}")))?;
    let welcome = tokio::time::timeout(WELCOME_TIMEOUT, wait_welcome(&mut socket))
        .await
        .map_err(|_| lost(format!("no welcome within {WELCOME_TIMEOUT:?}")))??;
    Ok((socket, welcome))
}

async fn wait_welcome(socket: &mut Socket) -> Result<Welcome, LinkDown> {
    loop {
        let message = match socket.next().await {
            None => return Err(lost("the controller closed the connection before welcome")),
            Some(Err(e)) => return Err(lost(format!("before welcome: {e}"))),
            Some(Ok(m)) => m,
        };
        let text = match message {
            Message::Text(text) => text,
            Message::Close(_) => {
                return Err(lost("the controller closed the connection before welcome"));
            }
            _ => continue,
        };
        match serde_json::from_str::<ControllerMessage>(&text) {
            Ok(ControllerMessage::Welcome {
                protocol,
                heartbeat_ms,
                resume,
            }) => {
                if protocol != PROTOCOL_VERSION {
                    return Err(lost(format!(
                        "the controller speaks protocol {protocol}, this agent {PROTOCOL_VERSION}"
                    )));
                }
                let heartbeat =
                    Duration::from_millis(heartbeat_ms).clamp(MIN_HEARTBEAT, MAX_HEARTBEAT);
                return Ok(Welcome { heartbeat, resume });
            }
            Ok(ControllerMessage::Refused { reason }) => return Err(LinkDown::Refused(reason)),
            Ok(other) => tracing::debug!("ignoring {other:?} before welcome"),
            Err(e) => tracing::warn!("ignoring a controller message that does not parse: {e}"),
        }
    }
}

/// The token, trimmed. Errors name the file, never its content.
pub(crate) fn read_token(path: &Path) -> Result<String, LinkDown> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| lost(format!("token file {}: {e}", path.display())))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(lost(format!("token file {}: empty", path.display())));
    }
    Ok(token.to_owned())
}

/// An established link.
pub struct Link {
    socket: Socket,
    pub heartbeat: Duration,
    dead_after: Duration,
    last_heard: Instant,
}

impl Link {
    pub fn new(socket: Socket, heartbeat: Duration) -> Link {
        Link {
            socket,
            heartbeat,
            dead_after: (heartbeat * 3).max(MIN_DEAD_AFTER),
            last_heard: Instant::now(),
        }
    }

    /// When the link counts as dead if nothing arrives before.
    pub fn dead_at(&self) -> Instant {
        self.last_heard + self.dead_after
    }

    /// How long silence may last.
    pub fn dead_after(&self) -> Duration {
        self.dead_after
    }

    /// The next message from the controller (control frames included).
    pub async fn next(&mut self) -> Result<Message, LinkDown> {
        match self.socket.next().await {
            None => Err(lost("the controller closed the connection")),
            Some(Err(e)) => Err(lost(format!("reading: {e}"))),
            Some(Ok(Message::Close(frame))) => Err(lost(match frame {
                Some(f) if !f.reason.is_empty() => {
                    format!("the controller closed the connection: {}", f.reason)
                }
                _ => "the controller closed the connection".to_owned(),
            })),
            Some(Ok(m)) => {
                self.last_heard = Instant::now();
                Ok(m)
            }
        }
    }

    pub async fn send(&mut self, message: &AgentMessage) -> Result<(), LinkDown> {
        let text = serde_json::to_string(message).map_err(|e| lost(format!("encoding: {e}")))?;
        self.write(Message::text(text)).await
    }

    pub async fn send_frame(&mut self, bytes: Vec<u8>) -> Result<(), LinkDown> {
        self.write(Message::binary(bytes)).await
    }

    pub async fn ping(&mut self) -> Result<(), LinkDown> {
        self.write(Message::Ping(Vec::new().into())).await
    }

    /// Closes the link politely (bounded in time).
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.socket.close(None)).await;
    }

    async fn write(&mut self, message: Message) -> Result<(), LinkDown> {
        match tokio::time::timeout(self.dead_after, self.socket.send(message)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(lost(format!("writing: {e}"))),
            Err(_) => Err(lost(format!(
                "a write did not complete within {:?}",
                self.dead_after
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controller_addresses_become_link_urls() {
        let url = |s: &str| link_url(s).map_err(|e| e.to_string());
        assert_eq!(
            url("http://127.0.0.1:7780").as_deref(),
            Ok("ws://127.0.0.1:7780/api/v1/agent/link")
        );
        assert_eq!(
            url("http://lab:80/dutlab/").as_deref(),
            Ok("ws://lab:80/dutlab/api/v1/agent/link")
        );
        assert_eq!(
            url("ws://[::1]:7780").as_deref(),
            Ok("ws://[::1]:7780/api/v1/agent/link")
        );
        assert_eq!(
            url("https://lab:7780").as_deref(),
            Ok("wss://lab:7780/api/v1/agent/link")
        );
        assert_eq!(
            url("ws://h:1/api/v1/agent/link").as_deref(),
            Ok("ws://h:1/api/v1/agent/link")
        );
        for (bad, why) in [
            ("ftp://h:1", "scheme"),
            ("h:1", "not a URL"),
            ("http://", "no host"),
            ("http://u:p@h:1", "credentials"),
            ("http://h:1/?x=1", "query"),
        ] {
            let e = url(bad).expect_err(bad);
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn token_errors_never_show_the_token() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        std::fs::write(&path, "  \n").expect("write");
        let e = read_token(&path).expect_err("empty");
        assert!(e.to_string().contains("empty"), "{e}");
        std::fs::write(&path, "s3cr3t-token\n").expect("write");
        assert_eq!(read_token(&path), Ok("s3cr3t-token".into()));
    }
}
