//! The auditors' SQL endpoint: `psql "dbname=timebox_audit user=<token name>"` with the auditor's
//! admin-API token as password, to timebox's own proxy port.
//!
//! Data flow: the proxy's startup phase (TLS, startup packet) hands connections for the reserved
//! database `timebox_audit` here instead of to a grant. Authentication is a cleartext password
//! exchange (TLS is required unless the proxy runs without TLS), checked against the SHA-256 of the
//! `[[admin.tokens]]` whose name is the user and which carries the `auditor` or `admin` role.
//! Queries use the simple protocol. Each must parse (PostgreSQL's parser, cross-checked) as plain
//! SELECTs over the audit views below, and then runs on a *read-only* SQLite connection to the
//! audit database with a time limit and a row cap. Everything else is refused. The auditors'
//! own queries are audited too.
//!
//! The proxy's own wire code serves this instead of pgwire's socket handler because timebox has
//! already done TLS and startup by the time it knows the database name.
//!
//! The SQL is SQLite's (JSON: `json_extract(payload, '$.field')`; time: `datetime('now', '-7 days')`).
//! Views: `events` (every record), `statements`, `outcomes`, `sessions`, `auth_failures`,
//! `grant_events`.

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::app::AppState;
use crate::audit::event::{self as audit_event, AuditEvent};
use crate::proxy::startup::{ClientParams, ClientTlsInfo};
use crate::proxy::stream::ClientStream;
use crate::proxy::wire::{self, PgError, Severity};

/// The reserved database name.
pub const AUDIT_DATABASE: &str = "timebox_audit";
/// Rows one query may return.
const MAX_ROWS: usize = 100_000;
/// How long one query may run.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest query text accepted.
const MAX_QUERY: usize = 64 * 1024;

/// The views auditors query (created per connection in SQLite's temp schema).
const VIEWS: &str = r#"
CREATE TEMP VIEW events AS
  SELECT seq, ts, kind, user_name AS "user", target, grant_id, session_id, payload, prev_hash, hash
  FROM main.audit_events;
CREATE TEMP VIEW statements AS
  SELECT seq, ts, user_name AS "user", target, grant_id, session_id,
         json_extract(payload, '$.statement_id') AS statement_id,
         json_extract(payload, '$.sql') AS sql,
         json_extract(payload, '$.class') AS class,
         json_extract(payload, '$.decision') AS decision,
         json_extract(payload, '$.reason') AS reason,
         json_extract(payload, '$.relations') AS relations,
         json_extract(payload, '$.params') AS params
  FROM main.audit_events WHERE kind = 'statement';
CREATE TEMP VIEW outcomes AS
  SELECT seq, ts, session_id,
         json_extract(payload, '$.statement_id') AS statement_id,
         json_extract(payload, '$.command_tag') AS command_tag,
         json_extract(payload, '$.rows') AS rows,
         json_extract(payload, '$.sqlstate') AS sqlstate,
         json_extract(payload, '$.duration_us') AS duration_us
  FROM main.audit_events WHERE kind = 'statement_outcome';
CREATE TEMP VIEW sessions AS
  SELECT seq, ts, kind, user_name AS "user", target, grant_id, session_id, payload
  FROM main.audit_events WHERE kind IN ('session_start', 'session_end');
CREATE TEMP VIEW auth_failures AS
  SELECT seq, ts, user_name AS "user", target,
         json_extract(payload, '$.client_addr') AS client_addr,
         json_extract(payload, '$.reason') AS reason
  FROM main.audit_events WHERE kind = 'auth_failure';
CREATE TEMP VIEW grant_events AS
  SELECT seq, ts, kind, user_name AS "user", target, grant_id, payload
  FROM main.audit_events WHERE kind LIKE 'grant_%';
"#;

const VIEW_NAMES: &[&str] = &[
    "events",
    "statements",
    "outcomes",
    "sessions",
    "auth_failures",
    "grant_events",
];

/// SQLite functions auditors use that PostgreSQL's function list does not know as reads.
const SQLITE_READ_FUNCTIONS: &[&str] = &[
    "json_extract",
    "json_array_length",
    "json_type",
    "json_valid",
    "json_each",
    "json_tree",
    "json",
    "datetime",
    "date",
    "time",
    "strftime",
    "julianday",
    "unixepoch",
    "substr",
    "instr",
    "ifnull",
    "printf",
    "group_concat",
    "total",
    "hex",
    "typeof",
];

/// What auditors may run: reads only (plus SQLite's JSON and date functions).
fn auditor_policy() -> crate::policy::RolePolicy {
    let mut p = crate::policy::RolePolicy::with_classes("auditor", &[crate::policy::StatementClass::Read]);
    p.allow_functions = SQLITE_READ_FUNCTIONS.iter().map(|f| f.to_string()).collect();
    p
}

/// The decision on one auditor query. Pure.
pub fn check_query(sql: &str) -> Result<(), String> {
    let classification = crate::policy::classify(sql);
    if classification.statements.is_empty() {
        return Ok(());
    }
    for stmt in &classification.statements {
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
            if !schema_ok || !VIEW_NAMES.contains(&name.as_str()) {
                return Err(format!(
                    "timebox_audit: relation {r} is not available; query the views {}",
                    VIEW_NAMES.join(", ")
                ));
            }
        }
    }
    Ok(())
}

/// Serves one auditor connection (after its startup packet). Never returns an error: problems are
/// told to the client and the connection closes.
pub async fn serve(
    state: Arc<AppState>,
    mut client: ClientStream,
    params: ClientParams,
    tls: Option<ClientTlsInfo>,
    peer: std::net::SocketAddr,
) {
    if let Err(e) = run(&state, &mut client, &params, tls.as_ref(), peer).await {
        let mut out = BytesMut::new();
        e.encode(&mut out);
        let _ = client.write_all(&out).await;
        let _ = client.shutdown().await;
    }
}

async fn run(
    state: &Arc<AppState>,
    client: &mut ClientStream,
    params: &ClientParams,
    tls: Option<&ClientTlsInfo>,
    peer: std::net::SocketAddr,
) -> Result<(), PgError> {
    if tls.is_none() && state.config.proxy.tls != crate::config::ClientTls::Disabled {
        return Err(PgError::tls_required());
    }
    let throttle = &state.proxy.auth_throttle;
    if throttle.is_blocked(peer.ip(), std::time::Instant::now()) {
        return Err(PgError::too_many_auth_failures());
    }
    // AuthenticationCleartextPassword: the token is compared by its SHA-256, like the admin API.
    let mut out = BytesMut::new();
    wire::frame(&mut out, b'R', |b| b.put_i32(3));
    client
        .write_all(&out)
        .await
        .map_err(|_| PgError::protocol_violation("client left"))?;
    let password = read_password(client).await?;
    let digest: [u8; 32] = Sha256::digest(password.as_bytes()).into();
    let principal = state
        .config
        .admin
        .tokens
        .iter()
        .find(|t| bool::from(t.sha256.ct_eq(&digest)) && t.name == params.user);
    let Some(principal) = principal else {
        throttle.record_failure(peer.ip(), std::time::Instant::now());
        let _ = state
            .audit
            .submit(vec![AuditEvent::AuthFailure(audit_event::AuthFailure {
                client_addr: peer.to_string(),
                reason: "wrong token for timebox_audit".into(),
                target: AUDIT_DATABASE.into(),
                user: params.user.clone(),
            })]);
        return Err(PgError::invalid_password(&params.user));
    };
    if !principal.roles.iter().any(|r| r == "auditor" || r == "admin") {
        return Err(PgError::insufficient_privilege(format!(
            "timebox_audit requires the auditor or admin role; {} has {}",
            principal.name,
            principal.roles.join(", ")
        )));
    }
    let Some(db) = state.audit.db_path().map(|p| p.to_owned()) else {
        return Err(PgError::fatal(
            "55000",
            "timebox_audit needs a file-backed store (this instance keeps its audit log in memory)",
        ));
    };
    let session_id = format!("a_{:016x}", rand::random::<u64>());

    out.clear();
    wire::authentication_ok(&mut out);
    for (k, v) in [
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
    ] {
        wire::parameter_status(&mut out, k, v);
    }
    wire::backend_key_data(&mut out, rand::random::<i32>() & 0x7fff_ffff, rand::random());
    ready(&mut out);
    client
        .write_all(&out)
        .await
        .map_err(|_| PgError::protocol_violation("client left"))?;
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
                let sql = String::from_utf8_lossy(body.strip_suffix(&[0]).unwrap_or(&body)).into_owned();
                statement_id += 1;
                let decision = check_query(&sql);
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
                    session_id: session_id.clone(),
                    sql: sql.clone(),
                    sql_bytes: None,
                    sql_sha256: None,
                    sql_truncated: false,
                    statement_id,
                    target: AUDIT_DATABASE.into(),
                    user: params.user.clone(),
                });
                if let Err(e) = state.audit.record(vec![event]).await {
                    tracing::error!(error = %e, "cannot audit an auditor query");
                    error(
                        &mut out,
                        "58030",
                        "timebox cannot record this query in the audit log, so it was not run",
                    );
                } else {
                    match decision {
                        Err(reason) => error(&mut out, "42501", &reason),
                        Ok(()) => execute(&db, sql, &mut out).await,
                    }
                }
                ready(&mut out);
            }
            b'S' => {
                skipping_until_sync = false;
                ready(&mut out);
            }
            b'P' | b'B' | b'E' | b'D' | b'C' | b'H' => {
                if !skipping_until_sync {
                    error(
                        &mut out,
                        "0A000",
                        "timebox_audit supports the simple query protocol only (psql does)",
                    );
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
            client
                .write_all(&out)
                .await
                .map_err(|_| PgError::protocol_violation("client left"))?;
        }
    }
}

async fn read_password(client: &mut ClientStream) -> Result<String, PgError> {
    let tag = client
        .read_u8()
        .await
        .map_err(|_| PgError::protocol_violation("client left"))?;
    if tag != b'p' {
        return Err(PgError::protocol_violation("expected a password message"));
    }
    let len = client
        .read_i32()
        .await
        .map_err(|_| PgError::protocol_violation("client left"))?;
    if !(5..=1024).contains(&len) {
        return Err(PgError::protocol_violation("invalid password message length"));
    }
    let mut body = vec![0u8; len as usize - 4];
    client
        .read_exact(&mut body)
        .await
        .map_err(|_| PgError::protocol_violation("client left"))?;
    Ok(String::from_utf8_lossy(body.strip_suffix(&[0]).unwrap_or(&body)).into_owned())
}

fn ready(out: &mut BytesMut) {
    wire::frame(out, b'Z', |b| b.put_u8(b'I'));
}

fn error(out: &mut BytesMut, code: &'static str, message: &str) {
    PgError {
        severity: Severity::Error,
        code,
        message: message.to_owned(),
        detail: None,
        hint: None,
    }
    .encode(out);
}

/// Runs an already-checked query on a read-only connection and encodes its result (all columns
/// as text) or its error.
async fn execute(db: &std::path::Path, sql: String, out: &mut BytesMut) {
    let db = db.to_owned();
    let result = tokio::task::spawn_blocking(move || run_sqlite(&db, &sql)).await;
    match result {
        Ok(Ok(encoded)) => out.extend_from_slice(&encoded),
        Ok(Err(message)) => error(out, "42000", &message),
        Err(e) => error(out, "XX000", &format!("query task failed: {e}")),
    }
}

fn run_sqlite(db: &std::path::Path, sql: &str) -> Result<BytesMut, String> {
    use rusqlite::{types::ValueRef, Connection, OpenFlags};
    let conn = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI,
    )
    .map_err(|e| format!("cannot open the audit database: {e}"))?;
    conn.execute_batch(VIEWS)
        .map_err(|e| format!("cannot prepare the audit views: {e}"))?;
    conn.pragma_update(None, "query_only", "ON")
        .map_err(|e| format!("cannot make the connection read-only: {e}"))?;
    let interrupt = conn.get_interrupt_handle();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        if done_rx.recv_timeout(QUERY_TIMEOUT).is_err() {
            interrupt.interrupt();
        }
    });
    let mut out = BytesMut::new();
    let trimmed = sql.trim().trim_end_matches(';').trim();
    if trimmed.is_empty() {
        wire::frame(&mut out, b'I', |_| {});
        let _ = done_tx.send(());
        return Ok(out);
    }
    let mut stmt = conn.prepare(trimmed).map_err(|e| e.to_string())?;
    let columns: Vec<String> = stmt.column_names().into_iter().map(str::to_owned).collect();
    wire::frame(&mut out, b'T', |b| {
        b.put_i16(columns.len() as i16);
        for name in &columns {
            b.extend_from_slice(name.as_bytes());
            b.put_u8(0);
            b.put_i32(0); // table oid
            b.put_i16(0); // column number
            b.put_i32(25); // text
            b.put_i16(-1);
            b.put_i32(-1);
            b.put_i16(0); // text format
        }
    });
    let mut rows = stmt.query([]).map_err(|e| e.to_string())?;
    let mut count = 0usize;
    while let Some(row) = rows.next().map_err(|e| e.to_string())? {
        count += 1;
        if count > MAX_ROWS {
            let _ = done_tx.send(());
            return Err(format!(
                "the result has more than {MAX_ROWS} rows; add a LIMIT or a narrower WHERE"
            ));
        }
        let mut values: Vec<Option<String>> = Vec::with_capacity(columns.len());
        for i in 0..columns.len() {
            values.push(match row.get_ref(i).map_err(|e| e.to_string())? {
                ValueRef::Null => None,
                ValueRef::Integer(v) => Some(v.to_string()),
                ValueRef::Real(v) => Some(v.to_string()),
                ValueRef::Text(t) => Some(String::from_utf8_lossy(t).into_owned()),
                ValueRef::Blob(b) => Some(format!("\\x{}", hex::encode(b))),
            });
        }
        wire::frame(&mut out, b'D', |b| {
            b.put_i16(values.len() as i16);
            for v in &values {
                match v {
                    None => b.put_i32(-1),
                    Some(s) => {
                        b.put_i32(s.len() as i32);
                        b.extend_from_slice(s.as_bytes());
                    }
                }
            }
        });
    }
    let _ = done_tx.send(());
    wire::frame(&mut out, b'C', |b| {
        b.extend_from_slice(format!("SELECT {count}").as_bytes());
        b.put_u8(0);
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

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
