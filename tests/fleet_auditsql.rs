//! The auditors' SQL endpoint for the whole fleet (issue 11 item 6): two timebox instances on one
//! PostgreSQL store; an auditor on B, with psql to `dbname=timebox_audit`, sees the statements
//! sent through A and B with their instance (A's arrive through B's fleet mirror of the central
//! audit table, within its lag); SQLite's authorizer still refuses writes, ATTACH and PRAGMA with
//! the mirror attached; and the mirror never replaces a row it holds with different content.

mod common;

use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;

use common::http::call;
use common::{Options, StoreDatabase, TestInstance, AUDITOR_TOKEN};

/// Generous bound for ship (500 ms) + mirror (1 s) on a loaded 2-core machine. Not a speed
/// target: the test polls until the rows are there.
const MIRRORED: Duration = Duration::from_secs(60);

/// Instance `name` on the store (reconcile far off: this file is not about grant changes).
async fn instance(db: &StoreDatabase, name: &str) -> TestInstance {
    common::fleet::instance_on(
        db,
        name,
        &common::fleet::timings("60s", "10m"),
        Options::default(),
    )
    .await
}

/// Sends `sql` through `inst` as `user` (a tokio-postgres session).
async fn statement_through(inst: &TestInstance, user: &str, sql: &str) {
    let (_, token) = common::fleet::issue_read(inst, user, "30m", "fleet auditsql test").await;
    let client = common::fleet::session(inst, user, &token).await;
    client.simple_query(sql).await.unwrap();
}

/// psql as the auditor to `timebox_audit` on `inst` (unaligned, tuples only).
async fn auditor_psql(inst: &TestInstance, sql: &str) -> common::PsqlOutput {
    let conn = format!(
        "host=127.0.0.1 port={} user=audrey dbname=timebox_audit sslmode=disable",
        inst.proxy_addr.port()
    );
    common::psql(&conn, AUDITOR_TOKEN, sql).await
}

/// The (instance, sql) of the statements containing `marker` the auditor on `inst` sees.
async fn statements_seen(inst: &TestInstance, marker: &str) -> Vec<String> {
    let out = auditor_psql(
        inst,
        &format!(
            "SELECT instance || ' ' || sql FROM statements WHERE sql LIKE '%{marker}%' \
             AND target <> 'timebox_audit' ORDER BY instance"
        ),
    )
    .await;
    assert!(out.success, "{out:?}");
    out.stdout.lines().map(str::to_owned).collect()
}

/// Polls [`statements_seen`] until it is `expected` or [`MIRRORED`] has passed; the last answer.
async fn seen_within_the_lag(inst: &TestInstance, marker: &str, expected: &[String]) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + MIRRORED;
    loop {
        let seen = statements_seen(inst, marker).await;
        if seen == expected || tokio::time::Instant::now() >= deadline {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auditor_on_b_sees_statements_through_a_and_b_with_their_instance() {
    let db = Arc::new(StoreDatabase::create_async().await);
    let a = instance(&db, "tb-a").await;
    let b = instance(&db, "tb-b").await;
    statement_through(&a, "alice", "SELECT 1 AS via_tb_a_sql").await;
    statement_through(&b, "bob", "SELECT 2 AS via_tb_b_sql").await;

    let expected = [
        "tb-a SELECT 1 AS via_tb_a_sql".to_owned(),
        "tb-b SELECT 2 AS via_tb_b_sql".to_owned(),
    ];
    let seen = seen_within_the_lag(&b, "via_tb_", &expected).await;
    assert_eq!(seen, expected, "what the auditor on tb-b saw");

    // Every view has the instance column; the mirror says how fresh it is per instance.
    let out = auditor_psql(
        &b,
        "SELECT count(DISTINCT instance) FROM events WHERE instance IN ('tb-a', 'tb-b')",
    )
    .await;
    assert_eq!(out.stdout.trim(), "2", "{out:?}");
    let out = auditor_psql(
        &b,
        "SELECT instance, through_seq > 0, synced_at > datetime('now', '-1 day') FROM timebox_mirror",
    )
    .await;
    assert_eq!(out.stdout.trim(), "tb-a|1|1", "{out:?}");
    let out = auditor_psql(
        &b,
        "SELECT view_name FROM timebox_views WHERE view_name = 'timebox_mirror'",
    )
    .await;
    assert_eq!(out.stdout.trim(), "timebox_mirror", "{out:?}");
    let metrics = b.state.proxy.metrics.render().unwrap();
    assert!(metrics.contains("timebox_audit_mirror_age_seconds "), "{metrics}");
    assert!(b.state.proxy.metrics.audit_ship.mirror.mirrored_total.get() > 0);
}

/// SQLite's authorizer decides on the mirror as on the local index: the nested-comment tricks that
/// get past PostgreSQL's parser (see tests/audit_sql.rs) still cannot write, ATTACH, PRAGMA or
/// read the mirror's own tables, and the plain forms are refused too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_authorizer_still_refuses_writes_attach_and_pragma_with_the_mirror_attached() {
    let db = Arc::new(StoreDatabase::create_async().await);
    let a = instance(&db, "tb-a").await;
    let b = instance(&db, "tb-b").await;
    statement_through(&a, "alice", "SELECT 1 AS before_the_tricks").await;
    let expected = ["tb-a SELECT 1 AS before_the_tricks".to_owned()];
    let seen = seen_within_the_lag(&b, "before_the_tricks", &expected).await;
    assert_eq!(seen, expected, "A's statement reached B's mirror");
    let attached = b.dir.path().join("attached.db");
    let cases = [
        "DELETE FROM events".to_owned(),
        "/* /* */ DELETE FROM fleet.audit_events -- */".to_owned(),
        "/* /* */ UPDATE fleet.audit_events SET payload = '' -- */".to_owned(),
        "/* /* */ INSERT INTO fleet.mirror_marks VALUES ('x', 1, '', '') -- */".to_owned(),
        format!("/* /* */ ATTACH DATABASE '{}' AS x -- */", attached.display()),
        "ATTACH DATABASE '/etc/passwd' AS x".to_owned(),
        "/* /* */ PRAGMA fleet.writable_schema = ON -- */".to_owned(),
        "PRAGMA database_list".to_owned(),
        "SELECT * FROM events /* /* */ , fleet.sqlite_master -- */".to_owned(),
        "SELECT * FROM fleet.audit_events".to_owned(),
    ];
    for sql in &cases {
        let out = auditor_psql(&b, sql).await;
        assert!(!out.success, "{sql} ran: {out:?}");
        assert!(
            out.stderr.contains("42501") || out.stderr.contains("timebox_audit"),
            "{sql}: {}",
            out.stderr
        );
    }
    assert!(!attached.exists(), "ATTACH created {}", attached.display());
    assert_eq!(
        statements_seen(&b, "before_the_tricks").await,
        ["tb-a SELECT 1 AS before_the_tricks"],
        "the mirror is unchanged"
    );
}

/// A row edited in the central table after B mirrored it: verify (which reads the central table)
/// reports it; B's mirror keeps the copy it made, and when it reads the row again (its marks
/// lost) it neither replaces its copy nor stays quiet: it counts a conflict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_central_row_is_reported_and_never_replaces_the_mirrors_copy() {
    let db = Arc::new(StoreDatabase::create_async().await);
    let a = instance(&db, "tb-a").await;
    let b = instance(&db, "tb-b").await;
    statement_through(&a, "alice", "SELECT 1 AS original_text").await;
    let expected = ["tb-a SELECT 1 AS original_text".to_owned()];
    let seen = seen_within_the_lag(&b, "original_text", &expected).await;
    assert_eq!(seen, expected, "A's statement reached B's mirror");

    db.psql(
        "UPDATE timebox.audit_records SET payload = replace(payload, 'original_text', 'edited_text') \
         WHERE instance = 'tb-a' AND payload LIKE '%original_text%'",
    );
    let (status, report): (StatusCode, Value) = call(
        &b.admin_url(),
        Method::GET,
        "/v1/audit/verify",
        AUDITOR_TOKEN,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["ok"], false, "{report}");
    assert_eq!(report["first_bad"]["instance"], "tb-a", "{report}");

    // B's mirror forgets how far it got: the next round reads every row of tb-a again.
    let mirror = b.audit_db().with_file_name("fleet-audit.db");
    tokio::task::spawn_blocking(move || {
        let conn = rusqlite::Connection::open(mirror).unwrap();
        conn.busy_timeout(Duration::from_secs(30)).unwrap();
        conn.execute("DELETE FROM mirror_marks", []).unwrap();
    })
    .await
    .unwrap();
    let metrics = b.state.proxy.metrics.clone();
    let counted = common::eventually(MIRRORED, || {
        let metrics = metrics.clone();
        async move { metrics.audit_ship.mirror.conflicts_total.get() >= 1 }
    })
    .await;
    assert!(counted, "the edited row was reported as a conflict");
    assert_eq!(
        statements_seen(&b, "_text").await,
        ["tb-a SELECT 1 AS original_text"],
        "the mirror kept the row it had"
    );
}
