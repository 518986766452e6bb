//! Arbitrary text as a client's WebSocket message: decoding never panics,
//! and whatever it accepts is within the limits the room relies on.
#![no_main]

use jwtchat::fuzzing::{Incoming, decode};
use libfuzzer_sys::fuzz_target;

const MAX: usize = 64;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return; // tungstenite refuses non-UTF-8 text frames before this
    };
    match decode(text, MAX) {
        Ok(Incoming::Chat { text, id }) => {
            assert!(!text.trim().is_empty());
            assert!(text.len() <= MAX);
            assert!(id.is_none_or(|id| id.len() <= 64));
        }
        Ok(Incoming::Reauth(_)) => {}
        Err(error) => assert!(!error.to_string().is_empty()),
    }
});
