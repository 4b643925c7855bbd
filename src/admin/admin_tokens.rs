//! `/v1/admin-tokens`: issue, list and revoke admin-API tokens kept in the store, so a new
//! requester, approver or auditor needs no config edit and no restart (issue 17).
//!
//! Handlers are thin: authenticate ([`Principal`]), check the role, call
//! [`crate::grants::admin_tokens::AdminTokenService`] (which records every change itself), shape the
//! JSON. A token appears exactly once, in the answer to `POST /v1/admin-tokens`; listings never show
//! a token, its hash or its verifier. Config tokens (`[[admin.tokens]]`) are not listed and cannot
//! be revoked here (409): they are the bootstrap, changed in the config file.
//!
//! Roles: issuing and revoking need `admin`; listing `admin` or `auditor`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::{Principal, ADMIN, AUDITOR};
use super::error::{ApiError, ErrorResponse};
use super::extract::{ApiJson, ApiPath};
use crate::app::AppState;
use crate::grants::admin_tokens::{AdminTokenError, AdminTokenRecord, AdminTokenStatus, NewAdminToken};

pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(issue, list))
        .routes(routes!(revoke))
}

// ---------------------------------------------------------------------------------------------
// Wire types (also read by the CLI).
// ---------------------------------------------------------------------------------------------

/// A store admin token as the API shows it: never the token, its hash or its verifier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AdminTokenView {
    /// The principal's name (a requester's is its PostgreSQL user name).
    pub name: String,
    pub roles: Vec<String>,
    /// At the clock's now: active, expired or revoked.
    pub status: AdminTokenStatus,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    /// `null`: until revoked.
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub revoked_by: Option<String>,
    /// Last accepted use, to the minute.
    pub last_used_at: Option<DateTime<Utc>>,
}

impl AdminTokenView {
    pub fn at(r: AdminTokenRecord, now: DateTime<Utc>) -> Self {
        AdminTokenView {
            status: r.status_at(now),
            roles: r.roles.iter().map(|r| r.as_str().to_owned()).collect(),
            name: r.name,
            created_at: r.created_at,
            created_by: r.created_by,
            expires_at: r.expires_at,
            revoked_at: r.revoked_at,
            revoked_by: r.revoked_by,
            last_used_at: r.last_used_at,
        }
    }
}

/// The answer to `POST /v1/admin-tokens`: the token, shown this once.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct IssuedAdminToken {
    #[serde(flatten)]
    pub view: AdminTokenView,
    /// `Authorization: Bearer <token>`; the only copy that will ever exist.
    pub token: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AdminTokenList {
    pub admin_tokens: Vec<AdminTokenView>,
}

/// Body of `POST /v1/admin-tokens`. Unknown fields are refused; a missing `name` or `roles` is
/// treated like an empty one (422 naming the field).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IssueAdminTokenRequest {
    #[serde(default)]
    pub name: String,
    /// One or more of admin, approver, requester, auditor.
    #[serde(default)]
    pub roles: Vec<String>,
    /// When the token stops working (RFC 3339, in the future); absent: until revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
}

impl From<AdminTokenError> for ApiError {
    fn from(e: AdminTokenError) -> Self {
        match e {
            AdminTokenError::Invalid { field, message } => ApiError::Invalid { field, message },
            AdminTokenError::Conflict(m) => ApiError::StateConflict(m),
            not_found @ AdminTokenError::NotFound(_) => ApiError::NotFound(not_found.to_string()),
            AdminTokenError::Refused(refusal) => ApiError::AdminTokenRefused(refusal),
            AdminTokenError::Store(s) => ApiError::StoreUnavailable(s),
            AdminTokenError::Unrecorded(u) => u.into(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Handlers.
// ---------------------------------------------------------------------------------------------

/// Issue an admin token (role `admin`); the answer holds it, shown only this once.
#[utoipa::path(post, path = "/v1/admin-tokens", tag = "admin tokens", request_body = IssueAdminTokenRequest,
    security(("bearer" = [])),
    responses((status = 201, body = IssuedAdminToken), (status = 401, body = ErrorResponse),
        (status = 403, body = ErrorResponse),
        (status = 409, body = ErrorResponse, description = "a live token (or a config token) has the name"),
        (status = 422, body = ErrorResponse)))]
async fn issue(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    body: Result<ApiJson<IssueAdminTokenRequest>, ApiError>,
) -> Result<(StatusCode, Json<IssuedAdminToken>), ApiError> {
    principal.require_any(&[ADMIN], "issuing admin tokens")?;
    let ApiJson(req) = body?;
    let new = NewAdminToken {
        name: req.name,
        roles: req.roles,
        expires_at: req.expires_at,
    };
    let (record, token) = state.admin_tokens.issue(new, &principal.name).await?;
    tracing::info!(principal = %principal.name, name = %record.name, "admin API: admin token issued");
    Ok((
        StatusCode::CREATED,
        Json(IssuedAdminToken {
            view: AdminTokenView::at(record, state.clock.now()),
            token: token.expose().to_owned(),
        }),
    ))
}

/// List the store's admin tokens, newest first (roles `admin`, `auditor`); never a secret.
#[utoipa::path(get, path = "/v1/admin-tokens", tag = "admin tokens", security(("bearer" = [])),
    responses((status = 200, body = AdminTokenList), (status = 401, body = ErrorResponse),
        (status = 403, body = ErrorResponse)))]
async fn list(
    State(state): State<Arc<AppState>>,
    principal: Principal,
) -> Result<Json<AdminTokenList>, ApiError> {
    principal.require_any(&[ADMIN, AUDITOR], "listing admin tokens")?;
    let now = state.clock.now();
    let admin_tokens = state
        .admin_tokens
        .list()
        .await?
        .into_iter()
        .map(|r| AdminTokenView::at(r, now))
        .collect();
    Ok(Json(AdminTokenList { admin_tokens }))
}

/// Revoke the live admin token named `name` (role `admin`): its next request gets 401
/// `admin_token_revoked`, on every instance sharing the store.
#[utoipa::path(delete, path = "/v1/admin-tokens/{name}", tag = "admin tokens", security(("bearer" = [])),
    params(("name" = String, Path, description = "the token's principal name")),
    responses((status = 200, body = AdminTokenView), (status = 401, body = ErrorResponse),
        (status = 403, body = ErrorResponse),
        (status = 404, body = ErrorResponse, description = "no live store token has the name"),
        (status = 409, body = ErrorResponse, description = "the name is a config token's")))]
async fn revoke(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<AdminTokenView>, ApiError> {
    principal.require_any(&[ADMIN], "revoking admin tokens")?;
    let record = state.admin_tokens.revoke(&name, &principal.name).await?;
    tracing::info!(principal = %principal.name, name = %record.name, "admin API: admin token revoked");
    Ok(Json(AdminTokenView::at(record, state.clock.now())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grants::admin_tokens::Refusal;

    #[test]
    fn admin_token_errors_map_to_stable_codes_and_statuses() {
        let at = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let cases: Vec<(AdminTokenError, StatusCode, &str)> = vec![
            (
                AdminTokenError::Invalid {
                    field: "roles",
                    message: "x".into(),
                },
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request",
            ),
            (
                AdminTokenError::Conflict("taken".into()),
                StatusCode::CONFLICT,
                "conflict",
            ),
            (
                AdminTokenError::NotFound("ci".into()),
                StatusCode::NOT_FOUND,
                "not_found",
            ),
            (
                Refusal::Revoked {
                    name: "ci".into(),
                    at,
                    by: "ops".into(),
                }
                .into(),
                StatusCode::UNAUTHORIZED,
                "admin_token_revoked",
            ),
            (
                Refusal::Expired {
                    name: "ci".into(),
                    at,
                }
                .into(),
                StatusCode::UNAUTHORIZED,
                "admin_token_expired",
            ),
            (
                AdminTokenError::Store(crate::store::StoreError::Corrupt("row detail".into())),
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
            ),
        ];
        for (e, status, code) in cases {
            let api = ApiError::from(e);
            assert_eq!((api.status(), api.code()), (status, code), "{api:?}");
            assert!(!api.to_string().contains("row detail"), "{api}");
        }
    }
}
