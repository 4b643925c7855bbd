//! The part of the masking shape check about code a statement reaches without calling it by
//! name (issue 15 item 2, the s5 attack review's two open leaks): built-ins that run a query text
//! or read a relation, schema or database given by name (`query_to_xml`, `ts_stat`, …), and user
//! code reached through a type — a cast through a user function (`CREATE CAST … WITH FUNCTION`,
//! applied by `::`, `CAST`, a function-style call, or implicitly), a domain whose DEFAULT or CHECK
//! calls such code, an operator of a user function, and every type built from those (domains over
//! them, arrays, composite types and table row types with such a column, ranges). Any of that code
//! sees the values it is given and can read the masked table itself, and return or raise it.
//!
//! Pure: fed a statement's parse tree (pg_query, as JSON) and what the target's catalog says
//! ([`TypeCode`], read with the masking snapshot by `masking::catalog`). Names are resolved
//! conservatively, as relation names are: an unqualified type name is every type of that name, in
//! any schema. A type name the catalog copy does not know is refused (it may be a domain created
//! since), and without a copy every type name is. It must never allow a statement naming such a
//! type, reading a relation whose row type is one, or calling a query-running built-in; what the
//! parse tree cannot show (the type of an expression) is covered by refusing the relations and
//! type names those types reach a statement through.

use std::collections::HashSet;

use serde_json::{Map, Value};

use super::{node, text, MaskDenial, MaskScope};

/// Built-ins (`pg_catalog`) that run a query text, fetch from a cursor, or read a table, schema,
/// database, data file or the WAL given by name: no catalog dependency shows what they read. From
/// `pg_proc`: the functions taking a query text (`query`, `ts_rewrite`'s `select`), a `refcursor`,
/// a `regclass` or a schema name and reading rows through SPI, the database-wide ones, and the
/// file and logical-decoding readers (privileged, listed to fail closed).
pub const QUERY_RUNNING_BUILTINS: [&str; 22] = [
    "query_to_xml",
    "query_to_xmlschema",
    "query_to_xml_and_xmlschema",
    "cursor_to_xml",
    "cursor_to_xmlschema",
    "table_to_xml",
    "table_to_xmlschema",
    "table_to_xml_and_xmlschema",
    "schema_to_xml",
    "schema_to_xmlschema",
    "schema_to_xml_and_xmlschema",
    "database_to_xml",
    "database_to_xmlschema",
    "database_to_xml_and_xmlschema",
    "ts_stat",
    "ts_rewrite",
    "pg_read_file",
    "pg_read_binary_file",
    "pg_logical_slot_get_changes",
    "pg_logical_slot_get_binary_changes",
    "pg_logical_slot_peek_changes",
    "pg_logical_slot_peek_binary_changes",
];

/// Built-ins (`pg_catalog`) that run the input function of a type they are given by name as a
/// string: a domain's CHECK (user code) runs, and no type name shows in the parse tree (s11).
pub const TYPE_BY_NAME_BUILTINS: [&str; 2] = ["pg_input_is_valid", "pg_input_error_info"];

/// Built-ins (`pg_catalog`) that convert values to the row type of their first argument at run
/// time: allowed only with a typed NULL there, so that the type is named (and checked) (s11).
pub const RECORD_BY_VALUE_BUILTINS: [&str; 5] = [
    "json_populate_record",
    "json_populate_recordset",
    "jsonb_populate_record",
    "jsonb_populate_recordset",
    "jsonb_populate_record_valid",
];

const HINT: &str = "Ask the target's administrator to keep casts, domains and views that run user code (or query-running built-ins) out of this role's reach, or use a grant whose role masks nothing.";

/// What the target's catalog says about types, for one snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TypeCode {
    /// Every type as (schema, name).
    pub known: HashSet<(String, String)>,
    /// Types whose values reach user code (see the module doc) as (schema, name).
    pub code: HashSet<(String, String)>,
    /// User domains and composite types, and types built from them, as (schema, name): their
    /// definition can change while a statement runs (`ALTER DOMAIN … ADD CHECK`, `ALTER TABLE`
    /// of a relation the statement does not read), and a value converted to one at run time is
    /// checked against the new one — code added meanwhile would run (s10 open probe).
    pub mutable: HashSet<(String, String)>,
    /// Relations that run such code when read: (schema, name, why) — a row type that is such a
    /// type, or a row security policy calling such code.
    pub relations: Vec<(String, String, String)>,
    /// Built-in types that a cast from a built-in type through a user function converts to:
    /// (schema, name, the cast).
    pub cast_targets: Vec<(String, String, String)>,
    /// Such a cast that PostgreSQL applies implicitly or in assignment (so in any statement).
    pub anywhere: Option<String>,
    /// Operators between built-in types implemented by user code: (schema, name, the operator).
    pub operators: Vec<(String, String, String)>,
}

/// A type fact of a kind [`TypeCode::add`] does not know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownFact;

impl TypeCode {
    /// Adds one row of the catalog's type facts (kind, schema, name, detail).
    pub fn add(
        &mut self,
        kind: &str,
        schema: String,
        name: String,
        detail: Option<String>,
    ) -> Result<(), UnknownFact> {
        let detail = detail.unwrap_or_default();
        match kind {
            "type" => {
                self.known.insert((schema, name));
            }
            "code" => {
                self.code.insert((schema, name));
            }
            "mutable" => {
                self.mutable.insert((schema, name));
            }
            "relation" => self.relations.push((schema, name, detail)),
            "target" => self.cast_targets.push((schema, name, detail)),
            "operator" => self.operators.push((schema, name, detail)),
            "anywhere" => {
                self.anywhere.get_or_insert_with(|| detail.clone());
                self.cast_targets.push((schema, name, detail));
            }
            _ => return Err(UnknownFact),
        }
        Ok(())
    }
}

/// Whether (`schema`, `name`) as written (`schema` empty: unqualified) may be (`s`, `n`).
fn may_be(schema: &str, name: &str, s: &str, n: &str) -> bool {
    n == name && (schema.is_empty() || schema == s)
}

/// The (schema, name) of a list of `String` nodes (`funcname`, a TypeName's `names`).
fn qualified(names: Option<&Value>) -> (String, String) {
    let parts: Vec<&str> = names
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(node)
        .map(|(_, s)| text(s, "sval"))
        .collect();
    match parts.as_slice() {
        [] => (String::new(), String::new()),
        [.., schema, name] => (schema.to_string(), name.to_string()),
        [name] => (String::new(), name.to_string()),
    }
}

/// Whether a FuncCall's first argument is `NULL::type` or `CAST(NULL AS type)`.
fn typed_null_first(call: &Value) -> bool {
    let first = call.get("args").and_then(Value::as_array).and_then(|a| a.first());
    match first.and_then(node) {
        Some(("TypeCast", c)) => c.get("arg").and_then(node).is_some_and(|(kind, v)| {
            kind == "AConst" && v.get("isnull").and_then(Value::as_bool) == Some(true)
        }),
        _ => false,
    }
}

/// A literal of type `unknown` (a quoted string or NULL): converted by the target type's input
/// function, never by a cast.
fn unknown_literal(v: &Value) -> bool {
    match node(v) {
        Some(("AConst", c)) => {
            c.get("isnull").and_then(Value::as_bool) == Some(true)
                || c.get("val").is_some_and(|v| v.get("Sval").is_some())
        }
        _ => false,
    }
}

struct TypeWalker<'a> {
    scope: &'a MaskScope<'a>,
    /// A masked column to name in the denial.
    column: String,
}

impl TypeWalker<'_> {
    fn deny(&self, why: String) -> MaskDenial {
        MaskDenial {
            reason: format!(
                "role \"{}\" masks columns (such as {}), and {why}",
                self.scope.role, self.column
            ),
            hint: HINT,
        }
    }

    fn walk(&self, v: &Value) -> Result<(), MaskDenial> {
        match v {
            Value::Array(items) => items.iter().try_for_each(|i| self.walk(i)),
            Value::Object(o) => {
                self.object(o)?;
                if let Some((kind, inner)) = node(v) {
                    self.node(kind, inner)?;
                }
                o.values().try_for_each(|i| self.walk(i))
            }
            _ => Ok(()),
        }
    }

    /// Typed fields: a TypeName (anywhere: casts, column definition lists, …) and a RangeVar.
    fn object(&self, o: &Map<String, Value>) -> Result<(), MaskDenial> {
        if o.contains_key("names") && o.contains_key("typemod") && o.contains_key("array_bounds") {
            return self.type_name(o);
        }
        if o.contains_key("relname") && o.contains_key("relpersistence") {
            let schema = o.get("schemaname").and_then(Value::as_str).unwrap_or("");
            let rel = o.get("relname").and_then(Value::as_str).unwrap_or("");
            let types = self.scope.types.into_iter().flat_map(|t| &t.relations);
            if let Some((s, n, why)) = types.into_iter().find(|(s, n, _)| may_be(schema, rel, s, n)) {
                return Err(self.deny(format!(
                    "relation {s}.{n} runs user code when read ({why}), which could return or raise a masked value"
                )));
            }
        }
        Ok(())
    }

    fn type_name(&self, o: &Map<String, Value>) -> Result<(), MaskDenial> {
        let (schema, name) = qualified(o.get("names"));
        if name.is_empty() {
            return Ok(());
        }
        let Some(types) = self.scope.types else {
            return Err(self.deny(format!(
                "timebox has no copy of the target's types yet, so it cannot tell whether type {name} runs user code"
            )));
        };
        if let Some((s, n)) = types.code.iter().find(|(s, n)| may_be(&schema, &name, s, n)) {
            return Err(self.deny(format!(
                "type {s}.{n} runs user code (a domain CHECK or DEFAULT, a cast or an operator through a user function), which could return or raise a masked value"
            )));
        }
        if let Some((s, n)) = types.mutable.iter().find(|(s, n)| may_be(&schema, &name, s, n)) {
            return Err(self.deny(format!(
                "type {s}.{n} is a domain or composite type (or built from one) whose definition can change while the statement runs, without a lock timebox can hold: a CHECK added meanwhile would run on values converted to it"
            )));
        }
        if !types.known.iter().any(|(s, n)| may_be(&schema, &name, s, n)) {
            return Err(self.deny(format!(
                "type {name} is not in timebox's copy of the target's catalog (created since it was read?), so timebox cannot tell whether it runs user code"
            )));
        }
        Ok(())
    }

    /// The user cast PostgreSQL may apply converting to (`schema`, `name`), if any.
    fn cast_to(&self, schema: &str, name: &str) -> Option<&str> {
        let types = self.scope.types?;
        let schema = if schema == "pg_catalog" { "" } else { schema };
        types
            .cast_targets
            .iter()
            .find(|(s, n, _)| may_be(schema, name, s, n))
            .map(|(_, _, cast)| cast.as_str())
    }

    /// Refuses an operator name (as written; `OPERATOR(s.op)` qualified) that a user operator
    /// between built-in types has.
    fn operator(&self, schema: &str, name: &str) -> Result<(), MaskDenial> {
        let operators = self.scope.types.into_iter().flat_map(|t| &t.operators);
        match operators.into_iter().find(|(s, n, _)| may_be(schema, name, s, n)) {
            Some((_, _, op)) => Err(self.deny(format!(
                "the target has an operator {op} implemented by user code, which an operator {name} here could run"
            ))),
            None => Ok(()),
        }
    }

    fn node(&self, kind: &str, n: &Value) -> Result<(), MaskDenial> {
        match kind {
            "AExpr" | "SubLink" | "SortBy" => {
                let key = match kind {
                    "AExpr" => "name",
                    "SubLink" => "oper_name",
                    _ => "use_op",
                };
                let (schema, name) = qualified(n.get(key));
                match name.as_str() {
                    "" if kind == "SubLink" => self.operator("", "="),
                    "" => Ok(()),
                    // `BETWEEN` is `>=` and `<=`.
                    between if between.contains("BETWEEN") => {
                        self.operator("", ">=")?;
                        self.operator("", "<=")
                    }
                    op => self.operator(&schema, op),
                }
            }
            // Comparisons the text does not spell: `CASE x WHEN`, `JOIN … USING`, `NATURAL JOIN`.
            "CaseExpr" if n.get("arg").is_some_and(|a| !a.is_null()) => self.operator("", "="),
            "JoinExpr"
                if n.get("is_natural").and_then(Value::as_bool) == Some(true)
                    || n.get("using_clause")
                        .and_then(Value::as_array)
                        .is_some_and(|u| !u.is_empty()) =>
            {
                self.operator("", "=")
            }
            "TypeCast" => {
                let (schema, name) = qualified(n.get("type_name").and_then(|t| t.get("names")));
                let literal = n.get("arg").is_some_and(unknown_literal);
                match self.cast_to(&schema, &name) {
                    Some(cast) if !literal => Err(self.deny(format!(
                        "the target has a cast through a user function ({cast}) that a cast to {name} here could run"
                    ))),
                    _ => Ok(()),
                }
            }
            "FuncCall" => {
                let (schema, name) = qualified(n.get("funcname"));
                let builtin = schema.is_empty() || schema == "pg_catalog";
                if builtin && QUERY_RUNNING_BUILTINS.contains(&name.as_str()) {
                    return Err(self.deny(format!(
                        "{name} runs a query text or reads a relation, schema or database by name, which timebox cannot check for masked columns"
                    )));
                }
                if builtin && TYPE_BY_NAME_BUILTINS.contains(&name.as_str()) {
                    return Err(self.deny(format!(
                        "{name} runs the input function of a type given by name as a string, which timebox cannot check (a domain's CHECK runs user code)"
                    )));
                }
                if builtin && RECORD_BY_VALUE_BUILTINS.contains(&name.as_str()) && !typed_null_first(n) {
                    return Err(self.deny(format!(
                        "{name}(…) converts values to the type of its first argument, which timebox can check only when it is written as a typed NULL (NULL::type)"
                    )));
                }
                // `date(x)`: without a function for x's type, a function-style cast.
                let literals = n
                    .get("args")
                    .and_then(Value::as_array)
                    .is_none_or(|a| a.iter().all(unknown_literal));
                match self.cast_to(&schema, &name) {
                    Some(cast) if builtin && !literals => Err(self.deny(format!(
                        "the target has a cast through a user function ({cast}) that {name}(…) here could run"
                    ))),
                    _ => Ok(()),
                }
            }
            _ => Ok(()),
        }
    }
}

/// OIDs below this were assigned by `initdb` (PostgreSQL's `FirstNormalObjectId`): built-in types.
const FIRST_USER_OID: u32 = 16384;

/// A Parse message's parameter types (OIDs, outside the text the shape check reads; s11 sixth
/// attack): for roles with masks each must be unspecified (0) or a built-in type, or a user
/// domain's CHECK would run on the value at Bind, and a user operator over a user type could be
/// chosen for a masked column compared with the parameter. The reason for the first that is not.
pub fn parameter_type_refusal(oids: &[u32]) -> Option<String> {
    let (i, oid) = oids
        .iter()
        .enumerate()
        .find(|(_, &oid)| oid != 0 && oid >= FIRST_USER_OID)?;
    Some(format!(
        "parameter ${} of this Parse has type OID {oid}, a type created after initdb (a domain's CHECK or a user operator over it could run user code timebox cannot check); roles with masks may type parameters only with built-in types, or leave them unspecified (0)",
        i + 1
    ))
}

/// Checks one statement's tree for code reached through types and query-running built-ins.
pub fn check(tree: &Value, scope: &MaskScope<'_>) -> Result<(), MaskDenial> {
    let Some(first) = scope.columns.first() else {
        return Ok(());
    };
    let w = TypeWalker {
        scope,
        column: first.qualified(),
    };
    if let Some(cast) = scope.types.and_then(|t| t.anywhere.as_ref()) {
        return Err(w.deny(format!(
            "the target has an implicit or assignment cast through a user function ({cast}), which PostgreSQL may apply in any statement"
        )));
    }
    w.walk(tree)
}

#[cfg(test)]
#[path = "mask_shape_types_tests.rs"]
mod tests;
