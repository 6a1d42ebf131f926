//! System tests of how the test overlay reaches the DUT: the real binary, real QEMU under
//! TCG, the real guest image, and git repositories built in the test.
//!
//! The overlay disk carries what the console cannot (more than 8 MiB); a device that says
//! `overlay_channel: console` still gets small overlays over its console and refuses large
//! ones before anything boots.

use anyhow::{Context, Result, ensure};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use testkit::{Finished, Sandbox, Spawned, expect_code};

const DUTLAB: &str = env!("CARGO_BIN_EXE_dutlab");
/// Generous bound for one job under TCG on a busy 2-core machine.
const RUN_LIMIT: Duration = Duration::from_secs(240);
/// Incompressible payload larger than the console's 8 MiB cap.
const PAYLOAD: usize = 12 << 20;

fn run(sandbox: &Sandbox, args: &[&str]) -> Result<Finished> {
    let mut cmd = sandbox.command(DUTLAB)?;
    cmd.args(args);
    Spawned::start(cmd)?.finish(RUN_LIMIT)
}

/// Bytes that gzip cannot shrink (xorshift64*), the same for the same seed.
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        seed ^= seed >> 12;
        seed ^= seed << 25;
        seed ^= seed >> 27;
        out.extend_from_slice(&seed.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

fn git(dir: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
        .output()?;
    ensure!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// A repository with `blob.bin` (incompressible) and a definition that checks its size and
/// sha256 in the DUT. Returns the job file.
fn big_repository_job(sandbox: &Sandbox) -> Result<PathBuf> {
    let repo = sandbox.path().join("repo");
    std::fs::create_dir_all(&repo)?;
    let blob = noise(PAYLOAD, 0x5eed_1234_abcd_0001);
    std::fs::write(repo.join("blob.bin"), &blob)?;
    let sha = runner::sha256_hex(&blob);
    std::fs::write(
        repo.join("big.yaml"),
        format!(
            "metadata: {{format: Lava-Test Test Definition 1.0, name: big}}\n\
             run:\n  steps:\n\
             \x20 - lava-test-case blob-size --shell test \"$(wc -c < blob.bin)\" -eq {PAYLOAD}\n\
             \x20 - lava-test-case blob-sha256 --shell \"sha256sum blob.bin | grep -q {sha}\"\n"
        ),
    )?;
    git(&repo, &["init", "-q"])?;
    git(&repo, &["add", "."])?;
    git(&repo, &["commit", "-q", "-m", "big"])?;
    let job = sandbox.path().join("job.yaml");
    std::fs::write(
        &job,
        "job_name: big overlay\ndevice_type: qemu\ntimeouts: {job: 8m, action: 6m}\nactions:\n\
         - boot:\n    method: qemu\n    prompts: ['# $']\n    auto_login: {login_prompt: 'login:', username: root}\n\
         - test:\n    definitions:\n    - {from: git, repository: repo, path: big.yaml, name: big, history: false}\n",
    )?;
    Ok(job)
}

fn console_device(sandbox: &Sandbox) -> Result<PathBuf> {
    let device = sandbox.path().join("device.yaml");
    std::fs::write(
        &device,
        "name: console-only\ndevice_type: qemu\noverlay_channel: console\n",
    )?;
    Ok(device)
}

fn results(path: &Path) -> Result<Vec<(String, String)>> {
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
    report["cases"]
        .as_array()
        .context("cases")?
        .iter()
        .map(|c| {
            Ok((
                c["name"].as_str().context("name")?.to_string(),
                c["result"].as_str().context("result")?.to_string(),
            ))
        })
        .collect()
}

#[test]
fn an_overlay_over_the_console_cap_arrives_by_the_overlay_disk() -> Result<()> {
    let sb = Sandbox::new()?;
    let job = big_repository_job(&sb)?;
    let json = sb.path().join("results.json");
    let done = run(
        &sb,
        &[
            "run",
            job.to_str().context("path")?,
            "--results-json",
            json.to_str().context("path")?,
        ],
    )?;
    expect_code(&done, 0)?;
    let all = format!("{}{}", done.stdout, done.stderr);
    ensure!(all.contains("installed over the overlay disk"), "{all}");
    ensure!(
        results(&json)?
            == vec![
                ("blob-size".to_string(), "pass".to_string()),
                ("blob-sha256".to_string(), "pass".to_string()),
            ],
        "{all}"
    );
    sb.assert_no_qemu_left()?;
    Ok(())
}

#[test]
fn a_console_device_refuses_a_large_overlay_before_booting() -> Result<()> {
    let sb = Sandbox::new()?;
    let job = big_repository_job(&sb)?;
    let device = console_device(&sb)?;
    let done = run(
        &sb,
        &[
            "run",
            job.to_str().context("path")?,
            "--device",
            device.to_str().context("path")?,
        ],
    )?;
    expect_code(&done, 4)?;
    let all = format!("{}{}", done.stdout, done.stderr);
    ensure!(all.contains("a console transfer allows"), "{all}");
    ensure!(!all.contains("QEMU started"), "booted anyway: {all}");
    sb.assert_no_qemu_left()?;
    Ok(())
}

#[test]
fn a_console_device_gets_small_overlays_over_its_console() -> Result<()> {
    let sb = Sandbox::new()?;
    let device = console_device(&sb)?;
    let job = sb.path().join("job.yaml");
    std::fs::write(
        &job,
        testkit::inline_job(
            "console overlay",
            "  job: 4m",
            &[
                "lava-test-case helpers-on-path --shell command -v lava-test-case",
                // No overlay disk is attached to a console-only device.
                "lava-test-case no-overlay-disk --shell '! grep -qx dutlab-overlay /sys/block/*/serial'",
            ],
        ),
    )?;
    let json = sb.path().join("results.json");
    let done = run(
        &sb,
        &[
            "run",
            job.to_str().context("path")?,
            "--device",
            device.to_str().context("path")?,
            "--results-json",
            json.to_str().context("path")?,
        ],
    )?;
    let all = format!("{}{}", done.stdout, done.stderr);
    expect_code(&done, 0).context(all.clone())?;
    ensure!(all.contains("installed over the console"), "{all}");
    ensure!(
        results(&json)?
            == vec![
                ("helpers-on-path".to_string(), "pass".to_string()),
                ("no-overlay-disk".to_string(), "pass".to_string()),
            ],
        "{all}"
    );
    sb.assert_no_qemu_left()?;
    Ok(())
}
