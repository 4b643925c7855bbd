//! Unit tests of [`super`]: a table of shapes, each allowed (masked on the wire or not carrying a
//! masked value) or denied with the column named.

use super::*;
use crate::masking::MaskMethod;

fn rules() -> Vec<MaskRule> {
    [
        ("customers", "email"),
        ("customers", "phone"),
        ("payments", "card"),
    ]
    .iter()
    .map(|(t, c)| MaskRule {
        schema: "public".into(),
        table: (*t).into(),
        column: (*c).into(),
        method: MaskMethod::Redact,
    })
    .collect()
}

fn views() -> Vec<DependentView> {
    vec![DependentView {
        schema: "public".into(),
        name: "customer_emails".into(),
        masked_column: "public.customers.email".into(),
        hidden_code: false,
    }]
}

/// Every relation the tests name, as the target's catalog lists them.
fn known() -> HashSet<(String, String)> {
    [
        "customers",
        "payments",
        "orders",
        "users",
        "archive",
        "customer_emails",
        "pg_stats",
        "t",
    ]
    .iter()
    .map(|t| ("public".to_string(), t.to_string()))
    .chain([("other".to_string(), "customers".to_string())])
    .collect()
}

/// The built-in types the tests name (as the target's catalog lists them).
fn types() -> TypeCode {
    let mut t = TypeCode::default();
    for name in ["text", "int4", "int8", "bytea", "date", "regclass", "numeric"] {
        t.add("type", "pg_catalog".into(), name.into(), None).unwrap();
    }
    t
}

fn run(sql: &str, filters: MaskFilters) -> Result<Vec<String>, MaskDenial> {
    let (rules, views, known, types) = (rules(), views(), known(), types());
    let scope = MaskScope {
        role: "support",
        columns: &rules,
        filters,
        views: &views,
        known: Some(&known),
        types: Some(&types),
    };
    check(sql, &scope)
}

/// Regression: a relation newer than the catalog copy (a masked table's new partition) or any
/// relation before the catalog was read counts as masked; CTE names do not.
#[test]
fn relations_the_catalog_copy_does_not_know_count_as_masked() {
    let d = run("SELECT lower(email) FROM customers_2027", MaskFilters::Allow).unwrap_err();
    assert!(d.reason.contains("public.customers.email"), "{}", d.reason);
    assert!(run("SELECT c FROM customers_2027 c", MaskFilters::Allow).is_err());
    assert!(run("COPY archive_2027 TO STDOUT", MaskFilters::Allow).is_err());
    assert!(
        run("SELECT * FROM customers_2027", MaskFilters::Allow).is_ok(),
        "masked on the wire"
    );
    assert!(run(
        "WITH x AS (SELECT id FROM orders) SELECT lower(x.id::text) FROM x",
        MaskFilters::Allow
    )
    .is_ok());
    let (rules, views) = (rules(), views());
    let scope = MaskScope {
        role: "support",
        columns: &rules,
        filters: MaskFilters::Allow,
        views: &views,
        known: None,
        types: None,
    };
    assert!(
        check("SELECT lower(email) FROM users", &scope).is_err(),
        "no catalog copy yet"
    );
    assert!(check("SELECT lower(name) FROM users", &scope).is_ok());
}

/// Shapes whose masked values reach the client only as direct columns (masked on the wire).
#[test]
fn direct_columns_stars_and_filters_are_allowed() {
    for sql in [
        "SELECT email FROM customers",
        "SELECT c.email, c.id FROM public.customers c",
        "SELECT public.customers.email FROM public.customers",
        "SELECT email AS e FROM customers ORDER BY 1",
        "SELECT * FROM customers",
        "SELECT c.* FROM customers c JOIN orders o ON o.customer_id = c.id",
        "TABLE customers",
        "SELECT DISTINCT email FROM customers",
        "SELECT id FROM customers WHERE email = 'a@b.org'",
        "SELECT id FROM customers WHERE email LIKE '%@example.com' AND phone IS NOT NULL",
        "SELECT id FROM customers WHERE email IN ('a', 'b') OR email BETWEEN 'a' AND 'b'",
        "SELECT id FROM customers ORDER BY email",
        "SELECT count(*) FROM customers GROUP BY email",
        "SELECT id FROM orders WHERE customer_id IN (SELECT id FROM customers WHERE email = 'x')",
        "SELECT id FROM orders o WHERE EXISTS (SELECT * FROM customers c WHERE c.id = o.customer_id)",
        "SELECT email FROM orders",
        "SELECT lower(email) FROM users",
        "DECLARE c CURSOR FOR SELECT email FROM customers",
        "PREPARE p AS SELECT email FROM customers WHERE id = $1",
        "EXPLAIN SELECT email FROM customers",
        "UPDATE customers SET email = 'x' WHERE id = 1",
        "DELETE FROM customers WHERE email = 'x'",
        "INSERT INTO customers (id, email) VALUES (1, 'x')",
        "COPY customers FROM STDIN",
        "SELECT 1",
        // Renamed, but still a direct column: RowDescription names its table and attribute.
        "SELECT e FROM customers AS c(i, e)",
    ] {
        assert!(
            run(sql, MaskFilters::Allow).is_ok(),
            "{sql}: {:?}",
            run(sql, MaskFilters::Allow)
        );
    }
}

/// Bypass attempts: every shape that could carry a masked value out unmasked, with the column
/// the denial names.
#[rustfmt::skip]
const BYPASSES: &[(&str, &str)] = &[
        ("SELECT lower(email) FROM customers", "public.customers.email"),
        ("SELECT email::bytea FROM customers", "public.customers.email"),
        ("SELECT email || '' FROM customers", "public.customers.email"),
        (
            "SELECT string_agg(email, ',') FROM customers",
            "public.customers.email",
        ),
        ("SELECT max(card) FROM payments", "public.payments.card"),
        (
            "SELECT coalesce(phone, '') FROM customers",
            "public.customers.phone",
        ),
        (
            "SELECT CASE WHEN true THEN email END FROM customers",
            "public.customers.email",
        ),
        ("SELECT row_to_json(c) FROM customers c", "public.customers."),
        ("SELECT c::text FROM customers c", "public.customers."),
        ("SELECT to_jsonb(c.*) FROM customers c", "public.customers."),
        ("SELECT c FROM customers c", "public.customers."),
        ("SELECT customers FROM customers", "public.customers."),
        ("SELECT (c).* FROM customers c", "public.customers."),
        ("SELECT email(c) FROM customers c", "public.customers."),
        ("SELECT ROW(email) FROM customers", "public.customers.email"),
        (
            "SELECT email FROM customers UNION SELECT 'x'",
            "public.customers.email",
        ),
        (
            "SELECT 'x' UNION ALL SELECT email FROM customers",
            "public.customers.email",
        ),
        (
            "SELECT * FROM (SELECT email FROM customers) s",
            "public.customers.email",
        ),
        (
            "SELECT s.e FROM (SELECT email AS e FROM customers) s",
            "public.customers.email",
        ),
        (
            "WITH x AS (SELECT email FROM customers) SELECT * FROM x",
            "public.customers.email",
        ),
        (
            "WITH x AS (SELECT * FROM customers) SELECT * FROM x",
            "public.customers.",
        ),
        (
            "SELECT (SELECT email FROM customers LIMIT 1)",
            "public.customers.email",
        ),
        (
            "SELECT ARRAY(SELECT email FROM customers)",
            "public.customers.email",
        ),
        (
            "SELECT x FROM customers c, LATERAL (SELECT c.email) AS l(x)",
            "public.customers.email",
        ),
        (
            "SELECT * FROM customers c, unnest(ARRAY[c.email])",
            "public.customers.email",
        ),
        ("SELECT lower(e) FROM customers AS c(i, e)", "public.customers."),
        (
            "SELECT j FROM (customers JOIN orders ON true) AS j",
            "public.customers.",
        ),
        (
            "SELECT * FROM customers a FULL JOIN customers b USING (email)",
            "public.customers.email",
        ),
        ("SELECT * FROM customers NATURAL JOIN orders", "public.customers."),
        ("SELECT * FROM customer_emails", "public.customers.email"),
        ("SELECT * FROM public.customer_emails", "public.customers.email"),
        (
            "SELECT most_common_vals FROM pg_stats WHERE tablename = 'customers'",
            "public.customers.email",
        ),
        ("COPY customers TO STDOUT", "public.customers."),
        ("COPY (SELECT id FROM customers) TO STDOUT", "public.customers."),
        (
            "INSERT INTO archive SELECT email FROM customers",
            "public.customers.email",
        ),
        ("INSERT INTO archive SELECT * FROM customers", "public.customers."),
        (
            "CREATE TABLE t AS SELECT email FROM customers",
            "public.customers.email",
        ),
        ("SELECT email INTO t FROM customers", "public.customers.email"),
        // s8 re-attack: the prepared statement's text is not in this one.
        ("CREATE TABLE t AS EXECUTE p", "public.customers."),
        ("EXPLAIN ANALYZE CREATE TABLE t AS EXECUTE p (1)", "public.customers."),
        (
            "CREATE VIEW v AS SELECT email FROM customers",
            "public.customers.email",
        ),
        (
            "UPDATE orders SET note = c.email FROM customers c",
            "public.customers.email",
        ),
        (
            "UPDATE customers SET phone = email WHERE id = 1",
            "public.customers.email",
        ),
        (
            "INSERT INTO customers (id) VALUES (1) RETURNING email",
            "public.customers.email",
        ),
        (
            "DELETE FROM customers WHERE id = 1 RETURNING *",
            "public.customers.",
        ),
        (
            "DECLARE c CURSOR FOR SELECT lower(email) FROM customers",
            "public.customers.email",
        ),
        (
            "EXPLAIN ANALYZE SELECT lower(email) FROM customers",
            "public.customers.email",
        ),
        (
            "SELECT id FROM customers WHERE email::int = 1",
            "public.customers.email",
        ),
        (
            "SELECT id FROM customers WHERE lower(email) = 'x'",
            "public.customers.email",
        ),
        (
            "SELECT id FROM customers ORDER BY lower(email)",
            "public.customers.email",
        ),
        (
            "SELECT id FROM customers WHERE (SELECT 1) = 1; SELECT lower(phone) FROM customers",
            "public.customers.phone",
        ),
];

#[test]
fn every_other_shape_is_denied_naming_the_column() {
    for (sql, column) in BYPASSES {
        match run(sql, MaskFilters::Allow) {
            Ok(_) => panic!("{sql} must be denied"),
            Err(d) => {
                assert!(d.reason.contains(column), "{sql}: {}", d.reason);
                assert!(d.reason.contains("role \"support\""), "{sql}: {}", d.reason);
            }
        }
    }
}

#[test]
fn code_timebox_cannot_see_is_denied_to_masked_roles() {
    for sql in [
        "DO $$ BEGIN RAISE NOTICE '%', (SELECT email FROM customers LIMIT 1); END $$",
        "CREATE FUNCTION f() RETURNS text LANGUAGE sql AS 'SELECT email FROM customers'",
        "CALL p()",
        "CREATE RULE r AS ON INSERT TO t DO ALSO NOTIFY c",
    ] {
        let d = run(sql, MaskFilters::Allow).expect_err(sql);
        assert!(
            d.reason.contains("runs code timebox cannot check"),
            "{sql}: {}",
            d.reason
        );
    }
    let (rules, views) = (rules(), views());
    let scope = MaskScope {
        role: "support",
        columns: &rules,
        filters: MaskFilters::Allow,
        views: &views,
        known: None,
        types: None,
    };
    let d = check_functions(&["public.leak".to_string()], &scope).unwrap_err();
    assert!(d.reason.contains("public.leak is not a built-in"), "{}", d.reason);
    assert!(check_functions(&[], &scope).is_ok());
}

#[test]
fn mask_filters_deny_forbids_filtering_sorting_and_grouping() {
    for sql in [
        "SELECT id FROM customers WHERE email = 'a@b.org'",
        "SELECT id FROM customers ORDER BY email",
        "SELECT count(*) FROM customers GROUP BY phone",
        "SELECT id FROM orders o JOIN customers c ON c.email = o.email",
        "SELECT id FROM orders WHERE customer_id IN (SELECT id FROM customers WHERE email = 'x')",
    ] {
        let d = run(sql, MaskFilters::Deny).expect_err(sql);
        assert!(
            d.reason.contains("mask_filters = \"deny\""),
            "{sql}: {}",
            d.reason
        );
    }
    assert!(run("SELECT email FROM customers WHERE id = 1", MaskFilters::Deny).is_ok());
}

#[test]
fn the_standard_message_names_column_role_and_shapes() {
    let d = run("SELECT lower(email) FROM customers", MaskFilters::Allow).unwrap_err();
    assert_eq!(
        d.reason,
        "column public.customers.email is masked for role \"support\"; it can be selected only as a plain column (not in an expression, function, whole-row value, set operation, subquery, CTE, view, COPY or RETURNING)"
    );
    let touched = run(
        "SELECT email FROM customers WHERE phone = 'x'",
        MaskFilters::Allow,
    )
    .unwrap();
    assert!(touched.contains(&"public.customers.email".to_string()));
    assert!(
        run("SELEC 1", MaskFilters::Allow).is_err(),
        "unparseable text fails closed"
    );
}

/// Regression (s5 attack): a join alias's column list renames the join's columns; every name it
/// gives over a masked table (at any depth) counts as masked. Other FROM items with column lists
/// (subqueries, LATERAL, functions, `ROWS FROM`, VALUES, CTEs) cannot carry a masked value in.
#[test]
fn join_alias_column_lists_count_as_masked_columns() {
    for sql in [
        "SELECT j.e || '' FROM (customers CROSS JOIN (SELECT 1) z) AS j(i, n, e)",
        "SELECT upper(j.e) FROM (customers JOIN (SELECT 1 AS k) z ON true) AS j(i, n, e)",
        "SELECT e || '', p || '' FROM (customers CROSS JOIN (SELECT 1) z) AS j(i, n, e, p)",
        "SELECT x.e2 || '' FROM (customers c JOIN customers d USING (id)) AS x(i, n, e, p, n2, e2)",
        "SELECT k.c || '' FROM ((customers CROSS JOIN orders) AS j(i, n, e) CROSS JOIN users) AS k(a, b, c)",
        "SELECT k.c || '' FROM (orders CROSS JOIN (customers CROSS JOIN users)) AS k(a, b, c)",
        "SELECT k.c || '' FROM (orders o CROSS JOIN (customers AS c(x, y) CROSS JOIN users)) AS k(a, b, c)",
        "SELECT upper(j.e) FROM (customers_2027 CROSS JOIN orders) AS j(i, n, e)",
        "SELECT (SELECT upper(j.e) FROM (customers CROSS JOIN orders) AS j(i, n, e) LIMIT 1)",
        "WITH w AS (SELECT 1) SELECT upper(j.e) FROM (customers CROSS JOIN w) AS j(i, n, e)",
        "SELECT j.i FROM (customers CROSS JOIN orders) AS j(i, n, e) WHERE lower(j.e) = 'x'",
        "UPDATE orders SET note = j.e FROM (customers c CROSS JOIN users u) AS j(i, n, e) WHERE orders.id = j.i",
        "INSERT INTO archive SELECT j.e FROM (customers CROSS JOIN orders) AS j(i, n, e)",
        "SELECT j FROM (customers CROSS JOIN orders) AS j(i, n, e)",
        // Subqueries, LATERAL, functions, ROWS FROM, VALUES and CTEs with column lists.
        "SELECT a FROM (SELECT email FROM customers) AS s(a)",
        "SELECT s.a FROM (SELECT * FROM customers) AS s(a, b, c)",
        "SELECT l.x FROM customers c, LATERAL (SELECT c.email) AS l(x)",
        "SELECT u.x FROM customers c, unnest(ARRAY[c.email]) AS u(x)",
        "SELECT u.x FROM customers c, ROWS FROM (unnest(ARRAY[c.phone]), generate_series(1, 2)) AS u(x, y)",
        "SELECT v.a FROM customers c, LATERAL (VALUES (c.email)) AS v(a)",
        "WITH w(a) AS (SELECT email FROM customers) SELECT a FROM w",
        "WITH w(a) AS (SELECT c FROM customers c) SELECT a FROM w",
    ] {
        let d = run(sql, MaskFilters::Allow).expect_err(sql);
        assert!(d.reason.contains("public.customers."), "{sql}: {}", d.reason);
        assert!(d.reason.contains("role \"support\""), "{sql}: {}", d.reason);
    }
    let d = run(
        "SELECT j.e || '' FROM (payments CROSS JOIN orders) AS j(i, e)",
        MaskFilters::Allow,
    )
    .unwrap_err();
    assert!(
        d.reason
            .starts_with("column public.payments.card is masked for role \"support\""),
        "{}",
        d.reason
    );
    // With mask_filters = "deny", even a plain comparison on a renamed name is denied.
    let sql = "SELECT j.i FROM (customers CROSS JOIN orders) AS j(i, n, e) WHERE j.e = 'x'";
    assert!(run(sql, MaskFilters::Allow).is_ok());
    assert!(run(sql, MaskFilters::Deny).is_err());
    for sql in [
        // A renamed column selected directly is masked on the wire (RowDescription names it).
        "SELECT j.e, i FROM (customers CROSS JOIN orders) AS j(i, n, e) ORDER BY e",
        // Join alias column lists over tables without masks, beside a masked table.
        "SELECT upper(j.a) FROM (orders CROSS JOIN users) AS j(a, b)",
        "SELECT upper(j.a), c.email FROM (orders CROSS JOIN users) AS j(a, b), customers c",
        "SELECT s.a || '' FROM (SELECT name FROM customers) AS s(a)",
        "SELECT u.x || '' FROM unnest(ARRAY['a']) AS u(x)",
    ] {
        assert!(
            run(sql, MaskFilters::Allow).is_ok(),
            "{sql}: {:?}",
            run(sql, MaskFilters::Allow)
        );
    }
}
