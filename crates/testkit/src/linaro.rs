//! A stand-in for Linaro's test-definitions repository, for tests that run its definitions.
//!
//! [`create`] makes a git repository laid out like `github.com/Linaro/test-definitions`:
//!
//! ```text
//! automated/lib/sh-test-lib                 shell functions the test scripts source
//! automated/utils/send-to-lava.sh           result file -> lava-test-case / lava-test-set calls
//! automated/linux/smoke/smoke.{yaml,sh}     one case per command of TESTS
//! automated/linux/meminfo/meminfo.{yaml,sh} one case with a measurement per /proc/meminfo line
//! automated/linux/busybox/busybox.{yaml,sh} one case per busybox applet exercised
//! ```
//!
//! The shell is dutlab's own, written in the style of that repository and to the same
//! interfaces, so a DUT that runs these runs Linaro's unchanged:
//! - a definition's steps `cd` into its directory, run `./NAME.sh` (options from params) and
//!   then `../../utils/send-to-lava.sh ./output/result.txt`;
//! - scripts source `../../lib/sh-test-lib`, write `./output/result.txt` and use its
//!   functions (`check_return`, `exit_on_fail`, `report_pass`, `add_metric`, `dist_name`,
//!   `install_deps`, `create_out_dir`, ...);
//! - `result.txt` holds one line per result: `NAME RESULT`, `NAME RESULT MEASUREMENT [UNITS]`
//!   (RESULT one of pass, fail, skip, unknown), `lava-test-set start NAME` or
//!   `lava-test-set stop`;
//! - `send-to-lava.sh RESULT_FILE [RESULT_DIR]` calls `lava-test-case NAME --result RESULT
//!   [--measurement M [--units U]]` and `lava-test-set` when `command -v` finds them, prints
//!   the raw `<LAVA_SIGNAL_...>` lines otherwise (to `/dev/kmsg` at `<0>` with `KMSG` set), and
//!   wraps `RESULT_DIR/NAME.log`, when there is one, in STARTTC/ENDTC signals.
//!
//! Invariants: the repository has exactly one commit holding every file listed above, the
//! scripts are executable (mode 0755 in git), and nothing here needs more than a POSIX shell
//! with busybox applets (the smoke test's default `TESTS` aside, as in Linaro's).

use anyhow::{Context, ensure};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

/// Path of the smoke definition in the repository.
pub const SMOKE: &str = "automated/linux/smoke/smoke.yaml";
/// Path of the meminfo definition in the repository.
pub const MEMINFO: &str = "automated/linux/meminfo/meminfo.yaml";
/// Path of the busybox definition in the repository.
pub const BUSYBOX: &str = "automated/linux/busybox/busybox.yaml";

/// One test definition: its YAML and the script its steps run.
pub struct Definition {
    /// Path of the YAML file in the repository.
    pub path: &'static str,
    /// `metadata.name`.
    pub name: &'static str,
    /// `metadata.description`.
    pub description: &'static str,
    /// Default params (name, value).
    pub params: &'static [(&'static str, &'static str)],
    /// `run.steps`, run from the repository root.
    pub steps: &'static [&'static str],
    /// Name of the script beside the YAML file, and its text.
    pub script: (&'static str, &'static str),
}

/// The three definitions, in the order of the constants above.
pub const DEFINITIONS: [Definition; 3] = [
    Definition {
        path: SMOKE,
        name: "smoke-tests-basic",
        description: "Basic smoke tests: one test case per command of TESTS.",
        params: &[("SKIP_INSTALL", "False"), ("TESTS", SMOKE_DEFAULT_TESTS)],
        steps: &[
            "cd ./automated/linux/smoke/",
            "./smoke.sh -s \"${SKIP_INSTALL}\" -t \"${TESTS}\"",
            "../../utils/send-to-lava.sh ./output/result.txt",
        ],
        script: ("smoke.sh", SMOKE_SH),
    },
    Definition {
        path: MEMINFO,
        name: "meminfo",
        description: "Record the counters of /proc/meminfo after boot.",
        params: &[],
        steps: &[
            "cd ./automated/linux/meminfo",
            "./meminfo.sh",
            "../../utils/send-to-lava.sh ./output/result.txt",
        ],
        script: ("meminfo.sh", MEMINFO_SH),
    },
    Definition {
        path: BUSYBOX,
        name: "busybox",
        description: "Busybox smoke tests: one test case per applet exercised.",
        params: &[],
        steps: &[
            "cd ./automated/linux/busybox/",
            "./busybox.sh",
            "../../utils/send-to-lava.sh ./output/result.txt",
        ],
        script: ("busybox.sh", BUSYBOX_SH),
    },
];

/// The smoke test's default `TESTS` (Linaro's default list; only `pwd`, `uname` and `ip` are
/// busybox applets).
pub const SMOKE_DEFAULT_TESTS: &str = "pwd, lsb_release -a, uname -a, ip a, lscpu, vmstat, lsblk";

impl Definition {
    /// The definition as LAVA test-definition YAML.
    pub fn yaml(&self) -> String {
        let mut y = format!(
            "metadata:\n    format: Lava-Test Test Definition 1.0\n    name: {}\n    \
             description: \"{}\"\n    os:\n        - debian\n        - ubuntu\n        \
             - openembedded\n    scope:\n        - functional\n",
            self.name, self.description
        );
        if !self.params.is_empty() {
            y.push_str("\nparams:\n");
            for (name, value) in self.params {
                y.push_str(&format!("    {name}: \"{value}\"\n"));
            }
        }
        y.push_str("\nrun:\n    steps:\n");
        for step in self.steps {
            y.push_str(&format!("        - {step}\n"));
        }
        y
    }
}

/// Writes the repository into `dir` (created if missing; it must hold nothing else), commits
/// everything with git and returns the commit id.
pub fn create(dir: &Path) -> anyhow::Result<String> {
    std::fs::create_dir_all(dir)?;
    ensure!(
        std::fs::read_dir(dir)?.next().is_none(),
        "{} is not empty",
        dir.display()
    );
    write(dir, "automated/lib/sh-test-lib", SH_TEST_LIB, 0o644)?;
    write(dir, "automated/utils/send-to-lava.sh", SEND_TO_LAVA, 0o755)?;
    for def in &DEFINITIONS {
        write(dir, def.path, &def.yaml(), 0o644)?;
        let parent = Path::new(def.path)
            .parent()
            .context("a definition lives in a directory")?;
        let (name, text) = def.script;
        write(dir, &parent.join(name).to_string_lossy(), text, 0o755)?;
    }
    git(dir, &["init", "-q"])?;
    git(dir, &["add", "."])?;
    git(dir, &["commit", "-q", "-m", "test definitions"])?;
    git(dir, &["rev-parse", "HEAD"])
}

fn write(root: &Path, rel: &str, text: &str, mode: u32) -> anyhow::Result<()> {
    let path = root.join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn git(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "commit.gpgsign=false", "-c", "core.fileMode=true"])
        .args(args)
        .env("GIT_AUTHOR_NAME", "dutlab tests")
        .env("GIT_AUTHOR_EMAIL", "tests@dutlab.invalid")
        .env("GIT_COMMITTER_NAME", "dutlab tests")
        .env("GIT_COMMITTER_EMAIL", "tests@dutlab.invalid")
        .output()
        .context("running git")?;
    ensure!(out.status.success(), "git {args:?}: {out:?}");
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

const SH_TEST_LIB: &str = r#"#!/bin/sh
# sh-test-lib: functions for the test scripts under automated/ (dutlab's version of the
# interface of Linaro's test-definitions). A script sets RESULT_FILE, sources this file and
# records results as lines of RESULT_FILE, each also shown on stdout:
#   NAME RESULT                        RESULT: pass, fail, skip or unknown
#   NAME RESULT MEASUREMENT [UNITS]
#   lava-test-set start NAME  |  lava-test-set stop
# automated/utils/send-to-lava.sh turns the file into LAVA test cases.

LANG=C
export LANG

info_msg() {
    printf "INFO: %s\n" "${1:-Unknown info}"
}

warn_msg() {
    printf "WARNING: %s\n" "${1:-Unknown error}" >&2
}

# error_msg MESSAGE: a usage or setup error; ends the script.
error_msg() {
    printf "ERROR: %s\n" "${1:-Unknown error}" >&2
    exit 1
}

# error_fatal MESSAGE: ends the script, and the test job when lava-test-raise exists.
error_fatal() {
    if command -v lava-test-raise > /dev/null 2>&1; then
        lava-test-raise "${1:-Unknown error}"
    else
        printf "FATAL ERROR: %s\n" "${1:-Unknown error}" >&2
    fi
    exit 1
}

check_root() {
    [ "$(id -ru)" -eq 0 ]
}

# One line of RESULT_FILE.
record_result() {
    [ -n "${RESULT_FILE:-}" ] || error_msg "RESULT_FILE is not set"
    echo "$*" | tee -a "${RESULT_FILE}"
}

report_pass() {
    [ "$#" -eq 1 ] || error_msg "Usage: report_pass test_case"
    record_result "$1 pass"
}

report_fail() {
    [ "$#" -eq 1 ] || error_msg "Usage: report_fail test_case"
    record_result "$1 fail"
}

report_skip() {
    [ "$#" -eq 1 ] || error_msg "Usage: report_skip test_case"
    record_result "$1 skip"
}

report_unknown() {
    [ "$#" -eq 1 ] || error_msg "Usage: report_unknown test_case"
    record_result "$1 unknown"
}

report_set_start() {
    [ "$#" -eq 1 ] || error_msg "Usage: report_set_start test_set"
    record_result "lava-test-set start $1"
}

report_set_stop() {
    [ "$#" -eq 0 ] || error_msg "Usage: report_set_stop"
    record_result "lava-test-set stop"
}

# add_metric TEST_CASE RESULT MEASUREMENT [UNITS]
add_metric() {
    [ "$#" -ge 3 ] || error_msg "Usage: add_metric test_case result measurement [units]"
    record_result "$1 $2 $3${4:+ $4}"
}

# check_return TEST_CASE [XFAIL]: records the exit status of the command run just before it,
# pass when it was 0 (or XFAIL is given), fail otherwise, and returns that status.
check_return() {
    local status="$?"
    [ "$#" -ge 1 ] || error_msg "Usage: check_return test_case [xfail]"
    if [ "${status}" -eq 0 ] || [ -n "${2:-}" ]; then
        report_pass "$1"
        return 0
    fi
    report_fail "$1"
    return "${status}"
}

# exit_on_fail TEST_CASE [SKIP_LIST]: like check_return, but on failure records the cases of
# SKIP_LIST (space separated) as skipped and ends the script with status 0, so the
# definition's next steps still run.
exit_on_fail() {
    local status="$?"
    [ "$#" -ge 1 ] || error_msg "Usage: exit_on_fail test_case [skip_list]"
    if [ "${status}" -eq 0 ]; then
        report_pass "$1"
        return 0
    fi
    report_fail "$1"
    for skipped in ${2:-}; do
        report_skip "${skipped}"
    done
    exit 0
}

# exit_on_skip TEST_CASE [MESSAGE]: on failure records TEST_CASE as skipped and ends the
# script with status 0.
exit_on_skip() {
    local status="$?"
    [ "$#" -ge 1 ] || error_msg "Usage: exit_on_skip test_case [msg]"
    if [ "${status}" -eq 0 ]; then
        report_pass "$1"
        return 0
    fi
    report_skip "$1"
    [ -z "${2:-}" ] || warn_msg "$2"
    exit 0
}

# run_test_case COMMAND TEST_CASE [SKIP_LIST]: for scripts under `set -e`, where check_return
# cannot see a failure.
run_test_case() {
    [ "$#" -ge 2 ] || error_msg "Usage: run_test_case test_command test_case_id [skip_list]"
    if eval "$1"; then
        report_pass "$2"
        return 0
    fi
    report_fail "$2"
    if [ -n "${3:-}" ]; then
        for skipped in $3; do
            report_skip "${skipped}"
        done
        exit 0
    fi
    return 0
}

# dist_name: sets ${dist} to the lower-case id of the distribution (os-release ID first).
dist_name() {
    dist=""
    if [ -f /etc/os-release ]; then
        dist="$(sed -n 's/^ID=//p' /etc/os-release | tr -d "\"'")"
    elif command -v lsb_release > /dev/null 2>&1; then
        dist="$(lsb_release -si)"
    else
        for marker in debian_version:debian fedora-release:fedora centos-release:centos; do
            if [ -f "/etc/${marker%%:*}" ]; then
                dist="${marker#*:}"
                break
            fi
        done
    fi
    if [ -z "${dist}" ]; then
        dist="unknown"
        warn_msg "Unsupported distro: cannot determine distribution name"
    fi
    dist="$(echo "${dist}" | tr '[:upper:]' '[:lower:]')"
    case "${dist}" in
        rpb*) dist="oe-rpb" ;;
    esac
}

# install_deps "PACKAGES" [SKIP_INSTALL]: installs with the distribution's package manager,
# unless SKIP_INSTALL is true.
install_deps() {
    [ -n "${1:-}" ] || error_msg "Usage: install_deps pkgs [skip_install]"
    case "${2:-false}" in
        true|True)
            info_msg "install_deps skipped"
            return 0
            ;;
    esac
    check_root || error_msg "About to install packages, please run this script as root."
    info_msg "Installing $1"
    dist_name
    # shellcheck disable=SC2086
    case "${dist}" in
        debian|ubuntu)
            DEBIAN_FRONTEND=noninteractive apt-get update -q -y &&
                DEBIAN_FRONTEND=noninteractive apt-get install -q -y $1
            ;;
        centos) yum -e 0 -y install $1 ;;
        fedora) dnf -e 0 -y install $1 ;;
        *)
            warn_msg "Unsupported distro: ${dist}! Package installation skipped."
            return 0
            ;;
    esac || error_msg "Failed to install dependencies, exiting..."
}

# create_out_dir DIR: an empty output directory; an earlier run's is kept, renamed after
# its modification time.
create_out_dir() {
    [ -n "${1:-}" ] || error_msg "Usage: create_out_dir output_dir"
    if [ -d "$1" ]; then
        mv "$1" "$1_$(date -r "$1" +%Y%m%d%H%M%S)"
    fi
    mkdir -p "$1"
    [ -d "$1" ] || error_msg "Could not create output directory $1"
}
"#;

const SEND_TO_LAVA: &str = r#"#!/bin/sh
# send-to-lava.sh RESULT_FILE [RESULT_DIR]: reports the lines of a sh-test-lib result file
# to LAVA. "NAME RESULT" and "NAME RESULT MEASUREMENT [UNITS]" become test cases,
# "lava-test-set start NAME" / "lava-test-set stop" test sets. RESULT_DIR/NAME.log, when
# present, is shown between the case's STARTTC and ENDTC signals.

result_file="$1"
result_dir="${2:-$(dirname "${result_file}")}"

# A raw signal, for systems without the lava-* helpers.
emit() {
    if [ -n "${KMSG:-}" ]; then
        echo "<0>$1" > /dev/kmsg
    else
        echo "$1"
    fi
}

have() {
    command -v "$1" > /dev/null 2>&1
}

is_result() {
    case "$(echo "$1" | tr '[:upper:]' '[:lower:]')" in
        pass|fail|skip|unknown) return 0 ;;
    esac
    return 1
}

case_log() {
    if [ -r "${result_dir}/$1.log" ]; then
        emit "<LAVA_SIGNAL_STARTTC $1>"
        cat "${result_dir}/$1.log"
        emit "<LAVA_SIGNAL_ENDTC $1>"
    fi
}

report_case() {
    case_log "$1"
    if have lava-test-case; then
        if [ -n "$4" ]; then
            lava-test-case "$1" --result "$2" --measurement "$3" --units "$4"
        elif [ -n "$3" ]; then
            lava-test-case "$1" --result "$2" --measurement "$3"
        else
            lava-test-case "$1" --result "$2"
        fi
    elif [ -n "$3" ]; then
        emit "<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=$1 RESULT=$2 MEASUREMENT=$3 UNITS=$4>"
    else
        emit "<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=$1 RESULT=$2>"
    fi
}

report_set() {
    if have lava-test-set; then
        lava-test-set "$1" "$2"
    elif [ "$1" = "start" ]; then
        emit "<LAVA_SIGNAL_TESTSET START $2>"
    else
        emit "<LAVA_SIGNAL_TESTSET STOP>"
    fi
}

if [ ! -f "${result_file}" ]; then
    echo "WARNING: result file is missing!"
    exit 0
fi

set -f
while read -r line; do
    # shellcheck disable=SC2086
    set -- ${line}
    if [ "$#" -ge 2 ] && is_result "${line##* }"; then
        # NAME ... RESULT: the case is the first word.
        report_case "$1" "${line##* }" "" ""
    elif [ "$#" -ge 3 ] && is_result "$2"; then
        report_case "$1" "$2" "$3" "${4:-}"
    elif [ "$1" = "lava-test-set" ] && [ "$#" -ge 2 ]; then
        report_set "$2" "${3:-}"
    fi
done < "${result_file}"
"#;

const SMOKE_SH: &str = r#"#!/bin/sh
# Basic smoke tests: each command of TESTS (comma separated) is one test case, named after
# the command's first word, that passes when the command exits with status 0.

# shellcheck disable=SC1091
. ../../lib/sh-test-lib
OUTPUT="$(pwd)/output"
RESULT_FILE="${OUTPUT}/result.txt"
export RESULT_FILE
TESTS="pwd, lsb_release -a, uname -a, ip a, lscpu, vmstat, lsblk"

usage() {
    echo "Usage: $0 [-s <true|false>] [-t TESTS]" >&2
    exit 1
}

while getopts "s:t:h" opt; do
    case "${opt}" in
        s) SKIP_INSTALL="${OPTARG}" ;;
        t) TESTS="${OPTARG}" ;;
        *) usage ;;
    esac
done

install() {
    dist_name
    # shellcheck disable=SC2154
    case "${dist}" in
        debian|ubuntu) install_deps "lsb-release procps iproute2" "${SKIP_INSTALL}" ;;
        fedora|centos) install_deps "redhat-lsb-core procps iproute" "${SKIP_INSTALL}" ;;
        unknown) warn_msg "Unsupported distro: package install skipped" ;;
    esac
}

run_one() {
    local name
    name="$(echo "$1" | awk '{print $1}')"
    echo
    info_msg "Running ${name} test..."
    eval "$1"
    check_return "${name}"
}

create_out_dir "${OUTPUT}"
install
remaining="${TESTS}"
while [ -n "${remaining}" ]; do
    current="$(echo "${remaining%%,*}" | sed 's/^ *//; s/ *$//')"
    if [ -n "${current}" ]; then
        run_one "${current}"
    fi
    # The loop ends on this assignment, so a failed last command does not make the script
    # fail: the definition runs under `set -e` and send-to-lava.sh must still run.
    case "${remaining}" in
        *,*) remaining="${remaining#*,}" ;;
        *) remaining="" ;;
    esac
done
"#;

const MEMINFO_SH: &str = r#"#!/bin/sh -e
# Records the counters of /proc/meminfo as test cases with measurements: first every size
# (units kb), then the HugePages_ counts (no units).

OUTPUT="$(pwd)/output"
RESULT_FILE="${OUTPUT}/result.txt"
MEMINFO="/proc/meminfo"

# shellcheck disable=SC1091
. ../../lib/sh-test-lib

create_out_dir "${OUTPUT}"
info_msg "Reading ${MEMINFO}..."
tee "${OUTPUT}/proc-meminfo" < "${MEMINFO}"

info_msg "Recording the counters of ${MEMINFO}"
# "Name:   1234 kB" -> "Name pass 1234 kb"
awk '$1 ~ /:$/ && $2 ~ /^[0-9]+$/ && $3 == "kB" { sub(/:$/, "", $1); print $1, "pass", $2, "kb" }' \
    "${OUTPUT}/proc-meminfo" | tee -a "${RESULT_FILE}"
# "HugePages_Total:   0" -> "HugePages_Total pass 0"
awk '$1 ~ /^HugePages_.*:$/ { sub(/:$/, "", $1); print $1, "pass", $2 }' \
    "${OUTPUT}/proc-meminfo" | tee -a "${RESULT_FILE}"
"#;

const BUSYBOX_SH: &str = r#"#!/bin/sh
# Busybox smoke tests: one test case per applet, each run as `busybox APPLET` in a scratch
# directory under ./output.

# shellcheck disable=SC1091
. ../../lib/sh-test-lib
OUTPUT="$(pwd)/output"
RESULT_FILE="${OUTPUT}/result.txt"
export RESULT_FILE

create_out_dir "${OUTPUT}"
cd "${OUTPUT}" || exit 1

# Without busybox there is nothing else to test.
busybox
exit_on_fail "busybox-existence"

busybox mkdir scratch
check_return "mkdir"

busybox touch scratch/notes.txt
check_return "touch"

busybox ls scratch/notes.txt
check_return "ls"

busybox cp scratch/notes.txt scratch/notes.copy
check_return "cp"

busybox rm scratch/notes.copy
check_return "rm"

busybox echo "written by busybox echo" > scratch/notes.txt
check_return "echo"

busybox cat scratch/notes.txt
check_return "cat"

busybox grep "busybox" scratch/notes.txt
check_return "grep"

# shellcheck disable=SC2016
busybox awk '{ print "awk read: " $0 }' scratch/notes.txt
check_return "awk"

busybox free
check_return "free"

busybox df
check_return "df"
"#;

#[cfg(test)]
mod tests {
    //! The fixture run on the host (`sh`, host tools, a recording `lava-test-case`), so a
    //! broken script shows up here before any QEMU boots.
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Runs a definition's steps from the repository root, as the DUT does, with `params`
    /// exported; `bin` (if given) is put first on PATH.
    fn run_steps(
        repo: &Path,
        def: &Definition,
        params: &[(&str, &str)],
        bin: Option<&Path>,
    ) -> std::process::Output {
        // LAVA runs the steps under `set -e`.
        let mut cmd = Command::new("sh");
        cmd.arg("-ec").arg(def.steps.join("\n")).current_dir(repo);
        for (name, value) in def.params.iter().chain(params) {
            cmd.env(name, value);
        }
        let path = std::env::var("PATH").unwrap();
        if let Some(bin) = bin {
            cmd.env("PATH", format!("{}:{path}", bin.display()));
        } else {
            // No lava-* helper may be found: send-to-lava.sh then prints raw signals.
            cmd.env("PATH", "/usr/bin:/bin:/usr/sbin:/sbin");
        }
        cmd.env_remove("KMSG");
        cmd.output().unwrap()
    }

    fn text(out: &std::process::Output) -> String {
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A `lava-test-case` / `lava-test-set` that records its arguments, one call per line.
    fn recording_helpers(dir: &Path) -> std::path::PathBuf {
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        for name in ["lava-test-case", "lava-test-set"] {
            let script = format!(
                "#!/bin/sh\nprintf '{name}' >> {log}\nprintf ' <%s>' \"$@\" >> {log}\necho >> {log}\n",
                log = dir.join("calls").display()
            );
            write(&bin, name, &script, 0o755).unwrap();
        }
        bin
    }

    #[test]
    fn repository_is_one_commit_with_executable_scripts() {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("test-definitions");
        let head = create(&repo).unwrap();
        assert_eq!(head.len(), 40, "{head}");
        let tree = git(&repo, &["ls-tree", "-r", "HEAD"]).unwrap();
        for (path, mode) in [
            ("automated/lib/sh-test-lib", "100644"),
            ("automated/utils/send-to-lava.sh", "100755"),
            ("automated/linux/smoke/smoke.yaml", "100644"),
            ("automated/linux/smoke/smoke.sh", "100755"),
            ("automated/linux/meminfo/meminfo.yaml", "100644"),
            ("automated/linux/meminfo/meminfo.sh", "100755"),
            ("automated/linux/busybox/busybox.yaml", "100644"),
            ("automated/linux/busybox/busybox.sh", "100755"),
        ] {
            assert!(
                tree.lines()
                    .any(|l| l.starts_with(mode) && l.ends_with(&format!("\t{path}"))),
                "{path} ({mode}) not in {tree}"
            );
        }
        assert_eq!(git(&repo, &["rev-list", "--count", "HEAD"]).unwrap(), "1");
        assert!(create(&repo).is_err(), "a non-empty directory is refused");
    }

    #[test]
    fn yaml_has_the_steps_and_params() {
        let yaml = DEFINITIONS[0].yaml();
        assert!(yaml.contains("    name: smoke-tests-basic\n"), "{yaml}");
        assert!(yaml.contains("    SKIP_INSTALL: \"False\"\n"), "{yaml}");
        assert!(
            yaml.contains("        - ./smoke.sh -s \"${SKIP_INSTALL}\" -t \"${TESTS}\"\n"),
            "{yaml}"
        );
        assert!(!DEFINITIONS[1].yaml().contains("params:"));
    }

    #[test]
    fn smoke_reports_each_command_and_its_status_as_raw_signals() {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        create(&repo).unwrap();
        let out = run_steps(
            &repo,
            &DEFINITIONS[0],
            &[
                ("SKIP_INSTALL", "true"),
                ("TESTS", "pwd,  uname -a ,true, no-such-command-here --flag"),
            ],
            None,
        );
        let stdout = text(&out);
        assert!(out.status.success(), "{out:?}");
        let result =
            std::fs::read_to_string(repo.join("automated/linux/smoke/output/result.txt")).unwrap();
        assert_eq!(
            result,
            "pwd pass\nuname pass\ntrue pass\nno-such-command-here fail\n"
        );
        let signals: Vec<&str> = stdout
            .lines()
            .filter(|l| l.starts_with("<LAVA_SIGNAL_"))
            .collect();
        assert_eq!(
            signals,
            [
                "<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=pwd RESULT=pass>",
                "<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=uname RESULT=pass>",
                "<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=true RESULT=pass>",
                "<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=no-such-command-here RESULT=fail>",
            ]
        );
        // A second run keeps the first run's output directory aside.
        let again = run_steps(&repo, &DEFINITIONS[0], &[("TESTS", "pwd")], None);
        assert!(again.status.success(), "{again:?}");
        let kept = std::fs::read_dir(repo.join("automated/linux/smoke"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("output_")
            })
            .count();
        assert_eq!(kept, 1);
    }

    #[test]
    fn meminfo_passes_measurements_and_units_to_lava_test_case() {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        create(&repo).unwrap();
        let bin = recording_helpers(dir.path());
        let out = run_steps(&repo, &DEFINITIONS[1], &[], Some(&bin));
        assert!(out.status.success(), "{out:?}");
        let calls = std::fs::read_to_string(dir.path().join("calls")).unwrap();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
        let total: String = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .unwrap()
            .trim()
            .trim_end_matches(" kB")
            .to_string();
        let lines: Vec<&str> = calls.lines().collect();
        assert_eq!(
            lines.first().copied(),
            Some(
                format!("lava-test-case <MemTotal> <--result> <pass> <--measurement> <{total}> <--units> <kb>")
                    .as_str()
            ),
            "{calls}"
        );
        let huge_free = "lava-test-case <HugePages_Free> <--result> <pass> <--measurement> <";
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(huge_free) && l.ends_with('>') && !l.contains("--units")),
            "{calls}"
        );
        let sizes = meminfo.lines().filter(|l| l.ends_with(" kB")).count();
        let huge = meminfo
            .lines()
            .filter(|l| l.starts_with("HugePages_"))
            .count();
        assert_eq!(lines.len(), sizes + huge, "{calls}");
    }

    #[test]
    fn busybox_reports_every_applet() {
        let has_busybox = Command::new("sh")
            .args(["-c", "command -v busybox"])
            .output()
            .unwrap()
            .status
            .success();
        assert!(
            has_busybox,
            "the host needs busybox (install busybox-static)"
        );
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        create(&repo).unwrap();
        let out = run_steps(&repo, &DEFINITIONS[2], &[], None);
        assert!(out.status.success(), "{out:?}");
        let cases: Vec<String> = text(&out)
            .lines()
            .filter_map(|l| l.strip_prefix("<LAVA_SIGNAL_TESTCASE TEST_CASE_ID="))
            .map(str::to_string)
            .collect();
        let want: Vec<String> = [
            "busybox-existence",
            "mkdir",
            "touch",
            "ls",
            "cp",
            "rm",
            "echo",
            "cat",
            "grep",
            "awk",
            "free",
            "df",
        ]
        .iter()
        .map(|c| format!("{c} RESULT=pass>"))
        .collect();
        assert_eq!(cases, want);
    }

    #[test]
    fn send_to_lava_handles_sets_logs_and_a_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        create(&repo).unwrap();
        let out_dir = dir.path().join("out");
        std::fs::create_dir_all(&out_dir).unwrap();
        std::fs::write(
            out_dir.join("result.txt"),
            "lava-test-set start first\nboot pass\nlava-test-set stop\n  spaced   skip  \n\
             rate pass 12.5 MB/s\nodd words here\nwith long name fail\n",
        )
        .unwrap();
        std::fs::write(out_dir.join("boot.log"), "boot output\n").unwrap();
        let script = repo.join("automated/utils/send-to-lava.sh");
        let run = |file: &Path| {
            Command::new(&script)
                .arg(file)
                .env("PATH", "/usr/bin:/bin")
                .env_remove("KMSG")
                .output()
                .unwrap()
        };
        let out = run(&out_dir.join("result.txt"));
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            text(&out),
            "<LAVA_SIGNAL_TESTSET START first>\n\
             <LAVA_SIGNAL_STARTTC boot>\nboot output\n<LAVA_SIGNAL_ENDTC boot>\n\
             <LAVA_SIGNAL_TESTCASE TEST_CASE_ID=boot RESULT=pass>\n\
             <LAVA_SIGNAL_TESTSET STOP>\n\
             <LAVA_SIGNAL_TESTCASE TEST_CASE_ID=spaced RESULT=skip>\n\
             <LAVA_SIGNAL_TESTCASE TEST_CASE_ID=rate RESULT=pass MEASUREMENT=12.5 UNITS=MB/s>\n\
             <LAVA_SIGNAL_TESTCASE TEST_CASE_ID=with RESULT=fail>\n"
        );
        let out = run(&out_dir.join("missing.txt"));
        assert!(out.status.success(), "{out:?}");
        assert_eq!(text(&out), "WARNING: result file is missing!\n");
    }
}
