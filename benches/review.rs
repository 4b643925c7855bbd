//! Role review and policy replay at scale (issue 14): a trail of [`BENCH_RECORDS`] statement records
//! (1,000 sessions of two roles, 40 statement shapes with varying literals, a few prepared
//! statements) written through the real audit log, then read back, replayed under a candidate that
//! drops `write`, and reviewed. Prints wall time, records/s, distinct decisions made and the peak
//! resident memory of each phase (VmHWM, reset between phases).
//!
//! Run: `cargo bench --bench review` (1 million records; writing the trail takes about a minute).
//! Under `cargo test` it runs the same code on a small trail as a smoke test.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use timebox::audit::event::SessionStart;
use timebox::audit::{AuditEvent, AuditLog, AuditOptions, Decision, Statement};
use timebox::clock::SystemClock;
use timebox::config::{Durability, ParamLogging, Role};
use timebox::policy::{ServerVersion, StatementClass};
use timebox::review::{replay, roles, trail, Window};

const BENCH_RECORDS: u64 = 1_000_000;
const SMOKE_RECORDS: u64 = 2_000;
const SESSIONS: u64 = 1_000;
const BATCH: u64 = 1_000;

fn shape(i: u64) -> (String, &'static str) {
    let n = i / 40;
    match i % 40 {
        0..=19 => (format!("SELECT * FROM orders WHERE id = {n}"), "read"),
        20..=27 => (
            format!("SELECT c.name, sum(o.total) FROM customers c JOIN orders o ON o.customer_id = c.id WHERE c.id = {n} GROUP BY 1"),
            "read",
        ),
        28..=31 => (format!("UPDATE orders SET status = 'shipped' WHERE id = {n}"), "write"),
        32..=33 => (format!("DELETE FROM carts WHERE id = {n}"), "write"),
        34 => ("PREPARE q AS SELECT * FROM orders WHERE id = $1".into(), "read"),
        35 => (format!("EXECUTE q({n})"), "read"),
        36 => ("DEALLOCATE q".into(), "read"),
        37 => (format!("SELECT count(*) FROM events WHERE created_at > now() - interval '{} minutes'", n % 90), "read"),
        38 => ("BEGIN".into(), "read"),
        _ => ("COMMIT".into(), "read"),
    }
}

/// Each session runs the 40 shapes in order (so its PREPARE comes before its EXECUTE).
fn statement(i: u64) -> AuditEvent {
    let session = (i / 40) % SESSIONS;
    let (sql, class) = shape(i);
    let role_is_read = session.is_multiple_of(2);
    let decision = if role_is_read && class == "write" {
        Decision::Deny
    } else {
        Decision::Allow
    };
    AuditEvent::Statement(Statement {
        class: class.into(),
        decision,
        grant_id: format!("g_{session:016x}"),
        params: None,
        reason: (decision == Decision::Deny).then(|| "write is not allowed".into()),
        relations: Vec::new(),
        session_id: format!("s_{session:016x}"),
        sql,
        sql_bytes: None,
        sql_sha256: None,
        sql_truncated: false,
        statement_id: i,
        target: "shop".into(),
        user: format!("user{}", session % 50),
    })
}

fn session_start(session: u64) -> AuditEvent {
    AuditEvent::SessionStart(SessionStart {
        application_name: None,
        client_addr: "127.0.0.1:5000".into(),
        grant_id: format!("g_{session:016x}"),
        role: if session.is_multiple_of(2) {
            "read"
        } else {
            "write"
        }
        .into(),
        session_id: format!("s_{session:016x}"),
        target: "shop".into(),
        tls_version: None,
        user: format!("user{}", session % 50),
    })
}

fn role(name: &str, allow: &[StatementClass]) -> Role {
    Role::allowing(name, allow, Duration::from_secs(3600))
}

/// Peak resident memory since the last reset, in MiB (Linux).
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

fn reset_peak_rss() {
    // "5" resets VmHWM to the current RSS (Linux ≥ 4.0); harmless where unsupported.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

async fn write_trail(dir: &std::path::Path, records: u64) -> std::path::PathBuf {
    let db = dir.join("audit.db");
    let (log, writer) = AuditLog::open_with(AuditOptions {
        db: Some(db.clone()),
        jsonl: None,
        jsonl_max_bytes: 100 * 1024 * 1024,
        jsonl_keep: 1,
        durability: Durability::Async,
        params: ParamLogging::Redacted,
        queue_capacity: timebox::audit::QUEUE_CAPACITY,
        max_batch: timebox::audit::MAX_BATCH,
        segment_bytes: timebox::audit::journal::SEGMENT_BYTES,
        clock: Arc::new(SystemClock),
    })
    .expect("open audit log");
    log.record((0..SESSIONS).map(session_start).collect())
        .await
        .expect("session starts");
    let mut i = 0;
    while i < records {
        let end = (i + BATCH).min(records);
        log.record((i..end).map(statement).collect())
            .await
            .expect("statements");
        i = end;
    }
    log.wait_indexed().await.expect("indexed");
    drop(log);
    writer.shutdown().await;
    db
}

fn report(phase: &str, records: u64, started: Instant, extra: &str) {
    let secs = started.elapsed().as_secs_f64();
    println!(
        "review/{phase}: {records} records in {secs:.2} s ({:.0} records/s), peak RSS {:.0} MiB{extra}",
        records as f64 / secs,
        peak_rss_mib()
    );
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let records = if bench { BENCH_RECORDS } else { SMOKE_RECORDS };
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let started = Instant::now();
    let db = runtime.block_on(write_trail(dir.path(), records));
    report("write_trail", records, started, "");

    let current: BTreeMap<String, Role> = [
        ("read".to_owned(), role("read", &[StatementClass::Read])),
        (
            "write".to_owned(),
            role("write", &[StatementClass::Read, StatementClass::Write]),
        ),
    ]
    .into_iter()
    .collect();
    let mut candidate = current.clone();
    candidate.get_mut("write").expect("write role").allow = vec![StatementClass::Read];

    reset_peak_rss();
    let started = Instant::now();
    let mut n = 0;
    trail::for_each_statement(&db, &Window::default(), |_| {
        n += 1;
        std::ops::ControlFlow::Continue(())
    })
    .expect("read");
    assert_eq!(n, records);
    report("read_trail", n, started, "");

    reset_peak_rss();
    let started = Instant::now();
    let mut replayer = replay::Replayer::new(&current, &candidate, ServerVersion::OLDEST);
    trail::for_each_statement(&db, &Window::default(), |r| {
        replayer.feed(r);
        std::ops::ControlFlow::Continue(())
    })
    .expect("replay");
    let result = replayer.finish();
    assert_eq!(result.statements, records);
    assert!(result.newly_denied > 0 && result.newly_allowed == 0, "{result:?}");
    report(
        "replay",
        records,
        started,
        &format!(
            ", {} decisions made, {} newly denied, {} not reproducible",
            result.decisions_made, result.newly_denied, result.not_reproducible
        ),
    );

    reset_peak_rss();
    let started = Instant::now();
    let mut reviewer = roles::Reviewer::default();
    trail::for_each_statement(&db, &Window::default(), |r| {
        reviewer.feed(r);
        std::ops::ControlFlow::Continue(())
    })
    .expect("review");
    let reviews = reviewer.finish(&current);
    assert_eq!(reviews.len(), 2);
    report("review", records, started, "");
}
