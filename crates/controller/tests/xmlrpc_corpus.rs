//! Replays the XML-RPC fuzz corpus as an ordinary test, so every input the fuzzer has kept
//! keeps being checked without nightly: reading never panics, and every value of a call that
//! reads writes as a response that reads back to the same value.

use dutlab_controller::lava::xmlrpc::{parse_call, parse_response, response};

#[test]
fn xmlrpc_corpus_replays_with_round_trips() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/xmlrpc_call");
    let (mut seen, mut calls) = (0, Vec::new());
    for entry in std::fs::read_dir(&dir).expect("the corpus directory exists") {
        let path = entry.expect("a corpus entry").path();
        let data = std::fs::read(&path).expect("a corpus file");
        seen += 1;
        let Ok(text) = std::str::from_utf8(&data) else {
            continue;
        };
        if let Ok(call) = parse_call(text) {
            for value in &call.params {
                let back = parse_response(&response(value)).expect("a response reads");
                assert_eq!(back.as_ref(), Ok(value), "{}", path.display());
            }
            calls.push(call.method);
        }
    }
    calls.sort();
    assert!(seen >= 6, "corpus has {seen} files");
    assert_eq!(
        calls,
        ["m", "m", "scheduler.jobs.list", "scheduler.jobs.submit"],
        "the well-formed calls read, the bomb and the truncated one do not"
    );
}
