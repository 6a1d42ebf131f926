//! What the runner types into a shell for secondary connections: unpacking an overlay copied
//! as a file (a guest's), and authorizing the group's public keys (on the host's DUT).
//!
//! Invariants:
//! - Paths and keys reach the DUT's shell single-quoted: they are data, never evaluated.
//! - Only keys [`proto::session::check_public_key`] accepts are typed.

use super::DutShell;
use crate::overlay::quote;
use crate::session::OverlayState;
use crate::{JobEnd, Limit};

impl DutShell {
    /// Unpacks the gzipped overlay tar at `file` (copied there over SSH) under `root`, which
    /// it replaces.
    pub async fn unpack_overlay_file(
        &mut self,
        file: &str,
        root: &str,
        limit: Limit,
    ) -> Result<(), JobEnd> {
        self.run_ok(
            &format!("rm -rf {} && tar -xzf {} -C /", quote(root), quote(file)),
            limit,
        )
        .await
        .map_err(|e| JobEnd {
            outcome: e.outcome,
            reason: format!("test overlay {file} did not unpack: {}", e.reason),
        })?;
        self.overlay = OverlayState::Installed;
        Ok(())
    }

    /// Sets the group network's address on the DUT's NIC with that network's MAC, and brings
    /// it up. Every word typed is the runner's own (an address, a MAC), none of the job's.
    pub async fn join_group_net(
        &mut self,
        net: &crate::multinode::GroupNet,
        limit: Limit,
    ) -> Result<(), JobEnd> {
        let command = format!(
            "i=$(grep -l '{mac}' /sys/class/net/*/address | cut -d/ -f5) && [ -n \"$i\" ] && \
             ip addr add {addr}/{prefix} dev \"$i\" && ip link set \"$i\" up",
            mac = net.link.mac(),
            addr = net.address,
            prefix = net.prefix,
        );
        self.run_ok(&command, limit).await.map_err(|e| JobEnd {
            outcome: e.outcome,
            reason: format!("the group network did not come up: {}", e.reason),
        })?;
        Ok(())
    }

    /// Appends `keys` (checked `authorized_keys` lines) to the logged-in user's
    /// `~/.ssh/authorized_keys`, so secondary connections can log in.
    pub async fn authorize_keys(&mut self, keys: &[String], limit: Limit) -> Result<(), JobEnd> {
        let mut lines = Vec::new();
        for key in keys {
            let key = proto::session::check_public_key(key)
                .map_err(|e| JobEnd::infra_error(format!("the group's SSH key: {e}")))?;
            lines.push(quote(&key));
        }
        if lines.is_empty() {
            return Ok(());
        }
        self.run_ok(
            &format!(
                "mkdir -p \"$HOME/.ssh\" && chmod 700 \"$HOME/.ssh\" && printf '%s\\n' {} >> \"$HOME/.ssh/authorized_keys\" && chmod 600 \"$HOME/.ssh/authorized_keys\"",
                lines.join(" ")
            ),
            limit,
        )
        .await?;
        Ok(())
    }
}
