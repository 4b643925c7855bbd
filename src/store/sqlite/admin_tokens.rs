//! The SQLite store's admin tokens (see [`crate::grants::admin_tokens`]): one row per token with
//! its SHA-256 (hex) and SCRAM verifier (PostgreSQL's text form), never the token. A name is taken
//! by at most one live token: the check and the insert share one `BEGIN IMMEDIATE` transaction.

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension, Row};

use super::{from_micros, micros, write_transaction};
use crate::grants::admin_tokens::{
    parse_roles, roles_text, stored_from_parts, AdminTokenRecord, StoredAdminToken,
};
use crate::store::{StoreError, MAX_ADMIN_TOKENS_LISTED};

const COLUMNS: &str =
    "id, name, roles, created_at, created_by, expires_at, revoked_at, revoked_by, last_used_at";

/// "Live at ?N": not revoked, not expired.
fn live(now_param: &str) -> String {
    format!("revoked_at IS NULL AND (expires_at IS NULL OR expires_at > {now_param})")
}

fn record_from_row(r: &Row<'_>) -> Result<AdminTokenRecord, rusqlite::Error> {
    let opt_time = |i: usize| -> Result<Option<DateTime<Utc>>, rusqlite::Error> {
        r.get::<_, Option<i64>>(i)?.map(from_micros).transpose()
    };
    let roles: String = r.get(2)?;
    Ok(AdminTokenRecord {
        id: r.get(0)?,
        name: r.get(1)?,
        roles: parse_roles(&roles).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                2,
                rusqlite::types::Type::Text,
                format!("unknown admin token roles {roles:?}").into(),
            )
        })?,
        created_at: from_micros(r.get(3)?)?,
        created_by: r.get(4)?,
        expires_at: opt_time(5)?,
        revoked_at: opt_time(6)?,
        revoked_by: r.get(7)?,
        last_used_at: opt_time(8)?,
    })
}

pub(super) fn insert(
    conn: &mut Connection,
    t: &StoredAdminToken,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let tx = write_transaction(conn)?;
    let taken: Option<String> = tx
        .query_row(
            &format!(
                "SELECT id FROM admin_tokens WHERE name = ?1 AND {} LIMIT 1",
                live("?2")
            ),
            params![t.record.name, micros(now)],
            |r| r.get(0),
        )
        .optional()?;
    if taken.is_some() {
        return Ok(false);
    }
    let r = &t.record;
    tx.execute(
        &format!(
            "INSERT INTO admin_tokens ({COLUMNS}, sha256, scram) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
        ),
        params![
            r.id,
            r.name,
            roles_text(&r.roles),
            micros(r.created_at),
            r.created_by,
            r.expires_at.map(micros),
            r.revoked_at.map(micros),
            r.revoked_by,
            r.last_used_at.map(micros),
            hex::encode(t.sha256),
            t.scram.to_text(),
        ],
    )?;
    tx.commit()?;
    Ok(true)
}

pub(super) fn get(conn: &Connection, id: &str) -> Result<Option<StoredAdminToken>, StoreError> {
    stored(conn, "id = ?1", params![id])
}

pub(super) fn live_named(
    conn: &Connection,
    name: &str,
    now: DateTime<Utc>,
) -> Result<Option<StoredAdminToken>, StoreError> {
    stored(
        conn,
        &format!("name = ?1 AND {}", live("?2")),
        params![name, micros(now)],
    )
}

/// The one token (with hash and verifier) `condition` finds.
fn stored(
    conn: &Connection,
    condition: &str,
    params: &[&dyn rusqlite::ToSql],
) -> Result<Option<StoredAdminToken>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS}, sha256, scram FROM admin_tokens WHERE {condition}"
    ))?;
    let row = stmt
        .query_row(params, |r| {
            Ok((
                record_from_row(r)?,
                r.get::<_, String>(9)?,
                r.get::<_, String>(10)?,
            ))
        })
        .optional()?;
    let Some((record, sha256, scram)) = row else {
        return Ok(None);
    };
    let name = record.name.clone();
    stored_from_parts(record, &sha256, &scram)
        .map(Some)
        .ok_or_else(|| StoreError::Corrupt(format!("admin token {name:?} has an unreadable hash")))
}

pub(super) fn list(conn: &Connection) -> Result<Vec<AdminTokenRecord>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM admin_tokens ORDER BY created_at DESC, id LIMIT ?1"
    ))?;
    let rows = stmt.query_map([MAX_ADMIN_TOKENS_LISTED as i64], record_from_row)?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

pub(super) fn revoke(
    conn: &mut Connection,
    name: &str,
    by: &str,
    at: DateTime<Utc>,
) -> Result<Option<AdminTokenRecord>, StoreError> {
    let tx = write_transaction(conn)?;
    let id: Option<String> = tx
        .query_row(
            &format!(
                "SELECT id FROM admin_tokens WHERE name = ?1 AND {} LIMIT 1",
                live("?2")
            ),
            params![name, micros(at)],
            |r| r.get(0),
        )
        .optional()?;
    let Some(id) = id else {
        return Ok(None);
    };
    tx.execute(
        "UPDATE admin_tokens SET revoked_at = ?2, revoked_by = ?3 WHERE id = ?1",
        params![id, micros(at), by],
    )?;
    let record = tx.query_row(
        &format!("SELECT {COLUMNS} FROM admin_tokens WHERE id = ?1"),
        [&id],
        record_from_row,
    )?;
    tx.commit()?;
    Ok(Some(record))
}

pub(super) fn touch(conn: &Connection, id: &str, at: DateTime<Utc>) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE admin_tokens SET last_used_at = ?2 WHERE id = ?1",
        params![id, micros(at)],
    )?;
    Ok(())
}
