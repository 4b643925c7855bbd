//! The sync tracker: turns the frontend frames the relay forwards and the backend's replies into
//! statement outcomes. Pure (no I/O, no clock reads: callers pass `Instant`s).
//!
//! A sync point is a frontend message the backend answers with ReadyForQuery: Query, FunctionCall
//! and Sync. Audited statements checked since the last sync point belong to the next one; when its
//! ReadyForQuery arrives, they complete in order with the CommandComplete tags seen meanwhile, and
//! those left without a tag get the ErrorResponse's SQLSTATE (after an error the backend skips to
//! Sync, so nothing later in that batch ran). COPY data and cancel requests need nothing special:
//! a COPY ends in CommandComplete or ErrorResponse before its ReadyForQuery, and a cancelled
//! statement ends in ErrorResponse 57014.
//! The tracker must never pair an outcome with the wrong statement: one ReadyForQuery completes
//! exactly one sync point, oldest first.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use super::held::rows_of;
use crate::audit::event::Returned;

/// What the backend is doing, as far as the relay can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Nothing in flight, no transaction open.
    Idle,
    /// Nothing in flight, inside a transaction block (`failed`: an error aborted it).
    InTransaction { failed: bool },
    /// Sync points without their ReadyForQuery yet, or extended-protocol messages not yet
    /// followed by Sync: the backend may be running something.
    Busy,
}

/// The outcome of one audited statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Outcome {
    pub statement_id: u64,
    /// The command tag ("UPDATE 3"); several joined by "; " for a multi-statement Query.
    pub command_tag: Option<String>,
    /// Rows the tag counts.
    pub rows: Option<u64>,
    /// The SQLSTATE of the error that ended it, when it got no tag.
    pub sqlstate: Option<String>,
    /// Result rows and bytes it returned (roles with result quotas only).
    pub returned: Option<Returned>,
}

/// The outcomes one ReadyForQuery completes.
#[derive(Debug)]
pub(crate) struct Completed {
    /// From forwarding the sync point to its ReadyForQuery.
    pub elapsed: Duration,
    pub outcomes: Vec<Outcome>,
}

/// A sync point forwarded and not yet answered by ReadyForQuery.
#[derive(Debug)]
struct InFlight {
    sent: Instant,
    /// The audited statements whose outcome it completes.
    statements: Vec<u64>,
}

#[derive(Debug)]
pub(crate) struct SyncTracker {
    in_flight: VecDeque<InFlight>,
    /// Extended-protocol messages forwarded since the last Sync.
    unsynced: bool,
    /// Allowed statements checked since the last sync point.
    since_sync: Vec<u64>,
    /// CommandComplete tags of the sync point in progress.
    tags: Vec<String>,
    /// The SQLSTATE of its ErrorResponse, if any.
    error: Option<String>,
    /// Transaction status of the last ReadyForQuery ('I', 'T', 'E').
    transaction: u8,
    /// What each completed statement of the sync point in progress returned, one per
    /// CommandComplete (roles with result quotas only).
    returned: Vec<Returned>,
    /// What the statement that ended in an error (or a quota stop) returned.
    returned_by_failed: Option<Returned>,
}

impl Default for SyncTracker {
    fn default() -> Self {
        SyncTracker {
            in_flight: VecDeque::new(),
            unsynced: false,
            since_sync: Vec::new(),
            tags: Vec::new(),
            error: None,
            transaction: b'I',
            returned: Vec::new(),
            returned_by_failed: None,
        }
    }
}

impl SyncTracker {
    /// An allowed, audited statement: its outcome comes with the next sync point.
    pub(crate) fn statement(&mut self, id: u64) {
        self.since_sync.push(id);
    }

    /// A frontend frame with type `tag` was forwarded (after any replacement) at `now`.
    pub(crate) fn forwarded(&mut self, tag: u8, now: Instant) {
        match tag {
            b'Q' | b'F' => self.sync_point(now),
            b'S' => {
                self.unsynced = false;
                self.sync_point(now);
            }
            b'P' | b'B' | b'E' | b'D' | b'C' | b'H' => self.unsynced = true,
            _ => {}
        }
    }

    fn sync_point(&mut self, now: Instant) {
        self.in_flight.push_back(InFlight {
            sent: now,
            statements: std::mem::take(&mut self.since_sync),
        });
    }

    /// A CommandComplete with this tag arrived.
    pub(crate) fn command_complete(&mut self, tag: String) {
        self.tags.push(tag);
    }

    /// A statement's result ended (`completed`: by the CommandComplete that comes next; otherwise
    /// by an error or a quota stop) having returned `r`. Roles with result quotas only.
    pub(crate) fn returned(&mut self, r: Returned, completed: bool) {
        if completed {
            self.returned.push(r);
        } else {
            self.returned_by_failed = Some(r);
        }
    }

    /// An ErrorResponse with this SQLSTATE arrived (denial markers excepted).
    pub(crate) fn error(&mut self, sqlstate: Option<String>) {
        self.error = sqlstate;
    }

    /// A ReadyForQuery with transaction `status` arrived at `now`: completes the oldest sync
    /// point (`None` if none was in flight).
    pub(crate) fn ready(&mut self, status: u8, now: Instant) -> Option<Completed> {
        self.transaction = status;
        let done = self.in_flight.pop_front()?;
        let outcomes = self.outcomes(done.statements);
        Some(Completed {
            elapsed: now.saturating_duration_since(done.sent),
            outcomes,
        })
    }

    /// Pairs statements with tags in order; a multi-statement Query is one audited statement with
    /// several command tags, so the last statement takes all the tags left.
    fn outcomes(&mut self, ids: Vec<u64>) -> Vec<Outcome> {
        let mut tags = std::mem::take(&mut self.tags).into_iter();
        let mut returned = std::mem::take(&mut self.returned).into_iter();
        let mut failed = self.returned_by_failed.take();
        let error = self.error.take();
        let n = ids.len();
        ids.into_iter()
            .enumerate()
            .map(|(i, statement_id)| {
                let (tag, returned) = if i + 1 == n {
                    let rest: Vec<String> = tags.by_ref().collect();
                    let all = returned.by_ref().chain(failed.take());
                    (
                        (!rest.is_empty()).then(|| rest.join("; ")),
                        all.reduce(add_returned),
                    )
                } else {
                    let tag = tags.next();
                    let r = if tag.is_some() {
                        returned.next()
                    } else {
                        failed.take()
                    };
                    (tag, r)
                };
                Outcome {
                    statement_id,
                    rows: tag.as_deref().and_then(rows_of),
                    sqlstate: if tag.is_none() { error.clone() } else { None },
                    command_tag: tag,
                    returned,
                }
            })
            .collect()
    }

    /// Transaction status of the last ReadyForQuery ('I' before the first).
    pub(crate) fn transaction(&self) -> u8 {
        self.transaction
    }

    /// Extended-protocol messages were forwarded since the last Sync.
    pub(crate) fn unsynced(&self) -> bool {
        self.unsynced
    }

    /// Every sync point forwarded has its ReadyForQuery.
    pub(crate) fn answered_all(&self) -> bool {
        self.in_flight.is_empty()
    }

    /// True while the backend may be running something (a cancel would reach it).
    pub(crate) fn busy(&self) -> bool {
        !self.in_flight.is_empty() || self.unsynced
    }

    /// Sync points forwarded and not answered, plus one for extended-protocol messages not yet
    /// synced (what a cut leaves queued upstream).
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.len() + usize::from(self.unsynced)
    }

    pub(crate) fn phase(&self) -> Phase {
        match (self.busy(), self.transaction) {
            (true, _) => Phase::Busy,
            (false, b'T') => Phase::InTransaction { failed: false },
            (false, b'E') => Phase::InTransaction { failed: true },
            (false, _) => Phase::Idle,
        }
    }
}

/// Two results of one audited statement (a multi-statement Query) counted as one.
fn add_returned(a: Returned, b: Returned) -> Returned {
    a.combine(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(id: u64, tag: Option<&str>, sqlstate: Option<&str>) -> Outcome {
        Outcome {
            statement_id: id,
            command_tag: tag.map(str::to_owned),
            rows: tag.and_then(rows_of),
            sqlstate: sqlstate.map(str::to_owned),
            returned: None,
        }
    }

    #[test]
    fn returned_rows_and_bytes_pair_with_their_statement_and_a_quota_stop_with_the_failed_one() {
        let mut t = SyncTracker::default();
        let now = Instant::now();
        let mut id = 0;
        send(&mut t, b"PBEPBES", &mut id, now);
        let r = |rows, bytes, stop: Option<&str>| Returned {
            rows,
            bytes,
            quota_stop: stop.map(str::to_owned),
            masked: None,
        };
        t.returned(r(2, 40, None), true);
        t.command_complete("SELECT 2".into());
        t.returned(r(1000, 20_000, Some("max_rows_per_statement")), false);
        t.error(Some("54000".into()));
        let done = t.ready(b'I', now).unwrap();
        assert_eq!(done.outcomes[0].returned, Some(r(2, 40, None)));
        assert_eq!(done.outcomes[1].sqlstate.as_deref(), Some("54000"));
        assert_eq!(
            done.outcomes[1].returned,
            Some(r(1000, 20_000, Some("max_rows_per_statement")))
        );
        // Nothing leaks into the next sync point; roles without quotas report nothing.
        send(&mut t, b"Q", &mut id, now);
        t.command_complete("SELECT 1".into());
        assert_eq!(t.ready(b'I', now).unwrap().outcomes[0].returned, None);
    }

    /// Forwards frontend frames `tags`, auditing a statement for each Query and Parse.
    fn send(t: &mut SyncTracker, tags: &[u8], next_id: &mut u64, now: Instant) {
        for &tag in tags {
            if tag == b'Q' || tag == b'P' {
                *next_id += 1;
                t.statement(*next_id);
            }
            t.forwarded(tag, now);
        }
    }

    #[test]
    fn simple_query_completes_with_its_tag_and_time() {
        let mut t = SyncTracker::default();
        let t0 = Instant::now();
        assert_eq!(t.phase(), Phase::Idle);
        let mut id = 0;
        send(&mut t, b"Q", &mut id, t0);
        assert_eq!(t.phase(), Phase::Busy);
        t.command_complete("UPDATE 3".into());
        let done = t.ready(b'I', t0 + Duration::from_millis(7)).unwrap();
        assert_eq!(done.elapsed, Duration::from_millis(7));
        assert_eq!(done.outcomes, vec![outcome(1, Some("UPDATE 3"), None)]);
        assert_eq!(t.phase(), Phase::Idle);
    }

    #[test]
    fn pipelined_batches_complete_one_sync_point_per_ready_for_query() {
        let mut t = SyncTracker::default();
        let now = Instant::now();
        let mut id = 0;
        // Two statements behind one Sync, then a third behind another, all sent before any reply.
        send(&mut t, b"PBEPBES", &mut id, now);
        send(&mut t, b"PBES", &mut id, now);
        assert_eq!(t.phase(), Phase::Busy);
        t.command_complete("INSERT 0 1".into());
        t.command_complete("SELECT 2".into());
        let first = t.ready(b'I', now).unwrap();
        assert_eq!(
            first.outcomes,
            vec![
                outcome(1, Some("INSERT 0 1"), None),
                outcome(2, Some("SELECT 2"), None)
            ]
        );
        assert_eq!(t.phase(), Phase::Busy, "the second batch is still in flight");
        t.command_complete("DELETE 4".into());
        let second = t.ready(b'I', now).unwrap();
        assert_eq!(second.outcomes, vec![outcome(3, Some("DELETE 4"), None)]);
        assert_eq!(t.phase(), Phase::Idle);
        assert!(
            t.ready(b'I', now).is_none(),
            "an unexpected ReadyForQuery completes nothing"
        );
    }

    #[test]
    fn an_error_mid_pipeline_ends_the_rest_of_its_batch_only() {
        let mut t = SyncTracker::default();
        let now = Instant::now();
        let mut id = 0;
        send(&mut t, b"PBEPBEPBES", &mut id, now);
        send(&mut t, b"PBES", &mut id, now);
        // The first statement runs, the second fails, the backend skips the third up to Sync.
        t.command_complete("SELECT 1".into());
        t.error(Some("22012".into()));
        let batch = t.ready(b'I', now).unwrap();
        assert_eq!(
            batch.outcomes,
            vec![
                outcome(1, Some("SELECT 1"), None),
                outcome(2, None, Some("22012")),
                outcome(3, None, Some("22012"))
            ]
        );
        // The error does not leak into the next batch (an empty query gets neither tag nor error).
        let next = t.ready(b'I', now).unwrap();
        assert_eq!(next.outcomes, vec![outcome(4, None, None)]);
    }

    #[test]
    fn extended_messages_without_sync_keep_the_session_busy() {
        let mut t = SyncTracker::default();
        let mut id = 0;
        send(&mut t, b"PB", &mut id, Instant::now());
        assert_eq!(t.phase(), Phase::Busy);
        send(&mut t, b"H", &mut id, Instant::now());
        assert!(t.busy(), "Flush does not end the batch");
        send(&mut t, b"S", &mut id, Instant::now());
        t.ready(b'I', Instant::now()).unwrap();
        assert!(!t.busy());
    }

    #[test]
    fn copy_in_and_copy_out_complete_with_their_copy_tag() {
        let mut t = SyncTracker::default();
        let now = Instant::now();
        let mut id = 0;
        // COPY ... FROM STDIN: CopyData and CopyDone from the client are not sync points.
        send(&mut t, b"Q", &mut id, now);
        send(&mut t, b"ddc", &mut id, now);
        t.command_complete("COPY 3".into());
        let copy_in = t.ready(b'I', now).unwrap();
        assert_eq!(copy_in.outcomes, vec![outcome(1, Some("COPY 3"), None)]);
        assert_eq!(copy_in.outcomes[0].rows, Some(3));
        // COPY ... TO STDOUT.
        send(&mut t, b"Q", &mut id, now);
        t.command_complete("COPY 2".into());
        let copy_out = t.ready(b'I', now).unwrap();
        assert_eq!(copy_out.outcomes, vec![outcome(2, Some("COPY 2"), None)]);
        // A COPY FROM STDIN the client abandons with CopyFail ends in an error.
        send(&mut t, b"Qdf", &mut id, now);
        t.error(Some("57014".into()));
        let failed = t.ready(b'I', now).unwrap();
        assert_eq!(failed.outcomes, vec![outcome(3, None, Some("57014"))]);
        assert_eq!(t.phase(), Phase::Idle);
    }

    #[test]
    fn a_cancelled_statement_ends_with_57014_and_the_transaction_state_follows() {
        let mut t = SyncTracker::default();
        let now = Instant::now();
        let mut id = 0;
        send(&mut t, b"Q", &mut id, now);
        t.command_complete("BEGIN".into());
        t.ready(b'T', now).unwrap();
        assert_eq!(t.phase(), Phase::InTransaction { failed: false });
        send(&mut t, b"Q", &mut id, now);
        assert_eq!(t.phase(), Phase::Busy);
        // The cancel request goes out of band; the backend answers with 57014.
        t.error(Some("57014".into()));
        let done = t.ready(b'E', now).unwrap();
        assert_eq!(done.outcomes, vec![outcome(2, None, Some("57014"))]);
        assert_eq!(t.phase(), Phase::InTransaction { failed: true });
    }

    #[test]
    fn a_multi_statement_query_is_one_outcome_with_every_tag() {
        let mut t = SyncTracker::default();
        let now = Instant::now();
        let mut id = 0;
        send(&mut t, b"Q", &mut id, now);
        t.command_complete("BEGIN".into());
        t.command_complete("UPDATE 2".into());
        t.command_complete("COMMIT".into());
        let done = t.ready(b'I', now).unwrap();
        assert_eq!(
            done.outcomes,
            vec![outcome(1, Some("BEGIN; UPDATE 2; COMMIT"), None)]
        );
    }

    #[test]
    fn denied_or_unaudited_statements_still_count_their_sync_point() {
        let mut t = SyncTracker::default();
        let now = Instant::now();
        // A denied Query is replaced by a marker Query: forwarded, but no allowed statement.
        t.forwarded(b'Q', now);
        t.error(Some("42601".into()));
        let done = t.ready(b'I', now).unwrap();
        assert!(done.outcomes.is_empty());
        assert!(!t.busy());
    }
}
