//! The API's errors and the extractors that put axum's own rejections in the same JSON shape.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use torrentguard_protocol::api::{ErrorBody, ErrorDetail};

use crate::app::{MAX_HEADER_BYTES, MAX_HEADER_FIELDS, MAX_URI_BYTES};
use crate::limits::{Scope, retry_after_secs};
use crate::store::StoreError;
use std::time::Duration;

/// Every way a request can fail. Each maps to one status and one stable `code`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed JSON, query or path, or a field out of range.
    #[error("{0}")]
    BadRequest(String),
    /// Well-formed JSON that is not an acceptable manifest.
    #[error("{0}")]
    InvalidManifest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("the request took too long")]
    Timeout,
    #[error("the request target is too long: at most {MAX_URI_BYTES} bytes")]
    UriTooLong,
    #[error(
        "the request headers are too large: at most {MAX_HEADER_FIELDS} fields and {MAX_HEADER_BYTES} bytes"
    )]
    HeaderFieldsTooLarge,
    /// The service cannot answer now (database unreachable, shutting down).
    #[error("service unavailable")]
    Unavailable(#[source] StoreError),
    /// A bug or an environment failure. The detail is logged, never sent.
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Over a write rate or the concurrency bound: 429 with `Retry-After`.
    #[error("too many requests ({} limit): retry in {} s", .0.as_str(), .1.as_secs_f64().ceil().max(1.0))]
    RateLimited(Scope, Duration),
    /// The identity registered as many files as `--max-files-per-identity` allows.
    #[error("{0}")]
    TooManyFiles(String),
    /// A manifest over `--max-manifest-chunks` or `--max-manifest-entries`.
    #[error("{0}")]
    ManifestTooLarge(String),
    /// A new peer for a file that has `--max-peers-per-file` live peers already.
    #[error("{0}")]
    SwarmFull(String),
    /// An introduction to a peer that is not a live member of the file's swarm.
    #[error("{0}")]
    NotInSwarm(String),
    /// An introduction through the relay, from a tracker that runs none.
    #[error("{0}")]
    NoRelay(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) | ApiError::InvalidManifest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) | ApiError::NotInSwarm(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Timeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::UriTooLong => StatusCode::URI_TOO_LONG,
            ApiError::HeaderFieldsTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::RateLimited(..) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::TooManyFiles(_) | ApiError::SwarmFull(_) | ApiError::NoRelay(_) => {
                StatusCode::CONFLICT
            }
            ApiError::ManifestTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::InvalidManifest(_) => "invalid_manifest",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::Timeout => "timeout",
            ApiError::UriTooLong => "uri_too_long",
            ApiError::HeaderFieldsTooLarge => "header_fields_too_large",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal",
            ApiError::RateLimited(..) => "rate_limited",
            ApiError::TooManyFiles(_) => "too_many_files",
            ApiError::ManifestTooLarge(_) => "manifest_too_large",
            ApiError::SwarmFull(_) => "swarm_full",
            ApiError::NotInSwarm(_) => "not_in_swarm",
            ApiError::NoRelay(_) => "no_relay",
        }
    }

    pub fn internal(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        ApiError::Internal(Box::new(e))
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            // A closed pool means we are shutting down: tell the client to come back.
            StoreError::Database(sqlx::Error::PoolClosed | sqlx::Error::PoolTimedOut) => {
                ApiError::Unavailable(e)
            }
            other => ApiError::internal(other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        match &self {
            ApiError::Internal(e) => {
                tracing::error!(error = %e, source = ?e.source(), "internal error")
            }
            ApiError::Unavailable(e) => tracing::warn!(error = %e, "service unavailable"),
            _ => tracing::debug!(%status, error = %self, "request refused"),
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code().to_string(),
                message: self.to_string(),
            },
        };
        let mut response = (status, axum::Json(body)).into_response();
        if let ApiError::RateLimited(_, wait) = self {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(retry_after_secs(wait)),
            );
        }
        response
    }
}

/// A rejection's own status says what went wrong with the body (too large, wrong content type,
/// unreadable); everything else is the client's malformed input.
fn from_body_rejection(status: StatusCode, text: String) -> ApiError {
    match status {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge(text),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType(text),
        s if s.is_server_error() => ApiError::Internal(text.into()),
        _ => ApiError::BadRequest(text),
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        from_body_rejection(r.status(), r.body_text())
    }
}

impl From<BytesRejection> for ApiError {
    fn from(r: BytesRejection) -> Self {
        from_body_rejection(r.status(), r.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::BadRequest(r.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        from_body_rejection(r.status(), r.body_text())
    }
}

/// `axum::Json`, with rejections as [`ApiError`]s.
pub struct AppJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for AppJson<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let axum::Json(v) = axum::Json::<T>::from_request(req, state).await?;
        Ok(AppJson(v))
    }
}

/// The raw body, with the body limit's rejection as a JSON 413.
pub struct AppBytes(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for AppBytes {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        Ok(AppBytes(Bytes::from_request(req, state).await?))
    }
}

/// `axum::extract::Query`, with rejections as [`ApiError`]s.
pub struct AppQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for AppQuery<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Query(v) =
            axum::extract::Query::<T>::from_request_parts(parts, state).await?;
        Ok(AppQuery(v))
    }
}

/// `axum::extract::Path`, with rejections as [`ApiError`]s.
pub struct AppPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for AppPath<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Path(v) =
            axum::extract::Path::<T>::from_request_parts(parts, state).await?;
        Ok(AppPath(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_statuses() {
        let e = ApiError::internal(std::io::Error::other("disk on fire"));
        assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
        // The detail stays in the log.
        assert_eq!(e.to_string(), "internal error");
        assert_eq!(
            from_body_rejection(StatusCode::PAYLOAD_TOO_LARGE, "x".into()).code(),
            "payload_too_large"
        );
        assert_eq!(
            from_body_rejection(StatusCode::UNPROCESSABLE_ENTITY, "x".into()).status(),
            StatusCode::BAD_REQUEST
        );
    }
}
