//! Admin tokens kept in the store (issue 17 item 1), against real instances over real HTTP: issue →
//! use → list (never a secret) → revoke → 401 at once; role checks; 409/422 with their codes; expiry
//! by a controllable clock; both audit events recorded without the token (the audit database, its
//! journal and the store file are searched for it); the `timebox admin-token` CLI round trip; and a
//! token issued on one instance works, and is revoked, on another sharing a PostgreSQL store.

mod common;

use std::sync::Arc;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use common::cli::{describe, stdout, timebox_at};
use common::http::{post, send, Answer};
use common::{Options, StoreDatabase, TestInstance, ADMIN_TOKEN, AUDITOR_TOKEN, REQUESTER_TOKEN};

async fn get(tb: &TestInstance, path: &str, token: &str) -> Answer {
    send(&tb.admin_url(), Method::GET, path, Some(token), None).await
}

async fn delete(tb: &TestInstance, path: &str, token: &str) -> Answer {
    send(&tb.admin_url(), Method::DELETE, path, Some(token), None).await
}

/// Issues a token through the API as `by`; returns the answer.
async fn issue(tb: &TestInstance, by: &str, body: Value) -> Answer {
    post(&tb.admin_url(), "/v1/admin-tokens", by, body).await
}

/// Issues a token as the config's admin and returns it.
async fn issue_ok(tb: &TestInstance, name: &str, roles: &[&str]) -> String {
    let a = issue(tb, ADMIN_TOKEN, json!({ "name": name, "roles": roles })).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    a.json["token"].as_str().expect("a token").to_owned()
}

/// Every byte of every file under `dir`, as lossy text (SQLite pages, journal segments).
fn all_file_text(dir: &std::path::Path) -> String {
    let mut out = String::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.push_str(&all_file_text(&path));
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.push_str(&String::from_utf8_lossy(&bytes));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_use_list_revoke_and_the_next_request_is_refused() {
    let tb = common::start(Options::default()).await;
    let a = issue(
        &tb,
        ADMIN_TOKEN,
        json!({ "name": "carol", "roles": ["approver", "auditor"] }),
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    let token = a.json["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("tbxa_"), "{token}");
    assert_eq!(a.json["name"], "carol");
    assert_eq!(a.json["roles"], json!(["approver", "auditor"]));
    assert_eq!(a.json["status"], "active");
    assert_eq!(a.json["created_by"], "ops");
    assert_eq!(a.json["expires_at"], Value::Null);

    // It works at once, with its roles and no more.
    let a = get(&tb, "/v1/grants", &token).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let a = get(&tb, "/v1/audit/head", &token).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let a = post(
        &tb.admin_url(),
        "/v1/grants",
        &token,
        json!({ "user": "alice", "target": "shop", "role": "read", "ttl": "5m", "reason": "x" }),
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.text);
    let message = a.json["message"].as_str().unwrap();
    assert!(message.contains("principal \"carol\""), "{message}");

    // Listed (to admins and auditors) with its last use, never with its secret or hash.
    for viewer in [ADMIN_TOKEN, AUDITOR_TOKEN] {
        let a = get(&tb, "/v1/admin-tokens", viewer).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        let listed = &a.json["admin_tokens"][0];
        assert_eq!(listed["name"], "carol", "{}", a.text);
        assert_eq!(listed["status"], "active");
        assert!(listed["last_used_at"].is_string(), "{}", a.text);
        assert!(listed.get("token").is_none(), "{}", a.text);
        assert!(!a.text.contains(&token[5..]), "the secret is listed: {}", a.text);
        let sha = timebox::grants::token::sha256_hex(&token);
        assert!(!a.text.contains(&sha), "the hash is listed: {}", a.text);
    }

    // Revoked: the very next request with it is refused, with its own code.
    let a = delete(&tb, "/v1/admin-tokens/carol", ADMIN_TOKEN).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json["status"], "revoked");
    assert_eq!(a.json["revoked_by"], "ops");
    let a = get(&tb, "/v1/grants", &token).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{}", a.text);
    assert_eq!(a.json["code"], "admin_token_revoked", "{}", a.text);
    assert!(
        a.json["message"].as_str().unwrap().contains("revoked at"),
        "{}",
        a.text
    );
    assert!(a.www_authenticate.is_some());
    // A token that is no token at all stays "unknown", with a store-token shape or not.
    let forged = format!(
        "{}{}",
        &token[..token.len() - 1],
        if token.ends_with('0') { '1' } else { '0' }
    );
    for unknown in [forged.as_str(), "tbxa_nothing"] {
        let a = get(&tb, "/v1/grants", unknown).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{}", a.text);
        assert_eq!(a.json["code"], "unauthorized", "{}", a.text);
    }

    // Revoking again: nothing live has the name. The name is free again.
    let a = delete(&tb, "/v1/admin-tokens/carol", ADMIN_TOKEN).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "{}", a.text);
    assert_eq!(a.json["code"], "not_found");
    issue_ok(&tb, "carol", &["approver"]).await;
    let a = get(&tb, "/v1/admin-tokens", ADMIN_TOKEN).await;
    let statuses: Vec<&str> = a.json["admin_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["active", "revoked"], "newest first: {}", a.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_admins_issue_and_revoke_and_bad_requests_name_their_field() {
    let tb = common::start(Options::default()).await;
    let body = json!({ "name": "eve", "roles": ["admin"] });
    // A requester (config or store token) cannot issue: a requester must not mint itself an admin.
    let a = issue(&tb, REQUESTER_TOKEN, body.clone()).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.text);
    assert_eq!(a.json["code"], "forbidden");
    let dave = issue_ok(&tb, "dave", &["requester"]).await;
    let a = issue(&tb, &dave, body.clone()).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.text);
    assert_eq!(a.json["code"], "forbidden");
    let a = delete(&tb, "/v1/admin-tokens/dave", &dave).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.text);
    let a = get(&tb, "/v1/admin-tokens", &dave).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.text);
    let a = issue(&tb, AUDITOR_TOKEN, body).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.text);

    // A live name, or a config token's name, is a conflict.
    let a = issue(&tb, ADMIN_TOKEN, json!({ "name": "dave", "roles": ["auditor"] })).await;
    assert_eq!(a.status, StatusCode::CONFLICT, "{}", a.text);
    assert_eq!(a.json["code"], "conflict");
    let a = issue(&tb, ADMIN_TOKEN, json!({ "name": "ops", "roles": ["auditor"] })).await;
    assert_eq!(a.status, StatusCode::CONFLICT, "{}", a.text);
    assert!(a.text.contains("config"), "{}", a.text);
    let a = delete(&tb, "/v1/admin-tokens/ops", ADMIN_TOKEN).await;
    assert_eq!(a.status, StatusCode::CONFLICT, "{}", a.text);
    assert!(a.text.contains("config file"), "{}", a.text);

    for (body, field) in [
        (json!({ "roles": ["admin"] }), "name"),
        (json!({ "name": "two words", "roles": ["admin"] }), "name"),
        (json!({ "name": "x" }), "roles"),
        (json!({ "name": "x", "roles": ["root"] }), "roles"),
        (
            json!({ "name": "x", "roles": ["admin"], "expires_at": "2020-01-01T00:00:00Z" }),
            "expires_at",
        ),
    ] {
        let a = issue(&tb, ADMIN_TOKEN, body.clone()).await;
        assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {}", a.text);
        assert_eq!(a.json["code"], "invalid_request", "{}", a.text);
        assert_eq!(a.json["field"], field, "{body}: {}", a.text);
    }
    let a = issue(
        &tb,
        ADMIN_TOKEN,
        json!({ "name": "x", "roles": ["admin"], "ttl": "1h" }),
    )
    .await;
    assert_eq!(
        a.status,
        StatusCode::BAD_REQUEST,
        "unknown fields are refused: {}",
        a.text
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_is_refused_with_its_own_code() {
    let clock = Arc::new(timebox::clock::ManualClock::new(chrono::Utc::now()));
    let tb = common::start(Options {
        clock: Some(clock.clone()),
        ..Options::default()
    })
    .await;
    let expires_at = clock_now(&clock) + chrono::Duration::hours(1);
    let a = issue(
        &tb,
        ADMIN_TOKEN,
        json!({ "name": "temp", "roles": ["auditor"], "expires_at": expires_at }),
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    let token = a.json["token"].as_str().unwrap().to_owned();
    assert_eq!(get(&tb, "/v1/audit/head", &token).await.status, StatusCode::OK);

    clock.advance(chrono::Duration::minutes(61));
    let a = get(&tb, "/v1/audit/head", &token).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{}", a.text);
    assert_eq!(a.json["code"], "admin_token_expired", "{}", a.text);
    let a = get(&tb, "/v1/admin-tokens", ADMIN_TOKEN).await;
    assert_eq!(a.json["admin_tokens"][0]["status"], "expired", "{}", a.text);
    // An expired token frees its name.
    let a = issue(&tb, ADMIN_TOKEN, json!({ "name": "temp", "roles": ["auditor"] })).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
}

fn clock_now(clock: &timebox::clock::ManualClock) -> chrono::DateTime<chrono::Utc> {
    use timebox::clock::Clock;
    clock.now()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_changes_are_audited_with_the_actor_and_never_the_token() {
    let tb = common::start(Options::default()).await;
    let token = issue_ok(&tb, "ci-bot", &["auditor"]).await;
    // The token is used, so it went through every path that sees it.
    assert_eq!(get(&tb, "/v1/audit/head", &token).await.status, StatusCode::OK);
    let a = delete(&tb, "/v1/admin-tokens/ci-bot", ADMIN_TOKEN).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);

    let records = common::pg::audit_records(&tb.audit_db());
    let issued: Vec<&Value> = records
        .iter()
        .filter(|(k, _)| k == "admin_token_issued")
        .map(|(_, p)| p)
        .collect();
    assert_eq!(issued.len(), 1, "{records:?}");
    assert_eq!(issued[0]["name"], "ci-bot");
    assert_eq!(issued[0]["created_by"], "ops");
    assert_eq!(issued[0]["roles"], json!(["auditor"]));
    let revoked: Vec<&Value> = records
        .iter()
        .filter(|(k, _)| k == "admin_token_revoked")
        .map(|(_, p)| p)
        .collect();
    assert_eq!(revoked.len(), 1, "{records:?}");
    assert_eq!(revoked[0]["name"], "ci-bot");
    assert_eq!(revoked[0]["revoked_by"], "ops");

    // The API's audit search knows the kinds.
    let a = get(&tb, "/v1/audit?kind=admin_token_revoked", AUDITOR_TOKEN).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert!(a.text.contains("ci-bot"), "{}", a.text);

    // Neither the token nor its secret part is anywhere on disk: audit db, journal, store.
    let secret = &token["tbxa_".len()..];
    let on_disk = all_file_text(tb.dir.path());
    assert!(on_disk.contains("ci-bot"), "the search reads the files");
    assert!(!on_disk.contains(secret), "the token is on disk");
    assert!(
        !on_disk.contains(&secret[16..]),
        "the token's secret part is on disk"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_issues_lists_and_revokes_through_the_api() {
    let tb = common::start(Options::default()).await;
    let url = tb.admin_url();
    let run = |args: Vec<&'static str>, token: &'static str| {
        let url = url.clone();
        async move { timebox_at(&args, Some(token), Some(&url)).await }
    };
    let out = run(
        vec![
            "admin-token",
            "new",
            "--name",
            "erin",
            "--role",
            "auditor",
            "--expires-in",
            "30d",
        ],
        ADMIN_TOKEN,
    )
    .await;
    assert!(out.status.success(), "{}", describe(&out));
    let text = stdout(&out);
    assert!(
        !text.contains("[[admin.tokens]]"),
        "no config entry to paste: {text}"
    );
    let token = text
        .split_whitespace()
        .find(|w| w.starts_with("tbxa_"))
        .unwrap_or_else(|| panic!("no token in:\n{text}"))
        .to_owned();
    // It works at once, through the CLI too.
    let head = timebox_at(&["audit", "head"], Some(&token), Some(&url)).await;
    assert!(head.status.success(), "{}", describe(&head));

    let out = run(vec!["admin-token", "list"], ADMIN_TOKEN).await;
    assert!(out.status.success(), "{}", describe(&out));
    let text = stdout(&out);
    assert!(
        text.contains("erin") && text.contains("auditor") && text.contains("active"),
        "{text}"
    );
    assert!(!text.contains(&token[5..]), "{text}");

    let out = run(vec!["admin-token", "list", "--json"], AUDITOR_TOKEN).await;
    assert!(out.status.success(), "{}", describe(&out));
    let json: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let expires = json["admin_tokens"][0]["expires_at"].as_str().expect("an expiry");
    let expires: chrono::DateTime<chrono::Utc> = expires.parse().unwrap();
    let days = (expires - chrono::Utc::now()).num_hours() / 24;
    assert!((29..=30).contains(&days), "--expires-in 30d: {expires}");

    // A requester is refused by the API, and the CLI says so.
    let out = run(
        vec!["admin-token", "new", "--name", "x", "--role", "admin"],
        REQUESTER_TOKEN,
    )
    .await;
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(
        common::cli::stderr(&out).contains("forbidden"),
        "{}",
        describe(&out)
    );

    let out = run(vec!["admin-token", "revoke", "erin"], ADMIN_TOKEN).await;
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        stdout(&out).contains("Revoked admin token \"erin\""),
        "{}",
        describe(&out)
    );
    let head = timebox_at(&["audit", "head"], Some(&token), Some(&url)).await;
    assert!(!head.status.success(), "{}", describe(&head));
    assert!(
        common::cli::stderr(&head).contains("admin_token_revoked"),
        "{}",
        describe(&head)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_issued_on_one_instance_works_and_is_revoked_on_another() {
    let db = StoreDatabase::create_async().await;
    let instance = |name: &str| {
        let store = format!("{}\n[fleet]\ninstance = \"{name}\"", db.store_lines());
        common::start(Options {
            tls: "disabled",
            store: Some(store),
            ..Options::default()
        })
    };
    let a = instance("tb-a").await;
    let b = instance("tb-b").await;

    let token = issue_ok(&a, "fleet-bot", &["auditor"]).await;
    let answer = get(&b, "/v1/audit/head", &token).await;
    assert_eq!(
        answer.status,
        StatusCode::OK,
        "B accepts A's token: {}",
        answer.text
    );
    let listed = get(&b, "/v1/admin-tokens", ADMIN_TOKEN).await;
    assert_eq!(
        listed.json["admin_tokens"][0]["name"], "fleet-bot",
        "{}",
        listed.text
    );

    let answer = delete(&b, "/v1/admin-tokens/fleet-bot", ADMIN_TOKEN).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    let answer = get(&a, "/v1/audit/head", &token).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{}", answer.text);
    assert_eq!(answer.json["code"], "admin_token_revoked", "{}", answer.text);
}

/// An auditor token issued over the API logs in to `timebox_audit` with psql (SCRAM against the
/// verifier kept in the store), as a config token does; once revoked, the login is the same 28P01
/// as a wrong token. A requester token issued over the API is refused there (42501).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_issued_auditor_token_logs_in_to_timebox_audit() {
    let tb = common::start(Options::default()).await;
    let conn = |user: &str| {
        format!(
            "host=127.0.0.1 port={} user={user} dbname=timebox_audit sslmode=require",
            tb.proxy_addr.port()
        )
    };
    let token = issue_ok(&tb, "nadia", &["auditor"]).await;
    let out = common::psql(
        &conn("nadia"),
        &token,
        "SELECT kind FROM events WHERE kind = 'admin_token_issued'",
    )
    .await;
    assert!(out.success, "{out:?}");
    assert!(out.stdout.contains("admin_token_issued"), "{}", out.stdout);

    let requester = issue_ok(&tb, "rita", &["requester"]).await;
    let out = common::psql(&conn("rita"), &requester, "SELECT 1").await;
    assert!(!out.success, "{out:?}");
    assert!(
        out.stderr.contains("requires the auditor or admin role"),
        "{}",
        out.stderr
    );

    let a = delete(&tb, "/v1/admin-tokens/nadia", ADMIN_TOKEN).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let out = common::psql(&conn("nadia"), &token, "SELECT 1").await;
    assert!(!out.success, "{out:?}");
    assert!(
        out.stderr
            .contains("password authentication failed for user \"nadia\""),
        "{}",
        out.stderr
    );
}

/// Attack review, session 4 (F1): a `timebox_audit` session opened with a store token went on
/// reading the trail after the token was revoked (the token was checked at login only). Now every
/// query checks that the token is still the live one of its name: the next query after a revoke
/// ends the session with 28000.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_timebox_audit_session_ends_at_its_next_query_after_a_revoke() {
    let tb = common::start(Options {
        tls: "disabled",
        ..Options::default()
    })
    .await;
    let token = issue_ok(&tb, "nadia", &["auditor"]).await;
    let conn = format!(
        "host=127.0.0.1 port={} user=nadia dbname=timebox_audit password={token}",
        tb.proxy_addr.port()
    );
    let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
        .await
        .expect("the auditor logs in");
    tokio::spawn(connection);
    client
        .simple_query("SELECT count(*) FROM events")
        .await
        .expect("reads before the revoke");

    let a = delete(&tb, "/v1/admin-tokens/nadia", ADMIN_TOKEN).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let err = client
        .simple_query("SELECT count(*) FROM events")
        .await
        .expect_err("the revoked token's session reads no more");
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("a PostgreSQL error, not {err:?}"));
    assert_eq!(db.code().code(), "28000", "{}", db.message());
    assert!(
        db.message().contains("was revoked or has expired"),
        "{}",
        db.message()
    );
    assert!(client.is_closed() || client.simple_query("SELECT 1").await.is_err());
}
