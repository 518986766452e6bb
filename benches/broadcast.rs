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
//!
//! Built with `--features redis`, it then measures several instances as one
//! room over a Redis it starts itself (Debian's `redis-server` on a free
//! loopback port): one instance with `--redis` against the plain one, and
//! two instances with the clients split between them, where "remote" is
//! the cross-instance path (sent on the first, received on the second).

mod loadgen;
// The binary's process set-up, for the open-file limit: each client is a
// descriptor. Not library API, so included by path.
#[allow(dead_code)]
#[path = "../src/process.rs"]
mod process;
// The tests' throwaway redis-server (a child process, killed on drop).
#[cfg(feature = "redis")]
#[path = "../tests/support/redis_server.rs"]
mod redis_server;

use std::io;
use std::net::SocketAddr;

use jwtchat::{Config, Server, ServerHandle};
use loadgen::{Plan, Report, ReportJson};
use serde::Serialize;

/// One run in the JSON array printed at the end: its report, after the
/// setup's name in the cross-instance section.
#[derive(Serialize)]
struct Run {
    #[serde(skip_serializing_if = "Option::is_none")]
    setup: Option<String>,
    #[serde(flatten)]
    report: ReportJson,
}

impl Run {
    fn of(report: &Report) -> Run {
        Run {
            setup: None,
            report: report.summary(),
        }
    }
}

fn main() {
    let quick = std::env::var("JWTCHAT_BENCH_QUICK").is_ok_and(|v| v == "1");
    // Logging every connection would be most of the work at N = 1000.
    jwtchat::log::set_level(jwtchat::log::Level::Warn);
    let _ = process::raise_open_file_limit();
    println!(
        "jwtchat broadcast benchmark ({} mode, {} cores)",
        if quick { "quick" } else { "full" },
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );

    let mut json = Vec::new();
    // The ping-pong reports, for the cross-instance comparison.
    let mut pingpongs = Vec::new();
    for clients in [1, 10, 100, 1000] {
        let report = measure(pingpong(quick, clients));
        println!("\nping-pong, one sender\n{}", report.human());
        json.push(Run::of(&report));
        pingpongs.push(report);
    }
    let report = measure(sustained(quick));
    println!("\nsustained, 4 senders flat out\n{}", report.human());
    json.push(Run::of(&report));
    let rooms = measure_in_rooms(room_among_others(quick)).expect("run");
    println!(
        "\nping-pong, one sender, in a room of {ROOM_SIZE} while {} clients idle in {QUIET_ROOMS} \
         other rooms\n{}",
        ROOM_SIZE * QUIET_ROOMS,
        rooms.human()
    );
    json.push(Run {
        setup: Some(format!("room of {ROOM_SIZE} among {QUIET_ROOMS} others")),
        ..Run::of(&rooms)
    });
    #[cfg(feature = "redis")]
    cluster::section(quick, &pingpongs, &report, &mut json);
    println!(
        "\n{}",
        serde_json::to_string(&json).expect("the reports serialise")
    );
}

/// One sender, the next message only when every client has the last.
fn pingpong(quick: bool, clients: usize) -> Plan {
    Plan {
        clients,
        senders: 1,
        messages: match (quick, clients) {
            (true, 1000) => 100,
            (true, _) => 300,
            (false, 1000) => 500,
            (false, _) => 2000,
        },
        rate: 0,
        window: 1,
        payload: 64,
        readers: 1,
        room: None,
    }
}

/// 4 senders at N = 100, each keeping 32 messages in flight.
fn sustained(quick: bool) -> Plan {
    Plan {
        clients: 100,
        senders: 4,
        messages: if quick { 1000 } else { 5000 },
        rate: 0,
        window: 32,
        payload: 64,
        readers: 1,
        room: None,
    }
}

/// Rooms in the idle-rooms run: one of 100 that speaks, and 9 of 100 that
/// stay quiet.
const ROOM_SIZE: usize = 100;
const QUIET_ROOMS: usize = 9;

/// Ping-pong in a room of 100 while 900 other clients sit in 9 other
/// rooms: what it costs should be what a room of 100 costs, not 1000.
fn room_among_others(quick: bool) -> Plan {
    Plan {
        room: Some("team-bench"),
        ..pingpong(quick, ROOM_SIZE)
    }
}

/// `plan.clients` clients in `plan.room`, and `QUIET_ROOMS` more rooms of
/// as many clients that say nothing; nobody stays in `general`.
fn measure_in_rooms(plan: Plan) -> io::Result<Report> {
    let room = plan.room.expect("a room");
    let handle = start(None)?;
    let tokens = demo_tokens(&[handle.local_addr()])?;
    let open = |room: &str, count: usize| {
        (0..count)
            .map(|i| {
                let mut conn = loadgen::connect(handle.local_addr(), &tokens[i % 3], None)?;
                conn.send_text(r#"{"type":"unsubscribe","room":"general"}"#)?;
                conn.send_text(&format!(r#"{{"type":"subscribe","room":"{room}"}}"#))?;
                Ok(conn)
            })
            .collect::<io::Result<Vec<_>>>()
    };
    let members = open(room, plan.clients)?;
    let quiet = (0..QUIET_ROOMS)
        .map(|r| open(&format!("team-quiet-{r}"), plan.clients))
        .collect::<io::Result<Vec<_>>>()?;
    let report = loadgen::run(&plan, members);
    drop(quiet);
    report
}

/// A fresh server for each measurement, so one run's backlog cannot slow
/// the next.
fn measure(plan: Plan) -> Report {
    measure_on(plan, 1, None).expect("run")
}

/// `instances` fresh servers, sharing one room through `redis` (URL, key
/// prefix) if given; client `i` connects to instance `i % instances`, and
/// the senders are on the first.
fn measure_on(plan: Plan, instances: usize, redis: Option<(&str, &str)>) -> io::Result<Report> {
    let handles = (0..instances.max(1))
        .map(|_| start(redis))
        .collect::<io::Result<Vec<_>>>()?;
    let addrs: Vec<SocketAddr> = handles.iter().map(|h| h.local_addr()).collect();
    let tokens = demo_tokens(&addrs)?;
    let conns = (0..plan.clients)
        .map(|i| {
            let instance = i % addrs.len();
            loadgen::connect(addrs[instance], &tokens[i % tokens.len()], None)
                .map(|c| c.on_instance(instance))
        })
        .collect::<io::Result<Vec<_>>>()?;
    loadgen::run(&plan, conns)
    // The handles stop the servers here.
}

/// A fresh server, sharing one room through `redis` (URL, key prefix) if
/// given.
fn start(redis: Option<(&str, &str)>) -> io::Result<ServerHandle> {
    let config = Config {
        bind: "127.0.0.1:0".into(),
        // One secret: a token from one instance works on all.
        secret: Some(b"broadcast-bench: 0123456789 abcdefghijklmnop".to_vec()),
        // Measure the server, not its abuse limits: every client comes
        // from 127.0.0.1 and the senders go flat out.
        message_rate: 0,
        max_connections_per_ip: 10_000_000,
        redis: redis.map(|(url, _)| url.to_string()),
        redis_prefix: redis.map_or(Config::default().redis_prefix, |(_, p)| p.into()),
        ..Config::default()
    };
    let server = Server::bind(config).map_err(|e| io::Error::other(e.to_string()))?;
    server.spawn()
}

/// Tokens of the three demo users (whose grants include `team-*`).
fn demo_tokens(addrs: &[SocketAddr]) -> io::Result<Vec<String>> {
    ["A", "B", "C"]
        .iter()
        .map(|l| loadgen::login(addrs[0], &format!("user{l}"), &format!("password{l}")))
        .collect()
}

#[cfg(feature = "redis")]
mod cluster {
    //! Several instances as one room, over a Redis started for the run.

    use super::redis_server::{RedisServer, find_redis_server};
    use super::{Plan, Report, Run, loadgen::Percentiles, measure_on, pingpong, sustained};

    /// A measurement with its own key prefix, so no run sees another's
    /// stream or history. Errors are printed, not fatal: the section should
    /// say what went wrong and the rest still run.
    fn measure(
        redis: &RedisServer,
        run: &mut usize,
        setup: &str,
        instances: usize,
        plan: Plan,
        json: &mut Vec<Run>,
    ) -> Option<Report> {
        *run += 1;
        let prefix = format!("jwtchat-bench-{}-{run}", std::process::id());
        let title = format!(
            "{setup}, {}",
            if plan.senders == 1 && plan.window == 1 {
                "ping-pong, one sender".to_string()
            } else {
                format!("sustained, {} senders flat out", plan.senders)
            }
        );
        match measure_on(plan, instances, Some((&redis.url(), &prefix))) {
            Ok(report) => {
                println!("\n{title}\n{}", report.human());
                json.push(Run {
                    setup: Some(setup.to_string()),
                    ..Run::of(&report)
                });
                if report.lost() > 0
                    || report.out_of_order > 0
                    || !report.closed.is_empty()
                    || report.errors > 0
                {
                    println!(
                        "!!! {title}: {} deliveries lost, {} out of order, {} clients closed {:?}, \
                         {} error frames",
                        report.lost(),
                        report.out_of_order,
                        report.closed.len(),
                        report.closed,
                        report.errors
                    );
                }
                Some(report)
            }
            Err(e) => {
                println!("\n{title}\n!!! FAILED: {e}");
                None
            }
        }
    }

    /// The cross-instance section: after the plain runs, with their
    /// ping-pong reports and the plain sustained one for comparison.
    pub fn section(quick: bool, plain: &[Report], plain_sustained: &Report, json: &mut Vec<Run>) {
        println!("\n=== cross-instance over Redis ===");
        let Some(binary) = find_redis_server() else {
            println!(
                "\n!!! cross-instance over Redis: SKIPPED: redis-server not found \
                 (install Debian's redis-server package) !!!"
            );
            return;
        };
        let redis = RedisServer::start(binary);
        println!("redis-server on {}", redis.addr());
        let mut run = 0;
        // (N, plain, one instance with Redis, two instances)
        let mut rows = Vec::new();
        for clients in [100, 1000] {
            let one = measure(
                &redis,
                &mut run,
                "one instance with Redis",
                1,
                pingpong(quick, clients),
                json,
            );
            let two = measure(
                &redis,
                &mut run,
                "two instances over Redis",
                2,
                pingpong(quick, clients),
                json,
            );
            let plain = plain.iter().find(|r| r.plan.clients == clients);
            rows.push((clients, plain, one, two));
        }
        let one = measure(
            &redis,
            &mut run,
            "one instance with Redis",
            1,
            sustained(quick),
            json,
        );
        let two = measure(
            &redis,
            &mut run,
            "two instances over Redis",
            2,
            sustained(quick),
            json,
        );

        // Side by side, in milliseconds.
        println!(
            "\nping-pong, one sender on the first instance (ms; \"remote\" = received on the other instance)"
        );
        println!(
            "| N | setup | clients | each p50 | each p99 | each max | last p50 | last p99 | last max | lost |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|");
        let ms = |ns: u64| ns as f64 / 1e6;
        let line = |n: usize,
                    setup: &str,
                    clients: usize,
                    each: &Percentiles,
                    last: &Percentiles,
                    lost: String| {
            println!(
                "| {n} | {setup} | {clients} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {lost} |",
                ms(each.p50),
                ms(each.p99),
                ms(each.max),
                ms(last.p50),
                ms(last.p99),
                ms(last.max)
            );
        };
        for (n, plain, one, two) in &rows {
            let n = *n;
            if let Some(r) = plain {
                line(n, "one instance", n, &r.each, &r.last, r.lost().to_string());
            }
            match one {
                Some(r) => line(
                    n,
                    "one instance + Redis",
                    n,
                    &r.each,
                    &r.last,
                    r.lost().to_string(),
                ),
                None => println!("| {n} | one instance + Redis | failed |"),
            }
            match two {
                Some(r) => {
                    line(
                        n,
                        "two instances: all",
                        n,
                        &r.each,
                        &r.last,
                        r.lost().to_string(),
                    );
                    if let Some(split) = &r.split {
                        for (name, g) in [("local", &split.local), ("remote", &split.remote)] {
                            line(
                                n,
                                &format!("two instances: {name}"),
                                g.clients,
                                &g.each,
                                &g.last,
                                "".into(),
                            );
                        }
                    }
                }
                None => println!("| {n} | two instances | failed |"),
            }
        }
        println!("\nsustained, N=100, 4 senders (on the first instance), window 32");
        println!("| setup | deliveries/s | each p50 | each p99 | lost | out of order |");
        println!("|---|---|---|---|---|---|");
        let sustained_line = |setup: &str, r: Option<&Report>| match r {
            Some(r) => println!(
                "| {setup} | {:.0} | {:.3} | {:.3} | {} | {} |",
                r.deliveries_per_sec(),
                ms(r.each.p50),
                ms(r.each.p99),
                r.lost(),
                r.out_of_order
            ),
            None => println!("| {setup} | failed |"),
        };
        sustained_line("one instance", Some(plain_sustained));
        sustained_line("one instance + Redis", one.as_ref());
        sustained_line("two instances", two.as_ref());
    }
}
