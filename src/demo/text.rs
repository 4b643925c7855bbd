//! The demo's texts: the config file it writes into the demo directory and the banner it prints
//! (the identities' tokens once, the two grants' psql commands).
//!
//! Where it sits: under [`crate::demo`], outside the serving path; pure functions of what the demo
//! started. What it must never do: put a secret anywhere but the config file (mode 0600, upstream
//! passwords and only the identities' token hashes) and the terminal banner.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;

use super::cluster::Cluster;
use super::{DemoGrant, Secrets, ADMIN_ROLE, DATABASE, IDENTITIES, READ_ROLE, WRITE_ROLE};

/// A TOML basic string, escaped by the toml crate.
fn toml_string(value: &str) -> String {
    toml::Value::String(value.to_owned()).to_string()
}

fn toml_path(path: &Path) -> String {
    toml_string(&path.to_string_lossy())
}

/// What goes into `<dir>/timebox.toml`.
pub(super) struct ConfigParams<'a> {
    pub(super) dir: &'a Path,
    pub(super) proxy: SocketAddr,
    pub(super) admin: SocketAddr,
    pub(super) cert: &'a Path,
    pub(super) key: &'a Path,
    pub(super) upstream_port: u16,
    pub(super) secrets: &'a Secrets,
}

/// The demo's config file. It holds the upstream passwords, so it is written with mode 0600.
pub(super) fn config_text(p: &ConfigParams<'_>) -> String {
    format!(
        r#"# Written by `timebox demo`: a local instance in front of a throwaway PostgreSQL.
# Holds upstream passwords (mode 0600); deleted when the demo stops unless --keep.

[proxy]
listen = "{proxy}"
tls = "required"
tls_cert = {cert}
tls_key = {key}
shutdown_grace = "5s"

[admin]
listen = "{admin}"

{admin_tokens}
[store]
url = {store}

[audit]
durability = "fsync"
jsonl = {jsonl}

[targets.{DATABASE}]
host = "127.0.0.1"
port = {upstream_port}
database = "{DATABASE}"
tls = "disable"

[targets.{DATABASE}.credentials.read]
user = "{READ_ROLE}"
password = {read_pw}

[targets.{DATABASE}.credentials.write]
user = "{WRITE_ROLE}"
password = {write_pw}

[targets.{DATABASE}.credentials.admin]
user = "{ADMIN_ROLE}"
password = {admin_pw}

[roles.read]
allow = ["read"]
max_ttl = "8h"

[roles.write]
allow = ["read", "write"]
max_ttl = "2h"
require_where = true

[roles.admin]
allow = ["read", "write", "ddl", "admin"]
max_ttl = "1h"
"#,
        proxy = p.proxy,
        admin = p.admin,
        cert = toml_path(p.cert),
        key = toml_path(p.key),
        admin_tokens = admin_tokens_text(&p.secrets.tokens),
        store = toml_string(&format!("sqlite://{}", p.dir.join("timebox.db").display())),
        jsonl = toml_path(&p.dir.join("audit.jsonl")),
        upstream_port = p.upstream_port,
        read_pw = toml_string(&p.secrets.read_password),
        write_pw = toml_string(&p.secrets.write_password),
        admin_pw = toml_string(&p.secrets.admin_password),
    )
}

/// One `[[admin.tokens]]` entry per demo identity: the token's SHA-256 (API) and SCRAM verifier
/// (`timebox_audit`), never the token.
fn admin_tokens_text(tokens: &[String; 4]) -> String {
    let mut out = String::new();
    for (identity, token) in IDENTITIES.iter().zip(tokens) {
        let roles: Vec<String> = identity.roles.iter().map(|r| toml_string(r)).collect();
        let _ = writeln!(
            out,
            "[[admin.tokens]]\nname = {}\nsha256 = \"{}\"\nscram = \"{}\"\nroles = [{}]\n",
            toml_string(identity.name),
            crate::grants::token::sha256_hex(token),
            crate::cli::admin_token::admin_token_scram(token),
            roles.join(", "),
        );
    }
    out
}

/// `export NAME=token   # what it is for` per identity, then `TIMEBOX_ADMIN_TOKEN=$ADMIN`: what the
/// README's commands expect in the shell.
pub(super) fn export_lines(tokens: &[String; 4]) -> Vec<String> {
    let mut lines: Vec<String> = IDENTITIES
        .iter()
        .zip(tokens)
        .map(|(i, token)| format!("export {}={token}   # {} ({})", i.env, i.name, i.words))
        .collect();
    lines.push(format!(
        "export {}=${}",
        crate::cli::client::ADMIN_TOKEN_ENV,
        IDENTITIES[0].env
    ));
    lines
}

/// What the banner shows.
pub(super) struct Banner<'a> {
    pub(super) proxy: SocketAddr,
    pub(super) admin: SocketAddr,
    pub(super) cluster: &'a Cluster,
    pub(super) dir: &'a Path,
    pub(super) keep: bool,
    /// Tokens of [`IDENTITIES`], in order.
    pub(super) tokens: &'a [String; 4],
    pub(super) grants: [&'a DemoGrant; 2],
}

/// The ready-to-paste psql command for a grant.
pub fn psql_command(port: u16, user: &str, token: &str) -> String {
    format!("PGPASSWORD='{token}' psql \"host=127.0.0.1 port={port} dbname={DATABASE} user={user} sslmode=require\"")
}

/// What the role of a demo grant may do, in words.
fn role_words(role: &str) -> &'static str {
    match role {
        "read" => "SELECT only",
        "write" => "SELECT, INSERT, UPDATE, DELETE",
        "admin" => "reads, writes and DDL",
        _ => "see timebox.toml",
    }
}

pub(super) fn banner(b: &Banner<'_>) -> String {
    let mut out = String::new();
    let admin_url = format!("http://{}", b.admin);
    let port = b.proxy.port();
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "=================================================================================="
    );
    let _ = writeln!(out, " timebox demo is running");
    let _ = writeln!(
        out,
        "=================================================================================="
    );
    let _ = writeln!(out);
    let _ = writeln!(out, "  proxy (PostgreSQL, TLS required)  127.0.0.1:{port}");
    let _ = writeln!(out, "  admin API (HTTP)                  {admin_url}");
    let _ = writeln!(
        out,
        "  upstream PostgreSQL {:<2} (throwaway) 127.0.0.1:{}, database `{DATABASE}`",
        b.cluster.install().version,
        b.cluster.port()
    );
    let _ = writeln!(
        out,
        "  upstream data directory           {}",
        b.cluster.data_dir().display()
    );
    let _ = writeln!(
        out,
        "  demo directory                    {}{}",
        b.dir.display(),
        if b.keep {
            " (kept on exit: --keep)"
        } else {
            " (deleted on exit)"
        }
    );
    let _ = writeln!(
        out,
        "    config timebox.toml, audit log audit.jsonl, store timebox.db, dev certificate certs/"
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "Two grants were issued. Their tokens are the psql passwords; they are shown only now."
    );
    for g in b.grants {
        let grant = &g.grant;
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "  {} - role {} ({}), grant {}, expires {}",
            grant.user,
            grant.role,
            role_words(&grant.role),
            grant.id,
            grant.expires_at.format("%H:%M:%S UTC"),
        );
        let _ = writeln!(out, "    {}", psql_command(port, &grant.user, &g.token));
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "Things to try:");
    let _ = writeln!(out, "  as alice:  SELECT * FROM customers LIMIT 5;");
    let _ = writeln!(
        out,
        "             SELECT c.name, p.name, o.quantity FROM orders o JOIN customers c ON c.id = o.customer_id JOIN products p ON p.id = o.product_id;"
    );
    let _ = writeln!(
        out,
        "             DELETE FROM orders;                -- refused: role read allows reads only"
    );
    let _ = writeln!(
        out,
        "  as bob:    UPDATE products SET stock = stock - 1 WHERE id = 1;"
    );
    let _ = writeln!(
        out,
        "             DROP TABLE orders;                 -- refused: role write has no DDL"
    );
    let _ = writeln!(
        out,
        "             DELETE FROM orders;                -- refused: role write has require_where"
    );
    let _ = writeln!(out, "  see what reached PostgreSQL, and as which role:");
    let _ = writeln!(out, "             tail -f {}", b.cluster.log_path().display());
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "Admin-API identities, one per person of the README's walkthrough (tokens shown only now)."
    );
    let _ = writeln!(out, "Paste these lines into another terminal:");
    let _ = writeln!(out, "  export {}={admin_url}", crate::cli::client::ADMIN_URL_ENV);
    for line in export_lines(b.tokens) {
        let _ = writeln!(out, "  {line}");
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "Then, as admin (README: Managing grants; the access workflow uses $ALICE, $BOB, $AUDREY):"
    );
    let _ = writeln!(out, "  timebox grant list");
    let _ = writeln!(
        out,
        "  timebox grant revoke {} --reason done   # alice's open session ends at once",
        b.grants[0].grant.id
    );
    let _ = writeln!(
        out,
        "  (timebox not on your PATH? use `cargo run --release -- grant list` and so on)"
    );
    let _ = writeln!(
        out,
        "  curl -H \"Authorization: Bearer $TIMEBOX_ADMIN_TOKEN\" $TIMEBOX_ADMIN_URL/v1/grants"
    );
    let _ = writeln!(out);
    let _ = writeln!(out, "Press Ctrl-C to stop (cleans everything up).");
    out
}
#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::Config;

    fn secrets() -> Secrets {
        Secrets::for_tests()
    }

    #[test]
    fn config_text_is_a_valid_config() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("certs").join("server.crt");
        let key = dir.path().join("certs").join("server.key");
        crate::proxy::tls::ensure_dev_certificate(&cert, &key, &["localhost", "127.0.0.1"]).unwrap();
        let s = secrets();
        let text = config_text(&ConfigParams {
            dir: dir.path(),
            proxy: "127.0.0.1:6432".parse().unwrap(),
            admin: "127.0.0.1:9187".parse().unwrap(),
            cert: &cert,
            key: &key,
            upstream_port: 54321,
            secrets: &s,
        });
        let config = Config::from_toml_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(config.proxy.listen.port(), 6432);
        assert_eq!(config.proxy.tls, crate::config::ClientTls::Required);
        assert_eq!(config.admin.listen.port(), 9187);
        assert_eq!(config.admin.tokens.len(), IDENTITIES.len());
        for ((identity, token), entry) in IDENTITIES.iter().zip(&s.tokens).zip(&config.admin.tokens) {
            assert_eq!(entry.name, identity.name);
            assert!(
                !text.contains(token.as_str()),
                "only the token's hashes go into the config"
            );
            let verifier = entry.scram.clone().expect("psql can log in to timebox_audit");
            assert_eq!(
                verifier,
                crate::grants::token::ScramVerifier::derive(token, &verifier.salt, verifier.iterations)
            );
        }
        assert!(
            config.roles["write"].require_where,
            "the demo shows the guard against DELETE without WHERE (issue 17)"
        );
        assert_eq!(
            config.store,
            crate::config::StoreConfig::Sqlite {
                path: dir.path().join("timebox.db")
            }
        );
        assert_eq!(config.audit.durability, crate::config::Durability::Fsync);
        assert_eq!(config.audit.jsonl, Some(dir.path().join("audit.jsonl")));
        let shop = &config.targets[DATABASE];
        assert_eq!(shop.port, 54321);
        assert_eq!(
            shop.credentials["read"].password.as_ref().map(|p| p.expose()),
            Some(s.read_password.as_str()),
            "passwords survive TOML escaping"
        );
        assert_eq!(shop.credentials["admin"].user, ADMIN_ROLE);
        assert_eq!(config.roles["read"].max_ttl, Duration::from_secs(8 * 3600));
        assert_eq!(
            config.roles["write"].allow,
            [
                crate::policy::StatementClass::Read,
                crate::policy::StatementClass::Write
            ]
        );
        assert_eq!(config.roles["admin"].max_ttl, Duration::from_secs(3600));
    }

    #[test]
    fn export_lines_set_every_readme_variable() {
        let s = secrets();
        let lines = export_lines(&s.tokens);
        assert_eq!(
            lines[1],
            "export ALICE=tbxadmin_test_alice   # alice (requester, PostgreSQL user alice)"
        );
        assert_eq!(lines.last().unwrap(), "export TIMEBOX_ADMIN_TOKEN=$ADMIN");
        for env in ["ADMIN", "ALICE", "BOB", "AUDREY"] {
            assert!(
                lines.iter().any(|l| l.starts_with(&format!("export {env}="))),
                "{env}: {lines:?}"
            );
        }
    }

    #[test]
    fn psql_command_is_pasteable() {
        assert_eq!(
            psql_command(6432, "alice", "tbx_abc"),
            "PGPASSWORD='tbx_abc' psql \"host=127.0.0.1 port=6432 dbname=shop user=alice sslmode=require\""
        );
    }
}
