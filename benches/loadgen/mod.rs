//! The measuring client shared by `cargo bench --bench broadcast` and the
//! `jwtchat-load` load generator: log in, open many WebSocket clients, send
//! chat messages and time every delivery.
//!
//! Each message's text starts with the nanoseconds since the run began when
//! it was sent, so any receiver can compute its latency. Receiving uses a few
//! `mio` poll threads over non-blocking sockets (one thread per client would
//! measure the load generator's scheduler, not the server), and parses the
//! server's frames by hand: server frames are unmasked text frames, and the
//! generator only needs the `seq` and the timestamp out of each.
//!
//! The clients may be spread over several server instances that share one
//! room (jwtchat's `--redis`): each [`Conn`] knows its instance
//! ([`Conn::on_instance`]), the senders are all on instance 0, and the
//! report then splits the latencies into the senders' instance ("local")
//! and the others ("remote": the cross-instance path).
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use mio::net::TcpStream as MioStream;
use mio::{Events, Interest, Poll, Token};
use serde::Serialize;

/// What to measure.
#[derive(Clone, Debug)]
pub struct Plan {
    pub clients: usize,
    /// How many of the clients send.
    pub senders: usize,
    /// Messages per sender.
    pub messages: usize,
    /// Messages per second per sender; 0 = as fast as the window allows.
    pub rate: u64,
    /// Messages a sender may have in flight (sent, not yet echoed back to
    /// it). 1 is ping-pong: each message is delivered everywhere before the
    /// next is sent.
    pub window: usize,
    /// Bytes of chat text per message.
    pub payload: usize,
    /// Threads that read the clients' sockets.
    pub readers: usize,
    /// The room the senders speak in (`None`: `general`, naming none).
    /// The clients must have subscribed to it (see [`Conn::send_text`]).
    pub room: Option<&'static str>,
}

/// Latencies in nanoseconds.
#[derive(Debug, Clone, Default)]
pub struct Percentiles {
    pub p50: u64,
    pub p99: u64,
    pub max: u64,
    pub count: usize,
}

impl Percentiles {
    pub fn of(mut samples: Vec<u64>) -> Percentiles {
        if samples.is_empty() {
            return Percentiles::default();
        }
        samples.sort_unstable();
        let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
        Percentiles {
            p50: at(0.50),
            p99: at(0.99),
            max: *samples.last().unwrap_or(&0),
            count: samples.len(),
        }
    }

    fn ms(ns: u64) -> f64 {
        ns as f64 / 1e6
    }

    pub fn human(&self) -> String {
        format!(
            "p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms",
            Self::ms(self.p50),
            Self::ms(self.p99),
            Self::ms(self.max)
        )
    }

    fn summary(&self) -> PercentilesJson {
        PercentilesJson {
            p50_ms: round(Self::ms(self.p50), 4),
            p99_ms: round(Self::ms(self.p99), 4),
            max_ms: round(Self::ms(self.max), 4),
            count: self.count,
        }
    }
}

/// What a run found.
#[derive(Debug, Clone)]
pub struct Report {
    pub plan: Plan,
    /// Send to each client's receipt, every delivery.
    pub each: Percentiles,
    /// Send to the last client's receipt, per message.
    pub last: Percentiles,
    /// The first message's send to its last receipt: after a connect
    /// storm, how long until the room is usable again.
    pub first_last: Option<u64>,
    /// Reading what had arrived before the run (see [`settle`]): how long
    /// it took and how many bytes.
    pub backlog: (Duration, u64),
    pub deliveries: u64,
    pub expected_deliveries: u64,
    /// Deliveries that skipped a `seq` or went backwards.
    pub out_of_order: u64,
    pub elapsed: Duration,
    /// Clients the server closed during the run (with the close codes).
    pub closed: Vec<u16>,
    /// With clients on more than one instance: the latencies of the
    /// senders' instance and of the others.
    pub split: Option<Split>,
    /// `{"type":"error"}` frames the server sent (e.g. a message it could
    /// not take), and the first of them.
    pub errors: u64,
    pub first_error: Option<String>,
}

/// Latencies by where the receiving client is, for a run over several
/// instances.
#[derive(Debug, Clone, Default)]
pub struct Split {
    /// How many instances the clients were spread over.
    pub instances: usize,
    /// On the senders' instance (instance 0).
    pub local: Group,
    /// On every other instance.
    pub remote: Group,
}

/// One group of clients' latencies.
#[derive(Debug, Clone, Default)]
pub struct Group {
    pub clients: usize,
    /// Send to each of the group's clients' receipt, every delivery.
    pub each: Percentiles,
    /// Send to the group's last client's receipt, per message (only the
    /// messages every client of the group received).
    pub last: Percentiles,
    pub deliveries: u64,
}

impl Group {
    fn human(&self, name: &str) -> String {
        format!(
            "  {name} ({} clients, {} deliveries):\n    each client:  {}\n    last client:  {}",
            self.clients,
            self.deliveries,
            self.each.human(),
            self.last.human()
        )
    }

    fn summary(&self) -> GroupJson {
        GroupJson {
            clients: self.clients,
            deliveries: self.deliveries,
            each: self.each.summary(),
            last: self.last.summary(),
        }
    }
}

impl Report {
    pub fn deliveries_per_sec(&self) -> f64 {
        self.deliveries as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn lost(&self) -> u64 {
        self.expected_deliveries.saturating_sub(self.deliveries)
    }

    pub fn human(&self) -> String {
        let p = &self.plan;
        let mut out = format!(
            "N={} senders={} messages={} payload={}B window={} rate={}\n  \
             each client:  {}\n  last client:  {}\n  \
             {} deliveries in {:.3} s = {:.0} deliveries/s; lost {}, out of order {}, closed {}",
            p.clients,
            p.senders,
            p.messages,
            p.payload,
            p.window,
            p.rate,
            self.each.human(),
            self.last.human(),
            self.deliveries,
            self.elapsed.as_secs_f64(),
            self.deliveries_per_sec(),
            self.lost(),
            self.out_of_order,
            self.closed.len()
        );
        if self.backlog.1 > 0 {
            out.push_str(&format!(
                "\n  before the run: read {} bytes already sent, in {:.3} s",
                self.backlog.1,
                self.backlog.0.as_secs_f64()
            ));
        }
        if let Some(first) = self.first_last {
            out.push_str(&format!(
                "\n  first message, last client: {:.3} ms",
                Percentiles::ms(first)
            ));
        }
        if let Some(first) = &self.first_error {
            out.push_str(&format!(
                "\n  {} error frames from the server, the first: {first}",
                self.errors
            ));
        }
        if let Some(split) = &self.split {
            out.push_str(&format!(
                "\n  over {} instances, the senders on the first:\n{}\n{}",
                split.instances,
                split.local.human("local, the senders' instance"),
                split.remote.human("remote, the other instance(s)")
            ));
        }
        out
    }

    /// The run as one line of JSON, for scripts.
    pub fn json(&self) -> String {
        serde_json::to_string(&self.summary()).expect("a report serialises")
    }

    /// What [`Report::json`] writes, to serialise with more around it.
    pub fn summary(&self) -> ReportJson {
        let p = &self.plan;
        let split = self.split.as_ref();
        ReportJson {
            clients: p.clients,
            senders: p.senders,
            messages: p.messages,
            payload: p.payload,
            window: p.window,
            rate: p.rate,
            each: self.each.summary(),
            last: self.last.summary(),
            first_last_ms: self.first_last.map(|ns| round(Percentiles::ms(ns), 4)),
            backlog_bytes: self.backlog.1,
            backlog_s: round(self.backlog.0.as_secs_f64(), 3),
            deliveries: self.deliveries,
            expected: self.expected_deliveries,
            lost: self.lost(),
            out_of_order: self.out_of_order,
            closed: self.closed.len(),
            elapsed_s: round(self.elapsed.as_secs_f64(), 4),
            deliveries_per_s: self.deliveries_per_sec().round() as u64,
            instances: split.map(|s| s.instances),
            local: split.map(|s| s.local.summary()),
            remote: split.map(|s| s.remote.summary()),
            errors: (self.errors > 0).then_some(self.errors),
        }
    }
}

// ---------------------------------------------------------------------------
// The JSON report: the numbers of `Report::human`, in milliseconds and
// seconds, one object per run.

/// A [`Report`] as JSON. The split fields are there only for a run over
/// several instances, `errors` only if the server sent any.
#[derive(Debug, Serialize)]
pub struct ReportJson {
    pub clients: usize,
    pub senders: usize,
    pub messages: usize,
    pub payload: usize,
    pub window: usize,
    pub rate: u64,
    pub each: PercentilesJson,
    pub last: PercentilesJson,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_last_ms: Option<f64>,
    pub backlog_bytes: u64,
    pub backlog_s: f64,
    pub deliveries: u64,
    pub expected: u64,
    pub lost: u64,
    pub out_of_order: u64,
    pub closed: usize,
    pub elapsed_s: f64,
    pub deliveries_per_s: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instances: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local: Option<GroupJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote: Option<GroupJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<u64>,
}

/// A [`Group`] as JSON.
#[derive(Debug, Serialize)]
pub struct GroupJson {
    pub clients: usize,
    pub deliveries: u64,
    pub each: PercentilesJson,
    pub last: PercentilesJson,
}

/// [`Percentiles`] as JSON, in milliseconds.
#[derive(Debug, Serialize)]
pub struct PercentilesJson {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub count: usize,
}

/// `x` to `places` decimals, the precision the report has always given:
/// more digits than that would be noise.
pub fn round(x: f64, places: i32) -> f64 {
    let scale = 10f64.powi(places);
    (x * scale).round() / scale
}

// ---------------------------------------------------------------------------
// HTTP: log in, upgrade

/// `POST /auth` and return the token.
pub fn login(addr: SocketAddr, user: &str, password: &str) -> io::Result<String> {
    let body = format!(r#"{{"username":{user:?},"password":{password:?}}}"#);
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        stream,
        "POST /auth HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let json = response.split("\r\n\r\n").nth(1).unwrap_or_default();
    let token = json
        .split(r#""token":""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .filter(|_| response.starts_with("HTTP/1.1 200"))
        .ok_or_else(|| io::Error::other(format!("login of {user} failed: {response}")))?;
    Ok(token.to_string())
}

/// A secret file's bytes, read as jwtchat reads `--secret-file`: less any
/// final newlines.
pub fn read_secret(path: &str) -> io::Result<Vec<u8>> {
    let mut bytes = std::fs::read(path)?;
    while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        bytes.pop();
    }
    Ok(bytes)
}

/// A token for user `username` (id `sub`), signed with the server's own
/// secret instead of fetched from `POST /auth`: how a load generator gets
/// thousands of distinct users without thousands of password hashes (and
/// how it talks to a peer that has no logins). Valid for an hour.
pub fn mint(secret: &[u8], sub: &str, username: &str) -> io::Result<String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let claims = serde_json::json!({
        "sub": sub, "username": username, "iss": "jwtchat", "iat": now, "exp": now + 3600,
    });
    let key = jsonwebtoken::EncodingKey::from_secret(secret).map_err(io::Error::other)?;
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).map_err(io::Error::other)
}

/// Another process's CPU time so far, user + system, in seconds (Linux
/// `/proc/PID/stat`, fields 14 and 15, in clock ticks).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; the rest follow its ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // `rest` starts at field 3, so field 14 is index 11.
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (per_second > 0).then(|| ticks as f64 / per_second as f64)
}

/// One open WebSocket client, welcome already read.
pub struct Conn {
    stream: TcpStream,
    /// Bytes read past the 101 (the start of the first frames).
    pending: Vec<u8>,
    /// Which server instance it is connected to (0 unless told).
    instance: usize,
}

impl Conn {
    /// Sends one JSON text frame (a `subscribe`, say). What it brings back
    /// is read, and set aside, as the run settles.
    pub fn send_text(&mut self, json: &str) -> io::Result<()> {
        self.stream.write_all(&client_frame(json))
    }

    /// The socket, and the bytes already read past the 101 (the start of
    /// the first frames).
    pub fn into_parts(self) -> (TcpStream, Vec<u8>) {
        (self.stream, self.pending)
    }

    /// Marks the client as connected to instance `instance` (an index into
    /// the caller's list of server addresses; the senders are on 0).
    pub fn on_instance(mut self, instance: usize) -> Conn {
        self.instance = instance;
        self
    }
}

/// Opens a TCP connection, from `source` if given (another loopback
/// address stands in for another client machine, so that per-IP limits
/// see many hosts, as they would in real use).
fn open_tcp(addr: SocketAddr, source: Option<IpAddr>) -> io::Result<TcpStream> {
    let Some(source) = source else {
        return TcpStream::connect(addr);
    };
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.bind(&SocketAddr::new(source, 0).into())?;
    socket.connect(&addr.into())?;
    Ok(socket.into())
}

/// The source address for client `i` when spreading `hosts` loopback
/// addresses over the clients: 127.0.0.1, 127.0.0.2, ...
pub fn loopback_source(i: usize, hosts: usize) -> Option<IpAddr> {
    (hosts > 1).then(|| {
        let n = (i % hosts) as u32 + 1;
        IpAddr::V4(std::net::Ipv4Addr::from(0x7f00_0000 + n))
    })
}

/// Opens a WebSocket with the token in the query string.
pub fn connect(addr: SocketAddr, token: &str, source: Option<IpAddr>) -> io::Result<Conn> {
    let mut stream = open_tcp(addr, source)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        stream,
        "GET /ws?token={token} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    )?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    let end = loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Err(io::Error::other("closed during the handshake"));
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    if !head.starts_with(b"HTTP/1.1 101") {
        return Err(io::Error::other(format!(
            "upgrade refused: {}",
            String::from_utf8_lossy(&head)
        )));
    }
    Ok(Conn {
        stream,
        pending: head[end..].to_vec(),
        instance: 0,
    })
}

/// A masked client text frame (RFC 6455 §5.2). The mask key is zero, which
/// leaves the payload as it is: allowed, and free to compute.
pub fn client_frame(text: &str) -> Vec<u8> {
    let len = text.len();
    let mut out = Vec::with_capacity(len + 14);
    out.push(0x81);
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= 0xffff {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(text.as_bytes());
    out
}

/// Writes all of `bytes` to a non-blocking socket, waiting out `WouldBlock`.
fn write_all_spin(mut stream: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        match stream.write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => thread::yield_now(),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Receiving

/// A frame read off a client socket.
enum Parsed<'a> {
    Text(&'a [u8]),
    Close(u16),
    Other,
}

/// Splits one whole frame off the front of `buf`, if there is one.
fn parse_frame(buf: &[u8]) -> Option<(Parsed<'_>, usize)> {
    let b0 = *buf.first()?;
    let b1 = *buf.get(1)? & 0x7f;
    let (len, header) = match b1 {
        126 => (u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?]) as usize, 4),
        127 => (
            u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize,
            10,
        ),
        n => (n as usize, 2),
    };
    let payload = buf.get(header..header + len)?;
    let parsed = match b0 & 0x0f {
        0x1 => Parsed::Text(payload),
        0x8 => Parsed::Close(
            payload
                .get(..2)
                .map_or(1005, |c| u16::from_be_bytes([c[0], c[1]])),
        ),
        _ => Parsed::Other,
    };
    Some((parsed, header + len))
}

/// The number after `key` in a JSON text, e.g. `"seq":` → 17.
fn number_after(text: &[u8], key: &[u8]) -> Option<u64> {
    let at = text.windows(key.len()).position(|w| w == key)? + key.len();
    let digits = text[at..].iter().take_while(|b| b.is_ascii_digit());
    let mut n = 0u64;
    let mut any = false;
    for d in digits {
        n = n * 10 + u64::from(d - b'0');
        any = true;
    }
    any.then_some(n)
}

/// Per-client counters the senders read to keep their window.
struct Shared {
    start: Instant,
    /// Messages each client has received.
    received: Vec<AtomicU64>,
    /// Bytes read from all clients.
    bytes: AtomicU64,
    stop: AtomicBool,
}

impl Shared {
    /// Messages received by all clients together.
    fn total(&self) -> u64 {
        self.received
            .iter()
            .map(|r| r.load(Ordering::Acquire))
            .sum()
    }
}

/// Receiving clients on the senders' instance, and on the others.
const LOCAL: usize = 0;
const REMOTE: usize = 1;

/// One message's deliveries (to some group of clients) and the latest
/// delivery's latency.
type Tally = (u32, u64);

/// What one reader thread saw, by group ([`LOCAL`], [`REMOTE`]).
#[derive(Default)]
struct Seen {
    latencies: [Vec<u64>; 2],
    /// Per seq and group.
    per_seq: HashMap<u64, [Tally; 2]>,
    out_of_order: u64,
    closed: Vec<u16>,
    errors: u64,
    first_error: Option<String>,
}

struct Reader {
    stream: MioStream,
    index: usize,
    /// [`LOCAL`] or [`REMOTE`].
    group: usize,
    buf: Vec<u8>,
    last_seq: Option<u64>,
    open: bool,
}

fn read_loop(shared: &Shared, mut readers: Vec<Reader>) -> Seen {
    let mut seen = Seen::default();
    let Ok(mut poll) = Poll::new() else {
        return seen;
    };
    for (i, r) in readers.iter_mut().enumerate() {
        if let Err(e) = poll
            .registry()
            .register(&mut r.stream, Token(i), Interest::READABLE)
        {
            eprintln!("register: {e}");
        }
    }
    // Frames that arrived with the 101 are already in each buffer.
    for r in readers.iter_mut() {
        consume(shared, r, &mut seen);
    }
    let mut events = Events::with_capacity(1024);
    let mut chunk = vec![0u8; 64 * 1024];
    while !shared.stop.load(Ordering::Relaxed) {
        if poll
            .poll(&mut events, Some(Duration::from_millis(20)))
            .is_err()
        {
            continue;
        }
        for event in events.iter() {
            let r = &mut readers[event.token().0];
            loop {
                match r.stream.read(&mut chunk) {
                    Ok(0) => {
                        r.open = false;
                        break;
                    }
                    Ok(n) => {
                        r.buf.extend_from_slice(&chunk[..n]);
                        shared.bytes.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        r.open = false;
                        break;
                    }
                }
            }
            consume(shared, r, &mut seen);
        }
    }
    seen
}

/// Handles every whole frame in a reader's buffer.
fn consume(shared: &Shared, r: &mut Reader, seen: &mut Seen) {
    let now = shared.start.elapsed().as_nanos() as u64;
    let mut used = 0;
    while let Some((frame, len)) = parse_frame(&r.buf[used..]) {
        used += len;
        match frame {
            Parsed::Text(text) => {
                if text.starts_with(br#"{"type":"error""#) {
                    seen.errors += 1;
                    if seen.first_error.is_none() {
                        seen.first_error = Some(String::from_utf8_lossy(text).into_owned());
                    }
                    continue;
                }
                if !text.starts_with(br#"{"type":"message""#) {
                    continue;
                }
                let (Some(seq), Some(sent)) = (
                    number_after(text, br#""seq":"#),
                    number_after(text, br#""text":""#),
                ) else {
                    continue;
                };
                if r.last_seq.is_some_and(|last| seq != last + 1) {
                    seen.out_of_order += 1;
                }
                r.last_seq = Some(seq);
                let latency = now.saturating_sub(sent);
                seen.latencies[r.group].push(latency);
                let entry = &mut seen.per_seq.entry(seq).or_default()[r.group];
                entry.0 += 1;
                entry.1 = entry.1.max(latency);
                shared.received[r.index].fetch_add(1, Ordering::Release);
            }
            Parsed::Close(code) => {
                seen.closed.push(code);
                r.open = false;
            }
            Parsed::Other => {}
        }
    }
    r.buf.drain(..used);
}

// ---------------------------------------------------------------------------
// A run

/// Runs `plan` over already-open clients: the first `plan.senders` of the
/// clients on instance 0 send (with one instance, simply the first
/// `plan.senders`).
pub fn run(plan: &Plan, conns: Vec<Conn>) -> io::Result<Report> {
    let shared = Arc::new(Shared {
        start: Instant::now(),
        received: (0..conns.len()).map(|_| AtomicU64::new(0)).collect(),
        bytes: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });
    let instances = conns.iter().map(|c| c.instance + 1).max().unwrap_or(1);
    let local_clients = conns.iter().filter(|c| c.instance == 0).count();
    let remote_clients = conns.len() - local_clients;
    if local_clients < plan.senders {
        return Err(io::Error::other(format!(
            "{} senders but only {local_clients} clients on the first instance",
            plan.senders
        )));
    }
    let mut senders = Vec::new();
    let mut shards: Vec<Vec<Reader>> = (0..plan.readers.max(1)).map(|_| Vec::new()).collect();
    for (index, conn) in conns.into_iter().enumerate() {
        conn.stream.set_nonblocking(true)?;
        if conn.instance == 0 && senders.len() < plan.senders {
            senders.push((index, conn.stream.try_clone()?));
        }
        shards[index % plan.readers.max(1)].push(Reader {
            stream: MioStream::from_std(conn.stream),
            index,
            group: if conn.instance == 0 { LOCAL } else { REMOTE },
            buf: conn.pending,
            last_seq: None,
            open: true,
        });
    }
    let readers: Vec<_> = shards
        .into_iter()
        .map(|shard| {
            let shared = shared.clone();
            thread::spawn(move || read_loop(&shared, shard))
        })
        .collect();

    let backlog = settle(&shared);
    let began = shared.start.elapsed();
    let sending: Vec<_> = senders
        .into_iter()
        .map(|(index, stream)| {
            let shared = shared.clone();
            let plan = plan.clone();
            thread::spawn(move || send_loop(&shared, &plan, index, &stream))
        })
        .collect();
    let mut failed = None;
    for s in sending {
        let result = s
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("sender panicked")));
        if let Err(e) = result {
            failed.get_or_insert(e);
        }
    }

    // Wait for the deliveries to settle: everything arrived, or nothing
    // more for a while.
    let expected = (plan.senders * plan.messages * plan.clients) as u64;
    let mut last_total = shared.total();
    let mut quiet_since = Instant::now();
    while failed.is_none()
        && shared.total() < expected
        && quiet_since.elapsed() < Duration::from_secs(2)
    {
        thread::sleep(Duration::from_millis(1));
        let now_total = shared.total();
        if now_total != last_total {
            last_total = now_total;
            quiet_since = Instant::now();
        }
    }
    let finished = shared.start.elapsed();
    shared.stop.store(true, Ordering::Relaxed);

    let mut merged = Seen::default();
    for r in readers {
        let seen = r.join().map_err(|_| io::Error::other("reader panicked"))?;
        for (all, some) in merged.latencies.iter_mut().zip(seen.latencies) {
            all.extend(some);
        }
        for (seq, groups) in seen.per_seq {
            let e = merged.per_seq.entry(seq).or_default();
            for (e, (count, max)) in e.iter_mut().zip(groups) {
                e.0 += count;
                e.1 = e.1.max(max);
            }
        }
        merged.out_of_order += seen.out_of_order;
        merged.closed.extend(seen.closed);
        merged.errors += seen.errors;
        merged.first_error = merged.first_error.or(seen.first_error);
    }
    if let Some(e) = failed {
        // Say what had arrived by then, and where.
        let [local, remote] = &merged.latencies;
        let mut what = format!(
            "{e}; by then {} deliveries ({} on the senders' instance, {} on others; \
             {local_clients} + {remote_clients} clients), {} out of order, {} clients closed {:?}",
            local.len() + remote.len(),
            local.len(),
            remote.len(),
            merged.out_of_order,
            merged.closed.len(),
            merged.closed
        );
        if let Some(first) = &merged.first_error {
            what.push_str(&format!(
                ", {} error frames, the first: {first}",
                merged.errors
            ));
        }
        return Err(io::Error::new(e.kind(), what));
    }
    let [local, remote] = merged.latencies;
    let deliveries = (local.len() + remote.len()) as u64;
    // "Last client" only for messages that reached everyone (in the group).
    let last_of = |clients: usize, pick: &dyn Fn(&[Tally; 2]) -> Tally| {
        Percentiles::of(
            merged
                .per_seq
                .values()
                .map(pick)
                .filter(|(count, _)| *count as usize == clients)
                .map(|(_, max)| max)
                .collect(),
        )
    };
    let last = last_of(plan.clients, &|[l, r]| (l.0 + r.0, l.1.max(r.1)));
    let first_last = merged
        .per_seq
        .iter()
        .min_by_key(|(seq, _)| **seq)
        .filter(|(_, [l, r])| (l.0 + r.0) as usize == plan.clients)
        .map(|(_, [l, r])| l.1.max(r.1));
    let split = (instances > 1).then(|| Split {
        instances,
        local: Group {
            clients: local_clients,
            last: last_of(local_clients, &|g| g[LOCAL]),
            deliveries: local.len() as u64,
            each: Percentiles::of(local.clone()),
        },
        remote: Group {
            clients: remote_clients,
            last: last_of(remote_clients, &|g| g[REMOTE]),
            deliveries: remote.len() as u64,
            each: Percentiles::of(remote.clone()),
        },
    });
    let mut all = local;
    all.extend(remote);
    Ok(Report {
        plan: plan.clone(),
        each: Percentiles::of(all),
        last,
        first_last,
        backlog,
        deliveries,
        expected_deliveries: expected,
        out_of_order: merged.out_of_order,
        elapsed: finished.saturating_sub(began),
        closed: merged.closed,
        split,
        errors: merged.errors,
        first_error: merged.first_error,
    })
}

/// Reads what the server sent before the run (after a connect storm, its
/// presence news; history) until nothing more has come for 100 ms, so that
/// the run times the room at rest, not the clients catching up; returns
/// how long that took and how many bytes it was. Real clients read all
/// along; this load generator only reads from here on.
fn settle(shared: &Shared) -> (Duration, u64) {
    const QUIET: Duration = Duration::from_millis(100);
    let started = Instant::now();
    let mut last = shared.bytes.load(Ordering::Relaxed);
    let mut quiet_since = Instant::now();
    while quiet_since.elapsed() < QUIET && started.elapsed() < Duration::from_secs(60) {
        thread::sleep(Duration::from_millis(5));
        let now = shared.bytes.load(Ordering::Relaxed);
        if now != last {
            last = now;
            quiet_since = Instant::now();
        }
    }
    (started.elapsed().saturating_sub(QUIET), last)
}

/// One sender: `plan.messages` messages, paced by `plan.rate` and limited
/// to `plan.window` in flight (its own echoes tell it what has arrived).
fn send_loop(shared: &Shared, plan: &Plan, index: usize, stream: &TcpStream) -> io::Result<()> {
    let interval = (plan.rate > 0).then(|| Duration::from_nanos(1_000_000_000 / plan.rate));
    let first = Instant::now();
    let mut text = String::with_capacity(plan.payload.max(24));
    for sent in 0..plan.messages as u64 {
        // Echoes count every sender's messages, so the window is on the
        // room as a whole: fair for one sender or many.
        let window = (plan.window * plan.senders) as u64;
        let all_sent = sent * plan.senders as u64;
        let wait_start = Instant::now();
        // Ping-pong (one sender, window 1) waits for every client, not just
        // its own echo, so no two messages are ever in flight together.
        let ping_pong = plan.senders == 1 && plan.window == 1;
        let behind = || {
            if ping_pong {
                shared.total() < sent * plan.clients as u64
            } else {
                all_sent >= shared.received[index].load(Ordering::Acquire) + window
            }
        };
        while behind() {
            if wait_start.elapsed() > Duration::from_secs(10) {
                return Err(io::Error::other(
                    "no echo for 10 s: messages are being lost",
                ));
            }
            std::hint::spin_loop();
            thread::yield_now();
        }
        if let Some(interval) = interval {
            let due = first + interval * sent as u32;
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                thread::sleep(wait);
            }
        }
        text.clear();
        use std::fmt::Write as _;
        let _ = write!(text, "{}", shared.start.elapsed().as_nanos());
        while text.len() < plan.payload {
            text.push(if text.len() == 19 { ' ' } else { 'x' });
        }
        // Digits, `x` and a space: nothing to escape; room names need none.
        let json = match plan.room {
            Some(room) => format!(r#"{{"type":"message","room":"{room}","text":"{text}"}}"#),
            None => format!(r#"{{"type":"message","text":"{text}"}}"#),
        };
        write_all_spin(stream, &client_frame(&json))?;
    }
    Ok(())
}

/// Reads this process's or another's resident memory in KiB (Linux).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
