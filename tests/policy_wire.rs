//! Statement policy through the real proxy: simple and extended protocol, pipelining, transactions,
//! prepared statements, COPY, FunctionCall — against a real PostgreSQL.

mod common;

use std::time::Duration;

use common::pg::{connect, scalar};
use common::{proxy_conn, psql, raw, Options};
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio_postgres::SimpleQueryMessage;

fn denial(e: &tokio_postgres::Error) -> String {
    let db = e
        .as_db_error()
        .unwrap_or_else(|| panic!("expected a database error, got {e:?}"));
    assert_eq!(db.code().code(), "42501", "{db:?}");
    db.message().to_owned()
}

/// A table private to one test, so parallel tests do not see each other's writes.
async fn private_table() -> String {
    let table = common::cluster::unique_name("notes");
    let sql = format!(
        "CREATE TABLE {table} (id int PRIMARY KEY, body text); INSERT INTO {table} VALUES (1, 'one'), (2, 'two'); \
         GRANT SELECT ON {table} TO timebox_read; GRANT SELECT, INSERT, UPDATE, DELETE ON {table} TO timebox_write;"
    );
    tokio::task::spawn_blocking(move || common::cluster::shop_psql(&sql))
        .await
        .unwrap();
    table
}

/// A schema private to one test holding `table (pay int)` with one row (100), readable by the read
/// credential: a table outside table rules that allow `public.*`. Returns the schema's name.
async fn private_schema(table: &str) -> String {
    let schema = common::cluster::unique_name("hr");
    let setup = format!(
        "CREATE SCHEMA {schema}; CREATE TABLE {schema}.{table} (pay int); INSERT INTO {schema}.{table} VALUES (100); \
         GRANT USAGE ON SCHEMA {schema} TO timebox_read; GRANT SELECT ON {schema}.{table} TO timebox_read;"
    );
    tokio::task::spawn_blocking(move || common::cluster::shop_psql(&setup))
        .await
        .unwrap();
    schema
}

async fn rows_in(table: &str) -> i64 {
    let sql = format!("SELECT count(*) FROM {table}");
    tokio::task::spawn_blocking(move || common::cluster::shop_psql(&sql).trim().parse().unwrap())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_grant_reads_but_cannot_write_in_the_simple_protocol() {
    let inst = common::start(Options::default()).await;
    let table = private_table().await;
    let (grant, token) = inst.grant("alice", "read", "10m").await;
    let client = connect(&inst.conn_string("alice", &token, "disable")).await;

    assert_eq!(
        scalar(&client, &format!("SELECT count(*) FROM {table}")).await,
        "2"
    );
    assert_eq!(
        scalar(
            &client,
            &format!("WITH t AS (SELECT * FROM {table}) SELECT max(id) FROM t")
        )
        .await,
        "2"
    );

    let err = client
        .simple_query(&format!("DELETE FROM {table}"))
        .await
        .unwrap_err();
    let msg = denial(&err);
    assert!(msg.starts_with("timebox: "), "{msg}");
    let db = err.as_db_error().unwrap();
    assert!(db.detail().unwrap_or("").contains(&grant.id), "{db:?}");
    assert!(db.hint().is_some(), "a hint for the engineer");

    // a hidden second statement denies the whole message: nothing of it runs
    let err = client
        .simple_query(&format!("SELECT 1; DELETE FROM {table} WHERE id = 1"))
        .await
        .unwrap_err();
    denial(&err);
    // a data-modifying CTE
    let err = client
        .simple_query(&format!(
            "WITH gone AS (DELETE FROM {table} RETURNING *) SELECT count(*) FROM gone"
        ))
        .await
        .unwrap_err();
    denial(&err);
    assert_eq!(rows_in(&table).await, 2, "nothing was deleted");
    // the session goes on
    assert_eq!(scalar(&client, "SELECT 5").await, "5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denial_inside_a_transaction_fails_it_like_postgresql_would() {
    let inst = common::start(Options::default()).await;
    let table = private_table().await;
    let (_g, token) = inst.grant("alice", "read", "10m").await;
    let (mut sock, mut buf) = raw::login(inst.proxy_addr, "alice", &token).await;
    let mut out = bytes::BytesMut::new();
    for q in ["BEGIN", &format!("DELETE FROM {table}"), "SELECT 1", "ROLLBACK"] {
        postgres_protocol::message::frontend::query(q, &mut out).unwrap();
    }
    sock.write_all(&out).await.unwrap();
    // BEGIN → Z(T); DELETE → E(42501) Z(E); SELECT 1 → E(25P02) Z(E); ROLLBACK → Z(I)
    let mut statuses = Vec::new();
    let mut errors = Vec::new();
    while statuses.len() < 4 {
        match raw::read_message(&mut sock, &mut buf).await.expect("message") {
            postgres_protocol::message::backend::Message::ReadyForQuery(b) => statuses.push(b.status()),
            postgres_protocol::message::backend::Message::ErrorResponse(body) => {
                use fallible_iterator::FallibleIterator;
                let mut fields = body.fields();
                while let Some(f) = fields.next().unwrap() {
                    if f.type_() == b'C' {
                        errors.push(String::from_utf8_lossy(f.value_bytes()).into_owned());
                    }
                }
            }
            _ => {}
        }
    }
    assert_eq!(statuses, vec![b'T', b'E', b'E', b'I']);
    assert_eq!(errors, vec!["42501", "25P02"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_protocol_denials_keep_pipelined_responses_in_order() {
    let inst = common::start(Options::default()).await;
    let table = private_table().await;
    let (_g, token) = inst.grant("alice", "read", "10m").await;
    let client = connect(&inst.conn_string("alice", &token, "disable")).await;

    // Parse of a write is refused at prepare time.
    let err = client
        .prepare(&format!("UPDATE {table} SET body = 'x' WHERE id = $1"))
        .await
        .unwrap_err();
    denial(&err);

    // A denial in the middle of a pipeline: the others succeed, in order.
    let select = format!("SELECT body FROM {table} WHERE id = $1");
    let delete = format!("DELETE FROM {table} WHERE id = $1");
    let (a, b, c) = futures::join!(
        client.query_one(&select, &[&1i32]),
        client.execute(&delete, &[&1i32]),
        client.query_one(&select, &[&2i32]),
    );
    assert_eq!(a.unwrap().get::<_, String>(0), "one");
    denial(&b.unwrap_err());
    assert_eq!(c.unwrap().get::<_, String>(0), "two");
    assert_eq!(rows_in(&table).await, 2);

    // Allowed prepared statements work repeatedly.
    let stmt = client.prepare(&select).await.unwrap();
    for id in [1i32, 2, 1] {
        client.query_one(&stmt, &[&id]).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_level_prepare_execute_and_explain_analyze() {
    let inst = common::start(Options::default()).await;
    let table = private_table().await;
    let (_g, token) = inst.grant("alice", "read", "10m").await;
    let client = connect(&inst.conn_string("alice", &token, "disable")).await;

    client
        .batch_execute(&format!("PREPARE r AS SELECT body FROM {table} WHERE id = $1"))
        .await
        .unwrap();
    assert_eq!(scalar(&client, "EXECUTE r(2)").await, "two");
    denial(
        &client
            .batch_execute(&format!("PREPARE w AS DELETE FROM {table}"))
            .await
            .unwrap_err(),
    );
    denial(&client.batch_execute("EXECUTE w").await.unwrap_err());
    denial(&client.batch_execute("EXECUTE never_prepared").await.unwrap_err());
    denial(
        &client
            .batch_execute(&format!("EXPLAIN ANALYZE DELETE FROM {table}"))
            .await
            .unwrap_err(),
    );
    // EXPLAIN without ANALYZE only plans: timebox lets it through as a read...
    client
        .batch_execute(&format!("EXPLAIN SELECT * FROM {table}"))
        .await
        .unwrap();
    // ...and for a DELETE the upstream read role itself refuses to plan it (defence in depth).
    let err = client
        .batch_execute(&format!("EXPLAIN DELETE FROM {table}"))
        .await
        .unwrap_err();
    let db = err.as_db_error().unwrap();
    assert!(db.message().starts_with("permission denied for table"), "{db:?}");
    assert_eq!(rows_in(&table).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_grant_writes_but_cannot_do_ddl_and_needs_a_where() {
    let inst = common::start(Options::default()).await;
    let table = private_table().await;
    let (_g, token) = inst.grant("bob", "write", "10m").await;
    let client = connect(&inst.conn_string("bob", &token, "disable")).await;
    client
        .batch_execute(&format!("UPDATE {table} SET body = 'uno' WHERE id = 1"))
        .await
        .unwrap();
    assert_eq!(
        scalar(&client, &format!("SELECT body FROM {table} WHERE id = 1")).await,
        "uno"
    );
    denial(
        &client
            .batch_execute(&format!("DROP TABLE {table}"))
            .await
            .unwrap_err(),
    );
    denial(
        &client
            .batch_execute(&format!("TRUNCATE {table}"))
            .await
            .unwrap_err(),
    );
    assert_eq!(rows_in(&table).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_from_is_a_write_copy_to_stdout_is_a_read() {
    let inst = common::start(Options::default()).await;
    let table = private_table().await;
    let (_g, token) = inst.grant("alice", "read", "10m").await;
    let client = connect(&inst.conn_string("alice", &token, "disable")).await;
    let out = client.copy_out(&format!("COPY {table} TO STDOUT")).await.unwrap();
    let chunks: Vec<_> = out.collect().await;
    assert_eq!(chunks.len(), 2);
    let err = client
        .copy_in::<_, bytes::Bytes>(&format!("COPY {table} FROM STDIN"))
        .await
        .err()
        .unwrap();
    denial(&err);
    denial(
        &client
            .batch_execute("COPY (SELECT 1) TO PROGRAM 'true'")
            .await
            .unwrap_err(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_cannot_be_switched_off_and_is_enforced_upstream() {
    let inst = common::start(Options::default()).await;
    let (_g, token) = inst.grant("alice", "read", "10m").await;
    let client = connect(&inst.conn_string("alice", &token, "disable")).await;
    assert_eq!(scalar(&client, "SHOW default_transaction_read_only").await, "on");
    for sql in [
        "SET default_transaction_read_only = off",
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
        "BEGIN READ WRITE",
        "START TRANSACTION READ WRITE",
        "RESET ALL",
        "SELECT set_config('default_transaction_read_only', 'off', false)",
        "SET ROLE postgres",
        "SET standard_conforming_strings = off",
    ] {
        let err = client.batch_execute(sql).await.unwrap_err();
        denial(&err);
    }
    assert_eq!(scalar(&client, "SHOW default_transaction_read_only").await, "on");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn function_call_messages_are_denied_for_non_admin_roles() {
    let inst = common::start(Options::default()).await;
    let (_g, token) = inst.grant("alice", "read", "10m").await;
    let (mut sock, mut buf) = raw::login(inst.proxy_addr, "alice", &token).await;
    // FunctionCall 'F': oid of pg_backend_pid (2026), no args, result format text.
    let mut f = bytes::BytesMut::new();
    timebox::proxy::wire::frame(&mut f, b'F', |b| {
        use bytes::BufMut;
        b.put_i32(2026);
        b.put_i16(0);
        b.put_i16(0);
        b.put_i16(0);
    });
    sock.write_all(&f).await.unwrap();
    let (code, msg) = raw::next_error(&mut sock, &mut buf).await.expect("an error");
    assert_eq!(code, "42501");
    assert!(msg.contains("FunctionCall"), "{msg}");
    // then ReadyForQuery, and the session goes on
    let ready = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            if let Some(postgres_protocol::message::backend::Message::ReadyForQuery(_)) =
                raw::read_message(&mut sock, &mut buf).await
            {
                return;
            }
        }
    })
    .await;
    assert!(ready.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_sees_a_readable_denial_and_nothing_runs() {
    let inst = common::start(Options::default()).await;
    let table = private_table().await;
    let (_g, token) = inst.grant("alice", "read", "10m").await;
    let out = psql(
        &proxy_conn(&inst, "alice", "sslmode=disable"),
        &token,
        &format!("SELECT 1; DELETE FROM {table}"),
    )
    .await;
    assert!(!out.success);
    assert!(out.stderr.contains("ERROR:  timebox:"), "{}", out.stderr);
    assert!(out.stderr.contains("HINT:"), "{}", out.stderr);
    assert_eq!(rows_in(&table).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_statements_never_reach_the_server() {
    let inst = common::start(Options::default()).await;
    let table = private_table().await;
    let (_g, token) = inst.grant("alice", "read", "10m").await;
    let client = connect(&inst.conn_string("alice", &token, "disable")).await;
    let needle = common::cluster::unique_name("needle");
    let _ = client
        .simple_query(&format!("DELETE FROM {table} WHERE body = '{needle}'"))
        .await
        .unwrap_err();
    client
        .simple_query(&format!("SELECT '{needle}_allowed'"))
        .await
        .unwrap();
    let log =
        tokio::task::spawn_blocking(|| std::fs::read_to_string(common::cluster::shared_cluster().log_path()))
            .await
            .unwrap()
            .unwrap();
    assert!(
        log.contains(&format!("{needle}_allowed")),
        "the allowed statement is logged upstream"
    );
    assert!(
        !log.contains(&format!("body = '{needle}'")),
        "the denied statement must not reach the server"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_options_require_where_tables_and_statement_timeout_cap() {
    let inst = common::start(Options::default()).await;
    let table = private_table().await;
    let secret = common::cluster::unique_name("secret_keys");
    let setup = format!(
        "CREATE TABLE {secret} (k text); GRANT SELECT, INSERT, UPDATE, DELETE ON {secret} TO timebox_write;"
    );
    tokio::task::spawn_blocking(move || common::cluster::shop_psql(&setup))
        .await
        .unwrap();

    // write role: require_where = true, tables deny public.secret*
    let (_g, token) = inst.grant("bob", "write", "10m").await;
    let writer = connect(&inst.conn_string("bob", &token, "disable")).await;
    let msg = denial(
        &writer
            .batch_execute(&format!("DELETE FROM {table}"))
            .await
            .unwrap_err(),
    );
    assert!(msg.contains("WHERE"), "{msg}");
    let msg = denial(
        &writer
            .batch_execute(&format!("UPDATE {table} SET body = 'x'"))
            .await
            .unwrap_err(),
    );
    assert!(msg.contains("WHERE"), "{msg}");
    writer
        .batch_execute(&format!("DELETE FROM {table} WHERE id = 2"))
        .await
        .unwrap();
    assert_eq!(rows_in(&table).await, 1);
    let msg = denial(
        &writer
            .batch_execute(&format!("SELECT * FROM {secret}"))
            .await
            .unwrap_err(),
    );
    assert!(msg.contains(&secret), "{msg}");
    denial(
        &writer
            .batch_execute(&format!("SELECT * FROM public.{secret}"))
            .await
            .unwrap_err(),
    );

    // read role: statement_timeout = 30s applied upstream; raising it is denied, lowering is fine
    let (_g, token) = inst.grant("alice", "read", "10m").await;
    let reader = connect(&inst.conn_string("alice", &token, "disable")).await;
    assert_eq!(scalar(&reader, "SHOW statement_timeout").await, "30s");
    denial(
        &reader
            .batch_execute("SET statement_timeout = '1h'")
            .await
            .unwrap_err(),
    );
    denial(
        &reader
            .batch_execute("SET statement_timeout = 0")
            .await
            .unwrap_err(),
    );
    reader
        .batch_execute("SET statement_timeout = '5s'")
        .await
        .unwrap();
    assert_eq!(scalar(&reader, "SHOW statement_timeout").await, "5s");
    // ... and a startup option above the cap is refused at login
    let out = psql(
        &proxy_conn(
            &inst,
            "alice",
            "sslmode=disable options='-c statement_timeout=2h'",
        ),
        &token,
        "SELECT 1",
    )
    .await;
    assert!(!out.success);
    assert!(out.stderr.contains("exceeds role read's cap"), "{}", out.stderr);
}

/// Regression (issue 16, finding 11): `MERGE … ON true WHEN MATCHED THEN UPDATE` touched every row
/// under a role with `require_where`. A constant ON condition is no filter; a join key is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merge_without_a_filtering_condition_is_denied_by_require_where() {
    let inst = common::start(Options::default()).await;
    let table = private_table().await;
    let (_g, token) = inst.grant("bob", "write", "10m").await;
    let writer = connect(&inst.conn_string("bob", &token, "disable")).await;
    for on in ["true", "1 = 1", "NOT false", "'t'::bool"] {
        let msg = denial(
            &writer
                .batch_execute(&format!(
                    "MERGE INTO {table} t USING (SELECT 1 AS id) s ON {on} WHEN MATCHED THEN UPDATE SET body = 'gone'"
                ))
                .await
                .unwrap_err(),
        );
        assert!(msg.contains("require_where"), "{on}: {msg}");
    }
    let changed = format!("SELECT count(*) FROM {table} WHERE body = 'gone'");
    assert_eq!(scalar(&writer, &changed).await, "0", "no row was touched");
    // A MERGE matched by its key runs.
    writer
        .batch_execute(&format!(
            "MERGE INTO {table} t USING (SELECT 1 AS id) s ON t.id = s.id WHEN MATCHED THEN UPDATE SET body = 'gone'"
        ))
        .await
        .unwrap();
    assert_eq!(scalar(&writer, &changed).await, "1");
}

/// Regression (issue 16, finding 2): the classifier parses with PostgreSQL 18's grammar, where
/// `JSON_ARRAY(…)`, `JSON_SCALAR(…)`, `JSON_VALUE(…)` and `MERGE_ACTION()` are keywords, not function
/// calls; PostgreSQL 15 calls the user-defined functions of those names. Here they are SECURITY
/// DEFINER functions as in the report: a read grant must not reach them, whatever the case.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newer_grammar_keywords_are_user_functions_on_an_older_target() {
    let inst = common::start(Options::default()).await;
    let setup = "\
        CREATE OR REPLACE FUNCTION public.json_array(int, int) RETURNS text LANGUAGE sql SECURITY DEFINER AS $$ SELECT 'user json_array ran' $$;\
        CREATE OR REPLACE FUNCTION public.json_scalar(int) RETURNS text LANGUAGE sql SECURITY DEFINER AS $$ SELECT 'user json_scalar ran' $$;\
        CREATE OR REPLACE FUNCTION public.json_value(text, text) RETURNS text LANGUAGE sql SECURITY DEFINER AS $$ SELECT 'user json_value ran' $$;\
        CREATE OR REPLACE FUNCTION public.merge_action() RETURNS text LANGUAGE sql SECURITY DEFINER AS $$ SELECT 'user merge_action ran' $$;\
        GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO timebox_read;";
    tokio::task::spawn_blocking(move || common::cluster::shop_psql(setup))
        .await
        .unwrap();
    let (_g, token) = inst.grant("alice", "read", "10m").await;
    let client = connect(&inst.conn_string("alice", &token, "disable")).await;
    let version = scalar(&client, "SHOW server_version_num").await;
    assert!(
        version.starts_with("15"),
        "this test needs a PostgreSQL 15 target: {version}"
    );
    for sql in [
        "SELECT JSON_ARRAY(1, 2)",
        "select json_array(1, 2)",
        "SELECT Json_Scalar(1)",
        "SELECT JSON_VALUE('{}', '$.a')",
        "SELECT MERGE_ACTION()",
        "SELECT 1 WHERE merge_action() IS NOT NULL",
    ] {
        let msg = denial(&client.simple_query(sql).await.unwrap_err());
        assert!(msg.contains("the target runs PostgreSQL 15"), "{sql}: {msg}");
        let prepared = client.prepare(sql).await.unwrap_err();
        denial(&prepared);
    }
    // Harmless reads still pass, JSON ones included.
    assert_eq!(
        scalar(&client, "SELECT json_build_array(1, 2)::text").await,
        "[1, 2]"
    );
    assert_eq!(scalar(&client, "SELECT lower('OK')").await, "ok");
}

/// A timebox instance whose config adds role `tables`: read, `tables.allow = ["public.*"]`, upstream
/// as timebox_read.
async fn start_with_table_rules() -> common::TestInstance {
    let port = tokio::task::spawn_blocking(|| common::cluster::shared_cluster().port())
        .await
        .unwrap();
    common::start_with_config(move |dir| {
        format!(
            "{}\n[targets.shop.credentials.tables]\nuser = \"{}\"\npassword = \"{}\"\n\
             [roles.tables]\nallow = [\"read\"]\nmax_ttl = \"1h\"\ntables = {{ allow = [\"public.*\"] }}\n",
            common::config_text(&Options::default(), dir, port),
            common::cluster::READ_USER,
            common::cluster::READ_PASSWORD,
        )
    })
    .await
}

/// Regression (issue 16, finding 5): `PGOPTIONS="-c search_path=hr"` was passed upstream for a role
/// with table rules, so `select * from salaries` read `hr.salaries` that the rules deny; and an
/// unqualified `pg_stats` was checked as `public.pg_stats`, though PostgreSQL finds `pg_catalog`'s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_search_path_and_catalog_names_cannot_escape_table_rules() {
    let inst = start_with_table_rules().await;
    let schema = private_schema("salaries").await;
    let table = private_table().await;
    let (_g, token) = inst.grant("carol", "tables", "10m").await;

    let out = psql(
        &proxy_conn(
            &inst,
            "carol",
            &format!("sslmode=disable options='-c search_path={schema}'"),
        ),
        &token,
        "SELECT pay FROM salaries",
    )
    .await;
    assert!(!out.success, "the session must not start: {}", out.stdout);
    assert!(
        out.stderr
            .contains("startup setting search_path is not allowed for role tables"),
        "{}",
        out.stderr
    );
    assert!(!out.stdout.contains("100"));

    let client = connect(&inst.conn_string("carol", &token, "disable")).await;
    assert_eq!(
        scalar(&client, "SHOW search_path").await,
        "public",
        "pinned to what the rules assume, whatever the target's defaults"
    );
    for sql in ["SELECT count(*) FROM pg_stats", "SELECT rolname FROM pg_roles"] {
        let msg = denial(&client.simple_query(sql).await.unwrap_err());
        assert!(msg.contains("pg_catalog.NAME"), "{sql}: {msg}");
    }
    denial(
        &client
            .simple_query(&format!("SELECT pay FROM {schema}.salaries"))
            .await
            .unwrap_err(),
    );
    // What the rules allow still works.
    assert_eq!(
        scalar(&client, &format!("SELECT count(*) FROM {table}")).await,
        "2"
    );
}

/// Regression (issue 16, finding 10): an engineer could replace timebox's tag in
/// `pg_stat_activity` and the server log with another engineer's (`SET application_name =
/// 'timebox:bob:g_…'`, `set_config(…)`, startup `options -c application_name=…`). A plain SET is
/// rewritten to keep the tag in front (psql, JDBC and other drivers keep working); anything else
/// that would drop it is denied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn application_name_always_carries_the_tag() {
    let inst = common::start(Options::default()).await;
    let (grant, token) = inst.grant("alice", "read", "10m").await;
    let tag = format!("timebox:alice:{}", grant.id);
    let client = connect(&inst.conn_string("alice", &token, "disable")).await;
    let seen_upstream = "SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()";

    // Simple protocol SET: rewritten, tag in front.
    client
        .batch_execute("SET application_name = 'timebox:bob:g_0000000000000000'")
        .await
        .unwrap();
    assert_eq!(
        scalar(&client, seen_upstream).await,
        format!("{tag}:timebox:bob:g_0000000000000000")
    );
    // Extended protocol (a driver's SET): rewritten too.
    client
        .execute("SET application_name = 'dbeaver'", &[])
        .await
        .unwrap();
    assert_eq!(
        scalar(&client, "SHOW application_name").await,
        format!("{tag}:dbeaver")
    );
    // What cannot be rewritten exactly is denied.
    for sql in [
        "SELECT set_config('application_name', 'timebox:bob:g_0000000000000000', false)",
        "SET application_name = 'timebox:bob:g_0000000000000000'; SELECT 1",
    ] {
        let msg = denial(&client.simple_query(sql).await.unwrap_err());
        assert!(msg.contains("would drop timebox's tag"), "{sql}: {msg}");
    }
    // RESET returns to the tagged startup value.
    client.batch_execute("RESET application_name").await.unwrap();
    assert_eq!(scalar(&client, seen_upstream).await, tag);

    // Startup: application_name as a parameter or in options, both tagged.
    for extra in [
        "application_name=timebox:bob:g_0000000000000000",
        "options='-c application_name=timebox:bob:g_0000000000000000'",
    ] {
        let out = psql(
            &proxy_conn(&inst, "alice", &format!("sslmode=disable {extra}")),
            &token,
            seen_upstream,
        )
        .await;
        assert!(out.success, "{extra}: {}", out.stderr);
        assert!(
            out.stdout.trim().starts_with(&format!("{tag}:")),
            "{extra}: {}",
            out.stdout
        );
    }
}

/// Regression (attack round on issue 16): `set_config('client_encoding', 'SJIS'::text, …)` was read
/// as a harmless setting (its value is not a bare literal), the server switched to SJIS, and a second
/// message pipelined behind it was lexed by the server in SJIS — where `Á\` is one character, so the
/// quote after it ends the literal — while timebox read it in UTF-8 as one string literal. Here the
/// upstream read role is over-privileged (DELETE granted), so only the policy stands in the way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_encoding_the_proxy_cannot_read_cannot_smuggle_a_pipelined_statement() {
    let inst = common::start(Options::default()).await;
    let table = private_table().await;
    let grant_delete = format!("GRANT DELETE ON {table} TO timebox_read");
    tokio::task::spawn_blocking(move || common::cluster::shop_psql(&grant_delete))
        .await
        .unwrap();
    let (_g, token) = inst.grant("alice", "read", "10m").await;
    let (mut sock, mut buf) = raw::login(inst.proxy_addr, "alice", &token).await;
    let mut out = bytes::BytesMut::new();
    let smuggled = format!("SELECT E'\u{c1}\\'; COMMIT; BEGIN READ WRITE; DELETE FROM {table}; COMMIT; --'");
    for q in [
        "SELECT set_config('client_encoding', 'SJIS'::text, false), pg_sleep(0.2)",
        smuggled.as_str(),
    ] {
        postgres_protocol::message::frontend::query(q, &mut out).unwrap();
    }
    sock.write_all(&out).await.unwrap();
    let mut errors = Vec::new();
    let mut ready = 0;
    while ready < 2 {
        match raw::read_message(&mut sock, &mut buf).await {
            None => break,
            Some(postgres_protocol::message::backend::Message::ReadyForQuery(_)) => ready += 1,
            Some(postgres_protocol::message::backend::Message::ErrorResponse(body)) => {
                use fallible_iterator::FallibleIterator;
                let mut fields = body.fields();
                while let Some(f) = fields.next().unwrap() {
                    if f.type_() == b'C' {
                        errors.push(String::from_utf8_lossy(f.value_bytes()).into_owned());
                    }
                }
            }
            Some(_) => {}
        }
    }
    assert_eq!(errors.first().map(String::as_str), Some("42501"), "{errors:?}");
    assert_eq!(ready, 2, "the session goes on after the denial ({errors:?})");
    assert_eq!(rows_in(&table).await, 2, "nothing was deleted");
}

/// Issue 12: DML on a system catalog passed a write grant's policy; with a privileged upstream
/// credential that is privilege escalation. The grant's role here allows read, write and ddl, and
/// its upstream credential is a superuser: each denied statement is shown to change the catalog
/// when sent to the server directly with that same credential.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_dml_is_denied_under_a_write_grant_although_the_upstream_would_run_it() {
    use common::cluster::{shared_cluster, shop_conn_string, shop_psql};
    let superuser = common::cluster::unique_name("tb_super");
    let password = "super-pw-5e1d0a";
    let table = private_table().await;
    let setup = format!(
        "CREATE ROLE {superuser} SUPERUSER LOGIN PASSWORD '{password}'; \
         COMMENT ON TABLE {table} IS 'before'; SELECT lo_from_bytea(0, 'kept')"
    );
    let out = tokio::task::spawn_blocking(move || shop_psql(&setup))
        .await
        .unwrap();
    let large_object: u32 = out.trim().lines().last().unwrap().trim().parse().unwrap();
    let port = tokio::task::spawn_blocking(|| shared_cluster().port())
        .await
        .unwrap();
    let (role, user, described) = (superuser.clone(), superuser.clone(), table.clone());
    let inst = common::start_with_config(move |dir| {
        format!(
            "{}\n[targets.shop.credentials.super_write]\nuser = \"{user}\"\npassword = \"{password}\"\n\
             [roles.super_write]\nallow = [\"read\", \"write\", \"ddl\"]\nmax_ttl = \"1h\"\n",
            common::config_text(&Options::default(), dir, port),
        )
    })
    .await;
    let catalog_state = move || {
        let (table, role) = (table.clone(), role.clone());
        async move {
            let sql = format!(
                "SELECT obj_description('{table}'::regclass, 'pg_class') || ' ' || \
                 (SELECT rolconnlimit FROM pg_authid WHERE rolname = '{role}') || ' ' || \
                 (SELECT count(*) FROM pg_largeobject WHERE loid = {large_object})"
            );
            tokio::task::spawn_blocking(move || shop_psql(&sql).trim().to_owned())
                .await
                .unwrap()
        }
    };
    let statements = [
        (
            format!(
                "UPDATE pg_catalog.pg_description SET description = 'after' \
                 WHERE objoid = '{described}'::regclass"
            ),
            "UPDATE pg_catalog.pg_description",
        ),
        (
            format!("UPDATE pg_authid SET rolconnlimit = 7 WHERE rolname = '{superuser}'"),
            "UPDATE pg_catalog.pg_authid",
        ),
        (
            format!(
                "WITH d AS (DELETE FROM pg_catalog.pg_largeobject WHERE loid = {large_object} RETURNING 1) \
                 SELECT count(*) FROM d"
            ),
            "DELETE FROM pg_catalog.pg_largeobject",
        ),
    ];
    let before = catalog_state().await;
    assert!(before.starts_with("before -1 "), "{before}");

    let (_grant, token) = inst.grant("alice", "super_write", "10m").await;
    let client = connect(&inst.conn_string("alice", &token, "disable")).await;
    for (sql, what) in &statements {
        let err = client.simple_query(sql).await.unwrap_err();
        let msg = denial(&err);
        assert!(
            msg.contains(what) && msg.contains("system catalog") && msg.contains("needs admin access"),
            "{sql}: {msg}"
        );
    }
    let search_path = scalar(&client, "SHOW search_path").await;
    let err = client
        .simple_query("UPDATE pg_settings SET setting = 'evil, pg_catalog' WHERE name = 'search_path'")
        .await
        .unwrap_err();
    assert!(denial(&err).contains("pg_catalog.pg_settings"));
    assert_eq!(scalar(&client, "SHOW search_path").await, search_path);
    assert_eq!(catalog_state().await, before, "nothing reached the catalogs");

    // The same statements, sent directly with the grant's upstream credential, change them.
    let direct = connect(&shop_conn_string(&superuser, Some(password))).await;
    for (sql, _) in &statements {
        direct
            .simple_query(sql)
            .await
            .unwrap_or_else(|e| panic!("directly, {sql}: {e}"));
    }
    assert_eq!(catalog_state().await, "after 7 0");
    direct
        .simple_query("UPDATE pg_settings SET setting = 'evil, pg_catalog' WHERE name = 'search_path'")
        .await
        .unwrap();
    assert_eq!(scalar(&direct, "SHOW search_path").await, "evil, pg_catalog");

    drop(direct);
    drop(client);
    inst.shutdown().await.unwrap();
    let _ = shared_cluster().psql("postgres", &format!("DROP ROLE IF EXISTS {superuser}"));
}

/// Issue 12: `TABLE name` (PostgreSQL's shorthand for `SELECT * FROM name`) was denied as unparsed
/// because sqlparser cannot read a statement that starts with it. It is a read, table rules apply
/// to the name, and it works in the simple and the extended protocol.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_command_is_a_read_with_table_rules_honoured() {
    let table = private_table().await;
    let inst = common::start(Options::default()).await;
    let (_g, token) = inst.grant("alice", "read", "10m").await;
    let client = connect(&inst.conn_string("alice", &token, "disable")).await;
    let rows = client.simple_query(&format!("TABLE {table}")).await.unwrap();
    let n = rows
        .iter()
        .filter(|m| matches!(m, SimpleQueryMessage::Row(_)))
        .count();
    assert_eq!(n, 2);
    let rows = client
        .query(
            &format!("WITH x AS (TABLE {table}) SELECT * FROM x UNION TABLE {table}"),
            &[],
        )
        .await
        .map(|r| r.len())
        .unwrap_or_else(|e| panic!("extended protocol: {e:?}"));
    assert_eq!(rows, 2, "in a CTE and a UNION, through Parse");

    let rules = start_with_table_rules().await;
    let schema = private_schema("secret").await;
    let (_g, token) = rules.grant("carol", "tables", "10m").await;
    let client = connect(&rules.conn_string("carol", &token, "disable")).await;
    assert_eq!(
        scalar(&client, &format!("SELECT count(*) FROM (TABLE {table}) t")).await,
        "2"
    );
    for sql in [
        format!("TABLE {schema}.secret"),
        format!("TABLE {table} UNION ALL SELECT pay, '' FROM (TABLE {schema}.secret) s"),
    ] {
        let msg = denial(&client.simple_query(&sql).await.unwrap_err());
        assert!(
            msg.contains(&format!("{schema}.secret")) && msg.contains("tables.allow"),
            "{sql}: {msg}"
        );
    }
    let msg = denial(
        &client
            .query(&format!("TABLE {schema}.secret"), &[])
            .await
            .unwrap_err(),
    );
    assert!(
        msg.contains(&format!("{schema}.secret")),
        "extended protocol: {msg}"
    );
}
