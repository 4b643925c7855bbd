//! System catalogs are not data (issue 12): which relation a statement changes is a system
//! catalog relation, resolved the way the session will resolve it. Pure functions only; the
//! classifier calls [`catalog_relation`] for every relation a statement writes, creates, alters,
//! locks, truncates, drops or hangs a trigger or rule on, and makes such a statement `admin`.
//!
//! Writing a catalog (`UPDATE pg_authid`, `UPDATE pg_settings`, `DELETE FROM pg_largeobject`) with
//! a privileged upstream credential is privilege escalation whatever class the statement looks
//! like, so this must never answer "not a catalog" for a name the server may resolve to one.
//!
//! Resolution: a qualified name is what it says; `information_schema`, and every schema named
//! `pg_*` except the temporary-table schemas (`pg_temp`, `pg_temp_N`), are system schemas
//! (PostgreSQL reserves the `pg_` prefix for them). An unqualified name is searched in
//! `pg_catalog` first (PostgreSQL puts it first on every `search_path` that does not name it), and
//! every relation in `pg_catalog` is named `pg_*`: so an unqualified `pg_*` name is the catalog's,
//! fail closed even when the catalog has no such relation (write `public.pg_foo` for a user table
//! named like a catalog). Other unqualified names cannot reach a system schema, because a
//! `search_path` naming one after `pg_catalog` is refused ([`system_schema_on_path`]); a role- or
//! database-level `search_path` set with `ALTER ROLE`/`ALTER DATABASE` is a known limit.

use pg_query::protobuf::{node::Node as NodeEnum, Node, ObjectType};

use super::classify::Relation;

/// Whether `schema` (folded, as PostgreSQL folds it) is a system schema.
pub fn is_system_schema(schema: &str) -> bool {
    if schema == "information_schema" {
        return true;
    }
    let Some(rest) = schema.strip_prefix("pg_") else {
        return false;
    };
    // pg_temp is the session's own temporary schema, pg_temp_N a session's: user tables.
    !(rest == "temp"
        || rest
            .strip_prefix("temp_")
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit())))
}

/// The system catalog relation `rel` is (or may be) on the target, schema-qualified; `None` when it
/// is certainly a user relation.
pub fn catalog_relation(rel: &Relation) -> Option<Relation> {
    match &rel.schema {
        Some(schema) if is_system_schema(schema) => Some(rel.clone()),
        Some(_) => None,
        None if rel.name.starts_with("pg_") => Some(Relation {
            schema: Some("pg_catalog".into()),
            name: rel.name.clone(),
        }),
        None => None,
    }
}

/// The reason a statement that changes `catalog` needs `admin`; `what` says how it changes it
/// (`UPDATE`, `CREATE TRIGGER on`, …).
pub fn catalog_reason(what: &str, catalog: &Relation) -> String {
    format!(
        "{what} {catalog}, a system catalog relation: catalogs are not data, and changing them with \
         the upstream credential's privileges is privilege escalation"
    )
}

/// The first system schema other than `pg_catalog` named in a `search_path` value, if any: with it
/// on the path, unqualified names could reach catalog relations not named `pg_*`
/// (`information_schema.sql_features`).
pub fn system_schema_on_path(value: &str) -> Option<String> {
    value
        .split(',')
        .map(|s| s.trim())
        .map(|s| match s.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
            Some(quoted) => quoted.to_string(),
            None => s.to_lowercase(),
        })
        .find(|s| s != "pg_catalog" && is_system_schema(s))
}

/// The system schema a DDL statement creates, changes or drops an object in, or moves one into,
/// with what it does there: `CREATE FUNCTION pg_catalog.f`, `DROP SCHEMA information_schema`,
/// `ALTER TYPE t SET SCHEMA pg_catalog`, `COMMENT ON SCHEMA pg_catalog`. Relations are decided by
/// [`catalog_relation`]; this covers the objects named by qualified name lists (functions, types,
/// domains, aggregates, operators, collations, conversions, statistics) and schemas themselves.
/// An object in a system schema shadows or replaces what every session resolves there first, so
/// such a statement is `admin` whatever it looks like.
pub fn system_schema_object(stmt: &NodeEnum) -> Option<(&'static str, String)> {
    let is_schema = |objtype: i32| objtype == ObjectType::ObjectSchema as i32;
    let named = |what: &'static str, schema: Option<String>| {
        schema.filter(|s| is_system_schema(s)).map(|s| (what, s))
    };
    match stmt {
        NodeEnum::CreateSchemaStmt(c) => named("CREATE SCHEMA", Some(c.schemaname.clone())),
        NodeEnum::DropStmt(d) => d
            .objects
            .iter()
            .find_map(|o| named("DROP", object_schema(o, is_schema(d.remove_type)))),
        NodeEnum::RenameStmt(r) if is_schema(r.rename_type) => {
            named("ALTER SCHEMA … RENAME", Some(r.subname.clone()))
        }
        NodeEnum::RenameStmt(r) => named(
            "ALTER … RENAME",
            r.object.as_deref().and_then(|o| object_schema(o, false)),
        ),
        NodeEnum::AlterObjectSchemaStmt(a) => {
            named("ALTER … SET SCHEMA", Some(a.newschema.clone())).or_else(|| {
                named(
                    "ALTER … SET SCHEMA",
                    a.object.as_deref().and_then(|o| object_schema(o, false)),
                )
            })
        }
        NodeEnum::AlterOwnerStmt(a) => named(
            "ALTER … OWNER TO",
            a.object
                .as_deref()
                .and_then(|o| object_schema(o, is_schema(a.object_type))),
        ),
        NodeEnum::CommentStmt(c) => named(
            "COMMENT ON",
            c.object
                .as_deref()
                .and_then(|o| object_schema(o, is_schema(c.objtype))),
        ),
        NodeEnum::CreateFunctionStmt(f) => named("CREATE FUNCTION", qualified_schema(&f.funcname)),
        NodeEnum::AlterFunctionStmt(f) => named(
            "ALTER FUNCTION",
            f.func.as_ref().and_then(|o| qualified_schema(&o.objname)),
        ),
        NodeEnum::AlterOperatorStmt(o) => named(
            "ALTER OPERATOR",
            o.opername.as_ref().and_then(|o| qualified_schema(&o.objname)),
        ),
        NodeEnum::AlterTypeStmt(t) => named("ALTER TYPE", qualified_schema(&t.type_name)),
        NodeEnum::AlterObjectDependsStmt(d) => named(
            "ALTER … DEPENDS ON EXTENSION",
            d.object
                .as_deref()
                .and_then(|o| object_schema(o, false))
                .or_else(|| {
                    d.relation
                        .as_ref()
                        .map(|r| r.schemaname.clone())
                        .filter(|s| !s.is_empty())
                }),
        ),
        NodeEnum::DefineStmt(d) => named(
            "CREATE (type, aggregate, operator, collation …)",
            qualified_schema(&d.defnames),
        ),
        NodeEnum::CreateDomainStmt(d) => named("CREATE DOMAIN", qualified_schema(&d.domainname)),
        NodeEnum::AlterDomainStmt(d) => named("ALTER DOMAIN", qualified_schema(&d.type_name)),
        NodeEnum::CreateEnumStmt(e) => named("CREATE TYPE … AS ENUM", qualified_schema(&e.type_name)),
        NodeEnum::AlterEnumStmt(e) => named("ALTER TYPE", qualified_schema(&e.type_name)),
        NodeEnum::CreateRangeStmt(r) => named("CREATE TYPE … AS RANGE", qualified_schema(&r.type_name)),
        NodeEnum::CompositeTypeStmt(c) => named(
            "CREATE TYPE",
            c.typevar
                .as_ref()
                .map(|v| v.schemaname.clone())
                .filter(|s| !s.is_empty()),
        ),
        NodeEnum::CreateOpClassStmt(c) => named("CREATE OPERATOR CLASS", qualified_schema(&c.opclassname)),
        NodeEnum::CreateOpFamilyStmt(c) => named("CREATE OPERATOR FAMILY", qualified_schema(&c.opfamilyname)),
        NodeEnum::AlterOpFamilyStmt(c) => named("ALTER OPERATOR FAMILY", qualified_schema(&c.opfamilyname)),
        NodeEnum::CreateConversionStmt(c) => named("CREATE CONVERSION", qualified_schema(&c.conversion_name)),
        NodeEnum::CreateStatsStmt(c) => named("CREATE STATISTICS", qualified_schema(&c.defnames)),
        NodeEnum::AlterStatsStmt(c) => named("ALTER STATISTICS", qualified_schema(&c.defnames)),
        _ => None,
    }
}

/// The schema of a qualified name list (`schema.name` or `db.schema.name`); `None` when unqualified
/// (creation then goes to the first schema of the `search_path`, which cannot be a system schema:
/// see [`system_schema_on_path`]).
fn qualified_schema(names: &[Node]) -> Option<String> {
    let n = names.len();
    if n < 2 {
        return None;
    }
    match names[n - 2].node.as_ref() {
        Some(NodeEnum::String(s)) => Some(s.sval.clone()),
        _ => None,
    }
}

/// The schema an object node names: a qualified name list, a function or operator with its
/// arguments, a type name, or (`schema`: the object is a schema) a schema's own name.
fn object_schema(node: &Node, schema: bool) -> Option<String> {
    match node.node.as_ref()? {
        NodeEnum::List(l) => qualified_schema(&l.items),
        NodeEnum::ObjectWithArgs(o) => qualified_schema(&o.objname),
        NodeEnum::TypeName(t) => qualified_schema(&t.names),
        NodeEnum::String(s) if schema => Some(s.sval.clone()),
        _ => None,
    }
}

/// The reason a statement that puts, changes or removes an object in a system schema needs `admin`.
pub fn system_schema_reason(what: &str, schema: &str) -> String {
    format!(
        "{what} in the system schema {schema}: objects there shadow or replace what every session \
         resolves first, so changing them is privilege escalation"
    )
}

/// The system schema a `search_path` value names first, if it does: unqualified `CREATE`s go into
/// the first schema of the path, so with `pg_catalog` (or any system schema) first a `ddl` statement
/// without a schema would put its object there (attack review, session 4).
pub fn system_schema_first(value: &str) -> Option<String> {
    let first = value.split(',').map(str::trim).find(|s| !s.is_empty())?;
    let first = match first.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
        Some(quoted) => quoted.to_string(),
        None => first.to_lowercase(),
    };
    is_system_schema(&first).then_some(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(s: &str) -> Relation {
        match s.split_once('.') {
            Some((schema, name)) => Relation {
                schema: Some(schema.into()),
                name: name.into(),
            },
            None => Relation {
                schema: None,
                name: s.into(),
            },
        }
    }

    /// (what it guards against, relation as written, the catalog relation it is, if any)
    #[rustfmt::skip]
    const CASES: &[(&str, &str, Option<&str>)] = &[
        ("qualified_catalog_table", "pg_catalog.pg_authid", Some("pg_catalog.pg_authid")),
        ("unqualified_catalog_view_resolves_to_pg_catalog", "pg_settings", Some("pg_catalog.pg_settings")),
        ("unqualified_pg_name_fails_closed", "pg_foo", Some("pg_catalog.pg_foo")),
        ("information_schema_table", "information_schema.sql_features", Some("information_schema.sql_features")),
        ("toast_schema", "pg_toast.pg_toast_1262", Some("pg_toast.pg_toast_1262")),
        ("temp_toast_schema", "pg_toast_temp_3.pg_toast_16384", Some("pg_toast_temp_3.pg_toast_16384")),
        ("any_reserved_pg_schema", "pg_something.x", Some("pg_something.x")),
        ("public_pg_name_qualified_is_user_data", "public.pg_foo", None),
        ("user_table_unqualified", "orders", None),
        ("user_schema", "sales.orders", None),
        ("own_temp_schema_is_user_data", "pg_temp.scratch", None),
        ("other_sessions_temp_schema_is_user_data", "pg_temp_7.scratch", None),
        ("temp_lookalike_is_reserved", "pg_temp_x.t", Some("pg_temp_x.t")),
        ("quoted_upper_case_schema_is_another_schema", "PG_CATALOG.pg_class", None),
        ("name_containing_pg_is_not_a_catalog", "my_pg_settings", None),
    ];

    #[test]
    fn catalog_relations_are_resolved_like_the_session() {
        let mut failures = Vec::new();
        for (name, written, expected) in CASES {
            let got = catalog_relation(&rel(written)).map(|r| r.to_string());
            if got.as_deref() != *expected {
                failures.push(format!("{name}: {written} → {got:?}, expected {expected:?}"));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn a_system_schema_first_on_the_search_path() {
        for (value, expected) in [
            ("pg_catalog", Some("pg_catalog")),
            (" PG_CATALOG , public", Some("pg_catalog")),
            ("information_schema, public", Some("information_schema")),
            ("public, pg_catalog", None),
            ("\"$user\", public", None),
            ("pg_temp, public", None),
            ("''", None),
            ("", None),
        ] {
            assert_eq!(system_schema_first(value).as_deref(), expected, "{value}");
        }
    }

    #[test]
    fn system_schemas_on_the_search_path() {
        for (value, expected) in [
            ("public", None),
            ("pg_catalog, public", None),
            ("\"$user\", public", None),
            ("pg_temp, public", None),
            ("information_schema", Some("information_schema")),
            ("public, INFORMATION_SCHEMA", Some("information_schema")),
            ("public, pg_toast", Some("pg_toast")),
            ("\"INFORMATION_SCHEMA\"", None),
        ] {
            assert_eq!(system_schema_on_path(value).as_deref(), expected, "{value}");
        }
    }
}
