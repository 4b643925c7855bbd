//! Admin HTTP API (axum): grants, access requests, live sessions, the audit trail, `/metrics`,
//! `/healthz` and the OpenAPI document at `/v1/openapi.json`.
//!
//! Where it sits: beside the proxy, on its own listener ([`crate::app::run`]). Engineers and the
//! `timebox grant|request|session …` CLI call it; it drives the same [`crate::grants::GrantService`]
//! the proxy authenticates against, so a revocation or extension reaches live sessions at once.
//!
//! Callers authenticate with `Authorization: Bearer <admin token>` ([`auth`]); every answer, errors
//! included, is JSON (except `/metrics`), errors as `{"code", "message"}` with a stable `code`
//! ([`error`]). Role rules per endpoint are in each module's docs and in [`ROLE_MATRIX`].
//!
//! Every route is registered through utoipa-axum's `routes!`, which takes its method and path from
//! the handler's `#[utoipa::path]`: the router and the OpenAPI document are built from the same
//! declarations and cannot drift. It must never return or log a grant token except the one-time
//! copies (issue response, request token fetch), nor leak store internals.

pub mod admin_tokens;
pub mod audit;
pub mod auth;
pub mod error;
pub mod extract;
pub mod grants;
pub mod instances;
pub mod metrics;
pub mod requests;
pub mod review;
pub mod server;
pub mod sessions;

use std::sync::Arc;

use axum::extract::State;
use axum::http::{Method, Uri};
use axum::{Json, Router};
use serde_json::json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::AppState;
use crate::store::GrantFilter;
pub use auth::Principal;
pub use error::ApiError;

/// Who may call what: (method, path, roles allowed; `"*"` = no token needed). Requesters are
/// further limited to their own grants, requests and sessions; approvals never by the requester.
/// The role-matrix test walks this table.
pub const ROLE_MATRIX: &[(&str, &str, &[&str])] = &[
    ("GET", "/v1/roles/review", &["admin", "auditor"]),
    ("POST", "/v1/policy/replay", &["admin", "auditor"]),
    ("GET", "/healthz", &["*"]),
    ("GET", "/v1/openapi.json", &["*"]),
    ("GET", "/metrics", &["admin", "auditor"]),
    ("POST", "/v1/grants", &["admin"]),
    (
        "GET",
        "/v1/grants",
        &["admin", "approver", "auditor", "requester"],
    ),
    (
        "GET",
        "/v1/grants/{id}",
        &["admin", "approver", "auditor", "requester"],
    ),
    ("POST", "/v1/grants/{id}/revoke", &["admin", "approver"]),
    ("POST", "/v1/grants/{id}/extend", &["admin", "approver"]),
    ("POST", "/v1/requests", &["admin", "requester"]),
    (
        "GET",
        "/v1/requests",
        &["admin", "approver", "auditor", "requester"],
    ),
    (
        "GET",
        "/v1/requests/{id}",
        &["admin", "approver", "auditor", "requester"],
    ),
    ("POST", "/v1/requests/{id}/approve", &["admin", "approver"]),
    ("POST", "/v1/requests/{id}/deny", &["admin", "approver"]),
    ("POST", "/v1/requests/{id}/token", &["admin", "requester"]),
    (
        "GET",
        "/v1/sessions",
        &["admin", "approver", "auditor", "requester"],
    ),
    ("DELETE", "/v1/sessions/{id}", &["admin", "approver"]),
    ("GET", "/v1/instances", &["admin", "auditor"]),
    ("GET", "/v1/audit", &["admin", "auditor"]),
    ("GET", "/v1/audit/verify", &["admin", "auditor"]),
    ("GET", "/v1/audit/head", &["admin", "auditor"]),
    ("POST", "/v1/admin-tokens", &["admin"]),
    ("GET", "/v1/admin-tokens", &["admin", "auditor"]),
    ("DELETE", "/v1/admin-tokens/{name}", &["admin"]),
];

/// The documented router, before state is applied.
fn api() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(openapi_json))
        .merge(metrics::routes())
        .merge(grants::routes())
        .merge(requests::routes())
        .merge(sessions::routes())
        .merge(instances::routes())
        .merge(audit::routes())
        .merge(review::routes())
        .merge(admin_tokens::routes())
}

/// The OpenAPI 3 document of the admin API, generated from the handlers.
pub fn openapi() -> OpenApi {
    let mut doc = api().into_openapi();
    doc.info.title = "timebox admin API".into();
    doc.info.version = env!("CARGO_PKG_VERSION").into();
    // The router's default `info` is the utoipa crate's own manifest (its author as our contact,
    // its license): replace all of it with ours.
    doc.info.contact = None;
    doc.info.license = Some(utoipa::openapi::License::new(env!("CARGO_PKG_LICENSE")));
    doc.info.description = Some(
        "Time-boxed PostgreSQL access: grants, access requests, live sessions, audit trail. \
         Authenticate with `Authorization: Bearer <admin token>`; errors are `{\"code\", \"message\"}`."
            .into(),
    );
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
    );
    doc
}

/// The admin API with its state applied.
pub fn router(state: Arc<AppState>) -> Router {
    let (router, _) = api().split_for_parts();
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// Liveness: 200 when the store answers a cheap query, else 503 `store_unavailable`. No token.
#[utoipa::path(get, path = "/healthz", tag = "operations", security(()),
    responses((status = 200, body = Object, example = json!({"status": "ok"})),
        (status = 503, body = error::ErrorResponse)))]
async fn healthz(State(state): State<Arc<AppState>>) -> Result<Json<serde_json::Value>, ApiError> {
    state
        .grants
        .list(GrantFilter {
            limit: Some(1),
            ..GrantFilter::default()
        })
        .await?;
    Ok(Json(json!({ "status": "ok" })))
}

/// This document (OpenAPI 3). No token.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "operations", security(()),
    responses((status = 200, body = Object, description = "the OpenAPI 3 document")))]
async fn openapi_json() -> Json<OpenApi> {
    Json(openapi())
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::NotFound(format!("no route for {method} {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed(format!("{method} is not allowed on {}", uri.path()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_route_is_in_the_role_matrix_and_back() {
        let doc = serde_json::to_value(openapi()).unwrap();
        let mut documented = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                documented.push((method.to_uppercase(), path.clone()));
            }
        }
        documented.sort();
        let mut matrix: Vec<(String, String)> = ROLE_MATRIX
            .iter()
            .map(|(m, p, _)| (m.to_string(), p.to_string()))
            .collect();
        matrix.sort();
        assert_eq!(documented, matrix);
    }

    /// See: issue 17: the document's `info` came from the utoipa crate's own manifest (its author's
    /// name and e-mail as our contact, its license). It describes timebox and names no person.
    #[test]
    fn the_document_describes_timebox_and_names_no_person() {
        let doc = serde_json::to_value(openapi()).unwrap();
        let info = &doc["info"];
        assert!(info.get("contact").is_none(), "{info}");
        assert_eq!(info["license"]["name"], env!("CARGO_PKG_LICENSE"), "{info}");
        assert!(!doc.to_string().contains('@'), "an e-mail address in {doc}");
    }
}
