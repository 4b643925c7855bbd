//! The one error type of the admin API and its JSON shape: `{"code": "...", "message": "..."}`.
//!
//! Every failure a handler or extractor can produce becomes an [`ApiError`]; its `code` is stable
//! (clients and the CLI match on it), its `message` is written for a person. It must never leak
//! internals: store failures are logged here with their cause and answered with a generic message.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::audit::AuditError;
use crate::grants::effects::{Unrecorded, AUDIT_UNAVAILABLE};
use crate::grants::requests::RequestError;
use crate::grants::GrantError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No credentials, or credentials no principal owns.
    #[error("{0}")]
    Unauthorized(String),
    /// A store admin token that was revoked or has expired (401 with the refusal's own code).
    #[error(transparent)]
    AdminTokenRefused(crate::grants::admin_tokens::Refusal),
    /// A known principal without the role the operation needs.
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("malformed JSON body: {}", .0.body_text())]
    Json(#[source] JsonRejection),
    #[error("bad query string: {}", .0.body_text())]
    Query(#[source] QueryRejection),
    #[error("bad path: {}", .0.body_text())]
    Path(#[source] PathRejection),
    /// The request is well-formed but a value is not acceptable; names the field.
    #[error("{field}: {message}")]
    Invalid { field: &'static str, message: String },
    #[error("{0}")]
    NotFound(String),
    #[error("{message}")]
    Conflict {
        message: String,
        #[source]
        source: GrantError,
    },
    /// The resource is not in a state that allows the operation (request already decided, token
    /// already fetched, same approver twice).
    #[error("{0}")]
    StateConflict(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    /// The request body did not arrive, or the answer was not ready, within `admin.request_timeout`
    /// of the request's header (what it changes, if anything, still completes).
    #[error("the request was not received and answered within {limit:?} (admin.request_timeout); if it changes something, check whether it did before retrying")]
    RequestTimeout { limit: std::time::Duration },
    /// The request body is larger than the admin API reads.
    #[error("the request body is larger than {limit} bytes")]
    BodyTooLarge { limit: usize },
    /// A failure of timebox itself; the cause is logged where it happened.
    #[error("{0}")]
    Internal(String),
    /// A bounded resource (one role review or policy replay at a time) is in use, or the work
    /// would exceed its bound; the message says which and what to do.
    #[error("{0}")]
    Busy(String),
    /// The grant store failed; the cause is logged, never sent.
    #[error("the grant store is unavailable")]
    StoreUnavailable(#[source] StoreError),
    /// The audit log refused or failed; the cause is logged, the message says what did happen.
    #[error("{message}")]
    AuditUnavailable {
        message: String,
        #[source]
        source: AuditError,
    },
}

/// The JSON body of every error response (documentation type for the OpenAPI document).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorResponse {
    /// Stable machine-readable code: unauthorized, forbidden, bad_request, invalid_request,
    /// not_found, conflict, method_not_allowed, request_timeout, payload_too_large,
    /// store_unavailable, audit_unavailable, …
    pub code: String,
    /// For a person.
    pub message: String,
    /// For `invalid_request`: the request field at fault.
    pub field: Option<String>,
}

/// The JSON body of every error response.
#[derive(Debug, Serialize)]
struct ErrorBody<'a> {
    code: &'static str,
    message: String,
    /// For `invalid_request`: the request field at fault.
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized(_) | ApiError::AdminTokenRefused(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Json(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BadRequest(_) | ApiError::Json(_) | ApiError::Query(_) | ApiError::Path(_) => {
                StatusCode::BAD_REQUEST
            }
            ApiError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict { .. } | ApiError::StateConflict(_) => StatusCode::CONFLICT,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::RequestTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ApiError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Busy(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::StoreUnavailable(_) | ApiError::AuditUnavailable { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    /// The stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::AdminTokenRefused(r) => r.code(),
            ApiError::Forbidden(_) => "forbidden",
            ApiError::Json(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
            ApiError::BadRequest(_) | ApiError::Json(_) | ApiError::Query(_) | ApiError::Path(_) => {
                "bad_request"
            }
            ApiError::Invalid { .. } => "invalid_request",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict { .. } | ApiError::StateConflict(_) => "conflict",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::RequestTimeout { .. } => "request_timeout",
            ApiError::BodyTooLarge { .. } => "payload_too_large",
            ApiError::Internal(_) => "internal",
            ApiError::Busy(_) => "busy",
            ApiError::StoreUnavailable(_) => "store_unavailable",
            ApiError::AuditUnavailable { .. } => "audit_unavailable",
        }
    }

    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        ApiError::Invalid {
            field,
            message: message.into(),
        }
    }
}

impl From<GrantError> for ApiError {
    fn from(e: GrantError) -> Self {
        match e {
            GrantError::Invalid { field, message } => ApiError::Invalid { field, message },
            GrantError::NotFound(id) => ApiError::NotFound(format!("no grant {id}")),
            conflict @ GrantError::Conflict { .. } => ApiError::Conflict {
                message: conflict.to_string(),
                source: conflict,
            },
            GrantError::Store(source) => ApiError::StoreUnavailable(source),
            GrantError::Unrecorded(u) => u.into(),
        }
    }
}

/// The one way a change the audit log refused is answered: 503 `audit_unavailable`, saying what did
/// happen.
impl From<Unrecorded> for ApiError {
    fn from(Unrecorded { message, source }: Unrecorded) -> Self {
        ApiError::AuditUnavailable { message, source }
    }
}

impl From<RequestError> for ApiError {
    fn from(e: RequestError) -> Self {
        match e {
            RequestError::Invalid { field, message } => ApiError::Invalid { field, message },
            RequestError::NotFound(id) => ApiError::NotFound(format!("no request {id}")),
            RequestError::Forbidden(m) => ApiError::Forbidden(m),
            RequestError::Conflict(m) => ApiError::StateConflict(m),
            RequestError::Grant(g) => g.into(),
            RequestError::Store(s) => ApiError::StoreUnavailable(s),
            RequestError::Unrecorded(u) => u.into(),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::StoreUnavailable(e)
    }
}

impl From<AuditError> for ApiError {
    fn from(source: AuditError) -> Self {
        match source {
            AuditError::InvalidFilter { field, message } => {
                ApiError::BadRequest(format!("{field}: {message}"))
            }
            source => ApiError::AuditUnavailable {
                message: AUDIT_UNAVAILABLE.into(),
                source,
            },
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        ApiError::Json(r)
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::Query(r)
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError::Path(r)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let ApiError::StoreUnavailable(cause) = &self {
            tracing::error!(error = %cause, "admin API: grant store unavailable");
        }
        if let ApiError::AuditUnavailable { source, .. } = &self {
            tracing::error!(error = %source, "admin API: audit log unavailable");
        }
        let field = match &self {
            ApiError::Invalid { field, .. } => Some(*field),
            _ => None,
        };
        let body = ErrorBody {
            code: self.code(),
            message: self.to_string(),
            field,
        };
        let mut response = (status, axum::Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"timebox\""),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real JoinError: a task aborted before it ran.
    fn cancelled_task() -> tokio::task::JoinError {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let task = tokio::spawn(std::future::pending::<()>());
            task.abort();
            task.await.unwrap_err()
        })
    }

    /// Task failures keep the JoinError as their `source()` (it says whether the task panicked
    /// or was cancelled) instead of a copy of its text. (Regression: `Task(String)`.)
    #[test]
    fn task_failures_keep_their_cause() {
        use std::error::Error as _;
        let is_join_error = |e: &dyn std::error::Error| {
            e.source().is_some_and(|s| {
                s.downcast_ref::<tokio::task::JoinError>()
                    .is_some_and(|j| j.is_cancelled())
            })
        };
        let store = StoreError::Task(cancelled_task());
        assert!(is_join_error(&store), "{store:?}");
        assert!(store.to_string().starts_with("store task failed: "), "{store}");
        assert!(is_join_error(&AuditError::Task(cancelled_task())));
        assert!(is_join_error(
            &crate::auditsql::QueryError::Task(cancelled_task())
        ));
        assert!(is_join_error(&crate::proxy::ProxyError::Task(cancelled_task())));
        // The API error keeps the chain too, down to the task.
        let api = ApiError::from(GrantError::Store(StoreError::Task(cancelled_task())));
        assert!(api.source().is_some_and(is_join_error), "{api:?}");
    }

    #[test]
    fn grant_errors_map_to_stable_codes_and_statuses() {
        let cases: Vec<(GrantError, StatusCode, &str)> = vec![
            (
                GrantError::Invalid {
                    field: "ttl",
                    message: "too long".into(),
                },
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request",
            ),
            (
                GrantError::NotFound("g_1".into()),
                StatusCode::NOT_FOUND,
                "not_found",
            ),
            (
                GrantError::Conflict {
                    id: "g_1".into(),
                    status: "revoked",
                },
                StatusCode::CONFLICT,
                "conflict",
            ),
            (
                GrantError::Store(StoreError::Task(cancelled_task())),
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
            ),
        ];
        for (e, status, code) in cases {
            let api = ApiError::from(e);
            assert_eq!((api.status(), api.code()), (status, code), "{api:?}");
        }
    }

    #[test]
    fn store_errors_do_not_leak_into_the_message() {
        let api = ApiError::from(GrantError::Store(StoreError::Corrupt("secret row detail".into())));
        assert!(!api.to_string().contains("secret row detail"));
    }

    #[test]
    fn invalid_message_names_the_field() {
        let api = ApiError::invalid("reason", "a reason is required");
        assert_eq!(api.to_string(), "reason: a reason is required");
    }
}
