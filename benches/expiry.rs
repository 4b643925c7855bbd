//! Expiry and revocation at scale (issue 18): N sessions of one grant, all running a query that
//! only a cut ends (`pg_sleep(3600)`), the grant expiring (or being revoked); how late each client
//! got its FATAL 57P01 (when its socket became readable, seen by a thread of its own watching raw
//! clients: [`watch_fatals`]), how late its `session_end` was recorded (audit `ts` − the
//! deadline), how the upstream queries ended (`upstream_end`: terminated by timebox's batch
//! connection, cancelled by a CancelRequest, or closed) and how long until the last of the grant's
//! backends was gone from `pg_stat_activity`.
//!
//!   cargo test --bench expiry                  smoke: 5 sessions, debug (no numbers worth keeping)
//!   cargo test --bench expiry -- --sessions 100 [--cut expiry|revoke]     debug, a quick check
//!   cargo bench --bench expiry                 release: 100 and 1,000 sessions, expiry and revoke
//!   ulimit -n 8192 && cargo bench --bench expiry -- --sessions 1000       release, 1,000 sessions
//!
//! Needs about 3 file descriptors per session in this one process (the client's socket, timebox's
//! client socket and its upstream socket): it stops at once
//! with the `ulimit -n` to use if the limit is too low. The throwaway cluster gets `max_connections` = sessions + 100, and PostgreSQL
//! forks one backend per session (1,000 idle backends take a few GiB). Clients connect 32 at a time
//! ([`CONNECT_PARALLELISM`]), below `max_unauthenticated`.
//!
//! The grant is issued for an hour; once every session's query runs upstream, an expiry is set to
//! [`EXPIRY_LEAD`] from then (in the store, announced to the sessions as an extension would be), so
//! the deadline never depends on how long the logins took. (The first 1,000-session attempt issued
//! a 310 s grant and ran `pg_sleep(60)`: the logins took ~126 s, so every query simply finished
//! ~124 s before `expires_at`, without a cut and without 57P01.) Clients that did not get 57P01 are
//! counted apart and left out of the lateness figures.
//!
//! Results: `benches/RESULTS.md` ("Expiry at scale"). Uses the wire tests' harness (a throwaway
//! cluster, a real timebox on port 0).

#[path = "../tests/common/mod.rs"]
#[allow(unused_imports)]
mod common;

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::Options;
use futures::StreamExt;
use tokio_postgres::NoTls;

/// Clients logging in at once.
const CONNECT_PARALLELISM: usize = 32;
/// How far ahead of "every query is running" the expiry is set.
const EXPIRY_LEAD: chrono::Duration = chrono::Duration::seconds(2);
/// How long after the deadline the run gives up waiting for the sessions to end.
const GIVE_UP_AFTER: Duration = Duration::from_secs(120);

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
    check_open_files(max);
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
            "| sessions | cut | client FATAL min / p50 / p99 / max ms | audit session_end min / p50 / p99 / max ms | upstream_end terminated / cancelled / closed | last upstream backend gone ms |"
        );
        println!("|---|---|---|---|---|---|");
        for &n in &sizes {
            for cut in cuts.iter().copied() {
                run(&inst, n, cut).await;
            }
        }
    });
}

async fn run(inst: &common::TestInstance, n: usize, cut: Cut) {
    let (grant, token) = inst.grant("alice", "read", "1h").await;
    let login_started = Instant::now();
    let proxy = inst.proxy_addr;
    let token = &token;
    // Raw clients: nothing in this process reads their sockets but the watcher.
    let mut clients: Vec<tokio::net::TcpStream> = futures::stream::iter(0..n)
        .map(|_| async move { common::raw::login(proxy, "alice", token).await.0 })
        .buffer_unordered(CONNECT_PARALLELISM)
        .collect()
        .await;
    let logins = login_started.elapsed();
    // Every query starts once all are logged in: the role's statement_timeout (30 s) must not end
    // the first ones while the last log in (300 debug logins on a loaded machine take longer).
    // Only the cut ends them.
    let mut query = bytes::BytesMut::new();
    postgres_protocol::message::frontend::query("SELECT pg_sleep(3600)", &mut query).unwrap();
    for tcp in &mut clients {
        tokio::io::AsyncWriteExt::write_all(tcp, &query).await.unwrap();
    }
    let sockets: Vec<std::net::TcpStream> = clients
        .into_iter()
        .map(|tcp| tcp.into_std().expect("std socket"))
        .collect();
    let su = common::cluster::shared_cluster().superuser_conn_string("postgres");
    let (watcher, connection) = tokio_postgres::connect(&su, NoTls).await.expect("superuser");
    tokio::spawn(connection);
    let like = format!("timebox:%:{}%", grant.id);
    let count = |active_only: bool| {
        let (watcher, like) = (&watcher, &like);
        async move {
            let sql = if active_only {
                "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE $1 AND state = 'active'"
            } else {
                "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE $1"
            };
            let c: i64 = watcher.query_one(sql, &[like]).await.unwrap().get(0);
            c as usize
        }
    };
    // Wait until every query runs upstream.
    while count(true).await < n {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let busy_after = login_started.elapsed();
    // From here on the only bytes a client can get are its FATAL.
    let fatals = watch_fatals(sockets);
    let deadline: DateTime<Utc> = match cut {
        Cut::Expiry => {
            // As an extension would, but shorter: the store's row, then the sessions' watch.
            let at = Utc::now() + EXPIRY_LEAD;
            let store = inst.state.grants.store();
            let shortened = store
                .extend_grant(grant.id.clone(), at)
                .await
                .unwrap()
                .expect("the grant");
            inst.state.grants.watches().publish(&shortened);
            at
        }
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
    let give_up = tokio::time::Instant::now() + EXPIRY_LEAD.to_std().unwrap() + GIVE_UP_AFTER;
    let gone_ms = loop {
        tokio::time::sleep(Duration::from_millis(10)).await;
        if Utc::now() > deadline && count(false).await == 0 {
            break ms(Utc::now() - deadline);
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "{n} sessions, {cut:?}: upstream backends still there {GIVE_UP_AFTER:?} after the deadline"
        );
    };
    let seen = tokio::task::spawn_blocking(move || fatals.join().expect("watcher thread"))
        .await
        .unwrap();
    let mut client_late: Vec<f64> = seen
        .iter()
        .filter(|(_, code)| code.as_deref() == Some("57P01"))
        .map(|(at, _)| ms(*at - deadline))
        .collect();
    let not_fatal = seen.len() - client_late.len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    inst.state.audit.wait_indexed().await.unwrap();
    let db = inst.dir.path().join("audit.db");
    let audit_late = session_end_lateness(&db, &grant.id, deadline);
    let (terminated, cancelled, closed) = upstream_end_outcomes(&db, &grant.id);
    eprintln!("{n} sessions logged in in {logins:?}, all busy after {busy_after:?}");
    println!(
        "| {n} | {cut:?} | {} | {} | {terminated} / {cancelled} / {closed} | {gone_ms:.0} |{}",
        pcts(&mut client_late),
        pcts(&mut audit_late.clone()),
        if not_fatal == 0 {
            String::new()
        } else {
            format!(" ({not_fatal} clients did not get 57P01)")
        }
    );
}

/// Stops at once, saying what to do, if this process may not open the ~3 descriptors per session
/// the run needs (Linux: the soft limit in `/proc/self/limits`; elsewhere not checked).
fn check_open_files(sessions: usize) {
    let needed = sessions * 3 + 256;
    let Ok(limits) = std::fs::read_to_string("/proc/self/limits") else {
        return;
    };
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse::<usize>().ok());
    if let Some(soft) = soft {
        if soft < needed {
            eprintln!(
                "expiry bench: {sessions} sessions need about {needed} open files in this process, \
                 but the limit is {soft}; raise it first, e.g. `ulimit -n {}` (at most `ulimit -Hn`), \
                 then run again",
                needed.next_power_of_two()
            );
            std::process::exit(2);
        }
    }
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
    format!(
        "{:.1} / {:.1} / {:.1} / {:.1}",
        v[0],
        at(0.5),
        at(0.99),
        v[v.len() - 1]
    )
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

/// (terminated, cancelled, closed) among the `upstream_end` records of `grant_id`.
fn upstream_end_outcomes(db: &std::path::Path, grant_id: &str) -> (usize, usize, usize) {
    let conn = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let mut stmt = conn
        .prepare("SELECT payload FROM audit_events WHERE kind = 'upstream_end'")
        .unwrap();
    let outcomes: Vec<String> = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(|p| serde_json::from_str::<serde_json::Value>(&p.unwrap()).unwrap())
        .filter(|p| p["grant_id"] == grant_id)
        .map(|p| p["outcome"].as_str().unwrap_or("").to_owned())
        .collect();
    let count = |outcome: &str| outcomes.iter().filter(|o| *o == outcome).count();
    let (terminated, cancelled) = (count("terminated"), count("cancelled"));
    (terminated, cancelled, outcomes.len() - terminated - cancelled)
}

/// When each client's socket became readable (its FATAL arrived) and the SQLSTATE it got, seen by
/// a thread with a runtime of its own: the clients are raw sockets that nothing else in this
/// process reads, so the figure is when the bytes arrived, not when a client library sharing
/// timebox's runtime got round to parsing them (the first version of this bench used 1,000
/// tokio-postgres clients on timebox's own runtime, which added their scheduling to the lateness
/// and took CPU from timebox while it was cutting). The instant is taken when `peek` sees the first
/// byte; the frames are read and parsed after it.
fn watch_fatals(
    sockets: Vec<std::net::TcpStream>,
) -> std::thread::JoinHandle<Vec<(DateTime<Utc>, Option<String>)>> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let give_up = tokio::time::Instant::now() + EXPIRY_LEAD.to_std().unwrap() + GIVE_UP_AFTER;
            let waits = sockets.into_iter().map(|s| async move {
                s.set_nonblocking(true).unwrap();
                let mut s = tokio::net::TcpStream::from_std(s).unwrap();
                let mut byte = [0u8; 1];
                // Returns as soon as a byte is there (or the socket closed), without consuming it.
                let _ = s.peek(&mut byte).await;
                let at = Utc::now();
                let mut buf = bytes::BytesMut::new();
                let code = common::raw::next_error(&mut s, &mut buf)
                    .await
                    .map(|(code, _)| code);
                (at, code)
            });
            let all = futures::future::join_all(waits);
            tokio::time::timeout_at(give_up, all)
                .await
                .expect("every client socket got its FATAL")
        })
    })
}
