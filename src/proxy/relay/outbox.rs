//! The client outbox: backend bytes on their way to the client, with timebox's own messages
//! (expiry warnings, denials, the final FATAL) spliced in at a frame boundary. Pure: the relay
//! feeds it what it read from the upstream and writes what [`ClientOutbox::next_chunk`] gives.
//! It never decodes a frame it does not hold; it must never split a frame or drop a byte the
//! client is owed.

use bytes::{Buf, BytesMut};

use super::held::held_tag;
use super::io::{upstream_read, UpstreamRead};
use crate::proxy::wire::{FrameTracker, PgError, TrackError};

/// Initial capacity of the outbox buffer.
const BUFFER_CAPACITY: usize = 16 * 1024;

/// Backend bytes on their way to the client, with timebox's own messages spliced in at a frame
/// boundary.
///
/// Offsets are positions in the byte stream the client receives; `delta` maps upstream stream
/// offsets (what the [`FrameTracker`] counts) to client offsets after frames were replaced.
/// ErrorResponse and ParameterStatus frames, and frames whose header is still incomplete, are held
/// back until complete so they can be inspected (and replaced) before the client sees any of them.
pub(crate) struct ClientOutbox {
    /// Bytes not yet written to the client: client offsets `[written, written + pending.len())`.
    pub(crate) pending: BytesMut,
    /// Client offset up to which everything has been written.
    pub(crate) written: u64,
    /// Client offset minus upstream offset.
    delta: i64,
    /// timebox's own messages waiting for a boundary.
    pub(crate) inject: BytesMut,
    /// The client offset (a frame boundary) at which `inject` goes out.
    pub(crate) inject_at: Option<u64>,
    /// Frame boundaries of the upstream stream.
    pub(crate) tracker: FrameTracker,
    /// Result quotas apply ([`super::quota`]): every completed frame is noted for the relay, not
    /// just the held ones.
    pub(crate) track_all: bool,
    /// A quota stopped the result: every frame but DataRow and CopyData (decided at their header)
    /// is held until complete, so it can be dropped.
    pub(crate) hold_all: bool,
    /// Bytes of the unfinished frame already removed (a dropped DataRow or CopyData arriving).
    pub(crate) partial_dropped: u64,
    /// Column masks apply ([`super::mask`]): RowDescription and DataRow frames are held until
    /// complete, so they can be rewritten before the client sees any of them.
    pub(crate) hold_rows: bool,
}

impl ClientOutbox {
    pub(crate) fn new() -> Self {
        ClientOutbox {
            pending: BytesMut::with_capacity(BUFFER_CAPACITY),
            written: 0,
            delta: 0,
            inject: BytesMut::new(),
            inject_at: None,
            tracker: FrameTracker::default(),
            track_all: false,
            hold_all: false,
            partial_dropped: 0,
            hold_rows: false,
        }
    }

    pub(crate) fn to_client(&self, upstream_offset: u64) -> u64 {
        (upstream_offset as i64 + self.delta) as u64
    }

    /// The latest frame boundary in client offsets.
    pub(crate) fn last_boundary(&self) -> u64 {
        match self.tracker.unfinished_frame_start() {
            // The part of a dropped frame already removed maps to where the frame began.
            Some(start) => self.to_client(start + self.partial_dropped),
            None => self.to_client(self.tracker.offset()),
        }
    }

    /// Where writing must pause until the current frame is complete, if anywhere.
    pub(crate) fn hold_point(&self) -> Option<u64> {
        let t = &self.tracker;
        let tag = t.current_tag();
        let held = held_tag(tag)
            || (self.hold_all && tag != 0 && tag != b'D' && tag != b'd')
            || (self.hold_rows && (tag == b'T' || tag == b'D'));
        (t.in_header() || held).then(|| self.last_boundary())
    }

    /// Whether to read more from the upstream ([`upstream_read`]): the bytes before the hold point
    /// may go to the client now; a held frame still arriving (whose declared length is known once
    /// its header is) is read on until whole, and never leaves in part.
    pub(crate) fn read_decision(&self) -> UpstreamRead {
        let pending = self.pending.len();
        let Some(hold) = self.hold_point() else {
            return upstream_read(pending, None);
        };
        let sendable = (hold.saturating_sub(self.written) as usize).min(pending);
        let declared = self.tracker.unfinished_frame().map(|(_, start, end)| end - start);
        upstream_read(sendable, declared)
    }

    /// Picks the injection point if one is not chosen yet: the latest boundary not yet passed.
    pub(crate) fn place_injection(&mut self) {
        if self.inject.is_empty() || self.inject_at.is_some() {
            return;
        }
        let boundary = self.last_boundary();
        if boundary >= self.written {
            self.inject_at = Some(boundary);
        }
    }

    /// The bytes to write next (stream bytes up to the injection or hold point, then the injection).
    pub(crate) fn next_chunk(&self) -> Option<(&[u8], bool)> {
        let mut limit = self.written + self.pending.len() as u64;
        if let Some(hold) = self.hold_point() {
            limit = limit.min(hold);
        }
        match self.inject_at {
            Some(at) if at == self.written && !self.inject.is_empty() => {
                return Some((&self.inject[..], true))
            }
            Some(at) => limit = limit.min(at),
            None => {}
        }
        let n = limit.saturating_sub(self.written) as usize;
        (n > 0).then(|| (&self.pending[..n], false))
    }

    pub(crate) fn advance(&mut self, n: usize, injected: bool) {
        if injected {
            self.inject.advance(n);
            if self.inject.is_empty() {
                self.inject_at = None;
            }
        } else {
            self.pending.advance(n);
            self.written += n as u64;
        }
    }

    pub(crate) fn injection_done(&self) -> bool {
        self.inject.is_empty()
    }

    /// The bytes of a complete, held frame given in upstream offsets.
    pub(crate) fn frame_bytes(&self, start: u64, end: u64) -> &[u8] {
        let from = (self.to_client(start) - self.written) as usize;
        let to = (self.to_client(end) - self.written) as usize;
        &self.pending[from..to]
    }

    /// Replaces a complete, held frame (upstream offsets) with `replacement`.
    pub(crate) fn replace_frame(&mut self, start: u64, end: u64, replacement: &[u8]) {
        let from = (self.to_client(start) - self.written) as usize;
        let to = (self.to_client(end) - self.written) as usize;
        // In place: a split buffer would share its allocation, and extending the head would then
        // re-allocate and copy the whole buffer for every replaced frame (masked rows: one each).
        let (len, new_to) = (self.pending.len(), from + replacement.len());
        if new_to > to {
            self.pending.resize(len + (new_to - to), 0);
        }
        self.pending.copy_within(to..len, new_to);
        self.pending.truncate(len - to + new_to);
        self.pending[from..new_to].copy_from_slice(replacement);
        self.delta += replacement.len() as i64 - (end - start) as i64;
    }

    /// Tracks the `n` bytes just read into `pending` after its first `before` bytes, noting each
    /// completed frame the relay inspects (held tags and ReadyForQuery) as `(tag, start, end)`.
    pub(crate) fn track_read(
        &mut self,
        before: usize,
        n: usize,
        held: &mut Vec<(u8, u64, u64)>,
    ) -> Result<(), TrackError> {
        let read = &self.pending[before..before + n];
        if self.track_all {
            return self
                .tracker
                .feed_with(read, |tag, start, end| held.push((tag, start, end)));
        }
        self.tracker.feed_with(read, |tag, start, end| {
            if held_tag(tag) || tag == b'Z' {
                held.push((tag, start, end));
            }
        })
    }

    /// Queues one of timebox's own messages for the next frame boundary.
    pub(crate) fn queue(&mut self, message: &PgError) {
        message.encode(&mut self.inject);
        self.place_injection();
    }

    /// Replaces whatever timebox meant to say by `last` (a FATAL), at the next frame boundary.
    pub(crate) fn queue_last(&mut self, last: &PgError) {
        self.inject.clear();
        self.inject_at = None;
        self.queue(last);
    }

    /// Replaces whatever timebox meant to say by `message`, keeping the injection point if one
    /// was chosen.
    pub(crate) fn queue_instead(&mut self, message: &PgError) {
        self.inject.clear();
        self.queue(message);
    }

    /// Moves the injection right after the frame ending at upstream offset `end`, before anything
    /// that follows it.
    pub(crate) fn inject_after(&mut self, end: u64) {
        self.inject_at = Some(self.to_client(end));
    }

    /// True once the final message is delivered (nothing injected still waiting).
    pub(crate) fn drained(&self) -> bool {
        self.injection_done() && self.inject_at.is_none()
    }

    /// The upstream is gone: the whole frames still owed to the client, then `lost` (unless the
    /// client is mid-frame, where nothing more can be said cleanly).
    pub(crate) fn take_before_loss(&mut self, lost: &PgError) -> BytesMut {
        // The unfinished frame's start in client offsets (frames replaced or dropped before it
        // moved it away from its upstream offset).
        let boundary = self.last_boundary();
        let complete = match self.tracker.unfinished_frame_start() {
            Some(_) if boundary >= self.written => {
                ((boundary - self.written) as usize).min(self.pending.len())
            }
            Some(_) => 0,
            None => self.pending.len(),
        };
        let mut out = self.pending.split_to(complete);
        if self.tracker.at_boundary() || boundary >= self.written {
            lost.encode(&mut out);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::relay::test_frame as frame_bytes;
    use bytes::BytesMut;

    /// s6 (issue 15 item 5): a masked role's every DataRow is replaced; each replacement used to
    /// split the buffer and extend its head, re-allocating and copying the whole pending buffer
    /// per row (~50 µs of CPU per row in release). Replacing in place keeps the allocation.
    #[test]
    fn replacing_frames_keeps_the_buffer_and_the_other_frames() {
        let mut outbox = ClientOutbox::new();
        let rows: Vec<BytesMut> = (0..100u8).map(|i| frame_bytes(b'D', &[i; 40])).collect();
        let mut expected = Vec::new();
        let mut at = 0u64;
        let mut spans = Vec::new();
        for r in &rows {
            outbox.pending.extend_from_slice(r);
            spans.push((at, at + r.len() as u64));
            at += r.len() as u64;
        }
        let buffer = outbox.pending.as_ptr();
        for (i, (start, end)) in spans.into_iter().enumerate() {
            // Shorter, longer and equal replacements, in stream order as the relay makes them.
            let body = vec![b'x'; [10, 40, 60][i % 3]];
            let replacement = frame_bytes(b'D', &body);
            outbox.replace_frame(start, end, &replacement);
            expected.extend_from_slice(&replacement);
            if i % 3 != 2 {
                assert_eq!(outbox.pending.as_ptr(), buffer, "row {i}: re-allocated");
            }
        }
        assert_eq!(&outbox.pending[..], &expected[..]);
    }

    #[test]
    fn held_frames_wait_until_complete_and_can_be_replaced() {
        let mut outbox = ClientOutbox::new();
        let row = frame_bytes(b'D', &[1; 8]);
        let err = frame_bytes(b'E', b"SERROR\0Mmarker\0\0");
        let mut stream = row.clone();
        stream.extend_from_slice(&err[..7]);
        outbox.pending.extend_from_slice(&stream);
        outbox.tracker.feed(&stream).unwrap();
        // the DataRow may go, the partial ErrorResponse may not
        assert_eq!(outbox.next_chunk().unwrap().0, &row[..]);
        outbox.advance(row.len(), false);
        assert!(outbox.next_chunk().is_none());
        let rest = &err[7..];
        outbox.pending.extend_from_slice(rest);
        let mut done = Vec::new();
        outbox
            .tracker
            .feed_with(rest, |t, s, e| done.push((t, s, e)))
            .unwrap();
        let (tag, s, e) = done[0];
        assert_eq!(tag, b'E');
        assert_eq!(outbox.frame_bytes(s, e), &err[..]);
        let replacement = PgError::insufficient_privilege("denied").to_bytes();
        outbox.replace_frame(s, e, &replacement);
        assert_eq!(outbox.next_chunk().unwrap().0, &replacement[..]);
        // a later frame is located correctly after the splice
        let z = frame_bytes(b'Z', b"I");
        outbox.pending.extend_from_slice(&z);
        outbox.tracker.feed(&z).unwrap();
        assert_eq!(
            outbox.last_boundary(),
            (row.len() + replacement.len() + z.len()) as u64
        );
    }

    #[test]
    fn injection_waits_for_a_frame_boundary() {
        let mut outbox = ClientOutbox::new();
        let row = frame_bytes(b'D', &[7; 20]);
        // The first 10 bytes of a DataRow arrive and are written to the client.
        outbox.pending.extend_from_slice(&row[..10]);
        outbox.tracker.feed(&row[..10]).unwrap();
        let (chunk, injected) = outbox.next_chunk().unwrap();
        assert_eq!((chunk.len(), injected), (10, false));
        outbox.advance(10, false);
        // Now a notice is queued: it cannot go out mid-frame.
        outbox.inject.extend_from_slice(&PgError::warning("w").to_bytes());
        outbox.place_injection();
        assert_eq!(outbox.inject_at, None);
        assert!(outbox.next_chunk().is_none());
        // The rest of the row and a whole CommandComplete arrive.
        let cc = frame_bytes(b'C', b"SELECT 1\0");
        let mut rest = BytesMut::from(&row[10..]);
        rest.extend_from_slice(&cc);
        outbox.pending.extend_from_slice(&rest);
        outbox.tracker.feed(&rest).unwrap();
        outbox.place_injection();
        assert_eq!(outbox.inject_at, Some((row.len() + cc.len()) as u64));
        // Stream bytes up to the boundary, then the notice.
        let (chunk, injected) = outbox.next_chunk().unwrap();
        assert_eq!((chunk.len(), injected), (row.len() - 10 + cc.len(), false));
        outbox.advance(chunk.len(), false);
        let (chunk, injected) = outbox.next_chunk().unwrap();
        assert!(injected);
        assert_eq!(chunk[0], b'N');
        let n = chunk.len();
        outbox.advance(n, true);
        assert!(outbox.next_chunk().is_none());
        assert!(outbox.injection_done());
    }

    #[test]
    fn injection_goes_before_unwritten_partial_frame() {
        let mut outbox = ClientOutbox::new();
        let a = frame_bytes(b'D', &[1; 8]);
        let b = frame_bytes(b'D', &[2; 8]);
        let mut stream = a.clone();
        stream.extend_from_slice(&b[..4]);
        outbox.pending.extend_from_slice(&stream);
        outbox.tracker.feed(&stream).unwrap();
        PgError::admin_shutdown("bye").encode(&mut outbox.inject);
        outbox.place_injection();
        assert_eq!(
            outbox.inject_at,
            Some(a.len() as u64),
            "before the partial second row"
        );
        let (chunk, injected) = outbox.next_chunk().unwrap();
        assert_eq!((chunk, injected), (&a[..], false));
    }

    /// s6 attack finding: a held frame over the high-water mark is read on until whole (it used to
    /// hang the session), none of it leaves before it is whole, and one declared over the limit
    /// ends the session before it is buffered.
    #[test]
    fn a_big_held_frame_is_read_whole_and_never_forwarded_in_part() {
        use crate::proxy::relay::io::{HIGH_WATER, MAX_HELD_FRAME};
        let feed = |outbox: &mut ClientOutbox, bytes: &[u8]| {
            outbox.pending.extend_from_slice(bytes);
            outbox.tracker.feed(bytes).unwrap();
        };
        // Any role: a 1 MB ErrorResponse after a row; masked roles: a 1 MB DataRow.
        for (tag, hold_rows) in [(b'E', false), (b'D', true)] {
            let mut outbox = ClientOutbox::new();
            outbox.hold_rows = hold_rows;
            let row = frame_bytes(b'C', b"SELECT 1\0");
            let big = frame_bytes(tag, &vec![b'x'; 1_000_000]);
            feed(&mut outbox, &row);
            feed(&mut outbox, &big[..2 * HIGH_WATER]);
            assert_eq!(outbox.read_decision(), UpstreamRead::Read);
            assert_eq!(outbox.next_chunk().unwrap().0, &row[..], "only what precedes it");
            outbox.advance(row.len(), false);
            assert!(outbox.next_chunk().is_none(), "none of it before it is whole");
            assert_eq!(outbox.read_decision(), UpstreamRead::Read);
            feed(&mut outbox, &big[2 * HIGH_WATER..]);
            assert_eq!(outbox.next_chunk().unwrap().0, &big[..]);
            // Whole and unsent, it counts against the high-water mark like any sendable byte.
            assert_eq!(outbox.read_decision(), UpstreamRead::Wait);
        }
        // A row of a role without masks is forwarded as it arrives: plain backpressure.
        let mut outbox = ClientOutbox::new();
        let big = frame_bytes(b'D', &vec![b'x'; 1_000_000]);
        feed(&mut outbox, &big[..HIGH_WATER]);
        assert_eq!(outbox.read_decision(), UpstreamRead::Wait);
        assert_eq!(outbox.next_chunk().unwrap().0.len(), HIGH_WATER);
        // A held frame declared over the limit: refused from its header on.
        let mut outbox = ClientOutbox::new();
        let declared = MAX_HELD_FRAME + 1;
        let mut header = vec![b'E'];
        header.extend_from_slice(&((declared - 1) as i32).to_be_bytes());
        header.extend_from_slice(b"SERROR\0");
        feed(&mut outbox, &header);
        assert_eq!(outbox.read_decision(), UpstreamRead::TooLarge { declared });
        assert!(outbox.next_chunk().is_none());
    }
}
