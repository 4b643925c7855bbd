//! Role review: what each role was actually used for, from the audit trail, and a narrower
//! definition that would still have allowed all of it — printed as a suggestion, never applied.
//!
//! Classes come from the records (what the relay decided at the time); tables, functions and
//! settings from classifying the recorded texts again through a [`ClassifyCache`] (allowed
//! statements only: a denied statement used nothing); denials are grouped by their recorded
//! reason, which is what engineers needed and did not have.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::RecordedStatement;
use crate::audit::event::Decision;
use crate::config::Role;
use crate::policy::{ClassifyCache, StatementClass};

/// Entries kept in each top list.
pub const TOP: usize = 20;
const CACHE_CAPACITY: usize = 10_000;

/// One thing used, and how often.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub name: String,
    pub count: u64,
}

/// What one role was used for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleReview {
    pub role: String,
    pub targets: Vec<String>,
    pub grants: u64,
    pub users: Vec<String>,
    pub statements: u64,
    pub denied: u64,
    pub first: Option<DateTime<Utc>>,
    pub last: Option<DateTime<Utc>>,
    /// Allowed statements by class.
    pub classes_used: BTreeMap<String, u64>,
    /// Classes the role allows today that no statement used.
    pub classes_never_used: Vec<String>,
    pub tables_read: Vec<Usage>,
    pub tables_written: Vec<Usage>,
    /// User-defined functions called (built-ins are not listed).
    pub functions: Vec<Usage>,
    pub settings_changed: Vec<Usage>,
    pub denials: Vec<Usage>,
    /// A TOML snippet for a narrower role; `None` when the role is not in the current config.
    pub suggestion: Option<String>,
}

#[derive(Default)]
struct Tally {
    targets: BTreeSet<String>,
    grants: BTreeSet<String>,
    users: BTreeSet<String>,
    statements: u64,
    denied: u64,
    first: Option<DateTime<Utc>>,
    last: Option<DateTime<Utc>>,
    classes: BTreeMap<String, u64>,
    read: HashMap<String, u64>,
    written: HashMap<String, u64>,
    functions: HashMap<String, u64>,
    settings: HashMap<String, u64>,
    denials: HashMap<String, u64>,
}

fn bump(map: &mut HashMap<String, u64>, key: String) {
    *map.entry(key).or_default() += 1;
}

fn top(map: HashMap<String, u64>) -> Vec<Usage> {
    let mut list: Vec<Usage> = map
        .into_iter()
        .map(|(name, count)| Usage { name, count })
        .collect();
    list.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.name.cmp(&b.name)));
    list.truncate(TOP);
    list
}

/// Folds recorded statements into one review per role.
pub struct Reviewer {
    cache: ClassifyCache,
    roles: BTreeMap<String, Tally>,
}

impl Default for Reviewer {
    fn default() -> Self {
        Reviewer {
            cache: ClassifyCache::new(CACHE_CAPACITY),
            roles: BTreeMap::new(),
        }
    }
}

impl Reviewer {
    pub fn feed(&mut self, record: RecordedStatement) {
        let Some(role) = record.role.clone() else { return };
        let t = self.roles.entry(role).or_default();
        t.targets.insert(record.target.clone());
        t.grants.insert(record.grant_id.clone());
        t.users.insert(record.user.clone());
        t.statements += 1;
        t.first = t.first.min(Some(record.ts)).or(Some(record.ts));
        t.last = t.last.max(Some(record.ts));
        if record.decision == Decision::Deny {
            t.denied += 1;
            bump(&mut t.denials, record.reason.clone().unwrap_or_default());
            return;
        }
        *t.classes.entry(record.class.clone()).or_default() += 1;
        let classification = self.cache.classify(&record.sql);
        for stmt in &classification.statements {
            let tables = match stmt.class {
                StatementClass::Read => &mut t.read,
                _ => &mut t.written,
            };
            for r in &stmt.relations {
                let schema = r.schema.as_deref().unwrap_or("public");
                bump(tables, format!("{schema}.{}", r.name));
            }
            for f in &stmt.unknown_functions {
                bump(&mut t.functions, f.clone());
            }
            for s in &stmt.sets {
                bump(&mut t.settings, s.name.clone());
            }
        }
    }

    /// The reviews, one per role, against the roles as configured now.
    pub fn finish(self, roles: &BTreeMap<String, Role>) -> Vec<RoleReview> {
        self.roles
            .into_iter()
            .map(|(name, t)| {
                let configured = roles.get(&name);
                let used: BTreeSet<&str> = t.classes.keys().map(String::as_str).collect();
                let classes_never_used = configured
                    .map(|r| {
                        r.allow
                            .iter()
                            .map(|c| c.as_str().to_owned())
                            .filter(|c| !used.contains(c.as_str()))
                            .collect()
                    })
                    .unwrap_or_default();
                let suggestion = configured.map(|r| suggest(r, &t));
                RoleReview {
                    role: name,
                    targets: t.targets.into_iter().collect(),
                    grants: t.grants.len() as u64,
                    users: t.users.into_iter().collect(),
                    statements: t.statements,
                    denied: t.denied,
                    first: t.first,
                    last: t.last,
                    classes_used: t.classes,
                    classes_never_used,
                    tables_read: top(t.read),
                    tables_written: top(t.written),
                    functions: top(t.functions),
                    settings_changed: top(t.settings),
                    denials: top(t.denials),
                    suggestion,
                }
            })
            .collect()
    }
}

fn toml_list<'a>(items: impl IntoIterator<Item = &'a String>) -> String {
    let quoted: Vec<String> = items
        .into_iter()
        .map(|s| toml::Value::String(s.clone()).to_string())
        .collect();
    format!("[{}]", quoted.join(", "))
}

/// A narrower definition of `role` that allows what `t` saw used. Pure.
fn suggest(role: &Role, t: &Tally) -> String {
    let used: BTreeSet<String> = role
        .allow
        .iter()
        .filter(|c| t.classes.contains_key(c.as_str()))
        .map(|c| c.as_str().to_owned())
        .collect();
    let mut tables: BTreeSet<String> = t.read.keys().cloned().collect();
    tables.extend(t.written.keys().cloned());
    let mut out = format!(
        "# Suggested from {} statements ({} denied) of role {}: a suggestion to review, never applied.\n[roles.{}]\n",
        t.statements, t.denied, role.name, role.name
    );
    out.push_str(&format!("allow = {}\n", toml_list(&used)));
    out.push_str(&format!(
        "max_ttl = {}\n",
        toml::Value::String(humantime::format_duration(role.max_ttl).to_string())
    ));
    if !tables.is_empty() {
        out.push_str(&format!("tables = {{ allow = {} }}\n", toml_list(&tables)));
    }
    if role.require_where || t.written.is_empty() {
        out.push_str(&format!("require_where = {}\n", role.require_where));
    }
    if let Some(timeout) = role.statement_timeout {
        out.push_str(&format!(
            "statement_timeout = {}\n",
            toml::Value::String(humantime::format_duration(timeout).to_string())
        ));
    }
    let functions: BTreeSet<String> = t
        .functions
        .keys()
        .filter(|f| role.allow_functions.contains(f))
        .cloned()
        .collect();
    if !functions.is_empty() {
        out.push_str(&format!("allow_functions = {}\n", toml_list(&functions)));
    }
    // Result quotas are kept as they are: a narrower role is never a looser one.
    let q = &role.quotas;
    if let Some(rows) = q.max_rows_per_statement {
        out.push_str(&format!("max_rows_per_statement = {rows}\n"));
    }
    for (key, bytes) in [
        ("max_result_bytes_per_statement", q.max_result_bytes_per_statement),
        ("max_result_bytes_per_grant", q.max_result_bytes_per_grant),
    ] {
        if let Some(b) = bytes {
            let size = crate::config::Size(b).to_string().replace(" bytes", "");
            out.push_str(&format!("{key} = {}\n", toml::Value::String(size)));
        }
    }
    // Masks are kept as they are too: dropping one would show its column in clear.
    if let Some(m) = &role.masking {
        let entries: Vec<String> = m
            .columns
            .iter()
            .map(|c| {
                format!(
                    "{} = {}",
                    toml::Value::String(c.qualified()),
                    toml::Value::String(c.method.to_string())
                )
            })
            .collect();
        out.push_str(&format!("mask = {{ {} }}\n", entries.join(", ")));
        if m.filters == crate::config::MaskFilters::Deny {
            out.push_str("mask_filters = \"deny\"\n");
        }
    }
    out
}

/// Reviews `records`. Pure.
pub fn review(
    records: impl IntoIterator<Item = RecordedStatement>,
    roles: &BTreeMap<String, Role>,
) -> Vec<RoleReview> {
    let mut reviewer = Reviewer::default();
    for record in records {
        reviewer.feed(record);
    }
    reviewer.finish(roles)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn record(seq: u64, user: &str, sql: &str, class: &str, decision: Decision) -> RecordedStatement {
        RecordedStatement {
            seq,
            ts: Utc::now(),
            session_id: "s1".into(),
            grant_id: format!("g_{user}"),
            user: user.into(),
            target: "shop".into(),
            role: Some("write".into()),
            sql: sql.into(),
            truncated: false,
            class: class.into(),
            decision,
            reason: (decision == Decision::Deny).then(|| "DDL is not allowed for role write".into()),
            relations: Vec::new(),
        }
    }

    fn write_role() -> BTreeMap<String, Role> {
        let role = Role {
            name: "write".into(),
            allow: vec![StatementClass::Read, StatementClass::Write],
            max_ttl: Duration::from_secs(2 * 3600),
            tables: None,
            require_where: true,
            statement_timeout: Some(Duration::from_secs(30)),
            allow_unparsed: false,
            allow_functions: Vec::new(),
            quotas: Default::default(),
            masking: None,
        };
        [("write".to_owned(), role)].into_iter().collect()
    }

    #[test]
    fn a_role_used_only_for_reads_gets_a_suggestion_without_write() {
        let trail = vec![
            record(
                1,
                "alice",
                "SELECT * FROM orders WHERE id = 1",
                "read",
                Decision::Allow,
            ),
            record(
                2,
                "bob",
                "SELECT o.id FROM orders o JOIN public.customers c ON c.id = o.customer",
                "read",
                Decision::Allow,
            ),
            record(3, "bob", "SET statement_timeout = '5s'", "read", Decision::Allow),
            record(4, "alice", "CREATE TABLE x (a int)", "ddl", Decision::Deny),
        ];
        let reviews = review(trail, &write_role());
        assert_eq!(reviews.len(), 1);
        let r = &reviews[0];
        assert_eq!((r.grants, r.statements, r.denied), (2, 4, 1));
        assert_eq!(r.users, vec!["alice", "bob"]);
        assert_eq!(r.classes_never_used, vec!["write"]);
        assert_eq!(
            r.tables_read[0],
            Usage {
                name: "public.orders".into(),
                count: 2
            }
        );
        assert!(r.tables_written.is_empty());
        assert_eq!(r.settings_changed[0].name, "statement_timeout");
        assert_eq!(r.denials[0].count, 1);
        let suggestion = r.suggestion.as_deref().unwrap();
        assert!(suggestion.contains("allow = [\"read\"]"), "{suggestion}");
        assert!(
            suggestion.contains("\"public.customers\", \"public.orders\""),
            "{suggestion}"
        );
        // the suggestion is valid TOML with the config's shape
        let parsed: toml::Value = toml::from_str(suggestion).unwrap();
        assert_eq!(parsed["roles"]["write"]["max_ttl"].as_str(), Some("2h"));
        assert_eq!(
            parsed["roles"]["write"]["statement_timeout"].as_str(),
            Some("30s")
        );
    }

    /// Regression: a "narrower" suggestion must not drop the role's result quotas (it would be
    /// looser than the role it replaces).
    #[test]
    fn a_suggestion_keeps_the_roles_result_quotas() {
        let mut roles = write_role();
        roles.get_mut("write").unwrap().quotas = crate::config::Quotas {
            max_rows_per_statement: Some(1000),
            max_result_bytes_per_statement: Some(10 << 20),
            max_result_bytes_per_grant: Some(1500),
        };
        let (suggestion, validated) = suggested_again(&roles);
        let suggestion = suggestion.as_str();
        assert_eq!(validated["write"].quotas, roles["write"].quotas, "{suggestion}");
        assert!(
            suggestion.contains("max_result_bytes_per_statement = \"10MB\""),
            "{suggestion}"
        );
    }

    /// The suggestion for `roles` after one allowed SELECT, and its `[roles]` validated again as a
    /// config's would be.
    fn suggested_again(roles: &BTreeMap<String, Role>) -> (String, BTreeMap<String, Role>) {
        let trail = vec![record(1, "alice", "SELECT 1", "read", Decision::Allow)];
        let suggestion = review(trail, roles)[0].suggestion.clone().unwrap();
        let parsed: toml::Value = toml::from_str(&suggestion).unwrap();
        let validated =
            crate::config::roles_from_json(serde_json::to_value(&parsed["roles"]).unwrap()).unwrap();
        (suggestion, validated)
    }

    /// Regression: a "narrower" suggestion must not drop the role's masks (it would show the
    /// masked columns in clear).
    #[test]
    fn a_suggestion_keeps_the_roles_masks() {
        let mut roles = write_role();
        roles.get_mut("write").unwrap().masking = Some(crate::config::Masking {
            columns: vec![crate::config::MaskRule {
                schema: "public".into(),
                table: "customers".into(),
                column: "email".into(),
                method: crate::masking::MaskMethod::Email,
            }],
            filters: crate::config::MaskFilters::Deny,
        });
        let (suggestion, validated) = suggested_again(&roles);
        let suggestion = suggestion.as_str();
        assert_eq!(validated["write"].masking, roles["write"].masking, "{suggestion}");
    }

    #[test]
    fn writes_keep_write_and_the_tables_they_touched() {
        let trail = vec![
            record(
                1,
                "alice",
                "UPDATE orders SET status = 'x' WHERE id = 1",
                "write",
                Decision::Allow,
            ),
            record(2, "alice", "SELECT 1", "read", Decision::Allow),
        ];
        let r = &review(trail, &write_role())[0];
        assert!(r.classes_never_used.is_empty());
        assert_eq!(r.tables_written[0].name, "public.orders");
        let suggestion = r.suggestion.as_deref().unwrap();
        assert!(
            suggestion.contains("allow = [\"read\", \"write\"]"),
            "{suggestion}"
        );
        assert!(suggestion.contains("require_where = true"), "{suggestion}");
    }
}
