//! The hash chain: how each record's hash is computed, and [`verify`], which walks a database and
//! reports the first record that does not match.
//!
//! **Canonical encoding.** A record's canonical bytes are the compact JSON object
//! `{"kind":K,"payload":P,"seq":N,"ts":T}` — keys in lexicographic order, `K` and `T` JSON strings
//! (plain ASCII, never escaped), `N` a decimal integer, `P` the stored payload bytes exactly (itself
//! canonical, see [`super::event`]). Then
//!
//! ```text
//! hash = SHA-256(prev_hash ‖ canonical bytes)     prev_hash as 32 raw bytes; 32 zero bytes for seq 1
//! ```
//!
//! Both hashes are stored and shown as lowercase hex. The JSONL line of a record is the same object
//! with `hash` and `prev_hash` added (keys still sorted), so a third party can recompute the chain from
//! the JSONL files alone.
//!
//! What the chain proves: no record up to a known head (seq, hash) was edited, removed, reordered or
//! inserted — an auditor who noted `timebox audit head` can later check it. What it does not prove:
//! anything after the last anchored head. Anyone with write access to the file can truncate the tail
//! or recompute every hash after an edit (SHA-256 has no secret), so the head must be anchored
//! elsewhere (a ticket, another system) to make such a rewrite detectable. This module must never
//! modify the database it verifies.

use rusqlite::Connection;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::event::{AuditEvent, Columns, KINDS};
use super::AuditError;

/// The `prev_hash` of the first record.
pub const GENESIS: [u8; 32] = [0u8; 32];

/// The latest record: what an auditor anchors. `seq` 0 with the genesis hash for an empty log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    pub seq: u64,
    pub hash: String,
}

impl Head {
    pub fn genesis() -> Head {
        Head {
            seq: 0,
            hash: hex::encode(GENESIS),
        }
    }

    /// Parses `SEQ:HASH` (as `timebox audit head` prints it).
    pub fn parse(text: &str) -> Option<Head> {
        let (seq, hash) = text.trim().split_once(':')?;
        let seq = seq.parse().ok()?;
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(hash, &mut bytes).ok()?;
        Some(Head {
            seq,
            hash: hash.to_ascii_lowercase(),
        })
    }
}

impl std::fmt::Display for Head {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.seq, self.hash)
    }
}

/// The first record that does not match, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadRecord {
    pub seq: u64,
    pub problem: String,
    /// Fleet-wide verification: the instance whose chain it is in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
}

/// What [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    /// True when every record links and matches (and the anchor, if any, is there).
    pub ok: bool,
    /// Records in the database.
    pub records: u64,
    /// The last record as stored.
    pub head: Head,
    pub first_bad: Option<BadRecord>,
    /// Where the remaining chain starts when retention removed older records: the last removed
    /// record (its seq and hash); the first remaining record must link to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anchor: Option<Head>,
    /// Fleet-wide verification (central table): one report per instance's chain.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<InstanceReport>,
}

/// One instance's chain in a fleet-wide [`VerifyReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceReport {
    pub instance: String,
    #[serde(flatten)]
    pub report: VerifyReport,
}

/// The canonical bytes' hash of one record (see the module docs).
pub fn record_hash(prev: &[u8; 32], seq: u64, ts: &str, kind: &str, payload: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(b"{\"kind\":\"");
    h.update(kind.as_bytes());
    h.update(b"\",\"payload\":");
    h.update(payload.as_bytes());
    h.update(b",\"seq\":");
    h.update(decimal(seq, &mut [0u8; 20]));
    h.update(b",\"ts\":\"");
    h.update(ts.as_bytes());
    h.update(b"\"}");
    h.finalize().into()
}

/// `n` in decimal, written into `buf` (no allocation on the writer's hot path).
pub fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// A hash as 64 lowercase hex digits, on the stack.
#[derive(Clone, Copy)]
pub struct HexHash([u8; 64]);

impl HexHash {
    pub fn new(hash: &[u8; 32]) -> HexHash {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 64];
        for (i, b) in hash.iter().enumerate() {
            out[2 * i] = DIGITS[(b >> 4) as usize];
            out[2 * i + 1] = DIGITS[(b & 15) as usize];
        }
        HexHash(out)
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII hex digits are ever stored.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// A commit time in the stored shape: RFC 3339, UTC, microseconds, `Z`.
pub fn format_ts(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Whether `ts` has the exact stored shape `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
pub fn is_canonical_ts(ts: &str) -> bool {
    let b = ts.as_bytes();
    b.len() == 27
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'.',
            26 => *c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

fn decode_hash(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out).ok()?;
    (text.bytes().all(|c| !c.is_ascii_uppercase())).then_some(out)
}

/// One stored record's fields as [`ChainWalk::push`] checks them.
#[derive(Debug, Clone, Copy)]
pub struct RecordFields<'a> {
    pub seq: i64,
    pub ts: &'a str,
    pub kind: &'a str,
    pub payload: &'a str,
    pub prev_hash: &'a str,
    pub hash: &'a str,
    pub columns: &'a Columns,
}

/// Walks one chain record by record (pure: the SQLite index and the central table both feed it).
/// It starts after `start` — the genesis head, or the anchor a retention run left (the last
/// removed record) — and checks each record: a gap in seq (deleted), a `prev_hash` that is not the
/// previous record's hash (inserted, reordered), a hash that does not match the content (edited),
/// or indexed columns that disagree with the payload. For each of `anchors` (heads noted
/// earlier), the record at its seq must exist and carry its hash; anchors the retention removed
/// (below `start`) can no longer be checked and are skipped, the one at `start` is compared with it.
#[derive(Debug)]
pub struct ChainWalk {
    expected: u64,
    prev: [u8; 32],
    records: u64,
    head: Head,
    first_bad: Option<BadRecord>,
    /// Anchors not yet reached, by seq, largest first.
    pending: Vec<Head>,
    anchor: Option<Head>,
}

impl ChainWalk {
    pub fn new(start: Option<Head>, anchors: &[Head]) -> ChainWalk {
        let start_head = start.clone().unwrap_or_else(Head::genesis);
        let prev = decode_hash(&start_head.hash).unwrap_or(GENESIS);
        let mut first_bad = None;
        if start.is_some() && decode_hash(&start_head.hash).is_none() {
            first_bad = Some(BadRecord {
                seq: start_head.seq,
                problem: "the retention anchor's hash is not 64 lowercase hex digits".into(),
                instance: None,
            });
        }
        for a in anchors.iter().filter(|a| a.seq > 0 && a.seq == start_head.seq) {
            if a.hash != start_head.hash && first_bad.is_none() {
                first_bad = Some(BadRecord {
                    seq: a.seq,
                    problem: format!(
                        "the retention anchor {start_head} differs from the anchored head {a}: the log was rewritten"
                    ),
                    instance: None,
                });
            }
        }
        let mut pending: Vec<Head> = anchors
            .iter()
            .filter(|a| a.seq > start_head.seq)
            .cloned()
            .collect();
        pending.sort_by_key(|a| a.seq);
        pending.reverse();
        ChainWalk {
            expected: start_head.seq + 1,
            prev,
            records: 0,
            head: start_head,
            first_bad,
            pending,
            anchor: start,
        }
    }

    /// Checks the next record (records must come in seq order).
    pub fn push(&mut self, r: &RecordFields<'_>) {
        self.records += 1;
        self.head = Head {
            seq: r.seq.max(0) as u64,
            hash: r.hash.to_owned(),
        };
        if self.first_bad.is_some() {
            return;
        }
        let mut problem = check_record(r, self.expected, &self.prev);
        while self.pending.last().is_some_and(|a| a.seq <= self.head.seq) {
            let Some(a) = self.pending.pop() else { break };
            if problem.is_none() && a.seq == self.head.seq && a.hash != r.hash {
                problem = Some((
                    a.seq,
                    format!(
                        "hash {} differs from the anchored head {a}: the log was rewritten",
                        r.hash
                    ),
                ));
            }
        }
        match problem {
            Some((seq, problem)) => {
                self.first_bad = Some(BadRecord {
                    seq,
                    problem,
                    instance: None,
                })
            }
            None => {
                self.expected = r.seq as u64 + 1;
                self.prev = decode_hash(r.hash).unwrap_or(GENESIS);
            }
        }
    }

    pub fn finish(mut self) -> VerifyReport {
        if self.first_bad.is_none() {
            if let Some(a) = self.pending.last() {
                self.first_bad = Some(BadRecord {
                    seq: a.seq,
                    problem: format!(
                        "the anchored record {} is missing: the log ends at {} (truncated)",
                        a.seq, self.head.seq
                    ),
                    instance: None,
                });
            }
        }
        VerifyReport {
            ok: self.first_bad.is_none(),
            records: self.records,
            head: self.head,
            first_bad: self.first_bad,
            anchor: self.anchor,
            instances: Vec::new(),
        }
    }
}

/// Walks every record of an audit database in seq order, from its retention anchor if it has one
/// (see [`ChainWalk`]).
pub fn verify(conn: &Connection, anchors: &[Head]) -> Result<VerifyReport, AuditError> {
    let start = super::sqlite::retention_anchor(conn)?;
    let mut stmt = conn.prepare(
        "SELECT seq, ts, kind, payload, prev_hash, hash, user_name, target, grant_id, session_id \
         FROM audit_events ORDER BY seq",
    )?;
    let mut rows = stmt.query([])?;
    let mut walk = ChainWalk::new(start, anchors);
    while let Some(row) = rows.next()? {
        let columns = Columns {
            user: row.get(6)?,
            target: row.get(7)?,
            grant_id: row.get(8)?,
            session_id: row.get(9)?,
        };
        let (ts, kind, payload, prev_hash, hash): (String, String, String, String, String) =
            (row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?, row.get(5)?);
        walk.push(&RecordFields {
            seq: row.get(0)?,
            ts: &ts,
            kind: &kind,
            payload: &payload,
            prev_hash: &prev_hash,
            hash: &hash,
            columns: &columns,
        });
    }
    let mut report = walk.finish();
    if report.first_bad.is_none() {
        if let Some(seq) = super::sqlite::statement_without_session_row(conn)? {
            report.ok = false;
            report.first_bad = Some(BadRecord {
                seq,
                problem: "its user, grant and session are missing from audit_sessions \
                          (searches by user or grant would not find it)"
                    .into(),
                instance: None,
            });
        }
    }
    Ok(report)
}

/// Checks one record against the chain so far; `Some((seq, problem))` for the first mismatch.
fn check_record(r: &RecordFields<'_>, expected: u64, prev: &[u8; 32]) -> Option<(u64, String)> {
    let seq = r.seq;
    if seq < expected as i64 {
        return Some((
            expected,
            format!("unexpected seq {seq} where {expected} was expected"),
        ));
    }
    let seq = seq as u64;
    if seq > expected {
        let missing = if seq == expected + 1 {
            format!("record {expected} is missing (deleted)")
        } else {
            format!("records {expected} to {} are missing (deleted)", seq - 1)
        };
        return Some((expected, missing));
    }
    if decode_hash(r.prev_hash) != Some(*prev) {
        let what = if seq == 1 {
            "prev_hash of the first record is not the genesis hash".to_owned()
        } else {
            format!(
                "prev_hash does not match the hash of record {} (a record was inserted, removed or reordered)",
                seq - 1
            )
        };
        return Some((seq, what));
    }
    let Some(stored) = decode_hash(r.hash) else {
        return Some((seq, "hash is not 64 lowercase hex digits".into()));
    };
    if record_hash(prev, seq, r.ts, r.kind, r.payload) != stored {
        return Some((seq, "hash does not match the record's content (edited)".into()));
    }
    if !is_canonical_ts(r.ts) {
        return Some((seq, format!("ts {:?} is not in the canonical format", r.ts)));
    }
    if !KINDS.contains(&r.kind) {
        return Some((seq, format!("unknown kind {:?}", r.kind)));
    }
    match AuditEvent::from_parts(r.kind, r.payload) {
        Err(e) => Some((seq, format!("payload is not a valid {} event: {e}", r.kind))),
        Ok(event) if event.columns() != *r.columns => Some((
            seq,
            "indexed columns (user_name, target, grant_id, session_id) do not match the payload".into(),
        )),
        Ok(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_covers_the_canonical_json_of_the_record() {
        let payload = r#"{"a":1}"#;
        let ts = "2026-01-01T00:00:00.000000Z";
        let mut h = Sha256::new();
        h.update(GENESIS);
        h.update(br#"{"kind":"statement","payload":{"a":1},"seq":7,"ts":"2026-01-01T00:00:00.000000Z"}"#);
        let expected: [u8; 32] = h.finalize().into();
        assert_eq!(record_hash(&GENESIS, 7, ts, "statement", payload), expected);
        // every input matters
        assert_ne!(record_hash(&GENESIS, 8, ts, "statement", payload), expected);
        assert_ne!(record_hash(&[1; 32], 7, ts, "statement", payload), expected);
        assert_ne!(record_hash(&GENESIS, 7, ts, "session_end", payload), expected);
        assert_ne!(record_hash(&GENESIS, 7, ts, "statement", r#"{"a":2}"#), expected);
    }

    /// Records 1..=n of a chain: (seq, ts, kind, payload, prev_hash, hash).
    fn chain(n: u64) -> Vec<(i64, String, String, String, String, String)> {
        let ts = "2026-01-01T00:00:00.000000Z";
        let payload = r#"{"kind_test":true}"#;
        let mut prev = GENESIS;
        (1..=n)
            .map(|seq| {
                let hash = record_hash(&prev, seq, ts, "x", payload);
                let row = (
                    seq as i64,
                    ts.to_owned(),
                    "x".to_owned(),
                    payload.to_owned(),
                    hex::encode(prev),
                    hex::encode(hash),
                );
                prev = hash;
                row
            })
            .collect()
    }

    /// Links and hashes only (the content checks need real events; `verify`'s tests cover them).
    fn walk(
        rows: &[(i64, String, String, String, String, String)],
        start: Option<Head>,
        anchors: &[Head],
    ) -> Option<(u64, String)> {
        let mut w = ChainWalk::new(start, anchors);
        let columns = Columns::default();
        for (seq, ts, kind, payload, prev_hash, hash) in rows {
            w.push(&RecordFields {
                seq: *seq,
                ts,
                kind,
                payload,
                prev_hash,
                hash,
                columns: &columns,
            });
        }
        w.finish().first_bad.map(|b| (b.seq, b.problem))
    }

    fn head_of(row: &(i64, String, String, String, String, String)) -> Head {
        Head {
            seq: row.0 as u64,
            hash: row.5.clone(),
        }
    }

    #[test]
    fn a_chain_verifies_from_its_retention_anchor_and_not_from_a_wrong_one() {
        let rows = chain(5);
        // From genesis, the first link holds and the content check (kind "x") is what fails.
        assert_eq!(walk(&rows, None, &[]).unwrap().0, 1);
        // Records 1..=2 pruned, the anchor is record 2: record 3 must link to it.
        let anchor = head_of(&rows[1]);
        let bad = walk(&rows[2..], Some(anchor.clone()), &[]).unwrap();
        assert_eq!(bad.0, 3);
        assert!(bad.1.contains("unknown kind"), "the links held: {bad:?}");
        let wrong = Head {
            seq: 2,
            hash: "ab".repeat(32),
        };
        let bad = walk(&rows[2..], Some(wrong), &[]).unwrap();
        assert_eq!(bad.0, 3);
        assert!(bad.1.contains("prev_hash does not match"), "{bad:?}");
        // A gap right after the anchor is a deletion.
        let bad = walk(&rows[3..], Some(anchor.clone()), &[]).unwrap();
        assert_eq!(bad, (3, "record 3 is missing (deleted)".into()));
        // An auditor's anchor below the retention anchor cannot be checked and is skipped; one
        // at the retention anchor is compared with it.
        let mut w = ChainWalk::new(Some(anchor.clone()), &[head_of(&rows[0]), anchor.clone()]);
        assert!(w.first_bad.is_none());
        let forged = Head {
            seq: 2,
            hash: "cd".repeat(32),
        };
        w = ChainWalk::new(Some(anchor.clone()), &[forged]);
        assert_eq!(w.first_bad.take().map(|b| b.seq), Some(2));
        // An anchor past the end is a truncation; an empty remainder is the anchor itself.
        let report = ChainWalk::new(Some(anchor.clone()), &[head_of(&rows[4])]).finish();
        assert!(report.first_bad.unwrap().problem.contains("truncated"));
        let report = ChainWalk::new(Some(anchor.clone()), &[]).finish();
        assert!(report.ok);
        assert_eq!((report.head, report.anchor), (anchor.clone(), Some(anchor)));
    }

    #[test]
    fn timestamps_and_heads_parse_strictly() {
        assert!(is_canonical_ts("2026-01-01T00:00:00.123456Z"));
        for n in [0, 7, 10, 12345, u64::MAX] {
            assert_eq!(decimal(n, &mut [0; 20]), n.to_string().as_bytes());
        }
        let h = [0xa5u8; 32];
        assert_eq!(HexHash::new(&h).as_str(), hex::encode(h));
        let t = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").unwrap();
        assert_eq!(
            format_ts(t.with_timezone(&chrono::Utc)),
            "2026-01-01T00:00:00.000000Z"
        );
        assert!(!is_canonical_ts("2026-01-01T00:00:00Z"));
        assert!(!is_canonical_ts("2026-01-01T00:00:00.123456+00:00"));
        let h = Head::parse(&format!("12:{}", "ab".repeat(32))).unwrap();
        assert_eq!(h.seq, 12);
        assert_eq!(h.to_string(), format!("12:{}", "ab".repeat(32)));
        assert_eq!(Head::parse("12:abc"), None);
        assert_eq!(Head::parse("x:00"), None);
        assert_eq!(Head::genesis().hash, "0".repeat(64));
    }
}
