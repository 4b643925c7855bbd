//! `timebox admin-token new|scram`: make an admin API token and the config entry that admits it, or
//! the SCRAM verifier line of an existing one. Offline: nothing here talks to a running instance.
//!
//! Where it sits: under [`crate::cli`], dispatched from `main.rs`; `timebox demo` makes its admin
//! token the same way. What it must never do: write a token anywhere but the terminal, once (the
//! config keeps only its SHA-256 and its SCRAM verifier).

use std::path::PathBuf;

use clap::builder::PossibleValuesParser;
use clap::Subcommand;
use rand::RngCore;

use super::client::{resolve_token, ADMIN_TOKEN_ENV};
use super::render;
use super::CliError;
use crate::config::{PrincipalRole, Secret, PRINCIPAL_ROLES};
use crate::grants::token::sha256_hex;

/// Prefix of admin tokens made by `timebox admin-token new`.
pub const ADMIN_TOKEN_PREFIX: &str = "tbxa_";

#[derive(Debug, Subcommand)]
pub enum AdminTokenCommand {
    /// Make a new random admin token and print the config entry for it.
    New {
        /// The principal's name (shown in logs and as `created_by`).
        #[arg(long)]
        name: String,
        /// A role of the principal; repeat for several.
        #[arg(long = "role", required = true, value_parser = PossibleValuesParser::new(PRINCIPAL_ROLES))]
        roles: Vec<String>,
    },
    /// Print the `scram` line (the SCRAM-SHA-256 verifier that logins to timebox_audit are checked
    /// against) for an existing admin token, read from $TIMEBOX_ADMIN_TOKEN or --admin-token-file.
    Scram {
        /// Read the token from this file instead of $TIMEBOX_ADMIN_TOKEN.
        #[arg(long, value_name = "PATH")]
        admin_token_file: Option<PathBuf>,
    },
}

/// Runs one `admin-token` command.
pub fn run(command: AdminTokenCommand) -> Result<(), CliError> {
    let text = match command {
        AdminTokenCommand::New { name, roles } => render_new_admin_token(&new_admin_token(&name, &roles)?),
        AdminTokenCommand::Scram { admin_token_file } => {
            let token = resolve_token(admin_token_file.as_deref(), std::env::var(ADMIN_TOKEN_ENV).ok())?;
            render_admin_token_scram(&token)
        }
    };
    render::print(&text);
    Ok(())
}

/// A freshly made admin token and the config entry that admits it.
#[derive(Debug, Clone)]
pub struct NewAdminToken {
    pub name: String,
    pub roles: Vec<PrincipalRole>,
    pub token: Secret,
    pub sha256: String,
    /// The token's SCRAM-SHA-256 verifier in PostgreSQL's text form, for `timebox_audit`.
    pub scram: String,
}

/// A SCRAM-SHA-256 verifier of an admin token (random salt, PostgreSQL's 4,096 iterations), in
/// the text form of `[[admin.tokens]] scram`: what `timebox_audit` logins are checked against.
pub fn admin_token_scram(token: &str) -> String {
    let mut salt = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    crate::grants::token::ScramVerifier::derive(token, &salt, crate::grants::token::SCRAM_ITERATIONS)
        .to_text()
}

/// What `admin-token scram` prints: the `scram` line for an existing token's config entry.
pub fn render_admin_token_scram(token: &Secret) -> String {
    let quote = |s: &str| toml::Value::String(s.to_owned()).to_string();
    format!(
        "Add this line to the token's [[admin.tokens]] entry and restart timebox:\n\nscram = {}\n",
        quote(&admin_token_scram(token.expose()))
    )
}

/// Makes a random admin token (`tbxa_` + 32 hex digits, 128 bits) for principal `name`.
pub fn new_admin_token(name: &str, roles: &[String]) -> Result<NewAdminToken, CliError> {
    if name.trim().is_empty() || name.trim() != name {
        return Err(CliError::InvalidArgument(
            "--name must be non-empty, without surrounding spaces".into(),
        ));
    }
    if roles.is_empty() {
        return Err(CliError::InvalidArgument(format!(
            "give at least one --role ({})",
            PRINCIPAL_ROLES.join(" | ")
        )));
    }
    let mut parsed = Vec::new();
    for r in roles {
        let Some(role) = PrincipalRole::from_name(r) else {
            return Err(CliError::InvalidArgument(format!(
                "--role {r:?} is not one of {}",
                PRINCIPAL_ROLES.join(" | ")
            )));
        };
        parsed.push(role);
    }
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let token = format!("{ADMIN_TOKEN_PREFIX}{}", hex::encode(bytes));
    let mut roles = parsed;
    roles.dedup();
    Ok(NewAdminToken {
        name: name.to_owned(),
        roles,
        sha256: sha256_hex(&token),
        scram: admin_token_scram(&token),
        token: Secret::new(token),
    })
}

/// The TOML entry to paste into the config, `[[admin.tokens]]` with name, sha256 and roles.
pub fn admin_token_toml(t: &NewAdminToken) -> String {
    let quote = |s: &str| toml::Value::String(s.to_owned()).to_string();
    let roles: Vec<String> = t.roles.iter().map(|r| quote(r.as_str())).collect();
    format!(
        "[[admin.tokens]]\nname = {}\nsha256 = {}\nscram = {}\nroles = [{}]\n",
        quote(&t.name),
        quote(&t.sha256),
        quote(&t.scram),
        roles.join(", ")
    )
}

/// What `admin-token new` prints.
pub fn render_new_admin_token(t: &NewAdminToken) -> String {
    format!(
        "Admin token for {:?} (shown only once; the config keeps only its SHA-256 and SCRAM verifier):\n  {}\n\n\
         Add this to the config file and restart timebox:\n\n{}",
        t.name,
        t.token.expose(),
        admin_token_toml(t)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_tokens_and_their_toml() {
        let t = new_admin_token("ops", &["admin".into(), "auditor".into()]).unwrap();
        assert!(t.token.expose().starts_with(ADMIN_TOKEN_PREFIX));
        assert_eq!(t.token.expose().len(), ADMIN_TOKEN_PREFIX.len() + 32);
        assert_eq!(t.sha256, sha256_hex(t.token.expose()));
        let toml_text = admin_token_toml(&t);
        let config = format!(
            "[proxy]\nlisten = \"127.0.0.1:0\"\ntls = \"disabled\"\n[admin]\nlisten = \"127.0.0.1:0\"\n{toml_text}"
        );
        let c = crate::config::Config::from_toml_str(&config).expect("the snippet is valid config");
        assert_eq!(c.admin.tokens[0].name, "ops");
        assert_eq!(hex::encode(c.admin.tokens[0].sha256), t.sha256);
        let verifier = c.admin.tokens[0].scram.clone().expect("a scram verifier");
        assert_eq!(
            verifier,
            crate::grants::token::ScramVerifier::derive(
                t.token.expose(),
                &verifier.salt,
                verifier.iterations
            ),
            "the verifier is the token's"
        );
        assert_eq!(
            c.admin.tokens[0].roles,
            vec![PrincipalRole::Admin, PrincipalRole::Auditor]
        );
        assert!(new_admin_token("ops", &["root".into()]).is_err());
        assert!(new_admin_token("", &["admin".into()]).is_err());
        assert!(new_admin_token("ops", &[]).is_err());
        assert_ne!(new_admin_token("ops", &["admin".into()]).unwrap().token, t.token);
    }
}
