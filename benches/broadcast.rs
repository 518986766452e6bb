//! `cargo bench --bench broadcast`: broadcast latency and throughput of an
//! in-process server, over real loopback sockets.
//!
//! For N = 1, 10, 100, 1000 connected clients, one sender sends messages
//! ping-pong style (the next only when everyone has the last) and every
//! delivery is timed: from the send to (a) each client's receipt and (b) the
//! last client's. Then 4 senders at N = 100 send as fast as a window of
//! in-flight messages allows, for deliveries per second.
//!
//! `JWTCHAT_BENCH_QUICK=1` runs fewer messages (under a minute in all).

mod loadgen;

use std::net::SocketAddr;

use jwtchat::{Config, Server};
use loadgen::{Plan, Report};

fn main() {
    let quick = std::env::var("JWTCHAT_BENCH_QUICK").is_ok_and(|v| v == "1");
    // Logging every connection would be most of the work at N = 1000.
    jwtchat::log::set_level(jwtchat::log::Level::Warn);
    let _ = jwtchat::sys::raise_open_file_limit();
    println!(
        "jwtchat broadcast benchmark ({} mode, {} cores)",
        if quick { "quick" } else { "full" },
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );

    let mut json = Vec::new();
    for clients in [1, 10, 100, 1000] {
        let messages = match (quick, clients) {
            (true, 1000) => 100,
            (true, _) => 300,
            (false, 1000) => 500,
            (false, _) => 2000,
        };
        let report = measure(Plan {
            clients,
            senders: 1,
            messages,
            rate: 0,
            window: 1,
            payload: 64,
            readers: 1,
        });
        println!("\nping-pong, one sender\n{}", report.human());
        json.push(report.json());
    }
    let report = measure(Plan {
        clients: 100,
        senders: 4,
        messages: if quick { 1000 } else { 5000 },
        rate: 0,
        window: 32,
        payload: 64,
        readers: 1,
    });
    println!("\nsustained, 4 senders flat out\n{}", report.human());
    json.push(report.json());
    println!("\n[{}]", json.join(","));
}

/// A fresh server for each measurement, so one run's backlog cannot slow
/// the next.
fn measure(plan: Plan) -> Report {
    let config = Config {
        bind: "127.0.0.1:0".into(),
        secret: Some(b"benchmark-secret-benchmark-secret-123".to_vec()),
        // Measure the server, not its abuse limits: every client comes from
        // 127.0.0.1 and the senders go flat out.
        message_rate: 0,
        max_connections_per_ip: usize::MAX,
        ..Config::default()
    };
    let server = Server::bind(config).expect("bind");
    let addr: SocketAddr = server.local_addr();
    let _handle = server.spawn().expect("spawn");
    let tokens: Vec<String> = ["A", "B", "C"]
        .iter()
        .map(|l| loadgen::login(addr, &format!("user{l}"), &format!("password{l}")).expect("login"))
        .collect();
    let conns = (0..plan.clients)
        .map(|i| loadgen::connect(addr, &tokens[i % tokens.len()], None).expect("connect"))
        .collect();
    loadgen::run(&plan, conns).expect("run")
}
