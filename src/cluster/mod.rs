//! The cluster as the master changes it: the lock of mutating commands
//! ([`lock`]), the config this node holds ([`store`]), commit and push to
//! the nodes ([`mod@push`]), the steps of a certificate renewal ([`renew`]),
//! and the consistency checks of `verify` ([`verify`]).

pub mod audit;
pub mod ca_rotation;
pub mod failover;
pub mod lifecycle;
pub mod listing;
pub mod lock;
pub mod push;
pub mod raft;
pub mod renew;
pub mod renewal;
pub mod store;
pub mod tokens;
pub mod ttl;
pub mod users;
pub mod verify;

pub use lock::ClusterLock;
pub use push::{
    apply_locally, call, candidate_ssh_keys, commit, commit_resending, distribute, push, PushItems,
    PushOutcome,
};
pub use store::{load_config, load_config_text, master_config, save_config};
