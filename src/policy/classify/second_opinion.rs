//! sqlparser, the second opinion: re-parses each statement PostgreSQL's parser found and must see
//! one statement of the same family; what it sees can only raise the class, never lower it. Part
//! of [`super`].

use std::ops::ControlFlow;

use sqlparser::ast::{CopyTarget, Query, Select, SetExpr, Statement, Visit, Visitor};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use super::StatementClass;

pub(super) struct SqlparserView {
    pub(super) family: &'static str,
    /// A class sqlparser's tree shows, if higher than a plain read.
    pub(super) class: Option<(StatementClass, &'static str)>,
}

/// `piece` with the `TABLE` keyword of each `TABLE name` command spelled `SELECT * FROM` (what
/// PostgreSQL's grammar makes of it). `relations`: where each command's relation starts in `piece`
/// (from PostgreSQL's parse tree). `None` unless PostgreSQL's scanner finds the keyword `TABLE`
/// as the token right before every one of them (`TABLE ONLY name` is left to fail).
pub(super) fn table_commands_as_selects(piece: &str, relations: &[usize]) -> Option<String> {
    use pg_query::protobuf::Token;
    let tokens: Vec<_> = pg_query::scan(piece)
        .ok()?
        .tokens
        .into_iter()
        .filter(|t| t.token != Token::SqlComment as i32 && t.token != Token::CComment as i32)
        .collect();
    let mut keywords = Vec::with_capacity(relations.len());
    for &at in relations {
        let before = tokens
            .iter()
            .take_while(|t| usize::try_from(t.start).is_ok_and(|s| s < at))
            .last()?;
        if before.token != Token::Table as i32 {
            return None;
        }
        keywords.push((
            usize::try_from(before.start).ok()?,
            usize::try_from(before.end).ok()?,
        ));
    }
    keywords.sort_unstable();
    keywords.dedup();
    let mut text = piece.to_string();
    for (start, end) in keywords.into_iter().rev() {
        text.get(start..end)?;
        text.replace_range(start..end, "SELECT * FROM");
    }
    Some(text)
}

pub(super) fn sqlparser_view(piece: &str, executes: bool) -> Result<SqlparserView, String> {
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

pub(super) fn sp_base_class(stmt: &Statement, family: &str) -> Option<(StatementClass, &'static str)> {
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
pub(super) fn sp_family(stmt: &Statement) -> &'static str {
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
pub(super) fn query_family(q: &Query) -> &'static str {
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
