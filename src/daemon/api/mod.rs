//! The remote API (SPEC §11): HTTP/1.1 JSON over TLS 1.3 with client
//! certificates, served by `noded --api-listen ADDR:PORT`.
//!
//! - [`admission`]: who is admitted in the handshake (a user's certificate
//!   from the cluster CA, not revoked) and the allow list that follows
//!   `config.json`;
//! - [`server`]: the accept loop and one connection, closed when its user
//!   is revoked;
//! - this file: the router, the role each resource needs, the limits, the
//!   redirect of a node that is not the master;
//! - [`handlers`], [`changes`]: the resources; [`openapi`]: their document;
//!   [`error`]: the JSON errors.
//!
//! On a node that is not the master every request is answered `307` with
//! `Location` the master's API address: the master's host from ssconf
//! `node_addresses` and this node's API port; every node is assumed to use
//! the same API port (5080 by convention).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::Router;
use tokio::sync::Semaphore;

pub mod admission;
pub mod changes;
pub mod error;
pub mod handlers;
pub mod openapi;
pub mod server;

use admission::{AllowListHandle, Caller};
use error::ApiError;

use super::auth::DenialLog;
use super::budget::Budgets;
use super::server::Daemon;
use crate::state::users::{AuditEntry, UserRole};

/// Largest request body: 1 MiB (413 beyond).
pub const MAX_BODY: usize = 1 << 20;
/// Largest request head (request line and headers): 64 KiB; hyper answers
/// 431 beyond.
pub const MAX_HEAD: usize = 64 << 10;
/// Requests one user may have in flight at once (429 beyond).
pub const PER_USER_REQUESTS: usize = 8;
/// API connections admitted at once; more are closed after their
/// handshake. Connections still in their handshake count against the
/// daemon's handshake budgets instead (`--max-handshakes`,
/// `--max-handshakes-per-source`), in budgets of the API's own.
pub const MAX_CONNECTIONS: u32 = 1024;

/// What the API runs with.
#[derive(Debug)]
pub struct ApiState {
    pub daemon: Arc<Daemon>,
    pub users: Arc<AllowListHandle>,
    /// This node's API port: the master's is assumed to be the same.
    pub port: u16,
    /// Time one request may take (the daemon's `--request-timeout`).
    pub request_timeout: Duration,
    /// Each user's in-flight requests.
    in_flight: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// Handshakes under way (per source, and in all) and connections
    /// admitted: the RPC port's budgets, kept apart so that neither port
    /// can starve the other.
    pub budgets: Budgets,
    /// The API's refused connections, each logged once (rate-limited).
    pub denials: DenialLog,
}

impl ApiState {
    pub fn new(daemon: Arc<Daemon>, users: Arc<AllowListHandle>, port: u16) -> Self {
        let request_timeout = daemon.limits.request_timeout;
        let budgets = Budgets::new(
            daemon.limits.max_handshakes,
            daemon.limits.max_handshakes_per_source,
            MAX_CONNECTIONS,
        );
        ApiState {
            daemon,
            users,
            port,
            request_timeout,
            in_flight: Mutex::new(HashMap::new()),
            budgets,
            denials: DenialLog::default(),
        }
    }

    fn slots_of(&self, user: &str) -> Arc<Semaphore> {
        let mut map = crate::core::locked(&self.in_flight);
        map.entry(user.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(PER_USER_REQUESTS)))
            .clone()
    }
}

/// The role a request needs, by method and route (SPEC §11.2).
pub fn role_needed(method: &Method, route: &str) -> UserRole {
    match (method.as_str(), route) {
        ("GET", "/v1/users") => UserRole::Admin,
        ("GET", _) => UserRole::Readonly,
        ("POST", "/v1/tokens") | ("PUT", _) => UserRole::Operator,
        _ => UserRole::Admin,
    }
}

/// The API's routes, roles, limits and redirect.
pub fn router(api: Arc<ApiState>) -> Router {
    let routes = Router::new()
        .route("/v1/nodes", get(handlers::nodes))
        .route("/v1/status", get(handlers::status))
        .route("/v1/verify", get(handlers::verify))
        .route("/v1/audit", get(handlers::audit_trail))
        .route("/v1/openapi.json", get(openapi::openapi_json))
        .route("/v1/tokens", post(handlers::create_token))
        .route("/v1/nodes/{name}/role", put(changes::set_role))
        .route("/v1/nodes/{name}/offline", put(changes::set_offline))
        .route("/v1/nodes/{name}", delete(changes::remove))
        .route("/v1/renew-crypto", post(changes::renew))
        .route(
            "/v1/users",
            get(handlers::list_users).post(handlers::add_user),
        )
        .route("/v1/users/{name}", delete(handlers::revoke_user))
        .route_layer(middleware::from_fn_with_state(api.clone(), guard));
    routes
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn(declared_too_large))
        .layer(middleware::from_fn_with_state(api.clone(), redirect))
        .with_state(api)
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such resource")
}

/// Per-user concurrency, then the role check (a refusal is audited) and the
/// request itself, both within the request timeout. The slot is taken
/// first, so refused requests count against the user's limit too.
async fn guard(
    State(api): State<Arc<ApiState>>,
    route: MatchedPath,
    request: Request,
    next: Next,
) -> Response {
    let Some(caller) = request.extensions().get::<Caller>().cloned() else {
        return ApiError::new(StatusCode::FORBIDDEN, "forbidden", "no user").into_response();
    };
    let Some(role) = caller.role else {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "this node holds no user list; ask the master",
        )
        .into_response();
    };
    let Ok(_slot) = api.slots_of(&caller.name).try_acquire_owned() else {
        return ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_requests",
            format!("at most {PER_USER_REQUESTS} requests of one user at once"),
        )
        .into_response();
    };
    let needed = role_needed(request.method(), route.as_str());
    let work = async {
        if role.allows(needed) {
            return next.run(request).await;
        }
        let what = format!("{} {}", request.method(), request.uri().path());
        let why = format!("needs the {} role", needed.as_str());
        let result = format!("refused: {why}, user has {}", role.as_str());
        let actor = format!("user:{}", caller.name);
        handlers::record(&api, AuditEntry::now(&actor, "refused", &what, &result)).await;
        let (name, role) = (&caller.name, role.as_str());
        let error = format!("{what} {why}; user {name} has the {role} role");
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", error).into_response()
    };
    match tokio::time::timeout(api.request_timeout, work).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            format!("the request took longer than {:?}", api.request_timeout),
        )
        .into_response(),
    }
}

/// A body declared larger than [`MAX_BODY`] is refused before a byte of it
/// is read: no `100 Continue` goes out, so the client sends nothing more
/// and reads the 413. (A body that is not declared is cut at the limit by
/// `DefaultBodyLimit`.)
async fn declared_too_large(request: Request, next: Next) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        let error = ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body is larger than {MAX_BODY} bytes"),
        );
        let mut response = error.into_response();
        response.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
        return response;
    }
    next.run(request).await
}

/// On a node that is not the master: 307 to the master's API.
async fn redirect(State(api): State<Arc<ApiState>>, request: Request, next: Next) -> Response {
    if api.daemon.is_master.load(Ordering::Acquire) {
        return next.run(request).await;
    }
    let path = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    match master_api(&api) {
        Some(base) => {
            let location = format!("{base}{path}");
            let body = ApiError::new(
                StatusCode::TEMPORARY_REDIRECT,
                "redirect",
                format!("this node is not the master; the API is at {location}"),
            );
            let mut response = body.into_response();
            if let Ok(value) = header::HeaderValue::from_str(&location) {
                response.headers_mut().insert(header::LOCATION, value);
            }
            response
        }
        None => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "this node is not the master and does not know the master's address",
        )
        .into_response(),
    }
}

/// `https://MASTER_HOST:PORT` from ssconf.
fn master_api(api: &ApiState) -> Option<String> {
    let set = ssconf::Ssconf::load(&api.daemon.state.ssconf_dir()).ok()?;
    let (_, address) = set
        .node_addresses
        .iter()
        .find(|(name, _)| *name == set.master_node)?;
    let (host, _) = address.rsplit_once(':')?;
    Some(format!("https://{host}:{}", api.port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_of_routes() {
        use UserRole::*;
        let rows = [
            ("GET", "/v1/nodes", Readonly),
            ("GET", "/v1/status", Readonly),
            ("GET", "/v1/verify", Readonly),
            ("GET", "/v1/audit", Readonly),
            ("GET", "/v1/openapi.json", Readonly),
            ("PUT", "/v1/nodes/{name}/role", Operator),
            ("PUT", "/v1/nodes/{name}/offline", Operator),
            ("POST", "/v1/tokens", Operator),
            ("DELETE", "/v1/nodes/{name}", Admin),
            ("POST", "/v1/renew-crypto", Admin),
            ("GET", "/v1/users", Admin),
            ("POST", "/v1/users", Admin),
            ("DELETE", "/v1/users/{name}", Admin),
        ];
        for (method, route, want) in rows {
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            assert_eq!(role_needed(&method, route), want, "{method} {route}");
        }
    }
}
