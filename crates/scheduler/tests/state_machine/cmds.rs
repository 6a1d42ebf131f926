//! The commands the state machine test draws: what a lab's agents, people and admins do,
//! with the weights of the strategy that draws them.

use super::*;

/// How an agent message names its lease.
#[derive(Clone, Debug)]
pub(super) enum Epochs {
    Right,
    Older,
    Newer,
}

#[derive(Clone, Debug)]
pub(super) enum Cmd {
    Submit {
        /// A health check of this device (an index of DEVICES) instead.
        check: Option<usize>,
        ty: usize,
        tags: u8,
        priority: u8,
        owner: Option<usize>,
    },
    Request {
        who: usize,
        /// A device by name (an index of DEVICES), else a type and tags.
        device: Option<usize>,
        ty: usize,
        tags: u8,
        priority: u8,
        ttl: u64,
    },
    Renew {
        pick: usize,
        ttl: u64,
    },
    Release {
        pick: usize,
        admin: bool,
    },
    Connect {
        agent: usize,
        devices: u8,
        tags: u16,
        held: u32,
    },
    Disconnect {
        agent: usize,
    },
    Heartbeat {
        agent: usize,
    },
    /// The agent went quiet, or was heard again.
    Silent {
        agent: usize,
    },
    Heard {
        agent: usize,
    },
    Started {
        pick: usize,
        epochs: Epochs,
    },
    Finished {
        pick: usize,
        epochs: Epochs,
        outcome: usize,
    },
    StartRefused {
        pick: usize,
        epochs: Epochs,
    },
    Cancel {
        pick: usize,
    },
    DeviceReady {
        agent: usize,
        device: usize,
    },
    SetState {
        device: usize,
        state: usize,
        now: bool,
    },
    Tags {
        device: usize,
        add: u8,
        remove: u8,
    },
    Tick,
    Restart,
    /// A MultiNode group: each role a device type index and a tags mask.
    SubmitGroup {
        roles: Vec<(usize, u8)>,
        priority: u8,
        owner: Option<usize>,
    },
}

fn epochs() -> impl Strategy<Value = Epochs> {
    prop_oneof![8 => Just(Epochs::Right), 1 => Just(Epochs::Older), 1 => Just(Epochs::Newer)]
}

pub(super) fn cmd() -> impl Strategy<Value = Cmd> {
    prop_oneof![
        6 => (0..TYPES.len(), 0u8..4, prop_oneof![0u8..3, 0u8..=100], proptest::option::of(0..PEOPLE.len()))
            .prop_map(|(ty, tags, priority, owner)| Cmd::Submit { check: None, ty, tags, priority, owner }),
        2 => (0..DEVICES.len()).prop_map(|d| Cmd::Submit { check: Some(d), ty: 0, tags: 0, priority: 100, owner: None }),
        4 => (0..PEOPLE.len(), proptest::option::of(0..DEVICES.len() + 1), 0..TYPES.len(), 0u8..4, 0u8..3, prop_oneof![1u64..3_000, 0u64..6_000])
            .prop_map(|(who, device, ty, tags, priority, ttl)| Cmd::Request { who, device, ty, tags, priority, ttl }),
        2 => (any::<usize>(), 0u64..3_000).prop_map(|(pick, ttl)| Cmd::Renew { pick, ttl }),
        2 => (any::<usize>(), any::<bool>()).prop_map(|(pick, admin)| Cmd::Release { pick, admin }),
        3 => (0..AGENTS.len(), any::<u8>(), any::<u16>(), prop_oneof![Just(u32::MAX), Just(0), any::<u32>()])
            .prop_map(|(agent, devices, tags, held)| Cmd::Connect { agent, devices, tags, held }),
        2 => (0..AGENTS.len()).prop_map(|agent| Cmd::Disconnect { agent }),
        2 => (0..AGENTS.len()).prop_map(|agent| Cmd::Heartbeat { agent }),
        1 => (0..AGENTS.len()).prop_map(|agent| Cmd::Silent { agent }),
        1 => (0..AGENTS.len()).prop_map(|agent| Cmd::Heard { agent }),
        3 => (any::<usize>(), epochs()).prop_map(|(pick, epochs)| Cmd::Started { pick, epochs }),
        4 => (any::<usize>(), epochs(), 0..Outcome::ALL.len())
            .prop_map(|(pick, epochs, outcome)| Cmd::Finished { pick, epochs, outcome }),
        2 => (any::<usize>(), epochs()).prop_map(|(pick, epochs)| Cmd::StartRefused { pick, epochs }),
        2 => any::<usize>().prop_map(|pick| Cmd::Cancel { pick }),
        2 => (0..AGENTS.len(), 0..DEVICES.len() + 1)
            .prop_map(|(agent, device)| Cmd::DeviceReady { agent, device }),
        3 => (0..DEVICES.len() + 1, 0..SET.len(), any::<bool>())
            .prop_map(|(device, state, now)| Cmd::SetState { device, state, now }),
        1 => (0..DEVICES.len() + 1, 0u8..4, 0u8..4)
            .prop_map(|(device, add, remove)| Cmd::Tags { device, add, remove }),
        3 => Just(Cmd::Tick),
        1 => Just(Cmd::Restart),
        3 => (proptest::collection::vec((0..TYPES.len(), 0u8..4), 1..4), 0u8..3, proptest::option::of(0..PEOPLE.len()))
            .prop_map(|(roles, priority, owner)| Cmd::SubmitGroup { roles, priority, owner }),
    ]
}
