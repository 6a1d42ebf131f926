//! Fuzz target: bodies of `POST /RPC2` (LAVA's XML-RPC, untrusted).
//!
//! Invariants checked: reading a call never panics (bounded nesting and count, no DTD); every
//! value of a call that reads writes as a response that reads back.
//!
//! Run with `cargo +nightly fuzz run xmlrpc_call fuzz/corpus/xmlrpc_call` from the repository root.
#![no_main]

use controller::lava::xmlrpc::{parse_call, parse_response, response};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(call) = parse_call(text) {
            for value in &call.params {
                let written = response(value);
                assert!(matches!(parse_response(&written), Ok(Ok(_))), "{written}");
            }
        }
    }
});
