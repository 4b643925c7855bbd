//! Settings a statement changes (`SET`, `RESET`, `set_config()`, `SET TRANSACTION`) and the
//! class each change needs. Part of [`super`]; role-dependent rules (the `statement_timeout` cap,
//! `search_path` under table rules) are the authorizer's. Must never let a change of how SQL text
//! is lexed pass as harmless.

use pg_query::protobuf::{self, a_const, node::Node as NodeEnum};

use super::kinds::parse_bool;
use super::walker::FuncRef;
use super::{SetValue, SettingChange, StatementClass, StatementInfo};
use crate::policy::catalog;
use crate::policy::functions::{self, SettingKind};

pub(super) fn const_text(node: &protobuf::Node) -> Option<String> {
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

pub(super) fn variable_set(s: &protobuf::VariableSetStmt, info: &mut StatementInfo) {
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
pub(super) fn set_config(call: &FuncRef, info: &mut StatementInfo) {
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
pub(super) fn value_is_on(value: &SetValue) -> bool {
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
            SetValue::Value(v) if catalog::system_schema_first(v).is_some() => (
                Admin,
                format!(
                    "{what} puts the system schema {} first, so objects created without a schema would \
                     go into it",
                    catalog::system_schema_first(v).unwrap_or_default()
                ),
            ),
            SetValue::Value(v) if pg_catalog_not_first(v) => (
                Admin,
                format!(
                    "{what} puts pg_catalog behind other schemas, so their functions can shadow built-ins"
                ),
            ),
            SetValue::Value(v) => match catalog::system_schema_on_path(v) {
                Some(schema) => (
                    Admin,
                    format!(
                        "{what} puts the system schema {schema} on the path, so unqualified names could \
                         reach system catalog relations"
                    ),
                ),
                None => (Read, format!("{what} is a harmless session setting")),
            },
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
pub(super) fn pg_catalog_not_first(value: &str) -> bool {
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
