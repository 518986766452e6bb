//! `cargo bench --bench reconnect`: 5,000 clients that all come back at
//! once, as after a proxy reload, each resuming `general` 50 messages back
//! (`/ws?since=general:E:S`), against 5,000 fresh connections to the same
//! server.
//!
//! The server is the real binary, a child process, so its resident memory
//! is its own (sampled every 10 ms while the clients connect). Every client
//! is a distinct user with a token signed with the server's secret. A
//! client counts as back when its `welcome` has arrived whole (with the
//! 50 `missed` messages in it, for a resume); the times are from the start
//! of the storm, so p99 is when 99 % of the clients had everything.
//!
//! `JWTCHAT_BENCH_QUICK=1` runs 1,000 clients.

mod loadgen;
#[allow(dead_code)]
#[path = "../src/process.rs"]
mod process;

use std::io::{self, Read};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use loadgen::Percentiles;

/// Threads that open the connections: enough to keep the server's accept
/// loop busy, few enough for 2 cores.
const CONNECTORS: usize = 16;

/// Messages each returning client has missed.
const MISSED: usize = 50;

const SECRET: &[u8] = b"reconnect-bench: 0123456789 abcdefghijklmnop";

fn main() -> io::Result<()> {
    let quick = std::env::var("JWTCHAT_BENCH_QUICK").is_ok_and(|v| v == "1");
    let clients = if quick { 1000 } else { 5000 };
    let _ = process::raise_open_file_limit();
    let mut server = Server::start()?;
    println!("jwtchat reconnect benchmark: {clients} clients, each {MISSED} messages behind");

    let tokens: Vec<String> = (0..clients)
        .map(|i| loadgen::mint(SECRET, &format!("u{i}"), &format!("user{i}")))
        .collect::<io::Result<_>>()?;
    let fresh = storm(&server, &tokens, None)?;
    println!("\n{clients} fresh connections\n{}", fresh.human());

    // Everyone is cut off at once; the room goes on without them.
    let (epoch, seq) = (fresh.epoch.clone(), fresh.last_seq);
    let fresh_json = fresh.json();
    drop(fresh);
    let mut sender = loadgen::connect(server.addr, &tokens[0], None)?;
    for i in 0..MISSED {
        sender.send_text(&format!(r#"{{"type":"message","text":"while away {i}"}}"#))?;
    }
    // Its own messages back: all of them were taken.
    let (mut stream, mut buf) = sender.into_parts();
    let mut echoed = 0;
    while echoed < MISSED {
        let (_, payload) = next_frame(&mut stream, &mut buf)?;
        echoed += usize::from(payload.starts_with(br#"{"type":"message""#));
    }
    drop(stream);

    let since = format!("general:{epoch}:{seq}");
    let back = storm(&server, &tokens, Some(&since))?;
    println!(
        "\n{clients} reconnecting at once with since={since}\n{}",
        back.human()
    );
    if back.recovered != clients {
        println!(
            "  NOT RECOVERED: {} of {clients} ({} missed messages each expected)",
            clients - back.recovered,
            MISSED
        );
    }
    println!(
        "\n{}",
        serde_json::json!({ "clients": clients, "fresh": fresh_json, "resume": back.json() })
    );
    server.stop();
    Ok(())
}

// ---------------------------------------------------------------------------

/// The server binary, as a child.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    fn start() -> io::Result<Server> {
        // A free port, taken back from the kernel a moment before the
        // server binds it (with `--log-level warn` it does not print it).
        let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let child = Command::new(env!("CARGO_BIN_EXE_jwtchat"))
            .args(["--bind", &addr.to_string(), "--message-rate", "0"])
            .args(["--max-connections-per-ip", "1000000", "--log-level", "warn"])
            .args(["--max-connections", "100000"])
            .env(
                "JWTCHAT_SECRET",
                std::str::from_utf8(SECRET).expect("ASCII"),
            )
            .stderr(Stdio::inherit())
            .spawn()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(addr).is_err() {
            if Instant::now() > deadline {
                return Err(io::Error::other("the server did not start listening"));
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(Server { child, addr })
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What one storm of connections measured.
struct Storm {
    clients: usize,
    wall: Duration,
    /// From the start of the storm to each client's whole welcome.
    back: Percentiles,
    rss_before_kib: u64,
    rss_peak_kib: u64,
    /// Clients whose welcome said `recovered: true` with every message.
    recovered: usize,
    /// The room's epoch and last seq, as the first welcome told them.
    epoch: String,
    last_seq: u64,
    /// The open connections, kept until the storm is dropped.
    _open: Vec<TcpStream>,
}

impl Storm {
    fn json(&self) -> serde_json::Value {
        let ms = |ns: u64| loadgen::round(ns as f64 / 1e6, 2);
        serde_json::json!({
            "wall_s": loadgen::round(self.wall.as_secs_f64(), 3),
            "p50_ms": ms(self.back.p50),
            "p99_ms": ms(self.back.p99),
            "max_ms": ms(self.back.max),
            "rss_before_kib": self.rss_before_kib,
            "rss_peak_kib": self.rss_peak_kib,
            "recovered": self.recovered,
        })
    }

    fn human(&self) -> String {
        format!(
            "  all {} back in {:.3} s; each: p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms\n  \
             server RSS {} KiB before, {} KiB at peak ({:.1} KiB per client)",
            self.clients,
            self.wall.as_secs_f64(),
            self.back.p50 as f64 / 1e6,
            self.back.p99 as f64 / 1e6,
            self.back.max as f64 / 1e6,
            self.rss_before_kib,
            self.rss_peak_kib,
            (self.rss_peak_kib.saturating_sub(self.rss_before_kib)) as f64 / self.clients as f64,
        )
    }
}

/// Opens a connection per token, `CONNECTORS` at a time, each resuming
/// from `since` if given, and waits for every welcome.
fn storm(server: &Server, tokens: &[String], since: Option<&str>) -> io::Result<Storm> {
    let pid = server.child.id();
    let rss_before_kib = loadgen::rss_kib(pid).unwrap_or(0);
    let peak = Arc::new(AtomicU64::new(rss_before_kib));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (peak, sampling) = (peak.clone(), sampling.clone());
        thread::spawn(move || {
            while sampling.load(Ordering::Acquire) {
                if let Some(rss) = loadgen::rss_kib(pid) {
                    peak.fetch_max(rss, Ordering::Relaxed);
                }
                thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let next = Arc::new(AtomicU64::new(0));
    let results = Arc::new(Mutex::new(Vec::with_capacity(tokens.len())));
    let tokens: Arc<[String]> = tokens.into();
    let since = since.map(str::to_string);
    let start = Instant::now();
    let workers: Vec<_> = (0..CONNECTORS)
        .map(|_| {
            let (next, results, tokens) = (next.clone(), results.clone(), tokens.clone());
            let (addr, since) = (server.addr, since.clone());
            thread::spawn(move || -> io::Result<()> {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    let Some(token) = tokens.get(i) else {
                        return Ok(());
                    };
                    let target = match &since {
                        Some(since) => format!("{token}&since={since}"),
                        None => token.clone(),
                    };
                    let conn = loadgen::connect(addr, &target, None)?;
                    let (mut stream, mut buf) = conn.into_parts();
                    let welcome = loop {
                        let (opcode, payload) = next_frame(&mut stream, &mut buf)?;
                        if opcode == 1 {
                            break payload;
                        }
                    };
                    let at = start.elapsed();
                    results.lock().expect("results").push((at, welcome, stream));
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("a connector")?;
    }
    let wall = start.elapsed();
    sampling.store(false, Ordering::Release);
    let _ = sampler.join();

    let results = std::mem::take(&mut *results.lock().expect("results"));
    let mut times = Vec::with_capacity(results.len());
    let mut recovered = 0;
    let mut open = Vec::with_capacity(results.len());
    let mut first: Option<serde_json::Value> = None;
    for (at, welcome, stream) in results {
        times.push(at.as_nanos() as u64);
        let welcome: serde_json::Value =
            serde_json::from_slice(&welcome).map_err(io::Error::other)?;
        let missed = welcome["missed"].as_array().map_or(0, Vec::len);
        if welcome["recovered"] == true && missed == MISSED {
            recovered += 1;
        }
        first.get_or_insert(welcome);
        open.push(stream);
    }
    let first = first.unwrap_or_default();
    let last_seq = first["history"]
        .as_array()
        .and_then(|h| h.last())
        .or_else(|| first["missed"].as_array().and_then(|m| m.last()))
        .and_then(|m| m["seq"].as_u64())
        .unwrap_or(0);
    Ok(Storm {
        clients: tokens.len(),
        wall,
        back: Percentiles::of(times),
        rss_before_kib,
        rss_peak_kib: peak.load(Ordering::Relaxed),
        recovered,
        epoch: first["epoch"].as_str().unwrap_or_default().to_string(),
        last_seq,
        _open: open,
    })
}

/// The next frame's opcode and payload (RFC 6455 §5.2; the server's are
/// unmasked), from `buf` (bytes read before) and then the socket; what is
/// read past it stays in `buf`.
fn next_frame(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<(u8, Vec<u8>)> {
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some((head, len)) = lengths(buf).filter(|(h, l)| buf.len() >= h + l) {
            let frame: Vec<u8> = buf.drain(..head + len).collect();
            return Ok((frame[0] & 0x0f, frame[head..].to_vec()));
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::other("closed before the frame"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The header length and payload length of the frame `buf` starts with.
fn lengths(buf: &[u8]) -> Option<(usize, usize)> {
    let len7 = usize::from(*buf.get(1)? & 0x7f);
    match len7 {
        126 => Some((
            4,
            usize::from(u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?])),
        )),
        127 => {
            let bytes: [u8; 8] = buf.get(2..10)?.try_into().ok()?;
            Some((10, u64::from_be_bytes(bytes) as usize))
        }
        len => Some((2, len)),
    }
}
