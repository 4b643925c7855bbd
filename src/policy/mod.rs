//! Statement policy: what a grant's role may run. Pure functions only — no I/O, no clock, no
//! globals — so the relay, `timebox check` and the tests all ask the same question the same way.
//!
//! Data flow: the relay hands the text of a simple Query (or of a Parse) to [`classify()`] (or to a
//! [`ClassifyCache`] in front of it), gets one [`StatementInfo`] per statement, and asks
//! [`authorize_all`] with the session's [`RolePolicy`]. One denied statement denies the whole
//! message. This module must never let a statement through because it could not understand it:
//! anything the two parsers (PostgreSQL's own, then sqlparser) do not agree on is
//! [`StatementClass::Unparsed`] and is denied unless the role has `allow_unparsed`.
//!
//! - [`classify`](mod@classify): SQL text → classes, relations, functions, flags (its module doc
//!   explains the split and the cross-check).
//! - [`authorize`](mod@authorize): role + statement → [`Decision`] with a reason and a hint.
//! - [`catalog`](mod@catalog): which relation a statement changes is a system catalog.
//! - [`functions`]: the maintained lists (functions, operators, settings).
//! - [`appname`]: `application_name` keeps timebox's tag (`SET` rewritten, the rest denied).
//! - [`cache`](mod@cache): [`ClassifyCache`], the bounded cache the relay classifies through.
//! - [`shape`]: statement texts with their literals abstracted, and when a classification holds
//!   for every text of its shape (the cache's second level).
//! - [`version`]: the target's version, and the newer-grammar constructs and built-ins older
//!   targets call as functions by name.
//!
//! # Known limits of SQL-level enforcement
//! The upstream credential of each role is the real boundary behind this layer. What the text of a
//! statement cannot show:
//! - views, rules, triggers, column defaults and row-level security policies run code the statement
//!   does not name; built-in operator symbols and casts on user-defined types call user functions;
//! - a `search_path` set with `ALTER ROLE`/`ALTER DATABASE` can put schemas before `pg_catalog`, so
//!   unqualified built-in names could reach user functions (only session `SET`s are checked);
//! - unqualified relations are checked as `public.NAME`, and `pg_*` names as `pg_catalog.NAME` too
//!   (PostgreSQL searches `pg_catalog` first; allowed only if both are); sessions of roles with
//!   table rules run with `search_path = public`, pinned in the upstream startup, and may not change
//!   it (at startup or with `SET`);
//! - a statement that changes a system catalog relation (in `pg_catalog`, `information_schema`,
//!   `pg_toast`; an unqualified `pg_*` name counts as `pg_catalog`'s) needs `admin`
//!   ([`catalog`]); a user view or function that writes a catalog is not seen;
//! - `EXECUTE name` is only as safe as what `name` was prepared with: the relay must look up the
//!   class it tracked at `PREPARE`/Parse time ([`StatementInfo::execute_name`]);
//! - `require_where` accepts any `WHERE` (also `WHERE true`): it guards against accidents; a
//!   `MERGE` action must be filtered by an `ON` or `WHEN … AND` condition that names a column;
//! - the classifier parses with PostgreSQL 18's grammar; what an older target makes of newer syntax
//!   and built-ins is decided per session by [`version`] and [`authorize_on`];
//! - lexing assumes `standard_conforming_strings = on` and UTF8: the relay must fail closed when
//!   the server reports otherwise;
//! - PostgreSQL syntax sqlparser does not know (`FOR NO KEY UPDATE`, `ROWS FROM`, `TABLE ONLY t`,
//!   `WHERE CURRENT OF`, `SET CONSTRAINTS`, `DO`, `CHECKPOINT`, `ALTER SYSTEM`, `U&""`, custom
//!   operators) is `Unparsed`: denied unless the role has `allow_unparsed`;
//! - the function lists are maintained by hand; when timebox could read the target's catalog
//!   ([`target_functions`]), an unlisted `pg_catalog` function the catalog marks immutable or stable
//!   reads, and an unqualified built-in name a user function shares counts as a user function;
//!   otherwise an unlisted built-in counts as `write` until it is added to [`functions`] or to the
//!   role's `allow_functions`.

pub mod appname;
pub mod authorize;
pub mod cache;
pub mod catalog;
pub mod classify;
pub mod functions;
pub mod mask_shape;
pub mod shape;
pub mod target_functions;
pub mod version;

use std::fmt::Write as _;

pub use authorize::{
    authorize, authorize_all, authorize_all_in, authorize_all_on, authorize_in, authorize_on, Decision,
    RolePolicy, Target,
};
pub use cache::ClassifyCache;
pub use classify::{
    classify, ClassReason, Classification, CopyDirection, Deallocate, Relation, SetValue, SettingChange,
    StatementClass, StatementInfo,
};
pub use target_functions::TargetFunctions;
pub use version::{NewerSyntax, ServerVersion};

use crate::config::Config;

/// `timebox check --config FILE --role ROLE "SQL"`: a human-readable report of each statement's
/// class, relations and decision, and whether the whole text would be allowed.
pub fn check_command(config: &Config, role: &str, sql: &str) -> (String, bool) {
    let mut out = String::new();
    let Some(role_config) = config.roles.get(role) else {
        let known: Vec<&str> = config.roles.keys().map(String::as_str).collect();
        let _ = writeln!(
            out,
            "unknown role {role:?}; the config defines: {}",
            if known.is_empty() {
                "no roles".to_string()
            } else {
                known.join(", ")
            }
        );
        return (out, false);
    };
    let policy = RolePolicy::from_role(role_config);
    let classification = classify(sql);
    let _ = writeln!(
        out,
        "role {} (allows {}{})",
        policy.name,
        if policy.allow.is_empty() {
            "nothing".to_string()
        } else {
            policy
                .allow
                .iter()
                .map(|c| c.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        },
        if policy.allow_unparsed { ", unparsed" } else { "" }
    );
    let _ = writeln!(
        out,
        "checked for a {} target, the oldest supported (a session is checked for its target's version)",
        ServerVersion::OLDEST
    );
    if classification.is_empty() {
        let _ = writeln!(out, "no statements (empty query): allowed");
        return (out, true);
    }
    let n = classification.statements.len();
    for (i, stmt) in classification.statements.iter().enumerate() {
        let text = sql.get(stmt.span.clone()).unwrap_or("").trim();
        let _ = writeln!(out, "\nstatement {} of {n}: {}", i + 1, one_line(text, 100));
        let _ = writeln!(out, "  kind:      {}", stmt.kind);
        let _ = writeln!(out, "  class:     {}", stmt.class);
        for r in &stmt.reasons {
            let _ = writeln!(out, "    {:<9} {}", r.class.as_str(), r.why);
        }
        if !stmt.relations.is_empty() {
            let rels: Vec<String> = stmt.relations.iter().map(|r| r.to_string()).collect();
            let _ = writeln!(out, "  relations: {}", rels.join(", "));
        }
        if !stmt.functions.is_empty() {
            let _ = writeln!(out, "  functions: {}", stmt.functions.join(", "));
        }
        if !stmt.unknown_functions.is_empty() {
            let _ = writeln!(
                out,
                "  not known to be read-only: {}",
                stmt.unknown_functions.join(", ")
            );
        }
        match authorize(&policy, stmt) {
            Decision::Allow => {
                let _ = writeln!(out, "  decision:  allowed");
            }
            Decision::Deny { reason, hint } => {
                let _ = writeln!(out, "  decision:  denied: {reason}");
                let _ = writeln!(out, "  hint:      {hint}");
            }
        }
    }
    let overall = authorize_all(&policy, &classification);
    let _ = writeln!(out, "\n{}", if overall.is_allow() { "allowed" } else { "denied" });
    (out, overall.is_allow())
}

/// The statement on one line; line breaks show as `↵` (they end `--` comments, so they matter).
fn one_line(text: &str, max: usize) -> String {
    let flat: String = text
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join(" ↵ ");
    if flat.chars().count() > max {
        let cut: String = flat.chars().take(max).collect();
        format!("{cut}…")
    } else {
        flat
    }
}

#[cfg(test)]
mod tests;
