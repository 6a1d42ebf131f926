//! Tests of the image builder, including a real TCG boot of the built image.
//!
//! They need the host's kernel (`linux-image-amd64`), `busybox-static`, `e2fsprogs`,
//! `qemu-utils`, `qemu-system-x86` and `cpio`; a missing one fails the test with its name.

use super::initramfs::init_script;
use super::kernel::{
    WANTED_MODULES, bzimage_version, find_kernel_in, module_name, plan_modules, read_module,
    uncompressed_path, version_cmp,
};
use super::*;
use std::collections::BTreeSet;
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn quiet() -> impl FnMut(&str) {
    |_: &str| {}
}

fn build_into(dir: &Path) -> (GuestImage, Vec<String>) {
    let mut steps = Vec::new();
    let image = build(&ImageSpec::new(dir), &mut |s: &str| steps.push(s.to_owned()))
        .unwrap_or_else(|e| panic!("image build failed (CI must install linux-image-amd64, busybox-static, e2fsprogs, qemu-utils): {e}"));
    (image, steps)
}

fn initramfs_entries(image: &GuestImage) -> Vec<cpio::Entry> {
    let file = File::open(&image.initramfs).expect("open initramfs");
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(file)
        .read_to_end(&mut bytes)
        .expect("gunzip initramfs");
    cpio::parse(&bytes)
}

#[test]
fn versions_sort_like_sort_v() {
    use std::cmp::Ordering::*;
    assert_eq!(version_cmp("6.1.0-56-amd64", "6.1.0-9-amd64"), Greater);
    assert_eq!(version_cmp("6.10.0-1-amd64", "6.9.0-1-amd64"), Greater);
    assert_eq!(version_cmp("6.1.0-9-amd64", "6.1.0-9-amd64"), Equal);
    assert_eq!(version_cmp("6.1", "6.1.0"), Less);
    assert_eq!(version_cmp("6.01", "6.1"), Equal);
}

#[test]
fn image_dir_precedence() {
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        move |name: &str| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| OsString::from(v))
        }
    };
    assert_eq!(
        image_dir_from(env(&[
            ("DUTLAB_IMAGE_DIR", "/img"),
            ("XDG_CACHE_HOME", "/xdg"),
            ("HOME", "/home/u")
        ])),
        Path::new("/img")
    );
    assert_eq!(
        image_dir_from(env(&[("XDG_CACHE_HOME", "/xdg"), ("HOME", "/home/u")])),
        Path::new("/xdg/dutlab/image")
    );
    assert_eq!(
        image_dir_from(env(&[
            ("DUTLAB_IMAGE_DIR", ""),
            ("XDG_CACHE_HOME", "relative"),
            ("HOME", "/home/u")
        ])),
        Path::new("/home/u/.cache/dutlab/image")
    );
    assert!(image_dir_from(env(&[])).ends_with("dutlab/image"));
}

#[test]
fn find_kernel_takes_the_newest_and_names_the_package() {
    let boot = tempfile::tempdir().expect("tempdir");
    let err = find_kernel_in(boot.path()).expect_err("empty /boot");
    assert!(err.to_string().contains("linux-image-amd64"), "{err}");
    for name in [
        "vmlinuz-6.1.0-9-amd64",
        "vmlinuz-6.1.0-56-amd64",
        "vmlinuz-",
        "config-9.9.9",
    ] {
        fs::write(boot.path().join(name), b"k").expect("write");
    }
    fs::create_dir(boot.path().join("vmlinuz-99-dir")).expect("mkdir");
    assert_eq!(
        find_kernel_in(boot.path()).expect("kernel"),
        boot.path().join("vmlinuz-6.1.0-56-amd64")
    );
}

#[test]
fn host_kernel_is_found() {
    let kernel = find_kernel().unwrap_or_else(|e| panic!("{e}"));
    let bytes = fs::read(&kernel).expect("read kernel");
    let from_name = kernel_version(&kernel, &bytes).expect("version from name");
    // The boot header carries the same release.
    assert_eq!(bzimage_version(&bytes).as_deref(), Some(from_name.as_str()));
    assert_eq!(
        kernel_version(Path::new("/x/bzImage"), &bytes).as_deref(),
        Some(from_name.as_str())
    );
    assert_eq!(kernel_version(Path::new("/x/bzImage"), b"junk"), None);
}

#[test]
fn busybox_must_be_static_x86_64_elf() {
    let busybox = find_busybox().unwrap_or_else(|e| panic!("{e}"));
    let bytes = fs::read(&busybox).expect("read busybox");
    check_static_busybox(&busybox, &bytes).unwrap_or_else(|e| panic!("{e}"));

    // This test binary is dynamically linked.
    let exe = std::env::current_exe().expect("current exe");
    let dynamic = fs::read(&exe).expect("read test binary");
    let err = check_static_busybox(&exe, &dynamic).expect_err("dynamic binary");
    assert!(matches!(err, ImageError::BusyboxNotStatic { .. }), "{err}");
    assert!(err.to_string().contains("busybox-static"), "{err}");

    let err = check_static_busybox(&exe, b"#!/bin/sh\n").expect_err("script");
    assert!(err.to_string().contains("not an ELF file"), "{err}");
    let err = check_static_busybox(&exe, &bytes[..0x30]).expect_err("truncated");
    assert!(err.to_string().contains("truncated"), "{err}");
    let mut arm = bytes.clone();
    arm[0x12] = 183; // EM_AARCH64
    let err = check_static_busybox(&exe, &arm).expect_err("wrong machine");
    assert!(err.to_string().contains("x86_64"), "{err}");
}

#[test]
fn missing_tool_names_its_package() {
    let err = find_tool("dutlab-no-such-tool", "dutlab-pkg").expect_err("missing");
    assert_eq!(
        err.to_string(),
        "`dutlab-no-such-tool` not found in PATH, /usr/sbin or /sbin; install the Debian package dutlab-pkg"
    );
}

#[test]
fn module_names_are_normalised() {
    assert_eq!(module_name("kernel/fs/ext4/ext4.ko"), "ext4");
    assert_eq!(
        module_name("kernel/arch/x86/crypto/crc32c-intel.ko.xz"),
        "crc32c_intel"
    );
    assert_eq!(module_name("virtio-pci"), "virtio_pci");
    assert_eq!(uncompressed_path("a/b.ko.zst"), "a/b.ko");
    assert_eq!(uncompressed_path("a/b.ko"), "a/b.ko");
}

#[test]
fn module_plan_orders_dependencies_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(
        dir.path().join("modules.dep"),
        "kernel/fs/ext4/ext4.ko.xz: kernel/lib/crc16.ko.xz kernel/fs/mbcache.ko.xz kernel/fs/jbd2/jbd2.ko.xz\n\
         kernel/fs/jbd2/jbd2.ko.xz:\n\
         kernel/fs/mbcache.ko.xz:\n\
         kernel/lib/crc16.ko.xz:\n\
         kernel/drivers/block/virtio_blk.ko.xz: kernel/drivers/virtio/virtio.ko.xz kernel/drivers/virtio/virtio_ring.ko.xz\n\
         kernel/drivers/virtio/virtio.ko.xz: kernel/drivers/virtio/virtio_ring.ko.xz\n\
         kernel/drivers/virtio/virtio_ring.ko.xz:\n",
    )
    .expect("write modules.dep");
    fs::write(
        dir.path().join("modules.builtin"),
        "kernel/drivers/virtio/virtio_pci.ko\n",
    )
    .expect("write modules.builtin");
    let plan = plan_modules(dir.path(), WANTED_MODULES).expect("plan");
    assert_eq!(
        plan.load_order,
        [
            "kernel/drivers/virtio/virtio_ring.ko.xz",
            "kernel/drivers/virtio/virtio.ko.xz",
            "kernel/drivers/block/virtio_blk.ko.xz",
            "kernel/lib/crc16.ko.xz",
            "kernel/fs/mbcache.ko.xz",
            "kernel/fs/jbd2/jbd2.ko.xz",
            "kernel/fs/ext4/ext4.ko.xz",
        ]
    );
    assert_eq!(plan.builtin, ["virtio_pci"]);
    assert_eq!(plan.absent, ["virtio_net", "crc32c_generic"]);
    assert_eq!(
        plan.dep_lines.last().map(String::as_str),
        Some(
            "kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko"
        )
    );

    fs::write(
        dir.path().join("modules.dep"),
        "kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko\n",
    )
    .expect("write modules.dep");
    let err = plan_modules(dir.path(), &["ext4"]).expect_err("dangling dependency");
    assert!(err.to_string().contains("crc16.ko"), "{err}");
    fs::write(dir.path().join("modules.dep"), "no colon here\n").expect("write");
    let err = plan_modules(dir.path(), &["ext4"]).expect_err("malformed");
    assert!(err.to_string().contains("line 1"), "{err}");
}

#[test]
fn host_module_plan_has_disk_and_network_drivers() {
    let kernel = find_kernel().unwrap_or_else(|e| panic!("{e}"));
    let version = kernel_version(&kernel, b"").expect("vmlinuz-<version>");
    let dir = Path::new("/lib/modules").join(&version);
    let plan = plan_modules(&dir, WANTED_MODULES).unwrap_or_else(|e| panic!("{e}"));
    assert!(plan.absent.is_empty(), "absent: {:?}", plan.absent);
    let names: Vec<String> = plan.load_order.iter().map(|p| module_name(p)).collect();
    let pos = |n: &str| {
        names
            .iter()
            .position(|m| m == n)
            .unwrap_or_else(|| panic!("{n} not in {names:?}"))
    };
    assert!(pos("jbd2") < pos("ext4"));
    assert!(pos("mbcache") < pos("ext4"));
    assert!(pos("crc32c_generic") < pos("ext4"));
    assert!(pos("virtio_ring") < pos("virtio"));
    assert!(pos("virtio") < pos("virtio_blk"));
    assert!(pos("virtio") < pos("virtio_net"));
    assert!(pos("virtio_pci") < pos("virtio_blk"));
    for path in &plan.load_order {
        read_module(&dir.join(path)).unwrap_or_else(|e| panic!("{e}"));
    }
}

#[test]
fn compressed_modules_are_decompressed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = b"\x7fELF fake module".repeat(100);
    let gz = dir.path().join("m.ko.gz");
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(&data).expect("gzip");
    fs::write(&gz, enc.finish().expect("gzip")).expect("write");
    assert_eq!(read_module(&gz).expect("gz"), data);

    let xz = dir.path().join("m.ko.xz");
    let mut packed = Vec::new();
    lzma_rs::xz_compress(&mut data.as_slice(), &mut packed).expect("xz");
    fs::write(&xz, packed).expect("write");
    assert_eq!(read_module(&xz).expect("xz"), data);

    let zst = dir.path().join("m.ko.zst");
    fs::write(&zst, b"x").expect("write");
    let err = read_module(&zst).expect_err("zstd");
    assert!(err.to_string().contains("zstd"), "{err}");
    fs::write(&xz, b"not xz").expect("write");
    assert!(matches!(
        read_module(&xz),
        Err(ImageError::ModuleDecompress { .. })
    ));
}

#[test]
fn init_script_is_shell_and_loads_modules_in_order() {
    let modules = GuestModules {
        version: "6.1.0-56-amd64".to_owned(),
        files: vec![
            ("kernel/a.ko.xz".to_owned(), Vec::new()),
            ("kernel/b.ko".to_owned(), Vec::new()),
        ],
        dep_lines: Vec::new(),
    };
    let script = init_script(Some(&modules));
    assert!(script.starts_with("#!/bin/busybox sh\n"));
    assert!(script.contains("for m in kernel/a.ko kernel/b.ko; do\n"));
    assert!(script.contains("insmod \"/lib/modules/6.1.0-56-amd64/$m\""));
    assert!(script.ends_with("exec /sbin/init\n"));
    assert!(!init_script(None).contains("insmod"));
    // `sh -n` parses it without running it.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("init");
    fs::write(&path, &script).expect("write");
    let status = Command::new("/bin/busybox")
        .args(["sh", "-n"])
        .arg(&path)
        .status()
        .expect("run busybox sh -n");
    assert!(status.success());
}

#[test]
fn build_then_open_and_verify() {
    let parent = tempfile::tempdir().expect("tempdir");
    let dir = parent.path().join("image");
    let (image, steps) = build_into(&dir);
    assert_eq!(image, GuestImage::open(&dir).expect("open"));
    assert_eq!(image.kernel, dir.join("vmlinuz"));
    assert_eq!(image.initramfs, dir.join("initramfs.cpio.gz"));
    assert_eq!(image.rootfs, dir.join("rootfs.qcow2"));
    image.verify().expect("verify");
    for step in [
        "copying kernel",
        "writing initramfs (",
        "making rootfs.qcow2",
    ] {
        assert!(
            steps.iter().any(|s| s.starts_with(step)),
            "no step {step:?} in {steps:?}"
        );
    }

    let manifest = image.manifest().expect("manifest");
    assert_eq!(manifest.format, FORMAT_VERSION);
    assert_eq!(manifest.created_by, "dutlab image build");
    let version = manifest.kernel_version.clone().expect("kernel version");
    assert_eq!(
        manifest.files.keys().collect::<Vec<_>>(),
        ["initramfs.cpio.gz", "rootfs.qcow2", "vmlinuz"]
    );
    assert_eq!(manifest.files["vmlinuz"].sha256.len(), 64);
    assert!(manifest.modules.iter().any(|m| m.ends_with("/ext4.ko")));

    let entries = initramfs_entries(&image);
    let get = |name: &str| {
        entries
            .iter()
            .find(|e| e.name == name)
            .unwrap_or_else(|| panic!("no {name} in initramfs"))
    };
    assert_eq!(get("init").mode, 0o100_755);
    assert_eq!(get("bin/busybox").mode, 0o100_755);
    assert_eq!(get("dev/console").mode, 0o020_600);
    assert_eq!(get("dev/console").rdev, (5, 1));
    assert_eq!(get("tmp").mode, 0o041_777);
    assert_eq!(get("etc/passwd").data, b"root::0:0:root:/root:/bin/sh\n");
    assert_eq!(get("etc/hostname").data, b"dutlab\n");
    let os_release = String::from_utf8_lossy(&get("etc/os-release").data).into_owned();
    assert!(os_release.lines().any(|l| l == "ID=dutlab"), "{os_release}");
    assert!(
        os_release
            .lines()
            .any(|l| l == format!("VERSION_ID={FORMAT_VERSION}")),
        "{os_release}"
    );
    assert!(String::from_utf8_lossy(&get("etc/profile").data).contains("PS1='\\w # '"));
    let ext4 = get(&format!("lib/modules/{version}/kernel/fs/ext4/ext4.ko"));
    assert_eq!(&ext4.data[..4], b"\x7fELF");
    get(&format!("lib/modules/{version}/modules.dep"));
    // Every entry's parent directory comes before it.
    let mut seen = BTreeSet::new();
    for e in &entries {
        if let Some((parent, _)) = e.name.rsplit_once('/') {
            assert!(seen.contains(parent), "{} before its directory", e.name);
        }
        seen.insert(e.name.as_str());
    }
    let mut qcow2 = [0u8; 4];
    File::open(&image.rootfs)
        .and_then(|mut f| f.read_exact(&mut qcow2))
        .expect("read rootfs");
    assert_eq!(&qcow2, b"QFI\xfb");

    // Building again replaces the image and leaves nothing beside it.
    fs::write(dir.join("stale"), b"old").expect("write");
    let rebuilt = build(&ImageSpec::new(&dir), &mut quiet()).expect("rebuild");
    // Same inputs, same bytes.
    assert_eq!(
        rebuilt.manifest().expect("manifest").files[INITRAMFS_FILE],
        manifest.files[INITRAMFS_FILE]
    );
    assert!(!dir.join("stale").exists());
    let left: Vec<_> = fs::read_dir(parent.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(left, [OsString::from("image")]);
    GuestImage::open(&dir).expect("open rebuilt");
}

#[test]
fn build_refuses_to_replace_a_directory_that_is_not_an_image() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(dir.path().join("precious"), b"keep me").expect("write");
    let err = build(&ImageSpec::new(dir.path()), &mut quiet()).expect_err("not an image");
    assert!(matches!(err, ImageError::NotAnImage { .. }), "{err}");
    assert!(dir.path().join("precious").exists());
}

#[test]
fn build_reports_a_bad_busybox_or_kernel() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spec = ImageSpec::new(dir.path().join("image"));
    spec.busybox = Some(std::env::current_exe().expect("current exe"));
    let err = build(&spec, &mut quiet()).expect_err("dynamic busybox");
    assert!(err.to_string().contains("busybox-static"), "{err}");
    spec.busybox = None;
    spec.kernel = Some(dir.path().join("vmlinuz-none"));
    let err = build(&spec, &mut quiet()).expect_err("no kernel");
    assert!(err.to_string().contains("linux-image-amd64"), "{err}");
    assert!(!dir.path().join("image").exists());
}

/// A hand-made image directory with small files, for the `open` checks.
fn fake_image(dir: &Path) {
    let mut files = BTreeMap::new();
    for name in IMAGE_FILES {
        fs::write(dir.join(name), name).expect("write");
        files.insert(
            name.to_owned(),
            file_record(&dir.join(name), false).expect("record"),
        );
    }
    let manifest = Manifest {
        format: FORMAT_VERSION,
        created_by: "test".to_owned(),
        kernel_version: None,
        modules: Vec::new(),
        files,
    };
    fs::write(
        dir.join(MANIFEST_FILE),
        serde_json::to_vec(&manifest).expect("json"),
    )
    .expect("write manifest");
}

#[test]
fn open_names_what_is_missing_or_wrong() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let err = GuestImage::open(d).expect_err("empty dir");
    assert!(err.to_string().contains("image.json is missing"), "{err}");

    fake_image(d);
    let image = GuestImage::open(d).expect("open fake");
    image.verify().expect("verify fake");

    fs::remove_file(d.join("rootfs.qcow2")).expect("remove");
    let err = GuestImage::open(d).expect_err("no rootfs");
    assert!(
        matches!(
            err,
            ImageError::MissingFile {
                file: "rootfs.qcow2",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("rootfs.qcow2 is missing"), "{err}");

    fake_image(d);
    fs::write(d.join("vmlinuz"), "longer than before").expect("write");
    let err = GuestImage::open(d).expect_err("size");
    assert!(err.to_string().contains("vmlinuz"), "{err}");

    fake_image(d);
    fs::write(d.join("vmlinuz"), "VMLINUZ").expect("same size");
    GuestImage::open(d).expect("size still matches");
    let err = image.verify().expect_err("content changed");
    assert!(err.to_string().contains("sha256"), "{err}");

    // An image of the previous format (no /etc/os-release) is refused, naming both formats.
    fs::write(d.join(MANIFEST_FILE), r#"{"format": 1, "whatever": true}"#).expect("write");
    let err = GuestImage::open(d).expect_err("format 1");
    assert!(matches!(err, ImageError::FormatMismatch { .. }), "{err}");
    assert!(err.to_string().contains("has format 1"), "{err}");
    assert!(
        err.to_string()
            .contains(&format!("reads format {FORMAT_VERSION}")),
        "{err}"
    );

    fs::write(
        d.join(MANIFEST_FILE),
        format!(r#"{{"format": {FORMAT_VERSION}}}"#),
    )
    .expect("write");
    let err = GuestImage::open(d).expect_err("shape");
    assert!(matches!(err, ImageError::BadManifest { .. }), "{err}");
    fs::write(d.join(MANIFEST_FILE), "{").expect("write");
    assert!(matches!(
        GuestImage::open(d),
        Err(ImageError::BadManifest { .. })
    ));
}

/// A QEMU process with its serial console on stdio; killed on drop.
struct Vm {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    output: mpsc::Receiver<Vec<u8>>,
    /// Everything read so far, and how much of it has been matched.
    seen: Vec<u8>,
    matched: usize,
}

impl Vm {
    fn boot(image: &GuestImage) -> Vm {
        let mut child = Command::new("qemu-system-x86_64")
            .args([
                "-accel",
                "tcg",
                "-m",
                "512",
                "-nodefaults",
                "-display",
                "none",
            ])
            .args(["-no-reboot", "-kernel"])
            .arg(&image.kernel)
            .arg("-initrd")
            .arg(&image.initramfs)
            .args(["-append", "console=ttyS0 quiet panic=-1", "-drive"])
            .arg(format!(
                "file={},if=virtio,format=qcow2,snapshot=on",
                image.rootfs.display()
            ))
            .args([
                "-chardev",
                "stdio,id=c0,signal=off",
                "-serial",
                "chardev:c0",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start qemu-system-x86_64 (Debian package qemu-system-x86)");
        let stdin = child.stdin.take().expect("piped stdin");
        let mut stdout = child.stdout.take().expect("piped stdout");
        let (tx, output) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        Vm {
            child,
            stdin,
            output,
            seen: Vec::new(),
            matched: 0,
        }
    }

    /// Reads until `found` accepts the unmatched output, returning that output.
    fn expect_with(
        &mut self,
        what: &str,
        deadline: Instant,
        found: impl Fn(&[u8]) -> Option<usize>,
    ) -> String {
        loop {
            if let Some(end) = found(&self.seen[self.matched..]) {
                let text = String::from_utf8_lossy(&self.seen[self.matched..self.matched + end])
                    .into_owned();
                self.matched += end;
                return text;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.output.recv_timeout(left) {
                Ok(chunk) => self.seen.extend_from_slice(&chunk),
                Err(e) => panic!(
                    "waiting for {what}: {e:?}; console so far:\n{}",
                    String::from_utf8_lossy(&self.seen)
                ),
            }
        }
    }

    fn expect(&mut self, needle: &str, deadline: Instant) -> String {
        let needle = needle.as_bytes().to_vec();
        self.expect_with(
            &format!("{:?}", String::from_utf8_lossy(&needle)),
            deadline,
            |hay| {
                hay.windows(needle.len())
                    .position(|w| w == needle.as_slice())
                    .map(|at| at + needle.len())
            },
        )
    }

    fn send(&mut self, text: &str) {
        self.stdin
            .write_all(text.as_bytes())
            .and_then(|()| self.stdin.flush())
            .expect("write to the serial console");
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn built_image_boots_to_a_login_and_mounts_the_rootfs() {
    let parent = tempfile::tempdir().expect("tempdir");
    let (image, _) = build_into(&parent.path().join("image"));

    let start = Instant::now();
    let deadline = start + Duration::from_secs(60);
    let mut vm = Vm::boot(&image);
    vm.expect("login: ", deadline);
    eprintln!("login prompt after {:?}", start.elapsed());
    vm.send("root\n");
    vm.expect("# ", deadline);
    eprintln!("shell prompt after {:?}", start.elapsed());

    vm.send("cat /mnt/rootfs/etc/dutlab-rootfs; echo rc=$?\n");
    // The echoed command line has `rc=$?`; the answer has `rc=` and a digit.
    let out = vm.expect_with("rc=<digit>", deadline, |hay| {
        hay.windows(4)
            .position(|w| w.starts_with(b"rc=") && w[3].is_ascii_digit())
            .map(|at| at + 4)
    });
    assert!(out.ends_with("rc=0"), "command failed: {out}");
    assert!(
        out.contains(ROOTFS_MARKER.1.trim_end()),
        "no marker in: {out}"
    );

    vm.send("hostname; lsmod | grep -c virtio_net; echo rc=$?\n");
    let out = vm.expect_with("rc=<digit>", deadline, |hay| {
        hay.windows(4)
            .position(|w| w.starts_with(b"rc=") && w[3].is_ascii_digit())
            .map(|at| at + 4)
    });
    assert!(out.contains("dutlab\r\n"), "hostname: {out}");
    assert!(out.ends_with("rc=0"), "virtio_net not loaded: {out}");

    vm.send("poweroff -f\n");
    let status = loop {
        if let Some(status) = vm.child.try_wait().expect("wait for qemu") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "qemu did not exit after poweroff"
        );
        // Drain the console meanwhile; it also paces this loop.
        if let Ok(chunk) = vm.output.recv_timeout(Duration::from_millis(100)) {
            vm.seen.extend_from_slice(&chunk);
        }
    };
    assert!(status.success(), "qemu exited with {status}");
    eprintln!("powered off after {:?}", start.elapsed());
}
