//! The join connection string an operator pastes.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(token) = noded::state::token::JoinToken::parse(text) {
            let _ = token.ca_pin();
        }
    }
});
