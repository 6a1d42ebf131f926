//! `POST /RPC2`: LAVA's XML-RPC methods, as `lavacli` calls them.
//!
//! Invariants:
//! - Authentication is HTTP basic `username:token` (what lavacli puts in its URI) or dutlab's
//!   bearer header. A token that is unknown, revoked, or of another user than `username` is
//!   HTTP 401 before the body is read; a call without credentials gets fault 401 whatever
//!   the method (a private lab tells anonymous callers nothing, not even its version).
//!   Agent tokens get fault 403.
//! - Faults use LAVA's codes: 400 bad arguments or job, 401 no credentials, 403 refused by
//!   role or [`crate::policy`], 404 no such job, device, suite or case; -32601 unknown
//!   method, -32700 a body that is not an XML-RPC call.
//! - The body is read only after the credentials passed, at most [`MAX_CALL_BYTES`] (413
//!   beyond), and parsed by [`super::xmlrpc`] (no DTD, bounded nesting and count).

use super::text::{self, Yaml};
use super::xmlrpc::{self, MethodCall, Value};
use super::{
    ExportedCase, cases_csv, device_state, error_type, exported_cases, health_matches, lava_health,
    lava_state, log_page, python_time, report, states_named, visibility_text, xmlrpc_time,
};
use crate::AppState;
use crate::api::{ApiFailure, ask, prepare_submission, viewer, visible_job};
use crate::auth::Caller;
use crate::dispatcher::{Command, Failure};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use proto::api::{DeviceView, JobView, SubmitJob};
use proto::{JobId, JobState, Role};

/// The methods served, as `system.listMethods` lists them.
pub const METHODS: [&str; 27] = [
    "system.listMethods",
    "system.version",
    "system.api_version",
    "system.whoami",
    "scheduler.jobs.cancel",
    "scheduler.jobs.definition",
    "scheduler.jobs.list",
    "scheduler.jobs.logs",
    "scheduler.jobs.queue",
    "scheduler.jobs.resubmit",
    "scheduler.jobs.show",
    "scheduler.jobs.submit",
    "scheduler.jobs.validate",
    "scheduler.devices.list",
    "scheduler.devices.show",
    "scheduler.device_types.list",
    "scheduler.submit_job",
    "scheduler.cancel_job",
    "scheduler.resubmit_job",
    "results.get_testjob_results_yaml",
    "results.get_testjob_results_csv",
    "results.get_testsuite_results_yaml",
    "results.get_testsuite_results_csv",
    "results.get_testcase_results_yaml",
    "results.get_testcase_results_csv",
    "results.get_testjob_suites_list_yaml",
    "results.get_testjob_suites_list_csv",
];

/// A fault: code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    pub code: i32,
    pub message: String,
}

fn fault(code: i32, message: impl Into<String>) -> Fault {
    Fault {
        code,
        message: message.into(),
    }
}

/// LAVA's fault code for an HTTP status of dutlab's API.
fn code_of(status: StatusCode) -> i32 {
    match status {
        StatusCode::NOT_FOUND => 404,
        StatusCode::FORBIDDEN => 403,
        StatusCode::UNAUTHORIZED => 401,
        StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE => 400,
        StatusCode::TOO_MANY_REQUESTS => 429,
        StatusCode::CONFLICT => 409,
        _ => 500,
    }
}

impl From<ApiFailure> for Fault {
    fn from(f: ApiFailure) -> Fault {
        fault(code_of(f.status()), f.message())
    }
}

type RpcResult = Result<Value, Fault>;

/// Who is calling, from the `Authorization` header.
enum Credentials {
    Anonymous,
    Known(Caller),
}

/// A header refused at the HTTP level: status and message.
type Refusal = (StatusCode, &'static str);

fn http_refusal(status: StatusCode, message: &'static str) -> Refusal {
    (status, message)
}

fn refusal_response((status, message): Refusal) -> Response {
    let mut response = (status, message).into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Basic realm=\"XML-RPC Authentication token\""),
        );
    }
    response
}

fn credentials(state: &AppState, headers: &HeaderMap) -> Result<Credentials, Refusal> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(Credentials::Anonymous);
    };
    let value = value
        .to_str()
        .map_err(|_| http_refusal(StatusCode::BAD_REQUEST, "Invalid Authorization header"))?;
    let (scheme, rest) = value
        .split_once(' ')
        .ok_or_else(|| http_refusal(StatusCode::BAD_REQUEST, "Invalid Authorization header"))?;
    let invalid = || http_refusal(StatusCode::UNAUTHORIZED, "Invalid token");
    match scheme {
        "Basic" => {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(rest.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| {
                    http_refusal(
                        StatusCode::BAD_REQUEST,
                        "Corrupted Authorization header, bad base64 encoding",
                    )
                })?;
            let (user, token) = decoded.split_once(':').ok_or_else(|| {
                http_refusal(
                    StatusCode::BAD_REQUEST,
                    "Corrupted Authorization header, no user:token",
                )
            })?;
            // lavacli puts the token in a URI: a token with reserved characters arrives
            // percent-encoded. dutlab tokens have none, so nothing needs decoding.
            let caller = super::caller_of_token(state, token).ok_or_else(invalid)?;
            if caller.user != user {
                return Err(invalid());
            }
            Ok(Credentials::Known(caller))
        }
        "Bearer" => Ok(Credentials::Known(
            super::caller_of_token(state, rest).ok_or_else(invalid)?,
        )),
        _ => Err(http_refusal(
            StatusCode::BAD_REQUEST,
            "Unsupported Authorization scheme: only Basic (user and token) is supported",
        )),
    }
}

/// Largest `/RPC2` body: a job definition (1 MiB) with room for XML escaping.
pub const MAX_CALL_BYTES: usize = proto::api::MAX_JOB_BODY * 2 + 4096;

/// The `/RPC2` handler: credentials first, then the body (bounded), then the call.
pub async fn rpc2(State(state): State<AppState>, request: Request) -> Response {
    let credentials = match credentials(&state, request.headers()) {
        Err(refused) => return refusal_response(refused),
        Ok(c) => c,
    };
    let answer = match credentials {
        Credentials::Anonymous => Err(fault(
            401,
            "Authentication with user and token required for this API.",
        )),
        Credentials::Known(caller) => {
            match axum::body::to_bytes(request.into_body(), MAX_CALL_BYTES).await {
                Err(_) => {
                    return (
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("an XML-RPC call is at most {MAX_CALL_BYTES} bytes"),
                    )
                        .into_response();
                }
                Ok(body) => match std::str::from_utf8(&body) {
                    Err(_) => Err(fault(-32700, "the request body is not UTF-8")),
                    Ok(text) => match xmlrpc::parse_call(text) {
                        Err(e) => Err(fault(-32700, e.to_string())),
                        Ok(_) if caller.role == Role::Agent => Err(fault(
                            403,
                            "agent tokens speak only on the agent link; use a user token",
                        )),
                        Ok(call) => call_method(&state, &caller, call).await,
                    },
                },
            }
        }
    };
    let text = match answer {
        Ok(v) => xmlrpc::response(&v),
        Err(f) => xmlrpc::fault(f.code, &f.message),
    };
    ([(header::CONTENT_TYPE, "text/xml; charset=utf-8")], text).into_response()
}

/// The arguments of one call, read by position with LAVA's defaults.
struct Args<'a> {
    method: &'a str,
    params: &'a [Value],
}

impl Args<'_> {
    fn get(&self, i: usize) -> Option<&Value> {
        self.params.get(i).filter(|v| !v.is_nil())
    }

    fn wrong(&self, i: usize, what: &str) -> Fault {
        fault(400, format!("{}: argument {}: {what}", self.method, i + 1))
    }

    /// A job id: an integer, or a string of digits (lavacli sends what was typed).
    fn job(&self, i: usize) -> Result<JobId, Fault> {
        match self.get(i) {
            Some(Value::Int(n)) if *n > 0 => Ok(JobId(*n as u64)),
            Some(Value::String(s)) => s
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|n| *n > 0)
                .map(JobId)
                .ok_or_else(|| fault(404, format!("Job '{}' was not found.", short(s)))),
            None => Err(fault(400, "Bad request: TestJob id was not specified.")),
            Some(_) => Err(self.wrong(i, "a job id is an integer or a string of digits")),
        }
    }

    fn string(&self, i: usize) -> Result<Option<&str>, Fault> {
        match self.get(i) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(self.wrong(i, "expected a string")),
        }
    }

    fn required(&self, i: usize, what: &str) -> Result<&str, Fault> {
        self.string(i)?
            .ok_or_else(|| self.wrong(i, &format!("{what} is required")))
    }

    fn int(&self, i: usize, default: i64) -> Result<i64, Fault> {
        match self.get(i) {
            None => Ok(default),
            Some(Value::Int(n)) => Ok(*n),
            Some(Value::String(s)) => s
                .trim()
                .parse()
                .map_err(|_| self.wrong(i, "expected an integer")),
            Some(_) => Err(self.wrong(i, "expected an integer")),
        }
    }

    fn opt_int(&self, i: usize) -> Result<Option<i64>, Fault> {
        match self.get(i) {
            None => Ok(None),
            Some(_) => self.int(i, 0).map(Some),
        }
    }

    fn bool(&self, i: usize) -> Result<bool, Fault> {
        match self.get(i) {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(Value::Int(n)) => Ok(*n != 0),
            Some(_) => Err(self.wrong(i, "expected a boolean")),
        }
    }
}

fn short(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(64).collect()
}

async fn call_method(state: &AppState, caller: &Caller, call: MethodCall) -> RpcResult {
    let a = Args {
        method: &call.method,
        params: &call.params,
    };
    match call.method.as_str() {
        "system.listMethods" => Ok(Value::Array(
            METHODS.iter().map(|m| Value::str(*m)).collect(),
        )),
        "system.version" => Ok(Value::str(super::version())),
        "system.api_version" => Ok(Value::Int(2)),
        "system.whoami" => Ok(Value::str(&caller.user)),
        "scheduler.jobs.submit" | "scheduler.submit_job" => {
            let definition = a.required(0, "the job definition")?;
            submit(state, caller, definition.to_owned()).await
        }
        "scheduler.jobs.resubmit" | "scheduler.resubmit_job" => {
            let job = visible(state, caller, a.job(0)?).await?;
            let definition = state
                .store
                .definition(job.id)
                .await
                .map_err(|e| fault(500, e.to_string()))?
                .ok_or_else(|| not_found(job.id))?;
            submit(state, caller, definition).await
        }
        "scheduler.jobs.cancel" | "scheduler.cancel_job" => {
            let job = a.job(0)?;
            let viewer = viewer(state, caller);
            ask(state, |reply| Command::Cancel { job, viewer, reply })
                .await
                .map_err(Fault::from)?
                .map_err(|f| job_failure(job, f))?;
            Ok(Value::Bool(true))
        }
        "scheduler.jobs.show" => Ok(show(&visible(state, caller, a.job(0)?).await?)),
        "scheduler.jobs.definition" => {
            let job = visible(state, caller, a.job(0)?).await?;
            let text = state
                .store
                .definition(job.id)
                .await
                .map_err(|e| fault(500, e.to_string()))?
                .ok_or_else(|| not_found(job.id))?;
            Ok(Value::String(text))
        }
        "scheduler.jobs.logs" => {
            let job = visible(state, caller, a.job(0)?).await?;
            let start = a.int(1, 0)?.max(0) as u64;
            let end = a.opt_int(2)?.map(|e| e.max(0) as u64);
            let (yaml, truncated) = log_page(state, job.id, start, end)
                .await
                .map_err(|e| fault(500, e.to_string()))?;
            let yaml = if yaml.is_empty() {
                "[]\n".to_owned()
            } else {
                yaml
            };
            // Finished only when this page holds the end: lavacli stops polling then.
            let finished = job.state == JobState::Finished && !truncated;
            Ok(Value::Array(vec![
                Value::Bool(finished),
                Value::Base64(yaml.into_bytes()),
            ]))
        }
        "scheduler.jobs.list" => list(state, caller, &a).await,
        "scheduler.jobs.queue" => queue(state, caller, &a).await,
        "scheduler.jobs.validate" => {
            let definition = a.required(0, "the job definition")?;
            let strict = a.bool(1)?;
            Ok(validate(definition, strict))
        }
        "scheduler.devices.list" => {
            let devices = ask(state, |reply| Command::Devices { reply }).await?;
            let mut devices: Vec<Value> = sorted(devices).iter().map(device_brief).collect();
            devices.shrink_to_fit();
            Ok(Value::Array(devices))
        }
        "scheduler.devices.show" => {
            let name = a.required(0, "the device's hostname")?;
            let devices = ask(state, |reply| Command::Devices { reply }).await?;
            let d = devices
                .iter()
                .find(|d| d.name == name)
                .ok_or_else(|| fault(404, format!("Device '{}' was not found.", short(name))))?;
            Ok(device_show(d))
        }
        "scheduler.device_types.list" => {
            let devices = ask(state, |reply| Command::Devices { reply }).await?;
            Ok(Value::Array(
                device_types(&devices)
                    .into_iter()
                    .map(|(name, count)| {
                        Value::fields(vec![
                            ("name", Value::str(name)),
                            ("devices", Value::Int(count as i64)),
                            ("installed", Value::Bool(true)),
                            ("template", Value::Bool(true)),
                        ])
                    })
                    .collect(),
            ))
        }
        m if m.starts_with("results.") => results(state, caller, &a).await,
        other => Err(fault(
            -32601,
            format!(
                "Method '{}' is not served by dutlab (see system.listMethods)",
                short(other)
            ),
        )),
    }
}

fn not_found(job: JobId) -> Fault {
    fault(404, format!("Job '{job}' was not found."))
}

/// A dispatcher refusal about `job` in LAVA's words.
fn job_failure(job: JobId, f: Failure) -> Fault {
    match f {
        Failure::NotFound(_) => not_found(job),
        Failure::Forbidden(m) => fault(403, m),
        Failure::Conflict(m) => fault(400, m),
        Failure::Gone(m) => fault(410, m),
        Failure::BadRequest { message, .. } => fault(400, message),
        Failure::Unavailable(m) => fault(500, m),
        Failure::OverQuota { message, .. } => fault(429, message),
    }
}

async fn visible(state: &AppState, caller: &Caller, job: JobId) -> Result<JobView, Fault> {
    visible_job(state, caller, job).await.map_err(|f| {
        if f.status() == StatusCode::NOT_FOUND {
            not_found(job)
        } else {
            Fault::from(f)
        }
    })
}

async fn submit(state: &AppState, caller: &Caller, definition: String) -> RpcResult {
    let body = SubmitJob {
        definition,
        file_name: None,
        wait_for_device: false,
        // LAVA's submissions never ask for a retry.
        retry: proto::RetryPolicy::Never,
    };
    let submission = prepare_submission(state, caller, body).await.map_err(|f| {
        fault(
            code_of(f.status()),
            format!("Problem with submitted job data: {}", f.message()),
        )
    })?;
    let view = ask(state, |reply| Command::Submit {
        job: Box::new(submission),
        reply,
    })
    .await?
    .map_err(|f| match f {
        // LAVA: a device type it does not have is "not found".
        Failure::BadRequest { message, .. } => fault(
            404,
            format!("Specified device or device type not found: {message}"),
        ),
        other => job_failure(JobId(0), other),
    })?;
    // LAVA: a multinode job answers the list of its sub-jobs' ids, `ID.N` strings.
    match &view.group {
        Some(g) => Ok(Value::Array(
            (0..g.jobs.len())
                .map(|n| Value::String(format!("{}.{n}", g.id)))
                .collect(),
        )),
        None => Ok(Value::Int(view.id.0 as i64)),
    }
}

fn time_value(at: Option<proto::Millis>) -> Value {
    at.map_or(Value::Nil, |t| Value::DateTime(xmlrpc_time(t)))
}

/// `scheduler.jobs.show`: LAVA's field names.
pub fn show(job: &JobView) -> Value {
    let failed = job.outcome.is_some_and(|o| o != proto::Outcome::Passed);
    let comment = (failed && !job.reason.is_empty()).then(|| job.reason.clone());
    let err = error_type(job.outcome);
    Value::fields(vec![
        ("id", Value::Int(job.id.0 as i64)),
        ("description", Value::str(&job.name)),
        ("device", Value::opt_str(job.device.clone())),
        ("device_type", Value::str(&job.device_type)),
        ("health_check", Value::Bool(false)),
        ("pipeline", Value::Bool(true)),
        ("health", Value::str(lava_health(job.outcome))),
        ("state", Value::str(lava_state(job.state))),
        ("submitter", Value::str(&job.owner)),
        ("submit_time", time_value(Some(job.submitted_at))),
        ("start_time", time_value(job.started_at)),
        ("end_time", time_value(job.finished_at)),
        (
            "tags",
            Value::Array(job.tags.iter().map(Value::str).collect()),
        ),
        ("visibility", Value::str(visibility_text(&job.visibility))),
        ("failure_comment", Value::opt_str(comment.clone())),
        ("error_msg", Value::opt_str(err.and(comment))),
        ("error_type", Value::opt_str(err)),
    ])
}

async fn list(state: &AppState, caller: &Caller, a: &Args<'_>) -> RpcResult {
    let states = match a.string(0)? {
        None => None,
        Some(word) => Some(
            states_named(word)
                .ok_or_else(|| fault(400, format!("Invalid state '{}'", short(word))))?,
        ),
    };
    let health = a.string(1)?.map(str::to_owned);
    if let Some(h) = &health
        && health_matches(h, None).is_none()
    {
        return Err(fault(400, format!("Invalid health '{}'", short(h))));
    }
    let start = a.int(2, 0)?.max(0) as usize;
    let limit = a.int(3, 25)?.clamp(0, 100) as usize;
    let since = a.int(4, 0)?.max(0) as u64;
    let verbose = a.bool(5)?;
    let now = crate::now();
    let jobs = all_jobs(state, caller).await?;
    let picked: Vec<Value> = jobs
        .iter()
        .filter(|j| states.as_ref().is_none_or(|s| s.contains(&j.state)))
        .filter(|j| {
            health
                .as_deref()
                .is_none_or(|h| health_matches(h, j.outcome) == Some(true))
        })
        .filter(|j| {
            since == 0
                || j.finished_at
                    .is_some_and(|t| now.0.saturating_sub(t.0) <= since * 60_000)
        })
        .skip(start)
        .take(limit)
        .map(|j| {
            let mut fields = vec![
                ("id", Value::Int(j.id.0 as i64)),
                ("description", Value::str(&j.name)),
                ("device_type", Value::str(&j.device_type)),
                ("health", Value::str(lava_health(j.outcome))),
                ("state", Value::str(lava_state(j.state))),
                ("submitter", Value::str(&j.owner)),
            ];
            if verbose {
                let err = error_type(j.outcome);
                fields.extend([
                    ("actual_device", Value::opt_str(j.device.clone())),
                    ("start_time", Value::opt_str(j.started_at.map(python_time))),
                    ("end_time", Value::opt_str(j.finished_at.map(python_time))),
                    ("error_msg", Value::opt_str(err.map(|_| j.reason.clone()))),
                    ("error_type", Value::opt_str(err)),
                ]);
            }
            Value::fields(fields)
        })
        .collect();
    Ok(Value::Array(picked))
}

/// The newest jobs the caller may read (at most the list route's cap).
async fn all_jobs(state: &AppState, caller: &Caller) -> Result<Vec<JobView>, Fault> {
    caller
        .require(&crate::api::PEOPLE)
        .map_err(ApiFailure::from)?;
    let viewer = viewer(state, caller);
    Ok(ask(state, |reply| Command::Jobs {
        viewer,
        state: None,
        limit: 10_000,
        reply,
    })
    .await?)
}

async fn queue(state: &AppState, caller: &Caller, a: &Args<'_>) -> RpcResult {
    let types: Option<Vec<String>> = match a.get(0) {
        None => None,
        Some(Value::Array(items)) => Some(
            items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    _ => Err(a.wrong(0, "device types are strings")),
                })
                .collect::<Result<_, _>>()?,
        ),
        Some(_) => return Err(a.wrong(0, "expected an array of device types")),
    };
    let start = a.int(1, 0)?.max(0) as usize;
    let limit = a.int(2, 25)?.clamp(0, 100) as usize;
    let jobs = all_jobs(state, caller).await?;
    Ok(Value::Array(
        jobs.iter()
            .filter(|j| j.state == JobState::Queued)
            .filter(|j| types.as_ref().is_none_or(|t| t.contains(&j.device_type)))
            .skip(start)
            .take(limit)
            .map(|j| {
                Value::fields(vec![
                    ("id", Value::Int(j.id.0 as i64)),
                    ("description", Value::str(&j.name)),
                    ("requested_device_type", Value::str(&j.device_type)),
                    ("submitter", Value::str(&j.owner)),
                ])
            })
            .collect(),
    ))
}

/// `scheduler.jobs.validate`: `{}` when the job is valid LAVA, else `{path, msg}`; strict
/// mode also refuses what dutlab accepts with a warning (unknown keys ...).
pub fn validate(definition: &str, strict: bool) -> Value {
    match jobspec::parse_job("job.yaml", definition) {
        Err(e) => Value::fields(vec![
            ("path", Value::str(e.field)),
            ("msg", Value::str(e.reason)),
        ]),
        Ok(job) => match job.warnings.first() {
            Some(w) if strict => Value::fields(vec![
                ("path", Value::str(&w.field)),
                ("msg", Value::str(&w.message)),
            ]),
            _ => Value::Struct(Vec::new()),
        },
    }
}

fn sorted(mut devices: Vec<DeviceView>) -> Vec<DeviceView> {
    devices.sort_by(|a, b| a.name.cmp(&b.name));
    devices
}

fn device_brief(d: &DeviceView) -> Value {
    let (state, health) = device_state(d);
    Value::fields(vec![
        ("hostname", Value::str(&d.name)),
        ("type", Value::str(&d.device_type)),
        ("health", Value::str(health)),
        ("state", Value::str(state)),
        (
            "current_job",
            d.job.map_or(Value::Nil, |j| Value::Int(j.0 as i64)),
        ),
        ("pipeline", Value::Bool(true)),
    ])
}

fn device_show(d: &DeviceView) -> Value {
    let (state, health) = device_state(d);
    let mut tags = d.tags.clone();
    tags.sort();
    Value::fields(vec![
        ("hostname", Value::str(&d.name)),
        ("device_type", Value::str(&d.device_type)),
        ("health", Value::str(health)),
        ("state", Value::str(state)),
        ("health_job", Value::Bool(false)),
        ("description", Value::Nil),
        ("pipeline", Value::Bool(true)),
        ("has_device_dict", Value::Bool(true)),
        ("worker", Value::str(&d.agent)),
        (
            "current_job",
            d.job.map_or(Value::Nil, |j| Value::Int(j.0 as i64)),
        ),
        (
            "tags",
            Value::Array(tags.into_iter().map(Value::String).collect()),
        ),
        ("permissions", Value::Array(Vec::new())),
    ])
}

/// Device types with their number of devices, by name.
pub fn device_types(devices: &[DeviceView]) -> Vec<(String, usize)> {
    let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
    for d in devices {
        *counts.entry(d.device_type.clone()).or_default() += 1;
    }
    counts.into_iter().collect()
}

async fn results(state: &AppState, caller: &Caller, a: &Args<'_>) -> RpcResult {
    let job_id = a.job(0)?;
    let job = visible_job(state, caller, job_id).await.map_err(|f| {
        if f.status() == StatusCode::NOT_FOUND {
            fault(404, "Specified job not found.")
        } else {
            Fault::from(f)
        }
    })?;
    let report = report(state, job.id).await?;
    let empty = proto::JobReport {
        job_name: job.name.clone(),
        outcome: proto::Outcome::Passed,
        reason: String::new(),
        cases: Vec::new(),
        duration_s: 0.0,
    };
    let report = report.unwrap_or(empty);
    let cases = exported_cases(&job, &report);
    let method = a.method.trim_start_matches("results.");
    let (scope, format) = method.rsplit_once('_').ok_or_else(|| {
        fault(
            -32601,
            format!("Method '{}' is not served", short(a.method)),
        )
    })?;
    let yaml = match format {
        "yaml" => true,
        "csv" => false,
        _ => {
            return Err(fault(
                -32601,
                format!("Method '{}' is not served", short(a.method)),
            ));
        }
    };
    let picked: Vec<&ExportedCase<'_>> = match scope {
        "get_testjob_results" => cases.iter().collect(),
        "get_testsuite_results" => {
            let suite = a.required(1, "the suite name")?;
            let in_suite: Vec<&ExportedCase<'_>> =
                cases.iter().filter(|c| c.case.suite == suite).collect();
            if in_suite.is_empty() {
                return Err(fault(404, "Specified test suite not found."));
            }
            let offset = a.opt_int(3)?.unwrap_or(0).max(0) as usize;
            let limit = a.opt_int(2)?.map_or(usize::MAX, |l| l.max(0) as usize);
            in_suite.into_iter().skip(offset).take(limit).collect()
        }
        "get_testcase_results" => {
            let suite = a.required(1, "the suite name")?;
            let name = a.required(2, "the test case name")?;
            if !cases.iter().any(|c| c.case.suite == suite) {
                return Err(fault(404, "Specified test suite not found."));
            }
            cases
                .iter()
                .filter(|c| c.case.suite == suite && c.case.name == name)
                .collect()
        }
        "get_testjob_suites_list" => {
            let suites = super::suites(&report);
            return Ok(Value::String(if yaml {
                text::list(
                    &suites
                        .iter()
                        .map(|(id, name)| {
                            Yaml::Map(vec![
                                ("id", Yaml::str(id.to_string())),
                                ("job", Yaml::str(job.id.to_string())),
                                ("name", Yaml::str(*name)),
                            ])
                        })
                        .collect::<Vec<_>>(),
                )
            } else {
                let mut out = String::new();
                text::csv_row(&mut out, &["name", "job", "id"]);
                for (id, name) in &suites {
                    text::csv_row(&mut out, &[name, &job.id.to_string(), &id.to_string()]);
                }
                out
            }));
        }
        _ => {
            return Err(fault(
                -32601,
                format!("Method '{}' is not served", short(a.method)),
            ));
        }
    };
    Ok(Value::String(if yaml {
        text::list(&picked.iter().map(|c| c.yaml()).collect::<Vec<_>>())
    } else {
        cases_csv(&picked)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_answers_in_lavas_shape() {
        let Value::Struct(syntax) = validate("job_name: [", false) else {
            panic!("struct");
        };
        assert_eq!(syntax.len(), 2, "{syntax:?}");
        assert!(matches!(&syntax[1], (k, Value::String(m)) if k == "msg" && !m.is_empty()));
        let Value::Struct(fields) = validate("job_name: x\n", false) else {
            panic!("struct");
        };
        assert_eq!(fields[0].0, "path");
        let ok = "job_name: ok\ndevice_type: qemu\nvisibility: public\ntimeouts: {job: {minutes: 1}}\nactions:\n- boot: {method: qemu, timeout: {minutes: 1}}\nunknown_key: 1\n";
        assert_eq!(validate(ok, false), Value::Struct(Vec::new()));
        let Value::Struct(strict) = validate(ok, true) else {
            panic!("struct");
        };
        assert_eq!(strict.len(), 2, "{strict:?}");
    }
}
