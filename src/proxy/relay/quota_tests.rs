//! Unit tests of [`super`]: the counter fed tags and lengths, and the quotas applied to an outbox
//! fed backend bytes in arbitrary pieces (no sockets).

use super::*;
use crate::proxy::relay::test_frame as frame;

fn quotas(rows: Option<u64>, bytes: Option<u64>, grant: Option<u64>) -> Quotas {
    Quotas {
        max_rows_per_statement: rows,
        max_result_bytes_per_statement: bytes,
        max_result_bytes_per_grant: grant,
    }
}

fn counter(q: Quotas) -> QuotaCounter {
    QuotaCounter::new(q, Arc::default())
}

#[test]
fn rows_past_the_limit_stop_the_statement_and_the_next_one_counts_afresh() {
    let mut c = counter(quotas(Some(2), None, None));
    assert_eq!(c.frame(b'T', 30), Action::Forward);
    assert_eq!(c.frame(b'D', 10), Action::Forward);
    assert_eq!(c.frame(b'D', 10), Action::Forward);
    assert_eq!(c.frame(b'D', 10), Action::Stop(Limit::RowsPerStatement));
    assert!(c.running());
    assert_eq!(c.frame(b'D', 10), Action::Drop);
    assert_eq!(c.frame(b'N', 10), Action::Forward, "notices still go");
    assert_eq!(c.frame(b'S', 10), Action::Forward, "settings are still checked");
    assert_eq!(c.frame(b'E', 50), Action::Answer(Limit::RowsPerStatement));
    assert!(!c.running());
    let r = c.finish_statement();
    assert_eq!((r.rows, r.bytes), (2, 20));
    assert_eq!(r.quota_stop.as_deref(), Some("max_rows_per_statement"));
    // Anything the backend sends after the end of the stopped statement, up to ReadyForQuery, is
    // dropped (the rest of a multi-statement Query, if the cancel came late).
    assert_eq!(c.frame(b'T', 30), Action::Drop);
    assert_eq!(c.frame(b'C', 13), Action::Drop);
    assert_eq!(c.frame(b'Z', 6), Action::Forward);
    for _ in 0..2 {
        assert_eq!(c.frame(b'D', 10), Action::Forward);
    }
    assert_eq!(c.frame(b'C', 13), Action::Forward);
    assert_eq!(c.finish_statement().quota_stop, None);
}

#[test]
fn copy_data_bytes_count_and_a_ready_for_query_without_an_end_gets_the_error_first() {
    let mut c = counter(quotas(None, Some(100), None));
    assert_eq!(c.frame(b'H', 11), Action::Forward);
    assert_eq!(c.frame(b'd', 60), Action::Forward);
    assert_eq!(
        c.frame(b'd', 40),
        Action::Forward,
        "exactly at the limit is allowed"
    );
    assert_eq!(c.frame(b'd', 1), Action::Stop(Limit::BytesPerStatement));
    assert_eq!(c.frame(b'c', 5), Action::Drop, "CopyDone of the stopped COPY");
    assert_eq!(c.frame(b'Z', 6), Action::AnswerBefore(Limit::BytesPerStatement));
    assert!(!c.stopped());
}

#[test]
fn grant_bytes_add_up_over_sessions_and_statements() {
    let grant = Arc::new(AtomicU64::new(0));
    let q = quotas(None, None, Some(100));
    let mut a = QuotaCounter::new(q, grant.clone());
    let mut b = QuotaCounter::new(q, grant.clone());
    assert_eq!(a.frame(b'D', 60), Action::Forward);
    assert_eq!(a.frame(b'C', 13), Action::Forward);
    a.finish_statement();
    assert_eq!(b.frame(b'D', 30), Action::Forward);
    assert_eq!(b.frame(b'D', 30), Action::Stop(Limit::BytesPerGrant));
    assert_eq!(
        grant.load(Ordering::Relaxed),
        90,
        "the stopped frame is not counted"
    );
    assert_eq!(a.frame(b'D', 11), Action::Stop(Limit::BytesPerGrant));
    assert_eq!(a.frame(b'D', 10), Action::Drop);
}

#[test]
fn roles_without_quotas_have_no_counter() {
    assert!(Quotas::default().is_unlimited());
    assert!(!quotas(Some(1), None, None).is_unlimited());
}

/// Feeds `chunk` to the outbox as one upstream read and applies the quotas; returns the steps.
fn read(out: &mut ClientOutbox, q: &mut ResultQuota, chunk: &[u8]) -> (Vec<Step>, Option<Limit>) {
    let before = out.pending.len();
    out.pending.extend_from_slice(chunk);
    let mut held = Vec::new();
    out.track_read(before, chunk.len(), &mut held).unwrap();
    let steps = held
        .into_iter()
        .map(|(tag, s, e)| q.on_frame(out, tag, s, e).unwrap())
        .collect();
    let stopped = q.after_read(out).unwrap();
    out.finish_edits();
    (steps, stopped)
}

/// Writes everything the outbox lets out.
fn drain(out: &mut ClientOutbox, to_client: &mut Vec<u8>) {
    while let Some((chunk, injected)) = out.next_chunk() {
        let n = chunk.len();
        to_client.extend_from_slice(chunk);
        out.advance(n, injected);
    }
}

/// The frame tags of a client byte stream.
fn tags(mut b: &[u8]) -> Vec<u8> {
    let mut t = Vec::new();
    while b.len() >= 5 {
        let len = u32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize;
        t.push(b[0]);
        b = &b[1 + len..];
    }
    assert!(b.is_empty(), "the client got a partial frame");
    t
}

fn outbox() -> ClientOutbox {
    let mut out = ClientOutbox::new();
    out.track_all = true;
    out
}

#[test]
fn a_stopped_result_reaches_the_client_as_whole_rows_then_the_error_then_ready() {
    let mut out = outbox();
    let mut q = ResultQuota::new(quotas(Some(3), None, None), Arc::default(), "read");
    let mut stream = frame(b'T', &[0; 20]);
    for i in 0..10u8 {
        stream.extend_from_slice(&frame(b'D', &[i; 7]));
    }
    let tail_start = stream.len();
    stream.extend_from_slice(&frame(b'E', b"SERROR\0C57014\0Mcanceling statement\0\0"));
    stream.extend_from_slice(&frame(b'Z', b"I"));
    let mut client = Vec::new();
    let mut stops = Vec::new();
    // In pieces of 9 bytes: frames split anywhere, written as soon as allowed.
    for piece in stream[..tail_start].chunks(9) {
        let (steps, stopped) = read(&mut out, &mut q, piece);
        stops.extend(steps.into_iter().filter(|s| matches!(s, Step::Stopped(_))));
        stops.extend(stopped.map(Step::Stopped));
        drain(&mut out, &mut client);
    }
    assert_eq!(stops, [Step::Stopped(Limit::RowsPerStatement)]);
    assert!(q.running(), "the query still runs until its end arrives");
    let (steps, _) = read(&mut out, &mut q, &stream[tail_start..]);
    assert!(matches!(steps[0], Step::Answered(ref r, "54000") if r.rows == 3));
    drain(&mut out, &mut client);
    assert_eq!(tags(&client), b"TDDDEZ");
    let error = PgError::result_quota_exceeded("max_rows_per_statement", "3", "read").to_bytes();
    assert!(client.windows(error.len()).any(|w| w == &error[..]));
    assert!(String::from_utf8_lossy(&client)
        .contains("timebox: result exceeds max_rows_per_statement = 3 of role \"read\""));
    // The next statement is relayed unchanged.
    let mut next = frame(b'D', b"after");
    next.extend_from_slice(&frame(b'C', b"SELECT 1\0"));
    next.extend_from_slice(&frame(b'Z', b"I"));
    let mark = client.len();
    read(&mut out, &mut q, &next);
    drain(&mut out, &mut client);
    assert_eq!(&client[mark..], &next[..]);
}

#[test]
fn a_large_row_past_the_limit_is_removed_while_it_arrives() {
    let mut out = outbox();
    let mut q = ResultQuota::new(quotas(None, Some(1000), None), Arc::default(), "read");
    let small = frame(b'D', &[1; 100]);
    let big = frame(b'D', &[2; 50_000]);
    let mut client = Vec::new();
    read(&mut out, &mut q, &small);
    drain(&mut out, &mut client);
    // The big row's header and first bytes: decided at once, nothing of it reaches the client.
    let (_, stopped) = read(&mut out, &mut q, &big[..4000]);
    assert_eq!(stopped, Some(Limit::BytesPerStatement));
    drain(&mut out, &mut client);
    assert_eq!(client, &small[..]);
    assert!(
        out.pending.is_empty(),
        "what arrived of the dropped row is not kept"
    );
    for piece in big[4000..].chunks(7000) {
        read(&mut out, &mut q, piece);
        drain(&mut out, &mut client);
        assert!(out.pending.is_empty());
    }
    let mut tail = frame(b'C', b"SELECT 2\0");
    tail.extend_from_slice(&frame(b'Z', b"I"));
    read(&mut out, &mut q, &tail);
    drain(&mut out, &mut client);
    assert_eq!(tags(&client), b"DEZ");
}

#[test]
fn a_notice_queued_while_a_row_is_dropped_goes_out_at_a_real_frame_boundary() {
    let mut out = outbox();
    let mut q = ResultQuota::new(quotas(Some(1), None, None), Arc::default(), "read");
    let mut client = Vec::new();
    let mut first = frame(b'D', &[1; 30]);
    let second = frame(b'D', &[2; 3000]);
    first.extend_from_slice(&second[..100]);
    read(&mut out, &mut q, &first);
    out.queue(&PgError::warning("expires soon"));
    drain(&mut out, &mut client);
    read(&mut out, &mut q, &second[100..]);
    drain(&mut out, &mut client);
    assert_eq!(tags(&client), b"DN");
}

/// Regression: the upstream lost mid-frame after a quota dropped frames (client offsets far behind
/// upstream offsets) must hand the client its whole frames and the FATAL, not panic.
#[test]
fn upstream_loss_after_dropped_frames_delivers_whole_frames_without_panicking() {
    let mut out = outbox();
    let mut q = ResultQuota::new(quotas(Some(1), None, None), Arc::default(), "read");
    let mut stream = frame(b'D', &[1; 15]);
    stream.extend_from_slice(&frame(b'D', &[2; 1000]));
    stream.extend_from_slice(&frame(b'N', &[3; 40])[..10]);
    read(&mut out, &mut q, &stream);
    let lost = PgError::upstream_lost("shop");
    let delivered = out.take_before_loss(&lost);
    let mut want = frame(b'D', &[1; 15]).to_vec();
    want.extend_from_slice(&lost.to_bytes());
    assert_eq!(&delivered[..], &want[..]);
}
