//! The `lava-*` helpers and the generated run script, run on the host by busybox ash (the
//! DUT's shell) and by bash, checked against what LAVA's helpers do: the exact console lines,
//! exit codes and files under `$LAVA_RESULT_DIR`, then the lines through the signal parser.
//!
//! Each case gets a fresh directory laid out like `/lava-dutlab` (`bin/` with the helpers,
//! `tests/<run>/`, `results/`). The helpers' `#!/bin/sh` is pointed at the shell under test,
//! and a `sh` of that shell comes first on `PATH`, so nothing runs in the host's `/bin/sh`.

use dutlab_runner::overlay::{TestRun, run_script};
use dutlab_runner::signals::{Signal, parse_signal};
use proto::CaseResult;
use std::path::{Path, PathBuf};
use std::process::Command;

const HELPERS: [&str; 5] = [
    "lava-common",
    "lava-test-case",
    "lava-test-set",
    "lava-test-reference",
    "lava-test-raise",
];

/// A shell to test with: the program and the arguments that make it read a script.
#[derive(Clone, Copy, Debug)]
struct Sh {
    program: &'static str,
    args: &'static [&'static str],
}

fn shells() -> Vec<Sh> {
    let bash = ["/usr/bin/bash", "/bin/bash"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("bash is installed");
    assert!(
        Path::new("/usr/bin/busybox").exists(),
        "busybox is installed at /usr/bin/busybox"
    );
    vec![
        Sh {
            program: "/usr/bin/busybox",
            args: &["sh"],
        },
        Sh {
            program: bash,
            args: &[],
        },
    ]
}

/// What a process printed and how it exited.
#[derive(Debug)]
struct Out {
    code: i32,
    stdout: Vec<String>,
    stderr: String,
}

impl Out {
    fn signals(&self) -> Vec<Signal> {
        self.stdout
            .iter()
            .filter_map(|l| parse_signal(l.as_bytes()))
            .collect()
    }
}

/// A directory laid out as the overlay is in the DUT, for one shell.
struct Dut {
    dir: tempfile::TempDir,
    sh: Sh,
}

impl Dut {
    fn new(sh: Sh) -> Dut {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let root = dir.path();
        for sub in ["bin", "shell", "results", "work"] {
            std::fs::create_dir_all(root.join(sub)).expect("a directory");
        }
        // `sh` of the shell under test: busybox picks its applet by the link's name.
        std::os::unix::fs::symlink(sh.program, root.join("shell/sh")).expect("a symlink");
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("dut");
        for name in HELPERS {
            let text = std::fs::read_to_string(source.join(name)).expect("a helper script");
            let text = match text.strip_prefix("#!/bin/sh\n") {
                Some(body) => format!("#!{}/shell/sh\n{body}", root.display()),
                None => text,
            };
            let path = root.join("bin").join(name);
            std::fs::write(&path, text).expect("helper written");
            make_executable(&path);
        }
        Dut { dir, sh }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn result_dir(&self) -> PathBuf {
        self.root().join("results/run")
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        let path = std::env::var("PATH").unwrap_or_default();
        cmd.env(
            "PATH",
            format!(
                "{}:{}:{path}",
                self.root().join("bin").display(),
                self.root().join("shell").display()
            ),
        )
        .env_remove("KMSG")
        .env_remove("LAVA_KMSG")
        .env_remove("TEST_CASE_ID")
        .current_dir(self.root().join("work"));
        cmd
    }

    /// Runs `bin/<helper> args...` with the shell under test, as a test step would.
    fn helper(&self, helper: &str, args: &[&str]) -> Out {
        let mut cmd = self.command(self.sh.program);
        cmd.args(self.sh.args)
            .arg(self.root().join("bin").join(helper))
            .args(args)
            .env("LAVA_RESULT_DIR", self.result_dir());
        output(cmd)
    }

    /// Writes the run script of `run` (with `/lava-dutlab` moved here) and runs it as the
    /// runner does: `sh <dir>/.dutlab-run.sh`.
    fn run_script(&self, run: &TestRun) -> Out {
        let root = self.root().display().to_string();
        let script = run_script(run).replace("/lava-dutlab", &root);
        let dir = self.root().join("tests").join(&run.id);
        std::fs::create_dir_all(&dir).expect("the run's directory");
        let path = dir.join(".dutlab-run.sh");
        std::fs::write(&path, script).expect("run script written");
        let mut cmd = self.command("sh");
        cmd.arg(&path).env_remove("LAVA_RESULT_DIR");
        output(cmd)
    }

    /// Every file under `dir`, as `relative/path: content` (one line per content line).
    fn files(&self, dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        walk(dir, dir, &mut out);
        out.sort();
        out
    }
}

fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            walk(base, &path, out);
        } else {
            let rel = path.strip_prefix(base).expect("under base").display();
            let text = std::fs::read_to_string(&path).expect("a text file");
            out.push(format!("{rel}: {}", text.trim_end_matches('\n')));
        }
    }
}

fn make_executable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

fn output(mut cmd: Command) -> Out {
    let out = cmd.output().expect("the shell runs");
    Out {
        code: out.status.code().expect("exited, not killed"),
        stdout: String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn uname_a() -> String {
    let out = Command::new("uname")
        .arg("-a")
        .output()
        .expect("uname runs");
    String::from_utf8_lossy(&out.stdout).trim_end().to_string()
}

fn case(id: &str, result: CaseResult) -> Signal {
    Signal::TestCase {
        id: id.into(),
        result,
        measurement: None,
        units: None,
    }
}

fn start(id: &str) -> Signal {
    Signal::StartTestCase(id.into())
}

fn end(id: &str) -> Signal {
    Signal::EndTestCase(id.into())
}

/// One helper call and everything LAVA's helper would show for it.
struct Expect {
    helper: &'static str,
    args: Vec<String>,
    stdout: Vec<String>,
    code: i32,
    /// Files under `$LAVA_RESULT_DIR`, as `path: content`.
    files: Vec<&'static str>,
    /// The stdout lines through `parse_signal`.
    signals: Vec<Signal>,
}

fn expect(helper: &'static str, args: &[&str]) -> Expect {
    Expect {
        helper,
        args: args.iter().map(|a| a.to_string()).collect(),
        stdout: Vec::new(),
        code: 0,
        files: Vec::new(),
        signals: Vec::new(),
    }
}

impl Expect {
    fn prints(mut self, lines: &[&str]) -> Expect {
        self.stdout = lines.iter().map(|l| l.to_string()).collect();
        self
    }
    fn code(mut self, code: i32) -> Expect {
        self.code = code;
        self
    }
    fn files(mut self, files: &[&'static str]) -> Expect {
        self.files = files.to_vec();
        self
    }
    fn signals(mut self, signals: Vec<Signal>) -> Expect {
        self.signals = signals;
        self
    }
}

const CASE_USAGE: [&str; 2] = [
    "usage: lava-test-case NAME --shell COMMAND...",
    "       lava-test-case NAME --result pass|fail|skip|unknown [--measurement M] [--units U] [--output FILE]",
];

fn test_case_table(output_file: &str) -> Vec<Expect> {
    let uname = uname_a();
    let pass = CaseResult::Pass;
    vec![
        // --shell: one argument is a command line, several are one command as given.
        expect("lava-test-case", &["third-ok", "--shell", "uname -a"])
            .prints(&[
                "<LAVA_SIGNAL_STARTTC third-ok>",
                &uname,
                "<LAVA_SIGNAL_ENDTC third-ok>",
                "<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=third-ok RESULT=pass>",
            ])
            .files(&["results/third-ok/result: pass"])
            .signals(vec![
                start("third-ok"),
                end("third-ok"),
                case("third-ok", pass),
            ]),
        expect(
            "lava-test-case",
            &["cpuinfo", "--shell", "test -r /proc/cpuinfo && echo ok"],
        )
        .prints(&[
            "<LAVA_SIGNAL_STARTTC cpuinfo>",
            "ok",
            "<LAVA_SIGNAL_ENDTC cpuinfo>",
            "<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=cpuinfo RESULT=pass>",
        ])
        .files(&["results/cpuinfo/result: pass"])
        .signals(vec![
            start("cpuinfo"),
            end("cpuinfo"),
            case("cpuinfo", pass),
        ]),
        expect("lava-test-case", &["words", "--shell", "uname", "-a"])
            .prints(&[
                "<LAVA_SIGNAL_STARTTC words>",
                &uname,
                "<LAVA_SIGNAL_ENDTC words>",
                "<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=words RESULT=pass>",
            ])
            .files(&["results/words/result: pass"])
            .signals(vec![start("words"), end("words"), case("words", pass)]),
        expect(
            "lava-test-case",
            &["argv-kept", "--shell", "echo", "a  b", "$HOME", ""],
        )
        .prints(&[
            "<LAVA_SIGNAL_STARTTC argv-kept>",
            "a  b $HOME ",
            "<LAVA_SIGNAL_ENDTC argv-kept>",
            "<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=argv-kept RESULT=pass>",
        ])
        .files(&["results/argv-kept/result: pass"])
        .signals(vec![
            start("argv-kept"),
            end("argv-kept"),
            case("argv-kept", pass),
        ]),
        expect(
            "lava-test-case",
            &["line", "--shell", "echo \"a  b\" $TEST_CASE_ID | tr a A"],
        )
        .prints(&[
            "<LAVA_SIGNAL_STARTTC line>",
            "A  b line",
            "<LAVA_SIGNAL_ENDTC line>",
            "<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=line RESULT=pass>",
        ])
        .files(&["results/line/result: pass"])
        .signals(vec![start("line"), end("line"), case("line", pass)]),
        expect(
            "lava-test-case",
            &[
                "exported",
                "--shell",
                "sh",
                "-c",
                "echo \"[$TEST_CASE_ID]\"",
            ],
        )
        .prints(&[
            "<LAVA_SIGNAL_STARTTC exported>",
            "[exported]",
            "<LAVA_SIGNAL_ENDTC exported>",
            "<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=exported RESULT=pass>",
        ])
        .files(&["results/exported/result: pass"])
        .signals(vec![
            start("exported"),
            end("exported"),
            case("exported", pass),
        ]),
        expect("lava-test-case", &["fails", "--shell", "false"])
            .prints(&[
                "<LAVA_SIGNAL_STARTTC fails>",
                "<LAVA_SIGNAL_ENDTC fails>",
                "<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=fails RESULT=fail>",
            ])
            .files(&["results/fails/result: fail"])
            .signals(vec![
                start("fails"),
                end("fails"),
                case("fails", CaseResult::Fail),
            ]),
        expect(
            "lava-test-case",
            &["status-4", "--shell", "sh", "-c", "exit 4"],
        )
        .prints(&[
            "<LAVA_SIGNAL_STARTTC status-4>",
            "<LAVA_SIGNAL_ENDTC status-4>",
            "<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=status-4 RESULT=fail>",
        ])
        .files(&["results/status-4/result: fail"])
        .signals(vec![
            start("status-4"),
            end("status-4"),
            case("status-4", CaseResult::Fail),
        ]),
        expect("lava-test-case", &["nothing", "--shell"])
            .prints(&[
                "<LAVA_SIGNAL_STARTTC nothing>",
                "<LAVA_SIGNAL_ENDTC nothing>",
                "<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=nothing RESULT=pass>",
            ])
            .files(&["results/nothing/result: pass"])
            .signals(vec![
                start("nothing"),
                end("nothing"),
                case("nothing", pass),
            ]),
        // The command line runs inside the helper (LAVA evaluates it): `exit` leaves it.
        expect("lava-test-case", &["leaves", "--shell", "exit 3"])
            .prints(&["<LAVA_SIGNAL_STARTTC leaves>"])
            .code(3)
            .signals(vec![start("leaves")]),
        // --result: the four words, measurement and units, --output.
        expect("lava-test-case", &["p", "--result", "pass"])
            .prints(&["<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=p RESULT=pass>"])
            .files(&["results/p/result: pass"])
            .signals(vec![case("p", pass)]),
        expect("lava-test-case", &["f", "--result", "fail"])
            .prints(&["<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=f RESULT=fail>"])
            .files(&["results/f/result: fail"])
            .signals(vec![case("f", CaseResult::Fail)]),
        expect("lava-test-case", &["s", "--result", "skip"])
            .prints(&["<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=s RESULT=skip>"])
            .files(&["results/s/result: skip"])
            .signals(vec![case("s", CaseResult::Skip)]),
        expect("lava-test-case", &["u", "--result", "unknown"])
            .prints(&["<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=u RESULT=unknown>"])
            .files(&["results/u/result: unknown"])
            .signals(vec![case("u", CaseResult::Unknown)]),
        expect(
            "lava-test-case",
            &[
                "m",
                "--measurement",
                "4.2",
                "--result",
                "pass",
                "--units",
                "s",
            ],
        )
        .prints(&["<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=m RESULT=pass UNITS=s MEASUREMENT=4.2>"])
        .files(&[
            "results/m/measurement: 4.2",
            "results/m/result: pass",
            "results/m/units: s",
        ])
        .signals(vec![Signal::TestCase {
            id: "m".into(),
            result: pass,
            measurement: Some("4.2".into()),
            units: Some("s".into()),
        }]),
        expect(
            "lava-test-case",
            &["attached", "--result", "fail", "--output", output_file],
        )
        .prints(&[
            "<LAVA_SIGNAL_STARTTC attached>",
            "log line 1",
            "log line 2",
            "<LAVA_SIGNAL_ENDTC attached>",
            "<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=attached RESULT=fail>",
        ])
        .files(&["results/attached/result: fail"])
        .signals(vec![
            start("attached"),
            end("attached"),
            case("attached", CaseResult::Fail),
        ]),
        // Printed as given, refused by the parser as LAVA refuses it.
        expect("lava-test-case", &["odd", "--result", "PASSED"])
            .prints(&["<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=odd RESULT=PASSED>"])
            .files(&["results/odd/result: PASSED"]),
        expect("lava-test-case", &["upper", "--result", "PASS"])
            .prints(&["<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=upper RESULT=PASS>"])
            .files(&["results/upper/result: PASS"])
            .signals(vec![case("upper", pass)]),
        expect("lava-test-case", &["my case", "--result", "pass"])
            .prints(&["<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=my case RESULT=pass>"])
            .files(&["results/my case/result: pass"]),
        expect(
            "lava-test-case",
            &["slow", "--result", "pass", "--measurement", "fast"],
        )
        .prints(&["<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=slow RESULT=pass MEASUREMENT=fast>"])
        .files(&[
            "results/slow/measurement: fast",
            "results/slow/result: pass",
        ]),
        expect("lava-test-case", &["empty", "--result"])
            .prints(&["<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=empty RESULT=>"])
            .files(&["results/empty/result: "]),
        // Usage errors: exit 1, no signal.
        expect("lava-test-case", &["no-result"])
            .prints(&["lava-test-case: --result must be given"])
            .code(1),
        expect("lava-test-case", &[]).prints(&CASE_USAGE).code(1),
        expect("lava-test-case", &["", "--result", "pass"])
            .prints(&CASE_USAGE)
            .code(1),
        expect("lava-test-case", &["x", "--bogus", "1"])
            .prints(&CASE_USAGE)
            .code(1),
        expect(
            "lava-test-case",
            &["x", "--result", "pass", "--shell", "true"],
        )
        .prints(&CASE_USAGE)
        .code(1),
    ]
}

fn other_helpers_table() -> Vec<Expect> {
    let set_usage = [
        "usage: lava-test-set start NAME",
        "       lava-test-set stop",
    ];
    let reference_usage =
        ["usage: lava-test-reference NAME --result pass|fail|skip|unknown --reference URL"];
    vec![
        expect("lava-test-set", &["start", "network"])
            .prints(&["<LAVA_SIGNAL_TESTSET START network>"])
            .signals(vec![Signal::TestSetStart("network".into())]),
        expect("lava-test-set", &["stop"])
            .prints(&["<LAVA_SIGNAL_TESTSET STOP>"])
            .signals(vec![Signal::TestSetStop]),
        expect("lava-test-set", &["stop", "network"])
            .prints(&["<LAVA_SIGNAL_TESTSET STOP>"])
            .signals(vec![Signal::TestSetStop]),
        expect("lava-test-set", &["start"])
            .prints(&set_usage)
            .code(1),
        expect("lava-test-set", &[]).prints(&set_usage).code(1),
        expect("lava-test-set", &["begin", "x"])
            .prints(&set_usage)
            .code(1),
        expect(
            "lava-test-reference",
            &[
                "build-log",
                "--result",
                "pass",
                "--reference",
                "https://h/b/42",
            ],
        )
        .prints(&["<LAVA_SIGNAL_TESTREFERENCE build-log pass https://h/b/42>"])
        .signals(vec![Signal::TestReference {
            id: "build-log".into(),
            result: CaseResult::Pass,
            reference: "https://h/b/42".into(),
        }]),
        expect(
            "lava-test-reference",
            &["r", "--reference", "u", "--result", "unknown"],
        )
        .prints(&["<LAVA_SIGNAL_TESTREFERENCE r unknown u>"])
        .signals(vec![Signal::TestReference {
            id: "r".into(),
            result: CaseResult::Unknown,
            reference: "u".into(),
        }]),
        expect("lava-test-reference", &["r", "--result", "pass"])
            .prints(&["lava-test-reference: --reference must be given"])
            .code(1),
        expect("lava-test-reference", &["r", "--reference", "u"])
            .prints(&["lava-test-reference: --result must be given"])
            .code(1),
        expect("lava-test-reference", &[])
            .prints(&reference_usage)
            .code(1),
        expect("lava-test-reference", &["r", "--measurement", "1"])
            .prints(&reference_usage)
            .code(1),
        expect("lava-test-raise", &["disk", "not", "found"])
            .prints(&["<LAVA_SIGNAL_TESTRAISE disk not found>"])
            .code(1)
            .signals(vec![Signal::TestRaise("disk not found".into())]),
        expect("lava-test-raise", &[])
            .prints(&["usage: lava-test-raise MESSAGE"])
            .code(1),
    ]
}

fn check(sh: Sh, expected: Vec<Expect>, setup: impl Fn(&Dut)) {
    for e in expected {
        let dut = Dut::new(sh);
        setup(&dut);
        let args: Vec<&str> = e.args.iter().map(String::as_str).collect();
        let out = dut.helper(e.helper, &args);
        let what = format!("{sh:?}: {} {:?}", e.helper, e.args);
        assert_eq!(
            out.stdout, e.stdout,
            "{what}: stdout (stderr {:?})",
            out.stderr
        );
        assert_eq!(out.code, e.code, "{what}: exit code");
        assert_eq!(out.stderr, "", "{what}: stderr");
        assert_eq!(dut.files(&dut.result_dir()), e.files, "{what}: files");
        assert_eq!(out.signals(), e.signals, "{what}: parsed signals");
    }
}

#[test]
fn lava_test_case_forms_in_ash_and_bash() {
    for sh in shells() {
        let dut_for_output = Dut::new(sh);
        let log = dut_for_output.root().join("work/test.log");
        std::fs::write(&log, "log line 1\nlog line 2\n").expect("log written");
        let log_text = log.display().to_string();
        check(sh, test_case_table(&log_text), |_| {});
    }
}

#[test]
fn a_case_without_result_still_makes_its_directory_as_lava() {
    for sh in shells() {
        let dut = Dut::new(sh);
        let out = dut.helper("lava-test-case", &["no-result"]);
        assert_eq!(out.code, 1);
        assert!(
            dut.result_dir().join("results/no-result").is_dir(),
            "{sh:?}"
        );
    }
}

#[test]
fn set_reference_and_raise_in_ash_and_bash() {
    for sh in shells() {
        check(sh, other_helpers_table(), |_| {});
    }
}

#[test]
fn helpers_without_a_result_dir_print_signals_and_write_nothing() {
    for sh in shells() {
        let dut = Dut::new(sh);
        let mut cmd = dut.command(sh.program);
        cmd.args(sh.args)
            .arg(dut.root().join("bin/lava-test-case"))
            .args(["x", "--result", "pass"])
            .env_remove("LAVA_RESULT_DIR");
        let out = output(cmd);
        assert_eq!(
            out.stdout,
            ["<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=x RESULT=pass>"],
            "{sh:?}"
        );
        assert_eq!(out.code, 0);
        assert!(!dut.root().join("work/results").exists());
    }
}

fn test_run(id: &str, yaml: &str, params: &[(&str, &str)]) -> TestRun {
    let definition =
        jobspec::parse_test_definition("inline.yaml", yaml).expect("a valid test definition");
    let mut merged = definition.params.clone();
    merged.extend(params.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    TestRun {
        id: id.into(),
        definition,
        params: merged,
        files: None,
        uuid: "u_0".into(),
        lava_signal: jobspec::LavaSignal::Stdout,
        root: dutlab_runner::overlay::OVERLAY_ROOT.to_string(),
    }
}

/// The run's results directory (`results/<run>-<epoch>`), which must be the only one.
fn run_result_dir(dut: &Dut, run: &str) -> PathBuf {
    let dirs: Vec<PathBuf> = std::fs::read_dir(dut.root().join("results"))
        .expect("results/ exists")
        .map(|e| e.expect("an entry").path())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    let name = dirs[0]
        .file_name()
        .and_then(|n| n.to_str())
        .expect("a UTF-8 name")
        .to_string();
    let epoch = name
        .strip_prefix(&format!("{run}-"))
        .unwrap_or_else(|| panic!("{name} is not {run}-<epoch>"));
    assert!(
        !epoch.is_empty() && epoch.bytes().all(|b| b.is_ascii_digit()),
        "{name}"
    );
    dirs[0].clone()
}

const ENV_DEFINITION: &str = r#"
metadata: {format: Lava-Test Test Definition 1.0, name: env}
params: {GREETING: hello, OTHER: "it's $HOME"}
install:
  steps:
  - echo "install sees [$GREETING]"
run:
  steps:
  - echo "shell sees [$GREETING] [$OTHER]"
  - sh -c 'echo "child sees [$GREETING]"'
  - echo "TESTRUN_ID=$TESTRUN_ID UUID=$UUID"
  - sh -c 'echo "child sees TESTRUN_ID=$TESTRUN_ID"'
  - pwd
  - sh -c 'echo "child sees LAVA_RESULT_DIR=$LAVA_RESULT_DIR"'
  - lava-test-case env-ok --result pass
  - lava-test-case positional --shell "echo [$1]"
  - false
  - echo not-reached
"#;

#[test]
fn run_script_sets_up_the_test_shell_as_lava() {
    for sh in shells() {
        let dut = Dut::new(sh);
        let run = test_run("0_env", ENV_DEFINITION, &[("GREETING", "from-the-job")]);
        let out = dut.run_script(&run);
        let root = dut.root().display().to_string();
        let results = run_result_dir(&dut, "0_env").display().to_string();
        let dir = format!("{root}/tests/0_env");
        assert_eq!(
            out.stdout,
            [
                dir.as_str(),
                "install sees [from-the-job]",
                "<LAVA_SIGNAL_STARTRUN 0_env u_0>",
                "shell sees [from-the-job] [it's $HOME]",
                "child sees []",
                "TESTRUN_ID=0_env UUID=u_0",
                "child sees TESTRUN_ID=0_env",
                dir.as_str(),
                &format!("child sees LAVA_RESULT_DIR={results}"),
                "<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=env-ok RESULT=pass>",
                "<LAVA_SIGNAL_STARTTC positional>",
                "[echo [$1]]",
                "<LAVA_SIGNAL_ENDTC positional>",
                "<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=positional RESULT=pass>",
            ],
            "{sh:?}: a failing step ends the run without ENDRUN; stderr {}",
            out.stderr
        );
        assert!(
            out.stderr.lines().any(|l| l == "+ false"),
            "{sh:?}: steps are traced: {}",
            out.stderr
        );
        assert!(
            !out.stderr.contains("LAVA_SIGNAL"),
            "{sh:?}: the run signals are not traced: {}",
            out.stderr
        );
        assert_eq!(
            dut.files(Path::new(&results)),
            [
                "install_return_code: 0",
                "results/env-ok/result: pass",
                "results/positional/result: pass",
                "return_code: 1",
            ],
            "{sh:?}"
        );
        assert_eq!(
            out.signals(),
            [
                Signal::StartRun {
                    run: "0_env".into(),
                    uuid: "u_0".into()
                },
                case("env-ok", CaseResult::Pass),
                start("positional"),
                end("positional"),
                case("positional", CaseResult::Pass),
            ],
            "{sh:?}"
        );
    }
}

#[test]
fn run_script_completes_with_endrun_and_return_code_0() {
    let yaml = "metadata: {format: Lava-Test Test Definition 1.0, name: ok}\n\
                run:\n  steps:\n  - lava-test-case a --shell true\n  - lava-test-case b --shell false\n";
    for sh in shells() {
        let dut = Dut::new(sh);
        let out = dut.run_script(&test_run("1_ok", yaml, &[]));
        assert_eq!(
            out.stdout,
            [
                "<LAVA_SIGNAL_STARTRUN 1_ok u_0>",
                "<LAVA_SIGNAL_STARTTC a>",
                "<LAVA_SIGNAL_ENDTC a>",
                "<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=a RESULT=pass>",
                "<LAVA_SIGNAL_STARTTC b>",
                "<LAVA_SIGNAL_ENDTC b>",
                "<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=b RESULT=fail>",
                "<LAVA_SIGNAL_ENDRUN 1_ok u_0>",
            ],
            "{sh:?}: {}",
            out.stderr
        );
        let results = run_result_dir(&dut, "1_ok");
        assert_eq!(
            dut.files(&results),
            [
                "results/a/result: pass",
                "results/b/result: fail",
                "return_code: 0"
            ],
            "{sh:?}: no install steps, no install_return_code"
        );
        let parsed = out.signals();
        assert_eq!(
            parsed.last(),
            Some(&Signal::EndRun {
                run: "1_ok".into(),
                uuid: "u_0".into()
            })
        );
    }
}

#[test]
fn failed_install_skips_the_run() {
    let yaml = "metadata: {format: Lava-Test Test Definition 1.0, name: inst}\n\
                install:\n  steps:\n  - false\n  - echo install-goes-on\n  - sh -c 'exit 7'\n\
                run:\n  steps:\n  - lava-test-case never --result pass\n";
    for sh in shells() {
        let dut = Dut::new(sh);
        let out = dut.run_script(&test_run("2_inst", yaml, &[]));
        let dir = format!("{}/tests/2_inst", dut.root().display());
        assert_eq!(
            out.stdout,
            [
                dir.as_str(),
                "install-goes-on",
                "<LAVA_TEST_RUNNER INSTALL_FAIL>"
            ],
            "{sh:?}: install steps run without set -e; the last status counts"
        );
        assert_eq!(out.signals(), [], "{sh:?}");
        let results = run_result_dir(&dut, "2_inst");
        assert_eq!(dut.files(&results), ["install_return_code: 7"], "{sh:?}");
    }
}

#[test]
fn steps_are_never_expanded_on_the_way() {
    // A step that looks like the here-document's end word, quotes and `$(...)` all arrive
    // as written.
    let yaml = "metadata: {format: Lava-Test Test Definition 1.0, name: lit}\n\
                run:\n  steps:\n  - |\n    cat <<'X'\n    DUTLAB_END_OF_STEPS\n    $(echo no) '\"\n    X\n";
    for sh in shells() {
        let dut = Dut::new(sh);
        let out = dut.run_script(&test_run("3_lit", yaml, &[("P", "$(echo no)")]));
        assert_eq!(
            out.stdout,
            [
                "<LAVA_SIGNAL_STARTRUN 3_lit u_0>",
                "DUTLAB_END_OF_STEPS",
                "$(echo no) '\"",
                "<LAVA_SIGNAL_ENDRUN 3_lit u_0>",
            ],
            "{sh:?}: {}",
            out.stderr
        );
    }
}
