//! The admin listener's HTTP/1 server: the accept loop that serves [`super::router`] with bounds on
//! what a client can hold.
//!
//! Where it sits: started by [`crate::app::run`] beside the proxy listener, stopped by the instance's
//! shutdown token. What it bounds (every one a config key, see [`AdminLimits`]):
//! - connections served at once (`admin.max_connections`): past it a connection gets one
//!   `503 {"code": "too_many_connections"}` and is closed, so idle or half-sent connections cannot
//!   use up the process's file descriptors (which the proxy needs for its own logins);
//! - connections from one IP address at once (`admin.max_connections_per_address`, the same 503),
//!   so one address cannot take every slot and lock operators out of revoke and kill;
//! - the time to send a request header (`admin.header_timeout`, hyper's header read timeout, which
//!   also bounds how long a kept-alive connection may wait for its next request);
//! - inactivity (`admin.idle_timeout`): a connection that moves no byte either way for this long
//!   (a stalled body upload, a client that stopped reading) is closed;
//! - the time from a request's header to its answer (`admin.request_timeout`): the body (at most
//!   [`MAX_BODY_BYTES`], else 413) must arrive whole, and the handler answer, within it; else
//!   `408 {"code": "request_timeout"}` and the connection closes. A body trickled a byte at a time
//!   resets the idle timeout but not this. The handler runs as its own task, so a late answer
//!   never cancels a change half-made (a grant issued but not audited).
//!
//! It must never hold a connection without a deadline, nor spin when `accept` fails (out of file
//! descriptors): it backs off and tries again.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::error::ApiError;
use crate::config::AdminConfig;

/// How long open connections may take to finish their requests once shutdown begins.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(5);
/// Pause after a failed `accept` (e.g. EMFILE) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Largest request body read (axum's own default for its extractors; no endpoint needs more).
pub const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;

/// The admin listener's bounds (from `[admin]`).
#[derive(Debug, Clone, Copy)]
pub struct AdminLimits {
    pub max_connections: usize,
    /// At most `max_connections`.
    pub max_connections_per_address: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub request_timeout: Duration,
}

impl From<&AdminConfig> for AdminLimits {
    fn from(c: &AdminConfig) -> Self {
        AdminLimits {
            max_connections: c.max_connections,
            max_connections_per_address: c.max_connections_per_address.min(c.max_connections),
            header_timeout: c.header_timeout,
            idle_timeout: c.idle_timeout,
            request_timeout: c.request_timeout,
        }
    }
}

/// Which limit a refused connection hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverLimit {
    /// `admin.max_connections`.
    Total(usize),
    /// `admin.max_connections_per_address`.
    PerAddress(usize),
}

/// Open connections per client address. The decision is [`PerAddress::admit`]; a slot is given
/// back when its [`AddressSlot`] drops.
#[derive(Debug, Default)]
struct PerAddress {
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection's place in [`PerAddress`].
struct AddressSlot {
    table: Arc<PerAddress>,
    ip: IpAddr,
}

impl PerAddress {
    /// Takes a slot for `ip` unless it already has `limit` connections open.
    fn admit(table: &Arc<PerAddress>, ip: IpAddr, limit: usize) -> Option<AddressSlot> {
        let mut open = table.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= limit {
            return None;
        }
        *n += 1;
        Some(AddressSlot {
            table: table.clone(),
            ip,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self.table.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// The whole answer to a connection over a connection limit (sent without reading the
/// request). Pure.
pub fn over_limit_response(over: OverLimit) -> Vec<u8> {
    let message = match over {
        OverLimit::Total(limit) => format!(
            "the admin API is serving its limit of {limit} connections (admin.max_connections); try again shortly"
        ),
        OverLimit::PerAddress(limit) => format!(
            "the admin API is serving its limit of {limit} connections from your address \
             (admin.max_connections_per_address); close some or try again shortly"
        ),
    };
    let body = serde_json::json!({
        "code": "too_many_connections",
        "message": message,
    })
    .to_string();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         retry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then lets open connections finish
/// for up to [`SHUTDOWN_DRAIN`].
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: AdminLimits,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let per_address = Arc::new(PerAddress::default());
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "admin listener: accept failed; retrying");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let admitted = match PerAddress::admit(&per_address, peer.ip(), limits.max_connections_per_address) {
            None => Err(OverLimit::PerAddress(limits.max_connections_per_address)),
            Some(address_slot) => match permits.clone().try_acquire_owned() {
                Err(_) => Err(OverLimit::Total(limits.max_connections)),
                Ok(permit) => Ok((permit, address_slot)),
            },
        };
        let slots = match admitted {
            Ok(slots) => slots,
            Err(over) => {
                tracing::debug!(client.addr = %peer, ?over, "admin connection over a limit refused");
                // One non-blocking write into a fresh socket's empty send buffer, then close.
                let _ = tcp.try_write(&over_limit_response(over));
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let (io, activity) = Watched::new(tcp);
        let service = {
            let (router, request_timeout) = (router.clone(), limits.request_timeout);
            hyper::service::service_fn(move |req| {
                let router = router.clone();
                async move { Ok::<_, std::convert::Infallible>(answer_within(router, request_timeout, req).await) }
            })
        };
        let connection = graceful.watch(http.serve_connection(TokioIo::new(io), service));
        let idle_timeout = limits.idle_timeout;
        tokio::spawn(async move {
            let _slots = slots;
            tokio::select! {
                result = connection => {
                    if let Err(e) = result {
                        tracing::debug!(client.addr = %peer, error = %e, "admin connection ended with an error");
                    }
                }
                _ = activity.idle_for(idle_timeout) => {
                    tracing::debug!(client.addr = %peer, "admin connection idle; closed");
                }
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::debug!("admin connections still open after the shutdown drain; dropped");
    }
    Ok(())
}

/// Reads `req`'s body (at most [`MAX_BODY_BYTES`]) and runs `router` on it, all within `limit` of
/// the header's arrival. The handler runs as its own task: past the deadline the client gets 408
/// and the connection closes, while a change the handler is making still completes.
async fn answer_within(
    router: Router,
    limit: Duration,
    req: hyper::Request<hyper::body::Incoming>,
) -> Response {
    use tower::ServiceExt;
    let deadline = Instant::now() + limit;
    let too_late = || {
        let mut response = ApiError::RequestTimeout { limit }.into_response();
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        response
    };
    let (parts, body) = req.into_parts();
    let body = match tokio::time::timeout_at(
        deadline,
        axum::body::to_bytes(axum::body::Body::new(body), MAX_BODY_BYTES),
    )
    .await
    {
        Err(_) => return too_late(),
        Ok(Err(e)) if is_length_limit(&e) => {
            let mut response = ApiError::BodyTooLarge {
                limit: MAX_BODY_BYTES,
            }
            .into_response();
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return response;
        }
        // The client sent a broken body or left: nobody to answer.
        Ok(Err(_)) => {
            return ApiError::BadRequest("the request body could not be read".into()).into_response()
        }
        Ok(Ok(bytes)) => bytes,
    };
    let req = axum::http::Request::from_parts(parts, axum::body::Body::from(body));
    let handler = tokio::spawn(router.oneshot(req));
    match tokio::time::timeout_at(deadline, handler).await {
        Err(_) => too_late(),
        Ok(Ok(Ok(response))) => response,
        Ok(Ok(Err(infallible))) => match infallible {},
        Ok(Err(e)) => {
            tracing::error!(error = %e, "admin request handler failed");
            ApiError::Internal("the request failed inside timebox".into()).into_response()
        }
    }
}

/// True when reading a body stopped at [`MAX_BODY_BYTES`].
fn is_length_limit(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = err.source();
    }
    false
}

/// When a connection last moved a byte, shared between its stream and its idle watchdog.
#[derive(Debug, Clone)]
struct Activity {
    origin: Instant,
    /// Milliseconds from `origin` to the last read or write that moved bytes.
    last_ms: Arc<AtomicU64>,
}

impl Activity {
    fn touch(&self) {
        let ms = self.origin.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Resolves once no byte has moved for `limit`.
    async fn idle_for(&self, limit: Duration) {
        loop {
            let last = self.origin + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = last + limit;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// A TCP stream that records its activity.
struct Watched {
    inner: TcpStream,
    activity: Activity,
}

impl Watched {
    fn new(inner: TcpStream) -> (Watched, Activity) {
        let activity = Activity {
            origin: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        };
        (
            Watched {
                inner,
                activity: activity.clone(),
            },
            activity,
        )
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn over_limit_answer_is_a_complete_json_503() {
        let raw = String::from_utf8(over_limit_response(OverLimit::Total(7))).unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 "), "{head}");
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        assert!(head.contains("connection: close"), "{head}");
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["code"], "too_many_connections");
        assert!(json["message"].as_str().unwrap().contains("limit of 7"));
        assert!(json["message"]
            .as_str()
            .unwrap()
            .contains("admin.max_connections"));
        let raw = String::from_utf8(over_limit_response(OverLimit::PerAddress(3))).unwrap();
        assert!(raw.contains("admin.max_connections_per_address"), "{raw}");
        assert!(raw.contains("too_many_connections"), "{raw}");
    }

    #[test]
    fn one_address_gets_its_limit_and_slots_come_back() {
        let table = Arc::new(PerAddress::default());
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        let first = PerAddress::admit(&table, a, 2).expect("first");
        let _second = PerAddress::admit(&table, a, 2).expect("second");
        assert!(PerAddress::admit(&table, a, 2).is_none(), "third from a");
        let _other = PerAddress::admit(&table, b, 2).expect("b is apart");
        drop(first);
        assert!(PerAddress::admit(&table, a, 2).is_some(), "freed slot");
    }
}
