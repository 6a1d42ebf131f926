//! Commands between controllers on one PostgreSQL database: a follower forwards what changes
//! the scheduler or is audited (submit, cancel, people's leases, device administration, the
//! audit of admin actions done by the API layer) to the leader through the `commands` table
//! ([`crate::store::commands`]); the leader executes them in its dispatcher and answers.
//!
//! Invariants:
//! - A forwarded command carries the caller as the follower authenticated it (principal,
//!   role, groups; a submission as the API layer checked it), and the leader decides with the
//!   same code as for its own callers ([`crate::policy`], quotas, the scheduler): forwarding
//!   changes where a command runs, not what it may do. Only controllers write the table; a
//!   database writer is trusted as a controller is.
//! - A command is marked done in the commit of its events, so it runs at most once even when
//!   the leader dies right after committing; a command not done when a leader stops is run by
//!   the next one. One that was committed but never answered is answered as such (503).
//!   Within one leader the executor never starts a command twice, not even one that a read
//!   begun before its end still returns as pending ([`InFlight`]).
//! - A follower answers its client only after the leader committed, and after its own
//!   replica has applied the leader's events up to that commit (a client that reads right
//!   after sees its change on the same controller).

use super::{Command, Failure, LeaseRequest, Submission};
use crate::policy::Viewer;
use crate::store::Store;
use crate::store::agent_links::OUTBOX_CHANNEL;
use crate::store::commands::{ANSWER_CHANNEL, COMMAND_CHANNEL, CommandAnswer, EVENT_CHANNEL};
use proto::api::{JobView, LeaseView};
use proto::{JobId, PersonLeaseId};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{Notify, mpsc, oneshot, watch};

/// How often pending commands, answers and events are looked for whatever the
/// notifications said (the safety net under LISTEN/NOTIFY).
pub const POLL: Duration = Duration::from_secs(1);

/// How long a follower waits for the leader's answer before telling its client.
pub const ANSWER_LIMIT: Duration = Duration::from_secs(30);

/// Executed commands kept (for followers that did not collect their answer) this long.
const KEEP_ANSWERS_MS: u64 = 10 * 60 * 1000;

/// A command as a follower forwards it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "command")]
pub enum Forwarded {
    Submit {
        job: Box<Submission>,
    },
    Cancel {
        job: JobId,
        viewer: Viewer,
    },
    AcquireLease {
        request: LeaseRequest,
    },
    RenewLease {
        lease: PersonLeaseId,
        viewer: Viewer,
        ttl_ms: Option<u64>,
    },
    ReleaseLease {
        lease: PersonLeaseId,
        viewer: Viewer,
    },
    SetDeviceState {
        device: String,
        body: proto::admin::SetDeviceState,
        viewer: Viewer,
    },
    EditDeviceTags {
        device: String,
        body: proto::admin::EditDeviceTags,
        viewer: Viewer,
    },
    Audit {
        viewer: Viewer,
        action: proto::admin::AuditAction,
        target: String,
        detail: String,
    },
    CheckDevice {
        device: String,
        viewer: Viewer,
    },
    /// An agent link's hello or message, relayed by the controller holding the link.
    Agent {
        relayed: super::relay::Relayed,
    },
}

/// The leader's answer.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Answer {
    Job(Result<JobView, Failure>),
    Lease(Result<LeaseView, Failure>),
    Device(Result<proto::admin::DeviceDetail, Failure>),
    Done(Result<(), Failure>),
}

/// Wake-ups from the notifications of other controllers.
#[derive(Debug, Clone, Default)]
pub struct Hub {
    /// The leader committed events.
    pub events: Arc<Notify>,
    /// A follower wrote a command.
    pub commands: Arc<Notify>,
    /// The leader wrote messages for agent links (of any controller).
    pub outbox: Arc<Notify>,
    answers: Arc<Mutex<HashMap<i64, Arc<Notify>>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Hub {
    fn answer_waker(&self, id: i64) -> Arc<Notify> {
        Arc::clone(lock(&self.answers).entry(id).or_default())
    }

    fn forget(&self, id: i64) {
        lock(&self.answers).remove(&id);
    }

    fn wake_all(&self) {
        self.events.notify_one();
        self.commands.notify_one();
        self.outbox.notify_one();
        for waker in lock(&self.answers).values() {
            waker.notify_one();
        }
    }

    /// Follows the notification channels of `url` until the process ends; a lost connection
    /// wakes everyone (notifications in between are gone) and is made again.
    pub fn listen(&self, url: String) {
        let hub = self.clone();
        tokio::spawn(async move {
            use sqlx::postgres::PgListener;
            loop {
                let connected = async {
                    let mut l = PgListener::connect(&url).await?;
                    l.listen_all([
                        EVENT_CHANNEL,
                        COMMAND_CHANNEL,
                        ANSWER_CHANNEL,
                        OUTBOX_CHANNEL,
                    ])
                    .await?;
                    Ok::<_, sqlx::Error>(l)
                };
                let mut listener = match connected.await {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::warn!("notifications: {e}; trying again");
                        tokio::time::sleep(POLL).await;
                        continue;
                    }
                };
                hub.wake_all();
                loop {
                    match listener.try_recv().await {
                        Ok(Some(n)) => match n.channel() {
                            EVENT_CHANNEL => hub.events.notify_one(),
                            COMMAND_CHANNEL => hub.commands.notify_one(),
                            OUTBOX_CHANNEL => hub.outbox.notify_one(),
                            _ => {
                                if let Ok(id) = n.payload().parse::<i64>()
                                    && let Some(w) = lock(&hub.answers).get(&id)
                                {
                                    w.notify_one();
                                }
                            }
                        },
                        Ok(None) => {
                            tracing::info!("notifications: connection lost; reconnecting");
                            hub.wake_all();
                        }
                        Err(e) => {
                            tracing::warn!("notifications: {e}");
                            hub.wake_all();
                            tokio::time::sleep(POLL).await;
                            break;
                        }
                    }
                }
            }
        });
    }
}

/// A fresh command id (random: followers draw them without asking anyone).
fn command_id() -> Result<i64, Failure> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes)
        .map_err(|e| Failure::Unavailable(format!("no randomness for a command id: {e}")))?;
    Ok(i64::from_le_bytes(bytes) & i64::MAX)
}

fn unavailable(e: impl std::fmt::Display) -> Failure {
    Failure::Unavailable(format!("forwarding to the leader: {e}"))
}

/// Forwards `command` to the leader and waits for its answer, then for the local replica to
/// have applied the leader's events up to the answer (`applied`).
pub async fn forward(
    store: &Store,
    hub: &Hub,
    mut applied: watch::Receiver<u64>,
    command: Forwarded,
) -> Result<Answer, Failure> {
    let id = command_id()?;
    let body = serde_json::to_string(&command).map_err(unavailable)?;
    let waker = hub.answer_waker(id);
    let answered = async {
        store
            .insert_command(id, &body, crate::now().0)
            .await
            .map_err(unavailable)?;
        loop {
            match store.command_answer(id).await {
                Ok(Some(CommandAnswer::Answered { body, seq })) => break Ok((body, seq)),
                // Committed; the answer follows (or the next leader writes that none came).
                Ok(Some(CommandAnswer::Pending | CommandAnswer::DoneUnanswered)) => {}
                Ok(None) => break Err(unavailable("the request vanished from the database")),
                // The database may be restarting: keep waiting within the limit.
                Err(e) => tracing::debug!("command {id}: {e}"),
            }
            let _ = tokio::time::timeout(POLL, waker.notified()).await;
        }
    };
    let result = tokio::time::timeout(ANSWER_LIMIT, answered).await;
    hub.forget(id);
    let (body, seq) = match result {
        Ok(answered) => answered?,
        Err(_) => {
            return Err(Failure::Unavailable(format!(
                "no leader answered within {} s (the request stays queued for the next leader)",
                ANSWER_LIMIT.as_secs()
            )));
        }
    };
    if let Err(e) = store.delete_command(id).await {
        tracing::debug!("command {id}: {e}");
    }
    let answer: Answer = serde_json::from_str(&body).map_err(unavailable)?;
    // Read your writes: wait (briefly) for the replica to reach the leader's commit.
    hub.events.notify_one();
    let _ = tokio::time::timeout(ANSWER_LIMIT, applied.wait_for(|s| *s >= seq)).await;
    Ok(answer)
}

/// What a new leader answers for a command the last leader committed but did not answer.
fn unanswered() -> Answer {
    Answer::Job(Err(Failure::Unavailable(
        "the leader stopped after committing this request and before answering it: it was \
         done; read the jobs or leases to see its effect"
            .into(),
    )))
}

/// The leader's side: runs every pending command in the dispatcher and writes its answer.
/// First answers what the last leader committed and did not answer (it is gone: this
/// controller holds the lock).
pub async fn execute(store: Store, hub: Hub, dispatch: mpsc::Sender<Command>) {
    match serde_json::to_string(&unanswered()) {
        Ok(body) => match store.answer_unanswered(&body).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                "{n} forwarded command(s) were committed by the last leader but not answered; \
                 their followers are told so"
            ),
            Err(e) => tracing::warn!("forwarded commands: {e}"),
        },
        Err(e) => tracing::warn!("forwarded commands: {e}"),
    }
    let in_flight: Arc<Mutex<InFlight>> = Arc::default();
    let mut last_prune = 0;
    loop {
        let _ = tokio::time::timeout(POLL, hub.commands.notified()).await;
        let read = lock(&in_flight).begin_read();
        let pending = store.pending_commands().await;
        lock(&in_flight).after_read(read);
        let pending = match pending {
            Ok(pending) => pending,
            Err(e) => {
                tracing::warn!("forwarded commands: {e}");
                continue;
            }
        };
        for stored in pending {
            if !lock(&in_flight).start(stored.id) {
                continue;
            }
            let (store, dispatch, in_flight) =
                (store.clone(), dispatch.clone(), Arc::clone(&in_flight));
            tokio::spawn(async move {
                let id = stored.id;
                if let Some((body, seq)) = run(&dispatch, id, &stored.body).await
                    && let Err(e) = store.answer_command(id, &body, seq).await
                {
                    tracing::warn!("forwarded command {id}: answer not stored: {e}");
                }
                lock(&in_flight).finished(id);
            });
        }
        let now = crate::now().0;
        if now.saturating_sub(last_prune) > KEEP_ANSWERS_MS {
            last_prune = now;
            if let Err(e) = store.prune_commands(now - KEEP_ANSWERS_MS).await {
                tracing::debug!("forwarded commands: {e}");
            }
        }
    }
}

/// The commands the executor started and may not start again.
///
/// A read of pending commands sees the table as it was when the read began, so a command
/// that finishes (is marked done) while a read runs can still come back from that read. A
/// command therefore stays here after it finished until a read that began after its end
/// has returned: only such a read is sure not to return it.
#[derive(Debug, Default)]
struct InFlight {
    /// Started and not yet forgotten.
    started: HashSet<i64>,
    /// Finished since the last read began.
    finished: Vec<i64>,
}

/// The commands that had finished when a read began.
struct Read(Vec<i64>);

impl InFlight {
    fn begin_read(&mut self) -> Read {
        Read(std::mem::take(&mut self.finished))
    }

    /// The read that began with `read` returned: what had finished before it is forgotten.
    fn after_read(&mut self, read: Read) {
        for id in read.0 {
            self.started.remove(&id);
        }
    }

    /// Whether `id` may start now (it is not started or finished-but-remembered).
    fn start(&mut self, id: i64) -> bool {
        self.started.insert(id)
    }

    fn finished(&mut self, id: i64) {
        self.finished.push(id);
    }
}

/// Runs one forwarded command; answers its JSON and the leader's last event after it.
async fn run(dispatch: &mpsc::Sender<Command>, id: i64, body: &str) -> Option<(String, u64)> {
    let command: Forwarded = match serde_json::from_str(body) {
        Ok(command) => command,
        Err(e) => {
            let answer = Answer::Job(Err(Failure::BadRequest {
                message: format!("forwarded command {id}: unreadable: {e}"),
                known_device_types: Vec::new(),
            }));
            return serde_json::to_string(&answer).ok().map(|a| (a, 0));
        }
    };
    let (seq_tx, seq_rx) = oneshot::channel();
    let send = |inner: Command| {
        dispatch.send(Command::Forwarded {
            id,
            command: Box::new(inner),
            seq: seq_tx,
        })
    };
    let answer = match command {
        Forwarded::Submit { job } => {
            let (reply, rx) = oneshot::channel();
            send(Command::Submit { job, reply }).await.ok()?;
            Answer::Job(rx.await.ok()?)
        }
        Forwarded::CheckDevice { device, viewer } => {
            let (reply, rx) = oneshot::channel();
            send(Command::CheckDevice {
                device,
                viewer,
                reply,
            })
            .await
            .ok()?;
            Answer::Job(rx.await.ok()?)
        }
        Forwarded::Cancel { job, viewer } => {
            let (reply, rx) = oneshot::channel();
            send(Command::Cancel { job, viewer, reply }).await.ok()?;
            Answer::Job(rx.await.ok()?)
        }
        Forwarded::AcquireLease { request } => {
            let (reply, rx) = oneshot::channel();
            send(Command::AcquireLease { request, reply }).await.ok()?;
            Answer::Lease(rx.await.ok()?)
        }
        Forwarded::RenewLease {
            lease,
            viewer,
            ttl_ms,
        } => {
            let (reply, rx) = oneshot::channel();
            let ttl = ttl_ms.map(Duration::from_millis);
            send(Command::RenewLease {
                lease,
                viewer,
                ttl,
                reply,
            })
            .await
            .ok()?;
            Answer::Lease(rx.await.ok()?)
        }
        Forwarded::ReleaseLease { lease, viewer } => {
            let (reply, rx) = oneshot::channel();
            send(Command::ReleaseLease {
                lease,
                viewer,
                reply,
            })
            .await
            .ok()?;
            Answer::Lease(rx.await.ok()?)
        }
        Forwarded::SetDeviceState {
            device,
            body,
            viewer,
        } => {
            let (reply, rx) = oneshot::channel();
            send(Command::SetDeviceState {
                device,
                body,
                viewer,
                reply,
            })
            .await
            .ok()?;
            Answer::Device(rx.await.ok()?)
        }
        Forwarded::EditDeviceTags {
            device,
            body,
            viewer,
        } => {
            let (reply, rx) = oneshot::channel();
            send(Command::EditDeviceTags {
                device,
                body,
                viewer,
                reply,
            })
            .await
            .ok()?;
            Answer::Device(rx.await.ok()?)
        }
        Forwarded::Agent { relayed } => {
            let (reply, rx) = oneshot::channel();
            send(Command::Relayed { relayed, reply }).await.ok()?;
            Answer::Done(rx.await.ok()?)
        }
        Forwarded::Audit {
            viewer,
            action,
            target,
            detail,
        } => {
            let (reply, rx) = oneshot::channel();
            send(Command::Audit {
                viewer,
                action,
                target,
                detail,
                reply,
            })
            .await
            .ok()?;
            Answer::Done(rx.await.ok()?)
        }
    };
    let seq = seq_rx.await.ok()?;
    Some((serde_json::to_string(&answer).ok()?, seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_that_finishes_during_a_read_is_not_started_again_from_that_read() {
        let mut in_flight = InFlight::default();
        assert!(in_flight.start(7));
        // A read begins while 7 runs; 7 finishes (marked done) before the read returns, but
        // the read saw the table before that and returns 7 as pending.
        let read = in_flight.begin_read();
        in_flight.finished(7);
        in_flight.after_read(read);
        assert!(!in_flight.start(7), "7 ran twice");
        // The next read began after 7's end: it cannot return 7, which is now forgotten.
        let read = in_flight.begin_read();
        in_flight.after_read(read);
        assert!(in_flight.started.is_empty() && in_flight.finished.is_empty());
        // A command still running is never started twice, whatever the reads.
        assert!(in_flight.start(8));
        let read = in_flight.begin_read();
        in_flight.after_read(read);
        assert!(!in_flight.start(8));
    }
}
