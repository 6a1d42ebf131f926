//! The generated run script of a test definition (LAVA's `run.sh` semantics) and shell quoting.
//!
//! Invariant: values reach the DUT shell single-quoted; step text travels in quoted
//! here-documents and is never expanded on the way.

use super::*;

/// The script that runs one definition in the DUT (`sh .dutlab-run.sh`). It does what LAVA's
/// `lava-test-runner`, `lava-test-shell` and the generated `install.sh`/`run.sh` do together:
///
/// - `PATH` starts with the helpers; the results directory
///   `/lava-dutlab/results/<run id>-<epoch seconds>` is made (LAVA: `results/<run>-<epoch>`).
/// - Install steps, when there are any, run first in their own `sh` (no `set -e`), with the
///   params set and the run's directory as working directory (printed by `pwd`); their exit
///   status goes to `install_return_code`; a non-zero one prints
///   `<LAVA_TEST_RUNNER INSTALL_FAIL>` and the run is skipped (no STARTRUN).
/// - Run steps run in their own `sh -e` with `LAVA_RESULT_DIR` exported: params as plain
///   shell variables (not exported, as LAVA), `set -e`, `export TESTRUN_ID=<run id>`, `cd`
///   into the run's directory, `UUID` set, STARTRUN, the steps traced by `set -x`, ENDRUN.
///   A failing step ends the run there (no ENDRUN). With `lava-signal: kmsg`, `KMSG=true` is
///   exported for the whole script (install steps and helpers write their signals into the
///   kernel log) and STARTRUN, ENDRUN and INSTALL_FAIL go to `/dev/kmsg` at level `<0>`, as
///   LAVA's `run.sh` writes them (`KMSG` is unset before ENDRUN, as there); without a
///   writable `/dev/kmsg` they are printed. In a step holding `--shell` or `--cmd`,
///   `$1`, `$2`, ... are escaped to reach the helper unexpanded (LAVA does the same). The
///   exit status goes to `return_code` in the results directory.
///
/// Steps are written into `.dutlab-install.sh` / `.dutlab-steps.sh` by quoted here-documents,
/// so their text is never expanded on the way, and each runs in a shell that reads and runs
/// one step at a time, as LAVA's `run.sh` does (a syntax error stops the run at that step).
pub fn run_script(run: &TestRun) -> String {
    static POSITIONAL: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r"\$(\d+)\b").expect("the positional-parameter pattern is valid")
    });
    /// `cat > FILE <<'END' ... END` with an end word that no line of `body` equals.
    fn here_doc(file: &str, body: &str) -> String {
        let mut end = "DUTLAB_END_OF_STEPS".to_string();
        while body.lines().any(|l| l == end) {
            end.push('_');
        }
        format!("cat > {} <<'{end}'\n{body}{end}\n", quote(file))
    }
    let dir = run.dut_dir();
    let params: String = run
        .params
        .iter()
        .map(|(name, value)| format!("{name}={}\n", quote(value)))
        .collect();
    let mut s = String::new();
    s.push_str("#!/bin/sh\n");
    s.push_str(&format!(
        "# dutlab test run {} (definition {})\n",
        run.id,
        run.definition.metadata.name.replace('\n', " ")
    ));
    s.push_str(&format!("export PATH={}/bin:$PATH\n", run.root));
    let kmsg = run.lava_signal == LavaSignal::Kmsg;
    if kmsg {
        // As LAVA's lava-test-runner: the install steps and the runner's signals use it too.
        s.push_str("export KMSG=true\n");
    }
    s.push_str(&format!(
        "LAVA_RESULT_DIR={}-$(date +%s)\n",
        quote(&format!("{}/results/{}", run.root, run.id))
    ));
    s.push_str("mkdir -p \"$LAVA_RESULT_DIR\"\n");
    if !run.definition.install_steps.is_empty() {
        let mut install = params.clone();
        install.push_str(&format!("cd {}\npwd\n", quote(&dir)));
        for step in &run.definition.install_steps {
            install.push_str(step);
            install.push('\n');
        }
        let file = format!("{dir}/.dutlab-install.sh");
        s.push_str(&here_doc(&file, &install));
        s.push_str(&format!("sh {}\n", quote(&file)));
        s.push_str("dutlab_rc=$?\n");
        s.push_str("echo \"$dutlab_rc\" > \"$LAVA_RESULT_DIR/install_return_code\"\n");
        s.push_str(&format!(
            "if [ \"$dutlab_rc\" -ne 0 ]; then {}; exit \"$dutlab_rc\"; fi\n",
            signal_command("<LAVA_TEST_RUNNER INSTALL_FAIL>", kmsg)
        ));
    }
    let mut steps = params;
    steps.push_str("set -e\nset -x\n");
    steps.push_str(&format!("export TESTRUN_ID={}\n", quote(&run.id)));
    steps.push_str(&format!("cd {}\n", quote(&dir)));
    steps.push_str(&format!("UUID={}\n", quote(&run.uuid)));
    steps.push_str("set +x\n");
    if kmsg {
        steps.push_str("export KMSG=true\n");
    }
    steps.push_str(&signal_command(
        &format!("<LAVA_SIGNAL_STARTRUN {} {}>", run.id, run.uuid),
        kmsg,
    ));
    steps.push_str("\nset -x\n");
    for step in &run.definition.run_steps {
        if step.contains("--shell") || step.contains("--cmd") {
            steps.push_str(&POSITIONAL.replace_all(step, r"\$$${1}"));
        } else {
            steps.push_str(step);
        }
        steps.push('\n');
    }
    steps.push_str("set +x\n");
    if kmsg {
        steps.push_str("unset KMSG\n");
    }
    steps.push_str(&signal_command(
        &format!("<LAVA_SIGNAL_ENDRUN {} {}>", run.id, run.uuid),
        kmsg,
    ));
    steps.push('\n');
    let file = format!("{dir}/.dutlab-steps.sh");
    s.push_str(&here_doc(&file, &steps));
    s.push_str("export LAVA_RESULT_DIR\n");
    s.push_str(&format!("sh -e {}\n", quote(&file)));
    s.push_str("echo \"$?\" > \"$LAVA_RESULT_DIR/return_code\"\n");
    s
}

/// The shell command that prints one signal line of the run script: on stdout, or with `kmsg`
/// into the kernel log at level 0 when `/dev/kmsg` is writable (else on stdout, as the
/// helpers do).
pub(super) fn signal_command(line: &str, kmsg: bool) -> String {
    if kmsg {
        format!(
            "if [ -w /dev/kmsg ]; then echo {} > /dev/kmsg; else echo {}; fi",
            quote(&format!("<0>{line}")),
            quote(line)
        )
    } else {
        format!("echo {}", quote(line))
    }
}

/// Single-quotes `value` for a POSIX shell.
pub fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

pub(super) fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

pub(super) fn unique_token() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{:x}{:x}", std::process::id(), nanos & 0xffff_ffff)
}
