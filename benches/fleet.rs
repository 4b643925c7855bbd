//! The fleet (issue 11): what a PostgreSQL store costs, and how fast a revoke crosses instances.
//!
//! - **revoke → sever across instances**: instances A and B on one PostgreSQL store; for each of N
//!   grants, a session through B, then the grant revoked on A (the grant service, as the admin
//!   API calls it); the time from the revoke call to B's client losing its connection (FATAL
//!   57P01). p50 / p99 / max over N (the reconcile is a minute away: only LISTEN/NOTIFY counts).
//! - **login rate and statement throughput, PostgreSQL store vs SQLite**: one instance per store;
//!   sequential SCRAM logins per second (each reads the grants from the store), and simple
//!   `SELECT 1` statements per second on one session (audited with the default fsync durability).
//!
//!   cargo bench --bench fleet                 N = 200 revokes, 200 logins, 5,000 statements
//!   cargo bench --bench fleet -- --revokes 500
//!   cargo test --bench fleet                  smoke: 3 revokes, 5 logins, 20 statements
//!
//! Results: `benches/RESULTS.md` ("Fleet"). Uses the wire tests' harness (a throwaway cluster,
//! real timebox instances on port 0, a store database on the same cluster).

#[path = "../tests/common/mod.rs"]
#[allow(unused_imports)]
mod common;

use std::time::{Duration, Instant};

use common::{Options, StoreDatabase, TestInstance};
use tokio_postgres::NoTls;

struct Sizes {
    revokes: usize,
    logins: usize,
    statements: usize,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let full = args.iter().any(|a| a == "--bench");
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .map(|i| args[i + 1].parse::<usize>().expect("a number"))
    };
    let sizes = Sizes {
        revokes: arg("--revokes").unwrap_or(if full { 200 } else { 3 }),
        logins: arg("--logins").unwrap_or(if full { 200 } else { 5 }),
        statements: arg("--statements").unwrap_or(if full { 5000 } else { 20 }),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let db = StoreDatabase::create_async().await;
        revoke_to_sever(&db, sizes.revokes).await;
        println!();
        println!("| store | logins/s (sequential, n) | SELECT 1 statements/s (one session, n) |");
        println!("|---|---|---|");
        let sqlite = common::start(Options {
            tls: "disabled",
            ..Options::default()
        })
        .await;
        throughput("SQLite", &sqlite, &sizes).await;
        drop(sqlite);
        let pg = store_instance(&db, "tb-bench", "5s").await;
        throughput("PostgreSQL", &pg, &sizes).await;
    });
}

async fn store_instance(db: &StoreDatabase, name: &str, reconcile: &str) -> TestInstance {
    common::start(Options {
        tls: "disabled",
        proxy_extra: "auth_failures_per_minute = 100000\nauth_failures_per_address_per_minute = 100000\n\
                      auth_failures_global_per_minute = 100000"
            .into(),
        store: Some(format!(
            "{}\n[fleet]\ninstance = \"{name}\"\nreconcile_interval = \"{reconcile}\"\nmax_staleness = \"10m\"\nheartbeat_interval = \"1s\"",
            db.store_lines()
        )),
        ..Options::default()
    })
    .await
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn revoke_to_sever(db: &StoreDatabase, n: usize) {
    let a = store_instance(db, "tb-a", "60s").await;
    let b = store_instance(db, "tb-b", "60s").await;
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        let (grant, token) = a.grant("alice", "read", "30m").await;
        let (client, connection) = tokio_postgres::connect(&b.conn_string("alice", &token, "disable"), NoTls)
            .await
            .expect("login through B");
        let connection = tokio::spawn(connection);
        client
            .simple_query("SELECT 1")
            .await
            .expect("a statement through B");
        let started = Instant::now();
        a.state
            .grants
            .revoke(&grant.id, "bench", &format!("bench {i}"))
            .await
            .expect("revoke on A");
        tokio::time::timeout(Duration::from_secs(30), connection)
            .await
            .expect("B severed the session")
            .unwrap()
            .expect_err("severed with FATAL 57P01");
        lat.push(started.elapsed());
    }
    lat.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("| revokes (A) severing sessions (B) | p50 ms | p99 ms | max ms |");
    println!("|---|---|---|---|");
    println!(
        "| {n} | {:.1} | {:.1} | {:.1} |",
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.99)),
        ms(*lat.last().unwrap())
    );
}

async fn throughput(store: &str, inst: &TestInstance, sizes: &Sizes) {
    let (_, token) = inst.grant("alice", "read", "1h").await;
    let conn = inst.conn_string("alice", &token, "disable");
    let started = Instant::now();
    for _ in 0..sizes.logins {
        let (client, connection) = tokio_postgres::connect(&conn, NoTls).await.expect("login");
        let connection = tokio::spawn(connection);
        drop(client);
        let _ = connection.await;
    }
    let logins = sizes.logins as f64 / started.elapsed().as_secs_f64();
    let (client, connection) = tokio_postgres::connect(&conn, NoTls).await.expect("login");
    tokio::spawn(connection);
    let started = Instant::now();
    for _ in 0..sizes.statements {
        client.simple_query("SELECT 1").await.expect("SELECT 1");
    }
    let statements = sizes.statements as f64 / started.elapsed().as_secs_f64();
    println!(
        "| {store} | {logins:.0} ({}) | {statements:.0} ({}) |",
        sizes.logins, sizes.statements
    );
}
