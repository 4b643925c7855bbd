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
pub(crate) const HIGH_WATER: usize = 256 * 1024;
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
