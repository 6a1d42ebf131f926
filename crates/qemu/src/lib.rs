//! QEMU virtual DUT.
pub mod image;
