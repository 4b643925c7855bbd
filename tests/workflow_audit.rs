//! Requests and approvals are on the audit record (issue 4 grant lifecycle, with issue 5's workflow).

mod common;

use common::Options;
use serde_json::{json, Value};

async fn call(inst: &common::TestInstance, token: &str, path: &str, body: Value) -> Value {
    let r = reqwest::Client::new()
        .post(format!("{}{path}", inst.admin_url()))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{path}: {}", r.status());
    r.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_lifecycle_is_audited_without_tokens() {
    let inst = common::start(Options::default()).await;
    let ask = json!({"target": "shop", "role": "read", "ttl": "30m", "reason": "INC-7 check orders", "ticket": "INC-7"});
    let created = call(&inst, common::REQUESTER_TOKEN, "/v1/requests", ask.clone()).await;
    let id = created["id"].as_str().expect("request id").to_owned();
    call(
        &inst,
        common::APPROVER_TOKEN,
        &format!("/v1/requests/{id}/approve"),
        json!({"reason": "ok"}),
    )
    .await;
    let fetched = call(
        &inst,
        common::REQUESTER_TOKEN,
        &format!("/v1/requests/{id}/token"),
        json!({}),
    )
    .await;
    let token = fetched["token"].as_str().unwrap().to_owned();
    let other = call(&inst, common::REQUESTER_TOKEN, "/v1/requests", ask).await;
    let other_id = other["id"].as_str().unwrap().to_owned();
    call(
        &inst,
        common::APPROVER_TOKEN,
        &format!("/v1/requests/{other_id}/deny"),
        json!({"reason": "duplicate"}),
    )
    .await;

    inst.state.audit.wait_indexed().await.unwrap();
    let db = inst.audit_db();
    let conn = rusqlite::Connection::open(&db).unwrap();
    let mut stmt = conn
        .prepare("SELECT kind, payload FROM audit_events WHERE kind IN ('access_request', 'grant_issued') ORDER BY seq")
        .unwrap();
    let rows: Vec<(String, Value)> = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
        .unwrap()
        .map(|r| {
            let (k, p) = r.unwrap();
            (k, serde_json::from_str(&p).unwrap())
        })
        .collect();
    let trail: Vec<String> = rows
        .iter()
        .map(|(k, p)| {
            if k == "access_request" {
                format!(
                    "{}:{}:{}",
                    p["request_id"].as_str().unwrap(),
                    p["action"].as_str().unwrap(),
                    p["actor"].as_str().unwrap()
                )
            } else {
                "grant_issued".to_owned()
            }
        })
        .collect();
    assert_eq!(
        trail,
        vec![
            format!("{id}:created:alice"),
            format!("{id}:approved:bob"),
            "grant_issued".to_owned(),
            format!("{id}:token_fetched:alice"),
            format!("{other_id}:created:alice"),
            format!("{other_id}:denied:bob"),
        ]
    );
    let approved = &rows[1].1;
    assert!(
        approved["grant_id"].as_str().unwrap().starts_with("g_"),
        "{approved}"
    );
    assert_eq!(approved["ticket"], "INC-7");
    let everything: String = rows.iter().map(|(_, p)| p.to_string()).collect();
    assert!(!everything.contains(&token), "the token must never be audited");
    assert!(timebox::audit::verify_file(&db, &[]).unwrap().first_bad.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_session_is_audited_with_who_and_why() {
    let inst = common::start(Options::default()).await;
    let (grant, token) = inst.grant("alice", "read", "10m").await;
    let (client, connection) = tokio_postgres::connect(
        &inst.conn_string("alice", &token, "disable"),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    client.simple_query("SELECT 1").await.unwrap();
    let http = reqwest::Client::new();
    let list: Value = http
        .get(format!("{}/v1/sessions", inst.admin_url()))
        .bearer_auth(common::ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let session = list["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["grant_id"] == grant.id.as_str())
        .expect("the live session is listed")["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = http
        .delete(format!("{}/v1/sessions/{session}", inst.admin_url()))
        .bearer_auth(common::ADMIN_TOKEN)
        .json(&json!({"reason": "suspicious query"}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    inst.state.audit.wait_indexed().await.unwrap();
    let db = inst.audit_db();
    let mut end = None;
    for _ in 0..50 {
        let conn = rusqlite::Connection::open(&db).unwrap();
        end = conn
            .query_row(
                "SELECT payload FROM audit_events WHERE kind = 'session_end' AND session_id = ?1",
                [&session],
                |r| r.get::<_, String>(0),
            )
            .ok();
        if end.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let end: Value = serde_json::from_str(&end.expect("session_end recorded")).unwrap();
    assert_eq!(end["reason"], "killed");
    assert_eq!(end["ended_by"], "ops (suspicious query)");
}
