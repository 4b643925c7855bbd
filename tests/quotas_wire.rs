//! Result quotas per role (issue 15) through the real proxy, against a real PostgreSQL: a large
//! SELECT and a large COPY TO are stopped with 54000, the upstream query is cancelled, the session
//! goes on; the extended protocol too; per-grant bytes add up over sessions; roles without quotas
//! (or under their limits) get exactly the upstream's bytes.

mod common;

use std::time::Duration;

use common::pg::{audit_records, connect, db_error, scalar};
use common::wire::{answer_bytes, shop_credential};
use common::{psql, raw, TestInstance};
use futures::StreamExt;

/// Roles with quotas, using the read credential. No statement_timeout: a `pg_sleep` in a result's
/// tail only ends early if timebox cancels it.
fn quota_roles() -> String {
    use common::cluster::{READ_PASSWORD, READ_USER};
    format!(
        r#"
[roles.capped]
allow = ["read"]
max_ttl = "1h"
max_rows_per_statement = 1000
max_result_bytes_per_statement = "64kB"
[roles.metered]
allow = ["read"]
max_ttl = "1h"
max_result_bytes_per_grant = "32kB"
{}{}"#,
        shop_credential("capped", READ_USER, READ_PASSWORD),
        shop_credential("metered", READ_USER, READ_PASSWORD),
    )
}

async fn start() -> TestInstance {
    let port = tokio::task::spawn_blocking(|| common::cluster::shared_cluster().port())
        .await
        .unwrap();
    common::start_with_config(|dir| {
        common::config_text(&common::Options::default(), dir, port) + &quota_roles()
    })
    .await
}

/// 5000 rows of about 20 bytes; the last one sleeps ten minutes unless its query is cancelled.
const SLOW_TAIL: &str =
    "SELECT g, CASE WHEN g = 5000 THEN pg_sleep(600) END AS slept FROM generate_series(1, 5000) g";

/// Generous for a loaded 2-core machine, far below the ten minutes an uncancelled tail sleeps.
const DEADLINE: Duration = Duration::from_secs(90);

/// Upstream queries of this grant still running a `pg_sleep`.
async fn sleeping_upstream(grant_id: &str) -> i64 {
    let sql = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'timebox:%:{grant_id}%' \
         AND state = 'active' AND query LIKE '%pg_sleep%'"
    );
    tokio::task::spawn_blocking(move || common::cluster::shop_psql(&sql).trim().parse().unwrap())
        .await
        .unwrap()
}

fn quota_error(e: &tokio_postgres::Error, limit: &str) {
    let (code, message) = db_error(e);
    assert_eq!(code, "54000", "{message}");
    assert!(
        message.starts_with(&format!("timebox: result exceeds {limit} of role ")),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_select_is_stopped_its_query_cancelled_and_the_session_goes_on() {
    let inst = start().await;
    let (grant, token) = inst.grant("alice", "capped", "10m").await;
    let client = connect(&inst.conn_string("alice", &token, "disable")).await;
    let result = tokio::time::timeout(DEADLINE, client.simple_query(SLOW_TAIL))
        .await
        .expect("the stopped query's pg_sleep was cancelled");
    quota_error(&result.expect_err("stopped"), "max_rows_per_statement = 1000");
    assert_eq!(sleeping_upstream(&grant.id).await, 0);
    assert_eq!(scalar(&client, "SELECT 41 + 1").await, "42");
    // The statement record's outcome says what was returned and which quota stopped it.
    let db = inst.audit_db();
    let stopped = common::eventually(Duration::from_secs(20), || {
        let db = db.clone();
        async move {
            audit_records(&db).iter().any(|(k, p)| {
                k == "statement_outcome"
                    && p["returned"]["quota_stop"] == "max_rows_per_statement"
                    && p["returned"]["rows"] == 1000
                    && p["sqlstate"] == "54000"
            })
        }
    })
    .await;
    assert!(stopped, "{:#?}", audit_records(&db));
    // Auditors find it with SQL.
    let audit = format!(
        "host=127.0.0.1 port={} user=audrey dbname=timebox_audit sslmode=require",
        inst.proxy_addr.port()
    );
    let found = common::eventually(Duration::from_secs(20), || {
        let audit = audit.clone();
        async move {
            let sql = "SELECT quota_stop || ' ' || returned_rows FROM outcomes WHERE quota_stop IS NOT NULL";
            psql(&audit, common::AUDITOR_TOKEN, sql).await.stdout.trim() == "max_rows_per_statement 1000"
        }
    })
    .await;
    assert!(found, "the outcomes view shows the quota stop");
    let metrics = common::wire::metrics_text(&inst).await;
    assert!(
        metrics.contains("timebox_quota_stops_total{limit=\"max_rows_per_statement\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_extended_protocol_is_stopped_too() {
    let inst = start().await;
    let (grant, token) = inst.grant("alice", "capped", "10m").await;
    let client = connect(&inst.conn_string("alice", &token, "disable")).await;
    let sql = "SELECT g, CASE WHEN g = $1 THEN pg_sleep(600) END AS slept FROM generate_series(1, $1) g";
    let result = tokio::time::timeout(DEADLINE, client.query(sql, &[&5000i32]))
        .await
        .expect("the stopped query's pg_sleep was cancelled");
    quota_error(&result.expect_err("stopped"), "max_rows_per_statement = 1000");
    assert_eq!(sleeping_upstream(&grant.id).await, 0);
    let row = client.query_one("SELECT $1::int + 1", &[&41i32]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
    // Under the limit, the same statement returns everything.
    let rows = client
        .query("SELECT g FROM generate_series(1, $1) g", &[&1000i32])
        .await
        .unwrap();
    assert_eq!(rows.len(), 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_copy_to_is_stopped_with_tokio_postgres_and_psql() {
    let inst = start().await;
    let (grant, token) = inst.grant("alice", "capped", "10m").await;
    let copy = "COPY (SELECT g, repeat('x', 100), CASE WHEN g = 5000 THEN pg_sleep(600) END \
                FROM generate_series(1, 5000) g) TO STDOUT";
    let client = connect(&inst.conn_string("alice", &token, "disable")).await;
    let drained = tokio::time::timeout(DEADLINE, async {
        let stream = client.copy_out(copy).await?;
        futures::pin_mut!(stream);
        let mut bytes = 0;
        while let Some(chunk) = stream.next().await {
            bytes += chunk?.len();
        }
        Ok::<usize, tokio_postgres::Error>(bytes)
    })
    .await
    .expect("the stopped COPY's pg_sleep was cancelled");
    quota_error(
        &drained.expect_err("stopped"),
        "max_result_bytes_per_statement = 64kB",
    );
    assert_eq!(sleeping_upstream(&grant.id).await, 0);
    assert_eq!(scalar(&client, "SELECT 'still here'").await, "still here");

    let conn = common::proxy_conn(&inst, "alice", "sslmode=disable");
    let out = tokio::time::timeout(DEADLINE, psql(&conn, &token, copy))
        .await
        .expect("psql's COPY was stopped");
    assert!(!out.success);
    assert!(
        out.stderr.contains(
            "ERROR:  timebox: result exceeds max_result_bytes_per_statement = 64kB of role \"capped\""
        ),
        "{}",
        out.stderr
    );
    assert!(out.stdout.len() <= 64 * 1024, "{} bytes", out.stdout.len());
    let out = tokio::time::timeout(DEADLINE, psql(&conn, &token, SLOW_TAIL))
        .await
        .expect("psql's SELECT was stopped");
    assert!(
        out.stderr
            .contains("ERROR:  timebox: result exceeds max_rows_per_statement = 1000 of role \"capped\""),
        "{}",
        out.stderr
    );
    assert_eq!(sleeping_upstream(&grant.id).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grant_bytes_add_up_over_statements_and_sessions() {
    let inst = start().await;
    let (_, token) = inst.grant("alice", "metered", "10m").await;
    // About 10 kB per statement (ten rows of a kilobyte).
    let sql = "SELECT repeat('x', 1000) FROM generate_series(1, 10)";
    let first = connect(&inst.conn_string("alice", &token, "disable")).await;
    assert_eq!(first.simple_query(sql).await.unwrap().len(), 12);
    assert_eq!(first.simple_query(sql).await.unwrap().len(), 12);
    let second = connect(&inst.conn_string("alice", &token, "disable")).await;
    assert_eq!(second.simple_query(sql).await.unwrap().len(), 12);
    let e = second
        .simple_query(sql)
        .await
        .expect_err("over 32kB for the grant");
    quota_error(&e, "max_result_bytes_per_grant = 32kB");
    let e = first
        .simple_query(sql)
        .await
        .expect_err("the grant's budget is spent");
    quota_error(&e, "max_result_bytes_per_grant = 32kB");
    // Statements without result rows still run.
    assert_eq!(first.simple_query("SELECT WHERE false").await.unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_without_quotas_or_under_them_get_the_upstreams_bytes_unchanged() {
    use common::cluster::{READ_PASSWORD, READ_USER};
    let inst = start().await;
    let port = common::cluster::shared_cluster().port();
    let upstream = format!("127.0.0.1:{port}").parse().unwrap();
    // `read` sets no quota: a result spanning many reads. `capped` allows 1000 rows and 64 kB per
    // statement: 900 rows of about 45 bytes and a COPY under it.
    let cases = [
        (
            "read",
            "SELECT g, md5(g::text), repeat('y', g % 300) FROM generate_series(1, 2000) g; \
             COPY (SELECT g, md5(g::text) FROM generate_series(1, 2000) g) TO STDOUT",
        ),
        (
            "capped",
            "SELECT g, md5(g::text) FROM generate_series(1, 900) g; \
             COPY (SELECT g, md5(g::text) FROM generate_series(1, 900) g) TO STDOUT",
        ),
    ];
    for (role, sql) in cases {
        let (mut direct, mut dbuf, _) = raw::login_to(upstream, READ_USER, "shop", READ_PASSWORD).await;
        let expected = answer_bytes(&mut direct, &mut dbuf, sql).await;
        assert!(expected.len() > 60_000, "{} bytes", expected.len());
        let (_, token) = inst.grant("alice", role, "10m").await;
        let (mut s, mut buf) = raw::login(inst.proxy_addr, "alice", &token).await;
        assert_eq!(answer_bytes(&mut s, &mut buf, sql).await, expected, "role {role}");
    }
}
