//! Column masking, third outside attack (s9, issue 15) after the wrap of masked roles' Queries in a
//! transaction timebox ends (`relay::wrap`). Same harness and accomplice model as
//! `tests/masking_reattack2.rs`: a masked role (`s9ra`, column `secret` of its tables masked with
//! `redact`) and an accomplice — the cluster's superuser outside timebox — who replaces views while
//! the masked engineer's statement waits for its lock.
//!
//! Written as failing probes by the attacker (11 leaks against commit 8accf71, one without an
//! accomplice); now: `closed_*` — a leak the fixes that followed closed (each failed before them:
//! the statement's CommandComplete checked again, the wrap's releases, FunctionCall refused to
//! masked roles, strings timebox cannot wrap refused, an extended batch refused for a catalog change
//! ending the session); `open_*` — a leak still open (ignored, run with `--ignored`); `held_*` —
//! shapes the attacker tried that did not leak. Each doc comment still says what leaked (its
//! "LEAK" is the finding, not the state).

mod common;

use bytes::{BufMut, BytesMut};
use common::cluster::{unique_name, READ_PASSWORD, READ_USER, WRITE_PASSWORD, WRITE_USER};
use common::frames::{answer, bind, exchange, exchange_or_close, execute, msg, parse, query, send, sync};
use common::masking::{accomplice, across_a_lock, admin_psql, raw_exchange, start_over};
use common::TestInstance;
use tokio::net::TcpStream;

/// The value every table of these probes holds in its masked column `secret`.
const SECRET: &str = "s9ra-secret-value";

/// Whether an answer carries the secret in clear (any case).
fn leaked(out: &str) -> bool {
    out.to_lowercase().contains(SECRET)
}

/// Role `s9ra` (`classes`) masking `secret` of each `public.<table>`, on the read user.
fn role_with(tables: &[&str], classes: &str) -> String {
    let mask: Vec<String> = tables
        .iter()
        .map(|t| format!("\"public.{t}.secret\" = \"redact\""))
        .collect();
    format!(
        "\n[roles.s9ra]\nallow = [{classes}]\nmax_ttl = \"1h\"\nmask = {{ {} }}\n\
         [targets.shop.credentials.s9ra]\nuser = \"{READ_USER}\"\npassword = \"{READ_PASSWORD}\"\n",
        mask.join(", ")
    )
}

/// Table `public.<t>` (id, secret) holding [`SECRET`]; plain views `public.<v>` (id, x) over
/// nothing; all readable by the read user.
fn setup(t: &str, views: &[&str]) -> String {
    let mut sql = format!(
        "CREATE TABLE public.{t} (id int PRIMARY KEY, secret text);
         INSERT INTO public.{t} VALUES (1, '{SECRET}');
         GRANT SELECT ON public.{t} TO {READ_USER};"
    );
    for v in views {
        sql.push_str(&format!(
            "CREATE VIEW public.{v} AS SELECT 1::int AS id, 'x'::text AS x;
             GRANT SELECT ON public.{v} TO {READ_USER};"
        ));
    }
    sql
}

/// The accomplice's replacement of `v` whose `x` calls a function (plpgsql, VOLATILE) running
/// `body` (which may read `public.<t>` as the caller); `filter`: the view's WHERE clause.
fn to_function_where(v: &str, t: &str, body: &str, filter: &str) -> String {
    format!(
        "CREATE FUNCTION public.{v}_f() RETURNS text LANGUAGE plpgsql VOLATILE AS $f$ BEGIN {body} END $f$;
         CREATE OR REPLACE VIEW public.{v} AS SELECT id, public.{v}_f() AS x FROM public.{t} WHERE {filter}"
    )
}

/// As [`to_function_where`], every row.
fn to_function(v: &str, t: &str, body: &str) -> String {
    to_function_where(v, t, body, "true")
}

/// The values of `t`'s masked column, as an SQL expression the accomplice's code evaluates.
fn values(t: &str) -> String {
    format!("(SELECT string_agg(secret, ',') FROM public.{t})")
}

/// `set_config('s9ra.leak', <values>, false)` in the accomplice's function.
fn set_leak(t: &str) -> String {
    format!(
        "PERFORM set_config('s9ra.leak', {}, false); RETURN 'y';",
        values(t)
    )
}

/// An instance with role `s9ra` (read) masking `tables`, after `sql` ran on the target.
async fn start(tables: &[&str], sql: String) -> TestInstance {
    admin_psql(sql).await;
    start_over(&[], role_with(tables, "\"read\"")).await
}

/// A raw protocol session of role `s9ra`.
async fn raw(inst: &TestInstance) -> (TcpStream, BytesMut) {
    let (_, token) = inst.grant("alice", "s9ra", "10m").await;
    common::raw::login(inst.proxy_addr, "alice", &token).await
}

/// On a fresh instance with one table and one view: `frames` (containing `waits`, the text the
/// lock wait is recognised by) sent while the accomplice replaces the view with `replacement`
/// (`to_function…`) in an open transaction; then `after` as a Query. Both answers.
async fn across(
    tag: &str,
    replacement: impl Fn(&str, &str) -> String,
    frames: impl Fn(&str) -> Vec<BytesMut>,
    waits: impl Fn(&str) -> String,
    after: &str,
) -> (String, String) {
    let t = unique_name(&format!("s9ra_{tag}_t"));
    let v = unique_name(&format!("s9ra_{tag}_v"));
    let inst = start(&[&t], setup(&t, &[&v])).await;
    let (s, buf) = raw(&inst).await;
    let a = accomplice().await;
    let frames = frames(&v);
    let (first, mut s, mut buf) = across_a_lock(&a, &replacement(&v, &t), &waits(&v), async move {
        let (mut s, mut buf) = (s, buf);
        let out = exchange_or_close(&mut s, &mut buf, &frames).await;
        (out, s, buf)
    })
    .await;
    // s9: timebox may end the session after such a refusal (what it left goes with its backend).
    let later = if first.contains("SFATAL") {
        "(the session ended)".to_owned()
    } else {
        exchange(&mut s, &mut buf, &[query(after)]).await
    };
    let _ = inst.shutdown().await;
    eprintln!("{first} / {later}");
    (first, later)
}

// ---- 1. Statements that run a replaced view's code without a RowDescription ----

/// LEAK (accomplice). `DECLARE c CURSOR WITH HOLD FOR SELECT x FROM v` waits for the
/// accomplice's lock and is planned on the replaced view. A DECLARE answers CommandComplete only:
/// no RowDescription, so no second catalog check and nothing refused (`ResultMask::confirms_at`
/// looks at `T`, `2`, `E`, `N`). The wrap therefore COMMITs — and a holdable cursor is
/// materialised at COMMIT: the replaced view's function runs then, its `set_config(…, false)`
/// is committed, and `SHOW` reads the values back. (FETCH is refused; SHOW is not.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_hold_cursor_materialised_at_timebox_commit_runs_replaced_view() {
    let _catalog = common::masking::catalog_lock().write().await;
    let (declared, shown) = across(
        "hc",
        |v, t| to_function(v, t, &set_leak(t)),
        |v| {
            vec![query(&format!(
                "DECLARE c CURSOR WITH HOLD FOR SELECT x FROM {v}"
            ))]
        },
        |_| "DECLARE c".into(),
        "SHOW s9ra.leak",
    )
    .await;
    assert!(!leaked(&declared), "{declared}");
    assert!(!leaked(&shown), "SHOW after the DECLARE … WITH HOLD: {shown}");
}

/// Held (by accident). `MOVE` runs a cursor like `FETCH` but returns no rows, and the classifier
/// sets no `fetch_cursor` for it (`kinds::base_class`, `!f.ismove`), so neither
/// `MaskJudgements::fetch` nor a second check would see it run a cursor planned on a replaced
/// view. It is refused today only because sqlparser cannot parse `MOVE` (cross-check): if that
/// ever changes, `DECLARE c CURSOR FOR SELECT x FROM v; MOVE ALL IN c` across a lock runs the
/// replaced view's code unchecked and the wrap commits it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_move_is_refused_only_by_the_cross_check() {
    let _catalog = common::masking::catalog_lock().write().await;
    let t = unique_name("s9ra_mv_t");
    let v = unique_name("s9ra_mv_v");
    let inst = start(&[&t], setup(&t, &[&v])).await;
    let (mut s, mut buf) = raw(&inst).await;
    let sql = format!("DECLARE c CURSOR FOR SELECT x FROM {v}; MOVE ALL IN c");
    let out = exchange(&mut s, &mut buf, &[query(&sql)]).await;
    let _ = inst.shutdown().await;
    assert!(out.contains("42501") && out.contains("MOVE"), "{out}");
}

// ---- 2. Extended protocol: no wrap, and a refused portal with no rows is not refused ----

/// LEAK (accomplice). Parse/Bind/Execute/Sync of `SELECT x FROM v` (outside a block): the Parse
/// waits for the lock and is analysed on the replaced view; the BindComplete's second check marks
/// the portal `Layout::Fail`, but the replaced view returns no rows (its WHERE calls the function
/// and is false), so no DataRow ever fails (`ResultMask::row`), `failing()` stays false, the batch
/// hold releases without its abort marker (`BatchHold::on_backend`), and the Sync commits the
/// implicit transaction with the function's `set_config(…, false)`. (The wrap covers Queries only.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_extended_refused_portal_without_rows_commits_its_effects() {
    let _catalog = common::masking::catalog_lock().write().await;
    let (ran, shown) = across(
        "ez",
        |v, t| to_function_where(v, t, &set_leak(t), &format!("public.{v}_f() = 'never'")),
        |v| {
            let sql = format!("SELECT x FROM {v}");
            vec![parse("", &sql), bind("", ""), execute(""), sync()]
        },
        |v| format!("SELECT x FROM {v}"),
        "SHOW s9ra.leak",
    )
    .await;
    assert!(!leaked(&ran), "{ran}");
    assert!(!leaked(&shown), "SHOW after the batch: {shown}");
    // s9: the session ended; s10: timebox's lock block ahead of the Bind finds the catalog changed
    // and the batch runs nothing from the Bind on (the Parse only analysed the new definition).
    assert!(
        (ran.contains("SFATAL") && ran.contains("the session is closed"))
            || (ran.contains("42501") && ran.contains("it did not run")),
        "{ran}"
    );
}

/// LEAK (accomplice). As the s9 regression `advisory_locks_taken_by_a_refused_statement_are_released`,
/// in the extended protocol: the refused portal's rows fail and the batch is aborted upstream (its
/// implicit transaction rolls back), but session-level advisory locks are not transactional and
/// only the simple-Query wrap releases them (`wrap::TxWrap::close` sends `pg_advisory_unlock_all`;
/// `pipeline::BatchHold` does not). Their keys (here `ascii` of the values) stay in `pg_locks`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_extended_refusal_keeps_advisory_locks() {
    let _catalog = common::masking::catalog_lock().write().await;
    let (refused, locks) = across(
        "ea",
        |v, t| {
            to_function(
                v,
                t,
                &format!("PERFORM pg_advisory_lock(ascii({})); RETURN 'y';", values(t)),
            )
        },
        |v| {
            let sql = format!("SELECT x FROM {v}");
            vec![parse("", &sql), bind("", ""), execute(""), sync()]
        },
        |v| format!("SELECT x FROM {v}"),
        "SELECT 'locks=' || count(*) || ' key=' || coalesce(max(objid)::text, '-') \
         FROM pg_catalog.pg_locks WHERE locktype = 'advisory' AND pid = pg_catalog.pg_backend_pid()",
    )
    .await;
    assert!(refused.contains("42501"), "the rows are refused: {refused}");
    // s9: the session ends (its backend, and the locks, go with it; see
    // `a_failed_unlock_ends_the_session` for the locks seen gone from another session).
    assert!(
        locks.contains("locks=0")
            || (refused.contains("SFATAL") && refused.contains("the session is closed")),
        "no advisory lock left: {refused} / {locks}"
    );
}

// ---- 3. Non-transactional effects the wrap's ROLLBACK does not undo ----

/// LEAK (accomplice). The wrap's ROLLBACK undoes settings, and `pg_advisory_unlock_all` frees
/// session locks, but a prepared statement is not transactional either: the replaced view's
/// function `EXECUTE`s `PREPARE "<values>" AS SELECT 1` (plpgsql runs it through SPI). The result
/// is refused (catalog changed), timebox rolls back and unlocks — the prepared statement stays, and
/// `pg_prepared_statements` shows its name (or text) to the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_prepared_statement_made_by_refused_code_survives_the_rollback() {
    let _catalog = common::masking::catalog_lock().write().await;
    let (refused, listed) = across(
        "pp",
        |v, t| {
            to_function(
                v,
                t,
                &format!(
                    "EXECUTE format('PREPARE %I AS SELECT 1', {}); RETURN 'y';",
                    values(t)
                ),
            )
        },
        |v| vec![query(&format!("SELECT x FROM {v}"))],
        |v| format!("SELECT x FROM {v}"),
        "SELECT name FROM pg_catalog.pg_prepared_statements",
    )
    .await;
    assert!(refused.contains("42501"), "the rows are refused: {refused}");
    assert!(!leaked(&refused), "{refused}");
    assert!(
        !leaked(&listed),
        "pg_prepared_statements after the rollback: {listed}"
    );
}

/// LEAK (accomplice), the same root cause with rows: the engineer's own `PREPARE p AS SELECT
/// 'x'::text AS x` is recorded by timebox (`MaskJudgements`, its text judged). The replaced view's
/// function swaps it through SPI (`DEALLOCATE p; PREPARE p AS SELECT upper(secret) …`); its result
/// is refused and rolled back, `p` stays swapped. `EXECUTE p`: the copy changed since `p` was
/// judged, so timebox checks `p`'s recorded text again — `SELECT 'x'` passes — and PostgreSQL runs
/// the swapped statement: a computed column (table OID 0), in clear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_prepared_statement_swapped_by_refused_code_runs_on_execute() {
    let _catalog = common::masking::catalog_lock().write().await;
    let t = unique_name("s9ra_sw_t");
    let v = unique_name("s9ra_sw_v");
    let inst = start(&[&t], setup(&t, &[&v])).await;
    let (mut s, mut buf) = raw(&inst).await;
    let prepared = exchange(&mut s, &mut buf, &[query("PREPARE p AS SELECT 'x'::text AS x")]).await;
    assert!(prepared.contains("C:PREPARE"), "{prepared}");
    let a = accomplice().await;
    let body = format!(
        "EXECUTE 'DEALLOCATE p'; EXECUTE 'PREPARE p AS SELECT upper(secret) AS x FROM public.{t}'; RETURN 'y';"
    );
    let sql = format!("SELECT x FROM {v}");
    let (refused, mut s, mut buf) = across_a_lock(
        &a,
        &to_function(&v, &t, &body),
        &sql,
        raw_exchange(s, buf, vec![query(&sql)]),
    )
    .await;
    let executed = exchange(&mut s, &mut buf, &[query("EXECUTE p")]).await;
    let _ = inst.shutdown().await;
    eprintln!("{refused} / {executed}");
    assert!(refused.contains("42501"), "the rows are refused: {refused}");
    assert!(!leaked(&executed), "EXECUTE p: {executed}");
}

/// Regression (s9 third attack; it leaked before the fix). The wrap releases a refused
/// statement's session advisory locks with `SELECT pg_catalog.pg_advisory_unlock_all()` and
/// dropped its answer whatever it was: when that failed — here the accomplice's migration also
/// revoked EXECUTE on it from PUBLIC — the locks (keys encoding the values) stayed, and the session
/// went on. A release that fails ends the session (the wrap's unit tests). Since s10 the replaced
/// view's code does not run at all: timebox holds the view's lock before the statement runs and
/// finds the catalog changed, so no advisory lock is ever taken and the session goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_unlock_ends_the_session() {
    let _catalog = common::masking::catalog_lock().write().await;
    let t = unique_name("s9ra_ul_t");
    let v = unique_name("s9ra_ul_v");
    let inst = start(&[&t], setup(&t, &[&v])).await;
    let (s, buf) = raw(&inst).await;
    let a = accomplice().await;
    let body = format!("PERFORM pg_advisory_lock(ascii({})); RETURN 'y';", values(&t));
    let hold = format!(
        "REVOKE EXECUTE ON FUNCTION pg_catalog.pg_advisory_unlock_all() FROM PUBLIC; {}",
        to_function(&v, &t, &body)
    );
    let sql = format!("SELECT x FROM {v}");
    let frames = vec![query(&sql)];
    let (ended, after) = across_a_lock(&a, &hold, &sql, async move {
        let (mut s, mut buf) = (s, buf);
        let refused = exchange(&mut s, &mut buf, &frames).await;
        let after = exchange(&mut s, &mut buf, &[query("SELECT 'still here'")]).await;
        (refused, after)
    })
    .await;
    let locks = common::pg::scalar(
        &a,
        "SELECT count(*) FROM pg_catalog.pg_locks WHERE locktype = 'advisory'",
    )
    .await;
    // Restored before anything can fail: the cluster is shared by this binary's tests.
    a.batch_execute("GRANT EXECUTE ON FUNCTION pg_catalog.pg_advisory_unlock_all() TO PUBLIC")
        .await
        .unwrap();
    let gone = locks == "0";
    let _ = inst.shutdown().await;
    eprintln!("{ended} / {after}");
    assert!(ended.contains("42501"), "the statement is refused: {ended}");
    assert!(ended.contains("it did not run"), "{ended}");
    assert!(!leaked(&ended), "{ended}");
    assert!(after.contains("still here"), "the session goes on: {after}");
    assert!(gone, "no advisory lock was ever taken: {locks}");
}

/// Closed (s10; open in s9: accomplice, a second session of the engineer). Whatever timebox did at
/// the refused statement's end (rollback, unlock, ending the session), its code ran before: what
/// it made visible to other sessions while it ran was seen. The replaced view's function sets
/// `application_name` to the values (in `pg_stat_activity` at once) and sleeps; the engineer's
/// second session reads `pg_stat_activity` meanwhile. Now timebox locks the view before the
/// statement runs and confirms the catalog in the same transaction: the statement never runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_a_second_session_does_not_see_code_of_a_view_replaced_while_waiting() {
    let _catalog = common::masking::catalog_lock().write().await;
    let t = unique_name("s9ra_sa_t");
    let v = unique_name("s9ra_sa_v");
    let inst = start(&[&t], setup(&t, &[&v])).await;
    let (mut watcher, mut wbuf) = raw(&inst).await;
    let (s, buf) = raw(&inst).await;
    let a = accomplice().await;
    let body = format!(
        "PERFORM set_config('application_name', {}, false); PERFORM pg_sleep(3); RETURN 'y';",
        values(&t)
    );
    let sql = format!("SELECT x FROM {v}");
    a.batch_execute(&format!("BEGIN; {}", to_function(&v, &t, &body)))
        .await
        .unwrap();
    let running = tokio::spawn(raw_exchange(s, buf, vec![query(&sql)]));
    let b = accomplice().await;
    assert!(common::masking::until_lock_waiting(&b, &sql).await);
    a.batch_execute("COMMIT").await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let seen = exchange(
        &mut watcher,
        &mut wbuf,
        &[query(
            "SELECT application_name FROM pg_catalog.pg_stat_activity WHERE application_name <> ''",
        )],
    )
    .await;
    let (refused, _s, _buf) = running.await.unwrap();
    let _ = inst.shutdown().await;
    eprintln!("{refused} / {seen}");
    assert!(!leaked(&refused), "{refused}");
    assert!(!leaked(&seen), "the second session: {seen}");
    assert!(
        refused.contains("42501") && refused.contains("it did not run"),
        "{refused}"
    );
}

/// Closed (s10). As above, in the extended protocol: the statement parsed and described before the
/// accomplice began, then Bind/Execute/Sync while the view's replacement holds its lock. Before s10
/// the Bind waited, planned the new definition and its Execute ran the function (the batch was then
/// refused and the session ended, but the second session had seen the values). Now timebox's lock
/// block goes ahead of the Bind: it waits instead, finds the catalog changed, and the batch runs
/// nothing; the session goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_a_bind_waiting_for_a_replaced_view_never_runs_its_code() {
    let _catalog = common::masking::catalog_lock().write().await;
    let t = unique_name("s10ra_bd_t");
    let v = unique_name("s10ra_bd_v");
    let inst = start(&[&t], setup(&t, &[&v])).await;
    let (mut watcher, mut wbuf) = raw(&inst).await;
    let (mut s, mut buf) = raw(&inst).await;
    let sql = format!("SELECT x FROM {v}");
    let parsed = exchange(&mut s, &mut buf, &[parse("s10p", &sql), sync()]).await;
    assert!(parsed.contains("1:"), "{parsed}");
    let a = accomplice().await;
    let body = format!(
        "PERFORM set_config('application_name', {}, false); PERFORM pg_sleep(3); RETURN 'y';",
        values(&t)
    );
    a.batch_execute(&format!("BEGIN; {}", to_function(&v, &t, &body)))
        .await
        .unwrap();
    let running = tokio::spawn(async move {
        let out = exchange_or_close(&mut s, &mut buf, &[bind("", "s10p"), execute(""), sync()]).await;
        let after = exchange_or_close(&mut s, &mut buf, &[query("SELECT 'still here'")]).await;
        (out, after)
    });
    let b = accomplice().await;
    assert!(common::masking::until_lock_waiting(&b, &sql).await);
    a.batch_execute("COMMIT").await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let seen = exchange(
        &mut watcher,
        &mut wbuf,
        &[query(
            "SELECT application_name FROM pg_catalog.pg_stat_activity WHERE application_name <> ''",
        )],
    )
    .await;
    let (refused, after) = running.await.unwrap();
    let _ = inst.shutdown().await;
    eprintln!("{refused} / {after} / {seen}");
    assert!(!leaked(&refused), "{refused}");
    assert!(!leaked(&seen), "the second session: {seen}");
    assert!(
        refused.contains("42501") && refused.contains("it did not run"),
        "{refused}"
    );
    assert!(after.contains("still here"), "the session goes on: {after}");
}

/// Held. `DEALLOCATE` and `PREPARE` are not transactional: in `DEALLOCATE p; PREPARE p AS SELECT
/// upper(x) AS x FROM v; SELECT 1/0` PostgreSQL keeps the new `p` although the string fails (and
/// the wrap rolls back). timebox records no PREPARE of a failed Query but still applies its
/// DEALLOCATE (s8: forgetting only refuses more), so after `v` is replaced `EXECUTE p` is refused
/// ("no checked text") rather than checked against the old text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_a_failed_string_that_swaps_a_prepared_statement_forgets_it() {
    let _catalog = common::masking::catalog_lock().write().await;
    let t = unique_name("s9ra_fp_t");
    let v = unique_name("s9ra_fp_v");
    let inst = start(&[&t], setup(&t, &[&v])).await;
    let (mut s, mut buf) = raw(&inst).await;
    let first = exchange(&mut s, &mut buf, &[query("PREPARE p AS SELECT 'x'::text AS x")]).await;
    assert!(first.contains("C:PREPARE"), "{first}");
    let swap = format!("DEALLOCATE p; PREPARE p AS SELECT upper(x) AS x FROM {v}; SELECT 1/0");
    let failed = exchange(&mut s, &mut buf, &[query(&swap)]).await;
    let listed = exchange(
        &mut s,
        &mut buf,
        &[query("SELECT statement FROM pg_catalog.pg_prepared_statements")],
    )
    .await;
    admin_psql(common::masking::to_secret(&v, &t)).await;
    let executed = exchange(&mut s, &mut buf, &[query("EXECUTE p")]).await;
    let _ = inst.shutdown().await;
    eprintln!("{failed} / {listed} / {executed}");
    // s10: a masked string holds one statement that reads or runs: the swap is refused before
    // anything of it runs, and `p` stays the statement timebox checked.
    assert!(
        failed.contains("42501") && failed.contains("would be a second"),
        "{failed}"
    );
    assert!(!leaked(&executed), "EXECUTE p: {executed}");
    assert!(
        executed.contains("C:SELECT 1") || executed.contains("no checked text"),
        "{executed}"
    );
}

/// An instance with role `s9ra` (read, write) on the write user, masking `secret` of `t`; `t`,
/// view `v` and a plain table `<t>_w (a text)` the write user may fill and read.
async fn start_writer(t: &str, v: &str) -> TestInstance {
    admin_psql(format!(
        "{} GRANT SELECT ON public.{t}, public.{v} TO {WRITE_USER};
         CREATE TABLE public.{t}_w (a text); GRANT SELECT, INSERT ON public.{t}_w TO {WRITE_USER};",
        setup(t, &[v])
    ))
    .await;
    let role = role_with(&[t], "\"read\", \"write\"")
        .replace(READ_USER, WRITE_USER)
        .replace(READ_PASSWORD, WRITE_PASSWORD);
    start_over(&[], role).await
}

/// LEAK (accomplice; a masked role with `write`). `INSERT INTO w SELECT x FROM v` over a plain
/// view is allowed, and answers CommandComplete only: no RowDescription, so no second check. It
/// waits for the accomplice's lock, runs on the replaced view (`x` = the values), nothing is
/// refused, the wrap COMMITs, and `SELECT a FROM w` reads a plain column.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_insert_select_from_a_replaced_view_is_never_rechecked() {
    let _catalog = common::masking::catalog_lock().write().await;
    let t = unique_name("s9ra_is_t");
    let v = unique_name("s9ra_is_v");
    let inst = start_writer(&t, &v).await;
    let (s, buf) = raw(&inst).await;
    let a = accomplice().await;
    let sql = format!("INSERT INTO {t}_w (a) SELECT x FROM {v}");
    let (inserted, mut s, mut buf) = across_a_lock(
        &a,
        &common::masking::to_secret(&v, &t),
        &sql,
        raw_exchange(s, buf, vec![query(&sql)]),
    )
    .await;
    let read = exchange(&mut s, &mut buf, &[query(&format!("SELECT a FROM {t}_w"))]).await;
    let _ = inst.shutdown().await;
    eprintln!("{inserted} / {read}");
    assert!(!leaked(&inserted), "{inserted}");
    assert!(!leaked(&read), "SELECT from the written table: {read}");
}

// ---- 4. A string timebox does not wrap commits what the refused statement did ----

/// Regression (s9 third attack; it leaked before the fix). A Query string with a statement the
/// wrap does not take (`DISCARD PLANS`, `SET TRANSACTION …`) and that was not transaction control
/// went unwrapped: its implicit transaction committed before its ReadyForQuery, so the replaced
/// view's `pg_notify` reached the engineer's other session, in clear, before timebox ended the
/// refusing session. Such a string is refused to masked roles before it runs now (send the
/// statement alone): the engineer's other session hears nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_unwrapped_string_commits_a_notification_to_another_session() {
    let _catalog = common::masking::catalog_lock().read().await;
    let t = unique_name("s9ra_nt_t");
    let v = unique_name("s9ra_nt_v");
    let inst = start(&[&t], setup(&t, &[&v])).await;
    let (mut listener, mut lbuf) = raw(&inst).await;
    let listening = exchange(&mut listener, &mut lbuf, &[query("LISTEN s9ra_channel")]).await;
    assert!(listening.contains("C:LISTEN"), "{listening}");
    let (mut s, mut buf) = raw(&inst).await;
    let mut refused = String::new();
    for sql in [
        format!("DISCARD PLANS; SELECT x FROM {v}"),
        format!("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ; SELECT x FROM {v}"),
        format!("ROLLBACK; SELECT x FROM {v}"),
    ] {
        let out = exchange(&mut s, &mut buf, &[query(&sql)]).await;
        assert!(
            out.contains("42501") && out.contains("must be a Query of its own"),
            "{sql}: {out}"
        );
        refused.push_str(&out);
    }
    let heard = exchange(&mut listener, &mut lbuf, &[query("SELECT 1")]).await;
    let _ = inst.shutdown().await;
    assert!(!heard.contains("A:"), "the engineer's other session: {heard}");
    assert!(!leaked(&refused) && !leaked(&heard), "{refused} / {heard}");
}

// ---- 5. FunctionCall ('F') of a masked role allowed the admin class ----

/// A FunctionCall message: function `oid`, text arguments, text result.
fn function_call(oid: u32, args: &[&str]) -> BytesMut {
    let mut b = BytesMut::new();
    b.put_u32(oid);
    b.put_i16(0); // argument format codes: all text
    b.put_i16(args.len() as i16);
    for a in args {
        b.put_i32(a.len() as i32);
        b.put_slice(a.as_bytes());
    }
    b.put_i16(0); // result format: text
    msg(b'F', &b)
}

/// LEAK (no accomplice; a masked role whose classes include `admin`, which the config accepts).
/// "Code the statement text does not show is refused to masked roles" (`DO`, `CALL`, …), and
/// direct calls of query-running built-ins are refused whatever the role's classes — but the
/// fast-path FunctionCall message is judged by class only (`Interceptor::on_function_call`: Forward
/// when the role has `admin`). Calling `pg_catalog.query_to_xml` by OID runs any query over the
/// masked table; its answer (a FunctionCallResponse) is no RowDescription/DataRow, so it goes as is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_function_call_message_of_a_masked_admin_role() {
    let _catalog = common::masking::catalog_lock().write().await;
    let t = unique_name("s9ra_fc_t");
    admin_psql(setup(&t, &[])).await;
    let inst = start_over(&[], role_with(&[&t], "\"read\", \"admin\"")).await;
    let a = accomplice().await;
    let oid: u32 = common::pg::scalar(
        &a,
        "SELECT 'pg_catalog.query_to_xml(text,boolean,boolean,text)'::regprocedure::oid::text",
    )
    .await
    .parse()
    .unwrap();
    let (mut s, mut buf) = raw(&inst).await;
    let masked = exchange(&mut s, &mut buf, &[query(&format!("SELECT secret FROM {t}"))]).await;
    let sql = format!("SELECT secret FROM public.{t}");
    let called = exchange(&mut s, &mut buf, &[function_call(oid, &[&sql, "f", "f", ""])]).await;
    let _ = inst.shutdown().await;
    eprintln!("{masked} / {called}");
    assert!(masked.contains("***"), "masked as a column: {masked}");
    assert!(!leaked(&called), "FunctionCall query_to_xml: {called}");
}

// ---- 6. A setting reported at timebox's own COMMIT is never seen by the lexing watch ----

/// LEAK (accomplice once; every read after it needs none). timebox reads statements with
/// `standard_conforming_strings = on` and ends a session whose upstream reports it `off`
/// (`backend::held_frame_rest`, `b'S'`). But the frames answering timebox's own COMMIT are
/// dropped by the wrap before that watch (`WrapStep::Drop` in `Closing`: only E/A/N pass), and a
/// `WITH HOLD` cursor's query runs at that COMMIT: a replaced view's function turns the setting
/// off there, its ParameterStatus is dropped, and the session goes on with PostgreSQL lexing
/// backslashes. Then `SELECT 'z\', ' , upper(secret) AS s FROM t --'` is two string literals
/// to timebox (pg_query and sqlparser) and `SELECT 'z'', ', upper(secret) AS s FROM t` to
/// PostgreSQL: a computed column (table OID 0), sent in clear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_lexing_setting_changed_at_timebox_commit_is_never_seen() {
    let _catalog = common::masking::catalog_lock().write().await;
    let t = unique_name("s9ra_sc_t");
    let v = unique_name("s9ra_sc_v");
    let inst = start(&[&t], setup(&t, &[&v])).await;
    let (s, buf) = raw(&inst).await;
    let a = accomplice().await;
    let body = "PERFORM set_config('standard_conforming_strings', 'off', false); RETURN 'y';";
    let declare = format!("DECLARE c CURSOR WITH HOLD FOR SELECT x FROM {v}");
    let (declared, mut s, mut buf) = across_a_lock(
        &a,
        &to_function(&v, &t, body),
        "DECLARE c",
        raw_exchange(s, buf, vec![query(&declare)]),
    )
    .await;
    let shown = exchange(&mut s, &mut buf, &[query("SHOW standard_conforming_strings")]).await;
    let sql = format!("SELECT 'z\\', ' , upper(secret) AS s FROM {t} --'");
    let read = exchange(&mut s, &mut buf, &[query(&sql)]).await;
    let _ = inst.shutdown().await;
    eprintln!("{declared} / {shown} / {sql} => {read}");
    assert!(!leaked(&read), "{read}");
}

// ---- 7. The wrap's frame accounting ----

/// Regression (s9 third attack: a hang, not a leak). `COPY … FROM STDIN` is wrappable, and the
/// client's frames waited while a wrapped Query ran (`TxWrap::holding`): the server's
/// CopyInResponse asked for CopyData that timebox held until the Query was over, which it never
/// was. The wrap lets the client's data through once the server asks for it now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_from_stdin_sent_after_its_copy_in_response_is_answered() {
    let _catalog = common::masking::catalog_lock().write().await;
    let t = unique_name("s9ra_cp_t");
    admin_psql(format!(
        "{} GRANT INSERT ON public.{t} TO {WRITE_USER}; GRANT SELECT ON public.{t} TO {WRITE_USER};",
        setup(&t, &[])
    ))
    .await;
    let role = role_with(&[&t], "\"read\", \"write\"")
        .replace(READ_USER, WRITE_USER)
        .replace(READ_PASSWORD, WRITE_PASSWORD);
    let inst = start_over(&[], role).await;
    let (mut s, mut buf) = raw(&inst).await;
    send(&mut s, &[query(&format!("COPY {t} (id, secret) FROM STDIN"))]).await;
    let mut data = msg(b'd', b"2\tcopied\n");
    data.extend_from_slice(&msg(b'c', b""));
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    send(&mut s, &[data]).await;
    let out = tokio::time::timeout(std::time::Duration::from_secs(10), answer(&mut s, &mut buf)).await;
    let _ = inst.shutdown().await;
    eprintln!("{out:?}");
    assert!(out.is_ok(), "the COPY is answered");
}

// ---- 8. Shapes that held ----

/// Held. Inside the client's block a refused result fails the block (`FAIL_BLOCK`); a savepoint
/// taken before it lets the client recover the block with `ROLLBACK TO SAVEPOINT`, but that
/// also undoes what the refused statement's code set (it ran after the savepoint).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_rollback_to_a_savepoint_after_a_refused_result_keeps_nothing() {
    let _catalog = common::masking::catalog_lock().write().await;
    let t = unique_name("s9ra_sp_t");
    let v = unique_name("s9ra_sp_v");
    let inst = start(&[&t], setup(&t, &[&v])).await;
    let (mut s, mut buf) = raw(&inst).await;
    for sql in ["BEGIN", "SAVEPOINT a"] {
        let out = exchange(&mut s, &mut buf, &[query(sql)]).await;
        assert!(out.ends_with("Z:T "), "{sql}: {out}");
    }
    let a = accomplice().await;
    let sql = format!("SELECT x FROM {v}");
    let (refused, mut s, mut buf) = across_a_lock(
        &a,
        &to_function(&v, &t, &set_leak(&t)),
        &sql,
        raw_exchange(s, buf, vec![query(&sql)]),
    )
    .await;
    let mut after = String::new();
    for sql in [
        "ROLLBACK TO SAVEPOINT a",
        "SHOW s9ra.leak",
        "COMMIT",
        "SHOW s9ra.leak",
    ] {
        after.push_str(&exchange(&mut s, &mut buf, &[query(sql)]).await);
    }
    let _ = inst.shutdown().await;
    eprintln!("{refused} / {after}");
    assert!(
        refused.contains("42501") && refused.ends_with("Z:E "),
        "{refused}"
    );
    assert!(!leaked(&refused) && !leaked(&after), "{after}");
}

/// Held. A second Query pipelined behind a wrapped Query whose result is refused (in the same
/// write) waits for the wrap's ROLLBACK: it does not read what the refused statement's code set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_a_pipelined_query_waits_for_the_rollback() {
    let _catalog = common::masking::catalog_lock().write().await;
    let t = unique_name("s9ra_pq_t");
    let v = unique_name("s9ra_pq_v");
    let inst = start(&[&t], setup(&t, &[&v])).await;
    let (s, buf) = raw(&inst).await;
    let a = accomplice().await;
    let sql = format!("SELECT x FROM {v}");
    let frames = vec![query(&sql), query("SHOW s9ra.leak")];
    let (both, _s, _buf) = across_a_lock(&a, &to_function(&v, &t, &set_leak(&t)), &sql, async move {
        let (mut s, mut buf) = (s, buf);
        send(&mut s, &frames).await;
        let first = answer(&mut s, &mut buf).await;
        let second = answer(&mut s, &mut buf).await;
        (format!("{first} / {second}"), s, buf)
    })
    .await;
    let _ = inst.shutdown().await;
    eprintln!("{both}");
    assert!(both.contains("42501"), "{both}");
    assert!(!leaked(&both), "{both}");
}

/// Held. Queries that run nothing (empty, comments only, a lone `;`) and an unwrappable
/// transaction-control Query between wrapped ones leave the wrap's accounting aligned: masking
/// still applies to the Query after them, which ends with `Z:I`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_empty_and_comment_queries_keep_the_wrap_aligned() {
    let _catalog = common::masking::catalog_lock().write().await;
    let t = unique_name("s9ra_em_t");
    let inst = start(&[&t], setup(&t, &[])).await;
    let (mut s, mut buf) = raw(&inst).await;
    let read = format!("SELECT id, secret FROM {t}");
    let frames = vec![
        query(""),
        query("-- nothing here"),
        query(";"),
        query("/* c */ BEGIN"),
        query(&read),
        query("ROLLBACK"),
        query(&read),
    ];
    send(&mut s, &frames).await;
    let mut outs = Vec::new();
    for _ in 0..frames.len() {
        outs.push(answer(&mut s, &mut buf).await);
    }
    let _ = inst.shutdown().await;
    eprintln!("{outs:?}");
    assert!(outs[4].contains("***") && outs[4].ends_with("Z:T "), "{outs:?}");
    assert!(outs[6].contains("***") && outs[6].ends_with("Z:I "), "{outs:?}");
    for out in &outs {
        assert!(!leaked(out), "{out}");
    }
}

/// Held. A `WITH HOLD` cursor planned on a replaced view runs its code at timebox's COMMIT, whose
/// notices and errors the wrap passes to the client (`forward_errors`); the replaced view's
/// `RAISE NOTICE` of the values there is still judged as the DECLARE's Query's (its second check
/// finds the catalog changed) and dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_a_notice_raised_at_timebox_commit_is_dropped() {
    let _catalog = common::masking::catalog_lock().write().await;
    let (declared, later) = across(
        "rn",
        |v, t| to_function(v, t, &format!("RAISE NOTICE 'got %', {}; RETURN 'y';", values(t))),
        |v| {
            vec![query(&format!(
                "DECLARE c CURSOR WITH HOLD FOR SELECT x FROM {v}"
            ))]
        },
        |_| "DECLARE c".into(),
        "SELECT 1",
    )
    .await;
    assert!(!leaked(&declared) && !leaked(&later), "{declared} / {later}");
}
