//! The embedded store: one SQLite file in WAL mode, schema versioned with `PRAGMA user_version`.
//!
//! Times are stored as integer microseconds since the Unix epoch (exact comparisons, no text-format
//! pitfalls). Token verifiers are stored in PostgreSQL's `SCRAM-SHA-256$…` text form; tokens never are.

use std::path::Path;
use std::sync::Mutex;

use chrono::{DateTime, TimeZone, Utc};
use rusqlite::{params, Connection, OptionalExtension, Row};

use super::{
    ApprovalStep, ApproveOutcome, GrantCounts, GrantFilter, GrantStore, Migrated, RequestFilter, StoreError,
    MAX_CANDIDATES,
};
use crate::grants::admin_tokens::{AdminTokenRecord, StoredAdminToken};
use crate::grants::requests::{AccessRequest, Approval, RequestStatus};
use crate::grants::token::ScramVerifier;
use crate::grants::{Grant, GrantStatus};

/// Each entry moves the schema from version `index` to `index + 1`.
const MIGRATIONS: &[&str] = &[
    r#"
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value BLOB NOT NULL
    );
    CREATE TABLE grants (
        id            TEXT PRIMARY KEY,
        user_name     TEXT NOT NULL,
        target        TEXT NOT NULL,
        role          TEXT NOT NULL,
        reason        TEXT NOT NULL,
        created_by    TEXT NOT NULL,
        created_at    INTEGER NOT NULL,
        starts_at     INTEGER NOT NULL,
        expires_at    INTEGER NOT NULL,
        revoked_at    INTEGER,
        revoked_by    TEXT,
        revoke_reason TEXT,
        verifier      TEXT NOT NULL
    );
    CREATE INDEX grants_user_target ON grants (user_name, target, created_at DESC);
    CREATE INDEX grants_expires ON grants (expires_at);
"#,
    r#"
    ALTER TABLE grants ADD COLUMN break_glass INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE access_requests (
        id                 TEXT PRIMARY KEY,
        requester          TEXT NOT NULL,
        target             TEXT NOT NULL,
        role               TEXT NOT NULL,
        ttl                TEXT NOT NULL,
        reason             TEXT NOT NULL,
        ticket             TEXT,
        break_glass        INTEGER NOT NULL,
        created_at         INTEGER NOT NULL,
        review_deadline    INTEGER NOT NULL,
        approvals_required INTEGER NOT NULL,
        status             TEXT NOT NULL,
        decided_at         INTEGER,
        denied_by          TEXT,
        deny_reason        TEXT,
        grant_id           TEXT REFERENCES grants (id),
        token_fetched_at   INTEGER
    );
    CREATE INDEX access_requests_status ON access_requests (status, review_deadline);
    CREATE INDEX access_requests_requester ON access_requests (requester, created_at DESC);
    CREATE TABLE request_approvals (
        request_id TEXT NOT NULL REFERENCES access_requests (id),
        approver   TEXT NOT NULL,
        reason     TEXT NOT NULL,
        at         INTEGER NOT NULL,
        PRIMARY KEY (request_id, approver)
    );
"#,
    // Admin-API tokens issued over the API (issue 17): the token's SHA-256 and SCRAM verifier,
    // never the token. `id` is the token's id prefix, so a presented token finds its row directly.
    r#"
    CREATE TABLE admin_tokens (
        id           TEXT PRIMARY KEY,
        name         TEXT NOT NULL,
        roles        TEXT NOT NULL,
        sha256       TEXT NOT NULL,
        scram        TEXT NOT NULL,
        created_at   INTEGER NOT NULL,
        created_by   TEXT NOT NULL,
        expires_at   INTEGER,
        revoked_at   INTEGER,
        revoked_by   TEXT,
        last_used_at INTEGER
    );
    CREATE INDEX admin_tokens_name ON admin_tokens (name, created_at DESC);
"#,
];

#[derive(Debug)]
pub struct SqliteStore {
    conn: Mutex<Connection>,
}

impl SqliteStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Ok(Self::open_migrated(path)?.0)
    }

    /// Opens (creating and migrating) the store file; what the migration did (`timebox store
    /// migrate`).
    pub fn migrate_file(path: &Path) -> Result<Migrated, StoreError> {
        Ok(Self::open_migrated(path)?.1)
    }

    /// The schema version this binary writes and reads.
    pub fn supported_version() -> i64 {
        MIGRATIONS.len() as i64
    }

    fn open_migrated(path: &Path) -> Result<(Self, Migrated), StoreError> {
        // 0600 before SQLite opens it: its -wal and -shm files inherit the database file's mode.
        super::files::prepare_sqlite_file(path).map_err(|(p, source)| {
            if p.as_path() == path {
                StoreError::File { path: p, source }
            } else {
                StoreError::Directory { path: p, source }
            }
        })?;
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        Self::init(conn)
    }

    pub fn open_in_memory() -> Result<Self, StoreError> {
        Ok(Self::init(Connection::open_in_memory()?)?.0)
    }

    fn init(mut conn: Connection) -> Result<(Self, Migrated), StoreError> {
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        let migrated = migrate(&mut conn)?;
        Ok((
            SqliteStore {
                conn: Mutex::new(conn),
            },
            migrated,
        ))
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent (transactions roll back).
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Applies the missing steps in one write transaction that reads the version itself, so two
/// processes opening the same file at once do not both apply step 1.
fn migrate(conn: &mut Connection) -> Result<Migrated, StoreError> {
    let tx = write_transaction(conn)?;
    let version: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let supported = MIGRATIONS.len() as i64;
    if version > supported {
        return Err(StoreError::SchemaTooNew {
            found: version,
            supported,
        });
    }
    for sql in MIGRATIONS.iter().skip(version as usize) {
        tx.execute_batch(sql)?;
    }
    tx.pragma_update(None, "user_version", supported)?;
    tx.commit()?;
    Ok(Migrated {
        from: version,
        to: supported,
    })
}

/// A transaction that reads and then writes. `BEGIN IMMEDIATE` takes the write lock up front:
/// a deferred transaction that reads first fails at once with "database is locked" when another
/// connection to the same file (a second `Store` handle, another process) wrote meanwhile, where
/// an immediate one waits its turn (`busy_timeout`).
fn write_transaction(conn: &mut Connection) -> Result<rusqlite::Transaction<'_>, rusqlite::Error> {
    conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
}

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn from_micros(v: i64) -> Result<DateTime<Utc>, rusqlite::Error> {
    Utc.timestamp_micros(v)
        .single()
        .ok_or_else(|| rusqlite::Error::IntegralValueOutOfRange(0, v))
}

const GRANT_COLUMNS: &str = "id, user_name, target, role, reason, created_by, created_at, starts_at, \
                             expires_at, revoked_at, revoked_by, revoke_reason";

fn grant_from_row(r: &Row<'_>) -> Result<Grant, rusqlite::Error> {
    Ok(Grant {
        id: r.get(0)?,
        user: r.get(1)?,
        target: r.get(2)?,
        role: r.get(3)?,
        reason: r.get(4)?,
        created_by: r.get(5)?,
        created_at: from_micros(r.get(6)?)?,
        starts_at: from_micros(r.get(7)?)?,
        expires_at: from_micros(r.get(8)?)?,
        revoked_at: r.get::<_, Option<i64>>(9)?.map(from_micros).transpose()?,
        revoked_by: r.get(10)?,
        revoke_reason: r.get(11)?,
    })
}

const REQUEST_COLUMNS: &str = "id, requester, target, role, ttl, reason, ticket, break_glass, created_at, \
                               review_deadline, approvals_required, status, decided_at, denied_by, \
                               deny_reason, grant_id, token_fetched_at";

fn request_from_row(r: &Row<'_>) -> Result<AccessRequest, rusqlite::Error> {
    let status: String = r.get(11)?;
    let opt_time = |i: usize| -> Result<Option<DateTime<Utc>>, rusqlite::Error> {
        r.get::<_, Option<i64>>(i)?.map(from_micros).transpose()
    };
    Ok(AccessRequest {
        id: r.get(0)?,
        requester: r.get(1)?,
        target: r.get(2)?,
        role: r.get(3)?,
        ttl: r.get(4)?,
        reason: r.get(5)?,
        ticket: r.get(6)?,
        break_glass: r.get(7)?,
        created_at: from_micros(r.get(8)?)?,
        review_deadline: from_micros(r.get(9)?)?,
        approvals_required: r.get(10)?,
        approvals: Vec::new(),
        state: RequestStatus::parse(&status).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                11,
                rusqlite::types::Type::Text,
                format!("unknown request status {status:?}").into(),
            )
        })?,
        decided_at: opt_time(12)?,
        denied_by: r.get(13)?,
        deny_reason: r.get(14)?,
        grant_id: r.get(15)?,
        token_fetched_at: opt_time(16)?,
    })
}

/// Reads one request with its approvals (oldest first).
/// The grant `id`, if it exists (on a connection or inside a transaction).
fn load_grant(conn: &Connection, id: &str) -> Result<Option<Grant>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!("SELECT {GRANT_COLUMNS} FROM grants WHERE id = ?1"))?;
    Ok(stmt.query_row([id], grant_from_row).optional()?)
}

fn load_request(conn: &Connection, id: &str) -> Result<Option<AccessRequest>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {REQUEST_COLUMNS} FROM access_requests WHERE id = ?1"
    ))?;
    let Some(mut request) = stmt.query_row([id], request_from_row).optional()? else {
        return Ok(None);
    };
    request.approvals = load_approvals(conn, id)?;
    Ok(Some(request))
}

fn load_approvals(conn: &Connection, id: &str) -> Result<Vec<Approval>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT approver, reason, at FROM request_approvals WHERE request_id = ?1 ORDER BY at, approver",
    )?;
    let rows = stmt.query_map([id], |r| {
        Ok(Approval {
            by: r.get(0)?,
            reason: r.get(1)?,
            at: from_micros(r.get(2)?)?,
        })
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

/// SQL condition for "this request's status at ?now is `status`" (`?N` is the time parameter).
fn request_status_clause(status: Option<RequestStatus>, now_param: &str) -> String {
    match status {
        None => "1".into(),
        Some(RequestStatus::Pending) => format!("status = 'pending' AND review_deadline > {now_param}"),
        Some(RequestStatus::Expired) => {
            format!("(status = 'expired' OR (status = 'pending' AND review_deadline <= {now_param}))")
        }
        Some(s) => format!("status = '{}'", s.as_str()),
    }
}

impl GrantStore for SqliteStore {
    fn insert_admin_token(&self, token: &StoredAdminToken, now: DateTime<Utc>) -> Result<bool, StoreError> {
        admin_tokens::insert(&mut self.conn(), token, now)
    }

    fn admin_token(&self, id: &str) -> Result<Option<StoredAdminToken>, StoreError> {
        admin_tokens::get(&self.conn(), id)
    }

    fn list_admin_tokens(&self) -> Result<Vec<AdminTokenRecord>, StoreError> {
        admin_tokens::list(&self.conn())
    }

    fn revoke_admin_token(
        &self,
        name: &str,
        by: &str,
        at: DateTime<Utc>,
    ) -> Result<Option<AdminTokenRecord>, StoreError> {
        admin_tokens::revoke(&mut self.conn(), name, by, at)
    }

    fn touch_admin_token(&self, id: &str, at: DateTime<Utc>) -> Result<(), StoreError> {
        admin_tokens::touch(&self.conn(), id, at)
    }

    fn live_admin_token_named(
        &self,
        name: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<StoredAdminToken>, StoreError> {
        admin_tokens::live_named(&self.conn(), name, now)
    }

    fn insert_grant(&self, g: &Grant, verifier: &ScramVerifier) -> Result<(), StoreError> {
        self.insert_grant_flagged(g, verifier, false)
    }

    fn insert_grant_flagged(
        &self,
        g: &Grant,
        verifier: &ScramVerifier,
        break_glass: bool,
    ) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO grants (id, user_name, target, role, reason, created_by, created_at, starts_at, \
             expires_at, revoked_at, revoked_by, revoke_reason, verifier, break_glass) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
            params![
                g.id,
                g.user,
                g.target,
                g.role,
                g.reason,
                g.created_by,
                micros(g.created_at),
                micros(g.starts_at),
                micros(g.expires_at),
                g.revoked_at.map(micros),
                g.revoked_by,
                g.revoke_reason,
                verifier.to_text(),
                break_glass,
            ],
        )?;
        Ok(())
    }

    fn break_glass_ids(&self, ids: &[String]) -> Result<std::collections::HashSet<String>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached("SELECT break_glass FROM grants WHERE id = ?1")?;
        let mut out = std::collections::HashSet::new();
        for id in ids {
            let flagged: Option<bool> = stmt.query_row([id], |r| r.get(0)).optional()?;
            if flagged == Some(true) {
                out.insert(id.clone());
            }
        }
        Ok(out)
    }

    fn extend_grant(&self, id: &str, expires_at: DateTime<Utc>) -> Result<Option<Grant>, StoreError> {
        let mut conn = self.conn();
        let tx = write_transaction(&mut conn)?;
        tx.execute(
            "UPDATE grants SET expires_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
            params![id, micros(expires_at)],
        )?;
        let grant = load_grant(&tx, id)?;
        tx.commit()?;
        Ok(grant)
    }

    fn grant_counts(&self, now: DateTime<Utc>) -> Result<GrantCounts, StoreError> {
        let conn = self.conn();
        Ok(conn.query_row(
            "SELECT \
               coalesce(sum(revoked_at IS NULL AND starts_at > ?1 AND expires_at > ?1), 0), \
               coalesce(sum(revoked_at IS NULL AND starts_at <= ?1 AND expires_at > ?1), 0), \
               coalesce(sum(revoked_at IS NULL AND expires_at <= ?1), 0), \
               coalesce(sum(revoked_at IS NOT NULL), 0), \
               coalesce(sum(break_glass AND revoked_at IS NULL AND starts_at <= ?1 AND expires_at > ?1), 0) \
             FROM grants",
            [micros(now)],
            |r| {
                Ok(GrantCounts {
                    pending: r.get::<_, i64>(0)? as u64,
                    active: r.get::<_, i64>(1)? as u64,
                    expired: r.get::<_, i64>(2)? as u64,
                    revoked: r.get::<_, i64>(3)? as u64,
                    break_glass_active: r.get::<_, i64>(4)? as u64,
                })
            },
        )?)
    }

    fn grants_expired_between(
        &self,
        after: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Vec<Grant>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {GRANT_COLUMNS} FROM grants \
             WHERE revoked_at IS NULL AND expires_at > ?1 AND expires_at <= ?2 ORDER BY expires_at"
        ))?;
        let rows = stmt.query_map(params![micros(after), micros(until)], grant_from_row)?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    fn insert_request(&self, q: &AccessRequest) -> Result<(), StoreError> {
        self.conn().execute(
            &format!(
                "INSERT INTO access_requests ({REQUEST_COLUMNS}) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)"
            ),
            params![
                q.id,
                q.requester,
                q.target,
                q.role,
                q.ttl,
                q.reason,
                q.ticket,
                q.break_glass,
                micros(q.created_at),
                micros(q.review_deadline),
                q.approvals_required,
                q.state.as_str(),
                q.decided_at.map(micros),
                q.denied_by,
                q.deny_reason,
                q.grant_id,
                q.token_fetched_at.map(micros),
            ],
        )?;
        Ok(())
    }

    fn get_request(&self, id: &str) -> Result<Option<AccessRequest>, StoreError> {
        load_request(&self.conn(), id)
    }

    fn list_requests(&self, f: &RequestFilter, now: DateTime<Utc>) -> Result<Vec<AccessRequest>, StoreError> {
        let sql = format!(
            "SELECT {REQUEST_COLUMNS} FROM access_requests \
             WHERE (?1 IS NULL OR requester = ?1) AND (?2 IS NULL OR target = ?2) AND ({}) \
             ORDER BY created_at DESC, id LIMIT ?4",
            request_status_clause(f.status, "?3")
        );
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&sql)?;
        let limit = f.limit.unwrap_or(1000).min(10_000) as i64;
        let rows = stmt.query_map(
            params![f.requester, f.target, micros(now), limit],
            request_from_row,
        )?;
        let mut out = rows.collect::<Result<Vec<_>, _>>()?;
        for r in &mut out {
            r.approvals = load_approvals(&conn, &r.id)?;
        }
        Ok(out)
    }

    fn approve_request(
        &self,
        id: &str,
        approval: &Approval,
        now: DateTime<Utc>,
    ) -> Result<ApproveOutcome, StoreError> {
        let mut conn = self.conn();
        let tx = write_transaction(&mut conn)?;
        let Some(request) = load_request(&tx, id)? else {
            return Ok(ApproveOutcome::NotFound);
        };
        let step = ApprovalStep::of(&request, &approval.by, now);
        if let Some(refused) = step.refusal() {
            return Ok(refused);
        }
        tx.execute(
            "INSERT INTO request_approvals (request_id, approver, reason, at) VALUES (?1, ?2, ?3, ?4)",
            params![id, approval.by, approval.reason, micros(approval.at)],
        )?;
        if step == (ApprovalStep::Record { completes: true }) {
            tx.execute(
                "UPDATE access_requests SET status = 'approved', decided_at = ?2 WHERE id = ?1",
                params![id, micros(now)],
            )?;
        }
        let updated = load_request(&tx, id)?
            .ok_or_else(|| StoreError::Corrupt(format!("request {id} vanished during approval")))?;
        tx.commit()?;
        Ok(ApproveOutcome::Recorded(Box::new(updated)))
    }

    fn deny_request(
        &self,
        id: &str,
        by: &str,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<(bool, AccessRequest)>, StoreError> {
        let mut conn = self.conn();
        let tx = write_transaction(&mut conn)?;
        let changed = tx.execute(
            "UPDATE access_requests SET status = 'denied', decided_at = ?2, denied_by = ?3, deny_reason = ?4 \
             WHERE id = ?1 AND status = 'pending' AND review_deadline > ?2",
            params![id, micros(now), by, reason],
        )?;
        let request = load_request(&tx, id)?;
        tx.commit()?;
        Ok(request.map(|r| (changed == 1, r)))
    }

    fn set_request_grant(&self, id: &str, grant_id: &str) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE access_requests SET grant_id = ?2 WHERE id = ?1",
            params![id, grant_id],
        )?;
        Ok(())
    }

    fn mark_token_fetched(&self, id: &str, at: DateTime<Utc>) -> Result<bool, StoreError> {
        let changed = self.conn().execute(
            "UPDATE access_requests SET token_fetched_at = ?2 WHERE id = ?1 AND token_fetched_at IS NULL",
            params![id, micros(at)],
        )?;
        Ok(changed == 1)
    }

    fn expire_requests(&self, now: DateTime<Utc>) -> Result<Vec<AccessRequest>, StoreError> {
        let mut conn = self.conn();
        let tx = write_transaction(&mut conn)?;
        let ids: Vec<String> = {
            let mut stmt = tx.prepare_cached(
                "SELECT id FROM access_requests WHERE status = 'pending' AND review_deadline <= ?1",
            )?;
            let rows = stmt.query_map([micros(now)], |r| r.get(0))?;
            rows.collect::<Result<Vec<_>, _>>()?
        };
        let mut out = Vec::new();
        for id in &ids {
            tx.execute(
                "UPDATE access_requests SET status = 'expired', decided_at = review_deadline WHERE id = ?1",
                [id],
            )?;
            if let Some(r) = load_request(&tx, id)? {
                out.push(r);
            }
        }
        tx.commit()?;
        Ok(out)
    }

    fn count_pending_requests(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        let n: i64 = self.conn().query_row(
            "SELECT count(*) FROM access_requests WHERE status = 'pending' AND review_deadline > ?1",
            [micros(now)],
            |r| r.get(0),
        )?;
        Ok(n as u64)
    }

    fn get_grant(&self, id: &str) -> Result<Option<Grant>, StoreError> {
        load_grant(&self.conn(), id)
    }

    fn list_grants(&self, f: &GrantFilter, now: DateTime<Utc>) -> Result<Vec<Grant>, StoreError> {
        let now = micros(now);
        let status_clause = match f.status {
            None => "1",
            Some(GrantStatus::Revoked) => "revoked_at IS NOT NULL",
            Some(GrantStatus::Expired) => "revoked_at IS NULL AND expires_at <= ?3",
            Some(GrantStatus::Pending) => "revoked_at IS NULL AND starts_at > ?3 AND expires_at > ?3",
            Some(GrantStatus::Active) => "revoked_at IS NULL AND starts_at <= ?3 AND expires_at > ?3",
        };
        let sql = format!(
            "SELECT {GRANT_COLUMNS} FROM grants \
             WHERE (?1 IS NULL OR user_name = ?1) AND (?2 IS NULL OR target = ?2) AND ({status_clause}) \
             ORDER BY created_at DESC, id LIMIT ?4"
        );
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&sql)?;
        let limit = f.limit.unwrap_or(1000).min(10_000) as i64;
        let rows = stmt.query_map(params![f.user, f.target, now, limit], grant_from_row)?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    fn grant_candidates(&self, user: &str, target: &str) -> Result<Vec<(Grant, ScramVerifier)>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {GRANT_COLUMNS}, verifier FROM grants WHERE user_name = ?1 AND target = ?2 \
             ORDER BY created_at DESC LIMIT ?3"
        ))?;
        let rows = stmt.query_map(params![user, target, MAX_CANDIDATES as i64], |r| {
            Ok((grant_from_row(r)?, r.get::<_, String>(12)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (grant, text) = row?;
            let verifier = ScramVerifier::from_text(&text).ok_or_else(|| {
                StoreError::Corrupt(format!("grant {} has an unreadable verifier", grant.id))
            })?;
            out.push((grant, verifier));
        }
        Ok(out)
    }

    fn revoke_grant(
        &self,
        id: &str,
        by: &str,
        reason: &str,
        at: DateTime<Utc>,
    ) -> Result<Option<Grant>, StoreError> {
        let mut conn = self.conn();
        let tx = write_transaction(&mut conn)?;
        tx.execute(
            "UPDATE grants SET revoked_at = ?2, revoked_by = ?3, revoke_reason = ?4 \
             WHERE id = ?1 AND revoked_at IS NULL",
            params![id, micros(at), by, reason],
        )?;
        let grant = load_grant(&tx, id)?;
        tx.commit()?;
        Ok(grant)
    }

    fn meta_value(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .conn()
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?)
    }

    fn set_meta_value(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            rusqlite::params![key, value],
        )?;
        Ok(())
    }

    fn installation_secret(&self) -> Result<[u8; 32], StoreError> {
        let conn = self.conn();
        let existing: Option<Vec<u8>> = conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'installation_secret'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(v) = existing {
            return v
                .try_into()
                .map_err(|_| StoreError::Corrupt("installation_secret is not 32 bytes".into()));
        }
        let mut secret = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut secret);
        conn.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('installation_secret', ?1)",
            [secret.as_slice()],
        )?;
        let stored: Vec<u8> = conn.query_row(
            "SELECT value FROM meta WHERE key = 'installation_secret'",
            [],
            |r| r.get(0),
        )?;
        stored
            .try_into()
            .map_err(|_| StoreError::Corrupt("installation_secret is not 32 bytes".into()))
    }
}

mod admin_tokens;
#[cfg(test)]
mod tests;
