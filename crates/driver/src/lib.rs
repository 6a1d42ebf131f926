//! Driver traits and the console machinery every driver shares.
//!
//! A *rig* is what an agent can do to one device: optional power, console, shell, storage,
//! network, video. Each of those is a small trait here ([`Power`], [`rig`]); a driver crate
//! (e.g. `qemu`) implements the ones its hardware has, and a [`rig::Rig`] gathers them, from
//! which the device's capabilities are derived. [`console`] is the pump that owns a console's
//! output and fans it out to the recorder, a job's expect engine and viewers.
//!
//! Invariants:
//! - Drivers know nothing about jobs, leases or the controller: they take device settings and
//!   return facts (power state, bytes) or `DriverError`s.
//! - Console bytes are untrusted: [`ansi`] strips escapes byte-preservingly, [`expect`] keeps
//!   its buffer bounded, [`shell`] refuses command lines a shell could misread.

pub mod ansi;
pub mod console;
pub mod expect;
pub mod rig;
pub mod shell;

pub use rig::{Capability, Rig};

use std::fmt;

/// Power state of a device as the driver last saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerState {
    On,
    Off,
    /// Paused (QEMU `-S`, a stopped VM): powered but not running.
    Paused,
}

impl fmt::Display for PowerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PowerState::On => "on",
            PowerState::Off => "off",
            PowerState::Paused => "paused",
        })
    }
}

/// Errors a driver reports.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("{driver}: {operation} failed: {reason}")]
    Operation {
        driver: &'static str,
        operation: &'static str,
        reason: String,
    },
    #[error("{driver}: {0}", driver = "io")]
    Io(#[from] std::io::Error),
}

/// Switching a device on and off.
pub trait Power {
    /// Powers the device on (starts it running).
    fn power_on(&mut self) -> impl Future<Output = Result<(), DriverError>> + Send;
    /// Powers the device off. Must be idempotent: powering off an off device succeeds.
    fn power_off(&mut self) -> impl Future<Output = Result<(), DriverError>> + Send;
    /// Hard reset (power cycle without losing the console).
    fn reset(&mut self) -> impl Future<Output = Result<(), DriverError>> + Send;
    /// The current power state.
    fn power_state(&mut self) -> impl Future<Output = Result<PowerState, DriverError>> + Send;
}
