//! System tests of `dutlab run`: the real binary, real QEMU under TCG, the real guest image.
//!
//! Every test runs in a [`Sandbox`] and ends by proving that no QEMU of its own survived.

use anyhow::{Context, Result, ensure};
use std::path::{Path, PathBuf};
use std::time::Duration;
use testkit::{Finished, Sandbox, Spawned, expect_code, inline_job, workspace_root};

const DUTLAB: &str = env!("CARGO_BIN_EXE_dutlab");
/// Generous bound for one job under TCG on a busy 2-core machine.
const RUN_LIMIT: Duration = Duration::from_secs(240);

fn example(rel: &str) -> PathBuf {
    workspace_root().join("examples").join(rel)
}

fn run(sandbox: &Sandbox, args: &[&str]) -> Result<Finished> {
    let mut cmd = sandbox.command(DUTLAB)?;
    cmd.args(args);
    Spawned::start(cmd)?.finish(RUN_LIMIT)
}

fn write(dir: &Path, name: &str, text: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, text)?;
    Ok(path)
}

#[test]
fn smoke_job_passes_with_junit_and_json() -> Result<()> {
    let sb = Sandbox::new()?;
    let junit = sb.path().join("junit.xml");
    let json = sb.path().join("results.json");
    let job = example("qemu-smoke.yaml");
    let done = run(
        &sb,
        &[
            "run",
            job.to_str().context("path")?,
            "--junit",
            junit.to_str().context("path")?,
            "--results-json",
            json.to_str().context("path")?,
        ],
    )?;
    expect_code(&done, 0)?;
    ensure!(done.stdout.contains("Linux") || done.stdout.contains("LAVA_SIGNAL_TESTCASE"));
    ensure!(
        done.stdout.contains("passed: 4 passed, 0 failed"),
        "{}",
        done.stdout
    );
    let xml = std::fs::read_to_string(&junit)?;
    for case in [
        "kernel-is-linux",
        "proc-mounted",
        "rootfs-disk",
        "memory-total",
    ] {
        ensure!(
            xml.contains(&format!("name=\"{case}\"")),
            "{case} not in {xml}"
        );
    }
    ensure!(xml.contains("failures=\"0\""), "{xml}");
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json)?)?;
    ensure!(report["outcome"] == "passed", "{report}");
    ensure!(
        report["cases"].as_array().map(Vec::len) == Some(4),
        "{report}"
    );
    sb.assert_no_qemu_left()?;
    ensure!(
        std::fs::read_dir(sb.path().join("tmp"))?.next().is_none(),
        "the job's work directory (overlays) was not removed"
    );
    Ok(())
}

#[test]
fn failing_case_exits_1() -> Result<()> {
    let sb = Sandbox::new()?;
    let job = example("qemu-fail.yaml");
    let done = run(&sb, &["run", job.to_str().context("path")?, "--json"])?;
    expect_code(&done, 1)?;
    let report: serde_json::Value = serde_json::from_str(&done.stdout)?;
    ensure!(report["outcome"] == "failed", "{report}");
    let results: Vec<(String, String)> = report["cases"]
        .as_array()
        .context("cases")?
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap_or("").to_string(),
                c["result"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    ensure!(
        results
            == vec![
                ("this-passes".to_string(), "pass".to_string()),
                ("this-fails".to_string(), "fail".to_string())
            ],
        "{results:?}"
    );
    sb.assert_no_qemu_left()
}

#[test]
fn prompt_that_never_comes_times_out_with_exit_2() -> Result<()> {
    let sb = Sandbox::new()?;
    let job = write(
        sb.path(),
        "no-prompt.yaml",
        "job_name: never\ndevice_type: qemu\ntimeouts: {job: 5m, action: 5m}\nactions:\n\
         - boot:\n    method: qemu\n    timeout: 20s\n    prompts: ['this prompt never appears']\n\
         \x20   auto_login: {login_prompt: 'login:', username: root}\n",
    )?;
    let done = run(&sb, &["run", job.to_str().context("path")?])?;
    expect_code(&done, 2)?;
    ensure!(
        done.stdout.contains("boot timeout (20s) fired"),
        "{}",
        done.stdout
    );
    sb.assert_no_qemu_left()
}

#[test]
fn job_timeout_fires_during_a_test() -> Result<()> {
    let sb = Sandbox::new()?;
    let job = write(
        sb.path(),
        "slow.yaml",
        &inline_job("slow", "  job: 45s", &["sleep 600"]),
    )?;
    let done = run(&sb, &["run", job.to_str().context("path")?])?;
    expect_code(&done, 2)?;
    ensure!(
        done.stdout.contains("job timeout (45s) fired"),
        "{}",
        done.stdout
    );
    sb.assert_no_qemu_left()
}

#[test]
fn invalid_job_exits_4_naming_the_field() -> Result<()> {
    let sb = Sandbox::new()?;
    let job = write(
        sb.path(),
        "bad.yaml",
        "job_name: bad\ndevice_type: qemu\nactions:\n- boot: {method: qemu}\n- test:\n    definitions:\n    - from: inline\n      name: x\n      repository: {metadata: {format: Lava-Test Test Definition 1.0, name: x}, run: {steps: [true]}}\n",
    )?;
    for cmd in ["run", "validate"] {
        let args: Vec<&str> = if cmd == "run" {
            vec!["run", job.to_str().context("path")?]
        } else {
            vec!["job", "validate", job.to_str().context("path")?]
        };
        let done = run(&sb, &args)?;
        expect_code(&done, 4)?;
        ensure!(
            done.stderr
                .contains("bad.yaml: actions[1].test.definitions[0]: 'path' is missing"),
            "{}",
            done.stderr
        );
    }
    sb.assert_no_qemu_left()
}

#[test]
fn usage_errors_exit_64() -> Result<()> {
    let sb = Sandbox::new()?;
    let done = run(&sb, &["run"])?;
    expect_code(&done, 64)?;
    let done = run(&sb, &["frobnicate"])?;
    expect_code(&done, 64)
}

#[test]
fn missing_kernel_exits_4() -> Result<()> {
    let sb = Sandbox::new()?;
    let job = write(
        sb.path(),
        "nokernel.yaml",
        "job_name: nokernel\ndevice_type: qemu\nactions:\n- deploy:\n    to: tmpfs\n    images:\n      kernel: {url: file:///nonexistent/vmlinuz}\n- boot: {method: qemu, prompts: ['# ']}\n",
    )?;
    let done = run(&sb, &["run", job.to_str().context("path")?])?;
    expect_code(&done, 4)?;
    ensure!(
        done.stdout
            .contains("actions[0].deploy.images.kernel.url: /nonexistent/vmlinuz: no such file"),
        "{}",
        done.stdout
    );
    sb.assert_no_qemu_left()
}

#[test]
fn ctrl_c_mid_test_cancels_with_exit_3() -> Result<()> {
    let sb = Sandbox::new()?;
    let job = write(
        sb.path(),
        "long.yaml",
        &inline_job(
            "long",
            "  job: 10m",
            &["echo waiting-for-cancel", "sleep 600"],
        ),
    )?;
    let mut cmd = sb.command(DUTLAB)?;
    cmd.args(["run", job.to_str().context("path")?]);
    let child = Spawned::start(cmd)?;
    child.wait_for_stdout("waiting-for-cancel", RUN_LIMIT)?;
    ensure!(
        !sb.qemu_processes().is_empty(),
        "QEMU should be running now"
    );
    child.signal(nix::sys::signal::Signal::SIGINT)?;
    let done = child.finish(Duration::from_secs(30))?;
    expect_code(&done, 3)?;
    ensure!(done.stdout.contains("canceled"), "{}", done.stdout);
    sb.assert_no_qemu_left()
}

#[test]
fn dut_powering_itself_off_is_an_infra_error() -> Result<()> {
    let sb = Sandbox::new()?;
    let job = write(
        sb.path(),
        "poweroff.yaml",
        &inline_job("poweroff", "  job: 5m", &["poweroff -f"]),
    )?;
    let done = run(&sb, &["run", job.to_str().context("path")?])?;
    expect_code(&done, 5)?;
    ensure!(done.stdout.contains("console closed"), "{}", done.stdout);
    sb.assert_no_qemu_left()
}

#[test]
fn lava_test_raise_fails_the_job() -> Result<()> {
    let sb = Sandbox::new()?;
    let job = write(
        sb.path(),
        "raise.yaml",
        &inline_job(
            "raise",
            "  job: 5m",
            &["lava-test-raise disk missing", "echo not-reached"],
        ),
    )?;
    let done = run(&sb, &["run", job.to_str().context("path")?])?;
    expect_code(&done, 1)?;
    ensure!(
        done.stdout.contains("lava-test-raise: disk missing"),
        "{}",
        done.stdout
    );
    sb.assert_no_qemu_left()
}

#[test]
fn lava_examples_run_unchanged() -> Result<()> {
    let sb = Sandbox::new()?;
    for (file, cases) in [
        ("lava/qemu-inline-params.yaml", 5),
        ("lava/qemu-login-commands.yaml", 4),
    ] {
        let job = example(file);
        let done = run(&sb, &["run", job.to_str().context("path")?, "--json"])?;
        expect_code(&done, 0)?;
        let report: serde_json::Value = serde_json::from_str(&done.stdout)?;
        ensure!(
            report["cases"].as_array().map(Vec::len) == Some(cases),
            "{file}: {report}"
        );
    }
    sb.assert_no_qemu_left()
}

/// A git repository with a test definition, a helper script and two revisions.
fn make_repo(dir: &Path) -> Result<String> {
    let git = |args: &[&str]| -> Result<String> {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
            .output()?;
        ensure!(out.status.success(), "git {args:?}: {out:?}");
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    std::fs::create_dir_all(dir.join("scripts"))?;
    git(&["init", "-q"])?;
    std::fs::write(
        dir.join("defs.yaml"),
        "metadata:\n  format: Lava-Test Test Definition 1.0\n  name: from-git\nparams:\n  WHO: nobody\nrun:\n  steps:\n  - sh ./scripts/check.sh \"$WHO\"\n",
    )?;
    std::fs::write(
        dir.join("scripts/check.sh"),
        "lava-test-case revision-one --shell true\nlava-test-case who-$1 --result pass\n",
    )?;
    git(&["add", "."])?;
    git(&["commit", "-qm", "one"])?;
    let first = git(&["rev-parse", "HEAD"])?;
    std::fs::write(
        dir.join("scripts/check.sh"),
        "lava-test-case revision-two --shell true\n",
    )?;
    git(&["commit", "-qam", "two"])?;
    Ok(first)
}

#[test]
fn definition_from_a_local_git_repository_at_a_revision() -> Result<()> {
    let sb = Sandbox::new()?;
    let repo = sb.path().join("repo");
    let first = make_repo(&repo)?;
    let job = write(
        sb.path(),
        "git.yaml",
        &format!(
            "job_name: git\ndevice_type: qemu\nactions:\n\
             - boot: {{method: qemu, prompts: ['# $'], auto_login: {{login_prompt: 'login:', username: root}}}}\n\
             - test:\n    definitions:\n\
             \x20   - {{from: git, repository: repo, path: defs.yaml, name: head}}\n\
             \x20   - {{from: git, repository: 'file://{}', revision: {first}, path: defs.yaml, name: old, params: {{WHO: lab}}}}\n",
            repo.display()
        ),
    )?;
    let done = run(&sb, &["run", job.to_str().context("path")?, "--json"])?;
    expect_code(&done, 0)?;
    let report: serde_json::Value = serde_json::from_str(&done.stdout)?;
    let names: Vec<String> = report["cases"]
        .as_array()
        .context("cases")?
        .iter()
        .map(|c| {
            format!(
                "{}/{}",
                c["suite"].as_str().unwrap_or(""),
                c["name"].as_str().unwrap_or("")
            )
        })
        .collect();
    ensure!(
        names == vec!["0_head/revision-two", "1_old/revision-one", "1_old/who-lab"],
        "{names:?}"
    );
    sb.assert_no_qemu_left()
}

#[test]
fn missing_git_repository_is_a_job_error_before_boot() -> Result<()> {
    let sb = Sandbox::new()?;
    let job = write(
        sb.path(),
        "nogit.yaml",
        "job_name: nogit\ndevice_type: qemu\nactions:\n- boot: {method: qemu, prompts: ['# $']}\n- test:\n    definitions:\n    - {from: git, repository: no-such-repo, path: x.yaml, name: x}\n",
    )?;
    let done = run(&sb, &["run", job.to_str().context("path")?])?;
    expect_code(&done, 4)?;
    ensure!(
        done.stdout
            .contains("actions[1].test.definitions[0].repository: cannot clone"),
        "{}",
        done.stdout
    );
    ensure!(
        !done.stderr.contains("QEMU started"),
        "booted before failing: {}",
        done.stderr
    );
    sb.assert_no_qemu_left()
}

#[test]
fn deploy_of_compressed_images_with_image_arg_and_checksum() -> Result<()> {
    let sb = Sandbox::new()?;
    let image = testkit::guest_image()?;
    // A gzip-compressed copy of the initramfs and a raw copy of the rootfs, as LAVA jobs use.
    let initrd_gz = sb.path().join("initrd.cpio.gz.gz");
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "gzip -c {} > {}",
            image.join("initramfs.cpio.gz").display(),
            initrd_gz.display()
        ))
        .status()?;
    ensure!(status.success());
    let raw = sb.path().join("rootfs.img");
    let status = std::process::Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(image.join("rootfs.qcow2"))
        .arg(&raw)
        .status()?;
    ensure!(status.success());
    let sha = {
        let out = std::process::Command::new("sha256sum")
            .arg(&initrd_gz)
            .output()?;
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .context("sha256sum output")?
            .to_string()
    };
    let raw_before = std::fs::read(&raw)?;
    let job = write(
        sb.path(),
        "deploy.yaml",
        &format!(
            "job_name: deploy\ndevice_type: qemu\nactions:\n- deploy:\n    to: tmpfs\n    images:\n\
             \x20     kernel:\n        url: {kernel}\n        image_arg: -kernel {{kernel}} -append \"console=ttyS0 quiet panic=-1\"\n\
             \x20     initrd:\n        url: initrd.cpio.gz.gz\n        compression: gz\n        sha256sum: {sha}\n\
             \x20     rootfs:\n        url: file://{raw}\n        image_arg: -drive format=raw,file={{rootfs}},if=virtio\n\
             - boot: {{method: qemu, prompts: ['# $'], auto_login: {{login_prompt: 'login:', username: root}}}}\n\
             - test:\n    definitions:\n    - from: inline\n      name: t\n      path: t.yaml\n      repository:\n\
             \x20       metadata: {{format: Lava-Test Test Definition 1.0, name: t}}\n        run:\n          steps:\n\
             \x20         - lava-test-case disk-readable --shell test -r /mnt/rootfs/etc/dutlab-rootfs\n\
             \x20         - lava-test-case disk-writable --shell sh -c 'echo changed > /mnt/rootfs/etc/dutlab-rootfs && sync'\n",
            kernel = image.join("vmlinuz").display(),
            raw = raw.display(),
        ),
    )?;
    let done = run(&sb, &["run", job.to_str().context("path")?, "--json"])?;
    expect_code(&done, 0)?;
    let report: serde_json::Value = serde_json::from_str(&done.stdout)?;
    ensure!(
        report["cases"].as_array().map(Vec::len) == Some(2),
        "{report}"
    );
    ensure!(
        std::fs::read(&raw)? == raw_before,
        "the base image was written: writes must go to the linked-clone overlay"
    );
    // A wrong checksum is the job's fault.
    let bad = std::fs::read_to_string(&job)?.replace(&sha, &"0".repeat(64));
    let bad_job = write(sb.path(), "bad-sha.yaml", &bad)?;
    let done = run(&sb, &["run", bad_job.to_str().context("path")?])?;
    expect_code(&done, 4)?;
    ensure!(
        done.stdout
            .contains("actions[0].deploy.images.initrd.sha256sum"),
        "{}",
        done.stdout
    );
    sb.assert_no_qemu_left()
}

#[test]
fn connection_timeout_fires_while_waiting_for_login() -> Result<()> {
    let sb = Sandbox::new()?;
    // Booting to the login prompt takes seconds under TCG; a 1 s connection timeout fires first.
    let job = write(
        sb.path(),
        "conn.yaml",
        "job_name: conn\ndevice_type: qemu\ntimeouts: {job: 5m, action: 5m, connection: 1s}\nactions:\n\
         - boot: {method: qemu, prompts: ['# $'], auto_login: {login_prompt: 'login:', username: root}}\n",
    )?;
    let done = run(&sb, &["run", job.to_str().context("path")?])?;
    expect_code(&done, 2)?;
    ensure!(
        done.stdout
            .contains("boot connection timeout (1s) fired while waiting for \"login:\""),
        "{}",
        done.stdout
    );
    sb.assert_no_qemu_left()
}

#[test]
fn missing_qemu_binary_is_an_infra_error() -> Result<()> {
    let sb = Sandbox::new()?;
    let device = write(
        sb.path(),
        "device.yaml",
        "name: broken\ndevice_type: qemu\nqemu:\n  binary: /nonexistent/qemu-system-x86_64\n",
    )?;
    let job = example("qemu-smoke.yaml");
    let done = run(
        &sb,
        &[
            "run",
            job.to_str().context("path")?,
            "--device",
            device.to_str().context("path")?,
        ],
    )?;
    expect_code(&done, 5)?;
    ensure!(
        done.stdout
            .contains("cannot start /nonexistent/qemu-system-x86_64"),
        "{}",
        done.stdout
    );
    // A device file with a typo is refused, naming the file and the key.
    let typo = write(
        sb.path(),
        "typo.yaml",
        "name: t\ndevice_type: qemu\nqemu:\n  acel: kvm\n",
    )?;
    let done = run(
        &sb,
        &[
            "run",
            job.to_str().context("path")?,
            "--device",
            typo.to_str().context("path")?,
        ],
    )?;
    expect_code(&done, 4)?;
    ensure!(
        done.stderr.contains("typo.yaml") && done.stderr.contains("acel"),
        "{}",
        done.stderr
    );
    sb.assert_no_qemu_left()
}

#[test]
fn deploy_over_http_from_a_local_server() -> Result<()> {
    let sb = Sandbox::new()?;
    let image = testkit::guest_image()?;
    let served = sb.path().join("served");
    std::fs::create_dir_all(&served)?;
    for f in ["vmlinuz", "initramfs.cpio.gz", "rootfs.qcow2"] {
        std::fs::copy(image.join(f), served.join(f))?;
    }
    let mut cmd = std::process::Command::new("python3");
    cmd.args(["-u", "-m", "http.server", "--bind", "127.0.0.1", "0"])
        .current_dir(&served);
    let server = Spawned::start(cmd)?;
    server.wait_for_stdout(" port ", Duration::from_secs(20))?;
    let port: u16 = server
        .stdout_text()
        .split(" port ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .context("port in the server banner")?
        .parse()?;
    let job = |kernel: &str| {
        format!(
            "job_name: http\ndevice_type: qemu\nactions:\n- deploy:\n    to: tmpfs\n    images:\n\
             \x20     kernel: {{url: 'http://127.0.0.1:{port}/{kernel}'}}\n\
             \x20     initrd: {{url: 'http://127.0.0.1:{port}/initramfs.cpio.gz'}}\n\
             \x20     rootfs: {{url: 'http://127.0.0.1:{port}/rootfs.qcow2', format: qcow2}}\n\
             - boot: {{method: qemu, prompts: ['# $'], auto_login: {{login_prompt: 'login:', username: root}}}}\n\
             - test:\n    definitions:\n    - from: inline\n      name: t\n      path: t.yaml\n      repository:\n\
             \x20       metadata: {{format: Lava-Test Test Definition 1.0, name: t}}\n        run:\n          steps:\n\
             \x20         - lava-test-case downloaded-disk --shell test -r /mnt/rootfs/etc/dutlab-rootfs\n"
        )
    };
    let good = write(sb.path(), "http.yaml", &job("vmlinuz"))?;
    let done = run(&sb, &["run", good.to_str().context("path")?])?;
    expect_code(&done, 0)?;
    ensure!(
        done.stdout.contains("downloaded-disk  pass"),
        "{}",
        done.stdout
    );
    let missing = write(sb.path(), "http-404.yaml", &job("no-such-kernel"))?;
    let done = run(&sb, &["run", missing.to_str().context("path")?])?;
    expect_code(&done, 4)?;
    ensure!(
        done.stdout.contains("actions[0].deploy.images.kernel.url") && done.stdout.contains("404"),
        "{}",
        done.stdout
    );
    sb.assert_no_qemu_left()
}
