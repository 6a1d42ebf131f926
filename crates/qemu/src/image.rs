//! Guest image: the kernel, initramfs and disk that the QEMU virtual DUT boots, and the
//! `dutlab image build` backend that makes them from what the host has installed.
//!
//! An image is a directory holding:
//!
//! | file | what |
//! |---|---|
//! | `vmlinuz` | a copy of the host's Debian kernel |
//! | `initramfs.cpio.gz` | busybox, a few `/etc` files, `/init`, and the kernel modules for virtio block/net and ext4 |
//! | `rootfs.qcow2` | a small ext4 disk (label `dutlab-rootfs`) that `/init` mounts at `/mnt/rootfs` |
//! | `image.json` | the [`Manifest`]: format version, kernel version, sizes and sha256 of the three files |
//!
//! The guest boots with `console=ttyS0`; `/init` mounts `/proc`, `/sys`, `/dev`, `/dev/pts`, `/tmp`
//! and `/run`, loads the modules, mounts `/dev/vda` if present, brings up `lo` and hands PID 1 to
//! busybox init, which respawns `getty` on `ttyS0`. Logging in as `root` needs no password and
//! gives a shell whose prompt ends in `# `.
//!
//! Invariants:
//! - [`build`] is atomic: it writes into a fresh temporary directory beside `out_dir`, fsyncs it,
//!   and renames it into place, so `out_dir` either holds a complete image or the previous one.
//!   The manifest is written last, so a directory without one was never finished.
//! - [`build`] replaces an existing `out_dir` only if it is empty or holds a manifest: it never
//!   deletes a directory that is not an image.
//! - [`GuestImage::open`] accepts a directory only if its manifest has format [`FORMAT_VERSION`]
//!   and the three files exist with the sizes the manifest records; [`GuestImage::verify`] also
//!   checks their sha256.
//! - Nothing is downloaded: the kernel, modules, busybox, `mke2fs` and `qemu-img` come from the
//!   host, and an error names the Debian package that provides what is missing.
//! - The initramfs holds no timestamps (all zero), so the same inputs give the same archive.

mod cpio;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use self::cpio::CpioWriter;

/// Format of the image directory this code writes and reads (`format` in `image.json`).
pub const FORMAT_VERSION: u32 = 1;
/// File name of the kernel inside an image directory.
pub const KERNEL_FILE: &str = "vmlinuz";
/// File name of the gzip-compressed newc initramfs inside an image directory.
pub const INITRAMFS_FILE: &str = "initramfs.cpio.gz";
/// File name of the qcow2 root disk inside an image directory.
pub const ROOTFS_FILE: &str = "rootfs.qcow2";
/// File name of the manifest inside an image directory.
pub const MANIFEST_FILE: &str = "image.json";
/// Where the guest's `/init` mounts the root disk (`/dev/vda`).
pub const GUEST_ROOTFS_MOUNT: &str = "/mnt/rootfs";
/// Path (inside the root disk) of a marker file, and its contents.
pub const ROOTFS_MARKER: (&str, &str) = ("etc/dutlab-rootfs", "dutlab guest rootfs\n");
/// Volume label of the root disk.
pub const ROOTFS_LABEL: &str = "dutlab-rootfs";

const CREATED_BY: &str = "dutlab image build";
const ROOTFS_SIZE: &str = "64M";
const HOSTNAME: &str = "dutlab";
/// Modules wanted in the guest, in the order they should load; their dependencies come from
/// `modules.dep`. `crc32c_generic` is ext4's and jbd2's soft dependency (`crypto-crc32c`), which
/// `insmod` does not resolve by itself.
const WANTED_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
    "crc32c_generic",
    "ext4",
];

/// Why an image could not be built or opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    /// A file operation failed.
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// No kernel could be found.
    #[error(
        "no kernel found: {reason}; install the Debian package linux-image-amd64 or pass a kernel path"
    )]
    KernelNotFound { reason: String },
    /// Kernels exist but none can be read (Ubuntu-style mode 0600).
    #[error("cannot read kernel {} (try as root, or pass a readable kernel path)", path.display())]
    KernelUnreadable {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// No busybox binary on the host.
    #[error("busybox not found in /bin or PATH; install the Debian package busybox-static")]
    BusyboxNotFound,
    /// The busybox found needs a dynamic loader the initramfs does not have.
    #[error("{} is dynamically linked (it has an ELF interpreter), the initramfs needs a static busybox; install the Debian package busybox-static", path.display())]
    BusyboxNotStatic { path: PathBuf },
    /// The busybox file is not an x86_64 ELF executable.
    #[error("{} cannot be the guest's busybox: {reason}", path.display())]
    BadBusybox { path: PathBuf, reason: String },
    /// A host tool is not installed.
    #[error("`{tool}` not found in PATH, /usr/sbin or /sbin; install the Debian package {package}")]
    ToolMissing {
        tool: &'static str,
        package: &'static str,
    },
    /// A host tool ran and failed.
    #[error("`{tool}` failed ({status}) making {}: {stderr}", path.display())]
    ToolFailed {
        tool: &'static str,
        path: PathBuf,
        status: ExitStatus,
        stderr: String,
    },
    /// `modules.dep` is malformed or names something unusable.
    #[error("bad kernel module list {}: {reason}", path.display())]
    ModulesDep { path: PathBuf, reason: String },
    /// A kernel module could not be decompressed.
    #[error("cannot decompress kernel module {}: {reason}", path.display())]
    ModuleDecompress { path: PathBuf, reason: String },
    /// `out_dir` exists and is not an image, so `build` will not replace it.
    #[error("{} exists and is not a dutlab image (no {MANIFEST_FILE}); refusing to replace it", path.display())]
    NotAnImage { path: PathBuf },
    /// An image directory lacks one of its files.
    #[error("image in {} is incomplete: {file} is missing; run `dutlab image build`", dir.display())]
    MissingFile { dir: PathBuf, file: &'static str },
    /// The manifest cannot be read as JSON of the expected shape.
    #[error("image manifest {} is invalid; run `dutlab image build`", path.display())]
    BadManifest {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// The manifest is of another format version.
    #[error("image in {} has format {found}, this dutlab reads format {FORMAT_VERSION}; run `dutlab image build`", dir.display())]
    FormatMismatch { dir: PathBuf, found: String },
    /// A file differs from what the manifest records.
    #[error("{file} in {} does not match {MANIFEST_FILE} ({what}); run `dutlab image build`", dir.display())]
    FileMismatch {
        dir: PathBuf,
        file: &'static str,
        what: &'static str,
    },
}

/// What to build and from which host files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSpec {
    /// The image directory to create or replace.
    pub out_dir: PathBuf,
    /// The kernel to copy; `None` takes the newest readable `/boot/vmlinuz-*`.
    pub kernel: Option<PathBuf>,
    /// A static busybox; `None` takes `/bin/busybox` or the first `busybox` in `PATH`.
    pub busybox: Option<PathBuf>,
    /// The kernel's modules directory; `None` takes `/lib/modules/<version>` with the version
    /// from the kernel's file name (`vmlinuz-<version>`) or its boot header.
    pub modules_dir: Option<PathBuf>,
}

impl ImageSpec {
    /// A spec that discovers everything and writes to `out_dir`.
    pub fn new(out_dir: impl Into<PathBuf>) -> Self {
        ImageSpec {
            out_dir: out_dir.into(),
            kernel: None,
            busybox: None,
            modules_dir: None,
        }
    }
}

/// A complete image directory, as checked by [`GuestImage::open`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestImage {
    /// The image directory.
    pub dir: PathBuf,
    /// `dir/vmlinuz`.
    pub kernel: PathBuf,
    /// `dir/initramfs.cpio.gz`.
    pub initramfs: PathBuf,
    /// `dir/rootfs.qcow2`; boot it through an overlay or `snapshot=on` to keep it unchanged.
    pub rootfs: PathBuf,
}

/// Contents of `image.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT_VERSION`] when written.
    pub format: u32,
    /// `"dutlab image build"`.
    pub created_by: String,
    /// The kernel's release (`uname -r` in the guest), when known.
    pub kernel_version: Option<String>,
    /// Kernel modules in the initramfs, in load order, as paths under `/lib/modules/<version>`.
    pub modules: Vec<String>,
    /// Size and sha256 of each file of the image, by file name.
    pub files: BTreeMap<String, FileRecord>,
}

/// Size and digest of one image file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// Length in bytes.
    pub size: u64,
    /// Lower-case hex sha256.
    pub sha256: String,
}

const IMAGE_FILES: [&str; 3] = [KERNEL_FILE, INITRAMFS_FILE, ROOTFS_FILE];

impl GuestImage {
    /// Opens a built image: the manifest must have format [`FORMAT_VERSION`] and list the three
    /// files, which must exist with the recorded sizes. The error names the first missing file.
    pub fn open(dir: &Path) -> Result<GuestImage, ImageError> {
        let image = GuestImage::paths(dir);
        let manifest = image.manifest()?;
        for name in IMAGE_FILES {
            let path = dir.join(name);
            let meta = match fs::metadata(&path) {
                Ok(meta) if meta.is_file() => meta,
                Ok(_) => return Err(missing(dir, name)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(missing(dir, name)),
                Err(source) => return Err(io_err("read", &path, source)),
            };
            let record = manifest.files.get(name).ok_or(ImageError::FileMismatch {
                dir: dir.to_path_buf(),
                file: name,
                what: "not listed",
            })?;
            if record.size != meta.len() {
                return Err(ImageError::FileMismatch {
                    dir: dir.to_path_buf(),
                    file: name,
                    what: "size differs",
                });
            }
        }
        Ok(image)
    }

    /// Reads and checks `image.json` (format version and shape; not the files).
    pub fn manifest(&self) -> Result<Manifest, ImageError> {
        let path = self.dir.join(MANIFEST_FILE);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(missing(&self.dir, MANIFEST_FILE));
            }
            Err(source) => return Err(io_err("read", &path, source)),
        };
        let bad = |source| ImageError::BadManifest {
            path: path.clone(),
            source,
        };
        // Look at the version before the shape, so a newer format is reported as such.
        let value: serde_json::Value = serde_json::from_str(&text).map_err(bad)?;
        let format = value.get("format");
        if format.and_then(serde_json::Value::as_u64) != Some(u64::from(FORMAT_VERSION)) {
            return Err(ImageError::FormatMismatch {
                dir: self.dir.clone(),
                found: format.map_or_else(|| "none".to_owned(), ToString::to_string),
            });
        }
        serde_json::from_value(value).map_err(bad)
    }

    /// Checks the sha256 of every file against the manifest (reads the whole image).
    pub fn verify(&self) -> Result<(), ImageError> {
        let manifest = self.manifest()?;
        for name in IMAGE_FILES {
            let record = manifest.files.get(name).ok_or(ImageError::FileMismatch {
                dir: self.dir.clone(),
                file: name,
                what: "not listed",
            })?;
            let actual = file_record(&self.dir.join(name), false)?;
            if actual.sha256 != record.sha256 {
                return Err(ImageError::FileMismatch {
                    dir: self.dir.clone(),
                    file: name,
                    what: "sha256 differs",
                });
            }
        }
        Ok(())
    }

    fn paths(dir: &Path) -> GuestImage {
        GuestImage {
            dir: dir.to_path_buf(),
            kernel: dir.join(KERNEL_FILE),
            initramfs: dir.join(INITRAMFS_FILE),
            rootfs: dir.join(ROOTFS_FILE),
        }
    }
}

fn missing(dir: &Path, file: &'static str) -> ImageError {
    ImageError::MissingFile {
        dir: dir.to_path_buf(),
        file,
    }
}

fn io_err(action: &'static str, path: &Path, source: io::Error) -> ImageError {
    ImageError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Where images live by default: `$DUTLAB_IMAGE_DIR`, else `$XDG_CACHE_HOME/dutlab/image`,
/// else `$HOME/.cache/dutlab/image` (else `dutlab/image` in the temporary directory).
pub fn default_image_dir() -> PathBuf {
    image_dir_from(|name| std::env::var_os(name))
}

fn image_dir_from(var: impl Fn(&str) -> Option<OsString>) -> PathBuf {
    let set = |name: &str| var(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = set("DUTLAB_IMAGE_DIR") {
        return dir;
    }
    // The XDG spec says relative values are invalid and must be ignored.
    let cache = set("XDG_CACHE_HOME")
        .filter(|p| p.is_absolute())
        .or_else(|| set("HOME").map(|home| home.join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    cache.join("dutlab").join("image")
}

/// The newest readable `/boot/vmlinuz-*`, by version order.
pub fn find_kernel() -> Result<PathBuf, ImageError> {
    find_kernel_in(Path::new("/boot"))
}

fn find_kernel_in(boot: &Path) -> Result<PathBuf, ImageError> {
    let entries = fs::read_dir(boot).map_err(|e| ImageError::KernelNotFound {
        reason: format!("cannot list {}: {e}", boot.display()),
    })?;
    let mut found: Vec<(String, PathBuf)> = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| io_err("list", boot, source))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(version) = name.strip_prefix("vmlinuz-")
            && !version.is_empty()
            && entry.path().is_file()
        {
            found.push((version.to_owned(), entry.path()));
        }
    }
    found.sort_by(|a, b| version_cmp(&b.0, &a.0));
    let mut unreadable = None;
    for (_, path) in &found {
        match File::open(path) {
            Ok(_) => return Ok(path.clone()),
            Err(source) => {
                unreadable.get_or_insert((path.clone(), source));
            }
        }
    }
    match unreadable {
        Some((path, source)) => Err(ImageError::KernelUnreadable { path, source }),
        None => Err(ImageError::KernelNotFound {
            reason: format!("no vmlinuz-* in {}", boot.display()),
        }),
    }
}

/// Compares version strings like `sort -V`: digit runs numerically, other runs as text.
fn version_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    fn chunks(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let bytes = s.as_bytes();
        for i in 1..=bytes.len() {
            if i == bytes.len() || bytes[i].is_ascii_digit() != bytes[start].is_ascii_digit() {
                out.push((bytes[start].is_ascii_digit(), &s[start..i]));
                start = i;
            }
        }
        out
    }
    let (ca, cb) = (chunks(a), chunks(b));
    for ((da, sa), (db, sb)) in ca.iter().zip(cb.iter()) {
        let ord = if *da && *db {
            let (ta, tb) = (sa.trim_start_matches('0'), sb.trim_start_matches('0'));
            ta.len().cmp(&tb.len()).then_with(|| ta.cmp(tb))
        } else {
            sa.cmp(sb)
        };
        if ord.is_ne() {
            return ord;
        }
    }
    ca.len().cmp(&cb.len())
}

fn find_busybox() -> Result<PathBuf, ImageError> {
    let bin = Path::new("/bin/busybox");
    if is_executable(bin) {
        return Ok(bin.to_path_buf());
    }
    find_in_path("busybox").ok_or(ImageError::BusyboxNotFound)
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `PATH`, then the sbin directories a non-root `PATH` on Debian lacks.
fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn find_tool(tool: &'static str, package: &'static str) -> Result<PathBuf, ImageError> {
    find_in_path(tool).ok_or(ImageError::ToolMissing { tool, package })
}

/// Checks that `bytes` is an x86_64 ELF executable without a `PT_INTERP` program header.
fn check_static_busybox(path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    const PT_INTERP: u32 = 3;
    const EM_X86_64: u16 = 62;
    let bad = |reason: &str| ImageError::BadBusybox {
        path: path.to_path_buf(),
        reason: reason.to_owned(),
    };
    if bytes.get(..4) != Some(b"\x7fELF".as_slice()) {
        return Err(bad("not an ELF file"));
    }
    let class64 = match bytes.get(4) {
        Some(1) => false,
        Some(2) => true,
        _ => return Err(bad("unknown ELF class")),
    };
    let little = match bytes.get(5) {
        Some(1) => true,
        Some(2) => false,
        _ => return Err(bad("unknown ELF byte order")),
    };
    let truncated = || bad("truncated ELF headers");
    let int = |at: usize, len: usize| -> Option<u64> {
        let raw = bytes.get(at..at.checked_add(len)?)?;
        let mut v = 0u64;
        for i in 0..len {
            let b = if little { raw[len - 1 - i] } else { raw[i] };
            v = (v << 8) | u64::from(b);
        }
        Some(v)
    };
    let machine = int(0x12, 2).ok_or_else(truncated)?;
    if machine != u64::from(EM_X86_64) {
        return Err(bad(&format!(
            "it is built for ELF machine {machine}, the guest is x86_64"
        )));
    }
    let (phoff, phentsize, phnum) = if class64 {
        (int(0x20, 8), int(0x36, 2), int(0x38, 2))
    } else {
        (int(0x1c, 4), int(0x2a, 2), int(0x2c, 2))
    };
    let (phoff, phentsize, phnum) = (
        phoff.ok_or_else(truncated)?,
        phentsize.ok_or_else(truncated)?,
        phnum.ok_or_else(truncated)?,
    );
    for i in 0..phnum {
        let at = usize::try_from(phoff + i * phentsize).map_err(|_| truncated())?;
        if int(at, 4).ok_or_else(truncated)? == u64::from(PT_INTERP) {
            return Err(ImageError::BusyboxNotStatic {
                path: path.to_path_buf(),
            });
        }
    }
    Ok(())
}

/// The kernel release: from a `vmlinuz-<version>` file name, else from the x86 boot header.
fn kernel_version(kernel: &Path, bytes: &[u8]) -> Option<String> {
    let from_name = kernel
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .map(str::to_owned);
    from_name
        .or_else(|| bzimage_version(bytes))
        .filter(|v| is_shell_safe(v) && !v.contains('/'))
}

/// The first word of the version string an x86 bzImage points to from its setup header.
fn bzimage_version(bytes: &[u8]) -> Option<String> {
    if bytes.get(0x202..0x206)? != b"HdrS" {
        return None;
    }
    let ptr = u16::from_le_bytes([*bytes.get(0x20e)?, *bytes.get(0x20f)?]);
    if ptr == 0 {
        return None;
    }
    let start = 0x200 + usize::from(ptr);
    let tail = bytes.get(start..)?;
    let end = tail.iter().take(256).position(|&b| b == 0 || b == b' ')?;
    let version = std::str::from_utf8(&tail[..end]).ok()?;
    (!version.is_empty()).then(|| version.to_owned())
}

/// True for strings that need no quoting in `/init` (module paths, versions).
fn is_shell_safe(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-+/,".contains(&b))
}

/// Kernel modules chosen for the initramfs.
#[derive(Debug, Default, PartialEq, Eq)]
struct ModulePlan {
    /// Paths from `modules.dep` (relative to the modules directory), dependencies first.
    load_order: Vec<String>,
    /// `modules.dep` lines of those modules, as written to the initramfs (uncompressed names).
    dep_lines: Vec<String>,
    /// Wanted modules built into the kernel.
    builtin: Vec<String>,
    /// Wanted modules the kernel has neither as module nor built in.
    absent: Vec<String>,
}

/// `ext4`, `virtio-pci` and `kernel/fs/ext4/ext4.ko.xz` all name module `ext4` / `virtio_pci`.
fn module_name(path_or_name: &str) -> String {
    let file = path_or_name.rsplit('/').next().unwrap_or(path_or_name);
    let stem = [".ko.xz", ".ko.gz", ".ko.zst", ".ko"]
        .iter()
        .find_map(|ext| file.strip_suffix(ext))
        .unwrap_or(file);
    stem.replace('-', "_")
}

/// The path a module has in the initramfs: compressed modules are stored decompressed.
fn uncompressed_path(path: &str) -> &str {
    path.strip_suffix(".xz")
        .or_else(|| path.strip_suffix(".gz"))
        .or_else(|| path.strip_suffix(".zst"))
        .unwrap_or(path)
}

/// Resolves `wanted` and their dependencies from `dir/modules.dep` (and `dir/modules.builtin`).
fn plan_modules(dir: &Path, wanted: &[&str]) -> Result<ModulePlan, ImageError> {
    let dep_path = dir.join("modules.dep");
    let text = fs::read_to_string(&dep_path).map_err(|source| io_err("read", &dep_path, source))?;
    let bad = |reason: String| ImageError::ModulesDep {
        path: dep_path.clone(),
        reason,
    };
    let mut deps: HashMap<&str, Vec<&str>> = HashMap::new();
    let mut by_name: HashMap<String, &str> = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let (module, rest) = line
            .split_once(':')
            .ok_or_else(|| bad(format!("line {}: no ':'", n + 1)))?;
        let module = module.trim();
        deps.insert(module, rest.split_whitespace().collect());
        by_name.insert(module_name(module), module);
    }
    let builtin_path = dir.join("modules.builtin");
    let builtin: BTreeSet<String> = match fs::read_to_string(&builtin_path) {
        Ok(text) => text.lines().map(module_name).collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => BTreeSet::new(),
        Err(source) => return Err(io_err("read", &builtin_path, source)),
    };

    fn visit<'a>(
        module: &'a str,
        deps: &HashMap<&'a str, Vec<&'a str>>,
        seen: &mut BTreeSet<&'a str>,
        order: &mut Vec<&'a str>,
    ) -> Result<(), String> {
        if !seen.insert(module) {
            return Ok(());
        }
        let list = deps
            .get(module)
            .ok_or_else(|| format!("{module} is a dependency but has no line of its own"))?;
        for dep in list {
            visit(dep, deps, seen, order)?;
        }
        order.push(module);
        Ok(())
    }

    let mut plan = ModulePlan::default();
    let mut seen = BTreeSet::new();
    let mut order = Vec::new();
    for want in wanted {
        let name = module_name(want);
        if let Some(module) = by_name.get(&name) {
            visit(module, &deps, &mut seen, &mut order).map_err(bad)?;
        } else if builtin.contains(&name) {
            plan.builtin.push(name);
        } else {
            plan.absent.push(name);
        }
    }
    for module in &order {
        if !is_shell_safe(module) || module.split('/').any(|p| p == ".." || p.is_empty()) {
            return Err(bad(format!("unusable module path {module:?}")));
        }
        let dep_list: Vec<&str> = deps[module].iter().map(|d| uncompressed_path(d)).collect();
        plan.dep_lines.push(format!(
            "{}: {}",
            uncompressed_path(module),
            dep_list.join(" ")
        ));
        plan.load_order.push((*module).to_owned());
    }
    Ok(plan)
}

/// Reads a module file, decompressing `.xz` and `.gz`.
fn read_module(path: &Path) -> Result<Vec<u8>, ImageError> {
    let file = File::open(path).map_err(|source| io_err("read", path, source))?;
    let mut reader = BufReader::new(file);
    let mut out = Vec::new();
    let name = path.to_string_lossy();
    let decompress_err = |reason: String| ImageError::ModuleDecompress {
        path: path.to_path_buf(),
        reason,
    };
    if name.ends_with(".xz") {
        lzma_rs::xz_decompress(&mut reader, &mut out).map_err(|e| decompress_err(e.to_string()))?;
    } else if name.ends_with(".gz") {
        flate2::read::GzDecoder::new(reader)
            .read_to_end(&mut out)
            .map_err(|e| decompress_err(e.to_string()))?;
    } else if name.ends_with(".zst") {
        return Err(decompress_err(
            "zstd-compressed modules are not supported; use modules that are plain, .xz or .gz"
                .to_owned(),
        ));
    } else {
        reader
            .read_to_end(&mut out)
            .map_err(|source| io_err("read", path, source))?;
    }
    Ok(out)
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
struct Tree {
    nodes: Vec<(String, Node)>,
    dirs: BTreeSet<String>,
}

impl Tree {
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

/// Kernel modules to put in the initramfs.
struct GuestModules {
    version: String,
    /// (path in `modules.dep`, contents)
    files: Vec<(String, Vec<u8>)>,
    dep_lines: Vec<String>,
}

impl GuestModules {
    fn guest_paths(&self) -> Vec<String> {
        self.files
            .iter()
            .map(|(path, _)| uncompressed_path(path).to_owned())
            .collect()
    }
}

fn init_script(modules: Option<&GuestModules>) -> String {
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
         ip link set lo up\n\
         exec /sbin/init\n"
    );
    s
}

const INITTAB: &str = r#"# busybox init of the dutlab guest
ttyS0::respawn:/sbin/getty -L 115200 ttyS0 vt100
::ctrlaltdel:/sbin/reboot
::shutdown:/bin/sh -c "umount -r /mnt/rootfs 2>/dev/null; sync"
"#;

const PROFILE: &str = "\
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=${HOME:-/root}
PS1='\\w # '
export PS1
";

fn initramfs_tree(busybox: Vec<u8>, modules: Option<&GuestModules>) -> Tree {
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

/// Builds a complete image into `spec.out_dir`, replacing any image there; `progress` gets one
/// short line per step. See the module documentation for what the image holds.
pub fn build(spec: &ImageSpec, progress: &mut dyn FnMut(&str)) -> Result<GuestImage, ImageError> {
    // Find everything first, so a missing tool fails before any work.
    let kernel = match &spec.kernel {
        Some(path) => path.clone(),
        None => find_kernel()?,
    };
    let busybox_path = match &spec.busybox {
        Some(path) => path.clone(),
        None => find_busybox()?,
    };
    let mke2fs = find_tool("mke2fs", "e2fsprogs")?;
    let qemu_img = find_tool("qemu-img", "qemu-utils")?;

    let kernel_bytes = fs::read(&kernel).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => ImageError::KernelNotFound {
            reason: format!("{} does not exist", kernel.display()),
        },
        _ => ImageError::KernelUnreadable {
            path: kernel.clone(),
            source,
        },
    })?;
    let version = kernel_version(&kernel, &kernel_bytes);
    progress(&format!(
        "using kernel {} ({})",
        kernel.display(),
        version.as_deref().unwrap_or("version unknown")
    ));
    let busybox =
        fs::read(&busybox_path).map_err(|source| io_err("read", &busybox_path, source))?;
    check_static_busybox(&busybox_path, &busybox)?;
    progress(&format!("using busybox {}", busybox_path.display()));

    let modules = collect_modules(spec, version.as_deref(), progress)?;

    let out_dir = &spec.out_dir;
    let parent = match out_dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    check_replaceable(out_dir)?;
    fs::create_dir_all(&parent).map_err(|source| io_err("create", &parent, source))?;
    let name = out_dir
        .file_name()
        .map_or_else(|| "image".into(), |n| n.to_string_lossy().into_owned());
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}.tmp-"))
        .tempdir_in(&parent)
        .map_err(|source| io_err("create a temporary directory in", &parent, source))?;
    let staged = GuestImage::paths(tmp.path());

    progress("copying kernel");
    write_file(&staged.kernel, &kernel_bytes)?;
    drop(kernel_bytes);

    let tree = initramfs_tree(busybox, modules.as_ref());
    progress(&format!("writing initramfs ({} files)", tree.nodes.len()));
    write_initramfs(&tree, &staged.initramfs)?;
    drop(tree);

    progress("making rootfs.qcow2");
    make_rootfs(tmp.path(), &mke2fs, &qemu_img, &staged.rootfs)?;

    progress("writing image.json");
    let mut files = BTreeMap::new();
    for file in IMAGE_FILES {
        files.insert(file.to_owned(), file_record(&tmp.path().join(file), true)?);
    }
    let manifest = Manifest {
        format: FORMAT_VERSION,
        created_by: CREATED_BY.to_owned(),
        kernel_version: version,
        modules: modules
            .as_ref()
            .map(GuestModules::guest_paths)
            .unwrap_or_default(),
        files,
    };
    let mut json = serde_json::to_vec_pretty(&manifest).expect("a manifest always serializes");
    json.push(b'\n');
    write_file(&tmp.path().join(MANIFEST_FILE), &json)?;
    sync_dir(tmp.path())?;

    install(tmp, out_dir, &parent, progress)?;
    progress(&format!("image ready in {}", out_dir.display()));
    GuestImage::open(out_dir)
}

fn collect_modules(
    spec: &ImageSpec,
    version: Option<&str>,
    progress: &mut dyn FnMut(&str),
) -> Result<Option<GuestModules>, ImageError> {
    let dir = match (&spec.modules_dir, version) {
        (Some(dir), _) => dir.clone(),
        (None, Some(version)) => {
            let dir = Path::new("/lib/modules").join(version);
            if !dir.join("modules.dep").is_file() {
                progress(&format!(
                    "no kernel modules: {} has no modules.dep; the guest gets only what is built into the kernel",
                    dir.display()
                ));
                return Ok(None);
            }
            dir
        }
        (None, None) => {
            progress("no kernel modules: kernel version unknown; pass the modules directory");
            return Ok(None);
        }
    };
    let version = version
        .map(str::to_owned)
        .or_else(|| dir.file_name().map(|n| n.to_string_lossy().into_owned()))
        .filter(|v| is_shell_safe(v) && !v.contains('/'))
        .ok_or_else(|| ImageError::ModulesDep {
            path: dir.clone(),
            reason: "cannot tell the kernel version".to_owned(),
        })?;
    let plan = plan_modules(&dir, WANTED_MODULES)?;
    for name in &plan.absent {
        progress(&format!(
            "kernel has no module {name} (neither in modules.dep nor built in); skipping it"
        ));
    }
    let mut files = Vec::with_capacity(plan.load_order.len());
    for path in &plan.load_order {
        files.push((path.clone(), read_module(&dir.join(path))?));
    }
    progress(&format!(
        "adding {} kernel modules from {}",
        files.len(),
        dir.display()
    ));
    Ok(Some(GuestModules {
        version,
        files,
        dep_lines: plan.dep_lines,
    }))
}

/// Fails unless `out_dir` is absent, an empty directory, or a directory with a manifest.
fn check_replaceable(out_dir: &Path) -> Result<(), ImageError> {
    match fs::symlink_metadata(out_dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(io_err("inspect", out_dir, source)),
        Ok(meta) if !meta.is_dir() => Err(ImageError::NotAnImage {
            path: out_dir.to_path_buf(),
        }),
        Ok(_) => {
            let mut entries =
                fs::read_dir(out_dir).map_err(|source| io_err("list", out_dir, source))?;
            if entries.next().is_none() || out_dir.join(MANIFEST_FILE).is_file() {
                Ok(())
            } else {
                Err(ImageError::NotAnImage {
                    path: out_dir.to_path_buf(),
                })
            }
        }
    }
}

/// Renames the finished `tmp` to `out_dir`, moving an old image aside first and deleting it after.
fn install(
    tmp: tempfile::TempDir,
    out_dir: &Path,
    parent: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<(), ImageError> {
    check_replaceable(out_dir)?;
    let mut old = None;
    if out_dir.exists() {
        // An empty placeholder, replaced by rename(2) since it is an empty directory.
        let aside = tempfile::Builder::new()
            .prefix(".old-image-")
            .tempdir_in(parent)
            .map_err(|source| io_err("create a temporary directory in", parent, source))?
            .keep();
        fs::rename(out_dir, &aside).map_err(|source| io_err("move aside", out_dir, source))?;
        old = Some(aside);
    }
    if let Err(source) = fs::rename(tmp.path(), out_dir) {
        if let Some(aside) = &old {
            // Put the previous image back; if even that fails it stays beside out_dir.
            let _ = fs::rename(aside, out_dir);
        }
        return Err(io_err("move the new image to", out_dir, source));
    }
    let _ = tmp.keep();
    sync_dir(parent)?;
    if let Some(aside) = old
        && let Err(e) = fs::remove_dir_all(&aside)
    {
        progress(&format!(
            "cannot delete the previous image at {}: {e}",
            aside.display()
        ));
    }
    Ok(())
}

fn write_file(path: &Path, data: &[u8]) -> Result<(), ImageError> {
    let mut file = File::create(path).map_err(|source| io_err("create", path, source))?;
    file.write_all(data)
        .and_then(|()| file.sync_all())
        .map_err(|source| io_err("write", path, source))
}

fn write_initramfs(tree: &Tree, path: &Path) -> Result<(), ImageError> {
    let file = File::create(path).map_err(|source| io_err("create", path, source))?;
    let gz = flate2::write::GzEncoder::new(BufWriter::new(file), flate2::Compression::default());
    tree.write(gz)
        .and_then(flate2::write::GzEncoder::finish)
        .and_then(|buf| buf.into_inner().map_err(io::IntoInnerError::into_error))
        .and_then(|file| file.sync_all())
        .map_err(|source| io_err("write", path, source))
}

fn make_rootfs(
    work: &Path,
    mke2fs: &Path,
    qemu_img: &Path,
    rootfs: &Path,
) -> Result<(), ImageError> {
    let staging = work.join(".rootfs-staging");
    let marker = staging.join(ROOTFS_MARKER.0);
    for dir in [staging.join("tests"), staging.join("etc")] {
        fs::create_dir_all(&dir).map_err(|source| io_err("create", &dir, source))?;
    }
    fs::write(&marker, ROOTFS_MARKER.1).map_err(|source| io_err("write", &marker, source))?;
    let raw = work.join(".rootfs.raw");
    run_tool(
        "mke2fs",
        Command::new(mke2fs)
            .args([
                "-q",
                "-F",
                "-t",
                "ext4",
                "-m",
                "0",
                "-L",
                ROOTFS_LABEL,
                "-d",
            ])
            .arg(&staging)
            .arg(&raw)
            .arg(ROOTFS_SIZE),
        &raw,
    )?;
    run_tool(
        "qemu-img",
        Command::new(qemu_img)
            .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
            .arg(&raw)
            .arg(rootfs),
        rootfs,
    )?;
    fs::remove_file(&raw).map_err(|source| io_err("remove", &raw, source))?;
    fs::remove_dir_all(&staging).map_err(|source| io_err("remove", &staging, source))
}

fn run_tool(tool: &'static str, command: &mut Command, making: &Path) -> Result<(), ImageError> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|source| io_err("run", Path::new(command.get_program()), source))?;
    if output.status.success() {
        return Ok(());
    }
    let mut stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    if stderr.is_empty() {
        stderr = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    }
    if stderr.len() > 2000 {
        let cut = stderr.ceil_char_boundary(stderr.len() - 2000);
        stderr = format!("...{}", &stderr[cut..]);
    }
    Err(ImageError::ToolFailed {
        tool,
        path: making.to_path_buf(),
        status: output.status,
        stderr,
    })
}

/// Size and sha256 of `path`; with `sync`, also fsyncs it.
fn file_record(path: &Path, sync: bool) -> Result<FileRecord, ImageError> {
    let mut file = File::open(path).map_err(|source| io_err("read", path, source))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut size = 0u64;
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|source| io_err("read", path, source))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    if sync {
        file.sync_all()
            .map_err(|source| io_err("sync", path, source))?;
    }
    let mut sha256 = String::with_capacity(64);
    for byte in hasher.finalize() {
        let _ = write!(sha256, "{byte:02x}");
    }
    Ok(FileRecord { size, sha256 })
}

fn sync_dir(dir: &Path) -> Result<(), ImageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| io_err("sync", dir, source))
}

#[cfg(test)]
mod tests;
