//! `[store]`: where grants, requests and the installation secret live — raw keys, validation, and
//! the typed [`StoreConfig`] the store module opens.
//!
//! Where it sits: `RawConfig::validate` calls [`validate_store`]; [`crate::store::Store`]
//! and [`crate::store::migrate`] take the result. SQLite (`sqlite://PATH`, `sqlite::memory:`) is the
//! embedded default; `postgres://user@host:port/db` selects the shared PostgreSQL store. What it must
//! never do: accept a password inside the URL (it would travel wherever the URL is shown) or
//! let a PostgreSQL store run without saying where its local audit lives.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

use super::raw::RawCredential;
use super::validate::{resolve_password, Problems};
use super::UpstreamTls;

/// `[store] pool_size` when the config does not say.
pub const DEFAULT_POOL_SIZE: u64 = 16;
/// `[store] connect_timeout` when the config does not say.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// `[store] query_timeout` when the config does not say.
pub const DEFAULT_QUERY_TIMEOUT: Duration = Duration::from_secs(10);
/// The SQLite store when there is no `[store]` table.
pub const DEFAULT_SQLITE_PATH: &str = "data/timebox.db";

#[derive(Debug, Deserialize)]
pub(super) struct RawStore {
    url: String,
    password_env: Option<String>,
    password_file: Option<PathBuf>,
    tls: Option<String>,
    ca: Option<PathBuf>,
    pool_size: Option<i64>,
    connect_timeout: Option<String>,
    query_timeout: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    Sqlite {
        path: PathBuf,
    },
    /// `sqlite::memory:` — for tests.
    SqliteMemory,
    /// `postgres://…`: the shared store of several instances.
    Postgres(Box<PostgresStoreConfig>),
}

/// A validated `[store] url = "postgres://…"` and the keys beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresStoreConfig {
    /// Host, port, user, database and the password from `password_env`/`password_file` (its
    /// `Debug` redacts the password).
    pub connect: tokio_postgres::Config,
    /// `tls`: as a target's (`disable` | `require` | `verify-full`).
    pub tls: UpstreamTls,
    /// `ca`: PEM roots for `verify-full` (default: the web PKI roots).
    pub ca: Option<PathBuf>,
    /// `pool_size`: store connections per instance, at most.
    pub pool_size: usize,
    /// `connect_timeout`: bound on opening one store connection (and on waiting for a free one).
    pub connect_timeout: Duration,
    /// `query_timeout`: bound on one store call; past it the call fails (callers fail closed).
    pub query_timeout: Duration,
    /// `[audit] dir`: the audit journal and index stay on this instance's disk, here.
    pub audit_dir: PathBuf,
}

impl PostgresStoreConfig {
    /// The [`crate::config::Target`] shape the proxy's upstream TLS setup takes (only `tls` and
    /// `ca` are read), so the store and the targets share one rustls setup.
    pub fn tls_target(&self) -> super::Target {
        super::Target {
            name: "store".into(),
            host: String::new(),
            port: 0,
            database: String::new(),
            tls: self.tls,
            ca: self.ca.clone(),
            credentials: Default::default(),
        }
    }
}

/// Validates `[store]` (absent: the default SQLite file) with `[audit] dir`.
pub(super) fn validate_store(
    raw: Option<&RawStore>,
    audit_dir: Option<&PathBuf>,
    p: &mut Problems,
) -> StoreConfig {
    let store = match raw {
        None => StoreConfig::Sqlite {
            path: PathBuf::from(DEFAULT_SQLITE_PATH),
        },
        Some(raw) if is_postgres_url(&raw.url) => validate_postgres(raw, audit_dir, p),
        Some(raw) => {
            for (key, given) in [
                ("password_env", raw.password_env.is_some()),
                ("password_file", raw.password_file.is_some()),
                ("tls", raw.tls.is_some()),
                ("ca", raw.ca.is_some()),
                ("pool_size", raw.pool_size.is_some()),
                ("connect_timeout", raw.connect_timeout.is_some()),
                ("query_timeout", raw.query_timeout.is_some()),
            ] {
                if given {
                    p.push(format!("store.{key}"), "only for a postgres:// store");
                }
            }
            parse_sqlite_url(&raw.url).unwrap_or_else(|e| {
                p.push("store.url", e);
                StoreConfig::SqliteMemory
            })
        }
    };
    if audit_dir.is_some() && !matches!(store, StoreConfig::Postgres(_)) {
        p.push(
            "audit.dir",
            "only with a postgres:// store; with SQLite the audit lives beside the store file",
        );
    }
    store
}

fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

fn parse_sqlite_url(url: &str) -> Result<StoreConfig, String> {
    if url == "sqlite::memory:" {
        return Ok(StoreConfig::SqliteMemory);
    }
    if let Some(path) = url.strip_prefix("sqlite://") {
        if path.is_empty() {
            return Err("sqlite:// needs a file path, e.g. sqlite://data/timebox.db".into());
        }
        return Ok(StoreConfig::Sqlite {
            path: PathBuf::from(path),
        });
    }
    Err(format!(
        "{url:?} is not a supported store URL (sqlite://PATH, sqlite::memory: or postgres://USER@HOST:PORT/DATABASE)"
    ))
}

fn validate_postgres(raw: &RawStore, audit_dir: Option<&PathBuf>, p: &mut Problems) -> StoreConfig {
    let mut connect = match url_problem(&raw.url) {
        Some(problem) => {
            p.push("store.url", problem);
            tokio_postgres::Config::new()
        }
        None => tokio_postgres::Config::from_str(&raw.url).unwrap_or_default(),
    };
    let credential = RawCredential {
        user: String::new(),
        password: None,
        password_env: raw.password_env.clone(),
        password_file: raw.password_file.clone(),
    };
    if let Some(password) = resolve_password(&credential, "store", p) {
        connect.password(password.expose());
    }
    let tls = p.upstream_tls("store.tls", raw.tls.as_deref());
    if let Some(ca) = &raw.ca {
        if tls != UpstreamTls::VerifyFull {
            p.push("store.ca", "only used with store.tls = \"verify-full\"");
        } else if !ca.is_file() {
            p.push_on_host("store.ca", format!("{} is not a readable file", ca.display()));
        }
    }
    let pool_size = p.positive("store.pool_size", raw.pool_size, DEFAULT_POOL_SIZE, 1000) as usize;
    let connect_timeout = p.duration(
        "store.connect_timeout",
        raw.connect_timeout.as_deref(),
        DEFAULT_CONNECT_TIMEOUT,
    );
    let query_timeout = p.duration(
        "store.query_timeout",
        raw.query_timeout.as_deref(),
        DEFAULT_QUERY_TIMEOUT,
    );
    let audit_dir = audit_dir.cloned().unwrap_or_else(|| {
        p.push(
            "audit.dir",
            "required with a postgres:// store: the audit journal and index stay on this instance's \
             disk; name a directory, e.g. dir = \"/var/lib/timebox/audit\"",
        );
        PathBuf::new()
    });
    StoreConfig::Postgres(Box::new(PostgresStoreConfig {
        connect,
        tls,
        ca: raw.ca.clone(),
        pool_size,
        connect_timeout,
        query_timeout,
        audit_dir,
    }))
}

/// What is wrong with a `postgres://` store URL, if anything. Pure.
pub fn url_problem(url: &str) -> Option<String> {
    let parsed = match tokio_postgres::Config::from_str(url) {
        Ok(c) => c,
        Err(e) => {
            return Some(format!(
                "not a valid PostgreSQL URL ({}); write e.g. postgres://timebox@db.internal:5432/timebox",
                crate::store::pg_text(&e)
            ))
        }
    };
    if parsed.get_password().is_some() {
        return Some(
            "must not contain a password: put it in store.password_env or store.password_file".into(),
        );
    }
    let query = url.split_once('?').map(|(_, q)| q).unwrap_or("");
    if query.split('&').any(|kv| kv.starts_with("sslmode=")) {
        return Some(
            "set TLS with store.tls (disable | require | verify-full), not sslmode in the URL".into(),
        );
    }
    if parsed.get_hosts().is_empty() {
        return Some("names no host; write e.g. postgres://timebox@db.internal:5432/timebox".into());
    }
    if parsed.get_user().is_none_or(str::is_empty) {
        return Some("names no user; write e.g. postgres://timebox@db.internal:5432/timebox".into());
    }
    if parsed.get_dbname().is_none_or(str::is_empty) {
        return Some("names no database; write e.g. postgres://timebox@db.internal:5432/timebox".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::BASE;
    use crate::config::{Config, ConfigError};

    fn load(store: &str, audit: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str(&format!("{BASE}\n[store]\n{store}\n[audit]\n{audit}\n"))
    }

    /// Every problem as `path: message`.
    fn problems(store: &str, audit: &str) -> Vec<String> {
        match load(store, audit) {
            Err(ConfigError::Invalid(p)) => p.iter().map(|p| p.to_string()).collect(),
            other => panic!("expected problems, got {other:?}"),
        }
    }

    fn has(problems: &[String], path: &str, words: &str) -> bool {
        problems
            .iter()
            .any(|p| p.starts_with(&format!("{path}: ")) && p.contains(words))
    }

    #[test]
    fn store_urls_are_checked_before_anything_connects() {
        assert_eq!(url_problem("postgres://tb@db:5432/timebox"), None);
        assert_eq!(url_problem("postgresql://tb@db/timebox?application_name=x"), None);
        let problem = |url: &str| url_problem(url).unwrap_or_default();
        assert!(problem("postgres://tb:hunter2@db/timebox").contains("must not contain a password"));
        assert!(problem("postgres://tb@db/timebox?sslmode=require").contains("store.tls"));
        assert!(problem("postgres://db/timebox").contains("names no user"));
        assert!(problem("postgres://tb@db").contains("names no database"));
        assert!(problem("postgres://tb@db:notaport/x").contains("not a valid PostgreSQL URL (invalid"));
    }

    #[test]
    fn a_postgres_store_takes_its_password_from_a_file_and_keeps_the_audit_in_audit_dir() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "s3cret-store-pw\n").unwrap();
        let c = load(
            &format!(
                "url = \"postgres://tb@db.internal:6543/timebox\"\npassword_file = \"{}\"",
                pw.display()
            ),
            "dir = \"/var/lib/timebox/audit\"",
        )
        .unwrap();
        let StoreConfig::Postgres(pg) = &c.store else {
            panic!("{:?}", c.store)
        };
        assert_eq!(pg.connect.get_password(), Some(&b"s3cret-store-pw"[..]));
        assert_eq!(pg.connect.get_user(), Some("tb"));
        assert_eq!(pg.connect.get_dbname(), Some("timebox"));
        assert_eq!(pg.connect.get_ports(), [6543]);
        assert_eq!(pg.tls, UpstreamTls::Disable);
        assert_eq!(
            (pg.pool_size, pg.connect_timeout, pg.query_timeout),
            (
                DEFAULT_POOL_SIZE as usize,
                DEFAULT_CONNECT_TIMEOUT,
                DEFAULT_QUERY_TIMEOUT
            )
        );
        assert_eq!(
            crate::audit::db_path_for(&c.store),
            Some(PathBuf::from("/var/lib/timebox/audit/audit.db"))
        );
        assert!(
            !format!("{:?}", c.store).contains("s3cret"),
            "Debug redacts the password"
        );
    }

    #[test]
    fn a_postgres_store_without_an_audit_dir_is_refused() {
        let p = problems("url = \"postgres://tb@db/timebox\"", "durability = \"fsync\"");
        assert!(has(&p, "audit.dir", "required with a postgres:// store"), "{p:?}");
    }

    #[test]
    fn store_problems_are_reported_with_their_keys() {
        let p = problems(
            "url = \"postgres://tb:pw@db/timebox\"\npassword_env = \"TIMEBOX_TEST_SURELY_UNSET_STORE_PW\"\n\
             tls = \"prefer\"\nca = \"/nonexistent/ca.pem\"\npool_size = 0\nquery_timeout = \"soon\"",
            "dir = \"/tmp/a\"",
        );
        assert!(has(&p, "store.url", "must not contain a password"), "{p:?}");
        assert!(has(&p, "store.password_env", "is not set"), "{p:?}");
        assert!(
            has(
                &p,
                "store.tls",
                "\"prefer\" is not one of disable | require | verify-full"
            ),
            "{p:?}"
        );
        assert!(
            has(&p, "store.ca", "only used with store.tls = \"verify-full\""),
            "{p:?}"
        );
        assert!(has(&p, "store.pool_size", "out of range"), "{p:?}");
        assert!(has(&p, "store.query_timeout", "not a duration"), "{p:?}");

        let p = problems(
            "url = \"postgres://tb@db/timebox\"\npassword_env = \"X\"\npassword_file = \"/x\"\n\
             tls = \"verify-full\"\nca = \"/nonexistent/ca.pem\"",
            "dir = \"/tmp/a\"",
        );
        assert!(has(&p, "store", "give only one of"), "{p:?}");
        assert!(has(&p, "store.ca", "is not a readable file"), "{p:?}");
    }

    #[test]
    fn postgres_keys_and_audit_dir_are_refused_beside_a_sqlite_store() {
        let p = problems(
            "url = \"sqlite://data/timebox.db\"\ntls = \"require\"\npool_size = 4",
            "dir = \"/tmp/a\"",
        );
        assert!(has(&p, "store.tls", "only for a postgres:// store"), "{p:?}");
        assert!(
            has(&p, "store.pool_size", "only for a postgres:// store"),
            "{p:?}"
        );
        assert!(has(&p, "audit.dir", "only with a postgres:// store"), "{p:?}");
        let p = problems("url = \"mysql://x\"", "");
        assert!(
            has(&p, "store.url", "postgres://USER@HOST:PORT/DATABASE"),
            "{p:?}"
        );
    }
}
