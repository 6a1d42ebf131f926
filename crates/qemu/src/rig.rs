//! The QEMU rig: a virtual DUT as a set of drivers (power, console, storage, network).
//!
//! ```text
//!  new() ─set_boot()/write_image()─> launch() ──> Paused ─power_on()─> On ─power_off()─> Off
//!                                    (QEMU -S, console pump started, SSH port picked)
//! ```
//!
//! Invariants:
//! - The console pump starts before the guest runs (QEMU is launched paused), so it records
//!   every byte from power-on until QEMU exits; power-off waits briefly for the pump to read
//!   the last bytes, then drops it.
//! - With `network: user` each launch forwards a free port on 127.0.0.1 (picked just before
//!   launch) to the guest's SSH port; other guest ports are forwarded only when asked
//!   ([`QemuRig::forwards`], [`crate::forward`]), always from 127.0.0.1 to the guest itself.
//! - Storage writes never touch the image: `write_image` makes a linked-clone overlay in the
//!   rig's own directory and boots that.
//! - Video only with `qemu.video: vga`: QEMU always runs with `-display none` (no window, no
//!   VNC), and only then gets a display device, read by QMP `screendump` into a private file
//!   in the rig's directory; without it the rig has no video and does not advertise it.

use crate::disk;
use crate::forward::PortForwards;
use crate::vm::{
    BootSpec, Drive, FORWARD_MONITOR, GUEST_SSH_PORT, NetworkMode, Nic, QemuConfig, QemuError,
    VideoMode, Vm,
};
use driver::console::{ConsoleHub, Recorder};
use driver::rig::{Console, Endpoint, Network, Png, Rig, Storage, Video};
use driver::{DriverError, Power, PowerState};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How long power-off waits for the console pump to read QEMU's last bytes.
const CONSOLE_DRAIN: Duration = Duration::from_secs(1);

/// A QEMU virtual DUT and its drivers.
pub struct QemuRig {
    config: QemuConfig,
    /// Where storage overlays are made.
    dir: PathBuf,
    boot: BootSpec,
    vm: Option<Vm>,
    console: Option<ConsoleHub>,
    nic: Nic,
    /// Forwarded DUT ports of the running launch (user-mode NIC only).
    forwards: Option<Arc<PortForwards>>,
    images: usize,
}

impl std::fmt::Debug for QemuRig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QemuRig")
            .field("vm", &self.vm)
            .field("nic", &self.nic)
            .finish()
    }
}

impl QemuRig {
    /// A rig for a device with `config`; storage overlays go into `dir` (made when needed).
    pub fn new(config: QemuConfig, dir: PathBuf) -> QemuRig {
        QemuRig {
            config,
            dir,
            boot: BootSpec::default(),
            vm: None,
            console: None,
            nic: Nic::None,
            forwards: None,
            images: 0,
        }
    }

    pub fn config(&self) -> &QemuConfig {
        &self.config
    }

    /// What the next launch boots.
    pub fn set_boot(&mut self, boot: BootSpec) {
        self.boot = boot;
    }

    pub fn boot(&self) -> &BootSpec {
        &self.boot
    }

    /// Starts QEMU paused with the boot set last (after powering off a running one), its
    /// console pump feeding `recorder`, and (with `network: user`) a fresh SSH forward.
    pub async fn launch(
        &mut self,
        run_dir: &Path,
        recorder: Recorder,
        deadline: Instant,
    ) -> Result<(), QemuError> {
        if let Err(e) = self.stop().await {
            tracing::warn!("QEMU power off before a new launch: {e}");
        }
        self.nic = match self.config.network {
            NetworkMode::None => Nic::None,
            NetworkMode::User => Nic::User {
                ssh_host_port: free_loopback_port()?,
            },
        };
        let (vm, console) =
            Vm::launch(&self.config, &self.boot, run_dir, self.nic, deadline).await?;
        let (read, write) = console.into_split();
        self.console = Some(ConsoleHub::spawn(read, write, recorder));
        self.vm = Some(vm);
        self.forwards = match self.nic {
            Nic::None => None,
            Nic::User { ssh_host_port } => Some(Arc::new(PortForwards::new(
                run_dir.join(FORWARD_MONITOR),
                [(
                    GUEST_SSH_PORT,
                    SocketAddr::from((Ipv4Addr::LOCALHOST, ssh_host_port)),
                )],
            ))),
        };
        Ok(())
    }

    /// The QEMU process id, while one runs.
    pub fn pid(&self) -> Option<u32> {
        self.vm.as_ref().map(Vm::pid)
    }

    /// The DUT's ports reachable from the host, forwarded on demand (`None` while QEMU does
    /// not run or the DUT has no NIC).
    pub fn forwards(&self) -> Option<Arc<PortForwards>> {
        self.forwards.clone()
    }

    /// The running QEMU (QMP, exit status).
    pub fn vm(&mut self) -> Option<&mut Vm> {
        self.vm.as_mut()
    }

    /// Powers QEMU off (if it runs), lets the pump read the last bytes, drops the console.
    async fn stop(&mut self) -> Result<(), DriverError> {
        let result = match self.vm.take() {
            Some(mut vm) => vm.power_off().await,
            None => Ok(()),
        };
        if let Some(mut hub) = self.console.take() {
            let _ = tokio::time::timeout(CONSOLE_DRAIN, hub.closed()).await;
        }
        self.nic = Nic::None;
        self.forwards = None;
        result
    }
}

/// A port on 127.0.0.1 that was free a moment ago (the kernel's pick for port 0). Another
/// process could take it before QEMU binds it; QEMU then fails at start with its reason.
fn free_loopback_port() -> Result<u16, QemuError> {
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

impl Power for QemuRig {
    /// Resumes the launched guest (`launch` comes first: it needs a boot and a deadline).
    async fn power_on(&mut self) -> Result<(), DriverError> {
        match self.vm.as_mut() {
            Some(vm) => vm.power_on().await,
            None => Err(DriverError::Operation {
                driver: "qemu",
                operation: "power on",
                reason: "QEMU was not launched".into(),
            }),
        }
    }

    async fn power_off(&mut self) -> Result<(), DriverError> {
        self.stop().await
    }

    async fn reset(&mut self) -> Result<(), DriverError> {
        match self.vm.as_mut() {
            Some(vm) => vm.reset().await,
            None => Err(DriverError::Operation {
                driver: "qemu",
                operation: "reset",
                reason: "QEMU is not running".into(),
            }),
        }
    }

    async fn power_state(&mut self) -> Result<PowerState, DriverError> {
        match self.vm.as_mut() {
            Some(vm) => vm.power_state().await,
            None => Ok(PowerState::Off),
        }
    }
}

impl Console for QemuRig {
    fn hub(&self) -> Option<&ConsoleHub> {
        self.console.as_ref()
    }
}

impl Storage for QemuRig {
    /// Boots a fresh qcow2 overlay of `image` next (replacing the boot's disks).
    async fn write_image(&mut self, image: &Path) -> Result<(), DriverError> {
        let failed = |reason: String| DriverError::Operation {
            driver: "qemu",
            operation: "write image",
            reason,
        };
        let format = disk::inspect(image, None)
            .await
            .map_err(|e| failed(e.to_string()))?;
        std::fs::create_dir_all(&self.dir)?;
        self.images += 1;
        let overlay = self.dir.join(format!("storage-{}.qcow2", self.images));
        disk::create_overlay(image, &format, &overlay)
            .await
            .map_err(|e| failed(e.to_string()))?;
        self.boot.drives = vec![Drive {
            path: overlay,
            format: "qcow2".into(),
        }];
        Ok(())
    }
}

impl Network for QemuRig {
    fn ssh(&self) -> Option<Endpoint> {
        match (self.nic, &self.vm) {
            (Nic::User { ssh_host_port }, Some(_)) => Some(Endpoint {
                host: SocketAddr::from((Ipv4Addr::LOCALHOST, ssh_host_port)),
                guest_port: GUEST_SSH_PORT,
            }),
            _ => None,
        }
    }

    /// With `network: user`, while QEMU runs: the guest's address on QEMU's user-mode
    /// network (the first address its DHCP server gives, which the default image also sets
    /// statically), reachable only from inside that network.
    fn address(&self) -> Option<std::net::IpAddr> {
        match (self.nic, &self.vm) {
            (Nic::User { .. }, Some(_)) => Some(std::net::IpAddr::V4(USER_NET_GUEST)),
            _ => None,
        }
    }
}

/// The guest's address on QEMU's user-mode network (slirp's first DHCP lease, 10.0.2.15).
pub const USER_NET_GUEST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);

impl Video for QemuRig {
    /// A PNG of the display of the running guest (a paused one shows its last picture).
    async fn screenshot(&mut self, max_bytes: usize) -> Result<Png, DriverError> {
        let dir = self.dir.clone();
        match self.vm.as_mut() {
            Some(vm) => crate::video::screendump_png(vm, &dir, max_bytes).await,
            None => Err(DriverError::Operation {
                driver: "qemu",
                operation: "screenshot",
                reason: "QEMU is not running (the device is off)".into(),
            }),
        }
    }
}

impl Rig for QemuRig {
    type Power = QemuRig;
    type Console = QemuRig;
    type Storage = QemuRig;
    type Network = QemuRig;
    type Video = QemuRig;

    fn power(&mut self) -> Option<&mut QemuRig> {
        Some(self)
    }
    fn console(&mut self) -> Option<&mut QemuRig> {
        Some(self)
    }
    fn storage(&mut self) -> Option<&mut QemuRig> {
        Some(self)
    }
    fn network(&mut self) -> Option<&mut QemuRig> {
        match self.config.network {
            NetworkMode::User => Some(self),
            NetworkMode::None => None,
        }
    }
    fn video(&mut self) -> Option<&mut QemuRig> {
        match self.config.video {
            VideoMode::Vga => Some(self),
            VideoMode::None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use driver::Capability;

    #[test]
    fn capabilities_follow_the_configuration() {
        let dir = std::env::temp_dir();
        let mut rig = QemuRig::new(QemuConfig::default(), dir.clone());
        use Capability::*;
        assert_eq!(
            rig.capabilities(),
            [Power, Console, Shell, Storage, Network]
        );
        let mut offline = QemuRig::new(
            QemuConfig {
                network: NetworkMode::None,
                ..QemuConfig::default()
            },
            dir,
        );
        assert_eq!(offline.capabilities(), [Power, Console, Shell, Storage]);
        let mut screen = QemuRig::new(
            QemuConfig {
                video: VideoMode::Vga,
                ..QemuConfig::default()
            },
            std::env::temp_dir(),
        );
        assert_eq!(
            screen.capabilities(),
            [Power, Console, Shell, Storage, Network, Video]
        );
        assert!(rig.ssh().is_none(), "no endpoint before launch");
    }

    #[tokio::test]
    async fn write_image_boots_an_overlay_and_leaves_the_image_alone() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.img");
        std::fs::write(&image, vec![7u8; 1 << 20]).unwrap();
        let mut rig = QemuRig::new(QemuConfig::default(), dir.path().join("rig"));
        rig.write_image(&image).await.unwrap();
        let drives = &rig.boot().drives;
        assert_eq!(drives.len(), 1);
        assert_eq!(drives[0].format, "qcow2");
        assert!(drives[0].path.starts_with(dir.path().join("rig")));
        assert_eq!(disk::detect_format(&drives[0].path).await.unwrap(), "qcow2");
        // The overlay has the image as its backing file, so it is no self-contained disk.
        assert!(disk::inspect(&drives[0].path, None).await.is_err());
        assert_eq!(std::fs::read(&image).unwrap(), vec![7u8; 1 << 20]);
        assert!(rig.write_image(&dir.path().join("missing")).await.is_err());
        // Off is off: powering off a rig that never launched succeeds.
        rig.power_off().await.unwrap();
        assert_eq!(rig.power_state().await.unwrap(), PowerState::Off);
    }
}
