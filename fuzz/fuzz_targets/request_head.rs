//! Arbitrary bytes as a request head: the parser, every accessor the
//! server uses on a request, the WebSocket handshake checks, and the static
//! file path resolution, which must never name anything outside the root.
#![no_main]

use std::sync::OnceLock;

use jwtchat::fuzzing::{Tokens, Trace, bearer_token, check, content_length, parse_head, resolve};
use libfuzzer_sys::fuzz_target;

fn tokens() -> &'static Tokens {
    static TOKENS: OnceLock<Tokens> = OnceLock::new();
    TOKENS.get_or_init(|| Tokens::new(&[7; 32], "jwtchat", 900))
}

/// A resolved path is plain names joined by `/`: nothing that climbs out.
fn check_resolved(relative: &str) {
    assert!(!relative.is_empty() && !relative.starts_with('/'), "{relative:?}");
    for name in relative.split('/') {
        assert!(!name.is_empty() && name != "." && name != "..", "{relative:?}");
        assert!(!name.contains(['\\', '\0', ':']), "{relative:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((request, len))) = parse_head(data) {
        assert!(len <= data.len());
        let _ = content_length(&request);
        let _ = request.keep_alive();
        let _ = request.query_param("token");
        let _ = bearer_token(&request);
        let mut trace = Trace::new(true);
        trace.request(&request);
        let _ = check(&request, tokens(), &["https://chat.example".to_string()], &mut trace);
        let _ = trace.finish();
        if let Ok(relative) = resolve(request.path()) {
            check_resolved(&relative);
        }
    }
    if let Ok(path) = std::str::from_utf8(data) {
        if let Ok(relative) = resolve(path) {
            check_resolved(&relative);
        }
    }
});
