//! The auditors' SQL endpoint: `psql "dbname=timebox_audit user=<token name>"` with the auditor's
//! admin-API token as password, to timebox's own proxy port.
//!
//! Data flow: the proxy's startup phase (TLS, startup packet) hands connections for the reserved
//! database `timebox_audit` here instead of to a grant. Authentication is SCRAM-SHA-256 (-PLUS over
//! TLS, which is required unless the proxy runs without TLS), with the token as password, checked
//! against the `scram` verifier of the `[[admin.tokens]]` entry whose name is the user (else of the
//! live admin token of that name issued over the admin API, kept in the store) and which
//! carries the `auditor` or `admin` role. It runs under the startup deadline and the login
//! throttle; an unknown name, a wrong token and a token without a verifier look the same.
//! Queries use the simple protocol. Each must parse (PostgreSQL's parser, cross-checked) as plain
//! SELECTs over the audit views below — a first filter only — and then runs in [`engine`] on a
//! *read-only* SQLite connection whose authorizer decides what the query may touch, with its
//! result streamed under caps on rows, bytes, value size and time. Everything else is refused.
//! The auditors' own queries are audited too.
//!
//! The backend messages are pgwire's message types ([`messages`]); the connection is served here
//! rather than by pgwire's socket handler because timebox has already done TLS and startup by the
//! time it knows the database name. The SCRAM exchange itself is the proxy's (the one used for
//! grant logins), whose authentication messages are pgwire's too ([`crate::proxy::wire`]).
//!
//! The SQL is SQLite's (JSON: `json_extract(payload, '$.field')`; time: `datetime('now', '-7 days')`).
//! The views are declared once in [`views`] (with `ts` in SQLite's date format, so time filters are
//! exact); psql's `\d` commands, which read PostgreSQL's catalog, get a hint to `timebox_views`.
//!
//! With a PostgreSQL store the endpoint answers for the whole fleet in the same SQL: this
//! instance's records come from its local index, the other instances' from its fleet mirror
//! ([`mirror`]), a local SQLite copy of the central audit table; the auditor's SQL never reaches
//! the store's PostgreSQL.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::admin::auth::{Principal, ADMIN, AUDITOR};
use crate::app::AppState;
use crate::audit::event::{self as audit_event, AuditEvent};
use crate::config::AdminToken;
use crate::grants::token::{ScramVerifier, SCRAM_ITERATIONS};
use crate::proxy::auth::{self, AuthError};
use crate::proxy::startup::{ClientParams, ClientTlsInfo};
use crate::proxy::stream::ClientStream;
use crate::proxy::wire::PgError;

mod engine;
mod functions;
mod messages;
pub mod mirror;
pub mod views;

pub use engine::{AuditDb, FleetDb, Limits, QueryError, ALLOWED_FUNCTIONS};
pub use functions::{FunctionError, MAX_TRIM_WORK};
pub use messages::MessageError;

/// The reserved database name.
pub const AUDIT_DATABASE: &str = "timebox_audit";
/// Largest query text accepted.
const MAX_QUERY: usize = 64 * 1024;
/// Auditor queries running at once on the whole instance (more get 53300 at once).
pub const QUERIES_AT_ONCE: usize = 4;
/// How long a write to the auditor may wait for it to read.
const CLIENT_WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// What auditors may run: reads only (plus SQLite's JSON and date functions).
fn auditor_policy() -> crate::policy::RolePolicy {
    let mut p = crate::policy::RolePolicy::with_classes("auditor", &[crate::policy::StatementClass::Read]);
    p.allow_functions = ALLOWED_FUNCTIONS.iter().map(|f| f.to_string()).collect();
    p
}

/// The decision on one auditor query. Pure.
pub fn check_query(sql: &str) -> Result<(), String> {
    let classification = crate::policy::classify(sql);
    if classification.statements.is_empty() {
        return Ok(());
    }
    for stmt in &classification.statements {
        if stmt.relations.iter().any(is_postgres_catalog) {
            return Err(views::DESCRIBE_HINT.to_owned());
        }
        if stmt.unparsed.is_some() || stmt.class == crate::policy::StatementClass::Unparsed {
            return Err(format!(
                "timebox_audit: the query could not be verified ({})",
                stmt.unparsed.as_deref().unwrap_or("unparsed")
            ));
        }
        if stmt.kind != "SELECT" {
            return Err(format!(
                "timebox_audit is read-only: only SELECT is allowed, not {}",
                stmt.kind
            ));
        }
        if let crate::policy::Decision::Deny { reason, .. } =
            crate::policy::authorize(&auditor_policy(), stmt)
        {
            return Err(format!("timebox_audit is read-only: {reason}"));
        }
        for r in &stmt.relations {
            let name = r.name.to_ascii_lowercase();
            let schema_ok = r.schema.as_deref().is_none_or(|s| s.eq_ignore_ascii_case("temp"));
            if !schema_ok || !views::is_view(&name) {
                return Err(format!(
                    "timebox_audit: relation {r} is not available; query the views {}",
                    views::names().collect::<Vec<_>>().join(", ")
                ));
            }
        }
    }
    Ok(())
}

/// True for a relation of PostgreSQL's catalog (what psql's `\\d` commands read).
fn is_postgres_catalog(r: &crate::policy::Relation) -> bool {
    let schema = r.schema.as_deref().map(str::to_ascii_lowercase);
    matches!(schema.as_deref(), Some("pg_catalog" | "information_schema"))
        || (schema.is_none() && r.name.to_ascii_lowercase().starts_with("pg_"))
}

/// What the startup phase hands over with an auditor connection.
#[derive(Debug)]
pub struct PreAuth {
    /// The client must have logged in by then (`proxy.startup_timeout`, from accept).
    pub deadline: tokio::time::Instant,
    /// The connection's slot in the pool of unauthenticated connections, given back at login.
    pub unauthenticated: crate::proxy::PreAuthSlot,
}

/// Serves one auditor connection (after its startup packet). Never returns an error: problems are
/// told to the client and the connection closes.
pub async fn serve(
    state: Arc<AppState>,
    mut client: ClientStream,
    params: ClientParams,
    tls: Option<ClientTlsInfo>,
    peer: std::net::SocketAddr,
    pre_auth: PreAuth,
) {
    let logged_in = tokio::time::timeout_at(
        pre_auth.deadline,
        login(&state, &mut client, &params, tls.as_ref(), peer),
    )
    .await;
    let result = match logged_in {
        Err(_) => {
            // The throttle reservation was dropped unreleased: the attempt counts as a failure.
            crate::proxy::login::record_auth_timeout(&state.proxy.metrics, &state.audit, &params, peer);
            Err(PgError::startup_timeout())
        }
        Ok(Err(e)) => Err(e),
        Ok(Ok(None)) => return,
        Ok(Ok(Some(auditor))) => match state.proxy.admit(state.config.proxy.max_connections) {
            Err(e) => Err(e),
            Ok(_slot) => {
                drop(pre_auth.unauthenticated);
                run(&state, &mut client, &params, &auditor).await
            }
        },
    };
    if let Err(e) = result {
        let mut out = BytesMut::new();
        e.encode(&mut out);
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            client.write_all(&out).await?;
            client.shutdown().await
        })
        .await;
    }
}

/// Authenticates an auditor. `Ok(Some(auditor))`: the audit database to serve and the token; `Ok(None)` when the
/// client left before offering a token.
async fn login(
    state: &Arc<AppState>,
    client: &mut ClientStream,
    params: &ClientParams,
    tls: Option<&ClientTlsInfo>,
    peer: std::net::SocketAddr,
) -> Result<Option<Auditor>, PgError> {
    if tls.is_none() && state.config.proxy.tls != crate::config::ClientTls::Disabled {
        return Err(PgError::tls_required());
    }
    let auth_failures = &state.proxy.metrics.auth_failures_total;
    let throttle = &state.proxy.auth_throttle;
    let reservation = match throttle.reserve(peer.ip(), &params.user, std::time::Instant::now()) {
        Ok(r) => r,
        Err(throttled) => {
            auth_failures.with_label_values(&["throttled"]).inc();
            tracing::warn!(client.addr = %peer, why = %throttled, "timebox_audit authentication throttled");
            return Err(throttled.to_pg_error());
        }
    };
    // SCRAM-SHA-256 against the token's verifier. An unknown name, or a token without a
    // verifier, gets a stable made-up salt and no candidate: the same exchange, the same 28P01.
    // The made-up salt is derived for every name, so a known name takes no less time.
    let made_up_salt = state
        .grants
        .salt_for(&params.user, AUDIT_DATABASE)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "grant store unavailable during timebox_audit authentication");
            PgError::system_error("timebox cannot check logins right now (store unavailable)")
        })?;
    // A token issued over the admin API: its live store entry (with the same kind of verifier), and
    // its id, which every later query checks is still live.
    let mut store_token_id = None;
    let entry: Option<AdminToken> = match token_entry(&state.config.admin.tokens, &params.user) {
        Some(config_token) => Some(config_token.clone()),
        None => live_store_token(state, &params.user).await?.map(|stored| {
            store_token_id = Some(stored.record.id.clone());
            stored.as_config_token()
        }),
    };
    let verifier = entry.as_ref().and_then(|t| t.scram.as_ref());
    let (salt, iterations) = match verifier {
        Some(v) => (v.salt.clone(), v.iterations),
        None => (made_up_salt.to_vec(), SCRAM_ITERATIONS),
    };
    if entry.is_some() && verifier.is_none() {
        tracing::warn!(user = %params.user, "admin token has no scram verifier; it cannot log in to timebox_audit");
    }
    let candidates: Vec<&ScramVerifier> = verifier.into_iter().collect();
    let wrong = || PgError::invalid_audit_token(&params.user);
    let exchanged = auth::scram_exchange(client, tls, &salt, iterations, &candidates, wrong).await;
    let server_final = match exchanged {
        Ok((_, server_final)) => server_final,
        Err(AuthError::Refused {
            kind,
            error,
            reason,
            counts_as_failure,
        }) => {
            if !counts_as_failure {
                reservation.release();
            }
            auth_failures.with_label_values(&[kind.metric_label()]).inc();
            tracing::info!(client.addr = %peer, user = %params.user, %reason, "timebox_audit authentication failed");
            let event = AuditEvent::AuthFailure(audit_event::AuthFailure {
                client_addr: peer.to_string(),
                reason: format!("{reason} (timebox_audit)"),
                target: AUDIT_DATABASE.into(),
                user: params.user.clone(),
            });
            if let Err(e) = state.audit.submit(vec![event]) {
                state.proxy.metrics.audit_failures_total.inc();
                tracing::error!(error = %e, "cannot record an authentication failure in the audit log");
            }
            return Err(error);
        }
        Err(AuthError::ClientLeft | AuthError::Io(_)) => {
            // No proof was evaluated.
            reservation.release();
            return Ok(None);
        }
    };
    let Some(entry) = entry else {
        // A proof cannot match without a verifier; unreachable, but fail closed.
        return Err(PgError::invalid_audit_token(&params.user));
    };
    reservation.release();
    may_read_the_trail(&principal(&entry))?;
    let Some(local) = state.audit.db_path() else {
        return Err(PgError::object_not_in_prerequisite_state(
            "timebox_audit needs a file-backed store (this instance keeps its audit log in memory)",
        ));
    };
    let db = AuditDb {
        local: local.to_owned(),
        fleet: state.fleet_mirror.as_ref().map(|mirror| {
            // A round now, so the auditor's first queries see the fleet as fresh as it can be.
            mirror.nudge();
            FleetDb {
                mirror: mirror.path().to_owned(),
                instance: mirror.own().to_owned(),
            }
        }),
    };
    auth::send_sasl_final(client, &server_final)
        .await
        .map_err(|_| PgError::protocol_violation("client left"))?;
    Ok(Some(Auditor { db, store_token_id }))
}

/// A logged-in auditor: the audit databases to serve, and the id of the store token it logged in
/// with (`None` for a config token, which changes only with a restart).
struct Auditor {
    db: AuditDb,
    store_token_id: Option<String>,
}

/// The live store token named `user`; a failing store fails closed.
async fn live_store_token(
    state: &AppState,
    user: &str,
) -> Result<Option<crate::grants::admin_tokens::StoredAdminToken>, PgError> {
    state.admin_tokens.live_named(user).await.map_err(|e| {
        tracing::error!(error = %e, "grant store unavailable during timebox_audit authentication");
        PgError::system_error("timebox cannot check logins right now (store unavailable)")
    })
}

/// Before each query of a session that logged in with a store token: the token must still be the
/// live one of its name (a revoke or expiry ends the session at its next query).
async fn still_admitted(state: &AppState, user: &str, token_id: Option<&str>) -> Result<(), PgError> {
    let Some(id) = token_id else {
        return Ok(());
    };
    match live_store_token(state, user).await? {
        Some(live) if live.record.id == id => Ok(()),
        _ => Err(PgError::invalid_authorization_specification(format!(
            "timebox_audit: admin token \"{user}\" was revoked or has expired; this session ends"
        ))),
    }
}

/// The `[[admin.tokens]]` entry an auditor logs in as: the one named `user`. (The admin API finds
/// its principal by the presented token's hash, [`crate::admin::auth::authenticate`]; SCRAM never
/// shows the token to the server, so here the name picks the entry and the SCRAM proof, checked
/// in constant time against its verifier, is the token check.)
fn token_entry<'a>(tokens: &'a [AdminToken], user: &str) -> Option<&'a AdminToken> {
    tokens.iter().find(|t| t.name == user)
}

/// The admin API's principal for a token entry, so that roles are decided by the same code.
fn principal(entry: &AdminToken) -> Principal {
    Principal {
        name: entry.name.clone(),
        roles: entry.roles.clone(),
    }
}

/// Roles that may read the trail here. Pure: the admin API's [`Principal::has_any`].
const TRAIL_ROLES: &[crate::config::PrincipalRole] = &[AUDITOR, ADMIN];

/// `Ok` for a principal with one of [`TRAIL_ROLES`]; otherwise 42501 naming what it has.
fn may_read_the_trail(principal: &Principal) -> Result<(), PgError> {
    if principal.has_any(TRAIL_ROLES) {
        return Ok(());
    }
    Err(PgError::insufficient_privilege(format!(
        "timebox_audit requires the {} role; {} has {}",
        crate::admin::auth::role_names(TRAIL_ROLES, " or "),
        principal.name,
        crate::admin::auth::role_names(&principal.roles, ", ")
    )))
}

/// Serves the queries of a logged-in auditor.
async fn run(
    state: &Arc<AppState>,
    client: &mut ClientStream,
    params: &ClientParams,
    auditor: &Auditor,
) -> Result<(), PgError> {
    let db = &auditor.db;
    let mut out = BytesMut::new();
    let session_id = format!("a_{:016x}", rand::random::<u64>());
    greet(client, params).await?;
    tracing::info!(user = %params.user, "auditor connected to timebox_audit");

    let mut statement_id = 0u64;
    let mut skipping_until_sync = false;
    loop {
        let Ok(tag) = client.read_u8().await else {
            return Ok(());
        };
        let len = client
            .read_i32()
            .await
            .map_err(|_| PgError::protocol_violation("client left"))?;
        if !(4..=MAX_QUERY as i32).contains(&len) {
            return Err(PgError::protocol_violation("invalid message length"));
        }
        let mut body = vec![0u8; len as usize - 4];
        client
            .read_exact(&mut body)
            .await
            .map_err(|_| PgError::protocol_violation("client left"))?;
        out.clear();
        match tag {
            b'X' => return Ok(()),
            b'Q' => {
                still_admitted(state, &params.user, auditor.store_token_id.as_deref()).await?;
                let sql = String::from_utf8_lossy(body.strip_suffix(&[0]).unwrap_or(&body)).into_owned();
                statement_id += 1;
                let query = Query {
                    session_id: &session_id,
                    statement_id,
                    sql,
                };
                if simple_query(state, client, params, db, query, &mut out)
                    .await
                    .is_break()
                {
                    return Ok(());
                }
                messages::ready(&mut out).map_err(|e| e.to_pg_error())?;
            }
            b'S' => {
                skipping_until_sync = false;
                messages::ready(&mut out).map_err(|e| e.to_pg_error())?;
            }
            b'P' | b'B' | b'E' | b'D' | b'C' | b'H' => {
                if !skipping_until_sync {
                    QueryError::ExtendedProtocol.to_pg_error().encode(&mut out);
                    skipping_until_sync = true;
                }
            }
            other => {
                return Err(PgError::protocol_violation(format!(
                    "invalid frontend message type {:?}",
                    other as char
                )))
            }
        }
        if !out.is_empty() {
            // A client that stops reading cannot keep this connection (and its slot) forever.
            match tokio::time::timeout(CLIENT_WRITE_TIMEOUT, client.write_all(&out)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Ok(()),
                Err(_) => {
                    tracing::info!(user = %params.user, "auditor stopped reading; closing");
                    return Ok(());
                }
            }
        }
    }
}

/// Tells a logged-in auditor's client it is in: AuthenticationOk, the parameters drivers expect,
/// BackendKeyData and ReadyForQuery.
async fn greet(client: &mut ClientStream, params: &ClientParams) -> Result<(), PgError> {
    let mut out = BytesMut::new();
    let parameters = [
        ("server_version", "15.0 (timebox audit)"),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
        ("TimeZone", "UTC"),
        (
            "application_name",
            params.application_name.as_deref().unwrap_or(""),
        ),
    ];
    let pid = rand::random::<i32>() & 0x7fff_ffff;
    messages::greeting(&mut out, &parameters, pid, rand::random()).map_err(|e| e.to_pg_error())?;
    client
        .write_all(&out)
        .await
        .map_err(|_| PgError::protocol_violation("client left"))
}

/// One auditor query as its audit record names it.
struct Query<'a> {
    session_id: &'a str,
    statement_id: u64,
    sql: String,
}

/// Audits one simple query, then runs it (rows go straight to the client) or refuses it, putting
/// any error for the client in `out`. Refused with an error when its record cannot be written.
/// `Break` when the client left.
async fn simple_query(
    state: &Arc<AppState>,
    client: &mut ClientStream,
    params: &ClientParams,
    db: &AuditDb,
    query: Query<'_>,
    out: &mut BytesMut,
) -> ControlFlow<()> {
    let decision = check_query(&query.sql);
    let event = AuditEvent::Statement(audit_event::Statement {
        class: "read".into(),
        decision: if decision.is_ok() {
            audit_event::Decision::Allow
        } else {
            audit_event::Decision::Deny
        },
        grant_id: String::new(),
        params: None,
        reason: decision.as_ref().err().cloned(),
        relations: Vec::new(),
        session_id: query.session_id.to_owned(),
        sql: query.sql.clone(),
        sql_bytes: None,
        sql_sha256: None,
        sql_truncated: false,
        statement_id: query.statement_id,
        target: AUDIT_DATABASE.into(),
        user: params.user.clone(),
    });
    if let Err(e) = state.audit.record(vec![event]).await {
        tracing::error!(error = %e, "cannot audit an auditor query");
        QueryError::AuditUnavailable.to_pg_error().encode(out);
        return ControlFlow::Continue(());
    }
    if let Err(reason) = decision {
        QueryError::Refused(reason).to_pg_error().encode(out);
        return ControlFlow::Continue(());
    }
    // The slot moves into the SQLite thread: it frees up when that ends.
    let slot = state.proxy.audit_queries.clone().try_acquire_owned();
    let result = match slot {
        Err(_) => Err(QueryError::Busy {
            limit: QUERIES_AT_ONCE,
        }),
        Ok(slot) => engine::execute(db, query.sql, Limits::default(), slot, client).await,
    };
    match result {
        Ok(()) => {}
        Err(QueryError::ClientLeft) => return ControlFlow::Break(()),
        Err(e) => {
            tracing::info!(user = %params.user, error = %e, "auditor query stopped");
            e.to_pg_error().encode(out);
        }
    }
    ControlFlow::Continue(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, roles: &[crate::config::PrincipalRole]) -> AdminToken {
        AdminToken {
            name: name.into(),
            sha256: [0; 32],
            scram: None,
            roles: roles.to_vec(),
        }
    }

    #[test]
    fn auditors_and_admins_read_the_trail_by_the_admin_apis_role_check() {
        use crate::admin::auth::{APPROVER, REQUESTER};
        let tokens = [
            entry("audrey", &[AUDITOR]),
            entry("ops", &[ADMIN]),
            entry("ann", &[APPROVER, REQUESTER]),
        ];
        let check = |user: &str| may_read_the_trail(&principal(token_entry(&tokens, user).unwrap()));
        assert!(check("audrey").is_ok());
        assert!(check("ops").is_ok());
        let refused = check("ann").unwrap_err();
        assert_eq!(refused.code, "42501");
        assert_eq!(
            refused.message,
            "timebox_audit requires the auditor or admin role; ann has approver, requester"
        );
        assert!(token_entry(&tokens, "nobody").is_none());
        assert!(token_entry(&tokens, "Audrey").is_none(), "names match exactly");
    }

    #[test]
    fn only_selects_over_the_audit_views_pass() {
        assert!(
            check_query("SELECT * FROM statements WHERE decision = 'deny' AND \"user\" = 'alice'").is_ok()
        );
        assert!(check_query("SELECT count(*) FROM events").is_ok());
        assert!(check_query(
            "SELECT s.sql, o.sqlstate FROM statements s JOIN outcomes o USING (session_id, statement_id)"
        )
        .is_ok());
        assert!(check_query("").is_ok());
        assert!(check_query(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT i FROM n"
        )
        .is_ok());
        assert!(check_query(
            "SELECT json_extract(payload, '$.sql') FROM events WHERE ts > datetime('now', '-7 days')"
        )
        .is_ok());
        for bad in [
            "DELETE FROM events",
            "UPDATE events SET payload = ''",
            "INSERT INTO events VALUES (1)",
            "DROP VIEW statements",
            "SELECT * FROM audit_events",
            "SELECT * FROM main.audit_events",
            "SELECT * FROM sqlite_master",
            "ATTACH DATABASE '/etc/passwd' AS x",
            "PRAGMA writable_schema = ON",
            "SELECT 1; DELETE FROM events",
            "WITH d AS (DELETE FROM events RETURNING *) SELECT * FROM d",
        ] {
            assert!(check_query(bad).is_err(), "{bad} must be refused");
        }
    }
}
