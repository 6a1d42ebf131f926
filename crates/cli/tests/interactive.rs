//! System tests of LAVA's `test: interactive:` and `test: monitors:` on a real QEMU DUT.
//!
//! The bootloader is the guest image started through the kernel command line with
//! `rdinit=/bin/busybox -- sh -c "..."`: a small loop that prints numbered power-on self-test
//! lines (for a monitor), then a U-Boot-like `=> ` prompt that answers `version`, `printenv`,
//! `dhcp` (which times out) and `boot` (which hands over to the image's own `/init`). The
//! runner sees a console with no POSIX shell until `boot`: nothing of its own is typed there.
//! The same job runs through the lab (controller + agent) in `lab.rs`' style in
//! [`the_same_job_runs_in_the_lab`].

#![allow(clippy::unwrap_used, clippy::expect_used)]

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use std::path::Path;

use std::time::Duration;
use testkit::{Finished, Sandbox, Spawned, expect_code, wait_until};

const DUTLAB: &str = env!("CARGO_BIN_EXE_dutlab");
const RUN_LIMIT: Duration = Duration::from_secs(240);

/// The fake bootloader, run as the guest's first process. `$p` keeps the words the monitor
/// waits for out of the command line itself (the kernel may print it).
const BOOTLOADER: &str = "p=POST; echo; echo U-Boot 2024.01-dutlab; echo $p start; i=1; \
     for t in dram:PASS flash:PASS rtc:FAIL; do echo $p $i $t; i=$((i+1)); done; echo $p done; \
     while printf '=> '; read -r c; do case $c in version) echo U-Boot 2024.01-dutlab;; \
     printenv*) echo board=dutlab-fake;; dhcp) echo BOOTP broadcast 1; echo TIMEOUT;; \
     boot) exec /init;; '') ;; *) echo Unknown command: $c;; esac; done";

/// A job that monitors the self-test lines, talks to the `=> ` prompt, boots Linux, logs in
/// and runs shell commands from an interactive script, then one test definition.
fn bootloader_job(image: &Path) -> String {
    let image = image.display();
    format!(
        r#"job_name: bootloader
device_type: qemu
timeouts:
  job: 5m
actions:
- deploy:
    to: tmpfs
    images:
      kernel:
        url: {image}/vmlinuz
        image_arg: |-
          -kernel {{kernel}} -append "console=ttyS0 panic=-1 quiet rdinit=/bin/busybox -- sh -c \"{BOOTLOADER}\""
      initrd:
        url: {image}/initramfs.cpio.gz
- boot:
    method: qemu
- test:
    monitors:
    - name: POST
      start: POST start
      end: POST done
      pattern: 'POST (?P<test_case_id>\d+ \w+):(?P<result>PASS|FAIL)'
      fixupdict: {{PASS: pass, FAIL: fail}}
- test:
    timeout: 3m
    interactive:
    - name: u-boot
      prompts: ['=> ']
      echo: discard
      script:
      - command:
        name: prompt
      - command: version
        name: version
        successes: [{{message: 'U-Boot (?P<uver>[0-9]+\.[0-9]+)-'}}]
      - command: printenv board
        name: board
        successes: [{{message: board=dutlab-fake}}]
      - command: dhcp
        name: dhcp
        successes: [{{message: DHCP client bound}}]
        failures: [{{message: TIMEOUT}}]
      - command: boot
        successes: [{{message: 'login:'}}]
        wait_for_prompt: false
    - name: linux
      prompts: ['# ']
      script:
      - command: root
        name: login
      - command: echo got-{{uver}}-$((6*7))
        name: substituted
        successes: [{{message: 'got-2024\.01-42'}}]
      - command: uname -s
        name: no-success-pattern
- test:
    definitions:
    - from: inline
      name: after
      path: inline/after.yaml
      repository:
        metadata: {{format: Lava-Test Test Definition 1.0, name: after}}
        run: {{steps: ['lava-test-case shell-prepared --result pass']}}
"#
    )
}

/// Every case of a report as `suite/name result`, in order.
fn cases(report: &Value) -> Result<Vec<String>> {
    Ok(report["cases"]
        .as_array()
        .context("cases")?
        .iter()
        .map(|c| {
            format!(
                "{}/{} {}",
                c["suite"].as_str().unwrap_or_default(),
                c["name"].as_str().unwrap_or_default(),
                c["result"].as_str().unwrap_or_default()
            )
        })
        .collect())
}

/// The cases of [`bootloader_job`]; its definitions run completes, so it adds no `lava/` case.
const BOOTLOADER_CASES: [&str; 13] = [
    "post/1_dram pass",
    "post/2_flash pass",
    "post/3_rtc fail",
    "0_u-boot/prompt pass",
    "0_u-boot/version pass",
    "0_u-boot/board pass",
    "0_u-boot/dhcp fail",
    "lava/0_u-boot pass",
    "0_linux/login pass",
    "0_linux/substituted pass",
    "0_linux/no-success-pattern pass",
    "lava/0_linux pass",
    "0_after/shell-prepared pass",
];

fn run(sandbox: &Sandbox, args: &[&str]) -> Result<Finished> {
    let mut cmd = sandbox.command(DUTLAB)?;
    cmd.args(args);
    Spawned::start(cmd)?.finish(RUN_LIMIT)
}

#[test]
fn monitors_and_interactive_scripts_on_a_bootloader_prompt_and_a_shell() -> Result<()> {
    let sb = Sandbox::new()?;
    let image = testkit::guest_image()?;
    let job = sb.path().join("bootloader.yaml");
    std::fs::write(&job, bootloader_job(&image))?;
    let json = sb.path().join("results.json");
    let junit = sb.path().join("junit.xml");
    let done = run(
        &sb,
        &[
            "run",
            job.to_str().context("path")?,
            "--results-json",
            json.to_str().context("path")?,
            "--junit",
            junit.to_str().context("path")?,
        ],
    )?;
    // Failed cases (the rtc self-test, dhcp) fail the job, as any failed case does.
    expect_code(&done, 1)?;
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json)?)?;
    ensure!(report["outcome"] == "failed", "{report}");
    ensure!(
        cases(&report)? == BOOTLOADER_CASES,
        "{:#?}\n{}\n{}",
        cases(&report)?,
        done.stderr,
        done.stdout
    );
    // The terminal table and JUnit show them like any other case.
    ensure!(
        done.stdout.contains("0_u-boot") && done.stdout.contains("3_rtc"),
        "{}",
        done.stdout
    );
    let xml = std::fs::read_to_string(&junit)?;
    ensure!(
        xml.contains("name=\"dhcp\"") && xml.contains("name=\"1_dram\""),
        "{xml}"
    );
    sb.assert_no_qemu_left()
}

#[test]
fn a_prompt_that_never_comes_ends_the_job_at_the_action_timeout() -> Result<()> {
    let sb = Sandbox::new()?;
    // The connection timeout of the action is shorter: LAVA waits again when it passes, so
    // only the action's timeout ends the wait.
    let job = "job_name: never\ndevice_type: qemu\n\
         timeouts:\n  connections: {lava-test-interactive: 5s}\n\
         actions:\n\
         - boot: {method: qemu, prompts: ['# $'], auto_login: {login_prompt: 'login:', username: root}}\n\
         - test:\n    timeout: 15s\n    interactive:\n    - name: never\n      prompts: ['=> ']\n\
         \x20     script:\n      - {command: echo waiting, name: waits}\n      - {command: echo not-sent, name: later}\n\
         \x20     expected: [waits, later]\n";
    let path = sb.path().join("never.yaml");
    std::fs::write(&path, job)?;
    let json = sb.path().join("results.json");
    let done = run(
        &sb,
        &[
            "run",
            path.to_str().context("path")?,
            "--results-json",
            json.to_str().context("path")?,
        ],
    )?;
    expect_code(&done, 2)?;
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json)?)?;
    let reason = report["reason"].as_str().unwrap_or_default();
    ensure!(
        reason.starts_with("test timeout (15s) fired while waiting for \"=> \""),
        "{report}"
    );
    // The case waited for and the script are failed; the expected case that never ran too.
    ensure!(
        cases(&report)?
            == [
                "0_never/waits fail",
                "lava/0_never fail",
                "0_never/later fail"
            ],
        "{report}"
    );
    sb.assert_no_qemu_left()
}

#[test]
fn validate_names_the_field_of_a_bad_script() -> Result<()> {
    let sb = Sandbox::new()?;
    let path = sb.path().join("bad.yaml");
    std::fs::write(
        &path,
        "job_name: bad\ndevice_type: qemu\nactions:\n- boot: {method: qemu}\n- test:\n    interactive:\n\
         \x20   - name: u-boot\n      prompts: ['=> ']\n      script:\n\
         \x20     - command: dhcp\n        failures: [{message: TIMEOUT, exception: Panic}]\n",
    )?;
    let done = run(&sb, &["job", "validate", path.to_str().context("path")?])?;
    expect_code(&done, 4)?;
    ensure!(
        done.stderr.contains(
            "bad.yaml: actions[1].test.interactive[0].script[0].failures[0].exception: 'Panic' \
             is not one of InfrastructureError, JobError, TestError"
        ),
        "{}",
        done.stderr
    );
    // The example job is valid as written, with nothing warned.
    let example = testkit::workspace_root().join("examples/lava/qemu-interactive.yaml");
    let done = run(&sb, &["job", "validate", example.to_str().context("path")?])?;
    expect_code(&done, 0)?;
    ensure!(!done.stderr.contains("warning"), "{}", done.stderr);
    Ok(())
}

/// The bootloader job through `dutlab serve` and `dutlab agent`: the same cases in the lab's
/// results.
#[test]
fn the_same_job_runs_in_the_lab() -> Result<()> {
    let sb = Sandbox::new()?;
    let image = testkit::guest_image()?;
    let data = sb.path().join("data");
    let mut serve = sb.command(DUTLAB)?;
    serve
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data);
    let controller = Spawned::start(serve)?;
    controller.wait_for_stderr("listening on http://", Duration::from_secs(30))?;
    let stderr = controller.stderr_text();
    let port: u16 = stderr
        .split("listening on http://127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("no port in {stderr}"))?;
    let url = format!("http://127.0.0.1:{port}");
    let admin = std::fs::read_to_string(data.join("admin-token"))?
        .trim()
        .to_owned();
    let cli = |args: &[&str]| -> Result<Finished> {
        let mut cmd = sb.command(DUTLAB)?;
        cmd.args(args)
            .env("DUTLAB_URL", &url)
            .env("DUTLAB_TOKEN", &admin)
            .env("XDG_CONFIG_HOME", sb.path().join("config"));
        Spawned::start(cmd)?.finish(RUN_LIMIT)
    };
    let dir = sb.path().join("agent");
    std::fs::create_dir_all(&dir)?;
    let token = cli(&["token", "create", "--name", "host-a", "--role", "agent"])?;
    expect_code(&token, 0)?;
    std::fs::write(dir.join("token"), token.stdout.trim())?;
    let init = cli(&[
        "agent",
        "init",
        "--controller",
        &url,
        "--token-file",
        &dir.join("token").display().to_string(),
        "--qemu",
        "1",
        "--name",
        "host-a",
        "--work-dir",
        &dir.join("work").display().to_string(),
    ])?;
    expect_code(&init, 0)?;
    // The job reads the guest image's kernel and initramfs by path: the operator allows it.
    let mut config: String = init
        .stdout
        .lines()
        .filter(|l| !l.starts_with("image_dirs:"))
        .map(|l| format!("{l}\n"))
        .collect();
    config.push_str(&format!("image_dirs: [{}]\n", image.display()));
    std::fs::write(dir.join("agent.yaml"), config)?;
    let mut agent_cmd = sb.command(DUTLAB)?;
    agent_cmd
        .arg("agent")
        .arg("--config")
        .arg(dir.join("agent.yaml"));
    let agent = Spawned::start(agent_cmd)?;
    wait_until("an idle device", Duration::from_secs(30), || {
        let list = cli(&["device", "list", "--json"])?;
        let devices: Value = serde_json::from_str(&list.stdout)?;
        Ok(devices
            .as_array()
            .is_some_and(|d| d.iter().any(|d| d["state"] == "idle"))
            .then_some(()))
    })?;
    let job = sb.path().join("bootloader.yaml");
    std::fs::write(&job, bootloader_job(&image))?;
    let done = cli(&["job", "submit", &job.display().to_string(), "--follow"])?;
    expect_code(&done, 1)?;
    let list: Value = serde_json::from_str(&cli(&["job", "list", "--json"])?.stdout)?;
    let id = list[0]["id"].as_u64().context("job id")?;
    let shown = cli(&["job", "results", &id.to_string(), "--json"])?;
    expect_code(&shown, 1)?;
    let results: Value = serde_json::from_str(&shown.stdout)?;
    if cases(&results["report"])? != BOOTLOADER_CASES {
        let log = cli(&["job", "logs", &id.to_string()])?;
        anyhow::bail!("{results}\n{}", log.stdout);
    }
    let _ = agent.signal(nix::sys::signal::Signal::SIGTERM);
    let _ = agent.finish(Duration::from_secs(30));
    drop(controller);
    sb.assert_no_qemu_left()
}
