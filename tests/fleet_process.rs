//! The fleet with one instance in a process of its own (issue 11, "done when": kill -9 of an
//! instance leaves the other serving). Instance A is the real `timebox serve` binary on the
//! store; B runs in this test process. A holds a live session; A is killed with SIGKILL (no
//! clean leave from the fleet); B goes on serving new logins at once, and A's session and A
//! itself drop out of B's fleet view once A's heartbeat is older than `[fleet] instance_timeout`.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio_postgres::NoTls;

use common::{Options, StoreDatabase, TestInstance, ADMIN_TOKEN};

/// The fleet timings of both instances: a dead instance is noticed after 3 s.
const FLEET: &str = "heartbeat_interval = \"250ms\"\ninstance_timeout = \"3s\"\nreconcile_interval = \"1s\"";

/// Generous bound for A dropping out of B's view (instance_timeout is 3 s) on a loaded machine.
const DROP_OUT_DEADLINE: Duration = Duration::from_secs(40);

async fn call(base: &str, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
    let answer = common::http::send(base, method, path, Some(ADMIN_TOKEN), body).await;
    (answer.status, answer.json)
}

/// `timebox serve` as a child process, killed (SIGKILL) when dropped.
struct ChildInstance {
    child: Child,
    proxy_port: u16,
    _dir: tempfile::TempDir,
}

impl ChildInstance {
    async fn start(db: &StoreDatabase, name: &str) -> ChildInstance {
        let dir = tempfile::tempdir().unwrap();
        let cluster_port = tokio::task::spawn_blocking(|| common::cluster::shared_cluster().port())
            .await
            .unwrap();
        let opts = Options {
            tls: "disabled",
            store: Some(common::fleet::store_lines(db, name, FLEET)),
            ..Options::default()
        };
        let (text, proxy_port, _) = common::child::config_on_fixed_ports(&opts, dir.path(), cluster_port);
        let config = dir.path().join("timebox.toml");
        std::fs::write(&config, text).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_timebox"))
            .args(["serve", "--config"])
            .arg(&config)
            .env_remove("RUST_LOG")
            .env_remove("TIMEBOX_ADMIN_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start timebox serve");
        ChildInstance {
            child,
            proxy_port,
            _dir: dir,
        }
    }

    fn conn_string(&self, user: &str, token: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={user} password={token} dbname=shop sslmode=disable connect_timeout=10",
            self.proxy_port
        )
    }
}

impl Drop for ChildInstance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Instances in `inst`'s `/v1/instances`: (name, alive).
async fn instances_seen_by(inst: &TestInstance) -> Vec<(String, bool)> {
    let (status, list) = call(&inst.admin_url(), Method::GET, "/v1/instances", None).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    list["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["name"].as_str().unwrap().to_owned(),
                i["alive"].as_bool().unwrap(),
            )
        })
        .collect()
}

/// The instances holding the sessions in `inst`'s `/v1/sessions`.
async fn session_holders_seen_by(inst: &TestInstance) -> Vec<String> {
    let (status, list) = call(&inst.admin_url(), Method::GET, "/v1/sessions", None).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    list["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["instance"].as_str().unwrap_or("").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_an_instance_leaves_the_other_serving_and_its_sessions_drop_out() {
    let db = StoreDatabase::create_async().await;
    let b = common::fleet::instance_on(&db, "tb-b", FLEET, Options::default()).await;
    let mut a = ChildInstance::start(&db, "tb-a").await;
    assert!(
        common::eventually(Duration::from_secs(60), || {
            let b = &b;
            async move { instances_seen_by(b).await.contains(&("tb-a".to_owned(), true)) }
        })
        .await,
        "the child instance tb-a joined the fleet"
    );

    // A grant issued on B; a session through A, seen fleet-wide from B.
    let (_, token) = common::fleet::issue_read(&b, "alice", "30m", "kill -9 test").await;
    let (client_a, connection) = tokio_postgres::connect(&a.conn_string("alice", &token), NoTls)
        .await
        .expect("login through A");
    let connection_a = tokio::spawn(connection);
    client_a
        .simple_query("SELECT 1")
        .await
        .expect("a statement through A");
    assert!(
        common::eventually(Duration::from_secs(20), || {
            let b = &b;
            async move { session_holders_seen_by(b).await == ["tb-a"] }
        })
        .await,
        "B lists A's session"
    );

    // kill -9: A leaves nothing behind but its rows.
    a.child.kill().expect("SIGKILL tb-a");
    a.child.wait().unwrap();
    let killed = Instant::now();
    assert!(
        tokio::time::timeout(Duration::from_secs(10), connection_a)
            .await
            .is_ok(),
        "A's client lost its connection"
    );

    // B serves new logins at once.
    let out = common::psql(
        &common::proxy_conn(&b, "alice", "sslmode=disable"),
        &token,
        "SELECT 42",
    )
    .await;
    assert!(out.success, "a new login through B: {}", out.stderr);
    assert_eq!(out.stdout.trim(), "42");

    // A and its session drop out of B's fleet view after instance_timeout.
    assert!(
        common::eventually(DROP_OUT_DEADLINE, || {
            let b = &b;
            async move { session_holders_seen_by(b).await.is_empty() }
        })
        .await,
        "A's session left the fleet view: {:?}",
        session_holders_seen_by(&b).await
    );
    println!(
        "A's session left B's fleet view {:?} after kill -9",
        killed.elapsed()
    );
    assert!(
        instances_seen_by(&b).await.contains(&("tb-a".to_owned(), false)),
        "A is listed as dead: {:?}",
        instances_seen_by(&b).await
    );

    // And B still serves.
    let out = common::psql(
        &common::proxy_conn(&b, "alice", "sslmode=disable"),
        &token,
        "SELECT 43",
    )
    .await;
    assert!(out.success, "{}", out.stderr);
}
