//! Refused job files and test definitions: each error names the file and the field.
#![allow(clippy::unwrap_used)]

use dutlab_jobspec::{JobError, parse_job, parse_test_definition};

const QEMU_SMOKE: &str = include_str!("fixtures/qemu-smoke.yaml");
const TESTDEF: &str = include_str!("fixtures/smoke-testdef.yaml");

fn job_err(text: &str) -> JobError {
    match parse_job("job.yaml", text) {
        Ok(job) => panic!("accepted: {job:?}"),
        Err(e) => e,
    }
}

fn testdef_err(text: &str) -> JobError {
    match parse_test_definition("def.yaml", text) {
        Ok(def) => panic!("accepted: {def:?}"),
        Err(e) => e,
    }
}

/// `QEMU_SMOKE` with `from` replaced by `to` (which must occur exactly once).
fn smoke_with(from: &str, to: &str) -> String {
    assert_eq!(QEMU_SMOKE.matches(from).count(), 1, "{from:?}");
    QEMU_SMOKE.replace(from, to)
}

const HEAD: &str = "job_name: x\ndevice_type: qemu\n";

#[test]
fn missing_definition_path() {
    let text = smoke_with("      path: automated/linux/smoke/smoke.yaml\n", "");
    let e = parse_job("qemu-smoke.yaml", &text).unwrap_err();
    assert_eq!(
        e.to_string(),
        "qemu-smoke.yaml: actions[2].test.definitions[0]: 'path' is missing"
    );
    assert_eq!(e.file, "qemu-smoke.yaml");
    assert_eq!(e.field, "actions[2].test.definitions[0]");
    assert_eq!(e.reason, "'path' is missing");
}

#[test]
fn missing_job_name() {
    let e = job_err("device_type: qemu\nactions: [{boot: {method: qemu}}]\n");
    assert_eq!(
        e.to_string(),
        "job.yaml: (top level): 'job_name' is missing"
    );
}

#[test]
fn missing_device_type() {
    let e = job_err("job_name: x\nactions: [{boot: {method: qemu}}]\n");
    assert_eq!(e.reason, "'device_type' is missing");
}

#[test]
fn action_not_single_key_map() {
    let e = job_err(&format!(
        "{HEAD}actions:\n- boot: {{method: qemu}}\n  deploy: {{to: tmpfs}}\n"
    ));
    assert_eq!(e.field, "actions[0]");
    assert!(e.reason.contains("one key"), "{e}");
    assert!(e.reason.contains("boot, deploy"), "{e}");

    let e = job_err(&format!("{HEAD}actions:\n- boot\n"));
    assert_eq!(e.field, "actions[0]");
    assert!(e.reason.contains("found a string"), "{e}");

    let e = job_err(&format!("{HEAD}actions: {{boot: {{method: qemu}}}}\n"));
    assert_eq!(e.field, "actions");
}

#[test]
fn unknown_action_type() {
    let e = job_err(&format!(
        "{HEAD}actions:\n- boot: {{method: qemu}}\n- frobnicate: {{x: 1}}\n"
    ));
    assert_eq!(
        e.to_string(),
        "job.yaml: actions[1]: unknown action type 'frobnicate' (use deploy, boot, test or command)"
    );
}

#[test]
fn bad_sha256sum() {
    let text = smoke_with(
        "B5CDB3B9E65FEC2D3654A05DCDF507281F408B624535B33375170D1E852B982C",
        "b5cdb3b9e65fec2d",
    );
    let e = parse_job("qemu-smoke.yaml", &text).unwrap_err();
    assert_eq!(e.field, "actions[0].deploy.images.rootfs.sha256sum");
    assert!(e.reason.contains("not a sha256sum"), "{e}");

    let text = smoke_with(
        "B5CDB3B9E65FEC2D3654A05DCDF507281F408B624535B33375170D1E852B982C",
        "Z5CDB3B9E65FEC2D3654A05DCDF507281F408B624535B33375170D1E852B982C",
    );
    let e = parse_job("qemu-smoke.yaml", &text).unwrap_err();
    assert_eq!(e.field, "actions[0].deploy.images.rootfs.sha256sum");
}

#[test]
fn bad_priority() {
    let e = parse_job(
        "qemu-smoke.yaml",
        &smoke_with("priority: medium", "priority: 101"),
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "qemu-smoke.yaml: priority: 101 is out of range (0 to 100)"
    );
    let e = parse_job(
        "qemu-smoke.yaml",
        &smoke_with("priority: medium", "priority: urgent"),
    )
    .unwrap_err();
    assert_eq!(e.field, "priority");
    assert!(e.reason.contains("'urgent' is not a priority"), "{e}");
    let e = parse_job(
        "qemu-smoke.yaml",
        &smoke_with("priority: medium", "priority: -1"),
    )
    .unwrap_err();
    assert_eq!(e.field, "priority");
}

#[test]
fn bad_regex_in_inline_parse_pattern() {
    let text = smoke_with(
        r#"pattern: "(?P<test_case_id>[a-z-]+):\\s+(?P<result>(pass|fail))""#,
        r#"pattern: '(?P<test_case_id>[a-z-]+'"#,
    );
    let e = parse_job("qemu-smoke.yaml", &text).unwrap_err();
    assert_eq!(
        e.field,
        "actions[2].test.definitions[1].repository.parse.pattern"
    );
    assert!(e.reason.starts_with("invalid regular expression"), "{e}");
}

#[test]
fn bad_durations() {
    for (t, field) in [
        ("timeouts: {job: 5x}", "timeouts.job"),
        ("timeouts: {job: 0}", "timeouts.job"),
        ("timeouts: {job: -5}", "timeouts.job"),
        ("timeouts: {job: '-5m'}", "timeouts.job"),
        ("timeouts: {job: {minutes: 0}}", "timeouts.job"),
        ("timeouts: {job: {minutes: -3}}", "timeouts.job.minutes"),
        ("timeouts: {job: {minute: 3}}", "timeouts.job.minute"),
        ("timeouts: {job: {minutes: five}}", "timeouts.job.minutes"),
        ("timeouts: {job: [5m]}", "timeouts.job"),
        ("timeouts: {job: 1.5}", "timeouts.job"),
        ("timeouts: {actions: {x: 0s}}", "timeouts.actions.x"),
    ] {
        let e = job_err(&format!("{HEAD}{t}\nactions: [{{boot: {{method: q}}}}]\n"));
        assert_eq!(e.field, field, "{t}: {e}");
    }
    let e = job_err(&format!(
        "{HEAD}actions:\n- boot: {{method: q, timeout: 5 minutes}}\n"
    ));
    assert_eq!(e.field, "actions[0].boot.timeout");
}

#[test]
fn action_timeout_longer_than_job() {
    let e = job_err(&format!(
        "{HEAD}timeouts: {{job: 10m}}\nactions:\n- boot: {{method: q, timeout: 1h}}\n"
    ));
    assert_eq!(
        e.to_string(),
        "job.yaml: actions[0].boot.timeout: timeout 1h is longer than the job timeout 10m"
    );
    let e = job_err(&format!(
        "{HEAD}timeouts: {{job: 10m, action: 11m}}\nactions:\n- boot: {{method: q}}\n"
    ));
    assert_eq!(e.field, "timeouts.action");
    // Defaults are capped at a short job timeout instead of refused.
    let job = parse_job(
        "job.yaml",
        &format!("{HEAD}timeouts: {{job: 5m}}\nactions:\n- boot: {{method: q}}\n"),
    )
    .unwrap();
    assert_eq!(job.timeouts.action, std::time::Duration::from_secs(300));
    assert_eq!(job.timeouts.connection, std::time::Duration::from_secs(120));
}

#[test]
fn wrong_metadata_format() {
    let e = testdef_err(&TESTDEF.replace(
        "format: Lava-Test Test Definition 1.0",
        "format: Lava-Test Test Definition 2.0",
    ));
    assert_eq!(e.field, "metadata.format");
    assert!(e.reason.contains("'Lava-Test Test Definition 2.0'"), "{e}");

    let text = smoke_with(
        "format: Lava-Test Test Definition 1.0",
        "format: Lava-Test-Shell",
    );
    let e = parse_job("qemu-smoke.yaml", &text).unwrap_err();
    assert_eq!(
        e.field,
        "actions[2].test.definitions[1].repository.metadata.format"
    );
}

#[test]
fn non_scalar_step() {
    let e = testdef_err(&TESTDEF.replace(
        "        - lava-test-case linux-posix-vmstat --shell vmstat\n",
        "        - {a: b}\n",
    ));
    assert_eq!(e.field, "run.steps[2]");
    assert!(e.reason.contains("found a mapping"), "{e}");
    assert!(e.reason.ends_with("quote the whole step: - 'a: b'"), "{e}");

    let text = smoke_with("            - 7\n", "            - [1, 2]\n");
    let e = parse_job("qemu-smoke.yaml", &text).unwrap_err();
    assert_eq!(
        e.field,
        "actions[2].test.definitions[1].repository.run.steps[2]"
    );
}

#[test]
fn unsupported_sources_and_schemes() {
    let text = smoke_with("      from: git\n", "      from: svn\n");
    let e = parse_job("qemu-smoke.yaml", &text).unwrap_err();
    assert_eq!(
        e.to_string(),
        "qemu-smoke.yaml: actions[2].test.definitions[0].from: unsupported source 'svn' (use inline, git or url)"
    );

    // Any scheme is valid LAVA (its schema takes a string); whether a host fetches it is
    // check_runnable's question.
    let text = smoke_with(
        "https://images.example.org/kvm/standard/stretch-2.img.gz",
        "ftp://images.example.org/x.img.gz",
    );
    parse_job("qemu-smoke.yaml", &text).unwrap();

    let text = smoke_with("compression: gz", "compression: lz4");
    let e = parse_job("qemu-smoke.yaml", &text).unwrap_err();
    assert_eq!(e.field, "actions[0].deploy.images.rootfs.compression");
    assert!(e.reason.contains("unsupported compression 'lz4'"), "{e}");

    for bad in [
        "downloads://",
        "downloads://../x",
        "downloads://a//b",
        "downloads://./a",
    ] {
        let e = job_err(&format!(
            "{HEAD}actions:\n- deploy: {{to: tmpfs, images: {{k: {{url: '{bad}'}}}}}}\n"
        ));
        assert_eq!(e.field, "actions[0].deploy.images.k.url", "{bad}");
        assert!(e.reason.contains("relative path"), "{e}");
    }

    let e = job_err(&format!(
        "{HEAD}actions:\n- deploy: {{to: tmpfs, images: {{k: {{url: 'file://relative/x'}}}}}}\n"
    ));
    assert_eq!(e.field, "actions[0].deploy.images.k.url");
    for bad in ["file:///a%2", "file:///a%+1", "file:///a%zz", "file:///%ff"] {
        let e = job_err(&format!(
            "{HEAD}actions:\n- deploy: {{to: tmpfs, images: {{k: {{url: '{bad}'}}}}}}\n"
        ));
        assert!(e.reason.contains("%-escape"), "{bad}: {e}");
    }
    let e = job_err(&format!(
        "{HEAD}actions:\n- deploy: {{to: tmpfs, images: {{k: {{url: 'https:///x'}}}}}}\n"
    ));
    assert!(e.reason.contains("no host"), "{e}");
}

#[test]
fn auto_login_pairs() {
    let e = parse_job(
        "qemu-smoke.yaml",
        &smoke_with("      password: secret\n", ""),
    )
    .unwrap_err();
    assert_eq!(e.field, "actions[1].boot.auto_login");
    assert!(e.reason.starts_with("'password' is missing"), "{e}");

    let e = parse_job(
        "qemu-smoke.yaml",
        &smoke_with("      password_prompt: \"Password:\"\n", ""),
    )
    .unwrap_err();
    assert!(e.reason.starts_with("'password_prompt' is missing"), "{e}");

    let e = parse_job("qemu-smoke.yaml", &smoke_with("      username: root\n", "")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "qemu-smoke.yaml: actions[1].boot.auto_login: 'username' is missing"
    );
}

#[test]
fn bad_definition_refs() {
    let e = parse_job(
        "qemu-smoke.yaml",
        &smoke_with("name: smoke-tests\n", "name: smoke tests!\n"),
    )
    .unwrap_err();
    assert_eq!(e.field, "actions[2].test.definitions[0].name");

    let e = job_err(&format!("{HEAD}actions:\n- test: {{timeout: 5m}}\n"));
    assert_eq!(e.field, "actions[0].test");
    assert!(e.reason.contains("'definitions'"), "{e}");

    let e = job_err(&format!(
        "{HEAD}actions:\n- test: {{definitions: [{{name: a, path: p, from: inline, repository: x}}]}}\n"
    ));
    assert_eq!(e.field, "actions[0].test.definitions[0].repository");
}

#[test]
fn multinode_rules() {
    let base = include_str!("fixtures/multinode.yaml");
    let e = parse_job("m.yaml", &base.replace("    role: client\n", "")).unwrap_err();
    assert_eq!(e.field, "actions[2].test");
    assert!(e.reason.starts_with("'role' is missing"), "{e}");

    let e = parse_job(
        "m.yaml",
        &base.replace("    role: client\n", "    role: waiter\n"),
    )
    .unwrap_err();
    assert_eq!(e.field, "actions[2].test.role[0]");
    assert!(e.reason.contains("unknown role 'waiter'"), "{e}");

    let e = parse_job("m.yaml", &base.replace("        count: 2\n", "")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "m.yaml: protocols.lava-multinode.roles.client: 'count' is missing"
    );
}

#[test]
fn namespace_rules() {
    let e = job_err(&format!(
        "{HEAD}actions:\n- boot: {{method: q, namespace: a}}\n- boot: {{method: q}}\n"
    ));
    assert_eq!(e.field, "actions[1].boot");
    let e = job_err(&format!(
        "{HEAD}actions:\n- boot: {{method: q, namespace: common}}\n"
    ));
    assert_eq!(e.field, "actions[0].boot.namespace");
}

#[test]
fn type_errors_name_the_field() {
    let e = job_err("job_name: [a]\ndevice_type: q\nactions: [{boot: {method: q}}]\n");
    assert_eq!(
        e.to_string(),
        "job.yaml: job_name: expected a string, found a list"
    );
    let e = job_err(&format!(
        "{HEAD}tags: [a, {{b: c}}]\nactions: [{{boot: {{method: q}}}}]\n"
    ));
    assert_eq!(e.field, "tags[1]");
    let e = job_err(&format!(
        "{HEAD}visibility: secret\nactions: [{{boot: {{method: q}}}}]\n"
    ));
    assert_eq!(e.field, "visibility");
    let e = job_err(&format!(
        "{HEAD}context: {{arch: {{a: b}}}}\nactions: [{{boot: {{method: q}}}}]\n"
    ));
    assert_eq!(e.field, "context.arch");
    let e = job_err("- a\n- b\n");
    assert_eq!(
        e.to_string(),
        "job.yaml: (top level): expected a mapping, found a list"
    );
    let e = job_err("");
    assert_eq!(e.field, "(top level)");
}

#[test]
fn yaml_syntax_error_has_location() {
    let e = job_err("job_name: x\ndevice_type: [qemu\nactions: []\n");
    assert!(e.field.starts_with("line "), "{e}");
    assert!(e.field.contains(" column "), "{e}");
    assert!(e.to_string().starts_with("job.yaml: line "), "{e}");
}

/// LAVA's loader keeps the last value of a duplicate key; dutlab does too, and warns with
/// both lines.
#[test]
fn duplicate_keys_keep_the_last_value_with_a_warning() {
    let job = parse_job(
        "job.yaml",
        &format!("{HEAD}job_name: y\nactions: [{{boot: {{method: q}}}}]\n"),
    )
    .unwrap();
    assert_eq!(job.name, "y");
    let w = job
        .warnings
        .iter()
        .find(|w| w.message.contains("duplicate key 'job_name'"))
        .unwrap_or_else(|| panic!("no warning: {:?}", job.warnings));
    assert_eq!(w.field, "line 3");
    assert!(w.message.contains("also at line 1"), "{w}");
}

#[test]
fn testdef_requirements() {
    let e = testdef_err("run:\n  steps: [a]\n");
    assert_eq!(
        e.to_string(),
        "def.yaml: (top level): 'metadata' is missing"
    );
    let e = testdef_err("metadata: {format: Lava-Test Test Definition 1.0}\n");
    assert_eq!(e.to_string(), "def.yaml: metadata: 'name' is missing");
    let e = testdef_err("metadata: {format: Lava-Test Test Definition 1.0, name: x}\nrun: {}\n");
    assert_eq!(e.to_string(), "def.yaml: run: 'steps' is missing");
    let e = testdef_err(
        "metadata: {format: Lava-Test Test Definition 1.0, name: x}\nparse: {fixupdict: {a: b}}\n",
    );
    assert_eq!(e.to_string(), "def.yaml: parse: 'pattern' is missing");
    let e = testdef_err(
        "metadata: {format: Lava-Test Test Definition 1.0, name: x}\nparse: {pattern: '(?<=a)b'}\n",
    );
    assert_eq!(e.field, "parse.pattern");
    let e = testdef_err(
        "metadata: {format: Lava-Test Test Definition 1.0, name: x}\nparams: {A: [1]}\n",
    );
    assert_eq!(e.field, "params.A");
}

const DEF_HEAD: &str = "metadata: {format: Lava-Test Test Definition 1.0, name: x}\n";

#[test]
fn a_run_step_with_colon_space_gets_a_quoting_hint() {
    let e = testdef_err(&format!(
        "{DEF_HEAD}run:\n  steps:\n    - echo start\n    - echo \"check: pass\"\n"
    ));
    assert_eq!(
        e.to_string(),
        "def.yaml: run.steps[1]: expected a string, found a mapping: YAML reads this step as a \
         key 'echo \"check' and value 'pass\"', because of the ': ' in it; quote the whole \
         step: - 'echo \"check: pass\"'"
    );
}

#[test]
fn an_install_step_with_colon_space_gets_a_quoting_hint() {
    let e = testdef_err(&format!(
        "{DEF_HEAD}install:\n  steps:\n    - echo it's time: now\n"
    ));
    assert_eq!(e.field, "install.steps[0]");
    // A ' inside the step is doubled in the single-quoted suggestion.
    assert!(
        e.reason
            .ends_with("quote the whole step: - 'echo it''s time: now'"),
        "{e}"
    );
}

#[test]
fn a_step_ending_in_a_colon_gets_a_quoting_hint() {
    let e = testdef_err(&format!("{DEF_HEAD}run:\n  steps:\n    - echo total:\n"));
    assert_eq!(e.field, "run.steps[0]");
    assert!(e.reason.contains("because of the ':' at its end"), "{e}");
    assert!(e.reason.ends_with("- 'echo total:'"), "{e}");
}

#[test]
fn a_step_that_is_a_bigger_mapping_gets_the_general_hint() {
    let e = testdef_err(&format!("{DEF_HEAD}run:\n  steps:\n    - {{a: 1, b: 2}}\n"));
    assert_eq!(e.field, "run.steps[0]");
    assert!(
        e.reason.contains("quote the whole step in single quotes"),
        "{e}"
    );
}

#[test]
fn inline_definitions_in_jobs_get_the_hint_with_the_full_path() {
    let text = smoke_with(
        "            - lava-test-case uname --shell uname -a\n",
        "            - echo \"uname: $(uname)\"\n",
    );
    let e = parse_job("qemu-smoke.yaml", &text).unwrap_err();
    assert_eq!(
        e.field,
        "actions[2].test.definitions[1].repository.run.steps[0]"
    );
    assert!(e.reason.ends_with("- 'echo \"uname: $(uname)\"'"), "{e}");
}
