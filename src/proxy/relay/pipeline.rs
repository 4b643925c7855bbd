//! Masked roles' extended-protocol batches (issue 15, s7): nothing later in a batch takes effect
//! after timebox refused a result in it.
//!
//! Why: timebox refuses a result's rows (ERROR 42501, [`super::mask`]) or stops it at a quota
//! ([`super::quota`]) *after* PostgreSQL ran the statement. The client then reads, as after any
//! error in a batch, no answer for the rest of the batch up to its Sync and believes none of it ran
//! (and that the batch's implicit transaction rolled back, or its transaction block is aborted). Had
//! timebox forwarded the whole batch at once, PostgreSQL would have run the rest and committed it.
//!
//! How, for roles with masks only (other sessions have no [`BatchHold`]; their frames go upstream
//! as before, byte for byte): after each Execute timebox forwards a Flush (which PostgreSQL does not
//! answer, so the result comes without a Sync) and reads no further client frame until that
//! Execute's result has ended (CommandComplete, EmptyQueryResponse, PortalSuspended, ErrorResponse;
//! CopyInResponse/CopyBothResponse, where the server waits for the client's data). When timebox
//! refused that result, it first sends the upstream a Parse that cannot parse (an abort marker): the
//! server fails exactly as if the statement had failed there — the implicit transaction rolls back
//! at Sync, including what earlier statements of the batch wrote, an open transaction block becomes
//! aborted (ReadyForQuery 'E'), and PostgreSQL itself skips every later message up to the Sync. The
//! marker's own ErrorResponse is dropped (the client already has timebox's error for that
//! statement, and PostgreSQL sends one error per batch). Then the client's frames are released as
//! usual: checked, audited and forwarded, and skipped by the server, as after any error.
//!
//! The cost: one round trip to the upstream per Execute of a masked role (the next message waits
//! for the result). An Execute in a batch that already failed upstream is not waited for (the
//! server skips it and would never answer). Pure: fed frame tags; the relay does the I/O.

use bytes::BytesMut;

use super::outbox::OutboxError;
use super::wrap::Refused;
use super::Relay;
use crate::proxy::session::Session;
use crate::proxy::wire::PgError;

/// Flush: the backend sends what it has without waiting for a Sync; it has no reply.
pub(crate) const FLUSH: [u8; 5] = [b'H', 0, 0, 0, 4];

/// The text of the abort marker: not SQL, so its Parse fails with a syntax error before any
/// statement is created (a named statement, so the client's unnamed one is left alone).
const ABORT_MARKER: &str = "timebox_refused_the_result_of_this_batch";

/// The Parse message that makes the upstream fail the batch in progress.
pub(crate) fn abort_marker() -> BytesMut {
    let mut out = BytesMut::new();
    postgres_protocol::message::frontend::parse(ABORT_MARKER, ABORT_MARKER, std::iter::empty(), &mut out)
        .expect("the marker has no NUL");
    out
}

/// What the relay does after a backend frame, as far as the batch hold goes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum HoldStep {
    /// Nothing changes.
    Pass,
    /// The upstream's answer to an abort marker: not for the client.
    DropMarkerError,
    /// The awaited Execute's result ended: process the client's frames again; with `abort`, after
    /// sending the upstream [`abort_marker`] (timebox refused the result).
    Release { abort: bool },
}

/// One masked session's hold on its client frames.
///
/// Batches are numbered by the sync points (Sync, Query, FunctionCall) before them: the client's
/// open batch is number `sent`, the backend's frames answer batch number `answered` (the
/// ReadyForQuery frames seen so far), so an answer to an earlier batch is never taken for the
/// open one's. (A Query sent into a batch that failed is skipped by PostgreSQL without a
/// ReadyForQuery, so it is not counted.)
#[derive(Debug, Default)]
pub(crate) struct BatchHold {
    /// Sync points forwarded.
    sent: u64,
    /// ReadyForQuery frames received.
    answered: u64,
    /// An Execute was forwarded whose result has not ended: the client's later frames wait.
    waiting: bool,
    /// The open batch already failed upstream: the server skips its later Executes, so there is
    /// nothing to wait for.
    batch_failed: bool,
    /// The batch whose abort marker's ErrorResponse has not come back yet (at most one: the next
    /// batch's results, and so its marker, come after it).
    marker: Option<u64>,
}

impl BatchHold {
    /// True while the client's frames wait for an Execute's result.
    pub(crate) fn holding(&self) -> bool {
        self.waiting
    }

    /// Whether the ErrorResponse of an abort marker is still to come (it comes before the answers
    /// to anything the client sent after the refused result, timebox's lock block included).
    pub(crate) fn marker_pending(&self) -> bool {
        self.marker.is_some()
    }

    /// A client frame of type `tag` was forwarded (after any replacement); returns the bytes to
    /// forward right after it: a Flush after an Execute whose result the next frame waits for.
    pub(crate) fn forwarded(&mut self, tag: u8) -> Option<&'static [u8]> {
        match tag {
            b'E' if !self.batch_failed => {
                self.waiting = true;
                Some(&FLUSH[..])
            }
            b'S' => {
                self.sent += 1;
                self.batch_failed = false;
                None
            }
            b'Q' | b'F' if !self.batch_failed => {
                self.sent += 1;
                None
            }
            _ => None,
        }
    }

    /// A whole backend frame of type `tag`, before masks and quotas see it; `refused`: timebox is
    /// refusing the result in progress (its rows, or a quota stopped it).
    pub(crate) fn on_backend(&mut self, tag: u8, refused: bool) -> HoldStep {
        let batch = self.answered;
        if tag == b'Z' {
            self.answered += 1;
        }
        if tag == b'E' && self.marker == Some(batch) {
            self.marker = None;
            return HoldStep::DropMarkerError;
        }
        if batch != self.sent {
            // An earlier batch's answer; the open batch's come after its ReadyForQuery.
            return HoldStep::Pass;
        }
        match tag {
            b'E' => {
                // The server skips to Sync by itself.
                self.batch_failed = true;
                self.release(false)
            }
            b'C' | b'I' | b's' => {
                if !self.waiting {
                    return HoldStep::Pass;
                }
                if refused {
                    self.batch_failed = true;
                    self.marker = Some(batch);
                }
                self.release(refused)
            }
            // COPY FROM STDIN (or replication's COPY BOTH): the server waits for the client's data.
            // A ReadyForQuery answering the open batch (never expected): nothing runs to wait for.
            b'G' | b'W' | b'Z' => self.release(false),
            _ => HoldStep::Pass,
        }
    }

    fn release(&mut self, abort: bool) -> HoldStep {
        if std::mem::take(&mut self.waiting) {
            HoldStep::Release { abort }
        } else {
            HoldStep::Pass
        }
    }
}

impl Session {
    /// The batch hold's view of one completed backend frame (roles with masks); `false` when the
    /// frame was dropped and the relay must not handle it further.
    pub(super) fn batch_frame(
        &mut self,
        r: &mut Relay,
        (tag, start, end): (u8, u64, u64),
    ) -> Result<bool, OutboxError> {
        let Some(hold) = r.batch.as_mut() else {
            return Ok(true);
        };
        // Any refusal since the batch began (s9 attack: a portal refused at its BindComplete that
        // returns no rows never fails a row, and its Sync committed what its code did).
        let refusal = r.mask.as_ref().map_or(Refused::No, |m| m.refused_since_ready());
        let refused = refusal != Refused::No || r.quota.as_ref().is_some_and(|q| q.running());
        Ok(match hold.on_backend(tag, refused) {
            HoldStep::Pass => true,
            HoldStep::DropMarkerError => {
                if let Some(m) = r.mask.as_mut() {
                    m.on_skipped(tag);
                    self.interceptor.on_backend_outcomes(m.outcomes.drain(..));
                }
                r.bufs.outbox.replace_frame(start, end, &[])?;
                false
            }
            HoldStep::Release { abort } => {
                if abort {
                    tracing::debug!("a refused result: the rest of its batch is failed upstream");
                    r.bufs.to_upstream.extend_from_slice(&abort_marker());
                }
                if abort && refusal == Refused::Changed {
                    // Code timebox did not judge may have run: the batch rolls back, but what
                    // lives outside transactions (advisory locks, prepared statements) would stay
                    // in the session (s9 attack): it ends, and its upstream with it.
                    self.sever(
                        r,
                        false,
                        super::EndReason::MaskedEffects,
                        PgError::masked_effects_kept(),
                    );
                    return Ok(true);
                }
                r.resume_client = true;
                true
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (s7): an Execute's rows refused mid-batch. The frames after it wait for its
    /// result, and the upstream is failed before they go.
    #[test]
    fn a_refused_result_fails_the_batch_upstream_before_the_rest_is_released() {
        let mut h = BatchHold::default();
        for tag in *b"PB" {
            assert_eq!(h.forwarded(tag), None);
        }
        assert_eq!(h.forwarded(b'E'), Some(&FLUSH[..]), "a Flush after the Execute");
        assert!(h.holding(), "the next frame waits");
        for tag in *b"12TD" {
            assert_eq!(h.on_backend(tag, tag == b'D'), HoldStep::Pass);
        }
        assert!(h.holding());
        assert_eq!(h.on_backend(b'C', true), HoldStep::Release { abort: true });
        assert!(!h.holding());
        // The rest of the batch: the server skips it (no Flush, nothing to wait for).
        assert_eq!(h.forwarded(b'P'), None);
        assert_eq!(h.forwarded(b'E'), None);
        assert!(!h.holding());
        assert_eq!(h.on_backend(b'E', false), HoldStep::DropMarkerError);
        assert_eq!(h.forwarded(b'S'), None);
        assert_eq!(h.on_backend(b'Z', false), HoldStep::Pass);
        // The next batch is held again, and a result not refused is released without a marker.
        assert!(h.forwarded(b'E').is_some());
        assert_eq!(h.on_backend(b'C', false), HoldStep::Release { abort: false });
        assert_eq!(
            h.on_backend(b'E', false),
            HoldStep::Pass,
            "a server error, no marker"
        );
    }

    /// The client's Sync (and more) may go before the marker's error comes back.
    #[test]
    fn the_markers_error_is_dropped_after_the_batch_went_on() {
        let mut h = BatchHold::default();
        h.forwarded(b'E');
        assert_eq!(h.on_backend(b'C', true), HoldStep::Release { abort: true });
        for tag in *b"PBES" {
            assert_eq!(h.forwarded(tag), None);
        }
        assert!(h.forwarded(b'E').is_some(), "the next batch");
        assert_eq!(h.on_backend(b'E', false), HoldStep::DropMarkerError);
        assert_eq!(h.on_backend(b'Z', false), HoldStep::Pass);
        assert!(h.holding());
        assert_eq!(h.on_backend(b'C', false), HoldStep::Release { abort: false });
    }

    #[test]
    fn every_end_of_a_result_releases_and_only_a_refusal_aborts() {
        for (tag, refused, step) in [
            (b'C', false, HoldStep::Release { abort: false }),
            (b'I', false, HoldStep::Release { abort: false }),
            (b's', false, HoldStep::Release { abort: false }),
            (b's', true, HoldStep::Release { abort: true }),
            (b'I', true, HoldStep::Release { abort: true }),
            // The server failed it itself (a quota's cancel, an error after refused rows).
            (b'E', true, HoldStep::Release { abort: false }),
            (b'E', false, HoldStep::Release { abort: false }),
            (b'G', false, HoldStep::Release { abort: false }),
            (b'W', false, HoldStep::Release { abort: false }),
            (b'Z', false, HoldStep::Release { abort: false }),
            (b'T', false, HoldStep::Pass),
            (b'D', true, HoldStep::Pass),
            (b'N', false, HoldStep::Pass),
            (b'S', false, HoldStep::Pass),
        ] {
            let mut h = BatchHold::default();
            h.forwarded(b'E');
            assert_eq!(h.on_backend(tag, refused), step, "{}", tag as char);
            assert_eq!(h.holding(), step == HoldStep::Pass, "{}", tag as char);
        }
    }

    #[test]
    fn answers_to_earlier_batches_do_not_end_the_wait() {
        let mut h = BatchHold::default();
        // Batch 1 (Parse fails, Sync) then batch 2's Execute, sent before any answer.
        h.forwarded(b'P');
        h.forwarded(b'S');
        h.forwarded(b'P');
        assert!(h.forwarded(b'E').is_some());
        assert_eq!(h.on_backend(b'E', false), HoldStep::Pass, "batch 1's error");
        assert_eq!(
            h.on_backend(b'Z', false),
            HoldStep::Pass,
            "batch 1's ReadyForQuery"
        );
        assert!(h.holding());
        assert_eq!(h.on_backend(b'C', false), HoldStep::Release { abort: false });
    }

    #[test]
    fn an_execute_after_the_batch_failed_upstream_is_not_waited_for() {
        let mut h = BatchHold::default();
        // The open batch's Parse failed (or was denied) before its Execute was read.
        h.forwarded(b'P');
        assert_eq!(h.on_backend(b'E', false), HoldStep::Pass);
        assert_eq!(
            h.forwarded(b'E'),
            None,
            "the server skips it: nothing would answer"
        );
        assert_eq!(h.forwarded(b'Q'), None, "skipped too, without a ReadyForQuery");
        assert!(!h.holding());
        h.forwarded(b'S');
        assert!(h.forwarded(b'E').is_some(), "a new batch");
    }

    #[test]
    fn the_abort_marker_is_a_named_parse_that_does_not_parse() {
        let m = abort_marker();
        assert_eq!(m[0], b'P');
        let body = &m[5..];
        let name_end = body.iter().position(|&b| b == 0).unwrap();
        assert_eq!(
            &body[..name_end],
            ABORT_MARKER.as_bytes(),
            "not the unnamed statement"
        );
        assert!(pg_query::parse(ABORT_MARKER, 0).is_err());
    }
}
