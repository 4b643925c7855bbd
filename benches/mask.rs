//! The cost of column masking (issue 15 item 5): a result-heavy SELECT (N rows of 5 columns, 3 of
//! them masked: `email`, `partial`, `hash`) read in text (simple Query) and binary (a prepared
//! statement, binary results) by tokio-postgres, through timebox for a role with masks, through
//! timebox for a role without masks (same upstream user), and directly from PostgreSQL. Reports
//! rows/s (wall) and this process's CPU µs per 1,000 rows (the client and the in-process timebox
//! together; the direct run is the client alone, so the difference is timebox's).
//!
//!   cargo test --bench mask                    smoke: 1,000 rows, 1 round (no numbers worth keeping)
//!   cargo bench --bench mask                   release: 100,000 rows, 5 rounds (median)
//!   cargo bench --bench mask -- --rows 10000 --rounds 3
//!
//! Results: `benches/RESULTS.md` ("Masking cost (issue 15)"). Uses the wire tests' harness (a
//! throwaway cluster, a real timebox on port 0, both in this process).

#[path = "../tests/common/mod.rs"]
#[allow(unused_imports)]
mod common;

use std::time::{Duration, Instant};

use tokio_postgres::{Client, SimpleQueryMessage};

const QUERY: &str = "SELECT id, name, email, phone, ssn FROM public.bench_mask";

fn roles() -> String {
    use common::cluster::{READ_PASSWORD, READ_USER};
    format!(
        r#"
[roles.masked]
allow = ["read"]
max_ttl = "1h"
mask = {{ "public.bench_mask.email" = "email", "public.bench_mask.phone" = "partial", "public.bench_mask.ssn" = "hash" }}
[targets.shop.credentials.masked]
user = "{READ_USER}"
password = "{READ_PASSWORD}"
"#
    )
}

fn arg(args: &[String], name: &str) -> Option<usize> {
    let i = args.iter().position(|a| a == name)?;
    Some(args[i + 1].parse().unwrap_or_else(|_| panic!("{name} N")))
}

/// This process's user + system CPU time (`/proc/self/stat`, clock ticks of 10 ms).
fn cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // After the ")": state is field 0, utime field 11, stime field 12.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

#[derive(Clone, Copy, Debug)]
enum Format {
    Text,
    Binary,
}

/// Reads the whole result once; the rows and the first row's `email` as the client saw it.
async fn read_all(client: &Client, format: Format) -> (usize, String) {
    match format {
        Format::Text => {
            let messages = client.simple_query(QUERY).await.expect("text query");
            let rows: Vec<_> = messages
                .iter()
                .filter_map(|m| match m {
                    SimpleQueryMessage::Row(r) => Some(r),
                    _ => None,
                })
                .collect();
            let first = rows.first().and_then(|r| r.get(2)).unwrap_or("").to_owned();
            (rows.len(), first)
        }
        Format::Binary => {
            let stmt = client.prepare(QUERY).await.expect("prepare");
            let rows = client.query(&stmt, &[]).await.expect("binary query");
            let first = rows.first().map(|r| r.get::<_, String>(2)).unwrap_or_default();
            (rows.len(), first)
        }
    }
}

/// The median (wall, CPU) of `rounds` reads of the result, after one warm-up read.
async fn measure(
    client: &Client,
    format: Format,
    rows: usize,
    rounds: usize,
    masked: bool,
) -> (Duration, Duration) {
    let (n, first) = read_all(client, format).await;
    assert_eq!(n, rows, "every row arrives");
    assert_eq!(
        first.starts_with("***@"),
        masked,
        "masked only for the role with masks: {first}"
    );
    let mut samples = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let (t0, c0) = (Instant::now(), cpu());
        let (n, _) = read_all(client, format).await;
        samples.push((t0.elapsed(), cpu().saturating_sub(c0)));
        assert_eq!(n, rows);
    }
    samples.sort();
    let wall = samples[samples.len() / 2].0;
    let mut cpus: Vec<Duration> = samples.iter().map(|s| s.1).collect();
    cpus.sort();
    (wall, cpus[cpus.len() / 2])
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let full = args.iter().any(|a| a == "--bench");
    let rows = arg(&args, "--rows").unwrap_or(if full { 100_000 } else { 1_000 });
    let rounds = arg(&args, "--rounds").unwrap_or(if full { 5 } else { 1 });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let port = tokio::task::spawn_blocking(move || {
            let cluster = common::cluster::shared_cluster();
            common::cluster::shop_psql(&format!(
                "DROP TABLE IF EXISTS public.bench_mask;
                 CREATE TABLE public.bench_mask (id int, name text, email text, phone text, ssn text);
                 INSERT INTO public.bench_mask SELECT i, 'customer number ' || i,
                     'customer' || i || '@example.com', '+1 555 01' || lpad(i::text, 6, '0'),
                     lpad(i::text, 9, '0') FROM generate_series(1, {rows}) i;
                 GRANT SELECT ON public.bench_mask TO {};",
                common::cluster::READ_USER
            ));
            cluster.port()
        })
        .await
        .unwrap();
        let inst = common::start_with_config(|dir| {
            common::config_text(&common::Options::default(), dir, port) + &roles()
        })
        .await;
        let direct = format!(
            "host=127.0.0.1 port={port} user={} password={} dbname=shop",
            common::cluster::READ_USER,
            common::cluster::READ_PASSWORD
        );
        let (_, masked_token) = inst.grant("alice", "masked", "1h").await;
        let (_, plain_token) = inst.grant("alice", "read", "1h").await;
        let paths = [
            (
                "timebox, role with 3 masks",
                inst.conn_string("alice", &masked_token, "disable"),
                true,
            ),
            (
                "timebox, role without masks",
                inst.conn_string("alice", &plain_token, "disable"),
                false,
            ),
            ("direct to PostgreSQL", direct, false),
        ];
        println!("{rows} rows of 5 columns, median of {rounds} rounds");
        println!("| path | format | rows/s | wall ms | CPU µs per 1,000 rows (client + timebox) |");
        println!("|---|---|---|---|---|");
        for format in [Format::Text, Format::Binary] {
            for (name, conn, masked) in &paths {
                let client = common::pg::connect(conn).await;
                let (wall, cpu) = measure(&client, format, rows, rounds, *masked).await;
                println!(
                    "| {name} | {format:?} | {:.0} | {:.1} | {:.0} |",
                    rows as f64 / wall.as_secs_f64(),
                    wall.as_secs_f64() * 1000.0,
                    cpu.as_secs_f64() * 1e6 / rows as f64 * 1000.0
                );
            }
        }
    });
}
