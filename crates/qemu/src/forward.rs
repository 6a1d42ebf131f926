//! Ports of a running DUT reachable from the host, on demand: QEMU's user-mode network
//! forwards a port on 127.0.0.1 to one TCP port of the guest (`hostfwd_add` through a second
//! QMP monitor of this launch, `forward.sock`, so a forward never waits for the rig's owner).
//!
//! ```text
//!  launch ─> PortForwards { 22 -> 127.0.0.1:P (from the command line) }
//!  reach(8080) ─> known? ─yes─> its address
//!                  └─no─> free loopback port Q ─> HMP `hostfwd_add dutlab-net0 tcp:127.0.0.1:Q-:8080`
//!                         ─> remembered ─> 127.0.0.1:Q
//!  QEMU exits ─> the monitor is gone ─> reach fails
//! ```
//!
//! Invariants:
//! - Every forward goes from 127.0.0.1 to the guest's own address (the rule names no guest
//!   address, so QEMU uses the guest's, 10.0.2.15) and a guest port: an address answered here
//!   leads into this DUT only, never to another host or another port of the agent's host.
//!   The network stays `restrict=on`: the guest reaches nothing through it.
//! - A port the kernel handed out is bound by QEMU before its address is answered; when
//!   another process took it first, `hostfwd_add` fails and another port is tried.
//! - At most [`MAX_FORWARDS`] ports per launch; port 0 is refused.
//! - Forwards are made one at a time (one monitor connection, behind a lock).

use crate::qmp::{Qmp, QmpError};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use tokio::net::UnixStream;
use tokio::sync::Mutex;

/// Guest ports one launch may have forwarded (its SSH port included).
pub const MAX_FORWARDS: usize = 32;
/// Host ports tried per forward before giving up.
const ATTEMPTS: usize = 4;
/// The netdev id of the DUT's NIC (see [`crate::Nic`]).
pub const NETDEV: &str = "dutlab-net0";

/// Why a port of the DUT cannot be reached.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("port 0 is not a TCP port")]
    PortZero,
    #[error("the DUT has {MAX_FORWARDS} forwarded ports already")]
    TooMany,
    #[error("the DUT's monitor: {0}")]
    Monitor(#[from] QmpError),
    #[error("picking a host port: {0}")]
    Io(#[from] std::io::Error),
    #[error("QEMU did not add the forward: {0}")]
    Refused(String),
}

struct State {
    monitor: Option<Qmp>,
    ports: BTreeMap<u16, SocketAddr>,
}

/// The forwarded ports of one launch of a DUT with a user-mode NIC.
pub struct PortForwards {
    socket: PathBuf,
    state: Mutex<State>,
}

impl std::fmt::Debug for PortForwards {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortForwards")
            .field("socket", &self.socket)
            .finish()
    }
}

impl PortForwards {
    /// The forwards of a launch whose forward monitor listens at `socket`, with the ones its
    /// command line made already (`guest port -> host address`).
    pub fn new(socket: PathBuf, made: impl IntoIterator<Item = (u16, SocketAddr)>) -> PortForwards {
        PortForwards {
            socket,
            state: Mutex::new(State {
                monitor: None,
                ports: made.into_iter().collect(),
            }),
        }
    }

    /// The host address that leads to `guest_port` of the DUT, forwarding it if needed.
    pub async fn reach(&self, guest_port: u16) -> Result<SocketAddr, ForwardError> {
        if guest_port == 0 {
            return Err(ForwardError::PortZero);
        }
        let mut state = self.state.lock().await;
        if let Some(addr) = state.ports.get(&guest_port) {
            return Ok(*addr);
        }
        if state.ports.len() >= MAX_FORWARDS {
            return Err(ForwardError::TooMany);
        }
        let mut last = String::new();
        for _ in 0..ATTEMPTS {
            let host_port = {
                let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
                listener.local_addr()?.port()
            };
            let rule = format!("tcp:127.0.0.1:{host_port}-:{guest_port}");
            let said = self
                .human(&mut state, &format!("hostfwd_add {NETDEV} {rule}"))
                .await?;
            if said.trim().is_empty() {
                let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, host_port));
                tracing::debug!(guest_port, %addr, "DUT port forwarded");
                state.ports.insert(guest_port, addr);
                return Ok(addr);
            }
            // Most likely the port was taken in between: try another.
            last = said.trim().to_owned();
        }
        Err(ForwardError::Refused(last))
    }

    /// Runs an HMP command on the forward monitor (connecting on first use); answers its
    /// output (empty when a `hostfwd_add` worked).
    async fn human(&self, state: &mut State, command: &str) -> Result<String, ForwardError> {
        if state.monitor.is_none() {
            let stream = UnixStream::connect(&self.socket)
                .await
                .map_err(QmpError::Io)?;
            state.monitor = Some(Qmp::negotiate(stream).await?);
        }
        let Some(monitor) = state.monitor.as_mut() else {
            return Err(ForwardError::Monitor(QmpError::Closed));
        };
        let args = serde_json::json!({ "command-line": command });
        match monitor.execute("human-monitor-command", Some(args)).await {
            Ok(value) => Ok(value.as_str().unwrap_or_default().to_owned()),
            Err(e) => {
                state.monitor = None;
                Err(e.into())
            }
        }
    }
}
