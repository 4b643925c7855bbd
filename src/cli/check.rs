//! `timebox check-config` and `timebox check`: offline answers from a config file — is it valid, and
//! what would the policy decide for this SQL and role — without connecting anywhere.
//!
//! Where it sits: under [`crate::cli`], dispatched from `main.rs`; the decision itself is
//! [`crate::policy::check_command`], the same classify + authorize the proxy runs. Exit codes are
//! part of the interface (scripts and CI use them).

use std::path::Path;
use std::process::ExitCode;

use super::render;
use crate::config::{Config, ConfigError, ConfigProblem};

/// `check-config`: prints `ok` (exit 0) or every problem found (exit 1). `offline` skips the
/// problems about this host (files and environment variables the config names that do not exist
/// here), listing what it skipped, so that a config can be checked away from where it runs.
pub fn check_config(path: &Path, offline: bool) -> ExitCode {
    let problems = match Config::load(path) {
        Ok(_) => Vec::new(),
        Err(ConfigError::Invalid(problems)) => problems,
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    };
    let (text, ok) = check_config_report(problems, offline);
    if ok {
        render::print(&text);
        ExitCode::SUCCESS
    } else {
        eprint!("{}: {text}", path.display());
        ExitCode::FAILURE
    }
}

/// The report of `check-config` for these problems: its text and whether the config passes. Pure.
fn check_config_report(problems: Vec<ConfigProblem>, offline: bool) -> (String, bool) {
    let (skipped, problems): (Vec<_>, Vec<_>) = problems.into_iter().partition(|p| offline && p.on_host);
    let mut text = String::new();
    if problems.is_empty() {
        text.push_str("ok");
    } else {
        text.push_str("invalid configuration:\n");
        for p in &problems {
            text.push_str(&format!("  - {p}\n"));
        }
    }
    if offline {
        let head = format!(
            "(offline: skipped {} check{} of files and environment variables on this host)",
            skipped.len(),
            if skipped.len() == 1 { "" } else { "s" }
        );
        text.push_str(if problems.is_empty() { " " } else { "" });
        text.push_str(&head);
        text.push('\n');
        for p in &skipped {
            text.push_str(&format!("  skipped {p}\n"));
        }
    } else if problems.is_empty() {
        text.push('\n');
    }
    (text, problems.is_empty())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(path: &str, on_host: bool) -> ConfigProblem {
        ConfigProblem {
            path: path.into(),
            message: "m".into(),
            on_host,
        }
    }

    #[test]
    fn offline_skips_only_host_problems_and_lists_them() {
        let host = problem("proxy.tls_cert", true);
        let file = problem("proxy.listen_typo", false);
        assert_eq!(check_config_report(vec![], false), ("ok\n".into(), true));
        assert!(!check_config_report(vec![host.clone()], false).1);
        let (text, ok) = check_config_report(vec![host.clone()], true);
        assert!(ok);
        assert_eq!(
            text,
            "ok (offline: skipped 1 check of files and environment variables on this host)\n  skipped proxy.tls_cert: m\n"
        );
        let (text, ok) = check_config_report(vec![host, file], true);
        assert!(!ok);
        assert!(
            text.starts_with("invalid configuration:\n  - proxy.listen_typo: m\n(offline"),
            "{text}"
        );
    }
}
