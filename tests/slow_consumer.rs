//! A client that stops reading must not slow anyone else down: the sender
//! never blocks, everyone else keeps receiving every message in order, and
//! the stalled client is disconnected with 4008 once its queue is full.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use serde_json::json;
use support::*;

/// Messages a sender sends before reading its own echoes back.
const BURST: usize = 32;
/// Upper bound on the test's traffic: far more than loopback socket buffers
/// hold, so the stalled client's queue must overflow well before.
const MAX_MESSAGES: usize = 40_000;

#[test]
fn a_stalled_reader_is_cut_off_while_everyone_else_keeps_up() {
    let server = start_with(|c| {
        c.client_queue_frames = 64;
        c.message_rate = 0; // this test floods on purpose
    });
    let (mut stalled, _) = server.connect("userC");
    let (mut watcher, _) = server.connect("userB");
    let (mut sender, _) = server.connect("userA");
    stalled.recv_type("join"); // userB; then it never reads again until the end
    watcher.recv_type("join"); // userA

    let evicted = Arc::new(AtomicBool::new(false));
    let text = "x".repeat(4000);

    // The watcher reads everything and notes when userC leaves.
    let watching = {
        let evicted = evicted.clone();
        thread::spawn(move || {
            let mut seqs = Vec::new();
            loop {
                let event = watcher.recv();
                match event["type"].as_str() {
                    Some("message") => seqs.push(event["seq"].as_u64().unwrap()),
                    Some("leave") if event["user"] == "userC" => {
                        evicted.store(true, Ordering::SeqCst)
                    }
                    Some("leave") if event["user"] == "userA" => return seqs,
                    _ => panic!("unexpected {event}"),
                }
            }
        })
    };

    // The sender sends in bursts, reading its own echoes between them so it
    // is never the slow one. It must never block on the stalled client.
    let mut sent = 0;
    while !evicted.load(Ordering::SeqCst) {
        assert!(sent < MAX_MESSAGES, "the stalled client was never evicted");
        for _ in 0..BURST {
            sender.say(&text);
        }
        sent += BURST;
        let mut echoed = 0;
        while echoed < BURST {
            if sender.recv()["type"] == "message" {
                echoed += 1;
            }
        }
    }
    drop(sender);

    // The watcher got every message, in order, with no gap.
    let seqs = watching.join().expect("watcher");
    assert_eq!(seqs, (1..=sent as u64).collect::<Vec<_>>());

    // The stalled client, reading at last, finds some messages and then
    // the 4008 close; never a message after the close.
    let (code, before) = stalled.until_close();
    assert_eq!(code, 4008);
    assert!(before.len() < sent, "it cannot have received everything");
    let messages: Vec<_> = before.iter().filter(|e| e["type"] == "message").collect();
    assert!(
        !messages.is_empty(),
        "its socket buffers held some messages"
    );
    for (i, event) in messages.iter().enumerate() {
        assert_eq!(event["seq"], json!(i + 1), "in order, no gap");
    }
}
