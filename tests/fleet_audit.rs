//! Central audit and retention (issue 11 items 6 and 7): timebox instances on one PostgreSQL store
//! (a fresh database of the throwaway cluster) ship their audit records to its
//! `timebox.audit_records`; `GET /v1/audit` and `audit verify` on any instance answer for the
//! whole fleet; an edit of a central row is reported with its instance and seq; the shipper
//! resumes after a store outage without duplicates or gaps; retention drops old partitions and
//! local rows and verify still passes from the anchor.

mod common;

use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;
use timebox::clock::Clock;

use common::fleet::session;
use common::http::call;
use common::{Options, StoreDatabase, TestInstance, AUDITOR_TOKEN};

/// Generous bound for shipping on a loaded 2-core machine (the shipper polls every 500 ms).
const SHIPPED: Duration = Duration::from_secs(60);

async fn get(inst: &TestInstance, path: &str) -> Value {
    let (status, body) = call(&inst.admin_url(), Method::GET, path, AUDITOR_TOKEN, None).await;
    assert_eq!(status, StatusCode::OK, "{path}: {body}");
    body
}

/// Instance `name` on the store (reconcile far off: this file is not about grant changes).
async fn instance(db: &StoreDatabase, name: &str, opts: Options) -> TestInstance {
    common::fleet::instance_on(db, name, &common::fleet::timings("60s", "10m"), opts).await
}

/// Instance `tb-a` on the store keeping one day of audit records, on `clock`.
async fn retaining_instance(db: &StoreDatabase, clock: &Arc<timebox::clock::ManualClock>) -> TestInstance {
    let opts = Options {
        clock: Some(clock.clone()),
        audit_extra: "retain = \"1d\"".into(),
        ..Options::default()
    };
    instance(db, "tb-a", opts).await
}

/// One retention pass on `inst` keeping a day, at `clock`'s now.
async fn retain_one_day(
    inst: &TestInstance,
    clock: &timebox::clock::ManualClock,
) -> timebox::audit::retention::RetentionOutcome {
    timebox::audit::retention::run_once(
        &inst.state.audit,
        inst.state.central_audit.as_deref(),
        Duration::from_secs(86_400),
        clock.now(),
    )
    .await
    .unwrap()
}

async fn issue_on(inst: &TestInstance, user: &str) -> String {
    common::fleet::issue_read(inst, user, "30m", "audit test").await.1
}

/// (count, distinct seqs, min seq, max seq) of `instance`'s rows in the central table.
fn central_rows(db: &StoreDatabase, instance: &str) -> (i64, i64, i64, i64) {
    let out = db.psql(&format!(
        "SELECT count(*), count(DISTINCT seq), coalesce(min(seq), 0), coalesce(max(seq), 0) \
         FROM timebox.audit_records WHERE instance = '{instance}'"
    ));
    let nums: Vec<i64> = out
        .trim()
        .split('|')
        .map(|n| n.trim().parse().unwrap_or_else(|_| panic!("{out}")))
        .collect();
    (nums[0], nums[1], nums[2], nums[3])
}

/// Waits until the central table holds every record of `inst` up to its current head.
async fn all_shipped(db: &Arc<StoreDatabase>, inst: &TestInstance, name: &str) -> bool {
    let head = inst.state.audit.head().seq as i64;
    let name = name.to_owned();
    common::eventually(SHIPPED, || {
        let db = db.clone();
        let name = name.clone();
        async move {
            tokio::task::spawn_blocking(move || central_rows(&db, &name).3 >= head)
                .await
                .unwrap()
        }
    })
    .await
}

fn statements_with(page: &Value, marker: &str) -> Vec<(String, u64)> {
    page["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["kind"] == "statement" && r["payload"]["sql"].as_str().unwrap_or("").contains(marker))
        .map(|r| {
            (
                r["instance"].as_str().unwrap_or("").to_owned(),
                r["seq"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_through_a_and_b_are_in_the_fleet_wide_audit_and_an_edited_row_is_reported() {
    let db = Arc::new(StoreDatabase::create_async().await);
    let a = instance(&db, "tb-a", Options::default()).await;
    let b = instance(&db, "tb-b", Options::default()).await;
    let token_a = issue_on(&a, "alice").await;
    let token_b = issue_on(&b, "bob").await;
    session(&a, "alice", &token_a)
        .await
        .simple_query("SELECT 1 AS via_tb_a")
        .await
        .unwrap();
    session(&b, "bob", &token_b)
        .await
        .simple_query("SELECT 2 AS via_tb_b")
        .await
        .unwrap();

    // A answers for both instances: each record carries its instance.
    let both = common::eventually(SHIPPED, || async {
        let page = get(&a, "/v1/audit?kind=statement&contains=via_tb_").await;
        let mut found: Vec<String> = statements_with(&page, "via_tb_")
            .into_iter()
            .map(|(i, _)| i)
            .collect();
        found.sort();
        found == ["tb-a", "tb-b"]
    })
    .await;
    assert!(both, "{}", get(&a, "/v1/audit?kind=statement").await);
    let only_b = get(&a, "/v1/audit?kind=statement&instance=tb-b").await;
    let b_statements = statements_with(&only_b, "via_tb_");
    assert_eq!(b_statements.len(), 1, "{only_b}");
    assert_eq!(b_statements[0].0, "tb-b");
    assert!(
        only_b["events"][0]["cursor"].is_u64(),
        "fleet-wide records carry a cursor: {only_b}"
    );

    let report = get(&a, "/v1/audit/verify").await;
    assert_eq!(report["ok"], true, "{report}");
    let names: Vec<&str> = report["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["instance"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["tb-a", "tb-b"], "{report}");

    // The store's superuser edits B's statement in the central table: A's verify names B and the
    // seq, through the API and the CLI.
    let seq = b_statements[0].1;
    db.psql(&format!(
        "UPDATE timebox.audit_records SET payload = replace(payload, 'via_tb_b', 'via_tb_x') \
         WHERE instance = 'tb-b' AND seq = {seq}"
    ));
    let report = get(&a, "/v1/audit/verify").await;
    assert_eq!(report["ok"], false, "{report}");
    assert_eq!(report["first_bad"]["instance"], "tb-b", "{report}");
    assert_eq!(report["first_bad"]["seq"], seq, "{report}");
    assert!(
        report["first_bad"]["problem"]
            .as_str()
            .unwrap()
            .contains("edited"),
        "{report}"
    );
    let out = common::cli::timebox_at(&["audit", "verify"], Some(AUDITOR_TOKEN), Some(&a.admin_url())).await;
    let (code, stdout, _) = common::cli::outcome(&out);
    assert_eq!(code, Some(1), "{}", common::cli::describe(&out));
    assert!(
        stdout.starts_with(&format!("FAILED at instance tb-b record {seq}: ")),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipper_resumes_after_a_store_outage_without_duplicates_or_gaps() {
    let db = Arc::new(StoreDatabase::create_async().await);
    let a = instance(&db, "tb-a", Options::default()).await;
    let token = issue_on(&a, "alice").await;
    let client = session(&a, "alice", &token).await;
    for i in 0..5 {
        client
            .simple_query(&format!("SELECT {i} AS before_outage"))
            .await
            .unwrap();
    }
    assert!(all_shipped(&db, &a, "tb-a").await, "shipped before the outage");

    // The store goes away: no new connection to its database, and the open ones are cut.
    let cluster = common::cluster::shared_cluster();
    let name = db.database.clone();
    let set_allowed = move |allowed: bool| {
        let sql = if allowed {
            format!("ALTER DATABASE {name} WITH ALLOW_CONNECTIONS true")
        } else {
            format!(
                "ALTER DATABASE {name} WITH ALLOW_CONNECTIONS false;\n\
                 SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = '{name}'"
            )
        };
        cluster.psql("postgres", &sql).unwrap_or_else(|e| panic!("{e}"));
    };
    let down = set_allowed.clone();
    tokio::task::spawn_blocking(move || down(false)).await.unwrap();
    // The live session goes on, audited locally, unslowed by the absent store.
    for i in 0..20 {
        client
            .simple_query(&format!("SELECT {i} AS during_outage"))
            .await
            .unwrap();
    }
    let metrics = a.state.proxy.metrics.clone();
    let erred = common::eventually(SHIPPED, || {
        let metrics = metrics.clone();
        async move { metrics.audit_ship.errors_total.get() > 0 && metrics.audit_ship.lag_records.get() > 0 }
    })
    .await;
    assert!(erred, "shipping failed and the lag grew while the store was away");

    tokio::task::spawn_blocking(move || set_allowed(true))
        .await
        .unwrap();
    client.simple_query("SELECT 1 AS after_outage").await.unwrap();
    let head = a.state.audit.head().seq as i64;
    assert!(all_shipped(&db, &a, "tb-a").await, "shipping resumed");
    let (count, distinct, min, max) = central_rows(&db, "tb-a");
    assert_eq!((count, distinct, min), (max, max, 1), "no duplicate and no gap");
    assert!(max >= head, "everything up to the head was shipped");

    // Shipping the same records again changes nothing (ON CONFLICT DO NOTHING).
    let rows = {
        let path = a.state.audit.db_path().unwrap().to_owned();
        tokio::task::spawn_blocking(move || {
            let conn = timebox::audit::sqlite::open_reader(&path).unwrap();
            timebox::audit::sqlite::ship_rows(&conn, 1, 10).unwrap()
        })
        .await
        .unwrap()
    };
    let central = a.state.central_audit.as_ref().unwrap();
    assert_eq!(central.store().ship("tb-a", &rows).await.unwrap(), 0);
    assert_eq!(central_rows(&db, "tb-a").0, count);

    let report = get(&a, "/v1/audit/verify").await;
    assert_eq!(report["ok"], true, "{report}");
    let lag = common::eventually(SHIPPED, || {
        let metrics = metrics.clone();
        async move { metrics.audit_ship.lag_records.get() == 0 }
    })
    .await;
    assert!(lag, "the lag is back to 0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_drops_old_partitions_and_local_rows_and_verify_passes_from_the_anchor() {
    let db = Arc::new(StoreDatabase::create_async().await);
    let start = chrono::Utc::now() - chrono::Duration::days(3);
    let clock = Arc::new(timebox::clock::ManualClock::new(start));
    let a = retaining_instance(&db, &clock).await;
    // Three days ago: a grant and statements.
    let token = issue_on(&a, "alice").await;
    let client = session(&a, "alice", &token).await;
    for i in 0..5 {
        client
            .simple_query(&format!("SELECT {i} AS long_ago"))
            .await
            .unwrap();
    }
    drop(client);
    assert!(all_shipped(&db, &a, "tb-a").await);
    let old_head = a.state.audit.head();

    // Today: another grant.
    clock.advance(chrono::Duration::days(3));
    issue_on(&a, "bob").await;
    assert!(all_shipped(&db, &a, "tb-a").await);

    let done = retain_one_day(&a, &clock).await;
    let old_day = timebox::store::postgres::audit::partition_name(start.date_naive());
    assert!(done.dropped_partitions.contains(&old_day), "{done:?}");
    assert!(done.pruned_local > 0, "{done:?}");
    let cut = chrono::Utc::now() - chrono::Duration::days(1);
    let old_rows = db.psql(&format!(
        "SELECT count(*) FROM timebox.audit_records WHERE ts < '{}'",
        cut.to_rfc3339()
    ));
    assert_eq!(old_rows.trim(), "0", "no central record older than the cut");
    let anchor = db.psql("SELECT seq FROM timebox.audit_anchors WHERE instance = 'tb-a'");
    let anchor: u64 = anchor.trim().parse().unwrap();
    // Everything up to the old head is three days old (the session's end may be too).
    assert!(anchor >= old_head.seq, "anchor {anchor}, old head {old_head}");

    // The local index lost its old rows too, and both chains verify from their anchors.
    let local = a.state.audit.verify(vec![]).await.unwrap();
    assert!(local.ok, "{local:?}");
    assert_eq!(local.anchor.as_ref().map(|h| h.seq), Some(anchor), "{local:?}");
    let page = a
        .state
        .audit
        .query(timebox::audit::AuditFilter {
            order: timebox::audit::Order::Asc,
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page.events[0].seq, anchor + 1, "{page:?}");
    let report = get(&a, "/v1/audit/verify").await;
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["instances"][0]["anchor"]["seq"], anchor, "{report}");

    // The run is itself on the record, fleet-wide.
    let runs = get(&a, "/v1/audit?kind=audit_retention").await;
    let events = runs["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{runs}");
    assert_eq!(events[0]["instance"], "tb-a");
    assert!(events[0]["payload"]["dropped_partitions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p == old_day.as_str()));
}

/// Bytes of the files under `dir` (recursively).
fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| {
                    let meta = e.metadata().unwrap();
                    if meta.is_dir() {
                        dir_bytes(&e.path())
                    } else {
                        meta.len()
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

/// Pages of `audit.db` in use (the file keeps its size after a DELETE; freed pages are reused).
fn sqlite_used_bytes(db: &std::path::Path) -> u64 {
    let conn = rusqlite::Connection::open(db).unwrap();
    let q = |p: &str| -> u64 {
        conn.query_row(&format!("PRAGMA {p}"), [], |r| r.get::<_, i64>(0))
            .unwrap() as u64
    };
    (q("page_count") - q("freelist_count")) * q("page_size")
}

/// The measurement behind benches/RESULTS.md's audit sizing rows: `N` statements (a `statement`
/// and a `statement_outcome` record each, as the proxy writes them) through one instance on a
/// PostgreSQL store, bytes per statement in the local journal + index and in the central table,
/// then again after retention removed them. Run with
/// `cargo test --test fleet_audit -- --ignored --nocapture audit_bytes_per_statement`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a test: prints bytes per statement"]
async fn audit_bytes_per_statement() {
    use timebox::audit::{AuditEvent, Decision, Statement, StatementOutcome};
    const N: u64 = 10_000;
    let db = Arc::new(StoreDatabase::create_async().await);
    let clock = Arc::new(timebox::clock::ManualClock::new(
        chrono::Utc::now() - chrono::Duration::days(3),
    ));
    let a = retaining_instance(&db, &clock).await;
    let audit_dir = a.dir.path().join("audit");
    let local_before = dir_bytes(&audit_dir);
    let central_bytes = || {
        db.psql(
            "SELECT coalesce(sum(pg_total_relation_size(inhrelid)), 0) FROM pg_inherits \
             WHERE inhparent = 'timebox.audit_records'::regclass",
        )
        .trim()
        .parse::<u64>()
        .unwrap()
    };
    let central_empty = central_bytes();
    for chunk in 0..N / 500 {
        let mut events = Vec::new();
        for i in chunk * 500..(chunk + 1) * 500 {
            events.push(AuditEvent::Statement(Statement {
                class: "read".into(),
                decision: Decision::Allow,
                grant_id: "g_0123456789abcdef".into(),
                params: None,
                reason: None,
                relations: vec!["public.orders".into()],
                session_id: "s_0123456789abcdef".into(),
                sql: format!(
                    "SELECT id, status, total FROM orders WHERE customer_id = {i} ORDER BY id DESC LIMIT 20"
                ),
                sql_bytes: None,
                sql_sha256: None,
                sql_truncated: false,
                statement_id: i,
                target: "shop".into(),
                user: "alice".into(),
            }));
            events.push(AuditEvent::StatementOutcome(StatementOutcome {
                command_tag: Some("SELECT 20".into()),
                duration_us: 1234,
                rows: Some(20),
                session_id: "s_0123456789abcdef".into(),
                sqlstate: None,
                statement_id: i,
                returned: None,
            }));
        }
        a.state.audit.record(events).await.unwrap();
    }
    assert!(all_shipped(&db, &a, "tb-a").await);
    let index = audit_dir.join("audit.db");
    let parts = || {
        let len = |p: std::path::PathBuf| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        format!(
            "audit.db {} B, audit.db-wal {} B, audit.journal/ {} B",
            len(index.clone()),
            len(audit_dir.join("audit.db-wal")),
            dir_bytes(&audit_dir.join("audit.journal"))
        )
    };
    println!("local files: {}", parts());
    let local = dir_bytes(&audit_dir) - local_before;
    let local_used = sqlite_used_bytes(&index);
    let central = central_bytes() - central_empty;
    println!(
        "{N} statements: local files {local} B ({:.0} B/statement; index pages in use {:.0} B/statement), \
         central table {central} B ({:.0} B/statement)",
        local as f64 / N as f64,
        local_used as f64 / N as f64,
        central as f64 / N as f64
    );
    clock.advance(chrono::Duration::days(3));
    let done = retain_one_day(&a, &clock).await;
    println!(
        "after retention ({} local rows pruned, partitions {:?}): local files {} B (index pages in use {} B), \
         central table {} B",
        done.pruned_local,
        done.dropped_partitions,
        dir_bytes(&audit_dir),
        sqlite_used_bytes(&index),
        central_bytes()
    );
    println!("local files after retention: {}", parts());
}
