//! Keys dutlab accepts but does not act on: each is a warning naming the field and the reason,
//! and a job that uses only keys dutlab acts on gets no warning at all.

use dutlab_jobspec::{Job, NOT_HONOURED, Warning, parse_job, parse_test_definition};

/// Where a snippet goes in the [`template`].
#[derive(Clone, Copy)]
enum At {
    /// Top level of the job.
    Top,
    /// Inside `actions[0].deploy`.
    Deploy,
    /// Inside `actions[0].deploy.images.rootfs`.
    Rootfs,
    /// Inside `actions[1].boot`.
    Boot,
    /// Inside `actions[2].test`.
    Test,
    /// Inside `actions[2].test.definitions[0]` (a git definition).
    GitRef,
    /// Inside the inline definition `actions[2].test.definitions[1].repository`.
    Inline,
}

fn indent(text: &str, by: usize) -> String {
    text.lines()
        .map(|l| format!("{}{l}\n", " ".repeat(by)))
        .collect()
}

/// A job with a deploy, a boot and a test action, with `snippet` placed `at`.
fn template(at: At, snippet: &str) -> String {
    let part = |here: At, by: usize| {
        if std::mem::discriminant(&here) == std::mem::discriminant(&at) {
            indent(snippet, by)
        } else {
            String::new()
        }
    };
    format!(
        "job_name: x\ndevice_type: qemu\n{top}actions:\n\
         - deploy:\n    to: tmpfs\n{deploy}    images:\n      rootfs:\n        url: rootfs.img\n{rootfs}\
         - boot:\n    method: qemu\n{boot}\
         - test:\n{test}    definitions:\n\
         \x20   - from: git\n      repository: https://example.org/tests.git\n      path: t.yaml\n      name: g\n{gitref}\
         \x20   - from: inline\n      name: t\n      path: inline/t.yaml\n      repository:\n\
         \x20       metadata: {{format: Lava-Test Test Definition 1.0, name: t}}\n\
         \x20       run: {{steps: ['true']}}\n{inline}",
        top = part(At::Top, 0),
        deploy = part(At::Deploy, 4),
        rootfs = part(At::Rootfs, 8),
        boot = part(At::Boot, 4),
        test = part(At::Test, 4),
        gitref = part(At::GitRef, 6),
        inline = part(At::Inline, 8),
    )
}

fn parsed(text: &str) -> Job {
    match parse_job("job.yaml", text) {
        Ok(job) => job,
        Err(e) => panic!("{e}\n{text}"),
    }
}

fn not_honoured(warnings: &[Warning]) -> Vec<(&str, &str)> {
    warnings
        .iter()
        .filter_map(|w| {
            let reason = w.message.strip_prefix(NOT_HONOURED)?.strip_prefix(": ")?;
            Some((w.field.as_str(), reason))
        })
        .collect()
}

#[test]
fn the_template_alone_has_no_warning() {
    let job = parsed(&template(At::Top, ""));
    assert!(job.warnings.is_empty(), "{:?}", job.warnings);
}

/// Every key here is honoured by the runner or the controller: none may warn.
#[test]
fn group_visibility_is_honoured() {
    // The controller shows a group job to the members of its groups (docs/security.md).
    let job = parsed(&template(At::Top, "visibility: {group: [admins, qa]}"));
    assert!(not_honoured(&job.warnings).is_empty(), "{:?}", job.warnings);
    assert_eq!(
        job.visibility,
        dutlab_jobspec::Visibility::Group(vec!["admins".into(), "qa".into()])
    );
}

#[test]
fn honoured_keys_do_not_warn() {
    let text = "job_name: all honoured\ndevice_type: qemu\npriority: high\nvisibility: personal\n\
        tags: [tcg]\ncontext: {arch: amd64}\n\
        timeouts:\n  job: 20m\n  action: 5m\n  connection: 2m\n\
        \x20 actions: {deployimages: 4m, boot-qemu-image: 3m, lava-test-shell: 5m}\n\
        \x20 connections: {deployimages: 1m, boot-qemu-image: 1m, lava-test-shell: 1m}\n\
        actions:\n\
        - deploy:\n    to: tmpfs\n    timeout: 4m\n    namespace: dut\n    images:\n\
        \x20     kernel: {url: vmlinuz}\n\
        \x20     initrd: {url: initrd.gz, compression: gz}\n\
        \x20     rootfs:\n        url: https://example.org/rootfs.img.xz\n        compression: xz\n\
        \x20       format: raw\n        image_arg: -drive format=qcow2,file={rootfs},if=virtio\n\
        \x20       sha256sum: 4dc0363bafc93f48e5b60ada3502394f61d9f1cfbf9059ceed30533aca16d706\n\
        \x20     dtb: {url: board.dtb, image_arg: '-dtb {dtb}'}\n\
        - boot:\n    method: qemu\n    media: tmpfs\n    namespace: dut\n    timeout: 3m\n\
        \x20   connection_timeout: 1m\n    prompts: ['# $']\n\
        \x20   auto_login:\n      login_prompt: 'login:'\n      username: root\n\
        \x20     password_prompt: 'Password:'\n      password: root\n      login_commands: [id]\n\
        - test:\n    timeout: 5m\n    namespace: dut\n    definitions:\n\
        \x20   - from: git\n      repository: https://example.org/tests.git\n      path: smoke.yaml\n\
        \x20     name: smoke\n      revision: 0123abc\n      branch: main\n      history: false\n\
        \x20     params: {A: 1}\n      parameters: {B: 2}\n      lava-signal: kmsg\n\
        \x20   - from: inline\n      name: inline\n      path: inline/t.yaml\n      lava-signal: stdout\n\
        \x20     repository:\n\
        \x20       metadata:\n          format: Lava-Test Test Definition 1.0\n          name: inline\n\
        \x20         description: d\n          version: '1.0'\n          maintainer: [me@example.org]\n\
        \x20         os: [debian]\n          scope: [functional]\n          devices: [qemu]\n\
        \x20       params: {C: 3}\n        install: {steps: [echo install]}\n\
        \x20       run: {steps: ['lava-test-case a --result pass']}\n\
        \x20       parse:\n          pattern: '(?P<test_case_id>\\w+): (?P<result>\\w+)'\n\
        \x20         fixupdict: {PASS: pass}\n";
    let job = parsed(text);
    assert!(job.warnings.is_empty(), "{:#?}", job.warnings);
}

/// (where, snippet, field warned about, words of the reason)
const CASES: &[(At, &str, &str, &str)] = &[
    // Top level.
    (
        At::Top,
        "notify: {criteria: {status: finished}}",
        "notify",
        "no notification",
    ),
    (At::Top, "secrets: {A: b}", "secrets", "not passed"),
    (
        At::Top,
        "environment: {A: b}",
        "environment",
        "no environment variable",
    ),
    (
        At::Top,
        "reboot_to_fastboot: false",
        "reboot_to_fastboot",
        "no fastboot",
    ),
    (
        At::Top,
        "device: qemu-01",
        "device",
        "cannot pick its device",
    ),
    (
        At::Top,
        "worker: host-1",
        "worker",
        "cannot pick its worker",
    ),
    (
        At::Top,
        "metadata: {build: 42}",
        "metadata",
        "not copied into the results",
    ),
    (
        At::Top,
        "context: {extra_options: [-smp, '2']}",
        "context.extra_options",
        "extra QEMU options are not passed to QEMU",
    ),
    (
        At::Top,
        "context: {memory: 2048}",
        "context.memory",
        "device file 'qemu:'",
    ),
    (
        At::Top,
        "context: {netdevice: tap}",
        "context.netdevice",
        "device file 'qemu:'",
    ),
    (
        At::Top,
        "context: {kernel_loglevel: 7}",
        "context.kernel_loglevel",
        "no context variable but 'arch'",
    ),
    (
        At::Top,
        "timeouts: {job: 30m, queue: 1h}",
        "timeouts.queue",
        "waits until a device is free",
    ),
    (
        At::Top,
        "timeouts: {actions: {http-download: 2m}}",
        "timeouts.actions.http-download",
        "'http-download' is not one",
    ),
    (
        At::Top,
        "timeouts: {connections: {auto-login-action: 2m}}",
        "timeouts.connections.auto-login-action",
        "dutlab times whole actions",
    ),
    (
        At::Top,
        "timeouts: {job: {minutes: 30, skip: true}}",
        "timeouts.job.skip",
        "the action is not skipped",
    ),
    (
        At::Top,
        "protocols: {lava-lxc: {name: c}}",
        "protocols.lava-lxc",
        "no LXC container",
    ),
    // Any action.
    (
        At::Boot,
        "failure_retry: 3",
        "actions[1].boot.failure_retry",
        "not retried",
    ),
    (
        At::Deploy,
        "failure_retry_interval: 3",
        "actions[0].deploy.failure_retry_interval",
        "not retried",
    ),
    (At::Test, "repeat: 2", "actions[2].test.repeat", "runs once"),
    (
        At::Boot,
        "timeouts: {auto-login-action: {minutes: 1}}",
        "actions[1].boot.timeouts",
        "not LAVA's sub-actions",
    ),
    (
        At::Test,
        "connection-namespace: other",
        "actions[2].test.connection-namespace",
        "connection of the last boot",
    ),
    (
        At::Deploy,
        "protocols: {lava-lxc: []}",
        "actions[0].deploy.protocols",
        "no protocol request",
    ),
    // Deploy.
    (
        At::Deploy,
        "os: debian",
        "actions[0].deploy.os",
        "same for every OS",
    ),
    (
        At::Deploy,
        "authorize: ssh",
        "actions[0].deploy.authorize",
        "no SSH key",
    ),
    (
        At::Deploy,
        "postprocess: {docker: {image: x}}",
        "actions[0].deploy.postprocess",
        "not post-processed",
    ),
    (
        At::Deploy,
        "uefi: {url: OVMF.fd}",
        "actions[0].deploy.uefi",
        "no UEFI firmware",
    ),
    (
        At::Deploy,
        "modules: {url: modules.tar.gz, compression: gz}",
        "actions[0].deploy.modules",
        "does not give a 'modules' image to the guest",
    ),
    (
        At::Deploy,
        "dtb: {url: board.dtb}",
        "actions[0].deploy.dtb",
        "add 'image_arg'",
    ),
    (
        At::Deploy,
        "nfsrootfs: {url: root.tar.xz, compression: xz}",
        "actions[0].deploy.nfsrootfs",
        "'nfsrootfs' image",
    ),
    (
        At::Deploy,
        "kernel: {url: zImage, type: zimage}",
        "actions[0].deploy.kernel.type",
        "image type is not used",
    ),
    (
        At::Deploy,
        "ramdisk: {url: initrd.cpio, format: cpio.newc}",
        "actions[0].deploy.ramdisk.format",
        "'ramdisk' is not a disk",
    ),
    // Images.
    (
        At::Rootfs,
        "md5sum: 0123",
        "actions[0].deploy.images.rootfs.md5sum",
        "use sha256sum",
    ),
    (
        At::Rootfs,
        "sha512sum: 0123",
        "actions[0].deploy.images.rootfs.sha512sum",
        "use sha256sum",
    ),
    (
        At::Rootfs,
        "headers: {Authorization: x}",
        "actions[0].deploy.images.rootfs.headers",
        "no extra HTTP headers",
    ),
    (
        At::Rootfs,
        "archive: tar",
        "actions[0].deploy.images.rootfs.archive",
        "not unpacked",
    ),
    (
        At::Rootfs,
        "use_cache: false",
        "actions[0].deploy.images.rootfs.use_cache",
        "not cached",
    ),
    (
        At::Rootfs,
        "overlays: {lava: true}",
        "actions[0].deploy.images.rootfs.overlays",
        "nothing is added into images",
    ),
    (
        At::Rootfs,
        "partition: 1",
        "actions[0].deploy.images.rootfs.partition",
        "no partition is picked",
    ),
    (
        At::Rootfs,
        "root_partition: 2",
        "actions[0].deploy.images.rootfs.root_partition",
        "no partition is picked",
    ),
    (
        At::Rootfs,
        "sparse: true",
        "actions[0].deploy.images.rootfs.sparse",
        "no sparse conversion",
    ),
    // Boot.
    (
        At::Boot,
        "commands: ramdisk",
        "actions[1].boot.commands",
        "no bootloader to send commands to",
    ),
    (
        At::Boot,
        "commands: [setenv a b, boot]",
        "actions[1].boot.commands",
        "no bootloader to send commands to",
    ),
    (
        At::Boot,
        "media: nfs",
        "actions[1].boot.media",
        "'nfs' is not used",
    ),
    (
        At::Boot,
        "connection: serial",
        "actions[1].boot.connection",
        "serial console is the only connection",
    ),
    (
        At::Boot,
        "transfer_overlay: {download_command: wget, unpack_command: tar xf}",
        "actions[1].boot.transfer_overlay",
        "not by a download command",
    ),
    (
        At::Boot,
        "docker: {image: qemu}",
        "actions[1].boot.docker",
        "not in a container",
    ),
    (
        At::Boot,
        "parameters: {shutdown-message: bye}",
        "actions[1].boot.parameters",
        "not watched for",
    ),
    (
        At::Boot,
        "soft_reboot: reboot",
        "actions[1].boot.soft_reboot",
        "not rebooted from its shell",
    ),
    (
        At::Boot,
        "ignore_kernel_messages: true",
        "actions[1].boot.ignore_kernel_messages",
        "kernel messages",
    ),
    (
        At::Boot,
        "bootloader_prompt: '=>'",
        "actions[1].boot.bootloader_prompt",
        "no bootloader",
    ),
    // Test actions and definitions.
    (
        At::Test,
        "docker: {image: debian}",
        "actions[2].test.docker",
        "not in a container",
    ),
    (
        At::GitRef,
        "recursive: true",
        "actions[2].test.definitions[0].recursive",
        "submodules",
    ),
    (
        At::GitRef,
        "skip_install: [deps]",
        "actions[2].test.definitions[0].skip_install",
        "install steps always run",
    ),
    (
        At::GitRef,
        "expected: [a, b]",
        "actions[2].test.definitions[0].expected",
        "not listed as missing",
    ),
    // Inline test definitions.
    (
        At::Inline,
        "install: {deps: [curl]}",
        "actions[2].test.definitions[1].repository.install.deps",
        "packages are not installed",
    ),
    (
        At::Inline,
        "install: {deps-debian: [curl]}",
        "actions[2].test.definitions[1].repository.install.deps-debian",
        "packages are not installed",
    ),
    (
        At::Inline,
        "install: {git-repos: [https://example.org/x.git]}",
        "actions[2].test.definitions[1].repository.install.git-repos",
        "not cloned into the DUT",
    ),
    (
        At::Inline,
        "install: {keys: [k], sources: [s]}",
        "actions[2].test.definitions[1].repository.install.keys",
        "signing keys",
    ),
    (
        At::Inline,
        "install: {keys: [k], sources: [s]}",
        "actions[2].test.definitions[1].repository.install.sources",
        "package sources",
    ),
    (
        At::Inline,
        "expected: [a]",
        "actions[2].test.definitions[1].repository.expected",
        "not listed as missing",
    ),
];

#[test]
fn each_ignored_key_warns_with_its_path_and_reason() {
    for (at, snippet, field, words) in CASES {
        let text = template(*at, snippet);
        let job = parsed(&text);
        let warned = not_honoured(&job.warnings);
        assert!(
            warned
                .iter()
                .any(|(f, reason)| f == field && reason.contains(words)),
            "{snippet}: want a warning on {field} saying {words:?}, got {:#?}",
            job.warnings
        );
        // The warning is about that key only: nothing else in the job warns.
        let others: Vec<_> = job
            .warnings
            .iter()
            .filter(|w| {
                !CASES
                    .iter()
                    .any(|(_, s, f, _)| s == snippet && w.field == *f)
            })
            .collect();
        assert!(others.is_empty(), "{snippet}: other warnings {others:#?}");
    }
}

#[test]
fn warnings_read_as_file_field_reason() {
    let job = parsed(&template(At::Top, "context: {extra_options: [-smp, '2']}"));
    let lines: Vec<String> = job
        .warnings
        .iter()
        .map(|w| format!("job.yaml: {w}"))
        .collect();
    assert_eq!(
        lines,
        [
            "job.yaml: context.extra_options: accepted, not honoured by dutlab yet: extra QEMU \
          options are not passed to QEMU; its command line comes from the device (device file \
          'qemu:')"
        ]
    );
}

#[test]
fn arch_is_honoured_and_other_context_variables_are_not() {
    let job = parsed(&template(At::Top, "context: {arch: x86_64, cpu: host}"));
    let fields: Vec<&str> = job.warnings.iter().map(|w| w.field.as_str()).collect();
    assert_eq!(fields, ["context.cpu"]);
    assert_eq!(job.context.arch.as_deref(), Some("x86_64"));
}

#[test]
fn image_arg_makes_a_dtb_honoured_and_format_on_a_disk_is_honoured() {
    let job = parsed(&template(
        At::Deploy,
        "dtb: {url: board.dtb, image_arg: '-dtb {dtb}'}",
    ));
    assert!(job.warnings.is_empty(), "{:?}", job.warnings);
    let disk = parsed(&template(At::Rootfs, "format: qcow2"));
    assert!(disk.warnings.is_empty(), "{:?}", disk.warnings);
}

#[test]
fn one_namespace_is_fine_two_are_not_kept_apart() {
    let one = "job_name: x\ndevice_type: qemu\nactions:\n\
        - boot: {method: qemu, namespace: a}\n\
        - test: {namespace: a, definitions: [{from: inline, name: t, path: t.yaml, repository: \
        {metadata: {format: Lava-Test Test Definition 1.0, name: t}}}]}\n";
    assert!(parsed(one).warnings.is_empty());
    let two = one.replace("test: {namespace: a", "test: {namespace: b");
    let job = parsed(&two);
    let warned = not_honoured(&job.warnings);
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert_eq!(warned[0].0, "actions[1].test.namespace");
    assert!(
        warned[0].1.contains("'b' is not kept apart from 'a'"),
        "{}",
        warned[0].1
    );
}

#[test]
fn standalone_definitions_warn_too() {
    let def = parse_test_definition(
        "t.yaml",
        "metadata: {format: Lava-Test Test Definition 1.0, name: t}\n\
         install: {deps: [curl], steps: ['echo hi']}\nexpected: [a]\nrun: {steps: ['true']}\n",
    )
    .expect("a valid definition");
    let warned: Vec<&str> = not_honoured(&def.warnings)
        .into_iter()
        .map(|(f, _)| f)
        .collect();
    assert_eq!(warned, ["install.deps", "expected"]);
    assert_eq!(def.install_steps, ["echo hi"]);
}

#[test]
fn lava_signal_is_honoured_and_only_kmsg_or_stdout() {
    use dutlab_jobspec::{Action, LavaSignal};
    let signal = |snippet: &str| {
        let job = parsed(&template(At::GitRef, snippet));
        assert!(job.warnings.is_empty(), "{snippet}: {:?}", job.warnings);
        let Some(Action::Test(test)) = job.actions.get(2) else {
            panic!("{snippet}: no test action")
        };
        (
            test.definitions[0].lava_signal,
            test.definitions[1].lava_signal,
        )
    };
    assert_eq!(
        signal("lava-signal: kmsg"),
        (LavaSignal::Kmsg, LavaSignal::Stdout)
    );
    assert_eq!(
        signal("lava-signal: stdout"),
        (LavaSignal::Stdout, LavaSignal::Stdout)
    );
    assert_eq!(signal(""), (LavaSignal::Stdout, LavaSignal::Stdout));
    let err = parse_job("job.yaml", &template(At::GitRef, "lava-signal: serial"))
        .expect_err("LAVA's schema refuses other words");
    assert_eq!(
        err.to_string(),
        "job.yaml: actions[2].test.definitions[0].lava-signal: 'serial' is not a signal \
         channel (use kmsg or stdout)"
    );
}
