//! `check_runnable`: a job no device type dutlab knows can run is refused, naming the field,
//! what it needs and what the known device types do.

use dutlab_jobspec::{DEVICE_TYPES, JobError, check_runnable, parse_job};

fn check(text: &str) -> Result<(), JobError> {
    let job = match parse_job("job.yaml", text) {
        Ok(job) => job,
        Err(e) => panic!("the job should parse: {e}"),
    };
    check_runnable("job.yaml", &job)
}

fn refused(text: &str) -> JobError {
    match check(text) {
        Ok(()) => panic!("should be refused:\n{text}"),
        Err(e) => e,
    }
}

const BOOT_TEST: &str = "- boot: {method: qemu, prompts: ['# $']}\n\
     - test: {definitions: [{from: inline, name: t, path: t.yaml, repository: \
     {metadata: {format: Lava-Test Test Definition 1.0, name: t}, run: {steps: ['true']}}}]}\n";

fn with_deploy(deploy: &str) -> String {
    format!("job_name: x\ndevice_type: qemu\nactions:\n- deploy: {deploy}\n{BOOT_TEST}")
}

#[test]
fn the_table_knows_qemu() {
    let names: Vec<&str> = DEVICE_TYPES.iter().map(|t| t.name).collect();
    assert_eq!(names, ["qemu"]);
}

#[test]
fn qemu_jobs_are_runnable() {
    check(&with_deploy(
        "{to: tmpfs, images: {rootfs: {url: r.img.xz, compression: xz}}}",
    ))
    .expect("a tmpfs deploy and a qemu boot run on qemu");
    check(&format!(
        "job_name: x\ndevice_type: qemu\ncontext: {{arch: x86_64}}\nactions:\n{BOOT_TEST}"
    ))
    .expect("no deploy: the device's default image");
}

#[test]
fn tftp_deploy_is_refused() {
    let e = refused(&with_deploy(
        "{to: tftp, kernel: {url: zImage}, dtb: {url: board.dtb}}",
    ));
    assert_eq!(
        e.to_string(),
        "job.yaml: actions[0].deploy.to: 'tftp' needs a device with a TFTP server; the device \
         types dutlab knows (qemu) deploy to tmpfs only"
    );
}

#[test]
fn other_deploy_targets_are_refused() {
    for (to, needs) in [
        ("nfs", "an NFS server"),
        ("fastboot", "fastboot"),
        ("usbg-ms", "deploys to 'usbg-ms'"),
    ] {
        let e = refused(&with_deploy(&format!(
            "{{to: {to}, images: {{rootfs: {{url: r}}}}}}"
        )));
        assert_eq!(e.field, "actions[0].deploy.to", "{e}");
        assert!(e.reason.contains(needs), "{e}");
        assert!(e.reason.ends_with("deploy to tmpfs only"), "{e}");
    }
}

#[test]
fn u_boot_is_refused() {
    let text = "job_name: x\ndevice_type: qemu\nactions:\n\
         - deploy: {to: tmpfs, images: {rootfs: {url: r}}}\n\
         - boot: {method: u-boot, commands: ramdisk, prompts: ['# ']}\n";
    let e = refused(text);
    assert_eq!(
        e.to_string(),
        "job.yaml: actions[1].boot.method: 'u-boot' needs a device with the U-Boot bootloader; \
         the device types dutlab knows (qemu) boot with qemu only"
    );
}

#[test]
fn the_first_unsupported_field_is_named() {
    // Both the deploy and the boot are unsupported: the deploy comes first.
    let text = "job_name: x\ndevice_type: qemu\nactions:\n\
         - deploy: {to: tftp, kernel: {url: zImage}}\n\
         - boot: {method: u-boot, commands: ramdisk, prompts: ['# ']}\n";
    assert_eq!(refused(text).field, "actions[0].deploy.to");
}

#[test]
fn foreign_architectures_are_refused() {
    let text =
        format!("job_name: x\ndevice_type: qemu\ncontext: {{arch: arm64}}\nactions:\n{BOOT_TEST}");
    let e = refused(&text);
    assert_eq!(
        e.to_string(),
        "job.yaml: context.arch: 'arm64' needs a device of that architecture; the device types \
         dutlab knows (qemu) run amd64 only"
    );
}

#[test]
fn compressions_dutlab_cannot_undo_are_refused() {
    let e = refused(&with_deploy(
        "{to: tmpfs, images: {rootfs: {url: r.img.zst, compression: zstd}}}",
    ));
    assert_eq!(
        e.to_string(),
        "job.yaml: actions[0].deploy.images.rootfs.compression: 'zstd' is not supported by \
         dutlab yet (use gz, xz or none)"
    );
}

#[test]
fn a_test_before_any_boot_is_refused() {
    let text = "job_name: x\ndevice_type: qemu\nactions:\n\
         - test: {definitions: [{from: inline, name: t, path: t.yaml, repository: \
         {metadata: {format: Lava-Test Test Definition 1.0, name: t}}}]}\n\
         - boot: {method: qemu}\n";
    let e = refused(text);
    assert_eq!(e.field, "actions[0].test");
    assert!(e.reason.starts_with("no boot action before"), "{e}");
}

#[test]
fn multinode_is_refused() {
    let e = refused(include_str!("fixtures/multinode.yaml"));
    assert_eq!(e.field, "protocols.lava-multinode");
    assert!(e.reason.contains("not run by dutlab yet"), "{e}");
}
