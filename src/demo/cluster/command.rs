//! `timebox demo-cluster` (hidden): the throwaway-cluster launcher as a process, for harnesses that
//! are not Rust — the end-to-end benchmark (`benches/e2e/bench.py`) starts its upstream PostgreSQL
//! through this, so there is one launcher, not a second copy in Python.
//!
//! It starts a [`Cluster`] (guarded by its own pid), prints one JSON line describing it
//! ([`ClusterInfo`], superuser password included: the reader is the parent process on a pipe), then
//! waits until its stdin is closed, or SIGTERM/SIGINT/SIGHUP, and stops and deletes the cluster. If it
//! is killed outright, the guardian does the same.
//!
//! Where it sits: under [`crate::demo`], outside the serving path. What it must never do: log the
//! password (it goes to stdout, once), or leave the cluster behind.

use std::path::PathBuf;

use serde::Serialize;
use tokio::io::AsyncReadExt as _;
use tokio::signal::unix::{signal, SignalKind};

use super::{Cluster, ClusterError, ClusterOptions, PgInstall};

/// Options of `timebox demo-cluster`.
#[derive(Debug, Clone, clap::Args)]
pub struct ClusterArgs {
    /// A postgresql.conf setting, NAME=VALUE, written after (so overriding) the launcher's defaults;
    /// repeat for several.
    #[arg(long = "setting", value_name = "NAME=VALUE", value_parser = parse_setting)]
    pub settings: Vec<(String, String)>,
    /// A pg_hba.conf line placed before the default SCRAM lines; repeat for several.
    #[arg(long = "hba", value_name = "LINE")]
    pub hba: Vec<String>,
}

/// What `timebox demo-cluster` prints once the cluster is up: one line of JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterInfo {
    pub host: String,
    pub port: u16,
    pub superuser: String,
    pub password: String,
    /// Major version of the server.
    pub version: u32,
    /// Where `initdb`, `pg_ctl`, and usually `psql` and `pgbench`, are.
    pub bin_dir: PathBuf,
    pub data_dir: PathBuf,
    pub socket_dir: PathBuf,
    /// The server log; deleted with the cluster (copy it before closing stdin to keep it).
    pub log_path: PathBuf,
}

impl ClusterInfo {
    pub fn of(cluster: &Cluster) -> ClusterInfo {
        ClusterInfo {
            host: cluster.host().to_owned(),
            port: cluster.port(),
            superuser: cluster.superuser().to_owned(),
            password: cluster.superuser_password().to_owned(),
            version: cluster.install().version,
            bin_dir: cluster.install().bin_dir.clone(),
            data_dir: cluster.data_dir().to_owned(),
            socket_dir: cluster.socket_dir().to_owned(),
            log_path: cluster.log_path().to_owned(),
        }
    }
}

/// `NAME=VALUE` → (NAME, VALUE); the name is checked again by [`Cluster::start`].
fn parse_setting(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, value)) if !name.trim().is_empty() => {
            Ok((name.trim().to_owned(), value.trim().to_owned()))
        }
        _ => Err(format!("{s:?} is not NAME=VALUE")),
    }
}

/// Runs `timebox demo-cluster` (see the module docs).
pub async fn run(args: ClusterArgs) -> Result<(), ClusterError> {
    let signals_err = |source| ClusterError::Io {
        context: "cannot watch signals".into(),
        source,
    };
    let mut terminate = signal(SignalKind::terminate()).map_err(signals_err)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(signals_err)?;
    let mut hangup = signal(SignalKind::hangup()).map_err(signals_err)?;
    let opts = ClusterOptions {
        hba_prefix: args.hba,
        settings: args.settings,
        keep_alive_with_pid: Some(std::process::id()),
        ..ClusterOptions::default()
    };
    let cluster = tokio::task::spawn_blocking(move || Cluster::start(&PgInstall::find()?, opts))
        .await
        .map_err(|e| ClusterError::Io {
            context: "the cluster start task failed".into(),
            source: std::io::Error::other(e),
        })??;
    let line = serde_json::to_string(&ClusterInfo::of(&cluster)).unwrap_or_default();
    crate::cli::render::print(&format!("{line}\n"));
    let mut stdin = tokio::io::stdin();
    let mut sink = [0u8; 512];
    let stdin_closed = async {
        // Whatever is written is ignored; EOF (or a read error) means "stop".
        while matches!(stdin.read(&mut sink).await, Ok(n) if n > 0) {}
    };
    tokio::select! {
        _ = stdin_closed => {}
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
        _ = hangup.recv() => {}
    }
    tokio::task::spawn_blocking(move || drop(cluster))
        .await
        .map_err(|e| ClusterError::Io {
            context: "the cluster stop task failed".into(),
            source: std::io::Error::other(e),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_name_equals_value() {
        assert_eq!(
            parse_setting("max_connections=300"),
            Ok(("max_connections".into(), "300".into()))
        );
        assert_eq!(
            parse_setting("shared_buffers = 256MB"),
            Ok(("shared_buffers".into(), "256MB".into()))
        );
        assert!(parse_setting("fsync").is_err());
        assert!(parse_setting("=on").is_err());
    }
}
