//! s7 attack: probes of column masking's catalog side — the freshness fingerprint, the catalog
//! snapshot, the window between the check and the statement's run — and a few result shapes, as
//! an engineer with a masked grant and an accomplice changing the target's catalog outside
//! timebox (the cluster's superuser). Scratch reproduction tests: a `repro_…` test asserts the
//! safe outcome, so it fails while its leak exists; `probes_…` print a table and assert nothing
//! leaked.
//! Run: cargo test --test s7_attack_mask -- --nocapture --test-threads=1

mod common;

use common::cluster::{shared_cluster, shop_psql, READ_PASSWORD, READ_USER};
use common::masking::{mask_roles, outcome, session, start_over, FIXTURE};
use common::TestInstance;
use std::time::Duration;

/// The probes' own masked table (so an accomplice's change does not disturb `customers`), a
/// function in `pg_catalog` a superuser created reading it, and views the probes replace.
const SETUP: &str = "
CREATE TABLE IF NOT EXISTS public.s7_people (id int PRIMARY KEY, name text, email text);
INSERT INTO public.s7_people VALUES (1, 'Ann', 's7secret-ann@corp.test'), (2, 'Ben', 's7secret-ben@corp.test')
    ON CONFLICT DO NOTHING;
CREATE TABLE public.s7_parted (id int, secret text) PARTITION BY LIST (id);
CREATE TABLE public.s7_part_a PARTITION OF public.s7_parted FOR VALUES IN (1);
INSERT INTO public.s7_parted VALUES (1, 's7secret-partition');
CREATE FUNCTION pg_catalog.s7_people_emails() RETURNS text LANGUAGE sql STABLE AS
    'SELECT pg_catalog.string_agg(email, '','') FROM public.s7_people';
CREATE VIEW public.s7_pcv AS SELECT pg_catalog.s7_people_emails() AS x;
CREATE VIEW public.s7_over AS SELECT id, email FROM public.s7_people;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO timebox_read;
";

/// Role `s7`: masks `s7_people.email` and the partition's `secret`.
fn s7_role() -> String {
    format!(
        r#"
[roles.s7]
allow = ["read"]
max_ttl = "1h"
mask = {{ "public.s7_people.email" = "redact", "public.s7_part_a.secret" = "redact" }}
{}"#,
        common::wire::shop_credential("s7", READ_USER, READ_PASSWORD)
    )
}

/// The probes change the catalog for every session of the cluster: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn start() -> TestInstance {
    start_over(&[FIXTURE, SETUP], mask_roles() + &s7_role()).await
}

fn leaks(s: &str) -> bool {
    let s = s.to_lowercase();
    s.contains("s7secret") || common::masking::CLEAR.iter().any(|c| s.contains(c))
}

async fn probe(c: &tokio_postgres::Client, sql: &str) -> String {
    let out = outcome(c, sql).await;
    println!(
        "PROBE {sql}\n   => {}\n   LEAK={}",
        &out[..out.len().min(300)],
        leaks(&out)
    );
    out
}

/// The accomplice: the cluster's superuser, outside timebox.
async fn psql(sql: String) {
    tokio::task::spawn_blocking(move || shop_psql(&sql))
        .await
        .unwrap();
}

/// A superuser tokio-postgres connection to the target (an accomplice holding a transaction).
async fn accomplice() -> tokio_postgres::Client {
    let conn = tokio::task::spawn_blocking(|| shared_cluster().superuser_conn_string("shop"))
        .await
        .unwrap();
    common::pg::connect(&conn).await
}

async fn scalar(c: &tokio_postgres::Client, sql: &str) -> String {
    common::pg::scalar(c, sql).await
}

/// REPRO (F1): timebox's catalog queries compare `oid` with `regclass` (and `oid` with an
/// integer) through unqualified operators. An operator `public.=(oid, regclass)` is an exact
/// match and wins over `pg_catalog.=(oid, oid)` for the role's catalog connection (whose
/// search_path has `public`): the snapshot then finds no view over a masked table, and the
/// accomplice's view over it returns the masked column in clear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repro_user_operator_blinds_the_catalog_snapshot() {
    let _serial = SERIAL.lock().await;
    let inst = start().await;
    let c = session(&inst, "s7").await;
    let before = probe(&c, "SELECT * FROM s7_over").await;
    assert!(before.starts_with("ERR 42501"), "baseline: {before}");
    psql("CREATE FUNCTION public.s7_never(oid, regclass) RETURNS bool LANGUAGE sql IMMUTABLE AS 'SELECT false';
          CREATE OPERATOR public.= (LEFTARG = oid, RIGHTARG = regclass, FUNCTION = public.s7_never);"
        .into())
    .await;
    let after = probe(&c, "SELECT * FROM s7_over").await;
    let masked = probe(&c, "SELECT id, email FROM s7_people").await;
    psql("DROP OPERATOR public.= (oid, regclass); DROP FUNCTION public.s7_never(oid, regclass);".into())
        .await;
    let _ = inst.shutdown().await;
    assert!(!leaks(&after) && !leaks(&masked), "{after}\n{masked}");
}

/// REPRO (F1b): the fingerprint's `oid >= 16384` through an accomplice's `public.>=(oid, int4)`
/// answering false: once timebox's catalog connection is opened again (terminated here; an idle
/// timeout or a restart alike) every fingerprint reads the same, and a view replaced afterwards
/// to read the masked column is never seen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repro_user_operator_freezes_the_fingerprint() {
    let _serial = SERIAL.lock().await;
    let inst = start().await;
    let c = session(&inst, "s7").await;
    psql(
        "CREATE VIEW public.s7_frozen AS SELECT 1::int AS id, 'x'::text AS x;
          GRANT SELECT ON public.s7_frozen TO timebox_read;"
            .into(),
    )
    .await;
    let plain = probe(&c, "SELECT * FROM s7_frozen").await;
    assert_eq!(plain, "OK Some(\"1\") Some(\"x\")");
    psql(
        "CREATE FUNCTION public.s7_never_ge(oid, int) RETURNS bool LANGUAGE sql IMMUTABLE AS 'SELECT false';
          CREATE OPERATOR public.>= (LEFTARG = oid, RIGHTARG = int4, FUNCTION = public.s7_never_ge);
          SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity
              WHERE application_name = 'timebox:catalog';"
            .into(),
    )
    .await;
    probe(&c, "SELECT 1").await;
    probe(&c, "SELECT * FROM s7_frozen").await;
    psql("CREATE OR REPLACE VIEW public.s7_frozen AS SELECT id, email AS x FROM public.s7_people;".into())
        .await;
    let after = probe(&c, "SELECT * FROM s7_frozen").await;
    psql(
        "DROP VIEW public.s7_frozen; DROP OPERATOR public.>= (oid, int4);
          DROP FUNCTION public.s7_never_ge(oid, int);"
            .into(),
    )
    .await;
    let _ = inst.shutdown().await;
    assert!(!leaks(&after), "{after}");
}

/// The next transaction ID to be assigned (`txid_current_snapshot()`'s xmax).
async fn next_xid(c: &tokio_postgres::Client) -> i64 {
    scalar(
        c,
        "SELECT pg_catalog.txid_snapshot_xmax(pg_catalog.txid_current_snapshot())",
    )
    .await
    .parse()
    .unwrap()
}

/// Runs `sql` in a transaction whose ID is exactly `xid` (burning IDs up to it); false when
/// another session took it first.
async fn in_xid(c: &tokio_postgres::Client, xid: i64, sql: &str) -> bool {
    while next_xid(c).await < xid {
        scalar(c, "SELECT pg_catalog.txid_current()").await;
    }
    c.simple_query("BEGIN").await.unwrap();
    let got: i64 = scalar(c, "SELECT pg_catalog.txid_current()")
        .await
        .parse()
        .unwrap();
    if got != xid {
        c.simple_query("ROLLBACK").await.unwrap();
        return false;
    }
    c.simple_query(sql).await.unwrap();
    c.simple_query("COMMIT").await.unwrap();
    true
}

/// REPRO (F2): the fingerprint is a count and a sum of `xmin`s per catalog, which a change can
/// keep equal. The accomplice holds a transaction (xid s) open, creates two harmless views (p,
/// q), lets timebox read its snapshot, then replaces view W in the old transaction (its rows'
/// xmin q → s) and view V in a transaction whose ID it chose, t = p + q − s (p → t): every
/// catalog's count and xmin sum is as before, and W now returns the masked column.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repro_fingerprint_sum_collision() {
    let _serial = SERIAL.lock().await;
    let inst = start().await;
    let c = session(&inst, "s7").await;
    let mut result = None;
    for attempt in 0..3 {
        let (v, w) = (format!("s7_cv{attempt}"), format!("s7_cw{attempt}"));
        let a = accomplice().await;
        let b = accomplice().await;
        a.simple_query("BEGIN").await.unwrap();
        let s: i64 = scalar(&a, "SELECT pg_catalog.txid_current()")
            .await
            .parse()
            .unwrap();
        let create = |name: &str| {
            format!(
                "BEGIN; CREATE VIEW public.{name} AS SELECT 1::int AS id, 'x'::text AS x;
                 GRANT SELECT ON public.{name} TO timebox_read; COMMIT;"
            )
        };
        b.batch_execute(&create(&v)).await.unwrap();
        b.batch_execute(&create(&w)).await.unwrap();
        let xmin = |name: String| {
            let b = &b;
            async move {
                scalar(
                    b,
                    &format!(
                        "SELECT xmin::text FROM pg_catalog.pg_class WHERE oid = 'public.{name}'::regclass"
                    ),
                )
                .await
                .parse::<i64>()
                .unwrap()
            }
        };
        let (p, q) = (xmin(v.clone()).await, xmin(w.clone()).await);
        // timebox reads its snapshot (and fingerprint) now: both views are plain.
        let plain = probe(&c, &format!("SELECT * FROM {w}")).await;
        assert_eq!(plain, "OK Some(\"1\") Some(\"x\")");
        a.batch_execute(&format!(
            "CREATE OR REPLACE VIEW public.{w} AS SELECT id, email AS x FROM public.s7_people; COMMIT"
        ))
        .await
        .unwrap();
        let t = p + q - s;
        println!("xids: s={s} p={p} q={q} → t={t}");
        if !in_xid(
            &b,
            t,
            &format!("CREATE OR REPLACE VIEW public.{v} AS SELECT 2::int AS id, 'y'::text AS x"),
        )
        .await
        {
            println!("attempt {attempt}: xid {t} taken by another session; again");
            continue;
        }
        result = Some(probe(&c, &format!("SELECT * FROM {w}")).await);
        break;
    }
    let _ = inst.shutdown().await;
    let after = result.expect("an attempt with the chosen transaction ID");
    assert!(!leaks(&after), "{after}");
}

/// REPRO (F3): a table a masked table inherits from (or the partitioned table of a masked
/// partition) returns the masked table's rows, its column unmasked: the snapshot follows
/// inheritance down (children, partitions) but not up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repro_parent_of_a_masked_table_returns_it_unmasked() {
    let _serial = SERIAL.lock().await;
    let inst = start().await;
    let c = session(&inst, "s7").await;
    let mut leaked = vec![];
    let masked = probe(&c, "SELECT * FROM s7_part_a").await;
    assert!(!leaks(&masked), "{masked}");
    for sql in ["SELECT * FROM s7_parted", "SELECT upper(secret) FROM s7_parted"] {
        let out = probe(&c, sql).await;
        if leaks(&out) {
            leaked.push(format!("{sql} => {out}"));
        }
    }
    psql(
        "CREATE TABLE public.s7_up (id int, name text, email text);
          GRANT SELECT ON public.s7_up TO timebox_read;
          ALTER TABLE public.s7_people INHERIT public.s7_up;"
            .into(),
    )
    .await;
    for sql in [
        "SELECT * FROM s7_up",
        "SELECT email FROM s7_up",
        "SELECT upper(email) FROM s7_up",
    ] {
        let out = probe(&c, sql).await;
        if leaks(&out) {
            leaked.push(format!("{sql} => {out}"));
        }
    }
    psql("ALTER TABLE public.s7_people NO INHERIT public.s7_up; DROP TABLE public.s7_up;".into()).await;
    let _ = inst.shutdown().await;
    assert!(leaked.is_empty(), "{leaked:#?}");
}

/// Waits until a backend of the target runs `like` and waits (`Lock` or `Timeout`).
async fn until_waiting(b: &tokio_postgres::Client, like: &str, event: &str) -> bool {
    let sql = format!(
        "SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE query LIKE '{like}' \
         AND wait_event_type = '{event}' AND pid <> pg_catalog.pg_backend_pid()"
    );
    common::eventually(Duration::from_secs(30), || {
        let sql = sql.clone();
        async move { scalar(b, &sql).await != "0" }
    })
    .await
}

/// REPRO (F4, relay side): the fingerprint is checked before the statement is forwarded, and
/// DDL committed after the check is used by the statement. The window is not one round trip:
/// the statement waits for the accomplice's lock (the view replaced in an open transaction) and
/// runs on the new definition once it commits; a Query with several statements runs the later
/// ones after the earlier ones (`pg_sleep`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repro_ddl_committed_while_the_statement_waits() {
    let _serial = SERIAL.lock().await;
    let inst = start().await;
    let c = session(&inst, "s7").await;
    psql(
        "CREATE VIEW public.s7_lw AS SELECT 1::int AS id, 'x'::text AS x;
          CREATE VIEW public.s7_sw AS SELECT 1::int AS id, 'x'::text AS x;
          CREATE VIEW public.s7_pw AS SELECT 1::int AS id, 'x'::text AS x;
          GRANT SELECT ON public.s7_lw, public.s7_sw, public.s7_pw TO timebox_read;"
            .into(),
    )
    .await;
    assert_eq!(
        probe(&c, "SELECT * FROM s7_lw").await,
        "OK Some(\"1\") Some(\"x\")"
    );
    assert_eq!(
        probe(&c, "SELECT * FROM s7_sw").await,
        "OK Some(\"1\") Some(\"x\")"
    );
    assert_eq!(
        probe(&c, "SELECT * FROM s7_pw").await,
        "OK Some(\"1\") Some(\"x\")"
    );
    let a = accomplice().await;
    let b = accomplice().await;
    // 1. A lock wait.
    a.batch_execute(
        "BEGIN; CREATE OR REPLACE VIEW public.s7_lw AS SELECT id, email AS x FROM public.s7_people",
    )
    .await
    .unwrap();
    let c = std::sync::Arc::new(c);
    let waiting = {
        let c = c.clone();
        tokio::spawn(async move { probe(&c, "SELECT * FROM s7_lw").await })
    };
    let waited = until_waiting(&b, "SELECT * FROM s7_lw%", "Lock").await;
    a.batch_execute("COMMIT").await.unwrap();
    let lock = tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .expect("the statement ends")
        .unwrap();
    // 2. A later statement of the same Query.
    let sleeping = {
        let c = c.clone();
        tokio::spawn(async move { probe(&c, "SELECT pg_catalog.pg_sleep(2); SELECT * FROM s7_sw").await })
    };
    let slept = until_waiting(&b, "SELECT pg_catalog.pg_sleep(2)%", "Timeout").await;
    b.batch_execute("CREATE OR REPLACE VIEW public.s7_sw AS SELECT id, email AS x FROM public.s7_people")
        .await
        .unwrap();
    let multi = tokio::time::timeout(Duration::from_secs(30), sleeping)
        .await
        .expect("the statement ends")
        .unwrap();
    // 3. A statement prepared (and described) before, bound while the lock is held (prepared
    // after step 2's change, so that its description is of the current copy).
    let prepared = c.prepare("SELECT id, x FROM s7_pw").await.unwrap();
    a.batch_execute(
        "BEGIN; CREATE OR REPLACE VIEW public.s7_pw AS SELECT id, email AS x FROM public.s7_people",
    )
    .await
    .unwrap();
    let binding = {
        let c = c.clone();
        tokio::spawn(async move {
            match c.query(&prepared, &[]).await {
                Ok(rows) => format!(
                    "OK {:?}",
                    rows.iter()
                        .map(|r| r.get::<_, Option<String>>(1))
                        .collect::<Vec<_>>()
                ),
                Err(e) => format!("ERR {e:?}"),
            }
        })
    };
    let bound = until_waiting(&b, "SELECT id, x FROM s7_pw%", "Lock").await;
    a.batch_execute("COMMIT").await.unwrap();
    let extended = tokio::time::timeout(Duration::from_secs(30), binding)
        .await
        .expect("the statement ends")
        .unwrap();
    println!(
        "PROBE prepared before, bound during the lock => {extended}\n   LEAK={}",
        leaks(&extended)
    );
    psql("DROP VIEW public.s7_lw, public.s7_sw, public.s7_pw;".into()).await;
    let _ = inst.shutdown().await;
    assert!(waited && slept && bound, "the accomplice saw the statements wait");
    assert!(
        !leaks(&lock) && !leaks(&multi) && !leaks(&extended),
        "{lock}\n{multi}\n{extended}"
    );
}

/// REPRO (F5): a row security policy calling only built-ins — a cast of the masked column — is
/// not hidden code to the snapshot, and its error message quotes the masked value (only DETAIL
/// is withheld). On the masked table itself and on another table whose policy reads it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repro_row_security_policy_quotes_the_masked_value() {
    let _serial = SERIAL.lock().await;
    let inst = start().await;
    let c = session(&inst, "s7").await;
    psql(
        "CREATE TABLE public.s7_other (id int); INSERT INTO public.s7_other VALUES (1);
          GRANT SELECT ON public.s7_other TO timebox_read;
          ALTER TABLE public.s7_other ENABLE ROW LEVEL SECURITY;
          CREATE POLICY s7_other_pol ON public.s7_other
              USING (EXISTS (SELECT 1 FROM public.s7_people p WHERE p.email::int = id));"
            .into(),
    )
    .await;
    let other = probe(&c, "SELECT id FROM s7_other").await;
    psql(
        "ALTER TABLE public.s7_people ENABLE ROW LEVEL SECURITY;
          CREATE POLICY s7_pol ON public.s7_people USING (email::int > 0);"
            .into(),
    )
    .await;
    let own = probe(&c, "SELECT id FROM s7_people").await;
    psql(
        "DROP POLICY s7_pol ON public.s7_people; ALTER TABLE public.s7_people DISABLE ROW LEVEL SECURITY;
          DROP TABLE public.s7_other;"
            .into(),
    )
    .await;
    let trail = common::pg::audit_records(&inst.audit_db());
    let _ = inst.shutdown().await;
    let audited: Vec<String> = trail
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .filter(|r| leaks(r))
        .collect();
    println!("audit records quoting a masked value: {audited:#?}");
    assert!(!leaks(&other) && !leaks(&own), "{other}\n{own}");
}

/// REPRO (F6): user code in `pg_catalog` (a superuser's function, OID ≥ 16384) counts as a
/// built-in: a view calling it is not hidden code, and a direct call is a read-only built-in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repro_user_function_in_pg_catalog() {
    let _serial = SERIAL.lock().await;
    let inst = start().await;
    let c = session(&inst, "s7").await;
    let view = probe(&c, "SELECT * FROM s7_pcv").await;
    let call = probe(&c, "SELECT pg_catalog.s7_people_emails()").await;
    let _ = inst.shutdown().await;
    assert!(!leaks(&view) && !leaks(&call), "{view}\n{call}");
}

/// REPRO (F7): a view over `pg_stats` is not a view over a masked table (the statistics of
/// every column the reader may select, histogram bounds included).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repro_view_over_statistics() {
    let _serial = SERIAL.lock().await;
    let inst = start().await;
    let c = session(&inst, "s7").await;
    psql(
        "ANALYZE public.s7_people;
          CREATE VIEW public.s7_statsv AS SELECT tablename::text AS t, attname::text AS a,
              histogram_bounds::text AS h, most_common_vals::text AS m FROM pg_catalog.pg_stats
              WHERE tablename = 's7_people';
          GRANT SELECT ON public.s7_statsv TO timebox_read;"
            .into(),
    )
    .await;
    let out = probe(&c, "SELECT * FROM s7_statsv").await;
    psql("DROP VIEW public.s7_statsv;".into()).await;
    let _ = inst.shutdown().await;
    assert!(!leaks(&out), "{out}");
}

/// Shapes without an accomplice (priority 3 of the brief): cursors WITH HOLD, COPY, search_path,
/// SET ROLE, TABLE, whole rows through parents; each must be masked or denied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_shapes_of_a_masked_read_role() {
    let _serial = SERIAL.lock().await;
    let inst = start().await;
    let c = session(&inst, "s7").await;
    let mut leaked = vec![];
    for sql in [
        "SELECT * FROM s7_people ORDER BY id",
        "TABLE s7_people",
        "BEGIN; DECLARE h CURSOR WITH HOLD FOR SELECT * FROM s7_people; COMMIT; FETCH ALL FROM h",
        "BEGIN; DECLARE hb BINARY CURSOR WITH HOLD FOR SELECT email FROM s7_people; COMMIT; FETCH ALL FROM hb",
        "COPY (SELECT email FROM s7_people) TO STDOUT",
        "COPY (SELECT id FROM s7_people WHERE email = 'x') TO STDOUT",
        "COPY (SELECT * FROM s7_people) TO STDOUT",
        "SET search_path = pg_temp, public; SELECT * FROM s7_people",
        "SET ROLE postgres",
        "SET SESSION AUTHORIZATION postgres",
        "SELECT * FROM ONLY s7_people",
        "SELECT * FROM s7_parted",
        "SELECT p FROM s7_parted p",
        "SELECT * FROM pg_catalog.pg_stats_ext",
        "SELECT * FROM pg_catalog.pg_stats_ext_exprs",
        "SELECT * FROM s7_people NATURAL JOIN s7_parted",
        "SELECT * FROM (s7_people JOIN s7_parted USING (id)) j",
        "SELECT * FROM ROWS FROM (pg_catalog.generate_series(1, 1)) g, s7_people",
        "SELECT email FROM s7_people FETCH FIRST 1 ROWS WITH TIES",
        "SELECT DISTINCT ON (email) email FROM s7_people",
        "SELECT email FROM s7_people GROUP BY email HAVING count(*) > 0",
        "EXPLAIN (VERBOSE, COSTS OFF) SELECT * FROM s7_people WHERE email = 'x'",
        "SELECT * FROM s7_people WHERE email = ANY ('{a,b}')",
        "LISTEN s7; SELECT email FROM s7_people",
        "PREPARE s7p AS SELECT * FROM s7_people; EXECUTE s7p",
        "SELECT * FROM s7_over",
        "SELECT pg_catalog.pg_get_viewdef('s7_over')",
    ] {
        let out = probe(&c, sql).await;
        if leaks(&out) {
            leaked.push(format!("{sql} => {out}"));
        }
    }
    // Extended protocol, binary: tokio-postgres prepares and binds binary results.
    let rows = c
        .query("SELECT email FROM s7_people ORDER BY id", &[])
        .await
        .map(|rows| {
            rows.iter()
                .map(|r| format!("{:?}", r.try_get::<_, Option<String>>(0)))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_else(|e| format!("ERR {e}"));
    println!("PROBE binary extended => {rows}");
    if leaks(&rows) {
        leaked.push(format!("binary => {rows}"));
    }
    let _ = inst.shutdown().await;
    assert!(leaked.is_empty(), "{leaked:#?}");
}

/// Shapes of a masked *write* role (`support_write` masks `customers.email` only): copying the
/// masked column into an unmasked one, then reading that. Each in a transaction rolled back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_shapes_of_a_masked_write_role() {
    let _serial = SERIAL.lock().await;
    let inst = start().await;
    let c = session(&inst, "support_write").await;
    let mut leaked = vec![];
    for sql in [
        "BEGIN; UPDATE customers SET note = email WHERE id = 1; SELECT note FROM customers WHERE id = 1",
        "BEGIN; UPDATE customers c SET note = d.email FROM customers d WHERE c.id = d.id; SELECT note FROM customers",
        "BEGIN; UPDATE customers SET note = (SELECT email FROM customers WHERE id = 1); SELECT note FROM customers",
        "BEGIN; UPDATE customers SET (note, name) = (SELECT email, name FROM customers WHERE id = 1) WHERE id = 2; SELECT note FROM customers",
        "BEGIN; INSERT INTO customers (id) VALUES (1) ON CONFLICT (id) DO UPDATE SET note = customers.email; SELECT note FROM customers WHERE id = 1",
        "BEGIN; INSERT INTO customers (id) VALUES (1) ON CONFLICT (id) DO UPDATE SET note = excluded.email; SELECT note FROM customers WHERE id = 1",
        "BEGIN; MERGE INTO customers c USING (SELECT 1 AS id) s ON c.id = s.id WHEN MATCHED THEN UPDATE SET note = c.email; SELECT note FROM customers WHERE id = 1",
        "BEGIN; INSERT INTO customers (id, note) SELECT 100, email FROM customers WHERE id = 1; SELECT note FROM customers WHERE id = 100",
        "BEGIN; WITH u AS (UPDATE customers SET note = email RETURNING id) SELECT note FROM customers",
        "BEGIN; UPDATE customers SET note = email WHERE id = 1 RETURNING note",
        "BEGIN; DELETE FROM customers WHERE id = 2 RETURNING *",
        "BEGIN; UPDATE customers SET note = 'x' WHERE email = 'alice@example.com' RETURNING id",
        "LISTEN s7c; SELECT pg_catalog.pg_notify('s7c', email) FROM customers",
        "BEGIN; NOTIFY s7c, 'x'",
        "BEGIN; SELECT email FROM customers WHERE id = 1 FOR UPDATE",
        "SELECT pg_catalog.set_config('role', 'postgres', false)",
    ] {
        let out = probe(&c, sql).await;
        if leaks(&out) {
            leaked.push(format!("{sql} => {out}"));
        }
    }
    let _ = inst.shutdown().await;
    assert!(leaked.is_empty(), "{leaked:#?}");
}
