//! The log: one line per event that matters, each with a timestamp and a
//! level, and never a token or a password, even on error.

mod support;

use std::process::Command;
use std::time::Duration;

use serde_json::json;
use support::*;

#[test]
fn events_are_logged_without_secrets() {
    let mut binary = Binary::spawn(
        Command::new(env!("CARGO_BIN_EXE_jwtchat"))
            .args([
                "--bind",
                "127.0.0.1:0",
                "--log-level",
                "debug",
                "--token-ttl",
                "2",
            ])
            .env("JWTCHAT_SECRET", std::str::from_utf8(SECRET).unwrap()),
    );
    let addr = binary.wait_listening();
    let server = TestServer::at(addr);

    let failed = post_json(
        addr,
        "/auth",
        &json!({"username":"userA","password":"hunter2-wrong"}).to_string(),
    );
    assert_eq!(failed.status, 401);
    let token = server.token("userA");
    // A refused upgrade with the token in the URL, then a real session that
    // expires.
    let bad = format!("{token}x");
    assert!(server.connect_token(&bad).is_err());
    let mut client = server.connect_token(&token).expect("upgrade");
    assert_eq!(client.until_close().0, 4001);
    drop(client);

    // Collect what was logged.
    let mut lines = binary.seen.clone();
    while let Ok(line) = binary.lines.recv_timeout(Duration::from_millis(500)) {
        lines.push(line);
    }
    let log = lines.join("\n");
    // The demo-mode warning names the built-in passwords on purpose; no
    // other line may name any password or token.
    let others: Vec<&String> = lines.iter().filter(|l| !l.contains("demo mode")).collect();
    for secret in [token.as_str(), "passwordA", "hunter2-wrong"] {
        assert!(
            !others.iter().any(|l| l.contains(secret)),
            "the log contains {secret:?}:\n{log}"
        );
    }
    for event in [
        "listening on http://",
        "login failed for \"userA\"",
        "login ok: \"userA\"",
        "upgrade refused",
        "token=[redacted]",
        "connected: \"userA\"",
        "evicted: token expired",
        "disconnected: closed by server, code 4001",
    ] {
        assert!(log.contains(event), "no {event:?} in the log:\n{log}");
    }
    // Names are quoted the same way in every line: no bare userA.
    for line in others.iter().filter(|l| l.contains("userA")) {
        assert!(
            line.matches("userA").count() == line.matches("\"userA\"").count(),
            "an unquoted username: {line}"
        );
    }
    for line in &lines {
        // 2026-11-28T23:59:59.123Z LEVEL message
        let (stamp, rest) = line.split_once(' ').unwrap_or_default();
        assert!(
            stamp.len() == 24 && stamp.ends_with('Z'),
            "no timestamp: {line}"
        );
        let level = rest.split_whitespace().next().unwrap_or_default();
        assert!(
            ["ERROR", "WARN", "INFO", "DEBUG"].contains(&level),
            "no level: {line}"
        );
    }
}

/// Starts the real binary with `args` and returns it with its address.
fn spawn_binary(args: &[&str]) -> (Binary, std::net::SocketAddr) {
    let mut binary = Binary::spawn(
        Command::new(env!("CARGO_BIN_EXE_jwtchat"))
            .args(["--bind", "127.0.0.1:0"])
            .args(args)
            .env("JWTCHAT_SECRET", std::str::from_utf8(SECRET).unwrap()),
    );
    let addr = binary.wait_listening();
    (binary, addr)
}

/// Every line logged so far, waiting `quiet` for stragglers.
fn drain_log(binary: &mut Binary, quiet: Duration) -> Vec<String> {
    let mut lines = binary.seen.clone();
    while let Ok(line) = binary.lines.recv_timeout(quiet) {
        lines.push(line);
    }
    lines
}

#[test]
fn no_query_value_reaches_the_log_or_the_trace() {
    let (mut binary, addr) = spawn_binary(&["--log-level", "debug", "--trace-handshake"]);
    let targets = [
        "/ws?access_token=SECRET-ACCESS",
        "/ws?jwt=SECRET-JWT",
        "/ws?Token=SECRET-CAPITAL",
        "/ws?a=1;token=SECRET-SEMICOLON",
        "/ws?token=SECRET-PLAIN.x.y",
    ];
    for target in targets {
        let r = send_raw(addr, upgrade_request(target, "").as_bytes());
        assert_eq!(r.status, 401, "{target}");
    }
    let lines = drain_log(&mut binary, Duration::from_millis(500));
    let log = lines.join("\n");
    assert!(
        log.contains("upgrade refused") && log.contains("> GET /ws?"),
        "both the log line and the trace are there:\n{log}"
    );
    for secret in [
        "SECRET-ACCESS",
        "SECRET-JWT",
        "SECRET-CAPITAL",
        "SECRET-SEMICOLON",
        "SECRET-PLAIN",
    ] {
        assert!(!log.contains(secret), "the log contains {secret:?}:\n{log}");
    }
    // The names stay, so an operator can still see what a client sent.
    for kept in [
        "access_token=[redacted]",
        "jwt=[redacted]",
        "Token=[redacted]",
        "a=[redacted];token=[redacted]",
    ] {
        assert!(log.contains(kept), "no {kept:?} in the log:\n{log}");
    }
}

#[test]
fn usernames_are_escaped_in_every_line() {
    // A legal username (the users file refuses control characters) whose
    // quote and backslash would make a line ambiguous if printed as is...
    let name = "eve \"the\" \\ admin";
    // ...and one a client may send to /auth, which would forge a log line.
    let forger = "eve\n2026-01-01T00:00:00.000Z INFO  login ok: \u{1b}[2Jroot";
    let users = json!({ "users": [{
        "id": "1",
        "username": name,
        "password_hash": jwtchat::hash_password("pw"),
    }]});
    let file = std::env::temp_dir().join(format!("jwtchat-logs-users-{}.json", std::process::id()));
    std::fs::write(&file, users.to_string()).expect("write users file");
    let (mut binary, addr) = spawn_binary(&["--users", file.to_str().unwrap()]);
    let body = json!({ "username": name, "password": "pw" }).to_string();
    let login = post_json(addr, "/auth", &body);
    assert_eq!(login.status, 200, "{}", login.text());
    let token = login.json()["token"].as_str().unwrap().to_string();
    let wrong = json!({ "username": forger, "password": "no" }).to_string();
    assert_eq!(post_json(addr, "/auth", &wrong).status, 401);
    let refreshed = send_raw(
        addr,
        format!(
            "POST /auth/refresh HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    );
    assert_eq!(refreshed.status, 200);
    let client = TestServer::at(addr).connect_token(&token).expect("upgrade");
    drop(client);
    let lines = drain_log(&mut binary, Duration::from_millis(500));
    let _ = std::fs::remove_file(&file);
    let log = lines.join("\n");
    let escaped = format!("{name:?}");
    for event in ["login ok: ", "token refreshed: ", "connected: "] {
        assert!(
            log.contains(&format!("{event}{escaped}")),
            "no {event}{escaped} in the log:\n{log}"
        );
    }
    assert!(log.contains(&format!("({escaped}) disconnected")), "{log}");
    assert!(
        log.contains(&format!("login failed for {forger:?}")),
        "{log}"
    );
    assert!(
        !lines
            .iter()
            .any(|l| l.starts_with("2026-01-01") || l.contains('\u{1b}')),
        "a forged line or a raw escape:\n{log}"
    );
}

/// A token for userA signed with the test secret, from `issuer`, expiring
/// `exp_in` seconds from now.
fn token_from(issuer: &str, exp_in: i64) -> String {
    let mut claims = claims_for("1", "userA", exp_in);
    claims["iss"] = issuer.into();
    mint(&claims)
}

#[test]
fn refusals_are_logged_in_words_and_throttling_is_counted() {
    let (mut binary, addr) = spawn_binary(&[
        "--log-level",
        "debug",
        "--max-login-failures",
        "1",
        "--max-connections-per-ip",
        "2",
        "--metrics-public",
    ]);
    // Token refusals, each for its own reason.
    let refused = [
        ("not-a-jwt".to_string(), "malformed token"),
        (token_from("jwtchat", -60), "expired token"),
        (token_from("someone-else", 600), "wrong issuer"),
        (format!("{}x", token_from("jwtchat", 600)), "bad signature"),
    ];
    for (token, _) in &refused {
        let r = send_raw(
            addr,
            upgrade_request(&format!("/ws?token={token}"), "").as_bytes(),
        );
        assert_eq!(r.status, 401);
    }
    let evil = send_raw(
        addr,
        upgrade_request("/ws", "Origin: https://evil.example\r\n").as_bytes(),
    );
    assert_eq!(evil.status, 403);
    // A connection over the per-IP cap, from an address of its own (the
    // other requests' connections may still be closing).
    let other = std::net::Ipv4Addr::new(127, 0, 0, 5);
    let held: Vec<_> = (0..2).map(|_| connect_from(other, addr)).collect();
    std::thread::sleep(Duration::from_millis(200));
    let over = send_raw_from(other, addr, b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(over.status, 503);
    drop(held);
    // A failed login, then one refused by --max-login-failures.
    let wrong = json!({"username":"userA","password":"wrong"}).to_string();
    assert_eq!(post_json(addr, "/auth", &wrong).status, 401);
    assert_eq!(post_json(addr, "/auth", &wrong).status, 429);
    let metrics = get(addr, "/metrics").text();
    assert!(
        metrics.contains("jwtchat_logins_throttled_total{limit=\"failures_per_ip\"} 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("jwtchat_logins_throttled_total{limit=\"logins_per_user\"} 0\n"),
        "{metrics}"
    );

    let lines = drain_log(&mut binary, Duration::from_millis(500));
    let log = lines.join("\n");
    for (_, words) in &refused {
        assert!(
            log.contains(&format!("): {words}")),
            "no upgrade refused ...: {words} in the log:\n{log}"
        );
    }
    for words in [
        "): forbidden origin",
        ": too many connections from this address",
        "WARN  login failed for \"userA\" from 127.0.0.1:",
        "WARN  login throttled for \"userA\" from 127.0.0.1:",
        ": too many failed logins (--max-login-failures per minute)",
    ] {
        assert!(log.contains(words), "no {words:?} in the log:\n{log}");
    }
    // No Rust debug names.
    for debug in [
        "Token(",
        "Malformed",
        "Expired",
        "TooManyFromIp",
        "ForbiddenOrigin",
        "FailuresFromIp",
    ] {
        assert!(!log.contains(debug), "{debug:?} in the log:\n{log}");
    }
}

#[test]
fn startup_line_and_each_connections_life_at_debug() {
    let dir = std::env::temp_dir().join(format!("jwtchat-logs-start-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret_file = dir.join("secret");
    std::fs::write(&secret_file, SECRET).unwrap();
    let mut binary = Binary::spawn(
        Command::new(env!("CARGO_BIN_EXE_jwtchat"))
            .args(["--bind", "127.0.0.1:0", "--log-level", "debug"])
            .args(["--message-rate", "7", "--history", "12", "--secret-file"])
            .arg(&secret_file),
    );
    let addr = binary.wait_listening();
    let server = TestServer::at(addr);
    assert_eq!(get(addr, "/healthz?probe=x").status, 200);
    let (client, _) = server.connect("userA");
    drop(client);
    let lines = drain_log(&mut binary, Duration::from_millis(500));
    let _ = std::fs::remove_dir_all(&dir);
    let log = lines.join("\n");
    let start = format!(
        "INFO  starting: 3 demo users, secret from --secret-file {secret_file:?}, \
         token ttl 900 s, max session 43200 s, message rate 7/s burst 40 (user 14/s burst 80), \
         max connections 10000 (256 per IP), \
         logins per minute: 10 failures per IP, 30 per IP, 6 per user; history 12"
    );
    assert!(log.contains(&start), "no {start:?} in the log:\n{log}");
    assert!(
        !log.contains(std::str::from_utf8(SECRET).unwrap()),
        "the secret is in the log:\n{log}"
    );
    for event in [
        "DEBUG connection from 127.0.0.1:",
        " accepted",
        ": GET \"/healthz?probe=[redacted]\" 200",
        ": POST \"/auth\" 200",
        ": GET \"/ws?token=[redacted]\" 101, upgraded to WebSocket",
        "INFO  client 1 connected: \"userA\"",
        " closed",
    ] {
        assert!(log.contains(event), "no {event:?} in the log:\n{log}");
    }
}

#[test]
fn json_format_is_one_object_per_line() {
    let mut binary = Binary::spawn(
        Command::new(env!("CARGO_BIN_EXE_jwtchat"))
            .args(["--bind", "127.0.0.1:0", "--log-format", "json"])
            .args(["--trace-handshake", "--log-level", "debug"])
            .env("JWTCHAT_SECRET", std::str::from_utf8(SECRET).unwrap()),
    );
    let mut addr = None;
    while addr.is_none() {
        let line = binary.lines.recv_timeout(PATIENCE).expect("a log line");
        binary.seen.push(line.clone());
        let object: serde_json::Value = serde_json::from_str(&line).expect("JSON");
        addr = object["msg"]
            .as_str()
            .and_then(|m| m.strip_prefix("listening on http://"))
            .map(|a| a.parse::<std::net::SocketAddr>().unwrap());
    }
    let addr = addr.unwrap();
    let forger = "eve\"}\n{\"level\":\"info\"";
    let wrong = json!({ "username": forger, "password": "no" }).to_string();
    assert_eq!(post_json(addr, "/auth", &wrong).status, 401);
    let r = send_raw(addr, upgrade_request("/ws?token=nope", "").as_bytes());
    assert_eq!(r.status, 401);
    let lines = drain_log(&mut binary, Duration::from_millis(500));
    let objects: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect();
    for o in &objects {
        let ts = o["ts"].as_str().expect("ts");
        assert!(ts.len() == 24 && ts.ends_with('Z'), "{o}");
        assert!(
            ["error", "warn", "info", "debug", "trace"].contains(&o["level"].as_str().unwrap()),
            "{o}"
        );
        assert!(o["msg"].is_string(), "{o}");
        assert_eq!(o.as_object().unwrap().len(), 3, "{o}");
    }
    let find = |level: &str, needle: &str| {
        objects
            .iter()
            .any(|o| o["level"] == level && o["msg"].as_str().unwrap().contains(needle))
    };
    assert!(
        find("warn", &format!("login failed for {forger:?}")),
        "{lines:#?}"
    );
    assert!(find("info", "upgrade refused"), "{lines:#?}");
    assert!(
        find("trace", ": malformed token\n< HTTP/1.1 401"),
        "{lines:#?}"
    );
    assert!(find("info", "starting: 3 demo users"), "{lines:#?}");
}
