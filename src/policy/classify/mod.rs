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
//!    PostgreSQL's `TABLE name` (which sqlparser reads only inside a query) is handed to it spelled
//!    `SELECT * FROM name`, exactly where PostgreSQL's tree and scanner put such a command.
//!
//! Every relation a statement changes (writes, creates, alters, locks, truncates, drops, hangs a
//! trigger on) is checked against the system catalogs ([`super::catalog`]): changing one is `admin`.
//!
//! If PostgreSQL's parser rejects the message, the server would reject all of it too; the pieces
//! PostgreSQL's scanner finds are classified one by one for the report, and the message always
//! carries an `Unparsed` statement.

mod kinds;
mod second_opinion;
mod settings;
#[cfg(test)]
mod tests;
mod walker;

use std::fmt;
use std::ops::Range;

use pg_query::protobuf;

use super::catalog;
use super::functions::{self, FunctionKind};
use super::version::NewerSyntax;
use kinds::{base_class, pg_kind};
use second_opinion::{sqlparser_view, table_commands_as_selects};
use settings::set_config;
pub(crate) use settings::{changes_lexing, setting_class, UNREADABLE_SETTING};
use walker::walk;

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
    /// `walker::merge_action_unfiltered`); they count as `has_where == Some(false)`.
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
    /// `FETCH … FROM name` or `MOVE … IN name` (which returns no rows but runs the cursor's query):
    /// masked roles' sessions check that the cursor was declared against the catalog it is
    /// fetched under.
    pub fetch_cursor: Option<String>,
    /// `CLOSE name` or `CLOSE ALL` (masked roles' sessions forget the cursor).
    pub close_cursor: Option<Deallocate>,
    /// `DECLARE … WITH HOLD`: the cursor outlives its transaction.
    pub declare_hold: bool,
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
            fetch_cursor: None,
            close_cursor: None,
            declare_hold: false,
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
                let (info, locations) = classify_statement(piece, start, span, node);
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

/// Classifies one statement PostgreSQL parsed; `piece` is its text, at `start` of the parsed text
/// (where the tree's locations count from). Also returns the locations of its `A_Const` nodes (see
/// [`classify_with_constants`]).
fn classify_statement(
    piece: &str,
    start: usize,
    span: Range<usize>,
    node: &protobuf::Node,
) -> (StatementInfo, Vec<i32>) {
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
    if let Some((what, schema)) = catalog::system_schema_object(stmt) {
        info.need(
            StatementClass::Admin,
            catalog::system_schema_reason(what, &schema),
        );
    }
    // What is inside it. An EXPLAIN without ANALYZE only plans its statement: data-modifying parts do
    // not run, but functions still count (the planner may evaluate them).
    if executes {
        for (rel, how) in &findings.changed {
            changes(&mut info, how, rel);
        }
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
            // Row locks on a catalog block DDL, logins and vacuum of the whole database.
            if let Some(catalog) = findings.relations().iter().find_map(catalog::catalog_relation) {
                info.need(
                    StatementClass::Admin,
                    catalog::catalog_reason("SELECT … FOR UPDATE/SHARE locks rows of", &catalog),
                );
            }
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

    cross_check(
        &mut info,
        piece,
        start,
        family,
        executes,
        &findings.table_commands,
    );
    info.finish();
    (info, constants)
}

/// The second opinion: sqlparser must read `piece` as one statement of PostgreSQL's `family`;
/// what it sees can only raise the class. `table_commands`: where PostgreSQL's `TABLE name`
/// commands have their relation (locations in the text parsed from `start`).
fn cross_check(
    info: &mut StatementInfo,
    piece: &str,
    start: usize,
    family: &str,
    executes: bool,
    table_commands: &[i32],
) {
    // sqlparser reads `TABLE name` only inside a query (a statement cannot
    // start with it): it reads the text with PostgreSQL's `TABLE name` commands spelled as what
    // they are, `SELECT * FROM name`, and still has to agree on everything else.
    let view = match sqlparser_view(piece, executes) {
        Err(why) if !table_commands.is_empty() => {
            let relations: Vec<usize> = table_commands
                .iter()
                .filter_map(|l| usize::try_from(*l).ok()?.checked_sub(start))
                .collect();
            match table_commands_as_selects(piece, &relations) {
                Some(text) => sqlparser_view(&text, executes),
                None => Err(why),
            }
        }
        view => view,
    };
    match view {
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
}

/// Records that the statement changes `rel` (`what`: how): a system catalog relation makes it
/// `admin` ([`catalog`](crate::policy::catalog)).
fn changes(info: &mut StatementInfo, what: &str, rel: &Relation) {
    if let Some(catalog) = catalog::catalog_relation(rel) {
        info.need(StatementClass::Admin, catalog::catalog_reason(what, &catalog));
    }
}

fn family_label(family: &str) -> String {
    match family {
        "query" => "a query".into(),
        "other" => "an unrecognised statement".into(),
        f => format!("a {} statement", f.to_uppercase()),
    }
}
