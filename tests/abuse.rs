//! Abuse limits, each through real sockets: failed-login throttling,
//! cross-site upgrades, connection caps, message floods and slowloris.

mod support;

use std::io::Write;
use std::net::{Ipv4Addr, TcpStream};
use std::time::Duration;

use support::*;

const OTHER_HOST: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const LOCALHOST: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);

#[test]
fn failed_logins_are_throttled_per_ip() {
    let server = start_with(|c| c.max_login_failures = 3);
    for _ in 0..3 {
        let r = send_raw_from(OTHER_HOST, server.addr, &login_request("userA", "guess"));
        assert_eq!(r.status, 401);
    }
    // The fourth try from that IP is refused without checking, even with
    // the right password.
    let r = send_raw_from(
        OTHER_HOST,
        server.addr,
        &login_request("userA", "passwordA"),
    );
    r.assert_rate_limited();
    // Another IP logs in as usual.
    let r = send_raw_from(LOCALHOST, server.addr, &login_request("userA", "passwordA"));
    assert_eq!(r.status, 200);
}

#[test]
fn cross_site_upgrades_are_refused() {
    let server = start();
    let token = server.token("userA");
    let target = format!("/ws?token={token}");
    let with_origin = |origin: &str| {
        send_raw(
            server.addr,
            upgrade_request(&target, &format!("Origin: {origin}\r\n")).as_bytes(),
        )
    };
    let evil = with_origin("https://evil.example");
    assert_eq!(evil.status, 403);
    assert_eq!(evil.json()["error"], "forbidden_origin");
    // The server's own origin (Host is "test" in these requests) is fine,
    // and so is a client that sends no Origin at all.
    assert_eq!(with_origin("http://test").status, 101);
    assert_eq!(with_origin("https://test").status, 101);
    assert_eq!(
        send_raw(server.addr, upgrade_request(&target, "").as_bytes()).status,
        101
    );

    let permissive = start_with(|c| c.allowed_origins = vec!["https://chat.example".into()]);
    let token = permissive.token("userA");
    let r = send_raw(
        permissive.addr,
        upgrade_request(
            &format!("/ws?token={token}"),
            "Origin: https://chat.example\r\n",
        )
        .as_bytes(),
    );
    assert_eq!(r.status, 101);
}

#[test]
fn connections_over_the_caps_get_503_and_others_are_unaffected() {
    let server = start_with(|c| {
        c.max_connections = 6;
        c.max_connections_per_ip = 3;
    });
    let (mut a, _) = server.connect("userA");
    // Two idle connections from 127.0.0.1 fill its three places.
    let _held: Vec<TcpStream> = (0..2)
        .map(|_| connect_from(LOCALHOST, server.addr))
        .collect();
    let refused = send_raw_from(
        LOCALHOST,
        server.addr,
        b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n",
    );
    assert_eq!(refused.status, 503);
    assert_eq!(refused.json()["error"], "service_unavailable");
    // Another IP still gets in, until the server as a whole is full.
    let _others: Vec<TcpStream> = (0..3)
        .map(|_| connect_from(OTHER_HOST, server.addr))
        .collect();
    let full = send_raw_from(
        Ipv4Addr::new(127, 0, 0, 3),
        server.addr,
        b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n",
    );
    assert_eq!(full.status, 503);
    // The connected client never noticed.
    a.say("still here");
    assert_eq!(a.recv_type("message")["text"], "still here");
}

#[test]
fn a_message_flood_is_refused_then_disconnected() {
    let server = start_with(|c| {
        c.message_rate = 5;
        c.message_burst = 10;
    });
    let (mut watcher, _) = server.connect("userB");
    let (mut flooder, _) = server.connect("userA");
    for i in 0..100 {
        flooder.say(&format!("spam {i}"));
    }
    let (code, before) = flooder.until_close();
    assert_eq!(code, 1008);
    let limited = before
        .iter()
        .filter(|m| m["code"] == "rate_limited")
        .count();
    let delivered = before.iter().filter(|m| m["type"] == "message").count();
    assert!(
        (10..=12).contains(&delivered),
        "the burst went through: {delivered}"
    );
    assert!((10..=12).contains(&limited), "then refusals: {limited}");
    // The room saw only the burst.
    let mut seen = 0;
    loop {
        let m = watcher.recv();
        if m["type"] == "leave" {
            break;
        }
        if m["type"] == "message" {
            seen += 1;
        }
    }
    assert_eq!(seen, delivered);
}

#[test]
fn half_open_connections_do_not_stop_new_clients() {
    let server = start_with(|c| {
        c.max_connections_per_ip = 2000;
        c.request_timeout = Duration::from_secs(30);
    });
    // A thousand connections from one host, each with a request head that
    // never ends.
    let mut slow: Vec<TcpStream> = (0..1000)
        .map(|_| {
            let mut s = connect_from(OTHER_HOST, server.addr);
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
                .expect("start a head");
            s
        })
        .collect();
    for s in slow.iter_mut().take(100) {
        s.write_all(b"X-Slow: 1\r\n").expect("trickle");
    }
    // Meanwhile a new client logs in and chats as usual.
    let (mut a, _) = server.connect("userA");
    let (mut b, _) = server.connect("userB");
    a.say("hello through the crowd");
    assert_eq!(b.recv_type("message")["text"], "hello through the crowd");
    assert_eq!(a.recv_type("message")["text"], "hello through the crowd");
}

#[test]
fn parallel_login_guesses_cannot_outrun_the_throttle() {
    let server = start_with(|c| c.max_login_failures = 3);
    let addr = server.addr;
    let guesses: Vec<_> = (0..24)
        .map(|i| {
            std::thread::spawn(move || {
                send_raw_from(
                    OTHER_HOST,
                    addr,
                    &login_request("userA", &format!("guess{i}")),
                )
                .status
            })
        })
        .collect();
    let statuses: Vec<u16> = guesses.into_iter().map(|g| g.join().unwrap()).collect();
    let checked = statuses.iter().filter(|s| **s == 401).count();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(checked, 3, "only three guesses were checked: {statuses:?}");
    assert_eq!(refused, 21);
}

#[test]
fn one_users_sockets_share_one_message_budget() {
    let server = start_with(|c| {
        c.user_message_rate = Some(1);
        c.user_message_burst = Some(10);
    });
    let (mut watcher, _) = server.connect("userB");
    let (mut neighbour, _) = server.connect("userC");
    // Five sockets of one user, each well within its own burst of 40.
    let mut sockets: Vec<Client> = (0..5).map(|_| server.connect("userA").0).collect();
    for socket in &mut sockets {
        for i in 0..20 {
            socket.say(&format!("spam {i}"));
        }
    }
    // One budget of 10 between them (and a token a second since): the
    // room hears that much, then a quiet second.
    let delivered = watcher.messages_until_quiet(Duration::from_secs(1)).len();
    assert!((10..=12).contains(&delivered), "delivered {delivered}");
    // The address's budget is spent too: another user there has the
    // second's refill (a token or so) to share, not a burst of its own.
    for i in 0..3 {
        neighbour.say(&format!("hello {i}"));
    }
    let mut replies = Vec::new();
    while replies.len() < 3 {
        let m = neighbour.recv_type_of(&["message", "error"]);
        if m["type"] == "error" || m["from"] == "userC" {
            replies.push(m);
        }
    }
    assert!(
        replies.iter().any(|r| r["code"] == "rate_limited"),
        "{replies:?}"
    );
}

#[test]
fn empty_continuation_frames_count_against_the_rate() {
    use tungstenite::Message;
    use tungstenite::protocol::frame::Frame;
    use tungstenite::protocol::frame::coding::{Data, OpCode};
    let server = start_with(|c| {
        c.message_rate = 5;
        c.message_burst = 10;
    });
    let (mut client, _) = server.connect("userA");
    // A message that never ends: one empty fragment after another, which
    // tungstenite swallows without ever returning a message.
    let first = Frame::message(Vec::new(), OpCode::Data(Data::Text), false);
    client.ws.write(Message::Frame(first)).expect("send");
    for _ in 0..100 {
        let more = Frame::message(Vec::new(), OpCode::Data(Data::Continue), false);
        if client.ws.write(Message::Frame(more)).is_err() {
            break;
        }
    }
    let _ = client.ws.flush();
    let (code, _) = client.until_close();
    assert_eq!(code, 1008);
}

#[test]
fn a_ping_flood_counts_against_the_rate() {
    use tungstenite::Message;
    let server = start_with(|c| {
        c.message_rate = 5;
        c.message_burst = 10;
    });
    let (mut client, _) = server.connect("userA");
    for _ in 0..100 {
        if client.ws.send(Message::Ping(Vec::new().into())).is_err() {
            break;
        }
    }
    let (code, _) = client.until_close();
    assert_eq!(code, 1008);
}

/// On a dual-stack listener (`[::]`), IPv4 clients arrive as
/// `::ffff:a.b.c.d`; each must still be its own address for every limit.
#[test]
fn ipv4_clients_of_a_dual_stack_listener_are_told_apart() {
    let server = start_with(|c| {
        c.bind = "[::]:0".into();
        c.max_login_failures = 3;
    });
    let v4 = std::net::SocketAddr::from((LOCALHOST, server.addr.port()));
    for _ in 0..3 {
        let r = send_raw_from(OTHER_HOST, v4, &login_request("userA", "guess"));
        assert_eq!(r.status, 401);
    }
    let r = send_raw_from(OTHER_HOST, v4, &login_request("userA", "guess"));
    assert_eq!(r.status, 429, "{}", r.text());
    let third_host = Ipv4Addr::new(127, 0, 0, 3);
    let r = send_raw_from(third_host, v4, &login_request("userA", "guess"));
    assert_eq!(r.status, 401, "another IPv4 client is not throttled");
}

#[test]
fn a_trusted_ipv4_proxy_is_recognised_on_a_dual_stack_listener() {
    let server = start_with(|c| {
        c.bind = "[::]:0".into();
        c.max_login_failures = 1;
        c.trusted_proxies = vec!["127.0.0.1/32".parse().expect("cidr")];
    });
    let v4 = std::net::SocketAddr::from((LOCALHOST, server.addr.port()));
    let via_proxy = |client: &str| {
        let mut request = login_request("userA", "guess");
        let at = request
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("head");
        let header = format!("\r\nX-Forwarded-For: {client}");
        request.splice(at..at, header.into_bytes());
        send_raw_from(LOCALHOST, v4, &request).status
    };
    assert_eq!(via_proxy("203.0.113.7"), 401);
    assert_eq!(via_proxy("203.0.113.7"), 429, "that client is throttled");
    assert_eq!(
        via_proxy("203.0.113.8"),
        401,
        "the proxy's other clients are not: the proxy was recognised"
    );
}

#[test]
fn successful_logins_are_throttled_per_user_and_per_ip() {
    let server = start_with(|c| {
        c.max_logins_per_user = 3;
        c.max_logins_per_ip = 5;
    });
    // userA's three logins, each from its own address, use up userA's share.
    for i in 0..3 {
        let from = Ipv4Addr::new(127, 0, 2, 1 + i);
        let r = send_raw_from(from, server.addr, &login_request("userA", "passwordA"));
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let r = send_raw_from(
        Ipv4Addr::new(127, 0, 2, 9),
        server.addr,
        &login_request("userA", "passwordA"),
    );
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.json()["error"], "rate_limited");
    assert!(r.header("Retry-After").is_some());
    // userB is unaffected, and wrong guesses at userB do not lock it out.
    for _ in 0..4 {
        let r = send_raw_from(OTHER_HOST, server.addr, &login_request("userB", "guess"));
        assert_eq!(r.status, 401);
    }
    let r = send_raw_from(LOCALHOST, server.addr, &login_request("userB", "passwordB"));
    assert_eq!(r.status, 200, "{}", r.text());
    // OTHER_HOST has made four attempts: one more, then 429 whatever the user.
    let r = send_raw_from(
        OTHER_HOST,
        server.addr,
        &login_request("userC", "passwordC"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = send_raw_from(
        OTHER_HOST,
        server.addr,
        &login_request("userC", "passwordC"),
    );
    assert_eq!(r.status, 429, "{}", r.text());
}

#[test]
fn parallel_correct_logins_cannot_outrun_the_user_limit() {
    let server = start_with(|c| c.max_logins_per_user = 3);
    let addr = server.addr;
    let logins: Vec<_> = (0..12)
        .map(|i| {
            std::thread::spawn(move || {
                let from = Ipv4Addr::new(127, 0, 3, 1 + i);
                send_raw_from(from, addr, &login_request("userA", "passwordA")).status
            })
        })
        .collect();
    let statuses: Vec<u16> = logins.into_iter().map(|g| g.join().unwrap()).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        3,
        "{statuses:?}"
    );
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 9);
}

#[test]
fn logins_whose_client_has_gone_are_not_checked() {
    // No login limit, so that every request reaches the password queue.
    let server = start_with(|c| {
        c.max_login_failures = 0;
        c.max_logins_per_ip = 0;
        c.max_logins_per_user = 0;
    });
    // Twenty clients send a login and hang up at once; the password queue
    // (one check per core) is longer than their patience.
    let gone = 20;
    for _ in 0..gone {
        let mut stream = TcpStream::connect(server.addr).expect("connect");
        stream
            .write_all(&login_request("userA", "wrong"))
            .expect("send");
        drop(stream);
    }
    let deadline = std::time::Instant::now() + PATIENCE;
    let failed = || server.metric("jwtchat_auth_failures_total");
    while failed() + server.metric("jwtchat_logins_abandoned_total") < gone {
        assert!(std::time::Instant::now() < deadline, "logins not all done");
        std::thread::sleep(Duration::from_millis(10));
    }
    let checked = failed();
    assert!(
        checked <= gone / 2,
        "{checked} of {gone} logins of departed clients were checked"
    );
    // A client that stays gets its answer as usual.
    let r = send_raw(server.addr, &login_request("userA", "passwordA"));
    assert_eq!(r.status, 200);
}

/// Each connection may need two threads (its reader, and a writer while it
/// is behind): past the threads the server may have, a connection gets
/// `503` at once instead of the server failing to start its thread, and
/// everyone already connected carries on.
#[test]
fn past_the_thread_budget_a_connection_gets_503_and_the_others_carry_on() {
    let server = start_with(|c| c.max_threads = Some(6)); // three connections
    let mut a = server
        .connect_token(&token_for("1", "userA", 3600))
        .expect("upgrade");
    let mut b = server
        .connect_token(&token_for("2", "userB", 3600))
        .expect("upgrade");
    let _idle = TcpStream::connect(server.addr).expect("connect");
    let refused = send_raw(server.addr, b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert_eq!(refused.header("Retry-After"), Some("1"));
    a.say("still here");
    assert_eq!(a.recv_type("message")["text"], "still here");
    assert_eq!(b.recv_type("message")["text"], "still here");
}
