//! QEMU virtual DUT: the emulator process, its QMP monitor, disk overlays and the guest image.
//!
//! Invariants:
//! - TCG is the default accelerator (KVM hangs on some hosts); `accel: kvm` is a setting.
//! - A [`vm::Vm`] never outlives its owner: its process group is killed on drop.
//! - Base images are read-only; each boot writes to a fresh linked-clone overlay ([`disk`]).

pub mod disk;
pub mod forward;
pub mod image;
pub mod nic;
pub mod qmp;
pub mod rig;
pub mod video;
pub mod vm;

pub use forward::{ForwardError, PortForwards};
pub use nic::{GroupLink, GroupLinkError};
pub use rig::QemuRig;
pub use vm::{
    Accel, BootSpec, ChannelDisk, Drive, NetworkMode, Nic, QemuConfig, QemuError, VideoMode, Vm,
};
