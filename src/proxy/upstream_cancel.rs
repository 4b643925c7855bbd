//! Stops severed sessions' upstream queries in batches (issue 18): one connection of timebox's own
//! per (target, role), opened with the role's credential (`application_name = timebox:cancel`),
//! ends the backends of every session of that role being cut at about the same moment with one
//! `pg_terminate_backend` query, instead of one CancelRequest each (a new connection and a forked
//! PostgreSQL process per session, eight at a time, which at 1,000 sessions took past 2 s).
//!
//! Where it sits: after a session's client has its FATAL, [`super::session`] asks
//! [`BatchStops::terminate`] for its backend pid (known from BackendKeyData) through
//! [`super::cancel::stop_upstream`]; a worker task per (target, role) gathers the pids that arrive
//! within [`BATCH_WINDOW`] (and those queued while its previous query ran), sends one query, and
//! answers each session. `pg_terminate_backend` rather than `pg_cancel_backend`: the session is
//! over, and a terminated backend runs nothing more, not even statements a pipelining client had
//! queued behind the running one. A role may signal its own backends; the query only signals pids
//! that `pg_stat_activity` shows under the connection's own user, so a pid reused by another
//! role's backend is never touched. When the connection cannot be opened or the query fails, every
//! session of the batch falls back to a CancelRequest (the caller does).
//!
//! Must never delay a client's FATAL (it runs after it), never hold a connection to a target
//! longer than [`IDLE_CLOSE`] after its last batch, and never log a credential.

use std::collections::HashSet;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::BytesMut;
use dashmap::DashMap;
use postgres_protocol::message::{backend, frontend};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::stream::UpstreamStream;
use super::upstream::{self, UpstreamError};
use super::ProxyContext;

/// How long a batch waits for more sessions' pids after its first one (long enough for a mass
/// cut's FATALs to be written first; none is delayed by the backends' exits). An urgent request (a
/// session with statements queued behind the running one) ends the wait at once.
pub const BATCH_WINDOW: Duration = Duration::from_millis(10);
/// The most pids one query signals.
pub const MAX_BATCH: usize = 4096;
/// How long opening the batch connection may take; past it the batch falls back to CancelRequests.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long one batch query may take.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(1);
/// The batch connection is closed once no batch came for this long.
pub const IDLE_CLOSE: Duration = Duration::from_secs(10);
/// The `application_name` of the batch connection (seen in `pg_stat_activity`).
pub const APPLICATION_NAME: &str = "timebox:cancel";

#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("opening the batch cancel connection: {0}")]
    Connect(#[source] UpstreamError),
    #[error("target {target:?} or its role {role:?} is no longer configured")]
    NotConfigured { target: String, role: String },
    #[error("batch cancel connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("the target refused the batch cancel query: {0}")]
    Query(String),
    #[error("the target's answer to the batch cancel query is not what it returns: {0}")]
    Protocol(&'static str),
    #[error("the batch cancel query took longer than {0:?}")]
    Timeout(Duration),
    #[error("the instance is shutting down")]
    Gone,
}

/// One session's request: end backend `pid`; the answer says whether it was signalled (`false`:
/// no such backend of this role any more, it already exited).
struct Request {
    pid: i32,
    /// Statements wait behind the running one: the batch goes without waiting for others.
    urgent: bool,
    reply: oneshot::Sender<Result<bool, Arc<BatchError>>>,
}

/// The batch workers, one per (target name, role name), started on first use.
#[derive(Debug, Default)]
pub struct BatchStops {
    workers: DashMap<(String, String), mpsc::UnboundedSender<Request>>,
}

impl BatchStops {
    /// Ends backend `pid` of a session of `role` on `target` through the batch connection
    /// (`urgent`: without waiting for other sessions); `Ok(true)` once the signal is sent,
    /// `Ok(false)` when no such backend of the role was there. The caller bounds the wait.
    pub(crate) async fn terminate(
        &self,
        ctx: &Arc<ProxyContext>,
        (target, role): (&str, &str),
        pid: i32,
        urgent: bool,
    ) -> Result<bool, Arc<BatchError>> {
        let (reply, answer) = oneshot::channel();
        let key = (target.to_owned(), role.to_owned());
        let worker = self
            .workers
            .entry(key.clone())
            .or_insert_with(|| {
                let (tx, rx) = mpsc::unbounded_channel();
                tokio::spawn(run_worker(Arc::downgrade(ctx), key, rx));
                tx
            })
            .clone();
        worker
            .send(Request { pid, urgent, reply })
            .map_err(|_| Arc::new(BatchError::Gone))?;
        answer.await.map_err(|_| Arc::new(BatchError::Gone))?
    }
}

/// A worker: gathers requests into batches and runs them on its connection. Holds the instance
/// weakly (the instance holds the worker's channel); ends when the instance is gone.
async fn run_worker(
    ctx: Weak<ProxyContext>,
    key: (String, String),
    mut requests: mpsc::UnboundedReceiver<Request>,
) {
    let mut conn: Option<UpstreamStream> = None;
    loop {
        let first = match tokio::time::timeout(IDLE_CLOSE, requests.recv()).await {
            Ok(Some(first)) => first,
            Ok(None) => return,
            Err(_) => {
                if let Some(c) = conn.take() {
                    close(c).await;
                }
                continue;
            }
        };
        let batch = gather(first, &mut requests, BATCH_WINDOW).await;
        let pids: Vec<i32> = batch.iter().map(|r| r.pid).collect();
        let started = Instant::now();
        let signalled = match ctx.upgrade() {
            Some(ctx) => run_batch(&ctx, &key, &mut conn, &pids).await,
            None => Err(BatchError::Gone),
        };
        match signalled {
            Ok(signalled) => {
                tracing::debug!(
                    target = %key.0,
                    role = %key.1,
                    pids = pids.len(),
                    signalled = signalled.len(),
                    took_us = started.elapsed().as_micros() as u64,
                    "batch of upstream backends terminated"
                );
                for r in batch {
                    let _ = r.reply.send(Ok(signalled.contains(&r.pid)));
                }
            }
            Err(e) => {
                tracing::warn!(target = %key.0, role = %key.1, pids = pids.len(), error = %e, "batch cancel failed; falling back to CancelRequests");
                conn = None;
                let e = Arc::new(e);
                for r in batch {
                    let _ = r.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// A batch: `first`, whatever is queued behind it, and what arrives within `window` of it unless
/// one of them is urgent; at most [`MAX_BATCH`].
async fn gather(
    first: Request,
    requests: &mut mpsc::UnboundedReceiver<Request>,
    window: Duration,
) -> Vec<Request> {
    let mut urgent = first.urgent;
    let mut batch = vec![first];
    let window = Instant::now() + window;
    while batch.len() < MAX_BATCH {
        let next = match requests.try_recv() {
            Ok(r) => Some(r),
            Err(_) if urgent => None,
            Err(_) => tokio::time::timeout_at(window, requests.recv())
                .await
                .ok()
                .flatten(),
        };
        let Some(r) = next else { break };
        urgent |= r.urgent;
        batch.push(r);
    }
    batch
}

/// Opens the connection if needed and runs one batch on it; the pids it signalled.
async fn run_batch(
    ctx: &ProxyContext,
    key: &(String, String),
    conn: &mut Option<UpstreamStream>,
    pids: &[i32],
) -> Result<HashSet<i32>, BatchError> {
    let stream = match conn {
        Some(stream) => stream,
        None => {
            let not_configured = || BatchError::NotConfigured {
                target: key.0.clone(),
                role: key.1.clone(),
            };
            let target = ctx.config.targets.get(&key.0).ok_or_else(not_configured)?;
            let credential = target.credentials.get(&key.1).ok_or_else(not_configured)?;
            let tls = ctx.proxy.upstream_tls.get(&target.name).cloned().flatten();
            let settings = [("application_name".to_string(), APPLICATION_NAME.to_string())];
            let salted = &ctx.proxy.salted_passwords;
            let opened = upstream::connect(target, credential, tls, &settings, CONNECT_TIMEOUT, salted)
                .await
                .map_err(BatchError::Connect)?;
            conn.insert(opened.stream)
        }
    };
    tokio::time::timeout(QUERY_TIMEOUT, query(stream, pids))
        .await
        .map_err(|_| BatchError::Timeout(QUERY_TIMEOUT))?
}

/// The batch query for `pids`: one row (pid) per backend it signalled. Pure. The pids are
/// integers timebox formats itself (from BackendKeyData), never text from a client. `OFFSET 0`
/// keeps the planner from signalling before the own-user filter ran.
pub(crate) fn terminate_sql(pids: &[i32]) -> String {
    let list: Vec<String> = pids.iter().map(i32::to_string).collect();
    format!(
        "SELECT pid FROM (SELECT pid FROM pg_catalog.pg_stat_activity WHERE pid = ANY ('{{{}}}'::int4[]) AND usename = current_user OFFSET 0) AS own WHERE pg_catalog.pg_terminate_backend(pid)",
        list.join(",")
    )
}

/// Sends the batch query and reads its answer up to ReadyForQuery.
async fn query(stream: &mut UpstreamStream, pids: &[i32]) -> Result<HashSet<i32>, BatchError> {
    let mut out = BytesMut::new();
    frontend::query(&terminate_sql(pids), &mut out)?;
    stream.write_all(&out).await?;
    stream.flush().await?;
    let mut buf = BytesMut::with_capacity(8 * 1024);
    let mut signalled = HashSet::new();
    let mut failure = None;
    loop {
        let message = loop {
            if let Some(m) = backend::Message::parse(&mut buf)? {
                break m;
            }
            if stream.read_buf(&mut buf).await? == 0 {
                return Err(BatchError::Protocol("connection closed before ReadyForQuery"));
            }
        };
        match message {
            backend::Message::DataRow(row) => {
                signalled.insert(pid_of(&row)?);
            }
            backend::Message::ErrorResponse(e) => failure = Some(error_message(&e)),
            backend::Message::ReadyForQuery(_) => break,
            _ => {}
        }
    }
    match failure {
        Some(e) => Err(BatchError::Query(e)),
        None => Ok(signalled),
    }
}

/// The pid in a one-column text row.
fn pid_of(row: &backend::DataRowBody) -> Result<i32, BatchError> {
    use fallible_iterator::FallibleIterator;
    let range = row
        .ranges()
        .next()?
        .flatten()
        .ok_or(BatchError::Protocol("a row without a pid"))?;
    std::str::from_utf8(&row.buffer()[range])
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or(BatchError::Protocol("a pid that is not an integer"))
}

fn error_message(e: &backend::ErrorResponseBody) -> String {
    use fallible_iterator::FallibleIterator;
    let mut fields = e.fields();
    while let Ok(Some(field)) = fields.next() {
        if field.type_() == b'M' {
            return String::from_utf8_lossy(field.value_bytes()).into_owned();
        }
    }
    String::new()
}

/// Ends an idle batch connection politely.
async fn close(mut stream: UpstreamStream) {
    let mut out = BytesMut::new();
    frontend::terminate(&mut out);
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        stream.write_all(&out).await?;
        stream.shutdown().await
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_batch_query_lists_the_pids_and_only_signals_the_roles_own_backends() {
        let sql = terminate_sql(&[42, 7, -1]);
        assert!(sql.contains("ANY ('{42,7,-1}'::int4[])"), "{sql}");
        assert!(sql.contains("usename = current_user OFFSET 0) AS own"), "{sql}");
        assert!(sql.contains("pg_terminate_backend(pid)"), "{sql}");
        assert!(terminate_sql(&[]).contains("'{}'::int4[]"));
    }

    fn request(pid: i32, urgent: bool) -> Request {
        Request {
            pid,
            urgent,
            reply: oneshot::channel().0,
        }
    }

    fn pids(batch: &[Request]) -> Vec<i32> {
        batch.iter().map(|r| r.pid).collect()
    }

    /// Generous: the tests below must not depend on it elapsing.
    const LONG: Duration = Duration::from_secs(3600);

    #[tokio::test]
    async fn a_batch_takes_what_is_queued_and_what_comes_within_the_window() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        tx.send(request(2, false)).unwrap();
        let late = tokio::spawn(async move {
            tokio::task::yield_now().await;
            tx.send(request(3, false)).unwrap();
            // The channel closes here: the window ends early.
        });
        let batch = gather(request(1, false), &mut rx, LONG);
        let batch = tokio::time::timeout(Duration::from_secs(60), batch)
            .await
            .expect("gathered");
        assert_eq!(pids(&batch), [1, 2, 3]);
        late.await.unwrap();
    }

    #[tokio::test]
    async fn an_urgent_request_does_not_wait_for_the_window() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        tx.send(request(2, true)).unwrap();
        // The sender stays open: a batch that waited for the window would not return.
        let batch = gather(request(1, false), &mut rx, LONG);
        let batch = tokio::time::timeout(Duration::from_secs(60), batch).await;
        assert_eq!(pids(&batch.expect("no wait for the window")), [1, 2]);
        let alone = gather(request(5, true), &mut rx, LONG);
        let alone = tokio::time::timeout(Duration::from_secs(60), alone).await;
        assert_eq!(pids(&alone.expect("no wait")), [5]);
        drop(tx);
    }

    #[test]
    fn errors_name_what_failed_without_a_credential() {
        let e = BatchError::NotConfigured {
            target: "shop".into(),
            role: "read".into(),
        };
        assert!(e.to_string().contains("\"shop\""), "{e}");
        assert!(BatchError::Timeout(QUERY_TIMEOUT).to_string().contains("1s"));
    }
}
