//! REST routes under `/api/v1` and the job-log follow stream.
//!
//! Invariants:
//! - Every route here sits behind [`authenticate`]: no token or an unknown one is 401 before
//!   the route looks at anything else; roles are checked first thing in each handler (403).
//! - Reading or cancelling a job goes through the dispatcher, which asks [`crate::policy`]
//!   with the caller's [`Viewer`] (user id, role, groups now); [`visible_job`] is that check
//!   for any route that reads something of a job (artifacts too).
//! - Job owners are the caller's principal id, never the token's name.
//! - Job files are parsed by `jobspec` at submit and checked with `jobspec::check_runnable`
//!   (a multinode job per role, then submitted as a group of sub-jobs),
//!   as `dutlab job validate` does: a bad one, or one no device type dutlab knows can run, is
//!   400 naming file, field and reason, and nothing is queued. Bodies above the limit are refused from their `Content-Length` (413).
//! - Follow streams are sessions of their token: revoking it closes them (close frame with the
//!   reason).
//! - Followers get each log record once, in order, from their cursor: the stream subscribes
//!   to live records before reading the file and skips what it already sent.

use crate::AppState;
use crate::auth::{Caller, Forbidden};
use crate::dispatcher::{Command, Failure, Submission};
use crate::policy::Viewer;
use axum::Json;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use proto::api::{
    AgentView, ApiError, DeviceView, FollowEvent, JobResults, JobView, LogPage, MAX_LOG_PAGE,
    SubmitJob,
};
use proto::{GroupName, JobId, JobState, Role, Seq, Visibility};
use serde::Deserialize;
use tokio::sync::{broadcast, oneshot};

/// An error answer.
#[derive(Debug)]
pub struct ApiFailure {
    status: StatusCode,
    body: ApiError,
}

impl ApiFailure {
    pub fn new(status: StatusCode, error: impl Into<String>) -> ApiFailure {
        ApiFailure {
            status,
            body: ApiError::new(error),
        }
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The error message of the answer.
    pub fn message(&self) -> &str {
        &self.body.error
    }

    /// The body it answers with.
    pub fn into_body(self) -> ApiError {
        self.body
    }
}

impl IntoResponse for ApiFailure {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

impl From<Failure> for ApiFailure {
    fn from(f: Failure) -> ApiFailure {
        match f {
            Failure::NotFound(m) => ApiFailure::new(StatusCode::NOT_FOUND, m),
            Failure::Forbidden(m) => ApiFailure::new(StatusCode::FORBIDDEN, m),
            Failure::Conflict(m) => ApiFailure::new(StatusCode::CONFLICT, m),
            Failure::Gone(m) => ApiFailure::new(StatusCode::GONE, m),
            Failure::Unavailable(m) => ApiFailure::new(StatusCode::SERVICE_UNAVAILABLE, m),
            Failure::OverQuota { message, quota } => ApiFailure {
                status: StatusCode::TOO_MANY_REQUESTS,
                body: ApiError {
                    quota: Some(quota),
                    ..ApiError::new(message)
                },
            },
            Failure::BadRequest {
                message,
                known_device_types,
            } => ApiFailure {
                status: StatusCode::BAD_REQUEST,
                body: ApiError {
                    known_device_types,
                    ..ApiError::new(message)
                },
            },
        }
    }
}

impl From<Forbidden> for ApiFailure {
    fn from(f: Forbidden) -> ApiFailure {
        ApiFailure::new(StatusCode::FORBIDDEN, f.to_string())
    }
}

pub(crate) type ApiResult<T> = Result<T, ApiFailure>;

/// Resolves the bearer token to a [`Caller`] or answers 401.
pub async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let caller = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| state.tokens.caller(v));
    match caller {
        Some(mut caller) => {
            caller.remote = request
                .extensions()
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|c| c.0);
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        None => ApiFailure::new(
            StatusCode::UNAUTHORIZED,
            "missing or unknown token: send `Authorization: Bearer TOKEN`",
        )
        .into_response(),
    }
}

/// The caller as the policy sees it: its user, role, and that user's groups now.
pub fn viewer(state: &AppState, caller: &Caller) -> Viewer {
    Viewer {
        principal: caller.principal,
        name: caller.user.clone(),
        role: caller.role,
        groups: state.principals.groups_of(caller.principal),
        remote: caller.remote,
    }
}

pub(crate) const PEOPLE: [Role; 2] = [Role::Admin, Role::User];

pub(crate) async fn ask<T>(
    state: &AppState,
    make: impl FnOnce(oneshot::Sender<T>) -> Command,
) -> ApiResult<T> {
    let (tx, rx) = oneshot::channel();
    let gone = || ApiFailure::new(StatusCode::SERVICE_UNAVAILABLE, "the dispatcher stopped");
    state.dispatch.send(make(tx)).await.map_err(|_| gone())?;
    rx.await.map_err(|_| gone())
}

/// Liveness: no token needed.
#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "the controller is up", body = String)))]
pub async fn healthz() -> &'static str {
    "ok"
}

/// Queues a job (LAVA job YAML).
#[utoipa::path(post, path = "/api/v1/jobs", security(("bearer" = [])), request_body = SubmitJob,
    responses((status = 201, body = JobView), (status = 400, description = "bad job file; the field is named", body = ApiError),
        (status = 401, body = ApiError), (status = 403, body = ApiError), (status = 413, description = "body too large"),
        (status = 429, description = "a quota of the caller's user is reached; `quota` names it", body = ApiError)))]
pub async fn submit_job(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Json(body): Json<SubmitJob>,
) -> ApiResult<(StatusCode, Json<JobView>)> {
    let submission = prepare_submission(&state, &caller, body).await?;
    let view = ask(&state, |reply| Command::Submit {
        job: Box::new(submission),
        reply,
    })
    .await??;
    Ok((StatusCode::CREATED, Json(view)))
}

/// Checks a job file as `POST /api/v1/jobs` does (role, parse, runnable here, artifacts,
/// visibility) and makes the submission the dispatcher takes; every refusal is 400 naming
/// file, field and reason (403 for a role that may not submit).
pub async fn prepare_submission(
    state: &AppState,
    caller: &Caller,
    body: SubmitJob,
) -> ApiResult<Submission> {
    caller.require(&PEOPLE)?;
    let file_name = body
        .file_name
        .as_deref()
        .and_then(|n| n.rsplit('/').next())
        .filter(|n| !n.is_empty() && n.len() <= 128 && !n.chars().any(|c| c.is_control()))
        .unwrap_or("job.yaml")
        .to_owned();
    let bad = |message: String| ApiFailure::new(StatusCode::BAD_REQUEST, message);
    let job = jobspec::parse_job(&file_name, &body.definition).map_err(|e| bad(e.to_string()))?;
    // What `dutlab job validate` refuses (no device type dutlab knows runs it).
    jobspec::check_runnable(&file_name, &job)
        .map_err(|e| bad(format!("valid LAVA, but not runnable here: {e}")))?;
    let artifacts = referenced_artifacts(state, caller, &file_name, &job).await?;
    let visibility = match &job.visibility {
        jobspec::Visibility::Public => Visibility::Public,
        jobspec::Visibility::Personal => Visibility::Personal,
        jobspec::Visibility::Group(names) => {
            let groups: Result<Vec<GroupName>, _> =
                names.iter().map(|n| GroupName::new(n)).collect();
            let groups = groups.map_err(|e| bad(format!("{file_name}: visibility.group: {e}")))?;
            if groups.is_empty() {
                return Err(bad(format!(
                    "{file_name}: visibility.group: name at least one group"
                )));
            }
            Visibility::Group(groups)
        }
    };
    let roles: Vec<crate::dispatcher::RoleInstance> = jobspec::multinode::instances(&job)
        .into_iter()
        .map(|i| crate::dispatcher::RoleInstance {
            role: i.role,
            device_type: i.device_type,
            tags: i.tags,
            host: i.host,
        })
        .collect();
    if !roles.is_empty() && !body.retry.is_never() {
        return Err(bad(format!(
            "{file_name}: retry: a multinode group is not retried (its sub-jobs run together)"
        )));
    }
    if roles.len() > scheduler::MAX_GROUP {
        return Err(bad(format!(
            "{file_name}: protocols.lava-multinode.roles: {} role instances; a group has at most {}",
            roles.len(),
            scheduler::MAX_GROUP
        )));
    }
    Ok(Submission {
        roles,
        name: job.name.clone(),
        owner: caller.principal,
        owner_name: caller.user.clone(),
        role: caller.role,
        visibility,
        file_name,
        definition: body.definition,
        warnings: job.warnings.iter().map(|w| w.to_string()).collect(),
        spec: scheduler::JobSpec {
            device_type: job.device_type.clone(),
            tags: job.tags.clone(),
            priority: job.priority,
            owner: Some(caller.principal),
            device: None,
            purpose: scheduler::JobPurpose::Ordinary,
            retry: body.retry,
            ..Default::default()
        },
        wait_for_device: body.wait_for_device,
        artifacts,
    })
}

/// The digests a job references, each stored and usable by the caller (else 400 naming the
/// field).
async fn referenced_artifacts(
    state: &AppState,
    caller: &Caller,
    file_name: &str,
    job: &jobspec::Job,
) -> ApiResult<Vec<String>> {
    let mut digests: Vec<String> = Vec::new();
    for reference in job.artifact_references() {
        let Some(hex) = jobspec::artifact_digest(&reference.text) else {
            continue;
        };
        if digests.iter().any(|d| d == hex) {
            continue;
        }
        let stored = state
            .store
            .artifact_size(hex)
            .await
            .map_err(|e| ApiFailure::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?
            .is_some();
        if !stored || !crate::artifacts::may_use(state, caller, hex).await? {
            return Err(ApiFailure::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "{file_name}: {}: artifact sha256:{hex} does not exist or is not yours to use                      (upload it first: `dutlab job submit` does)",
                    reference.field
                ),
            ));
        }
        digests.push(hex.to_owned());
    }
    Ok(digests)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct JobsQuery {
    /// Only jobs in this state (`queued`, `assigned`, `running`, `canceling`, `finished`).
    state: Option<String>,
    /// At most this many, newest first (default 200, at most 10000).
    limit: Option<usize>,
}

/// Lists the jobs the caller may see, newest first.
#[utoipa::path(get, path = "/api/v1/jobs", security(("bearer" = [])), params(JobsQuery),
    responses((status = 200, body = Vec<JobView>), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 403, body = ApiError)))]
pub async fn list_jobs(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Query(query): Query<JobsQuery>,
) -> ApiResult<Json<Vec<JobView>>> {
    caller.require(&PEOPLE)?;
    let wanted = match query.state.as_deref() {
        None => None,
        Some(word) => Some(
            [
                JobState::Queued,
                JobState::Assigned,
                JobState::Running,
                JobState::Canceling,
                JobState::Finished,
            ]
            .into_iter()
            .find(|s| s.as_str() == word)
            .ok_or_else(|| {
                ApiFailure::new(
                    StatusCode::BAD_REQUEST,
                    format!("state: {word:?} is not one of queued, assigned, running, canceling, finished"),
                )
            })?,
        ),
    };
    let limit = query.limit.unwrap_or(200).min(10_000);
    let viewer = viewer(&state, &caller);
    let jobs = ask(&state, |reply| Command::Jobs {
        viewer,
        state: wanted,
        limit,
        reply,
    })
    .await?;
    Ok(Json(jobs))
}

/// The job's view if the caller may read it (403 naming who may, 404): the check of every
/// route that reads a job or something of it.
pub async fn visible_job(state: &AppState, caller: &Caller, job: JobId) -> ApiResult<JobView> {
    caller.require(&PEOPLE)?;
    let viewer = viewer(state, caller);
    Ok(ask(state, |reply| Command::Job { job, viewer, reply }).await??)
}

/// One job.
#[utoipa::path(get, path = "/api/v1/jobs/{id}", security(("bearer" = [])), params(("id" = u64, Path, description = "job id")),
    responses((status = 200, body = JobView), (status = 401, body = ApiError), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
pub async fn get_job(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(id): Path<u64>,
) -> ApiResult<Json<JobView>> {
    Ok(Json(visible_job(&state, &caller, JobId(id)).await?))
}

/// Cancels a job (its owner or an admin): the DUT is powered off and the outcome is `canceled`.
#[utoipa::path(post, path = "/api/v1/jobs/{id}/cancel", security(("bearer" = [])), params(("id" = u64, Path, description = "job id")),
    responses((status = 200, body = JobView), (status = 401, body = ApiError), (status = 403, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub async fn cancel_job(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(id): Path<u64>,
) -> ApiResult<Json<JobView>> {
    caller.require(&PEOPLE)?;
    let viewer = viewer(&state, &caller);
    let view = ask(&state, |reply| Command::Cancel {
        job: JobId(id),
        viewer,
        reply,
    })
    .await??;
    Ok(Json(view))
}

/// The job file as submitted.
#[utoipa::path(get, path = "/api/v1/jobs/{id}/definition", security(("bearer" = [])), params(("id" = u64, Path, description = "job id")),
    responses((status = 200, body = String, content_type = "application/yaml"), (status = 401, body = ApiError), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
pub async fn job_definition(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(id): Path<u64>,
) -> ApiResult<Response> {
    visible_job(&state, &caller, JobId(id)).await?;
    let text = state
        .store
        .definition(JobId(id))
        .await
        .map_err(|e| ApiFailure::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?
        .ok_or_else(|| {
            ApiFailure::new(StatusCode::NOT_FOUND, format!("job {id} does not exist"))
        })?;
    Ok((
        [(header::CONTENT_TYPE, "application/yaml; charset=utf-8")],
        text,
    )
        .into_response())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct LogQuery {
    /// Return records after this sequence number (default 0: from the start).
    cursor: Option<u64>,
    /// At most this many records (default and maximum 10000).
    limit: Option<usize>,
}

/// A page of a job's log.
#[utoipa::path(get, path = "/api/v1/jobs/{id}/logs", security(("bearer" = [])), params(("id" = u64, Path, description = "job id"), LogQuery),
    responses((status = 200, body = LogPage), (status = 401, body = ApiError), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
pub async fn job_logs(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(id): Path<u64>,
    Query(query): Query<LogQuery>,
) -> ApiResult<Json<LogPage>> {
    let view = visible_job(&state, &caller, JobId(id)).await?;
    let cursor = Seq(query.cursor.unwrap_or(0));
    let limit = query.limit.unwrap_or(MAX_LOG_PAGE).clamp(1, MAX_LOG_PAGE);
    let records = state
        .logs
        .read(JobId(id), cursor, limit)
        .await
        .map_err(|e| ApiFailure::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    let next = records.last().map_or(cursor, |r| r.seq);
    let complete = match final_seq(&state, &view).await? {
        Some(last) => next.0 >= last,
        None => false,
    };
    Ok(Json(LogPage {
        records,
        cursor: next,
        complete,
    }))
}

/// For a finished job, the sequence number of its last log record.
async fn final_seq(state: &AppState, view: &JobView) -> ApiResult<Option<u64>> {
    if view.state != JobState::Finished {
        return Ok(None);
    }
    let report = state
        .store
        .report(view.id)
        .await
        .map_err(|e| ApiFailure::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    Ok(Some(report.map_or(0, |(_, last)| last)))
}

/// The job's results: its view and, once finished, the runner's report.
#[utoipa::path(get, path = "/api/v1/jobs/{id}/results", security(("bearer" = [])), params(("id" = u64, Path, description = "job id")),
    responses((status = 200, body = JobResults), (status = 401, body = ApiError), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
pub async fn job_results(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(id): Path<u64>,
) -> ApiResult<Json<JobResults>> {
    let job = visible_job(&state, &caller, JobId(id)).await?;
    let report = state
        .store
        .report(JobId(id))
        .await
        .map_err(|e| ApiFailure::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?
        .map(|(r, _)| r);
    Ok(Json(JobResults { job, report }))
}

/// Every registered device.
#[utoipa::path(get, path = "/api/v1/devices", security(("bearer" = [])),
    responses((status = 200, body = Vec<DeviceView>), (status = 401, body = ApiError), (status = 403, body = ApiError)))]
pub async fn devices(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> ApiResult<Json<Vec<DeviceView>>> {
    caller.require(&PEOPLE)?;
    Ok(Json(ask(&state, |reply| Command::Devices { reply }).await?))
}

/// Every agent that registered devices.
#[utoipa::path(get, path = "/api/v1/agents", security(("bearer" = [])),
    responses((status = 200, body = Vec<AgentView>), (status = 401, body = ApiError), (status = 403, body = ApiError)))]
pub async fn agents(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> ApiResult<Json<Vec<AgentView>>> {
    caller.require(&PEOPLE)?;
    Ok(Json(ask(&state, |reply| Command::Agents { reply }).await?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct FollowQuery {
    /// Send records after this sequence number (default 0).
    cursor: Option<u64>,
}

/// Largest message a follower may send (it sends only pings and a close): a larger one
/// closes its socket.
pub const MAX_FOLLOW_MESSAGE: usize = 64 << 10;

/// Follows a job's log live (WebSocket of `FollowEvent` JSON messages).
#[utoipa::path(get, path = "/api/v1/jobs/{id}/logs/follow", security(("bearer" = [])), params(("id" = u64, Path, description = "job id"), FollowQuery),
    responses((status = 101, description = "WebSocket of FollowEvent messages"), (status = 401, body = ApiError), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
pub async fn follow(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(id): Path<u64>,
    Query(query): Query<FollowQuery>,
    ws: WebSocketUpgrade,
) -> ApiResult<Response> {
    let view = visible_job(&state, &caller, JobId(id)).await?;
    let viewer = viewer(&state, &caller);
    let cursor = Seq(query.cursor.unwrap_or(0));
    let ws = ws
        .read_buffer_size(crate::link::WS_BUFFER)
        .write_buffer_size(crate::link::WS_BUFFER)
        .max_message_size(MAX_FOLLOW_MESSAGE)
        .max_frame_size(MAX_FOLLOW_MESSAGE);
    Ok(ws.on_upgrade(move |socket| async move {
        let session = state.sessions.open(&caller.token_id);
        let ender = session.ender();
        if let Err(e) = stream_log(socket, state.clone(), view, viewer, cursor, ender).await {
            tracing::debug!("follower of job {id}: {e}");
        }
        drop(session);
    }))
}

#[derive(Debug, thiserror::Error)]
enum FollowError {
    #[error("socket: {0}")]
    Socket(#[from] axum::Error),
    #[error("{0}")]
    Log(#[from] crate::logs::LogError),
    #[error("{0:?}")]
    Api(ApiFailure),
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
}

async fn send_event(socket: &mut WebSocket, event: &FollowEvent) -> Result<(), FollowError> {
    let text = serde_json::to_string(event)?;
    socket.send(Message::Text(text.into())).await?;
    Ok(())
}

/// Re-reads a job's view, as the follower (the policy decides again).
async fn refresh(state: &AppState, viewer: &Viewer, view: &mut JobView) {
    let job = view.id;
    let viewer = viewer.clone();
    if let Ok(Ok(fresh)) = ask(state, |reply| Command::Job { job, viewer, reply }).await {
        *view = fresh;
    }
}

async fn stream_log(
    mut socket: WebSocket,
    state: AppState,
    mut view: JobView,
    viewer: Viewer,
    mut last: Seq,
    mut ender: crate::sessions::Ender,
) -> Result<(), FollowError> {
    let job = view.id;
    let mut live = state.logs.subscribe(job).await?;
    let mut updates = state.updates.subscribe();
    // The view may have changed between the check and the subscription.
    refresh(&state, &viewer, &mut view).await;
    send_event(&mut socket, &FollowEvent::Job { job: view.clone() }).await?;
    let mut catch_up = true;
    loop {
        if catch_up {
            loop {
                let records = state.logs.read(job, last, 1000).await?;
                if records.is_empty() {
                    break;
                }
                for record in records {
                    last = record.seq;
                    send_event(&mut socket, &FollowEvent::Log { record }).await?;
                }
            }
            catch_up = false;
        }
        if let Some(end) = final_seq(&state, &view).await.map_err(FollowError::Api)?
            && last.0 >= end
        {
            send_event(&mut socket, &FollowEvent::End { job: view }).await?;
            let _ = socket.send(Message::Close(None)).await;
            return Ok(());
        }
        tokio::select! {
            record = live.recv() => match record {
                Ok(record) if record.seq.0 == last.0 + 1 => {
                    last = record.seq;
                    send_event(&mut socket, &FollowEvent::Log { record }).await?;
                }
                Ok(record) if record.seq <= last => {}
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => catch_up = true,
                Err(broadcast::error::RecvError::Closed) => {
                    // The log was closed (job finished): re-subscribe and read the rest.
                    live = state.logs.subscribe(job).await?;
                    catch_up = true;
                }
            },
            update = updates.recv() => match update {
                Ok(update) if update.id == job => {
                    view = update;
                    send_event(&mut socket, &FollowEvent::Job { job: view.clone() }).await?;
                    catch_up = true;
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    refresh(&state, &viewer, &mut view).await;
                    catch_up = true;
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            },
            reason = ender.ended() => {
                let frame = axum::extract::ws::CloseFrame {
                    code: axum::extract::ws::close_code::POLICY,
                    reason: reason.into(),
                };
                let _ = socket.send(Message::Close(Some(frame))).await;
                return Ok(());
            }
            incoming = socket.recv() => match incoming {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return Ok(()),
                Some(Ok(_)) => {}
            },
        }
    }
}
