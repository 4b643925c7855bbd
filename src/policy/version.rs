//! The target's PostgreSQL version, and what the classifier's grammar has that older targets do
//! not. Pure tables and functions.
//!
//! The classifier parses with `pg_query` 18 (PostgreSQL 18's grammar), so its reading of a text is
//! PostgreSQL 18's. An older target reads some texts differently: `JSON_ARRAY(1, 2)` is a built-in
//! SQL/JSON constructor to PostgreSQL 16 and later, but PostgreSQL 15 has no such keyword and calls
//! whatever function named `json_array` the search path finds, a user-defined one included. Built-in
//! functions added after PostgreSQL 13 (`any_value`, `casefold`, …) are the same: on an older target
//! the name is free for a user-defined function.
//!
//! Classification stays version-independent (it is cached by text and shared by all sessions): it
//! records each newer-grammar construct it saw ([`NewerSyntax`]). The authorizer, which knows the
//! session's target version ([`ServerVersion`], from the upstream's `server_version` at login),
//! treats each construct or built-in the target does not have as a call of a user-defined function
//! of that name ([`absent_on`], [`builtin_since`]). This module must never report a construct as
//! present on a target older than the version that introduced it: when in doubt, the later version.
//!
//! How the lists were made: PostgreSQL 18's `kwlist.h` (vendored by `pg_query`) against
//! `pg_get_keywords()` of PostgreSQL 15. The only keywords added since that are not `unreserved`
//! (so the only ones that stop a name from being parsed as a function call) are `JSON`,
//! `JSON_ARRAY`, `JSON_ARRAYAGG`, `JSON_EXISTS`, `JSON_OBJECT`, `JSON_OBJECTAGG`, `JSON_QUERY`,
//! `JSON_SCALAR`, `JSON_SERIALIZE`, `JSON_TABLE`, `JSON_VALUE`, `MERGE_ACTION` (column-name
//! keywords) and `SYSTEM_USER` (reserved; a function call `pg_catalog.system_user()` in the tree,
//! listed in [`builtin_since`]); PostgreSQL 14 and 15 added only unreserved keywords. The built-in
//! functions are the safe list's names missing from PostgreSQL 15's `pg_proc`, plus those added in
//! 14 and 15 from the release notes.

use std::fmt;

/// A PostgreSQL major version (`15`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServerVersion(pub u32);

impl ServerVersion {
    /// The oldest target version timebox supports; also what an unknown version is taken to be.
    pub const OLDEST: ServerVersion = ServerVersion(13);
    /// The version whose grammar the classifier parses with (`pg_query` 18).
    pub const NEWEST: ServerVersion = ServerVersion(18);
    /// Every supported major version, oldest first.
    pub const SUPPORTED: [ServerVersion; 6] = [
        ServerVersion(13),
        ServerVersion(14),
        ServerVersion(15),
        ServerVersion(16),
        ServerVersion(17),
        ServerVersion(18),
    ];

    /// The major version in a `server_version` ParameterStatus value (`15.18 (Debian 15.18-0+deb12u1)`,
    /// `16beta2`, `9.6.24`). Versions before 10 (`9.6`) have a two-part major; timebox reports them as
    /// `9`, below [`ServerVersion::OLDEST`].
    pub fn parse(server_version: &str) -> Option<ServerVersion> {
        let digits: String = server_version
            .trim()
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect();
        digits.parse().ok().filter(|v| *v > 0).map(ServerVersion)
    }

    /// The version a session is checked for: the upstream's reported one, or the oldest supported
    /// when it is missing or unreadable. A version below the oldest supported counts as the oldest
    /// (nothing older is known to the tables).
    pub fn of_target(server_version: Option<&str>) -> ServerVersion {
        server_version
            .and_then(ServerVersion::parse)
            .map_or(ServerVersion::OLDEST, |v| v.max(ServerVersion::OLDEST))
    }
}

impl Default for ServerVersion {
    fn default() -> Self {
        ServerVersion::OLDEST
    }
}

impl fmt::Display for ServerVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PostgreSQL {}", self.0)
    }
}

/// A construct of the classifier's grammar that older targets parse differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NewerSyntax {
    /// How it is written, for messages: `JSON_ARRAY(…)`, `IS JSON`.
    pub keyword: &'static str,
    /// The major version that introduced it.
    pub since: u32,
    /// The function an older target calls instead (`json_array`), or `None` when an older target
    /// rejects the text (`IS JSON`).
    pub older_call: Option<&'static str>,
}

const fn syntax(keyword: &'static str, since: u32, older_call: Option<&'static str>) -> NewerSyntax {
    NewerSyntax {
        keyword,
        since,
        older_call,
    }
}

/// Raw parse-tree nodes (by `pg_query` node name) that only newer grammars produce.
/// `JsonFuncExpr` depends on its operator: see [`json_func_expr`].
const NODES: &[(&str, NewerSyntax)] = &[
    (
        "JsonArrayConstructor",
        syntax("JSON_ARRAY(…)", 16, Some("json_array")),
    ),
    (
        "JsonArrayQueryConstructor",
        syntax("JSON_ARRAY(…)", 16, Some("json_array")),
    ),
    (
        "JsonObjectConstructor",
        syntax("JSON_OBJECT(…)", 16, Some("json_object")),
    ),
    (
        "JsonArrayAgg",
        syntax("JSON_ARRAYAGG(…)", 16, Some("json_arrayagg")),
    ),
    (
        "JsonObjectAgg",
        syntax("JSON_OBJECTAGG(…)", 16, Some("json_objectagg")),
    ),
    ("JsonIsPredicate", syntax("IS JSON", 16, None)),
    ("JsonParseExpr", syntax("JSON(…)", 17, Some("json"))),
    (
        "JsonScalarExpr",
        syntax("JSON_SCALAR(…)", 17, Some("json_scalar")),
    ),
    (
        "JsonSerializeExpr",
        syntax("JSON_SERIALIZE(…)", 17, Some("json_serialize")),
    ),
    ("JsonTable", syntax("JSON_TABLE(…)", 17, Some("json_table"))),
    (
        "MergeSupportFunc",
        syntax("MERGE_ACTION()", 17, Some("merge_action")),
    ),
];

/// The newer-grammar construct a parse node is, if it is one.
pub fn node_syntax(node: &str) -> Option<NewerSyntax> {
    NODES.iter().find(|(n, _)| *n == node).map(|(_, s)| *s)
}

/// `JSON_EXISTS`, `JSON_QUERY`, `JSON_VALUE` (a `JsonFuncExpr` with `op` = `JsonExprOp`). An operator
/// the table does not know is reported as a call of an unknown function (fail closed).
pub fn json_func_expr(op: i32) -> NewerSyntax {
    use pg_query::protobuf::JsonExprOp as Op;
    match Op::try_from(op) {
        Ok(Op::JsonExistsOp) => syntax("JSON_EXISTS(…)", 17, Some("json_exists")),
        Ok(Op::JsonQueryOp) => syntax("JSON_QUERY(…)", 17, Some("json_query")),
        Ok(Op::JsonValueOp) => syntax("JSON_VALUE(…)", 17, Some("json_value")),
        Ok(Op::JsonTableOp) => syntax("JSON_TABLE(…)", 17, Some("json_table")),
        _ => syntax("an SQL/JSON query function", 17, Some("json_query")),
    }
}

/// Built-in functions on the safe list that PostgreSQL 13 does not have, with the major version
/// that added them. On an older target a call of the name reaches a user-defined function.
#[rustfmt::skip]
const BUILTIN_SINCE: &[(&str, u32)] = &[
    // 14
    ("bit_count", 14), ("bit_xor", 14), ("date_bin", 14), ("string_to_table", 14), ("trim_array", 14),
    ("unistr", 14), ("range_agg", 14), ("range_intersect_agg", 14), ("multirange", 14),
    ("int4multirange", 14), ("int8multirange", 14), ("nummultirange", 14), ("tsmultirange", 14),
    ("tstzmultirange", 14), ("pg_column_compression", 14), ("pg_get_catalog_foreign_keys", 14),
    ("pg_get_wal_replay_pause_state", 14),
    // 15
    ("regexp_count", 15), ("regexp_instr", 15), ("regexp_like", 15), ("regexp_substr", 15),
    ("pg_settings_get_flags", 15), ("has_parameter_privilege", 15),
    // 16
    ("any_value", 16), ("array_sample", 16), ("array_shuffle", 16), ("date_add", 16),
    ("date_subtract", 16), ("erf", 16), ("erfc", 16), ("json_agg_strict", 16),
    ("json_object_agg_strict", 16), ("json_object_agg_unique", 16),
    ("json_object_agg_unique_strict", 16), ("jsonb_agg_strict", 16), ("jsonb_object_agg_strict", 16),
    ("jsonb_object_agg_unique", 16), ("jsonb_object_agg_unique_strict", 16),
    ("pg_input_error_info", 16), ("pg_input_is_valid", 16), ("random_normal", 16), ("system_user", 16),
    ("to_bin", 16), ("to_oct", 16), ("xmltext", 16),
    // 17
    ("jsonb_populate_record_valid", 17), ("pg_basetype", 17), ("pg_column_toast_chunk_id", 17),
    ("to_regtypemod", 17), ("uuid_extract_timestamp", 17), ("uuid_extract_version", 17),
    // 18
    ("array_reverse", 18), ("array_sort", 18), ("casefold", 18), ("crc32", 18), ("crc32c", 18),
    ("gamma", 18), ("lgamma", 18), ("uuidv4", 18), ("uuidv7", 18), ("has_largeobject_privilege", 18),
];

/// The major version that added a built-in function (folded name, optionally `pg_catalog.`), when
/// it is newer than PostgreSQL 13.
pub fn builtin_since(name: &str) -> Option<u32> {
    let base = name.strip_prefix("pg_catalog.").unwrap_or(name);
    BUILTIN_SINCE.iter().find(|(n, _)| *n == base).map(|(_, v)| *v)
}

/// Whether a construct introduced in `since` is missing on `server`.
pub fn absent_on(since: u32, server: ServerVersion) -> bool {
    server.0 < since
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_version_from_parameter_status() {
        for (text, major) in [
            ("15.18 (Debian 15.18-0+deb12u1)", Some(15)),
            ("18.1", Some(18)),
            ("16beta2", Some(16)),
            ("13.0", Some(13)),
            ("9.6.24", Some(9)),
            ("", None),
            ("devel", None),
            ("0.1", None),
            ("99999999999999999999", None),
        ] {
            assert_eq!(ServerVersion::parse(text), major.map(ServerVersion), "{text:?}");
        }
        assert_eq!(ServerVersion::of_target(None), ServerVersion::OLDEST);
        assert_eq!(ServerVersion::of_target(Some("garbage")), ServerVersion::OLDEST);
        assert_eq!(ServerVersion::of_target(Some("9.6.3")), ServerVersion::OLDEST);
        assert_eq!(ServerVersion::of_target(Some("17.2")), ServerVersion(17));
    }

    /// Each construct is absent exactly on the supported versions before the one that added it.
    #[test]
    fn constructs_are_absent_before_their_version_on_every_supported_target() {
        let json_array = node_syntax("JsonArrayConstructor").unwrap();
        let merge_action = node_syntax("MergeSupportFunc").unwrap();
        let json_value = json_func_expr(pg_query::protobuf::JsonExprOp::JsonValueOp as i32);
        for server in ServerVersion::SUPPORTED {
            let v = server.0;
            assert_eq!(absent_on(json_array.since, server), v < 16, "{server}");
            assert_eq!(absent_on(merge_action.since, server), v < 17, "{server}");
            assert_eq!(absent_on(json_value.since, server), v < 17, "{server}");
            assert_eq!(
                builtin_since("casefold").is_some_and(|s| absent_on(s, server)),
                v < 18,
                "{server}"
            );
            assert_eq!(
                builtin_since("pg_catalog.regexp_like").is_some_and(|s| absent_on(s, server)),
                v < 15,
                "{server}"
            );
            assert!(
                !builtin_since("lower").is_some_and(|s| absent_on(s, server)),
                "lower is in every supported version"
            );
        }
        assert_eq!(json_value.older_call, Some("json_value"));
        assert_eq!(node_syntax("JsonIsPredicate").unwrap().older_call, None);
        assert_eq!(node_syntax("FuncCall"), None);
        assert_eq!(
            json_func_expr(99).older_call,
            Some("json_query"),
            "unknown ops fail closed"
        );
    }

    #[test]
    fn every_builtin_with_a_version_is_on_the_safe_list() {
        use super::super::functions::{function_kind, FunctionKind};
        for (name, since) in BUILTIN_SINCE {
            assert_eq!(function_kind(name), FunctionKind::Safe, "{name}");
            assert!((14..=18).contains(since), "{name}");
        }
    }
}
