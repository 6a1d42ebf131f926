//! The NICs of a QEMU launch: the user-mode NIC with its SSH forward, and a MultiNode
//! group's second NIC on a loopback multicast segment. `crate::vm::command_line` places
//! them: the user-mode NIC first (the guest's `eth0`), the group's after it.
//!
//! Invariants:
//! - Every option text is built from numbers and addresses the runner chose, never from a
//!   job's text, so none can carry a QEMU option separator.

/// The SSH port inside the guest that the host forward reaches.
pub const GUEST_SSH_PORT: u16 = 22;

/// The NIC of one launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nic {
    None,
    /// User-mode network; guest port [`GUEST_SSH_PORT`] is forwarded from
    /// `127.0.0.1:ssh_host_port`.
    User {
        ssh_host_port: u16,
    },
}

impl Nic {
    pub(crate) fn args(self) -> Vec<String> {
        match self {
            Nic::None => Vec::new(),
            Nic::User { ssh_host_port } => vec![
                "-netdev".into(),
                format!(
                    "user,id=dutlab-net0,restrict=on,\
                     hostfwd=tcp:127.0.0.1:{ssh_host_port}-:{GUEST_SSH_PORT}"
                ),
                "-device".into(),
                "virtio-net-pci,netdev=dutlab-net0".into(),
            ],
        }
    }
}

/// A NIC on a group's private L2 network: QEMU's socket networking on a multicast group
/// joined on 127.0.0.1, so every QEMU of the host that joins the same group and port shares
/// one Ethernet segment, with no root, no bridge and no host interface. The frames never
/// leave the host's loopback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupLink {
    mcast: std::net::SocketAddrV4,
    mac: [u8; 6],
}

/// Why a [`GroupLink`] cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupLinkError {
    #[error("{0} is not an IPv4 multicast address")]
    NotMulticast(std::net::Ipv4Addr),
    #[error("the multicast port must not be 0")]
    PortZero,
}

impl GroupLink {
    /// The NIC of member `member` on the network `mcast` (its MAC, `52:54:00:d7:HI:LO`, is
    /// unique within the group).
    pub fn new(mcast: std::net::SocketAddrV4, member: u16) -> Result<GroupLink, GroupLinkError> {
        if !mcast.ip().is_multicast() {
            return Err(GroupLinkError::NotMulticast(*mcast.ip()));
        }
        if mcast.port() == 0 {
            return Err(GroupLinkError::PortZero);
        }
        let [hi, lo] = member.to_be_bytes();
        Ok(GroupLink {
            mcast,
            mac: [0x52, 0x54, 0x00, 0xd7, hi, lo],
        })
    }

    /// The NIC's MAC address, as Linux shows it (`52:54:00:d7:00:01`).
    pub fn mac(&self) -> String {
        self.mac
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    }

    pub(crate) fn args(&self) -> [String; 4] {
        [
            "-netdev".into(),
            format!(
                "socket,id=dutlab-group,mcast={},localaddr=127.0.0.1",
                self.mcast
            ),
            "-device".into(),
            format!("virtio-net-pci,netdev=dutlab-group,mac={}", self.mac()),
        ]
    }
}
