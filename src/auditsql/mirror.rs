//! The fleet mirror: a local SQLite copy of the other instances' records in the central audit
//! table, so that `timebox_audit` answers for the whole fleet in the same SQL, under the same
//! authorizer, as a single instance does.
//!
//! Data flow: each instance ships its own records to the store's `timebox.audit_records`
//! ([`crate::audit::ship`]). With a PostgreSQL store, [`FleetMirror::run`] (one task per
//! instance) copies every *other* instance's records from there into `fleet-audit.db` beside the
//! local audit index: per instance, the rows after the mirror's mark (`mirror_marks`), in
//! batches of [`MIRROR_BATCH`], every [`MIRROR_INTERVAL`]; rows older than `[audit] retain` are
//! pruned from it as retention prunes the rest. The auditors' engine ([`super::engine`]) opens the
//! local index as before and attaches the mirror read-only as `fleet`; the views
//! ([`super::views`]) are the union of both, with an `instance` column. This instance's own
//! records come from its local index, fresh; the others' are at most one ship and one mirror
//! round behind (`timebox_audit_mirror_age_seconds`, and the `timebox_mirror` view per instance).
//!
//! Why a mirror and not the store: the auditor's SQL must never reach the store's PostgreSQL (it
//! holds grants, verifiers and the installation secret) and must stay SQLite's dialect with
//! SQLite's authorizer deciding, whatever the deployment.
//!
//! What it must never do: replace a row it holds with different content. It inserts only what
//! it lacks (unique on (instance, seq)); a row read again that differs from its copy (an edit in
//! the central table, seen only if the marks were lost) keeps the copy, is logged with its
//! instance and seq and counted (`timebox_audit_mirror_conflicts_total`); `verify`, which reads
//! the central table, reports the edit. The mirror is a cache: it is not the record; a schema
//! change, or the file deleted while the instance is stopped, rebuilds it from the central table.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::{Gauge, IntCounter, Registry};
use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::audit::chain::format_ts;
use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::store::postgres::audit::CentralRow;
use crate::store::postgres::PgStore;
use crate::store::StoreError;

/// The mirror's file name, beside the local audit index.
pub const MIRROR_FILE_NAME: &str = "fleet-audit.db";
/// How often the mirror asks the central table for new records.
pub const MIRROR_INTERVAL: Duration = Duration::from_secs(1);
/// Most records copied per instance in one transaction.
pub const MIRROR_BATCH: u32 = 5_000;
/// Longest wait between attempts while the store fails (doubling from [`MIRROR_INTERVAL`]).
pub const MIRROR_RETRY_MAX: Duration = Duration::from_secs(10);
/// The schema version this binary writes; any other rebuilds the mirror.
const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = r#"
    CREATE TABLE audit_events (
        instance   TEXT NOT NULL,
        seq        INTEGER NOT NULL,
        ts         TEXT NOT NULL,
        kind       TEXT NOT NULL,
        payload    TEXT NOT NULL,
        prev_hash  TEXT NOT NULL,
        hash       TEXT NOT NULL,
        user_name  TEXT,
        target     TEXT,
        grant_id   TEXT,
        session_id TEXT,
        UNIQUE (instance, seq)
    );
    CREATE INDEX audit_events_ts ON audit_events (ts);
    CREATE INDEX audit_events_user_ts ON audit_events (user_name, ts) WHERE user_name IS NOT NULL;
    CREATE INDEX audit_events_grant ON audit_events (grant_id) WHERE grant_id IS NOT NULL;
    CREATE INDEX audit_events_session ON audit_events (session_id);
    CREATE INDEX audit_events_kind ON audit_events (kind)
        WHERE kind NOT IN ('statement', 'statement_outcome');
    -- Per instance: the highest seq copied (kept when retention prunes the rows), the hash of
    -- that record, and when the mirror last held everything the central table had of it.
    CREATE TABLE mirror_marks (
        instance  TEXT PRIMARY KEY,
        seq       INTEGER NOT NULL,
        hash      TEXT NOT NULL,
        synced_at TEXT NOT NULL
    );
"#;

/// Why the mirror could not be opened or brought up to date.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error("fleet audit mirror {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("fleet audit mirror: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("fleet audit mirror: reading the central audit table failed: {0}")]
    Store(#[from] StoreError),
    #[error("fleet audit mirror: task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// The mirror's metrics (registered in [`Metrics`]).
#[derive(Debug, Clone)]
pub struct MirrorMetrics {
    /// Seconds since the start of the last round that brought every instance up to what the
    /// central table held (-1 before the first).
    pub age_seconds: Gauge,
    /// Records copied into the mirror.
    pub mirrored_total: IntCounter,
    /// Failed rounds (the store unreachable, a query failed, the file unwritable).
    pub errors_total: IntCounter,
    /// Rows read again whose content differs from the mirror's copy (the copy is kept).
    pub conflicts_total: IntCounter,
}

impl MirrorMetrics {
    pub fn register(registry: &Registry) -> Result<MirrorMetrics, prometheus::Error> {
        let m = MirrorMetrics {
            age_seconds: Gauge::new(
                "timebox_audit_mirror_age_seconds",
                "Fleet audit mirror: seconds since it last caught up with the central table",
            )?,
            mirrored_total: IntCounter::new(
                "timebox_audit_mirrored_total",
                "Fleet audit mirror: records copied from the central table",
            )?,
            errors_total: IntCounter::new(
                "timebox_audit_mirror_errors_total",
                "Fleet audit mirror: failed rounds",
            )?,
            conflicts_total: IntCounter::new(
                "timebox_audit_mirror_conflicts_total",
                "Fleet audit mirror: rows read again with different content (the mirror's copy is kept)",
            )?,
        };
        m.age_seconds.set(-1.0);
        registry.register(Box::new(m.age_seconds.clone()))?;
        registry.register(Box::new(m.mirrored_total.clone()))?;
        registry.register(Box::new(m.errors_total.clone()))?;
        registry.register(Box::new(m.conflicts_total.clone()))?;
        Ok(m)
    }
}

/// What copying one batch did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Copied {
    /// Rows the mirror lacked and now has.
    pub inserted: u64,
    /// Seqs it already held with different content (kept as they were).
    pub conflicts: Vec<u64>,
}

/// Opens (creating, or rebuilding at another schema version) the mirror for writing.
pub fn open_writer(path: &Path) -> Result<Connection, MirrorError> {
    crate::store::files::prepare_sqlite_file(path)
        .map_err(|(path, source)| MirrorError::Io { path, source })?;
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.busy_timeout(Duration::from_secs(5))?;
    prepare_schema(&conn)?;
    Ok(conn)
}

/// Creates the schema in an empty database; drops and recreates it at another version (pure
/// SQLite, no I/O beyond `conn`).
pub fn prepare_schema(conn: &Connection) -> Result<(), MirrorError> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version == SCHEMA_VERSION {
        return Ok(());
    }
    if version != 0 {
        tracing::warn!(
            found = version,
            "fleet audit mirror: another schema version; rebuilding it from the central table"
        );
    }
    conn.execute_batch(&format!(
        "BEGIN; DROP TABLE IF EXISTS audit_events; DROP TABLE IF EXISTS mirror_marks; {SCHEMA} \
         PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
    ))?;
    Ok(())
}

/// The mirror's mark per instance: the highest seq copied.
pub fn marks(conn: &Connection) -> Result<std::collections::HashMap<String, u64>, MirrorError> {
    let mut stmt = conn.prepare("SELECT instance, seq FROM mirror_marks")?;
    let rows = stmt.query_map([], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?.max(0) as u64))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Copies `rows` of `instance` (in seq order) in one transaction: inserts those the mirror
/// lacks, keeps those it holds (a differing one is reported in [`Copied::conflicts`], never
/// replaced), and moves the instance's mark to the last row; `synced_at` (when the batch ends
/// what the central table had) is noted with it.
pub fn copy_rows(
    conn: &mut Connection,
    instance: &str,
    rows: &[CentralRow],
    synced_at: Option<&str>,
) -> Result<Copied, MirrorError> {
    let tx = conn.transaction()?;
    let mut copied = Copied::default();
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO audit_events (instance, seq, ts, kind, payload, prev_hash, hash, user_name, \
             target, grant_id, session_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) \
             ON CONFLICT (instance, seq) DO NOTHING",
        )?;
        let mut held = tx.prepare_cached(
            "SELECT ts, kind, payload, prev_hash, hash, user_name, target, grant_id, session_id \
             FROM audit_events WHERE instance = ?1 AND seq = ?2",
        )?;
        for r in rows {
            let seq = r.seq.min(i64::MAX as u64) as i64;
            let ts = format_ts(r.ts);
            let c = &r.columns;
            let n = insert.execute(params![
                instance,
                seq,
                ts,
                r.kind,
                r.payload,
                r.prev_hash,
                r.hash,
                c.user,
                c.target,
                c.grant_id,
                c.session_id
            ])?;
            if n == 1 {
                copied.inserted += 1;
                continue;
            }
            let same = held
                .query_row(params![instance, seq], |h| {
                    Ok(h.get::<_, String>(0)? == ts
                        && h.get::<_, String>(1)? == r.kind
                        && h.get::<_, String>(2)? == r.payload
                        && h.get::<_, String>(3)? == r.prev_hash
                        && h.get::<_, String>(4)? == r.hash
                        && h.get::<_, Option<String>>(5)? == c.user
                        && h.get::<_, Option<String>>(6)? == c.target
                        && h.get::<_, Option<String>>(7)? == c.grant_id
                        && h.get::<_, Option<String>>(8)? == c.session_id)
                })
                .optional()?;
            if same != Some(true) {
                copied.conflicts.push(r.seq);
            }
        }
    }
    if let Some(last) = rows.last() {
        tx.execute(
            "INSERT INTO mirror_marks (instance, seq, hash, synced_at) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (instance) DO UPDATE SET seq = excluded.seq, hash = excluded.hash \
             WHERE excluded.seq > mirror_marks.seq",
            params![
                instance,
                last.seq.min(i64::MAX as u64) as i64,
                last.hash,
                synced_at.unwrap_or("")
            ],
        )?;
    }
    if let Some(at) = synced_at {
        tx.execute(
            "INSERT INTO mirror_marks (instance, seq, hash, synced_at) VALUES (?1, 0, '', ?2) \
             ON CONFLICT (instance) DO UPDATE SET synced_at = excluded.synced_at",
            params![instance, at],
        )?;
    }
    tx.commit()?;
    Ok(copied)
}

/// Removes the mirror's rows older than `cut` (the canonical RFC 3339 text the records carry,
/// which compares as text); the marks stay, so pruned rows are not copied again.
pub fn prune_before(conn: &Connection, cut: &str) -> Result<usize, MirrorError> {
    Ok(conn.execute("DELETE FROM audit_events WHERE ts < ?1", [cut])?)
}

/// The instances whose records the mirror copies: every one in the central table but `own`
/// (whose records the auditors read from the local index) (pure).
pub fn others<'a>(instances: &'a [String], own: &'a str) -> impl Iterator<Item = &'a String> {
    instances.iter().filter(move |i| i.as_str() != own)
}

/// This instance's fleet mirror and the task that fills it.
pub struct FleetMirror {
    /// This instance's name: its records are not mirrored (the local index has them).
    own: String,
    store: Arc<PgStore>,
    path: PathBuf,
    /// The one writing connection, kept open so the mirror's WAL files exist for the auditors'
    /// read-only connections.
    conn: Arc<Mutex<Connection>>,
    /// `[audit] retain`: rows older are pruned from the mirror too.
    retain: Option<Duration>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    /// Wakes the task early (an auditor logged in).
    wake: Notify,
}

impl std::fmt::Debug for FleetMirror {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetMirror")
            .field("own", &self.own)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl FleetMirror {
    /// Opens the mirror at `path` (see [`open_writer`]).
    pub fn open(
        own: String,
        store: Arc<PgStore>,
        path: PathBuf,
        retain: Option<Duration>,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<FleetMirror>, MirrorError> {
        let conn = open_writer(&path)?;
        Ok(Arc::new(FleetMirror {
            own,
            store,
            path,
            conn: Arc::new(Mutex::new(conn)),
            retain,
            clock,
            metrics,
            wake: Notify::new(),
        }))
    }

    /// Where the mirror is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// This instance's name (its records are read from the local index).
    pub fn own(&self) -> &str {
        &self.own
    }

    /// Asks the task for a round now (it does not wait for it).
    pub fn nudge(&self) {
        self.wake.notify_one();
    }

    /// Runs `f` on the writing connection on a blocking thread.
    async fn with_conn<T, F>(&self, f: F) -> Result<T, MirrorError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, MirrorError> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut conn)
        })
        .await?
    }

    /// Copies until `shutdown`: a round every [`MIRROR_INTERVAL`] (or when nudged), backing off
    /// to [`MIRROR_RETRY_MAX`] while the store fails.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut wait = MIRROR_INTERVAL;
        let mut caught_up: Option<tokio::time::Instant> = None;
        loop {
            let started = tokio::time::Instant::now();
            let result = tokio::select! {
                _ = shutdown.cancelled() => return,
                result = self.round() => result,
            };
            match result {
                Ok(()) => {
                    wait = MIRROR_INTERVAL;
                    caught_up = Some(started);
                }
                Err(e) => {
                    self.metrics.audit_ship.mirror.errors_total.inc();
                    tracing::warn!(error = %e, retry_in = ?wait, "fleet audit mirror: round failed; auditors see the mirror as it was");
                    wait = (wait * 2).min(MIRROR_RETRY_MAX);
                }
            }
            let age = caught_up.map_or(-1.0, |t| t.elapsed().as_secs_f64());
            self.metrics.audit_ship.mirror.age_seconds.set(age);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
                _ = self.wake.notified() => {}
            }
        }
    }

    /// One round: every other instance brought up to what the central table holds, then the
    /// rows past retention pruned.
    pub async fn round(&self) -> Result<(), MirrorError> {
        let synced_at = format_ts(self.clock.now());
        let instances = self.store.bounded(self.store.central_instances()).await?;
        let mut marks = self.with_conn(|c| marks(c)).await?;
        for instance in others(&instances, &self.own) {
            loop {
                let after = marks.get(instance).copied().unwrap_or(0);
                let rows = self
                    .store
                    .bounded(self.store.central_rows_after(instance, after, MIRROR_BATCH))
                    .await?;
                let last_batch = rows.len() < MIRROR_BATCH as usize;
                let next = rows.last().map_or(after, |r| r.seq);
                let (name, at) = (instance.clone(), last_batch.then(|| synced_at.clone()));
                let copied = self
                    .with_conn(move |c| copy_rows(c, &name, &rows, at.as_deref()))
                    .await?;
                self.metrics
                    .audit_ship
                    .mirror
                    .mirrored_total
                    .inc_by(copied.inserted);
                for seq in &copied.conflicts {
                    self.metrics.audit_ship.mirror.conflicts_total.inc();
                    tracing::error!(instance = %instance, seq, "fleet audit mirror: the central table's record differs from the mirror's copy; the copy is kept (audit verify reports the central one)");
                }
                marks.insert(instance.clone(), next.max(after));
                if last_batch {
                    break;
                }
            }
        }
        if let Some(retain) = self.retain {
            let cut = format_ts(crate::audit::retention::cut(self.clock.now(), retain));
            let pruned = self.with_conn(move |c| prune_before(c, &cut)).await?;
            if pruned > 0 {
                tracing::info!(pruned, "fleet audit mirror: pruned records past retention");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::event::Columns;
    use chrono::{DateTime, Utc};

    fn row(seq: u64, payload: &str) -> CentralRow {
        CentralRow {
            seq,
            ts: DateTime::parse_from_rfc3339("2026-12-07T08:00:00Z")
                .unwrap()
                .with_timezone(&Utc)
                + chrono::Duration::seconds(seq as i64),
            kind: "statement".into(),
            payload: payload.into(),
            prev_hash: format!("{:064x}", seq - 1),
            hash: format!("{:064x}", seq),
            columns: Columns {
                user: Some("alice".into()),
                target: Some("shop".into()),
                grant_id: Some("g_1".into()),
                session_id: Some("s_1".into()),
            },
        }
    }

    fn mirror() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        prepare_schema(&conn).unwrap();
        conn
    }

    fn payload_of(conn: &Connection, seq: i64) -> String {
        conn.query_row(
            "SELECT payload FROM audit_events WHERE instance = 'tb-a' AND seq = ?1",
            [seq],
            |r| r.get(0),
        )
        .unwrap()
    }

    #[test]
    fn copying_is_idempotent_and_moves_the_mark() {
        let mut conn = mirror();
        let rows: Vec<CentralRow> = (1..=3).map(|s| row(s, "{\"sql\":\"SELECT 1\"}")).collect();
        let first = copy_rows(&mut conn, "tb-a", &rows, Some("2026-12-07T09:00:00.000000Z")).unwrap();
        assert_eq!(
            first,
            Copied {
                inserted: 3,
                conflicts: vec![]
            }
        );
        let again = copy_rows(&mut conn, "tb-a", &rows, None).unwrap();
        assert_eq!(
            again,
            Copied {
                inserted: 0,
                conflicts: vec![]
            },
            "the same rows again change nothing"
        );
        assert_eq!(marks(&conn).unwrap().get("tb-a"), Some(&3));
        let synced: String = conn
            .query_row(
                "SELECT synced_at FROM mirror_marks WHERE instance = 'tb-a'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(
            synced, "2026-12-07T09:00:00.000000Z",
            "a batch that is not the last keeps it"
        );
        // an older batch never moves the mark back
        copy_rows(&mut conn, "tb-a", &rows[..1], None).unwrap();
        assert_eq!(marks(&conn).unwrap().get("tb-a"), Some(&3));
    }

    /// The mirror must not silently replace a row it holds with different content (an edit in
    /// the central table): it keeps its copy and reports the seq.
    #[test]
    fn a_row_read_again_with_different_content_is_kept_and_reported() {
        let mut conn = mirror();
        copy_rows(
            &mut conn,
            "tb-a",
            &[row(1, "{\"sql\":\"original\"}"), row(2, "{}")],
            None,
        )
        .unwrap();
        let edited = copy_rows(
            &mut conn,
            "tb-a",
            &[row(1, "{\"sql\":\"edited\"}"), row(2, "{}")],
            None,
        )
        .unwrap();
        assert_eq!(
            edited,
            Copied {
                inserted: 0,
                conflicts: vec![1]
            }
        );
        assert_eq!(payload_of(&conn, 1), "{\"sql\":\"original\"}");
        // the same seq of another instance is another record
        let other = copy_rows(&mut conn, "tb-c", &[row(1, "{\"sql\":\"edited\"}")], None).unwrap();
        assert_eq!(
            other,
            Copied {
                inserted: 1,
                conflicts: vec![]
            }
        );
    }

    #[test]
    fn pruning_keeps_the_marks_so_pruned_rows_are_not_copied_again() {
        let mut conn = mirror();
        let rows: Vec<CentralRow> = (1..=4).map(|s| row(s, "{}")).collect();
        copy_rows(&mut conn, "tb-a", &rows, None).unwrap();
        let cut = format_ts(rows[2].ts);
        assert_eq!(prune_before(&conn, &cut).unwrap(), 2);
        let left: i64 = conn
            .query_row("SELECT count(*) FROM audit_events", [], |r| r.get(0))
            .unwrap();
        assert_eq!(left, 2);
        assert_eq!(marks(&conn).unwrap().get("tb-a"), Some(&4));
    }

    #[test]
    fn another_schema_version_is_rebuilt_and_this_instance_is_not_mirrored() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE audit_events (x); PRAGMA user_version = 99;")
            .unwrap();
        prepare_schema(&conn).unwrap();
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        assert!(marks(&conn).unwrap().is_empty());
        let all = ["tb-a".to_owned(), "tb-b".to_owned(), "tb-c".to_owned()];
        assert_eq!(others(&all, "tb-b").collect::<Vec<_>>(), ["tb-a", "tb-c"]);
    }

    #[test]
    fn the_mirror_metrics_are_exported_under_their_names() {
        let text = Metrics::new().unwrap().render().unwrap();
        for name in [
            "timebox_audit_mirror_age_seconds",
            "timebox_audit_mirrored_total",
            "timebox_audit_mirror_errors_total",
            "timebox_audit_mirror_conflicts_total",
        ] {
            assert!(text.contains(&format!("# TYPE {name} ")), "{name}");
        }
    }
}
