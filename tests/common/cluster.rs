//! The upstream PostgreSQL of the wire tests: one throwaway cluster per test binary, started on first
//! use and shared by every test in that binary.
//!
//! Where it sits: behind the proxy under test. Tests point timebox's upstream at
//! [`shared_cluster`]`().host()/port()` and log in through the proxy as the roles below; the roles'
//! passwords are the upstream credentials timebox is configured with. The `md5_user`, `plain_user` and
//! `trust_user` roles each reach the server through a different pg_hba method, so every upstream
//! authentication path of the proxy has a real server to talk to.
//!
//! What it must never do: be stopped or mutated in a way another test can observe (tests run in
//! parallel against the same cluster; create your own objects with unique names), or outlive the test
//! process. The cluster lives in a `static OnceLock`, whose `Drop` never runs, so it is started with
//! `keep_alive_with_pid = std::process::id()`: a guardian shell stops and deletes it once this test
//! binary exits, however it exits.
//!
//! `shared_cluster()` blocks (initdb + start take a second or two the first time); it is fine to call
//! it at the start of a `#[tokio::test]`.
#![allow(dead_code)]

use std::sync::OnceLock;

use timebox::demo::cluster::{Cluster, ClusterOptions, PgInstall};

/// Database holding the fixture table `public.items`.
pub const SHOP_DB: &str = "shop";
/// Rows in `shop.public.items` after setup (ids 1..=3).
pub const ITEMS_ROWS: i64 = 3;

/// SELECT on all tables of `shop.public`, USAGE/SELECT on its sequences. SCRAM.
pub const READ_USER: &str = "timebox_read";
pub const READ_PASSWORD: &str = "read-pw-7f3a9c";

/// SELECT/INSERT/UPDATE/DELETE on all tables of `shop.public`, USAGE/SELECT/UPDATE on sequences. SCRAM.
pub const WRITE_USER: &str = "timebox_write";
pub const WRITE_PASSWORD: &str = "write-pw-2b8e41";

/// ALL on schema `shop.public`, its tables and sequences (not a superuser). SCRAM.
pub const ADMIN_USER: &str = "timebox_admin";
pub const ADMIN_PASSWORD: &str = "admin-pw-c05d17";

/// Password stored as an md5 hash, pg_hba method `md5`. SELECT on shop's tables.
pub const MD5_USER: &str = "md5_user";
pub const MD5_PASSWORD: &str = "md5-pw-91e6b2";

/// pg_hba method `password` (cleartext on the wire). SELECT on shop's tables.
pub const PLAIN_USER: &str = "plain_user";
pub const PLAIN_PASSWORD: &str = "plain-pw-4d7f08";

/// pg_hba method `trust`: no password. SELECT on shop's tables.
pub const TRUST_USER: &str = "trust_user";

/// The pg_hba lines the shared cluster is started with (before the default SCRAM lines).
pub const HBA_PREFIX: [&str; 3] = [
    "host all md5_user 127.0.0.1/32 md5",
    "host all plain_user 127.0.0.1/32 password",
    "host all trust_user 127.0.0.1/32 trust",
];

/// Roles, cluster-wide, and the `shop` database. Run in database `postgres`.
fn roles_sql() -> String {
    format!(
        "
SET password_encryption = 'md5';
CREATE ROLE {MD5_USER} LOGIN PASSWORD '{MD5_PASSWORD}';
RESET password_encryption;
CREATE ROLE {READ_USER} LOGIN PASSWORD '{READ_PASSWORD}';
CREATE ROLE {WRITE_USER} LOGIN PASSWORD '{WRITE_PASSWORD}';
CREATE ROLE {ADMIN_USER} LOGIN PASSWORD '{ADMIN_PASSWORD}';
CREATE ROLE {PLAIN_USER} LOGIN PASSWORD '{PLAIN_PASSWORD}';
CREATE ROLE {TRUST_USER} LOGIN;
CREATE DATABASE {SHOP_DB};
"
    )
}

/// Schema, rows and grants. Run in database `shop`. Default privileges make tables and sequences
/// that tests later create as the superuser in `shop.public` visible to the same roles.
const SHOP_SQL: &str = "
CREATE TABLE public.items (
    id   serial PRIMARY KEY,
    name text NOT NULL,
    qty  int  NOT NULL DEFAULT 0
);
INSERT INTO public.items (name, qty) VALUES ('apple', 10), ('banana', 20), ('cherry', 30);

GRANT USAGE ON SCHEMA public TO timebox_read, timebox_write, md5_user, plain_user, trust_user;
GRANT ALL ON SCHEMA public TO timebox_admin;

GRANT SELECT ON ALL TABLES IN SCHEMA public TO timebox_read, md5_user, plain_user, trust_user;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO timebox_read;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO timebox_write;
GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO timebox_write;
GRANT ALL ON ALL TABLES IN SCHEMA public TO timebox_admin;
GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO timebox_admin;

ALTER DEFAULT PRIVILEGES IN SCHEMA public
    GRANT SELECT ON TABLES TO timebox_read, md5_user, plain_user, trust_user;
ALTER DEFAULT PRIVILEGES IN SCHEMA public
    GRANT USAGE, SELECT ON SEQUENCES TO timebox_read;
ALTER DEFAULT PRIVILEGES IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO timebox_write;
ALTER DEFAULT PRIVILEGES IN SCHEMA public
    GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO timebox_write;
ALTER DEFAULT PRIVILEGES IN SCHEMA public
    GRANT ALL ON TABLES TO timebox_admin;
ALTER DEFAULT PRIVILEGES IN SCHEMA public
    GRANT ALL ON SEQUENCES TO timebox_admin;
";

/// The options the shared cluster is started with: guarded by this process, every statement logged
/// (with user and database in the line prefix, so tests can grep [`Cluster::log_path`] for what reached
/// the upstream and as whom), the hba lines for the md5/password/trust roles, and
/// `client_connection_check_interval` (as timebox's README recommends for targets), so a backend
/// whose connection timebox closed mid-query ends within a second.
pub fn shared_cluster_options() -> ClusterOptions {
    let mut opts = ClusterOptions::default()
        .keep_alive_with(std::process::id())
        .setting("log_statement", "all")
        .setting("log_line_prefix", "%m [%p] %q%u@%d ")
        .setting("client_connection_check_interval", "250ms");
    // benches/expiry.rs holds 1,000 sessions at once.
    if let Ok(n) = std::env::var("TIMEBOX_TEST_PG_MAX_CONNECTIONS") {
        opts = opts.setting("max_connections", &n);
    }
    for line in HBA_PREFIX {
        opts = opts.hba(line);
    }
    opts
}

/// The cluster shared by every test of this test binary, started (with the fixture roles, database
/// and rows) on first call. Panics with the full error, including the server log tail, if PostgreSQL
/// is missing or does not start.
pub fn shared_cluster() -> &'static Cluster {
    shared_cluster_with(shared_cluster_options)
}

/// [`shared_cluster`], started with `options()` if it is not running yet. For a test binary whose
/// cluster needs other settings (e.g. `tests/floods_wire.rs`, a higher `max_connections`): every
/// test of that binary calls this before anything starts the cluster.
pub fn shared_cluster_with(options: fn() -> ClusterOptions) -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let install = PgInstall::find().unwrap_or_else(|e| panic!("{e}"));
        let cluster = Cluster::start(&install, options())
            .unwrap_or_else(|e| panic!("starting the shared test cluster: {e}"));
        cluster
            .psql("postgres", &roles_sql())
            .unwrap_or_else(|e| panic!("creating the fixture roles: {e}"));
        cluster
            .psql(SHOP_DB, SHOP_SQL)
            .unwrap_or_else(|e| panic!("creating the shop fixture: {e}"));
        cluster
    })
}

/// libpq key/value connection string to `shop` on the shared cluster, directly (not through the proxy).
pub fn shop_conn_string(user: &str, password: Option<&str>) -> String {
    shared_cluster().conn_string(user, password, SHOP_DB)
}

/// Run `sql` in `shop` on the shared cluster as the superuser; panics on error.
pub fn shop_psql(sql: &str) -> String {
    shared_cluster()
        .psql(SHOP_DB, sql)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A unique name (for tables, roles, …) so parallel tests do not collide on the shared cluster.
pub fn unique_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}
