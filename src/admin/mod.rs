//! Admin HTTP API (axum): `/healthz`, `/v1/grants` and `/v1/audit` ([`audit`]).
//!
//! Where it sits: beside the proxy, on its own listener ([`crate::app::run`]). Engineers and the
//! `timebox grant …` CLI call it to issue, list, show and revoke grants; it drives the same
//! [`crate::grants::GrantService`] the proxy authenticates against, so a revocation reaches live
//! sessions at once.
//!
//! Callers authenticate with `Authorization: Bearer <admin token>` ([`auth`]); every answer, errors
//! included, is JSON, errors as `{"code", "message"}` with a stable `code` ([`error`]). It must never
//! return or log a grant token except the one-time copy in the issue response, nor leak store
//! internals.

pub mod audit;
pub mod auth;
pub mod error;
pub mod extract;
pub mod grants;

use std::sync::Arc;

use axum::extract::State;
use axum::http::{Method, Uri};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::app::AppState;
use crate::store::GrantFilter;
pub use auth::Principal;
pub use error::ApiError;

/// The admin API with its state applied.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .merge(grants::routes())
        .merge(audit::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// 200 when the store answers a cheap query, else 503 `store_unavailable`. No authentication.
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

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::NotFound(format!("no route for {method} {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed(format!("{method} is not allowed on {}", uri.path()))
}
