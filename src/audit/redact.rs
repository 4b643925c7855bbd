//! Redaction: secrets are replaced by `[REDACTED]` before anything is written. Pure functions.
//!
//! Where it sits: [`super::event::prepare`] calls these on every event before it is serialized, so no
//! sink (SQLite, JSONL, API) ever sees the original text. What is redacted in statement text, found
//! with a small SQL lexer (string literals, `E'…'`, dollar quotes, quoted identifiers and comments are
//! recognised, so a keyword inside a literal does not trigger a rule):
//!
//! - the literal after a `PASSWORD` / `PASSWD` keyword, with or without `=`: `CREATE ROLE … PASSWORD
//!   'x'`, `ENCRYPTED PASSWORD 'x'`, `USER MAPPING … OPTIONS (password 'x')`, `WHERE password = 'x'`;
//! - the value of `SET name = …` / `SET name TO …` (also `ALTER ROLE/DATABASE/SYSTEM … SET`, and
//!   `UPDATE … SET col = …`) and of `set_config('name', 'value', …)` when the name contains one of
//!   [`CREDENTIAL_WORDS`] (pragmatic: `password`, `secret`, `token`, `key`, …);
//! - inside any string literal: libpq conninfo passwords (`password=…`, `sslpassword=…`, as in
//!   `dblink_connect('host=h password=x')` or `CREATE SUBSCRIPTION … CONNECTION '…'`) and the password
//!   of a URI's userinfo (`postgresql://user:x@host`);
//! - anywhere in the text: timebox tokens (`tbx_…`, `tbxa_…`, 16+ alphanumerics after the prefix).
//!
//! It must never fail or panic on odd input (unterminated quotes just run to the end of the text);
//! it may over-redact, which costs an auditor some detail, never a secret.

use std::borrow::Cow;
use std::ops::Range;

use crate::config::ParamLogging;

/// What a secret is replaced by.
pub const REDACTED: &str = "[REDACTED]";
const REDACTED_LITERAL: &str = "'[REDACTED]'";
/// A setting or column whose name contains one of these (case-insensitive) holds a credential.
pub const CREDENTIAL_WORDS: &[&str] = &[
    "password",
    "passwd",
    "pwd",
    "secret",
    "token",
    "key",
    "credential",
];
/// Token prefixes (grant tokens, admin tokens).
const TOKEN_PREFIXES: &[&str] = &["tbxa_", "tbx_"];
/// Alphanumerics after a prefix for it to count as a token (real ones have 32).
const TOKEN_MIN_CHARS: usize = 16;

/// Redacts statement text (see the module docs). Borrows when nothing needed redacting.
pub fn redact_sql(sql: &str) -> Cow<'_, str> {
    if !might_hold_secret(sql) {
        return Cow::Borrowed(sql);
    }
    let tokens = lex(sql);
    let sig: Vec<&Token> = tokens.iter().filter(|t| !t.is_trivia()).collect();
    let mut edits: Vec<(Range<usize>, String)> = Vec::new();
    let op = |i: usize, c: u8| sig.get(i).is_some_and(|t| t.kind == Kind::Op(c));
    for (i, t) in sig.iter().enumerate() {
        match t.kind {
            Kind::Word => {
                let w = &sql[t.span.clone()];
                if w.eq_ignore_ascii_case("password") || w.eq_ignore_ascii_case("passwd") {
                    let j = if op(i + 1, b'=') { i + 2 } else { i + 1 };
                    if let Some(s) = sig.get(j).filter(|s| matches!(s.kind, Kind::Str { .. })) {
                        edits.push((s.span.clone(), REDACTED_LITERAL.to_owned()));
                    }
                } else if w.eq_ignore_ascii_case("set") {
                    if let Some(range) = set_value(sql, &sig, i) {
                        edits.push((range, REDACTED_LITERAL.to_owned()));
                    }
                } else if w.eq_ignore_ascii_case("set_config") && op(i + 1, b'(') && op(i + 3, b',') {
                    if let (Some(name), Some(value)) = (sig.get(i + 2), sig.get(i + 4)) {
                        if let (Kind::Str { content }, Kind::Str { .. }) = (&name.kind, &value.kind) {
                            if is_credential_name(&sql[content.clone()]) {
                                edits.push((value.span.clone(), REDACTED_LITERAL.to_owned()));
                            }
                        }
                    }
                }
            }
            Kind::Str { ref content } => {
                let text = &sql[content.clone()];
                if let Cow::Owned(redacted) = redact_conninfo(text) {
                    edits.push((content.clone(), redacted));
                }
            }
            _ => {}
        }
    }
    match apply_edits(sql, edits) {
        Cow::Borrowed(_) => redact_tokens(sql),
        Cow::Owned(edited) => Cow::Owned(redact_tokens(&edited).into_owned()),
    }
}

/// Replaces timebox tokens (`tbx_…`, `tbxa_…`) anywhere in `text`.
pub fn redact_tokens(text: &str) -> Cow<'_, str> {
    if !text.contains("tbx") {
        return Cow::Borrowed(text);
    }
    let bytes = text.as_bytes();
    let mut out = String::new();
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        let prefix = TOKEN_PREFIXES
            .iter()
            .find(|p| bytes[i..].starts_with(p.as_bytes()));
        if let Some(p) = prefix {
            let start = i + p.len();
            let run = bytes[start..]
                .iter()
                .take_while(|b| b.is_ascii_alphanumeric())
                .count();
            if run >= TOKEN_MIN_CHARS {
                out.push_str(&text[copied..i]);
                out.push_str(REDACTED);
                i = start + run;
                copied = i;
                continue;
            }
        }
        i += 1;
    }
    if copied == 0 {
        return Cow::Borrowed(text);
    }
    out.push_str(&text[copied..]);
    Cow::Owned(out)
}

/// Applies the `audit.params` policy to bind parameters.
pub fn redact_params(params: Option<Vec<Option<String>>>, mode: ParamLogging) -> Option<Vec<Option<String>>> {
    let params = params?;
    match mode {
        ParamLogging::Off => None,
        ParamLogging::Full => Some(
            params
                .into_iter()
                .map(|p| p.map(|v| redact_tokens(&v).into_owned()))
                .collect(),
        ),
        ParamLogging::Redacted => Some(
            params
                .into_iter()
                .map(|p| p.map(|v| format!("[redacted {} bytes]", v.len())))
                .collect(),
        ),
    }
}

/// Whether a setting or column name looks like it holds a credential.
pub fn is_credential_name(name: &str) -> bool {
    CREDENTIAL_WORDS.iter().any(|w| contains_ci(name, w))
}

/// Cheap pre-check, one pass over the bytes: statements without any of `pass`, `pwd`, `secret`,
/// `token`, `key`, `credential`, `tbx` or `://` (case-insensitive) need no lexing.
fn might_hold_secret(sql: &str) -> bool {
    let b = sql.as_bytes();
    let at = |i: usize, needle: &[u8]| {
        b.len() - i >= needle.len() && b[i..i + needle.len()].eq_ignore_ascii_case(needle)
    };
    (0..b.len()).any(|i| match b[i] | 0x20 {
        b'p' => at(i, b"pass") || at(i, b"pwd"),
        b's' => at(i, b"secret"),
        b't' => at(i, b"token") || at(i, b"tbx"),
        b'k' => at(i, b"key"),
        b'c' => at(i, b"credential"),
        b':' => at(i, b"://"),
        _ => false,
    })
}

fn contains_ci(haystack: &str, needle: &str) -> bool {
    let (h, n) = (haystack.as_bytes(), needle.as_bytes());
    h.len() >= n.len() && h.windows(n.len()).any(|w| w.eq_ignore_ascii_case(n))
}

/// The byte range of the value in `SET name (=|TO) value`, if `name` is a credential name.
/// `i` indexes the `SET` word in `sig`. The value runs to `,` or `;` at depth 0, or the end.
fn set_value(sql: &str, sig: &[&Token], i: usize) -> Option<Range<usize>> {
    let text = |j: usize| sig.get(j).map(|t| &sql[t.span.clone()]);
    let is_assign = |j: usize| {
        sig.get(j).is_some_and(|t| t.kind == Kind::Op(b'='))
            || (sig.get(j).is_some_and(|t| t.kind == Kind::Word)
                && text(j).is_some_and(|w| w.eq_ignore_ascii_case("to")))
    };
    let mut j = i + 1;
    // SET SESSION name / SET LOCAL name (but `SET session = …` names a column "session").
    if text(j).is_some_and(|w| w.eq_ignore_ascii_case("session") || w.eq_ignore_ascii_case("local"))
        && !is_assign(j + 1)
    {
        j += 1;
    }
    let mut name = String::new();
    loop {
        let t = sig.get(j)?;
        match t.kind {
            Kind::Word | Kind::QuotedIdent => name.push_str(&sql[t.span.clone()]),
            _ => return None,
        }
        j += 1;
        if sig.get(j).is_some_and(|t| t.kind == Kind::Op(b'.')) {
            name.push('.');
            j += 1;
        } else {
            break;
        }
    }
    if !is_assign(j) || !is_credential_name(&name) {
        return None;
    }
    let first = j + 1;
    let mut depth = 0i32;
    let mut last = None;
    for (k, t) in sig.iter().enumerate().skip(first) {
        match t.kind {
            Kind::Op(b'(') => depth += 1,
            Kind::Op(b')') if depth == 0 => break,
            Kind::Op(b')') => depth -= 1,
            Kind::Op(b',') | Kind::Op(b';') if depth == 0 => break,
            _ => {}
        }
        if depth == 0
            && t.kind == Kind::Word
            && ["where", "from", "returning"]
                .iter()
                .any(|kw| sql[t.span.clone()].eq_ignore_ascii_case(kw))
        {
            break;
        }
        last = Some(k);
    }
    let last = last?;
    Some(sig[first].span.start..sig[last].span.end)
}

/// Redacts conninfo passwords (`password=…`) and URI userinfo passwords inside one string literal's
/// raw content (quotes may appear doubled, `''`, as SQL escapes them).
fn redact_conninfo(text: &str) -> Cow<'_, str> {
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
        while j < bytes.len() && bytes[j] == b' ' {
            j += 1;
        }
        if j >= bytes.len() || bytes[j] != b'=' {
            i += 8;
            continue;
        }
        j += 1;
        while j < bytes.len() && bytes[j] == b' ' {
            j += 1;
        }
        let start = j;
        let end = if bytes[j..].starts_with(b"''") {
            // A quoted conninfo value inside an SQL literal: ''…'' (or to the end).
            find(bytes, b"''", j + 2).map_or(bytes.len(), |e| e + 2)
        } else if bytes[j..].starts_with(b"\\'") {
            find(bytes, b"\\'", j + 2).map_or(bytes.len(), |e| e + 2)
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
                if !pw.is_empty() && !edits.iter().any(|(r, _)| r.start < pw.end && pw.start < r.end) {
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

/// Replaces byte ranges (in any order; overlapping ones after the first are dropped).
fn apply_edits(text: &str, mut edits: Vec<(Range<usize>, String)>) -> Cow<'_, str> {
    if edits.is_empty() {
        return Cow::Borrowed(text);
    }
    edits.sort_by_key(|(r, _)| r.start);
    let mut out = String::with_capacity(text.len());
    let mut pos = 0;
    for (range, replacement) in edits {
        if range.start < pos {
            continue;
        }
        out.push_str(&text[pos..range.start]);
        out.push_str(&replacement);
        pos = range.end;
    }
    out.push_str(&text[pos..]);
    Cow::Owned(out)
}

// ---------------------------------------------------------------------------------------------
// A small SQL lexer: just enough to tell literals, identifiers, comments and words apart.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Space,
    Comment,
    Word,
    QuotedIdent,
    /// A string literal; `content` is the raw text between its delimiters.
    Str {
        content: Range<usize>,
    },
    Param,
    Op(u8),
    Other,
}

#[derive(Debug, Clone)]
struct Token {
    kind: Kind,
    span: Range<usize>,
}

impl Token {
    fn is_trivia(&self) -> bool {
        matches!(self.kind, Kind::Space | Kind::Comment)
    }
}

fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

fn is_ident_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

fn lex(sql: &str) -> Vec<Token> {
    let b = sql.as_bytes();
    let n = b.len();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < n {
        let start = i;
        let c = b[i];
        let kind = if c.is_ascii_whitespace() {
            while i < n && b[i].is_ascii_whitespace() {
                i += 1;
            }
            Kind::Space
        } else if b[i..].starts_with(b"--") {
            while i < n && b[i] != b'\n' {
                i += 1;
            }
            Kind::Comment
        } else if b[i..].starts_with(b"/*") {
            let mut depth = 0;
            while i < n {
                if b[i..].starts_with(b"/*") {
                    depth += 1;
                    i += 2;
                } else if b[i..].starts_with(b"*/") {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            Kind::Comment
        } else if c == b'\'' {
            let (content, end) = quoted(b, i + 1, false);
            i = end;
            Kind::Str { content }
        } else if matches!(c, b'e' | b'E') && b.get(i + 1) == Some(&b'\'') {
            let (content, end) = quoted(b, i + 2, true);
            i = end;
            Kind::Str { content }
        } else if matches!(c, b'b' | b'B' | b'x' | b'X' | b'n' | b'N') && b.get(i + 1) == Some(&b'\'') {
            let (content, end) = quoted(b, i + 2, false);
            i = end;
            Kind::Str { content }
        } else if c == b'"' {
            i += 1;
            while i < n {
                if b[i] == b'"' {
                    if b.get(i + 1) == Some(&b'"') {
                        i += 2;
                        continue;
                    }
                    i += 1;
                    break;
                }
                i += 1;
            }
            Kind::QuotedIdent
        } else if c == b'$' && b.get(i + 1).is_some_and(|d| d.is_ascii_digit()) {
            i += 1;
            while i < n && b[i].is_ascii_digit() {
                i += 1;
            }
            Kind::Param
        } else if c == b'$' {
            // $tag$ … $tag$ (tag may be empty)
            let tag_end = i
                + 1
                + b[i + 1..]
                    .iter()
                    .take_while(|x| is_ident_char(**x) && **x != b'$')
                    .count();
            if b.get(tag_end) == Some(&b'$') {
                let delim = &b[i..=tag_end];
                let body = tag_end + 1;
                let close = find(b, delim, body);
                let content_end = close.unwrap_or(n);
                i = close.map_or(n, |c| c + delim.len());
                Kind::Str {
                    content: body..content_end,
                }
            } else {
                i += 1;
                Kind::Other
            }
        } else if is_ident_start(c) {
            while i < n && is_ident_char(b[i]) {
                i += 1;
            }
            Kind::Word
        } else if c.is_ascii_digit() {
            while i < n && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                i += 1;
            }
            Kind::Other
        } else if c.is_ascii() {
            i += 1;
            Kind::Op(c)
        } else {
            i += 1;
            while i < n && !sql.is_char_boundary(i) {
                i += 1;
            }
            Kind::Other
        };
        tokens.push(Token { kind, span: start..i });
    }
    tokens
}

/// Scans a single-quoted literal whose content starts at `from`; returns (content range, end).
/// `''` is an escaped quote; with `backslash`, so is `\'`. Unterminated: runs to the end.
fn quoted(b: &[u8], from: usize, backslash: bool) -> (Range<usize>, usize) {
    let mut i = from;
    while i < b.len() {
        if backslash && b[i] == b'\\' {
            i += 2;
            continue;
        }
        if b[i] == b'\'' {
            if b.get(i + 1) == Some(&b'\'') {
                i += 2;
                continue;
            }
            return (from..i, i + 1);
        }
        i += 1;
    }
    (from..b.len(), b.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(sql: &str) -> String {
        redact_sql(sql).into_owned()
    }

    #[test]
    fn password_literals_in_role_statements() {
        assert_eq!(
            r("CREATE ROLE app LOGIN PASSWORD 'hunter2'"),
            "CREATE ROLE app LOGIN PASSWORD '[REDACTED]'"
        );
        assert_eq!(
            r("alter user bob with encrypted password 'md5abc' valid until 'infinity'"),
            "alter user bob with encrypted password '[REDACTED]' valid until 'infinity'"
        );
        assert_eq!(
            r("ALTER ROLE x PASSWORD E'it\\'s'; SELECT 1"),
            "ALTER ROLE x PASSWORD '[REDACTED]'; SELECT 1"
        );
        assert_eq!(
            r("CREATE USER u PASSWORD $pw$se'cret$pw$"),
            "CREATE USER u PASSWORD '[REDACTED]'"
        );
        assert_eq!(
            r("ALTER ROLE x PASSWORD /* c */ 'it''s'"),
            "ALTER ROLE x PASSWORD /* c */ '[REDACTED]'"
        );
        assert_eq!(r("ALTER ROLE x PASSWORD NULL"), "ALTER ROLE x PASSWORD NULL");
        assert_eq!(
            r("CREATE USER MAPPING FOR bob SERVER s OPTIONS (user 'bob', password 'pw')"),
            "CREATE USER MAPPING FOR bob SERVER s OPTIONS (user 'bob', password '[REDACTED]')"
        );
    }

    #[test]
    fn keywords_inside_literals_and_identifiers_do_not_trigger() {
        let sql = "SELECT 'password' AS label, \"password\" FROM t -- password 'x'";
        assert_eq!(r(sql), sql);
        let sql = "SELECT * FROM keys WHERE id = 1";
        assert_eq!(r(sql), sql);
        assert!(
            matches!(redact_sql("SELECT 1"), Cow::Borrowed(_)),
            "fast path borrows"
        );
    }

    #[test]
    fn credential_settings_and_columns() {
        assert_eq!(
            r("SET myapp.api_key = 'abc123'"),
            "SET myapp.api_key = '[REDACTED]'"
        );
        assert_eq!(
            r("set session app.secret to 'abc'; select 1"),
            "set session app.secret to '[REDACTED]'; select 1"
        );
        assert_eq!(
            r("ALTER DATABASE shop SET app.token = 'tok'"),
            "ALTER DATABASE shop SET app.token = '[REDACTED]'"
        );
        assert_eq!(
            r("UPDATE users SET api_key = 'k1', name = 'bob' WHERE id = 1"),
            "UPDATE users SET api_key = '[REDACTED]', name = 'bob' WHERE id = 1"
        );
        assert_eq!(
            r("UPDATE users SET password = 'pw' WHERE id = 1"),
            "UPDATE users SET password = '[REDACTED]' WHERE id = 1"
        );
        assert_eq!(
            r("SELECT set_config('app.password', 'pw', false)"),
            "SELECT set_config('app.password', '[REDACTED]', false)"
        );
        let harmless = "SET statement_timeout = '5s'";
        assert_eq!(r(harmless), harmless);
        let harmless = "SELECT set_config('search_path', 'public', false)";
        assert_eq!(r(harmless), harmless);
    }

    #[test]
    fn conninfo_and_uri_passwords_inside_literals() {
        assert_eq!(
            r("SELECT dblink_connect('host=db1 user=u password=s3cret dbname=x')"),
            "SELECT dblink_connect('host=db1 user=u password=[REDACTED] dbname=x')"
        );
        assert_eq!(
            r("SELECT dblink_connect('host=db1 password = ''a b'' dbname=x')"),
            "SELECT dblink_connect('host=db1 password = [REDACTED] dbname=x')"
        );
        assert_eq!(
            r("CREATE SUBSCRIPTION s CONNECTION 'host=h sslpassword=k password=p' PUBLICATION p"),
            "CREATE SUBSCRIPTION s CONNECTION 'host=h sslpassword=[REDACTED] password=[REDACTED]' PUBLICATION p"
        );
        assert_eq!(
            r("SELECT dblink('postgresql://bob:pw@db:5432/x', 'select 1')"),
            "SELECT dblink('postgresql://bob:[REDACTED]@db:5432/x', 'select 1')"
        );
        assert_eq!(
            r("SELECT dblink('postgresql://db/x?user=bob&password=pw&sslmode=require', 'q')"),
            "SELECT dblink('postgresql://db/x?user=bob&password=[REDACTED]&sslmode=require', 'q')"
        );
        let harmless = "SELECT 'see https://example.com/x' AS url";
        assert_eq!(r(harmless), harmless);
    }

    #[test]
    fn tokens_anywhere() {
        let t = "tbx_abcdefghijklmnopqrstuvwxyz234567";
        assert_eq!(
            r(&format!("SELECT '{t}' /* {t} */")),
            "SELECT '[REDACTED]' /* [REDACTED] */"
        );
        assert_eq!(
            redact_tokens("token tbxa_0123456789abcdef0123456789abcdef."),
            "token [REDACTED]."
        );
        assert_eq!(
            redact_tokens("SELECT * FROM tbx_users"),
            "SELECT * FROM tbx_users"
        );
        assert!(matches!(redact_tokens("plain"), Cow::Borrowed(_)));
    }

    #[test]
    fn the_pre_check_finds_every_trigger_word() {
        for word in [
            "PASSword",
            "pwd",
            "SECRET",
            "toKen",
            "Key",
            "credential",
            "tbx_",
            "a://b",
        ] {
            assert!(might_hold_secret(&format!("select {word} from t")), "{word}");
        }
        assert!(!might_hold_secret(
            "SELECT abalance FROM pgbench_accounts WHERE aid = $1"
        ));
        assert!(!might_hold_secret(""));
        assert!(!might_hold_secret("pas"));
    }

    #[test]
    fn odd_input_never_panics() {
        for sql in [
            "'",
            "E'\\",
            "$$",
            "$a$ unterminated",
            "PASSWORD",
            "SET",
            "SET x =",
            "password=",
            "/* ",
            "\"",
            "set_config(",
            "SET a.b",
            "ü PASSWORD 'ä'",
            "postgresql://:@",
            "password=''",
        ] {
            let _ = redact_sql(sql);
        }
        assert_eq!(r("ü PASSWORD 'ä'"), "ü PASSWORD '[REDACTED]'");
    }

    #[test]
    fn params_follow_the_policy() {
        let p = Some(vec![Some("hello".to_owned()), None]);
        assert_eq!(redact_params(p.clone(), ParamLogging::Off), None);
        assert_eq!(redact_params(p.clone(), ParamLogging::Full), p);
        assert_eq!(
            redact_params(p, ParamLogging::Redacted),
            Some(vec![Some("[redacted 5 bytes]".into()), None])
        );
        assert_eq!(redact_params(None, ParamLogging::Full), None);
    }
}
