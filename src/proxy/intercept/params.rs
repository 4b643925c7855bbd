//! Bind parameters as audited: the values of a Bind message body, read without trusting its
//! counts (a malformed body reads as `None`).

/// The parameter values of a Bind message body (after the portal and statement names): text
/// parameters as text, binary ones as `\x…` hex, NULL as `None`. `None` if malformed.
pub(super) fn bind_params(rest: &[u8]) -> Option<Vec<Option<String>>> {
    let mut r = rest;
    let mut take = |n: usize| -> Option<&[u8]> {
        if r.len() < n {
            return None;
        }
        let (head, tail) = r.split_at(n);
        r = tail;
        Some(head)
    };
    let i16_at = |b: &[u8]| i16::from_be_bytes([b[0], b[1]]);
    let nformats = i16_at(take(2)?).max(0) as usize;
    let mut formats = Vec::with_capacity(nformats);
    for _ in 0..nformats {
        formats.push(i16_at(take(2)?));
    }
    let nparams = i16_at(take(2)?).max(0) as usize;
    let mut params = Vec::with_capacity(nparams);
    for i in 0..nparams {
        let len = i32::from_be_bytes(take(4)?.try_into().ok()?);
        if len < 0 {
            params.push(None);
            continue;
        }
        let value = take(len as usize)?;
        let binary = match formats.len() {
            0 => false,
            1 => formats[0] == 1,
            _ => formats.get(i).copied() == Some(1),
        };
        params.push(Some(if binary {
            format!("\\x{}", hex::encode(value))
        } else {
            String::from_utf8_lossy(value).into_owned()
        }));
    }
    Some(params)
}
