//! The guest's SSH server: the host's dropbear (Debian package `dropbear-bin`), the shared
//! libraries it is linked with, and the script busybox init respawns to run it.
//!
//! Invariants:
//! - The binaries are dynamically linked; every library `ldd` names (and the ELF interpreter)
//!   goes into the initramfs at the path `ldd` gives, so the guest's loader finds it. A
//!   library `ldd` cannot find fails the build, naming it.
//! - Only public-key logins: dropbear runs with `-s` (no passwords; `root` has none), keys
//!   go into `/root/.ssh/authorized_keys`.
//! - The host key is made when the server first starts in a boot (ed25519, `dropbearkey`),
//!   never shipped in the image, so two DUTs never share one.
//! - Nothing dropbear prints reaches the serial console (`/var/log/dropbear.log`), so console
//!   matching is unchanged.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{ImageError, find_tool, io_err};

/// Where the server runs inside the guest.
pub(super) const DROPBEAR: &str = "usr/sbin/dropbear";
pub(super) const DROPBEARKEY: &str = "usr/bin/dropbearkey";
/// The script init respawns.
pub(super) const SSHD_SCRIPT: &str = "usr/sbin/dutlab-sshd";
/// The guest's address on QEMU's user-mode network, its gateway and DNS server.
pub const GUEST_ADDRESS: &str = "10.0.2.15";
const GATEWAY: &str = "10.0.2.2";
const NAMESERVER: &str = "10.0.2.3";

/// The files of the SSH server, as initramfs paths (no leading `/`) and contents.
#[derive(Debug, Default)]
pub(super) struct SshServer {
    pub(super) files: Vec<(String, Vec<u8>)>,
}

/// Finds dropbear and dropbearkey on the host and the libraries they need.
pub(super) fn collect_ssh_server(progress: &mut dyn FnMut(&str)) -> Result<SshServer, ImageError> {
    let dropbear = find_tool("dropbear", "dropbear-bin")?;
    let dropbearkey = find_tool("dropbearkey", "dropbear-bin")?;
    let ldd = find_tool("ldd", "libc-bin")?;
    let mut server = SshServer::default();
    let mut libraries: Vec<PathBuf> = Vec::new();
    for (binary, guest) in [(&dropbear, DROPBEAR), (&dropbearkey, DROPBEARKEY)] {
        let data = fs::read(binary).map_err(|source| io_err("read", binary, source))?;
        server.files.push((guest.to_owned(), data));
        for library in shared_libraries(&ldd, binary)? {
            if !libraries.contains(&library) {
                libraries.push(library);
            }
        }
    }
    progress(&format!(
        "using dropbear {} with {} shared libraries",
        dropbear.display(),
        libraries.len()
    ));
    for library in libraries {
        let data = fs::read(&library).map_err(|source| io_err("read", &library, source))?;
        let guest = library
            .to_str()
            .and_then(|p| p.strip_prefix('/'))
            .ok_or_else(|| ImageError::SharedLibrary {
                binary: dropbear.clone(),
                reason: format!("{} is not an absolute UTF-8 path", library.display()),
            })?
            .to_owned();
        server.files.push((guest, data));
    }
    Ok(server)
}

/// The libraries `ldd` lists for `binary` (the interpreter included, the vDSO not).
fn shared_libraries(ldd: &Path, binary: &Path) -> Result<Vec<PathBuf>, ImageError> {
    let out = Command::new(ldd)
        .arg(binary)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| io_err("run ldd on", binary, source))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // A static binary: `not a dynamic executable`.
        return Ok(Vec::new());
    }
    parse_ldd(&text).map_err(|reason| ImageError::SharedLibrary {
        binary: binary.to_path_buf(),
        reason,
    })
}

/// `libz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x...)` and `/lib64/ld-linux-x86-64.so.2
/// (0x...)` lines to their paths; a path that is not plain (`..`, spaces, odd characters) or a
/// library `not found` is an error.
pub(super) fn parse_ldd(text: &str) -> Result<Vec<PathBuf>, String> {
    let mut paths = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let path = match line.split_once("=>") {
            Some((name, rest)) => {
                let rest = rest.trim();
                if rest.starts_with("not found") {
                    return Err(format!("ldd: {} not found", name.trim()));
                }
                rest.split(" (").next().unwrap_or_default()
            }
            None => line.split(" (").next().unwrap_or_default(),
        };
        if !path.starts_with('/') {
            continue; // linux-vdso.so.1: in the kernel, not a file
        }
        let plain = path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'_' | b'-' | b'+'))
            && !path.split('/').any(|c| c == "..");
        if !plain {
            return Err(format!("ldd named an unusual path {path:?}"));
        }
        paths.push(PathBuf::from(path));
    }
    Ok(paths)
}

/// The script that init respawns: host key on first start, then dropbear in the foreground.
pub(super) fn sshd_script() -> String {
    "#!/bin/sh\n\
     # The guest's SSH server (respawned by init): public keys only, host key made on first start.\n\
     key=/etc/dropbear/dropbear_ed25519_host_key\n\
     [ -s \"$key\" ] || dropbearkey -t ed25519 -f \"$key\" >/dev/null 2>&1\n\
     exec /usr/sbin/dropbear -F -E -s -r \"$key\" -p 22 2>>/var/log/dropbear.log\n"
        .to_owned()
}

/// Lines of `/init` that bring up `eth0` on QEMU's user-mode network, if there is one.
pub(super) fn network_setup() -> String {
    format!(
        "if ip link show eth0 >/dev/null 2>&1; then\n    \
             ip addr add {GUEST_ADDRESS}/24 dev eth0 && ip link set eth0 up && \
             ip route add default via {GATEWAY} || echo \"dutlab-init: cannot set up eth0\" >&2\n\
         fi\n"
    )
}

/// `/etc/resolv.conf`: QEMU's user-mode DNS.
pub(super) fn resolv_conf() -> String {
    format!("nameserver {NAMESERVER}\n")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ldd_output_gives_libraries_and_the_interpreter() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x00007f10)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f20)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f30)\n";
        assert_eq!(
            parse_ldd(text).unwrap_or_default(),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libz.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
        let missing = parse_ldd("\tlibgone.so.3 => not found\n").unwrap_err();
        assert!(missing.contains("libgone.so.3"), "{missing}");
        assert!(parse_ldd("\tlibx.so => /lib/../etc/x (0x1)\n").is_err());
        assert!(parse_ldd("\tlibx.so => /lib/a b (0x1)\n").is_err());
    }

    #[test]
    fn the_host_dropbear_comes_with_its_libraries() {
        let server = match collect_ssh_server(&mut |_| {}) {
            Ok(s) => s,
            Err(e) => panic!("{e} (scripts/install-deps.sh installs dropbear-bin)"),
        };
        let paths: Vec<&str> = server.files.iter().map(|(p, _)| p.as_str()).collect();
        assert!(paths.contains(&DROPBEAR) && paths.contains(&DROPBEARKEY));
        assert!(paths.iter().any(|p| p.contains("libc.so")), "{paths:?}");
        assert!(paths.iter().any(|p| p.contains("ld-linux")), "{paths:?}");
    }
}
