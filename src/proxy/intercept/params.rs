//! Bind parameters as audited: the values of a Bind message body, read without trusting its
//! counts (a malformed body reads as `None`); a Parse's parameter types (for roles with masks).

use super::cstr;

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

/// A Parse body's parameter type OIDs (after its name and text: an int16 count, then the OIDs;
/// what a malformed body holds, PostgreSQL refuses the message anyway).
pub(super) fn parse_param_types(body: &[u8]) -> Vec<u32> {
    let Some((_, rest)) = cstr(body).and_then(|(_, rest)| cstr(rest)) else {
        return Vec::new();
    };
    let count = rest
        .get(..2)
        .map_or(0, |c| u16::from_be_bytes([c[0], c[1]]) as usize);
    rest.get(2..)
        .unwrap_or_default()
        .chunks_exact(4)
        .take(count)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_parameter_types_are_read_after_the_name_and_text() {
        let mut body = b"s1\0SELECT $1, $2\0".to_vec();
        body.extend_from_slice(&2u16.to_be_bytes());
        body.extend_from_slice(&25u32.to_be_bytes());
        body.extend_from_slice(&16400u32.to_be_bytes());
        assert_eq!(parse_param_types(&body), vec![25, 16400]);
        assert_eq!(parse_param_types(b"\0SELECT 1\0\0\0"), Vec::<u32>::new());
        assert_eq!(parse_param_types(b"s1\0SELECT"), Vec::<u32>::new(), "malformed");
    }
}
