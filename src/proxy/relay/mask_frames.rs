//! Reading the few frontend and backend message bodies result masking needs ([`super`]): names,
//! a Bind's result formats, and an ErrorResponse without its DETAIL. Pure; malformed input reads
//! as `None`.

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
