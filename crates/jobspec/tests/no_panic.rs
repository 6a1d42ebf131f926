//! `parse_job` and `parse_test_definition` never panic: on arbitrary strings, on mutated
//! valid jobs, and on every file of the fuzz seed corpus.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use dutlab_jobspec::{parse_job, parse_test_definition};
use proptest::prelude::*;

const FIXTURES: [&str; 5] = [
    include_str!("fixtures/qemu-smoke.yaml"),
    include_str!("fixtures/kernel-initrd.yaml"),
    include_str!("fixtures/multinode.yaml"),
    include_str!("fixtures/short-timeouts.yaml"),
    include_str!("fixtures/smoke-testdef.yaml"),
];

/// YAML-ish fragments that make mutations reach deeper than random bytes do.
const FRAGMENTS: [&str; 24] = [
    ":", "- ", "\n", "  ", "{", "}", "[", "]", ",", "&a ", "*a", "!!str ", "'", "\"", "#", "---\n",
    "? ", "|\n", ">\n", "~", "0x1F", "1e999", "-1", "\t",
];

fn check(text: &str) {
    let _ = parse_job("p.yaml", text);
    let _ = parse_test_definition("p.yaml", text);
}

/// Applies one edit to `base`, at byte positions snapped to char boundaries.
fn mutate(base: &str, op: u8, pos: usize, len: usize, frag: usize, other: usize) -> String {
    let snap = |mut i: usize| {
        i = i.min(base.len());
        while !base.is_char_boundary(i) {
            i -= 1;
        }
        i
    };
    let at = snap(pos);
    let end = snap(at + len);
    let mut s = String::with_capacity(base.len() + 16);
    match op % 5 {
        // delete a span
        0 => {
            s.push_str(&base[..at]);
            s.push_str(&base[end..]);
        }
        // insert a fragment
        1 => {
            s.push_str(&base[..at]);
            s.push_str(FRAGMENTS[frag % FRAGMENTS.len()]);
            s.push_str(&base[at..]);
        }
        // replace a span with a fragment
        2 => {
            s.push_str(&base[..at]);
            s.push_str(FRAGMENTS[frag % FRAGMENTS.len()]);
            s.push_str(&base[end..]);
        }
        // duplicate a span (duplicate keys, repeated blocks)
        3 => {
            s.push_str(&base[..end]);
            s.push_str(&base[at..]);
        }
        // splice in a span of another fixture
        _ => {
            let donor = FIXTURES[other % FIXTURES.len()];
            let mut d0 = (pos * 7) % donor.len().max(1);
            while !donor.is_char_boundary(d0) {
                d0 -= 1;
            }
            let mut d1 = (d0 + len).min(donor.len());
            while !donor.is_char_boundary(d1) {
                d1 -= 1;
            }
            s.push_str(&base[..at]);
            s.push_str(&donor[d0..d1]);
            s.push_str(&base[at..]);
        }
    }
    s
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_strings(text in any::<String>()) {
        check(&text);
    }

    #[test]
    fn yamlish_strings(text in "[-:{}\\[\\], &*!|>'\"#?a-c0-9\n ]{0,200}") {
        check(&text);
    }

    #[test]
    fn mutated_valid_jobs(
        which in 0usize..FIXTURES.len(),
        edits in proptest::collection::vec(
            (any::<u8>(), any::<usize>(), 0usize..40, any::<usize>(), any::<usize>()),
            1..6,
        ),
    ) {
        let mut text = FIXTURES[which].to_owned();
        for (op, pos, len, frag, other) in edits {
            let pos = pos % (text.len() + 1);
            text = mutate(&text, op, pos, len, frag, other);
        }
        check(&text);
    }
}

#[test]
fn fixtures_parse() {
    for text in &FIXTURES[..4] {
        parse_job("fixture.yaml", text).unwrap();
    }
    parse_test_definition("fixture.yaml", FIXTURES[4]).unwrap();
}

#[test]
fn fuzz_corpus_replays_without_panic() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/job_yaml");
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut count = 0;
    for entry in entries {
        let path = entry.unwrap().path();
        if !path.is_file() {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        // The fuzz target feeds only valid UTF-8 to the parsers; do the same.
        if let Ok(text) = std::str::from_utf8(&bytes) {
            check(text);
        }
        count += 1;
    }
    assert!(count > 0, "no corpus files in {}", dir.display());
}
