//! Streams of a person's lease: the device's console and TCP connections to the DUT, each a
//! WebSocket of binary messages (an empty one: end of stream in that direction; the close
//! frame says why the stream ended).
//!
//! Invariants:
//! - Bytes are read from the local side only as fast as the controller takes them (a
//!   WebSocket write completes first), so a slow DUT slows this reader, not memory.
//! - Every message the controller sends is at most [`MAX_MESSAGE`] bytes (refused otherwise).

use crate::follow::{Socket, connect_ws, ws_url};
use crate::{Client, ClientError};
use futures_util::{SinkExt, StreamExt};
use proto::PersonLeaseId;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

/// Largest message of a stream either way.
pub const MAX_MESSAGE: usize = 1 << 20;
/// Bytes read from the local side per message.
const CHUNK: usize = 64 << 10;

/// What a stream reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The console; typing only with `write`.
    Console { write: bool },
    /// A TCP port of the DUT.
    Tcp(u16),
}

/// An open stream.
pub struct StreamSocket {
    socket: Socket,
}

/// How a stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEnd {
    /// Closed by the controller, with its reason (empty if none).
    Closed(String),
    /// The connection broke.
    Dropped(String),
}

impl std::fmt::Display for StreamEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StreamEnd::Closed(r) if r.is_empty() => f.write_str("the stream was closed"),
            StreamEnd::Closed(r) => write!(f, "the stream was closed: {r}"),
            StreamEnd::Dropped(r) => write!(f, "the connection broke: {r}"),
        }
    }
}

/// One thing read from a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    Bytes(Vec<u8>),
    /// End of stream from the device's side.
    Eof,
    End(StreamEnd),
}

impl Client {
    /// Opens a stream of lease `lease`. A refusal (403, 410, the agent's 502 ...) is
    /// [`ClientError::Api`] with the controller's reason.
    pub async fn open_stream(
        &self,
        lease: PersonLeaseId,
        target: Target,
    ) -> Result<StreamSocket, ClientError> {
        let id = lease.to_string();
        let http = match target {
            Target::Console { .. } => self.api_endpoint(&["leases", &id, "console"]),
            Target::Tcp(port) => self.api_endpoint(&["leases", &id, "tcp", &port.to_string()]),
        };
        let mut url = ws_url(&http)?;
        if let Target::Console { write: true } = target {
            url.query_pairs_mut().append_pair("write", "true");
        }
        let socket = connect_ws(self, &url, MAX_MESSAGE).await?;
        Ok(StreamSocket { socket })
    }
}

impl StreamSocket {
    /// Sends bytes (empty: end of stream toward the device).
    pub async fn send(&mut self, bytes: Vec<u8>) -> Result<(), StreamEnd> {
        self.socket
            .send(Message::Binary(bytes.into()))
            .await
            .map_err(|e| StreamEnd::Dropped(e.to_string()))
    }

    /// The next bytes, end of stream, or the end.
    pub async fn next(&mut self) -> Incoming {
        next(&mut self.socket).await
    }

    /// Closes the stream from this side.
    pub async fn close(mut self) {
        let _ = self.socket.close(None).await;
    }

    /// Copies `reader` to the stream and the stream to `writer` until the stream ends (the
    /// device side's end of stream shuts `writer` down; the local end of stream is passed
    /// on and the stream stays open for the other direction).
    pub async fn carry<R, W>(self, mut reader: R, mut writer: W) -> StreamEnd
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let (mut sink, mut source) = self.socket.split();
        let up = async {
            let mut buf = vec![0u8; CHUNK];
            loop {
                let n = match reader.read(&mut buf).await {
                    Ok(n) => n,
                    Err(e) => return StreamEnd::Dropped(format!("reading locally: {e}")),
                };
                if let Err(e) = sink.send(Message::Binary(buf[..n].to_vec().into())).await {
                    return StreamEnd::Dropped(e.to_string());
                }
                if n == 0 {
                    // Keep the socket open for the other direction.
                    return std::future::pending().await;
                }
            }
        };
        let down = async {
            loop {
                match next(&mut source).await {
                    Incoming::Bytes(bytes) => {
                        if let Err(e) = writer.write_all(&bytes).await {
                            return StreamEnd::Dropped(format!("writing locally: {e}"));
                        }
                        let _ = writer.flush().await;
                    }
                    Incoming::Eof => {
                        let _ = writer.shutdown().await;
                    }
                    Incoming::End(end) => return end,
                }
            }
        };
        tokio::select! {
            end = up => end,
            end = down => end,
        }
    }
}

async fn next<S>(socket: &mut S) -> Incoming
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match socket.next().await {
            None => return Incoming::End(StreamEnd::Dropped("the connection closed".into())),
            Some(Err(e)) => return Incoming::End(StreamEnd::Dropped(e.to_string())),
            Some(Ok(Message::Binary(bytes))) if bytes.is_empty() => return Incoming::Eof,
            Some(Ok(Message::Binary(bytes))) => return Incoming::Bytes(bytes.to_vec()),
            Some(Ok(Message::Close(frame))) => {
                let reason = frame.map(|f| f.reason.to_string()).unwrap_or_default();
                return Incoming::End(StreamEnd::Closed(reason));
            }
            Some(Ok(_)) => {}
        }
    }
}
