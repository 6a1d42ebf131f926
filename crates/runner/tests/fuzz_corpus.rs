//! Replays the signal-parser fuzz corpus as an ordinary test, so every input the fuzzer has
//! kept keeps being checked without nightly.

use dutlab_runner::signals::{MAX_FIELD, Signal, parse_signal};

#[test]
fn signal_corpus_replays_without_panics() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/signal_line");
    let mut seen = 0;
    let mut signals = 0;
    for entry in std::fs::read_dir(&dir).expect("the corpus directory exists") {
        let data = std::fs::read(entry.expect("a corpus entry").path()).expect("a corpus file");
        seen += 1;
        match parse_signal(&data) {
            Some(Signal::TestCase { id, .. }) => {
                assert!(id.len() <= MAX_FIELD);
                signals += 1;
            }
            Some(_) => signals += 1,
            None => {}
        }
    }
    assert!(seen >= 5, "corpus has {seen} files");
    assert_eq!(signals, seen, "every seed in the corpus is a signal");
}
