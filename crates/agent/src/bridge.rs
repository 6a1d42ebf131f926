//! The agent's end of a MultiNode group network that spans agents: one bridge per group with
//! sub-jobs here, between the group's multicast segment on 127.0.0.1 (where this agent's QEMU
//! DUTs of the group send and hear their frames) and the controller's relay
//! (`controller::group_net`).
//!
//! Invariants:
//! - The bridge hears every datagram on the segment and hands each one up, except those it
//!   sent itself (told apart by their source address, its own sending socket's): a frame that
//!   came from another agent never goes back up, so no frame loops.
//! - Frames go up through a bounded queue ([`UP_QUEUE`] frames for all bridges); a full queue
//!   drops the frame, as a busy switch would. A frame is at most
//!   [`proto::link::MAX_GROUP_FRAME`] bytes; longer datagrams are dropped.
//! - Everything stays on the loopback interface: the sockets join and send on 127.0.0.1
//!   (multicast TTL 1, never routed), so no frame leaves the host but through the link.
//! - Dropping the bridge stops its task and closes its sockets.

use proto::JobId;
use socket2::{Domain, Protocol, Socket, Type};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

/// Frames queued for the link, for all bridges together.
pub const UP_QUEUE: usize = 256;

/// A frame heard on group `group`'s segment, for the controller.
#[derive(Debug)]
pub struct Heard {
    pub group: JobId,
    pub frame: Vec<u8>,
}

/// One group's bridge.
#[derive(Debug)]
pub struct Bridge {
    send: Arc<UdpSocket>,
    segment: SocketAddrV4,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Bridge {
    /// Joins `segment` for group `group`; what it hears goes to `up`.
    pub fn open(
        group: JobId,
        segment: SocketAddrV4,
        up: mpsc::Sender<Heard>,
    ) -> std::io::Result<Bridge> {
        let listen = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        // QEMU's sockets of the segment are bound to the same address and port.
        listen.set_reuse_address(true)?;
        listen.bind(&SocketAddr::V4(segment).into())?;
        listen.join_multicast_v4(segment.ip(), &Ipv4Addr::LOCALHOST)?;
        listen.set_nonblocking(true)?;
        let listen = UdpSocket::from_std(listen.into())?;
        let send = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        send.set_multicast_if_v4(&Ipv4Addr::LOCALHOST)?;
        send.set_multicast_loop_v4(true)?;
        send.set_multicast_ttl_v4(1)?;
        send.bind(&SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)).into())?;
        send.set_nonblocking(true)?;
        let send = Arc::new(UdpSocket::from_std(send.into())?);
        let own = send.local_addr()?;
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; proto::link::MAX_GROUP_FRAME + 1];
            loop {
                let Ok((n, from)) = listen.recv_from(&mut buf).await else {
                    return;
                };
                if from == own || n == 0 || n > proto::link::MAX_GROUP_FRAME {
                    continue;
                }
                let heard = Heard {
                    group,
                    frame: buf[..n].to_vec(),
                };
                if let Err(mpsc::error::TrySendError::Closed(_)) = up.try_send(heard) {
                    return;
                }
            }
        });
        Ok(Bridge {
            send,
            segment,
            task,
        })
    }

    /// Puts a frame from another agent on the segment (dropped if the socket is busy).
    pub fn deliver(&self, frame: &[u8]) {
        if let Err(e) = self.send.try_send_to(frame, SocketAddr::V4(self.segment)) {
            tracing::debug!("group frame of {} bytes dropped: {e}", frame.len());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_bridge_hears_the_segment_but_not_itself_and_delivers_to_it() {
        let segment = runner::multinode::segment_of(b"bridge-test", 7);
        let (up, mut heard) = mpsc::channel(8);
        let bridge = Bridge::open(JobId(7), segment, up).expect("bridge");
        // A member on the segment, as QEMU's socket netdev is.
        let member = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).expect("s");
        member.set_reuse_address(true).expect("reuse");
        member.bind(&SocketAddr::V4(segment).into()).expect("bind");
        member
            .join_multicast_v4(segment.ip(), &Ipv4Addr::LOCALHOST)
            .expect("join");
        member
            .set_multicast_if_v4(&Ipv4Addr::LOCALHOST)
            .expect("if");
        member.set_nonblocking(true).expect("nonblocking");
        let member = UdpSocket::from_std(member.into()).expect("tokio");
        member
            .send_to(b"from-qemu", SocketAddr::V4(segment))
            .await
            .expect("send");
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), heard.recv())
            .await
            .expect("heard in time")
            .expect("a frame");
        assert_eq!(
            (got.group, got.frame.as_slice()),
            (JobId(7), &b"from-qemu"[..])
        );
        // A frame from another agent reaches the member, and does not come back up.
        bridge.deliver(b"from-afar");
        let mut buf = [0u8; 64];
        loop {
            let (n, _) = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                member.recv_from(&mut buf),
            )
            .await
            .expect("delivered in time")
            .expect("recv");
            if &buf[..n] == b"from-afar" {
                break;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert!(heard.try_recv().is_err(), "the bridge heard its own frame");
    }
}
