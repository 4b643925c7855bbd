//! Configuration: TOML text → [`RawConfig`] (serde, every unknown key collected) → [`Config::validate`]
//! (every problem reported with its key path, all at once) → the typed [`Config`] the program uses.
//!
//! Sits at the very start of the data flow: `main` (or a test) loads a `Config` and hands it to
//! [`crate::app::run`]. Secrets (upstream passwords) are resolved here from the file, an environment
//! variable or a file, and are wrapped in [`Secret`] so they never print.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::policy::StatementClass;
use crate::webhooks::WebhookEvent;

mod fleet;
mod store;
pub use fleet::FleetConfig;
pub use store::{PostgresStoreConfig, StoreConfig};

/// Statement classes a role may be allowed (enforced by the policy layer): the names
/// [`StatementClass::from_name`] accepts.
pub const STATEMENT_CLASSES: &[&str] = &["read", "write", "ddl", "admin"];

/// Principal roles an admin-API token may carry, as written in config and on the command line
/// (the names of [`PrincipalRole::ALL`], in that order).
pub const PRINCIPAL_ROLES: &[&str] = &["admin", "approver", "requester", "auditor"];

/// A role an admin-API token carries (`[[admin.tokens]] roles`). Parsed once, in config
/// validation; the admin API and `timebox_audit` compare these, never the strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PrincipalRole {
    /// Everything: grants, requests, sessions, audit, metrics.
    Admin,
    /// Approves or denies requests; revokes and extends grants; kills sessions.
    Approver,
    /// Files access requests and sees its own grants.
    Requester,
    /// Reads the audit trail (HTTP and `timebox_audit`), grants and metrics.
    Auditor,
}

impl PrincipalRole {
    pub const ALL: [PrincipalRole; 4] = [
        PrincipalRole::Admin,
        PrincipalRole::Approver,
        PrincipalRole::Requester,
        PrincipalRole::Auditor,
    ];

    /// The name used in config, on the command line and in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            PrincipalRole::Admin => "admin",
            PrincipalRole::Approver => "approver",
            PrincipalRole::Requester => "requester",
            PrincipalRole::Auditor => "auditor",
        }
    }

    /// The role named `name` exactly (config names are lower case), if there is one.
    pub fn from_name(name: &str) -> Option<PrincipalRole> {
        PrincipalRole::ALL.into_iter().find(|r| r.as_str() == name)
    }
}

impl std::fmt::Display for PrincipalRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Events a `[[webhooks]]` entry may subscribe to (`"*"` means all of them).
pub const WEBHOOK_EVENTS: &[&str] = &[
    "request_created",
    "request_approved",
    "request_denied",
    "request_expired",
    "break_glass",
    "grant_issued",
    "grant_extended",
    "grant_revoked",
    "grant_expired",
    "session_killed",
];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config is not valid TOML: {0}")]
    Syntax(#[from] toml::de::Error),
    #[error("invalid configuration:\n{}", .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<ConfigProblem>),
}

/// One problem found while validating, with the key path it concerns (`targets.shop.port`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// A secret string (upstream password, token): `Debug`/`Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

// ---------------------------------------------------------------------------------------------
// Raw layer: what serde reads. Loose types (strings for enums and durations) so that validation can
// report every bad value with its path instead of stopping at the first.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
pub struct RawConfig {
    proxy: RawProxy,
    admin: RawAdmin,
    store: Option<store::RawStore>,
    fleet: Option<fleet::RawFleet>,
    audit: Option<RawAudit>,
    #[serde(default)]
    targets: BTreeMap<String, RawTarget>,
    #[serde(default)]
    roles: BTreeMap<String, RawRole>,
    #[serde(default)]
    webhooks: Vec<RawWebhook>,
    requests: Option<RawRequests>,
    /// Read in every build so that its presence can be refused with a clear message; honoured only
    /// with the `bench-knobs` cargo feature.
    bench: Option<RawBench>,
}

#[derive(Debug, Deserialize)]
struct RawBench {
    skip_policy: Option<bool>,
    skip_audit: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct RawWebhook {
    url: String,
    #[serde(default)]
    events: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct RawRequests {
    review_window: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RawProxy {
    listen: String,
    tls: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    max_connections: Option<i64>,
    startup_timeout: Option<String>,
    upstream_connect_timeout: Option<String>,
    expiry_warnings: Option<Vec<String>>,
    auth_failures_per_minute: Option<i64>,
    auth_failures_per_address_per_minute: Option<i64>,
    auth_failures_global_per_minute: Option<i64>,
    max_unauthenticated: Option<i64>,
    max_unauthenticated_per_address: Option<i64>,
    shutdown_grace: Option<String>,
    max_message_bytes: Option<i64>,
    max_statement_bytes: Option<i64>,
}

#[derive(Debug, Deserialize)]
struct RawAdmin {
    listen: String,
    #[serde(default)]
    tokens: Vec<RawAdminToken>,
    metrics_public: Option<bool>,
    max_connections: Option<i64>,
    max_connections_per_address: Option<i64>,
    header_timeout: Option<String>,
    idle_timeout: Option<String>,
    request_timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RawAdminToken {
    name: String,
    sha256: String,
    scram: Option<String>,
    #[serde(default)]
    roles: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct RawAudit {
    /// Where the audit journal and index live with a PostgreSQL store (see [`store`]).
    dir: Option<PathBuf>,
    durability: Option<String>,
    jsonl: Option<PathBuf>,
    params: Option<String>,
    jsonl_max_bytes: Option<i64>,
    jsonl_keep: Option<i64>,
}

#[derive(Debug, Deserialize)]
struct RawTarget {
    host: String,
    port: Option<i64>,
    database: String,
    tls: Option<String>,
    ca: Option<PathBuf>,
    #[serde(default)]
    credentials: BTreeMap<String, RawCredential>,
}

#[derive(Debug, Deserialize)]
struct RawCredential {
    user: String,
    password: Option<String>,
    password_env: Option<String>,
    password_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
struct RawRole {
    #[serde(default)]
    allow: Vec<String>,
    max_ttl: Option<String>,
    #[serde(default)]
    tables: RawTableRules,
    require_where: Option<bool>,
    statement_timeout: Option<String>,
    allow_unparsed: Option<bool>,
    #[serde(default)]
    allow_functions: Vec<String>,
    approvals: Option<i64>,
    break_glass: Option<bool>,
    break_glass_max_ttl: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct RawTableRules {
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    deny: Vec<String>,
}

// ---------------------------------------------------------------------------------------------
// Typed layer: what the program uses.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct Config {
    pub proxy: ProxyConfig,
    pub admin: AdminConfig,
    pub store: StoreConfig,
    /// `[fleet]`: `Some` exactly with a PostgreSQL store (see [`fleet`]).
    pub fleet: Option<FleetConfig>,
    pub audit: AuditConfig,
    pub targets: BTreeMap<String, Target>,
    pub roles: BTreeMap<String, Role>,
    /// The access-request settings of each role (`approvals`, `break_glass`, …), by role name.
    pub workflow: BTreeMap<String, RoleWorkflow>,
    /// `[[webhooks]]`: where notifications go.
    pub webhooks: Vec<Webhook>,
    /// `[requests]`: access-request settings.
    pub requests: RequestsConfig,
    /// `[bench]`: benchmark-only switches; always off unless built with `--features bench-knobs`.
    pub bench: BenchKnobs,
}

/// `[bench]`: switches that turn off enforcement or auditing so that the end-to-end benchmark can
/// show what each feature costs. They exist only in a timebox built with the `bench-knobs` cargo
/// feature (off by default); any other build refuses a config with a `[bench]` table, and there the
/// accessors below are constant `false`, so the checks compile away.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BenchKnobs {
    skip_policy: bool,
    skip_audit: bool,
}

impl BenchKnobs {
    /// `skip_policy = true`: every statement is allowed without being classified.
    pub fn skip_policy(&self) -> bool {
        cfg!(feature = "bench-knobs") && self.skip_policy
    }

    /// `skip_audit = true`: no statement or statement-outcome records (sessions are still recorded).
    pub fn skip_audit(&self) -> bool {
        cfg!(feature = "bench-knobs") && self.skip_audit
    }

    pub fn any(&self) -> bool {
        self.skip_policy() || self.skip_audit()
    }
}

/// How access to a role is requested and approved (keys of `[roles.NAME]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoleWorkflow {
    /// Distinct approvers a request for this role needs (`approvals`, default 1).
    pub approvals: u32,
    /// A requester may self-approve with a reason (`break_glass`, default false).
    pub break_glass: bool,
    /// The longest break-glass grant (`break_glass_max_ttl`, default the smaller of 1h and `max_ttl`).
    pub break_glass_max_ttl: Duration,
}

impl Default for RoleWorkflow {
    fn default() -> Self {
        RoleWorkflow {
            approvals: 1,
            break_glass: false,
            break_glass_max_ttl: Duration::from_secs(3600),
        }
    }
}

/// One `[[webhooks]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    pub url: String,
    /// The events this entry subscribes to (`"*"` in the file is every [`WebhookEvent`]).
    pub events: Vec<WebhookEvent>,
}

impl Webhook {
    pub fn wants(&self, event: WebhookEvent) -> bool {
        self.events.contains(&event)
    }
}

/// `[requests]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestsConfig {
    /// A pending request not reviewed within this becomes `expired` (`review_window`, default 1h).
    pub review_window: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientTls {
    /// Plaintext startups are refused with FATAL 28000.
    Required,
    /// TLS offered; plaintext accepted.
    Optional,
    /// SSLRequest answered 'N'.
    Disabled,
}

/// `proxy.max_statement_bytes` when the config does not say.
pub const DEFAULT_MAX_STATEMENT_BYTES: usize = 1024 * 1024;

#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub listen: SocketAddr,
    pub tls: ClientTls,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Client connections served at once; past it FATAL 53300.
    pub max_connections: usize,
    /// A client must finish TLS, startup and authentication within this.
    pub startup_timeout: Duration,
    /// Bound on connecting + authenticating to the upstream.
    pub upstream_connect_timeout: Duration,
    /// NoticeResponse warnings sent this long before a grant expires (descending).
    pub expiry_warnings: Vec<Duration>,
    /// Failed authentications allowed per (client IP address, user) per minute; an attempt counts
    /// from the moment it starts until it succeeds.
    pub auth_failures_per_minute: u32,
    /// Failed authentications allowed per client IP address per minute, over all user names.
    pub auth_failures_per_address_per_minute: u32,
    /// Failed authentications allowed per minute over all addresses and users.
    pub auth_failures_global_per_minute: u32,
    /// Connections that have not finished authenticating, at most (a pool apart from
    /// `max_connections`, so silent clients cannot take the slots of logged-in sessions).
    pub max_unauthenticated: usize,
    /// Of those, at most this many from one client address.
    pub max_unauthenticated_per_address: usize,
    /// On shutdown, idle sessions end at once; busy ones get this long before they are cut.
    pub shutdown_grace: Duration,
    /// Largest frontend message accepted (CopyData is streamed and exempt).
    pub max_message_bytes: usize,
    /// Longest statement text (Query or Parse) checked and forwarded; a longer one is refused with
    /// ERROR 54000 and the session goes on.
    pub max_statement_bytes: usize,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    pub tokens: Vec<AdminToken>,
    pub metrics_public: bool,
    /// HTTP connections served at once; past it a connection gets 503 `too_many_connections`.
    pub max_connections: usize,
    /// A request's header must arrive whole within this (also bounds an idle keep-alive wait).
    pub header_timeout: Duration,
    /// A connection that moves no byte either way for this long is closed.
    pub idle_timeout: Duration,
    /// HTTP connections from one IP address at once (at most `max_connections`), so one address
    /// cannot take every slot; past it 503 `too_many_connections`.
    pub max_connections_per_address: usize,
    /// A request's body must arrive and its answer be ready within this of its header; else 408
    /// `request_timeout` and the connection is closed.
    pub request_timeout: Duration,
}

/// `admin.max_connections_per_address` when the config does not say.
pub const DEFAULT_ADMIN_MAX_CONNECTIONS_PER_ADDRESS: u64 = 16;

#[derive(Debug, Clone)]
pub struct AdminToken {
    pub name: String,
    /// SHA-256 of the bearer token (the token itself is never in the config).
    pub sha256: [u8; 32],
    /// SCRAM-SHA-256 verifier of the same token, for logging in to `timebox_audit`; without it
    /// the token cannot log in there.
    pub scram: Option<crate::grants::token::ScramVerifier>,
    pub roles: Vec<PrincipalRole>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    Fsync,
    Write,
    Async,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamLogging {
    Full,
    Redacted,
    Off,
}

#[derive(Debug, Clone)]
pub struct AuditConfig {
    pub durability: Durability,
    pub jsonl: Option<PathBuf>,
    pub params: ParamLogging,
    /// The JSONL file is rotated (`x.jsonl` → `x.jsonl.1` …) before it would pass this size.
    pub jsonl_max_bytes: u64,
    /// Rotated JSONL files kept (`x.jsonl.1` … `x.jsonl.N`).
    pub jsonl_keep: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamTls {
    Disable,
    Require,
    VerifyFull,
}

#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub database: String,
    pub tls: UpstreamTls,
    pub ca: Option<PathBuf>,
    /// Upstream login per grant role.
    pub credentials: BTreeMap<String, Credential>,
}

#[derive(Debug, Clone)]
pub struct Credential {
    pub user: String,
    /// `None` for upstream `trust` authentication.
    pub password: Option<Secret>,
}

#[derive(Debug, Clone)]
pub struct Role {
    pub name: String,
    /// Statement classes the role allows (`allow = ["read", "write"]`), parsed once here.
    pub allow: Vec<StatementClass>,
    pub max_ttl: Duration,
    /// `tables = { allow = [...], deny = [...] }`: `schema.name` globs; deny wins.
    pub tables: Option<TableRules>,
    /// UPDATE/DELETE without WHERE are denied.
    pub require_where: bool,
    /// Cap applied upstream at session start; `SET statement_timeout` above it is denied.
    pub statement_timeout: Option<Duration>,
    /// Statements the parsers cannot agree on are let through (break-glass roles).
    pub allow_unparsed: bool,
    /// User-defined functions known to be safe (otherwise they count as write).
    pub allow_functions: Vec<String>,
}

impl Role {
    /// A role allowing `classes` for grants up to `max_ttl`, with no other option set (tools,
    /// tests, benchmarks).
    pub fn allowing(name: &str, classes: &[StatementClass], max_ttl: Duration) -> Role {
        Role {
            name: name.into(),
            allow: classes.to_vec(),
            max_ttl,
            tables: None,
            require_where: false,
            statement_timeout: None,
            allow_unparsed: false,
            allow_functions: Vec::new(),
        }
    }
}

/// A role's table rules: `schema.name` glob patterns (`*`, `?`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableRules {
    pub allow: Vec<String>,
    pub deny: Vec<String>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("not a duration ({e}); write e.g. \"30s\", \"15m\", \"8h\""))
}

/// Collects problems while walking the raw config.
#[derive(Default)]
struct Problems(Vec<ConfigProblem>);

impl Problems {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigProblem {
            path: path.into(),
            message: message.into(),
        });
    }

    fn duration(&mut self, path: &str, value: Option<&str>, default: Duration) -> Duration {
        match value {
            None => default,
            Some(v) => match parse_duration(v) {
                Ok(d) if d.is_zero() => {
                    self.push(path, "must be greater than zero");
                    default
                }
                Ok(d) => d,
                Err(e) => {
                    self.push(path, e);
                    default
                }
            },
        }
    }

    fn positive(&mut self, path: &str, value: Option<i64>, default: u64, max: u64) -> u64 {
        match value {
            None => default,
            Some(v) if v >= 1 && (v as u64) <= max => v as u64,
            Some(v) => {
                self.push(path, format!("{v} is out of range (1..={max})"));
                default
            }
        }
    }

    fn socket_addr(&mut self, path: &str, value: &str) -> SocketAddr {
        value.parse().unwrap_or_else(|e| {
            self.push(
                path,
                format!("{value:?} is not an address like \"127.0.0.1:6432\" ({e})"),
            );
            SocketAddr::from(([127, 0, 0, 1], 0))
        })
    }

    fn one_of<T: Copy>(&mut self, path: &str, value: Option<&str>, default: T, choices: &[(&str, T)]) -> T {
        let Some(v) = value else { return default };
        match choices.iter().find(|(name, _)| *name == v) {
            Some((_, t)) => *t,
            None => {
                let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
                self.push(path, format!("{v:?} is not one of {}", names.join(" | ")));
                default
            }
        }
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_toml_str(&text)
    }

    /// Parses and validates config text; every unknown key and bad value is reported at once.
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        let deserializer = toml::Deserializer::new(text);
        let mut unknown = Vec::new();
        let raw: RawConfig = serde_ignored::deserialize(deserializer, |path| unknown.push(path.to_string()))?;
        let mut problems = Problems::default();
        for path in unknown {
            problems.push(path, "unknown key");
        }
        raw.validate(problems)
    }
}

impl RawConfig {
    fn validate(self, mut p: Problems) -> Result<Config, ConfigError> {
        let proxy = validate_proxy(&self.proxy, &mut p);
        let admin = validate_admin(&self.admin, &mut p);
        let audit_dir = self.audit.as_ref().and_then(|a| a.dir.as_ref());
        let store = store::validate_store(self.store.as_ref(), audit_dir, &mut p);
        let fleet = fleet::validate_fleet(
            self.fleet.as_ref(),
            matches!(store, StoreConfig::Postgres(_)),
            &mut p,
        );
        let audit = validate_audit(self.audit.as_ref(), &mut p);

        let (roles, workflow) = validate_roles(&self.roles, &mut p);

        let mut targets = BTreeMap::new();
        for (name, raw) in &self.targets {
            let path = format!("targets.{name}");
            if !valid_name(name) {
                p.push(&path, "target names use letters, digits, '_' and '-' only");
            }
            if name == "timebox_audit" {
                p.push(
                    &path,
                    "\"timebox_audit\" is reserved for the auditors' SQL endpoint",
                );
            }
            if raw.host.trim().is_empty() {
                p.push(format!("{path}.host"), "must not be empty");
            }
            if raw.database.trim().is_empty() {
                p.push(format!("{path}.database"), "must not be empty");
            }
            let port = p.positive(&format!("{path}.port"), raw.port, 5432, u16::MAX as u64) as u16;
            let tls = p.one_of(
                &format!("{path}.tls"),
                raw.tls.as_deref(),
                UpstreamTls::Disable,
                &[
                    ("disable", UpstreamTls::Disable),
                    ("require", UpstreamTls::Require),
                    ("verify-full", UpstreamTls::VerifyFull),
                ],
            );
            if let Some(ca) = &raw.ca {
                if !ca.is_file() {
                    p.push(
                        format!("{path}.ca"),
                        format!("{} is not a readable file", ca.display()),
                    );
                }
            }
            if raw.credentials.is_empty() {
                p.push(
                    format!("{path}.credentials"),
                    "at least one role needs an upstream credential",
                );
            }
            let mut credentials = BTreeMap::new();
            for (role, cred) in &raw.credentials {
                let cpath = format!("{path}.credentials.{role}");
                if !self.roles.contains_key(role) {
                    p.push(&cpath, format!("no role {role:?} is defined under [roles]"));
                }
                if cred.user.trim().is_empty() {
                    p.push(format!("{cpath}.user"), "must not be empty");
                }
                let password = resolve_password(cred, &cpath, &mut p);
                credentials.insert(
                    role.clone(),
                    Credential {
                        user: cred.user.clone(),
                        password,
                    },
                );
            }
            targets.insert(
                name.clone(),
                Target {
                    name: name.clone(),
                    host: raw.host.clone(),
                    port,
                    database: raw.database.clone(),
                    tls,
                    ca: raw.ca.clone(),
                    credentials,
                },
            );
        }

        let webhooks = validate_webhooks(&self.webhooks, &mut p);
        let requests = RequestsConfig {
            review_window: p.duration(
                "requests.review_window",
                self.requests.as_ref().and_then(|r| r.review_window.as_deref()),
                Duration::from_secs(3600),
            ),
        };

        let bench = validate_bench(self.bench.as_ref(), &mut p);

        if p.0.is_empty() {
            Ok(Config {
                proxy,
                admin,
                store,
                fleet,
                audit,
                targets,
                roles,
                workflow,
                webhooks,
                requests,
                bench,
            })
        } else {
            Err(ConfigError::Invalid(p.0))
        }
    }
}

impl Config {
    /// The request workflow of role `name` (the defaults for an unknown role).
    pub fn workflow(&self, name: &str) -> RoleWorkflow {
        self.workflow.get(name).copied().unwrap_or_default()
    }
}

/// The `[roles]` table: each role and its access-request workflow.
fn validate_roles(
    raw_roles: &BTreeMap<String, RawRole>,
    p: &mut Problems,
) -> (BTreeMap<String, Role>, BTreeMap<String, RoleWorkflow>) {
    let mut roles = BTreeMap::new();
    let mut workflow = BTreeMap::new();
    for (name, raw) in raw_roles {
        let path = format!("roles.{name}");
        if !valid_name(name) {
            p.push(&path, "role names use letters, digits, '_' and '-' only");
        }
        let mut allow = Vec::new();
        for (i, class) in raw.allow.iter().enumerate() {
            match StatementClass::from_name(class) {
                Some(c) => allow.push(c),
                None => p.push(
                    format!("{path}.allow[{i}]"),
                    format!(
                        "{class:?} is not a statement class ({})",
                        STATEMENT_CLASSES.join(" | ")
                    ),
                ),
            }
        }
        let max_ttl = match &raw.max_ttl {
            None => {
                p.push(
                    format!("{path}.max_ttl"),
                    "required (the longest grant this role may be issued for)",
                );
                Duration::from_secs(3600)
            }
            Some(v) => p.duration(&format!("{path}.max_ttl"), Some(v), Duration::from_secs(3600)),
        };
        let t = &raw.tables;
        let tables = (!t.allow.is_empty() || !t.deny.is_empty()).then(|| {
            for (key, list) in [("allow", &t.allow), ("deny", &t.deny)] {
                for (i, pattern) in list.iter().enumerate() {
                    if let Err(e) = check_table_pattern(pattern) {
                        p.push(format!("{path}.tables.{key}[{i}]"), e);
                    }
                }
            }
            TableRules {
                allow: t.allow.clone(),
                deny: t.deny.clone(),
            }
        });
        let statement_timeout = raw.statement_timeout.as_deref().map(|v| {
            p.duration(
                &format!("{path}.statement_timeout"),
                Some(v),
                Duration::from_secs(30),
            )
        });
        for (i, f) in raw.allow_functions.iter().enumerate() {
            let ok = !f.is_empty()
                && f.split('.').count() <= 2
                && f.split('.').all(|part| {
                    !part.is_empty()
                        && part
                            .chars()
                            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$')
                });
            if !ok {
                p.push(
                    format!("{path}.allow_functions[{i}]"),
                    format!(
                        "{f:?} is not a function name like \"my_report\" or \"app.my_report\" (lower case)"
                    ),
                );
            }
        }
        let approvals = p.positive(&format!("{path}.approvals"), raw.approvals, 1, 10) as u32;
        let break_glass = raw.break_glass.unwrap_or(false);
        let break_glass_max_ttl = match &raw.break_glass_max_ttl {
            None => max_ttl.min(Duration::from_secs(3600)),
            Some(v) => {
                let key = format!("{path}.break_glass_max_ttl");
                if !break_glass {
                    p.push(&key, "only meaningful with break_glass = true");
                }
                let d = p.duration(&key, Some(v), max_ttl);
                if d > max_ttl {
                    p.push(&key, "must not be longer than max_ttl");
                }
                d
            }
        };
        workflow.insert(
            name.clone(),
            RoleWorkflow {
                approvals,
                break_glass,
                break_glass_max_ttl,
            },
        );
        roles.insert(
            name.clone(),
            Role {
                name: name.clone(),
                allow,
                max_ttl,
                tables,
                require_where: raw.require_where.unwrap_or(false),
                statement_timeout,
                allow_unparsed: raw.allow_unparsed.unwrap_or(false),
                allow_functions: raw.allow_functions.clone(),
            },
        );
    }
    (roles, workflow)
}

/// Validates a `[roles]` table on its own, given as JSON (policy replay's candidate roles):
/// every problem is reported with its key path (`roles.read.allow[1]`), unknown keys included.
pub fn roles_from_json(value: serde_json::Value) -> Result<BTreeMap<String, Role>, ConfigError> {
    let mut unknown = Vec::new();
    let raw: BTreeMap<String, RawRole> =
        serde_ignored::deserialize(value, |path| unknown.push(path.to_string())).map_err(|e| {
            ConfigError::Invalid(vec![ConfigProblem {
                path: "roles".into(),
                message: e.to_string(),
            }])
        })?;
    let mut p = Problems::default();
    for path in unknown {
        p.push(format!("roles.{path}"), "unknown key");
    }
    let (roles, _) = validate_roles(&raw, &mut p);
    if p.0.is_empty() {
        Ok(roles)
    } else {
        Err(ConfigError::Invalid(p.0))
    }
}

fn validate_bench(raw: Option<&RawBench>, p: &mut Problems) -> BenchKnobs {
    let Some(raw) = raw else {
        return BenchKnobs::default();
    };
    if !cfg!(feature = "bench-knobs") {
        p.push(
            "bench",
            "[bench] needs a timebox built with --features bench-knobs (benchmarks only)",
        );
        return BenchKnobs::default();
    }
    BenchKnobs {
        skip_policy: raw.skip_policy.unwrap_or(false),
        skip_audit: raw.skip_audit.unwrap_or(false),
    }
}

fn validate_webhooks(raw: &[RawWebhook], p: &mut Problems) -> Vec<Webhook> {
    let mut out = Vec::new();
    for (i, w) in raw.iter().enumerate() {
        let path = format!("webhooks[{i}]");
        match reqwest::Url::parse(&w.url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
            _ => p.push(
                format!("{path}.url"),
                format!("{:?} is not an http:// or https:// URL", w.url),
            ),
        }
        let names = || {
            WebhookEvent::ALL
                .iter()
                .map(|e| e.as_str())
                .collect::<Vec<_>>()
                .join(" | ")
        };
        if w.events.is_empty() {
            p.push(
                format!("{path}.events"),
                format!("give at least one of \"*\" | {}", names()),
            );
        }
        let mut events = Vec::new();
        for (j, e) in w.events.iter().enumerate() {
            match WebhookEvent::parse(e) {
                _ if e == "*" => events.extend(WebhookEvent::ALL),
                Some(event) => events.push(event),
                None => p.push(
                    format!("{path}.events[{j}]"),
                    format!("{e:?} is not one of \"*\" | {}", names()),
                ),
            }
        }
        events.sort_unstable();
        events.dedup();
        out.push(Webhook {
            url: w.url.clone(),
            events,
        });
    }
    out
}

fn validate_proxy(raw: &RawProxy, p: &mut Problems) -> ProxyConfig {
    let listen = p.socket_addr("proxy.listen", &raw.listen);
    let tls = p.one_of(
        "proxy.tls",
        raw.tls.as_deref(),
        ClientTls::Required,
        &[
            ("required", ClientTls::Required),
            ("optional", ClientTls::Optional),
            ("disabled", ClientTls::Disabled),
        ],
    );
    if tls != ClientTls::Disabled {
        for (key, value) in [("proxy.tls_cert", &raw.tls_cert), ("proxy.tls_key", &raw.tls_key)] {
            match value {
                None => p.push(key, "required unless proxy.tls = \"disabled\""),
                Some(path) if !path.is_file() => {
                    p.push(key, format!("{} is not a readable file", path.display()))
                }
                Some(_) => {}
            }
        }
    }
    let mut expiry_warnings = Vec::new();
    match &raw.expiry_warnings {
        None => expiry_warnings = vec![Duration::from_secs(300), Duration::from_secs(60)],
        Some(list) => {
            for (i, w) in list.iter().enumerate() {
                match parse_duration(w) {
                    Ok(d) => expiry_warnings.push(d),
                    Err(e) => p.push(format!("proxy.expiry_warnings[{i}]"), e),
                }
            }
        }
    }
    expiry_warnings.sort_unstable_by(|a, b| b.cmp(a));
    expiry_warnings.dedup();
    ProxyConfig {
        listen,
        tls,
        tls_cert: raw.tls_cert.clone(),
        tls_key: raw.tls_key.clone(),
        max_connections: p.positive("proxy.max_connections", raw.max_connections, 1000, 1_000_000) as usize,
        startup_timeout: p.duration(
            "proxy.startup_timeout",
            raw.startup_timeout.as_deref(),
            Duration::from_secs(10),
        ),
        upstream_connect_timeout: p.duration(
            "proxy.upstream_connect_timeout",
            raw.upstream_connect_timeout.as_deref(),
            Duration::from_secs(5),
        ),
        expiry_warnings,
        auth_failures_per_minute: p.positive(
            "proxy.auth_failures_per_minute",
            raw.auth_failures_per_minute,
            10,
            1_000_000,
        ) as u32,
        auth_failures_per_address_per_minute: p.positive(
            "proxy.auth_failures_per_address_per_minute",
            raw.auth_failures_per_address_per_minute,
            100,
            100_000_000,
        ) as u32,
        auth_failures_global_per_minute: p.positive(
            "proxy.auth_failures_global_per_minute",
            raw.auth_failures_global_per_minute,
            1000,
            100_000_000,
        ) as u32,
        max_unauthenticated: p.positive(
            "proxy.max_unauthenticated",
            raw.max_unauthenticated,
            256,
            1_000_000,
        ) as usize,
        max_unauthenticated_per_address: p.positive(
            "proxy.max_unauthenticated_per_address",
            raw.max_unauthenticated_per_address,
            32,
            1_000_000,
        ) as usize,
        shutdown_grace: p.duration(
            "proxy.shutdown_grace",
            raw.shutdown_grace.as_deref(),
            Duration::from_secs(10),
        ),
        max_message_bytes: p.positive(
            "proxy.max_message_bytes",
            raw.max_message_bytes,
            64 * 1024 * 1024,
            1024 * 1024 * 1024,
        ) as usize,
        max_statement_bytes: p.positive(
            "proxy.max_statement_bytes",
            raw.max_statement_bytes,
            DEFAULT_MAX_STATEMENT_BYTES as u64,
            1024 * 1024 * 1024,
        ) as usize,
    }
}

fn validate_admin(raw: &RawAdmin, p: &mut Problems) -> AdminConfig {
    let listen = p.socket_addr("admin.listen", &raw.listen);
    let mut tokens = Vec::new();
    let mut names = std::collections::HashSet::new();
    for (i, t) in raw.tokens.iter().enumerate() {
        let path = format!("admin.tokens[{i}]");
        if t.name.trim().is_empty() {
            p.push(format!("{path}.name"), "must not be empty");
        } else if !names.insert(t.name.clone()) {
            p.push(
                format!("{path}.name"),
                format!("{:?} is used by another token", t.name),
            );
        }
        let mut sha256 = [0u8; 32];
        if hex::decode_to_slice(t.sha256.trim(), &mut sha256).is_err() {
            p.push(
                format!("{path}.sha256"),
                "must be the 64-hex-digit SHA-256 of the token (e.g. `printf %s \"$TOKEN\" | sha256sum`)",
            );
        }
        let scram = t.scram.as_deref().and_then(|text| {
            let verifier = crate::grants::token::ScramVerifier::from_text(text.trim())
                .filter(|v| v.iterations >= 1 && !v.salt.is_empty());
            if verifier.is_none() {
                p.push(
                    format!("{path}.scram"),
                    "must be a SCRAM-SHA-256 verifier of the token, `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` \
                     (printed by `timebox admin-token new` and `timebox admin-token scram`)",
                );
            }
            verifier
        });
        if t.roles.is_empty() {
            p.push(
                format!("{path}.roles"),
                format!("give at least one of {}", PRINCIPAL_ROLES.join(" | ")),
            );
        }
        let mut roles = Vec::new();
        for (j, r) in t.roles.iter().enumerate() {
            match PrincipalRole::from_name(r) {
                Some(role) => roles.push(role),
                None => p.push(
                    format!("{path}.roles[{j}]"),
                    format!("{r:?} is not one of {}", PRINCIPAL_ROLES.join(" | ")),
                ),
            }
        }
        tokens.push(AdminToken {
            name: t.name.clone(),
            sha256,
            scram,
            roles,
        });
    }
    AdminConfig {
        listen,
        tokens,
        metrics_public: raw.metrics_public.unwrap_or(false),
        max_connections: p.positive("admin.max_connections", raw.max_connections, 128, 100_000) as usize,
        header_timeout: p.duration(
            "admin.header_timeout",
            raw.header_timeout.as_deref(),
            Duration::from_secs(10),
        ),
        idle_timeout: p.duration(
            "admin.idle_timeout",
            raw.idle_timeout.as_deref(),
            Duration::from_secs(60),
        ),
        max_connections_per_address: p.positive(
            "admin.max_connections_per_address",
            raw.max_connections_per_address,
            DEFAULT_ADMIN_MAX_CONNECTIONS_PER_ADDRESS,
            100_000,
        ) as usize,
        request_timeout: p.duration(
            "admin.request_timeout",
            raw.request_timeout.as_deref(),
            Duration::from_secs(30),
        ),
    }
}

fn validate_audit(raw: Option<&RawAudit>, p: &mut Problems) -> AuditConfig {
    let durability = p.one_of(
        "audit.durability",
        raw.and_then(|a| a.durability.as_deref()),
        Durability::Fsync,
        &[
            ("fsync", Durability::Fsync),
            ("write", Durability::Write),
            ("async", Durability::Async),
        ],
    );
    let params = p.one_of(
        "audit.params",
        raw.and_then(|a| a.params.as_deref()),
        ParamLogging::Redacted,
        &[
            ("full", ParamLogging::Full),
            ("redacted", ParamLogging::Redacted),
            ("off", ParamLogging::Off),
        ],
    );
    let jsonl_max_bytes = p.positive(
        "audit.jsonl_max_bytes",
        raw.and_then(|a| a.jsonl_max_bytes),
        100 * 1024 * 1024,
        i64::MAX as u64,
    );
    let jsonl_keep = p.positive("audit.jsonl_keep", raw.and_then(|a| a.jsonl_keep), 10, 10_000) as usize;
    AuditConfig {
        durability,
        jsonl: raw.and_then(|a| a.jsonl.clone()),
        params,
        jsonl_max_bytes,
        jsonl_keep,
    }
}

fn resolve_password(cred: &RawCredential, path: &str, p: &mut Problems) -> Option<Secret> {
    let given = [
        cred.password.is_some(),
        cred.password_env.is_some(),
        cred.password_file.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if given > 1 {
        p.push(path, "give only one of password, password_env, password_file");
        return None;
    }
    if let Some(pw) = &cred.password {
        return Some(Secret::new(pw.clone()));
    }
    if let Some(var) = &cred.password_env {
        return match std::env::var(var) {
            Ok(v) => Some(Secret::new(v)),
            Err(_) => {
                p.push(
                    format!("{path}.password_env"),
                    format!("environment variable {var} is not set"),
                );
                None
            }
        };
    }
    if let Some(file) = &cred.password_file {
        return match std::fs::read_to_string(file) {
            Ok(v) => Some(Secret::new(v.trim_end_matches(['\n', '\r']).to_owned())),
            Err(e) => {
                p.push(
                    format!("{path}.password_file"),
                    format!("cannot read {}: {e}", file.display()),
                );
                None
            }
        };
    }
    None
}

/// A table rule is `schema.name`, each part made of lower-case identifier characters and the globs
/// `*` and `?` (names are matched as PostgreSQL folds them).
fn check_table_pattern(pattern: &str) -> Result<(), String> {
    let Some((schema, name)) = pattern.split_once('.') else {
        return Err(format!(
            "{pattern:?} is not schema-qualified; write e.g. \"public.orders\" or \"public.*\""
        ));
    };
    let part_ok = |part: &str| {
        !part.is_empty()
            && part
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '$' | '*' | '?'))
    };
    if !part_ok(schema) || !part_ok(name) {
        return Err(format!(
            "{pattern:?} must be schema.name with lower-case letters, digits, '_', '$' and the globs '*' and '?'"
        ));
    }
    Ok(())
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [proxy]
        listen = "127.0.0.1:6432"
        tls = "disabled"
        [admin]
        listen = "127.0.0.1:9187"
        [[admin.tokens]]
        name = "ops"
        sha256 = "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"
        roles = ["admin"]
        [store]
        url = "sqlite::memory:"
        [targets.shop]
        host = "127.0.0.1"
        database = "shop"
        [targets.shop.credentials.read]
        user = "timebox_read"
        password = "pw"
        [roles.read]
        allow = ["read"]
        max_ttl = "8h"
    "#;

    #[test]
    fn minimal_config_is_valid_with_defaults() {
        let c = Config::from_toml_str(MINIMAL).unwrap();
        assert_eq!(c.proxy.tls, ClientTls::Disabled);
        assert_eq!(c.targets["shop"].port, 5432);
        assert_eq!(c.roles["read"].max_ttl, Duration::from_secs(8 * 3600));
        assert_eq!(c.audit.durability, Durability::Fsync);
        assert_eq!(
            c.proxy.expiry_warnings,
            vec![Duration::from_secs(300), Duration::from_secs(60)]
        );
        assert_eq!(
            c.targets["shop"].credentials["read"]
                .password
                .as_ref()
                .unwrap()
                .expose(),
            "pw"
        );
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let text = MINIMAL
            .replace("listen = \"127.0.0.1:6432\"", "listen = \"nowhere\"\nlisen = 1")
            .replace(
                "max_ttl = \"8h\"",
                "max_ttl = \"forever\"\nallow_everything = true",
            )
            .replace("allow = [\"read\"]", "allow = [\"read\", \"sudo\"]")
            .replace(
                "[store]\n        url = \"sqlite::memory:\"",
                "[store]\n        url = \"mysql://x\"",
            );
        let err = Config::from_toml_str(&text).unwrap_err();
        let ConfigError::Invalid(problems) = err else {
            panic!("expected Invalid, got {err}")
        };
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        for expected in [
            "proxy.lisen",
            "roles.read.allow_everything",
            "proxy.listen",
            "roles.read.max_ttl",
            "roles.read.allow[1]",
            "store.url",
        ] {
            assert!(paths.contains(&expected), "missing {expected} in {paths:?}");
        }
    }

    #[test]
    fn credential_for_unknown_role_and_missing_env_are_reported() {
        let text = MINIMAL.replace(
            "[roles.read]",
            "[targets.shop.credentials.write]\nuser = \"w\"\npassword_env = \"TIMEBOX_TEST_SURELY_UNSET_VAR\"\n[roles.read]",
        );
        let ConfigError::Invalid(problems) = Config::from_toml_str(&text).unwrap_err() else {
            panic!()
        };
        let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        assert!(
            text.iter()
                .any(|t| t.starts_with("targets.shop.credentials.write: no role \"write\"")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|t| t.starts_with("targets.shop.credentials.write.password_env: environment variable")),
            "{text:?}"
        );
    }

    #[test]
    fn tls_required_needs_cert_and_key() {
        let text = MINIMAL.replace("tls = \"disabled\"", "tls = \"required\"");
        let ConfigError::Invalid(problems) = Config::from_toml_str(&text).unwrap_err() else {
            panic!()
        };
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert!(
            paths.contains(&"proxy.tls_cert") && paths.contains(&"proxy.tls_key"),
            "{paths:?}"
        );
    }

    #[test]
    fn bad_admin_token_hash_is_reported() {
        let text = MINIMAL.replace(
            "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae",
            "nothex",
        );
        let ConfigError::Invalid(problems) = Config::from_toml_str(&text).unwrap_err() else {
            panic!()
        };
        assert_eq!(problems[0].path, "admin.tokens[0].sha256");
    }

    #[test]
    fn the_example_config_uses_only_known_keys_and_valid_values() {
        // Everything in config/timebox.example.toml must parse; the only problems allowed are the
        // ones that depend on the machine (files and environment variables that do not exist here).
        let text = include_str!("../config/timebox.example.toml");
        match Config::from_toml_str(text) {
            Ok(_) => {}
            Err(ConfigError::Invalid(problems)) => {
                for p in problems {
                    let machine_dependent = p.message.contains("is not a readable file")
                        || p.message.contains("environment variable")
                        || p.message.contains("cannot read");
                    assert!(machine_dependent, "example config problem: {p}");
                }
            }
            Err(e) => panic!("example config does not parse: {e}"),
        }
    }

    #[test]
    fn workflow_webhooks_and_requests_parse_and_bad_values_are_reported() {
        let ok = format!(
            "{}\napprovals = 2\nbreak_glass = true\nbreak_glass_max_ttl = \"30m\"\n\
             [requests]\nreview_window = \"15m\"\n\
             [[webhooks]]\nurl = \"https://hooks.example.com/x\"\nevents = [\"break_glass\", \"request_created\"]\n",
            MINIMAL.trim_end()
        );
        let c = Config::from_toml_str(&ok).unwrap();
        let w = c.workflow("read");
        assert_eq!((w.approvals, w.break_glass), (2, true));
        assert_eq!(w.break_glass_max_ttl, Duration::from_secs(1800));
        assert_eq!(c.requests.review_window, Duration::from_secs(900));
        assert!(
            c.webhooks[0].wants(WebhookEvent::BreakGlass) && !c.webhooks[0].wants(WebhookEvent::GrantIssued)
        );

        let defaults = Config::from_toml_str(MINIMAL).unwrap();
        assert_eq!(defaults.workflow("read"), RoleWorkflow::default());
        assert_eq!(defaults.requests.review_window, Duration::from_secs(3600));
        assert!(defaults.webhooks.is_empty());

        let bad = format!(
            "{}\napprovals = 0\nbreak_glass_max_ttl = \"9h\"\n\
             [[webhooks]]\nurl = \"ftp://x\"\nevents = [\"everything\"]\n",
            MINIMAL.trim_end()
        );
        let ConfigError::Invalid(problems) = Config::from_toml_str(&bad).unwrap_err() else {
            panic!()
        };
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        for expected in [
            "roles.read.approvals",
            "roles.read.break_glass_max_ttl",
            "webhooks[0].url",
            "webhooks[0].events[0]",
        ] {
            assert!(paths.contains(&expected), "missing {expected} in {paths:?}");
        }
    }

    #[test]
    fn webhook_event_names_become_events_once_and_a_star_is_every_event() {
        let with = |events: &str| {
            let text = format!(
                "{}\n[[webhooks]]\nurl = \"https://hooks.example.com/x\"\nevents = {events}\n",
                MINIMAL.trim_end()
            );
            Config::from_toml_str(&text).unwrap().webhooks.remove(0)
        };
        assert_eq!(with(r#"["*"]"#).events, WebhookEvent::ALL.to_vec());
        assert_eq!(
            with(r#"["grant_revoked", "break_glass", "grant_revoked"]"#).events,
            vec![WebhookEvent::BreakGlass, WebhookEvent::GrantRevoked]
        );
    }

    #[test]
    fn bench_knobs_are_off_by_default() {
        let c = Config::from_toml_str(MINIMAL).unwrap();
        assert_eq!(c.bench, BenchKnobs::default());
        assert!(!c.bench.skip_policy() && !c.bench.skip_audit() && !c.bench.any());
    }

    /// Guards against a production build that can turn off enforcement or auditing: without the
    /// `bench-knobs` feature a `[bench]` table is an error, whatever it says.
    #[cfg(not(feature = "bench-knobs"))]
    #[test]
    fn bench_table_is_refused_without_the_bench_knobs_feature() {
        for table in [
            "[bench]\nskip_policy = true",
            "[bench]\nskip_audit = true",
            "[bench]",
        ] {
            let text = format!("{}\n{table}\n", MINIMAL.trim_end());
            let ConfigError::Invalid(problems) = Config::from_toml_str(&text).unwrap_err() else {
                panic!("expected Invalid for {table:?}")
            };
            assert_eq!(
                problems,
                vec![ConfigProblem {
                    path: "bench".into(),
                    message: "[bench] needs a timebox built with --features bench-knobs (benchmarks only)"
                        .into(),
                }],
                "{table:?}"
            );
        }
    }

    #[cfg(feature = "bench-knobs")]
    #[test]
    fn bench_table_sets_the_knobs_with_the_bench_knobs_feature() {
        let text = format!("{}\n[bench]\nskip_policy = true\n", MINIMAL.trim_end());
        let c = Config::from_toml_str(&text).unwrap();
        assert!(c.bench.skip_policy() && !c.bench.skip_audit() && c.bench.any());
        let text = format!("{}\n[bench]\nskip_audit = true\n", MINIMAL.trim_end());
        let c = Config::from_toml_str(&text).unwrap();
        assert!(!c.bench.skip_policy() && c.bench.skip_audit());
        let text = format!("{}\n[bench]\nskip_everything = true\n", MINIMAL.trim_end());
        let ConfigError::Invalid(problems) = Config::from_toml_str(&text).unwrap_err() else {
            panic!()
        };
        // (serde_ignored writes an optional table's keys as `bench.?.key`, like `audit.?.key`.)
        assert!(problems[0].path.ends_with("skip_everything"), "{problems:?}");
        assert_eq!(problems[0].message, "unknown key");
    }

    #[test]
    fn secrets_do_not_print() {
        let c = Config::from_toml_str(MINIMAL).unwrap();
        let dump = format!("{c:?}");
        assert!(!dump.contains("\"pw\""), "{dump}");
    }

    #[test]
    fn role_policy_options_parse_and_bad_values_are_reported_with_their_path() {
        let ok = MINIMAL.replace(
            "max_ttl = \"8h\"",
            "max_ttl = \"8h\"\nrequire_where = true\nstatement_timeout = \"30s\"\nallow_unparsed = false\n\
             allow_functions = [\"report_totals\", \"app.safe_fn\"]\n\
             tables = { allow = [\"public.*\"], deny = [\"public.secrets\"] }",
        );
        let c = Config::from_toml_str(&ok).unwrap();
        let role = &c.roles["read"];
        assert!(role.require_where && !role.allow_unparsed);
        assert_eq!(role.statement_timeout, Some(Duration::from_secs(30)));
        assert_eq!(role.allow_functions, ["report_totals", "app.safe_fn"]);
        let tables = role.tables.as_ref().unwrap();
        assert_eq!(tables.allow, ["public.*"]);
        assert_eq!(tables.deny, ["public.secrets"]);

        let bad = MINIMAL.replace(
            "max_ttl = \"8h\"",
            "max_ttl = \"8h\"\nstatement_timeout = \"soon\"\nallow_functions = [\"Bad Name\"]\n\
             tables = { allow = [\"orders\"], deny = [\"public.Secrets\"], alow = [] }",
        );
        let ConfigError::Invalid(problems) = Config::from_toml_str(&bad).unwrap_err() else {
            panic!()
        };
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        for expected in [
            "roles.read.statement_timeout",
            "roles.read.allow_functions[0]",
            "roles.read.tables.allow[0]",
            "roles.read.tables.deny[0]",
            "roles.read.tables.alow",
        ] {
            assert!(paths.contains(&expected), "missing {expected} in {paths:?}");
        }
    }

    #[test]
    fn candidate_roles_validate_alone_with_their_paths() {
        let roles = roles_from_json(serde_json::json!({
            "read": {"allow": ["read"], "max_ttl": "1h", "tables": {"allow": ["public.*"]}},
        }))
        .unwrap();
        assert_eq!(roles["read"].allow, vec![StatementClass::Read]);
        let Err(ConfigError::Invalid(problems)) = roles_from_json(serde_json::json!({
            "read": {"allow": ["read", "everything"], "max_ttl": "soon", "alow": []},
        })) else {
            panic!("invalid roles must be refused");
        };
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        for wanted in ["roles.read.allow[1]", "roles.read.max_ttl", "roles.read.alow"] {
            assert!(paths.contains(&wanted), "{wanted} missing from {paths:?}");
        }
        assert!(roles_from_json(serde_json::json!(["not", "a", "table"])).is_err());
    }

    #[test]
    fn principal_roles_parse_once_from_their_config_names() {
        let names: Vec<&str> = PrincipalRole::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(names, PRINCIPAL_ROLES, "the CLI's list is the enum's names");
        for role in PrincipalRole::ALL {
            assert_eq!(PrincipalRole::from_name(role.as_str()), Some(role));
            assert_eq!(role.to_string(), role.as_str());
        }
        for bad in ["", "root", "Admin", " admin", "auditors", "read"] {
            assert_eq!(PrincipalRole::from_name(bad), None, "{bad:?}");
        }
        let c = Config::from_toml_str(
            "[proxy]\nlisten = \"127.0.0.1:0\"\ntls = \"disabled\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [[admin.tokens]]\nname = \"ops\"\nsha256 = \"0000000000000000000000000000000000000000000000000000000000000000\"\n\
             roles = [\"approver\", \"auditor\"]\n",
        )
        .unwrap();
        assert_eq!(
            c.admin.tokens[0].roles,
            [PrincipalRole::Approver, PrincipalRole::Auditor]
        );
        let err = Config::from_toml_str(
            "[proxy]\nlisten = \"127.0.0.1:0\"\ntls = \"disabled\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [[admin.tokens]]\nname = \"ops\"\nsha256 = \"0000000000000000000000000000000000000000000000000000000000000000\"\n\
             roles = [\"admin\", \"Admin\"]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("admin.tokens[0].roles[1]"), "{err}");
    }

    #[test]
    fn statement_classes_parse_once_from_their_config_names() {
        for name in STATEMENT_CLASSES {
            let class = StatementClass::from_name(name).expect(name);
            assert_eq!(class.as_str(), *name);
        }
        for bad in ["unparsed", "READ", "", "select"] {
            assert_eq!(StatementClass::from_name(bad), None, "{bad:?}");
        }
    }
}
