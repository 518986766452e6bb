//! `POST /auth` over a real socket: the token and its claims, the accepted
//! body formats, every refusal, and users files (loading and refusing).

mod support;

use std::path::Path;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Value, json};
use support::*;

fn login_body(user: &str, password: &str) -> String {
    json!({ "username": user, "password": password }).to_string()
}

/// Decodes and verifies a token with the test secret and `issuer`.
fn decode(token: &str, issuer: &str) -> jsonwebtoken::TokenData<Value> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_issuer(&[issuer]);
    let key = DecodingKey::from_secret(SECRET).unwrap();
    jsonwebtoken::decode::<Value>(token, &key, &validation)
        .unwrap_or_else(|e| panic!("token {token:?} does not verify: {e}"))
}

fn assert_error(response: &RawResponse, status: u16, code: &str) -> Value {
    assert_eq!(response.status, status, "body: {}", response.text());
    assert_eq!(response.header("Content-Type"), Some("application/json"));
    let body = response.json();
    assert_eq!(body["error"].as_str(), Some(code), "body: {body}");
    body
}

fn assert_bad_request(response: &RawResponse) {
    let body = assert_error(response, 400, "bad_request");
    assert!(body["message"].is_string(), "body: {body}");
}

// ---------------------------------------------------------------------------
// Successful logins

#[test]
fn json_login_returns_a_bearer_token() {
    let server = start();
    let response = post_json(server.addr, "/auth", &login_body("userA", "passwordA"));
    assert_eq!(response.status, 200, "body: {}", response.text());
    assert_eq!(response.header("Content-Type"), Some("application/json"));
    assert_eq!(response.header("Cache-Control"), Some("no-store"));
    let body = response.json();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 900);
    let token = body["token"].as_str().expect("token is a string");
    assert_eq!(token.split('.').count(), 3, "token {token:?}");

    let data = decode(token, "jwtchat");
    assert_eq!(data.header.alg, Algorithm::HS256);
    let claims = data.claims;
    assert_eq!(claims["sub"], "1");
    assert_eq!(claims["username"], "userA");
    assert_eq!(claims["iss"], "jwtchat");
    let iat = claims["iat"].as_u64().expect("iat");
    let exp = claims["exp"].as_u64().expect("exp");
    assert_eq!(exp - iat, 900);
    let now = now_secs();
    assert!(iat <= now && now - iat < 60, "iat {iat} vs now {now}");
}

#[test]
fn ttl_and_issuer_follow_the_config() {
    let server = start_with(|c| {
        c.token_ttl_secs = 120;
        c.issuer = "chat.example".into();
    });
    let response = post_json(server.addr, "/auth", &login_body("userC", "passwordC"));
    assert_eq!(response.status, 200, "body: {}", response.text());
    let body = response.json();
    assert_eq!(body["expires_in"], 120);
    let claims = decode(body["token"].as_str().expect("token"), "chat.example").claims;
    assert_eq!(claims["iss"], "chat.example");
    assert_eq!(claims["sub"], "3");
    assert_eq!(claims["username"], "userC");
    let ttl = claims["exp"].as_u64().expect("exp") - claims["iat"].as_u64().expect("iat");
    assert_eq!(ttl, 120);
}

#[test]
fn token_is_signed_with_the_configured_secret() {
    let server = start();
    let token = server.token("userA");
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_issuer(&["jwtchat"]);
    let wrong = DecodingKey::from_secret(b"some-other-secret-of-at-least-32-bytes!!").unwrap();
    assert!(jsonwebtoken::decode::<Value>(&token, &wrong, &validation).is_err());
}

#[test]
fn form_login_works() {
    let server = start();
    let response = post(
        server.addr,
        "/auth",
        "application/x-www-form-urlencoded",
        "username=userB&password=passwordB",
    );
    assert_eq!(response.status, 200, "body: {}", response.text());
    let body = response.json();
    let claims = decode(body["token"].as_str().expect("token"), "jwtchat").claims;
    assert_eq!(claims["sub"], "2");
    assert_eq!(claims["username"], "userB");
}

#[test]
fn content_type_parameters_and_case_are_accepted() {
    let server = start();
    let response = post(
        server.addr,
        "/auth",
        "Application/JSON; charset=utf-8",
        &login_body("userA", "passwordA"),
    );
    assert_eq!(response.status, 200, "body: {}", response.text());
}

// ---------------------------------------------------------------------------
// Refusals

#[test]
fn wrong_password_and_unknown_user_look_the_same() {
    let server = start();
    let wrong = post_json(server.addr, "/auth", &login_body("userA", "passwordB"));
    let unknown = post_json(server.addr, "/auth", &login_body("mallory", "passwordA"));
    let empty = post_json(server.addr, "/auth", &login_body("", ""));
    for response in [&wrong, &unknown, &empty] {
        assert_eq!(response.status, 401, "body: {}", response.text());
        assert_eq!(response.header("Content-Type"), Some("application/json"));
        assert_eq!(response.json(), json!({ "error": "invalid_credentials" }));
    }
    assert_eq!(wrong.body, unknown.body);
}

#[test]
fn password_is_case_sensitive() {
    let server = start();
    let response = post_json(server.addr, "/auth", &login_body("userA", "PasswordA"));
    assert_eq!(response.status, 401);
    assert_eq!(response.json(), json!({ "error": "invalid_credentials" }));
}

#[test]
fn malformed_bodies_are_400() {
    let server = start();
    for body in [
        "{\"username\":\"userA\",\"password\":",
        "{\"username\":\"userA\"}",
        "{\"password\":\"passwordA\"}",
        "[]",
        "{\"username\":1,\"password\":\"passwordA\"}",
        "",
        "not json",
    ] {
        let response = post_json(server.addr, "/auth", body);
        assert_bad_request(&response);
    }
}

/// The body must be an object; serde's derived `Deserialize` also accepts a
/// struct as a sequence of its fields, which logs this in.
#[test]
fn json_array_body_is_400() {
    let server = start();
    let response = post_json(server.addr, "/auth", "[\"userA\",\"passwordA\"]");
    assert_bad_request(&response);
}

#[test]
fn form_missing_a_field_is_400() {
    let server = start();
    for body in ["username=userB", "password=passwordB", ""] {
        let response = post(
            server.addr,
            "/auth",
            "application/x-www-form-urlencoded",
            body,
        );
        assert_bad_request(&response);
    }
}

#[test]
fn body_over_8_kib_is_413() {
    let server = start();
    let head = "{\"username\":\"userA\",\"password\":\"";
    let tail = "\"}";
    let body = format!("{head}{}{tail}", "x".repeat(8193 - head.len() - tail.len()));
    assert_eq!(body.len(), 8193);
    let response = post_json(server.addr, "/auth", &body);
    assert_error(&response, 413, "payload_too_large");
}

#[test]
fn body_of_exactly_8_kib_is_read() {
    let server = start();
    // Valid JSON padded with whitespace to exactly the limit: read and
    // parsed, so the answer is about the credentials, not the size.
    let json = login_body("userA", "wrong");
    let body = format!("{json}{}", " ".repeat(8192 - json.len()));
    assert_eq!(body.len(), 8192);
    let response = post_json(server.addr, "/auth", &body);
    assert_eq!(response.status, 401, "body: {}", response.text());
}

#[test]
fn text_plain_is_415() {
    let server = start();
    let response = post(
        server.addr,
        "/auth",
        "text/plain",
        &login_body("userA", "passwordA"),
    );
    let body = assert_error(&response, 415, "unsupported_media_type");
    // Both accepted types are named: a form body is as good as JSON.
    assert_eq!(
        body["message"],
        "Content-Type \"text/plain\": send application/json or \
         application/x-www-form-urlencoded"
    );
}

#[test]
fn get_auth_is_405_even_with_credentials_in_the_url() {
    let server = start();
    for target in ["/auth", "/auth?username=userA&password=passwordA"] {
        let response = get(server.addr, target);
        assert_error(&response, 405, "method_not_allowed");
        assert_eq!(response.header("Allow"), Some("POST"), "{target}");
        assert!(!response.text().contains("token\""), "{target}");
    }
}

// ---------------------------------------------------------------------------
// Users files

fn users_file(test: &str, users: Value) -> TempFile {
    TempFile::new(test, &json!({ "users": users }).to_string())
}

#[test]
fn users_file_replaces_the_demo_users() {
    let hash = jwtchat::hash_password("s3cret");
    let file = users_file(
        "replaces",
        json!([{ "id": "42", "username": "ann", "password_hash": hash }]),
    );
    let path = file.path().to_path_buf();
    let server = start_with(|c| c.users_file = Some(path));

    let response = post_json(server.addr, "/auth", &login_body("ann", "s3cret"));
    assert_eq!(response.status, 200, "body: {}", response.text());
    let claims = decode(response.json()["token"].as_str().expect("token"), "jwtchat").claims;
    assert_eq!(claims["sub"], "42");
    assert_eq!(claims["username"], "ann");

    let wrong = post_json(server.addr, "/auth", &login_body("ann", "S3cret"));
    assert_eq!(wrong.status, 401);
    let demo = post_json(server.addr, "/auth", &login_body("userA", "passwordA"));
    assert_eq!(demo.status, 401, "demo user accepted: {}", demo.text());
    assert_eq!(demo.json(), json!({ "error": "invalid_credentials" }));
}

/// `Server::bind` with this users file fails; returns the error's Display.
fn bind_error(users_file: &Path) -> String {
    let config = jwtchat::Config {
        bind: "127.0.0.1:0".into(),
        secret: Some(SECRET.to_vec()),
        users_file: Some(users_file.to_path_buf()),
        ..jwtchat::Config::default()
    };
    match jwtchat::Server::bind(config) {
        Ok(_) => panic!("{} was accepted", users_file.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn missing_users_file_is_refused() {
    let path = std::env::temp_dir().join(format!(
        "jwtchat-auth-{}-missing-does-not-exist.json",
        std::process::id()
    ));
    let message = bind_error(&path);
    assert!(message.contains("cannot read users file"), "{message}");
    assert!(message.contains(&path.display().to_string()), "{message}");
}

#[test]
fn malformed_users_file_is_refused() {
    let file = TempFile::new("malformed", "{\"users\": [");
    let message = bind_error(file.path());
    assert!(message.contains("users file is not valid"), "{message}");
}

#[test]
fn non_argon2id_hash_is_refused() {
    let argon2i = "$argon2i$v=19$m=16,t=2,p=1$c2FsdHNhbHQ$ZmFrZWhhc2hmYWtlaGFzaA";
    for (name, hash) in [
        ("argon2i", argon2i),
        (
            "bcrypt",
            "$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW",
        ),
        ("plain", "s3cret"),
    ] {
        let file = users_file(
            name,
            json!([{ "id": "1", "username": "ann", "password_hash": hash }]),
        );
        let message = bind_error(file.path());
        assert!(message.contains("password_hash"), "{name}: {message}");
        assert!(message.contains("argon2id"), "{name}: {message}");
        assert!(message.contains("\"ann\""), "{name}: {message}");
    }
}

#[test]
fn plaintext_password_field_is_refused() {
    let file = users_file(
        "plaintext",
        json!([{ "id": "1", "username": "ann", "password": "s3cret" }]),
    );
    let message = bind_error(file.path());
    assert!(message.contains("users file is not valid"), "{message}");
    assert!(message.contains("password"), "{message}");
}

#[test]
fn empty_users_list_is_refused() {
    let file = users_file("empty", json!([]));
    let message = bind_error(file.path());
    assert_eq!(message, "users file lists no users");
}

#[test]
fn duplicate_usernames_are_refused() {
    let hash = jwtchat::hash_password("s3cret");
    let file = users_file(
        "duplicate",
        json!([
            { "id": "1", "username": "ann", "password_hash": hash },
            { "id": "2", "username": "ann", "password_hash": hash },
        ]),
    );
    let message = bind_error(file.path());
    assert!(message.contains("\"ann\" twice"), "{message}");
}

#[test]
fn duplicate_usernames_name_the_line() {
    let hash = jwtchat::hash_password("s3cret");
    let ann = json!({ "id": "1", "username": "ann", "password_hash": hash });
    let ann_again = json!({ "id": "2", "username": "ann", "password_hash": hash });
    let text = format!("{{\n  \"users\": [\n    {ann},\n    {ann_again}\n  ]\n}}\n");
    let file = TempFile::new("duplicate-line", &text);
    let message = bind_error(file.path());
    assert_eq!(message, "users file lists \"ann\" twice (line 4)");
}

/// Tokens name users by id: two accounts with one id would share sessions.
#[test]
fn duplicate_ids_are_refused_with_the_line() {
    let hash = jwtchat::hash_password("s3cret");
    let entries: Vec<String> = [("7", "ann"), ("8", "bob"), ("7", "cid")]
        .iter()
        .map(|(id, name)| json!({ "id": id, "username": name, "password_hash": hash }).to_string())
        .collect();
    let text = format!("{{\"users\": [\n{}\n]}}", entries.join(",\n"));
    let file = TempFile::new("duplicate-id", &text);
    let message = bind_error(file.path());
    assert_eq!(message, "users file lists id \"7\" twice (line 4)");
}

#[test]
fn bad_usernames_are_refused_with_the_line() {
    let hash = jwtchat::hash_password("s3cret");
    let long = "é".repeat(65);
    for (name, username, why) in [
        ("empty", "", "is empty"),
        ("long", long.as_str(), "65 characters"),
        ("newline", "ann\nbob", "U+000A"),
        ("nul", "ann\u{0}", "U+0000"),
        ("c1", "ann\u{85}", "U+0085"),
        ("nfd", "Rene\u{301}", "NFC"),
    ] {
        let good = json!({ "id": "1", "username": "ok", "password_hash": hash });
        let bad = json!({ "id": "2", "username": username, "password_hash": hash });
        let text = format!("{{\"users\": [\n  {good},\n\n  {bad}\n]}}");
        let file = TempFile::new(name, &text);
        let message = bind_error(file.path());
        assert!(
            message.starts_with("users file line 4: the username "),
            "{name}: {message}"
        );
        assert!(message.contains(why), "{name}: {message}");
        assert!(!message.contains('\n'), "{name}: {message:?}");
    }
}

#[test]
fn usernames_at_the_limits_are_accepted() {
    let hash = jwtchat::hash_password("s3cret");
    let longest = "é".repeat(64);
    let file = users_file(
        "limits",
        json!([
            { "id": "1", "username": longest, "password_hash": hash },
            { "id": "2", "username": "René", "password_hash": hash },
            { "id": "3", "username": "x", "password_hash": hash },
        ]),
    );
    let path = file.path().to_path_buf();
    let server = start_with(|c| c.users_file = Some(path));
    let response = post_json(server.addr, "/auth", &login_body(&longest, "s3cret"));
    assert_eq!(response.status, 200, "body: {}", response.text());
    let response = post_json(server.addr, "/auth", &login_body("René", "s3cret"));
    assert_eq!(response.status, 200, "body: {}", response.text());
}
