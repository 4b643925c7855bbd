//! `/v1/requests`: engineers ask for access, other people review, the requester fetches the token.
//!
//! Handlers are thin: authenticate, check the role, call [`crate::grants::requests::RequestService`]
//! (which records and announces every change, and any grant it issues, itself), shape the JSON.
//!
//! Roles: filing needs `requester` or `admin` (the principal's name is the PostgreSQL user the grant
//! is for); approving and denying `approver` or `admin`, and never by the requester (two-person rule,
//! 403); reading any role, where a principal that only has `requester` sees only its own requests
//! (others' are 404); fetching the token only the requester, once (a second fetch is 409). The token
//! is kept in memory between approval and fetch and is never logged.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::{Principal, ADMIN, APPROVER, READ_ROLES, REQUESTER};
use super::error::{ApiError, ErrorResponse};
use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::grants::{connect_info, ConnectInfo, GrantView, MAX_LIST_LIMIT};
use crate::app::AppState;
pub use crate::grants::requests::RequestView;
use crate::grants::requests::{NewAccessRequest, RequestStatus};
use crate::store::RequestFilter;

/// Longest review reason accepted.
const MAX_REASON_CHARS: usize = 1000;

pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(show))
        .routes(routes!(approve))
        .routes(routes!(deny))
        .routes(routes!(token))
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RequestList {
    pub requests: Vec<RequestView>,
}

/// Query of `GET /v1/requests`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct RequestListQuery {
    pub requester: Option<String>,
    pub target: Option<String>,
    /// pending | approved | denied | expired
    pub status: Option<String>,
    pub limit: Option<usize>,
}

/// Body of `POST /v1/requests/{id}/approve` and `/deny`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReviewRequest {
    /// Optional for an approval, required for a denial.
    #[serde(default)]
    pub reason: String,
}

/// The answer of `POST /v1/requests/{id}/token`: the grant, its token (this once) and how to connect.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RequestToken {
    pub request: RequestView,
    pub grant: GrantView,
    /// The only copy that will ever be shown.
    pub token: String,
    pub connect: ConnectInfo,
}

fn review_reason(reason: &str, required: bool) -> Result<String, ApiError> {
    let reason = reason.trim();
    if required && reason.is_empty() {
        return Err(ApiError::invalid("reason", "a reason is required"));
    }
    if reason.chars().count() > MAX_REASON_CHARS {
        return Err(ApiError::invalid(
            "reason",
            format!("at most {MAX_REASON_CHARS} characters"),
        ));
    }
    Ok(reason.to_owned())
}

/// File an access request (roles `requester`, `admin`); the principal's name is the user the grant
/// is for. With `"break_glass": true` (roles that allow it) the request approves itself at once, its
/// TTL capped, and the grant is flagged break-glass; fetch its token from `/token`.
#[utoipa::path(post, path = "/v1/requests", tag = "requests", request_body = NewAccessRequest,
    security(("bearer" = [])),
    responses((status = 201, body = RequestView), (status = 400, body = ErrorResponse),
        (status = 401, body = ErrorResponse), (status = 403, body = ErrorResponse),
        (status = 422, body = ErrorResponse)))]
async fn create(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    body: Result<ApiJson<NewAccessRequest>, ApiError>,
) -> Result<(StatusCode, Json<RequestView>), ApiError> {
    principal.require_any(&[REQUESTER, ADMIN], "filing access requests")?;
    let ApiJson(req) = body?;
    let asked = req.ttl.clone();
    let change = state.requests.create(req, &principal.name).await?;
    let mut view = RequestView::at(change.request, state.clock.now());
    view.note = crate::grants::requests::ttl_cap_note(&asked, &view.request.ttl, &view.request.role);
    Ok((StatusCode::CREATED, Json(view)))
}

/// List access requests, newest first (a requester sees only its own).
#[utoipa::path(get, path = "/v1/requests", tag = "requests", params(RequestListQuery),
    security(("bearer" = [])),
    responses((status = 200, body = RequestList), (status = 400, body = ErrorResponse),
        (status = 401, body = ErrorResponse), (status = 403, body = ErrorResponse)))]
async fn list(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    query: Result<ApiQuery<RequestListQuery>, ApiError>,
) -> Result<Json<RequestList>, ApiError> {
    principal.require_any(READ_ROLES, "listing access requests")?;
    let ApiQuery(q) = query?;
    let status = match q.status.as_deref() {
        None => None,
        Some(s) => Some(RequestStatus::parse(s).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "status: {s:?} is not one of pending | approved | denied | expired"
            ))
        })?),
    };
    let limit = match q.limit {
        None => None,
        Some(n) if (1..=MAX_LIST_LIMIT).contains(&n) => Some(n),
        Some(n) => {
            return Err(ApiError::BadRequest(format!(
                "limit: {n} is out of range (1..={MAX_LIST_LIMIT})"
            )))
        }
    };
    let requester = if principal.sees_all_grants() {
        q.requester
    } else {
        match q.requester {
            Some(u) if u != principal.name => return Ok(Json(RequestList { requests: vec![] })),
            _ => Some(principal.name.clone()),
        }
    };
    let requests = state
        .requests
        .list(RequestFilter {
            requester,
            target: q.target,
            status,
            limit,
        })
        .await?;
    let now = state.clock.now();
    Ok(Json(RequestList {
        requests: requests.into_iter().map(|r| RequestView::at(r, now)).collect(),
    }))
}

/// Show one access request (a requester only its own; others' are 404).
#[utoipa::path(get, path = "/v1/requests/{id}", tag = "requests", security(("bearer" = [])),
    params(("id" = String, Path, description = "request id (r_…)")),
    responses((status = 200, body = RequestView), (status = 401, body = ErrorResponse),
        (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
async fn show(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<RequestView>, ApiError> {
    principal.require_any(READ_ROLES, "reading access requests")?;
    let request = state.requests.get(&id).await?;
    if !principal.sees_all_grants() && request.requester != principal.name {
        return Err(ApiError::NotFound(format!("no request {id}")));
    }
    Ok(Json(RequestView::at(request, state.clock.now())))
}

/// Approve a request (roles `approver`, `admin`; never its requester). The role's `approvals`-th
/// distinct approval issues the grant; the same approver twice is 409.
#[utoipa::path(post, path = "/v1/requests/{id}/approve", tag = "requests", request_body = ReviewRequest,
    security(("bearer" = [])),
    params(("id" = String, Path, description = "request id (r_…)")),
    responses((status = 200, body = RequestView), (status = 401, body = ErrorResponse),
        (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse),
        (status = 409, body = ErrorResponse), (status = 422, body = ErrorResponse)))]
async fn approve(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
    body: Result<ApiJson<ReviewRequest>, ApiError>,
) -> Result<Json<RequestView>, ApiError> {
    principal.require_any(&[APPROVER, ADMIN], "approving access requests")?;
    let ApiJson(review) = body?;
    let reason = review_reason(&review.reason, false)?;
    let change = state.requests.approve(&id, &principal.name, &reason).await?;
    Ok(Json(RequestView::at(change.request, state.clock.now())))
}

/// Deny a request (roles `approver`, `admin`; never its requester); a reason is required.
#[utoipa::path(post, path = "/v1/requests/{id}/deny", tag = "requests", request_body = ReviewRequest,
    security(("bearer" = [])),
    params(("id" = String, Path, description = "request id (r_…)")),
    responses((status = 200, body = RequestView), (status = 401, body = ErrorResponse),
        (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse),
        (status = 409, body = ErrorResponse), (status = 422, body = ErrorResponse)))]
async fn deny(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
    body: Result<ApiJson<ReviewRequest>, ApiError>,
) -> Result<Json<RequestView>, ApiError> {
    principal.require_any(&[APPROVER, ADMIN], "denying access requests")?;
    let ApiJson(review) = body?;
    let reason = review_reason(&review.reason, true)?;
    let request = state.requests.deny(&id, &principal.name, &reason).await?;
    Ok(Json(RequestView::at(request, state.clock.now())))
}

/// Fetch the token of an approved request: only its requester, only once (then 409). The token
/// lives in memory until fetched: after a restart it is gone (409) and the engineer asks again.
#[utoipa::path(post, path = "/v1/requests/{id}/token", tag = "requests", security(("bearer" = [])),
    params(("id" = String, Path, description = "request id (r_…)")),
    responses((status = 200, body = RequestToken), (status = 401, body = ErrorResponse),
        (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse),
        (status = 409, body = ErrorResponse)))]
async fn token(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<RequestToken>, ApiError> {
    principal.require_any(&[REQUESTER, ADMIN], "fetching request tokens")?;
    let (request, grant, token) = state.requests.take_token(&id, &principal.name).await?;
    tracing::info!(principal = %principal.name, request.id = %id, grant.id = %grant.id,
        "admin API: request token fetched");
    let connect = connect_info(
        &state.config,
        state.proxy_addr.get().copied(),
        &grant,
        token.expose(),
    );
    let now = state.clock.now();
    let break_glass = request.break_glass;
    Ok(Json(RequestToken {
        request: RequestView::at(request, now),
        grant: GrantView::at(grant, now).flagged(break_glass),
        token: token.expose().to_owned(),
        connect,
    }))
}
