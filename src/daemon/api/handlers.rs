//! The API's resources (SPEC §11.2), each a thin handler over the same
//! cluster code nodectl runs.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

use super::admission::Caller;
use super::error::ApiError;
use super::ApiState;
use crate::cluster::audit::{self, AuditRow, AuditTrail};
use crate::cluster::listing::{health_by_name, node_rows, NodeList, Status};
use crate::cluster::users::{self, NewUser, UserList, UserRow};
use crate::cluster::{load_config, ttl};
use crate::core::time::{now, rfc3339};
use crate::rpc::fanout::quiet;
use crate::state::config::ClusterConfig;
use crate::state::users::{AuditEntry, UserRole};

type Api = State<Arc<ApiState>>;
type Body<T> = Result<Json<T>, JsonRejection>;

fn config(api: &ApiState) -> Result<ClusterConfig, ApiError> {
    Ok(load_config(&api.daemon.state)?)
}

fn actor(caller: &Caller) -> String {
    format!("user:{}", caller.name)
}

/// The nodes, as `nodectl list --json` shows them.
#[utoipa::path(get, path = "/v1/nodes", tag = "readonly",
    responses((status = 200, body = NodeList), (status = 403, body = ApiError)))]
pub async fn nodes(State(api): Api) -> Result<Json<NodeList>, ApiError> {
    let config = config(&api)?;
    let health = health_by_name(&config, api.daemon.health.snapshot());
    Ok(Json(NodeList {
        nodes: node_rows(&config, &health),
    }))
}

/// The cluster at a glance, as `nodectl status --json` shows it: the
/// master, the CA rotation phase, each node's health as the master's
/// convergence loop last saw it.
#[utoipa::path(get, path = "/v1/status", tag = "readonly",
    responses((status = 200, body = Status), (status = 403, body = ApiError)))]
pub async fn status(State(api): Api) -> Result<Json<Status>, ApiError> {
    let config = config(&api)?;
    let health = health_by_name(&config, api.daemon.health.snapshot());
    let raft = api.daemon.raft.load().as_ref().map(|n| n.info());
    Ok(Json(crate::cluster::listing::status(
        &config,
        &health,
        raft.as_ref(),
    )?))
}

/// `{"findings": [...]}`, as `nodectl verify --json`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct VerifyReport {
    /// Each: `{"severity", "node", "code", "message", "fix"}`.
    #[schema(value_type = Vec<Object>)]
    pub findings: Vec<crate::cluster::verify::Finding>,
}

/// The consistency checks of `nodectl verify`.
#[utoipa::path(get, path = "/v1/verify", tag = "readonly",
    responses((status = 200, body = VerifyReport), (status = 403, body = ApiError)))]
pub async fn verify(State(api): Api) -> Result<Json<VerifyReport>, ApiError> {
    let (findings, _) = crate::cluster::verify::findings(&api.daemon.state, &quiet).await?;
    Ok(Json(VerifyReport { findings }))
}

/// `GET /v1/audit?since=TIME`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct AuditQuery {
    /// RFC 3339, or a duration back from now (`1h`).
    pub since: Option<String>,
}

/// The audit trail.
#[utoipa::path(get, path = "/v1/audit", tag = "readonly", params(AuditQuery),
    responses((status = 200, body = AuditTrail), (status = 400, body = ApiError)))]
pub async fn audit_trail(
    State(api): Api,
    Query(query): Query<AuditQuery>,
) -> Result<Json<AuditTrail>, ApiError> {
    let since = query
        .since
        .map(|s| audit::parse_since(&s, now()))
        .transpose()?;
    let entries = audit::entries(&api.daemon.state, since)?
        .into_iter()
        .map(AuditRow::from)
        .collect();
    Ok(Json(AuditTrail { entries }))
}

/// `POST /v1/tokens`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// Validity, e.g. `30m`, `1h` (default `1h`).
    pub ttl: Option<String>,
    /// Whether the node joins as a master candidate.
    #[serde(default)]
    pub master_candidate: bool,
}

/// A new join token.
#[derive(Serialize, utoipa::ToSchema)]
pub struct TokenCreated {
    pub id: String,
    /// RFC 3339, UTC.
    pub expires: String,
    pub master_candidate: bool,
    /// What `nodectl join` takes on the new node.
    pub connection_string: String,
}

/// Without the connection string, which holds the token's secret.
impl std::fmt::Debug for TokenCreated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCreated")
            .field("id", &self.id)
            .field("expires", &self.expires)
            .field("master_candidate", &self.master_candidate)
            .finish_non_exhaustive()
    }
}

/// Creates a one-time join token (`nodectl token create`).
#[utoipa::path(post, path = "/v1/tokens", tag = "operator", request_body = TokenRequest,
    responses((status = 201, body = TokenCreated), (status = 400, body = ApiError),
        (status = 403, body = ApiError), (status = 409, body = ApiError)))]
pub async fn create_token(
    State(api): Api,
    Extension(caller): Extension<Caller>,
    body: Body<TokenRequest>,
) -> Result<(StatusCode, Json<TokenCreated>), ApiError> {
    let Json(req) = body?;
    let ttl = ttl::parse_at_most(
        req.ttl.as_deref().unwrap_or("1h"),
        crate::core::time::MAX_TOKEN_TTL,
    )
    .map_err(|e| ApiError::bad_request(format!("ttl: {e}")))?;
    let mc = req.master_candidate;
    let (api, actor) = (api.clone(), actor(&caller));
    // In a task of its own: a client that leaves does not lose the entry.
    let created = tokio::spawn(async move {
        let state = api.daemon.state.clone();
        let created = tokio::task::spawn_blocking(move || {
            crate::cluster::tokens::create(&state, ttl, mc, false)
        })
        .await
        .map_err(|e| crate::Error::Invalid(format!("token task failed: {e}")))?;
        if let Some(result) = audit::result_of(&created) {
            let target = created.as_ref().map(|t| t.id.as_str()).unwrap_or("-");
            let entry = AuditEntry::now(&actor, "token-create", target, &result);
            record(&api, entry).await;
        }
        created
    })
    .await
    .map_err(|e| crate::Error::Invalid(format!("token task failed: {e}")))?;
    let t = created?;
    Ok((
        StatusCode::CREATED,
        Json(TokenCreated {
            id: t.id,
            expires: rfc3339(t.expires),
            master_candidate: t.master_candidate,
            connection_string: t.connection_string,
        }),
    ))
}

/// Appends to the audit trail; a failure is logged, the request goes on.
pub async fn record(api: &ApiState, entry: AuditEntry) {
    if let Err(e) = audit::record(&api.daemon.state, entry).await {
        tracing::error!("API: audit entry not recorded: {e}");
    }
}

/// The users (`nodectl user list`).
#[utoipa::path(get, path = "/v1/users", tag = "admin",
    responses((status = 200, body = UserList), (status = 403, body = ApiError)))]
pub async fn list_users(State(api): Api) -> Result<Json<UserList>, ApiError> {
    let users = users::list(&api.daemon.state)?;
    Ok(Json(UserList {
        users: users.into_iter().map(UserRow::from).collect(),
    }))
}

/// `POST /v1/users`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserRequest {
    pub name: String,
    pub role: UserRole,
    /// The user's certificate signing request, PEM (ECDSA P-256).
    pub csr: String,
    /// Validity, e.g. `30d` (default `90d`, at most `365d`).
    pub ttl: Option<String>,
}

/// A new user.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UserCreated {
    pub user: UserRow,
    /// The user's certificate, PEM.
    pub certificate: String,
}

/// Adds a user (`nodectl user add --csr`).
#[utoipa::path(post, path = "/v1/users", tag = "admin", request_body = UserRequest,
    responses((status = 201, body = UserCreated), (status = 400, body = ApiError),
        (status = 403, body = ApiError), (status = 409, body = ApiError)))]
pub async fn add_user(
    State(api): Api,
    Extension(caller): Extension<Caller>,
    body: Body<UserRequest>,
) -> Result<(StatusCode, Json<UserCreated>), ApiError> {
    let Json(req) = body?;
    let ttl = match &req.ttl {
        Some(text) => ttl::parse(text).map_err(|e| ApiError::bad_request(format!("ttl: {e}")))?,
        None => users::DEFAULT_TTL,
    };
    let new = NewUser {
        name: req.name,
        role: req.role,
        csr_pem: Some(req.csr),
        ttl,
    };
    // In a task of its own: a client that leaves does not cut the commit.
    let (state, actor) = (api.daemon.state.clone(), actor(&caller));
    let added = tokio::spawn(async move { users::add(&state, &actor, &new, false, &quiet).await })
        .await
        .map_err(|e| crate::Error::Invalid(format!("user task failed: {e}")))??;
    Ok((
        StatusCode::CREATED,
        Json(UserCreated {
            user: UserRow::from(added.record),
            certificate: added.cert_pem,
        }),
    ))
}

/// `DELETE /v1/users/{name}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UserRevoked {
    pub revoked: String,
}

/// Revokes a user (`nodectl user revoke`): its open connections close
/// within one second.
#[utoipa::path(delete, path = "/v1/users/{name}", tag = "admin",
    params(("name" = String, Path, description = "the user")),
    responses((status = 200, body = UserRevoked), (status = 403, body = ApiError),
        (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub async fn revoke_user(
    State(api): Api,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Json<UserRevoked>, ApiError> {
    let (state, actor, user) = (api.daemon.state.clone(), actor(&caller), name.clone());
    tokio::spawn(async move { users::revoke(&state, &actor, &user, false, &quiet).await })
        .await
        .map_err(|e| crate::Error::Invalid(format!("user task failed: {e}")))??;
    Ok(Json(UserRevoked { revoked: name }))
}
