//! Tokens from PostgreSQL's own lexer (pg_query's scanner), and string literals read as the server
//! reads them (`'…'`, `E'…'`, `U&'…'` with `UESCAPE`, `$tag$…$tag$`, continuation across lines).
//! Part of [`super`]'s redaction; pure, and must never panic on odd input.

use std::ops::Range;

use super::contains_ci;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Comment,
    /// A keyword or an unquoted identifier.
    Word,
    QuotedIdent,
    /// A string constant of any spelling (one token even across a continuation).
    Str,
    Param,
    /// `=>` or `:=` (a named argument).
    Arrow,
    Op(u8),
    Other,
}

#[derive(Debug, Clone)]
pub(super) struct Token {
    pub(super) kind: Kind,
    pub(super) span: Range<usize>,
}

impl Token {
    pub(super) fn is_trivia(&self) -> bool {
        self.kind == Kind::Comment
    }
}

/// The tokens of `sql` as PostgreSQL's lexer sees them; `None` if it refuses the text (an
/// unterminated literal or comment, a NUL byte) or reports spans that do not fit it.
pub(super) fn lex(sql: &str) -> Option<Vec<Token>> {
    use pg_query::protobuf::Token as T;
    let scanned = pg_query::scan_tokens(sql).ok()?;
    let mut tokens = Vec::with_capacity(scanned.len());
    for t in scanned {
        let start = usize::try_from(t.start).ok()?;
        let end = usize::try_from(t.end).ok()?;
        if start > end || !sql.is_char_boundary(start) || !sql.is_char_boundary(end) || end > sql.len() {
            return None;
        }
        let kind = match T::try_from(t.token) {
            Ok(T::SqlComment | T::CComment) => Kind::Comment,
            Ok(T::Sconst | T::Usconst | T::Bconst | T::Xconst) => Kind::Str,
            Ok(T::Ident) if sql[start..].starts_with('"') => Kind::QuotedIdent,
            Ok(T::Ident) => Kind::Word,
            Ok(T::Uident) => Kind::QuotedIdent,
            Ok(T::Param) => Kind::Param,
            Ok(T::EqualsGreater | T::ColonEquals) => Kind::Arrow,
            _ if (1..128).contains(&t.token) => Kind::Op(t.token as u8),
            _ if t.keyword_kind != 0 => Kind::Word,
            _ => Kind::Other,
        };
        // N'…' comes as a one-letter NCHAR keyword before the literal: one literal token here.
        if let Some(prev) = tokens.last_mut().filter(|p: &&mut Token| {
            kind == Kind::Str && p.span.end == start && sql[p.span.clone()].eq_ignore_ascii_case("n")
        }) {
            prev.kind = Kind::Str;
            prev.span.end = end;
            continue;
        }
        tokens.push(Token {
            kind,
            span: start..end,
        });
    }
    Some(tokens)
}

/// Whether `text` holds something that can spell a secret without its letters: a backslash escape
/// (`E'\x70assword=…'`) or a Unicode escape (`U&'…'`).
pub(super) fn has_escapes(text: &str) -> bool {
    text.contains('\\') || contains_ci(text, "u&")
}

/// Where a statement that cannot be lexed starts to be hidden: its first trigger word or escape.
pub(super) fn first_marker(sql: &str) -> usize {
    let b = sql.as_bytes();
    let at = |i: usize, needle: &[u8]| {
        b.len() - i >= needle.len() && b[i..i + needle.len()].eq_ignore_ascii_case(needle)
    };
    (0..b.len())
        .find(|&i| match b[i] | 0x20 {
            b'p' => at(i, b"pass") || at(i, b"pwd"),
            b's' => at(i, b"secret"),
            b't' => at(i, b"token") || at(i, b"tbx"),
            b'k' => at(i, b"key"),
            b'c' => at(i, b"credential"),
            b':' => at(i, b"://"),
            b'|' => b[i] == b'\\',
            b'u' => at(i, b"u&"),
            _ => false,
        })
        .unwrap_or(0)
}

/// A string literal read as the server reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Literal {
    /// Its value.
    pub(super) value: String,
    /// Where the value's raw text sits in the literal when it maps byte for byte (a single `'…'`
    /// segment, with `''` for a quote, or a dollar-quoted body), so an edit there keeps the rest.
    pub(super) raw_content: Option<Range<usize>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quoting {
    Plain,
    Escape,
    Unicode,
}

/// Reads one string-constant token; `escape` is a `U&` literal's `UESCAPE` character. `None` when
/// the text is not a literal this function can read exactly (the caller fails closed).
pub(super) fn parse_literal(text: &str, escape: Option<char>) -> Option<Literal> {
    let b = text.as_bytes();
    if b.first() == Some(&b'$') {
        let tag_len = text[1..].find('$')? + 2;
        let tag = &text[..tag_len];
        if text.len() < 2 * tag_len || !text.ends_with(tag) {
            return None;
        }
        let content = tag_len..text.len() - tag_len;
        return Some(Literal {
            value: text[content.clone()].to_owned(),
            raw_content: Some(content),
        });
    }
    let (quoting, mut i) = match b {
        [b'u' | b'U', b'&', b'\'', ..] => (Quoting::Unicode, 2),
        [b'e' | b'E', b'\'', ..] => (Quoting::Escape, 1),
        [b'n' | b'N' | b'b' | b'B' | b'x' | b'X', b'\'', ..] => (Quoting::Plain, 1),
        [b'\'', ..] => (Quoting::Plain, 0),
        _ => return None,
    };
    let mut raw: Vec<u8> = Vec::new();
    let mut segments = Vec::new();
    loop {
        if b.get(i) != Some(&b'\'') {
            return None;
        }
        i += 1;
        let start = i;
        loop {
            match *b.get(i)? {
                b'\'' if b.get(i + 1) == Some(&b'\'') => {
                    raw.push(b'\'');
                    i += 2;
                }
                b'\'' => break,
                b'\\' if quoting == Quoting::Escape => {
                    let (bytes, used) = backslash_escape(&b[i..])?;
                    raw.extend_from_slice(&bytes);
                    i += used;
                }
                c => {
                    raw.push(c);
                    i += 1;
                }
            }
        }
        segments.push(start..i);
        i += 1;
        // A continuation: whitespace with a newline, then another quote (comments: not read).
        let ws = b[i..].iter().take_while(|c| c.is_ascii_whitespace()).count();
        if b.get(i + ws) == Some(&b'\'') && b[i..i + ws].contains(&b'\n') {
            i += ws;
            continue;
        }
        break;
    }
    if i != b.len() {
        return None;
    }
    let value = match quoting {
        Quoting::Plain => String::from_utf8(raw).ok()?,
        Quoting::Escape => String::from_utf8_lossy(&raw).into_owned(),
        Quoting::Unicode => unicode_unescape(&String::from_utf8(raw).ok()?, escape.unwrap_or('\\'))?,
    };
    let raw_content = match (quoting, segments.as_slice()) {
        (Quoting::Plain, [only]) => Some(only.clone()),
        _ => None,
    };
    Some(Literal { value, raw_content })
}

/// One backslash escape of an `E'…'` literal (`b` starts at the backslash): its bytes and length.
fn backslash_escape(b: &[u8]) -> Option<(Vec<u8>, usize)> {
    let hex = |s: &[u8]| {
        std::str::from_utf8(s)
            .ok()
            .and_then(|s| u32::from_str_radix(s, 16).ok())
    };
    let digits =
        |from: usize, max: usize, f: fn(&u8) -> bool| b[from..].iter().take(max).take_while(|c| f(c)).count();
    let c = *b.get(1)?;
    Some(match c {
        b'b' => (vec![8], 2),
        b'f' => (vec![12], 2),
        b'n' => (vec![b'\n'], 2),
        b'r' => (vec![b'\r'], 2),
        b't' => (vec![b'\t'], 2),
        b'x' => {
            let n = digits(2, 2, u8::is_ascii_hexdigit);
            if n == 0 {
                (vec![b'x'], 2)
            } else {
                (vec![hex(&b[2..2 + n])? as u8], 2 + n)
            }
        }
        b'0'..=b'7' => {
            let n = digits(1, 3, |c| (b'0'..=b'7').contains(c));
            let v = u32::from_str_radix(std::str::from_utf8(&b[1..1 + n]).ok()?, 8).ok()?;
            (vec![(v & 0xff) as u8], 1 + n)
        }
        b'u' | b'U' => {
            let n = if c == b'u' { 4 } else { 8 };
            if digits(2, n, u8::is_ascii_hexdigit) != n {
                return None;
            }
            let ch = char::from_u32(hex(&b[2..2 + n])?)?;
            (ch.to_string().into_bytes(), 2 + n)
        }
        other => (vec![other], 2),
    })
}

/// Decodes the escapes of a `U&'…'` body (`\XXXX`, `\+XXXXXX`, `\\`, with `esc` for `\`).
fn unicode_unescape(body: &str, esc: char) -> Option<String> {
    let mut out = String::with_capacity(body.len());
    let mut chars = body.chars().peekable();
    while let Some(c) = chars.next() {
        if c != esc {
            out.push(c);
            continue;
        }
        if chars.peek() == Some(&esc) {
            chars.next();
            out.push(esc);
            continue;
        }
        let n = if chars.peek() == Some(&'+') {
            chars.next();
            6
        } else {
            4
        };
        let digits: String = (0..n).filter_map(|_| chars.next()).collect();
        if digits.len() != n {
            return None;
        }
        out.push(char::from_u32(u32::from_str_radix(&digits, 16).ok()?)?);
    }
    Some(out)
}
