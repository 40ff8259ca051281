//! `write-ssconf`: a new ssconf set, refused when it is for another cluster
//! or older than the one held (the `ssconf` crate checks the serial).

use ssconf::Ssconf;

use super::super::server::Daemon;
use super::failed;
use crate::wire::{Reply, RpcError};

pub async fn write(daemon: &Daemon, files: Vec<(String, String)>) -> Result<Reply, RpcError> {
    let _guard = daemon.ssconf_write.lock().await;
    let dir = daemon.state.ssconf_dir();
    let set = Ssconf::parse_files(&files, &dir).map_err(|e| failed(e.to_string()))?;
    let serial = set.serial;
    let write_dir = dir.clone();
    tokio::task::spawn_blocking(move || -> Result<(), String> {
        let name_file = write_dir.join(ssconf::SsconfKey::ClusterName.file_name());
        match std::fs::read_to_string(&name_file) {
            Ok(current) if current.trim_end() != set.cluster_name => {
                return Err(format!(
                    "ssconf for cluster {:?} refused: this node belongs to cluster {:?}",
                    set.cluster_name,
                    current.trim_end()
                ));
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("{}: {e}", name_file.display())),
        }
        set.store(&write_dir).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| failed(format!("write-ssconf task failed: {e}")))?
    .map_err(failed)?;
    tracing::info!(serial, "ssconf updated");
    // Publish now rather than waiting for the watcher's debounce.
    daemon.reload_ssconf().await;
    Ok(Reply::SsconfWritten { serial })
}
