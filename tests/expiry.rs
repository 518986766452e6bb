//! Token expiry after the upgrade: a client whose token runs out gets
//! `token_expired` and close 4001, both from the periodic sweep and on the
//! next broadcast, and never receives a message sent after its `exp`.
//!
//! The first test waits for a real expiry, end to end; the others move a
//! manual clock past `exp` instead of sleeping until it.

mod support;

use std::time::Duration;

use serde_json::json;
use support::*;

fn expired_notice() -> serde_json::Value {
    json!({
        "type": "error",
        "code": "token_expired",
        "message": "Your token is no longer valid. Please reauthenticate."
    })
}

#[test]
fn the_sweep_closes_an_idle_client_soon_after_exp() {
    let server = start_with(|c| c.token_ttl_secs = 3);
    let (mut a, welcome) = server.connect("userA");
    let exp = welcome["expires_at"].as_u64().unwrap();
    let (code, before) = a.until_close();
    assert_eq!(code, 4001);
    // A token this short is inside the warning window from the start.
    let warning = json!({ "type": "expiring", "expires_at": exp });
    assert_eq!(before, vec![warning, expired_notice()]);
    // Not before exp (RFC 7519 §4.1.4) ...
    assert!(now_secs() >= exp);
    // ... and the socket is then closed by the server.
    assert!(matches!(a.next(), Event::Error(_) | Event::Closed(_)));
}

#[test]
fn a_broadcast_evicts_an_expired_client_instead_of_delivering() {
    // The sweep effectively off: only a broadcast can find the expiry.
    let (server, clock) = start_on_clock(|c| {
        c.token_ttl_secs = 600;
        c.sweep_interval = Duration::from_secs(3600);
    });
    let (mut short, welcome) = server.connect("userA");
    let exp = welcome["expires_at"].as_u64().unwrap();

    // A long-lived client on a second server config is not possible, so
    // mint a long token for userB with the same secret.
    let long = token_for("2", "userB", 3600);
    let mut sender = server.connect_token(&long).expect("upgrade");
    assert_eq!(sender.recv()["type"], "welcome");
    assert_eq!(short.recv_type("join")["user"], "userB");

    clock.advance(Duration::from_secs(600));
    assert!(clock.clock().unix_secs() >= exp);
    sender.say("after expiry");

    let (code, before) = short.until_close();
    assert_eq!(code, 4001);
    assert_eq!(before, vec![expired_notice()], "no message after exp");
    // The sender gets its message and sees userA leave.
    let mut got = [sender.recv(), sender.recv()];
    got.sort_by_key(|v| v["type"].as_str().unwrap().to_string());
    assert_eq!(
        got[0],
        json!({ "type": "leave", "room": "general", "user": "userA" })
    );
    assert_eq!(got[1]["text"], "after expiry");
}

#[test]
fn clients_with_valid_tokens_are_untouched_by_the_sweep() {
    let (server, clock) = start_on_clock(|c| c.token_ttl_secs = 600);
    let (mut a, _) = server.connect("userA");
    let long = token_for("2", "userB", 3600);
    let mut b = server.connect_token(&long).expect("upgrade");
    b.recv();
    a.recv_type("join");
    clock.advance(Duration::from_secs(600));
    // userA expires and leaves; userB stays and can still chat.
    assert_eq!(a.until_close().0, 4001);
    assert_eq!(
        b.recv(),
        json!({ "type": "leave", "room": "general", "user": "userA" })
    );
    b.say("still here");
    assert_eq!(b.recv()["text"], "still here");
}

/// Reads one unmasked server frame (RFC 6455 §5.2) off a raw socket.
fn read_server_frame(stream: &mut std::net::TcpStream) -> Vec<u8> {
    use std::io::Read;
    let mut head = [0u8; 2];
    stream.read_exact(&mut head).unwrap();
    let len = match head[1] & 0x7f {
        126 => {
            let mut ext = [0u8; 2];
            stream.read_exact(&mut ext).unwrap();
            usize::from(u16::from_be_bytes(ext))
        }
        127 => panic!("no frame here is that big"),
        len => usize::from(len),
    };
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload).unwrap();
    payload
}

/// A raw client socket, upgraded with `token`, that the test drives by hand.
fn raw_session(server: &TestServer, token: &str) -> std::net::TcpStream {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(server.addr).unwrap();
    stream
        .write_all(upgrade_request(&format!("/ws?token={token}"), "").as_bytes())
        .unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    assert_eq!(read_response(&mut stream, false).status, 101);
    stream
}

#[test]
fn an_expired_client_that_ignores_the_close_cannot_chat_and_is_dropped() {
    use std::io::Write;
    let (server, clock) = start_on_clock(|c| c.token_ttl_secs = 600);
    let token = server.token("userA");
    let mut rogue = raw_session(&server, &token);
    // Its welcome has been sent, so it is in the room: settle its join.
    read_server_frame(&mut rogue);
    server.settle_presence();
    let mut b = server
        .connect_token(&token_for("2", "userB", 3600))
        .unwrap();
    assert_eq!(b.recv()["type"], "welcome");
    clock.advance(Duration::from_secs(600));
    assert_eq!(
        b.recv(),
        json!({ "type": "leave", "room": "general", "user": "userA" }),
        "userA expires"
    );

    // userA ignores its 4001 and keeps talking.
    let payload = br#"{"type":"message","text":"ghost"}"#;
    let mut frame = vec![0x81, 0x80 | payload.len() as u8, 0, 0, 0, 0];
    frame.extend_from_slice(payload);
    for _ in 0..3 {
        let _ = rogue.write_all(&frame);
    }
    // Nothing of it reaches the room: the next message B sees is its own.
    b.say("marker");
    let next = b.recv();
    assert_eq!(next["text"], "marker", "got {next}");
    assert_eq!(next["seq"], 1);
    // And the server drops the connection, though the client never
    // answered the close (within the 5 s grace, plus the sweep).
    assert!(closed_by_server(&mut rogue));
}

#[test]
fn a_silent_expired_client_is_disconnected_after_the_close_grace() {
    let (server, clock) = start_on_clock(|c| c.token_ttl_secs = 600);
    let token = server.token("userA");
    let mut silent = raw_session(&server, &token);
    clock.advance(Duration::from_secs(600));
    // It reads (the close frame included) but never answers it.
    assert!(
        closed_by_server(&mut silent),
        "the server must not wait forever"
    );
    let handle = server.handle.as_ref().unwrap();
    let deadline = std::time::Instant::now() + PATIENCE;
    while handle.open_connections() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the connection thread ended"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
