use std::sync::atomic::Ordering;

use super::*;
use crate::config::MaskRule;
use crate::masking::freshness::CatalogFingerprint;
use crate::masking::MaskMethod;
use crate::policy::mask_shape::DependentView;
use crate::proxy::target_catalog::MaskEntry;

fn rule() -> MaskRule {
    MaskRule::customers_email(MaskMethod::Email)
}

/// The catalog with view `public.v` over plain data (`over_email`: over the masked column), read
/// with a fingerprint counting `rows`.
fn snapshot(over_email: bool, rows: i64) -> MaskSnapshot {
    let views = if over_email {
        vec![DependentView {
            schema: "public".into(),
            name: "v".into(),
            masked_column: "public.customers.email".into(),
            hidden_code: false,
        }]
    } else {
        Vec::new()
    };
    let mut s = MaskSnapshot::default();
    s.rules = vec![rule()];
    s.views = views;
    s.names = [("public", "customers"), ("public", "v")]
        .iter()
        .map(|(s, n)| (s.to_string(), n.to_string()))
        .collect();
    s.fingerprint = Some(CatalogFingerprint::counting(rows));
    s
}

fn context(snapshot: MaskSnapshot) -> MaskContext {
    MaskContext::support(Arc::new(MaskEntry::holding(Some(snapshot))))
}

/// A Query of `sql` checked, sent and answered without an error.
fn on_text(j: &mut MaskJudgements, m: &MaskContext, sql: &str) -> Result<(), String> {
    sent(j, m, sql)?;
    j.on_backend(BackendOutcome::Query { failed: false });
    Ok(())
}

/// A Query of `sql` checked and sent, not answered yet.
fn sent(j: &mut MaskJudgements, m: &MaskContext, sql: &str) -> Result<(), String> {
    let changes = j
        .on_text(m, sql, &crate::policy::classify(sql), false)
        .map_err(|d| d.reason)?;
    j.query_sent(changes);
    Ok(())
}

/// A Parse of `name` with `text` sent and completed.
fn parsed(j: &mut MaskJudgements, m: &MaskContext, name: &str, text: &str) {
    j.parse_sent(m, name, Some((text, &[])));
    j.on_backend(BackendOutcome::Parsed(name.into()));
}

#[test]
fn copies_of_the_catalog_are_compared_by_fingerprint() {
    let (a, b, c) = (snapshot(false, 1), snapshot(true, 1), snapshot(false, 2));
    assert!(same_catalog(Some(&a), Some(&b)), "read again, same fingerprint");
    assert!(!same_catalog(Some(&a), Some(&c)));
    let unprinted = MaskSnapshot::default();
    assert!(same_catalog(Some(&unprinted), Some(&unprinted)), "the same read");
    assert!(!same_catalog(Some(&unprinted), Some(&MaskSnapshot::default())));
    assert!(!same_catalog(Some(&a), Some(&unprinted)));
    assert!(same_catalog(None, None));
    assert!(!same_catalog(Some(&a), None));
}

/// Regression (s7 re-attack): `PREPARE p AS SELECT upper(x) FROM v` was checked while `v` read
/// plain data; the view was replaced to read the masked column, and `EXECUTE p` (which PostgreSQL
/// plans again on the new definition) ran unchecked, returning the e-mails upper-cased. Now its
/// text is checked again against the copy current when it runs.
#[test]
fn a_prepared_statement_is_checked_again_when_the_catalog_changed() {
    let m = context(snapshot(false, 1));
    let mut j = MaskJudgements::default();
    on_text(&mut j, &m, "PREPARE p AS SELECT upper(x) FROM v").unwrap();
    parsed(&mut j, &m, "s1", "SELECT upper(x) FROM v");
    on_text(&mut j, &m, "EXECUTE p").unwrap();
    j.bind(&m, "", "s1").unwrap();
    // Read again unchanged: nothing checked again (even a snapshot that would refuse it).
    m.entry.replace_snapshot(snapshot(true, 1));
    on_text(&mut j, &m, "EXECUTE p").unwrap();
    // Changed: the view now reads the masked column.
    m.entry.replace_snapshot(snapshot(true, 2));
    let denied = on_text(&mut j, &m, "EXECUTE p").unwrap_err();
    assert!(
        denied.contains("public.v") && denied.contains("public.customers.email"),
        "{denied}"
    );
    let denied = j.bind(&m, "", "s1").unwrap_err();
    assert!(denied.reason.contains("public.v"), "{}", denied.reason);
    // Changed back to plain data: checked again and allowed (PostgreSQL plans it again too).
    m.entry.replace_snapshot(snapshot(false, 3));
    on_text(&mut j, &m, "EXECUTE p").unwrap();
    // Deallocated or closed: no checked text, refused (fail closed).
    on_text(&mut j, &m, "DEALLOCATE p").unwrap();
    j.closed("s1");
    assert!(on_text(&mut j, &m, "EXECUTE p")
        .unwrap_err()
        .contains("no checked text for prepared statement \"p\""));
    assert!(j.run(&m, "s1").is_err());
}

/// Regression (s7 re-attack): a cursor is planned when its DECLARE runs — after DDL committed
/// while it waited for a lock — and FETCH ran it unchecked. Now a FETCH runs only a cursor declared
/// through timebox against the copy of the catalog still current.
#[test]
fn a_cursor_is_fetched_only_under_the_catalog_it_was_declared_with() {
    let m = context(snapshot(false, 1));
    let mut j = MaskJudgements::default();
    on_text(
        &mut j,
        &m,
        "BEGIN; DECLARE c CURSOR FOR SELECT x FROM v; FETCH 1 FROM c",
    )
    .unwrap();
    on_text(&mut j, &m, "FETCH ALL FROM c").unwrap();
    on_text(&mut j, &m, "MOVE ALL IN c").unwrap();
    let unseen = on_text(&mut j, &m, "FETCH ALL FROM \"<unnamed portal 1>\"").unwrap_err();
    assert!(unseen.contains("not declared through timebox"), "{unseen}");
    m.entry.replace_snapshot(snapshot(false, 1));
    on_text(&mut j, &m, "FETCH ALL FROM c").unwrap();
    // Any change since the DECLARE, even to a copy under which its text would pass.
    m.entry.replace_snapshot(snapshot(false, 2));
    let changed = on_text(&mut j, &m, "FETCH ALL FROM c").unwrap_err();
    assert!(
        changed.contains("changed since cursor \"c\" was declared"),
        "{changed}"
    );
    // MOVE runs the cursor's query too (s9 attack: it was judged by the cross-check alone).
    let moved = on_text(&mut j, &m, "MOVE ALL IN c").unwrap_err();
    assert!(
        moved.contains("changed since cursor \"c\" was declared"),
        "{moved}"
    );
    // Closed and declared again: fetched.
    on_text(&mut j, &m, "CLOSE c").unwrap();
    on_text(&mut j, &m, "DECLARE c CURSOR FOR SELECT x FROM v").unwrap();
    on_text(&mut j, &m, "FETCH ALL FROM c").unwrap();
    // A DECLARE, PREPARE, CLOSE or DEALLOCATE sent as Parse is refused (s8 second re-attack: it
    // runs at an Execute whose answer is not matched to it).
    for sql in [
        "DECLARE d CURSOR FOR SELECT x FROM v",
        "PREPARE q AS SELECT 1",
        "CLOSE c",
        "DEALLOCATE ALL",
    ] {
        let refused = j
            .on_text(&m, sql, &crate::policy::classify(sql), true)
            .unwrap_err();
        assert!(
            refused.reason.contains("only as a simple Query"),
            "{sql}: {}",
            refused.reason
        );
    }
    assert!(j
        .on_text(
            &m,
            "FETCH 1 FROM c",
            &crate::policy::classify("FETCH 1 FROM c"),
            true
        )
        .is_ok());
}

/// Nothing of a refused text is recorded: it does not run.
#[test]
fn a_refused_text_records_nothing() {
    let m = context(snapshot(false, 1));
    let mut j = MaskJudgements::default();
    assert!(on_text(
        &mut j,
        &m,
        "DECLARE e CURSOR FOR SELECT 1; PREPARE q AS SELECT 1; FETCH 1 FROM nope"
    )
    .is_err());
    assert!(on_text(&mut j, &m, "FETCH 1 FROM e").is_err());
    assert!(on_text(&mut j, &m, "EXECUTE q").is_err());
    // Declared and fetched in one text, prepared and executed in one text.
    on_text(&mut j, &m, "DECLARE e CURSOR FOR SELECT 1; FETCH 1 FROM e").unwrap();
    on_text(&mut j, &m, "PREPARE q AS SELECT 1; EXECUTE q").unwrap();
    on_text(&mut j, &m, "EXECUTE q").unwrap();
}

/// While the snapshot could not be confirmed, nothing runs (Bind included: it has no text of its
/// own to check).
#[test]
fn an_unconfirmed_snapshot_refuses_executions_and_fetches() {
    let m = context(snapshot(false, 1));
    let mut j = MaskJudgements::default();
    on_text(&mut j, &m, "DECLARE c CURSOR FOR SELECT 1; PREPARE p AS SELECT 1").unwrap();
    m.unconfirmed.store(true, Ordering::Release);
    for sql in ["EXECUTE p", "FETCH 1 FROM c"] {
        let denied = on_text(&mut j, &m, sql).unwrap_err();
        assert!(denied.contains("could not confirm"), "{sql}: {denied}");
    }
    assert!(j.run(&m, "p").is_err());
}

/// Regression (s8 re-attack): SQL cursors and protocol portals share one namespace, and a cursor
/// declared while a view was being replaced was read with Describe and Execute of a portal of its
/// name, never checked. A portal this session did not bind is read under the rules of `FETCH`.
#[test]
fn a_portal_no_bind_created_is_read_as_a_cursor() {
    let m = context(snapshot(false, 1));
    let mut j = MaskJudgements::default();
    parsed(&mut j, &m, "s", "SELECT 1");
    j.bind(&m, "p", "s").unwrap();
    j.use_portal(&m, "p").unwrap();
    let unseen = j.use_portal(&m, "c").unwrap_err();
    assert!(
        unseen.reason.contains("not declared through timebox"),
        "{}",
        unseen.reason
    );
    on_text(&mut j, &m, "DECLARE c CURSOR WITH HOLD FOR SELECT x FROM v").unwrap();
    j.use_portal(&m, "c").unwrap();
    m.entry.replace_snapshot(snapshot(false, 2));
    let changed = j.use_portal(&m, "c").unwrap_err();
    assert!(
        changed.reason.contains("changed since cursor \"c\""),
        "{}",
        changed.reason
    );
    // A bound portal whose name a cursor took since: the cursor's rules.
    on_text(&mut j, &m, "DECLARE p CURSOR WITH HOLD FOR SELECT 1").unwrap();
    m.entry.replace_snapshot(snapshot(false, 3));
    assert!(j.use_portal(&m, "p").is_err());
    j.closed_portal("p");
    assert!(j.use_portal(&m, "p").is_err(), "still the cursor");
}

/// Regression (s8 re-attack): a `PREPARE` or `DECLARE` of a name the session held, which PostgreSQL
/// refuses (42P05, 42P03), replaced timebox's judgement of the object PostgreSQL kept; so did a
/// Parse PostgreSQL never ran (skipped after an error in its batch) and a text in a Query that
/// failed. Such names are refused, and judgements are kept only once PostgreSQL answered.
#[test]
fn judgements_are_kept_only_for_what_postgresql_did() {
    let m = context(snapshot(false, 1));
    let mut j = MaskJudgements::default();
    on_text(&mut j, &m, "PREPARE p AS SELECT upper(x) FROM v").unwrap();
    let twice = on_text(&mut j, &m, "PREPARE p AS SELECT 1").unwrap_err();
    assert!(twice.contains("prepared statement \"p\" exists"), "{twice}");
    on_text(&mut j, &m, "BEGIN; DECLARE c CURSOR FOR SELECT x FROM v").unwrap();
    let twice = on_text(&mut j, &m, "DECLARE c CURSOR FOR SELECT 1").unwrap_err();
    assert!(twice.contains("cursor \"c\" exists"), "{twice}");
    // A Query that failed: nothing it prepared or declared is kept.
    sent(&mut j, &m, "PREPARE q AS SELECT 1; DECLARE d CURSOR FOR SELECT 1").unwrap();
    j.on_backend(BackendOutcome::Query { failed: true });
    assert!(on_text(&mut j, &m, "EXECUTE q").is_err());
    assert!(on_text(&mut j, &m, "FETCH 1 FROM d").is_err());
    // Not answered yet: not kept yet (a pipelined FETCH of it is refused).
    sent(&mut j, &m, "DECLARE e CURSOR FOR SELECT 1").unwrap();
    assert!(j.fetch(&m, "e").is_err());
    j.on_backend(BackendOutcome::Query { failed: false });
    j.fetch(&m, "e").unwrap();
    // Parses: kept at ParseComplete; a failed or skipped one leaves the old judgement.
    parsed(&mut j, &m, "", "SELECT upper(x) FROM v");
    j.parse_sent(&m, "", Some(("SELECT 1", &[])));
    j.on_backend(BackendOutcome::ParseFailed("".into()));
    m.entry.replace_snapshot(snapshot(true, 2));
    let bound = j.bind(&m, "", "");
    assert!(bound.is_err(), "the old unnamed statement is judged again");
    assert!(j.parse_allowed(&m, "s9").is_ok());
    parsed(&mut j, &m, "s9", "SELECT 1");
    assert!(
        j.parse_allowed(&m, "s9").is_err(),
        "a named statement that exists"
    );
    // A refused Parse's marker (unnamed) answers its place in the queue.
    j.parse_sent(&m, "s10", None);
    j.parse_sent(&m, "s11", Some(("SELECT 1", &[])));
    j.on_backend(BackendOutcome::ParseFailed("".into()));
    j.on_backend(BackendOutcome::Parsed("s11".into()));
    assert!(j.parse_allowed(&m, "s11").is_err());
    assert!(j.parse_allowed(&m, "s10").is_ok());
}

/// Cursors without HOLD end with their transaction; CLOSE ends any.
#[test]
fn cursors_end_with_their_transaction_unless_held() {
    let m = context(snapshot(false, 1));
    let mut j = MaskJudgements::default();
    on_text(
        &mut j,
        &m,
        "BEGIN; DECLARE c CURSOR FOR SELECT 1; DECLARE h CURSOR WITH HOLD FOR SELECT 1",
    )
    .unwrap();
    j.on_backend(BackendOutcome::Ready(b'T'));
    on_text(&mut j, &m, "FETCH 1 FROM c").unwrap();
    on_text(&mut j, &m, "COMMIT").unwrap();
    j.on_backend(BackendOutcome::Ready(b'I'));
    assert!(on_text(&mut j, &m, "FETCH 1 FROM c").is_err());
    on_text(&mut j, &m, "FETCH 1 FROM h").unwrap();
    on_text(&mut j, &m, "BEGIN; DECLARE c CURSOR FOR SELECT 1").unwrap();
    on_text(&mut j, &m, "CLOSE ALL").unwrap();
    assert!(on_text(&mut j, &m, "FETCH 1 FROM h").is_err());
    on_text(&mut j, &m, "DECLARE c CURSOR FOR SELECT 1").unwrap();
}

/// A Bind pipelined after its Parse (every driver's batch) runs the Parse's text if it succeeds,
/// or the statement held before if it fails or is skipped: both are judged.
#[test]
fn a_bind_after_a_parse_not_answered_yet_judges_both_texts() {
    let m = context(snapshot(false, 1));
    let mut j = MaskJudgements::default();
    j.parse_sent(&m, "", Some(("SELECT 1", &[])));
    j.bind(&m, "", "").unwrap();
    j.on_backend(BackendOutcome::Parsed("".into()));
    j.parse_sent(&m, "", Some(("SELECT upper(x) FROM v", &[])));
    j.on_backend(BackendOutcome::Parsed("".into()));
    m.entry.replace_snapshot(snapshot(true, 2));
    // The held statement reads the replaced view: a Parse of a harmless text does not hide it.
    j.parse_sent(&m, "", Some(("SELECT 1", &[])));
    assert!(j.bind(&m, "", "").is_err());
    j.on_backend(BackendOutcome::Parsed("".into()));
    j.bind(&m, "", "").unwrap();
}

/// A Query that failed frees what it closes or deallocates (a CLOSE of a cursor gone upstream,
/// 34000): forgetting a name only refuses more.
#[test]
fn a_failed_query_still_frees_what_it_closes() {
    let m = context(snapshot(false, 1));
    let mut j = MaskJudgements::default();
    on_text(
        &mut j,
        &m,
        "DECLARE h CURSOR WITH HOLD FOR SELECT 1; PREPARE p AS SELECT 1",
    )
    .unwrap();
    sent(&mut j, &m, "CLOSE h; DEALLOCATE p").unwrap();
    j.on_backend(BackendOutcome::Query { failed: true });
    assert!(
        on_text(&mut j, &m, "FETCH 1 FROM h").is_err(),
        "forgotten: refused"
    );
    assert!(on_text(&mut j, &m, "EXECUTE p").is_err());
    on_text(&mut j, &m, "DECLARE h CURSOR WITH HOLD FOR SELECT 1").unwrap();
    on_text(&mut j, &m, "PREPARE p AS SELECT 1").unwrap();
}

/// Regression (s11 sixth attack): the relations the lock block holds for a Bind are those of the
/// statement PostgreSQL will run — the one held and any Parse of that name not answered yet —
/// never those of a Parse the server skipped or refused.
#[test]
fn lock_relations_are_those_of_the_statement_the_server_holds() {
    let m = context(snapshot(false, 1));
    let mut j = MaskJudgements::default();
    let v = crate::policy::classify::Relation {
        schema: Some("public".into()),
        name: "v".into(),
    };
    let w = crate::policy::classify::Relation {
        schema: None,
        name: "w".into(),
    };
    j.parse_sent(&m, "", Some(("SELECT x FROM public.v", std::slice::from_ref(&v))));
    j.on_backend(BackendOutcome::Parsed("".into()));
    assert_eq!(j.relations(""), vec![v.clone()]);
    // Pending: either may run.
    j.parse_sent(&m, "", Some(("SELECT x FROM w", std::slice::from_ref(&w))));
    assert_eq!(j.relations(""), vec![w.clone(), v.clone()]);
    // Skipped after an error: the old one stays.
    j.on_backend(BackendOutcome::ParseFailed("".into()));
    assert_eq!(j.relations(""), vec![v.clone()]);
    j.parse_sent(&m, "", Some(("SELECT 1", &[])));
    j.on_backend(BackendOutcome::Parsed("".into()));
    assert!(j.relations("").is_empty());
    // A PREPARE of a name held is refused before it is sent, and changes nothing.
    sent(&mut j, &m, "PREPARE p AS SELECT x FROM public.v").unwrap();
    j.on_backend(BackendOutcome::Query { failed: false });
    assert!(sent(&mut j, &m, "PREPARE p AS SELECT 1").is_err());
    assert_eq!(j.relations("p"), vec![v]);
    assert!(j.relations("nothing").is_empty());
}
