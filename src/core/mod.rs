//! What every other part of noded builds on, and that depends on nothing
//! else here: the error type, secret text, hex digests, and the clock.

pub mod error;
pub mod hex;
pub mod secret;
pub mod time;

pub use error::{chain, Error, FrameError, Result};
pub use secret::Secret;
