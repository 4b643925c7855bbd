//! The raw layer of the config: what serde reads from TOML. Loose types (strings for enums and
//! durations) so that [`super::validate`] can report every bad value with its path instead of
//! stopping at the first. Nothing outside `config` sees these types.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::store;

#[derive(Debug, Deserialize)]
pub struct RawConfig {
    pub(super) proxy: RawProxy,
    pub(super) admin: RawAdmin,
    pub(super) store: Option<store::RawStore>,
    pub(super) fleet: Option<super::fleet::RawFleet>,
    pub(super) audit: Option<RawAudit>,
    #[serde(default)]
    pub(super) targets: BTreeMap<String, RawTarget>,
    #[serde(default)]
    pub(super) roles: BTreeMap<String, RawRole>,
    #[serde(default)]
    pub(super) webhooks: Vec<RawWebhook>,
    pub(super) requests: Option<RawRequests>,
    /// Read in every build so that its presence can be refused with a clear message; honoured only
    /// with the `bench-knobs` cargo feature.
    pub(super) bench: Option<RawBench>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawBench {
    pub(super) skip_policy: Option<bool>,
    pub(super) skip_audit: Option<bool>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawWebhook {
    pub(super) url: String,
    #[serde(default)]
    pub(super) events: Vec<String>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawRequests {
    pub(super) review_window: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawProxy {
    pub(super) listen: String,
    pub(super) tls: Option<String>,
    pub(super) tls_cert: Option<PathBuf>,
    pub(super) tls_key: Option<PathBuf>,
    pub(super) max_connections: Option<i64>,
    pub(super) startup_timeout: Option<String>,
    pub(super) upstream_connect_timeout: Option<String>,
    pub(super) expiry_warnings: Option<Vec<String>>,
    pub(super) auth_failures_per_minute: Option<i64>,
    pub(super) auth_failures_per_address_per_minute: Option<i64>,
    pub(super) auth_failures_global_per_minute: Option<i64>,
    pub(super) max_unauthenticated: Option<i64>,
    pub(super) max_unauthenticated_per_address: Option<i64>,
    pub(super) shutdown_grace: Option<String>,
    pub(super) max_message_bytes: Option<i64>,
    pub(super) max_statement_bytes: Option<i64>,
    pub(super) cancel_parallelism_per_target: Option<i64>,
    pub(super) upstream_stop_timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawAdmin {
    pub(super) listen: String,
    #[serde(default)]
    pub(super) tokens: Vec<RawAdminToken>,
    pub(super) metrics_public: Option<bool>,
    pub(super) max_connections: Option<i64>,
    pub(super) max_connections_per_address: Option<i64>,
    pub(super) header_timeout: Option<String>,
    pub(super) idle_timeout: Option<String>,
    pub(super) request_timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawAdminToken {
    pub(super) name: String,
    pub(super) sha256: String,
    pub(super) scram: Option<String>,
    #[serde(default)]
    pub(super) roles: Vec<String>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawAudit {
    /// Where the audit journal and index live with a PostgreSQL store (see [`store`]).
    pub(super) dir: Option<PathBuf>,
    pub(super) durability: Option<String>,
    pub(super) jsonl: Option<PathBuf>,
    pub(super) params: Option<String>,
    pub(super) jsonl_max_bytes: Option<i64>,
    pub(super) jsonl_keep: Option<i64>,
    /// How long records are kept (`"90d"`); absent: everything is kept.
    pub(super) retain: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawTarget {
    pub(super) host: String,
    pub(super) port: Option<i64>,
    pub(super) database: String,
    pub(super) tls: Option<String>,
    pub(super) ca: Option<PathBuf>,
    #[serde(default)]
    pub(super) credentials: BTreeMap<String, RawCredential>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawCredential {
    pub(super) user: String,
    pub(super) password: Option<String>,
    pub(super) password_env: Option<String>,
    pub(super) password_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawRole {
    #[serde(default)]
    pub(super) allow: Vec<String>,
    pub(super) max_ttl: Option<String>,
    #[serde(default)]
    pub(super) tables: RawTableRules,
    pub(super) require_where: Option<bool>,
    pub(super) statement_timeout: Option<String>,
    pub(super) allow_unparsed: Option<bool>,
    #[serde(default)]
    pub(super) allow_functions: Vec<String>,
    pub(super) approvals: Option<i64>,
    pub(super) break_glass: Option<bool>,
    pub(super) break_glass_max_ttl: Option<String>,
    pub(super) max_rows_per_statement: Option<i64>,
    pub(super) max_result_bytes_per_statement: Option<super::quota::RawSize>,
    pub(super) max_result_bytes_per_grant: Option<super::quota::RawSize>,
    #[serde(default)]
    pub(super) mask: BTreeMap<String, String>,
    pub(super) mask_filters: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct RawTableRules {
    #[serde(default)]
    pub(super) allow: Vec<String>,
    #[serde(default)]
    pub(super) deny: Vec<String>,
}
