//! What every other part of noded builds on, and that depends on nothing
//! else here: the error type, secret text, hex digests, and the clock.

pub mod error;
pub mod hex;
pub mod secret;
pub mod time;

pub use error::{chain, Error, FrameError, Result};
pub use secret::Secret;

/// `mutex`'s guard, also when a thread panicked while holding it: noded's
/// tables behind a mutex stay usable (each write is a whole entry).
pub fn locked<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}
