//! dutlab as a LAVA server: the real `lavacli` (from PyPI, installed by
//! `scripts/install-lavacli.sh`, which `.ci/run` runs) and plain HTTP requests to LAVA's REST
//! API v0.2, against a real controller and an agent with a QEMU device.
//!
//! lavacli is required, not optional: a missing one fails these tests with the command
//! that installs it.

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;
use testkit::lab::{CLI_LIMIT, Lab};
use testkit::{Finished, Spawned, expect_code, inline_job, wait_until, workspace_root};

const DUTLAB: &str = env!("CARGO_BIN_EXE_dutlab");
const JOB_LIMIT: Duration = Duration::from_secs(240);

/// The lavacli of `scripts/install-lavacli.sh` (or `$DUTLAB_LAVACLI`).
fn lavacli_path() -> Result<PathBuf> {
    let path = std::env::var_os("DUTLAB_LAVACLI")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".venv/lavacli/bin/lavacli"));
    ensure!(
        path.is_file(),
        "lavacli is not installed at {}: run scripts/install-lavacli.sh (CI does)",
        path.display()
    );
    Ok(path)
}

/// Runs lavacli with its configuration (identities) in the sandbox.
fn lavacli(lab: &Lab, args: &[&str]) -> Result<Finished> {
    let mut cmd = lab.sandbox().command(lavacli_path()?)?;
    cmd.args(args)
        .env(
            "XDG_CONFIG_HOME",
            lab.sandbox().path().join("lavacli-config"),
        )
        .env_remove("FORCE_COLOR");
    Spawned::start(cmd)?.finish(CLI_LIMIT)
}

fn ok(lab: &Lab, args: &[&str]) -> Result<String> {
    let done = lavacli(lab, args)?;
    expect_code(&done, 0).with_context(|| format!("lavacli {args:?}"))?;
    Ok(done.stdout)
}

/// lavacli exits 1 and says why on stderr.
fn refused(lab: &Lab, args: &[&str], why: &str) -> Result<()> {
    let done = lavacli(lab, args)?;
    expect_code(&done, 1).with_context(|| format!("lavacli {args:?}"))?;
    ensure!(
        done.stderr.contains(why),
        "lavacli {args:?}: stderr has no {why:?}:\n{}",
        done.stderr
    );
    ensure!(
        !done.stderr.contains("Traceback") && !done.stderr.contains("Unknown error"),
        "lavacli {args:?} crashed:\n{}",
        done.stderr
    );
    Ok(())
}

/// `lavacli identities add`, the way LAVA users configure it.
fn identity(lab: &Lab, name: &str, user: Option<(&str, &str)>) -> Result<()> {
    let uri = format!("{}/RPC2", lab.url());
    let mut args = vec!["identities", "add", name, "--uri", &uri];
    if let Some((user, token)) = user {
        args.extend(["--username", user, "--token", token]);
    }
    ok(lab, &args).map(drop)
}

/// One HTTP/1.1 request with the given headers; answers (status, body).
fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(stream, "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n")?;
    for (k, v) in headers {
        write!(stream, "{k}: {v}\r\n")?;
    }
    write!(
        stream,
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    stream.write_all(body)?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").context("no end of headers")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status in {head:?}"))?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        unchunk(body)
    } else {
        body.to_owned()
    };
    Ok((status, body))
}

fn unchunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

fn rest(lab: &Lab, method: &str, path: &str, token: &str, body: &str) -> Result<(u16, Value)> {
    let auth = format!("Token {token}");
    let (status, text) = http(
        lab.port(),
        method,
        path,
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        body.as_bytes(),
    )?;
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Ok((status, value))
}

/// A job that prints a marker and reports one passing case.
fn marker_job(lab: &Lab, file: &str, visibility: &str, name: &str) -> Result<PathBuf> {
    lab.write(
        file,
        &format!(
            "visibility: {visibility}\n{}",
            inline_job(
                name,
                "  job: {minutes: 4}",
                &[
                    "echo lava-compat-marker-$((6*7))",
                    "lava-test-case hello --result pass"
                ],
            )
        ),
    )
}

fn start_lab() -> Result<(Lab, String, String)> {
    let mut lab = Lab::start(DUTLAB)?;
    lab.agent("rig", 1)?;
    let alice = lab.token("alice", "user")?;
    let bob = lab.token("bob", "user")?;
    Ok((lab, alice, bob))
}

fn path_str(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn lavacli_submits_follows_and_reads_results_of_a_qemu_job() -> Result<()> {
    let (lab, alice, bob) = start_lab()?;
    identity(&lab, "default", Some(("alice", &alice)))?;
    identity(&lab, "bob", Some(("bob", &bob)))?;
    identity(&lab, "anonymous", None)?;
    let shown = ok(&lab, &["identities", "show", "default"])?;
    ensure!(shown.contains("username: alice"), "{shown}");

    ensure!(ok(&lab, &["system", "whoami"])?.trim() == "alice");
    let version = ok(&lab, &["system", "version"])?;
    ensure!(version.starts_with("2025.12+dutlab"), "{version}");
    // A private lab tells anonymous callers nothing; a wrong token is refused at HTTP level.
    refused(&lab, &["-i", "anonymous", "jobs", "list"], "401")?;
    let forged = format!(
        "http://alice:dutlab_{}@127.0.0.1:{}/RPC2",
        "0".repeat(40),
        lab.port()
    );
    refused(&lab, &["--uri", &forged, "system", "whoami"], "401")?;
    // Bob's token under Alice's name is refused too.
    let swapped = format!("http://alice:{bob}@127.0.0.1:{}/RPC2", lab.port());
    refused(&lab, &["--uri", &swapped, "system", "whoami"], "401")?;

    let devices = ok(&lab, &["devices", "list"])?;
    ensure!(
        devices.contains("* rig-qemu-01 (qemu): Idle,Good"),
        "{devices}"
    );
    let types = ok(&lab, &["device-types", "list"])?;
    ensure!(types.contains("* qemu (1)"), "{types}");

    let job = marker_job(&lab, "job.yaml", "personal", "lava-compat")?;
    ok(&lab, &["jobs", "validate", &path_str(&job)])?;
    let id = ok(&lab, &["jobs", "submit", &path_str(&job)])?
        .trim()
        .to_owned();
    ensure!(id.parse::<u64>().is_ok(), "submit printed {id:?}");
    // Bob may not see Alice's personal job, on any path.
    refused(&lab, &["-i", "bob", "jobs", "show", &id], "403")?;
    refused(
        &lab,
        &["-i", "bob", "jobs", "logs", &id, "--no-follow"],
        "403",
    )?;
    refused(&lab, &["-i", "bob", "jobs", "definition", &id], "403")?;
    refused(&lab, &["-i", "bob", "results", &id], "403")?;
    refused(&lab, &["-i", "bob", "jobs", "cancel", &id], "403")?;
    let bobs = ok(&lab, &["-i", "bob", "jobs", "list"])?;
    ensure!(!bobs.contains(&format!("* {id}:")), "{bobs}");

    // `jobs logs` without --no-follow polls until the job is finished.
    let followed = ok(&lab, &["jobs", "logs", &id, "--polling", "1"])?;
    ensure!(followed.contains("lava-compat-marker-42"), "{followed}");
    ok(&lab, &["jobs", "wait", &id, "--polling", "1"])?;
    let shown = ok(&lab, &["jobs", "show", &id])?;
    for want in [
        "state       : Finished",
        "Health      : Complete",
        "submitter   : alice",
        "device      : rig-qemu-01",
        "visibility  : Personal",
        "description : lava-compat",
    ] {
        ensure!(shown.contains(want), "no {want:?} in\n{shown}");
    }
    let json: Value = serde_json::from_str(&ok(&lab, &["jobs", "show", &id, "--json"])?)?;
    ensure!(
        json["end_time"].as_str().is_some_and(|t| t.len() == 17),
        "{json}"
    );

    // Raw logs are LAVA's YAML lines; paging by line offset sees the rest.
    let raw = ok(&lab, &["jobs", "logs", &id, "--raw", "--no-follow"])?;
    ensure!(raw.lines().all(|l| l.starts_with("- {")), "{raw}");
    ensure!(raw.contains("\"lvl\": \"target\""), "{raw}");
    ensure!(raw.contains("\"lvl\": \"results\""), "{raw}");
    let total = raw.lines().count();
    let tail = ok(
        &lab,
        &[
            "jobs",
            "logs",
            &id,
            "--raw",
            "--no-follow",
            "--start",
            &(total - 2).to_string(),
        ],
    )?;
    ensure!(tail.lines().count() == 2, "{tail}");
    ensure!(raw.ends_with(&tail), "the last two lines differ:\n{tail}");

    let results = ok(&lab, &["results", &id])?;
    ensure!(results.contains(".hello [pass]"), "{results}");
    let yaml = ok(&lab, &["results", &id, "--yaml"])?;
    ensure!(yaml.contains("name: hello"), "{yaml}");
    let suite = results
        .lines()
        .find_map(|l| l.strip_prefix("* ")?.strip_suffix(".hello [pass]"))
        .context("suite of hello")?
        .to_owned();
    ensure!(ok(&lab, &["results", &id, &suite, "hello"])?.trim() == "pass");
    refused(&lab, &["results", &id, "no-such-suite"], "404")?;

    let definition = ok(&lab, &["jobs", "definition", &id])?;
    ensure!(definition.contains("job_name: lava-compat"), "{definition}");
    let listed = ok(&lab, &["jobs", "list"])?;
    ensure!(
        listed.contains(&format!(
            "* {id}: Finished,Complete [alice] (lava-compat) - qemu"
        )),
        "{listed}"
    );
    let finished = ok(
        &lab,
        &[
            "jobs", "list", "--state", "FINISHED", "--health", "COMPLETE",
        ],
    )?;
    ensure!(finished.contains(&format!("* {id}:")), "{finished}");
    let running = ok(&lab, &["jobs", "list", "--state", "RUNNING"])?;
    ensure!(!running.contains(&format!("* {id}:")), "{running}");
    refused(&lab, &["jobs", "show", "999999"], "404")?;

    // MultiNode submissions: `a_multinode_submission_answers_its_sub_job_ids_as_lava_does`.
    lab.finish()
}

#[test]
fn lavacli_cancels_a_running_job_and_resubmits() -> Result<()> {
    let (lab, alice, bob) = start_lab()?;
    identity(&lab, "default", Some(("alice", &alice)))?;
    identity(&lab, "bob", Some(("bob", &bob)))?;
    let job = lab.write(
        "long.yaml",
        &format!(
            "visibility: personal\n{}",
            inline_job(
                "long",
                "  job: {minutes: 10}",
                &["echo started-$((1+1))", "sleep 600"]
            )
        ),
    )?;
    let id = ok(&lab, &["jobs", "submit", &path_str(&job)])?
        .trim()
        .to_owned();
    let number: u64 = id.parse()?;
    lab.wait_for_line(number, "started-2")?;
    let queue = ok(&lab, &["jobs", "queue"])?;
    ensure!(
        !queue.contains(&format!("* {id}:")),
        "a running job is not queued: {queue}"
    );
    let shown = ok(&lab, &["jobs", "show", &id])?;
    ensure!(shown.contains("state       : Running"), "{shown}");
    refused(&lab, &["-i", "bob", "jobs", "cancel", &id], "403")?;
    ok(&lab, &["jobs", "cancel", &id])?;
    ok(&lab, &["jobs", "wait", &id, "--polling", "1"])?;
    let shown = ok(&lab, &["jobs", "show", &id])?;
    ensure!(shown.contains("Health      : Canceled"), "{shown}");
    let canceled = ok(&lab, &["jobs", "list", "--health", "CANCELED"])?;
    ensure!(
        canceled.contains(&format!("* {id}: Finished,Canceled")),
        "{canceled}"
    );

    // Resubmit makes a new job of the same definition, owned by the caller.
    refused(
        &lab,
        &["-i", "bob", "jobs", "resubmit", &id, "--url"],
        "403",
    )?;
    let again = ok(&lab, &["jobs", "resubmit", &id])?.trim().to_owned();
    ensure!(again != id && again.parse::<u64>().is_ok(), "{again}");
    let again_number: u64 = again.parse()?;
    lab.wait_for_line(again_number, "started-2")?;
    ok(&lab, &["jobs", "cancel", &again])?;
    lab.wait_state(again_number, "finished", JOB_LIMIT)?;
    lab.finish()
}

#[test]
fn rest_v02_submits_reads_and_refuses_with_plain_http() -> Result<()> {
    let (lab, alice, bob) = start_lab()?;
    let job = std::fs::read_to_string(marker_job(&lab, "job.yaml", "personal", "rest-job")?)?;
    let body = serde_json::json!({ "definition": job }).to_string();
    let (status, created) = rest(&lab, "POST", "/api/v0.2/jobs/", &alice, &body)?;
    ensure!(status == 201, "{status} {created}");
    let id = created["job_ids"][0].as_u64().context("job_ids")?;
    let finished = wait_until("the job finished over REST", JOB_LIMIT, || {
        let (status, job) = rest(&lab, "GET", &format!("/api/v0.2/jobs/{id}/"), &alice, "")?;
        ensure!(status == 200, "{status} {job}");
        Ok((job["state"] == "Finished").then_some(job))
    })?;
    ensure!(finished["health"] == "Complete", "{finished}");
    ensure!(finished["submitter"] == "alice", "{finished}");
    ensure!(finished["actual_device"] == "rig-qemu-01", "{finished}");
    ensure!(
        finished["definition"]
            .as_str()
            .is_some_and(|d| d.contains("rest-job")),
        "{finished}"
    );

    let (status, list) = rest(
        &lab,
        "GET",
        "/api/v0.2/jobs/?state=Finished&health=Complete&submitter=alice",
        &alice,
        "",
    )?;
    ensure!(status == 200 && list["count"] == 1, "{status} {list}");
    ensure!(list["results"][0]["id"] == id, "{list}");
    let (status, none) = rest(&lab, "GET", "/api/v0.2/jobs/?state=Running", &alice, "")?;
    ensure!(status == 200 && none["count"] == 0, "{status} {none}");
    let (status, bad) = rest(&lab, "GET", "/api/v0.2/jobs/?state=Queued", &alice, "")?;
    ensure!(status == 400, "{status} {bad}");

    let (status, logs) = rest(
        &lab,
        "GET",
        &format!("/api/v0.2/jobs/{id}/logs/"),
        &alice,
        "",
    )?;
    let logs = logs.as_str().context("logs are YAML text")?.to_owned();
    ensure!(
        status == 200 && logs.contains("lava-compat-marker-42"),
        "{status} {logs}"
    );
    let (_, two) = rest(
        &lab,
        "GET",
        &format!("/api/v0.2/jobs/{id}/logs/?start=1&end=3"),
        &alice,
        "",
    )?;
    ensure!(
        two.as_str().is_some_and(|t| t.lines().count() == 2),
        "{two}"
    );

    let (status, suites) = rest(
        &lab,
        "GET",
        &format!("/api/v0.2/jobs/{id}/suites/"),
        &alice,
        "",
    )?;
    ensure!(status == 200, "{status} {suites}");
    let (status, tests) = rest(
        &lab,
        "GET",
        &format!("/api/v0.2/jobs/{id}/tests/"),
        &alice,
        "",
    )?;
    ensure!(status == 200, "{status} {tests}");
    let hello = tests["results"]
        .as_array()
        .context("results")?
        .iter()
        .find(|t| t["name"] == "hello")
        .with_context(|| format!("no hello in {tests}"))?;
    ensure!(hello["result"] == "pass", "{hello}");
    let suite = hello["suite"].as_u64().context("suite id")?;
    ensure!(
        suites["results"]
            .as_array()
            .context("suites")?
            .iter()
            .any(|s| s["id"] == suite),
        "{suites}"
    );
    let (status, in_suite) = rest(
        &lab,
        "GET",
        &format!("/api/v0.2/jobs/{id}/suites/{suite}/tests/"),
        &alice,
        "",
    )?;
    ensure!(
        status == 200 && in_suite["count"].as_u64() >= Some(1),
        "{in_suite}"
    );
    let (status, junit) = rest(
        &lab,
        "GET",
        &format!("/api/v0.2/jobs/{id}/junit/"),
        &alice,
        "",
    )?;
    let junit = junit.as_str().context("junit is XML")?.to_owned();
    ensure!(
        status == 200 && junit.contains("<testcase name=\"hello\""),
        "{junit}"
    );

    let (status, devices) = rest(&lab, "GET", "/api/v0.2/devices/", &alice, "")?;
    ensure!(
        status == 200 && devices["results"][0]["hostname"] == "rig-qemu-01",
        "{devices}"
    );
    let (status, types) = rest(&lab, "GET", "/api/v0.2/devicetypes/", &alice, "")?;
    ensure!(
        status == 200 && types["results"][0]["name"] == "qemu",
        "{types}"
    );

    // Bob: Alice's personal job does not exist in his list and is 403 everywhere else.
    let (_, bobs) = rest(&lab, "GET", "/api/v0.2/jobs/", &bob, "")?;
    ensure!(bobs["count"] == 0, "{bobs}");
    for path in ["", "logs/", "tests/", "suites/", "junit/", "cancel/"] {
        let (status, answer) = rest(
            &lab,
            "GET",
            &format!("/api/v0.2/jobs/{id}/{path}"),
            &bob,
            "",
        )?;
        ensure!(status == 403, "bob GET {path}: {status} {answer}");
        ensure!(answer["detail"].is_string(), "{answer}");
    }
    let (status, _) = rest(
        &lab,
        "POST",
        &format!("/api/v0.2/jobs/{id}/resubmit/"),
        &bob,
        "",
    )?;
    ensure!(status == 403, "bob resubmit: {status}");
    // A bad definition is 400 naming the field.
    let bad = serde_json::json!({ "definition": "job_name: x\n" }).to_string();
    let (status, answer) = rest(&lab, "POST", "/api/v0.2/jobs/", &alice, &bad)?;
    ensure!(status == 400, "{status} {answer}");
    ensure!(
        answer["detail"]
            .as_str()
            .is_some_and(|d| d.contains("device_type")),
        "{answer}"
    );
    lab.finish()
}

#[test]
fn every_lava_route_needs_a_token() -> Result<()> {
    let lab = Lab::start(DUTLAB)?;
    let agent = lab.token("rig", "agent")?;
    let user = lab.token("carol", "user")?;
    let bad = format!("Token dutlab_{}", "0".repeat(40));
    let agent_header = format!("Token {agent}");
    for (method, path) in controller::lava::rest::ROUTES {
        let (none, _) = http(lab.port(), method, path, &[], b"")?;
        ensure!(none == 401, "{method} {path} without a token: {none}");
        let (wrong, _) = http(lab.port(), method, path, &[("Authorization", &bad)], b"")?;
        ensure!(wrong == 401, "{method} {path} with a bad token: {wrong}");
        let (agent, _) = http(
            lab.port(),
            method,
            path,
            &[("Authorization", &agent_header)],
            b"",
        )?;
        ensure!(agent == 403, "{method} {path} with an agent token: {agent}");
        // The route exists: a user gets an answer of the route (job 1 does not exist), not
        // the router's empty 404 or 405.
        let user_header = format!("Token {user}");
        let (status, body) = http(
            lab.port(),
            method,
            path,
            &[("Authorization", &user_header)],
            b"",
        )?;
        ensure!(
            status != 405 && !body.is_empty(),
            "{method} {path} as a user: {status} {body:?}"
        );
    }
    // XML-RPC: anonymous calls get fault 401 and nothing else, whatever the method.
    let call = |method: &str| {
        format!(
            "<?xml version='1.0'?><methodCall><methodName>{method}</methodName><params></params></methodCall>"
        )
    };
    for method in [
        "system.version",
        "system.listMethods",
        "scheduler.jobs.list",
        "no.such",
    ] {
        let (status, body) = http(lab.port(), "POST", "/RPC2", &[], call(method).as_bytes())?;
        ensure!(status == 200, "{method}: {status}");
        ensure!(
            body.contains("<name>faultCode</name><value><int>401</int>"),
            "{body}"
        );
        ensure!(
            !body.contains("2025.12") && !body.contains("scheduler."),
            "{body}"
        );
    }
    // A bad token is refused before the call is read; an agent token gets fault 403.
    for header in [bad.replace("Token", "Bearer"), "Basic !!!".to_owned()] {
        let (status, _) = http(
            lab.port(),
            "POST",
            "/RPC2",
            &[("Authorization", &header)],
            call("system.version").as_bytes(),
        )?;
        ensure!(status == 401 || status == 400, "{header}: {status}");
    }
    let (status, body) = http(
        lab.port(),
        "POST",
        "/RPC2",
        &[("Authorization", &format!("Bearer {agent}"))],
        call("system.version").as_bytes(),
    )?;
    ensure!(
        status == 200 && body.contains("<int>403</int>"),
        "{status} {body}"
    );
    // A hostile body is a parse fault, not a crash or an expansion.
    let bomb = "<?xml version='1.0'?><!DOCTYPE x [<!ENTITY a 'aaaaaaaa'><!ENTITY b '&a;&a;&a;&a;'>]>\
                <methodCall><methodName>&b;</methodName></methodCall>";
    let (status, body) = http(
        lab.port(),
        "POST",
        "/RPC2",
        &[("Authorization", &format!("Bearer {user}"))],
        bomb.as_bytes(),
    )?;
    ensure!(
        status == 200 && body.contains("<int>-32700</int>"),
        "{status} {body}"
    );
    ensure!(!body.contains("aaaaaaaa"), "{body}");
    let (status, body) = http(
        lab.port(),
        "POST",
        "/RPC2",
        &[("Authorization", &format!("Bearer {user}"))],
        call("system.whoami").as_bytes(),
    )?;
    ensure!(
        status == 200 && body.contains("<string>carol</string>"),
        "{status} {body}"
    );
    lab.finish()
}

#[test]
fn a_multinode_submission_answers_its_sub_job_ids_as_lava_does() -> Result<()> {
    let (lab, alice, _) = start_lab()?;
    identity(&lab, "default", Some(("alice", &alice)))?;
    // Two roles, one device: the group waits (queued), and submitting answers at once.
    let pair = "job_name: pair
timeouts:
  job: {minutes: 4}
visibility: personal
protocols:
  lava-multinode:
    roles:
      server: {device_type: qemu, count: 1}
      client: {device_type: qemu, count: 1}
actions:
- boot: {role: [server, client], method: qemu, prompts: ['# $']}
";
    let file = lab.write("pair.yaml", pair)?;
    let out = ok(&lab, &["jobs", "submit", &path_str(&file)])?;
    let ids: Vec<&str> = out.split_whitespace().collect();
    ensure!(ids.len() == 2, "lavacli printed {out:?}");
    let group = ids[0].strip_suffix(".0").context("ID.0 first")?;
    ensure!(ids[1] == format!("{group}.1"), "{out}");
    // REST v0.2 answers the same shape.
    let body = serde_json::json!({ "definition": pair }).to_string();
    let (status, created) = rest(&lab, "POST", "/api/v0.2/jobs/", &alice, &body)?;
    ensure!(status == 201, "{status} {created}");
    let rest_ids = created["job_ids"].as_array().context("job_ids")?;
    ensure!(
        rest_ids.len() == 2
            && rest_ids[0].as_str().is_some_and(|s| s.ends_with(".0"))
            && rest_ids[1].as_str().is_some_and(|s| s.ends_with(".1")),
        "{created}"
    );
    for id in [
        group.to_owned(),
        created["job_ids"][0].as_str().unwrap_or("").to_owned(),
    ] {
        let canceled = lab.cli_as(&alice, &["job", "cancel", &id])?;
        expect_code(&canceled, 0)?;
    }
    Ok(())
}
