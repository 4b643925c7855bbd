//! Audit writer benchmarks.
//!
//! - `audit_throughput/<level>/<n>_submitters`: records/s through the group-commit writer. The n
//!   submitter tasks keep [`IN_FLIGHT`] single-event submissions in flight between them (as that
//!   many concurrent sessions, each waiting for its statement's record, would); a sample ends when
//!   every record is written and acked (for `async`, when the writer has committed them all).
//! - `audit_record_latency/<level>`: the time one `record(vec![event]).await` adds to a statement
//!   when nothing else is queued.
//! - `audit_submit_ack/<level>`: the relay's `submit(vec![event])?.await`, one session, nothing
//!   else queued (durable at the level, not yet indexed).
//! - `audit_encoding/*`: the per-record work around the writer — `prepare` (redaction and canonical
//!   JSON, on the relay's task) of a pgbench statement record, and the writer's share (hash chain
//!   and journal line).
//! - `audit_index/insert_rows/*`: the indexer thread's SQLite transaction for a batch of
//!   statement and outcome records (issue 13: the B-tree inserts per record).
//! - then, outside criterion (not in a filtered run), a steady-state run per level and submitter count: [`STEADY_RECORDS`]
//!   records through a fresh log, printed as records/s (criterion's short samples include filling
//!   and draining the pipeline; this one shows the sustained rate).
//!
//! The database lives in a temporary directory on the machine's real disk, so `fsync` is a real
//! fsync. Run: `cargo bench --bench audit -- --warm-up-time 1 --measurement-time 3`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use timebox::audit::{
    AuditAck, AuditError, AuditEvent, AuditLog, AuditOptions, AuditWriterHandle, Decision, Statement,
};
use timebox::clock::SystemClock;
use timebox::config::{Durability, ParamLogging};

/// Single-event submissions in flight across all submitters.
const IN_FLIGHT: usize = 16_384;

const LEVELS: [(&str, Durability); 3] = [
    ("fsync", Durability::Fsync),
    ("write", Durability::Write),
    ("async", Durability::Async),
];

fn event(session: usize, id: u64) -> AuditEvent {
    AuditEvent::Statement(Statement {
        class: "read".into(),
        decision: Decision::Allow,
        grant_id: "g_3f9a1c2b7d4e5f60".into(),
        params: Some(vec![Some(id.to_string())]),
        reason: None,
        relations: vec!["public.pgbench_accounts".into()],
        session_id: format!("s_{session:016x}"),
        sql: "SELECT abalance FROM pgbench_accounts WHERE aid = $1".into(),
        sql_bytes: None,
        sql_sha256: None,
        sql_truncated: false,
        statement_id: id,
        target: "shop".into(),
        user: "alice".into(),
    })
}

fn open(dir: &std::path::Path, durability: Durability) -> (AuditLog, AuditWriterHandle) {
    AuditLog::open_with(AuditOptions {
        db: Some(dir.join("audit.db")),
        jsonl: None,
        jsonl_max_bytes: 100 * 1024 * 1024,
        jsonl_keep: 10,
        durability,
        params: ParamLogging::Redacted,
        queue_capacity: timebox::audit::QUEUE_CAPACITY,
        max_batch: timebox::audit::MAX_BATCH,
        segment_bytes: timebox::audit::journal::SEGMENT_BYTES,
        clock: Arc::new(SystemClock),
    })
    .expect("open audit log")
}

/// One submitter: `n` single-event submissions, at most `window` unacknowledged.
async fn pump(log: AuditLog, session: usize, n: u64, window: usize) {
    let mut acks: VecDeque<AuditAck> = VecDeque::with_capacity(window);
    for i in 0..n {
        loop {
            match log.submit(vec![event(session, i)]) {
                Ok(ack) => {
                    acks.push_back(ack);
                    break;
                }
                Err(AuditError::QueueFull { .. }) => match acks.pop_front() {
                    Some(ack) => ack.await.expect("ack"),
                    None => tokio::time::sleep(Duration::from_micros(50)).await,
                },
                Err(e) => panic!("submit failed: {e}"),
            }
        }
        if acks.len() >= window {
            if let Some(ack) = acks.pop_front() {
                ack.await.expect("ack");
            }
        }
    }
    for ack in acks {
        ack.await.expect("ack");
    }
}

fn throughput(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("audit_throughput");
    group.sample_size(10);
    group.throughput(Throughput::Elements(1));
    for (name, durability) in LEVELS {
        let dir = tempfile::tempdir().unwrap();
        let (log, writer) = rt.block_on(async { open(dir.path(), durability) });
        for submitters in [1usize, 8] {
            group.bench_with_input(
                BenchmarkId::new(name, format!("{submitters}_submitters")),
                &submitters,
                |b, &submitters| {
                    b.iter_custom(|iters| {
                        rt.block_on(async {
                            let target = log.stats().committed + iters;
                            let start = Instant::now();
                            let tasks: Vec<_> = (0..submitters)
                                .map(|s| {
                                    let share = iters / submitters as u64
                                        + u64::from((s as u64) < iters % submitters as u64);
                                    tokio::spawn(pump(log.clone(), s, share, IN_FLIGHT / submitters))
                                })
                                .collect();
                            for t in tasks {
                                t.await.unwrap();
                            }
                            while log.stats().committed < target {
                                tokio::time::sleep(Duration::from_micros(100)).await;
                            }
                            start.elapsed()
                        })
                    })
                },
            );
        }
        rt.block_on(writer.shutdown());
        let stats = log.stats();
        eprintln!(
            "audit {name}: {} records in {} batches ({:.0} records per commit)",
            stats.committed,
            stats.batches,
            stats.committed as f64 / stats.batches.max(1) as f64
        );
    }
    group.finish();
}

fn latency(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("audit_record_latency");
    group.sample_size(20);
    for (name, durability) in LEVELS {
        let dir = tempfile::tempdir().unwrap();
        let (log, writer) = rt.block_on(async { open(dir.path(), durability) });
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut timed = Duration::ZERO;
                    for i in 0..iters {
                        // At `async` the queue would fill (records are acked at enqueue): let the
                        // writer drain it, untimed, so each timed call sees an idle writer.
                        while log.queue_depth() > 1024 {
                            tokio::time::sleep(Duration::from_micros(200)).await;
                        }
                        let start = Instant::now();
                        log.record(vec![event(0, i)]).await.expect("record");
                        timed += start.elapsed();
                    }
                    timed
                })
            })
        });
        rt.block_on(writer.shutdown());
    }
    group.finish();
}

/// The relay's way: `submit(vec![event])?.await` per statement, one session, nothing else queued
/// (issue 13: an uncontended submission should cost no thread hand-off).
fn submit_ack(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("audit_submit_ack");
    group.throughput(Throughput::Elements(1));
    for (name, durability) in LEVELS {
        let dir = tempfile::tempdir().unwrap();
        let (log, writer) = rt.block_on(async { open(dir.path(), durability) });
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for i in 0..iters {
                        log.submit(vec![event(0, i)]).expect("submit").await.expect("ack");
                    }
                    start.elapsed()
                })
            })
        });
        rt.block_on(writer.shutdown());
    }
    group.finish();
}

/// Records per steady-state run.
const STEADY_RECORDS: u64 = 500_000;
/// Under `cargo test` (no `--bench` argument) the steady-state run only checks that it works.
const STEADY_SMOKE_RECORDS: u64 = 2_000;

fn steady_state() {
    let records = if std::env::args().any(|a| a == "--bench") {
        STEADY_RECORDS
    } else {
        STEADY_SMOKE_RECORDS
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for (name, durability) in LEVELS {
        for submitters in [1usize, 8] {
            let dir = tempfile::tempdir().unwrap();
            let (log, writer) = rt.block_on(async { open(dir.path(), durability) });
            let start = Instant::now();
            rt.block_on(async {
                let tasks: Vec<_> = (0..submitters)
                    .map(|s| {
                        let share = records / submitters as u64;
                        tokio::spawn(pump(log.clone(), s, share, IN_FLIGHT / submitters))
                    })
                    .collect();
                for t in tasks {
                    t.await.unwrap();
                }
                let target = records / submitters as u64 * submitters as u64;
                while log.stats().committed < target {
                    tokio::time::sleep(Duration::from_micros(100)).await;
                }
            });
            let elapsed = start.elapsed();
            let stats = log.stats();
            println!(
                "audit steady state {name}/{submitters}_submitters: {:.0} records/s ({} records, {:.0} per commit)",
                stats.committed as f64 / elapsed.as_secs_f64(),
                stats.committed,
                stats.committed as f64 / stats.batches.max(1) as f64
            );
            rt.block_on(writer.shutdown());
        }
    }
}

fn encoding(c: &mut Criterion) {
    use timebox::audit::{chain, event, jsonl};
    let mut group = c.benchmark_group("audit_encoding");
    group.throughput(Throughput::Elements(1));
    let mut simple = event(1, 42);
    if let AuditEvent::Statement(s) = &mut simple {
        s.sql = "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;".into();
        s.params = None;
    }
    group.bench_function("prepare/pgbench_simple_statement", |b| {
        b.iter(|| event::prepare(std::hint::black_box(simple.clone()), ParamLogging::Redacted))
    });
    group.bench_function("prepare/pgbench_bind_statement", |b| {
        b.iter(|| event::prepare(std::hint::black_box(event(1, 42)), ParamLogging::Redacted))
    });
    let prepared = event::prepare(simple.clone(), ParamLogging::Redacted);
    let ts = chain::format_ts(chrono::Utc::now());
    let prev = [7u8; 32];
    let mut line = Vec::with_capacity(1024);
    group.bench_function("chain_and_journal_line", |b| {
        b.iter(|| {
            let hash = chain::record_hash(&prev, 1_000_000, &ts, prepared.kind, &prepared.payload);
            line.clear();
            jsonl::format_line(
                &mut line,
                1_000_000,
                &ts,
                prepared.kind,
                &prepared.payload,
                chain::HexHash::new(&prev).as_str(),
                chain::HexHash::new(&hash).as_str(),
            );
            std::hint::black_box(line.len())
        })
    });
    group.finish();
}

/// Records per indexer batch in `audit_index` (about 50 ms of a busy instance).
const INDEX_BATCH: u64 = 1024;

/// The indexer's SQLite work for a realistic batch (issue 13): [`INDEX_BATCH`] records, a statement
/// and its outcome in turn, from 8 sessions (two users, two grants), into a database on disk with
/// the writer's settings; one transaction per batch, as the indexer commits.
fn index(c: &mut Criterion) {
    use timebox::audit::chain::HexHash;
    use timebox::audit::sqlite::{insert_rows, open_writer, IndexRow};
    use timebox::audit::{event, StatementOutcome};
    let mut group = c.benchmark_group("audit_index");
    group.throughput(Throughput::Elements(INDEX_BATCH));
    let dir = tempfile::tempdir().unwrap();
    let mut conn = open_writer(Some(&dir.path().join("audit.db"))).expect("open audit db");
    let ts: Arc<str> = Arc::from(timebox::audit::chain::format_ts(chrono::Utc::now()));
    let mut next_seq = 1u64;
    let mut batch = move || -> Vec<IndexRow> {
        (0..INDEX_BATCH)
            .map(|i| {
                let seq = next_seq;
                next_seq += 1;
                let session = (i / 2 % 8) as usize;
                let id = seq / 2;
                let ev = if i % 2 == 0 {
                    let mut ev = event(session, id);
                    if let AuditEvent::Statement(s) = &mut ev {
                        s.user = ["alice", "bob"][session % 2].into();
                        s.grant_id = format!("g_{}", session % 4);
                    }
                    ev
                } else {
                    AuditEvent::StatementOutcome(StatementOutcome {
                        command_tag: Some("SELECT 1".into()),
                        duration_us: 120,
                        returned: None,
                        rows: Some(1),
                        session_id: format!("s_{session:016x}"),
                        sqlstate: None,
                        statement_id: id,
                    })
                };
                let p = event::prepare(ev, ParamLogging::Redacted);
                IndexRow {
                    seq,
                    ts: ts.clone(),
                    kind: p.kind,
                    payload: p.payload,
                    prev_hash: HexHash::new(&[1; 32]),
                    hash: HexHash::new(&[2; 32]),
                    columns: p.columns,
                }
            })
            .collect()
    };
    group.bench_function("insert_rows/statement_and_outcome_batch", |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                let rows = batch();
                let start = Instant::now();
                insert_rows(&mut conn, &rows).expect("insert");
                timed += start.elapsed();
            }
            timed
        })
    });
    group.finish();
}

criterion_group!(benches, encoding, index, submit_ack, throughput, latency);

/// Whether criterion was given a filter: an argument that is not an option's value.
fn filtered() -> bool {
    const FLAGS: &[&str] = &[
        "--bench",
        "--test",
        "--exact",
        "--noplot",
        "--quiet",
        "--verbose",
        "--list",
        "--nocapture",
        "--discard-baseline",
        "--quick",
    ];
    let args: Vec<String> = std::env::args().skip(1).collect();
    args.iter().enumerate().any(|(i, a)| {
        !a.starts_with('-')
            && (i == 0 || !args[i - 1].starts_with("--") || FLAGS.contains(&args[i - 1].as_str()))
    })
}

fn main() {
    benches();
    // A filtered run (`cargo bench --bench audit -- audit_index`) measures only what it names.
    if !filtered() {
        steady_state();
    }
    Criterion::default().configure_from_args().final_summary();
}
