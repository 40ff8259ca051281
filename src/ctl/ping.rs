//! `nodectl ping`: from any node, with that node's client certificate.

use std::time::{Duration, Instant};

use serde::Serialize;
use ssconf::Ssconf;

use super::output::{print_json, print_table};
use super::Outcome;
use crate::core::{Error, Result};
use crate::rpc::fanout::{self, fan_out, CONCURRENCY};
use crate::rpc::RpcClient;
use crate::state::StateDir;
use crate::wire::{Procedure, Reply};

/// One row of `nodectl ping`.
#[derive(Debug, Serialize)]
struct PingResult {
    node: String,
    ok: bool,
    rtt_ms: Option<f64>,
    error: Option<String>,
}

/// `nodectl ping`: from any node, with that node's client certificate.
pub async fn ping(
    state: &StateDir,
    nodes: &[String],
    json: bool,
    timeout: Duration,
) -> Result<Outcome> {
    state.check_initialised()?;
    let ssconf = Ssconf::load(&state.ssconf_dir())?;
    let targets: Vec<(String, String)> = if nodes.is_empty() {
        ssconf
            .online_nodes
            .iter()
            .filter_map(|n| ssconf.address_of(n).map(|a| (n.clone(), a.to_owned())))
            .collect()
    } else {
        nodes
            .iter()
            .map(|n| {
                ssconf
                    .address_of(n)
                    .map(|a| (n.clone(), a.to_owned()))
                    .ok_or_else(|| {
                        Error::Invalid(format!(
                            "unknown node {n:?}; `nodectl list` shows the cluster's nodes"
                        ))
                    })
            })
            .collect::<Result<_>>()?
    };
    let mut client = RpcClient::from_state(state)?;
    client.connect_timeout = timeout;
    client.call_timeout = timeout;
    let outcomes = fan_out(&targets, CONCURRENCY, &fanout::quiet, |(node, address)| {
        let client = client.clone();
        async move {
            let mut conn = client.connect(&node, &address).await?;
            // The round trip of the RPC alone, on the open connection.
            let start = Instant::now();
            match conn.call(Procedure::Ping).await? {
                Reply::Pong { .. } => Ok(start.elapsed()),
                other => Err(Error::Remote {
                    node: node.clone(),
                    message: format!("unexpected reply {other:?}"),
                }),
            }
        }
    })
    .await;
    let results: Vec<PingResult> = outcomes
        .into_iter()
        .map(|((node, _), result)| match result {
            Ok(rtt) => PingResult {
                node,
                ok: true,
                rtt_ms: Some((rtt.as_secs_f64() * 1e6).round() / 1000.0),
                error: None,
            },
            Err(e) => PingResult {
                node,
                ok: false,
                rtt_ms: None,
                error: Some(e.to_string()),
            },
        })
        .collect();
    let all_ok = results.iter().all(|r| r.ok);
    let failure = results
        .iter()
        .filter(|r| !r.ok)
        .map(|r| r.error.clone().unwrap_or_else(|| "failed".into()))
        .collect::<Vec<_>>();
    let total = results.len();
    if json {
        print_json(&PingResults { results })?;
    } else {
        let table: Vec<Vec<String>> = results
            .iter()
            .map(|r| match (&r.rtt_ms, &r.error) {
                (Some(ms), _) => vec![r.node.clone(), "ok".into(), format!("{ms:.3} ms")],
                (_, err) => vec![
                    r.node.clone(),
                    "FAILED".into(),
                    err.clone().unwrap_or_default(),
                ],
            })
            .collect();
        print_table(&["NODE", "RESULT", "DETAIL"], &table)?;
    }
    if let Some(first) = failure.first() {
        eprintln!("error: {} of {total} nodes failed; {first}", failure.len());
    }
    Ok(if all_ok {
        Outcome::Success
    } else {
        Outcome::Failed
    })
}

/// `nodectl ping --json`.
#[derive(Debug, Serialize)]
struct PingResults {
    results: Vec<PingResult>,
}
