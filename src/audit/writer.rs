//! The group-commit writer and the indexer: two dedicated threads (never tokio workers) behind the
//! queue, plus a checkpointer.
//!
//! The **writer** (`timebox-audit`) blocks for the first submission, drains everything already
//! queued (up to `max_batch` events), numbers the events in queue order, chains their hashes and
//! appends their lines to the journal ([`super::journal`]) with one `write(2)` — at the `fsync`
//! level followed by one `fdatasync` — then acks the batch and hands its records to the indexer.
//! Syncing one batch overlaps queueing the next, so under load batches grow and the sync cost is
//! shared. Acks per level:
//!
//! - `fsync`: after the journal's `fdatasync` (and the JSONL export's, when configured);
//! - `write`: after the journal's `write(2)`: the record survives a crash of timebox, not of the
//!   machine;
//! - `async`: at enqueue ([`super::AuditLog::submit`]).
//!
//! The **indexer** (`timebox-audit-index`) inserts what the writer handed it into SQLite — one
//! transaction per [`INDEX_INTERVAL`] of records, or at once when a query waits for it — with
//! `synchronous=OFF`: the journal is the durable
//! copy until a segment is deleted, which happens only after the indexer has fsync'd the database's
//! WAL past the segment's last record. Queries wait for the indexer to reach the head they start at
//! ([`super::AuditLog::query`]), so they never miss an acknowledged record. When the index falls
//! more than [`INDEX_LAG_LIMIT`] records behind, the writer waits for it (back-pressure through the
//! bounded queue, never unbounded memory).
//!
//! Checkpoints (copying SQLite's WAL into the database file) are not left to SQLite
//! (`wal_autocheckpoint=0`): every [`CHECKPOINT_RECORDS`] records the [`Checkpointer`] thread runs a
//! passive checkpoint on its own connection with `synchronous=FULL` (so SQLite fsyncs the WAL before
//! copying and the database after), and past [`WAL_LIMIT_BYTES`] the indexer checkpoints and
//! truncates the WAL itself, between transactions. At shutdown the indexer checkpoints everything
//! with `FULL` and the journal's segments are deleted.
//!
//! On any write, sync or index error the failure is kept in [`Shared::failure`]; the batch's
//! submitters and every later one get an error (fail closed), and it is logged; no event is dropped
//! without an error reaching someone. It must never write out of queue order or reuse a seq.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};

use super::chain::{format_ts, record_hash, Head, HexHash};
use super::event::PreparedEvent;
use super::journal::{self, Journal};
use super::jsonl::{format_line, JsonlSink};
use super::sqlite::{insert_rows, IndexRow};
use super::AuditError;
use crate::clock::Clock;
use crate::config::{Durability, ParamLogging};

/// Records indexed between two passive checkpoints (about 50 MB of WAL).
pub const CHECKPOINT_RECORDS: usize = 65_536;
/// The WAL size past which the indexer checkpoints and truncates it itself (bounded disk use).
pub const WAL_LIMIT_BYTES: u64 = 64 * 1024 * 1024;
/// Records the index may lag behind the journal before the writer waits for it.
pub const INDEX_LAG_LIMIT: u64 = 65_536;
/// Most records the indexer puts in one transaction.
const MAX_INDEX_BATCH: usize = 65_536;
/// How long the indexer gathers records before it commits them, unless a query is waiting
/// ([`Msg::FlushIndex`]): a SQLite commit writes whole pages of the table and of each index, so
/// committing every few records costs several page writes per record, and a commit per interval
/// costs about the records' own bytes.
pub const INDEX_INTERVAL: Duration = Duration::from_millis(50);

/// Size of the database's WAL file (0 when there is none).
fn wal_len(db: Option<&std::path::Path>) -> u64 {
    let Some(db) = db else { return 0 };
    std::fs::metadata(super::sqlite::wal_path(db))
        .map(|m| m.len())
        .unwrap_or(0)
}

type Ack = oneshot::Sender<Result<(), AuditError>>;

/// What submitters send the writer.
pub(crate) enum Msg {
    Events(Submission),
    /// Write everything queued before this, then stop; the sender is told when done.
    Shutdown(oneshot::Sender<()>),
    /// Someone waits for the index (a query): the indexer should commit what it holds now.
    FlushIndex,
}

/// One `submit` call: its events and, unless the level is `async`, who to tell when they are durable.
pub(crate) struct Submission {
    pub events: Vec<PreparedEvent>,
    pub ack: Option<Ack>,
}

/// State shared by every [`super::AuditLog`] clone, the writer, the indexer and the handle.
pub(crate) struct Shared {
    pub durability: Durability,
    pub params: ParamLogging,
    pub capacity: usize,
    /// One permit per queued event: bounds the queue by events, not submissions. The writer returns
    /// a batch's permits after it is written.
    pub permits: Semaphore,
    /// Set once, at the first write error; every later submit fails with it.
    pub failure: OnceLock<Arc<AuditError>>,
    /// Set by shutdown; later submits fail.
    pub closed: AtomicBool,
    /// The last durable record (in the journal).
    pub head: Mutex<Head>,
    pub committed: AtomicU64,
    pub batches: AtomicU64,
    pub rejected: AtomicU64,
    /// The last record in the database (queries wait on it).
    pub indexed: watch::Sender<u64>,
    /// Wakes the writer's back-pressure wait when `indexed` moves (or the log fails); the mutex
    /// only orders that wake-up after the writer's check.
    pub indexed_lock: Mutex<()>,
    pub indexed_changed: Condvar,
    /// The last seq of the newest closed journal segment (the indexer deletes segments behind it).
    pub closed_through: AtomicU64,
    /// Connection for queries and verification (the writer's own one for an in-memory database).
    pub reader: Arc<Mutex<Connection>>,
    pub db_path: Option<std::path::PathBuf>,
}

impl Shared {
    fn set_indexed(&self, seq: u64) {
        self.indexed.send_replace(seq);
        let _guard = lock(&self.indexed_lock);
        self.indexed_changed.notify_all();
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave SQLite inconsistent (transactions roll back).
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) struct Writer {
    pub shared: Arc<Shared>,
    pub rx: mpsc::UnboundedReceiver<Msg>,
    /// `None` for an in-memory database (tests): records go to the indexer only.
    pub journal: Option<Journal>,
    pub jsonl: Option<JsonlSink>,
    pub clock: Arc<dyn Clock>,
    pub max_batch: usize,
    /// The chain head as the writer continues it.
    pub seq: u64,
    pub prev: [u8; 32],
    /// Commit times never go backwards, so `ts` order follows `seq` order.
    pub last_time: Option<DateTime<Utc>>,
    /// Reused journal buffer, JSONL buffer and line ends.
    pub buf: Vec<u8>,
    pub jsonl_buf: Vec<u8>,
    pub ends: Vec<usize>,
    /// The indexer's queue and thread.
    pub indexer: Option<(
        std::sync::mpsc::Sender<Vec<IndexRow>>,
        std::thread::JoinHandle<()>,
    )>,
}

/// Records the first failure (later ones are logged only) and returns the one that counts.
fn fail(shared: &Shared, e: AuditError, what: &str) -> Arc<AuditError> {
    let e = Arc::new(e);
    tracing::error!(error = %e, "audit {what} failed: refusing every further record until timebox restarts");
    let _ = shared.failure.set(e.clone());
    // Wake a writer waiting for the index.
    shared.indexed_changed.notify_all();
    shared.failure.get().cloned().unwrap_or(e)
}

/// Runs passive checkpoints on its own `synchronous=FULL` connection when the indexer asks.
pub(crate) struct Checkpointer {
    pub shared: Arc<Shared>,
    pub rx: std::sync::mpsc::Receiver<()>,
    pub conn: Connection,
}

impl Checkpointer {
    pub fn run(self) {
        while self.rx.recv().is_ok() {
            while self.rx.try_recv().is_ok() {}
            match self
                .conn
                .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
            {
                Ok(()) => {}
                // Another connection (an auditor's sqlite3 shell) is checkpointing: next time.
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if matches!(
                        e.code,
                        rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                    ) =>
                {
                    tracing::debug!("audit checkpoint skipped: the database is busy");
                }
                Err(e) => {
                    fail(&self.shared, e.into(), "checkpoint");
                }
            }
        }
    }
}

/// Copies the whole WAL into the database (fsync'd, `synchronous=FULL` for the duration) and
/// truncates it. `Ok(true)` when it completed; `Ok(false)` when a reader holding an old snapshot
/// made it give up (try again later).
pub(crate) fn checkpoint_truncate(conn: &Connection) -> Result<bool, AuditError> {
    conn.pragma_update(None, "synchronous", "FULL")?;
    let busy = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get::<_, i64>(0));
    conn.pragma_update(None, "synchronous", "OFF")?;
    Ok(busy? == 0)
}

/// Inserts the records the writer hands over into SQLite, many per transaction; checkpoints; deletes
/// journal segments the database holds durably.
pub(crate) struct Indexer {
    pub shared: Arc<Shared>,
    pub rx: std::sync::mpsc::Receiver<Vec<IndexRow>>,
    pub conn: Arc<Mutex<Connection>>,
    pub journal_dir: Option<PathBuf>,
    /// Records since the checkpointer was last woken.
    pub since_checkpoint: usize,
    /// The checkpoint thread (`None` in memory).
    pub checkpointer: Option<(std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>)>,
    /// Segments closed through this seq have been deleted.
    pub removed_through: u64,
}

impl Indexer {
    pub fn run(mut self) {
        let mut rows: Vec<IndexRow> = Vec::new();
        while let Ok(first) = self.rx.recv() {
            rows.clear();
            // An empty hand-off is a flush request: commit what is here without gathering more.
            let mut flush = first.is_empty();
            rows.extend(first);
            let deadline = std::time::Instant::now() + INDEX_INTERVAL;
            while !flush && rows.len() < MAX_INDEX_BATCH {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                match self.rx.recv_timeout(left) {
                    Ok(more) => {
                        flush = more.is_empty();
                        rows.extend(more);
                    }
                    Err(_) => break,
                }
            }
            while rows.len() < MAX_INDEX_BATCH {
                match self.rx.try_recv() {
                    Ok(more) => rows.extend(more),
                    Err(_) => break,
                }
            }
            if self.shared.failure.get().is_some() {
                continue;
            }
            let Some(last) = rows.last().map(|r| r.seq) else {
                continue;
            };
            let result = insert_rows(&mut lock(&self.conn), &rows);
            if let Err(e) = result {
                fail(&self.shared, e, "index");
                continue;
            }
            self.shared.set_indexed(last);
            self.after_commit(rows.len(), last);
        }
        if let Some((tx, thread)) = self.checkpointer.take() {
            drop(tx);
            let _ = thread.join();
        }
        if self.shared.db_path.is_some() {
            // Clean stop: everything into the database file, durably; then the journal is spent.
            match checkpoint_truncate(&lock(&self.conn)) {
                Ok(true) if self.shared.failure.get().is_none() => {
                    if let Some(dir) = &self.journal_dir {
                        if let Err(e) = journal::remove_all(dir) {
                            tracing::error!(error = %e, "audit journal: removing spent segments failed");
                        }
                    }
                }
                Ok(_) => tracing::warn!("audit database: final checkpoint incomplete; the journal is kept"),
                Err(e) => tracing::error!(error = %e, "audit database: final checkpoint failed"),
            }
        }
    }

    fn after_commit(&mut self, n: usize, last: u64) {
        self.since_checkpoint += n;
        // Passive checkpoints on another connection cannot finish while this indexer keeps
        // appending, so under sustained load the WAL would grow without bound: past
        // WAL_LIMIT_BYTES the indexer checkpoints itself, between transactions, and truncates it.
        if wal_len(self.shared.db_path.as_deref()) > WAL_LIMIT_BYTES {
            self.since_checkpoint = 0;
            match checkpoint_truncate(&lock(&self.conn)) {
                Ok(true) => tracing::debug!("audit WAL checkpointed and truncated"),
                Ok(false) => {
                    tracing::debug!("audit WAL checkpoint postponed: a reader holds an old snapshot")
                }
                Err(e) => {
                    tracing::warn!(error = %e, "audit WAL checkpoint failed; retrying after the next batch")
                }
            }
        } else if self.since_checkpoint >= CHECKPOINT_RECORDS {
            self.since_checkpoint = 0;
            if let Some((tx, _)) = &self.checkpointer {
                let _ = tx.send(());
            }
        }
        let closed = self.shared.closed_through.load(Ordering::Acquire);
        if let (Some(dir), Some(db)) = (&self.journal_dir, &self.shared.db_path) {
            if closed > self.removed_through && last >= closed {
                // The database's WAL holds everything through `last`: make it durable, then the
                // journal's closed segments are no longer the only durable copy.
                let wal = super::sqlite::wal_path(db);
                let synced = match std::fs::File::open(&wal) {
                    Ok(f) => f.sync_data(),
                    // No WAL: a checkpoint just moved everything into the (synced) database.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(e),
                };
                match synced {
                    Ok(()) => match journal::remove_through(dir, last) {
                        Ok(n) => {
                            self.removed_through = closed;
                            tracing::debug!(removed = n, through = last, "audit journal segments removed");
                        }
                        Err(e) => tracing::warn!(error = %e, "audit journal: removing segments failed"),
                    },
                    Err(e) => tracing::warn!(error = %e, "audit WAL sync failed; journal segments kept"),
                }
            }
        }
    }
}

impl Writer {
    pub fn run(mut self) {
        let mut done: Vec<oneshot::Sender<()>> = Vec::new();
        while let Some(first) = self.rx.blocking_recv() {
            let mut batch = Vec::new();
            let mut events = 0;
            let mut flush_index = false;
            match first {
                Msg::Events(s) => {
                    events += s.events.len();
                    batch.push(s);
                }
                Msg::Shutdown(tx) => done.push(tx),
                Msg::FlushIndex => flush_index = true,
            }
            while done.is_empty() && events < self.max_batch {
                match self.rx.try_recv() {
                    Ok(Msg::Events(s)) => {
                        events += s.events.len();
                        batch.push(s);
                    }
                    Ok(Msg::Shutdown(tx)) => done.push(tx),
                    Ok(Msg::FlushIndex) => flush_index = true,
                    Err(_) => break,
                }
            }
            self.commit(batch);
            if flush_index {
                if let Some((tx, _)) = &self.indexer {
                    let _ = tx.send(Vec::new());
                }
            }
            if !done.is_empty() {
                break;
            }
        }
        // Shutdown (or every sender gone): refuse new submissions, write what raced the close.
        self.rx.close();
        loop {
            let mut batch = Vec::new();
            let mut events = 0;
            while events < self.max_batch {
                match self.rx.try_recv() {
                    Ok(Msg::Events(s)) => {
                        events += s.events.len();
                        batch.push(s);
                    }
                    Ok(Msg::Shutdown(tx)) => done.push(tx),
                    Ok(Msg::FlushIndex) => {}
                    Err(_) => break,
                }
            }
            if batch.is_empty() {
                break;
            }
            self.commit(batch);
        }
        if let Some(journal) = &self.journal {
            if let Err(e) = journal.sync() {
                tracing::error!(error = %e, "audit journal: final sync failed");
            }
        }
        if let Some(sink) = &self.jsonl {
            if let Err(e) = sink.sync() {
                tracing::error!(error = %e, "audit JSONL: final sync failed");
            }
        }
        // The indexer drains, checkpoints and removes the spent journal; the journal's lock is held
        // until then.
        if let Some((tx, thread)) = self.indexer.take() {
            drop(tx);
            let _ = thread.join();
        }
        drop(self.journal.take());
        tracing::info!(
            seq = self.seq,
            committed = self.shared.committed.load(Ordering::Relaxed),
            "audit writer stopped"
        );
        for tx in done {
            let _ = tx.send(());
        }
    }

    /// Writes one batch, tells its submitters, hands it to the indexer; returns the batch's permits.
    fn commit(&mut self, batch: Vec<Submission>) {
        if batch.is_empty() {
            return;
        }
        let events: usize = batch.iter().map(|s| s.events.len()).sum();
        let mut rows = Vec::with_capacity(events);
        let mut acks: Vec<Ack> = Vec::with_capacity(batch.len());
        let mut prepared = Vec::with_capacity(events);
        for s in batch {
            prepared.extend(s.events);
            acks.extend(s.ack);
        }
        let result = match self.shared.failure.get() {
            Some(failure) => Err(failure.clone()),
            None => self
                .write(prepared, &mut rows)
                .map_err(|e| fail(&self.shared, e, "write")),
        };
        match &result {
            Ok(()) => {
                self.shared.committed.fetch_add(events as u64, Ordering::Relaxed);
                self.shared.batches.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                self.shared.rejected.fetch_add(events as u64, Ordering::Relaxed);
            }
        }
        self.shared.permits.add_permits(events);
        for ack in acks {
            let _ = ack.send(match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(AuditError::WriterFailed(e.clone())),
            });
        }
        if result.is_err() {
            return;
        }
        let Some((tx, _)) = &self.indexer else { return };
        if tx.send(rows).is_err() {
            fail(&self.shared, AuditError::IndexerStopped, "index");
            return;
        }
        // Back-pressure: never let the index fall unboundedly behind (memory), wait for it instead.
        let mut guard = lock(&self.shared.indexed_lock);
        while self.seq.saturating_sub(*self.shared.indexed.borrow()) > INDEX_LAG_LIMIT
            && self.shared.failure.get().is_none()
        {
            guard = self
                .shared
                .indexed_changed
                .wait_timeout(guard, Duration::from_millis(100))
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }

    /// Numbers, chains and journals the events (one write; one sync at `fsync`), fills `rows` for
    /// the indexer.
    fn write(&mut self, prepared: Vec<PreparedEvent>, rows: &mut Vec<IndexRow>) -> Result<(), AuditError> {
        let mut now = self.clock.now();
        if let Some(last) = self.last_time {
            now = now.max(last);
        }
        let ts: Arc<str> = Arc::from(format_ts(now));
        let first_seq = self.seq + 1;
        let mut seq = self.seq;
        let mut prev = self.prev;
        let with_jsonl = self.jsonl.is_some();
        self.buf.clear();
        self.jsonl_buf.clear();
        self.ends.clear();
        let mut prev_hex = HexHash::new(&prev);
        for ev in prepared {
            let next = seq + 1;
            let hash = record_hash(&prev, next, &ts, ev.kind, &ev.payload);
            let hash_hex = HexHash::new(&hash);
            if self.journal.is_some() {
                format_line(
                    &mut self.buf,
                    next,
                    &ts,
                    ev.kind,
                    &ev.payload,
                    prev_hex.as_str(),
                    hash_hex.as_str(),
                );
            }
            if with_jsonl {
                format_line(
                    &mut self.jsonl_buf,
                    next,
                    &ts,
                    ev.kind,
                    &ev.payload,
                    prev_hex.as_str(),
                    hash_hex.as_str(),
                );
                self.ends.push(self.jsonl_buf.len());
            }
            rows.push(IndexRow {
                seq: next,
                ts: ts.clone(),
                kind: ev.kind,
                payload: ev.payload,
                prev_hash: prev_hex,
                hash: hash_hex,
                columns: ev.columns,
            });
            seq = next;
            prev = hash;
            prev_hex = hash_hex;
        }
        if let Some(journal) = &mut self.journal {
            if let Some(closed) = journal.append(&self.buf, first_seq)? {
                self.shared.closed_through.store(closed, Ordering::Release);
            }
            if self.shared.durability == Durability::Fsync {
                journal.sync()?;
            }
        }
        // Durable: the chain moves on even if the JSONL export fails below.
        self.seq = seq;
        self.prev = prev;
        self.last_time = Some(now);
        *lock(&self.shared.head) = Head {
            seq,
            hash: prev_hex.as_str().to_owned(),
        };
        if let Some(sink) = &mut self.jsonl {
            sink.append(&self.jsonl_buf, &self.ends)?;
            if self.shared.durability == Durability::Fsync {
                sink.sync()?;
            }
        }
        Ok(())
    }
}
