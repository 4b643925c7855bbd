//! Validation: [`RawConfig`] → [`Config`]. Every problem is collected with its key path
//! (`targets.shop.port`) and reported at once; nothing here reads the network, and a secret is
//! resolved (file, environment) but never put into a message.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use std::time::Duration;

use super::raw::*;
use super::*;

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("not a duration ({e}); write e.g. \"30s\", \"15m\", \"8h\""))
}

/// Collects problems while walking the raw config.
#[derive(Default)]
pub(super) struct Problems(pub(super) Vec<ConfigProblem>);

impl Problems {
    pub(super) fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigProblem {
            path: path.into(),
            message: message.into(),
            on_host: false,
        });
    }

    /// A file or environment variable named by the config that this host does not have.
    pub(super) fn push_on_host(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigProblem {
            path: path.into(),
            message: message.into(),
            on_host: true,
        });
    }

    pub(super) fn duration(&mut self, path: &str, value: Option<&str>, default: Duration) -> Duration {
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

    pub(super) fn positive(&mut self, path: &str, value: Option<i64>, default: u64, max: u64) -> u64 {
        match value {
            None => default,
            Some(v) if v >= 1 && (v as u64) <= max => v as u64,
            Some(v) => {
                self.push(path, format!("{v} is out of range (1..={max})"));
                default
            }
        }
    }

    pub(super) fn socket_addr(&mut self, path: &str, value: &str) -> SocketAddr {
        value.parse().unwrap_or_else(|e| {
            self.push(
                path,
                format!("{value:?} is not an address like \"127.0.0.1:6432\" ({e})"),
            );
            SocketAddr::from(([127, 0, 0, 1], 0))
        })
    }

    /// The `tls` of a target or of the PostgreSQL store: `disable` (the default), `require` or
    /// `verify-full`.
    pub(super) fn upstream_tls(&mut self, path: &str, value: Option<&str>) -> UpstreamTls {
        self.one_of(
            path,
            value,
            UpstreamTls::Disable,
            &[
                ("disable", UpstreamTls::Disable),
                ("require", UpstreamTls::Require),
                ("verify-full", UpstreamTls::VerifyFull),
            ],
        )
    }

    pub(super) fn one_of<T: Copy>(
        &mut self,
        path: &str,
        value: Option<&str>,
        default: T,
        choices: &[(&str, T)],
    ) -> T {
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

impl RawConfig {
    pub(super) fn validate(self, mut p: Problems) -> Result<Config, ConfigError> {
        let proxy = validate_proxy(&self.proxy, &mut p);
        let admin = validate_admin(&self.admin, &mut p);
        let audit_dir = self.audit.as_ref().and_then(|a| a.dir.as_ref());
        let store = store::validate_store(self.store.as_ref(), audit_dir, &mut p);
        let fleet = super::fleet::validate_fleet(
            self.fleet.as_ref(),
            matches!(store, StoreConfig::Postgres(_)),
            &mut p,
        );
        let audit = validate_audit(self.audit.as_ref(), &mut p);

        let (roles, workflow) = validate_roles(&self.roles, &mut p);

        let targets = validate_targets(&self.targets, &self.roles, &mut p);

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

/// The `[targets]` table: where each target is and the upstream credential of each role.
fn validate_targets(
    raw_targets: &BTreeMap<String, RawTarget>,
    roles: &BTreeMap<String, RawRole>,
    p: &mut Problems,
) -> BTreeMap<String, Target> {
    let mut targets = BTreeMap::new();
    for (name, raw) in raw_targets {
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
        let tls = p.upstream_tls(&format!("{path}.tls"), raw.tls.as_deref());
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
            if !roles.contains_key(role) {
                p.push(&cpath, format!("no role {role:?} is defined under [roles]"));
            }
            if cred.user.trim().is_empty() {
                p.push(format!("{cpath}.user"), "must not be empty");
            }
            let password = resolve_password(cred, &cpath, p);
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
    targets
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
        let (quotas, masking) = super::mask::validate_limits(&path, raw, p);
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
                quotas,
                masking,
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
                on_host: false,
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
            match WebhookEvent::from_name(e) {
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
                    p.push_on_host(key, format!("{} is not a readable file", path.display()))
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
        cancel_parallelism_per_target: p.positive(
            "proxy.cancel_parallelism_per_target",
            raw.cancel_parallelism_per_target,
            crate::proxy::cancel::CANCELS_PER_TARGET as u64,
            1024,
        ) as usize,
        upstream_stop_timeout: p.duration(
            "proxy.upstream_stop_timeout",
            raw.upstream_stop_timeout.as_deref(),
            crate::proxy::cancel::UPSTREAM_STOP_BOUND,
        ),
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
    let retain = raw
        .and_then(|a| a.retain.as_deref())
        .map(|v| p.duration("audit.retain", Some(v), Duration::from_secs(90 * 86_400)));
    AuditConfig {
        durability,
        jsonl: raw.and_then(|a| a.jsonl.clone()),
        params,
        jsonl_max_bytes,
        jsonl_keep,
        retain,
    }
}

pub(super) fn resolve_password(cred: &RawCredential, path: &str, p: &mut Problems) -> Option<Secret> {
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
                p.push_on_host(
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
                p.push_on_host(
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

pub(super) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}
