//! `timebox demo`: from nothing to a psql prompt through timebox, in one command.
//!
//! Where it sits: outside the serving path, as a *user* of the library. It plays the operator: starts
//! a throwaway upstream PostgreSQL ([`cluster`]) with a sample `shop` database and three
//! upstream login roles, writes a real config file into the demo directory and loads it with
//! [`Config::load`] (so the demo proves its config is valid), starts a real instance through
//! [`crate::app::run`], issues two grants through [`crate::grants::GrantService::issue`] and prints
//! ready-to-paste `psql` commands and the `export` lines of one admin-API identity per person of the
//! README's walkthrough ([`IDENTITIES`]; `tests/demo.rs` runs the README's marked blocks against it). Ctrl-C (or SIGTERM/SIGHUP) stops the instance, the cluster and
//! removes the demo directory.
//!
//! What it must never do:
//! - print or log a secret other than on the terminal, once: the identities' tokens and the two grant tokens
//!   are printed to stdout (it is a demo), never through `tracing`; the upstream roles' passwords are
//!   printed nowhere and written only into the demo config file (mode 0600) — their `CREATE ROLE`
//!   statements run with `log_statement = 'none'` so the server log does not keep them either;
//! - write outside the demo directory (the dev certificate goes to `<dir>/certs/`, never the repo's
//!   `certs/`), or delete a directory it did not create;
//! - leave a postmaster behind: the cluster is guarded by this process' pid, so it stops even if the
//!   demo is killed outright.
#![forbid(unsafe_code)]

use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::distributions::Alphanumeric;
use rand::Rng;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::app::{self, AppError, AppState, Listeners};
use crate::config::{Config, ConfigError};
use crate::grants::{Grant, GrantError, NewGrant};
use crate::proxy::tls::TlsError;

pub mod cluster;
mod sample;
mod text;

use cluster::{Cluster, ClusterError, ClusterOptions, PgInstall};
use sample::{roles_sql, shop_sql};
pub use sample::{CUSTOMERS, ORDERS, PRODUCTS};
pub use text::psql_command;
use text::{banner, config_text, Banner, ConfigParams};

/// The target (and upstream database) the demo sets up.
pub const DATABASE: &str = "shop";

/// Upstream login roles, one per timebox role (`read`, `write`, `admin`).
pub const READ_ROLE: &str = "timebox_read";
pub const WRITE_ROLE: &str = "timebox_write";
pub const ADMIN_ROLE: &str = "timebox_admin";

/// A file in the demo directory that marks it as ours: a leftover `--keep` directory carrying it may
/// be replaced; a non-empty directory without it is never touched.
const MARKER_FILE: &str = ".timebox-demo";

/// How long the instance gets to drain on Ctrl-C before its task is abandoned.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Options of `timebox demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Port of the PostgreSQL proxy on 127.0.0.1 (psql connects here; 0 picks a free one).
    #[arg(long, default_value_t = 6432)]
    pub port: u16,
    /// Port of the admin HTTP API on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 9187)]
    pub admin_port: u16,
    /// Directory for the demo's config, certificate, store and audit log; deleted on exit unless
    /// --keep.
    #[arg(long, default_value = "data/demo")]
    pub dir: PathBuf,
    /// Keep the demo directory on exit (config, store, audit log) for inspection.
    #[arg(long)]
    pub keep: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(
        "timebox demo needs PostgreSQL installed locally to act as the upstream database. \
         Install it with `sudo apt-get install postgresql` (Debian/Ubuntu) or run \
         `scripts/install-deps.sh`. Details: {0}"
    )]
    PostgresMissing(#[source] ClusterError),

    #[error("cannot use the local PostgreSQL installation: {0}")]
    PostgresInstall(#[source] ClusterError),

    #[error("could not start the throwaway PostgreSQL cluster: {0}")]
    ClusterStart(#[source] ClusterError),

    #[error("could not set up the sample database ({step}): {source}")]
    SampleDatabase {
        step: &'static str,
        #[source]
        source: ClusterError,
    },

    #[error("cannot listen for signals (Ctrl-C, SIGTERM): {0}")]
    Signals(#[source] io::Error),

    #[error("--port and --admin-port are both {0}; give them different values")]
    SamePort(u16),

    #[error(
        "{what} port {port} on 127.0.0.1 is already in use (is another timebox demo running?); \
         pick another with {flag} <PORT>"
    )]
    PortInUse {
        what: &'static str,
        port: u16,
        flag: &'static str,
        #[source]
        source: io::Error,
    },

    #[error("cannot listen on {addr} for the {what}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },

    #[error(
        "{} exists, is not empty and was not created by `timebox demo`; refusing to use or delete it. \
         Pick another directory with --dir",
        path.display()
    )]
    DirNotOurs { path: PathBuf },

    #[error("{context} {}: {source}", path.display())]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("could not create the demo's TLS certificate: {0}")]
    Certificate(#[from] TlsError),

    #[error("the demo config {} does not load (a bug in timebox demo): {source}", path.display())]
    Config {
        path: PathBuf,
        #[source]
        source: ConfigError,
    },

    #[error("could not start timebox: {0}")]
    App(#[from] AppError),

    #[error("could not issue the demo grant for {user}: {source}")]
    Grant {
        user: &'static str,
        #[source]
        source: GrantError,
    },

    #[error("timebox stopped on its own while the demo was running")]
    InstanceEnded,

    #[error("interrupted while starting")]
    Interrupted,

    #[error("a background task of the demo failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Runs the demo until Ctrl-C, SIGTERM or SIGHUP, then cleans up (see the module docs).
pub async fn run(args: DemoArgs) -> Result<(), DemoError> {
    // Take over SIGINT/SIGTERM/SIGHUP first, so that from here on a signal means "clean up and
    // exit" instead of dying with a half-built demo directory behind.
    let stop = watch_signals()?;

    let install = PgInstall::find().map_err(|e| match e {
        ClusterError::NotInstalled { .. } => DemoError::PostgresMissing(e),
        other => DemoError::PostgresInstall(other),
    })?;
    if args.port == args.admin_port && args.port != 0 {
        return Err(DemoError::SamePort(args.port));
    }
    let dir = std::path::absolute(&args.dir).map_err(|source| DemoError::Io {
        context: "cannot resolve the demo directory",
        path: args.dir.clone(),
        source,
    })?;
    // Bind before anything slow, so a taken port fails at once.
    let listeners = bind_listeners(args.port, args.admin_port).await?;
    prepare_dir(&dir)?;

    let mut demo = Demo {
        dir,
        keep: args.keep,
        cluster: None,
        instance: None,
    };
    let outcome = demo.start_and_wait(install, listeners, &stop).await;
    let stopped = demo.stop().await;
    match outcome {
        Ok(()) => {}
        // A terminal's Ctrl-C reaches the whole foreground process group, so an initdb or psql we were
        // running may have died of it: a failure after the signal is part of stopping, not a fault.
        Err(_) if stop.is_cancelled() => println!("Interrupted while starting."),
        Err(e) => return Err(e),
    }
    stopped?;
    if demo.keep {
        println!(
            "stopped, cleaned up (kept {} as asked by --keep)",
            demo.dir.display()
        );
    } else {
        println!("stopped, cleaned up");
    }
    Ok(())
}

/// Cancelled on the first SIGINT, SIGTERM or SIGHUP.
fn watch_signals() -> Result<CancellationToken, DemoError> {
    let mut interrupt = signal(SignalKind::interrupt()).map_err(DemoError::Signals)?;
    let mut terminate = signal(SignalKind::terminate()).map_err(DemoError::Signals)?;
    let mut hangup = signal(SignalKind::hangup()).map_err(DemoError::Signals)?;
    let stop = CancellationToken::new();
    let token = stop.clone();
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = interrupt.recv() => "SIGINT",
            _ = terminate.recv() => "SIGTERM",
            _ = hangup.recv() => "SIGHUP",
        };
        tracing::info!(signal = name, "demo: stopping");
        token.cancel();
    });
    Ok(stop)
}

async fn bind_listeners(port: u16, admin_port: u16) -> Result<Listeners, DemoError> {
    async fn bind_one(what: &'static str, flag: &'static str, port: u16) -> Result<TcpListener, DemoError> {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        TcpListener::bind(addr).await.map_err(|source| {
            if source.kind() == io::ErrorKind::AddrInUse {
                DemoError::PortInUse {
                    what,
                    port,
                    flag,
                    source,
                }
            } else {
                DemoError::Bind { what, addr, source }
            }
        })
    }
    Ok(Listeners {
        proxy: bind_one("proxy", "--port", port).await?,
        admin: bind_one("admin API", "--admin-port", admin_port).await?,
    })
}

/// Creates `dir` (mode 0700) with its marker file. An empty directory is used as is; a leftover of
/// `--keep` (it carries the marker) is replaced; anything else is refused.
fn prepare_dir(dir: &Path) -> Result<(), DemoError> {
    let io_err = |context: &'static str, path: &Path| {
        let path = path.to_owned();
        move |source| DemoError::Io {
            context,
            path,
            source,
        }
    };
    if dir.exists() {
        let mut entries = std::fs::read_dir(dir).map_err(io_err("cannot read the demo directory", dir))?;
        if entries.next().is_some() {
            if !dir.join(MARKER_FILE).is_file() {
                return Err(DemoError::DirNotOurs { path: dir.to_owned() });
            }
            println!("Replacing {}, left by an earlier `timebox demo`.", dir.display());
            std::fs::remove_dir_all(dir).map_err(io_err("cannot remove the old demo directory", dir))?;
        }
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err("cannot create the demo directory", dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(io_err("cannot restrict the demo directory to its owner", dir))?;
    write_private_file(
        &dir.join(MARKER_FILE),
        "Created by `timebox demo`; deleted when the demo stops (unless --keep).\n",
    )
}

/// Writes a file readable by its owner only (mode 0600), replacing any previous content.
fn write_private_file(path: &Path, contents: &str) -> Result<(), DemoError> {
    let err = |source| DemoError::Io {
        context: "cannot write",
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    // The mode above only applies to a new file.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(err)?;
    file.write_all(contents.as_bytes()).map_err(err)
}

/// What the demo started, so that [`Demo::stop`] can undo exactly that, whatever step failed.
struct Demo {
    /// The demo directory (absolute); removed on stop unless `keep`.
    dir: PathBuf,
    /// `--keep`.
    keep: bool,
    /// The upstream PostgreSQL; stopped and deleted when dropped.
    cluster: Option<Cluster>,
    /// The running timebox instance.
    instance: Option<Instance>,
}

/// A timebox instance started with [`app::run`]: sending on `stop` resolves its shutdown future.
type Instance = (oneshot::Sender<()>, JoinHandle<Result<(), AppError>>);

/// An admin-API identity the demo makes: one per person of the README's access workflow, so the
/// walkthrough (request → approve → connect → audit) runs against the demo as written.
#[derive(Debug, Clone, Copy)]
pub struct Identity {
    /// The token's name: the principal (for a requester, the PostgreSQL user name; for an auditor,
    /// the `timebox_audit` login).
    pub name: &'static str,
    /// The shell variable the banner's `export` line sets to the token (`$ALICE` in the README).
    pub env: &'static str,
    pub roles: &'static [&'static str],
    /// What the identity is for, in the banner.
    pub words: &'static str,
}

/// Every identity the README uses, in the order the banner prints them. `admin` is also exported as
/// `TIMEBOX_ADMIN_TOKEN`.
pub const IDENTITIES: [Identity; 4] = [
    Identity {
        name: "admin",
        env: "ADMIN",
        roles: &["admin"],
        words: "admin: issues, extends, revokes grants",
    },
    Identity {
        name: "alice",
        env: "ALICE",
        roles: &["requester"],
        words: "requester, PostgreSQL user alice",
    },
    Identity {
        name: "bob",
        env: "BOB",
        roles: &["approver"],
        words: "approver: reviews requests, kills sessions",
    },
    Identity {
        name: "audrey",
        env: "AUDREY",
        roles: &["auditor"],
        words: "auditor: audit search, psql dbname=timebox_audit user=audrey",
    },
];

/// Secrets made at demo start. Never printed except the identities' tokens, once, on the terminal.
struct Secrets {
    read_password: String,
    write_password: String,
    admin_password: String,
    /// Admin-API tokens of [`IDENTITIES`], in the same order.
    tokens: [String; 4],
}

impl Secrets {
    /// Fixed values with characters that need escaping, for the unit tests of the SQL and the config.
    #[cfg(test)]
    fn for_tests() -> Secrets {
        Secrets {
            read_password: "r\"e'ad\\pw".into(),
            write_password: "write-pw".into(),
            admin_password: "admin-pw".into(),
            tokens: IDENTITIES.map(|i| format!("tbxadmin_test_{}", i.name)),
        }
    }

    fn generate() -> Secrets {
        Secrets {
            read_password: random_alphanumeric(32),
            write_password: random_alphanumeric(32),
            admin_password: random_alphanumeric(32),
            tokens: IDENTITIES.map(|_| random_admin_token()),
        }
    }
}

/// Same shape as `timebox admin-token new --config-line` makes: the prefix and 128 random bits in hex.
fn random_admin_token() -> String {
    let mut bytes = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
    format!(
        "{}{}",
        crate::cli::admin_token::ADMIN_TOKEN_PREFIX,
        hex::encode(bytes)
    )
}

fn random_alphanumeric(len: usize) -> String {
    rand::rngs::OsRng
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

impl Demo {
    /// Starts everything, prints how to use it, and waits for a signal (or for the instance to fail).
    async fn start_and_wait(
        &mut self,
        install: PgInstall,
        listeners: Listeners,
        stop: &CancellationToken,
    ) -> Result<(), DemoError> {
        let interrupted = || {
            if stop.is_cancelled() {
                Err(DemoError::Interrupted)
            } else {
                Ok(())
            }
        };
        let secrets = Secrets::generate();

        println!("Starting a throwaway PostgreSQL {} …", install.version);
        let options = ClusterOptions::default()
            .keep_alive_with(std::process::id())
            .setting("log_statement", "all")
            .setting("log_line_prefix", "%m [%p] %q%u@%d ");
        let (roles_sql, shop_sql) = (roles_sql(&secrets), shop_sql());
        // On an error the closure drops the cluster, which stops and deletes it.
        let cluster = tokio::task::spawn_blocking(move || -> Result<Cluster, DemoError> {
            let cluster = Cluster::start(&install, options).map_err(DemoError::ClusterStart)?;
            println!("Creating the sample database `{DATABASE}` …");
            cluster
                .psql("postgres", &roles_sql)
                .map_err(|source| DemoError::SampleDatabase {
                    step: "creating roles and database",
                    source,
                })?;
            cluster
                .psql(DATABASE, &shop_sql)
                .map_err(|source| DemoError::SampleDatabase {
                    step: "creating tables and rows",
                    source,
                })?;
            Ok(cluster)
        })
        .await??;
        let upstream_port = cluster.port();
        self.cluster = Some(cluster);
        interrupted()?;

        let cert = self.dir.join("certs").join("server.crt");
        let key = self.dir.join("certs").join("server.key");
        crate::proxy::tls::ensure_dev_certificate(&cert, &key, &["localhost", "127.0.0.1"])?;

        let proxy_addr = local_addr(&listeners.proxy, "proxy")?;
        let admin_addr = local_addr(&listeners.admin, "admin API")?;
        let config_path = self.dir.join("timebox.toml");
        let text = config_text(&ConfigParams {
            dir: &self.dir,
            proxy: proxy_addr,
            admin: admin_addr,
            cert: &cert,
            key: &key,
            upstream_port,
            secrets: &secrets,
        });
        write_private_file(&config_path, &text)?;
        let config = Config::load(&config_path).map_err(|source| DemoError::Config {
            path: config_path.clone(),
            source,
        })?;

        let state = AppState::build(config)?;
        let (stop_instance, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(app::run(state.clone(), listeners, async move {
            let _ = stopped.await;
        }));
        self.instance = Some((stop_instance, task));

        let [alice, bob] = issue_grants(&state).await?;
        interrupted()?;

        let cluster = self.cluster.as_ref().expect("the cluster was started above");
        print!(
            "{}",
            banner(&Banner {
                proxy: proxy_addr,
                admin: admin_addr,
                cluster,
                dir: &self.dir,
                keep: self.keep,
                tokens: &secrets.tokens,
                grants: [&alice, &bob],
            })
        );
        let _ = io::stdout().flush();

        // Wait for a signal; the instance only ends on its own if it fails.
        let (stop_instance, mut task) = self.instance.take().expect("the instance was started above");
        let ended = tokio::select! {
            _ = stop.cancelled() => None,
            ended = &mut task => Some(ended),
        };
        match ended {
            None => {
                self.instance = Some((stop_instance, task));
                println!();
                println!("Stopping …");
                Ok(())
            }
            Some(ended) => {
                ended??;
                Err(DemoError::InstanceEnded)
            }
        }
    }

    /// Stops the instance, then the cluster, then removes the directory (unless `--keep`). Runs
    /// every step even if an earlier one failed; returns the first failure.
    async fn stop(&mut self) -> Result<(), DemoError> {
        let mut first_error = None;
        if let Some((stop_instance, mut task)) = self.instance.take() {
            let _ = stop_instance.send(());
            match tokio::time::timeout(STOP_TIMEOUT, &mut task).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => first_error = first_error.or(Some(DemoError::App(e))),
                Ok(Err(e)) => first_error = first_error.or(Some(DemoError::Task(e))),
                Err(_) => {
                    tracing::warn!(timeout = ?STOP_TIMEOUT, "demo: timebox did not stop in time; abandoning it");
                    task.abort();
                }
            }
        }
        if let Some(cluster) = self.cluster.take() {
            if let Err(e) = tokio::task::spawn_blocking(move || drop(cluster)).await {
                first_error = first_error.or(Some(DemoError::Task(e)));
            }
        }
        if !self.keep {
            match std::fs::remove_dir_all(&self.dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    first_error = first_error.or(Some(DemoError::Io {
                        context: "cannot remove the demo directory",
                        path: self.dir.clone(),
                        source,
                    }))
                }
            }
        }
        match first_error {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }
}

fn local_addr(listener: &TcpListener, what: &'static str) -> Result<SocketAddr, DemoError> {
    listener.local_addr().map_err(|source| DemoError::Bind {
        what,
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        source,
    })
}

/// A grant issued by the demo, with its one-time token.
pub struct DemoGrant {
    pub grant: Grant,
    pub token: String,
}

/// The demo's setup step: alice gets `read` for 1h and bob `write` for 30m on `shop`, issued through
/// [`crate::grants::GrantService::issue`] like every other grant (so each is audited and announced).
pub async fn issue_grants(state: &AppState) -> Result<[DemoGrant; 2], DemoError> {
    Ok([
        issue(state, "alice", "read", "1h").await?,
        issue(state, "bob", "write", "30m").await?,
    ])
}

async fn issue(state: &AppState, user: &'static str, role: &str, ttl: &str) -> Result<DemoGrant, DemoError> {
    let (grant, token) = state
        .grants
        .issue(
            NewGrant {
                user: user.into(),
                target: DATABASE.into(),
                role: role.into(),
                ttl: ttl.into(),
                reason: "timebox demo".into(),
                starts_at: None,
            },
            "demo",
        )
        .await
        .map_err(|source| DemoError::Grant { user, source })?;
    tracing::info!(grant.id = %grant.id, user, role, ttl, "demo: grant issued");
    Ok(DemoGrant {
        grant,
        token: token.expose().to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftover_directories_are_only_replaced_when_ours() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("demo");
        prepare_dir(&dir).unwrap();
        assert!(dir.join(MARKER_FILE).is_file());
        std::fs::write(dir.join("timebox.db"), "old").unwrap();
        prepare_dir(&dir).unwrap();
        assert!(
            !dir.join("timebox.db").exists(),
            "a leftover demo directory starts fresh"
        );

        let foreign = base.path().join("foreign");
        std::fs::create_dir(&foreign).unwrap();
        std::fs::write(foreign.join("precious.txt"), "keep me").unwrap();
        assert!(matches!(prepare_dir(&foreign), Err(DemoError::DirNotOurs { .. })));
        assert!(foreign.join("precious.txt").is_file());
    }
}
