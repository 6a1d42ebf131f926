//! System tests of the Leviathan-compatible worker routes (`/dut/...`): a real `dutlab
//! serve`, a real agent with a QEMU device that has video, real QEMU, plain HTTP requests as
//! Leviathan's client makes them, with each user's bearer token.

use anyhow::{Context, Result, ensure};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use testkit::lab::Lab;
use testkit::wait_until;

const DUTLAB: &str = env!("CARGO_BIN_EXE_dutlab");
/// A DUT boots under TCG on a busy machine.
const BOOT_LIMIT: Duration = Duration::from_secs(240);

/// One HTTP/1.1 request; answers (status, body with chunked framing removed).
fn http(
    lab: &Lab,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect(("127.0.0.1", lab.port()))?;
    stream.set_read_timeout(Some(BOOT_LIMIT))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of headers")?;
    let head = String::from_utf8_lossy(&answer[..split]).to_ascii_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status in {head:?}"))?;
    let mut body = answer[split + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        body = dechunk(&body)?;
    }
    Ok((status, body))
}

fn dechunk(mut raw: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let end = raw
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("chunk size line")?;
        let size = usize::from_str_radix(std::str::from_utf8(&raw[..end])?.trim(), 16)?;
        raw = &raw[end + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(raw.get(..size).context("short chunk")?);
        raw = &raw[size + 2..];
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// A lab with one agent whose one device has video; answers the device's name.
fn lab_with_video_device() -> Result<(Lab, String)> {
    let mut lab = Lab::start(DUTLAB)?;
    let config = lab.agent_config("a1", 1)?;
    let text = std::fs::read_to_string(&config)?;
    let plain = "qemu: {accel: tcg, memory_mib: 512}";
    ensure!(text.contains(plain), "agent init wrote: {text}");
    std::fs::write(
        &config,
        text.replacen(plain, "qemu: {accel: tcg, memory_mib: 512, video: vga}", 1),
    )?;
    lab.spawn_agent(&config)?;
    lab.wait_devices_idle("a1", 1)?;
    Ok((lab, "a1-qemu-01".to_owned()))
}

fn text(body: &[u8]) -> String {
    String::from_utf8_lossy(body).into_owned()
}

#[test]
fn worker_routes_drive_the_callers_lease_and_refuse_everyone_else() -> Result<()> {
    let (lab, dev) = lab_with_video_device()?;
    let alice = lab.token("alice", "user")?;
    let bob = lab.token("bob", "user")?;
    let (alice_auth, bob_auth) = (bearer(&alice), bearer(&bob));

    // Without a token nothing is said at all.
    let (status, _) = http(&lab, "POST", "/dut/on", &[], b"")?;
    ensure!(status == 401, "no token: {status}");
    // A user holding nothing is told so.
    let (status, body) = http(
        &lab,
        "POST",
        "/dut/on",
        &[("Authorization", &alice_auth)],
        b"",
    )?;
    ensure!(
        status == 404 && text(&body).contains("holds no lease"),
        "{status} {}",
        text(&body)
    );

    let view = lab.json_as(
        &alice,
        &["lease", "acquire", "--device", &dev, "--wait", "--json"],
    )?;
    let id = view["id"].as_u64().context("id")?;
    let named = format!("?lease={id}");

    // Someone else's lease: 403, by query or by header, and the DUT stays off.
    let (status, _) = http(
        &lab,
        "POST",
        &format!("/dut/on{named}"),
        &[("Authorization", &bob_auth)],
        b"",
    )?;
    ensure!(status == 403, "bob by query: {status}");
    let (status, _) = http(
        &lab,
        "GET",
        "/dut/capture",
        &[
            ("Authorization", &bob_auth),
            ("X-Dutlab-Lease", &id.to_string()),
        ],
        b"",
    )?;
    ensure!(status == 403, "bob by header: {status}");
    let (status, _) = http(
        &lab,
        "POST",
        &format!("/dut/flash{named}"),
        &[("Authorization", &bob_auth)],
        b"not an image",
    )?;
    ensure!(status == 403, "bob flashing: {status}");
    let power = lab.json_as(
        &alice,
        &["power", "status", "--lease", &id.to_string(), "--json"],
    )?;
    ensure!(power["state"] == "off", "{power}");
    // Two different leases named at once are refused.
    let (status, _) = http(
        &lab,
        "POST",
        &format!("/dut/on{named}"),
        &[("Authorization", &alice_auth), ("X-Dutlab-Lease", "999")],
        b"",
    )?;
    ensure!(status == 400, "query and header disagree: {status}");

    // The holder's only lease is the one meant when none is named.
    let (status, body) = http(
        &lab,
        "POST",
        "/dut/on",
        &[("Authorization", &alice_auth)],
        b"",
    )?;
    ensure!(
        status == 200 && text(&body) == "OK",
        "{status} {}",
        text(&body)
    );
    let power = lab.json_as(
        &alice,
        &["power", "status", "--lease", &id.to_string(), "--json"],
    )?;
    ensure!(
        power["state"] == "on" && power["device"] == dev.as_str(),
        "{power}"
    );

    let (status, body) = http(
        &lab,
        "GET",
        "/dut/ip",
        &[("Authorization", &alice_auth)],
        b"",
    )?;
    ensure!(
        status == 200 && text(&body) == "10.0.2.15",
        "{status} {}",
        text(&body)
    );

    let (status, body) = http(
        &lab,
        "GET",
        "/dut/capture",
        &[
            ("Authorization", &alice_auth),
            ("X-Dutlab-Lease", &id.to_string()),
        ],
        b"",
    )?;
    ensure!(
        status == 200 && body.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{status}"
    );

    // The serial log is what the console printed since power-on: the guest's login prompt.
    let log = wait_until("the login prompt in /dut/serial", BOOT_LIMIT, || {
        let (status, body) = http(
            &lab,
            "GET",
            "/dut/serial",
            &[("Authorization", &alice_auth)],
            b"",
        )?;
        ensure!(status == 200, "serial: {status} {}", text(&body));
        let log = text(&body);
        if log.contains("login:") {
            return Ok(Some(log));
        }
        std::thread::sleep(Duration::from_millis(500));
        Ok(None)
    })?;
    ensure!(!log.is_empty());

    let (status, body) = http(
        &lab,
        "POST",
        "/dut/network",
        &[("Authorization", &alice_auth)],
        br#"{"wired": {"nat": true}}"#,
    )?;
    ensure!(
        status == 501 && text(&body).contains("does not set up networks"),
        "{status} {}",
        text(&body)
    );

    // Flash as Leviathan's client sends it: a gzip body without a header saying so.
    let image = lab.sandbox().path().join("image.raw");
    std::fs::write(&image, vec![0x5au8; 2 << 20])?;
    let gzip = std::process::Command::new("gzip")
        .arg("-c")
        .arg(&image)
        .output()?;
    ensure!(gzip.status.success(), "gzip");
    let (status, body) = http(
        &lab,
        "POST",
        &format!("/dut/flash{named}"),
        &[("Authorization", &alice_auth)],
        &gzip.stdout,
    )?;
    let progress = text(&body);
    ensure!(status == 200, "flash: {status} {progress}");
    ensure!(progress.starts_with("progress: "), "{progress}");
    ensure!(
        progress.trim_end().ends_with("status: done"),
        "flash answer: {progress}"
    );
    ensure!(progress.contains("\"percentage\": 100"), "{progress}");

    let (status, body) = http(
        &lab,
        "POST",
        "/dut/off",
        &[("Authorization", &alice_auth)],
        b"",
    )?;
    ensure!(
        status == 200 && text(&body) == "OK",
        "{status} {}",
        text(&body)
    );
    let power = lab.json_as(
        &alice,
        &["power", "status", "--lease", &id.to_string(), "--json"],
    )?;
    ensure!(power["state"] == "off", "{power}");

    // An ended lease is gone for every route.
    lab.json_as(&alice, &["lease", "release", &id.to_string(), "--json"])?;
    for (method, route) in [
        ("POST", "/dut/on"),
        ("GET", "/dut/ip"),
        ("GET", "/dut/serial"),
    ] {
        let (status, body) = http(
            &lab,
            method,
            &format!("{route}{named}"),
            &[("Authorization", &alice_auth)],
            b"",
        )?;
        ensure!(
            status == 410,
            "{route} after release: {status} {}",
            text(&body)
        );
    }
    lab.finish()
}
