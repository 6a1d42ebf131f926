//! Typed async client of the dutlab controller's API (REST under `/api/v1`, WebSocket streams).
//!
//! One method per route of [`proto::api`]'s table; bodies are the `proto::api` types as JSON.
//! Live job logs come from [`Client::follow`], which survives dropped connections (see
//! [`follow`]).
//!
//! Invariants:
//! - The token is sent only as `Authorization: Bearer ...` (a header marked sensitive), to the
//!   controller's own URL and to where it redirects with 307 or 308 (another controller of
//!   the lab: the holder of an agent's link, the leader): at most
//!   [`follow::MAX_REDIRECTS`] hops, never from TLS to plain text, never to a URL with
//!   credentials; other redirects are not followed.
//!   `Debug` of [`Client`] and every [`ClientError`] leave it out.
//! - Every request has a connect timeout ([`CONNECT_TIMEOUT`]) and a read timeout
//!   ([`READ_TIMEOUT`]); answers larger than [`MAX_ANSWER`] are refused, not buffered.
//! - An error status becomes [`ClientError::Api`] with the server's [`proto::api::ApiError`]
//!   text; connection failures become [`ClientError::Unreachable`]; nothing is retried here
//!   except by [`Follow`].
//! - `https://` and `wss://` trust exactly what the [`tls::Trust`] given at construction says
//!   (system roots, a CA file, or a pinned certificate); a refused certificate is
//!   [`ClientError::Tls`], naming the controller and the reason, and is never retried.

mod artifacts;
mod error;
pub mod follow;
pub mod stream;

pub use artifacts::{FetchFor, sha256_file};
pub use error::{Cause, ClientError};
pub use follow::{Follow, FollowCursor};

use proto::api::{
    AcquireLease, AgentView, ApiError, CreateToken, CreatedToken, DeviceView, FlashRequest,
    FlashView, JobResults, JobView, LeaseView, LogPage, PowerRequest, PowerView, RenewLease,
    SubmitJob, TokenView, UserView, WhoAmI,
};
use proto::{JobId, JobState, PersonLeaseId, Seq};
use reqwest::header::{AUTHORIZATION, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Longest wait for a TCP connection to the controller.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest wait for the next bytes of an answer once connected.
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest answer read, in bytes (a full log page is at most 10 000 records of 16 KiB).
pub const MAX_ANSWER: usize = 256 << 20;

/// Longest error text kept from an answer that is not an `ApiError`.
const MAX_ERROR_TEXT: usize = 200;

/// A client of one controller, with or without a token. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    /// `Bearer TOKEN`, marked sensitive.
    auth: Option<HeaderValue>,
    /// What `https://` and `wss://` trust.
    trust: tls::Trust,
    /// TLS of live streams (`wss://`); `None` for `http://` controllers.
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base.as_str())
            .field("token", &self.auth.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Client {
    /// A client of the controller at `base_url` (`http://host:port`, optionally with a path
    /// prefix). `token` is sent with every request but `/healthz`.
    pub fn new(base_url: &str, token: Option<String>) -> Result<Client, ClientError> {
        Client::with_trust(base_url, token, tls::Trust::System)
    }

    /// [`Client::new`] trusting `trust` for an `https://` controller.
    pub fn with_trust(
        base_url: &str,
        token: Option<String>,
        trust: tls::Trust,
    ) -> Result<Client, ClientError> {
        let base = parse_base(base_url)?;
        let auth = match token {
            None => None,
            Some(token) => {
                if token.is_empty() {
                    return Err(ClientError::BadToken);
                }
                let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
                    .map_err(|_| ClientError::BadToken)?;
                value.set_sensitive(true);
                Some(value)
            }
        };
        let tls = if base.scheme() == "https" {
            let config = tls::client_config(&trust).map_err(|e| ClientError::Tls {
                url: base.to_string(),
                reason: e.to_string(),
            })?;
            Some(Arc::new(config))
        } else {
            None
        };
        let http = http_client(&base, tls.as_deref(), READ_TIMEOUT)?;
        Ok(Client {
            http,
            base,
            auth,
            trust,
            tls,
        })
    }

    /// The same client waiting up to `read` for each part of an answer (for requests the
    /// controller answers only when a device is done: power, flash).
    pub fn with_read_timeout(&self, read: Duration) -> Result<Client, ClientError> {
        Ok(Client {
            http: http_client(&self.base, self.tls.as_deref(), read)?,
            ..self.clone()
        })
    }

    /// The controller URL as given (normalised).
    pub fn base_url(&self) -> &str {
        self.base.as_str()
    }

    /// `GET /healthz`: the controller is up (no token needed).
    pub async fn healthz(&self) -> Result<(), ClientError> {
        self.call(Method::GET, &["healthz"], &[], None::<&()>)
            .await
            .map(drop)
    }

    /// `GET /api/v1/whoami`.
    pub async fn whoami(&self) -> Result<WhoAmI, ClientError> {
        self.get(&["whoami"], &[]).await
    }

    /// `POST /api/v1/tokens` (admin): the answer holds the only copy of the secret.
    pub async fn create_token(&self, request: &CreateToken) -> Result<CreatedToken, ClientError> {
        self.send(Method::POST, &["tokens"], request).await
    }

    /// `GET /api/v1/tokens` (admin).
    pub async fn list_tokens(&self) -> Result<Vec<TokenView>, ClientError> {
        self.get(&["tokens"], &[]).await
    }

    /// `DELETE /api/v1/tokens/{id}` (admin).
    pub async fn revoke_token(&self, id: &str) -> Result<TokenView, ClientError> {
        self.empty(Method::DELETE, &["tokens", id]).await
    }

    /// `GET /api/v1/users` (admin).
    pub async fn list_users(&self) -> Result<Vec<UserView>, ClientError> {
        self.get(&["users"], &[]).await
    }

    /// `PUT /api/v1/users/{name}/groups/{group}` (admin).
    pub async fn add_member(&self, user: &str, group: &str) -> Result<UserView, ClientError> {
        self.empty(Method::PUT, &["users", user, "groups", group])
            .await
    }

    /// `DELETE /api/v1/users/{name}/groups/{group}` (admin).
    pub async fn remove_member(&self, user: &str, group: &str) -> Result<UserView, ClientError> {
        self.empty(Method::DELETE, &["users", user, "groups", group])
            .await
    }

    /// `POST /api/v1/jobs`. A 400 answer names the file and field that are wrong.
    pub async fn submit_job(&self, request: &SubmitJob) -> Result<JobView, ClientError> {
        self.send(Method::POST, &["jobs"], request).await
    }

    /// `GET /api/v1/jobs`: the jobs this token may see, newest first (the server's default
    /// number of them).
    pub async fn list_jobs(&self) -> Result<Vec<JobView>, ClientError> {
        self.list_jobs_filtered(None, None).await
    }

    /// `GET /api/v1/jobs?state=S&limit=N`: only jobs in `state`, at most `limit` of them.
    pub async fn list_jobs_filtered(
        &self,
        state: Option<JobState>,
        limit: Option<usize>,
    ) -> Result<Vec<JobView>, ClientError> {
        let mut query = Vec::new();
        if let Some(state) = state {
            query.push(("state", state.as_str().to_string()));
        }
        if let Some(limit) = limit {
            query.push(("limit", limit.to_string()));
        }
        self.get(&["jobs"], &query).await
    }

    /// `GET /api/v1/jobs/{id}`.
    pub async fn job(&self, id: JobId) -> Result<JobView, ClientError> {
        self.get(&["jobs", &id.to_string()], &[]).await
    }

    /// `POST /api/v1/jobs/{id}/cancel`.
    pub async fn cancel_job(&self, id: JobId) -> Result<JobView, ClientError> {
        self.empty(Method::POST, &["jobs", &id.to_string(), "cancel"])
            .await
    }

    /// `GET /api/v1/jobs/{id}/definition`: the job file as submitted.
    pub async fn job_definition(&self, id: JobId) -> Result<String, ClientError> {
        let segments = ["api", "v1", "jobs", &id.to_string(), "definition"];
        let body = self.call(Method::GET, &segments, &[], None::<&()>).await?;
        String::from_utf8(body).map_err(|e| ClientError::Decode {
            url: self.endpoint(&segments).to_string(),
            source: Box::new(e),
        })
    }

    /// `GET /api/v1/jobs/{id}/logs`: records with `seq > cursor`, at most `limit` of them.
    pub async fn logs(&self, id: JobId, cursor: Seq, limit: usize) -> Result<LogPage, ClientError> {
        let query = [
            ("cursor", cursor.0.to_string()),
            ("limit", limit.to_string()),
        ];
        self.get(&["jobs", &id.to_string(), "logs"], &query).await
    }

    /// `GET /api/v1/jobs/{id}/logs/follow` as a stream of events, starting after `cursor`
    /// (`Seq(0)`: from the first record). Nothing is sent until the first [`Follow::next`].
    pub fn follow(&self, id: JobId, cursor: Seq) -> Follow {
        Follow::new(self.clone(), id, cursor)
    }

    /// `GET /api/v1/jobs/{id}/results`.
    pub async fn results(&self, id: JobId) -> Result<JobResults, ClientError> {
        self.get(&["jobs", &id.to_string(), "results"], &[]).await
    }

    /// `GET /api/v1/devices`.
    pub async fn devices(&self) -> Result<Vec<DeviceView>, ClientError> {
        self.get(&["devices"], &[]).await
    }

    /// `GET /api/v1/agents`.
    pub async fn agents(&self) -> Result<Vec<AgentView>, ClientError> {
        self.get(&["agents"], &[]).await
    }

    /// `GET /api/v1/device-types`.
    pub async fn device_types(&self) -> Result<Vec<proto::admin::DeviceTypeView>, ClientError> {
        self.get(&["device-types"], &[]).await
    }

    /// `GET /api/v1/devices/{name}`.
    pub async fn device(&self, name: &str) -> Result<proto::admin::DeviceDetail, ClientError> {
        self.get(&["devices", name], &[]).await
    }

    /// `POST /api/v1/devices/{name}/state` (admin).
    pub async fn set_device_state(
        &self,
        name: &str,
        request: &proto::admin::SetDeviceState,
    ) -> Result<proto::admin::DeviceDetail, ClientError> {
        self.send(Method::POST, &["devices", name, "state"], request)
            .await
    }

    /// `POST /api/v1/devices/{name}/tags` (admin).
    pub async fn edit_device_tags(
        &self,
        name: &str,
        request: &proto::admin::EditDeviceTags,
    ) -> Result<proto::admin::DeviceDetail, ClientError> {
        self.send(Method::POST, &["devices", name, "tags"], request)
            .await
    }

    /// `POST /api/v1/devices/{name}/check` (admin): the health check's job.
    pub async fn check_device(&self, name: &str) -> Result<JobView, ClientError> {
        self.empty(Method::POST, &["devices", name, "check"]).await
    }

    /// `GET /api/v1/audit?limit=N` (admin), newest first.
    pub async fn audit(&self, limit: u64) -> Result<Vec<proto::admin::AuditEntry>, ClientError> {
        self.get(&["audit"], &[("limit", limit.to_string())]).await
    }

    /// `POST /api/v1/leases`: the lease, held or waiting with its queue position.
    pub async fn acquire_lease(&self, request: &AcquireLease) -> Result<LeaseView, ClientError> {
        self.send(Method::POST, &["leases"], request).await
    }

    /// `GET /api/v1/leases`: this user's leases (admins: everyone's); ended ones with `all`.
    pub async fn leases(&self, all: bool) -> Result<Vec<LeaseView>, ClientError> {
        self.get(&["leases"], &[("all", all.to_string())]).await
    }

    /// `GET /api/v1/leases/{id}`.
    pub async fn lease(&self, id: PersonLeaseId) -> Result<LeaseView, ClientError> {
        self.get(&["leases", &id.to_string()], &[]).await
    }

    /// `GET /api/v1/leases/{id}?wait=N`: answered as soon as the lease no longer waits, or
    /// after `wait` (capped below the read timeout) with the lease still waiting.
    pub async fn wait_lease(
        &self,
        id: PersonLeaseId,
        wait: Duration,
    ) -> Result<LeaseView, ClientError> {
        let secs = wait
            .as_secs()
            .clamp(1, READ_TIMEOUT.as_secs().saturating_sub(5));
        self.get(&["leases", &id.to_string()], &[("wait", secs.to_string())])
            .await
    }

    /// `POST /api/v1/leases/{id}/renew`. An ended lease is 410.
    pub async fn renew_lease(
        &self,
        id: PersonLeaseId,
        duration: Option<Duration>,
    ) -> Result<LeaseView, ClientError> {
        let body = RenewLease {
            duration_s: duration.map(|d| d.as_secs().max(1)),
        };
        self.send(Method::POST, &["leases", &id.to_string(), "renew"], &body)
            .await
    }

    /// `POST /api/v1/leases/{id}/release`. An ended lease is 410.
    pub async fn release_lease(&self, id: PersonLeaseId) -> Result<LeaseView, ClientError> {
        self.empty(Method::POST, &["leases", &id.to_string(), "release"])
            .await
    }

    /// `GET /api/v1/leases/{id}/power`.
    pub async fn power_status(&self, id: PersonLeaseId) -> Result<PowerView, ClientError> {
        self.get(&["leases", &id.to_string(), "power"], &[]).await
    }

    /// `POST /api/v1/leases/{id}/power`: answered once the device is done.
    pub async fn power(
        &self,
        id: PersonLeaseId,
        action: proto::session::PowerAction,
    ) -> Result<PowerView, ClientError> {
        self.send(
            Method::POST,
            &["leases", &id.to_string(), "power"],
            &PowerRequest { action },
        )
        .await
    }

    /// `POST /api/v1/leases/{id}/flash` of an uploaded artifact: answered once the agent
    /// wrote it.
    pub async fn flash(&self, id: PersonLeaseId, sha256: &str) -> Result<FlashView, ClientError> {
        let body = FlashRequest {
            sha256: sha256.to_owned(),
        };
        self.send(Method::POST, &["leases", &id.to_string(), "flash"], &body)
            .await
    }

    /// `POST /api/v1/leases/{id}/flash` with the agent's progress: `progress(done, total)` is
    /// called as the agent fetches and writes the image. A failure after the answer began
    /// is [`ClientError::Api`] with status 502 and the controller's reason.
    pub async fn flash_with_progress(
        &self,
        id: PersonLeaseId,
        sha256: &str,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<FlashView, ClientError> {
        let id = id.to_string();
        let all = api_path(&["leases", &id, "flash"]);
        let url = self.endpoint(&all);
        let body = FlashRequest {
            sha256: sha256.to_owned(),
        };
        let (url, mut response) = self
            .send_following(url, |url| {
                self.http
                    .request(Method::POST, url.clone())
                    .header(reqwest::header::ACCEPT, "application/x-ndjson")
                    .json(&body)
            })
            .await?;
        let unreachable = |e: reqwest::Error| self.transport_error(&url, Box::new(e.without_url()));
        let status = response.status();
        let mut pending = Vec::new();
        if !status.is_success() {
            while let Some(chunk) = response.chunk().await.map_err(unreachable)? {
                if pending.len() + chunk.len() > MAX_ANSWER {
                    break;
                }
                pending.extend_from_slice(&chunk);
            }
            return Err(api_error(status, &pending));
        }
        let bad = |reason: String| ClientError::Decode {
            url: url.to_string(),
            source: reason.into(),
        };
        while let Some(chunk) = response.chunk().await.map_err(unreachable)? {
            pending.extend_from_slice(&chunk);
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                match serde_json::from_slice::<proto::api::FlashLine>(&line) {
                    Ok(proto::api::FlashLine::Progress { done, total }) => progress(done, total),
                    Ok(proto::api::FlashLine::Flashed(view)) => return Ok(view),
                    Ok(proto::api::FlashLine::Error(e)) => {
                        return Err(ClientError::Api {
                            status: 502,
                            message: e.error,
                            known_device_types: e.known_device_types,
                        });
                    }
                    Err(e) => return Err(bad(format!("a progress line: {e}"))),
                }
            }
            if pending.len() > MAX_ANSWER {
                return Err(bad(format!(
                    "a progress line longer than {MAX_ANSWER} bytes"
                )));
            }
        }
        Err(bad("the answer ended before the flash did".into()))
    }

    /// `GET /api/v1/leases/{id}/screenshot`: PNG bytes.
    pub async fn screenshot(&self, id: PersonLeaseId) -> Result<Vec<u8>, ClientError> {
        let id = id.to_string();
        let all = api_path(&["leases", &id, "screenshot"]);
        self.call(Method::GET, &all, &[], None::<&()>).await
    }

    /// The URL of a route: the base URL's path, then `segments`, each percent-encoded.
    fn endpoint(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .expect("parse_base refuses URLs that cannot be a base")
            .pop_if_empty()
            .extend(segments);
        url
    }

    /// The `Authorization` header value, if there is a token.
    pub(crate) fn auth(&self) -> Option<&HeaderValue> {
        self.auth.as_ref()
    }

    /// The URL of a route under `/api/v1`.
    pub(crate) fn api_endpoint(&self, segments: &[&str]) -> Url {
        self.endpoint(&api_path(segments))
    }

    async fn get<T: DeserializeOwned>(
        &self,
        segments: &[&str],
        query: &[(&str, String)],
    ) -> Result<T, ClientError> {
        let all = api_path(segments);
        let body = self.call(Method::GET, &all, query, None::<&()>).await?;
        self.decode(&all, &body)
    }

    async fn send<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        segments: &[&str],
        request: &B,
    ) -> Result<T, ClientError> {
        let all = api_path(segments);
        let body = self.call(method, &all, &[], Some(request)).await?;
        self.decode(&all, &body)
    }

    async fn empty<T: DeserializeOwned>(
        &self,
        method: Method,
        segments: &[&str],
    ) -> Result<T, ClientError> {
        let all = api_path(segments);
        let body = self.call(method, &all, &[], None::<&()>).await?;
        self.decode(&all, &body)
    }

    fn decode<T: DeserializeOwned>(
        &self,
        segments: &[&str],
        body: &[u8],
    ) -> Result<T, ClientError> {
        serde_json::from_slice(body).map_err(|e| ClientError::Decode {
            url: self.endpoint(segments).to_string(),
            source: Box::new(e),
        })
    }

    /// One request; the body of a 2xx answer, or the error.
    async fn call<B: Serialize>(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, String)],
        body: Option<&B>,
    ) -> Result<Vec<u8>, ClientError> {
        let mut url = self.endpoint(segments);
        if !query.is_empty() {
            url.query_pairs_mut()
                .extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
        }
        let (url, mut response) = self
            .send_following(url, |url| {
                let request = self.http.request(method.clone(), url.clone());
                match body {
                    Some(body) => request.json(body),
                    None => request,
                }
            })
            .await?;
        let unreachable = |e: reqwest::Error| self.transport_error(&url, Box::new(e.without_url()));
        let status = response.status();
        let mut answer = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(unreachable)? {
            if answer.len() + chunk.len() > MAX_ANSWER {
                return Err(ClientError::Decode {
                    url: url.to_string(),
                    source: format!("the answer is larger than {MAX_ANSWER} bytes").into(),
                });
            }
            answer.extend_from_slice(&chunk);
        }
        if status.is_success() {
            Ok(answer)
        } else {
            Err(api_error(status, &answer))
        }
    }
}

impl Client {
    /// Sends the request `build` makes for `url`, with the token; a 307 or 308 (a follower
    /// sending a lease's power, flash or screenshot, or an agent's fetch for a flash, to the
    /// leading controller) is sent again
    /// to its `Location`, at most [`follow::MAX_REDIRECTS`] times, never from `https://` to
    /// `http://`. Answers the last URL and its response.
    async fn send_following(
        &self,
        mut url: Url,
        build: impl Fn(&Url) -> reqwest::RequestBuilder,
    ) -> Result<(Url, reqwest::Response), ClientError> {
        for _ in 0..=follow::MAX_REDIRECTS {
            let mut request = build(&url);
            if let Some(auth) = &self.auth {
                request = request.header(AUTHORIZATION, auth.clone());
            }
            let response = request
                .send()
                .await
                .map_err(|e| self.transport_error(&url, Box::new(e.without_url())))?;
            let location = response
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok());
            match (response.status().as_u16(), location) {
                (307 | 308, Some(location)) => url = follow::http_redirected(&url, location)?,
                _ => return Ok((url, response)),
            }
        }
        Err(ClientError::BadUrl {
            url: url.to_string(),
            reason: format!("more than {} redirects", follow::MAX_REDIRECTS),
        })
    }

    /// A transport failure: [`ClientError::Tls`] when TLS refused the server, else
    /// [`ClientError::Unreachable`].
    pub(crate) fn transport_error(&self, url: &Url, source: Cause) -> ClientError {
        match tls::explain(source.as_ref(), &self.trust) {
            Some(reason) => ClientError::Tls {
                url: self.base.to_string(),
                reason,
            },
            None => ClientError::Unreachable {
                url: url.to_string(),
                source,
            },
        }
    }

    /// TLS of live streams, for `wss://`.
    pub(crate) fn stream_tls(&self) -> Option<Arc<rustls::ClientConfig>> {
        self.tls.clone()
    }
}

fn api_path<'a>(segments: &[&'a str]) -> Vec<&'a str> {
    let mut all = vec!["api", "v1"];
    all.extend_from_slice(segments);
    all
}

/// Checks and normalises a controller URL.
fn parse_base(text: &str) -> Result<Url, ClientError> {
    let text = text.trim();
    let bad = |url: String, reason: &str| ClientError::BadUrl {
        url,
        reason: reason.to_string(),
    };
    let url = Url::parse(text).map_err(|e| bad(text.to_string(), &e.to_string()))?;
    if !url.username().is_empty() || url.password().is_some() {
        let mut shown = url.clone();
        let _ = shown.set_username("");
        let _ = shown.set_password(None);
        return Err(bad(
            shown.to_string(),
            "credentials in the URL are not used; give a token instead",
        ));
    }
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad(url.to_string(), "the scheme must be http or https"));
    }
    if url.cannot_be_a_base() || url.host_str().is_none_or(str::is_empty) {
        return Err(bad(url.to_string(), "a host is missing"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad(
            url.to_string(),
            "a controller URL has no query or fragment",
        ));
    }
    Ok(url)
}

/// The error of a non-2xx answer.
pub(crate) fn api_error(status: StatusCode, body: &[u8]) -> ClientError {
    if let Ok(e) = serde_json::from_slice::<ApiError>(body) {
        return ClientError::Api {
            status: status.as_u16(),
            message: e.error,
            known_device_types: e.known_device_types,
        };
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    let message = if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("no reason given")
            .to_string()
    } else {
        let mut short: String = text.chars().take(MAX_ERROR_TEXT).collect();
        if short.len() < text.len() {
            short.push_str(" ...");
        }
        short
    };
    ClientError::Api {
        status: status.as_u16(),
        message,
        known_device_types: Vec::new(),
    }
}

/// The HTTP client of a controller: its TLS, the connect timeout, `read` per answer part, no
/// redirects.
fn http_client(
    base: &Url,
    tls: Option<&rustls::ClientConfig>,
    read: Duration,
) -> Result<reqwest::Client, ClientError> {
    let mut builder = reqwest::Client::builder();
    if let Some(config) = tls {
        builder = builder.tls_backend_preconfigured(config.clone());
    }
    builder
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(read)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("dutlab/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| ClientError::Unreachable {
            url: base.to_string(),
            source: Box::new(e),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_are_checked() {
        for good in ["http://lab:8080", "http://lab:8080/", "https://lab/dutlab/"] {
            assert!(Client::new(good, None).is_ok(), "{good}");
        }
        for bad in [
            "lab:8080",
            "ftp://lab",
            "http://",
            "http://lab/?x=1",
            "http://u:p@lab",
            "not a url",
        ] {
            assert!(
                matches!(Client::new(bad, None), Err(ClientError::BadUrl { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn credentials_in_urls_are_not_repeated_in_errors() {
        let e = Client::new("http://me:hunter2@lab:1", None).expect_err("refused");
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn endpoints_keep_the_path_prefix_and_encode_segments() {
        let c = Client::new("http://lab:1/pre/", None).expect("valid");
        assert_eq!(
            c.api_endpoint(&["tokens", "a/b c"]).as_str(),
            "http://lab:1/pre/api/v1/tokens/a%2Fb%20c"
        );
        let c = Client::new("http://lab:1", None).expect("valid");
        assert_eq!(c.endpoint(&["healthz"]).as_str(), "http://lab:1/healthz");
    }

    #[test]
    fn tokens_that_cannot_be_headers_are_refused() {
        assert!(matches!(
            Client::new("http://lab", Some("a\nb".into())),
            Err(ClientError::BadToken)
        ));
        assert!(matches!(
            Client::new("http://lab", Some(String::new())),
            Err(ClientError::BadToken)
        ));
    }

    #[test]
    fn error_answers_that_are_not_api_errors_keep_a_short_text() {
        let e = api_error(StatusCode::BAD_GATEWAY, b"");
        assert_eq!(e.to_string(), "the controller answered 502: Bad Gateway");
        let long = "x".repeat(1000);
        match api_error(StatusCode::INTERNAL_SERVER_ERROR, long.as_bytes()) {
            ClientError::Api { message, .. } => assert!(message.len() < 210),
            other => panic!("{other:?}"),
        }
    }
}
