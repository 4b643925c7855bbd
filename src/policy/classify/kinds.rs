//! Statement kinds and base classes from PostgreSQL's parse tree: the command tag of each
//! statement, the class the statement itself needs (not what is nested in it) and its flags for the
//! relay. Part of [`super`]; pure, and never lowers a class the walker found.

use pg_query::protobuf::{self, a_const, node::Node as NodeEnum};

use super::changes;
use super::settings::variable_set;
use super::{CopyDirection, Deallocate, Relation, SetValue, SettingChange, StatementClass, StatementInfo};

/// Kind (command tag style) and family (compared with sqlparser's view) of a statement.
pub(super) fn pg_kind(stmt: &NodeEnum, top: &str) -> (String, &'static str) {
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
pub(super) fn command_words(node: &str) -> String {
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
pub(super) fn base_class(stmt: &NodeEnum, top: &str, info: &mut StatementInfo) -> bool {
    use StatementClass::*;
    match stmt {
        NodeEnum::SelectStmt(_) => {}
        // MOVE too (s9 attack): it returns no rows, but runs the cursor's query as FETCH does.
        NodeEnum::FetchStmt(f) => info.fetch_cursor = Some(f.portalname.clone()),
        NodeEnum::ClosePortalStmt(c) => {
            info.close_cursor = Some(if c.portalname.is_empty() {
                Deallocate::All
            } else {
                Deallocate::Name(c.portalname.clone())
            })
        }
        NodeEnum::VariableShowStmt(_)
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
            // Without ANALYZE an EXECUTE is still planned again, constants folded (s8 second
            // re-attack): the relay checks what it runs either way.
            if let Some(NodeEnum::ExecuteStmt(x)) = inner {
                info.execute_name = Some(x.name.clone());
            }
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
            // CURSOR_OPT_HOLD (parsenodes.h).
            info.declare_hold = d.options & 0x0020 != 0;
            if let Some(inner) = d.query.as_ref().and_then(|n| n.node.as_ref()) {
                base_class(inner, top, info);
            }
        }
        NodeEnum::CopyStmt(c) => copy_class(c, info),
        NodeEnum::TransactionStmt(t) => transaction_class(t, info),
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
        NodeEnum::CommentStmt(c) => {
            comment_relation(c, info);
            info.need(Ddl, "COMMENT changes the schema");
        }
        NodeEnum::RefreshMatViewStmt(_) => info.need(Ddl, "REFRESH MATERIALIZED VIEW rewrites a relation"),
        _ => {
            let (class, why) = utility_class(top);
            info.need(class, format!("{} {why}", info.kind));
        }
    }
    true
}

/// `COPY`: its direction, and server files and programs (admin).
fn copy_class(c: &protobuf::CopyStmt, info: &mut StatementInfo) {
    use StatementClass::*;
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
    if let Some(rel) = c.relation.as_ref().filter(|_| c.is_from) {
        let rel = Relation {
            schema: (!rel.schemaname.is_empty()).then(|| rel.schemaname.clone()),
            name: rel.relname.clone(),
        };
        changes(info, "COPY … FROM into", &rel);
    }
}

/// `BEGIN … READ WRITE` (write) and two-phase commit (admin).
fn transaction_class(t: &protobuf::TransactionStmt, info: &mut StatementInfo) {
    use protobuf::TransactionStmtKind as K;
    use StatementClass::*;
    match K::try_from(t.kind) {
        Ok(K::TransStmtPrepare | K::TransStmtCommitPrepared | K::TransStmtRollbackPrepared) => info.need(
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

/// Class of the remaining utility statements, by parse-node name.
pub(super) fn utility_class(top: &str) -> (StatementClass, String) {
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

/// Object types that name a relation (as a list of name parts) in `DROP` and `COMMENT`.
const RELATION_LIKE: [protobuf::ObjectType; 6] = [
    protobuf::ObjectType::ObjectTable,
    protobuf::ObjectType::ObjectView,
    protobuf::ObjectType::ObjectMatview,
    protobuf::ObjectType::ObjectSequence,
    protobuf::ObjectType::ObjectIndex,
    protobuf::ObjectType::ObjectForeignTable,
];

/// The relation an object name (`List` of `String` parts: `[schema.]name`, and `.column` when
/// `column`) names.
fn named_relation(object: &protobuf::Node, column: bool) -> Option<Relation> {
    let Some(NodeEnum::List(list)) = &object.node else {
        return None;
    };
    let mut parts: Vec<&str> = list
        .items
        .iter()
        .filter_map(|i| match &i.node {
            Some(NodeEnum::String(s)) => Some(s.sval.as_str()),
            _ => None,
        })
        .collect();
    if column {
        parts.pop()?;
    }
    match parts.as_slice() {
        [name] => Some(Relation {
            schema: None,
            name: name.to_string(),
        }),
        [.., schema, name] => Some(Relation {
            schema: Some(schema.to_string()),
            name: name.to_string(),
        }),
        [] => None,
    }
}

pub(super) fn drop_relations(d: &protobuf::DropStmt, info: &mut StatementInfo) {
    if !RELATION_LIKE.iter().any(|t| *t as i32 == d.remove_type) {
        return;
    }
    for rel in d.objects.iter().filter_map(|o| named_relation(o, false)) {
        changes(info, "DROP", &rel);
        if !info.relations.contains(&rel) {
            info.relations.push(rel);
        }
    }
}

/// `COMMENT ON` a relation or a column: it changes `pg_description`, and a catalog's own comment
/// is the catalog's.
fn comment_relation(c: &protobuf::CommentStmt, info: &mut StatementInfo) {
    let column = c.objtype == protobuf::ObjectType::ObjectColumn as i32;
    if !column && !RELATION_LIKE.iter().any(|t| *t as i32 == c.objtype) {
        return;
    }
    if let Some(rel) = c.object.as_deref().and_then(|o| named_relation(o, column)) {
        changes(info, "COMMENT ON", &rel);
        if !info.relations.contains(&rel) {
            info.relations.push(rel);
        }
    }
}

/// PostgreSQL's `parse_bool` for option values: `true/false/on/off/yes/no/1/0` and unique prefixes.
pub(super) fn parse_bool(s: &str) -> Option<bool> {
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
pub(super) fn def_bool(arg: Option<&protobuf::Node>) -> Option<bool> {
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
pub(super) fn explain_analyze(options: &[protobuf::Node]) -> bool {
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
pub(super) fn transaction_read_write(options: &[protobuf::Node]) -> bool {
    options.iter().any(|opt| {
        matches!(&opt.node, Some(NodeEnum::DefElem(d))
            if d.defname == "transaction_read_only" && def_bool(d.arg.as_deref()) != Some(true))
    })
}
