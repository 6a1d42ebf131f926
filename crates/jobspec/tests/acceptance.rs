//! Acceptance of LAVA job files: is each one valid LAVA (`parse_job`), and can a device type
//! known here run it (`check_runnable`)?
//!
//! `own_fixtures` runs over `fixtures/lava/` (dutlab's own files, one per construct of LAVA's
//! format that dutlab once refused). `directory_from_environment` runs over every `*.yaml`
//! below the directory in `DUTLAB_LAVA_JOBS` (for example LAVA's own sample jobs) and prints
//! the counts and every refusal; it skips with a message when the variable is unset. Only
//! files that are not job files at all (device dictionaries, test definitions: no
//! `job_name` and `actions` at the top) are left out of the counts.
#![allow(clippy::unwrap_used)]

use dutlab_jobspec::{check_runnable, parse_job};
use std::path::{Path, PathBuf};

/// What happened to one file.
#[derive(Debug)]
enum Verdict {
    /// Valid LAVA, runnable here.
    Runnable,
    /// Valid LAVA, but no device type here runs it: the field.
    NotRunnable(String, String),
    /// Refused as LAVA: the error.
    Invalid(String),
}

fn verdict(path: &Path) -> Option<Verdict> {
    let text = std::fs::read_to_string(path).ok()?;
    // Not a job file: no job_name/actions at the top level.
    if !text.lines().any(|l| l.starts_with("job_name:"))
        || !text.lines().any(|l| l.starts_with("actions:"))
    {
        return None;
    }
    let file = path.display().to_string();
    Some(match parse_job(&file, &text) {
        Err(e) => Verdict::Invalid(format!("{}: {}", e.field, e.reason)),
        Ok(job) => match check_runnable(&file, &job) {
            Ok(()) => Verdict::Runnable,
            Err(e) => Verdict::NotRunnable(e.field, e.reason),
        },
    })
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
}

/// Verdicts of every job file under `dir`, sorted by path.
fn verdicts(dir: &Path) -> Vec<(PathBuf, Verdict)> {
    let mut files = Vec::new();
    yaml_files(dir, &mut files);
    files.sort();
    files
        .into_iter()
        .filter_map(|p| verdict(&p).map(|v| (p, v)))
        .collect()
}

#[test]
fn own_fixtures() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lava");
    let all = verdicts(&dir);
    assert!(all.len() >= 8, "{all:?}");
    for (path, v) in &all {
        let text = std::fs::read_to_string(path).unwrap();
        let expected = text
            .lines()
            .find_map(|l| l.strip_prefix("# expect-not-runnable: "));
        match (v, expected) {
            (Verdict::Runnable, None) => {}
            (Verdict::NotRunnable(field, _), Some(want)) if field == want => {}
            other => panic!("{}: {other:?}", path.display()),
        }
    }
}

#[test]
fn directory_from_environment() {
    let Some(dir) = std::env::var_os("DUTLAB_LAVA_JOBS") else {
        eprintln!("skipped: set DUTLAB_LAVA_JOBS to a directory of LAVA job files to measure");
        return;
    };
    let all = verdicts(Path::new(&dir));
    let (mut runnable, mut not_runnable, mut invalid) = (0, 0, 0);
    for (path, v) in &all {
        match v {
            Verdict::Runnable => runnable += 1,
            Verdict::NotRunnable(field, reason) => {
                not_runnable += 1;
                eprintln!("not runnable here: {}: {field}: {reason}", path.display());
            }
            Verdict::Invalid(e) => {
                invalid += 1;
                eprintln!("not valid LAVA: {}: {e}", path.display());
            }
        }
    }
    eprintln!(
        "{} job files: {} valid LAVA ({runnable} runnable here, {not_runnable} not), \
         {invalid} refused as LAVA",
        all.len(),
        runnable + not_runnable
    );
}
