//! The admin API over real HTTP: one request, its answer read whole. Shared by the test binaries
//! that talk to a real instance's admin listener (or to any other HTTP endpoint they start).

use reqwest::header::WWW_AUTHENTICATE;
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// One answer: status, `WWW-Authenticate` (if any), the body as text and as JSON (`Null` when the
/// body is not JSON; see [`Answer::expect_json`]).
pub struct Answer {
    pub status: StatusCode,
    pub www_authenticate: Option<String>,
    pub text: String,
    pub json: Value,
}

impl Answer {
    /// The answer, after failing the test if its body is not JSON.
    pub fn expect_json(self) -> Self {
        if let Err(e) = serde_json::from_str::<Value>(&self.text) {
            panic!("HTTP {}: body is not JSON ({e}): {:?}", self.status, self.text);
        }
        self
    }
}

/// Sends `method base+path` with `token` as a bearer token and `body` as JSON, when given.
pub async fn send(
    base: &str,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Answer {
    let mut req = reqwest::Client::new().request(method, format!("{base}{path}"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    answer(req.send().await.expect("request")).await
}

/// `POST base+path` with a bearer token and a JSON body.
pub async fn post(base: &str, path: &str, token: &str, body: Value) -> Answer {
    send(base, Method::POST, path, Some(token), Some(body)).await
}

/// `GET base+path` with a bearer token.
pub async fn get(base: &str, path: &str, token: &str) -> Answer {
    send(base, Method::GET, path, Some(token), None).await
}

/// Reads a response whole.
pub async fn answer(resp: reqwest::Response) -> Answer {
    let status = resp.status();
    let www_authenticate = resp
        .headers()
        .get(WWW_AUTHENTICATE)
        .map(|v| v.to_str().unwrap().to_owned());
    let text = resp.text().await.expect("body");
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    Answer {
        status,
        www_authenticate,
        text,
        json,
    }
}

/// [`send`] with a bearer token, for tests that look at the status and the JSON body only (the body
/// must be JSON).
pub async fn call(
    base: &str,
    method: Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let answer = send(base, method, path, Some(token), body).await.expect_json();
    (answer.status, answer.json)
}
