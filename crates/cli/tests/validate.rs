//! System tests of what `dutlab job validate`, `dutlab run` and `dutlab job submit` say about a
//! job before it runs: warnings for keys dutlab accepts but does not honour, the refusal of
//! jobs no known device type can run, and the quoting hint for steps YAML reads as mappings.
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

    fn write(&self, name: &str, text: &str) -> Result<PathBuf> {
        let path = self.sandbox.path().join(name);
        std::fs::write(&path, text)?;
        Ok(path)
    }
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
         types dutlab knows (qemu) deploy to tmpfs only",
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
    let data_dir = env.sandbox.path().join("data");
    let mut serve = env.command(&["serve", "--listen", "127.0.0.1:0", "--data-dir"])?;
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
    let job = env.write("ignored.yaml", &ignored_keys_job())?;
    let mut submit = env.command(&["job", "submit", arg(&job)?, "--wait-for-device"])?;
    submit
        .env("DUTLAB_URL", format!("http://127.0.0.1:{port}"))
        .env("DUTLAB_TOKEN", token);
    let done = Spawned::start(submit)?.finish(LIMIT)?;
    expect_code(&done, 0)?;
    expect_warnings(&done.stderr)?;
    drop(controller);
    Ok(())
}
