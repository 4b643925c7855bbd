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

use crate::policy::StatementClass;
use crate::webhooks::WebhookEvent;

mod fleet;
mod mask;
mod quota;
mod raw;
mod store;
#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;
mod validate;
pub use fleet::FleetConfig;
pub use mask::{MaskFilters, MaskRule, Masking};
pub use quota::{parse_size, Quotas, Size};
pub use store::{PostgresStoreConfig, StoreConfig};

pub use raw::RawConfig;
pub use validate::roles_from_json;
use validate::Problems;

/// Statement classes a role may be allowed (enforced by the policy layer): the names
/// [`StatementClass::from_name`] accepts.
pub const STATEMENT_CLASSES: &[&str] = &["read", "write", "ddl", "admin"];

/// Declares an enum of unit variants that each have one name, as written in config, on the command
/// line and in messages, with `ALL` and `NAMES` (both in declaration order), `as_str`, `from_name`
/// and `Display`: no list of names is kept by hand beside the enum.
macro_rules! named_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident => $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        $vis enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: [$name; [$($text),+].len()] = [$($name::$variant),+];
            /// The names of [`Self::ALL`], in the same order.
            pub const NAMES: [&'static str; [$($text),+].len()] = [$($text),+];

            /// The name used in config, on the command line and in messages.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }

            /// The variant named `name` exactly (names are lower case), if there is one. Pure.
            pub fn from_name(name: &str) -> Option<$name> {
                Self::ALL.into_iter().find(|v| v.as_str() == name)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
pub(crate) use named_enum;

/// Principal roles an admin-API token may carry, as written in config and on the command line.
pub const PRINCIPAL_ROLES: &[&str] = &PrincipalRole::NAMES;

named_enum! {
    /// A role an admin-API token carries (`[[admin.tokens]] roles`). Parsed once, in config
    /// validation; the admin API and `timebox_audit` compare these, never the strings.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
    pub enum PrincipalRole {
        /// Everything: grants, requests, sessions, audit, metrics.
        Admin => "admin",
        /// Approves or denies requests; revokes and extends grants; kills sessions.
        Approver => "approver",
        /// Files access requests and sees its own grants.
        Requester => "requester",
        /// Reads the audit trail (HTTP and `timebox_audit`), grants and metrics.
        Auditor => "auditor",
    }
}

/// Events a `[[webhooks]]` entry may subscribe to (`"*"` means all of them).
pub const WEBHOOK_EVENTS: &[&str] = &WebhookEvent::NAMES;

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
    /// The problem is about this host, not the file: a file or environment variable the config names
    /// does not exist here (`check-config --offline` skips these).
    pub on_host: bool,
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
    /// CancelRequests in flight to one target server at once (each forks a PostgreSQL process),
    /// over the sessions' own cancels and the clients' CancelRequests.
    pub cancel_parallelism_per_target: usize,
    /// How long stopping an upstream query may take: a severed session's cancel and backend exit
    /// (past it the upstream connection is closed), or a client's CancelRequest waiting for a
    /// cancel slot (past it the request is dropped).
    pub upstream_stop_timeout: Duration,
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
    /// `retain`: records older than this are dropped on a schedule (central partitions, local
    /// index rows once shipped); `None` (the default) keeps everything.
    pub retain: Option<std::time::Duration>,
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
    /// Result quotas (`max_rows_per_statement`, …); all `None` when the role sets none.
    pub quotas: Quotas,
    /// Column masking (`mask`, `mask_filters`); `None` when the role masks nothing.
    pub masking: Option<Masking>,
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
            quotas: Quotas::default(),
            masking: None,
        }
    }
}

/// A role's table rules: `schema.name` glob patterns (`*`, `?`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableRules {
    pub allow: Vec<String>,
    pub deny: Vec<String>,
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

impl Config {
    /// The request workflow of role `name` (the defaults for an unknown role).
    pub fn workflow(&self, name: &str) -> RoleWorkflow {
        self.workflow.get(name).copied().unwrap_or_default()
    }
}
