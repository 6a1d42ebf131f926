//! The controller's listener: TCP accept, optional TLS, HTTP/1.1 with upgrades (WebSocket),
//! under limits that slow or hostile clients cannot outlast.
//!
//! ```text
//!  accept ──(slot: one of max_connections, else one of HEALTH_RESERVE)──> TLS handshake
//!         (handshake_timeout) ──> hyper http1 (header_timeout per request head) ──> router
//! ```
//!
//! Invariants:
//! - Every accepted connection holds a slot until its socket closes, also after a WebSocket
//!   upgrade (the slot lives in the I/O object the upgraded socket owns).
//! - No connection is accepted without a slot: when every slot is taken, new connections wait
//!   in the kernel's backlog.
//! - When the `max_connections` slots are taken, a few more connections are accepted on
//!   reserve slots: they answer `/healthz` only (503 for anything else), one request each,
//!   with a short header timeout, so monitors see the controller alive while the cap holds.
//! - A request head (also the next one on a kept-alive connection) must be complete within
//!   `header_timeout`; an idle kept-alive connection is therefore closed after that time too.
//!   A TLS handshake must end within `handshake_timeout`.

use crate::api::healthz;
use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// Connections accepted beyond the cap for `/healthz` only.
pub const HEALTH_RESERVE: usize = 16;

/// Header timeout of a reserve connection (it serves one small request).
const RESERVE_HEADER_TIMEOUT: Duration = Duration::from_secs(2);

/// How long shutdown waits for requests in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The listener's limits and its TLS configuration.
#[derive(Debug, Clone)]
pub struct Limits {
    /// `None`: plain HTTP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// A request head must be complete within this time.
    pub header_timeout: Duration,
    /// A TLS handshake must end within this time.
    pub handshake_timeout: Duration,
    /// Connections served at once (agents, followers, requests).
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            tls: None,
            header_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            max_connections: 16_384,
        }
    }
}

/// Which pool a connection's slot came from.
enum Pool {
    Main,
    Reserve,
}

/// A taken slot; freed when the connection's I/O object is dropped.
struct Slot {
    pool: Pool,
    _permit: OwnedSemaphorePermit,
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// A connection's byte stream with the slot it holds.
struct Conn {
    stream: Stream,
    _slot: Slot,
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.stream {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// The router of one connection: every request carries the peer's address
/// (`axum::extract::ConnectInfo`), which the audit records as where an action came from.
#[derive(Clone)]
struct WithPeer {
    inner: TowerToHyperService<Router>,
    peer: std::net::SocketAddr,
}

impl hyper::service::Service<hyper::Request<hyper::body::Incoming>> for WithPeer {
    type Response = <TowerToHyperService<Router> as hyper::service::Service<
        hyper::Request<hyper::body::Incoming>,
    >>::Response;
    type Error = <TowerToHyperService<Router> as hyper::service::Service<
        hyper::Request<hyper::body::Incoming>,
    >>::Error;
    type Future = <TowerToHyperService<Router> as hyper::service::Service<
        hyper::Request<hyper::body::Incoming>,
    >>::Future;

    fn call(&self, mut request: hyper::Request<hyper::body::Incoming>) -> Self::Future {
        request
            .extensions_mut()
            .insert(axum::extract::ConnectInfo(self.peer));
        self.inner.call(request)
    }
}

/// What a reserve connection answers to anything but `/healthz`.
async fn at_cap() -> impl IntoResponse {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(proto::api::ApiError::new(
            "the controller is at its connection cap; try again later",
        )),
    )
}

/// Waits for a free slot: a main one if any, else a reserve one. `None` only if a pool was
/// closed (they never are).
async fn take_slot(main: &Arc<Semaphore>, reserve: &Arc<Semaphore>) -> Option<Slot> {
    let slot = |pool| {
        move |permit| Slot {
            pool,
            _permit: permit,
        }
    };
    if let Ok(permit) = main.clone().try_acquire_owned() {
        return Some(slot(Pool::Main)(permit));
    }
    tokio::select! {
        permit = main.clone().acquire_owned() => permit.ok().map(slot(Pool::Main)),
        permit = reserve.clone().acquire_owned() => permit.ok().map(slot(Pool::Reserve)),
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, then waits a short grace for requests
/// in flight.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let main = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let reserve = Arc::new(Semaphore::new(HEALTH_RESERVE));
    let acceptor = limits.tls.clone().map(TlsAcceptor::from);
    let full = TowerToHyperService::new(app);
    let health = TowerToHyperService::new(
        Router::new()
            .route("/healthz", get(healthz))
            .fallback(at_cap),
    );
    // Shutdown: `closing` tells connections to finish their request and close; every
    // connection task holds an `alive` sender until its HTTP part is over.
    let (closing_tx, closing) = tokio::sync::watch::channel(false);
    let (alive, mut all_done) = tokio::sync::mpsc::channel::<()>(1);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            () = &mut shutdown => break,
            slot = take_slot(&main, &reserve) => match slot {
                Some(slot) => slot,
                None => break,
            },
        };
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors or a connection reset before accept: go on.
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // A main slot may have been freed while this one waited on the reserve.
        let slot = match slot.pool {
            Pool::Reserve => match main.clone().try_acquire_owned() {
                Ok(permit) => Slot {
                    pool: Pool::Main,
                    _permit: permit,
                },
                Err(_) => slot,
            },
            Pool::Main => slot,
        };
        // Small control messages (StartJob after a LogAcked) must not wait for delayed ACKs.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("TCP_NODELAY: {e}");
        }
        let (service, header_timeout, keep_alive) = match slot.pool {
            Pool::Main => (
                WithPeer {
                    inner: full.clone(),
                    peer,
                },
                limits.header_timeout,
                true,
            ),
            Pool::Reserve => (
                WithPeer {
                    inner: health.clone(),
                    peer,
                },
                RESERVE_HEADER_TIMEOUT.min(limits.header_timeout),
                false,
            ),
        };
        let acceptor = acceptor.clone();
        let handshake_timeout = limits.handshake_timeout;
        let mut closing = closing.clone();
        let alive = alive.clone();
        tokio::spawn(async move {
            let _alive = alive;
            let stream = match acceptor {
                None => Stream::Plain(tcp),
                Some(acceptor) => {
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => Stream::Tls(Box::new(tls)),
                        Ok(Err(e)) => {
                            tracing::debug!("TLS handshake with {peer}: {e}");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(
                                "TLS handshake with {peer}: not done within {handshake_timeout:?}"
                            );
                            return;
                        }
                    }
                }
            };
            let io = TokioIo::new(Conn {
                stream,
                _slot: slot,
            });
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .keep_alive(keep_alive);
            let connection = http.serve_connection(io, service).with_upgrades();
            let mut connection = std::pin::pin!(connection);
            let served = tokio::select! {
                served = connection.as_mut() => served,
                _ = async { closing.wait_for(|closing| *closing).await.map(drop) } => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = served {
                tracing::debug!("connection from {peer}: {e}");
            }
        });
    }
    drop(listener);
    let _ = closing_tx.send(true);
    drop(alive);
    if tokio::time::timeout(SHUTDOWN_GRACE, all_done.recv())
        .await
        .is_err()
    {
        tracing::info!("requests still in flight after {SHUTDOWN_GRACE:?}; stopping anyway");
    }
    Ok(())
}
