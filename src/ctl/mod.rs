//! `nodectl`: one file per command, and how the commands speak
//! ([`output`]). Each command takes its options as a plain struct or
//! arguments; the command line (`crate::cli`) parses and dispatches.

pub mod audit;
pub mod init;
pub mod join;
pub mod lifecycle;
pub mod list;
pub mod output;
pub mod ping;
pub mod progress;
pub mod renew;
pub mod status;
pub mod token;
pub mod user;
pub mod verify;

pub use output::Outcome;
