//! Passwords inside one string literal's text: libpq conninfo (`password=…`, `sslpassword=…`) and
//! a URI's userinfo (`postgresql://user:x@host`). Part of [`super`]'s redaction; pure.

use std::borrow::Cow;
use std::ops::Range;

use super::{apply_edits, contains_ci, REDACTED};

/// Redacts conninfo passwords (`password=…`) and URI userinfo passwords inside one string literal's
/// raw content (quotes may appear doubled, `''`, as SQL escapes them).
pub(super) fn redact_conninfo(text: &str) -> Cow<'_, str> {
    if !contains_ci(text, "password") && !text.contains("://") {
        return Cow::Borrowed(text);
    }
    let bytes = text.as_bytes();
    let mut edits: Vec<(Range<usize>, String)> = Vec::new();
    // key=value pairs whose key ends in "password" (password, sslpassword).
    let mut i = 0;
    while i + 8 <= bytes.len() {
        if !bytes[i..i + 8].eq_ignore_ascii_case(b"password") {
            i += 1;
            continue;
        }
        let mut j = i + 8;
        while j < bytes.len() && bytes[j].is_ascii_whitespace() {
            j += 1;
        }
        if j >= bytes.len() || bytes[j] != b'=' {
            i += 8;
            continue;
        }
        j += 1;
        while j < bytes.len() && bytes[j].is_ascii_whitespace() {
            j += 1;
        }
        let start = j;
        if bytes[j..].starts_with(REDACTED.as_bytes()) {
            // Already hidden (by the SQL reading of a literal inside this one).
            i = j + REDACTED.len();
            continue;
        }
        let end = if bytes[j..].starts_with(b"''") {
            // A quoted conninfo value inside an SQL literal: ''…'' (or to the end).
            find(bytes, b"''", j + 2).map_or(bytes.len(), |e| e + 2)
        } else if bytes[j..].starts_with(b"\\'") {
            find(bytes, b"\\'", j + 2).map_or(bytes.len(), |e| e + 2)
        } else if bytes[j..].starts_with(b"'") {
            // A quoted conninfo value in decoded text: '…' with \' inside (or to the end).
            let mut e = j + 1;
            while e < bytes.len() && bytes[e] != b'\'' {
                e += if bytes[e] == b'\\' { 2 } else { 1 };
            }
            (e + 1).min(bytes.len())
        } else {
            j + bytes[j..]
                .iter()
                .take_while(|b| !b.is_ascii_whitespace() && **b != b'&')
                .count()
        };
        if end > start {
            edits.push((start..end, REDACTED.to_owned()));
        }
        i = end.max(i + 8);
    }
    // scheme://user:password@host
    let mut from = 0;
    while let Some(p) = find(bytes, b"://", from) {
        let auth_start = p + 3;
        let auth_end = auth_start
            + bytes[auth_start..]
                .iter()
                .take_while(|b| !matches!(b, b'/' | b'?' | b'#') && !b.is_ascii_whitespace())
                .count();
        if let Some(at) = bytes[auth_start..auth_end].iter().rposition(|b| *b == b'@') {
            let userinfo = auth_start..auth_start + at;
            if let Some(colon) = bytes[userinfo.clone()].iter().position(|b| *b == b':') {
                let pw = userinfo.start + colon + 1..userinfo.end;
                if !pw.is_empty()
                    && &text[pw.clone()] != REDACTED
                    && !edits.iter().any(|(r, _)| r.start < pw.end && pw.start < r.end)
                {
                    edits.push((pw, REDACTED.to_owned()));
                }
            }
        }
        from = auth_end.max(p + 3);
    }
    apply_edits(text, edits)
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if from > haystack.len() {
        return None;
    }
    haystack[from..]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}
