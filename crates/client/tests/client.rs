//! The client against small real servers started in the test: raw HTTP/1.1 answers written
//! on a `TcpListener`, and a real WebSocket server (tokio-tungstenite) for `follow`.

use dutlab_client::{Client, ClientError};
use futures_util::SinkExt;
use proto::api::{FollowEvent, JobView, SubmitJob};
use proto::log::{LogKind, LogRecord};
use proto::{JobId, JobState, Millis, Outcome, Seq};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

const TOKEN: &str = "dutlab_s3cr3t-token-value";

/// Every test is bounded: a hang is a failure, not a stuck CI job.
const LIMIT: Duration = Duration::from_secs(20);

/// One HTTP request as the server read it.
#[derive(Debug)]
struct Seen {
    /// `GET /api/v1/whoami HTTP/1.1`
    line: String,
    /// Lower-cased names.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

async fn read_request(stream: &mut TcpStream) -> Seen {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = stream.read(&mut chunk).await.expect("read request");
        assert!(n > 0, "client closed before the request ended");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).expect("ascii head");
    let mut lines = head.split("\r\n");
    let line = lines.next().expect("request line").to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .map(|(_, v)| v.parse().expect("content-length"))
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut chunk).await.expect("read body");
        assert!(n > 0, "client closed before the body ended");
        body.extend_from_slice(&chunk[..n]);
    }
    Seen {
        line,
        headers,
        body,
    }
}

/// Answers one request with `status` and `body`, and returns what was asked.
async fn answer_once(listener: &TcpListener, status: &str, body: &str) -> Seen {
    let (mut stream, _) = listener.accept().await.expect("accept");
    let seen = read_request(&mut stream).await;
    let answer = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(answer.as_bytes())
        .await
        .expect("write answer");
    let _ = stream.shutdown().await;
    seen
}

async fn listener() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    (listener, url)
}

fn job_view(state: JobState, outcome: Option<Outcome>) -> JobView {
    JobView {
        id: JobId(7),
        name: "smoke".into(),
        device_type: "qemu-x86_64".into(),
        tags: vec![],
        priority: 50,
        visibility: proto::Visibility::Public,
        owner: "ci".into(),
        owner_id: proto::PrincipalId(1),
        state,
        outcome,
        reason: String::new(),
        device: Some("qemu-01".into()),
        submitted_at: Millis(1_000),
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

fn log(seq: u64) -> FollowEvent {
    FollowEvent::Log {
        record: LogRecord {
            seq: Seq(seq),
            at: Millis(seq),
            kind: LogKind::Console,
            text: format!("line {seq}\n"),
        },
    }
}

#[tokio::test]
async fn the_token_goes_as_a_bearer_header_and_answers_are_typed() {
    tokio::time::timeout(LIMIT, async {
        let (listener, url) = listener().await;
        let client = Client::new(&url, Some(TOKEN.into())).expect("client");
        let server = tokio::spawn(async move {
            answer_once(&listener, "200 OK", r#"{"name":"ci","role":"user"}"#).await
        });
        let who = client.whoami().await.expect("whoami");
        assert_eq!(who.name, "ci");
        assert_eq!(who.role, proto::Role::User);
        let seen = server.await.expect("server");
        assert_eq!(seen.line, "GET /api/v1/whoami HTTP/1.1");
        assert_eq!(
            seen.header("authorization"),
            Some(format!("Bearer {TOKEN}").as_str())
        );
    })
    .await
    .expect("in time");
}

#[tokio::test]
async fn the_token_never_appears_in_debug_output() {
    let client = Client::new("http://127.0.0.1:9", Some(TOKEN.into())).expect("client");
    let debug = format!("{client:?}");
    assert!(!debug.contains(TOKEN), "{debug}");
    assert!(!debug.contains("s3cr3t"), "{debug}");
    assert!(debug.contains("127.0.0.1:9"), "{debug}");
    let follow = client.follow(JobId(1), Seq(0));
    assert!(!format!("{follow:?}").contains("s3cr3t"));
}

#[tokio::test]
async fn an_api_error_body_becomes_client_error_api() {
    tokio::time::timeout(LIMIT, async {
        let (listener, url) = listener().await;
        let client = Client::new(&url, Some(TOKEN.into())).expect("client");
        let server = tokio::spawn(async move {
            answer_once(
                &listener,
                "400 Bad Request",
                r#"{"error":"job.yaml: device_type: no device of type 'rpi9'","known_device_types":["qemu-x86_64","bbb"]}"#,
            )
            .await
        });
        let submit = SubmitJob {
            definition: "job_name: x\n".into(),
            file_name: Some("job.yaml".into()),
            wait_for_device: false,
            retry: proto::RetryPolicy::Never,
        };
        let err = client.submit_job(&submit).await.expect_err("refused");
        let seen = server.await.expect("server");
        assert_eq!(seen.line, "POST /api/v1/jobs HTTP/1.1");
        assert_eq!(seen.header("content-type"), Some("application/json"));
        let sent: SubmitJob = serde_json::from_slice(&seen.body).expect("json body");
        assert_eq!(sent, submit);
        match &err {
            ClientError::Api {
                status,
                message,
                known_device_types,
            } => {
                assert_eq!(*status, 400);
                assert_eq!(message, "job.yaml: device_type: no device of type 'rpi9'");
                assert_eq!(known_device_types, &["qemu-x86_64", "bbb"]);
            }
            other => panic!("expected Api, got {other:?}"),
        }
        for text in [err.to_string(), format!("{err:?}")] {
            assert!(!text.contains("s3cr3t"), "{text}");
        }
    })
    .await
    .expect("in time");
}

#[tokio::test]
async fn a_bare_401_is_an_auth_error() {
    tokio::time::timeout(LIMIT, async {
        let (listener, url) = listener().await;
        let client = Client::new(&url, None).expect("client");
        let server =
            tokio::spawn(async move { answer_once(&listener, "401 Unauthorized", "").await });
        let err = client.list_jobs().await.expect_err("refused");
        let seen = server.await.expect("server");
        assert_eq!(seen.header("authorization"), None);
        assert!(err.is_auth(), "{err:?}");
        assert_eq!(err.status(), Some(401));
    })
    .await
    .expect("in time");
}

#[tokio::test]
async fn queries_and_path_segments_are_encoded() {
    tokio::time::timeout(LIMIT, async {
        let (listener, url) = listener().await;
        let client = Client::new(&url, Some(TOKEN.into())).expect("client");
        let server = tokio::spawn(async move {
            let first = answer_once(
                &listener,
                "200 OK",
                r#"{"records":[{"seq":6,"at":2,"kind":"note","text":"hi"}],"cursor":6,"complete":true}"#,
            )
            .await;
            let second = answer_once(
                &listener,
                "200 OK",
                r#"{"id":"ab/c","name":"n","role":"agent","created_at":1,"revoked_at":2}"#,
            )
            .await;
            let third = answer_once(&listener, "200 OK", "[]").await;
            (first, second, third)
        });
        let page = client.logs(JobId(7), Seq(5), 100).await.expect("logs");
        assert_eq!(page.cursor, Seq(6));
        assert!(page.complete);
        assert_eq!(page.records[0].text, "hi");
        let revoked = client.revoke_token("ab/c").await.expect("revoke");
        assert_eq!(revoked.revoked_at, Some(Millis(2)));
        let jobs = client
            .list_jobs_filtered(Some(JobState::Running), Some(3))
            .await
            .expect("jobs");
        assert!(jobs.is_empty());
        let (first, second, third) = server.await.expect("server");
        assert_eq!(third.line, "GET /api/v1/jobs?state=running&limit=3 HTTP/1.1");
        assert_eq!(
            first.line,
            "GET /api/v1/jobs/7/logs?cursor=5&limit=100 HTTP/1.1"
        );
        assert_eq!(second.line, "DELETE /api/v1/tokens/ab%2Fc HTTP/1.1");
    })
    .await
    .expect("in time");
}

#[tokio::test]
async fn a_bad_answer_is_a_decode_error() {
    tokio::time::timeout(LIMIT, async {
        let (listener, url) = listener().await;
        let client = Client::new(&url, Some(TOKEN.into())).expect("client");
        let server =
            tokio::spawn(async move { answer_once(&listener, "200 OK", "[{\"nope\"").await });
        let err = client.devices().await.expect_err("bad json");
        server.await.expect("server");
        assert!(matches!(err, ClientError::Decode { .. }), "{err:?}");
    })
    .await
    .expect("in time");
}

#[tokio::test]
async fn a_closed_port_is_unreachable() {
    tokio::time::timeout(LIMIT, async {
        let (listener, url) = listener().await;
        drop(listener);
        let client = Client::new(&url, Some(TOKEN.into())).expect("client");
        let err = client.agents().await.expect_err("nobody listens");
        assert!(
            matches!(&err, ClientError::Unreachable { url: u, .. } if u.starts_with(&url)),
            "{err:?}"
        );
        assert!(err.is_transient());
    })
    .await
    .expect("in time");
}

/// Request URI and Authorization header of each WebSocket upgrade.
type Upgrades = Arc<Mutex<Vec<(String, Option<String>)>>>;

/// Accepts one WebSocket connection, recording the request URI and Authorization header.
// The callback's error type is tungstenite's, not ours.
#[allow(clippy::result_large_err)]
async fn accept_ws(
    listener: &TcpListener,
    seen: &Upgrades,
) -> tokio_tungstenite::WebSocketStream<TcpStream> {
    let (stream, _) = listener.accept().await.expect("accept");
    let seen = Arc::clone(seen);
    tokio_tungstenite::accept_hdr_async(stream, move |req: &Request, resp: Response| {
        let auth = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        seen.lock()
            .expect("lock")
            .push((req.uri().to_string(), auth));
        Ok(resp)
    })
    .await
    .expect("handshake")
}

async fn send(ws: &mut tokio_tungstenite::WebSocketStream<TcpStream>, event: &FollowEvent) {
    let text = serde_json::to_string(event).expect("serialise");
    ws.send(Message::text(text)).await.expect("send");
}

#[tokio::test]
async fn follow_resumes_after_a_drop_and_delivers_each_record_once() {
    tokio::time::timeout(LIMIT, async {
        let (listener, url) = listener().await;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let server_seen = Arc::clone(&seen);
        let server = tokio::spawn(async move {
            // First connection: three records, then the TCP connection just vanishes.
            let mut ws = accept_ws(&listener, &server_seen).await;
            for s in 1..=3 {
                send(&mut ws, &log(s)).await;
            }
            ws.flush().await.expect("flush");
            drop(ws);
            // Second connection: replays from older records (as a server may), then ends.
            let mut ws = accept_ws(&listener, &server_seen).await;
            send(
                &mut ws,
                &FollowEvent::Job {
                    job: job_view(JobState::Running, None),
                },
            )
            .await;
            for s in 2..=5 {
                send(&mut ws, &log(s)).await;
            }
            let end = FollowEvent::End {
                job: job_view(JobState::Finished, Some(Outcome::Passed)),
            };
            send(&mut ws, &end).await;
            // Anything after End must not be delivered.
            let _ = ws
                .send(Message::text(serde_json::to_string(&log(6)).expect("json")))
                .await;
            let _ = ws.close(None).await;
        });
        let client = Client::new(&url, Some(TOKEN.into())).expect("client");
        let mut follow = client.follow(JobId(7), Seq(0));
        let mut events = Vec::new();
        while let Some(event) = follow.next().await {
            events.push(event.expect("no error"));
        }
        server.await.expect("server");
        let logs: Vec<u64> = events
            .iter()
            .filter_map(|e| match e {
                FollowEvent::Log { record } => Some(record.seq.0),
                _ => None,
            })
            .collect();
        assert_eq!(logs, vec![1, 2, 3, 4, 5]);
        assert!(matches!(events.last(), Some(FollowEvent::End { .. })));
        assert_eq!(
            events
                .iter()
                .filter(|e| matches!(e, FollowEvent::Job { .. }))
                .count(),
            1
        );
        let seen = seen.lock().expect("lock").clone();
        assert_eq!(
            seen.iter().map(|(uri, _)| uri.as_str()).collect::<Vec<_>>(),
            vec![
                "/api/v1/jobs/7/logs/follow?cursor=0",
                "/api/v1/jobs/7/logs/follow?cursor=3"
            ]
        );
        for (_, auth) in &seen {
            assert_eq!(auth.as_deref(), Some(format!("Bearer {TOKEN}").as_str()));
        }
        assert!(follow.next().await.is_none());
    })
    .await
    .expect("in time");
}

#[tokio::test]
async fn follow_refused_at_the_upgrade_ends_with_the_api_error() {
    tokio::time::timeout(LIMIT, async {
        let (listener, url) = listener().await;
        let server = tokio::spawn(async move {
            answer_once(
                &listener,
                "403 Forbidden",
                r#"{"error":"job 7 is private"}"#,
            )
            .await
        });
        let client = Client::new(&url, Some(TOKEN.into())).expect("client");
        let mut follow = client.follow(JobId(7), Seq(0));
        let err = follow.next().await.expect("an item").expect_err("refused");
        let seen = server.await.expect("server");
        assert!(
            seen.line
                .starts_with("GET /api/v1/jobs/7/logs/follow?cursor=0 ")
        );
        assert_eq!(err.status(), Some(403), "{err:?}");
        assert_eq!(
            err.to_string(),
            "the controller answered 403: job 7 is private"
        );
        assert!(follow.next().await.is_none());
    })
    .await
    .expect("in time");
}

#[tokio::test]
async fn follow_gives_up_when_connects_keep_failing() {
    tokio::time::timeout(LIMIT, async {
        let (listener, url) = listener().await;
        drop(listener);
        let client = Client::new(&url, None).expect("client");
        let mut follow = client
            .follow(JobId(1), Seq(0))
            .give_up_after(Duration::from_millis(300));
        let err = follow
            .next()
            .await
            .expect("an item")
            .expect_err("unreachable");
        assert!(matches!(err, ClientError::Unreachable { .. }), "{err:?}");
        assert!(follow.next().await.is_none());
    })
    .await
    .expect("in time");
}

/// A TLS server on loopback with a certificate from `tls::pki`: accepts connections and
/// completes handshakes (the client refuses them).
async fn tls_server(dir: &std::path::Path) -> (String, tls::pki::LabPki) {
    let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    let made = tls::pki::init(dir, &names).expect("pki");
    let config = tls::server_config(&made.server_cert, &made.server_key).expect("config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let (listener, url) = listener().await;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = acceptor.accept(tcp).await;
            });
        }
    });
    (url.replace("http://", "https://"), made)
}

#[tokio::test]
async fn a_wrong_pin_or_ca_is_refused_for_rest_and_follow() {
    tokio::time::timeout(LIMIT, async {
        let dir = tempfile::tempdir().expect("temp dir");
        let (url, made) = tls_server(&dir.path().join("right")).await;
        let other = tls::pki::init(&dir.path().join("other"), &["localhost".into()]).expect("pki");
        let wrong_pin = tls::Trust::Pin(other.server_fingerprint);
        let wrong_ca = tls::Trust::CaFile(other.ca_cert.clone());
        for trust in [wrong_pin, wrong_ca] {
            let client = Client::with_trust(&url, None, trust.clone()).expect("client");
            let err = client.healthz().await.expect_err("refused");
            assert!(matches!(err, ClientError::Tls { .. }), "{err:?}");
            let text = err.to_string();
            assert!(text.contains(&url), "{text}");
            match &trust {
                tls::Trust::Pin(pin) => {
                    assert!(text.contains(&pin.to_string()), "{text}");
                    assert!(
                        text.contains(&made.server_fingerprint.to_string()),
                        "{text}"
                    );
                }
                _ => assert!(text.contains("not signed by"), "{text}"),
            }
            let mut follow = client.follow(JobId(1), Seq(0));
            let err = follow
                .next()
                .await
                .expect("an item")
                .expect_err("wss refused");
            assert!(matches!(err, ClientError::Tls { .. }), "{err:?}");
            assert!(follow.next().await.is_none());
        }
    })
    .await
    .expect("in time");
}
