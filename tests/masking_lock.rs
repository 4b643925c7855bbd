//! The lock block ahead of a masked role's Query (issue 15, s10; `src/proxy/relay/lock_prelude.rs`):
//! what it must not change for an engineer — relation kinds `LOCK TABLE` does not take, names
//! that do not resolve, column privileges, a string opening its own block with its isolation
//! level, the client's own blocks — against a real PostgreSQL, raw protocol. What it closes (code
//! of a view replaced while the statement waited running at all) is in `masking_reattack3.rs`
//! (`closed_a_second_session_does_not_see_code_of_a_view_replaced_while_waiting`) and the other
//! across-a-lock probes.

mod common;

use bytes::BytesMut;
use common::cluster::{unique_name, READ_PASSWORD, READ_USER};
use common::frames::{exchange, query};
use common::masking::{admin_psql, start_over};
use common::TestInstance;
use tokio::net::TcpStream;

const SECRET: &str = "s10lk-secret-value";

/// Role `s10lk` (read) masking `secret` of `public.<t>`; `sql` ran on the target first.
async fn start(t: &str, sql: String) -> TestInstance {
    admin_psql(sql).await;
    let role = format!(
        "\n[roles.s10lk]\nallow = [\"read\"]\nmax_ttl = \"1h\"\nmask = {{ \"public.{t}.secret\" = \"redact\" }}\n\
         [targets.shop.credentials.s10lk]\nuser = \"{READ_USER}\"\npassword = \"{READ_PASSWORD}\"\n"
    );
    start_over(&[], role).await
}

/// Table `t` (id, secret), a plain table `<t>_p`, a materialized view over it, a sequence, and a
/// table `<t>_c` of which the read user may select one column only.
fn setup(t: &str) -> String {
    format!(
        "CREATE TABLE public.{t} (id int PRIMARY KEY, secret text);
         INSERT INTO public.{t} VALUES (1, '{SECRET}');
         CREATE TABLE public.{t}_p (n int); INSERT INTO public.{t}_p VALUES (7);
         CREATE MATERIALIZED VIEW public.{t}_m AS SELECT n FROM public.{t}_p;
         CREATE SEQUENCE public.{t}_s;
         CREATE TABLE public.{t}_c (a int, b int); INSERT INTO public.{t}_c VALUES (3, 4);
         GRANT SELECT ON public.{t}, public.{t}_p, public.{t}_m, public.{t}_s TO {READ_USER};
         GRANT SELECT (a) ON public.{t}_c TO {READ_USER};"
    )
}

async fn raw(inst: &TestInstance) -> (TcpStream, BytesMut) {
    let (_, token) = inst.grant("alice", "s10lk", "10m").await;
    common::raw::login(inst.proxy_addr, "alice", &token).await
}

/// Relations `LOCK TABLE` refuses (a materialized view, a sequence; locked by OID instead), a
/// table granted by column, and a name that resolves to nothing: each answered as without timebox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_relation_kind_reads_as_without_the_lock_block() {
    let _catalog = common::masking::catalog_lock().write().await;
    let t = unique_name("s10lk_k");
    let inst = start(&t, setup(&t)).await;
    let (mut s, mut buf) = raw(&inst).await;
    let matview = exchange(&mut s, &mut buf, &[query(&format!("SELECT n FROM {t}_m"))]).await;
    let sequence = exchange(
        &mut s,
        &mut buf,
        &[query(&format!("SELECT last_value FROM {t}_s"))],
    )
    .await;
    let column = exchange(&mut s, &mut buf, &[query(&format!("SELECT a FROM {t}_c"))]).await;
    let missing = exchange(&mut s, &mut buf, &[query(&format!("SELECT * FROM {t}_none"))]).await;
    let masked = exchange(&mut s, &mut buf, &[query(&format!("SELECT id, secret FROM {t}"))]).await;
    let _ = inst.shutdown().await;
    eprintln!("{matview}\n{sequence}\n{column}\n{missing}\n{masked}");
    assert!(
        matview.contains("D:") && matview.contains("C:SELECT 1") && matview.ends_with("Z:I "),
        "{matview}"
    );
    assert!(
        sequence.contains("C:SELECT 1") && sequence.ends_with("Z:I "),
        "{sequence}"
    );
    assert!(
        column.contains("C:SELECT 1") && column.ends_with("Z:I "),
        "{column}"
    );
    assert!(
        missing.contains("C42P01") && missing.contains("does not exist") && missing.ends_with("Z:I "),
        "PostgreSQL's own error: {missing}"
    );
    assert!(
        masked.contains("C:SELECT 1") && !masked.contains(SECRET),
        "{masked}"
    );
}

/// A string opening its own block (`BEGIN ISOLATION LEVEL …` among its statements) gets that block
/// with its access mode (timebox sends the string's `BEGIN` ahead of the lock block), and the
/// warning of its copy is not the client's. Other isolation levels than READ COMMITTED are refused
/// for statements that read relations (s10 fifth attack: the fingerprint would read the
/// transaction's older snapshot).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_string_opening_its_block_keeps_its_modes() {
    let _catalog = common::masking::catalog_lock().write().await;
    let t = unique_name("s10lk_b");
    let inst = start(&t, setup(&t)).await;
    let (mut s, mut buf) = raw(&inst).await;
    let sql = format!(
        "BEGIN ISOLATION LEVEL READ COMMITTED, READ ONLY; SELECT id, secret FROM {t}; \
         SHOW transaction_isolation; SHOW transaction_read_only"
    );
    let opened = exchange(&mut s, &mut buf, &[query(&sql)]).await;
    let inside = exchange(&mut s, &mut buf, &[query(&format!("SELECT n FROM {t}_p"))]).await;
    let ended = exchange(&mut s, &mut buf, &[query("ROLLBACK")]).await;
    let serializable = format!("BEGIN ISOLATION LEVEL SERIALIZABLE; SELECT id, secret FROM {t}");
    let refused = exchange(&mut s, &mut buf, &[query(&serializable)]).await;
    let rolled_back = exchange(&mut s, &mut buf, &[query("ROLLBACK")]).await;
    let _ = inst.shutdown().await;
    eprintln!("{opened}\n{inside}\n{ended}\n{refused}\n{rolled_back}");
    assert!(
        refused.contains("C0A000") && refused.contains("only in READ COMMITTED") && refused.ends_with("Z:E "),
        "{refused}"
    );
    assert!(rolled_back.ends_with("Z:I "), "{rolled_back}");
    assert!(
        opened.starts_with("C:BEGIN"),
        "the string's own BEGIN answers first: {opened}"
    );
    assert!(
        !opened.contains("N:") && !opened.contains("25001"),
        "no warning: {opened}"
    );
    assert!(opened.contains("D:") && !opened.contains(SECRET), "{opened}");
    assert!(
        opened.contains("read committed C:SHOW") && opened.contains("on C:SHOW"),
        "{opened}"
    );
    assert!(opened.ends_with("Z:T "), "the block is open: {opened}");
    assert!(
        inside.contains("C:SELECT 1") && inside.ends_with("Z:T "),
        "{inside}"
    );
    assert!(ended.contains("C:ROLLBACK") && ended.ends_with("Z:I "), "{ended}");
}

/// In the client's own block, a failed lock block (here: a lock timeout, the table held by another
/// session) is the statement's error, and the block is failed as by any error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_the_clients_block_a_lock_timeout_is_the_statements_error() {
    let _catalog = common::masking::catalog_lock().write().await;
    let t = unique_name("s10lk_t");
    let inst = start(&t, setup(&t)).await;
    let (mut s, mut buf) = raw(&inst).await;
    let a = common::masking::accomplice().await;
    a.batch_execute(&format!(
        "BEGIN; LOCK TABLE public.{t}_p IN ACCESS EXCLUSIVE MODE"
    ))
    .await
    .unwrap();
    let begun = exchange(&mut s, &mut buf, &[query("BEGIN")]).await;
    let set = exchange(&mut s, &mut buf, &[query("SET LOCAL lock_timeout = '200ms'")]).await;
    let timed_out = exchange(&mut s, &mut buf, &[query(&format!("SELECT n FROM {t}_p"))]).await;
    a.batch_execute("ROLLBACK").await.unwrap();
    let after = exchange(&mut s, &mut buf, &[query("SELECT 1")]).await;
    let ended = exchange(&mut s, &mut buf, &[query("ROLLBACK")]).await;
    let again = exchange(&mut s, &mut buf, &[query(&format!("SELECT n FROM {t}_p"))]).await;
    let _ = inst.shutdown().await;
    eprintln!("{begun}\n{set}\n{timed_out}\n{after}\n{ended}\n{again}");
    assert!(
        begun.ends_with("Z:T ") && set.ends_with("Z:T "),
        "{begun} / {set}"
    );
    assert!(
        timed_out.contains("C55P03") && timed_out.contains("lock timeout") && timed_out.ends_with("Z:E "),
        "the lock block's error is the statement's: {timed_out}"
    );
    assert_eq!(timed_out.matches("E:").count(), 1, "one error: {timed_out}");
    assert!(after.contains("C25P02"), "the block failed: {after}");
    assert!(ended.ends_with("Z:I "), "{ended}");
    assert!(again.contains("C:SELECT 1") && again.ends_with("Z:I "), "{again}");
}

/// The block reads the fingerprint through a statement it prepares in the session (s10, cost): a
/// client's `DEALLOCATE ALL` drops it, and the next block prepares it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_deallocate_all_only_makes_the_block_prepare_again() {
    let _catalog = common::masking::catalog_lock().write().await;
    let t = unique_name("s10lk_d");
    let inst = start(&t, setup(&t)).await;
    let (mut s, mut buf) = raw(&inst).await;
    let sql = format!("SELECT id, secret FROM {t}");
    let first = exchange(&mut s, &mut buf, &[query(&sql)]).await;
    let listed = exchange(
        &mut s,
        &mut buf,
        &[query("SELECT name FROM pg_catalog.pg_prepared_statements")],
    )
    .await;
    let dropped = exchange(&mut s, &mut buf, &[query("DEALLOCATE ALL")]).await;
    let again = exchange(&mut s, &mut buf, &[query(&sql)]).await;
    let _ = inst.shutdown().await;
    eprintln!("{first}\n{listed}\n{dropped}\n{again}");
    assert!(first.contains("C:SELECT 1") && !first.contains(SECRET), "{first}");
    assert!(listed.contains("timebox_check_"), "{listed}");
    assert!(dropped.contains("C:DEALLOCATE ALL"), "{dropped}");
    assert!(again.contains("C:SELECT 1") && !again.contains(SECRET), "{again}");
}
