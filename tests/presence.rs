//! Presence costs O(N), not O(N²): joins and leaves are gathered for at
//! most 100 ms and go out as one frame per window (`join`/`leave` for one
//! change, `presence` with lists for several). A storm of distinct users
//! connecting is then a few frames for each client, not one per newcomer.

mod support;

use std::collections::BTreeSet;
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use support::*;
use tungstenite::client::IntoClientRequest;

const STORM: usize = 2000;
const WINDOW: Duration = Duration::from_millis(100);

#[test]
fn a_storm_of_distinct_users_costs_each_client_one_frame_per_window() {
    let server = start_with(|c| {
        c.max_connections_per_ip = 2 * STORM;
        c.max_connections = 2 * STORM;
    });
    let (mut watcher, _) = server.connect("userA");
    let addr = server.addr;

    // 2,000 distinct users connect at once, from eight threads.
    let storm = thread::spawn(move || {
        let threads: Vec<_> = (0..8)
            .map(|t| {
                thread::spawn(move || {
                    (0..STORM / 8)
                        .map(|i| {
                            let n = t * (STORM / 8) + i;
                            let token = token_for(&format!("s{n}"), &format!("storm{n:04}"), 3600);
                            let url = format!("ws://{addr}/ws?token={token}");
                            let request = url.into_client_request().expect("request");
                            let stream = TcpStream::connect(addr).expect("connect");
                            let (ws, _) = tungstenite::client(request, stream).expect("upgrade");
                            ws // kept open, never read: its frames queue
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        threads
            .into_iter()
            .flat_map(|t| t.join().expect("storm thread"))
            .collect::<Vec<_>>()
    });

    // The watcher counts the presence frames it gets, as they come.
    let mut joined = BTreeSet::new();
    let mut frames = Vec::new();
    let deadline = Instant::now() + PATIENCE * 4;
    while joined.len() < STORM {
        assert!(
            Instant::now() < deadline,
            "only {} joins seen",
            joined.len()
        );
        let Event::Json(frame) = watcher.next_raw() else {
            panic!("the watcher was cut off");
        };
        let names: Vec<String> = match frame["type"].as_str() {
            Some("join") => vec![frame["user"].as_str().unwrap_or_default().to_string()],
            Some("presence") => {
                assert_eq!(frame["left"], serde_json::json!([]), "nobody left");
                let list = frame["joined"].as_array().expect("joined");
                list.iter()
                    .filter_map(|u| u.as_str())
                    .map(String::from)
                    .collect()
            }
            _ => continue,
        };
        frames.push(Instant::now());
        for name in names {
            assert!(joined.insert(name.clone()), "{name} announced twice");
        }
    }
    let sockets = storm.join().expect("storm");
    assert_eq!(sockets.len(), STORM);

    // One frame a window at most: over the storm's span, the frames fit
    // one per 100 ms (plus the window the first and the last fall in).
    let span = frames[frames.len() - 1] - frames[0];
    let windows = (span.as_millis() / WINDOW.as_millis()) as usize + 2;
    assert!(
        frames.len() <= windows,
        "{} presence frames for {STORM} joins in {span:?} (at most {windows})",
        frames.len()
    );
    eprintln!(
        "{STORM} joins in {} presence frames over {span:?}",
        frames.len()
    );
}
