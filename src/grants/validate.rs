//! Input rules for everything a client names or writes when it makes a grant or a request: names
//! (user, target, role), free text (reasons, tickets) and times (`starts_at`, expiry arithmetic).
//!
//! Where it sits: [`super::validate_new_grant`], [`super::GrantService`] and
//! [`super::requests::RequestService`] call these, so the rules hold however a grant or request is made
//! (admin API, CLI through the API, workflow approval). Pure functions; they must never panic, whatever
//! the input (times are added with checked arithmetic).
//!
//! Decisions:
//! - A name is 1 to [`MAX_NAME_BYTES`] bytes (PostgreSQL's identifier limit) of ASCII letters, digits
//!   and `_ . @ + - $`, starting with a letter, digit or `_`: what PostgreSQL identifiers and
//!   e-mail-like user names need, and nothing a log line, a chat message or a terminal interprets.
//! - Free text may hold any printable text (any script, emoji) but no control characters (`\n`, `\t`,
//!   ESC, …, Unicode category Cc), no bidirectional overrides or isolates (U+202A–U+202E,
//!   U+2066–U+2069, which reorder what an auditor sees) and no line/paragraph separators (U+2028,
//!   U+2029): refused, not escaped, so what is stored is exactly what was asked for.
//! - `starts_at` may be at most [`MAX_START_AHEAD`] ahead of now (earlier than now means now).

use chrono::{DateTime, Utc};
use std::time::Duration;

/// Longest name (user, target, role), in bytes: PostgreSQL's `NAMEDATALEN - 1`.
pub const MAX_NAME_BYTES: usize = 63;
/// How far ahead a grant may start: 366 days.
pub const MAX_START_AHEAD: Duration = Duration::from_secs(366 * 24 * 3600);

/// Why `name` is not an acceptable user, target or role name; `None` if it is. Pure.
pub fn name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("must not be empty".into());
    }
    if name.len() > MAX_NAME_BYTES {
        return Some(format!("at most {MAX_NAME_BYTES} bytes"));
    }
    let first_ok = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_');
    let rest_ok = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'@' | b'+' | b'-' | b'$'));
    if !first_ok || !rest_ok {
        return Some(format!(
            "{name:?} is not a valid name: use ASCII letters, digits and _ . @ + - $, starting with a \
             letter, digit or _"
        ));
    }
    None
}

/// Whether `c` may not appear in free text (see the module docs).
pub fn is_forbidden_in_text(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{2028}' | '\u{2029}')
}

/// Why `text` is not acceptable free text; `None` if it is. Pure.
pub fn text_problem(text: &str) -> Option<String> {
    text.chars().find(|c| is_forbidden_in_text(*c)).map(|c| {
        format!(
            "must not contain control or bidirectional-override characters (found U+{:04X})",
            c as u32
        )
    })
}

/// A refused input: the field at fault and why.
pub type FieldProblem = (&'static str, String);

/// Why a grant starting at `starts_at` (asked at `now`) and lasting `ttl` cannot be issued, as
/// (field, message); otherwise its start (never before `now`) and expiry. Pure, never panics.
pub fn grant_window(
    now: DateTime<Utc>,
    starts_at: Option<DateTime<Utc>>,
    ttl: Duration,
) -> Result<(DateTime<Utc>, DateTime<Utc>), FieldProblem> {
    let ahead = chrono::Duration::from_std(MAX_START_AHEAD).expect("366 days fits");
    let latest_start = now
        .checked_add_signed(ahead)
        .ok_or(("starts_at", "the clock is out of range".to_owned()))?;
    let starts_at = starts_at.unwrap_or(now).max(now);
    if starts_at > latest_start {
        return Err((
            "starts_at",
            format!(
                "{} is too far ahead: a grant may start at most 366 days from now (by {})",
                starts_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                latest_start.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
        ));
    }
    let expires_at = chrono::Duration::from_std(ttl)
        .ok()
        .and_then(|d| starts_at.checked_add_signed(d))
        .ok_or(("ttl", "too long".to_owned()))?;
    Ok((starts_at, expires_at))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_bounded_and_conservative() {
        for ok in [
            "alice",
            "Alice_2",
            "bob.smith@example.com",
            "a+b-c$d",
            "_svc",
            "7eleven",
        ] {
            assert_eq!(name_problem(ok), None, "{ok}");
        }
        assert!(name_problem(&"a".repeat(MAX_NAME_BYTES)).is_none());
        for bad in [
            "",
            "alice\n",
            "ali\u{0}ce",
            "bob\u{1b}[31m",
            "\talice",
            "a b",
            " alice",
            "alice;drop",
            "-alice",
            ".alice",
            "jürgen",
            "al\u{202E}ice",
            "a\"b",
            "a'b",
            "a/b",
        ] {
            assert!(name_problem(bad).is_some(), "{bad:?} must be refused");
        }
        assert!(name_problem(&"a".repeat(MAX_NAME_BYTES + 1)).is_some());
    }

    #[test]
    fn free_text_refuses_controls_and_bidi_overrides_only() {
        for ok in ["incident 4711", "Störung 🔥 — see INC-1", "a'b\"c<d>&e", "日本語"] {
            assert_eq!(text_problem(ok), None, "{ok}");
        }
        for bad in [
            "line\nbreak",
            "tab\there",
            "cr\r",
            "esc\u{1b}[2J",
            "nul\u{0}",
            "del\u{7f}",
            "c1\u{85}",
            "rlo\u{202E}txt",
            "iso\u{2066}x",
            "ls\u{2028}",
        ] {
            assert!(text_problem(bad).is_some(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn grant_window_bounds_the_start_and_never_panics() {
        let now = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let h = Duration::from_secs(3600);
        assert_eq!(
            grant_window(now, None, h).unwrap(),
            (now, now + chrono::Duration::hours(1))
        );
        let past = now - chrono::Duration::days(3);
        assert_eq!(
            grant_window(now, Some(past), h).unwrap().0,
            now,
            "the past means now"
        );
        let edge = now + chrono::Duration::days(366);
        assert_eq!(grant_window(now, Some(edge), h).unwrap().0, edge);
        let field = |r: Result<_, FieldProblem>| r.unwrap_err().0;
        assert_eq!(
            field(grant_window(now, Some(edge + chrono::Duration::seconds(1)), h)),
            "starts_at"
        );
        let y9999 = DateTime::parse_from_rfc3339("9999-12-31T23:59:59Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(field(grant_window(now, Some(y9999), h)), "starts_at");
        // See: issue 16, finding 12d (this start panicked the handler).
        assert_eq!(
            field(grant_window(now, Some(DateTime::<Utc>::MAX_UTC), h)),
            "starts_at"
        );
        assert_eq!(
            field(grant_window(DateTime::<Utc>::MAX_UTC, None, h)),
            "starts_at"
        );
        assert_eq!(
            field(grant_window(now, None, Duration::from_secs(u64::MAX))),
            "ttl"
        );
        let near_max = DateTime::<Utc>::MAX_UTC - chrono::Duration::days(400);
        assert_eq!(
            field(grant_window(near_max, None, Duration::from_secs(400 * 86400 + 1))),
            "ttl"
        );
    }
}
