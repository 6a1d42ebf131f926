//! System tests of principals, visibility and queue quotas: a real `dutlab serve`, the real
//! CLI as client, raw WebSockets for the follow stream. No agent: jobs stay queued
//! (`--wait-for-device`), which is all reading and quotas need.

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use testkit::{Finished, expect_code, inline_job};
use tokio_tungstenite::tungstenite::{self, Message, client::IntoClientRequest};

const DUTLAB: &str = env!("CARGO_BIN_EXE_dutlab");
const LIMIT: Duration = Duration::from_secs(30);

/// The shared lab with this file's helpers.
struct Lab(testkit::lab::Lab);

impl std::ops::Deref for Lab {
    type Target = testkit::lab::Lab;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Lab {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Lab {
    fn start(serve_args: &[&str]) -> Result<Lab> {
        Ok(Lab(testkit::lab::Lab::start_with(DUTLAB, serve_args)?))
    }

    fn job_file(&self, name: &str, visibility: &str) -> Result<PathBuf> {
        self.write(
            &format!("{name}.yaml"),
            &format!(
                "visibility: {visibility}\n{}",
                inline_job(name, "  job: 5m", &["true"])
            ),
        )
    }

    fn submit_file(&self, token: &str, path: &Path) -> Result<Finished> {
        self.cli_as(
            token,
            &[
                "job",
                "submit",
                &path.display().to_string(),
                "--wait-for-device",
                "--json",
            ],
        )
    }

    fn submit(&self, token: &str, name: &str, visibility: &str) -> Result<u64> {
        let done = self.submit_file(token, &self.job_file(name, visibility)?)?;
        expect_code(&done, 0)?;
        let view: Value = serde_json::from_str(&done.stdout)?;
        view["id"].as_u64().context("job id")
    }

    /// Ids of the jobs `token` lists.
    fn listed(&self, token: &str) -> Result<Vec<u64>> {
        let list = self.json_as(token, &["job", "list", "--json"])?;
        let mut ids: Vec<u64> = list
            .as_array()
            .context("a list")?
            .iter()
            .filter_map(|j| j["id"].as_u64())
            .collect();
        ids.sort_unstable();
        Ok(ids)
    }

    /// The first message of the follow stream, or the refusal of its handshake.
    fn follow(&self, token: &str, job: u64) -> Result<Followed> {
        let path = format!("/api/v1/jobs/{job}/logs/follow");
        let url = format!("ws://127.0.0.1:{}{path}", self.port());
        let mut request = url.as_str().into_client_request()?;
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse()?);
        let tcp = TcpStream::connect(("127.0.0.1", self.port()))?;
        tcp.set_read_timeout(Some(Duration::from_millis(100)))?;
        let mut ws = match tungstenite::client::client(request, tcp) {
            Ok((ws, _)) => ws,
            Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(response))) => {
                return Ok(Followed::Refused(response.status().as_u16()));
            }
            Err(e) => bail!("follow {path}: {e}"),
        };
        let deadline = Instant::now() + LIMIT;
        loop {
            match ws.read() {
                Ok(Message::Text(text)) => {
                    return Ok(Followed::Event(serde_json::from_str(text.as_str())?));
                }
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => bail!("follow {path}: {e}"),
            }
            if Instant::now() > deadline {
                bail!("follow {path}: nothing within {LIMIT:?}");
            }
        }
    }

    fn finish(self) -> Result<()> {
        self.0.finish()
    }
}

#[derive(Debug)]
enum Followed {
    Event(Value),
    Refused(u16),
}

/// Every read path of one job as `token`: show, definition is not a CLI command, so show,
/// logs, results, follow, and whether the list has it. Ok(true) when all allowed it,
/// Ok(false) when all refused it; an error when they disagree.
fn reads(lab: &Lab, token: &str, job: u64) -> Result<bool> {
    let id = job.to_string();
    let show = lab.cli_as(token, &["job", "show", &id])?.code();
    let logs = lab.cli_as(token, &["job", "logs", &id])?.code();
    // A queued job has no results yet: 75 is "readable, not finished".
    let results = lab.cli_as(token, &["job", "results", &id])?.code();
    let follow = lab.follow(token, job)?;
    let listed = lab.listed(token)?.contains(&job);
    match (show, logs, results, &follow, listed) {
        (Some(0), Some(0), Some(75), Followed::Event(e), true) => {
            ensure!(
                e["type"] == "job" && e["job"]["id"] == job,
                "follow sent {e}"
            );
            Ok(true)
        }
        (Some(77), Some(77), Some(77), Followed::Refused(403), false) => Ok(false),
        other => bail!("read paths disagree about job {job}: {other:?}"),
    }
}

#[test]
fn tokens_with_the_same_name_of_different_users_do_not_share_jobs() -> Result<()> {
    let lab = Lab::start(&[])?;
    // Two users, each with a token called "ci"; and a second token of alice.
    let alice_ci = lab.user_token("ci", "user", "alice")?;
    let bob_ci = lab.user_token("ci", "user", "bob")?;
    let alice_laptop = lab.user_token("laptop", "user", "alice")?;
    let job = lab.submit(&alice_ci, "secret", "personal")?;
    ensure!(reads(&lab, &alice_ci, job)?, "the owner reads her job");
    ensure!(
        reads(&lab, &alice_laptop, job)?,
        "another token of the same user reads it"
    );
    ensure!(
        !reads(&lab, &bob_ci, job)?,
        "a token with the same name of another user reads nothing"
    );
    expect_code(
        &lab.cli_as(&bob_ci, &["job", "cancel", &job.to_string()])?,
        77,
    )?;
    let view = lab.json_as(lab.admin(), &["job", "show", &job.to_string(), "--json"])?;
    ensure!(view["owner"] == "alice", "owner is the user: {view}");
    let whoami_ids: Vec<Value> = lab
        .json_as(lab.admin(), &["token", "list", "--json"])?
        .as_array()
        .context("tokens")?
        .iter()
        .filter(|t| t["name"] == "ci")
        .map(|t| t["principal"].clone())
        .collect();
    ensure!(
        whoami_ids.len() == 2 && whoami_ids[0] != whoami_ids[1],
        "two users: {whoami_ids:?}"
    );
    // Revoking one token and making a new one for the same user keeps the jobs.
    let fresh = lab.user_token("ci-2", "user", "alice")?;
    ensure!(
        reads(&lab, &fresh, job)?,
        "a re-created token keeps the jobs"
    );
    expect_code(
        &lab.cli_as(&fresh, &["job", "cancel", &job.to_string()])?,
        0,
    )?;
    lab.finish()
}

#[test]
fn group_jobs_are_read_by_members_only_on_every_read_path() -> Result<()> {
    let lab = Lab::start(&[])?;
    let owner = lab.token("olga", "user")?;
    let member = lab.token("mia", "user")?;
    let outsider = lab.token("otto", "user")?;
    expect_code(
        &lab.cli_as(lab.admin(), &["user", "add-group", "mia", "kernel"])?,
        0,
    )?;
    expect_code(
        &lab.cli_as(lab.admin(), &["user", "add-group", "otto", "docs"])?,
        0,
    )?;
    let users = lab.json_as(lab.admin(), &["user", "list", "--json"])?;
    let mia = users
        .as_array()
        .and_then(|u| u.iter().find(|u| u["name"] == "mia"))
        .context("mia listed")?;
    ensure!(mia["groups"] == serde_json::json!(["kernel"]), "{users}");
    let job = lab.submit(&owner, "shared", "{group: [qa, kernel]}")?;
    ensure!(reads(&lab, &owner, job)?, "the owner reads it");
    ensure!(reads(&lab, &member, job)?, "a member of kernel reads it");
    ensure!(!reads(&lab, &outsider, job)?, "a member of docs does not");
    // Members read, they do not cancel.
    let done = lab.cli_as(&member, &["job", "cancel", &job.to_string()])?;
    expect_code(&done, 77)?;
    ensure!(
        done.stderr.contains("only its owner or an admin"),
        "{}",
        done.stderr
    );
    // Membership is decided at each request: leaving the group ends reading.
    expect_code(
        &lab.cli_as(lab.admin(), &["user", "remove-group", "mia", "kernel"])?,
        0,
    )?;
    ensure!(!reads(&lab, &member, job)?, "a former member reads nothing");
    // A bad group name is refused at submit, naming the field.
    let done = lab.submit_file(&owner, &lab.job_file("bad", "{group: ['a b']}")?)?;
    expect_code(&done, 4)?;
    ensure!(done.stderr.contains("visibility.group"), "{}", done.stderr);
    lab.finish()
}

#[test]
fn over_quota_submissions_get_429_and_leave_the_queue_unchanged() -> Result<()> {
    let lab = Lab::start(&[
        "--quota-queued-jobs",
        "2",
        "--quota-job-bytes",
        "4096",
        "--quota-queued-bytes",
        "6000",
    ])?;
    let alice = lab.token("alice", "user")?;
    let bob = lab.token("bob", "user")?;
    let first = lab.submit(&alice, "one", "public")?;
    lab.submit(&alice, "two", "public")?;
    let before = lab.listed(lab.admin())?;
    let done = lab.submit_file(&alice, &lab.job_file("three", "public")?)?;
    expect_code(&done, 75)?;
    for part in [
        "429",
        "quota queued-jobs",
        "2 of at most 2",
        "--quota-queued-jobs",
    ] {
        ensure!(
            done.stderr.contains(part),
            "{part:?} not in {}",
            done.stderr
        );
    }
    ensure!(lab.listed(lab.admin())? == before, "the queue changed");
    // Other users are not affected; admins are exempt.
    lab.submit(&bob, "bobs", "public")?;
    lab.submit(lab.admin(), "admins", "public")?;
    // A finished job frees its place.
    expect_code(
        &lab.cli_as(&alice, &["job", "cancel", &first.to_string()])?,
        0,
    )?;
    testkit::wait_until("the canceled job finishes", LIMIT, || {
        let view = lab.json_as(&alice, &["job", "show", &first.to_string(), "--json"])?;
        Ok((view["state"] == "finished").then_some(()))
    })?;
    lab.submit(&alice, "three", "public")?;
    // Bytes: one job larger than the per-job limit.
    let padding = format!("# {}\n", "x".repeat(5000));
    let big = lab.write(
        "big.yaml",
        &format!("{padding}{}", inline_job("big", "  job: 5m", &["true"])),
    )?;
    let before = lab.listed(lab.admin())?;
    let done = lab.submit_file(&bob, &big)?;
    expect_code(&done, 75)?;
    ensure!(
        done.stderr.contains("quota job-definition-bytes") && done.stderr.contains("4096"),
        "{}",
        done.stderr
    );
    // Bytes: the queued total (carol holds nothing; two 3600-byte jobs pass 6000, and two
    // jobs are within the job count).
    let carol = lab.token("carol", "user")?;
    let mid = format!("# {}\n", "y".repeat(3200));
    let medium = lab.write(
        "medium.yaml",
        &format!("{mid}{}", inline_job("medium", "  job: 5m", &["true"])),
    )?;
    let done = lab.submit_file(&carol, &medium)?;
    expect_code(&done, 0)?;
    let after_one = lab.listed(lab.admin())?;
    let done = lab.submit_file(&carol, &medium)?;
    expect_code(&done, 75)?;
    ensure!(
        done.stderr.contains("quota queued-definition-bytes"),
        "{}",
        done.stderr
    );
    ensure!(lab.listed(lab.admin())? == after_one, "the queue changed");
    ensure!(
        after_one.len() == before.len() + 1,
        "{after_one:?} {before:?}"
    );
    lab.finish()
}

#[test]
fn a_version_2_database_keeps_its_owners() -> Result<()> {
    let mut lab = Lab::start(&[])?;
    let alice = lab.token("alice", "user")?;
    let bob = lab.token("bob", "user")?;
    let private = lab.submit(&alice, "private", "personal")?;
    let public = lab.submit(&bob, "open", "public")?;
    lab.stop_controller()?;
    // Turn the database back into what a schema-2 controller left: no principals, owners and
    // tokens by name only, no tables of relayed agent links (schema 7, altered by 10).
    let db = lab.data_dir().join("dutlab.db");
    let script = "ALTER TABLE tokens DROP COLUMN principal;
        ALTER TABLE jobs DROP COLUMN owner_id;
        DROP TABLE principals;
        DROP TABLE memberships;
        DROP TABLE agent_links;
        DROP TABLE agent_outbox;
        UPDATE meta SET value = '2' WHERE key = 'schema';";
    let out = std::process::Command::new("sqlite3")
        .arg(&db)
        .arg(script)
        .output()
        .context("sqlite3 (the sqlite3 command-line tool) must be installed")?;
    ensure!(
        out.status.success(),
        "sqlite3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    lab.serve()?;
    let log = lab
        .controller()
        .map(|c| c.stderr_text())
        .unwrap_or_default();
    ensure!(log.contains("schema migrated to version 3"), "{log}");
    // The old tokens work, and speak for the users their names became.
    ensure!(lab.listed(&alice)? == vec![private, public], "alice lists");
    ensure!(lab.listed(&bob)? == vec![public], "bob lists");
    ensure!(!reads(&lab, &bob, private)?, "bob reads alice's job");
    let view = lab.json_as(&alice, &["job", "show", &private.to_string(), "--json"])?;
    ensure!(view["owner"] == "alice", "{view}");
    // Names became users: alice's new token finds her jobs.
    let again = lab.user_token("alice-2", "user", "alice")?;
    ensure!(
        reads(&lab, &again, private)?,
        "a new token of alice reads them"
    );
    expect_code(
        &lab.cli_as(&again, &["job", "cancel", &private.to_string()])?,
        0,
    )?;
    lab.finish()
}
