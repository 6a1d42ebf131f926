//! Valid job files: LAVA jobs as written, and the short forms.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use dutlab_jobspec::{
    Action, Compression, DefinitionSource, ImageSource, Job, NOT_HONOURED, TIMED_ACTIONS,
    Visibility, parse_job,
};

const QEMU_SMOKE: &str = include_str!("fixtures/qemu-smoke.yaml");
const KERNEL_INITRD: &str = include_str!("fixtures/kernel-initrd.yaml");
const MULTINODE: &str = include_str!("fixtures/multinode.yaml");
const SHORT_TIMEOUTS: &str = include_str!("fixtures/short-timeouts.yaml");

fn mins(m: u64) -> Duration {
    Duration::from_secs(m * 60)
}

fn parse(file: &str, text: &str) -> Job {
    match parse_job(file, text) {
        Ok(job) => job,
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn full_qemu_job() {
    let job = parse("qemu-smoke.yaml", QEMU_SMOKE);
    assert_eq!(job.name, "qemu smoke test");
    assert_eq!(job.device_type, "qemu");
    assert_eq!(job.priority, 50);
    assert_eq!(job.visibility, Visibility::Public);
    assert_eq!(job.tags, ["tcg"]);
    assert_eq!(job.context.arch.as_deref(), Some("amd64"));
    assert_eq!(job.context.extra_options, ["-smp", "2"]);
    assert_eq!(job.context.other["netdevice"], "user");
    assert_eq!(job.context.other["memory"], "1024");
    assert_eq!(job.metadata["build"], "42");
    assert_eq!(job.timeouts.job, mins(20));
    assert_eq!(job.timeouts.action, mins(5));
    assert_eq!(job.timeouts.connection, mins(2));
    assert_eq!(job.timeouts.actions["lava-test-shell"], mins(3));
    assert!(job.protocols.multinode.is_none());
    assert_eq!(job.actions.len(), 3);

    let Action::Deploy(deploy) = &job.actions[0] else {
        panic!("actions[0] is {:?}", job.actions[0]);
    };
    assert_eq!(deploy.to, "tmpfs");
    assert_eq!(deploy.os.as_deref(), Some("debian"));
    assert_eq!(deploy.timeout, Some(mins(5)));
    let rootfs = &deploy.images["rootfs"];
    assert_eq!(
        rootfs.source,
        ImageSource::Http("https://images.example.org/kvm/standard/stretch-2.img.gz".into())
    );
    assert_eq!(rootfs.compression, Compression::Gz);
    assert_eq!(
        rootfs.image_arg.as_deref(),
        Some("-drive format=raw,file={rootfs}")
    );
    assert_eq!(
        rootfs.sha256sum.as_deref(),
        Some("b5cdb3b9e65fec2d3654a05dcdf507281f408b624535b33375170d1e852b982c")
    );

    let Action::Boot(boot) = &job.actions[1] else {
        panic!("actions[1] is {:?}", job.actions[1]);
    };
    assert_eq!(boot.method, "qemu");
    assert_eq!(boot.media.as_deref(), Some("tmpfs"));
    assert_eq!(boot.prompts, ["root@debian:"]);
    assert_eq!(boot.timeout, Some(mins(2)));
    let login = boot.auto_login.as_ref().unwrap();
    assert_eq!(login.login_prompt, "login:");
    assert_eq!(login.username, "root");
    assert_eq!(login.password_prompt.as_deref(), Some("Password:"));
    assert_eq!(login.password.as_deref(), Some("secret"));
    assert_eq!(login.login_commands, ["echo logged-in"]);

    let Action::Test(test) = &job.actions[2] else {
        panic!("actions[2] is {:?}", job.actions[2]);
    };
    assert_eq!(test.timeout, Some(mins(5)));
    assert_eq!(test.definitions.len(), 2);
    let git = &test.definitions[0];
    assert_eq!(git.name, "smoke-tests");
    assert_eq!(git.path, "automated/linux/smoke/smoke.yaml");
    assert_eq!(git.params["SKIP_INSTALL"], "true");
    assert_eq!(
        git.source,
        DefinitionSource::Git {
            repository: "https://github.com/Linaro/test-definitions".into(),
            revision: None,
            branch: Some("master".into()),
            history: false,
        }
    );
    let inline = &test.definitions[1];
    assert_eq!(inline.name, "inline-checks");
    let DefinitionSource::Inline(def) = &inline.source else {
        panic!("not inline: {:?}", inline.source);
    };
    assert_eq!(def.metadata.name, "inline-checks");
    assert_eq!(def.metadata.other["version"], "1.0");
    assert_eq!(def.metadata.other_lists["os"], ["debian"]);
    assert_eq!(def.install_steps, ["true"]);
    assert_eq!(def.run_steps.len(), 3);
    assert_eq!(def.run_steps[2], "7");
    let parse = def.parse.as_ref().unwrap();
    assert!(parse.pattern.contains("(?P<test_case_id>"));
    assert_eq!(parse.fixupdict["PASS"], "pass");

    // Known to LAVA, kept or dropped here, but not acted on by dutlab: each says so.
    let warned: Vec<&str> = job.warnings.iter().map(|w| w.field.as_str()).collect();
    assert_eq!(
        warned,
        [
            "context.extra_options",
            "context.memory",
            "context.netdevice",
            "metadata",
            "actions[0].deploy.os",
            "notify",
        ]
    );
    assert!(
        job.warnings
            .iter()
            .all(|w| w.message.starts_with(NOT_HONOURED)),
        "{:?}",
        job.warnings
    );
    assert_eq!(
        job.warnings[5].to_string(),
        "notify: accepted, not honoured by dutlab yet: no notification is sent when the job ends"
    );
}

#[test]
fn kernel_and_initrd_job() {
    let job = parse("kernel-initrd.yaml", KERNEL_INITRD);
    assert_eq!(job.priority, 80);
    assert_eq!(
        job.visibility,
        Visibility::Group(vec!["lab-admins".into(), "kernel".into()])
    );
    assert_eq!(job.context.arch.as_deref(), Some("arm64"));
    assert_eq!(job.context.extra_options, ["-smp 1"]);
    assert_eq!(job.context.other["machine"], "virt");
    assert_eq!(job.timeouts.connection, mins(3));
    let Action::Deploy(deploy) = &job.actions[0] else {
        panic!("{:?}", job.actions[0]);
    };
    let kernel = &deploy.images["kernel"];
    assert_eq!(
        kernel.source,
        ImageSource::Path("/srv/images/vmlinuz-6.1".into())
    );
    assert_eq!(kernel.compression, Compression::None);
    assert!(
        kernel
            .image_arg
            .as_deref()
            .unwrap()
            .starts_with("-kernel {kernel}")
    );
    let initrd = &deploy.images["initrd"];
    assert_eq!(
        initrd.source,
        ImageSource::Path("images/initrd.cpio.xz".into())
    );
    assert_eq!(initrd.compression, Compression::Xz);
    assert_eq!(initrd.format.as_deref(), Some("cpio.newc"));
    assert_eq!(initrd.sha256sum, None);
    let Action::Boot(boot) = &job.actions[1] else {
        panic!("{:?}", job.actions[1]);
    };
    assert_eq!(boot.prompts, [r"\(initramfs\)", "/ #"]);
    assert!(boot.auto_login.is_none());
    let warned: Vec<&str> = job.warnings.iter().map(|w| w.field.as_str()).collect();
    assert_eq!(
        warned,
        [
            "visibility.group",
            "context.cpu",
            "context.extra_options",
            "context.machine",
            "actions[0].deploy.images.initrd.format",
        ]
    );
}

#[test]
fn multinode_job() {
    let job = parse("multinode.yaml", MULTINODE);
    assert_eq!(job.device_type, "");
    assert_eq!(job.priority, 0);
    let m = job.protocols.multinode.as_ref().unwrap();
    assert_eq!(m.timeout, Some(mins(6)));
    assert_eq!(m.roles.len(), 2);
    let server = &m.roles["server"];
    assert_eq!(server.device_type, "qemu");
    assert_eq!(server.count, 1);
    assert_eq!(server.tags, ["big"]);
    assert_eq!(server.context["arch"], "amd64");
    assert_eq!(server.context_lists["extra_options"], ["-m", "512"]);
    let client = &m.roles["client"];
    assert_eq!(client.count, 2);
    assert_eq!(client.timeout, Some(mins(3)));
    assert_eq!(job.actions[0].role(), ["server", "client"]);
    assert_eq!(job.actions[1].role(), ["server", "client"]);
    assert_eq!(job.actions[2].role(), ["client"]);
    let Action::Test(test) = &job.actions[2] else {
        panic!("{:?}", job.actions[2]);
    };
    assert!(matches!(
        &test.definitions[0].source,
        DefinitionSource::Git { revision: Some(r), history: true, .. } if r == "0123abc"
    ));
    // Only deploy, boot and test as a whole are timed.
    let warnings: Vec<String> = job.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        warnings,
        [
            "timeouts.actions.multinode-test: accepted, not honoured by dutlab yet: dutlab times \
             whole actions, by their LAVA names deployimages, boot-qemu-image, lava-test-shell, \
             lava-test-interactive, lava-test-monitor, user-command; 'multinode-test' is not one"
        ]
    );
}

#[test]
fn short_form_timeouts() {
    let job = parse("short-timeouts.yaml", SHORT_TIMEOUTS);
    assert_eq!(job.timeouts.job, mins(90));
    assert_eq!(job.timeouts.action, mins(10));
    assert_eq!(job.timeouts.connection, Duration::from_secs(90));
    assert_eq!(
        job.timeouts.actions["auto-login-action"],
        Duration::from_secs(45)
    );
    assert_eq!(job.timeouts.connections["lava-test-shell"], mins(2));
    assert_eq!(job.actions[0].timeout(), Some(mins(5)));
    assert_eq!(job.actions[1].timeout(), Some(mins(5)));
    assert_eq!(job.actions[2].timeout(), Some(mins(60)));
    let Action::Boot(boot) = &job.actions[1] else {
        panic!("{:?}", job.actions[1]);
    };
    assert_eq!(boot.connection_timeout, Some(Duration::from_secs(30)));
    assert_eq!(boot.prompts, ["/ #"]);
    let Action::Deploy(deploy) = &job.actions[0] else {
        panic!("{:?}", job.actions[0]);
    };
    assert_eq!(
        deploy.images["rootfs"].source,
        ImageSource::Path("/var/lib/dutlab/images/busybox.img".into())
    );
}

#[test]
fn defaults() {
    let job = parse(
        "min.yaml",
        "job_name: x\ndevice_type: qemu\nactions:\n- boot: {method: qemu}\n",
    );
    assert_eq!(job.priority, 50);
    assert_eq!(job.visibility, Visibility::Public);
    assert_eq!(job.timeouts.job, mins(30));
    assert_eq!(job.timeouts.action, mins(10));
    assert_eq!(job.timeouts.connection, mins(2));
    assert!(job.tags.is_empty() && job.metadata.is_empty());
}

#[test]
fn unknown_keys_are_warnings() {
    let job = parse(
        "w.yaml",
        "job_name: x\ndevice_type: qemu\nfrobs: 1\nsecrets: {A: b}\nactions:\n\
         - boot: {method: qemu, foo: 1, failure_retry: 2}\n",
    );
    let warnings: Vec<String> = job.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        warnings,
        [
            "actions[0].boot.failure_retry: accepted, not honoured by dutlab yet: a failed action is not retried",
            "actions[0].boot.foo: unknown key, ignored",
            "secrets: accepted, not honoured by dutlab yet: secrets are not passed to the job",
            "frobs: unknown key, ignored",
        ]
    );
}

#[test]
fn priorities_and_visibility() {
    for (p, want) in [
        ("high", 100),
        ("medium", 50),
        ("low", 0),
        ("0", 0),
        ("100", 100),
    ] {
        let job = parse(
            "p.yaml",
            &format!(
                "job_name: x\ndevice_type: q\npriority: {p}\nactions: [{{boot: {{method: q}}}}]\n"
            ),
        );
        assert_eq!(job.priority, want, "{p}");
    }
    let job = parse(
        "v.yaml",
        "job_name: x\ndevice_type: q\nvisibility: personal\nactions: [{boot: {method: q}}]\n",
    );
    assert_eq!(job.visibility, Visibility::Personal);
}

#[test]
fn lava_tftp_style_images_at_deploy_level() {
    let job = parse(
        "tftp.yaml",
        "job_name: x\ndevice_type: bbb\nactions:\n- deploy:\n    to: tftp\n    kernel:\n      \
         url: http://example.org/zImage\n      type: zimage\n    dtb:\n      url: http://example.org/am335x-boneblack.dtb\n\
         - boot:\n    method: u-boot\n    commands: ramdisk\n",
    );
    let Action::Deploy(d) = &job.actions[0] else {
        panic!()
    };
    assert_eq!(d.images.len(), 2);
    assert_eq!(d.images["kernel"].kind.as_deref(), Some("zimage"));
    let Action::Boot(b) = &job.actions[1] else {
        panic!()
    };
    assert_eq!(b.commands.as_deref(), Some("ramdisk"));
}

#[test]
fn file_url_forms() {
    for (url, want) in [
        ("file:///a/b", "/a/b"),
        ("file://localhost/a/b", "/a/b"),
        ("file:///a%20b/c", "/a b/c"),
        ("relative/img.gz", "relative/img.gz"),
        ("/abs/img", "/abs/img"),
    ] {
        let job = parse(
            "f.yaml",
            &format!(
                "job_name: x\ndevice_type: q\nactions:\n- deploy: {{to: tmpfs, images: {{rootfs: {{url: '{url}'}}}}}}\n"
            ),
        );
        let Action::Deploy(d) = &job.actions[0] else {
            panic!()
        };
        assert_eq!(
            d.images["rootfs"].source,
            ImageSource::Path(want.into()),
            "{url}"
        );
    }
}

#[test]
fn namespaces_and_interactive() {
    let job = parse(
        "ns.yaml",
        "job_name: x\ndevice_type: q\nactions:\n\
         - boot: {method: qemu, namespace: a}\n\
         - test: {namespace: a, interactive: [{name: x, prompts: ['#'], script: []}]}\n",
    );
    assert_eq!(job.actions[1].namespace(), Some("a"));
    let Action::Test(t) = &job.actions[1] else {
        panic!()
    };
    assert!(t.definitions.is_empty());
    assert_eq!(t.interactive.len(), 1);
    assert!(job.warnings.is_empty(), "{:?}", job.warnings);
}

#[test]
fn each_action_answers_to_its_timed_lava_name_and_only_those_do_not_warn() {
    let job = parse(
        "t.yaml",
        "job_name: x\ndevice_type: qemu\n\
         timeouts:\n  actions: {deployimages: 1m, boot-qemu-image: 2m, lava-test-shell: 3m, \
         lava-test-interactive: 4m, lava-test-monitor: 5m, user-command: 6m, \
         auto-login-action: 7m}\n\
         actions:\n- deploy: {to: tmpfs, images: {}}\n- boot: {method: qemu}\n\
         - test: {definitions: [{from: git, name: t, path: t.yaml, repository: r}]}\n\
         - test: {interactive: [{name: i, prompts: ['=> '], script: [{command: version}]}]}\n\
         - test: {monitors: [{name: m, start: a, end: b, pattern: c}]}\n\
         - command: {name: relay-on}\n",
    );
    let names: Vec<&str> = job.actions.iter().map(Action::lava_name).collect();
    assert_eq!(names, TIMED_ACTIONS);
    for (action, minutes) in job.actions.iter().zip(1..) {
        assert_eq!(job.timeouts.actions[action.lava_name()], mins(minutes));
    }
    let warned: Vec<&str> = job
        .warnings
        .iter()
        .filter(|w| w.field.starts_with("timeouts.actions."))
        .map(|w| w.field.as_str())
        .collect();
    assert_eq!(warned, ["timeouts.actions.auto-login-action"]);
}
