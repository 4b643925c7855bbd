//! The audit database: one SQLite file in WAL mode (its own file, `audit.db` beside the store), or an
//! in-memory database when the store is `sqlite::memory:` (tests).
//!
//! One table, `audit_events`: `seq` (the integer primary key, gapless), `ts`, `kind`, `payload` (the
//! canonical JSON), `prev_hash`, `hash`, and four columns copied from the payload for indexed
//! filters (`user_name`, `target`, `grant_id`, `session_id`; [`super::chain::verify`] checks they
//! agree with the payload). Indexes: `(session_id)` on every record; `(user_name, ts)`,
//! `(grant_id)` and `(kind)` only on records other than `statement` and `statement_outcome` (nearly
//! every record: one index insert each, issue 13). A statement's user and grant are found through
//! its session: `audit_sessions` holds each statement's (user, grant, session) once
//! ([`insert_rows`]), and [`super::query`] asks it, then checks the record's own columns. Only
//! the writer thread writes; readers use their own connection. This module must never update or
//! delete a record, except [`prune_before`]: retention deletes a prefix of the chain and keeps its
//! last record as the anchor (`audit_anchor`) in the same transaction.

use std::path::Path;
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use super::chain::{Head, HexHash, GENESIS};
use super::event::{AuditRecord, Columns};
use super::AuditError;

/// Each entry moves the schema from version `index` to `index + 1`.
pub(crate) const MIGRATIONS: &[&str] = &[
    r#"
    CREATE TABLE audit_events (
        seq        INTEGER PRIMARY KEY,
        ts         TEXT NOT NULL,
        kind       TEXT NOT NULL,
        payload    TEXT NOT NULL,
        prev_hash  TEXT NOT NULL,
        hash       TEXT NOT NULL,
        user_name  TEXT,
        target     TEXT,
        grant_id   TEXT,
        session_id TEXT
    );
    CREATE INDEX audit_events_user_ts ON audit_events (user_name, ts);
    CREATE INDEX audit_events_grant ON audit_events (grant_id);
    CREATE INDEX audit_events_session ON audit_events (session_id);
    CREATE INDEX audit_events_kind ON audit_events (kind)
        WHERE kind NOT IN ('statement', 'statement_outcome');
"#,
    r#"
    -- Outcome records (half of all records) carry only a session id: keep their NULLs out of the
    -- user and grant indexes (two B-tree inserts fewer per outcome). `user_name = ?` and
    -- `grant_id = ?` imply IS NOT NULL, so the filters still use them.
    DROP INDEX audit_events_user_ts;
    DROP INDEX audit_events_grant;
    CREATE INDEX audit_events_user_ts ON audit_events (user_name, ts) WHERE user_name IS NOT NULL;
    CREATE INDEX audit_events_grant ON audit_events (grant_id) WHERE grant_id IS NOT NULL;
"#,
    r#"
    -- Retention (issue 11 item 7): the last record pruned, so the remaining chain starts from a
    -- known hash. One row at most.
    CREATE TABLE audit_anchor (
        id    INTEGER PRIMARY KEY CHECK (id = 1),
        seq   INTEGER NOT NULL,
        hash  TEXT NOT NULL,
        ts    TEXT NOT NULL,
        cut   TEXT NOT NULL
    );
"#,
    r#"
    -- Issue 13: statement and outcome records (nearly all records) are indexed by session only.
    -- The user and grant indexes keep the other kinds; a statement's user and grant are found
    -- through its session: `audit_sessions` holds each (user, grant, session) of a statement,
    -- written once per session and indexer batch. Filters: `super::query::identity_clauses`.
    DROP INDEX audit_events_user_ts;
    DROP INDEX audit_events_grant;
    CREATE INDEX audit_events_user_ts ON audit_events (user_name, ts)
        WHERE kind NOT IN ('statement', 'statement_outcome');
    CREATE INDEX audit_events_grant ON audit_events (grant_id)
        WHERE kind NOT IN ('statement', 'statement_outcome');
    CREATE TABLE audit_sessions (
        user_name  TEXT NOT NULL,
        grant_id   TEXT NOT NULL,
        session_id TEXT NOT NULL,
        PRIMARY KEY (user_name, grant_id, session_id)
    ) WITHOUT ROWID;
    CREATE INDEX audit_sessions_grant ON audit_sessions (grant_id);
    INSERT OR IGNORE INTO audit_sessions (user_name, grant_id, session_id)
        SELECT user_name, grant_id, session_id FROM audit_events
        WHERE kind IN ('statement', 'statement_outcome')
          AND user_name IS NOT NULL AND grant_id IS NOT NULL AND session_id IS NOT NULL;
"#,
];

/// Kinds indexed by session only (nearly every record is one); a filter finds their user and grant
/// through `audit_sessions`. The migration above and [`super::query`] spell out the same list.
pub(crate) const BULK_KINDS: [&str; 2] = ["statement", "statement_outcome"];

/// The `audit_sessions` row a record needs (pure): a statement's (or outcome's) user, grant and
/// session, when it has all three (a statement always does; an outcome has only its session).
/// Any other kind is found through the user and grant indexes themselves.
pub(crate) fn session_key<'a>(kind: &str, c: &'a Columns) -> Option<(&'a str, &'a str, &'a str)> {
    if !BULK_KINDS.contains(&kind) {
        return None;
    }
    Some((
        c.user.as_deref()?,
        c.grant_id.as_deref()?,
        c.session_id.as_deref()?,
    ))
}

/// One record as the indexer inserts it (numbered, chained and already durable in the journal).
/// Public for `benches/audit.rs` only; the indexer is its one user in the program.
#[derive(Clone)]
pub struct IndexRow {
    pub seq: u64,
    pub ts: std::sync::Arc<str>,
    pub kind: &'static str,
    pub payload: String,
    pub prev_hash: HexHash,
    pub hash: HexHash,
    pub columns: Columns,
}

/// Inserts `rows` (consecutive, in seq order) in ONE transaction, and the `audit_sessions` row of
/// each session whose statements they hold (once per batch; `OR IGNORE` when an earlier batch had
/// it). Public for `benches/audit.rs` only.
pub fn insert_rows(conn: &mut Connection, rows: &[IndexRow]) -> Result<(), AuditError> {
    let tx = conn.transaction()?;
    {
        let mut insert = tx.prepare_cached(INSERT)?;
        let mut sessions: std::collections::HashSet<(&str, &str, &str)> = Default::default();
        for r in rows {
            if let Some(key) = session_key(r.kind, &r.columns) {
                sessions.insert(key);
            }
            insert.execute(params![
                r.seq as i64,
                &*r.ts,
                r.kind,
                r.payload,
                r.prev_hash.as_str(),
                r.hash.as_str(),
                r.columns.user,
                r.columns.target,
                r.columns.grant_id,
                r.columns.session_id,
            ])?;
        }
        let mut session = tx.prepare_cached(INSERT_SESSION)?;
        for (user, grant, id) in sessions {
            session.execute(params![user, grant, id])?;
        }
    }
    tx.commit()?;
    Ok(())
}

const INSERT_SESSION: &str =
    "INSERT OR IGNORE INTO audit_sessions (user_name, grant_id, session_id) VALUES (?1, ?2, ?3)";

pub(crate) const INSERT: &str = "INSERT INTO audit_events \
    (seq, ts, kind, payload, prev_hash, hash, user_name, target, grant_id, session_id) \
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)";

/// How long a connection waits for a lock held by another (e.g. an auditor's tool) before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens (creating and migrating) the database the writer appends to: WAL mode, `synchronous=OFF`
/// and no automatic checkpoints, because the writer syncs and checkpoints itself (see
/// [`super::writer`]).
pub fn open_writer(path: Option<&Path>) -> Result<Connection, AuditError> {
    let mut conn = match path {
        Some(path) => {
            // 0600 before SQLite opens it: its -wal and -shm files inherit the database file's mode.
            crate::store::files::prepare_sqlite_file(path)
                .map_err(|(path, source)| AuditError::Io { path, source })?;
            let conn = Connection::open(path)?;
            conn.pragma_update(None, "journal_mode", "WAL")?;
            conn.pragma_update(None, "wal_autocheckpoint", 0)?;
            conn
        }
        None => Connection::open_in_memory()?,
    };
    conn.pragma_update(None, "synchronous", "OFF")?;
    // A whole batch's dirty pages stay in memory until its commit (no spilling mid-transaction).
    conn.pragma_update(None, "cache_size", -64 * 1024)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.set_prepared_statement_cache_capacity(16);
    migrate(&mut conn)?;
    Ok(conn)
}

/// Opens the checkpointer's connection: `synchronous=FULL`, so a checkpoint fsyncs the WAL before
/// copying it and the database after (see [`super::writer::Checkpointer`]).
pub fn open_checkpointer(path: &Path) -> Result<Connection, AuditError> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    Ok(conn)
}

/// Opens a read-only connection for queries and verification (the file must exist).
pub fn open_reader(path: &Path) -> Result<Connection, AuditError> {
    if !path.is_file() {
        return Err(AuditError::NoDatabase(path.to_owned()));
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version == 0 {
        return Err(AuditError::NotAnAuditDatabase(path.to_owned()));
    }
    if version > MIGRATIONS.len() as i64 {
        return Err(AuditError::SchemaTooNew {
            found: version,
            supported: MIGRATIONS.len() as i64,
        });
    }
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> Result<(), AuditError> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let supported = MIGRATIONS.len() as i64;
    if version > supported {
        return Err(AuditError::SchemaTooNew {
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

/// The WAL file of a database file (`x.db` → `x.db-wal`).
pub fn wal_path(db: &Path) -> std::path::PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push("-wal");
    s.into()
}

/// The last record's seq, hash and ts (genesis, no ts, for an empty log).
pub fn read_head(conn: &Connection) -> Result<(u64, [u8; 32], Option<String>), AuditError> {
    let row: Option<(i64, String, String)> = conn
        .query_row(
            "SELECT seq, hash, ts FROM audit_events ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    match row {
        None => Ok((0, GENESIS, None)),
        Some((seq, hash, ts)) => {
            let mut bytes = [0u8; 32];
            hex::decode_to_slice(&hash, &mut bytes).map_err(|_| AuditError::Corrupt {
                seq: seq as u64,
                problem: "the last record's hash is not hex; run `timebox audit verify`".into(),
            })?;
            Ok((seq as u64, bytes, Some(ts)))
        }
    }
}

/// The head as an auditor sees it.
pub fn head(conn: &Connection) -> Result<Head, AuditError> {
    let (seq, hash, _) = read_head(conn)?;
    Ok(Head {
        seq,
        hash: hex::encode(hash),
    })
}

pub(crate) const RECORD_COLUMNS: &str = "seq, ts, kind, payload, prev_hash, hash";

/// Reads a record from a row of [`RECORD_COLUMNS`].
pub(crate) fn record_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AuditRecord> {
    let payload: String = r.get(3)?;
    let payload = serde_json::from_str(&payload).unwrap_or(serde_json::Value::String(payload));
    Ok(AuditRecord {
        cursor: None,
        instance: None,
        seq: r.get::<_, i64>(0)? as u64,
        ts: r.get(1)?,
        kind: r.get(2)?,
        payload,
        prev_hash: r.get(4)?,
        hash: r.get(5)?,
    })
}

/// A record's stored text, unparsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRecord {
    pub seq: u64,
    pub ts: String,
    pub kind: String,
    pub payload: String,
    pub prev_hash: String,
    pub hash: String,
}

/// Records with `seq` in `from..=to`, in order, as raw stored text (for the JSONL catch-up).
pub fn raw_records(conn: &Connection, from: u64, to: u64) -> Result<Vec<RawRecord>, AuditError> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {RECORD_COLUMNS} FROM audit_events WHERE seq BETWEEN ?1 AND ?2 ORDER BY seq"
    ))?;
    let rows = stmt.query_map(params![from as i64, to as i64], |r| {
        Ok(RawRecord {
            seq: r.get::<_, i64>(0)? as u64,
            ts: r.get(1)?,
            kind: r.get(2)?,
            payload: r.get(3)?,
            prev_hash: r.get(4)?,
            hash: r.get(5)?,
        })
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

/// Records `from..=to` as the shipper sends them to the central table.
pub fn ship_rows(
    conn: &Connection,
    from: u64,
    to: u64,
) -> Result<Vec<crate::store::postgres::audit::CentralRow>, AuditError> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, ts, kind, payload, prev_hash, hash, user_name, target, grant_id, session_id \
         FROM audit_events WHERE seq BETWEEN ?1 AND ?2 ORDER BY seq",
    )?;
    let mut rows = stmt.query(params![
        from.min(i64::MAX as u64) as i64,
        to.min(i64::MAX as u64) as i64
    ])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let seq = r.get::<_, i64>(0)?.max(0) as u64;
        let ts: String = r.get(1)?;
        let ts = chrono::DateTime::parse_from_rfc3339(&ts)
            .map_err(|_| AuditError::Corrupt {
                seq,
                problem: format!("ts {ts:?} is not RFC 3339"),
            })?
            .with_timezone(&chrono::Utc);
        out.push(crate::store::postgres::audit::CentralRow {
            seq,
            ts,
            kind: r.get(2)?,
            payload: r.get(3)?,
            prev_hash: r.get(4)?,
            hash: r.get(5)?,
            columns: Columns {
                user: r.get(6)?,
                target: r.get(7)?,
                grant_id: r.get(8)?,
                session_id: r.get(9)?,
            },
        });
    }
    Ok(out)
}

/// The commit time of record `seq`, if the index holds it.
pub fn ts_of(conn: &Connection, seq: u64) -> Result<Option<String>, AuditError> {
    Ok(conn
        .query_row(
            "SELECT ts FROM audit_events WHERE seq = ?1",
            params![seq.min(i64::MAX as u64) as i64],
            |r| r.get(0),
        )
        .optional()?)
}

/// The first statement record whose (user, grant, session) `audit_sessions` lacks — a user or
/// grant search would not find it; [`super::chain::verify`] reports it. `None` on a database from
/// before `audit_sessions` (opened read-only, not migrated).
pub(crate) fn statement_without_session_row(conn: &Connection) -> Result<Option<u64>, AuditError> {
    let has_table: bool = conn.query_row(
        "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'audit_sessions'",
        [],
        |r| r.get(0),
    )?;
    if !has_table {
        return Ok(None);
    }
    let seq: Option<i64> = conn.query_row(
        "SELECT min(e.seq) FROM audit_events e \
         WHERE e.kind IN ('statement', 'statement_outcome') AND e.user_name IS NOT NULL \
         AND e.grant_id IS NOT NULL AND e.session_id IS NOT NULL AND NOT EXISTS \
         (SELECT 1 FROM audit_sessions s WHERE s.user_name = e.user_name \
          AND s.grant_id = e.grant_id AND s.session_id = e.session_id)",
        [],
        |r| r.get(0),
    )?;
    Ok(seq.map(|s| s.max(0) as u64))
}

/// The anchor retention left (the last record it pruned), if any. A database from before
/// retention existed has no anchor table: no anchor.
pub fn retention_anchor(conn: &Connection) -> Result<Option<Head>, AuditError> {
    let has_table: bool = conn.query_row(
        "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'audit_anchor'",
        [],
        |r| r.get(0),
    )?;
    if !has_table {
        return Ok(None);
    }
    Ok(conn
        .query_row("SELECT seq, hash FROM audit_anchor WHERE id = 1", [], |r| {
            Ok(Head {
                seq: r.get::<_, i64>(0)?.max(0) as u64,
                hash: r.get(1)?,
            })
        })
        .optional()?)
}

/// Rows pruned per transaction (the indexer waits on the lock meanwhile).
pub const PRUNE_CHUNK: u64 = 10_000;

/// Deletes the records older than `cut` (ts < cut) with seq ≤ `through`, never the last record
/// (the head stays, so the writer's seq never restarts), in chunks of [`PRUNE_CHUNK`]; each chunk's
/// last record becomes the anchor in the same transaction. Returns how many were deleted and the
/// anchor after them (`None` when nothing was).
pub fn prune_before(
    conn: &mut Connection,
    cut: &str,
    through: u64,
) -> Result<(u64, Option<Head>), AuditError> {
    let mut deleted = 0u64;
    let mut anchor = None;
    loop {
        let tx = conn.transaction()?;
        let last: Option<(i64, String, String)> = tx
            .query_row(
                "SELECT seq, hash, ts FROM audit_events \
                 WHERE seq <= ?1 AND ts < ?2 AND seq < (SELECT max(seq) FROM audit_events) \
                 AND seq <= (SELECT min(seq) FROM audit_events) + ?3 - 1 \
                 ORDER BY seq DESC LIMIT 1",
                params![through.min(i64::MAX as u64) as i64, cut, PRUNE_CHUNK as i64],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let Some((seq, hash, ts)) = last else { break };
        let n = tx.execute("DELETE FROM audit_events WHERE seq <= ?1", params![seq])?;
        tx.execute(
            "INSERT INTO audit_anchor (id, seq, hash, ts, cut) VALUES (1, ?1, ?2, ?3, ?4) \
             ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, ts = excluded.ts, \
             cut = excluded.cut",
            params![seq, hash, ts, cut],
        )?;
        tx.commit()?;
        deleted += n as u64;
        anchor = Some(Head {
            seq: seq as u64,
            hash,
        });
    }
    if deleted > 0 {
        // Sessions with no record left; a later statement of one puts its row back (the indexer
        // writes it with each batch that holds the session's statements).
        conn.execute(
            "DELETE FROM audit_sessions WHERE NOT EXISTS \
             (SELECT 1 FROM audit_events e WHERE e.session_id = audit_sessions.session_id)",
            [],
        )?;
    }
    Ok((deleted, anchor))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// See: issue 16, finding 12b (the audit database, which holds every statement, and its -wal and
    /// -shm files were created 0644).
    #[cfg(unix)]
    #[test]
    fn the_audit_database_and_its_side_files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new/audit.db");
        let conn = open_writer(Some(&path)).unwrap();
        conn.execute_batch("BEGIN; CREATE TABLE t (x); COMMIT;").unwrap();
        assert_eq!(mode(&dir.path().join("new")), 0o700);
        for side in ["", "-wal", "-shm"] {
            let p = std::path::PathBuf::from(format!("{}{side}", path.display()));
            assert_eq!(mode(&p), 0o600, "{}", p.display());
        }
    }

    #[test]
    fn newer_schema_is_refused_and_empty_files_are_not_audit_databases() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch("CREATE TABLE x (y)").unwrap();
        }
        assert!(matches!(
            open_reader(&path),
            Err(AuditError::NotAnAuditDatabase(_))
        ));
        {
            let c = Connection::open(&path).unwrap();
            c.pragma_update(None, "user_version", 99).unwrap();
        }
        assert!(matches!(
            open_writer(Some(&path)),
            Err(AuditError::SchemaTooNew { found: 99, .. })
        ));
        assert!(matches!(
            open_reader(&dir.path().join("missing.db")),
            Err(AuditError::NoDatabase(_))
        ));
    }

    /// An index row for `event` as the writer would make it (hashes left zero: no chain here).
    pub(crate) fn row(seq: u64, ts: &str, event: crate::audit::AuditEvent) -> IndexRow {
        let p = crate::audit::event::prepare(event, crate::config::ParamLogging::Full);
        IndexRow {
            seq,
            ts: std::sync::Arc::from(ts),
            kind: p.kind,
            payload: p.payload,
            prev_hash: HexHash::new(&[0; 32]),
            hash: HexHash::new(&[0; 32]),
            columns: p.columns,
        }
    }

    /// The indexes of `audit_events` that hold record `seq` (a partial index holds the rows its
    /// `WHERE` admits).
    fn indexes_holding(conn: &Connection, seq: u64) -> Vec<String> {
        let mut stmt = conn
            .prepare("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'audit_events' AND sql IS NOT NULL ORDER BY name")
            .unwrap();
        let indexes: Vec<(String, String)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        indexes
            .into_iter()
            .filter(|(_, sql)| {
                let admits = sql.find("WHERE").map_or("1", |at| &sql[at + "WHERE".len()..]);
                conn.query_row(
                    &format!("SELECT count(*) FROM audit_events WHERE seq = ?1 AND ({admits})"),
                    [seq as i64],
                    |r| r.get::<_, i64>(0),
                )
                .unwrap()
                    == 1
            })
            .map(|(name, _)| name)
            .collect()
    }

    /// Regression (issue 13, "index lazily and cheaply"): a statement record went into three
    /// indexes (user, grant, session) besides the table; statement and outcome records (two per
    /// transaction) now go into the session index only, and their user and grant into
    /// `audit_sessions` once per session. Other kinds keep the user, grant and kind indexes.
    #[test]
    fn statements_and_outcomes_enter_only_the_session_index() {
        let mut conn = open_writer(None).unwrap();
        let samples = crate::audit::event::tests::samples();
        let rows: Vec<IndexRow> = samples
            .into_iter()
            .enumerate()
            .map(|(i, e)| row(i as u64 + 1, "2026-01-01T00:00:00.000000Z", e))
            .collect();
        insert_rows(&mut conn, &rows).unwrap();
        for r in &rows {
            let held = indexes_holding(&conn, r.seq);
            match r.kind {
                "statement" | "statement_outcome" => {
                    assert_eq!(held, ["audit_events_session"], "{}", r.kind)
                }
                "session_start" | "session_end" => assert_eq!(
                    held,
                    [
                        "audit_events_grant",
                        "audit_events_kind",
                        "audit_events_session",
                        "audit_events_user_ts"
                    ],
                    "{}",
                    r.kind
                ),
                _ => assert!(
                    held.contains(&"audit_events_kind".to_owned()),
                    "{}: {held:?}",
                    r.kind
                ),
            }
        }
        let sessions: Vec<(String, String, String)> = conn
            .prepare("SELECT user_name, grant_id, session_id FROM audit_sessions")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            sessions,
            [("alice".to_owned(), "g_1".to_owned(), "s_1".to_owned())]
        );
    }

    #[test]
    fn only_statements_with_a_user_grant_and_session_need_a_session_row() {
        let full = Columns {
            user: Some("alice".into()),
            target: Some("shop".into()),
            grant_id: Some("g_1".into()),
            session_id: Some("s_1".into()),
        };
        assert_eq!(session_key("statement", &full), Some(("alice", "g_1", "s_1")));
        assert_eq!(
            session_key("session_start", &full),
            None,
            "found by the user index"
        );
        let outcome = Columns {
            session_id: Some("s_1".into()),
            ..Columns::default()
        };
        assert_eq!(session_key("statement_outcome", &outcome), None);
    }

    #[test]
    fn an_empty_log_has_the_genesis_head() {
        let conn = open_writer(None).unwrap();
        assert_eq!(head(&conn).unwrap(), Head::genesis());
    }
}
