//! `dutlab forward`: TCP to a port of a lease's DUT, carried over the controller and the
//! agent (`GET /api/v1/leases/{id}/tcp/{port}`), so this host needs no route to the lab.
//!
//! ```text
//!  forward LOCAL:DUT   listen 127.0.0.1:LOCAL ─accept─> one stream per connection ─> DUT:DUT
//!  forward --stdio DUT stdin/stdout <──────────────── one stream ─────────────────> DUT:DUT
//! ```
//!
//! Invariants:
//! - The listener binds 127.0.0.1 only: other hosts cannot use someone's forward.
//! - Before listening, the lease is checked (power status: holder or admin): another user's
//!   forward exits 77 and never listens; an ended lease exits 70.
//! - Each accepted connection has a stream of its own; one failing (the DUT port closed, the
//!   DUT off) ends that connection only. A refusal that no later connection can get past
//!   (401/403: not yours, 410: the lease ended) ends the forward with its exit code.
//! - Half closes pass through: the end of one direction is carried on, the other direction
//!   goes on until it ends too.
//! - `--stdio` writes to stdout only bytes from the DUT port (messages go to stderr), so it
//!   works as ssh's `ProxyCommand`.

use super::leased::LeaseArg;
use super::{connect, print_json};
use crate::exit::{self, Exit};
use anyhow::Context;
use client::stream::{StreamEnd, Target};
use client::{Client, ClientError};
use proto::PersonLeaseId;
use std::net::{Ipv4Addr, SocketAddr};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const HELP: &str = "Exit codes: 0 stopped (Ctrl-C, SIGTERM) or the --stdio stream ended, 64 \
usage or no lease (--lease or DUTLAB_LEASE), 69 controller unreachable, 70 other error (410: the \
lease has ended; 502: the agent could not reach the port), 77 not the lease's holder (403).";

#[derive(Debug, clap::Args)]
#[command(after_help = HELP)]
pub struct ForwardArgs {
    /// LOCAL_PORT:DUT_PORT (LOCAL_PORT 0: a free port, printed); with --stdio: DUT_PORT.
    #[arg(value_name = "LOCAL_PORT:DUT_PORT")]
    ports: String,
    /// Carry stdin and stdout to DUT_PORT instead of listening (for ssh's ProxyCommand).
    #[arg(long)]
    stdio: bool,
    #[command(flatten)]
    lease: LeaseArg,
    /// Print the listening address as JSON.
    #[arg(long, conflicts_with = "stdio")]
    json: bool,
}

/// The ports of a forward, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ports {
    /// 0: a free one.
    local: u16,
    dut: u16,
}

fn dut_port(text: &str) -> Result<u16, Exit> {
    text.trim()
        .parse::<u16>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| {
            Exit::new(
                exit::USAGE,
                format!("DUT_PORT: {text:?} is not a TCP port (1 to 65535)"),
            )
        })
}

fn parse_ports(text: &str) -> Result<Ports, Exit> {
    let Some((local, dut)) = text.split_once(':') else {
        return Err(Exit::new(
            exit::USAGE,
            format!("{text:?}: give LOCAL_PORT:DUT_PORT, e.g. 8080:80 (0:80 picks a free port)"),
        ));
    };
    let local = local.trim().parse::<u16>().map_err(|_| {
        Exit::new(
            exit::USAGE,
            format!("LOCAL_PORT: {local:?} is not a port (0 to 65535)"),
        )
    })?;
    Ok(Ports {
        local,
        dut: dut_port(dut)?,
    })
}

/// Whether a refusal of one stream ends the whole forward, and with which code.
fn fatal(e: &ClientError) -> Option<i32> {
    match e {
        ClientError::Api {
            status: 401 | 403 | 410,
            ..
        }
        | ClientError::BadToken => Some(exit::client_code(e)),
        _ => None,
    }
}

/// `dutlab forward`.
pub fn forward(args: ForwardArgs) -> i32 {
    if args.stdio {
        return stdio(args);
    }
    super::block_on(async move {
        let ports = parse_ports(&args.ports)?;
        let id = args.lease.id()?;
        let client = connect()?;
        let power = client
            .power_status(id)
            .await
            .with_context(|| format!("lease {id}"))?;
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, ports.local))
            .await
            .map_err(|e| {
                Exit::new(
                    exit::SOFTWARE,
                    format!("cannot listen on 127.0.0.1:{}: {e}", ports.local),
                )
            })?;
        let address = listener.local_addr().context("the listening address")?;
        if args.json {
            print_json(&serde_json::json!({
                "lease": id,
                "device": power.device,
                "address": address.to_string(),
                "local_port": address.port(),
                "dut_port": ports.dut,
            }));
        } else {
            println!("{address}");
        }
        eprintln!(
            "dutlab: lease {id}: {address} -> port {} of {}; Ctrl-C to stop",
            ports.dut, power.device
        );
        if power.state != proto::session::PowerState::On {
            eprintln!(
                "dutlab: warning: {} is {}: connections fail until `dutlab power on`",
                power.device, power.state
            );
        }
        serve(&client, id, ports.dut, listener).await
    })
}

/// Accepts connections until a signal or a fatal refusal.
async fn serve(
    client: &Client,
    id: PersonLeaseId,
    dut: u16,
    listener: TcpListener,
) -> anyhow::Result<i32> {
    let (fatal_tx, mut fatal_rx) = mpsc::unbounded_channel::<anyhow::Error>();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot watch SIGTERM")?;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (socket, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        eprintln!("dutlab: accepting a connection: {e}");
                        continue;
                    }
                };
                let client = client.clone();
                let fatal_tx = fatal_tx.clone();
                tokio::spawn(async move {
                    if let Err(e) = carry_one(&client, id, dut, socket, peer).await {
                        let _ = fatal_tx.send(e);
                    }
                });
            }
            Some(e) = fatal_rx.recv() => return Err(e),
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        }
    }
    eprintln!("dutlab: lease {id}: forward stopped");
    Ok(0)
}

/// One connection's stream; answers an error only when it ends the forward.
async fn carry_one(
    client: &Client,
    id: PersonLeaseId,
    dut: u16,
    socket: TcpStream,
    peer: SocketAddr,
) -> anyhow::Result<()> {
    let stream = match client.open_stream(id, Target::Tcp(dut)).await {
        Ok(s) => s,
        Err(e) => {
            let code = fatal(&e);
            let e = anyhow::Error::new(e).context(format!("lease {id}: port {dut}"));
            if code.is_some() {
                return Err(e);
            }
            eprintln!("dutlab: connection from {peer}: {e:#}");
            return Ok(());
        }
    };
    let _ = socket.set_nodelay(true);
    let (read, write) = socket.into_split();
    let end = stream.carry(read, write).await;
    tracing::debug!(%peer, "connection to port {dut} ended: {end}");
    Ok(())
}

/// `dutlab forward --stdio DUT_PORT`.
fn stdio(args: ForwardArgs) -> i32 {
    // Standard input is read on a blocking thread that cannot be interrupted: the runtime is
    // let go of without waiting for it once the stream has ended.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            let e = anyhow::Error::new(e).context("cannot start the async runtime");
            exit::report(&e);
            return exit::code_of(&e);
        }
    };
    let result = runtime.block_on(async move {
        let dut = dut_port(&args.ports)?;
        let id = args.lease.id()?;
        let client = connect()?;
        let stream = client
            .open_stream(id, Target::Tcp(dut))
            .await
            .with_context(|| format!("lease {id}: port {dut}"))?;
        let end = stream.carry(tokio::io::stdin(), tokio::io::stdout()).await;
        tracing::debug!("stream of port {dut} ended: {end}");
        match end {
            StreamEnd::Dropped(why) => {
                Err(Exit::new(exit::SOFTWARE, format!("lease {id}: port {dut}: {why}")).into())
            }
            StreamEnd::Closed(_) => Ok(0),
        }
    });
    runtime.shutdown_background();
    match result {
        Ok(code) => code,
        Err(e) => {
            exit::report(&e);
            exit::code_of(&e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_checked() {
        assert_eq!(parse_ports("0:22"), Ok(Ports { local: 0, dut: 22 }));
        assert_eq!(
            parse_ports("8080:80"),
            Ok(Ports {
                local: 8080,
                dut: 80
            })
        );
        for bad in ["22", "1:0", "1:65536", "x:22", "-1:22", ":22", "22:"] {
            assert_eq!(
                parse_ports(bad).map_err(|e| e.code),
                Err(exit::USAGE),
                "{bad}"
            );
        }
        assert_eq!(dut_port("22").map_err(|e| e.code), Ok(22));
        assert_eq!(dut_port("0").map_err(|e| e.code), Err(exit::USAGE));
    }
}
