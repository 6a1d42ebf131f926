//! System test: Linaro's test-definitions run unchanged on the QEMU DUT.
//!
//! A job with three `from: git` definitions (smoke, meminfo, busybox), written as a LAVA user
//! writes them, runs with the real `dutlab run` binary against a repository laid out like
//! `github.com/Linaro/test-definitions` ([`testkit::linaro`]: sh-test-lib, send-to-lava.sh and
//! the three definitions, in dutlab's own shell with the same interfaces). The test asserts
//! the table of cases LAVA reports for these definitions on a busybox DUT. A second job runs
//! smoke with Linaro's default `TESTS`, whose commands outside busybox fail as under LAVA.

use anyhow::{Context, Result, ensure};
use std::path::Path;
use std::time::Duration;
use testkit::{Finished, Sandbox, Spawned, expect_code, linaro};

const DUTLAB: &str = env!("CARGO_BIN_EXE_dutlab");
/// Generous bound for one job under TCG on a busy 2-core machine.
const RUN_LIMIT: Duration = Duration::from_secs(300);

/// The smoke commands a user of a busybox DUT gives: the busybox applets of Linaro's
/// default list (`lsb_release`, `lscpu`, `vmstat` and `lsblk` are not busybox applets).
const SMOKE_TESTS: &str = "pwd, uname -a, ip a";

/// LAVA's results for smoke with [`SMOKE_TESTS`]: one case per command, named after its
/// first word.
const SMOKE_CASES: [(&str, &str); 3] = [("pwd", "pass"), ("uname", "pass"), ("ip", "pass")];

/// LAVA's results for busybox: every applet exercised passes on a busybox DUT.
const BUSYBOX_CASES: [(&str, &str); 12] = [
    ("busybox-existence", "pass"),
    ("mkdir", "pass"),
    ("touch", "pass"),
    ("ls", "pass"),
    ("cp", "pass"),
    ("rm", "pass"),
    ("echo", "pass"),
    ("cat", "pass"),
    ("grep", "pass"),
    ("awk", "pass"),
    ("free", "pass"),
    ("df", "pass"),
];

/// meminfo cases every Linux kernel dutlab boots reports (among others, which depend on its
/// configuration): each `/proc/meminfo` size in kb, then the HugePages_ counts without units.
const MEMINFO_CORE: [&str; 14] = [
    "MemTotal",
    "MemFree",
    "MemAvailable",
    "Buffers",
    "Cached",
    "SwapTotal",
    "SwapFree",
    "Active(anon)",
    "Inactive(anon)",
    "Hugepagesize",
    "HugePages_Total",
    "HugePages_Free",
    "HugePages_Rsvd",
    "HugePages_Surp",
];

/// One reported case: suite, name, result, measurement, units.
type Row = (String, String, String, Option<String>, Option<String>);

fn row(
    suite: &str,
    name: &str,
    result: &str,
    measurement: Option<&str>,
    units: Option<&str>,
) -> Row {
    (
        suite.to_string(),
        name.to_string(),
        result.to_string(),
        measurement.map(str::to_string),
        units.map(str::to_string),
    )
}

/// LAVA's meminfo results, derived from `/proc/meminfo` as the DUT printed it (the script
/// shows the file between its two INFO lines): a `NAME: N kB` line is `NAME pass N kb`, a
/// `HugePages_X: N` line is `HugePages_X pass N`, sizes first.
fn meminfo_rows(console: &str) -> Result<Vec<Row>> {
    let start = console
        .find("INFO: Reading /proc/meminfo...")
        .context("meminfo.sh did not show /proc/meminfo")?;
    let end = console[start..]
        .find("INFO: Recording the counters")
        .context("meminfo.sh stopped after showing /proc/meminfo")?
        + start;
    let mut sizes = Vec::new();
    let mut huge = Vec::new();
    for line in console[start..end]
        .lines()
        .map(|l| l.trim_end_matches('\r'))
    {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let words: Vec<&str> = value.split_whitespace().collect();
        match words[..] {
            [n, "kB"] => sizes.push(row("1_meminfo", name, "pass", Some(n), Some("kb"))),
            [n] if name.starts_with("HugePages_") => {
                huge.push(row("1_meminfo", name, "pass", Some(n), None));
            }
            _ => {}
        }
    }
    sizes.extend(huge);
    Ok(sizes)
}

/// A job around `definitions` (YAML list items, indented for `definitions:`).
fn job_yaml(definitions: &str) -> String {
    format!(
        "device_type: qemu\njob_name: linaro test-definitions\n\
         timeouts:\n  job: {{minutes: 15}}\n  action: {{minutes: 10}}\n\
         priority: medium\nvisibility: public\nactions:\n\
         - boot:\n    method: qemu\n    media: tmpfs\n    prompts: ['# $']\n\
         \x20   auto_login: {{login_prompt: 'login:', username: root}}\n\
         - test:\n    timeout: {{minutes: 10}}\n    definitions:\n{definitions}"
    )
}

/// One `from: git` definition of the fixture repository, with `params` lines (already
/// indented) if any.
fn definition(repository: &Path, path: &str, name: &str, params: &str) -> String {
    let mut d = format!(
        "    - repository: file://{}\n      from: git\n      path: {path}\n      name: {name}\n",
        repository.display()
    );
    if !params.is_empty() {
        d.push_str("      params:\n");
        d.push_str(params);
    }
    d
}

/// Runs `job` with `dutlab run --results-json` and returns how it ended, the report, and
/// its cases as rows.
fn run_job(sb: &Sandbox, job: &str) -> Result<(Finished, serde_json::Value, Vec<Row>)> {
    let file = sb.path().join("linaro.yaml");
    std::fs::write(&file, job)?;
    let json = sb.path().join("results.json");
    let mut cmd = sb.command(DUTLAB)?;
    cmd.args([
        "run",
        file.to_str().context("path")?,
        "--results-json",
        json.to_str().context("path")?,
    ]);
    let done = Spawned::start(cmd)?.finish(RUN_LIMIT)?;
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&json).with_context(|| format!("no results; {done:?}"))?,
    )?;
    let text = |v: &serde_json::Value| v.as_str().map(str::to_string);
    let rows = report["cases"]
        .as_array()
        .context("cases")?
        .iter()
        .map(|c| {
            (
                text(&c["suite"]).unwrap_or_default(),
                text(&c["name"]).unwrap_or_default(),
                text(&c["result"]).unwrap_or_default(),
                text(&c["measurement"]),
                text(&c["units"]),
            )
        })
        .collect();
    Ok((done, report, rows))
}

/// Fails unless `got` is `want`, naming the differences and the DUT's error lines.
fn same_cases(
    got: &[Row],
    want: &[Row],
    done: &Finished,
    report: &serde_json::Value,
) -> Result<()> {
    let missing: Vec<&Row> = want.iter().filter(|r| !got.contains(r)).collect();
    let extra: Vec<&Row> = got.iter().filter(|r| !want.contains(r)).collect();
    ensure!(
        got == want,
        "cases differ from LAVA's\nmissing: {missing:?}\nunexpected: {extra:?}\n\
         DUT errors: {:?}\nreport: {report}",
        done.stdout
            .lines()
            .filter(|l| l.contains("ERROR") || l.contains("usage") || l.contains("not found"))
            .collect::<Vec<_>>()
    );
    Ok(())
}

#[test]
fn linaro_smoke_meminfo_and_busybox_report_what_lava_reports() -> Result<()> {
    let sb = Sandbox::new()?;
    let repo = sb.path().join("test-definitions");
    linaro::create(&repo)?;
    let smoke_params = format!("        SKIP_INSTALL: true\n        TESTS: \"{SMOKE_TESTS}\"\n");
    let job = job_yaml(
        &[
            definition(&repo, linaro::SMOKE, "smoke-tests", &smoke_params),
            definition(&repo, linaro::MEMINFO, "meminfo", ""),
            definition(&repo, linaro::BUSYBOX, "busybox", ""),
        ]
        .concat(),
    );
    let (done, report, got) = run_job(&sb, &job)?;

    let mut want: Vec<Row> = SMOKE_CASES
        .iter()
        .map(|(name, result)| row("0_smoke-tests", name, result, None, None))
        .collect();
    let meminfo = meminfo_rows(&done.stdout).with_context(|| {
        format!(
            "report: {report}\nstdout:\n{}\nstderr:\n{}",
            done.stdout, done.stderr
        )
    })?;
    for name in MEMINFO_CORE {
        ensure!(
            meminfo.iter().any(|r| r.1 == name),
            "the DUT's /proc/meminfo has no {name}: {meminfo:?}"
        );
    }
    want.extend(meminfo);
    want.extend(
        BUSYBOX_CASES
            .iter()
            .map(|(name, result)| row("2_busybox", name, result, None, None)),
    );
    same_cases(&got, &want, &done, &report)?;
    expect_code(&done, 0)?;
    ensure!(report["outcome"] == "passed", "{report}");

    // The guest's /etc/os-release names it, so sh-test-lib's dist_name knows the system.
    ensure!(
        !done
            .stdout
            .contains("Unsupported distro: cannot determine distribution name"),
        "{}",
        done.stdout
    );
    // MemTotal is the guest's memory (the default QEMU device has 512 MiB) less the kernel's.
    let total: u64 = want
        .iter()
        .find(|r| r.1 == "MemTotal")
        .and_then(|r| r.3.as_deref())
        .context("MemTotal")?
        .parse()?;
    ensure!(
        (256 * 1024..=512 * 1024).contains(&total),
        "MemTotal {total} kB"
    );
    sb.assert_no_qemu_left()
}

#[test]
fn linaro_smoke_defaults_fail_the_commands_busybox_lacks() -> Result<()> {
    let sb = Sandbox::new()?;
    let repo = sb.path().join("test-definitions");
    linaro::create(&repo)?;
    // Only SKIP_INSTALL given: Linaro's default TESTS, as most LAVA jobs run smoke.
    let job = job_yaml(&definition(
        &repo,
        linaro::SMOKE,
        "smoke-tests",
        "        SKIP_INSTALL: true\n",
    ));
    let (done, report, got) = run_job(&sb, &job)?;
    let want: Vec<Row> = [
        ("pwd", "pass"),
        ("lsb_release", "fail"),
        ("uname", "pass"),
        ("ip", "pass"),
        ("lscpu", "fail"),
        ("vmstat", "fail"),
        ("lsblk", "fail"),
    ]
    .iter()
    .map(|(name, result)| row("0_smoke-tests", name, result, None, None))
    .collect();
    same_cases(&got, &want, &done, &report)?;
    expect_code(&done, 1)?;
    ensure!(report["outcome"] == "failed", "{report}");
    sb.assert_no_qemu_left()
}
