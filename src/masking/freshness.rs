//! Whether a masking snapshot ([`super::catalog::MaskSnapshot`]) is still the target's catalog
//! (s6): a cheap fingerprint of the catalogs the snapshot is built from — per catalog, the number
//! of rows of user objects (OID ≥ 16384) and the sum of their `xmin` — taken in the same
//! transaction as the snapshot and again before each statement of a masked role. Any row
//! inserted, updated or deleted by DDL (a view replaced, an operator, cast, policy, function,
//! type, column or relation created, altered, renamed or dropped) changes the row count or the
//! `xmin` sum: a committed change always carries a newer transaction ID.
//!
//! Pure: the query text ([`fingerprint_query`]), the fingerprint read from its rows and the
//! comparison ([`compare`]); the reads are `proxy::target_catalog`'s. Must never call a
//! fingerprint current that was not read, nor one read from rows it does not expect.
//!
//! Not seen: changes to built-in objects (OID < 16384, a superuser's `CREATE OR REPLACE` of a
//! `pg_catalog` function), and DDL committed between the check and the statement's execution.

use super::catalog::Row;

/// The catalogs fingerprinted, with the condition selecting user objects' rows (an index range
/// scan on each, so the cost grows with the target's user objects, not with PostgreSQL's own).
/// `pg_depend` is left out: its rows are written with their depending object's, which is here.
const CATALOGS: [(&str, &str); 13] = [
    ("pg_class", "oid >= 16384"),
    ("pg_attribute", "attrelid >= 16384"),
    ("pg_attrdef", "oid >= 16384"),
    ("pg_proc", "oid >= 16384"),
    ("pg_type", "oid >= 16384"),
    ("pg_operator", "oid >= 16384"),
    ("pg_cast", "oid >= 16384"),
    ("pg_rewrite", "oid >= 16384"),
    ("pg_policy", "true"),
    ("pg_constraint", "oid >= 16384"),
    ("pg_namespace", "true"),
    ("pg_inherits", "true"),
    ("pg_range", "rngtypid >= 16384"),
];

/// The name of the prepared statement of [`fingerprint_query`] on timebox's catalog connection.
pub const FINGERPRINT_STATEMENT: &str = "timebox_catalog_fingerprint";

/// One row per catalog of [`CATALOGS`]: name, row count, sum of `xmin` (text format).
pub fn fingerprint_query() -> String {
    CATALOGS
        .iter()
        .map(|(catalog, filter)| {
            format!(
                "SELECT '{catalog}'::pg_catalog.text, pg_catalog.count(*), \
                 pg_catalog.sum(xmin::pg_catalog.text::pg_catalog.int8) FROM pg_catalog.{catalog} WHERE {filter}"
            )
        })
        .collect::<Vec<_>>()
        .join(" UNION ALL ")
}

/// Per catalog of [`CATALOGS`] (in that order): row count and `xmin` sum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogFingerprint(Vec<(i64, i64)>);

/// Rows that are not the answer to [`fingerprint_query`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FingerprintError {
    #[error("expected one fingerprint row per catalog ({expected}), got {got}")]
    Rows { expected: usize, got: usize },
    #[error("unexpected fingerprint row for catalog {0:?}")]
    Catalog(Option<String>),
    #[error("a fingerprint value that is not a number")]
    Number,
}

impl CatalogFingerprint {
    /// From the rows of [`fingerprint_query`]: every catalog once, in order (a NULL sum: no rows).
    pub fn from_rows(rows: &[Row]) -> Result<CatalogFingerprint, FingerprintError> {
        if rows.len() != CATALOGS.len() {
            return Err(FingerprintError::Rows {
                expected: CATALOGS.len(),
                got: rows.len(),
            });
        }
        let number = |v: Option<&Option<String>>| -> Result<i64, FingerprintError> {
            match v {
                Some(Some(s)) => s.parse().map_err(|_| FingerprintError::Number),
                Some(None) => Ok(0),
                None => Err(FingerprintError::Number),
            }
        };
        let mut out = Vec::with_capacity(rows.len());
        for (row, (catalog, _)) in rows.iter().zip(CATALOGS) {
            let name = row.first().cloned().flatten();
            if name.as_deref() != Some(catalog) {
                return Err(FingerprintError::Catalog(name));
            }
            out.push((number(row.get(1))?, number(row.get(2))?));
        }
        Ok(CatalogFingerprint(out))
    }
}

/// What a fingerprint read before a statement says about the snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Freshness {
    /// The snapshot is the catalog as it is now: check the statement against it.
    Current,
    /// The catalog changed since (these catalogs), or the snapshot has no fingerprint: read the
    /// snapshot again before checking the statement.
    Changed(Vec<&'static str>),
}

/// Compares the fingerprint taken with the snapshot (`None`: none was) with one read now.
pub fn compare(taken: Option<&CatalogFingerprint>, now: &CatalogFingerprint) -> Freshness {
    let Some(taken) = taken else {
        return Freshness::Changed(CATALOGS.iter().map(|(c, _)| *c).collect());
    };
    let changed: Vec<&'static str> = CATALOGS
        .iter()
        .enumerate()
        .filter(|(i, _)| taken.0.get(*i) != now.0.get(*i))
        .map(|(_, (c, _))| *c)
        .collect();
    if changed.is_empty() && taken.0.len() == now.0.len() {
        Freshness::Current
    } else {
        Freshness::Changed(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(values: &[(i64, Option<i64>)]) -> Vec<Row> {
        CATALOGS
            .iter()
            .zip(values)
            .map(|((c, _), (n, s))| vec![Some(c.to_string()), Some(n.to_string()), s.map(|s| s.to_string())])
            .collect()
    }

    fn base() -> Vec<(i64, Option<i64>)> {
        (0..CATALOGS.len() as i64).map(|i| (i, Some(100 * i))).collect()
    }

    #[test]
    fn a_fingerprint_is_current_only_when_every_catalog_matches() {
        let taken = CatalogFingerprint::from_rows(&rows(&base())).unwrap();
        let same = CatalogFingerprint::from_rows(&rows(&base())).unwrap();
        assert_eq!(compare(Some(&taken), &same), Freshness::Current);
        // A view replaced: pg_rewrite's row has a newer xmin, same count.
        let mut replaced = base();
        replaced[7].1 = Some(replaced[7].1.unwrap() + 5);
        let now = CatalogFingerprint::from_rows(&rows(&replaced)).unwrap();
        assert_eq!(
            compare(Some(&taken), &now),
            Freshness::Changed(vec!["pg_rewrite"])
        );
        // A policy created on an empty pg_policy (NULL sum before), and a cast dropped.
        let mut added = base();
        added[8] = (1, Some(900));
        added[6].0 -= 1;
        let now = CatalogFingerprint::from_rows(&rows(&added)).unwrap();
        assert_eq!(
            compare(Some(&taken), &now),
            Freshness::Changed(vec!["pg_cast", "pg_policy"])
        );
        // A snapshot without a fingerprint is never current (fail closed).
        assert!(matches!(compare(None, &same), Freshness::Changed(c) if c.len() == CATALOGS.len()));
    }

    #[test]
    fn rows_that_are_not_the_fingerprint_are_refused() {
        let mut empty = base();
        empty[8] = (0, None);
        let f = CatalogFingerprint::from_rows(&rows(&empty)).unwrap();
        assert_eq!(f.0[8], (0, 0), "no rows: a NULL sum");
        assert!(matches!(
            CatalogFingerprint::from_rows(&rows(&base())[1..]),
            Err(FingerprintError::Rows { .. })
        ));
        let mut swapped = rows(&base());
        swapped.swap(0, 1);
        assert!(matches!(
            CatalogFingerprint::from_rows(&swapped),
            Err(FingerprintError::Catalog(_))
        ));
        let mut bad = rows(&base());
        bad[2][1] = Some("many".into());
        assert_eq!(CatalogFingerprint::from_rows(&bad), Err(FingerprintError::Number));
        assert_eq!(
            CatalogFingerprint::from_rows(&[]).unwrap_err(),
            FingerprintError::Rows { expected: 13, got: 0 }
        );
    }

    #[test]
    fn the_query_reads_every_catalog_once_in_order() {
        let q = fingerprint_query();
        for (c, filter) in CATALOGS {
            assert_eq!(
                q.matches(&format!("FROM pg_catalog.{c} WHERE {filter}")).count(),
                1,
                "{c}"
            );
        }
        assert_eq!(q.matches("UNION ALL").count(), CATALOGS.len() - 1);
    }
}
