//! sqlx (Rust, from crates.io; `postgres` + `runtime-tokio` + rustls, no macros) through a real
//! proxy to a real PostgreSQL (issue 12 item 5), as `compat_drivers.rs` drives the other drivers:
//! TLS with the proxy's certificate verified, a simple (`raw_sql`) and a prepared (`query` with a
//! bind, run three times from sqlx's statement cache) query, a transaction, COPY … TO STDOUT
//! (`copy_out_raw`), COPY … FROM STDIN (`copy_in_raw`) under a write grant and refused with 42501
//! under a read grant, a refused write (42501) after which the connection goes on.
//!
//! sqlx has no cancel API (it keeps the BackendKeyData to itself and sends no CancelRequest): as for
//! node-postgres, a `statement_timeout` stands in (57014) and the connection goes on.

mod common;

use futures::StreamExt;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgSslMode};
use sqlx::{AssertSqlSafe, Connection};

use common::{cluster, Options, TestInstance};

/// The SQLSTATE of a database error sqlx returned; fails the test for any other error.
fn sqlstate(result: Result<impl std::fmt::Debug, sqlx::Error>) -> String {
    match result {
        Err(sqlx::Error::Database(e)) => e.code().map(|c| c.into_owned()).unwrap_or_default(),
        other => panic!("expected a database error, got {other:?}"),
    }
}

/// Options for `user` through the proxy, TLS verified against the proxy's certificate.
fn options(inst: &TestInstance, user: &str, token: &str) -> PgConnectOptions {
    PgConnectOptions::new()
        .host("127.0.0.1")
        .port(inst.proxy_addr.port())
        .username(user)
        .password(token)
        .database("shop")
        .ssl_mode(PgSslMode::VerifyFull)
        .ssl_root_cert(&inst.cert_path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlx_works_through_the_proxy() {
    let inst = common::start(Options {
        tls: "required",
        ..Options::default()
    })
    .await;
    let (_g, token) = inst.grant("alice", "read", "10m").await;
    let mut c = PgConnection::connect_with(&options(&inst, "alice", &token))
        .await
        .expect("sqlx connects over verified TLS");

    // Simple query protocol (text results).
    let one: i32 = sqlx::Row::get(&sqlx::raw_sql("SELECT 1").fetch_one(&mut c).await.unwrap(), 0);
    assert_eq!(one, 1);
    // Extended protocol: a named prepared statement, reused from sqlx's cache.
    for _ in 0..3 {
        let v: i32 = sqlx::query_scalar("SELECT $1::int + 1")
            .bind(41)
            .fetch_one(&mut c)
            .await
            .unwrap();
        assert_eq!(v, 42);
    }
    // A transaction.
    let mut tx = c.begin().await.unwrap();
    let scs: String = sqlx::query_scalar("SHOW standard_conforming_strings")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(scs, "on");
    tx.commit().await.unwrap();
    // COPY … TO STDOUT.
    let mut out = Vec::new();
    let mut stream = c
        .copy_out_raw("COPY (SELECT generate_series(1, 3)) TO STDOUT")
        .await
        .unwrap();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    drop(stream);
    assert_eq!(String::from_utf8_lossy(&out), "1\n2\n3\n");
    // Writes are refused under a read grant (simple, extended and COPY FROM), and the session goes on.
    assert_eq!(
        sqlstate(sqlx::raw_sql("DELETE FROM items").execute(&mut c).await),
        "42501"
    );
    assert_eq!(
        sqlstate(sqlx::query("DELETE FROM items").execute(&mut c).await),
        "42501"
    );
    assert_eq!(
        sqlstate(c.copy_in_raw("COPY public.items FROM STDIN").await.map(|_| ())),
        "42501"
    );
    let two: i32 = sqlx::query_scalar("SELECT 2").fetch_one(&mut c).await.unwrap();
    assert_eq!(two, 2);
    // No cancel API in sqlx: a statement_timeout stands in, and the session goes on.
    sqlx::raw_sql("SET statement_timeout = '1s'")
        .execute(&mut c)
        .await
        .unwrap();
    assert_eq!(
        sqlstate(sqlx::raw_sql("SELECT pg_sleep(60)").execute(&mut c).await),
        "57014"
    );
    // (RESET would lift the read role's cap of 30 s: refused.)
    sqlx::raw_sql("SET statement_timeout = '30s'")
        .execute(&mut c)
        .await
        .unwrap();
    let three: i32 = sqlx::query_scalar("SELECT 3").fetch_one(&mut c).await.unwrap();
    assert_eq!(three, 3);
    c.close().await.unwrap();

    // TLS is required: the same login without it is refused (28000).
    let plain =
        PgConnection::connect_with(&options(&inst, "alice", &token).ssl_mode(PgSslMode::Disable)).await;
    assert_eq!(sqlstate(plain), "28000");
}

/// COPY … FROM STDIN with sqlx's `copy_in_raw` under a write grant: the rows arrive upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlx_copy_in_works_under_a_write_grant() {
    let table = cluster::unique_name("sqlx_copy");
    let create = format!("CREATE TABLE public.{table} (n int)");
    tokio::task::spawn_blocking(move || cluster::shop_psql(&create))
        .await
        .unwrap();
    let inst = common::start(Options {
        tls: "required",
        ..Options::default()
    })
    .await;
    let (_g, token) = inst.grant("bob", "write", "10m").await;
    let mut c = PgConnection::connect_with(&options(&inst, "bob", &token))
        .await
        .expect("sqlx connects");
    let statement = format!("COPY public.{table} (n) FROM STDIN");
    let mut copy = c.copy_in_raw(&statement).await.expect("COPY starts");
    copy.send(&b"1\n2\n"[..]).await.unwrap();
    copy.send(&b"3\n"[..]).await.unwrap();
    assert_eq!(copy.finish().await.unwrap(), 3);
    let count = format!("SELECT count(*)::int FROM public.{table}");
    let n: i32 = sqlx::query_scalar(AssertSqlSafe(count))
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(n, 3);
}
