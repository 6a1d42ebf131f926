//! Replays the `multinode_line` fuzz corpus as an ordinary test (no nightly needed): every
//! kept input goes through `parse_call` and, when accepted, a coordinator, as the fuzz target
//! does.

use multinode::{Coordinator, InstanceId, Member, Roster, limits, parse_call};

#[test]
fn multinode_corpus_replays_without_panics() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/multinode_line");
    let (mut seen, mut accepted, mut refused) = (0, 0, 0);
    for entry in std::fs::read_dir(&dir).expect("the corpus directory exists") {
        let data = std::fs::read(entry.expect("a corpus entry").path()).expect("a corpus file");
        seen += 1;
        match parse_call(&data) {
            Some(Ok(call)) => {
                accepted += 1;
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
            Some(Err(_)) => refused += 1,
            None => {}
        }
    }
    assert!(seen >= 8, "corpus has {seen} files");
    assert!(
        accepted >= 5 && refused >= 2,
        "{accepted} accepted, {refused} refused"
    );
}
