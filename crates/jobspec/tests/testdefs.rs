//! Standalone LAVA test definitions.
#![allow(clippy::unwrap_used)]

use dutlab_jobspec::{TEST_DEFINITION_FORMAT, parse_test_definition};

const TESTDEF: &str = include_str!("fixtures/smoke-testdef.yaml");

#[test]
fn full_definition() {
    let def = parse_test_definition("smoke.yaml", TESTDEF).unwrap();
    assert_eq!(def.metadata.format, TEST_DEFINITION_FORMAT);
    assert_eq!(def.metadata.name, "smoke-tests-basic");
    assert_eq!(
        def.metadata.description.as_deref(),
        Some("Basic system test command for Linaro Ubuntu images")
    );
    assert_eq!(def.metadata.other["version"], "1.0");
    assert_eq!(def.metadata.other_lists["os"], ["debian", "ubuntu"]);
    assert_eq!(
        def.metadata.other_lists["maintainer"],
        ["someone@example.org"]
    );
    assert_eq!(def.params["VARIABLE_NAME_1"], "value_1");
    assert_eq!(def.params["VARIABLE_NAME_2"], "2");
    assert_eq!(def.params["EMPTY"], "");
    assert_eq!(def.install_steps, ["echo installing", "3"]);
    assert_eq!(def.run_steps.len(), 4);
    assert_eq!(
        def.run_steps[0],
        "lava-test-case linux-posix-pwd --shell pwd"
    );
    assert_eq!(def.run_steps[3], r#"echo "test1a:" "pass""#);
    let parse = def.parse.as_ref().unwrap();
    assert_eq!(
        parse.pattern,
        r"(?P<test_case_id>.*-*):\s+(?P<result>(pass|fail))"
    );
    assert_eq!(parse.fixupdict["pass"], "PASS");
    assert_eq!(parse.fixupdict["fail"], "UNKNOWN");
    let warnings: Vec<String> = def.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        warnings,
        [
            "install.deps: accepted, not honoured by dutlab yet: packages are not installed in the DUT; install them in a step",
            "install.git-repos: accepted, not honoured by dutlab yet: repositories are not cloned into the DUT; clone them in a step",
        ]
    );
}

#[test]
fn minimal_definition() {
    let def = parse_test_definition(
        "min.yaml",
        "metadata:\n  format: Lava-Test Test Definition 1.0\n  name: m\n",
    )
    .unwrap();
    assert!(def.run_steps.is_empty());
    assert!(def.install_steps.is_empty());
    assert!(def.parse.is_none());
    assert!(def.warnings.is_empty());
}

#[test]
fn params_and_parameters_merge() {
    let def = parse_test_definition(
        "p.yaml",
        "metadata: {format: Lava-Test Test Definition 1.0, name: m}\n\
         params: {A: 1, B: x}\nparameters: {B: y, C: true}\nrun: {steps: []}\n",
    )
    .unwrap();
    assert_eq!(def.params["A"], "1");
    assert_eq!(def.params["B"], "y");
    assert_eq!(def.params["C"], "true");
    assert_eq!(def.warnings.len(), 1);
    assert_eq!(def.warnings[0].field, "parameters.B");
}

#[test]
fn pattern_without_result_groups_warns() {
    let def = parse_test_definition(
        "p.yaml",
        "metadata: {format: Lava-Test Test Definition 1.0, name: m}\nparse: {pattern: 'ok (.*)'}\n",
    )
    .unwrap();
    assert_eq!(def.warnings.len(), 2);
    assert!(def.warnings.iter().all(|w| w.field == "parse.pattern"));
}

#[test]
fn inline_warnings_reach_the_job() {
    let job = dutlab_jobspec::parse_job(
        "j.yaml",
        "job_name: x\ndevice_type: q\nactions:\n- test:\n    definitions:\n    - from: inline\n      \
         name: a\n      path: a.yaml\n      repository:\n        metadata: {format: Lava-Test Test Definition 1.0, name: a}\n        \
         bogus: 1\n",
    )
    .unwrap();
    let w: Vec<String> = job.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        w,
        ["actions[0].test.definitions[0].repository.bogus: unknown key, ignored"]
    );
    let dutlab_jobspec::Action::Test(t) = &job.actions[0] else {
        panic!()
    };
    let dutlab_jobspec::DefinitionSource::Inline(def) = &t.definitions[0].source else {
        panic!()
    };
    assert_eq!(def.warnings.len(), 1);
}
