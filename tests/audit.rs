//! The audit trail end to end: the writer against real SQLite files (durability, group commit,
//! fail-closed), tampering with a written database (each kind of tampering is reported at the right
//! seq), the JSONL sink (same stream, rotation, catch-up after a crash), the admin API over real HTTP
//! and the `timebox audit` commands.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use reqwest::{Method, StatusCode};
use rusqlite::{params, Connection};
use serde_json::{json, Value};

use common::cli::{describe, timebox};
use common::http;
use common::{ADMIN_TOKEN, APPROVER_TOKEN, AUDITOR_TOKEN, REQUESTER_TOKEN};
use timebox::audit::chain::record_hash;
use timebox::audit::{
    self, AuditError, AuditEvent, AuditFilter, AuditLog, AuditOptions, Decision, Head, Order, SessionEnd,
    Statement,
};
use timebox::clock::SystemClock;
use timebox::config::{Durability, ParamLogging};

fn options(dir: &Path, durability: Durability) -> AuditOptions {
    AuditOptions {
        db: Some(dir.join("audit.db")),
        jsonl: None,
        jsonl_max_bytes: 100 * 1024 * 1024,
        jsonl_keep: 10,
        durability,
        params: ParamLogging::Redacted,
        queue_capacity: audit::QUEUE_CAPACITY,
        max_batch: audit::MAX_BATCH,
        segment_bytes: audit::journal::SEGMENT_BYTES,
        clock: Arc::new(SystemClock),
    }
}

fn stmt(session: &str, user: &str, id: u64, sql: &str, decision: Decision) -> AuditEvent {
    AuditEvent::Statement(Statement {
        class: if sql.starts_with("SELECT") {
            "read"
        } else {
            "write"
        }
        .into(),
        decision,
        grant_id: format!("g_{user}"),
        params: None,
        reason: (decision == Decision::Deny).then(|| "role read may not write".to_owned()),
        relations: vec!["public.orders".into()],
        session_id: session.into(),
        sql: sql.into(),
        sql_bytes: None,
        sql_sha256: None,
        sql_truncated: false,
        statement_id: id,
        target: "shop".into(),
        user: user.into(),
    })
}

/// A new log in a new directory (keep it alive: the log lives there).
fn open_log(durability: Durability) -> (tempfile::TempDir, AuditLog, audit::AuditWriterHandle) {
    let dir = tempfile::tempdir().unwrap();
    let (log, writer) = AuditLog::open_with(options(dir.path(), durability)).unwrap();
    (dir, log, writer)
}

/// Alice's allowed `SELECT <i>`, statement `i` of session `s_1`.
fn select_n(i: u64) -> AuditEvent {
    stmt("s_1", "alice", i, &format!("SELECT {i}"), Decision::Allow)
}

/// A closed log of `n` statements in `dir/audit.db`; returns its path.
async fn written_log(dir: &Path, n: u64) -> PathBuf {
    let (log, writer) = AuditLog::open_with(options(dir, Durability::Write)).unwrap();
    for i in 1..=n {
        let sql = format!("SELECT * FROM orders WHERE id = {i}");
        log.record(vec![stmt("s_1", "alice", i, &sql, Decision::Allow)])
            .await
            .unwrap();
    }
    writer.shutdown().await;
    dir.join("audit.db")
}

/// The seq of the last record in `dir/audit.db`.
fn head_seq(dir: &Path) -> u64 {
    audit::head_of_file(&dir.join("audit.db")).unwrap().seq
}

fn bad_seq(path: &Path, anchors: &[Head]) -> Option<(u64, String)> {
    let report = audit::verify_file(path, anchors).unwrap();
    assert_eq!(report.ok, report.first_bad.is_none());
    report.first_bad.map(|b| (b.seq, b.problem))
}

// ---------------------------------------------------------------------------------------------
// Hash chain and tampering.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_fresh_log_verifies_and_its_head_is_the_last_record() {
    let (dir, log, writer) = open_log(Durability::Fsync);
    let empty = log.verify(Vec::new()).await.unwrap();
    assert!(empty.ok);
    assert_eq!((empty.records, empty.head.clone()), (0, Head::genesis()));
    for i in 1..=5 {
        log.record(vec![stmt("s_1", "alice", i, "SELECT 1", Decision::Allow)])
            .await
            .unwrap();
    }
    let report = log.verify(Vec::new()).await.unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!(report.records, 5);
    assert_eq!(report.head, log.head());
    assert_eq!(log.head().seq, 5);
    writer.shutdown().await;
    let offline = audit::verify_file(&dir.path().join("audit.db"), &[]).unwrap();
    assert_eq!(offline, report);
    assert_eq!(
        audit::head_of_file(&dir.path().join("audit.db")).unwrap(),
        report.head
    );
}

#[tokio::test]
async fn the_first_record_links_to_genesis_and_each_hash_covers_the_canonical_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = written_log(dir.path(), 3).await;
    let conn = Connection::open(&path).unwrap();
    let mut stmt = conn
        .prepare("SELECT seq, ts, kind, payload, prev_hash, hash FROM audit_events ORDER BY seq")
        .unwrap();
    let rows: Vec<(i64, String, String, String, String, String)> = stmt
        .query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(rows[0].4, "0".repeat(64));
    let mut prev = [0u8; 32];
    for (seq, ts, kind, payload, prev_hash, hash) in rows {
        assert_eq!(prev_hash, hex::encode(prev));
        let h = record_hash(&prev, seq as u64, &ts, &kind, &payload);
        assert_eq!(hash, hex::encode(h));
        // ts: RFC 3339 UTC with microseconds
        assert!(
            ts.len() == 27 && ts.ends_with('Z') && ts.as_bytes()[19] == b'.',
            "{ts}"
        );
        prev = h;
    }
}

/// A closed log of `n` statements, then `tampering` run on it directly; the log's directory (keep
/// it alive), its path and a connection to it.
async fn tampered_log(n: u64, tampering: &str) -> (tempfile::TempDir, PathBuf, Connection) {
    let dir = tempfile::tempdir().unwrap();
    let path = written_log(dir.path(), n).await;
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch(tampering).unwrap();
    (dir, path, conn)
}

/// Each kind of tampering with rows: the record it is reported at, and what the problem says.
#[tokio::test]
async fn each_kind_of_tampering_is_reported_at_its_seq() {
    let cases: &[(&str, u64, &str, u64, Option<&str>)] = &[
        (
            "an edited payload",
            10,
            "UPDATE audit_events SET payload = replace(payload, 'id = 4', 'id = 5') WHERE seq = 4",
            4,
            Some("edited"),
        ),
        (
            "a deleted record",
            10,
            "DELETE FROM audit_events WHERE seq = 6",
            6,
            Some("missing"),
        ),
        (
            // Swap the content of records 3 and 7 (their hashes and links stay in place): reported
            // at the first moved seq.
            "reordered contents",
            10,
            "UPDATE audit_events SET payload = CASE seq \
                WHEN 3 THEN (SELECT payload FROM audit_events WHERE seq = 7) \
                ELSE (SELECT payload FROM audit_events WHERE seq = 3) END \
             WHERE seq IN (3, 7)",
            3,
            None,
        ),
        (
            // Swapping whole rows (hashes and all) breaks the links instead.
            "reordered rows",
            10,
            "UPDATE audit_events SET seq = 100 WHERE seq = 3;
             UPDATE audit_events SET seq = 3 WHERE seq = 7;
             UPDATE audit_events SET seq = 7 WHERE seq = 100;",
            3,
            Some("prev_hash"),
        ),
        (
            "an edited index column",
            5,
            "UPDATE audit_events SET user_name = 'mallory' WHERE seq = 2",
            2,
            Some("indexed columns"),
        ),
    ];
    for &(what, n, tampering, at, says) in cases {
        let (_dir, path, _) = tampered_log(n, tampering).await;
        let (seq, problem) = bad_seq(&path, &[]).unwrap();
        assert_eq!(seq, at, "{what}: {problem}");
        if let Some(says) = says {
            assert!(problem.contains(says), "{what}: {problem}");
        }
    }
}

#[tokio::test]
async fn inserted_records_are_reported() {
    // A forged record appended with a made-up hash.
    let (_dir, path, conn) = tampered_log(10, "").await;
    let last_hash: String = conn
        .query_row("SELECT hash FROM audit_events WHERE seq = 10", [], |r| r.get(0))
        .unwrap();
    conn.execute(
        "INSERT INTO audit_events (seq, ts, kind, payload, prev_hash, hash, user_name, target, grant_id, \
         session_id) SELECT 11, ts, kind, payload, ?1, ?2, user_name, target, grant_id, session_id \
         FROM audit_events WHERE seq = 10",
        params![last_hash, "ab".repeat(32)],
    )
    .unwrap();
    assert_eq!(bad_seq(&path, &[]).unwrap().0, 11);

    // A well-forged record slipped in at 5 (correct prev_hash and hash, later rows renumbered): the
    // record after it no longer links.
    let (_dir, path, conn) = tampered_log(
        10,
        "UPDATE audit_events SET seq = seq + 1000 WHERE seq >= 5;
         UPDATE audit_events SET seq = seq - 999 WHERE seq >= 1000;",
    )
    .await;
    let (ts, prev_hash): (String, String) = conn
        .query_row("SELECT ts, hash FROM audit_events WHERE seq = 4", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    let payload = r#"{"class":"read","decision":"allow","grant_id":"g_alice","params":null,"reason":null,"relations":[],"session_id":"s_1","sql":"SELECT 'nothing to see'","statement_id":99,"target":"shop","user":"alice"}"#;
    let mut prev = [0u8; 32];
    hex::decode_to_slice(&prev_hash, &mut prev).unwrap();
    let hash = hex::encode(record_hash(&prev, 5, &ts, "statement", payload));
    conn.execute(
        "INSERT INTO audit_events VALUES (5, ?1, 'statement', ?2, ?3, ?4, 'alice', 'shop', 'g_alice', 's_1')",
        params![ts, payload, prev_hash, hash],
    )
    .unwrap();
    let (seq, problem) = bad_seq(&path, &[]).unwrap();
    assert_eq!(seq, 6);
    assert!(
        problem.contains("prev_hash does not match the hash of record 5"),
        "{problem}"
    );
}

/// Issue 13: a statement's user and grant are searched through `audit_sessions`; a row removed
/// from it would hide the session's statements from those searches, so `verify` reports it.
#[tokio::test]
async fn a_statement_missing_from_audit_sessions_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = written_log(dir.path(), 3).await;
    assert_eq!(bad_seq(&path, &[]), None);
    Connection::open(&path)
        .unwrap()
        .execute("DELETE FROM audit_sessions", [])
        .unwrap();
    let (seq, problem) = bad_seq(&path, &[]).unwrap();
    assert_eq!(seq, 1);
    assert!(problem.contains("audit_sessions"), "{problem}");
}

#[tokio::test]
async fn an_edited_index_column_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = written_log(dir.path(), 5).await;
    Connection::open(&path)
        .unwrap()
        .execute("UPDATE audit_events SET user_name = 'mallory' WHERE seq = 2", [])
        .unwrap();
    let (seq, problem) = bad_seq(&path, &[]).unwrap();
    assert_eq!(seq, 2);
    assert!(problem.contains("indexed columns"), "{problem}");
}

#[tokio::test]
async fn truncation_and_full_rewrites_are_caught_only_against_an_anchored_head() {
    let dir = tempfile::tempdir().unwrap();
    let path = written_log(dir.path(), 10).await;
    let anchor = audit::head_of_file(&path).unwrap();
    let early_anchor = {
        let conn = Connection::open(&path).unwrap();
        let hash: String = conn
            .query_row("SELECT hash FROM audit_events WHERE seq = 4", [], |r| r.get(0))
            .unwrap();
        Head { seq: 4, hash }
    };
    assert_eq!(bad_seq(&path, &[anchor.clone(), early_anchor.clone()]), None);

    // Deleting the tail leaves a consistent chain: only the anchor tells.
    let conn = Connection::open(&path).unwrap();
    conn.execute("DELETE FROM audit_events WHERE seq >= 9", [])
        .unwrap();
    assert_eq!(bad_seq(&path, &[]), None, "the chain alone cannot see a cut tail");
    let (seq, problem) = bad_seq(&path, &[anchor]).unwrap();
    assert_eq!(seq, 10);
    assert!(problem.contains("truncated"), "{problem}");

    // Editing record 2 and recomputing every later hash: consistent again, but not with the anchor.
    conn.execute(
        "UPDATE audit_events SET payload = replace(payload, 'id = 2', 'id = 3') WHERE seq = 2",
        [],
    )
    .unwrap();
    let rows: Vec<(i64, String, String, String)> = conn
        .prepare("SELECT seq, ts, kind, payload FROM audit_events ORDER BY seq")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let mut prev = [0u8; 32];
    for (seq, ts, kind, payload) in rows {
        let h = record_hash(&prev, seq as u64, &ts, &kind, &payload);
        conn.execute(
            "UPDATE audit_events SET prev_hash = ?1, hash = ?2 WHERE seq = ?3",
            params![hex::encode(prev), hex::encode(h), seq],
        )
        .unwrap();
        prev = h;
    }
    assert_eq!(bad_seq(&path, &[]), None, "a full rewrite is self-consistent");
    let (seq, problem) = bad_seq(&path, &[early_anchor]).unwrap();
    assert_eq!(seq, 4);
    assert!(problem.contains("anchored head"), "{problem}");
}

// ---------------------------------------------------------------------------------------------
// Writer: durability, ordering, fail-closed, recovery.
// ---------------------------------------------------------------------------------------------

/// Whether record `seq` is visible to a brand-new connection (another process would see the same).
fn visible_elsewhere(path: &Path, seq: u64) -> bool {
    let conn = Connection::open(path).unwrap();
    conn.query_row(
        "SELECT count(*) FROM audit_events WHERE seq = ?1",
        [seq as i64],
        |r| r.get::<_, i64>(0),
    )
    .unwrap()
        == 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_returns_only_once_the_row_is_readable_from_another_connection() {
    for durability in [Durability::Fsync, Durability::Write] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.db");
        let (log, writer) = AuditLog::open_with(options(dir.path(), durability)).unwrap();
        assert_eq!(log.durability(), durability);
        for i in 1..=20u64 {
            log.record(vec![stmt("s_1", "alice", i, "SELECT 1", Decision::Allow)])
                .await
                .unwrap();
            assert!(
                visible_elsewhere(&path, i),
                "{durability:?}: record {i} not yet committed"
            );
        }
        writer.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_durability_acks_at_once_and_shutdown_flushes() {
    let (dir, log, writer) = open_log(Durability::Async);
    let ack = log
        .submit(
            (1..=1000)
                .map(|i| stmt("s_1", "alice", i, "SELECT 1", Decision::Allow))
                .collect(),
        )
        .unwrap();
    ack.await.unwrap();
    writer.shutdown().await;
    assert!(matches!(
        log.record(vec![stmt("s_1", "alice", 1001, "SELECT 1", Decision::Allow)])
            .await,
        Err(AuditError::Closed)
    ));
    assert_eq!(head_seq(dir.path()), 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_submitters_get_gapless_seqs_in_submission_order() {
    let (dir, log, writer) = open_log(Durability::Fsync);
    let per_task = 250u64;
    let mut tasks = Vec::new();
    for t in 0..8 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let session = format!("s_{t}");
            let mut acks = Vec::new();
            for i in 1..=per_task {
                acks.push(
                    log.submit(vec![stmt(&session, "alice", i, "SELECT 1", Decision::Allow)])
                        .unwrap(),
                );
                if i % 50 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            for ack in acks {
                ack.await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let total = 8 * per_task;
    let stats = log.stats();
    assert_eq!(stats.committed, total);
    assert!(stats.batches < total, "group commit: {stats:?}");
    assert_eq!(stats.queue_depth, 0);
    writer.shutdown().await;

    let conn = Connection::open(dir.path().join("audit.db")).unwrap();
    let rows: Vec<(i64, String)> = conn
        .prepare("SELECT seq, payload FROM audit_events ORDER BY seq")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let seqs: Vec<i64> = rows.iter().map(|r| r.0).collect();
    assert_eq!(seqs, (1..=total as i64).collect::<Vec<_>>(), "gapless");
    let mut last_id = std::collections::HashMap::new();
    for (seq, payload) in rows {
        let v: Value = serde_json::from_str(&payload).unwrap();
        let session = v["session_id"].as_str().unwrap().to_owned();
        let id = v["statement_id"].as_u64().unwrap();
        let prev = last_id.insert(session.clone(), id).unwrap_or(0);
        assert_eq!(id, prev + 1, "seq {seq}: {session} out of order");
    }
    assert!(audit::verify_file(&dir.path().join("audit.db"), &[]).unwrap().ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_instead_of_dropping() {
    let dir = tempfile::tempdir().unwrap();
    let (log, writer) = AuditLog::open_with(AuditOptions {
        queue_capacity: 8,
        ..options(dir.path(), Durability::Fsync)
    })
    .unwrap();
    log.record(vec![stmt("s_1", "alice", 1, "SELECT 1", Decision::Allow)])
        .await
        .unwrap();
    // Another connection holds the write lock: the writer waits (busy timeout), the queue fills.
    let blocker = Connection::open(dir.path().join("audit.db")).unwrap();
    blocker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    // Submit until the queue refuses: the writer may take a first batch off the queue before it
    // blocks (a race the test must not depend on), so the count that fills it is not fixed.
    let mut acks = Vec::new();
    let mut next = 2;
    let refused = loop {
        match log.submit(vec![stmt("s_1", "alice", next, "SELECT 1", Decision::Allow)]) {
            Ok(ack) => acks.push(ack),
            Err(e) => break e,
        }
        next += 1;
        assert!(
            next < 100,
            "the queue of 8 never filled while the writer was blocked"
        );
    };
    assert!(
        matches!(refused, AuditError::QueueFull { capacity: 8 }),
        "{refused:?}"
    );
    assert!(
        acks.len() >= 8,
        "at least the queue's capacity was accepted ({})",
        acks.len()
    );
    assert!(matches!(
        log.submit(
            (0..9)
                .map(|i| stmt("s_2", "bob", i, "SELECT 1", Decision::Allow))
                .collect()
        ),
        Err(AuditError::QueueFull { .. })
    ));
    assert!(log.stats().rejected >= 1);
    blocker.execute_batch("COMMIT").unwrap();
    for ack in acks {
        ack.await.unwrap();
    }
    assert_eq!(log.queue_depth(), 0);
    log.record(vec![stmt("s_1", "alice", next, "SELECT 1", Decision::Allow)])
        .await
        .unwrap();
    assert_eq!(log.head().seq, next, "the refused submission left no gap");
    writer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_database_write_fails_this_and_every_later_submission() {
    let (dir, log, writer) = open_log(Durability::Fsync);
    log.record(vec![stmt("s_1", "alice", 1, "SELECT 1", Decision::Allow)])
        .await
        .unwrap();
    Connection::open(dir.path().join("audit.db"))
        .unwrap()
        .execute_batch("DROP TABLE audit_events")
        .unwrap();
    let err = log
        .record(vec![stmt("s_1", "alice", 2, "SELECT 1", Decision::Allow)])
        .await
        .unwrap_err();
    assert!(matches!(err, AuditError::WriterFailed(_)), "{err}");
    assert!(log.stats().failed);
    let again = log.submit(vec![stmt("s_1", "alice", 3, "SELECT 1", Decision::Allow)]);
    assert!(matches!(again, Err(AuditError::WriterFailed(_))));
    writer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_jsonl_write_fails_closed_too() {
    if !Path::new("/dev/full").exists() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (log, writer) = AuditLog::open_with(AuditOptions {
        jsonl: Some(PathBuf::from("/dev/full")),
        ..options(dir.path(), Durability::Write)
    })
    .unwrap();
    let err = log
        .record(vec![stmt("s_1", "alice", 1, "SELECT 1", Decision::Allow)])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("/dev/full"), "{err}");
    // Refused at once during the retry backoff, or tried again after it and failed again.
    match log.submit(vec![stmt("s_1", "alice", 2, "SELECT 1", Decision::Allow)]) {
        Err(_) => {}
        Ok(ack) => assert!(
            ack.await.is_err(),
            "a record was acknowledged without its JSONL line"
        ),
    }
    writer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_is_checkpointed_into_the_database_while_writing_and_emptied_at_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    let (log, writer) = AuditLog::open_with(options(dir.path(), Durability::Write)).unwrap();
    let empty_size = std::fs::metadata(&db).unwrap().len();
    let per_submit = 10_000u64;
    let submits = (audit::CHECKPOINT_RECORDS as u64).div_ceil(per_submit) + 1;
    for s in 0..submits {
        let events = (0..per_submit)
            .map(|i| stmt("s_1", "alice", s * per_submit + i, "SELECT 1", Decision::Allow))
            .collect();
        log.record(events).await.unwrap();
    }
    // The checkpointer copied pages into the database file while the writer went on.
    let copied = common::eventually(std::time::Duration::from_secs(20), || {
        let db = db.clone();
        async move { std::fs::metadata(&db).unwrap().len() > empty_size + 1_000_000 }
    })
    .await;
    assert!(copied, "no checkpoint happened");
    assert!(log.verify(Vec::new()).await.unwrap().ok);
    writer.shutdown().await;
    let wal = std::fs::metadata(audit::sqlite::wal_path(&db))
        .map(|m| m.len())
        .unwrap_or(0);
    assert_eq!(wal, 0, "the final checkpoint empties the WAL");
    let report = audit::verify_file(&db, &[]).unwrap();
    assert!(report.ok);
    assert_eq!(report.records, submits * per_submit);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopening_continues_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = written_log(dir.path(), 3).await;
    let (log, writer) = AuditLog::open_with(options(dir.path(), Durability::Fsync)).unwrap();
    assert_eq!(log.head(), audit::head_of_file(&path).unwrap());
    log.record(vec![stmt("s_2", "bob", 1, "SELECT 2", Decision::Allow)])
        .await
        .unwrap();
    assert_eq!(log.head().seq, 4);
    assert!(log.verify(Vec::new()).await.unwrap().ok);
    writer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_the_database() {
    let (dir, log, writer) = open_log(Durability::Write);
    let token = "tbx_abcdefghijklmnopqrstuvwxyz234567";
    let AuditEvent::Statement(mut s) = stmt("s_1", "alice", 1, "", Decision::Allow) else {
        unreachable!()
    };
    s.sql = format!("ALTER ROLE app PASSWORD 'hunter2'; SELECT dblink_connect('password=s3cret'), '{token}'");
    s.params = Some(vec![Some("card 4111111111111111".into())]);
    log.record(vec![AuditEvent::Statement(s)]).await.unwrap();
    writer.shutdown().await;
    let bytes = std::fs::read(dir.path().join("audit.db")).unwrap();
    let wal = std::fs::read(dir.path().join("audit.db-wal")).unwrap_or_default();
    for secret in ["hunter2", "s3cret", token, "4111111111111111"] {
        let found = |b: &[u8]| b.windows(secret.len()).any(|w| w == secret.as_bytes());
        assert!(!found(&bytes) && !found(&wal), "{secret} was written");
    }
    let conn = Connection::open(dir.path().join("audit.db")).unwrap();
    let payload: String = conn
        .query_row("SELECT payload FROM audit_events", [], |r| r.get(0))
        .unwrap();
    assert!(payload.contains("PASSWORD '[REDACTED]'"), "{payload}");
    assert!(payload.contains("[redacted 21 bytes]"), "{payload}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_filter_and_paginate() {
    let (log, writer) = AuditLog::open_with(AuditOptions {
        db: None,
        ..options(Path::new("/nonexistent"), Durability::Fsync)
    })
    .unwrap();
    let mut events = Vec::new();
    for i in 1..=5 {
        events.push(stmt("s_a", "alice", i, "SELECT * FROM Orders", Decision::Allow));
    }
    events.push(stmt("s_a", "alice", 6, "DELETE FROM orders", Decision::Deny));
    events.push(stmt("s_b", "bob", 1, "SELECT 1", Decision::Allow));
    events.push(AuditEvent::SessionEnd(SessionEnd {
        bytes_from_client: 1,
        bytes_to_client: 2,
        duration_us: 3,
        ended_by: None,
        grant_id: "g_bob".into(),
        reason: "client_exit".into(),
        session_id: "s_b".into(),
        statements: 1,
        target: "shop".into(),
        user: "bob".into(),
    }));
    log.record(events).await.unwrap();
    let q = |f: AuditFilter| {
        let log = log.clone();
        async move { log.query(f).await.unwrap() }
    };
    let seqs = |p: &audit::Page| p.events.iter().map(|e| e.seq).collect::<Vec<_>>();
    let alice = q(AuditFilter {
        user: Some("alice".into()),
        ..Default::default()
    })
    .await;
    assert_eq!(seqs(&alice), vec![6, 5, 4, 3, 2, 1]);
    let denied = q(AuditFilter {
        decision: Some("deny".into()),
        ..Default::default()
    })
    .await;
    assert_eq!(seqs(&denied), vec![6]);
    assert_eq!(denied.events[0].event().unwrap().kind(), "statement");
    let contains = q(AuditFilter {
        contains: Some("ORDERS".into()),
        class: Some("read".into()),
        ..Default::default()
    })
    .await;
    assert_eq!(contains.events.len(), 5);
    let ends = q(AuditFilter {
        kind: Some("session_end".into()),
        session: Some("s_b".into()),
        ..Default::default()
    })
    .await;
    assert_eq!(seqs(&ends), vec![8]);
    let future = q(AuditFilter {
        since: Some(chrono::Utc::now() + chrono::Duration::hours(1)),
        ..Default::default()
    })
    .await;
    assert!(future.events.is_empty());

    // Pages of 3, newest first, then oldest first from a cursor.
    let mut all = Vec::new();
    let mut cursor = None;
    loop {
        let page = q(AuditFilter {
            cursor,
            limit: 3,
            ..Default::default()
        })
        .await;
        all.extend(seqs(&page));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(all, (1..=8).rev().collect::<Vec<_>>());
    let after = q(AuditFilter {
        cursor: Some(5),
        order: Order::Asc,
        ..Default::default()
    })
    .await;
    assert_eq!(seqs(&after), vec![6, 7, 8]);
    assert!(matches!(
        log.query(AuditFilter {
            kind: Some("nope".into()),
            ..Default::default()
        })
        .await,
        Err(AuditError::InvalidFilter { field: "kind", .. })
    ));
    writer.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// JSONL sink.
// ---------------------------------------------------------------------------------------------

/// Every JSONL line, oldest file first.
fn jsonl_lines(path: &Path) -> Vec<String> {
    let mut files: Vec<PathBuf> = (1..100)
        .map(|n| audit::jsonl::rotated_path(path, n))
        .filter(|p| p.exists())
        .collect();
    files.reverse();
    files.push(path.to_owned());
    files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// What the JSONL line of each DB record must be.
fn expected_lines(db: &Path) -> Vec<String> {
    let conn = Connection::open(db).unwrap();
    let rows = audit::sqlite::raw_records(&conn, 1, u64::MAX >> 1).unwrap();
    rows.iter()
        .map(|r| {
            let mut out = Vec::new();
            audit::jsonl::format_line(&mut out, r.seq, &r.ts, &r.kind, &r.payload, &r.prev_hash, &r.hash);
            String::from_utf8(out).unwrap().trim_end().to_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jsonl_lines_match_the_database_and_rotate_at_the_size_limit() {
    let dir = tempfile::tempdir().unwrap();
    let jsonl = dir.path().join("logs").join("audit.jsonl");
    let max = 4096u64;
    let (log, writer) = AuditLog::open_with(AuditOptions {
        jsonl: Some(jsonl.clone()),
        jsonl_max_bytes: max,
        jsonl_keep: 50,
        ..options(dir.path(), Durability::Fsync)
    })
    .unwrap();
    for batch in 0..10u64 {
        let events = (1..=20)
            .map(|i| {
                stmt(
                    "s_1",
                    "alice",
                    batch * 20 + i,
                    "SELECT * FROM orders",
                    Decision::Allow,
                )
            })
            .collect();
        log.record(events).await.unwrap();
    }
    writer.shutdown().await;
    let lines = jsonl_lines(&jsonl);
    assert_eq!(lines, expected_lines(&dir.path().join("audit.db")));
    assert_eq!(lines.len(), 200);
    assert!(audit::jsonl::rotated_path(&jsonl, 2).exists(), "rotated");
    for n in 1..50 {
        let p = audit::jsonl::rotated_path(&jsonl, n);
        if p.exists() {
            let len = std::fs::metadata(&p).unwrap().len();
            assert!(len <= max, "{} is {len} bytes", p.display());
            assert!(len + 400 > max, "rotated only when the next line would not fit");
        }
    }
    // A third party can re-check the chain from the JSONL alone.
    let mut prev = [0u8; 32];
    for line in &lines {
        let v: Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["prev_hash"], hex::encode(prev));
        let payload = serde_json::to_string(&v["payload"]).unwrap();
        let h = record_hash(
            &prev,
            v["seq"].as_u64().unwrap(),
            v["ts"].as_str().unwrap(),
            v["kind"].as_str().unwrap(),
            &payload,
        );
        assert_eq!(v["hash"], hex::encode(h));
        prev = h;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jsonl_catches_up_after_a_crash_between_the_two_sinks() {
    let dir = tempfile::tempdir().unwrap();
    let jsonl = dir.path().join("audit.jsonl");
    let opts = AuditOptions {
        jsonl: Some(jsonl.clone()),
        ..options(dir.path(), Durability::Write)
    };
    let (log, writer) = AuditLog::open_with(opts.clone()).unwrap();
    for i in 1..=10 {
        log.record(vec![stmt("s_1", "alice", i, "SELECT 1", Decision::Allow)])
            .await
            .unwrap();
    }
    writer.shutdown().await;
    // Keep 5 whole lines and half of the 6th, as if timebox died mid-write.
    let text = std::fs::read_to_string(&jsonl).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let torn = format!("{}\n{}", lines[..5].join("\n"), &lines[5][..lines[5].len() / 2]);
    std::fs::write(&jsonl, torn).unwrap();

    let (log, writer) = AuditLog::open_with(opts).unwrap();
    log.record(vec![stmt("s_1", "alice", 11, "SELECT 1", Decision::Allow)])
        .await
        .unwrap();
    writer.shutdown().await;
    assert_eq!(jsonl_lines(&jsonl), expected_lines(&dir.path().join("audit.db")));
    assert_eq!(jsonl_lines(&jsonl).len(), 11);
}

// ---------------------------------------------------------------------------------------------
// Admin API and CLI against a real instance.
// ---------------------------------------------------------------------------------------------

async fn instance() -> common::TestInstance {
    // The upstream is never contacted here: port 1 is fine.
    common::start_with_config(|dir| common::config_text(&common::Options::default(), dir, 1)).await
}

/// `GET`: status, JSON body (the test fails if it is not JSON) and text.
async fn get(base: &str, path: &str, token: Option<&str>) -> (StatusCode, Value, String) {
    let a = http::send(base, Method::GET, path, token, None)
        .await
        .expect_json();
    (a.status, a.json, a.text)
}

/// `POST`: status, JSON body (`Null` if it is not JSON) and text.
async fn post(base: &str, path: &str, token: &str, body: Value) -> (StatusCode, Value, String) {
    let a = http::post(base, path, token, body).await;
    (a.status, a.json, a.text)
}

fn seqs(page: &Value) -> Vec<u64> {
    page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grant_issue_and_revoke_are_audited_without_the_token() {
    let tb = instance().await;
    let base = tb.admin_url();
    let (status, issued, _) = post(
        &base,
        "/v1/grants",
        ADMIN_TOKEN,
        json!({"user": "alice", "target": "shop", "role": "read", "ttl": "30m", "reason": "incident 7"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let id = issued["id"].as_str().unwrap().to_owned();
    let token = issued["token"].as_str().unwrap().to_owned();
    let (status, _, _) = post(
        &base,
        &format!("/v1/grants/{id}/revoke"),
        ADMIN_TOKEN,
        json!({"reason": "done"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    let (status, page, text) = get(&base, &format!("/v1/audit?grant={id}"), Some(AUDITOR_TOKEN)).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let kinds: Vec<&str> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, vec!["grant_revoked", "grant_issued"]);
    let issued_event = &page["events"][1]["payload"];
    assert_eq!(issued_event["created_by"], "ops");
    assert_eq!(issued_event["reason"], "incident 7");
    assert!(!text.contains(&token), "the token must never be audited");
    assert_eq!(page["events"][0]["payload"]["revoked_by"], "ops");
    tb.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auditors_list_filter_and_paginate_others_are_refused() {
    let tb = instance().await;
    let base = tb.admin_url();
    let mut events: Vec<AuditEvent> = (1..=4)
        .map(|i| stmt("s_a", "alice", i, "SELECT * FROM orders", Decision::Allow))
        .collect();
    events.push(stmt("s_a", "alice", 5, "DELETE FROM orders", Decision::Deny));
    events.push(stmt("s_b", "bob", 1, "SELECT 1", Decision::Allow));
    tb.state.audit.record(events).await.unwrap();

    let (status, page, text) = get(&base, "/v1/audit?user=alice", Some(AUDITOR_TOKEN)).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(seqs(&page), vec![5, 4, 3, 2, 1]);
    assert_eq!(page["next_cursor"], Value::Null);
    let (_, page, _) = get(&base, "/v1/audit?decision=deny", Some(ADMIN_TOKEN)).await;
    assert_eq!(seqs(&page), vec![5]);
    assert_eq!(page["events"][0]["payload"]["sql"], "DELETE FROM orders");
    let (_, page, _) = get(
        &base,
        "/v1/audit?contains=orders&class=read&target=shop",
        Some(AUDITOR_TOKEN),
    )
    .await;
    assert_eq!(seqs(&page), vec![4, 3, 2, 1]);
    let (_, page, _) = get(
        &base,
        "/v1/audit?session=s_b&since=2000-01-01T00:00:00Z",
        Some(AUDITOR_TOKEN),
    )
    .await;
    assert_eq!(seqs(&page), vec![6]);

    // Pagination: limit 2 and the cursor visit every record once, newest first.
    let mut all = Vec::new();
    let mut path = "/v1/audit?limit=2".to_owned();
    loop {
        let (status, page, text) = get(&base, &path, Some(AUDITOR_TOKEN)).await;
        assert_eq!(status, StatusCode::OK, "{text}");
        assert!(seqs(&page).len() <= 2);
        all.extend(seqs(&page));
        match page["next_cursor"].as_u64() {
            Some(c) => path = format!("/v1/audit?limit=2&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(all, vec![6, 5, 4, 3, 2, 1]);

    // Everyone else: 403 (or 401 without a token); bad parameters: 400.
    for token in [REQUESTER_TOKEN, APPROVER_TOKEN] {
        for path in ["/v1/audit", "/v1/audit/verify", "/v1/audit/head"] {
            let (status, body, _) = get(&base, path, Some(token)).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
            assert_eq!(body["code"], "forbidden");
        }
    }
    let (status, _, _) = get(&base, "/v1/audit", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    for bad in [
        "/v1/audit?limit=1001",
        "/v1/audit?since=yesterday",
        "/v1/audit?kind=nope",
        "/v1/audit?usr=alice",
        "/v1/audit/verify?anchor=1:zz",
    ] {
        let (status, body, text) = get(&base, bad, Some(AUDITOR_TOKEN)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {text}");
        assert_eq!(body["code"], "bad_request");
    }
    tb.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_and_head_endpoints() {
    let tb = instance().await;
    let base = tb.admin_url();
    tb.state
        .audit
        .record(
            (1..=3)
                .map(|i| stmt("s_a", "alice", i, "SELECT 1", Decision::Allow))
                .collect(),
        )
        .await
        .unwrap();
    let (status, head, _) = get(&base, "/v1/audit/head", Some(AUDITOR_TOKEN)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(head["seq"], 3);
    let (status, report, text) = get(&base, "/v1/audit/verify", Some(AUDITOR_TOKEN)).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(report["ok"], true);
    assert_eq!(report["records"], 3);
    assert_eq!(report["head"], head);
    assert_eq!(report["first_bad"], Value::Null);
    let anchor = format!("{}:{}", head["seq"], head["hash"].as_str().unwrap());
    let (_, report, _) = get(
        &base,
        &format!("/v1/audit/verify?anchor={anchor}"),
        Some(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(report["ok"], true);
    let wrong = format!("2:{}", "ab".repeat(32));
    let (_, report, _) = get(
        &base,
        &format!("/v1/audit/verify?anchor={wrong}"),
        Some(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(report["ok"], false);
    assert_eq!(report["first_bad"]["seq"], 2);

    // Deleting the newest record behind timebox's back: the live head catches it.
    Connection::open(tb.audit_db())
        .unwrap()
        .execute("DELETE FROM audit_events WHERE seq = 3", [])
        .unwrap();
    let (_, report, _) = get(&base, "/v1/audit/verify", Some(AUDITOR_TOKEN)).await;
    assert_eq!(report["ok"], false);
    assert_eq!(report["first_bad"]["seq"], 3);
    tb.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuing_fails_closed_when_the_audit_log_fails() {
    let tb = instance().await;
    let base = tb.admin_url();
    Connection::open(tb.audit_db())
        .unwrap()
        .execute_batch("DROP TABLE audit_events")
        .unwrap();
    let (status, body, text) = post(
        &base,
        "/v1/grants",
        ADMIN_TOKEN,
        json!({"user": "alice", "target": "shop", "role": "read", "ttl": "30m", "reason": "x"}),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{text}");
    assert_eq!(body["code"], "audit_unavailable");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("was issued") && message.contains("withheld"),
        "{message}"
    );
    assert!(!text.contains("tbx_"), "no token without an audit record: {text}");
    tb.shutdown().await.unwrap();
}

/// Guards against (issue 10): an approval whose records the audit log refused answered with the
/// generic refusal while the grant's token stayed fetchable in memory. The approval and its grant are
/// one record batch; refused, the token is dropped and the answer says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approving_fails_closed_when_the_audit_log_fails() {
    let tb = instance().await;
    let base = tb.admin_url();
    let (status, request, text) = post(
        &base,
        "/v1/requests",
        REQUESTER_TOKEN,
        json!({"target": "shop", "role": "read", "ttl": "30m", "reason": "INC-9"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{text}");
    let id = request["id"].as_str().unwrap().to_owned();
    Connection::open(tb.audit_db())
        .unwrap()
        .execute_batch("DROP TABLE audit_events")
        .unwrap();
    let (status, body, text) = post(
        &base,
        &format!("/v1/requests/{id}/approve"),
        APPROVER_TOKEN,
        json!({"reason": "ok"}),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{text}");
    assert_eq!(body["code"], "audit_unavailable");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("was issued for request {id}")) && message.contains("withheld"),
        "{message}"
    );
    let (status, body, text) = post(
        &base,
        &format!("/v1/requests/{id}/token"),
        REQUESTER_TOKEN,
        json!({}),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "the token was dropped: {text}");
    assert_eq!(body["code"], "conflict");
    assert!(!text.contains("tbx_"), "no token without an audit record: {text}");
    tb.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_verify_db_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let path = written_log(dir.path(), 6).await;
    let db = path.to_str().unwrap();

    let o = timebox(&["audit", "verify", "--db", db], None).await;
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).starts_with("ok: 6 records"),
        "{}",
        describe(&o)
    );

    let o = timebox(&["audit", "head", "--db", db], None).await;
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    let head = String::from_utf8_lossy(&o.stdout).trim().to_owned();
    assert_eq!(Head::parse(&head).unwrap(), audit::head_of_file(&path).unwrap());

    let o = timebox(
        &["audit", "verify", "--db", db, "--expect-head", &head, "--json"],
        None,
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    let report: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["ok"], true);

    Connection::open(&path)
        .unwrap()
        .execute("DELETE FROM audit_events WHERE seq = 3", [])
        .unwrap();
    let o = timebox(&["audit", "verify", "--db", db], None).await;
    assert_eq!(o.status.code(), Some(1), "{}", describe(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).starts_with("FAILED at record 3: record 3 is missing"),
        "{}",
        describe(&o)
    );

    let missing = dir.path().join("missing.db");
    let o = timebox(&["audit", "verify", "--db", missing.to_str().unwrap()], None).await;
    assert_eq!(o.status.code(), Some(2), "{}", describe(&o));
    let o = timebox(&["audit", "verify", "--db", db, "--expect-head", "nope"], None).await;
    assert_eq!(o.status.code(), Some(2), "{}", describe(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_search_tail_verify_and_head_through_the_api() {
    let tb = instance().await;
    let url = tb.admin_url();
    tb.state
        .audit
        .record(vec![
            stmt("s_a", "alice", 1, "SELECT * FROM orders", Decision::Allow),
            stmt("s_a", "alice", 2, "DELETE FROM orders", Decision::Deny),
            stmt("s_b", "bob", 1, "SELECT 1", Decision::Allow),
        ])
        .await
        .unwrap();

    let o = timebox(
        &[
            "audit",
            "--admin-url",
            &url,
            "search",
            "--user",
            "alice",
            "--since",
            "1h",
        ],
        Some(AUDITOR_TOKEN),
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines[0].starts_with("SEQ"), "{text}");
    assert!(
        lines[1].contains("deny write: DELETE FROM orders — role read may not write"),
        "{text}"
    );

    let o = timebox(
        &[
            "audit",
            "--admin-url",
            &url,
            "search",
            "--decision",
            "deny",
            "--json",
        ],
        Some(AUDITOR_TOKEN),
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    let page: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(seqs(&page), vec![2]);

    let o = timebox(
        &["audit", "--admin-url", &url, "tail", "-n", "2", "--json"],
        Some(AUDITOR_TOKEN),
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    let tailed: Vec<u64> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(tailed, vec![2, 3], "oldest first");

    let o = timebox(&["audit", "--admin-url", &url, "verify"], Some(AUDITOR_TOKEN)).await;
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    let o = timebox(&["audit", "--admin-url", &url, "head"], Some(AUDITOR_TOKEN)).await;
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    assert_eq!(
        Head::parse(String::from_utf8_lossy(&o.stdout).trim()).unwrap(),
        tb.state.audit.head()
    );

    let o = timebox(&["audit", "--admin-url", &url, "search"], Some(REQUESTER_TOKEN)).await;
    assert_eq!(o.status.code(), Some(1), "{}", describe(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("forbidden"),
        "{}",
        describe(&o)
    );
    let o = timebox(&["audit", "--admin-url", &url, "verify"], Some(REQUESTER_TOKEN)).await;
    assert_eq!(o.status.code(), Some(2), "could not verify: {}", describe(&o));
    tb.shutdown().await.unwrap();
}

/// Regression (found by the e2e benchmark): under sustained one-record commits the WAL grew without
/// bound, because passive checkpoints on another connection never finish while the writer keeps
/// appending. The writer now truncates it past `WAL_LIMIT_BYTES`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_stays_bounded_under_sustained_small_commits() {
    let (dir, log, writer) = open_log(Durability::Write);
    let wal = dir.path().join("audit.db-wal");
    let mut largest = 0u64;
    for i in 0..12_000u64 {
        log.record(vec![stmt(
            "s_wal",
            "alice",
            i,
            "SELECT abalance FROM pgbench_accounts WHERE aid = 1",
            Decision::Allow,
        )])
        .await
        .unwrap();
        if i % 500 == 0 {
            largest = largest.max(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0));
        }
    }
    largest = largest.max(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0));
    assert!(
        largest <= audit::WAL_LIMIT_BYTES + 16 * 1024 * 1024,
        "WAL reached {largest} bytes"
    );
    writer.shutdown().await;
    let report = audit::verify_file(&dir.path().join("audit.db"), &[]).unwrap();
    assert!(report.ok && report.records == 12_000, "{report:?}");
}

/// Copies `audit.db` (with its WAL) and the journal directory: what a crash at this instant leaves.
fn snapshot(from: &Path, to: &Path) {
    for name in ["audit.db", "audit.db-wal"] {
        if from.join(name).exists() {
            std::fs::copy(from.join(name), to.join(name)).unwrap();
        }
    }
    let journal = to.join("audit.journal");
    std::fs::create_dir_all(&journal).unwrap();
    for entry in std::fs::read_dir(from.join("audit.journal")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), journal.join(entry.file_name())).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_records_the_index_had_not_reached_are_recovered_from_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let crashed = tempfile::tempdir().unwrap();
    let (log, writer) = AuditLog::open_with(options(dir.path(), Durability::Fsync)).unwrap();
    for i in 1..=5 {
        log.record(vec![stmt("s_1", "alice", i, "SELECT 1", Decision::Allow)])
            .await
            .unwrap();
    }
    // Another connection holds SQLite's write lock: the indexer cannot insert, the journal goes on.
    let blocker = Connection::open(dir.path().join("audit.db")).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    for i in 6..=40 {
        log.submit(vec![select_n(i)]).unwrap().await.unwrap();
    }
    assert_eq!(log.head().seq, 40, "acknowledged (fsync'd to the journal)");
    snapshot(dir.path(), crashed.path());
    let indexed_at_crash: i64 = Connection::open(crashed.path().join("audit.db"))
        .unwrap()
        .query_row("SELECT count(*) FROM audit_events", [], |r| r.get(0))
        .unwrap();
    assert!(
        indexed_at_crash < 40,
        "the crash copy lacks indexed records ({indexed_at_crash})"
    );
    blocker.execute_batch("ROLLBACK").unwrap();
    writer.shutdown().await;

    // A read-only copy (an auditor's): checked, journal included, and left untouched.
    let read_only = tempfile::tempdir().unwrap();
    snapshot(crashed.path(), read_only.path());
    let ro_db = read_only.path().join("audit.db");
    let mut perms = std::fs::metadata(&ro_db).unwrap().permissions();
    perms.set_readonly(true);
    std::fs::set_permissions(&ro_db, perms).unwrap();
    let report = audit::verify_file(&ro_db, &[log.head()]).unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!((report.records, &report.head), (40, &log.head()));
    assert_eq!(audit::head_of_file(&ro_db).unwrap(), log.head());
    let rewritten = Head {
        seq: 40,
        hash: "ab".repeat(32),
    };
    let report = audit::verify_file(&ro_db, &[rewritten]).unwrap();
    assert_eq!(report.first_bad.map(|b| b.seq), Some(40));
    let rows: i64 = Connection::open(&ro_db)
        .unwrap()
        .query_row("SELECT count(*) FROM audit_events", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, indexed_at_crash, "a read-only database is not written");
    for entry in std::fs::read_dir(read_only.path().join("audit.journal")).unwrap() {
        let seg = entry.unwrap().path();
        if seg.extension().is_some_and(|x| x == "jsonl") {
            let text = std::fs::read_to_string(&seg).unwrap();
            std::fs::write(&seg, text.replace("SELECT 39", "SELECT 93")).unwrap();
        }
    }
    let report = audit::verify_file(&ro_db, &[]).unwrap();
    let bad = report.first_bad.expect("the edited journal line is reported");
    assert_eq!(bad.seq, 39);
    assert!(bad.problem.contains("does not match its hash"), "{}", bad.problem);

    // The offline verifier indexes the journal's records (checked against the chain) first.
    let report = audit::verify_file(&crashed.path().join("audit.db"), &[]).unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!(report.records, 40);
    assert_eq!(report.head, log.head(), "the same chain as the live log");
    // And a log opened on the crash copy continues after record 40.
    let (log2, writer2) = AuditLog::open_with(options(crashed.path(), Durability::Fsync)).unwrap();
    assert_eq!(log2.head().seq, 40);
    log2.record(vec![stmt("s_1", "alice", 41, "SELECT 41", Decision::Allow)])
        .await
        .unwrap();
    writer2.shutdown().await;
    assert!(
        audit::verify_file(&crashed.path().join("audit.db"), &[])
            .unwrap()
            .ok
    );

    // An edited journal line is caught, not indexed.
    let again = tempfile::tempdir().unwrap();
    snapshot(crashed.path(), again.path());
    let (log3, writer3) = AuditLog::open_with(options(again.path(), Durability::Write)).unwrap();
    let blocker = Connection::open(again.path().join("audit.db")).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    log3.submit(vec![stmt("s_1", "alice", 42, "SELECT 42", Decision::Allow)])
        .unwrap()
        .await
        .unwrap();
    let tampered = tempfile::tempdir().unwrap();
    snapshot(again.path(), tampered.path());
    blocker.execute_batch("ROLLBACK").unwrap();
    writer3.shutdown().await;
    let segments: Vec<_> = std::fs::read_dir(tampered.path().join("audit.journal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    for seg in segments {
        let text = std::fs::read_to_string(&seg).unwrap();
        std::fs::write(&seg, text.replace("SELECT 42", "DROP TABLE x")).unwrap();
    }
    let report = audit::verify_file(&tampered.path().join("audit.db"), &[]).unwrap();
    assert!(!report.ok);
    let bad = report.first_bad.unwrap();
    assert_eq!(bad.seq, 42);
    assert!(bad.problem.contains("does not match its hash"), "{}", bad.problem);
    let err = AuditLog::open_with(options(tampered.path(), Durability::Write)).unwrap_err();
    assert!(matches!(err, AuditError::Corrupt { seq: 42, .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_segments_rotate_and_are_removed_once_indexed_durably() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(dir.path(), Durability::Write);
    opts.segment_bytes = 4096;
    let (log, writer) = AuditLog::open_with(opts).unwrap();
    let journal = dir.path().join("audit.journal");
    let count = || {
        std::fs::read_dir(&journal)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "jsonl")
            })
            .count()
    };
    let mut most = 0;
    for i in 1..=300 {
        log.record(vec![select_n(i)]).await.unwrap();
        most = most.max(count());
    }
    // ~300 records of ~500 bytes in 4 KiB segments: dozens were written, few are ever kept.
    assert!(most >= 2, "segments rotated ({most})");
    assert!(
        most <= 4,
        "spent segments are removed while writing (at most {most} at once)"
    );
    writer.shutdown().await;
    assert_eq!(count(), 0, "a clean stop leaves no journal");
    assert!(audit::verify_file(&dir.path().join("audit.db"), &[]).unwrap().ok);
    assert_eq!(head_seq(dir.path()), 300);
}

/// The indexer gathers records for up to `INDEX_INTERVAL` per SQLite transaction: a relay that
/// submits one record at a time and waits for each ack must not cost a commit (whole table and
/// index pages in the WAL) per record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_index_commits_many_records_per_transaction() {
    let (dir, log, writer) = open_log(Durability::Write);
    let n = 2000u64;
    for i in 1..=n {
        log.submit(vec![select_n(i)]).unwrap().await.unwrap();
    }
    log.wait_indexed().await.unwrap();
    let page = log.query(AuditFilter::default()).await.unwrap();
    assert!(
        !page.events.is_empty(),
        "a waiting query sees the records at once"
    );
    let wal = std::fs::metadata(dir.path().join("audit.db-wal")).unwrap().len();
    let per_record = wal / n;
    // A commit per record writes ~5 pages (20 KiB) per record; batched, about the record itself.
    assert!(per_record < 4096, "{per_record} bytes of WAL per record");
    writer.shutdown().await;
    assert_eq!(head_seq(dir.path()), n);
}
