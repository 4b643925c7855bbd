//! The client outbox: backend bytes on their way to the client, with timebox's own messages
//! (expiry warnings, denials, the final FATAL) spliced in at a frame boundary. Pure: the relay
//! feeds it what it read from the upstream and writes what [`ClientOutbox::next_chunk`] gives.
//! It never decodes a frame it does not hold; it must never split a frame or drop a byte the
//! client is owed, and never panics on an offset it cannot find (it answers [`OutboxError`]).
//!
//! Frames the relay replaces or drops while it handles one upstream read (masked rows, quota
//! drops, denial markers' errors) are edits of that read, made in stream order and applied to the
//! buffer in one pass when the read is handled ([`ClientOutbox::finish_edits`]): the work per read
//! is linear in its bytes, however many of its frames are replaced.

use std::ops::Range;

use bytes::{Buf, BytesMut};

use super::held::held_tag;
use super::io::{upstream_read, UpstreamRead, HIGH_WATER};
use crate::proxy::wire::{FrameTracker, PgError, TrackError};

/// Initial capacity of the outbox buffer.
const BUFFER_CAPACITY: usize = 16 * 1024;

/// The rebuilt-bytes buffer keeps its allocation between reads up to this capacity (a read with a
/// huge replaced frame does not pin a second huge buffer for the rest of the session).
const SPLICED_KEEP: usize = 2 * HIGH_WATER;

/// A frame the outbox was asked for that it does not hold as asked: an internal error of the
/// relay (offsets out of step with the buffer), which ends the session ([`lost_track`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum OutboxError {
    /// The upstream range is not within the unsent bytes (already written, not read yet, or
    /// reversed).
    #[error("frame at upstream offsets {start}..{end} is not among the bytes the outbox holds")]
    NotHeld { start: u64, end: u64 },
    /// An edit before one already made in the same read (edits are made in stream order).
    #[error("frame at upstream offsets {start}..{end} edited after a later frame of its read")]
    OutOfOrder { start: u64, end: u64 },
}

/// The FATAL XX000 a client gets when the relay lost track of the backend stream
/// ([`OutboxError`]): nothing more of its results is sent, since what is unsent may not be
/// masked or cut as its role requires.
pub(crate) fn lost_track() -> PgError {
    PgError::internal(
        "terminating connection: timebox lost track of the server's messages (an internal error); the rest of this session's results were not sent",
    )
    .with_hint("Reconnect and run the statement again; tell the timebox administrators if it happens again.")
}

/// The edits of the read being handled: `pending[base..cursor]` as it will be is in
/// `ClientOutbox::spliced`; `pending` itself is unchanged until [`ClientOutbox::finish_edits`].
#[derive(Debug, Clone, Copy)]
struct Splice {
    /// Index in `pending` where the first edited frame begins; the bytes before it stay put.
    base: usize,
    /// Index in `pending` up to which the bytes are accounted for in `spliced`.
    cursor: usize,
}

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
    /// Client offset minus upstream offset (edits of the read being handled not included).
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
    /// The edits of the read being handled, if any frame of it was replaced or dropped.
    splice: Option<Splice>,
    /// The rebuilt bytes of the edited part of `pending` (its allocation is reused).
    spliced: BytesMut,
    /// The relay lost track of the stream ([`ClientOutbox::abandon`]): no stream byte goes to the
    /// client any more, only timebox's final message.
    abandoned: bool,
    /// A masked role's result waits for a second catalog check (s7, F4): the client offset (a
    /// frame boundary) of its first frame, before which the stream may go and from which nothing
    /// goes, nor is more read from the upstream, until [`ClientOutbox::resume`].
    pause: Option<u64>,
    /// Bytes the edits copied or moved (unit tests check the work per read is linear).
    #[cfg(test)]
    pub(crate) moved: u64,
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
            splice: None,
            spliced: BytesMut::new(),
            abandoned: false,
            pause: None,
            #[cfg(test)]
            moved: 0,
        }
    }

    /// The client offset of upstream offset `upstream_offset`, this read's edits included: valid
    /// for offsets at or after the last edit (the relay asks for the frame it is at or the end of
    /// the read, never for a frame before one it edited).
    pub(crate) fn to_client(&self, upstream_offset: u64) -> u64 {
        (upstream_offset as i64)
            .saturating_add(self.delta)
            .saturating_add(self.edit_delta()) as u64
    }

    /// How much this read's edits so far lengthen (or shorten) the stream.
    fn edit_delta(&self) -> i64 {
        self.splice
            .map_or(0, |s| self.spliced.len() as i64 - (s.cursor - s.base) as i64)
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
        // Masked roles: every frame until whole (s9: the wrap and the masks drop ReadyForQuery,
        // notices and notifications by type; a header written ahead of its body could not be
        // taken back, and the outbox's count of written bytes went wrong — a panic).
        let held = held_tag(tag)
            || (self.hold_all && tag != 0 && tag != b'D' && tag != b'd')
            || (self.hold_rows && tag != 0);
        (t.in_header() || held).then(|| self.last_boundary())
    }

    /// Whether to read more from the upstream ([`upstream_read`]): the bytes before the hold point
    /// may go to the client now; a held frame still arriving (whose declared length is known once
    /// its header is) is read on until whole, and never leaves in part.
    pub(crate) fn read_decision(&self) -> UpstreamRead {
        if self.pause.is_some() {
            // The held frames of the last read are not all handled yet.
            return UpstreamRead::Wait;
        }
        let pending = self.pending.len();
        let Some(hold) = self.hold_point() else {
            return upstream_read(pending, None);
        };
        let sendable = (hold.saturating_sub(self.written) as usize).min(pending);
        let declared = self.tracker.unfinished_frame().map(|(_, start, end)| end - start);
        upstream_read(sendable, declared)
    }

    /// Picks the injection point if one is not chosen yet: the latest boundary not yet passed.
    /// While a read's edits are open the boundaries are not final: the relay places the
    /// injection once the read is handled.
    pub(crate) fn place_injection(&mut self) {
        if self.inject.is_empty() || self.inject_at.is_some() || self.splice.is_some() {
            return;
        }
        if self.abandoned {
            self.inject_at = Some(self.written);
            return;
        }
        if let Some(pause) = self.pause {
            // The boundaries after it are not final until the paused frames are handled.
            self.inject_at = Some(pause.max(self.written));
            return;
        }
        let boundary = self.last_boundary();
        if boundary >= self.written {
            self.inject_at = Some(boundary);
        }
    }

    /// The bytes to write next (stream bytes up to the injection or hold point, then the injection).
    /// Nothing while a read's edits are open (the buffer still holds the frames as the server sent
    /// them), and no stream byte once the outbox is abandoned.
    pub(crate) fn next_chunk(&self) -> Option<(&[u8], bool)> {
        if self.splice.is_some() {
            return None;
        }
        let mut limit = self.written + self.pending.len() as u64;
        if self.abandoned {
            limit = self.written;
        }
        if let Some(hold) = self.hold_point() {
            limit = limit.min(hold);
        }
        if let Some(pause) = self.pause {
            limit = limit.min(pause);
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

    /// The index in `pending` (as it is before this read's edits are applied) of upstream offset
    /// `at`, if it is within the unsent bytes.
    fn index(&self, at: u64) -> Option<usize> {
        let client = i64::try_from(at).ok()?.checked_add(self.delta)?;
        let i = u64::try_from(client).ok()?.checked_sub(self.written)?;
        usize::try_from(i).ok().filter(|&i| i <= self.pending.len())
    }

    /// The indexes in `pending` of the upstream range `start..end`.
    fn range(&self, start: u64, end: u64) -> Result<Range<usize>, OutboxError> {
        match (self.index(start), self.index(end)) {
            (Some(from), Some(to)) if from <= to => Ok(from..to),
            _ => Err(OutboxError::NotHeld { start, end }),
        }
    }

    /// The bytes of a complete, held frame given in upstream offsets, as the server sent them
    /// (edits of the read being handled are not applied yet).
    pub(crate) fn frame_bytes(&self, start: u64, end: u64) -> Result<&[u8], OutboxError> {
        let range = self.range(start, end)?;
        Ok(&self.pending[range])
    }

    /// Replaces a complete, held frame (upstream offsets) with `replacement`; with `start == end`,
    /// inserts `replacement` there. The edits of one read are made in stream order (an edit
    /// before an earlier one's end is refused) and take effect at [`Self::finish_edits`].
    pub(crate) fn replace_frame(
        &mut self,
        start: u64,
        end: u64,
        replacement: &[u8],
    ) -> Result<(), OutboxError> {
        let range = self.range(start, end)?;
        let splice = self.splice.unwrap_or(Splice {
            base: range.start,
            cursor: range.start,
        });
        if range.start < splice.cursor {
            return Err(OutboxError::OutOfOrder { start, end });
        }
        // The unchanged bytes since the last edit, then the replacement: each byte once.
        self.spliced
            .extend_from_slice(&self.pending[splice.cursor..range.start]);
        self.spliced.extend_from_slice(replacement);
        #[cfg(test)]
        {
            self.moved += (range.start - splice.cursor + replacement.len()) as u64;
        }
        self.splice = Some(Splice {
            base: splice.base,
            cursor: range.end,
        });
        Ok(())
    }

    /// Applies the edits of the read just handled to `pending` in one pass: the bytes after the
    /// last edit move once, the rebuilt ones are copied in once.
    pub(crate) fn finish_edits(&mut self) {
        let Some(Splice { base, cursor }) = self.splice.take() else {
            return;
        };
        let (len, rebuilt) = (self.pending.len(), self.spliced.len());
        let new_len = base + rebuilt + (len - cursor);
        if new_len > len {
            self.pending.resize(new_len, 0);
        }
        self.pending.copy_within(cursor..len, base + rebuilt);
        self.pending.truncate(new_len);
        self.pending[base..base + rebuilt].copy_from_slice(&self.spliced);
        self.delta += rebuilt as i64 - (cursor - base) as i64;
        #[cfg(test)]
        {
            self.moved += (len - cursor + rebuilt) as u64;
        }
        self.spliced.clear();
        if self.spliced.capacity() > SPLICED_KEEP {
            self.spliced = BytesMut::new();
        }
    }

    /// The relay lost track of the stream (an [`OutboxError`]): every unsent stream byte is
    /// discarded and none goes to the client any more (what is unsent may hold rows not masked
    /// yet); only timebox's final message, queued next, goes out, at once.
    pub(crate) fn abandon(&mut self) {
        self.abandoned = true;
        self.splice = None;
        self.spliced.clear();
        self.pending.clear();
        self.inject_at = None;
        self.pause = None;
    }

    /// Stops the stream at the complete frame starting at upstream offset `start` (edits of its
    /// read finished first, [`Self::finish_edits`]): the bytes before it may go to the client,
    /// none from it on, and nothing more is read from the upstream, until [`Self::resume`]. A
    /// message queued meanwhile goes out at the pause.
    pub(crate) fn pause_at(&mut self, start: u64) -> Result<(), OutboxError> {
        self.finish_edits();
        self.index(start)
            .ok_or(OutboxError::NotHeld { start, end: start })?;
        self.pause = Some(self.to_client(start));
        Ok(())
    }

    /// The paused frames are being handled again: the stream goes on past the pause.
    pub(crate) fn resume(&mut self) {
        self.pause = None;
    }

    /// The outbox was abandoned: the session is ending, nothing of the stream goes out.
    pub(crate) fn abandoned(&self) -> bool {
        self.abandoned
    }

    /// Tracks the `n` bytes just read into `pending` after its first `before` bytes, noting each
    /// completed frame the relay inspects (held tags and ReadyForQuery) as `(tag, start, end)`.
    pub(crate) fn track_read(
        &mut self,
        before: usize,
        n: usize,
        held: &mut Vec<(u8, u64, u64)>,
    ) -> Result<(), TrackError> {
        if self.abandoned {
            // Nothing of it will be sent: not kept, not handled.
            self.pending.clear();
            return Ok(());
        }
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
    /// that follows it (`end` may not precede a frame of its read already edited).
    pub(crate) fn inject_after(&mut self, end: u64) -> Result<(), OutboxError> {
        let at = self.index(end).ok_or(OutboxError::NotHeld { start: end, end })?;
        if self.splice.is_some_and(|s| at < s.cursor) {
            return Err(OutboxError::OutOfOrder { start: end, end });
        }
        self.inject_at = Some(self.to_client(end));
        Ok(())
    }

    /// True once the final message is delivered (nothing injected still waiting).
    pub(crate) fn drained(&self) -> bool {
        self.injection_done() && self.inject_at.is_none()
    }

    /// The upstream is gone: the whole frames still owed to the client, then `lost` (unless the
    /// client is mid-frame, where nothing more can be said cleanly).
    pub(crate) fn take_before_loss(&mut self, lost: &PgError) -> BytesMut {
        if self.abandoned {
            let mut out = BytesMut::new();
            lost.encode(&mut out);
            return out;
        }
        if let Some(pause) = self.pause {
            // The frames from the pause on were not judged yet: none goes.
            let before = (pause.saturating_sub(self.written) as usize).min(self.pending.len());
            let mut out = self.pending.split_to(before);
            lost.encode(&mut out);
            return out;
        }
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
#[path = "outbox_tests.rs"]
mod tests;
