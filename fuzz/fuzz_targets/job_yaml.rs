//! Fuzz target: job files and test definitions from arbitrary UTF-8.
//!
//! Invariant checked: `parse_job` and `parse_test_definition` return (Ok or Err) without
//! panicking, and every error displays as `file: field: reason`.
//!
//! Run with `cargo +nightly fuzz run job_yaml fuzz/corpus/job_yaml` from the repository root.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = jobspec::parse_job("fuzz.yaml", text) {
        assert!(e.to_string().starts_with("fuzz.yaml: "));
    }
    if let Err(e) = jobspec::parse_test_definition("fuzz.yaml", text) {
        assert!(e.to_string().starts_with("fuzz.yaml: "));
    }
});
