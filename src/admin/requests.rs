//! `/v1/requests`: engineers ask for access, other people review, the requester fetches the token.
//!
//! Handlers are thin: authenticate, check the role, call [`crate::grants::requests::RequestService`],
//! record the audit event of a grant it issued, notify the webhooks, shape the JSON.
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
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::{Principal, ADMIN, APPROVER, READ_ROLES, REQUESTER};
use super::error::{ApiError, ErrorResponse};
use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::grants::{connect_info, grant_fields, ConnectInfo, GrantView, MAX_LIST_LIMIT};
use crate::app::AppState;
use crate::audit::{AuditEvent, GrantIssued};
use crate::grants::requests::{AccessRequest, NewAccessRequest, RequestChange, RequestStatus};
use crate::store::RequestFilter;
use crate::webhooks::Notification;

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

/// A request as the API shows it: every stored field plus its status now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RequestView {
    #[serde(flatten)]
    pub request: AccessRequest,
    pub status: RequestStatus,
}

impl RequestView {
    pub fn at(request: AccessRequest, now: DateTime<Utc>) -> Self {
        let status = request.status_at(now);
        RequestView { request, status }
    }
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

fn request_fields(view: &RequestView) -> serde_json::Value {
    serde_json::json!({ "request": view })
}

/// The audit record of a request's change of state.
pub(crate) fn request_event(
    r: &AccessRequest,
    action: &str,
    actor: &str,
    reason: Option<&str>,
) -> AuditEvent {
    AuditEvent::AccessRequest(crate::audit::event::AccessRequestEvent {
        action: action.to_owned(),
        actor: actor.to_owned(),
        break_glass: r.break_glass,
        grant_id: r.grant_id.clone(),
        reason: reason.map(str::to_owned),
        request_id: r.id.clone(),
        role: r.role.clone(),
        target: r.target.clone(),
        ticket: r.ticket.clone(),
        ttl: r.ttl.clone(),
        user: r.requester.clone(),
    })
}

/// Audits and announces a grant a request just produced; on an audit failure the token is dropped.
async fn after_change(state: &AppState, change: &RequestChange, actor: &str) -> Result<(), ApiError> {
    let now = state.clock.now();
    let r = &change.request;
    let view = RequestView::at(r.clone(), now);
    let Some(grant) = &change.grant else {
        state.webhooks.notify(Notification::new(
            "request_approved",
            format!(
                "{actor} approved access request {} by {} for {} on {} ({} of {} approvals)",
                r.id,
                r.requester,
                r.role,
                r.target,
                r.approvals.len(),
                r.approvals_required
            ),
            request_fields(&view),
            now,
        ));
        return Ok(());
    };
    let event = AuditEvent::GrantIssued(GrantIssued::of(grant, r.break_glass));
    if let Err(source) = state.audit.record(vec![event]).await {
        state.requests.withhold_token(&r.id);
        return Err(ApiError::AuditUnavailable {
            message: format!(
                "grant {} was issued for request {} but its audit record could not be written, so its token \
                 is withheld; revoke it once the audit log is healthy",
                grant.id, r.id
            ),
            source,
        });
    }
    let grant_view = GrantView::at(grant.clone(), now).flagged(r.break_glass);
    let until = grant
        .expires_at
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut fields = serde_json::json!({ "request": view, "grant": grant_view });
    if r.break_glass {
        state.webhooks.notify(Notification::new(
            "break_glass",
            format!(
                ":rotating_light: BREAK-GLASS: {} gave themselves {} access to {} until {} (grant {}): {}",
                r.requester, r.role, r.target, until, grant.id, r.reason
            ),
            fields.clone(),
            now,
        ));
    } else {
        state.webhooks.notify(Notification::new(
            "request_approved",
            format!(
                "{actor} approved access request {} by {} for {} on {}; grant {} until {}",
                r.id, r.requester, r.role, r.target, grant.id, until
            ),
            fields.clone(),
            now,
        ));
    }
    if let Some(obj) = fields.as_object_mut() {
        obj.remove("request");
    }
    state.webhooks.notify(Notification::new(
        "grant_issued",
        format!(
            "Grant {} issued for {} on {} ({}) until {} (request {}, approved by {}){}",
            grant.id,
            grant.user,
            grant.target,
            grant.role,
            until,
            r.id,
            grant.created_by,
            if r.break_glass { " [break-glass]" } else { "" }
        ),
        grant_fields(&grant_view),
        now,
    ));
    Ok(())
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
    let change = state.requests.create(req, &principal.name).await?;
    let reason = change.request.reason.clone();
    state
        .audit
        .record(vec![request_event(
            &change.request,
            "created",
            &principal.name,
            Some(&reason),
        )])
        .await?;
    let now = state.clock.now();
    if change.request.break_glass {
        after_change(&state, &change, &principal.name).await?;
    } else {
        let r = &change.request;
        state.webhooks.notify(Notification::new(
            "request_created",
            format!(
                "{} asks for {} access to {} for {}{}: {} (request {}; {} approval{} needed)",
                r.requester,
                r.role,
                r.target,
                r.ttl,
                r.ticket.as_ref().map(|t| format!(" [{t}]")).unwrap_or_default(),
                r.reason,
                r.id,
                r.approvals_required,
                if r.approvals_required == 1 { "" } else { "s" }
            ),
            request_fields(&RequestView::at(r.clone(), now)),
            now,
        ));
    }
    Ok((
        StatusCode::CREATED,
        Json(RequestView::at(change.request, state.clock.now())),
    ))
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
    state
        .audit
        .record(vec![request_event(
            &change.request,
            "approved",
            &principal.name,
            Some(&reason),
        )])
        .await?;
    after_change(&state, &change, &principal.name).await?;
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
    state
        .audit
        .record(vec![request_event(
            &request,
            "denied",
            &principal.name,
            Some(&reason),
        )])
        .await?;
    let view = RequestView::at(request, state.clock.now());
    let r = &view.request;
    state.webhooks.notify(Notification::new(
        "request_denied",
        format!(
            "{} denied access request {} by {} for {} on {}: {}",
            principal.name, r.id, r.requester, r.role, r.target, reason
        ),
        request_fields(&view),
        state.clock.now(),
    ));
    Ok(Json(view))
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
    state
        .audit
        .record(vec![request_event(
            &request,
            "token_fetched",
            &principal.name,
            None,
        )])
        .await?;
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
