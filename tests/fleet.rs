//! The fleet (issue 11 items 2 and 3): two timebox instances, A and B, on one PostgreSQL store (a
//! fresh database of the throwaway cluster) in front of one target, in one test process, with real
//! clients. A grant issued on A logs in through B; a revoke on A severs the session on B by
//! notification (the reconcile is set far off, so only NOTIFY can do it); a kill on B severs a
//! session on A; an extension on A reaches a live session on B; `/v1/sessions` and
//! `/v1/instances` on either show both; and with the listener connection killed and a revoke
//! written without a notification, the reconcile still severs the session.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use reqwest::{Method, StatusCode};
use serde_json::json;
use tokio_postgres::NoTls;

use common::http::call;
use common::{Options, StoreDatabase, TestInstance, ADMIN_TOKEN, AUDITOR_TOKEN};

/// Generous bound for "within 1 s" on a loaded 2-core machine; the measured time is printed.
const SEVER_DEADLINE: Duration = Duration::from_secs(8);

/// Starts instance `name` on the store, with the given reconcile interval.
async fn instance(db: &StoreDatabase, name: &str, reconcile: &str) -> TestInstance {
    instance_with(db, name, reconcile, "10m").await
}

async fn instance_with(db: &StoreDatabase, name: &str, reconcile: &str, staleness: &str) -> TestInstance {
    let fleet = common::fleet::timings(reconcile, staleness);
    common::fleet::instance_on(db, name, &fleet, Options::default()).await
}

/// A and B on a fresh store database.
async fn fleet(reconcile: &str) -> (Arc<StoreDatabase>, TestInstance, TestInstance) {
    let db = Arc::new(StoreDatabase::create_async().await);
    let a = instance(&db, "tb-a", reconcile).await;
    let b = instance(&db, "tb-b", reconcile).await;
    (db, a, b)
}

async fn issue_on(inst: &TestInstance, user: &str, ttl: &str) -> (String, String) {
    common::fleet::issue_read(inst, user, ttl, "fleet test").await
}

/// A tokio-postgres session through `inst`, running `SELECT pg_sleep(60)` in the background once
/// it has reached the upstream.
async fn sleeping_session(
    inst: &TestInstance,
    user: &str,
    token: &str,
    grant_id: &str,
) -> tokio::task::JoinHandle<Result<Vec<tokio_postgres::SimpleQueryMessage>, tokio_postgres::Error>> {
    let (client, connection) = tokio_postgres::connect(&inst.conn_string(user, token, "disable"), NoTls)
        .await
        .expect("login through the proxy");
    tokio::spawn(connection);
    let query = tokio::spawn(async move { client.simple_query("SELECT pg_sleep(60)").await });
    let id = grant_id.to_owned();
    assert!(
        common::eventually(Duration::from_secs(20), || common::upstream_backends(&id)
            .then(|n| async move { n >= 1 }))
        .await,
        "the session reached the upstream"
    );
    query
}

/// Waits for the severed query and returns its SQLSTATE and message.
async fn severed(
    query: tokio::task::JoinHandle<Result<Vec<tokio_postgres::SimpleQueryMessage>, tokio_postgres::Error>>,
    deadline: Duration,
) -> (String, String) {
    let err = tokio::time::timeout(deadline, query)
        .await
        .expect("the session is severed in time")
        .unwrap()
        .unwrap_err();
    let db = err.as_db_error().unwrap_or_else(|| panic!("{err:?}"));
    (db.code().code().to_owned(), db.message().to_owned())
}

/// Sessions listed by `inst`'s `/v1/sessions`: (id, instance).
async fn sessions_on(inst: &TestInstance) -> Vec<(String, String)> {
    let (status, list) = call(&inst.admin_url(), Method::GET, "/v1/sessions", ADMIN_TOKEN, None).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    list["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["id"].as_str().unwrap().to_owned(),
                s["instance"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_issued_on_a_logs_in_through_b_and_a_revoke_on_a_severs_it_on_b_by_notification() {
    // The reconcile is a minute away: only the notification can sever within the deadline.
    let (_db, a, b) = fleet("60s").await;
    let (id, token) = issue_on(&a, "alice", "30m").await;

    let out = common::psql(
        &common::proxy_conn(&b, "alice", "sslmode=disable"),
        &token,
        "SELECT 1",
    )
    .await;
    assert!(out.success, "psql through B: {}", out.stderr);

    let query = sleeping_session(&b, "alice", &token, &id).await;
    let started = Instant::now();
    let (status, body) = call(
        &a.admin_url(),
        Method::POST,
        &format!("/v1/grants/{id}/revoke"),
        ADMIN_TOKEN,
        Some(json!({ "reason": "incident over" })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (code, message) = severed(query, SEVER_DEADLINE).await;
    println!("revoke on A severed the session on B in {:?}", started.elapsed());
    assert_eq!(code, "57P01", "{message}");
    assert!(message.contains("was revoked at"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_and_instances_are_listed_fleet_wide_and_a_kill_on_b_severs_a_session_on_a() {
    let (_db, a, b) = fleet("60s").await;
    let (id_a, token_a) = issue_on(&a, "alice", "30m").await;
    let (id_b, token_b) = issue_on(&b, "bob", "30m").await;
    let on_a = sleeping_session(&a, "alice", &token_a, &id_a).await;
    let _on_b = sleeping_session(&b, "bob", &token_b, &id_b).await;

    // Both instances list both sessions, each with the instance holding it.
    for inst in [&a, &b] {
        let holders = |list: Vec<(String, String)>| {
            let mut h: Vec<String> = list.into_iter().map(|(_, i)| i).collect();
            h.sort();
            h
        };
        let both = common::eventually(Duration::from_secs(10), || {
            sessions_on(inst).map(move |l| holders(l) == ["tb-a", "tb-b"])
        })
        .await;
        assert!(
            both,
            "sessions seen from one instance: {:?}",
            holders(sessions_on(inst).await)
        );
    }
    for inst in [&a, &b] {
        let (status, list) = call(
            &inst.admin_url(),
            Method::GET,
            "/v1/instances",
            AUDITOR_TOKEN,
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{list}");
        assert_eq!(list["fleet"], true);
        let names: Vec<(&str, bool)> = list["instances"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| (i["name"].as_str().unwrap(), i["alive"].as_bool().unwrap()))
            .collect();
        assert_eq!(names, [("tb-a", true), ("tb-b", true)], "{list}");
    }

    // Killed on B, severed on A; B answers once A confirms.
    let session_a = sessions_on(&b)
        .await
        .into_iter()
        .find(|(_, i)| i == "tb-a")
        .unwrap()
        .0;
    let started = Instant::now();
    let (status, killed) = call(
        &b.admin_url(),
        Method::DELETE,
        &format!("/v1/sessions/{session_a}"),
        ADMIN_TOKEN,
        Some(json!({ "reason": "suspicious" })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{killed}");
    assert_eq!(killed["confirmed"], true, "{killed}");
    assert_eq!(killed["instance"], "tb-a", "{killed}");
    let (code, message) = severed(on_a, SEVER_DEADLINE).await;
    println!("kill on B severed the session on A in {:?}", started.elapsed());
    assert_eq!(code, "57P01", "{message}");
    assert!(message.contains("suspicious"), "{message}");

    // An unknown session is 404 on any instance.
    let (status, body) = call(
        &b.admin_url(),
        Method::DELETE,
        "/v1/sessions/s_0000000000000001",
        ADMIN_TOKEN,
        Some(json!({ "reason": "x" })),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extension_on_a_reaches_a_live_session_on_b() {
    let (_db, a, b) = fleet("60s").await;
    let (id, token) = issue_on(&a, "alice", "30m").await;
    let (client, connection) = tokio_postgres::connect(&b.conn_string("alice", &token, "disable"), NoTls)
        .await
        .expect("login through B");
    tokio::spawn(connection);
    client.simple_query("SELECT 1").await.expect("a first statement");
    let before = b.state.grants.get(&id).await.unwrap().expires_at;

    let (status, body) = call(
        &a.admin_url(),
        Method::POST,
        &format!("/v1/grants/{id}/extend"),
        ADMIN_TOKEN,
        Some(json!({ "ttl": "1h", "reason": "longer incident" })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // B's live session watches the grant; the extension lands in its watch (the relay's expiry).
    let grant = b.state.grants.get(&id).await.unwrap();
    assert!(grant.expires_at > before);
    let watch = b.state.grants.watches().subscribe(&grant);
    assert!(
        common::eventually(SEVER_DEADLINE, || {
            let seen = watch.current().expires_at;
            async move { seen == grant.expires_at }
        })
        .await,
        "B's session saw the new expiry"
    );
    client.simple_query("SELECT 1").await.expect("still serving");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_listener_killed_and_no_notification_the_reconcile_still_severs() {
    let (db, _a, b) = fleet("1s").await;
    let (id, token) = issue_on(&b, "alice", "30m").await;
    let query = sleeping_session(&b, "alice", &token, &id).await;

    // B's listener connection, found by its application_name, is terminated.
    let listener = "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                    WHERE datname = current_database() AND application_name = 'timebox-listen:tb-b'";
    let db2 = db.clone();
    let killed = tokio::task::spawn_blocking(move || db2.psql(listener))
        .await
        .unwrap();
    assert_eq!(killed.trim(), "1", "B's listener was found and terminated");

    // A revoke written without any notification (a lost NOTIFY): only the reconcile can see it.
    let started = Instant::now();
    let db2 = db.clone();
    let sql = format!(
        "UPDATE timebox.grants SET revoked_at = now(), revoked_by = 'dba', revoke_reason = 'by hand' WHERE id = '{id}'"
    );
    tokio::task::spawn_blocking(move || db2.psql(&sql)).await.unwrap();
    let (code, message) = severed(query, SEVER_DEADLINE).await;
    println!(
        "without a notification, the reconcile severed the session in {:?}",
        started.elapsed()
    );
    assert_eq!(code, "57P01", "{message}");
    assert!(message.contains("was revoked at"), "{message}");

    // The listener came back by itself.
    let db2 = db.clone();
    assert!(
        common::eventually(Duration::from_secs(10), || {
            let db = db2.clone();
            async move {
                tokio::task::spawn_blocking(move || {
                    db.psql("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'timebox-listen:tb-b'")
                })
                .await
                .unwrap()
                .trim()
                    == "1"
            }
        })
        .await,
        "B listens again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_instances_sessions_drop_out_and_a_second_live_instance_of_a_name_is_refused() {
    let (db, a, _b) = fleet("60s").await;
    // An instance whose last heartbeat is older than instance_timeout (as after kill -9), with a
    // session it never deregistered.
    let db2 = db.clone();
    tokio::task::spawn_blocking(move || {
        db2.psql(
            "INSERT INTO timebox.instances (name, incarnation, advertise, version, started_at, heartbeat_at, sessions) \
             VALUES ('tb-dead', 'x', '10.0.0.9:6432', '0.0.0', now() - interval '1 hour', now() - interval '1 minute', 1); \
             INSERT INTO timebox.sessions (id, instance, grant_id, user_name, target, role, client_addr, started_at) \
             VALUES ('s_00000000000000dd', 'tb-dead', 'g_x', 'mallory', 'shop', 'read', '10.0.0.1:1', now())",
        )
    })
    .await
    .unwrap();
    let (status, list) = call(&a.admin_url(), Method::GET, "/v1/instances", ADMIN_TOKEN, None).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let dead = list["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "tb-dead")
        .expect("listed");
    assert_eq!(dead["alive"], false, "{list}");
    assert!(
        sessions_on(&a)
            .await
            .iter()
            .all(|(id, _)| id != "s_00000000000000dd"),
        "a dead instance's session is not in the fleet view"
    );
    let (status, body) = call(
        &a.admin_url(),
        Method::DELETE,
        "/v1/sessions/s_00000000000000dd",
        ADMIN_TOKEN,
        Some(json!({ "reason": "x" })),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    // A second instance named tb-a while tb-a is alive does not join.
    let (_state, registered) = register_another(&db, "tb-a").await;
    let err = registered.unwrap_err();
    assert!(
        matches!(err, timebox::fleet::FleetError::NameInUse(ref n) if n == "tb-a"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_store_gone_logins_get_08006_stale_sessions_are_severed_and_all_resumes_when_it_returns() {
    let db = Arc::new(StoreDatabase::create_async().await);
    let b = instance_with(&db, "tb-b", "1s", "6s").await;
    let (id, token) = issue_on(&b, "alice", "30m").await;
    let (client, connection) = tokio_postgres::connect(&b.conn_string("alice", &token, "disable"), NoTls)
        .await
        .expect("login through B");
    let notices = notices_of(connection);
    let query = tokio::spawn(async move { client.simple_query("SELECT pg_sleep(60)").await });
    until_sleeping(&id).await;

    // The store refuses every connection, and the ones it had are cut.
    let database = db.database.clone();
    tokio::task::spawn_blocking(move || {
        common::cluster::shared_cluster()
            .psql(
                "postgres",
                &format!(
                    "ALTER DATABASE {database} ALLOW_CONNECTIONS false; \
                     SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = '{database}'"
                ),
            )
            .unwrap_or_else(|e| panic!("{e}"))
    })
    .await
    .unwrap();
    let started = Instant::now();

    // A new login fails closed, naming the store.
    let err = tokio_postgres::connect(&b.conn_string("alice", &token, "disable"), NoTls)
        .await
        .map(|_| ())
        .expect_err("no login without the store");
    let db_err = err.as_db_error().unwrap_or_else(|| panic!("{err:?}"));
    assert_eq!(db_err.code().code(), "08006", "{}", db_err.message());
    assert!(db_err.message().contains("store"), "{}", db_err.message());

    // The live session is warned at half of max_staleness (6 s), then goes once its grant state
    // is older than that.
    let (code, message) = severed(query, Duration::from_secs(40)).await;
    let notices = notices.await.unwrap();
    assert!(
        notices.iter().any(|n| n
            .starts_with("timebox cannot reach its store; this session will be closed in ")
            && n.ends_with(" s unless it recovers")),
        "the session was warned before it was severed: {notices:?}"
    );
    println!(
        "store gone: the stale session was severed after {:?}",
        started.elapsed()
    );
    assert_eq!(code, "57P01", "{message}");
    assert!(message.contains("max_staleness"), "{message}");

    // The store comes back: logins work again without a restart.
    let database = db.database.clone();
    tokio::task::spawn_blocking(move || {
        common::cluster::shared_cluster()
            .psql(
                "postgres",
                &format!("ALTER DATABASE {database} ALLOW_CONNECTIONS true"),
            )
            .unwrap_or_else(|e| panic!("{e}"))
    })
    .await
    .unwrap();
    let conn = b.conn_string("alice", &token, "disable");
    assert!(
        common::eventually(Duration::from_secs(30), || {
            let conn = conn.clone();
            async move {
                match tokio_postgres::connect(&conn, NoTls).await {
                    Ok((client, connection)) => {
                        tokio::spawn(connection);
                        client.simple_query("SELECT 1").await.is_ok()
                    }
                    Err(_) => false,
                }
            }
        })
        .await,
        "logins work again once the store is back"
    );
}

/// Drives a tokio-postgres connection and collects the NOTICE texts it receives until it ends.
fn notices_of<S, T>(mut connection: tokio_postgres::Connection<S, T>) -> tokio::task::JoinHandle<Vec<String>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let mut notices = Vec::new();
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = futures::StreamExt::next(&mut messages).await {
            if let tokio_postgres::AsyncMessage::Notice(n) = message {
                notices.push(n.message().to_owned());
            }
        }
        notices
    })
}

/// Generous bound for "a cancel stops the query quickly" (the query would run 30 s).
const CANCEL_DEADLINE: Duration = Duration::from_secs(10);

/// Whether a `pg_sleep` of grant `grant_id` is running upstream now.
async fn sleep_running(grant_id: &str) -> bool {
    let sql = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'timebox:%:{grant_id}%' \
         AND state = 'active' AND query LIKE 'SELECT pg_sleep%'"
    );
    tokio::task::spawn_blocking(move || common::cluster::shop_psql(&sql).trim() == "1")
        .await
        .unwrap()
}

/// Waits (bounded) until a `pg_sleep` of `grant_id` runs upstream.
async fn until_sleeping(grant_id: &str) {
    let id = grant_id.to_owned();
    assert!(
        common::eventually(Duration::from_secs(20), || sleep_running(&id)).await,
        "the query reached the upstream"
    );
}

type Query = tokio::task::JoinHandle<Result<Vec<tokio_postgres::SimpleQueryMessage>, tokio_postgres::Error>>;

/// A tokio-postgres login through the balancer running `SELECT pg_sleep(30)`; its cancel token.
async fn sleeping_through(
    lb: &common::balancer::Balancer,
    token: &str,
    grant_id: &str,
) -> (Query, tokio_postgres::CancelToken) {
    let conn = format!(
        "{} password={token} sslmode=disable connect_timeout=10",
        lb.conn("alice", "")
    );
    let (client, connection) = tokio_postgres::connect(&conn, NoTls)
        .await
        .expect("login through the balancer");
    tokio::spawn(connection);
    let cancel = client.cancel_token();
    let query = tokio::spawn(async move { client.simple_query("SELECT pg_sleep(30)").await });
    until_sleeping(grant_id).await;
    (query, cancel)
}

/// Waits for a cancelled query and returns its SQLSTATE.
async fn cancelled(query: Query) -> String {
    let err = tokio::time::timeout(CANCEL_DEADLINE, query)
        .await
        .expect("the cancel stopped the query in time")
        .unwrap()
        .unwrap_err();
    let db = err.as_db_error().unwrap_or_else(|| panic!("{err:?}"));
    db.code().code().to_owned()
}

fn forwards(inst: &TestInstance, outcome: &str) -> u64 {
    inst.state
        .proxy
        .metrics
        .fleet_cancel_forwards_total
        .with_label_values(&[outcome])
        .get()
}

// Regression (issue 11 item 4): a CancelRequest that a balancer sends to the instance not holding
// the session was ignored, so the query ran on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_through_a_round_robin_balancer_cancels_the_query_whichever_instance_it_lands_on() {
    let (_db, a, b) = fleet("60s").await;
    let lb = common::balancer::Balancer::start(vec![a.proxy_addr, b.proxy_addr]).await;
    let (id, token) = issue_on(&a, "alice", "30m").await;
    let peer_of = |inst: &TestInstance| inst.state.fleet.as_ref().unwrap().peer_id();
    assert!(
        common::eventually(Duration::from_secs(10), || {
            let joined = peer_of(&a).is_some() && peer_of(&b).is_some();
            async move { joined }
        })
        .await,
        "both instances joined the fleet"
    );
    let (peer_a, peer_b) = (peer_of(&a).unwrap(), peer_of(&b).unwrap());
    assert_ne!(peer_a, peer_b, "peer ids are unique in the fleet");

    // 1. A session on A; a forged key naming A lands on B, is forwarded, and cancels nothing.
    let (query, cancel) = sleeping_through(&lb, &token, &id).await;
    let forged_pid = timebox::fleet::cancel::client_pid(peer_a, rand::random());
    let mut forged = tokio::net::TcpStream::connect(lb.addr).await.unwrap();
    let mut buf = bytes::BytesMut::new();
    postgres_protocol::message::frontend::cancel_request(forged_pid, rand::random(), &mut buf);
    tokio::io::AsyncWriteExt::write_all(&mut forged, &buf)
        .await
        .unwrap();
    assert!(
        common::eventually(Duration::from_secs(10), || {
            let n = forwards(&b, "forwarded");
            async move { n == 1 }
        })
        .await,
        "B forwarded the forged request to A"
    );
    assert!(sleep_running(&id).await, "a forged key cancelled nothing");
    assert!(!query.is_finished(), "a forged key cancelled nothing");
    // The real key lands on A, which holds it.
    let started = Instant::now();
    cancel
        .cancel_query(NoTls)
        .await
        .expect("cancel through the balancer");
    assert_eq!(cancelled(query).await, "57014");
    println!("cancel landing on the owner: {:?}", started.elapsed());

    // 2. A session on B; its cancel lands on A and is forwarded to B.
    let (query, cancel) = sleeping_through(&lb, &token, &id).await;
    let started = Instant::now();
    cancel
        .cancel_query(NoTls)
        .await
        .expect("cancel through the balancer");
    assert_eq!(cancelled(query).await, "57014");
    println!("cancel forwarded A -> B: {:?}", started.elapsed());
    assert_eq!(forwards(&a, "forwarded"), 1);

    // 3. psql on A (a connection that goes nowhere shifts the turn), Ctrl-C: the cancel lands on
    //    B and is forwarded to A.
    drop(tokio::net::TcpStream::connect(lb.addr).await.unwrap());
    let psql = common::cluster::shared_cluster().install().psql_path();
    let child = common::wire::spawn_psql(
        psql,
        &lb.conn("alice", "sslmode=disable"),
        &token,
        "SELECT pg_sleep(30)",
    );
    until_sleeping(&id).await;
    let started = Instant::now();
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = tokio::time::timeout(
        CANCEL_DEADLINE,
        tokio::task::spawn_blocking(move || child.wait_with_output().unwrap()),
    )
    .await
    .expect("psql's Ctrl-C cancelled the query in time")
    .unwrap();
    println!("psql Ctrl-C forwarded B -> A: {:?}", started.elapsed());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("canceling statement due to user request"),
        "{stderr}"
    );
    assert_eq!(forwards(&b, "forwarded"), 2);

    // Every login and its cancel went to different instances, as the balancer alternates.
    assert_eq!(lb.routed(), [0, 1, 0, 1, 0, 1, 0, 1]);
}

/// Another instance `name` on `db`, built but not started; its registration's outcome.
async fn register_another(
    db: &StoreDatabase,
    name: &str,
) -> (
    Arc<timebox::app::AppState>,
    Result<(), timebox::fleet::FleetError>,
) {
    let dir = tempfile::tempdir().unwrap();
    let text = common::config_text(
        &Options {
            tls: "disabled",
            store: Some(format!("{}\n[fleet]\ninstance = \"{name}\"", db.store_lines())),
            ..Options::default()
        },
        dir.path(),
        5432,
    );
    let config = timebox::config::Config::from_toml_str(&text).expect("valid config");
    let state = tokio::task::spawn_blocking(move || timebox::app::AppState::build(config))
        .await
        .unwrap()
        .expect("state");
    let registered = state.fleet.as_ref().unwrap().register(&state).await;
    (state, registered)
}

// The peer id in cancel keys must name one instance: allocated uniquely in the store, freed when
// an instance is dead, and a fleet with every id taken refuses a new instance (fail closed)
// rather than sharing one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_ids_are_unique_a_dead_instances_id_is_reused_and_a_full_fleet_refuses_another() {
    let (db, a, b) = fleet("60s").await;
    let peer_of = |inst: &TestInstance| inst.state.fleet.as_ref().unwrap().peer_id();
    assert!(
        common::eventually(Duration::from_secs(10), || {
            let joined = peer_of(&a).is_some() && peer_of(&b).is_some();
            async move { joined }
        })
        .await
    );
    let (pa, pb) = (peer_of(&a).unwrap(), peer_of(&b).unwrap());
    assert_ne!(pa, pb);
    let db2 = db.clone();
    let rows = tokio::task::spawn_blocking(move || {
        db2.psql("SELECT string_agg(name || '=' || peer_id, ',' ORDER BY name) FROM timebox.instances")
    })
    .await
    .unwrap();
    assert_eq!(rows.trim(), format!("tb-a={pa},tb-b={pb}"));

    // Every other id held by a live instance: a new one is refused.
    let db2 = db.clone();
    tokio::task::spawn_blocking(move || {
        db2.psql(&format!(
            "INSERT INTO timebox.instances (name, incarnation, advertise, version, started_at, heartbeat_at, peer_id) \
             SELECT 'tb-x' || g, 'x', '10.0.0.9:6432', '0', now(), now() + interval '1 hour', g \
             FROM generate_series(1, 255) g WHERE g NOT IN ({pa}, {pb})"
        ))
    })
    .await
    .unwrap();
    let (_, registered) = register_another(&db, "tb-c").await;
    assert!(
        matches!(registered, Err(timebox::fleet::FleetError::Full)),
        "{registered:?}"
    );

    // One of them is dead: its id is freed and the new instance takes it.
    let free = (1..=255u8).rev().find(|g| *g != pa && *g != pb).unwrap();
    let db2 = db.clone();
    tokio::task::spawn_blocking(move || {
        db2.psql(&format!(
            "UPDATE timebox.instances SET heartbeat_at = now() - interval '1 hour' WHERE name = 'tb-x{free}'"
        ))
    })
    .await
    .unwrap();
    let (state, registered) = register_another(&db, "tb-c").await;
    registered.expect("tb-c joins with the dead instance's peer id");
    assert_eq!(state.fleet.as_ref().unwrap().peer_id(), Some(free));
}
