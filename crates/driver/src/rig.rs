//! Rigs: a device's set of drivers, one per capability, and the capabilities derived from it.
//!
//! Each capability is a small trait ([`Power`](crate::Power), [`Console`], [`Storage`],
//! [`Network`], [`Video`]). A [`Rig`] names one implementation per capability (associated
//! types) and hands out the ones the device has; a capability it lacks is [`Absent`], a type
//! with no values, so a rig cannot claim what it cannot do.
//!
//! Invariants:
//! - What a device advertises is [`Rig::capabilities`], computed from the rig's accessors,
//!   never written by hand: a driver that is there is a capability, one that is not is not.
//! - Async traits are used through generics (no trait objects); callers gather rigs in enums.

use crate::DriverError;
use crate::console::{ConsoleHub, ConsoleInput, Viewer};
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;

/// One thing a rig can do to its device. The names are those of the device's advertised
/// capabilities (`DeviceInfo.capabilities`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Capability {
    Power,
    Console,
    /// A shell reached over the console (the console shell adapter): every console has one.
    Shell,
    Storage,
    Network,
    Video,
}

impl Capability {
    /// Every capability, in display order.
    pub const ALL: [Capability; 6] = [
        Capability::Power,
        Capability::Console,
        Capability::Shell,
        Capability::Storage,
        Capability::Network,
        Capability::Video,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Capability::Power => "power",
            Capability::Console => "console",
            Capability::Shell => "shell",
            Capability::Storage => "storage",
            Capability::Network => "network",
            Capability::Video => "video",
        }
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The console of a device: output through its pump, input as bytes.
pub trait Console {
    /// The pump of the running console (`None` while the device is off).
    fn hub(&self) -> Option<&ConsoleHub>;

    /// A viewer with up to `history` bytes replayed, while the console runs.
    fn subscribe(&self, history: usize) -> Option<Viewer> {
        self.hub().map(|hub| hub.subscribe_with_history(history))
    }

    /// A handle that types on the running console.
    fn input(&self) -> Option<ConsoleInput> {
        self.hub().map(ConsoleHub::input)
    }
}

/// Writing a whole image to the device's storage.
pub trait Storage {
    /// Makes `image` what the device boots from next (its root storage).
    fn write_image(&mut self, image: &Path)
    -> impl Future<Output = Result<(), DriverError>> + Send;
}

/// Where the device is on the network, as the host reaches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    /// The address the host connects to.
    pub host: SocketAddr,
    /// The port inside the device it reaches.
    pub guest_port: u16,
}

/// The device's network as seen from the host.
pub trait Network {
    /// The host-reachable endpoint of the device's SSH server (`None` if it has none).
    fn ssh(&self) -> Option<Endpoint>;

    /// The device's own address on its network, as the device knows itself (`None` while it
    /// has none). Not necessarily one the host or anyone else can route to.
    fn address(&self) -> Option<std::net::IpAddr>;

    /// Whether `endpoint` accepts a TCP connection now.
    fn reachable(
        &self,
        endpoint: Endpoint,
    ) -> impl Future<Output = Result<bool, DriverError>> + Send {
        async move { Ok(tokio::net::TcpStream::connect(endpoint.host).await.is_ok()) }
    }
}

/// The first bytes of every PNG file.
pub const PNG_SIGNATURE: &[u8; 8] = b"\x89PNG\r\n\x1a\n";

/// Why bytes are not a [`Png`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PngError {
    #[error("{0} bytes, more than the {1} allowed")]
    TooLarge(usize, usize),
    #[error("no PNG signature")]
    Signature,
    #[error("no IHDR chunk with a width and height above 0 after the signature")]
    Header,
}

/// One picture of the device's display as PNG bytes, checked: the signature, then an IHDR
/// chunk (always the first) with a width and height above 0, at most the size asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Png {
    bytes: Vec<u8>,
    width: u32,
    height: u32,
}

impl Png {
    /// Checks `bytes` (at most `max` of them).
    pub fn parse(bytes: Vec<u8>, max: usize) -> Result<Png, PngError> {
        if bytes.len() > max {
            return Err(PngError::TooLarge(bytes.len(), max));
        }
        let rest = bytes
            .strip_prefix(PNG_SIGNATURE.as_slice())
            .ok_or(PngError::Signature)?;
        // Length (4 bytes, 13 for IHDR), type, width, height.
        let header = rest.get(..16).ok_or(PngError::Header)?;
        let word =
            |i: usize| u32::from_be_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
        if word(0) != 13 || &header[4..8] != b"IHDR" {
            return Err(PngError::Header);
        }
        let (width, height) = (word(8), word(12));
        if width == 0 || height == 0 {
            return Err(PngError::Header);
        }
        Ok(Png {
            bytes,
            width,
            height,
        })
    }

    pub fn width(&self) -> u32 {
        self.width
    }

    pub fn height(&self) -> u32 {
        self.height
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

/// Capturing the device's display.
pub trait Video {
    /// A picture of the display now, at most `max_bytes` of PNG.
    fn screenshot(
        &mut self,
        max_bytes: usize,
    ) -> impl Future<Output = Result<Png, DriverError>> + Send;
}

/// The driver of a capability a rig does not have: it has no values, so no accessor can
/// return one and no method of it can run.
#[derive(Debug)]
pub enum Absent {}

impl crate::Power for Absent {
    async fn power_on(&mut self) -> Result<(), DriverError> {
        match *self {}
    }
    async fn power_off(&mut self) -> Result<(), DriverError> {
        match *self {}
    }
    async fn reset(&mut self) -> Result<(), DriverError> {
        match *self {}
    }
    async fn power_state(&mut self) -> Result<crate::PowerState, DriverError> {
        match *self {}
    }
}

impl Console for Absent {
    fn hub(&self) -> Option<&ConsoleHub> {
        match *self {}
    }
}

impl Storage for Absent {
    async fn write_image(&mut self, _: &Path) -> Result<(), DriverError> {
        match *self {}
    }
}

impl Network for Absent {
    fn ssh(&self) -> Option<Endpoint> {
        match *self {}
    }
    fn address(&self) -> Option<std::net::IpAddr> {
        match *self {}
    }
}

impl Video for Absent {
    async fn screenshot(&mut self, _: usize) -> Result<Png, DriverError> {
        match *self {}
    }
}

/// A device's drivers. An accessor returns `None` when the device lacks that capability.
pub trait Rig {
    type Power: crate::Power;
    type Console: Console;
    type Storage: Storage;
    type Network: Network;
    type Video: Video;

    fn power(&mut self) -> Option<&mut Self::Power>;
    fn console(&mut self) -> Option<&mut Self::Console>;
    fn storage(&mut self) -> Option<&mut Self::Storage>;
    fn network(&mut self) -> Option<&mut Self::Network>;
    fn video(&mut self) -> Option<&mut Self::Video>;

    /// What the device can do: the capabilities whose driver is there (and a shell, which
    /// the console shell adapter gives every console).
    fn capabilities(&mut self) -> Vec<Capability> {
        let mut present = Vec::new();
        for capability in Capability::ALL {
            let there = match capability {
                Capability::Power => self.power().is_some(),
                Capability::Console | Capability::Shell => self.console().is_some(),
                Capability::Storage => self.storage().is_some(),
                Capability::Network => self.network().is_some(),
                Capability::Video => self.video().is_some(),
            };
            if there {
                present.push(capability);
            }
        }
        present
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A rig with a console only (a board on a serial line with no power switch).
    struct SerialOnly {
        hub: Option<ConsoleHub>,
    }

    impl Console for SerialOnly {
        fn hub(&self) -> Option<&ConsoleHub> {
            self.hub.as_ref()
        }
    }

    impl Rig for SerialOnly {
        type Power = Absent;
        type Console = SerialOnly;
        type Storage = Absent;
        type Network = Absent;
        type Video = Absent;
        fn power(&mut self) -> Option<&mut Absent> {
            None
        }
        fn console(&mut self) -> Option<&mut SerialOnly> {
            Some(self)
        }
        fn storage(&mut self) -> Option<&mut Absent> {
            None
        }
        fn network(&mut self) -> Option<&mut Absent> {
            None
        }
        fn video(&mut self) -> Option<&mut Absent> {
            None
        }
    }

    #[test]
    fn capabilities_are_the_drivers_a_rig_has() {
        let mut rig = SerialOnly { hub: None };
        assert_eq!(
            rig.capabilities(),
            vec![Capability::Console, Capability::Shell]
        );
        assert!(rig.subscribe(10).is_none(), "no console pump while off");
        assert!(rig.input().is_none());
        let names: Vec<String> = Capability::ALL.iter().map(|c| c.to_string()).collect();
        assert_eq!(
            names,
            ["power", "console", "shell", "storage", "network", "video"]
        );
    }

    #[test]
    fn a_png_is_checked_before_it_is_one() {
        let mut bytes = PNG_SIGNATURE.to_vec();
        bytes.extend_from_slice(&13u32.to_be_bytes());
        bytes.extend_from_slice(b"IHDR");
        bytes.extend_from_slice(&720u32.to_be_bytes());
        bytes.extend_from_slice(&400u32.to_be_bytes());
        bytes.extend_from_slice(&[8, 2, 0, 0, 0]);
        let png = Png::parse(bytes.clone(), 1 << 10).expect("a PNG header");
        assert_eq!((png.width(), png.height()), (720, 400));
        assert_eq!(png.bytes(), bytes.as_slice());
        assert_eq!(
            Png::parse(bytes.clone(), 10),
            Err(PngError::TooLarge(bytes.len(), 10))
        );
        assert_eq!(
            Png::parse(b"GIF89a".to_vec(), 100),
            Err(PngError::Signature)
        );
        assert_eq!(
            Png::parse(PNG_SIGNATURE.to_vec(), 100),
            Err(PngError::Header)
        );
        let mut flat = bytes;
        flat[20..24].copy_from_slice(&0u32.to_be_bytes());
        assert_eq!(Png::parse(flat, 100), Err(PngError::Header));
    }
}
