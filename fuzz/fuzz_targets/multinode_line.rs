//! Fuzz target: console lines from a DUT through the MultiNode call parser and a coordinator.
//!
//! Invariants checked: `parse_call` never panics; an accepted call passes `Call::validate`;
//! a coordinator given the call by both members (and a repeat) never panics, renders every
//! reply and keeps its store within `MAX_GROUP_BYTES`.
//!
//! Run with `cargo +nightly fuzz run multinode_line fuzz/corpus/multinode_line` from the
//! repository root.
#![no_main]

use libfuzzer_sys::fuzz_target;
use multinode::{Coordinator, InstanceId, Member, Roster, limits, parse_call};

fuzz_target!(|data: &[u8]| {
    if let Some(Ok(call)) = parse_call(data) {
        assert_eq!(call.validate(), Ok(()));
        let member = |name: &str, role: &str| Member {
            name: name.into(),
            role: role.into(),
        };
        let mut group = Coordinator::new(Roster {
            members: vec![member("0", "client"), member("1", "server")],
        });
        for (from, seq) in [(0, 1), (1, 1), (0, 1), (0, 2)] {
            for (_, _, reply) in group.call(InstanceId(from), seq, call.clone()) {
                let _ = reply.console_line();
            }
        }
        assert!(group.stored_bytes() <= limits::MAX_GROUP_BYTES);
    }
});
