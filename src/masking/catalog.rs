//! Column identity from the target's catalog (issue 15 item 2): a role's masked
//! `schema.table.column`s resolved to (table OID, attribute number), with the tables that inherit
//! from them (partitions, children) and the views and materialized views that read them. Pure:
//! the query text ([`snapshot_query`]) and the snapshot built from its rows; the read itself is
//! `proxy::target_catalog`'s, on a timebox-owned connection.
//!
//! A RowDescription column is judged by [`MaskSnapshot::column`]: masked, plain, or unknown —
//! a relation created after the snapshot, a view over a masked table, or a computed or unknown
//! attribute of a masked table. Unknown is never passed: the relay fails the statement and asks
//! for a fresh snapshot.

use std::collections::{HashMap, HashSet};

use super::MaskMethod;
use crate::config::MaskRule;
use crate::policy::mask_shape::DependentView;

/// How one RowDescription column is shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnVerdict {
    Plain,
    Masked(MaskMethod),
    /// timebox cannot tell: the statement fails (why, for the log).
    Unknown(&'static str),
}

/// One target's catalog as one role's masks see it.
#[derive(Debug, Clone, Default)]
pub struct MaskSnapshot {
    /// Every table, view, materialized view, foreign table and sequence at the time of the read.
    relations: HashSet<u32>,
    masked: HashMap<(u32, i16), MaskMethod>,
    /// Masked tables (and their children) → their live attribute numbers.
    attributes: HashMap<u32, HashSet<i16>>,
    /// Views and materialized views that read a masked table or call user code, and foreign tables.
    dependents: HashSet<u32>,
    /// The role's rules plus a copy for each table inheriting from a masked one.
    pub rules: Vec<MaskRule>,
    pub views: Vec<DependentView>,
    /// Every relation's (schema, name): a name the statement check does not find here is newer
    /// than the snapshot and may be a masked table's new partition.
    pub names: HashSet<(String, String)>,
}

/// A rule's names quoted as SQL literals (they are validated identifiers; quotes doubled anyway).
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Relations whose rows come from code or data timebox cannot see into, counted as reading every
/// masked table (fail closed): views and materialized views whose rule calls a function or
/// operator outside `pg_catalog`/`information_schema` (a SQL function's body is not in
/// `pg_depend`), and foreign tables (they may read the same tables through another connection).
/// Views over these follow through `dep`'s recursion.
const HIDDEN_CODE: &str = "builtin AS (SELECT oid FROM pg_catalog.pg_namespace \
       WHERE nspname IN ('pg_catalog', 'information_schema')), \
     hidden(relid) AS (SELECT r.ev_class FROM pg_catalog.pg_depend p \
       JOIN pg_catalog.pg_rewrite r ON r.oid = p.objid \
       LEFT JOIN pg_catalog.pg_proc f ON p.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass \
         AND f.oid = p.refobjid \
       LEFT JOIN pg_catalog.pg_operator o \
         ON p.refclassid = 'pg_catalog.pg_operator'::pg_catalog.regclass AND o.oid = p.refobjid \
       LEFT JOIN pg_catalog.pg_proc oc ON oc.oid = o.oprcode \
       WHERE p.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass \
         AND (f.pronamespace NOT IN (SELECT oid FROM builtin) \
           OR o.oprnamespace NOT IN (SELECT oid FROM builtin) \
           OR oc.pronamespace NOT IN (SELECT oid FROM builtin)) \
       UNION SELECT oid FROM pg_catalog.pg_class WHERE relkind = 'f')";

/// The three statements read in one simple Query: the masked tables' attributes (rule index,
/// relid, schema, table, attnum, whether it is the masked column), the views over them (rule
/// index, relid, schema, name; for each view first the rule of a column it names itself, so that
/// a denial names that column) and every relation OID.
pub fn snapshot_query(rules: &[MaskRule]) -> String {
    let values: Vec<String> = rules
        .iter()
        .enumerate()
        .map(|(i, r)| {
            format!(
                "({i}, {}, {}, {})",
                literal(&r.schema),
                literal(&r.table),
                literal(&r.column)
            )
        })
        .collect();
    let cte = format!(
        "WITH RECURSIVE m(i, nsp, rel, col) AS (VALUES {}), \
         base AS (SELECT m.i, c.oid AS relid, m.col FROM m \
           JOIN pg_catalog.pg_namespace n ON n.nspname = m.nsp \
           JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = m.rel), \
         tree(i, relid, col) AS (SELECT i, relid, col FROM base UNION \
           SELECT t.i, h.inhrelid, t.col FROM tree t JOIN pg_catalog.pg_inherits h ON h.inhparent = t.relid)",
        values.join(", ")
    );
    format!(
        "{cte} SELECT t.i, t.relid, n.nspname, c.relname, a.attnum, a.attname = t.col FROM tree t \
           JOIN pg_catalog.pg_class c ON c.oid = t.relid \
           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
           JOIN pg_catalog.pg_attribute a ON a.attrelid = t.relid AND a.attnum > 0 AND NOT a.attisdropped; \
         {cte}, {HIDDEN_CODE}, dep(i, relid) AS (SELECT i, relid FROM tree UNION \
           SELECT (SELECT pg_catalog.min(i) FROM m), relid FROM hidden UNION \
           SELECT d.i, r.ev_class FROM dep d \
           JOIN pg_catalog.pg_depend p ON p.refobjid = d.relid \
             AND p.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass \
             AND p.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass \
           JOIN pg_catalog.pg_rewrite r ON r.oid = p.objid WHERE r.ev_class <> d.relid) \
         SELECT v.i, v.relid, v.nspname, v.relname FROM (SELECT DISTINCT d.i, d.relid, n.nspname, c.relname \
           FROM dep d JOIN pg_catalog.pg_class c ON c.oid = d.relid \
           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('v', 'm', 'f')) v \
         ORDER BY v.relid, NOT EXISTS (SELECT 1 FROM tree t \
           JOIN pg_catalog.pg_attribute a ON a.attrelid = t.relid AND a.attname = t.col \
           JOIN pg_catalog.pg_depend p ON p.refobjid = t.relid AND p.refobjsubid = a.attnum \
             AND p.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass \
             AND p.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass \
           JOIN pg_catalog.pg_rewrite r ON r.oid = p.objid WHERE t.i = v.i AND r.ev_class = v.relid), v.i; \
         SELECT c.oid, n.nspname, c.relname FROM pg_catalog.pg_class c \
           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')"
    )
}

/// One row of a result set in text format.
pub type Row = Vec<Option<String>>;

/// A row the snapshot query does not return.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unexpected row in the masking catalog answer: {0}")]
pub struct SnapshotError(&'static str);

impl MaskSnapshot {
    /// From the three result sets of [`snapshot_query`].
    pub fn from_rows(rules: &[MaskRule], sets: &[Vec<Row>]) -> Result<MaskSnapshot, SnapshotError> {
        let [attrs, views, relations] = sets else {
            return Err(SnapshotError("expected three result sets"));
        };
        let get = |row: &Row, i: usize| row.get(i).cloned().flatten().ok_or(SnapshotError("a NULL"));
        let num = |row: &Row, i: usize| -> Result<i64, SnapshotError> {
            get(row, i)?.parse().map_err(|_| SnapshotError("not a number"))
        };
        let mut s = MaskSnapshot {
            rules: rules.to_vec(),
            ..MaskSnapshot::default()
        };
        for row in attrs {
            let rule = rules
                .get(num(row, 0)? as usize)
                .ok_or(SnapshotError("rule index"))?;
            let relid = num(row, 1)? as u32;
            let attnum = num(row, 4)? as i16;
            s.attributes.entry(relid).or_default().insert(attnum);
            if get(row, 5)? == "t" {
                s.masked.insert((relid, attnum), rule.method);
                let (schema, table) = (get(row, 2)?, get(row, 3)?);
                let copy = MaskRule {
                    schema,
                    table,
                    ..rule.clone()
                };
                if !s.rules.contains(&copy) {
                    s.rules.push(copy);
                }
            }
        }
        for row in views {
            let rule = rules
                .get(num(row, 0)? as usize)
                .ok_or(SnapshotError("rule index"))?;
            s.dependents.insert(num(row, 1)? as u32);
            s.views.push(DependentView {
                schema: get(row, 2)?,
                name: get(row, 3)?,
                masked_column: rule.qualified(),
            });
        }
        for row in relations {
            s.relations.insert(num(row, 0)? as u32);
            s.names.insert((get(row, 1)?, get(row, 2)?));
        }
        Ok(s)
    }

    /// How a RowDescription column with this table OID and attribute number is shown.
    pub fn column(&self, table: u32, attnum: i16) -> ColumnVerdict {
        if table == 0 {
            return ColumnVerdict::Plain;
        }
        if !self.relations.contains(&table) {
            return ColumnVerdict::Unknown("a relation newer than timebox's copy of the catalog");
        }
        if self.dependents.contains(&table) {
            return ColumnVerdict::Unknown("a view over a masked table");
        }
        let Some(attributes) = self.attributes.get(&table) else {
            return ColumnVerdict::Plain;
        };
        match self.masked.get(&(table, attnum)) {
            Some(m) => ColumnVerdict::Masked(*m),
            None if attnum < 0 || attributes.contains(&attnum) => ColumnVerdict::Plain,
            None => ColumnVerdict::Unknown("a computed or unknown column of a masked table"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule() -> MaskRule {
        MaskRule {
            schema: "public".into(),
            table: "customers".into(),
            column: "email".into(),
            method: MaskMethod::Email,
        }
    }

    fn row(v: &[&str]) -> Row {
        v.iter().map(|s| Some(s.to_string())).collect()
    }

    #[test]
    fn columns_are_judged_by_identity_and_unknown_ones_fail_closed() {
        let attrs = vec![
            row(&["0", "100", "public", "customers", "1", "f"]),
            row(&["0", "100", "public", "customers", "2", "t"]),
            row(&["0", "101", "public", "customers_2026", "2", "t"]),
        ];
        let views = vec![row(&["0", "200", "public", "customer_emails"])];
        let rels = ["100", "101", "200", "300"]
            .iter()
            .map(|o| row(&[o, "public", "t"]))
            .collect();
        let s = MaskSnapshot::from_rows(&[rule()], &[attrs, views, rels]).unwrap();
        assert_eq!(s.column(100, 2), ColumnVerdict::Masked(MaskMethod::Email));
        assert_eq!(
            s.column(101, 2),
            ColumnVerdict::Masked(MaskMethod::Email),
            "a partition"
        );
        assert_eq!(s.column(100, 1), ColumnVerdict::Plain);
        assert_eq!(s.column(100, -1), ColumnVerdict::Plain, "a system column");
        assert_eq!(s.column(300, 5), ColumnVerdict::Plain);
        assert_eq!(s.column(0, 0), ColumnVerdict::Plain, "computed, not from a table");
        assert!(matches!(s.column(100, 0), ColumnVerdict::Unknown(_)));
        assert!(
            matches!(s.column(100, 3), ColumnVerdict::Unknown(_)),
            "added after the read"
        );
        assert!(matches!(s.column(200, 1), ColumnVerdict::Unknown(_)), "a view");
        assert!(
            matches!(s.column(999, 1), ColumnVerdict::Unknown(_)),
            "a newer relation"
        );
        assert!(s.rules.iter().any(|r| r.table == "customers_2026"));
        assert_eq!(s.views[0].masked_column, "public.customers.email");
        assert!(MaskSnapshot::from_rows(&[rule()], &[]).is_err());
    }
}
