//! Network namespaces for tests that need hosts with addresses of their own (agents of a lab
//! on "different machines"): a namespace with its loopback up and a veth link to the test's
//! own namespace, a /30 of 10.128.0.0/10 picked from the test's process id so that tests
//! running at once never share one.
//!
//! Invariants:
//! - Names and addresses are unique per (process, index); [`NetNs::create`] removes a
//!   leftover of the same name first (a killed earlier run with the same pid).
//! - Dropping a [`NetNs`] kills what still runs in it and deletes it, which deletes its link.
//! - Only the namespace and its link are made: no route, NAT or forwarding to elsewhere, so a
//!   process in it reaches its own loopback and the host end of its link only.

use anyhow::{Context, Result, bail};
use std::net::Ipv4Addr;
use std::process::Command;

/// One namespace and its link to the test's namespace.
#[derive(Debug)]
pub struct NetNs {
    name: String,
    host_ip: Ipv4Addr,
    inner_ip: Ipv4Addr,
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl NetNs {
    /// Namespace `index` (0..4) of this test process.
    pub fn create(index: u8) -> Result<NetNs> {
        if index >= 4 {
            bail!("a test process has namespaces 0..4, not {index}");
        }
        let pid = std::process::id();
        let block = (pid % 0x10000) * 4 + u32::from(index);
        let base = u32::from(Ipv4Addr::new(10, 128, 0, 0)) + block * 4;
        let name = format!("dutlab-{pid}-{index}");
        let host_if = format!("dl{pid}h{index}");
        let inner_if = format!("dl{pid}n{index}");
        let host_ip = Ipv4Addr::from(base + 1);
        let inner_ip = Ipv4Addr::from(base + 2);
        let _ = ip(&["netns", "del", &name]);
        let _ = ip(&["link", "del", &host_if]);
        ip(&["netns", "add", &name])?;
        let ns = NetNs {
            name,
            host_ip,
            inner_ip,
        };
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &inner_if,
        ])?;
        ip(&["link", "set", &inner_if, "netns", &ns.name])?;
        ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &host_if])?;
        ip(&["link", "set", &host_if, "up"])?;
        let inside = |args: &[&str]| {
            let mut all = vec!["-n", ns.name.as_str()];
            all.extend_from_slice(args);
            ip(&all)
        };
        inside(&["link", "set", "lo", "up"])?;
        inside(&["addr", "add", &format!("{inner_ip}/30"), "dev", &inner_if])?;
        inside(&["link", "set", &inner_if, "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The test namespace's end of the link (where processes inside reach the test's
    /// listeners).
    pub fn host_ip(&self) -> Ipv4Addr {
        self.host_ip
    }

    /// The namespace's own end of the link.
    pub fn inner_ip(&self) -> Ipv4Addr {
        self.inner_ip
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Whatever still runs inside (the lab kills its processes first, this is a backstop).
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        let _ = ip(&["netns", "del", &self.name]);
    }
}
