//! System tests of what `dutlab job validate`, `dutlab run` and `dutlab job submit` say about a
//! job before it runs: warnings for keys dutlab accepts but does not honour (also those of test
//! definitions `dutlab run` fetches from git), the refusal of jobs no known device type can run
//! (by all three commands), and the quoting hint for steps YAML reads as mappings.
//!
//! None of these needs QEMU or the guest image: every command here ends before a DUT boots.
//! The commands run with `DUTLAB_IMAGE_DIR` pointing at a directory that does not exist, and
//! the tests check it is still absent afterwards (no image was built for a refused job).

use anyhow::{Context, Result, ensure};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use testkit::{Finished, Sandbox, Spawned, expect_code};

const DUTLAB: &str = env!("CARGO_BIN_EXE_dutlab");
/// Generous bound for a command that does not boot anything.
const LIMIT: Duration = Duration::from_secs(60);

/// The job-error exit code.
const JOB_ERROR: i32 = 4;

const NOT_HONOURED: &str = "accepted, not honoured by dutlab yet";

/// Test steps shared by the jobs below.
const TEST_ACTION: &str = "- test:\n    definitions:\n    - from: inline\n      name: t\n      \
     path: inline/t.yaml\n      repository:\n        metadata: {format: Lava-Test Test \
     Definition 1.0, name: t}\n        run:\n          steps:\n          - echo start\n";

struct Env {
    sandbox: Sandbox,
}

impl Env {
    fn new() -> Result<Env> {
        Ok(Env {
            sandbox: Sandbox::new()?,
        })
    }

    fn image_dir(&self) -> PathBuf {
        self.sandbox.path().join("no-image")
    }

    /// `dutlab ARGS` with temporary files in the sandbox and no guest image.
    fn command(&self, args: &[&str]) -> Result<Command> {
        let tmp = self.sandbox.path().join("tmp");
        std::fs::create_dir_all(&tmp)?;
        let mut cmd = Command::new(DUTLAB);
        cmd.args(args)
            .env("TMPDIR", &tmp)
            .env("DUTLAB_IMAGE_DIR", self.image_dir())
            .env("XDG_CONFIG_HOME", self.sandbox.path().join("config"))
            .env_remove("DUTLAB_LOG")
            .env_remove("DUTLAB_URL")
            .env_remove("DUTLAB_TOKEN")
            .stdin(Stdio::null());
        Ok(cmd)
    }

    fn dutlab(&self, args: &[&str]) -> Result<Finished> {
        let done = Spawned::start(self.command(args)?)?.finish(LIMIT)?;
        ensure!(
            !self.image_dir().exists(),
            "dutlab {args:?} built a guest image"
        );
        Ok(done)
    }

    /// A `dutlab serve` on a free port.
    fn serve(&self) -> Result<Lab> {
        let data_dir = self.sandbox.path().join("data");
        let mut serve = self.command(&["serve", "--listen", "127.0.0.1:0", "--data-dir"])?;
        serve.arg(&data_dir);
        let controller = Spawned::start(serve)?;
        controller.wait_for_stderr("listening on http://", Duration::from_secs(30))?;
        let stderr = controller.stderr_text();
        let port: u16 = stderr
            .split("listening on http://127.0.0.1:")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|p| p.parse().ok())
            .with_context(|| format!("no port in {stderr}"))?;
        let token = std::fs::read_to_string(data_dir.join("admin-token"))?
            .trim()
            .to_owned();
        Ok(Lab {
            _controller: controller,
            url: format!("http://127.0.0.1:{port}"),
            token,
        })
    }

    /// `dutlab job ARGS` against `lab`.
    fn job_remote(&self, lab: &Lab, args: &[&str]) -> Result<Finished> {
        let mut cmd = self.command(&[&["job"], args].concat())?;
        cmd.env("DUTLAB_URL", &lab.url)
            .env("DUTLAB_TOKEN", &lab.token);
        Spawned::start(cmd)?.finish(LIMIT)
    }

    fn write(&self, name: &str, text: &str) -> Result<PathBuf> {
        let path = self.sandbox.path().join(name);
        std::fs::write(&path, text)?;
        Ok(path)
    }
}

/// A running controller (stopped when dropped).
struct Lab {
    _controller: Spawned,
    url: String,
    token: String,
}

fn arg(path: &Path) -> Result<&str> {
    path.to_str().context("a UTF-8 path")
}

/// A job that deploys a kernel which does not exist (so `run` ends at the deploy action,
/// before anything boots), with keys dutlab accepts but ignores.
fn ignored_keys_job() -> String {
    format!(
        "job_name: ignored keys\ndevice_type: qemu\n\
         timeouts:\n  job: 5m\n  queue: 1h\n\
         context:\n  extra_options: [-smp, '2']\n\
         actions:\n\
         - deploy:\n    to: tmpfs\n    images:\n      kernel: {{url: file:///nonexistent/vmlinuz}}\n\
         \x20     modules: {{url: file:///nonexistent/modules.tgz}}\n\
         \x20     dtb: {{url: file:///nonexistent/board.dtb}}\n\
         \x20     nfsrootfs: {{url: file:///nonexistent/root.tar}}\n\
         - boot:\n    method: qemu\n    commands: [boot]\n    prompts: ['# $']\n{TEST_ACTION}"
    )
}

/// The warnings `ignored_keys_job` must produce, as printed.
const IGNORED_KEY_WARNINGS: [&str; 6] = [
    "dutlab: warning: ignored.yaml: timeouts.queue: accepted, not honoured by dutlab yet: a \
     queued job waits until a device is free or it is canceled",
    "dutlab: warning: ignored.yaml: context.extra_options: accepted, not honoured by dutlab yet: \
     extra QEMU options are not passed to QEMU",
    "dutlab: warning: ignored.yaml: actions[0].deploy.images.modules: accepted, not honoured by \
     dutlab yet: the QEMU device does not give a 'modules' image to the guest",
    "dutlab: warning: ignored.yaml: actions[0].deploy.images.dtb: accepted, not honoured by \
     dutlab yet: the QEMU device does not give a 'dtb' image to the guest",
    "dutlab: warning: ignored.yaml: actions[0].deploy.images.nfsrootfs: accepted, not honoured \
     by dutlab yet: the QEMU device does not give a 'nfsrootfs' image",
    "dutlab: warning: ignored.yaml: actions[1].boot.commands: accepted, not honoured by dutlab \
     yet: the QEMU device has no bootloader to send commands to",
];

fn expect_warnings(stderr: &str) -> Result<()> {
    for want in IGNORED_KEY_WARNINGS {
        ensure!(
            stderr.lines().any(|l| l.starts_with(want)),
            "missing warning {want:?} in:\n{stderr}"
        );
    }
    let count = stderr.lines().filter(|l| l.contains(NOT_HONOURED)).count();
    ensure!(
        count == IGNORED_KEY_WARNINGS.len(),
        "{count} not-honoured warnings, wanted {}:\n{stderr}",
        IGNORED_KEY_WARNINGS.len()
    );
    Ok(())
}

#[test]
fn validate_warns_about_every_ignored_key_and_accepts_the_job() -> Result<()> {
    let env = Env::new()?;
    let job = env.write("ignored.yaml", &ignored_keys_job())?;
    let done = env.dutlab(&["job", "validate", arg(&job)?])?;
    expect_code(&done, 0)?;
    ensure!(
        done.stdout
            .starts_with("ignored.yaml: valid: job 'ignored keys'"),
        "{}",
        done.stdout
    );
    expect_warnings(&done.stderr)?;

    let done = env.dutlab(&["job", "validate", "--json", arg(&job)?])?;
    expect_code(&done, 0)?;
    let json: serde_json::Value = serde_json::from_str(&done.stdout)?;
    let warnings = json["warnings"].as_array().context("warnings")?;
    ensure!(
        warnings.iter().any(|w| w
            .as_str()
            .is_some_and(|w| w.starts_with("timeouts.queue: accepted, not honoured"))),
        "{json}"
    );
    ensure!(warnings.len() == IGNORED_KEY_WARNINGS.len(), "{json}");
    Ok(())
}

#[test]
fn validate_shows_a_multinode_jobs_roles() -> Result<()> {
    let env = Env::new()?;
    let job = testkit::workspace_root().join("examples/multinode-pair.yaml");
    let done = env.dutlab(&["job", "validate", arg(&job)?])?;
    expect_code(&done, 0)?;
    ensure!(
        done.stdout.starts_with(
            "multinode-pair.yaml: valid: MultiNode job 'multinode pair': roles client (2 x qemu), \
             server (1 x qemu), 3 action(s)"
        ),
        "{}",
        done.stdout
    );
    let done = env.dutlab(&["job", "validate", "--json", arg(&job)?])?;
    let json: serde_json::Value = serde_json::from_str(&done.stdout)?;
    ensure!(
        json["roles"]
            == serde_json::json!([
                {"role": "client", "count": 2, "device_type": "qemu", "host_role": null},
                {"role": "server", "count": 1, "device_type": "qemu", "host_role": null},
            ]),
        "{json}"
    );
    Ok(())
}

#[test]
fn run_prints_the_same_warnings_before_it_starts() -> Result<()> {
    let env = Env::new()?;
    let job = env.write("ignored.yaml", &ignored_keys_job())?;
    let done = env.dutlab(&["run", arg(&job)?])?;
    // The kernel does not exist: a job error at the deploy action, before any boot.
    expect_code(&done, JOB_ERROR)?;
    expect_warnings(&done.stderr)?;
    // Images are fetched in name order: the dtb is fetched (and found missing) first.
    ensure!(
        done.stdout
            .contains("actions[0].deploy.images.dtb.url: /nonexistent/board.dtb: no such file"),
        "{}",
        done.stdout
    );
    Ok(())
}

#[test]
fn a_job_without_ignored_keys_has_no_warning() -> Result<()> {
    let env = Env::new()?;
    let job = env.write(
        "plain.yaml",
        &format!(
            "job_name: plain\ndevice_type: qemu\ntimeouts: {{job: 5m}}\ncontext: {{arch: amd64}}\n\
             actions:\n- boot:\n    method: qemu\n    media: tmpfs\n    prompts: ['# $']\n{TEST_ACTION}"
        ),
    )?;
    let done = env.dutlab(&["job", "validate", arg(&job)?])?;
    expect_code(&done, 0)?;
    ensure!(done.stderr.is_empty(), "{}", done.stderr);
    Ok(())
}

/// Runs `job validate` and `run` on the same file; both must refuse it with `message`.
fn both_refuse(env: &Env, job: &Path, message: &str) -> Result<()> {
    for args in [vec!["job", "validate", arg(job)?], vec!["run", arg(job)?]] {
        let done = env.dutlab(&args)?;
        expect_code(&done, JOB_ERROR)?;
        let want = format!("dutlab: error: {message}");
        ensure!(
            done.stderr.lines().any(|l| l == want),
            "dutlab {args:?}: wanted the line {want:?} in:\n{}",
            done.stderr
        );
        ensure!(
            !done.stderr.contains("running job"),
            "dutlab {args:?} started the job:\n{}",
            done.stderr
        );
        ensure!(
            !done.stdout.contains("valid"),
            "dutlab {args:?}: {}",
            done.stdout
        );
    }
    Ok(())
}

#[test]
fn tftp_deploy_is_refused_by_validate_and_by_run() -> Result<()> {
    let env = Env::new()?;
    let job = env.write(
        "job.yaml",
        &format!(
            "job_name: tftp\ndevice_type: qemu\nactions:\n\
             - deploy:\n    to: tftp\n    kernel: {{url: file:///nonexistent/zImage}}\n\
             - boot:\n    method: qemu\n    prompts: ['# $']\n{TEST_ACTION}"
        ),
    )?;
    both_refuse(
        &env,
        &job,
        "job.yaml: actions[0].deploy.to: 'tftp' needs a device with a TFTP server; the device \
         types dutlab knows (qemu) deploy to tmpfs or downloads only",
    )
}

#[test]
fn u_boot_is_refused_by_validate_and_by_run() -> Result<()> {
    let env = Env::new()?;
    let job = env.write(
        "uboot.yaml",
        &format!(
            "job_name: uboot\ndevice_type: qemu\nactions:\n\
             - boot:\n    method: u-boot\n    commands: ramdisk\n    prompts: ['# $']\n{TEST_ACTION}"
        ),
    )?;
    // No deploy action: without the check, `run` would build the default guest image first.
    both_refuse(
        &env,
        &job,
        "uboot.yaml: actions[0].boot.method: 'u-boot' needs a device with the U-Boot \
         bootloader; the device types dutlab knows (qemu) boot with qemu only",
    )
}

#[test]
fn a_foreign_architecture_is_refused_by_validate_and_by_run() -> Result<()> {
    let env = Env::new()?;
    let job = env.write(
        "arm.yaml",
        &format!(
            "job_name: arm\ndevice_type: qemu\ncontext: {{arch: arm64}}\nactions:\n\
             - boot:\n    method: qemu\n    prompts: ['# $']\n{TEST_ACTION}"
        ),
    )?;
    both_refuse(
        &env,
        &job,
        "arm.yaml: context.arch: 'arm64' needs a device of that architecture; the device types \
         dutlab knows (qemu) run amd64 only",
    )
}

#[test]
fn a_step_yaml_reads_as_a_mapping_is_refused_with_a_quoting_hint() -> Result<()> {
    let env = Env::new()?;
    let job = env.write(
        "colon.yaml",
        &format!(
            "job_name: colon\ndevice_type: qemu\nactions:\n- boot: {{method: qemu}}\n\
             {TEST_ACTION}          - echo \"check: pass\"\n"
        ),
    )?;
    both_refuse(
        &env,
        &job,
        "colon.yaml: actions[1].test.definitions[0].repository.run.steps[1]: expected a string, \
         found a mapping: YAML reads this step as a key 'echo \"check' and value 'pass\"', \
         because of the ': ' in it; quote the whole step: - 'echo \"check: pass\"'",
    )
}

#[test]
fn an_install_step_yaml_reads_as_a_mapping_gets_the_hint_too() -> Result<()> {
    let env = Env::new()?;
    let job = env.write(
        "install.yaml",
        &format!(
            "job_name: install\ndevice_type: qemu\nactions:\n- boot: {{method: qemu}}\n{}",
            TEST_ACTION.replace(
                "        run:\n",
                "        install:\n          steps:\n          - echo step: one\n        run:\n"
            )
        ),
    )?;
    let done = env.dutlab(&["job", "validate", arg(&job)?])?;
    expect_code(&done, JOB_ERROR)?;
    ensure!(
        done.stderr.contains(
            "install.yaml: actions[1].test.definitions[0].repository.install.steps[0]: expected a \
             string, found a mapping"
        ) && done
            .stderr
            .contains("quote the whole step: - 'echo step: one'"),
        "{}",
        done.stderr
    );
    Ok(())
}

/// `dutlab job submit` prints the warnings the controller found (the same jobspec warnings).
#[test]
fn submit_prints_the_warnings_of_the_controller() -> Result<()> {
    let env = Env::new()?;
    let lab = env.serve()?;
    let job = env.write("ignored.yaml", &ignored_keys_job())?;
    let done = env.job_remote(&lab, &["submit", arg(&job)?, "--wait-for-device"])?;
    expect_code(&done, 0)?;
    expect_warnings(&done.stderr)?;
    Ok(())
}

/// `dutlab job submit` refuses (400, exit 4) what `job validate` refuses, with the same
/// `file: field: reason`, and queues nothing.
#[test]
fn submit_refuses_what_validate_refuses() -> Result<()> {
    let env = Env::new()?;
    let lab = env.serve()?;
    let refused = [
        (
            "job.yaml",
            format!(
                "job_name: tftp\ndevice_type: qemu\nactions:\n\
                 - deploy:\n    to: tftp\n    kernel: {{url: file:///nonexistent/zImage}}\n\
                 - boot:\n    method: qemu\n    prompts: ['# $']\n{TEST_ACTION}"
            ),
            "job.yaml: actions[0].deploy.to: 'tftp' needs a device with a TFTP server; the \
             device types dutlab knows (qemu) deploy to tmpfs or downloads only",
        ),
        (
            "uboot.yaml",
            format!(
                "job_name: uboot\ndevice_type: qemu\nactions:\n\
                 - boot:\n    method: u-boot\n    commands: ramdisk\n    prompts: ['# $']\n\
                 {TEST_ACTION}"
            ),
            "uboot.yaml: actions[0].boot.method: 'u-boot' needs a device with the U-Boot \
             bootloader; the device types dutlab knows (qemu) boot with qemu only",
        ),
        (
            "arm.yaml",
            format!(
                "job_name: arm\ndevice_type: qemu\ncontext: {{arch: arm64}}\nactions:\n\
                 - boot:\n    method: qemu\n    prompts: ['# $']\n{TEST_ACTION}"
            ),
            "arm.yaml: context.arch: 'arm64' needs a device of that architecture; the device \
             types dutlab knows (qemu) run amd64 only",
        ),
    ];
    for (name, text, message) in &refused {
        let job = env.write(name, text)?;
        let validated = env.dutlab(&["job", "validate", arg(&job)?])?;
        expect_code(&validated, JOB_ERROR)?;
        ensure!(
            validated
                .stderr
                .lines()
                .any(|l| l == format!("dutlab: error: {message}")),
            "validate {name}: {}",
            validated.stderr
        );
        // --wait-for-device: the refusal is not about the lab having no device yet.
        let done = env.job_remote(&lab, &["submit", arg(&job)?, "--wait-for-device"])?;
        expect_code(&done, JOB_ERROR)?;
        let want =
            format!("dutlab: error: job refused: valid LAVA, but not runnable here: {message}");
        ensure!(
            done.stderr.lines().any(|l| l == want),
            "submit {name}: wanted the line {want:?} in:\n{}",
            done.stderr
        );
    }
    let listed = env.job_remote(&lab, &["list", "--json"])?;
    expect_code(&listed, 0)?;
    let jobs: serde_json::Value = serde_json::from_str(&listed.stdout)?;
    ensure!(
        jobs.as_array().is_some_and(|j| j.is_empty()),
        "queued: {jobs}"
    );
    // The control case: a runnable job is queued.
    let job = env.write("ignored.yaml", &ignored_keys_job())?;
    let done = env.job_remote(&lab, &["submit", arg(&job)?, "--wait-for-device"])?;
    expect_code(&done, 0)?;
    Ok(())
}

/// A git repository in the sandbox with a test definition that has keys dutlab ignores.
fn definitions_repo(env: &Env) -> Result<()> {
    let repo = env.sandbox.path().join("defs");
    std::fs::create_dir_all(repo.join("smoke"))?;
    std::fs::write(
        repo.join("smoke/smoke.yaml"),
        "metadata: {format: Lava-Test Test Definition 1.0, name: smoke}\n\
         install:\n  deps: [curl]\n\
         run:\n  steps:\n  - echo hi\n",
    )?;
    for args in [
        &["init", "--quiet"][..],
        &["add", "."],
        &["commit", "--quiet", "-m", "defs"],
    ] {
        let out = Command::new("git")
            .arg("-C")
            .arg(&repo)
            .args([
                "-c",
                "user.name=dutlab",
                "-c",
                "user.email=dutlab@example.invalid",
            ])
            .args(args)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .stdin(Stdio::null())
            .output()?;
        ensure!(out.status.success(), "git {args:?}: {out:?}");
    }
    Ok(())
}

/// `job validate` does not clone: the warnings of a definition from git come from `dutlab
/// run`, which clones and parses it before the first action (here the deploy action ends the
/// job: its kernel does not exist, so nothing boots).
#[test]
fn run_prints_the_warnings_of_a_definition_from_git_before_the_first_action() -> Result<()> {
    let env = Env::new()?;
    definitions_repo(&env)?;
    let job = env.write(
        "git.yaml",
        "job_name: from git\ndevice_type: qemu\nactions:\n\
         - deploy:\n    to: tmpfs\n    images:\n      kernel: {url: file:///nonexistent/vmlinuz}\n\
         - boot:\n    method: qemu\n    prompts: ['# $']\n\
         - test:\n    definitions:\n    - {from: git, name: smoke, repository: defs, \
         path: smoke/smoke.yaml}\n",
    )?;
    let want = "dutlab: warning: actions[2].test.definitions[0].path: smoke/smoke.yaml: \
                install.deps: accepted, not honoured by dutlab yet: packages are not installed \
                in the DUT; install them in a step";

    let validated = env.dutlab(&["job", "validate", arg(&job)?])?;
    expect_code(&validated, 0)?;
    ensure!(
        !validated.stderr.contains("install.deps"),
        "{}",
        validated.stderr
    );

    let done = env.dutlab(&["run", arg(&job)?])?;
    expect_code(&done, JOB_ERROR)?;
    let lines: Vec<&str> = done.stderr.lines().collect();
    let warning = lines
        .iter()
        .position(|l| *l == want)
        .with_context(|| format!("no line {want:?} in:\n{}", done.stderr))?;
    let deploy = lines
        .iter()
        .position(|l| *l == "dutlab: action 0: deploy")
        .with_context(|| format!("no deploy action in:\n{}", done.stderr))?;
    ensure!(
        warning < deploy,
        "warned after the first action:\n{}",
        done.stderr
    );
    ensure!(
        lines
            .iter()
            .filter(|l| l.contains("dutlab: warning"))
            .count()
            == 1,
        "{}",
        done.stderr
    );
    ensure!(
        done.stdout
            .contains("actions[0].deploy.images.kernel.url: /nonexistent/vmlinuz: no such file"),
        "{}",
        done.stdout
    );
    Ok(())
}

/// A job that is valid LAVA but that no device type here runs gets both answers: valid
/// LAVA, then what it needs.
#[test]
fn validate_says_valid_lava_but_not_runnable_here() -> Result<()> {
    let env = Env::new()?;
    let job = env.write(
        "fastboot.yaml",
        "job_name: fb\ndevice_type: hikey\nactions:\n\
         - deploy: {to: fastboot, images: {boot: {url: 'https://h.example/boot.img'}}}\n\
         - boot: {method: fastboot}\n",
    )?;
    let done = env.dutlab(&["job", "validate", arg(&job)?])?;
    expect_code(&done, JOB_ERROR)?;
    let lines: Vec<&str> = done.stderr.lines().collect();
    ensure!(
        lines.contains(&"dutlab: fastboot.yaml: valid LAVA, but not runnable here:")
            && lines.iter().any(|l| l.starts_with(
                "dutlab: error: fastboot.yaml: actions[0].deploy.to: 'fastboot' needs a device \
                 flashed with fastboot"
            )),
        "{}",
        done.stderr
    );
    Ok(())
}

/// `deploy: {to: downloads}`, a `downloads://` image, and user commands of the device file
/// (`do` during the run, `undo` at teardown), all before anything boots: no QEMU is needed.
#[test]
fn run_fetches_downloads_and_runs_the_devices_user_commands() -> Result<()> {
    let env = Env::new()?;
    std::fs::write(env.sandbox.path().join("vmlinuz"), b"not a kernel")?;
    let marker = env.sandbox.path().join("relay-on");
    let undone = env.sandbox.path().join("relay-off");
    let device = env.write(
        "device.yaml",
        &format!(
            "name: q1\ndevice_type: qemu\nuser_commands:\n  relay-on:\n    do: touch '{}'\n    \
             undo: [\"touch '{}'\"]\n",
            marker.display(),
            undone.display()
        ),
    )?;
    let job = env.write(
        "job.yaml",
        "job_name: downloads and a command\ndevice_type: qemu\nactions:\n\
         - deploy: {to: downloads, images: {kernel: {url: vmlinuz}}}\n\
         - deploy: {to: tmpfs, images: {kernel: {url: 'downloads://vmlinuz'}}}\n\
         - command: {name: relay-on}\n",
    )?;
    let done = env.dutlab(&["run", "--device", arg(&device)?, arg(&job)?])?;
    expect_code(&done, 0)?;
    ensure!(
        marker.is_file() && undone.is_file(),
        "do and undo did not both run:\n{}",
        done.stderr
    );
    ensure!(
        done.stderr.contains("fetched downloads://vmlinuz"),
        "{}",
        done.stderr
    );

    // A name the device does not define is the job's fault, and names what it defines.
    let job = env.write(
        "other.yaml",
        "job_name: other command\ndevice_type: qemu\nactions:\n\
         - deploy: {to: tmpfs, images: {kernel: {url: vmlinuz}}}\n\
         - command: {name: rm-rf}\n",
    )?;
    let done = env.dutlab(&["run", "--device", arg(&device)?, arg(&job)?])?;
    expect_code(&done, JOB_ERROR)?;
    let said = format!("{}{}", done.stdout, done.stderr);
    ensure!(
        said.contains(
            "actions[1].command.name: device 'q1' has no user command 'rm-rf' (it defines relay-on)"
        ),
        "{said}"
    );
    Ok(())
}
