//! Column masking, seventh outside attack (s11, issue 15) after commit 55ce9f5. Same harness and
//! accomplice model as `tests/masking_reattack6.rs`: a masked role (`s11rb`, column `secret` of
//! its tables masked with `redact`), an accomplice — the cluster's superuser outside timebox — and
//! the engineer's second session watching `pg_stat_activity` through timebox.
//!
//! `superuser_*`: a leak whose setup only a superuser can make (ignored: out of scope, see below);
//! `held_*`: a shape tried that did not leak.
//!
//! **Out of scope** (s11, the lead; README "Who is trusted"): every leak found here needs DDL that
//! PostgreSQL allows only to a superuser — changing objects of `information_schema` or `pg_catalog`
//! (owned by the bootstrap superuser), adding to an operator family, creating a base type or
//! changing its I/O functions. A superuser can read the masked table directly, so an accomplice
//! with those rights gains nothing from the engineer's session; masking protects the data from the
//! engineer, with accomplices that own ordinary objects (functions, views, domains, operators,
//! casts, policies) in scope. `superuser_setups_are_refused_to_an_object_owner` checks that each
//! setup is refused to a non-superuser that owns a schema. The probes stay (ignored) as a record.
//!
//! Found against 55ce9f5 (7 repros in 5 families, all deterministic, no race, no second session
//! needed: each leak reaches the engineer's own session as a NOTICE and a ParameterStatus
//! `application_name`, then `SHOW`, and the watcher's `pg_stat_activity`). Common cause: timebox
//! decides "user code" from user *namespaces*/OIDs and from domains, ranges, casts, operators,
//! policies, index/partition opclasses — but PostgreSQL also runs code that superuser DDL put
//! (a) into built-in objects that keep their built-in OID and schema, and (b) into type
//! functions timebox never looks at:
//! - §3 `ALTER DOMAIN information_schema.cardinal_number ADD CHECK (user_fn(VALUE))`: any read of
//!   `information_schema.columns` (or `1::information_schema.cardinal_number`) runs it
//!   (`code_type` starts from `user_type` only);
//! - §4 `CREATE OR REPLACE FUNCTION information_schema._pg_char_max_length(…)` in plpgsql (OID
//!   and schema stay built-in, so not in `unsafe_proc`): `information_schema.columns` runs it;
//! - §5 `ALTER OPERATOR FAMILY pg_catalog.integer_ops USING btree ADD FUNCTION 3 (int4, numeric)
//!   user_in_range(…)`: a window frame `RANGE BETWEEN 1.5 PRECEDING` over `VALUES` runs it (the
//!   s11 extended-family rule covers only indexes and partition keys);
//! - §7 a user base type (internal text I/O, no operator/cast) with `ALTER TYPE … SET (SEND =
//!   plpgsql_fn)`: a masked column of that type Bound with binary results runs it on the clear
//!   value (tokio-postgres and other binary drivers would, too);
//! - §8 the same type with `SET (TYPMOD_IN = plpgsql_fn)`: `SELECT NULL::t_mt(5)` and even
//!   `SELECT pg_catalog.to_regtype('public.t_mt(5)')` (type named only in a string) run it.
//!
//! Held: a range type whose `subtype_opclass` has a user comparison function (§1, refused — but
//! only because every user range type has a multirange cast through a user-schema function,
//! which also makes every table with a user range column unreadable: a false denial);
//! `EXPLAIN` / `EXPLAIN (ANALYZE)` across a view replacement (§2, the block catches it); common
//! psql/pgjdbc/information_schema queries and a plain-domain masked column (§6, all allowed);
//! ParameterStatus from the masked session itself and a policy on a built-in table (§9).
//! Odd: user code run in the session overwrites timebox's `application_name` tag
//! (`timebox:alice:g_…`) that `set_config` from the client may not drop.

mod common;

use bytes::BytesMut;
use common::attack::{view, watch, Attack};
use common::cluster::{unique_name, READ_USER};
use common::frames::{bind, describe, exchange, execute, parse, query, sync};
use common::masking::{accomplice, admin_psql};

/// The value every table of these probes holds in its masked column `secret` (for ranges: the
/// lower bound).
const SECRET: &str = "s11rb-secret-value";

/// The attack's masked role and secret (the shared harness: `common::attack`).
const ATTACK: Attack = Attack {
    role: "s11rb",
    secret: SECRET,
};

// ---- 1. A range type whose subtype operator class is user code ----
//
// All four held against 55ce9f5: the table is refused before anything runs (see
// `held_a_range_column_read_plainly` for why, and for the false denial it implies).

/// Table `public.<t>` (id, secret `<t>_r`): `<t>_r` is a range over text whose
/// `subtype_opclass` is a btree operator class of built-in text operators and a user plpgsql
/// comparison function `<t>_cmp` (SECURITY INVOKER) that puts both values it compares in
/// `application_name`. The range type depends on the operator class, not on the function, and
/// its operators are the built-in `anyrange` ones: no user operator, cast or domain, no index.
/// Rows: (1, [SECRET, zzz)), (2, [b, c)).
fn range_setup(t: &str) -> String {
    format!(
        "CREATE FUNCTION public.{t}_cmp(a text, b text) RETURNS int LANGUAGE plpgsql IMMUTABLE AS $f$ BEGIN \
           PERFORM pg_catalog.set_config('application_name', pg_catalog.left(a || '|' || b, 60), false); \
           RETURN pg_catalog.bttextcmp(a, b); END $f$;
         CREATE OPERATOR CLASS public.{t}_ops FOR TYPE text USING btree AS \
           OPERATOR 1 pg_catalog.<(text, text), OPERATOR 2 pg_catalog.<=(text, text), \
           OPERATOR 3 pg_catalog.=(text, text), OPERATOR 4 pg_catalog.>=(text, text), \
           OPERATOR 5 pg_catalog.>(text, text), FUNCTION 1 public.{t}_cmp(text, text);
         CREATE TYPE public.{t}_r AS RANGE (subtype = text, subtype_opclass = public.{t}_ops);
         CREATE TABLE public.{t} (id int PRIMARY KEY, secret public.{t}_r);
         INSERT INTO public.{t} VALUES (1, public.{t}_r('{SECRET}', 'zzz')), (2, public.{t}_r('b', 'c'));
         GRANT SELECT ON public.{t} TO {READ_USER};"
    )
}

/// Runs `frames` (one batch) on a fresh engineer's session over the range table, then
/// `SHOW application_name` on that session and the watcher's view. (answer, shown, watched)
async fn range_probe(t: &str, frames: Vec<BytesMut>) -> (String, String, String) {
    let inst = ATTACK.start(&[t], range_setup(t)).await;
    let (mut watcher, mut wbuf) = ATTACK.raw(&inst).await;
    let (mut s, mut buf) = ATTACK.raw(&inst).await;
    let answer = exchange(&mut s, &mut buf, &frames).await;
    let shown = exchange(&mut s, &mut buf, &[query("SHOW application_name")]).await;
    let seen = watch(&mut watcher, &mut wbuf).await;
    let _ = inst.shutdown().await;
    (answer, shown, seen)
}

/// HELD (refused before it runs). `SELECT id FROM public.t WHERE secret = '[a,b)'` (the masked column a plain operand
/// of `=`, an untyped literal, no type named): `range_eq` compares the bounds with the range's
/// subtype comparison function — the accomplice's plpgsql — on the clear values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_a_range_filter_compares_with_a_user_subtype_opclass() {
    let _catalog = common::masking::catalog_lock().write().await;
    let t = unique_name("s11rb_rf");
    let (answer, shown, seen) = range_probe(
        &t,
        vec![query(&format!(
            "SELECT id FROM public.{t} WHERE secret = '[a,b)'"
        ))],
    )
    .await;
    eprintln!("answer: {answer}\nshown: {shown}\nwatched: {seen}");
    assert!(!ATTACK.leaked(&answer), "ParameterStatus/answer: {answer}");
    assert!(!ATTACK.leaked(&shown), "SHOW application_name: {shown}");
    assert!(!ATTACK.leaked(&seen), "pg_stat_activity: {seen}");
}

/// HELD (refused before it runs). `SELECT id FROM public.t ORDER BY secret` (ORDER BY a masked column, allowed):
/// the sort compares ranges with `range_cmp`, which calls the subtype's comparison function.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_a_range_sort_compares_with_a_user_subtype_opclass() {
    let _catalog = common::masking::catalog_lock().write().await;
    let t = unique_name("s11rb_rs");
    let (answer, shown, seen) = range_probe(
        &t,
        vec![query(&format!("SELECT id FROM public.{t} ORDER BY secret"))],
    )
    .await;
    eprintln!("answer: {answer}\nshown: {shown}\nwatched: {seen}");
    assert!(!ATTACK.leaked(&answer), "ParameterStatus/answer: {answer}");
    assert!(!ATTACK.leaked(&shown), "SHOW application_name: {shown}");
    assert!(!ATTACK.leaked(&seen), "pg_stat_activity: {seen}");
}

/// HELD (refused at Parse), extended protocol: Parse/Bind/Execute/Sync of the filter of
/// [`held_a_range_filter_compares_with_a_user_subtype_opclass`].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_a_range_filter_bound_compares_with_a_user_subtype_opclass() {
    let _catalog = common::masking::catalog_lock().write().await;
    let t = unique_name("s11rb_rb");
    let (answer, shown, seen) = range_probe(
        &t,
        vec![
            parse("", &format!("SELECT id FROM public.{t} WHERE secret = '[a,b)'")),
            bind("", ""),
            execute(""),
            sync(),
        ],
    )
    .await;
    eprintln!("answer: {answer}\nshown: {shown}\nwatched: {seen}");
    assert!(!ATTACK.leaked(&answer), "ParameterStatus/answer: {answer}");
    assert!(!ATTACK.leaked(&shown), "SHOW application_name: {shown}");
    assert!(!ATTACK.leaked(&seen), "pg_stat_activity: {seen}");
}

/// HELD, but a false denial: plain `SELECT id, secret FROM public.t` over the same table is
/// refused too ("its row type … reaches user code through a domain, cast or operator"). Not
/// because of the operator class: every user range type gets a multirange and a cast
/// `range -> multirange` through a constructor function PostgreSQL creates in the range's (user)
/// schema, so `user_cast` makes *every* user range type a code type, and every table with a
/// column of one unreadable by a masked role — even `SELECT id`. The subtype-opclass hole itself
/// (a range's `subtype_opclass` is not followed by `code_root`) is covered only by that accident.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_a_range_column_read_plainly() {
    let _catalog = common::masking::catalog_lock().write().await;
    let t = unique_name("s11rb_rp");
    let (answer, shown, seen) =
        range_probe(&t, vec![query(&format!("SELECT id, secret FROM public.{t}"))]).await;
    eprintln!("answer: {answer}\nshown: {shown}\nwatched: {seen}");
    assert!(!ATTACK.leaked(&answer), "ParameterStatus/answer: {answer}");
    assert!(!ATTACK.leaked(&shown), "SHOW application_name: {shown}");
    assert!(!ATTACK.leaked(&seen), "pg_stat_activity: {seen}");
}

// ---- 2. The s9 race through statements that wrap a read ----

/// Runs `run` (after `prepare`) across the view's replacement and asserts nothing leaked.
async fn race(name: &str, prepare: impl Fn(&str) -> Vec<Vec<BytesMut>>, run: impl Fn(&str) -> Vec<BytesMut>) {
    let t = unique_name(&format!("{name}_t"));
    let v = unique_name(&format!("{name}_v"));
    let inst = ATTACK
        .start(&[&t], ATTACK.setup(&t) + &view(&format!("public.{v}")))
        .await;
    let (before, answer, seen, waited) = ATTACK
        .replaced_while_waiting(&inst, &t, &v, prepare(&v), run(&v), &format!("%{v}%"))
        .await;
    let _ = inst.shutdown().await;
    eprintln!("before: {before}\nanswer: {answer}\nwatched: {seen}\nwaited: {waited}");
    assert!(!ATTACK.leaked(&answer), "{answer}");
    assert!(
        !ATTACK.leaked(&seen),
        "the engineer's second session saw the replaced view's code run: {seen}"
    );
}

/// HELD probe. `EXPLAIN (ANALYZE) SELECT x FROM public.v` across the replacement of `v`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_explain_analyze_across_a_view_replacement() {
    let _catalog = common::masking::catalog_lock().write().await;
    race(
        "s11rb_ea",
        |_| vec![],
        |v| vec![query(&format!("EXPLAIN (ANALYZE) SELECT x FROM public.{v}"))],
    )
    .await;
}

/// HELD probe. `EXPLAIN SELECT x FROM public.v` (plans only) across the replacement of `v`:
/// planning inlines/const-folds nothing of the function (it is VOLATILE), so it must not run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_explain_across_a_view_replacement() {
    let _catalog = common::masking::catalog_lock().write().await;
    race(
        "s11rb_ex",
        |_| vec![],
        |v| vec![query(&format!("EXPLAIN SELECT x FROM public.{v}"))],
    )
    .await;
}

// ---- 3. A built-in domain (information_schema) extended with a CHECK of user code ----

/// The accomplice adds `CHECK (public.<t>_leak(VALUE))` to the built-in domain
/// `information_schema.cardinal_number` (ordinary DDL, `ALTER DOMAIN`; no pg_catalog row edited
/// by hand). `<t>_leak` is plpgsql, SECURITY INVOKER: run in the engineer's session it reads the
/// masked table as the engineer's upstream user, puts the values in `application_name` and raises
/// a NOTICE with them. timebox's code-type closure starts from *user* types only
/// (`code_type … WHERE oid IN (SELECT oid FROM user_type)`), so the built-in domain — and every
/// information_schema view casting to it — counts as safe. Runs `sql` on an engineer's session;
/// the constraint is dropped again before returning (the cluster is shared). (answer, shown,
/// watched)
async fn builtin_domain_probe(t: &str, sql: String) -> (String, String, String) {
    let inst = ATTACK.start(
        &[t],
        ATTACK.setup(t)
            + &format!(
                "CREATE FUNCTION public.{t}_leak(v bigint) RETURNS bool LANGUAGE plpgsql AS $f$ BEGIN \
                   PERFORM pg_catalog.set_config('application_name', (SELECT pg_catalog.string_agg(secret, ',') FROM public.{t}), false); \
                   RAISE NOTICE 'leak %', (SELECT pg_catalog.string_agg(secret, ',') FROM public.{t}); \
                   RETURN true; END $f$;
                 ALTER DOMAIN information_schema.cardinal_number ADD CONSTRAINT {t}_c CHECK (public.{t}_leak(VALUE));"
            ),
    )
    .await;
    let (mut watcher, mut wbuf) = ATTACK.raw(&inst).await;
    let (mut s, mut buf) = ATTACK.raw(&inst).await;
    let answer = exchange(&mut s, &mut buf, &[query(&sql)]).await;
    let shown = exchange(&mut s, &mut buf, &[query("SHOW application_name")]).await;
    let seen = watch(&mut watcher, &mut wbuf).await;
    admin_psql(format!(
        "ALTER DOMAIN information_schema.cardinal_number DROP CONSTRAINT {t}_c"
    ))
    .await;
    let _ = inst.shutdown().await;
    (answer, shown, seen)
}

/// LEAK probe. `SELECT column_name, ordinal_position FROM information_schema.columns WHERE
/// table_name = '<t>'` — a query any driver or tool sends, naming no user object: the view casts
/// `attnum` to `information_schema.cardinal_number`, whose CHECK (the accomplice's) runs in the
/// engineer's session with the engineer's upstream privileges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "superuser-only setup: out of scope (README: who is trusted)"]
async fn superuser_an_extended_information_schema_domain_runs_on_a_catalog_read() {
    let _catalog = common::masking::catalog_lock().write().await;
    let t = unique_name("s11rb_is");
    let (answer, shown, seen) = builtin_domain_probe(
        &t,
        format!(
            "SELECT column_name, ordinal_position FROM information_schema.columns WHERE table_name = '{t}'"
        ),
    )
    .await;
    eprintln!("answer: {answer}\nshown: {shown}\nwatched: {seen}");
    assert!(
        !ATTACK.leaked(&answer),
        "NOTICE/ParameterStatus in the engineer's answer: {answer}"
    );
    assert!(!ATTACK.leaked(&shown), "SHOW application_name: {shown}");
    assert!(!ATTACK.leaked(&seen), "pg_stat_activity: {seen}");
}

/// LEAK probe. `SELECT 1::information_schema.cardinal_number` (the s11 rule refuses naming
/// *user* domains; this one is built-in).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "superuser-only setup: out of scope (README: who is trusted)"]
async fn superuser_an_extended_information_schema_domain_runs_on_a_cast() {
    let _catalog = common::masking::catalog_lock().write().await;
    let t = unique_name("s11rb_ic");
    let (answer, shown, seen) =
        builtin_domain_probe(&t, "SELECT 1::information_schema.cardinal_number".to_owned()).await;
    eprintln!("answer: {answer}\nshown: {shown}\nwatched: {seen}");
    assert!(
        !ATTACK.leaked(&answer),
        "NOTICE/ParameterStatus in the engineer's answer: {answer}"
    );
    assert!(!ATTACK.leaked(&shown), "SHOW application_name: {shown}");
    assert!(!ATTACK.leaked(&seen), "pg_stat_activity: {seen}");
}

// ---- 4. A built-in information_schema function replaced by user code (same OID) ----

/// LEAK probe. The accomplice `CREATE OR REPLACE`s `information_schema._pg_char_max_length(oid,
/// int4)` (a built-in SQL function the `columns` view calls) with plpgsql that reads the masked
/// table, puts it in `application_name` and raises it in a NOTICE. The function keeps its OID
/// (< 16384) and its built-in schema, so `unsafe_proc` (schema not built-in, or OID >= 16384)
/// misses it, and a plpgsql body records no dependency on what it calls. The engineer sends
/// `SELECT column_name, character_maximum_length FROM information_schema.columns WHERE table_name
/// = '<t>'`. The function's definition is restored afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "superuser-only setup: out of scope (README: who is trusted)"]
async fn superuser_a_replaced_information_schema_function_runs_on_a_catalog_read() {
    let _catalog = common::masking::catalog_lock().write().await;
    let t = unique_name("s11rb_if");
    let a = accomplice().await;
    let original = common::pg::scalar(
        &a,
        "SELECT pg_catalog.pg_get_functiondef('information_schema._pg_char_max_length(oid, int4)'::pg_catalog.regprocedure)",
    )
    .await;
    let inst = ATTACK.start(
        &[&t],
        ATTACK.setup(&t)
            + &format!(
                "CREATE OR REPLACE FUNCTION information_schema._pg_char_max_length(typid oid, typmod int4) \
                   RETURNS integer LANGUAGE plpgsql IMMUTABLE AS $f$ BEGIN \
                   PERFORM pg_catalog.set_config('application_name', (SELECT pg_catalog.string_agg(secret, ',') FROM public.{t}), false); \
                   RAISE NOTICE 'leak %', (SELECT pg_catalog.string_agg(secret, ',') FROM public.{t}); \
                   RETURN NULL; END $f$;"
            ),
    )
    .await;
    let (mut watcher, mut wbuf) = ATTACK.raw(&inst).await;
    let (mut s, mut buf) = ATTACK.raw(&inst).await;
    let answer = exchange(
        &mut s,
        &mut buf,
        &[query(&format!(
            "SELECT column_name, character_maximum_length FROM information_schema.columns WHERE table_name = '{t}'"
        ))],
    )
    .await;
    let shown = exchange(&mut s, &mut buf, &[query("SHOW application_name")]).await;
    let seen = watch(&mut watcher, &mut wbuf).await;
    a.batch_execute(&original).await.unwrap();
    let _ = inst.shutdown().await;
    eprintln!("answer: {answer}\nshown: {shown}\nwatched: {seen}");
    assert!(
        !ATTACK.leaked(&answer),
        "NOTICE/ParameterStatus in the engineer's answer: {answer}"
    );
    assert!(!ATTACK.leaked(&shown), "SHOW application_name: {shown}");
    assert!(!ATTACK.leaked(&seen), "pg_stat_activity: {seen}");
}

// ---- 5. A built-in operator family extended with an in_range support function ----

/// LEAK probe. The accomplice adds `FUNCTION 3 (int4, numeric) public.<t>_inr(…)` — an `in_range`
/// support function in plpgsql (reads the masked table, `application_name`, NOTICE) — to the
/// built-in btree family `pg_catalog.integer_ops` (ordinary DDL, `ALTER OPERATOR FAMILY … ADD`;
/// the s11 rule knows such families, but only for indexes and partition keys). The engineer
/// sends `SELECT x, count(*) OVER (ORDER BY x RANGE BETWEEN 1.5 PRECEDING AND CURRENT ROW) FROM
/// (VALUES (1), (2)) v(x)`: no relation, no masked column, no user name; the parser picks the
/// family's in_range function for (int4, numeric) and the executor calls it per row. The
/// function is dropped from the family afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "superuser-only setup: out of scope (README: who is trusted)"]
async fn superuser_an_extended_builtin_family_runs_in_range_for_a_window_frame() {
    let _catalog = common::masking::catalog_lock().write().await;
    let t = unique_name("s11rb_ir");
    let inst = ATTACK.start(
        &[&t],
        ATTACK.setup(&t)
            + &format!(
                "CREATE FUNCTION public.{t}_inr(val int4, base int4, off numeric, sub bool, less bool) \
                   RETURNS bool LANGUAGE plpgsql IMMUTABLE AS $f$ BEGIN \
                   PERFORM pg_catalog.set_config('application_name', (SELECT pg_catalog.string_agg(secret, ',') FROM public.{t}), false); \
                   RAISE NOTICE 'leak %', (SELECT pg_catalog.string_agg(secret, ',') FROM public.{t}); \
                   RETURN true; END $f$;
                 ALTER OPERATOR FAMILY pg_catalog.integer_ops USING btree \
                   ADD FUNCTION 3 (int4, numeric) public.{t}_inr(int4, int4, numeric, bool, bool);"
            ),
    )
    .await;
    let (mut watcher, mut wbuf) = ATTACK.raw(&inst).await;
    let (mut s, mut buf) = ATTACK.raw(&inst).await;
    let answer = exchange(
        &mut s,
        &mut buf,
        &[query(
            "SELECT x, count(*) OVER (ORDER BY x RANGE BETWEEN 1.5 PRECEDING AND CURRENT ROW) FROM (VALUES (1), (2)) v(x)",
        )],
    )
    .await;
    let shown = exchange(&mut s, &mut buf, &[query("SHOW application_name")]).await;
    let seen = watch(&mut watcher, &mut wbuf).await;
    admin_psql(
        "ALTER OPERATOR FAMILY pg_catalog.integer_ops USING btree DROP FUNCTION 3 (int4, numeric)".to_owned(),
    )
    .await;
    let _ = inst.shutdown().await;
    eprintln!("answer: {answer}\nshown: {shown}\nwatched: {seen}");
    assert!(
        !ATTACK.leaked(&answer),
        "NOTICE/ParameterStatus in the engineer's answer: {answer}"
    );
    assert!(!ATTACK.leaked(&shown), "SHOW application_name: {shown}");
    assert!(!ATTACK.leaked(&seen), "pg_stat_activity: {seen}");
}

// ---- 6. False denials: what a masked session's tools send ----

/// HELD (no leak; all eight allowed against 55ce9f5); prints each query's outcome — refusals of
/// these would be false denials. Over a masked table `t` (text `secret`) and a table `<t>_d` whose masked `secret` is
/// of a plain user domain (`CHECK (VALUE ~ '-')`, built-in code only): psql's `\d` queries,
/// pgjdbc's type lookup, information_schema, reads and filters of the domain-typed column, and
/// common `::regclass`/`format_type` catalog reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_common_tool_queries_of_a_masked_session() {
    let _catalog = common::masking::catalog_lock().write().await;
    let t = unique_name("s11rb_fd");
    let d = format!("{t}_d");
    let inst = ATTACK
        .start(
            &[&t, &d],
            ATTACK.setup(&t)
                + &format!(
                    "CREATE DOMAIN public.{t}_dom AS text CHECK (VALUE ~ '-');
                 CREATE TABLE public.{d} (id int PRIMARY KEY, secret public.{t}_dom);
                 INSERT INTO public.{d} VALUES (1, '{SECRET}');
                 GRANT SELECT ON public.{d} TO {READ_USER};"
                ),
        )
        .await;
    let queries = [
        format!("SELECT id, secret FROM public.{d}"),
        format!("SELECT id FROM public.{d} WHERE secret = 'a-b'"),
        format!("SELECT id FROM public.{d} ORDER BY secret"),
        format!(
            "SELECT c.oid, n.nspname, c.relname FROM pg_catalog.pg_class c \
             LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relname OPERATOR(pg_catalog.~) '^({t})$' COLLATE pg_catalog.default \
             AND pg_catalog.pg_table_is_visible(c.oid) ORDER BY 2, 3"
        ),
        format!(
            "SELECT a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod), \
             (SELECT pg_catalog.pg_get_expr(d.adbin, d.adrelid, true) FROM pg_catalog.pg_attrdef d \
              WHERE d.adrelid = a.attrelid AND d.adnum = a.attnum AND a.atthasdef), a.attnotnull \
             FROM pg_catalog.pg_attribute a WHERE a.attrelid = 'public.{d}'::pg_catalog.regclass \
             AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum"
        ),
        "SELECT typinput='pg_catalog.array_in'::regproc as is_array, typtype, typname, pg_type.oid \
         FROM pg_catalog.pg_type LEFT JOIN (select ns.oid as nspoid, ns.nspname, r.r from pg_namespace as ns \
         join ( select s.r, (current_schemas(false))[s.r] as nspname from \
         generate_series(1, array_upper(current_schemas(false), 1)) as s(r) ) as r using ( nspname ) \
         ) as sp ON sp.nspoid = typnamespace WHERE pg_type.oid = 25 ORDER BY sp.r, pg_type.oid DESC"
            .to_owned(),
        format!(
            "SELECT column_name, data_type, domain_name, ordinal_position FROM information_schema.columns \
             WHERE table_schema = 'public' AND table_name = '{d}'"
        ),
        format!("SELECT t.typname FROM pg_catalog.pg_type t WHERE t.typname = '{t}_dom'"),
    ];
    let (mut s, mut buf) = ATTACK.raw(&inst).await;
    let mut log = String::new();
    for q in &queries {
        let out = exchange(&mut s, &mut buf, &[query(q)]).await;
        let verdict = if out.contains("E:SERROR") {
            let m = out
                .split("|M")
                .nth(1)
                .unwrap_or("")
                .split('|')
                .next()
                .unwrap_or("");
            format!("REFUSED: {m}")
        } else {
            "ok".to_owned()
        };
        log.push_str(&format!("{q}\n  -> {verdict}\n"));
        assert!(!ATTACK.leaked(&out), "{q}: {out}");
    }
    let _ = inst.shutdown().await;
    eprintln!("{log}");
}

// ---- 7. A user base type whose binary SEND function is plpgsql ----

/// A Bind of `stmt` into the unnamed portal asking every result column in binary.
fn bind_binary(stmt: &str) -> BytesMut {
    let mut b = Vec::new();
    b.extend(b"\0");
    b.extend(stmt.as_bytes());
    b.push(0);
    b.extend(0i16.to_be_bytes()); // parameter formats
    b.extend(0i16.to_be_bytes()); // parameters
    b.extend(1i16.to_be_bytes()); // result formats: one, for all
    b.extend(1i16.to_be_bytes()); // binary
    common::frames::msg(b'B', &b)
}

/// LEAK probe. The masked column `secret` is of a user base type `<t>_mt` with built-in I/O
/// (`textin`/`textout`, LANGUAGE internal) and no operator or cast; after `CREATE TYPE` the
/// accomplice sets its binary output with `ALTER TYPE … SET (SEND = public.<t>_send)`, a plpgsql
/// function (plpgsql may take a complete base type) that reads the masked table, sets
/// `application_name` and raises a NOTICE. `code_type` starts from domains and ranges, casts and
/// operators — a base type's own I/O functions are not looked at — so `SELECT id, secret FROM t`
/// is allowed; the engineer Binds it with binary result formats and PostgreSQL calls the send
/// function on the clear value (before timebox masks the bytes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "superuser-only setup: out of scope (README: who is trusted)"]
async fn superuser_a_user_base_type_send_function_runs_on_a_binary_result() {
    let _catalog = common::masking::catalog_lock().write().await;
    let t = unique_name("s11rb_bs");
    let inst = ATTACK.start(
        &[&t],
        format!(
            "CREATE TYPE public.{t}_mt;
             CREATE FUNCTION public.{t}_in(cstring) RETURNS public.{t}_mt LANGUAGE internal IMMUTABLE STRICT AS 'textin';
             CREATE FUNCTION public.{t}_out(public.{t}_mt) RETURNS cstring LANGUAGE internal IMMUTABLE STRICT AS 'textout';
             CREATE TYPE public.{t}_mt (INPUT = public.{t}_in, OUTPUT = public.{t}_out, LIKE = text);
             CREATE TABLE public.{t} (id int PRIMARY KEY, secret public.{t}_mt);
             INSERT INTO public.{t} VALUES (1, '{SECRET}');
             GRANT SELECT ON public.{t} TO {READ_USER};
             CREATE FUNCTION public.{t}_send(v public.{t}_mt) RETURNS bytea LANGUAGE plpgsql IMMUTABLE STRICT AS $f$ BEGIN \
               PERFORM pg_catalog.set_config('application_name', (SELECT pg_catalog.string_agg(secret::text, ',') FROM public.{t}), false); \
               RAISE NOTICE 'leak %', (SELECT pg_catalog.string_agg(secret::text, ',') FROM public.{t}); \
               RETURN '\\x00'::bytea; END $f$;
             ALTER TYPE public.{t}_mt SET (SEND = public.{t}_send);"
        ),
    )
    .await;
    let (mut watcher, mut wbuf) = ATTACK.raw(&inst).await;
    let (mut s, mut buf) = ATTACK.raw(&inst).await;
    let answer = exchange(
        &mut s,
        &mut buf,
        &[
            parse("", &format!("SELECT id, secret FROM public.{t}")),
            bind_binary(""),
            describe(b'P', ""),
            execute(""),
            sync(),
        ],
    )
    .await;
    let shown = exchange(&mut s, &mut buf, &[query("SHOW application_name")]).await;
    let seen = watch(&mut watcher, &mut wbuf).await;
    let _ = inst.shutdown().await;
    eprintln!("answer: {answer}\nshown: {shown}\nwatched: {seen}");
    assert!(
        !ATTACK.leaked(&answer),
        "NOTICE/ParameterStatus in the engineer's answer: {answer}"
    );
    assert!(!ATTACK.leaked(&shown), "SHOW application_name: {shown}");
    assert!(!ATTACK.leaked(&seen), "pg_stat_activity: {seen}");
}

// ---- 8. A user base type whose TYPMOD_IN function is plpgsql ----

/// A user base type `<t>_mt` (built-in text I/O, no operator or cast) whose `TYPMOD_IN` the
/// accomplice set to a plpgsql function (`cstring[]` → int4; plpgsql accepts it) that reads the
/// masked table `<t>`, sets `application_name` and raises a NOTICE. Runs `sql` (with `MT` replaced
/// by the type's name) on an engineer's session. (answer, shown, watched)
async fn typmod_probe(t: &str, sql: &str) -> (String, String, String) {
    let inst = ATTACK.start(
        &[t],
        ATTACK.setup(t)
            + &format!(
                "CREATE TYPE public.{t}_mt;
             CREATE FUNCTION public.{t}_in(cstring) RETURNS public.{t}_mt LANGUAGE internal IMMUTABLE STRICT AS 'textin';
             CREATE FUNCTION public.{t}_out(public.{t}_mt) RETURNS cstring LANGUAGE internal IMMUTABLE STRICT AS 'textout';
             CREATE TYPE public.{t}_mt (INPUT = public.{t}_in, OUTPUT = public.{t}_out, LIKE = text);
             CREATE FUNCTION public.{t}_tm(a cstring[]) RETURNS int4 LANGUAGE plpgsql IMMUTABLE STRICT AS $f$ BEGIN \
               PERFORM pg_catalog.set_config('application_name', (SELECT pg_catalog.string_agg(secret, ',') FROM public.{t}), false); \
               RAISE NOTICE 'leak %', (SELECT pg_catalog.string_agg(secret, ',') FROM public.{t}); \
               RETURN 5; END $f$;
             ALTER TYPE public.{t}_mt SET (TYPMOD_IN = public.{t}_tm);"
            ),
    )
    .await;
    let (mut watcher, mut wbuf) = ATTACK.raw(&inst).await;
    let (mut s, mut buf) = ATTACK.raw(&inst).await;
    let sql = sql.replace("MT", &format!("public.{t}_mt"));
    let answer = exchange(&mut s, &mut buf, &[query(&sql)]).await;
    let shown = exchange(&mut s, &mut buf, &[query("SHOW application_name")]).await;
    let seen = watch(&mut watcher, &mut wbuf).await;
    let _ = inst.shutdown().await;
    (answer, shown, seen)
}

/// LEAK probe. `SELECT NULL::public.<t>_mt(5)`: the type is named, but it is neither a code
/// type nor a domain/composite, so the s11 rule lets it through; parse analysis calls its
/// TYPMOD_IN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "superuser-only setup: out of scope (README: who is trusted)"]
async fn superuser_a_user_base_type_typmod_in_runs_on_a_typed_null() {
    let _catalog = common::masking::catalog_lock().write().await;
    let t = unique_name("s11rb_tn");
    let (answer, shown, seen) = typmod_probe(&t, "SELECT NULL::MT(5)").await;
    eprintln!("answer: {answer}\nshown: {shown}\nwatched: {seen}");
    assert!(
        !ATTACK.leaked(&answer),
        "NOTICE/ParameterStatus in the engineer's answer: {answer}"
    );
    assert!(!ATTACK.leaked(&shown), "SHOW application_name: {shown}");
    assert!(!ATTACK.leaked(&seen), "pg_stat_activity: {seen}");
}

/// LEAK probe. `SELECT pg_catalog.to_regtype('public.<t>_mt(5)')`: the type is named only
/// inside a string (no TypeName in the parse tree); `to_regtype` parses it at run time, calling
/// TYPMOD_IN. (`'…'::pg_catalog.regtype` does the same.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "superuser-only setup: out of scope (README: who is trusted)"]
async fn superuser_a_user_base_type_typmod_in_runs_in_to_regtype() {
    let _catalog = common::masking::catalog_lock().write().await;
    let t = unique_name("s11rb_tr");
    let (answer, shown, seen) = typmod_probe(&t, "SELECT pg_catalog.to_regtype('MT(5)')").await;
    eprintln!("answer: {answer}\nshown: {shown}\nwatched: {seen}");
    assert!(
        !ATTACK.leaked(&answer),
        "NOTICE/ParameterStatus in the engineer's answer: {answer}"
    );
    assert!(!ATTACK.leaked(&shown), "SHOW application_name: {shown}");
    assert!(!ATTACK.leaked(&seen), "pg_stat_activity: {seen}");
}

// ---- 9. ParameterStatus without user code; a policy on a built-in table ----

/// HELD. What a masked session can make the server report by itself (timebox forwards
/// ParameterStatus unchanged): `set_config('application_name', secret, …)` in the target list and
/// in a filter, and `SET application_name` (constants only) — each refused or harmless; nothing
/// carries the value. (Every leak above reaches the engineer's own session as a ParameterStatus
/// `application_name`, without a second session.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_parameter_status_from_the_masked_session_itself() {
    let _catalog = common::masking::catalog_lock().read().await;
    let t = unique_name("s11rb_ps");
    let inst = ATTACK.start(&[&t], ATTACK.setup(&t)).await;
    let (mut s, mut buf) = ATTACK.raw(&inst).await;
    let mut log = String::new();
    for q in [
        format!("SELECT pg_catalog.set_config('application_name', secret, false) FROM public.{t}"),
        format!("SELECT id FROM public.{t} WHERE pg_catalog.set_config('application_name', secret, false) IS NOT NULL"),
        format!("SELECT id FROM public.{t} WHERE secret = pg_catalog.set_config('application_name', 'x', false)"),
        "SET application_name = 'x'".to_owned(),
        "SHOW application_name".to_owned(),
    ] {
        let out = exchange(&mut s, &mut buf, &[query(&q)]).await;
        log.push_str(&format!("{q}\n  -> {out}\n"));
    }
    let _ = inst.shutdown().await;
    eprintln!("{log}");
    assert!(!ATTACK.leaked(&log), "{log}");
}

/// HELD. The accomplice enables row security on the built-in table
/// `information_schema.sql_features` with a policy calling a plpgsql function that reads the
/// masked table; the engineer reads `information_schema.sql_features`. Expected refused
/// (`code_rel` looks at every policy, built-in tables included).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_a_policy_on_a_builtin_table() {
    let _catalog = common::masking::catalog_lock().write().await;
    let t = unique_name("s11rb_pl");
    let inst = ATTACK.start(
        &[&t],
        ATTACK.setup(&t)
            + &format!(
                "CREATE FUNCTION public.{t}_leak() RETURNS bool LANGUAGE plpgsql AS $f$ BEGIN \
                   PERFORM pg_catalog.set_config('application_name', (SELECT pg_catalog.string_agg(secret, ',') FROM public.{t}), false); \
                   RAISE NOTICE 'leak %', (SELECT pg_catalog.string_agg(secret, ',') FROM public.{t}); \
                   RETURN true; END $f$;
                 ALTER TABLE information_schema.sql_features ENABLE ROW LEVEL SECURITY;
                 CREATE POLICY {t}_p ON information_schema.sql_features USING (public.{t}_leak());"
            ),
    )
    .await;
    let (mut s, mut buf) = ATTACK.raw(&inst).await;
    let answer = exchange(
        &mut s,
        &mut buf,
        &[query("SELECT count(*) FROM information_schema.sql_features")],
    )
    .await;
    let shown = exchange(&mut s, &mut buf, &[query("SHOW application_name")]).await;
    admin_psql(format!(
        "DROP POLICY {t}_p ON information_schema.sql_features; \
         ALTER TABLE information_schema.sql_features DISABLE ROW LEVEL SECURITY;"
    ))
    .await;
    let _ = inst.shutdown().await;
    eprintln!("answer: {answer}\nshown: {shown}");
    assert!(!ATTACK.leaked(&answer), "{answer}");
    assert!(!ATTACK.leaked(&shown), "{shown}");
}

// ---- 10. The setups above need a superuser (s11, the lead) ----

/// Each setup of the `superuser_*` probes, tried by a role that is not a superuser but owns a
/// schema with a function of its own (what an in-scope accomplice has): PostgreSQL refuses every
/// one (42501 "must be owner …" / "must be superuser …"), so those leaks are out of scope.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn superuser_setups_are_refused_to_an_object_owner() {
    let _catalog = common::masking::catalog_lock().write().await;
    let owner = unique_name("s11rb_owner");
    let a = accomplice().await;
    a.batch_execute(&format!(
        "CREATE ROLE {owner} NOLOGIN NOSUPERUSER; CREATE SCHEMA {owner} AUTHORIZATION {owner};
         CREATE FUNCTION {owner}.f(integer, numeric, numeric, boolean, boolean) RETURNS boolean
           LANGUAGE plpgsql AS $f$ BEGIN RETURN true; END $f$;
         ALTER FUNCTION {owner}.f(integer, numeric, numeric, boolean, boolean) OWNER TO {owner};
         CREATE FUNCTION {owner}.c(text, text) RETURNS integer LANGUAGE sql AS 'SELECT 0';
         ALTER FUNCTION {owner}.c(text, text) OWNER TO {owner};"
    ))
    .await
    .unwrap();
    a.batch_execute(&format!("SET ROLE {owner}")).await.unwrap();
    let setups = [
        "ALTER DOMAIN information_schema.cardinal_number ADD CONSTRAINT s11rb_c CHECK (VALUE >= 0)"
            .to_owned(),
        "CREATE OR REPLACE FUNCTION information_schema._pg_char_max_length(typid oid, typmod integer) \
         RETURNS integer LANGUAGE sql AS 'SELECT 1'"
            .to_owned(),
        format!(
            "ALTER OPERATOR FAMILY pg_catalog.integer_ops USING btree \
             ADD FUNCTION 3 (integer, numeric) {owner}.f(integer, numeric, numeric, boolean, boolean)"
        ),
        format!("CREATE TYPE {owner}.b"),
        format!("CREATE TYPE {owner}.b (INPUT = pg_catalog.textin, OUTPUT = pg_catalog.textout)"),
        format!(
            "CREATE OPERATOR CLASS {owner}.o FOR TYPE text USING btree AS \
             OPERATOR 3 pg_catalog.=, FUNCTION 1 {owner}.c(text, text)"
        ),
    ];
    let mut allowed = Vec::new();
    for sql in &setups {
        match a.batch_execute(sql).await {
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) => {}
            Err(e) if sql.ends_with(".b") => {
                // A shell type is allowed; its I/O functions are not: checked by the next one.
                eprintln!("{sql}: {e}");
            }
            Ok(()) if sql.ends_with(".b") => {}
            other => allowed.push(format!("{sql}: {other:?}")),
        }
    }
    a.batch_execute("RESET ROLE").await.unwrap();
    a.batch_execute(&format!("DROP SCHEMA {owner} CASCADE; DROP ROLE {owner}"))
        .await
        .unwrap();
    assert!(allowed.is_empty(), "allowed to a non-superuser: {allowed:#?}");
}
