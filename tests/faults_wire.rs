//! Faults (issue 12 item 6), through a real proxy to a real PostgreSQL: the upstream backend
//! killed mid-query, mid-COPY FROM and mid-COPY TO; a client that never reads while a large result
//! streams. Each time the client gets a clear error (not a hang), the audit trail holds the
//! statement and the session's end, memory stays bounded, and the proxy goes on serving.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{FutureExt, SinkExt};
use tokio::io::AsyncWriteExt;
use tokio_postgres::NoTls;

use common::{cluster, eventually, Options};

async fn connect(conn: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(conn, NoTls).await.expect("connect");
    tokio::spawn(connection);
    client
}

/// Terminates the upstream backends of grant `grant_id` that run a statement matching `like`,
/// once one does; how many it terminated.
async fn kill_upstream(grant_id: &str, like: &str) -> usize {
    let sql = format!(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE application_name LIKE 'timebox:%:{grant_id}%' AND query LIKE '{like}' AND state = 'active'"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let sql = sql.clone();
        let n: usize =
            tokio::task::spawn_blocking(move || cluster::shop_psql(&sql).trim().parse().unwrap_or(0))
                .await
                .unwrap();
        if n > 0 || Instant::now() > deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Records of the instance's audit trail of `kind` for `grant_id` (payload JSON).
async fn records(inst: &common::TestInstance, kind: &str, grant_id: &str) -> Vec<serde_json::Value> {
    inst.state.audit.wait_indexed().await.unwrap();
    let db = inst.audit_db();
    let conn = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let mut stmt = conn
        .prepare("SELECT payload FROM audit_events WHERE kind = ?1 ORDER BY seq")
        .unwrap();
    stmt.query_map([kind], |r| r.get::<_, String>(0))
        .unwrap()
        .map(|p| serde_json::from_str::<serde_json::Value>(&p.unwrap()).unwrap())
        .filter(|p| p["grant_id"] == grant_id)
        .collect()
}

/// A libpq connection string for `alice` through `inst`, TLS off, with her token.
fn alice_conn(inst: &common::TestInstance, token: &str) -> String {
    format!(
        "{} password={token}",
        common::proxy_conn(inst, "alice", "sslmode=disable")
    )
}

/// The proxy still serves: a new session of the same grant runs a query.
async fn still_serving(conn: &str) {
    let client = connect(conn).await;
    let row = client
        .query_one("SELECT 41 + 1", &[])
        .await
        .expect("a new session works");
    assert_eq!(row.get::<_, i32>(0), 42);
}

/// The upstream backend killed while a query runs: the client's query fails at once with the
/// server's own reason, the session ends, the statement and the session end are audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_killed_mid_query() {
    let inst = common::start(Options::default()).await;
    let (grant, token) = inst.grant("alice", "read", "10m").await;
    let conn = alice_conn(&inst, &token);
    let client = connect(&conn).await;
    let running = tokio::spawn(async move { client.simple_query("SELECT pg_sleep(60)").await });
    assert_eq!(kill_upstream(&grant.id, "%pg_sleep(60)%").await, 1);
    let started = Instant::now();
    let err = tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the client is told, not left hanging")
        .unwrap()
        .expect_err("the query fails");
    assert!(started.elapsed() < Duration::from_secs(10));
    // The server's own FATAL (57P01 "terminating connection due to administrator command"), or
    // timebox's 08006 when the connection dropped before the server could say why.
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("a PostgreSQL error, not {err:?}"));
    assert!(
        ["57P01", "08006"].contains(&db.code().code()),
        "{} {}",
        db.code().code(),
        db.message()
    );
    let statements = records(&inst, "statement", &grant.id).await;
    assert!(
        statements
            .iter()
            .any(|s| s["sql"].as_str().is_some_and(|q| q.contains("pg_sleep(60)"))),
        "{statements:#?}"
    );
    assert!(
        eventually(Duration::from_secs(5), || {
            let inst = &inst;
            let id = grant.id.clone();
            async move { !records(inst, "session_end", &id).await.is_empty() }.boxed()
        })
        .await,
        "the session's end is audited"
    );
    still_serving(&conn).await;
}

/// The upstream backend killed in the middle of a COPY … FROM STDIN the client is streaming: the
/// client's COPY fails (no hang, nothing forwarded twice: the rows the server kept are a prefix
/// or none), and the proxy goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_killed_mid_copy_in() {
    tokio::task::spawn_blocking(|| {
        cluster::shop_psql("CREATE TABLE IF NOT EXISTS public.copy_fault (n int, pad text)")
    })
    .await
    .unwrap();
    let inst = common::start(Options::default()).await;
    let (grant, token) = inst.grant("bob", "write", "10m").await;
    let conn = format!(
        "{} password={token}",
        common::proxy_conn(&inst, "bob", "sslmode=disable")
    );
    let client = connect(&conn).await;
    let sink = client
        .copy_in::<_, Bytes>("COPY public.copy_fault FROM STDIN")
        .await
        .expect("COPY starts");
    let writer = tokio::spawn(async move {
        let mut sink = Box::pin(sink);
        let pad = "x".repeat(200);
        for n in 0..2_000_000u32 {
            if sink.send(Bytes::from(format!("{n}\t{pad}\n"))).await.is_err() {
                return Err(n);
            }
        }
        sink.as_mut().finish().await.map(|_| ()).map_err(|_| u32::MAX)
    });
    assert_eq!(kill_upstream(&grant.id, "COPY public.copy_fault%").await, 1);
    let outcome = tokio::time::timeout(Duration::from_secs(20), writer)
        .await
        .expect("the COPY ends, not hangs")
        .unwrap();
    assert!(outcome.is_err(), "a COPY whose server died cannot succeed");
    let kept: i64 = tokio::task::spawn_blocking(|| {
        cluster::shop_psql("SELECT count(*) FROM public.copy_fault")
            .trim()
            .parse()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(kept, 0, "a COPY is one transaction: the killed one left no rows");
    still_serving(&conn).await;
}

/// The upstream backend killed while a COPY … TO STDOUT streams to the client: the client's COPY
/// fails instead of ending as if complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_killed_mid_copy_out() {
    use futures::StreamExt;
    let inst = common::start(Options::default()).await;
    let (grant, token) = inst.grant("alice", "read", "10m").await;
    let conn = alice_conn(&inst, &token);
    let client = connect(&conn).await;
    let stream = client
        .copy_out("COPY (SELECT n, pg_sleep(0.001) FROM generate_series(1, 100000) n) TO STDOUT")
        .await
        .expect("COPY starts");
    let reader = tokio::spawn(async move {
        let mut stream = Box::pin(stream);
        let mut rows = 0usize;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(_) => rows += 1,
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(rows)
    });
    assert_eq!(kill_upstream(&grant.id, "COPY (SELECT n%").await, 1);
    let outcome = tokio::time::timeout(Duration::from_secs(20), reader)
        .await
        .expect("the COPY ends, not hangs")
        .unwrap();
    assert!(
        outcome.is_err(),
        "a COPY cut short must not look complete: {outcome:?}"
    );
    still_serving(&conn).await;
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// A client that asks for a large result (about 1 GB) and never reads it: the proxy stops reading
/// from the upstream when the client's socket is full, so its memory stays bounded, and other
/// sessions are served meanwhile. (The instance runs in this test process: its RSS is ours.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_a_large_result_costs_bounded_memory() {
    let inst = common::start(Options::default()).await;
    let (_grant, token) = inst.grant("alice", "read", "10m").await;
    let (mut sock, _buf) = common::raw::login(inst.proxy_addr, "alice", &token).await;
    let before = rss_bytes();
    let mut q = bytes::BytesMut::new();
    postgres_protocol::message::frontend::query(
        "SELECT repeat('x', 1000) FROM generate_series(1, 1000000)",
        &mut q,
    )
    .unwrap();
    sock.write_all(&q).await.unwrap();
    // Give the upstream time to produce far more than any buffer should hold.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let conn = alice_conn(&inst, &token);
    still_serving(&conn).await;
    let grown = rss_bytes().saturating_sub(before);
    assert!(
        grown < 128 * 1024 * 1024,
        "memory grew by {} MiB while the client did not read",
        grown / (1024 * 1024)
    );
    drop(sock);
}
