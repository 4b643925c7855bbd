//! The JSON Lines sink (`audit.jsonl`): the same ordered stream as the database, one record per line,
//! for shipping to a SIEM. Rotated by size: `x.jsonl` → `x.jsonl.1` → `x.jsonl.2` …, keeping
//! `audit.jsonl_keep` rotated files.
//!
//! A line is the record's canonical JSON plus its hashes, keys sorted:
//! `{"hash":…,"kind":…,"payload":{…},"prev_hash":…,"seq":N,"ts":…}` (see [`super::chain`]).
//! Written by the writer thread after the batch is committed to SQLite (the database is the source of
//! truth); on open, a torn last line (crash mid-write) is cut and lines the database has but the file
//! lacks are appended, so the file catches up. It must never reorder or rewrite a complete line.

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::AuditError;
use crate::store::files;

/// An open JSONL file with its rotation policy.
#[derive(Debug)]
pub struct JsonlSink {
    path: PathBuf,
    file: File,
    /// Bytes in the current file (rotation is decided on this, not on metadata per write).
    size: u64,
    max_bytes: u64,
    keep: usize,
    /// Sync rotated files and the directory (durability `fsync`).
    fsync: bool,
    /// Lines a failed write left unwritten (their records are in the journal), written first next
    /// time, after the file is cut back to `size` (a torn line).
    backlog: Vec<u8>,
    backlog_ends: Vec<usize>,
}

/// The most bytes of lines the sink keeps for a retry after failed writes; past it the export
/// fails for good (a restart catches it up from the database).
pub const BACKLOG_LIMIT: usize = 64 * 1024 * 1024;

/// Appends one record's line (with its `\n`) to `out`.
pub fn format_line(
    out: &mut Vec<u8>,
    seq: u64,
    ts: &str,
    kind: &str,
    payload: &str,
    prev_hash: &str,
    hash: &str,
) {
    out.extend_from_slice(b"{\"hash\":\"");
    out.extend_from_slice(hash.as_bytes());
    out.extend_from_slice(b"\",\"kind\":\"");
    out.extend_from_slice(kind.as_bytes());
    out.extend_from_slice(b"\",\"payload\":");
    out.extend_from_slice(payload.as_bytes());
    out.extend_from_slice(b",\"prev_hash\":\"");
    out.extend_from_slice(prev_hash.as_bytes());
    out.extend_from_slice(b"\",\"seq\":");
    out.extend_from_slice(seq.to_string().as_bytes());
    out.extend_from_slice(b",\"ts\":\"");
    out.extend_from_slice(ts.as_bytes());
    out.extend_from_slice(b"\"}\n");
}

/// `x.jsonl` → `x.jsonl.N`.
pub fn rotated_path(path: &Path, n: usize) -> PathBuf {
    let mut s: OsString = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> AuditError + '_ {
    move |source| AuditError::Io {
        path: path.to_owned(),
        source,
    }
}

impl JsonlSink {
    /// Opens (creating) the file for appending, after cutting a torn last line. Returns the sink and
    /// the seq of the last complete line in the file (or, if it is empty, in `x.jsonl.1`).
    pub fn open(
        path: &Path,
        max_bytes: u64,
        keep: usize,
        fsync: bool,
    ) -> Result<(JsonlSink, Option<u64>), AuditError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            files::create_private_dir_all(dir).map_err(io_err(dir))?;
        }
        let mut file = files::private_options()
            .create(true)
            .read(true)
            .append(true)
            .open(path)
            .map_err(io_err(path))?;
        files::tighten(path).map_err(io_err(path))?;
        for i in 1..=keep.max(1) {
            let rotated = rotated_path(path, i);
            files::tighten(&rotated).map_err(io_err(&rotated))?;
        }
        let mut last_seq = None;
        let mut size = 0;
        if file.metadata().map_err(io_err(path))?.is_file() {
            size = repair_torn_line(&mut file).map_err(io_err(path))?;
            last_seq = last_seq_in(&mut file, size).map_err(io_err(path))?;
            if size == 0 {
                let previous = rotated_path(path, 1);
                if let Ok(mut f) = File::open(&previous) {
                    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
                    last_seq = last_seq_in(&mut f, len).map_err(io_err(&previous))?;
                }
            }
        }
        Ok((
            JsonlSink {
                path: path.to_owned(),
                file,
                size,
                max_bytes: max_bytes.max(1),
                keep: keep.max(1),
                fsync,
                backlog: Vec::new(),
                backlog_ends: Vec::new(),
            },
            last_seq,
        ))
    }

    /// Appends whole lines: `buf` holds them back to back, `ends[i]` is where line `i` ends. Rotates
    /// before a line that would take the file past `max_bytes` (a file holds at least one line).
    /// Lines a write fails on are kept and written first by the next call, after the file is cut
    /// back to its last complete line, so the export has every record once, in order.
    pub fn append(&mut self, buf: &[u8], ends: &[usize]) -> Result<(), AuditError> {
        if self.backlog.is_empty() {
            return self.append_or_keep(buf, ends);
        }
        if self.backlog.len() + buf.len() > BACKLOG_LIMIT {
            return Err(AuditError::JsonlBacklog(self.path.clone()));
        }
        keep_lines(&mut self.backlog, &mut self.backlog_ends, buf, ends, 0);
        self.file.set_len(self.size).map_err(io_err(&self.path))?;
        let (b, e) = (
            std::mem::take(&mut self.backlog),
            std::mem::take(&mut self.backlog_ends),
        );
        self.append_or_keep(&b, &e)
    }

    fn append_or_keep(&mut self, buf: &[u8], ends: &[usize]) -> Result<(), AuditError> {
        self.append_lines(buf, ends).map_err(|(done, e)| {
            keep_lines(&mut self.backlog, &mut self.backlog_ends, buf, ends, done);
            e
        })
    }

    /// [`JsonlSink::append`] without the retry; on error, where the unwritten lines start.
    fn append_lines(&mut self, buf: &[u8], ends: &[usize]) -> Result<(), (usize, AuditError)> {
        let mut chunk_start = 0;
        let mut line_start = 0;
        for &end in ends {
            let pending = (line_start - chunk_start) as u64;
            let len = (end - line_start) as u64;
            if self.size + pending + len > self.max_bytes && self.size + pending > 0 {
                self.write(&buf[chunk_start..line_start])
                    .map_err(|e| (chunk_start, e))?;
                chunk_start = line_start;
                self.rotate().map_err(|e| (chunk_start, e))?;
            }
            line_start = end;
        }
        self.write(&buf[chunk_start..line_start])
            .map_err(|e| (chunk_start, e))
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), AuditError> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.file.write_all(bytes).map_err(io_err(&self.path))?;
        self.size += bytes.len() as u64;
        Ok(())
    }

    /// fsync of the current file's data.
    pub fn sync(&self) -> Result<(), AuditError> {
        self.file.sync_data().map_err(io_err(&self.path))
    }

    fn rotate(&mut self) -> Result<(), AuditError> {
        if self.fsync {
            self.sync()?;
        }
        for i in (1..self.keep).rev() {
            let from = rotated_path(&self.path, i);
            if from.exists() {
                let to = rotated_path(&self.path, i + 1);
                std::fs::rename(&from, &to).map_err(io_err(&from))?;
            }
        }
        let first = rotated_path(&self.path, 1);
        std::fs::rename(&self.path, &first).map_err(io_err(&self.path))?;
        self.file = files::private_options()
            .create(true)
            .read(true)
            .append(true)
            .open(&self.path)
            .map_err(io_err(&self.path))?;
        self.size = 0;
        if self.fsync {
            if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))?;
            }
        }
        tracing::info!(path = %self.path.display(), "audit JSONL rotated");
        Ok(())
    }
}

/// Appends the lines of `buf` from byte `from` (a line start) to `out`, with their ends.
fn keep_lines(out: &mut Vec<u8>, out_ends: &mut Vec<usize>, buf: &[u8], ends: &[usize], from: usize) {
    let base = out.len();
    out.extend_from_slice(&buf[from..]);
    out_ends.extend(ends.iter().filter(|e| **e > from).map(|e| base + e - from));
}

/// Cuts the file back to its last `\n` if it does not end with one; returns the new length.
fn repair_torn_line(file: &mut File) -> std::io::Result<u64> {
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(0);
    }
    let mut last = [0u8; 1];
    file.seek(SeekFrom::Start(len - 1))?;
    file.read_exact(&mut last)?;
    if last[0] == b'\n' {
        return Ok(len);
    }
    // Scan backwards in chunks for the previous newline.
    let mut end = len;
    let mut keep = 0;
    let mut chunk = vec![0u8; 64 * 1024];
    while end > 0 {
        let start = end.saturating_sub(chunk.len() as u64);
        let n = (end - start) as usize;
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut chunk[..n])?;
        if let Some(p) = chunk[..n].iter().rposition(|b| *b == b'\n') {
            keep = start + p as u64 + 1;
            break;
        }
        end = start;
    }
    tracing::warn!(
        cut_bytes = len - keep,
        "audit JSONL ended in a torn line (crash mid-write); cutting it"
    );
    file.set_len(keep)?;
    Ok(keep)
}

/// The `seq` of the last line: it sits near the end (`…,"seq":N,"ts":"…"}`), after the payload.
fn last_seq_in(file: &mut File, len: u64) -> std::io::Result<Option<u64>> {
    if len == 0 {
        return Ok(None);
    }
    let start = len.saturating_sub(256);
    let mut tail = vec![0u8; (len - start) as usize];
    file.seek(SeekFrom::Start(start))?;
    file.read_exact(&mut tail)?;
    let needle = b"\"seq\":";
    let Some(p) = tail.windows(needle.len()).rposition(|w| w == needle) else {
        return Ok(None);
    };
    let digits: String = tail[p + needle.len()..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .map(|b| *b as char)
        .collect();
    Ok(digits.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(seq: u64, payload_len: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let payload = format!("{{\"x\":\"{}\"}}", "a".repeat(payload_len));
        format_line(
            &mut out,
            seq,
            "2026-01-01T00:00:00.000000Z",
            "statement",
            &payload,
            "00",
            "11",
        );
        out
    }

    fn append(sink: &mut JsonlSink, lines: &[Vec<u8>]) {
        let mut buf = Vec::new();
        let mut ends = Vec::new();
        for l in lines {
            buf.extend_from_slice(l);
            ends.push(buf.len());
        }
        sink.append(&buf, &ends).unwrap();
    }

    #[test]
    fn lines_are_canonical_json_with_sorted_keys() {
        let l = line(7, 1);
        let text = String::from_utf8(l).unwrap();
        assert_eq!(
            text,
            "{\"hash\":\"11\",\"kind\":\"statement\",\"payload\":{\"x\":\"a\"},\"prev_hash\":\"00\",\"seq\":7,\
             \"ts\":\"2026-01-01T00:00:00.000000Z\"}\n"
        );
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["seq"], 7);
    }

    /// See: issue 16, finding 12b (the JSONL sink and its rotations were created 0644).
    #[cfg(unix)]
    #[test]
    fn the_sink_and_its_rotations_are_private_and_loose_ones_are_tightened() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/a.jsonl");
        let one = line(1, 100).len() as u64;
        {
            let (mut sink, _) = JsonlSink::open(&path, one, 2, false).unwrap();
            append(&mut sink, &(1..=3).map(|s| line(s, 100)).collect::<Vec<_>>());
        }
        assert_eq!(mode(&dir.path().join("sub")), 0o700);
        for p in [path.clone(), rotated_path(&path, 1), rotated_path(&path, 2)] {
            assert_eq!(mode(&p), 0o600, "{}", p.display());
        }
        let rotated = rotated_path(&path, 2);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::set_permissions(&rotated, std::fs::Permissions::from_mode(0o604)).unwrap();
        let _reopened = JsonlSink::open(&path, one, 2, false).unwrap();
        assert_eq!((mode(&path), mode(&rotated)), (0o600, 0o600));
    }

    #[test]
    fn rotation_happens_at_the_size_limit_and_keeps_n_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        let one = line(1, 100).len() as u64;
        let (mut sink, last) = JsonlSink::open(&path, one * 3, 2, true).unwrap();
        assert_eq!(last, None);
        append(&mut sink, &(1..=3).map(|s| line(s, 100)).collect::<Vec<_>>());
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            one * 3,
            "exactly at the limit"
        );
        assert!(!rotated_path(&path, 1).exists());
        append(&mut sink, &(4..=10).map(|s| line(s, 100)).collect::<Vec<_>>());
        // 10 lines, 3 per file: current has 10, .1 has 7-9, .2 has 4-6, 1-3 dropped (keep 2)
        let count = |p: &Path| std::fs::read_to_string(p).unwrap().lines().count();
        assert_eq!(count(&path), 1);
        assert_eq!(count(&rotated_path(&path, 1)), 3);
        assert_eq!(count(&rotated_path(&path, 2)), 3);
        assert!(!rotated_path(&path, 3).exists());
        let first_of_2 = std::fs::read_to_string(rotated_path(&path, 2)).unwrap();
        assert!(first_of_2.starts_with("{\"hash\"") && first_of_2.contains("\"seq\":4,"));
        drop(sink);
        let (_, last) = JsonlSink::open(&path, one * 3, 2, true).unwrap();
        assert_eq!(last, Some(10));
    }

    #[test]
    fn a_line_larger_than_the_limit_gets_a_file_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        let (mut sink, _) = JsonlSink::open(&path, 10, 5, false).unwrap();
        append(&mut sink, &[line(1, 50), line(2, 50)]);
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 1);
        assert_eq!(
            std::fs::read_to_string(rotated_path(&path, 1))
                .unwrap()
                .lines()
                .count(),
            1
        );
    }

    #[test]
    fn a_torn_last_line_is_cut_and_the_last_seq_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        let mut bytes = line(1, 5);
        bytes.extend_from_slice(&line(2, 70_000));
        let torn = line(3, 140_000);
        bytes.extend_from_slice(&torn[..torn.len() / 2]);
        std::fs::write(&path, &bytes).unwrap();
        let (_, last) = JsonlSink::open(&path, 1 << 30, 3, false).unwrap();
        assert_eq!(last, Some(2));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.ends_with("}\n"));
        assert_eq!(text.lines().count(), 2);
        // an empty current file: the last seq comes from the rotated one
        std::fs::rename(&path, rotated_path(&path, 1)).unwrap();
        let (_, last) = JsonlSink::open(&path, 1 << 30, 3, false).unwrap();
        assert_eq!(last, Some(2));
    }
}
