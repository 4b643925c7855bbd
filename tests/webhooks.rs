//! Webhooks against a real local HTTP server: Slack-compatible `text` plus structured fields,
//! a failed delivery (HTTP 500) retried with backoff, and deliveries that never succeed counted in
//! `timebox_webhook_failures_total`.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

use common::{eventually, ADMIN_TOKEN, APPROVER_TOKEN, REQUESTER_TOKEN};

/// Every body received, and how many POSTs were answered 500 so far.
#[derive(Default)]
struct Received {
    bodies: Vec<Value>,
    attempts: usize,
}

/// A receiver that answers the very first POST with 500 and accepts everything after.
async fn receiver() -> (String, Arc<Mutex<Received>>) {
    let received = Arc::new(Mutex::new(Received::default()));
    async fn hook(State(r): State<Arc<Mutex<Received>>>, Json(body): Json<Value>) -> StatusCode {
        let mut r = r.lock().unwrap();
        r.attempts += 1;
        if r.attempts == 1 {
            return StatusCode::INTERNAL_SERVER_ERROR;
        }
        r.bodies.push(body);
        StatusCode::OK
    }
    let app = Router::new()
        .route("/hook", post(hook))
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, received)
}

async fn post_json(url: String, token: &str, body: Value) -> (StatusCode, Value) {
    let a = common::http::post(&url, "", token, body).await;
    (a.status, a.json)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_are_retried_after_a_failure_and_carry_text_and_fields() {
    let (url, received) = receiver().await;
    // A port nobody listens on: every try fails.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        format!("http://{addr}/hook")
    };
    let port = tokio::task::spawn_blocking(|| common::cluster::shared_cluster().port())
        .await
        .unwrap();
    let tb = common::start_with_config(move |dir| {
        let text = common::config_text(&common::Options::default(), dir, port);
        let role = "[roles.admin]\nallow = [\"read\", \"write\", \"ddl\", \"admin\"]\nmax_ttl = \"1h\"\n";
        let text = text.replace(
            role,
            &format!("{role}break_glass = true\nbreak_glass_max_ttl = \"15m\"\n"),
        );
        format!(
            "{text}\n[[webhooks]]\nurl = \"{url}\"\nevents = [\"*\"]\n\
             [[webhooks]]\nurl = \"{dead}\"\nevents = [\"request_denied\"]\n"
        )
    })
    .await;
    let base = tb.admin_url();

    let (status, r) = post_json(
        format!("{base}/v1/requests"),
        REQUESTER_TOKEN,
        json!({"target": "shop", "role": "read", "ttl": "30m", "reason": "check refunds", "ticket": "INC-7"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let rid = r["id"].as_str().unwrap().to_owned();
    let (status, _) = post_json(
        format!("{base}/v1/requests/{rid}/approve"),
        APPROVER_TOKEN,
        json!({"reason": "ok"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, bg) = post_json(
        format!("{base}/v1/requests"),
        REQUESTER_TOKEN,
        json!({"target": "shop", "role": "admin", "ttl": "1h", "reason": "outage", "break_glass": true}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{bg}");

    let events = |r: &Received| -> Vec<String> {
        r.bodies
            .iter()
            .map(|b| b["event"].as_str().unwrap().to_owned())
            .collect()
    };
    let all_arrived = eventually(Duration::from_secs(15), || {
        let received = received.clone();
        async move {
            let r = received.lock().unwrap();
            let e = events(&r);
            [
                "request_created",
                "request_approved",
                "grant_issued",
                "break_glass",
            ]
            .iter()
            .all(|want| e.iter().any(|x| x == want))
        }
    })
    .await;
    // A snapshot, so no lock is held across the awaits below.
    let r = {
        let guard = received.lock().unwrap();
        Received {
            bodies: guard.bodies.clone(),
            attempts: guard.attempts,
        }
    };
    assert!(all_arrived, "received: {:?}", events(&r));
    assert!(
        r.attempts > r.bodies.len(),
        "the first delivery failed and was retried"
    );

    let created = r.bodies.iter().find(|b| b["event"] == "request_created").unwrap();
    let text = created["text"].as_str().unwrap();
    assert!(
        text.contains("alice") && text.contains("check refunds") && text.contains("INC-7"),
        "{text}"
    );
    assert_eq!(created["request"]["id"], rid.as_str());
    assert_eq!(created["request"]["status"], "pending");
    assert!(created["at"].is_string());

    let glass = r.bodies.iter().find(|b| b["event"] == "break_glass").unwrap();
    assert!(glass["text"].as_str().unwrap().contains("BREAK-GLASS"), "{glass}");
    assert_eq!(glass["grant"]["break_glass"], true);
    assert_eq!(glass["request"]["ttl"], "15m");
    let issued: Vec<&Value> = r.bodies.iter().filter(|b| b["event"] == "grant_issued").collect();
    assert!(issued.iter().any(|b| b["grant"]["break_glass"] == true));
    assert!(
        r.bodies.iter().all(|b| !b.to_string().contains("tbx_")),
        "never a token"
    );
    drop(r);

    // A delivery that fails every try is counted once, per event.
    let (status, r2) = post_json(
        format!("{base}/v1/requests"),
        REQUESTER_TOKEN,
        json!({"target": "shop", "role": "read", "ttl": "30m", "reason": "again"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = post_json(
        format!("{base}/v1/requests/{}/deny", r2["id"].as_str().unwrap()),
        ADMIN_TOKEN,
        json!({"reason": "no"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let metrics = tb.state.proxy.metrics.clone();
    let counted = eventually(Duration::from_secs(15), || {
        let m = metrics.clone();
        async move {
            m.webhook_failures_total
                .with_label_values(&["request_denied"])
                .get()
                == 1
        }
    })
    .await;
    assert!(counted, "the dead webhook's failure is counted after its retries");
}
