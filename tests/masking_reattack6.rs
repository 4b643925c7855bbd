//! Column masking, sixth outside attack (s11, issue 15) after commit dbc88af, mostly on the
//! extended protocol. Same harness and accomplice model as `tests/masking_reattack5.rs`: a masked
//! role (`s11ra`, column `secret` of its tables masked with `redact`), an accomplice — the
//! cluster's superuser outside timebox — and the engineer's second session watching
//! `pg_stat_activity` through timebox.
//!
//! `closed_*`: a leak found by this attack (each failed against dbc88af), closed by the fixes
//! that followed (s11); `held_*`: a shape tried that did not leak.
//!
//! Closed (s11): the lock block's relations for a prepared name are those of the statement
//! PostgreSQL holds (`MaskJudgements::relations`, kept on the server's answers), and the
//! interceptor records a `PREPARE` only once every check passed (§1, and the audit text); the
//! block uses its fingerprint read only when the statement of that name has the block's own text,
//! deallocating another first (§2); a masked Parse types its parameters only with built-in types
//! (OID < 16384) or leaves them unspecified (§4); relations with an index or partition key
//! comparing with an operator class of user code — and the views and parents reading them — run
//! user code when read, and `pg_opclass`, `pg_opfamily`, `pg_amop`, `pg_amproc` are in the
//! fingerprint (§9).
//!
//! Found against dbc88af (7 repros, all deterministic, each run at least twice):
//! - §1 the lock block is left out: the interceptor's prepared map (which `prepared_relations` and
//!   `relations_read` read) is written by a `PREPARE` timebox then refuses ("exists"), and by an
//!   unnamed Parse PostgreSQL skips after an error; PostgreSQL keeps the old text, timebox locks
//!   the new one's relations (none) — the s9 race runs the replaced view's code (Bind, EXECUTE);
//! - §2 the block's fingerprint read is the session's prepared statement `timebox_check_<nonce>`,
//!   which the client can read (`pg_prepared_statements`), deallocate and prepare as a constant;
//! - §4 a Parse message's parameter type OIDs are never checked: a domain whose CHECK runs user
//!   code, a user operator picked by the parameter's type on the masked column;
//! - §9 an index with a user operator class on the masked column: its support function gets the
//!   clear values during an index scan of a plain filter (no race, no DDL while it runs).
//!
//! Also (not a masking leak): the Bind after §1's refused PREPARE is audited with the refused
//! text (`closed_the_bind_after_a_refused_prepare_is_audited_with_the_wrong_text`).
//! Held: the Bind's block over every spelling that reads (§3), RowDescription-origin shapes
//! through simple/portal/statement Describe (§5), type-input built-ins by OID (§6), pipelines with
//! skipped blocks, resumed portals, Flush without Sync (§7), statements and WITH HOLD cursors used
//! after committed DDL (§8), built-in names shadowed through `search_path`, a prepared statement
//! re-bound under another `search_path` (§10).
//! Channel noted: code run in the engineer's session that sets `application_name` also reaches
//! that session itself as a ParameterStatus when the statement's transaction commits.

mod common;

use bytes::BytesMut;
use common::attack::{leaking_function, lock_waiting, raw_exchange_or_close, view, watch, Attack};
use common::cluster::{unique_name, READ_USER};
use common::frames::{bind, describe, exchange, execute, parse, query, sync};
use common::masking::{accomplice, admin_psql};
use common::TestInstance;

/// The value every table of these probes holds in its masked column `secret`.
const SECRET: &str = "s11ra-secret-value";

/// The attack's masked role and secret (the shared harness: `common::attack`).
const ATTACK: Attack = Attack {
    role: "s11ra",
    secret: SECRET,
};

// ---- 1. The interceptor's prepared map overwritten by a PREPARE timebox refuses ----

/// Closed in s11; LEAK against dbc88af (accomplice, a second session; deterministic).
/// `Interceptor::check_sql` records a `PREPARE p AS …` in `self.prepared` *before*
/// `MaskJudgements::on_text` refuses it because `p` exists (and PostgreSQL never sees it). The
/// engineer Parses `p` = `SELECT x FROM public.v` (Sync), then sends `PREPARE p AS SELECT 1`
/// (refused: "prepared statement p exists"): timebox's prepared map now says `p` reads nothing,
/// while PostgreSQL and the masking judgements keep the first text. Bind `p` →
/// `prepared_relations("p")` is empty → no lock block; the Bind waits for the accomplice's
/// replacement of `v`, re-plans against the new view and runs its function: the watcher sees the
/// secret in `application_name`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_a_refused_prepare_overwrites_the_bind_lock_relations() {
    let _catalog = common::masking::catalog_lock().write().await;
    let t = unique_name("s11ra_ow_t");
    let v = unique_name("s11ra_ow_v");
    let inst = ATTACK
        .start(&[&t], ATTACK.setup(&t) + &view(&format!("public.{v}")))
        .await;
    let (before, answer, seen, waited) = ATTACK
        .replaced_while_waiting(
            &inst,
            &t,
            &v,
            vec![
                vec![parse("p", &format!("SELECT x FROM public.{v}")), sync()],
                vec![query("PREPARE p AS SELECT 1")],
            ],
            vec![bind("", "p"), execute(""), sync()],
            &format!("%{v}%"),
        )
        .await;
    let _ = inst.shutdown().await;
    eprintln!("before: {before}\nanswer: {answer}\nwatched: {seen}\nwaited: {waited}");
    assert!(waited, "the statement waited for the accomplice's lock");
    assert!(!ATTACK.leaked(&answer), "{answer}");
    assert!(
        !ATTACK.leaked(&seen),
        "the engineer's second session saw the replaced view's code run: {seen}"
    );
}

/// Closed in s11; LEAK against dbc88af (same cause, simple protocol). `PREPARE p AS SELECT x FROM
/// public.v`, then `PREPARE p AS SELECT 1` (refused, but recorded), then `EXECUTE p`:
/// `relations_read` adds the relations of the recorded (wrong) text — none — so timebox sends only
/// `BEGIN`, no lock block.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_a_refused_prepare_overwrites_the_execute_lock_relations() {
    let _catalog = common::masking::catalog_lock().write().await;
    let t = unique_name("s11ra_oe_t");
    let v = unique_name("s11ra_oe_v");
    let inst = ATTACK
        .start(&[&t], ATTACK.setup(&t) + &view(&format!("public.{v}")))
        .await;
    let (before, answer, seen, waited) = ATTACK
        .replaced_while_waiting(
            &inst,
            &t,
            &v,
            vec![
                vec![query(&format!("PREPARE p AS SELECT x FROM public.{v}"))],
                vec![query("PREPARE p AS SELECT 1")],
            ],
            vec![query("EXECUTE p")],
            // Since s11 the lock block (not the EXECUTE) waits: the block locks `v`.
            "%DO $timebox_lock$%",
        )
        .await;
    let _ = inst.shutdown().await;
    eprintln!("before: {before}\nanswer: {answer}\nwatched: {seen}\nwaited: {waited}");
    assert!(waited, "the statement waited for the accomplice's lock");
    assert!(!ATTACK.leaked(&answer), "{answer}");
    assert!(
        !ATTACK.leaked(&seen),
        "the engineer's second session saw the replaced view's code run: {seen}"
    );
}

/// HELD (control for §1). Parse `p` = `SELECT x FROM public.v` (Sync), then Bind/Execute/Sync
/// while the accomplice replaces `v`: the lock block ahead of the Bind waits, sees the fingerprint
/// change, and the batch is refused; the function never runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_a_bind_of_a_statement_prepared_before_the_replacement() {
    let _catalog = common::masking::catalog_lock().write().await;
    let t = unique_name("s11ra_bp_t");
    let v = unique_name("s11ra_bp_v");
    let inst = ATTACK
        .start(&[&t], ATTACK.setup(&t) + &view(&format!("public.{v}")))
        .await;
    let (before, answer, seen, waited) = ATTACK
        .replaced_while_waiting(
            &inst,
            &t,
            &v,
            vec![vec![parse("p", &format!("SELECT x FROM public.{v}")), sync()]],
            vec![bind("", "p"), describe(b'P', ""), execute(""), sync()],
            &format!("%{v}%"),
        )
        .await;
    let _ = inst.shutdown().await;
    eprintln!("before: {before}\nanswer: {answer}\nwatched: {seen}\nwaited: {waited}");
    assert!(waited, "the block waited for the accomplice's lock");
    assert!(!ATTACK.leaked(&answer), "{answer}");
    assert!(!ATTACK.leaked(&seen), "{seen}");
}

/// Closed in s11; LEAK against dbc88af (same family, extended protocol only; deterministic). The
/// unnamed statement may be parsed again (no "exists" rule), and the interceptor records a Parse
/// when it forwards it — also one PostgreSQL then skips after an error earlier in the batch, which
/// leaves the old unnamed statement in place. Batch 1: Parse `""` = `SELECT x FROM public.v`, Sync.
/// Batch 2: Parse `e` = `SELECT 1/0`, Bind `e` (fails upstream: division by zero while planning),
/// Parse `""` = `SELECT 1` (skipped by PostgreSQL, recorded by timebox), Sync. Batch 3: Bind `""`,
/// Execute, Sync: timebox's map says `""` reads nothing — no lock block — while PostgreSQL runs the
/// first text (and `MaskJudgements` kept its judgement, so the Bind passes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_a_skipped_unnamed_parse_overwrites_the_bind_lock_relations() {
    let _catalog = common::masking::catalog_lock().write().await;
    let t = unique_name("s11ra_un_t");
    let v = unique_name("s11ra_un_v");
    let inst = ATTACK
        .start(&[&t], ATTACK.setup(&t) + &view(&format!("public.{v}")))
        .await;
    let (before, answer, seen, waited) = ATTACK
        .replaced_while_waiting(
            &inst,
            &t,
            &v,
            vec![
                vec![parse("", &format!("SELECT x FROM public.{v}")), sync()],
                vec![
                    parse("e", "SELECT 1/0"),
                    bind("", "e"),
                    parse("", "SELECT 1"),
                    sync(),
                ],
            ],
            vec![bind("", ""), execute(""), sync()],
            &format!("%{v}%"),
        )
        .await;
    let _ = inst.shutdown().await;
    eprintln!("before: {before}\nanswer: {answer}\nwatched: {seen}\nwaited: {waited}");
    assert!(waited, "the statement waited for the accomplice's lock");
    assert!(!ATTACK.leaked(&answer), "{answer}");
    assert!(
        !ATTACK.leaked(&seen),
        "the engineer's second session saw the replaced view's code run: {seen}"
    );
}

// ---- 2. The lock block's own prepared fingerprint read is the client's to define ----

/// The first column of the first row of `sql` through a tokio-postgres session (`Err`: the error).
async fn first(c: &tokio_postgres::Client, sql: &str) -> Result<String, String> {
    match c.simple_query(sql).await {
        Ok(rows) => Ok(rows
            .iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("").to_owned()),
                _ => None,
            })
            .unwrap_or_default()),
        Err(e) => Err(e.as_db_error().map_or_else(
            || e.to_string(),
            |d| format!("{} {}", d.code().code(), d.message()),
        )),
    }
}

/// Closed in s11; LEAK against dbc88af (accomplice, a second session; deterministic). The lock
/// block reads the fingerprint with the session's prepared statement `timebox_check_<nonce>`,
/// preparing it only when no statement of that name exists. Nothing stops the client from defining
/// it: after one block ran, the engineer reads its name and text from `pg_prepared_statements`
/// (session-local, allowed); the accomplice runs that text (the fingerprint query; timebox refuses
/// it from the masked role) as the engineer's upstream user to get the current fingerprint; the
/// engineer `DEALLOCATE`s the name and `PREPARE`s it again as `SELECT '<that fingerprint>'::text`.
/// From then on every lock block of the session "reads" the fingerprint it expects: DDL committed
/// while it waited is never seen. The s9 race then runs the replaced view's code (watcher sees the
/// secret).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_the_client_prepares_the_blocks_fingerprint_read() {
    let _catalog = common::masking::catalog_lock().write().await;
    let t = unique_name("s11ra_fp_t");
    let v = unique_name("s11ra_fp_v");
    let inst = ATTACK
        .start(&[&t], ATTACK.setup(&t) + &view(&format!("public.{v}")))
        .await;
    let c = common::masking::session(&inst, "s11ra").await;
    let mut log = String::new();
    log.push_str(&format!(
        "first read: {:?}\n",
        first(&c, &format!("SELECT x FROM public.{v}")).await
    ));
    let name = first(
        &c,
        "SELECT name FROM pg_catalog.pg_prepared_statements WHERE name LIKE 'timebox_check_%'",
    )
    .await;
    let text = first(
        &c,
        "SELECT statement FROM pg_catalog.pg_prepared_statements WHERE name LIKE 'timebox_check_%'",
    )
    .await;
    log.push_str(&format!("name: {name:?}\n"));
    let (Ok(name), Ok(text)) = (name, text) else {
        panic!("{log}");
    };
    let fp_query = text
        .split_once(" AS ")
        .map(|(_, q)| q.to_owned())
        .unwrap_or_default();
    // timebox refuses the fingerprint query from the masked role (sqlparser cannot parse it): the
    // accomplice runs it as the engineer's upstream user instead (same catalog, same privileges).
    let a = accomplice().await;
    a.batch_execute(&format!("SET ROLE {READ_USER}")).await.unwrap();
    let fp = first(&a, &fp_query).await;
    a.batch_execute("RESET ROLE").await.unwrap();
    log.push_str(&format!("fingerprint: {:?}\n", fp.as_ref().map(|f| f.len())));
    let fp = fp.unwrap_or_else(|e| panic!("{log}{e}"));
    log.push_str(&format!(
        "deallocate: {:?}\n",
        first(&c, &format!("DEALLOCATE {name}")).await
    ));
    log.push_str(&format!(
        "prepare: {:?}\n",
        first(
            &c,
            &format!("PREPARE {name} AS SELECT '{}'::text", fp.replace('\'', "''"))
        )
        .await
    ));
    let (mut watcher, mut wbuf) = ATTACK.raw(&inst).await;
    a.batch_execute(&format!(
        "BEGIN; {} CREATE OR REPLACE VIEW public.{v} AS SELECT id, public.{v}_f() AS x FROM public.{t}",
        leaking_function(&format!("public.{v}_f"), &t, "", "text", "'y'")
    ))
    .await
    .unwrap();
    let sql = format!("SELECT x FROM public.{v}");
    let running = tokio::spawn(async move { first(&c, &sql).await });
    let b = accomplice().await;
    let waited = lock_waiting(&b, "%DO $timebox_lock$%").await;
    a.batch_execute("COMMIT").await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    let seen = watch(&mut watcher, &mut wbuf).await;
    let answer = tokio::time::timeout(std::time::Duration::from_secs(30), running)
        .await
        .expect("the statement ends")
        .unwrap();
    let _ = inst.shutdown().await;
    eprintln!("{log}answer: {answer:?}\nwatched: {seen}\nwaited: {waited}");
    assert!(waited, "the block waited for the accomplice's lock");
    assert!(!ATTACK.leaked(&format!("{answer:?}")), "{answer:?}");
    assert!(
        !ATTACK.leaked(&seen),
        "the engineer's second session saw the replaced view's code run: {seen}"
    );
}

// ---- 3. Which spellings get a lock block at all ----

/// What waits when the accomplice holds `public.<v>` ACCESS EXCLUSIVE (no catalog change) and the
/// engineer sends `frames`: the waiting backend's query (start), `""` when none waited; and the
/// answer once the accomplice rolled back.
async fn who_waits(
    inst: &TestInstance,
    v: &str,
    before: Vec<BytesMut>,
    frames: Vec<BytesMut>,
) -> (String, String) {
    let (mut s, mut buf) = ATTACK.raw(inst).await;
    if !before.is_empty() {
        let parsed = exchange(&mut s, &mut buf, &before).await;
        eprintln!("    parsed: {}", parsed.chars().take(160).collect::<String>());
    }
    let a = accomplice().await;
    a.batch_execute(&format!("BEGIN; LOCK TABLE public.{v} IN ACCESS EXCLUSIVE MODE"))
        .await
        .unwrap();
    let running = tokio::spawn(raw_exchange_or_close(s, buf, frames));
    let b = accomplice().await;
    let sql = "SELECT COALESCE(pg_catalog.string_agg(pg_catalog.left(query, 40), ' | '), '') \
               FROM pg_catalog.pg_stat_activity WHERE wait_event_type = 'Lock' \
               AND pid <> pg_catalog.pg_backend_pid()";
    let mut waiting = String::new();
    for _ in 0..20 {
        waiting = common::pg::scalar(&b, sql).await;
        if !waiting.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    a.batch_execute("ROLLBACK").await.unwrap();
    let (answer, _s, _buf) = tokio::time::timeout(std::time::Duration::from_secs(30), running)
        .await
        .expect("the statement ends")
        .unwrap();
    (waiting, answer)
}

/// Survey (prints which spellings are locked by the block; asserts nothing but that none waited
/// unlocked): each statement reading `v`, simple and extended. A spelling whose own statement
/// waits (not `DO $timebox_lock$`) runs unlocked — the s9 race applies to it.
/// HELD: every spelling allowed waits in the block (simple Query: `BEGIN …; DO $timebox_lock$`;
/// Bind: the block's Parse/Bind/Execute), COPY and DECLARE through Parse are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_spellings_are_locked_by_the_block() {
    let _catalog = common::masking::catalog_lock().write().await;
    let t = unique_name("s11ra_sp_t");
    let v = unique_name("s11ra_sp_v");
    let inst = ATTACK
        .start(&[&t], ATTACK.setup(&t) + &view(&format!("public.{v}")))
        .await;
    let spellings = [
        format!("EXPLAIN ANALYZE SELECT x FROM public.{v}"),
        format!("EXPLAIN (ANALYZE, COSTS OFF) SELECT x FROM public.{v}"),
        format!("COPY (SELECT x FROM public.{v}) TO STDOUT"),
        format!("WITH c AS (SELECT x FROM public.{v}) SELECT x FROM c"),
        format!("VALUES ((SELECT x FROM public.{v} LIMIT 1))"),
        format!("TABLE public.{v}"),
        format!("SELECT (SELECT x FROM public.{v} LIMIT 1)"),
        format!("SELECT 1 WHERE EXISTS (SELECT FROM public.{v})"),
        format!("SELECT * FROM pg_catalog.generate_series(1,1) g, LATERAL (SELECT x FROM public.{v}) s"),
        format!("SELECT x FROM public.{v} UNION ALL SELECT 'a'"),
        format!("SELECT pg_catalog.count(*) FROM public.{v}"),
        format!("DECLARE c CURSOR WITH HOLD FOR SELECT x FROM public.{v}"),
    ];
    let mut unlocked = Vec::new();
    for sql in &spellings {
        for extended in [false, true] {
            // Extended: the Parse (which locks `v` while it analyses the text) in a batch of its
            // own first; the Bind (behind its lock block) and Execute in the next.
            let (before, frames) = if extended {
                (
                    vec![parse("", sql), sync()],
                    vec![bind("", ""), execute(""), sync()],
                )
            } else {
                (Vec::new(), vec![query(sql)])
            };
            let (waiting, answer) = who_waits(&inst, &v, before, frames).await;
            let answer: String = answer.chars().take(160).collect();
            eprintln!(
                "{sql} [{}]: waiting {waiting:?}\n    {answer}",
                if extended { "ext" } else { "simple" }
            );
            let block = waiting.contains("DO $timebox_lock$") || waiting.starts_with("BEGIN ISOLATION");
            if !waiting.is_empty() && !block {
                unlocked.push(format!("{sql} ({})", if extended { "ext" } else { "simple" }));
            }
        }
    }
    let _ = inst.shutdown().await;
    assert!(unlocked.is_empty(), "ran unlocked: {unlocked:?}");
}

// ---- 4. Types by OID: the Parse message's parameter types are never text ----

/// Parse of `sql` as statement `name` with parameter type OIDs `types`.
fn parse_typed(name: &str, sql: &str, types: &[u32]) -> BytesMut {
    let mut b = name.as_bytes().to_vec();
    b.push(0);
    b.extend(sql.as_bytes());
    b.push(0);
    b.extend((types.len() as i16).to_be_bytes());
    for t in types {
        b.extend(t.to_be_bytes());
    }
    common::frames::msg(b'P', &b)
}

/// Bind of `stmt` to `portal` with text parameters `values`, text results.
fn bind_values(portal: &str, stmt: &str, values: &[&str]) -> BytesMut {
    let mut b = portal.as_bytes().to_vec();
    b.push(0);
    b.extend(stmt.as_bytes());
    b.push(0);
    b.extend(0i16.to_be_bytes());
    b.extend((values.len() as i16).to_be_bytes());
    for v in values {
        b.extend((v.len() as i32).to_be_bytes());
        b.extend(v.as_bytes());
    }
    b.extend(0i16.to_be_bytes());
    common::frames::msg(b'B', &b)
}

/// Runs `frames` on an engineer's session while the watcher looks at `pg_stat_activity` 1 s in.
/// (answer, watched)
async fn run_and_watch(inst: &TestInstance, frames: Vec<BytesMut>) -> (String, String) {
    let (mut watcher, mut wbuf) = ATTACK.raw(inst).await;
    let (s, buf) = ATTACK.raw(inst).await;
    let running = tokio::spawn(raw_exchange_or_close(s, buf, frames));
    // The statement is done, refused, or inside the function's 3 s sleep.
    let b = accomplice().await;
    common::eventually(std::time::Duration::from_millis(1500), || {
        let b = &b;
        async move {
            common::pg::scalar(
                b,
                "SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE wait_event = 'PgSleep'",
            )
            .await
                != "0"
        }
    })
    .await;
    let seen = watch(&mut watcher, &mut wbuf).await;
    let (answer, _s, _buf) = tokio::time::timeout(std::time::Duration::from_secs(30), running)
        .await
        .expect("the statement ends")
        .unwrap();
    (answer, seen)
}

/// Closed in s11; LEAK against dbc88af (accomplice plants a domain beforehand, no race;
/// deterministic). s11 refuses statements that *name* a user domain or composite type, but a Parse
/// message carries its parameters' types as OIDs, outside the text: Parse `SELECT $1::text`
/// (nothing user-defined in the text) with parameter type = the OID of domain `public.d` over text
/// `CHECK (public.f(VALUE))`, `f` a SECURITY INVOKER function reading the masked table into
/// `application_name`; Bind with `'a'` runs `domain_in`, the CHECK, and `f` as the engineer's
/// upstream user: the watcher sees the secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_a_parse_parameter_typed_by_oid_runs_a_domain_check() {
    let _catalog = common::masking::catalog_lock().write().await;
    let t = unique_name("s11ra_po_t");
    let d = unique_name("s11ra_po_d");
    let inst = ATTACK
        .start(
            &[&t],
            ATTACK.setup(&t)
                + &leaking_function(&format!("public.{d}_f"), &t, "text", "boolean", "true")
                + &format!(
                    "CREATE DOMAIN public.{d} AS text CHECK (public.{d}_f(VALUE));
                 GRANT USAGE ON DOMAIN public.{d} TO {READ_USER};"
                ),
        )
        .await;
    let a = accomplice().await;
    let oid: u32 = common::pg::scalar(&a, &format!("SELECT 'public.{d}'::regtype::oid"))
        .await
        .parse()
        .unwrap();
    let (answer, seen) = run_and_watch(
        &inst,
        vec![
            parse_typed("", "SELECT $1::text", &[oid]),
            bind_values("", "", &["a"]),
            execute(""),
            sync(),
        ],
    )
    .await;
    let _ = inst.shutdown().await;
    eprintln!("answer: {answer}\nwatched: {seen}");
    assert!(!ATTACK.leaked(&answer), "{answer}");
    assert!(
        !ATTACK.leaked(&seen),
        "the domain's CHECK ran the accomplice's function: {seen}"
    );
}

/// Closed in s11; LEAK against dbc88af (same root as above; deterministic, no race). The
/// parameter's OID type also steers operator resolution, which the shape check cannot follow:
/// domain `public.d` over text (no CHECK), operator `public.=` (text, d) whose function puts its
/// left argument in `application_name`. Parse `SELECT id FROM public.t WHERE secret = $1` with `$1`
/// typed `d` by OID — a masked column as a plain filter operand, nothing user-defined in the text —
/// resolves `=` to the accomplice's operator, which receives each row's clear `secret`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_a_parse_parameter_typed_by_oid_picks_a_user_operator_on_the_masked_column() {
    let _catalog = common::masking::catalog_lock().write().await;
    let t = unique_name("s11ra_op_t");
    let d = unique_name("s11ra_op_d");
    let inst = ATTACK
        .start(
            &[&t],
            ATTACK.setup(&t)
                + &format!(
                    "CREATE DOMAIN public.{d} AS text;
                 GRANT USAGE ON DOMAIN public.{d} TO {READ_USER};
                 CREATE FUNCTION public.{d}_eq(text, public.{d}) RETURNS boolean LANGUAGE plpgsql AS $f$ BEGIN
                   PERFORM pg_catalog.set_config('application_name', $1, false);
                   PERFORM pg_catalog.pg_sleep(3); RETURN false; END $f$;
                 CREATE OPERATOR public.= (LEFTARG = text, RIGHTARG = public.{d}, FUNCTION = public.{d}_eq);"
                ),
        )
        .await;
    let a = accomplice().await;
    let oid: u32 = common::pg::scalar(&a, &format!("SELECT 'public.{d}'::regtype::oid"))
        .await
        .parse()
        .unwrap();
    let (answer, seen) = run_and_watch(
        &inst,
        vec![
            parse_typed(
                "",
                &format!("SELECT id FROM public.{t} WHERE secret = $1"),
                &[oid],
            ),
            bind_values("", "", &["a"]),
            describe(b'P', ""),
            execute(""),
            sync(),
        ],
    )
    .await;
    let _ = inst.shutdown().await;
    eprintln!("answer: {answer}\nwatched: {seen}");
    assert!(!ATTACK.leaked(&answer), "{answer}");
    assert!(
        !ATTACK.leaked(&seen),
        "the accomplice's operator got the clear value: {seen}"
    );
}

// ---- 5. Results whose RowDescription may not say where a column came from ----

/// Survey, no DDL: each shape through a simple Query and through Parse/Bind/Describe/Execute
/// (and Parse/Describe statement/Bind/Execute without a portal Describe); HELD when no answer
/// carries the secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_result_shapes_without_ddl() {
    let _catalog = common::masking::catalog_lock().write().await;
    let t = unique_name("s11ra_rs_t");
    let v = unique_name("s11ra_rs_v");
    let inst = ATTACK
        .start(
            &[&t],
            ATTACK.setup(&t)
                + &format!(
                    "CREATE VIEW public.{v} AS SELECT id, secret AS x FROM public.{t};
                 GRANT SELECT ON public.{v} TO {READ_USER};"
                ),
        )
        .await;
    let shapes = [
        format!("SELECT 'a' AS x UNION ALL SELECT secret FROM public.{t}"),
        format!("SELECT x FROM (SELECT 'a' AS x UNION ALL SELECT secret FROM public.{t}) s"),
        format!("SELECT secret FROM public.{t} UNION SELECT 'a'"),
        format!("SELECT x FROM public.{v}"),
        format!("SELECT s.x FROM (SELECT x FROM public.{v}) s"),
        format!("WITH c(y) AS (SELECT secret FROM public.{t}) SELECT y FROM c"),
        format!("WITH RECURSIVE c(y) AS (SELECT secret FROM public.{t}) SELECT y FROM c"),
        format!("SELECT (SELECT secret FROM public.{t} LIMIT 1)"),
        format!("SELECT COALESCE(secret) FROM public.{t}"),
        format!("SELECT secret FROM public.{t} ORDER BY 1"),
        format!("SELECT * FROM public.{t}"),
        format!("SELECT {t} FROM public.{t}"),
        format!("SELECT ROW(secret) FROM public.{t}"),
        format!("SELECT t FROM public.{t} t"),
        format!("SELECT (t).secret FROM public.{t} t"),
        format!("SELECT x FROM public.{t} AS t(i, x)"),
        format!("SELECT secret FROM ONLY public.{t}"),
        format!("VALUES ((SELECT secret FROM public.{t}))"),
        format!("SELECT * FROM (VALUES (1)) v(a) CROSS JOIN LATERAL (SELECT secret FROM public.{t}) s"),
        format!("SELECT CASE WHEN true THEN secret END FROM public.{t}"),
        format!("SELECT secret FROM public.{t} GROUP BY secret"),
        format!("SELECT DISTINCT secret FROM public.{t}"),
        format!("SELECT pg_catalog.min(secret) FROM public.{t}"),
        format!("SELECT secret::text FROM public.{t}"),
        format!("SELECT secret COLLATE \"C\" FROM public.{t}"),
        format!("SELECT * FROM public.{t} JOIN public.{v} USING (id)"),
        format!("SELECT * FROM public.{t} NATURAL JOIN (SELECT 1 AS id) z"),
        format!("SELECT j.* FROM (public.{t} JOIN public.{v} USING (id)) AS j"),
    ];
    let (mut s, mut buf) = ATTACK.raw(&inst).await;
    let mut leaks = Vec::new();
    for sql in &shapes {
        let ways = [
            ("simple", vec![query(sql)]),
            (
                "portal",
                vec![
                    parse("", sql),
                    bind("", ""),
                    describe(b'P', ""),
                    execute(""),
                    sync(),
                ],
            ),
            (
                "statement",
                vec![
                    parse("", sql),
                    describe(b'S', ""),
                    bind("", ""),
                    execute(""),
                    sync(),
                ],
            ),
            ("none", vec![parse("", sql), bind("", ""), execute(""), sync()]),
        ];
        for (how, frames) in ways {
            let out = common::frames::exchange_or_close(&mut s, &mut buf, &frames).await;
            if ATTACK.leaked(&out) {
                leaks.push(format!("{how}: {sql}"));
            }
            if !out.contains("Z:") {
                eprintln!("session ended at {how}: {sql}: {out}");
                (s, buf) = ATTACK.raw(&inst).await;
            }
            eprintln!("{how}: {sql}\n    {}", out.chars().take(200).collect::<String>());
        }
    }
    let _ = inst.shutdown().await;
    assert!(leaks.is_empty(), "{leaks:#?}");
}

// ---- 6. Types by OID in the text: input functions called directly ----

/// HELD (refused: "pg_catalog.domain_in is not a built-in timebox knows" — masked roles call only
/// allowlisted built-ins). Tried: the type-input built-ins take the type as an OID argument:
/// `domain_in(cstring, oid, int4)`, `record_in`, `array_in` are callable from SQL, and an integer
/// literal names no type. `SELECT pg_catalog.domain_in('a'::cstring, <oid of public.d>, -1) IS
/// NULL` runs `d`'s CHECK (a leaking function) as the engineer; `record_in` with the OID of a
/// composite type whose column is `d`, and `array_in` with `d`'s OID, the same. Each spelling is
/// tried; the watcher looks during each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_type_input_functions_called_with_a_type_oid() {
    let _catalog = common::masking::catalog_lock().write().await;
    let t = unique_name("s11ra_ti_t");
    let d = unique_name("s11ra_ti_d");
    let inst = ATTACK
        .start(
            &[&t],
            ATTACK.setup(&t)
                + &leaking_function(&format!("public.{d}_f"), &t, "text", "boolean", "true")
                + &format!(
                    "CREATE DOMAIN public.{d} AS text CHECK (public.{d}_f(VALUE));
                 GRANT USAGE ON DOMAIN public.{d} TO {READ_USER};
                 CREATE TYPE public.{d}_c AS (a public.{d});
                 GRANT USAGE ON TYPE public.{d}_c TO {READ_USER};"
                ),
        )
        .await;
    let a = accomplice().await;
    let oid = common::pg::scalar(&a, &format!("SELECT 'public.{d}'::regtype::oid")).await;
    let coid = common::pg::scalar(&a, &format!("SELECT 'public.{d}_c'::regtype::oid")).await;
    let spellings = [
        format!("SELECT pg_catalog.domain_in('a'::cstring, {oid}, -1) IS NULL AS n"),
        format!("SELECT pg_catalog.record_in('(a)'::cstring, {coid}, -1) IS NULL AS n"),
        format!("SELECT pg_catalog.array_in('{{a}}'::cstring, {oid}, -1) IS NULL AS n"),
        format!("SELECT pg_catalog.domain_in('a', {oid}::pg_catalog.oid, -1) IS NULL AS n"),
    ];
    let mut leaks = Vec::new();
    for sql in &spellings {
        let (answer, seen) = run_and_watch(&inst, vec![query(sql)]).await;
        eprintln!(
            "{sql}\n  answer: {}\n  watched: {seen}",
            answer.chars().take(300).collect::<String>()
        );
        if ATTACK.leaked(&answer) || ATTACK.leaked(&seen) {
            leaks.push(sql.clone());
        }
    }
    let _ = inst.shutdown().await;
    assert!(leaks.is_empty(), "the domain's CHECK ran: {leaks:#?}");
}

// ---- 7. Pipelines: the Bind's lock block skipped after an error, portals, partial Executes ----

/// Survey, no DDL: pipelined batches where PostgreSQL skips the lock block's own messages (an
/// error earlier in the batch), Executes with a row limit resumed after other portals, Flush
/// without Sync, portals kept across Sync in a client block; after each batch a plain read of the
/// masked column on the same session (answers must stay aligned). HELD when the secret never
/// appears and every batch is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_pipelines_with_skipped_lock_blocks_and_resumed_portals() {
    let _catalog = common::masking::catalog_lock().write().await;
    let t = unique_name("s11ra_pl_t");
    let inst = ATTACK
        .start(
            &[&t],
            ATTACK.setup(&t)
                + &format!(
                "INSERT INTO public.{t} SELECT g, '{SECRET}' || g FROM pg_catalog.generate_series(2, 5) g;"
            ),
        )
        .await;
    let masked = format!("SELECT secret FROM public.{t}");
    let plain = format!("SELECT id::text AS secret FROM public.{t}");
    let lim = |portal: &str, n: i32| {
        let mut b = portal.as_bytes().to_vec();
        b.push(0);
        b.extend(n.to_be_bytes());
        common::frames::msg(b'E', &b)
    };
    let flush = || common::frames::msg(b'H', &[]);
    let close = |kind: u8, name: &str| {
        let mut b = vec![kind];
        b.extend(name.as_bytes());
        b.push(0);
        common::frames::msg(b'C', &b)
    };
    let batches: Vec<(&str, Vec<Vec<BytesMut>>)> = vec![
        (
            "error then a masked Bind (its block skipped)",
            vec![vec![
                parse("a", "SELECT 1/0"),
                bind("", "a"),
                execute(""),
                parse("b", &masked),
                bind("", "b"),
                describe(b'P', ""),
                execute(""),
                sync(),
            ]],
        ),
        (
            "two masked portals interleaved with limits (no Describe for the second)",
            vec![vec![
                parse("c", &masked),
                parse("d", &plain),
                bind("pc", "c"),
                describe(b'P', "pc"),
                lim("pc", 1),
                bind("pd", "d"),
                describe(b'P', "pd"),
                lim("pd", 1),
                lim("pc", 0),
                lim("pd", 0),
                sync(),
            ]],
        ),
        (
            "client block: portal bound, Sync, resumed after another portal's description",
            vec![
                vec![query("BEGIN")],
                vec![
                    parse("e", &masked),
                    bind("pe", "e"),
                    describe(b'P', "pe"),
                    lim("pe", 1),
                    sync(),
                ],
                vec![
                    parse("f", &plain),
                    bind("pf", "f"),
                    describe(b'P', "pf"),
                    lim("pf", 1),
                    sync(),
                ],
                vec![lim("pe", 0), sync()],
                vec![lim("pf", 0), close(b'P', "pe"), close(b'P', "pf"), sync()],
                vec![query("COMMIT")],
            ],
        ),
        (
            "Flush without Sync between Bind and Execute",
            vec![
                vec![parse("g", &masked), bind("pg", "g"), flush()],
                vec![describe(b'P', "pg"), execute("pg"), flush()],
                vec![sync()],
            ],
        ),
        (
            "statement described, then re-described portal of the plain one, masked rows after",
            vec![vec![
                parse("h", &masked),
                parse("i", &plain),
                describe(b'S', "i"),
                bind("ph", "h"),
                describe(b'S', "i"),
                execute("ph"),
                sync(),
            ]],
        ),
        (
            "the lock block's error (failed block) mid-batch, then rows",
            vec![
                vec![query("BEGIN")],
                vec![query("SELECT 1/0")],
                vec![parse("j", &masked), bind("", "j"), execute(""), sync()],
                vec![query("ROLLBACK")],
            ],
        ),
    ];
    let mut leaks = Vec::new();
    for (what, steps) in batches {
        let (mut s, mut buf) = ATTACK.raw(&inst).await;
        let mut out = String::new();
        for frames in steps {
            if frames.last().is_some_and(|f| f[0] == b'H') {
                // Flush without Sync: no ReadyForQuery comes; what came is read with the next.
                common::frames::send(&mut s, &frames).await;
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                continue;
            }
            let answer = common::frames::exchange_or_close(&mut s, &mut buf, &frames).await;
            out.push_str(&answer);
            out.push_str("\n    ");
            if !answer.contains("Z:") {
                out.push_str("(session ended)");
                break;
            }
        }
        if out.contains("(session ended)") {
            (s, buf) = ATTACK.raw(&inst).await;
        }
        let after = common::frames::exchange_or_close(
            &mut s,
            &mut buf,
            &[
                parse("", &masked),
                bind("", ""),
                describe(b'P', ""),
                execute(""),
                sync(),
            ],
        )
        .await;
        eprintln!("{what}:\n    {out}after: {after}");
        if ATTACK.leaked(&out) || ATTACK.leaked(&after) {
            leaks.push(what);
        }
    }
    let _ = inst.shutdown().await;
    assert!(leaks.is_empty(), "{leaks:#?}");
}

// ---- 8. Statements and cursors used after DDL committed ----

/// HELD. Parse `p` = `SELECT x FROM public.v` (and `DECLARE c CURSOR WITH HOLD FOR` the same, then
/// `FETCH 1`; a cursor in an open block would hold `v` locked); the accomplice commits a
/// replacement of `v` whose `x` calls a leaking function; then Bind/Execute `p` (re-planned by
/// PostgreSQL), `EXECUTE` of a SQL `PREPARE`d twin, and `FETCH` from the cursor (simple and as a
/// portal Execute). Each is refused (the text checked again against the new catalog, the cursor's
/// catalog copy stale) before anything runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_statements_and_cursors_used_after_a_committed_replacement() {
    let _catalog = common::masking::catalog_lock().write().await;
    let t = unique_name("s11ra_rb_t");
    let v = unique_name("s11ra_rb_v");
    let inst = ATTACK
        .start(&[&t], ATTACK.setup(&t) + &view(&format!("public.{v}")))
        .await;
    let (mut watcher, mut wbuf) = ATTACK.raw(&inst).await;
    let (mut s, mut buf) = ATTACK.raw(&inst).await;
    let (mut c, mut cbuf) = ATTACK.raw(&inst).await;
    let sql = format!("SELECT x FROM public.{v}");
    let mut out = exchange(&mut s, &mut buf, &[parse("p", &sql), sync()]).await;
    out += &exchange(&mut s, &mut buf, &[query(&format!("PREPARE q AS {sql}"))]).await;
    out += &exchange(
        &mut c,
        &mut cbuf,
        &[query(&format!("DECLARE c CURSOR WITH HOLD FOR {sql}"))],
    )
    .await;
    out += &exchange(&mut c, &mut cbuf, &[query("FETCH 1 FROM c")]).await;
    admin_psql(format!(
        "{} CREATE OR REPLACE VIEW public.{v} AS SELECT id, public.{v}_f() AS x FROM public.{t};",
        leaking_function(&format!("public.{v}_f"), &t, "", "text", "'y'")
    ))
    .await;
    let mut after = Vec::new();
    after.push(
        common::frames::exchange_or_close(
            &mut s,
            &mut buf,
            &[bind("", "p"), describe(b'P', ""), execute(""), sync()],
        )
        .await,
    );
    after.push(common::frames::exchange_or_close(&mut s, &mut buf, &[query("EXECUTE q")]).await);
    after.push(common::frames::exchange_or_close(&mut c, &mut cbuf, &[query("FETCH 1 FROM c")]).await);
    after.push(
        common::frames::exchange_or_close(&mut c, &mut cbuf, &[describe(b'P', "c"), execute("c"), sync()])
            .await,
    );
    let seen = watch(&mut watcher, &mut wbuf).await;
    let _ = inst.shutdown().await;
    eprintln!("before: {out}");
    for a in &after {
        eprintln!("after: {}", a.chars().take(300).collect::<String>());
    }
    eprintln!("watched: {seen}");
    assert!(after.iter().all(|a| !ATTACK.leaked(a)), "{after:?}");
    assert!(!ATTACK.leaked(&seen), "{seen}");
}

// ---- 9. Code the planner picks without the text naming it: an index's operator class ----

/// Closed in s11; LEAK against dbc88af (accomplice plants an index beforehand, no race;
/// deterministic). An index on the masked column with a user operator class (`CREATE OPERATOR CLASS
/// … USING btree`, superuser: the accomplice) whose comparison support function is plpgsql putting
/// its first argument in `application_name`. The engineer filters on the masked column — allowed, a
/// plain filter operand: `SELECT id FROM public.t WHERE secret = 'nope'`. The planner picks an
/// index scan (2000 rows, analysed), whose btree search calls the support function with index
/// entries — the clear values — as the engineer's backend: the secret reaches the watcher (and the
/// engineer's own session, as a ParameterStatus). Nothing in the text names the code;
/// pg_opclass/pg_amproc are not in the catalog fingerprint either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_an_index_operator_class_on_the_masked_column_runs_user_code() {
    let _catalog = common::masking::catalog_lock().write().await;
    let t = unique_name("s11ra_ix_t");
    let inst = ATTACK.start(
        &[&t],
        ATTACK.setup(&t)
            + &format!(
                "INSERT INTO public.{t} SELECT g, 'filler' || g FROM pg_catalog.generate_series(2, 2000) g;
                 CREATE FUNCTION public.{t}_cmp(text, text) RETURNS integer LANGUAGE plpgsql IMMUTABLE AS $f$ BEGIN
                   IF $1 LIKE 's11ra%' THEN PERFORM pg_catalog.set_config('application_name', $1, false); END IF;
                   IF $2 LIKE 's11ra%' THEN PERFORM pg_catalog.set_config('application_name', $2, false); END IF;
                   RETURN pg_catalog.bttextcmp($1, $2); END $f$;
                 CREATE OPERATOR CLASS public.{t}_ops FOR TYPE text USING btree AS
                   OPERATOR 1 pg_catalog.<, OPERATOR 2 pg_catalog.<=, OPERATOR 3 pg_catalog.=,
                   OPERATOR 4 pg_catalog.>=, OPERATOR 5 pg_catalog.>, FUNCTION 1 public.{t}_cmp(text, text);
                 CREATE INDEX {t}_ix ON public.{t} (secret public.{t}_ops);
                 ANALYZE public.{t};"
            ),
    )
    .await;
    let (mut watcher, mut wbuf) = ATTACK.raw(&inst).await;
    let (mut s, mut buf) = ATTACK.raw(&inst).await;
    let plan = exchange(
        &mut s,
        &mut buf,
        &[query(&format!(
            "EXPLAIN SELECT id FROM public.{t} WHERE secret = 'nope'"
        ))],
    )
    .await;
    let answer = exchange(
        &mut s,
        &mut buf,
        &[query(&format!("SELECT id FROM public.{t} WHERE secret = 'nope'"))],
    )
    .await;
    let extended = exchange(
        &mut s,
        &mut buf,
        &[
            parse("", &format!("SELECT id FROM public.{t} WHERE secret = $1")),
            bind_values("", "", &["nope"]),
            describe(b'P', ""),
            execute(""),
            sync(),
        ],
    )
    .await;
    let seen = watch(&mut watcher, &mut wbuf).await;
    let _ = inst.shutdown().await;
    eprintln!("plan: {plan}\nanswer: {answer}\nextended: {extended}\nwatched: {seen}");
    assert!(
        !ATTACK.leaked(&answer) && !ATTACK.leaked(&extended),
        "the engineer's own session: {answer}\n{extended}"
    );
    assert!(
        !ATTACK.leaked(&seen),
        "the operator class's support function got the clear value: {seen}"
    );
}

// ---- 10. A built-in's name resolved to the accomplice's function by the session's search_path ----

/// Shadowing probe: schema `<nsp>` holds `initcap(text)`, `upper(text)` and operator `||`(text,
/// text) of the accomplice (leaking functions); the engineer sets
/// `search_path = <nsp>, pg_catalog` (allowed as a string's last statement) and calls the
/// built-ins by their bare names. HELD when each is refused or runs PostgreSQL's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_bare_builtin_names_shadowed_through_search_path() {
    let _catalog = common::masking::catalog_lock().write().await;
    let t = unique_name("s11ra_sh_t");
    let nsp = unique_name("s11ra_sh_n");
    let inst = ATTACK
        .start(
            &[&t],
            ATTACK.setup(&t)
                + &format!("CREATE SCHEMA {nsp}; GRANT USAGE ON SCHEMA {nsp} TO {READ_USER};")
                + &leaking_function(&format!("{nsp}.initcap"), &t, "text", "text", "$1")
                + &leaking_function(&format!("{nsp}.upper"), &t, "text", "text", "$1")
                + &leaking_function(&format!("{nsp}.cat"), &t, "text, text", "text", "$1")
                + &format!(
                    "CREATE OPERATOR {nsp}.|| (LEFTARG = text, RIGHTARG = text, FUNCTION = {nsp}.cat);"
                ),
        )
        .await;
    let (mut s, mut buf) = ATTACK.raw(&inst).await;
    let set = exchange(
        &mut s,
        &mut buf,
        &[query(&format!("SET search_path = {nsp}, pg_catalog"))],
    )
    .await;
    eprintln!("set: {set}");
    let mut leaks = Vec::new();
    for sql in [
        "SELECT initcap('a') AS x".to_owned(),
        format!("SELECT upper('a') AS x, id FROM public.{t}"),
        "SELECT 'a' || 'b' AS x".to_owned(),
        "SELECT 'a'::text || 'b'::text AS x".to_owned(),
    ] {
        let (mut watcher, mut wbuf) = ATTACK.raw(&inst).await;
        common::frames::send(&mut s, &[query(&sql)]).await;
        tokio::time::sleep(std::time::Duration::from_millis(600)).await;
        let seen = watch(&mut watcher, &mut wbuf).await;
        let answer = common::frames::answer(&mut s, &mut buf).await;
        eprintln!(
            "{sql}\n  answer: {}\n  watched: {seen}",
            answer.chars().take(250).collect::<String>()
        );
        if ATTACK.leaked(&answer) || ATTACK.leaked(&seen) {
            leaks.push(sql);
        }
    }
    let _ = inst.shutdown().await;
    assert!(leaks.is_empty(), "{leaks:#?}");
}

/// HELD (refused at Parse). The statement's names resolve again at Bind under the session's
/// `search_path` of then (PostgreSQL re-analyses a prepared statement when `search_path`
/// changed), while `MaskJudgements::run` checks the text again only when the catalog copy
/// changed. Schema `<nsp>` holds a view `v` whose `x` calls a leaking function (committed
/// before anything); `public.v` is harmless. Parse `p` = `SELECT x FROM v` under the default path,
/// then `SET search_path = <nsp>, public`, then Bind/Execute `p` — and the same with SQL
/// `PREPARE`/`EXECUTE`. Held when refused (unqualified names resolved in every schema) or when
/// `<nsp>.v`'s code never runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_a_prepared_statement_rebound_under_another_search_path() {
    let _catalog = common::masking::catalog_lock().write().await;
    let t = unique_name("s11ra_rp_t");
    let v = unique_name("s11ra_rp_v");
    let nsp = unique_name("s11ra_rp_n");
    let inst = ATTACK
        .start(
            &[&t],
            ATTACK.setup(&t)
                + &view(&format!("public.{v}"))
                + &format!("CREATE SCHEMA {nsp}; GRANT USAGE ON SCHEMA {nsp} TO {READ_USER};")
                + &leaking_function(&format!("{nsp}.f"), &t, "", "text", "'y'")
                + &format!(
                    "CREATE VIEW {nsp}.{v} AS SELECT 1 AS id, {nsp}.f() AS x;
                 GRANT SELECT ON {nsp}.{v} TO {READ_USER};"
                ),
        )
        .await;
    let (mut watcher, mut wbuf) = ATTACK.raw(&inst).await;
    let (mut s, mut buf) = ATTACK.raw(&inst).await;
    let sql = format!("SELECT x FROM {v}");
    let mut out = exchange(&mut s, &mut buf, &[parse("p", &sql), sync()]).await;
    out += &exchange(&mut s, &mut buf, &[query(&format!("PREPARE q AS {sql}"))]).await;
    out += &exchange(
        &mut s,
        &mut buf,
        &[query(&format!("SET search_path = {nsp}, public"))],
    )
    .await;
    common::frames::send(&mut s, &[bind("", "p"), describe(b'P', ""), execute(""), sync()]).await;
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    let seen = watch(&mut watcher, &mut wbuf).await;
    let bound = common::frames::answer(&mut s, &mut buf).await;
    let executed = common::frames::exchange_or_close(&mut s, &mut buf, &[query("EXECUTE q")]).await;
    let seen2 = watch(&mut watcher, &mut wbuf).await;
    let _ = inst.shutdown().await;
    eprintln!("before: {out}\nbound: {bound}\nexecuted: {executed}\nwatched: {seen}\nwatched after: {seen2}");
    assert!(
        !ATTACK.leaked(&bound) && !ATTACK.leaked(&executed),
        "{bound}\n{executed}"
    );
    assert!(!ATTACK.leaked(&seen) && !ATTACK.leaked(&seen2), "{seen}\n{seen2}");
}

/// NOT A MASKING LEAK — audit integrity, same cause as §1 (deterministic). After Parse `p` =
/// `SELECT x FROM public.v` and the refused `PREPARE p AS SELECT 1`, the Bind of `p` (which runs
/// the first text upstream) is audited with the text of the refused `PREPARE`: the audit trail
/// says `PREPARE p AS SELECT 1` ran where `SELECT x FROM public.v` did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_the_bind_after_a_refused_prepare_is_audited_with_the_wrong_text() {
    let _catalog = common::masking::catalog_lock().write().await;
    let t = unique_name("s11ra_au_t");
    let v = unique_name("s11ra_au_v");
    let inst = ATTACK
        .start(&[&t], ATTACK.setup(&t) + &view(&format!("public.{v}")))
        .await;
    let (mut s, mut buf) = ATTACK.raw(&inst).await;
    let mut out = exchange(
        &mut s,
        &mut buf,
        &[parse("p", &format!("SELECT x FROM public.{v}")), sync()],
    )
    .await;
    out += &exchange(&mut s, &mut buf, &[query("PREPARE p AS SELECT 1")]).await;
    out += &exchange(
        &mut s,
        &mut buf,
        &[bind("", "p"), describe(b'P', ""), execute(""), sync()],
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    inst.state.audit.wait_indexed().await.unwrap();
    let records = common::pg::audit_records(&inst.audit_db());
    let sqls: Vec<String> = records
        .iter()
        .filter(|(k, _)| k == "statement")
        .map(|(_, r)| format!("{} {}", r["decision"], r["sql"]))
        .collect();
    let _ = inst.shutdown().await;
    eprintln!("{out}\n{sqls:#?}");
    let last = sqls.last().cloned().unwrap_or_default();
    assert!(
        last.contains(&v),
        "the Bind that ran `SELECT x FROM public.{v}` is audited as: {last}"
    );
}

// ---- 11. Found by the lead while closing §9 (s11) ----

/// Closed in s11 (found reading §9's fix). The operator class's code need not sit on the masked
/// table: a support function reads the masked table itself (SECURITY INVOKER, as the engineer's
/// upstream user). Table `u` (not masked, 2000 rows, analysed) has an index with a user operator
/// class whose comparison puts the masked values in `application_name`; a view `w` over `u` and a
/// list-partitioned `pp` whose partition carries such an index read it without naming it. Each
/// plain filter (`WHERE k = 'nope'`) on `u`, `w` and `pp` is refused naming the relation that runs
/// the code; nothing reaches the engineer's session or the watcher.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_an_operator_class_reached_through_a_view_or_a_partition() {
    let _catalog = common::masking::catalog_lock().write().await;
    let t = unique_name("s11ra_ov_t");
    let inst = ATTACK.start(
        &[&t],
        ATTACK.setup(&t)
            + &format!(
                "CREATE FUNCTION public.{t}_cmp(text, text) RETURNS integer LANGUAGE plpgsql IMMUTABLE AS $f$ BEGIN
                   PERFORM pg_catalog.set_config('application_name', (SELECT pg_catalog.string_agg(secret, ',') FROM public.{t}), false);
                   RETURN pg_catalog.bttextcmp($1, $2); END $f$;
                 CREATE OPERATOR CLASS public.{t}_ops FOR TYPE text USING btree AS
                   OPERATOR 1 pg_catalog.<, OPERATOR 2 pg_catalog.<=, OPERATOR 3 pg_catalog.=,
                   OPERATOR 4 pg_catalog.>=, OPERATOR 5 pg_catalog.>, FUNCTION 1 public.{t}_cmp(text, text);
                 CREATE TABLE public.{t}_u (k text);
                 INSERT INTO public.{t}_u SELECT 'k' || g FROM pg_catalog.generate_series(1, 2000) g;
                 CREATE INDEX ON public.{t}_u (k public.{t}_ops);
                 ANALYZE public.{t}_u;
                 CREATE VIEW public.{t}_w AS SELECT k FROM public.{t}_u;
                 CREATE TABLE public.{t}_pp (k text) PARTITION BY LIST (k);
                 CREATE TABLE public.{t}_pp1 PARTITION OF public.{t}_pp DEFAULT;
                 INSERT INTO public.{t}_pp SELECT 'k' || g FROM pg_catalog.generate_series(1, 2000) g;
                 CREATE INDEX ON public.{t}_pp1 (k public.{t}_ops);
                 ANALYZE public.{t}_pp1;
                 GRANT SELECT ON public.{t}_u, public.{t}_w, public.{t}_pp, public.{t}_pp1 TO {READ_USER};"
            ),
    )
    .await;
    let (mut watcher, mut wbuf) = ATTACK.raw(&inst).await;
    let (mut s, mut buf) = ATTACK.raw(&inst).await;
    let mut answers = Vec::new();
    for rel in ["u", "w", "pp"] {
        let sql = format!("SELECT k FROM public.{t}_{rel} WHERE k = 'nope'");
        answers.push((rel, exchange(&mut s, &mut buf, &[query(&sql)]).await));
    }
    let seen = watch(&mut watcher, &mut wbuf).await;
    let _ = inst.shutdown().await;
    eprintln!("{answers:#?}\nwatched: {seen}");
    for (rel, answer) in &answers {
        assert!(!ATTACK.leaked(answer), "{rel}: {answer}");
        assert!(
            answer.contains("42501") && answer.contains("runs user code when read"),
            "{rel}: {answer}"
        );
    }
    assert!(
        !ATTACK.leaked(&seen),
        "the operator class's support function ran: {seen}"
    );
}

/// Held, and no false denial (s11): an extension's operator class implemented in C (`pg_trgm`'s
/// `gin_trgm_ops`, installed by a superuser like any C code) is not user code: a masked role reads
/// a table with such an index, filtering through it, masked as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_an_extension_operator_class_in_c_is_plain() {
    let _catalog = common::masking::catalog_lock().write().await;
    let t = unique_name("s11ra_tg_t");
    let inst = ATTACK
        .start(
            &[&t],
            ATTACK.setup(&t)
                + &format!(
                    "CREATE EXTENSION IF NOT EXISTS pg_trgm;
                 CREATE INDEX ON public.{t} USING gin (secret public.gin_trgm_ops);"
                ),
        )
        .await;
    let (mut s, mut buf) = ATTACK.raw(&inst).await;
    let answer = exchange(
        &mut s,
        &mut buf,
        &[query(&format!(
            "SET enable_seqscan = off; SELECT id, secret FROM public.{t} WHERE secret LIKE '%secret%'"
        ))],
    )
    .await;
    let _ = inst.shutdown().await;
    // Its operators between built-in types (`%`) would refuse those spellings in later tests.
    admin_psql("DROP EXTENSION pg_trgm CASCADE".to_owned()).await;
    eprintln!("{answer}");
    assert!(!ATTACK.leaked(&answer), "{answer}");
    assert!(
        answer.contains("C:SELECT 1") && answer.contains("***"),
        "one masked row: {answer}"
    );
    assert!(!answer.contains("E:"), "no refusal: {answer}");
}
