//! Column masking and result quotas (issue 15, "Done when": psql and at least two drivers, text
//! and binary results) through the drivers engineers use, against a real PostgreSQL: psycopg 3
//! (text, and binary with `cursor(binary=True)`), asyncpg (binary, prepared statements) and
//! psycopg 2 (text) each get a masked column masked, a denied shape refused with 42501 naming the
//! column, and a quota stop as 54000 after which the session goes on. psql and tokio-postgres
//! are covered by `masking_wire.rs`.
//!
//! The drivers are Debian's python3-psycopg, python3-asyncpg and python3-psycopg2
//! (`scripts/install-deps.sh`). A missing driver is skipped with a note, except under `CI=true`,
//! where it fails the run (as in `compat_drivers.rs`).

mod common;

use std::process::Command;

use common::TestInstance;

/// A role with masks and a row quota of 1.
fn roles() -> String {
    use common::cluster::{READ_PASSWORD, READ_USER};
    format!(
        r#"
[roles.support]
allow = ["read"]
max_ttl = "1h"
mask = {{ "public.customers.email" = "email", "public.customers.phone" = "partial" }}
max_rows_per_statement = 1
[targets.shop.credentials.support]
user = "{READ_USER}"
password = "{READ_PASSWORD}"
"#
    )
}

async fn start() -> TestInstance {
    common::masking::start_over(&[common::masking::FIXTURE], roles()).await
}

/// The Python with `module`, or `None` (skipped outside CI, a failure under `CI=true`).
fn python_with(module: &str, package: &str) -> Option<&'static str> {
    let found = ["/usr/bin/python3", "python3"].into_iter().find(|python| {
        Command::new(python)
            .args(["-c", &format!("import {module}")])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if found.is_none() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{module} is not installed ({package}); scripts/install-deps.sh installs it");
        }
        eprintln!("{module} is not installed ({package}): skipped");
    }
    found
}

/// Runs `script` with the proxy's port as its argument and a fresh grant's token in
/// `PGPASSWORD`; its stdout lines.
async fn run(inst: &TestInstance, python: &str, script: &str) -> Vec<String> {
    let (_, token) = inst.grant("alice", "support", "10m").await;
    let (python, script, port) = (python.to_owned(), script.to_owned(), inst.proxy_addr.port());
    let out = tokio::task::spawn_blocking(move || {
        Command::new(&python)
            .args(["-c", &script, &port.to_string()])
            .env("PGPASSWORD", token)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run {python}: {e}"))
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "driver script failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout.lines().map(str::to_string).collect()
}

/// What every script prints: a masked value in text, in binary (or a second text query), a
/// masked value through a parameterised (extended protocol) query, the denied shape's SQLSTATE
/// and whether its message names the column, the quota stop's SQLSTATE and whether it names the
/// limit, then a query after it.
const EXPECTED: &[&str] = &[
    "***@example.com",
    "***0100",
    "***@shop.test",
    "42501 True",
    "54000 True",
    "1",
];

const PSYCOPG3: &str = r#"
import sys, psycopg
c = psycopg.connect(host="127.0.0.1", port=int(sys.argv[1]), user="alice", dbname="shop",
                    sslmode="prefer", connect_timeout=60, autocommit=True)
print(c.execute("SELECT email FROM customers WHERE id = 1").fetchone()[0])
with c.cursor(binary=True) as cur:
    print(cur.execute("SELECT phone FROM customers WHERE id = 1").fetchone()[0])
    print(cur.execute("SELECT email FROM customers WHERE id = %s", (2,)).fetchone()[0])
try:
    c.execute("SELECT lower(email) FROM customers")
except psycopg.Error as e:
    print(e.sqlstate, "public.customers.email" in str(e))
try:
    c.execute("SELECT id FROM customers").fetchall()
except psycopg.Error as e:
    print(e.sqlstate, "max_rows_per_statement" in str(e))
print(c.execute("SELECT 1").fetchone()[0])
"#;

const ASYNCPG: &str = r#"
import sys, asyncio, asyncpg
async def main():
    c = await asyncpg.connect(host="127.0.0.1", port=int(sys.argv[1]), user="alice",
                              database="shop", ssl=False, timeout=60)
    print(await c.fetchval("SELECT email FROM customers WHERE id = 1"))
    print(await c.fetchval("SELECT phone FROM customers WHERE id = 1"))
    print(await c.fetchval("SELECT email FROM customers WHERE id = $1", 2))
    try:
        await c.fetch("SELECT lower(email) FROM customers")
    except asyncpg.PostgresError as e:
        print(e.sqlstate, "public.customers.email" in str(e))
    try:
        await c.fetch("SELECT id FROM customers")
    except asyncpg.PostgresError as e:
        print(e.sqlstate, "max_rows_per_statement" in str(e))
    print(await c.fetchval("SELECT 1"))
    await c.close()
asyncio.run(main())
"#;

const PSYCOPG2: &str = r#"
import sys, psycopg2
c = psycopg2.connect(host="127.0.0.1", port=int(sys.argv[1]), user="alice", dbname="shop",
                     sslmode="prefer", connect_timeout=60)
c.autocommit = True
cur = c.cursor()
cur.execute("SELECT email FROM customers WHERE id = 1"); print(cur.fetchone()[0])
cur.execute("SELECT phone FROM customers WHERE id = 1"); print(cur.fetchone()[0])
cur.execute("SELECT email FROM customers WHERE id = %s", (2,)); print(cur.fetchone()[0])
try:
    cur.execute("SELECT lower(email) FROM customers")
except psycopg2.Error as e:
    print(e.pgcode, "public.customers.email" in str(e))
try:
    cur.execute("SELECT id FROM customers"); cur.fetchall()
except psycopg2.Error as e:
    print(e.pgcode, "max_rows_per_statement" in str(e))
cur.execute("SELECT 1"); print(cur.fetchone()[0])
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg3_text_and_binary_results_are_masked_denied_and_stopped() {
    let Some(python) = python_with("psycopg", "python3-psycopg") else {
        return;
    };
    let inst = start().await;
    assert_eq!(run(&inst, python, PSYCOPG3).await, EXPECTED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_binary_results_are_masked_denied_and_stopped() {
    let Some(python) = python_with("asyncpg", "python3-asyncpg") else {
        return;
    };
    let inst = start().await;
    assert_eq!(run(&inst, python, ASYNCPG).await, EXPECTED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg2_text_results_are_masked_denied_and_stopped() {
    let Some(python) = python_with("psycopg2", "python3-psycopg2") else {
        return;
    };
    let inst = start().await;
    assert_eq!(run(&inst, python, PSYCOPG2).await, EXPECTED);
}
