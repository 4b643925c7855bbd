//! The admin API client of the CLI: how to reach a running instance (`--admin-url`, the token from
//! `$TIMEBOX_ADMIN_TOKEN` or `--admin-token-file`), one HTTP call shape, and the reading of the API's
//! answers (`{code, message}` errors become [`CliError::Api`]). The endpoints themselves are methods
//! added next to their commands (`grant.rs`, `request.rs`, `session.rs`, `audit.rs`).
//!
//! Where it sits: under [`crate::cli`]; it talks to [`crate::admin`] over HTTP and never touches the
//! store directly. It must never take the admin token as a plain command-line value (it would show
//! in `ps`), nor put it anywhere but the `Authorization` header.

use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::render::{sanitize, truncate};
use super::CliError;
use crate::config::Secret;

/// Where the CLI looks for the admin API unless told otherwise.
pub const DEFAULT_ADMIN_URL: &str = "http://127.0.0.1:9187";
/// Environment variable holding the admin API URL.
pub const ADMIN_URL_ENV: &str = "TIMEBOX_ADMIN_URL";
/// Environment variable holding the admin bearer token.
pub const ADMIN_TOKEN_ENV: &str = "TIMEBOX_ADMIN_TOKEN";

/// How to reach the admin API. The token is read from $TIMEBOX_ADMIN_TOKEN or a file, never from a
/// flag value (it would show in `ps`).
#[derive(Debug, Clone, clap::Args)]
pub struct ApiArgs {
    /// The admin API's base URL.
    #[arg(long, global = true, env = ADMIN_URL_ENV, default_value = DEFAULT_ADMIN_URL)]
    pub admin_url: String,
    /// Read the admin bearer token from this file (default: $TIMEBOX_ADMIN_TOKEN).
    #[arg(long, global = true, value_name = "PATH")]
    pub admin_token_file: Option<PathBuf>,
}

impl ApiArgs {
    /// A client for the API these flags name, with the token they lead to.
    pub fn client(&self) -> Result<AdminClient, CliError> {
        let token = resolve_token(
            self.admin_token_file.as_deref(),
            std::env::var(ADMIN_TOKEN_ENV).ok(),
        )?;
        AdminClient::new(&self.admin_url, token)
    }
}

/// The admin token: from `--admin-token-file` if given, else from `$TIMEBOX_ADMIN_TOKEN`
/// (`env_value`). Surrounding whitespace (a trailing newline) is ignored.
pub fn resolve_token(file: Option<&Path>, env_value: Option<String>) -> Result<Secret, CliError> {
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|source| CliError::TokenFile {
            path: path.to_owned(),
            source,
        })?;
        let token = text.trim();
        if token.is_empty() {
            return Err(CliError::EmptyTokenFile {
                path: path.to_owned(),
            });
        }
        return Ok(Secret::new(token));
    }
    match env_value.as_deref().map(str::trim) {
        Some(token) if !token.is_empty() => Ok(Secret::new(token)),
        _ => Err(CliError::NoToken),
    }
}

/// An answer of the admin API: the JSON exactly as received (for `--json`) and its typed reading.
#[derive(Debug, Clone)]
pub struct ApiResponse<T> {
    pub raw: serde_json::Value,
    pub body: T,
}

/// A client for one instance's admin API, authenticated as one principal.
#[derive(Debug, Clone)]
pub struct AdminClient {
    base: Url,
    /// The base URL as the user wrote it, for messages.
    shown_url: String,
    token: Secret,
    http: reqwest::Client,
}

impl AdminClient {
    pub fn new(base_url: &str, token: Secret) -> Result<Self, CliError> {
        let bad = |reason: &str| CliError::BadUrl {
            url: base_url.to_owned(),
            reason: reason.to_owned(),
        };
        let base = Url::parse(base_url).map_err(|e| bad(&e.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(bad("expected http://HOST:PORT or https://HOST:PORT"));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .user_agent(concat!("timebox-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(CliError::Http)?;
        Ok(AdminClient {
            base,
            shown_url: base_url.to_owned(),
            token,
            http,
        })
    }

    /// The URL of `segments` under the base URL (each segment percent-encoded), with the set fields
    /// of `query` (any serializable struct; `None` fields are left out) as its query string.
    pub fn url(&self, segments: &[&str], query: &impl Serialize) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        let pairs = query_pairs(query);
        if !pairs.is_empty() {
            url.query_pairs_mut().extend_pairs(pairs);
        }
        url
    }

    /// `GET` `segments` with `query`.
    pub(super) async fn get<T: DeserializeOwned>(
        &self,
        segments: &[&str],
        query: &impl Serialize,
    ) -> Result<ApiResponse<T>, CliError> {
        self.call(Method::GET, self.url(segments, query), None::<&()>)
            .await
    }

    /// `method` (POST, DELETE) on `segments` with `body` as JSON.
    pub(super) async fn send<T: DeserializeOwned>(
        &self,
        method: Method,
        segments: &[&str],
        body: Option<&impl Serialize>,
    ) -> Result<ApiResponse<T>, CliError> {
        self.call(method, self.url(segments, &()), body).await
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        url: Url,
        body: Option<&impl Serialize>,
    ) -> Result<ApiResponse<T>, CliError> {
        let mut request = self.http.request(method, url).bearer_auth(self.token.expose());
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| self.transport_error(e))?;
        let status = response.status();
        let text = response.text().await.map_err(|e| self.transport_error(e))?;
        let raw = parse_answer(status, &text)?;
        let body = serde_json::from_value(raw.clone()).map_err(|e| CliError::UnexpectedResponse {
            status: status.as_u16(),
            body: format!("{e}: {}", excerpt(&text)),
        })?;
        Ok(ApiResponse { raw, body })
    }

    fn transport_error(&self, e: reqwest::Error) -> CliError {
        if e.is_connect() || e.is_timeout() {
            CliError::Unreachable {
                url: self.shown_url.clone(),
                detail: innermost_cause(&e),
                source: e,
            }
        } else {
            CliError::Http(e)
        }
    }
}

/// The set fields of a serializable struct as query-string pairs, sorted by name: strings as they
/// are, numbers and booleans as written in JSON; `null` (a `None`) is left out. Pure.
pub fn query_pairs(query: &impl Serialize) -> Vec<(String, String)> {
    let serde_json::Value::Object(fields) = serde_json::to_value(query).unwrap_or_default() else {
        return Vec::new();
    };
    fields
        .into_iter()
        .filter_map(|(key, value)| match value {
            serde_json::Value::Null => None,
            serde_json::Value::String(s) => Some((key, s)),
            other => Some((key, other.to_string())),
        })
        .collect()
}

/// Reads an admin API answer: the JSON of a success, or the API's `{code, message}` as an error.
pub fn parse_answer(status: StatusCode, text: &str) -> Result<serde_json::Value, CliError> {
    let json: Option<serde_json::Value> = serde_json::from_str(text).ok();
    if status.is_success() {
        return json.ok_or_else(|| CliError::UnexpectedResponse {
            status: status.as_u16(),
            body: excerpt(text),
        });
    }
    let field = |name: &str| {
        json.as_ref()
            .and_then(|j| j.get(name))
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    };
    match (field("code"), field("message")) {
        (Some(code), Some(message)) => Err(CliError::Api {
            status: status.as_u16(),
            code,
            message,
        }),
        _ => Err(CliError::UnexpectedResponse {
            status: status.as_u16(),
            body: excerpt(text),
        }),
    }
}

/// The most specific description of a transport failure ("Connection refused (os error 111)").
fn innermost_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut current = e;
    while let Some(next) = current.source() {
        current = next;
    }
    current.to_string()
}

fn excerpt(text: &str) -> String {
    let text = sanitize(text.trim());
    if text.is_empty() {
        "(empty body)".to_owned()
    } else {
        truncate(&text, 200)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_errors_are_read_from_the_json_shape() {
        let err = parse_answer(
            StatusCode::FORBIDDEN,
            r#"{"code":"forbidden","message":"issuing grants requires role admin"}"#,
        )
        .unwrap_err();
        assert_eq!(err.api_code(), Some("forbidden"));
        assert_eq!(
            err.to_string(),
            "issuing grants requires role admin (forbidden, HTTP 403)"
        );
        let err = parse_answer(StatusCode::BAD_GATEWAY, "<html>bad gateway</html>").unwrap_err();
        assert!(
            matches!(err, CliError::UnexpectedResponse { status: 502, .. }),
            "{err:?}"
        );
        assert_eq!(parse_answer(StatusCode::OK, r#"{"a":1}"#).unwrap()["a"], 1);
    }

    #[test]
    fn token_comes_from_the_file_first_then_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "from-file\n").unwrap();
        assert_eq!(
            resolve_token(Some(&file), Some("from-env".into()))
                .unwrap()
                .expose(),
            "from-file"
        );
        assert_eq!(
            resolve_token(None, Some(" from-env ".into())).unwrap().expose(),
            "from-env"
        );
        assert!(matches!(resolve_token(None, None), Err(CliError::NoToken)));
        assert!(matches!(
            resolve_token(None, Some("".into())),
            Err(CliError::NoToken)
        ));
        std::fs::write(&file, "\n").unwrap();
        assert!(matches!(
            resolve_token(Some(&file), None),
            Err(CliError::EmptyTokenFile { .. })
        ));
        let missing = dir.path().join("missing");
        assert!(matches!(
            resolve_token(Some(&missing), None),
            Err(CliError::TokenFile { .. })
        ));
    }

    #[test]
    fn urls_keep_a_base_path_and_encode_segments() {
        let c = AdminClient::new("http://h:1/prefix/", Secret::new("t")).unwrap();
        assert_eq!(
            c.url(&["v1", "grants", "a/b"], &()).as_str(),
            "http://h:1/prefix/v1/grants/a%2Fb"
        );
        let c = AdminClient::new("http://h:1", Secret::new("t")).unwrap();
        assert_eq!(
            c.url(
                &["v1", "grants"],
                &serde_json::json!({"user": "a b", "target": null})
            )
            .as_str(),
            "http://h:1/v1/grants?user=a+b"
        );
        assert!(matches!(
            AdminClient::new("h:1", Secret::new("t")),
            Err(CliError::BadUrl { .. })
        ));
        assert!(matches!(
            AdminClient::new("ftp://h", Secret::new("t")),
            Err(CliError::BadUrl { .. })
        ));
    }

    #[test]
    fn query_pairs_are_the_set_fields() {
        #[derive(Serialize)]
        struct Q {
            user: Option<String>,
            status: Option<String>,
            limit: Option<usize>,
        }
        let q = Q {
            user: Some("alice".into()),
            status: None,
            limit: Some(5),
        };
        assert_eq!(
            query_pairs(&q),
            [("limit", "5"), ("user", "alice")].map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
        assert!(query_pairs(&()).is_empty());
    }
}
