//! `/v1/audit`: search the audit trail, verify its hash chain, read its head. Roles `admin` and
//! `auditor` only; everyone else gets 403 (the trail shows every user's statements).
//!
//! Handlers are thin: authenticate, check the role, turn the query string into an
//! [`AuditFilter`], call [`crate::audit::AuditLog`]. Read-only: nothing here writes to the trail.
//!
//! - `GET /v1/audit?user=&grant=&target=&session=&class=&decision=&kind=&since=&until=&contains=&cursor=&limit=&order=`
//!   → `{"events": [record…], "next_cursor": seq | null}`; newest first unless `order=asc`; `since`
//!   and `until` are RFC 3339 (`since ≤ ts < until`); `limit` 1..=1000 (default 100); pass
//!   `next_cursor` back as `cursor` for the next page.
//! - `GET /v1/audit/verify[?anchor=SEQ:HASH]` → `{"ok", "records", "head": {"seq", "hash"},
//!   "first_bad": {"seq", "problem"} | null}`; checked against the live head and the given anchor
//! - `GET /v1/audit/head` → `{"seq", "hash"}`

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::{Principal, ADMIN, AUDITOR};
use super::error::{ApiError, ErrorResponse};
use super::extract::ApiQuery;
use crate::app::AppState;
use crate::audit::query::MAX_LIMIT;
use crate::audit::{AuditFilter, Head, Order, Page, VerifyReport};

/// Roles that may read the audit trail.
pub const AUDIT_ROLES: &[crate::config::PrincipalRole] = &[ADMIN, AUDITOR];

pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(search))
        .routes(routes!(verify))
        .routes(routes!(head))
}

/// Query of `GET /v1/audit`. Unknown parameters are refused (a typo must not widen a search).
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SearchQuery {
    pub user: Option<String>,
    pub grant: Option<String>,
    pub target: Option<String>,
    pub session: Option<String>,
    pub class: Option<String>,
    pub decision: Option<String>,
    pub kind: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub contains: Option<String>,
    pub cursor: Option<u64>,
    pub limit: Option<usize>,
    pub order: Option<String>,
}

/// Search the audit trail (roles `admin`, `auditor`): `{"events": [record…], "next_cursor"}`.
#[utoipa::path(get, path = "/v1/audit", tag = "audit", params(SearchQuery), security(("bearer" = [])),
    responses((status = 200, body = Object), (status = 400, body = ErrorResponse),
        (status = 401, body = ErrorResponse), (status = 403, body = ErrorResponse)))]
async fn search(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    query: Result<ApiQuery<SearchQuery>, ApiError>,
) -> Result<Json<Page>, ApiError> {
    principal.require_any(AUDIT_ROLES, "reading the audit trail")?;
    let ApiQuery(query) = query?;
    let filter = search_filter(query)?;
    Ok(Json(state.audit.query(filter).await?))
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
    let report = state.audit.verify(anchors).await?;
    if let Some(bad) = &report.first_bad {
        tracing::error!(principal = %principal.name, seq = bad.seq, problem = %bad.problem,
            "audit chain verification failed");
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

/// The filter for a search request; every bad value is a 400 naming its parameter. Pure.
pub fn search_filter(q: SearchQuery) -> Result<AuditFilter, ApiError> {
    let time = |field: &str, v: Option<String>| -> Result<Option<DateTime<Utc>>, ApiError> {
        v.map(|s| {
            DateTime::parse_from_rfc3339(&s)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| {
                    ApiError::BadRequest(format!(
                        "{field}: {s:?} is not an RFC 3339 time ({e}); write e.g. 2026-01-31T14:00:00Z"
                    ))
                })
        })
        .transpose()
    };
    let limit = match q.limit {
        None => 0,
        Some(n) if (1..=MAX_LIMIT).contains(&n) => n,
        Some(n) => {
            return Err(ApiError::BadRequest(format!(
                "limit: {n} is out of range (1..={MAX_LIMIT})"
            )))
        }
    };
    let order = match q.order.as_deref() {
        None | Some("desc") => Order::Desc,
        Some("asc") => Order::Asc,
        Some(o) => {
            return Err(ApiError::BadRequest(format!(
                "order: {o:?} is not one of asc | desc"
            )))
        }
    };
    let filter = AuditFilter {
        user: q.user,
        grant: q.grant,
        target: q.target,
        session: q.session,
        class: q.class,
        decision: q.decision,
        kind: q.kind,
        since: time("since", q.since)?,
        until: time("until", q.until)?,
        contains: q.contains.filter(|c| !c.is_empty()),
        cursor: q.cursor,
        limit,
        order,
    };
    filter
        .validate()
        .map_err(|(field, message)| ApiError::BadRequest(format!("{field}: {message}")))?;
    Ok(filter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_values_are_checked_and_named() {
        let ok = search_filter(SearchQuery {
            user: Some("alice".into()),
            since: Some("2026-01-01T00:00:00+01:00".into()),
            limit: Some(10),
            order: Some("asc".into()),
            decision: Some("deny".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(ok.user.as_deref(), Some("alice"));
        assert_eq!(ok.since.unwrap().to_rfc3339(), "2025-12-31T23:00:00+00:00");
        assert_eq!((ok.limit, ok.order), (10, Order::Asc));

        let err = |q: SearchQuery| {
            let e = search_filter(q).unwrap_err();
            assert_eq!(e.code(), "bad_request");
            e.to_string()
        };
        assert!(err(SearchQuery {
            since: Some("yesterday".into()),
            ..Default::default()
        })
        .starts_with("since:"));
        assert!(err(SearchQuery {
            limit: Some(1001),
            ..Default::default()
        })
        .starts_with("limit:"));
        assert!(err(SearchQuery {
            limit: Some(0),
            ..Default::default()
        })
        .starts_with("limit:"));
        assert!(err(SearchQuery {
            decision: Some("maybe".into()),
            ..Default::default()
        })
        .starts_with("decision:"));
        assert!(err(SearchQuery {
            kind: Some("stmt".into()),
            ..Default::default()
        })
        .starts_with("kind:"));
        assert!(err(SearchQuery {
            order: Some("up".into()),
            ..Default::default()
        })
        .starts_with("order:"));
    }
}
