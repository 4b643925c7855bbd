//! Column masking on the wire (issue 15, item 1): the masking methods and the rewriting of the two
//! backend frames that carry a masked column, RowDescription and DataRow. Pure: no I/O, no
//! catalog; fed whole frames and a lookup from a column's identity (table OID, attribute number)
//! to its [`MaskMethod`].
//!
//! Where it sits: `proxy::relay::mask` feeds it the backend frames of sessions whose role has
//! `mask` (config: `config::Masking`), with identities from the target's catalog ([`catalog`],
//! read by `proxy::target_catalog`); `policy::mask_shape` denies, before execution, every other
//! shape that could return a masked column (expressions, whole-row references, set operations,
//! views, COPY TO, RETURNING), so a masked column reaches the client only as a direct output column
//! whose RowDescription names it.
//!
//! Choices made here: a masked column (other than `null`) is announced as type `text` (OID 25) in
//! RowDescription, so every method can be carried in both formats — a binary `text` value is its
//! UTF-8 bytes — and drivers decode what they are told. `null` keeps the column's type. Masking a
//! value needs its text: in text format that is what PostgreSQL sent; in binary format only the
//! text-like types ([`TEXT_LIKE_TYPES`]) are read, any other type is masked as by `redact`
//! (never passed through). This module must never let an unmasked value of a masked column out,
//! nor panic on a malformed frame (it answers [`FrameError`]).

pub mod catalog;
pub mod freshness;
pub mod pins;

use std::fmt;
use std::str::FromStr;

use bytes::{BufMut, BytesMut};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The type OID masked columns are announced with: `text`.
pub const MASKED_TYPE_OID: u32 = 25;

/// Types whose binary format is their UTF-8 text: `name`, `text`, `bpchar`, `varchar`.
pub const TEXT_LIKE_TYPES: [u32; 4] = [19, 25, 1042, 1043];

/// What `redact` shows (and what `partial` and `email` show in place of what they hide).
pub const REDACTED: &str = "***";

/// How a masked column is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MaskMethod {
    /// A fixed placeholder ([`REDACTED`]).
    Redact,
    /// SQL NULL (the column keeps its type).
    Null,
    /// A keyed hash, stable per installation, so equal values stay equal (joins, counts).
    Hash,
    /// The last 4 characters, the rest replaced; values of 4 characters or fewer are redacted.
    Partial,
    /// The domain of an e-mail address (`***@example.com`); anything else is redacted.
    Email,
}

impl MaskMethod {
    pub const NAMES: [&'static str; 5] = ["redact", "null", "hash", "partial", "email"];

    pub fn as_str(self) -> &'static str {
        match self {
            MaskMethod::Redact => "redact",
            MaskMethod::Null => "null",
            MaskMethod::Hash => "hash",
            MaskMethod::Partial => "partial",
            MaskMethod::Email => "email",
        }
    }
}

impl fmt::Display for MaskMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for MaskMethod {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "redact" => MaskMethod::Redact,
            "null" => MaskMethod::Null,
            "hash" => MaskMethod::Hash,
            "partial" => MaskMethod::Partial,
            "email" => MaskMethod::Email,
            _ => {
                return Err(format!(
                    "{s:?} is not a masking method ({})",
                    MaskMethod::NAMES.join(" | ")
                ))
            }
        })
    }
}

/// The key of `hash`: derived from the installation secret (never the secret itself, which also
/// derives the SCRAM salts), so hashes are stable per installation and unguessable outside it.
/// Held as the HMAC state already keyed with it: each value's hash starts from a copy.
#[derive(Clone)]
pub struct MaskKey(HmacSha256);

impl fmt::Debug for MaskKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MaskKey(…)")
    }
}

type HmacSha256 = Hmac<Sha256>;

impl MaskKey {
    pub fn derive(installation_secret: &[u8; 32]) -> MaskKey {
        let mut mac = HmacSha256::new_from_slice(installation_secret).expect("HMAC takes any key length");
        mac.update(b"timebox column masking v1");
        let key = mac.finalize().into_bytes();
        MaskKey(HmacSha256::new_from_slice(&key).expect("HMAC takes any key length"))
    }

    /// Appends `hash` of a value: 32 lowercase hex digits (128 bits) of HMAC-SHA256.
    fn put_hash(&self, value: &[u8], out: &mut BytesMut) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut mac = self.0.clone();
        mac.update(value);
        let digest = mac.finalize().into_bytes();
        for b in &digest[..16] {
            out.put_slice(&[HEX[(b >> 4) as usize], HEX[(b & 15) as usize]]);
        }
    }
}

/// Masks one non-NULL value given as its text (UTF-8, possibly invalid: read lossily); `None` is
/// SQL NULL.
pub fn mask_text(method: MaskMethod, key: &MaskKey, value: &[u8]) -> Option<Vec<u8>> {
    let mut out = BytesMut::new();
    put_masked_text(method, key, value, &mut out).then(|| out.to_vec())
}

/// Appends the masked text of one non-NULL value (as [`mask_text`]) to `out`; `false`, with
/// nothing appended, for SQL NULL. Allocates nothing unless the value is invalid UTF-8.
fn put_masked_text(method: MaskMethod, key: &MaskKey, value: &[u8], out: &mut BytesMut) -> bool {
    let text = || String::from_utf8_lossy(value);
    match method {
        MaskMethod::Null => return false,
        MaskMethod::Redact => out.put_slice(REDACTED.as_bytes()),
        MaskMethod::Hash => key.put_hash(value, out),
        MaskMethod::Partial => {
            let text = text();
            out.put_slice(REDACTED.as_bytes());
            // The fourth character from the end: shown from there when something precedes it.
            if let Some((at, _)) = text.char_indices().nth_back(3).filter(|&(at, _)| at > 0) {
                out.put_slice(text[at..].as_bytes());
            }
        }
        MaskMethod::Email => {
            out.put_slice(REDACTED.as_bytes());
            if let Some((local, domain)) = text().rsplit_once('@') {
                if !local.is_empty() && !domain.is_empty() {
                    out.put_u8(b'@');
                    out.put_slice(domain.as_bytes());
                }
            }
        }
    }
    true
}

/// A masked column of a result: how it is masked, its original type and its format (0 text,
/// 1 binary).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaskedColumn {
    pub method: MaskMethod,
    pub type_oid: u32,
    pub format: i16,
}

impl MaskedColumn {
    /// Masks one non-NULL value as it came from the server.
    pub fn mask(&self, key: &MaskKey, value: &[u8]) -> Option<Vec<u8>> {
        let mut out = BytesMut::new();
        self.put_masked(key, value, &mut out).then(|| out.to_vec())
    }

    /// Appends the masked form of one non-NULL value (as [`MaskedColumn::mask`]) to `out`;
    /// `false`, with nothing appended, for SQL NULL.
    fn put_masked(&self, key: &MaskKey, value: &[u8], out: &mut BytesMut) -> bool {
        let readable = self.format == 0 || TEXT_LIKE_TYPES.contains(&self.type_oid);
        match self.method {
            MaskMethod::Null => false,
            _ if readable => put_masked_text(self.method, key, value, out),
            // A binary value timebox does not decode: never passed through.
            _ => {
                out.put_slice(REDACTED.as_bytes());
                true
            }
        }
    }
}

/// A backend frame that does not parse as what it claims to be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("malformed {0} frame")]
    Malformed(&'static str),
}

/// Reads big-endian fields off a frame body; every read is bounds-checked.
struct Reader<'a> {
    body: &'a [u8],
    at: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.body.len());
        let end = end.ok_or(FrameError::Malformed(self.what))?;
        let s = &self.body[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn i16(&mut self) -> Result<i16, FrameError> {
        Ok(i16::from_be_bytes(self.take(2)?.try_into().expect("2 bytes")))
    }
    fn i32(&mut self) -> Result<i32, FrameError> {
        Ok(i32::from_be_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn cstr(&mut self) -> Result<&'a [u8], FrameError> {
        let rest = &self.body[self.at..];
        let nul = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(FrameError::Malformed(self.what))?;
        let s = &rest[..nul];
        self.at += nul + 1;
        Ok(s)
    }
}

/// The body of a whole frame with tag `tag` (checks the tag and the length word).
fn body<'a>(frame: &'a [u8], tag: u8, what: &'static str) -> Result<&'a [u8], FrameError> {
    if frame.len() < 5 || frame[0] != tag {
        return Err(FrameError::Malformed(what));
    }
    let len = u32::from_be_bytes([frame[1], frame[2], frame[3], frame[4]]) as usize;
    if len + 1 != frame.len() {
        return Err(FrameError::Malformed(what));
    }
    Ok(&frame[5..])
}

/// Rewrites a RowDescription: each field whose (table OID, attribute number) `masked` names is
/// announced as `text` (unless masked with `null`). Returns the new frame and, per field, its
/// masking (`None`: passed through); `None` overall when no field is masked (the frame goes out
/// unchanged).
#[allow(clippy::type_complexity)]
pub fn rewrite_row_description(
    frame: &[u8],
    masked: impl Fn(u32, i16) -> Option<MaskMethod>,
) -> Result<Option<(BytesMut, Vec<Option<MaskedColumn>>)>, FrameError> {
    let what = "RowDescription";
    let mut r = Reader {
        body: body(frame, b'T', what)?,
        at: 0,
        what,
    };
    let n = r.i16()?;
    let mut out = BytesMut::with_capacity(frame.len());
    let mut columns = Vec::with_capacity(n.max(0) as usize);
    out.put_i16(n);
    for _ in 0..n {
        let name = r.cstr()?;
        let table = r.i32()? as u32;
        let attnum = r.i16()?;
        let (type_oid, typlen, typmod, format) = (r.i32()? as u32, r.i16()?, r.i32()?, r.i16()?);
        let column = masked(table, attnum).map(|method| MaskedColumn {
            method,
            type_oid,
            format,
        });
        out.put_slice(name);
        out.put_u8(0);
        out.put_i32(table as i32);
        out.put_i16(attnum);
        match column {
            Some(c) if c.method != MaskMethod::Null => {
                out.put_i32(MASKED_TYPE_OID as i32);
                out.put_i16(-1);
                out.put_i32(-1);
            }
            _ => {
                out.put_i32(type_oid as i32);
                out.put_i16(typlen);
                out.put_i32(typmod);
            }
        }
        out.put_i16(format);
        columns.push(column);
    }
    if r.at != r.body.len() {
        return Err(FrameError::Malformed(what));
    }
    if columns.iter().all(Option::is_none) {
        return Ok(None);
    }
    Ok(Some((with_header(b'T', &out), columns)))
}

/// Rewrites a DataRow with the masking of each column (from [`rewrite_row_description`]).
pub fn rewrite_data_row(
    frame: &[u8],
    columns: &[Option<MaskedColumn>],
    key: &MaskKey,
) -> Result<BytesMut, FrameError> {
    let mut out = BytesMut::with_capacity(frame.len());
    rewrite_data_row_into(frame, columns, key, &mut out)?;
    Ok(out)
}

/// [`rewrite_data_row`] appending the rewritten frame to `out` (a buffer reused for every row:
/// no allocation per row or value once it is big enough). On an error `out` is left as it was.
pub fn rewrite_data_row_into(
    frame: &[u8],
    columns: &[Option<MaskedColumn>],
    key: &MaskKey,
    out: &mut BytesMut,
) -> Result<(), FrameError> {
    let mark = out.len();
    let written = put_data_row(frame, columns, key, out);
    if written.is_err() {
        out.truncate(mark);
    }
    written
}

/// Appends the rewritten DataRow: each value goes straight into `out`, its length word (and the
/// frame's) filled in once it is written.
fn put_data_row(
    frame: &[u8],
    columns: &[Option<MaskedColumn>],
    key: &MaskKey,
    out: &mut BytesMut,
) -> Result<(), FrameError> {
    let what = "DataRow";
    let malformed = || FrameError::Malformed(what);
    let mut r = Reader {
        body: body(frame, b'D', what)?,
        at: 0,
        what,
    };
    let n = r.i16()?;
    if n < 0 || n as usize != columns.len() {
        return Err(malformed());
    }
    let start = out.len();
    out.reserve(frame.len());
    out.put_u8(b'D');
    out.put_u32(0);
    out.put_i16(n);
    for column in columns {
        let len = r.i32()?;
        let value = if len < 0 {
            None
        } else {
            Some(r.take(len as usize)?)
        };
        match (column, value) {
            (_, None) => out.put_i32(-1),
            (None, Some(v)) => {
                out.put_i32(len);
                out.put_slice(v);
            }
            (Some(c), Some(v)) => {
                let at = out.len();
                out.put_i32(0);
                if c.put_masked(key, v, out) {
                    let n = i32::try_from(out.len() - at - 4).map_err(|_| malformed())?;
                    out[at..at + 4].copy_from_slice(&n.to_be_bytes());
                } else {
                    out[at..at + 4].copy_from_slice(&(-1_i32).to_be_bytes());
                }
            }
        }
    }
    if r.at != r.body.len() {
        return Err(malformed());
    }
    let n = u32::try_from(out.len() - start - 1).map_err(|_| malformed())?;
    out[start + 1..start + 5].copy_from_slice(&n.to_be_bytes());
    Ok(())
}

fn with_header(tag: u8, body: &[u8]) -> BytesMut {
    let mut f = BytesMut::with_capacity(body.len() + 5);
    f.put_u8(tag);
    f.put_u32(body.len() as u32 + 4);
    f.put_slice(body);
    f
}

#[cfg(test)]
mod tests;
