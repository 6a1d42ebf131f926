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
         types dutlab knows (qemu) deploy to tmpfs or downloads only"
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
        assert!(
            e.reason.ends_with("deploy to tmpfs or downloads only"),
            "{e}"
        );
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
fn every_lava_compression_is_runnable() {
    for c in ["gz", "xz", "bz2", "zstd", "zip"] {
        check(&with_deploy(&format!(
            "{{to: tmpfs, images: {{rootfs: {{url: r.img.{c}, compression: {c}}}}}}}"
        )))
        .unwrap_or_else(|e| panic!("{c}: {e}"));
    }
}

#[test]
fn url_schemes_dutlab_does_not_fetch_name_what_is_missing() {
    let e = refused(&with_deploy(
        "{to: tmpfs, images: {rootfs: {url: 'rclone://remote/path/r.img'}}}",
    ));
    assert_eq!(e.field, "actions[0].deploy.images.rootfs.url");
    assert!(
        e.reason
            .starts_with("'rclone://' URLs need rclone and a remote configured for it"),
        "{e}"
    );
    let e = refused(
        "job_name: x\ndevice_type: qemu\nactions:\n- boot: {method: qemu}\n\
         - test: {definitions: [{from: url, name: t, path: t.yaml, \
         repository: 'scp://host/defs.tar'}]}\n",
    );
    assert_eq!(e.field, "actions[1].test.definitions[0].repository");
    assert!(e.reason.contains("an SSH client"), "{e}");
}

#[test]
fn downloads_urls_need_an_earlier_downloads_deploy() {
    check(&format!(
        "job_name: x\ndevice_type: qemu\nactions:\n\
         - deploy: {{to: downloads, images: {{rootfs: {{url: 'https://h.example/r.img.zst', \
         compression: zstd}}}}}}\n\
         - deploy: {{to: tmpfs, images: {{rootfs: {{url: 'downloads://r.img'}}}}}}\n{BOOT_TEST}"
    ))
    .expect("downloads:// after a downloads deploy runs");
    let e = refused(&with_deploy(
        "{to: tmpfs, images: {rootfs: {url: 'downloads://r.img'}}}",
    ));
    assert_eq!(e.field, "actions[0].deploy.images.rootfs.url");
    assert!(
        e.reason.contains("earlier 'deploy: {to: downloads}'"),
        "{e}"
    );
}

#[test]
fn uuu_boot_commands_are_valid_lava_but_no_device_here_runs_uuu() {
    let e = refused(
        "job_name: x\ndevice_type: imx8\nactions:\n\
         - boot: {method: uuu, commands: [{uuu: '-b sd {boot}'}, {bcu: 'reset usb'}, \
         'plain']}\n",
    );
    assert_eq!(e.field, "actions[0].boot.method");
    assert!(e.reason.starts_with("'uuu' needs"), "{e}");
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
fn multinode_is_runnable_locally_and_in_the_lab() {
    let text = include_str!("fixtures/multinode.yaml");
    check(text).expect("each role's actions suit qemu");
    let job = parse_job("job.yaml", text).expect("valid");
    dutlab_jobspec::check_runnable("job.yaml", &job).expect("the lab schedules groups");
}
