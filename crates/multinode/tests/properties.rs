//! Properties of the parser and the coordinator over random input.
//!
//! - `parse_call` never panics on any bytes, and what it accepts passes `Call::validate`.
//! - Replaying a random sequence of calls into a fresh coordinator gives an equal coordinator
//!   and the same replies (the controller persists calls and replays them after a restart).
//! - Repeating any earlier `(member, seq)` never changes state; repeating a member's latest
//!   answered call gives its reply again.
//! - The store never exceeds its bound, each member waits on at most one call, and every
//!   reply goes to a member of the roster for a seq that member used.

use multinode::{
    Call, Coordinator, InstanceId, Member, MessageId, Reply, Roster, limits, parse_call,
};
use proptest::prelude::*;

fn roster(roles: &[u8]) -> Roster {
    Roster {
        members: roles
            .iter()
            .enumerate()
            .map(|(n, r)| Member {
                name: format!("9.{n}"),
                role: format!("r{r}"),
            })
            .collect(),
    }
}

fn id(n: u8) -> MessageId {
    MessageId::new(&format!("m{n}")).expect("valid id")
}

fn call() -> impl Strategy<Value = Call> {
    let pairs = proptest::collection::vec(("[a-c]", "[ -;=?-~]{0,8}"), 0..4);
    prop_oneof![
        (0u8..3, pairs).prop_map(|(n, data)| Call::Send { id: id(n), data }),
        (0u8..3).prop_map(|n| Call::Wait { id: id(n) }),
        (0u8..3, proptest::option::of(0u8..3)).prop_map(|(n, r)| Call::WaitAll {
            id: id(n),
            role: r.map(|r| format!("r{r}")),
        }),
        (0u8..3).prop_map(|n| Call::Sync { id: id(n) }),
    ]
}

/// Calls with their member and a seq: mostly the member's next seq, sometimes a repeat of
/// its latest or an older one.
fn script(members: usize) -> impl Strategy<Value = Vec<(InstanceId, u64, Call)>> {
    proptest::collection::vec((0..members, 0u8..10, call()), 0..60).prop_map(move |steps| {
        let mut seq = vec![0u64; members];
        steps
            .into_iter()
            .map(|(m, how, call)| {
                let s = match how {
                    0 => seq[m],                   // a repeat of the latest seq
                    1 => seq[m].saturating_sub(2), // an older one
                    _ => {
                        seq[m] += 1;
                        seq[m]
                    }
                };
                (InstanceId(m as u32), s, call)
            })
            .collect()
    })
}

fn group() -> impl Strategy<Value = (Roster, Vec<(InstanceId, u64, Call)>)> {
    proptest::collection::vec(0u8..3, 1..5)
        .prop_flat_map(|roles| (Just(roster(&roles)), script(roles.len())))
}

type Replies = Vec<Vec<(InstanceId, u64, Reply)>>;

fn run(roster: &Roster, script: &[(InstanceId, u64, Call)]) -> (Coordinator, Replies) {
    let mut c = Coordinator::new(roster.clone());
    let replies = script
        .iter()
        .map(|(m, s, call)| c.call(*m, *s, call.clone()))
        .collect();
    (c, replies)
}

proptest! {
    #[test]
    fn parse_call_never_panics(line in proptest::collection::vec(any::<u8>(), 0..400)) {
        if let Some(Ok(call)) = parse_call(&line) {
            prop_assert_eq!(call.validate(), Ok(()));
        }
    }

    #[test]
    fn parse_call_never_panics_on_near_calls(
        name in "(SEND|WAIT|WAIT_ALL|SYNC|send|X)",
        args in "[ -~\t\u{80}-\u{10ffff}]{0,200}",
        tail in proptest::collection::vec(any::<u8>(), 0..20),
    ) {
        let mut line = format!("<LAVA_MULTI_NODE> <LAVA_{name} {args}>").into_bytes();
        line.extend(tail);
        match parse_call(&line) {
            None => prop_assert!(args.is_empty() || args.starts_with('>'), "{:?}", args),
            Some(Ok(call)) => prop_assert_eq!(call.validate(), Ok(())),
            Some(Err(_)) => {}
        }
    }

    #[test]
    fn accepted_sends_round_trip_through_their_line(
        n in 0u8..3,
        data in proptest::collection::vec(("[a-z_][a-z0-9_.-]{0,6}", "[!-;=?-~]([ -;=?-~]{0,10}[!-;=?-~])?"), 0..5),
    ) {
        let pairs: Vec<String> = data.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let line = format!("<LAVA_MULTI_NODE> <LAVA_SEND m{n} {}>", pairs.join(" "));
        let Some(Ok(Call::Send { id: got, data: got_data })) = parse_call(line.as_bytes()) else {
            return Err(TestCaseError::fail(format!("refused: {line}")));
        };
        prop_assert_eq!(got, id(n));
        // A value holding " key=" text splits there, as in LAVA; otherwise every pair is kept.
        let splits = data.iter().any(|(_, v)| v.split(' ').skip(1).any(|w| {
            w.split_once('=').is_some_and(|(k, _)| {
                k.chars().next().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
                    && k.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
            })
        }));
        if !splits {
            let mut expected: Vec<(String, String)> = Vec::new();
            for (k, v) in &data {
                match expected.iter_mut().find(|(ek, _)| ek == k) {
                    Some(e) => e.1 = v.clone(),
                    None => expected.push((k.clone(), v.clone())),
                }
            }
            prop_assert_eq!(got_data, expected);
        }
    }

    #[test]
    fn replay_gives_the_same_state_and_replies((roster, script) in group()) {
        let (a, ra) = run(&roster, &script);
        let (b, rb) = run(&roster, &script);
        prop_assert_eq!(&a, &b);
        prop_assert_eq!(ra, rb);
        // Through serde too, as a persisted snapshot would be.
        let json = serde_json::to_string(&a).expect("serialises");
        let back: Coordinator = serde_json::from_str(&json).expect("deserialises");
        prop_assert_eq!(back, a);
    }

    #[test]
    fn a_duplicate_never_changes_state((roster, script) in group(), pick in any::<prop::sample::Index>()) {
        let (mut c, _) = run(&roster, &script);
        if script.is_empty() {
            return Ok(());
        }
        let i = pick.index(script.len());
        let (m, s, call) = script[i].clone();
        let before = c.clone();
        let again = c.call(m, s, call);
        prop_assert_eq!(&c, &before);
        // The latest call of that member, answered: its own reply again.
        let latest_seq = script.iter().filter(|(mm, _, _)| *mm == m).map(|(_, s, _)| *s).max();
        if Some(s) < latest_seq {
            prop_assert!(again.is_empty());
        }
        for (to, seq, _) in &again {
            prop_assert_eq!((*to, *seq), (m, s));
        }
    }

    #[test]
    fn bounds_and_addressing_hold((roster, script) in group()) {
        let mut c = Coordinator::new(roster.clone());
        let mut used: Vec<Vec<u64>> = vec![Vec::new(); roster.len()];
        for (m, s, call) in script {
            used[m.index()].push(s);
            for (to, seq, _) in c.call(m, s, call) {
                prop_assert!(to.index() < roster.len());
                prop_assert!(used[to.index()].contains(&seq));
            }
            prop_assert!(c.stored_bytes() <= limits::MAX_GROUP_BYTES);
            let waiting = c.waiting();
            let mut members: Vec<_> = waiting.iter().map(|(m, _)| *m).collect();
            members.dedup();
            prop_assert_eq!(members.len(), waiting.len());
        }
    }
}
