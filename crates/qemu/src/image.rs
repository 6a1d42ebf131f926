//! Guest image: the kernel, initramfs and disk that the QEMU virtual DUT boots, and the
//! `dutlab image build` backend that makes them from what the host has installed.
//!
//! An image is a directory holding:
//!
//! | file | what |
//! |---|---|
//! | `vmlinuz` | a copy of the host's Debian kernel |
//! | `initramfs.cpio.gz` | busybox (every applet linked), dropbear with its shared libraries, a few `/etc` files (`os-release` with `ID=dutlab`), `/init`, and the kernel modules for virtio block/net and ext4 |
//! | `rootfs.qcow2` | a small ext4 disk (label `dutlab-rootfs`) that `/init` mounts at `/mnt/rootfs` |
//! | `image.json` | the [`Manifest`]: format version, kernel version, sizes and sha256 of the three files |
//!
//! The guest boots with `console=ttyS0`; `/init` mounts `/proc`, `/sys`, `/dev`, `/dev/pts`, `/tmp`
//! and `/run`, loads the modules, mounts `/dev/vda` if present, brings up `lo` and `eth0`
//! (10.0.2.15 on QEMU's user-mode network, when the DUT has a NIC) and hands PID 1 to busybox
//! init, which respawns `getty` on `ttyS0` and the SSH server (dropbear on port 22, public keys
//! in `/root/.ssh/authorized_keys` only, host key made at its first start). Logging in as
//! `root` on the console needs no password and gives a shell whose prompt ends in `# `.
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
//! - Nothing is downloaded: the kernel, modules, busybox, dropbear, `mke2fs` and `qemu-img` come
//!   from the host, and an error names the Debian package that provides what is missing.
//! - The initramfs holds no timestamps (all zero), so the same inputs give the same archive.
//!
//! This module holds the image directory, its manifest, the host tool and busybox checks, and
//! [`build`], which puts the parts together. The `kernel` submodule finds the kernel and resolves
//! its modules, `initramfs` lays out and writes the initramfs, and `cpio` is its archive format.

mod cpio;
mod initramfs;
mod kernel;
mod ssh;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use self::initramfs::{initramfs_tree, write_initramfs};
pub use self::kernel::find_kernel;
use self::kernel::{GuestModules, collect_modules, kernel_version};
pub use self::ssh::GUEST_ADDRESS;
use self::ssh::collect_ssh_server;

/// Format of the image directory this code writes and reads (`format` in `image.json`). It
/// changes when the files or the guest's contents change in a way the runner or tests rely
/// on, so an older image is refused (and rebuilt by the tests) rather than half working:
/// 1 first image; 2 adds `/etc/os-release`; 3 adds the network and the SSH server.
pub const FORMAT_VERSION: u32 = 3;
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
    /// A binary's shared libraries could not be listed.
    #[error("shared libraries of {}: {reason}", binary.display())]
    SharedLibrary { binary: PathBuf, reason: String },
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

/// Writes to `out` (a new file) the image's initramfs followed by a newc cpio holding
/// `/root/.ssh/authorized_keys` (0600, in 0700 directories) with `keys`, one per line. Linux
/// unpacks every archive of a concatenated initramfs in turn, so the guest boots the image
/// unchanged with the keys authorized, and nothing is typed on its console. The cpio starts
/// at a 4-byte boundary (zero padding, which the kernel skips), as newc requires.
///
/// Each key must be a single line (the caller checks the key format); one holding a line
/// break or NUL is refused.
pub fn initrd_with_keys(initramfs: &Path, keys: &[String], out: &Path) -> Result<(), ImageError> {
    let invalid = |reason: &str| {
        io_err(
            "add SSH keys to",
            out,
            io::Error::new(io::ErrorKind::InvalidInput, reason.to_owned()),
        )
    };
    if keys.iter().any(|k| k.contains(['\n', '\r', '\0'])) {
        return Err(invalid("an SSH key holds a line break or NUL"));
    }
    let mut text = keys.join("\n");
    text.push('\n');
    let mut image = fs::read(initramfs).map_err(|source| io_err("read", initramfs, source))?;
    image.resize(image.len().next_multiple_of(4), 0);
    let mut archive = cpio::CpioWriter::new(image);
    let entries = archive
        .dir("root", 0o700)
        .and_then(|()| archive.dir("root/.ssh", 0o700))
        .and_then(|()| archive.file("root/.ssh/authorized_keys", 0o600, text.as_bytes()));
    entries.map_err(|source| io_err("add SSH keys to", out, source))?;
    let bytes = archive
        .finish()
        .map_err(|source| io_err("add SSH keys to", out, source))?;
    let mut file = File::options()
        .write(true)
        .create_new(true)
        .open(out)
        .map_err(|source| io_err("create", out, source))?;
    file.write_all(&bytes)
        .and_then(|()| file.sync_all())
        .map_err(|source| io_err("write", out, source))
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
    let ssh_server = collect_ssh_server(progress)?;

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

    let tree = initramfs_tree(busybox, modules.as_ref(), ssh_server);
    progress(&format!("writing initramfs ({} files)", tree.len()));
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
