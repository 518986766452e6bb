//! Shared test setup: a server on `127.0.0.1:0` started from the library,
//! raw HTTP over a real socket, and a WebSocket client.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use jwtchat::{Config, Server, ServerHandle};
use serde_json::Value;
use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::CloseFrame;
use tungstenite::{Message, WebSocket};

/// The HS256 secret every test server uses, so tests can mint tokens.
pub const SECRET: &[u8] = b"integration-test-secret-0123456789abcdef";
/// How long a test waits for anything before failing (liveness, not speed).
pub const PATIENCE: Duration = Duration::from_secs(15);

/// Unix seconds on the real clock (tests that mint their own tokens).
pub fn now_secs() -> u64 {
    jwtchat::Clock::system().unix_secs()
}

/// Signs `claims` with HS256 and [`SECRET`], as the test server signs its
/// own tokens: for tokens `POST /auth` would never hand out.
pub fn mint(claims: &Value) -> String {
    mint_with(jsonwebtoken::Algorithm::HS256, SECRET, claims)
}

/// Signs `claims` with `alg` and `key`: for tokens the server must refuse
/// (another secret, another HMAC algorithm).
pub fn mint_with(alg: jsonwebtoken::Algorithm, key: &[u8], claims: &Value) -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(key).expect("HMAC key");
    jsonwebtoken::encode(&jsonwebtoken::Header::new(alg), claims, &key).expect("sign")
}

/// The claims of a token for `username` (user id `sub`) from issuer
/// `jwtchat`, issued now and expiring `exp_in` seconds from now (in the
/// past if negative). No `auth_time` or `pwf`: such a token opens a
/// WebSocket but does not renew.
pub fn claims_for(sub: &str, username: &str, exp_in: i64) -> Value {
    let now = now_secs() as i64;
    serde_json::json!({
        "sub": sub, "username": username, "iat": now, "exp": now + exp_in, "iss": "jwtchat",
    })
}

/// [`claims_for`], signed with [`mint`].
pub fn token_for(sub: &str, username: &str, exp_in: i64) -> String {
    mint(&claims_for(sub, username, exp_in))
}

pub struct TestServer {
    /// `None` for a server in another process (see [`TestServer::at`]).
    pub handle: Option<ServerHandle>,
    pub addr: SocketAddr,
}

/// A server with the test secret and otherwise default settings.
pub fn start() -> TestServer {
    start_with(|_| {})
}

/// A server with the test secret and `tweak` applied to its config.
///
/// In-process servers log only warnings and errors, so that `cargo test`
/// shows cargo's own lines; `JWTCHAT_TEST_LOG=info` (or `debug`, ...)
/// shows everything again when a test needs looking into.
pub fn start_with(tweak: impl FnOnce(&mut Config)) -> TestServer {
    jwtchat::log::set_level(test_log_level());
    let mut config = Config {
        bind: "127.0.0.1:0".into(),
        secret: Some(SECRET.to_vec()),
        ..Config::default()
    };
    tweak(&mut config);
    let server = Server::bind(config).expect("server binds");
    let addr = server.local_addr();
    let handle = server.spawn().expect("server spawns");
    TestServer {
        handle: Some(handle),
        addr,
    }
}

fn test_log_level() -> jwtchat::log::Level {
    use jwtchat::log::Level;
    match std::env::var("JWTCHAT_TEST_LOG").as_deref() {
        Err(_) | Ok("") => Level::Warn,
        Ok("error") => Level::Error,
        Ok("warn") => Level::Warn,
        Ok("debug") => Level::Debug,
        Ok(_) => Level::Info,
    }
}

/// A server whose clock stands still until the test moves it: a token
/// expires, a warning goes out or a session cap passes when the test says,
/// not after a sleep.
pub fn start_on_clock(
    tweak: impl FnOnce(&mut Config),
) -> (TestServer, jwtchat::clock::ManualClock) {
    let clock = jwtchat::clock::ManualClock::new();
    let server = start_with(|c| {
        c.clock = clock.clock();
        tweak(c);
    });
    (server, clock)
}

impl TestServer {
    /// `POST /auth/refresh` with `token` as the bearer.
    pub fn refresh(&self, token: &str) -> RawResponse {
        send_raw(
            self.addr,
            format!(
                "POST /auth/refresh HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\n\
                 Content-Length: 0\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
    }

    /// One counter or gauge of an in-process server, as `/metrics` would
    /// show it (`name` with its labels, e.g. `jwtchat_logins_total`).
    pub fn metric(&self, name: &str) -> u64 {
        let text = self.handle.as_ref().expect("in-process").metrics_text();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
    }

    /// A server already running elsewhere (the real binary, say).
    pub fn at(addr: SocketAddr) -> TestServer {
        TestServer { handle: None, addr }
    }

    /// Logs in a demo user (`userA` → `passwordA`) and returns the token.
    pub fn token(&self, user: &str) -> String {
        let password = user.replace("user", "password");
        let response = post_json(
            self.addr,
            "/auth",
            &serde_json::json!({ "username": user, "password": password }).to_string(),
        );
        assert_eq!(response.status, 200, "login of {user}: {}", response.text());
        response.json()["token"]
            .as_str()
            .expect("token in body")
            .to_string()
    }

    /// Logs in and connects `user`, returning the client and its `welcome`.
    /// The join goes out to the others before this returns (see
    /// [`TestServer::settle_presence`]), as it would for people who do not
    /// connect within the same tenth of a second.
    pub fn connect(&self, user: &str) -> (Client, Value) {
        let mut client = self.connect_token(&self.token(user)).expect("upgrade");
        let welcome = client.recv();
        assert_eq!(welcome["type"], "welcome", "first frame: {welcome}");
        self.settle_presence();
        (client, welcome)
    }

    /// Sends the presence changes the server is gathering now, instead of
    /// at the end of their window (in-process servers only), so a test's
    /// next step sees them settled whatever the timing.
    pub fn settle_presence(&self) {
        if let Some(handle) = &self.handle {
            handle.flush_presence();
        }
    }

    /// Connects with a token in the query string.
    pub fn connect_token(&self, token: &str) -> Result<Client, tungstenite::Error> {
        let url = format!("ws://{}/ws?token={token}", self.addr);
        Client::open(self.addr, url.into_client_request()?)
    }

    /// Connects with a token in an `Authorization: Bearer` header.
    pub fn connect_bearer(&self, token: &str) -> Result<Client, tungstenite::Error> {
        let mut request = format!("ws://{}/ws", self.addr).into_client_request()?;
        let value = format!("Bearer {token}").parse().expect("header value");
        request.headers_mut().insert("Authorization", value);
        Client::open(self.addr, request)
    }
}

/// A WebSocket client over a blocking socket with a read timeout.
///
/// It reads presence as a sequence of `join` and `leave` messages: the
/// server gathers presence changes into one frame per window (a `join` or
/// `leave` when there is one, a `presence` frame with lists when there are
/// several), so which of the two a test sees depends on timing. A
/// `presence` frame is handed out as one `join` per name joined, then one
/// `leave` per name left, leaving out the client's own name (its welcome
/// already said it was online). [`Client::next_raw`] sees frames as sent.
pub struct Client {
    pub ws: WebSocket<TcpStream>,
    /// `join`/`leave` messages from a `presence` frame, not yet handed out.
    pending: std::collections::VecDeque<Value>,
    /// The user this client is, from its `welcome`.
    me: Option<String>,
}

impl Client {
    /// A client on an already upgraded WebSocket.
    pub fn from_ws(ws: WebSocket<TcpStream>) -> Client {
        Client {
            ws,
            pending: std::collections::VecDeque::new(),
            me: None,
        }
    }

    /// Opens a WebSocket with `request` (its headers as the test sets
    /// them).
    pub fn open(
        addr: SocketAddr,
        request: tungstenite::handshake::client::Request,
    ) -> Result<Client, tungstenite::Error> {
        let stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(PATIENCE))?;
        match tungstenite::client(request, stream) {
            Ok((ws, _)) => Ok(Client::from_ws(ws)),
            Err(tungstenite::HandshakeError::Failure(e)) => Err(e),
            Err(tungstenite::HandshakeError::Interrupted(_)) => {
                panic!("a blocking handshake cannot be interrupted")
            }
        }
    }

    pub fn send_json(&mut self, value: &Value) {
        self.ws
            .send(Message::text(value.to_string()))
            .expect("send");
    }

    pub fn say(&mut self, text: &str) {
        self.send_json(&serde_json::json!({ "type": "message", "text": text }));
    }

    /// The next JSON text message (pings and pongs skipped). Panics on a
    /// close, an error or silence longer than [`PATIENCE`].
    pub fn recv(&mut self) -> Value {
        match self.next() {
            Event::Json(value) => value,
            other => panic!("expected a JSON message, got {other:?}"),
        }
    }

    /// The next message of `kind` (`"message"`, `"join"`, ...), skipping
    /// others.
    pub fn recv_type(&mut self, kind: &str) -> Value {
        loop {
            let value = self.recv();
            if value["type"] == kind {
                return value;
            }
        }
    }

    /// The next message whose `type` is one of `kinds`, skipping others.
    pub fn recv_type_of(&mut self, kinds: &[&str]) -> Value {
        loop {
            let value = self.recv();
            if kinds.iter().any(|k| value["type"] == *k) {
                return value;
            }
        }
    }

    /// Every chat `message` until the server has been silent for `quiet`
    /// (a flood is over). Panics if the server closes the connection.
    pub fn messages_until_quiet(&mut self, quiet: Duration) -> Vec<Value> {
        let socket = self.ws.get_mut();
        socket.set_read_timeout(Some(quiet)).expect("timeout");
        let mut messages = Vec::new();
        loop {
            match self.next() {
                Event::Json(m) if m["type"] == "message" => messages.push(m),
                Event::Json(_) => {}
                Event::Closed(frame) => panic!("closed by the server: {frame:?}"),
                Event::Error(_) => break,
            }
        }
        self.ws
            .get_mut()
            .set_read_timeout(Some(PATIENCE))
            .expect("timeout");
        messages
    }

    /// The next thing that happens on the socket.
    pub fn next(&mut self) -> Event {
        loop {
            if let Some(value) = self.pending.pop_front() {
                return Event::Json(value);
            }
            match self.next_raw() {
                Event::Json(value) if value["type"] == "presence" => self.expand(&value),
                Event::Json(value) => {
                    if value["type"] == "welcome" {
                        self.me = value["user"].as_str().map(str::to_string);
                    }
                    return Event::Json(value);
                }
                other => return other,
            }
        }
    }

    /// The next thing that happens on the socket, frames as sent.
    pub fn next_raw(&mut self) -> Event {
        loop {
            match self.ws.read() {
                Ok(Message::Text(text)) => {
                    let value = serde_json::from_str(&text).expect("server sends JSON");
                    return Event::Json(value);
                }
                Ok(Message::Close(frame)) => return Event::Closed(frame),
                Ok(Message::Binary(_)) => panic!("server sent a binary frame"),
                Ok(_) => continue,
                Err(e) => return Event::Error(e.to_string()),
            }
        }
    }

    /// Queues a `presence` frame's news as `join`s, then `leave`s.
    fn expand(&mut self, presence: &Value) {
        for (list, kind) in [("joined", "join"), ("left", "leave")] {
            for user in presence[list].as_array().into_iter().flatten() {
                if user.as_str() != self.me.as_deref() {
                    let room = &presence["room"];
                    let news = serde_json::json!({ "type": kind, "room": room, "user": user });
                    self.pending.push_back(news);
                }
            }
        }
    }

    /// Reads until the server closes, returning the close code and every
    /// JSON message that came before it.
    pub fn until_close(&mut self) -> (u16, Vec<Value>) {
        let mut before = Vec::new();
        loop {
            match self.next() {
                Event::Json(value) => before.push(value),
                Event::Closed(Some(frame)) => return (frame.code.into(), before),
                other => panic!("expected a close frame, got {other:?} after {before:?}"),
            }
        }
    }
}

#[derive(Debug)]
pub enum Event {
    Json(Value),
    Closed(Option<CloseFrame>),
    Error(String),
}

/// A file under the temp dir, unique to this process, test and call,
/// removed when dropped.
pub struct TempFile(std::path::PathBuf);

impl TempFile {
    pub fn new(test: &str, contents: &str) -> TempFile {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "jwtchat-test-{}-{test}-{n}.json",
            std::process::id()
        ));
        std::fs::write(&path, contents).expect("write temp file");
        TempFile(path)
    }

    /// A users file `{"users": users}`.
    pub fn users(test: &str, users: Value) -> TempFile {
        TempFile::new(test, &serde_json::json!({ "users": users }).to_string())
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A `POST /auth` with JSON credentials, on a connection that closes after.
pub fn login_request(user: &str, password: &str) -> Vec<u8> {
    let body = serde_json::json!({ "username": user, "password": password }).to_string();
    format!(
        "POST /auth HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A response read off the wire.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Asserts this is `429 rate_limited` with a `Retry-After` of 1 to 60
    /// seconds (every limit here counts over a minute at most).
    pub fn assert_rate_limited(&self) {
        assert_eq!(self.status, 429, "{}", self.text());
        assert_eq!(self.json()["error"], "rate_limited");
        let retry: u64 = self
            .header("Retry-After")
            .expect("Retry-After")
            .parse()
            .expect("whole seconds");
        assert!((1..=60).contains(&retry), "Retry-After {retry}");
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }
}

/// Connects, sends `raw` as it is, and reads one response.
pub fn send_raw(addr: SocketAddr, raw: &[u8]) -> RawResponse {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
    stream.write_all(raw).expect("send request");
    read_response(&mut stream, false)
}

/// Reads one response from `stream`. With `head_only`, the body is not
/// expected even if `Content-Length` says how long it would be.
pub fn read_response(stream: &mut TcpStream, head_only: bool) -> RawResponse {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => buf.push(byte[0]),
            // A signal meant for another test's child (the pty test's
            // Ctrl-C) interrupted the read: read again.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            other => panic!(
                "connection ended mid-head ({other:?}): {:?}",
                String::from_utf8_lossy(&buf)
            ),
        }
    }
    let head = String::from_utf8(buf).expect("ASCII head");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut response = RawResponse {
        status,
        headers,
        body: Vec::new(),
    };
    let length: usize = response
        .header("Content-Length")
        .map(|l| l.parse().expect("numeric Content-Length"))
        .unwrap_or(0);
    if !head_only && status != 101 {
        response.body = vec![0; length];
        stream.read_exact(&mut response.body).expect("body");
    }
    response
}

pub fn get(addr: SocketAddr, path: &str) -> RawResponse {
    send_raw(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

pub fn post_json(addr: SocketAddr, path: &str, body: &str) -> RawResponse {
    post(addr, path, "application/json", body)
}

pub fn post(addr: SocketAddr, path: &str, content_type: &str, body: &str) -> RawResponse {
    send_raw(
        addr,
        format!(
            "POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: {content_type}\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
}

/// A well-formed upgrade request for `/ws` with extra header lines.
pub fn upgrade_request(target: &str, extra: &str) -> String {
    format!(
        "GET {target} HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// True if the server closed the connection (EOF or reset) within
/// [`PATIENCE`], reading and discarding anything it sent first.
pub fn closed_by_server(stream: &mut TcpStream) -> bool {
    stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
    let mut sink = [0u8; 1024];
    loop {
        match stream.read(&mut sink) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// Connects to `addr` from another loopback address (`127.0.0.N`), as a
/// second client machine would.
pub fn connect_from(source: std::net::Ipv4Addr, addr: SocketAddr) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    socket
        .bind(&SocketAddr::from((source, 0)).into())
        .expect("bind a loopback source address");
    socket.connect(&addr.into()).expect("connect");
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
    stream
}

/// Sends `raw` from `source` and reads one response.
pub fn send_raw_from(source: std::net::Ipv4Addr, addr: SocketAddr, raw: &[u8]) -> RawResponse {
    let mut stream = connect_from(source, addr);
    stream.write_all(raw).expect("send request");
    read_response(&mut stream, false)
}

/// The real `jwtchat` binary as a child process, killed when dropped. Its stderr is read line by line
/// on a thread and forwarded over a channel.
pub struct Binary {
    pub child: Child,
    pub lines: Receiver<String>,
    /// Every stderr line seen so far.
    pub seen: Vec<String>,
}

impl Binary {
    pub fn spawn(command: &mut Command) -> Binary {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the jwtchat binary");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Binary {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for the `listening on` line and returns the address in it.
    pub fn wait_listening(&mut self) -> SocketAddr {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match self.lines.recv_timeout(left) {
                Ok(line) => line,
                Err(e) => panic!(
                    "no `listening on` line ({e}); status {:?}; stderr so far: {:#?}",
                    self.child.try_wait(),
                    self.seen
                ),
            };
            self.seen.push(line.clone());
            if let Some((_, url)) = line.split_once("listening on http://127.0.0.1:") {
                let port: u16 = url.trim().parse().unwrap_or_else(|_| panic!("{line:?}"));
                assert_ne!(port, 0, "{line:?}");
                return SocketAddr::from(([127, 0, 0, 1], port));
            }
        }
    }

    pub fn any_line_contains(&self, needle: &str) -> bool {
        self.seen.iter().any(|l| l.contains(needle))
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An epoch as the docs show it: 12 hex digits, like a real one, so every
/// length in a frame stays true.
pub const SHOWN_EPOCH: &str = "5e8a1f03c2d7";

/// `text` with every `"epoch":"…"` value replaced by [`SHOWN_EPOCH`] (the
/// same length): a generated doc must not change with each run's epoch.
pub fn fixed_epochs(text: &str) -> String {
    const KEY: &str = "\"epoch\":\"";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(KEY) {
        out.push_str(&rest[..i + KEY.len()]);
        rest = &rest[i + KEY.len()..];
        let end = rest.find('"').unwrap_or(rest.len());
        assert_eq!(
            end,
            SHOWN_EPOCH.len(),
            "an epoch is 12 hex digits: {:?}",
            &rest[..end]
        );
        out.push_str(SHOWN_EPOCH);
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}
