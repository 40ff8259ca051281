//! The exclusive lock of mutating commands (`config.lock`).

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;

use crate::core::{Error, Result};
use crate::state::{StateDir, MODE_SECRET};

/// The exclusive lock on the cluster config (`config.lock` in the state
/// dir), held for the whole of a mutating command.
#[derive(Debug)]
pub struct ClusterLock {
    _file: File,
}

impl ClusterLock {
    /// Takes the lock. Without `wait`, fails at once naming the holder.
    pub fn acquire(state: &StateDir, wait: bool, holder: &str) -> Result<Self> {
        let path = state.config_lock();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(MODE_SECRET)
            .open(&path)
            .map_err(Error::io(&path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) if wait => file.lock().map_err(Error::io(&path))?,
            Err(TryLockError::WouldBlock) => {
                let mut who = String::new();
                let _ = file.read_to_string(&mut who);
                return Err(Error::LockHeld(format!(
                    "another command holds the cluster lock ({}); retry when it is done, or pass --wait",
                    who.trim()
                )));
            }
            Err(TryLockError::Error(e)) => return Err(Error::io(&path)(e)),
        }
        // Record the holder for whoever finds the lock taken.
        let _ = file.set_len(0);
        let _ = file.rewind();
        let _ = write!(file, "pid {}: {holder}", std::process::id());
        let _ = file.flush();
        Ok(ClusterLock { _file: file })
    }
}
