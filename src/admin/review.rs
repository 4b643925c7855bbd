//! `/v1/roles/review` and `/v1/policy/replay`: least privilege from the audit trail (roles
//! `admin` and `auditor`; everyone else 403, as for the trail itself).
//!
//! Handlers are thin: authenticate, parse the window and the candidate roles, run
//! [`crate::review`] over the audit database on the blocking pool. Read-only.
//!
//! - `GET /v1/roles/review?since=30d&target=&role=` → `{"since", "until", "statements", "roles":
//!   [review…]}`
//! - `POST /v1/policy/replay` `{"roles": {<the candidate config's [roles] as JSON>}, "since"?: "7d",
//!   "target"?, "role"?}` → `{"since", "until", "changed", "report": {…}}`; an invalid candidate is
//!   422 `invalid` listing every problem with its key path.

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::audit::AUDIT_ROLES;
use super::auth::Principal;
use super::error::{ApiError, ErrorResponse};
use super::extract::{ApiJson, ApiQuery};
use crate::app::AppState;
use crate::policy::ServerVersion;
use crate::review::replay::{self, ReplayReport};
use crate::review::roles::{self, RoleReview};
use crate::review::{trail, RecordedStatement, Window};

/// How far back a review looks by default.
pub const DEFAULT_REVIEW_WINDOW: &str = "30d";
/// How far back a replay looks by default.
pub const DEFAULT_REPLAY_WINDOW: &str = "7d";

pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(review_roles))
        .routes(routes!(replay_policy))
}

/// Query of `GET /v1/roles/review`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ReviewQuery {
    /// A duration back from now (`30d`, `12h`) or an RFC 3339 instant. Default 30d.
    pub since: Option<String>,
    pub target: Option<String>,
    pub role: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReviewAnswer {
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
    pub statements: u64,
    #[schema(value_type = Vec<Object>)]
    pub roles: Vec<RoleReview>,
}

/// Body of `POST /v1/policy/replay`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayBody {
    /// The candidate config's `[roles]` table, as JSON (`{"read": {"allow": ["read"], …}}`).
    #[schema(value_type = Object)]
    pub roles: serde_json::Value,
    /// Default 7d.
    pub since: Option<String>,
    pub target: Option<String>,
    pub role: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReplayAnswer {
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
    /// Whether any decision would change (the CLI exits 1).
    pub changed: bool,
    #[schema(value_type = Object)]
    pub report: ReplayReport,
}

/// `30d`, `12h` (back from `now`) or an RFC 3339 instant. Pure.
pub fn parse_since(text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Ok(at.with_timezone(&Utc));
    }
    let back = humantime::parse_duration(text).map_err(|_| {
        format!("{text:?} is neither a duration back from now (30d, 12h) nor an RFC 3339 time")
    })?;
    chrono::Duration::from_std(back)
        .ok()
        .and_then(|back| now.checked_sub_signed(back))
        .ok_or_else(|| format!("{text:?} reaches back too far"))
}

fn window(
    state: &AppState,
    since: Option<&str>,
    default: &str,
    target: Option<String>,
    role: Option<String>,
) -> Result<(Window, DateTime<Utc>), ApiError> {
    let now = state.clock.now();
    let since = parse_since(since.unwrap_or(default), now).map_err(|message| ApiError::Invalid {
        field: "since",
        message,
    })?;
    Ok((
        Window {
            since: Some(since),
            target,
            role,
        },
        now,
    ))
}

/// Sets its flag when dropped: the request was answered (408 at `admin.request_timeout`) or its
/// connection closed, so the blocking work stops at the next record.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Whether the work on one record may go on: not past `deadline`, not cancelled. Pure.
fn may_continue(now: Instant, deadline: Instant, cancelled: bool) -> bool {
    now < deadline && !cancelled
}

/// Runs `fold` over the window's statement records on the blocking pool: one review or replay
/// at a time per instance (429 `busy` otherwise), stopped at `admin.request_timeout`, at
/// shutdown, or when the request goes away, so no abandoned work keeps a thread busy.
async fn over_trail<T: Send + 'static>(
    state: &AppState,
    window: Window,
    fold: impl FnOnce(
            &mut dyn FnMut(&mut dyn FnMut(RecordedStatement)) -> Result<u64, ApiError>,
        ) -> Result<T, ApiError>
        + Send
        + 'static,
) -> Result<T, ApiError> {
    let Some(db) = state.audit.db_path().map(|p| p.to_path_buf()) else {
        return Err(ApiError::Internal(
            "this instance keeps no audit database to review (in-memory store)".into(),
        ));
    };
    let Ok(slot) = state.review_slot.clone().try_acquire_owned() else {
        return Err(ApiError::Busy(
            "another role review or policy replay is running on this instance; try again when it ends".into(),
        ));
    };
    let limit = state.config.admin.request_timeout;
    let deadline = Instant::now() + limit;
    let cancelled = Arc::new(AtomicBool::new(false));
    let _cancel_on_drop = CancelOnDrop(cancelled.clone());
    let shutdown = state.shutdown.clone();
    let stopped = Arc::new(AtomicBool::new(false));
    let stopped_in_task = stopped.clone();
    let result = tokio::task::spawn_blocking(move || {
        let _slot = slot;
        let mut read = |each: &mut dyn FnMut(RecordedStatement)| {
            trail::for_each_statement(&db, &window, |record| {
                let go_on = may_continue(
                    Instant::now(),
                    deadline,
                    cancelled.load(Ordering::Relaxed) || shutdown.is_cancelled(),
                );
                if !go_on {
                    stopped_in_task.store(true, Ordering::Relaxed);
                    return ControlFlow::Break(());
                }
                each(record);
                ControlFlow::Continue(())
            })
            .map_err(|e| {
                tracing::error!(error = %e, "reading the audit trail for a review failed");
                ApiError::Internal("the audit trail could not be read; see the timebox log".into())
            })
        };
        fold(&mut read)
    })
    .await
    .map_err(|e| ApiError::Internal(format!("the review task failed: {e}")))?;
    if stopped.load(Ordering::Relaxed) {
        return Err(ApiError::Busy(format!(
            "the window holds more than this instance reviews within {limit:?} (admin.request_timeout); \
             narrow it with since, target or role"
        )));
    }
    result
}

/// What each role was used for, from the audit trail, with a suggested narrower role (roles
/// `admin`, `auditor`).
#[utoipa::path(get, path = "/v1/roles/review", tag = "audit", params(ReviewQuery), security(("bearer" = [])),
    responses((status = 200, body = ReviewAnswer), (status = 401, body = ErrorResponse),
        (status = 403, body = ErrorResponse), (status = 422, body = ErrorResponse)))]
async fn review_roles(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    query: Result<ApiQuery<ReviewQuery>, ApiError>,
) -> Result<Json<ReviewAnswer>, ApiError> {
    principal.require_any(AUDIT_ROLES, "reviewing roles")?;
    let ApiQuery(query) = query?;
    let (window, until) = window(
        &state,
        query.since.as_deref(),
        DEFAULT_REVIEW_WINDOW,
        query.target,
        query.role,
    )?;
    let since = window.since.unwrap_or(until);
    let current = state.config.roles.clone();
    let (statements, reviews) = over_trail(&state, window, move |read| {
        let mut reviewer = roles::Reviewer::default();
        let statements = read(&mut |r| reviewer.feed(r))?;
        Ok((statements, reviewer.finish(&current)))
    })
    .await?;
    Ok(Json(ReviewAnswer {
        since,
        until,
        statements,
        roles: reviews,
    }))
}

/// Decides every recorded statement of the window again under candidate roles and reports what
/// would change (roles `admin`, `auditor`).
#[utoipa::path(post, path = "/v1/policy/replay", tag = "audit", request_body = ReplayBody, security(("bearer" = [])),
    responses((status = 200, body = ReplayAnswer), (status = 400, body = ErrorResponse),
        (status = 401, body = ErrorResponse), (status = 403, body = ErrorResponse),
        (status = 422, body = ErrorResponse)))]
async fn replay_policy(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    body: Result<ApiJson<ReplayBody>, ApiError>,
) -> Result<Json<ReplayAnswer>, ApiError> {
    principal.require_any(AUDIT_ROLES, "replaying the policy")?;
    let ApiJson(body) = body?;
    let candidate = crate::config::roles_from_json(body.roles).map_err(|e| ApiError::Invalid {
        field: "roles",
        message: e.to_string(),
    })?;
    let (window, until) = window(
        &state,
        body.since.as_deref(),
        DEFAULT_REPLAY_WINDOW,
        body.target,
        body.role,
    )?;
    let since = window.since.unwrap_or(until);
    let current = state.config.roles.clone();
    let report = over_trail(&state, window, move |read| {
        let mut replayer = replay::Replayer::new(&current, &candidate, ServerVersion::OLDEST);
        read(&mut |r| replayer.feed(r))?;
        Ok(replayer.finish())
    })
    .await?;
    Ok(Json(ReplayAnswer {
        since,
        until,
        changed: report.changed(),
        report,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_stops_at_the_deadline_or_when_cancelled() {
        let now = Instant::now();
        let later = now + std::time::Duration::from_secs(1);
        assert!(may_continue(now, later, false));
        assert!(!may_continue(later, later, false));
        assert!(!may_continue(now, later, true));
    }

    #[test]
    fn since_is_a_duration_back_or_an_instant() {
        let now: DateTime<Utc> = "2026-12-07T12:00:00Z".parse().unwrap();
        assert_eq!(
            parse_since("30d", now).unwrap(),
            "2026-11-07T12:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        assert_eq!(
            parse_since("90m", now).unwrap(),
            "2026-12-07T10:30:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        assert_eq!(
            parse_since("2026-12-01T00:00:00Z", now).unwrap(),
            "2026-12-01T00:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        assert!(parse_since("last week", now)
            .unwrap_err()
            .contains("neither a duration"));
        assert!(parse_since("100000000000d", now).is_err());
    }
}
