//! Column identity from the target's catalog (issue 15 item 2): a role's masked
//! `schema.table.column`s resolved to (table OID, attribute number), with the tables that inherit
//! from them (partitions, children) and the views and materialized views that read them. Pure:
//! the query text ([`snapshot_query`]) and the snapshot built from its rows; the read itself is
//! `proxy::target_catalog`'s, on a timebox-owned connection. A column resolved once is followed by
//! identity at the next read ([`MaskSnapshot::pins`]: a table renamed or moved to another schema, a
//! column renamed, keeps its mask); a rule that resolves to no column is recorded
//! ([`MaskSnapshot::unmatched`]) and the role's statements are refused (s8).
//!
//! A RowDescription column is judged by [`MaskSnapshot::column`]: masked, plain, or unknown —
//! a relation created after the snapshot, a view over a masked table, or a computed or unknown
//! attribute of a masked table. Unknown is never passed: the relay fails the statement and asks
//! for a fresh snapshot.

use std::collections::{HashMap, HashSet};

use super::MaskMethod;
use crate::config::MaskRule;
use crate::policy::mask_shape::{DependentView, TypeCode, QUERY_RUNNING_BUILTINS, STATISTICS_RELATIONS};

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
    /// The role's rules (first, in config order) plus a copy under the current names of each
    /// masked column found: a table inheriting from a masked one, a renamed table or column.
    pub rules: Vec<MaskRule>,
    /// (config rule index, table OID, attribute number) of every masked column this read resolved
    /// (base matches and their inheritance trees): the next read follows them by identity, so a
    /// table renamed or moved to another schema, or a column renamed, keeps its mask.
    pub pins: Vec<(usize, u32, i16)>,
    /// Indices of the config rules that resolved to no column on the target (a renamed or dropped
    /// table or column, or a typo): the role's statements are refused while any is (fail closed).
    pub unmatched: Vec<usize>,
    pub views: Vec<DependentView>,
    /// Every relation's (schema, name): a name the statement check does not find here is newer
    /// than the snapshot and may be a masked table's new partition.
    pub names: HashSet<(String, String)>,
    /// Types, casts and relations through which user code runs; `None` when not read (the
    /// statement check then refuses every type name: fail closed).
    pub types: Option<TypeCode>,
    /// The catalogs' fingerprint read in the same transaction (`None`: not read; the snapshot is
    /// then never taken as current, see [`super::freshness::compare`]).
    pub fingerprint: Option<super::freshness::CatalogFingerprint>,
}

/// A rule's names quoted as SQL literals (they are validated identifiers; quotes doubled anyway).
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Relations whose rows come from code or data timebox cannot see into, counted as reading every
/// masked table (fail closed): views and materialized views whose rule calls a function or
/// operator outside `pg_catalog`/`information_schema` (a SQL function's body is not in
/// `pg_depend`), calls a built-in that runs a query text or reads a relation, schema or database
/// by name ([`QUERY_RUNNING_BUILTINS`]: built-ins are pinned, so their calls are found in the
/// rule's node tree, not in `pg_depend`), or coerces to a type whose domain, cast or operator runs
/// such code (`code_type`, see [`CODE_TYPES`]); foreign tables (they may read the same tables
/// through another connection); user views and materialized views reading statistics
/// ([`STATISTICS_RELATIONS`]: sample values of every column the reader may select; s7) — found
/// in the rule's node tree, as `pg_statistic` is pinned; and relations whose row security policy
/// reads a masked column or a whole masked table (`policy_reads`: its error could quote the value,
/// `USING (email::int > 0)`; s7). Views over these follow through `dep`'s recursion.
const HIDDEN_CODE: &str = "policy_reads(relid) AS (SELECT p.polrelid FROM pg_catalog.pg_policy p \
       JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_policy'::pg_catalog.regclass::pg_catalog.oid \
         AND d.objid = p.oid AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass::pg_catalog.oid \
         AND d.deptype = 'n' \
       JOIN tree t ON t.relid = d.refobjid \
       WHERE d.refobjsubid = 0 OR d.refobjsubid IN (SELECT a.attnum FROM pg_catalog.pg_attribute a \
         WHERE a.attrelid = t.relid AND a.attname = t.col)), \
     hidden(relid) AS (SELECT r.ev_class FROM pg_catalog.pg_depend p \
       JOIN pg_catalog.pg_rewrite r ON r.oid = p.objid \
       WHERE p.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass::pg_catalog.oid \
         AND ((p.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass::pg_catalog.oid \
             AND p.refobjid IN (SELECT oid FROM unsafe_proc)) \
           OR (p.refclassid = 'pg_catalog.pg_operator'::pg_catalog.regclass::pg_catalog.oid \
             AND p.refobjid IN (SELECT oid FROM unsafe_op)) \
           OR (p.refclassid = 'pg_catalog.pg_type'::pg_catalog.regclass::pg_catalog.oid \
             AND p.refobjid IN (SELECT oid FROM code_type))) \
       UNION SELECT r.ev_class FROM pg_catalog.pg_rewrite r \
         WHERE r.ev_action::pg_catalog.text OPERATOR(pg_catalog.~) (SELECT ':funcid (' \
           OPERATOR(pg_catalog.||) pg_catalog.string_agg(oid::pg_catalog.text, '|') \
           OPERATOR(pg_catalog.||) ') ' FROM query_running) \
       UNION SELECT oid FROM pg_catalog.pg_class WHERE relkind = 'f' \
       UNION SELECT r.ev_class FROM pg_catalog.pg_rewrite r \
         WHERE r.ev_class OPERATOR(pg_catalog.>=) '16384'::pg_catalog.oid \
           AND r.ev_action::pg_catalog.text OPERATOR(pg_catalog.~) (SELECT ':relid (' \
             OPERATOR(pg_catalog.||) pg_catalog.string_agg(oid::pg_catalog.text, '|') \
             OPERATOR(pg_catalog.||) ') ' FROM pg_catalog.pg_class \
             WHERE relnamespace = 'pg_catalog'::pg_catalog.regnamespace::pg_catalog.oid AND relname IN (STATISTICS)) \
       UNION SELECT relid FROM policy_reads)";

/// Types whose values reach code timebox cannot see (`code_type`), for [`HIDDEN_CODE`] and the
/// fourth statement of [`snapshot_query`]. `unsafe_proc`: functions outside
/// `pg_catalog`/`information_schema` and the query-running built-ins; `unsafe_op`: operators
/// outside them or implemented by such a function. The roots are domains whose default or
/// CHECK calls such a function or operator (in `pg_depend`) or a query-running built-in (in the
/// constraint's node tree), and the user types on either side of a cast through such a function
/// or of such an operator; `code_type` closes them over domains, arrays, composite types and
/// table row types with such a column, and ranges.
const CODE_TYPES: &str = "builtin AS (SELECT oid FROM pg_catalog.pg_namespace \
       WHERE nspname IN ('pg_catalog', 'information_schema')), \
     query_running AS (SELECT oid FROM pg_catalog.pg_proc \
       WHERE pronamespace = 'pg_catalog'::pg_catalog.regnamespace::pg_catalog.oid AND proname IN (QUERY_RUNNING)), \
     unsafe_proc AS (SELECT oid FROM pg_catalog.pg_proc WHERE pronamespace NOT IN (SELECT oid FROM builtin) \
         OR oid OPERATOR(pg_catalog.>=) '16384'::pg_catalog.oid \
       UNION SELECT oid FROM query_running), \
     unsafe_op AS (SELECT oid, oprleft, oprright FROM pg_catalog.pg_operator \
       WHERE oprnamespace NOT IN (SELECT oid FROM builtin) \
         OR oprcode::pg_catalog.oid IN (SELECT oid FROM unsafe_proc)), \
     user_type AS (SELECT oid FROM pg_catalog.pg_type WHERE typnamespace NOT IN (SELECT oid FROM builtin)), \
     user_cast AS (SELECT castsource, casttarget, castfunc, castcontext FROM pg_catalog.pg_cast \
       WHERE castfunc IN (SELECT oid FROM unsafe_proc)), \
     code_root(oid) AS (SELECT t.oid FROM pg_catalog.pg_type t WHERE t.typtype IN ('d', 'r') \
         AND EXISTS (SELECT 1 FROM pg_catalog.pg_depend d \
           WHERE ((d.classid = 'pg_catalog.pg_type'::pg_catalog.regclass::pg_catalog.oid AND d.objid = t.oid) \
               OR (d.classid = 'pg_catalog.pg_constraint'::pg_catalog.regclass::pg_catalog.oid AND d.objid IN \
                 (SELECT c.oid FROM pg_catalog.pg_constraint c WHERE c.contypid = t.oid))) \
             AND ((d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass::pg_catalog.oid \
                 AND d.refobjid IN (SELECT oid FROM unsafe_proc)) \
               OR (d.refclassid = 'pg_catalog.pg_operator'::pg_catalog.regclass::pg_catalog.oid \
                 AND d.refobjid IN (SELECT oid FROM unsafe_op)))) \
       UNION SELECT c.contypid FROM pg_catalog.pg_constraint c WHERE c.contypid <> '0'::pg_catalog.oid \
         AND c.conbin::pg_catalog.text OPERATOR(pg_catalog.~) (SELECT ':funcid (' \
           OPERATOR(pg_catalog.||) pg_catalog.string_agg(oid::pg_catalog.text, '|') \
           OPERATOR(pg_catalog.||) ') ' FROM query_running) \
       UNION SELECT castsource FROM user_cast UNION SELECT casttarget FROM user_cast \
       UNION SELECT oprleft FROM unsafe_op UNION SELECT oprright FROM unsafe_op), \
     type_edge(child, parent) AS (SELECT oid, typbasetype FROM pg_catalog.pg_type WHERE typbasetype <> '0'::pg_catalog.oid \
       UNION ALL SELECT oid, typelem FROM pg_catalog.pg_type WHERE typelem <> '0'::pg_catalog.oid \
       UNION ALL SELECT c.reltype, a.atttypid FROM pg_catalog.pg_class c \
         JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid \
           AND a.attnum OPERATOR(pg_catalog.>) '0'::pg_catalog.int2 AND NOT a.attisdropped \
         WHERE c.reltype <> '0'::pg_catalog.oid \
       UNION ALL SELECT rngtypid, rngsubtype FROM pg_catalog.pg_range \
       UNION ALL SELECT rngmultitypid, rngsubtype FROM pg_catalog.pg_range \
       UNION ALL SELECT c.contypid, d.refobjid FROM pg_catalog.pg_constraint c \
         JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_constraint'::pg_catalog.regclass::pg_catalog.oid \
           AND d.objid = c.oid AND d.refclassid = 'pg_catalog.pg_type'::pg_catalog.regclass::pg_catalog.oid \
         WHERE c.contypid <> '0'::pg_catalog.oid), \
     code_type(oid) AS (SELECT oid FROM code_root WHERE oid IN (SELECT oid FROM user_type) \
       UNION SELECT e.child FROM code_type r JOIN type_edge e ON e.parent = r.oid)";

/// User types whose definition can change while a statement runs without a lock timebox's
/// lock block could hold (`mutable_type`, for the fourth statement of [`snapshot_query`]; s11):
/// domains (`ALTER DOMAIN … ADD CHECK` locks no table a reader holds against it) and composite
/// types (a table's row type is altered with the table, a standalone one with `ALTER TYPE`), and
/// every type built from them. A value converted to one at run time (`json_populate_record`,
/// `record_in`, a column definition list) is checked against the definition of that moment.
const MUTABLE_TYPES: &str = "mutable_type(oid) AS (SELECT oid FROM pg_catalog.pg_type \
       WHERE typtype IN ('d', 'c') AND oid IN (SELECT oid FROM user_type) \
       UNION SELECT e.child FROM mutable_type r JOIN type_edge e ON e.parent = r.oid)";

/// Operator classes that run code written in a procedural language (`user_opclass`, s11 sixth
/// attack): a family with a support function, or an operator implemented by one, not in C or
/// `internal` — PL/pgSQL, SQL, … code that reads tables as the session's user. An index or a
/// partition key using one runs that code on the values it compares — a masked column's, in
/// clear — whenever the planner or executor searches it, without the statement naming it.
/// (Creating an operator class or adding to a family takes a superuser; C code — the opclasses of
/// extensions such as `pg_trgm` — is as trusted as the superuser who installed it.)
const USER_OPCLASSES: &str = "pl_proc AS (SELECT oid FROM pg_catalog.pg_proc \
       WHERE prolang NOT IN (SELECT oid FROM pg_catalog.pg_language WHERE lanname IN ('c', 'internal'))), \
     user_opclass(oid) AS (SELECT oid FROM pg_catalog.pg_opclass \
       WHERE opcfamily IN (SELECT amprocfamily FROM pg_catalog.pg_amproc WHERE amproc::pg_catalog.oid IN (SELECT oid FROM pl_proc)) \
         OR opcfamily IN (SELECT a.amopfamily FROM pg_catalog.pg_amop a \
           JOIN pg_catalog.pg_operator o ON o.oid OPERATOR(pg_catalog.=) a.amopopr \
           WHERE o.oprcode::pg_catalog.oid IN (SELECT oid FROM pl_proc)))";

/// Relations that run user code when read (`code_rel_up`, for the fourth statement of
/// [`snapshot_query`]; detail: why): a row type that is a [`CODE_TYPES`] type, a row security
/// policy calling such code, (s11 sixth attack) an index or a partition key comparing with an
/// operator class of [`USER_OPCLASSES`] — the planner and executor call its support functions on
/// the values they compare, a masked column's in clear, without the statement naming them —, (s11
/// eighth attack) an index expression or predicate, a statistics object, a CHECK constraint or a
/// partition key calling a procedural-language function (`pl_dep`: the planner folds IMMUTABLE
/// calls with constant arguments when it reads them, for any statement reading the relation), a
/// view whose rule converts values to a user domain (a CHECK added to it while a statement waits
/// runs at that statement's start: `ALTER DOMAIN` takes no lock a reader holds), and,
/// but for a row type (only a whole-row value of the relation itself converts it; a view over it
/// selecting plain columns is plain), every view and inheritance or partition parent reading one
/// (its code runs when they are read).
const CODE_RELATIONS: &str = "pl_dep(classid, objid, objsubid) AS (SELECT classid, objid, objsubid FROM pg_catalog.pg_depend \
       WHERE (refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass::pg_catalog.oid \
           AND refobjid IN (SELECT oid FROM pl_proc)) \
         OR (refclassid = 'pg_catalog.pg_operator'::pg_catalog.regclass::pg_catalog.oid \
           AND refobjid IN (SELECT o.oid FROM pg_catalog.pg_operator o \
             WHERE o.oprcode::pg_catalog.oid IN (SELECT oid FROM pl_proc))) \
         OR (refclassid = 'pg_catalog.pg_type'::pg_catalog.regclass::pg_catalog.oid \
           AND refobjid IN (SELECT oid FROM code_type))), \
     code_rel(relid, why) AS (SELECT x.indrelid, 'its index ' OPERATOR(pg_catalog.||) xi.relname::pg_catalog.text \
         OPERATOR(pg_catalog.||) ' compares with an operator class of user code' \
       FROM pg_catalog.pg_index x JOIN pg_catalog.pg_class xi ON xi.oid OPERATOR(pg_catalog.=) x.indexrelid \
       WHERE EXISTS (SELECT 1 FROM pg_catalog.unnest(x.indclass::pg_catalog.oid[]) u(o) \
         WHERE u.o IN (SELECT oid FROM user_opclass)) \
     UNION ALL SELECT p.partrelid, 'its partition key compares with an operator class of user code' \
       FROM pg_catalog.pg_partitioned_table p \
       WHERE EXISTS (SELECT 1 FROM pg_catalog.unnest(p.partclass::pg_catalog.oid[]) u(o) \
         WHERE u.o IN (SELECT oid FROM user_opclass)) \
     UNION ALL SELECT x.indrelid, 'its index ' OPERATOR(pg_catalog.||) xi.relname::pg_catalog.text \
         OPERATOR(pg_catalog.||) ' computes with user code' \
       FROM pg_catalog.pg_index x JOIN pg_catalog.pg_class xi ON xi.oid OPERATOR(pg_catalog.=) x.indexrelid \
       WHERE x.indexrelid IN (SELECT objid FROM pl_dep \
         WHERE classid = 'pg_catalog.pg_class'::pg_catalog.regclass::pg_catalog.oid) \
     UNION ALL SELECT x.stxrelid, 'its statistics object ' OPERATOR(pg_catalog.||) x.stxname::pg_catalog.text \
         OPERATOR(pg_catalog.||) ' computes with user code' \
       FROM pg_catalog.pg_statistic_ext x \
       WHERE x.oid IN (SELECT objid FROM pl_dep \
         WHERE classid = 'pg_catalog.pg_statistic_ext'::pg_catalog.regclass::pg_catalog.oid) \
     UNION ALL SELECT x.conrelid, 'its constraint ' OPERATOR(pg_catalog.||) x.conname::pg_catalog.text \
         OPERATOR(pg_catalog.||) ' computes with user code' \
       FROM pg_catalog.pg_constraint x \
       WHERE x.conrelid <> '0'::pg_catalog.oid AND x.oid IN (SELECT objid FROM pl_dep \
         WHERE classid = 'pg_catalog.pg_constraint'::pg_catalog.regclass::pg_catalog.oid) \
     UNION ALL SELECT x.partrelid, 'its partition key computes with user code' \
       FROM pg_catalog.pg_partitioned_table x \
       WHERE x.partrelid IN (SELECT objid FROM pl_dep \
         WHERE classid = 'pg_catalog.pg_class'::pg_catalog.regclass::pg_catalog.oid AND objsubid = 0) \
     UNION ALL SELECT r.ev_class, 'its rule converts values to domain ' OPERATOR(pg_catalog.||) \
         t.typname::pg_catalog.text OPERATOR(pg_catalog.||) ', whose CHECK can change while a statement runs' \
       FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_rewrite r ON r.oid OPERATOR(pg_catalog.=) d.objid \
       JOIN pg_catalog.pg_type t ON t.oid OPERATOR(pg_catalog.=) d.refobjid \
       WHERE d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass::pg_catalog.oid \
         AND d.refclassid = 'pg_catalog.pg_type'::pg_catalog.regclass::pg_catalog.oid \
         AND t.typtype = 'd' AND t.oid IN (SELECT oid FROM user_type) \
     UNION ALL SELECT p.polrelid, \
         'its row security policy ' OPERATOR(pg_catalog.||) p.polname OPERATOR(pg_catalog.||) ' runs user code' \
       FROM pg_catalog.pg_policy p \
       WHERE EXISTS (SELECT 1 FROM pg_catalog.pg_depend d \
           WHERE d.classid = 'pg_catalog.pg_policy'::pg_catalog.regclass::pg_catalog.oid AND d.objid = p.oid \
             AND ((d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass::pg_catalog.oid \
                 AND d.refobjid IN (SELECT oid FROM unsafe_proc)) \
               OR (d.refclassid = 'pg_catalog.pg_operator'::pg_catalog.regclass::pg_catalog.oid \
                 AND d.refobjid IN (SELECT oid FROM unsafe_op)) \
               OR (d.refclassid = 'pg_catalog.pg_type'::pg_catalog.regclass::pg_catalog.oid \
                 AND d.refobjid IN (SELECT oid FROM code_type)))) \
         OR pg_catalog.concat(p.polqual, p.polwithcheck) OPERATOR(pg_catalog.~) (SELECT ':funcid (' \
           OPERATOR(pg_catalog.||) pg_catalog.string_agg(oid::pg_catalog.text, '|') \
           OPERATOR(pg_catalog.||) ') ' FROM query_running)), \
     rel_edge(reader, child) AS (SELECT r.ev_class, d.refobjid FROM pg_catalog.pg_depend d \
         JOIN pg_catalog.pg_rewrite r ON r.oid OPERATOR(pg_catalog.=) d.objid \
       WHERE d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass::pg_catalog.oid \
         AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass::pg_catalog.oid \
         AND d.refobjid <> r.ev_class \
       UNION ALL SELECT inhparent, inhrelid FROM pg_catalog.pg_inherits), \
     code_rel_up(relid, why) AS (SELECT c.oid, \
         'its row type ' OPERATOR(pg_catalog.||) pg_catalog.format_type(c.reltype, NULL) \
         OPERATOR(pg_catalog.||) ' reaches user code through a domain, cast or operator' \
       FROM pg_catalog.pg_class c \
       WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND c.reltype IN (SELECT oid FROM code_type) \
       UNION SELECT relid, why FROM code_rel \
       UNION SELECT e.reader, 'it reads ' OPERATOR(pg_catalog.||) c.relname::pg_catalog.text \
           OPERATOR(pg_catalog.||) ', which runs user code when read' \
         FROM code_rel_up r JOIN rel_edge e ON e.child OPERATOR(pg_catalog.=) r.relid \
         JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) r.relid \
         WHERE NOT pg_catalog.starts_with(r.why, 'its row type '))";

/// The fourth statement's rows (kind, schema, name, detail): every type (`type`), the types of
/// [`CODE_TYPES`] (`code`), those of [`MUTABLE_TYPES`] (`mutable`), the relations that run such
/// code when read (`relation`, detail: why; [`CODE_RELATIONS`]), the built-in target types
/// of casts from a built-in type through a user function (`target`, or `anywhere` when implicit
/// or in assignment: PostgreSQL may apply it in any statement; detail: the cast), and the names
/// of such operators between built-in types (`operator`, detail: the operator).
const TYPE_FACTS: &str = "SELECT 'type', n.nspname, t.typname, NULL FROM pg_catalog.pg_type t \
       JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace \
     UNION ALL SELECT 'code', n.nspname, t.typname, NULL FROM code_type r \
       JOIN pg_catalog.pg_type t ON t.oid = r.oid JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace \
     UNION ALL SELECT 'mutable', n.nspname, t.typname, NULL FROM mutable_type r \
       JOIN pg_catalog.pg_type t ON t.oid = r.oid JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace \
     UNION ALL SELECT DISTINCT 'relation', n.nspname, c.relname, r.why FROM code_rel_up r \
       JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) r.relid \
       JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
     UNION ALL SELECT 'operator', n.nspname, o.oprname, o.oid::pg_catalog.regoperator::pg_catalog.text \
       FROM unsafe_op u JOIN pg_catalog.pg_operator o ON o.oid = u.oid \
       JOIN pg_catalog.pg_namespace n ON n.oid = o.oprnamespace \
       WHERE u.oprleft NOT IN (SELECT oid FROM user_type) AND u.oprright NOT IN (SELECT oid FROM user_type) \
     UNION ALL SELECT CASE WHEN u.castcontext IN ('i', 'a') THEN 'anywhere' ELSE 'target' END, \
         n.nspname, t.typname, pg_catalog.format('%s to %s by %s', u.castsource::pg_catalog.regtype, \
           u.casttarget::pg_catalog.regtype, u.castfunc::pg_catalog.regprocedure) \
       FROM user_cast u JOIN pg_catalog.pg_type t ON t.oid = u.casttarget \
       JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace \
       WHERE u.castsource NOT IN (SELECT oid FROM user_type) AND u.casttarget NOT IN (SELECT oid FROM user_type)";

/// The pins of an earlier snapshot as a typed relation `p(i, relid, attnum)`: a `VALUES` list, or
/// when there are none a typed `SELECT … WHERE false`, so the query text stays valid.
fn pinned(pins: &[(usize, u32, i16)]) -> String {
    if pins.is_empty() {
        return "SELECT 0, '0'::pg_catalog.oid, '0'::pg_catalog.int2 WHERE false".to_owned();
    }
    let values: Vec<String> = pins
        .iter()
        .map(|(i, relid, attnum)| format!("({i}, '{relid}'::pg_catalog.oid, '{attnum}'::pg_catalog.int2)"))
        .collect();
    format!("VALUES {}", values.join(", "))
}

/// [`CODE_TYPES`] with the names of [`QUERY_RUNNING_BUILTINS`] filled in.
fn code_types() -> String {
    let names: Vec<String> = QUERY_RUNNING_BUILTINS.iter().map(|n| literal(n)).collect();
    CODE_TYPES.replace("QUERY_RUNNING", &names.join(", "))
}

/// [`HIDDEN_CODE`] with the names of [`STATISTICS_RELATIONS`] filled in.
fn hidden_code() -> String {
    let names: Vec<String> = STATISTICS_RELATIONS.iter().map(|n| literal(n)).collect();
    HIDDEN_CODE.replace("STATISTICS", &names.join(", "))
}

/// The four statements read in one simple Query (the first turns JIT off for the connection: the
/// planner's estimates of the recursive type closure would have it compile for seconds; and puts
/// `pg_catalog` first in its `search_path`, so that no operator a user created for the same types
/// — in a schema a database or role setting lists before it — is chosen in the later ones, whose
/// comparisons are between equal types; `public` stays, so that names in the facts' details are
/// printed as before; the first statement names its operators itself; s7): the masked tables'
/// attributes (rule index,
/// relid, schema, table, attnum, whether it is the masked column, the attribute's name), the views
/// over them (rule index, relid, schema, name, whether it runs hidden code; for each view first the
/// rule of a column it names itself, so that a denial names that column), every relation OID, and
/// the facts about types and casts of [`TYPE_FACTS`].
///
/// A rule's masked tables (`base`) are those of its name, and (issue 15, s8) the `pins` of the
/// previous snapshot — (rule index, table OID, attribute number) — that still exist, under the
/// column's current name: a renamed or moved table or a renamed column is followed by identity.
pub fn snapshot_query(rules: &[MaskRule], pins: &[(usize, u32, i16)]) -> String {
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
         p(i, relid, attnum) AS ({}), \
         base AS (SELECT m.i, c.oid AS relid, m.col FROM m \
           JOIN pg_catalog.pg_namespace n ON n.nspname OPERATOR(pg_catalog.=) m.nsp \
           JOIN pg_catalog.pg_class c ON c.relnamespace OPERATOR(pg_catalog.=) n.oid \
             AND c.relname OPERATOR(pg_catalog.=) m.rel \
           UNION SELECT p.i, a.attrelid, a.attname::pg_catalog.text FROM p \
           JOIN pg_catalog.pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) p.relid \
             AND a.attnum OPERATOR(pg_catalog.=) p.attnum AND NOT a.attisdropped), \
         down(i, relid, col) AS (SELECT i, relid, col FROM base UNION \
           SELECT t.i, h.inhrelid, t.col FROM down t JOIN pg_catalog.pg_inherits h \
             ON h.inhparent OPERATOR(pg_catalog.=) t.relid), \
         up(i, relid, col) AS (SELECT i, relid, col FROM base UNION \
           SELECT t.i, h.inhparent, t.col FROM up t JOIN pg_catalog.pg_inherits h \
             ON h.inhrelid OPERATOR(pg_catalog.=) t.relid), \
         tree(i, relid, col) AS (SELECT i, relid, col FROM down UNION SELECT i, relid, col FROM up)",
        values.join(", "),
        pinned(pins)
    );
    format!(
        "{cte} SELECT t.i, t.relid, n.nspname, c.relname, a.attnum, a.attname OPERATOR(pg_catalog.=) t.col, a.attname \
           FROM tree t JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) t.relid \
           JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
           JOIN pg_catalog.pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) t.relid \
             AND a.attnum OPERATOR(pg_catalog.>) '0'::pg_catalog.int2 AND NOT a.attisdropped \
           WHERE (SELECT pg_catalog.set_config('jit', 'off', false) OPERATOR(pg_catalog.||) \
             pg_catalog.set_config('search_path', 'pg_catalog, public', false)) IS NOT NULL; \
         {cte}, {code_types}, {hidden_code}, dep(i, relid, h) AS (SELECT i, relid, false FROM tree UNION \
           SELECT (SELECT pg_catalog.min(i) FROM m), relid, true FROM hidden UNION \
           SELECT d.i, r.ev_class, d.h FROM dep d \
           JOIN pg_catalog.pg_depend p ON p.refobjid = d.relid \
             AND p.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass::pg_catalog.oid \
             AND p.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass::pg_catalog.oid \
           JOIN pg_catalog.pg_rewrite r ON r.oid = p.objid WHERE r.ev_class <> d.relid) \
         SELECT v.i, v.relid, v.nspname, v.relname, v.h FROM (SELECT d.i, d.relid, n.nspname, c.relname, \
           pg_catalog.bool_or(d.h) AS h FROM dep d JOIN pg_catalog.pg_class c ON c.oid = d.relid \
           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
           WHERE c.relkind IN ('v', 'm', 'f') OR d.relid IN (SELECT relid FROM policy_reads) \
           GROUP BY 1, 2, 3, 4) v \
         ORDER BY v.relid, NOT EXISTS (SELECT 1 FROM tree t \
           JOIN pg_catalog.pg_attribute a ON a.attrelid = t.relid AND a.attname = t.col \
           JOIN pg_catalog.pg_depend p ON p.refobjid = t.relid AND p.refobjsubid = a.attnum \
             AND p.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass::pg_catalog.oid \
             AND p.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass::pg_catalog.oid \
           JOIN pg_catalog.pg_rewrite r ON r.oid = p.objid WHERE t.i = v.i AND r.ev_class = v.relid), v.i; \
         SELECT c.oid, n.nspname, c.relname FROM pg_catalog.pg_class c \
           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S'); \
         WITH RECURSIVE {code_types}, {MUTABLE_TYPES}, {USER_OPCLASSES}, {CODE_RELATIONS} {TYPE_FACTS}",
        code_types = code_types(),
        hidden_code = hidden_code()
    )
}

/// One row of a result set in text format.
pub type Row = Vec<Option<String>>;

/// A row the snapshot query does not return.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unexpected row in the masking catalog answer: {0}")]
pub struct SnapshotError(&'static str);

impl MaskSnapshot {
    /// From the result sets of [`snapshot_query`] (without the fourth, `types` stays `None`).
    pub fn from_rows(rules: &[MaskRule], sets: &[Vec<Row>]) -> Result<MaskSnapshot, SnapshotError> {
        let [attrs, views, relations, rest @ ..] = sets else {
            return Err(SnapshotError("expected four result sets"));
        };
        let get = |row: &Row, i: usize| row.get(i).cloned().flatten().ok_or(SnapshotError("a NULL"));
        let num = |row: &Row, i: usize| -> Result<i64, SnapshotError> {
            get(row, i)?.parse().map_err(|_| SnapshotError("not a number"))
        };
        let mut s = MaskSnapshot {
            rules: rules.to_vec(),
            ..MaskSnapshot::default()
        };
        let mut matched = vec![false; rules.len()];
        for row in attrs {
            let index = num(row, 0)? as usize;
            let rule = rules.get(index).ok_or(SnapshotError("rule index"))?;
            let relid = num(row, 1)? as u32;
            let attnum = num(row, 4)? as i16;
            s.attributes.entry(relid).or_default().insert(attnum);
            if get(row, 5)? == "t" {
                s.masked.insert((relid, attnum), rule.method);
                matched[index] = true;
                if !s.pins.contains(&(index, relid, attnum)) {
                    s.pins.push((index, relid, attnum));
                }
                // The column's current name (a renamed column); without it, the rule's.
                let column = match row.get(6) {
                    Some(_) => get(row, 6)?,
                    None => rule.column.clone(),
                };
                let copy = MaskRule {
                    schema: get(row, 2)?,
                    table: get(row, 3)?,
                    column,
                    method: rule.method,
                };
                if !s.rules.contains(&copy) {
                    s.rules.push(copy);
                }
            }
        }
        s.unmatched = (0..rules.len()).filter(|i| !matched[*i]).collect();
        for row in views {
            let rule = rules
                .get(num(row, 0)? as usize)
                .ok_or(SnapshotError("rule index"))?;
            s.dependents.insert(num(row, 1)? as u32);
            s.views.push(DependentView {
                schema: get(row, 2)?,
                name: get(row, 3)?,
                masked_column: rule.qualified(),
                hidden_code: row.get(4).cloned().flatten().as_deref() == Some("t"),
            });
        }
        for row in relations {
            s.relations.insert(num(row, 0)? as u32);
            s.names.insert((get(row, 1)?, get(row, 2)?));
        }
        if let Some(facts) = rest.first() {
            let mut types = TypeCode::default();
            for row in facts {
                let (schema, name) = (get(row, 1)?, get(row, 2)?);
                let detail = row.get(3).cloned().flatten();
                types
                    .add(&get(row, 0)?, schema, name, detail)
                    .map_err(|_| SnapshotError("a type fact of an unknown kind"))?;
            }
            s.types = Some(types);
        }
        Ok(s)
    }

    /// The config rules that resolved to no column on the target ([`MaskSnapshot::unmatched`]).
    pub fn unmatched_rules(&self) -> impl Iterator<Item = &MaskRule> {
        self.unmatched.iter().filter_map(|i| self.rules.get(*i))
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
        MaskRule::customers_email(MaskMethod::Email)
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
        let views = vec![
            row(&["0", "200", "public", "customer_emails", "f"]),
            row(&["0", "201", "public", "v_qx", "t"]),
        ];
        let rels = ["100", "101", "200", "300"]
            .iter()
            .map(|o| row(&[o, "public", "t"]))
            .collect();
        let facts = vec![
            row(&["type", "pg_catalog", "text", ""]),
            row(&["code", "public", "s5_dom", ""]),
            row(&["mutable", "public", "s5_holder", ""]),
            row(&["relation", "public", "s5_holder", "its row type s5_holder …"]),
            row(&["operator", "public", "<=", "<=(text,integer)"]),
        ];
        let sets = [attrs, views, rels, facts];
        let s = MaskSnapshot::from_rows(&[rule()], &sets).unwrap();
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
        assert!(!s.views[0].hidden_code && s.views[1].hidden_code, "{:?}", s.views);
        let types = s.types.as_ref().expect("the fourth set");
        assert!(types.known.contains(&("pg_catalog".into(), "text".into())));
        assert!(types.code.contains(&("public".into(), "s5_dom".into())));
        assert!(types.mutable.contains(&("public".into(), "s5_holder".into())));
        assert_eq!(types.relations.len(), 1);
        assert_eq!(types.operators[0].2, "<=(text,integer)");
        let without = MaskSnapshot::from_rows(&[rule()], &sets[..3]).unwrap();
        assert_eq!(without.types, None, "not read: every type name is refused");
        let unknown = vec![row(&["other", "public", "x", ""])];
        let bad = [sets[0].clone(), sets[1].clone(), sets[2].clone(), unknown];
        assert!(MaskSnapshot::from_rows(&[rule()], &bad).is_err());
        assert!(MaskSnapshot::from_rows(&[rule()], &[]).is_err());
    }

    /// Regression (s7): no comparison in the snapshot query is left to operator resolution between
    /// different types (`oid = regclass`, `oid <> integer`, `oid >= integer`): an operator a user
    /// created for exactly those types is an exact match and would be chosen over `pg_catalog`'s
    /// (one answering false hid every view over a masked table). The first statement names its
    /// operators and pins the `search_path` for the others; tables are followed up to their
    /// parents as well as down to their children.
    #[test]
    fn the_snapshot_query_leaves_no_operator_to_the_search_path() {
        for pins in [&[][..], &[(0, 16400, 2), (0, 16410, 3)][..]] {
            the_query_leaves_no_operator_to_the_search_path(&snapshot_query(&[rule()], pins));
        }
    }

    fn the_query_leaves_no_operator_to_the_search_path(q: &str) {
        for cast in ["::pg_catalog.regclass", "::pg_catalog.regnamespace"] {
            assert_eq!(
                q.matches(cast).count(),
                q.matches(&format!("{cast}::pg_catalog.oid")).count(),
                "{cast}"
            );
        }
        for bare in ["<> 0", ">= 16384", "> 0 "] {
            assert!(!q.contains(bare), "{bare}");
        }
        let first = q.split("; ").next().expect("a first statement");
        assert!(
            first.contains("pg_catalog.set_config('search_path', 'pg_catalog, public', false)"),
            "{first}"
        );
        assert!(!first.contains(" = "), "{first}");
        assert!(q.contains("SELECT t.i, h.inhparent, t.col FROM up t"), "parents");
        assert!(q.contains("relname IN ('pg_stats'"), "statistics");
        assert!(q.contains("policy_reads(relid)"), "row security policies");
    }

    /// Regression (s8, issue 15): the rules were matched by name alone, so a masked table renamed
    /// (or moved to another schema, or its column renamed) matched nothing at the next read and
    /// its column came back in clear. The next read is given the previous one's pins, which
    /// `base` joins to the live attributes under their current names; with none the query still
    /// has a (typed, empty) pinned relation.
    #[test]
    fn the_snapshot_query_follows_the_previous_reads_pins() {
        let q = snapshot_query(&[rule()], &[(0, 16400, 2), (0, 16410, 3)]);
        let first = q.split("; ").next().expect("a first statement");
        assert!(
            first.contains(
                "p(i, relid, attnum) AS (VALUES (0, '16400'::pg_catalog.oid, '2'::pg_catalog.int2), \
                 (0, '16410'::pg_catalog.oid, '3'::pg_catalog.int2))"
            ),
            "{first}"
        );
        assert!(
            first.contains("UNION SELECT p.i, a.attrelid, a.attname::pg_catalog.text FROM p"),
            "{first}"
        );
        assert!(
            first.contains("AND NOT a.attisdropped), "),
            "live attributes only: {first}"
        );
        assert!(
            first.contains("t.col, a.attname FROM tree t"),
            "the current name: {first}"
        );
        let none = snapshot_query(&[rule()], &[]);
        assert!(
            none.contains(
                "p(i, relid, attnum) AS (SELECT 0, '0'::pg_catalog.oid, '0'::pg_catalog.int2 WHERE false)"
            ),
            "{none}"
        );
        assert!(!none.contains("p(i, relid, attnum) AS (VALUES"), "no pins");
    }

    /// Regression (s8): a pinned column found under its table's and its own new name is masked,
    /// pinned again, and its rule copied under the new names (the text check finds masked columns
    /// by name: `SELECT upper(mail) FROM c2`).
    #[test]
    fn pinned_columns_are_masked_and_named_by_their_current_names() {
        let attrs = vec![
            row(&["0", "100", "archive", "c2", "1", "f", "id"]),
            row(&["0", "100", "archive", "c2", "2", "t", "mail"]),
            row(&["0", "101", "archive", "c2_2026", "2", "t", "mail"]),
        ];
        let rels = vec![
            row(&["100", "archive", "c2"]),
            row(&["101", "archive", "c2_2026"]),
        ];
        let s = MaskSnapshot::from_rows(&[rule()], &[attrs, vec![], rels]).unwrap();
        assert_eq!(s.column(100, 2), ColumnVerdict::Masked(MaskMethod::Email));
        assert_eq!(s.column(101, 2), ColumnVerdict::Masked(MaskMethod::Email));
        assert_eq!(s.column(100, 1), ColumnVerdict::Plain);
        assert_eq!(s.pins, vec![(0, 100, 2), (0, 101, 2)]);
        let names: Vec<String> = s.rules.iter().map(MaskRule::qualified).collect();
        assert_eq!(
            names,
            [
                "public.customers.email",
                "archive.c2.mail",
                "archive.c2_2026.mail"
            ],
            "the config rule first, then the current names"
        );
        assert!(s.unmatched.is_empty());
    }

    /// Regression (s8): a rule that resolves to no column (a table renamed while timebox was
    /// down, a dropped table or column, a typo) masked nothing, silently. The snapshot names it.
    #[test]
    fn rules_that_match_no_column_are_recorded() {
        let phone = MaskRule {
            column: "phone".into(),
            method: MaskMethod::Partial,
            ..rule()
        };
        let typo = MaskRule {
            table: "customer".into(),
            ..rule()
        };
        let rules = [rule(), phone, typo];
        // The table exists (rules 0 and 1 name it), but has no column `phone`.
        let attrs = vec![
            row(&["0", "100", "public", "customers", "2", "t", "email"]),
            row(&["1", "100", "public", "customers", "2", "f", "email"]),
        ];
        let s = MaskSnapshot::from_rows(&rules, &[attrs, vec![], vec![]]).unwrap();
        assert_eq!(s.unmatched, vec![1, 2]);
        let names: Vec<String> = s.unmatched_rules().map(MaskRule::qualified).collect();
        assert_eq!(names, ["public.customers.phone", "public.customer.email"]);
        let empty = MaskSnapshot::from_rows(&rules[..1], &[vec![], vec![], vec![]]).unwrap();
        assert_eq!(empty.unmatched, vec![0], "nothing on the target");
        assert!(
            MaskSnapshot::default().unmatched.is_empty(),
            "no rules, none unmatched"
        );
    }
}
