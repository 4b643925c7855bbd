//! Column masking, fifth outside attack (s10, issue 15) after commit 395b743 (the lock block
//! pipelined ahead of a masked role's Query: `relay::lock_prelude`). Same harness and accomplice
//! model as `tests/masking_reattack3.rs`: a masked role (`s10ra`, column `secret` of its tables
//! masked with `redact`), an accomplice — the cluster's superuser outside timebox — and the
//! engineer's second session watching `pg_stat_activity` through timebox.
//!
//! `closed_*`: a leak found by this attack (each failed against 395b743: the secret reached the
//! engineer), closed by the fixes that followed; `open_*`: a leak still open (ignored);
//! `held_*`: a shape tried that did not leak.
//!
//! Closed (s10): the client's `BEGIN` is followed by a line break in the prelude (§1); kinds
//! `LOCK TABLE` does not take are held to the transaction's end by an empty `TABLESAMPLE` read
//! (materialized views, tables granted by column) or `pg_sequence_last_value` (§2, §3); a change of
//! `search_path` only as a string's last statement (§4); one statement that reads or runs per
//! masked string (§7); the block refuses any isolation level but READ COMMITTED, and timebox's own
//! `BEGIN` is READ COMMITTED (§8); statements naming a session's temporary schema (`pg_temp_N`)
//! are refused (§6). Closed in s11: §10 (naming a domain or composite type is refused: its
//! definition can change while the statement runs, without a lock timebox can hold).
//!
//! Found against 395b743 (11 repros, all deterministic, each run twice):
//! - the block does not run: a leading `BEGIN --c\n` comments it out (§1);
//! - the block runs but leaves a window the accomplice holds open: kinds "locked" by
//!   `pg_relation_size` (materialized views, sequences, relations granted by column) are not
//!   held (§2, §3); names resolved before a `SET search_path` in the string (§4); statements after
//!   the first of a string parsed after DDL committed meanwhile (§7); a row type looked up while
//!   the statement runs (§10);
//! - the block's fingerprint does not see the change: REPEATABLE READ / SERIALIZABLE read it
//!   under the transaction's snapshot (§8); temporary composite types and other sessions' empty
//!   temporary tables are left out of it but usable (§6).

mod common;

use common::attack::{leaking_function, lock_waiting, view, watch, Attack};
use common::cluster::{unique_name, READ_USER};
use common::frames::{exchange, query};
use common::masking::{accomplice, admin_psql, raw_exchange, start_over};
use common::TestInstance;

/// The value every table of these probes holds in its masked column `secret`.
const SECRET: &str = "s10ra-secret-value";

/// The attack's masked role and secret (the shared harness: `common::attack`).
const ATTACK: Attack = Attack {
    role: "s10ra",
    secret: SECRET,
};

/// Waits (up to 20 s) until the engineer's statement `SELECT pg_catalog.pg_sleep(2)…` sleeps, or
/// has been answered already (refused before it ran); whether it slept.
async fn until_sleeping<T>(a: &tokio_postgres::Client, running: &tokio::task::JoinHandle<T>) -> bool {
    let sql = "SELECT count(*) FROM pg_catalog.pg_stat_activity \
               WHERE query LIKE 'SELECT pg_catalog.pg_sleep(2)%' AND wait_event = 'PgSleep'";
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while tokio::time::Instant::now() < deadline && !running.is_finished() {
        if common::pg::scalar(a, sql).await != "0" {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    false
}

/// The s9 open leak's shape, for one spelling: view `target` (as created, e.g. `public.v`) is
/// replaced by the accomplice in an open transaction by one whose `x` calls a leaking function;
/// the engineer sends `sql` (which reads it); once a backend waits for a lock (`like`), the
/// accomplice commits; 1.5 s later the watcher reads `pg_stat_activity`. (answer, watched, waited)
async fn replaced_while_waiting(
    inst: &TestInstance,
    t: &str,
    target: &str,
    f: &str,
    sql: &str,
    like: &str,
) -> (String, String, bool) {
    let (mut watcher, mut wbuf) = ATTACK.raw(inst).await;
    let (s, buf) = ATTACK.raw(inst).await;
    let a = accomplice().await;
    a.batch_execute(&format!(
        "BEGIN; {} CREATE OR REPLACE VIEW {target} AS SELECT id, {f}() AS x FROM public.{t}",
        leaking_function(f, t, "", "text", "'y'")
    ))
    .await
    .unwrap();
    let running = tokio::spawn(raw_exchange(s, buf, vec![query(sql)]));
    let b = accomplice().await;
    let waited = lock_waiting(&b, like).await;
    a.batch_execute("COMMIT").await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    let seen = watch(&mut watcher, &mut wbuf).await;
    let (answer, _s, _buf) = tokio::time::timeout(std::time::Duration::from_secs(60), running)
        .await
        .expect("the statement ends")
        .unwrap();
    (answer, seen, waited)
}

// ---- 1. The string's own BEGIN, sent ahead, swallows the lock block ----

/// LEAK (accomplice, a second session; deterministic). A string opening its own block is sent as
/// `{leading BEGIN}; DO $timebox_lock$ …` where the leading BEGIN is the first statement's text
/// as `pg_query::split_with_parser` cuts it, trimmed. `BEGIN --c\n; SELECT x FROM v`: the first
/// statement's text is `BEGIN --c`, so the prelude is `BEGIN --c; DO $timebox_lock$ …` on one
/// line — the lock block is a comment. The prelude answers BEGIN, the wrap is satisfied, and the
/// client's SELECT runs unlocked: it waits for the accomplice's replacement of `v`, runs its
/// function (the s9 open leak again), and the watcher sees the secret in `application_name`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_a_line_comment_after_the_leading_begin_comments_out_the_lock_block() {
    let _catalog = common::masking::catalog_lock().write().await;
    let t = unique_name("s10ra_lc_t");
    let v = unique_name("s10ra_lc_v");
    let inst = ATTACK
        .start(&[&t], ATTACK.setup(&t) + &view(&format!("public.{v}")))
        .await;
    let sql = format!("BEGIN --c\n; SELECT x FROM {v}");
    let (answer, seen, waited) = replaced_while_waiting(
        &inst,
        &t,
        &format!("public.{v}"),
        &format!("public.{v}_f"),
        &sql,
        "BEGIN --c%",
    )
    .await;
    let _ = inst.shutdown().await;
    eprintln!("answer: {answer}\nwatched: {seen}");
    assert!(waited, "the client's statement waited for the lock");
    assert!(!ATTACK.leaked(&answer), "{answer}");
    assert!(
        !ATTACK.leaked(&seen),
        "the engineer's second session saw the replaced view's code run: {seen}"
    );
}

// ---- 2. Kinds locked "by OID": pg_relation_size releases its lock at once ----

/// LEAK (accomplice in two sessions, a second session of the engineer; deterministic). The block
/// "locks" a materialized view with `pg_relation_size(oid)`, which opens the relation with
/// ACCESS SHARE and *closes it releasing the lock*: nothing is held past that call. The engineer
/// sends `SELECT x FROM m, p` (m a materialized view over nothing, p a table). Accomplice A1
/// holds p (ACCESS EXCLUSIVE, no catalog change): the block passes m, then waits at `LOCK p`.
/// Meanwhile A2 drops m and creates a view m whose `x` calls a leaking function (uncommitted: it
/// holds m's old OID). A1 rolls back: the block's fingerprint matches (A2 is not committed), the
/// block ends, and the statement waits for m's lock (A2). A2 commits: the statement looks the
/// name up again, finds the new view and runs its code; the watcher sees the secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_a_materialized_view_is_not_held_locked_and_is_replaced_after_the_block() {
    let _catalog = common::masking::catalog_lock().write().await;
    let t = unique_name("s10ra_mv_t");
    let m = unique_name("s10ra_mv_m");
    let p = unique_name("s10ra_mv_p");
    let inst = ATTACK
        .start(
            &[&t],
            ATTACK.setup(&t)
                + &format!(
                    "CREATE MATERIALIZED VIEW public.{m} AS SELECT 1::int AS id, 'x'::text AS x;
                 CREATE TABLE public.{p} (n int); INSERT INTO public.{p} VALUES (1);
                 GRANT SELECT ON public.{m}, public.{p} TO {READ_USER};"
                ),
        )
        .await;
    let (mut watcher, mut wbuf) = ATTACK.raw(&inst).await;
    let (mut s, mut buf) = ATTACK.raw(&inst).await;
    let sql = format!("SELECT x FROM {m}, {p}");
    let before = exchange(&mut s, &mut buf, &[query(&sql)]).await;
    let a1 = accomplice().await;
    let a2 = accomplice().await;
    let b = accomplice().await;
    a1.batch_execute(&format!("BEGIN; LOCK TABLE public.{p} IN ACCESS EXCLUSIVE MODE"))
        .await
        .unwrap();
    let running = tokio::spawn(raw_exchange(s, buf, vec![query(&sql)]));
    eprintln!("before: {before}");
    let block_waited = lock_waiting(&b, "%DO $timebox_lock$%").await;
    eprintln!("block waited: {block_waited}");
    // s10: the block holds m (an empty TABLESAMPLE read) to its transaction's end, so A2's DROP
    // waits for it instead.
    let ddl = format!(
        "BEGIN; DROP MATERIALIZED VIEW public.{m}; {}
         CREATE VIEW public.{m} AS SELECT id, public.{m}_f() AS x FROM public.{t};
         GRANT SELECT ON public.{m} TO {READ_USER}; COMMIT",
        leaking_function(&format!("public.{m}_f"), &t, "", "text", "'y'")
    );
    let replacing = tokio::spawn(async move { a2.batch_execute(&ddl).await.map_err(|e| e.to_string()) });
    let a2_waited = lock_waiting(&b, "%DROP MATERIALIZED VIEW%").await;
    a1.batch_execute("ROLLBACK").await.unwrap();
    let (answer, _s, _buf) = running.await.unwrap();
    let replaced = replacing.await.unwrap();
    let seen = watch(&mut watcher, &mut wbuf).await;
    let _ = inst.shutdown().await;
    eprintln!("before: {before}\nanswer: {answer}\nwatched: {seen}\nreplaced: {replaced:?}");
    assert!(block_waited, "the lock block waited for p");
    assert!(
        a2_waited,
        "the accomplice's DROP waited for the block's hold on m"
    );
    assert!(
        answer.contains("C:SELECT 1"),
        "the statement read the materialized view: {answer}"
    );
    assert!(!ATTACK.leaked(&answer), "{answer}");
    assert!(
        replaced.is_ok(),
        "the replacement went through after the statement: {replaced:?}"
    );
    assert!(
        !ATTACK.leaked(&seen),
        "the engineer's second session saw the replacement's code run: {seen}"
    );
}

// ---- 3. The same lever for DDL on nothing named: a function overload ----

/// LEAK (accomplice in two sessions, a second session; deterministic). The README's "left" gap
/// (DDL taking no lock on the named relations, committed between the block's fingerprint and the
/// statement's parse) widened at will: a table the engineer may read only by column
/// (`GRANT SELECT (a)`; the test cluster's default privileges are revoked first) fails `has_table_privilege(…, 'SELECT')`, so the block takes
/// `pg_relation_size` (lock released) for it as for a materialized view. `SELECT round(a) AS r
/// FROM c, p`: A1 holds p, the block waits there; A2 takes c (`LOCK TABLE … ACCESS EXCLUSIVE`)
/// and creates `public.round(integer)` (an exact match beats `pg_catalog.round(numeric)`
/// whatever the search_path order); A1 rolls back, the block's fingerprint matches, the
/// statement waits for c; A2 commits; the statement parses `round(a)` as the new function,
/// which runs as the engineer and shows the secret to the watcher.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_a_column_granted_table_is_not_held_and_a_function_overload_lands_after_the_block() {
    let _catalog = common::masking::catalog_lock().write().await;
    let t = unique_name("s10ra_ov_t");
    let c = unique_name("s10ra_ov_c");
    let p = unique_name("s10ra_ov_p");
    let inst = ATTACK
        .start(
            &[&t],
            ATTACK.setup(&t)
                + &format!(
                    "CREATE TABLE public.{c} (a int, b int); INSERT INTO public.{c} VALUES (3, 4);
                 REVOKE ALL ON public.{c} FROM {READ_USER};
                 GRANT SELECT (a) ON public.{c} TO {READ_USER};
                 CREATE TABLE public.{p} (n int); INSERT INTO public.{p} VALUES (1);
                 GRANT SELECT ON public.{p} TO {READ_USER};"
                ),
        )
        .await;
    let (mut watcher, mut wbuf) = ATTACK.raw(&inst).await;
    let (mut s, mut buf) = ATTACK.raw(&inst).await;
    let sql = format!("SELECT round(a) AS r FROM {c}, {p}");
    let before = exchange(&mut s, &mut buf, &[query(&sql)]).await;
    let a1 = accomplice().await;
    let a2 = accomplice().await;
    let b = accomplice().await;
    a1.batch_execute(&format!("BEGIN; LOCK TABLE public.{p} IN ACCESS EXCLUSIVE MODE"))
        .await
        .unwrap();
    let running = tokio::spawn(raw_exchange(s, buf, vec![query(&sql)]));
    eprintln!("before: {before}");
    let block_waited = lock_waiting(&b, "%DO $timebox_lock$%").await;
    eprintln!("block waited: {block_waited}");
    // s10: the block holds c (an empty TABLESAMPLE read) to its transaction's end, so A2's LOCK
    // waits for it; its overload is committed only after the statement.
    let ddl = format!(
        "BEGIN; LOCK TABLE public.{c} IN ACCESS EXCLUSIVE MODE; {} COMMIT",
        leaking_function("public.round", &t, "integer", "numeric", "$1")
    );
    let overloading = tokio::spawn(async move { a2.batch_execute(&ddl).await.map_err(|e| e.to_string()) });
    let a2_waited = lock_waiting(&b, "%LOCK TABLE public.%").await;
    a1.batch_execute("ROLLBACK").await.unwrap();
    let (answer, _s, _buf) = running.await.unwrap();
    let overloaded = overloading.await.unwrap();
    let seen = watch(&mut watcher, &mut wbuf).await;
    // The overload would break every later test's `round(int)`.
    admin_psql("DROP FUNCTION IF EXISTS public.round(integer)".to_owned()).await;
    let _ = inst.shutdown().await;
    eprintln!("before: {before}\nanswer: {answer}\nwatched: {seen}\noverloaded: {overloaded:?}");
    assert!(block_waited, "the lock block waited for p");
    assert!(
        a2_waited,
        "the accomplice's LOCK waited for the block's hold on c"
    );
    assert!(
        answer.contains("C:SELECT 1"),
        "the statement ran with the built-in round: {answer}"
    );
    assert!(!ATTACK.leaked(&answer), "{answer}");
    assert!(overloaded.is_ok(), "{overloaded:?}");
    assert!(
        !ATTACK.leaked(&seen),
        "the engineer's second session saw the overload's code run: {seen}"
    );
}

// ---- 4. search_path changed inside the string ----

/// LEAK (accomplice, a second session; deterministic, no second accomplice needed). The block
/// resolves names with the session's search_path *before the string runs*: `SET search_path =
/// ev, public; SELECT x FROM v` locks `public.v`, but the SELECT reads `ev.v`, which the
/// accomplice is replacing in an open transaction; the block does not wait, its fingerprint
/// matches, the statement waits for `ev.v` and, once the accomplice commits, runs the
/// replacement's code: the watcher sees the secret. The client gets 42501 "… ran on the target's
/// catalog as changed while it waited for its locks" afterwards (the result's second check).
/// Same with `SELECT set_config('search_path', …, false); SELECT x FROM v` presumably (not run).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_search_path_set_earlier_in_the_string_reads_an_unlocked_view() {
    let _catalog = common::masking::catalog_lock().write().await;
    let t = unique_name("s10ra_sp_t");
    let v = unique_name("s10ra_sp_v");
    let ev = unique_name("s10ra_sp_ev");
    let inst = ATTACK
        .start(
            &[&t],
            ATTACK.setup(&t)
                + &format!("CREATE SCHEMA {ev}; GRANT USAGE ON SCHEMA {ev} TO {READ_USER};")
                + &view(&format!("public.{v}"))
                + &view(&format!("{ev}.{v}")),
        )
        .await;
    let sql = format!("SET search_path = {ev}, public; SELECT x FROM {v}");
    let (answer, seen, waited) = replaced_while_waiting(
        &inst,
        &t,
        &format!("{ev}.{v}"),
        &format!("public.{v}_f"),
        &sql,
        "SET search_path%",
    )
    .await;
    let _ = inst.shutdown().await;
    eprintln!("answer: {answer}\nwatched: {seen}");
    // s10: refused before it runs (a change of search_path only as a string's last statement).
    assert!(!waited, "nothing waited");
    assert!(answer.contains("search_path must be the last"), "{answer}");
    assert!(!ATTACK.leaked(&answer), "{answer}");
    assert!(
        !ATTACK.leaked(&seen),
        "the second session saw the code run: {seen}"
    );
}

// ---- 5. Spellings and shapes of a name the block must lock ----

/// Held. The s9 open leak's shape (a view replaced in an open transaction; its function puts the
/// secret in `application_name`; the watcher looks) for spellings and shapes of the name the
/// classifier might miss or the block might resolve otherwise: `TABLE v`, `ONLY`, `v*`, a
/// database-qualified name, a mixed-case quoted name, a Unicode-escaped one, a quoted name with a
/// dot, CTEs (reading it; shadowing it in a sublink or in a sibling subquery), a scalar subquery,
/// LATERAL, UNION, `EXPLAIN ANALYZE`, `DECLARE … WITH HOLD`, `PREPARE` + `EXECUTE` in one string,
/// a string opening its block and ending with `ROLLBACK`, two statements. Each time the block
/// waits for the view, its fingerprint differs, and the statement does not run ("it did not run");
/// the Unicode-escaped name is refused by the sqlparser cross-check and `PREPARE p …; EXECUTE p`
/// in one string is refused ("did not see prepared"), both before running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_spellings_of_the_name_are_locked() {
    let _catalog = common::masking::catalog_lock().write().await;
    let t = unique_name("s10ra_sn_t");
    let inst = ATTACK.start(&[&t], ATTACK.setup(&t)).await;
    // (created view, as SQL; the statement, from the view's bare name)
    type Shape = (&'static str, fn(&str) -> (String, String));
    let shapes: Vec<Shape> = vec![
        ("table", |v| (format!("public.{v}"), format!("TABLE {v}"))),
        ("only", |v| {
            (format!("public.{v}"), format!("SELECT x FROM ONLY {v}"))
        }),
        ("star", |v| (format!("public.{v}"), format!("SELECT x FROM {v}*"))),
        ("db-qualified", |v| {
            (format!("public.{v}"), format!("SELECT x FROM shop.public.{v}"))
        }),
        ("mixed case", |v| {
            let q = format!("\"{}\"", v.to_uppercase());
            (format!("public.{q}"), format!("SELECT x FROM {q}"))
        }),
        ("unicode escape", |v| {
            (
                format!("public.{v}"),
                format!("SELECT x FROM U&\"\\0073{}\"", &v[1..]),
            )
        }),
        ("dot in quotes", |v| {
            let q = format!("\"{v}.d\"");
            (format!("public.{q}"), format!("SELECT x FROM public.{q}"))
        }),
        ("cte", |v| {
            (
                format!("public.{v}"),
                format!("WITH q AS (SELECT x FROM {v}) SELECT x FROM q"),
            )
        }),
        ("cte shadow in sublink", |v| {
            (
                format!("public.{v}"),
                format!("SELECT x FROM {v} WHERE EXISTS (WITH {v} AS (SELECT 1) SELECT 1 FROM {v})"),
            )
        }),
        ("cte shadow in sibling", |v| {
            (
                format!("public.{v}"),
                format!("SELECT b.x FROM (WITH {v} AS (SELECT 'a' AS x) SELECT x FROM {v}) a, {v} b"),
            )
        }),
        ("later cte of the same name", |v| {
            (
                format!("public.{v}"),
                format!("WITH q AS (SELECT x FROM {v}), {v} AS (SELECT 'a' AS x) SELECT x FROM q"),
            )
        }),
        ("scalar subquery", |v| {
            (format!("public.{v}"), format!("SELECT (SELECT x FROM {v}) AS x"))
        }),
        ("lateral", |v| {
            (
                format!("public.{v}"),
                format!("SELECT q.x FROM (SELECT 1) o, LATERAL (SELECT x FROM {v}) q"),
            )
        }),
        ("union", |v| {
            (
                format!("public.{v}"),
                format!("SELECT 'z' AS x UNION ALL SELECT x FROM {v}"),
            )
        }),
        ("explain analyze", |v| {
            (
                format!("public.{v}"),
                format!("EXPLAIN ANALYZE SELECT x FROM {v}"),
            )
        }),
        ("declare with hold", |v| {
            (
                format!("public.{v}"),
                format!("DECLARE c_{v} CURSOR WITH HOLD FOR SELECT x FROM {v}"),
            )
        }),
        ("prepare and execute", |v| {
            (
                format!("public.{v}"),
                format!("PREPARE p_{v} AS SELECT x FROM {v}; EXECUTE p_{v}"),
            )
        }),
        ("begin … rollback", |v| {
            (
                format!("public.{v}"),
                format!("BEGIN; SELECT x FROM {v}; ROLLBACK"),
            )
        }),
        ("two statements", |v| {
            (format!("public.{v}"), format!("SELECT 1; SELECT x FROM {v}"))
        }),
    ];
    let mut outs = Vec::new();
    let mut leaks = Vec::new();
    // One shape after another: shapes run at once change the catalog under each other's
    // statements, which are then refused for that instead of for their own view.
    for (i, (label, shape)) in shapes.iter().enumerate() {
        let v = unique_name(&format!("s10ra_sn{i}"));
        let (target, sql) = shape(&v);
        admin_psql(view(&target)).await;
        let like = format!("%{}%", &v["s10ra".len()..]);
        let f = format!("public.{v}_f");
        let (answer, seen, waited) = replaced_while_waiting(&inst, &t, &target, &f, &sql, &like).await;
        if ATTACK.leaked(&answer) || ATTACK.leaked(&seen) {
            leaks.push(*label);
        }
        outs.push(format!(
            "{label}: {sql}\n  waited {waited}: {answer}\n  watched: {seen}"
        ));
    }
    let _ = inst.shutdown().await;
    let all = outs.join("\n");
    eprintln!("{all}");
    assert!(leaks.is_empty(), "leaked: {leaks:?}\n{all}");
}

// ---- 6. Temporary composite types: out of the fingerprint, usable by other sessions ----

/// LEAK (accomplice, no timing, no second session; deterministic). The fingerprint leaves out temporary relations
/// that are not views *by schema name* — composite types (`pg_class` kind `c`) included, with
/// their `pg_attribute` rows and their `pg_type` row (the relation's `reltype`). But another
/// session may use a temporary composite type (USAGE on the schema granted). The accomplice
/// creates `pg_temp.ct (a int)` in its session and grants its schema; a domain `dom` over int
/// whose CHECK calls a function raising the masked values was created beforehand (the copy knows
/// it). The engineer casts a literal to `pg_temp_N.ct` (a type without user code in the copy).
/// The accomplice then adds an attribute of type `dom` to `ct` (`ALTER TYPE … ADD ATTRIBUTE`):
/// nothing the fingerprint counts changes, so the copy still judges `ct` clean; the engineer's
/// `SELECT '(1,2)'::pg_temp_N.ct` runs the domain's CHECK, whose error quotes the secret: it
/// reaches the engineer as the statement's ERROR (P0001 "leak <secret>"), the second check at
/// the error finding the fingerprint unchanged; `ROW(1, 2)::pg_temp_N.ct` likewise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_a_temporary_composite_type_altered_is_invisible_to_the_fingerprint() {
    let _catalog = common::masking::catalog_lock().write().await;
    let t = unique_name("s10ra_ct_t");
    let d = unique_name("s10ra_ct_d");
    let ct = unique_name("s10ra_ct_ct");
    let a = accomplice().await;
    admin_psql(
        ATTACK.setup(&t)
            + &format!(
                "CREATE FUNCTION public.{d}_f(int) RETURNS bool LANGUAGE plpgsql AS $f$ BEGIN \
           RAISE EXCEPTION 'leak %', (SELECT pg_catalog.string_agg(secret, ',') FROM public.{t}); END $f$;
         CREATE DOMAIN public.{d} AS int CHECK (public.{d}_f(VALUE));"
            ),
    )
    .await;
    a.batch_execute(&format!("CREATE TYPE pg_temp.{ct} AS (a int)"))
        .await
        .unwrap();
    let nsp = common::pg::scalar(&a, "SELECT pg_catalog.pg_my_temp_schema()::regnamespace::text").await;
    a.batch_execute(&format!("GRANT USAGE ON SCHEMA {nsp} TO {READ_USER}"))
        .await
        .unwrap();
    let inst = start_over(&[], ATTACK.role_with(&[&t])).await;
    let (mut s, mut buf) = ATTACK.raw(&inst).await;
    let warm = exchange(
        &mut s,
        &mut buf,
        &[query(&format!("SELECT '(1)'::{nsp}.{ct} AS c"))],
    )
    .await;
    a.batch_execute(&format!("ALTER TYPE pg_temp.{ct} ADD ATTRIBUTE b public.{d}"))
        .await
        .unwrap();
    let after = exchange(
        &mut s,
        &mut buf,
        &[query(&format!("SELECT '(1,2)'::{nsp}.{ct} AS c"))],
    )
    .await;
    let row = exchange(
        &mut s,
        &mut buf,
        &[query(&format!("SELECT ROW(1, 2)::{nsp}.{ct} AS c"))],
    )
    .await;
    let _ = inst.shutdown().await;
    eprintln!("warm: {warm}\nafter: {after}\nrow: {row}");
    assert!(!ATTACK.leaked(&warm), "{warm}");
    assert!(
        !ATTACK.leaked(&after),
        "the domain's CHECK ran on a type the copy judged clean: {after}"
    );
    assert!(!ATTACK.leaked(&row), "{row}");
}

// ---- 7. A string's later statements run after the block's one fingerprint ----

/// LEAK (accomplice, a second session; one accomplice session, no lock games; deterministic). The block reads
/// the fingerprint once, ahead of the whole string; its statements then run one after another in
/// that transaction, each parsed when its turn comes. `SELECT pg_sleep(2); SELECT round(id) AS r
/// FROM t`: while the first statement sleeps, the accomplice commits `public.round(integer)`
/// (no lock on anything named); the second statement, parsed after, calls it (an exact match
/// beats `pg_catalog.round(numeric)`), as the engineer: the watcher sees the secret. The client
/// gets 42501 "the rows of this result were not sent" (the second check), after the fact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_a_later_statement_of_the_string_is_parsed_after_ddl_committed_meanwhile() {
    let _catalog = common::masking::catalog_lock().write().await;
    let t = unique_name("s10ra_ls_t");
    let inst = ATTACK.start(&[&t], ATTACK.setup(&t)).await;
    let (mut watcher, mut wbuf) = ATTACK.raw(&inst).await;
    let (s, buf) = ATTACK.raw(&inst).await;
    let a = accomplice().await;
    let sql = format!("SELECT pg_catalog.pg_sleep(2); SELECT round(id) AS r FROM {t}");
    let running = tokio::spawn(raw_exchange(s, buf, vec![query(&sql)]));
    let sleeping = until_sleeping(&a, &running).await;
    a.batch_execute(&leaking_function("public.round", &t, "integer", "numeric", "$1"))
        .await
        .unwrap();
    if sleeping {
        tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    }
    let seen = watch(&mut watcher, &mut wbuf).await;
    let (answer, _s, _buf) = running.await.unwrap();
    admin_psql("DROP FUNCTION IF EXISTS public.round(integer)".to_owned()).await;
    let _ = inst.shutdown().await;
    eprintln!("answer: {answer}\nwatched: {seen}");
    // s10: refused before it runs (one statement that reads or runs per masked string).
    assert!(!sleeping, "nothing ran: {answer}");
    assert!(answer.contains("SELECT would be a second"), "{answer}");
    assert!(!ATTACK.leaked(&answer), "{answer}");
    assert!(
        !ATTACK.leaked(&seen),
        "the second session saw the overload run: {seen}"
    );
}

/// LEAK (accomplice, no timing, no second session; deterministic). The fingerprint's premise "no statement can
/// read another session's temporary table (PostgreSQL refuses it)" does not hold for an *empty*
/// one: `SELECT a FROM pg_temp_N.tt` from another session returns 0 rows, no error (nothing to
/// read from the other session's buffers). Its row security policy is left out of the
/// fingerprint (`pg_policy` rows of temporary tables). The accomplice creates `tt` (granted, its
/// schema granted); the engineer reads it once; the accomplice enables row security with a policy
/// calling a function declared IMMUTABLE with a constant argument (folded at planning, so it runs
/// with no row; a STABLE one did not run on the empty table) that raises the masked values. The
/// engineer's next read of `tt`, judged on the stale copy, gets the error quoting the secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_an_empty_temporary_table_of_another_session_gets_a_policy_unseen() {
    let _catalog = common::masking::catalog_lock().write().await;
    let t = unique_name("s10ra_tp_t");
    let tt = unique_name("s10ra_tp_tt");
    let a = accomplice().await;
    admin_psql(
        ATTACK.setup(&t)
            + &format!(
                "CREATE FUNCTION public.{tt}_f(int) RETURNS bool LANGUAGE plpgsql IMMUTABLE AS $f$ BEGIN \
           RAISE EXCEPTION 'leak %', (SELECT pg_catalog.string_agg(secret, ',') FROM public.{t}); END $f$;"
            ),
    )
    .await;
    a.batch_execute(&format!(
        "CREATE TEMP TABLE {tt} (a int); GRANT SELECT ON {tt} TO {READ_USER}"
    ))
    .await
    .unwrap();
    let nsp = common::pg::scalar(&a, "SELECT pg_catalog.pg_my_temp_schema()::regnamespace::text").await;
    a.batch_execute(&format!("GRANT USAGE ON SCHEMA {nsp} TO {READ_USER}"))
        .await
        .unwrap();
    let inst = start_over(&[], ATTACK.role_with(&[&t])).await;
    let (mut s, mut buf) = ATTACK.raw(&inst).await;
    let sql = format!("SELECT a FROM {nsp}.{tt}");
    let warm = exchange(&mut s, &mut buf, &[query(&sql)]).await;
    a.batch_execute(&format!(
        "ALTER TABLE {tt} ENABLE ROW LEVEL SECURITY; CREATE POLICY p ON {tt} USING (public.{tt}_f(1))"
    ))
    .await
    .unwrap();
    let after = exchange(&mut s, &mut buf, &[query(&sql)]).await;
    let _ = inst.shutdown().await;
    eprintln!("warm: {warm}\nafter: {after}");
    assert!(!ATTACK.leaked(&warm), "{warm}");
    assert!(!ATTACK.leaked(&after), "the policy ran unseen: {after}");
}

// ---- 8. The block's fingerprint read under the transaction's snapshot ----

/// LEAK (accomplice, a second session; one accomplice session; deterministic). The block's
/// fingerprint is a plain SQL query (SPI): in a
/// REPEATABLE READ or SERIALIZABLE transaction it reads the catalog *as of the transaction's
/// snapshot*, taken when the `DO` statement began — before its `LOCK TABLE` waited — while the
/// statement after it is parsed on the catalog as committed now (the system caches). `BEGIN
/// ISOLATION LEVEL REPEATABLE READ; SELECT x FROM v` (the string's own BEGIN is sent ahead of
/// the block, with its isolation level, by design): the block waits for the accomplice's
/// replacement of `v`, reads the old fingerprint (equal to the copy's), passes; the SELECT runs
/// the replacement's code; the watcher sees the secret. The client gets 42501 "… ran on the
/// target's catalog as changed while it waited for its locks" afterwards (block left failed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_repeatable_read_fingerprint_reads_the_catalog_before_the_lock_wait() {
    let _catalog = common::masking::catalog_lock().write().await;
    let t = unique_name("s10ra_rr_t");
    let v = unique_name("s10ra_rr_v");
    let inst = ATTACK
        .start(&[&t], ATTACK.setup(&t) + &view(&format!("public.{v}")))
        .await;
    let sql = format!("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT x FROM {v}");
    let (answer, seen, waited) = replaced_while_waiting(
        &inst,
        &t,
        &format!("public.{v}"),
        &format!("public.{v}_f"),
        &sql,
        "%",
    )
    .await;
    let _ = inst.shutdown().await;
    eprintln!("answer: {answer}\nwatched: {seen}");
    // s10: the block refuses any isolation level but READ COMMITTED before it locks anything.
    assert!(!waited, "nothing waited");
    assert!(answer.contains("only in READ COMMITTED"), "{answer}");
    assert!(!ATTACK.leaked(&answer), "{answer}");
    assert!(
        !ATTACK.leaked(&seen),
        "the second session saw the replaced view's code run: {seen}"
    );
}

/// LEAK (deterministic). As above, in the client's own REPEATABLE READ block whose snapshot an
/// earlier Query took (`BEGIN ISOLATION LEVEL REPEATABLE READ`, `SELECT 1`, then `SELECT x FROM
/// v` alone): the block (`DO` alone) waits for `v`, its fingerprint reads the old catalog, the
/// SELECT runs the replacement; the client gets 42501 "the rows of this result were not sent".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_repeatable_read_block_fingerprint_reads_an_old_catalog() {
    let _catalog = common::masking::catalog_lock().write().await;
    let t = unique_name("s10ra_rb_t");
    let v = unique_name("s10ra_rb_v");
    let inst = ATTACK
        .start(&[&t], ATTACK.setup(&t) + &view(&format!("public.{v}")))
        .await;
    let (mut watcher, mut wbuf) = ATTACK.raw(&inst).await;
    let (mut s, mut buf) = ATTACK.raw(&inst).await;
    let begun = exchange(
        &mut s,
        &mut buf,
        &[query("BEGIN ISOLATION LEVEL REPEATABLE READ")],
    )
    .await;
    let first = exchange(&mut s, &mut buf, &[query("SELECT 1")]).await;
    let a = accomplice().await;
    let f = format!("public.{v}_f");
    a.batch_execute(&format!(
        "BEGIN; {} CREATE OR REPLACE VIEW public.{v} AS SELECT id, {f}() AS x FROM public.{t}",
        leaking_function(&f, &t, "", "text", "'y'")
    ))
    .await
    .unwrap();
    let sql = format!("SELECT x FROM {v}");
    let running = tokio::spawn(raw_exchange(s, buf, vec![query(&sql)]));
    let b = accomplice().await;
    let waited = lock_waiting(&b, "%").await;
    a.batch_execute("COMMIT").await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    let seen = watch(&mut watcher, &mut wbuf).await;
    let (answer, _s, _buf) = running.await.unwrap();
    let _ = inst.shutdown().await;
    eprintln!("{begun} / {first}\nanswer: {answer}\nwatched: {seen}");
    // s10: refused before anything is locked (READ COMMITTED only).
    assert!(!waited, "nothing waited");
    assert!(answer.contains("only in READ COMMITTED"), "{answer}");
    assert!(!ATTACK.leaked(&answer), "{answer}");
    assert!(
        !ATTACK.leaked(&seen),
        "the second session saw the replaced view's code run: {seen}"
    );
}

/// LEAK (deterministic). As above for *every* plain Query outside a block once the session's
/// `default_transaction_isolation` is `repeatable read` (a Query of its own): timebox's own
/// `BEGIN` then opens a REPEATABLE READ transaction, and `SELECT x FROM v` alone is exposed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_default_repeatable_read_exposes_every_plain_query() {
    let _catalog = common::masking::catalog_lock().write().await;
    let t = unique_name("s10ra_dr_t");
    let v = unique_name("s10ra_dr_v");
    let inst = ATTACK
        .start(&[&t], ATTACK.setup(&t) + &view(&format!("public.{v}")))
        .await;
    let (mut watcher, mut wbuf) = ATTACK.raw(&inst).await;
    let (mut s, mut buf) = ATTACK.raw(&inst).await;
    let set = exchange(
        &mut s,
        &mut buf,
        &[query("SET default_transaction_isolation = 'repeatable read'")],
    )
    .await;
    let a = accomplice().await;
    let f = format!("public.{v}_f");
    a.batch_execute(&format!(
        "BEGIN; {} CREATE OR REPLACE VIEW public.{v} AS SELECT id, {f}() AS x FROM public.{t}",
        leaking_function(&f, &t, "", "text", "'y'")
    ))
    .await
    .unwrap();
    let sql = format!("SELECT x FROM {v}");
    let running = tokio::spawn(raw_exchange(s, buf, vec![query(&sql)]));
    let b = accomplice().await;
    let waited = lock_waiting(&b, "%").await;
    a.batch_execute("COMMIT").await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    let seen = watch(&mut watcher, &mut wbuf).await;
    let (answer, _s, _buf) = running.await.unwrap();
    let _ = inst.shutdown().await;
    eprintln!("{set}\nanswer: {answer}\nwatched: {seen}");
    assert!(waited, "a lock was awaited: {set}");
    assert!(!ATTACK.leaked(&answer), "{answer}");
    assert!(
        !ATTACK.leaked(&seen),
        "the second session saw the replaced view's code run: {seen}"
    );
}

// ---- 9. The client's own block ----

/// As [`replaced_while_waiting`], with `pre` Queries sent first on the engineer's session and
/// `post` after; every answer (pre, the statement, post), the watched text, whether a lock was
/// awaited.
async fn in_a_session(
    inst: &TestInstance,
    t: &str,
    v: &str,
    pre: &[String],
    sql: &str,
    post: &[String],
) -> (String, String, bool) {
    let (mut watcher, mut wbuf) = ATTACK.raw(inst).await;
    let (mut s, mut buf) = ATTACK.raw(inst).await;
    let mut outs = Vec::new();
    for q in pre {
        outs.push(format!(
            "{q} => {}",
            exchange(&mut s, &mut buf, &[query(q)]).await
        ));
    }
    let a = accomplice().await;
    let f = format!("public.{v}_f");
    a.batch_execute(&format!(
        "BEGIN; {} CREATE OR REPLACE VIEW public.{v} AS SELECT id, {f}() AS x FROM public.{t}",
        leaking_function(&f, t, "", "text", "'y'")
    ))
    .await
    .unwrap();
    let running = tokio::spawn(raw_exchange(s, buf, vec![query(sql)]));
    let b = accomplice().await;
    let waited = lock_waiting(&b, "%").await;
    a.batch_execute("COMMIT").await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    let seen = watch(&mut watcher, &mut wbuf).await;
    let (answer, mut s, mut buf) = running.await.unwrap();
    outs.push(format!("{sql} => {answer}"));
    for q in post {
        outs.push(format!(
            "{q} => {}",
            exchange(&mut s, &mut buf, &[query(q)]).await
        ));
    }
    (outs.join("\n  "), seen, waited)
}

/// Held. In the client's own (READ COMMITTED) block: after a `SAVEPOINT`, then `ROLLBACK TO` it and
/// the statement again; a string ending with `ROLLBACK`; a block already failed (nothing is sent
/// ahead, nothing runs: 25P02); `SET LOCAL search_path` to a schema of its own then the
/// statement. Each time the block waits for the view, its fingerprint differs, the statement does
/// not run ("it did not run"); after `ROLLBACK TO` the view (now calling a user function) is
/// refused before it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_the_clients_own_block_shapes() {
    let _catalog = common::masking::catalog_lock().write().await;
    let t = unique_name("s10ra_cb_t");
    let ev = unique_name("s10ra_cb_ev");
    let inst = ATTACK
        .start(
            &[&t],
            ATTACK.setup(&t) + &format!("CREATE SCHEMA {ev}; GRANT USAGE ON SCHEMA {ev} TO {READ_USER};"),
        )
        .await;
    let mut outs = Vec::new();
    let mut leaks = Vec::new();
    for (i, (pre, sql, post)) in [
        (
            vec!["BEGIN".to_owned(), "SAVEPOINT s".to_owned()],
            "SELECT x FROM {v}".to_owned(),
            vec![
                "ROLLBACK TO SAVEPOINT s".to_owned(),
                "SELECT x FROM {v}".to_owned(),
                "ROLLBACK".to_owned(),
            ],
        ),
        (
            vec!["BEGIN".to_owned()],
            "SELECT x FROM {v}; ROLLBACK".to_owned(),
            vec!["ROLLBACK".to_owned()],
        ),
        (
            vec!["BEGIN".to_owned(), "SELECT 1/0".to_owned()],
            "SELECT x FROM {v}".to_owned(),
            vec!["ROLLBACK".to_owned()],
        ),
        (
            vec![
                "BEGIN".to_owned(),
                format!("SET LOCAL search_path = {ev}, public"),
            ],
            "SELECT x FROM {v}".to_owned(),
            vec!["ROLLBACK".to_owned()],
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let v = unique_name(&format!("s10ra_cb{i}"));
        admin_psql(view(&format!("public.{v}"))).await;
        let fill = |q: &String| q.replace("{v}", &v);
        let pre: Vec<String> = pre.iter().map(fill).collect();
        let post: Vec<String> = post.iter().map(fill).collect();
        let (all, seen, waited) = in_a_session(&inst, &t, &v, &pre, &fill(&sql), &post).await;
        if ATTACK.leaked(&all) || ATTACK.leaked(&seen) {
            leaks.push(i);
        }
        outs.push(format!("{i} (waited {waited}):\n  {all}\n  watched: {seen}"));
    }
    let _ = inst.shutdown().await;
    let all = outs.join("\n");
    eprintln!("{all}");
    assert!(leaks.is_empty(), "leaked: {leaks:?}\n{all}");
}

// ---- 10. A row type looked up while the statement runs ----

/// The §10 shape: `public.<tt>` (x text) and a domain over text whose CHECK calls a leaking
/// function exist; the engineer sends `sql` (which names `tt`'s row type and sleeps first); once
/// it sleeps (or after 5 s if it never does) the accomplice commits
/// `ALTER TABLE tt ALTER COLUMN x TYPE <the domain>`; 2.5 s later the watcher reads
/// `pg_stat_activity`. (answer, watched, whether the statement slept)
async fn row_type_altered_while_running(sql: impl Fn(&str) -> String) -> (String, String, bool) {
    let _catalog = common::masking::catalog_lock().write().await;
    let t = unique_name("s10ra_rt_t");
    let tt = unique_name("s10ra_rt_tt");
    let inst = ATTACK
        .start(
            &[&t],
            ATTACK.setup(&t)
                + &leaking_function(&format!("public.{tt}_f"), &t, "text", "bool", "true")
                + &format!(
                    "CREATE DOMAIN public.{tt}_d AS text CHECK (public.{tt}_f(VALUE));
                 CREATE TABLE public.{tt} (x text);"
                ),
        )
        .await;
    let (mut watcher, mut wbuf) = ATTACK.raw(&inst).await;
    let (s, buf) = ATTACK.raw(&inst).await;
    let a = accomplice().await;
    let running = tokio::spawn(raw_exchange(s, buf, vec![query(&sql(&tt))]));
    let sleeping = until_sleeping(&a, &running).await;
    a.batch_execute(&format!(
        "ALTER TABLE public.{tt} ALTER COLUMN x TYPE public.{tt}_d"
    ))
    .await
    .unwrap();
    if sleeping {
        tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    }
    let seen = watch(&mut watcher, &mut wbuf).await;
    let (answer, _s, _buf) = running.await.unwrap();
    let _ = inst.shutdown().await;
    eprintln!("answer: {answer}\nwatched: {seen}");
    (answer, seen, sleeping)
}

/// Held (tried as a leak; refused outright since s11). A statement that names a table's row type
/// (`NULL::tt`), not the table: nothing locks `tt` (the block locks relations read; the statement
/// takes no lock on a type). `json_populate_record` looks the row type's columns up when it first
/// runs. `SELECT pg_sleep(2) IS NULL AS s, (json_populate_record(NULL::tt, '{"x":"1"}')).x AS x`:
/// while it sleeps the accomplice commits `ALTER TABLE tt ALTER COLUMN x TYPE dom` (a domain over
/// text whose CHECK calls a leaking function). Against 395b743 it did not leak (the backend took
/// no invalidation while the statement ran; the client got 42501 "the rows of this result were
/// not sent"); since s11 naming a composite type is refused before anything runs (next probe).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_a_row_type_altered_while_the_statement_runs() {
    let (answer, seen, sleeping) = row_type_altered_while_running(|tt| {
        format!(
            "SELECT pg_catalog.pg_sleep(2) IS NULL AS s, (pg_catalog.json_populate_record(NULL::{tt}, '{{\"x\":\"1\"}}')).x AS x"
        )
    })
    .await;
    assert!(!ATTACK.leaked(&answer), "{answer}");
    assert!(
        !ATTACK.leaked(&seen),
        "the second session saw the domain's code run: {seen}"
    );
    assert!(!sleeping, "refused before it ran: {answer}");
    assert!(answer.contains("is a domain or composite type"), "{answer}");
}

/// Regression, closed in s11 (LEAK against 395b743, deterministic). As above, but the statement
/// takes a lock after its sleep and before the populate runs: `pg_relation_size('tt')` (a
/// built-in locking its argument) makes the backend take the invalidations, so
/// `json_populate_record(NULL::tt, …)` read the altered row type and checked the domain, running
/// its code as the engineer (the lock block cannot cover catalog lookups made while a statement
/// runs). Closed: a masked statement may not name a domain or composite type (or one built from
/// them) — their definitions change without a lock timebox can hold (`ALTER DOMAIN … ADD CHECK`
/// takes none a reader conflicts with); refused before it runs, 42501 naming the type.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_a_row_type_altered_while_the_statement_runs_then_a_lock() {
    let (answer, seen, sleeping) = row_type_altered_while_running(|tt| {
        format!(
            "SELECT pg_catalog.pg_sleep(2) IS NULL AS s, pg_catalog.pg_relation_size('public.{tt}') IS NULL AS r, \
             (pg_catalog.json_populate_record(NULL::{tt}, '{{\"x\":\"1\"}}')).x AS x"
        )
    })
    .await;
    assert!(!ATTACK.leaked(&answer), "{answer}");
    assert!(
        !ATTACK.leaked(&seen),
        "the second session saw the domain's code run: {seen}"
    );
    assert!(!sleeping, "refused before it ran: {answer}");
    assert!(
        answer.contains("42501") && answer.contains("is a domain or composite type"),
        "{answer}"
    );
}

// ---- 11. Found by the lead while closing §10 (s11) ----

/// Regression, closed in s11 (a LEAK against 29ff91f on PostgreSQL 16 and later, found reading the
/// source; the clusters these tests start may be older, where the function does not exist and the
/// server answers 42883 — the probe asserts timebox refuses before the server sees it).
/// `pg_input_is_valid(text, type name)` runs the input function of a type named in a string
/// (`domain_in` for a domain, which runs its CHECK): a CHECK calling a leaking function would run
/// as the engineer (no type name in the parse tree for the type check to see). Closed: it and
/// `pg_input_error_info` are refused to masked roles; so is the populate family unless its first
/// argument is a typed NULL (the row type of another expression is not named, and its domains'
/// CHECKs can change while the statement runs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_a_type_named_in_a_string_runs_its_domain_check() {
    let _catalog = common::masking::catalog_lock().write().await;
    let t = unique_name("s10ra_in_t");
    let inst = ATTACK
        .start(
            &[&t],
            ATTACK.setup(&t)
                + &leaking_function(&format!("public.{t}_f"), &t, "text", "bool", "true")
                + &format!(
                    "CREATE DOMAIN public.{t}_d AS text CHECK (public.{t}_f(VALUE));
                 CREATE DOMAIN public.{t}_plain AS text;
                 CREATE TABLE public.{t}_h (x public.{t}_plain);
                 GRANT SELECT ON public.{t}_h TO {READ_USER};"
                ),
        )
        .await;
    let (mut watcher, mut wbuf) = ATTACK.raw(&inst).await;
    let (s, buf) = ATTACK.raw(&inst).await;
    let sql = format!("SELECT pg_catalog.pg_input_is_valid('1', 'public.{t}_d') AS v");
    let running = tokio::spawn(raw_exchange(s, buf, vec![query(&sql)]));
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let seen = watch(&mut watcher, &mut wbuf).await;
    let (answer, mut s, mut buf) = running.await.unwrap();
    let populate = exchange(
        &mut s,
        &mut buf,
        &[query(&format!(
            "SELECT (pg_catalog.jsonb_populate_record(h, '{{\"x\":\"1\"}}')).x FROM public.{t}_h h"
        ))],
    )
    .await;
    let _ = inst.shutdown().await;
    eprintln!("answer: {answer}\nwatched: {seen}\npopulate: {populate}");
    assert!(
        !ATTACK.leaked(&answer) && !ATTACK.leaked(&populate),
        "{answer}\n{populate}"
    );
    assert!(
        !ATTACK.leaked(&seen),
        "the second session saw the domain's code run: {seen}"
    );
    assert!(
        answer.contains("42501") && answer.contains("runs the input function of a type given by name"),
        "{answer}"
    );
    assert!(
        populate.contains("42501") && populate.contains("written as a typed NULL"),
        "{populate}"
    );
}
