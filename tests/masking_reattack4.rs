//! Column masking, fourth outside attack (s9, issue 15) after commit 2ee753d (other sessions'
//! temporary objects left out of the catalog fingerprint, pins kept in the store, the wrap's
//! releases). Same harness and accomplice model as `tests/masking_reattack3.rs`: a masked role
//! (`s9rb`, column `secret` of its tables masked with `redact`) and an accomplice — the cluster's
//! superuser outside timebox.
//!
//! `closed_*`: a leak found by this attack, closed by the fixes that followed (each failed before
//! them: it asserts the secret did not reach the client, and it did); `held_*`: a shape tried that
//! did not leak (`held_own_temp_view_replaced_through_timebox_is_judged` also caught a masked DDL
//! role's own DDL ending its session after the s9 second check of statements without rows; fixed).
//!
//! Found against 2ee753d: (1) another session's temporary VIEW is readable by a masked session
//! (given USAGE on that temporary schema and SELECT on the view) although `masking::freshness`
//! assumes PostgreSQL refuses it, and its replacement is invisible to the fingerprint, so timebox
//! judges it on a stale copy — the secret comes back as rows, no timing needed; (2) a wrapped
//! `COPY … FROM STDIN` lets every client frame through until its ReadyForQuery, so an
//! extended-protocol batch after the CopyDone runs inside timebox's transaction ahead of its
//! COMMIT, with its answers dropped unseen by the mask module: a replaced view's effects commit.

mod common;

use bytes::BytesMut;
use common::cluster::{unique_name, READ_PASSWORD, READ_USER, WRITE_PASSWORD, WRITE_USER};
use common::frames::{exchange, exchange_or_close, query};
use common::masking::{accomplice, across_a_lock, admin_psql, start_over};
use common::TestInstance;
use tokio::net::TcpStream;

/// The value every table of these probes holds in its masked column `secret`.
const SECRET: &str = "s9rb-secret-value";

/// Whether an answer carries the secret in clear (any case).
fn leaked(out: &str) -> bool {
    out.to_lowercase().contains(SECRET)
}

/// Role `s9rb` (`classes`) masking `secret` of each `public.<table>`, on the read user.
fn role_with(tables: &[&str], classes: &str) -> String {
    let mask: Vec<String> = tables
        .iter()
        .map(|t| format!("\"public.{t}.secret\" = \"redact\""))
        .collect();
    format!(
        "\n[roles.s9rb]\nallow = [{classes}]\nmax_ttl = \"1h\"\nmask = {{ {} }}\n\
         [targets.shop.credentials.s9rb]\nuser = \"{READ_USER}\"\npassword = \"{READ_PASSWORD}\"\n",
        mask.join(", ")
    )
}

/// Table `public.<t>` (id, secret) holding [`SECRET`], readable by the read user.
fn setup(t: &str) -> String {
    format!(
        "CREATE TABLE public.{t} (id int PRIMARY KEY, secret text);
         INSERT INTO public.{t} VALUES (1, '{SECRET}');
         GRANT SELECT ON public.{t} TO {READ_USER};"
    )
}

/// An instance with role `s9rb` (read) masking `tables`, after `sql` ran on the target.
async fn start(tables: &[&str], sql: String) -> TestInstance {
    admin_psql(sql).await;
    start_over(&[], role_with(tables, "\"read\"")).await
}

/// A raw protocol session of role `s9rb`.
async fn raw(inst: &TestInstance) -> (TcpStream, BytesMut) {
    let (_, token) = inst.grant("alice", "s9rb", "10m").await;
    common::raw::login(inst.proxy_addr, "alice", &token).await
}

/// The accomplice's session `a` creates a temporary view `v` (id, x) over nothing, readable by the
/// read user (its temporary schema granted); the view's qualified name.
async fn temp_view(a: &tokio_postgres::Client, v: &str) -> String {
    a.batch_execute(&format!(
        "CREATE TEMP VIEW {v} AS SELECT 1::int AS id, 'x'::text AS x;
         GRANT SELECT ON {v} TO {READ_USER};"
    ))
    .await
    .unwrap();
    let nsp = common::pg::scalar(a, "SELECT pg_catalog.pg_my_temp_schema()::regnamespace::text").await;
    a.batch_execute(&format!("GRANT USAGE ON SCHEMA {nsp} TO {READ_USER}"))
        .await
        .unwrap();
    format!("{nsp}.{v}")
}

// ---- 1. The fingerprint leaves out other sessions' temporary schemas ----

/// LEAK (accomplice, no timing). A session of the accomplice (an application, a migration) holds
/// a temporary view `pg_temp_N.v` (id, x = a literal) and grants its schema to the read user. The
/// masked engineer reads it through timebox once (the snapshot knows it, over nothing masked).
/// The accomplice then replaces it in its own session: `CREATE OR REPLACE TEMP VIEW v AS SELECT
/// id, secret AS x FROM public.t` — the view keeps its OID, its `pg_rewrite`/`pg_class` rows are
/// in a temporary schema of another session, which the fingerprint leaves out (s9), so the next
/// statement's fingerprint is "current" and timebox judges `SELECT x FROM pg_temp_N.v` on its
/// stale copy (a view over nothing masked); the RowDescription names the view's column (its OID,
/// not the table's), so nothing is masked on the wire: the secret arrives in clear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_other_sessions_temp_view_replaced_after_the_snapshot() {
    let _catalog = common::masking::catalog_lock().write().await;
    let t = unique_name("s9rb_tv_t");
    let v = unique_name("s9rb_tv_v");
    let a = accomplice().await;
    admin_psql(setup(&t)).await;
    let qualified = temp_view(&a, &v).await;
    let inst = start(&[&t], String::new()).await;
    let (mut s, mut buf) = raw(&inst).await;
    let sql = format!("SELECT x FROM {qualified}");
    let before = exchange(&mut s, &mut buf, &[query(&sql)]).await;
    a.batch_execute(&format!(
        "CREATE OR REPLACE TEMP VIEW {v} AS SELECT id, secret AS x FROM public.{t}"
    ))
    .await
    .unwrap();
    let after = exchange(&mut s, &mut buf, &[query(&sql)]).await;
    let _ = inst.shutdown().await;
    eprintln!("before: {before}\nafter: {after}");
    assert!(!leaked(&before), "{before}");
    assert!(
        !leaked(&after),
        "the replaced temporary view read through timebox: {after}"
    );
}

/// LEAK (accomplice, across a lock). As above, but the temporary view is replaced while the masked
/// statement waits for the accomplice's lock on it: the second check (at the RowDescription) reads
/// the fingerprint too, and it leaves the temporary schema out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_other_sessions_temp_view_replaced_across_a_lock() {
    let _catalog = common::masking::catalog_lock().write().await;
    let t = unique_name("s9rb_tl_t");
    let v = unique_name("s9rb_tl_v");
    let a = accomplice().await;
    admin_psql(setup(&t)).await;
    let qualified = temp_view(&a, &v).await;
    let inst = start(&[&t], String::new()).await;
    let (s, buf) = raw(&inst).await;
    let sql = format!("SELECT x FROM {qualified}");
    let hold = format!("CREATE OR REPLACE TEMP VIEW {v} AS SELECT id, secret AS x FROM public.{t}");
    // s10 (fifth attack): a statement naming another session's temporary schema is refused
    // before it runs, so the accomplice's hold is never awaited.
    let _ = hold;
    let (mut s, mut buf) = (s, buf);
    let out = exchange_or_close(&mut s, &mut buf, &[query(&sql)]).await;
    let _ = inst.shutdown().await;
    eprintln!("{out}");
    assert!(!leaked(&out), "the temporary view replaced across a lock: {out}");
    assert!(out.contains("42501") && out.contains("temporary schema"), "{out}");
}

/// Held. A temporary view over the masked column that the snapshot does not know (created after
/// it, in the accomplice's session): the statement names a relation the copy does not know, the
/// copy is read again and the view is judged (denied or masked).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_other_sessions_temp_view_created_after_the_snapshot() {
    let _catalog = common::masking::catalog_lock().write().await;
    let t = unique_name("s9rb_tn_t");
    let v = unique_name("s9rb_tn_v");
    let a = accomplice().await;
    admin_psql(setup(&t)).await;
    let inst = start(&[&t], String::new()).await;
    let (mut s, mut buf) = raw(&inst).await;
    let warm = exchange(&mut s, &mut buf, &[query(&format!("SELECT id FROM public.{t}"))]).await;
    a.batch_execute(&format!(
        "CREATE TEMP VIEW {v} AS SELECT id, secret AS x FROM public.{t};
         GRANT SELECT ON {v} TO {READ_USER};"
    ))
    .await
    .unwrap();
    let nsp = common::pg::scalar(&a, "SELECT pg_catalog.pg_my_temp_schema()::regnamespace::text").await;
    a.batch_execute(&format!("GRANT USAGE ON SCHEMA {nsp} TO {READ_USER}"))
        .await
        .unwrap();
    let out = exchange(&mut s, &mut buf, &[query(&format!("SELECT x FROM {nsp}.{v}"))]).await;
    let _ = inst.shutdown().await;
    eprintln!("{warm}\n{out}");
    assert!(!leaked(&out), "{out}");
}

/// Held. The masked session's own temporary objects are left out of the fingerprint too (timebox's
/// catalog connection has no temporary schema). A masked role that may run DDL creates a
/// temporary view over nothing (the copy is read again after DDL and knows it), then replaces it
/// with one over the masked table, hiding the column behind `*`, a table alias's column list or a
/// subquery: each replacement is judged before it runs (a view over a masked table's column is an
/// expression of it), so the stale copy is never used for a view that reads the masked column.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_own_temp_view_replaced_through_timebox_is_judged() {
    let _catalog = common::masking::catalog_lock().write().await;
    let t = unique_name("s9rb_ov_t");
    admin_psql(setup(&t)).await;
    admin_psql(format!("GRANT SELECT ON public.{t} TO {WRITE_USER}")).await;
    let role = role_with(&[&t], "\"read\", \"write\", \"ddl\"")
        .replace(
            &format!("user = \"{READ_USER}\""),
            &format!("user = \"{WRITE_USER}\""),
        )
        .replace(
            &format!("password = \"{READ_PASSWORD}\""),
            &format!("password = \"{WRITE_PASSWORD}\""),
        );
    let inst = start_over(&[], role).await;
    let (mut s, mut buf) = raw(&inst).await;
    let mut outs = vec![
        exchange(
            &mut s,
            &mut buf,
            &[query(
                "CREATE TEMP VIEW s9rb_own AS SELECT 1::int AS id, 'x'::text AS x",
            )],
        )
        .await,
        exchange(&mut s, &mut buf, &[query("SELECT x FROM s9rb_own")]).await,
    ];
    for replacement in [
        format!("CREATE OR REPLACE TEMP VIEW s9rb_own AS SELECT * FROM public.{t}"),
        format!("CREATE OR REPLACE TEMP VIEW s9rb_own AS SELECT z.* FROM public.{t} AS z(id, x)"),
        format!("CREATE OR REPLACE TEMP VIEW s9rb_own AS SELECT id, x FROM (SELECT id, secret AS x FROM public.{t}) q"),
        format!("CREATE OR REPLACE TEMP VIEW s9rb_own (id, x) AS TABLE public.{t}"),
    ] {
        outs.push(exchange(&mut s, &mut buf, &[query(&replacement)]).await);
        outs.push(exchange(&mut s, &mut buf, &[query("SELECT x FROM s9rb_own")]).await);
    }
    let _ = inst.shutdown().await;
    let all = outs.join("\n");
    eprintln!("{all}");
    assert!(!leaked(&all), "{all}");
}

/// Held. Strings that would run something outside the transaction timebox ends are refused to
/// masked roles: ABORT in the middle, COMMIT AND CHAIN, START TRANSACTION … END, a string in a
/// block the client opened whose middle ROLLBACK would leave the rest outside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_transaction_control_variants_in_strings_are_refused() {
    let _catalog = common::masking::catalog_lock().read().await;
    let t = unique_name("s9rb_tc_t");
    admin_psql(setup(&t)).await;
    let inst = start_over(&[], role_with(&[&t], "\"read\"")).await;
    let (mut s, mut buf) = raw(&inst).await;
    let mut outs = Vec::new();
    for sql in [
        "SELECT 1; ABORT; SELECT 2".to_owned(),
        "SELECT 1; COMMIT AND CHAIN".to_owned(),
        "START TRANSACTION READ WRITE; SELECT 1; END".to_owned(),
        "SELECT 1;;; /* c */ ; ROLLBACK AND CHAIN; SELECT 2".to_owned(),
        "BEGIN; SELECT 1; ROLLBACK; SELECT 2".to_owned(),
    ] {
        let out = exchange(&mut s, &mut buf, &[query(&sql)]).await;
        outs.push(format!("{sql} => {out}"));
    }
    let _ = inst.shutdown().await;
    eprintln!("{}", outs.join("\n"));
    for o in &outs {
        assert!(o.contains("42501"), "{o}");
    }
}

// ---- 2. The wrap's frame accounting: the client's frames flow while a wrapped COPY FROM STDIN runs ----

/// Everything the server sends within `secs` seconds (or until it closes), summarised.
async fn drain(s: &mut TcpStream, buf: &mut BytesMut, secs: u64) -> String {
    use tokio::io::AsyncReadExt;
    loop {
        match tokio::time::timeout(std::time::Duration::from_secs(secs), s.read_buf(buf)).await {
            Ok(Ok(n)) if n > 0 => continue,
            _ => break,
        }
    }
    let out = common::frames::summary(buf);
    buf.clear();
    out
}

/// Probe (no accomplice). While a wrapped `COPY … FROM STDIN` runs, the client's frames go
/// upstream (`TxWrap::copy_in`) until its ReadyForQuery — so extended-protocol messages sent after
/// the CopyDone run inside timebox's transaction, before its COMMIT, and their answers arrive
/// while the wrap is `Closing` (dropped, but for E/A/N/S of a COMMIT). Does any row of the masked
/// column reach the client in clear, then or in a later Query? No: its rows are dropped — but so is
/// the rest of the extended batch's answer, and the session hangs (the later Query gets no answer:
/// timebox waits for answers that were swallowed). Not a leak; a desync, exploited with an
/// accomplice in `repro_extended_batch_during_wrapped_copy_in_is_committed_unchecked`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_extended_batch_sent_during_a_wrapped_copy_in_leaks_nothing() {
    let _catalog = common::masking::catalog_lock().write().await;
    let t = unique_name("s9rb_ci_t");
    let w = unique_name("s9rb_ci_w");
    admin_psql(
        setup(&t)
            + &format!(
                "CREATE TABLE public.{w} (a text); GRANT SELECT, INSERT ON public.{w} TO {WRITE_USER};
         GRANT SELECT ON public.{t} TO {WRITE_USER};"
            ),
    )
    .await;
    let role = role_with(&[&t], "\"read\", \"write\"")
        .replace(
            &format!("user = \"{READ_USER}\""),
            &format!("user = \"{WRITE_USER}\""),
        )
        .replace(
            &format!("password = \"{READ_PASSWORD}\""),
            &format!("password = \"{WRITE_PASSWORD}\""),
        );
    let inst = start_over(&[], role).await;
    let (mut s, mut buf) = raw(&inst).await;
    common::frames::send(&mut s, &[query(&format!("COPY public.{w} FROM STDIN"))]).await;
    let started = drain(&mut s, &mut buf, 2).await;
    let sel = format!("SELECT secret FROM public.{t}");
    common::frames::send(
        &mut s,
        &[
            common::frames::msg(b'd', b"row\n"),
            common::frames::msg(b'c', b""),
            common::frames::parse("", &sel),
            common::frames::bind("", ""),
            common::frames::execute(""),
            common::frames::sync(),
        ],
    )
    .await;
    let during = drain(&mut s, &mut buf, 3).await;
    common::frames::send(&mut s, &[query(&sel)]).await;
    let later = drain(&mut s, &mut buf, 3).await;
    let _ = inst.shutdown().await;
    eprintln!("started: {started}\nduring: {during}\nlater: {later}");
    assert!(!leaked(&during), "{during}");
    assert!(!leaked(&later), "{later}");
}

/// LEAK (accomplice, concurrent replacement). The desync above with a replaced view: the masked
/// engineer (a role that may write) starts a wrapped `COPY w FROM STDIN`; while it runs, the client's
/// frames go upstream, so CopyDone is followed by Parse/Bind/Execute/Sync of `SELECT x FROM v`
/// (judged on the view as it was: over nothing). The Parse waits for the accomplice's lock and is
/// planned on the replaced view, whose function copies the masked column into an unmasked table
/// `d`. The COPY's ReadyForQuery closes the wrap (nothing refused: COMMIT); the extended
/// statement's answers then arrive while the wrap is `Closing`, are dropped before the mask module
/// sees them (so no second check, nothing refused), and timebox's COMMIT — queued after the
/// Execute — makes the function's INSERT durable. `SELECT a FROM d` (unmasked) returns the secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_extended_batch_during_wrapped_copy_in_is_committed_unchecked() {
    let _catalog = common::masking::catalog_lock().write().await;
    let t = unique_name("s9rb_cx_t");
    let v = unique_name("s9rb_cx_v");
    let w = unique_name("s9rb_cx_w");
    let d = unique_name("s9rb_cx_d");
    admin_psql(
        setup(&t)
            + &format!(
                "CREATE VIEW public.{v} AS SELECT 1::int AS id, 'x'::text AS x;
         CREATE TABLE public.{w} (a text); CREATE TABLE public.{d} (a text);
         GRANT SELECT, INSERT ON public.{w}, public.{d} TO {WRITE_USER};
         GRANT SELECT ON public.{t}, public.{v} TO {WRITE_USER};"
            ),
    )
    .await;
    let role = role_with(&[&t], "\"read\", \"write\"")
        .replace(
            &format!("user = \"{READ_USER}\""),
            &format!("user = \"{WRITE_USER}\""),
        )
        .replace(
            &format!("password = \"{READ_PASSWORD}\""),
            &format!("password = \"{WRITE_PASSWORD}\""),
        );
    let inst = start_over(&[], role).await;
    let (s, buf) = raw(&inst).await;
    let a = accomplice().await;
    let replacement = format!(
        "CREATE FUNCTION public.{v}_f() RETURNS text LANGUAGE plpgsql VOLATILE AS $f$ BEGIN \
           INSERT INTO public.{d} SELECT secret FROM public.{t}; RETURN 'y'; END $f$;
         CREATE OR REPLACE VIEW public.{v} AS SELECT id, public.{v}_f() AS x FROM public.{t}"
    );
    let sel = format!("SELECT x FROM public.{v}");
    let (copy, sel2) = (w.clone(), sel.clone());
    let during = across_a_lock(&a, &replacement, &sel, async move {
        let (mut s, mut buf) = (s, buf);
        common::frames::send(&mut s, &[query(&format!("COPY public.{copy} FROM STDIN"))]).await;
        let started = drain(&mut s, &mut buf, 2).await;
        common::frames::send(
            &mut s,
            &[
                common::frames::msg(b'd', b"row\n"),
                common::frames::msg(b'c', b""),
                common::frames::parse("", &sel2),
                common::frames::bind("", ""),
                common::frames::execute(""),
                common::frames::sync(),
            ],
        )
        .await;
        let during = drain(&mut s, &mut buf, 5).await;
        format!("{started} / {during}")
    })
    .await;
    let (mut s2, mut buf2) = raw(&inst).await;
    let read = exchange(&mut s2, &mut buf2, &[query(&format!("SELECT a FROM public.{d}"))]).await;
    let _ = inst.shutdown().await;
    eprintln!("during: {during}\nread: {read}");
    assert!(!leaked(&during), "{during}");
    assert!(
        !leaked(&read),
        "the replaced view's effect committed by timebox: {read}"
    );
}
