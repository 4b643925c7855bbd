//! Searching the audit log: a filter → one page of records, newest first by default, with a cursor
//! (a seq) to continue from. [`AuditFilter`] is the one filter type: the admin API (`GET /v1/audit`)
//! reads it from the query string, `timebox audit search|tail` sends it, [`query`] runs it.
//! Read-only; it must never write.
//!
//! `user`, `grant` and `session` use indexes (a statement's user and grant through its session, see
//! [`super::sqlite`]); `target` is a column without an index; `class`, `decision` and `contains`
//! (case-insensitive substring of the statement text) look into the payload. `since ≤ ts < until`.
//! A filter returns exactly the records whose columns match, whichever index finds them.

use chrono::{DateTime, Utc};
use rusqlite::types::Value;
use rusqlite::Connection;
use serde::{Deserialize, Serialize};
use utoipa::IntoParams;

use super::chain::format_ts;
use super::event::{AuditRecord, KINDS};
use super::sqlite::{record_from_row, BULK_KINDS, RECORD_COLUMNS};
use super::AuditError;

/// `user_name = ?` through indexes (issue 13): records of other kinds by the partial user index,
/// statements through their sessions (`audit_sessions`, then the session index); the record's own
/// column is checked too, so the result is exactly `user_name = ?`'s (outcome records, without a
/// user, stay out). The value is bound three times.
const USER_BY_INDEX: &str = "user_name = ? AND seq IN (\
    SELECT seq FROM audit_events WHERE user_name = ? AND kind NOT IN ('statement', 'statement_outcome') \
    UNION ALL SELECT e.seq FROM audit_sessions s JOIN audit_events e ON e.session_id = s.session_id \
    WHERE s.user_name = ?)";
/// `grant_id = ?` through indexes, as [`USER_BY_INDEX`].
const GRANT_BY_INDEX: &str = "grant_id = ? AND seq IN (\
    SELECT seq FROM audit_events WHERE grant_id = ? AND kind NOT IN ('statement', 'statement_outcome') \
    UNION ALL SELECT e.seq FROM audit_sessions s JOIN audit_events e ON e.session_id = s.session_id \
    WHERE s.grant_id = ?)";

/// How the user and grant filters are written (pure): with a session filter, plainly (the session
/// index finds the records); otherwise the user filter (or else the grant filter) through the
/// indexes ([`USER_BY_INDEX`]), the other one plainly.
fn identity_clauses(f: &AuditFilter) -> (&'static str, &'static str) {
    const USER: &str = "user_name = ?";
    const GRANT: &str = "grant_id = ?";
    if f.session.is_some() {
        (USER, GRANT)
    } else if f.user.is_some() {
        (USER_BY_INDEX, GRANT)
    } else {
        (USER, GRANT_BY_INDEX)
    }
}

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
///
/// The one audit filter: the admin API reads it from `GET /v1/audit`'s query string (serde, unknown
/// parameters refused so a typo cannot widen a search, every bad value named), the CLI's
/// `audit search|tail` flags convert into it and send it back as that query string, and [`query`]
/// turns it into SQL.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditFilter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    /// `allow` or `deny`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "wire::decision"
    )]
    pub decision: Option<String>,
    /// One of [`KINDS`].
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "wire::kind"
    )]
    pub kind: Option<String>,
    /// RFC 3339; `since ≤ ts`.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "wire::time")]
    #[param(value_type = Option<String>, format = DateTime)]
    pub since: Option<DateTime<Utc>>,
    /// RFC 3339; `ts < until`.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "wire::time")]
    #[param(value_type = Option<String>, format = DateTime)]
    pub until: Option<DateTime<Utc>>,
    /// Substring of the statement text, case-insensitive (empty: no filter).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "wire::non_empty"
    )]
    pub contains: Option<String>,
    /// Fleet-wide reads (PostgreSQL store) only: records of this instance's chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// Continue after this seq (exclusive) in `order`; in fleet-wide reads, after this record's
    /// `cursor` (its position in the central table).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<u64>,
    /// 1..=[`MAX_LIMIT`]; 0 (or absent) means [`DEFAULT_LIMIT`].
    #[serde(
        default,
        skip_serializing_if = "wire::is_zero",
        deserialize_with = "wire::limit"
    )]
    #[param(value_type = Option<usize>)]
    pub limit: usize,
    /// `desc` (default, newest first) or `asc`.
    #[serde(default, skip_serializing_if = "wire::is_desc")]
    #[param(value_type = Option<String>)]
    pub order: Order,
}

/// One page of records and where the next one starts (`None` when this is the last).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Page {
    pub events: Vec<AuditRecord>,
    pub next_cursor: Option<u64>,
}

impl AuditFilter {
    /// The page size asked for: `limit`, or [`DEFAULT_LIMIT`] when it is 0.
    pub fn page_size(&self) -> usize {
        if self.limit == 0 {
            DEFAULT_LIMIT
        } else {
            self.limit
        }
    }

    /// Checks values that have a fixed set: `kind`, `decision`, `limit`. Names the field at fault.
    /// (A filter read from a query string is already checked; this guards filters built in code.)
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if let Some(kind) = &self.kind {
            check_kind(kind).map_err(|m| ("kind", m))?;
        }
        if let Some(d) = &self.decision {
            check_decision(d).map_err(|m| ("decision", m))?;
        }
        if self.limit > MAX_LIMIT {
            return Err(("limit", limit_out_of_range(self.limit)));
        }
        Ok(())
    }
}

fn check_kind(kind: &str) -> Result<(), String> {
    if KINDS.contains(&kind) {
        Ok(())
    } else {
        Err(format!("{kind:?} is not one of {}", KINDS.join(" | ")))
    }
}

fn check_decision(d: &str) -> Result<(), String> {
    if d == "allow" || d == "deny" {
        Ok(())
    } else {
        Err(format!("{d:?} is not one of allow | deny"))
    }
}

fn limit_out_of_range(n: usize) -> String {
    format!("{n} is out of range (1..={MAX_LIMIT})")
}

/// The query-string form of [`AuditFilter`]'s fields that are more than a plain value.
mod wire {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};

    use super::Order;

    fn checked<'de, D: Deserializer<'de>>(
        d: D,
        check: fn(&str) -> Result<(), String>,
    ) -> Result<Option<String>, D::Error> {
        let value = Option::<String>::deserialize(d)?;
        if let Some(v) = &value {
            check(v).map_err(D::Error::custom)?;
        }
        Ok(value)
    }

    pub fn kind<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        checked(d, super::check_kind)
    }

    pub fn decision<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        checked(d, super::check_decision)
    }

    pub fn non_empty<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        Ok(Option::<String>::deserialize(d)?.filter(|s| !s.is_empty()))
    }

    /// Given in a query string, a limit is 1..=MAX_LIMIT (0 is refused, not taken as the default).
    pub fn limit<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
        let n = usize::deserialize(d)?;
        if (1..=super::MAX_LIMIT).contains(&n) {
            Ok(n)
        } else {
            Err(D::Error::custom(super::limit_out_of_range(n)))
        }
    }

    pub fn is_zero(n: &usize) -> bool {
        *n == 0
    }

    pub fn is_desc(o: &Order) -> bool {
        *o == Order::Desc
    }

    /// RFC 3339 times, microseconds, `Z`.
    pub mod time {
        use super::*;

        pub fn serialize<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
            match t {
                Some(t) => s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Micros, true)),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
            let Some(text) = Option::<String>::deserialize(d)? else {
                return Ok(None);
            };
            DateTime::parse_from_rfc3339(&text)
                .map(|t| Some(t.with_timezone(&Utc)))
                .map_err(|e| {
                    D::Error::custom(format!(
                        "{text:?} is not an RFC 3339 time ({e}); write e.g. 2026-01-31T14:00:00Z"
                    ))
                })
        }
    }
}

/// Runs a filter against the audit database.
pub fn query(conn: &Connection, f: &AuditFilter) -> Result<Page, AuditError> {
    if let Err((field, message)) = f.validate() {
        return Err(AuditError::InvalidFilter { field, message });
    }
    if f.instance.is_some() {
        return Err(AuditError::InvalidFilter {
            field: "instance",
            message: "only fleet-wide reads (a PostgreSQL store) know instances; this instance's \
                      trail is all of it"
                .into(),
        });
    }
    let (sql, values) = statement(f);
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(rusqlite::params_from_iter(values), record_from_row)?;
    let events = rows.collect::<Result<Vec<_>, _>>()?;
    Ok(Page::of(events, f.page_size(), |r| Some(r.seq)))
}

/// The SQL of a (valid) filter and its values, in placeholder order (pure).
fn statement(f: &AuditFilter) -> (String, Vec<Value>) {
    let mut clauses: Vec<&str> = Vec::new();
    let mut values: Vec<Value> = Vec::new();
    let mut text = |clause: &'static str, v: &Option<String>| {
        if let Some(v) = v {
            clauses.push(clause);
            for _ in 0..clause.matches('?').count() {
                values.push(Value::Text(v.clone()));
            }
        }
    };
    let (user, grant) = identity_clauses(f);
    text(user, &f.user);
    text(grant, &f.grant);
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
    let limit = f.page_size();
    let where_clause = where_clause(&clauses);
    let sql = format!(
        "SELECT {RECORD_COLUMNS} FROM audit_events {where_clause} ORDER BY seq {order} LIMIT {}",
        limit + 1
    );
    (sql, values)
}

/// `WHERE a AND b …` over `clauses`, or nothing without any (both stores' audit queries).
pub fn where_clause(clauses: &[impl AsRef<str>]) -> String {
    let clauses: Vec<&str> = clauses.iter().map(AsRef::as_ref).collect();
    if clauses.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", clauses.join(" AND "))
    }
}

impl Page {
    /// A page of `limit` records from the `limit + 1` a store fetched to learn whether more follow:
    /// the extra one is dropped and the last kept one's `cursor` is where the next page starts.
    pub fn of(
        mut events: Vec<AuditRecord>,
        limit: usize,
        cursor: impl Fn(&AuditRecord) -> Option<u64>,
    ) -> Page {
        let next_cursor = if events.len() > limit {
            events.truncate(limit);
            events.last().and_then(cursor)
        } else {
            None
        };
        Page { events, next_cursor }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: u64) -> AuditRecord {
        AuditRecord {
            cursor: None,
            instance: None,
            seq,
            ts: String::new(),
            kind: "statement".into(),
            payload: serde_json::Value::Null,
            prev_hash: String::new(),
            hash: String::new(),
        }
    }

    /// The extra row a store fetched is dropped and marks where the next page starts; without it
    /// there is no next page. An absent filter gives no WHERE.
    #[test]
    fn pages_are_cut_at_the_limit_and_where_clauses_joined() {
        let page = Page::of((1..=4).map(record).collect(), 3, |r| Some(r.seq));
        assert_eq!(page.events.len(), 3);
        assert_eq!(page.next_cursor, Some(3));
        let last = Page::of((1..=3).map(record).collect(), 3, |r| Some(r.seq));
        assert_eq!((last.events.len(), last.next_cursor), (3, None));
        assert_eq!(where_clause(&[] as &[&str]), "");
        assert_eq!(where_clause(&["a = ?", "b = ?"]), "WHERE a = ? AND b = ?");
        assert_eq!(where_clause(&["a = $1".to_owned()]), "WHERE a = $1");
        let f = AuditFilter::default();
        assert_eq!(f.page_size(), DEFAULT_LIMIT);
    }

    /// `GET /v1/audit`'s query string as the admin API reads it, or the message of its 400.
    fn read(query: &str) -> Result<AuditFilter, String> {
        let uri: axum::http::Uri = format!("/v1/audit?{query}").parse().unwrap();
        axum::extract::Query::<AuditFilter>::try_from_uri(&uri)
            .map(|q| q.0)
            .map_err(|e| e.body_text())
    }

    #[test]
    fn query_strings_are_read_and_every_bad_value_is_named() {
        let ok =
            read("user=alice&since=2026-01-01T00:00:00%2B01:00&limit=10&order=asc&decision=deny&contains=")
                .unwrap();
        assert_eq!(ok.user.as_deref(), Some("alice"));
        assert_eq!(ok.since.unwrap().to_rfc3339(), "2025-12-31T23:00:00+00:00");
        assert_eq!((ok.limit, ok.order), (10, Order::Asc));
        assert_eq!(ok.decision.as_deref(), Some("deny"));
        assert_eq!(ok.contains, None, "an empty `contains` filters nothing");
        assert_eq!(read("").unwrap(), AuditFilter::default());

        for (query, field) in [
            ("since=yesterday", "since: \"yesterday\" is not an RFC 3339 time"),
            ("until=2026-13-01T00:00:00Z", "until: "),
            ("limit=1001", "limit: 1001 is out of range (1..=1000)"),
            ("limit=0", "limit: 0 is out of range (1..=1000)"),
            ("decision=maybe", "decision: \"maybe\" is not one of allow | deny"),
            ("kind=stmt", "kind: \"stmt\" is not one of"),
            ("order=up", "order: "),
            ("cursor=-1", "cursor: "),
            ("usr=alice", "unknown field `usr`"),
        ] {
            let message = read(query).expect_err(query);
            assert!(message.contains(field), "{query}: {message}");
        }
    }

    #[test]
    fn filters_built_in_code_are_checked_too() {
        let bad = AuditFilter {
            kind: Some("nope".into()),
            ..Default::default()
        };
        assert_eq!(bad.validate().unwrap_err().0, "kind");
        let bad = AuditFilter {
            limit: MAX_LIMIT + 1,
            ..Default::default()
        };
        assert_eq!(bad.validate().unwrap_err().0, "limit");
        assert!(AuditFilter::default().validate().is_ok());
    }
}

#[cfg(test)]
mod equivalence;
