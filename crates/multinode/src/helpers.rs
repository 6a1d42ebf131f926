//! The MultiNode helper scripts installed in the DUT (filled in below).

use crate::{InstanceId, Roster};

/// The helper scripts for member `me` of `roster`: `(file name, text)`.
pub fn helper_scripts(_roster: &Roster, _me: InstanceId) -> Vec<(&'static str, String)> {
    Vec::new()
}
