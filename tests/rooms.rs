//! Rooms and direct messages, through real sockets: who gets what, per-room
//! `seq`, access by token, DMs, `reauth` narrowing the rooms, the limits.

mod support;

use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};
use support::*;

/// Sends `{"type":"subscribe","room":room}` and returns the answer
/// (`subscribed` or `error`), skipping presence news.
fn subscribe(client: &mut Client, room: &str) -> Value {
    client.send_json(&json!({ "type": "subscribe", "room": room }));
    client.recv_type_of(&["subscribed", "error"])
}

fn say_in(client: &mut Client, room: &str, text: &str) {
    client.send_json(&json!({ "type": "message", "room": room, "text": text }));
}

/// The next chat message, with its room, `seq`, sender and text.
fn next_message(client: &mut Client) -> (String, u64, String, String) {
    let m = client.recv_type("message");
    (
        m["room"].as_str().unwrap().to_string(),
        m["seq"].as_u64().unwrap(),
        m["from"].as_str().unwrap().to_string(),
        m["text"].as_str().unwrap().to_string(),
    )
}

fn msg(room: &str, seq: u64, from: &str, text: &str) -> (String, u64, String, String) {
    (room.into(), seq, from.into(), text.into())
}

#[test]
fn two_rooms_keep_their_messages_seq_and_presence_apart() {
    let server = start_with(|c| c.open_rooms = vec!["ops".into()]);
    let (mut a, welcome) = server.connect("userA");
    assert_eq!(welcome["room"], "general");
    // Open rooms, then the demo users' grants.
    assert_eq!(
        welcome["rooms"],
        json!(["general", "ops", "random", "team-*"])
    );
    let (mut b, _) = server.connect("userB");
    let (mut c, _) = server.connect("userC");
    let subscribed = subscribe(&mut a, "ops");
    assert_eq!(subscribed["room"], "ops");
    assert_eq!(subscribed["online"], json!(["userA"]));
    assert_eq!(subscribed["online_count"], 1);
    assert_eq!(subscribed["history"], json!([]));
    assert_eq!(subscribed["last_seq"], 0);
    // A newcomer's list is what the others were last told, itself included.
    server.settle_presence();
    let subscribed = subscribe(&mut b, "ops");
    assert_eq!(subscribed["online"], json!(["userA", "userB"]));
    server.settle_presence();
    assert_eq!(
        a.recv_type("join"),
        json!({ "type": "join", "room": "ops", "user": "userB" })
    );

    // Each room numbers its own messages; only its members get them.
    say_in(&mut a, "ops", "deploying");
    a.say("lunch?");
    for member in [&mut a, &mut b] {
        assert_eq!(next_message(member), msg("ops", 1, "userA", "deploying"));
        assert_eq!(next_message(member), msg("general", 1, "userA", "lunch?"));
    }
    say_in(&mut b, "ops", "go ahead");
    for member in [&mut a, &mut b] {
        assert_eq!(next_message(member), msg("ops", 2, "userB", "go ahead"));
    }
    c.say("yes");
    assert_eq!(next_message(&mut c), msg("general", 1, "userA", "lunch?"));
    assert_eq!(
        next_message(&mut c),
        msg("general", 2, "userC", "yes"),
        "userC, not in ops, got none of its messages"
    );

    // Leaving is per room: B stays in general.
    b.send_json(&json!({ "type": "unsubscribe", "room": "ops" }));
    assert_eq!(
        b.recv_type("unsubscribed"),
        json!({ "type": "unsubscribed", "room": "ops" })
    );
    server.settle_presence();
    assert_eq!(
        a.recv_type("leave"),
        json!({ "type": "leave", "room": "ops", "user": "userB" })
    );
    say_in(&mut a, "ops", "done");
    a.say("back");
    // (userC's "yes" went by while B waited for `unsubscribed`.)
    assert_eq!(
        next_message(&mut b),
        msg("general", 3, "userA", "back"),
        "not ops's \"done\", sent just before"
    );
    // A newcomer's subscribed carries the room's own history and last seq.
    let (mut c2, _) = server.connect("userC");
    let subscribed = subscribe(&mut c2, "ops");
    let seqs: Vec<u64> = subscribed["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            assert_eq!(m["room"], "ops");
            m["seq"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(seqs, [1, 2, 3]);
    assert_eq!(subscribed["last_seq"], 3);
}

#[test]
fn per_room_seq_has_no_gaps_under_concurrent_senders() {
    let server = start_with(|c| {
        c.open_rooms = vec!["ops".into()];
        c.message_rate = 0;
    });
    let (mut watcher, _) = server.connect("userC");
    subscribe(&mut watcher, "ops");
    let senders: Vec<_> = ["userA", "userB"]
        .into_iter()
        .map(|user| {
            let (mut client, _) = server.connect(user);
            subscribe(&mut client, "ops");
            std::thread::spawn(move || {
                for i in 0..50 {
                    let room = if i % 2 == 0 { "ops" } else { "general" };
                    say_in(&mut client, room, &format!("{user} {i}"));
                }
                client
            })
        })
        .collect();
    let mut next = std::collections::HashMap::from([("ops", 1), ("general", 1)]);
    for _ in 0..100 {
        let (room, seq, _, _) = next_message(&mut watcher);
        let expected = next.get_mut(room.as_str()).unwrap();
        assert_eq!(seq, *expected, "{room}: no gap, no repeat");
        *expected += 1;
    }
    assert_eq!(next, [("ops", 51), ("general", 51)].into());
    for sender in senders {
        sender.join().unwrap();
    }
}

#[test]
fn access_follows_the_claim_and_a_refusal_does_not_say_whether_the_room_exists() {
    let server = start();
    let (mut a, _) = server.connect("userA");
    // Someone whose token grants `lab` makes it.
    let mut dave = server
        .connect_token(&mint(&json!({
            "sub": "9", "username": "dave", "iat": now_secs(), "exp": now_secs() + 600,
            "iss": "jwtchat", "rooms": ["lab"],
        })))
        .unwrap();
    assert_eq!(dave.recv()["rooms"], json!(["general", "lab"]));
    assert_eq!(subscribe(&mut dave, "lab")["type"], "subscribed");

    let existing = subscribe(&mut a, "lab");
    let missing = subscribe(&mut a, "lab2");
    assert_eq!(existing["code"], "forbidden");
    assert_eq!(existing["room"], "lab");
    assert_eq!(missing["room"], "lab2");
    assert_eq!(existing["message"], missing["message"], "the same answer");
    // The demo grants: `random`, and any room named `team-...`.
    assert_eq!(subscribe(&mut a, "random")["type"], "subscribed");
    assert_eq!(subscribe(&mut a, "team-red")["type"], "subscribed");
    assert_eq!(subscribe(&mut a, "team")["code"], "forbidden");

    // Names that are no room names.
    for bad in ["Ops", "has space", "dm:userB:userA", "dm:x", ""] {
        let refused = subscribe(&mut a, bad);
        assert_eq!(refused["code"], "bad_room", "{bad}: {refused}");
    }
    let refused = subscribe(&mut a, "dm:userB:userA");
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("dm:userA:userB"),
        "{refused}"
    );
    a.send_json(&json!({ "type": "message", "room": 7, "text": "hi", "id": "m1" }));
    let refused = a.recv_type("error");
    assert_eq!(
        (&refused["code"], &refused["id"]),
        (&json!("bad_room"), &json!("m1"))
    );
    // A room it may join but has not: subscribe first.
    a.send_json(&json!({ "type": "message", "room": "team-blue", "text": "hi", "id": "m2" }));
    let refused = a.recv_type("error");
    assert_eq!(
        (&refused["code"], &refused["room"], &refused["id"]),
        (&json!("not_subscribed"), &json!("team-blue"), &json!("m2"))
    );
    // Still connected and chatting.
    a.say("still here");
    assert_eq!(next_message(&mut a).3, "still here");
}

#[test]
fn a_dm_is_for_its_two_users_and_waits_for_the_one_offline() {
    let server = start();
    let (mut a, _) = server.connect("userA");
    let (mut c, _) = server.connect("userC");
    // userB is offline. The first message subscribes the sender.
    a.send_json(&json!({
        "type": "message", "room": "dm:userA:userB", "text": "call me", "id": "d1",
    }));
    let subscribed = a.recv_type("subscribed");
    assert_eq!(subscribed["room"], "dm:userA:userB");
    let sent = a.recv_type("message");
    assert_eq!(
        (&sent["room"], &sent["seq"]),
        (&json!("dm:userA:userB"), &json!(1))
    );
    assert_eq!(sent["id"], "d1");

    // A third user can neither join nor write.
    assert_eq!(subscribe(&mut c, "dm:userA:userB")["code"], "forbidden");
    say_in(&mut c, "dm:userA:userB", "hi both");
    let refused = c.recv_type("error");
    assert_eq!(refused["code"], "forbidden");
    assert_eq!(refused["room"], "dm:userA:userB");
    c.say("only in general");
    assert_eq!(
        next_message(&mut a),
        msg("general", 1, "userC", "only in general")
    );

    // userB comes online: the DM's history has the message.
    let (mut b, welcome) = server.connect("userB");
    assert!(
        welcome["history"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["room"] == "general"),
        "the DM is not in general's history"
    );
    let subscribed = subscribe(&mut b, "dm:userA:userB");
    assert_eq!(subscribed["history"][0]["text"], "call me");
    assert_eq!(subscribed["history"][0]["from"], "userA");
    assert_eq!(subscribed["online"], json!(["userA", "userB"]));
    say_in(&mut b, "dm:userA:userB", "calling");
    assert_eq!(
        next_message(&mut a),
        msg("dm:userA:userB", 2, "userB", "calling")
    );

    // To someone online who has not opened the conversation: every one of
    // their connections is brought into it, and sees the message live.
    let (mut c2, _) = server.connect("userC");
    say_in(&mut a, "dm:userA:userC", "psst");
    for tab in [&mut c, &mut c2] {
        let subscribed = tab.recv_type("subscribed");
        assert_eq!(subscribed["room"], "dm:userA:userC");
        assert_eq!(subscribed["history"], json!([]), "the message comes live");
        assert_eq!(next_message(tab), msg("dm:userA:userC", 1, "userA", "psst"));
    }
    // Leaving it is allowed; the next DM brings the connection back.
    c.send_json(&json!({ "type": "unsubscribe", "room": "dm:userA:userC" }));
    c.recv_type("unsubscribed");
    say_in(&mut a, "dm:userA:userC", "still there?");
    assert_eq!(c.recv_type("subscribed")["history"][0]["text"], "psst");
    assert_eq!(next_message(&mut c).3, "still there?");
}

/// The claims inside a token (its middle part).
fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

#[test]
fn a_reauth_that_narrows_the_claim_takes_the_room_away() {
    let users = TempFile::users(
        "rooms-reauth",
        json!([{
            "id": "1", "username": "ann", "password_hash": jwtchat::hash_password("pw"),
            "rooms": ["team-*", "lab"],
        }]),
    );
    let server = start_with(|c| c.users_file = Some(users.path().into()));
    let login = post_json(
        server.addr,
        "/auth",
        r#"{"username":"ann","password":"pw"}"#,
    );
    let token = login.json()["token"].as_str().unwrap().to_string();
    let mut claims = claims_of(&token);
    assert_eq!(
        claims["rooms"],
        json!(["team-*", "lab"]),
        "from the users file"
    );
    let mut ann = server.connect_token(&token).unwrap();
    assert_eq!(ann.recv()["rooms"], json!(["general", "team-*", "lab"]));
    assert_eq!(subscribe(&mut ann, "team-x")["type"], "subscribed");
    assert_eq!(subscribe(&mut ann, "lab")["type"], "subscribed");

    // A renewed token (same user and password) that grants `lab` only.
    claims["rooms"] = json!(["lab"]);
    claims["exp"] = json!(now_secs() + 900);
    ann.send_json(&json!({ "type": "reauth", "token": mint(&claims) }));
    assert_eq!(ann.recv_type("reauthed")["expires_at"], claims["exp"]);
    assert_eq!(
        ann.recv_type("unsubscribed"),
        json!({ "type": "unsubscribed", "room": "team-x", "reason": "forbidden" })
    );
    say_in(&mut ann, "team-x", "hello?");
    assert_eq!(ann.recv_type("error")["code"], "not_subscribed");
    assert_eq!(subscribe(&mut ann, "team-x")["code"], "forbidden");
    say_in(&mut ann, "lab", "still mine");
    assert_eq!(next_message(&mut ann), msg("lab", 1, "ann", "still mine"));
}

#[test]
fn room_limits_answer_too_many_rooms() {
    let server = start_with(|c| {
        c.max_rooms_per_connection = 3;
        c.max_rooms = 3;
    });
    let (mut a, _) = server.connect("userA");
    let (mut b, _) = server.connect("userB");
    assert_eq!(subscribe(&mut a, "team-1")["type"], "subscribed");
    assert_eq!(subscribe(&mut a, "team-2")["type"], "subscribed");
    assert_eq!(server.metric("jwtchat_rooms"), 3);
    // Per connection: general and two more.
    let refused = subscribe(&mut a, "random");
    assert_eq!(refused["code"], "too_many_rooms");
    assert_eq!(refused["room"], "random");
    // Per server: no fourth room, but joining one that exists is fine.
    assert_eq!(subscribe(&mut b, "team-3")["code"], "too_many_rooms");
    assert_eq!(subscribe(&mut b, "team-1")["type"], "subscribed");
    // An empty room without history is freed, and makes way.
    a.send_json(&json!({ "type": "unsubscribe", "room": "team-2" }));
    a.recv_type("unsubscribed");
    assert_eq!(server.metric("jwtchat_rooms"), 2);
    assert_eq!(subscribe(&mut b, "team-3")["type"], "subscribed");
    // Subscriptions per connection: a in 2 rooms, b in 3.
    assert_eq!(
        server.metric("jwtchat_subscriptions_per_connection_bucket{le=\"2\"}"),
        1
    );
    assert_eq!(
        server.metric("jwtchat_subscriptions_per_connection_bucket{le=\"4\"}"),
        2
    );
    assert_eq!(server.metric("jwtchat_subscriptions_per_connection_sum"), 5);
}

/// Waits (for the sweeper thread's next round) until `check` holds.
fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !check() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_room_nobody_has_been_in_for_the_idle_ttl_is_freed_with_its_history() {
    let (server, clock) = start_on_clock(|c| {
        c.room_idle_ttl_secs = 600;
        c.token_ttl_secs = 3600;
    });
    let (mut a, _) = server.connect("userA");
    subscribe(&mut a, "team-1");
    say_in(&mut a, "team-1", "remember me");
    next_message(&mut a);
    a.send_json(&json!({ "type": "unsubscribe", "room": "team-1" }));
    a.recv_type("unsubscribed");
    clock.advance(Duration::from_secs(599));
    let subscribed = subscribe(&mut a, "team-1");
    assert_eq!(subscribed["history"][0]["text"], "remember me", "kept");
    a.send_json(&json!({ "type": "unsubscribe", "room": "team-1" }));
    a.recv_type("unsubscribed");
    assert_eq!(server.metric("jwtchat_rooms"), 2);
    // The clock runs from the last time anyone was in it.
    clock.advance(Duration::from_secs(600));
    eventually("the idle room is freed", || {
        server.metric("jwtchat_rooms") == 1
    });
    let subscribed = subscribe(&mut a, "team-1");
    assert_eq!(subscribed["history"], json!([]));
    assert_eq!(subscribed["last_seq"], 0);
}

#[test]
fn an_expired_token_is_closed_by_the_first_broadcast_to_any_of_its_rooms() {
    let (server, clock) = start_on_clock(|c| c.sweep_interval = Duration::from_secs(3600));
    let now = clock.clock().unix_secs();
    let short = mint(&json!({
        "sub": "1", "username": "userA", "iat": now, "exp": now + 60, "iss": "jwtchat",
        "rooms": ["team-*"],
    }));
    let mut a = server.connect_token(&short).unwrap();
    a.recv_type("welcome");
    subscribe(&mut a, "team-1");
    let (mut b, _) = server.connect("userB");
    subscribe(&mut b, "team-1");
    clock.advance(Duration::from_secs(60));
    // A broadcast in team-1 (general stays quiet) finds it expired.
    say_in(&mut b, "team-1", "anyone?");
    let (code, before) = a.until_close();
    assert_eq!(code, 4001);
    let last = before.last().unwrap();
    assert_eq!(last["code"], "token_expired");
    assert!(
        before.iter().all(|m| m["type"] != "message"),
        "no message after exp: {before:?}"
    );
    server.settle_presence();
    assert_eq!(b.recv_type("leave")["room"], "team-1");
    assert_eq!(server.metric("jwtchat_expiry_disconnects_total"), 1);
}

#[test]
fn one_user_cannot_take_every_room() {
    let server = start_with(|c| {
        c.max_rooms_per_user = 2;
        c.message_rate = 0;
    });
    let (mut a, _) = server.connect("userA");
    // DMs to names nobody has: each message keeps a room alive.
    for ghost in ["ghost1", "ghost2"] {
        say_in(&mut a, &format!("dm:{ghost}:userA"), "boo");
        next_message(&mut a);
        let room = format!("dm:{ghost}:userA");
        a.send_json(&json!({ "type": "unsubscribe", "room": room }));
        a.recv_type("unsubscribed");
    }
    say_in(&mut a, "dm:ghost3:userA", "boo");
    let refused = a.recv_type("error");
    assert_eq!(refused["code"], "too_many_rooms");
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("you have made 2 rooms"),
        "{refused}"
    );
    assert_eq!(subscribe(&mut a, "team-x")["code"], "too_many_rooms");
    // Everyone else still makes rooms, and joins A's.
    let (mut b, _) = server.connect("userB");
    assert_eq!(subscribe(&mut b, "team-x")["type"], "subscribed");
    assert_eq!(
        subscribe(&mut a, "team-x")["type"],
        "subscribed",
        "B's room"
    );
}
