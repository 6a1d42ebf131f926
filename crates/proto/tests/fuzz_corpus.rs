//! Replays the agent-link fuzz corpus as an ordinary test, so every input the fuzzer has kept
//! keeps being checked without nightly.

use dutlab_proto::link::{AgentMessage, Binary, ControllerMessage, LogFrame};

#[test]
fn link_corpus_replays_with_round_trips() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/link_frame");
    let (mut seen, mut frames, mut streams, mut messages) = (0, 0, 0, 0);
    for entry in std::fs::read_dir(&dir).expect("the corpus directory exists") {
        let data = std::fs::read(entry.expect("a corpus entry").path()).expect("a corpus file");
        seen += 1;
        if let Ok(frame) = LogFrame::decode(&data) {
            assert_eq!(frame.encode(), data);
            frames += 1;
        }
        if let Ok(Binary::Stream(stream, payload)) = Binary::decode(&data) {
            assert_eq!(dutlab_proto::stream::encode(stream, payload), data);
            streams += 1;
        }
        if let Ok(text) = std::str::from_utf8(&data) {
            if let Ok(message) = serde_json::from_str::<AgentMessage>(text) {
                let again = serde_json::to_string(&message).expect("serialises");
                let back: AgentMessage = serde_json::from_str(&again).expect("parses back");
                assert_eq!(back, message);
                messages += 1;
            }
            if let Ok(message) = serde_json::from_str::<ControllerMessage>(text) {
                let again = serde_json::to_string(&message).expect("serialises");
                let back: ControllerMessage = serde_json::from_str(&again).expect("parses back");
                assert_eq!(back, message);
                messages += 1;
            }
        }
    }
    assert!(seen >= 12, "corpus has {seen} files");
    assert_eq!(
        frames, 2,
        "the two well-formed frames decode, the broken ones do not"
    );
    assert_eq!(streams, 2, "the two well-formed stream frames decode");
    assert_eq!(
        messages, 7,
        "the six control messages parse (stream-credit goes both ways)"
    );
}
