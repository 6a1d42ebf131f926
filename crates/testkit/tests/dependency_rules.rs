//! The dependency rules of DESIGN.md §3, checked against `cargo metadata`.
//!
//! - `proto`, `jobspec`, `scheduler`, `multinode` do no I/O and never read the clock.
//! - `controller` and `agent` never depend on each other.
//! - drivers (`driver`, `qemu`, later driver crates) know nothing about jobs, leases or the
//!   controller.
//! - only binaries and tests use `anyhow`.

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

/// Workspace crate (short name) -> its normal (non-dev, non-build) dependencies.
fn workspace_dependencies() -> Result<BTreeMap<String, Vec<String>>> {
    let root = dutlab_testkit::workspace_root();
    let out = std::process::Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(&root)
        .output()?;
    ensure!(out.status.success(), "cargo metadata: {out:?}");
    let meta: Value = serde_json::from_slice(&out.stdout)?;
    let mut map = BTreeMap::new();
    for package in meta["packages"].as_array().context("packages")? {
        let name = package["name"].as_str().context("name")?;
        let short = name.strip_prefix("dutlab-").unwrap_or(name).to_string();
        let deps = package["dependencies"]
            .as_array()
            .context("dependencies")?
            .iter()
            .filter(|d| d["kind"].is_null())
            .filter_map(|d| d["name"].as_str())
            .map(|n| n.strip_prefix("dutlab-").unwrap_or(n).to_string())
            .collect();
        map.insert(short, deps);
    }
    Ok(map)
}

const PURE: [&str; 4] = ["proto", "jobspec", "scheduler", "multinode"];
const IO_CRATES: [&str; 8] = [
    "tokio", "reqwest", "sqlx", "axum", "hyper", "nix", "libc", "tempfile",
];
const DRIVERS: [&str; 2] = ["driver", "qemu"];
const JOB_CRATES: [&str; 6] = [
    "jobspec",
    "scheduler",
    "runner",
    "controller",
    "agent",
    "client",
];
const BINARIES_AND_TEST_SUPPORT: [&str; 3] = ["cli", "testkit", "loadbench"];

#[test]
fn pure_crates_do_no_io() -> Result<()> {
    let deps = workspace_dependencies()?;
    for krate in PURE {
        let Some(d) = deps.get(krate) else { continue };
        for io in IO_CRATES {
            ensure!(!d.iter().any(|x| x == io), "{krate} depends on {io}");
        }
    }
    Ok(())
}

#[test]
fn pure_crates_never_read_the_clock() -> Result<()> {
    let root = dutlab_testkit::workspace_root();
    for krate in PURE {
        let src = root.join("crates").join(krate).join("src");
        if !src.exists() {
            continue;
        }
        for file in rust_files(&src)? {
            let text = std::fs::read_to_string(&file)?;
            for needle in ["Instant::now", "SystemTime::now", "std::fs::", "std::net::"] {
                ensure!(!text.contains(needle), "{} uses {needle}", file.display());
            }
        }
    }
    Ok(())
}

#[test]
fn controller_and_agent_are_independent() -> Result<()> {
    let deps = workspace_dependencies()?;
    if let Some(d) = deps.get("controller") {
        ensure!(
            !d.iter().any(|x| x == "agent"),
            "controller depends on agent"
        );
    }
    if let Some(d) = deps.get("agent") {
        ensure!(
            !d.iter().any(|x| x == "controller"),
            "agent depends on controller"
        );
    }
    Ok(())
}

#[test]
fn drivers_know_nothing_about_jobs() -> Result<()> {
    let deps = workspace_dependencies()?;
    for krate in DRIVERS {
        let d = deps.get(krate).context("driver crate missing")?;
        for job in JOB_CRATES {
            ensure!(!d.iter().any(|x| x == job), "{krate} depends on {job}");
        }
    }
    Ok(())
}

#[test]
fn only_binaries_and_tests_use_anyhow() -> Result<()> {
    let deps = workspace_dependencies()?;
    ensure!(deps.len() >= 7, "workspace crates: {:?}", deps.keys());
    for (krate, d) in &deps {
        if BINARIES_AND_TEST_SUPPORT.contains(&krate.as_str()) {
            continue;
        }
        ensure!(
            !d.iter().any(|x| x == "anyhow"),
            "library {krate} depends on anyhow"
        );
    }
    Ok(())
}

fn rust_files(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            out.extend(rust_files(&path)?);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(out)
}
