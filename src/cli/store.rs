//! `timebox store migrate`: brings the config's store up to this binary's schema version before a
//! rollout (every instance also migrates at start, under the same lock), and says what it did.
//!
//! Where it sits: under [`crate::cli`], dispatched from `main.rs`; it reads the config file and talks
//! to the store directly, as `serve` does (it is an operator's command, not an admin-API call).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use crate::config::Config;

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Create or upgrade the store's schema (safe while other instances run or start).
    Migrate {
        /// The TOML config file (its [store] is used).
        #[arg(long, short)]
        config: PathBuf,
    },
}

/// Runs one `store` command: exit 0 when done, 1 when the store refused or failed, 2 when the
/// config is invalid.
pub async fn run(command: StoreCommand) -> ExitCode {
    let StoreCommand::Migrate { config: path } = command;
    let config = match Config::load(&path) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {}: {e}", path.display());
            return ExitCode::from(2);
        }
    };
    match crate::store::migrate(&config.store).await {
        Ok(m) if m.from == m.to => {
            println!("store schema is at version {} (up to date)", m.to);
            ExitCode::SUCCESS
        }
        Ok(m) => {
            println!("store schema migrated from version {} to {}", m.from, m.to);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
