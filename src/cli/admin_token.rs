//! `timebox admin-token new|list|revoke|scram`: admin-API tokens.
//!
//! - `new`, `list`, `revoke` use the admin API's `/v1/admin-tokens` (role admin; `list` also
//!   auditor): the token lives in the store, works at once on every instance sharing it, and is
//!   shown once. Nothing to edit, no restart.
//! - `new --config-line` and `scram` are offline: they make a token and the `[[admin.tokens]]`
//!   config entry that admits it (the bootstrap: the first admin token of a fresh install), or the
//!   SCRAM verifier line of an existing one.
//!
//! Where it sits: under [`crate::cli`], dispatched from `main.rs`; `timebox demo` makes its config
//! tokens the same way. What it must never do: write a token anywhere but the terminal, once (the
//! store and the config keep only its SHA-256 and its SCRAM verifier), or take the caller's own
//! token as a command-line value.

use chrono::Utc;
use clap::builder::PossibleValuesParser;
use clap::{Args, Subcommand};
use rand::RngCore;
use reqwest::Method;

use super::client::{resolve_token, AdminClient, ApiArgs, ApiResponse, ADMIN_TOKEN_ENV};
use super::render::{self, render_rows, sanitize, time, Printer};
use super::CliError;
pub use crate::admin::admin_tokens::{
    AdminTokenList, AdminTokenView, IssueAdminTokenRequest, IssuedAdminToken,
};
use crate::config::{PrincipalRole, Secret, PRINCIPAL_ROLES};
pub use crate::grants::admin_tokens::ADMIN_TOKEN_PREFIX;
use crate::grants::token::sha256_hex;

/// `timebox admin-token …`.
#[derive(Debug, Args)]
pub struct AdminTokenArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(subcommand)]
    pub command: AdminTokenCommand,
}

#[derive(Debug, Subcommand)]
pub enum AdminTokenCommand {
    /// Issue an admin token through the admin API (role admin): it works at once, on every instance
    /// sharing the store, and is printed only this once. With --config-line: offline, make a token
    /// and print the [[admin.tokens]] config entry for it instead (bootstrap; needs a restart).
    New {
        /// The principal's name (shown in logs and as `created_by`; a requester's is its PostgreSQL
        /// user name).
        #[arg(long)]
        name: String,
        /// A role of the principal; repeat for several.
        #[arg(long = "role", required = true, value_parser = PossibleValuesParser::new(PRINCIPAL_ROLES))]
        roles: Vec<String>,
        /// The token stops working after this long (e.g. 30d, 12h); default: until revoked.
        #[arg(long, value_name = "DURATION")]
        expires_in: Option<String>,
        /// Offline: print a config entry instead of asking the admin API (the first admin token).
        #[arg(long)]
        config_line: bool,
        /// Print the API's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// List the admin tokens issued through the API (roles admin, auditor); never their secrets.
    List {
        /// Print the API's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Revoke the live admin token with this name (role admin); its next request is refused.
    Revoke {
        /// The token's principal name.
        name: String,
        /// Print the API's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Print the `scram` line (the SCRAM-SHA-256 verifier that logins to timebox_audit are checked
    /// against) for an existing config admin token, read from $TIMEBOX_ADMIN_TOKEN or
    /// --admin-token-file.
    Scram,
}

/// Runs one `admin-token` command.
pub async fn run(args: AdminTokenArgs) -> Result<(), CliError> {
    match args.command {
        AdminTokenCommand::New {
            name,
            roles,
            expires_in,
            config_line: true,
            ..
        } => {
            if expires_in.is_some() {
                return Err(CliError::InvalidArgument(
                    "--expires-in does not apply to --config-line (config tokens last until removed from \
                     the config)"
                        .into(),
                ));
            }
            render::print(&render_new_admin_token(&new_admin_token(&name, &roles)?));
        }
        AdminTokenCommand::New {
            name,
            roles,
            expires_in,
            json,
            ..
        } => {
            let request = issue_request(name, roles, expires_in.as_deref())?;
            let answer = args.api.client()?.admin_token_new(&request).await?;
            Printer::json_if(json).answer(&answer, render_issued);
        }
        AdminTokenCommand::List { json } => {
            let answer = args.api.client()?.admin_token_list().await?;
            Printer::json_if(json).answer(&answer, |l| render_admin_token_table(&l.admin_tokens));
        }
        AdminTokenCommand::Revoke { name, json } => {
            let answer = args.api.client()?.admin_token_revoke(&name).await?;
            Printer::json_if(json).answer(&answer, render_revoked);
        }
        AdminTokenCommand::Scram => {
            let token = resolve_token(
                args.api.admin_token_file.as_deref(),
                std::env::var(ADMIN_TOKEN_ENV).ok(),
            )?;
            render::print(&render_admin_token_scram(&token));
        }
    }
    Ok(())
}

/// The body of `POST /v1/admin-tokens` for `new`: `--expires-in` becomes `expires_at` from now.
pub fn issue_request(
    name: String,
    roles: Vec<String>,
    expires_in: Option<&str>,
) -> Result<IssueAdminTokenRequest, CliError> {
    let expires_at = match expires_in {
        None => None,
        Some(text) => {
            let bad = |why: String| CliError::InvalidArgument(format!("--expires-in {text:?}: {why}"));
            let d =
                humantime::parse_duration(text).map_err(|e| bad(format!("{e}; write e.g. 30d or 12h")))?;
            let d = chrono::Duration::from_std(d).map_err(|_| bad("too long".into()))?;
            Some(
                Utc::now()
                    .checked_add_signed(d)
                    .ok_or_else(|| bad("too long".into()))?,
            )
        }
    };
    Ok(IssueAdminTokenRequest {
        name,
        roles,
        expires_at,
    })
}

impl AdminClient {
    /// `POST /v1/admin-tokens`.
    pub async fn admin_token_new(
        &self,
        request: &IssueAdminTokenRequest,
    ) -> Result<ApiResponse<IssuedAdminToken>, CliError> {
        self.send(Method::POST, &["v1", "admin-tokens"], Some(request))
            .await
    }

    /// `GET /v1/admin-tokens`.
    pub async fn admin_token_list(&self) -> Result<ApiResponse<AdminTokenList>, CliError> {
        self.get(&["v1", "admin-tokens"], &()).await
    }

    /// `DELETE /v1/admin-tokens/{name}`.
    pub async fn admin_token_revoke(&self, name: &str) -> Result<ApiResponse<AdminTokenView>, CliError> {
        self.send(Method::DELETE, &["v1", "admin-tokens", name], None::<&()>)
            .await
    }
}

fn until(t: &AdminTokenView) -> String {
    t.expires_at.map(time).unwrap_or_else(|| "until revoked".into())
}

/// `admin-token new` (through the API).
pub fn render_issued(t: &IssuedAdminToken) -> String {
    format!(
        "Admin token for {:?} (roles {}; expires {}), shown only once; it works now:\n  {}\n",
        sanitize(&t.view.name),
        sanitize(&t.view.roles.join(", ")),
        until(&t.view),
        sanitize(&t.token)
    )
}

/// `admin-token list`.
pub fn render_admin_token_table(tokens: &[AdminTokenView]) -> String {
    render_rows(
        tokens,
        "no admin tokens issued through the API (config tokens are in the config file)",
        &["NAME", "ROLES", "STATUS", "CREATED", "BY", "EXPIRES", "LAST USED"],
        |t| {
            vec![
                sanitize(&t.name),
                sanitize(&t.roles.join(",")),
                format!("{:?}", t.status).to_lowercase(),
                time(t.created_at),
                sanitize(&t.created_by),
                until(t),
                t.last_used_at.map(time).unwrap_or_else(|| "-".into()),
            ]
        },
    )
}

/// `admin-token revoke`.
pub fn render_revoked(t: &AdminTokenView) -> String {
    format!(
        "Revoked admin token {:?} (roles {}); its next request is refused.\n",
        sanitize(&t.name),
        sanitize(&t.roles.join(", "))
    )
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
         Add this to the config file and restart timebox (to add a token without a restart, leave out \
         --config-line: `timebox admin-token new` issues it through the admin API):\n\n{}",
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

    #[test]
    fn expires_in_becomes_a_time_from_now() {
        let before = Utc::now();
        let r = issue_request("ci".into(), vec!["admin".into()], Some("30d")).unwrap();
        let at = r.expires_at.unwrap();
        assert!(at >= before + chrono::Duration::days(30) && at <= Utc::now() + chrono::Duration::days(30));
        assert_eq!(issue_request("ci".into(), vec![], None).unwrap().expires_at, None);
        let err = issue_request("ci".into(), vec![], Some("soon")).unwrap_err();
        assert!(err.to_string().contains("--expires-in \"soon\""), "{err}");
    }
}
