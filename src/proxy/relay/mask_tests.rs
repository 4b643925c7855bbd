//! Unit tests of [`super`]: backend frames fed in protocol order, no socket.

use bytes::{BufMut, BytesMut};

use super::*;
use crate::config::MaskRule;
use crate::masking::catalog::MaskSnapshot;

const CUSTOMERS: u32 = 16400;

fn snapshot() -> MaskSnapshot {
    let rule = MaskRule::customers_email(MaskMethod::Email);
    let row = |v: &[&str]| v.iter().map(|s| Some(s.to_string())).collect::<Vec<_>>();
    let attrs = vec![
        row(&["0", "16400", "public", "customers", "1", "f"]),
        row(&["0", "16400", "public", "customers", "2", "t"]),
    ];
    MaskSnapshot::from_rows(
        &[rule],
        &[attrs, vec![], vec![row(&["16400", "public", "customers"])]],
    )
    .unwrap()
}

fn mask(snapshot: Option<MaskSnapshot>) -> ResultMask {
    let entry = Arc::new(MaskEntry::holding(snapshot));
    ResultMask::new(entry, MaskKey::derive(&[1; 32]), "support")
}

fn frame(tag: u8, body: &[u8]) -> BytesMut {
    let mut f = BytesMut::new();
    f.put_u8(tag);
    f.put_u32(body.len() as u32 + 4);
    f.put_slice(body);
    f
}

/// RowDescription of (name, table OID, attnum, type OID) columns, format 0.
fn row_description(cols: &[(&str, u32, i16, u32)]) -> BytesMut {
    let mut b = BytesMut::new();
    b.put_i16(cols.len() as i16);
    for (name, table, attnum, ty) in cols {
        b.put_slice(name.as_bytes());
        b.put_u8(0);
        b.put_u32(*table);
        b.put_i16(*attnum);
        b.put_u32(*ty);
        b.put_i16(-1);
        b.put_i32(-1);
        b.put_i16(0);
    }
    frame(b'T', &b)
}

fn data_row(values: &[&[u8]]) -> BytesMut {
    let mut b = BytesMut::new();
    b.put_i16(values.len() as i16);
    for v in values {
        b.put_i32(v.len() as i32);
        b.put_slice(v);
    }
    frame(b'D', &b)
}

fn sent(m: &mut ResultMask, tag: u8, body: &[u8]) {
    m.on_frontend(tag, &frame(tag, body));
}

/// The values of the row `m` rewrote (`step` must be [`MaskStep::Replace`]).
fn values(m: &ResultMask, step: MaskStep) -> Vec<Vec<u8>> {
    assert_eq!(step, MaskStep::Replace, "expected a rewritten row");
    let f = m.replacement();
    let mut out = Vec::new();
    let mut at = 7;
    while at < f.len() {
        let len = i32::from_be_bytes(f[at..at + 4].try_into().unwrap()) as usize;
        out.push(f[at + 4..at + 4 + len].to_vec());
        at += 4 + len;
    }
    out
}

#[test]
fn a_simple_query_result_is_masked_by_its_row_description() {
    let mut m = mask(Some(snapshot()));
    sent(&mut m, b'Q', b"SELECT id, email FROM customers\0");
    let t = row_description(&[("id", CUSTOMERS, 1, 23), ("email", CUSTOMERS, 2, 25)]);
    assert!(matches!(m.on_backend(b'T', &t), MaskStep::Replace));
    let step = m.on_backend(b'D', &data_row(&[b"7", b"alice@example.com"]));
    let v = values(&m, step);
    assert_eq!(v, vec![b"7".to_vec(), b"***@example.com".to_vec()]);
    assert_eq!(m.on_backend(b'C', &frame(b'C', b"SELECT 1\0")), MaskStep::Keep);
    assert_eq!(m.on_backend(b'Z', &frame(b'Z', b"I")), MaskStep::Keep);
    // The next query's unmasked result passes untouched.
    sent(&mut m, b'Q', b"SELECT 1\0");
    assert_eq!(
        m.on_backend(b'T', &row_description(&[("x", 0, 0, 23)])),
        MaskStep::Keep
    );
    assert_eq!(m.on_backend(b'D', &data_row(&[b"1"])), MaskStep::Keep);
}

#[test]
fn an_extended_execute_uses_the_described_statement_with_the_binds_formats() {
    let mut m = mask(Some(snapshot()));
    // tokio-postgres: prepare (Parse, Describe S, Sync), then Bind with binary results, Execute, Sync.
    sent(&mut m, b'P', b"s1\0SELECT email FROM customers\0\0\0");
    sent(&mut m, b'D', b"Ss1\0");
    sent(&mut m, b'S', b"");
    assert_eq!(m.on_backend(b'1', &frame(b'1', b"")), MaskStep::Keep);
    assert_eq!(m.on_backend(b't', &frame(b't', b"\0\0")), MaskStep::Keep);
    let t = row_description(&[("email", CUSTOMERS, 2, 1043)]);
    assert!(matches!(m.on_backend(b'T', &t), MaskStep::Replace));
    m.on_backend(b'Z', &frame(b'Z', b"I"));
    // Bind "" s1: no parameters, one result format: binary.
    sent(&mut m, b'B', b"\0s1\0\0\0\0\0\0\x01\0\x01");
    sent(&mut m, b'E', b"\0\0\0\0\0");
    sent(&mut m, b'S', b"");
    m.on_backend(b'2', &frame(b'2', b""));
    let step = m.on_backend(b'D', &data_row(&[b"bob@shop.test"]));
    let v = values(&m, step);
    assert_eq!(v, vec![b"***@shop.test".to_vec()]);
    assert_eq!(m.on_backend(b'C', &frame(b'C', b"SELECT 1\0")), MaskStep::Keep);
    m.on_backend(b'Z', &frame(b'Z', b"I"));
    assert!(m.pending.is_empty());
}

#[test]
fn rows_whose_columns_cannot_be_established_are_never_forwarded() {
    // A relation the snapshot does not know (created after it): error, rows dropped, re-read asked.
    let mut m = mask(Some(snapshot()));
    sent(&mut m, b'Q', b"SELECT * FROM new_table\0");
    m.on_backend(b'T', &row_description(&[("secret", 99999, 1, 25)]));
    assert!(matches!(
        m.on_backend(b'D', &data_row(&[b"x"])),
        MaskStep::Fail(_)
    ));
    assert_eq!(m.on_backend(b'D', &data_row(&[b"y"])), MaskStep::Drop);
    assert_eq!(m.on_backend(b'C', &frame(b'C', b"SELECT 2\0")), MaskStep::Drop);
    assert!(m.wants_refresh);
    m.on_backend(b'Z', &frame(b'Z', b"I"));
    // A computed column of a masked table (attnum 0).
    sent(&mut m, b'Q', b"SELECT ...\0");
    m.on_backend(b'T', &row_description(&[("c", CUSTOMERS, 0, 25)]));
    assert!(matches!(
        m.on_backend(b'D', &data_row(&[b"x"])),
        MaskStep::Fail(_)
    ));
    // No snapshot at all: a table column fails, a computed constant passes.
    let mut m = mask(None);
    sent(&mut m, b'Q', b"SELECT\0");
    m.on_backend(b'T', &row_description(&[("id", CUSTOMERS, 1, 23)]));
    assert!(matches!(
        m.on_backend(b'D', &data_row(&[b"1"])),
        MaskStep::Fail(_)
    ));
    m.on_backend(b'C', &frame(b'C', b"SELECT 1\0"));
    m.on_backend(b'Z', &frame(b'Z', b"I"));
    sent(&mut m, b'Q', b"SELECT 1\0");
    assert_eq!(
        m.on_backend(b'T', &row_description(&[("x", 0, 0, 23)])),
        MaskStep::Keep
    );
    assert_eq!(m.on_backend(b'D', &data_row(&[b"1"])), MaskStep::Keep);
}

#[test]
fn an_execute_without_a_description_or_of_a_reparsed_statement_fails() {
    let mut m = mask(Some(snapshot()));
    // Described once…
    sent(&mut m, b'P', b"\0SELECT id FROM customers\0\0\0");
    sent(&mut m, b'D', b"S\0");
    sent(&mut m, b'S', b"");
    m.on_backend(b'1', &frame(b'1', b""));
    m.on_backend(b'T', &row_description(&[("id", CUSTOMERS, 1, 23)]));
    m.on_backend(b'Z', &frame(b'Z', b"I"));
    // …then the unnamed statement is parsed again with other columns, never described.
    sent(&mut m, b'P', b"\0SELECT email FROM customers\0\0\0");
    sent(&mut m, b'B', b"\0\0\0\0\0\0\0\0");
    sent(&mut m, b'E', b"\0\0\0\0\0");
    sent(&mut m, b'S', b"");
    m.on_backend(b'1', &frame(b'1', b""));
    m.on_backend(b'2', &frame(b'2', b""));
    assert!(matches!(
        m.on_backend(b'D', &data_row(&[b"alice@example.com"])),
        MaskStep::Fail(_)
    ));
}

#[test]
fn an_error_skips_to_sync_like_the_server() {
    let mut m = mask(Some(snapshot()));
    sent(&mut m, b'P', b"\0SELECT bad\0\0\0");
    sent(&mut m, b'B', b"\0\0\0\0\0\0\0\0");
    sent(&mut m, b'D', b"P\0");
    sent(&mut m, b'E', b"\0\0\0\0\0");
    sent(&mut m, b'S', b"");
    assert_eq!(m.on_backend(b'E', &frame(b'E', b"\0")), MaskStep::Keep);
    assert_eq!(m.pending.front(), Some(&Expect::Sync));
    m.on_backend(b'Z', &frame(b'Z', b"I"));
    assert!(m.pending.is_empty());
}

#[test]
fn error_details_are_not_forwarded_to_masked_roles() {
    let mut m = mask(Some(snapshot()));
    sent(&mut m, b'Q', b"UPDATE customers SET id = NULL\0");
    let error = frame(
        b'E',
        b"SERROR\0C23502\0Mnull value in column \"id\"\0DFailing row contains (null, alice@example.com).\0\0",
    );
    assert_eq!(m.on_backend(b'E', &error), MaskStep::Keep, "bookkeeping only");
    let f = without_detail(&error).expect("the detail is removed");
    let text = String::from_utf8_lossy(&f);
    assert!(!text.contains("alice@example.com"), "{text}");
    assert!(
        text.contains("C23502") && text.contains("null value in column"),
        "{text}"
    );
    let mut parsed = BytesMut::from(&f[..]);
    assert!(postgres_protocol::message::backend::Message::parse(&mut parsed)
        .unwrap()
        .is_some());
    assert_eq!(without_detail(&frame(b'E', b"SERROR\0Mno detail\0\0")), None);
    assert_eq!(
        without_detail(&frame(b'E', b"SERROR\0Dunterminated")),
        None,
        "malformed"
    );
}

#[test]
fn fetch_and_execute_are_shaped_at_run_time() {
    for sql in [
        "FETCH ALL FROM cur",
        "  /* x */ fetch 2 from cur",
        "EXECUTE pp",
        "execute pp(1, 'a')",
        "FETCH ALL FROM", // unparseable: fail closed
    ] {
        assert!(shaped_at_run_time(sql), "{sql}");
    }
    for sql in [
        "SELECT email FROM customers",
        "SELECT 'fetch', execute FROM t",
        "EXPLAIN EXECUTE pp",
        "DECLARE c CURSOR FOR SELECT 1",
        "MOVE ALL IN cur", // never returns rows
    ] {
        assert!(!shaped_at_run_time(sql), "{sql}");
    }
}

#[test]
fn an_extended_fetch_never_trusts_a_describe() {
    // Described before its cursor exists (NoData), then bound and executed.
    let mut m = mask(Some(snapshot()));
    sent(&mut m, b'P', b"f\0FETCH ALL FROM cur\0\0\0");
    sent(&mut m, b'D', b"Sf\0");
    sent(&mut m, b'S', b"");
    m.on_backend(b'1', &frame(b'1', b""));
    m.on_backend(b'n', &frame(b'n', b""));
    m.on_backend(b'Z', &frame(b'Z', b"I"));
    sent(&mut m, b'B', b"\0f\0\0\0\0\0\0\0");
    sent(&mut m, b'E', b"\0\0\0\0\0");
    sent(&mut m, b'S', b"");
    m.on_backend(b'2', &frame(b'2', b""));
    let MaskStep::Fail(e) = m.on_backend(b'D', &data_row(&[b"alice@example.com"])) else {
        panic!("rows of an extended FETCH were forwarded");
    };
    assert_eq!(e.code, "42501");
    assert!(e.message.contains("\"support\"") && e.message.contains("public.customers.email"));
    assert_eq!(m.on_backend(b'D', &data_row(&[b"bob@shop.test"])), MaskStep::Drop);
    m.on_backend(b'C', &frame(b'C', b"FETCH 2\0"));
    m.on_backend(b'Z', &frame(b'Z', b"T"));
    // Described by a portal Describe over a plain column: still not trusted.
    sent(&mut m, b'B', b"p\0f\0\0\0\0\0\0\0");
    sent(&mut m, b'D', b"Pp\0");
    sent(&mut m, b'E', b"p\0\0\0\0\0");
    sent(&mut m, b'S', b"");
    m.on_backend(b'2', &frame(b'2', b""));
    m.on_backend(b'T', &row_description(&[("id", CUSTOMERS, 1, 23)]));
    assert!(matches!(
        m.on_backend(b'D', &data_row(&[b"alice@example.com"])),
        MaskStep::Fail(_)
    ));
}

#[test]
fn rows_of_a_result_described_as_nodata_are_not_forwarded() {
    let mut m = mask(Some(snapshot()));
    sent(&mut m, b'P', b"s\0SELECT 1\0\0\0");
    sent(&mut m, b'D', b"Ss\0");
    sent(&mut m, b'B', b"\0s\0\0\0\0\0\0\0");
    sent(&mut m, b'E', b"\0\0\0\0\0");
    sent(&mut m, b'S', b"");
    m.on_backend(b'1', &frame(b'1', b""));
    m.on_backend(b'n', &frame(b'n', b""));
    m.on_backend(b'2', &frame(b'2', b""));
    assert!(matches!(
        m.on_backend(b'D', &data_row(&[b"alice@example.com"])),
        MaskStep::Fail(_)
    ));
}

#[test]
fn commands_that_reuse_portal_or_statement_names_are_seen_in_any_spelling() {
    use super::reshapes_names;
    for sql in [
        "CLOSE g",
        "close ALL",
        "DECLARE c CURSOR FOR SELECT 1",
        "PREPARE p AS SELECT 1",
        "deallocate p",
        "DISCARD ALL",
        "BEGIN; Declare x CURSOR WITH HOLD FOR SELECT email FROM customers",
    ] {
        assert!(reshapes_names(sql), "{sql}");
    }
    for sql in [
        "SELECT email FROM customers",
        "FETCH ALL FROM g",
        "MOVE NEXT IN g",
    ] {
        assert!(!reshapes_names(sql), "{sql}");
    }
}

/// A mask whose entry knows the masked columns' names (as a catalog read gives them).
fn named_mask() -> ResultMask {
    let names = [((CUSTOMERS, 2), "public.customers.email".to_owned())].into();
    let entry = Arc::new(MaskEntry::holding_named(snapshot(), names));
    ResultMask::new(entry, MaskKey::derive(&[1; 32]), "support")
}

/// As the relay does: the frame's step, and what was sent counted for the audit record.
fn forward(m: &mut ResultMask, tag: u8, f: &[u8]) -> MaskStep {
    let step = m.on_backend(tag, f);
    match &step {
        MaskStep::Keep => m.sent(tag, f.len()),
        MaskStep::Replace => m.sent(tag, m.replacement().len()),
        _ => {}
    }
    step
}

fn email_masked() -> Option<Vec<MaskedColumnReturned>> {
    Some(vec![MaskedColumnReturned {
        column: "public.customers.email".into(),
        method: "email".into(),
    }])
}

/// s6 (issue 15 item 4): the outcome record of a masked result names its masked columns (from
/// the RowDescription, by catalog identity) and counts the rows and bytes as sent (masked), for
/// a simple Query and for each execution of a prepared statement alike.
#[test]
fn what_a_result_returned_names_its_masked_columns_for_query_and_each_bind_execution() {
    let mut m = named_mask();
    sent(&mut m, b'Q', b"SELECT id, email AS e FROM customers\0");
    let t = row_description(&[("id", CUSTOMERS, 1, 23), ("e", CUSTOMERS, 2, 25)]);
    forward(&mut m, b'T', &t);
    let step = forward(&mut m, b'D', &data_row(&[b"7", b"alice@example.com"]));
    assert_eq!(step, MaskStep::Replace, "masked row expected");
    let row = m.replacement().to_vec();
    forward(&mut m, b'D', &data_row(&[b"8", b"bob@shop.test"]));
    // The quota stage asks just before the CommandComplete.
    let r = m.take_returned();
    assert_eq!(r.masked, email_masked(), "an alias does not hide the column");
    assert_eq!(r.rows, 2);
    assert!(
        r.bytes >= row.len() as u64 * 2 - 4 && r.bytes < 100,
        "{}",
        r.bytes
    );
    forward(&mut m, b'C', &frame(b'C', b"SELECT 2\0"));
    forward(&mut m, b'Z', &frame(b'Z', b"I"));
    // A plain result of the same session: no masked columns.
    sent(&mut m, b'Q', b"SELECT 1\0");
    forward(&mut m, b'T', &row_description(&[("x", 0, 0, 23)]));
    forward(&mut m, b'D', &data_row(&[b"1"]));
    let plain = m.take_returned();
    assert_eq!((plain.masked, plain.rows), (None, 1));
    forward(&mut m, b'C', &frame(b'C', b"SELECT 1\0"));
    forward(&mut m, b'Z', &frame(b'Z', b"I"));
    // A prepared statement described once, executed twice: each execution names the column.
    sent(&mut m, b'P', b"s1\0SELECT email FROM customers\0\0\0");
    sent(&mut m, b'D', b"Ss1\0");
    sent(&mut m, b'S', b"");
    forward(&mut m, b'1', &frame(b'1', b""));
    forward(&mut m, b't', &frame(b't', b"\0\0"));
    forward(&mut m, b'T', &row_description(&[("email", CUSTOMERS, 2, 25)]));
    forward(&mut m, b'Z', &frame(b'Z', b"I"));
    for _ in 0..2 {
        sent(&mut m, b'B', b"\0s1\0\0\0\0\0\0\0");
        sent(&mut m, b'E', b"\0\0\0\0\0");
        sent(&mut m, b'S', b"");
        forward(&mut m, b'2', &frame(b'2', b""));
        assert!(matches!(
            forward(&mut m, b'D', &data_row(&[b"alice@example.com"])),
            MaskStep::Replace
        ));
        let r = m.take_returned();
        assert_eq!((r.masked, r.rows), (email_masked(), 1));
        forward(&mut m, b'C', &frame(b'C', b"SELECT 1\0"));
        forward(&mut m, b'Z', &frame(b'Z', b"I"));
    }
}

#[test]
fn rows_the_masking_refuses_are_not_counted_as_returned() {
    // No snapshot: a table's column cannot be established, its rows are not sent.
    let mut m = mask(None);
    sent(&mut m, b'Q', b"SELECT email FROM customers\0");
    forward(&mut m, b'T', &row_description(&[("email", CUSTOMERS, 2, 25)]));
    assert!(matches!(
        forward(&mut m, b'D', &data_row(&[b"alice@example.com"])),
        MaskStep::Fail(_)
    ));
    assert_eq!(forward(&mut m, b'D', &data_row(&[b"x"])), MaskStep::Drop);
    assert!(
        m.failing(),
        "its CommandComplete is dropped: the statement failed"
    );
    let r = m.take_returned();
    assert_eq!((r.rows, r.bytes, r.masked), (0, 0, None));
}

/// Issue 15 item 5: a role without masks or quotas pays nothing per row — the outbox notes only
/// the frames the relay always reads, never a RowDescription or DataRow, and a row is written
/// as soon as any byte of it arrives; the bytes reach the client as the upstream sent them.
#[test]
fn a_role_without_masks_or_quotas_has_its_rows_forwarded_untouched() {
    let mut stream = row_description(&[("email", CUSTOMERS, 2, 25)]);
    for _ in 0..3 {
        stream.extend_from_slice(&data_row(&[b"alice@example.com"]));
    }
    stream.extend_from_slice(&frame(b'C', b"SELECT 3\0"));
    stream.extend_from_slice(&frame(b'Z', b"I"));
    let noted = |quota: bool, masks: bool| {
        let mut out = ClientOutbox::new();
        set_frame_hooks(&mut out, quota, masks);
        let mut held = Vec::new();
        out.pending.extend_from_slice(&stream);
        out.track_read(0, stream.len(), &mut held).unwrap();
        (held.iter().map(|(tag, _, _)| *tag).collect::<Vec<u8>>(), out)
    };
    let (tags, out) = noted(false, false);
    assert_eq!(
        tags, b"CZ",
        "only CommandComplete and ReadyForQuery are looked at"
    );
    assert_eq!(&out.pending[..], &stream[..], "unchanged");
    assert_eq!(out.next_chunk().map(|(c, _)| c.len()), Some(stream.len()));
    // Half a row: written at once, nothing waits for the rest of it.
    let mut out = ClientOutbox::new();
    set_frame_hooks(&mut out, false, false);
    let half = 5 + stream.len() / 2;
    out.pending.extend_from_slice(&stream[..half]);
    out.track_read(0, half, &mut Vec::new()).unwrap();
    assert_eq!(out.hold_point(), None);
    // For contrast: a masked role's relay looks at every frame and holds rows until whole.
    assert_eq!(noted(false, true).0, b"TDDDCZ");
    assert_eq!(noted(true, false).0, b"TDDDCZ");
}

/// Regression (s6 attack): a statement described while a view was harmless, bound after timebox
/// read the catalog again (the view replaced outside timebox to return masked values), must not
/// have its rows judged by the old description.
#[test]
fn descriptions_from_before_a_catalog_re_read_are_stale() {
    let entry = Arc::new(MaskEntry::holding(Some(snapshot())));
    let mut m = ResultMask::new(entry.clone(), MaskKey::derive(&[1; 32]), "support");
    sent(&mut m, b'P', b"s1\0SELECT id FROM customers\0\0\0");
    sent(&mut m, b'D', b"Ss1\0");
    sent(&mut m, b'S', b"");
    m.on_backend(b'1', &frame(b'1', b""));
    m.on_backend(b't', &frame(b't', b"\0\0"));
    m.on_backend(b'T', &row_description(&[("id", CUSTOMERS, 1, 23)]));
    m.on_backend(b'Z', &frame(b'Z', b"I"));
    let execute = |m: &mut ResultMask| {
        sent(m, b'B', b"\0s1\0\0\0\0\0\0\0");
        sent(m, b'E', b"\0\0\0\0\0");
        sent(m, b'S', b"");
        m.on_backend(b'2', &frame(b'2', b""));
        let step = m.on_backend(b'D', &data_row(&[b"1"]));
        m.on_backend(b'C', &frame(b'C', b"SELECT 1\0"));
        m.on_backend(b'Z', &frame(b'Z', b"I"));
        step
    };
    assert_eq!(execute(&mut m), MaskStep::Keep, "the same snapshot");
    entry.replace_snapshot(snapshot());
    let step = execute(&mut m);
    assert!(
        matches!(&step, MaskStep::Fail(e) if format!("{e:?}").contains("read the target's catalog again")),
        "{step:?}"
    );
}

/// Regression (s7 attack, F4): a statement checked with one snapshot that ran on a catalog changed
/// afterwards (a view replaced and committed while it waited for the lock). Its result's first
/// frame — a Query's RowDescription, a BindComplete — waits for a second check; another copy of
/// the catalog than the one it was checked against (s8: even one showing its columns alike), or
/// none confirmed, fails its rows. Unchanged (or read again unchanged): as before.
#[test]
fn a_result_whose_catalog_changed_while_the_statement_ran_fails_its_rows() {
    let entry = Arc::new(MaskEntry::holding(Some(snapshot())));
    let mut m = ResultMask::new(entry.clone(), MaskKey::derive(&[1; 32]), "support");
    let t = row_description(&[("id", CUSTOMERS, 1, 23)]);
    let query = |m: &mut ResultMask, changed: Option<MaskSnapshot>, confirmed: bool| {
        sent(m, b'Q', b"SELECT id FROM customers\0");
        assert!(m.confirms_at(b'T'));
        if let Some(changed) = changed {
            entry.replace_snapshot(changed);
        }
        m.after_confirm(confirmed);
        m.on_backend(b'T', &t);
        let step = m.on_backend(b'D', &data_row(&[b"1"]));
        m.on_backend(b'C', &frame(b'C', b"SELECT 1\0"));
        m.on_backend(b'Z', &frame(b'Z', b"I"));
        step
    };
    let changed = |step: &MaskStep, why: &str| matches!(step, MaskStep::Fail(e) if e.code == "42501" && e.message.contains(why));
    assert_eq!(query(&mut m, None, true), MaskStep::Keep, "unchanged");
    // Changed elsewhere (s8): the description's columns are shown alike, yet a computed column of
    // a replaced view (OID 0) would read alike too, and its text was checked with the old copy.
    let step = query(&mut m, Some(snapshot()), true);
    assert!(changed(&step, "changed while the statement ran"), "{step:?}");
    // Read again without a change (the same fingerprint): the same copy.
    let fingerprinted = || {
        let mut s = snapshot();
        s.fingerprint = Some(crate::masking::freshness::CatalogFingerprint::counting(7));
        s
    };
    entry.replace_snapshot(fingerprinted());
    query(&mut m, None, true);
    assert_eq!(
        query(&mut m, Some(fingerprinted()), true),
        MaskStep::Keep,
        "re-read, unchanged"
    );
    // Changed here (the relation is new to the current copy, as a view replaced is).
    let step = query(&mut m, Some(MaskSnapshot::default()), true);
    assert!(changed(&step, "changed while the statement ran"), "{step:?}");
    entry.replace_snapshot(snapshot());
    let step = query(&mut m, None, false);
    assert!(changed(&step, "could not confirm"), "{step:?}");
    assert_eq!(
        query(&mut m, None, true),
        MaskStep::Keep,
        "the verdict is the one result's"
    );
    // The server's error ending a changed result (code the replaced view runs may quote masked
    // values in it) is replaced too; after timebox's error for its rows, dropped.
    let error = frame(b'E', b"SERROR\0C22012\0Mgot alice@example.com\0\0");
    for rows in [false, true] {
        sent(&mut m, b'Q', b"SELECT id FROM customers\0");
        // Changed each time (the description's relation unknown, then known again).
        entry.replace_snapshot(if rows { snapshot() } else { MaskSnapshot::default() });
        m.after_confirm(true);
        m.on_backend(b'T', &t);
        if rows {
            assert!(matches!(
                m.on_backend(b'D', &data_row(&[b"1"])),
                MaskStep::Fail(_)
            ));
            assert_eq!(m.on_backend(b'E', &error), MaskStep::Drop);
        } else {
            let step = m.on_backend(b'E', &error);
            assert!(changed(&step, "changed while the statement ran"), "{step:?}");
        }
        m.on_backend(b'Z', &frame(b'Z', b"I"));
    }
    // The server's errors of an unchanged result still go.
    sent(&mut m, b'Q', b"SELECT 1\0");
    m.after_confirm(true);
    m.on_backend(b'T', &row_description(&[("x", 0, 0, 23)]));
    assert_eq!(m.on_backend(b'E', &error), MaskStep::Keep);
    m.on_backend(b'Z', &frame(b'Z', b"I"));
    entry.replace_snapshot(snapshot());
    // Bound while the lock was held: the BindComplete's check.
    sent(&mut m, b'P', b"s1\0SELECT id FROM customers\0\0\0");
    sent(&mut m, b'D', b"Ss1\0");
    sent(&mut m, b'S', b"");
    m.on_backend(b'1', &frame(b'1', b""));
    m.on_backend(b't', &frame(b't', b"\0\0"));
    assert!(!m.confirms_at(b'T'), "a statement's description is not a result");
    m.on_backend(b'T', &t);
    m.on_backend(b'Z', &frame(b'Z', b"I"));
    let bind = |m: &mut ResultMask, changed: bool| {
        sent(m, b'B', b"\0s1\0\0\0\0\0\0\0");
        sent(m, b'E', b"\0\0\0\0\0");
        sent(m, b'S', b"");
        assert!(m.confirms_at(b'2'));
        if changed {
            entry.replace_snapshot(snapshot());
        }
        m.after_confirm(true);
        m.on_backend(b'2', &frame(b'2', b""));
        let step = m.on_backend(b'D', &data_row(&[b"1"]));
        m.on_backend(b'C', &frame(b'C', b"SELECT 1\0"));
        m.on_backend(b'Z', &frame(b'Z', b"I"));
        step
    };
    assert_eq!(bind(&mut m, false), MaskStep::Keep, "unchanged");
    // Described before: any change fails it.
    let step = bind(&mut m, true);
    assert!(changed(&step, "changed while the statement ran"), "{step:?}");
}

/// Issue 15 item 5: a masked role with a row quota, one upstream read holding a description, rows
/// to mask, rows past the quota and the statement's end, handled as the relay does (quotas, then
/// masks, each editing the outbox in stream order, applied once at the end of the read): the
/// client gets the masked rows, the quota's error, ReadyForQuery, and no clear value.
#[test]
fn masked_rows_and_a_quota_stop_in_one_read_reach_the_client_masked_and_whole() {
    use crate::config::Quotas;
    use crate::proxy::relay::quota::{ResultQuota, Step};
    let mut m = mask(Some(snapshot()));
    let quotas = Quotas {
        max_rows_per_statement: Some(2),
        ..Quotas::default()
    };
    let mut q = ResultQuota::new(quotas, Arc::default(), "support");
    let mut out = ClientOutbox::new();
    set_frame_hooks(&mut out, true, true);
    sent(&mut m, b'Q', b"SELECT id, email FROM customers\0");
    let mut stream = row_description(&[("id", CUSTOMERS, 1, 23), ("email", CUSTOMERS, 2, 25)]);
    for id in [b"1", b"2", b"3", b"4"] {
        stream.extend_from_slice(&data_row(&[id, b"alice@example.com"]));
    }
    stream.extend_from_slice(&frame(b'C', b"SELECT 4\0"));
    stream.extend_from_slice(&frame(b'Z', b"I"));
    out.pending.extend_from_slice(&stream);
    let mut held = Vec::new();
    out.track_read(0, stream.len(), &mut held).unwrap();
    for (tag, start, end) in held {
        match q.on_frame(&mut out, tag, start, end).unwrap() {
            Step::Keep { .. } | Step::AnsweredBefore(..) => {}
            _ => {
                m.on_skipped(tag);
                continue;
            }
        }
        match m.on_backend(tag, out.frame_bytes(start, end).unwrap()) {
            MaskStep::Keep => {}
            MaskStep::Replace => out.replace_frame(start, end, m.replacement()).unwrap(),
            MaskStep::Drop => out.replace_frame(start, end, &[]).unwrap(),
            MaskStep::Fail(e) => out.replace_frame(start, end, &e.to_bytes()).unwrap(),
        }
    }
    assert_eq!(q.after_read(&mut out).unwrap(), None);
    out.finish_edits();
    let client = out.pending.to_vec();
    let mut tags = Vec::new();
    let mut at = 0;
    while at < client.len() {
        tags.push(client[at]);
        at += 1 + u32::from_be_bytes(client[at + 1..at + 5].try_into().unwrap()) as usize;
    }
    assert_eq!(at, client.len(), "whole frames");
    assert_eq!(tags, b"TDDEZ");
    let text = String::from_utf8_lossy(&client);
    assert_eq!(text.matches("***@example.com").count(), 2);
    assert!(!text.contains("alice@"), "no clear value");
    assert!(text.contains("max_rows_per_statement = 2"));
}

/// Regression (s7 and s8 re-attacks): a view replaced while the statement waited for its lock, so
/// that a computed column (`upper(x)`, table OID 0 in the RowDescription) reads the masked column —
/// both copies show that column alike (plain), and its rows went out (s7); and checking the text
/// again against the copy current at the second check is no proof either, as the statement may have
/// run on a state in between (replaced, then replaced back; s8). Any change fails the result.
#[test]
fn a_changed_catalog_fails_a_result_whatever_its_columns_and_text() {
    let row = |v: &[&str]| v.iter().map(|s| Some(s.to_string())).collect::<Vec<_>>();
    let read = |view_over_email: bool| {
        let attrs = vec![
            row(&["0", "16400", "public", "customers", "1", "f"]),
            row(&["0", "16400", "public", "customers", "2", "t"]),
        ];
        let views = if view_over_email {
            vec![row(&["0", "16500", "public", "v", "f"])]
        } else {
            vec![]
        };
        let relations = vec![
            row(&["16400", "public", "customers"]),
            row(&["16500", "public", "v"]),
        ];
        let rule = MaskRule::customers_email(MaskMethod::Email);
        MaskSnapshot::from_rows(&[rule], &[attrs, views, relations]).unwrap()
    };
    let entry = Arc::new(MaskEntry::holding(Some(read(false))));
    let mut m = ResultMask::new(entry.clone(), MaskKey::derive(&[1; 32]), "support");
    let mut run = |sql: &str, now: MaskSnapshot| {
        sent(&mut m, b'Q', format!("{sql}\0").as_bytes());
        entry.replace_snapshot(now);
        m.after_confirm(true);
        m.on_backend(b'T', &row_description(&[("u", 0, 0, 25)]));
        let step = m.on_backend(b'D', &data_row(&[b"ALICE@EXAMPLE.COM"]));
        m.on_backend(b'C', &frame(b'C', b"SELECT 1\0"));
        m.on_backend(b'Z', &frame(b'Z', b"I"));
        step
    };
    let refused = |step: &MaskStep| matches!(step, MaskStep::Fail(e) if e.message.contains("changed while the statement ran"));
    for (sql, now) in [
        ("SELECT upper(x) AS u FROM v", read(true)),
        ("SELECT upper(name) AS u FROM customers", read(true)),
        ("SELECT upper(x) AS u FROM v", read(false)),
    ] {
        let step = run(sql, now);
        assert!(refused(&step), "{sql}: {step:?}");
    }
}

/// Regression (s8 re-attack): a function of a view replaced while the statement waited for its
/// lock raised the masked values while the statement was planned (an ErrorResponse in place of
/// the RowDescription or BindComplete) or noticed them while it ran; neither waited for the second
/// check. Errors and notices of a statement now do: on a changed copy the error is timebox's and
/// the notice is dropped (and the result it precedes fails); unchanged, both go.
#[test]
fn errors_and_notices_of_a_statement_wait_for_the_second_check() {
    let entry = Arc::new(MaskEntry::holding(Some(snapshot())));
    let mut m = ResultMask::new(entry.clone(), MaskKey::derive(&[1; 32]), "support");
    let error = frame(b'E', b"SERROR\0CP0001\0Mgot alice@example.com\0\0");
    let notice = frame(b'N', b"SNOTICE\0C00000\0Mgot alice@example.com\0\0");
    let refused = |step: &MaskStep| matches!(step, MaskStep::Fail(e) if e.code == "42501");
    // Unchanged: both go.
    sent(&mut m, b'Q', b"SELECT x FROM v\0");
    assert!(m.confirms_at(b'N') && m.confirms_at(b'E'));
    m.after_confirm(true);
    assert_eq!(m.on_backend(b'N', &notice), MaskStep::Keep);
    m.after_confirm(true);
    assert_eq!(m.on_backend(b'E', &error), MaskStep::Keep);
    m.on_backend(b'Z', &frame(b'Z', b"I"));
    // Changed: an error in place of the result is timebox's.
    sent(&mut m, b'Q', b"SELECT x FROM v\0");
    entry.replace_snapshot(snapshot());
    m.after_confirm(true);
    let step = m.on_backend(b'E', &error);
    assert!(refused(&step), "{step:?}");
    m.on_backend(b'Z', &frame(b'Z', b"I"));
    // Changed: a notice is dropped, and the result after it fails.
    sent(&mut m, b'Q', b"SELECT x FROM v\0");
    entry.replace_snapshot(snapshot());
    m.after_confirm(true);
    assert_eq!(m.on_backend(b'N', &notice), MaskStep::Drop);
    m.on_backend(b'T', &row_description(&[("x", 0, 0, 25)]));
    let step = m.on_backend(b'D', &data_row(&[b"x"]));
    assert!(refused(&step), "{step:?}");
    assert_eq!(m.on_backend(b'N', &notice), MaskStep::Drop, "while failing");
    m.on_backend(b'C', &frame(b'C', b"SELECT 1\0"));
    m.on_backend(b'Z', &frame(b'Z', b"I"));
    // Not a statement's (a Sync's answer only): no second check.
    sent(&mut m, b'S', b"");
    assert!(!m.confirms_at(b'E'));
}
