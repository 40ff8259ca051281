//! The API's errors: JSON `{"error", "code"}` with the HTTP status that
//! says what went wrong (SPEC §11.2).

use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::core::Error;

/// An error as the API answers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ApiError {
    /// What went wrong, for people: names the field, the role or the node.
    pub error: String,
    /// What went wrong, for programs: `bad_request`, `forbidden`,
    /// `not_found`, `conflict`, `payload_too_large`, `too_many_requests`,
    /// `not_implemented`, `unavailable`, `timeout`, `internal`.
    pub code: String,
    #[serde(skip)]
    #[schema(ignore)]
    pub status: u16,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &str, error: impl Into<String>) -> Self {
        ApiError {
            error: error.into(),
            code: code.to_owned(),
            status: status.as_u16(),
        }
    }

    pub fn bad_request(error: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", error)
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let text = e.to_string();
        match e {
            Error::LockHeld(_) => ApiError::new(StatusCode::CONFLICT, "conflict", text),
            Error::NotFound(_) => ApiError::new(StatusCode::NOT_FOUND, "not_found", text),
            Error::Invalid(_) | Error::Certificate(_) => ApiError::bad_request(text),
            Error::Unreachable { .. } | Error::Remote { .. } | Error::Unconfirmed(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", text)
            }
            _ => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", text),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        let status = r.status();
        let code = match status {
            StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
            _ => "bad_request",
        };
        let error = match status {
            StatusCode::PAYLOAD_TOO_LARGE => {
                format!("the body is larger than {} bytes", super::MAX_BODY)
            }
            _ => r.body_text(),
        };
        // A malformed body is a 400 whatever axum says (422 included).
        let status = if status == StatusCode::PAYLOAD_TOO_LARGE {
            status
        } else {
            StatusCode::BAD_REQUEST
        };
        ApiError::new(status, code, error)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, axum::Json(self)).into_response()
    }
}
