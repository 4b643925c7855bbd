//! `/metrics` as Prometheus reads it: the exposition is parsed with a Prometheus text-format parser
//! and the counters and gauges are checked to move as the test acts (sessions, denied statements,
//! failed logins, grants, requests).

mod common;

use prometheus_parse::{Scrape, Value};
use tokio_postgres::NoTls;

use common::{Options, ADMIN_TOKEN, AUDITOR_TOKEN, REQUESTER_TOKEN};

async fn scrape(inst: &common::TestInstance, token: &str) -> Scrape {
    let resp = reqwest::Client::new()
        .get(format!("{}/metrics", inst.admin_url()))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = resp.text().await.unwrap();
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("valid Prometheus text format")
}

/// The sum of `name`'s samples whose labels include all of `labels`.
fn sum(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == name)
        .filter(|x| labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_and_gauges_move_as_the_proxy_is_used() {
    let inst = common::start(Options::default()).await;
    let before = scrape(&inst, ADMIN_TOKEN).await;
    assert_eq!(sum(&before, "timebox_grants", &[("state", "active")]), 0.0);
    assert_eq!(sum(&before, "timebox_requests_pending", &[]), 0.0);
    assert_eq!(sum(&before, "timebox_break_glass_grants_active", &[]), 0.0);
    assert!(before
        .samples
        .iter()
        .any(|s| s.metric == "timebox_audit_queue_depth"));

    let (_grant, token) = inst.grant("alice", "read", "10m").await;
    let (client, connection) = tokio_postgres::connect(&inst.conn_string("alice", &token, "disable"), NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client.simple_query("SELECT 1").await.unwrap();
    // Same shape, another literal: answered by the classification cache's literal-shape level.
    client.simple_query("SELECT 2").await.unwrap();
    let denied = client.simple_query("CREATE TABLE nope (a int)").await;
    assert_eq!(denied.unwrap_err().as_db_error().unwrap().code().code(), "42501");
    let wrong = tokio_postgres::connect(&inst.conn_string("alice", "tbx_wrong", "disable"), NoTls).await;
    assert!(wrong.is_err());
    let filed = reqwest::Client::new()
        .post(format!("{}/v1/requests", inst.admin_url()))
        .bearer_auth(REQUESTER_TOKEN)
        .json(&serde_json::json!({"target": "shop", "role": "read", "ttl": "5m", "reason": "metrics"}))
        .send()
        .await
        .unwrap();
    assert_eq!(filed.status(), 201);

    let after = scrape(&inst, AUDITOR_TOKEN).await;
    let moved = |name: &str, labels: &[(&str, &str)]| sum(&after, name, labels) - sum(&before, name, labels);
    assert_eq!(
        moved("timebox_sessions_total", &[("target", "shop"), ("role", "read")]),
        1.0
    );
    assert_eq!(moved("timebox_sessions_active", &[("target", "shop")]), 1.0);
    assert!(moved("timebox_statements_total", &[("decision", "deny")]) >= 1.0);
    assert!(
        moved(
            "timebox_statements_total",
            &[("decision", "allow"), ("class", "read")]
        ) >= 1.0
    );
    assert!(moved("timebox_auth_failures_total", &[]) >= 1.0);
    assert!(moved("timebox_relayed_bytes_total", &[("direction", "to_client")]) > 0.0);
    assert_eq!(sum(&after, "timebox_grants", &[("state", "active")]), 1.0);
    assert_eq!(sum(&after, "timebox_requests_pending", &[]), 1.0);
    // See: issue 17: a gauge named like a counter broke the `_total` rule; it is a counter now.
    assert!(moved("timebox_classify_shape_hits_total", &[]) >= 1.0);
    assert!(after.samples.iter().any(|s| {
        s.metric == "timebox_classify_shape_hits_total" && matches!(s.value, Value::Counter(_))
    }));
    assert!(after
        .samples
        .iter()
        .any(|s| s.metric == "timebox_audit_index_lag_records"));
}
