//! The initramfs: the entries it holds (busybox, a few `/etc` files, `/init`, the kernel modules
//! and their `modules.dep`) and how it is written, as a gzip-compressed newc cpio archive.
//!
//! The `/etc` files are what test scripts written for a distribution read: `passwd`, `group`,
//! `hostname`, `hosts`, `profile`, `inittab` and `os-release` (`ID=dutlab`, so scripts that
//! pick a package manager from it, such as Linaro's `dist_name`, see a known system with none).
//!
//! Invariants:
//! - A [`Tree`] keeps entries in insertion order, adds every parent directory before its
//!   children and each directory once, so the same inputs give the same archive (the cpio writer
//!   adds no timestamps).
//! - `/init` installs the busybox applets, mounts `/proc`, `/sys`, `/dev`, `/dev/pts`, `/tmp` and
//!   `/run`, loads the modules in the given order (a module that fails to load is reported, not
//!   fatal), mounts `/dev/vda` at [`GUEST_ROOTFS_MOUNT`] if present, brings up `lo` and `eth0`
//!   (if the DUT has a NIC) and execs busybox init. It quotes nothing: versions and module paths come shell safe from the kernel
//!   module.
//! - `root` has no password, and busybox init respawns `getty` on `ttyS0` and the SSH server
//!   (see `ssh`: public keys only).
//! - [`write_initramfs`] fsyncs the archive before it returns.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;

use super::cpio::CpioWriter;
use super::kernel::{GuestModules, uncompressed_path};
use super::ssh::{self, SSHD_SCRIPT, SshServer};
use super::{FORMAT_VERSION, GUEST_ROOTFS_MOUNT, ImageError, io_err};

const HOSTNAME: &str = "dutlab";

/// `/etc/os-release` (see os-release(5)); `VERSION_ID` is the image format.
pub(super) fn os_release() -> String {
    format!(
        "NAME=\"dutlab guest\"\nID=dutlab\nVERSION_ID={FORMAT_VERSION}\n\
         PRETTY_NAME=\"dutlab guest (busybox)\"\n"
    )
}

/// One initramfs entry, planned before writing so the count is known up front.
enum Node {
    Dir(u32),
    File(u32, Vec<u8>),
    Symlink(String),
    CharDevice(u32, u32, u32),
}

/// Initramfs entries in write order; parents are always added before their children.
#[derive(Default)]
pub(super) struct Tree {
    nodes: Vec<(String, Node)>,
    dirs: BTreeSet<String>,
}

impl Tree {
    /// How many entries the archive will hold.
    pub(super) fn len(&self) -> usize {
        self.nodes.len()
    }

    fn dir(&mut self, path: &str, perm: u32) {
        self.parents(path);
        if self.dirs.insert(path.to_owned()) {
            self.nodes.push((path.to_owned(), Node::Dir(perm)));
        }
    }

    fn file(&mut self, path: &str, perm: u32, data: impl Into<Vec<u8>>) {
        self.parents(path);
        self.nodes
            .push((path.to_owned(), Node::File(perm, data.into())));
    }

    fn symlink(&mut self, path: &str, target: &str) {
        self.parents(path);
        self.nodes
            .push((path.to_owned(), Node::Symlink(target.to_owned())));
    }

    fn char_device(&mut self, path: &str, perm: u32, major: u32, minor: u32) {
        self.parents(path);
        self.nodes
            .push((path.to_owned(), Node::CharDevice(perm, major, minor)));
    }

    fn parents(&mut self, path: &str) {
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent, 0o755);
        }
    }

    fn write<W: Write>(&self, out: W) -> io::Result<W> {
        let mut cpio = CpioWriter::new(out);
        for (path, node) in &self.nodes {
            match node {
                Node::Dir(perm) => cpio.dir(path, *perm)?,
                Node::File(perm, data) => cpio.file(path, *perm, data)?,
                Node::Symlink(target) => cpio.symlink(path, target)?,
                Node::CharDevice(perm, major, minor) => {
                    cpio.char_device(path, *perm, *major, *minor)?;
                }
            }
        }
        cpio.finish()
    }
}

pub(super) fn init_script(modules: Option<&GuestModules>) -> String {
    let mut s = String::from(
        "#!/bin/busybox sh\n\
         # /init of the dutlab guest initramfs, written by `dutlab image build`.\n\
         # Sets the system up, then hands PID 1 to busybox init (see /etc/inittab).\n\
         /bin/busybox mkdir -p /bin /sbin /usr/bin /usr/sbin\n\
         /bin/busybox --install -s\n\
         export PATH=/usr/sbin:/usr/bin:/sbin:/bin\n\
         mkdir -p /proc /sys /dev /tmp /run /mnt/rootfs\n\
         mount -t proc proc /proc\n\
         mount -t sysfs sysfs /sys\n\
         mount -t devtmpfs devtmpfs /dev\n\
         mkdir -p /dev/pts /dev/shm\n\
         mount -t devpts devpts /dev/pts\n\
         mount -t tmpfs -o mode=1777 tmpfs /tmp\n\
         mount -t tmpfs -o mode=0755 tmpfs /run\n\
         hostname -F /etc/hostname\n",
    );
    if let Some(modules) = modules {
        let _ = writeln!(s, "for m in {}; do", modules.guest_paths().join(" "));
        let _ = writeln!(
            s,
            "    insmod \"/lib/modules/{}/$m\" || echo \"dutlab-init: cannot load $m\" >&2",
            modules.version
        );
        s.push_str("done\n");
    }
    let _ = write!(
        s,
        "if [ -b /dev/vda ]; then\n    \
             mount -t ext4 /dev/vda {GUEST_ROOTFS_MOUNT} || echo \"dutlab-init: cannot mount /dev/vda\" >&2\n\
         fi\n\
         ip link set lo up\n"
    );
    s.push_str(&ssh::network_setup());
    s.push_str("exec /sbin/init\n");
    s
}

const INITTAB: &str = r#"# busybox init of the dutlab guest
ttyS0::respawn:/sbin/getty -L 115200 ttyS0 vt100
::respawn:/usr/sbin/dutlab-sshd
::ctrlaltdel:/sbin/reboot
::shutdown:/bin/sh -c "umount -r /mnt/rootfs 2>/dev/null; sync"
"#;

const PROFILE: &str = "\
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=${HOME:-/root}
PS1='\\w # '
export PS1
";

pub(super) fn initramfs_tree(
    busybox: Vec<u8>,
    modules: Option<&GuestModules>,
    ssh_server: SshServer,
) -> Tree {
    let mut t = Tree::default();
    for dir in [
        "bin",
        "sbin",
        "usr/bin",
        "usr/sbin",
        "proc",
        "sys",
        "dev",
        "etc",
        "mnt/rootfs",
        "run",
        "var",
        "var/log",
        "lib",
    ] {
        t.dir(dir, 0o755);
    }
    t.dir("tmp", 0o1777);
    t.dir("root", 0o700);
    t.char_device("dev/console", 0o600, 5, 1);
    t.file("bin/busybox", 0o755, busybox);
    t.symlink("bin/sh", "busybox");
    t.file("etc/passwd", 0o644, "root::0:0:root:/root:/bin/sh\n");
    t.file("etc/group", 0o644, "root:x:0:\ntty:x:5:\n");
    t.file("etc/hostname", 0o644, format!("{HOSTNAME}\n"));
    t.file(
        "etc/hosts",
        0o644,
        format!("127.0.0.1 localhost {HOSTNAME}\n"),
    );
    t.file("etc/profile", 0o644, PROFILE);
    t.file("etc/inittab", 0o644, INITTAB);
    t.file("etc/os-release", 0o644, os_release());
    t.file("etc/resolv.conf", 0o644, ssh::resolv_conf());
    t.dir("etc/dropbear", 0o700);
    t.dir("root/.ssh", 0o700);
    for (path, data) in ssh_server.files {
        t.file(&path, 0o755, data);
    }
    t.file(SSHD_SCRIPT, 0o755, ssh::sshd_script());
    if let Some(modules) = modules {
        let base = format!("lib/modules/{}", modules.version);
        for (path, data) in &modules.files {
            t.file(
                &format!("{base}/{}", uncompressed_path(path)),
                0o644,
                data.clone(),
            );
        }
        let mut dep = modules.dep_lines.join("\n");
        dep.push('\n');
        t.file(&format!("{base}/modules.dep"), 0o644, dep);
    }
    t.file("init", 0o755, init_script(modules));
    t
}

pub(super) fn write_initramfs(tree: &Tree, path: &Path) -> Result<(), ImageError> {
    let file = File::create(path).map_err(|source| io_err("create", path, source))?;
    let gz = flate2::write::GzEncoder::new(BufWriter::new(file), flate2::Compression::default());
    tree.write(gz)
        .and_then(flate2::write::GzEncoder::finish)
        .and_then(|buf| buf.into_inner().map_err(io::IntoInnerError::into_error))
        .and_then(|file| file.sync_all())
        .map_err(|source| io_err("write", path, source))
}
