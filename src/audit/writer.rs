//! Group commit, in the style of PostgreSQL's WAL insert/flush: the submitter that finds no flush
//! in progress writes the batch itself; submitters that arrive meanwhile queue their events and
//! wait on their ack, and the flusher writes them too before it leaves. So an uncontended statement
//! costs no thread hand-off and no wake-up, and under load batches grow and one `write(2)` serves
//! many sessions.
//!
//! A flush ([`Core::commit`]) numbers the events in queue order, chains their hashes, formats each
//! record's line once, appends the lines to the journal ([`super::journal`]) with one `write(2)` —
//! at the `fsync` level followed by one `fdatasync` — appends the *same bytes* to the JSONL export,
//! acks, and hands the records to the indexer thread ([`super::indexer`]). Acks per level:
//!
//! - `fsync`: after the journal's `fdatasync` (and the JSONL export's, when configured). The sync
//!   must not block a tokio worker, so at this level every flush runs on the writer thread
//!   (`timebox-audit`), woken by the submitter that finds it idle;
//! - `write`: after the journal's `write(2)`, on the submitter's own task (a `write(2)` to the page
//!   cache, no sync): the record survives a crash of timebox, not of the machine;
//! - `async`: at enqueue ([`super::AuditLog::submit`]); written like `write`.
//!
//! When the index falls more than [`INDEX_LAG_LIMIT`] records behind, submitters leave the flush to
//! the writer thread, which waits for the index (back-pressure through the bounded queue, never
//! unbounded memory, never a blocked tokio worker).
//!
//! Failures: a failed journal or JSONL write or sync fails its batch (its submitters get an error;
//! nothing was acknowledged) and starts a bounded backoff ([`RETRY_FIRST`] doubling up to
//! [`RETRY_MAX`]) during which submissions are refused at once; the first flush after it tries
//! again. The journal cuts what a failed write left (a torn line, or a batch whose sync failed)
//! before it writes again, so the chain continues where it stopped, without a gap or a fork. Other
//! failures (the index's schema, a corrupt file) are kept in [`Shared::failure`] until restart. It
//! must never write out of queue order or reuse a seq.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rusqlite::Connection;
use tokio::sync::{oneshot, watch, Semaphore};

use super::chain::{format_ts, record_hash, Head, HexHash};
use super::event::PreparedEvent;
pub use super::indexer::INDEX_LAG_LIMIT;
use super::indexer::{Checkpointer, Indexer};
use super::journal::Journal;
use super::jsonl::{format_line, JsonlSink};
use super::sqlite::IndexRow;
use super::AuditError;
use crate::clock::Clock;
use crate::config::{Durability, ParamLogging};

/// The first wait before a failed journal write is tried again (and the indexer's first retry).
pub const RETRY_FIRST: Duration = Duration::from_millis(100);
/// The longest wait between two tries after failures (the backoff doubles up to it).
pub const RETRY_MAX: Duration = Duration::from_secs(2);

type Ack = oneshot::Sender<Result<(), AuditError>>;

/// One `submit` call: its events and, unless the level is `async`, who to tell when they are durable.
pub(crate) struct Submission {
    pub events: Vec<PreparedEvent>,
    pub ack: Option<Ack>,
}

/// The submissions waiting for a flush, and who flushes.
#[derive(Default)]
pub(crate) struct Queue {
    pending: VecDeque<Submission>,
    /// A flush is in progress (a submitter's or the writer thread's): newcomers only queue.
    busy: bool,
    /// Shutdown asked: the writer thread flushes what is queued, then stops.
    stopping: bool,
    /// The writer thread has stopped: nothing more is accepted (the journal is closed).
    stopped: bool,
}

/// A write failure being retried.
struct Failing {
    error: Arc<AuditError>,
    retry_at: Instant,
    backoff: Duration,
}

/// State shared by every [`super::AuditLog`] clone, the flushers, the indexer and the handle.
pub(crate) struct Shared {
    pub durability: Durability,
    pub params: ParamLogging,
    pub capacity: usize,
    pub max_batch: usize,
    /// One permit per queued event: bounds the queue by events, not submissions. A batch's permits
    /// return after it is written.
    pub permits: Semaphore,
    /// Set once, at the first failure that cannot pass by itself; every later submit fails with it.
    pub failure: OnceLock<Arc<AuditError>>,
    /// A journal or JSONL write failure, retried after a backoff (see the module comment).
    failing: Mutex<Option<Failing>>,
    /// Whether `failing` is set (read on every submit without taking the lock).
    is_failing: AtomicBool,
    /// The indexer's last transient failure, until it succeeds again.
    pub index_failing: Mutex<Option<Arc<AuditError>>>,
    /// Set by shutdown; later submits fail.
    pub closed: AtomicBool,
    /// The last durable record (in the journal).
    pub head: Mutex<Head>,
    /// `head.seq`, readable without the lock.
    pub written: AtomicU64,
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
    pub queue: Mutex<Queue>,
    /// Wakes the writer thread (work at `fsync`, a hand-over, shutdown).
    pub work: Condvar,
    /// The journal, the chain head and the buffers: whoever holds it flushes.
    pub core: Mutex<Core>,
    /// A query waits for the index: the indexer commits what it holds now.
    pub flush_index: AtomicBool,
    pub indexer_thread: OnceLock<std::thread::Thread>,
}

impl Shared {
    pub(crate) fn new(
        opts: &super::AuditOptions,
        core: Core,
        head: Head,
        reader: Arc<Mutex<Connection>>,
    ) -> Shared {
        let capacity = opts.queue_capacity.clamp(1, Semaphore::MAX_PERMITS);
        Shared {
            durability: opts.durability,
            params: opts.params,
            capacity,
            max_batch: opts.max_batch.max(1),
            permits: Semaphore::new(capacity),
            failure: OnceLock::new(),
            failing: Mutex::new(None),
            is_failing: AtomicBool::new(false),
            index_failing: Mutex::new(None),
            closed: AtomicBool::new(false),
            written: AtomicU64::new(head.seq),
            indexed: watch::Sender::new(head.seq),
            head: Mutex::new(head),
            committed: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            indexed_lock: Mutex::new(()),
            indexed_changed: Condvar::new(),
            closed_through: AtomicU64::new(0),
            reader,
            db_path: opts.db.clone(),
            queue: Mutex::new(Queue::default()),
            work: Condvar::new(),
            core: Mutex::new(core),
            flush_index: AtomicBool::new(false),
            indexer_thread: OnceLock::new(),
        }
    }

    /// Why the index may not reach the head: a lasting failure, or a transient one being retried.
    pub(crate) fn index_failure(&self) -> Option<Arc<AuditError>> {
        self.failure
            .get()
            .cloned()
            .or_else(|| lock(&self.index_failing).clone())
    }

    pub(crate) fn set_indexed(&self, seq: u64) {
        self.indexed.send_replace(seq);
        self.wake_writer_waiting_for_index();
    }

    pub(crate) fn wake_writer_waiting_for_index(&self) {
        let _guard = lock(&self.indexed_lock);
        self.indexed_changed.notify_all();
    }

    /// Asks the indexer to commit what it holds without waiting for the interval.
    pub(crate) fn request_index_flush(&self) {
        self.flush_index.store(true, Ordering::Release);
        if let Some(t) = self.indexer_thread.get() {
            t.unpark();
        }
    }

    fn index_behind(&self) -> bool {
        self.written
            .load(Ordering::Acquire)
            .saturating_sub(*self.indexed.borrow())
            > INDEX_LAG_LIMIT
    }

    /// The error a new record gets without a try: the lasting failure, or a write failure whose
    /// retry time has not come.
    pub(crate) fn refusal(&self) -> Option<Arc<AuditError>> {
        if let Some(f) = self.failure.get() {
            return Some(f.clone());
        }
        if !self.is_failing.load(Ordering::Acquire) {
            return None;
        }
        lock(&self.failing)
            .as_ref()
            .filter(|f| Instant::now() < f.retry_at)
            .map(|f| f.error.clone())
    }

    /// Records a failed write and when to try again; returns the error its batch gets.
    fn write_failed(&self, e: AuditError) -> Arc<AuditError> {
        let e = Arc::new(e);
        let mut failing = lock(&self.failing);
        let backoff = failing
            .as_ref()
            .map_or(RETRY_FIRST, |f| (f.backoff * 2).min(RETRY_MAX));
        tracing::error!(error = %e, retry_in_ms = backoff.as_millis() as u64,
            "audit write failed: refusing records until a retry succeeds");
        *failing = Some(Failing {
            error: e.clone(),
            retry_at: Instant::now() + backoff,
            backoff,
        });
        self.is_failing.store(true, Ordering::Release);
        e
    }

    fn write_succeeded(&self) {
        if self.is_failing.swap(false, Ordering::AcqRel) {
            if let Some(f) = lock(&self.failing).take() {
                tracing::info!(after = %f.error, "audit log recovered: writing again");
            }
        }
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave SQLite inconsistent (transactions roll back).
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Records a failure that does not pass by itself (later ones are logged only) and returns the one
/// that counts.
pub(crate) fn fail(shared: &Shared, e: AuditError, what: &str) -> Arc<AuditError> {
    let e = Arc::new(e);
    tracing::error!(error = %e, "audit {what} failed: refusing every further record until timebox restarts");
    let _ = shared.failure.set(e.clone());
    // Wake a writer waiting for the index.
    shared.indexed_changed.notify_all();
    shared.failure.get().cloned().unwrap_or(e)
}

/// Queues a submission and, unless a flush is in progress, flushes it — on the caller's task at
/// `write`/`async`, on the writer thread at `fsync` or when the index is behind.
pub(crate) fn enqueue(shared: &Shared, s: Submission) -> Result<(), AuditError> {
    let inline = shared.durability != Durability::Fsync && !shared.index_behind();
    let batch = {
        let mut q = lock(&shared.queue);
        if q.stopped {
            return Err(AuditError::Closed);
        }
        q.pending.push_back(s);
        if q.busy {
            return Ok(());
        }
        if !inline {
            shared.work.notify_one();
            return Ok(());
        }
        q.busy = true;
        take_batch(&mut q, shared.max_batch)
    };
    flush(shared, batch, true);
    Ok(())
}

/// Up to `max` events' worth of submissions off the queue (at least one submission).
fn take_batch(q: &mut Queue, max: usize) -> Vec<Submission> {
    let mut batch = Vec::new();
    let mut events = 0;
    while let Some(s) = q.pending.pop_front() {
        events += s.events.len();
        batch.push(s);
        if events >= max {
            break;
        }
    }
    batch
}

/// Batches a submitter flushes before it hands what is still queued to the writer thread (its
/// own statement, and the other tasks of its tokio worker, wait meanwhile).
const INLINE_ROUNDS: usize = 4;

/// Writes `batch`, then what queued meanwhile, until the queue is empty; a submitter (`inline`)
/// hands over to the writer thread after [`INLINE_ROUNDS`] or when the index falls behind; the
/// thread waits for the index.
fn flush(shared: &Shared, mut batch: Vec<Submission>, inline: bool) {
    let mut rounds = 0;
    loop {
        lock(&shared.core).commit(shared, batch);
        rounds += 1;
        if !inline {
            wait_for_index(shared);
        }
        let mut q = lock(&shared.queue);
        let hand_over = inline && (rounds >= INLINE_ROUNDS || shared.index_behind());
        if q.pending.is_empty() || hand_over {
            q.busy = false;
            if !q.pending.is_empty() || q.stopping {
                shared.work.notify_one();
            }
            return;
        }
        batch = take_batch(&mut q, shared.max_batch);
    }
}

/// Back-pressure: never let the index fall unboundedly behind (memory); wait for it instead.
fn wait_for_index(shared: &Shared) {
    let mut guard = lock(&shared.indexed_lock);
    while shared.index_behind() && shared.failure.get().is_none() {
        guard = shared
            .indexed_changed
            .wait_timeout(guard, Duration::from_millis(100))
            .map(|(g, _)| g)
            .unwrap_or_else(|e| e.into_inner().0);
    }
}

/// The writer thread: flushes at `fsync` and when submitters hand over; at shutdown flushes what
/// is queued, syncs, stops the indexer and closes the journal.
pub(crate) fn run(shared: Arc<Shared>, indexer: std::thread::JoinHandle<()>) {
    loop {
        let batch = {
            let mut q = lock(&shared.queue);
            loop {
                if !q.busy && !q.pending.is_empty() {
                    break;
                }
                if !q.busy && q.stopping {
                    q.stopped = true;
                    break;
                }
                q = shared.work.wait(q).unwrap_or_else(|e| e.into_inner());
            }
            if q.stopped {
                break;
            }
            q.busy = true;
            take_batch(&mut q, shared.max_batch)
        };
        flush(&shared, batch, false);
    }
    let mut core = lock(&shared.core);
    if let Some(journal) = &core.journal {
        if let Err(e) = journal.sync() {
            tracing::error!(error = %e, "audit journal: final sync failed");
        }
    }
    if let Some(sink) = &core.jsonl {
        if let Err(e) = sink.sync() {
            tracing::error!(error = %e, "audit JSONL: final sync failed");
        }
    }
    // The indexer drains, checkpoints and removes the spent journal; the journal's lock is held
    // until then.
    drop(core.index_tx.take());
    let _ = indexer.join();
    drop(core.journal.take());
    tracing::info!(
        seq = core.seq,
        committed = shared.committed.load(Ordering::Relaxed),
        "audit writer stopped"
    );
}

/// Starts the checkpointer, the indexer (on `conn`) and the writer thread; returns the writer's.
pub(crate) fn start(
    shared: &Arc<Shared>,
    conn: Arc<Mutex<Connection>>,
) -> Result<std::thread::JoinHandle<()>, AuditError> {
    let checkpointer = match &shared.db_path {
        None => None,
        Some(path) => {
            let (tx, rx) = std::sync::mpsc::channel();
            let checkpointer = Checkpointer {
                shared: shared.clone(),
                rx,
                conn: super::sqlite::open_checkpointer(path)?,
            };
            let thread = std::thread::Builder::new()
                .name("timebox-audit-ckpt".into())
                .spawn(move || checkpointer.run())
                .map_err(AuditError::Thread)?;
            Some((tx, thread))
        }
    };
    let (index_tx, index_rx) = std::sync::mpsc::channel();
    let journal_dir = lock(&shared.core).journal.as_ref().map(|j| j.dir().to_owned());
    let indexer = Indexer {
        shared: shared.clone(),
        rx: index_rx,
        conn,
        journal_dir,
        since_checkpoint: 0,
        checkpointer,
        removed_through: 0,
    };
    let indexer_thread = std::thread::Builder::new()
        .name("timebox-audit-index".into())
        .spawn(move || indexer.run())
        .map_err(AuditError::Thread)?;
    lock(&shared.core).index_tx = Some(index_tx);
    let for_writer = shared.clone();
    std::thread::Builder::new()
        .name("timebox-audit".into())
        .spawn(move || run(for_writer, indexer_thread))
        .map_err(AuditError::Thread)
}

/// Asks the writer thread to flush what is queued and stop.
pub(crate) fn stop(shared: &Shared) {
    lock(&shared.queue).stopping = true;
    shared.work.notify_one();
}

/// The journal, the JSONL export and the chain head: what a flush needs, behind one lock.
pub(crate) struct Core {
    /// `None` for an in-memory database (tests): records go to the indexer only.
    pub journal: Option<Journal>,
    pub jsonl: Option<JsonlSink>,
    pub clock: Arc<dyn Clock>,
    /// The chain head as the flushes continue it.
    pub seq: u64,
    pub prev: [u8; 32],
    /// Commit times never go backwards, so `ts` order follows `seq` order.
    pub last_time: Option<DateTime<Utc>>,
    /// Reused line buffer (journal and JSONL write the same bytes) and line ends.
    pub buf: Vec<u8>,
    pub ends: Vec<usize>,
    /// The indexer's queue (dropped at shutdown).
    pub index_tx: Option<std::sync::mpsc::Sender<Vec<IndexRow>>>,
}

impl Core {
    /// Writes one batch, tells its submitters, hands it to the indexer; returns the batch's permits.
    fn commit(&mut self, shared: &Shared, batch: Vec<Submission>) {
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
        let seq_before = self.seq;
        let result = match shared.refusal() {
            Some(failure) => Err(failure),
            None => match self.write(shared, prepared, &mut rows) {
                Ok(()) => {
                    shared.write_succeeded();
                    Ok(())
                }
                Err(e @ AuditError::Io { .. }) => Err(shared.write_failed(e)),
                Err(e) => Err(fail(shared, e, "write")),
            },
        };
        match &result {
            Ok(()) => {
                shared.committed.fetch_add(events as u64, Ordering::Relaxed);
                shared.batches.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                shared.rejected.fetch_add(events as u64, Ordering::Relaxed);
            }
        }
        shared.permits.add_permits(events);
        for ack in acks {
            let _ = ack.send(match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(AuditError::WriterFailed(e.clone())),
            });
        }
        // Records in the journal go to the index even when their batch failed (only the JSONL
        // export did): the chain has moved past them.
        if self.seq == seq_before || rows.is_empty() {
            return;
        }
        let sent = self.index_tx.as_ref().is_some_and(|tx| tx.send(rows).is_ok());
        if !sent {
            fail(shared, AuditError::IndexerStopped, "index");
        }
    }

    /// Numbers, chains and journals the events (one write; one sync at `fsync`), feeds the JSONL
    /// export the same bytes, fills `rows` for the indexer. On error the chain has not moved,
    /// unless only the JSONL export failed (the records are durable in the journal; the export
    /// keeps them and writes them first next time).
    fn write(
        &mut self,
        shared: &Shared,
        prepared: Vec<PreparedEvent>,
        rows: &mut Vec<IndexRow>,
    ) -> Result<(), AuditError> {
        let mut now = self.clock.now();
        if let Some(last) = self.last_time {
            now = now.max(last);
        }
        let ts: Arc<str> = Arc::from(format_ts(now));
        let first_seq = self.seq + 1;
        let mut seq = self.seq;
        let mut prev = self.prev;
        let lines = self.journal.is_some() || self.jsonl.is_some();
        self.buf.clear();
        self.ends.clear();
        let mut prev_hex = HexHash::new(&prev);
        for ev in prepared {
            let next = seq + 1;
            let hash = record_hash(&prev, next, &ts, ev.kind, &ev.payload);
            let hash_hex = HexHash::new(&hash);
            if lines {
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
                shared.closed_through.store(closed, Ordering::Release);
            }
            if shared.durability == Durability::Fsync {
                if let Err(e) = journal.sync() {
                    // Not durable: cut the batch, so the retry writes these seqs again.
                    journal.discard_last(self.buf.len() as u64);
                    return Err(e);
                }
            }
        }
        // Durable: the chain moves on even if the JSONL export fails below.
        self.seq = seq;
        self.prev = prev;
        self.last_time = Some(now);
        *lock(&shared.head) = Head {
            seq,
            hash: prev_hex.as_str().to_owned(),
        };
        shared.written.store(seq, Ordering::Release);
        if let Some(sink) = &mut self.jsonl {
            sink.append(&self.buf, &self.ends)?;
            if shared.durability == Durability::Fsync {
                sink.sync()?;
            }
        }
        Ok(())
    }
}
