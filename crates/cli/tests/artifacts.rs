//! System tests of artifacts: a job's local files travel with `dutlab job submit` to a real
//! `dutlab serve` and a real `dutlab agent`, and only those who may use an artifact get it.

use anyhow::{Context, Result, ensure};

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;
use testkit::lab::Lab;
use testkit::{Spawned, expect_code, wait_until};

const DUTLAB: &str = env!("CARGO_BIN_EXE_dutlab");
const JOB_LIMIT: std::time::Duration = testkit::lab::CLI_LIMIT;

fn sha256(data: &[u8]) -> Result<String> {
    let mut child = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    child.stdin.take().context("stdin")?.write_all(data)?;
    let out = child.wait_with_output()?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .context("sha256sum output")?
        .to_owned())
}

fn git(dir: &Path, args: &[&str]) -> Result<()> {
    let status = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=t", "-c", "user.email=t@example.org"])
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()?;
    ensure!(status.success(), "git {args:?} failed");
    Ok(())
}

/// A job directory as a user has it: images next to the job file, named relatively, and a
/// local git repository of test definitions.
fn job_dir(root: &Path) -> Result<PathBuf> {
    let image = testkit::guest_image()?;
    let dir = root.join("myjob");
    std::fs::create_dir_all(dir.join("images"))?;
    for f in ["vmlinuz", "initramfs.cpio.gz", "rootfs.qcow2"] {
        std::fs::copy(image.join(f), dir.join("images").join(f))?;
    }
    let repo = dir.join("tests");
    std::fs::create_dir_all(&repo)?;
    git(&repo, &["init", "-q"])?;
    std::fs::write(
        repo.join("smoke.yaml"),
        "metadata: {format: Lava-Test Test Definition 1.0, name: smoke}\n\
         run:\n  steps:\n  - lava-test-case from-bundle --shell test -r /mnt/rootfs/etc/dutlab-rootfs\n",
    )?;
    git(&repo, &["add", "smoke.yaml"])?;
    git(&repo, &["commit", "-q", "-m", "smoke"])?;
    std::fs::write(
        dir.join("job.yaml"),
        "job_name: relative\ndevice_type: qemu\ntimeouts: {job: {minutes: 4}}\nactions:\n\
         - deploy:\n    to: tmpfs\n    images:\n\
         \x20     kernel: {url: images/vmlinuz}\n\
         \x20     initrd: {url: ./images/initramfs.cpio.gz}\n\
         \x20     rootfs: {url: images/rootfs.qcow2, format: qcow2}\n\
         - boot: {method: qemu, prompts: ['# $'], auto_login: {login_prompt: 'login:', username: root}}\n\
         - test:\n    definitions:\n    - {from: git, repository: tests, path: smoke.yaml, name: smoke}\n",
    )?;
    Ok(dir)
}

#[test]
fn a_job_with_relative_paths_and_a_local_repository_runs_locally_and_in_the_lab() -> Result<()> {
    let mut lab = Lab::start(DUTLAB)?;
    let dir = job_dir(lab.sandbox().path())?;
    let job = dir.join("job.yaml");
    let job_arg = job.display().to_string();

    // Locally: paths resolve against the job file's directory.
    let mut cmd = lab.sandbox().command(DUTLAB)?;
    cmd.args(["run", &job_arg]);
    let done = Spawned::start(cmd)?.finish(JOB_LIMIT)?;
    expect_code(&done, 0)?;
    ensure!(done.stdout.contains("from-bundle"), "{}", done.stdout);

    let work = lab.agent("host-a", 1)?;
    let user = lab.token("alice", "user")?;
    let stored = lab.data_dir().join("artifacts/sha256");

    // --dry-run lists the three images and the bundle, and sends nothing.
    let done = lab.cli_as(&user, &["job", "submit", &job_arg, "--dry-run"])?;
    expect_code(&done, 0)?;
    for field in [
        "actions[0].deploy.images.kernel.url",
        "actions[0].deploy.images.initrd.url",
        "actions[0].deploy.images.rootfs.url",
        "actions[2].test.definitions[0].repository: git bundle of",
    ] {
        ensure!(
            done.stdout.contains(field),
            "{field} not listed:\n{}",
            done.stdout
        );
    }
    ensure!(
        std::fs::read_dir(&stored)?.next().is_none(),
        "--dry-run uploaded something"
    );
    let jobs = lab.json_as(&user, &["job", "list", "--json"])?;
    ensure!(jobs.as_array().is_some_and(Vec::is_empty), "{jobs}");

    // The same file through the lab: everything is uploaded once, fetched by the agent.
    let done = lab.cli_as(&user, &["job", "submit", &job_arg, "--follow"])?;
    expect_code(&done, 0)?;
    ensure!(
        done.stderr.matches("dutlab: uploading").count() == 4,
        "{}",
        done.stderr
    );
    ensure!(std::fs::read_dir(&stored)?.count() == 4);
    let first = lab.json_as(&user, &["job", "list", "--json"])?[0]["id"]
        .as_u64()
        .context("id")?;
    let log = lab.log_text(first)?;
    ensure!(log.matches(": fetched ").count() == 4, "{log}");
    ensure!(log.contains("from-bundle"), "{log}");

    // Again: nothing is uploaded (HEAD hits) and nothing is fetched (the cache hits).
    let done = lab.cli_as(&user, &["job", "submit", &job_arg, "--follow"])?;
    expect_code(&done, 0)?;
    ensure!(
        !done.stderr.contains("dutlab: uploading"),
        "{}",
        done.stderr
    );
    ensure!(
        done.stderr.matches("in the lab already").count() == 4,
        "{}",
        done.stderr
    );
    let second = lab.json_as(&user, &["job", "list", "--json"])?[0]["id"]
        .as_u64()
        .context("id")?;
    let log = lab.log_text(second)?;
    ensure!(log.matches("from the agent's cache").count() == 4, "{log}");
    ensure!(!log.contains(": fetched "), "{log}");

    // A corrupted cache entry is noticed and fetched again.
    let kernel_sha = sha256(&std::fs::read(dir.join("images/vmlinuz"))?)?;
    let cached = work.join("cache/sha256").join(&kernel_sha);
    let mut bytes = std::fs::read(&cached)?;
    bytes[1000] ^= 0xff;
    std::fs::write(&cached, &bytes)?;
    let done = lab.cli_as(&user, &["job", "submit", &job_arg, "--follow"])?;
    expect_code(&done, 0)?;
    let third = lab.json_as(&user, &["job", "list", "--json"])?[0]["id"]
        .as_u64()
        .context("id")?;
    let log = lab.log_text(third)?;
    ensure!(
        log.contains(&format!(
            "artifact sha256:{kernel_sha}: the cached copy was corrupt"
        )),
        "{log}"
    );
    ensure!(sha256(&std::fs::read(&cached)?)? == kernel_sha);
    lab.finish()
}

#[test]
fn artifacts_are_only_for_those_who_may_use_them() -> Result<()> {
    let lab = Lab::start_with(DUTLAB, &["--max-artifact-bytes", "4096"])?;
    let alice = lab.token("alice", "user")?;
    let bob = lab.token("bob", "user")?;
    let agent = lab.token("host-x", "agent")?;
    let private = b"alice's private kernel".to_vec();
    let public = b"alice's public kernel".to_vec();
    let (p, q) = (sha256(&private)?, sha256(&public)?);
    let at = |hex: &str| format!("/api/v1/artifacts/sha256/{hex}");

    // Uploads are verified and capped.
    let (status, _) = lab.http("PUT", &at(&p), &alice, b"other bytes")?;
    ensure!(status == 400, "a body with another hash: {status}");
    let big = vec![7u8; 5000];
    let (status, _) = lab.http_declaring("PUT", &at(&sha256(&big)?), &alice, b"", big.len())?;
    ensure!(
        status == 413,
        "over the cap by its Content-Length: {status}"
    );
    ensure!(
        std::fs::read_dir(lab.data_dir().join("artifacts/tmp"))?
            .next()
            .is_none(),
        "a refused upload left a file"
    );
    for (hex, body) in [(&p, &private), (&q, &public)] {
        let (status, _) = lab.http("PUT", &at(hex), &alice, body)?;
        ensure!(status == 201, "upload: {status}");
    }
    let (status, body) = lab.http("GET", &at(&p), &alice, b"")?;
    ensure!(
        status == 200 && body == private,
        "the uploader reads it: {status}"
    );

    // The hash alone grants nothing.
    for method in ["HEAD", "GET"] {
        let (status, _) = lab.http(method, &at(&p), &bob, b"")?;
        ensure!(status == 404, "{method} by another user: {status}");
    }
    let job = |name: &str, hex: &str, visibility: &str| {
        format!(
            "job_name: {name}\ndevice_type: qemu\nvisibility: {visibility}\nactions:\n\
             - deploy:\n    to: tmpfs\n    images:\n      kernel: {{url: 'artifact:sha256:{hex}'}}\n\
             - boot: {{method: qemu, prompts: ['# $']}}\n"
        )
    };
    let bobs = lab.sandbox().path().join("bob.yaml");
    std::fs::write(&bobs, job("bobs", &p, "public"))?;
    let done = lab.cli_as(
        &bob,
        &[
            "job",
            "submit",
            &bobs.display().to_string(),
            "--wait-for-device",
        ],
    )?;
    expect_code(&done, 4)?;
    ensure!(
        done.stderr.contains("actions[0].deploy.images.kernel.url")
            && done.stderr.contains("not yours to use"),
        "{}",
        done.stderr
    );

    // A private job keeps its artifact private; a public job shares its artifact with readers.
    for (name, hex, visibility) in [("secret", &p, "personal"), ("open", &q, "public")] {
        let file = lab.sandbox().path().join(format!("{name}.yaml"));
        std::fs::write(&file, job(name, hex, visibility))?;
        let view = lab.json_as(
            &alice,
            &[
                "job",
                "submit",
                &file.display().to_string(),
                "--wait-for-device",
                "--json",
            ],
        )?;
        ensure!(view["state"] == "queued", "{view}");
    }
    let (status, _) = lab.http("GET", &at(&p), &bob, b"")?;
    ensure!(
        status == 404,
        "another user's private job's artifact: {status}"
    );
    let (status, body) = lab.http("GET", &at(&q), &bob, b"")?;
    ensure!(
        status == 200 && body == public,
        "a public job's artifact: {status}"
    );

    // An agent reads an artifact only for a job it runs: this one runs none.
    let jobs = lab.json_as(&alice, &["job", "list", "--json"])?;
    let secret = jobs
        .as_array()
        .context("jobs")?
        .iter()
        .find(|j| j["name"] == "secret")
        .and_then(|j| j["id"].as_u64())
        .context("secret job")?;
    let (status, _) = lab.http("GET", &format!("{}?job={secret}", at(&p)), &agent, b"")?;
    ensure!(
        status == 403,
        "an agent that does not run the job: {status}"
    );
    let (status, _) = lab.http("GET", &at(&p), &agent, b"")?;
    ensure!(status == 400, "an agent naming no job: {status}");

    // Uploading the bytes proves possession: then bob may use it too.
    let (status, _) = lab.http("PUT", &at(&p), &bob, &private)?;
    ensure!(status == 200, "a second upload of stored bytes: {status}");
    let (status, _) = lab.http("HEAD", &at(&p), &bob, b"")?;
    ensure!(status == 200, "after uploading it: {status}");
    lab.finish()
}

/// A request with a chunked body (no `Content-Length`): (status, body).
fn chunked(lab: &Lab, path: &str, token: &str, body: &[u8]) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", lab.port()))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        stream,
        "PUT {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
    )?;
    for piece in body.chunks(1000) {
        write!(stream, "{:x}\r\n", piece.len())?;
        stream.write_all(piece)?;
        stream.write_all(b"\r\n")?;
    }
    // The server may answer (and close) as soon as the stream passes the quota.
    let _ = stream.write_all(b"0\r\n\r\n");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("status in {text}"))?;
    Ok((status, text))
}

#[test]
fn an_upload_past_the_users_artifact_quota_is_429_naming_quota_and_usage() -> Result<()> {
    let lab = Lab::start_with(DUTLAB, &["--artifact-quota-bytes", "10000"])?;
    let alice = lab.token("alice", "user")?;
    let bob = lab.token("bob", "user")?;
    let at = |hex: &str| format!("/api/v1/artifacts/sha256/{hex}");
    let first = vec![1u8; 6000];
    let second = vec![2u8; 6000];
    let (h1, h2) = (sha256(&first)?, sha256(&second)?);

    let (status, _) = lab.http("PUT", &at(&h1), &alice, &first)?;
    ensure!(status == 201, "within the quota: {status}");
    // Refused by its Content-Length, before the body is read.
    let (status, body) = lab.http_declaring("PUT", &at(&h2), &alice, b"", second.len())?;
    let body = String::from_utf8_lossy(&body).into_owned();
    ensure!(
        status == 429,
        "past the quota by Content-Length: {status} {body}"
    );
    for part in [
        "alice stores 6000 bytes",
        "upload of 6000 bytes would make 12000",
        "quota of 10000 bytes per user",
        "--artifact-quota-bytes",
    ] {
        ensure!(body.contains(part), "{part:?} not in {body}");
    }
    // Refused while streaming when no length is declared.
    let (status, text) = chunked(&lab, &at(&h2), &alice, &second)?;
    ensure!(status == 429, "past the quota while streaming: {text}");
    ensure!(text.contains("quota of 10000 bytes"), "{text}");
    ensure!(
        std::fs::read_dir(lab.data_dir().join("artifacts/tmp"))?
            .next()
            .is_none(),
        "a refused upload left a file"
    );
    ensure!(!lab.data_dir().join("artifacts/sha256").join(&h2).exists());
    // What alice has already costs nothing again; another user has a quota of their own.
    let (status, _) = lab.http("PUT", &at(&h1), &alice, &first)?;
    ensure!(status == 200, "alice's own artifact again: {status}");
    let (status, _) = lab.http("PUT", &at(&h2), &bob, &second)?;
    ensure!(status == 201, "bob within his quota: {status}");
    // Stored bytes count for each user who uploaded them: bob takes alice's into his usage.
    let (status, body) = lab.http("PUT", &at(&h1), &bob, &first)?;
    ensure!(
        status == 429 && String::from_utf8_lossy(&body).contains("bob stores 6000 bytes"),
        "bob past his quota with bytes alice stored: {status}"
    );

    // The CLI says so and exits 75 (over a quota), submitting nothing.
    let dir = lab.sandbox().path().join("quota-job");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("big.img"), vec![3u8; 6000])?;
    std::fs::write(
        dir.join("job.yaml"),
        "job_name: over\ndevice_type: qemu\nactions:\n\
         - deploy:\n    to: tmpfs\n    images:\n      kernel: {url: big.img}\n\
         - boot: {method: qemu, prompts: ['# $']}\n",
    )?;
    let job = dir.join("job.yaml").display().to_string();
    let done = lab.cli_as(&alice, &["job", "submit", &job, "--wait-for-device"])?;
    expect_code(&done, 75)?;
    ensure!(
        done.stderr.contains("429")
            && done.stderr.contains("alice stores 6000 bytes")
            && done.stderr.contains("quota of 10000 bytes"),
        "{}",
        done.stderr
    );
    let jobs = lab.json_as(&alice, &["job", "list", "--json"])?;
    ensure!(jobs.as_array().is_some_and(Vec::is_empty), "{jobs}");
    lab.finish()
}

#[test]
fn only_the_agent_whose_link_runs_the_job_fetches_its_artifacts() -> Result<()> {
    let mut lab = Lab::start(DUTLAB)?;
    lab.agent("host-a", 1)?;
    let user = lab.token("alice", "user")?;
    let dir = lab.sandbox().path().join("waiting");
    std::fs::create_dir_all(dir.join("images"))?;
    let image = testkit::guest_image()?;
    for f in ["vmlinuz", "initramfs.cpio.gz", "rootfs.qcow2"] {
        std::fs::copy(image.join(f), dir.join("images").join(f))?;
    }
    std::fs::write(
        dir.join("job.yaml"),
        "job_name: waiting\ndevice_type: qemu\nvisibility: personal\ntimeouts: {job: {minutes: 4}}\nactions:\n\
         - deploy:\n    to: tmpfs\n    images:\n\
         \x20     kernel: {url: images/vmlinuz}\n\
         \x20     initrd: {url: images/initramfs.cpio.gz}\n\
         \x20     rootfs: {url: images/rootfs.qcow2, format: qcow2}\n\
         - boot: {method: qemu, prompts: ['# $'], auto_login: {login_prompt: 'login:', username: root}}\n\
         - test:\n    definitions:\n    - from: inline\n      name: t\n      path: inline/t.yaml\n      repository:\n\
         \x20       metadata: {format: Lava-Test Test Definition 1.0, name: t}\n        run:\n          steps:\n          - 'sleep 600'\n",
    )?;
    let view = lab.json_as(
        &user,
        &[
            "job",
            "submit",
            &dir.join("job.yaml").display().to_string(),
            "--json",
        ],
    )?;
    let id = view["id"].as_u64().context("id")?;
    let log = || lab.log_text(id);
    wait_until("the agent fetched the job's artifacts", JOB_LIMIT, || {
        Ok((log()?.matches(": fetched ").count() == 3).then_some(()))
    })?;
    let kernel = sha256(&std::fs::read(dir.join("images/vmlinuz"))?)?;
    let path = format!("/api/v1/artifacts/sha256/{kernel}?job={id}");

    // The token of the agent running the job may fetch it (its link holds the lease) ...
    let host_a = std::fs::read_to_string(lab.sandbox().path().join("host-a/token"))?;
    let (status, body) = lab.http("GET", &path, host_a.trim(), b"")?;
    ensure!(
        status == 200 && body == std::fs::read(dir.join("images/vmlinuz"))?,
        "the running agent: {status}"
    );
    // ... another agent's token may not, with or without a link of its own.
    let other = lab.token("host-c", "agent")?;
    let (status, body) = lab.http("GET", &path, &other, b"")?;
    ensure!(
        status == 403 && String::from_utf8_lossy(&body).contains(&format!("runs no job {id}")),
        "another agent's token: {status}"
    );
    lab.agent("host-b", 1)?;
    let host_b = std::fs::read_to_string(lab.sandbox().path().join("host-b/token"))?;
    let (status, _) = lab.http("GET", &path, host_b.trim(), b"")?;
    ensure!(status == 403, "another connected agent: {status}");
    // A second token bound to host-a but holding no link is not the link holding the lease.
    let done = lab.cli_as(
        lab.admin(),
        &[
            "token", "create", "--name", "host-a-2", "--role", "agent", "--agent", "host-a",
        ],
    )?;
    expect_code(&done, 0)?;
    let (status, _) = lab.http("GET", &path, done.stdout.trim(), b"")?;
    ensure!(
        status == 403,
        "a token of host-a without the link: {status}"
    );
    // A user reads it through the job (theirs); the job's artifact is not another user's.
    let (status, _) = lab.http(
        "GET",
        &format!("/api/v1/artifacts/sha256/{kernel}"),
        &user,
        b"",
    )?;
    ensure!(status == 200, "the job's owner: {status}");
    let bob = lab.token("bob", "user")?;
    let (status, _) = lab.http(
        "GET",
        &format!("/api/v1/artifacts/sha256/{kernel}"),
        &bob,
        b"",
    )?;
    ensure!(status == 404, "another user, personal job: {status}");

    let done = lab.cli_as(&user, &["job", "cancel", &id.to_string()])?;
    expect_code(&done, 0)?;
    wait_until("the job ended", JOB_LIMIT, || {
        let view = lab.json_as(&user, &["job", "show", &id.to_string(), "--json"])?;
        Ok((view["state"] == "finished").then_some(()))
    })?;
    lab.finish()
}
