//! The role changes, removal and renewal over the API. Their bodies are
//! checked as documented; carrying them out needs the lifecycle and renewal
//! steps, which today live with nodectl and print as they go: until they
//! move below both sides, these answer 501 (run the nodectl command on the
//! master instead).

use axum::extract::rejection::JsonRejection;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;

use super::error::ApiError;

type Body<T> = Result<Json<T>, JsonRejection>;

fn not_yet(command: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_IMPLEMENTED,
        "not_implemented",
        format!("not available over the API yet; run `nodectl {command}` on the master"),
    )
}

/// `PUT /v1/nodes/{name}/role`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoleChange {
    pub master_candidate: bool,
    #[serde(default)]
    pub auto_promote: bool,
}

/// Promote or demote a node (`nodectl modify --master-candidate`).
#[utoipa::path(put, path = "/v1/nodes/{name}/role", tag = "operator", request_body = RoleChange,
    params(("name" = String, Path, description = "the node")),
    responses((status = 501, body = ApiError), (status = 400, body = ApiError), (status = 403, body = ApiError)))]
pub async fn set_role(Path(_name): Path<String>, body: Body<RoleChange>) -> ApiError {
    match body {
        Ok(_) => not_yet("modify NODE --master-candidate yes|no"),
        Err(e) => e.into(),
    }
}

/// `PUT /v1/nodes/{name}/offline`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OfflineChange {
    pub offline: bool,
    #[serde(default)]
    pub auto_promote: bool,
}

/// Take a node offline or bring it back (`nodectl modify --offline`).
#[utoipa::path(put, path = "/v1/nodes/{name}/offline", tag = "operator", request_body = OfflineChange,
    params(("name" = String, Path, description = "the node")),
    responses((status = 501, body = ApiError), (status = 400, body = ApiError), (status = 403, body = ApiError)))]
pub async fn set_offline(Path(_name): Path<String>, body: Body<OfflineChange>) -> ApiError {
    match body {
        Ok(_) => not_yet("modify NODE --offline yes|no"),
        Err(e) => e.into(),
    }
}

/// Remove a node (`nodectl remove`).
#[utoipa::path(delete, path = "/v1/nodes/{name}", tag = "admin",
    params(("name" = String, Path, description = "the node")),
    responses((status = 501, body = ApiError), (status = 403, body = ApiError)))]
pub async fn remove(Path(_name): Path<String>) -> ApiError {
    not_yet("remove NODE")
}

/// `POST /v1/renew-crypto`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    #[serde(default)]
    pub node_certificates: bool,
    #[serde(default)]
    pub cluster_certificate: bool,
    #[serde(default)]
    pub ssh_keys: bool,
    #[serde(default)]
    pub ca: bool,
    #[serde(default)]
    pub nodes: Vec<String>,
}

/// Renew certificates and keys (`nodectl renew-crypto`).
#[utoipa::path(post, path = "/v1/renew-crypto", tag = "admin", request_body = RenewRequest,
    responses((status = 501, body = ApiError), (status = 400, body = ApiError), (status = 403, body = ApiError)))]
pub async fn renew(body: Body<RenewRequest>) -> ApiError {
    match body {
        Ok(_) => not_yet("renew-crypto"),
        Err(e) => e.into(),
    }
}
