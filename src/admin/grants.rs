//! `/v1/grants`: issue, list, show, extend and revoke grants over HTTP.
//!
//! Handlers are thin: authenticate ([`Principal`]), check the role, call [`crate::grants::GrantService`]
//! (which records and announces every change itself), shape the JSON. A grant is always shown with its `status` at the clock's now; its token appears
//! exactly once, in the response to `POST /v1/grants`, and is never logged.
//!
//! Roles: issuing needs `admin`; revoking and extending `admin` or `approver`; reading any role, where a principal
//! that is only a `requester` sees only grants whose `user` is its own name (others' are "not found",
//! so the API is no oracle for which grants exist).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::{Principal, ADMIN, APPROVER, READ_ROLES};
use super::error::{ApiError, ErrorResponse};
use super::extract::{ApiJson, ApiPath, ApiQuery};
use crate::app::AppState;
use crate::config::{ClientTls, Config};
pub use crate::grants::GrantView;
use crate::grants::{Grant, GrantStatus, NewGrant};
use crate::store::GrantFilter;

/// Largest `limit` a list request may ask for.
pub const MAX_LIST_LIMIT: usize = 1000;
/// Longest revocation reason accepted.
const MAX_REASON_CHARS: usize = 1000;

pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(issue, list))
        .routes(routes!(show))
        .routes(routes!(revoke))
        .routes(routes!(extend))
}

// ---------------------------------------------------------------------------------------------
// Wire types (also read by the CLI).
// ---------------------------------------------------------------------------------------------

/// Views of `grants` at the clock's now, with their break-glass flags.
pub async fn views(state: &AppState, grants: Vec<Grant>) -> Result<Vec<GrantView>, ApiError> {
    let flagged = state
        .grants
        .break_glass_ids(grants.iter().map(|g| g.id.clone()).collect())
        .await?;
    let now = state.clock.now();
    Ok(grants
        .into_iter()
        .map(|g| {
            let bg = flagged.contains(&g.id);
            GrantView::at(g, now).flagged(bg)
        })
        .collect())
}

async fn view(state: &AppState, grant: Grant) -> Result<GrantView, ApiError> {
    let mut v = views(state, vec![grant]).await?;
    Ok(v.remove(0))
}

/// The response to `POST /v1/grants`: the grant, its one-time token and how to connect with it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct IssuedGrant {
    #[serde(flatten)]
    pub view: GrantView,
    /// The only copy of the token that will ever exist.
    pub token: String,
    pub connect: ConnectInfo,
}

/// libpq connection parameters for the proxy, and a ready-to-paste `psql` command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ConnectInfo {
    pub host: String,
    pub port: u16,
    pub dbname: String,
    pub user: String,
    pub sslmode: String,
    pub psql: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct GrantList {
    pub grants: Vec<GrantView>,
}

/// Body of `POST /v1/grants`. Unknown fields are refused (a typo must not be silently ignored).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IssueRequest {
    pub user: String,
    pub target: String,
    pub role: String,
    /// The grant's length, e.g. "30m".
    pub ttl: String,
    /// Required; missing is treated like empty: 422 naming `reason` (as for revoke).
    #[serde(default)]
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starts_at: Option<DateTime<Utc>>,
}

impl From<IssueRequest> for NewGrant {
    fn from(r: IssueRequest) -> Self {
        NewGrant {
            user: r.user,
            target: r.target,
            role: r.role,
            ttl: r.ttl,
            reason: r.reason,
            starts_at: r.starts_at,
        }
    }
}

/// Query of `GET /v1/grants`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    pub user: Option<String>,
    pub target: Option<String>,
    pub status: Option<String>,
    pub limit: Option<usize>,
}

/// Body of `POST /v1/grants/{id}/revoke`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    /// Missing is treated like empty: 422 naming `reason`.
    #[serde(default)]
    pub reason: String,
}

/// Body of `POST /v1/grants/{id}/extend`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtendRequest {
    /// Added to the current expiry, e.g. "30m". The grant may never end later than its start plus
    /// the role's `max_ttl` (`break_glass_max_ttl` for break-glass grants).
    pub ttl: String,
    /// Why more time is needed (recorded in the audit trail).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Handlers.
// ---------------------------------------------------------------------------------------------

/// Issue a grant (role `admin`); the answer holds its token, shown only this once.
#[utoipa::path(post, path = "/v1/grants", tag = "grants", request_body = IssueRequest,
    security(("bearer" = [])),
    responses((status = 201, body = IssuedGrant), (status = 401, body = ErrorResponse),
        (status = 403, body = ErrorResponse), (status = 422, body = ErrorResponse)))]
async fn issue(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    body: Result<ApiJson<IssueRequest>, ApiError>,
) -> Result<(StatusCode, Json<IssuedGrant>), ApiError> {
    // The role is checked before the body is parsed: a principal who may not issue learns nothing more.
    principal.require_any(&[ADMIN], "issuing grants")?;
    let ApiJson(req) = body?;
    // Fail closed: the service releases the token only once the grant's audit record is written.
    let (grant, token) = state.grants.issue(req.into(), &principal.name).await?;
    tracing::info!(principal = %principal.name, grant.id = %grant.id, user = %grant.user,
        target = %grant.target, role = %grant.role, "admin API: grant issued");
    let connect = connect_info(
        &state.config,
        state.proxy_addr.get().copied(),
        &grant,
        token.expose(),
    );
    let view = GrantView::at(grant, state.clock.now());
    Ok((
        StatusCode::CREATED,
        Json(IssuedGrant {
            view,
            token: token.expose().to_owned(),
            connect,
        }),
    ))
}

/// List grants, newest first (a requester sees only its own).
#[utoipa::path(get, path = "/v1/grants", tag = "grants", params(ListQuery), security(("bearer" = [])),
    responses((status = 200, body = GrantList), (status = 400, body = ErrorResponse),
        (status = 401, body = ErrorResponse), (status = 403, body = ErrorResponse)))]
async fn list(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    query: Result<ApiQuery<ListQuery>, ApiError>,
) -> Result<Json<GrantList>, ApiError> {
    principal.require_any(READ_ROLES, "listing grants")?;
    let ApiQuery(query) = query?;
    let Some(filter) = list_filter(&principal, query)? else {
        return Ok(Json(GrantList { grants: Vec::new() }));
    };
    let grants = state.grants.list(filter).await?;
    Ok(Json(GrantList {
        grants: views(&state, grants).await?,
    }))
}

/// Show one grant (a requester only its own; others' are 404).
#[utoipa::path(get, path = "/v1/grants/{id}", tag = "grants", security(("bearer" = [])),
    params(("id" = String, Path, description = "grant id (g_…)")),
    responses((status = 200, body = GrantView), (status = 401, body = ErrorResponse),
        (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
async fn show(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<GrantView>, ApiError> {
    principal.require_any(READ_ROLES, "reading grants")?;
    let grant = state.grants.get(&id).await?;
    if !principal.sees_all_grants() && grant.user != principal.name {
        // Same answer as for a grant that does not exist.
        return Err(ApiError::NotFound(format!("no grant {id}")));
    }
    Ok(Json(view(&state, grant).await?))
}

/// Revoke a grant (roles `admin`, `approver`); its live sessions are closed at once.
#[utoipa::path(post, path = "/v1/grants/{id}/revoke", tag = "grants", request_body = RevokeRequest,
    security(("bearer" = [])),
    params(("id" = String, Path, description = "grant id (g_…)")),
    responses((status = 200, body = GrantView), (status = 401, body = ErrorResponse),
        (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse),
        (status = 409, body = ErrorResponse), (status = 422, body = ErrorResponse)))]
async fn revoke(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
    body: Result<ApiJson<RevokeRequest>, ApiError>,
) -> Result<Json<GrantView>, ApiError> {
    principal.require_any(&[ADMIN, APPROVER], "revoking grants")?;
    let ApiJson(req) = body?;
    let reason = req.reason.trim();
    if reason.is_empty() {
        return Err(ApiError::invalid(
            "reason",
            "a reason is required (why is this access ending?)",
        ));
    }
    if reason.chars().count() > MAX_REASON_CHARS {
        return Err(ApiError::invalid(
            "reason",
            format!("at most {MAX_REASON_CHARS} characters"),
        ));
    }
    let grant = state.grants.revoke(&id, &principal.name, reason).await?;
    tracing::info!(principal = %principal.name, grant.id = %grant.id, "admin API: grant revoked");
    Ok(Json(view(&state, grant).await?))
}

/// Extend a grant (roles `admin`, `approver`): the new expiry is the current expiry plus `ttl`,
/// never past the grant's start plus its role's `max_ttl` (422). Live sessions pick it up at once.
#[utoipa::path(post, path = "/v1/grants/{id}/extend", tag = "grants", request_body = ExtendRequest,
    security(("bearer" = [])),
    params(("id" = String, Path, description = "grant id (g_…)")),
    responses((status = 200, body = GrantView), (status = 401, body = ErrorResponse),
        (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse),
        (status = 409, body = ErrorResponse, description = "revoked or expired"),
        (status = 422, body = ErrorResponse)))]
async fn extend(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
    body: Result<ApiJson<ExtendRequest>, ApiError>,
) -> Result<Json<GrantView>, ApiError> {
    principal.require_any(&[ADMIN, APPROVER], "extending grants")?;
    let ApiJson(req) = body?;
    let reason = req.reason.map(|r| r.trim().to_owned()).filter(|r| !r.is_empty());
    if reason
        .as_ref()
        .is_some_and(|r| r.chars().count() > MAX_REASON_CHARS)
    {
        return Err(ApiError::invalid(
            "reason",
            format!("at most {MAX_REASON_CHARS} characters"),
        ));
    }
    let (_, grant) = state
        .grants
        .extend(&id, &req.ttl, reason.as_deref(), &principal.name)
        .await?;
    tracing::info!(principal = %principal.name, grant.id = %grant.id, expires_at = %grant.expires_at,
        "admin API: grant extended");
    Ok(Json(view(&state, grant).await?))
}

// ---------------------------------------------------------------------------------------------
// Pure pieces.
// ---------------------------------------------------------------------------------------------

/// The store filter for a list request, or `None` when the answer is known to be empty (a requester
/// asking for someone else's grants). A requester's filter is always forced to its own name.
pub fn list_filter(principal: &Principal, query: ListQuery) -> Result<Option<GrantFilter>, ApiError> {
    let status = match query.status.as_deref() {
        None => None,
        Some(s) => Some(GrantStatus::parse(s).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "status: {s:?} is not one of pending | active | expired | revoked"
            ))
        })?),
    };
    let limit = match query.limit {
        None => None,
        Some(n) if (1..=MAX_LIST_LIMIT).contains(&n) => Some(n),
        Some(n) => {
            return Err(ApiError::BadRequest(format!(
                "limit: {n} is out of range (1..={MAX_LIST_LIMIT})"
            )));
        }
    };
    let user = if principal.sees_all_grants() {
        query.user
    } else {
        match query.user {
            Some(u) if u != principal.name => return Ok(None),
            _ => Some(principal.name.clone()),
        }
    };
    Ok(Some(GrantFilter {
        user,
        target: query.target,
        status,
        limit,
    }))
}

/// How to reach the proxy with this grant. `proxy_addr` is the bound address when known (it differs
/// from the configured one with port 0); an unspecified host (0.0.0.0, ::) becomes `localhost`.
pub fn connect_info(
    config: &Config,
    proxy_addr: Option<SocketAddr>,
    grant: &Grant,
    token: &str,
) -> ConnectInfo {
    let addr = proxy_addr.unwrap_or(config.proxy.listen);
    let host = if addr.ip().is_unspecified() {
        "localhost".to_owned()
    } else {
        addr.ip().to_string()
    };
    let sslmode = if config.proxy.tls == ClientTls::Disabled {
        "disable"
    } else {
        "require"
    };
    let conninfo = [
        ("host", host.as_str()),
        ("port", &addr.port().to_string()),
        ("dbname", grant.target.as_str()),
        ("user", grant.user.as_str()),
        ("sslmode", sslmode),
    ]
    .iter()
    .map(|(k, v)| format!("{k}={}", conninfo_value(v)))
    .collect::<Vec<_>>()
    .join(" ");
    let psql = format!(
        "PGPASSWORD={} psql {}",
        shell_single_quote(token),
        shell_quote_conninfo(&conninfo)
    );
    ConnectInfo {
        host,
        port: addr.port(),
        dbname: grant.target.clone(),
        user: grant.user.clone(),
        sslmode: sslmode.to_owned(),
        psql,
    }
}

/// A libpq conninfo value: bare when it is plain, else single-quoted with `\` and `'` escaped.
fn conninfo_value(v: &str) -> String {
    let plain = !v.is_empty()
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.:@".contains(c));
    if plain {
        v.to_owned()
    } else {
        format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
    }
}

/// Double quotes when nothing in the text is special inside them, else POSIX single quotes.
fn shell_quote_conninfo(s: &str) -> String {
    if s.chars().any(|c| "\"$`\\!".contains(c)) {
        shell_single_quote(s)
    } else {
        format!("\"{s}\"")
    }
}

fn shell_single_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::auth::{AUDITOR, REQUESTER};

    fn config(tls: &str) -> Config {
        let text = crate::config::testing::MINIMAL
            .replace("listen = \"127.0.0.1:6432\"", "listen = \"0.0.0.0:6432\"")
            .replace("tls = \"disabled\"", &format!("tls = \"{tls}\""));
        Config::from_toml_str(&text).unwrap()
    }

    fn grant(user: &str) -> Grant {
        let t0 = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        Grant {
            id: "g_1".into(),
            user: user.into(),
            target: "shop".into(),
            role: "read".into(),
            reason: "incident 42".into(),
            created_by: "ops".into(),
            created_at: t0,
            starts_at: t0,
            expires_at: t0 + chrono::Duration::minutes(30),
            revoked_at: None,
            revoked_by: None,
            revoke_reason: None,
        }
    }

    #[test]
    fn connect_info_uses_the_bound_address_and_tls_mode() {
        let c = config("disabled");
        let info = connect_info(
            &c,
            Some("127.0.0.1:40001".parse().unwrap()),
            &grant("alice"),
            "tbx_abc",
        );
        assert_eq!(info.host, "127.0.0.1");
        assert_eq!(info.port, 40001);
        assert_eq!(
            info.dbname, "shop",
            "clients name the target, not the upstream database"
        );
        assert_eq!(info.sslmode, "disable");
        assert_eq!(
            info.psql,
            "PGPASSWORD='tbx_abc' psql \"host=127.0.0.1 port=40001 dbname=shop user=alice sslmode=disable\""
        );
    }

    #[test]
    fn connect_info_falls_back_to_config_and_localhost() {
        let c = Config {
            proxy: crate::config::ProxyConfig {
                tls: ClientTls::Optional,
                ..config("disabled").proxy
            },
            ..config("disabled")
        };
        let info = connect_info(&c, None, &grant("alice"), "tbx_abc");
        assert_eq!((info.host.as_str(), info.port), ("localhost", 6432));
        assert_eq!(info.sslmode, "require");
        let v6 = connect_info(&c, Some("[::]:7000".parse().unwrap()), &grant("alice"), "t");
        assert_eq!(v6.host, "localhost");
    }

    #[test]
    fn odd_user_names_stay_one_shell_word_and_one_conninfo_value() {
        let c = config("disabled");
        let info = connect_info(&c, None, &grant("o'brien $HOME"), "tbx_abc");
        assert_eq!(
            info.psql,
            r#"PGPASSWORD='tbx_abc' psql 'host=localhost port=6432 dbname=shop user='\''o\'\''brien $HOME'\'' sslmode=disable'"#
        );
        let info = connect_info(&c, None, &grant("a b"), "tbx_abc");
        assert!(
            info.psql.ends_with(r#"user='a b' sslmode=disable""#),
            "{}",
            info.psql
        );
    }

    fn principal(name: &str, roles: &[crate::config::PrincipalRole]) -> Principal {
        Principal {
            name: name.into(),
            roles: roles.to_vec(),
        }
    }

    #[test]
    fn requesters_are_forced_to_their_own_grants() {
        let alice = principal("alice", &[REQUESTER]);
        let f = list_filter(&alice, ListQuery::default()).unwrap().unwrap();
        assert_eq!(f.user.as_deref(), Some("alice"));
        let q = ListQuery {
            user: Some("alice".into()),
            ..Default::default()
        };
        assert_eq!(
            list_filter(&alice, q).unwrap().unwrap().user.as_deref(),
            Some("alice")
        );
        let q = ListQuery {
            user: Some("bob".into()),
            ..Default::default()
        };
        assert!(
            list_filter(&alice, q).unwrap().is_none(),
            "someone else's grants: empty answer"
        );

        let audrey = principal("audrey", &[AUDITOR]);
        assert_eq!(
            list_filter(&audrey, ListQuery::default()).unwrap().unwrap().user,
            None
        );
    }

    #[test]
    fn list_query_values_are_checked() {
        let ops = principal("ops", &[ADMIN]);
        let q = |status: Option<&str>, limit: Option<usize>| ListQuery {
            status: status.map(Into::into),
            limit,
            ..Default::default()
        };
        assert_eq!(
            list_filter(&ops, q(Some("active"), Some(5)))
                .unwrap()
                .unwrap()
                .status,
            Some(GrantStatus::Active)
        );
        let err = list_filter(&ops, q(Some("live"), None)).unwrap_err();
        assert_eq!(err.code(), "bad_request");
        assert!(err.to_string().contains("status"), "{err}");
        assert_eq!(
            list_filter(&ops, q(None, Some(0))).unwrap_err().code(),
            "bad_request"
        );
        assert_eq!(
            list_filter(&ops, q(None, Some(MAX_LIST_LIMIT + 1)))
                .unwrap_err()
                .code(),
            "bad_request"
        );
    }

    #[test]
    fn grant_view_has_every_field_and_the_status_and_round_trips() {
        let g = grant("alice");
        let view = GrantView::at(g.clone(), g.starts_at);
        let json = serde_json::to_value(&view).unwrap();
        assert_eq!(json["status"], "active");
        assert_eq!(json["id"], "g_1");
        assert_eq!(json["expires_at"], "2026-01-01T00:30:00Z");
        assert!(json.get("revoked_at").is_some());
        assert_eq!(serde_json::from_value::<GrantView>(json).unwrap(), view);
    }
}
