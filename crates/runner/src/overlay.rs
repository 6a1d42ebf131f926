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
    ("lava-common", include_str!("../dut/lava-common")),
    ("lava-test-case", include_str!("../dut/lava-test-case")),
    ("lava-test-set", include_str!("../dut/lava-test-set")),
    (
        "lava-test-reference",
        include_str!("../dut/lava-test-reference"),
    ),
    ("lava-test-raise", include_str!("../dut/lava-test-raise")),
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
}

impl TestRun {
    /// The directory of this run in the DUT.
    pub fn dut_dir(&self) -> String {
        format!("{OVERLAY_ROOT}/tests/{}", self.id)
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
                });
                index += 1;
            }
            overlay.runs.insert(action_index, runs);
        }
        Ok(overlay)
    }

    /// Whether there is anything to send to the DUT.
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
        let root = OVERLAY_ROOT.trim_start_matches('/');
        for (name, body) in HELPERS {
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
        Ok(PackedOverlay { tar: bytes })
    }
}

/// The packed overlay: a tar that unpacks at `/` in the DUT.
#[derive(Debug, Clone)]
pub struct PackedOverlay {
    tar: Vec<u8>,
}

impl PackedOverlay {
    /// The tar itself (what the overlay disk holds).
    pub fn tar(&self) -> &[u8] {
        &self.tar
    }

    /// The tar compressed with gzip, for the console; refused when over
    /// [`MAX_CONSOLE_OVERLAY`].
    pub fn for_console(&self) -> Result<Vec<u8>, OverlayError> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        let compressed = gz
            .write_all(&self.tar)
            .and_then(|()| gz.finish())
            .map_err(|e| OverlayError {
                field: "overlay".into(),
                reason: e.to_string(),
            })?;
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

/// The script that runs one definition in the DUT (`sh .dutlab-run.sh`). It does what LAVA's
/// `lava-test-runner`, `lava-test-shell` and the generated `install.sh`/`run.sh` do together:
///
/// - `PATH` starts with the helpers; the results directory
///   `/lava-dutlab/results/<run id>-<epoch seconds>` is made (LAVA: `results/<run>-<epoch>`).
/// - Install steps, when there are any, run first in their own `sh` (no `set -e`), with the
///   params set and the run's directory as working directory (printed by `pwd`); their exit
///   status goes to `install_return_code`; a non-zero one prints
///   `<LAVA_TEST_RUNNER INSTALL_FAIL>` and the run is skipped (no STARTRUN).
/// - Run steps run in their own `sh -e` with `LAVA_RESULT_DIR` exported: params as plain
///   shell variables (not exported, as LAVA), `set -e`, `export TESTRUN_ID=<run id>`, `cd`
///   into the run's directory, `UUID` set, STARTRUN, the steps traced by `set -x`, ENDRUN.
///   A failing step ends the run there (no ENDRUN). With `lava-signal: kmsg`, `KMSG=true` is
///   exported for the whole script (install steps and helpers write their signals into the
///   kernel log) and STARTRUN, ENDRUN and INSTALL_FAIL go to `/dev/kmsg` at level `<0>`, as
///   LAVA's `run.sh` writes them (`KMSG` is unset before ENDRUN, as there); without a
///   writable `/dev/kmsg` they are printed. In a step holding `--shell` or `--cmd`,
///   `$1`, `$2`, ... are escaped to reach the helper unexpanded (LAVA does the same). The
///   exit status goes to `return_code` in the results directory.
///
/// Steps are written into `.dutlab-install.sh` / `.dutlab-steps.sh` by quoted here-documents,
/// so their text is never expanded on the way, and each runs in a shell that reads and runs
/// one step at a time, as LAVA's `run.sh` does (a syntax error stops the run at that step).
pub fn run_script(run: &TestRun) -> String {
    static POSITIONAL: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r"\$(\d+)\b").expect("the positional-parameter pattern is valid")
    });
    /// `cat > FILE <<'END' ... END` with an end word that no line of `body` equals.
    fn here_doc(file: &str, body: &str) -> String {
        let mut end = "DUTLAB_END_OF_STEPS".to_string();
        while body.lines().any(|l| l == end) {
            end.push('_');
        }
        format!("cat > {} <<'{end}'\n{body}{end}\n", quote(file))
    }
    let dir = run.dut_dir();
    let params: String = run
        .params
        .iter()
        .map(|(name, value)| format!("{name}={}\n", quote(value)))
        .collect();
    let mut s = String::new();
    s.push_str("#!/bin/sh\n");
    s.push_str(&format!(
        "# dutlab test run {} (definition {})\n",
        run.id,
        run.definition.metadata.name.replace('\n', " ")
    ));
    s.push_str(&format!("export PATH={OVERLAY_ROOT}/bin:$PATH\n"));
    let kmsg = run.lava_signal == LavaSignal::Kmsg;
    if kmsg {
        // As LAVA's lava-test-runner: the install steps and the runner's signals use it too.
        s.push_str("export KMSG=true\n");
    }
    s.push_str(&format!(
        "LAVA_RESULT_DIR={}-$(date +%s)\n",
        quote(&format!("{OVERLAY_ROOT}/results/{}", run.id))
    ));
    s.push_str("mkdir -p \"$LAVA_RESULT_DIR\"\n");
    if !run.definition.install_steps.is_empty() {
        let mut install = params.clone();
        install.push_str(&format!("cd {}\npwd\n", quote(&dir)));
        for step in &run.definition.install_steps {
            install.push_str(step);
            install.push('\n');
        }
        let file = format!("{dir}/.dutlab-install.sh");
        s.push_str(&here_doc(&file, &install));
        s.push_str(&format!("sh {}\n", quote(&file)));
        s.push_str("dutlab_rc=$?\n");
        s.push_str("echo \"$dutlab_rc\" > \"$LAVA_RESULT_DIR/install_return_code\"\n");
        s.push_str(&format!(
            "if [ \"$dutlab_rc\" -ne 0 ]; then {}; exit \"$dutlab_rc\"; fi\n",
            signal_command("<LAVA_TEST_RUNNER INSTALL_FAIL>", kmsg)
        ));
    }
    let mut steps = params;
    steps.push_str("set -e\nset -x\n");
    steps.push_str(&format!("export TESTRUN_ID={}\n", quote(&run.id)));
    steps.push_str(&format!("cd {}\n", quote(&dir)));
    steps.push_str(&format!("UUID={}\n", quote(&run.uuid)));
    steps.push_str("set +x\n");
    if kmsg {
        steps.push_str("export KMSG=true\n");
    }
    steps.push_str(&signal_command(
        &format!("<LAVA_SIGNAL_STARTRUN {} {}>", run.id, run.uuid),
        kmsg,
    ));
    steps.push_str("\nset -x\n");
    for step in &run.definition.run_steps {
        if step.contains("--shell") || step.contains("--cmd") {
            steps.push_str(&POSITIONAL.replace_all(step, r"\$$${1}"));
        } else {
            steps.push_str(step);
        }
        steps.push('\n');
    }
    steps.push_str("set +x\n");
    if kmsg {
        steps.push_str("unset KMSG\n");
    }
    steps.push_str(&signal_command(
        &format!("<LAVA_SIGNAL_ENDRUN {} {}>", run.id, run.uuid),
        kmsg,
    ));
    steps.push('\n');
    let file = format!("{dir}/.dutlab-steps.sh");
    s.push_str(&here_doc(&file, &steps));
    s.push_str("export LAVA_RESULT_DIR\n");
    s.push_str(&format!("sh -e {}\n", quote(&file)));
    s.push_str("echo \"$?\" > \"$LAVA_RESULT_DIR/return_code\"\n");
    s
}

/// The shell command that prints one signal line of the run script: on stdout, or with `kmsg`
/// into the kernel log at level 0 when `/dev/kmsg` is writable (else on stdout, as the
/// helpers do).
fn signal_command(line: &str, kmsg: bool) -> String {
    if kmsg {
        format!(
            "if [ -w /dev/kmsg ]; then echo {} > /dev/kmsg; else echo {}; fi",
            quote(&format!("<0>{line}")),
            quote(line)
        )
    } else {
        format!("echo {}", quote(line))
    }
}

/// Single-quotes `value` for a POSIX shell.
pub fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn unique_token() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{:x}{:x}", std::process::id(), nanos & 0xffff_ffff)
}

/// Resolves a repository string to something `git clone` accepts, relative paths against
/// the job file's directory (local runs only).
fn resolve_repository(repository: &str, job_dir: &Path) -> String {
    if let Some(path) = repository.strip_prefix("file://") {
        return path.to_string();
    }
    if repository.contains("://") || repository.starts_with("git@") {
        return repository.to_string();
    }
    let path = Path::new(repository);
    if path.is_absolute() {
        repository.to_string()
    } else {
        job_dir.join(path).display().to_string()
    }
}

/// What a lab clone connects to: an `https://` URL, its host and port, and the checked
/// address pinned for them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabRemote {
    pub url: String,
    pub host: String,
    pub port: u16,
}

/// Accepts a lab repository: a remote `https://host[:port]/path` URL and nothing else (no
/// local path, `file://`, `ssh://`, `git@host:`, `ext::` or other transport).
pub fn lab_remote(repository: &str) -> Result<LabRemote, String> {
    let refuse = || {
        format!(
            "{repository:?}: the lab clones remote https:// repositories only (no local path, \
             file://, ssh, git@ or ext:: transports)"
        )
    };
    if !repository.starts_with("https://") {
        return Err(refuse());
    }
    let url = reqwest::Url::parse(repository).map_err(|_| refuse())?;
    // `transport::address` (git's remote helpers, `ext::`) needs the helper name first, so
    // a URL that starts with `https://` always means https.
    if url.scheme() != "https" {
        return Err(refuse());
    }
    let host = url.host_str().ok_or_else(refuse)?.to_string();
    let port = url.port_or_known_default().ok_or_else(refuse)?;
    Ok(LabRemote {
        url: url.to_string(),
        host,
        port,
    })
}

/// One git definition's repository, as the job wrote it.
struct GitSource<'a> {
    repository: &'a str,
    revision: Option<&'a str>,
    branch: Option<&'a str>,
}

impl GitSource<'_> {
    async fn run(
        &self,
        job_dir: &Path,
        work_dir: &Path,
        dest: &Path,
        policy: &HostPolicy,
    ) -> Result<(), String> {
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
        }
        let mut clone = match (jobspec::artifact_digest(self.repository), policy.reach) {
            (Some(hex), _) => {
                // A bundle uploaded with the job: the file the agent fetched, verified and
                // admitted (local runs have none and are refused here). The file transport
                // is allowed for this one clone of that one file only.
                let bundle = policy.artifact_path(hex)?;
                let mut cmd = lab_git(work_dir);
                cmd.args(["-c", "protocol.file.allow=always"]);
                cmd.args(["clone", "--quiet", "--no-recurse-submodules"]);
                self.branch_args(&mut cmd);
                cmd.arg("--").arg(&bundle).arg(dest);
                cmd
            }
            (None, Reach::Local) => {
                let source = resolve_repository(self.repository, job_dir);
                let mut cmd = tokio::process::Command::new("git");
                cmd.args(["clone", "--quiet"]);
                self.branch_args(&mut cmd);
                cmd.arg("--").arg(&source).arg(dest);
                cmd
            }
            (None, Reach::Lab) => {
                let remote = lab_remote(self.repository)?;
                let addr = policy.pinned_address(&remote.host, remote.port).await?;
                let ip = match addr.ip() {
                    std::net::IpAddr::V4(v4) => v4.to_string(),
                    std::net::IpAddr::V6(v6) => format!("[{v6}]"),
                };
                let host = remote.host.trim_matches(['[', ']']);
                let mut cmd = lab_git(work_dir);
                cmd.arg("-c")
                    .arg(format!("http.curloptResolve={host}:{}:{ip}", remote.port));
                cmd.args(["clone", "--quiet", "--no-recurse-submodules"]);
                self.branch_args(&mut cmd);
                cmd.arg("--").arg(&remote.url).arg(dest);
                cmd
            }
        };
        git(&mut clone, &format!("cannot clone {}", self.repository)).await?;
        if let Some(revision) = self.revision {
            let mut cmd = match policy.reach {
                Reach::Local => tokio::process::Command::new("git"),
                Reach::Lab => lab_git(work_dir),
            };
            cmd.arg("-C")
                .arg(dest)
                .args(["checkout", "--quiet", "--detach", revision, "--"]);
            git(&mut cmd, &format!("cannot check out revision {revision:?}")).await?;
        }
        Ok(())
    }

    fn branch_args(&self, cmd: &mut tokio::process::Command) {
        if let Some(branch) = self.branch {
            cmd.args(["--branch", branch]);
        }
    }
}

/// `git` for a lab job: empty environment, no host config or credentials, https only,
/// no redirects.
fn lab_git(work_dir: &Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("git");
    cmd.env_clear()
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
        )
        .env("HOME", work_dir)
        .env("LANG", "C")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_ASKPASS", "/bin/false")
        .env("SSH_ASKPASS", "/bin/false")
        .env("GIT_PROTOCOL_FROM_USER", "0");
    for config in [
        "credential.helper=",
        "core.askPass=/bin/false",
        "protocol.allow=never",
        "protocol.https.allow=always",
        "http.followRedirects=false",
        "http.proxy=",
        "core.hooksPath=/dev/null",
    ] {
        cmd.arg("-c").arg(config);
    }
    cmd
}

async fn git(cmd: &mut tokio::process::Command, what: &str) -> Result<(), String> {
    let out = cmd
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("{what}: cannot run git: {e} (install the git package)"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Reads `file`, refusing paths that leave `root` (`..`, absolute paths, links outside).
/// Most members of a `from: url` archive.
pub const MAX_ARCHIVE_MEMBERS: usize = 100_000;

/// A `from: url` tar archive of test definitions.
struct ArchiveSource<'a> {
    source: &'a ImageSource,
    compression: Compression,
    strip_components: u32,
}

impl ArchiveSource<'_> {
    /// Fetches, decompresses and unpacks the archive into `dir` (new).
    async fn fetch(
        &self,
        job_dir: &Path,
        work_dir: &Path,
        index: usize,
        dir: &Path,
        policy: &HostPolicy,
        deadline: tokio::time::Instant,
    ) -> Result<(), String> {
        let scratch = work_dir.join("archives").join(index.to_string());
        std::fs::create_dir_all(&scratch).map_err(|e| format!("{}: {e}", scratch.display()))?;
        let fetched = match self.source {
            ImageSource::Path(p) => policy.image_path(p, job_dir)?,
            // Only what the agent fetched for this job (today: images and git bundles).
            ImageSource::Artifact(hex) => policy.artifact_path(hex)?,
            ImageSource::Http(url) => {
                let out = scratch.join("download");
                crate::deploy::download(url, &out, deadline, policy)
                    .await
                    .map_err(|reason| format!("{url}: {reason}"))?;
                out
            }
            // Refused by jobspec (downloads://) and check_runnable (other schemes).
            ImageSource::Downloads(_) | ImageSource::Other { .. } => {
                return Err("this URL scheme is not fetched for test definitions".into());
            }
        };
        if !fetched.is_file() {
            return Err(format!("{}: no such file", fetched.display()));
        }
        let tar = match crate::deploy::Codec::of(self.compression) {
            None => fetched,
            Some(codec) => {
                let out = scratch.join("archive.tar");
                crate::deploy::decompress(codec, &fetched, &out, policy.decompress, deadline)
                    .await
                    .map_err(|reason| format!("cannot decompress the archive: {reason}"))?;
                out
            }
        };
        let (dir, strip, max_bytes) = (
            dir.to_path_buf(),
            self.strip_components as usize,
            policy.decompress.max_bytes,
        );
        tokio::task::spawn_blocking(move || unpack_archive(&tar, &dir, strip, max_bytes))
            .await
            .map_err(|e| format!("unpack task failed: {e}"))?
    }
}

/// Unpacks the tar at `tar` into the new directory `dir`: regular files and directories
/// only, paths relative without `..` after dropping `strip` leading components.
fn unpack_archive(tar: &Path, dir: &Path, strip: usize, max_bytes: u64) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    std::fs::create_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let file = std::fs::File::open(tar).map_err(|e| format!("{}: {e}", tar.display()))?;
    let mut archive = tar::Archive::new(std::io::BufReader::new(file));
    let mut written = 0u64;
    let entries = archive
        .entries()
        .map_err(|e| format!("not a tar archive: {e}"))?;
    for (n, entry) in entries.enumerate() {
        if n >= MAX_ARCHIVE_MEMBERS {
            return Err(format!(
                "the archive has more than {MAX_ARCHIVE_MEMBERS} members"
            ));
        }
        let mut entry = entry.map_err(|e| format!("not a tar archive: {e}"))?;
        let raw = entry
            .path()
            .map_err(|e| format!("a member has a bad path: {e}"))?
            .into_owned();
        let shown = raw.display().to_string();
        let mut rel = PathBuf::new();
        for (i, c) in raw.components().enumerate() {
            match c {
                std::path::Component::Normal(part) if i >= strip => rel.push(part),
                std::path::Component::Normal(_) | std::path::Component::CurDir => {}
                _ => {
                    return Err(format!(
                        "member {shown:?}: paths must be relative, without '..'"
                    ));
                }
            }
        }
        let kind = entry.header().entry_type();
        if rel.as_os_str().is_empty() {
            continue;
        }
        let target = dir.join(&rel);
        if kind.is_dir() {
            std::fs::create_dir_all(&target).map_err(|e| format!("{shown}: {e}"))?;
        } else if kind.is_file() {
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).map_err(|e| format!("{shown}: {e}"))?;
            }
            written = written.saturating_add(entry.size());
            if written > max_bytes {
                return Err(format!(
                    "the archive unpacks to more than the {max_bytes} bytes allowed"
                ));
            }
            let mode = entry.header().mode().unwrap_or(0o644) & 0o755 | 0o600;
            let mut out = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(&target)
                .map_err(|e| format!("{shown}: {e}"))?;
            std::io::copy(&mut std::io::Read::take(&mut entry, max_bytes), &mut out)
                .map_err(|e| format!("{shown}: {e}"))?;
        } else {
            return Err(format!(
                "member {shown:?} is not a file or directory (links and devices are refused)"
            ));
        }
    }
    Ok(())
}

fn read_inside(root: &Path, file: &Path) -> Result<String, String> {
    let root = root
        .canonicalize()
        .map_err(|e| format!("{}: {e}", root.display()))?;
    let real = file
        .canonicalize()
        .map_err(|_| format!("{} is not in the repository", file.display()))?;
    if !real.starts_with(&root) {
        return Err(format!("{} points outside the repository", file.display()));
    }
    std::fs::read_to_string(&real).map_err(|e| format!("{}: {e}", file.display()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn lab_git_connects_to_the_pinned_address_without_the_host_config() {
        // `pinned.example` exists only in the injected table: if git connects at all, it
        // connected to the address the policy checked (curloptResolve), not to DNS.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = std::thread::spawn(move || listener.accept().is_ok());
        let mut policy = HostPolicy::lab(
            &[],
            vec![crate::policy::Cidr::parse("127.0.0.1").unwrap()],
            crate::policy::DecompressLimits::default(),
        )
        .unwrap();
        let mut table = BTreeMap::new();
        table.insert(
            "pinned.example".to_string(),
            vec!["127.0.0.1".parse().unwrap()],
        );
        policy.resolver = crate::policy::Resolver::Fixed(table);
        let resolver = policy.resolver.clone();
        let work = tempfile::tempdir().unwrap();
        let url = format!("https://pinned.example:{port}/r.git");
        let source = GitSource {
            repository: &url,
            revision: None,
            branch: None,
        };
        let e = source
            .run(
                work.path(),
                work.path(),
                &work.path().join("repos/0"),
                &policy,
            )
            .await
            .unwrap_err();
        assert!(
            accepted.join().unwrap(),
            "git never connected to the pinned address"
        );
        assert!(e.contains("cannot clone"), "{e}");
        // Refused before git runs: loopback without the operator's allowance.
        let mut strict =
            HostPolicy::lab(&[], Vec::new(), crate::policy::DecompressLimits::default()).unwrap();
        strict.resolver = resolver;
        let e = source
            .run(
                work.path(),
                work.path(),
                &work.path().join("repos/1"),
                &strict,
            )
            .await
            .unwrap_err();
        assert!(e.contains("loopback"), "{e}");
    }

    #[test]
    fn lab_remotes_are_https_urls_only() {
        let r = lab_remote("https://git.example.org:8443/a/b.git").unwrap();
        assert_eq!((r.host.as_str(), r.port), ("git.example.org", 8443));
        assert_eq!(
            lab_remote("https://[2001:db8::1]/x").unwrap().host,
            "[2001:db8::1]"
        );
        for refused in [
            "/srv/git/secret",
            "repo",
            "../other",
            "file:///srv/git/secret",
            "ssh://git@example.org/x",
            "git@example.org:x.git",
            "ext::sh -c touch% /tmp/pwned",
            "http://example.org/x",
            "git://example.org/x",
            "HTTPS://example.org/x",
        ] {
            assert!(lab_remote(refused).is_err(), "{refused}");
        }
    }

    #[test]
    fn quoting_keeps_values_literal() {
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's $(rm -rf /)"), r"'it'\''s $(rm -rf /)'");
    }

    #[test]
    fn identifiers() {
        assert!(is_identifier("TEST_DIR"));
        assert!(is_identifier("_x1"));
        assert!(!is_identifier("1x"));
        assert!(!is_identifier("a-b"));
        assert!(!is_identifier("a;b"));
        assert!(!is_identifier(""));
    }

    fn tar_with(entries: &[(&str, tar::EntryType, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_size(data.len() as u64);
            h.set_mode(0o755);
            // set_path refuses '..'; write the name bytes directly for hostile members.
            let name = path.as_bytes();
            h.as_old_mut().name[..name.len()].copy_from_slice(name);
            if kind.is_symlink() {
                h.set_link_name("/etc/passwd").unwrap();
            }
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn archive_unpacks_files_and_strips_components() {
        let dir = tempfile::tempdir().unwrap();
        let tar = dir.path().join("a.tar");
        std::fs::write(
            &tar,
            tar_with(&[
                ("top/", tar::EntryType::Directory, b""),
                ("top/smoke/run.sh", tar::EntryType::Regular, b"echo hi\n"),
            ]),
        )
        .unwrap();
        let out = dir.path().join("out");
        unpack_archive(&tar, &out, 1, 1 << 20).unwrap();
        let run = out.join("smoke/run.sh");
        assert_eq!(std::fs::read_to_string(&run).unwrap(), "echo hi\n");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&run).unwrap().permissions().mode() & 0o111,
            0o111
        );
    }

    /// `from: url` with a path: fetched under the host policy, decompressed, unpacked with
    /// `strip-components`, the definition read from the archive (locally), refused outside
    /// `image_dirs` in the lab.
    #[tokio::test]
    async fn from_url_archives_are_fetched_under_the_policy_and_unpacked() {
        use std::io::Write as _;
        let dir = tempfile::tempdir().unwrap();
        let def = b"metadata: {format: Lava-Test Test Definition 1.0, name: smoke}\n\
                    run: {steps: [./smoke/run.sh]}\n";
        let tar = tar_with(&[
            ("defs-1.0/", tar::EntryType::Directory, b""),
            ("defs-1.0/smoke/smoke.yaml", tar::EntryType::Regular, def),
            (
                "defs-1.0/smoke/run.sh",
                tar::EntryType::Regular,
                b"echo ok\n",
            ),
        ]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        std::fs::write(dir.path().join("defs.tar.gz"), gz.finish().unwrap()).unwrap();
        let job = jobspec::parse_job(
            "j.yaml",
            "job_name: j\ndevice_type: qemu\nactions:\n- boot: {method: qemu}\n\
             - test: {definitions: [{from: url, repository: defs.tar.gz, compression: gz, \
             strip-components: 1, path: smoke/smoke.yaml, name: smoke}]}\n",
        )
        .unwrap();
        let work = dir.path().join("work");
        std::fs::create_dir(&work).unwrap();
        let overlay = Overlay::prepare(&job, dir.path(), &work, &HostPolicy::local())
            .await
            .unwrap();
        let run = &overlay.runs[&1][0];
        assert_eq!(run.definition.metadata.name, "smoke");
        let files = run.files.as_ref().unwrap();
        assert!(files.starts_with(&work));
        assert_eq!(
            std::fs::read_to_string(files.join("smoke/run.sh")).unwrap(),
            "echo ok\n"
        );
        // In the lab a path outside image_dirs is refused, naming the field.
        let allowed = dir.path().join("allowed");
        std::fs::create_dir(&allowed).unwrap();
        let lab = HostPolicy::lab(&[allowed], Vec::new(), Default::default()).unwrap();
        let work = dir.path().join("work2");
        std::fs::create_dir(&work).unwrap();
        let e = Overlay::prepare(&job, dir.path(), &work, &lab)
            .await
            .unwrap_err();
        assert_eq!(e.field, "actions[1].test.definitions[0].repository", "{e}");
    }

    #[test]
    fn archive_refuses_escapes_links_and_bombs() {
        let dir = tempfile::tempdir().unwrap();
        for (i, (entries, want)) in [
            (
                vec![("../evil", tar::EntryType::Regular, &b"x"[..])],
                "without '..'",
            ),
            (
                vec![("/etc/evil", tar::EntryType::Regular, &b"x"[..])],
                "relative",
            ),
            (
                vec![("link", tar::EntryType::Symlink, &b""[..])],
                "links and devices are refused",
            ),
            (
                vec![("big", tar::EntryType::Regular, &[0u8; 4096][..])],
                "bytes allowed",
            ),
        ]
        .into_iter()
        .enumerate()
        {
            let tar = dir.path().join(format!("{i}.tar"));
            std::fs::write(&tar, tar_with(&entries)).unwrap();
            let e = unpack_archive(&tar, &dir.path().join(format!("out{i}")), 0, 1024).unwrap_err();
            assert!(e.contains(want), "{i}: {e}");
        }
        assert!(!dir.path().join("evil").exists());
    }

    #[test]
    fn read_inside_refuses_escapes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ok.yaml"), "x").unwrap();
        assert!(read_inside(dir.path(), &dir.path().join("ok.yaml")).is_ok());
        let outside = tempfile::NamedTempFile::new().unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("link.yaml")).unwrap();
        assert!(read_inside(dir.path(), &dir.path().join("link.yaml")).is_err());
        assert!(read_inside(dir.path(), &dir.path().join("../../etc/passwd")).is_err());
    }

    #[test]
    fn run_script_escapes_positional_parameters_only_in_helper_steps() {
        let definition = jobspec::parse_test_definition(
            "t.yaml",
            "metadata: {format: Lava-Test Test Definition 1.0, name: t}\n\
             run:\n  steps:\n  - lava-test-case a --shell \"echo $1 $12 $1x\"\n  - echo $1\n",
        )
        .unwrap();
        let run = TestRun {
            id: "0_t".into(),
            definition,
            params: BTreeMap::from([("P".to_string(), "it's".to_string())]),
            files: None,
            uuid: "u_0".into(),
            lava_signal: LavaSignal::Stdout,
        };
        let script = run_script(&run);
        assert!(
            script.contains("\nlava-test-case a --shell \"echo \\$1 \\$12 $1x\"\n"),
            "{script}"
        );
        assert!(script.contains("\necho $1\n"), "{script}");
        assert!(script.contains("\nP='it'\\''s'\n"), "{script}");
        assert!(
            !script.contains("export P\n"),
            "params are not exported: {script}"
        );
    }

    #[test]
    fn kmsg_runs_write_the_runner_signals_into_the_kernel_log() {
        let definition = jobspec::parse_test_definition(
            "t.yaml",
            "metadata: {format: Lava-Test Test Definition 1.0, name: t}\n\
             install:\n  steps: ['true']\nrun:\n  steps: ['lava-test-case a --result pass']\n",
        )
        .unwrap();
        let mut run = TestRun {
            id: "0_t".into(),
            definition,
            params: BTreeMap::new(),
            files: None,
            uuid: "u_0".into(),
            lava_signal: LavaSignal::Kmsg,
        };
        let script = run_script(&run);
        let kmsg = |line: &str| {
            format!(
                "if [ -w /dev/kmsg ]; then echo '<0>{line}' > /dev/kmsg; else echo '{line}'; fi"
            )
        };
        let export = script.find("\nexport KMSG=true\n").expect(&script);
        let install = script
            .find("\nsh '/lava-dutlab/tests/0_t/.dutlab-install.sh'\n")
            .expect(&script);
        assert!(export < install, "KMSG reaches the install steps: {script}");
        assert!(
            script.contains(&kmsg("<LAVA_TEST_RUNNER INSTALL_FAIL>")),
            "{script}"
        );
        let start = format!(
            "\nexport KMSG=true\n{}\nset -x\n",
            kmsg("<LAVA_SIGNAL_STARTRUN 0_t u_0>")
        );
        let end = format!(
            "\nset +x\nunset KMSG\n{}\n",
            kmsg("<LAVA_SIGNAL_ENDRUN 0_t u_0>")
        );
        let (start, end) = (
            script.find(&start).expect(&script),
            script.find(&end).expect(&script),
        );
        let step = script
            .find("\nlava-test-case a --result pass\n")
            .expect(&script);
        assert!(start < step && step < end, "{script}");
        assert!(!script.contains("\necho '<LAVA_SIGNAL_"), "{script}");

        run.lava_signal = LavaSignal::Stdout;
        let script = run_script(&run);
        assert!(
            !script.contains("KMSG") && !script.contains("/dev/kmsg"),
            "{script}"
        );
        for line in [
            "echo '<LAVA_SIGNAL_STARTRUN 0_t u_0>'",
            "echo '<LAVA_SIGNAL_ENDRUN 0_t u_0>'",
            "echo '<LAVA_TEST_RUNNER INSTALL_FAIL>'",
        ] {
            assert!(script.contains(line), "{line}: {script}");
        }
    }
}
