//! Renewing a session: /auth/refresh, reauth over the open socket, the
//! --max-session cap and the expiring warning; and history for late joiners.

mod support;

use std::time::Duration;

use jsonwebtoken::{DecodingKey, Validation};
use serde_json::{Value, json};
use support::*;

fn claims(token: &str) -> Value {
    let mut validation = Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.set_issuer(&["jwtchat"]);
    jsonwebtoken::decode::<Value>(
        token,
        &DecodingKey::from_secret(SECRET).unwrap(),
        &validation,
    )
    .expect("a valid token")
    .claims
}

#[test]
fn refresh_gives_a_new_token_for_the_same_login() {
    let (server, clock) = start_on_clock(|c| {
        c.token_ttl_secs = 60;
        c.max_session_secs = 3600;
    });
    let token = server.token("userA");
    let first = claims(&token);
    clock.advance(Duration::from_secs(1));
    let response = server.refresh(&token);
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.header("Cache-Control"), Some("no-store"));
    let body = response.json();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 60);
    let renewed = claims(body["token"].as_str().unwrap());
    assert_eq!(renewed["sub"], first["sub"]);
    assert_eq!(
        renewed["auth_time"], first["auth_time"],
        "the login time is kept"
    );
    assert_eq!(renewed["auth_time"], first["iat"]);
    assert!(renewed["iat"].as_u64() > first["iat"].as_u64());
    assert!(renewed["exp"].as_u64() > first["exp"].as_u64());
    // Both answers say when the session cap ends renewals: login + cap.
    let session_end = first["iat"].as_u64().unwrap() + 3600;
    assert_eq!(body["session_expires_at"], session_end);
    let login = post_json(
        server.addr,
        "/auth",
        r#"{"username":"userA","password":"passwordA"}"#,
    )
    .json();
    let login_time = claims(login["token"].as_str().unwrap())["iat"]
        .as_u64()
        .unwrap();
    assert_eq!(login["session_expires_at"], login_time + 3600);
}

#[test]
fn refresh_refuses_bad_tokens_and_wrong_methods() {
    let server = start();
    for token in ["garbage", ""] {
        let r = server.refresh(token);
        assert_eq!(r.status, 401);
        assert_eq!(r.json(), json!({ "error": "invalid_token" }));
    }
    let r = send_raw(
        server.addr,
        b"POST /auth/refresh HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(r.status, 401, "no Authorization header");
    let r = get(server.addr, "/auth/refresh");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("Allow"), Some("POST"));
}

#[test]
fn an_expired_token_cannot_be_refreshed() {
    let (server, clock) = start_on_clock(|c| c.token_ttl_secs = 60);
    let token = server.token("userA");
    clock.advance(Duration::from_secs(60));
    let r = server.refresh(&token);
    assert_eq!(r.status, 401);
    assert_eq!(r.json(), json!({ "error": "invalid_token" }));
}

#[test]
fn refresh_stops_at_the_session_cap() {
    let (server, clock) = start_on_clock(|c| {
        c.token_ttl_secs = 3600;
        c.max_session_secs = 600;
    });
    let token = server.token("userA");
    // Within the cap, a refreshed token never outlives the session.
    let r = server.refresh(&token);
    assert_eq!(r.status, 200);
    let renewed = claims(r.json()["token"].as_str().unwrap());
    assert_eq!(
        renewed["exp"].as_u64().unwrap(),
        renewed["auth_time"].as_u64().unwrap() + 600
    );
    // Past it, the user must log in again, though the token is valid.
    clock.advance(Duration::from_secs(600));
    let r = server.refresh(&token);
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"], "session_expired");
}

#[test]
fn reauth_moves_the_expiry_of_an_open_connection() {
    let (server, clock) = start_on_clock(|c| c.token_ttl_secs = 120);
    let token = server.token("userA");
    let mut a = server.connect_token(&token).unwrap();
    let welcome = a.recv();
    let old_exp = welcome["expires_at"].as_u64().unwrap();
    // Inside the last minute: warned once.
    clock.advance(Duration::from_secs(61));
    assert_eq!(
        a.recv(),
        json!({ "type": "expiring", "expires_at": old_exp })
    );

    // Renew: the new token lasts a minute past the old expiry.
    let renewed = server.refresh(&token).json()["token"]
        .as_str()
        .unwrap()
        .to_string();
    a.send_json(&json!({ "type": "reauth", "token": renewed }));
    let reply = a.recv();
    assert_eq!(reply["type"], "reauthed");
    let new_exp = reply["expires_at"].as_u64().unwrap();
    assert_eq!(new_exp, old_exp + 61);
    // Past the old expiry: still here, and warned again for the new token.
    clock.advance(Duration::from_secs(60));
    assert_eq!(
        a.recv(),
        json!({ "type": "expiring", "expires_at": new_exp })
    );
    a.say("still connected");
    assert_eq!(a.recv()["text"], "still connected");
}

#[test]
fn reauth_with_a_bad_token_keeps_the_old_expiry() {
    let (server, clock) = start_on_clock(|c| c.token_ttl_secs = 60);
    let (mut a, welcome) = server.connect("userA");
    let exp = welcome["expires_at"].as_u64().unwrap();
    a.recv_type("expiring");
    let other_user = server.token("userB");
    for token in ["garbage", other_user.as_str()] {
        a.send_json(&json!({ "type": "reauth", "token": token }));
        let error = a.recv();
        assert_eq!(error["type"], "error");
        assert_eq!(error["code"], "bad_token");
    }
    // The old expiry stands: closed with 4001 at exp.
    clock.advance(Duration::from_secs(60));
    let (code, _) = a.until_close();
    assert_eq!(code, 4001);
    assert!(clock.clock().unix_secs() >= exp);
}

#[test]
fn a_late_joiner_gets_the_recent_history() {
    let server = start_with(|c| c.history = 3);
    let (mut a, welcome) = server.connect("userA");
    assert_eq!(welcome["history"], json!([]));
    for i in 1..=5 {
        a.say(&format!("m{i}"));
        a.recv_type("message");
    }
    let (mut b, welcome) = server.connect("userB");
    let history = welcome["history"].as_array().unwrap();
    let texts: Vec<&str> = history
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["m3", "m4", "m5"], "the last three, oldest first");
    for m in history {
        assert_eq!(m["type"], "message");
        assert_eq!(m["from"], "userA");
        assert!(m["ts"].as_u64().is_some());
    }
    assert_eq!(history[0]["seq"], 3);
    // Live messages continue the sequence.
    a.say("m6");
    assert_eq!(b.recv_type("message")["seq"], 6);
}

#[test]
fn history_can_be_turned_off() {
    let server = start_with(|c| c.history = 0);
    let (mut a, _) = server.connect("userA");
    a.say("gone");
    a.recv_type("message");
    let (_, welcome) = server.connect("userB");
    assert_eq!(welcome["history"], json!([]));
}

#[test]
fn refreshes_are_rate_limited_per_user() {
    let server = start_with(|c| c.max_refreshes = 3);
    let token_a = server.token("userA");
    let token_b = server.token("userB");
    for _ in 0..3 {
        assert_eq!(server.refresh(&token_a).status, 200);
    }
    let r = server.refresh(&token_a);
    r.assert_rate_limited();
    // Counted per subject, and only for valid tokens: garbage does not use
    // up anyone's share.
    assert_eq!(server.refresh(&token_b).status, 200);
    for _ in 0..5 {
        assert_eq!(server.refresh("garbage").status, 401);
    }
    assert_eq!(server.refresh(&token_b).status, 200);
}
