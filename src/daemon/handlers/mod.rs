//! One file per procedure family.

pub mod roles;
