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

/// Walks every record in seq order and reports the first that does not match: a gap in seq (deleted),
/// a `prev_hash` that is not the previous record's hash (inserted, reordered), a hash that does not
/// match the content (edited), or indexed columns that disagree with the payload. For each of
/// `anchors`, the record at its seq must exist and carry its hash (a truncated or rewritten log
/// fails).
pub fn verify(conn: &Connection, anchors: &[Head]) -> Result<VerifyReport, AuditError> {
    let mut stmt = conn.prepare(
        "SELECT seq, ts, kind, payload, prev_hash, hash, user_name, target, grant_id, session_id \
         FROM audit_events ORDER BY seq",
    )?;
    let mut rows = stmt.query([])?;
    let mut records = 0u64;
    let mut prev = GENESIS;
    let mut expected = 1u64;
    let mut head = Head::genesis();
    let mut first_bad: Option<BadRecord> = None;
    // Anchors not yet reached, by seq; the genesis "anchor" (seq 0) needs no record.
    let mut pending: Vec<&Head> = anchors.iter().filter(|a| a.seq > 0).collect();
    pending.sort_by_key(|a| a.seq);
    pending.reverse();
    while let Some(row) = rows.next()? {
        records += 1;
        let seq: i64 = row.get(0)?;
        let hash: String = row.get(5)?;
        head = Head {
            seq: seq.max(0) as u64,
            hash: hash.clone(),
        };
        if first_bad.is_some() {
            continue;
        }
        let mut problem = check_row(row, seq, expected, &prev, &hash)?;
        while pending.last().is_some_and(|a| a.seq <= head.seq) {
            let Some(a) = pending.pop() else { break };
            if problem.is_none() && a.seq == head.seq && a.hash != hash {
                problem = Some((
                    a.seq,
                    format!("hash {hash} differs from the anchored head {a}: the log was rewritten"),
                ));
            }
        }
        match problem {
            Some((bad_seq, problem)) => {
                first_bad = Some(BadRecord {
                    seq: bad_seq,
                    problem,
                })
            }
            None => {
                expected = seq as u64 + 1;
                prev = decode_hash(&hash).unwrap_or(GENESIS);
            }
        }
    }
    if first_bad.is_none() {
        if let Some(a) = pending.last() {
            first_bad = Some(BadRecord {
                seq: a.seq,
                problem: format!(
                    "the anchored record {} is missing: the log ends at {} (truncated)",
                    a.seq, head.seq
                ),
            });
        }
    }
    Ok(VerifyReport {
        ok: first_bad.is_none(),
        records,
        head,
        first_bad,
    })
}

/// Checks one row against the chain so far; `Some((seq, problem))` for the first mismatch.
fn check_row(
    row: &rusqlite::Row<'_>,
    seq: i64,
    expected: u64,
    prev: &[u8; 32],
    hash: &str,
) -> Result<Option<(u64, String)>, AuditError> {
    if seq < expected as i64 {
        return Ok(Some((
            expected,
            format!("unexpected seq {seq} where {expected} was expected"),
        )));
    }
    let seq = seq as u64;
    if seq > expected {
        let missing = if seq == expected + 1 {
            format!("record {expected} is missing (deleted)")
        } else {
            format!("records {expected} to {} are missing (deleted)", seq - 1)
        };
        return Ok(Some((expected, missing)));
    }
    let ts: String = row.get(1)?;
    let kind: String = row.get(2)?;
    let payload: String = row.get(3)?;
    let prev_hash: String = row.get(4)?;
    if decode_hash(&prev_hash) != Some(*prev) {
        let what = if seq == 1 {
            "prev_hash of the first record is not the genesis hash".to_owned()
        } else {
            format!(
                "prev_hash does not match the hash of record {} (a record was inserted, removed or reordered)",
                seq - 1
            )
        };
        return Ok(Some((seq, what)));
    }
    let Some(stored) = decode_hash(hash) else {
        return Ok(Some((seq, "hash is not 64 lowercase hex digits".into())));
    };
    if record_hash(prev, seq, &ts, &kind, &payload) != stored {
        return Ok(Some((
            seq,
            "hash does not match the record's content (edited)".into(),
        )));
    }
    if !is_canonical_ts(&ts) {
        return Ok(Some((seq, format!("ts {ts:?} is not in the canonical format"))));
    }
    if !KINDS.contains(&kind.as_str()) {
        return Ok(Some((seq, format!("unknown kind {kind:?}"))));
    }
    let columns = Columns {
        user: row.get(6)?,
        target: row.get(7)?,
        grant_id: row.get(8)?,
        session_id: row.get(9)?,
    };
    match AuditEvent::from_parts(&kind, &payload) {
        Err(e) => return Ok(Some((seq, format!("payload is not a valid {kind} event: {e}")))),
        Ok(event) if event.columns() != columns => {
            return Ok(Some((
                seq,
                "indexed columns (user_name, target, grant_id, session_id) do not match the payload".into(),
            )));
        }
        Ok(_) => {}
    }
    Ok(None)
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
