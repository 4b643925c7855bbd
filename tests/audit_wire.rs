//! The audit trail against PostgreSQL's own statement log (`log_statement = 'all'` on the test
//! cluster): every statement the upstream ran through timebox has an audit record, denied ones have
//! a record and never reached the server, outcomes are linked, and nothing is lost on kill -9.

mod common;

use std::time::Duration;

use common::pg::{audit_records, connect};
use common::Options;
use tokio_postgres::NoTls;

async fn server_log() -> String {
    tokio::task::spawn_blocking(|| std::fs::read_to_string(common::cluster::shared_cluster().log_path()))
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_statement_run_upstream_is_audited_and_denied_ones_never_run() {
    let inst = common::start(Options::default()).await;
    let (grant, token) = inst.grant("alice", "read", "10m").await;
    let client = connect(&inst.conn_string("alice", &token, "disable")).await;
    let mark = common::cluster::unique_name("auditmark");

    client
        .simple_query(&format!("SELECT '{mark}_simple'"))
        .await
        .unwrap();
    let stmt = client
        .prepare(&format!("SELECT $1::text || '{mark}_extended'"))
        .await
        .unwrap();
    client.query_one(&stmt, &[&"p1"]).await.unwrap();
    client.query_one(&stmt, &[&"p2"]).await.unwrap();
    client
        .simple_query(&format!("DELETE FROM items WHERE name = '{mark}_denied'"))
        .await
        .unwrap_err();
    client
        .simple_query(&format!("SELECT 1/0 AS {mark}_fails"))
        .await
        .unwrap_err();
    drop(client);
    // let the session end be recorded
    tokio::time::sleep(Duration::from_millis(300)).await;
    inst.state.audit.wait_indexed().await.unwrap();
    let db = inst.audit_db();
    let records = audit_records(&db);
    let log = server_log().await;

    let statements: Vec<&serde_json::Value> = records
        .iter()
        .filter(|(k, _)| k == "statement")
        .map(|(_, p)| p)
        .collect();
    let with = |needle: &str| -> Vec<&serde_json::Value> {
        statements
            .iter()
            .copied()
            .filter(|p| p["sql"].as_str().unwrap_or("").contains(needle))
            .collect()
    };
    // allowed, simple protocol: audited and run
    let simple = with(&format!("{mark}_simple"));
    assert_eq!(simple.len(), 1, "{records:?}");
    assert_eq!(simple[0]["decision"], "allow");
    assert_eq!(simple[0]["grant_id"], grant.id.as_str());
    assert!(log.contains(&format!("{mark}_simple")));
    // extended protocol: the Parse and each execution (Bind, with its parameters) are audited
    let extended = with(&format!("{mark}_extended"));
    assert_eq!(extended.len(), 3, "parse + 2 executions: {extended:?}");
    let params: Vec<String> = extended.iter().map(|p| p["params"].to_string()).collect();
    assert!(
        params.iter().any(|p| p.contains("bytes")),
        "params redacted by default: {params:?}"
    );
    assert!(log.contains(&format!("{mark}_extended")));
    // denied: audited with its reason, never reached the server
    let denied = with(&format!("{mark}_denied"));
    assert_eq!(denied.len(), 1);
    assert_eq!(denied[0]["decision"], "deny");
    assert!(denied[0]["reason"].as_str().unwrap().contains("timebox:"));
    assert!(
        !log.contains(&format!("{mark}_denied")),
        "a denied statement reached the server"
    );

    // outcomes are linked to their statements
    let outcome_of = |stmt: &serde_json::Value| {
        records
            .iter()
            .filter(|(k, _)| k == "statement_outcome")
            .map(|(_, p)| p)
            .find(|p| p["session_id"] == stmt["session_id"] && p["statement_id"] == stmt["statement_id"])
            .cloned()
    };
    let ok = outcome_of(simple[0]).expect("outcome of the simple SELECT");
    assert_eq!(ok["command_tag"], "SELECT 1");
    assert_eq!(ok["rows"], 1);
    let failed = outcome_of(with(&format!("{mark}_fails"))[0]).expect("outcome of the failing SELECT");
    assert_eq!(failed["sqlstate"], "22012");

    // session start and end, and the chain verifies
    let kinds: Vec<&str> = records.iter().map(|(k, _)| k.as_str()).collect();
    assert!(
        kinds.contains(&"session_start") && kinds.contains(&"session_end"),
        "{kinds:?}"
    );
    let report = timebox::audit::verify_file(&db, &[]).unwrap();
    assert!(report.first_bad.is_none(), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_failures_are_audited_without_the_token() {
    let inst = common::start(Options::default()).await;
    let (_g, _token) = inst.grant("alice", "read", "10m").await;
    let wrong = "tbx_wrongwrongwrongwrongwrongwrong";
    let _ = tokio_postgres::connect(&inst.conn_string("alice", wrong, "disable"), NoTls).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    inst.state.audit.wait_indexed().await.unwrap();
    let records = audit_records(&inst.audit_db());
    let failure = records
        .iter()
        .find(|(k, _)| k == "auth_failure")
        .expect("auth failure record");
    assert_eq!(failure.1["user"], "alice");
    assert_eq!(failure.1["reason"], "wrong token");
    let all = format!("{records:?}");
    assert!(!all.contains(wrong), "the token must never be in the audit trail");
}

/// kill -9 under load: every statement PostgreSQL logged as run through timebox is in the audit
/// database (fsync durability: records are on disk before statements are forwarded).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_reaches_the_database_unaudited_even_on_kill_9() {
    let cluster_port = tokio::task::spawn_blocking(|| common::cluster::shared_cluster().port())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (text, proxy_port, admin_port) =
        common::child::config_on_fixed_ports(&Options::default(), dir.path(), cluster_port);
    let text = text.replace("tls = \"optional\"", "tls = \"disabled\"");
    let config = dir.path().join("timebox.toml");
    std::fs::write(&config, text).unwrap();
    let mut server = std::process::Command::new(env!("CARGO_BIN_EXE_timebox"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();

    // issue a grant through the admin API once it is up
    let http = reqwest::Client::new();
    let mut token = None;
    for _ in 0..100 {
        let r = http
            .post(format!("http://127.0.0.1:{admin_port}/v1/grants"))
            .bearer_auth(common::ADMIN_TOKEN)
            .json(&serde_json::json!({"user": "alice", "target": "shop", "role": "read", "ttl": "10m", "reason": "crash test"}))
            .send()
            .await;
        if let Ok(r) = r {
            let body: serde_json::Value = r.json().await.unwrap();
            token = body["token"].as_str().map(str::to_owned);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let token = token.expect("timebox serve came up and issued a grant");
    let mark = common::cluster::unique_name("crashmark");
    let conn =
        format!("host=127.0.0.1 port={proxy_port} user=alice password={token} dbname=shop sslmode=disable");

    // Kill once the load is really running (a count, not a sleep: a loaded CI machine may take
    // seconds to get there), with work in flight on every connection.
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for w in 0..4 {
        let conn = conn.clone();
        let mark = mark.clone();
        let answered = answered.clone();
        workers.push(tokio::spawn(async move {
            let Ok((client, connection)) = tokio_postgres::connect(&conn, NoTls).await else {
                return 0;
            };
            tokio::spawn(connection);
            let mut sent = 0;
            for i in 0.. {
                if client
                    .simple_query(&format!("SELECT '{mark}_{w}_{i}'"))
                    .await
                    .is_err()
                {
                    break;
                }
                sent += 1;
                answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            sent
        }));
    }
    let loaded_by = std::time::Instant::now() + Duration::from_secs(60);
    while answered.load(std::sync::atomic::Ordering::Relaxed) < 100 && std::time::Instant::now() < loaded_by {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.kill().unwrap(); // SIGKILL
    server.wait().unwrap();
    let mut acknowledged = 0;
    for w in workers {
        acknowledged += w.await.unwrap();
    }
    assert!(
        acknowledged >= 100,
        "the load ran ({acknowledged} statements answered)"
    );

    let log = server_log().await;
    let executed: std::collections::BTreeSet<String> = log
        .lines()
        .filter_map(|l| {
            let at = l.find(&format!("{mark}_"))?;
            let rest = &l[at..];
            Some(rest[..rest.find('\'').unwrap_or(rest.len())].to_owned())
        })
        .collect();
    assert!(
        executed.len() >= acknowledged,
        "the server ran what the clients saw answered"
    );
    // What timebox acknowledged may be in the journal only (the index lags by design); the offline
    // verifier checks those records against the chain and indexes them, as a restart would.
    let report = timebox::audit::verify_file(&dir.path().join("audit.db"), &[]).unwrap();
    assert!(report.first_bad.is_none(), "{report:?}");
    let records = audit_records(&dir.path().join("audit.db"));
    let audited: std::collections::BTreeSet<String> = records
        .iter()
        .filter(|(k, _)| k == "statement")
        .filter_map(|(_, p)| {
            let sql = p["sql"].as_str()?;
            let at = sql.find(&format!("{mark}_"))?;
            let rest = &sql[at..];
            Some(rest[..rest.find('\'').unwrap_or(rest.len())].to_owned())
        })
        .collect();
    let missing: Vec<&String> = executed.difference(&audited).collect();
    assert!(
        missing.is_empty(),
        "ran upstream without an audit record: {missing:?}"
    );
}

/// Outcome records ride along with the next statement's audit submission; an idle session's last
/// outcome is still recorded promptly (within the flush delay), without closing the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_sessions_last_outcome_is_recorded_without_waiting_for_more_statements() {
    let inst = common::start(Options::default()).await;
    let (_grant, token) = inst.grant("alice", "read", "10m").await;
    let client = connect(&inst.conn_string("alice", &token, "disable")).await;
    let mark = common::cluster::unique_name("idleoutcome");
    client
        .simple_query(&format!("SELECT '{mark}_one'"))
        .await
        .unwrap();
    client
        .simple_query(&format!("SELECT '{mark}_two'"))
        .await
        .unwrap();
    let outcomes = |records: &[(String, serde_json::Value)]| {
        let ids: Vec<u64> = records
            .iter()
            .filter(|(k, p)| k == "statement" && p["sql"].as_str().is_some_and(|s| s.contains(&mark)))
            .map(|(_, p)| p["statement_id"].as_u64().unwrap())
            .collect();
        records
            .iter()
            .filter(|(k, p)| k == "statement_outcome" && ids.contains(&p["statement_id"].as_u64().unwrap()))
            .count()
    };
    let db = inst.audit_db();
    let recorded = common::eventually(Duration::from_secs(5), || async {
        inst.state.audit.wait_indexed().await.unwrap();
        outcomes(&audit_records(&db)) == 2
    })
    .await;
    assert!(recorded, "both outcomes recorded while the session stays open");
    client.simple_query("SELECT 1").await.unwrap();
    drop(client);
}

/// See: issue 16, finding 8: `PASSWORD U&'…'` and a password split by a string continuation (which
/// PostgreSQL joins) reached the audit trail in clear. Real psql through an admin grant; the upstream
/// role sets its password to what it already is, so the shared cluster is unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_literals_never_reach_the_audit_trail_in_any_spelling() {
    let inst = common::start(Options::default()).await;
    let (_g, token) = inst.grant("alice", "admin", "10m").await;
    let conn = common::proxy_conn(&inst, "alice", "sslmode=disable");
    let pw = common::cluster::ADMIN_PASSWORD;
    let (head, tail) = pw.split_at(pw.len() / 2);
    let statements = [
        format!("ALTER ROLE CURRENT_USER PASSWORD U&'{pw}'"),
        format!("ALTER ROLE CURRENT_USER PASSWORD '{head}'\n'{tail}'"),
        // See: the attack round on issue 16's fix: SQL inside a literal was not looked into.
        format!("DO $$ BEGIN EXECUTE 'ALTER ROLE CURRENT_USER PASSWORD ''{pw}'''; END $$"),
    ];
    let out = common::psql(&conn, &token, &statements[0]).await;
    assert!(out.success, "{}: {}", statements[0], out.stderr);
    // The continuation is refused by the sqlparser cross-check today; denied or not, it is audited.
    // (Its denial reason quotes the literal back to the client that wrote it; the audit copy is scrubbed.)
    let _ = common::psql(&conn, &token, &statements[1]).await;
    // The DO block is refused by the sqlparser cross-check (role admin has no allow_unparsed);
    // denied before it reaches the server, it is audited all the same.
    let out = common::psql(&conn, &token, &statements[2]).await;
    assert!(!out.stderr.contains(pw), "{}", out.stderr);
    inst.state.audit.wait_indexed().await.unwrap();
    let records = audit_records(&inst.audit_db());
    let audited: Vec<&str> = records
        .iter()
        .filter(|(k, _)| k == "statement")
        .filter_map(|(_, p)| p["sql"].as_str())
        .filter(|sql| sql.starts_with("ALTER ROLE"))
        .collect();
    assert_eq!(
        audited,
        vec!["ALTER ROLE CURRENT_USER PASSWORD '[REDACTED]'"; 2],
        "both statements audited, without the password"
    );
    let blocks: Vec<&str> = records
        .iter()
        .filter(|(k, _)| k == "statement")
        .filter_map(|(_, p)| p["sql"].as_str())
        .filter(|sql| sql.starts_with("DO "))
        .collect();
    assert_eq!(
        blocks,
        vec!["DO $$ BEGIN EXECUTE 'ALTER ROLE CURRENT_USER PASSWORD ''[REDACTED]'''; END $$"],
        "the DO block audited with its code, without the password"
    );
    let all = format!("{records:?}");
    assert!(
        !all.contains(pw) && !all.contains(tail),
        "a password reached the audit trail: {all}"
    );
}
