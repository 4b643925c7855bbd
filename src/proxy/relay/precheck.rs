//! Big statements checked off the async workers: a Query or Parse too big to check inline (see
//! [`Interceptor::wants_offload`](crate::proxy::intercept::Interceptor::wants_offload)) is
//! prechecked on the blocking pool while the relay goes on serving the upstream, expiry, kills and
//! shutdown; the client's later frames wait for it, so statements stay in order and are audited
//! before they are forwarded. A panicking check is a refusal, never a crash.
//!
//! Masked roles' catalog freshness check ([`Confirming`], s7) runs the same way: raced in the
//! relay's `select!` while the statement waits for it, so it never delays a cut.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;

use crate::proxy::intercept::{Precheck, Prechecker};

/// A big statement's precheck running on the blocking pool: resolves to its frame and result.
pub(crate) type OffloadedPrecheck = Pin<Box<dyn Future<Output = (u8, Bytes, Precheck)> + Send>>;

/// Prechecks a big Query or Parse frame on the blocking pool, at most `permits` at once over the
/// instance, so that parsing megabytes of SQL never runs on (and stalls) the async workers that
/// serve every other session and the admin API.
pub(crate) fn offload_precheck(
    prechecker: Prechecker,
    permits: Arc<tokio::sync::Semaphore>,
    tag: u8,
    frame: Bytes,
) -> OffloadedPrecheck {
    Box::pin(async move {
        let _permit = permits.acquire_owned().await;
        let job = frame.clone();
        let checked = tokio::task::spawn_blocking(move || {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| prechecker.precheck(tag, &job)))
        })
        .await;
        let precheck = match checked {
            Ok(Ok(precheck)) => precheck,
            Ok(Err(_)) | Err(_) => {
                tracing::error!(
                    message.bytes = frame.len(),
                    "statement check failed; statement refused"
                );
                Prechecker::failed(frame.len())
            }
        };
        (tag, frame, precheck)
    })
}

/// Waits for the offloaded precheck (never resolves when there is none).
pub(crate) async fn wait_offloaded(offloaded: &mut Option<OffloadedPrecheck>) -> (u8, Bytes, Precheck) {
    match offloaded {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

/// A masked role's catalog freshness check
/// ([`MaskContext::confirming`](super::mask::MaskContext::confirming)) running for the frame at
/// the head of the client's frames, which waits for it; expiry, kills and shutdown do not.
pub(crate) type Confirming = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Waits for the running freshness check (never resolves when there is none).
pub(crate) async fn wait_confirmed(confirming: &mut Option<Confirming>) {
    match confirming {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

/// A masked role's second catalog check of a result (s7, F4,
/// [`confirming_result`](super::mask::confirming_result)): the result's frames wait for it;
/// expiry, kills and shutdown do not. Resolves to whether the snapshot could be confirmed.
pub(crate) type ResultConfirming = Pin<Box<dyn Future<Output = bool> + Send>>;

/// Waits for the running second check (never resolves when there is none).
pub(crate) async fn wait_result_confirmed(confirming: &mut Option<ResultConfirming>) -> bool {
    match confirming {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}
