//! Test harness: one throwaway PostgreSQL cluster per test binary ([`cluster`]) and one real timebox
//! instance per test, on port 0, stopped when the test's [`TestInstance`] is dropped.
#![allow(dead_code)]

pub mod attack;
pub mod balancer;
pub mod cli;
pub mod cluster;
pub mod http;
pub mod masking;
pub mod pg;
// Shared setups (issue 10): fleet instances on one store, `timebox serve` as a child process.
pub mod child;
pub mod fleet;
pub mod frames;
pub mod wire;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use timebox::app::{self, AppState, Listeners};
use timebox::config::Config;
use timebox::grants::{Grant, NewGrant};

/// The bearer token of the `ops` admin principal in every test instance.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
pub const AUDITOR_TOKEN: &str = "test-auditor-token-0123456789";
pub const APPROVER_TOKEN: &str = "test-approver-token-0123456789";
/// A requester token; its principal name is `alice`.
pub const REQUESTER_TOKEN: &str = "test-requester-token-alice";

/// A config that validates and needs nothing running: target `shop` with a `read` credential, role
/// `read` (`max_ttl = "1h"`), an in-memory store, no admin tokens. For the CLI's config commands
/// and instances built in a test whose upstream is never reached.
pub const MINIMAL_CONFIG: &str = r#"
[proxy]
listen = "127.0.0.1:0"
tls = "disabled"
[admin]
listen = "127.0.0.1:0"
[store]
url = "sqlite::memory:"
[targets.shop]
host = "127.0.0.1"
database = "shop"
[targets.shop.credentials.read]
user = "r"
[roles.read]
allow = ["read"]
max_ttl = "1h"
"#;

/// How to start a test instance.
#[derive(Clone, Debug)]
pub struct Options {
    /// `required`, `optional` or `disabled`.
    pub tls: &'static str,
    /// Replaces the upstream port of target `shop` (e.g. a closed port for "upstream down").
    pub shop_port: Option<u16>,
    /// Extra lines appended inside `[proxy]`.
    pub proxy_extra: String,
    /// Extra lines appended inside `[admin]` (before its tokens).
    pub admin_extra: String,
    /// A controllable clock instead of the system clock.
    pub clock: Option<Arc<timebox::clock::ManualClock>>,
    /// Replaces the lines of `[store]` (default: a SQLite file in the instance's directory), e.g.
    /// [`StoreDatabase::store_lines`]; with a PostgreSQL store `[audit] dir` is the instance
    /// directory's `audit/` (with SQLite the audit log lives beside the store file).
    pub store: Option<String>,
    /// Extra lines appended inside `[audit]` (e.g. `retain = "1d"`).
    pub audit_extra: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            tls: "optional",
            shop_port: None,
            proxy_extra: String::new(),
            admin_extra: String::new(),
            clock: None,
            store: None,
            audit_extra: String::new(),
        }
    }
}

impl Options {
    /// The defaults with `extra` lines inside `[proxy]`.
    pub fn with_proxy(extra: &str) -> Options {
        Options {
            proxy_extra: extra.into(),
            ..Options::default()
        }
    }
}

pub struct TestInstance {
    pub state: Arc<AppState>,
    pub proxy_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub cert_path: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), app::AppError>>>,
    /// The PostgreSQL store database under `TIMEBOX_TEST_STORE=postgres` (see [`start`]).
    store_db: Option<StoreDatabase>,
}

impl TestInstance {
    /// The instance's audit database file (beside a SQLite store, in `[audit] dir` with a
    /// PostgreSQL one).
    pub fn audit_db(&self) -> PathBuf {
        self.state
            .audit
            .db_path()
            .expect("a file-backed audit log")
            .to_path_buf()
    }

    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin_addr)
    }

    /// Issues a grant directly through the grant service; returns it and its token.
    pub async fn grant(&self, user: &str, role: &str, ttl: &str) -> (Grant, String) {
        self.grant_on(user, "shop", role, ttl).await
    }

    pub async fn grant_on(&self, user: &str, target: &str, role: &str, ttl: &str) -> (Grant, String) {
        let (g, token) = self
            .state
            .grants
            .issue(
                NewGrant {
                    user: user.into(),
                    target: target.into(),
                    role: role.into(),
                    ttl: ttl.into(),
                    reason: "test".into(),
                    starts_at: None,
                },
                "test-harness",
            )
            .await
            .expect("issue grant");
        (g, token.expose().to_owned())
    }

    /// A libpq-style connection string to the proxy.
    pub fn conn_string(&self, user: &str, token: &str, sslmode: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={user} password={token} dbname=shop sslmode={sslmode} connect_timeout=10",
            self.proxy_addr.port()
        )
    }

    /// Stops the instance and waits for it to finish draining.
    pub async fn shutdown(mut self) -> Result<(), app::AppError> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        match self.task.take() {
            Some(t) => t.await.expect("instance task"),
            None => Ok(()),
        }
    }
}

impl Drop for TestInstance {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// The config text of a test instance (before the upstream port and paths are filled in).
pub fn config_text(opts: &Options, dir: &std::path::Path, shop_port: u16) -> String {
    use cluster::*;
    let sha = |t: &str| timebox::grants::token::sha256_hex(t);
    let scram = |t: &str| timebox::cli::admin_token::admin_token_scram(t);
    format!(
        r#"
[proxy]
listen = "127.0.0.1:0"
tls = "{tls}"
tls_cert = "{dir}/server.crt"
tls_key = "{dir}/server.key"
{proxy_extra}

[admin]
listen = "127.0.0.1:0"
{admin_extra}
[[admin.tokens]]
name = "ops"
sha256 = "{admin}"
scram = "{admin_scram}"
roles = ["admin"]
[[admin.tokens]]
name = "audrey"
sha256 = "{auditor}"
scram = "{auditor_scram}"
roles = ["auditor"]
[[admin.tokens]]
name = "bob"
sha256 = "{approver}"
scram = "{approver_scram}"
roles = ["approver"]
[[admin.tokens]]
name = "alice"
sha256 = "{requester}"
scram = "{requester_scram}"
roles = ["requester"]

[store]
{store}

[audit]
durability = "fsync"
{audit_dir}
{audit_extra}

[targets.shop]
host = "127.0.0.1"
port = {shop_port}
database = "{db}"
[targets.shop.credentials.read]
user = "{read_user}"
password = "{read_pw}"
[targets.shop.credentials.write]
user = "{write_user}"
password = "{write_pw}"
[targets.shop.credentials.admin]
user = "{admin_user}"
password = "{admin_pw}"
[targets.shop.credentials.md5]
user = "{md5_user}"
password = "{md5_pw}"
[targets.shop.credentials.plain]
user = "{plain_user}"
password = "{plain_pw}"
[targets.shop.credentials.trust]
user = "{trust_user}"

[targets.billing]
host = "127.0.0.1"
port = {shop_port}
database = "{db}"
[targets.billing.credentials.read]
user = "{read_user}"
password = "{read_pw}"

[roles.read]
allow = ["read"]
max_ttl = "8h"
statement_timeout = "30s"
[roles.write]
allow = ["read", "write"]
max_ttl = "2h"
require_where = true
tables = {{ deny = ["public.secret*"] }}
[roles.admin]
allow = ["read", "write", "ddl", "admin"]
max_ttl = "1h"
[roles.md5]
allow = ["read"]
max_ttl = "1h"
[roles.plain]
allow = ["read"]
max_ttl = "1h"
[roles.trust]
allow = ["read"]
max_ttl = "1h"
"#,
        tls = opts.tls,
        dir = dir.display(),
        store = opts
            .store
            .clone()
            .unwrap_or_else(|| format!("url = \"sqlite://{}/timebox.db\"", dir.display())),
        audit_dir = match &opts.store {
            Some(store) if store.contains("postgres") => format!("dir = \"{}/audit\"", dir.display()),
            _ => String::new(),
        },
        audit_extra = opts.audit_extra,
        proxy_extra = opts.proxy_extra,
        admin_extra = opts.admin_extra,
        admin = sha(ADMIN_TOKEN),
        admin_scram = scram(ADMIN_TOKEN),
        auditor_scram = scram(AUDITOR_TOKEN),
        approver_scram = scram(APPROVER_TOKEN),
        requester_scram = scram(REQUESTER_TOKEN),
        auditor = sha(AUDITOR_TOKEN),
        approver = sha(APPROVER_TOKEN),
        requester = sha(REQUESTER_TOKEN),
        db = SHOP_DB,
        read_user = READ_USER,
        read_pw = READ_PASSWORD,
        write_user = WRITE_USER,
        write_pw = WRITE_PASSWORD,
        admin_user = ADMIN_USER,
        admin_pw = ADMIN_PASSWORD,
        md5_user = MD5_USER,
        md5_pw = MD5_PASSWORD,
        plain_user = PLAIN_USER,
        plain_pw = PLAIN_PASSWORD,
        trust_user = TRUST_USER,
    )
}

/// Starts the shared cluster (once per binary) and a fresh timebox instance in front of it.
///
/// With `TIMEBOX_TEST_STORE=postgres` in the environment, an instance whose options name no store
/// gets a PostgreSQL store (a fresh database of the shared cluster) instead of SQLite, so a whole
/// test file can run against the other store: `TIMEBOX_TEST_STORE=postgres cargo test --test NAME`
/// (issue 11; tests that open the SQLite files themselves assume the default).
pub async fn start(mut opts: Options) -> TestInstance {
    let cluster_port = tokio::task::spawn_blocking(|| cluster::shared_cluster().port())
        .await
        .expect("cluster start");
    let store_db =
        if opts.store.is_none() && std::env::var("TIMEBOX_TEST_STORE").is_ok_and(|v| v == "postgres") {
            let db = tokio::task::spawn_blocking(StoreDatabase::create)
                .await
                .expect("store database");
            opts.store = Some(db.store_lines());
            Some(db)
        } else {
            None
        };
    let shop_port = opts.shop_port.unwrap_or(cluster_port);
    let mut inst = start_instance(opts.clock.clone(), |dir| config_text(&opts, dir, shop_port)).await;
    inst.store_db = store_db;
    if inst.store_db.is_some() {
        warm_store_pool(&inst).await;
    }
    inst
}

/// A PostgreSQL store opens its pool's connections on first use, which took over a second on a
/// loaded machine: tests that time a 2 s grant from its issue (tests/proxy_wire.rs expiry) saw it
/// expire before the login ended. Two store calls at once open two connections before the test.
async fn warm_store_pool(inst: &TestInstance) {
    let store = inst.state.grants.store().clone();
    let now = chrono::Utc::now();
    let (a, b) = tokio::join!(
        store.grants_expired_between(now, now),
        store.grants_expired_between(now, now)
    );
    a.and(b).expect("the PostgreSQL store answers");
}

/// Starts a timebox instance from complete config text, for tests whose upstream is not the shared
/// cluster (which this does not start). `make_config` gets the instance's directory: it holds
/// `server.crt` and `server.key` (a dev certificate for `localhost`/`127.0.0.1`, for `proxy.tls_cert`
/// and `proxy.tls_key`) and is the place for the SQLite store.
pub async fn start_with_config(make_config: impl FnOnce(&std::path::Path) -> String) -> TestInstance {
    start_instance(None, make_config).await
}

async fn start_instance(
    clock: Option<Arc<timebox::clock::ManualClock>>,
    make_config: impl FnOnce(&std::path::Path) -> String,
) -> TestInstance {
    let dir = tempfile::tempdir().expect("tempdir");
    let cert_path = dir.path().join("server.crt");
    timebox::proxy::tls::ensure_dev_certificate(
        &cert_path,
        &dir.path().join("server.key"),
        &["localhost", "127.0.0.1"],
    )
    .expect("dev certificate");
    let text = make_config(dir.path());
    let config = Config::from_toml_str(&text).expect("test config is valid");
    let listeners = Listeners::bind(&config).await.expect("bind");
    let proxy_addr = listeners.proxy.local_addr().unwrap();
    let admin_addr = listeners.admin.local_addr().unwrap();
    let state = match &clock {
        None => AppState::build(config).expect("build state"),
        Some(clock) => {
            let store = timebox::store::Store::open(&config.store).expect("store");
            AppState::build_with(config, store, clock.clone()).expect("build state")
        }
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(app::run(state.clone(), listeners, async move {
        let _ = stopped.await;
    }));
    TestInstance {
        state,
        proxy_addr,
        admin_addr,
        dir,
        cert_path,
        stop: Some(stop),
        store_db: None,
        task: Some(task),
    }
}

/// Output of a `psql` run.
#[derive(Debug)]
pub struct PsqlOutput {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the real `psql` against `conn` (a libpq connection string without the password) with
/// `password` in PGPASSWORD, executing `sql` with `-c`.
pub async fn psql(conn: &str, password: &str, sql: &str) -> PsqlOutput {
    let conn = conn.to_owned();
    let password = password.to_owned();
    let sql = sql.to_owned();
    tokio::task::spawn_blocking(move || {
        let psql = cluster::shared_cluster().install().psql_path();
        let out = std::process::Command::new(psql)
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", &conn, "-c", &sql])
            .env("PGPASSWORD", password)
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run psql");
        PsqlOutput {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    })
    .await
    .expect("psql task")
}

/// libpq connection string to the proxy (no password).
pub fn proxy_conn(inst: &TestInstance, user: &str, extra: &str) -> String {
    format!(
        "host=127.0.0.1 port={} user={user} dbname=shop {extra}",
        inst.proxy_addr.port()
    )
}

/// Upstream backends currently serving sessions of `grant_id` (from pg_stat_activity).
pub async fn upstream_backends(grant_id: &str) -> i64 {
    let sql =
        format!("SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'timebox:%:{grant_id}%'");
    tokio::task::spawn_blocking(move || cluster::shop_psql(&sql).trim().parse::<i64>().expect("count"))
        .await
        .expect("task")
}

/// Polls `check` every 50 ms until it holds or `timeout` passes; returns whether it held.
pub async fn eventually<F, Fut>(timeout: std::time::Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A minimal raw frontend: logs in with SCRAM over plain TCP and hands back the socket, so tests
/// can send bytes no driver would.
pub mod raw {
    use bytes::BytesMut;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
    use postgres_protocol::message::backend::Message;
    use postgres_protocol::message::frontend;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    pub async fn read_message(s: &mut TcpStream, buf: &mut BytesMut) -> Option<Message> {
        loop {
            if let Some(m) = Message::parse(buf).expect("parse backend message") {
                return Some(m);
            }
            if s.read_buf(buf).await.ok()? == 0 {
                return None;
            }
        }
    }

    /// Logs in to `shop` and reads up to the first ReadyForQuery. Panics on failure.
    pub async fn login(addr: std::net::SocketAddr, user: &str, token: &str) -> (TcpStream, BytesMut) {
        let (s, buf, _) = login_to(addr, user, "shop", token).await;
        (s, buf)
    }

    /// Logs in to `database` (SCRAM or a cleartext password, whichever the server asks for) and
    /// reads up to the first ReadyForQuery; also whether the server asked for SCRAM. Panics on failure.
    pub async fn login_to(
        addr: std::net::SocketAddr,
        user: &str,
        database: &str,
        token: &str,
    ) -> (TcpStream, BytesMut, bool) {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut out = BytesMut::new();
        frontend::startup_message([("user", user), ("database", database)], &mut out).unwrap();
        s.write_all(&out).await.unwrap();
        let mut buf = BytesMut::new();
        let (mut scram, mut asked_for_sasl) = (None, false);
        loop {
            out.clear();
            match read_message(&mut s, &mut buf).await.expect("message") {
                Message::AuthenticationCleartextPassword => {
                    frontend::password_message(token.as_bytes(), &mut out).unwrap();
                }
                Message::AuthenticationSasl(_) => {
                    asked_for_sasl = true;
                    let c = ScramSha256::new(token.as_bytes(), ChannelBinding::unsupported());
                    frontend::sasl_initial_response("SCRAM-SHA-256", c.message(), &mut out).unwrap();
                    scram = Some(c);
                }
                Message::AuthenticationSaslContinue(b) => {
                    let c = scram.as_mut().unwrap();
                    c.update(b.data()).unwrap();
                    frontend::sasl_response(c.message(), &mut out).unwrap();
                }
                Message::AuthenticationSaslFinal(b) => scram.as_mut().unwrap().finish(b.data()).unwrap(),
                Message::ReadyForQuery(_) => return (s, buf, asked_for_sasl),
                Message::ErrorResponse(_) => panic!("login refused"),
                _ => {}
            }
            if !out.is_empty() {
                s.write_all(&out).await.unwrap();
            }
        }
    }

    /// SQLSTATE and message of an ErrorResponse.
    pub fn error_fields(body: &postgres_protocol::message::backend::ErrorResponseBody) -> (String, String) {
        use fallible_iterator::FallibleIterator;
        let mut fields = body.fields();
        let (mut code, mut msg) = (String::new(), String::new());
        while let Some(f) = fields.next().unwrap() {
            match f.type_() {
                b'C' => code = String::from_utf8_lossy(f.value_bytes()).into_owned(),
                b'M' => msg = String::from_utf8_lossy(f.value_bytes()).into_owned(),
                _ => {}
            }
        }
        (code, msg)
    }

    /// Reads until an ErrorResponse; returns its SQLSTATE and message (None if the stream ends first).
    pub async fn next_error(s: &mut TcpStream, buf: &mut BytesMut) -> Option<(String, String)> {
        loop {
            match read_message(s, buf).await? {
                Message::ErrorResponse(body) => return Some(error_fields(&body)),
                _ => continue,
            }
        }
    }
}

/// A fresh database on the shared cluster for a PostgreSQL store, owned by a fresh login role
/// whose password is in a file (as `[store] password_file` reads it). Dropped with the cluster.
#[derive(Debug)]
pub struct StoreDatabase {
    pub database: String,
    pub role: String,
    pub password_file: PathBuf,
    _dir: tempfile::TempDir,
}

impl StoreDatabase {
    /// Creates the role and the database (blocking: call it from `spawn_blocking` or before the
    /// runtime is busy).
    pub fn create() -> StoreDatabase {
        let database = cluster::unique_name("store");
        let role = cluster::unique_name("store_owner");
        let password = format!("pw-{}", cluster::unique_name("x"));
        let c = cluster::shared_cluster();
        c.psql(
            "postgres",
            &format!(
                "CREATE ROLE {role} LOGIN PASSWORD '{password}';\nCREATE DATABASE {database} OWNER {role};"
            ),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let dir = tempfile::tempdir().expect("tempdir");
        let password_file = dir.path().join("store-password");
        std::fs::write(&password_file, format!("{password}\n")).expect("password file");
        StoreDatabase {
            database,
            role,
            password_file,
            _dir: dir,
        }
    }

    pub async fn create_async() -> StoreDatabase {
        tokio::task::spawn_blocking(StoreDatabase::create)
            .await
            .expect("create store database")
    }

    /// The URL of the store (no password).
    pub fn url(&self) -> String {
        let c = cluster::shared_cluster();
        format!(
            "postgres://{}@{}:{}/{}",
            self.role,
            c.host(),
            c.port(),
            self.database
        )
    }

    /// The `[store]` lines of a timebox config using this database.
    pub fn store_lines(&self) -> String {
        format!(
            "url = \"{}\"\npassword_file = \"{}\"",
            self.url(),
            self.password_file.display()
        )
    }

    /// Runs `sql` in this database as the superuser; panics on error.
    pub fn psql(&self, sql: &str) -> String {
        cluster::shared_cluster()
            .psql(&self.database, sql)
            .unwrap_or_else(|e| panic!("{e}"))
    }
}
