//! The guest's kernel and its modules, taken from the host: which `/boot/vmlinuz-*` to copy, the
//! kernel's release, and which kernel modules go into the initramfs, resolved through the
//! modules directory's `modules.dep` and `modules.builtin` and read decompressed.
//!
//! Invariants:
//! - [`find_kernel`] takes the newest `vmlinuz-*` (by `sort -V` order, [`version_cmp`]) that can
//!   be opened; when kernels exist but none can be read the error says so
//!   ([`ImageError::KernelUnreadable`]) instead of claiming there is no kernel.
//! - Every kernel version and module path handed out is [`is_shell_safe`] (so `/init` uses them
//!   unquoted); a version has no `/`, and a module path has no `..` or empty component, so
//!   everything stays under `/lib/modules/<version>`.
//! - [`plan_modules`] puts each module once and after all its `modules.dep` dependencies, wanted
//!   modules in [`WANTED_MODULES`] order. A wanted module that is built in, or that the kernel
//!   lacks (reported), is skipped, never an error; a dependency without a line of its own is one.
//! - Modules are stored decompressed (`.xz`, `.gz`; `.zst` is refused) under their path without
//!   the compression suffix ([`uncompressed_path`]), and the guest's `modules.dep` names those
//!   paths.
//! - Without a `modules.dep` to read (none in `/lib/modules/<version>`, or no version known and no
//!   modules directory given) the guest gets only what is built into the kernel; that is reported,
//!   not an error.

use std::collections::{BTreeSet, HashMap};
use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use super::{ImageError, ImageSpec, io_err};

/// Modules wanted in the guest, in the order they should load; their dependencies come from
/// `modules.dep`. `crc32c_generic` is ext4's and jbd2's soft dependency (`crypto-crc32c`), which
/// `insmod` does not resolve by itself.
pub(super) const WANTED_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
    "crc32c_generic",
    "ext4",
];

/// The newest readable `/boot/vmlinuz-*`, by version order.
pub fn find_kernel() -> Result<PathBuf, ImageError> {
    find_kernel_in(Path::new("/boot"))
}

pub(super) fn find_kernel_in(boot: &Path) -> Result<PathBuf, ImageError> {
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
pub(super) fn version_cmp(a: &str, b: &str) -> std::cmp::Ordering {
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

/// The kernel release: from a `vmlinuz-<version>` file name, else from the x86 boot header.
pub(super) fn kernel_version(kernel: &Path, bytes: &[u8]) -> Option<String> {
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
pub(super) fn bzimage_version(bytes: &[u8]) -> Option<String> {
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

/// Kernel modules to put in the initramfs.
pub(super) struct GuestModules {
    pub(super) version: String,
    /// (path in `modules.dep`, contents)
    pub(super) files: Vec<(String, Vec<u8>)>,
    pub(super) dep_lines: Vec<String>,
}

impl GuestModules {
    pub(super) fn guest_paths(&self) -> Vec<String> {
        self.files
            .iter()
            .map(|(path, _)| uncompressed_path(path).to_owned())
            .collect()
    }
}

pub(super) fn collect_modules(
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

/// Kernel modules chosen for the initramfs.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct ModulePlan {
    /// Paths from `modules.dep` (relative to the modules directory), dependencies first.
    pub(super) load_order: Vec<String>,
    /// `modules.dep` lines of those modules, as written to the initramfs (uncompressed names).
    pub(super) dep_lines: Vec<String>,
    /// Wanted modules built into the kernel.
    pub(super) builtin: Vec<String>,
    /// Wanted modules the kernel has neither as module nor built in.
    pub(super) absent: Vec<String>,
}

/// `ext4`, `virtio-pci` and `kernel/fs/ext4/ext4.ko.xz` all name module `ext4` / `virtio_pci`.
pub(super) fn module_name(path_or_name: &str) -> String {
    let file = path_or_name.rsplit('/').next().unwrap_or(path_or_name);
    let stem = [".ko.xz", ".ko.gz", ".ko.zst", ".ko"]
        .iter()
        .find_map(|ext| file.strip_suffix(ext))
        .unwrap_or(file);
    stem.replace('-', "_")
}

/// The path a module has in the initramfs: compressed modules are stored decompressed.
pub(super) fn uncompressed_path(path: &str) -> &str {
    path.strip_suffix(".xz")
        .or_else(|| path.strip_suffix(".gz"))
        .or_else(|| path.strip_suffix(".zst"))
        .unwrap_or(path)
}

/// Resolves `wanted` and their dependencies from `dir/modules.dep` (and `dir/modules.builtin`).
pub(super) fn plan_modules(dir: &Path, wanted: &[&str]) -> Result<ModulePlan, ImageError> {
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
pub(super) fn read_module(path: &Path) -> Result<Vec<u8>, ImageError> {
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
