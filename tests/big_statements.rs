//! Huge statements through a real proxy and a real PostgreSQL (issue 16, finding 6): one session's
//! multi-megabyte statements must not stall the others or the admin API, a statement over
//! `proxy.max_statement_bytes` is refused with 54000 without ending the session, and the audit
//! record of a long statement is bounded, flagged and hashed.

mod common;

use std::time::Duration;

use common::pg::{audit_records, connect};
use common::Options;
use tokio_postgres::SimpleQueryMessage;

async fn select_one(client: &tokio_postgres::Client) {
    let rows = client.simple_query("SELECT 1").await.expect("SELECT 1");
    assert!(rows.iter().any(|m| matches!(m, SimpleQueryMessage::Row(_))));
}

/// A write statement of at least `bytes` bytes (denied for role read once classified).
fn big_delete(bytes: usize) -> String {
    let mut sql = String::from("DELETE FROM items WHERE id IN (");
    let mut i = 0u64;
    while sql.len() < bytes {
        sql.push_str(&i.to_string());
        sql.push(',');
        i += 1;
    }
    sql.push_str("0)");
    sql
}

/// Regression: a statement of any size was accepted (50 MB went through) and audited whole. Now
/// one over `proxy.max_statement_bytes` is refused with ERROR 54000 naming the sizes and the key,
/// in the simple and the extended protocol, the session goes on, and the audit records are
/// bounded: the first 64 KiB, the whole length, the SHA-256 of the whole text, `sql_truncated`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_over_the_limit_is_refused_with_54000_and_audited_bounded() {
    let inst = common::start(Options {
        proxy_extra: "max_statement_bytes = 200000".into(),
        ..Options::default()
    })
    .await;
    let (_grant, token) = inst.grant("alice", "read", "10m").await;
    let client = connect(&inst.conn_string("alice", &token, "disable")).await;

    let too_long = format!("SELECT '{}' AS too_long", "x".repeat(300_000));
    for extended in [false, true] {
        let error = if extended {
            client.prepare(&too_long).await.map(|_| ()).unwrap_err()
        } else {
            client.simple_query(&too_long).await.map(|_| ()).unwrap_err()
        };
        let db = error.as_db_error().unwrap_or_else(|| panic!("{error:?}"));
        assert_eq!(db.code().code(), "54000", "{db:?}");
        assert_eq!(db.severity(), "ERROR");
        let message = db.message();
        assert!(
            message.contains(&too_long.len().to_string())
                && message.contains("200000")
                && message.contains("proxy.max_statement_bytes"),
            "{message}"
        );
        // The session goes on.
        select_one(&client).await;
    }

    // A long statement under the limit runs; its record is bounded too.
    let long_ok = format!("SELECT length('{}') AS long_ok", "y".repeat(150_000));
    client
        .simple_query(&long_ok)
        .await
        .expect("a long statement under the limit runs");
    drop(client);
    tokio::time::sleep(Duration::from_millis(300)).await;
    inst.state.audit.wait_indexed().await.unwrap();
    let records = audit_records(&inst.audit_db());
    let statements: Vec<&serde_json::Value> = records
        .iter()
        .filter(|(k, _)| k == "statement")
        .map(|(_, p)| p)
        .collect();
    let sha256 = |s: &str| {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(s.as_bytes()))
    };
    let denied: Vec<_> = statements
        .iter()
        .filter(|p| p["sql_bytes"] == too_long.len())
        .collect();
    assert_eq!(denied.len(), 2, "simple and extended: {statements:?}");
    for p in denied {
        assert_eq!(p["decision"], "deny", "{p}");
        assert_eq!(p["class"], "unparsed", "{p}");
        assert_eq!(p["sql_truncated"], true);
        assert_eq!(p["sql_sha256"], sha256(&too_long).as_str());
        let sql = p["sql"].as_str().unwrap();
        assert!(
            sql.len() <= 64 * 1024 && too_long.starts_with(sql),
            "{}",
            sql.len()
        );
        assert!(p["reason"]
            .as_str()
            .unwrap()
            .contains("proxy.max_statement_bytes"));
    }
    let allowed = statements
        .iter()
        .find(|p| p["sql_bytes"] == long_ok.len())
        .unwrap_or_else(|| panic!("no bounded record of the long statement: {statements:?}"));
    assert_eq!(allowed["decision"], "allow");
    assert_eq!(allowed["sql_truncated"], true);
    assert_eq!(allowed["sql_sha256"], sha256(&long_ok).as_str());
    assert!(allowed["sql"].as_str().unwrap().len() <= 64 * 1024);
    // Short statements stay whole and unflagged.
    let short = statements.iter().find(|p| p["sql"] == "SELECT 1").unwrap();
    assert_eq!(short["sql_truncated"], false);
    assert!(short["sql_bytes"].is_null() && short["sql_sha256"].is_null());
}

/// Regression: classification ran on the async workers, so a multi-megabyte statement from one
/// session stalled every other session and `/healthz` for seconds. One worker thread makes the
/// stall certain: while session A's big statement is being checked (its bytes are in, its answer
/// is not), session B must complete several round trips and `/healthz` must answer. Before the
/// fix A's check held the only worker, so A's answer always came first. Ordering, not wall time.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn big_statements_are_checked_without_stalling_other_sessions() {
    let inst = common::start(Options {
        proxy_extra: "max_statement_bytes = 8388608".into(),
        ..Options::default()
    })
    .await;
    let (_ga, token_a) = inst.grant("alice", "read", "10m").await;
    let (_gb, token_b) = inst.grant("bob", "read", "10m").await;
    let a = std::sync::Arc::new(connect(&inst.conn_string("alice", &token_a, "disable")).await);
    let session_a = inst.state.proxy.sessions.list().pop().expect("session A");
    let b = connect(&inst.conn_string("bob", &token_b, "disable")).await;
    let http = reqwest::Client::new();
    let healthz = format!("{}/healthz", inst.admin_url());

    let big = std::sync::Arc::new(big_delete(1536 * 1024));
    for round in 0..4 {
        let before = session_a.stats().bytes_from_client;
        let (client, sql) = (a.clone(), big.clone());
        let answer = tokio::spawn(async move { client.simple_query(&sql).await.map(|_| ()) });
        // Wait until the proxy has read the whole statement: from then on it is being checked.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        while session_a.stats().bytes_from_client < before + big.len() as u64 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the proxy never read the statement"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if round == 3 {
            // Kills are honoured while a statement is being checked.
            session_a.kill("test", "killed during a big statement's check");
            let error = answer.await.unwrap().unwrap_err();
            let code = error.as_db_error().map(|e| e.code().code().to_owned());
            assert!(code.as_deref() == Some("57P01") || error.is_closed(), "{error:?}");
            break;
        }
        for _ in 0..3 {
            select_one(&b).await;
        }
        let status = http.get(&healthz).send().await.expect("healthz").status();
        assert_eq!(status, reqwest::StatusCode::OK);
        assert!(
            !answer.is_finished(),
            "round {round}: session A's big statement was answered before B's three queries and /healthz: the check stalled the workers"
        );
        let error = answer
            .await
            .unwrap()
            .expect_err("a DELETE is denied for role read");
        let db = error.as_db_error().unwrap_or_else(|| panic!("{error:?}"));
        assert_eq!(db.code().code(), "42501", "{db:?}");
    }
    select_one(&b).await;
}
