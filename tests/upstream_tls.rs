//! Upstream TLS wire tests: a real client (tokio-postgres, plaintext to the proxy) through a real
//! timebox instance to a throwaway PostgreSQL that accepts TLS logins only.
//!
//! The upstream's pg_hba.conf has `hostssl … scram-sha-256` followed by `hostnossl … reject` for
//! 127.0.0.1, so any login that reaches a query proves the proxy's upstream leg was encrypted; the
//! `disable` target shows the refusal side. Each test starts its own cluster (its own certificate
//! directory, both removed when the test ends) rather than sharing one through a `static`, whose
//! drop would never run.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::pg::{db_error, scalar};
use common::TestInstance;
use timebox::demo::cluster::{Cluster, ClusterOptions, PgInstall};
use tokio_postgres::NoTls;

/// The upstream login timebox uses for every target below. SELECT on `public.gadgets`.
const UPSTREAM_USER: &str = "tls_reader";
const UPSTREAM_PASSWORD: &str = "tls-reader-pw-5e1c93";
/// Rows in `public.gadgets`.
const GADGETS: i64 = 3;

/// A TLS-only cluster and the directory with its certificate and key. Field order matters: the
/// cluster is stopped before the certificate directory is removed.
struct TlsCluster {
    cluster: Cluster,
    certs: tempfile::TempDir,
}

impl TlsCluster {
    /// The server certificate, self-signed for `localhost` and `127.0.0.1`: the right CA for
    /// `verify-full`.
    fn ca(&self) -> PathBuf {
        self.certs.path().join("server.crt")
    }

    /// A second self-signed certificate for the same names that did not sign the server's.
    fn other_ca(&self) -> PathBuf {
        self.certs.path().join("other.crt")
    }
}

/// Output of `id <args>` as a number.
fn id(args: &[&str]) -> u32 {
    let out = Command::new("id").args(args).output().expect("run id");
    assert!(out.status.success(), "id {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("numeric id")
}

/// Runs `sql` as the superuser over the unix socket (TCP without TLS is refused by design).
fn superuser_psql(cluster: &Cluster, sql: &str) -> String {
    let out = Command::new(cluster.install().psql_path())
        .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
        .arg(cluster.socket_dir())
        .args([
            "-p",
            &cluster.port().to_string(),
            "-U",
            "postgres",
            "-d",
            "postgres",
        ])
        .args(["-c", sql])
        .env_remove("PGPASSWORD")
        .env_remove("PGSSLMODE")
        .output()
        .expect("run psql");
    assert!(
        out.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Starts the TLS-only cluster with the `tls_reader` role and the `gadgets` table. Blocking.
fn start_tls_cluster() -> TlsCluster {
    // Under /tmp (world-traversable) so that the server, which runs as `postgres` when we are root,
    // can reach the files.
    let certs = tempfile::Builder::new()
        .prefix("timebox-upstream-tls-")
        .tempdir_in("/tmp")
        .expect("certificate dir");
    std::fs::set_permissions(certs.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (cert, key) = (certs.path().join("server.crt"), certs.path().join("server.key"));
    timebox::proxy::tls::ensure_dev_certificate(&cert, &key, &["localhost", "127.0.0.1"])
        .expect("server certificate");
    timebox::proxy::tls::ensure_dev_certificate(
        &certs.path().join("other.crt"),
        &certs.path().join("other.key"),
        &["localhost", "127.0.0.1"],
    )
    .expect("second certificate");
    // PostgreSQL refuses a key that is not owned by the server's user with mode 0600 (or root, 0640).
    if id(&["-u"]) == 0 {
        let (uid, gid) = (id(&["-u", "postgres"]), id(&["-g", "postgres"]));
        std::os::unix::fs::chown(&key, Some(uid), Some(gid)).expect("chown key");
    }

    let install = PgInstall::find().unwrap_or_else(|e| panic!("{e}"));
    let options = ClusterOptions::default()
        .keep_alive_with(std::process::id())
        .setting("ssl", "on")
        .setting("ssl_cert_file", cert.to_string_lossy())
        .setting("ssl_key_file", key.to_string_lossy())
        .hba("hostssl all all 127.0.0.1/32 scram-sha-256")
        .hba("hostnossl all all 127.0.0.1/32 reject");
    let cluster =
        Cluster::start(&install, options).unwrap_or_else(|e| panic!("starting the TLS cluster: {e}"));
    superuser_psql(
        &cluster,
        &format!(
            "CREATE ROLE {UPSTREAM_USER} LOGIN PASSWORD '{UPSTREAM_PASSWORD}';
             CREATE TABLE public.gadgets (id int PRIMARY KEY, name text NOT NULL);
             INSERT INTO public.gadgets VALUES (1, 'sprocket'), (2, 'widget'), (3, 'gizmo');
             GRANT SELECT ON public.gadgets TO {UPSTREAM_USER};"
        ),
    );
    TlsCluster { cluster, certs }
}

/// timebox config with one target per upstream TLS mode, all on the TLS-only cluster.
fn config_text(dir: &Path, tls: &TlsCluster) -> String {
    let port = tls.cluster.port();
    let target = |name: &str, host: &str, mode: &str, ca: Option<&Path>| {
        let ca = ca
            .map(|p| format!("ca = \"{}\"\n", p.display()))
            .unwrap_or_default();
        format!(
            r#"
[targets.{name}]
host = "{host}"
port = {port}
database = "postgres"
tls = "{mode}"
{ca}[targets.{name}.credentials.read]
user = "{UPSTREAM_USER}"
password = "{UPSTREAM_PASSWORD}"
"#
        )
    };
    let mut text = format!(
        r#"
[proxy]
listen = "127.0.0.1:0"
tls = "optional"
tls_cert = "{dir}/server.crt"
tls_key = "{dir}/server.key"

[admin]
listen = "127.0.0.1:0"

[store]
url = "sqlite://{dir}/timebox.db"

[roles.read]
allow = ["read"]
max_ttl = "1h"
"#,
        dir = dir.display()
    );
    text.push_str(&target("encrypted", "127.0.0.1", "require", None));
    text.push_str(&target("verified", "localhost", "verify-full", Some(&tls.ca())));
    text.push_str(&target(
        "wrong_ca",
        "localhost",
        "verify-full",
        Some(&tls.other_ca()),
    ));
    text.push_str(&target("plaintext", "127.0.0.1", "disable", None));
    text
}

/// A TLS-only cluster and a timebox instance in front of it.
async fn setup() -> (TlsCluster, TestInstance) {
    let tls = tokio::task::spawn_blocking(start_tls_cluster)
        .await
        .expect("cluster task");
    let inst = common::start_with_config(|dir| config_text(dir, &tls)).await;
    (tls, inst)
}

/// Connects through the proxy (plaintext on this leg) to `target` with a fresh grant for alice.
async fn connect(inst: &TestInstance, target: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (_grant, token) = inst.grant_on("alice", target, "read", "10m").await;
    let conn = format!(
        "host=127.0.0.1 port={} user=alice password={token} dbname={target} sslmode=disable connect_timeout=10",
        inst.proxy_addr.port()
    );
    let (client, connection) = tokio_postgres::connect(&conn, NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// Asserts that a session through the proxy to `target` works and that its upstream backend is on TLS.
async fn assert_encrypted_session(inst: &TestInstance, target: &str) {
    let client = connect(inst, target)
        .await
        .unwrap_or_else(|e| panic!("{target}: {e:?}"));
    assert_eq!(
        scalar(&client, "SELECT count(*) FROM gadgets").await,
        GADGETS.to_string()
    );
    assert_eq!(scalar(&client, "SELECT current_user").await, UPSTREAM_USER);
    assert_eq!(
        scalar(
            &client,
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
        )
        .await,
        "t",
        "{target}: the upstream backend's connection is TLS"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_encrypts_the_upstream_leg() {
    let (_tls, inst) = setup().await;
    assert_encrypted_session(&inst, "encrypted").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_with_the_right_ca_and_host_name() {
    let (_tls, inst) = setup().await;
    assert_encrypted_session(&inst, "verified").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_with_another_ca_fails_fast_with_08001() {
    let (_tls, inst) = setup().await;
    let started = Instant::now();
    let err = connect(&inst, "wrong_ca")
        .await
        .expect_err("a certificate from an untrusted CA must not be accepted");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    let (code, msg) = db_error(&err);
    assert_eq!(code, "08001", "{msg}");
    assert!(
        msg.contains("could not connect to target \"wrong_ca\"") && msg.contains("TLS"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_against_a_tls_only_upstream_is_refused_with_08004() {
    let (tls, inst) = setup().await;

    // The fixture itself: the upstream refuses a plaintext login outright.
    let cluster_port = tls.cluster.port();
    let direct = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={cluster_port} user={UPSTREAM_USER} password={UPSTREAM_PASSWORD} \
             dbname=postgres sslmode=disable"
        ),
        NoTls,
    )
    .await
    .err()
    .expect("plaintext login to the TLS-only cluster");
    let (code, msg) = db_error(&direct);
    assert_eq!(code, "28000", "{msg}");
    assert!(msg.contains("no encryption"), "{msg}");

    let err = connect(&inst, "plaintext")
        .await
        .expect_err("the upstream refuses plaintext");
    let (code, msg) = db_error(&err);
    assert_eq!(code, "08004", "{msg}");
    assert!(
        msg.contains("target \"plaintext\" refused timebox's upstream login"),
        "{msg}"
    );
    let db = err.as_db_error().unwrap();
    let everything = format!("{msg} {:?} {:?}", db.detail(), db.hint());
    for secret in [UPSTREAM_USER, UPSTREAM_PASSWORD] {
        assert!(!everything.contains(secret), "leaks {secret:?}: {everything}");
    }
}
