//! The API's OpenAPI 3 document, generated from the handlers and their
//! types; `docs/openapi.json` is a checked-in copy a test keeps current.

use utoipa::OpenApi;

use super::{changes, handlers};

/// The document's definition.
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "noded remote API",
        description = "The cluster's control plane over HTTPS with client certificates (TLS 1.3). Roles nest: admin > operator > readonly; errors are {\"error\", \"code\"}."
    ),
    paths(
        handlers::nodes,
        handlers::status,
        handlers::verify,
        handlers::audit_trail,
        openapi_json,
        handlers::create_token,
        changes::set_role,
        changes::set_offline,
        changes::remove,
        changes::renew,
        handlers::list_users,
        handlers::add_user,
        handlers::revoke_user,
    )
)]
pub struct ApiDoc;

/// The document as pretty JSON, ending in a newline.
pub fn document() -> String {
    let mut text = ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    text.push('\n');
    text
}

/// This document.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "readonly",
    responses((status = 200, description = "the OpenAPI 3 document", content_type = "application/json")))]
pub async fn openapi_json() -> impl axum::response::IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        document(),
    )
}
