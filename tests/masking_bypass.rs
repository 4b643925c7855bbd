//! Column masking (issue 15 item 2): the bypass table of code a masked role reaches without naming
//! a masked column — views over built-ins that run a query text or read a relation by name, and
//! user code reached through a type (casts, domains, operators) — each refused with 42501 before it
//! runs, its message naming what it reaches and never a value; against a real PostgreSQL through
//! the real proxy. (The s5 attack review's two open reproductions, closed in s6.)

mod common;

use common::cluster::READ_USER;
use common::masking::{accomplice, across_a_lock, admin_psql, outcome, session, start_with, CLEAR};
use common::TestInstance;

/// Objects an administrator created on the target, each leading to the masked table's values
/// through code no catalog dependency shows: views over query-running built-ins; a domain whose
/// CHECK raises every e-mail, a composite type with a cast to `text` through a function returning
/// them (explicit, and an implicit one), an explicit cast `int8 → date` through a function raising
/// them, an operator of a domain type raising them, tables with columns of those types, views over
/// them, and a function whose default calls one.
const SETUP: &str = "
CREATE FUNCTION public.s5_raise() RETURNS text LANGUAGE plpgsql STABLE AS $f$
    BEGIN RAISE EXCEPTION 'got %', (SELECT string_agg(email || ' ' || card || ' ' || ssn, ',') FROM public.customers); END $f$;
CREATE FUNCTION public.s5_emails() RETURNS text LANGUAGE sql STABLE AS
    'SELECT string_agg(email || '' '' || card || '' '' || ssn, '','') FROM public.customers';
CREATE VIEW public.s5_v_qx AS SELECT pg_catalog.query_to_xml('select email, card, ssn from public.customers', true, false, '') AS x;
CREATE VIEW public.s5_v_qx_over AS SELECT x FROM public.s5_v_qx;
CREATE MATERIALIZED VIEW public.s5_mv_qx AS SELECT pg_catalog.query_to_xml('select email, card, ssn from public.customers', true, false, '') AS x;
CREATE VIEW public.s5_v_ts AS SELECT * FROM pg_catalog.ts_stat('select pg_catalog.to_tsvector(''simple'', email) from public.customers');
CREATE VIEW public.s5_v_tx AS SELECT pg_catalog.table_to_xml('public.customers', true, false, '') AS x;
CREATE VIEW public.s5_v_sx AS SELECT pg_catalog.schema_to_xml('public', true, false, '') AS x;
CREATE VIEW public.s5_v_qxs AS SELECT pg_catalog.query_to_xml_and_xmlschema('select email from public.customers', true, false, '') AS x;
CREATE FUNCTION public.s5_chk(text) RETURNS bool LANGUAGE plpgsql AS $f$ BEGIN PERFORM public.s5_raise(); RETURN true; END $f$;
CREATE DOMAIN public.s5_dom AS text CHECK (public.s5_chk(VALUE));
CREATE DOMAIN public.s5_dom_over AS public.s5_dom;
CREATE TYPE public.s5_comp AS (d public.s5_dom);
CREATE TABLE public.s5_dom_holder (id int, d public.s5_dom);
CREATE VIEW public.s5_v_dom AS SELECT 'x'::public.s5_dom AS d;
CREATE VIEW public.s5_v_dom_col AS SELECT d FROM public.s5_dom_holder;
CREATE VIEW public.s5_v_dom_filter AS SELECT id FROM public.s5_dom_holder WHERE d = 'x'::public.s5_dom;
CREATE TYPE public.s5_t AS (a int);
CREATE FUNCTION public.s5_tcast(public.s5_t) RETURNS text LANGUAGE sql STABLE AS 'SELECT public.s5_emails()';
CREATE CAST (public.s5_t AS text) WITH FUNCTION public.s5_tcast(public.s5_t);
CREATE TYPE public.s5_ti AS (a int);
CREATE FUNCTION public.s5_ticast(public.s5_ti) RETURNS text LANGUAGE sql STABLE AS 'SELECT public.s5_emails()';
CREATE CAST (public.s5_ti AS text) WITH FUNCTION public.s5_ticast(public.s5_ti) AS IMPLICIT;
CREATE TABLE public.s5_cast_holder (id int, v public.s5_t, vi public.s5_ti);
INSERT INTO public.s5_cast_holder VALUES (1, ROW(1), ROW(1));
CREATE VIEW public.s5_v_cast AS SELECT (ROW(1)::public.s5_t)::text AS d;
CREATE VIEW public.s5_v_cast_over AS SELECT d FROM public.s5_v_cast;
CREATE VIEW public.s5_v_id AS SELECT id FROM public.s5_cast_holder;
CREATE FUNCTION public.s5_i8(int8) RETURNS date LANGUAGE plpgsql STABLE AS $f$ BEGIN PERFORM public.s5_raise(); RETURN NULL; END $f$;
CREATE CAST (int8 AS date) WITH FUNCTION public.s5_i8(int8);
CREATE DOMAIN public.s5_opdom AS text;
CREATE FUNCTION public.s5_opeq(public.s5_opdom, text) RETURNS bool LANGUAGE plpgsql STABLE AS $f$ BEGIN PERFORM public.s5_raise(); RETURN true; END $f$;
CREATE OPERATOR public.= (LEFTARG = public.s5_opdom, RIGHTARG = text, FUNCTION = public.s5_opeq);
CREATE TABLE public.s5_op_holder (id int, v public.s5_opdom);
INSERT INTO public.s5_op_holder VALUES (1, 'x');
CREATE FUNCTION public.s5_le(text, int) RETURNS bool LANGUAGE plpgsql STABLE AS $f$ BEGIN PERFORM public.s5_raise(); RETURN true; END $f$;
CREATE OPERATOR public.<= (LEFTARG = text, RIGHTARG = int, FUNCTION = public.s5_le);
CREATE TABLE public.s5_rls (id int, note text);
INSERT INTO public.s5_rls VALUES (1, 'x');
ALTER TABLE public.s5_rls ENABLE ROW LEVEL SECURITY;
CREATE POLICY s5_policy ON public.s5_rls USING (public.s5_chk(note));
CREATE FUNCTION public.s5_defaults(a text DEFAULT public.s5_emails()) RETURNS text LANGUAGE sql STABLE AS 'SELECT a';
GRANT SELECT ON ALL TABLES IN SCHEMA public TO timebox_read;
";

/// Role `support_admin`: masks like `support` but may run admin-class statements, so a direct
/// call of a query-running built-in passes the role's classes and must meet the masking check.
fn admin_role() -> String {
    use common::cluster::{READ_PASSWORD, READ_USER};
    format!(
        r#"
[roles.support_admin]
allow = ["read", "admin"]
max_ttl = "1h"
mask = {{ "public.customers.email" = "email", "public.customers.card" = "redact", "public.customers.ssn" = "hash" }}
[targets.shop.credentials.support_admin]
user = "{READ_USER}"
password = "{READ_PASSWORD}"
"#
    )
}

async fn start() -> TestInstance {
    assert_eq!(READ_USER, "timebox_read", "SETUP grants to timebox_read");
    start_with(SETUP, &admin_role()).await
}

/// Runs each statement of `table` in `client`'s session: each must be refused with 42501, its
/// message containing the expected text, and no clear value anywhere in the answer.
async fn assert_refused(client: &tokio_postgres::Client, role: &str, table: &[(&str, &str)]) {
    let mut failures = Vec::new();
    for (sql, expect) in table {
        let out = outcome(client, sql).await;
        let leaked: Vec<&str> = CLEAR.iter().copied().filter(|c| out.contains(c)).collect();
        let refused = out.starts_with("ERR 42501 ") && out.contains(expect);
        if !leaked.is_empty() || !refused {
            failures.push(format!("{role}: {sql}\n    => {out}\n    leaked {leaked:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

const HIDDEN: &str = "runs code timebox cannot check for masked columns";

/// Regression (s5 attack, open leak 1): a view or materialized view calling a built-in that runs a
/// query text or reads a relation, schema or database by name has no `pg_depend` edge on the
/// masked table (and built-ins leave none at all), so it was read as a plain relation and returned
/// the masked values in clear. Such views (and views over them) are hidden code for masked roles
/// now; direct calls of those built-ins are refused too, whatever the role's classes allow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_over_query_running_builtins_are_refused_as_hidden_code() {
    let _catalog = common::masking::catalog_lock().write().await;
    let inst = start().await;
    let support = session(&inst, "support").await;
    let views = [
        ("SELECT * FROM s5_v_qx", "relation public.s5_v_qx runs code"),
        (
            "SELECT x FROM public.s5_v_qx_over",
            "relation public.s5_v_qx_over runs code",
        ),
        ("SELECT * FROM s5_mv_qx", "relation public.s5_mv_qx runs code"),
        ("SELECT word FROM s5_v_ts", "relation public.s5_v_ts runs code"),
        ("SELECT * FROM s5_v_tx", "relation public.s5_v_tx runs code"),
        ("SELECT * FROM s5_v_sx", "relation public.s5_v_sx runs code"),
        ("SELECT * FROM s5_v_qxs", "relation public.s5_v_qxs runs code"),
        ("SELECT count(*) FROM s5_v_qx", HIDDEN),
    ];
    assert_refused(&support, "support", &views).await;
    let direct = [
        ("SELECT query_to_xml('select email from customers', true, false, '')", "query_to_xml"),
        ("SELECT * FROM ts_stat('select to_tsvector(''simple'', email) from customers')", "ts_stat"),
        ("SELECT table_to_xml('customers', true, false, '')", "table_to_xml"),
        ("SELECT schema_to_xml('public', true, false, '')", "schema_to_xml"),
        ("SELECT database_to_xml(true, false, '')", "database_to_xml"),
        ("BEGIN; DECLARE c CURSOR FOR SELECT email FROM customers; SELECT cursor_to_xml('c', 10, false, false, '')", "cursor_to_xml"),
        ("SELECT ts_rewrite('a'::tsquery, 'select to_tsquery(email), to_tsquery(''b'') from customers')", "ts_rewrite"),
    ];
    // A read role: refused by its classes already.
    assert_refused(&support, "support", &direct).await;
    // A role whose classes allow them: refused by the masking check.
    let admin = session(&inst, "support_admin").await;
    let by_masking: Vec<(&str, &str)> = direct
        .iter()
        .map(|(sql, _)| {
            (
                *sql,
                "runs a query text or reads a relation, schema or database by name",
            )
        })
        .collect();
    assert_refused(&admin, "support_admin", &by_masking).await;
    assert_refused(&admin, "support_admin", &views).await;
    // The session goes on, and the table itself is masked.
    let out = outcome(&support, "SELECT email FROM customers WHERE id = 1").await;
    assert_eq!(out, "OK Some(\"***@example.com\")");
}

/// Regression (s5 attack, open leak 2): user code reached through a type rather than a call — a
/// cast through a user function (explicit, implicit, function-style), a domain whose CHECK calls
/// one, an operator of a domain type — ran with a masked role's values and returned or raised the
/// masked table's values. Every shape is refused now: type names whose casts, domains or operators
/// run user code (and the types built from them), relations with a column of such a type, casts
/// from a built-in type through a user function, views depending on any of these, and type names
/// the catalog copy does not know.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_code_through_casts_domains_and_operators_is_refused() {
    let _catalog = common::masking::catalog_lock().write().await;
    let inst = start().await;
    let support = session(&inst, "support").await;
    let runs_user_code = "runs user code";
    let row_type = "runs user code when read (its row type";
    let table = [
        // Casts through a user function.
        ("SELECT (ROW(1)::s5_t)::text", runs_user_code),
        ("SELECT CAST(ROW(1)::public.s5_t AS text)", runs_user_code),
        ("SELECT v::text FROM s5_cast_holder", row_type),
        ("SELECT upper(vi) FROM s5_cast_holder", row_type),
        ("SELECT id FROM s5_cast_holder WHERE vi LIKE '%'", row_type),
        (
            "SELECT (1::int8)::date",
            "cast through a user function (bigint to date",
        ),
        ("SELECT CAST(id::int8 AS date) FROM customers", "bigint to date"),
        ("SELECT date(id::int8) FROM customers", "bigint to date"),
        ("SELECT * FROM s5_v_cast", HIDDEN),
        ("SELECT d FROM s5_v_cast_over", HIDDEN),
        // Domains whose CHECK calls a user function, and types built from them.
        ("SELECT NULL::s5_dom", runs_user_code),
        ("SELECT 'x'::s5_dom", runs_user_code),
        ("SELECT s5_dom 'x'", runs_user_code),
        ("SELECT 'x'::s5_dom_over", runs_user_code),
        ("SELECT '{x}'::s5_dom[]", runs_user_code),
        ("SELECT ROW('x')::s5_comp", runs_user_code),
        (
            "SELECT jsonb_populate_record(NULL::s5_comp, '{\"d\": \"x\"}')",
            runs_user_code,
        ),
        (
            "SELECT * FROM json_to_record('{\"a\": \"x\"}') AS r(a s5_dom)",
            runs_user_code,
        ),
        ("SELECT coalesce(d, 'x') FROM s5_dom_holder", row_type),
        (
            "SELECT * FROM s5_v_dom",
            "relation public.s5_v_dom runs user code when read",
        ),
        ("SELECT * FROM s5_v_dom_col", row_type),
        // s11: refused first as a view converting values to a user domain ("… runs user code
        // when read"); before, as hidden code ("… runs code timebox cannot check …").
        (
            "SELECT id FROM s5_v_dom_filter",
            "relation public.s5_v_dom_filter runs user code when read (its rule converts values to domain s5_dom",
        ),
        // An operator of a domain type through a user function.
        ("SELECT id FROM s5_op_holder WHERE v = 'x'", row_type),
        ("SELECT 'x'::s5_opdom = 'y'", runs_user_code),
        // An operator between built-in types through a user function, in any spelling.
        (
            "SELECT id FROM customers WHERE email <= 1",
            "operator <=(text,integer) implemented by user code",
        ),
        (
            "SELECT id FROM customers WHERE email BETWEEN 'a' AND 2",
            "<=(text,integer)",
        ),
        (
            "SELECT id FROM customers WHERE email OPERATOR(public.<=) 1",
            "operator public.<=",
        ),
        // A row security policy calling a user function runs on every row read.
        (
            "SELECT id FROM s5_rls",
            "relation public.s5_rls runs user code when read (its row security policy s5_policy",
        ),
        // Calls of user functions (a default running one included).
        ("SELECT s5_tcast(ROW(1)::s5_t)", ""),
        ("SELECT s5_defaults()", ""),
        // Objects of its own: a masked read role may not create any.
        ("CREATE TEMP TABLE s5_mine (d s5_dom)", ""),
        ("CREATE TEMP VIEW s5_mine_v AS SELECT 1", ""),
        ("CREATE CAST (int4 AS date) WITH FUNCTION s5_i8(int8)", ""),
    ];
    assert_refused(&support, "support", &table).await;
    // A view over a table with such a column that reads none of them is plain.
    let out = outcome(&support, "SELECT id FROM s5_v_id").await;
    assert_eq!(out, "OK Some(\"1\")");
    // A domain created after timebox read the catalog: the next statement finds the catalog
    // changed and reads it again first (s6), so it is refused for what it runs.
    let late = common::cluster::unique_name("s5_late");
    let create = format!("CREATE DOMAIN public.{late} AS text CHECK (public.s5_chk(VALUE))");
    tokio::task::spawn_blocking(move || common::cluster::shop_psql(&create))
        .await
        .unwrap();
    let sql = format!("SELECT 'x'::{late}");
    assert_refused(
        &support,
        "support",
        &[(&sql, &format!("type public.{late} {runs_user_code}"))],
    )
    .await;
}

/// Regression (s6 attack, objects created or changed after the snapshot): an administrator,
/// outside timebox, replaced a harmless view by one calling `query_to_xml` over the masked table,
/// created an operator `~*` (text, int) and a cast `int4 → time` through functions raising every
/// value, and a row security policy calling one on a table the snapshot knew — and nothing made
/// timebox read the catalog again: each returned or raised the masked values in clear. Now each
/// statement of a masked role first confirms the snapshot against a fingerprint of the catalog
/// and reads it again when it changed, so each is refused (42501) as if it had been there all
/// along — a statement prepared before the view was replaced included (s8: its Bind is refused, its
/// text checked again against the new copy).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_created_or_replaced_after_the_snapshot_are_seen_at_the_next_statement() {
    let _catalog = common::masking::catalog_lock().write().await;
    let inst = start().await;
    let support = session(&inst, "support").await;
    let view = common::cluster::unique_name("s6_plain");
    let rls = common::cluster::unique_name("s6_rls_late");
    admin_psql(format!(
        "CREATE VIEW public.{view} AS SELECT 'x'::text AS x;
         CREATE TABLE public.{rls} (id int, note text); INSERT INTO public.{rls} VALUES (1, 'x');
         GRANT SELECT ON public.{view}, public.{rls} TO {READ_USER};"
    ))
    .await;
    // Until timebox's snapshot knows both (and finds them harmless).
    let plain = format!("SELECT * FROM {view}");
    let known = common::eventually(std::time::Duration::from_secs(30), || {
        let (support, plain) = (&support, plain.clone());
        async move { outcome(support, &plain).await == "OK Some(\"x\")" }
    })
    .await;
    assert!(known, "the view is read as plain");
    assert_eq!(
        outcome(&support, &format!("SELECT id FROM {rls}")).await,
        "OK Some(\"1\")"
    );
    let prepared = support.prepare(&format!("SELECT x FROM {view}")).await.unwrap();
    admin_psql(format!(
        "CREATE OR REPLACE FUNCTION public.s6_i4(int) RETURNS time LANGUAGE plpgsql STABLE AS
             $f$ BEGIN PERFORM public.s5_raise(); RETURN NULL; END $f$;
         CREATE OPERATOR public.~* (LEFTARG = text, RIGHTARG = int, FUNCTION = public.s5_le);
         CREATE CAST (int4 AS time) WITH FUNCTION public.s6_i4(int);
         ALTER TABLE public.{rls} ENABLE ROW LEVEL SECURITY;
         CREATE POLICY s6_pol ON public.{rls} USING (public.s5_chk(note));
         CREATE OR REPLACE VIEW public.{view} AS SELECT pg_catalog.query_to_xml(
             'select email, card, ssn from public.customers', true, false, '')::text AS x;"
    ))
    .await;
    let replaced = format!("SELECT * FROM {view}");
    let policy = format!("SELECT id FROM {rls}");
    let table = [
        (
            "SELECT id FROM customers WHERE email ~* 1",
            "operator ~*(text,integer) implemented by user code",
        ),
        (
            "SELECT id FROM customers WHERE NOT email ~* 2",
            "~*(text,integer)",
        ),
        ("SELECT id::time FROM customers", "integer to time"),
        ("SELECT 1::time", "integer to time"),
        (&policy, "row security policy s6_pol"),
        (&replaced, "runs code"),
    ];
    assert_refused(&support, "support", &table).await;
    let e = support
        .query(&prepared, &[])
        .await
        .expect_err("the prepared statement's rows over the replaced view");
    let db = e.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "42501", "{db:?}");
    // s8: its text is checked again against the new copy when it is bound (s6: its rows were
    // refused, "read the target's catalog again").
    assert!(
        db.message()
            .contains(&format!("relation public.{view} runs code")),
        "{db:?}"
    );
    assert!(!CLEAR.iter().any(|c| format!("{db:?}").contains(c)), "{db:?}");
    admin_psql(format!(
        "DROP OPERATOR public.~* (text, int); DROP CAST (int4 AS time); DROP TABLE public.{rls};
         DROP VIEW public.{view}; DROP FUNCTION public.s6_i4(int);"
    ))
    .await;
}

/// Regression (s6): timebox's catalog connection closed by the server (here terminated; an idle
/// timeout or a restart alike) must not refuse the masked role's next statement: the check opens
/// another connection and confirms the snapshot on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_catalog_connection_is_replaced_for_the_next_statement() {
    let _catalog = common::masking::catalog_lock().write().await;
    let inst = start().await;
    let support = session(&inst, "support").await;
    let masked = "SELECT email FROM customers WHERE id = 1";
    assert_eq!(outcome(&support, masked).await, "OK Some(\"***@example.com\")");
    admin_psql(
        "SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity
         WHERE application_name = 'timebox:catalog'"
            .to_owned(),
    )
    .await;
    assert_eq!(outcome(&support, masked).await, "OK Some(\"***@example.com\")");
}

// ---- s7 attack review: the catalog side of masking ----

/// The value every s7 regression table holds in its masked column `secret`.
const S7_SECRET: &str = "s7-secret-value";

fn s7_leaked(out: &str) -> bool {
    let out = out.to_lowercase();
    out.contains(S7_SECRET) || CLEAR.iter().any(|c| out.contains(c))
}

/// Role `s7_secret`: masks column `secret` of each of `tables` (in `public`, made by the test).
fn secret_role(tables: &[&str]) -> String {
    use common::cluster::READ_PASSWORD;
    let mask: Vec<String> = tables
        .iter()
        .map(|t| format!("\"public.{t}.secret\" = \"redact\""))
        .collect();
    format!(
        "\n[roles.s7_secret]\nallow = [\"read\"]\nmax_ttl = \"1h\"\nmask = {{ {} }}\n\
         [targets.shop.credentials.s7_secret]\nuser = \"{READ_USER}\"\npassword = \"{READ_PASSWORD}\"\n",
        mask.join(", ")
    )
}

/// After `sql` ran on the target (as its superuser), an instance with [`secret_role`] of `tables`
/// and a session of it.
async fn start_secret(tables: &[&str], sql: String) -> (TestInstance, tokio_postgres::Client) {
    admin_psql(sql).await;
    let inst = start_with(SETUP, &(admin_role() + &secret_role(tables))).await;
    let client = session(&inst, "s7_secret").await;
    (inst, client)
}

/// The statements of `table` that were not refused with 42501 naming the expected text, or
/// whose answer holds a value (empty: all were).
async fn s7_not_refused(client: &tokio_postgres::Client, table: &[(String, String)]) -> Vec<String> {
    let mut failures = Vec::new();
    for (sql, expect) in table {
        let out = outcome(client, sql).await;
        if s7_leaked(&out) || !out.starts_with("ERR 42501 ") || !out.contains(expect.as_str()) {
            failures.push(format!("{sql}\n    => {out}"));
        }
    }
    failures
}

/// Regression (s7 attack): timebox's catalog queries left comparisons between different types
/// (the fingerprint's `oid >= 16384`, the snapshot's `oid = regclass`) to operator resolution,
/// where an operator a user created for exactly those types — in `public`, on the role's
/// search_path — is an exact match and wins over `pg_catalog`'s. With `public.>=(oid, integer)`
/// answering false, once timebox's catalog connection was opened again (after an idle timeout,
/// a restart, or as here a terminated backend) the fingerprint read the same whatever changed,
/// and a view replaced afterwards to read the masked column returned it in clear. The queries
/// name `pg_catalog`'s operators now. (Fails before: the replaced view's rows came back with the
/// value.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_operator_does_not_blind_the_catalog_fingerprint() {
    let _catalog = common::masking::catalog_lock().write().await;
    let (t, v, f) = (
        common::cluster::unique_name("s7_op_t"),
        common::cluster::unique_name("s7_op_v"),
        common::cluster::unique_name("s7_never_ge"),
    );
    let (inst, c) = start_secret(
        &[t.as_str()],
        format!(
            "CREATE TABLE public.{t} (id int, secret text); INSERT INTO public.{t} VALUES (1, '{S7_SECRET}');
             CREATE VIEW public.{v} AS SELECT 1::int AS id, 'x'::text AS secret;
             GRANT SELECT ON public.{t}, public.{v} TO {READ_USER};"
        ),
    )
    .await;
    let view = format!("SELECT * FROM {v}");
    assert_eq!(outcome(&c, &view).await, "OK Some(\"1\") Some(\"x\")");
    admin_psql(format!(
        "CREATE FUNCTION public.{f}(oid, int) RETURNS bool LANGUAGE sql IMMUTABLE AS 'SELECT false';
         CREATE OPERATOR public.>= (LEFTARG = oid, RIGHTARG = int4, FUNCTION = public.{f});
         SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity
             WHERE application_name = 'timebox:catalog';"
    ))
    .await;
    // A new catalog connection; the snapshot is read again (the operator is new).
    assert_eq!(outcome(&c, "SELECT 1").await, "OK Some(\"1\")");
    admin_psql(format!(
        "CREATE OR REPLACE VIEW public.{v} AS SELECT id, secret FROM public.{t};"
    ))
    .await;
    let out = outcome(&c, &view).await;
    admin_psql(format!(
        "DROP OPERATOR public.>= (oid, int4); DROP FUNCTION public.{f}(oid, int);
         DROP VIEW public.{v}; DROP TABLE public.{t};"
    ))
    .await;
    let _ = inst.shutdown().await;
    assert!(
        out.starts_with("ERR 42501 ") && out.contains("is a view over masked column") && !s7_leaked(&out),
        "{out}"
    );
}

/// The next transaction ID to be assigned.
async fn next_xid(c: &tokio_postgres::Client) -> i64 {
    common::pg::scalar(
        c,
        "SELECT pg_catalog.txid_snapshot_xmax(pg_catalog.txid_current_snapshot())",
    )
    .await
    .parse()
    .unwrap()
}

/// Runs `sql` in a transaction whose ID is exactly `xid` (burning IDs up to it); false when
/// another session took that ID first.
async fn in_xid(c: &tokio_postgres::Client, xid: i64, sql: &str) -> bool {
    while next_xid(c).await < xid {
        common::pg::scalar(c, "SELECT pg_catalog.txid_current()").await;
    }
    c.batch_execute("BEGIN").await.unwrap();
    let got: i64 = common::pg::scalar(c, "SELECT pg_catalog.txid_current()")
        .await
        .parse()
        .unwrap();
    if got != xid {
        c.batch_execute("ROLLBACK").await.unwrap();
        return false;
    }
    c.batch_execute(&format!("{sql}; COMMIT")).await.unwrap();
    true
}

/// Regression (s7 attack): the fingerprint was a count and a sum of `xmin`s per catalog, which a
/// change can keep equal. An accomplice holds a transaction (ID s) open, creates two harmless
/// views (IDs p, q), lets timebox read its snapshot, replaces view W in the old transaction (its
/// rows' xmin q → s) and view V in a transaction whose ID it chose by burning IDs, t = p + q − s
/// (p → t): every catalog's count and xmin sum stayed as they were, and W returned the masked
/// column in clear. The fingerprint is a digest of the xmins now. (Fails before: W's rows came
/// back with the value.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catalog_change_that_keeps_the_xmin_sum_is_seen() {
    let _catalog = common::masking::catalog_lock().write().await;
    let t = common::cluster::unique_name("s7_sum_t");
    let (inst, c) = start_secret(
        &[t.as_str()],
        format!(
            "CREATE TABLE public.{t} (id int, secret text); INSERT INTO public.{t} VALUES (1, '{S7_SECRET}');
             GRANT SELECT ON public.{t} TO {READ_USER};"
        ),
    )
    .await;
    let superuser =
        tokio::task::spawn_blocking(|| common::cluster::shared_cluster().superuser_conn_string("shop"))
            .await
            .unwrap();
    let mut answer = None;
    // Other tests of this binary use transaction IDs too: an attempt whose ID was taken is redone.
    for _ in 0..8 {
        let (v, w) = (
            common::cluster::unique_name("s7_sum_v"),
            common::cluster::unique_name("s7_sum_w"),
        );
        let a = common::pg::connect(&superuser).await;
        let b = common::pg::connect(&superuser).await;
        a.batch_execute("BEGIN").await.unwrap();
        let s: i64 = common::pg::scalar(&a, "SELECT pg_catalog.txid_current()")
            .await
            .parse()
            .unwrap();
        let mut created = Vec::new();
        for name in [&v, &w] {
            b.batch_execute(&format!(
                "BEGIN; CREATE VIEW public.{name} AS SELECT 1::int AS id, 'x'::text AS secret;
                 GRANT SELECT ON public.{name} TO {READ_USER}; COMMIT;"
            ))
            .await
            .unwrap();
            let xmin = common::pg::scalar(
                &b,
                &format!("SELECT xmin::text FROM pg_catalog.pg_class WHERE oid = 'public.{name}'::regclass"),
            )
            .await;
            created.push(xmin.parse::<i64>().unwrap());
        }
        let (p, q) = (created[0], created[1]);
        // timebox reads its snapshot: both views are plain.
        let plain = outcome(&c, &format!("SELECT * FROM {w}")).await;
        assert_eq!(plain, "OK Some(\"1\") Some(\"x\")");
        a.batch_execute(&format!(
            "CREATE OR REPLACE VIEW public.{w} AS SELECT id, secret FROM public.{t}; COMMIT"
        ))
        .await
        .unwrap();
        let chosen = in_xid(
            &b,
            p + q - s,
            &format!("CREATE OR REPLACE VIEW public.{v} AS SELECT 2::int AS id, 'y'::text AS secret"),
        )
        .await;
        let out = outcome(&c, &format!("SELECT * FROM {w}")).await;
        admin_psql(format!("DROP VIEW public.{v}, public.{w};")).await;
        if chosen {
            answer = Some(out);
            break;
        }
    }
    admin_psql(format!("DROP TABLE public.{t};")).await;
    let _ = inst.shutdown().await;
    let out = answer.expect("an attempt ran in the chosen transaction ID");
    assert!(
        out.starts_with("ERR 42501 ") && out.contains("is a view over masked column") && !s7_leaked(&out),
        "{out}"
    );
}

/// Regression (s7 attack): the snapshot followed inheritance down (children, partitions) but not
/// up, so a table a masked table inherits from — an accomplice's new parent, or the partitioned
/// table of a masked partition — returned the masked table's rows with the column unmasked, and
/// any expression over it. Parents count as masked tables now. (Fails before: both returned the
/// value.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_a_masked_table_inherits_from_are_masked_too() {
    let _catalog = common::masking::catalog_lock().write().await;
    let (kid, up, parted, part) = (
        common::cluster::unique_name("s7_kid"),
        common::cluster::unique_name("s7_up"),
        common::cluster::unique_name("s7_parted"),
        common::cluster::unique_name("s7_part"),
    );
    let (inst, c) = start_secret(
        &[kid.as_str(), part.as_str()],
        format!(
            "CREATE TABLE public.{kid} (id int, secret text); INSERT INTO public.{kid} VALUES (1, '{S7_SECRET}');
             CREATE TABLE public.{parted} (id int, secret text) PARTITION BY LIST (id);
             CREATE TABLE public.{part} PARTITION OF public.{parted} FOR VALUES IN (1);
             INSERT INTO public.{parted} VALUES (1, '{S7_SECRET}');
             GRANT SELECT ON public.{kid}, public.{parted}, public.{part} TO {READ_USER};"
        ),
    )
    .await;
    let masked = "OK Some(\"1\") Some(\"***\")";
    assert_eq!(outcome(&c, &format!("SELECT * FROM {part}")).await, masked);
    assert_eq!(outcome(&c, &format!("SELECT * FROM {parted}")).await, masked);
    admin_psql(format!(
        "CREATE TABLE public.{up} (id int, secret text); GRANT SELECT ON public.{up} TO {READ_USER};
         ALTER TABLE public.{kid} INHERIT public.{up};"
    ))
    .await;
    let through_parent = outcome(&c, &format!("SELECT * FROM {up}")).await;
    let refused = [
        (
            format!("SELECT upper(secret) FROM {parted}"),
            format!("column public.{parted}.secret is masked"),
        ),
        (
            format!("SELECT upper(secret) FROM {up}"),
            format!("column public.{up}.secret is masked"),
        ),
    ];
    let failures = s7_not_refused(&c, &refused).await;
    admin_psql(format!("DROP TABLE public.{kid}, public.{up}, public.{parted};")).await;
    let _ = inst.shutdown().await;
    assert_eq!(through_parent, masked);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Regression (s7 attack): a row security policy calling only built-ins was not hidden code to
/// the snapshot, and its error quoted the masked value in its message (only DETAIL is withheld):
/// `USING (secret::int > 0)` on the masked table, or a policy on another table reading it. A
/// relation whose policy reads a masked column (or a whole masked table) is refused now; one
/// whose policy does not stays readable. (Fails before: both errors quoted the value.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_security_policies_reading_a_masked_column_are_refused() {
    let _catalog = common::masking::catalog_lock().write().await;
    let (t, o, fine) = (
        common::cluster::unique_name("s7_rls_t"),
        common::cluster::unique_name("s7_rls_o"),
        common::cluster::unique_name("s7_rls_fine"),
    );
    let (inst, c) = start_secret(
        &[t.as_str()],
        format!(
            "CREATE TABLE public.{t} (id int, secret text); INSERT INTO public.{t} VALUES (1, '{S7_SECRET}');
             CREATE TABLE public.{o} (id int); INSERT INTO public.{o} VALUES (1);
             CREATE TABLE public.{fine} (id int); INSERT INTO public.{fine} VALUES (1);
             GRANT SELECT ON public.{t}, public.{o}, public.{fine} TO {READ_USER};
             ALTER TABLE public.{t} ENABLE ROW LEVEL SECURITY;
             CREATE POLICY s7_own ON public.{t} USING (secret::int > 0);
             ALTER TABLE public.{o} ENABLE ROW LEVEL SECURITY;
             CREATE POLICY s7_other ON public.{o}
                 USING (EXISTS (SELECT 1 FROM public.{t} p WHERE p.secret::int = id));
             ALTER TABLE public.{fine} ENABLE ROW LEVEL SECURITY;
             CREATE POLICY s7_fine ON public.{fine} USING (id > 0);"
        ),
    )
    .await;
    let fine_rows = outcome(&c, &format!("SELECT id FROM {fine}")).await;
    let refused = [
        (
            format!("SELECT id FROM {t}"),
            format!("relation public.{t} runs code"),
        ),
        (
            format!("SELECT id FROM {o}"),
            format!("relation public.{o} runs code"),
        ),
    ];
    let failures = s7_not_refused(&c, &refused).await;
    admin_psql(format!("DROP TABLE public.{o}, public.{t}, public.{fine};")).await;
    let _ = inst.shutdown().await;
    assert_eq!(fine_rows, "OK Some(\"1\")");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Regression (s7 attack): a view over `pg_stats` (and a view over that) was not a view over a
/// masked table, so it returned the statistics `pg_stats` itself is refused for — the histogram
/// bounds of the masked column, its values. And a view calling a function a superuser created in
/// `pg_catalog` (OID ≥ 16384) was not hidden code: it counted as a built-in. Both are hidden code
/// now. (Fails before: both views returned the values.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_over_statistics_or_user_code_in_pg_catalog_are_refused() {
    let _catalog = common::masking::catalog_lock().write().await;
    let (t, stats, over, f, calls) = (
        common::cluster::unique_name("s7_st_t"),
        common::cluster::unique_name("s7_st_v"),
        common::cluster::unique_name("s7_st_over"),
        common::cluster::unique_name("s7_catalog_fn"),
        common::cluster::unique_name("s7_calls"),
    );
    let (inst, c) = start_secret(
        &[t.as_str()],
        format!(
            "CREATE TABLE public.{t} (id int, secret text);
             INSERT INTO public.{t} VALUES (1, '{S7_SECRET}-a'), (2, '{S7_SECRET}-b'), (3, '{S7_SECRET}-c');
             ANALYZE public.{t};
             CREATE VIEW public.{stats} AS SELECT attname::text AS a, histogram_bounds::text AS h
                 FROM pg_catalog.pg_stats WHERE tablename = '{t}';
             CREATE VIEW public.{over} AS SELECT h FROM public.{stats};
             CREATE FUNCTION pg_catalog.{f}() RETURNS text LANGUAGE sql STABLE AS
                 'SELECT pg_catalog.string_agg(secret, '','') FROM public.{t}';
             CREATE VIEW public.{calls} AS SELECT pg_catalog.{f}() AS x;
             GRANT SELECT ON public.{t}, public.{stats}, public.{over}, public.{calls} TO {READ_USER};"
        ),
    )
    .await;
    let refused = [
        (
            format!("SELECT * FROM {stats}"),
            format!("relation public.{stats} runs code"),
        ),
        (
            format!("SELECT * FROM {over}"),
            format!("relation public.{over} runs code"),
        ),
        (
            format!("SELECT * FROM {calls}"),
            format!("relation public.{calls} runs code"),
        ),
    ];
    let failures = s7_not_refused(&c, &refused).await;
    admin_psql(format!(
        "DROP VIEW public.{over}, public.{stats}, public.{calls}; DROP FUNCTION pg_catalog.{f}();
         DROP TABLE public.{t};"
    ))
    .await;
    let _ = inst.shutdown().await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A masked table `t` (`secret` masked for role `s7_secret`, one row holding [`S7_SECRET`]) and four
/// views over plain data, each `(id int, x text)`, with names made from `prefix`; an instance and a
/// session of the role; and the statement that replaces a view by one over the secret.
struct SecretViews {
    inst: TestInstance,
    client: std::sync::Arc<tokio_postgres::Client>,
    table: String,
    views: [String; 4],
}

impl SecretViews {
    async fn start(prefix: &str) -> SecretViews {
        let table = common::cluster::unique_name(&format!("{prefix}_t"));
        let views = ["a", "b", "c", "d"].map(|v| common::cluster::unique_name(&format!("{prefix}_{v}")));
        let plain = "SELECT 1::int AS id, 'x'::text AS x";
        let creates: Vec<String> = views
            .iter()
            .map(|v| format!("CREATE VIEW public.{v} AS {plain};"))
            .collect();
        let (inst, client) = start_secret(
            &[&table],
            format!(
                "CREATE TABLE public.{table} (id int PRIMARY KEY, secret text);
                 INSERT INTO public.{table} VALUES (1, '{S7_SECRET}');
                 {}
                 GRANT SELECT ON public.{table}, public.{} TO {READ_USER};",
                creates.join(" "),
                views.join(", public.")
            ),
        )
        .await;
        SecretViews {
            inst,
            client: std::sync::Arc::new(client),
            table,
            views,
        }
    }

    /// The statement replacing view `v` by one reading the secret.
    fn replace(&self, v: &str) -> String {
        common::masking::to_secret(v, &self.table)
    }

    /// Drops what [`SecretViews::start`] created (and `extra`, after the views), stops the
    /// instance.
    async fn finish(self, extra: &str) {
        admin_psql(format!(
            "DROP VIEW public.{}; {extra} DROP TABLE public.{};",
            self.views.join(", public."),
            self.table
        ))
        .await;
        let _ = self.inst.shutdown().await;
    }
}

/// Regression (s7 attack, F4): the catalog snapshot was confirmed before the statement was
/// forwarded, and DDL committed after that check was used by the statement: an accomplice (another
/// database user) replaced a view in an open transaction, the masked role's statement waited for
/// its lock past timebox's check, ran on the new definition once it committed, and its
/// RowDescription (view OID, attnum) was judged with the old snapshot — the masked column in
/// clear. Alike for a later statement of one Query string, and for a statement prepared and
/// described before, bound while the lock was held (binary results). Now each result's first
/// frame (a Query's RowDescription, a BindComplete) waits for a second check, made once the
/// statement holds its locks, and a snapshot changed since the statement was checked fails its
/// rows with 42501. (Fails before: all three returned the secret.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ddl_committed_while_the_statement_waits_for_a_lock_fails_its_rows() {
    let _catalog = common::masking::catalog_lock().write().await;
    let sv = SecretViews::start("s7_f4").await;
    let [lw, sw, pw, ew] = sv.views.clone();
    let (c, t) = (sv.client.clone(), sv.table.clone());
    for v in [&lw, &sw, &pw, &ew] {
        let out = outcome(&c, &format!("SELECT * FROM {v}")).await;
        assert_eq!(out, "OK Some(\"1\") Some(\"x\")", "{v}");
    }
    let a = accomplice().await;
    let replace = |v: &str| sv.replace(v);
    let query = |sql: String| {
        let c = c.clone();
        async move { outcome(&c, &sql).await }
    };
    // 1. The statement waits for the lock.
    let lock = across_a_lock(
        &a,
        &replace(&lw),
        &format!("SELECT * FROM {lw}"),
        query(format!("SELECT * FROM {lw}")),
    )
    .await;
    // 2. A later statement of the same Query waits for it (the first one's result went). s10: a
    // masked string holds one statement that reads or runs, so this string is refused before
    // anything runs (nothing to replace meanwhile).
    let multi = query(format!("SELECT 1; SELECT * FROM {sw}")).await;
    // 3. The view replaced by one whose code raises the masked values in its error.
    let raised = across_a_lock(
        &a,
        &format!(
            "CREATE FUNCTION public.{ew}_raise() RETURNS text LANGUAGE plpgsql STABLE AS $f$ BEGIN
                 RAISE EXCEPTION 'got %', (SELECT string_agg(secret, ',') FROM public.{t}); END $f$;
             CREATE OR REPLACE VIEW public.{ew} AS SELECT id, public.{ew}_raise() AS x FROM public.{t}"
        ),
        &format!("SELECT * FROM {ew}"),
        query(format!("SELECT * FROM {ew}")),
    )
    .await;
    // 4. Prepared (and described) before, bound while the lock is held; last, since an
    // extended-protocol batch refused for a catalog change ends the session (s9).
    let prepared = c.prepare(&format!("SELECT id, x FROM {pw}")).await.unwrap();
    let bound = {
        let c = c.clone();
        async move {
            match c.query(&prepared, &[]).await {
                Ok(rows) => format!(
                    "OK {:?}",
                    rows.iter()
                        .map(|r| r.get::<_, Option<String>>(1))
                        .collect::<Vec<_>>()
                ),
                Err(e) => match e.as_db_error() {
                    Some(d) => format!("ERR {} {} detail={:?}", d.code().code(), d.message(), d.detail()),
                    None => format!("ERR {e}"),
                },
            }
        }
    };
    let extended = across_a_lock(&a, &replace(&pw), &format!("SELECT id, x FROM {pw}"), bound).await;
    sv.finish(&format!("DROP FUNCTION public.{ew}_raise();")).await;
    // The second check finds the view replaced; or, when the first statement's own check already
    // saw the accomplice's commit, the second statement is judged by that fresh copy: refused too.
    // s10: a simple Query is refused before it runs (timebox held the view's lock and found the
    // catalog changed), with its own message.
    let refused = |out: &str| {
        !s7_leaked(out)
            && out.starts_with("ERR 42501 ")
            && (out.contains("changed while the statement ran")
                || out.contains("a view over a masked table")
                || out.contains("it did not run")
                || out.contains("would be a second"))
    };
    let failures: Vec<&String> = [&lock, &multi, &extended, &raised]
        .into_iter()
        .filter(|out| !refused(out))
        .collect();
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Regression (s7 re-attack of F4): text checked against one copy of the catalog ran on another.
/// An accomplice replaced a view that a masked role's statement reads through a computed column
/// (`upper(x)`: table OID 0 in the RowDescription, so no description shows the change): (1) after
/// `PREPARE`, before `EXECUTE` — PostgreSQL plans the statement again on the new definition; (2)
/// after a protocol Parse, before Bind (with Describe of the portal); (3) while a `DECLARE … WITH
/// HOLD` waited for the accomplice's lock, fetched after; (4) while a plain `SELECT` waited for it.
/// Each returned the masked values upper-cased. Now a prepared statement's text is checked again
/// when it runs on another copy, a cursor is fetched only under the copy it was declared with, and
/// a result whose copy changed passes only when its text passes against the new copy too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_checked_against_one_catalog_never_runs_on_another() {
    let _catalog = common::masking::catalog_lock().write().await;
    use common::frames::{bind, describe, exchange, execute, parse, sync};
    let sv = SecretViews::start("s8_rc").await;
    let [pv, bv, dv, qv] = sv.views.clone();
    let (c, t) = (sv.client.clone(), sv.table.clone());
    let replace = |v: &str| sv.replace(v);
    // 1. PREPARE, the view replaced, EXECUTE.
    let prepare = format!("PREPARE s8p AS SELECT upper(x) AS x FROM {pv}");
    assert_eq!(outcome(&c, &prepare).await, "OK");
    assert_eq!(outcome(&c, "EXECUTE s8p").await, "OK Some(\"X\")");
    admin_psql(replace(&pv)).await;
    let executed = outcome(&c, "EXECUTE s8p").await;
    // 2. Parse (described), the view replaced, Bind with Describe of the portal.
    let (_, token) = sv.inst.grant("alice", "s7_secret", "10m").await;
    let (mut s, mut buf) = common::raw::login(sv.inst.proxy_addr, "alice", &token).await;
    let parsed = exchange(
        &mut s,
        &mut buf,
        &[
            parse("s8b", &format!("SELECT upper(x) AS x FROM {bv}")),
            describe(b'S', "s8b"),
            sync(),
        ],
    )
    .await;
    assert!(parsed.contains("T:"), "{parsed}");
    admin_psql(replace(&bv)).await;
    let bound = exchange(
        &mut s,
        &mut buf,
        &[bind("", "s8b"), describe(b'P', ""), execute(""), sync()],
    )
    .await;
    // 3. A cursor declared while the accomplice's replacement waited to commit, fetched after.
    let query = |sql: String| {
        let c = c.clone();
        async move { outcome(&c, &sql).await }
    };
    let a = accomplice().await;
    // Alone: timebox runs it in a transaction of its own (a masked role's string may not COMMIT).
    let declare = format!("DECLARE s8c CURSOR WITH HOLD FOR SELECT upper(x) AS x FROM {dv}");
    let declared = across_a_lock(&a, &replace(&dv), "DECLARE s8c", query(declare)).await;
    // s9: the DECLARE itself is refused (its CommandComplete is checked again) and rolled back;
    // before, it was declared and its FETCH refused.
    // s10: refused before it runs (timebox locks the view first and finds the catalog changed).
    let declare_refused = declared.starts_with("ERR 42501 ")
        && (declared.contains("changed while it waited") || declared.contains("it did not run"));
    assert!(declared == "OK" || declare_refused, "{declared}");
    let fetched = outcome(&c, "FETCH ALL FROM s8c").await;
    // 4. A plain SELECT waiting for the lock.
    let select = format!("SELECT upper(x) AS x FROM {qv}");
    let selected = across_a_lock(&a, &replace(&qv), &select, query(select.clone())).await;
    sv.finish("").await;
    let view_over = |v: &str| format!("relation public.{v} is a view over masked column public.{t}.secret");
    let bound_refused = bound.contains("42501") && bound.contains(&view_over(&bv));
    let expected = [
        (
            &executed,
            executed.starts_with("ERR 42501 ") && executed.contains(&view_over(&pv)),
        ),
        (&bound, bound_refused),
        (
            &fetched,
            if declare_refused {
                fetched.starts_with("ERR ")
            } else {
                fetched.starts_with("ERR 42501 ")
                    && fetched.contains("changed since cursor \"s8c\" was declared")
            },
        ),
        (&declared, declared == "OK" || declare_refused),
        (
            &selected,
            selected.starts_with("ERR 42501 ")
                && (selected.contains("changed while the statement ran")
                    || selected.contains("it did not run")),
        ),
    ];
    let failures: Vec<&String> = expected
        .iter()
        .filter(|(out, refused)| s7_leaked(out) || !refused)
        .map(|(out, _)| *out)
        .collect();
    assert!(failures.is_empty(), "{failures:#?}");
}
