//! Fleet setups shared by the fleet tests (`fleet*.rs`): timebox instances on one PostgreSQL store
//! (a fresh database of the throwaway cluster), grants issued over an instance's admin API, and
//! sessions through an instance.

use reqwest::{Method, StatusCode};
use serde_json::json;
use tokio_postgres::NoTls;

use super::http::call;
use super::{Options, StoreDatabase, TestInstance, ADMIN_TOKEN};

/// Instance `name` on the store with TLS off; `fleet` holds the `[fleet]` keys after `instance`.
pub async fn instance_on(db: &StoreDatabase, name: &str, fleet: &str, opts: Options) -> TestInstance {
    super::start(Options {
        tls: "disabled",
        store: Some(store_lines(db, name, fleet)),
        ..opts
    })
    .await
}

/// The `[store]` lines of `db` followed by a `[fleet]` section naming instance `name`.
pub fn store_lines(db: &StoreDatabase, name: &str, fleet: &str) -> String {
    format!("{}\n[fleet]\ninstance = \"{name}\"\n{fleet}", db.store_lines())
}

/// `[fleet]` timings with the reconcile set to `reconcile` and the given `max_staleness`.
pub fn timings(reconcile: &str, staleness: &str) -> String {
    format!(
        "reconcile_interval = \"{reconcile}\"\nmax_staleness = \"{staleness}\"\n\
         heartbeat_interval = \"250ms\"\ninstance_timeout = \"5s\""
    )
}

/// Issues a read grant on `shop` to `user` through `inst`'s admin API: (grant id, token).
pub async fn issue_read(inst: &TestInstance, user: &str, ttl: &str, reason: &str) -> (String, String) {
    let (status, issued) = call(
        &inst.admin_url(),
        Method::POST,
        "/v1/grants",
        ADMIN_TOKEN,
        Some(json!({ "user": user, "target": "shop", "role": "read", "ttl": ttl, "reason": reason })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{issued}");
    (
        issued["id"].as_str().unwrap().to_owned(),
        issued["token"].as_str().unwrap().to_owned(),
    )
}

/// A tokio-postgres session through `inst` (TLS off).
pub async fn session(inst: &TestInstance, user: &str, token: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&inst.conn_string(user, token, "disable"), NoTls)
        .await
        .expect("login through the proxy");
    tokio::spawn(connection);
    client
}
