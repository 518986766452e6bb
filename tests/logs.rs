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
        "login ok: userA",
        "upgrade refused",
        "token=[redacted]",
        "connected: userA",
        "evicted: TokenExpired",
        "disconnected: closed by server, code 4001",
    ] {
        assert!(log.contains(event), "no {event:?} in the log:\n{log}");
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
