//! The audit journal: where every record is made durable first. Append-only segment files of JSON
//! lines in a directory beside the database (`audit.db` → `audit.journal/`), named by the first seq
//! they hold (`00000000000000000001.jsonl`), each line in the JSONL export's format (the record's
//! canonical JSON plus its hashes, see [`super::jsonl::format_line`]).
//!
//! Data flow: the writer thread (`writer.rs`) numbers and chains a batch, appends its lines to the
//! current segment with ONE `write(2)` (and, at the `fsync` level, one `fdatasync`), acknowledges the
//! submitters, and only then hands the records to the indexer thread, which inserts them into
//! SQLite (the queryable copy) in large transactions. So a record costs the hot path a share of one
//! small write, not a SQLite commit with its index pages.
//!
//! A segment is deleted only once every record in it is in the database *durably* (the indexer
//! fsyncs SQLite's WAL first), and the current segment never is. At start ([`Journal::open`]) the
//! records the database lacks (a crash between the journal write and the index) are read back,
//! checked against the chain (each line must re-encode to its exact bytes, hash to its stored hash
//! and link to the previous one) and returned for indexing; a torn last line (a crash mid-write: its
//! records were never acknowledged) is cut. Anything else that does not fit — a gap, a broken link —
//! refuses to open (fail closed: `timebox audit verify` says where). At `fsync` segments are
//! zero-filled ahead of the records ([`PREALLOC_BYTES`]); trailing zeros end a segment.
//!
//! One process owns a journal at a time: [`Journal::open`] takes an exclusive lock on its `LOCK`
//! file, held until the writer stops. This module must never rewrite or reorder a complete line.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::path::{Path, PathBuf};

use super::chain::{is_canonical_ts, record_hash, HexHash};
use super::event::{AuditEvent, Columns};
use super::jsonl::format_line;
use super::AuditError;
use crate::store::files;

/// A segment is closed and a new one started once it holds this many bytes.
pub const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// At the `fsync` level a segment is extended by this many zero bytes (written and synced once)
/// ahead of the records, so the `fdatasync` after each batch overwrites allocated blocks and
/// writes no metadata (no new size, no new extent): ~120 µs instead of ~210 µs or more per sync
/// on the benchmark VM's disk. Readers take trailing zeros for the end of the segment.
pub const PREALLOC_BYTES: u64 = 1024 * 1024;

const LINE_PREFIX: &[u8] = b"{\"hash\":\"";
const PREV_KEY: &[u8] = b",\"prev_hash\":\"";

/// The journal directory of a database file: `x/audit.db` → `x/audit.journal`.
pub fn dir_for(db: &Path) -> PathBuf {
    db.with_extension("journal")
}

/// `dir/NNNNNNNNNNNNNNNNNNNN.jsonl` for the segment whose first record is `first_seq`.
pub fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}.jsonl"))
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> AuditError + '_ {
    move |source| AuditError::Io {
        path: path.to_owned(),
        source,
    }
}

/// One record read back from the journal, checked and ready to index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalRecord {
    pub seq: u64,
    pub ts: String,
    pub kind: &'static str,
    pub payload: String,
    pub prev_hash: [u8; 32],
    pub hash: [u8; 32],
    pub columns: Columns,
}

/// The segments in `dir`, by first seq, ascending.
pub fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, AuditError> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io_err(dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(stem) = name.strip_suffix(".jsonl") else {
            continue;
        };
        if stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()) {
            if let Ok(first) = stem.parse::<u64>() {
                out.push((first, entry.path()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Parses and checks one line (without its `\n`) against the record before it (`prev`, `seq - 1`).
/// The line must be exactly what [`format_line`] writes for its fields, so nothing can hide in it.
pub fn parse_line(line: &[u8], expected_seq: u64, prev: &[u8; 32]) -> Result<JournalRecord, String> {
    let text = std::str::from_utf8(line).map_err(|_| "not UTF-8".to_string())?;
    let bytes = text.as_bytes();
    let hash_start = LINE_PREFIX.len();
    if !bytes.starts_with(LINE_PREFIX) || bytes.len() < hash_start + 64 {
        return Err("not a journal line".into());
    }
    let hash_hex = &text[hash_start..hash_start + 64];
    let rest = &text[hash_start + 64..];
    let rest = rest
        .strip_prefix("\",\"kind\":\"")
        .ok_or("no kind after the hash")?;
    let kind_end = rest.find('"').ok_or("unterminated kind")?;
    let kind = &rest[..kind_end];
    let rest = rest[kind_end..]
        .strip_prefix("\",\"payload\":")
        .ok_or("no payload after the kind")?;
    // The payload is followed by the fixed tail, whose key occurs nowhere after it.
    let tail_at = rest
        .as_bytes()
        .windows(PREV_KEY.len())
        .rposition(|w| w == PREV_KEY)
        .ok_or("no prev_hash")?;
    let payload = &rest[..tail_at];
    let tail = &rest[tail_at + PREV_KEY.len()..];
    if tail.len() < 64 {
        return Err("short prev_hash".into());
    }
    let prev_hex = &tail[..64];
    let tail = tail[64..]
        .strip_prefix("\",\"seq\":")
        .ok_or("no seq after prev_hash")?;
    let seq_end = tail.find(',').ok_or("unterminated seq")?;
    let seq: u64 = tail[..seq_end].parse().map_err(|_| "seq is not a number")?;
    let ts = tail[seq_end..]
        .strip_prefix(",\"ts\":\"")
        .and_then(|t| t.strip_suffix("\"}"))
        .ok_or("no ts")?;
    if !is_canonical_ts(ts) {
        return Err(format!("ts {ts:?} is not canonical"));
    }
    let decode = |hex_text: &str| -> Result<[u8; 32], String> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_text, &mut out).map_err(|_| "a hash is not hex".to_string())?;
        Ok(out)
    };
    let hash = decode(hash_hex)?;
    let prev_hash = decode(prev_hex)?;
    if seq != expected_seq {
        return Err(format!(
            "seq {seq} where {expected_seq} was expected (a gap or a reorder)"
        ));
    }
    if prev_hash != *prev {
        return Err(format!("record {seq} does not link to the record before it"));
    }
    if record_hash(&prev_hash, seq, ts, kind, payload) != hash {
        return Err(format!("record {seq} does not match its hash (edited)"));
    }
    let event = AuditEvent::from_parts(kind, payload)
        .map_err(|e| format!("record {seq}: payload is not a valid {kind} event: {e}"))?;
    let mut again = Vec::with_capacity(line.len() + 1);
    format_line(
        &mut again,
        seq,
        ts,
        kind,
        payload,
        HexHash::new(&prev_hash).as_str(),
        HexHash::new(&hash).as_str(),
    );
    if again[..again.len() - 1] != *line {
        return Err(format!("record {seq} is not in canonical form"));
    }
    Ok(JournalRecord {
        seq,
        ts: ts.to_owned(),
        kind: event.kind(),
        payload: payload.to_owned(),
        prev_hash,
        hash,
        columns: event.columns(),
    })
}

/// What to do with a partial last line of the last segment (a crash mid-write: its records were
/// never acknowledged). A partial line anywhere else is corruption.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TornTail {
    /// Cut it off the file (the writer, at open).
    Cut,
    /// Leave the file alone and read up to it (offline tools; a live writer may be mid-write).
    Ignore,
}

/// Every record after `db_seq` (whose hash is `db_hash`) in the segments, in order, checked against
/// the chain: each line must re-encode to its exact bytes, hash to its stored hash and link to the
/// one before. A journal that starts after `db_seq + 1` means records are missing.
fn records_after(
    segs: &[(u64, PathBuf)],
    db_seq: u64,
    db_hash: [u8; 32],
    tail: TornTail,
) -> Result<Vec<JournalRecord>, AuditError> {
    match segs.first() {
        None => return Ok(Vec::new()),
        Some((first, path)) if *first > db_seq + 1 => {
            return Err(AuditError::Corrupt {
                seq: db_seq + 1,
                problem: format!(
                    "the audit database ends at record {db_seq} but the journal starts at {first} ({}): \
                     records are missing",
                    path.display()
                ),
            })
        }
        Some(_) => {}
    }
    let mut out = Vec::new();
    let mut expected = db_seq + 1;
    let mut prev = db_hash;
    // Segments that end before `db_seq + 1` are skipped unread.
    let start = segs
        .iter()
        .rposition(|(first, _)| *first <= expected)
        .unwrap_or(0);
    for (i, (first, path)) in segs.iter().enumerate().skip(start) {
        let last_segment = i + 1 == segs.len();
        let cut = tail == TornTail::Cut && last_segment;
        let mut file = OpenOptions::new()
            .read(true)
            .write(cut)
            .open(path)
            .map_err(io_err(path))?;
        let mut data = Vec::new();
        file.read_to_end(&mut data).map_err(io_err(path))?;
        let complete = data.iter().rposition(|b| *b == b'\n').map_or(0, |p| p + 1);
        // Zeros after the last line are preallocated space, not a torn line.
        if data[complete..].iter().any(|b| *b != 0) {
            if !last_segment {
                return Err(AuditError::Corrupt {
                    seq: expected,
                    problem: format!("{} ends in a partial line", path.display()),
                });
            }
            if cut {
                tracing::warn!(path = %path.display(), cut_bytes = data.len() - complete,
                    "audit journal ended in a torn line (crash mid-write, never acknowledged); cutting it");
                file.set_len(complete as u64).map_err(io_err(path))?;
                file.sync_all().map_err(io_err(path))?;
            }
        }
        let mut seq_in_file = *first;
        for line in data[..complete].split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            if seq_in_file < expected {
                seq_in_file += 1;
                continue;
            }
            let record = parse_line(line, expected, &prev).map_err(|problem| AuditError::Corrupt {
                seq: expected,
                problem: format!("audit journal {}: {problem}", path.display()),
            })?;
            seq_in_file += 1;
            expected += 1;
            prev = record.hash;
            out.push(record);
        }
    }
    Ok(out)
}

/// The writer's end of the journal: the current segment, open for appending.
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    /// Held for the journal's life: one writer per directory.
    _lock: File,
    file: File,
    path: PathBuf,
    size: u64,
    segment_bytes: u64,
    /// Sync new segments' directory entries (`fsync` level).
    fsync: bool,
    /// A write failed (or its batch was discarded): the file may hold bytes past `size` (a torn
    /// line, lines never acknowledged) that must be cut before the next write.
    torn: bool,
    /// The last seq of a segment closed by an append whose write then failed (reported by the
    /// next successful append).
    closed_unreported: Option<u64>,
    /// Bytes of the current segment on disk: `size`, plus the zeros preallocated past it at `fsync`.
    allocated: u64,
}

impl Journal {
    /// Opens (creating) the journal in `dir` for a database whose last record is `db_seq`/`db_hash`,
    /// and returns the records the journal has beyond it (checked; to be indexed before anything
    /// new), with the chain head after them.
    pub fn open(
        dir: &Path,
        db_seq: u64,
        db_hash: [u8; 32],
        segment_bytes: u64,
        fsync: bool,
    ) -> Result<(Journal, Vec<JournalRecord>), AuditError> {
        files::create_private_dir_all(dir).map_err(io_err(dir))?;
        let lock_path = dir.join("LOCK");
        let lock = files::private_options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        lock.try_lock()
            .map_err(|_| AuditError::JournalBusy(dir.to_owned()))?;
        let segs = segments(dir)?;
        files::tighten(&lock_path).map_err(io_err(&lock_path))?;
        for (_, seg) in &segs {
            files::tighten(seg).map_err(io_err(seg))?;
        }
        let pending = records_after(&segs, db_seq, db_hash, TornTail::Cut)?;
        let head = pending.last().map_or(db_seq, |r| r.seq);
        // Each run appends to a segment of its own, named by its first seq, so the lines of a
        // segment are always consecutive records (an empty one left by a previous run is reused).
        let path = segment_path(dir, head + 1);
        let file = files::private_options()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        if only_zeros(&file).map_err(io_err(&path))? {
            // Preallocated by a run that stopped before its first record here.
            file.set_len(0).map_err(io_err(&path))?;
        }
        let size = file.metadata().map_err(io_err(&path))?.len();
        if size > 0 {
            return Err(AuditError::Corrupt {
                seq: head + 1,
                problem: format!("{} holds records the chain does not reach", path.display()),
            });
        }
        if fsync {
            sync_dir(dir)?;
        }
        Ok((
            Journal {
                dir: dir.to_owned(),
                _lock: lock,
                file,
                path,
                size,
                segment_bytes: segment_bytes.max(1),
                fsync,
                torn: false,
                closed_unreported: None,
                allocated: 0,
            },
            pending,
        ))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends a batch's lines (records `first_seq..`) with one write. Starts a new segment first
    /// when the current one is full; returns the last seq of the segment closed, if one was.
    /// After a failed write it first cuts the file back to the last good line, so a retry writes
    /// the same seqs again where the chain stopped (never a second copy beside a torn one).
    pub fn append(&mut self, buf: &[u8], first_seq: u64) -> Result<Option<u64>, AuditError> {
        if self.torn {
            self.file.set_len(self.size).map_err(io_err(&self.path))?;
            self.allocated = self.size;
            self.torn = false;
        }
        let mut closed = self.closed_unreported.take();
        if self.size >= self.segment_bytes {
            if self.fsync {
                self.sync()?;
            }
            let path = segment_path(&self.dir, first_seq);
            self.file = files::private_options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(io_err(&path))?;
            self.path = path;
            self.size = 0;
            self.allocated = 0;
            if self.fsync {
                sync_dir(&self.dir)?;
            }
            closed = Some(first_seq - 1);
        }
        if let Err(e) = self.write_at_end(buf) {
            self.torn = true;
            self.closed_unreported = closed;
            return Err(io_err(&self.path)(e));
        }
        self.size += buf.len() as u64;
        Ok(closed)
    }

    /// Writes `buf` at `size` (at `fsync`, first zero-filling and syncing the next
    /// [`PREALLOC_BYTES`] when the batch would pass the preallocated end).
    fn write_at_end(&mut self, buf: &[u8]) -> std::io::Result<()> {
        let end = self.size + buf.len() as u64;
        if self.fsync && end > self.allocated {
            let target = end + PREALLOC_BYTES;
            let from = self.allocated.max(self.size);
            write_at(&self.file, &vec![0u8; (target - from) as usize], from)?;
            self.file.sync_data()?;
            self.allocated = target;
        }
        write_at(&self.file, buf, self.size)
    }

    /// Forgets the last `len` bytes appended (a batch whose sync failed: never acknowledged); the
    /// next append cuts them off the file first.
    pub fn discard_last(&mut self, len: u64) {
        self.size = self.size.saturating_sub(len);
        self.torn = true;
    }

    /// fdatasync of the current segment.
    pub fn sync(&self) -> Result<(), AuditError> {
        self.file.sync_data().map_err(io_err(&self.path))
    }
}

#[cfg(unix)]
fn write_at(file: &File, buf: &[u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, buf, offset)
}

#[cfg(not(unix))]
fn write_at(mut file: &File, buf: &[u8], offset: u64) -> std::io::Result<()> {
    use std::io::{Seek, SeekFrom, Write};
    file.seek(SeekFrom::Start(offset))?;
    file.write_all(buf)
}

/// Whether a file holds nothing but zeros (and is not empty): a preallocated, unused segment.
fn only_zeros(mut file: &File) -> std::io::Result<bool> {
    let mut data = Vec::new();
    file.read_to_end(&mut data)?;
    Ok(!data.is_empty() && data.iter().all(|b| *b == 0))
}

fn sync_dir(dir: &Path) -> Result<(), AuditError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))
}

/// Deletes the segments all of whose records have seq ≤ `durable_seq` (never the last segment).
/// The caller must have made those records durable in the database first.
pub fn remove_through(dir: &Path, durable_seq: u64) -> Result<usize, AuditError> {
    let segs = segments(dir)?;
    let mut removed = 0;
    for pair in segs.windows(2) {
        let (_, path) = &pair[0];
        let (next_first, _) = pair[1];
        if next_first.saturating_sub(1) <= durable_seq {
            std::fs::remove_file(path).map_err(io_err(path))?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Deletes every segment (clean shutdown: everything is in the database, durably).
pub fn remove_all(dir: &Path) -> Result<(), AuditError> {
    for (_, path) in segments(dir)? {
        std::fs::remove_file(&path).map_err(io_err(&path))?;
    }
    Ok(())
}

/// For offline tools: the records in `dir` after `db_seq`/`db_hash`, checked, without changing
/// anything (a partial last line — a live writer mid-write, or a crash — is left alone and not
/// counted).
pub fn pending_records(dir: &Path, db_seq: u64, db_hash: [u8; 32]) -> Result<Vec<JournalRecord>, AuditError> {
    records_after(&segments(dir)?, db_seq, db_hash, TornTail::Ignore)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::chain::{format_ts, GENESIS};
    use crate::audit::event::{Decision, Statement};

    fn statement_payload(sql: &str) -> String {
        AuditEvent::Statement(Statement {
            class: "read".into(),
            decision: Decision::Allow,
            grant_id: "g_1".into(),
            params: None,
            reason: None,
            relations: vec![],
            session_id: "s_1".into(),
            sql: sql.into(),
            sql_bytes: None,
            sql_sha256: None,
            sql_truncated: false,
            statement_id: 1,
            target: "shop".into(),
            user: "alice".into(),
        })
        .payload_json()
    }

    fn lines(from: u64, n: u64, prev: [u8; 32]) -> (Vec<u8>, [u8; 32]) {
        let ts = format_ts(chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap());
        let mut buf = Vec::new();
        let mut prev = prev;
        for seq in from..from + n {
            let payload = statement_payload(&format!("SELECT {seq}"));
            let hash = record_hash(&prev, seq, &ts, "statement", &payload);
            format_line(
                &mut buf,
                seq,
                &ts,
                "statement",
                &payload,
                HexHash::new(&prev).as_str(),
                HexHash::new(&hash).as_str(),
            );
            prev = hash;
        }
        (buf, prev)
    }

    /// See: issue 16, finding 12b (journal segments were created 0644 in a 0755 directory).
    #[cfg(unix)]
    #[test]
    fn segments_and_their_directory_are_private_and_loose_ones_are_tightened() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let dir = tempfile::tempdir().unwrap();
        let jdir = dir.path().join("audit.journal");
        {
            let (mut j, _) = Journal::open(&jdir, 0, GENESIS, 1, false).unwrap();
            j.append(&lines(1, 1, GENESIS).0, 1).unwrap();
            j.append(&lines(2, 1, lines(1, 1, GENESIS).1).0, 2).unwrap();
        }
        assert_eq!(mode(&jdir), 0o700);
        let segs = segments(&jdir).unwrap();
        assert_eq!(segs.len(), 2, "a rotation happened");
        for (_, seg) in &segs {
            assert_eq!(mode(seg), 0o600, "{}", seg.display());
        }
        assert_eq!(mode(&jdir.join("LOCK")), 0o600);
        std::fs::set_permissions(&segs[0].1, std::fs::Permissions::from_mode(0o644)).unwrap();
        let _reopened = Journal::open(&jdir, 0, GENESIS, 1, false).unwrap();
        assert_eq!(mode(&segs[0].1), 0o600, "an existing loose segment is tightened");
    }

    #[test]
    fn records_written_come_back_checked_and_torn_tails_are_cut() {
        let dir = tempfile::tempdir().unwrap();
        let jdir = dir.path().join("audit.journal");
        let (first, head) = lines(1, 3, GENESIS);
        {
            let (mut j, pending) = Journal::open(&jdir, 0, GENESIS, SEGMENT_BYTES, false).unwrap();
            assert!(pending.is_empty());
            j.append(&first, 1).unwrap();
            // A crash mid-write of record 4.
            let (more, _) = lines(4, 1, head);
            j.append(&more[..more.len() / 2], 4).unwrap();
        }
        let (_j, pending) = Journal::open(&jdir, 0, GENESIS, SEGMENT_BYTES, false).unwrap();
        assert_eq!(pending.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(pending[2].hash, head);
        assert_eq!(pending[0].columns.user.as_deref(), Some("alice"));
        let len = std::fs::metadata(segment_path(&jdir, 1)).unwrap().len();
        assert_eq!(len as usize, first.len(), "the torn line was cut");
    }

    /// See: issue 13 item 6 (a failed write or sync left its bytes in the journal, and the
    /// writer could only stop for good).
    #[test]
    fn a_discarded_batch_is_cut_before_the_next_write_so_the_retry_continues_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let jdir = dir.path().join("j");
        let (first, head) = lines(1, 2, GENESIS);
        let (mut j, _) = Journal::open(&jdir, 0, GENESIS, SEGMENT_BYTES, false).unwrap();
        j.append(&first, 1).unwrap();
        // Records 3 and 4 written, then their sync "failed": never acknowledged.
        let (lost, _) = lines(3, 2, head);
        j.append(&lost, 3).unwrap();
        j.discard_last(lost.len() as u64);
        // The retry writes seq 3 again, with other content (a later ts, other statements).
        let ts = format_ts(chrono::DateTime::from_timestamp(1_800_000_001, 0).unwrap());
        let payload = statement_payload("SELECT 'retried'");
        let hash = record_hash(&head, 3, &ts, "statement", &payload);
        let mut retry = Vec::new();
        format_line(
            &mut retry,
            3,
            &ts,
            "statement",
            &payload,
            HexHash::new(&head).as_str(),
            HexHash::new(&hash).as_str(),
        );
        j.append(&retry, 3).unwrap();
        drop(j);
        let on_disk = std::fs::read(segment_path(&jdir, 1)).unwrap();
        assert_eq!(
            on_disk,
            [first, retry].concat(),
            "no trace of the discarded batch"
        );
        let (_j, pending) = Journal::open(&jdir, 0, GENESIS, SEGMENT_BYTES, false).unwrap();
        assert_eq!(pending.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(pending[2].hash, hash);
    }

    /// See: issue 13 item 4 (at `fsync` every batch's fdatasync also wrote the segment's new size).
    #[test]
    fn at_fsync_segments_are_zero_filled_ahead_and_readers_stop_at_the_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let jdir = dir.path().join("j");
        let (first, head) = lines(1, 3, GENESIS);
        {
            let (mut j, _) = Journal::open(&jdir, 0, GENESIS, SEGMENT_BYTES, true).unwrap();
            j.append(&first, 1).unwrap();
            j.sync().unwrap();
            // A crash mid-write of record 4, inside the preallocated zeros.
            let (more, _) = lines(4, 1, head);
            write_at(&j.file, &more[..more.len() / 2], first.len() as u64).unwrap();
        }
        let seg = segment_path(&jdir, 1);
        let len = std::fs::metadata(&seg).unwrap().len();
        assert_eq!(
            len,
            first.len() as u64 + PREALLOC_BYTES,
            "written, then zeros ahead"
        );
        let pending = pending_records(&jdir, 0, GENESIS).unwrap();
        assert_eq!(pending.len(), 3, "offline readers stop at the torn line");
        let (j, pending) = Journal::open(&jdir, 0, GENESIS, SEGMENT_BYTES, true).unwrap();
        assert_eq!(pending.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(
            std::fs::metadata(&seg).unwrap().len(),
            first.len() as u64,
            "torn line cut"
        );
        // The new run's segment was preallocated but never written (a crash before its first
        // record): the next start reuses it.
        write_at(&j.file, &[0u8; 4096], 0).unwrap();
        drop(j);
        let (_j, pending) = Journal::open(&jdir, 0, GENESIS, SEGMENT_BYTES, true).unwrap();
        assert_eq!(pending.len(), 3);
        assert_eq!(std::fs::metadata(segment_path(&jdir, 4)).unwrap().len(), 0);
    }

    #[test]
    fn the_database_level_with_the_journal_needs_nothing_and_a_second_writer_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let jdir = dir.path().join("j");
        let (buf, head) = lines(1, 5, GENESIS);
        let (mut j, _) = Journal::open(&jdir, 0, GENESIS, SEGMENT_BYTES, false).unwrap();
        j.append(&buf, 1).unwrap();
        assert!(matches!(
            Journal::open(&jdir, 0, GENESIS, SEGMENT_BYTES, false),
            Err(AuditError::JournalBusy(_))
        ));
        drop(j);
        let (_j, pending) = Journal::open(&jdir, 5, head, SEGMENT_BYTES, false).unwrap();
        assert!(pending.is_empty());
    }

    #[test]
    fn edits_gaps_and_foreign_heads_refuse_to_open() {
        let dir = tempfile::tempdir().unwrap();
        let jdir = dir.path().join("j");
        let (buf, _) = lines(1, 3, GENESIS);
        {
            let (mut j, _) = Journal::open(&jdir, 0, GENESIS, SEGMENT_BYTES, false).unwrap();
            j.append(&buf, 1).unwrap();
        }
        // The database's head is not what the journal links to.
        assert!(matches!(
            Journal::open(&jdir, 0, [7; 32], SEGMENT_BYTES, false),
            Err(AuditError::Corrupt { seq: 1, .. })
        ));
        // An edited payload.
        let text = String::from_utf8(buf.clone())
            .unwrap()
            .replacen("SELECT 2", "SELECT 9", 1);
        std::fs::write(segment_path(&jdir, 1), text).unwrap();
        let err = Journal::open(&jdir, 0, GENESIS, SEGMENT_BYTES, false).unwrap_err();
        assert!(err.to_string().contains("does not match its hash"), "{err}");
        // A journal that starts after the database ends: records are missing.
        std::fs::remove_file(segment_path(&jdir, 1)).unwrap();
        let (later, _) = lines(5, 1, GENESIS);
        std::fs::write(segment_path(&jdir, 5), later).unwrap();
        let err = Journal::open(&jdir, 3, GENESIS, SEGMENT_BYTES, false).unwrap_err();
        assert!(err.to_string().contains("records are missing"), "{err}");
    }

    #[test]
    fn segments_rotate_and_only_durable_closed_ones_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let jdir = dir.path().join("j");
        let (mut j, _) = Journal::open(&jdir, 0, GENESIS, 1, false).unwrap();
        let mut prev = GENESIS;
        let mut closed = Vec::new();
        for seq in 1..=4 {
            let (buf, next) = lines(seq, 1, prev);
            prev = next;
            closed.push(j.append(&buf, seq).unwrap());
        }
        assert_eq!(closed, vec![None, Some(1), Some(2), Some(3)]);
        assert_eq!(segments(&jdir).unwrap().len(), 4);
        assert_eq!(remove_through(&jdir, 2).unwrap(), 2);
        let left: Vec<u64> = segments(&jdir).unwrap().iter().map(|(f, _)| *f).collect();
        assert_eq!(left, vec![3, 4]);
        assert_eq!(
            remove_through(&jdir, 100).unwrap(),
            1,
            "never the current segment"
        );
        drop(j);
        let (_j, pending) = Journal::open(&jdir, 3, lines(1, 3, GENESIS).1, 1, false).unwrap();
        assert_eq!(pending.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![4]);
        assert_eq!(pending[0].hash, prev);
    }
}
