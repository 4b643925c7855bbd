//! `application_name` always carries timebox's tag, `timebox:<user>:<grant id>`, so that
//! `pg_stat_activity` and the server log show who is behind a session. Pure.
//!
//! Sits after [`super::authorize_all_on`] in the relay: a message the role may run is checked here
//! for what it does to `application_name`. The tag is set in the upstream startup
//! ([`tagged`]); afterwards:
//! - `RESET application_name`, `SET application_name TO DEFAULT`, `RESET ALL`, `DISCARD ALL` return
//!   to the startup value, which is tagged: allowed;
//! - a value that already starts with the session's tag: allowed;
//! - a message that is exactly one `SET [LOCAL] application_name = <literal>` (what psql, JDBC's
//!   `setClientInfo` and other drivers send) is rewritten to set the tagged value instead
//!   ([`Appname::Rewrite`]), so clients keep working and the tag stays;
//! - anything else that would change it (`set_config(…)`, a `SET` among other statements, a value
//!   that is not a literal) is denied.
//!
//! Must never let a statement set an `application_name` without the session's tag.

use super::classify::{Classification, SetValue};

/// PostgreSQL keeps `application_name` to `NAMEDATALEN - 1` bytes.
const MAX_APPLICATION_NAME: usize = 63;

/// The session's tag: `timebox:<user>:<grant id>`.
pub fn session_tag(user: &str, grant_id: &str) -> String {
    format!("timebox:{user}:{grant_id}")
}

/// `<tag>[:<client's name>]`, at most 63 bytes (PostgreSQL's limit), cut at a character boundary.
pub fn tagged(tag: &str, client_name: Option<&str>) -> String {
    let mut name = tag.to_owned();
    if let Some(c) = client_name.filter(|c| !c.is_empty()) {
        name.push(':');
        name.push_str(c);
    }
    if name.len() > MAX_APPLICATION_NAME {
        let mut cut = MAX_APPLICATION_NAME;
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        name.truncate(cut);
    }
    name
}

/// Whether `value` is the session's tag or starts with it and a `:` (so `timebox:alice:g_1` does
/// not vouch for `timebox:alice:g_10`).
pub fn keeps_tag(tag: &str, value: &str) -> bool {
    value == tag || value.strip_prefix(tag).is_some_and(|rest| rest.starts_with(':'))
}

/// What the relay does with a message the role may run, for `application_name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Appname {
    /// Forward as it is: it leaves `application_name` tagged.
    Keep,
    /// Send this statement text instead (same command, tagged value).
    Rewrite(String),
    /// It would drop the tag.
    Deny { reason: String, hint: String },
}

/// Decides a message (all its statements) for `application_name`. `tag` is the session's
/// [`session_tag`].
pub fn decide(tag: &str, classification: &Classification) -> Appname {
    let single = classification.statements.len() == 1;
    for stmt in &classification.statements {
        for change in stmt.sets.iter().filter(|c| c.name == "application_name") {
            let value = match &change.value {
                SetValue::Default => continue,
                SetValue::Value(v) if keeps_tag(tag, v) => continue,
                SetValue::Value(v) => v,
                SetValue::NotLiteral => {
                    return deny(
                        tag,
                        format!("{} application_name to a value that is not a literal", change.via),
                    );
                }
            };
            let plain_set = single && stmt.kind == "SET" && change.via == "SET" && stmt.sets.len() == 1;
            if !plain_set {
                let how = if change.via == "SET" {
                    "SET application_name among other statements".to_string()
                } else {
                    format!("{} application_name", change.via)
                };
                return deny(tag, format!("{how} to {value:?}"));
            }
            let local = if change.local { "LOCAL " } else { "" };
            let quoted = tagged(tag, Some(value)).replace('\'', "''");
            return Appname::Rewrite(format!("SET {local}application_name = '{quoted}'"));
        }
    }
    Appname::Keep
}

fn deny(tag: &str, what: String) -> Appname {
    Appname::Deny {
        reason: format!(
            "{what} would drop timebox's tag {tag:?}, which shows in pg_stat_activity and the server \
             log who is behind this session"
        ),
        hint: format!(
            "send SET application_name = '…' on its own (timebox keeps the tag in front), or use a \
             value that starts with \"{tag}:\""
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::super::classify::classify;
    use super::*;

    const TAG: &str = "timebox:alice:g_1";

    /// Expected outcome: kept, rewritten to this text, or denied with this text in the reason.
    enum E {
        Keep,
        Rewrite(&'static str),
        Deny(&'static str),
    }

    /// (what it guards against, SQL, expected)
    #[rustfmt::skip]
    const CASES: &[(&str, &str, E)] = &[
        ("no_setting", "SELECT 1", E::Keep),
        ("other_setting", "SET DateStyle = ISO", E::Keep),
        ("set_is_rewritten_with_the_tag", "SET application_name = 'report'", E::Rewrite("SET application_name = 'timebox:alice:g_1:report'")),
        ("set_to_identifier", "SET application_name TO psql", E::Rewrite("SET application_name = 'timebox:alice:g_1:psql'")),
        ("set_local_stays_local", "SET LOCAL application_name = 'x'", E::Rewrite("SET LOCAL application_name = 'timebox:alice:g_1:x'")),
        ("impersonation_is_prefixed", "SET application_name = 'timebox:bob:g_2'", E::Rewrite("SET application_name = 'timebox:alice:g_1:timebox:bob:g_2'")),
        ("quotes_are_escaped", "SET application_name = 'it''s'", E::Rewrite("SET application_name = 'timebox:alice:g_1:it''s'")),
        ("empty_is_the_tag", "SET application_name = ''", E::Rewrite("SET application_name = 'timebox:alice:g_1'")),
        ("already_tagged", "SET application_name = 'timebox:alice:g_1:x'", E::Keep),
        ("exactly_the_tag", "SET application_name = 'timebox:alice:g_1'", E::Keep),
        ("another_grant_with_the_same_prefix", "SET application_name = 'timebox:alice:g_10'", E::Rewrite("SET application_name = 'timebox:alice:g_1:timebox:alice:g_10'")),
        ("reset", "RESET application_name", E::Keep),
        ("set_default", "SET application_name TO DEFAULT", E::Keep),
        ("reset_all", "RESET ALL", E::Keep),
        ("discard_all", "DISCARD ALL", E::Keep),
        ("set_config", "SELECT set_config('application_name', 'timebox:bob:g_2', false)", E::Deny("set_config() application_name")),
        ("set_config_tagged", "SELECT set_config('application_name', 'timebox:alice:g_1:x', false)", E::Keep),
        ("set_config_not_literal", "SELECT set_config('application_name', current_user, false)", E::Deny("not a literal")),
        ("set_among_statements", "SET application_name = 'x'; SELECT 1", E::Deny("among other statements")),
        ("set_after_select", "SELECT 1; SET application_name = 'x'", E::Deny("among other statements")),
    ];

    #[test]
    fn application_name_keeps_the_tag() {
        let mut failures = Vec::new();
        for (name, sql, expected) in CASES {
            let got = decide(TAG, &classify(sql));
            let ok = match (expected, &got) {
                (E::Keep, Appname::Keep) => true,
                (E::Rewrite(text), Appname::Rewrite(sql)) => sql == text,
                (E::Deny(text), Appname::Deny { reason, hint }) => {
                    reason.contains(text) && hint.contains(TAG)
                }
                _ => false,
            };
            if !ok {
                failures.push(format!("{name}: {sql:?} → {got:?}"));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn rewrites_classify_as_plain_sets_that_keep_the_tag() {
        for (_, sql, expected) in CASES {
            if let E::Rewrite(text) = expected {
                let c = classify(text);
                assert_eq!(c.statements.len(), 1, "{text}");
                assert_eq!(decide(TAG, &c), Appname::Keep, "{sql} → {text}");
            }
        }
    }

    #[test]
    fn tag_format_and_limits() {
        assert_eq!(session_tag("alice", "g_1"), TAG);
        assert_eq!(tagged(TAG, None), TAG);
        assert_eq!(tagged(TAG, Some("")), TAG);
        assert_eq!(tagged(TAG, Some("psql")), "timebox:alice:g_1:psql");
        let long = tagged(TAG, Some(&"é".repeat(40)));
        assert!(long.len() <= 63 && long.starts_with("timebox:alice:g_1:"));
        assert!(keeps_tag(TAG, TAG) && keeps_tag(TAG, "timebox:alice:g_1:x"));
        assert!(!keeps_tag(TAG, "timebox:alice:g_10") && !keeps_tag(TAG, "x"));
    }
}
