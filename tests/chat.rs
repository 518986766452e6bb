//! The chat itself: welcome, presence, broadcast order, bad messages and
//! protocol violations, over real WebSockets.

mod support;

use std::collections::HashSet;
use std::io::Write;
use std::net::TcpStream;

use serde_json::{Value, json};
use support::*;
use tungstenite::Message;

#[test]
fn welcome_lists_who_is_online_and_others_see_the_join() {
    let server = start();
    let (mut a, welcome_a) = server.connect("userA");
    assert_eq!(welcome_a["user"], "userA");
    assert_eq!(welcome_a["online"], json!(["userA"]));
    let exp = welcome_a["expires_at"].as_u64().expect("expires_at");
    let now = now_secs();
    assert!(
        exp > now && exp <= now + 900,
        "expires_at {exp} vs now {now}"
    );

    let (_b, welcome_b) = server.connect("userB");
    assert_eq!(welcome_b["online"], json!(["userA", "userB"]));
    assert_eq!(
        a.recv(),
        json!({ "type": "join", "room": "general", "user": "userB" })
    );
}

#[test]
fn leaving_is_announced_clean_or_not() {
    let server = start();
    let (mut a, _) = server.connect("userA");
    let (mut b, _) = server.connect("userB");
    let (c, _) = server.connect("userC");
    assert_eq!(a.recv_type("join")["user"], "userB");
    assert_eq!(a.recv_type("join")["user"], "userC");

    // A clean close...
    b.ws.close(None).expect("close");
    assert_eq!(
        a.recv(),
        json!({ "type": "leave", "room": "general", "user": "userB" })
    );
    // ...and a dropped socket both end in a `leave`.
    drop(c);
    assert_eq!(
        a.recv(),
        json!({ "type": "leave", "room": "general", "user": "userC" })
    );
}

#[test]
fn a_second_tab_of_the_same_user_is_not_a_new_join() {
    let server = start();
    let (mut a, _) = server.connect("userA");
    let (b1, _) = server.connect("userB");
    let (b2, welcome) = server.connect("userB");
    assert_eq!(welcome["online"], json!(["userA", "userB"]));
    assert_eq!(a.recv_type("join")["user"], "userB");
    drop(b1);
    // userB is still online through b2: the next thing A sees is a message.
    let (mut c, _) = server.connect("userC");
    c.say("ping");
    let next = a.recv();
    assert_eq!(next["type"], "join", "{next}");
    assert_eq!(next["user"], "userC");
    assert_eq!(a.recv()["type"], "message");
    drop(b2);
    assert_eq!(
        a.recv(),
        json!({ "type": "leave", "room": "general", "user": "userB" })
    );
}

#[test]
fn messages_reach_everyone_including_the_sender() {
    let server = start();
    let (mut a, _) = server.connect("userA");
    let (mut b, _) = server.connect("userB");
    a.recv_type("join");

    a.say("hello <b>world</b> \"quoted\" ✓");
    for client in [&mut a, &mut b] {
        let m = client.recv_type("message");
        assert_eq!(m["seq"], 1);
        assert_eq!(m["from"], "userA");
        assert_eq!(m["text"], "hello <b>world</b> \"quoted\" ✓");
        assert!(m["ts"].as_u64().is_some_and(|ts| ts > 1_700_000_000_000));
        let keys: HashSet<&str> = m.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        assert_eq!(
            keys,
            HashSet::from(["type", "room", "epoch", "seq", "from", "text", "ts"])
        );
    }
    b.say("second");
    assert_eq!(a.recv_type("message")["seq"], 2);
    assert_eq!(b.recv_type("message")["seq"], 2);
}

#[test]
fn a_burst_in_one_write_arrives_whole_and_nothing_waits_for_more() {
    let server = start_with(|c| c.message_rate = 0);
    let (mut a, _) = server.connect("userA");
    let (mut b, _) = server.connect("userB");
    a.recv_type("join");

    // Twenty messages and then one the server refuses, in one write: the
    // server holds each message while the next is already there, so the
    // last must still go out when what follows is no chat message at all.
    for i in 0..20 {
        let json = serde_json::json!({ "type": "message", "text": format!("m{i}") });
        a.ws.write(Message::text(json.to_string())).expect("queue");
    }
    a.ws.write(Message::text("not json")).expect("queue");
    a.ws.flush().expect("send");
    let expected: Vec<Value> = (0..20).map(|i| format!("m{i}").into()).collect();
    let texts: Vec<Value> = (0..20)
        .map(|_| b.recv_type("message")["text"].clone())
        .collect();
    assert_eq!(texts, expected);
    // The sender sees its messages, then the answer to what followed
    // them: held messages go out before anything addressed to it alone.
    let seen: Vec<Value> = (0..21)
        .map(|_| {
            let m = a.recv_type_of(&["message", "error"]);
            m.get("text").unwrap_or(&m["code"]).clone()
        })
        .collect();
    let mut expected = expected;
    expected.push("bad_message".into());
    assert_eq!(seen, expected);
}

#[test]
fn concurrent_senders_are_seen_in_one_gapless_order_by_everyone() {
    // Faster than the default message rate allows: measure order, not limits.
    let server = start_with(|c| c.message_rate = 0);
    let per_sender = 50;
    let (mut watcher, _) = server.connect("userC");
    let mut senders = Vec::new();
    for user in ["userA", "userB"] {
        let (client, _) = server.connect(user);
        senders.push(client);
    }
    let handles: Vec<_> = senders
        .into_iter()
        .map(|mut client| {
            std::thread::spawn(move || {
                for i in 0..per_sender {
                    client.say(&format!("message {i}"));
                }
                // Each sender also sees every message, in the same order.
                let mut seqs = Vec::new();
                while seqs.len() < 2 * per_sender {
                    seqs.push(client.recv_type("message")["seq"].as_u64().unwrap());
                }
                seqs
            })
        })
        .collect();

    let mut seen = Vec::new();
    let mut last_from_each = std::collections::HashMap::new();
    while seen.len() < 2 * per_sender {
        let m = watcher.recv_type("message");
        let from = m["from"].as_str().unwrap().to_string();
        let i: usize = m["text"].as_str().unwrap()[8..].parse().unwrap();
        // Each sender's own messages stay in the order it sent them.
        let previous = last_from_each.insert(from, i);
        assert!(previous.is_none_or(|p| p + 1 == i), "reordered: {m}");
        seen.push(m["seq"].as_u64().unwrap());
    }
    let expected: Vec<u64> = (1..=2 * per_sender as u64).collect();
    assert_eq!(seen, expected, "seq starts at 1 and rises by exactly 1");
    for handle in handles {
        assert_eq!(handle.join().unwrap(), expected);
    }
}

#[test]
fn bad_messages_get_an_error_and_keep_the_connection() {
    let server = start_with(|c| c.max_message_bytes = 16);
    let (mut a, _) = server.connect("userA");
    let cases = [
        "not json".to_string(),
        "[1,2]".to_string(),
        json!({ "type": "dance" }).to_string(),
        json!({ "text": "no type" }).to_string(),
        json!({ "type": "message" }).to_string(),
        json!({ "type": "message", "text": 5 }).to_string(),
        json!({ "type": "message", "text": "" }).to_string(),
        json!({ "type": "message", "text": "   " }).to_string(),
        json!({ "type": "message", "text": "x".repeat(17) }).to_string(),
        // 6 characters, 18 bytes: the limit is in UTF-8 bytes.
        json!({ "type": "message", "text": "✓✓✓✓✓✓" }).to_string(),
    ];
    for raw in &cases {
        a.ws.send(Message::text(raw.clone())).unwrap();
        let error = a.recv();
        assert_eq!(error["type"], "error", "{raw}");
        assert_eq!(error["code"], "bad_message", "{raw}");
        assert!(
            error["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{raw}"
        );
    }
    // Typing plain words into a WebSocket client is told what to send.
    for raw in ["hello", "\"hello\"", "42"] {
        a.ws.send(Message::text(raw)).unwrap();
        let error = a.recv();
        assert_eq!(
            error["message"],
            r#"invalid message: expected a JSON object such as {"type":"message","text":"hi"}"#,
            "{raw}"
        );
    }
    // Exactly at the limit is fine, and the connection still works.
    a.say(&"x".repeat(16));
    let m = a.recv();
    assert_eq!(m["type"], "message");
    assert_eq!(m["seq"], 1, "no bad message was broadcast");
}

#[test]
fn a_binary_frame_is_closed_with_1003() {
    let server = start();
    let (mut a, _) = server.connect("userA");
    a.ws.send(Message::binary(vec![1, 2, 3])).unwrap();
    let (code, _) = a.until_close();
    assert_eq!(code, 1003);
}

#[test]
fn a_frame_over_the_limit_is_closed_with_1009() {
    let server = start_with(|c| c.max_message_bytes = 100);
    let (mut a, _) = server.connect("userA");
    let (mut b, _) = server.connect("userB");
    // Far beyond the frame limit (2 × 100 + 1024 bytes).
    let huge = json!({ "type": "message", "text": "x".repeat(20_000) }).to_string();
    a.ws.send(Message::text(huge)).unwrap();
    let (code, _) = a.until_close();
    assert_eq!(code, 1009);
    // Nobody else is affected.
    assert_eq!(
        b.recv(),
        json!({ "type": "leave", "room": "general", "user": "userA" })
    );
}

#[test]
fn invalid_utf8_is_closed_with_1007() {
    let server = start();
    // A masked text frame whose payload (0xff) is not UTF-8. Mask 0 keeps
    // the payload readable.
    let mut client = upgraded_with_raw_frame(&server, &[0x81, 0x81, 0, 0, 0, 0, 0xff]);
    let (code, before) = client.until_close();
    assert_eq!(code, 1007);
    assert_eq!(before[0]["type"], "welcome");
}

#[test]
fn an_unmasked_client_frame_is_a_protocol_error() {
    let server = start();
    let mut client = upgraded_with_raw_frame(&server, b"\x81\x02hi"); // MASK bit clear
    assert_eq!(client.until_close().0, 1002);
}

/// Upgrades a raw socket as userA, writes `frame` as it is, and wraps the
/// socket in a client to read the server's answer.
fn upgraded_with_raw_frame(server: &TestServer, frame: &[u8]) -> Client {
    let token = server.token("userA");
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream
        .write_all(upgrade_request(&format!("/ws?token={token}"), "").as_bytes())
        .unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    assert_eq!(read_response(&mut stream, false).status, 101);
    stream.write_all(frame).unwrap();
    Client::from_ws(tungstenite::WebSocket::from_raw_socket(
        stream,
        tungstenite::protocol::Role::Client,
        None,
    ))
}

#[test]
fn ping_gets_pong() {
    let server = start();
    let (mut a, _) = server.connect("userA");
    a.ws.send(Message::Ping(b"are you there".to_vec().into()))
        .unwrap();
    match a.ws.read().expect("read") {
        Message::Pong(payload) => assert_eq!(&payload[..], b"are you there"),
        other => panic!("expected pong, got {other:?}"),
    }
}

#[test]
fn a_clean_close_is_echoed() {
    let server = start();
    let (mut a, _) = server.connect("userA");
    a.ws.close(None).unwrap();
    loop {
        match a.ws.read() {
            Ok(Message::Close(_)) | Err(tungstenite::Error::ConnectionClosed) => break,
            Ok(_) => continue,
            Err(e) => panic!("expected the close echo, got {e}"),
        }
    }
}

#[test]
fn frames_sent_with_the_upgrade_request_are_not_lost() {
    let server = start();
    let token = server.token("userA");
    let (mut watcher, _) = server.connect("userB");
    let mut stream = TcpStream::connect(server.addr).unwrap();
    // The request and a first (masked) message in one write.
    let mut bytes = upgrade_request(&format!("/ws?token={token}"), "").into_bytes();
    let payload = br#"{"type":"message","text":"early"}"#;
    bytes.extend_from_slice(&[0x81, 0x80 | payload.len() as u8, 0, 0, 0, 0]);
    bytes.extend_from_slice(payload);
    stream.write_all(&bytes).unwrap();
    let m = watcher.recv_type("message");
    assert_eq!(m["text"], "early");
    assert_eq!(m["from"], "userA");
}

#[test]
fn welcome_tells_the_client_the_limits() {
    let server = start_with(|c| {
        c.max_message_bytes = 10;
        c.message_rate = 7;
    });
    let (_a, welcome) = server.connect("userA");
    assert_eq!(
        welcome["limits"],
        json!({ "max_message_bytes": 10, "message_rate": 7 })
    );
    // Every field it had before is still there.
    for field in ["user", "expires_at", "online", "history"] {
        assert!(!welcome[field].is_null(), "welcome keeps {field}");
    }
}

#[test]
fn a_message_id_comes_back_on_the_message_and_on_its_refusal() {
    let server = start_with(|c| {
        c.max_message_bytes = 10;
        c.message_rate = 1;
        c.message_burst = 2;
    });
    let (mut a, _) = server.connect("userA");
    let (mut b, _) = server.connect("userB");
    a.recv_type("join");

    // Taken: everyone gets the id (the sender's other tabs know it too).
    a.send_json(&json!({ "type": "message", "text": "hi", "id": "m1" }));
    let message = a.recv_type("message");
    assert_eq!(message["id"], "m1");
    assert_eq!(message["text"], "hi");
    assert_eq!(b.recv_type("message")["id"], "m1");

    // Too long: the error names the message.
    a.send_json(&json!({ "type": "message", "text": "12345678901", "id": "m2" }));
    let error = a.recv_type("error");
    assert_eq!(error["code"], "bad_message");
    assert_eq!(error["id"], "m2");

    // Over the rate (the burst of 2 is spent): so does this one.
    a.send_json(&json!({ "type": "message", "text": "again", "id": "m3" }));
    let error = a.recv_type("error");
    assert_eq!(error["code"], "rate_limited");
    assert_eq!(error["id"], "m3");

    // Without an id, nothing changes: no `id` field at all.
    let (mut c, _) = server.connect("userC");
    c.say("plain");
    let message = c.recv_type("message");
    assert!(message.get("id").is_none(), "{message}");

    // An id longer than 64 bytes is itself refused, and not echoed.
    let long = "x".repeat(65);
    c.send_json(&json!({ "type": "message", "text": "hi", "id": long }));
    let error = c.recv_type("error");
    assert_eq!(error["code"], "bad_message");
    assert!(error.get("id").is_none(), "{error}");
}
