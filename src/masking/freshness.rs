//! Whether a masking snapshot ([`super::catalog::MaskSnapshot`]) is still the target's catalog
//! (s6): a cheap fingerprint of the catalogs the snapshot is built from — per catalog, the number
//! of rows of user objects (OID ≥ 16384) and an MD5 digest of their `xmin`s in order — taken in
//! the same transaction as the snapshot and again before each statement of a masked role. Any
//! row inserted, updated or deleted by DDL (a view replaced, an operator, cast, policy, function,
//! type, column or relation created, altered, renamed or dropped) changes the row count or the
//! set of `xmin`s: a row written after the snapshot carries the ID of a transaction that had not
//! committed when it was read, which no row read then has. (s7: a sum of the `xmin`s could be
//! kept equal — a transaction opened before the snapshot and one whose ID was chosen by burning
//! IDs replace two rows whose `xmin`s add up to theirs.)
//!
//! Pure: the query text ([`fingerprint_query`]), the fingerprint read from its rows and the
//! comparison ([`compare`]); the reads are `proxy::target_catalog`'s. Must never call a
//! fingerprint current that was not read, nor one read from rows it does not expect. Its
//! comparisons name `pg_catalog`'s operators between equal types: an operator a user created
//! for other argument types (`public.>=(oid, integer)`) would be an exact match and win (s7).
//!
//! Not seen: changes to built-in objects (OID < 16384, a superuser's `CREATE OR REPLACE` of a
//! `pg_catalog` function), and DDL committed between the check and the statement's execution.

use super::catalog::Row;

/// The catalogs fingerprinted, with the condition selecting user objects' rows (an index range
/// scan on each, so the cost grows with the target's user objects, not with PostgreSQL's own).
/// `pg_depend` is left out: its rows are written with their depending object's, which is here.
///
/// Rows of other sessions' (and, s10, the reading session's own) temporary *tables* are left out (s9): every temporary table an
/// application creates changed the fingerprint and refused every masked result running meanwhile,
/// and no statement can read another session's temporary table (PostgreSQL refuses it; an object
/// outside a temporary schema cannot depend on one). Their columns, defaults, constraints,
/// policies, inheritance, row types (and those types' arrays) and indexes, sequences and toast
/// tables go with them. Everything else in a temporary schema stays in: a temporary *view* is a
/// rewrite rule any role granted USAGE on the schema and SELECT on the view can read (s9 fourth
/// attack: one replaced by its session after timebox's copy was read was judged on the copy and
/// returned the masked column in clear), and so do temporary functions, operators and types. The
/// temporary schemas' own rows are left out too (a session's first temporary table creates its
/// slot's schema; what is in a schema is counted by the catalogs above).
const CATALOGS: [(&str, &str); 17] = [
    ("pg_class", "oid OPERATOR(pg_catalog.>=) '16384'::pg_catalog.oid AND NOT oid OPERATOR(pg_catalog.=) ANY (SELECT oid FROM tmprel)"),
    (
        "pg_attribute",
        "attrelid OPERATOR(pg_catalog.>=) '16384'::pg_catalog.oid AND NOT attrelid OPERATOR(pg_catalog.=) ANY (SELECT oid FROM tmprel)",
    ),
    ("pg_attrdef", "oid OPERATOR(pg_catalog.>=) '16384'::pg_catalog.oid AND NOT adrelid OPERATOR(pg_catalog.=) ANY (SELECT oid FROM tmprel)"),
    ("pg_proc", USER_OID),
    ("pg_type", "oid OPERATOR(pg_catalog.>=) '16384'::pg_catalog.oid AND NOT oid OPERATOR(pg_catalog.=) ANY (SELECT reltype FROM tmprel) AND NOT typelem OPERATOR(pg_catalog.=) ANY (SELECT reltype FROM tmprel)"),
    ("pg_operator", USER_OID),
    ("pg_cast", USER_OID),
    ("pg_rewrite", "oid OPERATOR(pg_catalog.>=) '16384'::pg_catalog.oid AND NOT ev_class OPERATOR(pg_catalog.=) ANY (SELECT oid FROM tmprel)"),
    ("pg_policy", "NOT polrelid OPERATOR(pg_catalog.=) ANY (SELECT oid FROM tmprel)"),
    ("pg_constraint", "oid OPERATOR(pg_catalog.>=) '16384'::pg_catalog.oid AND NOT conrelid OPERATOR(pg_catalog.=) ANY (SELECT oid FROM tmprel)"),
    ("pg_namespace", "NOT (pg_catalog.starts_with(nspname::pg_catalog.text, 'pg_temp_') OR pg_catalog.starts_with(nspname::pg_catalog.text, 'pg_toast_temp_'))"),
    ("pg_inherits", "NOT inhrelid OPERATOR(pg_catalog.=) ANY (SELECT oid FROM tmprel)"),
    (
        "pg_range",
        "rngtypid OPERATOR(pg_catalog.>=) '16384'::pg_catalog.oid",
    ),
    // s11 sixth attack: an index's operator class runs its support functions on the values it
    // compares (the masked column's, in clear), and a superuser may add some to a family.
    ("pg_opclass", USER_OID),
    ("pg_opfamily", USER_OID),
    ("pg_amop", USER_OID),
    ("pg_amproc", USER_OID),
];

/// Temporary relations that are not views (`tmprel`: tables, their indexes, sequences, toast
/// tables, composite types), for [`CATALOGS`]: other sessions' and (s10) the reading session's
/// own, so that the fingerprint a masked session reads in its own transaction before a statement
/// ([`crate::proxy::relay`]'s lock prelude) is the one timebox's catalog connection reads, which
/// has no temporary schema. Temporary schemas are told by name (`pg_temp_N`, `pg_toast_temp_N`:
/// the `pg_` prefix is reserved, no user schema has it).
const TEMPORARY: &str = "WITH tmprel AS MATERIALIZED (SELECT oid, reltype FROM pg_catalog.pg_class \
     WHERE relnamespace OPERATOR(pg_catalog.=) ANY (SELECT oid FROM pg_catalog.pg_namespace \
       WHERE pg_catalog.starts_with(nspname::pg_catalog.text, 'pg_temp_') \
         OR pg_catalog.starts_with(nspname::pg_catalog.text, 'pg_toast_temp_')) \
     AND NOT relkind OPERATOR(pg_catalog.=) ANY ('{v,m}'::pg_catalog.\"char\"[])) ";

/// A user object's row: `pg_catalog`'s `>=(oid, oid)`, named (see the module's note).
const USER_OID: &str = "oid OPERATOR(pg_catalog.>=) '16384'::pg_catalog.oid";

/// The name of the prepared statement of [`fingerprint_query`] on timebox's catalog connection.
pub const FINGERPRINT_STATEMENT: &str = "timebox_catalog_fingerprint";

/// One row per catalog of [`CATALOGS`]: name, row count, MD5 of the `xmin`s in order (text
/// format; NULL without rows).
pub fn fingerprint_query() -> String {
    TEMPORARY.to_owned()
        + &CATALOGS
            .iter()
            .map(|(catalog, filter)| {
                format!(
                    "SELECT '{catalog}'::pg_catalog.text, pg_catalog.count(*), \
                 pg_catalog.md5(pg_catalog.string_agg(xmin::pg_catalog.text, ',' \
                   ORDER BY xmin::pg_catalog.text::pg_catalog.int8)) \
                 FROM pg_catalog.{catalog} WHERE {filter}"
                )
            })
            .collect::<Vec<_>>()
            .join(" UNION ALL ")
}

/// Per catalog of [`CATALOGS`] (in that order): row count and the digest of the `xmin`s (empty
/// without rows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogFingerprint(Vec<(i64, String)>);

/// Rows that are not the answer to [`fingerprint_query`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FingerprintError {
    #[error("expected one fingerprint row per catalog ({expected}), got {got}")]
    Rows { expected: usize, got: usize },
    #[error("unexpected fingerprint row for catalog {0:?}")]
    Catalog(Option<String>),
    #[error("a fingerprint value that is not a number")]
    Number,
    #[error("a fingerprint digest that is not 32 hexadecimal digits")]
    Digest,
}

impl CatalogFingerprint {
    /// A fingerprint counting `rows` rows in every catalog (unit tests of its users).
    #[cfg(test)]
    pub fn counting(rows: i64) -> CatalogFingerprint {
        CatalogFingerprint(CATALOGS.iter().map(|_| (rows, String::new())).collect())
    }

    /// From the rows of [`fingerprint_query`]: every catalog once, in order (a NULL digest: no
    /// rows).
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
                _ => Err(FingerprintError::Number),
            }
        };
        let digest = |v: Option<&Option<String>>| -> Result<String, FingerprintError> {
            match v {
                Some(Some(s)) if s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit()) => Ok(s.clone()),
                Some(None) => Ok(String::new()),
                _ => Err(FingerprintError::Digest),
            }
        };
        let mut out = Vec::with_capacity(rows.len());
        for (row, (catalog, _)) in rows.iter().zip(CATALOGS) {
            let name = row.first().cloned().flatten();
            if name.as_deref() != Some(catalog) {
                return Err(FingerprintError::Catalog(name));
            }
            out.push((number(row.get(1))?, digest(row.get(2))?));
        }
        Ok(CatalogFingerprint(out))
    }
}

impl CatalogFingerprint {
    /// The fingerprint as one text, as [`canonical_query`] computes it on the target: per catalog,
    /// by name in byte order, `name=count/digest` (an empty digest without rows), comma-separated.
    pub fn canonical(&self) -> String {
        let mut parts: Vec<(&str, String)> = CATALOGS
            .iter()
            .zip(&self.0)
            .map(|((catalog, _), (count, digest))| (*catalog, format!("{catalog}={count}/{digest}")))
            .collect();
        parts.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        parts.into_iter().map(|(_, p)| p).collect::<Vec<_>>().join(",")
    }
}

/// One row, one text: the fingerprint read now in [`CatalogFingerprint::canonical`]'s form (s10:
/// a masked session compares it with its snapshot's in its own transaction, once the relations
/// its statement reads are locked). Every operator and collation named.
pub fn canonical_query() -> String {
    format!(
        "SELECT pg_catalog.string_agg(f.c OPERATOR(pg_catalog.||) '=' OPERATOR(pg_catalog.||) \
         f.n::pg_catalog.text OPERATOR(pg_catalog.||) '/' OPERATOR(pg_catalog.||) COALESCE(f.d, ''), ',' \
         ORDER BY f.c COLLATE pg_catalog.\"C\") FROM ({}) f(c, n, d)",
        fingerprint_query()
    )
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

    /// Rows as the fingerprint query returns them; a digest given as a number (None: no rows).
    fn rows(values: &[(i64, Option<u128>)]) -> Vec<Row> {
        CATALOGS
            .iter()
            .zip(values)
            .map(|((c, _), (n, d))| {
                vec![
                    Some(c.to_string()),
                    Some(n.to_string()),
                    d.map(|d| format!("{d:032x}")),
                ]
            })
            .collect()
    }

    fn base() -> Vec<(i64, Option<u128>)> {
        (0..CATALOGS.len() as i64)
            .map(|i| (i, Some(100 * i as u128)))
            .collect()
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
        // A policy created on an empty pg_policy (NULL digest before), and a cast dropped.
        let mut empty = base();
        empty[8] = (0, None);
        let taken = CatalogFingerprint::from_rows(&rows(&empty)).unwrap();
        let mut added = empty.clone();
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
        assert_eq!(f.0[8], (0, String::new()), "no rows: a NULL digest");
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
        let mut null_count = rows(&base());
        null_count[2][1] = None;
        assert_eq!(
            CatalogFingerprint::from_rows(&null_count),
            Err(FingerprintError::Number)
        );
        for digest in [
            "123",
            "not hex but thirty-two chars ok!",
            "12345678901234567890123456789012x",
        ] {
            let mut bad = rows(&base());
            bad[3][2] = Some(digest.into());
            assert_eq!(
                CatalogFingerprint::from_rows(&bad),
                Err(FingerprintError::Digest),
                "{digest}"
            );
        }
        assert_eq!(
            CatalogFingerprint::from_rows(&[]).unwrap_err(),
            FingerprintError::Rows { expected: 17, got: 0 }
        );
    }

    /// s9: other sessions' temporary tables are not in the fingerprint (an application's
    /// temporary tables refused every masked result running meanwhile); their views, functions,
    /// operators and types are (s9 fourth attack: a temporary view another session replaced).
    #[test]
    fn other_sessions_temporary_tables_are_left_out_and_their_views_are_not() {
        let q = fingerprint_query();
        assert!(q.starts_with("WITH tmprel AS MATERIALIZED"), "{q}");
        assert!(
            q.contains("pg_catalog.starts_with(nspname::pg_catalog.text, 'pg_temp_')"),
            "{q}"
        );
        assert!(
            q.contains("NOT relkind OPERATOR(pg_catalog.=) ANY ('{v,m}'"),
            "{q}"
        );
        for (catalog, filter) in CATALOGS {
            let left_out = filter.contains("tmprel");
            let kept = matches!(
                catalog,
                "pg_proc"
                    | "pg_operator"
                    | "pg_cast"
                    | "pg_range"
                    | "pg_opclass"
                    | "pg_opfamily"
                    | "pg_amop"
                    | "pg_amproc"
            );
            if catalog == "pg_namespace" {
                assert!(filter.contains("'pg_toast_temp_'"), "{filter}");
            } else {
                assert!(left_out != kept, "{catalog}: {filter}");
            }
        }
    }

    /// s10: the text a masked session's lock prelude compares, catalogs by name.
    #[test]
    fn the_canonical_form_lists_catalogs_by_name() {
        let mut values = base();
        values[8] = (0, None);
        let f = CatalogFingerprint::from_rows(&rows(&values)).unwrap();
        let text = f.canonical();
        let names: Vec<&str> = text.split(',').map(|p| p.split('=').next().unwrap()).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        assert_eq!(names.len(), CATALOGS.len());
        assert!(text.starts_with("pg_amop=15/"), "{text}");
        assert!(text.contains(",pg_policy=0/,"), "{text}");
        assert!(text.contains(&format!("pg_rewrite=7/{:032x}", 700)), "{text}");
        let q = canonical_query();
        assert!(q.contains("COLLATE pg_catalog.\"C\""), "{q}");
        assert_eq!(
            q.matches("OPERATOR(").count(),
            q.matches("OPERATOR(pg_catalog.").count()
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

    /// Regression (s7): the sum of the `xmin`s is not in the fingerprint (it could be kept
    /// equal), and no comparison is left to operator resolution between different types (a
    /// user's `>=(oid, integer)` would be an exact match, chosen over `pg_catalog`'s).
    #[test]
    fn the_query_digests_the_xmins_and_names_its_operators() {
        let q = fingerprint_query();
        assert!(!q.contains("pg_catalog.sum("), "{q}");
        assert_eq!(
            q.matches("pg_catalog.md5(pg_catalog.string_agg(xmin").count(),
            CATALOGS.len()
        );
        assert!(!q.contains(">= 16384"), "{q}");
        for bare in [" = ", " >= ", " IN ("] {
            assert!(
                !q.contains(bare),
                "an operator left to the search_path: {bare:?} in {q}"
            );
        }
        assert_eq!(
            q.matches("OPERATOR(").count(),
            q.matches("OPERATOR(pg_catalog.").count()
        );
        for (_, filter) in CATALOGS {
            assert!(
                filter == "true"
                    || filter.starts_with("NOT ")
                    || filter.contains(" OPERATOR(pg_catalog.>=) '16384'::pg_catalog.oid"),
                "{filter}"
            );
        }
    }
}
