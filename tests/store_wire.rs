//! A real timebox instance whose store is PostgreSQL (`[store] url = "postgres://…"`, a fresh
//! database on the throwaway cluster): grants issued over the admin API land in that database,
//! real clients log in through the proxy with them, and a revoke severs the live session.

mod common;

use std::time::Duration;

use futures::FutureExt;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio_postgres::NoTls;

use common::{cli, http, Options, StoreDatabase, ADMIN_TOKEN};

async fn post(base: &str, path: &str, body: Value) -> (StatusCode, Value) {
    let a = http::post(base, path, ADMIN_TOKEN, body).await.expect_json();
    (a.status, a.json)
}

/// Runs `sql` in the store database as the superuser (blocking psql, off the runtime).
async fn store_psql(db: &std::sync::Arc<StoreDatabase>, sql: &str) -> String {
    let (db, sql) = (db.clone(), sql.to_owned());
    tokio::task::spawn_blocking(move || db.psql(&sql).trim().to_owned())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_live_in_the_postgres_store_and_a_revoke_severs_the_session() {
    let db = std::sync::Arc::new(StoreDatabase::create_async().await);
    let inst = common::start(Options {
        store: Some(db.store_lines()),
        ..Options::default()
    })
    .await;
    assert_eq!(inst.state.grants.store().kind(), "postgres");

    let (status, issued) = post(
        &inst.admin_url(),
        "/v1/grants",
        json!({ "user": "alice", "target": "shop", "role": "read", "ttl": "30m", "reason": "incident 11" }),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{issued}");
    let id = issued["id"].as_str().unwrap().to_owned();
    let token = issued["token"].as_str().unwrap().to_owned();

    // The grant (with its verifier, never the token) is in PostgreSQL; nothing went to SQLite.
    let row = store_psql(
        &db,
        &format!("SELECT user_name || '|' || left(verifier, 14) FROM timebox.grants WHERE id = '{id}'"),
    )
    .await;
    assert_eq!(row, "alice|SCRAM-SHA-256$");
    let leaked = store_psql(
        &db,
        &format!("SELECT count(*) FROM timebox.grants WHERE verifier LIKE '%{token}%'"),
    )
    .await;
    assert_eq!(leaked, "0");
    assert!(
        !inst.dir.path().join("timebox.db").exists(),
        "no SQLite store beside it"
    );
    assert!(
        inst.dir.path().join("audit/audit.db").exists(),
        "the audit stays local, in [audit] dir"
    );

    // psql logs in through the proxy with the token.
    let out = common::psql(
        &common::proxy_conn(&inst, "alice", "sslmode=disable"),
        &token,
        "SELECT count(*) FROM items",
    )
    .await;
    assert!(out.success, "{}", out.stderr);
    assert_eq!(out.stdout.trim(), common::cluster::ITEMS_ROWS.to_string());

    // So does tokio-postgres; its running query is cut by the revoke.
    let (client, connection) = tokio_postgres::connect(&inst.conn_string("alice", &token, "disable"), NoTls)
        .await
        .expect("login through the proxy");
    tokio::spawn(connection);
    let query = tokio::spawn(async move { client.simple_query("SELECT pg_sleep(60)").await });
    assert!(
        common::eventually(Duration::from_secs(10), || common::upstream_backends(&id)
            .then(|n| async move { n == 1 }))
        .await,
        "the session reached the upstream"
    );
    let (status, revoked) = post(
        &inst.admin_url(),
        &format!("/v1/grants/{id}/revoke"),
        json!({ "reason": "incident over" }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{revoked}");
    let err = tokio::time::timeout(Duration::from_secs(20), query)
        .await
        .expect("the session is severed")
        .unwrap()
        .unwrap_err();
    let db_err = err.as_db_error().unwrap_or_else(|| panic!("{err:?}"));
    assert_eq!(db_err.code().code(), "57P01", "{}", db_err.message());
    assert!(
        db_err.message().contains("was revoked at"),
        "{}",
        db_err.message()
    );

    let revoked_by = store_psql(
        &db,
        &format!("SELECT revoked_by || '|' || revoke_reason FROM timebox.grants WHERE id = '{id}'"),
    )
    .await;
    assert_eq!(revoked_by, "ops|incident over");
    let again = common::psql(
        &common::proxy_conn(&inst, "alice", "sslmode=disable"),
        &token,
        "SELECT 1",
    )
    .await;
    assert!(
        !again.success && again.stderr.contains("revoked"),
        "{}",
        again.stderr
    );
}

/// A PostgreSQL store that cannot be reached at start: the instance does not start, and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_with_an_unreachable_store_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let store = format!("url = \"postgres://nobody@127.0.0.1:{port}/timebox\"\nconnect_timeout = \"10s\"");
    let text = common::config_text(
        &Options {
            tls: "disabled",
            store: Some(store),
            ..Options::default()
        },
        dir.path(),
        5432,
    );
    let config = timebox::config::Config::from_toml_str(&text).expect("valid config");
    let err = tokio::task::spawn_blocking(move || timebox::app::AppState::build(config))
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        err.to_string().contains("cannot connect to the PostgreSQL store"),
        "{err}"
    );
}

/// `timebox store migrate` brings a fresh PostgreSQL store to the binary's version, then says it is
/// up to date; a config error is exit 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_migrate_creates_then_reports_up_to_date() {
    let db = std::sync::Arc::new(StoreDatabase::create_async().await);
    let dir = tempfile::tempdir().unwrap();
    let text = common::config_text(
        &Options {
            tls: "disabled",
            store: Some(db.store_lines()),
            ..Options::default()
        },
        dir.path(),
        5432,
    );
    let config = dir.path().join("timebox.toml");
    std::fs::write(&config, text).unwrap();
    let migrate = |path: std::path::PathBuf| async move {
        let args = ["store", "migrate", "--config", path.to_str().unwrap()];
        cli::outcome(&cli::timebox(&args, None).await)
    };
    let (code, stdout, stderr) = migrate(config.clone()).await;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("migrated from version 0 to"), "{stdout}");
    let versions = store_psql(&db, "SELECT count(*) FROM timebox.schema_version").await;
    assert!(versions.trim().parse::<i64>().unwrap() >= 1, "{versions}");
    let (code, stdout, stderr) = migrate(config).await;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("up to date"), "{stdout}");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[store]\nurl = \"mysql://x\"\n").unwrap();
    let (code, _, stderr) = migrate(bad).await;
    assert_eq!(code, Some(2), "{stderr}");
}
