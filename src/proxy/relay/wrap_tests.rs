//! Unit tests of [`super`]: the wrap fed frame tags and statuses, no sockets.

use super::*;
use crate::policy::classify::classify;

fn wrap_of(sql: &str) -> bool {
    wrappable(&classify(sql).statements)
}

fn steps(w: &mut TxWrap, frames: &[(u8, u8)], refused: Refused) -> Vec<WrapStep> {
    frames
        .iter()
        .map(|&(tag, status)| w.on_backend(tag, status, refused))
        .collect()
}

fn texts(bytes: &[u8]) -> Vec<String> {
    let mut rest = bytes;
    let mut out = Vec::new();
    while rest.len() > 5 {
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        out.push(String::from_utf8_lossy(&rest[5..len]).into_owned());
        rest = &rest[1 + len..];
    }
    out
}

#[test]
fn queries_and_dml_are_wrapped_transaction_control_and_blockless_statements_are_not() {
    for sql in [
        "SELECT 1",
        "SELECT * FROM t; SHOW search_path",
        "WITH x AS (SELECT 1) SELECT * FROM x",
        "UPDATE t SET a = 1 WHERE id = 2",
        "EXPLAIN ANALYZE SELECT 1",
        "SET search_path = public",
        "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
        "DECLARE c CURSOR FOR SELECT 1; FETCH 2 FROM c",
        "LOCK TABLE t; SELECT * FROM t",
        "EXECUTE p",
        "FETCH 10 FROM c",
    ] {
        assert!(wrap_of(sql), "{sql}");
    }
    for sql in [
        "",
        ";",
        "BEGIN",
        "BEGIN; SELECT 1",
        "SELECT 1; COMMIT",
        "ROLLBACK",
        "SAVEPOINT a",
        "VACUUM t",
        "DISCARD ALL",
        "LOCK TABLE t",
        "DECLARE c CURSOR FOR SELECT 1",
        "CREATE DATABASE d",
        "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        "CREATE INDEX CONCURRENTLY i ON t (a)",
    ] {
        assert!(!wrap_of(sql), "{sql:?}");
    }
}

#[test]
fn strings_that_would_run_outside_timebox_s_transaction_are_refused() {
    let refused = |sql: &str| string_refusal(&classify(sql).statements).map(|(m, _)| m);
    for (sql, says) in [
        ("BEGIN; SELECT 1; COMMIT", "COMMIT must be a Query of its own"),
        ("SELECT 1; COMMIT", "COMMIT must be"),
        ("select 1; end", "COMMIT must be"),
        ("SELECT 1; PREPARE TRANSACTION 'x'", "PREPARE TRANSACTION must be"),
        ("ROLLBACK; SELECT 1", "ROLLBACK must be a Query of its own"),
        ("BEGIN; SELECT 1; ROLLBACK; SELECT 2", "ROLLBACK must be"),
        ("SELECT 1; BEGIN", "BEGIN must be"),
        ("BEGIN; SAVEPOINT a; SELECT 1", "SAVEPOINT must be"),
        ("DISCARD PLANS; SELECT 1", "DISCARD must be a Query of its own"),
        (
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE; SELECT 1",
            "SET TRANSACTION must be",
        ),
        ("VACUUM t; SELECT 1", "VACUUM must be"),
        (
            "SET search_path = s, public; SELECT * FROM t",
            "search_path must be the last",
        ),
        (
            "SELECT pg_catalog.set_config('search_path', 's', false); SELECT * FROM t",
            "search_path must be the last",
        ),
        ("RESET ALL; SELECT * FROM t", "search_path must be the last"),
        (
            "BEGIN; SET LOCAL search_path = s; SELECT * FROM t",
            "search_path must be the last",
        ),
        (
            "SELECT pg_sleep(2); SELECT round(id) FROM t",
            "SELECT would be a second",
        ),
        ("SELECT 1; SELECT 2", "SELECT would be a second"),
        ("LOCK TABLE t; SELECT * FROM t", "SELECT would be a second"),
        ("SELECT * FROM t; SET search_path = s", "SET would be a second"),
        ("PREPARE p AS SELECT 1; EXECUTE p", "EXECUTE would be a second"),
        (
            "DECLARE c CURSOR FOR SELECT 1; FETCH 1 FROM c; SELECT 1",
            "SELECT would be a second",
        ),
    ] {
        let got = refused(sql);
        assert!(got.as_deref().is_some_and(|m| m.contains(says)), "{sql}: {got:?}");
    }
    for sql in [
        "COMMIT",
        "DISCARD PLANS",
        "SELECT 1",
        "BEGIN; SELECT 1",
        "BEGIN; SELECT 1; ROLLBACK",
        "START TRANSACTION; DECLARE c CURSOR FOR SELECT 1; FETCH 2 FROM c",
        "SET search_path = s",
        "BEGIN; DECLARE c CURSOR FOR SELECT * FROM t; FETCH 2 FROM c; MOVE 1 IN c; CLOSE c; SHOW x; ROLLBACK",
        "SET statement_timeout = 5; SELECT * FROM t",
    ] {
        assert_eq!(refused(sql), None, "{sql}");
    }
}

#[test]
fn a_wrapped_query_that_passes_commits_and_the_client_gets_one_ready_for_query() {
    let mut w = TxWrap::default();
    w.forwarded(Mode::Own);
    assert!(w.holding());
    assert_eq!(
        steps(&mut w, &[(b'C', 0), (b'Z', b'T')], Refused::No),
        vec![WrapStep::Drop, WrapStep::Drop],
        "BEGIN's answers are timebox's"
    );
    assert_eq!(
        steps(&mut w, &[(b'T', 0), (b'D', 0), (b'C', 0)], Refused::No),
        vec![WrapStep::Pass; 3]
    );
    let WrapStep::Close(sent) = w.on_backend(b'Z', b'T', Refused::No) else {
        panic!("the Query's ReadyForQuery closes the block");
    };
    assert_eq!(texts(&sent), vec!["COMMIT"]);
    assert_eq!(w.on_backend(b'C', 0, Refused::No), WrapStep::Drop);
    assert_eq!(w.on_backend(b'Z', b'I', Refused::No), WrapStep::Done);
    assert!(!w.holding());
    assert_eq!(w.on_backend(b'Z', b'I', Refused::No), WrapStep::Pass, "off again");
}

#[test]
fn a_commit_that_fails_sends_its_error_to_the_client() {
    let mut w = TxWrap::default();
    w.forwarded(Mode::Own);
    steps(&mut w, &[(b'C', 0), (b'Z', b'T'), (b'C', 0)], Refused::No);
    assert!(matches!(
        w.on_backend(b'Z', b'T', Refused::No),
        WrapStep::Close(_)
    ));
    assert_eq!(w.on_backend(b'E', 0, Refused::No), WrapStep::Pass);
    assert_eq!(w.on_backend(b'Z', b'I', Refused::No), WrapStep::Done);
}

#[test]
fn a_refused_or_failed_wrapped_query_is_rolled_back() {
    for (status, refused) in [
        (b'T', Refused::Judged),
        (b'E', Refused::No),
        (b'E', Refused::Judged),
    ] {
        let mut w = TxWrap::default();
        w.forwarded(Mode::Own);
        steps(&mut w, &[(b'C', 0), (b'Z', b'T'), (b'E', 0)], refused);
        let WrapStep::Close(sent) = w.on_backend(b'Z', status, refused) else {
            panic!("closes");
        };
        assert_eq!(texts(&sent), vec!["ROLLBACK"], "{status} {refused:?}");
        assert_eq!(
            steps(&mut w, &[(b'S', 0), (b'C', 0)], refused),
            vec![WrapStep::Drop, WrapStep::Drop],
            "nothing of the rollback is the client's"
        );
        assert_eq!(w.on_backend(b'Z', b'I', refused), WrapStep::Done);
    }
}

#[test]
fn after_a_change_locks_and_prepared_statements_go_once_the_block_is_rolled_back() {
    let mut w = TxWrap::default();
    w.forwarded(Mode::Own);
    steps(&mut w, &[(b'C', 0), (b'Z', b'T')], Refused::No);
    let WrapStep::Close(sent) = w.on_backend(b'Z', b'T', Refused::Changed) else {
        panic!("closes");
    };
    assert_eq!(texts(&sent), vec!["ROLLBACK", UNLOCK, DEALLOCATE, CLOSE]);
    let answers = [
        (b'C', 0),
        (b'Z', b'I'),
        (b'T', 0),
        (b'D', 0),
        (b'C', 0),
        (b'Z', b'I'),
        (b'C', 0),
        (b'Z', b'I'),
        (b'C', 0),
    ];
    assert_eq!(steps(&mut w, &answers, Refused::Changed), vec![WrapStep::Drop; 9]);
    assert_eq!(w.on_backend(b'Z', b'I', Refused::Changed), WrapStep::Done);
}

#[test]
fn in_the_clients_block_a_refused_result_fails_the_block() {
    let mut w = TxWrap::default();
    w.forwarded(Mode::Guarded);
    assert_eq!(w.on_backend(b'T', 0, Refused::Judged), WrapStep::Pass);
    let WrapStep::Close(sent) = w.on_backend(b'Z', b'T', Refused::Judged) else {
        panic!("fails the block");
    };
    assert_eq!(texts(&sent), vec![FAIL_BLOCK]);
    assert_eq!(
        w.on_backend(b'E', 0, Refused::Judged),
        WrapStep::Drop,
        "the marker's error"
    );
    assert_eq!(w.on_backend(b'Z', b'E', Refused::Judged), WrapStep::Done);
}

#[test]
fn in_the_clients_block_after_a_change_the_advisory_locks_go_first() {
    let mut w = TxWrap::default();
    w.forwarded(Mode::Guarded);
    let WrapStep::Close(sent) = w.on_backend(b'Z', b'T', Refused::Changed) else {
        panic!("fails the block");
    };
    assert_eq!(texts(&sent), vec![UNLOCK, DEALLOCATE, FAIL_BLOCK]);
    let answers = [
        (b'T', 0),
        (b'D', 0),
        (b'C', 0),
        (b'Z', b'T'),
        (b'C', 0),
        (b'Z', b'T'),
        (b'E', 0),
    ];
    assert_eq!(steps(&mut w, &answers, Refused::Changed), vec![WrapStep::Drop; 7]);
    assert_eq!(w.on_backend(b'Z', b'E', Refused::Changed), WrapStep::Done);
}

#[test]
fn a_release_that_fails_ends_the_session() {
    let mut w = TxWrap::default();
    w.forwarded(Mode::Own);
    steps(&mut w, &[(b'C', 0), (b'Z', b'T')], Refused::No);
    assert!(matches!(
        w.on_backend(b'Z', b'T', Refused::Changed),
        WrapStep::Close(_)
    ));
    // ROLLBACK's answer, then the unlock fails (EXECUTE revoked).
    let answers = [
        (b'C', 0),
        (b'Z', b'I'),
        (b'E', 0),
        (b'Z', b'I'),
        (b'C', 0),
        (b'Z', b'I'),
        (b'C', 0),
    ];
    assert_eq!(steps(&mut w, &answers, Refused::Changed), vec![WrapStep::Drop; 7]);
    assert_eq!(w.on_backend(b'Z', b'I', Refused::Changed), WrapStep::End);
}

#[test]
fn settings_reported_at_a_commit_are_the_clients() {
    let mut w = TxWrap::default();
    w.forwarded(Mode::Own);
    steps(&mut w, &[(b'C', 0), (b'Z', b'T'), (b'C', 0)], Refused::No);
    assert!(matches!(
        w.on_backend(b'Z', b'T', Refused::No),
        WrapStep::Close(_)
    ));
    assert_eq!(
        w.on_backend(b'S', 0, Refused::No),
        WrapStep::Pass,
        "the lexing watch sees it"
    );
}

#[test]
fn a_change_refused_where_timebox_cannot_end_the_transaction_ends_the_session() {
    for status in [b'I', b'E'] {
        let mut w = TxWrap::default();
        w.forwarded(Mode::Guarded);
        assert_eq!(w.on_backend(b'Z', status, Refused::Changed), WrapStep::End);
        assert!(!w.holding());
    }
}

#[test]
fn in_the_clients_block_nothing_is_sent_when_nothing_was_refused_or_no_block_is_open() {
    for (status, refused) in [
        (b'T', Refused::No),
        (b'I', Refused::Judged),
        (b'E', Refused::Judged),
    ] {
        let mut w = TxWrap::default();
        w.forwarded(Mode::Guarded);
        assert_eq!(w.on_backend(b'Z', status, refused), WrapStep::Done);
        assert!(!w.holding());
    }
}

#[test]
fn the_clients_copy_data_goes_on_while_a_wrapped_copy_from_stdin_runs() {
    let mut w = TxWrap::default();
    w.forwarded(Mode::Own);
    steps(&mut w, &[(b'C', 0), (b'Z', b'T')], Refused::No);
    assert!(w.holding());
    assert_eq!(w.on_backend(b'G', 0, Refused::No), WrapStep::Pass);
    assert!(!w.holding(), "CopyData, CopyDone go upstream");
    assert_eq!(w.on_backend(b'C', 0, Refused::No), WrapStep::Pass);
    let WrapStep::Close(sent) = w.on_backend(b'Z', b'T', Refused::No) else {
        panic!("commits");
    };
    assert_eq!(texts(&sent), vec!["COMMIT"]);
    assert!(w.holding(), "the next frames wait for the COMMIT");
    assert_eq!(w.on_backend(b'C', 0, Refused::No), WrapStep::Drop);
    assert_eq!(w.on_backend(b'Z', b'I', Refused::No), WrapStep::Done);
    assert!(!w.holding());
}

#[test]
fn during_a_wrapped_copy_only_its_data_goes() {
    let mut w = TxWrap::default();
    w.forwarded(Mode::Own);
    steps(&mut w, &[(b'C', 0), (b'Z', b'T'), (b'G', 0)], Refused::No);
    for tag in *b"dcf" {
        assert!(w.admits(Some(tag)), "{}", tag as char);
    }
    for tag in *b"PBEDQFCHS" {
        assert!(!w.admits(Some(tag)), "{} waits for the Query's end", tag as char);
    }
    w.client_forwarded(b'd');
    assert!(w.admits(Some(b'd')));
    w.client_forwarded(b'c');
    assert!(
        !w.admits(Some(b'd')),
        "after CopyDone nothing goes until the Query's end"
    );
    assert!(w.holding());
}

#[test]
fn frames_that_answer_no_query_of_timebox_end_the_session() {
    let mut w = TxWrap::default();
    w.forwarded(Mode::Own);
    steps(&mut w, &[(b'C', 0), (b'Z', b'T')], Refused::No);
    assert!(matches!(
        w.on_backend(b'Z', b'T', Refused::No),
        WrapStep::Close(_)
    ));
    assert_eq!(w.on_backend(b'1', 0, Refused::No), WrapStep::Drop);
    assert_eq!(w.on_backend(b'C', 0, Refused::No), WrapStep::Drop);
    assert_eq!(w.on_backend(b'Z', b'I', Refused::No), WrapStep::End);
}

#[test]
fn a_query_waits_for_what_was_sent_before_it() {
    let mut w = TxWrap::default();
    w.wait_for_idle();
    assert!(w.holding());
    assert!(w.idle());
    assert!(!w.holding());
    assert!(!w.idle(), "only once");
}

#[test]
fn other_sessions_notifications_are_never_taken_for_timebox_s_answers() {
    let mut w = TxWrap::default();
    w.forwarded(Mode::Own);
    assert_eq!(
        w.on_backend(b'A', 0, Refused::No),
        WrapStep::Pass,
        "before BEGIN's answer"
    );
    steps(&mut w, &[(b'C', 0), (b'Z', b'T')], Refused::No);
    assert!(matches!(
        w.on_backend(b'Z', b'T', Refused::Judged),
        WrapStep::Close(_)
    ));
    assert_eq!(w.on_backend(b'C', 0, Refused::Judged), WrapStep::Drop);
    assert_eq!(
        w.on_backend(b'A', 0, Refused::Judged),
        WrapStep::Pass,
        "after the rollback"
    );
    assert_eq!(w.on_backend(b'Z', b'I', Refused::Judged), WrapStep::Done);
}

/// s10: the lock block ahead of a Query in timebox's block failed (the catalog changed while the
/// locks were awaited): its answers are timebox's, the Query's `25P02` is replaced, and the
/// failed transaction is rolled back.
#[test]
fn a_failed_prelude_answers_the_query_and_rolls_back() {
    let mut w = TxWrap::default();
    w.forwarded(Mode::Own);
    assert!(w.opening());
    w.prelude_failed(Substitute::Changed);
    w.prelude_failed(Substitute::Error(BytesMut::from(&b"second"[..])));
    // BEGIN's CommandComplete, the block's error, the prelude's ReadyForQuery.
    assert_eq!(
        steps(&mut w, &[(b'C', 0), (b'E', 0), (b'Z', b'E')], Refused::No),
        vec![WrapStep::Drop; 3]
    );
    assert!(!w.opening());
    assert_eq!(
        w.on_backend(b'E', 0, Refused::No),
        WrapStep::Substitute(Substitute::Changed),
        "the first error counts"
    );
    let WrapStep::Close(sent) = w.on_backend(b'Z', b'E', Refused::No) else {
        panic!("rolled back");
    };
    assert_eq!(texts(&sent), vec!["ROLLBACK"]);
    assert_eq!(w.on_backend(b'C', 0, Refused::No), WrapStep::Drop);
    assert_eq!(w.on_backend(b'Z', b'I', Refused::No), WrapStep::Done);
}

/// s10: in the client's block the lock block goes alone; the client's block, failed by it, stays
/// the client's to end; a prelude that succeeded leaves the Query's frames as they are.
#[test]
fn in_the_clients_block_the_lock_block_goes_alone() {
    let mut w = TxWrap::default();
    w.forwarded(Mode::Locked { begin_warning: false });
    assert!(w.holding() && w.opening());
    assert_eq!(
        steps(&mut w, &[(b'C', 0), (b'Z', b'T')], Refused::No),
        vec![WrapStep::Drop; 2]
    );
    assert!(!w.expects_begin_warning());
    assert_eq!(
        w.on_backend(b'E', 0, Refused::No),
        WrapStep::Pass,
        "no prelude error: the Query's own"
    );
    assert_eq!(w.on_backend(b'Z', b'E', Refused::No), WrapStep::Done);
    // Failed: the Query's error replaced by the prelude's; the block is left failed.
    w.forwarded(Mode::Locked { begin_warning: false });
    let error = BytesMut::from(&b"E lock timeout"[..]);
    w.prelude_failed(Substitute::Error(error.clone()));
    assert_eq!(
        steps(&mut w, &[(b'E', 0), (b'Z', b'E')], Refused::No),
        vec![WrapStep::Drop; 2]
    );
    assert_eq!(
        w.on_backend(b'E', 0, Refused::No),
        WrapStep::Substitute(Substitute::Error(error))
    );
    assert_eq!(w.on_backend(b'Z', b'E', Refused::No), WrapStep::Done);
    assert!(!w.holding());
}

/// s10: a string opening with its own `BEGIN` has it sent ahead of the lock block; its copy's
/// warning is expected once, while the Query runs.
#[test]
fn a_strings_own_begin_warns_once() {
    let mut w = TxWrap::default();
    w.forwarded(Mode::Locked { begin_warning: true });
    assert!(!w.expects_begin_warning(), "not while the prelude answers");
    assert_eq!(
        steps(&mut w, &[(b'C', 0), (b'C', 0), (b'Z', b'T')], Refused::No),
        vec![WrapStep::Drop; 3]
    );
    assert!(w.expects_begin_warning());
    w.begin_warned();
    assert!(!w.expects_begin_warning());
    assert_eq!(
        w.on_backend(b'Z', b'T', Refused::No),
        WrapStep::Done,
        "the block is the client's"
    );
    w.forwarded(Mode::Guarded);
    assert!(!w.expects_begin_warning());
}
