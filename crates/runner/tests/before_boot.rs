//! What `run_job` says before anything boots, when called directly (as an agent does, without
//! `dutlab job validate` first): jobs no device type dutlab knows can run are refused with
//! `jobspec::check_runnable`'s field and reason, and warnings of test definitions fetched from
//! git are notes.
//!
//! No test here boots a DUT: the device's QEMU binary does not exist, so reaching a boot would
//! be an infra error (`QEMU: ...`) instead of the outcome asserted.
#![allow(clippy::unwrap_used)]

use dutlab_runner::device::Device;
use dutlab_runner::{Cancel, JobContext, RunEvent, run_job};
use proto::{JobReport, Outcome};
use std::path::Path;
use std::process::Command;

const TEST_ACTION: &str = "- test:\n    definitions:\n    - from: inline\n      name: t\n      \
     path: inline/t.yaml\n      repository:\n        metadata: {format: Lava-Test Test \
     Definition 1.0, name: t}\n        run:\n          steps:\n          - echo start\n";

/// A QEMU device whose emulator cannot start.
fn device() -> Device {
    let mut device = Device::default_qemu();
    device.qemu.binary = "/nonexistent/qemu-system-x86_64".into();
    device
}

async fn run(text: &str, job_dir: &Path) -> (JobReport, Vec<RunEvent>) {
    let job = jobspec::parse_job("job.yaml", text).unwrap();
    let work = tempfile::tempdir().unwrap();
    let ctx = JobContext {
        job_dir: job_dir.to_path_buf(),
        default_image: None,
        work_root: Some(work.path().to_path_buf()),
        policy: dutlab_runner::policy::HostPolicy::local(),
        secondary: None,
        authorized_keys: Vec::new(),
        publish_ssh: None,
        multinode: None,
        group_net: None,
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let report = run_job(&job, &ctx, &device(), tx, Cancel::default()).await;
    let mut events = Vec::new();
    while let Ok(event) = rx.try_recv() {
        events.push(event);
    }
    assert_eq!(
        std::fs::read_dir(work.path()).unwrap().count(),
        0,
        "the work directory was left behind"
    );
    (report, events)
}

/// The job is refused as `job validate` refuses it, before any action starts.
async fn refused_like_validate(text: &str) {
    let job = jobspec::parse_job("job.yaml", text).unwrap();
    let want = jobspec::check_runnable("job.yaml", &job).unwrap_err();
    let dir = tempfile::tempdir().unwrap();
    let (report, events) = run(text, dir.path()).await;
    assert_eq!(report.outcome, Outcome::JobError, "{}", report.reason);
    assert_eq!(report.reason, format!("{}: {}", want.field, want.reason));
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, RunEvent::ActionStarted { .. })),
        "an action started: {events:?}"
    );
}

#[tokio::test]
async fn a_tftp_deploy_is_refused_before_any_action() {
    refused_like_validate(&format!(
        "job_name: tftp\ndevice_type: qemu\nactions:\n\
         - deploy:\n    to: tftp\n    kernel: {{url: file:///nonexistent/zImage}}\n\
         - boot:\n    method: qemu\n    prompts: ['# $']\n{TEST_ACTION}"
    ))
    .await;
}

#[tokio::test]
async fn u_boot_is_refused_before_any_action() {
    refused_like_validate(&format!(
        "job_name: uboot\ndevice_type: qemu\nactions:\n\
         - boot:\n    method: u-boot\n    commands: ramdisk\n    prompts: ['# $']\n{TEST_ACTION}"
    ))
    .await;
}

#[tokio::test]
async fn a_foreign_architecture_is_refused_before_any_action() {
    refused_like_validate(&format!(
        "job_name: arm\ndevice_type: qemu\ncontext: {{arch: arm64}}\nactions:\n\
         - boot:\n    method: qemu\n    prompts: ['# $']\n{TEST_ACTION}"
    ))
    .await;
}

#[tokio::test]
async fn a_url_scheme_dutlab_does_not_fetch_is_refused_before_any_action() {
    refused_like_validate(&format!(
        "job_name: rclone\ndevice_type: qemu\nactions:\n\
         - deploy:\n    to: tmpfs\n    images:\n      rootfs: {{url: 'rclone://remote/r.img.zst', \
         compression: zstd}}\n\
         - boot:\n    method: qemu\n    prompts: ['# $']\n{TEST_ACTION}"
    ))
    .await;
}

#[tokio::test]
async fn a_multinode_job_without_its_group_is_refused_before_any_action() {
    // A multinode job runs as role instances, each given its group; the job itself alone
    // has nowhere to send its calls.
    let dir = tempfile::tempdir().unwrap();
    let (report, events) = run(
        "job_name: mn\nprotocols:\n  lava-multinode:\n    roles:\n      \
         server: {device_type: qemu, count: 1}\n      client: {device_type: qemu, count: 1}\n\
         actions:\n- boot: {method: qemu, role: [server, client]}\n",
        dir.path(),
    )
    .await;
    assert_eq!(report.outcome, Outcome::JobError, "{}", report.reason);
    assert!(
        report
            .reason
            .starts_with("protocols.lava-multinode: a multinode job runs as its role instances"),
        "{}",
        report.reason
    );
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, RunEvent::ActionStarted { .. })),
        "an action started: {events:?}"
    );
}

#[tokio::test]
async fn a_runnable_job_reaches_its_actions() {
    // The control case: the same device runs a tmpfs deploy up to the missing image.
    let dir = tempfile::tempdir().unwrap();
    let (report, events) = run(
        &format!(
            "job_name: ok\ndevice_type: qemu\ncontext: {{arch: x86_64}}\nactions:\n\
             - deploy:\n    to: tmpfs\n    images:\n      kernel: {{url: file:///nonexistent/bzImage}}\n\
             - boot:\n    method: qemu\n    prompts: ['# $']\n{TEST_ACTION}"
        ),
        dir.path(),
    )
    .await;
    assert_eq!(report.outcome, Outcome::JobError);
    assert_eq!(
        report.reason,
        "actions[0].deploy.images.kernel.url: /nonexistent/bzImage: no such file"
    );
    assert!(events.contains(&RunEvent::ActionStarted {
        index: 0,
        name: "deploy"
    }));
}

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=dutlab",
            "-c",
            "user.email=dutlab@example.invalid",
        ])
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn warnings_of_git_definitions_are_notes_before_the_first_action() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("defs");
    std::fs::create_dir_all(repo.join("smoke")).unwrap();
    std::fs::write(
        repo.join("smoke/smoke.yaml"),
        "metadata: {format: Lava-Test Test Definition 1.0, name: smoke}\n\
         install:\n  deps: [curl]\n  git-repos: [https://example.invalid/x.git]\n\
         run:\n  steps:\n  - echo hi\n  colour: blue\n",
    )
    .unwrap();
    git(&repo, &["init", "--quiet"]);
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "--quiet", "-m", "defs"]);
    let (report, events) = run(
        "job_name: git\ndevice_type: qemu\nactions:\n\
         - boot: {method: qemu, prompts: ['# $']}\n\
         - test:\n    definitions:\n    - {from: git, name: smoke, repository: defs, \
         path: smoke/smoke.yaml}\n",
        dir.path(),
    )
    .await;
    // No deploy and no default image: the boot action ends the job, after the notes.
    assert_eq!(report.outcome, Outcome::JobError, "{}", report.reason);
    assert_eq!(
        report.reason,
        "the job has no deploy action and the device has no default image"
    );
    let first_action = events
        .iter()
        .position(|e| matches!(e, RunEvent::ActionStarted { .. }))
        .unwrap();
    let notes: Vec<&str> = events[..first_action]
        .iter()
        .filter_map(|e| match e {
            RunEvent::Note(n) => Some(n.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        notes,
        [
            "warning: actions[1].test.definitions[0].path: smoke/smoke.yaml: install.deps: \
             accepted, not honoured by dutlab yet: packages are not installed in the DUT; \
             install them in a step",
            "warning: actions[1].test.definitions[0].path: smoke/smoke.yaml: install.git-repos: \
             accepted, not honoured by dutlab yet: repositories are not cloned into the DUT; \
             clone them in a step",
            "warning: actions[1].test.definitions[0].path: smoke/smoke.yaml: run.colour: \
             unknown key, ignored",
        ]
    );
}

#[test]
fn the_runner_drives_every_device_type_jobspec_knows() {
    // `run_job` checks a job against the whole table: right while every known device type is
    // one the runner drives (QEMU). A new type must be checked against the device's own type.
    let names: Vec<&str> = jobspec::DEVICE_TYPES.iter().map(|t| t.name).collect();
    assert_eq!(
        names,
        ["qemu"],
        "check jobs against the device's type in run_job"
    );
}
