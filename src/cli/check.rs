//! `timebox check-config` and `timebox check`: offline answers from a config file — is it valid, and
//! what would the policy decide for this SQL and role — without connecting anywhere.
//!
//! Where it sits: under [`crate::cli`], dispatched from `main.rs`; the decision itself is
//! [`crate::policy::check_command`], the same classify + authorize the proxy runs. Exit codes are
//! part of the interface (scripts and CI use them).

use std::path::Path;
use std::process::ExitCode;

use super::render;
use crate::config::Config;

/// `check-config`: prints `ok` (exit 0) or every problem found (exit 1).
pub fn check_config(path: &Path) -> ExitCode {
    match Config::load(path) {
        Ok(_) => {
            render::print("ok\n");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            ExitCode::FAILURE
        }
    }
}

/// `check`: each statement's class, relations and decision. Exit 0 when allowed, 1 when denied, 2
/// when the config is invalid.
pub fn check(path: &Path, role: &str, sql: &str) -> ExitCode {
    match Config::load(path) {
        Ok(c) => {
            let (out, allowed) = crate::policy::check_command(&c, role, sql);
            render::print(&out);
            if allowed {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("error: {}: {e}", path.display());
            ExitCode::from(2)
        }
    }
}
