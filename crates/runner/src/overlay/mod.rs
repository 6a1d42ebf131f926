//! The test overlay: everything the DUT needs to run a job's test definitions.
//!
//! Before anything boots, every test definition is resolved (inline, or read from a git
//! repository cloned on the host), and packed with the `lava-*` helper scripts into one tar
//! that unpacks under [`OVERLAY_ROOT`] in the DUT (the last two kinds of entries below are
//! made in the DUT when a run starts):
//!
//! ```text
//! /lava-dutlab/bin/lava-test-case, lava-test-set, lava-test-reference, lava-test-raise,
//!                  lava-common                  the helpers (and what they source)
//! /lava-dutlab/tests/0_smoke/.dutlab-run.sh     generated: runs the two below (run_script)
//! /lava-dutlab/tests/0_smoke/.dutlab-install.sh written by .dutlab-run.sh in the DUT from
//!                                               install.steps (only when there are some)
//! /lava-dutlab/tests/0_smoke/.dutlab-steps.sh   written by .dutlab-run.sh from run.steps
//! /lava-dutlab/tests/1_other/...                the repository's files (git definitions)
//! /lava-dutlab/results/0_smoke-<epoch>/         made in the DUT: the run's LAVA_RESULT_DIR
//!                                               (return_code, install_return_code,
//!                                               results/<case>/result, measurement, units)
//! ```
//!
//! Invariants:
//! - A run id is `<index>_<name>`, the index counting definitions across the whole job (LAVA).
//! - Parameter values reach the DUT shell single-quoted: they are data, never evaluated by
//!   the generated script itself; names must be shell identifiers.
//! - The packed overlay (a tar) never exceeds [`MAX_OVERLAY`] bytes; a larger one is a job
//!   error. Over the console it travels gzip-compressed, capped at [`MAX_CONSOLE_OVERLAY`]
//!   (see [`OverlayChannel`]).
//! - Nothing in here runs a host shell: git is executed with an argument vector.
//! - Locally (`Reach::Local`) a repository is any path or URL git accepts. In the lab only
//!   remote `https://` URLs are cloned, to an address the host policy allows, pinned
//!   (`http.curloptResolve`), with no redirect, no other protocol, and git run with an empty
//!   environment: no system or global config, `HOME` in the job's work directory, no
//!   credential helper, prompt or askpass, no proxy.
//! - A clone goes to `work/repos/<index>`: nothing of the job's text names a host path.
//! - A repository given as `artifact:sha256:<hex>` (a git bundle uploaded with the job) is
//!   cloned only from the file the host policy admitted for that digest, with the lab's git
//!   settings and the file transport allowed for that clone alone.
//! - A `from: url` archive is fetched under the same host policy as an image (an allowed
//!   http(s) destination, or in the lab a path inside `image_dirs`), decompressed within the
//!   same bounds, and unpacked into `work/repos/<index>` by dutlab itself: only regular files
//!   and directories, every member path relative with no `..` (after `strip-components`),
//!   files created new with at most their owner's and the executable bits of their mode, at
//!   most [`MAX_ARCHIVE_MEMBERS`] members and the decompression limit in bytes.

use crate::policy::{HostPolicy, Reach};
use jobspec::{Compression, DefinitionSource, ImageSource, Job, LavaSignal, TestDefinition};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

mod script;
mod sources;
#[cfg(test)]
mod tests;

use script::{is_identifier, unique_token};
pub use script::{quote, run_script};
use sources::{ArchiveSource, GitSource, read_inside};
pub use sources::{LabRemote, lab_remote};

/// Where the overlay unpacks in the DUT.
pub const OVERLAY_ROOT: &str = "/lava-dutlab";
/// Largest overlay (tar bytes) sent to a DUT.
pub const MAX_OVERLAY: usize = 256 << 20;
/// Largest compressed overlay typed over a serial console (base64 lines, ~1 s per 100 KiB).
pub const MAX_CONSOLE_OVERLAY: usize = 8 << 20;

/// How the packed overlay reaches the DUT.
///
/// `Disk`: written to a read-only raw virtio disk (serial [`OVERLAY_DISK_SERIAL`]) attached at
/// boot; the DUT streams it from the block device into `tar`. A DUT whose kernel shows no
/// such disk falls back to the console when the overlay fits [`MAX_CONSOLE_OVERLAY`].
/// `Console`: base64 lines typed into the shell, for DUTs with nothing but a shell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OverlayChannel {
    #[default]
    Disk,
    Console,
}

/// The virtio serial of the overlay disk, looked up in the DUT's `/sys/block/*/serial`.
pub const OVERLAY_DISK_SERIAL: &str = "dutlab-overlay";

const HELPERS: [(&str, &str); 5] = [
    ("lava-common", include_str!("../../dut/lava-common")),
    ("lava-test-case", include_str!("../../dut/lava-test-case")),
    ("lava-test-set", include_str!("../../dut/lava-test-set")),
    (
        "lava-test-reference",
        include_str!("../../dut/lava-test-reference"),
    ),
    ("lava-test-raise", include_str!("../../dut/lava-test-raise")),
];

/// One test definition ready to run.
#[derive(Debug, Clone)]
pub struct TestRun {
    /// `<index>_<name>`.
    pub id: String,
    pub definition: TestDefinition,
    /// Definition defaults overridden by the job's params.
    pub params: BTreeMap<String, String>,
    /// Host directory with the repository files (git definitions).
    pub files: Option<PathBuf>,
    pub uuid: String,
    /// The definition's `lava-signal`: with `kmsg`, the run's signals go to `/dev/kmsg`.
    pub lava_signal: LavaSignal,
    /// Where the overlay unpacks in the DUT: [`OVERLAY_ROOT`], or a secondary connection's
    /// own directory ([`Overlay::relocate`]).
    pub root: String,
}

impl TestRun {
    /// The directory of this run in the DUT.
    pub fn dut_dir(&self) -> String {
        format!("{}/tests/{}", self.root, self.id)
    }

    /// The command that runs this test definition in the DUT shell.
    pub fn command(&self) -> String {
        format!("sh {}/.dutlab-run.sh", self.dut_dir())
    }
}

/// Test runs per test action (keyed by action index).
#[derive(Debug, Default)]
pub struct Overlay {
    pub runs: BTreeMap<usize, Vec<TestRun>>,
    /// Warnings of the definitions read from git repositories (inline definitions warn with
    /// the job), for people: `actions[1].test.definitions[0].path: FILE: FIELD: MESSAGE`,
    /// control characters replaced.
    pub warnings: Vec<String>,
    /// Where the overlay unpacks in the DUT; `None`: [`OVERLAY_ROOT`].
    root: Option<String>,
    /// More helper scripts for `bin/` beside the `lava-test-*` ones, as `(file name, text)`:
    /// a MultiNode member's `lava-send`, `lava-wait`, ... (names from dutlab's own table).
    pub helpers: Vec<(String, String)>,
}

/// Why the overlay could not be prepared. Always the job's fault or a missing tool on the host.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct OverlayError {
    pub field: String,
    pub reason: String,
}

impl Overlay {
    /// Resolves every test definition of the job. `job_dir` anchors relative repository
    /// paths; clones go under `work_dir`. The warnings of definitions read from git go to
    /// [`Overlay::warnings`] (job validation never sees those files).
    pub async fn prepare(
        job: &Job,
        job_dir: &Path,
        work_dir: &Path,
        policy: &HostPolicy,
    ) -> Result<Overlay, OverlayError> {
        let mut overlay = Overlay::default();
        let mut index = 0usize;
        let token = unique_token();
        for (action_index, action) in job.actions.iter().enumerate() {
            let jobspec::Action::Test(test) = action else {
                continue;
            };
            let mut runs = Vec::new();
            for (d, def) in test.definitions.iter().enumerate() {
                let field = format!("actions[{action_index}].test.definitions[{d}]");
                let id = format!("{index}_{}", def.name);
                let (definition, files) =
                    match &def.source {
                        DefinitionSource::Inline(definition) => (definition.clone(), None),
                        DefinitionSource::Url {
                            source,
                            compression,
                            strip_components,
                        } => {
                            let dir = work_dir.join("repos").join(index.to_string());
                            let deadline = tokio::time::Instant::now() + job.timeouts.job;
                            let archive = ArchiveSource {
                                source,
                                compression: *compression,
                                strip_components: *strip_components,
                            };
                            archive
                                .fetch(job_dir, work_dir, index, &dir, policy, deadline)
                                .await
                                .map_err(|reason| OverlayError {
                                    field: format!("{field}.repository"),
                                    reason,
                                })?;
                            let file = dir.join(&def.path);
                            let text = read_inside(&dir, &file).map_err(|reason| OverlayError {
                                field: format!("{field}.path"),
                                reason,
                            })?;
                            let definition = jobspec::parse_test_definition(&def.path, &text)
                                .map_err(|e| OverlayError {
                                    field: format!("{field}.path"),
                                    reason: e.to_string(),
                                })?;
                            (definition, Some(dir))
                        }
                        DefinitionSource::Git {
                            repository,
                            revision,
                            branch,
                            history,
                        } => {
                            let dir = work_dir.join("repos").join(index.to_string());
                            let source = GitSource {
                                repository,
                                revision: revision.as_deref(),
                                branch: branch.as_deref(),
                            };
                            source.run(job_dir, work_dir, &dir, policy).await.map_err(
                                |reason| OverlayError {
                                    field: format!("{field}.repository"),
                                    reason,
                                },
                            )?;
                            let file = dir.join(&def.path);
                            let text = read_inside(&dir, &file).map_err(|reason| OverlayError {
                                field: format!("{field}.path"),
                                reason,
                            })?;
                            let definition = jobspec::parse_test_definition(&def.path, &text)
                                .map_err(|e| OverlayError {
                                    field: format!("{field}.path"),
                                    reason: e.to_string(),
                                })?;
                            if !*history {
                                let _ = std::fs::remove_dir_all(dir.join(".git"));
                            }
                            (definition, Some(dir))
                        }
                    };
                // From git only: an inline definition's warnings are the job's own.
                if files.is_some() {
                    overlay.warnings.extend(definition.warnings.iter().map(|w| {
                        crate::report::printable(&format!("{field}.path: {}: {w}", def.path))
                    }));
                }
                let mut params = definition.params.clone();
                params.extend(def.params.clone());
                for name in params.keys() {
                    if !is_identifier(name) {
                        return Err(OverlayError {
                            field: format!("{field}.params.{name}"),
                            reason: "a parameter name must be a shell variable name \
                                     (letters, digits, '_', not starting with a digit)"
                                .into(),
                        });
                    }
                }
                runs.push(TestRun {
                    lava_signal: def.lava_signal,
                    uuid: format!("{token}_{index}"),
                    id,
                    definition,
                    params,
                    files,
                    root: OVERLAY_ROOT.to_string(),
                });
                index += 1;
            }
            overlay.runs.insert(action_index, runs);
        }
        Ok(overlay)
    }

    /// Whether there is anything to send to the DUT.
    /// Where the overlay unpacks in the DUT.
    pub fn root(&self) -> &str {
        self.root.as_deref().unwrap_or(OVERLAY_ROOT)
    }

    /// Moves the overlay (and every run in it) to unpack under `root` instead of
    /// [`OVERLAY_ROOT`]: a secondary connection shares its host's device with the host's own
    /// test shell and the other connections, so each gets its own directory. `root` is an
    /// absolute path of `[-_.a-zA-Z0-9/]` characters (the caller builds it from checked ids).
    pub fn relocate(&mut self, root: &str) -> Result<(), OverlayError> {
        let clean = root.starts_with('/')
            && root.len() > 1
            && root
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b))
            && !root.split('/').any(|c| c == "..");
        if !clean {
            return Err(OverlayError {
                field: "overlay".into(),
                reason: format!("{root:?} is not a plain absolute path for the overlay"),
            });
        }
        self.root = Some(root.to_string());
        for run in self.runs.values_mut().flatten() {
            run.root = root.to_string();
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.runs.values().all(Vec::is_empty)
    }

    /// Packs helpers and every run into one tar (uncompressed: a DUT under TCG unpacks a
    /// plain tar from a disk far faster than it inflates one).
    pub fn pack(&self) -> Result<PackedOverlay, OverlayError> {
        let fail = |e: std::io::Error| OverlayError {
            field: "overlay".into(),
            reason: e.to_string(),
        };
        let mut tar = tar::Builder::new(Vec::new());
        tar.follow_symlinks(false);
        let root = self.root().trim_start_matches('/');
        let extra = self.helpers.iter().map(|(n, b)| (n.as_str(), b.as_str()));
        for (name, body) in HELPERS.into_iter().chain(extra) {
            append(
                &mut tar,
                &format!("{root}/bin/{name}"),
                body.as_bytes(),
                0o755,
            )
            .map_err(fail)?;
        }
        for run in self.runs.values().flatten() {
            let dir = format!("{root}/tests/{}", run.id);
            if let Some(files) = &run.files {
                tar.append_dir_all(&dir, files).map_err(fail)?;
            }
            append(
                &mut tar,
                &format!("{dir}/.dutlab-run.sh"),
                run_script(run).as_bytes(),
                0o755,
            )
            .map_err(fail)?;
            if tar.get_ref().len() > MAX_OVERLAY {
                break;
            }
        }
        let bytes = tar.into_inner().map_err(fail)?;
        if bytes.len() > MAX_OVERLAY {
            return Err(OverlayError {
                field: "actions[].test.definitions".into(),
                reason: format!(
                    "the test overlay is more than the {MAX_OVERLAY} bytes dutlab sends to a \
                     DUT; use smaller repositories or `history: false`"
                ),
            });
        }
        Ok(PackedOverlay {
            tar: bytes,
            root: self.root().to_string(),
        })
    }
}

/// The packed overlay: a tar that unpacks at `/` in the DUT.
#[derive(Debug, Clone)]
pub struct PackedOverlay {
    tar: Vec<u8>,
    /// Where it unpacks in the DUT.
    root: String,
}

impl PackedOverlay {
    /// Where the tar unpacks in the DUT (its members are under this path, without the `/`).
    pub fn root(&self) -> &str {
        &self.root
    }

    /// The tar compressed with gzip (a secondary connection copies it as a file).
    pub fn gzip(&self) -> Result<Vec<u8>, OverlayError> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&self.tar)
            .and_then(|()| gz.finish())
            .map_err(|e| OverlayError {
                field: "overlay".into(),
                reason: e.to_string(),
            })
    }

    /// The tar itself (what the overlay disk holds).
    pub fn tar(&self) -> &[u8] {
        &self.tar
    }

    /// The tar compressed with gzip, for the console; refused when over
    /// [`MAX_CONSOLE_OVERLAY`].
    pub fn for_console(&self) -> Result<Vec<u8>, OverlayError> {
        let compressed = self.gzip()?;
        if compressed.len() > MAX_CONSOLE_OVERLAY {
            return Err(OverlayError {
                field: "actions[].test.definitions".into(),
                reason: format!(
                    "the test overlay is {} bytes compressed, more than the \
                     {MAX_CONSOLE_OVERLAY} a console transfer allows (the device has no \
                     overlay disk, or the DUT's kernel shows none); use smaller repositories \
                     or `history: false`",
                    compressed.len()
                ),
            });
        }
        Ok(compressed)
    }

    /// Writes the tar as a raw disk image (padded with zeros to whole 512-byte sectors, which
    /// `tar` reads as more end-of-archive blocks) at a new file `path`.
    pub fn write_disk_image(&self, path: &Path) -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)?;
        file.write_all(&self.tar)?;
        let pad = (512 - self.tar.len() % 512) % 512;
        file.write_all(&vec![0u8; pad])
    }
}

fn append<W: Write>(
    tar: &mut tar::Builder<W>,
    path: &str,
    body: &[u8],
    mode: u32,
) -> std::io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(body.len() as u64);
    header.set_mode(mode);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut header, path, body)
}
