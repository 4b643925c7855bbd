//! One poll of the relay's four I/O directions (client read/write, upstream read/write), driven
//! from the relay's single task: no locks, no per-message allocation, buffers reused, and each
//! wake-up writes whatever is pending in one write call per direction. Backend bytes are only
//! followed frame by frame ([`ClientOutbox::track_read`]), never decoded here.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::AsyncWrite;
use tokio_util::io::poll_read_buf;

use super::outbox::ClientOutbox;
use crate::proxy::stream::{ClientStream, UpstreamStream};

/// Buffered bytes per direction before the relay stops reading from the sender (backpressure).
/// Upstream bytes of a held frame still arriving do not count: the frame cannot leave until it is
/// whole, so waiting for the client to take them would wait forever ([`upstream_read`]).
pub(crate) const HIGH_WATER: usize = 256 * 1024;
/// Largest backend frame the relay holds whole before the client sees any of it (every
/// ErrorResponse, CommandComplete and ParameterStatus; a masked role's rows; every frame once a
/// quota stopped a result), tag and length word included. The default of `proxy.max_message_bytes`,
/// the bound on frontend messages: ample for error messages and rows, where PostgreSQL's own 1 GB
/// per field is more than a proxy holding one such frame per session can afford. A session's
/// outbox stays under `HIGH_WATER + MAX_HELD_FRAME` plus one read.
pub(crate) const MAX_HELD_FRAME: u64 = 64 * 1024 * 1024;
/// Initial capacity of each relay buffer.
const BUFFER_CAPACITY: usize = 16 * 1024;

/// The bytes between the two sides.
pub(crate) struct Buffers {
    /// Client bytes read and not yet taken apart into frames.
    pub from_client: BytesMut,
    /// Frontend frames released to the upstream, not yet written.
    pub to_upstream: BytesMut,
    /// Backend bytes on their way to the client.
    pub outbox: ClientOutbox,
    /// Frames the relay inspects that completed in the last upstream read: (tag, start, end).
    pub held_frames: Vec<(u8, u64, u64)>,
    /// A TLS stream needs a flush after a write to put the bytes on the wire.
    pub client_needs_flush: bool,
    pub upstream_needs_flush: bool,
}

impl Buffers {
    pub(crate) fn new() -> Self {
        Buffers {
            from_client: BytesMut::with_capacity(BUFFER_CAPACITY),
            to_upstream: BytesMut::with_capacity(BUFFER_CAPACITY),
            outbox: ClientOutbox::new(),
            held_frames: Vec::new(),
            client_needs_flush: false,
            upstream_needs_flush: false,
        }
    }
}

/// Whether the relay reads from the upstream, given what the client outbox holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UpstreamRead {
    /// Room below the high-water mark: read.
    Read,
    /// The client has [`HIGH_WATER`] bytes it may be sent to take first (backpressure).
    Wait,
    /// The held frame arriving declares `declared` bytes, more than [`MAX_HELD_FRAME`]: it is never
    /// buffered whole nor forwarded in part; the session ends.
    TooLarge { declared: u64 },
}

/// Pure: whether to read from the upstream, given `sendable` (outbox bytes the client may be sent
/// now, before the held frame if one is arriving) and the held frame's declared length once its
/// header is known. A held frame arriving is read on until it is whole, bounded by
/// [`MAX_HELD_FRAME`]; only the bytes the client may take count against [`HIGH_WATER`].
pub(crate) fn upstream_read(sendable: usize, held_declared: Option<u64>) -> UpstreamRead {
    match held_declared {
        Some(declared) if declared > MAX_HELD_FRAME => UpstreamRead::TooLarge { declared },
        _ if sendable >= HIGH_WATER => UpstreamRead::Wait,
        _ => UpstreamRead::Read,
    }
}

/// Which directions to poll this round.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Wants {
    pub read_client: bool,
    pub read_upstream: bool,
    pub write_upstream: bool,
    /// A big statement's precheck came back: go on with the client's frames.
    pub resume_frames: bool,
}

/// What one poll of the four I/O directions produced.
#[derive(Default)]
pub(crate) struct IoEvents {
    pub client_read: Option<std::io::Result<usize>>,
    pub upstream_read: Option<std::io::Result<usize>>,
    pub client_wrote: Option<(std::io::Result<usize>, bool)>,
    pub upstream_wrote: Option<std::io::Result<usize>>,
    pub client_flushed: Option<std::io::Result<()>>,
    pub upstream_flushed: Option<std::io::Result<()>>,
    pub resume_frames: bool,
}

impl IoEvents {
    fn any(&self) -> bool {
        self.client_read.is_some()
            || self.upstream_read.is_some()
            || self.client_wrote.is_some()
            || self.upstream_wrote.is_some()
            || self.client_flushed.is_some()
            || self.upstream_flushed.is_some()
            || self.resume_frames
    }
}

/// Polls every direction `wants` names once; ready when any of them made progress.
pub(crate) fn poll(
    cx: &mut Context<'_>,
    client: &mut ClientStream,
    upstream: &mut UpstreamStream,
    b: &mut Buffers,
    wants: Wants,
) -> Poll<IoEvents> {
    let mut ev = IoEvents {
        resume_frames: wants.resume_frames,
        ..IoEvents::default()
    };
    if wants.read_client {
        if let Poll::Ready(r) = poll_read_buf(Pin::new(&mut *client), cx, &mut b.from_client) {
            ev.client_read = Some(r);
        }
    }
    if let Some((chunk, injected)) = b.outbox.next_chunk() {
        if let Poll::Ready(r) = Pin::new(&mut *client).poll_write(cx, chunk) {
            ev.client_wrote = Some((r, injected));
        }
    } else if b.client_needs_flush {
        if let Poll::Ready(r) = Pin::new(&mut *client).poll_flush(cx) {
            ev.client_flushed = Some(r);
        }
    }
    if wants.write_upstream {
        if let Poll::Ready(r) = Pin::new(&mut *upstream).poll_write(cx, &b.to_upstream) {
            ev.upstream_wrote = Some(r);
        }
    } else if b.upstream_needs_flush {
        if let Poll::Ready(r) = Pin::new(&mut *upstream).poll_flush(cx) {
            ev.upstream_flushed = Some(r);
        }
    }
    if wants.read_upstream {
        let before = b.outbox.pending.len();
        if let Poll::Ready(r) = poll_read_buf(Pin::new(&mut *upstream), cx, &mut b.outbox.pending) {
            if let Ok(n) = &r {
                if b.outbox.track_read(before, *n, &mut b.held_frames).is_err() {
                    ev.upstream_read = Some(Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "corrupt frame from upstream",
                    )));
                    return Poll::Ready(ev);
                }
            }
            ev.upstream_read = Some(r);
        }
    }
    if ev.any() {
        Poll::Ready(ev)
    } else {
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// s6 attack finding: a held frame (a 1 MB ErrorResponse, a masked role's 1 MB row) bigger
    /// than `HIGH_WATER` used to stop the reads it needed to complete: the session hung.
    #[test]
    fn the_upstream_is_read_until_a_held_frame_is_whole_within_its_limit() {
        use UpstreamRead::{Read, TooLarge, Wait};
        // Frames forwarded as they arrive: backpressure at the high-water mark.
        assert_eq!(upstream_read(0, None), Read);
        assert_eq!(upstream_read(HIGH_WATER - 1, None), Read);
        assert_eq!(upstream_read(HIGH_WATER, None), Wait);
        // A held frame arriving is read on, however much of it is buffered (not counted here)...
        assert_eq!(upstream_read(0, Some(1_000_000)), Read);
        assert_eq!(upstream_read(HIGH_WATER - 1, Some(MAX_HELD_FRAME)), Read);
        // ...unless the client has the high-water mark's worth before it to take first.
        assert_eq!(upstream_read(HIGH_WATER, Some(1_000_000)), Wait);
        // Over the limit: the session ends, whatever else waits.
        let over = MAX_HELD_FRAME + 1;
        assert_eq!(upstream_read(0, Some(over)), TooLarge { declared: over });
        let max = i32::MAX as u64 + 1;
        assert_eq!(upstream_read(HIGH_WATER, Some(max)), TooLarge { declared: max });
    }
}
