//! System tests of the agent host's boundary: an ordinary `user` submits hostile jobs through
//! a real `dutlab serve` and a real `dutlab agent`, and the test checks the host afterwards.
//!
//! Attack classes: reading a host file (paths, `file://`, `..`, symlinks out of `image_dirs`,
//! local git repositories), writing outside the work directory (image names), running a host
//! program (`image_arg` options), and using the agent as a network probe (loopback
//! destinations, counted by a canary server that must see no connection). Every attack must
//! end as a job error naming the field, and leave no trace on the host.
//! The redirect of an allowed name to loopback cannot be staged end to end without a public
//! host; `runner`'s unit tests cover it with an injected resolver.

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use testkit::{expect_code, wait_until};

const DUTLAB: &str = env!("CARGO_BIN_EXE_dutlab");
const LIMIT: Duration = Duration::from_secs(120);
const SECRET: &str = "TOPSECRET-4f1c9a-agent-host";

/// The shared lab with one agent `host-a` with one device and
/// `image_dirs: [<sandbox>/images]`, and a `user`.
struct Lab {
    lab: testkit::lab::Lab,
    user: String,
}

impl std::ops::Deref for Lab {
    type Target = testkit::lab::Lab;
    fn deref(&self) -> &Self::Target {
        &self.lab
    }
}

impl Lab {
    fn start() -> Result<Lab> {
        let mut lab = testkit::lab::Lab::start(DUTLAB)?;
        let user = lab.token("mallory", "user")?;
        let images = lab.sandbox().path().join("images");
        std::fs::create_dir_all(&images)?;
        // The secret lives next to the allowed directory, outside it.
        std::fs::write(lab.sandbox().path().join("secret.txt"), SECRET)?;
        let path = lab.agent_config("host-a", 1)?;
        let init = std::fs::read_to_string(&path)?;
        ensure!(init.contains("image_dirs: []\n"), "{init}");
        let config = init.replace(
            "image_dirs: []\n",
            &format!("image_dirs: [{:?}]\n", images.display().to_string()),
        );
        std::fs::write(&path, config)?;
        lab.spawn_agent(&path)?;
        lab.wait_devices_idle("host-a", 1)?;
        Ok(Lab { lab, user })
    }

    fn images(&self) -> PathBuf {
        self.sandbox().path().join("images")
    }

    /// Submits `text` as the ordinary user. `None` when the controller refused it at submit
    /// (nothing reached the agent); otherwise the finished job and its log text.
    fn attack(&self, name: &str, text: &str) -> Result<Option<(Value, String)>> {
        let file = self.sandbox().path().join(format!("{name}.yaml"));
        std::fs::write(&file, text)?;
        let done = self.cli_as(
            &self.user,
            // As written: the job text itself names the agent host's paths (the CLI would
            // otherwise upload the user's own files, which here are on the same machine).
            &[
                "job",
                "submit",
                &file.display().to_string(),
                "--json",
                "--as-written",
            ],
        )?;
        if done.code() == Some(4) {
            return Ok(None);
        }
        expect_code(&done, 0)?;
        let view: Value = serde_json::from_str(&done.stdout)?;
        let id = view["id"].as_u64().context("job id")?.to_string();
        let job = wait_until(&format!("job {name} finished"), LIMIT, || {
            let job = self.json(&["job", "show", &id, "--json"])?;
            Ok((job["state"] == "finished").then_some(job))
        })?;
        let logs = self.cli(&["job", "logs", &id, "--json"])?;
        expect_code(&logs, 0)?;
        Ok(Some((job, logs.stdout)))
    }

    /// The attack ended as a job error whose reason names `field` and `what`, and its log and
    /// report never show the secret.
    fn refused(&self, name: &str, text: &str, field: &str, what: &str) -> Result<()> {
        let (job, log) = self
            .attack(name, text)?
            .with_context(|| format!("{name}: refused at submit, expected the agent to refuse"))?;
        ensure!(job["outcome"] == "job-error", "{name}: {job}");
        let all = format!("{job}{log}");
        ensure!(
            all.contains(field) && all.contains(what),
            "{name}: the refusal does not name {field:?} and {what:?}: {all}"
        );
        ensure!(!all.contains(SECRET), "{name}: the secret leaked: {all}");
        Ok(())
    }

    fn finish(self) -> Result<()> {
        self.lab.finish()
    }
}

/// A job deploying `images` (YAML mapping lines, indented 6) then booting.
fn deploy_job(name: &str, images: &str) -> String {
    format!(
        "job_name: {name}\ndevice_type: qemu\nactions:\n- deploy:\n    to: tmpfs\n    images:\n{images}\
         - boot: {{method: qemu, prompts: ['# $']}}\n"
    )
}

#[test]
fn a_lab_job_reads_no_host_file_outside_image_dirs() -> Result<()> {
    let lab = Lab::start()?;
    let secret = lab.sandbox().path().join("secret.txt");
    std::os::unix::fs::symlink(&secret, lab.images().join("innocent.img"))?;
    let field = "actions[0].deploy.images.rootfs.url";
    for (name, url) in [
        ("file-url", format!("file://{}", secret.display())),
        ("absolute", secret.display().to_string()),
        ("shadow", "file:///etc/shadow".to_string()),
        ("dotdot", "../secret.txt".to_string()),
        ("symlink", "innocent.img".to_string()),
        (
            "dotdot-absolute",
            format!("{}/../secret.txt", lab.images().display()),
        ),
    ] {
        let images = format!("      rootfs: {{url: {:?}, format: raw}}\n", url);
        lab.refused(name, &deploy_job(name, &images), field, "")?;
    }
    // A git definition from a local repository of the agent host is refused as well.
    let repo = lab.sandbox().path().join("repo");
    std::fs::create_dir_all(&repo)?;
    let git = |args: &[&str]| -> Result<()> {
        let out = std::process::Command::new("git")
            .args(args)
            .current_dir(&repo)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@t")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@t")
            .output()?;
        ensure!(out.status.success(), "git {args:?}: {out:?}");
        Ok(())
    };
    git(&["init", "-q"])?;
    std::fs::write(
        repo.join("defs.yaml"),
        format!(
            "metadata:\n  format: Lava-Test Test Definition 1.0\n  name: {SECRET}\nrun:\n  steps:\n  - echo {SECRET}\n"
        ),
    )?;
    git(&["add", "."])?;
    git(&["commit", "-qm", "secret"])?;
    for (name, repository) in [
        ("git-path", repo.display().to_string()),
        ("git-file-url", format!("file://{}", repo.display())),
        ("git-http", "http://127.0.0.1:9/repo.git".to_string()),
        ("git-ssh", "git@localhost:repo.git".to_string()),
        ("git-ext", "ext::sh -c true".to_string()),
    ] {
        let text = format!(
            "job_name: {name}\ndevice_type: qemu\nactions:\n- boot: {{method: qemu, prompts: ['# $']}}\n\
             - test:\n    definitions:\n    - {{from: git, repository: {repository:?}, path: defs.yaml, name: t}}\n"
        );
        lab.refused(
            name,
            &text,
            "actions[1].test.definitions[0].repository",
            "https://",
        )?;
    }
    lab.finish()
}

#[test]
fn image_names_cannot_write_outside_the_work_directory() -> Result<()> {
    let lab = Lab::start()?;
    // A small gzip image inside image_dirs: decompressing it used to write work/<name>.
    let payload = lab.images().join("payload");
    std::fs::write(&payload, b"payload written by a job\n")?;
    let status = std::process::Command::new("gzip").arg(&payload).status()?;
    ensure!(status.success(), "gzip: {status}");
    let outside = lab.sandbox().path().join("written-by-job");
    let relative_target = lab.sandbox().path().join("escaped");
    for (case, image) in [
        ("abs", outside.display().to_string()),
        ("rel", "../../../../../escaped".to_string()),
        ("dot", ".hidden".to_string()),
        ("upper", "RootFS".to_string()),
    ] {
        let images = format!(
            "      {image:?}: {{url: payload.gz, compression: gz, image_arg: '-append x'}}\n"
        );
        match lab.attack(case, &deploy_job(case, &images))? {
            // The controller already refused the name: nothing reached the host.
            None => {}
            Some((job, log)) => {
                ensure!(job["outcome"] == "job-error", "{case}: {job}");
                ensure!(
                    format!("{job}{log}").contains("actions[0].deploy.images"),
                    "{case}: {job}{log}"
                );
            }
        }
    }
    ensure!(!outside.exists(), "{} was written", outside.display());
    ensure!(
        !relative_target.exists(),
        "{} was written",
        relative_target.display()
    );
    let walk = walk_files(lab.sandbox().path())?;
    ensure!(
        !walk.iter().any(|p| p.ends_with("escaped")),
        "a file escaped: {walk:?}"
    );
    lab.finish()
}

fn walk_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            out.extend(walk_files(&path)?);
        } else {
            out.push(path);
        }
    }
    Ok(out)
}

#[test]
fn image_arg_cannot_run_a_host_program_or_open_host_files() -> Result<()> {
    let lab = Lab::start()?;
    std::fs::write(lab.images().join("vmlinuz"), b"not a kernel")?;
    let marker = lab.sandbox().path().join("marker");
    let script = lab.sandbox().path().join("script.sh");
    std::fs::write(&script, format!("#!/bin/sh\ntouch {}\n", marker.display()))?;
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let secret = lab.sandbox().path().join("secret.txt");
    for (case, arg, option) in [
        (
            "tap-script",
            format!(
                "-kernel {{kernel}} -netdev tap,id=n0,script={}",
                script.display()
            ),
            "-netdev",
        ),
        (
            "chardev-file",
            format!(
                "-kernel {{kernel}} -chardev file,id=c0,path={} -serial chardev:c0",
                marker.display()
            ),
            "-chardev",
        ),
        (
            "chardev-pipe",
            format!(
                "-kernel {{kernel}} -chardev pipe,id=c0,path={}",
                marker.display()
            ),
            "-chardev",
        ),
        (
            "guestfwd-cmd",
            format!(
                "-kernel {{kernel}} -netdev user,id=n0,restrict=on,guestfwd=tcp:10.0.2.100:1-cmd:{}",
                script.display()
            ),
            "guestfwd",
        ),
        (
            "drive-secret",
            format!(
                "-kernel {{kernel}} -drive file={},format=raw",
                secret.display()
            ),
            "-drive",
        ),
        (
            "readconfig",
            format!("-kernel {{kernel}} -readconfig {}", secret.display()),
            "-readconfig",
        ),
        (
            "sandbox-off",
            "-kernel {kernel} -sandbox off".to_string(),
            "-sandbox",
        ),
    ] {
        let images = format!("      kernel: {{url: vmlinuz, image_arg: {arg:?}}}\n");
        lab.refused(
            case,
            &deploy_job(case, &images),
            "actions[0].deploy.images.kernel.image_arg",
            option,
        )?;
    }
    ensure!(
        !marker.exists(),
        "a host program ran: {} exists",
        marker.display()
    );
    lab.finish()
}

/// A TCP server on loopback that counts the connections it accepts.
struct Canary {
    port: u16,
    hits: Arc<AtomicUsize>,
}

impl Canary {
    fn start() -> Result<Canary> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let hits = Arc::new(AtomicUsize::new(0));
        let counted = hits.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                counted.fetch_add(1, Ordering::SeqCst);
                if let Ok(mut s) = stream {
                    let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\ncanary");
                }
            }
        });
        Ok(Canary { port, hits })
    }
}

#[test]
fn the_agent_fetches_nothing_from_loopback() -> Result<()> {
    let lab = Lab::start()?;
    let canary = Canary::start()?;
    let port = canary.port;
    for (case, url) in [
        ("loopback", format!("http://127.0.0.1:{port}/vmlinuz")),
        ("localhost", format!("http://localhost:{port}/vmlinuz")),
        (
            "mapped",
            format!("http://[::ffff:127.0.0.1]:{port}/vmlinuz"),
        ),
        ("hex", format!("http://0x7f000001:{port}/vmlinuz")),
        ("other-loopback", format!("http://127.1.2.3:{port}/vmlinuz")),
        ("unspecified", format!("http://0.0.0.0:{port}/vmlinuz")),
    ] {
        let images = format!("      kernel: {{url: {url:?}}}\n");
        lab.refused(
            case,
            &deploy_job(case, &images),
            "actions[0].deploy.images.kernel.url",
            "not a public address",
        )?;
    }
    let text = format!(
        "job_name: git\ndevice_type: qemu\nactions:\n- boot: {{method: qemu, prompts: ['# $']}}\n\
         - test:\n    definitions:\n    - {{from: git, repository: 'https://127.0.0.1:{port}/r.git', path: d.yaml, name: t}}\n"
    );
    lab.refused(
        "git-loopback",
        &text,
        "actions[1].test.definitions[0].repository",
        "loopback",
    )?;
    // The canary is reachable (so zero means refused, not unreachable).
    let hits = canary.hits.load(Ordering::SeqCst);
    std::net::TcpStream::connect(("127.0.0.1", port))?;
    wait_until("the canary counts a probe", Duration::from_secs(10), || {
        Ok((canary.hits.load(Ordering::SeqCst) > hits).then_some(()))
    })?;
    ensure!(
        hits == 0,
        "the agent connected to the canary {hits} time(s)"
    );
    lab.finish()
}

#[test]
fn a_lab_job_boots_images_from_image_dirs() -> Result<()> {
    let lab = Lab::start()?;
    let image = testkit::guest_image()?;
    for file in ["vmlinuz", "initramfs.cpio.gz", "rootfs.qcow2"] {
        std::fs::copy(image.join(file), lab.images().join(file))?;
    }
    let rootfs = lab.images().join("rootfs.qcow2");
    let before = std::fs::read(&rootfs)?;
    // Relative paths are looked up in image_dirs, absolute ones must be inside them.
    let text = format!(
        "job_name: allowed\ndevice_type: qemu\ntimeouts: {{job: 4m}}\nactions:\n- deploy:\n    to: tmpfs\n    images:\n\
         \x20     kernel: {{url: vmlinuz}}\n\
         \x20     initrd: {{url: initramfs.cpio.gz}}\n\
         \x20     rootfs: {{url: {:?}, image_arg: '-drive file={{rootfs}},if=virtio'}}\n\
         - boot: {{method: qemu, prompts: ['# $'], auto_login: {{login_prompt: 'login:', username: root}}}}\n\
         - test:\n    definitions:\n    - from: inline\n      name: t\n      path: t.yaml\n      repository:\n\
         \x20       metadata: {{format: Lava-Test Test Definition 1.0, name: t}}\n        run:\n          steps:\n\
         \x20         - lava-test-case disk-readable --shell test -r /mnt/rootfs/etc/dutlab-rootfs\n",
        format!("file://{}", rootfs.display())
    );
    let (job, log) = lab
        .attack("allowed", &text)?
        .context("the controller refused a legitimate job")?;
    ensure!(job["outcome"] == "passed", "{job}\n{log}");
    ensure!(
        std::fs::read(&rootfs)? == before,
        "the image in image_dirs was written"
    );
    lab.finish()
}
