//! Unit tests of the classifier's pure helpers (the decision tables are in `policy::tests`).

use super::second_opinion::table_commands_as_selects;
use super::walker::merge_action_unfiltered;
use pg_query::protobuf;
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

/// `TABLE name` is respelled only where PostgreSQL's scanner sees the keyword right before the
/// relation the parse tree locates; anything else is left for sqlparser to fail on.
#[test]
fn table_commands_are_respelled_only_at_the_keyword() {
    let at = |sql: &str, names: &[&str]| {
        let relations: Vec<usize> = names.iter().map(|n| sql.find(n).unwrap()).collect();
        table_commands_as_selects(sql, &relations)
    };
    assert_eq!(at("TABLE t", &["t"]).as_deref(), Some("SELECT * FROM t"));
    assert_eq!(
        at("table t1 UNION TABLE /* x */ t2", &["t1", "t2"]).as_deref(),
        Some("SELECT * FROM t1 UNION SELECT * FROM /* x */ t2")
    );
    assert_eq!(at("TABLE ONLY t", &["t"]), None, "ONLY between");
    assert_eq!(at("SELECT * FROM t", &["t"]), None, "no TABLE keyword");
    assert_eq!(at("SELECT 'TABLE' t", &["t"]), None, "a string is no keyword");
    assert_eq!(at("TABLE t", &[]).as_deref(), Some("TABLE t"));
    assert_eq!(table_commands_as_selects("TABLE t", &[99]), None, "past the end");
}
