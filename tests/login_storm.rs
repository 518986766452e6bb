//! How much one user's storm of correct logins delays another user's login.
//! A measurement, not a check: it is `#[ignore]`d and prints its numbers.
//!
//! ```sh
//! cargo test --test login_storm -- --ignored --nocapture
//! ```
//!
//! Each run starts a fresh server (so no limit carries over), fires 20
//! parallel correct logins for `userA`, and, once they are all on their
//! way, times one login of `userB` from 127.0.0.2. The storm comes from one
//! address (127.0.0.1), then from twenty (127.0.1.1 to .20: one user on many
//! devices, or many hands with one stolen password), so that a per-IP limit
//! alone cannot be what saves userB. The median over the runs is printed
//! next to userB's login on an idle server. The
//! test profile builds argon2 and blake2 optimised (see Cargo.toml), so the
//! hashing, which is what is being queued, runs at release speed.

mod support;

use std::net::Ipv4Addr;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use support::*;

const STORM: usize = 20;
const RUNS: usize = 7;

fn timed_login_of_b(addr: std::net::SocketAddr) -> (Duration, u16) {
    let started = Instant::now();
    let status = send_raw_from(
        Ipv4Addr::new(127, 0, 0, 2),
        addr,
        &login_request("userB", "passwordB"),
    )
    .status;
    (started.elapsed(), status)
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

#[test]
#[ignore = "a measurement; run with --ignored --nocapture"]
fn one_users_login_storm_against_anothers_login() {
    measure("from one IP", |_| Ipv4Addr::new(127, 0, 0, 1));
    measure("from 20 IPs", |i| Ipv4Addr::new(127, 0, 1, 1 + i as u8));
}

fn measure(label: &str, source: impl Fn(usize) -> Ipv4Addr) {
    let mut idle = Vec::new();
    let mut stormed = Vec::new();
    for _ in 0..RUNS {
        let server = start();
        idle.push(timed_login_of_b(server.addr).0);

        let addr = server.addr;
        let go = Arc::new(Barrier::new(STORM + 1));
        let storm: Vec<_> = (0..STORM)
            .map(|i| {
                let go = go.clone();
                let from = source(i);
                std::thread::spawn(move || {
                    go.wait();
                    send_raw_from(from, addr, &login_request("userA", "passwordA")).status
                })
            })
            .collect();
        go.wait();
        // Let the storm's requests reach the server first.
        std::thread::sleep(Duration::from_millis(20));
        let (took, status) = timed_login_of_b(addr);
        assert_eq!(status, 200, "userB's login");
        stormed.push(took);
        let statuses: Vec<u16> = storm.into_iter().map(|t| t.join().unwrap()).collect();
        let ok = statuses.iter().filter(|s| **s == 200).count();
        println!(
            "{label}: userB {took:?} during the storm; userA's storm: {ok} of {STORM} got 200"
        );
    }
    println!(
        "{label}: userB's login, median of {RUNS}: {:?} idle, {:?} during userA's storm of {STORM}",
        median(idle),
        median(stormed)
    );
}
