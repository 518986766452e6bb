//! `peer-epoll`: the floor for the benchmark, one thread and one epoll loop
//! that does nothing but the fan-out.
//!
//! ```text
//! ./target/release/examples/peer-epoll --bind 127.0.0.1:3300 --secret-file secret
//! ```
//!
//! The same protocol as `peer-tokio` (and the part of jwtchat's the load
//! generator sees): `GET /ws?token=JWT` checked before the upgrade, a
//! `welcome`, and every chat message framed once and written to every
//! client with one non-blocking `write` each, in one `seq` order. No
//! thread wakes another, nothing is queued unless a socket is full, there
//! is no lock, no presence, no limit: the time a broadcast takes here is
//! what the kernel's TCP path costs, the figure no server on these sockets
//! can beat. It trusts its clients (a frame is read only once whole, but
//! sizes are not bounded): a measuring tool, not a server.

#[path = "peer/mod.rs"]
mod peer;

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::process::ExitCode;

use jsonwebtoken::DecodingKey;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use peer::Outgoing;

const USAGE: &str = "usage: peer-epoll --bind HOST:PORT --secret-file FILE";
const LISTENER: Token = Token(usize::MAX);

/// One client.
struct Client {
    stream: TcpStream,
    /// Bytes read and not yet handled: the request head, then frames.
    input: Vec<u8>,
    /// Bytes the socket did not take yet (it was full).
    output: Vec<u8>,
    /// `None` until the upgrade.
    user: Option<String>,
}

struct Floor {
    poll: Poll,
    clients: HashMap<Token, Client>,
    key: DecodingKey,
    seq: u64,
    next_token: usize,
}

fn main() -> ExitCode {
    let (bind, key) = match peer::parse_args(USAGE) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("peer-epoll: {e}");
            return ExitCode::from(2);
        }
    };
    match serve(bind, key) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("peer-epoll: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(bind: std::net::SocketAddr, key: DecodingKey) -> io::Result<()> {
    let mut listener = TcpListener::bind(bind)?;
    println!("peer-epoll listening on {}", listener.local_addr()?);
    let poll = Poll::new()?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    let mut floor = Floor {
        poll,
        clients: HashMap::new(),
        key,
        seq: 0,
        next_token: 0,
    };
    let mut events = Events::with_capacity(1024);
    loop {
        floor.poll.poll(&mut events, None)?;
        for event in events.iter() {
            if event.token() == LISTENER {
                floor.accept(&listener);
                continue;
            }
            if event.is_writable() {
                floor.flush(event.token());
            }
            if event.is_readable() {
                floor.read(event.token());
            }
        }
    }
}

impl Floor {
    fn accept(&mut self, listener: &TcpListener) {
        while let Ok((mut stream, _)) = listener.accept() {
            let _ = stream.set_nodelay(true);
            let token = Token(self.next_token);
            self.next_token += 1;
            if self
                .poll
                .registry()
                .register(&mut stream, token, Interest::READABLE)
                .is_ok()
            {
                let client = Client {
                    stream,
                    input: Vec::new(),
                    output: Vec::new(),
                    user: None,
                };
                self.clients.insert(token, client);
            }
        }
    }

    /// Reads what a client sent and handles every whole request or frame.
    fn read(&mut self, token: Token) {
        let Some(client) = self.clients.get_mut(&token) else {
            return;
        };
        let mut chunk = [0u8; 16 * 1024];
        let open = loop {
            match client.stream.read(&mut chunk) {
                Ok(0) => break false,
                Ok(n) => client.input.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break false,
            }
        };
        if !open {
            self.clients.remove(&token);
            return;
        }
        if client.user.is_none() {
            self.handshake(token);
        } else {
            self.frames(token);
        }
    }

    /// RFC 6455 §4.2: the upgrade, once the whole request head is in.
    fn handshake(&mut self, token: Token) {
        let Some(client) = self.clients.get_mut(&token) else {
            return;
        };
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut request = httparse::Request::new(&mut headers);
        let Ok(httparse::Status::Complete(len)) = request.parse(&client.input) else {
            return;
        };
        let query = request
            .path
            .and_then(|p| p.split_once('?'))
            .map_or("", |(_, q)| q);
        let key = request
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("sec-websocket-key"))
            .map(|h| h.value);
        let user = peer::token_user(query, &self.key);
        let (Some(user), Some(key)) = (user, key) else {
            let _ = client
                .stream
                .write_all(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n");
            self.clients.remove(&token);
            return;
        };
        let mut response = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\n\r\n",
            tungstenite::handshake::derive_accept_key(key)
        )
        .into_bytes();
        response.extend(frame(Outgoing::Welcome { user: &user }.json().as_bytes()));
        client.input.drain(..len);
        client.user = Some(user);
        self.send(token, &response);
    }

    /// Handles every whole client frame (RFC 6455 §5.2; masked, unfragmented).
    fn frames(&mut self, token: Token) {
        loop {
            let Some(client) = self.clients.get_mut(&token) else {
                return;
            };
            let Some((opcode, payload, len)) = client_frame(&client.input) else {
                return;
            };
            client.input.drain(..len);
            match opcode {
                0x1 => {
                    if let Some(text) = peer::chat_text(&payload) {
                        let from = client.user.clone().unwrap_or_default();
                        self.seq += 1;
                        let bytes = frame(Outgoing::message(self.seq, &from, &text).as_bytes());
                        self.broadcast(&bytes);
                    }
                }
                0x8 => {
                    self.clients.remove(&token);
                    return;
                }
                _ => {}
            }
        }
    }

    /// One frame to every upgraded client.
    fn broadcast(&mut self, bytes: &[u8]) {
        let tokens: Vec<Token> = self.clients.keys().copied().collect();
        for token in tokens {
            if self.clients.get(&token).is_some_and(|c| c.user.is_some()) {
                self.send(token, bytes);
            }
        }
    }

    /// Writes now what the socket takes; keeps the rest until it is writable.
    fn send(&mut self, token: Token, bytes: &[u8]) {
        let Some(client) = self.clients.get_mut(&token) else {
            return;
        };
        if !client.output.is_empty() {
            client.output.extend_from_slice(bytes);
            return;
        }
        let written = match client.stream.write(bytes) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(_) => {
                self.clients.remove(&token);
                return;
            }
        };
        if written < bytes.len() {
            client.output.extend_from_slice(&bytes[written..]);
            let interest = Interest::READABLE | Interest::WRITABLE;
            let _ = self
                .poll
                .registry()
                .reregister(&mut client.stream, token, interest);
        }
    }

    /// The socket has room again: send what waited.
    fn flush(&mut self, token: Token) {
        let Some(client) = self.clients.get_mut(&token) else {
            return;
        };
        while !client.output.is_empty() {
            match client.stream.write(&client.output) {
                Ok(n) => {
                    client.output.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    self.clients.remove(&token);
                    return;
                }
            }
        }
        let _ = self
            .poll
            .registry()
            .reregister(&mut client.stream, token, Interest::READABLE);
    }
}

/// An unmasked server text frame.
fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 10);
    out.push(0x81);
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n if n <= 0xffff => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
    out
}

/// The first whole masked client frame in `buf`: its opcode, unmasked
/// payload and length on the wire.
fn client_frame(buf: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    let opcode = buf.first()? & 0x0f;
    let (len, at) = match buf.get(1)? & 0x7f {
        126 => (u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?]) as usize, 4),
        127 => (
            u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize,
            10,
        ),
        n => (n as usize, 2),
    };
    let mask: [u8; 4] = buf.get(at..at + 4)?.try_into().ok()?;
    let payload = buf.get(at + 4..at + 4 + len)?;
    let unmasked = payload
        .iter()
        .enumerate()
        .map(|(i, b)| b ^ mask[i % 4])
        .collect();
    Some((opcode, unmasked, at + 4 + len))
}
