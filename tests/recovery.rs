//! Resuming after a reconnect, through real sockets: `since` in the
//! `/ws` URL or the `Jwtchat-Since` header (for `general`, in the
//! `welcome`) and in `subscribe` (any room); `recovered: true` with exactly
//! what was missed, or `recovered: false` with the history.

mod support;

use std::net::Shutdown;

use serde_json::{Value, json};
use support::*;
use tungstenite::client::IntoClientRequest;

/// The `seq`s of a list of messages.
fn seqs(messages: &Value) -> Vec<u64> {
    messages
        .as_array()
        .expect("a list")
        .iter()
        .map(|m| m["seq"].as_u64().expect("seq"))
        .collect()
}

/// Connects `user` resuming `general` from `epoch`/`seq` with the query
/// form, and returns the client and its `welcome`.
fn resume(server: &TestServer, user: &str, epoch: &str, seq: u64) -> (Client, Value) {
    let token = server.token(user);
    let mut client = server
        .connect_token(&format!("{token}&since=general:{epoch}:{seq}"))
        .expect("upgrade");
    let welcome = client.recv();
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    (client, welcome)
}

#[test]
fn a_client_that_was_away_gets_exactly_what_it_missed_then_live() {
    let server = start_with(|c| c.message_rate = 0);
    let (mut a, welcome) = server.connect("userA");
    let epoch = welcome["epoch"].as_str().expect("epoch").to_string();
    let (mut b, _) = server.connect("userB");
    b.say("before");
    let seen = a.recv_type("message");
    assert_eq!(
        (seen["seq"].as_u64(), &seen["epoch"]),
        (Some(1), &json!(epoch))
    );

    // A's socket dies without a close frame; 500 messages go by.
    a.ws.get_mut().shutdown(Shutdown::Both).unwrap();
    drop(a);
    for i in 0..500 {
        b.say(&format!("while away {i}"));
    }
    // B has them all: they were fanned out before A comes back.
    for _ in 0..500 {
        b.recv_type("message");
    }
    let (mut a, welcome) = resume(&server, "userA", &epoch, 1);
    assert_eq!(welcome["recovered"], true, "{welcome}");
    assert_eq!(welcome["epoch"], json!(epoch));
    assert_eq!(welcome["history"], json!([]), "missed replaces history");
    assert_eq!(seqs(&welcome["missed"]), (2..=501).collect::<Vec<_>>());
    assert_eq!(welcome["missed"][0]["text"], "while away 0");
    // Live messages continue the sequence: no gap, no duplicate.
    b.say("welcome back");
    let live = a.recv_type("message");
    assert_eq!(live["seq"], 502);
    assert_eq!(live["text"], "welcome back");
}

#[test]
fn another_epoch_or_a_gap_past_retention_is_not_recovered() {
    let server = start_with(|c| {
        c.message_rate = 0;
        c.history = 5;
        c.history_size = 10;
    });
    let (mut b, welcome) = server.connect("userB");
    let epoch = welcome["epoch"].as_str().unwrap().to_string();
    for i in 0..20 {
        b.say(&format!("m{i}"));
    }
    for _ in 0..20 {
        b.recv_type("message");
    }
    // Kept: 11..=20. From 10 on, all is there; from 9, 10 is gone.
    let (_, welcome) = resume(&server, "userA", &epoch, 10);
    assert_eq!(welcome["recovered"], true);
    assert_eq!(seqs(&welcome["missed"]), (11..=20).collect::<Vec<_>>());
    let (_, welcome) = resume(&server, "userA", &epoch, 9);
    assert_eq!(welcome["recovered"], false);
    assert!(welcome.get("missed").is_none());
    assert_eq!(
        seqs(&welcome["history"]),
        [16, 17, 18, 19, 20],
        "--history 5"
    );
    // Another epoch (a server that lost its history): the history again.
    let (_, welcome) = resume(&server, "userA", "0123456789ab", 20);
    assert_eq!(welcome["recovered"], false);
    assert_eq!(seqs(&welcome["history"]), [16, 17, 18, 19, 20]);
    // A seq this epoch never reached is not believed either.
    let (_, welcome) = resume(&server, "userA", &epoch, 21);
    assert_eq!(welcome["recovered"], false);
    // Without since: no recovered field at all, as before.
    let (_, welcome) = server.connect("userC");
    assert!(welcome.get("recovered").is_none(), "{welcome}");
}

#[test]
fn too_much_to_recover_is_not_recovered() {
    let server = start_with(|c| {
        c.message_rate = 0;
        c.max_recovery_bytes = 4096;
    });
    let (mut b, welcome) = server.connect("userB");
    let epoch = welcome["epoch"].as_str().unwrap().to_string();
    for i in 0..20 {
        b.say(&format!("{i:0>200}"));
    }
    for _ in 0..20 {
        b.recv_type("message");
    }
    let (_, welcome) = resume(&server, "userA", &epoch, 18);
    assert_eq!(welcome["recovered"], true, "two fit");
    let (_, welcome) = resume(&server, "userA", &epoch, 0);
    assert_eq!(welcome["recovered"], false, "twenty do not");
    assert_eq!(seqs(&welcome["history"]).len(), 20);
}

#[test]
fn the_header_form_resumes_and_a_bad_since_is_refused() {
    let server = start();
    let (mut b, welcome) = server.connect("userB");
    let epoch = welcome["epoch"].as_str().unwrap().to_string();
    b.say("one");
    b.say("two");
    b.recv_type("message");
    b.recv_type("message");
    let mut request = format!("ws://{}/ws", server.addr)
        .into_client_request()
        .unwrap();
    let headers = request.headers_mut();
    let bearer = format!("Bearer {}", server.token("userA"));
    headers.insert("Authorization", bearer.parse().unwrap());
    let since = format!("general:{epoch}:1");
    headers.insert("Jwtchat-Since", since.parse().unwrap());
    let mut a = Client::open(server.addr, request).unwrap();
    let welcome = a.recv();
    assert_eq!(welcome["recovered"], true);
    assert_eq!(seqs(&welcome["missed"]), [2]);

    // Malformed, or for a room the welcome does not describe: 400, said so.
    let token = server.token("userA");
    for (since, says) in [
        ("general:e1", "is not ROOM:EPOCH:SEQ"),
        ("general:e1:x", "is not ROOM:EPOCH:SEQ"),
        ("ops:e1:4", "only general is resumed in the welcome"),
    ] {
        let raw = format!(
            "GET /ws?token={token}&since={since} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        );
        let response = send_raw(server.addr, raw.as_bytes());
        assert_eq!(response.status, 400, "{since}");
        assert!(
            response.text().contains(says),
            "{since}: {}",
            response.text()
        );
    }
}

#[test]
fn subscribe_with_since_resumes_any_room() {
    let server = start_with(|c| {
        c.open_rooms = vec!["ops".into()];
        c.message_rate = 0;
    });
    let (mut a, _) = server.connect("userA");
    let (mut b, _) = server.connect("userB");
    a.send_json(&json!({ "type": "subscribe", "room": "ops" }));
    let subscribed = a.recv_type("subscribed");
    let epoch = subscribed["epoch"].as_str().unwrap().to_string();
    assert!(subscribed.get("recovered").is_none());
    b.send_json(&json!({ "type": "subscribe", "room": "ops" }));
    b.recv_type("subscribed");
    for i in 0..3 {
        b.send_json(&json!({ "type": "message", "room": "ops", "text": format!("o{i}"), "id": format!("b{i}") }));
    }
    for _ in 0..3 {
        assert_eq!(a.recv_type("message")["epoch"], json!(epoch));
    }
    // A new connection of A's picks ops up where A left it.
    let (mut a2, _) = server.connect("userA");
    a2.send_json(
        &json!({ "type": "subscribe", "room": "ops", "since": { "epoch": epoch, "seq": 1 } }),
    );
    let resumed = a2.recv_type("subscribed");
    assert_eq!(resumed["recovered"], true);
    assert_eq!(seqs(&resumed["missed"]), [2, 3]);
    // A sender learns which of its messages were taken: the ids come back.
    assert_eq!(resumed["missed"][0]["id"], "b1");
    assert_eq!(resumed["last_seq"], 3);
    // Subscribing again with since answers again, from there.
    a2.send_json(
        &json!({ "type": "subscribe", "room": "ops", "since": { "epoch": "other", "seq": 1 } }),
    );
    let again = a2.recv_type("subscribed");
    assert_eq!(again["recovered"], false);
    assert_eq!(seqs(&again["history"]), [1, 2, 3]);
}
