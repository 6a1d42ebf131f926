//! System test: LAVA's helpers and signals on the QEMU DUT give the results LAVA gives.
//!
//! Jobs with inline test definitions exercise every helper dutlab installs and every quoting
//! form of `lava-test-case --shell`, run with the real `dutlab run` binary on the real guest
//! image (busybox ash), and the cases of `--results-json` are compared with a table of what
//! LAVA (2023.01 and later; `--output` since 2025.04) reports for the same definitions.
//! Another job checks what LAVA's test shell decides around the helpers: `lava-signal: kmsg`,
//! a definition's `fixupdict` applied to signals during its run, and a TESTCASE before a test
//! action's first STARTRUN ending the job.
//!
//! LAVA also records `lava/<run>` pass for each completed run and its own `lava/*` action
//! results; dutlab records only runs that did not complete, so the `lava` suite is checked
//! apart (see docs/jobs.md, "LAVA helpers and signals").

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;
use testkit::{Sandbox, Spawned, expect_code};

const DUTLAB: &str = env!("CARGO_BIN_EXE_dutlab");
/// Generous bound for one job under TCG on a busy 2-core machine.
const RUN_LIMIT: Duration = Duration::from_secs(300);

/// Run steps of `0_helpers`: every helper and form that completes the run.
const HELPER_STEPS: &[&str] = &[
    // Through the kernel log, as LAVA's `lava-signal: kmsg` does.
    "KMSG=1 lava-test-case via-kmsg --result pass",
    // --shell: one argument is a command line; several are one command as given.
    "lava-test-case third-ok --shell \"uname -a\"",
    "lava-test-case cpuinfo --shell 'test -r /proc/cpuinfo && echo ok'",
    "lava-test-case words --shell uname -a",
    "lava-test-case argv-kept --shell test \"a  b\" = \"a  b\"",
    "lava-test-case line-fails --shell 'test -r /no/such/file || false'",
    "lava-test-case shell-false --shell false",
    "lava-test-case sees-id --shell 'test \"$TEST_CASE_ID\" = sees-id'",
    // --result: LAVA's four words, its default fixup of upper case, refused words.
    "lava-test-case r-pass --result pass",
    "lava-test-case r-fail --result fail",
    "lava-test-case r-skip --result skip",
    "lava-test-case r-unknown --result unknown",
    "lava-test-case r-upper --result PASS",
    "lava-test-case r-refused --result PASSED",
    "lava-test-case 'two words' --result pass",
    "lava-test-case m --result pass --measurement 4.2 --units s",
    "lava-test-case m-count --result pass --measurement 99",
    "lava-test-case m-refused --result pass --measurement fast --units s",
    "lava-test-case units-alone --result pass --units s",
    "echo attached log > /tmp/attached.log",
    "lava-test-case attached --result fail --output /tmp/attached.log",
    // Sets and references.
    "lava-test-set start group",
    "lava-test-case in-set --result pass",
    "lava-test-reference ref-in-set --result pass --reference https://example.invalid/42",
    "lava-test-set stop",
    "lava-test-reference ref --result fail --reference https://example.invalid/43",
    // Usage errors exit 1 and record nothing.
    "lava-test-case usage-exit-1 --shell '! lava-test-case no-result'",
    "lava-test-case raise-usage --shell '! lava-test-raise'",
    // The test shell's environment.
    "lava-test-case param --shell test \"$GREETING\" = from-the-job",
    // Single-quoted: expanded in lava-test-case, a child of the run's shell.
    "lava-test-case param-not-exported --shell 'test -z \"$GREETING\"'",
    "lava-test-case testrun-id --shell 'test \"$TESTRUN_ID\" = 0_helpers'",
    // Double-quoted: expanded by the run's shell, where UUID is set (not exported).
    "lava-test-case uuid-set --shell test -n \"$UUID\"",
    "lava-test-case cwd --shell 'test \"$(pwd)\" = /lava-dutlab/tests/0_helpers'",
    "lava-test-case result-dir --shell 'case $LAVA_RESULT_DIR in /lava-dutlab/results/0_helpers-*) true ;; *) false ;; esac'",
    "lava-test-case result-files --shell 'test \"$(cat $LAVA_RESULT_DIR/results/m/result $LAVA_RESULT_DIR/results/m/measurement $LAVA_RESULT_DIR/results/m/units)\" = \"pass\n4.2\ns\"'",
    "lava-test-case no-result-made-dir --shell 'test -d $LAVA_RESULT_DIR/results/no-result'",
];

/// What LAVA reports for `0_helpers`, `1_stops` and `2_raise`, in order:
/// (suite, set, case, result, measurement, units, reference).
type Row = (
    &'static str,
    Option<&'static str>,
    &'static str,
    &'static str,
    Option<&'static str>,
    Option<&'static str>,
    Option<&'static str>,
);

const LAVA_RESULTS: &[Row] = &[
    ("0_helpers", None, "via-kmsg", "pass", None, None, None),
    ("0_helpers", None, "third-ok", "pass", None, None, None),
    ("0_helpers", None, "cpuinfo", "pass", None, None, None),
    ("0_helpers", None, "words", "pass", None, None, None),
    ("0_helpers", None, "argv-kept", "pass", None, None, None),
    ("0_helpers", None, "line-fails", "fail", None, None, None),
    ("0_helpers", None, "shell-false", "fail", None, None, None),
    ("0_helpers", None, "sees-id", "pass", None, None, None),
    ("0_helpers", None, "r-pass", "pass", None, None, None),
    ("0_helpers", None, "r-fail", "fail", None, None, None),
    ("0_helpers", None, "r-skip", "skip", None, None, None),
    ("0_helpers", None, "r-unknown", "unknown", None, None, None),
    ("0_helpers", None, "r-upper", "pass", None, None, None),
    // r-refused (PASSED), "two words" and m-refused (fast) are dropped, as LAVA drops them.
    ("0_helpers", None, "m", "pass", Some("4.2"), Some("s"), None),
    ("0_helpers", None, "m-count", "pass", Some("99"), None, None),
    ("0_helpers", None, "units-alone", "pass", None, None, None),
    ("0_helpers", None, "attached", "fail", None, None, None),
    (
        "0_helpers",
        Some("group"),
        "in-set",
        "pass",
        None,
        None,
        None,
    ),
    (
        "0_helpers",
        Some("group"),
        "ref-in-set",
        "pass",
        None,
        None,
        Some("https://example.invalid/42"),
    ),
    (
        "0_helpers",
        None,
        "ref",
        "fail",
        None,
        None,
        Some("https://example.invalid/43"),
    ),
    ("0_helpers", None, "usage-exit-1", "pass", None, None, None),
    ("0_helpers", None, "raise-usage", "pass", None, None, None),
    ("0_helpers", None, "param", "pass", None, None, None),
    (
        "0_helpers",
        None,
        "param-not-exported",
        "pass",
        None,
        None,
        None,
    ),
    ("0_helpers", None, "testrun-id", "pass", None, None, None),
    ("0_helpers", None, "uuid-set", "pass", None, None, None),
    ("0_helpers", None, "cwd", "pass", None, None, None),
    ("0_helpers", None, "result-dir", "pass", None, None, None),
    ("0_helpers", None, "result-files", "pass", None, None, None),
    (
        "0_helpers",
        None,
        "no-result-made-dir",
        "pass",
        None,
        None,
        None,
    ),
    // `set -e`: the failing step ends the run; `after` never runs.
    ("1_stops", None, "before", "pass", None, None, None),
    // dutlab records every run that did not complete. LAVA marks an unfinished run failed
    // the same way but keeps one record per test action (a later STARTRUN replaces it), so
    // it does not report lava/1_stops.
    ("lava", None, "1_stops", "fail", None, None, None),
    ("2_raise", None, "before-raise", "pass", None, None, None),
    // The raise came inside the run: LAVA marks it failed.
    ("lava", None, "2_raise", "fail", None, None, None),
];

fn definition(name: &str, params: &str, steps: &[&str]) -> String {
    definition_with(name, params, "", steps)
}

/// An inline definition: `at_ref` goes into the `definitions` entry (`params`,
/// `lava-signal`), `in_definition` into the definition itself (`parse`, `install`).
fn definition_with(name: &str, at_ref: &str, in_definition: &str, steps: &[&str]) -> String {
    let steps: String = steps
        .iter()
        .map(|s| {
            format!(
                "          - {}\n",
                serde_json::to_string(s).expect("a string serialises")
            )
        })
        .collect();
    format!(
        "    - from: inline\n      name: {name}\n      path: inline/{name}.yaml\n{at_ref}      repository:\n\
         \x20       metadata: {{format: Lava-Test Test Definition 1.0, name: {name}}}\n\
         \x20       params: {{GREETING: hello}}\n{in_definition}        run:\n          steps:\n{steps}"
    )
}

fn job(name: &str, definitions: &[String]) -> String {
    job_of_actions(name, &[definitions])
}

/// A job with one boot and one test action per element of `actions`.
fn job_of_actions(name: &str, actions: &[&[String]]) -> String {
    let tests: String = actions
        .iter()
        .map(|definitions| format!("- test:\n    definitions:\n{}", definitions.concat()))
        .collect();
    format!(
        "job_name: {name}\ndevice_type: qemu\ntimeouts:\n  job: {{minutes: 8}}\n  action: {{minutes: 6}}\n\
         actions:\n- boot:\n    method: qemu\n    prompts: ['# $']\n    auto_login: {{login_prompt: 'login:', username: root}}\n\
         {tests}"
    )
}

fn run_job(
    sb: &Sandbox,
    file: &str,
    text: &str,
    extra: &[&str],
) -> Result<(testkit::Finished, Value)> {
    let path = sb.path().join(file);
    std::fs::write(&path, text)?;
    let json = sb.path().join(format!("{file}.json"));
    let mut cmd = sb.command(DUTLAB)?;
    cmd.arg("run")
        .arg(&path)
        .arg("--results-json")
        .arg(&json)
        .args(extra);
    let done = Spawned::start(cmd)?.finish(RUN_LIMIT)?;
    let report = std::fs::read_to_string(&json)
        .with_context(|| format!("no results JSON; stdout:\n{}", done.stdout))?;
    Ok((done, serde_json::from_str(&report)?))
}

/// A reported case: (suite, set, case, result, measurement, units, reference).
type Case = (
    String,
    Option<String>,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
);

fn rows(report: &Value) -> Result<Vec<Case>> {
    let text = |c: &Value, k: &str| c[k].as_str().map(str::to_string);
    report["cases"]
        .as_array()
        .context("cases")?
        .iter()
        .map(|c| {
            Ok((
                text(c, "suite").context("suite")?,
                text(c, "set"),
                text(c, "name").context("name")?,
                text(c, "result").context("result")?,
                text(c, "measurement"),
                text(c, "units"),
                text(c, "reference"),
            ))
        })
        .collect()
}

fn owned(table: &[Row]) -> Vec<Case> {
    let s = |v: Option<&str>| v.map(str::to_string);
    table
        .iter()
        .map(|&(suite, set, name, result, m, u, r)| {
            (
                suite.to_string(),
                s(set),
                name.to_string(),
                result.to_string(),
                s(m),
                s(u),
                s(r),
            )
        })
        .collect()
}

#[test]
fn every_helper_and_quoting_form_reports_what_lava_reports() -> Result<()> {
    let sb = Sandbox::new()?;
    let text = job(
        "lava-helpers",
        &[
            definition(
                "helpers",
                "      parameters: {GREETING: from-the-job}\n",
                HELPER_STEPS,
            ),
            definition(
                "stops",
                "",
                &[
                    "lava-test-case before --result pass",
                    "false",
                    "lava-test-case after --result pass",
                ],
            ),
            definition(
                "raise",
                "",
                &[
                    "lava-test-case before-raise --result pass",
                    "lava-test-raise disk not found",
                    "lava-test-case after-raise --result pass",
                ],
            ),
        ],
    );
    let (done, report) = run_job(&sb, "helpers.yaml", &text, &[])?;
    expect_code(&done, 1)?;
    let got = rows(&report)?;
    let want = owned(LAVA_RESULTS);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        ensure!(
            g == w,
            "case {i}: got {g:?}, LAVA reports {w:?}\nall: {got:#?}"
        );
    }
    ensure!(
        got.len() == want.len(),
        "{} cases, LAVA reports {}: {got:#?}\nstdout:\n{}",
        got.len(),
        want.len(),
        done.stdout
    );
    // lava-test-raise ends the job (LAVA: Incomplete with a test error).
    ensure!(report["outcome"] == "failed", "{report}");
    ensure!(
        report["reason"] == "2_raise: lava-test-raise: disk not found",
        "{report}"
    );
    // What the helpers printed reached the console as LAVA's helpers print it.
    for line in [
        "<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=m RESULT=pass UNITS=s MEASUREMENT=4.2>",
        "<LAVA_SIGNAL_TESTREFERENCE ref fail https://example.invalid/43>",
        "lava-test-case: --result must be given",
        "attached log",
    ] {
        ensure!(
            done.stdout.contains(line),
            "{line:?} not on the console:\n{}",
            done.stdout
        );
    }
    ensure!(!done.stdout.contains("after-raise"), "{}", done.stdout);
    // Each dropped signal is a note, with LAVA's reason.
    for note in [
        "dutlab: 0_helpers: TESTCASE r-refused: bad result \"PASSED\"",
        "dutlab: 0_helpers: TESTCASE field \"words\" is not KEY=VALUE",
        "dutlab: 0_helpers: TESTCASE m-refused: measurement \"fast\" is not a number",
    ] {
        ensure!(
            done.stderr.contains(note),
            "{note:?} not noted:\n{}",
            done.stderr
        );
    }
    // KMSG: the signal came through the kernel log (a timestamped console line).
    ensure!(
        done.stdout.lines().any(|l| l
            .trim_end()
            .ends_with("] <LAVA_SIGNAL_TESTCASE TEST_CASE_ID=via-kmsg RESULT=pass>")
            && l.starts_with('[')),
        "{}",
        done.stdout
    );
    // Steps are traced by `set -x`, as in LAVA's run.sh.
    ensure!(
        done.stdout
            .lines()
            .any(|l| l.trim_end() == "+ lava-test-case third-ok --shell 'uname -a'"),
        "{}",
        done.stdout
    );
    sb.assert_no_qemu_left()
}

#[test]
fn unknown_is_neither_pass_nor_failure_in_every_report() -> Result<()> {
    let sb = Sandbox::new()?;
    let text = job(
        "unknown",
        &[definition(
            "neutral",
            "",
            &[
                "lava-test-case ok --result pass",
                "lava-test-case maybe --result unknown",
                "lava-test-case later --result skip",
            ],
        )],
    );
    let junit: PathBuf = sb.path().join("junit.xml");
    let junit_arg = junit.to_str().context("path")?.to_string();
    let (done, report) = run_job(&sb, "unknown.yaml", &text, &["--junit", &junit_arg])?;
    // The job outcome: unknown does not fail the job, in LAVA or here.
    expect_code(&done, 0)?;
    ensure!(report["outcome"] == "passed", "{report}");
    // JSON.
    let results: Vec<(String, String)> = rows(&report)?.into_iter().map(|r| (r.2, r.3)).collect();
    ensure!(
        results
            == [
                ("ok".to_string(), "pass".to_string()),
                ("maybe".to_string(), "unknown".to_string()),
                ("later".to_string(), "skip".to_string()),
            ],
        "{results:?}"
    );
    // The terminal table.
    ensure!(
        done.stdout
            .lines()
            .any(|l| l.split_whitespace().eq(["0_neutral", "maybe", "unknown"])),
        "{}",
        done.stdout
    );
    ensure!(
        done.stdout
            .contains("passed: 1 passed, 0 failed, 1 skipped, 1 unknown"),
        "{}",
        done.stdout
    );
    // JUnit: skipped with the message `unknown`, no failure, no error, no lava/job case.
    let xml = std::fs::read_to_string(Path::new(&junit))?;
    for needle in [
        "failures=\"0\"",
        "errors=\"0\"",
        "skipped=\"2\"",
        "<skipped message=\"unknown\"",
    ] {
        ensure!(xml.contains(needle), "{needle} not in {xml}");
    }
    ensure!(!xml.contains("name=\"job\""), "{xml}");
    sb.assert_no_qemu_left()
}

#[test]
fn kmsg_signals_fixupdict_on_signals_and_a_case_before_startrun() -> Result<()> {
    let sb = Sandbox::new()?;
    let parse = "        parse:\n          pattern: '^(?P<test_case_id>[a-z-]+): (?P<result>[a-zA-Z]+)$'\n\
                 \x20         fixupdict: {ok: pass, bad: fail}\n";
    let text = job_of_actions(
        "signals",
        &[
            &[
                definition_with(
                    "kmsg",
                    "      lava-signal: kmsg\n",
                    "",
                    &[
                        "lava-test-case k-pass --result pass",
                        "lava-test-set start kset",
                        "lava-test-case k-in-set --result fail",
                        "lava-test-set stop",
                    ],
                ),
                definition_with(
                    "fixup",
                    "",
                    parse,
                    &[
                        // The definition's fixupdict replaces LAVA's default one, for
                        // signals as for pattern matches: `PASS` is refused here.
                        "lava-test-case sig-ok --result ok",
                        "lava-test-case sig-upper --result PASS",
                        "echo 'pat-ok: ok'",
                        "echo 'pat-bad: bad'",
                        "echo 'pat-upper: PASS'",
                    ],
                ),
                definition(
                    "after",
                    "",
                    &[
                        "lava-test-case after-upper --result PASS",
                        "lava-test-case after-ok --result ok",
                    ],
                ),
            ],
            // A new test action: its first STARTRUN has not come when the install step
            // reports a case.
            &[definition_with(
                "early",
                "",
                "        install:\n          steps: ['lava-test-case early --result pass']\n",
                &["lava-test-case never --result pass"],
            )],
        ],
    );
    let (done, report) = run_job(&sb, "signals.yaml", &text, &[])?;
    expect_code(&done, 1)?;
    let got: Vec<(String, Option<String>, String, String)> = rows(&report)?
        .into_iter()
        .map(|r| (r.0, r.1, r.2, r.3))
        .collect();
    let row = |suite: &str, set: Option<&str>, name: &str, result: &str| {
        (
            suite.to_string(),
            set.map(str::to_string),
            name.to_string(),
            result.to_string(),
        )
    };
    // What LAVA reports (but its lava/<run> pass records).
    let want = [
        row("0_kmsg", None, "k-pass", "pass"),
        row("0_kmsg", Some("kset"), "k-in-set", "fail"),
        row("1_fixup", None, "sig-ok", "pass"),
        row("1_fixup", None, "pat-ok", "pass"),
        row("1_fixup", None, "pat-bad", "fail"),
        row("2_after", None, "after-upper", "pass"),
    ];
    ensure!(
        got == want,
        "got {got:#?}, LAVA reports {want:#?}\nstdout:\n{}",
        done.stdout
    );
    // LAVA: a TESTCASE before the action's STARTRUN is a test error; the job ends there,
    // with no run to mark failed.
    ensure!(report["outcome"] == "failed", "{report}");
    ensure!(
        report["reason"]
            == "3_early: Invalid TESTCASE signal: unknown test uuid, the STARTRUN signal for \
                this test action was not received",
        "{report}"
    );
    for note in [
        "dutlab: 1_fixup: TESTCASE sig-upper: bad result \"PASS\"",
        "dutlab: 1_fixup: parse pattern: case pat-upper: bad result \"PASS\"",
        "dutlab: 2_after: TESTCASE after-ok: bad result \"ok\"",
    ] {
        ensure!(
            done.stderr.contains(note),
            "{note:?} not noted:\n{}",
            done.stderr
        );
    }
    // lava-signal: kmsg: the run's STARTRUN and ENDRUN and its helpers' signals came through
    // the kernel log (timestamped console lines), none printed by the shell.
    let from_kernel = |signal: &str| {
        done.stdout
            .lines()
            .any(|l| l.starts_with('[') && l.contains(&format!("] {signal}")))
    };
    for signal in [
        "<LAVA_SIGNAL_STARTRUN 0_kmsg ",
        "<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=k-pass RESULT=pass>",
        "<LAVA_SIGNAL_TESTSET START kset>",
        "<LAVA_SIGNAL_ENDRUN 0_kmsg ",
    ] {
        ensure!(
            from_kernel(signal),
            "{signal} not from the kernel:\n{}",
            done.stdout
        );
        ensure!(
            !done.stdout.lines().any(|l| l.starts_with(signal)),
            "{signal} printed by the shell:\n{}",
            done.stdout
        );
    }
    ensure!(
        !from_kernel("<LAVA_SIGNAL_STARTRUN 1_fixup "),
        "{}",
        done.stdout
    );
    sb.assert_no_qemu_left()
}
