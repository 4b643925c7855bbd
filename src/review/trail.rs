//! Reads statement records out of the audit database for [`super::replay`] and
//! [`super::roles`]: one read-only SQLite connection, records streamed in `seq` order (never the
//! whole window in memory), each session's role looked up once from its `session_start` record.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::Path;

use rusqlite::{Connection, OpenFlags, OptionalExtension};

use super::{RecordedStatement, ReviewError, Window};
use crate::audit::event::Statement;

/// The auditors' own queries are recorded as statements on this target; they are not engineers'
/// use of a role.
const AUDIT_TARGET: &str = crate::auditsql::AUDIT_DATABASE;

/// Calls `each` for every engineer statement of `window`, in `seq` order, until it answers
/// `Break` (a deadline or a cancelled request); returns how many it was given.
pub fn for_each_statement(
    db: &Path,
    window: &Window,
    mut each: impl FnMut(RecordedStatement) -> ControlFlow<()>,
) -> Result<u64, ReviewError> {
    let fail = |source| ReviewError::Trail {
        path: db.to_path_buf(),
        source,
    };
    let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(fail)?;
    let since = window
        .since
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        .unwrap_or_default();
    let mut roles: HashMap<String, Option<String>> = HashMap::new();
    let mut role_of = conn
        .prepare(
            "SELECT json_extract(payload, '$.role') FROM audit_events \
             WHERE session_id = ?1 AND kind = 'session_start' LIMIT 1",
        )
        .map_err(fail)?;
    let mut rows = conn
        .prepare(
            "SELECT seq, ts, payload FROM audit_events WHERE kind = 'statement' AND ts >= ?1 \
             AND (?2 IS NULL OR target = ?2) ORDER BY seq",
        )
        .map_err(fail)?;
    let mut cursor = rows
        .query(rusqlite::params![since, window.target])
        .map_err(fail)?;
    let mut count = 0;
    while let Some(row) = cursor.next().map_err(fail)? {
        let seq: i64 = row.get(0).map_err(fail)?;
        let ts: String = row.get(1).map_err(fail)?;
        let payload: String = row.get(2).map_err(fail)?;
        let seq = seq as u64;
        let stmt: Statement =
            serde_json::from_str(&payload).map_err(|source| ReviewError::Record { seq, source })?;
        if stmt.target == AUDIT_TARGET {
            continue;
        }
        let role = match roles.get(&stmt.session_id) {
            Some(role) => role.clone(),
            None => {
                let role: Option<String> = role_of
                    .query_row([&stmt.session_id], |r| r.get(0))
                    .optional()
                    .map_err(fail)?
                    .flatten();
                roles.insert(stmt.session_id.clone(), role.clone());
                role
            }
        };
        if window
            .role
            .as_ref()
            .is_some_and(|wanted| role.as_ref() != Some(wanted))
        {
            continue;
        }
        let ts = chrono::DateTime::parse_from_rfc3339(&ts)
            .map(|t| t.with_timezone(&chrono::Utc))
            .unwrap_or_default();
        count += 1;
        if each(recorded(seq, ts, role, stmt)).is_break() {
            break;
        }
    }
    Ok(count)
}

fn recorded(
    seq: u64,
    ts: chrono::DateTime<chrono::Utc>,
    role: Option<String>,
    s: Statement,
) -> RecordedStatement {
    RecordedStatement {
        seq,
        ts,
        session_id: s.session_id,
        grant_id: s.grant_id,
        user: s.user,
        target: s.target,
        role,
        sql: s.sql,
        truncated: s.sql_truncated,
        class: s.class,
        decision: s.decision,
        reason: s.reason,
        relations: s.relations,
    }
}
