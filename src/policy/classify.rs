//! SQL text → one [`StatementInfo`] per statement: its class, the relations and functions it
//! touches, and the flags the authorizer needs. Pure: no I/O, no state, no clock.
//!
//! Sits between the relay (which hands over the text of a simple Query or a Parse) and
//! [`super::authorize()`]. It must never under-classify: when in doubt a statement gets the higher
//! class, and text the parsers disagree on becomes [`StatementClass::Unparsed`].
//!
//! # Two parsers, one truth
//! 1. **PostgreSQL's own parser** (`pg_query`, libpg_query: the server's grammar and scanner) parses
//!    the whole message. Its statement boundaries, comments, string, dollar-quote, `E''` and `U&""`
//!    rules are the server's, so no second statement can hide where the proxy sees a string or a
//!    comment. Its parse tree is the source of truth for the statement kind, the relations
//!    (identifiers folded exactly as the server folds them, CTE names resolved by scope), every
//!    function call and operator, data-modifying statements nested anywhere (CTEs), row locks,
//!    `SELECT INTO`, `EXPLAIN` options, `COPY` targets and `SET` values. The tree is walked through
//!    its `serde::Serialize` implementation, so every field of every node is visited: a node kind
//!    the walker does not know is still searched for function calls and relations.
//! 2. **sqlparser** (PostgreSQL dialect) re-parses each statement PostgreSQL found. It must parse it
//!    as exactly one statement of the same kind (SELECT, INSERT, SET, CREATE, …); otherwise the
//!    statement is `Unparsed`. Its own view of the statement (data-modifying statements, locks,
//!    `SELECT INTO`, found with its `Visit` visitor) can only raise the class, never lower it.
//!
//! If PostgreSQL's parser rejects the message, the server would reject all of it too; the pieces
//! PostgreSQL's scanner finds are classified one by one for the report, and the message always
//! carries an `Unparsed` statement.

use std::fmt;
use std::ops::{ControlFlow, Range};

use pg_query::protobuf::{self, a_const, node::Node as NodeEnum};
use serde::ser::{self, Serialize};
use sqlparser::ast::{CopyTarget, Query, Select, SetExpr, Statement, Visit, Visitor};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use super::functions::{self, FunctionKind, SettingKind};
use super::version::{self, NewerSyntax};

/// What a statement may do, lowest to highest. A role lists the classes it allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StatementClass {
    Read,
    Write,
    Ddl,
    Admin,
    /// The parsers could not agree on what the text is: denied unless the role has
    /// `allow_unparsed`.
    Unparsed,
}

impl StatementClass {
    /// The name used in config (`allow = ["read", "write"]`) and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            StatementClass::Read => "read",
            StatementClass::Write => "write",
            StatementClass::Ddl => "ddl",
            StatementClass::Admin => "admin",
            StatementClass::Unparsed => "unparsed",
        }
    }

    pub fn from_name(name: &str) -> Option<StatementClass> {
        match name {
            "read" => Some(StatementClass::Read),
            "write" => Some(StatementClass::Write),
            "ddl" => Some(StatementClass::Ddl),
            "admin" => Some(StatementClass::Admin),
            _ => None,
        }
    }
}

impl fmt::Display for StatementClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One reason a statement needs a class ("calls nextval(), which changes data").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassReason {
    pub class: StatementClass,
    pub why: String,
}

/// A relation named in a statement, folded as PostgreSQL folds identifiers (`Orders` → `orders`,
/// `"Orders"` stays `Orders`). `schema` is `None` when the statement did not qualify the name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Relation {
    pub schema: Option<String>,
    pub name: String,
}

impl fmt::Display for Relation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(schema) = &self.schema {
            write_ident(f, schema)?;
            f.write_str(".")?;
        }
        write_ident(f, &self.name)
    }
}

fn write_ident(f: &mut fmt::Formatter<'_>, ident: &str) -> fmt::Result {
    let plain = !ident.is_empty()
        && !ident.starts_with(|c: char| c.is_ascii_digit() || c == '$')
        && ident
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$');
    if plain {
        f.write_str(ident)
    } else {
        write!(f, "\"{}\"", ident.replace('"', "\"\""))
    }
}

/// The value a statement gives a setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetValue {
    /// A literal value, as text (`'30s'`, `5000`, `on`; lists joined with `, `).
    Value(String),
    /// `RESET`, `SET … TO DEFAULT`, `RESET ALL`, `DISCARD ALL`.
    Default,
    /// Not a literal (an expression, `FROM CURRENT`): the proxy cannot know it.
    NotLiteral,
}

/// A setting a statement changes: `SET`, `RESET`, `set_config(…)`, `SET TRANSACTION …`,
/// `SET SESSION CHARACTERISTICS …`, `DISCARD ALL` (as `all`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingChange {
    /// Lower-case GUC name (`statement_timeout`, `default_transaction_read_only`, `all`).
    pub name: String,
    pub value: SetValue,
    /// `SET LOCAL`, `set_config(…, true)`, `SET TRANSACTION`.
    pub local: bool,
    /// How it was written, for messages: `SET`, `RESET`, `set_config()`, …
    pub via: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyDirection {
    /// `COPY … FROM` (loads rows).
    From,
    /// `COPY … TO` (dumps rows).
    To,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deallocate {
    Name(String),
    All,
}

/// Everything the authorizer and the relay need to know about one statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementInfo {
    /// Highest class of anything in the statement, counting user-defined functions as `write`
    /// (the role may allow them by name: see [`StatementInfo::unknown_functions`]).
    pub class: StatementClass,
    /// Command, PostgreSQL style: `SELECT`, `INSERT`, `SET`, `EXPLAIN ANALYZE`, `CREATE TABLE`, …
    pub kind: String,
    /// Byte range of the statement in the classified text (without the `;`).
    pub span: Range<usize>,
    /// Relations named anywhere (CTE names excluded), in order of first appearance.
    pub relations: Vec<Relation>,
    /// Functions called anywhere, folded names as written (`lower`, `pg_catalog.now`, `public.f`).
    pub functions: Vec<String>,
    /// Calls of functions and operators that are not on the maintained lists (user-defined):
    /// each counts as `write` unless the role's `allow_functions` names it.
    pub unknown_functions: Vec<String>,
    /// Every class the statement needs and why; [`StatementInfo::class`] is their maximum.
    pub reasons: Vec<ClassReason>,
    /// `Some(false)` when an `UPDATE` or `DELETE` (top level or in a CTE) has no `WHERE`;
    /// `Some(true)` when all have one; `None` when there is none.
    pub has_where: Option<bool>,
    /// Target tables of the `UPDATE`/`DELETE`s without `WHERE`.
    pub unfiltered_targets: Vec<Relation>,
    /// Target tables of `MERGE`s with an `UPDATE`/`DELETE` action no condition filters (see
    /// [`merge_action_unfiltered`]); they count as `has_where == Some(false)`.
    pub unfiltered_merge_targets: Vec<Relation>,
    /// Settings changed (`SET`, `RESET`, `set_config`, `SET TRANSACTION`, `DISCARD ALL`).
    pub sets: Vec<SettingChange>,
    /// `BEGIN`/`START TRANSACTION … READ WRITE`.
    pub begin_read_write: bool,
    /// `EXPLAIN ANALYZE`: the inner statement runs.
    pub explain_analyze: bool,
    pub copy_direction: Option<CopyDirection>,
    /// `COPY … TO/FROM 'file'` or `PROGRAM '…'` (server-side files and shell commands).
    pub copy_program_or_file: bool,
    /// `PREPARE name AS …`: the relay remembers this statement's class under `name`.
    pub prepare_name: Option<String>,
    /// `EXECUTE name` (also inside `EXPLAIN ANALYZE`): the relay must check what `name` is.
    pub execute_name: Option<String>,
    pub deallocate: Option<Deallocate>,
    /// `DECLARE name CURSOR FOR …`: the class covers the cursor's query.
    pub declare_cursor: Option<String>,
    /// Why the statement is `Unparsed`, if it is.
    pub unparsed: Option<String>,
    /// Constructs of the classifier's grammar (PostgreSQL 18) that older targets parse as calls of
    /// functions by name (`JSON_ARRAY(…)` calls `json_array`): the authorizer decides them by the
    /// session's target version (see [`super::version`]).
    pub newer_syntax: Vec<NewerSyntax>,
}

impl StatementInfo {
    fn new(span: Range<usize>) -> Self {
        StatementInfo {
            class: StatementClass::Read,
            kind: String::new(),
            span,
            relations: Vec::new(),
            functions: Vec::new(),
            unknown_functions: Vec::new(),
            reasons: Vec::new(),
            has_where: None,
            unfiltered_targets: Vec::new(),
            unfiltered_merge_targets: Vec::new(),
            sets: Vec::new(),
            begin_read_write: false,
            explain_analyze: false,
            copy_direction: None,
            copy_program_or_file: false,
            prepare_name: None,
            execute_name: None,
            deallocate: None,
            declare_cursor: None,
            unparsed: None,
            newer_syntax: Vec::new(),
        }
    }

    /// Records that the statement needs `class` (first reason per class wins).
    fn need(&mut self, class: StatementClass, why: impl Into<String>) {
        if !self.reasons.iter().any(|r| r.class == class) {
            self.reasons.push(ClassReason {
                class,
                why: why.into(),
            });
        }
    }

    /// The reason recorded for `class`.
    pub fn reason_for(&self, class: StatementClass) -> Option<&str> {
        self.reasons
            .iter()
            .find(|r| r.class == class)
            .map(|r| r.why.as_str())
    }

    /// Every class the statement needs, ascending, not counting unknown functions. `Read` is only
    /// listed for statements that need nothing higher.
    pub fn needs(&self) -> Vec<StatementClass> {
        let mut v: Vec<StatementClass> = self.reasons.iter().map(|r| r.class).collect();
        v.sort();
        v.dedup();
        if v.len() > 1 {
            v.retain(|c| *c != StatementClass::Read);
        }
        v
    }

    fn finish(&mut self) {
        if self.reasons.is_empty() {
            self.need(StatementClass::Read, format!("{} only reads", self.kind));
        }
        self.reasons.sort_by_key(|r| r.class);
        let mut class = self
            .reasons
            .iter()
            .map(|r| r.class)
            .max()
            .unwrap_or(StatementClass::Read);
        if !self.unknown_functions.is_empty() {
            class = class.max(StatementClass::Write);
        }
        self.class = class;
    }
}

/// The statements of one message (simple Query string or Parse), in order. Empty for an empty
/// query or one made of comments and semicolons (an allowed no-op).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Classification {
    pub statements: Vec<StatementInfo>,
}

impl Classification {
    /// Highest class over all statements (`Read` for an empty message).
    pub fn class(&self) -> StatementClass {
        self.statements
            .iter()
            .map(|s| s.class)
            .max()
            .unwrap_or(StatementClass::Read)
    }

    pub fn is_empty(&self) -> bool {
        self.statements.is_empty()
    }
}

/// Classifies SQL text (one or more statements). Pure and total: never fails, never panics on
/// input; text the parsers cannot agree on is classified `Unparsed`.
pub fn classify(sql: &str) -> Classification {
    classify_with_constants(sql).0
}

/// [`classify()`], and the byte offsets PostgreSQL's parse tree gives for its constants (the
/// `location` of every `A_Const` node, in no particular order). Only a text PostgreSQL parsed as a
/// whole reports constants; otherwise the list is empty.
///
/// A literal token becomes an `A_Const` at its own offset (or at the offset of a unary minus the
/// grammar folded into it) only through the grammar's plain-constant rules, which copy the value
/// without looking at it; a literal the grammar reads for its value (`float(53)`,
/// `current_time(3)`) leaves no `A_Const` there. [`super::shape`] relies on this.
pub(crate) fn classify_with_constants(sql: &str) -> (Classification, Vec<usize>) {
    let mut statements = Vec::new();
    let mut constants = Vec::new();
    match pg_query::parse(sql, 0) {
        Ok(parsed) => classify_parsed(sql, 0, &parsed.protobuf, &mut statements, &mut constants),
        Err(err) => classify_pieces(sql, &pg_error(&err), &mut statements),
    }
    (Classification { statements }, constants)
}

fn pg_error(err: &pg_query::Error) -> String {
    match err {
        pg_query::Error::Parse(m) | pg_query::Error::Split(m) | pg_query::Error::Scan(m) => m.clone(),
        other => other.to_string(),
    }
}

/// PostgreSQL rejected the whole text: classify what its scanner can split, one piece at a time,
/// and make sure the message carries an `Unparsed` statement.
fn classify_pieces(sql: &str, error: &str, out: &mut Vec<StatementInfo>) {
    let base = sql.as_ptr() as usize;
    let pieces = pg_query::split_with_scanner(sql).unwrap_or_default();
    let mut any_unparsed = false;
    for piece in pieces {
        let start = piece.as_ptr() as usize - base;
        let span = start..start + piece.len();
        match pg_query::parse(piece, 0) {
            Ok(parsed) => classify_parsed(piece, start, &parsed.protobuf, out, &mut Vec::new()),
            Err(err) => {
                any_unparsed = true;
                out.push(unparsed(
                    span,
                    format!("PostgreSQL's parser rejects it: {}", pg_error(&err)),
                ));
            }
        }
    }
    if !any_unparsed {
        out.push(unparsed(
            0..sql.len(),
            format!("PostgreSQL's parser rejects the text: {error}"),
        ));
    }
}

fn unparsed(span: Range<usize>, why: String) -> StatementInfo {
    let mut info = StatementInfo::new(span);
    info.kind = "UNPARSED".into();
    info.need(StatementClass::Unparsed, why.clone());
    info.unparsed = Some(why);
    info.finish();
    info
}

/// Classifies each statement of a parse tree of `text` (which starts at `offset` of the classified
/// text) into `out`, and adds the offsets of its constants to `constants`.
fn classify_parsed(
    text: &str,
    offset: usize,
    tree: &protobuf::ParseResult,
    out: &mut Vec<StatementInfo>,
    constants: &mut Vec<usize>,
) {
    for raw in &tree.stmts {
        let start = raw.stmt_location.max(0) as usize;
        let end = if raw.stmt_len == 0 {
            text.len()
        } else {
            start + raw.stmt_len as usize
        };
        let span = offset + start..offset + end;
        let Some(piece) = text.get(start..end) else {
            out.push(unparsed(
                span,
                "statement boundaries do not fall on characters".into(),
            ));
            continue;
        };
        match raw.stmt.as_ref() {
            Some(node) => {
                let (info, locations) = classify_statement(piece, span, node);
                // Locations count from the start of `text`; -1 means "no location".
                constants.extend(
                    locations
                        .into_iter()
                        .filter_map(|l| usize::try_from(l).ok())
                        .map(|l| offset + l),
                );
                out.push(info);
            }
            None => out.push(unparsed(
                span,
                "PostgreSQL's parser returned an empty statement".into(),
            )),
        }
    }
}

/// Classifies one statement PostgreSQL parsed; `piece` is its text. Also returns the locations of
/// its `A_Const` nodes (see [`classify_with_constants`]).
fn classify_statement(piece: &str, span: Range<usize>, node: &protobuf::Node) -> (StatementInfo, Vec<i32>) {
    let mut info = StatementInfo::new(span);
    let mut findings = walk(node);
    let constants = std::mem::take(&mut findings.constants);
    let Some(stmt) = node.node.as_ref() else {
        let why = "PostgreSQL's parser returned an empty statement".into();
        return (unparsed(info.span, why), constants);
    };
    let top = findings.top.unwrap_or("unknown");
    let (kind, family) = pg_kind(stmt, top);
    info.kind = kind;

    // What the statement itself is.
    let executes = base_class(stmt, top, &mut info);
    // What is inside it. An EXPLAIN without ANALYZE only plans its statement: data-modifying parts do
    // not run, but functions still count (the planner may evaluate them).
    if executes {
        for dml in &findings.dml {
            info.need(
                StatementClass::Write,
                format!("contains a data-modifying {dml} (in a WITH clause or subquery)"),
            );
        }
        if findings.locking {
            info.need(
                StatementClass::Write,
                "SELECT … FOR UPDATE/SHARE locks rows (a write lock)",
            );
        }
        if findings.select_into {
            info.need(StatementClass::Ddl, "SELECT … INTO creates a table");
        }
        if findings.has_update_or_delete {
            info.has_where = Some(findings.unfiltered.is_empty() && findings.unfiltered_merge.is_empty());
            info.unfiltered_targets = findings.unfiltered.clone();
            info.unfiltered_merge_targets = findings.unfiltered_merge.clone();
        }
    }
    for call in &findings.funcs {
        if !info.functions.contains(&call.name) {
            info.functions.push(call.name.clone());
        }
        match functions::function_kind(&call.name) {
            FunctionKind::Safe => {}
            kind @ FunctionKind::Write => {
                info.need(
                    functions::function_class(kind),
                    format!("calls {}(), which changes data or takes locks", call.name),
                );
            }
            kind @ FunctionKind::Admin(why) => {
                info.need(
                    functions::function_class(kind),
                    format!("calls {}(), which {why}", call.name),
                );
            }
            FunctionKind::SetConfig => set_config(call, &mut info),
            FunctionKind::Unknown => {
                if !info.unknown_functions.contains(&call.name) {
                    info.unknown_functions.push(call.name.clone());
                }
            }
        }
    }
    info.newer_syntax = findings.newer.clone();
    for op in &findings.ops {
        if !functions::is_builtin_operator(op) {
            let name = format!("operator {op}");
            if !info.unknown_functions.contains(&name) {
                info.unknown_functions.push(name);
            }
        }
    }
    for rel in findings.relations() {
        if !info.relations.contains(&rel) {
            info.relations.push(rel);
        }
    }
    for change in info.sets.clone() {
        let (class, why) = setting_class(&change);
        info.need(class, why);
    }

    // The second opinion.
    match sqlparser_view(piece, executes) {
        Ok(view) if view.family == family => {
            if let Some((class, why)) = view.class {
                let known = info.reasons.iter().any(|r| r.class >= class);
                if !known {
                    info.need(class, format!("sqlparser sees {why}"));
                }
            }
        }
        Ok(view) => {
            let why = format!(
                "PostgreSQL's parser sees {} but sqlparser sees {}: the parsers disagree",
                family_label(family),
                family_label(view.family)
            );
            info.need(StatementClass::Unparsed, why.clone());
            info.unparsed = Some(why);
        }
        Err(why) => {
            info.need(StatementClass::Unparsed, why.clone());
            info.unparsed = Some(why);
        }
    }
    info.finish();
    (info, constants)
}

fn family_label(family: &str) -> String {
    match family {
        "query" => "a query".into(),
        "other" => "an unrecognised statement".into(),
        f => format!("a {} statement", f.to_uppercase()),
    }
}

// ---------------------------------------------------------------------------------------------
// Statement kinds and base classes (PostgreSQL's parse tree).
// ---------------------------------------------------------------------------------------------

/// Kind (command tag style) and family (compared with sqlparser's view) of a statement.
fn pg_kind(stmt: &NodeEnum, top: &str) -> (String, &'static str) {
    let (kind, family): (&str, &'static str) = match stmt {
        NodeEnum::SelectStmt(s) if s.into_clause.is_some() => ("SELECT INTO", "query"),
        NodeEnum::SelectStmt(s) if !s.values_lists.is_empty() => ("VALUES", "query"),
        NodeEnum::SelectStmt(_) => ("SELECT", "query"),
        NodeEnum::InsertStmt(_) => ("INSERT", "insert"),
        NodeEnum::UpdateStmt(_) => ("UPDATE", "update"),
        NodeEnum::DeleteStmt(_) => ("DELETE", "delete"),
        NodeEnum::MergeStmt(_) => ("MERGE", "merge"),
        NodeEnum::VariableSetStmt(s) => (
            match protobuf::VariableSetKind::try_from(s.kind) {
                Ok(protobuf::VariableSetKind::VarReset | protobuf::VariableSetKind::VarResetAll) => "RESET",
                Ok(protobuf::VariableSetKind::VarSetMulti) if s.name == "TRANSACTION" => "SET TRANSACTION",
                Ok(protobuf::VariableSetKind::VarSetMulti) if s.name == "SESSION CHARACTERISTICS" => {
                    "SET SESSION CHARACTERISTICS"
                }
                _ => "SET",
            },
            "set",
        ),
        NodeEnum::VariableShowStmt(_) => ("SHOW", "show"),
        NodeEnum::TransactionStmt(s) => (
            match protobuf::TransactionStmtKind::try_from(s.kind) {
                Ok(protobuf::TransactionStmtKind::TransStmtBegin) => "BEGIN",
                Ok(protobuf::TransactionStmtKind::TransStmtStart) => "START TRANSACTION",
                Ok(protobuf::TransactionStmtKind::TransStmtCommit) => "COMMIT",
                Ok(protobuf::TransactionStmtKind::TransStmtRollback) => "ROLLBACK",
                Ok(protobuf::TransactionStmtKind::TransStmtSavepoint) => "SAVEPOINT",
                Ok(protobuf::TransactionStmtKind::TransStmtRelease) => "RELEASE",
                Ok(protobuf::TransactionStmtKind::TransStmtRollbackTo) => "ROLLBACK TO SAVEPOINT",
                Ok(protobuf::TransactionStmtKind::TransStmtPrepare) => "PREPARE TRANSACTION",
                Ok(protobuf::TransactionStmtKind::TransStmtCommitPrepared) => "COMMIT PREPARED",
                Ok(protobuf::TransactionStmtKind::TransStmtRollbackPrepared) => "ROLLBACK PREPARED",
                _ => "TRANSACTION",
            },
            "transaction",
        ),
        NodeEnum::ExplainStmt(e) if explain_analyze(&e.options) => ("EXPLAIN ANALYZE", "explain"),
        NodeEnum::ExplainStmt(_) => ("EXPLAIN", "explain"),
        NodeEnum::CopyStmt(_) => ("COPY", "copy"),
        NodeEnum::PrepareStmt(_) => ("PREPARE", "prepare"),
        NodeEnum::ExecuteStmt(_) => ("EXECUTE", "execute"),
        NodeEnum::DeallocateStmt(_) => ("DEALLOCATE", "deallocate"),
        NodeEnum::DeclareCursorStmt(_) => ("DECLARE CURSOR", "declare"),
        NodeEnum::FetchStmt(f) if f.ismove => ("MOVE", "fetch"),
        NodeEnum::FetchStmt(_) => ("FETCH", "fetch"),
        NodeEnum::ClosePortalStmt(_) => ("CLOSE", "close"),
        NodeEnum::LockStmt(_) => ("LOCK", "lock"),
        NodeEnum::NotifyStmt(_) => ("NOTIFY", "notify"),
        NodeEnum::ListenStmt(_) => ("LISTEN", "listen"),
        NodeEnum::UnlistenStmt(_) => ("UNLISTEN", "unlisten"),
        NodeEnum::DiscardStmt(_) => ("DISCARD", "discard"),
        NodeEnum::DoStmt(_) => ("DO", "do"),
        NodeEnum::CallStmt(_) => ("CALL", "call"),
        NodeEnum::TruncateStmt(_) => ("TRUNCATE", "truncate"),
        NodeEnum::CommentStmt(_) => ("COMMENT", "comment"),
        NodeEnum::GrantStmt(g) if g.is_grant => ("GRANT", "grant"),
        NodeEnum::GrantStmt(_) => ("REVOKE", "revoke"),
        NodeEnum::GrantRoleStmt(g) if g.is_grant => ("GRANT", "grant"),
        NodeEnum::GrantRoleStmt(_) => ("REVOKE", "revoke"),
        NodeEnum::VacuumStmt(v) if v.is_vacuumcmd => ("VACUUM", "vacuum"),
        NodeEnum::VacuumStmt(_) => ("ANALYZE", "analyze"),
        NodeEnum::RefreshMatViewStmt(_) => ("REFRESH MATERIALIZED VIEW", "refresh"),
        NodeEnum::CreateStmt(_) => ("CREATE TABLE", "create"),
        NodeEnum::CreateTableAsStmt(c) if c.objtype == protobuf::ObjectType::ObjectMatview as i32 => {
            ("CREATE MATERIALIZED VIEW", "create")
        }
        NodeEnum::CreateTableAsStmt(_) => ("CREATE TABLE AS", "create"),
        NodeEnum::ViewStmt(_) => ("CREATE VIEW", "create"),
        NodeEnum::IndexStmt(_) => ("CREATE INDEX", "create"),
        NodeEnum::AlterTableStmt(_) => ("ALTER TABLE", "alter"),
        NodeEnum::DropStmt(_) => ("DROP", "drop"),
        NodeEnum::CheckPointStmt(_) => ("CHECKPOINT", "other"),
        NodeEnum::ConstraintsSetStmt(_) => ("SET CONSTRAINTS", "other"),
        NodeEnum::LoadStmt(_) => ("LOAD", "load"),
        _ => {
            let family = if top.starts_with("Create") || top == "DefineStmt" || top == "CompositeTypeStmt" {
                "create"
            } else if top.starts_with("Alter") || top == "RenameStmt" {
                "alter"
            } else if top.starts_with("Drop") {
                "drop"
            } else {
                "other"
            };
            return (command_words(top), family);
        }
    };
    (kind.to_string(), family)
}

/// `CreateExtensionStmt` → `CREATE EXTENSION`: a command name for parse nodes without a special case.
fn command_words(node: &str) -> String {
    let mut out = String::new();
    for (i, c) in node.trim_end_matches("Stmt").chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push(' ');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// Records the class the statement itself needs (not counting what is nested in it) and its flags.
/// Returns whether the statement's nested query runs (false for `EXPLAIN` without `ANALYZE`).
fn base_class(stmt: &NodeEnum, top: &str, info: &mut StatementInfo) -> bool {
    use StatementClass::*;
    match stmt {
        NodeEnum::SelectStmt(_) => {}
        NodeEnum::VariableShowStmt(_)
        | NodeEnum::FetchStmt(_)
        | NodeEnum::ClosePortalStmt(_)
        | NodeEnum::ListenStmt(_)
        | NodeEnum::UnlistenStmt(_)
        | NodeEnum::ConstraintsSetStmt(_) => {}
        NodeEnum::InsertStmt(_) => info.need(Write, "INSERT adds rows"),
        NodeEnum::UpdateStmt(_) => info.need(Write, "UPDATE changes rows"),
        NodeEnum::DeleteStmt(_) => info.need(Write, "DELETE removes rows"),
        NodeEnum::MergeStmt(_) => info.need(Write, "MERGE changes rows"),
        NodeEnum::LockStmt(_) => info.need(Write, "LOCK takes table locks"),
        NodeEnum::NotifyStmt(_) => info.need(Write, "NOTIFY sends a notification"),
        NodeEnum::ExplainStmt(e) => {
            let analyze = explain_analyze(&e.options);
            info.explain_analyze = analyze;
            let inner = e.query.as_ref().and_then(|n| n.node.as_ref());
            match inner {
                Some(inner) if analyze => {
                    base_class(inner, top, info);
                }
                _ => info.need(Read, "EXPLAIN without ANALYZE only plans the statement"),
            }
            return analyze;
        }
        NodeEnum::PrepareStmt(p) => {
            info.prepare_name = Some(p.name.clone());
            if let Some(inner) = p.query.as_ref().and_then(|n| n.node.as_ref()) {
                base_class(inner, top, info);
            }
        }
        NodeEnum::ExecuteStmt(e) => info.execute_name = Some(e.name.clone()),
        NodeEnum::DeallocateStmt(d) => {
            info.deallocate = Some(if d.isall || d.name.is_empty() {
                Deallocate::All
            } else {
                Deallocate::Name(d.name.clone())
            })
        }
        NodeEnum::DeclareCursorStmt(d) => {
            info.declare_cursor = Some(d.portalname.clone());
            if let Some(inner) = d.query.as_ref().and_then(|n| n.node.as_ref()) {
                base_class(inner, top, info);
            }
        }
        NodeEnum::CopyStmt(c) => {
            info.copy_direction = Some(if c.is_from {
                CopyDirection::From
            } else {
                CopyDirection::To
            });
            if c.is_program {
                info.copy_program_or_file = true;
                info.need(
                    Admin,
                    "COPY … PROGRAM runs a shell command on the database server",
                );
            } else if !c.filename.is_empty() {
                info.copy_program_or_file = true;
                info.need(
                    Admin,
                    format!(
                        "COPY … {} '{}' {} a file on the database server",
                        if c.is_from { "FROM" } else { "TO" },
                        c.filename,
                        if c.is_from { "reads" } else { "writes" }
                    ),
                );
            } else if c.is_from {
                info.need(Write, "COPY … FROM STDIN loads rows");
            }
        }
        NodeEnum::TransactionStmt(t) => {
            use protobuf::TransactionStmtKind as K;
            match K::try_from(t.kind) {
                Ok(K::TransStmtPrepare | K::TransStmtCommitPrepared | K::TransStmtRollbackPrepared) => info
                    .need(
                        Admin,
                        "two-phase commit leaves prepared transactions (and their locks) behind the session",
                    ),
                Ok(K::TransStmtBegin | K::TransStmtStart) if transaction_read_write(&t.options) => {
                    info.begin_read_write = true;
                    info.need(
                        Write,
                        format!("{} READ WRITE starts a read-write transaction", info.kind),
                    );
                }
                _ => {}
            }
        }
        NodeEnum::VariableSetStmt(s) => variable_set(s, info),
        NodeEnum::DiscardStmt(d) => {
            if d.target == protobuf::DiscardMode::DiscardAll as i32 {
                info.sets.push(SettingChange {
                    name: "all".into(),
                    value: SetValue::Default,
                    local: false,
                    via: "DISCARD ALL",
                });
            }
        }
        NodeEnum::DoStmt(_) => info.need(Admin, "DO runs an anonymous code block that can do anything"),
        NodeEnum::CallStmt(_) => info.need(Admin, "CALL runs a procedure that can do anything"),
        NodeEnum::AlterTableStmt(a) => {
            let owner = a.cmds.iter().any(|c| {
                matches!(&c.node, Some(NodeEnum::AlterTableCmd(cmd))
                    if cmd.subtype == protobuf::AlterTableType::AtChangeOwner as i32)
            });
            if owner {
                info.need(Admin, "ALTER … OWNER TO changes who owns an object (privileges)");
            } else {
                info.need(Ddl, "ALTER TABLE changes the schema");
            }
        }
        NodeEnum::DropStmt(d) => {
            drop_relations(d, info);
            info.need(Ddl, "DROP removes schema objects");
        }
        NodeEnum::CreateTableAsStmt(c) if c.objtype == protobuf::ObjectType::ObjectMatview as i32 => {
            info.need(Ddl, "CREATE MATERIALIZED VIEW creates a relation")
        }
        NodeEnum::CreateTableAsStmt(_) => info.need(Ddl, "CREATE TABLE AS creates a table"),
        NodeEnum::TruncateStmt(_) => info.need(Ddl, "TRUNCATE empties tables"),
        NodeEnum::CommentStmt(_) => info.need(Ddl, "COMMENT changes the schema"),
        NodeEnum::RefreshMatViewStmt(_) => info.need(Ddl, "REFRESH MATERIALIZED VIEW rewrites a relation"),
        _ => {
            let (class, why) = utility_class(top);
            info.need(class, format!("{} {why}", info.kind));
        }
    }
    true
}

/// Class of the remaining utility statements, by parse-node name.
fn utility_class(top: &str) -> (StatementClass, String) {
    const DDL: &[&str] = &[
        "CreateStmt",
        "CreateForeignTableStmt",
        "IndexStmt",
        "ViewStmt",
        "CreateSeqStmt",
        "AlterSeqStmt",
        "CreateFunctionStmt",
        "AlterFunctionStmt",
        "RenameStmt",
        "AlterObjectSchemaStmt",
        "AlterObjectDependsStmt",
        "CreateSchemaStmt",
        "CreateEnumStmt",
        "AlterEnumStmt",
        "DefineStmt",
        "CompositeTypeStmt",
        "CreateDomainStmt",
        "AlterDomainStmt",
        "CreateTrigStmt",
        "RuleStmt",
        "CreatePolicyStmt",
        "AlterPolicyStmt",
        "CreateStatsStmt",
        "AlterStatsStmt",
        "CreateRangeStmt",
        "CreateCastStmt",
        "CreateOpClassStmt",
        "CreateOpFamilyStmt",
        "AlterOpFamilyStmt",
        "AlterTypeStmt",
        "AlterCollationStmt",
        "AlterOperatorStmt",
        "AlterTsDictionaryStmt",
        "AlterTsConfigurationStmt",
        "CreateConversionStmt",
    ];
    const ADMIN: &[(&str, &str)] = &[
        ("GrantStmt", "changes privileges"),
        ("GrantRoleStmt", "changes role memberships"),
        ("AlterDefaultPrivilegesStmt", "changes default privileges"),
        ("CreateRoleStmt", "manages roles"),
        ("AlterRoleStmt", "manages roles"),
        ("AlterRoleSetStmt", "changes a role's settings"),
        ("DropRoleStmt", "manages roles"),
        ("ReassignOwnedStmt", "changes ownership"),
        ("DropOwnedStmt", "drops everything a role owns"),
        ("AlterSystemStmt", "changes the server configuration"),
        ("VacuumStmt", "is maintenance"),
        ("ClusterStmt", "rewrites tables (maintenance)"),
        ("ReindexStmt", "is maintenance"),
        ("CheckPointStmt", "is maintenance"),
        ("LoadStmt", "loads a shared library into the server"),
        ("CreateExtensionStmt", "manages extensions"),
        ("AlterExtensionStmt", "manages extensions"),
        ("AlterExtensionContentsStmt", "manages extensions"),
        ("CreatedbStmt", "manages databases"),
        ("DropdbStmt", "manages databases"),
        ("AlterDatabaseStmt", "manages databases"),
        ("AlterDatabaseSetStmt", "changes a database's settings"),
        ("AlterDatabaseRefreshCollStmt", "manages databases"),
        ("CreateTableSpaceStmt", "manages tablespaces"),
        ("DropTableSpaceStmt", "manages tablespaces"),
        ("AlterTableSpaceOptionsStmt", "manages tablespaces"),
        ("AlterTableMoveAllStmt", "moves relations between tablespaces"),
        ("CreateFdwStmt", "manages foreign data wrappers"),
        ("AlterFdwStmt", "manages foreign data wrappers"),
        ("CreateForeignServerStmt", "manages foreign servers"),
        ("AlterForeignServerStmt", "manages foreign servers"),
        ("CreateUserMappingStmt", "manages credentials for foreign servers"),
        ("AlterUserMappingStmt", "manages credentials for foreign servers"),
        ("DropUserMappingStmt", "manages credentials for foreign servers"),
        ("ImportForeignSchemaStmt", "imports foreign tables"),
        ("CreateEventTrigStmt", "manages event triggers"),
        ("AlterEventTrigStmt", "manages event triggers"),
        ("CreatePlangStmt", "manages procedural languages"),
        ("CreatePublicationStmt", "manages replication"),
        ("AlterPublicationStmt", "manages replication"),
        ("CreateSubscriptionStmt", "manages replication"),
        ("AlterSubscriptionStmt", "manages replication"),
        ("DropSubscriptionStmt", "manages replication"),
        ("AlterOwnerStmt", "changes ownership"),
        ("SecLabelStmt", "changes security labels"),
        ("CreateTransformStmt", "manages transforms"),
        ("CreateAmStmt", "manages access methods"),
    ];
    if DDL.contains(&top) {
        return (StatementClass::Ddl, "changes the schema".into());
    }
    if let Some((_, why)) = ADMIN.iter().find(|(n, _)| *n == top) {
        return (StatementClass::Admin, (*why).into());
    }
    (
        StatementClass::Admin,
        "is not a statement timebox knows to be harmless".into(),
    )
}

fn drop_relations(d: &protobuf::DropStmt, info: &mut StatementInfo) {
    use protobuf::ObjectType as O;
    let relation_like = [
        O::ObjectTable,
        O::ObjectView,
        O::ObjectMatview,
        O::ObjectSequence,
        O::ObjectIndex,
        O::ObjectForeignTable,
    ];
    if !relation_like.iter().any(|t| *t as i32 == d.remove_type) {
        return;
    }
    for object in &d.objects {
        if let Some(NodeEnum::List(list)) = &object.node {
            let parts: Vec<&str> = list
                .items
                .iter()
                .filter_map(|i| match &i.node {
                    Some(NodeEnum::String(s)) => Some(s.sval.as_str()),
                    _ => None,
                })
                .collect();
            let rel = match parts.as_slice() {
                [name] => Relation {
                    schema: None,
                    name: name.to_string(),
                },
                [.., schema, name] => Relation {
                    schema: Some(schema.to_string()),
                    name: name.to_string(),
                },
                [] => continue,
            };
            if !info.relations.contains(&rel) {
                info.relations.push(rel);
            }
        }
    }
}

/// PostgreSQL's `parse_bool` for option values: `true/false/on/off/yes/no/1/0` and unique prefixes.
fn parse_bool(s: &str) -> Option<bool> {
    let s = s.trim().to_ascii_lowercase();
    if s.is_empty() {
        return None;
    }
    let is_prefix = |word: &str, min: usize| s.len() >= min && word.starts_with(s.as_str());
    if is_prefix("true", 1) || is_prefix("yes", 1) || is_prefix("on", 2) || s == "1" {
        Some(true)
    } else if is_prefix("false", 1) || is_prefix("no", 1) || is_prefix("off", 2) || s == "0" {
        Some(false)
    } else {
        None
    }
}

/// The boolean value of a `DefElem` argument (`None` argument means true). `None` when the value
/// is not understood.
fn def_bool(arg: Option<&protobuf::Node>) -> Option<bool> {
    let Some(node) = arg.and_then(|n| n.node.as_ref()) else {
        return Some(true);
    };
    match node {
        NodeEnum::String(s) => parse_bool(&s.sval),
        NodeEnum::Boolean(b) => Some(b.boolval),
        NodeEnum::Integer(i) => Some(i.ival != 0),
        NodeEnum::AConst(c) => match &c.val {
            Some(a_const::Val::Boolval(b)) => Some(b.boolval),
            Some(a_const::Val::Ival(i)) => Some(i.ival != 0),
            Some(a_const::Val::Sval(s)) => parse_bool(&s.sval),
            _ => None,
        },
        _ => None,
    }
}

/// Whether `EXPLAIN` options ask for `ANALYZE`. A value the proxy does not understand counts as
/// yes (the server either rejects it or runs the statement).
fn explain_analyze(options: &[protobuf::Node]) -> bool {
    let mut analyze = false;
    for opt in options {
        if let Some(NodeEnum::DefElem(d)) = &opt.node {
            if d.defname.eq_ignore_ascii_case("analyze") {
                analyze = def_bool(d.arg.as_deref()).unwrap_or(true);
            }
        }
    }
    analyze
}

/// Whether `BEGIN`/`START TRANSACTION` options include `READ WRITE`.
fn transaction_read_write(options: &[protobuf::Node]) -> bool {
    options.iter().any(|opt| {
        matches!(&opt.node, Some(NodeEnum::DefElem(d))
            if d.defname == "transaction_read_only" && def_bool(d.arg.as_deref()) != Some(true))
    })
}

fn const_text(node: &protobuf::Node) -> Option<String> {
    match node.node.as_ref()? {
        NodeEnum::AConst(c) => match &c.val {
            Some(a_const::Val::Sval(s)) => Some(s.sval.clone()),
            Some(a_const::Val::Ival(i)) => Some(i.ival.to_string()),
            Some(a_const::Val::Fval(f)) => Some(f.fval.clone()),
            Some(a_const::Val::Boolval(b)) => Some(if b.boolval { "on" } else { "off" }.into()),
            Some(a_const::Val::Bsval(b)) => Some(b.bsval.clone()),
            None => None,
        },
        NodeEnum::String(s) => Some(s.sval.clone()),
        NodeEnum::Integer(i) => Some(i.ival.to_string()),
        _ => None,
    }
}

fn variable_set(s: &protobuf::VariableSetStmt, info: &mut StatementInfo) {
    use protobuf::VariableSetKind as K;
    let name = s.name.to_lowercase();
    let (value, via) = match K::try_from(s.kind) {
        Ok(K::VarSetValue) => {
            let parts: Option<Vec<String>> = s.args.iter().map(const_text).collect();
            (
                match parts {
                    Some(p) => SetValue::Value(p.join(", ")),
                    None => SetValue::NotLiteral,
                },
                "SET",
            )
        }
        Ok(K::VarSetDefault) => (SetValue::Default, "SET"),
        Ok(K::VarReset) => (SetValue::Default, "RESET"),
        Ok(K::VarResetAll) => {
            info.sets.push(SettingChange {
                name: "all".into(),
                value: SetValue::Default,
                local: false,
                via: "RESET ALL",
            });
            return;
        }
        Ok(K::VarSetMulti) => {
            // SET TRANSACTION …, SET SESSION CHARACTERISTICS AS TRANSACTION …, SET TRANSACTION SNAPSHOT.
            let session = s.name == "SESSION CHARACTERISTICS";
            let via = if session {
                "SET SESSION CHARACTERISTICS"
            } else {
                "SET TRANSACTION"
            };
            for arg in &s.args {
                match &arg.node {
                    Some(NodeEnum::DefElem(d)) => {
                        let name = if session {
                            format!("default_{}", d.defname)
                        } else {
                            d.defname.clone()
                        };
                        let value = match d.arg.as_deref().and_then(const_text) {
                            Some(v)
                                if d.defname == "transaction_read_only"
                                    || d.defname == "transaction_deferrable" =>
                            {
                                SetValue::Value(if v == "0" { "off".into() } else { "on".into() })
                            }
                            Some(v) => SetValue::Value(v),
                            None => SetValue::NotLiteral,
                        };
                        info.sets.push(SettingChange {
                            name,
                            value,
                            local: !session,
                            via,
                        });
                    }
                    _ => info.sets.push(SettingChange {
                        name: "transaction_snapshot".into(),
                        value: const_text(arg).map_or(SetValue::NotLiteral, SetValue::Value),
                        local: true,
                        via,
                    }),
                }
            }
            return;
        }
        _ => (SetValue::NotLiteral, "SET"),
    };
    info.sets.push(SettingChange {
        name,
        value,
        local: s.is_local,
        via,
    });
}

/// `set_config(name, value, is_local)` counts as a `SET` when its arguments are literals.
fn set_config(call: &FuncRef, info: &mut StatementInfo) {
    match (
        call.args.first().cloned().flatten(),
        call.args.get(1).cloned().flatten(),
    ) {
        (Some(name), value) => info.sets.push(SettingChange {
            name: name.trim().to_lowercase(),
            value: value.map_or(SetValue::NotLiteral, SetValue::Value),
            local: false,
            via: "set_config()",
        }),
        // An expression, or named arguments (`setting_name => …`), which the walker does not read:
        // it may name client_encoding, so it counts as a change of an unknown setting that may
        // change lexing (never allowed). Fail closed.
        (None, _) => info.sets.push(SettingChange {
            name: UNREADABLE_SETTING.into(),
            value: SetValue::NotLiteral,
            local: false,
            via: "set_config()",
        }),
    }
}

/// The name a `set_config()` change gets when the proxy cannot read which setting it names.
pub(crate) const UNREADABLE_SETTING: &str = "(a setting named by an expression or by named arguments)";

/// Whether a setting value turns an `on/off` setting on.
fn value_is_on(value: &SetValue) -> bool {
    matches!(value, SetValue::Value(v) if parse_bool(v.trim_matches('\'')) == Some(true))
}

/// The class one setting change needs, with its reason. Role-dependent rules (the
/// `statement_timeout` cap, table rules and `search_path`) are in the authorizer.
pub(crate) fn setting_class(change: &SettingChange) -> (StatementClass, String) {
    use StatementClass::*;
    let what = format!("{} {}", change.via, change.name);
    if change.name == "all" {
        return (
            Write,
            format!(
                "{} resets every setting, including default_transaction_read_only",
                change.via
            ),
        );
    }
    match functions::setting_kind(&change.name) {
        SettingKind::Harmless | SettingKind::StatementTimeout => {
            (Read, format!("{what} is a harmless session setting"))
        }
        SettingKind::SearchPath => match &change.value {
            SetValue::NotLiteral => (
                Admin,
                format!("{what} to a value that is not a literal: the proxy cannot tell whether pg_catalog stays first"),
            ),
            SetValue::Value(v) if pg_catalog_not_first(v) => (
                Admin,
                format!(
                    "{what} puts pg_catalog behind other schemas, so their functions can shadow built-ins"
                ),
            ),
            _ => (Read, format!("{what} is a harmless session setting")),
        },
        SettingKind::ReadOnlyGuard if value_is_on(&change.value) => {
            (Read, format!("{what} keeps transactions read-only"))
        }
        SettingKind::ReadOnlyGuard => (Write, format!("{what} turns off read-only transactions")),
        SettingKind::Lexing => (
            Admin,
            format!(
                "{what} changes how SQL text is lexed, so the proxy could no longer see what the server runs"
            ),
        ),
        SettingKind::ClientEncoding => match &change.value {
            SetValue::Value(v) if !functions::is_utf8_encoding(v) => (
                Admin,
                format!("{what} to {v} changes how SQL text is lexed (only UTF8 is allowed)"),
            ),
            SetValue::NotLiteral => (
                Admin,
                format!("{what} to a value that is not a literal could change how SQL text is lexed (only a literal UTF8 is allowed)"),
            ),
            _ => (Read, format!("{what} keeps UTF8")),
        },
        SettingKind::Identity => (
            Admin,
            format!("{what} changes the session's identity and privileges"),
        ),
        SettingKind::Custom => (
            Admin,
            format!("{what} changes a custom setting (row-level security policies may trust it)"),
        ),
        SettingKind::Other => (
            Admin,
            format!("{what} is a server-wide or unknown setting, not a harmless session setting"),
        ),
    }
}

/// Whether a `search_path` value names `pg_catalog` after another schema.
fn pg_catalog_not_first(value: &str) -> bool {
    let schemas: Vec<String> = value
        .split(',')
        .map(|s| s.trim().trim_matches('"').to_lowercase())
        .filter(|s| !s.is_empty())
        .collect();
    schemas
        .iter()
        .position(|s| s == "pg_catalog")
        .is_some_and(|i| i > 0)
}

/// Whether a `SET`-family change is one of those that lexing depends on (never changeable).
pub(crate) fn changes_lexing(change: &SettingChange) -> bool {
    if change.name == UNREADABLE_SETTING {
        return true;
    }
    match functions::setting_kind(&change.name) {
        SettingKind::Lexing => true,
        // A value the proxy cannot read may be any encoding (`'SJIS'::text`, `'SJ' || 'IS'`): the
        // next pipelined message would be lexed by the server in it. Fail closed.
        SettingKind::ClientEncoding => match &change.value {
            SetValue::Value(v) => !functions::is_utf8_encoding(v),
            SetValue::NotLiteral => true,
            SetValue::Default => false,
        },
        _ => false,
    }
}

/// Whether one `MERGE` action changes existing rows with no condition that filters them, for
/// `require_where`. `on_filters`: the `ON` condition names a column; `action_filters`: the action's
/// own `WHEN … AND` condition does. A condition that names no column (`true`, `1 = 1`, `NOT false`,
/// `'t'::bool`, `(SELECT true)`) is the same for every row, so it is no condition. `WHEN MATCHED`
/// rows are filtered by either condition; `WHEN NOT MATCHED BY SOURCE` rows (PostgreSQL 17) are the
/// target rows no source row matched, so only the action's own condition filters them. `INSERT` and
/// `DO NOTHING` change no existing row; any other command counts as changing rows (fail closed).
fn merge_action_unfiltered(
    match_kind: i32,
    command_type: i32,
    on_filters: bool,
    action_filters: bool,
) -> bool {
    use protobuf::{CmdType, MergeMatchKind};
    if matches!(
        CmdType::try_from(command_type),
        Ok(CmdType::CmdInsert | CmdType::CmdNothing)
    ) || action_filters
    {
        return false;
    }
    match MergeMatchKind::try_from(match_kind) {
        Ok(MergeMatchKind::MergeWhenMatched) => !on_filters,
        _ => true,
    }
}

// ---------------------------------------------------------------------------------------------
// sqlparser: the second opinion.
// ---------------------------------------------------------------------------------------------

struct SqlparserView {
    family: &'static str,
    /// A class sqlparser's tree shows, if higher than a plain read.
    class: Option<(StatementClass, &'static str)>,
}

fn sqlparser_view(piece: &str, executes: bool) -> Result<SqlparserView, String> {
    let statements = Parser::parse_sql(&PostgreSqlDialect {}, piece)
        .map_err(|e| format!("sqlparser cannot parse it ({e}), so its meaning cannot be cross-checked"))?;
    let [stmt] = statements.as_slice() else {
        return Err(format!(
            "sqlparser sees {} statements where PostgreSQL sees one: the parsers disagree",
            statements.len()
        ));
    };
    let family = sp_family(stmt);
    let mut class = sp_base_class(stmt, family);
    if executes {
        let mut v = SpVisitor::default();
        let _ = stmt.visit(&mut v);
        let nested = if v.dml {
            Some((StatementClass::Write, "a data-modifying statement"))
        } else if v.locks {
            Some((StatementClass::Write, "a row-locking clause"))
        } else {
            None
        };
        class = class.max(nested);
        if v.into {
            class = class.max(Some((StatementClass::Ddl, "SELECT … INTO")));
        }
    }
    Ok(SqlparserView { family, class })
}

fn sp_base_class(stmt: &Statement, family: &str) -> Option<(StatementClass, &'static str)> {
    match family {
        "insert" | "update" | "delete" | "merge" | "lock" | "notify" => {
            Some((StatementClass::Write, "a data-modifying statement"))
        }
        "copy" => match stmt {
            Statement::Copy {
                target: CopyTarget::File { .. } | CopyTarget::Program { .. },
                ..
            } => Some((StatementClass::Admin, "COPY to or from a server file or program")),
            Statement::Copy { to: false, .. } => Some((StatementClass::Write, "COPY … FROM")),
            _ => None,
        },
        "create" | "alter" | "drop" | "truncate" | "comment" | "refresh" => {
            Some((StatementClass::Ddl, "a schema change"))
        }
        "grant" | "revoke" | "vacuum" | "analyze" | "call" | "do" | "load" | "other" => {
            Some((StatementClass::Admin, "an administrative statement"))
        }
        _ => None,
    }
}

/// sqlparser's statement family, comparable with [`pg_kind`]'s.
fn sp_family(stmt: &Statement) -> &'static str {
    match stmt {
        Statement::Query(q) => query_family(q),
        Statement::Insert { .. } => "insert",
        Statement::Update { .. } => "update",
        Statement::Delete { .. } => "delete",
        Statement::Merge { .. } => "merge",
        Statement::Set { .. } | Statement::Reset { .. } => "set",
        Statement::ShowVariable { .. } | Statement::ShowVariables { .. } => "show",
        Statement::StartTransaction { .. }
        | Statement::Commit { .. }
        | Statement::Rollback { .. }
        | Statement::Savepoint { .. }
        | Statement::ReleaseSavepoint { .. } => "transaction",
        Statement::Explain { .. } => "explain",
        Statement::Copy { .. } => "copy",
        Statement::Prepare { .. } => "prepare",
        Statement::Execute { .. } => "execute",
        Statement::Deallocate { .. } => "deallocate",
        Statement::Declare { .. } => "declare",
        Statement::Fetch { .. } => "fetch",
        Statement::Close { .. } => "close",
        Statement::Lock { .. } | Statement::LockTables { .. } => "lock",
        Statement::NOTIFY { .. } => "notify",
        Statement::LISTEN { .. } => "listen",
        Statement::UNLISTEN { .. } => "unlisten",
        Statement::Discard { .. } => "discard",
        Statement::Call { .. } => "call",
        Statement::Truncate { .. } => "truncate",
        Statement::Comment { .. } => "comment",
        Statement::Grant { .. } | Statement::GrantRole { .. } => "grant",
        Statement::Revoke { .. } | Statement::RevokeRole { .. } => "revoke",
        Statement::Vacuum { .. } => "vacuum",
        Statement::Analyze { .. } => "analyze",
        Statement::RefreshMaterializedView { .. } => "refresh",
        Statement::Load { .. } => "load",
        Statement::CreateView { .. }
        | Statement::CreateTable { .. }
        | Statement::CreateIndex { .. }
        | Statement::CreateRole { .. }
        | Statement::CreateServer { .. }
        | Statement::CreateForeignTable { .. }
        | Statement::CreateForeignDataWrapper { .. }
        | Statement::CreateUserMapping { .. }
        | Statement::CreatePolicy { .. }
        | Statement::CreateRule { .. }
        | Statement::CreateOperator { .. }
        | Statement::CreateOperatorFamily { .. }
        | Statement::CreateOperatorClass { .. }
        | Statement::CreateTextSearch { .. }
        | Statement::CreateAggregate { .. }
        | Statement::CreateExtension { .. }
        | Statement::CreateCollation { .. }
        | Statement::CreateSchema { .. }
        | Statement::CreateDatabase { .. }
        | Statement::CreateFunction { .. }
        | Statement::CreateTrigger { .. }
        | Statement::CreateProcedure { .. }
        | Statement::CreateSequence { .. }
        | Statement::CreateDomain { .. }
        | Statement::CreateType { .. }
        | Statement::CreateUser { .. } => "create",
        Statement::AlterTable { .. }
        | Statement::AlterSchema { .. }
        | Statement::AlterIndex { .. }
        | Statement::AlterView { .. }
        | Statement::AlterFunction { .. }
        | Statement::AlterType { .. }
        | Statement::AlterCollation { .. }
        | Statement::AlterOperator { .. }
        | Statement::AlterOperatorFamily { .. }
        | Statement::AlterOperatorClass { .. }
        | Statement::AlterTextSearch { .. }
        | Statement::AlterRole { .. }
        | Statement::AlterPolicy { .. }
        | Statement::AlterTrigger { .. }
        | Statement::AlterUser { .. }
        | Statement::AlterDefaultPrivileges { .. } => "alter",
        Statement::Drop { .. }
        | Statement::DropFunction { .. }
        | Statement::DropDomain { .. }
        | Statement::DropProcedure { .. }
        | Statement::DropPolicy { .. }
        | Statement::DropRule { .. }
        | Statement::DropExtension { .. }
        | Statement::DropOperator { .. }
        | Statement::DropOperatorFamily { .. }
        | Statement::DropOperatorClass { .. }
        | Statement::DropTrigger { .. } => "drop",
        _ => "other",
    }
}

/// A query whose body is DML (`WITH … INSERT …`, which sqlparser returns as a query) is that DML.
fn query_family(q: &Query) -> &'static str {
    match q.body.as_ref() {
        SetExpr::Insert(_) => "insert",
        SetExpr::Update(_) => "update",
        SetExpr::Delete(_) => "delete",
        SetExpr::Merge(_) => "merge",
        _ => "query",
    }
}

#[derive(Default)]
struct SpVisitor {
    dml: bool,
    locks: bool,
    into: bool,
}

impl Visitor for SpVisitor {
    type Break = ();

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        if !query.locks.is_empty() {
            self.locks = true;
        }
        if query_family(query) != "query" {
            self.dml = true;
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_select(&mut self, select: &Select) -> ControlFlow<()> {
        if select.into.is_some() {
            self.into = true;
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_statement(&mut self, statement: &Statement) -> ControlFlow<()> {
        if matches!(
            statement,
            Statement::Insert { .. }
                | Statement::Update { .. }
                | Statement::Delete { .. }
                | Statement::Merge { .. }
        ) {
            self.dml = true;
        }
        ControlFlow::Continue(())
    }
}

// ---------------------------------------------------------------------------------------------
// The parse-tree walker: a serde::Serializer that sees every field of every node.
// ---------------------------------------------------------------------------------------------

/// Statements that may carry a `WITH` clause (and so define CTE names).
const WITH_OWNERS: &[&str] = &[
    "SelectStmt",
    "InsertStmt",
    "UpdateStmt",
    "DeleteStmt",
    "MergeStmt",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pos {
    Body,
    Cte(u32),
}

#[derive(Debug)]
struct RelRef {
    schema: String,
    name: String,
    /// Target of INSERT/UPDATE/DELETE/MERGE: never a CTE.
    target: bool,
    /// Enclosing WITH owners, innermost first, with where in them the reference is.
    scopes: Vec<(u32, Pos)>,
}

#[derive(Debug)]
struct CteDef {
    owner: u32,
    index: u32,
    name: String,
}

#[derive(Debug)]
struct FuncRef {
    name: String,
    /// Literal text arguments (only kept for `set_config`).
    args: Vec<Option<String>>,
}

#[derive(Debug, Default)]
struct Findings {
    /// Parse-node name of the statement (`SelectStmt`, `CreateStmt`, …).
    top: Option<&'static str>,
    dml: Vec<&'static str>,
    locking: bool,
    select_into: bool,
    /// An UPDATE or DELETE, or a MERGE with an UPDATE/DELETE action, was seen.
    has_update_or_delete: bool,
    unfiltered: Vec<Relation>,
    /// Targets of MERGEs with an unfiltered UPDATE/DELETE action.
    unfiltered_merge: Vec<Relation>,
    rels: Vec<RelRef>,
    ctes: Vec<CteDef>,
    recursive: Vec<u32>,
    funcs: Vec<FuncRef>,
    ops: Vec<String>,
    /// `location` of every `A_Const` node (byte offset into the parsed text, -1 when unknown).
    constants: Vec<i32>,
    /// Newer-grammar constructs, each once, in order of first appearance.
    newer: Vec<NewerSyntax>,
}

impl Findings {
    fn saw(&mut self, syntax: NewerSyntax) {
        if !self.newer.contains(&syntax) {
            self.newer.push(syntax);
        }
    }

    /// Relations, with references to CTEs in scope left out.
    fn relations(&self) -> Vec<Relation> {
        let mut out = Vec::new();
        for r in &self.rels {
            if r.schema.is_empty() && !r.target && self.is_cte(r) {
                continue;
            }
            out.push(Relation {
                schema: (!r.schema.is_empty()).then(|| r.schema.clone()),
                name: r.name.clone(),
            });
        }
        out
    }

    fn is_cte(&self, r: &RelRef) -> bool {
        r.scopes.iter().any(|(owner, pos)| {
            let recursive = self.recursive.contains(owner);
            self.ctes.iter().any(|c| {
                c.owner == *owner
                    && c.name == r.name
                    && match pos {
                        Pos::Body => true,
                        Pos::Cte(i) => recursive || c.index < *i,
                    }
            })
        })
    }
}

struct Frame {
    name: &'static str,
    field: &'static str,
    idx: u32,
    id: u32,
    /// UpdateStmt/DeleteStmt: a WHERE clause was seen. MergeStmt: its ON condition names a column.
    /// MergeWhenClause: its AND condition names a column.
    flag: bool,
    /// AExpr: its kind. MergeWhenClause: its command type. MergeStmt: 1 when an action is
    /// unfiltered. JsonFuncExpr: its operator.
    int: i32,
    /// MergeWhenClause: its match kind.
    match_kind: i32,
    /// UpdateStmt/DeleteStmt/MergeStmt: index of the target in `Findings::rels`.
    target: Option<usize>,
}

#[derive(Default)]
struct Walker {
    frames: Vec<Frame>,
    next_id: u32,
    found: Findings,
    /// Name being collected for a FuncCall or AExpr frame (by frame id).
    names: Vec<(u32, String)>,
    /// Literal arguments of the FuncCall frames being walked (by frame id).
    args: Vec<(u32, Vec<Option<String>>)>,
    rel: Option<(String, String)>,
}

fn walk(node: &protobuf::Node) -> Findings {
    let mut w = Walker::default();
    // The walker never fails; an error could only come from a serde impl we do not have.
    let _ = node.serialize(&mut w);
    w.found
}

#[derive(Debug)]
struct WalkError(String);

impl fmt::Display for WalkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for WalkError {}

impl ser::Error for WalkError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        WalkError(msg.to_string())
    }
}

impl Walker {
    fn top(&self) -> Option<&Frame> {
        self.frames.last()
    }

    /// The frame `up` levels below the top (0 = top).
    fn below(&self, up: usize) -> Option<&Frame> {
        self.frames.len().checked_sub(up + 1).map(|i| &self.frames[i])
    }

    fn enter(&mut self, name: &'static str) {
        self.next_id += 1;
        let id = self.next_id;
        match name {
            "FuncCall" => {
                self.names.push((id, String::new()));
                self.args.push((id, Vec::new()));
            }
            "AExpr" => self.names.push((id, String::new())),
            "RangeVar" => self.rel = Some((String::new(), String::new())),
            "InsertStmt" => self.found.dml.push("INSERT"),
            "UpdateStmt" => {
                self.found.dml.push("UPDATE");
                self.found.has_update_or_delete = true;
            }
            "DeleteStmt" => {
                self.found.dml.push("DELETE");
                self.found.has_update_or_delete = true;
            }
            "MergeStmt" => self.found.dml.push("MERGE"),
            "ColumnRef" => {
                // A column in a MERGE's ON condition or in a WHEN … AND condition makes it filter rows.
                for f in self.frames.iter_mut() {
                    if (f.name == "MergeStmt" && f.field == "join_condition")
                        || (f.name == "MergeWhenClause" && f.field == "condition")
                    {
                        f.flag = true;
                    }
                }
            }
            "LockingClause" => self.found.locking = true,
            "IntoClause" if self.top().is_some_and(|f| f.name == "SelectStmt") => {
                self.found.select_into = true;
            }
            other => {
                if let Some(syntax) = version::node_syntax(other) {
                    self.found.saw(syntax);
                }
            }
        }
        self.frames.push(Frame {
            name,
            field: "",
            idx: 0,
            id,
            flag: false,
            int: 0,
            match_kind: 0,
            target: None,
        });
    }

    fn exit(&mut self) {
        let Some(frame) = self.frames.pop() else { return };
        match frame.name {
            "FuncCall" => {
                let name = self.names.pop().map(|(_, n)| n).unwrap_or_default();
                let args = self.args.pop().map(|(_, a)| a).unwrap_or_default();
                self.found.funcs.push(FuncRef { name, args });
            }
            "AExpr" => {
                let name = self.names.pop().map(|(_, n)| n).unwrap_or_default();
                use protobuf::AExprKind as K;
                let operator = matches!(
                    K::try_from(frame.int),
                    Ok(K::AexprOp
                        | K::AexprOpAny
                        | K::AexprOpAll
                        | K::AexprDistinct
                        | K::AexprNotDistinct
                        | K::AexprNullif
                        | K::AexprIn
                        | K::AexprLike
                        | K::AexprIlike
                        | K::AexprSimilar)
                );
                if operator && !name.is_empty() && !self.found.ops.contains(&name) {
                    self.found.ops.push(name);
                }
            }
            "RangeVar" => self.exit_range_var(),
            "JsonFuncExpr" => self.found.saw(version::json_func_expr(frame.int)),
            "MergeWhenClause" => {
                // Frames: MergeStmt(merge_when_clauses) → Node (top) → MergeWhenClause (popped).
                let on_filters = self.below(1).is_some_and(|m| m.name == "MergeStmt" && m.flag);
                let unfiltered = merge_action_unfiltered(frame.match_kind, frame.int, on_filters, frame.flag);
                if !matches!(
                    protobuf::CmdType::try_from(frame.int),
                    Ok(protobuf::CmdType::CmdInsert | protobuf::CmdType::CmdNothing)
                ) {
                    self.found.has_update_or_delete = true;
                }
                if unfiltered {
                    let len = self.frames.len();
                    if let Some(merge) = len.checked_sub(2).and_then(|i| self.frames.get_mut(i)) {
                        if merge.name == "MergeStmt" {
                            merge.int = 1;
                        }
                    }
                }
            }
            "MergeStmt" if frame.int == 1 => {
                let target = frame
                    .target
                    .and_then(|i| self.found.rels.get(i))
                    .map(|r| Relation {
                        schema: (!r.schema.is_empty()).then(|| r.schema.clone()),
                        name: r.name.clone(),
                    });
                self.found.unfiltered_merge.push(target.unwrap_or(Relation {
                    schema: None,
                    name: "?".into(),
                }));
            }
            "UpdateStmt" | "DeleteStmt" if !frame.flag => {
                let target = frame
                    .target
                    .and_then(|i| self.found.rels.get(i))
                    .map(|r| Relation {
                        schema: (!r.schema.is_empty()).then(|| r.schema.clone()),
                        name: r.name.clone(),
                    });
                self.found.unfiltered.push(target.unwrap_or(Relation {
                    schema: None,
                    name: "?".into(),
                }));
            }
            _ => {}
        }
    }

    fn exit_range_var(&mut self) {
        let Some((schema, name)) = self.rel.take() else {
            return;
        };
        // The RangeVar frame is already popped: the parent is on top.
        let parent = self.top();
        let target = parent.is_some_and(|p| {
            p.field == "relation"
                && matches!(p.name, "InsertStmt" | "UpdateStmt" | "DeleteStmt" | "MergeStmt")
        });
        let mut scopes = Vec::new();
        for k in (0..self.frames.len()).rev() {
            let f = &self.frames[k];
            if WITH_OWNERS.contains(&f.name) {
                let pos = if f.field == "with_clause" {
                    Pos::Cte(self.frames.get(k + 1).map_or(0, |w| w.idx))
                } else {
                    Pos::Body
                };
                scopes.push((f.id, pos));
            }
        }
        let index = self.found.rels.len();
        if target {
            if let Some(p) = self.frames.last_mut() {
                if matches!(p.name, "UpdateStmt" | "DeleteStmt" | "MergeStmt") {
                    p.target = Some(index);
                }
            }
        }
        self.found.rels.push(RelRef {
            schema,
            name,
            target,
            scopes,
        });
    }

    fn string(&mut self, v: &str) {
        let Some(top) = self.top() else { return };
        match (top.name, top.field) {
            ("RangeVar", "schemaname") => {
                if let Some(r) = &mut self.rel {
                    r.0 = v.to_owned();
                }
            }
            ("RangeVar", "relname") => {
                if let Some(r) = &mut self.rel {
                    r.1 = v.to_owned();
                }
            }
            ("CommonTableExpr", "ctename") => {
                // Frames: owner(with_clause) → WithClause(ctes, i) → Node → CommonTableExpr.
                if let (Some(with), Some(owner)) = (self.below(2), self.below(3)) {
                    if with.name == "WithClause" && owner.field == "with_clause" {
                        let (index, owner) = (with.idx, owner.id);
                        self.found.ctes.push(CteDef {
                            owner,
                            index,
                            name: v.to_owned(),
                        });
                    }
                }
            }
            ("String", "sval") => {
                // A name part: FuncCall(funcname) or AExpr(name) → Node → String.
                if let Some(owner) = self.below(2) {
                    let is_name = (owner.name == "FuncCall" && owner.field == "funcname")
                        || (owner.name == "AExpr" && owner.field == "name");
                    if is_name {
                        let id = owner.id;
                        if let Some((nid, name)) = self.names.last_mut() {
                            if *nid == id {
                                if !name.is_empty() {
                                    name.push('.');
                                }
                                name.push_str(v);
                            }
                        }
                        return;
                    }
                }
                // A literal argument: FuncCall(args, i) → Node → AConst(val) → String.
                if let (Some(aconst), Some(call)) = (self.below(1), self.below(3)) {
                    if aconst.name == "AConst" && call.name == "FuncCall" && call.field == "args" {
                        let (id, idx) = (call.id, call.idx as usize);
                        let keep = self
                            .names
                            .iter()
                            .rev()
                            .find(|(nid, _)| *nid == id)
                            .is_some_and(|(_, n)| n.rsplit('.').next() == Some("set_config"));
                        if keep {
                            if let Some((aid, args)) = self.args.last_mut() {
                                if *aid == id {
                                    if args.len() <= idx {
                                        args.resize(idx + 1, None);
                                    }
                                    args[idx] = Some(v.to_owned());
                                }
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

impl ser::Serializer for &mut Walker {
    type Ok = ();
    type Error = WalkError;
    type SerializeSeq = Self;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = Self;
    type SerializeMap = Self;
    type SerializeStruct = Self;
    type SerializeStructVariant = Self;

    fn serialize_bool(self, v: bool) -> Result<(), WalkError> {
        if v && self
            .top()
            .is_some_and(|f| f.name == "WithClause" && f.field == "recursive")
        {
            if let Some(owner) = self.below(1) {
                let id = owner.id;
                self.found.recursive.push(id);
            }
        }
        Ok(())
    }
    fn serialize_i8(self, _: i8) -> Result<(), WalkError> {
        Ok(())
    }
    fn serialize_i16(self, _: i16) -> Result<(), WalkError> {
        Ok(())
    }
    fn serialize_i32(self, v: i32) -> Result<(), WalkError> {
        if let Some(top) = self.frames.last_mut() {
            if (top.name == "AExpr" && top.field == "kind")
                || (top.name == "MergeWhenClause" && top.field == "command_type")
                || (top.name == "JsonFuncExpr" && top.field == "op")
            {
                top.int = v;
            } else if top.name == "MergeWhenClause" && top.field == "match_kind" {
                top.match_kind = v;
            } else if top.name == "AConst" && top.field == "location" {
                self.found.constants.push(v);
            }
        }
        Ok(())
    }
    fn serialize_i64(self, _: i64) -> Result<(), WalkError> {
        Ok(())
    }
    fn serialize_u8(self, _: u8) -> Result<(), WalkError> {
        Ok(())
    }
    fn serialize_u16(self, _: u16) -> Result<(), WalkError> {
        Ok(())
    }
    fn serialize_u32(self, _: u32) -> Result<(), WalkError> {
        Ok(())
    }
    fn serialize_u64(self, _: u64) -> Result<(), WalkError> {
        Ok(())
    }
    fn serialize_f32(self, _: f32) -> Result<(), WalkError> {
        Ok(())
    }
    fn serialize_f64(self, _: f64) -> Result<(), WalkError> {
        Ok(())
    }
    fn serialize_char(self, _: char) -> Result<(), WalkError> {
        Ok(())
    }
    fn serialize_str(self, v: &str) -> Result<(), WalkError> {
        self.string(v);
        Ok(())
    }
    fn serialize_bytes(self, _: &[u8]) -> Result<(), WalkError> {
        Ok(())
    }
    fn serialize_none(self) -> Result<(), WalkError> {
        Ok(())
    }
    fn serialize_some<T: ?Sized + Serialize>(self, value: &T) -> Result<(), WalkError> {
        if let Some(top) = self.frames.last_mut() {
            if matches!(top.name, "UpdateStmt" | "DeleteStmt") && top.field == "where_clause" {
                top.flag = true;
            }
        }
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), WalkError> {
        Ok(())
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), WalkError> {
        Ok(())
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, _: &'static str) -> Result<(), WalkError> {
        Ok(())
    }
    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<(), WalkError> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), WalkError> {
        if self.found.top.is_none() {
            self.found.top = Some(variant);
        }
        value.serialize(self)
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self, WalkError> {
        Ok(self)
    }
    fn serialize_tuple(self, _: usize) -> Result<Self, WalkError> {
        Ok(self)
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Self, WalkError> {
        Ok(self)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self, WalkError> {
        Ok(self)
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self, WalkError> {
        Ok(self)
    }
    fn serialize_struct(self, name: &'static str, _: usize) -> Result<Self, WalkError> {
        self.enter(name);
        Ok(self)
    }
    fn serialize_struct_variant(
        self,
        name: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self, WalkError> {
        self.enter(name);
        Ok(self)
    }
}

impl ser::SerializeSeq for &mut Walker {
    type Ok = ();
    type Error = WalkError;
    fn serialize_element<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), WalkError> {
        value.serialize(&mut **self)?;
        if let Some(top) = self.frames.last_mut() {
            top.idx += 1;
        }
        Ok(())
    }
    fn end(self) -> Result<(), WalkError> {
        Ok(())
    }
}

impl ser::SerializeTuple for &mut Walker {
    type Ok = ();
    type Error = WalkError;
    fn serialize_element<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), WalkError> {
        value.serialize(&mut **self)
    }
    fn end(self) -> Result<(), WalkError> {
        Ok(())
    }
}

impl ser::SerializeTupleStruct for &mut Walker {
    type Ok = ();
    type Error = WalkError;
    fn serialize_field<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), WalkError> {
        value.serialize(&mut **self)
    }
    fn end(self) -> Result<(), WalkError> {
        Ok(())
    }
}

impl ser::SerializeTupleVariant for &mut Walker {
    type Ok = ();
    type Error = WalkError;
    fn serialize_field<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), WalkError> {
        value.serialize(&mut **self)
    }
    fn end(self) -> Result<(), WalkError> {
        Ok(())
    }
}

impl ser::SerializeMap for &mut Walker {
    type Ok = ();
    type Error = WalkError;
    fn serialize_key<T: ?Sized + Serialize>(&mut self, _: &T) -> Result<(), WalkError> {
        Ok(())
    }
    fn serialize_value<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), WalkError> {
        value.serialize(&mut **self)
    }
    fn end(self) -> Result<(), WalkError> {
        Ok(())
    }
}

impl ser::SerializeStruct for &mut Walker {
    type Ok = ();
    type Error = WalkError;
    fn serialize_field<T: ?Sized + Serialize>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), WalkError> {
        if let Some(top) = self.frames.last_mut() {
            top.field = key;
            top.idx = 0;
        }
        value.serialize(&mut **self)
    }
    fn end(self) -> Result<(), WalkError> {
        self.exit();
        Ok(())
    }
}

impl ser::SerializeStructVariant for &mut Walker {
    type Ok = ();
    type Error = WalkError;
    fn serialize_field<T: ?Sized + Serialize>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), WalkError> {
        if let Some(top) = self.frames.last_mut() {
            top.field = key;
            top.idx = 0;
        }
        value.serialize(&mut **self)
    }
    fn end(self) -> Result<(), WalkError> {
        self.exit();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protobuf::{CmdType as C, MergeMatchKind as M};

    /// (what it guards against, match kind, command, ON names a column, AND names a column, unfiltered)
    #[rustfmt::skip]
    const MERGE_ACTIONS: &[(&str, M, C, bool, bool, bool)] = &[
        ("matched_update_on_constant", M::MergeWhenMatched, C::CmdUpdate, false, false, true),
        ("matched_delete_on_constant", M::MergeWhenMatched, C::CmdDelete, false, false, true),
        ("matched_update_on_column", M::MergeWhenMatched, C::CmdUpdate, true, false, false),
        ("matched_delete_and_column", M::MergeWhenMatched, C::CmdDelete, false, true, false),
        ("matched_do_nothing", M::MergeWhenMatched, C::CmdNothing, false, false, false),
        ("not_matched_insert", M::MergeWhenNotMatchedByTarget, C::CmdInsert, false, false, false),
        ("by_source_delete_ignores_on", M::MergeWhenNotMatchedBySource, C::CmdDelete, true, false, true),
        ("by_source_update_with_and", M::MergeWhenNotMatchedBySource, C::CmdUpdate, true, true, false),
        ("unknown_command_fails_closed", M::MergeWhenMatched, C::Undefined, false, false, true),
        ("unknown_match_kind_fails_closed", M::Undefined, C::CmdUpdate, true, false, true),
    ];

    #[test]
    fn merge_actions_without_a_filter() {
        for (name, kind, cmd, on, and, unfiltered) in MERGE_ACTIONS {
            assert_eq!(
                merge_action_unfiltered(*kind as i32, *cmd as i32, *on, *and),
                *unfiltered,
                "{name}"
            );
        }
    }
}
