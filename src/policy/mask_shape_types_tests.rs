//! Unit tests of [`super`]: statements reaching user code through types, casts and query-running
//! built-ins, each refused naming what it reaches; plain statements allowed.

use std::collections::HashSet;

use super::*;
use crate::config::{MaskFilters, MaskRule};
use crate::masking::MaskMethod;
use crate::policy::mask_shape::{self, DependentView};

fn rules() -> Vec<MaskRule> {
    vec![MaskRule::customers_email(MaskMethod::Redact)]
}

/// A target with a domain whose CHECK calls a user function, a composite type with a cast to
/// `text` through a user function, a table with a column of it, and an explicit cast from
/// `int8` to `date` through a user function.
fn facts() -> TypeCode {
    let mut t = TypeCode::default();
    let public = |n: &str| ("public".to_string(), n.to_string());
    for n in ["text", "int4", "int8", "date", "regclass", "bool", "interval"] {
        t.add("type", "pg_catalog".into(), n.into(), None).unwrap();
    }
    for n in [
        "s5_dom",
        "_s5_dom",
        "s5_t",
        "_s5_t",
        "s5_holder",
        "plain_dom",
        "customers",
    ] {
        t.add("type", public(n).0, public(n).1, None).unwrap();
    }
    for n in ["s5_dom", "_s5_dom", "s5_t", "_s5_t", "s5_holder"] {
        t.add("code", public(n).0, public(n).1, None).unwrap();
    }
    t.add(
        "relation",
        "public".into(),
        "s5_holder".into(),
        Some("s5_holder".into()),
    )
    .unwrap();
    let cast = "bigint to date by s5_i8(bigint)".to_string();
    t.add("target", "pg_catalog".into(), "date".into(), Some(cast))
        .unwrap();
    assert_eq!(
        t.add("other", String::new(), String::new(), None),
        Err(UnknownFact)
    );
    t
}

fn run_with(sql: &str, types: Option<&TypeCode>) -> Result<Vec<String>, MaskDenial> {
    let (rules, views, known) = (rules(), Vec::<DependentView>::new(), HashSet::new());
    let scope = MaskScope {
        role: "support",
        columns: &rules,
        filters: MaskFilters::Allow,
        views: &views,
        known: Some(&known),
        types,
    };
    mask_shape::check(sql, &scope)
}

fn run(sql: &str) -> Result<Vec<String>, MaskDenial> {
    run_with(sql, Some(&facts()))
}

/// Regression (s5 attack, user code through casts and domains): every way a statement names a
/// type whose domain or cast runs user code, or reads a relation whose row type is one, or applies
/// a cast from a built-in type through a user function, is refused.
#[test]
fn types_casts_and_relations_reaching_user_code_are_refused() {
    for (sql, expect) in [
        ("SELECT 'x'::s5_dom", "type public.s5_dom runs user code"),
        ("SELECT NULL::public.s5_dom", "type public.s5_dom"),
        ("SELECT CAST('x' AS s5_dom)", "type public.s5_dom"),
        ("SELECT s5_dom 'x'", "type public.s5_dom"),
        ("SELECT '{x}'::s5_dom[]", "type public.s5_dom"),
        ("SELECT (ROW(1)::s5_t)::text", "type public.s5_t"),
        (
            "SELECT * FROM json_to_record('{\"a\":\"x\"}') AS r(a s5_dom)",
            "type public.s5_dom",
        ),
        (
            "SELECT jsonb_populate_record(NULL::s5_holder, '{}')",
            "type public.s5_holder",
        ),
        (
            "SELECT v::text FROM s5_holder",
            "relation public.s5_holder runs user code when read",
        ),
        (
            "SELECT upper(h.v) FROM public.s5_holder h",
            "relation public.s5_holder",
        ),
        (
            "SELECT id FROM customers WHERE id::int8::date > now()",
            "cast through a user function (bigint to date",
        ),
        (
            "SELECT CAST(id AS pg_catalog.date) FROM customers",
            "bigint to date",
        ),
        ("SELECT date(ssn) FROM customers", "date(…) here could run"),
        (
            "SELECT 'x'::no_such_type",
            "type no_such_type is not in timebox's copy",
        ),
        (
            "SELECT query_to_xml('select email from customers', true, false, '')",
            "query_to_xml runs a query text",
        ),
        (
            "SELECT * FROM pg_catalog.ts_stat('select to_tsvector(email) from customers')",
            "ts_stat",
        ),
        (
            "SELECT table_to_xml('customers', true, false, '')",
            "table_to_xml",
        ),
        ("SELECT cursor_to_xml('c', 10, false, false, '')", "cursor_to_xml"),
        ("SELECT schema_to_xml('public', true, false, '')", "schema_to_xml"),
        ("SELECT database_to_xml(true, false, '')", "database_to_xml"),
        ("SELECT ts_rewrite('a'::tsquery, 'select 1')", "ts_rewrite"),
        (
            "SELECT 1 WHERE EXISTS (SELECT query_to_xml('select 1', true, false, ''))",
            "query_to_xml",
        ),
    ] {
        let d = run(sql).expect_err(sql);
        assert!(d.reason.contains(expect), "{sql}: {}", d.reason);
        assert!(
            d.reason
                .contains("role \"support\" masks columns (such as public.customers.email)"),
            "{sql}: {}",
            d.reason
        );
    }
}

#[test]
fn plain_types_literals_and_user_schemas_functions_are_left_to_the_other_checks() {
    for sql in [
        "SELECT 'x'::text, 1::int4, '2024-01-01'::date, CAST('2024-01-01' AS date)",
        "SELECT 'x'::plain_dom",
        "SELECT date('2024-01-01')",
        "SELECT now() - interval '1 day'",
        "SELECT email FROM customers WHERE id = 1",
        "SELECT app.query_to_xml('x')",
    ] {
        assert!(run(sql).is_ok(), "{sql}: {:?}", run(sql));
    }
}

/// Without a copy of the target's types every type name is refused (fail closed); an implicit
/// cast through a user function between built-in types refuses every statement.
#[test]
fn without_type_facts_type_names_fail_closed_and_implicit_user_casts_refuse_everything() {
    let d = run_with("SELECT 'x'::text", None).unwrap_err();
    assert!(d.reason.contains("no copy of the target's types"), "{}", d.reason);
    assert!(run_with("SELECT 1", None).is_ok());
    let mut t = facts();
    t.add(
        "anywhere",
        "pg_catalog".into(),
        "text".into(),
        Some("integer to text by f(integer)".into()),
    )
    .unwrap();
    let d = run_with("SELECT 1", Some(&t)).unwrap_err();
    assert!(
        d.reason
            .contains("implicit or assignment cast through a user function (integer to text by f(integer))"),
        "{}",
        d.reason
    );
}

/// An operator between built-in types implemented by user code (`public.=(text, integer)`) runs
/// with the values it compares: every spelling of that operator name is refused, the implicit
/// ones (`IN`, `CASE x WHEN`, `USING`, `NATURAL`) included; other operators are not.
#[test]
fn user_operators_between_builtin_types_are_refused_in_every_spelling() {
    let mut t = facts();
    t.add(
        "operator",
        "public".into(),
        "=".into(),
        Some("=(text,integer)".into()),
    )
    .unwrap();
    t.add(
        "operator",
        "public".into(),
        ">=".into(),
        Some(">=(text,integer)".into()),
    )
    .unwrap();
    for sql in [
        "SELECT id FROM customers WHERE email = 1",
        "SELECT id FROM customers WHERE email IN (SELECT 'x')",
        "SELECT id FROM customers WHERE email IN ('x', 'y')",
        "SELECT id FROM customers WHERE email = ANY('{1}')",
        "SELECT id FROM customers WHERE email IS DISTINCT FROM 'x'",
        "SELECT NULLIF(id, 1) FROM customers",
        "SELECT CASE email WHEN 'x' THEN 1 END FROM customers",
        "SELECT 1 FROM customers JOIN orders USING (id)",
        "SELECT 1 FROM customers NATURAL JOIN orders",
        "SELECT id FROM customers WHERE id OPERATOR(public.=) 1",
        "SELECT id FROM customers WHERE email BETWEEN 'a' AND 'b'",
        "SELECT id FROM customers ORDER BY email USING >=",
    ] {
        let d = run_with(sql, Some(&t)).expect_err(sql);
        assert!(
            d.reason.contains("implemented by user code"),
            "{sql}: {}",
            d.reason
        );
    }
    for sql in [
        "SELECT id FROM customers WHERE id < 2",
        "SELECT CASE WHEN id < 2 THEN 1 END FROM customers",
        "SELECT 1 FROM customers JOIN orders ON customers.id < orders.id",
    ] {
        assert!(run_with(sql, Some(&t)).is_ok(), "{sql}");
    }
}

/// Regression (s10 open probe, s11): a domain or composite type whose definition changes while the
/// statement runs (`ALTER DOMAIN … ADD CHECK`, `ALTER TABLE` of a relation the statement only
/// names as a type) is checked against the new definition when a value is converted to it at run
/// time: naming one is refused; so are the built-ins that convert to a type given by name in a
/// string, and the populate family unless its first argument is a typed NULL (then named).
#[test]
fn types_whose_definition_can_change_mid_statement_are_refused() {
    let mut t = facts();
    for n in ["plain_dom", "_plain_dom", "customers", "_customers"] {
        t.add("mutable", "public".into(), n.into(), None).unwrap();
    }
    for (sql, expect) in [
        (
            "SELECT 'x'::plain_dom",
            "type public.plain_dom is a domain or composite type",
        ),
        ("SELECT '{x}'::_plain_dom", "type public._plain_dom is a domain"),
        ("SELECT '{x}'::plain_dom[]", "type public.plain_dom"),
        (
            "SELECT (json_populate_record(NULL::customers, '{\"x\":\"1\"}')).id",
            "type public.customers",
        ),
        (
            "SELECT * FROM jsonb_to_record('{\"a\":\"x\"}') AS r(a public.plain_dom)",
            "type public.plain_dom",
        ),
        ("SELECT CAST(NULL AS customers)", "type public.customers"),
        (
            "SELECT pg_input_is_valid('x', 'plain_dom')",
            "pg_input_is_valid runs the input function of a type given by name",
        ),
        (
            "SELECT pg_catalog.pg_input_error_info('x', 'int4')",
            "pg_input_error_info runs the input function",
        ),
        (
            "SELECT jsonb_populate_record(c, '{}') FROM customers c",
            "jsonb_populate_record(…) converts values to the type of its first argument",
        ),
        (
            "SELECT json_populate_recordset(ROW(1), '[]')",
            "json_populate_recordset(…) converts",
        ),
    ] {
        let d = run_with(sql, Some(&t)).expect_err(sql);
        assert!(d.reason.contains(expect), "{sql}: {}", d.reason);
    }
    for sql in [
        "SELECT 'x'::text, '{1}'::int4[], NULL::date",
        "SELECT jsonb_populate_record(NULL::pg_catalog.text, '{}')",
        "SELECT email FROM customers WHERE id = 1",
        "SELECT id FROM customers WHERE email LIKE '%x'",
    ] {
        assert!(
            run_with(sql, Some(&t)).is_ok(),
            "{sql}: {:?}",
            run_with(sql, Some(&t))
        );
    }
}
