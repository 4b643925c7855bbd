//! Masked roles' batches (issue 15, s7) through the real proxy, against a real PostgreSQL: when
//! timebox refuses a result's rows (or a quota stops it) in an extended-protocol batch, nothing
//! later in the batch takes effect and what ran before it rolls back with the batch, as after any
//! error (implicit transaction and transaction block alike); a Query string that would run a
//! write after rows is refused before it runs; batches of reads that are fine lose nothing; roles
//! without masks get the upstream's bytes. And the catalog freshness check of a masked role's
//! statement never delays a cut (s7).

mod common;

use std::time::Duration;

use bytes::BytesMut;
use common::cluster::{shared_cluster, unique_name};
use common::frames::{answer, bind, describe, execute, parse, query, read_to_ready, send, sync};
use common::masking::{catalog_lock, start, start_with};
use common::pg::{audit_records, connect, db_error, scalar};
use common::raw;
use tokio::net::TcpStream;

/// Parse, Bind and Execute of `sql` (unnamed), without Describe.
fn run(sql: &str) -> [BytesMut; 3] {
    [parse("", sql), bind("", ""), execute("")]
}

/// Parse, Bind, Describe (portal) and Execute of `sql`.
fn run_described(sql: &str) -> [BytesMut; 4] {
    [parse("", sql), bind("", ""), describe(b'P', ""), execute("")]
}

/// A superuser connection to `shop` on the shared cluster, not through timebox.
async fn superuser() -> tokio_postgres::Client {
    let c = shared_cluster();
    connect(&c.conn_string(c.superuser(), Some(c.superuser_password()), "shop")).await
}

/// Rows of `customers` whose name is `name` (read directly).
async fn named(name: &str) -> String {
    scalar(
        &superuser().await,
        &format!("SELECT count(*) FROM public.customers WHERE name = '{name}'"),
    )
    .await
}

/// A raw session of `role` (after one statement, so its catalog copy is read and confirmed).
async fn masked_session(inst: &common::TestInstance, role: &str) -> (TcpStream, BytesMut) {
    let (_, token) = inst.grant("alice", role, "10m").await;
    let (mut s, mut buf) = raw::login(inst.proxy_addr, "alice", &token).await;
    send(&mut s, &[query("SELECT 1")]).await;
    answer(&mut s, &mut buf).await;
    (s, buf)
}

/// Regression (s7, `repro_refusal_mid_pipeline_keeps_running_the_batch`): the rows of an Execute
/// never described are refused (42501); the UPDATE after it in the same batch used to run and
/// commit while the client, like after any error, got no answer for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_after_a_refused_result_in_a_batch_runs() {
    let _shared = catalog_lock().read().await;
    let inst = start().await;
    let (mut s, mut buf) = masked_session(&inst, "support_write").await;
    let piped = unique_name("piped");
    let mut batch = run("SELECT email FROM customers").to_vec();
    batch.extend(run(&format!(
        "UPDATE customers SET name = '{piped}' WHERE id = 2"
    )));
    batch.push(sync());
    send(&mut s, &batch).await;
    let r = answer(&mut s, &mut buf).await;
    let error_at = r.find("E:").unwrap_or_else(|| panic!("an error: {r}"));
    assert!(r[error_at..].contains("42501"), "{r}");
    assert!(
        !r[error_at..].contains("C:UPDATE"),
        "replies after the error: {r}"
    );
    assert!(r.ends_with("Z:I "), "{r}");
    assert_eq!(
        named(&piped).await,
        "0",
        "the batch's write after the refusal ran"
    );
    // The session goes on.
    send(&mut s, &[query("SELECT name FROM customers WHERE id = 1")]).await;
    assert!(answer(&mut s, &mut buf).await.contains("D:"));
}

/// Regression (s7): a write earlier in the batch than the refused result rolls back with it, as
/// after any error in a batch (timebox fails the batch upstream too: its abort marker).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_before_the_refused_result_rolls_back_with_its_batch() {
    let _shared = catalog_lock().read().await;
    let inst = start().await;
    let (mut s, mut buf) = masked_session(&inst, "support_write").await;
    let early = unique_name("early");
    let mut batch = run(&format!("UPDATE customers SET name = '{early}' WHERE id = 2")).to_vec();
    batch.extend(run("SELECT email FROM customers"));
    batch.push(sync());
    send(&mut s, &batch).await;
    let r = answer(&mut s, &mut buf).await;
    assert!(r.contains("C:UPDATE 1"), "{r}");
    assert!(r.contains("42501"), "{r}");
    assert!(
        !r.contains("syntax error"),
        "the marker's own error is not the client's: {r}"
    );
    assert!(r.ends_with("Z:I "), "{r}");
    assert_eq!(
        named(&early).await,
        "0",
        "the batch's earlier write was committed"
    );
}

/// Regression (s7): inside a transaction block the rest of the batch does not run either, and
/// the block is left aborted, as PostgreSQL leaves it after an error (COMMIT rolls back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_result_in_a_transaction_block_aborts_it() {
    let _shared = catalog_lock().read().await;
    let inst = start().await;
    let (mut s, mut buf) = masked_session(&inst, "support_write").await;
    send(&mut s, &[query("BEGIN")]).await;
    assert!(answer(&mut s, &mut buf).await.ends_with("Z:T "));
    let (before, after) = (unique_name("before"), unique_name("after"));
    let mut batch = run(&format!("UPDATE customers SET name = '{before}' WHERE id = 2")).to_vec();
    batch.extend(run("SELECT email FROM customers"));
    batch.extend(run(&format!(
        "UPDATE customers SET name = '{after}' WHERE id = 1"
    )));
    batch.push(sync());
    send(&mut s, &batch).await;
    let r = answer(&mut s, &mut buf).await;
    assert!(r.contains("42501"), "{r}");
    assert_eq!(
        r.matches("C:UPDATE").count(),
        1,
        "only the UPDATE before the refusal: {r}"
    );
    assert!(r.ends_with("Z:E "), "the transaction block is aborted: {r}");
    send(&mut s, &[query("SELECT 1")]).await;
    assert!(answer(&mut s, &mut buf).await.contains("25P02"));
    send(&mut s, &[query("COMMIT")]).await;
    let commit = answer(&mut s, &mut buf).await;
    assert!(
        commit.contains("C:ROLLBACK") && commit.ends_with("Z:I "),
        "{commit}"
    );
    assert_eq!(named(&before).await, "0");
    assert_eq!(named(&after).await, "0");
}

/// Regression (s7): a masked role's Query string that would run a write after a statement that
/// may return rows is refused before it runs (PostgreSQL runs a string to its end, whatever
/// timebox does with the rows); reads after rows, and writes before them, are fine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_string_writing_after_rows_is_refused_before_it_runs() {
    let _shared = catalog_lock().read().await;
    let inst = start().await;
    let client = common::masking::session(&inst, "support_write").await;
    let piped = unique_name("simple");
    let e = client
        .simple_query(&format!(
            "SELECT email FROM customers; UPDATE customers SET name = '{piped}' WHERE id = 2"
        ))
        .await
        .unwrap_err();
    let (code, message) = db_error(&e);
    assert_eq!(code, "42501", "{message}");
    assert!(message.contains("runs UPDATE after SELECT"), "{message}");
    let hint = e
        .as_db_error()
        .and_then(|d| d.hint())
        .unwrap_or_default()
        .to_owned();
    assert!(hint.contains("query of its own"), "{hint}");
    assert_eq!(named(&piped).await, "0");
    // s10: a masked string holds one statement that reads or runs (timebox confirms the catalog
    // right before it); before, reads after a write were fine in one string.
    let e = client
        .simple_query(
            "UPDATE customers SET name = name WHERE id = 2; SELECT email FROM customers WHERE id = 2; SELECT 1",
        )
        .await
        .unwrap_err();
    let (code, message) = db_error(&e);
    assert_eq!(code, "42501", "{message}");
    assert!(message.contains("SELECT would be a second"), "{message}");
    let rows = common::masking::text_rows(&client, "SELECT email FROM customers WHERE id = 2").await;
    assert_eq!(rows, vec![common::masking::some(&["***@shop.test"])]);
}

/// Pipelined batches of masked reads that are fine (described): every result arrives, masked,
/// nothing lost or reordered; an Execute the client follows with neither Sync nor Flush is
/// answered too (timebox's Flush).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_batches_of_masked_reads_return_every_result() {
    let _shared = catalog_lock().read().await;
    let inst = start().await;
    let (mut s, mut buf) = masked_session(&inst, "support").await;
    let mut frames = run_described("SELECT id, email FROM customers ORDER BY id").to_vec();
    frames.extend(run_described("SELECT name FROM customers WHERE id = 1"));
    frames.push(sync());
    frames.extend(run_described("SELECT card FROM customers WHERE id = 2"));
    frames.push(sync());
    send(&mut s, &frames).await;
    let first = answer(&mut s, &mut buf).await;
    let second = answer(&mut s, &mut buf).await;
    for clear in common::masking::CLEAR {
        assert!(
            !first.contains(clear) && !second.contains(clear),
            "{first} {second}"
        );
    }
    assert_eq!(first.matches("D:").count(), 3, "{first}");
    assert!(
        first.contains("***@example.com") && first.contains("***@shop.test"),
        "{first}"
    );
    assert!(first.contains("Alice"), "{first}");
    assert_eq!(first.matches("C:SELECT").count(), 2, "{first}");
    assert!(!first.contains("E:"), "{first}");
    assert!(
        second.contains("D:") && second.contains("C:SELECT 1") && !second.contains("E:"),
        "{second}"
    );
    // No Sync, no Flush from the client: the result still comes.
    send(&mut s, &run_described("SELECT 42")).await;
    let mut seen = String::new();
    while !seen.contains("C:SELECT 1") {
        let m = tokio::time::timeout(Duration::from_secs(60), raw::read_message(&mut s, &mut buf))
            .await
            .expect("the Execute's result without a Sync")
            .expect("connection open");
        if let postgres_protocol::message::backend::Message::CommandComplete(c) = m {
            seen = format!("C:{}", c.tag().unwrap());
        }
    }
    send(&mut s, &[sync()]).await;
    assert!(answer(&mut s, &mut buf).await.ends_with("Z:I "));
}

/// Regression (s7): a quota stop mid-batch (a masked role's) stops the batch like a refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_stop_in_a_masked_roles_batch_stops_the_batch() {
    use common::cluster::{WRITE_PASSWORD, WRITE_USER};
    let _shared = catalog_lock().read().await;
    let extra = format!(
        "[roles.support_capped]\nallow = [\"read\", \"write\"]\nmax_ttl = \"1h\"\nmax_rows_per_statement = 1\nmask = {{ \"public.customers.email\" = \"email\" }}\n{}",
        common::wire::shop_credential("support_capped", WRITE_USER, WRITE_PASSWORD)
    );
    let inst = start_with("", &extra).await;
    let (mut s, mut buf) = masked_session(&inst, "support_capped").await;
    let capped = unique_name("capped");
    let mut batch = run_described("SELECT id FROM customers ORDER BY id").to_vec();
    batch.extend(run(&format!(
        "UPDATE customers SET name = '{capped}' WHERE id = 2"
    )));
    batch.push(sync());
    send(&mut s, &batch).await;
    let r = answer(&mut s, &mut buf).await;
    assert!(r.contains("54000") && !r.contains("C:UPDATE"), "{r}");
    assert_eq!(
        named(&capped).await,
        "0",
        "the batch's write after the quota stop ran"
    );
}

/// A role without masks: a pipelined batch (an error in its middle) is relayed as before, byte for
/// byte what PostgreSQL answers directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_without_masks_gets_the_upstreams_pipelined_answers() {
    use common::cluster::{READ_PASSWORD, READ_USER};
    let _shared = catalog_lock().read().await;
    let inst = start().await;
    let mut batch = run_described("SELECT * FROM customers ORDER BY id").to_vec();
    batch.extend(run("SELECT 1 / 0"));
    batch.extend(run("SELECT 2"));
    batch.push(sync());
    batch.extend(run_described("SELECT email FROM customers WHERE id = 1"));
    batch.push(sync());
    let upstream = format!("127.0.0.1:{}", shared_cluster().port()).parse().unwrap();
    let (mut direct, mut dbuf, _) = raw::login_to(upstream, READ_USER, "shop", READ_PASSWORD).await;
    send(&mut direct, &batch).await;
    let expected = [
        read_to_ready(&mut direct, &mut dbuf).await,
        read_to_ready(&mut direct, &mut dbuf).await,
    ];
    let text = String::from_utf8_lossy(&expected.concat()).into_owned();
    assert!(
        text.contains("22012") && text.contains("alice@example.com"),
        "{text}"
    );
    let (_, token) = inst.grant("alice", "read", "10m").await;
    let (mut s, mut buf) = raw::login(inst.proxy_addr, "alice", &token).await;
    send(&mut s, &batch).await;
    let relayed = [
        read_to_ready(&mut s, &mut buf).await,
        read_to_ready(&mut s, &mut buf).await,
    ];
    assert_eq!(relayed, expected);
}

/// Regression (s7): the catalog freshness check a masked role's statement waits for used to be
/// awaited inside the relay loop, so a revocation (or expiry, kill, shutdown) waited for it — up
/// to its 3 s bound, the statement then checked (and refused) first. Now the cut comes while the
/// check is still blocked (a superuser holds a lock on a catalog it reads): the client gets
/// FATAL 57P01 and the statement is never checked, recorded or run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_does_not_wait_for_a_blocked_catalog_check() {
    let _alone = catalog_lock().write().await;
    let inst = start().await;
    let (grant, token) = inst.grant("alice", "support_write", "10m").await;
    let (mut s, mut buf) = raw::login(inst.proxy_addr, "alice", &token).await;
    send(&mut s, &[query("SELECT 1")]).await;
    answer(&mut s, &mut buf).await;
    let locker = superuser().await;
    locker
        .simple_query("BEGIN; LOCK TABLE pg_catalog.pg_range IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let cut = unique_name("cut");
    let sql = format!("UPDATE customers SET name = '{cut}' WHERE id = 1");
    send(&mut s, &[query(&sql)]).await;
    // The statement's check is waiting for the lock.
    let watcher = superuser().await;
    let waiting = common::eventually(Duration::from_secs(30), || {
        let watcher = &watcher;
        async move {
            scalar(
                watcher,
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'timebox:catalog' AND wait_event_type = 'Lock'",
            )
            .await
                != "0"
        }
    });
    let waiting = tokio::time::timeout(Duration::from_secs(60), waiting).await;
    assert!(
        matches!(waiting, Ok(true)),
        "the catalog check never waited for the lock"
    );
    inst.state
        .grants
        .revoke(&grant.id, "ops", "cut while checking")
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(60), raw::next_error(&mut s, &mut buf))
        .await
        .expect("the FATAL")
        .expect("an ErrorResponse before the connection closed");
    assert_eq!(first.0, "57P01", "{first:?}");
    // The lock is still held: the check is still blocked, and the session ended before it.
    let db = inst.audit_db();
    let ended = common::eventually(Duration::from_secs(30), || {
        let db = db.clone();
        async move {
            audit_records(&db)
                .iter()
                .any(|(k, p)| k == "session_end" && p["reason"] == "revoked")
        }
    })
    .await;
    assert!(ended, "{:#?}", audit_records(&db));
    let checked: Vec<_> = audit_records(&db)
        .into_iter()
        .filter(|(k, p)| k == "statement" && p["sql"].as_str().is_some_and(|q| q.contains(&cut)))
        .collect();
    assert!(
        checked.is_empty(),
        "the statement was checked before the cut: {checked:#?}"
    );
    locker.simple_query("ROLLBACK").await.unwrap();
    assert_eq!(named(&cut).await, "0", "the statement ran upstream");
    // The role's catalog connection recovers for the next session.
    let client = common::masking::session(&inst, "support_write").await;
    let rows = common::masking::text_rows(&client, "SELECT email FROM customers WHERE id = 1").await;
    assert_eq!(rows, vec![common::masking::some(&["***@example.com"])]);
}
