//! The admin HTTP API over real HTTP against a real instance: authentication, role rules, the JSON
//! error shape, and that a grant's token is shown once and never again.

mod common;

use std::future::IntoFuture;
use std::sync::Arc;

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use common::http::{self, Answer};
use common::{ADMIN_TOKEN, APPROVER_TOKEN, AUDITOR_TOKEN, REQUESTER_TOKEN};

/// Every answer of the admin API is JSON: the test fails if one is not.
async fn send(base: &str, method: Method, path: &str, token: Option<&str>, body: Option<Value>) -> Answer {
    http::send(base, method, path, token, body).await.expect_json()
}

/// [`send`] `POST` with a bearer token and a JSON body.
async fn post(base: &str, path: &str, token: &str, body: Value) -> Answer {
    send(base, Method::POST, path, Some(token), Some(body)).await
}

/// [`send`] `GET` with a bearer token.
async fn get(base: &str, path: &str, token: &str) -> Answer {
    send(base, Method::GET, path, Some(token), None).await
}

async fn answer(resp: reqwest::Response) -> Answer {
    http::answer(resp).await.expect_json()
}

fn issue_body(user: &str, target: &str, role: &str, ttl: &str) -> Value {
    json!({ "user": user, "target": target, "role": role, "ttl": ttl, "reason": "incident 4711" })
}

/// Issues through the API as the admin; returns the 201 body.
async fn issue(base: &str, user: &str, target: &str, role: &str) -> Value {
    let a = post(
        base,
        "/v1/grants",
        ADMIN_TOKEN,
        issue_body(user, target, role, "30m"),
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    a.json
}

fn ids(list: &Value) -> Vec<String> {
    list["grants"]
        .as_array()
        .expect("grants array")
        .iter()
        .map(|g| g["id"].as_str().unwrap().to_owned())
        .collect()
}

/// A 422 `invalid_request` naming `field` (case `what` of a table).
fn assert_invalid_field(a: &Answer, what: &str, field: &str) {
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{what}: {}", a.text);
    assert_eq!(a.json["code"], "invalid_request", "{what}: {}", a.text);
    assert_eq!(a.json["field"], field, "{what}: {}", a.text);
}

fn assert_error(a: &Answer, status: StatusCode, code: &str) {
    assert_eq!(a.status, status, "{}", a.text);
    assert_eq!(a.json["code"], code, "{}", a.text);
    assert!(
        a.json["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{}",
        a.text
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_answers_without_authentication() {
    let tb = common::start(common::Options::default()).await;
    let a = send(&tb.admin_url(), Method::GET, "/healthz", None, None).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json, json!({ "status": "ok" }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_returns_the_token_once_with_a_connect_hint() {
    let tb = common::start(common::Options::default()).await;
    let base = tb.admin_url();
    let issued = issue(&base, "alice", "shop", "read").await;

    let token = issued["token"].as_str().expect("token");
    assert!(token.starts_with("tbx_"), "{issued}");
    assert_eq!(issued["status"], "active");
    assert_eq!(issued["user"], "alice");
    assert_eq!(issued["target"], "shop");
    assert_eq!(issued["role"], "read");
    assert_eq!(issued["created_by"], "ops", "created_by is the principal's name");
    assert!(issued["revoked_at"].is_null());
    let connect = &issued["connect"];
    assert_eq!(connect["port"], tb.proxy_addr.port());
    assert_eq!(connect["host"], "127.0.0.1");
    assert_eq!(connect["dbname"], "shop");
    assert_eq!(connect["user"], "alice");
    assert_eq!(connect["sslmode"], "require", "tls = optional");
    let psql = connect["psql"].as_str().unwrap();
    assert!(psql.contains(&format!("port={}", tb.proxy_addr.port())), "{psql}");
    assert!(psql.starts_with(&format!("PGPASSWORD='{token}' psql ")), "{psql}");

    // The token was shown once; it is in no later answer.
    let id = issued["id"].as_str().unwrap();
    let shown = get(&base, &format!("/v1/grants/{id}"), ADMIN_TOKEN).await;
    assert_eq!(shown.status, StatusCode::OK);
    assert_eq!(shown.json["id"], id);
    assert_eq!(shown.json["status"], "active");
    assert!(shown.json.get("token").is_none() && shown.json.get("connect").is_none());
    assert!(!shown.text.contains(token), "{}", shown.text);
    assert!(!shown.text.contains(&token[4..]), "{}", shown.text);

    let list = get(&base, "/v1/grants", ADMIN_TOKEN).await;
    assert_eq!(ids(&list.json), vec![id.to_owned()]);
    assert!(!list.text.contains(&token[4..]), "{}", list.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_filters_by_user_target_and_status() {
    let tb = common::start(common::Options::default()).await;
    let base = tb.admin_url();
    let a1 = issue(&base, "alice", "shop", "read").await;
    let a2 = issue(&base, "alice", "billing", "read").await;
    let b1 = issue(&base, "bob", "shop", "write").await;
    let id = |v: &Value| v["id"].as_str().unwrap().to_owned();
    let revoked = post(
        &base,
        &format!("/v1/grants/{}/revoke", id(&b1)),
        ADMIN_TOKEN,
        json!({ "reason": "done" }),
    )
    .await;
    assert_eq!(revoked.status, StatusCode::OK, "{}", revoked.text);

    let list = |query: &'static str| {
        let base = base.clone();
        async move {
            let a = get(&base, &format!("/v1/grants{query}"), ADMIN_TOKEN).await;
            assert_eq!(a.status, StatusCode::OK, "{query}: {}", a.text);
            let mut ids = ids(&a.json);
            ids.sort();
            ids
        }
    };
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    assert_eq!(list("").await, sorted(vec![id(&a1), id(&a2), id(&b1)]));
    assert_eq!(list("?user=alice").await, sorted(vec![id(&a1), id(&a2)]));
    assert_eq!(list("?target=billing").await, vec![id(&a2)]);
    assert_eq!(list("?user=alice&target=shop").await, vec![id(&a1)]);
    assert_eq!(list("?status=revoked").await, vec![id(&b1)]);
    assert_eq!(list("?status=active").await, sorted(vec![id(&a1), id(&a2)]));
    assert_eq!(list("?status=expired").await, Vec::<String>::new());
    assert_eq!(list("?limit=1").await.len(), 1);

    let bad = get(&base, "/v1/grants?status=live", ADMIN_TOKEN).await;
    assert_error(&bad, StatusCode::BAD_REQUEST, "bad_request");
    assert!(
        bad.json["message"].as_str().unwrap().contains("status"),
        "{}",
        bad.text
    );
    let bad = get(&base, "/v1/grants?limit=lots", ADMIN_TOKEN).await;
    assert_error(&bad, StatusCode::BAD_REQUEST, "bad_request");
    let bad = get(&base, "/v1/grants?usr=alice", ADMIN_TOKEN).await;
    assert_error(&bad, StatusCode::BAD_REQUEST, "bad_request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_grant_requests_are_422_naming_the_field() {
    let tb = common::start(common::Options::default()).await;
    let base = tb.admin_url();
    let mut empty_reason = issue_body("alice", "shop", "read", "30m");
    empty_reason["reason"] = json!("   ");
    // See: issue 17: a body without `reason` was a 400 JSON error, not the documented 422.
    let mut missing_reason = issue_body("alice", "shop", "read", "30m");
    missing_reason.as_object_mut().unwrap().remove("reason");
    let cases = [
        (
            "unknown target",
            issue_body("alice", "nowhere", "read", "30m"),
            "target",
        ),
        (
            "role without a credential",
            issue_body("alice", "billing", "write", "30m"),
            "role",
        ),
        (
            "unknown role",
            issue_body("alice", "shop", "superuser", "30m"),
            "role",
        ),
        (
            "ttl over max_ttl (8h)",
            issue_body("alice", "shop", "read", "9h"),
            "ttl",
        ),
        (
            "ttl not a duration",
            issue_body("alice", "shop", "read", "a while"),
            "ttl",
        ),
        ("empty reason", empty_reason, "reason"),
        ("missing reason", missing_reason, "reason"),
    ];
    for (what, body, field) in cases {
        let a = post(&base, "/v1/grants", ADMIN_TOKEN, body).await;
        assert_invalid_field(&a, what, field);
        let message = a.json["message"].as_str().unwrap();
        assert!(message.starts_with(&format!("{field}:")), "{what}: {message}");
    }
    let list = get(&base, "/v1/grants", ADMIN_TOKEN).await;
    assert_eq!(ids(&list.json), Vec::<String>::new(), "nothing was issued");
}

/// See: issue 16, finding 12b: the store (token verifiers) and the audit trail (every statement)
/// were world-readable. A real instance: every file it creates is 0600, every directory 0700.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_and_audit_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let tb = common::start(common::Options::default()).await;
    issue(&tb.admin_url(), "alice", "shop", "read").await;
    let mut seen = Vec::new();
    let mut dirs = vec![tb.dir.path().to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::metadata(&path).unwrap();
            let mode = meta.permissions().mode() & 0o777;
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if meta.is_dir() {
                assert_eq!(mode, 0o700, "{}", path.display());
                dirs.push(path);
            } else if !name.starts_with("server.") {
                // server.crt/server.key are the harness's, not timebox's.
                assert_eq!(mode, 0o600, "{} is {mode:o}", path.display());
                seen.push(name);
            }
        }
    }
    // The store's own files exist only with the SQLite store (not under TIMEBOX_TEST_STORE=postgres).
    let sqlite_store = matches!(tb.state.config.store, timebox::config::StoreConfig::Sqlite { .. });
    let store_files: &[&str] = if sqlite_store {
        &["timebox.db", "timebox.db-wal"]
    } else {
        &[]
    };
    for expected in store_files.iter().chain(&["audit.db", "audit.db-wal"]) {
        assert!(
            seen.iter().any(|n| n == expected),
            "{expected} not among {seen:?}"
        );
    }
    assert!(
        seen.iter().any(|n| n.ends_with(".jsonl")),
        "a journal segment: {seen:?}"
    );
}

/// See: issue 16, finding 12d: a `starts_at` near chrono's maximum panicked the handler (the
/// connection was dropped without an answer), and year 9999 was accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn far_future_starts_at_is_422_not_a_panic() {
    let tb = common::start(common::Options::default()).await;
    let base = tb.admin_url();
    for starts_at in [
        "+262142-12-31T23:59:59Z",
        "9999-12-31T23:59:59Z",
        "2999-01-01T00:00:00Z",
    ] {
        let mut body = issue_body("alice", "shop", "read", "30m");
        body["starts_at"] = json!(starts_at);
        let a = post(&base, "/v1/grants", ADMIN_TOKEN, body).await;
        assert_error(&a, StatusCode::UNPROCESSABLE_ENTITY, "invalid_request");
        assert_eq!(a.json["field"], "starts_at", "{starts_at}: {}", a.text);
        assert!(
            a.json["message"].as_str().unwrap().contains("366 days"),
            "{}",
            a.text
        );
    }
    // Within the bound it is accepted, and the instance is still serving.
    let mut body = issue_body("alice", "shop", "read", "30m");
    body["starts_at"] = json!((chrono::Utc::now() + chrono::Duration::days(30)).to_rfc3339());
    let a = post(&base, "/v1/grants", ADMIN_TOKEN, body).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    assert_eq!(a.json["status"], "pending", "{}", a.text);
}

/// See: issue 16, finding 9b: control characters in user names (and other names and reasons) were
/// accepted and reached logs, webhooks and the audit trail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_characters_in_names_and_reasons_are_422_naming_the_field() {
    let tb = common::start(common::Options::default()).await;
    let base = tb.admin_url();
    let mut reason = issue_body("alice", "shop", "read", "30m");
    reason["reason"] = json!("incident\r\n2026-01-01 INFO grant revoked");
    let mut bidi = issue_body("alice", "shop", "read", "30m");
    bidi["reason"] = json!("incident \u{202E}1174");
    let cases = [
        (
            "newline in user",
            issue_body("alice\nroot", "shop", "read", "30m"),
            "user",
        ),
        (
            "escape in user",
            issue_body("alice\u{1b}[2J", "shop", "read", "30m"),
            "user",
        ),
        (
            "NUL in user",
            issue_body("ali\u{0}ce", "shop", "read", "30m"),
            "user",
        ),
        (
            "space in user",
            issue_body("alice smith", "shop", "read", "30m"),
            "user",
        ),
        (
            "overlong user",
            issue_body(&"a".repeat(64), "shop", "read", "30m"),
            "user",
        ),
        (
            "control in target",
            issue_body("alice", "shop\t", "read", "30m"),
            "target",
        ),
        (
            "control in role",
            issue_body("alice", "shop", "read\u{7}", "30m"),
            "role",
        ),
        ("CR LF in reason", reason, "reason"),
        ("bidi override in reason", bidi, "reason"),
    ];
    for (what, body, field) in cases {
        let a = post(&base, "/v1/grants", ADMIN_TOKEN, body).await;
        assert_invalid_field(&a, what, field);
    }
    let list = get(&base, "/v1/grants", ADMIN_TOKEN).await;
    assert_eq!(ids(&list.json), Vec::<String>::new(), "nothing was issued");

    // Revocation and extension reasons, and a request's reason, follow the same rule.
    let id = issue(&base, "alice", "shop", "read").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let a = post(
        &base,
        &format!("/v1/grants/{id}/extend"),
        ADMIN_TOKEN,
        json!({ "ttl": "1m", "reason": "more\ntime" }),
    )
    .await;
    assert_error(&a, StatusCode::UNPROCESSABLE_ENTITY, "invalid_request");
    assert_eq!(a.json["field"], "reason", "{}", a.text);
    let a = post(
        &base,
        &format!("/v1/grants/{id}/revoke"),
        ADMIN_TOKEN,
        json!({ "reason": "done\u{1b}[1A" }),
    )
    .await;
    assert_error(&a, StatusCode::UNPROCESSABLE_ENTITY, "invalid_request");
    assert_eq!(a.json["field"], "reason", "{}", a.text);
    let a = post(
        &base,
        "/v1/requests",
        REQUESTER_TOKEN,
        json!({ "target": "shop", "role": "read", "ttl": "30m", "reason": "need\u{0}it" }),
    )
    .await;
    assert_error(&a, StatusCode::UNPROCESSABLE_ENTITY, "invalid_request");
    assert_eq!(a.json["field"], "reason", "{}", a.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bodies_are_400_in_the_json_shape() {
    let tb = common::start(common::Options::default()).await;
    let base = tb.admin_url();
    let http = reqwest::Client::new();
    let post_raw = |body: &'static str, content_type: Option<&'static str>| {
        let mut req = http
            .post(format!("{base}/v1/grants"))
            .header(AUTHORIZATION, format!("Bearer {ADMIN_TOKEN}"))
            .body(body);
        if let Some(ct) = content_type {
            req = req.header(CONTENT_TYPE, ct);
        }
        async move { answer(req.send().await.unwrap()).await }
    };

    let a = post_raw("{\"user\": \"alice\",", Some("application/json")).await;
    assert_error(&a, StatusCode::BAD_REQUEST, "bad_request");
    let a = post_raw("{}", None).await;
    assert_error(&a, StatusCode::BAD_REQUEST, "bad_request");
    assert!(
        a.json["message"].as_str().unwrap().contains("Content-Type"),
        "{}",
        a.text
    );
    let a = post_raw(
        r#"{"user":"alice","target":"shop","role":"read"}"#,
        Some("application/json"),
    )
    .await;
    assert_error(&a, StatusCode::BAD_REQUEST, "bad_request");
    assert!(
        a.json["message"].as_str().unwrap().contains("ttl"),
        "missing field named: {}",
        a.text
    );

    let mut body = issue_body("alice", "shop", "read", "30m");
    body["expires"] = json!("tomorrow");
    let a = post(&base, "/v1/grants", ADMIN_TOKEN, body).await;
    assert_error(&a, StatusCode::BAD_REQUEST, "bad_request");
    assert!(
        a.json["message"].as_str().unwrap().contains("expires"),
        "{}",
        a.text
    );

    let mut body = issue_body("alice", "shop", "read", "30m");
    body["starts_at"] = json!("next tuesday");
    let a = post(&base, "/v1/grants", ADMIN_TOKEN, body).await;
    assert_error(&a, StatusCode::BAD_REQUEST, "bad_request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_unknown_credentials_are_401_with_www_authenticate() {
    let tb = common::start(common::Options::default()).await;
    let base = tb.admin_url();
    let http = reqwest::Client::new();
    let cases: [(&str, Option<&str>); 4] = [
        ("no header", None),
        ("unknown token", Some("Bearer not-a-real-token")),
        ("wrong scheme", Some("Basic b3BzOnB3")),
        ("no token", Some("Bearer")),
    ];
    for (what, header) in cases {
        let mut req = http.get(format!("{base}/v1/grants"));
        if let Some(h) = header {
            req = req.header(AUTHORIZATION, h);
        }
        let a = answer(req.send().await.unwrap()).await;
        assert_error(&a, StatusCode::UNAUTHORIZED, "unauthorized");
        assert!(
            a.www_authenticate
                .as_deref()
                .is_some_and(|v| v.starts_with("Bearer")),
            "{what}: {:?}",
            a.www_authenticate
        );
    }
    // Mutations too, and before the body is looked at.
    let a = post(&base, "/v1/grants", "nope", json!({})).await;
    assert_error(&a, StatusCode::UNAUTHORIZED, "unauthorized");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_admins_issue() {
    let tb = common::start(common::Options::default()).await;
    let base = tb.admin_url();
    for token in [AUDITOR_TOKEN, APPROVER_TOKEN, REQUESTER_TOKEN] {
        let a = post(
            &base,
            "/v1/grants",
            token,
            issue_body("alice", "shop", "read", "30m"),
        )
        .await;
        assert_error(&a, StatusCode::FORBIDDEN, "forbidden");
        assert!(
            a.json["message"]
                .as_str()
                .unwrap()
                .contains("requires role admin"),
            "{}",
            a.text
        );
    }
    // The role is checked before the body: a forbidden caller gets 403 even for a malformed body.
    let a = post(&base, "/v1/grants", AUDITOR_TOKEN, json!({ "x": 1 })).await;
    assert_error(&a, StatusCode::FORBIDDEN, "forbidden");

    // An auditor reads everything.
    issue(&base, "alice", "shop", "read").await;
    issue(&base, "bob", "shop", "read").await;
    let a = get(&base, "/v1/grants", AUDITOR_TOKEN).await;
    assert_eq!(ids(&a.json).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requesters_see_only_their_own_grants() {
    let tb = common::start(common::Options::default()).await;
    let base = tb.admin_url();
    let own = issue(&base, "alice", "shop", "read").await;
    let other = issue(&base, "bob", "shop", "read").await;
    let own_id = own["id"].as_str().unwrap();
    let other_id = other["id"].as_str().unwrap();

    let a = get(&base, "/v1/grants", REQUESTER_TOKEN).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(ids(&a.json), vec![own_id.to_owned()]);
    let a = get(&base, "/v1/grants?user=bob", REQUESTER_TOKEN).await;
    assert_eq!(
        ids(&a.json),
        Vec::<String>::new(),
        "asking for bob's grants gives nothing"
    );

    let a = get(&base, &format!("/v1/grants/{own_id}"), REQUESTER_TOKEN).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json["id"], own_id);

    // Someone else's grant looks exactly like a grant that does not exist.
    let theirs = get(&base, &format!("/v1/grants/{other_id}"), REQUESTER_TOKEN).await;
    assert_error(&theirs, StatusCode::NOT_FOUND, "not_found");
    let missing = get(&base, "/v1/grants/g_0000000000000000", REQUESTER_TOKEN).await;
    assert_error(&missing, StatusCode::NOT_FOUND, "not_found");
    assert_eq!(
        theirs.json["message"].as_str().unwrap().replace(other_id, "ID"),
        missing.json["message"]
            .as_str()
            .unwrap()
            .replace("g_0000000000000000", "ID")
    );

    let a = post(
        &base,
        &format!("/v1/grants/{own_id}/revoke"),
        REQUESTER_TOKEN,
        json!({ "reason": "done" }),
    )
    .await;
    assert_error(&a, StatusCode::FORBIDDEN, "forbidden");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_once_then_conflict() {
    let tb = common::start(common::Options::default()).await;
    let base = tb.admin_url();
    let issued = issue(&base, "alice", "shop", "read").await;
    let id = issued["id"].as_str().unwrap();
    let path = format!("/v1/grants/{id}/revoke");

    let a = post(&base, &path, AUDITOR_TOKEN, json!({ "reason": "done" })).await;
    assert_error(&a, StatusCode::FORBIDDEN, "forbidden");
    assert!(
        a.json["message"]
            .as_str()
            .unwrap()
            .contains("requires role admin or approver"),
        "{}",
        a.text
    );

    for body in [json!({ "reason": "  " }), json!({})] {
        let a = post(&base, &path, APPROVER_TOKEN, body).await;
        assert_error(&a, StatusCode::UNPROCESSABLE_ENTITY, "invalid_request");
        assert_eq!(a.json["field"], "reason");
    }
    let a = post(&base, &path, APPROVER_TOKEN, json!({ "reason": "done", "x": 1 })).await;
    assert_error(&a, StatusCode::BAD_REQUEST, "bad_request");

    let a = post(&base, &path, APPROVER_TOKEN, json!({ "reason": "incident over" })).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json["id"], id);
    assert_eq!(a.json["status"], "revoked");
    assert_eq!(a.json["revoked_by"], "bob", "the approver principal's name");
    assert_eq!(a.json["revoke_reason"], "incident over");
    assert!(a.json["revoked_at"].is_string());
    assert!(a.json.get("token").is_none());

    let again = post(&base, &path, ADMIN_TOKEN, json!({ "reason": "again" })).await;
    assert_error(&again, StatusCode::CONFLICT, "conflict");
    assert!(
        again.json["message"].as_str().unwrap().contains("revoked"),
        "{}",
        again.text
    );

    let shown = get(&base, &format!("/v1/grants/{id}"), ADMIN_TOKEN).await;
    assert_eq!(shown.json["status"], "revoked");
    assert_eq!(
        shown.json["revoke_reason"], "incident over",
        "the first revocation is kept"
    );

    let a = post(
        &base,
        "/v1/grants/g_unknown/revoke",
        ADMIN_TOKEN,
        json!({ "reason": "x" }),
    )
    .await;
    assert_error(&a, StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_and_methods_answer_json() {
    let tb = common::start(common::Options::default()).await;
    let base = tb.admin_url();
    let a = get(&base, "/v2/nothing", ADMIN_TOKEN).await;
    assert_error(&a, StatusCode::NOT_FOUND, "not_found");
    let a = send(&base, Method::GET, "/", None, None).await;
    assert_error(&a, StatusCode::NOT_FOUND, "not_found");
    let a = send(&base, Method::DELETE, "/v1/grants", Some(ADMIN_TOKEN), None).await;
    assert_error(&a, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
}

// ---------------------------------------------------------------------------------------------
// A store that fails: the API answers 503 without leaking the cause. Served on its own listener
// (no PostgreSQL needed).
// ---------------------------------------------------------------------------------------------

mod failing {
    use chrono::{DateTime, Utc};
    use timebox::grants::token::ScramVerifier;
    use timebox::grants::Grant;
    use timebox::store::{GrantFilter, GrantStore, StoreError};

    pub const CAUSE: &str = "disk on fire at sector 7";

    #[derive(Debug)]
    pub struct FailingStore;

    fn fail<T>() -> Result<T, StoreError> {
        Err(StoreError::Corrupt(CAUSE.into()))
    }

    impl GrantStore for FailingStore {
        fn insert_grant(&self, _: &Grant, _: &ScramVerifier) -> Result<(), StoreError> {
            fail()
        }
        fn get_grant(&self, _: &str) -> Result<Option<Grant>, StoreError> {
            fail()
        }
        fn list_grants(&self, _: &GrantFilter, _: DateTime<Utc>) -> Result<Vec<Grant>, StoreError> {
            fail()
        }
        fn grant_candidates(&self, _: &str, _: &str) -> Result<Vec<(Grant, ScramVerifier)>, StoreError> {
            fail()
        }
        fn revoke_grant(
            &self,
            _: &str,
            _: &str,
            _: &str,
            _: DateTime<Utc>,
        ) -> Result<Option<Grant>, StoreError> {
            fail()
        }
        fn installation_secret(&self) -> Result<[u8; 32], StoreError> {
            fail()
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_store_is_503_store_unavailable_without_internals() {
    let config = timebox::config::Config::from_toml_str(&format!(
        "{}[[admin.tokens]]\nname = \"ops\"\nsha256 = \"{}\"\nroles = [\"admin\"]\n",
        common::MINIMAL_CONFIG,
        timebox::grants::token::sha256_hex(ADMIN_TOKEN)
    ))
    .unwrap();
    let store = timebox::store::Store::new(Arc::new(failing::FailingStore));
    let state =
        timebox::app::AppState::build_with(config, store, Arc::new(timebox::clock::SystemClock)).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(axum::serve(listener, timebox::admin::router(state)).into_future());

    let a = send(&base, Method::GET, "/healthz", None, None).await;
    assert_error(&a, StatusCode::SERVICE_UNAVAILABLE, "store_unavailable");
    let a = get(&base, "/v1/grants", ADMIN_TOKEN).await;
    assert_error(&a, StatusCode::SERVICE_UNAVAILABLE, "store_unavailable");
    assert!(!a.text.contains(failing::CAUSE), "{}", a.text);
    let a = post(
        &base,
        "/v1/grants",
        ADMIN_TOKEN,
        issue_body("alice", "shop", "read", "5m"),
    )
    .await;
    assert_error(&a, StatusCode::SERVICE_UNAVAILABLE, "store_unavailable");
    assert!(!a.text.contains(failing::CAUSE), "{}", a.text);
    server.abort();
}
