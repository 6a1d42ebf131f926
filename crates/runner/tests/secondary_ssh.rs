//! A secondary connection over SSH with a real QEMU DUT (TCG) as its host: the host job
//! boots the shared guest image (dropbear) with `authorize: ssh`, which installs the group's
//! public key; a guest job (`deploy: to: ssh`, `boot: method: ssh`), started at the same time,
//! waits for the host DUT's SSH forward its runner publishes, logs in through it, copies its overlay as `/<job_id>-overlay-<level>.tar.gz`, unpacks it
//! under `/lava-<job_id>` and runs its definition there, whose results come back; the host's
//! test waits until the guest has been there. One QEMU. Needs `ssh`, `ssh-keygen`
//! (openssh-client) and dropbear-bin, from scripts/install-deps.sh.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use anyhow::{Result, ensure};
use dutlab_runner::device::Device;
use dutlab_runner::secondary::{HostEndpoint, SecondaryContext, SshRoute};
use dutlab_runner::{Cancel, JobContext, RunEvent, run_job};
use proto::{CaseResult, JobReport, Outcome};
use std::time::Duration;

fn host_job(image: &std::path::Path) -> String {
    format!(
        "job_name: ssh host\ndevice_type: qemu\ntimeouts: {{job: {{minutes: 12}}, action: {{minutes: 10}}, connection: {{minutes: 4}}}}\nactions:\n\
         - deploy:\n    to: tmpfs\n    authorize: ssh\n    images:\n\
         \x20     kernel: {{url: {k}}}\n\
         \x20     initrd: {{url: {i}}}\n\
         \x20     rootfs: {{url: {r}, format: qcow2}}\n\
         - boot: {{method: qemu, prompts: ['# $'], auto_login: {{login_prompt: 'login:', username: root}}}}\n\
         - test:\n    definitions:\n    - from: inline\n      name: host\n      path: inline/host.yaml\n      repository:\n\
         \x20       metadata: {{format: Lava-Test Test Definition 1.0, name: host}}\n        run:\n          steps:\n\
         \x20         - lava-test-case keys --shell grep -q dutlab-group /root/.ssh/authorized_keys\n\
         \x20         - i=0; while [ ! -e /tmp/guest-done ] && [ $i -lt 480 ]; do sleep 1; i=$((i+1)); done\n\
         \x20         - lava-test-case guest-was-here --shell test -e /tmp/guest-done\n",
        k = image.join("vmlinuz").display(),
        i = image.join("initramfs.cpio.gz").display(),
        r = image.join("rootfs.qcow2").display(),
    )
}

const GUEST_JOB: &str = "job_name: ssh guest\ndevice_type: qemu\n\
    timeouts: {job: {minutes: 10}, action: {minutes: 8}, connection: {minutes: 3}}\nactions:\n\
    - deploy: {to: ssh, connection: ssh}\n\
    - boot: {method: ssh, connection: ssh, prompts: ['# ']}\n\
    - test:\n    definitions:\n    - from: inline\n      name: visit\n      path: inline/visit.yaml\n      repository:\n\
    \x20       metadata: {format: Lava-Test Test Definition 1.0, name: visit}\n        run:\n          steps:\n\
    \x20         - lava-test-case overlay-file --shell test -s /g7-overlay-1.tar.gz\n\
    \x20         - lava-test-case own-root --shell test -d /lava-g7/tests/0_visit\n\
    \x20         - lava-test-case host-shell-untouched --shell test -d /lava-dutlab/tests/0_host\n\
    \x20         - lava-test-case on-the-dut --shell grep -q ID=dutlab /etc/os-release\n\
    \x20         - touch /tmp/guest-done\n";

fn case(report: &JobReport, name: &str) -> Option<CaseResult> {
    report
        .cases
        .iter()
        .find(|c| c.name == name)
        .map(|c| c.result)
}

#[tokio::test]
async fn a_guest_logs_in_over_ssh_copies_its_overlay_and_runs_its_test_on_the_host_dut()
-> Result<()> {
    let image = testkit::guest_image()?;
    let dir = tempfile::tempdir()?;
    let pair = dutlab_runner::ssh::generate_key_pair(dir.path())?;
    let device = Device::default_qemu();

    let host_text = host_job(&image);
    let host = jobspec::parse_job("host.yaml", &host_text)?;
    // The host's runner publishes its DUT's SSH forward; the guest, started at once, waits
    // for it and then for the key to be authorized (sshd refuses it until then).
    let endpoint = HostEndpoint::default();
    let host_ctx = JobContext {
        job_dir: dir.path().to_path_buf(),
        default_image: None,
        work_root: Some(dir.path().to_path_buf()),
        policy: dutlab_runner::policy::HostPolicy::local(),
        secondary: None,
        authorized_keys: vec![pair.public.clone()],
        publish_ssh: Some(endpoint.clone()),
        multinode: None,
        group_net: None,
    };
    let (tx, mut host_events) = tokio::sync::mpsc::unbounded_channel();
    let host_device = device.clone();
    let host_run = tokio::spawn(async move {
        run_job(&host, &host_ctx, &host_device, tx, Cancel::default()).await
    });
    let host_notes = tokio::spawn(async move {
        let mut notes = Vec::new();
        while let Some(event) = host_events.recv().await {
            if let RunEvent::Note(n) = event {
                notes.push(n);
            }
        }
        notes
    });

    let guest = jobspec::parse_job("guest.yaml", GUEST_JOB)?;
    let guest_ctx = JobContext {
        job_dir: dir.path().to_path_buf(),
        default_image: None,
        work_root: Some(dir.path().to_path_buf()),
        policy: dutlab_runner::policy::HostPolicy::local(),
        secondary: Some(SecondaryContext {
            job_id: "g7".into(),
            user: "root".into(),
            private_key: pair.private.clone(),
            route: SshRoute::Published(endpoint.clone()),
        }),
        authorized_keys: Vec::new(),
        publish_ssh: None,
        multinode: None,
        group_net: None,
    };
    let (tx, mut guest_events) = tokio::sync::mpsc::unbounded_channel();
    let guest_report = run_job(&guest, &guest_ctx, &device, tx, Cancel::default()).await;
    let mut notes = Vec::new();
    let mut console = Vec::new();
    while let Ok(event) = guest_events.try_recv() {
        match event {
            RunEvent::Note(n) => notes.push(n),
            RunEvent::Console(b) => console.extend_from_slice(&b),
            _ => {}
        }
    }
    let shown = format!(
        "{guest_report:?}\nnotes: {notes:#?}\nconsole:\n{}",
        String::from_utf8_lossy(&console)
    );
    ensure!(guest_report.outcome == Outcome::Passed, "{shown}");
    for name in [
        "overlay-file",
        "own-root",
        "host-shell-untouched",
        "on-the-dut",
    ] {
        ensure!(
            case(&guest_report, name) == Some(CaseResult::Pass),
            "{name}: {shown}"
        );
    }
    // Through the host DUT's forward on 127.0.0.1.
    ensure!(
        notes
            .iter()
            .any(|n| n.contains("copied to 127.0.0.1:") && n.contains("as /g7-overlay-1.tar.gz")),
        "{shown}"
    );
    // The guest's work directory (key, known hosts) is gone.
    let left: Vec<_> = std::fs::read_dir(dir.path())?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("dutlab-job-"))
        .collect();
    ensure!(left.len() <= 1, "{left:?}");

    let host_report = tokio::time::timeout(Duration::from_secs(300), host_run).await??;
    let host_notes = host_notes.await?;
    ensure!(
        host_report.outcome == Outcome::Passed,
        "{host_report:?}\n{host_notes:#?}"
    );
    ensure!(
        host_notes
            .iter()
            .any(|n| n.contains("SSH key(s) authorized")),
        "{host_notes:#?}"
    );
    ensure!(
        case(&host_report, "keys") == Some(CaseResult::Pass),
        "{host_report:?}"
    );
    ensure!(
        case(&host_report, "guest-was-here") == Some(CaseResult::Pass),
        "{host_report:?}"
    );
    Ok(())
}
