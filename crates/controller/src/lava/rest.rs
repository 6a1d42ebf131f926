//! LAVA's REST API v0.2 under `/api/v0.2/`: jobs (submit, one, list with filters), a
//! job's `logs/`, `junit/`, `suites/`, `tests/`, `cancel/`, `resubmit/`, `devices/`,
//! `devicetypes/`, `system/version/`, `system/whoami/`.
//!
//! Invariants:
//! - Every route needs `Authorization: Token T` (LAVA's header; dutlab's `Bearer T` works
//!   too): none or an unknown token is 401, an agent token 403. A job is read only through
//!   [`crate::api::visible_job`] ([`crate::policy`]): 403 for a job the caller may not read.
//! - Lists are LAVA's pages (`count`, `next`, `previous`, `results`) with `limit` (default
//!   50, at most 1000) and `offset`.
//! - Errors are `{"detail": "..."}` (Django REST framework's shape) with the HTTP status.

use super::{
    device_state, exported_cases, lava_health, lava_state, log_page, report, states_named, suites,
    text,
};
use crate::AppState;
use crate::api::{ApiFailure, PEOPLE, ask, prepare_submission, viewer, visible_job};
use crate::auth::Caller;
use crate::dispatcher::{Command, Failure};
use axum::Json;
use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use proto::api::{JobView, SubmitJob};
use proto::{JobId, Millis, Role};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::HashMap;

/// An error in Django REST framework's shape.
pub struct RestFailure(StatusCode, String);

impl IntoResponse for RestFailure {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "detail": self.1 }))).into_response()
    }
}

impl From<ApiFailure> for RestFailure {
    fn from(f: ApiFailure) -> RestFailure {
        RestFailure(f.status(), f.message().to_owned())
    }
}

type RestResult<T> = Result<T, RestFailure>;

/// Resolves `Authorization: Token T` (or `Bearer T`) to a caller, else 401.
pub async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let caller = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Token ")
                .or_else(|| v.strip_prefix("Bearer "))
        })
        .and_then(|t| super::caller_of_token(&state, t));
    match caller {
        Some(caller) if caller.role == Role::Agent => RestFailure(
            StatusCode::FORBIDDEN,
            "agent tokens speak only on the agent link; use a user token".into(),
        )
        .into_response(),
        Some(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        None => RestFailure(
            StatusCode::UNAUTHORIZED,
            "Authentication credentials were not provided or the token is invalid: send `Authorization: Token TOKEN`".into(),
        )
        .into_response(),
    }
}

fn iso_z(at: Option<Millis>) -> Value {
    at.map_or(Value::Null, |t| {
        Value::String(format!("{}Z", super::iso(t)))
    })
}

/// A job as LAVA's `TestJobSerializer` shows it.
pub fn job_json(job: &JobView, definition: Option<&str>) -> Value {
    let groups: Vec<&str> = match &job.visibility {
        proto::Visibility::Group(g) => g.iter().map(|g| g.as_str()).collect(),
        _ => Vec::new(),
    };
    let failed = job.outcome.is_some_and(|o| o != proto::Outcome::Passed);
    json!({
        "id": job.id.0,
        "submitter": job.owner,
        "viewing_groups": groups,
        "description": job.name,
        "health_check": false,
        "requested_device_type": job.device_type,
        "tags": job.tags,
        "actual_device": job.device,
        "submit_time": iso_z(Some(job.submitted_at)),
        "start_time": iso_z(job.started_at),
        "end_time": iso_z(job.finished_at),
        "state": lava_state(job.state),
        "health": lava_health(job.outcome),
        "priority": job.priority,
        "definition": definition,
        "original_definition": definition,
        "multinode_definition": "",
        "failure_tags": [],
        "failure_comment": if failed && !job.reason.is_empty() { Value::String(job.reason.clone()) } else { Value::Null },
        "is_public": job.visibility == proto::Visibility::Public,
    })
}

#[derive(Debug, Deserialize)]
pub struct Page {
    limit: Option<usize>,
    offset: Option<usize>,
}

/// A page of `items` in LAVA's list shape.
fn page(path: &str, items: Vec<Value>, limit: Option<usize>, offset: Option<usize>) -> Value {
    let limit = limit.unwrap_or(50).clamp(1, 1000);
    let offset = offset.unwrap_or(0);
    let count = items.len();
    let link = |o: usize| Value::String(format!("{path}?limit={limit}&offset={o}"));
    json!({
        "count": count,
        "next": if offset + limit < count { link(offset + limit) } else { Value::Null },
        "previous": if offset > 0 { link(offset.saturating_sub(limit)) } else { Value::Null },
        "results": items.into_iter().skip(offset).take(limit).collect::<Vec<_>>(),
    })
}

/// `POST /api/v0.2/jobs/` with `{"definition": "..."}`.
pub async fn submit(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Json(body): Json<Value>,
) -> RestResult<(StatusCode, Json<Value>)> {
    let definition = body
        .get("definition")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            RestFailure(
                StatusCode::BAD_REQUEST,
                "definition: this field is required (the job YAML as a string)".into(),
            )
        })?
        .to_owned();
    let view = submit_definition(&state, &caller, definition).await?;
    Ok((StatusCode::CREATED, Json(submitted(&view))))
}

/// LAVA's answer to a submission: `job_ids`, for a multinode job its sub-jobs' `ID.N`.
fn submitted(view: &JobView) -> Value {
    let ids = match &view.group {
        Some(g) => json!(
            (0..g.jobs.len())
                .map(|n| format!("{}.{n}", g.id))
                .collect::<Vec<_>>()
        ),
        None => json!([view.id.0]),
    };
    json!({ "message": "job(s) successfully submitted", "job_ids": ids })
}

async fn submit_definition(
    state: &AppState,
    caller: &Caller,
    definition: String,
) -> RestResult<JobView> {
    let body = SubmitJob {
        definition,
        file_name: None,
        wait_for_device: false,
        // LAVA's submissions never ask for a retry.
        retry: proto::RetryPolicy::Never,
    };
    let submission = prepare_submission(state, caller, body).await.map_err(|f| {
        RestFailure(
            f.status(),
            format!("Problem with submitted job data: {}", f.message()),
        )
    })?;
    let view = ask(state, |reply| Command::Submit {
        job: Box::new(submission),
        reply,
    })
    .await?
    .map_err(|f| RestFailure::from(ApiFailure::from(f)))?;
    Ok(view)
}

#[derive(Debug, Deserialize)]
pub struct JobFilters {
    limit: Option<usize>,
    offset: Option<usize>,
    state: Option<String>,
    #[serde(rename = "state__in")]
    state_in: Option<String>,
    health: Option<String>,
    #[serde(rename = "health__in")]
    health_in: Option<String>,
    submitter: Option<String>,
    requested_device_type: Option<String>,
    actual_device: Option<String>,
    description: Option<String>,
    #[serde(rename = "description__contains")]
    description_contains: Option<String>,
    #[serde(rename = "id__gt")]
    id_gt: Option<u64>,
    #[serde(rename = "id__lt")]
    id_lt: Option<u64>,
    ordering: Option<String>,
}

fn bad(message: String) -> RestFailure {
    RestFailure(StatusCode::BAD_REQUEST, message)
}

/// `GET /api/v0.2/jobs/`: the jobs the caller may read, newest first, with LAVA's filters.
pub async fn list(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Query(f): Query<JobFilters>,
) -> RestResult<Json<Value>> {
    caller.require(&PEOPLE).map_err(ApiFailure::from)?;
    let words = |one: &Option<String>, many: &Option<String>| -> Vec<String> {
        one.iter()
            .cloned()
            .chain(many.iter().flat_map(|m| m.split(',').map(str::to_owned)))
            .collect()
    };
    let mut states = Vec::new();
    let state_words = words(&f.state, &f.state_in);
    for w in &state_words {
        states.extend(states_named(w).ok_or_else(|| {
            bad(format!(
                "state: {w:?} is not one of Submitted, Scheduling, Scheduled, Running, Canceling, Finished"
            ))
        })?);
    }
    let healths = words(&f.health, &f.health_in);
    for h in &healths {
        if super::health_matches(h, None).is_none() {
            return Err(bad(format!(
                "health: {h:?} is not one of Unknown, Complete, Incomplete, Canceled"
            )));
        }
    }
    let viewer = viewer(&state, &caller);
    let mut jobs = ask(&state, |reply| Command::Jobs {
        viewer,
        state: None,
        limit: 10_000,
        reply,
    })
    .await?;
    match f.ordering.as_deref() {
        None | Some("-id") => {}
        Some("id") => jobs.reverse(),
        Some(other) => return Err(bad(format!("ordering: {other:?} is not id or -id"))),
    }
    let items = jobs
        .iter()
        .filter(|j| state_words.is_empty() || states.contains(&j.state))
        .filter(|j| {
            healths.is_empty()
                || healths
                    .iter()
                    .any(|h| super::health_matches(h, j.outcome) == Some(true))
        })
        .filter(|j| f.submitter.as_ref().is_none_or(|s| &j.owner == s))
        .filter(|j| {
            f.requested_device_type
                .as_ref()
                .is_none_or(|t| &j.device_type == t)
        })
        .filter(|j| {
            f.actual_device
                .as_ref()
                .is_none_or(|d| j.device.as_ref() == Some(d))
        })
        .filter(|j| f.description.as_ref().is_none_or(|d| &j.name == d))
        .filter(|j| {
            f.description_contains
                .as_ref()
                .is_none_or(|d| j.name.contains(d.as_str()))
        })
        .filter(|j| f.id_gt.is_none_or(|n| j.id.0 > n))
        .filter(|j| f.id_lt.is_none_or(|n| j.id.0 < n))
        .map(|j| job_json(j, None))
        .collect();
    Ok(Json(page("/api/v0.2/jobs/", items, f.limit, f.offset)))
}

async fn job_of(state: &AppState, caller: &Caller, id: u64) -> RestResult<JobView> {
    Ok(visible_job(state, caller, JobId(id)).await?)
}

/// `GET /api/v0.2/jobs/{id}/`.
pub async fn one(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(id): Path<u64>,
) -> RestResult<Json<Value>> {
    let job = job_of(&state, &caller, id).await?;
    let definition = state
        .store
        .definition(job.id)
        .await
        .map_err(|e| RestFailure(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    Ok(Json(job_json(&job, definition.as_deref())))
}

/// `GET /api/v0.2/jobs/{id}/logs/?start=&end=`: LAVA's YAML log lines.
pub async fn logs(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(id): Path<u64>,
    Query(q): Query<HashMap<String, String>>,
) -> RestResult<Response> {
    let job = job_of(&state, &caller, id).await?;
    let number = |k: &str| -> RestResult<Option<u64>> {
        q.get(k)
            .map(|v| {
                v.parse()
                    .map_err(|_| bad(format!("{k}: {v:?} is not a line number")))
            })
            .transpose()
    };
    let start = number("start")?.unwrap_or(0);
    let end = number("end")?;
    let (yaml, _) = log_page(&state, job.id, start, end)
        .await
        .map_err(|e| RestFailure(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    if yaml.is_empty() && start == 0 {
        return Err(RestFailure(StatusCode::NOT_FOUND, "Not found.".into()));
    }
    Ok((
        [
            (header::CONTENT_TYPE, "application/yaml".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=job_{}.yaml", job.id),
            ),
        ],
        yaml,
    )
        .into_response())
}

/// `GET /api/v0.2/jobs/{id}/junit/`: the results as JUnit XML, a suite per LAVA suite.
pub async fn junit(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(id): Path<u64>,
) -> RestResult<Response> {
    let job = job_of(&state, &caller, id).await?;
    let report = report(&state, job.id).await?;
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<testsuites>\n");
    if let Some(report) = &report {
        for (_, suite) in suites(report) {
            let cases: Vec<&proto::TestCase> =
                report.cases.iter().filter(|c| c.suite == suite).collect();
            let failures = cases
                .iter()
                .filter(|c| c.result == proto::CaseResult::Fail)
                .count();
            let skipped = cases
                .iter()
                .filter(|c| c.result == proto::CaseResult::Skip)
                .count();
            out.push_str(&format!(
                "\t<testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\" errors=\"0\" skipped=\"{skipped}\">\n",
                xml_attr(suite),
                cases.len()
            ));
            for c in cases {
                out.push_str(&format!(
                    "\t\t<testcase name=\"{}\" classname=\"{}\"",
                    xml_attr(&c.name),
                    xml_attr(suite)
                ));
                match c.result {
                    proto::CaseResult::Fail => {
                        out.push_str(">\n\t\t\t<failure type=\"failure\" message=\"failed\"/>\n\t\t</testcase>\n")
                    }
                    proto::CaseResult::Skip => {
                        out.push_str(">\n\t\t\t<skipped type=\"skipped\" message=\"skipped\"/>\n\t\t</testcase>\n")
                    }
                    _ => out.push_str("/>\n"),
                }
            }
            out.push_str("\t</testsuite>\n");
        }
    }
    out.push_str("</testsuites>\n");
    Ok((
        [
            (header::CONTENT_TYPE, "application/xml".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=job_{}.xml", job.id),
            ),
        ],
        out,
    )
        .into_response())
}

/// Text for an XML attribute: markup escaped, characters XML cannot carry replaced.
fn xml_attr(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\n' => out.push_str("&#10;"),
            '\t' => out.push_str("&#9;"),
            '\r' => out.push_str("&#13;"),
            c if (c as u32) < 0x20 || c == '\u{fffe}' || c == '\u{ffff}' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// `GET /api/v0.2/jobs/{id}/suites/`.
pub async fn job_suites(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(id): Path<u64>,
    Query(p): Query<Page>,
) -> RestResult<Json<Value>> {
    let job = job_of(&state, &caller, id).await?;
    let report = report(&state, job.id).await?;
    let items = report.as_ref().map_or_else(Vec::new, |r| {
        suites(r)
            .into_iter()
            .map(|(sid, name)| {
                json!({
                    "id": sid,
                    "resource_uri": format!("/api/v0.2/jobs/{}/suites/{sid}/", job.id),
                    "name": name,
                    "job": job.id.0,
                })
            })
            .collect()
    });
    Ok(Json(page(
        &format!("/api/v0.2/jobs/{}/suites/", job.id),
        items,
        p.limit,
        p.offset,
    )))
}

#[derive(Debug, Deserialize)]
pub struct TestFilters {
    limit: Option<usize>,
    offset: Option<usize>,
    result: Option<String>,
    name: Option<String>,
}

/// `GET /api/v0.2/jobs/{id}/tests/`.
pub async fn job_tests(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(id): Path<u64>,
    Query(f): Query<TestFilters>,
) -> RestResult<Json<Value>> {
    tests_of(&state, &caller, id, None, f).await
}

/// `GET /api/v0.2/jobs/{id}/suites/{suite}/tests/`.
pub async fn suite_tests(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path((id, suite)): Path<(u64, usize)>,
    Query(f): Query<TestFilters>,
) -> RestResult<Json<Value>> {
    tests_of(&state, &caller, id, Some(suite), f).await
}

async fn tests_of(
    state: &AppState,
    caller: &Caller,
    id: u64,
    suite: Option<usize>,
    f: TestFilters,
) -> RestResult<Json<Value>> {
    let job = job_of(state, caller, id).await?;
    let report = report(state, job.id).await?;
    let mut items = Vec::new();
    if let Some(report) = &report {
        let suite_ids = suites(report);
        let suite_name = match suite {
            None => None,
            Some(s) => Some(
                suite_ids
                    .iter()
                    .find(|(i, _)| *i == s)
                    .map(|(_, n)| *n)
                    .ok_or_else(|| RestFailure(StatusCode::NOT_FOUND, "Not found.".into()))?,
            ),
        };
        for c in exported_cases(&job, report) {
            if suite_name.is_some_and(|n| n != c.case.suite) {
                continue;
            }
            if f.result
                .as_ref()
                .is_some_and(|r| r != c.case.result.as_str())
            {
                continue;
            }
            if f.name.as_ref().is_some_and(|n| n != &c.case.name) {
                continue;
            }
            let sid = suite_ids
                .iter()
                .find(|(_, n)| *n == c.case.suite)
                .map_or(0, |(i, _)| *i);
            items.push(json!({
                "id": c.id,
                "result": c.case.result.as_str(),
                "resource_uri": format!("/api/v0.2/jobs/{}/suites/{sid}/tests/{}/", job.id, c.id),
                "unit": c.case.units.clone().unwrap_or_default(),
                "name": c.case.name,
                "measurement": c.case.measurement,
                "metadata": text_metadata(&c),
                "start_log_line": null,
                "end_log_line": null,
                "logged": iso_z(Some(c.logged)),
                "suite": sid,
                "test_set": c.case.set,
            }));
        }
    } else if suite.is_some() {
        return Err(RestFailure(StatusCode::NOT_FOUND, "Not found.".into()));
    }
    Ok(Json(page(
        &format!("/api/v0.2/jobs/{}/tests/", job.id),
        items,
        f.limit,
        f.offset,
    )))
}

/// A case's metadata as LAVA stores it: YAML text of a mapping.
fn text_metadata(c: &super::ExportedCase<'_>) -> String {
    format!(
        "{{\"definition\": {}, \"case\": {}, \"result\": {}}}",
        quoted(&c.case.suite),
        quoted(&c.case.name),
        quoted(c.case.result.as_str())
    )
}

fn quoted(s: &str) -> String {
    let mut out = String::new();
    text::quoted(&mut out, s);
    out
}

/// `GET /api/v0.2/jobs/{id}/cancel/` (LAVA's verb for it is GET).
pub async fn cancel(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(id): Path<u64>,
) -> RestResult<Json<Value>> {
    caller.require(&PEOPLE).map_err(ApiFailure::from)?;
    let viewer = viewer(&state, &caller);
    match ask(&state, |reply| Command::Cancel {
        job: JobId(id),
        viewer,
        reply,
    })
    .await?
    {
        Ok(_) => {}
        // LAVA answers a job already finished or canceling as sent.
        Err(Failure::Conflict(_)) => {}
        Err(f) => return Err(ApiFailure::from(f).into()),
    }
    Ok(Json(json!({ "message": "Job cancel signal sent." })))
}

/// `POST /api/v0.2/jobs/{id}/resubmit/`.
pub async fn resubmit(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(id): Path<u64>,
) -> RestResult<(StatusCode, Json<Value>)> {
    let job = job_of(&state, &caller, id).await?;
    let definition = state
        .store
        .definition(job.id)
        .await
        .map_err(|e| RestFailure(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?
        .ok_or_else(|| RestFailure(StatusCode::NOT_FOUND, "Not found.".into()))?;
    let new = submit_definition(&state, &caller, definition).await?;
    Ok((StatusCode::CREATED, Json(submitted(&new))))
}

/// `GET /api/v0.2/devices/`.
pub async fn devices(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Query(p): Query<Page>,
) -> RestResult<Json<Value>> {
    caller.require(&PEOPLE).map_err(ApiFailure::from)?;
    let mut devices = ask(&state, |reply| Command::Devices { reply }).await?;
    devices.sort_by(|a, b| a.name.cmp(&b.name));
    let items = devices
        .iter()
        .map(|d| {
            let (state, health) = device_state(d);
            json!({
                "hostname": d.name,
                "device_type": d.device_type,
                "device_version": null,
                "physical_owner": null,
                "physical_group": null,
                "description": null,
                "tags": d.tags,
                "state": state,
                "health": health,
                "last_health_report_job": null,
                "worker_host": d.agent,
                "is_synced": false,
                "current_job": d.job.map(|j| j.0),
            })
        })
        .collect();
    Ok(Json(page("/api/v0.2/devices/", items, p.limit, p.offset)))
}

/// `GET /api/v0.2/devicetypes/`.
pub async fn device_types(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Query(p): Query<Page>,
) -> RestResult<Json<Value>> {
    caller.require(&PEOPLE).map_err(ApiFailure::from)?;
    let devices = ask(&state, |reply| Command::Devices { reply }).await?;
    let items = super::rpc::device_types(&devices)
        .into_iter()
        .map(|(name, _)| {
            json!({
                "name": name,
                "architecture": null,
                "processor": null,
                "cpu_model": null,
                "aliases": [],
                "bits": null,
                "cores": [],
                "core_count": null,
                "description": null,
                "health_frequency": 24,
                "disable_health_check": true,
                "health_denominator": "hours",
                "display": true,
            })
        })
        .collect();
    Ok(Json(page(
        "/api/v0.2/devicetypes/",
        items,
        p.limit,
        p.offset,
    )))
}

/// `GET /api/v0.2/system/version/`.
pub async fn system_version() -> Json<Value> {
    Json(json!({ "version": super::version() }))
}

/// `GET /api/v0.2/system/whoami/`.
pub async fn system_whoami(axum::Extension(caller): axum::Extension<Caller>) -> Json<Value> {
    Json(json!({ "user": caller.user }))
}

/// The REST v0.2 routes, each behind [`authenticate`].
pub fn routes(state: AppState) -> axum::Router<AppState> {
    use axum::routing::{get, post};
    axum::Router::new()
        .route("/api/v0.2/jobs/", get(list).post(submit))
        .route("/api/v0.2/jobs/{id}/", get(one))
        .route("/api/v0.2/jobs/{id}/logs/", get(logs))
        .route("/api/v0.2/jobs/{id}/junit/", get(junit))
        .route("/api/v0.2/jobs/{id}/suites/", get(job_suites))
        .route(
            "/api/v0.2/jobs/{id}/suites/{suite}/tests/",
            get(suite_tests),
        )
        .route("/api/v0.2/jobs/{id}/tests/", get(job_tests))
        .route("/api/v0.2/jobs/{id}/cancel/", get(cancel))
        .route("/api/v0.2/jobs/{id}/resubmit/", post(resubmit))
        .route("/api/v0.2/devices/", get(devices))
        .route("/api/v0.2/devicetypes/", get(device_types))
        .route("/api/v0.2/system/version/", get(system_version))
        .route("/api/v0.2/system/whoami/", get(system_whoami))
        .route_layer(axum::middleware::from_fn_with_state(state, authenticate))
}

/// The REST v0.2 paths with their methods, for the test that every route needs a token.
pub const ROUTES: [(&str, &str); 14] = [
    ("GET", "/api/v0.2/jobs/"),
    ("POST", "/api/v0.2/jobs/"),
    ("GET", "/api/v0.2/jobs/1/"),
    ("GET", "/api/v0.2/jobs/1/logs/"),
    ("GET", "/api/v0.2/jobs/1/junit/"),
    ("GET", "/api/v0.2/jobs/1/suites/"),
    ("GET", "/api/v0.2/jobs/1/suites/1/tests/"),
    ("GET", "/api/v0.2/jobs/1/tests/"),
    ("GET", "/api/v0.2/jobs/1/cancel/"),
    ("POST", "/api/v0.2/jobs/1/resubmit/"),
    ("GET", "/api/v0.2/devices/"),
    ("GET", "/api/v0.2/devicetypes/"),
    ("GET", "/api/v0.2/system/version/"),
    ("GET", "/api/v0.2/system/whoami/"),
];
