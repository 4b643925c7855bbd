//! Column masking's shared setup (issue 15): the masked table `public.customers` with its rows and
//! a view over it, the masked roles, a timebox instance configured with them, and a session of one
//! of them. Used by `tests/masking_wire.rs` and `tests/masking_bypass.rs`.

use super::pg::connect;
use super::wire::shop_credential;
use super::TestInstance;

/// The masked table, its view, and rows (created once per test binary on the shared cluster).
pub const FIXTURE: &str = "
CREATE TABLE IF NOT EXISTS public.customers (
    id int PRIMARY KEY, name text, email text, phone varchar(20), card text, ssn int8, note text);
INSERT INTO public.customers VALUES
    (1, 'Alice', 'alice@example.com', '+1 555 0100', '4111111111111111', 123456789, 'vip'),
    (2, 'Bob', 'bob@shop.test', NULL, '5500000000000004', 987654321, 'new')
    ON CONFLICT DO NOTHING;
CREATE OR REPLACE VIEW public.customer_emails AS SELECT id, email FROM public.customers;
GRANT SELECT ON public.customer_emails TO timebox_read;
";

/// The fixture's values that must never reach a masked role in clear.
pub const CLEAR: [&str; 6] = [
    "alice@example.com",
    "bob@shop.test",
    "4111111111111111",
    "5500000000000004",
    "123456789",
    "987654321",
];

/// Roles `support` (every method, read), `strict` (`mask_filters = "deny"`) and `support_write`
/// (read and write), with their credentials on target `shop`.
pub fn mask_roles() -> String {
    use super::cluster::{READ_PASSWORD, READ_USER, WRITE_PASSWORD, WRITE_USER};
    format!(
        r#"
[roles.support]
allow = ["read"]
max_ttl = "1h"
mask = {{ "public.customers.email" = "email", "public.customers.phone" = "partial", "public.customers.card" = "redact", "public.customers.ssn" = "hash", "public.customers.note" = "null" }}
[roles.strict]
allow = ["read"]
max_ttl = "1h"
mask = {{ "public.customers.email" = "redact" }}
mask_filters = "deny"
[roles.support_write]
allow = ["read", "write"]
max_ttl = "1h"
mask = {{ "public.customers.email" = "email" }}
{}{}{}"#,
        shop_credential("support_write", WRITE_USER, WRITE_PASSWORD),
        shop_credential("support", READ_USER, READ_PASSWORD),
        shop_credential("strict", READ_USER, READ_PASSWORD),
    )
}

/// A timebox instance with `roles` config over the shared cluster, after each of `setups` ran there
/// once per test binary (tests run in parallel, and `CREATE … IF NOT EXISTS` races with itself).
pub async fn start_over(setups: &[&'static str], roles: String) -> TestInstance {
    let setups = setups.to_vec();
    let port = tokio::task::spawn_blocking(move || {
        static DONE: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());
        let cluster = super::cluster::shared_cluster();
        let mut done = DONE.lock().unwrap_or_else(|e| e.into_inner());
        for setup in setups {
            if !setup.is_empty() && !done.contains(&setup) {
                super::cluster::shop_psql(setup);
                done.push(setup);
            }
        }
        cluster.port()
    })
    .await
    .unwrap();
    super::start_with_config(|dir| super::config_text(&super::Options::default(), dir, port) + &roles).await
}

/// A timebox instance with [`mask_roles`] plus `extra` config, over the shared cluster holding
/// [`FIXTURE`] and then `setup`.
pub async fn start_with(setup: &'static str, extra: &str) -> TestInstance {
    start_over(&[FIXTURE, setup], mask_roles() + extra).await
}

/// [`start_with`] the fixture alone.
pub async fn start() -> TestInstance {
    start_with("", "").await
}

/// A tokio-postgres session of a grant of `role` for `alice`.
pub async fn session(inst: &TestInstance, role: &str) -> tokio_postgres::Client {
    let (_, token) = inst.grant("alice", role, "10m").await;
    connect(&inst.conn_string("alice", &token, "disable")).await
}

/// The text values of the simple-protocol rows of `sql`.
pub async fn text_rows(client: &tokio_postgres::Client, sql: &str) -> Vec<Vec<Option<String>>> {
    let messages = client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    messages
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect())
            }
            _ => None,
        })
        .collect()
}

pub fn some(v: &[&str]) -> Vec<Option<String>> {
    v.iter().map(|s| Some(s.to_string())).collect()
}

/// What a simple query returned, as one line to search: `OK` and the rows' values, or `ERR`,
/// SQLSTATE, message, detail, hint and context (every place a value could travel in an error).
pub async fn outcome(client: &tokio_postgres::Client, sql: &str) -> String {
    let out = match client.simple_query(sql).await {
        Ok(messages) => {
            let mut out = String::from("OK");
            for m in messages {
                if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
                    for i in 0..r.len() {
                        out.push_str(&format!(" {:?}", r.get(i)));
                    }
                }
            }
            out
        }
        Err(e) => match e.as_db_error() {
            Some(d) => format!(
                "ERR {} {} detail={:?} hint={:?} where={:?}",
                d.code().code(),
                d.message(),
                d.detail(),
                d.hint(),
                d.where_()
            ),
            None => format!("ERR {e}"),
        },
    };
    let _ = client.simple_query("ROLLBACK").await;
    out
}

/// The tests of one binary share its cluster, and a masked result whose copy of the catalog changed
/// while its statement ran is refused by design ("… changed while the statement ran (run it
/// again)"), as is a FETCH of a cursor declared before a change: tests that change the catalog (DDL,
/// or a setup of their own) hold this lock's write side for their whole run, the others its read
/// side, so no test's masked statements race another's DDL.
pub fn catalog_lock() -> &'static tokio::sync::RwLock<()> {
    static LOCK: std::sync::OnceLock<tokio::sync::RwLock<()>> = std::sync::OnceLock::new();
    LOCK.get_or_init(|| tokio::sync::RwLock::new(()))
}

// ---- An accomplice: the cluster's superuser outside timebox, replacing objects, holding locks ----

/// Runs `sql` on the shared cluster as its superuser (outside timebox).
pub async fn admin_psql(sql: String) {
    tokio::task::spawn_blocking(move || super::cluster::shop_psql(&sql))
        .await
        .unwrap();
}

/// A superuser connection to the target outside timebox (an accomplice holding a transaction).
pub async fn accomplice() -> tokio_postgres::Client {
    let conn = tokio::task::spawn_blocking(|| super::cluster::shared_cluster().superuser_conn_string("shop"))
        .await
        .unwrap();
    super::pg::connect(&conn).await
}

/// Waits until a backend of the target runs a query beginning with `text` — or timebox's lock
/// block ahead of a masked role's Query (s10) — and waits for a lock.
pub async fn until_lock_waiting(b: &tokio_postgres::Client, text: &str) -> bool {
    let sql = format!(
        "SELECT count(*) FROM pg_catalog.pg_stat_activity \
         WHERE (query LIKE '{}%' OR query LIKE '%DO $timebox_lock$%') \
         AND wait_event_type = 'Lock' AND pid <> pg_catalog.pg_backend_pid()",
        text.replace('\'', "''")
    );
    super::eventually(std::time::Duration::from_secs(60), || {
        let sql = sql.clone();
        async move { super::pg::scalar(b, &sql).await != "0" }
    })
    .await
}

/// Runs `run` in a task once `a` ran `hold` in an open transaction; commits `a` once a backend
/// runs a statement beginning with `waits` and waits for a lock; what `run` returned.
pub async fn across_a_lock<T, F>(a: &tokio_postgres::Client, hold: &str, waits: &str, run: F) -> T
where
    T: Send + 'static,
    F: std::future::Future<Output = T> + Send + 'static,
{
    a.batch_execute(&format!("BEGIN; {hold}")).await.unwrap();
    let running = tokio::spawn(run);
    let b = accomplice().await;
    let waited = until_lock_waiting(&b, waits).await;
    a.batch_execute("COMMIT").await.unwrap();
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), running)
        .await
        .expect("the statement ends")
        .unwrap();
    assert!(waited, "the statement waited for the accomplice's lock");
    out
}

/// The accomplice's replacement of view `v`: its `x` now reads the masked column of `t`.
pub fn to_secret(v: &str, t: &str) -> String {
    format!("CREATE OR REPLACE VIEW public.{v} AS SELECT id, secret AS x FROM public.{t}")
}

/// `frames` sent on a raw session moved into a task (for [`across_a_lock`]); the session back.
pub async fn raw_exchange(
    mut s: tokio::net::TcpStream,
    mut buf: bytes::BytesMut,
    frames: Vec<bytes::BytesMut>,
) -> (String, tokio::net::TcpStream, bytes::BytesMut) {
    let out = super::frames::exchange(&mut s, &mut buf, &frames).await;
    (out, s, buf)
}
