//! Agent configuration files: errors name the file, the field and the reason; `init_config`
//! writes a file that loads.

use anyhow::{Result, ensure};
use dutlab_agent::{AgentConfig, AgentError, init_config, rigs};
use std::path::Path;

const SECRET: &str = "very-secret-token-value";

fn write(dir: &Path, name: &str, text: &str) -> Result<std::path::PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, text)?;
    Ok(path)
}

/// Loads `text` as agent.yaml next to a token file; returns the error text.
fn load_error(text: &str) -> Result<String> {
    let dir = tempfile::tempdir()?;
    write(dir.path(), "token", SECRET)?;
    let path = write(dir.path(), "agent.yaml", text)?;
    match AgentConfig::load(&path) {
        Ok(c) => anyhow::bail!("loaded: {c:?}"),
        Err(e) => {
            let text = e.to_string();
            ensure!(
                text.starts_with(&format!("{}: ", path.display())),
                "no file name: {text}"
            );
            ensure!(!text.contains(SECRET), "the token leaked: {text}");
            Ok(text)
        }
    }
}

const HEAD: &str = "controller: http://127.0.0.1:7780\ntoken_file: token\nwork_dir: work\n";

#[test]
fn errors_name_the_file_the_field_and_the_reason() -> Result<()> {
    let cases: &[(&str, &[&str])] = &[
        ("colour: blue\n", &["unknown field `colour`"]),
        (
            "devices:\n- {name: q1, device_type: qemu}\n- {name: q1, device_type: qemu}\n",
            &["devices[1].name", "listed twice"],
        ),
        (
            "devices:\n- {name: q1, device_type: qemu, qemu: {acel: kvm}}\n",
            &["line 5", "unknown field `acel`"],
        ),
        (
            "devices:\n- {name: q1, device_type: qemu, qemu: {memory_mib: 8}}\n",
            &["devices[0].qemu.memory_mib", "too small"],
        ),
        (
            "devices:\n- {name: ../etc, device_type: qemu}\n",
            &["devices[0].name", "contains '/'"],
        ),
        (
            "devices:\n- name: q1\n  device_type: qemu\n  tags: 5\n",
            &["line 7", "tags:"],
        ),
        ("name: ''\n", &["name: must not be empty"]),
        ("work_dir: again\n", &["duplicate", "work_dir"]),
    ];
    for (extra, wants) in cases {
        let text = load_error(&format!("{HEAD}{extra}"))?;
        for want in *wants {
            ensure!(text.contains(want), "{extra:?}: {want:?} not in {text}");
        }
    }
    let text = load_error("controller: ftp://lab:7780\ntoken_file: token\nwork_dir: w\n")?;
    ensure!(
        text.contains("controller: ") && text.contains("the scheme must be"),
        "{text}"
    );
    // TLS trust: a CA file that is not there, a malformed pin, both at once.
    let tls_head = "controller: https://lab:7780\ntoken_file: token\nwork_dir: w\n";
    let pin = format!("sha256:{}", "ab".repeat(32));
    for (extra, wants) in [
        (
            "ca_file: missing.pem\n".to_string(),
            ["ca_file: ", "missing.pem"],
        ),
        ("pin: sha256:12\n".to_string(), ["pin: ", "64 hex digits"]),
        (
            format!("pin: {pin}\nca_file: ca.pem\n"),
            ["ca_file and pin", "not both"],
        ),
    ] {
        let text = load_error(&format!("{tls_head}{extra}"))?;
        for want in wants {
            ensure!(text.contains(want), "{extra:?}: {want:?} not in {text}");
        }
    }
    let text = load_error("token_file: token\nwork_dir: w\n")?;
    ensure!(text.contains("missing field `controller`"), "{text}");
    Ok(())
}

#[test]
fn the_token_file_must_exist_and_hold_something() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = write(
        dir.path(),
        "agent.yaml",
        "controller: http://h:1\ntoken_file: missing-token\nwork_dir: w\n",
    )?;
    let e = AgentConfig::load(&path)
        .expect_err("no token file")
        .to_string();
    ensure!(e.contains("token_file: "), "{e}");
    ensure!(e.contains("missing-token"), "{e}");
    write(dir.path(), "missing-token", " \n")?;
    let e = AgentConfig::load(&path)
        .expect_err("empty token")
        .to_string();
    ensure!(e.contains("token_file: ") && e.contains("empty"), "{e}");
    write(dir.path(), "missing-token", SECRET)?;
    let config = AgentConfig::load(&path)?;
    ensure!(!format!("{config:?}").contains(SECRET));
    Ok(())
}

#[test]
fn relative_paths_start_at_the_configuration_file() -> Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::create_dir(dir.path().join("etc"))?;
    write(&dir.path().join("etc"), "token", SECRET)?;
    let path = write(
        &dir.path().join("etc"),
        "agent.yaml",
        &format!(
            "{HEAD}name: lab-1\ndevices:\n- {{name: q1, device_type: qemu, image_dir: img}}\n"
        ),
    )?;
    let config = AgentConfig::load(&path)?;
    let etc = std::path::absolute(dir.path().join("etc"))?;
    ensure!(config.token_file == etc.join("token"));
    ensure!(config.work_dir == etc.join("work"));
    ensure!(config.devices[0].image_dir == Some(etc.join("img")));
    ensure!(config.name == "lab-1");
    ensure!(config.controllers == ["http://127.0.0.1:7780"]);
    Ok(())
}

#[test]
fn the_name_defaults_to_the_host_name() -> Result<()> {
    let dir = tempfile::tempdir()?;
    write(dir.path(), "token", SECRET)?;
    let path = write(dir.path(), "agent.yaml", HEAD)?;
    let config = AgentConfig::load(&path)?;
    ensure!(!config.name.is_empty());
    ensure!(config.devices.is_empty());
    Ok(())
}

#[test]
fn init_config_writes_a_file_that_loads() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let token = write(dir.path(), "agent-token", SECRET)?;
    let text = init_config(
        &["http://10.0.0.1:7780".to_owned()],
        &token,
        3,
        "lab-host-1",
        &dir.path().join("state"),
    );
    ensure!(text.contains("# "), "no comments: {text}");
    let path = write(dir.path(), "agent.yaml", &text)?;
    let config = AgentConfig::load(&path)?;
    ensure!(config.name == "lab-host-1");
    ensure!(config.controllers == ["http://10.0.0.1:7780"]);
    ensure!(config.token_file == token);
    ensure!(config.work_dir == dir.path().join("state"));
    let names: Vec<&str> = config.devices.iter().map(|d| d.name.as_str()).collect();
    ensure!(
        names
            == [
                "lab-host-1-qemu-01",
                "lab-host-1-qemu-02",
                "lab-host-1-qemu-03"
            ],
        "{names:?}"
    );
    ensure!(config.devices.iter().all(|d| d.device_type == "qemu"));
    let rigs = rigs(&config);
    ensure!(rigs.len() == 3);
    ensure!(rigs[0].capabilities == ["power", "console", "shell", "storage", "network"]);
    // No devices is a valid (if idle) agent too.
    let text = init_config(
        &["ws://h:1".to_owned()],
        &token,
        0,
        "idle",
        &dir.path().join("s"),
    );
    let path = write(dir.path(), "idle.yaml", &text)?;
    ensure!(AgentConfig::load(&path)?.devices.is_empty());
    Ok(())
}

#[test]
fn agent_errors_are_typed() {
    let e = dutlab_agent::link_url("ftp://h:1").expect_err("scheme");
    assert!(matches!(e, AgentError::Controller { .. }), "{e:?}");
}

#[test]
fn capabilities_come_from_each_devices_rig() -> Result<()> {
    let dir = tempfile::tempdir()?;
    write(dir.path(), "token", SECRET)?;
    let path = write(
        dir.path(),
        "agent.yaml",
        &format!(
            "{HEAD}devices:\n- {{name: q1, device_type: qemu}}\n\
             - {{name: q2, device_type: qemu, qemu: {{network: none}}}}\n"
        ),
    )?;
    let rigs = rigs(&AgentConfig::load(&path)?);
    ensure!(rigs[0].capabilities == ["power", "console", "shell", "storage", "network"]);
    // No NIC, no network capability; QEMU never has video.
    ensure!(rigs[1].capabilities == ["power", "console", "shell", "storage"]);
    let bad = load_error(&format!(
        "{HEAD}devices:\n- {{name: q1, device_type: qemu, qemu: {{network: bridge}}}}\n"
    ))?;
    ensure!(
        bad.contains("line 5") && bad.contains("expected one of user, none"),
        "{bad}"
    );
    Ok(())
}

#[test]
fn several_controllers_are_a_list_tried_in_order() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let token = write(dir.path(), "token", SECRET)?;
    let text = "controller: [http://10.0.0.1:7780, 'wss://c2:7780/lab']\ntoken_file: token\nwork_dir: work\n";
    let path = write(dir.path(), "agent.yaml", text)?;
    let config = AgentConfig::load(&path)?;
    ensure!(config.controllers == ["http://10.0.0.1:7780", "wss://c2:7780/lab"]);
    let both = ["http://a:1".to_owned(), "http://b:2".to_owned()];
    let written = init_config(&both, &token, 0, "two", &dir.path().join("s"));
    let path = write(dir.path(), "two.yaml", &written)?;
    ensure!(AgentConfig::load(&path)?.controllers == both);
    for (bad, why) in [
        ("controller: []\n", "1 to 16"),
        ("controller: [http://a:1, 'ftp://b:2']\n", "controller[1]"),
    ] {
        let e = load_error(&format!("{bad}token_file: token\nwork_dir: work\n"))?;
        ensure!(e.contains(why), "{bad}: {e}");
    }
    Ok(())
}
