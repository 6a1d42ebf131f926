use super::*;
use crate::{Member, parse_call};

fn roster(roles: &[&str]) -> Roster {
    Roster {
        members: roles
            .iter()
            .enumerate()
            .map(|(n, role)| Member {
                name: format!("17.{n}"),
                role: role.to_string(),
            })
            .collect(),
    }
}

fn c(line: &str) -> Call {
    parse_call(format!("<LAVA_MULTI_NODE> <LAVA_{line}>").as_bytes())
        .expect("a multinode line")
        .expect("a valid call")
}

const A: InstanceId = InstanceId(0);
const B: InstanceId = InstanceId(1);
const C: InstanceId = InstanceId(2);

/// The console lines of `due`, with their member and seq.
fn lines(due: Vec<Due>) -> Vec<(u32, u64, Option<String>)> {
    due.into_iter()
        .map(|(m, seq, r)| (m.0, seq, r.console_line()))
        .collect()
}

fn line(m: InstanceId, seq: u64, text: &str) -> (u32, u64, Option<String>) {
    (m.0, seq, Some(text.to_string()))
}

fn sent(m: InstanceId, seq: u64) -> (u32, u64, Option<String>) {
    (m.0, seq, None)
}

#[test]
fn wait_blocks_until_any_member_sends_and_late_waits_return_at_once() {
    let mut g = Coordinator::new(roster(&["server", "client"]));
    assert!(g.call(B, 1, c("WAIT ready")).is_empty());
    assert_eq!(g.waiting(), [(B, 1)]);
    assert_eq!(
        lines(g.call(A, 1, c("SEND ready ip=10.0.0.1 token=s3cret"))),
        [
            sent(A, 1),
            line(
                B,
                1,
                "<LAVA_WAIT_COMPLETE 17.0:ip=10.0.0.1 17.0:token=s3cret>"
            )
        ]
    );
    assert!(g.waiting().is_empty());
    // The message stays for the group's life: later waits, by anyone, return at once.
    assert_eq!(
        lines(g.call(B, 2, c("WAIT ready"))),
        [line(
            B,
            2,
            "<LAVA_WAIT_COMPLETE 17.0:ip=10.0.0.1 17.0:token=s3cret>"
        )]
    );
    assert_eq!(
        lines(g.call(A, 2, c("WAIT ready"))),
        [line(
            A,
            2,
            "<LAVA_WAIT_COMPLETE 17.0:ip=10.0.0.1 17.0:token=s3cret>"
        )],
        "the sender sees its own message"
    );
}

#[test]
fn data_accumulates_across_senders_and_a_senders_resend_replaces_its_own() {
    let mut g = Coordinator::new(roster(&["a", "b", "c"]));
    g.call(B, 1, c("SEND m x=1 y=2"));
    g.call(A, 1, c("SEND m x=0"));
    assert_eq!(
        lines(g.call(C, 1, c("WAIT m"))),
        [line(
            C,
            1,
            "<LAVA_WAIT_COMPLETE 17.1:x=1 17.1:y=2 17.0:x=0>"
        )]
    );
    // B sends again: its data is replaced (a Python dict update keyed by sender), its place kept.
    g.call(B, 2, c("SEND m z=3"));
    assert_eq!(
        lines(g.call(C, 2, c("WAIT m"))),
        [line(C, 2, "<LAVA_WAIT_COMPLETE 17.1:z=3 17.0:x=0>")]
    );
    g.call(C, 3, c("SEND m"));
    assert_eq!(
        lines(g.call(C, 4, c("WAIT m"))),
        [line(C, 4, "<LAVA_WAIT_COMPLETE 17.1:z=3 17.0:x=0>")],
        "a send without data adds a sender but nothing to the line"
    );
}

#[test]
fn wait_all_without_role_waits_for_every_member_and_nacks_an_unsent_id() {
    let mut g = Coordinator::new(roster(&["a", "b", "c"]));
    assert_eq!(
        lines(g.call(A, 1, c("WAIT_ALL done"))),
        [line(A, 1, "<LAVA_WAIT_ALL_COMPLETE nack>")],
        "LAVA's coordinator answers nack for an id nobody sent"
    );
    g.call(A, 2, c("SEND done a=1"));
    assert!(g.call(A, 3, c("WAIT_ALL done")).is_empty());
    g.call(B, 1, c("SEND done"));
    assert!(g.call(B, 2, c("WAIT_ALL done")).is_empty());
    assert_eq!(g.waiting(), [(A, 3), (B, 2)]);
    assert_eq!(
        lines(g.call(C, 1, c("SEND done c=3"))),
        [
            sent(C, 1),
            line(A, 3, "<LAVA_WAIT_ALL_COMPLETE 17.0:a=1 17.2:c=3>"),
            line(B, 2, "<LAVA_WAIT_ALL_COMPLETE 17.0:a=1 17.2:c=3>"),
        ]
    );
    assert_eq!(
        lines(g.call(C, 2, c("WAIT_ALL done"))),
        [line(C, 2, "<LAVA_WAIT_ALL_COMPLETE 17.0:a=1 17.2:c=3>")]
    );
}

#[test]
fn wait_all_with_role_waits_for_every_member_of_that_role() {
    let mut g = Coordinator::new(roster(&["server", "server", "client"]));
    // Not yet sent by anyone: with a role, it waits (no nack).
    assert!(g.call(C, 1, c("WAIT_ALL up server")).is_empty());
    assert_eq!(lines(g.call(A, 1, c("SEND up ip=1"))), [sent(A, 1)]);
    assert_eq!(g.waiting(), [(C, 1)], "one server of two is not enough");
    assert_eq!(
        lines(g.call(B, 1, c("SEND up ip=2"))),
        [
            sent(B, 1),
            line(C, 1, "<LAVA_WAIT_ALL_COMPLETE 17.0:ip=1 17.1:ip=2>")
        ]
    );
    // The reply carries every sender of the id, whatever its role.
    let mut g = Coordinator::new(roster(&["server", "client"]));
    g.call(B, 1, c("SEND up from=client"));
    assert!(g.call(B, 2, c("WAIT_ALL up server")).is_empty());
    assert_eq!(
        lines(g.call(A, 1, c("SEND up from=server"))),
        [
            sent(A, 1),
            line(
                B,
                2,
                "<LAVA_WAIT_ALL_COMPLETE 17.1:from=client 17.0:from=server>"
            )
        ]
    );
    assert_eq!(
        lines(g.call(A, 2, c("WAIT_ALL up nobody"))),
        [line(A, 2, "<LAVA_WAIT_ALL_COMPLETE nack>")]
    );
}

#[test]
fn sync_waits_for_every_member_and_the_id_can_be_used_again() {
    let mut g = Coordinator::new(roster(&["a", "b", "b"]));
    assert!(g.call(A, 1, c("SYNC ready")).is_empty());
    assert!(g.call(C, 1, c("SYNC ready")).is_empty());
    // A send of the same id is a message, not an arrival at the barrier.
    g.call(B, 1, c("SEND ready"));
    assert_eq!(g.waiting(), [(A, 1), (C, 1)]);
    assert_eq!(
        lines(g.call(B, 2, c("SYNC ready"))),
        [
            line(A, 1, "<LAVA_SYNC_COMPLETE>"),
            line(B, 2, "<LAVA_SYNC_COMPLETE>"),
            line(C, 1, "<LAVA_SYNC_COMPLETE>"),
        ]
    );
    // A second round of the same barrier.
    assert!(g.call(B, 3, c("SYNC ready")).is_empty());
    assert_eq!(g.waiting(), [(B, 3)]);
    assert_eq!(
        g.stored_bytes(),
        "ready".len() * 2,
        "one message id and one barrier id"
    );
    // A group of one passes its barriers at once.
    let mut g = Coordinator::new(roster(&["solo"]));
    assert_eq!(
        lines(g.call(A, 1, c("SYNC x"))),
        [line(A, 1, "<LAVA_SYNC_COMPLETE>")]
    );
}

#[test]
fn an_abandoned_sync_still_counts_but_gets_no_reply() {
    let mut g = Coordinator::new(roster(&["a", "b"]));
    assert!(g.call(A, 1, c("SYNC s")).is_empty());
    // A's runner timed out and went on: its next call abandons the sync.
    assert!(g.call(A, 2, c("WAIT other")).is_empty());
    assert_eq!(
        lines(g.call(B, 1, c("SYNC s"))),
        [line(B, 1, "<LAVA_SYNC_COMPLETE>")]
    );
    assert_eq!(g.waiting(), [(A, 2)]);
}

#[test]
fn duplicates_change_nothing_and_repeat_their_reply() {
    let mut g = Coordinator::new(roster(&["a", "b"]));
    assert!(g.call(B, 7, c("WAIT m")).is_empty());
    let before = g.clone();
    assert!(
        g.call(B, 7, c("WAIT m")).is_empty(),
        "still waiting: nothing yet"
    );
    assert_eq!(g, before);
    let due = g.call(A, 1, c("SEND m k=v"));
    assert_eq!(due.len(), 2);
    let after = g.clone();
    // A reconnect repeats both calls: the same replies, no new state, no second delivery.
    assert_eq!(lines(g.call(A, 1, c("SEND m k=v"))), [sent(A, 1)]);
    assert_eq!(
        lines(g.call(B, 7, c("WAIT m"))),
        [line(B, 7, "<LAVA_WAIT_COMPLETE 17.0:k=v>")]
    );
    assert_eq!(g, after);
    // A stale call (older seq than the latest) is ignored.
    assert!(g.call(B, 3, c("SEND m k=stale")).is_empty());
    assert_eq!(g, after);
    // A member outside the roster is ignored.
    assert!(g.call(InstanceId(9), 1, c("SEND m")).is_empty());
    assert_eq!(g, after);
}

#[test]
fn invalid_calls_built_in_code_are_nacked() {
    let mut g = Coordinator::new(roster(&["a"]));
    let bad = Call::Send {
        id: MessageId::new("m").expect("valid"),
        data: vec![("k".into(), "<x>".into())],
    };
    let due = g.call(A, 1, bad);
    assert_eq!(
        due,
        [(
            A,
            1,
            Reply::Nack {
                call: CallKind::Send,
                reason: NackReason::Invalid
            }
        )]
    );
    assert!(due[0].2.ends_test());
    assert_eq!(g.stored_bytes(), 0);
}

#[test]
fn the_group_store_is_bounded() {
    let mut g = Coordinator::new(roster(&["a", "b"]));
    let value = "v".repeat(limits::MAX_VALUE);
    let pairs: Vec<String> = (0..limits::MAX_PAIRS)
        .map(|n| format!("k{n:02}={value}"))
        .collect();
    let per_send = limits::MAX_PAIRS * (3 + limits::MAX_VALUE);
    let mut seq = 0;
    let mut refused = None;
    for n in 0.. {
        seq += 1;
        let due = g.call(A, seq, c(&format!("SEND m{n:03} {}", pairs.join(" "))));
        if due[0].2.is_nack() {
            refused = Some(due[0].2.clone());
            break;
        }
        assert!(g.stored_bytes() <= limits::MAX_GROUP_BYTES);
    }
    assert_eq!(
        refused,
        Some(Reply::Nack {
            call: CallKind::Send,
            reason: NackReason::GroupFull
        })
    );
    assert!(g.stored_bytes() + per_send + 4 > limits::MAX_GROUP_BYTES);
    // A resend that shrinks a sender's data still fits; a new barrier id past the cap does not.
    seq += 1;
    assert_eq!(lines(g.call(A, seq, c("SEND m000 k=v"))), [sent(A, seq)]);
    // Abandoned barrier arrivals stay (A never comes): barrier ids fill the store too.
    let mut n = 0;
    loop {
        seq += 1;
        n += 1;
        let id = format!("{n:0>500}");
        let due = g.call(B, seq, c(&format!("SYNC {id}")));
        if let Some((_, _, Reply::Nack { call, reason })) = due.first() {
            assert_eq!((*call, *reason), (CallKind::Sync, NackReason::GroupFull));
            break;
        }
        assert!(g.stored_bytes() <= limits::MAX_GROUP_BYTES);
    }
    assert_eq!(
        lines(g.call(B, seq, c("SYNC again"))),
        [line(B, seq, "<LAVA_SYNC_COMPLETE nack>")],
        "the duplicate repeats the nack"
    );
}

mod no_lost_wakeups {
    use super::*;
    use proptest::prelude::*;

    fn call() -> impl Strategy<Value = Call> {
        let id = (0u8..3).prop_map(|n| MessageId::new(&format!("m{n}")).expect("valid"));
        let pairs = proptest::collection::vec(("[ab]", "[a-z]{0,3}"), 0..3);
        prop_oneof![
            (id.clone(), pairs).prop_map(|(id, data)| Call::Send { id, data }),
            id.clone().prop_map(|id| Call::Wait { id }),
            (id.clone(), proptest::option::of("r[0-2]"))
                .prop_map(|(id, role)| Call::WaitAll { id, role }),
            id.prop_map(|id| Call::Sync { id }),
        ]
    }

    /// Whether `member`'s waiting call should already have been answered.
    fn satisfied(g: &Coordinator, member: InstanceId, call: &Call) -> bool {
        match call {
            Call::Wait { id } => g.messages.contains_key(id),
            Call::WaitAll { id, role } => g.all_sent(id, role.as_deref()),
            Call::Sync { id } => g.barriers.get(id).is_some_and(|arrived| {
                arrived.len() >= g.roster.len() && arrived.contains(&member)
            }),
            Call::Send { .. } => true,
        }
    }

    proptest! {
        /// After every call, no member waits on a condition that already holds, and a waiting
        /// sync's member is counted at its barrier.
        #[test]
        fn no_waiter_is_left_behind(
            roles in proptest::collection::vec(0u8..3, 1..5),
            steps in proptest::collection::vec((0usize..4, call()), 0..80),
        ) {
            let roles: Vec<String> = roles.iter().map(|r| format!("r{r}")).collect();
            let refs: Vec<&str> = roles.iter().map(String::as_str).collect();
            let mut g = Coordinator::new(roster(&refs));
            let mut seq = vec![0u64; refs.len()];
            for (m, call) in steps {
                let m = m % refs.len();
                seq[m] += 1;
                g.call(InstanceId(m as u32), seq[m], call);
                for (member, _) in g.waiting() {
                    let latest = g.latest[member.index()].as_ref().expect("a waiting call");
                    prop_assert!(!satisfied(&g, member, &latest.call), "{:?} waits on {:?}", member, latest.call);
                    if let Call::Sync { id } = &latest.call {
                        prop_assert!(g.barriers.get(id).is_some_and(|a| a.contains(&member)));
                    }
                }
                let barrier_bytes: usize = g.barriers.keys().map(|id| id.as_str().len()).sum();
                let message_bytes: usize = g
                    .messages
                    .iter()
                    .map(|(id, senders)| id.as_str().len() + senders.iter().map(|(_, d)| pairs_bytes(d)).sum::<usize>())
                    .sum();
                prop_assert_eq!(g.stored_bytes(), barrier_bytes + message_bytes);
            }
        }
    }
}

#[test]
fn is_new_tells_a_new_call_from_a_repeat_a_stale_one_and_a_stranger() {
    let mut co = Coordinator::new(roster(&["a", "b"]));
    assert!(co.is_new(A, 1));
    co.call(A, 2, c("SEND x"));
    assert!(!co.is_new(A, 2), "a repeat");
    assert!(!co.is_new(A, 1), "stale");
    assert!(co.is_new(A, 3));
    assert!(co.is_new(B, 1));
    assert!(!co.is_new(C, 1), "outside the roster");
    // A stored coordinator answers a repeat as the live one did.
    let wait = co.call(B, 1, c("WAIT x"));
    let stored: Coordinator =
        serde_json::from_str(&serde_json::to_string(&co).expect("serialises")).expect("parses");
    assert_eq!(stored, co);
    assert_eq!(stored.clone().call(B, 1, c("WAIT x")), wait);
}
