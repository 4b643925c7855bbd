//! The group-commit writer: one dedicated thread (never a tokio worker) behind the queue, and, for
//! the `fsync` level, a second thread that syncs.
//!
//! Each round the writer blocks for the first submission, then drains everything already queued (up
//! to `max_batch` events), numbers the events in queue order, chains their hashes, inserts them in
//! ONE SQLite transaction with a prepared INSERT and appends their JSONL lines in one write. SQLite
//! runs with `synchronous=OFF` (the commit is a write(2) into the WAL) and this module does the
//! syncing itself, so that syncing one batch overlaps writing the next:
//!
//! - `fsync`: the batch's acks go to the [`Syncer`] thread, which `fdatasync`s the WAL file and the
//!   JSONL file — once for every batch that reached it meanwhile — and only then acks. Commits made
//!   before an fsync call starts are covered by it (fsync acts on the file, whichever descriptor
//!   wrote).
//! - `write`: acked right after the commit and the JSONL write.
//! - `async`: acked at enqueue ([`super::AuditLog::submit`]).
//!
//! Checkpoints (copying the WAL into the database file) are not left to the writer's connection
//! (`wal_autocheckpoint=0`): every [`CHECKPOINT_RECORDS`] records the [`Checkpointer`] thread runs a
//! passive checkpoint on its own connection with `synchronous=FULL`, so SQLite fsyncs the WAL before
//! copying and the database after, and only then lets the writer reuse the WAL — whatever the level,
//! a power loss can lose unacknowledged records but never corrupt the file. The writer keeps writing
//! meanwhile. At shutdown the writer checkpoints (and empties) the WAL itself, with `FULL`.
//!
//! On any write or sync error the failure is kept in [`Shared::failure`]; the batch's submitters and
//! every later one get an error (fail closed), and it is logged; no event is dropped without an error
//! reaching someone. It must never write out of queue order or reuse a seq.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection};
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::chain::{format_ts, record_hash, Head, HexHash};
use super::event::PreparedEvent;
use super::jsonl::{format_line, JsonlSink};
use super::sqlite::INSERT;
use super::AuditError;
use crate::clock::Clock;
use crate::config::{Durability, ParamLogging};

/// Records written between two checkpoints (about 50 MB of WAL).
pub const CHECKPOINT_RECORDS: usize = 65_536;
/// The WAL size past which the writer checkpoints and truncates it itself (bounded disk use).
pub const WAL_LIMIT_BYTES: u64 = 64 * 1024 * 1024;

/// Size of the database's WAL file (0 when there is none).
fn wal_len(db: Option<&std::path::Path>) -> u64 {
    let Some(db) = db else { return 0 };
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    std::fs::metadata(std::path::Path::new(&wal))
        .map(|m| m.len())
        .unwrap_or(0)
}

type Ack = oneshot::Sender<Result<(), AuditError>>;

/// What submitters send the writer.
pub(crate) enum Msg {
    Events(Submission),
    /// Write everything queued before this, then stop; the sender is told when done.
    Shutdown(oneshot::Sender<()>),
}

/// One `submit` call: its events and, unless the level is `async`, who to tell when they are durable.
pub(crate) struct Submission {
    pub events: Vec<PreparedEvent>,
    pub ack: Option<Ack>,
}

/// State shared by every [`super::AuditLog`] clone, the writer and the handle.
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
    /// The last committed record.
    pub head: Mutex<Head>,
    pub committed: AtomicU64,
    pub batches: AtomicU64,
    pub rejected: AtomicU64,
    /// Connection for queries and verification (the writer's own one for an in-memory database).
    pub reader: Arc<Mutex<Connection>>,
    pub db_path: Option<std::path::PathBuf>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave SQLite inconsistent (transactions roll back).
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) struct Writer {
    pub shared: Arc<Shared>,
    pub rx: mpsc::UnboundedReceiver<Msg>,
    pub conn: Arc<Mutex<Connection>>,
    pub jsonl: Option<JsonlSink>,
    pub clock: Arc<dyn Clock>,
    pub max_batch: usize,
    /// The chain head as the writer continues it.
    pub seq: u64,
    pub prev: [u8; 32],
    /// Commit times never go backwards, so `ts` order follows `seq` order.
    pub last_time: Option<DateTime<Utc>>,
    /// Reused JSONL buffer and line ends.
    pub buf: Vec<u8>,
    pub ends: Vec<usize>,
    /// Records since the checkpointer was last woken.
    pub since_checkpoint: usize,
    /// The checkpoint thread (`None` in memory).
    pub checkpointer: Option<(std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>)>,
    /// The sync thread (`fsync` level with files to sync).
    pub syncer: Option<(std::sync::mpsc::Sender<Vec<Ack>>, std::thread::JoinHandle<()>)>,
}

/// fdatasync of the file at `path` through a descriptor of its own: always the current file (a
/// rotated JSONL, a recreated WAL), never a stale descriptor.
fn sync_path(path: &std::path::Path) -> Result<(), AuditError> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_data())
        .map_err(|source| AuditError::Io {
            path: path.to_owned(),
            source,
        })
}

/// Records the first failure (later ones are logged only) and returns the one that counts.
fn fail(shared: &Shared, e: AuditError, what: &str) -> Arc<AuditError> {
    let e = Arc::new(e);
    tracing::error!(error = %e, "audit {what} failed: refusing every further record until timebox restarts");
    let _ = shared.failure.set(e.clone());
    shared.failure.get().cloned().unwrap_or(e)
}

/// Runs passive checkpoints on its own `synchronous=FULL` connection when the writer asks.
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

/// The `fsync` level's second thread: syncs the WAL and the JSONL file for every batch the writer
/// committed, then acks them. Batches that arrive while it syncs share the next sync.
pub(crate) struct Syncer {
    pub shared: Arc<Shared>,
    pub rx: std::sync::mpsc::Receiver<Vec<Ack>>,
    pub files: Vec<PathBuf>,
}

impl Syncer {
    pub fn run(self) {
        while let Ok(first) = self.rx.recv() {
            let mut acks = first;
            while let Ok(more) = self.rx.try_recv() {
                acks.extend(more);
            }
            let result = match self.shared.failure.get() {
                Some(failure) => Err(failure.clone()),
                None => self
                    .files
                    .iter()
                    .try_for_each(|f| sync_path(f))
                    .map_err(|e| fail(&self.shared, e, "sync")),
            };
            for ack in acks {
                let _ = ack.send(result.clone().map_err(AuditError::WriterFailed));
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
            match first {
                Msg::Events(s) => {
                    events += s.events.len();
                    batch.push(s);
                }
                Msg::Shutdown(tx) => done.push(tx),
            }
            while done.is_empty() && events < self.max_batch {
                match self.rx.try_recv() {
                    Ok(Msg::Events(s)) => {
                        events += s.events.len();
                        batch.push(s);
                    }
                    Ok(Msg::Shutdown(tx)) => done.push(tx),
                    Err(_) => break,
                }
            }
            self.commit(batch);
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
                    Err(_) => break,
                }
            }
            if batch.is_empty() {
                break;
            }
            self.commit(batch);
        }
        if let Some((tx, thread)) = self.syncer.take() {
            drop(tx);
            let _ = thread.join();
        }
        if let Some((tx, thread)) = self.checkpointer.take() {
            drop(tx);
            let _ = thread.join();
        }
        if let Some(sink) = &self.jsonl {
            if let Err(e) = sink.sync() {
                tracing::error!(error = %e, "audit JSONL: final sync failed");
            }
        }
        if let Err(e) = self.final_checkpoint() {
            tracing::error!(error = %e, "audit database: final checkpoint failed");
        }
        tracing::info!(
            seq = self.seq,
            committed = self.shared.committed.load(Ordering::Relaxed),
            "audit writer stopped"
        );
        for tx in done {
            let _ = tx.send(());
        }
    }

    /// Writes one batch and tells its submitters (or hands their acks to the syncer); returns the
    /// batch's queue permits.
    fn commit(&mut self, batch: Vec<Submission>) {
        if batch.is_empty() {
            return;
        }
        let events: usize = batch.iter().map(|s| s.events.len()).sum();
        let result = match self.shared.failure.get() {
            Some(failure) => Err(failure.clone()),
            None => self.write(&batch).map_err(|e| fail(&self.shared, e, "write")),
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
        let acks: Vec<Ack> = batch.into_iter().filter_map(|s| s.ack).collect();
        self.shared.permits.add_permits(events);
        match &result {
            Ok(()) => match &self.syncer {
                Some((tx, _)) => {
                    if let Err(returned) = tx.send(acks) {
                        // The syncer is gone: these records cannot be made durable.
                        for ack in returned.0 {
                            let _ = ack.send(Err(AuditError::Closed));
                        }
                    }
                }
                None => {
                    for ack in acks {
                        let _ = ack.send(Ok(()));
                    }
                }
            },
            Err(e) => {
                for ack in acks {
                    let _ = ack.send(Err(AuditError::WriterFailed(e.clone())));
                }
            }
        }
        if result.is_ok() {
            self.since_checkpoint += events;
            // Passive checkpoints on another connection cannot finish while this writer keeps
            // appending, so under sustained load the WAL would grow without bound: past
            // WAL_LIMIT_BYTES the writer checkpoints itself, between batches, and truncates it.
            if wal_len(self.shared.db_path.as_deref()) > WAL_LIMIT_BYTES {
                self.since_checkpoint = 0;
                self.truncate_wal();
            } else if self.since_checkpoint >= CHECKPOINT_RECORDS {
                self.since_checkpoint = 0;
                if let Some((tx, _)) = &self.checkpointer {
                    let _ = tx.send(());
                }
            }
        }
    }

    /// Copies the whole WAL into the database (fsync'd) and truncates it, between two batches.
    /// A reader holding an old snapshot makes it give up until the next batch; it never fails the log.
    fn truncate_wal(&mut self) {
        let conn = lock(&self.conn);
        let result = conn
            .pragma_update(None, "synchronous", "FULL")
            .and_then(|_| conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get::<_, i64>(0)))
            .and_then(|busy| {
                conn.pragma_update(None, "synchronous", "OFF")?;
                Ok(busy)
            });
        match result {
            Ok(0) => tracing::debug!("audit WAL checkpointed and truncated"),
            Ok(_) => tracing::debug!("audit WAL checkpoint postponed: a reader holds an old snapshot"),
            Err(e) => {
                tracing::warn!(error = %e, "audit WAL checkpoint failed; retrying after the next batch")
            }
        }
    }

    /// Copies the whole WAL into the database and empties it, with `synchronous=FULL` (shutdown).
    fn final_checkpoint(&mut self) -> Result<(), AuditError> {
        let conn = lock(&self.conn);
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    }

    fn write(&mut self, batch: &[Submission]) -> Result<(), AuditError> {
        let mut now = self.clock.now();
        if let Some(last) = self.last_time {
            now = now.max(last);
        }
        let ts = format_ts(now);
        let mut seq = self.seq;
        let mut prev = self.prev;
        let with_jsonl = self.jsonl.is_some();
        self.buf.clear();
        self.ends.clear();
        let written = (|| -> Result<(), AuditError> {
            let mut conn = lock(&self.conn);
            let tx = conn.transaction()?;
            {
                let mut insert = tx.prepare_cached(INSERT)?;
                let mut prev_hex = HexHash::new(&prev);
                for ev in batch.iter().flat_map(|s| &s.events) {
                    let next = seq + 1;
                    let hash = record_hash(&prev, next, &ts, ev.kind, &ev.payload);
                    let hash_hex = HexHash::new(&hash);
                    insert.execute(params![
                        next as i64,
                        ts,
                        ev.kind,
                        ev.payload,
                        prev_hex.as_str(),
                        hash_hex.as_str(),
                        ev.columns.user,
                        ev.columns.target,
                        ev.columns.grant_id,
                        ev.columns.session_id,
                    ])?;
                    if with_jsonl {
                        format_line(
                            &mut self.buf,
                            next,
                            &ts,
                            ev.kind,
                            &ev.payload,
                            prev_hex.as_str(),
                            hash_hex.as_str(),
                        );
                        self.ends.push(self.buf.len());
                    }
                    seq = next;
                    prev = hash;
                    prev_hex = hash_hex;
                }
            }
            tx.commit()?;
            Ok(())
        })();
        written?;
        // Committed: the chain moves on even if the JSONL sink fails below.
        self.seq = seq;
        self.prev = prev;
        self.last_time = Some(now);
        *lock(&self.shared.head) = Head {
            seq,
            hash: HexHash::new(&prev).as_str().to_owned(),
        };
        if let Some(sink) = &mut self.jsonl {
            sink.append(&self.buf, &self.ends)?;
            if self.shared.durability == Durability::Fsync && self.syncer.is_none() {
                sink.sync()?;
            }
        }
        Ok(())
    }
}
