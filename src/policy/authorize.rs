//! Role + classified statement → [`Decision`]. Pure: the same inputs always give the same answer,
//! so the relay can re-check at any time with the function that admitted a statement.
//!
//! Sits after [`super::classify()`] and before the relay, which only applies the decision. It must
//! never allow what a rule denies: every rule is checked, the first denial is returned with a reason
//! a person can act on at 3 a.m. (what was denied, why, and a hint).

use std::fmt;
use std::time::Duration;

use super::classify::{
    changes_lexing, Classification, Relation, SetValue, SettingChange, StatementClass, StatementInfo,
    UNREADABLE_SETTING,
};
use super::functions::{self, FunctionKind, SettingKind};
use super::target_functions::TargetFunctions;
use super::version::{self, ServerVersion};
use crate::config;

/// What a grant's role may do, built from [`config::Role`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolePolicy {
    pub name: String,
    /// Classes the role allows (`read`, `write`, `ddl`, `admin`).
    pub allow: Vec<StatementClass>,
    pub tables: Option<config::TableRules>,
    pub require_where: bool,
    pub statement_timeout: Option<Duration>,
    pub allow_unparsed: bool,
    /// User-defined functions (and `operator X`) the role may call as reads.
    pub allow_functions: Vec<String>,
}

impl RolePolicy {
    pub fn from_role(role: &config::Role) -> RolePolicy {
        RolePolicy {
            name: role.name.clone(),
            allow: role.allow.clone(),
            tables: role.tables.clone(),
            require_where: role.require_where,
            statement_timeout: role.statement_timeout,
            allow_unparsed: role.allow_unparsed,
            allow_functions: role.allow_functions.clone(),
        }
    }

    /// A role allowing `classes` and nothing else special (tests, tools).
    pub fn with_classes(name: &str, classes: &[StatementClass]) -> RolePolicy {
        RolePolicy {
            name: name.into(),
            allow: classes.to_vec(),
            tables: None,
            require_where: false,
            statement_timeout: None,
            allow_unparsed: false,
            allow_functions: Vec::new(),
        }
    }

    pub fn allows(&self, class: StatementClass) -> bool {
        match class {
            StatementClass::Unparsed => self.allow_unparsed,
            c => self.allow.contains(&c),
        }
    }

    fn allowed_list(&self) -> String {
        if self.allow.is_empty() {
            "nothing".into()
        } else {
            self.allow
                .iter()
                .map(|c| c.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        }
    }

    fn function_allowed(&self, name: &str) -> bool {
        self.allow_functions.iter().any(|f| {
            f == name
                || f.strip_prefix("public.") == Some(name)
                || name.strip_prefix("public.") == Some(f.as_str())
        })
    }
}

impl From<&config::Role> for RolePolicy {
    fn from(role: &config::Role) -> Self {
        RolePolicy::from_role(role)
    }
}

/// The answer for a statement or a whole message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny {
        /// What was denied and why.
        reason: String,
        /// What the person can do about it.
        hint: String,
    },
}

impl Decision {
    pub fn is_allow(&self) -> bool {
        matches!(self, Decision::Allow)
    }

    fn deny(reason: impl Into<String>, hint: impl Into<String>) -> Decision {
        Decision::Deny {
            reason: reason.into(),
            hint: hint.into(),
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Allow => f.write_str("allowed"),
            Decision::Deny { reason, hint } => write!(f, "denied: {reason} (hint: {hint})"),
        }
    }
}

/// Decides one statement for a target of unknown version, taken to be the oldest supported
/// ([`ServerVersion::OLDEST`]). Sessions use [`authorize_on`] with their target's version.
pub fn authorize(role: &RolePolicy, stmt: &StatementInfo) -> Decision {
    authorize_on(role, ServerVersion::OLDEST, stmt)
}

/// What a statement calls by name on a target older than the classifier's grammar, where the
/// classifier saw a built-in: newer-grammar constructs (`JSON_ARRAY(…)` → `json_array`) and
/// unqualified built-ins the target does not have yet (`casefold`). Such a name can only reach a
/// user-defined function on that target. A `pg_catalog.`-qualified name cannot, so it is not listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OlderTargetCall {
    /// How the statement wrote it: `JSON_ARRAY(…)`, `casefold()`, `IS JSON`.
    pub written: String,
    /// The function the target calls instead; `None` when the target rejects the text.
    pub function: Option<String>,
    /// The major version that made it a built-in.
    pub since: u32,
}

/// The [`OlderTargetCall`]s of a statement on `server`. Pure.
pub fn older_target_calls(stmt: &StatementInfo, server: ServerVersion) -> Vec<OlderTargetCall> {
    let mut calls = Vec::new();
    for syntax in &stmt.newer_syntax {
        if version::absent_on(syntax.since, server) {
            calls.push(OlderTargetCall {
                written: syntax.keyword.to_string(),
                function: syntax.older_call.map(str::to_string),
                since: syntax.since,
            });
        }
    }
    for f in &stmt.functions {
        if f.contains('.') || functions::function_kind(f) != FunctionKind::Safe {
            continue;
        }
        if let Some(since) = version::builtin_since(f).filter(|s| version::absent_on(*s, server)) {
            calls.push(OlderTargetCall {
                written: format!("{f}()"),
                function: Some(f.clone()),
                since,
            });
        }
    }
    calls
}

/// Decides one statement for a session whose target runs `server` (its catalog unread).
pub fn authorize_on(role: &RolePolicy, server: ServerVersion, stmt: &StatementInfo) -> Decision {
    authorize_in(role, Target::version(server), stmt)
}

/// What a session knows of its target: its version and, when timebox could read it, what its
/// catalog says about function names ([`TargetFunctions`]).
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub server: ServerVersion,
    pub functions: Option<&'a TargetFunctions>,
}

impl Target<'_> {
    /// A target known by its version only: the hand-kept function lists decide alone.
    pub fn version(server: ServerVersion) -> Target<'static> {
        Target {
            server,
            functions: None,
        }
    }

    fn reads_only(&self, function: &str) -> bool {
        self.functions.is_some_and(|t| t.reads_only(function))
    }

    fn shadowed(&self, function: &str) -> bool {
        self.functions.is_some_and(|t| t.shadowed(function))
    }
}

/// Decides one statement for a session on `target`.
pub fn authorize_in(role: &RolePolicy, target: Target<'_>, stmt: &StatementInfo) -> Decision {
    let server = target.server;
    // In order: the first step that objects (does not answer Allow) decides; its reason says the most.
    let steps: [&dyn Fn() -> Decision; 8] = [
        &|| lexing_step(stmt),
        &|| class_step(role, target, stmt),
        &|| shadowed_step(role, target, stmt),
        &|| older_target_step(role, server, stmt),
        &|| unparsed_step(role, stmt),
        &|| settings_step(role, stmt),
        &|| tables_step(role, stmt),
        &|| where_step(role, stmt),
    ];
    steps
        .iter()
        .map(|step| step())
        .find(|d| !d.is_allow())
        .unwrap_or(Decision::Allow)
}

/// Step 1 of [`authorize_on`]: settings that change lexing, never allowed whatever the role.
fn lexing_step(stmt: &StatementInfo) -> Decision {
    if let Some(change) = stmt.sets.iter().find(|c| changes_lexing(c)) {
        let what = if change.name == UNREADABLE_SETTING {
            format!(
                "{} with a setting name that is not a literal (an expression or named arguments) is never \
                 allowed through timebox: it could name client_encoding, which",
                change.via
            )
        } else {
            format!(
                "{} {} is never allowed through timebox: it",
                change.via, change.name
            )
        };
        return Decision::deny(
            format!(
                "{what} changes how SQL text is lexed, so the proxy could no longer see what the server runs"
            ),
            "leave it at its default (UTF8, standard_conforming_strings = on); no grant can change it; \
             name other settings with SET name = value or set_config('name', 'value', false)",
        );
    }
    Decision::Allow
}

/// Step 2 of [`authorize_on`]: every class the statement needs, highest first, and user-defined
/// functions.
fn class_step(role: &RolePolicy, target: Target<'_>, stmt: &StatementInfo) -> Decision {
    let kind = &stmt.kind;
    for class in stmt.needs().into_iter().rev() {
        if class == StatementClass::Unparsed || role.allows(class) {
            continue;
        }
        let why = stmt.reason_for(class).unwrap_or("");
        return Decision::deny(
            format!(
                "{kind} needs {class} access ({why}); role {} allows only {}",
                role.name,
                role.allowed_list()
            ),
            format!("request a grant with a role that allows {class}"),
        );
    }
    if !role.allows(StatementClass::Write) {
        let user_function = |f: &&String| !role.function_allowed(f) && !target.reads_only(f);
        if let Some(f) = stmt.unknown_functions.iter().find(user_function) {
            let (what, name) = match f.strip_prefix("operator ") {
                Some(op) => ("operator", op.to_string()),
                None => ("function", format!("{f}()")),
            };
            return Decision::deny(
                format!(
                    "{kind} calls {what} {name}, which is not a built-in known to be read-only \
                     (user-defined functions and operators can change data, so they count as write); \
                     role {} allows only {}",
                    role.name,
                    role.allowed_list()
                ),
                format!(
                    "request a grant with a role that allows write, or ask an admin to add {f:?} to \
                     roles.{}.allow_functions if it only reads",
                    role.name
                ),
            );
        }
    }
    Decision::Allow
}

/// Step 2b of [`authorize_in`]: an unqualified built-in name that a user-defined function on the
/// target also has (`public.lower(int)`): PostgreSQL picks by argument types and may call the
/// user's, so for a role without write it counts as a user function.
fn shadowed_step(role: &RolePolicy, target: Target<'_>, stmt: &StatementInfo) -> Decision {
    if role.allows(StatementClass::Write) {
        return Decision::Allow;
    }
    let shadowed = stmt.functions.iter().find(|f| {
        target.shadowed(f) && functions::function_kind(f) == FunctionKind::Safe && !role.function_allowed(f)
    });
    let Some(f) = shadowed else {
        return Decision::Allow;
    };
    Decision::deny(
        format!(
            "{} calls {f}(), a built-in name that a user-defined function on this target also has; \
             PostgreSQL may call that one (user-defined functions can change data, so they count as \
             write); role {} allows only {}",
            stmt.kind,
            role.name,
            role.allowed_list()
        ),
        format!(
            "call pg_catalog.{f}(…) to reach the built-in, or ask an admin to add {f:?} to \
             roles.{}.allow_functions if the user's function only reads",
            role.name
        ),
    )
}

/// Step 3 of [`authorize_on`]: what the classifier's grammar saw as built-in but the target calls
/// by name.
fn older_target_step(role: &RolePolicy, server: ServerVersion, stmt: &StatementInfo) -> Decision {
    let kind = &stmt.kind;
    for call in older_target_calls(stmt, server) {
        let Some(function) = &call.function else {
            return Decision::deny(
                format!(
                    "{kind} uses {}, which needs PostgreSQL {}; the target runs {server}, which cannot \
                     parse it the way timebox checked it",
                    call.written, call.since
                ),
                format!("rewrite it without {} for a {server} target", call.written),
            );
        };
        if role.allows(StatementClass::Write) || role.function_allowed(function) {
            continue;
        }
        return Decision::deny(
            format!(
                "{kind} uses {}, which is built in only since PostgreSQL {}; the target runs {server}, \
                 where it is a call of a function named {function}, which can only be user-defined \
                 (user-defined functions can change data, so they count as write); role {} allows only {}",
                call.written,
                call.since,
                role.name,
                role.allowed_list()
            ),
            format!(
                "request a grant with a role that allows write, or ask an admin to add {function:?} to \
                 roles.{}.allow_functions if it only reads",
                role.name
            ),
        );
    }
    Decision::Allow
}

/// Step 4 of [`authorize_on`]: text the parsers could not agree on (after the class checks, whose
/// reasons say more).
fn unparsed_step(role: &RolePolicy, stmt: &StatementInfo) -> Decision {
    let kind = &stmt.kind;
    if let Some(why) = &stmt.unparsed {
        if !role.allow_unparsed {
            return Decision::deny(
                format!("{kind} could not be verified: {why}"),
                format!(
                    "rewrite it in plain SQL that both parsers accept (check it with `timebox check`), or \
                     request a grant with a break-glass role that has allow_unparsed (role {} does not)",
                    role.name
                ),
            );
        }
    }
    Decision::Allow
}

/// Step 5 of [`authorize_on`]: the role's rules on settings (`statement_timeout` cap, `search_path`
/// under table rules).
fn settings_step(role: &RolePolicy, stmt: &StatementInfo) -> Decision {
    for change in &stmt.sets {
        if let Some(denied) = setting_violation(role, change) {
            return denied;
        }
    }
    Decision::Allow
}

/// Step 6 of [`authorize_on`]: table rules.
fn tables_step(role: &RolePolicy, stmt: &StatementInfo) -> Decision {
    let kind = &stmt.kind;
    if let Some(rules) = &role.tables {
        for rel in &stmt.relations {
            if let Some(pattern) = matching(&rules.deny, rel) {
                return Decision::deny(
                    format!(
                        "{kind} touches {rel}, which role {} may not use (tables.deny {pattern:?})",
                        role.name
                    ),
                    "request a grant with a role whose table rules include it",
                );
            }
            if !rules.allow.is_empty() && !all_matching(&rules.allow, rel) {
                return Decision::deny(
                    format!(
                        "{kind} touches {rel}, which is outside role {}'s tables.allow ({}){}",
                        role.name,
                        rules.allow.join(", "),
                        match &rel.schema {
                            Some(_) => "",
                            None if rel.name.starts_with("pg_") => {
                                " (an unqualified pg_* name is checked as pg_catalog.NAME, which PostgreSQL \
                                 searches first, and as public.NAME)"
                            }
                            None => " (unqualified names are checked as public.NAME)",
                        }
                    ),
                    "request a grant with a role whose table rules include it",
                );
            }
        }
    }
    Decision::Allow
}

/// Step 7 of [`authorize_on`]: `UPDATE`/`DELETE` (and `MERGE`) without a filter, for `require_where`.
fn where_step(role: &RolePolicy, stmt: &StatementInfo) -> Decision {
    if role.require_where && stmt.has_where == Some(false) {
        if stmt.unfiltered_targets.is_empty() {
            if let Some(target) = stmt.unfiltered_merge_targets.first() {
                return Decision::deny(
                    format!(
                        "MERGE into {target} updates or deletes rows that no condition filters (its ON or \
                         WHEN … AND condition names no column, like ON true) and could touch every row; \
                         role {} requires a filter (require_where)",
                        role.name
                    ),
                    "make the ON condition match rows by a column (e.g. ON t.id = s.id), or add \
                     WHEN MATCHED AND <condition on a column>",
                );
            }
        }
        let targets: Vec<String> = stmt.unfiltered_targets.iter().map(|r| r.to_string()).collect();
        return Decision::deny(
            format!(
                "UPDATE/DELETE of {} has no WHERE clause and would touch every row; role {} requires one \
                 (require_where)",
                targets.join(", "),
                role.name
            ),
            "add a WHERE clause (WHERE true if you really mean every row)",
        );
    }
    Decision::Allow
}

/// Decides a whole message for a target of unknown version (the oldest supported): one denied
/// statement denies all of it (nothing of it runs).
pub fn authorize_all(role: &RolePolicy, classification: &Classification) -> Decision {
    authorize_all_on(role, ServerVersion::OLDEST, classification)
}

/// Decides a whole message for a session whose target runs `server`: one denied statement denies
/// all of it (nothing of it runs).
pub fn authorize_all_on(
    role: &RolePolicy,
    server: ServerVersion,
    classification: &Classification,
) -> Decision {
    authorize_all_in(role, Target::version(server), classification)
}

/// Decides a whole message for a session on `target`: one denied statement denies all of it.
pub fn authorize_all_in(role: &RolePolicy, target: Target<'_>, classification: &Classification) -> Decision {
    let n = classification.statements.len();
    for (i, stmt) in classification.statements.iter().enumerate() {
        if let Decision::Deny { reason, hint } = authorize_in(role, target, stmt) {
            let reason = if n > 1 {
                format!("statement {} of {n} denied, so none of them ran: {reason}", i + 1)
            } else {
                reason
            };
            return Decision::Deny { reason, hint };
        }
    }
    Decision::Allow
}

fn show(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// Why a setting change breaks the role's statement_timeout cap, if it does.
fn timeout_violation(change: &SettingChange, cap: Duration) -> Option<String> {
    if change.name == "all" {
        return Some(format!(
            "{} would reset statement_timeout and lift this role's cap of {}",
            change.via,
            show(cap)
        ));
    }
    if functions::setting_kind(&change.name) != SettingKind::StatementTimeout {
        return None;
    }
    match &change.value {
        SetValue::Default => Some(format!(
            "{} statement_timeout would lift this role's cap of {}",
            change.via,
            show(cap)
        )),
        SetValue::NotLiteral => Some(format!(
            "{} statement_timeout to a value that is not a literal cannot be checked against this role's cap of {}",
            change.via,
            show(cap)
        )),
        SetValue::Value(v) => match parse_pg_duration(v) {
            None => Some(format!(
                "{} statement_timeout = {v:?} is not a duration the proxy can check against the cap of {}",
                change.via,
                show(cap)
            )),
            Some(d) if d.is_zero() => Some(format!(
                "{} statement_timeout = {v} disables the timeout; this role's cap is {}",
                change.via,
                show(cap)
            )),
            Some(d) if d > cap => Some(format!(
                "{} statement_timeout = {v} is above this role's cap of {}",
                change.via,
                show(cap)
            )),
            Some(_) => None,
        },
    }
}

/// A PostgreSQL time setting (`5000`, `'5s'`, `1.5min`, `'100 ms'`); a bare number is milliseconds.
pub fn parse_pg_duration(value: &str) -> Option<Duration> {
    let v = value.trim().trim_matches('\'').trim();
    let split = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+'))
        .unwrap_or(v.len());
    let (number, unit) = v.split_at(split);
    let n: f64 = number.parse().ok()?;
    if !n.is_finite() || n < 0.0 {
        return None;
    }
    let ms = match unit.trim() {
        "" | "ms" => n,
        "us" => n / 1000.0,
        "s" => n * 1000.0,
        "min" => n * 60_000.0,
        "h" => n * 3_600_000.0,
        "d" => n * 86_400_000.0,
        _ => return None,
    };
    if ms > 1e15 {
        return None;
    }
    // PostgreSQL rounds to whole milliseconds with rint(), half to even (0.5 ms → 0, 1.5 ms → 2);
    // a value that rounds to 0 disables the timeout.
    Some(Duration::from_millis(ms.round_ties_even() as u64))
}

/// The `search_path` table rules assume. timebox sends it in the upstream startup of every session
/// whose role has table rules (so a role- or database-level default on the target cannot move
/// names), and it is the only value such a role may set.
pub const TABLE_RULES_SEARCH_PATH: &str = "public";

/// The relations a name can be on the target, as `(schema, name)`. A qualified name is itself. An
/// unqualified one resolves through [`TABLE_RULES_SEARCH_PATH`], after `pg_catalog`, which
/// PostgreSQL always searches first: a `pg_*` name (every catalog relation has one) may be
/// `pg_catalog.NAME` or, if the catalog has none, `public.NAME`; any other is `public.NAME`.
fn resolutions(rel: &Relation) -> Vec<(&str, &str)> {
    match &rel.schema {
        Some(schema) => vec![(schema.as_str(), rel.name.as_str())],
        None if rel.name.starts_with("pg_") => {
            vec![("pg_catalog", rel.name.as_str()), ("public", rel.name.as_str())]
        }
        None => vec![(TABLE_RULES_SEARCH_PATH, rel.name.as_str())],
    }
}

fn pattern_matches(pattern: &str, schema: &str, name: &str) -> bool {
    let (ps, pn) = pattern.split_once('.').unwrap_or(("public", pattern));
    glob(ps, schema) && glob(pn, name)
}

/// The first pattern matching any relation the name can be (for `tables.deny`), if any.
fn matching<'p>(patterns: &'p [String], rel: &Relation) -> Option<&'p str> {
    let candidates = resolutions(rel);
    patterns
        .iter()
        .map(String::as_str)
        .find(|p| candidates.iter().any(|(s, n)| pattern_matches(p, s, n)))
}

/// Whether every relation the name can be is matched by a pattern (for `tables.allow`).
fn all_matching(patterns: &[String], rel: &Relation) -> bool {
    resolutions(rel)
        .iter()
        .all(|(s, n)| patterns.iter().any(|p| pattern_matches(p, s, n)))
}

/// Why the role's rules refuse a setting change, as the denial: the `statement_timeout` cap, and
/// `search_path` under table rules (only [`TABLE_RULES_SEARCH_PATH`], or a reset to it).
fn setting_violation(role: &RolePolicy, change: &SettingChange) -> Option<Decision> {
    if let Some(cap) = role.statement_timeout {
        if let Some(why) = timeout_violation(change, cap) {
            return Some(Decision::deny(
                why,
                format!("keep statement_timeout at or below {}", show(cap)),
            ));
        }
    }
    let keeps_rules_path = match &change.value {
        SetValue::Default => true,
        SetValue::Value(v) => v.trim() == TABLE_RULES_SEARCH_PATH,
        SetValue::NotLiteral => false,
    };
    if role.tables.is_some() && change.name == "search_path" && !keeps_rules_path {
        return Some(Decision::deny(
            format!(
                "{} search_path is not allowed for role {}: its table rules check unqualified \
                 names as public.NAME (pg_* names as pg_catalog.NAME), which holds only with \
                 search_path = {TABLE_RULES_SEARCH_PATH}",
                change.via, role.name
            ),
            "schema-qualify table names (e.g. sales.orders) instead of changing search_path",
        ));
    }
    None
}

/// Decides a setting a client asks for at connection time (a startup parameter or `options -c`)
/// with the rules a `SET` of it meets: the class the setting needs, the `statement_timeout` cap and
/// `search_path` under table rules. Lexing settings (`client_encoding`,
/// `standard_conforming_strings`) have their own startup rule and are not decided here.
pub fn authorize_startup_setting(role: &RolePolicy, name: &str, value: &str) -> Decision {
    let change = SettingChange {
        name: name.to_ascii_lowercase(),
        value: SetValue::Value(value.to_owned()),
        local: false,
        via: "startup setting",
    };
    if !matches!(
        functions::setting_kind(&change.name),
        SettingKind::Lexing | SettingKind::ClientEncoding
    ) {
        let (class, why) = super::classify::setting_class(&change);
        if !role.allows(class) {
            return Decision::deny(
                format!(
                    "startup setting {}={value:?} needs {class} access ({why}); role {} allows only {}",
                    change.name,
                    role.name,
                    role.allowed_list()
                ),
                format!(
                    "leave {} at its default, or request a grant with a role that allows {class}",
                    change.name
                ),
            );
        }
    }
    setting_violation(role, &change).unwrap_or(Decision::Allow)
}

/// `*` matches any run of characters, `?` one character.
pub fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matches_like_a_shell() {
        for (p, t, m) in [
            ("*", "orders", true),
            ("ord*", "orders", true),
            ("o?ders", "orders", true),
            ("secrets", "secrets", true),
            ("secrets", "secrets2", false),
            ("*_audit", "orders_audit", true),
            ("*_audit", "orders", false),
            ("", "", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
        ] {
            assert_eq!(glob(p, t), m, "{p} vs {t}");
        }
    }

    #[test]
    fn pg_durations() {
        assert_eq!(parse_pg_duration("5000"), Some(Duration::from_secs(5)));
        assert_eq!(parse_pg_duration("5s"), Some(Duration::from_secs(5)));
        assert_eq!(parse_pg_duration("'2 min'"), Some(Duration::from_secs(120)));
        assert_eq!(parse_pg_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_pg_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_pg_duration("0"), Some(Duration::ZERO));
        // Regression (attack round on issue 16): PostgreSQL's rint() makes these 0, no timeout.
        assert_eq!(parse_pg_duration("0.5"), Some(Duration::ZERO));
        assert_eq!(parse_pg_duration("'500us'"), Some(Duration::ZERO));
        assert_eq!(parse_pg_duration("2.5"), Some(Duration::from_millis(2)));
        assert_eq!(parse_pg_duration("0.7"), Some(Duration::from_millis(1)));
        assert_eq!(parse_pg_duration("soon"), None);
        assert_eq!(parse_pg_duration("5 fortnights"), None);
        assert_eq!(parse_pg_duration("-1"), None);
    }
}
