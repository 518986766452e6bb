//! The upgrade at `/ws` (RFC 6455 §4.2): every bad token is refused with
//! `401 {"error":"invalid_token"}` before any upgrade, and each malformed
//! handshake gets its own status.

mod support;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};
use support::*;

fn now() -> u64 {
    now_secs()
}

/// A token with `"alg":"none"` and an empty signature (RFC 7519 §6.1).
fn unsigned(claims: &Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{header}.{payload}.")
}

/// Sends an upgrade with `token` in the query and asserts the 401.
fn assert_refused(server: &TestServer, token: &str, why: &str) {
    let response = send_raw(
        server.addr,
        upgrade_request(&format!("/ws?token={token}"), "").as_bytes(),
    );
    assert_eq!(response.status, 401, "{why}: {}", response.text());
    assert_eq!(
        response.json(),
        json!({ "error": "invalid_token" }),
        "{why}"
    );
    assert_eq!(response.header("Upgrade"), None, "{why}: must not upgrade");
    assert!(response.header("Sec-WebSocket-Accept").is_none(), "{why}");
    // The same token in the header is refused the same way.
    let bearer = send_raw(
        server.addr,
        upgrade_request("/ws", &format!("Authorization: Bearer {token}\r\n")).as_bytes(),
    );
    assert_eq!(bearer.status, 401, "{why} (bearer)");
}

#[test]
fn valid_tokens_upgrade_from_query_or_header() {
    let server = start();
    let token = server.token("userA");
    let mut by_query = server.connect_token(&token).expect("query token upgrades");
    assert_eq!(by_query.recv()["type"], "welcome");
    let mut by_header = server
        .connect_bearer(&token)
        .expect("bearer token upgrades");
    assert_eq!(by_header.recv()["type"], "welcome");
}

#[test]
fn the_101_carries_the_rfc_accept_key() {
    let server = start();
    let token = server.token("userA");
    let response = send_raw(
        server.addr,
        upgrade_request(&format!("/ws?token={token}"), "").as_bytes(),
    );
    assert_eq!(response.status, 101);
    assert_eq!(response.header("Upgrade"), Some("websocket"));
    assert_eq!(response.header("Connection"), Some("Upgrade"));
    // RFC 6455 §1.3's example key and its answer.
    assert_eq!(
        response.header("Sec-WebSocket-Accept"),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    );
}

#[test]
fn every_kind_of_bad_token_is_refused_before_the_upgrade() {
    let server = start();
    let good = claims_for("1", "userA", 600);
    let cases = [
        ("expired", mint(&claims_for("1", "userA", -1))),
        (
            "expired this very second",
            mint(&claims_for("1", "userA", 0)),
        ),
        (
            "wrong secret",
            mint_with(Algorithm::HS256, b"another-secret-another-secret-12", &good),
        ),
        ("alg none", unsigned(&good)),
        ("HS512", mint_with(Algorithm::HS512, SECRET, &good)),
        ("HS384", mint_with(Algorithm::HS384, SECRET, &good)),
        (
            "wrong issuer",
            mint(&json!({ "sub": "1", "username": "userA",
                "iat": now(), "exp": now() + 600, "iss": "evil" })),
        ),
        (
            "no issuer",
            mint(&json!({ "sub": "1", "username": "userA",
                "iat": now(), "exp": now() + 600 })),
        ),
        (
            "not yet valid",
            mint(&json!({ "sub": "1", "username": "userA",
                "iat": now(), "exp": now() + 600, "nbf": now() + 300, "iss": "jwtchat" })),
        ),
        (
            "exp as a string",
            mint(&json!({ "sub": "1", "username": "userA",
                "iat": now(), "exp": (now() + 600).to_string(), "iss": "jwtchat" })),
        ),
        ("garbage", "not-a-token".to_string()),
        ("three garbage parts", "a.b.c".to_string()),
        ("empty", String::new()),
    ];
    for (why, token) in &cases {
        assert_refused(&server, token, why);
    }
}

#[test]
fn a_tampered_payload_is_refused() {
    let server = start();
    let token = server.token("userA");
    let parts: Vec<&str> = token.split('.').collect();
    let forged = URL_SAFE_NO_PAD.encode(claims_for("1", "userA", 99_999).to_string());
    assert_refused(
        &server,
        &format!("{}.{forged}.{}", parts[0], parts[2]),
        "tampered",
    );
}

#[test]
fn a_missing_token_is_refused() {
    let server = start();
    let response = send_raw(server.addr, upgrade_request("/ws", "").as_bytes());
    assert_eq!(response.status, 401);
    assert_eq!(response.json(), json!({ "error": "invalid_token" }));
    assert!(response.header("WWW-Authenticate").is_some());
}

#[test]
fn a_plain_get_is_told_to_upgrade() {
    let server = start();
    let token = server.token("userA");
    let response = get(server.addr, &format!("/ws?token={token}"));
    assert_eq!(response.status, 426);
    assert_eq!(response.header("Upgrade"), Some("websocket"));
    assert_eq!(response.json()["error"], "upgrade_required");
}

#[test]
fn only_version_13_is_spoken() {
    let server = start();
    let token = server.token("userA");
    for version in ["8", "14", "abc"] {
        let raw = upgrade_request(&format!("/ws?token={token}"), "").replace(
            "Sec-WebSocket-Version: 13",
            &format!("Sec-WebSocket-Version: {version}"),
        );
        let response = send_raw(server.addr, raw.as_bytes());
        assert_eq!(response.status, 426, "version {version}");
        assert_eq!(response.header("Sec-WebSocket-Version"), Some("13"));
    }
}

#[test]
fn malformed_handshakes_are_400() {
    let server = start();
    let token = server.token("userA");
    let good = upgrade_request(&format!("/ws?token={token}"), "");
    let cases = [
        (
            "no key",
            good.replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", ""),
        ),
        (
            "short key",
            good.replace("dGhlIHNhbXBsZSBub25jZQ==", "c2hvcnQ="),
        ),
        (
            "key not base64",
            good.replace("dGhlIHNhbXBsZSBub25jZQ==", "!!!!!!!!!!!!!!!!!!!!!!=="),
        ),
        (
            "no Connection: Upgrade",
            good.replace("Connection: Upgrade\r\n", ""),
        ),
        ("no Host", good.replace("Host: test\r\n", "")),
        ("HTTP/1.0", good.replace("HTTP/1.1", "HTTP/1.0")),
    ];
    for (why, raw) in cases {
        let response = send_raw(server.addr, raw.as_bytes());
        assert_eq!(response.status, 400, "{why}: {}", response.text());
        assert_eq!(response.json()["error"], "bad_request", "{why}");
    }
}

#[test]
fn connection_header_lists_and_case_are_accepted() {
    let server = start();
    let token = server.token("userA");
    let raw = upgrade_request(&format!("/ws?token={token}"), "")
        .replace("Connection: Upgrade", "connection: keep-alive, upgrade")
        .replace("Upgrade: websocket", "upgrade: WebSocket");
    let response = send_raw(server.addr, raw.as_bytes());
    assert_eq!(response.status, 101);
}

#[test]
fn other_methods_on_ws_are_405() {
    let server = start();
    let response = post_json(server.addr, "/ws", "{}");
    assert_eq!(response.status, 405);
    assert_eq!(response.header("Allow"), Some("GET"));
}
