//! Reading the few frontend and backend message bodies result masking needs ([`super`]): names,
//! a Bind's result formats, an ErrorResponse without its DETAIL, and what a statement text may do
//! to described layouts. Pure; malformed input reads as `None`.

use bytes::BytesMut;

pub(super) fn cstr(b: &[u8]) -> Option<(String, &[u8])> {
    let nul = b.iter().position(|&c| c == 0)?;
    Some((String::from_utf8_lossy(&b[..nul]).into_owned(), &b[nul + 1..]))
}

fn bind_formats(rest: &[u8]) -> Option<Vec<i16>> {
    let n = i16::from_be_bytes(rest.get(..2)?.try_into().ok()?).max(0) as usize;
    (0..n)
        .map(|i| {
            let at = 2 + 2 * i;
            Some(i16::from_be_bytes(rest.get(at..at + 2)?.try_into().ok()?))
        })
        .collect()
}

/// The result format codes of a Bind body after the two names: skip the parameter formats and
/// values.
pub(super) fn result_formats(rest: &[u8]) -> Option<Vec<i16>> {
    let nparams_fmt = i16::from_be_bytes(rest.get(..2)?.try_into().ok()?).max(0) as usize;
    let mut at = 2 + 2 * nparams_fmt;
    let nparams = i16::from_be_bytes(rest.get(at..at + 2)?.try_into().ok()?).max(0) as usize;
    at += 2;
    for _ in 0..nparams {
        let len = i32::from_be_bytes(rest.get(at..at + 4)?.try_into().ok()?);
        at += 4 + len.max(0) as usize;
    }
    bind_formats(rest.get(at..)?)
}

/// An ErrorResponse without its DETAIL field, `None` when it has none (or is malformed). A
/// constraint violation's DETAIL quotes the failing row ("Failing row contains (…)") or key, masked
/// columns included: masked roles' sessions never get one (the relay replaces the frame once it
/// has read its SQLSTATE).
pub(in crate::proxy::relay) fn without_detail(frame: &[u8]) -> Option<BytesMut> {
    let body = frame.get(5..)?;
    let mut out = BytesMut::with_capacity(body.len());
    let mut rest = body;
    let mut dropped = false;
    while let Some((&kind, tail)) = rest.split_first() {
        if kind == 0 {
            break;
        }
        let nul = tail.iter().position(|&b| b == 0)?;
        if kind == b'D' {
            dropped = true;
        } else {
            out.extend_from_slice(&rest[..nul + 2]);
        }
        rest = &tail[nul + 1..];
    }
    if !dropped {
        return None;
    }
    out.extend_from_slice(&[0]);
    let mut f = BytesMut::with_capacity(out.len() + 5);
    f.extend_from_slice(b"E");
    f.extend_from_slice(&(out.len() as u32 + 4).to_be_bytes());
    f.extend_from_slice(&out);
    Some(f)
}

/// Whether `sql` may close, declare or prepare a cursor or statement (whose names protocol portals
/// and statements share): a plain substring test on the lowercased text, so comments and
/// identifiers may over-match (they only make described layouts stale: fail closed).
pub(crate) fn reshapes_names(sql: &str) -> bool {
    let lower = sql.to_ascii_lowercase();
    ["declare", "close", "prepare", "deallocate", "discard"]
        .iter()
        .any(|k| lower.contains(k))
}

/// Whether a Parse text's result shape is decided when it runs, not when it is described: a
/// `FETCH` (its cursor may be declared, closed and declared again over other columns after the
/// Describe) or an SQL-level `EXECUTE` (likewise its prepared statement). Unparseable text counts
/// (fail closed; the interceptor refuses it anyway).
pub(crate) fn shaped_at_run_time(sql: &str) -> bool {
    let lower = sql.to_ascii_lowercase();
    if !lower.contains("fetch") && !lower.contains("execute") {
        // Keywords cannot be quoted or escaped: without these words it is neither statement.
        return false;
    }
    let Ok(parsed) = pg_query::parse(sql, 0) else {
        return true;
    };
    parsed.protobuf.stmts.iter().any(|raw| {
        matches!(
            raw.stmt.as_ref().and_then(|s| s.node.as_ref()),
            Some(pg_query::NodeEnum::FetchStmt(_) | pg_query::NodeEnum::ExecuteStmt(_)) | None
        )
    })
}
