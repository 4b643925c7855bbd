//! A role's column masking (issue 15): `mask = { "public.customers.email" = "email", … }` and
//! `mask_filters = "allow" | "deny"`, raw TOML → validated [`Masking`]. Names are
//! `schema.table.column` as PostgreSQL folds unquoted identifiers (lower case); methods are
//! [`MaskMethod`]s. A role with masks may not also list `allow_functions`: a user function could
//! return a masked column in clear. Nothing here does I/O; the relay and the policy apply it.

use std::collections::BTreeMap;

use super::Problems;
use crate::masking::MaskMethod;

/// One masked column as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaskRule {
    pub schema: String,
    pub table: String,
    pub column: String,
    pub method: MaskMethod,
}

impl MaskRule {
    /// `schema.table.column`, as written in the config.
    pub fn qualified(&self) -> String {
        format!("{}.{}.{}", self.schema, self.table, self.column)
    }

    /// `public.customers.email` masked by `method` (unit tests).
    #[cfg(test)]
    pub fn customers_email(method: MaskMethod) -> MaskRule {
        MaskRule {
            schema: "public".into(),
            table: "customers".into(),
            column: "email".into(),
            method,
        }
    }
}

/// Whether a masked column may be used to filter, join, sort or group (`mask_filters`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MaskFilters {
    /// Allowed as a plain operand of a comparison, `LIKE`, `IN`, `IS NULL`, `ORDER BY`, `GROUP BY`
    /// (the default; values can be inferred through filters).
    #[default]
    Allow,
    /// Any use outside a plain output column is denied.
    Deny,
}

/// A role's masking: its columns (sorted by name) and the filter rule.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Masking {
    pub columns: Vec<MaskRule>,
    pub filters: MaskFilters,
}

impl Masking {
    pub fn is_empty(&self) -> bool {
        self.columns.is_empty()
    }
}

/// A role's result quotas and masks (what limits what it is shown), problems under `path`.
pub(super) fn validate_limits(
    path: &str,
    raw: &super::raw::RawRole,
    p: &mut Problems,
) -> (super::Quotas, Option<Masking>) {
    let quotas = super::quota::validate_quotas(
        path,
        raw.max_rows_per_statement,
        raw.max_result_bytes_per_statement.as_ref(),
        raw.max_result_bytes_per_grant.as_ref(),
        p,
    );
    let masking = validate_masking(
        path,
        &raw.mask,
        raw.mask_filters.as_deref(),
        &raw.allow_functions,
        p,
    );
    (quotas, masking)
}

/// A lower-case identifier as PostgreSQL folds an unquoted one.
fn identifier(part: &str) -> bool {
    let mut chars = part.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$')
}

/// Validates one role's `mask` and `mask_filters`; problems are reported under `path`
/// (`roles.support`). `None` when the role masks nothing.
pub(super) fn validate_masking(
    path: &str,
    mask: &BTreeMap<String, String>,
    filters: Option<&str>,
    allow_functions: &[String],
    p: &mut Problems,
) -> Option<Masking> {
    let filters = match filters {
        None | Some("allow") => MaskFilters::Allow,
        Some("deny") => MaskFilters::Deny,
        Some(other) => {
            p.push(
                format!("{path}.mask_filters"),
                format!("{other:?} is not \"allow\" or \"deny\""),
            );
            MaskFilters::Allow
        }
    };
    if mask.is_empty() {
        return None;
    }
    let mut columns = Vec::new();
    for (name, method) in mask {
        let key = format!("{path}.mask.\"{name}\"");
        let parts: Vec<&str> = name.split('.').collect();
        let method = match method.parse::<MaskMethod>() {
            Ok(m) => m,
            Err(e) => {
                p.push(&key, e);
                continue;
            }
        };
        match parts[..] {
            [schema, table, column] if parts.iter().all(|s| identifier(s)) => columns.push(MaskRule {
                schema: schema.into(),
                table: table.into(),
                column: column.into(),
                method,
            }),
            _ => p.push(
                &key,
                format!("{name:?} is not a column like \"public.customers.email\" (schema.table.column, lower case)"),
            ),
        }
    }
    if !allow_functions.is_empty() {
        p.push(
            format!("{path}.mask"),
            "cannot be combined with allow_functions: a user function could return a masked column unmasked",
        );
    }
    Some(Masking { columns, filters })
}

#[cfg(test)]
mod tests {
    use crate::config::testing::MINIMAL;
    use crate::config::{Config, ConfigError};

    use super::*;

    #[test]
    fn mask_is_typed_once_and_bad_entries_are_reported_with_their_path() {
        let ok = format!(
            "{MINIMAL}        mask = {{ \"public.customers.email\" = \"email\", \"public.customers.phone\" = \"partial\" }}\n        mask_filters = \"deny\"\n"
        );
        let c = Config::from_toml_str(&ok).unwrap();
        let m = c.roles["read"].masking.as_ref().expect("masked");
        assert_eq!(m.filters, MaskFilters::Deny);
        assert_eq!(m.columns.len(), 2);
        assert_eq!(m.columns[0].qualified(), "public.customers.email");
        assert_eq!(m.columns[0].method, MaskMethod::Email);
        assert!(Config::from_toml_str(MINIMAL).unwrap().roles["read"]
            .masking
            .is_none());
        let bad = format!(
            "{MINIMAL}        mask = {{ \"public.customers.email\" = \"scramble\", \"customers.email\" = \"null\" }}\n        mask_filters = \"maybe\"\n"
        );
        let ConfigError::Invalid(problems) = Config::from_toml_str(&bad).unwrap_err() else {
            panic!("expected validation problems");
        };
        let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        let has = |prefix: &str| text.iter().any(|t| t.starts_with(prefix));
        assert!(
            has("roles.read.mask.\"public.customers.email\": \"scramble\" is not a masking method"),
            "{text:?}"
        );
        assert!(
            has("roles.read.mask.\"customers.email\": \"customers.email\" is not a column"),
            "{text:?}"
        );
        assert!(has("roles.read.mask_filters: \"maybe\" is not"), "{text:?}");
    }

    #[test]
    fn mask_and_allow_functions_do_not_mix() {
        let mut p = Problems::default();
        let mask = [("public.t.c".to_string(), "redact".to_string())]
            .into_iter()
            .collect();
        validate_masking("roles.r", &mask, None, &["f".into()], &mut p);
        assert_eq!(p.0.len(), 1);
        assert_eq!(p.0[0].path, "roles.r.mask");
    }
}
