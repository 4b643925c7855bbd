//! The access workflow over real HTTP against a real instance in front of a real PostgreSQL: the
//! role matrix (endpoint × role → status), access requests (two-person rule, N distinct approvers,
//! token fetched once, review window), break-glass (flagged and capped), extending a grant under a
//! live session, and killing a session in the middle of a query.

mod common;

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use common::http::{get, post, send};
use common::pg::connect;
use common::{cli, eventually, ADMIN_TOKEN, APPROVER_TOKEN, AUDITOR_TOKEN, REQUESTER_TOKEN};

/// Role `admin` needs two approvals and allows break-glass up to 10 minutes; extra config appended.
async fn start(extra: &str) -> common::TestInstance {
    let port = tokio::task::spawn_blocking(|| common::cluster::shared_cluster().port())
        .await
        .unwrap();
    let extra = extra.to_owned();
    common::start_with_config(move |dir| {
        let text = common::config_text(&common::Options::default(), dir, port);
        let role = "[roles.admin]\nallow = [\"read\", \"write\", \"ddl\", \"admin\"]\nmax_ttl = \"1h\"\n";
        assert!(text.contains(role), "the harness config changed");
        let text = text.replace(
            role,
            &format!("{role}approvals = 2\nbreak_glass = true\nbreak_glass_max_ttl = \"10m\"\n"),
        );
        format!("{text}\n{extra}\n")
    })
    .await
}

fn request_body(role: &str, ttl: &str, reason: &str) -> Value {
    json!({ "target": "shop", "role": role, "ttl": ttl, "reason": reason, "ticket": "INC-42" })
}

async fn file(base: &str, token: &str, body: Value) -> Value {
    let a = post(base, "/v1/requests", token, body).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    a.json
}

fn id(v: &Value) -> String {
    v["id"].as_str().expect("id").to_owned()
}

// ---------------------------------------------------------------------------------------------
// The role matrix.
// ---------------------------------------------------------------------------------------------

/// Expected status per endpoint for (admin, approver, auditor, requester). `OK` stands for "allowed":
/// any answer but 401/403 (the ids do not exist, so allowed calls are mostly 404/422).
const OK: u16 = 0;
const NO: u16 = 403;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_checks_every_role() {
    let tb = start("").await;
    let base = tb.admin_url();
    let grant_body = json!({ "user": "alice", "target": "shop", "role": "read", "ttl": "1m", "reason": "x" });
    let reason = json!({ "reason": "matrix" });
    let cases: Vec<(Method, &str, Option<Value>, [u16; 4])> = vec![
        (Method::GET, "/metrics", None, [OK, NO, OK, NO]),
        (Method::POST, "/v1/grants", Some(grant_body), [OK, NO, NO, NO]),
        (Method::GET, "/v1/grants", None, [OK, OK, OK, OK]),
        (Method::GET, "/v1/grants/g_nope", None, [OK, OK, OK, OK]),
        (
            Method::POST,
            "/v1/grants/g_nope/revoke",
            Some(reason.clone()),
            [OK, OK, NO, NO],
        ),
        (
            Method::POST,
            "/v1/grants/g_nope/extend",
            Some(json!({"ttl": "1m"})),
            [OK, OK, NO, NO],
        ),
        (
            Method::POST,
            "/v1/requests",
            Some(request_body("read", "1m", "matrix")),
            [OK, NO, NO, OK],
        ),
        (Method::GET, "/v1/requests", None, [OK, OK, OK, OK]),
        (Method::GET, "/v1/requests/r_nope", None, [OK, OK, OK, OK]),
        (
            Method::POST,
            "/v1/requests/r_nope/approve",
            Some(reason.clone()),
            [OK, OK, NO, NO],
        ),
        (
            Method::POST,
            "/v1/requests/r_nope/deny",
            Some(reason.clone()),
            [OK, OK, NO, NO],
        ),
        (Method::POST, "/v1/requests/r_nope/token", None, [OK, NO, NO, OK]),
        (Method::GET, "/v1/sessions", None, [OK, OK, OK, OK]),
        (
            Method::DELETE,
            "/v1/sessions/s_nope",
            Some(reason.clone()),
            [OK, OK, NO, NO],
        ),
        (Method::GET, "/v1/instances", None, [OK, NO, OK, NO]),
        (Method::GET, "/v1/audit", None, [OK, NO, OK, NO]),
        (Method::GET, "/v1/audit/verify", None, [OK, NO, OK, NO]),
        (Method::GET, "/v1/audit/head", None, [OK, NO, OK, NO]),
        (Method::GET, "/v1/roles/review", None, [OK, NO, OK, NO]),
        (
            Method::POST,
            "/v1/policy/replay",
            Some(json!({"roles": {}})),
            [OK, NO, OK, NO],
        ),
        (
            Method::POST,
            "/v1/admin-tokens",
            Some(json!({"name": "matrix-bot", "roles": ["auditor"]})),
            [OK, NO, NO, NO],
        ),
        (Method::GET, "/v1/admin-tokens", None, [OK, NO, OK, NO]),
        (Method::DELETE, "/v1/admin-tokens/t_nope", None, [OK, NO, NO, NO]),
    ];
    // The matrix covers every route the API has (the crate's own table is checked against the
    // OpenAPI document in a unit test).
    let public = ["/healthz", "/v1/openapi.json"];
    let mut covered: Vec<String> = cases
        .iter()
        .map(|(m, p, _, _)| {
            let p = p
                .replace("g_nope", "{id}")
                .replace("r_nope", "{id}")
                .replace("s_nope", "{id}")
                .replace("t_nope", "{name}");
            format!("{m} {p}")
        })
        .collect();
    covered.extend(public.iter().map(|p| format!("GET {p}")));
    covered.sort();
    let mut routes: Vec<String> = timebox::admin::ROLE_MATRIX
        .iter()
        .map(|(m, p, _)| format!("{m} {p}"))
        .collect();
    routes.sort();
    assert_eq!(covered, routes);

    let tokens = [
        ("admin", ADMIN_TOKEN),
        ("approver", APPROVER_TOKEN),
        ("auditor", AUDITOR_TOKEN),
        ("requester", REQUESTER_TOKEN),
    ];
    for (method, path, body, expected) in &cases {
        for (token, what) in [(None, "no token"), (Some("not-a-token"), "unknown token")] {
            let a = send(&base, method.clone(), path, token, body.clone()).await;
            assert_eq!(
                a.status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} with {what}: {}",
                a.text
            );
            assert_eq!(a.json["code"], "unauthorized");
        }
        for ((role, token), want) in tokens.iter().zip(expected) {
            let a = send(&base, method.clone(), path, Some(token), body.clone()).await;
            let got = a.status.as_u16();
            if *want == OK {
                assert!(
                    got != 401 && got != 403,
                    "{method} {path} as {role}: expected allowed, got {got}: {}",
                    a.text
                );
            } else {
                assert_eq!(got, *want, "{method} {path} as {role}: {}", a.text);
                assert_eq!(a.json["code"], "forbidden", "{}", a.text);
            }
        }
    }
    for path in public {
        let a = send(&base, Method::GET, path, None, None).await;
        assert_eq!(a.status, StatusCode::OK, "{path}: {}", a.text);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_public_only_when_configured() {
    let tb = start("").await;
    let public = {
        let port = tokio::task::spawn_blocking(|| common::cluster::shared_cluster().port())
            .await
            .unwrap();
        common::start_with_config(move |dir| {
            common::config_text(&common::Options::default(), dir, port)
                .replace("[admin]\n", "[admin]\nmetrics_public = true\n")
        })
        .await
    };
    let a = send(&tb.admin_url(), Method::GET, "/metrics", None, None).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    let resp = reqwest::get(format!("{}/metrics", public.admin_url()))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.text().await.unwrap().contains("timebox_requests_pending"));
}

// ---------------------------------------------------------------------------------------------
// Access requests.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_needs_a_reason_and_distinct_approvers_and_its_token_is_fetched_once() {
    let tb = start("").await;
    let base = tb.admin_url();

    let a = post(
        &base,
        "/v1/requests",
        REQUESTER_TOKEN,
        json!({ "target": "shop", "role": "admin", "ttl": "30m" }),
    )
    .await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", a.text);
    assert_eq!(a.json["field"], "reason");

    // Role admin needs two approvals.
    let r = file(
        &base,
        REQUESTER_TOKEN,
        request_body("admin", "30m", "migrate orders"),
    )
    .await;
    let rid = id(&r);
    assert_eq!(r["status"], "pending");
    assert_eq!(r["requester"], "alice");
    assert_eq!(r["approvals_required"], 2);
    assert_eq!(r["ticket"], "INC-42");

    let approve = |token: &'static str| {
        let base = base.clone();
        let rid = rid.clone();
        async move {
            post(
                &base,
                &format!("/v1/requests/{rid}/approve"),
                token,
                json!({ "reason": "looks right" }),
            )
            .await
        }
    };
    let token_path = format!("/v1/requests/{rid}/token");
    let fetch_token = |token: &'static str| send(&base, Method::POST, &token_path, Some(token), None);
    // The token cannot be fetched before approval.
    let early = fetch_token(REQUESTER_TOKEN).await;
    assert_eq!(early.status, StatusCode::CONFLICT, "{}", early.text);

    let first = approve(APPROVER_TOKEN).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text);
    assert_eq!(first.json["status"], "pending", "one of two approvals");
    assert!(first.json["grant_id"].is_null());
    let twice = approve(APPROVER_TOKEN).await;
    assert_eq!(
        twice.status,
        StatusCode::CONFLICT,
        "the same approver twice: {}",
        twice.text
    );
    let second = approve(ADMIN_TOKEN).await;
    assert_eq!(second.status, StatusCode::OK, "{}", second.text);
    assert_eq!(second.json["status"], "approved");
    let gid = second.json["grant_id"].as_str().expect("grant id").to_owned();
    let late = approve(ADMIN_TOKEN).await;
    assert_eq!(late.status, StatusCode::CONFLICT, "{}", late.text);

    let grant = get(&base, &format!("/v1/grants/{gid}"), ADMIN_TOKEN).await;
    assert_eq!(grant.json["user"], "alice");
    assert_eq!(grant.json["created_by"], "bob,ops", "created by the approvers");
    assert_eq!(grant.json["break_glass"], false);
    assert!(grant.json["reason"].as_str().unwrap().contains(&rid));

    // Only the requester fetches the token, once.
    let other = fetch_token(ADMIN_TOKEN).await;
    assert_eq!(other.status, StatusCode::FORBIDDEN, "{}", other.text);
    let fetched = fetch_token(REQUESTER_TOKEN).await;
    assert_eq!(fetched.status, StatusCode::OK, "{}", fetched.text);
    let token = fetched.json["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("tbx_"));
    assert_eq!(fetched.json["grant"]["id"], gid.as_str());
    assert!(fetched.json["connect"]["psql"].as_str().unwrap().contains("psql"));
    let again = fetch_token(REQUESTER_TOKEN).await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.text);
    let shown = get(&base, &format!("/v1/requests/{rid}"), ADMIN_TOKEN).await;
    assert!(
        !shown.text.contains(&token[4..]),
        "the token is in no later answer"
    );
    assert!(!shown.json["token_fetched_at"].is_null());

    // The token works through the proxy.
    let client = connect(&tb.conn_string("alice", &token, "disable")).await;
    let n: i64 = client
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, common::cluster::ITEMS_ROWS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_requester_never_reviews_its_own_request_and_requesters_see_only_their_own() {
    let tb = start("").await;
    let base = tb.admin_url();
    // An admin may file a request, but not approve or deny it (two-person rule).
    let r = file(&base, ADMIN_TOKEN, request_body("read", "30m", "check a report")).await;
    let rid = id(&r);
    assert_eq!(r["requester"], "ops");
    for action in ["approve", "deny"] {
        let a = post(
            &base,
            &format!("/v1/requests/{rid}/{action}"),
            ADMIN_TOKEN,
            json!({ "reason": "self" }),
        )
        .await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{action}: {}", a.text);
        assert!(a.json["message"].as_str().unwrap().contains("two-person") || action == "deny");
    }
    // alice cannot see ops' request.
    let a = get(&base, &format!("/v1/requests/{rid}"), REQUESTER_TOKEN).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    let mine = file(&base, REQUESTER_TOKEN, request_body("read", "30m", "mine")).await;
    let listed = get(&base, "/v1/requests", REQUESTER_TOKEN).await;
    let ids: Vec<&str> = listed.json["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![id(&mine).as_str()]);
    let all = get(&base, "/v1/requests?status=pending", AUDITOR_TOKEN).await;
    assert_eq!(all.json["requests"].as_array().unwrap().len(), 2);

    // Denying needs a reason; a denied request cannot be approved.
    let path = format!("/v1/requests/{rid}/deny");
    let a = post(&base, &path, APPROVER_TOKEN, json!({})).await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", a.text);
    let a = post(&base, &path, APPROVER_TOKEN, json!({"reason": "use the replica"})).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json["status"], "denied");
    assert_eq!(a.json["denied_by"], "bob");
    let a = post(
        &base,
        &format!("/v1/requests/{rid}/approve"),
        APPROVER_TOKEN,
        json!({}),
    )
    .await;
    assert_eq!(a.status, StatusCode::CONFLICT, "{}", a.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreviewed_requests_expire_after_the_review_window() {
    let tb = start("[requests]\nreview_window = \"1s\"").await;
    let base = tb.admin_url();
    let r = file(
        &base,
        REQUESTER_TOKEN,
        request_body("read", "30m", "slow reviewers"),
    )
    .await;
    let path = format!("/v1/requests/{}", id(&r));
    let expired = eventually(Duration::from_secs(10), || {
        let base = base.clone();
        let path = path.clone();
        async move {
            let a = get(&base, &path, ADMIN_TOKEN).await;
            a.json["status"] == "expired" && a.json["state"] == "expired"
        }
    })
    .await;
    assert!(expired, "the expiry task marks the request expired");
    let a = post(&base, &format!("{path}/approve"), APPROVER_TOKEN, json!({})).await;
    assert_eq!(a.status, StatusCode::CONFLICT, "{}", a.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn break_glass_self_approves_caps_the_ttl_and_flags_the_grant_everywhere() {
    let tb = start("").await;
    let base = tb.admin_url();
    let mut body = request_body("read", "30m", "prod is down");
    body["break_glass"] = json!(true);
    let a = post(&base, "/v1/requests", REQUESTER_TOKEN, body).await;
    assert_eq!(
        a.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "role read has no break-glass: {}",
        a.text
    );
    assert_eq!(a.json["field"], "break_glass");

    let mut body = request_body("admin", "1h", "prod is down, pager 991");
    body["break_glass"] = json!(true);
    let r = file(&base, REQUESTER_TOKEN, body).await;
    assert_eq!(r["status"], "approved", "no reviewer needed");
    assert_eq!(r["break_glass"], true);
    assert_eq!(r["ttl"], "10m", "capped at break_glass_max_ttl");
    // See: issue 17: the cap was silent; the answer says what was asked and what was granted.
    assert_eq!(
        r["note"], "ttl 1h was capped at 10m (break_glass_max_ttl of role admin)",
        "{r}"
    );
    let gid = r["grant_id"].as_str().unwrap().to_owned();

    let g = get(&base, &format!("/v1/grants/{gid}"), REQUESTER_TOKEN).await;
    assert_eq!(g.json["break_glass"], true, "{}", g.text);
    let starts = chrono::DateTime::parse_from_rfc3339(g.json["starts_at"].as_str().unwrap()).unwrap();
    let ends = chrono::DateTime::parse_from_rfc3339(g.json["expires_at"].as_str().unwrap()).unwrap();
    assert_eq!((ends - starts).num_seconds(), 600);
    let listed = get(&base, "/v1/grants", ADMIN_TOKEN).await;
    assert_eq!(listed.json["grants"][0]["break_glass"], true);

    let audit = get(
        &base,
        &format!("/v1/audit?kind=grant_issued&grant={gid}"),
        AUDITOR_TOKEN,
    )
    .await;
    assert_eq!(
        audit.json["events"][0]["payload"]["break_glass"], true,
        "{}",
        audit.text
    );
    assert_eq!(audit.json["events"][0]["payload"]["created_by"], "alice");

    // Extending a break-glass grant stops at its break-glass cap, counted from its start.
    let ext = post(
        &base,
        &format!("/v1/grants/{gid}/extend"),
        APPROVER_TOKEN,
        json!({"ttl": "5m"}),
    )
    .await;
    assert_eq!(ext.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", ext.text);

    let token = send(
        &base,
        Method::POST,
        &format!("/v1/requests/{}/token", id(&r)),
        Some(REQUESTER_TOKEN),
        None,
    )
    .await;
    assert_eq!(token.status, StatusCode::OK, "{}", token.text);
    assert_eq!(token.json["grant"]["break_glass"], true);
}

// ---------------------------------------------------------------------------------------------
// Grants and live sessions.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extension_reaches_a_live_session_which_outlives_the_original_expiry() {
    let tb = start("").await;
    let base = tb.admin_url();
    let (grant, token) = tb.grant("alice", "read", "2s").await;
    let client = connect(&tb.conn_string("alice", &token, "disable")).await;
    let a = post(
        &base,
        &format!("/v1/grants/{}/extend", grant.id),
        APPROVER_TOKEN,
        json!({ "ttl": "1m", "reason": "still debugging" }),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let new_end = chrono::DateTime::parse_from_rfc3339(a.json["expires_at"].as_str().unwrap()).unwrap();
    assert_eq!(
        new_end.timestamp_micros(),
        grant.expires_at.timestamp_micros() + 60_000_000,
        "old expiry + ttl (the store keeps microseconds)"
    );

    tokio::time::sleep(Duration::from_secs(3)).await;
    let n: i64 = client
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .expect("the session outlives the original expiry")
        .get(0);
    assert_eq!(n, common::cluster::ITEMS_ROWS);

    // Never past start + max_ttl (8h for read); revoked grants cannot be extended.
    let too_far = post(
        &base,
        &format!("/v1/grants/{}/extend", grant.id),
        ADMIN_TOKEN,
        json!({ "ttl": "8h" }),
    )
    .await;
    assert_eq!(
        too_far.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        too_far.text
    );
    assert_eq!(too_far.json["field"], "ttl");
    let audit = get(
        &base,
        &format!("/v1/audit?kind=grant_extended&grant={}", grant.id),
        AUDITOR_TOKEN,
    )
    .await;
    assert_eq!(
        audit.json["events"][0]["payload"]["extended_by"], "bob",
        "{}",
        audit.text
    );
    assert_eq!(audit.json["events"][0]["payload"]["reason"], "still debugging");
    post(
        &base,
        &format!("/v1/grants/{}/revoke", grant.id),
        ADMIN_TOKEN,
        json!({ "reason": "done" }),
    )
    .await;
    let revoked = post(
        &base,
        &format!("/v1/grants/{}/extend", grant.id),
        ADMIN_TOKEN,
        json!({ "ttl": "1m" }),
    )
    .await;
    assert_eq!(revoked.status, StatusCode::CONFLICT, "{}", revoked.text);

    let (expired, _) = tb.grant("alice", "read", "1s").await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let a = post(
        &base,
        &format!("/v1/grants/{}/extend", expired.id),
        ADMIN_TOKEN,
        json!({ "ttl": "1m" }),
    )
    .await;
    assert_eq!(a.status, StatusCode::CONFLICT, "{}", a.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_listed_and_a_kill_severs_a_running_query_naming_who() {
    let tb = start("").await;
    let base = tb.admin_url();
    let (grant, token) = tb.grant("alice", "read", "10m").await;
    let (_, other_token) = tb.grant("carol", "read", "10m").await;
    let client = connect(&tb.conn_string("alice", &token, "disable")).await;
    let _other = connect(&tb.conn_string("carol", &other_token, "disable")).await;
    client.simple_query("SELECT 1").await.unwrap();

    let all = get(&base, "/v1/sessions", AUDITOR_TOKEN).await;
    assert_eq!(all.json["sessions"].as_array().unwrap().len(), 2, "{}", all.text);
    let mine = get(&base, "/v1/sessions", REQUESTER_TOKEN).await;
    let sessions = mine.json["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 1, "a requester sees only its own: {}", mine.text);
    let s = &sessions[0];
    assert_eq!(s["user"], "alice");
    assert_eq!(s["target"], "shop");
    assert_eq!(s["role"], "read");
    assert_eq!(s["grant_id"], grant.id.as_str());
    assert!(s["client_addr"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(s["statements"].as_u64().unwrap() >= 1);
    assert!(s["bytes_to_client"].as_u64().unwrap() > 0);
    assert!(s["started_at"].is_string() && s["expires_at"].is_string());
    let sid = s["id"].as_str().unwrap().to_owned();

    let running = tokio::spawn(async move { client.simple_query("SELECT pg_sleep(30)").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let path = format!("/v1/sessions/{sid}");
    let a = send(
        &base,
        Method::DELETE,
        &path,
        Some(APPROVER_TOKEN),
        Some(json!({})),
    )
    .await;
    assert_eq!(
        a.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "a reason is required: {}",
        a.text
    );
    let a = send(
        &base,
        Method::DELETE,
        &path,
        Some(APPROVER_TOKEN),
        Some(json!({ "reason": "runaway query" })),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let err = tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the query ends at once")
        .unwrap()
        .expect_err("the query is severed");
    let db = err.as_db_error().unwrap_or_else(|| panic!("{err:?}"));
    assert_eq!(db.code().code(), "57P01");
    assert!(
        db.message().contains("bob") && db.message().contains("runaway query"),
        "{}",
        db.message()
    );

    assert!(
        eventually(Duration::from_secs(5), || {
            let base = base.clone();
            async move {
                let a = get(&base, "/v1/sessions", ADMIN_TOKEN).await;
                a.json["sessions"].as_array().unwrap().len() == 1
            }
        })
        .await
    );
    let gone = send(
        &base,
        Method::DELETE,
        &path,
        Some(ADMIN_TOKEN),
        Some(json!({"reason": "x"})),
    )
    .await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
}

// ---------------------------------------------------------------------------------------------
// OpenAPI.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_lists_every_route_the_router_serves() {
    let tb = start("").await;
    let base = tb.admin_url();
    let doc = send(&base, Method::GET, "/v1/openapi.json", None, None).await;
    assert_eq!(doc.status, StatusCode::OK);
    assert!(
        doc.json["openapi"].as_str().unwrap().starts_with("3."),
        "{}",
        doc.text
    );
    assert!(doc.json["components"]["schemas"]["GrantView"].is_object());
    assert!(doc.json["components"]["securitySchemes"]["bearer"].is_object());
    let mut documented = Vec::new();
    for (path, item) in doc.json["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    documented.sort();
    let mut matrix: Vec<String> = timebox::admin::ROLE_MATRIX
        .iter()
        .map(|(m, p, _)| format!("{m} {p}"))
        .collect();
    matrix.sort();
    assert_eq!(documented, matrix);
    // Every documented route is served (not the router's fallback), and an undocumented one is not.
    for route in &documented {
        let (method, path) = route.split_once(' ').unwrap();
        let path = path.replace("{id}", "x_nope").replace("{name}", "x_nope");
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let a = send(&base, method, &path, Some(ADMIN_TOKEN), Some(json!({}))).await;
        assert_ne!(a.status, StatusCode::METHOD_NOT_ALLOWED, "{route}: {}", a.text);
        assert!(!a.text.contains("no route for"), "{route}: {}", a.text);
    }
    let a = get(&base, "/v1/nothing", ADMIN_TOKEN).await;
    assert!(a.text.contains("no route for"));
}

// ---------------------------------------------------------------------------------------------
// The CLI.
// ---------------------------------------------------------------------------------------------

/// Runs the binary with `token`: whether it succeeded, its stdout and stderr.
async fn timebox(args: &[&str], token: &str) -> (bool, String, String) {
    let out = cli::timebox(args, Some(token)).await;
    (out.status.success(), cli::stdout(&out), cli::stderr(&out))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_files_reviews_fetches_extends_lists_and_kills() {
    let tb = start("").await;
    let url = tb.admin_url();
    let (ok, out, err) = timebox(
        &[
            "request",
            "--admin-url",
            &url,
            "create",
            "--target",
            "shop",
            "--role",
            "read",
            "--ttl",
            "20m",
            "--reason",
            "look at refunds",
            "--ticket",
            "INC-9",
            "--json",
        ],
        REQUESTER_TOKEN,
    )
    .await;
    assert!(ok, "{out}{err}");
    let rid = serde_json::from_str::<Value>(&out).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let (ok, out, _) = timebox(&["request", "--admin-url", &url, "list"], APPROVER_TOKEN).await;
    assert!(
        ok && out.starts_with("ID") && out.contains(&rid) && out.contains("pending"),
        "{out}"
    );
    let (ok, _, err) = timebox(
        &["request", "--admin-url", &url, "approve", &rid],
        REQUESTER_TOKEN,
    )
    .await;
    assert!(
        !ok && err.contains("forbidden") && !err.contains("panicked"),
        "the API's message: {err}"
    );
    let (ok, out, err) = timebox(
        &[
            "request",
            "--admin-url",
            &url,
            "approve",
            &rid,
            "--reason",
            "fine",
        ],
        APPROVER_TOKEN,
    )
    .await;
    assert!(ok && out.contains("approved"), "{out}{err}");
    let (ok, out, err) = timebox(&["request", "--admin-url", &url, "token", &rid], REQUESTER_TOKEN).await;
    assert!(ok && out.contains("shown only once"), "{out}{err}");
    let token = out
        .split_whitespace()
        .find(|w| w.starts_with("tbx_"))
        .unwrap()
        .to_owned();
    let (ok, _, err) = timebox(&["request", "--admin-url", &url, "token", &rid], REQUESTER_TOKEN).await;
    assert!(!ok && err.contains("already fetched"), "{err}");
    let (ok, out, _) = timebox(
        &["request", "--admin-url", &url, "show", &rid, "--json"],
        ADMIN_TOKEN,
    )
    .await;
    assert!(ok);
    let gid = serde_json::from_str::<Value>(&out).unwrap()["grant_id"]
        .as_str()
        .unwrap()
        .to_owned();

    let (ok, out, err) = timebox(
        &[
            "grant",
            "--admin-url",
            &url,
            "extend",
            &gid,
            "--ttl",
            "10m",
            "--reason",
            "more",
        ],
        APPROVER_TOKEN,
    )
    .await;
    assert!(ok && out.contains("Extended grant"), "{out}{err}");

    let client = connect(&tb.conn_string("alice", &token, "disable")).await;
    client.simple_query("SELECT 1").await.unwrap();
    let (ok, out, _) = timebox(&["session", "--admin-url", &url, "list"], AUDITOR_TOKEN).await;
    assert!(
        ok && out.starts_with("ID") && out.contains("alice") && out.contains(&gid),
        "{out}"
    );
    let (ok, out, _) = timebox(&["session", "--admin-url", &url, "list", "--json"], ADMIN_TOKEN).await;
    assert!(ok);
    let sid = serde_json::from_str::<Value>(&out).unwrap()["sessions"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (ok, out, err) = timebox(
        &[
            "session",
            "--admin-url",
            &url,
            "kill",
            &sid,
            "--reason",
            "end of test",
        ],
        APPROVER_TOKEN,
    )
    .await;
    assert!(ok && out.contains("Killed session"), "{out}{err}");
    let severed = client.simple_query("SELECT 1").await;
    assert!(severed.is_err());
}
