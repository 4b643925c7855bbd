//! Where a setting's or an option's value sits in a lexed statement: `SET name = …` (also in
//! `ALTER ROLE/DATABASE … SET` and `UPDATE … SET`), `set_config(name, value, …)` and
//! `OPTIONS (key 'value', …)`. Part of [`super`]'s redaction; reads tokens only, never edits text.

use std::ops::Range;

use super::lexer::{parse_literal, Kind, Token};
use super::{ident_name, is_credential_name, is_placeholder, is_secret_setting};

/// The arguments of a call whose `(` is `sig[open]`: for each, its name (`name => …` or
/// `name := …`) and the `sig` indexes of its value. Runs to the matching `)` or the end.
fn call_args(sql: &str, sig: &[&Token], open: usize) -> Vec<(Option<String>, Range<usize>)> {
    let mut args = Vec::new();
    let mut depth = 0usize;
    let mut start = open + 1;
    let mut k = open + 1;
    let push = |args: &mut Vec<(Option<String>, Range<usize>)>, start: usize, end: usize| {
        if start >= end {
            return;
        }
        let named = end - start > 2
            && matches!(sig[start].kind, Kind::Word | Kind::QuotedIdent)
            && sig[start + 1].kind == Kind::Arrow;
        if named {
            let name = ident_name(&sql[sig[start].span.clone()]);
            args.push((Some(name), start + 2..end));
        } else {
            args.push((None, start..end));
        }
    };
    while k < sig.len() {
        match sig[k].kind {
            Kind::Op(b'(') | Kind::Op(b'[') => depth += 1,
            Kind::Op(b')') | Kind::Op(b']') if depth == 0 => break,
            Kind::Op(b')') | Kind::Op(b']') => depth -= 1,
            Kind::Op(b',') if depth == 0 => {
                push(&mut args, start, k);
                start = k + 1;
            }
            _ => {}
        }
        k += 1;
    }
    push(&mut args, start, k);
    args
}

/// Where a setting's value sits, when the setting's value is to be hidden.
pub(super) struct Slot {
    /// The value's byte range (`None`: the text ends before it).
    pub(super) range: Option<Range<usize>>,
    /// The value is a placeholder (`%L`, `'%s'`, `$1`): the secret comes from outside the text.
    pub(super) open: bool,
}

/// The slot of `set_config`'s value argument (positional 2nd or `new_value => …`) when its
/// setting name (positional 1st or `setting_name => …`) is a secret setting
/// ([`is_secret_setting`]), or is not a literal this module can read (fail closed). `open`
/// indexes the call's `(`. A bare `$n` value is left (parameters follow `audit.params`) but marks
/// the slot open.
pub(super) fn set_config_value(sql: &str, sig: &[&Token], open: usize) -> Option<Slot> {
    let args = call_args(sql, sig, open);
    let pick = |name: &str, position: usize| {
        args.iter()
            .find(|(n, _)| n.as_deref() == Some(name))
            .or_else(|| args.iter().filter(|(n, _)| n.is_none()).nth(position))
            .map(|(_, r)| r.clone())
    };
    let setting = pick("setting_name", 0)?;
    let secret_name = match &sig[setting.clone()] {
        [t] if t.kind == Kind::Str => {
            parse_literal(&sql[t.span.clone()], None).is_none_or(|l| is_secret_setting(&l.value))
        }
        _ => true,
    };
    if !secret_name {
        return None;
    }
    let Some(value) = pick("new_value", 1) else {
        return Some(Slot {
            range: None,
            open: false,
        });
    };
    if matches!(&sig[value.clone()], [t] if t.kind == Kind::Param) {
        return Some(Slot {
            range: None,
            open: true,
        });
    }
    let range = sig[value.start].span.start..sig[value.end - 1].span.end;
    Some(Slot {
        open: is_placeholder(&sql[range.clone()]),
        range: Some(range),
    })
}

/// The literals of `OPTIONS ( [ADD|SET] key 'value', … )` whose key names a credential; `open`
/// indexes the `(`.
pub(super) fn option_secrets<'t>(sql: &str, sig: &[&'t Token], open: usize) -> Vec<&'t Token> {
    let mut found = Vec::new();
    for (_, range) in call_args(sql, sig, open) {
        let item = &sig[range];
        let item = match item.first() {
            Some(t)
                if t.kind == Kind::Word
                    && ["add", "set"].contains(&ident_name(&sql[t.span.clone()]).as_str())
                    && item.len() > 2 =>
            {
                &item[1..]
            }
            _ => item,
        };
        if let [key, value] = item {
            if matches!(key.kind, Kind::Word | Kind::QuotedIdent)
                && value.kind == Kind::Str
                && is_credential_name(&ident_name(&sql[key.span.clone()]))
            {
                found.push(*value);
            }
        }
    }
    found
}

/// The slot of the value in `SET name (=|TO) value`, if `name` is a secret setting
/// ([`is_secret_setting`]). `i` indexes the `SET` word in `sig`. The value runs to `;` at depth
/// 0, a `,` that starts the next assignment of an `UPDATE` (`, name =`), `WHERE`/`FROM`/
/// `RETURNING`, or the end; `DEFAULT` is kept.
pub(super) fn set_value(sql: &str, sig: &[&Token], i: usize) -> Option<Slot> {
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
    if !is_secret_setting(&name) {
        return None;
    }
    if j == sig.len() {
        // `'SET my.pw ' || '= ' || …`: the text ends before the value.
        return Some(Slot {
            range: None,
            open: false,
        });
    }
    if !is_assign(j) {
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
            Kind::Op(b';') if depth == 0 => break,
            Kind::Op(b',') if depth == 0 && starts_assignment(sig, k + 1) => break,
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
    let Some(last) = last else {
        return Some(Slot {
            range: None,
            open: false,
        });
    };
    if last == first
        && sig[first].kind == Kind::Word
        && text(first).is_some_and(|w| w.eq_ignore_ascii_case("default"))
    {
        return None;
    }
    let range = sig[first].span.start..sig[last].span.end;
    Some(Slot {
        open: is_placeholder(&sql[range.clone()]),
        range: Some(range),
    })
}

/// Whether `sig[k]` starts an `UPDATE … SET` assignment: `(` (a column list) or a column name,
/// dotted or subscripted, then `=`.
fn starts_assignment(sig: &[&Token], mut k: usize) -> bool {
    match sig.get(k).map(|t| t.kind) {
        Some(Kind::Op(b'(')) => return true,
        Some(Kind::Word | Kind::QuotedIdent) => k += 1,
        _ => return false,
    }
    let mut depth = 0usize;
    while let Some(t) = sig.get(k) {
        match t.kind {
            Kind::Op(b'[') => depth += 1,
            Kind::Op(b']') if depth > 0 => depth -= 1,
            Kind::Op(b'=') if depth == 0 => return true,
            Kind::Op(b'.') | Kind::Word | Kind::QuotedIdent | Kind::Other if depth == 0 => {}
            _ if depth > 0 => {}
            _ => return false,
        }
        k += 1;
    }
    false
}
