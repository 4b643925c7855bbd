//! Literal shapes: a statement's text with its literals abstracted, and the proof obligations under
//! which two texts of one shape are classified alike. Pure functions; no I/O, no state.
//!
//! Sits inside [`ClassifyCache`](super::ClassifyCache), after the exact-text level: pgbench (simple
//! protocol) and hand-written clients send `… WHERE aid = 48213;` with a new literal every time, so
//! the exact text never repeats but its shape does. It must never let a shape hit answer
//! differently from a fresh parse: a hit returns a [`Classification`] *equal* (`==`, spans
//! included) to what [`classify()`](super::classify()) returns for the new text, and anything this
//! module cannot vouch for is left to a fresh parse.
//!
//! # Why a shape hit equals a fresh parse
//! 1. **Same shape, same tokens.** [`literal_shape`] accepts only a tiny subset of SQL: ASCII
//!    blanks, `[A-Za-z_][A-Za-z0-9_]*` words, the punctuation `( ) , . ; = < > + - * /` (no `--`
//!    or `/*`), integers of at most nine digits and `'…'` strings without `'`, `\` or control
//!    characters, each literal standing between blanks, punctuation other than `.`, or the ends of
//!    the text. Everything else (other quotes, `$`, `:`, other operator characters, non-ASCII
//!    outside strings, `E''`/`B''`/`X''`/`N''`/`U&''`, `1e5`, `1.5`, `0x1F`, `1_000`, ten digits)
//!    is refused. In that subset, PostgreSQL's scanner and sqlparser's tokenizer both read a literal
//!    as one token (`ICONST`: nine digits always fit an `int4`; `SCONST`) whose extent does not
//!    depend on its neighbours or its value, and everything else is copied into the key verbatim.
//!    Two texts with equal keys are therefore the same token sequence except for literal values.
//! 2. **Same tokens, same trees.** Both parsers choose their derivation from token kinds (and
//!    keywords, copied verbatim); a literal's value matters only where a grammar action reads it.
//!    In PostgreSQL's grammar the actions that read a value (`float(p)`, `current_time(p)`,
//!    `SET`/`COPY`/DDL options) consume the token without making an `A_Const` of it, while the
//!    plain-constant rules (constants, type modifiers, typed literals such as `date '…'`) copy the
//!    value unread; the only actions that look at an `A_Const` afterwards check its kind
//!    (`JSON_TABLE` paths; the key keeps kinds) or fold a unary minus into it (`- 5`), which
//!    leaves the tree's shape alone. So the template must show an `A_Const` at every literal (at
//!    its first byte, or at the folded minus): a string split over lines, which PostgreSQL joins
//!    into one constant, fails this too. sqlparser only converts integers to `u64`/`i64` (nine
//!    digits always fit) and stores strings as they are. The trees of template and new text then
//!    differ in constant values and locations only, and both parse (the template's statement is
//!    not `Unparsed`).
//! 3. **Same trees, same classification.** `literal_independent` admits only one `SELECT`,
//!    `INSERT`, `UPDATE` or `DELETE` statement that calls no function (so no `set_config`
//!    arguments, no `nextval('…')`), changes no setting and carries none of the `EXPLAIN`, `COPY`,
//!    `PREPARE`/`EXECUTE`/`DEALLOCATE`/`DECLARE` or `BEGIN` flags. For such a statement the
//!    classifier reads no constant value: relations, CTE names, operators and `WHERE`s are
//!    identifiers and structure, and the reason texts name only the kind. (Constant values are read
//!    for `set_config` arguments, `EXPLAIN` options, `SET`/`SET TRANSACTION` values and the
//!    `COPY` file name, all excluded.) `literal_independent` destructures
//!    [`StatementInfo`] field by field, so a new field cannot slip past it.
//! 4. **Spans.** The span is the only position in a classification. Its ends fall on token
//!    boundaries (the first token, the `;` or the end of the text), never strictly inside a
//!    literal; `map_offset` moves them by the length differences of the literals before them.

use std::ops::Range;

use super::classify::{Classification, StatementClass, StatementInfo};

/// Stands for an integer literal in a shape key (a control character, which the lexer refuses
/// anywhere else, so no text can spell it).
const INT_MARKER: char = '\u{1}';
/// Stands for a string literal in a shape key.
const STR_MARKER: char = '\u{2}';
/// Longest integer literal: nine digits always fit an `int4`, so PostgreSQL scans them as `ICONST`
/// (ten digits may be a numeric `FCONST`: another token, another tree).
const MAX_DIGITS: usize = 9;

/// A text in the safe subset: its key (the text, literals replaced by markers) and where its
/// literals are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    key: String,
    literals: Vec<Range<usize>>,
}

impl Shape {
    /// The text with each integer literal replaced by `\u{1}` and each string literal (quotes
    /// included) by `\u{2}`; everything else verbatim.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Byte ranges of the literals in the text, in order (strings with their quotes).
    pub fn literals(&self) -> &[Range<usize>] {
        &self.literals
    }
}

fn is_blank(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

fn is_punctuation(b: u8) -> bool {
    matches!(
        b,
        b'(' | b')' | b',' | b'.' | b';' | b'=' | b'<' | b'>' | b'+' | b'-' | b'*' | b'/'
    )
}

fn is_word_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_'
}

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// What may stand right before or after a literal: the ends of the text, a blank, or punctuation
/// other than `.` (which would make `t.1`, `1.5`, `.5` numerics or field selections).
fn is_literal_boundary(b: Option<u8>) -> bool {
    b.is_none_or(|b| is_blank(b) || (is_punctuation(b) && b != b'.'))
}

/// The shape of `sql`, or `None` when the text is outside the small subset whose literals can be
/// abstracted safely (see the module doc). A text without literals has a shape equal to itself.
pub fn literal_shape(sql: &str) -> Option<Shape> {
    let b = sql.as_bytes();
    let mut key = String::with_capacity(b.len());
    let mut literals = Vec::new();
    // Bytes of `sql` before `copied` are in `key` already.
    let mut copied = 0;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if is_blank(c) {
            i += 1;
        } else if is_word_start(c) {
            // Words swallow their digits: `a1` is one identifier, never `a` then `1`.
            i += 1;
            while i < b.len() && is_word(b[i]) {
                i += 1;
            }
        } else if c.is_ascii_digit() || c == b'\'' {
            if !is_literal_boundary(i.checked_sub(1).map(|p| b[p])) {
                // `E'…'`, `x'…'`, `t.1`, `'a''b'`, …
                return None;
            }
            let start = i;
            if c == b'\'' {
                i += 1;
                loop {
                    match *b.get(i)? {
                        b'\'' => break,
                        b'\\' => return None,
                        ch if ch.is_ascii_control() => return None,
                        _ => i += 1,
                    }
                }
                i += 1;
            } else {
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
                if i - start > MAX_DIGITS {
                    return None;
                }
            }
            if !is_literal_boundary(b.get(i).copied()) {
                // `1e5`, `1.5`, `0x1F`, `1_000`, `123abc`, `'a'b`, …
                return None;
            }
            key.push_str(&sql[copied..start]);
            key.push(if c == b'\'' { STR_MARKER } else { INT_MARKER });
            copied = i;
            literals.push(start..i);
        } else if is_punctuation(c) {
            let next = b.get(i + 1).copied();
            if (c == b'-' && next == Some(b'-')) || (c == b'/' && next == Some(b'*')) {
                // A comment: the scanners skip it, and its text could be anything.
                return None;
            }
            i += 1;
        } else {
            return None;
        }
    }
    key.push_str(&sql[copied..]);
    Some(Shape { key, literals })
}

/// Why a classification may not stand for other texts of its shape.
pub(crate) type Refusal = &'static str;

/// Whether `fresh`, the classification of `sql` (whose shape is `shape` and whose parse tree has
/// `A_Const` nodes at `constants`), holds for every text of the same shape, with the span moved by
/// [`map_offset`]. Conservative: `Err` says why not.
pub(crate) fn literal_independent(
    sql: &str,
    shape: &Shape,
    fresh: &Classification,
    constants: &[usize],
) -> Result<(), Refusal> {
    let [stmt] = fresh.statements.as_slice() else {
        return Err("not exactly one statement");
    };
    // Every field, so that a field added to StatementInfo must be considered here.
    let StatementInfo {
        class,
        kind,
        span,
        relations: _,                // identifiers, copied verbatim into the key
        functions,                   // a call may read its literal arguments (set_config, nextval)
        unknown_functions,           // user-defined functions and operators
        reasons: _,                  // for the admitted kinds, built from the kind and the structure only
        has_where: _,                // structure
        unfiltered_targets: _,       // identifiers
        unfiltered_merge_targets: _, // identifiers (and MERGE is not admitted)
        sets,
        begin_read_write,
        explain_analyze,
        copy_direction,
        copy_program_or_file,
        prepare_name,
        execute_name,
        deallocate,
        declare_cursor,
        fetch_cursor,
        close_cursor,
        declare_hold: _, // with declare_cursor
        unparsed,
        newer_syntax: _, // structure (keywords), never a literal
    } = stmt;
    if *class == StatementClass::Unparsed || unparsed.is_some() {
        return Err("the parsers did not agree on the template");
    }
    if !matches!(kind.as_str(), "SELECT" | "INSERT" | "UPDATE" | "DELETE") {
        return Err("only SELECT, INSERT, UPDATE and DELETE are admitted");
    }
    if !functions.is_empty() || !unknown_functions.is_empty() {
        return Err("calls functions or user-defined operators");
    }
    if !sets.is_empty() {
        return Err("changes settings");
    }
    if *begin_read_write
        || *explain_analyze
        || copy_direction.is_some()
        || *copy_program_or_file
        || prepare_name.is_some()
        || execute_name.is_some()
        || deallocate.is_some()
        || declare_cursor.is_some()
        || fetch_cursor.is_some()
        || close_cursor.is_some()
    {
        return Err("carries a flag for the relay");
    }
    let b = sql.as_bytes();
    if !shape
        .literals
        .iter()
        .all(|lit| is_plain_constant(b, lit.start, constants))
    {
        return Err("a literal is not a plain constant in PostgreSQL's parse tree");
    }
    let fixed = |offset| map_offset(offset, &shape.literals, &shape.literals).is_some();
    if !fixed(span.start) || !fixed(span.end) {
        return Err("the span ends inside a literal");
    }
    Ok(())
}

/// Whether PostgreSQL's tree has an `A_Const` for the literal starting at `start`: at that byte,
/// or at a unary minus the grammar folded into it (`- 5`, `- - 5`: only blanks and `-` between).
fn is_plain_constant(sql: &[u8], start: usize, constants: &[usize]) -> bool {
    let mut at = start;
    loop {
        if constants.contains(&at) {
            return true;
        }
        let mut j = at;
        while j > 0 && is_blank(sql[j - 1]) {
            j -= 1;
        }
        if j > 0 && sql[j - 1] == b'-' {
            at = j - 1;
        } else {
            return false;
        }
    }
}

/// Moves a byte offset of a template text (literals at `from`) to the same place in a text of the
/// same shape (literals at `to`): the text between literals is identical, so only the length
/// differences of the literals before the offset count. `None` for an offset strictly inside a
/// literal, or literal lists of different lengths (never the case for one shape).
pub(crate) fn map_offset(offset: usize, from: &[Range<usize>], to: &[Range<usize>]) -> Option<usize> {
    if from.len() != to.len() {
        return None;
    }
    // Where the template's last literal before `offset` ends, and where that is in the new text.
    let (mut old_end, mut new_end) = (0, 0);
    for (old, new) in from.iter().zip(to) {
        if offset <= old.start {
            break;
        }
        if offset < old.end {
            return None;
        }
        (old_end, new_end) = (old.end, new.end);
    }
    Some(offset - old_end + new_end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::classify::classify_with_constants;

    /// The key with its markers spelled `<i>` and `<s>`.
    fn shown(sql: &str) -> Option<String> {
        literal_shape(sql).map(|s| s.key().replace(INT_MARKER, "<i>").replace(STR_MARKER, "<s>"))
    }

    /// (what the row guards against, SQL, expected key or None when refused)
    const LEXER: &[(&str, &str, Option<&str>)] = &[
        ("pgbench_select", "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;", Some("SELECT abalance FROM pgbench_accounts WHERE aid = <i>;")),
        ("pgbench_update_negative_delta", "UPDATE pgbench_accounts SET abalance = abalance + -2345 WHERE aid = 123;", Some("UPDATE pgbench_accounts SET abalance = abalance + -<i> WHERE aid = <i>;")),
        ("pgbench_insert", "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 2, 3, -4, CURRENT_TIMESTAMP);", Some("INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (<i>, <i>, <i>, -<i>, CURRENT_TIMESTAMP);")),
        ("no_literals_is_its_own_shape", "SELECT a FROM t", Some("SELECT a FROM t")),
        ("empty_text", "", Some("")),
        ("blanks_kept_verbatim", "SELECT\t1\r\n,  2", Some("SELECT\t<i>\r\n,  <i>")),
        ("digits_in_words_are_words", "SELECT a1, t2.b3 FROM t4", Some("SELECT a1, t2.b3 FROM t4")),
        ("nine_digits", "SELECT 123456789", Some("SELECT <i>")),
        ("ten_digits_may_be_numeric", "SELECT 1234567890", None),
        ("leading_zeros_ten_digits", "SELECT 0000000001", None),
        ("exponent", "SELECT 1e5", None),
        ("decimal", "SELECT 1.5", None),
        ("trailing_dot", "SELECT 1.", None),
        ("leading_dot", "SELECT .5", None),
        ("field_number", "SELECT t.1 FROM t", None),
        ("hex", "SELECT 0x1F", None),
        ("underscore_digits", "SELECT 1_000", None),
        ("trailing_junk", "SELECT 123abc", None),
        ("integer_then_quote", "SELECT 1'a'", None),
        ("empty_string", "SELECT ''", Some("SELECT <s>")),
        ("string_with_comment_and_semicolon_inside", "SELECT '-- x; /* y */'", Some("SELECT <s>")),
        ("string_non_ascii_inside", "SELECT 'naïve ✓'", Some("SELECT <s>")),
        ("doubled_quote", "SELECT 'it''s'", None),
        ("backslash", "SELECT 'a\\b'", None),
        ("tab_in_string", "SELECT 'a\tb'", None),
        ("newline_in_string", "SELECT 'a\nb'", None),
        ("unterminated_string", "SELECT 'abc", None),
        ("escape_string", "SELECT E'x'", None),
        ("escape_string_lower", "SELECT e'x'", None),
        ("bit_string", "SELECT B'01'", None),
        ("hex_string", "SELECT X'ff'", None),
        ("national_string", "SELECT N'x'", None),
        ("unicode_string", "SELECT U&'x'", None),
        ("word_glued_to_string", "SELECT date'2020-01-01'", None),
        ("string_glued_to_word", "SELECT 'a'b", None),
        ("typed_date_literal", "SELECT date '2020-01-01'", Some("SELECT date <s>")),
        ("typed_interval_literal", "SELECT now() - interval '1 day'", Some("SELECT now() - interval <s>")),
        ("adjacent_strings_are_left_to_the_predicate", "SELECT 'a'\n'b'", Some("SELECT <s>\n<s>")),
        ("double_quotes", "SELECT \"a\" FROM t", None),
        ("parameter", "SELECT $1", None),
        ("dollar_quotes", "SELECT $$x$$", None),
        ("cast", "SELECT x::int", None),
        ("not_equal_bang", "SELECT 1 WHERE a != b", None),
        ("subscript", "SELECT a[1] FROM t", None),
        ("modulo", "SELECT 5 % 2", None),
        ("power", "SELECT 2 ^ 3", None),
        ("bar", "SELECT a || b", None),
        ("at_sign", "SELECT @ x", None),
        ("hash", "SELECT a # b", None),
        ("tilde", "SELECT a ~ 'x'", None),
        ("question_mark", "SELECT data ? 'x'", None),
        ("brace", "SELECT a FROM t {", None),
        ("ampersand", "SELECT a & b", None),
        ("non_ascii_word", "SELECT naïve FROM t", None),
        ("form_feed", "SELECT\x0c1", None),
        ("marker_bytes_cannot_be_spelled", "SELECT \u{1}", None),
        ("line_comment", "SELECT 1 -- c", None),
        ("line_comment_glued", "SELECT 1--2", None),
        ("block_comment", "SELECT /* c */ 1", None),
        ("minus_minus_with_space", "SELECT 1 - -2", Some("SELECT <i> - -<i>")),
        ("operators_from_allowed_characters", "SELECT a FROM t WHERE b <> 1 AND c <= 2 AND d >= 3 AND e = 4 / 2 * 1", Some("SELECT a FROM t WHERE b <> <i> AND c <= <i> AND d >= <i> AND e = <i> / <i> * <i>")),
        ("set_config_harmless", "SELECT set_config('application_name','x',false)", Some("SELECT set_config(<s>,<s>,false)")),
        ("set_config_dangerous_same_shape", "SELECT set_config('default_transaction_read_only','off',false)", Some("SELECT set_config(<s>,<s>,false)")),
        ("explain_analyze_option_string", "EXPLAIN (ANALYZE 'on') SELECT 1", Some("EXPLAIN (ANALYZE <s>) SELECT <i>")),
        ("explain_analyze", "EXPLAIN ANALYZE SELECT 1", Some("EXPLAIN ANALYZE SELECT <i>")),
        ("set_value", "SET x = '5'", Some("SET x = <s>")),
        ("copy_file", "COPY t FROM '/tmp/x'", Some("COPY t FROM <s>")),
        ("nextval", "SELECT nextval('s')", Some("SELECT nextval(<s>)")),
        ("limit", "SELECT a FROM t LIMIT 1", Some("SELECT a FROM t LIMIT <i>")),
        ("order_by_position", "SELECT a FROM t ORDER BY 1", Some("SELECT a FROM t ORDER BY <i>")),
        ("multi_statement", "SELECT 1; DELETE FROM t WHERE id = 2", Some("SELECT <i>; DELETE FROM t WHERE id = <i>")),
    ];

    #[test]
    fn lexer_accepts_only_the_safe_subset() {
        let mut failures = Vec::new();
        let mut names = std::collections::HashSet::new();
        for (name, sql, expected) in LEXER {
            assert!(names.insert(*name), "duplicate row {name}");
            let got = shown(sql);
            if got.as_deref() != *expected {
                failures.push(format!("{name}: {sql:?} gave {got:?}, expected {expected:?}"));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn literals_are_located_with_their_quotes() {
        let sql = "UPDATE t SET a = 'x y', b = -12 WHERE c = ''";
        let shape = literal_shape(sql).unwrap();
        let texts: Vec<&str> = shape.literals().iter().map(|r| &sql[r.clone()]).collect();
        assert_eq!(texts, ["'x y'", "12", "''"]);
    }

    #[test]
    fn offsets_move_by_the_literal_length_differences() {
        let from = [5..7, 10..13];
        let to = [5..6, 9..16];
        let moved: Vec<Option<usize>> = [0, 5, 6, 7, 8, 10, 12, 13, 20]
            .iter()
            .map(|o| map_offset(*o, &from, &to))
            .collect();
        assert_eq!(
            moved,
            [
                Some(0),
                Some(5),
                None,
                Some(6),
                Some(7),
                Some(9),
                None,
                Some(16),
                Some(23)
            ]
        );
        assert_eq!(map_offset(3, &from, &to[..1]), None, "different literal counts");
    }

    fn verdict(sql: &str) -> Result<(), Refusal> {
        let shape = literal_shape(sql).expect("in the lexer's subset");
        let (fresh, constants) = classify_with_constants(sql);
        literal_independent(sql, &shape, &fresh, &constants)
    }

    #[test]
    fn the_predicate_admits_plain_dml() {
        for sql in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;",
            "UPDATE pgbench_accounts SET abalance = abalance + -2345 WHERE aid = 123;",
            "UPDATE pgbench_tellers SET tbalance = tbalance + 5 WHERE tid = 7;",
            "UPDATE pgbench_branches SET bbalance = bbalance + - 5 WHERE bid = 1;",
            "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 2, 3, -4, CURRENT_TIMESTAMP);",
            "DELETE FROM t WHERE id = 1",
            "SELECT a FROM t WHERE b = - - 5 LIMIT 1 OFFSET 2",
            "SELECT a FROM t ORDER BY 1",
            "SELECT a FROM t WHERE d > date '2020-01-01' AND i < interval '1 day'",
            "SELECT a FROM t WHERE id = 1 FOR UPDATE",
            "  SELECT 'x' ;  ",
        ] {
            assert_eq!(verdict(sql), Ok(()), "{sql}");
        }
    }

    #[test]
    fn the_predicate_refuses_what_a_literal_can_change() {
        for (sql, why) in [
            ("SELECT set_config('application_name','x',false)", "functions"),
            ("SELECT nextval('s')", "functions"),
            ("SELECT lower('A')", "functions"),
            ("SELECT * FROM t WHERE a = f(1)", "functions"),
            ("EXPLAIN (ANALYZE 'on') SELECT 1", "only SELECT"),
            ("EXPLAIN ANALYZE SELECT 1", "only SELECT"),
            ("EXPLAIN SELECT 1", "only SELECT"),
            ("SET x = '5'", "only SELECT"),
            ("SET statement_timeout = '5s'", "only SELECT"),
            ("COPY t FROM '/tmp/x'", "only SELECT"),
            ("VALUES (1)", "only SELECT"),
            ("SELECT 1 INTO x", "only SELECT"),
            ("PREPARE p AS SELECT 1", "only SELECT"),
            ("SELECT CAST(a AS float(10)) FROM t", "plain constant"),
            ("SELECT current_time(3)", "plain constant"),
            // PostgreSQL joins strings split by a line break into one constant (the second literal
            // would have no A_Const); sqlparser does not join them, so the parsers disagree first.
            ("SELECT 'a'\n'b'", "did not agree"),
            ("SELECT 1; SELECT 2", "exactly one"),
            ("SELECC 1", "did not agree"),
            ("SELECT 1 AS 'x'", "did not agree"),
        ] {
            match verdict(sql) {
                Err(refusal) => assert!(refusal.contains(why), "{sql}: refused for {refusal:?}"),
                Ok(()) => panic!("{sql}: admitted"),
            }
        }
    }
}
