//! The pre-execution shape check of column masking (issue 15 item 2): the guarantee that a masked
//! column's value reaches the client only where the relay masks it — as a *direct* output column
//! of the top-level SELECT (a column reference, or `*`/`t.*` in its target list), whose
//! RowDescription names the column's table OID and attribute number. Every other shape that could
//! carry the value out (expressions, casts, functions, aggregates, whole-row references, set
//! operations, subqueries, CTEs, LATERAL, views over a masked table, COPY … TO, RETURNING,
//! `INSERT … SELECT`, `CREATE TABLE AS`/`SELECT INTO`, `JOIN … USING`, statistics views) is denied
//! before the statement runs.
//!
//! Pure: PostgreSQL's parse tree (pg_query), walked generically as JSON so a node kind this module
//! does not name is still searched; it must never allow a shape it cannot prove safe. Name
//! resolution is conservative: an unqualified relation with a masked table's name is the masked
//! table whatever the `search_path`, and a column reference whose name is a masked column of any
//! masked table the statement names is that masked column, as is every name an alias's column list
//! gives over a masked table (`customers AS c(i, e)`, and `(customers JOIN z ON …) AS j(i, n, e)` at
//! any depth: which name lands on which column is not known here). Filters (WHERE, JOIN … ON,
//! ORDER BY, GROUP BY, HAVING, IN/EXISTS subqueries) may use a masked column as a plain operand
//! of a comparison, `LIKE`, `IN`, `BETWEEN`, `IS NULL`, ORDER BY or GROUP BY, unless the role sets
//! `mask_filters = "deny"`; inside an expression, cast or function it is denied there too (an
//! error message could quote the value).

use std::collections::{HashMap, HashSet};

use pg_query::protobuf::{AExprKind, SubLinkType};
use serde_json::{Map, Value};

use crate::config::{MaskFilters, MaskRule};

#[path = "mask_shape_types.rs"]
mod types;
pub use types::{parameter_type_refusal, TypeCode, UnknownFact, QUERY_RUNNING_BUILTINS};

/// Views and materialized views that read a masked table (from the target's catalog), each with
/// one masked column of that table to name in the denial.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DependentView {
    pub schema: String,
    pub name: String,
    pub masked_column: String,
    /// It runs code timebox cannot see into (a user function or operator, a query-running
    /// built-in, a type whose domain or cast runs such code), directly or through a view it reads.
    pub hidden_code: bool,
}

/// What the check needs to know about one role on one target.
#[derive(Debug, Clone, Copy)]
pub struct MaskScope<'a> {
    pub role: &'a str,
    /// The role's masked columns (with inherited/partition tables' copies, when the catalog was read).
    pub columns: &'a [MaskRule],
    pub filters: MaskFilters,
    pub views: &'a [DependentView],
    /// Every relation of the target as (schema, name), when its catalog was read: a relation not
    /// in it (created since, e.g. a new partition of a masked table) counts as a masked table with
    /// every masked column name. `None` (not read yet): every relation counts so.
    pub known: Option<&'a HashSet<(String, String)>>,
    /// The target's types, casts and relations through which user code runs, when its catalog
    /// was read (`None`: every type name is refused).
    pub types: Option<&'a TypeCode>,
}

/// Statistics views and catalogs that show sample values of every column (a user view reading
/// one is hidden code to the catalog snapshot).
pub const STATISTICS_RELATIONS: [&str; 5] = [
    "pg_stats",
    "pg_stats_ext",
    "pg_stats_ext_exprs",
    "pg_statistic",
    "pg_statistic_ext_data",
];

/// Why a statement was denied: the reason (without the `timebox: ` prefix) and a hint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaskDenial {
    pub reason: String,
    pub hint: &'static str,
}

const HINT: &str = "Select the column by name (its value is masked on the wire), or ask for a grant whose role does not mask it.";

/// Statements that run code the text does not show (a function body, a DO block, a trigger or
/// rule, a procedure): any of it could return or raise a masked value.
const RUNS_HIDDEN_CODE: [&str; 7] = [
    "DoStmt",
    "CreateFunctionStmt",
    "CallStmt",
    "CreateTrigStmt",
    "RuleStmt",
    "CreateEventTrigStmt",
    "AlterFunctionStmt",
];

/// A role with masks may call only functions timebox knows (built-ins): `unknown` are the calls
/// of user-defined functions and operators the classifier found.
pub fn check_functions(unknown: &[String], scope: &MaskScope<'_>) -> Result<(), MaskDenial> {
    match (unknown.first(), scope.columns.first()) {
        (Some(f), Some(column)) => Err(MaskDenial {
            reason: format!(
                "role \"{}\" masks columns (such as {}), and {f} is not a built-in timebox knows: a user-defined function could return a masked column unmasked",
                scope.role,
                column.qualified()
            ),
            hint: HINT,
        }),
        _ => Ok(()),
    }
}

/// Checks every statement of `sql`; `Ok` lists the masked columns the text may read (for audit).
pub fn check(sql: &str, scope: &MaskScope<'_>) -> Result<Vec<String>, MaskDenial> {
    let Some(first) = scope.columns.first() else {
        return Ok(Vec::new());
    };
    let parsed = pg_query::parse(sql, 0).map_err(|_| MaskDenial {
        reason: format!(
            "role \"{}\" masks columns, and timebox could not parse this statement to check it",
            scope.role
        ),
        hint: HINT,
    })?;
    let mut touched = Vec::new();
    for raw in &parsed.protobuf.stmts {
        let tree = serde_json::to_value(&raw.stmt).map_err(|_| MaskDenial {
            reason: "the statement could not be checked for masked columns".into(),
            hint: HINT,
        })?;
        if let Some((kind, _)) = node(&tree).filter(|(k, _)| RUNS_HIDDEN_CODE.contains(k)) {
            return Err(MaskDenial {
                reason: format!(
                    "role \"{}\" masks columns (such as {}), and a {kind} runs code timebox cannot check for them",
                    scope.role,
                    first.qualified()
                ),
                hint: HINT,
            });
        }
        if stores_an_execute(&tree) {
            return Err(MaskDenial {
                reason: format!(
                    "role \"{}\" masks columns (such as {}), and CREATE TABLE … AS EXECUTE stores a prepared statement's rows, whose text is not in this statement",
                    scope.role,
                    first.qualified()
                ),
                hint: HINT,
            });
        }
        if copies_out(&tree) {
            return Err(MaskDenial {
                reason: format!(
                    "role \"{}\" masks columns (such as {}), and COPY … TO sends rows timebox does not judge column by column (no RowDescription comes with them)",
                    scope.role,
                    first.qualified()
                ),
                hint: "Read the rows with SELECT (masked on the wire); COPY … TO (and psql's \\copy … to) is refused to roles with masks.",
            });
        }
        types::check(&tree, scope)?;
        let w = Walker::new(&tree, scope)?;
        for c in w.names.values() {
            if !touched.contains(c) {
                touched.push(c.clone());
            }
        }
        w.statement(&tree)?;
    }
    Ok(touched)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ctx {
    /// A direct output column of the top-level SELECT.
    Top,
    /// A value that is returned, stored or computed.
    Value,
    /// A filter; `operand`: directly an operand of a comparison, sort or grouping.
    Filter { operand: bool },
}

impl Ctx {
    fn inner(self) -> Ctx {
        match self {
            Ctx::Top | Ctx::Value => Ctx::Value,
            Ctx::Filter { .. } => Ctx::Filter { operand: false },
        }
    }
    fn operand(self) -> Ctx {
        match self {
            Ctx::Filter { .. } => Ctx::Filter { operand: true },
            _ => Ctx::Value,
        }
    }
}

struct Walker<'a> {
    scope: &'a MaskScope<'a>,
    /// Masked column name → its `schema.table.column`, for the masked tables the statement names.
    names: HashMap<String, String>,
    /// Names (aliases and table names) under which a masked table is in the statement → one of
    /// its masked columns.
    aliases: HashMap<String, String>,
}

/// `CREATE TABLE … AS EXECUTE p`, also under `EXPLAIN` (s8 re-attack): it copies a prepared
/// statement's rows into a table in clear, and the statement's text is not in this one.
fn stores_an_execute(tree: &Value) -> bool {
    match node(tree) {
        Some(("ExplainStmt", e)) => e.get("query").is_some_and(stores_an_execute),
        Some(("CreateTableAsStmt", c)) => c
            .get("query")
            .and_then(node)
            .is_some_and(|(k, _)| k == "ExecuteStmt"),
        _ => false,
    }
}

/// `COPY … TO` (s8 second re-attack): its rows come without a RowDescription, so a query in it
/// that reads a view replaced while it waited for a lock was never judged column by column.
fn copies_out(tree: &Value) -> bool {
    matches!(node(tree), Some(("CopyStmt", c)) if c.get("is_from").and_then(Value::as_bool) != Some(true))
}

fn node(v: &Value) -> Option<(&str, &Value)> {
    let (k, inner) = v.get("node")?.as_object()?.iter().next()?;
    Some((k.as_str(), inner))
}

fn text<'v>(v: &'v Value, key: &str) -> &'v str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

fn int(v: &Value, key: &str) -> i64 {
    v.get(key).and_then(Value::as_i64).unwrap_or(0)
}

/// What [`range_vars`] finds in a tree.
#[derive(Default)]
struct Found<'v> {
    /// Every RangeVar (as a node or as a typed field: an object with `relname`).
    rvs: Vec<&'v Map<String, Value>>,
    /// Every JoinExpr's alias (a whole row of a join may hold a masked column) and CTE name.
    joins: Vec<&'v str>,
    /// Every JoinExpr whose alias has a column list (`(a JOIN b) AS j(x, y)` renames columns).
    renaming_joins: Vec<&'v Map<String, Value>>,
}

fn range_vars<'v>(v: &'v Value, found: &mut Found<'v>) {
    match v {
        Value::Array(items) => items.iter().for_each(|i| range_vars(i, found)),
        Value::Object(o) => {
            // A CTE's name (kept with the joins' aliases, then told apart by the caller).
            if let Some(name) = o.get("ctename").and_then(Value::as_str) {
                found.joins.push(name);
            }
            if o.contains_key("relname") && o.contains_key("relpersistence") {
                found.rvs.push(o);
            }
            if o.contains_key("jointype") {
                if let Some(a) = o.get("alias") {
                    found.joins.push(text(a, "aliasname"));
                    if !colnames(a).is_empty() {
                        found.renaming_joins.push(o);
                    }
                }
            }
            o.values().for_each(|i| range_vars(i, found));
        }
        _ => {}
    }
}

/// The names of an alias's column list (`AS j(i, n, e)`).
fn colnames(alias: &Value) -> Vec<&str> {
    alias
        .get("colnames")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(node)
        .map(|(_, s)| text(s, "sval"))
        .collect()
}

impl<'a> Walker<'a> {
    fn new(tree: &Value, scope: &'a MaskScope<'a>) -> Result<Self, MaskDenial> {
        let mut w = Walker {
            scope,
            names: HashMap::new(),
            aliases: HashMap::new(),
        };
        let mut found = Found::default();
        range_vars(tree, &mut found);
        // Each RangeVar of a masked table (or one the catalog copy does not know) → a masked column.
        let mut masked: Vec<(&Map<String, Value>, String)> = Vec::new();
        let joins = found.joins;
        for rv in found.rvs {
            let (schema, rel) = (
                rv.get("schemaname").and_then(Value::as_str).unwrap_or(""),
                rv.get("relname").and_then(Value::as_str).unwrap_or(""),
            );
            let matches = |s: &str, t: &str| t == rel && (schema.is_empty() || schema == s);
            if let Some(v) = scope.views.iter().find(|v| matches(&v.schema, &v.name)) {
                return Err(w.deny_view(v));
            }
            let stats = (schema.is_empty() || schema == "pg_catalog") && STATISTICS_RELATIONS.contains(&rel);
            let mut first = None;
            // A relation the catalog copy does not know may be a masked table's new partition:
            // every masked column name counts (a CTE's name is not a relation).
            let known = joins.contains(&rel)
                || scope.known.is_some_and(|k| {
                    k.iter()
                        .any(|(s, t)| t == rel && (schema.is_empty() || schema == s))
                });
            for r in scope
                .columns
                .iter()
                .filter(|r| !known || matches(&r.schema, &r.table))
            {
                first.get_or_insert_with(|| r.qualified());
                w.names.entry(r.column.clone()).or_insert_with(|| r.qualified());
            }
            if stats {
                let column = scope.columns[0].qualified();
                return Err(MaskDenial {
                    reason: format!(
                        "{rel} shows sample values of every column, and column {column} is masked for role \"{}\"",
                        scope.role
                    ),
                    hint: HINT,
                });
            }
            if let Some(column) = first {
                masked.push((rv, column.clone()));
                let alias = rv.get("alias");
                for name in [rel, alias.map(|a| text(a, "aliasname")).unwrap_or("")] {
                    if !name.is_empty() {
                        w.aliases.insert(name.to_owned(), column.clone());
                    }
                }
                // `customers AS c(id, e)` renames columns: any new name may be a masked one.
                for n in alias.map(colnames).unwrap_or_default() {
                    w.names.entry(n.to_owned()).or_insert_with(|| column.clone());
                }
            }
        }
        // `(customers CROSS JOIN z) AS j(i, n, e)` renames the join's columns too. Which name
        // lands on a masked column depends on the tables' column order (and on USING/NATURAL
        // merging), which this check does not know: every name of the list counts as masked
        // when the join (at any depth) reads a masked table.
        for j in found.renaming_joins {
            let mut inner = Found::default();
            j.values().for_each(|v| range_vars(v, &mut inner));
            let column = inner
                .rvs
                .iter()
                .find_map(|rv| masked.iter().find(|(m, _)| std::ptr::eq(*m, *rv)));
            if let Some((_, column)) = column {
                for n in j.get("alias").map(colnames).unwrap_or_default() {
                    w.names.entry(n.to_owned()).or_insert_with(|| column.clone());
                }
            }
        }
        if !w.names.is_empty() {
            let column = w.any_column();
            for j in joins.into_iter().filter(|j| !j.is_empty()) {
                w.aliases.insert(j.to_owned(), column.clone());
            }
        }
        Ok(w)
    }

    fn deny(&self, column: &str) -> MaskDenial {
        MaskDenial {
            reason: format!(
                "column {column} is masked for role \"{}\"; it can be selected only as a plain column (not in an expression, function, whole-row value, set operation, subquery, CTE, view, COPY or RETURNING)",
                self.scope.role
            ),
            hint: HINT,
        }
    }

    fn deny_filter(&self, column: &str, operand: bool) -> MaskDenial {
        let reason = if self.scope.filters == MaskFilters::Deny {
            format!(
                "column {column} is masked for role \"{}\", whose mask_filters = \"deny\" forbids filtering, joining, sorting or grouping by it",
                self.scope.role
            )
        } else {
            debug_assert!(!operand);
            format!(
                "column {column} is masked for role \"{}\"; a filter may use it only as a plain operand of a comparison, LIKE, IN, BETWEEN, IS NULL, ORDER BY or GROUP BY (not inside an expression, cast or function)",
                self.scope.role
            )
        };
        MaskDenial { reason, hint: HINT }
    }

    fn deny_view(&self, v: &DependentView) -> MaskDenial {
        let (view, column) = (format!("{}.{}", v.schema, v.name), &v.masked_column);
        let reason = if v.hidden_code {
            format!(
                "relation {view} runs code timebox cannot check for masked columns (a user function or operator, a built-in that runs a query text or reads a relation by name such as query_to_xml, or a cast or domain through user code; or reads statistics, or has a row security policy reading a masked column), directly or through a view it reads, and column {column} is masked for role \"{}\"",
                self.scope.role
            )
        } else {
            format!(
                "relation {view} is a view over masked column {column} for role \"{}\"; read the table itself, whose masked columns timebox masks",
                self.scope.role
            )
        };
        MaskDenial { reason, hint: HINT }
    }

    /// Any masked column (for shapes that do not say which).
    fn any_column(&self) -> String {
        let mut all: Vec<&String> = self.names.values().collect();
        all.sort();
        all.first().map(|s| s.to_string()).unwrap_or_default()
    }

    fn statement(&self, tree: &Value) -> Result<(), MaskDenial> {
        if self.names.is_empty() {
            return Ok(());
        }
        let Some((kind, stmt)) = node(tree) else {
            return self.walk(tree, Ctx::Value);
        };
        match kind {
            "SelectStmt" => self.select(stmt, Ctx::Top),
            "ExplainStmt" | "DeclareCursorStmt" | "PrepareStmt" => match stmt.get("query") {
                Some(q) => self.statement(q),
                None => Ok(()),
            },
            "CopyStmt" if stmt.get("is_from").and_then(Value::as_bool) != Some(true) => {
                Err(self.deny(&self.any_column()))
            }
            _ => self.walk(stmt, Ctx::Value),
        }
    }

    fn select(&self, s: &Value, ctx: Ctx) -> Result<(), MaskDenial> {
        if let Some(with) = s.get("with_clause") {
            self.walk(with, Ctx::Value)?;
        }
        let nested = if ctx == Ctx::Top { Ctx::Value } else { ctx };
        let larg = s.get("larg").filter(|v| !v.is_null());
        let rarg = s.get("rarg").filter(|v| !v.is_null());
        if larg.is_some() || rarg.is_some() {
            for arm in [larg, rarg].into_iter().flatten() {
                self.select(arm, nested)?;
            }
        }
        let into = s.get("into_clause").is_some_and(|v| !v.is_null());
        let out_ctx = match ctx {
            Ctx::Top if into || larg.is_some() => Ctx::Value,
            other => other,
        };
        for target in s
            .get("target_list")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let Some(("ResTarget", rt)) = node(target) else {
                self.walk(target, Ctx::Value)?;
                continue;
            };
            if let Some(val) = rt.get("val") {
                match (out_ctx, node(val)) {
                    (Ctx::Top, Some(("ColumnRef", c))) => self.column_ref(c, Ctx::Top)?,
                    (Ctx::Top, _) => self.walk(val, Ctx::Value)?,
                    (c, _) => self.walk(val, c)?,
                }
            }
        }
        self.walk_opt(s, "from_clause", Ctx::Value)?;
        self.walk_opt(s, "values_lists", Ctx::Value)?;
        self.walk_opt(s, "where_clause", Ctx::Filter { operand: false })?;
        self.walk_opt(s, "having_clause", Ctx::Filter { operand: false })?;
        self.walk_opt(s, "limit_count", Ctx::Filter { operand: false })?;
        self.walk_opt(s, "limit_offset", Ctx::Filter { operand: false })?;
        self.walk_opt(s, "window_clause", Ctx::Filter { operand: false })?;
        for key in ["group_clause", "distinct_clause", "sort_clause"] {
            self.walk_opt(s, key, Ctx::Filter { operand: true })?;
        }
        Ok(())
    }

    fn walk_opt(&self, s: &Value, key: &str, ctx: Ctx) -> Result<(), MaskDenial> {
        match s.get(key) {
            Some(v) => self.walk(v, ctx),
            None => Ok(()),
        }
    }

    /// A column reference: a masked column, `*`/`t.*` over a masked table, or a whole row.
    fn column_ref(&self, c: &Value, ctx: Ctx) -> Result<(), MaskDenial> {
        let fields: Vec<Option<&str>> = c
            .get("fields")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|f| match node(f) {
                Some(("String", s)) => Some(text(s, "sval")),
                _ => None,
            })
            .collect();
        let Some(last) = fields.last() else {
            return Ok(());
        };
        let hit = match last {
            None if fields.len() == 1 => Some(self.any_column()),
            None => fields[fields.len() - 2].and_then(|q| self.aliases.get(q).cloned()),
            Some(name) => self.names.get(*name).cloned(),
        };
        let whole_row = match (fields.len(), last) {
            (1, Some(name)) if hit.is_none() => self.aliases.get(*name).cloned(),
            _ => None,
        };
        if let Some(column) = whole_row {
            return Err(self.deny(&column));
        }
        let Some(column) = hit else {
            return Ok(());
        };
        match ctx {
            Ctx::Top => Ok(()),
            Ctx::Value => Err(self.deny(&column)),
            Ctx::Filter { operand } => {
                if operand && self.scope.filters == MaskFilters::Allow {
                    Ok(())
                } else {
                    Err(self.deny_filter(&column, operand))
                }
            }
        }
    }

    fn walk(&self, v: &Value, ctx: Ctx) -> Result<(), MaskDenial> {
        match v {
            Value::Array(items) => items.iter().try_for_each(|i| self.walk(i, ctx)),
            Value::Object(o) => match node(v) {
                Some((kind, inner)) => self.node(kind, inner, ctx),
                None => self.fields(o, ctx),
            },
            _ => Ok(()),
        }
    }

    /// The fields of a node (or of a typed struct): filters where a statement has them.
    fn fields(&self, o: &Map<String, Value>, ctx: Ctx) -> Result<(), MaskDenial> {
        o.iter().try_for_each(|(k, v)| {
            let c = match k.as_str() {
                "where_clause" | "having_clause" | "quals" | "join_condition" => {
                    Ctx::Filter { operand: false }
                }
                "sort_clause" | "group_clause" | "distinct_clause" => Ctx::Filter { operand: true },
                _ => ctx.inner(),
            };
            self.walk(v, c)
        })
    }

    fn node(&self, kind: &str, n: &Value, ctx: Ctx) -> Result<(), MaskDenial> {
        match kind {
            "ColumnRef" => self.column_ref(n, ctx),
            "SelectStmt" => self.select(n, if ctx == Ctx::Top { Ctx::Value } else { ctx }),
            "SubLink" => {
                let t = int(n, "sub_link_type") as i32;
                let tests = [
                    SubLinkType::ExistsSublink as i32,
                    SubLinkType::AnySublink as i32,
                    SubLinkType::AllSublink as i32,
                ];
                let (test_ctx, sub_ctx) = if tests.contains(&t) {
                    (ctx.operand(), Ctx::Filter { operand: true })
                } else {
                    (ctx.inner(), ctx)
                };
                self.walk_opt(n, "testexpr", test_ctx)?;
                self.walk_opt(n, "subselect", sub_ctx)
            }
            "AExpr" => {
                let k = int(n, "kind") as i32;
                let compares = [
                    AExprKind::AexprOp,
                    AExprKind::AexprOpAny,
                    AExprKind::AexprOpAll,
                    AExprKind::AexprDistinct,
                    AExprKind::AexprNotDistinct,
                    AExprKind::AexprIn,
                    AExprKind::AexprLike,
                    AExprKind::AexprIlike,
                    AExprKind::AexprSimilar,
                    AExprKind::AexprBetween,
                    AExprKind::AexprNotBetween,
                    AExprKind::AexprBetweenSym,
                    AExprKind::AexprNotBetweenSym,
                ]
                .iter()
                .any(|c| *c as i32 == k);
                let op = n
                    .get("name")
                    .and_then(Value::as_array)
                    .and_then(|a| a.last())
                    .and_then(|s| node(s))
                    .map(|(_, s)| text(s, "sval"))
                    .unwrap_or("");
                let comparison = compares
                    && (k != AExprKind::AexprOp as i32
                        || matches!(
                            op,
                            "=" | "<>"
                                | "<"
                                | ">"
                                | "<="
                                | ">="
                                | "~~"
                                | "!~~"
                                | "~~*"
                                | "!~~*"
                                | "~"
                                | "~*"
                                | "!~"
                                | "!~*"
                        ));
                let sub = if comparison { ctx.operand() } else { ctx.inner() };
                self.walk_opt(n, "lexpr", sub)?;
                self.walk_opt(n, "rexpr", sub)
            }
            "NullTest" => self.walk_opt(n, "arg", ctx.operand()),
            // A list of operands (`IN (a, b)`, `BETWEEN a AND b`) is where its node is.
            "List" => self.walk_opt(n, "items", ctx),
            "SortBy" => self.walk_opt(n, "node", ctx.operand()),
            "JoinExpr" => {
                let using: Vec<&str> = n
                    .get("using_clause")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|u| node(u).map(|(_, s)| text(s, "sval")))
                    .collect();
                if let Some(c) = using.iter().find_map(|u| self.names.get(*u)) {
                    return Err(self.deny(c));
                }
                if n.get("is_natural").and_then(Value::as_bool) == Some(true) {
                    return Err(self.deny(&self.any_column()));
                }
                self.walk_opt(n, "larg", Ctx::Value)?;
                self.walk_opt(n, "rarg", Ctx::Value)?;
                self.walk_opt(n, "quals", Ctx::Filter { operand: false })
            }
            _ => match n {
                Value::Object(o) => self.fields(o, ctx),
                other => self.walk(other, ctx.inner()),
            },
        }
    }
}

#[cfg(test)]
#[path = "mask_shape_tests.rs"]
mod tests;
