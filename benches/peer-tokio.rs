//! `peer-tokio`: the broadcast relay a Rust user would write instead of
//! jwtchat, on tokio and tokio-tungstenite, for side-by-side benchmarks.
//!
//! ```text
//! cargo build --release --examples
//! ./target/release/examples/peer-tokio --bind 127.0.0.1:3200 --secret-file secret
//! ./target/release/examples/jwtchat-load --url http://127.0.0.1:3200 \
//!     --secret-file secret --clients 1000 --messages 500
//! ```
//!
//! It speaks the part of jwtchat's protocol a load generator sees, with the
//! same JSON shapes: `GET /ws?token=JWT` (HS256 with the same secret, `exp`
//! checked with zero leeway, `401` before the upgrade otherwise), a
//! `{"type":"welcome","user":..}` first frame, and every
//! `{"type":"message","text":..}` broadcast to everyone as
//! `{"type":"message","seq":N,"from":..,"text":..,"ts":..}`, one `seq`
//! order for all. What it leaves out is what makes jwtchat a chat server
//! rather than a relay: logins, presence, history, rate limits, expiry
//! sweeps, queue limits per byte. That makes it a fair floor for the cost of
//! the fan-out itself: if jwtchat is as fast, its extras are free.
//!
//! The design is the usual one: a multi-threaded tokio runtime (one worker
//! per core), one task per client reading its socket, one
//! `tokio::sync::broadcast` channel that every client's writer task
//! subscribes to, and each frame encoded once and shared (`Utf8Bytes` is
//! reference-counted). A writer sends everything already queued before it
//! flushes, so a burst leaves in one system call. A client more than
//! `QUEUE` messages behind is closed, as jwtchat closes one that falls
//! behind. tungstenite's buffers are left at their defaults (a 128 KiB
//! read buffer per client), as such a relay would have them; that is most
//! of its memory per connection.

#[path = "peer/mod.rs"]
mod peer;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Mutex;

use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::DecodingKey;
use peer::Outgoing;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// Messages a client may be behind before it is closed.
const QUEUE: usize = 4096;

const USAGE: &str = "usage: peer-tokio --bind HOST:PORT --secret-file FILE";

/// The room: a broadcast channel and the next `seq`. The lock is held
/// while a message is numbered *and* queued, so `seq` order is queue order.
struct Room {
    seq: Mutex<u64>,
    tx: broadcast::Sender<Utf8Bytes>,
}

fn main() -> ExitCode {
    let (bind, key) = match peer::parse_args(USAGE) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("peer-tokio: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("peer-tokio: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(bind, key)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("peer-tokio: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(bind: SocketAddr, key: DecodingKey) -> std::io::Result<()> {
    let listener = TcpListener::bind(bind).await?;
    println!("peer-tokio listening on {}", listener.local_addr()?);
    let (tx, _) = broadcast::channel(QUEUE);
    let room: &'static Room = Box::leak(Box::new(Room {
        seq: Mutex::new(0),
        tx,
    }));
    let key: &'static DecodingKey = Box::leak(Box::new(key));
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            client(stream, room, key).await;
        });
    }
}

/// One client: check the token during the handshake, then relay.
// tungstenite's handshake callback returns its (large) `ErrorResponse`.
#[allow(clippy::result_large_err)]
async fn client(stream: TcpStream, room: &'static Room, key: &DecodingKey) {
    let mut user = None;
    let check = |request: &Request, response: Response| match peer::token_user(
        request.uri().query().unwrap_or(""),
        key,
    ) {
        Some(name) => {
            user = Some(name);
            Ok(response)
        }
        None => Err(refusal()),
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, check).await else {
        return;
    };
    let Some(user) = user else { return };
    let (mut sink, mut source) = ws.split();
    // Subscribe before the welcome, so nothing sent after it is missed.
    let mut rx = room.tx.subscribe();
    let welcome = Outgoing::Welcome { user: &user }.json();
    if sink.send(Message::text(welcome)).await.is_err() {
        return;
    }

    let writer = tokio::spawn(async move {
        loop {
            let frame = match rx.recv().await {
                Ok(frame) => frame,
                // Too far behind (or the room is gone): close, as jwtchat does.
                Err(_) => break,
            };
            if sink.feed(Message::Text(frame)).await.is_err() {
                return;
            }
            // Everything already queued goes out with one flush.
            while let Ok(frame) = rx.try_recv() {
                if sink.feed(Message::Text(frame)).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
        let _ = sink.close().await;
    });

    while let Some(Ok(message)) = source.next().await {
        if let Message::Text(json) = message
            && let Some(text) = peer::chat_text(json.as_bytes())
        {
            room.publish(&user, &text);
        }
    }
    writer.abort();
}

impl Room {
    fn publish(&self, from: &str, text: &str) {
        let mut seq = self.seq.lock().unwrap_or_else(|e| e.into_inner());
        *seq += 1;
        // No receivers is not an error for a relay.
        let _ = self
            .tx
            .send(Utf8Bytes::from(Outgoing::message(*seq, from, text)));
    }
}

fn refusal() -> ErrorResponse {
    let mut response = ErrorResponse::new(Some("invalid or expired token".into()));
    *response.status_mut() = StatusCode::UNAUTHORIZED;
    response
}
