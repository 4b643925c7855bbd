//! Maintained lists the classifier consults: built-in functions (safe, side-effecting, dangerous),
//! built-in operators, and session settings (harmless, lexing, read-only guards).
//!
//! Sits under [`super::classify()`]: a function call or `SET` found in a parse tree is looked up here.
//! The lists must never grow an entry that lets a statement do more than its class says: a name
//! missing from the safe list costs a false denial (unknown functions count as `write`), a name put
//! there by mistake is a bypass. Names are PostgreSQL's folded (lower-case) names; a `pg_catalog.`
//! prefix is stripped before lookup, any other schema makes a name a user-defined function unless it
//! is on the side-effecting or dangerous lists, which match whatever the schema.

use super::classify::StatementClass;

/// Built-in functions that only compute a value (no data change, no server-side effect beyond the
/// session). Aggregates, window functions, maths, strings, date/time, JSON, arrays, ranges, text
/// search, catalog and statistics read-outs.
#[rustfmt::skip]
const SAFE_FUNCTIONS: &[&str] = &[
    // aggregates
    "any_value", "array_agg", "avg", "bit_and", "bit_or", "bit_xor", "bool_and", "bool_or", "corr",
    "count", "covar_pop", "covar_samp", "every", "json_agg", "json_agg_strict", "json_object_agg",
    "json_object_agg_strict", "json_object_agg_unique", "json_object_agg_unique_strict", "jsonb_agg",
    "jsonb_agg_strict", "jsonb_object_agg", "jsonb_object_agg_strict", "jsonb_object_agg_unique",
    "jsonb_object_agg_unique_strict", "max", "min", "mode", "percentile_cont", "percentile_disc",
    "range_agg", "range_intersect_agg", "regr_avgx", "regr_avgy", "regr_count", "regr_intercept",
    "regr_r2", "regr_slope", "regr_sxx", "regr_sxy", "regr_syy", "stddev", "stddev_pop", "stddev_samp",
    "string_agg", "sum", "var_pop", "var_samp", "variance", "xmlagg",
    // window functions
    "cume_dist", "dense_rank", "first_value", "lag", "last_value", "lead", "nth_value", "ntile",
    "percent_rank", "rank", "row_number",
    // conditional
    "coalesce", "greatest", "least", "nullif", "num_nonnulls", "num_nulls",
    // maths
    "abs", "acos", "acosd", "acosh", "asin", "asind", "asinh", "atan", "atan2", "atan2d", "atand",
    "atanh", "cbrt", "ceil", "ceiling", "cos", "cosd", "cosh", "cot", "cotd", "degrees", "div", "erf",
    "erfc", "exp", "factorial", "floor", "gamma", "gcd", "lcm", "lgamma", "ln", "log", "log10",
    "min_scale", "mod", "pi", "pow", "power", "radians", "random", "random_normal", "round", "scale",
    "setseed", "sign", "sin", "sind", "sinh", "sqrt", "tan", "tand", "tanh", "trim_scale", "trunc",
    "width_bucket",
    // strings and binary strings
    "ascii", "bit_count", "bit_length", "btrim", "casefold", "char_length", "character_length", "chr",
    "concat", "concat_ws", "convert", "convert_from", "convert_to", "crc32", "crc32c", "decode",
    "encode", "format", "get_bit", "get_byte", "initcap", "is_normalized", "left", "length",
    "like_escape", "lower", "lpad", "ltrim", "md5", "normalize", "octet_length", "overlay",
    "parse_ident", "pg_client_encoding", "position", "quote_ident", "quote_literal", "quote_nullable",
    "regexp_count", "regexp_instr", "regexp_like", "regexp_match", "regexp_matches", "regexp_replace",
    "regexp_split_to_array", "regexp_split_to_table", "regexp_substr", "repeat", "replace", "reverse",
    "right", "rpad", "rtrim", "set_bit", "set_byte", "sha224", "sha256", "sha384", "sha512",
    "similar_escape", "similar_to_escape", "split_part", "starts_with", "string_to_array",
    "string_to_table", "strpos", "substr", "substring", "to_ascii", "to_bin", "to_hex", "to_oct",
    "translate", "unistr", "upper",
    // formatting and date/time
    "age", "clock_timestamp", "date_add", "date_bin", "date_part", "date_subtract", "date_trunc",
    "extract", "isfinite", "justify_days", "justify_hours", "justify_interval", "make_date",
    "make_interval", "make_time", "make_timestamp", "make_timestamptz", "now", "overlaps", "pg_sleep",
    "pg_sleep_for", "pg_sleep_until", "statement_timestamp", "timeofday", "timezone", "to_char",
    "to_date", "to_number", "to_timestamp", "transaction_timestamp",
    // uuid
    "gen_random_uuid", "uuid_extract_timestamp", "uuid_extract_version", "uuidv4", "uuidv7",
    // enums, arrays, set-returning
    "array_append", "array_cat", "array_dims", "array_fill", "array_length", "array_lower",
    "array_ndims", "array_position", "array_positions", "array_prepend", "array_remove",
    "array_replace", "array_reverse", "array_sample", "array_shuffle", "array_sort", "array_to_string",
    "array_upper", "cardinality", "enum_first", "enum_last", "enum_range", "generate_series",
    "generate_subscripts", "trim_array", "unnest",
    // JSON
    "array_to_json", "json_array_elements", "json_array_elements_text", "json_array_length",
    "json_build_array", "json_build_object", "json_each", "json_each_text", "json_extract_path",
    "json_extract_path_text", "json_object", "json_object_keys", "json_populate_record",
    "json_populate_recordset", "json_strip_nulls", "json_to_record", "json_to_recordset", "json_typeof",
    "jsonb_array_elements", "jsonb_array_elements_text", "jsonb_array_length", "jsonb_build_array",
    "jsonb_build_object", "jsonb_each", "jsonb_each_text", "jsonb_extract_path",
    "jsonb_extract_path_text", "jsonb_insert", "jsonb_object", "jsonb_object_keys", "jsonb_path_exists",
    "jsonb_path_exists_tz", "jsonb_path_match", "jsonb_path_match_tz", "jsonb_path_query",
    "jsonb_path_query_array", "jsonb_path_query_array_tz", "jsonb_path_query_first",
    "jsonb_path_query_first_tz", "jsonb_path_query_tz", "jsonb_populate_record",
    "jsonb_populate_record_valid", "jsonb_populate_recordset", "jsonb_pretty", "jsonb_set",
    "jsonb_set_lax", "jsonb_strip_nulls", "jsonb_to_record", "jsonb_to_recordset", "jsonb_typeof",
    "row_to_json", "to_json", "to_jsonb",
    // ranges
    "daterange", "int4multirange", "int4range", "int8multirange", "int8range", "isempty", "lower_inc",
    "lower_inf", "multirange", "nummultirange", "numrange", "range_merge", "tsmultirange", "tsrange",
    "tstzmultirange", "tstzrange", "upper_inc", "upper_inf",
    // network and geometry
    "abbrev", "area", "bound_box", "box", "broadcast", "center", "circle", "diameter", "family",
    "height", "host", "hostmask", "inet_merge", "inet_same_family", "isclosed", "isopen", "line",
    "lseg", "macaddr8_set7bit", "masklen", "netmask", "network", "npoints", "path", "pclose", "point",
    "polygon", "popen", "radius", "set_masklen", "slope", "width",
    // text search (ts_stat and ts_rewrite run query text: see DANGEROUS_FUNCTIONS)
    "array_to_tsvector", "get_current_ts_config", "numnode", "phraseto_tsquery", "plainto_tsquery",
    "querytree", "setweight", "strip", "to_tsquery", "to_tsvector", "ts_debug", "ts_delete",
    "ts_filter", "ts_headline", "ts_lexize", "ts_parse", "ts_rank", "ts_rank_cd", "ts_token_type",
    "tsvector_to_array", "websearch_to_tsquery",
    // XML (query_to_xml and friends run query text: see DANGEROUS_FUNCTIONS)
    "xml_is_well_formed", "xml_is_well_formed_content", "xml_is_well_formed_document", "xmlcomment",
    "xmlconcat", "xmlexists", "xmltext", "xpath", "xpath_exists",
    // function-call spellings of casts
    "bool", "bpchar", "char", "date", "float4", "float8", "int2", "int4", "int8", "interval", "json",
    "jsonb", "name", "numeric", "text", "time", "timestamp", "timestamptz", "timetz", "uuid", "varchar",
    // session and catalog information
    "col_description", "current_catalog", "current_database", "current_query", "current_role",
    "current_schema", "current_schemas", "current_setting", "current_user", "currval", "format_type",
    "inet_client_addr", "inet_client_port", "inet_server_addr", "inet_server_port", "lastval",
    "obj_description", "pg_backend_pid", "pg_basetype", "pg_blocking_pids", "pg_char_to_encoding",
    "pg_collation_for", "pg_collation_is_visible", "pg_column_compression", "pg_column_size",
    "pg_column_toast_chunk_id", "pg_conf_load_time", "pg_conversion_is_visible", "pg_current_snapshot",
    "pg_current_wal_flush_lsn", "pg_current_wal_insert_lsn", "pg_current_wal_lsn",
    "pg_current_xact_id_if_assigned", "pg_database_size", "pg_describe_object", "pg_encoding_to_char",
    "pg_filenode_relation", "pg_function_is_visible", "pg_get_catalog_foreign_keys",
    "pg_get_constraintdef", "pg_get_expr", "pg_get_function_arguments",
    "pg_get_function_identity_arguments", "pg_get_function_result", "pg_get_functiondef",
    "pg_get_indexdef", "pg_get_keywords", "pg_get_object_address", "pg_get_partkeydef",
    "pg_get_ruledef", "pg_get_serial_sequence", "pg_get_statisticsobjdef", "pg_get_triggerdef",
    "pg_get_userbyid", "pg_get_viewdef", "pg_get_wal_replay_pause_state", "pg_has_role",
    "pg_identify_object", "pg_identify_object_as_address", "pg_index_column_has_property",
    "pg_index_has_property", "pg_indexam_has_property", "pg_indexes_size", "pg_input_error_info",
    "pg_input_is_valid", "pg_is_in_recovery", "pg_is_other_temp_schema", "pg_is_wal_replay_paused",
    "pg_jit_available", "pg_last_committed_xact", "pg_last_wal_receive_lsn", "pg_last_wal_replay_lsn",
    "pg_last_xact_replay_timestamp", "pg_listening_channels", "pg_my_temp_schema",
    "pg_notification_queue_usage", "pg_opclass_is_visible", "pg_operator_is_visible",
    "pg_opfamily_is_visible", "pg_options_to_table", "pg_partition_ancestors", "pg_partition_root",
    "pg_partition_tree", "pg_postmaster_start_time", "pg_relation_filenode", "pg_relation_filepath",
    "pg_relation_size", "pg_safe_snapshot_blocking_pids", "pg_sequence_last_value",
    "pg_sequence_parameters", "pg_settings_get_flags", "pg_size_bytes", "pg_size_pretty",
    "pg_snapshot_xip", "pg_snapshot_xmax", "pg_snapshot_xmin", "pg_statistics_obj_is_visible",
    "pg_table_is_visible", "pg_table_size", "pg_tablespace_databases", "pg_tablespace_location",
    "pg_tablespace_size", "pg_total_relation_size", "pg_trigger_depth", "pg_ts_config_is_visible",
    "pg_ts_dict_is_visible", "pg_ts_parser_is_visible", "pg_ts_template_is_visible",
    "pg_type_is_visible", "pg_typeof", "pg_visible_in_snapshot", "pg_wal_lsn_diff", "pg_walfile_name",
    "pg_walfile_name_offset", "pg_xact_commit_timestamp", "pg_xact_status", "row_security_active",
    "session_user", "shobj_description", "system_user", "to_regclass", "to_regcollation", "to_regnamespace",
    "to_regoper", "to_regoperator", "to_regproc", "to_regprocedure", "to_regrole", "to_regtype",
    "to_regtypemod", "txid_current_if_assigned", "txid_current_snapshot", "txid_snapshot_xip",
    "txid_snapshot_xmax", "txid_snapshot_xmin", "txid_status", "txid_visible_in_snapshot", "user",
    "version", "aclcontains", "acldefault", "aclexplode", "makeaclitem",
    // catalog readers psql's describe queries call (psql 13–18: \d, \df+, \dO, \dX, \dRp)
    "getdatabaseencoding", "pg_column_is_updatable", "pg_get_acl", "pg_get_function_sqlbody",
    "pg_get_partition_constraintdef", "pg_get_publication_tables", "pg_get_replica_identity_index",
    "pg_get_statisticsobjdef_columns", "pg_get_statisticsobjdef_expressions",
    "pg_relation_is_publishable", "pg_relation_is_updatable",
    // privilege checks (a has_ prefix would let a user-defined has_anything() pass as built-in)
    "has_any_column_privilege", "has_column_privilege", "has_database_privilege",
    "has_foreign_data_wrapper_privilege", "has_function_privilege", "has_language_privilege",
    "has_largeobject_privilege", "has_parameter_privilege", "has_schema_privilege",
    "has_sequence_privilege", "has_server_privilege", "has_table_privilege",
    "has_tablespace_privilege", "has_type_privilege",
];

/// Prefixes of safe built-in families (statistics read-outs). A prefix also covers user-defined
/// functions of such a name, so it is kept to the catalog's own `pg_` namespace of names.
const SAFE_PREFIXES: &[&str] = &["pg_stat_get_"];

/// Built-in functions that change data or take locks: a `write`.
#[rustfmt::skip]
const WRITE_FUNCTIONS: &[&str] = &[
    "nextval", "setval", "txid_current", "pg_current_xact_id", "pg_notify", "pg_advisory_lock",
    "pg_advisory_lock_shared", "pg_advisory_unlock", "pg_advisory_unlock_all",
    "pg_advisory_unlock_shared", "pg_advisory_xact_lock", "pg_advisory_xact_lock_shared",
    "pg_try_advisory_lock", "pg_try_advisory_lock_shared", "pg_try_advisory_xact_lock",
    "pg_try_advisory_xact_lock_shared",
];

/// Built-in or common-extension functions that signal backends, touch server files, run query
/// text, reach other servers or manage replication: an `admin`, with the reason shown to the user.
const DANGEROUS_FUNCTIONS: &[(&str, &str)] = &[
    ("pg_terminate_backend", "signals another backend"),
    ("pg_cancel_backend", "signals another backend"),
    ("pg_signal_backend", "signals another backend"),
    ("pg_reload_conf", "reloads the server configuration"),
    ("pg_rotate_logfile", "rotates the server log"),
    ("pg_log_backend_memory_contexts", "signals another backend"),
    ("pg_read_file", "reads files on the database server"),
    ("pg_read_binary_file", "reads files on the database server"),
    ("pg_stat_file", "reads files on the database server"),
    ("pg_file_write", "writes files on the database server"),
    ("pg_file_sync", "touches files on the database server"),
    ("pg_file_unlink", "deletes files on the database server"),
    ("pg_file_rename", "renames files on the database server"),
    ("pg_logdir_ls", "lists server directories"),
    ("pg_current_logfile", "reads server log locations"),
    ("pg_create_restore_point", "writes WAL records"),
    ("pg_switch_wal", "forces a WAL switch"),
    ("pg_backup_start", "controls backups"),
    ("pg_backup_stop", "controls backups"),
    ("pg_start_backup", "controls backups"),
    ("pg_stop_backup", "controls backups"),
    ("pg_promote", "promotes a standby"),
    ("pg_wal_replay_pause", "controls recovery"),
    ("pg_wal_replay_resume", "controls recovery"),
    ("pg_logical_emit_message", "writes WAL records"),
    ("pg_import_system_collations", "creates catalog entries"),
    ("pg_sync_replication_slots", "manages replication"),
    ("pg_prewarm", "loads relations into shared buffers"),
    ("pg_restore_relation_stats", "rewrites planner statistics"),
    ("pg_restore_attribute_stats", "rewrites planner statistics"),
    ("pg_clear_relation_stats", "rewrites planner statistics"),
    ("pg_clear_attribute_stats", "rewrites planner statistics"),
    ("loread", "reads large objects (no table rules apply)"),
    ("lowrite", "writes large objects"),
    ("query_to_xml", "executes the query text it is given"),
    ("query_to_xmlschema", "executes the query text it is given"),
    (
        "query_to_xml_and_xmlschema",
        "executes the query text it is given",
    ),
    ("cursor_to_xml", "fetches from a cursor by name"),
    ("cursor_to_xmlschema", "fetches from a cursor by name"),
    (
        "table_to_xml",
        "reads a table named by a string (no table rules apply)",
    ),
    (
        "table_to_xmlschema",
        "reads a table named by a string (no table rules apply)",
    ),
    (
        "table_to_xml_and_xmlschema",
        "reads a table named by a string (no table rules apply)",
    ),
    ("schema_to_xml", "reads every table of a schema"),
    ("schema_to_xmlschema", "reads every table of a schema"),
    ("schema_to_xml_and_xmlschema", "reads every table of a schema"),
    ("database_to_xml", "reads every table of the database"),
    ("database_to_xmlschema", "reads every table of the database"),
    (
        "database_to_xml_and_xmlschema",
        "reads every table of the database",
    ),
    ("ts_stat", "executes the query text it is given"),
    ("ts_rewrite", "may execute the query text it is given"),
    ("crosstab", "executes the query text it is given"),
    ("crosstab2", "executes the query text it is given"),
    ("crosstab3", "executes the query text it is given"),
    ("crosstab4", "executes the query text it is given"),
    ("connectby", "executes the query it builds"),
    ("get_raw_page", "reads raw table pages (no table rules apply)"),
    ("heap_page_items", "reads raw table pages (no table rules apply)"),
    ("pg_stat_statements_reset", "resets server statistics"),
    ("pg_buffercache_evict", "evicts shared buffers"),
];

/// Prefixes of dangerous families: large objects, dblink, directory listings, replication,
/// statistics resets.
const DANGEROUS_PREFIXES: &[(&str, &str)] = &[
    ("lo_", "uses large objects (server files, no table rules)"),
    ("dblink", "connects to another database"),
    ("pg_ls_", "lists server directories"),
    ("pg_stat_reset", "resets server statistics"),
    ("pg_replication_origin_", "manages replication"),
    ("pg_create_physical_replication_slot", "manages replication"),
    ("pg_create_logical_replication_slot", "manages replication"),
    ("pg_drop_replication_slot", "manages replication"),
    ("pg_copy_", "manages replication"),
    ("pg_replication_slot_", "manages replication"),
    ("pg_logical_slot_", "consumes replication changes"),
];

/// How a function call counts. `Unknown` is a user-defined (or unlisted) function: a `write`
/// unless the role's `allow_functions` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FunctionKind {
    Safe,
    /// Changes data or takes locks.
    Write,
    /// Dangerous; the `&str` says why.
    Admin(&'static str),
    /// `set_config(name, value, is_local)`: classified like `SET`.
    SetConfig,
    Unknown,
}

/// Classifies a function by its folded, possibly schema-qualified name (`pg_catalog.lower`,
/// `public.f`, `nextval`).
pub fn function_kind(name: &str) -> FunctionKind {
    let (schema, base) = match name.rsplit_once('.') {
        Some((schema, base)) => (Some(schema), base),
        None => (None, name),
    };
    // Dangerous and side-effecting names count whatever the schema: a same-named user function is
    // no safer.
    if let Some((_, why)) = DANGEROUS_FUNCTIONS.iter().find(|(n, _)| *n == base) {
        return FunctionKind::Admin(why);
    }
    if let Some((_, why)) = DANGEROUS_PREFIXES.iter().find(|(p, _)| base.starts_with(p)) {
        return FunctionKind::Admin(why);
    }
    if base == "set_config" && matches!(schema, None | Some("pg_catalog")) {
        return FunctionKind::SetConfig;
    }
    if WRITE_FUNCTIONS.contains(&base) {
        return FunctionKind::Write;
    }
    if !matches!(schema, None | Some("pg_catalog")) {
        return FunctionKind::Unknown;
    }
    if SAFE_FUNCTIONS.contains(&base)
        || SAFE_PREFIXES.iter().any(|p| base.starts_with(p)) && !base.contains("reset")
    {
        return FunctionKind::Safe;
    }
    FunctionKind::Unknown
}

/// Built-in operators (by symbol). An operator outside this list, or qualified with a schema
/// other than `pg_catalog`, is user-defined and counts like an unknown function: it can run any code.
#[rustfmt::skip]
const BUILTIN_OPERATORS: &[&str] = &[
    "=", "<>", "!=", "<", ">", "<=", ">=", "+", "-", "*", "/", "%", "^", "||", "|/", "||/", "@", "&",
    "|", "#", "~", "<<", ">>", "<<=", ">>=", "~~", "!~~", "~~*", "!~~*", "~*", "!~", "!~*", "@>", "<@",
    "&&", "->", "->>", "#>", "#>>", "#-", "?", "?|", "?&", "@?", "@@", "@@@", "^@", "<->", "<<|", "|>>",
    "&<", "&>", "&<|", "|&>", "?#", "?-", "?-|", "?||", "~=", "-|-", "<^", ">^", "##", "@-@", "~<~",
    "~<=~", "~>=~", "~>~", "!!", "<#>", "<=>",
];

pub fn is_builtin_operator(name: &str) -> bool {
    let op = name.strip_prefix("pg_catalog.").unwrap_or(name);
    !op.contains('.') && BUILTIN_OPERATORS.contains(&op)
}

/// What changing a setting means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettingKind {
    /// Session-local and harmless: read.
    Harmless,
    /// `statement_timeout`: harmless below the role's cap.
    StatementTimeout,
    /// `search_path`: harmless unless it moves `pg_catalog` behind other schemas.
    SearchPath,
    /// `default_transaction_read_only`, `transaction_read_only`: turning them off is a write.
    ReadOnlyGuard,
    /// Changes how the proxy's own parser must lex text: never changeable.
    Lexing,
    /// `client_encoding`: only UTF8.
    ClientEncoding,
    /// `role`, `session_authorization`: identity changes.
    Identity,
    /// Custom `prefix.name` settings: row-level security policies often trust them.
    Custom,
    /// Anything else: server-wide or unknown.
    Other,
}

/// Settings a session may change freely (PostgreSQL's lower-case GUC names).
#[rustfmt::skip]
const HARMLESS_SETTINGS: &[&str] = &[
    "application_name", "array_nulls", "bytea_output", "check_function_bodies", "client_min_messages",
    "constraint_exclusion", "cpu_index_tuple_cost", "cpu_operator_cost", "cpu_tuple_cost",
    "cursor_tuple_fraction", "datestyle", "debug_parallel_query", "default_statistics_target",
    "default_transaction_deferrable", "default_transaction_isolation", "effective_cache_size",
    "effective_io_concurrency", "escape_string_warning", "exit_on_error", "extra_float_digits",
    "force_parallel_mode", "from_collapse_limit", "geqo", "geqo_threshold", "gin_fuzzy_search_limit",
    "hash_mem_multiplier", "idle_in_transaction_session_timeout", "idle_session_timeout",
    "intervalstyle", "jit", "join_collapse_limit", "lc_monetary", "lc_numeric", "lc_time",
    "lock_timeout", "max_parallel_workers_per_gather", "parallel_setup_cost", "parallel_tuple_cost",
    "plan_cache_mode", "quote_all_identifiers", "random_page_cost", "row_security", "seq_page_cost",
    "synchronous_commit", "temp_buffers", "timezone", "timezone_abbreviations",
    "transaction_deferrable", "transaction_isolation", "transaction_snapshot", "transaction_timeout",
    "work_mem", "xmlbinary", "xmloption",
];

pub fn setting_kind(name: &str) -> SettingKind {
    match name {
        "statement_timeout" => SettingKind::StatementTimeout,
        "search_path" => SettingKind::SearchPath,
        "default_transaction_read_only" | "transaction_read_only" => SettingKind::ReadOnlyGuard,
        "standard_conforming_strings" | "backslash_quote" => SettingKind::Lexing,
        "client_encoding" => SettingKind::ClientEncoding,
        "role" | "session_authorization" => SettingKind::Identity,
        n if n.starts_with("enable_") => SettingKind::Harmless,
        n if HARMLESS_SETTINGS.contains(&n) => SettingKind::Harmless,
        n if n.contains('.') => SettingKind::Custom,
        _ => SettingKind::Other,
    }
}

/// An encoding name as PostgreSQL compares it (`clean_encoding_name` in `encnames.c`): lower case,
/// every character that is not alphanumeric dropped, so `UTF-8`, `'utf_8'` and `Utf 8` are all
/// `utf8`. `None` for a name with a character outside ASCII, which PostgreSQL's C-locale `isalnum`
/// might read differently (fail closed: such a name is no encoding timebox allows).
pub fn clean_encoding_name(value: &str) -> Option<String> {
    if !value.is_ascii() {
        return None;
    }
    Some(
        value
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .map(|c| c.to_ascii_lowercase())
            .collect(),
    )
}

/// `client_encoding` values that keep the text UTF-8: every spelling PostgreSQL accepts for UTF8
/// (its aliases `utf8` and `unicode`, after [`clean_encoding_name`]).
pub fn is_utf8_encoding(value: &str) -> bool {
    matches!(clean_encoding_name(value).as_deref(), Some("utf8" | "unicode"))
}

/// The class a function kind contributes (unknown functions are decided by the role, later).
pub(crate) fn function_class(kind: FunctionKind) -> StatementClass {
    match kind {
        FunctionKind::Safe | FunctionKind::SetConfig | FunctionKind::Unknown => StatementClass::Read,
        FunctionKind::Write => StatementClass::Write,
        FunctionKind::Admin(_) => StatementClass::Admin,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_have_no_duplicates_or_conflicts() {
        let mut seen = std::collections::HashSet::new();
        for f in SAFE_FUNCTIONS {
            assert!(seen.insert(*f), "duplicate safe function {f}");
            assert_ne!(function_kind(f), FunctionKind::Unknown, "{f}");
            assert!(
                !WRITE_FUNCTIONS.contains(f) && !DANGEROUS_FUNCTIONS.iter().any(|(n, _)| n == f),
                "{f} is both safe and not"
            );
        }
        for f in SAFE_FUNCTIONS {
            assert_eq!(
                function_kind(f),
                FunctionKind::Safe,
                "{f} is shadowed by a dangerous prefix"
            );
        }
        for s in HARMLESS_SETTINGS {
            assert_eq!(*s, s.to_lowercase(), "settings are folded names");
        }
    }

    #[test]
    fn schema_qualification_rules() {
        assert_eq!(function_kind("pg_catalog.lower"), FunctionKind::Safe);
        assert_eq!(function_kind("public.lower"), FunctionKind::Unknown);
        assert_eq!(function_kind("public.nextval"), FunctionKind::Write);
        assert!(matches!(
            function_kind("evil.pg_read_file"),
            FunctionKind::Admin(_)
        ));
        assert!(matches!(function_kind("lo_import"), FunctionKind::Admin(_)));
        assert!(matches!(
            function_kind("pg_stat_reset_shared"),
            FunctionKind::Admin(_)
        ));
        assert_eq!(function_kind("pg_catalog.set_config"), FunctionKind::SetConfig);
        assert_eq!(
            function_kind("public.set_config"),
            FunctionKind::Unknown,
            "a user function named set_config"
        );
        assert_eq!(function_kind("pg_stat_get_numscans"), FunctionKind::Safe);
        assert_eq!(function_kind("has_table_privilege"), FunctionKind::Safe);
        assert_eq!(
            function_kind("LOWER"),
            FunctionKind::Unknown,
            "quoted upper-case is another function"
        );
        assert!(is_builtin_operator("pg_catalog.="));
        assert!(!is_builtin_operator("public.="));
        assert!(!is_builtin_operator("===>"));
        assert!(is_utf8_encoding("UTF-8") && is_utf8_encoding("utf8") && !is_utf8_encoding("SQL_ASCII"));
        // Issue 12: every spelling PostgreSQL's pg_char_to_encoding accepts for UTF8.
        for yes in [
            "utf8", "UTF8", "utf-8", "'utf-8'", "UTF_8", "Utf 8", "unicode", "UNICODE", " utf.8 ",
        ] {
            assert!(is_utf8_encoding(yes), "{yes}");
        }
        for no in [
            "",
            "utf",
            "utf16",
            "utf88",
            "latin1",
            "sjis",
            "sql_ascii",
            "ｕｔｆ８",
            "utf8\u{301}",
        ] {
            assert!(!is_utf8_encoding(no), "{no}");
        }
    }
}
