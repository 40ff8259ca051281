//! Role changes, removal and renewal over the API: the steps of
//! [`crate::cluster::lifecycle`] and [`crate::cluster::renewal`], the same
//! nodectl runs, with what they say collected into the reply.

use std::sync::{Arc, Mutex};

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

use super::admission::Caller;
use super::error::ApiError;
use super::handlers::record;
use super::ApiState;
use crate::cluster::audit::result_of;
use crate::cluster::ca_rotation::CaPlan;
use crate::cluster::lifecycle::{self, Narration};
use crate::cluster::renewal::{self, RenewPlan};
use crate::cluster::PushOutcome;
use crate::state::users::AuditEntry;

type Api = State<Arc<ApiState>>;

/// A node that did not take a committed change (the convergence loop keeps
/// retrying it).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct NotUpdated {
    pub node: String,
    pub reason: String,
}

/// How a change ended: committed, with what it did.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ChangeOutcome {
    /// `ok`, or `partial` when some nodes did not take it yet.
    pub result: String,
    /// What was done, line by line (what nodectl prints).
    pub messages: Vec<String>,
    pub warnings: Vec<String>,
    pub not_updated: Vec<NotUpdated>,
}

/// The lines and warnings a change says.
#[derive(Debug, Default)]
struct Said {
    lines: Mutex<Vec<String>>,
    warnings: Mutex<Vec<String>>,
}

fn keep(into: &Mutex<Vec<String>>, line: &str) {
    match into.lock() {
        Ok(mut v) => v.push(line.to_owned()),
        Err(poisoned) => poisoned.into_inner().push(line.to_owned()),
    }
}

fn taken(from: Mutex<Vec<String>>) -> Vec<String> {
    from.into_inner().unwrap_or_else(|p| p.into_inner())
}

/// The change asked for.
#[derive(Debug, Clone)]
enum Change {
    Candidate(bool),
    Offline(bool),
    Remove,
    Renew(RenewPlan),
}

impl Change {
    /// The action, as the audit trail names it (as nodectl's entries do).
    fn action(&self) -> String {
        match self {
            Change::Candidate(true) => "promote".into(),
            Change::Candidate(false) => "demote".into(),
            Change::Offline(true) => "offline".into(),
            Change::Offline(false) => "online".into(),
            Change::Remove => "remove".into(),
            Change::Renew(plan) => {
                let what: Vec<&str> = [
                    (plan.node_certificates, "node-certificates"),
                    (plan.cluster_certificate, "cluster-certificate"),
                    (plan.ssh_keys, "ssh-keys"),
                ]
                .into_iter()
                .filter_map(|(set, name)| set.then_some(name))
                .chain(plan.ca.map(|ca| ca.audit_name()))
                .collect();
                format!("renew-crypto {}", what.join(","))
            }
        }
    }
}

/// Runs one change on `name` in a task of its own, so that a
/// client that leaves or a request that times out does not cut a change
/// halfway: it completes and is audited all the same.
async fn run(
    api: &Arc<ApiState>,
    caller: &Caller,
    name: &str,
    change: Change,
    auto_promote: bool,
) -> Result<Json<ChangeOutcome>, ApiError> {
    let (api, caller, name) = (api.clone(), caller.clone(), name.to_owned());
    // A thread of the blocking pool drives it: the renewal holds the CA's
    // key store, which is not Send, across its awaits.
    let runtime = tokio::runtime::Handle::current();
    let task = tokio::task::spawn_blocking(move || {
        runtime.block_on(carry_out(&api, &caller, &name, change, auto_promote))
    });
    task.await
        .map_err(|e| ApiError::from(crate::Error::Invalid(format!("change task failed: {e}"))))?
}

/// Carries out one lifecycle change on `name` (never waiting for the
/// cluster lock: 409 when it is held), audits it, and answers its outcome.
async fn carry_out(
    api: &ApiState,
    caller: &Caller,
    name: &str,
    change: Change,
    auto_promote: bool,
) -> Result<Json<ChangeOutcome>, ApiError> {
    let said = Said::default();
    let on_line = |line: &str| keep(&said.lines, line);
    let on_warning = |line: &str| keep(&said.warnings, line);
    let talk = Narration {
        on_line: &on_line,
        on_warning: &on_warning,
        on_step: &crate::rpc::fanout::quiet,
        on_failure: &on_warning,
    };
    let state = &api.daemon.state;
    let done: crate::Result<PushOutcome> = match &change {
        Change::Candidate(yes) => {
            lifecycle::set_candidate(state, name, *yes, auto_promote, false, talk).await
        }
        Change::Offline(yes) => {
            lifecycle::set_offline(state, name, *yes, auto_promote, false, talk).await
        }
        Change::Remove => lifecycle::remove(state, name, false, talk).await,
        Change::Renew(plan) => renewal::renew(state, plan, false, talk).await,
    };
    let result = match &done {
        Ok(push) if !push.is_complete() => Some("partial".to_owned()),
        other => result_of(other),
    };
    if let Some(result) = &result {
        let actor = format!("user:{}", caller.name);
        record(api, AuditEntry::now(&actor, &change.action(), name, result)).await;
    }
    let push = done?;
    Ok(Json(ChangeOutcome {
        result: result.unwrap_or_default(),
        messages: taken(said.lines),
        warnings: taken(said.warnings),
        not_updated: push
            .unreachable
            .into_iter()
            .map(|(node, reason)| NotUpdated { node, reason })
            .collect(),
    }))
}

type Body<T> = Result<Json<T>, JsonRejection>;

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
    responses((status = 200, body = ChangeOutcome), (status = 400, body = ApiError),
        (status = 403, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub async fn set_role(
    State(api): Api,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Body<RoleChange>,
) -> Result<Json<ChangeOutcome>, ApiError> {
    let Json(req) = body?;
    let change = Change::Candidate(req.master_candidate);
    run(&api, &caller, &name, change, req.auto_promote).await
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
    responses((status = 200, body = ChangeOutcome), (status = 400, body = ApiError),
        (status = 403, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub async fn set_offline(
    State(api): Api,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Body<OfflineChange>,
) -> Result<Json<ChangeOutcome>, ApiError> {
    let Json(req) = body?;
    run(
        &api,
        &caller,
        &name,
        Change::Offline(req.offline),
        req.auto_promote,
    )
    .await
}

/// Remove a node (`nodectl remove`).
#[utoipa::path(delete, path = "/v1/nodes/{name}", tag = "admin",
    params(("name" = String, Path, description = "the node")),
    responses((status = 200, body = ChangeOutcome), (status = 400, body = ApiError),
        (status = 403, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub async fn remove(
    State(api): Api,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Json<ChangeOutcome>, ApiError> {
    run(&api, &caller, &name, Change::Remove, false).await
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
    /// `--new-ca`: begin a CA rotation (or go on with the one under way).
    #[serde(default)]
    pub ca: bool,
    /// `--continue-ca`.
    #[serde(default)]
    pub continue_ca: bool,
    /// `--rollback-ca`.
    #[serde(default)]
    pub rollback_ca: bool,
    /// `--stop-after`: `trust` or `reissue`, with `ca` or `continue_ca`.
    #[serde(default)]
    pub ca_stop_after: Option<String>,
    #[serde(default)]
    pub nodes: Vec<String>,
}

/// Renew certificates and keys (`nodectl renew-crypto`); the `nodes`
/// limit node-certificate renewal, as `--node` does.
#[utoipa::path(post, path = "/v1/renew-crypto", tag = "admin", request_body = RenewRequest,
    responses((status = 200, body = ChangeOutcome), (status = 400, body = ApiError),
        (status = 403, body = ApiError), (status = 409, body = ApiError)))]
pub async fn renew(
    State(api): Api,
    Extension(caller): Extension<Caller>,
    body: Body<RenewRequest>,
) -> Result<Json<ChangeOutcome>, ApiError> {
    let Json(req) = body?;
    let ca = CaPlan::from_flags(
        req.ca,
        req.continue_ca,
        req.rollback_ca,
        req.ca_stop_after.as_deref(),
    )
    .map_err(|e| ApiError::bad_request(e.to_string()))?;
    if !(req.node_certificates || req.cluster_certificate || req.ssh_keys || ca.is_some()) {
        return Err(ApiError::bad_request(
            "node_certificates, cluster_certificate, ssh_keys, ca, continue_ca, rollback_ca: \
             at least one must be true",
        ));
    }
    if ca.is_some() && (req.node_certificates || req.cluster_certificate) {
        return Err(ApiError::bad_request(
            "node_certificates, cluster_certificate: not with a CA rotation, whose reissue \
             phase renews them",
        ));
    }
    if !req.nodes.is_empty() && !req.node_certificates {
        return Err(ApiError::bad_request(
            "nodes: limits node_certificates, which is not asked",
        ));
    }
    let target = if req.nodes.is_empty() {
        "cluster".to_owned()
    } else {
        req.nodes.join(",")
    };
    let plan = RenewPlan {
        node_certificates: req.node_certificates,
        cluster_certificate: req.cluster_certificate,
        ssh_keys: req.ssh_keys,
        ca,
        nodes: req.nodes,
    };
    run(&api, &caller, &target, Change::Renew(plan), false).await
}
