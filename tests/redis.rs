//! Several instances, one room, over Redis (`--features redis`): one
//! message order and one history for everyone, presence across instances,
//! an instance killed without cleanup, a Redis outage and its recovery, and
//! rooms kept apart by `--redis-prefix`.
//!
//! Every test starts its own `redis-server` (Debian's package) on a free
//! loopback port, so they run in parallel. Without `redis-server` they are
//! skipped with a loud message, unless `JWTCHAT_REQUIRE_REDIS=1` (as CI
//! sets), where they fail.

#[path = "support/redis_server.rs"]
mod redis_server;
mod support;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use jwtchat::Config;
use redis_server::{RedisServer, redis_or_skip};
use serde_json::{Value, json};
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_jwtchat");

/// An in-process instance on `redis`, with no message or login rate limit
/// (the tests measure order, not limits, and log the same users in many
/// times), `/metrics` on its main listener (the tests read it), and `tweak`
/// applied.
fn instance(redis: &RedisServer, tweak: impl FnOnce(&mut Config)) -> TestServer {
    start_with(|c| {
        c.redis = Some(redis.url());
        c.message_rate = 0;
        c.max_logins_per_user = 0;
        c.metrics_public = true;
        tweak(c);
    })
}

/// The next JSON message within `timeout`, or `None` after that much
/// silence. A close or a socket error fails the test: in these tests no
/// client is ever meant to be disconnected by the server.
fn recv_within(client: &mut Client, timeout: Duration) -> Option<Value> {
    let timeout = timeout.max(Duration::from_millis(1));
    client
        .ws
        .get_ref()
        .set_read_timeout(Some(timeout))
        .expect("set read timeout");
    // Presence frames come through as join/leave news (see `Client`).
    let result = match client.next() {
        Event::Json(value) => Some(value),
        Event::Closed(frame) => panic!("the server closed the connection: {frame:?}"),
        Event::Error(e) if e.contains("temporarily unavailable") || e.contains("timed out") => None,
        Event::Error(e) => panic!("the connection failed: {e}"),
    };
    client
        .ws
        .get_ref()
        .set_read_timeout(Some(PATIENCE))
        .expect("set read timeout");
    result
}

/// Reads until a message matching `wanted` arrives (within [`PATIENCE`]);
/// returns the messages skipped before it and the match.
fn wait_for(
    client: &mut Client,
    what: &str,
    wanted: impl Fn(&Value) -> bool,
) -> (Vec<Value>, Value) {
    let deadline = Instant::now() + PATIENCE;
    let mut skipped = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match recv_within(client, left) {
            Some(value) if wanted(&value) => return (skipped, value),
            Some(value) => skipped.push(value),
            None => panic!("waited {PATIENCE:?} for {what}; got only {skipped:#?}"),
        }
    }
}

fn is_event(value: &Value, kind: &str, user: &str) -> bool {
    value["type"] == kind && value["user"] == user
}

/// Waits for `{"type":kind,"user":user}` and returns what came before it.
fn wait_event(client: &mut Client, kind: &str, user: &str) -> Vec<Value> {
    let (skipped, _) = wait_for(client, &format!("`{kind} {user}`"), |v| {
        is_event(v, kind, user)
    });
    skipped
}

/// The next `count` chat messages; presence events are skipped and any
/// `error` fails the test.
fn collect_messages(client: &mut Client, count: usize, who: &str) -> Vec<Value> {
    let mut messages = Vec::new();
    while messages.len() < count {
        let Some(value) = recv_within(client, PATIENCE) else {
            panic!(
                "{who}: silence after {} of {count} messages; last: {:?}",
                messages.len(),
                messages.last()
            );
        };
        match value["type"].as_str() {
            Some("message") => messages.push(value),
            Some("error") => panic!("{who}: unexpected error {value} after {messages:?}"),
            _ => {}
        }
    }
    messages
}

/// The message whose text is `text`, skipping others (kept in `log`, with
/// the match, when given). Any `error` fails the test.
fn wait_message(client: &mut Client, text: &str, log: &mut Vec<Value>) -> Value {
    let (skipped, found) = wait_for(client, &format!("the message {text:?}"), |v| {
        assert_ne!(
            v["type"], "error",
            "an error instead of (or before) the message {text:?}: {v}"
        );
        v["type"] == "message" && v["text"] == text
    });
    log.extend(skipped.into_iter().filter(|v| v["type"] == "message"));
    log.push(found.clone());
    found
}

/// What each client saw (senders first, then watchers) and the clients:
/// each sender runs `send` on a thread of its own, then reads, while the
/// watchers read, until each has seen `total` messages.
fn talk_and_watch(
    senders: [(Client, &'static str); 2],
    watchers: [(Client, &'static str); 2],
    total: usize,
    send: fn(&mut Client, &str),
) -> (Vec<(&'static str, Vec<Value>)>, Vec<Client>) {
    let senders = senders.map(|(mut client, who)| {
        std::thread::spawn(move || {
            send(&mut client, who);
            (who, collect_messages(&mut client, total, who), client)
        })
    });
    let watchers = watchers.map(|(mut client, who)| {
        std::thread::spawn(move || (who, collect_messages(&mut client, total, who), client))
    });
    let mut seen = Vec::new();
    let mut clients = Vec::new();
    for handle in senders.into_iter().chain(watchers) {
        let (who, messages, client) = handle.join().expect("client thread");
        seen.push((who, messages));
        clients.push(client);
    }
    (seen, clients)
}

fn seqs(messages: &[Value]) -> Vec<u64> {
    messages
        .iter()
        .map(|m| m["seq"].as_u64().unwrap_or_else(|| panic!("no seq: {m}")))
        .collect()
}

/// Seqs run 1, 2, 3, ... with no gap and no duplicate.
fn assert_gapless(who: &str, messages: &[Value]) {
    let seqs = seqs(messages);
    let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(
        seqs, expected,
        "{who}: seqs must start at 1 and rise by exactly 1; messages: {messages:#?}"
    );
}

/// `/healthz` answers `status` within [`PATIENCE`]; returns the response.
fn wait_health(addr: SocketAddr, status: u16, name: &str) -> RawResponse {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let response = get(addr, "/healthz");
        if response.status == status {
            return response;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: /healthz still {} {:?} after {PATIENCE:?}, expected {status}",
            response.status,
            response.text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One sample from `/metrics` (a series without labels).
fn metric(addr: SocketAddr, name: &str) -> Option<f64> {
    let response = get(addr, "/metrics");
    assert_eq!(response.status, 200, "/metrics: {}", response.text());
    response
        .text()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .find(|(series, _)| *series == name)
        .map(|(_, value)| {
            value
                .parse()
                .unwrap_or_else(|_| panic!("{name}: {value:?}"))
        })
}

fn required_metric(addr: SocketAddr, name: &str, server: &str) -> f64 {
    metric(addr, name).unwrap_or_else(|| {
        panic!(
            "{server}: no {name} in /metrics:\n{}",
            get(addr, "/metrics").text()
        )
    })
}

/// Connects `probe` to `server` until its welcome's `online` is
/// `expected` (presence travels between instances asynchronously);
/// returns that connection and its welcome.
fn wait_online(server: &TestServer, probe: &str, expected: &[&str], name: &str) -> (Client, Value) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (client, welcome) = server.connect(probe);
        if welcome["online"] == json!(expected) {
            return (client, welcome);
        }
        drop(client);
        assert!(
            Instant::now() < deadline,
            "{name}: welcome.online still {} after {PATIENCE:?}, expected {expected:?}",
            welcome["online"]
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A key without the `{` of a room's hash tag (`{P:room}:seq`).
fn unhashed(key: &str) -> &str {
    key.strip_prefix('{').unwrap_or(key)
}

fn history(welcome: &Value) -> Vec<Value> {
    welcome["history"]
        .as_array()
        .unwrap_or_else(|| panic!("welcome without a history array: {welcome}"))
        .clone()
}

// ---------------------------------------------------------------------------

#[test]
fn two_instances_agree_on_order_and_history() {
    let Some(redis) = redis_or_skip() else {
        return;
    };
    let one = instance(&redis, |_| {});
    let two = instance(&redis, |_| {});
    let (a, _) = one.connect("userA");
    let (b, _) = two.connect("userB");
    let (c1, _) = one.connect("userC");
    let (c2, _) = two.connect("userC");

    // userA (instance 1) and userB (instance 2) talk at once; everyone,
    // the senders included, must see all of it in one order.
    const PER_SENDER: usize = 30;
    const TOTAL: usize = 2 * PER_SENDER;
    let (seen, clients) = talk_and_watch(
        [(a, "userA@1"), (b, "userB@2")],
        [(c1, "userC@1"), (c2, "userC@2")],
        TOTAL,
        |client, who| {
            for i in 0..PER_SENDER {
                client.say(&format!("{who} says {i}"));
            }
        },
    );

    let (_, reference) = &seen[0];
    for (who, messages) in &seen {
        assert_gapless(who, messages);
        assert_eq!(
            messages, reference,
            "{who} and {} saw different messages",
            seen[0].0
        );
    }
    for m in reference {
        let from = m["from"].as_str().expect("from");
        let text = m["text"].as_str().expect("text");
        assert!(
            text.starts_with(&format!("{from}@")),
            "a message carries its sender: {m}"
        );
        assert!(
            m["ts"].as_u64().is_some_and(|ts| ts > 1_700_000_000_000),
            "ts: {m}"
        );
    }
    // Each sender's messages stay in the order it sent them.
    for who in ["userA@1", "userB@2"] {
        let texts: Vec<&str> = reference
            .iter()
            .filter_map(|m| m["text"].as_str())
            .filter(|t| t.starts_with(who))
            .collect();
        let sent: Vec<String> = (0..PER_SENDER).map(|i| format!("{who} says {i}")).collect();
        assert_eq!(texts, sent, "{who}'s messages, in the order they were sent");
    }

    // Newcomers on either instance, and on an instance started only now,
    // get the same conversation as history.
    let three = instance(&redis, |_| {});
    for (server, name) in [
        (&one, "instance 1"),
        (&two, "instance 2"),
        (&three, "instance 3 (new)"),
    ] {
        let (_client, welcome) = server.connect("userA");
        assert_eq!(
            &history(&welcome),
            reference,
            "{name}: welcome.history is the whole conversation, oldest first"
        );
    }
    // With --history 10, the last 10.
    let ten = instance(&redis, |c| c.history = 10);
    let (_client, welcome) = ten.connect("userB");
    assert_eq!(
        history(&welcome),
        reference[TOTAL - 10..],
        "history 10: the last 10 messages, oldest first"
    );
    drop(clients);
}

#[test]
fn presence_spans_instances() {
    let Some(redis) = redis_or_skip() else {
        return;
    };
    let one = instance(&redis, |_| {});
    let two = instance(&redis, |_| {});

    // userB on instance 2 hears of userA and userC joining on instance 1.
    let (mut b, welcome) = two.connect("userB");
    assert_eq!(welcome["online"], json!(["userB"]), "{welcome}");
    let (mut a, _) = one.connect("userA");
    let before = wait_event(&mut b, "join", "userA");
    assert!(before.is_empty(), "before `join userA`: {before:?}");
    let (mut c1, _) = one.connect("userC");
    let before = wait_event(&mut b, "join", "userC");
    assert!(before.is_empty(), "before `join userC`: {before:?}");

    // userC opens a second connection, on instance 2: the same presence,
    // no new join, and instance 2 (which announced both joins) lists all.
    let (c2, welcome) = two.connect("userC");
    assert_eq!(
        welcome["online"],
        json!(["userA", "userB", "userC"]),
        "instance 2 knows users on both instances: {welcome}"
    );

    // Closing userC's instance-1 connection is no leave: it is still
    // connected on instance 2.
    c1.ws.close(None).expect("close");
    let deadline = Instant::now() + PATIENCE;
    while required_metric(one.addr, "jwtchat_websocket_clients", "instance 1") > 1.0 {
        assert!(
            Instant::now() < deadline,
            "instance 1 still counts userC's closed connection after {PATIENCE:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Give a spurious leave more than a reconcile period (1 s) to show
    // up, between two markers.
    a.say("marker 1");
    let (mut during, _) = wait_for(&mut b, "the message \"marker 1\"", |v| {
        v["type"] == "message" && v["text"] == "marker 1"
    });
    let quiet_until = Instant::now() + Duration::from_millis(2500);
    while let Some(left) = quiet_until.checked_duration_since(Instant::now()) {
        during.extend(recv_within(&mut b, left));
    }
    a.say("marker 2");
    let (skipped, _) = wait_for(&mut b, "the message \"marker 2\"", |v| {
        v["type"] == "message" && v["text"] == "marker 2"
    });
    during.extend(skipped);
    assert!(
        !during.iter().any(|v| v["user"] == "userC"),
        "userC is still connected on instance 2: no leave (or join) for it, got {during:#?}"
    );

    // Its last connection closes: now userC leaves.
    drop(c2);
    let before = wait_event(&mut b, "leave", "userC");
    assert!(
        !before.iter().any(|v| v["user"] == "userC"),
        "one leave for userC: {before:?}"
    );

    // A later welcome on either instance lists everyone online anywhere.
    for (server, name) in [(&one, "instance 1"), (&two, "instance 2")] {
        drop(wait_online(
            server,
            "userC",
            &["userA", "userB", "userC"],
            name,
        ));
    }

    // userA leaves: userB, on the other instance, hears of it.
    a.ws.close(None).expect("close");
    let before = wait_event(&mut b, "leave", "userA");
    assert!(
        !before.iter().any(|v| v["user"] == "userA"),
        "nothing else about userA before its leave: {before:?}"
    );
    for (server, name) in [(&one, "instance 1"), (&two, "instance 2")] {
        drop(wait_online(server, "userC", &["userB", "userC"], name));
    }
}

#[test]
fn redis_outage_refuses_then_recovers_without_gaps() {
    let Some(mut redis) = redis_or_skip() else {
        return;
    };
    let one = instance(&redis, |_| {});
    let two = instance(&redis, |_| {});
    let servers = [(one.addr, "instance 1"), (two.addr, "instance 2")];
    let (mut a, _) = one.connect("userA");
    let (mut b, _) = two.connect("userB");
    // Every chat message each client receives, for the gapless check.
    let mut log_a = Vec::new();
    let mut log_b = Vec::new();

    for (i, text) in ["before 1", "before 2", "before 3"].into_iter().enumerate() {
        if i % 2 == 0 {
            a.say(text);
        } else {
            b.say(text);
        }
        wait_message(&mut a, text, &mut log_a);
        wait_message(&mut b, text, &mut log_b);
    }
    assert_gapless("userA before the outage", &log_a);
    assert_eq!(log_a, log_b, "both saw the same messages before the outage");
    for (addr, name) in servers {
        assert_eq!(
            required_metric(addr, "jwtchat_redis_up", name),
            1.0,
            "{name}: jwtchat_redis_up before the outage"
        );
    }

    redis.kill();

    // Each client sends until refused. Every send must end in its own
    // message or an `unavailable` error: never silently accepted and lost.
    let mut sent = [Vec::new(), Vec::new()];
    let mut errors = [0usize, 0usize];
    for (k, (client, log, who)) in [
        (&mut a, &mut log_a, "userA@1"),
        (&mut b, &mut log_b, "userB@2"),
    ]
    .into_iter()
    .enumerate()
    {
        let deadline = Instant::now() + PATIENCE;
        'sending: for i in 0.. {
            assert!(
                Instant::now() < deadline,
                "{who}: no `unavailable` error within {PATIENCE:?} of killing Redis; \
                 sent {:?}, received {log:#?}",
                sent[k]
            );
            let text = format!("{who} during the outage {i}");
            client.say(&text);
            sent[k].push(text.clone());
            // A reply normally comes at once; a little silence is allowed
            // (the send is then accounted for at the end).
            let quiet_until = Instant::now() + Duration::from_secs(2);
            while let Some(left) = quiet_until.checked_duration_since(Instant::now()) {
                let Some(value) = recv_within(client, left) else {
                    break;
                };
                match value["type"].as_str() {
                    Some("error") => {
                        assert_eq!(value["code"], "unavailable", "{who}: {value}");
                        assert!(
                            value["message"].as_str().is_some_and(|m| !m.is_empty()),
                            "{who}: error without a message: {value}"
                        );
                        errors[k] += 1;
                        break 'sending;
                    }
                    Some("message") => {
                        let own = value["text"] == text.as_str();
                        log.push(value);
                        if own {
                            break;
                        }
                    }
                    _ => {}
                }
            }
        }
        // Once refused, refused again.
        let text = format!("{who} refused again");
        client.say(&text);
        sent[k].push(text.clone());
        let (skipped, error) = wait_for(client, "a second `unavailable` error", |v| {
            v["type"] == "error"
        });
        assert_eq!(error["code"], "unavailable", "{who}: {error}");
        errors[k] += 1;
        log.extend(skipped.into_iter().filter(|v| v["type"] == "message"));
    }

    for (addr, name) in servers {
        let response = wait_health(addr, 503, name);
        let body = response.json();
        assert_eq!(body["error"], "unavailable", "{name}: /healthz body {body}");
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{name}: /healthz body {body}"
        );
        assert_eq!(
            required_metric(addr, "jwtchat_redis_up", name),
            0.0,
            "{name}: jwtchat_redis_up while Redis is down"
        );
    }

    redis.restart();

    for (addr, name) in servers {
        let response = wait_health(addr, 200, name);
        assert_eq!(response.text(), "ok", "{name}: /healthz after recovery");
    }
    // Accepted again on both instances, every time (more messages than an
    // instance keeps connections to Redis), and numbered right after the
    // last one delivered, although Redis came back empty.
    let last_before = seqs(&log_b).into_iter().max().unwrap_or(0);
    for i in 0..10 {
        let text = format!("after the outage {i}");
        // The sender first: a refusal comes to it alone.
        let (on_a, on_b) = if i % 2 == 0 {
            b.say(&text);
            let on_b = wait_message(&mut b, &text, &mut log_b);
            (wait_message(&mut a, &text, &mut log_a), on_b)
        } else {
            a.say(&text);
            let on_a = wait_message(&mut a, &text, &mut log_a);
            (on_a, wait_message(&mut b, &text, &mut log_b))
        };
        assert_eq!(on_a, on_b, "both instances deliver the same message");
        if i == 0 {
            assert_eq!(
                on_b["seq"],
                last_before + 1,
                "the first message after the outage continues the sequence: {on_b}"
            );
        }
    }

    assert_gapless("userA@1 over the whole run", &log_a);
    assert_gapless("userB@2 over the whole run", &log_b);
    assert_eq!(log_a, log_b, "both clients saw the same messages");
    // Nothing sent during the outage was both refused and delivered, or
    // neither.
    let texts: Vec<&str> = log_a.iter().filter_map(|m| m["text"].as_str()).collect();
    for k in 0..2 {
        let delivered = sent[k]
            .iter()
            .filter(|t| texts.contains(&t.as_str()))
            .count();
        assert_eq!(
            delivered + errors[k],
            sent[k].len(),
            "each send during the outage is delivered or refused, exactly one of the two: \
             sent {:?}, {} refused, delivered {texts:?}",
            sent[k],
            errors[k]
        );
    }
    let unique: HashSet<&str> = texts.iter().copied().collect();
    assert_eq!(
        unique.len(),
        texts.len(),
        "no message delivered twice: {texts:?}"
    );

    for (addr, name) in servers {
        assert_eq!(
            required_metric(addr, "jwtchat_redis_up", name),
            1.0,
            "{name}: redis_up"
        );
        let errors = required_metric(addr, "jwtchat_redis_errors_total", name);
        assert!(errors > 0.0, "{name}: jwtchat_redis_errors_total {errors}");
        let reconnects = required_metric(addr, "jwtchat_redis_reconnects_total", name);
        assert!(
            reconnects > 0.0,
            "{name}: jwtchat_redis_reconnects_total {reconnects}"
        );
        required_metric(addr, "jwtchat_redis_messages_missed_total", name);
    }
}

#[test]
fn a_killed_instance_leaves_the_room() {
    let Some(redis) = redis_or_skip() else {
        return;
    };
    let secret = std::str::from_utf8(SECRET).expect("an ASCII test secret");
    let mut binary = Binary::spawn(
        Command::new(BIN)
            .args(["--bind", "127.0.0.1:0", "--redis", &redis.url()])
            .env("JWTCHAT_SECRET", secret),
    );
    let binary_addr = binary.wait_listening();
    let two = instance(&redis, |_| {});

    let (mut b, _) = two.connect("userB");
    let (mut a, welcome) = TestServer::at(binary_addr).connect("userA");
    assert_eq!(welcome["user"], "userA");
    wait_event(&mut b, "join", "userA");
    // The default prefix names every key (a room's own keys put it in
    // their hash tag, `{jwtchat:general}:seq`).
    let keys = redis.keys();
    assert!(
        !keys.is_empty() && keys.iter().all(|k| unhashed(k).starts_with("jwtchat")),
        "every Redis key starts with the default prefix `jwtchat`: {keys:?}"
    );

    // While the binary lives, its heartbeat keeps userA online well past
    // the 5 s TTL.
    let alive_until = Instant::now() + Duration::from_secs(8);
    let mut during = Vec::new();
    let mut i = 0;
    while Instant::now() < alive_until {
        let text = format!("still here {i}");
        i += 1;
        a.say(&text);
        let (skipped, _) = wait_for(&mut b, &format!("the message {text:?}"), |v| {
            v["type"] == "message" && v["text"] == text.as_str()
        });
        during.extend(skipped);
        let pause_until = Instant::now() + Duration::from_secs(1);
        while let Some(left) = pause_until.checked_duration_since(Instant::now()) {
            during.extend(recv_within(&mut b, left));
        }
    }
    assert!(
        !during.iter().any(|v| is_event(v, "leave", "userA")),
        "userA left while its instance was alive: {during:#?}"
    );

    // SIGKILL: no cleanup. The other instance notices the missing
    // heartbeat and announces the leave.
    binary.child.kill().expect("kill the binary");
    binary.child.wait().expect("reap the binary");
    let killed_at = Instant::now();
    let deadline = killed_at + PATIENCE;
    let mut skipped = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match recv_within(&mut b, left) {
            Some(v) if is_event(&v, "leave", "userA") => break,
            Some(v) => skipped.push(v),
            None => {
                let stderr: Vec<String> = binary
                    .seen
                    .drain(..)
                    .chain(binary.lines.try_iter())
                    .collect();
                panic!(
                    "no `leave userA` on instance 2 within {PATIENCE:?} of killing userA's \
                     instance; got {skipped:#?}; the killed binary's stderr: {stderr:#?}"
                );
            }
        }
    }
    drop(a);
    let (_c, welcome) = two.connect("userC");
    assert_eq!(
        welcome["online"],
        json!(["userB", "userC"]),
        "the killed instance's user is gone: {welcome}"
    );
}

#[test]
fn rooms_with_different_prefixes_stay_apart() {
    let Some(redis) = redis_or_skip() else {
        return;
    };
    let one = instance(&redis, |c| c.redis_prefix = "roomone".into());
    let two = instance(&redis, |c| c.redis_prefix = "roomtwo".into());

    let (mut b, welcome) = two.connect("userB");
    assert_eq!(welcome["online"], json!(["userB"]));
    let (mut a, welcome) = one.connect("userA");
    assert_eq!(welcome["online"], json!(["userA"]), "room one: {welcome}");

    let mut log_a = Vec::new();
    let mut log_b = Vec::new();
    a.say("in room one");
    let m = wait_message(&mut a, "in room one", &mut log_a);
    assert_eq!(m["seq"], 1);
    // Sent after room one's message was delivered: had it reached room
    // two, it would come first.
    b.say("in room two");
    let (skipped, m) = wait_for(&mut b, "the message \"in room two\"", |v| {
        v["type"] == "message" && v["text"] == "in room two"
    });
    assert_eq!(m["seq"], 1, "room two has its own numbering: {m}");
    assert!(
        skipped.is_empty(),
        "room two heard nothing of room one: {skipped:#?}"
    );
    log_b.push(m);
    // Nor did room one hear room two; its own next message is seq 2.
    a.say("room one again");
    let (skipped, m) = wait_for(&mut a, "the message \"room one again\"", |v| {
        v["type"] == "message" && v["text"] == "room one again"
    });
    assert_eq!(m["seq"], 2, "{m}");
    assert!(
        skipped.is_empty(),
        "room one heard nothing of room two: {skipped:#?}"
    );
    log_a.push(m);

    // A newcomer on another instance of room two gets room two's history.
    let three = instance(&redis, |c| c.redis_prefix = "roomtwo".into());
    let (mut c, welcome) = three.connect("userC");
    assert_eq!(history(&welcome), log_b, "room two's history");
    // userB, on another instance, is in its welcome, or (if the new
    // instance had not read the others' presence yet) in the news after.
    if welcome["online"] != json!(["userB", "userC"]) {
        assert_eq!(welcome["online"], json!(["userC"]), "{welcome}");
        wait_event(&mut c, "join", "userB");
    }
    // The default prefix is a third, empty room.
    let default = instance(&redis, |_| {});
    let (_c, welcome) = default.connect("userC");
    assert_eq!(
        history(&welcome),
        Vec::<Value>::new(),
        "the default room: {welcome}"
    );
    assert_eq!(welcome["online"], json!(["userC"]), "{welcome}");

    let keys = redis.keys();
    for prefix in ["roomone", "roomtwo"] {
        assert!(
            keys.iter().any(|k| unhashed(k).starts_with(prefix)),
            "some key of {prefix}: {keys:?}"
        );
    }
    assert!(
        keys.iter().all(|k| ["roomone", "roomtwo", "jwtchat"]
            .iter()
            .any(|p| unhashed(k).starts_with(p))),
        "every key starts with its room's prefix: {keys:?}"
    );
}

// ---------------------------------------------------------------------------
// Regressions from review: data loss, idle connections, a forgotten instance.

/// Redis restarts empty while instance 1 has delivered seq 1..3, and a
/// brand-new instance's user is the first to speak afterwards: the message
/// must still be seq 4 and reach instance 1's clients. (The new instance
/// has seen nothing; only instance 1 knows where the sequence was.)
#[test]
fn a_new_instance_after_redis_lost_its_data_goes_on_from_the_last_seq() {
    let Some(mut redis) = redis_or_skip() else {
        return;
    };
    let one = instance(&redis, |_| {});
    let (mut a, _) = one.connect("userA");
    let mut seen = Vec::new();
    for i in 1..=3 {
        a.say(&format!("before {i}"));
        wait_message(&mut a, &format!("before {i}"), &mut seen);
    }
    redis.restart();
    // Instance 1 reconnects by itself; the new one starts on the empty
    // Redis meanwhile and must not number anything before instance 1 has
    // raised the counter.
    let fresh = instance(&redis, |_| {});
    wait_health(fresh.addr, 200, "new instance");
    let (mut c, welcome) = fresh.connect("userC");
    assert_eq!(
        history(&welcome),
        Vec::<Value>::new(),
        "Redis lost the history"
    );
    c.say("first after the loss");
    let on_fresh = wait_message(&mut c, "first after the loss", &mut Vec::new());
    let on_one = wait_message(&mut a, "first after the loss", &mut seen);
    assert_eq!(on_fresh["seq"], 4, "the sequence goes on: {on_fresh}");
    assert_eq!(on_one, on_fresh, "both instances deliver the same message");
    assert_gapless("instance 1", &seen);
}

/// Redis closes idle clients (`timeout`, as managed Redis services often
/// do): the publishing connections die quietly, and the next messages must
/// still be accepted, not refused with `unavailable`.
#[test]
fn connections_closed_while_idle_do_not_refuse_messages() {
    let Some(redis) = redis_or_skip() else {
        return;
    };
    let server = instance(&redis, |_| {});
    let (mut a, _) = server.connect("userA");
    let mut seen = Vec::new();
    // Use every pooled publishing connection once.
    for i in 1..=8 {
        a.say(&format!("warm {i}"));
        wait_message(&mut a, &format!("warm {i}"), &mut seen);
    }
    redis.command(&["CONFIG", "SET", "timeout", "1"]);
    // Redis checks idle clients about ten times a second.
    std::thread::sleep(Duration::from_millis(2500));
    for i in 1..=8 {
        a.say(&format!("after idle {i}"));
        wait_message(&mut a, &format!("after idle {i}"), &mut seen);
    }
    assert_gapless("userA", &seen);
}

/// Redis forgets a live instance (it stalled past its heartbeat, or its
/// keys were evicted): on its next heartbeat it notices and writes its
/// users again, so they are not left offline for good, on the instances
/// that were there and on ones that start later. (A heartbeat merely
/// re-registering the instance would leave its user set missing.)
#[test]
fn a_forgotten_instance_announces_its_users_again() {
    let Some(redis) = redis_or_skip() else {
        return;
    };
    let one = instance(&redis, |_| {});
    let two = instance(&redis, |_| {});
    let (mut b, _) = two.connect("userB");
    let (_a, _) = one.connect("userA");
    wait_event(&mut b, "join", "userA");
    // What a stall or an eviction leaves behind: no trace of instance 1.
    let online: Vec<String> = redis
        .keys()
        .into_iter()
        .filter(|k| k.starts_with("jwtchat:online:") || k.starts_with("jwtchat:version:"))
        .collect();
    assert!(!online.is_empty(), "instances keep their users in Redis");
    for key in &online {
        redis.command(&["DEL", key]);
    }
    redis.command(&["DEL", "jwtchat:instances"]);
    let three = instance(&redis, |_| {});
    let everyone = ["userA", "userB", "userC"];
    wait_online(&three, "userC", &everyone, "an instance started afterwards");
    wait_online(&two, "userC", &everyone, "the instance that was there");
}

// ---------------------------------------------------------------------------
// Rooms across instances (#15): every room spans the instances, with its
// own `seq`, history and presence.

/// Open room `ops` for everyone, on an instance of `redis`.
fn with_ops(redis: &RedisServer) -> TestServer {
    instance(redis, |c| c.open_rooms = vec!["ops".into()])
}

/// Sends `{"type":"subscribe","room":room}` and returns the `subscribed`
/// answer (an `error` fails the test), skipping presence news.
fn subscribe(client: &mut Client, room: &str) -> Value {
    client.send_json(&json!({ "type": "subscribe", "room": room }));
    let answer = client.recv_type_of(&["subscribed", "error"]);
    assert_eq!(
        answer["type"], "subscribed",
        "subscribing to {room}: {answer}"
    );
    assert_eq!(answer["room"], room, "{answer}");
    answer
}

fn say_in(client: &mut Client, room: &str, text: &str) {
    client.send_json(&json!({ "type": "message", "room": room, "text": text }));
}

/// The messages of `room` among `messages`, in the order they came.
fn in_room(messages: &[Value], room: &str) -> Vec<Value> {
    messages
        .iter()
        .filter(|m| m["room"] == room)
        .cloned()
        .collect()
}

fn texts(messages: &[Value]) -> Vec<&str> {
    messages.iter().filter_map(|m| m["text"].as_str()).collect()
}

/// Waits for `{"type":kind,"room":room,"user":user}` (a `presence` frame
/// counts too); returns what came before it.
fn wait_news(client: &mut Client, kind: &str, room: &str, user: &str) -> Vec<Value> {
    let (skipped, _) = wait_for(client, &format!("`{kind} {user}` in {room}"), |v| {
        is_event(v, kind, user) && v["room"] == room
    });
    skipped
}

#[test]
fn each_room_has_one_order_across_instances() {
    let Some(redis) = redis_or_skip() else {
        return;
    };
    let one = with_ops(&redis);
    let two = with_ops(&redis);
    let (mut a, _) = one.connect("userA");
    let (mut b, _) = two.connect("userB");
    let (mut c1, _) = one.connect("userC");
    let (mut c2, _) = two.connect("userC");
    for client in [&mut a, &mut b, &mut c1, &mut c2] {
        let subscribed = subscribe(client, "ops");
        assert_eq!(subscribed["last_seq"], 0, "{subscribed}");
    }

    // userA (instance 1) and userB (instance 2) talk in ops and in general
    // at once, interleaved; every member sees both rooms.
    const PER_ROOM: usize = 20;
    const TOTAL: usize = 2 * 2 * PER_ROOM;
    let (seen, clients) = talk_and_watch(
        [(a, "userA@1"), (b, "userB@2")],
        [(c1, "userC@1"), (c2, "userC@2")],
        TOTAL,
        |client, who| {
            for i in 0..PER_ROOM {
                say_in(client, "ops", &format!("{who} in ops {i}"));
                client.say(&format!("{who} in general {i}"));
            }
        },
    );

    for room in ["ops", "general"] {
        let reference = in_room(&seen[0].1, room);
        assert_eq!(reference.len(), 2 * PER_ROOM, "{room}: {reference:#?}");
        for (who, messages) in &seen {
            let mine = in_room(messages, room);
            // Each room numbers its own: general's seq is not ops's.
            assert_gapless(&format!("{who} in {room}"), &mine);
            assert_eq!(
                mine, reference,
                "{who} and {} saw {room} differently",
                seen[0].0
            );
        }
        for m in &reference {
            assert!(
                m["text"]
                    .as_str()
                    .is_some_and(|t| t.contains(&format!(" in {room} "))),
                "only {room}'s messages in {room}: {m}"
            );
        }
        for who in ["userA@1", "userB@2"] {
            let sent: Vec<String> = (0..PER_ROOM)
                .map(|i| format!("{who} in {room} {i}"))
                .collect();
            let got: Vec<&str> = texts(&reference)
                .into_iter()
                .filter(|t| t.starts_with(who))
                .collect();
            assert_eq!(got, sent, "{who}'s messages in {room}, in the order sent");
        }
    }
    drop(clients);
}

#[test]
fn a_direct_message_crosses_instances() {
    let Some(redis) = redis_or_skip() else {
        return;
    };
    let one = instance(&redis, |_| {});
    let two = instance(&redis, |_| {});
    let (mut a, _) = one.connect("userA");
    let (mut b, _) = two.connect("userB");
    let dm = "dm:userA:userB";

    // Both subscribed: userA's message on instance 1 reaches userB on 2.
    assert_eq!(subscribe(&mut b, dm)["history"], json!([]));
    say_in(&mut a, dm, "psst");
    let on_b = wait_message(&mut b, "psst", &mut Vec::new());
    assert_eq!(
        (&on_b["room"], &on_b["seq"], &on_b["from"]),
        (&json!(dm), &json!(1), &json!("userA")),
        "{on_b}"
    );
    let on_a = wait_message(&mut a, "psst", &mut Vec::new());
    assert_eq!(
        on_a, on_b,
        "the sender sees its message as the recipient does"
    );
    say_in(&mut b, dm, "what?");
    let reply = wait_message(&mut a, "what?", &mut Vec::new());
    assert_eq!((&reply["room"], &reply["seq"]), (&json!(dm), &json!(2)));

    // userC is not connected anywhere yet: it finds userA's message in the
    // room's history when it subscribes later, on the other instance.
    let dm_c = "dm:userA:userC";
    say_in(&mut a, dm_c, "call me");
    let sent = wait_message(&mut a, "call me", &mut Vec::new());
    assert_eq!((&sent["room"], &sent["seq"]), (&json!(dm_c), &json!(1)));
    let (mut c, welcome) = two.connect("userC");
    assert_eq!(
        history(&welcome),
        Vec::<Value>::new(),
        "direct messages stay out of general: {welcome}"
    );
    let subscribed = subscribe(&mut c, dm_c);
    assert_eq!(subscribed["history"], json!([sent]), "{subscribed}");
    assert_eq!(subscribed["last_seq"], 1, "{subscribed}");
    say_in(&mut c, dm_c, "calling");
    let answer = wait_message(&mut a, "calling", &mut Vec::new());
    assert_eq!((&answer["room"], &answer["seq"]), (&json!(dm_c), &json!(2)));
    // userB, in neither conversation with userC, heard none of it.
    say_in(&mut a, dm, "still there?");
    let (between, _) = wait_for(&mut b, "the message \"still there?\"", |v| {
        v["type"] == "message" && v["text"] == "still there?"
    });
    assert!(
        !between.iter().any(|v| v["room"] == dm_c),
        "userB got userA and userC's messages: {between:#?}"
    );

    // A first DM reaches the recipient live on every instance, opened or
    // not: userC's connections on instance 1 (the other instance) and on
    // instance 2 (userB's own) are brought into the room, then get it.
    let (mut c_on_one, _) = one.connect("userC");
    let dm_bc = "dm:userB:userC";
    say_in(&mut b, dm_bc, "hey C");
    for (client, who) in [(&mut c_on_one, "userC@1"), (&mut c, "userC@2")] {
        let (_, subscribed) = wait_for(client, &format!("{who}: subscribed to {dm_bc}"), |v| {
            v["type"] == "subscribed" && v["room"] == dm_bc
        });
        assert_eq!(subscribed["history"], json!([]), "{who}: {subscribed}");
        let m = wait_message(client, "hey C", &mut Vec::new());
        assert_eq!((&m["room"], &m["seq"]), (&json!(dm_bc), &json!(1)), "{who}");
    }
}

#[test]
fn a_new_instance_gets_each_rooms_history_and_last_seq() {
    let Some(redis) = redis_or_skip() else {
        return;
    };
    let one = with_ops(&redis);
    let two = with_ops(&redis);
    let (mut a, _) = one.connect("userA");
    let (mut b, _) = two.connect("userB");
    subscribe(&mut a, "ops");
    subscribe(&mut b, "ops");
    for i in 0..6 {
        let sender = if i % 2 == 0 { &mut a } else { &mut b };
        say_in(sender, "ops", &format!("ops {i}"));
        if i % 2 == 0 {
            a.say(&format!("general {i}"));
        }
    }
    let seen = collect_messages(&mut a, 9, "userA@1");
    let (ops, general) = (in_room(&seen, "ops"), in_room(&seen, "general"));
    assert_gapless("ops", &ops);
    assert_gapless("general", &general);

    // Started after it all: the history of each room comes from Redis.
    let three = with_ops(&redis);
    let (mut c, welcome) = three.connect("userC");
    assert_eq!(
        history(&welcome),
        general,
        "general's history on instance 3"
    );
    let subscribed = subscribe(&mut c, "ops");
    assert_eq!(
        subscribed["history"],
        json!(ops),
        "ops's history on instance 3"
    );
    assert_eq!(subscribed["last_seq"], 6, "{subscribed}");
    // And it goes on from there, on every instance.
    say_in(&mut c, "ops", "from three");
    let on_a = wait_message(&mut a, "from three", &mut Vec::new());
    let on_c = wait_message(&mut c, "from three", &mut Vec::new());
    assert_eq!(on_a["seq"], 7, "{on_a}");
    assert_eq!(on_a, on_c);
    // An instance with --history 2 gives the last 2.
    let short = instance(&redis, |c| {
        c.open_rooms = vec!["ops".into()];
        c.history = 2;
    });
    let (mut d, _) = short.connect("userC");
    let subscribed = subscribe(&mut d, "ops");
    assert_eq!(
        subscribed["history"],
        json!([ops[5], on_a]),
        "--history 2: the last two of ops"
    );
    assert_eq!(subscribed["last_seq"], 7, "{subscribed}");
}

#[test]
fn presence_in_a_room_spans_instances() {
    let Some(redis) = redis_or_skip() else {
        return;
    };
    let one = with_ops(&redis);
    let two = with_ops(&redis);
    // On instance 2: userB in ops, userC in general only.
    let (mut b, _) = two.connect("userB");
    subscribe(&mut b, "ops");
    let (mut c, _) = two.connect("userC");
    let (mut a, _) = one.connect("userA");
    wait_news(&mut b, "join", "general", "userA");
    wait_news(&mut c, "join", "general", "userA");
    // Instance 1 hears of userB in ops within milliseconds (the presence
    // stream), at worst with the next snapshot (1 s).
    std::thread::sleep(Duration::from_millis(1500));

    // ops is new on instance 1, and starts with who is in it elsewhere.
    let subscribed = subscribe(&mut a, "ops");
    assert_eq!(
        subscribed["online"],
        json!(["userA", "userB"]),
        "{subscribed}"
    );
    assert_eq!(subscribed["online_count"], 2, "{subscribed}");
    let before = wait_news(&mut b, "join", "ops", "userA");
    assert!(
        !before.iter().any(|v| v["room"] == "ops"),
        "one join in ops: {before:#?}"
    );

    // userA leaves ops (and stays in general).
    a.send_json(&json!({ "type": "unsubscribe", "room": "ops" }));
    a.recv_type("unsubscribed");
    wait_news(&mut b, "leave", "ops", "userA");

    // userB leaves ops: userA, back in it on instance 1, hears of it.
    let subscribed = subscribe(&mut a, "ops");
    assert_eq!(
        subscribed["online"],
        json!(["userA", "userB"]),
        "{subscribed}"
    );
    wait_news(&mut b, "join", "ops", "userA");
    b.send_json(&json!({ "type": "unsubscribe", "room": "ops" }));
    b.recv_type("unsubscribed");
    let before = wait_news(&mut a, "leave", "ops", "userB");
    assert!(
        !before.iter().any(|v| v["user"] == "userB"),
        "nothing else about userB before it left ops: {before:#?}"
    );

    // userC, in general only, heard nothing of ops, and userA never left
    // general.
    a.say("marker");
    let (before, _) = wait_for(&mut c, "the message \"marker\"", |v| {
        v["type"] == "message" && v["text"] == "marker"
    });
    assert!(
        before.iter().all(|v| v["room"] == "general")
            && !before.iter().any(|v| is_event(v, "leave", "userA")),
        "userC (general only) heard of ops: {before:#?}"
    );
}

/// Instance 1 alone loses Redis (its ACL user is switched off and its
/// connections killed; instance 2 logs in as another user and chats on),
/// and a room is made there meanwhile. Once Redis lets it back in, the
/// room gets its history, and its member there gets what was said in it
/// meanwhile live, with its own `seq`.
#[test]
fn a_room_made_while_redis_was_away_catches_up() {
    let Some(redis) = redis_or_skip() else {
        return;
    };
    let admin = Some(("other", "other-secret"));
    let created = redis.command(&[
        "ACL",
        "SETUSER",
        "other",
        "on",
        ">other-secret",
        "~*",
        "&*",
        "+@all",
    ]);
    assert_eq!(created, redis_server::Reply::Status("OK".into()));
    let one = with_ops(&redis);
    let two = instance(&redis, |c| {
        c.open_rooms = vec!["ops".into()];
        c.redis = Some(redis.url_as("other", "other-secret"));
    });
    let (mut b, _) = two.connect("userB");
    subscribe(&mut b, "ops");
    say_in(&mut b, "ops", "before");
    let before = wait_message(&mut b, "before", &mut Vec::new());
    let (mut a, _) = one.connect("userA");

    redis.command_as(admin, &["ACL", "SETUSER", "default", "off"]);
    redis.command_as(admin, &["CLIENT", "KILL", "USER", "default"]);
    wait_health(one.addr, 503, "instance 1, locked out");
    let subscribed = subscribe(&mut a, "ops");
    assert_eq!(subscribed["history"], json!([]), "{subscribed}");
    assert_eq!(subscribed["last_seq"], 0, "{subscribed}");
    say_in(&mut b, "ops", "meanwhile");
    let meanwhile = wait_message(&mut b, "meanwhile", &mut Vec::new());
    assert_eq!(meanwhile["seq"], 2, "{meanwhile}");

    redis.command_as(admin, &["ACL", "SETUSER", "default", "on"]);
    wait_health(one.addr, 200, "instance 1, let back in");
    let live = wait_message(&mut a, "meanwhile", &mut Vec::new());
    assert_eq!(
        live, meanwhile,
        "said while instance 1 was away, delivered live"
    );
    let (mut c, _) = one.connect("userC");
    let subscribed = subscribe(&mut c, "ops");
    assert_eq!(
        subscribed["history"],
        json!([before, meanwhile]),
        "{subscribed}"
    );
    assert_eq!(subscribed["last_seq"], 2, "{subscribed}");
}

/// Reads every chat `message` until the connection ends (its instance was
/// killed): what the client saw before it lost it.
fn messages_until_the_end(client: &mut Client) -> Vec<Value> {
    let mut seen = Vec::new();
    loop {
        match client.next() {
            Event::Json(v) if v["type"] == "message" => seen.push(v),
            Event::Json(_) => {}
            Event::Closed(_) | Event::Error(_) => return seen,
        }
    }
}

#[test]
fn clients_of_a_killed_instance_recover_everything_on_another() {
    let Some(redis) = redis_or_skip() else {
        return;
    };
    let secret = std::str::from_utf8(SECRET).expect("an ASCII test secret");
    let mut binary = Binary::spawn(
        Command::new(BIN)
            .args(["--bind", "127.0.0.1:0", "--redis", &redis.url()])
            .args(["--message-rate", "0"])
            .env("JWTCHAT_SECRET", secret),
    );
    let one = TestServer::at(binary.wait_listening());
    let two = instance(&redis, |c| c.message_rate = 0);
    let (mut sender, _) = two.connect("userB");
    sender.say("before");
    let mut on_one: Vec<(Client, &str)> = ["userA", "userC"]
        .into_iter()
        .map(|user| (one.connect(user).0, user))
        .collect();

    // userB on instance 2 keeps talking; instance 1 dies in the middle.
    const TOTAL: usize = 300;
    let talking = std::thread::spawn(move || {
        for i in 0..TOTAL {
            sender.say(&format!("m{i}"));
            std::thread::sleep(Duration::from_millis(3));
        }
        sender
    });
    std::thread::sleep(Duration::from_millis(300));
    binary.child.kill().expect("kill instance 1");
    binary.child.wait().expect("reap instance 1");
    let mut sender = talking.join().expect("the sender");
    sender.say("after");
    let last = loop {
        let m = sender.recv_type("message");
        if m["text"] == "after" {
            break m;
        }
    };
    let last_seq = last["seq"].as_u64().unwrap();

    for (client, user) in on_one.iter_mut() {
        let before = messages_until_the_end(client);
        let seen = before.last().expect("some messages before the kill");
        let (epoch, seq) = (
            seen["epoch"].as_str().unwrap(),
            seen["seq"].as_u64().unwrap(),
        );
        assert!(seq < last_seq, "{user} was cut off before the end");
        // Back, on instance 2, from where it was.
        let token = two.token(user);
        let mut back = two
            .connect_token(&format!("{token}&since=general:{epoch}:{seq}"))
            .expect("upgrade on instance 2");
        let welcome = back.recv();
        assert_eq!(welcome["recovered"], true, "{user}: {welcome}");
        let missed = welcome["missed"].as_array().unwrap();
        let mut all: Vec<u64> = before.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
        all.extend(missed.iter().map(|m| m["seq"].as_u64().unwrap()));
        // 0 lost, 0 duplicated: every seq once, to the last.
        assert_eq!(all, (all[0]..=last_seq).collect::<Vec<_>>(), "{user}");
        assert_eq!(missed.last().unwrap()["text"], "after");
    }
}
