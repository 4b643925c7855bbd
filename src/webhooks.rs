//! Notifications: JSON POSTs to the `[[webhooks]]` URLs when requests, grants and sessions change.
//!
//! Where it sits: the grant and request services ([`crate::grants`]), the session kill handler and
//! the expiry task call [`Webhooks::notify`], which only
//! enqueues (`try_send` on a bounded channel) and so never blocks the proxy or the API. A full queue
//! drops the *new* notification, counts it in `timebox_webhook_failures_total` and logs it; nothing
//! already queued is ever discarded to make room. [`Webhooks::run`] (started by [`crate::app::run`])
//! delivers each notification with up to [`ATTEMPTS`] tries and exponential backoff; a delivery that
//! still fails is counted and logged. The body carries a Slack-compatible `text` plus structured
//! fields. It must never carry a token.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::config::Webhook;
use crate::metrics::Metrics;

/// Notifications waiting for delivery, all webhooks together.
pub const QUEUE_CAPACITY: usize = 1024;
/// Tries per delivery (the first and two retries).
pub const ATTEMPTS: u32 = 3;
/// Deliveries in flight at once.
const CONCURRENCY: usize = 16;
/// Bound on one HTTP attempt.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

crate::config::named_enum! {
    /// What a notification announces; a `[[webhooks]]` entry subscribes to some of them (`"*"`: all).
    /// Serialised (the body's `event`, the config's `events`, the failure metric's label) as its
    /// snake_case name, which is also its [`WebhookEvent::as_str`].
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
    #[serde(rename_all = "snake_case")]
    pub enum WebhookEvent {
        RequestCreated => "request_created",
        RequestApproved => "request_approved",
        RequestDenied => "request_denied",
        RequestExpired => "request_expired",
        BreakGlass => "break_glass",
        GrantIssued => "grant_issued",
        GrantExtended => "grant_extended",
        GrantRevoked => "grant_revoked",
        GrantExpired => "grant_expired",
        SessionKilled => "session_killed",
    }
}

/// One event to announce: what happened, a sentence for chat, and structured fields (an object
/// merged into the body).
#[derive(Debug, Clone, Serialize)]
pub struct Notification {
    pub event: WebhookEvent,
    pub text: String,
    pub at: DateTime<Utc>,
    #[serde(flatten)]
    pub fields: serde_json::Map<String, serde_json::Value>,
}

impl Notification {
    /// A notification with `fields` (a JSON object; anything else is ignored).
    pub fn new(event: WebhookEvent, text: String, fields: serde_json::Value, at: DateTime<Utc>) -> Self {
        let fields = match fields {
            serde_json::Value::Object(map) => map,
            _ => serde_json::Map::new(),
        };
        Notification {
            event,
            text,
            at,
            fields,
        }
    }
}

#[derive(Debug)]
struct Delivery {
    url: String,
    notification: Arc<Notification>,
}

/// The webhook dispatcher of one instance.
#[derive(Debug)]
pub struct Webhooks {
    hooks: Vec<Webhook>,
    tx: mpsc::Sender<Delivery>,
    /// Taken by [`Webhooks::run`].
    rx: Mutex<Option<mpsc::Receiver<Delivery>>>,
    metrics: Arc<Metrics>,
    /// First retry delay; doubles each retry.
    backoff: Duration,
}

impl Webhooks {
    pub fn new(hooks: Vec<Webhook>, metrics: Arc<Metrics>) -> Self {
        Self::with_backoff(hooks, metrics, QUEUE_CAPACITY, Duration::from_millis(500))
    }

    pub fn with_backoff(
        hooks: Vec<Webhook>,
        metrics: Arc<Metrics>,
        capacity: usize,
        backoff: Duration,
    ) -> Self {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        Webhooks {
            hooks,
            tx,
            rx: Mutex::new(Some(rx)),
            metrics,
            backoff,
        }
    }

    /// Queues `n` for every webhook that wants its event. Never waits.
    pub fn notify(&self, n: Notification) {
        let n = Arc::new(n);
        for hook in self.hooks.iter().filter(|h| h.wants(n.event)) {
            let delivery = Delivery {
                url: hook.url.clone(),
                notification: n.clone(),
            };
            if let Err(e) = self.tx.try_send(delivery) {
                self.metrics
                    .webhook_failures_total
                    .with_label_values(&[n.event.as_str()])
                    .inc();
                let why = match e {
                    mpsc::error::TrySendError::Full(_) => "queue full",
                    mpsc::error::TrySendError::Closed(_) => "dispatcher stopped",
                };
                tracing::warn!(event = n.event.as_str(), url = %hook.url, why, "webhook notification dropped");
            }
        }
    }

    /// Delivers queued notifications until `shutdown`; a second call does nothing.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let Some(mut rx) = self.rx.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return;
        };
        let http = match reqwest::Client::builder()
            .timeout(ATTEMPT_TIMEOUT)
            .user_agent(concat!("timebox/", env!("CARGO_PKG_VERSION")))
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "webhooks disabled: cannot build an HTTP client");
                return;
            }
        };
        let slots = Arc::new(Semaphore::new(CONCURRENCY));
        loop {
            let delivery = tokio::select! {
                _ = shutdown.cancelled() => break,
                d = rx.recv() => match d { Some(d) => d, None => break },
            };
            let Ok(permit) = slots.clone().acquire_owned().await else {
                break;
            };
            let this = self.clone();
            let http = http.clone();
            tokio::spawn(async move {
                this.deliver(&http, delivery).await;
                drop(permit);
            });
        }
        let left = rx.len();
        if left > 0 {
            tracing::warn!(left, "shutting down with webhook notifications undelivered");
        }
    }

    async fn deliver(&self, http: &reqwest::Client, d: Delivery) {
        let event = d.notification.event.as_str();
        let mut delay = self.backoff;
        for attempt in 1..=ATTEMPTS {
            let outcome = http.post(&d.url).json(&*d.notification).send().await;
            let problem = match outcome {
                Ok(r) if r.status().is_success() => {
                    tracing::debug!(event, url = %d.url, attempt, "webhook delivered");
                    return;
                }
                Ok(r) => format!("HTTP {}", r.status()),
                Err(e) => e.to_string(),
            };
            if attempt == ATTEMPTS {
                self.metrics
                    .webhook_failures_total
                    .with_label_values(&[event])
                    .inc();
                tracing::warn!(event, url = %d.url, attempts = attempt, problem, "webhook delivery failed");
                return;
            }
            tracing::info!(event, url = %d.url, attempt, problem, retry_in = ?delay, "webhook delivery failed; retrying");
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_counts_a_failure_and_keeps_what_is_queued() {
        let metrics = Arc::new(Metrics::new().unwrap());
        let hooks = vec![Webhook {
            url: "http://127.0.0.1:9/".into(),
            events: WebhookEvent::ALL.to_vec(),
        }];
        let w = Webhooks::with_backoff(hooks, metrics.clone(), 1, Duration::from_millis(1));
        let n = |text: &str| {
            Notification::new(
                WebhookEvent::GrantIssued,
                text.into(),
                serde_json::json!({}),
                Utc::now(),
            )
        };
        w.notify(n("first"));
        w.notify(n("second"));
        let failures = metrics
            .webhook_failures_total
            .with_label_values(&["grant_issued"])
            .get();
        assert_eq!(failures, 1);
        let mut rx = w.rx.lock().unwrap().take().unwrap();
        assert_eq!(
            rx.try_recv().unwrap().notification.text,
            "first",
            "the oldest is kept"
        );
    }

    #[test]
    fn event_names_are_todays_names_and_parse_back() {
        // The names webhook receivers and configs already use; renaming one breaks them.
        let names: Vec<&str> = WebhookEvent::ALL.iter().map(|e| e.as_str()).collect();
        assert_eq!(
            names,
            [
                "request_created",
                "request_approved",
                "request_denied",
                "request_expired",
                "break_glass",
                "grant_issued",
                "grant_extended",
                "grant_revoked",
                "grant_expired",
                "session_killed",
            ]
        );
        for e in WebhookEvent::ALL {
            assert_eq!(WebhookEvent::from_name(e.as_str()), Some(e));
            assert_eq!(
                serde_json::to_value(e).unwrap(),
                e.as_str(),
                "serde and as_str agree"
            );
        }
        assert_eq!(WebhookEvent::from_name("*"), None);
        assert_eq!(WebhookEvent::from_name("Grant_Issued"), None);
    }

    #[test]
    fn body_has_text_event_and_flattened_fields() {
        let n = Notification::new(
            WebhookEvent::BreakGlass,
            "alice broke the glass".into(),
            serde_json::json!({"grant": {"id": "g_1"}}),
            DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
                .unwrap()
                .with_timezone(&Utc),
        );
        let v = serde_json::to_value(&n).unwrap();
        assert_eq!(v["text"], "alice broke the glass");
        assert_eq!(v["event"], "break_glass");
        assert_eq!(v["grant"]["id"], "g_1");
        assert_eq!(v["at"], "2026-01-01T00:00:00Z");
    }
}
