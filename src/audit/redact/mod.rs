//! Redaction: secrets are replaced by `[REDACTED]` before anything is written. Pure functions.
//!
//! Where it sits: [`super::event::prepare`] calls these on every event before it is serialized, so no
//! sink (SQLite, JSONL, API) ever sees the original text. Statement text is read with PostgreSQL's own
//! lexer (pg_query's scanner), so every spelling of a literal is recognised as the server recognises
//! it: `'…'`, `E'…'` with backslash escapes, `U&'…'` (with `UESCAPE`), `N'…'`, `$tag$…$tag$`, and
//! string continuations across lines (one literal). Redaction is by byte range, so the rest of the
//! statement stays verbatim. What is redacted:
//!
//! - the literal after a key naming a password (`PASSWORD`, `PASSWD`, any word or quoted identifier
//!   containing `password`/`passwd`/`pwd`), with or without `=`: `CREATE ROLE … PASSWORD 'x'`,
//!   `ENCRYPTED PASSWORD 'x'`, `USER MAPPING … OPTIONS (password 'x')`, `WHERE password = 'x'`;
//! - in `OPTIONS (…)` lists (servers, user mappings, foreign tables), the value of every key that is
//!   a credential name (see [`CREDENTIAL_WORDS`]), also after `ADD`/`SET`;
//! - the value of `SET name = …` / `SET name TO …` (also `ALTER ROLE/DATABASE/SYSTEM … SET`, and
//!   `UPDATE … SET col = …`) when the name is a credential name or a custom (dotted) setting
//!   (`my.pw`, `app.dsn`; see [`is_secret_setting`]), and the value argument of `set_config`
//!   (positional, or named `new_value => …` / `:=`) when its setting name is one or is not a
//!   literal this module can read; PostgreSQL's own settings (`search_path`, …) keep their values;
//! - SQL inside a string literal (`DO $$ … $$`, `CREATE FUNCTION … AS $f$ … $f$`,
//!   `EXECUTE '…'`, `dblink_exec(…, '…')`): a literal whose decoded text names a password key, a
//!   setting or `OPTIONS` is redacted as SQL by these same rules, up to [`MAX_LITERAL_NESTING`]
//!   literals deep, and written back in its own quoting; when the secret's value is a placeholder
//!   or missing (`format('… PASSWORD %L', 'x', 'pw')`, `'… PASSWORD ' || quote_literal('pw')`),
//!   what follows the literal up to the end of its call or statement is hidden;
//! - inside any string literal (decoded first when it has escapes): libpq conninfo passwords
//!   (`password=…`, `sslpassword=…`, as in `dblink_connect('host=h password=x')` or
//!   `CREATE SUBSCRIPTION … CONNECTION '…'`) and the password of a URI's userinfo
//!   (`postgresql://user:x@host`);
//! - anywhere in the text: timebox tokens (`tbx_…`, `tbxa_…`, 16+ alphanumerics after the prefix).
//!
//! Fail closed: text PostgreSQL's lexer refuses (an unterminated literal, a NUL) is hidden from its
//! first trigger word or escape to the end; a literal this module cannot decode is hidden whole; a
//! literal holding
//! SQL that is too deep, refused by the lexer, or cannot be written back soundly (`U&'…'`, bit
//! strings) is hidden whole (too deep or refused: what follows it too). [`redact_sql_secrets`]
//! also returns the hidden pieces so a denial reason quoting the statement can be [`scrub`]bed.
//! It must never fail or panic on odd input; it may over-redact, which costs an auditor some
//! detail, never a secret.

use std::borrow::Cow;
use std::ops::Range;

use crate::config::ParamLogging;

mod conninfo;
mod lexer;
mod settings;
#[cfg(test)]
mod tests;

use conninfo::redact_conninfo;
use lexer::{first_marker, has_escapes, lex, parse_literal, Kind, Literal, Token};
use settings::{option_secrets, set_config_value, set_value, Slot};

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
    redact_sql_secrets(sql).0
}

/// [`redact_sql`], and the pieces of text it hid (each at least [`MIN_SCRUB_CHARS`] long), so that
/// other fields of the same event that quote the statement (a parser error in a denial reason
/// echoes a literal) can be [`scrub`]bed of them.
pub fn redact_sql_secrets(sql: &str) -> (Cow<'_, str>, Vec<String>) {
    let marked = might_hold_secret(sql);
    if !marked && !has_escapes(sql) {
        return (Cow::Borrowed(sql), Vec::new());
    }
    let Some(found) = redact_lexed(sql, 0) else {
        // Fail closed: PostgreSQL's lexer refused the text, so where its literals are is unknown.
        let from = first_marker(sql);
        let hidden = pieces(&sql[from..]);
        return (Cow::Owned(format!("{}{REDACTED}", &sql[..from])), hidden);
    };
    let redacted = match found.text {
        Cow::Borrowed(_) => redact_tokens(sql),
        Cow::Owned(edited) => Cow::Owned(redact_tokens(&edited).into_owned()),
    };
    (redacted, found.hidden)
}

/// How many string literals deep SQL inside a literal is read as SQL (`DO $$ … EXECUTE '…' … $$`
/// is two levels). A literal deeper than this that may hold a secret is hidden whole.
pub const MAX_LITERAL_NESTING: usize = 4;

/// Statement text with its secrets hidden.
struct Redacted<'a> {
    text: Cow<'a, str>,
    /// The pieces of text that were hidden (see [`pieces`]).
    hidden: Vec<String>,
    /// See [`Found::open`].
    open: bool,
}

/// Lexes `sql`, the text of a statement or of a literal `depth` literals deep, and hides its
/// secrets. `None` when PostgreSQL's lexer refuses the text.
fn redact_lexed(sql: &str, depth: usize) -> Option<Redacted<'_>> {
    let tokens = lex(sql)?;
    let found = secret_edits(sql, &tokens, might_hold_secret(sql), depth);
    // What an edit hid: the pieces of the original range its replacement no longer holds.
    let hidden = found
        .edits
        .iter()
        .flat_map(|(r, with)| {
            pieces(&sql[r.clone()])
                .into_iter()
                .filter(|p| !with.contains(p.as_str()))
        })
        .collect();
    Some(Redacted {
        text: apply_edits(sql, found.edits),
        hidden,
        open: found.open,
    })
}

/// Shortest hidden piece [`scrub`] looks for (shorter ones would wreck the text they are cut from).
pub const MIN_SCRUB_CHARS: usize = 3;

/// The pieces of a hidden range: split at quotes, whitespace, `=` and `,`.
fn pieces(hidden: &str) -> Vec<String> {
    let mut out: Vec<String> = hidden
        .split(|c: char| c == '\'' || c == '=' || c == ',' || c.is_whitespace())
        .filter(|p| p.chars().count() >= MIN_SCRUB_CHARS)
        .map(str::to_owned)
        .collect();
    // Longest first, so a piece inside another does not leave the rest of it behind.
    out.sort_by_key(|p| std::cmp::Reverse(p.len()));
    out.dedup();
    out
}

/// Replaces every occurrence of the `hidden` pieces in `text` by `[REDACTED]`.
pub fn scrub<'a>(text: &'a str, hidden: &[String]) -> Cow<'a, str> {
    let mut out = Cow::Borrowed(text);
    for piece in hidden {
        if out.contains(piece.as_str()) {
            out = Cow::Owned(out.replace(piece.as_str(), REDACTED));
        }
    }
    out
}

/// The edits that hide the secrets of one lexed text, and whether a secret's value lies outside it.
struct Found {
    edits: Vec<(Range<usize>, String)>,
    /// A secret's value is not in this text but comes from outside it: it is a placeholder
    /// (`PASSWORD %L`, `PASSWORD '%s'`, `$1`) or the text ends where it would be
    /// (`'ALTER ROLE x PASSWORD ' || …`). The literal that held this text hides what follows it.
    open: bool,
}

/// The edits that hide the secrets of a lexed text `depth` literals deep (0: the statement).
/// `marked`: the text holds a trigger word.
fn secret_edits(sql: &str, tokens: &[Token], marked: bool, depth: usize) -> Found {
    let sig: Vec<&Token> = tokens.iter().filter(|t| !t.is_trivia()).collect();
    let mut edits: Vec<(Range<usize>, String)> = Vec::new();
    let mut open = false;
    let op = |i: usize, c: u8| sig.get(i).is_some_and(|t| t.kind == Kind::Op(c));
    // Where this text ends where a value should follow: only a fragment of a statement does so.
    let ends_open = || depth > 0 && (starts_with_command(sql, &sig) || sql.ends_with(char::is_whitespace));
    for (i, t) in sig.iter().enumerate() {
        match t.kind {
            Kind::Word | Kind::QuotedIdent => {
                let name = ident_name(&sql[t.span.clone()]);
                if is_password_key(&name) {
                    let j = if op(i + 1, b'=') { i + 2 } else { i + 1 };
                    match sig.get(j) {
                        Some(s) if s.kind == Kind::Str => {
                            edits.push((literal_span(s), REDACTED_LITERAL.to_owned()));
                            open |= is_placeholder(&sql[s.span.clone()]);
                        }
                        Some(s) => open |= matches!(s.kind, Kind::Param | Kind::Op(b'%')),
                        None => open |= ends_open(),
                    }
                } else if t.kind == Kind::Word && name == "set" {
                    if let Some(slot) = set_value(sql, &sig, i) {
                        open |= slot.open || (slot.range.is_none() && ends_open());
                        edits.extend(slot_edit(sql, slot, depth));
                    } else if i + 1 == sig.len() {
                        // `'SET ' || 'my.pw = ' || …`: the setting comes from outside the text.
                        open |= ends_open();
                    }
                } else if name == "set_config" && op(i + 1, b'(') {
                    if let Some(slot) = set_config_value(sql, &sig, i + 1) {
                        open |= slot.open || (slot.range.is_none() && ends_open());
                        edits.extend(slot_edit(sql, slot, depth));
                    }
                } else if t.kind == Kind::Word && name == "options" && op(i + 1, b'(') {
                    for s in option_secrets(sql, &sig, i + 1) {
                        edits.push((literal_span(s), REDACTED_LITERAL.to_owned()));
                    }
                }
            }
            Kind::Str => {
                let text = &sql[t.span.clone()];
                let escape = uescape_after(sql, &sig, i);
                let literal = parse_literal(text, escape);
                if let Some(value) = literal
                    .as_ref()
                    .map(|l| l.value.as_str())
                    .filter(|v| may_hold_sql(v))
                {
                    let (with, inner_open) = inner_sql(text, value, depth);
                    if inner_open {
                        edits.extend(
                            open_tail(&sig, i)
                                .into_iter()
                                .map(|r| (r, REDACTED_LITERAL.to_owned())),
                        );
                    }
                    if let Some(with) = with {
                        edits.push((t.span.clone(), with));
                        continue;
                    }
                }
                match literal {
                    Some(Literal {
                        raw_content: Some(content),
                        ..
                    }) => {
                        if let Cow::Owned(redacted) = redact_conninfo(&text[content.clone()]) {
                            let at = t.span.start;
                            edits.push((at + content.start..at + content.end, redacted));
                        }
                    }
                    Some(Literal { value, .. }) if is_secret_value(&value) => {
                        edits.push((t.span.clone(), REDACTED_LITERAL.to_owned()));
                    }
                    Some(_) => {}
                    // Fail closed: a literal this module cannot read is hidden when secrets may be about.
                    None if marked || has_escapes(text) => {
                        edits.push((t.span.clone(), REDACTED_LITERAL.to_owned()));
                    }
                    None => {}
                }
            }
            _ => {}
        }
    }
    edits.extend(
        tokens
            .iter()
            .filter(|t| t.kind == Kind::Comment)
            .filter_map(|t| comment_edit(sql, t, depth)),
    );
    Found { edits, open }
}

/// A comment read as SQL by these same rules, so commented-out SQL (`-- ALTER ROLE x PASSWORD
/// 'pw'`, `/* SET my.key = 'k' */`) keeps no secret: the edit of its inside, if anything in it is
/// hidden. Fail closed: a comment too deep in nested literals, or whose inside PostgreSQL's lexer
/// refuses, is hidden from its first trigger word or escape.
fn comment_edit(sql: &str, t: &Token, depth: usize) -> Option<(Range<usize>, String)> {
    let text = &sql[t.span.clone()];
    let close = if text.starts_with("/*") && text.len() >= 4 && text.ends_with("*/") {
        2
    } else {
        0
    };
    let inside = t.span.start + 2..t.span.end - close;
    let inner = sql.get(inside.clone())?;
    if !might_hold_secret(inner) && !has_escapes(inner) {
        return None;
    }
    let hidden_from = |from: usize| Some((inside.start + from..inside.end, REDACTED.to_owned()));
    if depth >= MAX_LITERAL_NESTING {
        return hidden_from(first_marker(inner));
    }
    let Some(found) = redact_lexed(inner, depth + 1) else {
        return hidden_from(first_marker(inner));
    };
    let edited = redact_tokens(&redact_conninfo(&found.text)).into_owned();
    (edited != inner).then_some((inside, edited))
}

/// Whether a literal's value may be SQL holding a secret: it names a password key, a setting
/// (`SET`, `set_config`) or `OPTIONS`, or has escapes and quotes (a nested `E'…'`/`U&'…'`).
fn may_hold_sql(value: &str) -> bool {
    ["pass", "pwd", "set", "options"]
        .iter()
        .any(|w| contains_ci(value, w))
        || (has_escapes(value) && value.contains(['\'', '"', '$']))
}

/// The SQL inside a literal (`text`, whose value is `value`, `depth` literals deep) with its
/// secrets hidden, written back in the literal's own quoting: `None` when nothing is hidden.
/// Fail closed: a literal too deep, refused by the lexer, or that cannot be written back soundly
/// is hidden whole. Also whether a secret's value lies outside it (see [`Found::open`]); a literal
/// the lexer refuses counts as open.
fn inner_sql(text: &str, value: &str, depth: usize) -> (Option<String>, bool) {
    if depth >= MAX_LITERAL_NESTING {
        return (Some(REDACTED_LITERAL.to_owned()), true);
    }
    let Some(inner) = redact_lexed(value, depth + 1) else {
        return (Some(REDACTED_LITERAL.to_owned()), true);
    };
    let Cow::Owned(edited) = inner.text else {
        return (None, inner.open);
    };
    let edited = redact_conninfo(&edited).into_owned();
    let edited = redact_tokens(&edited);
    let with = requote(text, &edited).unwrap_or_else(|| REDACTED_LITERAL.to_owned());
    (Some(with), inner.open)
}

/// `value` written in the quoting of the literal `text`: dollar quotes as they are, `'…'` with
/// quotes doubled, `E'…'` with `\` and `'` escaped. `None` when that is not sound: `U&'…'`, bit
/// strings, a value holding the dollar quote's tag, a backslash in `'…'` (read differently under
/// `standard_conforming_strings = off`), bytes an `E'…'` literal held that are not UTF-8.
fn requote(text: &str, value: &str) -> Option<String> {
    match text.as_bytes() {
        [b'$', ..] => {
            let tag = &text[..text[1..].find('$')? + 2];
            let body = format!("{value}{tag}");
            (body.find(tag) == Some(value.len())).then(|| format!("{tag}{body}"))
        }
        [b'\'', ..] | [b'n' | b'N', b'\'', ..] if !value.contains('\\') => {
            let prefix = &text[..text.find('\'')?];
            Some(format!("{prefix}'{}'", value.replace('\'', "''")))
        }
        [b'e' | b'E', b'\'', ..] if !value.contains('\u{FFFD}') => Some(format!(
            "{}'{}'",
            &text[..1],
            value.replace('\\', "\\\\").replace('\'', "''")
        )),
        _ => None,
    }
}

/// The edit hiding a setting's value; none for a bare placeholder inside a literal
/// (`format('SET my.pw = %L', …)`), whose value is hidden where it comes from.
fn slot_edit(sql: &str, slot: Slot, depth: usize) -> Option<(Range<usize>, String)> {
    let range = slot.range?;
    let bare_placeholder = slot.open && depth > 0 && !sql[range.clone()].contains('\'');
    (!bare_placeholder).then(|| (range, REDACTED_LITERAL.to_owned()))
}

/// Whether a secret's value is a format placeholder (`%L`, `'%s'`) or a parameter.
fn is_placeholder(text: &str) -> bool {
    text.contains('%') || text.starts_with('$') && text[1..].starts_with(|c: char| c.is_ascii_digit())
}

/// Whether a text starts like a statement (so a password key at its end awaits a value).
fn starts_with_command(sql: &str, sig: &[&Token]) -> bool {
    const COMMANDS: &[&str] = &[
        "alter", "create", "set", "select", "update", "insert", "delete", "with", "execute", "do", "perform",
        "call", "values",
    ];
    sig.first().is_some_and(|t| {
        t.kind == Kind::Word && COMMANDS.contains(&ident_name(&sql[t.span.clone()]).as_str())
    })
}

/// The values after the literal `sig[i]` that may carry a secret its text leaves open: every
/// literal and constant (strings, numbers) in the rest of its own argument and each argument after
/// it, up to the `)` closing the call it is in, a `;`, or the end (`format('… PASSWORD %L', 'x',
/// 'pw')`, `'… PASSWORD ' || quote_literal('pw')`). Names, keywords and operators stay visible, so
/// a literal that only looks like the start of such SQL cannot hide what a statement does (attack
/// review, session 4: `DELETE … WHERE 'alter role x password ' IS NOT NULL AND name = 'b'` hid its
/// whole condition).
fn open_tail(sig: &[&Token], i: usize) -> Vec<Range<usize>> {
    let mut values = Vec::new();
    let mut depth = 0usize;
    for t in &sig[i + 1..] {
        match t.kind {
            Kind::Op(b'(') | Kind::Op(b'[') => depth += 1,
            Kind::Op(b')') | Kind::Op(b']') if depth == 0 => break,
            Kind::Op(b')') | Kind::Op(b']') => depth -= 1,
            Kind::Op(b';') if depth == 0 => break,
            Kind::Str | Kind::Other => values.push(t.span.clone()),
            _ => {}
        }
    }
    values
}

/// The span to hide for the secret literal `s`: the literal itself, never what follows it, so a
/// secret cannot be used to hide the rest of a statement from the audit trail. Literals are read
/// with `standard_conforming_strings = on`, which the relay guarantees for every statement it
/// records: a session cannot change it (policy: never allowed), and a server or role default of
/// `off` ends the session at login or on the ParameterStatus that reports it.
fn literal_span(s: &Token) -> Range<usize> {
    s.span.clone()
}

/// Whether a key (role option, OPTIONS key, column) names a password: it contains `password`,
/// `passwd` or `pwd`.
fn is_password_key(name: &str) -> bool {
    ["password", "passwd", "pwd"].iter().any(|w| contains_ci(name, w))
}

/// Whether a decoded literal holds a conninfo/URI password or a timebox token.
fn is_secret_value(value: &str) -> bool {
    matches!(redact_conninfo(value), Cow::Owned(_)) || matches!(redact_tokens(value), Cow::Owned(_))
}

/// An identifier as PostgreSQL compares it: unquoted ones lower-cased, quoted ones unquoted.
fn ident_name(text: &str) -> String {
    if let Some(inner) = text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
        inner.replace("\"\"", "\"")
    } else if let Some(inner) = text
        .strip_prefix("U&\"")
        .or_else(|| text.strip_prefix("u&\""))
        .and_then(|t| t.strip_suffix('"'))
    {
        inner.to_owned()
    } else {
        text.to_ascii_lowercase()
    }
}

/// The escape character of a `U&'…'` literal at `sig[i]` when `UESCAPE 'c'` follows it.
fn uescape_after(sql: &str, sig: &[&Token], i: usize) -> Option<char> {
    let word = sig.get(i + 1).filter(|t| t.kind == Kind::Word)?;
    if !sql[word.span.clone()].eq_ignore_ascii_case("uescape") {
        return None;
    }
    let s = sig.get(i + 2).filter(|t| t.kind == Kind::Str)?;
    parse_literal(&sql[s.span.clone()], None)?.value.chars().next()
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
/// Rewrites each value in place (its own buffer, no new list).
pub fn redact_params(params: Option<Vec<Option<String>>>, mode: ParamLogging) -> Option<Vec<Option<String>>> {
    let mut params = params?;
    match mode {
        ParamLogging::Off => return None,
        ParamLogging::Full => {
            for v in params.iter_mut().flatten() {
                if let Cow::Owned(r) = redact_tokens(v) {
                    *v = r;
                }
            }
        }
        ParamLogging::Redacted => {
            for v in params.iter_mut().flatten() {
                let n = v.len();
                v.clear();
                // `[redacted ` + up to 20 digits + ` bytes]`: one growth at most.
                v.reserve(40);
                // Writing into a String cannot fail.
                let _ = std::fmt::Write::write_fmt(v, format_args!("[redacted {n} bytes]"));
            }
        }
    }
    Some(params)
}

/// Whether a setting or column name looks like it holds a credential.
pub fn is_credential_name(name: &str) -> bool {
    CREDENTIAL_WORDS.iter().any(|w| contains_ci(name, w))
}

/// Whether a setting's value is hidden: its name is a credential name, or it is a custom setting
/// (a dotted name, `app.*`, `my.*`: where applications keep secrets). PostgreSQL's own settings
/// (`search_path`, `statement_timeout`, …) have no dot and keep their values.
pub fn is_secret_setting(name: &str) -> bool {
    is_credential_name(name) || name.contains('.')
}

/// Cheap pre-check, one pass over the bytes: statements without any of `pass`, `pwd`, `secret`,
/// `token`, `key`, `credential`, `tbx`, `://`, `set_config`, or `set` with a `.` somewhere (a
/// custom setting), case-insensitive, need no lexing.
fn might_hold_secret(sql: &str) -> bool {
    let b = sql.as_bytes();
    let at = |i: usize, needle: &[u8]| {
        b.len() - i >= needle.len() && b[i..i + needle.len()].eq_ignore_ascii_case(needle)
    };
    let dotted = b.contains(&b'.');
    (0..b.len()).any(|i| match b[i] | 0x20 {
        b'p' => at(i, b"pass") || at(i, b"pwd"),
        b's' => at(i, b"secret") || at(i, b"set_config") || (dotted && at(i, b"set")),
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
            // Overlapping an earlier edit: hide what it reaches beyond that edit (fail closed).
            if range.end > pos {
                out.push_str(REDACTED);
                pos = range.end;
            }
            continue;
        }
        out.push_str(&text[pos..range.start]);
        out.push_str(&replacement);
        pos = range.end;
    }
    out.push_str(&text[pos..]);
    Cow::Owned(out)
}
