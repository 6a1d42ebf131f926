//! `test: interactive:` and `test: monitors:` parse to LAVA's schemas, with field-named errors.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use dutlab_jobspec::{
    Action, AfterMatch, CommandStep, Echo, FailurePattern, LavaException, ScriptStep,
    check_runnable, parse_job,
};

fn job(test: &str) -> String {
    format!("job_name: x\ndevice_type: qemu\nactions:\n- boot: {{method: qemu}}\n- test:\n{test}")
}

fn refused(test: &str) -> (String, String) {
    match parse_job("j.yaml", &job(test)) {
        Ok(j) => panic!("accepted: {j:?}"),
        Err(e) => (e.field, e.reason),
    }
}

#[test]
fn lavas_uboot_example_parses_without_warnings() {
    let text = job("    timeout: {minutes: 4}\n    interactive:\n\
         \x20   - name: network\n      prompts: ['=> ', '/ # ']\n      echo: discard\n\
         \x20     expected: [dhcp]\n      script:\n\
         \x20     - command: dhcp\n        name: dhcp\n\
         \x20       successes:\n        - message: 'DHCP client bound to address (?P<ip>[0-9.]+)'\n\
         \x20       failures:\n        - message: TIMEOUT\n          exception: InfrastructureError\n          error: dhcp failed\n\
         \x20     - delay: 2\n\
         \x20     - command:\n        successes: [{message: ready}]\n        wait_for_prompt: false\n");
    let j = parse_job("j.yaml", &text).expect("valid");
    assert!(j.warnings.is_empty(), "{:?}", j.warnings);
    let Action::Test(t) = &j.actions[1] else {
        panic!()
    };
    assert_eq!(j.actions[1].lava_name(), "lava-test-interactive");
    let s = &t.interactive[0];
    assert_eq!(s.name, "network");
    assert_eq!(s.prompts, ["=> ", "/ # "]);
    assert_eq!(s.echo, Echo::Discard);
    assert_eq!(s.expected, ["dhcp"]);
    assert_eq!(
        s.script[0],
        ScriptStep::Command(CommandStep {
            command: Some("dhcp".into()),
            name: Some("dhcp".into()),
            after_match: AfterMatch::WaitForPrompt,
            successes: vec!["DHCP client bound to address (?P<ip>[0-9.]+)".into()],
            failures: vec![FailurePattern {
                message: "TIMEOUT".into(),
                exception: Some(LavaException::InfrastructureError),
                error: Some("dhcp failed".into()),
            }],
        })
    );
    assert_eq!(s.script[1], ScriptStep::Delay(2));
    let ScriptStep::Command(wait) = &s.script[2] else {
        panic!()
    };
    assert_eq!(wait.command, None);
    assert_eq!(wait.after_match, AfterMatch::GoOn);
    check_runnable("j.yaml", &j).expect("runnable");
}

#[test]
fn lavas_monitor_example_parses_without_warnings() {
    let text = job(
        "    monitors:\n    - name: Test-AES128\n      start: tc_start()\n\
         \x20     end: PROJECT EXECUTION\n\
         \x20     pattern: (?P<result>(PASS|FAIL))\\s-\\s(?P<test_case_id>\\w+)\n\
         \x20     fixupdict: {PASS: pass, FAIL: fail}\n",
    );
    let j = parse_job("j.yaml", &text).expect("valid");
    assert!(j.warnings.is_empty(), "{:?}", j.warnings);
    let Action::Test(t) = &j.actions[1] else {
        panic!()
    };
    assert_eq!(j.actions[1].lava_name(), "lava-test-monitor");
    let m = &t.monitors[0];
    assert_eq!(
        (m.name.as_str(), m.start.as_str(), m.end.as_str()),
        ("Test-AES128", "tc_start()", "PROJECT EXECUTION")
    );
    assert_eq!(m.fixupdict["PASS"], "pass");
}

#[test]
fn interactive_errors_name_their_field() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "    interactive: [{name: a, script: []}]\n",
            "actions[1].test.interactive[0]",
            "'prompts' is missing",
        ),
        (
            "    interactive: [{name: 'a b', prompts: ['#'], script: []}]\n",
            "actions[1].test.interactive[0].name",
            "not a valid name",
        ),
        (
            "    interactive: [{name: a, prompts: [''], script: []}]\n",
            "actions[1].test.interactive[0].prompts[0]",
            "must not be empty",
        ),
        (
            "    interactive: [{name: a, prompts: ['(=> '], script: []}]\n",
            "actions[1].test.interactive[0].prompts[0]",
            "invalid regular expression",
        ),
        (
            "    interactive: [{name: a, prompts: ['#'], echo: keep, script: []}]\n",
            "actions[1].test.interactive[0].echo",
            "only 'discard'",
        ),
        (
            "    interactive: [{name: a, prompts: ['#'], script: [{name: b}]}]\n",
            "actions[1].test.interactive[0].script[0]",
            "'command' is missing",
        ),
        (
            "    interactive: [{name: a, prompts: ['#'], script: [{command: \"a\\nb\"}]}]\n",
            "actions[1].test.interactive[0].script[0].command",
            "line break",
        ),
        (
            "    interactive: [{name: a, prompts: ['#'], script: [{command: x, successes: [{message: ''}]}]}]\n",
            "actions[1].test.interactive[0].script[0].successes[0].message",
            "must not be empty",
        ),
        (
            "    interactive: [{name: a, prompts: ['#'], script: [{command: x, failures: [{message: e, exception: Oops}]}]}]\n",
            "actions[1].test.interactive[0].script[0].failures[0].exception",
            "not one of InfrastructureError, JobError, TestError",
        ),
        (
            "    interactive: [{name: a, prompts: ['#'], script: [{command: x, wait_for_prompt: maybe}]}]\n",
            "actions[1].test.interactive[0].script[0].wait_for_prompt",
            "true or false",
        ),
        (
            "    interactive: [{name: a, prompts: ['#'], script: [{delay: soon}]}]\n",
            "actions[1].test.interactive[0].script[0].delay",
            "whole number of seconds",
        ),
        (
            "    interactive: []\n",
            "actions[1].test.interactive",
            "is empty",
        ),
        (
            "    interactive: [{name: a, prompts: ['#'], script: []}]\n    monitors: [{name: m, start: a, end: b, pattern: c}]\n",
            "actions[1].test",
            "this one has interactive and monitors",
        ),
    ];
    for (test, field, reason) in cases {
        let (f, r) = refused(test);
        assert_eq!(f, *field, "{test}: {r}");
        assert!(r.contains(reason), "{test}: {r}");
    }
}

#[test]
fn monitor_errors_name_their_field() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "    monitors: [{name: m, start: a, pattern: c}]\n",
            "actions[1].test.monitors[0]",
            "'end' is missing",
        ),
        (
            "    monitors: [{name: m, start: a, end: b, pattern: '(?P<result>'}]\n",
            "actions[1].test.monitors[0].pattern",
            "invalid regular expression",
        ),
        (
            "    monitors: [{name: m, start: a, end: b, pattern: c, fixupdict: {ok: good}}]\n",
            "actions[1].test.monitors[0].fixupdict.ok",
            "'good' is not a result",
        ),
        (
            "    monitors: [{name: 'm/1', start: a, end: b, pattern: c}]\n",
            "actions[1].test.monitors[0].name",
            "not a valid name",
        ),
    ];
    for (test, field, reason) in cases {
        let (f, r) = refused(test);
        assert_eq!(f, *field, "{test}: {r}");
        assert!(r.contains(reason), "{test}: {r}");
    }
}

#[test]
fn multinode_calls_in_a_script_are_refused_by_check_runnable() {
    let text = job(
        "    interactive: [{name: a, prompts: ['#'], script: [{command: x}, {lava-send: ready}]}]\n",
    );
    let j = parse_job("j.yaml", &text).expect("LAVA accepts it");
    let e = check_runnable("j.yaml", &j).expect_err("refused");
    assert_eq!(
        e.field,
        "actions[1].test.interactive[0].script[1].lava-send"
    );
    assert!(e.reason.contains("multinode"), "{}", e.reason);
}

#[test]
fn a_delay_item_warns_about_what_lava_ignores_in_it() {
    let text =
        job("    interactive: [{name: a, prompts: ['#'], script: [{delay: 1, command: x}]}]\n");
    let j = parse_job("j.yaml", &text).expect("valid");
    assert_eq!(
        j.warnings
            .iter()
            .map(|w| w.field.as_str())
            .collect::<Vec<_>>(),
        ["actions[1].test.interactive[0].script[0].command"]
    );
}
