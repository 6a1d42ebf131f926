//! Following a job's log live, over a WebSocket that may drop.
//!
//! ```text
//!             first next()                  event: deliver it unless seen (FollowCursor)
//!  Idle ──────────────────> Connecting ──ok──> Open ─────┐
//!                             ^    │                ^    │
//!        wait (backoff) ──────┘    │ transient      └────┘
//!             ^                    │ failure             │ closed / error / silent 60s
//!             └────────────────────┴─────────────────────┘
//!
//!  End delivered ─────────────────────────────> Finished (next() gives None)
//!  401/403/404/400, bad JSON, wss://, or connect failing longer than give_up ─> the error, then Finished
//! ```
//!
//! Invariants:
//! - The caller sees every log record exactly once and in order: a reconnect asks for records
//!   after the last one delivered, and [`FollowCursor`] drops any record at or below it.
//! - After [`FollowEvent::End`] nothing more is delivered and no connection is made.
//! - Reconnects wait [`FIRST_RETRY`] doubling to [`MAX_RETRY`]; the wait starts over after an
//!   event arrives. Failing connects end the stream after `give_up` (default [`GIVE_UP`]).
//! - A connection silent for [`SILENCE`] gets a ping; silent for another [`SILENCE`], it is
//!   dropped and reopened (a controller host that vanished sends no reset).
//! - `next` is cancel-safe: an event is delivered by the same poll that reads it.

use crate::{Client, ClientError, api_error};
use futures_util::{SinkExt, StreamExt};
use proto::api::FollowEvent;
use proto::{JobId, Seq};
use reqwest::Url;
use reqwest::header::AUTHORIZATION;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// First wait before reconnecting.
pub const FIRST_RETRY: Duration = Duration::from_millis(100);

/// Longest wait between reconnects.
pub const MAX_RETRY: Duration = Duration::from_secs(5);

/// How long connects may keep failing before the stream ends with the last error.
pub const GIVE_UP: Duration = Duration::from_secs(120);

/// Silence after which the connection is pinged, and then given up.
pub const SILENCE: Duration = Duration::from_secs(30);

/// Longest time for TCP connect plus WebSocket handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest WebSocket message accepted (a record is at most 16 KiB of text, JSON-escaped).
const MAX_EVENT: usize = 4 << 20;

pub(crate) type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What has been delivered so far: decides which events are new.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowCursor {
    last: Seq,
    ended: bool,
}

impl FollowCursor {
    /// Nothing delivered yet; records after `after` are wanted.
    pub fn new(after: Seq) -> FollowCursor {
        FollowCursor {
            last: after,
            ended: false,
        }
    }

    /// The sequence number of the last record delivered (or the starting cursor): where a
    /// reconnect resumes.
    pub fn last(&self) -> Seq {
        self.last
    }

    /// `End` was delivered.
    pub fn is_ended(&self) -> bool {
        self.ended
    }

    /// The event to deliver, or `None` when it was delivered already (a record at or below
    /// [`FollowCursor::last`]) or comes after `End`.
    pub fn accept(&mut self, event: FollowEvent) -> Option<FollowEvent> {
        if self.ended {
            return None;
        }
        match &event {
            FollowEvent::Log { record } => {
                if record.seq <= self.last {
                    return None;
                }
                self.last = record.seq;
            }
            FollowEvent::Job { .. } => {}
            FollowEvent::End { .. } => self.ended = true,
        }
        Some(event)
    }
}

/// Waits between reconnects: doubling from [`FIRST_RETRY`] up to [`MAX_RETRY`].
#[derive(Debug, Clone)]
struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Backoff {
        Backoff { next: FIRST_RETRY }
    }

    fn delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (d * 2).min(MAX_RETRY);
        d
    }

    fn reset(&mut self) {
        self.next = FIRST_RETRY;
    }
}

/// The `ws://` (or `wss://`) URL of an `http://` (or `https://`) one.
pub fn ws_url(http: &Url) -> Result<Url, ClientError> {
    let mut url = http.clone();
    let scheme = match http.scheme() {
        "http" => "ws",
        "https" => "wss",
        other => {
            return Err(ClientError::BadUrl {
                url: http.to_string(),
                reason: format!("no WebSocket scheme for '{other}'"),
            });
        }
    };
    url.set_scheme(scheme).map_err(|()| ClientError::BadUrl {
        url: http.to_string(),
        reason: "cannot become a WebSocket URL".into(),
    })?;
    Ok(url)
}

/// A live job log. Call [`Follow::next`] until it gives `None`.
#[derive(Debug)]
pub struct Follow {
    client: Client,
    job: JobId,
    cursor: FollowCursor,
    socket: Option<Socket>,
    backoff: Backoff,
    /// Wait before the next connect.
    wait: Option<Duration>,
    /// Since when connects fail (cleared by a successful connect).
    failing_since: Option<Instant>,
    give_up: Duration,
    finished: bool,
}

/// What one read from the socket gave.
enum Read {
    Event(Box<FollowEvent>),
    Dropped,
    Bad(ClientError),
}

impl Follow {
    pub(crate) fn new(client: Client, job: JobId, after: Seq) -> Follow {
        Follow {
            client,
            job,
            cursor: FollowCursor::new(after),
            socket: None,
            backoff: Backoff::new(),
            wait: None,
            failing_since: None,
            give_up: GIVE_UP,
            finished: false,
        }
    }

    /// How long connects may keep failing before [`Follow::next`] gives the error.
    pub fn give_up_after(mut self, d: Duration) -> Follow {
        self.give_up = d;
        self
    }

    /// The job followed.
    pub fn job(&self) -> JobId {
        self.job
    }

    /// The last record delivered (resume point).
    pub fn last(&self) -> Seq {
        self.cursor.last()
    }

    /// The next new event; `None` after `End` or after an error that ends the stream.
    pub async fn next(&mut self) -> Option<Result<FollowEvent, ClientError>> {
        loop {
            if self.finished || self.cursor.is_ended() {
                self.socket = None;
                return None;
            }
            let socket = match &mut self.socket {
                Some(socket) => socket,
                None => {
                    if let Some(wait) = self.wait.take() {
                        tokio::time::sleep(wait).await;
                    }
                    match self.connect().await {
                        Ok(socket) => {
                            self.failing_since = None;
                            self.socket.insert(socket)
                        }
                        Err(e) => {
                            let since = *self.failing_since.get_or_insert_with(Instant::now);
                            if e.is_transient() && since.elapsed() < self.give_up {
                                self.wait = Some(self.backoff.delay());
                                continue;
                            }
                            self.finished = true;
                            return Some(Err(e));
                        }
                    }
                }
            };
            match read(socket).await {
                Read::Event(event) => {
                    self.backoff.reset();
                    if let Some(event) = self.cursor.accept(*event) {
                        return Some(Ok(event));
                    }
                }
                Read::Dropped => {
                    self.socket = None;
                    self.wait = Some(self.backoff.delay());
                }
                Read::Bad(e) => {
                    self.socket = None;
                    self.finished = true;
                    return Some(Err(e));
                }
            }
        }
    }

    /// The follow URL resuming after the last delivered record.
    fn url(&self) -> Result<Url, ClientError> {
        let http = self
            .client
            .api_endpoint(&["jobs", &self.job.to_string(), "logs", "follow"]);
        let mut url = ws_url(&http)?;
        url.query_pairs_mut()
            .append_pair("cursor", &self.cursor.last().0.to_string());
        Ok(url)
    }

    async fn connect(&self) -> Result<Socket, ClientError> {
        connect_ws(&self.client, &self.url()?, MAX_EVENT).await
    }
}

/// Redirects followed at most when opening a WebSocket.
pub const MAX_REDIRECTS: usize = 3;

/// Opens a WebSocket to `url` of the controller with the client's token and trust. A 307 or
/// 308 (a controller sending the stream to the controller of the lab that holds the agent's
/// link) is followed up to [`MAX_REDIRECTS`] times, with the same token and trust, never
/// from `wss://` to `ws://`.
pub(crate) async fn connect_ws(
    client: &Client,
    url: &Url,
    max_message: usize,
) -> Result<Socket, ClientError> {
    let mut url = url.clone();
    for _ in 0..=MAX_REDIRECTS {
        match handshake(client, &url, max_message).await? {
            Handshake::Open(socket) => return Ok(*socket),
            Handshake::Redirect(location) => url = redirected(&url, &location)?,
        }
    }
    Err(ClientError::BadUrl {
        url: url.to_string(),
        reason: format!("more than {MAX_REDIRECTS} redirects"),
    })
}

/// `location` (absolute or relative) seen from `from`.
fn joined(from: &Url, location: &str) -> Result<Url, ClientError> {
    from.join(location).map_err(|e| ClientError::BadUrl {
        url: location.to_owned(),
        reason: format!("redirect from {from}: {e}"),
    })
}

/// The WebSocket URL a redirect from `from` to `location` leads to.
pub(crate) fn redirected(from: &Url, location: &str) -> Result<Url, ClientError> {
    let bad = |reason: String| ClientError::BadUrl {
        url: location.to_owned(),
        reason,
    };
    let next = joined(from, location)?;
    let next = match next.scheme() {
        "ws" | "wss" => next,
        _ => ws_url(&next)?,
    };
    if from.scheme() == "wss" && next.scheme() != "wss" {
        return Err(bad(format!(
            "redirect from {from} gives up TLS; refused (the token would cross the network in clear)"
        )));
    }
    Ok(next)
}

/// The HTTP URL a redirect from `from` to `location` leads to: `http` or `https` only, no
/// credentials, never from `https` to `http`.
pub(crate) fn http_redirected(from: &Url, location: &str) -> Result<Url, ClientError> {
    let bad = |reason: String| ClientError::BadUrl {
        url: location.to_owned(),
        reason,
    };
    let next = joined(from, location)?;
    if !matches!(next.scheme(), "http" | "https") {
        return Err(bad(format!(
            "redirect from {from} to a {}: URL; refused",
            next.scheme()
        )));
    }
    if !next.username().is_empty() || next.password().is_some() {
        return Err(bad(format!(
            "redirect from {from} to a URL with credentials; refused"
        )));
    }
    if from.scheme() == "https" && next.scheme() != "https" {
        return Err(bad(format!(
            "redirect from {from} gives up TLS; refused (the token would cross the network in clear)"
        )));
    }
    Ok(next)
}

enum Handshake {
    Open(Box<Socket>),
    Redirect(String),
}

async fn handshake(
    client: &Client,
    url: &Url,
    max_message: usize,
) -> Result<Handshake, ClientError> {
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| ClientError::BadUrl {
            url: url.to_string(),
            reason: e.to_string(),
        })?;
    if let Some(auth) = client.auth() {
        request.headers_mut().insert(AUTHORIZATION, auth.clone());
    }
    let config = WebSocketConfig::default()
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message));
    let connector = match url.scheme() {
        "wss" => client
            .stream_tls()
            .map(tokio_tungstenite::Connector::Rustls),
        _ => None,
    };
    let handshake =
        tokio_tungstenite::connect_async_tls_with_config(request, Some(config), true, connector);
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Err(_) => Err(ClientError::Unreachable {
            url: url.to_string(),
            source: format!(
                "no WebSocket handshake within {}s",
                HANDSHAKE_TIMEOUT.as_secs()
            )
            .into(),
        }),
        Ok(Err(WsError::Http(response))) => {
            let status = response.status().as_u16();
            let location = response
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|l| l.to_str().ok());
            match (status, location) {
                (307 | 308, Some(location)) => Ok(Handshake::Redirect(location.to_owned())),
                _ => {
                    let body = response.body().as_deref().unwrap_or_default();
                    Err(api_error(response.status(), body))
                }
            }
        }
        Ok(Err(e)) => Err(client.transport_error(url, Box::new(e))),
        Ok(Ok((socket, _))) => Ok(Handshake::Open(Box::new(socket))),
    }
}

/// Reads until an event, a drop, or a message that breaks the protocol.
async fn read(socket: &mut Socket) -> Read {
    let mut pinged = false;
    loop {
        match tokio::time::timeout(SILENCE, socket.next()).await {
            Err(_) if !pinged => {
                if socket
                    .send(Message::Ping(Default::default()))
                    .await
                    .is_err()
                {
                    return Read::Dropped;
                }
                pinged = true;
            }
            Err(_) => return Read::Dropped,
            Ok(None) | Ok(Some(Err(_))) => return Read::Dropped,
            Ok(Some(Ok(message))) => match message {
                Message::Text(text) => {
                    return match serde_json::from_str::<FollowEvent>(&text) {
                        Ok(event) => Read::Event(Box::new(event)),
                        Err(e) => Read::Bad(ClientError::Decode {
                            url: "the log stream".into(),
                            source: Box::new(e),
                        }),
                    };
                }
                Message::Close(_) => return Read::Dropped,
                Message::Ping(_) | Message::Pong(_) | Message::Binary(_) | Message::Frame(_) => {
                    pinged = false;
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::Millis;

    #[test]
    fn http_redirects_stay_http_keep_tls_and_carry_no_credentials() {
        let from = Url::parse("http://lab1:7780/api/v1/leases/3/power").expect("valid");
        let next = http_redirected(&from, "http://lab2:7781/api/v1/leases/3/power").expect("valid");
        assert_eq!(next.as_str(), "http://lab2:7781/api/v1/leases/3/power");
        let relative = http_redirected(&from, "/api/v1/leases/3/flash").expect("valid");
        assert_eq!(relative.as_str(), "http://lab1:7780/api/v1/leases/3/flash");
        let tls = Url::parse("https://lab1/api/v1/leases/3/power").expect("valid");
        let refused = http_redirected(&tls, "http://lab2/x").expect_err("refused");
        assert!(refused.to_string().contains("gives up TLS"), "{refused}");
        assert!(http_redirected(&from, "ws://lab2/x").is_err());
        assert!(http_redirected(&from, "http://u:p@lab2/x").is_err());
    }

    #[test]
    fn redirects_keep_the_path_become_websocket_urls_and_never_drop_tls() {
        let from = Url::parse("ws://lab1:7780/api/v1/leases/3/console?write=true").expect("valid");
        let next = redirected(&from, "http://lab2:7781/api/v1/leases/3/console?write=true")
            .expect("valid");
        assert_eq!(
            next.as_str(),
            "ws://lab2:7781/api/v1/leases/3/console?write=true"
        );
        let relative = redirected(&from, "/api/v1/leases/3/tcp/22").expect("valid");
        assert_eq!(relative.as_str(), "ws://lab1:7780/api/v1/leases/3/tcp/22");
        let tls = Url::parse("wss://lab1/api/v1/leases/3/console").expect("valid");
        let up = redirected(&tls, "https://lab2/api/v1/leases/3/console").expect("valid");
        assert_eq!(up.scheme(), "wss");
        for down in ["http://lab2/x", "ws://lab2/x"] {
            let refused = redirected(&tls, down).expect_err("refused").to_string();
            assert!(refused.contains("gives up TLS"), "{refused}");
        }
        assert!(redirected(&from, "ftp://lab2/x").is_err());
    }
    use proto::api::JobView;
    use proto::log::{LogKind, LogRecord};

    fn log(seq: u64) -> FollowEvent {
        FollowEvent::Log {
            record: LogRecord {
                seq: Seq(seq),
                at: Millis(seq),
                kind: LogKind::Console,
                text: format!("line {seq}"),
            },
        }
    }

    fn seqs(events: &[FollowEvent]) -> Vec<u64> {
        events
            .iter()
            .filter_map(|e| match e {
                FollowEvent::Log { record } => Some(record.seq.0),
                _ => None,
            })
            .collect()
    }

    pub(crate) fn job_view() -> JobView {
        JobView {
            id: JobId(7),
            name: "smoke".into(),
            device_type: "qemu".into(),
            tags: vec![],
            priority: 50,
            visibility: proto::Visibility::Public,
            owner: "ci".into(),
            owner_id: proto::PrincipalId(1),
            state: proto::JobState::Finished,
            outcome: Some(proto::Outcome::Passed),
            reason: String::new(),
            device: Some("qemu-01".into()),
            submitted_at: Millis(1),
            started_at: None,
            finished_at: None,
            position: None,
            estimated_start: None,
            retry: proto::RetryPolicy::Never,
            retry_of: None,
            retried_as: None,
            avoid_devices: Vec::new(),
            group: None,
            warnings: vec![],
        }
    }

    #[test]
    fn replayed_records_after_a_reconnect_are_delivered_once() {
        let mut cursor = FollowCursor::new(Seq(0));
        let mut seen = Vec::new();
        // First connection: 1..=3, then it drops.
        for s in 1..=3 {
            seen.extend(cursor.accept(log(s)));
        }
        assert_eq!(cursor.last(), Seq(3));
        // The server replays from an older point on the second connection.
        for s in [2, 3, 4, 5] {
            seen.extend(cursor.accept(log(s)));
        }
        assert_eq!(seqs(&seen), vec![1, 2, 3, 4, 5]);
    }

    #[test]
    fn nothing_is_delivered_after_end() {
        let mut cursor = FollowCursor::new(Seq(0));
        assert!(cursor.accept(log(1)).is_some());
        assert!(
            cursor
                .accept(FollowEvent::Job { job: job_view() })
                .is_some()
        );
        assert!(
            cursor
                .accept(FollowEvent::End { job: job_view() })
                .is_some()
        );
        assert!(cursor.is_ended());
        assert!(cursor.accept(log(2)).is_none());
        assert!(
            cursor
                .accept(FollowEvent::End { job: job_view() })
                .is_none()
        );
    }

    #[test]
    fn a_starting_cursor_skips_older_records() {
        let mut cursor = FollowCursor::new(Seq(10));
        assert!(cursor.accept(log(10)).is_none());
        assert!(cursor.accept(log(11)).is_some());
    }

    #[test]
    fn backoff_doubles_to_a_cap_and_starts_over() {
        let mut b = Backoff::new();
        let waits: Vec<Duration> = (0..8).map(|_| b.delay()).collect();
        assert_eq!(waits[0], FIRST_RETRY);
        assert_eq!(waits[1], FIRST_RETRY * 2);
        assert!(waits.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(*waits.last().expect("eight waits"), MAX_RETRY);
        b.reset();
        assert_eq!(b.delay(), FIRST_RETRY);
    }

    #[test]
    fn http_urls_become_ws_urls() {
        let u = |s: &str| Url::parse(s).expect("valid url");
        assert_eq!(
            ws_url(&u("http://lab:8080/api/v1/jobs/1/logs/follow"))
                .expect("converts")
                .as_str(),
            "ws://lab:8080/api/v1/jobs/1/logs/follow"
        );
        assert_eq!(
            ws_url(&u("https://lab/x")).expect("converts").as_str(),
            "wss://lab/x"
        );
    }

    #[test]
    fn the_follow_url_resumes_after_the_last_record() {
        let client = Client::new("http://lab:8080/pre", None).expect("valid");
        let mut f = client.follow(JobId(9), Seq(0));
        f.cursor.accept(log(41));
        assert_eq!(
            f.url().expect("url").as_str(),
            "ws://lab:8080/pre/api/v1/jobs/9/logs/follow?cursor=41"
        );
    }
}
