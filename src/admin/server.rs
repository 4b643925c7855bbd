//! The admin listener's HTTP/1 server: the accept loop that serves [`super::router`] with bounds on
//! what a client can hold.
//!
//! Where it sits: started by [`crate::app::run`] beside the proxy listener, stopped by the instance's
//! shutdown token. What it bounds (every one a config key, see [`AdminLimits`]):
//! - connections served at once (`admin.max_connections`): past it a connection gets one
//!   `503 {"code": "too_many_connections"}` and is closed, so idle or half-sent connections cannot
//!   use up the process's file descriptors (which the proxy needs for its own logins);
//! - the time to send a request header (`admin.header_timeout`, hyper's header read timeout, which
//!   also bounds how long a kept-alive connection may wait for its next request);
//! - inactivity (`admin.idle_timeout`): a connection that moves no byte either way for this long
//!   (a stalled body upload, a client that stopped reading) is closed.
//!
//! It must never hold a connection without a deadline, nor spin when `accept` fails (out of file
//! descriptors): it backs off and tries again.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::AdminConfig;

/// How long open connections may take to finish their requests once shutdown begins.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(5);
/// Pause after a failed `accept` (e.g. EMFILE) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The admin listener's bounds (from `[admin]`).
#[derive(Debug, Clone, Copy)]
pub struct AdminLimits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
}

impl From<&AdminConfig> for AdminLimits {
    fn from(c: &AdminConfig) -> Self {
        AdminLimits {
            max_connections: c.max_connections,
            header_timeout: c.header_timeout,
            idle_timeout: c.idle_timeout,
        }
    }
}

/// The whole answer to a connection over `admin.max_connections` (sent without reading the
/// request). Pure.
pub fn over_limit_response(limit: usize) -> Vec<u8> {
    let body = serde_json::json!({
        "code": "too_many_connections",
        "message": format!(
            "the admin API is serving its limit of {limit} connections (admin.max_connections); try again shortly"
        ),
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
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::debug!(client.addr = %peer, limit = limits.max_connections, "admin connection over the limit refused");
            // One non-blocking write into a fresh socket's empty send buffer, then close.
            let _ = tcp.try_write(&over_limit_response(limits.max_connections));
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (io, activity) = Watched::new(tcp);
        let connection =
            graceful.watch(http.serve_connection(TokioIo::new(io), TowerToHyperService::new(router.clone())));
        let idle_timeout = limits.idle_timeout;
        tokio::spawn(async move {
            let _permit = permit;
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
        let raw = String::from_utf8(over_limit_response(7)).unwrap();
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
    }
}
