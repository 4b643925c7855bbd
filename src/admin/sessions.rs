//! `/v1/sessions`: the proxy's live sessions, and the kill switch.
//!
//! Reads [`crate::proxy::SessionRegistry`] (in memory, this instance's sessions, with their
//! counters) and, in a fleet ([`crate::fleet`]), the sessions other live instances registered in the
//! store; each session's grant is read from the store for its current expiry. Killing a local
//! session cancels its relay loop, which cancels a running query upstream, sends the client FATAL
//! 57P01 naming who killed it and why, and audits the end as `killed`. Killing another instance's
//! session writes a kill request that its owner acts on (notified at once, reconciled at the
//! latest): the answer is 200 with `confirmed: true` once the owner has ended it, or 202 with
//! `confirmed: false` if it has not within [`crate::fleet::KILL_CONFIRM_TIMEOUT`]. Roles: listing
//! `admin`, `approver`, `auditor` (a `requester` sees only sessions of its own user); killing
//! `admin`, `approver`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::{Principal, ADMIN, APPROVER, READ_ROLES};
use super::error::{ApiError, ErrorResponse};
use super::extract::{ApiJson, ApiPath};
use crate::app::AppState;
use crate::proxy::SessionHandle;
use crate::store::postgres::fleet::SessionRow;
use crate::webhooks::{Notification, WebhookEvent};

/// Longest kill reason accepted.
const MAX_REASON_CHARS: usize = 1000;

pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new().routes(routes!(list)).routes(routes!(kill))
}

/// One live session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SessionView {
    /// `s_` + 16 hex digits, as in the audit trail.
    pub id: String,
    pub user: String,
    pub target: String,
    pub role: String,
    pub grant_id: String,
    pub client_addr: String,
    pub tls_version: Option<String>,
    pub started_at: DateTime<Utc>,
    /// The grant's current expiry (`None` if the grant could not be read).
    pub expires_at: Option<DateTime<Utc>>,
    /// Counters: live for the answering instance's own sessions, 0 for another instance's.
    pub statements: u64,
    pub bytes_from_client: u64,
    pub bytes_to_client: u64,
    /// The instance holding the session (in a fleet; absent with the SQLite store).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
}

/// Answer of `DELETE /v1/sessions/{id}`: the session, and whether its end is confirmed.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct KilledSession {
    #[serde(flatten)]
    pub session: SessionView,
    /// `true`: severed (here, or confirmed by the instance holding it); `false`: the holding
    /// instance was asked but had not confirmed within the bound (HTTP 202).
    pub confirmed: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SessionList {
    pub sessions: Vec<SessionView>,
}

/// Body of `DELETE /v1/sessions/{id}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KillRequest {
    /// Required; shown to the engineer.
    #[serde(default)]
    pub reason: String,
}

async fn view(state: &AppState, s: &SessionHandle) -> SessionView {
    let expires_at = state.grants.get(&s.grant_id).await.ok().map(|g| g.expires_at);
    let stats = s.stats();
    SessionView {
        id: s.name(),
        user: s.user.clone(),
        target: s.target.clone(),
        role: s.role.clone(),
        grant_id: s.grant_id.clone(),
        client_addr: s.client_addr.to_string(),
        tls_version: s.tls_version.clone(),
        started_at: s.started_at,
        expires_at,
        statements: stats.statements,
        bytes_from_client: stats.bytes_from_client,
        bytes_to_client: stats.bytes_to_client,
        instance: state.fleet.as_ref().map(|f| f.instance().to_owned()),
    }
}

async fn remote_view(state: &AppState, s: SessionRow) -> SessionView {
    let expires_at = state.grants.get(&s.grant_id).await.ok().map(|g| g.expires_at);
    SessionView {
        id: s.id,
        user: s.user,
        target: s.target,
        role: s.role,
        grant_id: s.grant_id,
        client_addr: s.client_addr,
        tls_version: None,
        started_at: s.started_at,
        expires_at,
        statements: 0,
        bytes_from_client: 0,
        bytes_to_client: 0,
        instance: Some(s.instance),
    }
}

/// List live sessions of this instance and, in a fleet, of every live instance (a requester sees
/// only its own).
#[utoipa::path(get, path = "/v1/sessions", tag = "sessions", security(("bearer" = [])),
    responses((status = 200, body = SessionList), (status = 401, body = ErrorResponse),
        (status = 403, body = ErrorResponse)))]
async fn list(
    State(state): State<Arc<AppState>>,
    principal: Principal,
) -> Result<Json<SessionList>, ApiError> {
    principal.require_any(READ_ROLES, "listing sessions")?;
    let all = principal.sees_all_grants();
    let mut sessions = Vec::new();
    for s in state.proxy.sessions.list() {
        if all || s.user == principal.name {
            sessions.push(view(&state, &s).await);
        }
    }
    if let Some(fleet) = &state.fleet {
        for s in fleet.sessions(None).await? {
            let local = s.instance == fleet.instance();
            if !local && (all || s.user == principal.name) {
                sessions.push(remote_view(&state, s).await);
            }
        }
    }
    Ok(Json(SessionList { sessions }))
}

/// Sever a live session (roles `admin`, `approver`); a reason is required and shown to the client.
#[utoipa::path(delete, path = "/v1/sessions/{id}", tag = "sessions", request_body = KillRequest,
    security(("bearer" = [])),
    params(("id" = String, Path, description = "session id (s_…)")),
    responses((status = 200, body = KilledSession), (status = 401, body = ErrorResponse),
        (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse),
        (status = 202, body = KilledSession, description = "asked the holding instance; not yet confirmed"),
        (status = 422, body = ErrorResponse), (status = 503, body = ErrorResponse)))]
async fn kill(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
    body: Result<ApiJson<KillRequest>, ApiError>,
) -> Result<(StatusCode, Json<KilledSession>), ApiError> {
    principal.require_any(&[ADMIN, APPROVER], "killing sessions")?;
    let ApiJson(req) = body?;
    let reason = req.reason.trim().to_owned();
    if reason.is_empty() {
        return Err(ApiError::invalid(
            "reason",
            "a reason is required (it is shown to the engineer)",
        ));
    }
    if reason.chars().count() > MAX_REASON_CHARS {
        return Err(ApiError::invalid(
            "reason",
            format!("at most {MAX_REASON_CHARS} characters"),
        ));
    }
    // Shown to the engineer's client and written to the audit trail: the same rule as every reason.
    crate::grants::check_text("reason", &reason)?;
    let (view, confirmed) = match state.proxy.sessions.by_name(&id) {
        Some(session) => {
            let view = view(&state, &session).await;
            session.kill(&principal.name, &reason);
            (view, true)
        }
        None => {
            let fleet = state
                .fleet
                .as_ref()
                .ok_or_else(|| ApiError::NotFound(format!("no live session {id}")))?;
            let (row, confirmed) = fleet
                .kill_remote(&id, &principal.name, &reason)
                .await?
                .ok_or_else(|| ApiError::NotFound(format!("no live session {id} on any live instance")))?;
            (remote_view(&state, row).await, confirmed)
        }
    };
    tracing::info!(principal = %principal.name, session.id = %view.id, user = %view.user,
        grant.id = %view.grant_id, "admin API: session killed");
    state.webhooks.notify(Notification::new(
        WebhookEvent::SessionKilled,
        format!(
            "{} killed session {} of {} on {} (grant {}): {}",
            principal.name, view.id, view.user, view.target, view.grant_id, reason
        ),
        serde_json::json!({ "session": view, "killed_by": principal.name, "reason": reason }),
        state.clock.now(),
    ));
    let status = if confirmed {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((
        status,
        Json(KilledSession {
            session: view,
            confirmed,
        }),
    ))
}
