//! `timebox serve`: load the config, set up tracing, bind the listeners, build the application state
//! and run the proxy and the admin API until Ctrl-C or SIGTERM (then drain, see [`crate::app::run`]).
//!
//! Where it sits: under [`crate::cli`], dispatched from `main.rs`; everything it starts lives in
//! [`crate::app`]. What it must never do: start serving with a config that did not validate (exit 2
//! before binding anything), or install a second tracing subscriber silently.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;

use crate::app::{self, AppError, AppState, Listeners};
use crate::config::Config;

/// Why `serve` stopped with an error (after the config was loaded).
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot bind the listeners (proxy.listen = {proxy}, admin.listen = {admin})")]
    Bind {
        proxy: SocketAddr,
        admin: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    LocalAddr(std::io::Error),
    #[error("cannot start timebox")]
    Build(#[source] AppError),
    #[error(transparent)]
    Run(AppError),
}

/// `serve --config PATH`. Exit 2: the config is invalid; 1: timebox stopped with an error.
pub async fn serve(path: &Path) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {}: {e}", path.display());
            return ExitCode::from(2);
        }
    };
    init_tracing();
    match run_server(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let e = error_chain(&e);
            tracing::error!(error = e, "timebox stopped with an error");
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `e` and its causes, `outer: inner: innermost`.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Every event one line, control characters escaped: log lines carry client-supplied text.
    let subscriber = crate::logging::subscriber(filter, std::io::stderr);
    if tracing_subscriber::util::SubscriberInitExt::try_init(subscriber).is_err() {
        eprintln!("warning: a tracing subscriber was already installed");
    }
}

async fn run_server(config: Config) -> Result<(), ServeError> {
    let listeners = Listeners::bind(&config)
        .await
        .map_err(|source| ServeError::Bind {
            proxy: config.proxy.listen,
            admin: config.admin.listen,
            source,
        })?;
    let proxy_addr = listeners.proxy.local_addr().map_err(ServeError::LocalAddr)?;
    let admin_addr = listeners.admin.local_addr().map_err(ServeError::LocalAddr)?;
    let state = AppState::build(config).map_err(ServeError::Build)?;
    tracing::info!(proxy = %proxy_addr, admin = %admin_addr, "timebox listening");
    app::run(state, listeners, shutdown_signal())
        .await
        .map_err(ServeError::Run)?;
    tracing::info!("timebox stopped");
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("Ctrl-C received"),
        _ = terminate => tracing::info!("SIGTERM received"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_print_with_their_causes() {
        let e = ServeError::Bind {
            proxy: "127.0.0.1:6432".parse().unwrap(),
            admin: "127.0.0.1:9187".parse().unwrap(),
            source: std::io::Error::new(std::io::ErrorKind::AddrInUse, "Address already in use"),
        };
        assert_eq!(
            error_chain(&e),
            "cannot bind the listeners (proxy.listen = 127.0.0.1:6432, admin.listen = 127.0.0.1:9187): \
             Address already in use"
        );
    }
}
