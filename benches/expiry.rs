//! Expiry and revocation at scale (issue 18): N sessions of one grant, all running `pg_sleep(60)`,
//! the grant expiring (or being revoked); how late each client got its FATAL 57P01, how late its
//! `session_end` was recorded (audit `ts` − the deadline), and how long until the last upstream query
//! was gone from `pg_stat_activity`.
//!
//!   cargo bench --bench expiry                 100 and 1,000 sessions, expiry and revoke
//!   cargo bench --bench expiry -- --sessions 250 [--cut expiry|revoke]
//!   cargo test --bench expiry                  smoke: 5 sessions (no numbers worth keeping)
//!
//! Results: `benches/RESULTS.md` ("Expiry at scale"). Uses the wire tests' harness (a throwaway
//! cluster with `max_connections` raised, a real timebox on port 0).

#[path = "../tests/common/mod.rs"]
#[allow(unused_imports)]
mod common;

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::Options;
use futures::StreamExt;
use tokio_postgres::NoTls;

#[derive(Clone, Copy, Debug)]
enum Cut {
    Expiry,
    Revoke,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let full = args.iter().any(|a| a == "--bench");
    let sizes: Vec<usize> = match args.iter().position(|a| a == "--sessions") {
        Some(i) => vec![args[i + 1].parse().expect("--sessions N")],
        None if full => vec![100, 1000],
        None => vec![5],
    };
    let cuts: &[Cut] = match args
        .iter()
        .position(|a| a == "--cut")
        .map(|i| args[i + 1].as_str())
    {
        Some("expiry") => &[Cut::Expiry],
        Some("revoke") => &[Cut::Revoke],
        _ => &[Cut::Expiry, Cut::Revoke],
    };
    let max = sizes.iter().max().copied().unwrap_or(5);
    // Read once by the harness when it starts the cluster (before any thread exists).
    std::env::set_var("TIMEBOX_TEST_PG_MAX_CONNECTIONS", (max + 100).to_string());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let inst = common::start(Options {
            proxy_extra: format!(
                "max_connections = {}\nmax_unauthenticated = 256\nmax_unauthenticated_per_address = 256\nauth_failures_per_minute = 100000\nauth_failures_per_address_per_minute = 100000\nauth_failures_global_per_minute = 100000",
                max + 50
            ),
            ..Options::default()
        })
        .await;
        println!(
            "| sessions | cut | client p50 / p99 / max ms | audit session_end p50 / p99 / max ms | last upstream query gone ms |"
        );
        println!("|---|---|---|---|---|");
        for &n in &sizes {
            for cut in cuts.iter().copied() {
                run(&inst, n, cut).await;
            }
        }
    });
}

async fn run(inst: &common::TestInstance, n: usize, cut: Cut) {
    // Long enough for every session to log in and start its query before the deadline.
    let ttl = match cut {
        Cut::Expiry => format!("{}s", 10 + n * 3 / 10),
        Cut::Revoke => "1h".to_owned(),
    };
    let (grant, token) = inst.grant("alice", "read", &ttl).await;
    let conn = inst.conn_string("alice", &token, "disable");
    let login_started = Instant::now();
    let clients: Vec<tokio_postgres::Client> = futures::stream::iter(0..n)
        .map(|_| {
            let conn = conn.clone();
            async move {
                let (client, connection) = tokio_postgres::connect(&conn, NoTls).await.expect("login");
                tokio::spawn(connection);
                client
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let logins = login_started.elapsed();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for client in clients {
        let tx = tx.clone();
        tokio::spawn(async move {
            let r = client.simple_query("SELECT pg_sleep(60)").await;
            let code = r
                .err()
                .and_then(|e| e.as_db_error().map(|d| d.code().code().to_owned()));
            let _ = tx.send((Utc::now(), code));
        });
    }
    drop(tx);
    let su = common::cluster::shared_cluster().superuser_conn_string("postgres");
    let (watcher, connection) = tokio_postgres::connect(&su, NoTls).await.expect("superuser");
    tokio::spawn(connection);
    let like = format!("timebox:%:{}%", grant.id);
    // Wait until every query runs upstream.
    loop {
        let c: i64 = watcher
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE $1",
                &[&like],
            )
            .await
            .unwrap()
            .get(0);
        if c as usize >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deadline: DateTime<Utc> = match cut {
        Cut::Expiry => grant.expires_at,
        Cut::Revoke => {
            let at = Utc::now();
            inst.state
                .grants
                .revoke(&grant.id, "bench", "bench")
                .await
                .unwrap();
            at
        }
    };
    assert!(
        Utc::now() < grant.expires_at,
        "logins took {logins:?}: longer than the grant"
    );
    let mut client_late = Vec::with_capacity(n);
    let mut gone_ms = None;
    let mut all_fatal = true;
    let mut done = false;
    while !done || gone_ms.is_none() {
        tokio::select! {
            got = rx.recv(), if !done => match got {
                Some((at, code)) => {
                    all_fatal &= code.as_deref() == Some("57P01");
                    client_late.push(ms(at - deadline));
                }
                None => done = true,
            },
            _ = tokio::time::sleep(Duration::from_millis(10)), if gone_ms.is_none() => {
                if Utc::now() > deadline {
                    let c: i64 = watcher
                        .query_one(
                            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE $1",
                            &[&like],
                        )
                        .await
                        .unwrap()
                        .get(0);
                    if c == 0 {
                        gone_ms = Some(ms(Utc::now() - deadline));
                    }
                }
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    inst.state.audit.wait_indexed().await.unwrap();
    let audit_late = session_end_lateness(&inst.dir.path().join("audit.db"), &grant.id, deadline);
    println!(
        "| {n} | {cut:?} | {} | {} | {:.0} |{}",
        pcts(&mut client_late),
        pcts(&mut audit_late.clone()),
        gone_ms.unwrap_or(f64::NAN),
        if all_fatal {
            ""
        } else {
            " (not every client got 57P01)"
        }
    );
}

fn ms(d: chrono::Duration) -> f64 {
    d.num_microseconds().unwrap_or(i64::MAX) as f64 / 1000.0
}

fn pcts(v: &mut [f64]) -> String {
    if v.is_empty() {
        return "-".into();
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let at = |p: f64| v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1];
    format!("{:.1} / {:.1} / {:.1}", at(0.5), at(0.99), v[v.len() - 1])
}

/// `session_end` ts − the deadline, per session of `grant_id`, in ms.
fn session_end_lateness(db: &std::path::Path, grant_id: &str, deadline: DateTime<Utc>) -> Vec<f64> {
    let conn = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let mut stmt = conn
        .prepare("SELECT ts FROM audit_events WHERE kind = 'session_end' AND grant_id = ?1")
        .unwrap();
    stmt.query_map([grant_id], |r| r.get::<_, String>(0))
        .unwrap()
        .map(|ts| {
            let ts: DateTime<Utc> = ts.unwrap().parse().expect("rfc3339 ts");
            ms(ts - deadline)
        })
        .collect()
}
