//! Replacements for the SQLite built-ins whose cost is the product of their arguments' lengths:
//! `instr(X, Y)`, `replace(X, Y, Z)` and the two-argument `trim`, `ltrim` and `rtrim`.
//!
//! Where it sits: [`super::engine`] registers these on every auditor connection under the
//! built-ins' names, which overrides them. SQLite's progress handler (the query's time limit) never
//! runs inside one function call, so a call that compares a 2 MB string against a 1 MB one at
//! every position kept a CPU busy long after the auditor was told 57014. Here `instr` and `replace`
//! search with a linear-time algorithm (`memchr::memmem`, Two-Way), and trimming counts the byte
//! comparisons SQLite's algorithm makes and refuses past [`MAX_TRIM_WORK`].
//!
//! Semantics follow SQLite 3.46's `func.c` (NULL in, NULL out; numbers as their text; blob
//! searches in bytes, text searches counted in characters). A REAL argument is refused rather than
//! rendered, because its text form is SQLite's to decide (`CAST(x AS TEXT)` works). Everything here
//! is pure and must never run longer than linear in its arguments.

use std::borrow::Cow;

use rusqlite::types::ValueRef;

/// Byte comparisons one `trim`/`ltrim`/`rtrim` call with a character set may make.
pub const MAX_TRIM_WORK: usize = 16 * 1024 * 1024;

/// Why a replaced built-in refused its arguments.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FunctionError {
    #[error(
        "{function}() would make more than {limit} byte comparisons (a long string trimmed by a long character set); use a shorter character set"
    )]
    TooCostly { function: &'static str, limit: usize },
    #[error("the result of {function}() would be larger than timebox_audit's limit of {limit} bytes")]
    TooLarge { function: &'static str, limit: usize },
    #[error("{function}() of a REAL value is not supported by timebox_audit; CAST it AS TEXT first")]
    RealArgument { function: &'static str },
}

/// One argument as SQLite's `sqlite3_value_text`/`_blob` would see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arg<'a> {
    Null,
    Text(Cow<'a, [u8]>),
    Blob(&'a [u8]),
}

impl<'a> Arg<'a> {
    /// Converts a value; a REAL is refused (see the module comment).
    pub fn from_value(v: ValueRef<'a>, function: &'static str) -> Result<Arg<'a>, FunctionError> {
        Ok(match v {
            ValueRef::Null => Arg::Null,
            ValueRef::Integer(i) => Arg::Text(Cow::Owned(i.to_string().into_bytes())),
            ValueRef::Real(_) => return Err(FunctionError::RealArgument { function }),
            ValueRef::Text(t) => Arg::Text(Cow::Borrowed(t)),
            ValueRef::Blob(b) => Arg::Blob(b),
        })
    }

    /// The bytes `sqlite3_value_text` gives (a blob's bytes as they are); `None` for NULL.
    fn bytes(&self) -> Option<&[u8]> {
        match self {
            Arg::Null => None,
            Arg::Text(t) => Some(t),
            Arg::Blob(b) => Some(b),
        }
    }
}

fn is_continuation(b: u8) -> bool {
    b & 0xc0 == 0x80
}

/// `instr(haystack, needle)`: the 1-based position of the first occurrence (characters for text,
/// bytes when both are blobs), 0 when absent, NULL when either is NULL. Linear time.
pub fn instr(haystack: &Arg<'_>, needle: &Arg<'_>) -> Option<i64> {
    let (hay, nee) = (haystack.bytes()?, needle.bytes()?);
    if nee.is_empty() {
        return Some(1);
    }
    let is_text = !matches!((haystack, needle), (Arg::Blob(_), Arg::Blob(_)));
    // SQLite tries position 0 and then, for text, only positions that start a character: a
    // needle that opens with a continuation byte can only match at position 0.
    let at = if is_text && is_continuation(nee[0]) {
        hay.starts_with(nee).then_some(0)
    } else {
        memchr::memmem::find(hay, nee)
    };
    let Some(at) = at else { return Some(0) };
    if !is_text || at == 0 {
        return Some(at as i64 + 1);
    }
    let starts = hay[1..at].iter().filter(|&&b| !is_continuation(b)).count();
    Some(starts as i64 + 2)
}

/// What `replace` returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replaced {
    Null,
    Text(Vec<u8>),
}

/// `replace(x, pattern, with)`: every non-overlapping occurrence of `pattern`, left to right,
/// replaced. Linear time; the result may not exceed `max_len` bytes.
pub fn replace(
    x: &Arg<'_>,
    pattern: &Arg<'_>,
    with: &Arg<'_>,
    max_len: usize,
) -> Result<Replaced, FunctionError> {
    let Some(x) = x.bytes() else {
        return Ok(Replaced::Null);
    };
    let Some(pattern) = pattern.bytes() else {
        return Ok(Replaced::Null);
    };
    // SQLite reads the pattern as a C string: one that opens with NUL is empty.
    if pattern.first().is_none_or(|&b| b == 0) {
        return Ok(Replaced::Text(x.to_vec()));
    }
    let Some(with) = with.bytes() else {
        return Ok(Replaced::Null);
    };
    let too_large = FunctionError::TooLarge {
        function: "replace",
        limit: max_len,
    };
    let mut out = Vec::with_capacity(x.len().min(max_len));
    let mut copied = 0;
    for at in memchr::memmem::find_iter(x, pattern) {
        if out.len() + (at - copied) + with.len() > max_len {
            return Err(too_large);
        }
        out.extend_from_slice(&x[copied..at]);
        out.extend_from_slice(with);
        copied = at + pattern.len();
    }
    if out.len() + (x.len() - copied) > max_len {
        return Err(too_large);
    }
    out.extend_from_slice(&x[copied..]);
    Ok(Replaced::Text(out))
}

/// Which ends [`trim`] strips.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ends {
    Left,
    Right,
    Both,
}

impl Ends {
    pub fn function(self) -> &'static str {
        match self {
            Ends::Left => "ltrim",
            Ends::Right => "rtrim",
            Ends::Both => "trim",
        }
    }
}

/// `trim(x, chars)` (and `ltrim`, `rtrim`): SQLite's algorithm, counting its byte comparisons,
/// refused past `max_work`. `None` when either is NULL.
pub fn trim(
    x: &Arg<'_>,
    chars: &Arg<'_>,
    ends: Ends,
    max_work: usize,
) -> Result<Option<Vec<u8>>, FunctionError> {
    let (Some(mut x), Some(set)) = (x.bytes(), chars.bytes()) else {
        return Ok(None);
    };
    // The character set is a C string split like SQLITE_SKIP_UTF8: a byte >= 0xc0 takes the
    // continuation bytes after it.
    let set = &set[..set.iter().position(|&b| b == 0).unwrap_or(set.len())];
    let mut members: Vec<&[u8]> = Vec::new();
    let mut i = 0;
    while i < set.len() {
        let start = i;
        i += 1;
        if set[start] >= 0xc0 {
            while i < set.len() && is_continuation(set[i]) {
                i += 1;
            }
        }
        members.push(&set[start..i]);
    }
    let mut work = 0usize;
    let mut budget = |n: usize| {
        work = work.saturating_add(n.max(1));
        if work > max_work {
            Err(FunctionError::TooCostly {
                function: ends.function(),
                limit: max_work,
            })
        } else {
            Ok(())
        }
    };
    if matches!(ends, Ends::Left | Ends::Both) {
        'strip: while !x.is_empty() {
            for m in &members {
                budget(m.len())?;
                if x.starts_with(m) {
                    x = &x[m.len()..];
                    continue 'strip;
                }
            }
            break;
        }
    }
    if matches!(ends, Ends::Right | Ends::Both) {
        'strip: while !x.is_empty() {
            for m in &members {
                budget(m.len())?;
                if x.ends_with(m) {
                    x = &x[..x.len() - m.len()];
                    continue 'strip;
                }
            }
            break;
        }
    }
    Ok(Some(x.to_vec()))
}

/// Text for SQLite: invalid UTF-8 (only from blobs or casts) becomes U+FFFD, as it would on the wire.
pub fn into_text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Arg<'_> {
        Arg::Text(Cow::Borrowed(s.as_bytes()))
    }

    #[test]
    fn instr_counts_characters_in_text_and_bytes_in_blobs() {
        assert_eq!(instr(&t("hello"), &t("l")), Some(3));
        assert_eq!(instr(&t("hello"), &t("")), Some(1));
        assert_eq!(instr(&t("hello"), &t("z")), Some(0));
        assert_eq!(instr(&t("hello"), &t("hello!")), Some(0));
        assert_eq!(instr(&t("hello"), &t("h")), Some(1));
        assert_eq!(instr(&t("héllo wörld"), &t("w")), Some(7));
        assert_eq!(instr(&Arg::Blob("héllo".as_bytes()), &Arg::Blob(b"l")), Some(4));
        assert_eq!(instr(&Arg::Blob("héllo".as_bytes()), &t("l")), Some(3));
        assert_eq!(instr(&Arg::Null, &t("l")), None);
        assert_eq!(instr(&t("x"), &Arg::Null), None);
        // a needle opening with a continuation byte matches at position 0 only
        assert_eq!(instr(&t("é"), &Arg::Blob(b"\xa9")), Some(0));
    }

    #[test]
    fn instr_of_the_cpu_bomb_is_linear() {
        let hay = "a".repeat(2_000_000);
        let needle = format!("{}b", "a".repeat(1_000_000));
        assert_eq!(instr(&t(&hay), &t(&needle)), Some(0));
    }

    #[test]
    fn replace_matches_sqlite() {
        let r = |x, p, w| replace(&t(x), &t(p), &t(w), 100);
        assert_eq!(r("aaaa", "aa", "b"), Ok(Replaced::Text(b"bb".to_vec())));
        assert_eq!(r("abc", "", "x"), Ok(Replaced::Text(b"abc".to_vec())));
        assert_eq!(r("abc", "b", ""), Ok(Replaced::Text(b"ac".to_vec())));
        assert_eq!(replace(&t("abc"), &Arg::Null, &t("x"), 100), Ok(Replaced::Null));
        assert_eq!(replace(&t("abc"), &t("b"), &Arg::Null, 100), Ok(Replaced::Null));
        assert_eq!(replace(&Arg::Null, &t("b"), &t("x"), 100), Ok(Replaced::Null));
        assert_eq!(
            r("aaaa", "a", "0123456789012345678901234567890"),
            Err(FunctionError::TooLarge {
                function: "replace",
                limit: 100
            })
        );
        let big = "a".repeat(1_000_000);
        let pattern = format!("{}b", "a".repeat(500_000));
        assert!(replace(&t(&big), &t(&pattern), &t("x"), 2_000_000).is_ok());
    }

    #[test]
    fn trim_matches_sqlite_and_refuses_past_its_work_bound() {
        let tr = |x, set, ends| trim(&t(x), &t(set), ends, 1000).unwrap().map(into_text);
        assert_eq!(tr("xxhixx", "x", Ends::Both).as_deref(), Some("hi"));
        assert_eq!(tr("xxhixx", "x", Ends::Left).as_deref(), Some("hixx"));
        assert_eq!(tr("xxhixx", "x", Ends::Right).as_deref(), Some("xxhi"));
        assert_eq!(tr("éahié", "éa", Ends::Both).as_deref(), Some("hi"));
        assert_eq!(tr("hi", "", Ends::Both).as_deref(), Some("hi"));
        assert_eq!(trim(&t("hi"), &Arg::Null, Ends::Both, 1000), Ok(None));
        let long = "a".repeat(1000);
        let set = format!("{}a", "b".repeat(1000));
        assert_eq!(
            trim(&t(&long), &t(&set), Ends::Both, MAX_TRIM_WORK),
            Ok(Some(Vec::new()))
        );
        let long = "a".repeat(1_000_000);
        let set = format!("{}a", "b".repeat(1_000_000));
        assert_eq!(
            trim(&t(&long), &t(&set), Ends::Left, MAX_TRIM_WORK),
            Err(FunctionError::TooCostly {
                function: "ltrim",
                limit: MAX_TRIM_WORK
            })
        );
    }

    #[test]
    fn a_real_argument_is_refused_and_integers_are_their_text() {
        assert_eq!(
            Arg::from_value(ValueRef::Real(1.5), "instr"),
            Err(FunctionError::RealArgument { function: "instr" })
        );
        assert_eq!(
            Arg::from_value(ValueRef::Integer(-12), "instr").unwrap(),
            Arg::Text(Cow::Owned(b"-12".to_vec()))
        );
    }
}
