//! The drivers engineers use, through a real proxy (TLS required, SCRAM with the grant token) to a
//! real PostgreSQL (issue 12 item 5): psycopg 2, psycopg 3, asyncpg, node-postgres and pgjdbc each log in,
//! run a simple and a parameterised (extended protocol) query, a transaction, COPY … TO STDOUT
//! where the driver has it, get a write refused with 42501 and go on, and cancel a running query
//! (57014) where the driver can. tokio-postgres is covered by the other wire tests, sqlx by
//! `compat_sqlx.rs`.
//!
//! `scripts/install-deps.sh` installs the drivers (Debian's python3-psycopg2, python3-psycopg,
//! python3-asyncpg and libpostgresql-jdbc-java; node-postgres from the npm registry into `target/drivers/node`). A test
//! whose driver is missing says what to install and is skipped, except under `CI=true`, where a
//! missing driver fails the run: a compatibility claim that was not checked is not made.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Options, TestInstance};

/// Skips (outside CI) or fails (in CI) when a driver is missing.
fn missing(driver: &str, install: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{driver} is not installed ({install}); scripts/install-deps.sh installs it");
    }
    eprintln!("{driver} is not installed ({install}): skipped");
}

fn python_with(module: &str) -> Option<&'static str> {
    ["/usr/bin/python3", "python3"].into_iter().find(|python| {
        Command::new(python)
            .args(["-c", &format!("import {module}")])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

fn node_modules() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/drivers/node/node_modules")
}

const PGJDBC: &str = "/usr/share/java/postgresql.jar";

/// A TLS-only instance and a read grant for alice; the token is the password.
async fn instance() -> (TestInstance, String) {
    let inst = common::start(Options {
        tls: "required",
        // A cold JVM's TLS and SCRAM handshake on a loaded 2-core machine can take seconds.
        proxy_extra: "startup_timeout = \"60s\"".into(),
        ..Options::default()
    })
    .await;
    let (_g, token) = inst.grant("alice", "read", "10m").await;
    (inst, token)
}

/// Runs `program args…` with the token in `PGPASSWORD`, off the runtime; its stdout lines.
async fn run(program: &str, args: Vec<String>, envs: Vec<(String, String)>, token: &str) -> Vec<String> {
    let program = program.to_string();
    let token = token.to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(&program)
            .args(&args)
            .envs(envs)
            .env("PGPASSWORD", token)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run {program}: {e}"))
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

/// What every driver prints, in order: a simple query, a parameterised one, a value read inside a
/// transaction, the COPY rows, the refused write's SQLSTATE, a query after it, the cancelled
/// query's SQLSTATE, a query after that, and whether the connection is TLS.
const EXPECTED: &[&str] = &["1", "42", "on", "1 2 3", "42501", "2", "57014", "3", "tls True"];

const PSYCOPG2: &str = r#"
import sys, io, threading, time, psycopg2
c = psycopg2.connect(host="127.0.0.1", port=int(sys.argv[1]), user="alice", dbname="shop",
                     sslmode="require", connect_timeout=60)
c.autocommit = True
cur = c.cursor()
cur.execute("SELECT 1"); print(cur.fetchone()[0])
cur.execute("SELECT %s::int + 1", (41,)); print(cur.fetchone()[0])
c.autocommit = False
cur.execute("SELECT current_setting('transaction_read_only')"); cur.fetchone()
cur.execute("SHOW standard_conforming_strings"); print(cur.fetchone()[0]); c.commit()
buf = io.StringIO(); cur.copy_expert("COPY (SELECT generate_series(1, 3)) TO STDOUT", buf)
print(" ".join(buf.getvalue().split())); c.commit()
try:
    cur.execute("DELETE FROM orders")
except psycopg2.Error as e:
    print(e.pgcode); c.rollback()
cur.execute("SELECT 2"); print(cur.fetchone()[0]); c.commit()
threading.Thread(target=lambda: (time.sleep(1.5), c.cancel())).start()
try:
    cur.execute("SELECT pg_sleep(60)")
except psycopg2.Error as e:
    print(e.pgcode); c.rollback()
cur.execute("SELECT 3"); print(cur.fetchone()[0]); c.commit()
print("tls", bool(c.info.ssl_in_use))
"#;

const PSYCOPG3: &str = r#"
import sys, threading, time, psycopg
c = psycopg.connect(host="127.0.0.1", port=int(sys.argv[1]), user="alice", dbname="shop",
                    sslmode="require", connect_timeout=60, autocommit=True)
print(c.execute("SELECT 1").fetchone()[0])
print(c.execute("SELECT %s::int + 1", (41,), prepare=True).fetchone()[0])
with c.transaction():
    print(c.execute("SHOW standard_conforming_strings").fetchone()[0])
with c.cursor() as cur:
    with cur.copy("COPY (SELECT generate_series(1, 3)) TO STDOUT") as copy:
        print(" ".join(row[0] for row in copy.rows()))
try:
    c.execute("DELETE FROM orders")
except psycopg.Error as e:
    print(e.sqlstate)
print(c.execute("SELECT 2").fetchone()[0])
threading.Thread(target=lambda: (time.sleep(1.5), c.cancel())).start()
try:
    c.execute("SELECT pg_sleep(60)")
except psycopg.Error as e:
    print(e.sqlstate)
print(c.execute("SELECT 3").fetchone()[0])
print("tls", bool(c.pgconn.ssl_in_use))
"#;

/// asyncpg cancels a query whose `timeout` passes (a CancelRequest, then it waits for the server)
/// and raises its own TimeoutError, not the server's 57014: the script prints 57014 when that
/// happened and the next query ran long before the 60 s sleep could have ended by itself.
/// `execute()` without arguments is the simple query protocol; a prepared statement is reused.
const ASYNCPG: &str = r#"
import asyncio, sys, time, asyncpg
async def main():
    port = int(sys.argv[1])
    c = await asyncpg.connect(host="127.0.0.1", port=port, user="alice", database="shop",
                              ssl="require", timeout=60)
    assert await c.execute("SELECT 1") == "SELECT 1"
    print(await c.fetchval("SELECT 1"))
    stmt = await c.prepare("SELECT $1::int + 1")
    for _ in range(3):
        v = await stmt.fetchval(41)
    print(v)
    async with c.transaction():
        print(await c.fetchval("SHOW standard_conforming_strings"))
    chunks = []
    async def sink(data):
        chunks.append(bytes(data))
    await c.copy_from_query("SELECT generate_series(1, 3)", output=sink)
    print(" ".join(b"".join(chunks).decode().split()))
    try:
        await c.execute("DELETE FROM orders")
    except asyncpg.PostgresError as e:
        print(e.sqlstate)
    print(await c.fetchval("SELECT 2"))
    started = time.monotonic()
    try:
        await c.fetchval("SELECT pg_sleep(60)", timeout=1.5)
    except asyncio.TimeoutError:
        print(await c.fetchval("SELECT 3") == 3 and time.monotonic() - started < 30 and "57014")
    print(await c.fetchval("SELECT 3"))
    await c.close()
    try:
        plain = await asyncpg.connect(host="127.0.0.1", port=port, user="alice", database="shop",
                                      ssl=False, timeout=60)
        await plain.close()
        print("tls False")
    except asyncpg.PostgresError as e:
        print("tls True" if e.sqlstate == "28000" else "tls ? " + e.sqlstate)
asyncio.run(main())
"#;

const NODE_PG: &str = r#"
const { Client } = require('pg');
(async () => {
  const c = new Client({ host: '127.0.0.1', port: +process.argv[1], user: 'alice', database: 'shop',
                         password: process.env.PGPASSWORD, ssl: { rejectUnauthorized: false } });
  await c.connect();
  console.log((await c.query('SELECT 1 AS x')).rows[0].x);
  console.log((await c.query({ name: 'plus', text: 'SELECT $1::int + 1 AS x', values: [41] })).rows[0].x);
  await c.query('BEGIN');
  console.log((await c.query('SHOW standard_conforming_strings')).rows[0].standard_conforming_strings);
  await c.query('COMMIT');
  // node-postgres has no COPY of its own (pg-copy-streams adds it): a set-returning query stands in.
  console.log((await c.query('SELECT generate_series(1, 3) AS n')).rows.map((r) => r.n).join(' '));
  try { await c.query('DELETE FROM orders'); } catch (e) { console.log(e.code); }
  console.log((await c.query('SELECT 2 AS x')).rows[0].x);
  // node-postgres has no cancel API: a statement_timeout stands in, and the session goes on.
  await c.query("SET statement_timeout = '1s'");
  try { await c.query('SELECT pg_sleep(60)'); } catch (e) { console.log(e.code); }
  await c.query("SET statement_timeout = '30s'"); // RESET would lift the role's cap: refused
  console.log((await c.query('SELECT 3 AS x')).rows[0].x);
  console.log('tls', c.connection.stream.encrypted ? 'True' : 'False');
  await c.end();
})().catch((e) => { console.error(e); process.exit(1); });
"#;

const PGJDBC_MAIN: &str = r#"
import java.io.StringWriter;
import java.sql.*;
import java.util.Properties;

public class Drive {
  public static void main(String[] args) throws Exception {
    Properties p = new Properties();
    p.setProperty("user", "alice");
    p.setProperty("password", System.getenv("PGPASSWORD"));
    p.setProperty("sslmode", "require");
    p.setProperty("prepareThreshold", "1");
    try (Connection c = DriverManager.getConnection("jdbc:postgresql://127.0.0.1:" + args[0] + "/shop", p)) {
      try (Statement s = c.createStatement(); ResultSet r = s.executeQuery("SELECT 1")) { r.next(); System.out.println(r.getInt(1)); }
      try (PreparedStatement ps = c.prepareStatement("SELECT ?::int + 1")) {
        int v = 0;
        for (int i = 0; i < 3; i++) { ps.setInt(1, 41); try (ResultSet r = ps.executeQuery()) { r.next(); v = r.getInt(1); } }
        System.out.println(v);
      }
      c.setAutoCommit(false);
      try (Statement s = c.createStatement(); ResultSet r = s.executeQuery("SHOW standard_conforming_strings")) { r.next(); System.out.println(r.getString(1)); }
      c.commit();
      c.setAutoCommit(true);
      StringWriter w = new StringWriter();
      c.unwrap(org.postgresql.PGConnection.class).getCopyAPI().copyOut("COPY (SELECT generate_series(1, 3)) TO STDOUT", w);
      System.out.println(String.join(" ", w.toString().trim().split("\\s+")));
      try (Statement s = c.createStatement()) { s.execute("DELETE FROM orders"); } catch (SQLException e) { System.out.println(e.getSQLState()); }
      try (Statement s = c.createStatement(); ResultSet r = s.executeQuery("SELECT 2")) { r.next(); System.out.println(r.getInt(1)); }
      Statement slow = c.createStatement();
      new Thread(() -> { try { Thread.sleep(1500); slow.cancel(); } catch (Exception e) { } }).start();
      try { slow.execute("SELECT pg_sleep(60)"); } catch (SQLException e) { System.out.println(e.getSQLState()); }
      try (Statement s = c.createStatement(); ResultSet r = s.executeQuery("SELECT 3")) { r.next(); System.out.println(r.getInt(1)); }
    }
    // pgjdbc does not say whether a connection is TLS; the proxy requires TLS, so show that the
    // same login without it is refused (28000) and the one above therefore was TLS.
    p.setProperty("sslmode", "disable");
    try (Connection plain = DriverManager.getConnection("jdbc:postgresql://127.0.0.1:" + args[0] + "/shop", p)) {
      System.out.println("tls False");
    } catch (SQLException e) {
      System.out.println("28000".equals(e.getSQLState()) ? "tls True" : "tls ? " + e.getSQLState());
    }
  }
}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg2_works_through_the_proxy() {
    let Some(python) = python_with("psycopg2") else {
        return missing("psycopg2", "apt-get install python3-psycopg2");
    };
    let (inst, token) = instance().await;
    let port = inst.proxy_addr.port().to_string();
    let lines = run(python, vec!["-c".into(), PSYCOPG2.into(), port], vec![], &token).await;
    assert_eq!(lines, EXPECTED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg3_works_through_the_proxy() {
    let Some(python) = python_with("psycopg") else {
        return missing("psycopg 3", "apt-get install python3-psycopg");
    };
    let (inst, token) = instance().await;
    let port = inst.proxy_addr.port().to_string();
    let lines = run(python, vec!["-c".into(), PSYCOPG3.into(), port], vec![], &token).await;
    assert_eq!(lines, EXPECTED);
}

/// asyncpg over TLS (`compat_wire.rs` checks its `client_encoding` spelling without TLS).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_works_through_the_proxy() {
    let Some(python) = python_with("asyncpg") else {
        return missing("asyncpg", "apt-get install python3-asyncpg");
    };
    let (inst, token) = instance().await;
    let port = inst.proxy_addr.port().to_string();
    let lines = run(python, vec!["-c".into(), ASYNCPG.into(), port], vec![], &token).await;
    assert_eq!(lines, EXPECTED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_postgres_works_through_the_proxy() {
    let modules = node_modules();
    if !modules.join("pg").is_dir() || Command::new("node").arg("--version").output().is_err() {
        return missing(
            "node-postgres",
            "node and `npm install --prefix target/drivers/node pg@8`",
        );
    }
    let (inst, token) = instance().await;
    let port = inst.proxy_addr.port().to_string();
    let envs = vec![("NODE_PATH".to_string(), modules.display().to_string())];
    let lines = run("node", vec!["-e".into(), NODE_PG.into(), port], envs, &token).await;
    assert_eq!(lines, EXPECTED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgjdbc_works_through_the_proxy() {
    if !Path::new(PGJDBC).exists() || Command::new("java").arg("-version").output().is_err() {
        return missing(
            "pgjdbc",
            "apt-get install libpostgresql-jdbc-java default-jre-headless",
        );
    }
    let (inst, token) = instance().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let source = dir.path().join("Drive.java");
    std::fs::write(&source, PGJDBC_MAIN).expect("write Drive.java");
    let port = inst.proxy_addr.port().to_string();
    let args = vec!["-cp".into(), PGJDBC.into(), source.display().to_string(), port];
    let lines = run("java", args, vec![], &token).await;
    assert_eq!(lines, EXPECTED);
}
