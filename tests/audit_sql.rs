//! The auditors' SQL endpoint: psql to `dbname=timebox_audit` with an admin-API token.

mod common;

use common::{psql, Options};

fn audit_conn(inst: &common::TestInstance, user: &str) -> String {
    format!(
        "host=127.0.0.1 port={} user={user} dbname=timebox_audit sslmode=require",
        inst.proxy_addr.port()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auditors_query_the_trail_with_psql_and_cannot_change_it() {
    let inst = common::start(Options::default()).await;
    let (grant, token) = inst.grant("alice", "read", "10m").await;
    let mark = common::cluster::unique_name("sqlmark");
    let denied = psql(
        &common::proxy_conn(&inst, "alice", "sslmode=disable"),
        &token,
        &format!("DELETE FROM items WHERE name = '{mark}'"),
    )
    .await;
    assert!(!denied.success);

    // "every denied statement by alice" is one query
    let out = psql(
        &audit_conn(&inst, "audrey"),
        common::AUDITOR_TOKEN,
        "SELECT grant_id, sql FROM statements WHERE \"user\" = 'alice' AND decision = 'deny'",
    )
    .await;
    assert!(out.success, "{out:?}");
    assert!(
        out.stdout.contains(&grant.id) && out.stdout.contains(&mark),
        "{}",
        out.stdout
    );

    // JSON and time functions of the audit store work
    let out = psql(
        &audit_conn(&inst, "audrey"),
        common::AUDITOR_TOKEN,
        "SELECT count(*) FROM events WHERE ts > datetime('now', '-1 day') AND json_extract(payload, '$.user') = 'alice'",
    )
    .await;
    assert!(out.success, "{out:?}");
    assert!(out.stdout.trim().parse::<i64>().unwrap() >= 2, "{}", out.stdout);

    // writes, DDL and the raw table are refused
    for sql in [
        "DELETE FROM events",
        "DROP VIEW statements",
        "SELECT * FROM audit_events",
    ] {
        let out = psql(&audit_conn(&inst, "audrey"), common::AUDITOR_TOKEN, sql).await;
        assert!(!out.success, "{sql} must be refused");
        assert!(out.stderr.contains("timebox_audit"), "{sql}: {}", out.stderr);
    }

    // the auditor's own queries are audited
    let out = psql(
        &audit_conn(&inst, "audrey"),
        common::AUDITOR_TOKEN,
        "SELECT count(*) FROM statements WHERE target = 'timebox_audit' AND \"user\" = 'audrey'",
    )
    .await;
    assert!(out.success, "{out:?}");
    assert!(out.stdout.trim().parse::<i64>().unwrap() >= 3, "{}", out.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_auditors_wrong_tokens_and_plaintext_are_refused() {
    let inst = common::start(Options::default()).await;
    // a requester token is a valid principal but not an auditor
    let out = psql(&audit_conn(&inst, "alice"), common::REQUESTER_TOKEN, "SELECT 1").await;
    assert!(!out.success);
    assert!(
        out.stderr.contains("requires the auditor or admin role"),
        "{}",
        out.stderr
    );
    // the auditor's token under another name
    let out = psql(&audit_conn(&inst, "ops"), common::AUDITOR_TOKEN, "SELECT 1").await;
    assert!(!out.success);
    assert!(
        out.stderr
            .contains("password authentication failed for user \"ops\""),
        "{}",
        out.stderr
    );
    // plaintext: the token must not cross the wire unencrypted
    let plain = format!(
        "host=127.0.0.1 port={} user=audrey dbname=timebox_audit sslmode=disable",
        inst.proxy_addr.port()
    );
    let out = psql(&plain, common::AUDITOR_TOKEN, "SELECT 1").await;
    assert!(!out.success);
    assert!(
        out.stderr.contains("requires an encrypted connection"),
        "{}",
        out.stderr
    );
}
