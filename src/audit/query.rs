//! Searching the audit log: a filter → one page of records, newest first by default, with a cursor
//! (a seq) to continue from. Used by the admin API (`GET /v1/audit`) and so by `timebox audit
//! search|tail`. Read-only; it must never write.
//!
//! `user`, `grant`, `target` and `session` use indexed columns; `class`, `decision` and `contains`
//! (case-insensitive substring of the statement text) look into the payload. `since ≤ ts < until`.

use chrono::{DateTime, Utc};
use rusqlite::types::Value;
use rusqlite::Connection;
use serde::{Deserialize, Serialize};

use super::chain::format_ts;
use super::event::{AuditRecord, KINDS};
use super::sqlite::{record_from_row, RECORD_COLUMNS};
use super::AuditError;

/// Kinds left out of the `kind` index (almost every record is one): a newest-first scan finds them.
const BULK_KINDS: &[&str] = &["statement", "statement_outcome"];

/// Records per page unless asked otherwise.
pub const DEFAULT_LIMIT: usize = 100;
/// Largest page.
pub const MAX_LIMIT: usize = 1000;

/// Direction of a page (by seq).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    /// Newest first (search).
    #[default]
    Desc,
    /// Oldest first (tail).
    Asc,
}

/// Which records to return. Every set field must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    pub user: Option<String>,
    pub grant: Option<String>,
    pub target: Option<String>,
    pub session: Option<String>,
    pub class: Option<String>,
    /// `allow` or `deny`.
    pub decision: Option<String>,
    pub kind: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// Substring of the statement text, case-insensitive.
    pub contains: Option<String>,
    /// Continue after this seq (exclusive) in `order`.
    pub cursor: Option<u64>,
    /// 1..=[`MAX_LIMIT`]; 0 means [`DEFAULT_LIMIT`].
    pub limit: usize,
    pub order: Order,
}

/// One page of records and where the next one starts (`None` when this is the last).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Page {
    pub events: Vec<AuditRecord>,
    pub next_cursor: Option<u64>,
}

impl AuditFilter {
    /// Checks values that have a fixed set: `kind`, `decision`, `limit`. Names the field at fault.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if let Some(kind) = &self.kind {
            if !KINDS.contains(&kind.as_str()) {
                return Err(("kind", format!("{kind:?} is not one of {}", KINDS.join(" | "))));
            }
        }
        if let Some(d) = &self.decision {
            if d != "allow" && d != "deny" {
                return Err(("decision", format!("{d:?} is not one of allow | deny")));
            }
        }
        if self.limit > MAX_LIMIT {
            return Err((
                "limit",
                format!("{} is out of range (1..={MAX_LIMIT})", self.limit),
            ));
        }
        Ok(())
    }
}

/// Runs a filter against the audit database.
pub fn query(conn: &Connection, f: &AuditFilter) -> Result<Page, AuditError> {
    if let Err((field, message)) = f.validate() {
        return Err(AuditError::InvalidFilter { field, message });
    }
    let mut clauses: Vec<&str> = Vec::new();
    let mut values: Vec<Value> = Vec::new();
    let mut text = |clause: &'static str, v: &Option<String>| {
        if let Some(v) = v {
            clauses.push(clause);
            values.push(Value::Text(v.clone()));
        }
    };
    text("user_name = ?", &f.user);
    text("grant_id = ?", &f.grant);
    text("target = ?", &f.target);
    text("session_id = ?", &f.session);
    // A rare kind repeats the partial index's condition word for word, so SQLite uses that index.
    match f.kind.as_deref() {
        Some(k) if !BULK_KINDS.contains(&k) => text(
            "kind = ? AND kind NOT IN ('statement', 'statement_outcome')",
            &f.kind,
        ),
        _ => text("kind = ?", &f.kind),
    }
    text("json_extract(payload, '$.class') = ?", &f.class);
    text("json_extract(payload, '$.decision') = ?", &f.decision);
    text(
        "instr(lower(json_extract(payload, '$.sql')), lower(?)) > 0",
        &f.contains,
    );
    text("ts >= ?", &f.since.map(format_ts));
    text("ts < ?", &f.until.map(format_ts));
    let (cursor_clause, order) = match f.order {
        Order::Desc => ("seq < ?", "DESC"),
        Order::Asc => ("seq > ?", "ASC"),
    };
    if let Some(c) = f.cursor {
        clauses.push(cursor_clause);
        values.push(Value::Integer(c.min(i64::MAX as u64) as i64));
    }
    let limit = if f.limit == 0 { DEFAULT_LIMIT } else { f.limit };
    let where_clause = if clauses.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", clauses.join(" AND "))
    };
    let sql = format!(
        "SELECT {RECORD_COLUMNS} FROM audit_events {where_clause} ORDER BY seq {order} LIMIT {}",
        limit + 1
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(rusqlite::params_from_iter(values), record_from_row)?;
    let mut events = rows.collect::<Result<Vec<_>, _>>()?;
    let next_cursor = if events.len() > limit {
        events.truncate(limit);
        events.last().map(|r| r.seq)
    } else {
        None
    };
    Ok(Page { events, next_cursor })
}
