//! The OpenAPI description of the REST API, generated from the route handlers.
//! `docs/openapi.json` is the committed copy; a test regenerates it and compares.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "dutlab", description = "dutlab controller API. Every route but /healthz needs `Authorization: Bearer TOKEN`."),
    paths(
        crate::api::healthz,
        crate::token_api::whoami,
        crate::token_api::create_token,
        crate::token_api::list_tokens,
        crate::token_api::revoke_token,
        crate::token_api::list_users,
        crate::token_api::add_member,
        crate::token_api::remove_member,
        crate::api::submit_job,
        crate::api::list_jobs,
        crate::api::get_job,
        crate::api::cancel_job,
        crate::api::job_definition,
        crate::api::job_logs,
        crate::api::follow,
        crate::api::job_results,
        crate::artifacts::put_artifact,
        crate::artifacts::head_artifact,
        crate::artifacts::get_artifact,
        crate::lease_api::acquire_lease,
        crate::lease_api::list_leases,
        crate::lease_api::get_lease,
        crate::lease_api::renew_lease,
        crate::lease_api::release_lease,
        crate::lease_api::get_power,
        crate::stream_api::console,
        crate::stream_api::tcp,
        crate::lease_api::post_power,
        crate::lease_api::post_flash,
        crate::lease_api::get_screenshot,
        crate::api::devices,
        crate::api::agents,
        crate::admin_api::device_types,
        crate::admin_api::get_device,
        crate::admin_api::set_device_state,
        crate::admin_api::edit_device_tags,
        crate::admin_api::check_device,
        crate::admin_api::list_audit,
        crate::link::link,
    ),
    modifiers(&Bearer)
)]
struct ApiDoc;

/// The OpenAPI document as pretty JSON (no version field that changes per build).
pub fn openapi_json() -> String {
    let mut doc = ApiDoc::openapi();
    doc.info.version = "v1".to_owned();
    doc.to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}
