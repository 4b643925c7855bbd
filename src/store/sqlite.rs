//! The embedded store: one SQLite file in WAL mode, schema versioned with `PRAGMA user_version`.
//!
//! Times are stored as integer microseconds since the Unix epoch (exact comparisons, no text-format
//! pitfalls). Token verifiers are stored in PostgreSQL's `SCRAM-SHA-256$…` text form; tokens never are.

use std::path::Path;
use std::sync::Mutex;

use chrono::{DateTime, TimeZone, Utc};
use rusqlite::{params, Connection, OptionalExtension, Row};

use super::{GrantFilter, GrantStore, StoreError, MAX_CANDIDATES};
use crate::grants::token::ScramVerifier;
use crate::grants::{Grant, GrantStatus};

/// Each entry moves the schema from version `index` to `index + 1`.
const MIGRATIONS: &[&str] = &[r#"
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
"#];

#[derive(Debug)]
pub struct SqliteStore {
    conn: Mutex<Connection>,
}

impl SqliteStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Directory {
                path: dir.to_owned(),
                source,
            })?;
        }
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        Self::init(conn)
    }

    pub fn open_in_memory() -> Result<Self, StoreError> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(mut conn: Connection) -> Result<Self, StoreError> {
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        migrate(&mut conn)?;
        Ok(SqliteStore {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent (transactions roll back).
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let supported = MIGRATIONS.len() as i64;
    if version > supported {
        return Err(StoreError::SchemaTooNew {
            found: version,
            supported,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
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

impl GrantStore for SqliteStore {
    fn insert_grant(&self, g: &Grant, verifier: &ScramVerifier) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO grants (id, user_name, target, role, reason, created_by, created_at, starts_at, \
             expires_at, revoked_at, revoked_by, revoke_reason, verifier) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
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
            ],
        )?;
        Ok(())
    }

    fn get_grant(&self, id: &str) -> Result<Option<Grant>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!("SELECT {GRANT_COLUMNS} FROM grants WHERE id = ?1"))?;
        Ok(stmt.query_row([id], grant_from_row).optional()?)
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
        let tx = conn.transaction()?;
        tx.execute(
            "UPDATE grants SET revoked_at = ?2, revoked_by = ?3, revoke_reason = ?4 \
             WHERE id = ?1 AND revoked_at IS NULL",
            params![id, micros(at), by, reason],
        )?;
        let grant = tx
            .query_row(
                &format!("SELECT {GRANT_COLUMNS} FROM grants WHERE id = ?1"),
                [id],
                grant_from_row,
            )
            .optional()?;
        tx.commit()?;
        Ok(grant)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(id: &str, user: &str, created: DateTime<Utc>) -> Grant {
        Grant {
            id: id.into(),
            user: user.into(),
            target: "shop".into(),
            role: "read".into(),
            reason: "why".into(),
            created_by: "ops".into(),
            created_at: created,
            starts_at: created,
            expires_at: created + chrono::Duration::minutes(10),
            revoked_at: None,
            revoked_by: None,
            revoke_reason: None,
        }
    }

    fn verifier() -> ScramVerifier {
        ScramVerifier::derive("tbx_x", b"salt", 4096)
    }

    #[test]
    fn grants_round_trip_and_filter_by_status() {
        let s = SqliteStore::open_in_memory().unwrap();
        let t0 = Utc.timestamp_micros(1_700_000_000_000_000).unwrap();
        let a = grant("g_a", "alice", t0);
        let mut b = grant("g_b", "bob", t0 + chrono::Duration::seconds(1));
        b.starts_at = t0 + chrono::Duration::minutes(5);
        s.insert_grant(&a, &verifier()).unwrap();
        s.insert_grant(&b, &verifier()).unwrap();
        assert_eq!(s.get_grant("g_a").unwrap().unwrap(), a);
        assert_eq!(s.get_grant("g_zz").unwrap(), None);

        let at = |status| {
            s.list_grants(
                &GrantFilter {
                    status: Some(status),
                    ..Default::default()
                },
                t0 + chrono::Duration::minutes(1),
            )
            .unwrap()
            .into_iter()
            .map(|g| g.id)
            .collect::<Vec<_>>()
        };
        assert_eq!(at(GrantStatus::Active), vec!["g_a"]);
        assert_eq!(at(GrantStatus::Pending), vec!["g_b"]);
        assert!(at(GrantStatus::Expired).is_empty());

        let revoked = s
            .revoke_grant("g_a", "carol", "done", t0 + chrono::Duration::minutes(2))
            .unwrap()
            .unwrap();
        assert_eq!(revoked.revoked_by.as_deref(), Some("carol"));
        // a second revocation keeps the first one's author
        let again = s
            .revoke_grant("g_a", "dave", "again", t0 + chrono::Duration::minutes(3))
            .unwrap()
            .unwrap();
        assert_eq!(again.revoked_by.as_deref(), Some("carol"));
        assert_eq!(at(GrantStatus::Revoked), vec!["g_a"]);
        assert_eq!(s.revoke_grant("g_missing", "x", "y", t0).unwrap(), None);

        let by_user = s
            .list_grants(
                &GrantFilter {
                    user: Some("bob".into()),
                    ..Default::default()
                },
                t0,
            )
            .unwrap();
        assert_eq!(by_user.len(), 1);
    }

    #[test]
    fn candidates_are_newest_first_with_verifiers() {
        let s = SqliteStore::open_in_memory().unwrap();
        let t0 = Utc.timestamp_micros(1_700_000_000_000_000).unwrap();
        s.insert_grant(&grant("g_old", "alice", t0), &verifier()).unwrap();
        s.insert_grant(
            &grant("g_new", "alice", t0 + chrono::Duration::seconds(5)),
            &verifier(),
        )
        .unwrap();
        s.insert_grant(&grant("g_bob", "bob", t0), &verifier()).unwrap();
        let c = s.grant_candidates("alice", "shop").unwrap();
        let ids: Vec<&str> = c.iter().map(|(g, _)| g.id.as_str()).collect();
        assert_eq!(ids, vec!["g_new", "g_old"]);
        assert_eq!(c[0].1, verifier());
        assert!(s.grant_candidates("alice", "billing").unwrap().is_empty());
    }

    #[test]
    fn installation_secret_is_stable_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("t.db");
        let first = SqliteStore::open(&path).unwrap().installation_secret().unwrap();
        let second = SqliteStore::open(&path).unwrap().installation_secret().unwrap();
        assert_eq!(first, second);
        assert_ne!(first, [0u8; 32]);
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        {
            let c = Connection::open(&path).unwrap();
            c.pragma_update(None, "user_version", 99).unwrap();
        }
        let err = SqliteStore::open(&path).unwrap_err();
        assert!(matches!(err, StoreError::SchemaTooNew { found: 99, .. }), "{err}");
    }
}
