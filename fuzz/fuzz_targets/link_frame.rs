//! Fuzz target: bytes from an agent link (binary log and stream frames, JSON control
//! messages).
//!
//! Invariants checked: decoding never panics; a frame that decodes encodes back to the same
//! bytes; a control message that parses serialises and parses back to itself.
//!
//! Run with `cargo +nightly fuzz run link_frame fuzz/corpus/link_frame` from the repository root.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::link::{AgentMessage, Binary, ControllerMessage, LogFrame};

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = LogFrame::decode(data) {
        assert_eq!(frame.encode(), data);
    }
    if let Ok(Binary::Stream(stream, payload)) = Binary::decode(data) {
        assert_eq!(proto::stream::encode(stream, payload), data);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(message) = serde_json::from_str::<AgentMessage>(text) {
            let again = serde_json::to_string(&message).expect("serialises");
            let back: AgentMessage = serde_json::from_str(&again).expect("parses back");
            assert_eq!(back, message);
        }
        if let Ok(message) = serde_json::from_str::<ControllerMessage>(text) {
            let again = serde_json::to_string(&message).expect("serialises");
            let back: ControllerMessage = serde_json::from_str(&again).expect("parses back");
            assert_eq!(back, message);
        }
    }
});
