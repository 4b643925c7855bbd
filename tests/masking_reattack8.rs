//! Column masking, eighth outside attack (s11, issue 15) after commit 92a448a. Harness as in
//! `tests/masking_reattack7.rs` (masked role `s11rc`, column `secret` of its tables masked with
//! `redact`; the engineer's second session watches `pg_stat_activity` through timebox), but the
//! accomplice is in scope: a NOSUPERUSER role owning a schema (`CREATE ROLE … NOSUPERUSER; CREATE
//! SCHEMA … AUTHORIZATION …; SET ROLE …`), planting only objects such a role may create.
//!
//! `closed_*`: a leak found by this attack (each failed against 92a448a), closed by the fixes that
//! followed; `held_*`: a shape tried that did not leak.
//!
//! Closed (s11): a relation whose index expression or predicate, statistics object, CHECK
//! constraint or partition key calls a procedural-language function (or a user operator or code
//! type) runs user code when read — refused, and carried up to views and parents (§2); a view whose
//! rule converts values to a user domain likewise (§1, its CHECK could change meanwhile); the lock
//! block plans each relation read (`EXPLAIN SELECT FROM …`, `lock_timeout` 1 ms for those only)
//! before its fingerprint, so the statement holds every index lock it will need and waits for none
//! after the check — an index held by another session fails the block (55P03) instead (§1).
//!
//! Found against 92a448a (10 repros in 2 families, every one deterministic, run at least twice;
//! every planted object created by the NOSUPERUSER owner):
//! - §2 **planner constant folding of the accomplice's relation expressions** (no race, no DDL
//!   while it runs, no second session needed): PostgreSQL's planner runs a relation's index
//!   expressions and partial-index predicates (`get_relation_info`), expression statistics
//!   (`get_relation_statistics`), inheritance children's CHECK constraints (constraint exclusion,
//!   default `partition`; a plain table's too after the engineer's own `SET constraint_exclusion =
//!   on`) and partition key expressions through `eval_const_expressions`, which
//!   *calls* an IMMUTABLE function with constant arguments — the accomplice's plpgsql `f(1)`, run
//!   in the engineer's session as the engineer's upstream user. timebox's `code_rel` looks at
//!   index/partition operator classes and policies only, never at these expressions, so a plain
//!   `SELECT id FROM <acc>.p` (even joined with the masked table) is allowed: the secret reaches
//!   the engineer's own session as a NOTICE, a ParameterStatus `application_name`, `SHOW`, and the
//!   watcher's `pg_stat_activity`;
//! - §1 **the planner waits for a lock the block does not hold**: the block's `LOCK TABLE` does
//!   not lock indexes, and the planner `index_open`s every index of what it reads *after* the
//!   block's fingerprint comparison. The accomplice holds `REINDEX INDEX <acc>.a_pkey` (ACCESS
//!   EXCLUSIVE on the index only) with other DDL in one open transaction and commits once the
//!   engineer's backend waits: the plan and executor then use the new catalog — a CHECK added to a
//!   domain a view coerces to (executor start-up loads domain constraints; simple Query and
//!   Parse/Bind/Execute), or a new index with a folded expression on a second table of the
//!   statement. The result is refused afterwards ("changed while the statement ran"; the extended
//!   one closes the session) but the code already ran: the watcher sees the secret in
//!   `pg_stat_activity` (the function sleeps 2 s).
//!
//! Held: a view coercing to a domain whose CHECK is user code before the check (refused); a stored
//! generated column and a column default of user code on a read (not evaluated); the owner's
//! `security_invoker` views over the masked table (plain, function, UNION ALL arm, security
//! barrier, typmod cast; simple and extended): all refused as views over a masked column.
//! Scope of §1: the statement must read a relation the accomplice owns (REINDEX needs the owner).
//! Note: the watcher reads every backend's `application_name`; the race repros were each also run
//! alone (a lingering backend of an earlier repro is not what they see).
//! Odd: a Parse/Bind/Execute without Describe of a masked statement is refused ("no RowDescription
//! timebox saw") — documented; with Describe the race's refusal closes the session (FATAL), by
//! design.

mod common;

use bytes::BytesMut;
use common::attack::{lock_waiting, raw_exchange_or_close, watch, Attack};
use common::cluster::{unique_name, READ_USER};
use common::frames::{bind, describe, exchange, execute, parse, query, sync};
use common::masking::{accomplice, admin_psql, start_over};
use common::TestInstance;

/// The value every table of these probes holds in its masked column `secret`.
const SECRET: &str = "s11rc-secret-value";

/// The attack's masked role and secret (the shared harness: `common::attack`).
const ATTACK: Attack = Attack {
    role: "s11rc",
    secret: SECRET,
};

/// The in-scope accomplice: a superuser connection that created role `<acc>` (NOSUPERUSER,
/// NOLOGIN) owning schema `<acc>` (usage granted to the read user), then `SET ROLE <acc>`: every
/// object the probe plants is created by that role.
async fn owner(acc: &str) -> tokio_postgres::Client {
    let a = accomplice().await;
    a.batch_execute(&format!(
        "CREATE ROLE {acc} NOLOGIN NOSUPERUSER NOCREATEROLE NOCREATEDB;
         CREATE SCHEMA {acc} AUTHORIZATION {acc};
         SET ROLE {acc};
         GRANT USAGE ON SCHEMA {acc} TO {READ_USER};"
    ))
    .await
    .unwrap();
    a
}

/// A second connection acting as `<acc>` (for the transaction held across the engineer's
/// statement).
async fn as_owner(acc: &str) -> tokio_postgres::Client {
    let a = accomplice().await;
    a.batch_execute(&format!("SET ROLE {acc}")).await.unwrap();
    a
}

/// plpgsql body (SECURITY INVOKER) that, run by the engineer's upstream user, puts the masked
/// values of `public.<t>` in `application_name`, raises them as a NOTICE and sleeps 2 s; run by the
/// accomplice (who may not read `t`) it does nothing. Ends with `RETURN <ret>`.
fn leak_body(t: &str, ret: &str) -> String {
    format!(
        "$f$ BEGIN \
           PERFORM pg_catalog.set_config('application_name', (SELECT pg_catalog.string_agg(secret, ',') FROM public.{t}), false); \
           RAISE NOTICE 'leak %', (SELECT pg_catalog.string_agg(secret, ',') FROM public.{t}); \
           PERFORM pg_catalog.pg_sleep(2); \
           RETURN {ret}; \
         EXCEPTION WHEN insufficient_privilege THEN RETURN {ret}; END $f$"
    )
}

/// What one probe saw: the engineer's answers, `SHOW application_name` on its session, the
/// watcher's `pg_stat_activity`, and whether the statement waited for the accomplice's lock.
struct Seen {
    before: String,
    answer: String,
    shown: String,
    watched: String,
    waited: bool,
}

impl Seen {
    fn log(&self) -> String {
        format!(
            "before: {}\nanswer: {}\nshown: {}\nwatched: {}\nwaited: {}",
            self.before, self.answer, self.shown, self.watched, self.waited
        )
    }
    fn assert_no_leak(&self) {
        let log = self.log();
        eprintln!("{log}");
        assert!(!ATTACK.leaked(&self.answer), "the engineer's answer: {log}");
        assert!(
            !ATTACK.leaked(&self.shown),
            "the engineer's application_name: {log}"
        );
        assert!(
            !ATTACK.leaked(&self.watched),
            "the engineer's second session: {log}"
        );
    }
}

/// Runs `prepare` (batch by batch) on an engineer's session, then has `<acc>` open a transaction
/// running `hold`, sends `run`; once a backend whose query is `LIKE like` waits for a lock, the
/// accomplice commits; 700 ms later the watcher reads `pg_stat_activity`.
async fn across_hold(
    inst: &TestInstance,
    acc: &str,
    prepare: Vec<Vec<BytesMut>>,
    hold: &str,
    run: Vec<BytesMut>,
    like: &str,
) -> Seen {
    let (mut watcher, mut wbuf) = ATTACK.raw(inst).await;
    let (mut s, mut buf) = ATTACK.raw(inst).await;
    let mut before = String::new();
    for batch in prepare {
        before.push_str(&common::frames::exchange_or_close(&mut s, &mut buf, &batch).await);
        before.push_str("\n  ");
    }
    let a = as_owner(acc).await;
    a.batch_execute(&format!("BEGIN; {hold}")).await.unwrap();
    let running = tokio::spawn(raw_exchange_or_close(s, buf, run));
    let b = accomplice().await;
    let waited = lock_waiting(&b, like).await;
    a.batch_execute("COMMIT").await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    let watched = watch(&mut watcher, &mut wbuf).await;
    let (answer, mut s, mut buf) = tokio::time::timeout(std::time::Duration::from_secs(30), running)
        .await
        .expect("the statement ends")
        .unwrap();
    let shown = common::frames::exchange_or_close(&mut s, &mut buf, &[query("SHOW application_name")]).await;
    Seen {
        before,
        answer,
        shown,
        watched,
        waited,
    }
}

// ---- 1. A domain constraint added while the planner waits for an index ----

/// Accomplice objects: domain `<acc>.d` over text with a plain CHECK (so the planner keeps the
/// `CoerceToDomain`), table `<acc>.a` (id PRIMARY KEY, one row), view `<acc>.v` = `SELECT a.id,
/// 'x'::text::<acc>.d AS c FROM <acc>.a`, function `<acc>.leak(text) RETURNS bool` (leaking).
async fn domain_setup(acc: &str, t: &str) -> TestInstance {
    admin_psql(ATTACK.setup(t)).await;
    let a = owner(acc).await;
    a.batch_execute(&format!(
        "CREATE DOMAIN {acc}.d AS text CHECK (VALUE IS NOT NULL);
         CREATE TABLE {acc}.a (id int PRIMARY KEY);
         INSERT INTO {acc}.a VALUES (1);
         CREATE VIEW {acc}.v AS SELECT a.id, 'x'::text::{acc}.d AS c FROM {acc}.a a;
         GRANT SELECT ON {acc}.a, {acc}.v TO {READ_USER};
         CREATE FUNCTION {acc}.leak(v text) RETURNS bool LANGUAGE plpgsql VOLATILE AS {};",
        leak_body(t, "true")
    ))
    .await
    .unwrap();
    start_over(&[], ATTACK.role_with(&[t])).await
}

/// LEAK probe (simple Query). The engineer reads `SELECT id, c FROM <acc>.v` (allowed: the view's
/// domain has a plain CHECK). The accomplice holds `REINDEX INDEX <acc>.a_pkey; ALTER DOMAIN
/// <acc>.d ADD CONSTRAINT l CHECK (<acc>.leak(VALUE))` open; the lock block passes (ACCESS SHARE
/// on v and a do not conflict, the fingerprint is unchanged); the planner waits on `a_pkey`; the
/// accomplice commits; the executor loads the domain's constraints at start-up — the new one
/// included — and runs `<acc>.leak` in the engineer's session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_a_domain_check_added_while_the_planner_waits_for_an_index() {
    let _catalog = common::masking::catalog_lock().write().await;
    let t = unique_name("s11rc_dm_t");
    let acc = unique_name("s11rc_dm");
    let inst = domain_setup(&acc, &t).await;
    let sql = format!("SELECT id, c FROM {acc}.v");
    let seen = across_hold(
        &inst,
        &acc,
        vec![vec![query(&sql)]],
        &format!(
            "REINDEX INDEX {acc}.a_pkey; ALTER DOMAIN {acc}.d ADD CONSTRAINT l CHECK ({acc}.leak(VALUE));"
        ),
        vec![query(&sql)],
        &format!("%{acc}.v%"),
    )
    .await;
    let _ = inst.shutdown().await;
    seen.assert_no_leak();
}

/// LEAK probe (extended protocol): as above with Parse/Bind/Execute/Sync of the same statement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_a_domain_check_added_while_a_bind_waits_for_an_index() {
    let _catalog = common::masking::catalog_lock().write().await;
    let t = unique_name("s11rc_dx_t");
    let acc = unique_name("s11rc_dx");
    let inst = domain_setup(&acc, &t).await;
    let sql = format!("SELECT id, c FROM {acc}.v");
    let frames = || {
        vec![
            parse("", &sql),
            bind("", ""),
            describe(b'P', ""),
            execute(""),
            sync(),
        ]
    };
    let seen = across_hold(
        &inst,
        &acc,
        vec![frames()],
        &format!(
            "REINDEX INDEX {acc}.a_pkey; ALTER DOMAIN {acc}.d ADD CONSTRAINT l CHECK ({acc}.leak(VALUE));"
        ),
        frames(),
        &format!("%{acc}.v%"),
    )
    .await;
    let _ = inst.shutdown().await;
    seen.assert_no_leak();
}

/// HELD baseline. The same view when the domain's CHECK already calls `<acc>.leak` before the
/// engineer's statement is checked: refused before it runs (the domain's constraint is user code).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_a_view_coercing_to_a_domain_with_a_user_check() {
    let _catalog = common::masking::catalog_lock().write().await;
    let t = unique_name("s11rc_db_t");
    let acc = unique_name("s11rc_db");
    admin_psql(ATTACK.setup(&t)).await;
    let a = owner(&acc).await;
    a.batch_execute(&format!(
        "CREATE FUNCTION {acc}.leak(v text) RETURNS bool LANGUAGE plpgsql VOLATILE AS {};
         CREATE DOMAIN {acc}.d AS text CHECK ({acc}.leak(VALUE));
         CREATE TABLE {acc}.a (id int PRIMARY KEY);
         INSERT INTO {acc}.a VALUES (1);
         CREATE VIEW {acc}.v AS SELECT a.id, 'x'::text::{acc}.d AS c FROM {acc}.a a;
         GRANT SELECT ON {acc}.a, {acc}.v TO {READ_USER};",
        leak_body(&t, "true")
    ))
    .await
    .unwrap();
    let inst = start_over(&[], ATTACK.role_with(&[&t])).await;
    let (mut watcher, mut wbuf) = ATTACK.raw(&inst).await;
    let (mut s, mut buf) = ATTACK.raw(&inst).await;
    let answer = exchange(&mut s, &mut buf, &[query(&format!("SELECT id, c FROM {acc}.v"))]).await;
    let shown = exchange(&mut s, &mut buf, &[query("SHOW application_name")]).await;
    let watched = watch(&mut watcher, &mut wbuf).await;
    let _ = inst.shutdown().await;
    Seen {
        before: String::new(),
        answer,
        shown,
        watched,
        waited: false,
    }
    .assert_no_leak();
}

// ---- 2. An index expression constant-folded at planning ----

/// Accomplice objects: tables `<acc>.a` (id PRIMARY KEY, one row) and `<acc>.p` (id int, empty),
/// both readable by the read user; `<acc>.f(int) RETURNS int` IMMUTABLE plpgsql (leaking).
/// `extra` runs after them (as the accomplice).
async fn index_setup(acc: &str, t: &str, extra: &str) -> TestInstance {
    admin_psql(ATTACK.setup(t)).await;
    let a = owner(acc).await;
    a.batch_execute(&format!(
        "CREATE TABLE {acc}.a (id int PRIMARY KEY);
         INSERT INTO {acc}.a VALUES (1);
         CREATE TABLE {acc}.p (id int);
         GRANT SELECT ON {acc}.a, {acc}.p TO {READ_USER};
         CREATE FUNCTION {acc}.f(v int) RETURNS int LANGUAGE plpgsql IMMUTABLE AS {};
         {extra}",
        leak_body(t, "v")
    ))
    .await
    .unwrap();
    start_over(&[], ATTACK.role_with(&[t])).await
}

/// One engineer's statement `sql` (simple Query) on a fresh session, no race; (answer, shown,
/// watched) as a [`Seen`].
async fn direct(inst: &TestInstance, sql: &str) -> Seen {
    let (mut watcher, mut wbuf) = ATTACK.raw(inst).await;
    let (mut s, mut buf) = ATTACK.raw(inst).await;
    let answer = common::frames::exchange_or_close(&mut s, &mut buf, &[query(sql)]).await;
    let shown = common::frames::exchange_or_close(&mut s, &mut buf, &[query("SHOW application_name")]).await;
    let watched = watch(&mut watcher, &mut wbuf).await;
    Seen {
        before: String::new(),
        answer,
        shown,
        watched,
        waited: false,
    }
}

/// Runs `direct(sql)` over [`index_setup`] with `extra`, asserting no leak.
async fn direct_probe(name: &str, extra: impl Fn(&str) -> String, sql: impl Fn(&str) -> String) {
    let t = unique_name(&format!("{name}_t"));
    let acc = unique_name(name);
    let inst = index_setup(&acc, &t, &extra(&acc)).await;
    let seen = direct(&inst, &sql(&acc)).await;
    let _ = inst.shutdown().await;
    seen.assert_no_leak();
}

/// LEAK probe (no race, no second session needed). `<acc>.p` (the accomplice's own, empty) has an
/// index on `(id + <acc>.f(1))`, `f` an IMMUTABLE plpgsql function of the accomplice; the engineer
/// sends `SELECT id FROM <acc>.p`. The planner runs every index's expressions through
/// `eval_const_expressions` (`get_relation_info` → `RelationGetIndexExpressions`), which calls
/// `f(1)` in the engineer's session as the engineer's upstream user. timebox's `code_rel` looks at
/// index operator classes only, not index expressions: the statement is allowed. Against 92a448a:
/// NOTICE with the secret and ParameterStatus `application_name` = secret on the engineer's own
/// session, then `SHOW`, and the watcher's `pg_stat_activity` (deterministic).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_an_index_expression_folded_at_planning() {
    let _catalog = common::masking::catalog_lock().write().await;
    direct_probe(
        "s11rc_ix",
        |acc| format!("CREATE INDEX p_x ON {acc}.p ((id + {acc}.f(1)));"),
        |acc| format!("SELECT id FROM {acc}.p"),
    )
    .await;
}

/// LEAK probe. As above with a partial index `ON <acc>.p (id) WHERE <acc>.f(1) > 0`
/// (`RelationGetIndexPredicate` folds the predicate too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_a_partial_index_predicate_folded_at_planning() {
    let _catalog = common::masking::catalog_lock().write().await;
    direct_probe(
        "s11rc_ip",
        |acc| format!("CREATE INDEX p_x ON {acc}.p (id) WHERE {acc}.f(1) > 0;"),
        |acc| format!("SELECT id FROM {acc}.p"),
    )
    .await;
}

/// LEAK probe? Extended statistics on an expression `CREATE STATISTICS <acc>.s ON (id +
/// <acc>.f(1)) FROM <acc>.p` (`get_relation_statistics` folds the expressions at planning).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_a_statistics_expression_folded_at_planning() {
    let _catalog = common::masking::catalog_lock().write().await;
    direct_probe(
        "s11rc_st",
        |acc| format!("CREATE STATISTICS {acc}.s ON (id + {acc}.f(1)) FROM {acc}.p;"),
        |acc| format!("SELECT id FROM {acc}.p WHERE id = 1"),
    )
    .await;
}

/// LEAK probe? A CHECK constraint `(id + <acc>.f(1)) IS NOT NULL` on an inheritance child
/// `<acc>.c` of `<acc>.p`; the engineer reads the parent with a filter. With
/// `constraint_exclusion = partition` (the default) the planner folds the child's constraints
/// (`get_relation_constraints`) to try to exclude it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_a_child_check_constraint_folded_at_planning() {
    let _catalog = common::masking::catalog_lock().write().await;
    direct_probe(
        "s11rc_ck",
        |acc| {
            format!(
                "CREATE TABLE {acc}.c (CHECK ((id + {acc}.f(1)) IS NOT NULL)) INHERITS ({acc}.p);
                 GRANT SELECT ON {acc}.c TO {READ_USER};"
            )
        },
        |acc| format!("SELECT id FROM {acc}.p WHERE id = 1"),
    )
    .await;
}

/// LEAK probe? A partitioned table of the accomplice `<acc>.pp` partitioned by `RANGE ((id +
/// <acc>.f(1)))`, one partition; the engineer reads `SELECT id FROM <acc>.pp`
/// (`RelationBuildPartitionKey` folds the key's expressions).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_a_partition_key_expression_folded_when_read() {
    let _catalog = common::masking::catalog_lock().write().await;
    direct_probe(
        "s11rc_pk",
        |acc| {
            format!(
                "CREATE TABLE {acc}.pp (id int) PARTITION BY RANGE ((id + {acc}.f(1)));
                 CREATE TABLE {acc}.pp1 PARTITION OF {acc}.pp FOR VALUES FROM (0) TO (100);
                 GRANT SELECT ON {acc}.pp, {acc}.pp1 TO {READ_USER};"
            )
        },
        |acc| format!("SELECT id FROM {acc}.pp"),
    )
    .await;
}

/// HELD? A stored generated column `g int GENERATED ALWAYS AS (id + <acc>.f(1)) STORED` and a
/// column default `DEFAULT <acc>.f(2)` on the accomplice's table (one row inserted as the
/// accomplice, whose `f` does nothing); the engineer reads `SELECT id, g FROM <acc>.q`: neither
/// expression is evaluated (or folded) by a SELECT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_a_generated_column_and_a_default_on_read() {
    let _catalog = common::masking::catalog_lock().write().await;
    direct_probe(
        "s11rc_gc",
        |acc| {
            format!(
                "CREATE TABLE {acc}.q (id int, g int GENERATED ALWAYS AS (id + {acc}.f(1)) STORED, d int DEFAULT {acc}.f(2));
                 INSERT INTO {acc}.q (id) VALUES (1);
                 GRANT SELECT ON {acc}.q TO {READ_USER};"
            )
        },
        |acc| format!("SELECT id, g, d FROM {acc}.q"),
    )
    .await;
}

/// LEAK probe? The accomplice's table `<acc>.p` with the folded index joined with the masked table
/// itself: `SELECT t.id, t.secret FROM public.<t> t, <acc>.p y` (masked column plain).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_an_index_expression_folded_beside_the_masked_table() {
    let _catalog = common::masking::catalog_lock().write().await;
    let t = unique_name("s11rc_jx_t");
    let acc = unique_name("s11rc_jx");
    let inst = index_setup(
        &acc,
        &t,
        &format!("CREATE INDEX p_x ON {acc}.p ((id + {acc}.f(1)));"),
    )
    .await;
    let seen = direct(
        &inst,
        &format!("SELECT x.id, x.secret FROM public.{t} x, {acc}.p y"),
    )
    .await;
    let _ = inst.shutdown().await;
    seen.assert_no_leak();
}

/// LEAK probe. The engineer reads `SELECT x.id FROM <acc>.a x, <acc>.p y` (two plain tables,
/// no index of user code). The accomplice holds `REINDEX INDEX <acc>.a_pkey; CREATE INDEX p_x ON
/// <acc>.p ((id + <acc>.f(1)))` open (SHARE on p: no conflict with the block's ACCESS SHARE); the
/// planner waits on `a_pkey` (a's `get_relation_info`); the accomplice commits; p's
/// `get_relation_info` then lists the new index and constant-folds `f(1)` in the engineer's session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_an_index_created_while_the_planner_waits_for_another() {
    let _catalog = common::masking::catalog_lock().write().await;
    let t = unique_name("s11rc_ir_t");
    let acc = unique_name("s11rc_ir");
    let inst = index_setup(&acc, &t, "").await;
    let sql = format!("SELECT x.id FROM {acc}.a x, {acc}.p y");
    let seen = across_hold(
        &inst,
        &acc,
        vec![vec![query(&sql)]],
        &format!("REINDEX INDEX {acc}.a_pkey; CREATE INDEX p_x ON {acc}.p ((id + {acc}.f(1)));"),
        vec![query(&sql)],
        &format!("%{acc}.a x%"),
    )
    .await;
    let _ = inst.shutdown().await;
    seen.assert_no_leak();
}

// ---- 3. Views the accomplice owns over the masked table ----

/// HELD? The accomplice (who cannot read `public.<t>`) creates `security_invoker` views over it —
/// PostgreSQL checks the reader's privileges, so the engineer's upstream user reads through them:
/// `sv1` plain (`id, secret AS x`), `sv2` with `upper(secret)`, `sv3` a `UNION ALL` whose second
/// arm carries the secret under a column typed by the first (accomplice's own table), `sv4`
/// `security_barrier` with a filter on the secret, `sv5` `secret::varchar(100)`. Each read by
/// the engineer by every column; expected: masked or refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_security_invoker_views_of_the_owner_over_the_masked_table() {
    let _catalog = common::masking::catalog_lock().write().await;
    let t = unique_name("s11rc_sv_t");
    let acc = unique_name("s11rc_sv");
    admin_psql(ATTACK.setup(&t)).await;
    let a = owner(&acc).await;
    a.batch_execute(&format!(
        "CREATE TABLE {acc}.a (id int PRIMARY KEY, s text);
         INSERT INTO {acc}.a VALUES (1, 'own');
         CREATE VIEW {acc}.sv1 WITH (security_invoker = true) AS SELECT id, secret AS x FROM public.{t};
         CREATE VIEW {acc}.sv2 WITH (security_invoker = true) AS SELECT id, pg_catalog.upper(secret) AS x FROM public.{t};
         CREATE VIEW {acc}.sv3 WITH (security_invoker = true) AS SELECT id, s AS x FROM {acc}.a UNION ALL SELECT id, secret FROM public.{t};
         CREATE VIEW {acc}.sv4 WITH (security_invoker = true, security_barrier = true) AS SELECT id, secret AS x FROM public.{t} WHERE secret IS NOT NULL;
         CREATE VIEW {acc}.sv5 WITH (security_invoker = true) AS SELECT id, secret::varchar(100) AS x FROM public.{t};
         GRANT SELECT ON {acc}.a, {acc}.sv1, {acc}.sv2, {acc}.sv3, {acc}.sv4, {acc}.sv5 TO {READ_USER};"
    ))
    .await
    .unwrap();
    let inst = start_over(&[], ATTACK.role_with(&[&t])).await;
    let (mut s, mut buf) = ATTACK.raw(&inst).await;
    let mut log = String::new();
    for v in ["sv1", "sv2", "sv3", "sv4", "sv5"] {
        for q in [
            format!("SELECT * FROM {acc}.{v}"),
            format!("SELECT x FROM {acc}.{v}"),
            format!("SELECT pg_catalog.count(*) FROM {acc}.{v} WHERE x = '{SECRET}'"),
        ] {
            let out = common::frames::exchange_or_close(&mut s, &mut buf, &[query(&q)]).await;
            log.push_str(&format!("{q}\n  -> {out}\n"));
            let out = common::frames::exchange_or_close(
                &mut s,
                &mut buf,
                &[
                    parse("", &q),
                    bind("", ""),
                    describe(b'P', ""),
                    execute(""),
                    sync(),
                ],
            )
            .await;
            log.push_str(&format!("  ext -> {out}\n"));
        }
    }
    let _ = inst.shutdown().await;
    eprintln!("{log}");
    assert!(
        !ATTACK.leaked(&log.replace(&format!("x = '{SECRET}'"), "")),
        "{log}"
    );
}

/// LEAK probe? A CHECK `(id + <acc>.f(1)) IS NOT NULL` on a plain table of the accomplice, read with
/// `SET constraint_exclusion = on` first (a session setting the engineer may change?), then
/// `SELECT id FROM <acc>.p WHERE id = 1`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_a_check_constraint_folded_with_constraint_exclusion_on() {
    let _catalog = common::masking::catalog_lock().write().await;
    let t = unique_name("s11rc_ce_t");
    let acc = unique_name("s11rc_ce");
    let inst = index_setup(
        &acc,
        &t,
        &format!("ALTER TABLE {acc}.p ADD CHECK ((id + {acc}.f(1)) IS NOT NULL);"),
    )
    .await;
    let (mut s, mut buf) = ATTACK.raw(&inst).await;
    let set =
        common::frames::exchange_or_close(&mut s, &mut buf, &[query("SET constraint_exclusion = on")]).await;
    drop((s, buf));
    let mut seen = direct(&inst, &format!("SELECT id FROM {acc}.p WHERE id = 1")).await;
    // `direct` opens a fresh session: repeat on one session with the setting.
    let (mut s, mut buf) = ATTACK.raw(&inst).await;
    let out =
        common::frames::exchange_or_close(&mut s, &mut buf, &[query("SET constraint_exclusion = on")]).await;
    let out2 = common::frames::exchange_or_close(
        &mut s,
        &mut buf,
        &[query(&format!("SELECT id FROM {acc}.p WHERE id = 1"))],
    )
    .await;
    seen.before = format!("{set}\n  {out}");
    seen.answer.push_str(&format!("\n  with the setting: {out2}"));
    let _ = inst.shutdown().await;
    seen.assert_no_leak();
}
