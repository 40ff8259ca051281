//! Integration tests: real binaries, real TLS over loopback, real files.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_debug_implementations
)]

mod support;

mod accept;
mod api;
mod authorization;
mod ca_rotation;
mod cli;
mod consensus;
mod converge;
mod crash;
mod flood;
mod frames;
mod hsm;
mod impostor;
mod join;
mod layers;
mod lifecycle;
mod metrics;
mod openssl;
mod renew;
mod secrets;
mod sshd;
mod verify;
