//! The `multinode` scenario: a MultiNode group of two sub-jobs on two simulated agents.
//!
//! - **Group start:** one device is busy with a single job while the group waits for both;
//!   the time from that job's `JobFinished` (sent) to the later of the group's two
//!   `StartJob`s (received), `--groups` times.
//! - **Message latency:** in the last group, member B makes `lava-wait mK` and member A then
//!   `lava-send mK k=v`; the time from A's call (sent) to B's `MultinodeReply` (received),
//!   `--messages` times. Both go through the controller's coordinator, which stores its
//!   state before it replies.

use crate::agent::{self, Behaviour, Dial, Oddities, Outbox, StartJob};
use crate::server::Controller;
use crate::stats::Summary;
use anyhow::{Context, bail};
use multinode::{Call, MessageId};
use proto::LeaseId;
use proto::link::AgentMessage;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

pub struct Params {
    pub groups: usize,
    pub messages: usize,
}

/// What one simulated agent heard.
enum Heard {
    Start(StartJob, Outbox),
    Reply {
        lease: LeaseId,
        seq: u64,
        at: Instant,
    },
}

struct Member(mpsc::UnboundedSender<Heard>);

impl Behaviour for Member {
    fn start(self: Arc<Self>, out: Outbox, job: StartJob) {
        let _ = self.0.send(Heard::Start(job, out));
    }
    fn multinode_reply(&self, lease: LeaseId, seq: u64, _reply: multinode::Reply, at: Instant) {
        let _ = self.0.send(Heard::Reply { lease, seq, at });
    }
}

const WAIT: Duration = Duration::from_secs(30);

/// A group job of roles `a` and `b`, one instance each, on the simulated devices.
fn group_definition(n: usize) -> String {
    format!(
        "job_name: bench-group-{n}\nvisibility: public\ntimeouts:\n  job: 10m\nprotocols:\n  lava-multinode:\n    roles:\n      \
         a: {{device_type: {t}, count: 1}}\n      b: {{device_type: {t}, count: 1}}\nactions:\n\
         - boot:\n    role: [a, b]\n    method: qemu\n    prompts: ['# $']\n",
        t = agent::DEVICE_TYPE
    )
}

async fn next_start(rx: &mut mpsc::UnboundedReceiver<Heard>) -> anyhow::Result<(StartJob, Outbox)> {
    loop {
        match tokio::time::timeout(WAIT, rx.recv()).await {
            Ok(Some(Heard::Start(job, out))) => return Ok((job, out)),
            Ok(Some(Heard::Reply { .. })) => {}
            Ok(None) => bail!("the agent's link closed"),
            Err(_) => bail!("no StartJob within {WAIT:?}"),
        }
    }
}

async fn reply_to(
    rx: &mut mpsc::UnboundedReceiver<Heard>,
    lease: LeaseId,
    seq: u64,
) -> anyhow::Result<Instant> {
    loop {
        match tokio::time::timeout(WAIT, rx.recv()).await {
            Ok(Some(Heard::Reply {
                lease: l,
                seq: s,
                at,
            })) if l == lease && s == seq => {
                return Ok(at);
            }
            Ok(Some(_)) => {}
            Ok(None) => bail!("the agent's link closed"),
            Err(_) => bail!("no reply to call {seq} within {WAIT:?}"),
        }
    }
}

fn id(k: usize) -> anyhow::Result<MessageId> {
    MessageId::new(&format!("m{k}")).map_err(|e| anyhow::anyhow!("{e}"))
}

async fn call(out: &Outbox, job: &StartJob, seq: u64, call: Call) -> anyhow::Result<()> {
    out.json(&AgentMessage::MultinodeCall {
        lease: job.lease,
        epoch: job.epoch,
        seq,
        call,
    })
    .await
}

pub async fn run(ctl: &mut Controller, p: &Params) -> anyhow::Result<Value> {
    let dial = Dial::new(&ctl.ws_url(""), ctl);
    let odd = Arc::new(Oddities::default());
    let (tx0, mut rx0) = mpsc::unbounded_channel();
    let (tx1, mut rx1) = mpsc::unbounded_channel();
    let names: Vec<Vec<String>> = (0..2)
        .map(|i| agent::device_names(&format!("mn{i}"), 1))
        .collect();
    let _a0 = agent::connect(
        &dial,
        "mn0",
        &names[0],
        Arc::new(Member(tx0)),
        Arc::clone(&odd),
    )
    .await?;
    let _a1 = agent::connect(
        &dial,
        "mn1",
        &names[1],
        Arc::new(Member(tx1)),
        Arc::clone(&odd),
    )
    .await?;
    let token = ctl.token("bench-mn", "user").await?;
    let mut starts = Vec::with_capacity(p.groups);
    let groups = p.groups.max(1);
    let mut last = None;
    for g in 0..groups {
        // The single job takes the device of agent mn1 if it is the one free first; either
        // way, the group waits for it.
        ctl.submit(&token, &crate::submit::definition(g)).await?;
        let picked = tokio::select! {
            s = next_start(&mut rx0) => { let (j, o) = s.context("the single job")?; (j, o, 0) }
            s = next_start(&mut rx1) => { let (j, o) = s.context("the single job")?; (j, o, 1) }
        };
        let (single, single_out, single_rx) = picked;
        single_out.started(&single).await?;
        ctl.submit(&token, &group_definition(g)).await?;
        // Let the group reach the queue before the device frees.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let t0 = Instant::now();
        single_out.finished(&single, 0, Duration::ZERO).await?;
        let (first, second) = if single_rx == 0 {
            (next_start(&mut rx1).await, next_start(&mut rx0).await)
        } else {
            (next_start(&mut rx0).await, next_start(&mut rx1).await)
        };
        let (first, second) = (
            first.context("the group's first sub-job")?,
            second.context("the group's second sub-job")?,
        );
        let started = first.0.received.max(second.0.received);
        starts.push(started.duration_since(t0));
        for (job, out) in [&first, &second] {
            out.started(job).await?;
        }
        if g + 1 < groups {
            // Both devices free again for the next round.
            for (job, out) in [&first, &second] {
                out.finished(job, 0, Duration::ZERO).await?;
            }
        } else {
            last = Some((first, second));
        }
    }
    let ((ja, oa), (jb, ob)) = last.context("no group ran")?;
    // Which member is which does not matter: A sends, B waits. B's replies come to the
    // agent that runs B.
    let b_on_0 = names[0].contains(&jb.device);
    let mut samples = Vec::with_capacity(p.messages);
    for k in 1..=p.messages {
        let seq = k as u64;
        call(&ob, &jb, seq, Call::Wait { id: id(k)? }).await?;
        // Let the wait reach the coordinator first.
        tokio::time::sleep(Duration::from_millis(2)).await;
        let t0 = Instant::now();
        call(
            &oa,
            &ja,
            seq,
            Call::Send {
                id: id(k)?,
                data: vec![("k".into(), format!("v{k}"))],
            },
        )
        .await?;
        let at = if b_on_0 {
            reply_to(&mut rx0, jb.lease, seq).await?
        } else {
            reply_to(&mut rx1, jb.lease, seq).await?
        };
        samples.push(at.duration_since(t0));
    }
    oa.finished(&ja, 0, Duration::ZERO).await?;
    ob.finished(&jb, 0, Duration::ZERO).await?;
    let start = Summary::of(&starts);
    let msg = Summary::of(&samples);
    let met = |ok: bool| if ok { "met" } else { "NOT met" };
    Ok(json!({
        "line": format!(
            "multinode: group start after the last device freed: {}; goal <= 50 ms: {}\n\
             multinode: lava-send -> lava-wait return through the controller: {}; goal p99 <= 20 ms: {}",
            start.text(), met(start.max <= 50.0), msg.text(), met(msg.p99 <= 20.0)
        ),
        "group_start": start.json(),
        "send_to_wait": msg.json(),
        "oddities": odd.text(),
        "controller_cpu_total_s": ctl.cpu(),
    }))
}
