//! REST of identities: who a token is, tokens (admins make and revoke them; the secret is
//! shown once), users and their groups (admins).
//!
//! Invariants:
//! - Behind [`crate::api::authenticate`] like every `/api/v1` route; roles are checked first
//!   thing in each handler (403).
//! - A revoked token's sessions (agent links, follow and lease streams) are closed by
//!   [`crate::sessions`] in the same request.
//! - Every change here is audited ([`crate::admin_api::audit`]).

use crate::api::{ApiFailure, ApiResult};
use crate::auth::{Caller, new_token};
use crate::store::{Membership, StoredPrincipal, StoredToken};
use crate::{AppState, now};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use proto::api::{ApiError, CreateToken, CreatedToken, TokenView, UserOrigin, UserView, WhoAmI};
use proto::{GroupName, Role};

/// Who the token belongs to.
#[utoipa::path(get, path = "/api/v1/whoami", security(("bearer" = [])),
    responses((status = 200, body = WhoAmI), (status = 401, body = ApiError)))]
pub async fn whoami(axum::Extension(caller): axum::Extension<Caller>) -> Json<WhoAmI> {
    Json(WhoAmI {
        name: caller.name,
        role: caller.role,
        user: caller.user,
        principal: caller.principal,
    })
}

/// Creates a token (admin). The secret is in this answer only.
#[utoipa::path(post, path = "/api/v1/tokens", security(("bearer" = [])), request_body = CreateToken,
    responses((status = 201, body = CreatedToken), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 403, body = ApiError)))]
pub async fn create_token(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Json(body): Json<CreateToken>,
) -> ApiResult<(StatusCode, Json<CreatedToken>)> {
    caller.require(&[Role::Admin])?;
    let name = body.name.trim();
    if !valid_display_name(name) {
        return Err(ApiFailure::new(
            StatusCode::BAD_REQUEST,
            "name: must be 1 to 64 printable characters",
        ));
    }
    let user = body.user.as_deref().map_or(name, str::trim);
    if !valid_display_name(user) {
        return Err(ApiFailure::new(
            StatusCode::BAD_REQUEST,
            "user: must be 1 to 64 printable characters",
        ));
    }
    let agent = match (body.role, body.agent.as_deref().map(str::trim)) {
        (Role::Agent, given) => {
            let agent = given.unwrap_or(name);
            if !valid_agent_name(agent) {
                return Err(ApiFailure::new(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "agent: {agent:?} is not an agent name (1 to 64 letters, digits, '.', '_' or '-')"
                    ),
                ));
            }
            Some(agent.to_owned())
        }
        (_, Some(_)) => {
            return Err(ApiFailure::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "agent: only tokens of role agent are bound to an agent name (this one is {})",
                    body.role
                ),
            ));
        }
        (_, None) => None,
    };
    let created = make_token(&state, name, user, body.role, agent.clone()).await?;
    tracing::info!(
        "token {} ({}, user {} ({}), {}{}) created by {}",
        created.view.id,
        name,
        created.view.user,
        match created.user {
            UserOrigin::Created => "new",
            UserOrigin::Existing => "existing",
        },
        body.role,
        agent
            .clone()
            .map(|a| format!(", agent {a}"))
            .unwrap_or_default(),
        caller.name
    );
    let detail = format!(
        "{name} ({}) of user {}{}",
        body.role,
        created.view.user,
        agent.map(|a| format!(", agent {a}")).unwrap_or_default()
    );
    crate::admin_api::audit(
        &state,
        &caller,
        proto::admin::AuditAction::TokenCreate,
        &created.view.id,
        detail,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// Whether `name` may name a token or a user: 1 to 64 printable characters.
fn valid_display_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && !name.chars().any(|c| c.is_control())
}

/// Whether `name` may be an agent's name: what an agent token is bound to.
pub fn valid_agent_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Makes, stores and activates a token of user `user` (made when there is no user of that
/// name; `agent`: the name an agent token is bound to).
pub async fn make_token(
    state: &AppState,
    name: &str,
    user: &str,
    role: Role,
    agent: Option<String>,
) -> ApiResult<CreatedToken> {
    let fresh =
        new_token().map_err(|e| ApiFailure::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    let (principal, origin) = state
        .store
        .principal_named(user, now())
        .await
        .map_err(|e| ApiFailure::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    let view = TokenView {
        id: fresh.id.clone(),
        name: name.to_owned(),
        role,
        user: principal.name.clone(),
        principal: principal.id,
        agent,
        created_at: now(),
        revoked_at: None,
    };
    let stored = StoredToken {
        view: view.clone(),
        hash: fresh.hash.clone(),
    };
    state
        .store
        .insert_token(&stored)
        .await
        .map_err(|e| ApiFailure::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    if origin == UserOrigin::Created {
        state.principals.put(principal);
    }
    state.tokens.insert(fresh.hash.clone(), &view);
    Ok(CreatedToken {
        token: fresh.secret,
        view,
        user: origin,
    })
}

/// Lists tokens (admin); never their secrets.
#[utoipa::path(get, path = "/api/v1/tokens", security(("bearer" = [])),
    responses((status = 200, body = Vec<TokenView>), (status = 401, body = ApiError), (status = 403, body = ApiError)))]
pub async fn list_tokens(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> ApiResult<Json<Vec<TokenView>>> {
    caller.require(&[Role::Admin])?;
    let tokens = state
        .store
        .tokens()
        .await
        .map_err(|e| ApiFailure::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    Ok(Json(tokens.into_iter().map(|t| t.view).collect()))
}

/// Revokes a token (admin).
#[utoipa::path(delete, path = "/api/v1/tokens/{id}", security(("bearer" = [])),
    params(("id" = String, Path, description = "the token's public id")),
    responses((status = 200, body = TokenView), (status = 401, body = ApiError), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
pub async fn revoke_token(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<TokenView>> {
    caller.require(&[Role::Admin])?;
    let unavailable = |e: crate::store::StoreError| {
        ApiFailure::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
    };
    if !state
        .store
        .revoke_token(&id, now())
        .await
        .map_err(unavailable)?
    {
        return Err(ApiFailure::new(
            StatusCode::NOT_FOUND,
            format!("no live token with id {id:?}"),
        ));
    }
    // The token stops authenticating first, then what it opened is ended (see `sessions`).
    state.tokens.revoke(&id);
    let closed = state.sessions.close_token(&id, "the token was revoked");
    tracing::info!(
        "token {id} revoked by {}; {closed} open connection(s) closed",
        caller.name
    );
    crate::admin_api::audit(
        &state,
        &caller,
        proto::admin::AuditAction::TokenRevoke,
        &id,
        format!("{closed} open connection(s) closed"),
    )
    .await?;
    let tokens = state.store.tokens().await.map_err(unavailable)?;
    tokens
        .into_iter()
        .find(|t| t.view.id == id)
        .map(|t| Json(t.view))
        .ok_or_else(|| ApiFailure::new(StatusCode::NOT_FOUND, format!("no token with id {id:?}")))
}

fn user_view(p: StoredPrincipal) -> UserView {
    UserView {
        id: p.id,
        name: p.name,
        groups: p.groups,
        created_at: p.created_at,
    }
}

/// Lists users (admin): who tokens speak for, with their groups.
#[utoipa::path(get, path = "/api/v1/users", security(("bearer" = [])),
    responses((status = 200, body = Vec<UserView>), (status = 401, body = ApiError), (status = 403, body = ApiError)))]
pub async fn list_users(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> ApiResult<Json<Vec<UserView>>> {
    caller.require(&[Role::Admin])?;
    Ok(Json(
        state.principals.all().into_iter().map(user_view).collect(),
    ))
}

/// Makes a user a member of a group (admin); idempotent.
#[utoipa::path(put, path = "/api/v1/users/{name}/groups/{group}", security(("bearer" = [])),
    params(("name" = String, Path, description = "user name"), ("group" = String, Path, description = "group name")),
    responses((status = 200, body = UserView), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
pub async fn add_member(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path((name, group)): Path<(String, String)>,
) -> ApiResult<Json<UserView>> {
    set_member(&state, &caller, &name, &group, Membership::Member).await
}

/// Removes a user from a group (admin); idempotent.
#[utoipa::path(delete, path = "/api/v1/users/{name}/groups/{group}", security(("bearer" = [])),
    params(("name" = String, Path, description = "user name"), ("group" = String, Path, description = "group name")),
    responses((status = 200, body = UserView), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
pub async fn remove_member(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path((name, group)): Path<(String, String)>,
) -> ApiResult<Json<UserView>> {
    set_member(&state, &caller, &name, &group, Membership::NotMember).await
}

async fn set_member(
    state: &AppState,
    caller: &Caller,
    name: &str,
    group: &str,
    membership: Membership,
) -> ApiResult<Json<UserView>> {
    caller.require(&[Role::Admin])?;
    let group = GroupName::new(group)
        .map_err(|e| ApiFailure::new(StatusCode::BAD_REQUEST, format!("group: {e}")))?;
    let mut principal = state.principals.named(name).ok_or_else(|| {
        ApiFailure::new(
            StatusCode::NOT_FOUND,
            format!("no user named {name:?} (users are made by `dutlab token create`)"),
        )
    })?;
    let changed = state
        .store
        .set_membership(principal.id, &group, membership)
        .await
        .map_err(|e| ApiFailure::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    principal.groups.retain(|g| *g != group);
    if membership == Membership::Member {
        principal.groups.push(group.clone());
        principal.groups.sort();
    }
    state.principals.put(principal.clone());
    let action = match membership {
        Membership::Member => proto::admin::AuditAction::GroupAdd,
        Membership::NotMember => proto::admin::AuditAction::GroupRemove,
    };
    let detail = format!("group {group}{}", if changed { "" } else { " (no change)" });
    crate::admin_api::audit(state, caller, action, &principal.name, detail).await?;
    if changed {
        tracing::info!(
            "user {} {} group {group} (by {})",
            principal.name,
            match membership {
                Membership::Member => "joined",
                Membership::NotMember => "left",
            },
            caller.user
        );
    }
    Ok(Json(user_view(principal)))
}
