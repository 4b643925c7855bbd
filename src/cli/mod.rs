//! The `timebox` commands other than `demo`: each group in its own file, with its clap arguments
//! (`#[derive(Args)]`), its run function and its renderings; `main.rs` only parses and dispatches.
//!
//! - [`serve`]: `serve` (the proxy and the admin API until SIGTERM/Ctrl-C);
//! - [`check`]: `check-config`, `check` (offline: config validation, classify + authorize SQL);
//! - [`grant`], [`request`], [`session`], [`audit`]: the admin API's resources as commands, through
//!   [`client::AdminClient`];
//! - [`review`]: `roles review`, `policy replay` (least privilege from the audit trail);
//! - [`store`]: `store migrate` (the config's store, directly);
//! - [`admin_token`]: `admin-token new|scram` (offline);
//! - [`render`]: the one JSON-or-text printer every command prints through.
//!
//! Where it sits: a user of the library, like an operator at a terminal; the commands that manage a
//! running instance talk to its admin API ([`crate::admin`]) and never touch the store directly.
//! Nothing on the serving path depends on this module. It must never take the admin token as a plain
//! command-line value (it would show in `ps`): only from the environment or a file.

pub mod admin_token;
pub mod audit;
pub mod check;
pub mod client;
pub mod grant;
pub mod instance;
pub mod render;
pub mod request;
pub mod review;
pub mod serve;
pub mod session;
pub mod store;

use std::path::PathBuf;
use std::process::ExitCode;

use client::ADMIN_TOKEN_ENV;

/// Everything a command talking to the admin API (or reading its token) can fail with.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("no admin token: set {ADMIN_TOKEN_ENV} or pass --admin-token-file PATH")]
    NoToken,
    #[error("cannot read the admin token file {}: {source}", path.display())]
    TokenFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the admin token file {} is empty", path.display())]
    EmptyTokenFile { path: PathBuf },
    #[error("{url:?} is not a usable admin API URL: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("cannot reach the admin API at {url}: {detail}")]
    Unreachable {
        url: String,
        detail: String,
        #[source]
        source: reqwest::Error,
    },
    /// The API answered with its JSON error shape.
    #[error("{message} ({code}, HTTP {status})")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    #[error("unexpected answer from the admin API (HTTP {status}): {body}")]
    UnexpectedResponse { status: u16, body: String },
    #[error("request to the admin API failed: {0}")]
    Http(#[source] reqwest::Error),
    #[error("{0}")]
    InvalidArgument(String),
}

impl CliError {
    /// The API's error code, when the API answered with one.
    pub fn api_code(&self) -> Option<&str> {
        match self {
            CliError::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// The exit code of a command: 0, or 1 with `error: …` on stderr.
pub fn report(result: Result<(), CliError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
