//! A role's result quotas (`max_rows_per_statement`, `max_result_bytes_per_statement`,
//! `max_result_bytes_per_grant`): raw TOML values → validated [`Quotas`]. Absent means unlimited.
//! Sizes are a byte count or a text with a unit ("10MB", "512kB"; 1 kB = 1024 bytes, as in
//! PostgreSQL's settings). The relay applies them ([`crate::proxy`]); nothing here does I/O.

use std::fmt;

use serde::Deserialize;

use super::Problems;

/// A size as written in the config: a byte count or a text with a unit.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(super) enum RawSize {
    Bytes(i64),
    Text(String),
}

/// A role's result quotas; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Quotas {
    /// DataRows one statement may return.
    pub max_rows_per_statement: Option<u64>,
    /// DataRow and CopyData bytes one statement may return.
    pub max_result_bytes_per_statement: Option<u64>,
    /// DataRow and CopyData bytes all sessions of one grant may receive (per instance).
    pub max_result_bytes_per_grant: Option<u64>,
}

impl Quotas {
    /// True when no quota is set: the relay then counts nothing.
    pub fn is_unlimited(&self) -> bool {
        *self == Quotas::default()
    }
}

/// A byte count shown as the config would write it ("10MB", "1500 bytes").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (unit, scale) in [
            ("TB", 1u64 << 40),
            ("GB", 1 << 30),
            ("MB", 1 << 20),
            ("kB", 1 << 10),
        ] {
            if n >= scale && n.is_multiple_of(scale) {
                return write!(f, "{}{unit}", n / scale);
            }
        }
        write!(f, "{n} bytes")
    }
}

/// Parses "10MB", "512kB", "1GB", "100B" or "100" (bytes); units as PostgreSQL writes them
/// (1 kB = 1024 bytes), `KiB`/`MiB`/`GiB`/`TiB` accepted too.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let bad = || format!("{text:?} is not a size like \"10MB\", \"512kB\" or \"1GB\"");
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let scale: u64 = match unit.trim() {
        "" | "B" | "bytes" => 1,
        "kB" | "KB" | "KiB" => 1 << 10,
        "MB" | "MiB" => 1 << 20,
        "GB" | "GiB" => 1 << 30,
        "TB" | "TiB" => 1 << 40,
        _ => return Err(bad()),
    };
    n.checked_mul(scale).ok_or_else(bad)
}

/// Validates one role's quota keys; problems are reported under `path` (`roles.read`).
pub(super) fn validate_quotas(
    path: &str,
    rows: Option<i64>,
    statement_bytes: Option<&RawSize>,
    grant_bytes: Option<&RawSize>,
    p: &mut Problems,
) -> Quotas {
    let max_rows_per_statement = rows.and_then(|n| {
        if n < 1 {
            p.push(format!("{path}.max_rows_per_statement"), "must be at least 1");
            return None;
        }
        Some(n as u64)
    });
    let mut size = |key: &str, raw: Option<&RawSize>| {
        let key = format!("{path}.{key}");
        let bytes = match raw? {
            RawSize::Bytes(n) => u64::try_from(*n).map_err(|_| format!("{n} is not a size")),
            RawSize::Text(t) => parse_size(t),
        };
        match bytes {
            Ok(0) => {
                p.push(key, "must be greater than zero");
                None
            }
            Ok(n) => Some(n),
            Err(e) => {
                p.push(key, e);
                None
            }
        }
    };
    Quotas {
        max_rows_per_statement,
        max_result_bytes_per_statement: size("max_result_bytes_per_statement", statement_bytes),
        max_result_bytes_per_grant: size("max_result_bytes_per_grant", grant_bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_postgresql_units() {
        assert_eq!(parse_size("100"), Ok(100));
        assert_eq!(parse_size("100B"), Ok(100));
        assert_eq!(parse_size("512kB"), Ok(512 * 1024));
        assert_eq!(parse_size("10MB"), Ok(10 << 20));
        assert_eq!(parse_size("10 MB"), Ok(10 << 20));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        for bad in ["", "MB", "10 mb", "1.5MB", "-1", "10XB", "99999999999999999999TB"] {
            assert!(parse_size(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn sizes_display_as_written() {
        assert_eq!(Size(10 << 20).to_string(), "10MB");
        assert_eq!(Size(16 * 1024).to_string(), "16kB");
        assert_eq!(Size(1500).to_string(), "1500 bytes");
    }

    #[test]
    fn quotas_come_from_the_role_table_and_bad_values_are_reported_with_their_path() {
        use crate::config::testing::MINIMAL;
        use crate::config::{Config, ConfigError};
        let ok = format!(
            "{MINIMAL}        max_rows_per_statement = 1000\n        max_result_bytes_per_statement = \"10MB\"\n        max_result_bytes_per_grant = 4096\n"
        );
        let c = Config::from_toml_str(&ok).unwrap();
        assert_eq!(
            c.roles["read"].quotas,
            Quotas {
                max_rows_per_statement: Some(1000),
                max_result_bytes_per_statement: Some(10 << 20),
                max_result_bytes_per_grant: Some(4096),
            }
        );
        assert!(Config::from_toml_str(MINIMAL).unwrap().roles["read"]
            .quotas
            .is_unlimited());
        let bad = format!("{MINIMAL}        max_result_bytes_per_statement = \"ten\"\n        max_rows_per_statement = -1\n");
        let ConfigError::Invalid(problems) = Config::from_toml_str(&bad).unwrap_err() else {
            panic!("expected validation problems");
        };
        let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        assert!(
            text.iter()
                .any(|t| t.starts_with("roles.read.max_result_bytes_per_statement: \"ten\" is not a size")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|t| t.starts_with("roles.read.max_rows_per_statement: must be at least 1")),
            "{text:?}"
        );
    }

    #[test]
    fn quota_problems_name_their_key() {
        let mut p = Problems::default();
        let q = validate_quotas(
            "roles.read",
            Some(0),
            Some(&RawSize::Text("ten".into())),
            Some(&RawSize::Bytes(0)),
            &mut p,
        );
        assert!(q.is_unlimited());
        let paths: Vec<&str> = p.0.iter().map(|x| x.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "roles.read.max_rows_per_statement",
                "roles.read.max_result_bytes_per_statement",
                "roles.read.max_result_bytes_per_grant"
            ]
        );
        let mut p = Problems::default();
        let q = validate_quotas(
            "roles.read",
            Some(1000),
            Some(&RawSize::Text("16kB".into())),
            None,
            &mut p,
        );
        assert!(p.0.is_empty());
        assert_eq!(q.max_rows_per_statement, Some(1000));
        assert_eq!(q.max_result_bytes_per_statement, Some(16384));
        assert_eq!(q.max_result_bytes_per_grant, None);
    }
}
