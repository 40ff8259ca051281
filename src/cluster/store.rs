//! The cluster config as this node holds it (`config.json`), and who may
//! change it.

use ssconf::Ssconf;

use crate::core::{Error, Result};
use crate::state::config::ClusterConfig;
use crate::state::{self, StateDir, MODE_SECRET};

/// Loads `config.json`.
pub fn load_config(state: &StateDir) -> Result<ClusterConfig> {
    state::read_json(&state.config_json())
}

/// Loads `config.json`, with its text as written (what a candidate is
/// sent, without serialising the config again).
pub fn load_config_text(state: &StateDir) -> Result<(ClusterConfig, String)> {
    let path = state.config_json();
    let malformed = |reason: String| Error::State {
        path: path.clone(),
        reason,
    };
    let text = String::from_utf8(state::read_file(&path)?)
        .map_err(|e| malformed(format!("not UTF-8: {e}")))?;
    let config =
        serde_json::from_str(&text).map_err(|e| malformed(format!("malformed JSON: {e}")))?;
    Ok((config, text))
}

/// Saves `config.json` atomically, mode 0600.
pub fn save_config(state: &StateDir, config: &ClusterConfig) -> Result<()> {
    state.write(&state.config_json(), &state::to_json(config)?, MODE_SECRET)
}

/// The config, if this node is the master; otherwise the SPEC's error
/// naming the master.
pub fn master_config(state: &StateDir) -> Result<ClusterConfig> {
    state.check_initialised()?;
    let identity = state.load_identity()?;
    let not_master = |master: &str| {
        Error::Invalid(format!(
            "this node is not the master (master is {master}); run this on {master}"
        ))
    };
    if !state.config_json().exists() {
        let ssconf = Ssconf::load(&state.ssconf_dir())?;
        return Err(not_master(&ssconf.master_node));
    }
    let config = load_config(state)?;
    let master = config.master()?;
    if master.uuid != identity.uuid {
        return Err(not_master(&master.name));
    }
    Ok(config)
}
