//! Renewal follows the users file: after a restart with the same secret, a
//! token whose user was removed, renamed or given a new password no longer
//! refreshes (`POST /auth/refresh`) or renews a connection (`reauth`).

mod support;

use serde_json::{Value, json};
use support::*;

fn user(id: &str, username: &str, hash: &str) -> Value {
    json!({ "id": id, "username": username, "password_hash": hash })
}

/// A server with the test secret and this users file.
fn serve(file: &TempFile) -> TestServer {
    let path = file.path().to_path_buf();
    start_with(|c| {
        c.users_file = Some(path);
        c.metrics_public = true; // the test reads the rejection counter
    })
}

fn stop(mut server: TestServer) {
    server.handle.take().expect("an in-process server").stop();
}

fn login(server: &TestServer, username: &str, password: &str) -> String {
    let body = json!({ "username": username, "password": password }).to_string();
    let response = post_json(server.addr, "/auth", &body);
    assert_eq!(
        response.status,
        200,
        "login of {username}: {}",
        response.text()
    );
    response.json()["token"]
        .as_str()
        .expect("token in body")
        .to_string()
}

fn assert_invalid_token(response: &RawResponse) {
    assert_eq!(response.status, 401, "body: {}", response.text());
    assert_eq!(response.json(), json!({ "error": "invalid_token" }));
}

/// Logs `ann` (and `bob`) in on a server with the first users file and
/// stops it; returns their tokens and the hashes used.
struct Before {
    ann_token: String,
    bob_token: String,
    ann_hash: String,
    bob_hash: String,
}

fn before_restart(test: &str) -> Before {
    let ann_hash = jwtchat::hash_password("ann-password");
    let bob_hash = jwtchat::hash_password("bob-password");
    let file = TempFile::users(
        test,
        json!([user("7", "ann", &ann_hash), user("8", "bob", &bob_hash)]),
    );
    let server = serve(&file);
    let ann_token = login(&server, "ann", "ann-password");
    let bob_token = login(&server, "bob", "bob-password");
    stop(server);
    Before {
        ann_token,
        bob_token,
        ann_hash,
        bob_hash,
    }
}

#[test]
fn a_removed_user_cannot_refresh() {
    let before = before_restart("removed");
    let file = TempFile::users("removed-after", json!([user("8", "bob", &before.bob_hash)]));
    let server = serve(&file);

    assert_invalid_token(&server.refresh(&before.ann_token));
    // A user still in the file renews across the restart as before.
    let response = server.refresh(&before.bob_token);
    assert_eq!(response.status, 200, "bob: {}", response.text());
    let renewed = response.json()["token"]
        .as_str()
        .expect("token")
        .to_string();
    assert_eq!(server.refresh(&renewed).status, 200, "a refreshed token");

    let metrics = get(server.addr, "/metrics").text();
    assert!(
        metrics.contains("jwtchat_tokens_rejected_total{reason=\"revoked\"} 1\n"),
        "{metrics}"
    );
}

#[test]
fn a_changed_password_ends_renewal() {
    let before = before_restart("password");
    let new_hash = jwtchat::hash_password("ann-new-password");
    let file = TempFile::users(
        "password-after",
        json!([
            user("7", "ann", &new_hash),
            user("8", "bob", &before.bob_hash)
        ]),
    );
    let server = serve(&file);
    assert_invalid_token(&server.refresh(&before.ann_token));
    // A login with the new password gets a token that does renew.
    let fresh = login(&server, "ann", "ann-new-password");
    assert_eq!(server.refresh(&fresh).status, 200);
}

#[test]
fn a_renamed_user_cannot_refresh() {
    let before = before_restart("renamed");
    let file = TempFile::users(
        "renamed-after",
        json!([
            user("7", "anna", &before.ann_hash),
            user("8", "bob", &before.bob_hash)
        ]),
    );
    let server = serve(&file);
    assert_invalid_token(&server.refresh(&before.ann_token));
}

/// A token minted before the `pwf` claim existed (or by another issuer
/// sharing the key) cannot say which password it was issued for.
#[test]
fn a_token_without_a_password_fingerprint_cannot_refresh() {
    let server = start();
    let now = now_secs();
    let claims = json!({
        "sub": "1", "username": "userA", "iss": "jwtchat",
        "iat": now, "exp": now + 600, "auth_time": now,
    });
    let token = mint(&claims);
    // It is still a valid token for the WebSocket...
    let mut client = server.connect_token(&token).expect("upgrade");
    assert_eq!(client.recv()["type"], "welcome");
    // ...but not for renewal.
    assert_invalid_token(&server.refresh(&token));
    client.send_json(&json!({ "type": "reauth", "token": token }));
    let error = client.recv();
    assert_eq!(error["type"], "error", "{error}");
    assert_eq!(error["code"], "bad_token", "{error}");
}

#[test]
fn reauth_follows_the_users_file() {
    let before = before_restart("reauth");
    let new_hash = jwtchat::hash_password("ann-new-password");
    let file = TempFile::users(
        "reauth-after",
        json!([
            user("7", "ann", &new_hash),
            user("8", "bob", &before.bob_hash)
        ]),
    );
    let server = serve(&file);

    // The upgrade checks only the token's signature and claims, so ann's
    // old token still opens a connection until it expires...
    let mut old = server.connect_token(&before.ann_token).expect("upgrade");
    assert_eq!(old.recv()["type"], "welcome");
    // ...but cannot renew it, nor one opened with the new password.
    let fresh = login(&server, "ann", "ann-new-password");
    let mut new = server.connect_token(&fresh).expect("upgrade");
    assert_eq!(new.recv()["type"], "welcome");
    for client in [&mut old, &mut new] {
        client.send_json(&json!({ "type": "reauth", "token": before.ann_token }));
        let error = client.recv_type("error");
        assert_eq!(error["code"], "bad_token", "{error}");
    }
    new.send_json(&json!({ "type": "reauth", "token": fresh }));
    assert_eq!(new.recv_type("reauthed")["type"], "reauthed");

    // A removed user's connection cannot be renewed either.
    let file = TempFile::users("reauth-removed", json!([user("7", "ann", &new_hash)]));
    let server = serve(&file);
    let mut bob = server.connect_token(&before.bob_token).expect("upgrade");
    assert_eq!(bob.recv()["type"], "welcome");
    bob.send_json(&json!({ "type": "reauth", "token": before.bob_token }));
    assert_eq!(bob.recv_type("error")["code"], "bad_token");
}
