//! `GET /metrics`: the instance's Prometheus metrics in the text exposition format.
//!
//! Reachable without a token only when `admin.metrics_public = true`; otherwise roles `admin` and
//! `auditor`. The gauges that describe stored state (grants by state, pending requests, active
//! break-glass grants) and the audit queue depth are refreshed from the store at each scrape. A
//! store failure leaves those gauges at their last value (logged) and still serves the rest.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::{Principal, ADMIN, AUDITOR};
use super::error::{ApiError, ErrorResponse};
use crate::app::AppState;

pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new().routes(routes!(metrics))
}

/// Refreshes the scrape-time gauges from the store and the audit log.
pub async fn refresh(state: &AppState) {
    let m = &state.proxy.metrics;
    m.audit_queue_depth.set(state.audit.queue_depth() as i64);
    m.audit_index_lag.set(state.audit.index_lag() as i64);
    if let Some(fleet) = &state.fleet {
        m.fleet_reconcile_age_seconds
            .set(fleet.reconcile_age().map_or(-1.0, |d| d.as_secs_f64()));
    }
    match state.grants.counts().await {
        Ok(c) => {
            for (label, n) in [
                ("pending", c.pending),
                ("active", c.active),
                ("expired", c.expired),
                ("revoked", c.revoked),
            ] {
                m.grants.with_label_values(&[label]).set(n as i64);
            }
            m.break_glass_grants_active.set(c.break_glass_active as i64);
        }
        Err(e) => tracing::warn!(error = %e, "metrics: cannot count grants"),
    }
    match state
        .grants
        .store()
        .count_pending_requests(state.clock.now())
        .await
    {
        Ok(n) => m.requests_pending.set(n as i64),
        Err(e) => tracing::warn!(error = %e, "metrics: cannot count pending requests"),
    }
}

/// Prometheus metrics (text format 0.0.4). Public only with `admin.metrics_public = true`;
/// otherwise roles `admin`, `auditor`.
#[utoipa::path(get, path = "/metrics", tag = "operations", security((), ("bearer" = [])),
    responses((status = 200, content_type = "text/plain; version=0.0.4", body = String),
        (status = 401, body = ErrorResponse), (status = 403, body = ErrorResponse)))]
async fn metrics(
    State(state): State<Arc<AppState>>,
    principal: Result<Principal, ApiError>,
) -> Result<Response, ApiError> {
    if !state.config.admin.metrics_public {
        principal?.require_any(&[ADMIN, AUDITOR], "reading metrics")?;
    }
    refresh(&state).await;
    let text = state.proxy.metrics.render().map_err(|e| {
        tracing::error!(error = %e, "metrics: cannot render");
        ApiError::Internal("metrics could not be rendered".into())
    })?;
    Ok(([(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response())
}
