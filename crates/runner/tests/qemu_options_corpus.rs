//! Replays the QEMU option allow-list fuzz corpus as an ordinary test (no nightly needed):
//! no input panics, every accepted input names only the job's own files, and the seeds that
//! reach the host are refused.
#![allow(clippy::unwrap_used)]

use dutlab_runner::qemu_options::{JobQemuOptions, OptionScope, check, host_paths};
use std::collections::BTreeSet;

#[test]
fn qemu_options_corpus_replays_and_host_reaching_seeds_are_refused() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/qemu_options");
    let files: BTreeSet<String> = ["/w/images/rootfs/overlay.qcow2", "/w/images/kernel/file"]
        .into_iter()
        .map(String::from)
        .collect();
    let disks: BTreeSet<String> = ["/w/images/rootfs/overlay.qcow2".to_string()].into();
    let extension = JobQemuOptions::default();
    let scope = OptionScope {
        files: &files,
        disks: &disks,
        extension: &extension,
    };
    let (mut seen, mut accepted) = (0, Vec::new());
    for entry in std::fs::read_dir(&dir).expect("the corpus directory exists") {
        let path = entry.expect("a corpus entry").path();
        let data = std::fs::read(&path).expect("a corpus file");
        seen += 1;
        let Ok(text) = std::str::from_utf8(&data) else {
            continue;
        };
        let Ok(args) = shell_words::split(text) else {
            continue;
        };
        if check(&args, scope).is_ok() {
            for p in host_paths(&args) {
                assert!(files.contains(&p), "{}: accepted {p:?}", path.display());
            }
            accepted.push(path.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    assert!(seen >= 10, "corpus has {seen} files");
    accepted.sort();
    assert_eq!(
        accepted,
        [
            "double-dash-fwcfg.seed",
            "drive-own-image.seed",
            "kernel-append.seed",
            "netdev-user.seed"
        ]
    );
}
