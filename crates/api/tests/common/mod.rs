//! What the API tests share: the router's answer (status, headers, body) and the checks
//! made on it.

#![allow(dead_code, reason = "each test binary uses a different subset")]

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, header};
use serde_json::Value;

/// A response of the router, read in full.
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Answer {
    /// Reads `response`.
    pub(crate) async fn of(response: axum::response::Response) -> Self {
        let status = response.status();
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
        Self { status, headers, body }
    }

    /// The body as JSON; panics, showing it, if it is not.
    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// The body as text.
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header's value, `""` when absent.
    pub(crate) fn header(&self, name: impl header::AsHeaderName) -> &str {
        self.headers.get(name).map_or("", |v| v.to_str().unwrap())
    }

    /// `Content-Type`, `""` when absent.
    pub(crate) fn content_type(&self) -> &str {
        self.header(header::CONTENT_TYPE)
    }

    /// The answer has `status`; returns its JSON body (`Null` when empty).
    #[track_caller]
    pub(crate) fn assert_status(&self, status: StatusCode) -> Value {
        assert_eq!(self.status, status, "{}", self.text());
        if self.body.is_empty() { Value::Null } else { self.json() }
    }

    /// A problem+json answer (RFC 9457) with `status`, its title the status's reason and
    /// its detail containing `needle`; a 401 also says `WWW-Authenticate: Bearer`.
    /// Returns the problem.
    #[track_caller]
    pub(crate) fn assert_problem(&self, status: StatusCode, needle: &str) -> Value {
        assert_eq!(self.status, status, "{}", self.text());
        assert_eq!(self.content_type(), "application/problem+json");
        let p = self.json();
        assert_eq!(p["status"], status.as_u16(), "{p}");
        assert_eq!(p["title"], status.canonical_reason().unwrap(), "{p}");
        let detail = p["detail"].as_str().unwrap_or_else(|| panic!("no detail: {p}"));
        assert!(detail.contains(needle), "detail {detail:?} does not contain {needle:?}");
        if status == StatusCode::UNAUTHORIZED {
            assert!(self.header(header::WWW_AUTHENTICATE).starts_with("Bearer"), "{:?}", self.headers);
        }
        p
    }
}
