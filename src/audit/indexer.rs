//! The indexer and the checkpointer: the two threads behind the journal that build the queryable
//! SQLite copy of the audit trail, off the statements' path.
//!
//! The **indexer** (`timebox-audit-index`) inserts what the writer hands it ([`super::writer`]) into
//! SQLite — one transaction per [`INDEX_INTERVAL`] of records, or at once when a query waits for it
//! ([`Shared::request_index_flush`]) — with `synchronous=OFF`: the journal is the durable copy
//! until a segment is deleted, which happens only after the indexer has fsync'd the database's WAL
//! past the segment's last record. While it gathers it sleeps (`park_timeout`) instead of waiting
//! on its queue, so a hand-off from the writer wakes no thread: at most one wake-up per interval.
//! Queries wait for the indexer to reach the head they start at ([`super::AuditLog::query`]), so
//! they never miss an acknowledged record.
//!
//! A transient SQLite failure (disk full, I/O error, a lock held too long) keeps the records in
//! memory and retries them with a bounded backoff ([`super::writer::RETRY_MAX`]); the journal keeps
//! them durable meanwhile. Any other failure (a dropped table, a corrupt file) is kept in
//! [`Shared::failure`] and every later submission fails (fail closed).
//!
//! Checkpoints (copying SQLite's WAL into the database file) are not left to SQLite
//! (`wal_autocheckpoint=0`): every [`CHECKPOINT_RECORDS`] records the [`Checkpointer`] thread runs a
//! passive checkpoint on its own connection with `synchronous=FULL` (so SQLite fsyncs the WAL before
//! copying and the database after), and past [`WAL_LIMIT_BYTES`] the indexer checkpoints and
//! truncates the WAL itself, between transactions. At shutdown the indexer checkpoints everything
//! with `FULL` and the journal's segments are deleted. It must never delete a segment whose records
//! are not durably in the database.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::Connection;

use super::journal;
use super::sqlite::{insert_rows, IndexRow};
use super::writer::{fail, lock, Shared, RETRY_FIRST, RETRY_MAX};
use super::AuditError;

/// Records indexed between two passive checkpoints (about 50 MB of WAL).
pub const CHECKPOINT_RECORDS: usize = 65_536;
/// The WAL size past which the indexer checkpoints and truncates it itself (bounded disk use).
pub const WAL_LIMIT_BYTES: u64 = 64 * 1024 * 1024;
/// Records the index may lag behind the journal before the writer waits for it.
pub const INDEX_LAG_LIMIT: u64 = 65_536;
/// Most records the indexer puts in one transaction.
const MAX_INDEX_BATCH: usize = 65_536;
/// How long the indexer gathers records before it commits them, unless a query is waiting: a SQLite
/// commit writes whole pages of the table and of each index, so committing every few records costs
/// several page writes per record, and a commit per interval costs about the records' own bytes.
pub const INDEX_INTERVAL: Duration = Duration::from_millis(50);

/// Size of the database's WAL file (0 when there is none).
fn wal_len(db: Option<&std::path::Path>) -> u64 {
    let Some(db) = db else { return 0 };
    std::fs::metadata(super::sqlite::wal_path(db))
        .map(|m| m.len())
        .unwrap_or(0)
}

/// Whether a SQLite failure may pass by itself (space returns, a lock is released), so the indexer
/// retries instead of failing the log for good.
pub(crate) fn is_transient(e: &AuditError) -> bool {
    match e {
        AuditError::Sqlite(rusqlite::Error::SqliteFailure(f, _)) => matches!(
            f.code,
            rusqlite::ErrorCode::DiskFull
                | rusqlite::ErrorCode::SystemIoFailure
                | rusqlite::ErrorCode::DatabaseBusy
                | rusqlite::ErrorCode::DatabaseLocked
        ),
        AuditError::Io { .. } => true,
        _ => false,
    }
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
                Err(e) => {
                    let e = AuditError::from(e);
                    if is_transient(&e) {
                        // Busy (an auditor's shell checkpointing) or a full disk: next time; the
                        // journal keeps the records meanwhile.
                        tracing::debug!(error = %e, "audit checkpoint skipped");
                    } else {
                        fail(&self.shared, e, "checkpoint");
                    }
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
        let _ = self.shared.indexer_thread.set(std::thread::current());
        // Records not yet in the database: gathered, or kept after a transient failure.
        let mut rows: Vec<IndexRow> = Vec::new();
        let mut retry = RETRY_FIRST;
        let mut open = true;
        while open {
            if rows.is_empty() {
                match self.rx.recv() {
                    Ok(first) => rows.extend(first),
                    Err(_) => break,
                }
            }
            open = self.gather(&mut rows);
            if self.shared.failure.get().is_some() {
                rows.clear();
                continue;
            }
            let Some(last) = rows.last().map(|r| r.seq) else {
                continue;
            };
            let inserted = insert_rows(&mut lock(&self.conn), &rows);
            match inserted {
                Ok(()) => {
                    if lock(&self.shared.index_failing).take().is_some() {
                        tracing::info!(through = last, "audit index recovered");
                    }
                    retry = RETRY_FIRST;
                    self.shared.set_indexed(last);
                    self.after_commit(rows.len(), last);
                    rows.clear();
                }
                Err(e) if is_transient(&e) => {
                    tracing::warn!(error = %e, retry_in_ms = retry.as_millis() as u64, pending = rows.len(),
                        "audit index write failed; the journal keeps the records, retrying");
                    *lock(&self.shared.index_failing) = Some(Arc::new(e));
                    self.shared.wake_writer_waiting_for_index();
                    if open {
                        std::thread::park_timeout(retry);
                        retry = (retry * 2).min(RETRY_MAX);
                    }
                }
                Err(e) => {
                    fail(&self.shared, e, "index");
                    rows.clear();
                }
            }
        }
        self.stop(rows.is_empty());
    }

    /// Adds to `rows` what arrives within [`INDEX_INTERVAL`] (less when a query waits), sleeping
    /// rather than waiting on the queue. Returns false once the writer has gone.
    fn gather(&mut self, rows: &mut Vec<IndexRow>) -> bool {
        let deadline = Instant::now() + INDEX_INTERVAL;
        loop {
            loop {
                match self.rx.try_recv() {
                    Ok(more) => rows.extend(more),
                    Err(std::sync::mpsc::TryRecvError::Empty) => break,
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => return false,
                }
            }
            let now = Instant::now();
            if self.shared.flush_index.swap(false, Ordering::AcqRel)
                || now >= deadline
                || rows.len() >= MAX_INDEX_BATCH
            {
                return true;
            }
            std::thread::park_timeout(deadline - now);
        }
    }

    /// Clean stop: everything into the database file, durably; then the journal is spent (unless
    /// records could not be indexed: the journal keeps them for the next start).
    fn stop(&mut self, all_indexed: bool) {
        if let Some((tx, thread)) = self.checkpointer.take() {
            drop(tx);
            let _ = thread.join();
        }
        if self.shared.db_path.is_none() {
            return;
        }
        match checkpoint_truncate(&lock(&self.conn)) {
            Ok(true) if self.shared.failure.get().is_none() && all_indexed => {
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
