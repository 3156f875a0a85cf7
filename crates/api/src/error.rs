//! [`ApiError`] → HTTP status + `application/problem+json` (RFC 9457), in one place.
//! `POST /data` answers the same errors in the Flask tutorial's shape ([`Tutorial`]).

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use telehub_core::DeviceId;
use telehub_hub::commands::CommandError;
use telehub_hub::ingest::IngestError;
use telehub_hub::registry::{AdminRefusal, RegistryError};
use telehub_store::StoreError;

/// A request that cannot be answered with what it asked for.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    /// The body is not what the endpoint takes; the message says what and where.
    #[error("{0}")]
    BadBody(String),
    /// A path segment or query parameter is malformed; the message names it.
    #[error("{0}")]
    BadRequest(String),
    /// A rule that does not compile: the message says why; the problem body also names
    /// the `field` and, for a CEL expression, its `line` and `column`.
    #[error("{detail}")]
    BadRule {
        /// The message.
        detail: String,
        /// The field at fault (`condition`, `actions[0].topic`, …).
        field: String,
        /// Line and column (1-based) of a CEL error.
        position: Option<(usize, usize)>,
    },
    /// No device with this id has sent anything.
    #[error("no device {0} has sent telemetry")]
    UnknownDevice(DeviceId),
    /// No such device, credential, rule or token; the message names it.
    #[error("{0}")]
    NotFound(String),
    /// It exists already; the message says what.
    #[error("{0}")]
    Conflict(String),
    /// No credentials, or credentials that are not valid; the message says which kind
    /// were expected.
    #[error("{0}")]
    Unauthorized(String),
    /// Valid credentials that do not allow this request; the message says why.
    #[error("{0}")]
    Forbidden(String),
    /// The caller (admin token, device or address) sends requests or messages faster
    /// than its limit.
    #[error("too many requests: retry after {} s", retry_after_secs(*.retry_after))]
    RateLimited {
        /// How long to wait.
        retry_after: Duration,
    },
    /// No such route.
    #[error("no such resource")]
    NoRoute,
    /// The body is larger than `[http] max_body_bytes`.
    #[error("the body is larger than {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// The ingest queue is full: come back later.
    #[error("telemetry is arriving faster than it can be stored: retry after {} s", retry_after_secs(*.retry_after))]
    QueueFull {
        /// How long to wait.
        retry_after: Duration,
    },
    /// The device has as many open commands as `[commands] max_queued_per_device`.
    #[error("{0}")]
    CommandQueueFull(String),
    /// The store cannot be reached or is shutting down.
    #[error("the store is unavailable")]
    Unavailable(#[source] Option<Arc<StoreError>>),
    /// Something failed that the client cannot fix.
    #[error("internal error")]
    Internal(#[source] Arc<StoreError>),
}

impl ApiError {
    /// The only place statuses are chosen.
    fn status(&self) -> StatusCode {
        match self {
            Self::BadBody(_) | Self::BadRequest(_) | Self::BadRule { .. } => StatusCode::BAD_REQUEST,
            Self::UnknownDevice(_) | Self::NotFound(_) | Self::NoRoute => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::QueueFull { .. } | Self::RateLimited { .. } | Self::CommandQueueFull(_) => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// `Retry-After` for the answers that have one.
    fn retry_after(&self) -> Option<HeaderValue> {
        match self {
            Self::QueueFull { retry_after } | Self::RateLimited { retry_after } => {
                Some(HeaderValue::from(retry_after_secs(*retry_after)))
            }
            Self::Unavailable(_) => Some(HeaderValue::from_static("5")),
            _ => None,
        }
    }

    /// The headers every answer of this error carries besides its body: `Retry-After`,
    /// and `WWW-Authenticate` on a 401 (RFC 6750: the API takes bearer tokens).
    fn insert_headers(&self, headers: &mut axum::http::HeaderMap) {
        if let Some(retry) = self.retry_after() {
            headers.insert(header::RETRY_AFTER, retry);
        }
        if let Self::Unauthorized(_) = self {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"telehub\""));
        }
    }

    /// Server errors are logged here (the operator must act); client errors are not.
    fn log(&self) {
        if self.status().is_server_error() {
            let cause = std::error::Error::source(self).map(ToString::to_string).unwrap_or_default();
            tracing::error!(error = %self, cause, "request failed");
        }
    }
}

/// Whole seconds, at least 1 (`Retry-After: 0` would invite a busy loop).
fn retry_after_secs(d: Duration) -> u64 {
    d.as_secs_f64().ceil().max(1.0) as u64
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        Self::from(Arc::new(e))
    }
}

impl From<Arc<StoreError>> for ApiError {
    fn from(e: Arc<StoreError>) -> Self {
        match *e {
            StoreError::Open(_) | StoreError::Closed => Self::Unavailable(Some(e)),
            _ => Self::Internal(e),
        }
    }
}

impl From<IngestError> for ApiError {
    fn from(e: IngestError) -> Self {
        match e {
            IngestError::QueueFull { retry_after, .. } => Self::QueueFull { retry_after },
            IngestError::TooLarge { .. } => Self::BadBody(e.to_string()),
            IngestError::Closed => Self::Unavailable(None),
            IngestError::Store(e) => Self::from(e),
        }
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::NotFound { .. } => Self::NotFound(e.to_string()),
            RegistryError::Conflict(message) => Self::Conflict(message),
            RegistryError::Invalid(message) => Self::BadBody(message),
            // whatever the store's trouble, the registry's change did not happen: retry
            RegistryError::Store(e) => Self::Unavailable(Some(Arc::new(e))),
        }
    }
}

impl From<CommandError> for ApiError {
    fn from(e: CommandError) -> Self {
        match e {
            CommandError::UnknownDevice(_) | CommandError::NotFound(_) => Self::NotFound(e.to_string()),
            CommandError::Invalid(message) => Self::BadBody(message),
            CommandError::QueueFull { .. } => Self::CommandQueueFull(e.to_string()),
            CommandError::WrongState { .. } => Self::Conflict(e.to_string()),
            CommandError::Store(e) => Self::from(e),
        }
    }
}

impl From<AdminRefusal> for ApiError {
    fn from(e: AdminRefusal) -> Self {
        match e {
            AdminRefusal::Missing | AdminRefusal::Invalid => Self::Unauthorized(e.to_string()),
            AdminRefusal::Forbidden { .. } => Self::Forbidden(e.to_string()),
        }
    }
}

/// The problem details body (RFC 9457).
#[derive(Serialize)]
struct Problem {
    r#type: &'static str,
    title: &'static str,
    status: u16,
    detail: String,
    /// A refused rule's field, and the line and column of a CEL error in it.
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    line: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    column: Option<usize>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.log();
        let status = self.status();
        let problem = Problem {
            r#type: "about:blank",
            title: status.canonical_reason().unwrap_or("Error"),
            status: status.as_u16(),
            // the Display of server errors is generic: no internal detail leaks
            detail: self.to_string(),
            field: match &self {
                Self::BadRule { field, .. } => Some(field.clone()),
                _ => None,
            },
            line: match &self {
                Self::BadRule { position, .. } => position.map(|p| p.0),
                _ => None,
            },
            column: match &self {
                Self::BadRule { position, .. } => position.map(|p| p.1),
                _ => None,
            },
        };
        let mut response = (status, Json(problem)).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        self.insert_headers(headers);
        response
    }
}

/// An [`ApiError`] answered as the Flask tutorial does: `{"error": "<what was wrong>"}`
/// with the same status and headers.
pub(crate) struct Tutorial(pub(crate) ApiError);

impl IntoResponse for Tutorial {
    fn into_response(self) -> Response {
        #[derive(Serialize)]
        struct Body {
            error: String,
        }
        let error = self.0;
        error.log();
        let mut response = (error.status(), Json(Body { error: error.to_string() })).into_response();
        error.insert_headers(response.headers_mut());
        response
    }
}

/// The fallback route: 404 as problem details.
pub(crate) async fn no_route() -> ApiError {
    ApiError::NoRoute
}
