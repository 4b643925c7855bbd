//! TLS from timebox to a PostgreSQL store (`[store] tls` and `ca`), against this binary's own
//! throwaway cluster with TLS turned on and plaintext TCP refused for the store's role (a
//! `hostnossl … reject` line for members of `store_tls_only`), so a store call that succeeds
//! proves the connection was encrypted.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use timebox::config::{PostgresStoreConfig, StoreConfig, UpstreamTls};
use timebox::store::Store;

use common::StoreDatabase;

/// The group whose members may reach the cluster over TCP only with TLS.
const TLS_ONLY: &str = "store_tls_only";

fn id(args: &[&str]) -> u32 {
    let out = std::process::Command::new("id")
        .args(args)
        .output()
        .expect("run id");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("numeric id")
}

/// Turns TLS on in this binary's shared cluster (certificate and key in its data directory, where
/// PostgreSQL looks by default) and refuses plaintext TCP to members of [`TLS_ONLY`]. Once per
/// binary; returns the server certificate (the CA for `verify-full`). Blocking.
fn tls_cluster() -> &'static PathBuf {
    static CA: OnceLock<PathBuf> = OnceLock::new();
    CA.get_or_init(|| {
        let cluster = common::cluster::shared_cluster();
        let data = cluster.data_dir();
        let (cert, key) = (data.join("server.crt"), data.join("server.key"));
        timebox::proxy::tls::ensure_dev_certificate(&cert, &key, &["localhost", "127.0.0.1"])
            .expect("server certificate");
        if id(&["-u"]) == 0 {
            let (uid, gid) = (id(&["-u", "postgres"]), id(&["-g", "postgres"]));
            for f in [&cert, &key] {
                std::os::unix::fs::chown(f, Some(uid), Some(gid)).expect("chown");
            }
        }
        let hba = data.join("pg_hba.conf");
        let old = std::fs::read_to_string(&hba).unwrap();
        let (first, rest) = old.split_once('\n').unwrap();
        std::fs::write(
            &hba,
            format!("{first}\nhostnossl all +{TLS_ONLY} 127.0.0.1/32 reject\n{rest}"),
        )
        .unwrap();
        cluster
            .psql(
                "postgres",
                &format!(
                    "CREATE ROLE {TLS_ONLY} NOLOGIN;\nALTER SYSTEM SET ssl = on;\nSELECT pg_reload_conf();"
                ),
            )
            .unwrap_or_else(|e| panic!("{e}"));
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while cluster.psql("postgres", "SHOW ssl").unwrap().trim() != "on" {
            assert!(std::time::Instant::now() < deadline, "ssl did not turn on");
            std::thread::sleep(Duration::from_millis(100));
        }
        cert
    })
}

/// A fresh store database whose role may only use TLS, and its config with `tls`/`ca`, reached
/// as `host` (at 127.0.0.1).
async fn tls_store(host: &str, tls: UpstreamTls, ca: Option<&Path>) -> (StoreDatabase, StoreConfig) {
    let db = tokio::task::spawn_blocking(|| {
        tls_cluster();
        let db = StoreDatabase::create();
        db.psql(&format!("GRANT {TLS_ONLY} TO {}", db.role));
        db
    })
    .await
    .unwrap();
    let password = std::fs::read_to_string(&db.password_file).unwrap();
    let mut connect = tokio_postgres::Config::new();
    connect
        .host(host)
        .hostaddr(IpAddr::V4(Ipv4Addr::LOCALHOST))
        .port(common::cluster::shared_cluster().port())
        .user(&db.role)
        .password(password.trim_end())
        .dbname(&db.database);
    let config = StoreConfig::Postgres(Box::new(PostgresStoreConfig {
        connect,
        tls,
        ca: ca.map(Path::to_owned),
        pool_size: 2,
        connect_timeout: Duration::from_secs(20),
        query_timeout: Duration::from_secs(30),
        audit_dir: std::env::temp_dir(),
    }));
    (db, config)
}

async fn works(config: &StoreConfig) {
    let store = Store::connect(config).await.expect("store over TLS");
    let secret = store.installation_secret().await.unwrap();
    assert_ne!(secret, [0u8; 32]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_encrypts_without_checking_the_certificate() {
    let (_db, config) = tls_store("127.0.0.1", UpstreamTls::Require, None).await;
    works(&config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_accepts_the_server_signed_by_the_configured_ca() {
    let ca = tokio::task::spawn_blocking(|| tls_cluster().clone())
        .await
        .unwrap();
    let (_db, config) = tls_store("localhost", UpstreamTls::VerifyFull, Some(&ca)).await;
    works(&config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_refuses_a_server_the_ca_did_not_sign() {
    let other = tempfile::tempdir().unwrap();
    let other_ca = other.path().join("other.crt");
    timebox::proxy::tls::ensure_dev_certificate(&other_ca, &other.path().join("other.key"), &["localhost"])
        .unwrap();
    let (_db, config) = tls_store("localhost", UpstreamTls::VerifyFull, Some(&other_ca)).await;
    let err = Store::connect(&config).await.unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    assert!(err.to_string().contains("TLS handshake"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_is_plaintext_and_so_refused_here() {
    let (_db, config) = tls_store("127.0.0.1", UpstreamTls::Disable, None).await;
    let err = Store::connect(&config).await.unwrap_err();
    assert!(err.to_string().contains("no encryption"), "{err}");
}
