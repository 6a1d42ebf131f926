//! System tests of `dutlab console`: a person's view of (and typing on) the console of a
//! leased device. Real `dutlab serve`, a real agent with a QEMU device, the real CLI as each
//! user with its stdin a pipe the test writes, real QEMU booting the default guest image
//! (`login:` on ttyS0, `root` without a password, prompt `/root # `).

use anyhow::{Context, Result, ensure};
use client::stream::{Incoming, StreamSocket, Target};
use proto::PersonLeaseId;
use std::io::Write;
use std::time::{Duration, Instant};
use testkit::lab::Lab;
use testkit::{Finished, Spawned, expect_code};

const DUTLAB: &str = env!("CARGO_BIN_EXE_dutlab");
/// One answer of a busy 2-core machine.
const LIMIT: Duration = Duration::from_secs(60);
/// A DUT boots under TCG on a busy machine.
const BOOT_LIMIT: Duration = Duration::from_secs(240);

/// A lab with one QEMU device, `alice` holding it (powered on) and `bob`, another user.
struct Held {
    lab: Lab,
    alice: String,
    bob: String,
    lease: u64,
}

fn held_and_powered() -> Result<Held> {
    let mut lab = Lab::start(DUTLAB)?;
    lab.agent("a1", 1)?;
    let devices = lab.json(&["device", "list", "--json"])?;
    let dev = devices[0]["name"].as_str().context("a device")?.to_owned();
    let alice = lab.token("alice", "user")?;
    let bob = lab.token("bob", "user")?;
    let view = lab.json_as(
        &alice,
        &["lease", "acquire", "--device", &dev, "--wait", "--json"],
    )?;
    let lease = view["id"].as_u64().context("lease id")?;
    // No console before power-on: a clear refusal.
    let early = lab.cli_as(&alice, &["console", "--lease", &lease.to_string()])?;
    expect_code(&early, 70)?;
    ensure!(early.stderr.contains("not powered"), "{}", early.stderr);
    let on = lab.cli_as(&alice, &["power", "on", "--lease", &lease.to_string()])?;
    expect_code(&on, 0)?;
    Ok(Held {
        lab,
        alice,
        bob,
        lease,
    })
}

/// `dutlab console --lease ID ARGS` as `token` in the background, its stdin a pipe.
struct Console {
    process: Spawned,
    stdin: Option<std::io::PipeWriter>,
}

impl Console {
    fn start(held: &Held, token: &str, args: &[&str]) -> Result<Console> {
        let (reader, writer) = std::io::pipe()?;
        let mut cmd = held.lab.sandbox().command(DUTLAB)?;
        cmd.args(["console", "--lease", &held.lease.to_string()])
            .args(args)
            .env("DUTLAB_URL", held.lab.url())
            .env("DUTLAB_TOKEN", token)
            .env("XDG_CONFIG_HOME", held.lab.sandbox().path().join("config"))
            .stdin(reader);
        // `cmd` (and with it this process's copy of the pipe's read end) is gone after the
        // spawn, so closing `stdin` is an end of file for the CLI.
        let process = Spawned::start(cmd)?;
        Ok(Console {
            process,
            stdin: Some(writer),
        })
    }

    fn type_text(&mut self, text: &str) -> Result<()> {
        let stdin = self.stdin.as_mut().context("stdin closed")?;
        stdin.write_all(text.as_bytes())?;
        Ok(stdin.flush()?)
    }

    fn close_stdin(&mut self) {
        self.stdin = None;
    }

    fn finish(mut self, within: Duration) -> Result<Finished> {
        self.close_stdin();
        self.process.finish(within)
    }
}

/// Types `input` (then end of file) and waits for `until`: a script's use of the console.
fn type_until(held: &Held, input: &str, until: &str, timeout: Duration) -> Result<Finished> {
    let seconds = format!("{}s", timeout.as_secs());
    let mut c = Console::start(
        held,
        &held.alice,
        &["--write", "--until", until, "--timeout", &seconds],
    )?;
    c.type_text(input)?;
    c.finish(timeout + LIMIT)
}

/// Waits for the login prompt on the console, logs in as root, waits for the shell prompt.
fn log_in(held: &Held) -> Result<()> {
    let boot = held.lab.cli_as(
        &held.alice,
        &[
            "console",
            "--lease",
            &held.lease.to_string(),
            "--until",
            "login:",
            "--timeout",
            "4m",
        ],
    )?;
    expect_code(&boot, 0)?;
    let shell = type_until(held, "root\n", " # ", LIMIT)?;
    expect_code(&shell, 0)
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// A console stream opened with the client library (`write`: whether it asked to type).
async fn raw_console(held: &Held, write: bool) -> Result<StreamSocket> {
    let client = client::Client::new(&held.lab.url(), Some(held.alice.clone()))?;
    Ok(client
        .open_stream(PersonLeaseId(held.lease), Target::Console { write })
        .await?)
}

/// Reads `socket` until its bytes contain `needle`; answers all of them.
async fn read_until(socket: &mut StreamSocket, needle: &str, within: Duration) -> Result<String> {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let got = tokio::time::timeout(left, socket.next())
            .await
            .with_context(|| {
                format!(
                    "no {needle:?} within {within:?}; got {} bytes ending {:?}",
                    seen.len(),
                    String::from_utf8_lossy(&seen[seen.len().saturating_sub(300)..])
                )
            })?;
        let from = seen.len().saturating_sub(needle.len());
        match got {
            Incoming::Bytes(bytes) => seen.extend_from_slice(&bytes),
            other => anyhow::bail!("the stream ended before {needle:?}: {other:?}"),
        }
        if seen[from..]
            .windows(needle.len())
            .any(|w| w == needle.as_bytes())
        {
            return Ok(String::from_utf8_lossy(&seen).into_owned());
        }
    }
}

#[test]
fn the_holder_types_others_are_refused_viewers_only_watch_and_the_release_ends_it() -> Result<()> {
    let held = held_and_powered()?;
    let lease = held.lease.to_string();

    // (b) Another user: 403, exit 77, and not one console byte.
    let denied = held
        .lab
        .cli_as(&held.bob, &["console", "--lease", &lease, "--write"])?;
    expect_code(&denied, 77)?;
    ensure!(denied.stdout.is_empty(), "bob saw: {:?}", denied.stdout);
    let denied = held
        .lab
        .cli_as(&held.bob, &["console", "--lease", &lease])?;
    expect_code(&denied, 77)?;
    ensure!(denied.stdout.is_empty(), "bob saw: {:?}", denied.stdout);

    // (a) The holder, typing from a pipe: the login prompt, then a command and its output.
    let mut writer = Console::start(&held, &held.alice, &["--write"])?;
    writer.process.wait_for_stderr("console attached", LIMIT)?;
    writer.process.wait_for_stdout("login:", BOOT_LIMIT)?;
    writer.type_text("root\n")?;
    writer.process.wait_for_stdout(" # ", LIMIT)?;
    writer.type_text("echo marker-$((6*7))\n")?;
    writer.process.wait_for_stdout("marker-42", LIMIT)?;

    // (c) A read-only viewer (the holder without --write) sees the history, then live
    // output; what it types goes nowhere: the CLI does not send it ...
    let mut viewer = Console::start(&held, &held.alice, &[])?;
    viewer
        .process
        .wait_for_stderr("read-only; --write to type", LIMIT)?;
    viewer.process.wait_for_stdout("marker-42", LIMIT)?;
    viewer.type_text("echo viewer-$((5*5))\n")?;
    // ... and a read-only stream that sends anyway is not heard by the controller.
    let rt = runtime()?;
    let mut read_only = rt.block_on(async {
        let mut socket = raw_console(&held, false).await?;
        socket
            .send(b"echo socket-$((4*4))\n".to_vec())
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        anyhow::Ok(socket)
    })?;
    // Two of the writer's commands typed after those bytes were sent come back; had the
    // viewers' bytes reached the DUT they would have run first (one console, one queue).
    writer.type_text("echo after-$((7*7))\n")?;
    writer.process.wait_for_stdout("after-49", LIMIT)?;
    writer.type_text("echo again-$((8*8))\n")?;
    writer.process.wait_for_stdout("again-64", LIMIT)?;
    viewer.process.wait_for_stdout("again-64", LIMIT)?;
    let socket_saw = rt.block_on(read_until(&mut read_only, "again-64", LIMIT))?;
    for (who, text) in [
        ("the writer", writer.process.stdout_text()),
        ("the viewer", viewer.process.stdout_text()),
        ("the read-only socket", socket_saw),
    ] {
        ensure!(
            !text.contains("viewer-") && !text.contains("socket-"),
            "{who} shows a read-only viewer's input:\n{text}"
        );
    }

    // (d) Releasing the lease ends every open console: the CLIs exit, saying why, although
    // their stdin is still open.
    held.lab
        .json_as(&held.alice, &["lease", "release", &lease, "--json"])?;
    let writer_done = writer.process.finish(LIMIT)?;
    let viewer_done = viewer.process.finish(LIMIT)?;
    for done in [&writer_done, &viewer_done] {
        expect_code(done, 0)?;
        ensure!(
            done.stderr.contains(&format!("lease {lease} has ended")),
            "{}",
            done.stderr
        );
    }
    let socket_end = rt.block_on(async {
        loop {
            match tokio::time::timeout(LIMIT, read_only.next()).await? {
                Incoming::Bytes(_) | Incoming::Eof => continue,
                Incoming::End(end) => return anyhow::Ok(end),
            }
        }
    })?;
    ensure!(socket_end.to_string().contains("has ended"), "{socket_end}");
    // An ended lease has no console: 410, exit 70.
    let gone = held
        .lab
        .cli_as(&held.alice, &["console", "--lease", &lease])?;
    expect_code(&gone, 70)?;
    ensure!(gone.stderr.contains("ended"), "{}", gone.stderr);
    held.lab.finish()
}

#[test]
fn a_viewer_that_never_reads_slows_neither_the_console_nor_other_viewers() -> Result<()> {
    let held = held_and_powered()?;
    let lease = held.lease.to_string();
    log_in(&held)?;
    let rt = runtime()?;
    // (e) A viewer that stops reading at once.
    let mut stalled = rt.block_on(raw_console(&held, false))?;

    // More output than the console's history ring (1 MiB), the stream's window (1 MiB) and
    // the sockets' buffers on the way hold together: the stalled viewer falls behind.
    let flood = type_until(
        &held,
        "seq 1 1000000; echo flood-done-$((2*3))\n",
        "flood-done-6",
        Duration::from_secs(15 * 60),
    )?;
    expect_code(&flood, 0)?;
    ensure!(
        flood.stdout.len() > 6_000_000,
        "the flood was {} bytes",
        flood.stdout.len()
    );
    // Fresh output reaches the writer and a viewer that comes later, and the lease works.
    let fresh = type_until(&held, "echo fresh-$((8*8))\n", "fresh-64", LIMIT)?;
    expect_code(&fresh, 0)?;
    let later = held.lab.cli_as(
        &held.alice,
        &[
            "console",
            "--lease",
            &lease,
            "--until",
            "fresh-64",
            "--timeout",
            "2m",
        ],
    )?;
    expect_code(&later, 0)?;
    let status = held
        .lab
        .cli_as(&held.alice, &["power", "status", "--lease", &lease])?;
    expect_code(&status, 0)?;
    ensure!(status.stdout.trim() == "on", "{}", status.stdout);
    let renewed = held
        .lab
        .json_as(&held.alice, &["lease", "renew", &lease, "--json"])?;
    ensure!(renewed["state"] == "held", "{renewed}");

    // The stalled viewer is still attached; reading now, it is told what it missed, then
    // catches up with the live console.
    let caught_up = rt.block_on(read_until(&mut stalled, "fresh-64", LIMIT))?;
    ensure!(
        caught_up.contains("console bytes skipped]"),
        "no skip note in {} bytes",
        caught_up.len()
    );
    held.lab.finish()
}
