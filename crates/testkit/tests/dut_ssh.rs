//! The default guest image on a QEMU rig is reachable over SSH from the host: the rig
//! forwards a free 127.0.0.1 port to the guest's dropbear, and a key made here and authorized
//! over the console logs in, and the console pump records what the DUT prints whether or not
//! anyone reads it. Needs `ssh` and `ssh-keygen` (openssh-client) and the image's
//! dropbear (dropbear-bin), from scripts/install-deps.sh.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use anyhow::{Context, Result, bail, ensure};
use driver::Power;
use driver::expect::Expect;
use driver::rig::{Console, Network, Rig};
use qemu::{BootSpec, QemuConfig, QemuRig};
use regex::bytes::Regex;
use std::process::Command;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

#[tokio::test]
async fn the_default_image_answers_ssh_through_the_forwarded_port() -> Result<()> {
    let image = qemu::image::GuestImage::open(&dutlab_testkit::guest_image()?)?;
    let dir = tempfile::tempdir()?;
    let key = dir.path().join("id_ed25519");
    let made = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "dutlab-test", "-f"])
        .arg(&key)
        .status()
        .context("running ssh-keygen (Debian package openssh-client)")?;
    ensure!(made.success(), "ssh-keygen failed");
    let public = std::fs::read_to_string(key.with_extension("pub"))?;

    let mut rig = QemuRig::new(QemuConfig::default(), dir.path().join("storage"));
    let overlay = dir.path().join("rootfs.qcow2");
    qemu::disk::create_overlay(&image.rootfs, "qcow2", &overlay).await?;
    rig.set_boot(BootSpec {
        kernel: Some(image.kernel.clone()),
        initrd: Some(image.initramfs.clone()),
        drives: vec![qemu::Drive {
            path: overlay,
            format: "qcow2".into(),
        }],
        ..BootSpec::default()
    });
    let started = Instant::now();
    let deadline = started + Duration::from_secs(120);
    let recorded = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    let sink = recorded.clone();
    rig.launch(
        &dir.path().join("run"),
        Box::new(move |b| sink.lock().unwrap().extend_from_slice(b)),
        deadline,
    )
    .await?;
    ensure!(rig.capabilities().contains(&driver::Capability::Network));
    let endpoint = rig.ssh().context("no SSH endpoint while running")?;
    ensure!(endpoint.host.ip().is_loopback() && endpoint.guest_port == 22);
    let mut console = Expect::new(rig.subscribe(usize::MAX).unwrap(), Box::new(|_| {}));
    let mut input = rig.input().unwrap();
    rig.power_on().await?;

    console.expect(&[&Regex::new("login: ")?], deadline).await?;
    eprintln!("login prompt after {:?}", started.elapsed());
    input.write_all(b"root\n").await?;
    console.expect(&[&Regex::new("# ")?], deadline).await?;
    let authorize = format!(
        "echo '{}' > /root/.ssh/authorized_keys && chmod 600 /root/.ssh/authorized_keys && echo auth''orized\n",
        public.trim()
    );
    input.write_all(authorize.as_bytes()).await?;
    console
        .expect(&[&Regex::new("authorized")?], deadline)
        .await?;

    // dropbear makes its host key when it first starts; until it listens, QEMU's forward
    // accepts and then closes the connection, so retry until the deadline.
    let port = endpoint.host.port();
    let output = loop {
        let out = tokio::task::spawn_blocking({
            let key = key.clone();
            move || {
                dutlab_testkit::ssh_root(
                    &key,
                    port,
                    "uname -s; cat /etc/hostname; ip -4 addr show eth0",
                )
            }
        })
        .await??;
        if out.status.success() {
            break out;
        }
        if Instant::now() >= deadline {
            bail!(
                "ssh never succeeded: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    eprintln!("ssh answered after {:?}", started.elapsed());
    let text = String::from_utf8_lossy(&output.stdout);
    ensure!(text.starts_with("Linux\ndutlab\n"), "ssh output: {text}");
    ensure!(text.contains("inet 10.0.2.15/24"), "eth0: {text}");

    // The console is recorded while nobody reads it: what SSH writes to the serial line reaches
    // the recorder though the job's viewer is not being read.
    let marked = tokio::task::spawn_blocking({
        let key = key.clone();
        move || dutlab_testkit::ssh_root(&key, port, "echo dutlab-''console-mark > /dev/ttyS0")
    })
    .await??;
    ensure!(marked.status.success(), "{marked:?}");
    loop {
        let text = String::from_utf8_lossy(&recorded.lock().unwrap()).into_owned();
        if text.contains("dutlab-console-mark") {
            break;
        }
        ensure!(Instant::now() < deadline, "never recorded: {text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(console);

    // No passwords: without the key the server refuses.
    let other = dir.path().join("other");
    Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&other)
        .status()?;
    let refused =
        tokio::task::spawn_blocking(move || dutlab_testkit::ssh_root(&other, port, "true"))
            .await??;
    ensure!(!refused.status.success(), "a key not authorized logged in");

    rig.power_off().await?;
    ensure!(rig.ssh().is_none(), "endpoint left after power off");
    Ok(())
}
