//! Table-driven tests of classify + authorize (the tables are in [`cases`]). Every row is named for what it guards against;
//! the benign rows make a deny-everything policy fail the suite.

mod cases;

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

use cases::E::{Allow, Deny};
use cases::VERSION_CASES;
pub(crate) use cases::{CASES, CLASSES};

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
        quotas: Default::default(),
        masking: None,
    };
    let p = RolePolicy::from(&role);
    assert_eq!(p.allow, [Read, Write]);
    assert!(p.require_where && !p.allow_unparsed);
    assert_eq!(p.statement_timeout, Some(Duration::from_secs(30)));
}

#[test]
fn check_command_reports_each_statement_and_the_decision() {
    // Keys appended to MINIMAL belong to its last table, `[roles.read]`.
    let config = Config::from_toml_str(&format!(
        "{}statement_timeout = \"30s\"\ntables = {{ deny = [\"public.secrets\"] }}\n",
        crate::config::testing::MINIMAL
    ))
    .unwrap();
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

/// Issue 12: a startup `search_path` (or `PGOPTIONS -c search_path=…`) naming a system schema
/// other than `pg_catalog` would let unqualified names reach catalog relations not named `pg_*`;
/// it meets the rule a `SET` of it meets.
#[test]
fn startup_search_path_cannot_name_a_system_schema() {
    let write = role("write");
    // pg_catalog first too (attack review, session 4): unqualified CREATEs would go into it.
    for value in ["information_schema", "public, pg_toast", "pg_catalog, public"] {
        let Decision::Deny { reason, .. } =
            authorize::authorize_startup_setting(&write, "search_path", value)
        else {
            panic!("{value} allowed")
        };
        assert!(reason.contains("system schema"), "{reason}");
    }
    assert!(authorize::authorize_startup_setting(&write, "search_path", "\"$user\", public").is_allow());
    assert!(
        authorize::authorize_startup_setting(&role("admin"), "search_path", "information_schema").is_allow()
    );
}
