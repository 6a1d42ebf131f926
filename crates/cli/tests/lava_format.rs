//! System test of the parts of LAVA's job format added for issue 16, on the real QEMU DUT:
//! `deploy: {to: downloads}` then `downloads://` images, test definitions `from: url` (a
//! gzip-compressed tarball, `strip-components`), and a `command:` action running the device
//! file's user command (`do` during the run, `undo` at teardown).
//!
//! The job's files are made by the test from the shared guest image; nothing is fetched over
//! the network. The run ends by proving that no QEMU of its own survived.

use anyhow::{Context, Result, ensure};
use std::time::Duration;
use testkit::{Sandbox, Spawned, expect_code};

const DUTLAB: &str = env!("CARGO_BIN_EXE_dutlab");
/// Generous bound for one job under TCG on a busy 2-core machine.
const RUN_LIMIT: Duration = Duration::from_secs(240);

#[test]
fn downloads_from_url_definitions_and_user_commands_run_on_the_dut() -> Result<()> {
    let sb = Sandbox::new()?;
    let image = testkit::guest_image()?;
    let dir = sb.path();
    // A tarball of definitions with a top directory, as release tarballs have.
    let top = dir.join("defs-1.0/smoke");
    std::fs::create_dir_all(&top)?;
    std::fs::write(
        top.join("smoke.yaml"),
        "metadata: {format: Lava-Test Test Definition 1.0, name: smoke}\n\
         run:\n  steps:\n  - ./smoke/check.sh\n",
    )?;
    let script = top.join("check.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\nlava-test-case from-tarball --result pass\n\
         lava-test-case executable-bit --shell test -x ./smoke/check.sh\n",
    )?;
    std::process::Command::new("chmod")
        .arg("755")
        .arg(&script)
        .status()?;
    let status = std::process::Command::new("tar")
        .current_dir(dir)
        .args(["czf", "defs.tar.gz", "defs-1.0"])
        .status()?;
    ensure!(status.success(), "tar failed");

    let marker = dir.join("relay-on");
    let undone = dir.join("relay-off");
    let device = dir.join("device.yaml");
    std::fs::write(
        &device,
        format!(
            "name: q1\ndevice_type: qemu\nuser_commands:\n  relay-on:\n    do: touch '{}'\n    \
             undo: touch '{}'\n",
            marker.display(),
            undone.display()
        ),
    )?;
    let job = dir.join("job.yaml");
    std::fs::write(
        &job,
        format!(
            "job_name: lava format\ndevice_type: qemu\nactions:\n\
             - deploy:\n    to: downloads\n    images:\n\
             \x20     kernel: {{url: '{kernel}'}}\n\
             \x20     initrd: {{url: '{initrd}'}}\n\
             \x20     rootfs: {{url: '{rootfs}'}}\n\
             - deploy:\n    to: tmpfs\n    images:\n\
             \x20     kernel:\n        url: downloads://vmlinuz\n\
             \x20       image_arg: -kernel {{kernel}} -append \"console=ttyS0 quiet panic=-1\"\n\
             \x20     initrd: {{url: 'downloads://initramfs.cpio.gz'}}\n\
             \x20     rootfs: {{url: 'downloads://rootfs.qcow2'}}\n\
             - command: {{name: relay-on}}\n\
             - boot: {{method: qemu, prompts: ['# $'], auto_login: {{login_prompt: 'login:', username: root}}}}\n\
             - test:\n    definitions:\n\
             \x20   - {{from: url, repository: defs.tar.gz, compression: gz, strip-components: 1, \
             path: smoke/smoke.yaml, name: smoke}}\n",
            kernel = image.join("vmlinuz").display(),
            initrd = image.join("initramfs.cpio.gz").display(),
            rootfs = image.join("rootfs.qcow2").display(),
        ),
    )?;
    let mut cmd = sb.command(DUTLAB)?;
    cmd.args(["run", "--device"])
        .arg(&device)
        .arg(&job)
        .arg("--json");
    let done = Spawned::start(cmd)?.finish(RUN_LIMIT)?;
    expect_code(&done, 0)?;
    let report: serde_json::Value = serde_json::from_str(&done.stdout)?;
    let cases: Vec<String> = report["cases"]
        .as_array()
        .context("cases")?
        .iter()
        .map(|c| {
            format!(
                "{}/{}={}",
                c["suite"].as_str().unwrap_or(""),
                c["name"].as_str().unwrap_or(""),
                c["result"].as_str().unwrap_or("")
            )
        })
        .collect();
    ensure!(
        cases == ["0_smoke/from-tarball=pass", "0_smoke/executable-bit=pass"],
        "{cases:?}\n{}",
        done.stderr
    );
    ensure!(
        marker.is_file() && undone.is_file(),
        "the user command's do and undo did not both run:\n{}",
        done.stderr
    );
    sb.assert_no_qemu_left()
}
