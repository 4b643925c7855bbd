//! The audit gate: holds the frontend frames of one client read until the audit records of the
//! statements in them are acknowledged, and batches outcome records with the next submission.
//! Pure: the caller passes the submit function and the acknowledgement's result.
//!
//! With `fsync`/`write` durability a statement is forwarded only once its record is durable; with
//! `async` durability once the writer accepted it. A refusal or failure releases nothing: the held
//! frames are dropped (fail closed) and the caller ends the session. The gate must never let a
//! frame through whose record was refused.

use std::future::Future;
use std::time::Duration;

use bytes::BytesMut;
use tokio::time::Instant;

use crate::audit::event::AuditEvent;
use crate::audit::{AuditAck, AuditError};

/// How long outcome records may wait for the next statement's audit submission (which they join)
/// before they are submitted on their own: an idle session's outcomes are durable within this.
pub(crate) const OUTCOME_FLUSH_DELAY: Duration = Duration::from_millis(50);

/// `A` is the acknowledgement the audit log's submit returns ([`AuditAck`]; a plain future in tests).
pub(crate) struct AuditGate<A = AuditAck> {
    /// Frames of the last client read, waiting for their audit acknowledgement.
    held: BytesMut,
    /// Records of the statements in `held`, not yet submitted.
    statements: Vec<AuditEvent>,
    /// Outcome records waiting to join the next submission (or their deadline).
    outcomes: Vec<AuditEvent>,
    /// When `outcomes` go on their own at the latest.
    outcome_deadline: Option<Instant>,
    /// The acknowledgement the held frames wait for, and when it was asked for.
    pending: Option<(A, Instant)>,
    /// Wait for durability (`fsync`/`write`) rather than acceptance (`async`).
    wait_for_durable: bool,
}

impl<A> AuditGate<A>
where
    A: Future<Output = Result<(), AuditError>> + Unpin,
{
    pub(crate) fn new(wait_for_durable: bool) -> Self {
        AuditGate {
            held: BytesMut::new(),
            statements: Vec::new(),
            outcomes: Vec::new(),
            outcome_deadline: None,
            pending: None,
            wait_for_durable,
        }
    }

    /// True while the held frames wait for an acknowledgement (the relay stops reading the client).
    pub(crate) fn waiting(&self) -> bool {
        self.pending.is_some()
    }

    /// A frame to forward once this read's records are acknowledged.
    pub(crate) fn hold(&mut self, frame: &[u8]) {
        self.held.extend_from_slice(frame);
    }

    /// The record of a statement in the held frames.
    pub(crate) fn statement(&mut self, event: AuditEvent) {
        self.statements.push(event);
    }

    /// Outcome records made at `now`: they wait for the next submission, at most
    /// [`OUTCOME_FLUSH_DELAY`].
    pub(crate) fn outcomes(&mut self, events: impl IntoIterator<Item = AuditEvent>, now: Instant) {
        self.outcomes.extend(events);
        if !self.outcomes.is_empty() && self.outcome_deadline.is_none() {
            self.outcome_deadline = Some(now + OUTCOME_FLUSH_DELAY);
        }
    }

    pub(crate) fn outcome_deadline(&self) -> Option<Instant> {
        self.outcome_deadline
    }

    /// The outcome deadline passed: the outcomes to submit on their own.
    pub(crate) fn due_outcomes(&mut self) -> Vec<AuditEvent> {
        self.outcome_deadline = None;
        std::mem::take(&mut self.outcomes)
    }

    /// The client read is processed: submits its statement records (earlier outcomes first, in
    /// the same hand-off) and moves the held frames to `upstream` unless they must wait for the
    /// acknowledgement. On refusal the held frames are dropped.
    pub(crate) fn end_of_read(
        &mut self,
        submit: impl FnOnce(Vec<AuditEvent>) -> Result<A, AuditError>,
        upstream: &mut BytesMut,
        now: Instant,
    ) -> Result<(), AuditError> {
        if !self.statements.is_empty() {
            let mut events = std::mem::take(&mut self.outcomes);
            events.append(&mut self.statements);
            self.outcome_deadline = None;
            match submit(events) {
                Ok(ack) if self.wait_for_durable => self.pending = Some((ack, now)),
                Ok(_) => {}
                Err(e) => {
                    self.held.clear();
                    return Err(e);
                }
            }
        }
        if self.pending.is_none() {
            self.release(upstream);
        }
        Ok(())
    }

    /// Waits for the pending acknowledgement (never resolves when there is none).
    pub(crate) async fn acknowledged(&mut self) -> Result<(), AuditError> {
        match &mut self.pending {
            Some((ack, _)) => ack.await,
            None => std::future::pending().await,
        }
    }

    /// The acknowledgement came back with `result`: releases the held frames to `upstream`, or
    /// drops them. Returns how long the acknowledgement took.
    pub(crate) fn on_acknowledged(
        &mut self,
        result: Result<(), AuditError>,
        upstream: &mut BytesMut,
        now: Instant,
    ) -> (Option<Duration>, Result<(), AuditError>) {
        let waited = self
            .pending
            .take()
            .map(|(_, since)| now.saturating_duration_since(since));
        match result {
            Ok(()) => self.release(upstream),
            Err(_) => self.held.clear(),
        }
        (waited, result)
    }

    /// The client sent Terminate: every record not yet submitted (outcomes, then statements), and
    /// the held frames to forward once those are durable.
    pub(crate) fn terminate(&mut self) -> (Vec<AuditEvent>, BytesMut) {
        let mut events = std::mem::take(&mut self.outcomes);
        events.append(&mut self.statements);
        self.outcome_deadline = None;
        (events, std::mem::take(&mut self.held))
    }

    /// Outcome records still waiting when the session ends (they go with the session end).
    pub(crate) fn into_outcomes(self) -> Vec<AuditEvent> {
        self.outcomes
    }

    fn release(&mut self, upstream: &mut BytesMut) {
        upstream.extend_from_slice(&self.held);
        self.held.clear();
    }
}

#[cfg(test)]
mod tests {
    use std::future::Ready;

    use super::*;
    use crate::audit::event::{SessionEnd, StatementOutcome};

    type Gate = AuditGate<Ready<Result<(), AuditError>>>;

    fn outcome(id: u64) -> AuditEvent {
        AuditEvent::StatementOutcome(StatementOutcome {
            command_tag: Some("SELECT 1".into()),
            duration_us: 1,
            rows: Some(1),
            session_id: "s_1".into(),
            sqlstate: None,
            statement_id: id,
            returned: None,
        })
    }

    /// Stands in for a statement record (the gate does not look inside).
    fn statement(id: u64) -> AuditEvent {
        AuditEvent::SessionEnd(SessionEnd {
            bytes_from_client: 0,
            bytes_to_client: 0,
            duration_us: 0,
            ended_by: None,
            grant_id: "g".into(),
            reason: format!("statement {id}"),
            session_id: "s_1".into(),
            statements: id,
            target: "t".into(),
            user: "u".into(),
        })
    }

    fn accept(
        seen: &mut Vec<usize>,
    ) -> impl FnOnce(Vec<AuditEvent>) -> Result<Ready<Result<(), AuditError>>, AuditError> + '_ {
        move |events| {
            seen.push(events.len());
            Ok(std::future::ready(Ok(())))
        }
    }

    #[test]
    fn frames_wait_for_the_acknowledgement_of_their_records() {
        let mut gate = Gate::new(true);
        let mut upstream = BytesMut::new();
        let now = Instant::now();
        gate.hold(b"Q-one");
        gate.statement(statement(1));
        let mut seen = Vec::new();
        gate.end_of_read(accept(&mut seen), &mut upstream, now).unwrap();
        assert_eq!(seen, vec![1]);
        assert!(gate.waiting());
        assert!(
            upstream.is_empty(),
            "nothing goes upstream before the record is durable"
        );
        let (waited, result) = gate.on_acknowledged(Ok(()), &mut upstream, now + Duration::from_millis(3));
        assert_eq!(waited, Some(Duration::from_millis(3)));
        assert!(result.is_ok());
        assert_eq!(&upstream[..], b"Q-one");
        assert!(!gate.waiting());
    }

    #[test]
    fn a_failed_acknowledgement_drops_the_held_frames() {
        let mut gate = Gate::new(true);
        let mut upstream = BytesMut::new();
        gate.hold(b"Q-two");
        gate.statement(statement(1));
        gate.end_of_read(accept(&mut Vec::new()), &mut upstream, Instant::now())
            .unwrap();
        let (_, result) = gate.on_acknowledged(Err(AuditError::Closed), &mut upstream, Instant::now());
        assert!(result.is_err());
        assert!(upstream.is_empty());
        // Nothing is left to release later either.
        gate.end_of_read(accept(&mut Vec::new()), &mut upstream, Instant::now())
            .unwrap();
        assert!(upstream.is_empty());
    }

    #[test]
    fn a_refused_submission_drops_the_held_frames() {
        let mut gate = Gate::new(false);
        let mut upstream = BytesMut::new();
        gate.hold(b"Q-three");
        gate.statement(statement(1));
        let refused = gate.end_of_read(|_| Err(AuditError::Closed), &mut upstream, Instant::now());
        assert!(refused.is_err());
        assert!(upstream.is_empty());
        assert!(!gate.waiting());
    }

    #[test]
    fn async_durability_and_frames_without_statements_go_at_once() {
        let mut gate = Gate::new(false);
        let mut upstream = BytesMut::new();
        gate.hold(b"Q-four");
        gate.statement(statement(1));
        gate.end_of_read(accept(&mut Vec::new()), &mut upstream, Instant::now())
            .unwrap();
        assert_eq!(&upstream[..], b"Q-four", "async: accepted is enough");
        let mut durable = Gate::new(true);
        let mut seen = Vec::new();
        durable.hold(b"d-copydata");
        durable
            .end_of_read(accept(&mut seen), &mut upstream, Instant::now())
            .unwrap();
        assert!(seen.is_empty(), "no statement, no submission");
        assert!(upstream.ends_with(b"d-copydata"));
    }

    #[test]
    fn outcomes_join_the_next_submission_or_go_at_their_deadline() {
        let mut gate = Gate::new(true);
        let mut upstream = BytesMut::new();
        let now = Instant::now();
        gate.outcomes([outcome(1)], now);
        assert_eq!(gate.outcome_deadline(), Some(now + OUTCOME_FLUSH_DELAY));
        gate.outcomes([outcome(2)], now + Duration::from_millis(10));
        assert_eq!(
            gate.outcome_deadline(),
            Some(now + OUTCOME_FLUSH_DELAY),
            "the first one's"
        );
        gate.hold(b"Q");
        gate.statement(statement(3));
        let mut seen = Vec::new();
        gate.end_of_read(accept(&mut seen), &mut upstream, now).unwrap();
        assert_eq!(seen, vec![3], "two outcomes and the statement in one hand-off");
        assert_eq!(gate.outcome_deadline(), None);
        gate.outcomes([outcome(3)], now);
        assert_eq!(gate.due_outcomes().len(), 1);
        assert_eq!(gate.outcome_deadline(), None);
        gate.outcomes(Vec::new(), now);
        assert_eq!(gate.outcome_deadline(), None, "no records, no deadline");
    }

    #[test]
    fn terminate_hands_over_everything_not_yet_submitted() {
        let mut gate = Gate::new(true);
        let now = Instant::now();
        gate.outcomes([outcome(1)], now);
        gate.hold(b"Q");
        gate.statement(statement(2));
        let (events, held) = gate.terminate();
        assert_eq!(events.len(), 2);
        assert!(
            matches!(events[0], AuditEvent::StatementOutcome(_)),
            "outcomes first"
        );
        assert_eq!(&held[..], b"Q");
        assert!(gate.into_outcomes().is_empty());
    }
}
