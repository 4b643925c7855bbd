//! A grant issued by any path is in the audit trail, because the grant service records it, not each
//! caller: the admin API, a request's final approval, the demo's setup step and a direct call.
//!
//! Guards against (issue 10, item 2): `grant_issued` records written by the HTTP handlers only, so the
//! demo (and any other caller of `GrantService::issue`) issued grants the audit trail never saw.

mod common;

use std::collections::HashMap;

use common::{Options, ADMIN_TOKEN, APPROVER_TOKEN, REQUESTER_TOKEN};
use serde_json::{json, Value};

async fn post(inst: &common::TestInstance, token: &str, path: &str, body: Value) -> Value {
    let a = common::http::post(&inst.admin_url(), path, token, body)
        .await
        .expect_json();
    let (status, body) = (a.status, a.json);
    assert!(status.is_success(), "{path}: {status} {body}");
    body
}

/// The `grant_issued` payloads in the audit database, in order.
fn grant_issued_records(inst: &common::TestInstance) -> Vec<Value> {
    let conn = rusqlite::Connection::open(inst.audit_db()).unwrap();
    let mut stmt = conn
        .prepare("SELECT payload FROM audit_events WHERE kind = 'grant_issued' ORDER BY seq")
        .unwrap();
    let rows = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(|p| serde_json::from_str(&p.unwrap()).unwrap())
        .collect();
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_issued_by_any_path_has_exactly_one_grant_issued_record() {
    // The upstream is never contacted: port 1 is fine.
    let inst = common::start_with_config(|dir| common::config_text(&Options::default(), dir, 1)).await;

    let api = post(
        &inst,
        ADMIN_TOKEN,
        "/v1/grants",
        json!({"user": "dave", "target": "shop", "role": "read", "ttl": "30m", "reason": "INC-1"}),
    )
    .await;
    let api_id = api["id"].as_str().unwrap().to_owned();

    let request = post(
        &inst,
        REQUESTER_TOKEN,
        "/v1/requests",
        json!({"target": "shop", "role": "read", "ttl": "30m", "reason": "INC-2"}),
    )
    .await;
    let approved = post(
        &inst,
        APPROVER_TOKEN,
        &format!("/v1/requests/{}/approve", request["id"].as_str().unwrap()),
        json!({"reason": "ok"}),
    )
    .await;
    let request_id = approved["grant_id"]
        .as_str()
        .expect("the approval issued a grant")
        .to_owned();

    let [alice, bob] = timebox::demo::issue_grants(&inst.state)
        .await
        .expect("the demo's grants are issued");

    let (direct, _) = inst.grant("carol", "read", "10m").await;

    inst.state.audit.wait_indexed().await.unwrap();
    let records = grant_issued_records(&inst);
    let mut by_id: HashMap<String, Vec<&Value>> = HashMap::new();
    for r in &records {
        by_id
            .entry(r["grant_id"].as_str().unwrap().to_owned())
            .or_default()
            .push(r);
    }
    for (path, id, user, created_by) in [
        ("admin API", api_id.as_str(), "dave", "ops"),
        ("request approval", request_id.as_str(), "alice", "bob"),
        ("demo (alice)", alice.grant.id.as_str(), "alice", "demo"),
        ("demo (bob)", bob.grant.id.as_str(), "bob", "demo"),
        ("GrantService::issue", direct.id.as_str(), "carol", "test-harness"),
    ] {
        let found = by_id.get(id).map(Vec::as_slice).unwrap_or_default();
        assert_eq!(
            found.len(),
            1,
            "{path}: grant {id} has {} grant_issued records: {records:?}",
            found.len()
        );
        assert_eq!(found[0]["user"], user, "{path}");
        assert_eq!(found[0]["created_by"], created_by, "{path}");
        assert_eq!(found[0]["break_glass"], false, "{path}");
    }
    assert_eq!(records.len(), 5, "one record per grant: {records:?}");
    let everything: String = records.iter().map(Value::to_string).collect();
    for token in [&alice.token, &bob.token] {
        assert!(
            !everything.contains(token.as_str()),
            "a token must never be audited"
        );
    }
    assert!(timebox::audit::verify_file(&inst.audit_db(), &[])
        .unwrap()
        .first_bad
        .is_none());
}
