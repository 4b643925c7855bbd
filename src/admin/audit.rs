//! `/v1/audit`: search the audit trail, verify its hash chain, read its head. Roles `admin` and
//! `auditor` only; everyone else gets 403 (the trail shows every user's statements).
//!
//! Handlers are thin: authenticate, check the role, read the query string as the one
//! [`AuditFilter`] (which names every bad value), call [`crate::audit::AuditLog`]. Read-only:
//! nothing here writes to the trail.
//!
//! - `GET /v1/audit?user=&grant=&target=&session=&class=&decision=&kind=&since=&until=&contains=&cursor=&limit=&order=`
//!   → `{"events": [record…], "next_cursor": seq | null}`; newest first unless `order=asc`; `since`
//!   and `until` are RFC 3339 (`since ≤ ts < until`); `limit` 1..=1000 (default 100); pass
//!   `next_cursor` back as `cursor` for the next page.
//! - `GET /v1/audit/verify[?anchor=SEQ:HASH]` → `{"ok", "records", "head": {"seq", "hash"},
//!   "first_bad": {"seq", "problem"} | null}`; checked against the live head and the given anchor
//! - `GET /v1/audit/head` → `{"seq", "hash"}`
//!
//! With a PostgreSQL store, search and verify answer for the whole fleet from the central table
//! ([`crate::audit::ship::CentralAudit`]): records carry their `instance` and a `cursor` (pass it
//! back as `cursor`), `instance=` filters by instance, and verify reports each instance's chain
//! (`instances`, and `first_bad.instance`). The head stays this instance's.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::{Principal, ADMIN, AUDITOR};
use super::error::{ApiError, ErrorResponse};
use super::extract::ApiQuery;
use crate::app::AppState;
use crate::audit::{AuditFilter, Head, Page, VerifyReport};

/// Roles that may read the audit trail.
pub const AUDIT_ROLES: &[crate::config::PrincipalRole] = &[ADMIN, AUDITOR];

pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(search))
        .routes(routes!(verify))
        .routes(routes!(head))
}

/// Search the audit trail (roles `admin`, `auditor`): `{"events": [record…], "next_cursor"}`.
#[utoipa::path(get, path = "/v1/audit", tag = "audit", params(AuditFilter), security(("bearer" = [])),
    responses((status = 200, body = Object), (status = 400, body = ErrorResponse),
        (status = 401, body = ErrorResponse), (status = 403, body = ErrorResponse)))]
async fn search(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    query: Result<ApiQuery<AuditFilter>, ApiError>,
) -> Result<Json<Page>, ApiError> {
    principal.require_any(AUDIT_ROLES, "reading the audit trail")?;
    let ApiQuery(filter) = query?;
    match &state.central_audit {
        Some(central) => Ok(Json(central.query(&state.audit, filter).await?)),
        None => Ok(Json(state.audit.query(filter).await?)),
    }
}

/// Query of `GET /v1/audit/verify`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct VerifyQuery {
    /// A head noted earlier, `SEQ:HASH`.
    pub anchor: Option<String>,
}

/// Verify the hash chain (roles `admin`, `auditor`): `{"ok", "records", "head", "first_bad"}`.
#[utoipa::path(get, path = "/v1/audit/verify", tag = "audit", params(VerifyQuery), security(("bearer" = [])),
    responses((status = 200, body = Object), (status = 400, body = ErrorResponse),
        (status = 401, body = ErrorResponse), (status = 403, body = ErrorResponse)))]
async fn verify(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    query: Result<ApiQuery<VerifyQuery>, ApiError>,
) -> Result<Json<VerifyReport>, ApiError> {
    principal.require_any(AUDIT_ROLES, "verifying the audit trail")?;
    let ApiQuery(query) = query?;
    let anchors = match query.anchor {
        None => Vec::new(),
        Some(text) => vec![Head::parse(&text).ok_or_else(|| {
            ApiError::BadRequest(format!("anchor: {text:?} is not SEQ:HASH (64 hex digits)"))
        })?],
    };
    let report = match &state.central_audit {
        Some(central) => central.verify(&state.audit, anchors).await?,
        None => state.audit.verify(anchors).await?,
    };
    if let Some(bad) = &report.first_bad {
        tracing::error!(principal = %principal.name, instance = ?bad.instance, seq = bad.seq,
            problem = %bad.problem, "audit chain verification failed");
    }
    Ok(Json(report))
}

/// The head of the chain (roles `admin`, `auditor`): `{"seq", "hash"}`.
#[utoipa::path(get, path = "/v1/audit/head", tag = "audit", security(("bearer" = [])),
    responses((status = 200, body = Object), (status = 401, body = ErrorResponse),
        (status = 403, body = ErrorResponse)))]
async fn head(State(state): State<Arc<AppState>>, principal: Principal) -> Result<Json<Head>, ApiError> {
    principal.require_any(AUDIT_ROLES, "reading the audit head")?;
    Ok(Json(state.audit.head()))
}
