//! Random command sequences against the scheduler, checking its invariants after every step:
//!
//! - a device holds at most one live lease, a job at most one; a live lease's job is assigned,
//!   running or canceling (and points back at it), its device busy with the lease's epoch;
//! - device states are derived as documented; the idle index holds exactly the idle devices;
//! - a finished job stays finished with the same outcome and reason;
//! - every `LeaseGranted` is followed by at most one `LeaseReleased`, none before it, and the
//!   granted-but-not-released leases are exactly the live ones; lease ids and device epochs
//!   only rise;
//! - replaying every event so far gives a scheduler equal to the live one, and events
//!   round-trip through JSON;
//! - no queued job fits an idle device, and a grant never passes over a queued job that comes
//!   first in serving order and fits the device;
//! - a refused command changes nothing; `tick` ends leases exactly when `next_deadline` is due;
//! - after `agent_connected`, the agent's live leases are those it holds (and those people
//!   hold: agents know nothing of them), and its devices that need a check are those whose
//!   unconfirmed lease it holds;
//! - jobs and people's lease requests share one queue in the order of a model computed here
//!   from the events alone (priority, then fair-share round, then arrival);
//! - a person's lease is held exactly while its grant is live, never past the cap after its
//!   grant; renewals move its deadline as the model says; a restart keeps its deadline; an
//!   ended one stays ended; and once time passes every cap, none is held (no leak);
//! - a device set maintenance, retired or bad is never granted and shows that state once it
//!   holds no lease; setting it with `Interrupt::Now` cancels its job or ends its person's
//!   lease; infra errors in a row counted from the events alone match the scheduler's count,
//!   and reaching `quarantine_after` of them leaves the device out of service;
//! - a device's tags are its agent's with the admins' edits (modelled from the events);
//! - a health check that ends other than passed or canceled leaves its device `bad` (unless
//!   an admin's maintenance or retired holds it); one that passes leaves it not `bad`.
//! - a person's grant always ends needs-check (its agent must confirm the DUT is off), and
//!   its device then takes no work until the agent confirms; its SSH keys replay with it.
//! - MultiNode groups (`state_machine/groups.rs`): a group's sub-jobs are granted all in one
//!   batch or not at all (no partial grant ever: either every sub-job is queued or none is);
//!   a queued group cannot be placed whole on the idle devices (so a waiting group never
//!   holds a device another waiter could use, and groups cannot deadlock); a group takes one
//!   place in the queue, with one arrival and one fair-share round; a sub-job that ended
//!   infra-error or canceled leaves none of its group running without a cancel request.

use dutlab_scheduler::{
    AgentState, Config, DeviceInfo, DeviceState, Epoch, Event, Holder, Interrupt, JobId,
    JobPurpose, JobSpec, JobState, LeaseEnd, LeaseId, LeaseIds, LeaseKey, Millis, Outcome,
    PersonHolder, PersonLeaseId, PersonLeaseState, PrincipalId, Refusal, Scheduler, StateNote,
    Waiter, Want,
};
use proptest::prelude::*;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// The invariants checked after every step (the list in the module docs).
#[path = "state_machine/checks.rs"]
mod checks;
/// MultiNode groups: submitting them and their invariants.
#[path = "state_machine/groups.rs"]
mod groups;
/// What each batch of events means for the model.
#[path = "state_machine/record.rs"]
mod record;

/// The commands the test draws, and their strategies.
#[path = "state_machine/cmds.rs"]
mod cmds;
use cmds::{Cmd, Epochs, cmd};

const AGENTS: [&str; 3] = ["a0", "a1", "a2"];
const DEVICES: [(&str, &str); 6] = [
    ("d0", "qemu"),
    ("d1", "qemu"),
    ("d2", "qemu"),
    ("d3", "bbb"),
    ("d4", "bbb"),
    ("d5", "qemu"),
];
const TYPES: [&str; 3] = ["qemu", "bbb", "rpi"];
const TAGS: [&str; 2] = ["usb", "gpu"];
const PEOPLE: [(u64, &str); 3] = [(1, "alice"), (2, "bob"), (3, "carol")];
/// How long renewals may keep a person's lease after its grant.
const CAP: u64 = 4_000;

/// The serving order of a waiter, as the model computes it.
type Key = (Reverse<u8>, u64, u64);

fn config() -> Config {
    Config {
        // Keyed ids, as the controller uses them: replay must give back the same ids.
        lease_ids: LeaseIds::Keyed(LeaseKey([7; 32])),
        lease_ttl: Duration::from_millis(5_000),
        disconnect_grace: Duration::from_millis(2_000),
        cancel_grace: Duration::from_millis(1_500),
        quarantine_after: QUARANTINE,
    }
}

/// The SSH keys a person's request brings (none for some, so both shapes replay).
fn keys(who: usize) -> Vec<String> {
    (0..who)
        .map(|i| {
            format!(
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA{i:04} {}",
                PEOPLE[who].1
            )
        })
        .collect()
}

/// Infra errors in a row that make a device bad.
const QUARANTINE: u32 = 2;
/// What `SetState` asks for (busy is not settable).
const SET: [DeviceState; 5] = [
    DeviceState::Idle,
    DeviceState::Maintenance,
    DeviceState::Retired,
    DeviceState::Bad,
    DeviceState::Busy,
];

fn tags(mask: u8) -> Vec<String> {
    TAGS.iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0)
        .map(|(_, t)| t.to_string())
        .collect()
}

struct Harness {
    s: Scheduler,
    log: Vec<Event>,
    now: u64,
    next_job: u64,
    /// Every grant so far: lease, epoch, device.
    granted: Vec<(LeaseId, Epoch, String)>,
    released: BTreeMap<LeaseId, usize>,
    /// Grants held by people.
    person_grants: BTreeSet<LeaseId>,
    finished: BTreeMap<JobId, (Outcome, String)>,
    epochs: BTreeMap<String, Epoch>,
    /// From the events: when each disconnected agent went away, when each cancel was asked.
    gone: BTreeMap<String, Millis>,
    /// From the events: connected agents that went silent and were not heard since.
    silent: BTreeSet<String>,
    cancels: BTreeMap<JobId, Millis>,
    next_person: u64,
    /// People's leases that ended, and how.
    ended: BTreeMap<PersonLeaseId, LeaseEnd>,
    /// The queue model: each waiter's key, the highest round served, each user's last round.
    keys: BTreeMap<Waiter, Key>,
    served: u64,
    rounds: BTreeMap<Option<PrincipalId>, u64>,
    arrivals: u64,
    /// From the events: devices out of service, infra errors in a row, the device of each
    /// job that holds or held a lease, and the admins' tag edits (added, removed).
    out: BTreeMap<String, DeviceState>,
    streak: BTreeMap<String, u32>,
    ran_on: BTreeMap<JobId, String>,
    edits: BTreeMap<String, (BTreeSet<String>, BTreeSet<String>)>,
}

impl Harness {
    fn new() -> Harness {
        Harness {
            s: Scheduler::new(config()),
            log: vec![],
            now: 1_000,
            next_job: 1,
            granted: vec![],
            released: BTreeMap::new(),
            person_grants: BTreeSet::new(),
            finished: BTreeMap::new(),
            epochs: BTreeMap::new(),
            gone: BTreeMap::new(),
            silent: BTreeSet::new(),
            cancels: BTreeMap::new(),
            next_person: 1,
            ended: BTreeMap::new(),
            keys: BTreeMap::new(),
            served: 0,
            rounds: BTreeMap::new(),
            arrivals: 0,
            out: BTreeMap::new(),
            streak: BTreeMap::new(),
            ran_on: BTreeMap::new(),
            edits: BTreeMap::new(),
        }
    }

    /// A device's tags as the model computes them from its agent's and the edits.
    pub(crate) fn model_tags(&self, device: &str, agent_tags: &[String]) -> Vec<String> {
        let Some((add, remove)) = self.edits.get(device) else {
            return agent_tags.to_vec();
        };
        let mut tags: Vec<String> = agent_tags
            .iter()
            .filter(|t| !remove.contains(*t))
            .cloned()
            .collect();
        for t in add {
            if !tags.contains(t) {
                tags.push(t.clone());
            }
        }
        tags
    }

    /// A person's lease: mostly one that has not ended, else any id (maybe unknown).
    fn pick_person(&self, pick: usize) -> PersonLeaseId {
        let open: Vec<PersonLeaseId> = self
            .s
            .person_leases()
            .filter(|(_, p)| p.state != PersonLeaseState::Ended)
            .map(|(id, _)| id)
            .collect();
        if !pick.is_multiple_of(3) && !open.is_empty() {
            open[pick / 3 % open.len()]
        } else {
            PersonLeaseId((pick / 3) as u64 % self.next_person.max(2))
        }
    }

    /// What a call about a person's lease should get, before it is made.
    fn expect_person(&self, id: PersonLeaseId) -> Result<(), Refusal> {
        match self.s.person_lease(id) {
            None => Err(Refusal::UnknownPersonLease(id)),
            Some(p) => match &p.end {
                Some(end) => Err(Refusal::PersonLeaseEnded {
                    lease: id,
                    end: end.clone(),
                }),
                None => Ok(()),
            },
        }
    }

    /// A lease for an agent message: mostly a live one, else any lease ever granted.
    fn pick_lease(&self, pick: usize, epochs: &Epochs) -> Option<(LeaseId, Epoch)> {
        let live: Vec<(LeaseId, Epoch)> = self.s.leases().map(|l| (l.id, l.epoch)).collect();
        let (lease, epoch) = if !pick.is_multiple_of(4) && !live.is_empty() {
            live[pick / 4 % live.len()]
        } else if !self.granted.is_empty() {
            let (lease, epoch, _) = &self.granted[pick / 4 % self.granted.len()];
            (*lease, *epoch)
        } else {
            return None;
        };
        let epoch = match epochs {
            Epochs::Right => epoch,
            Epochs::Older => Epoch(epoch.0 - 1),
            Epochs::Newer => Epoch(epoch.0 + 1),
        };
        Some((lease, epoch))
    }

    /// What a lease message should get, before it is sent.
    fn expect_lease(&self, lease: LeaseId, epoch: Epoch) -> Result<(), Refusal> {
        match self.s.lease(lease) {
            Some(l) if l.epoch == epoch && l.job().is_none() => Err(Refusal::NotAJobLease(lease)),
            Some(l) if l.epoch == epoch => Ok(()),
            Some(l) => Err(Refusal::StaleEpoch {
                lease,
                given: epoch,
                current: l.epoch,
            }),
            None => Err(Refusal::LeaseNotLive(lease)),
        }
    }

    fn step(&mut self, advance: u64, cmd: &Cmd) {
        self.now += advance;
        let now = Millis(self.now);
        let before = self.s.clone();
        let deadline = self.s.next_deadline();
        let result: Result<Vec<Event>, Refusal> = match cmd {
            Cmd::Submit {
                check,
                ty,
                tags: t,
                priority,
                owner,
            } => {
                let job = JobId(self.next_job);
                self.next_job += 1;
                let spec = match check {
                    Some(d) => JobSpec {
                        device_type: DEVICES[*d].1.into(),
                        priority: *priority,
                        device: Some(DEVICES[*d].0.into()),
                        purpose: JobPurpose::HealthCheck,
                        ..JobSpec::default()
                    },
                    None => JobSpec {
                        device_type: TYPES[*ty].into(),
                        tags: tags(*t),
                        priority: *priority,
                        owner: owner.map(|o| PrincipalId(PEOPLE[o].0)),
                        device: None,
                        purpose: JobPurpose::Ordinary,
                        ..Default::default()
                    },
                };
                let r = self.s.submit(job, spec, now);
                let events = r
                    .as_ref()
                    .expect("a new job with a valid priority is accepted");
                assert_eq!(events[0].kind(), "job-submitted");
                r
            }
            Cmd::Connect {
                agent,
                devices,
                tags: t,
                held,
            } => {
                let agent = AGENTS[*agent];
                let infos: Vec<DeviceInfo> = DEVICES
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| devices & (1 << i) != 0)
                    .map(|(i, (name, ty))| DeviceInfo {
                        name: name.to_string(),
                        device_type: ty.to_string(),
                        tags: tags(((t >> (2 * i)) & 3) as u8),
                        capabilities: vec![],
                    })
                    .collect();
                let held: Vec<(LeaseId, Epoch)> = self
                    .granted
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| held & (1 << (i % 32)) != 0)
                    .map(|(_, (l, e, _))| (*l, *e))
                    .collect();
                let taken = infos.iter().find_map(|d| {
                    let owner = &self.s.device(&d.name)?.agent;
                    (owner != agent && self.s.agent_is_connected(owner)).then(|| owner.clone())
                });
                let r = self.s.agent_connected(agent, &infos, &held, now);
                match (&r, taken) {
                    (Ok(events), None) => self.check_connected(agent, &infos, &held, events),
                    (Err(Refusal::DeviceTaken { agent: owner, .. }), Some(_)) => {
                        assert!(self.s.agent_is_connected(owner));
                    }
                    (r, taken) => panic!("connect: {r:?}, a device taken by {taken:?}"),
                }
                r
            }
            Cmd::Request {
                who,
                device,
                ty,
                tags: t,
                priority,
                ttl,
            } => {
                let id = PersonLeaseId(self.next_person);
                let (principal, name) = PEOPLE[*who];
                let want = match device {
                    Some(i) => Want::Device(DEVICES.get(*i).map_or("nope", |d| d.0).to_owned()),
                    None => Want::Type {
                        device_type: TYPES[*ty].into(),
                        tags: tags(*t),
                    },
                };
                let expect = match &want {
                    _ if *ttl == 0 || *ttl > CAP => Err(Refusal::Duration {
                        ttl_ms: *ttl,
                        cap_ms: CAP,
                    }),
                    Want::Device(d) if self.s.device(d).is_none() => {
                        Err(Refusal::UnknownDevice(d.clone()))
                    }
                    _ => Ok(()),
                };
                let r = self.s.request_person_lease(
                    id,
                    PrincipalId(principal),
                    name,
                    want,
                    *priority,
                    Duration::from_millis(*ttl),
                    Duration::from_millis(CAP),
                    keys(*who),
                    now,
                );
                assert_eq!(r.as_ref().err(), expect.as_ref().err());
                if r.is_ok() {
                    self.next_person += 1;
                    let p = self.s.person_lease(id).expect("requested");
                    assert_ne!(p.state, PersonLeaseState::Ended);
                    assert_eq!(
                        p.state == PersonLeaseState::Waiting,
                        self.s.position(Waiter::Person(id)).is_some()
                    );
                }
                r
            }
            Cmd::Renew { pick, ttl } => {
                let id = self.pick_person(*pick);
                let want = self.expect_person(id);
                let held = self
                    .s
                    .person_lease(id)
                    .filter(|p| p.state == PersonLeaseState::Held)
                    .cloned();
                let r = self
                    .s
                    .renew_person_lease(id, Duration::from_millis(*ttl), now);
                assert_eq!(r.as_ref().err(), want.as_ref().err());
                if let (Ok(_), Some(before)) = (&r, held) {
                    let cap = before.granted.expect("granted").0 + CAP;
                    let old = before.expires.expect("a deadline").0;
                    let after = self.s.person_lease(id).and_then(|p| p.expires);
                    assert_eq!(after, Some(Millis((now.0 + ttl).min(cap).max(old))));
                }
                r
            }
            Cmd::Release { pick, admin } => {
                let id = self.pick_person(*pick);
                let want = self.expect_person(id);
                let lease = self.s.person_lease(id).and_then(|p| {
                    (p.state == PersonLeaseState::Held)
                        .then_some(p.lease)
                        .flatten()
                });
                let end = if *admin {
                    LeaseEnd::EndedBy("root".into())
                } else {
                    LeaseEnd::Released
                };
                let r = self.s.end_person_lease(id, end.clone(), now);
                assert_eq!(r.as_ref().err(), want.as_ref().err());
                if r.is_ok() {
                    let p = self.s.person_lease(id).expect("known");
                    assert_eq!(
                        (p.state, p.end.as_ref()),
                        (PersonLeaseState::Ended, Some(&end))
                    );
                    if let Some(lease) = lease {
                        assert!(
                            self.s.lease(lease).is_none(),
                            "released lease {lease} is live"
                        );
                    }
                }
                r
            }
            Cmd::Disconnect { agent } => {
                let agent = AGENTS[*agent];
                let events = self.s.agent_disconnected(agent, now);
                assert!(!self.s.agent_is_connected(agent));
                for d in self.s.devices().filter(|d| d.agent == agent) {
                    // Busy while it holds a lease, or a secondary connection rides on it.
                    let want = if d.leases().next().is_some() {
                        DeviceState::Busy
                    } else if let Some(out) = self.out.get(&d.info.name) {
                        *out
                    } else {
                        DeviceState::Offline
                    };
                    assert_eq!(d.state, want, "{}", d.info.name);
                }
                Ok(events)
            }
            Cmd::Heartbeat { agent } => Ok(self.s.heartbeat(AGENTS[*agent], now)),
            Cmd::Silent { agent } => {
                let agent = AGENTS[*agent];
                let before = self.s.agent_presence(agent);
                let events = self.s.agent_silent(agent, now);
                // Only a heard agent goes silent; its link stays open.
                assert_eq!(events.is_empty(), before != Some(AgentState::Connected));
                assert_eq!(
                    self.s.agent_is_connected(agent),
                    before.is_some_and(|p| p != AgentState::Disconnected)
                );
                assert!(!self.s.agent_takes_work(agent));
                Ok(events)
            }
            Cmd::Heard { agent } => {
                let agent = AGENTS[*agent];
                let before = self.s.agent_presence(agent);
                let events = self.s.agent_heard(agent, now);
                assert_eq!(events.is_empty(), before != Some(AgentState::Silent));
                if before == Some(AgentState::Silent) {
                    assert!(self.s.agent_takes_work(agent));
                }
                Ok(events)
            }
            Cmd::Started { pick, epochs } => match self.pick_lease(*pick, epochs) {
                None => Ok(vec![]),
                Some((lease, epoch)) => {
                    let want = self.expect_lease(lease, epoch);
                    let r = self.s.job_started(lease, epoch, now);
                    assert_eq!(r.as_ref().err(), want.as_ref().err());
                    r
                }
            },
            Cmd::Finished {
                pick,
                epochs,
                outcome,
            } => match self.pick_lease(*pick, epochs) {
                None => Ok(vec![]),
                Some((lease, epoch)) => {
                    let want = self.expect_lease(lease, epoch);
                    let job = self.s.lease(lease).and_then(|l| l.job());
                    let canceling = job
                        .and_then(|j| self.s.job(j))
                        .is_some_and(|j| j.state == JobState::Canceling);
                    let outcome = Outcome::ALL[*outcome];
                    let r = self
                        .s
                        .job_finished(lease, epoch, outcome, "reported".into(), now);
                    assert_eq!(r.as_ref().err(), want.as_ref().err());
                    if let (Ok(events), Some(job)) = (&r, job) {
                        let want_outcome = if canceling {
                            Outcome::Canceled
                        } else {
                            outcome
                        };
                        assert_eq!(
                            events[0],
                            Event::JobFinished {
                                job,
                                outcome: want_outcome,
                                reason: "reported".into(),
                                at: now
                            }
                        );
                        // A quarantine or a health check's verdict comes between them,
                        // before the device is free.
                        let check = self
                            .s
                            .job(job)
                            .is_some_and(|j| j.spec.purpose == JobPurpose::HealthCheck);
                        let quarantined = matches!(
                            &events[1],
                            Event::DeviceStateSet { job: Some(j), by, .. }
                                if *j == job && by == "dutlab"
                                    && (check || want_outcome == Outcome::InfraError)
                        );
                        assert_eq!(
                            events[usize::from(quarantined) + 1],
                            Event::LeaseReleased {
                                lease,
                                device_state: DeviceState::Idle,
                                at: now
                            }
                        );
                    }
                    r
                }
            },
            Cmd::StartRefused { pick, epochs } => match self.pick_lease(*pick, epochs) {
                None => Ok(vec![]),
                Some((lease, epoch)) => {
                    let mut want = self.expect_lease(lease, epoch);
                    let job = self.s.lease(lease).and_then(|l| l.job());
                    let state = job.and_then(|j| self.s.job(j)).map(|j| j.state);
                    if want.is_ok()
                        && let (Some(job), Some(JobState::Running)) = (job, state)
                    {
                        want = Err(Refusal::NotAssigned {
                            job,
                            state: JobState::Running,
                        });
                    }
                    let r = self.s.start_refused(lease, epoch, now);
                    assert_eq!(r.as_ref().err(), want.as_ref().err());
                    if let (Ok(_), Some(job), Some(JobState::Assigned)) = (&r, job, state) {
                        let j = self.s.job(job).expect("job");
                        if self.s.group_of(job).is_some() {
                            assert_eq!(j.outcome, Some(Outcome::InfraError), "ends its group");
                        } else {
                            assert!(
                                j.state == JobState::Queued || j.lease != Some(lease),
                                "requeued"
                            );
                        }
                    }
                    r
                }
            },
            Cmd::Cancel { pick } => {
                // Mostly a job that holds a lease, else any id (maybe unknown).
                let live: Vec<JobId> = self.s.leases().filter_map(|l| l.job()).collect();
                let job = if pick.is_multiple_of(2) && !live.is_empty() {
                    live[pick / 2 % live.len()]
                } else {
                    JobId((pick / 2) as u64 % self.next_job.max(2))
                };
                let state = self.s.job(job).map(|j| j.state);
                let r = self.s.cancel(job, now);
                match (state, &r) {
                    (None, Err(Refusal::UnknownJob(_))) => {}
                    (Some(JobState::Finished), Err(Refusal::Finished(_))) => {}
                    (Some(JobState::Canceling), Ok(events)) if self.s.group_of(job).is_none() => {
                        assert!(events.is_empty())
                    }
                    (Some(_), Ok(_)) => {
                        let after = self.s.job(job).map(|j| j.state);
                        assert!(matches!(
                            after,
                            Some(JobState::Finished | JobState::Canceling)
                        ));
                    }
                    (state, r) => panic!("cancel of a {state:?} job: {r:?}"),
                }
                r
            }
            Cmd::DeviceReady { agent, device } => {
                let name = DEVICES.get(*device).map_or("nope", |d| d.0);
                self.s.device_ready(AGENTS[*agent], name, now)
            }
            Cmd::SetState {
                device,
                state,
                now: at_once,
            } => {
                let name = DEVICES.get(*device).map_or("nope", |d| d.0);
                let state = SET[*state];
                let registered = self.s.device(name).cloned();
                let expect = match &registered {
                    None => Err(Refusal::UnknownDevice(name.to_owned())),
                    Some(_) if state == DeviceState::Busy => Err(Refusal::NotSettable(state)),
                    Some(_) => Ok(()),
                };
                let holder = registered
                    .as_ref()
                    .and_then(|d| d.lease)
                    .and_then(|l| self.s.lease(l))
                    .map(|l| l.holder.clone());
                let interrupt = if *at_once {
                    Interrupt::Now
                } else {
                    Interrupt::AfterLease
                };
                let note = StateNote {
                    state,
                    reason: "model".into(),
                    by: "root".into(),
                    job: None,
                    at: now,
                };
                let r = self.s.set_device_state(name, note, interrupt);
                assert_eq!(r.as_ref().err(), expect.as_ref().err());
                if r.is_ok() {
                    // A withdrawn device whose lease the command ended is removed.
                    let d = self.s.device(name).cloned();
                    assert!(d.is_some() || registered.is_some_and(|d| d.withdrawn));
                    if state == DeviceState::Idle {
                        assert!(self.s.out_of_service(name).is_none());
                        assert_eq!(self.s.infra_streak(name), 0);
                    } else {
                        assert_eq!(self.s.out_of_service(name).map(|n| n.state), Some(state));
                        if let Some(d) = d.filter(|d| d.leases().next().is_none()) {
                            assert_eq!(d.state, state);
                        }
                    }
                    if *at_once && state != DeviceState::Idle {
                        match holder {
                            Some(Holder::Job(job)) => {
                                let j = self.s.job(job).expect("job");
                                assert!(
                                    matches!(j.state, JobState::Canceling | JobState::Finished),
                                    "job {job} still {} after set --now",
                                    j.state
                                );
                            }
                            Some(Holder::Person(p)) => {
                                let p = self.s.person_lease(p.lease).expect("lease");
                                assert_eq!(p.end, Some(LeaseEnd::EndedBy("root".into())));
                            }
                            None => {}
                        }
                    }
                }
                r
            }
            Cmd::Tags {
                device,
                add,
                remove,
            } => {
                let name = DEVICES.get(*device).map_or("nope", |d| d.0);
                let (add, remove) = (tags(*add), tags(*remove));
                let expect = if self.s.device(name).is_none() {
                    Err(Refusal::UnknownDevice(name.to_owned()))
                } else if let Some(both) = add.iter().find(|t| remove.contains(t)) {
                    Err(Refusal::TagConflict(both.clone()))
                } else {
                    Ok(())
                };
                let r = self.s.set_device_tags(name, add, remove, "root", now);
                assert_eq!(r.as_ref().err(), expect.as_ref().err());
                r
            }
            Cmd::Tick => {
                let events = self.s.tick(now);
                let ended = events
                    .iter()
                    .any(|e| matches!(e.kind(), "job-finished" | "person-lease-ended"));
                let due = deadline.is_some_and(|d| d <= now);
                assert_eq!(ended, due, "deadline {deadline:?}, now {now:?}");
                assert!(self.s.next_deadline().is_none_or(|d| d > now));
                for (id, p) in self.s.person_leases() {
                    if p.state == PersonLeaseState::Held {
                        assert!(
                            p.expires.is_some_and(|e| e > now),
                            "lease {id} held past its deadline"
                        );
                    }
                }
                Ok(events)
            }
            Cmd::SubmitGroup {
                roles,
                priority,
                owner,
            } => self.submit_group(roles, *priority, *owner, now),
            Cmd::Restart => {
                self.s = Scheduler::replay(config(), &self.log).expect("the log replays");
                assert_eq!(self.s, before);
                let events = self.s.restarted(now);
                assert!(AGENTS.iter().all(|a| !self.s.agent_is_connected(a)));
                for (id, p) in self.s.person_leases() {
                    let was = before.person_lease(id).and_then(|p| p.expires);
                    assert_eq!(p.expires, was, "a restart moved the deadline of lease {id}");
                }
                Ok(events)
            }
        };
        match result {
            Ok(events) => {
                self.check_group_grants(&events);
                self.record(&events)
            }
            Err(refusal) => {
                assert!(!refusal.to_string().is_empty());
                assert_eq!(self.s, before, "refused ({refusal}) but changed the state");
            }
        }
        self.check();
    }

    /// Time passes beyond every cap, once for each request (a tick may grant a waiting one):
    /// then no person holds a device any more.
    fn drain(&mut self) {
        for _ in 0..=self.next_person {
            self.step(CAP + 1, &Cmd::Tick);
        }
        for (id, p) in self.s.person_leases() {
            assert_ne!(p.state, PersonLeaseState::Held, "lease {id} leaked");
        }
        assert!(self.s.leases().all(|l| l.job().is_some()));
    }

    fn remember_finished(&mut self) {
        for (id, j) in self.s.jobs() {
            if let Some(outcome) = j.outcome {
                self.finished
                    .entry(id)
                    .or_insert_with(|| (outcome, j.reason.clone()));
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 128,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn invariants_hold_after_every_step(
        steps in proptest::collection::vec((prop_oneof![0u64..300, 0u64..3_000], cmd()), 1..120)
    ) {
        let mut h = Harness::new();
        for (advance, cmd) in &steps {
            h.step(*advance, cmd);
            h.remember_finished();
        }
        h.drain();
    }
}
