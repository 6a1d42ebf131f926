//! Fuzz target: a job's `image_arg` text through the QEMU option allow-list.
//!
//! Invariants checked: `qemu_options::check` never panics; when it accepts an argument
//! vector, every host path in it (`qemu_options::host_paths`) is one of the job's own files.
//!
//! Run with `cargo +nightly fuzz run qemu_options fuzz/corpus/qemu_options` from the repository
//! root.
#![no_main]

use libfuzzer_sys::fuzz_target;
use runner::qemu_options::{JobQemuOptions, OptionScope, check, host_paths};
use std::collections::BTreeSet;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(args) = shell_words::split(text) else {
        return;
    };
    let files: BTreeSet<String> = ["/w/images/rootfs/overlay.qcow2", "/w/images/kernel/file"]
        .into_iter()
        .map(String::from)
        .collect();
    let disks: BTreeSet<String> = ["/w/images/rootfs/overlay.qcow2".to_string()].into();
    let extension = JobQemuOptions::default();
    if check(&args, OptionScope { files: &files, disks: &disks, extension: &extension }).is_ok() {
        for path in host_paths(&args) {
            assert!(files.contains(&path), "accepted host path {path:?} in {args:?}");
        }
    }
});
