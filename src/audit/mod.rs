//! The audit trail: every connection, statement and grant change, durable, hash-chained and
//! queryable.
//!
//! Data flow: the relay (and the admin API, for grants) builds [`AuditEvent`]s and calls
//! [`AuditLog::submit`] and awaits the [`AuditAck`] (or [`AuditLog::record`]). `submit` redacts and
//! serializes on the caller's task ([`event::prepare`], [`redact`]) and queues the events on a
//! bounded queue (by events: [`QUEUE_CAPACITY`]). `writer.rs` group-commits them — the submitter
//! that finds no flush in progress flushes (at `fsync`, the writer thread does): it assigns `seq`
//! (gapless, in queue order) and `ts`, chains the hashes ([`chain`]), appends the batch to the
//! [`journal`] with one write (and one sync at `fsync`), acks, and hands the records to the
//! [`indexer`] thread, which inserts them into SQLite ([`sqlite`]) many per transaction. [`query`]
//! and [`chain::verify`] read the database for the admin API and the CLI, after waiting for the
//! index to reach every record acknowledged before they started ([`AuditLog::wait_indexed`]). The
//! JSONL export ([`jsonl`]) gets the journal's bytes after the journal.
//!
//! Where records live: `audit.db` in the store's directory (`sqlite://data/timebox.db` →
//! `data/audit.db`), its own SQLite file in WAL mode, and the journal `audit.journal/` beside it
//! (segments are deleted once the database holds their records durably; a clean stop leaves it
//! empty); with `sqlite::memory:` an in-memory database and no journal. Plus `audit.jsonl` when
//! configured. At start — and in the offline tools, `verify_file`/`head_of_file` — records the
//! journal has beyond the database (a crash between the two) are checked against the chain and
//! indexed.
//!
//! With a PostgreSQL store, [`ship`] copies each instance's records from the index to the store's
//! central table and answers fleet-wide reads from it; [`retention`] (`audit.retain`) removes old
//! records there and here, leaving an anchor each chain is verified from.
//!
//! Durability (`audit.durability`), i.e. when `submit`'s ack resolves `Ok`:
//! - `fsync`: the batch is in the journal and `fdatasync`'d (and the JSONL export too, if
//!   configured): the record survives a power loss;
//! - `write`: the batch is in the journal, written with write(2), not synced: the record survives a
//!   crash of timebox (kill -9, panic), not of the machine;
//! - `async`: queued only; records still in the queue are lost if timebox dies.
//!
//! `record` additionally waits for the index, so the caller's own queries see the record.
//!
//! Fail closed: when the queue is full or a write or index has failed, `submit`/`record` return
//! `Err` (callers deny the statement). A failed journal or JSONL write (a full disk) is retried
//! after a bounded backoff ([`RETRY_FIRST`] to [`RETRY_MAX`]), refusing records meanwhile, and the
//! log recovers without a restart; other failures are kept until restart. No level ever drops a
//! record without an error (an `async` record lost to a write error is logged and counted in
//! [`AuditStats::rejected`]). This module must never write a secret: redaction runs before
//! serialization.

pub mod chain;
pub mod event;
mod indexer;
pub mod journal;
pub mod jsonl;
pub mod query;
pub mod redact;
pub mod retention;
pub mod ship;
pub mod sqlite;
mod writer;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::oneshot;

pub use chain::{BadRecord, Head, InstanceReport, VerifyReport};
pub use event::{
    AuditEvent, AuditRecord, AuthFailure, Decision, GrantExtended, GrantIssued, GrantRevoked, SessionEnd,
    SessionStart, Statement, StatementOutcome,
};
pub use query::{AuditFilter, Order, Page};

use crate::clock::{Clock, SystemClock};
pub use crate::config::Durability;
use crate::config::{AuditConfig, ParamLogging, StoreConfig};
pub use indexer::{CHECKPOINT_RECORDS, INDEX_INTERVAL, INDEX_LAG_LIMIT, WAL_LIMIT_BYTES};
use writer::{lock, Shared, Submission};
pub use writer::{RETRY_FIRST, RETRY_MAX};

/// Events the queue holds before `submit` refuses with [`AuditError::QueueFull`].
pub const QUEUE_CAPACITY: usize = 65_536;
/// Most events the writer puts in one transaction.
pub const MAX_BATCH: usize = 16_384;
/// How long a query waits for the index to reach the records acknowledged before it.
pub const INDEX_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
/// The audit database's file name, in the store's directory.
pub const DB_FILE_NAME: &str = "audit.db";

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("audit I/O error on {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the audit queue is full ({capacity} events waiting); refusing to go on unaudited")]
    QueueFull { capacity: usize },
    #[error("the audit log cannot record: {0}")]
    WriterFailed(#[source] Arc<AuditError>),
    #[error("the audit JSONL export {} fell too far behind after failed writes; it catches up at restart", .0.display())]
    JsonlBacklog(PathBuf),
    #[error("the audit log is shut down")]
    Closed,
    #[error("audit schema version {found} is newer than this timebox understands ({supported})")]
    SchemaTooNew { found: i64, supported: i64 },
    #[error("no audit database at {}", .0.display())]
    NoDatabase(PathBuf),
    #[error("{} is not a timebox audit database", .0.display())]
    NotAnAuditDatabase(PathBuf),
    #[error("corrupt audit record {seq}: {problem}")]
    Corrupt { seq: u64, problem: String },
    #[error("{field}: {message}")]
    InvalidFilter { field: &'static str, message: String },
    #[error("cannot start the audit writer thread: {0}")]
    Thread(#[source] std::io::Error),
    /// A blocking audit read panicked or was cancelled.
    #[error("audit task failed: {0}")]
    Task(#[source] tokio::task::JoinError),
    /// The indexer thread is gone, so records can no longer reach the index.
    #[error("audit task failed: the audit indexer stopped")]
    IndexerStopped,
    #[error("another timebox process is writing the audit journal in {}", .0.display())]
    JournalBusy(PathBuf),
    #[error("the audit index is behind (record {indexed} of {target}); try again shortly")]
    IndexLagging { target: u64, indexed: u64 },
    /// The central audit table in the PostgreSQL store failed (fleet-wide reads, shipping,
    /// retention).
    #[error("central audit: {0}")]
    Central(#[source] crate::store::StoreError),
}

/// Everything [`AuditLog::open_with`] needs; [`AuditOptions::from_config`] fills it from the config.
#[derive(Debug, Clone)]
pub struct AuditOptions {
    /// The database file; `None` for an in-memory database (tests).
    pub db: Option<PathBuf>,
    pub jsonl: Option<PathBuf>,
    pub jsonl_max_bytes: u64,
    pub jsonl_keep: usize,
    pub durability: Durability,
    pub params: ParamLogging,
    pub queue_capacity: usize,
    pub max_batch: usize,
    /// Size at which the journal starts a new segment ([`journal::SEGMENT_BYTES`]).
    pub segment_bytes: u64,
    /// Source of commit times.
    pub clock: Arc<dyn Clock>,
}

impl AuditOptions {
    pub fn from_config(config: &AuditConfig, store: &StoreConfig) -> AuditOptions {
        AuditOptions {
            db: db_path_for(store),
            jsonl: config.jsonl.clone(),
            jsonl_max_bytes: config.jsonl_max_bytes,
            jsonl_keep: config.jsonl_keep,
            durability: config.durability,
            params: config.params,
            queue_capacity: QUEUE_CAPACITY,
            max_batch: MAX_BATCH,
            segment_bytes: journal::SEGMENT_BYTES,
            clock: Arc::new(SystemClock),
        }
    }
}

/// Where the audit database of a store lives: `audit.db` beside a SQLite store file; in memory for
/// an in-memory store; in `[audit] dir` for a PostgreSQL store (the audit stays on this instance's
/// disk; the config refuses a PostgreSQL store without that directory).
pub fn db_path_for(store: &StoreConfig) -> Option<PathBuf> {
    match store {
        StoreConfig::Postgres(pg) => Some(pg.audit_dir.join(DB_FILE_NAME)),
        StoreConfig::Sqlite { path } => Some(match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.join(DB_FILE_NAME),
            _ => PathBuf::from(DB_FILE_NAME),
        }),
        StoreConfig::SqliteMemory => None,
    }
}

/// Counters for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditStats {
    /// Events written.
    pub committed: u64,
    /// Transactions (group commits) written.
    pub batches: u64,
    /// Events refused: queue full, or lost to a write failure.
    pub rejected: u64,
    pub queue_depth: usize,
    /// Whether the log refuses records: a failure kept until restart, or a failed write being
    /// retried.
    pub failed: bool,
}

/// The handle the relay and the admin API write through. Cheap to clone (a queue sender and an
/// `Arc`).
#[derive(Clone)]
pub struct AuditLog {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("db", &self.shared.db_path)
            .field("durability", &self.shared.durability)
            .field("queue_depth", &self.queue_depth())
            .finish_non_exhaustive()
    }
}

/// Resolves when a submission is as durable as the level promises. `Unpin`, so it can sit in a
/// `select!` loop.
#[must_use = "an audit record is only durable once its ack resolves Ok"]
pub struct AuditAck {
    inner: AckInner,
}

enum AckInner {
    Ready(Option<Result<(), AuditError>>),
    Waiting(oneshot::Receiver<Result<(), AuditError>>),
}

impl AuditAck {
    fn ready(result: Result<(), AuditError>) -> AuditAck {
        AuditAck {
            inner: AckInner::Ready(Some(result)),
        }
    }
}

impl Future for AuditAck {
    type Output = Result<(), AuditError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.inner {
            AckInner::Ready(result) => Poll::Ready(result.take().unwrap_or(Err(AuditError::Closed))),
            // The writer dropped the ack without answering: it stopped (or panicked).
            AckInner::Waiting(rx) => Pin::new(rx)
                .poll(cx)
                .map(|r| r.unwrap_or(Err(AuditError::Closed))),
        }
    }
}

/// Owns the writer thread; [`AuditWriterHandle::shutdown`] flushes the queue and stops it.
pub struct AuditWriterHandle {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for AuditWriterHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditWriterHandle").finish_non_exhaustive()
    }
}

impl AuditWriterHandle {
    /// Refuses new submissions, writes (and syncs) everything queued, then stops the thread.
    pub async fn shutdown(mut self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        writer::stop(&self.shared);
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

impl Drop for AuditWriterHandle {
    /// Dropped without `shutdown` (a test, a failed start): the writer thread still flushes and
    /// stops; nothing waits for it.
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        writer::stop(&self.shared);
    }
}

impl AuditLog {
    /// Opens the sinks the config names (database beside the store, see [`db_path_for`]; JSONL if
    /// configured), recovers the chain head and starts the writer thread.
    pub fn open(
        config: &AuditConfig,
        store: &StoreConfig,
    ) -> Result<(AuditLog, AuditWriterHandle), AuditError> {
        Self::open_with(AuditOptions::from_config(config, store))
    }

    /// [`AuditLog::open`] with every knob explicit (tests, benchmarks).
    pub fn open_with(opts: AuditOptions) -> Result<(AuditLog, AuditWriterHandle), AuditError> {
        let mut conn = sqlite::open_writer(opts.db.as_deref())?;
        let fsync = opts.durability == Durability::Fsync;
        let journal = match &opts.db {
            Some(db) => Some(recover(&mut conn, db, opts.segment_bytes, fsync)?),
            None => None,
        };
        let (seq, prev, last_ts) = sqlite::read_head(&conn)?;
        let jsonl = match &opts.jsonl {
            None => None,
            Some(path) => {
                let (mut sink, last) =
                    jsonl::JsonlSink::open(path, opts.jsonl_max_bytes, opts.jsonl_keep, fsync)?;
                catch_up_jsonl(&conn, &mut sink, last, seq)?;
                Some(sink)
            }
        };
        let conn = Arc::new(Mutex::new(conn));
        let reader = match &opts.db {
            Some(path) => Arc::new(Mutex::new(sqlite::open_reader(path)?)),
            None => conn.clone(),
        };
        let core = writer::Core {
            journal,
            jsonl,
            clock: opts.clock.clone(),
            seq,
            prev,
            last_time: last_ts
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
                .map(|t| t.with_timezone(&chrono::Utc)),
            buf: Vec::new(),
            ends: Vec::new(),
            index_tx: None,
        };
        let shared = Arc::new(Shared::new(
            &opts,
            core,
            Head {
                seq,
                hash: hex::encode(prev),
            },
            reader,
        ));
        let thread = writer::start(&shared, conn)?;
        tracing::info!(db = ?opts.db, jsonl = ?opts.jsonl, durability = ?opts.durability, seq,
            "audit log open");
        Ok((
            AuditLog {
                shared: shared.clone(),
            },
            AuditWriterHandle {
                shared,
                thread: Some(thread),
            },
        ))
    }

    /// Queues events and resolves when they are as durable as the configured level promises
    /// (see [`AuditLog::submit`]) and in the database, so queries see them. For the admin API and
    /// other low-rate callers; the relay uses `submit` and waits for durability only.
    pub async fn record(&self, events: Vec<AuditEvent>) -> Result<(), AuditError> {
        self.record_durable(events).await?;
        let target = self.head().seq;
        self.wait_indexed().await?;
        match self.shared.index_failure() {
            // Durable in the journal, but the index failed: not what `record` promises.
            Some(failure) if *self.shared.indexed.borrow() < target => Err(AuditError::WriterFailed(failure)),
            _ => Ok(()),
        }
    }

    /// Queues events and resolves when they are as durable as the level promises, without waiting
    /// for the index (the relay's way: session start, and what precedes a Terminate).
    pub async fn record_durable(&self, events: Vec<AuditEvent>) -> Result<(), AuditError> {
        self.submit(events)?.await
    }

    /// Waits until every record durable when called is in the database (queries see it). Returns at
    /// once when the log has failed (queries then show what the database has).
    pub async fn wait_indexed(&self) -> Result<(), AuditError> {
        let target = self.head().seq;
        let mut rx = self.shared.indexed.subscribe();
        if *rx.borrow() >= target || self.shared.index_failure().is_some() {
            return Ok(());
        }
        // The indexer gathers records for a while before committing; ask it not to wait.
        self.shared.request_index_flush();
        let shared = self.shared.clone();
        let wait = async {
            loop {
                if *rx.borrow_and_update() >= target || shared.index_failure().is_some() {
                    return Ok(());
                }
                // Poll the failure flag now and then: a failed indexer never reaches the target.
                match tokio::time::timeout(Duration::from_millis(200), rx.changed()).await {
                    Ok(Ok(())) | Err(_) => {}
                    Ok(Err(_)) => return Err(AuditError::Closed),
                }
            }
        };
        match tokio::time::timeout(INDEX_WAIT, wait).await {
            Ok(result) => result,
            Err(_) => Err(AuditError::IndexLagging {
                target,
                indexed: *self.shared.indexed.borrow(),
            }),
        }
    }

    /// Queues events without waiting; await the returned ack before acting on them. Events of one
    /// call get consecutive seqs; calls are numbered in the order they reach the queue.
    pub fn submit(&self, events: Vec<AuditEvent>) -> Result<AuditAck, AuditError> {
        self.check_open()?;
        if events.is_empty() {
            return Ok(AuditAck::ready(Ok(())));
        }
        let n = events.len();
        let full = || {
            self.shared.rejected.fetch_add(n as u64, Ordering::Relaxed);
            AuditError::QueueFull {
                capacity: self.shared.capacity,
            }
        };
        if n > self.shared.capacity {
            return Err(full());
        }
        let prepared: Vec<_> = events
            .into_iter()
            .map(|e| event::prepare(e, self.shared.params))
            .collect();
        match self.shared.permits.try_acquire_many(n as u32) {
            Ok(permit) => permit.forget(),
            Err(_) => return Err(full()),
        }
        let (ack, ack_tx) = match self.shared.durability {
            Durability::Async => (AuditAck::ready(Ok(())), None),
            Durability::Fsync | Durability::Write => {
                let (tx, rx) = oneshot::channel();
                (
                    AuditAck {
                        inner: AckInner::Waiting(rx),
                    },
                    Some(tx),
                )
            }
        };
        let submission = Submission {
            events: prepared,
            ack: ack_tx,
        };
        if let Err(e) = writer::enqueue(&self.shared, submission) {
            self.shared.permits.add_permits(n);
            return Err(e);
        }
        Ok(ack)
    }

    fn check_open(&self) -> Result<(), AuditError> {
        if let Some(failure) = self.shared.refusal() {
            return Err(AuditError::WriterFailed(failure));
        }
        if self.shared.closed.load(Ordering::SeqCst) {
            return Err(AuditError::Closed);
        }
        Ok(())
    }

    pub fn durability(&self) -> Durability {
        self.shared.durability
    }

    /// Records durable (in the journal) but not yet in the database queries read.
    pub fn index_lag(&self) -> u64 {
        self.head().seq.saturating_sub(*self.shared.indexed.borrow())
    }

    /// Events queued and not yet written.
    pub fn queue_depth(&self) -> usize {
        self.shared
            .capacity
            .saturating_sub(self.shared.permits.available_permits())
    }

    pub fn stats(&self) -> AuditStats {
        AuditStats {
            committed: self.shared.committed.load(Ordering::Relaxed),
            batches: self.shared.batches.load(Ordering::Relaxed),
            rejected: self.shared.rejected.load(Ordering::Relaxed),
            queue_depth: self.queue_depth(),
            failed: self.shared.refusal().is_some(),
        }
    }

    /// The last committed record (what an auditor anchors).
    pub fn head(&self) -> Head {
        lock(&self.shared.head).clone()
    }

    /// The database file, `None` when in memory.
    pub fn db_path(&self) -> Option<&Path> {
        self.shared.db_path.as_deref()
    }

    /// One page of records matching `filter`.
    pub async fn query(&self, filter: AuditFilter) -> Result<Page, AuditError> {
        self.wait_indexed().await?;
        self.with_reader(move |conn| query::query(conn, &filter)).await
    }

    /// Walks the whole chain, anchored at the writer's current head (so a truncated tail is caught)
    /// and at `anchors` (heads an auditor noted earlier).
    pub async fn verify(&self, anchors: Vec<Head>) -> Result<VerifyReport, AuditError> {
        let mut anchors = anchors;
        let head = self.head();
        self.wait_indexed().await?;
        anchors.push(head);
        self.with_reader(move |conn| chain::verify(conn, &anchors)).await
    }

    /// The last record in the queryable index (what the shipper may read).
    pub fn indexed(&self) -> u64 {
        *self.shared.indexed.borrow()
    }

    /// Deletes the index rows older than `cut` with seq ≤ `through` and records the anchor
    /// (retention; see [`sqlite::prune_before`]). On its own connection, so queries go on.
    pub(crate) async fn prune_before(
        &self,
        cut: String,
        through: u64,
    ) -> Result<(u64, Option<Head>), AuditError> {
        match self.shared.db_path.clone() {
            Some(path) => tokio::task::spawn_blocking(move || {
                let mut conn = sqlite::open_writer(Some(&path))?;
                sqlite::prune_before(&mut conn, &cut, through)
            })
            .await
            .map_err(AuditError::Task)?,
            None => {
                let reader = self.shared.reader.clone();
                tokio::task::spawn_blocking(move || sqlite::prune_before(&mut lock(&reader), &cut, through))
                    .await
                    .map_err(AuditError::Task)?
            }
        }
    }

    async fn with_reader<T, F>(&self, f: F) -> Result<T, AuditError>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Connection) -> Result<T, AuditError> + Send + 'static,
    {
        let reader = self.shared.reader.clone();
        tokio::task::spawn_blocking(move || f(&lock(&reader)))
            .await
            .map_err(AuditError::Task)?
    }
}

/// Brings the database up to date with its journal: indexes (after checking them against the
/// chain) the records the journal has beyond the database's head — a crash between the two — makes
/// them durable and deletes spent segments. Returns the open journal (its lock held).
fn recover(
    conn: &mut rusqlite::Connection,
    db: &Path,
    segment_bytes: u64,
    fsync: bool,
) -> Result<journal::Journal, AuditError> {
    let (db_seq, db_hash, _) = sqlite::read_head(conn)?;
    let dir = journal::dir_for(db);
    let (journal, pending) = journal::Journal::open(&dir, db_seq, db_hash, segment_bytes, fsync)?;
    if let Some(last) = pending.last().map(|r| r.seq) {
        let rows: Vec<sqlite::IndexRow> = pending
            .into_iter()
            .map(|r| sqlite::IndexRow {
                seq: r.seq,
                ts: Arc::from(r.ts),
                kind: r.kind,
                payload: r.payload,
                prev_hash: chain::HexHash::new(&r.prev_hash),
                hash: chain::HexHash::new(&r.hash),
                columns: r.columns,
            })
            .collect();
        sqlite::insert_rows(conn, &rows)?;
        tracing::warn!(
            from = db_seq + 1,
            to = last,
            "audit: indexed records the database lacked, from the journal (timebox stopped without flushing)"
        );
    }
    let head = sqlite::read_head(conn)?.0;
    if indexer::checkpoint_truncate(conn)? {
        journal::remove_through(&dir, head)?;
    }
    Ok(journal)
}

/// What an offline tool sees of a database file and its journal.
struct Offline {
    conn: rusqlite::Connection,
    /// A journal that does not fit the database (records missing between them, an edited line),
    /// to be reported by `verify` rather than returned as an error.
    problem: Option<BadRecord>,
    /// Records the journal holds beyond the database, checked against the chain but not indexed
    /// (a read-only database file).
    unindexed: Vec<journal::JournalRecord>,
}

/// Opens a database file offline. When the journal holds records beyond the database (timebox
/// stopped without flushing), they are checked against the chain and — unless a running timebox
/// owns the journal, or the database file is read-only — indexed first, as `timebox serve` does at
/// start; a read-only database is left untouched and the checked records are returned instead.
fn open_offline(path: &Path) -> Result<Offline, AuditError> {
    if !path.is_file() {
        return Err(AuditError::NoDatabase(path.to_owned()));
    }
    let dir = journal::dir_for(path);
    let has_records = journal::segments(&dir)?
        .iter()
        .any(|(_, p)| std::fs::metadata(p).map(|m| m.len() > 0).unwrap_or(false));
    let as_problem = |e: AuditError| match e {
        AuditError::Corrupt { seq, problem } => Ok(BadRecord {
            seq,
            problem,
            instance: None,
        }),
        other => Err(other),
    };
    let mut offline = Offline {
        conn: sqlite::open_reader(path)?,
        problem: None,
        unindexed: Vec::new(),
    };
    if !has_records {
        return Ok(offline);
    }
    let read_only = std::fs::metadata(path)
        .map(|m| m.permissions().readonly())
        .unwrap_or(true);
    if read_only {
        let (seq, hash, _) = sqlite::read_head(&offline.conn)?;
        match journal::pending_records(&dir, seq, hash) {
            Ok(records) => offline.unindexed = records,
            Err(e) => offline.problem = Some(as_problem(e)?),
        }
        return Ok(offline);
    }
    let mut conn = sqlite::open_writer(Some(path))?;
    match recover(&mut conn, path, journal::SEGMENT_BYTES, true) {
        Ok(_journal) => {}
        // A live timebox indexes its journal itself.
        Err(AuditError::JournalBusy(_)) => {}
        Err(e) => offline.problem = Some(as_problem(e)?),
    }
    offline.conn = sqlite::open_reader(path)?;
    Ok(offline)
}

/// Verifies an audit database file offline (`timebox audit verify --db`), optionally against
/// anchored heads; the journal's records beyond the database are checked too (see
/// [`open_offline`]).
pub fn verify_file(path: &Path, anchors: &[Head]) -> Result<VerifyReport, AuditError> {
    let offline = open_offline(path)?;
    let first_unindexed = offline.unindexed.first().map_or(u64::MAX, |r| r.seq);
    let (in_db, in_journal): (Vec<Head>, Vec<Head>) =
        anchors.iter().cloned().partition(|a| a.seq < first_unindexed);
    let mut report = chain::verify(&offline.conn, &in_db)?;
    if report.first_bad.is_none() {
        if let Some(bad) = offline.problem {
            report.first_bad = Some(bad);
        }
    }
    if report.first_bad.is_none() {
        if let Some(last) = offline.unindexed.last() {
            report.records += offline.unindexed.len() as u64;
            report.head = Head {
                seq: last.seq,
                hash: hex::encode(last.hash),
            };
        }
        for a in &in_journal {
            let found = offline.unindexed.iter().find(|r| r.seq == a.seq);
            let problem = match found {
                None => Some(format!(
                    "the anchored record {} is missing: the log ends at {} (truncated)",
                    a.seq, report.head.seq
                )),
                Some(r) if hex::encode(r.hash) != a.hash => Some(format!(
                    "hash {} differs from the anchored head {a}: the log was rewritten",
                    hex::encode(r.hash)
                )),
                Some(_) => None,
            };
            if let Some(problem) = problem {
                report.first_bad = Some(BadRecord {
                    seq: a.seq,
                    problem,
                    instance: None,
                });
                break;
            }
        }
    }
    report.ok = report.first_bad.is_none();
    Ok(report)
}

/// The head of an audit database file (with its journal, as for [`verify_file`]).
pub fn head_of_file(path: &Path) -> Result<Head, AuditError> {
    let offline = open_offline(path)?;
    match offline.unindexed.last() {
        Some(last) => Ok(Head {
            seq: last.seq,
            hash: hex::encode(last.hash),
        }),
        None => sqlite::head(&offline.conn),
    }
}

/// Appends to the JSONL file the records the database has and it lacks (a crash between the
/// database commit and the JSONL write).
fn catch_up_jsonl(
    conn: &rusqlite::Connection,
    sink: &mut jsonl::JsonlSink,
    last_in_file: Option<u64>,
    db_seq: u64,
) -> Result<(), AuditError> {
    let Some(last) = last_in_file else { return Ok(()) };
    if last > db_seq {
        tracing::warn!(
            jsonl_seq = last,
            db_seq,
            "the audit JSONL is ahead of the audit database"
        );
        return Ok(());
    }
    let mut from = last + 1;
    while from <= db_seq {
        let to = (from + 9_999).min(db_seq);
        let mut buf = Vec::new();
        let mut ends = Vec::new();
        for r in sqlite::raw_records(conn, from, to)? {
            jsonl::format_line(&mut buf, r.seq, &r.ts, &r.kind, &r.payload, &r.prev_hash, &r.hash);
            ends.push(buf.len());
        }
        sink.append(&buf, &ends)?;
        from = to + 1;
    }
    if last < db_seq {
        sink.sync()?;
        tracing::info!(
            from = last + 1,
            to = db_seq,
            "audit JSONL caught up with the database"
        );
    }
    Ok(())
}
