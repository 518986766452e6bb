//! One client's life after the `101`: this thread reads; the client's
//! [`Outbox`] writes.
//!
//! ```text
//!            ┌──────────── reader (this thread) ─────┐
//!  socket ──►│ tungstenite: frames, UTF-8, limits    │──► room.broadcast
//!            │ protocol::decode                      │
//!            └──────────┬────────────────────────────┘
//!                       │ pongs, close echoes, notices
//!                       ▼
//!  room fan-out ───► Outbox ──(non-blocking send)──► socket
//!                      └──(only when behind: a writer thread)──► socket
//! ```
//!
//! `tungstenite` is given a stream whose read half is the socket and whose
//! write half is the client's [`Outbox`], so even the pongs it sends on its
//! own take their turn with everything else (RFC 6455 §5.5.2: a Ping "MUST"
//! get a Pong).
//!
//! # Memory
//!
//! A client is mostly idle, and an idle client costs what its thread keeps
//! resident while it waits in `read`: about 14.6 KiB at N=1000 (README,
//! "Performance"). Where that goes, and what keeps it there:
//!
//! - **Stack, 2 pages (8 KiB).** The top 4.4 KiB are glibc's before any
//!   Rust runs (the thread descriptor, static TLS, `start_thread`); the
//!   waiting reader's frames take about 2.5 KiB more. The handshake went
//!   some 15 KiB deeper (HTTP parsing, the token's HMAC and JSON, the
//!   welcome): those pages are given back
//!   ([`crate::sys::release_stack_below_caller`]) before the read loop
//!   starts, and again after a `reauth`. For that to leave little, the
//!   session runs from a shallow frame (the HTTP phase returns its
//!   [`Upgraded`] connection rather than calling [`run`]), and what is rare
//!   or big ([`on_text`], [`drain`]) is kept out of the frames that stay.
//! - **Heap, about 6 KiB.** `tungstenite`'s read buffer ([`READ_BUFFER`],
//!   all of it written on every read); the outbox, the room's entry, the
//!   name; glibc's per-thread cache (its table, and the small blocks the
//!   handshake freed, which only this thread can reuse: about 3.5 KiB,
//!   see the README for turning it off).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Instant;

use tungstenite::protocol::{Role, WebSocketConfig};
use tungstenite::{Error as WsError, Message, WebSocket};

use crate::Shared;
use crate::access::RoomName;
use crate::auth::Claims;
use crate::clock::Clock;
use crate::close::CloseReason;
use crate::frame::{self, HeaderScanner};
use crate::limits::{MessageRate, Verdict};
use crate::metrics;
use crate::outbox::{self, Outbox, OutboxWriter, QueueLimit};
use crate::protocol::{self, ErrorCode, Incoming, Outgoing, Rejected, Since, close_code};
use crate::room::{Client, Fanout, Refused, Room};
use crate::rooms::{Member, RoomError};

/// `tungstenite`'s read buffer per connection. Every byte of it is written
/// (zeroed) on each read, so it is resident for as long as the client is
/// connected. Chat frames are small; a larger one simply takes more reads
/// (the buffer grows to hold a frame whole, up to the frame limit).
const READ_BUFFER: usize = 1024;

/// The stream `tungstenite` works on: reads from the socket, writes into the
/// outbox. The socket is shared with the writer thread through an `Arc`
/// (std implements `Read` and `Write` for `&TcpStream`), so a client costs
/// one file descriptor, not two.
///
/// Reading also meters: `tungstenite` consumes continuation frames, and
/// answers pings, without returning to us, so an endless run of empty
/// fragments would never meet the message rate. The read side sees every
/// frame header go by and charges those frames to the rate here.
struct Duplex<'a> {
    read: Arc<TcpStream>,
    write: OutboxWriter,
    /// This connection's message rate (`None`: no limit).
    rate: Option<MessageRate<'a>>,
    /// The rate's time.
    clock: Clock,
    scanner: HeaderScanner,
    /// Data messages `tungstenite` has handed to the session so far; the
    /// scanner's count less this is how many more it already holds whole.
    taken: u64,
}

/// The read error that ends a connection whose frames exceeded the rate.
#[derive(Debug)]
struct RateExceeded;

impl std::fmt::Display for RateExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("message rate exceeded")
    }
}

impl std::error::Error for RateExceeded {}

impl Duplex<'_> {
    /// Judges one text message against the rate (`None`: no limit).
    fn judge_message(&mut self) -> Option<Verdict> {
        let now = self.clock.instant();
        self.rate.as_mut().map(|rate| rate.judge(now))
    }

    /// Charges each frame in `bytes` that starts no message to the rate.
    /// Such a frame cannot be refused on its own (it is part of a message,
    /// or a ping that must get its pong), so over the rate it only uses up
    /// patience, and a client that runs out of it is disconnected.
    fn meter(&mut self, bytes: &[u8]) -> io::Result<()> {
        let now = self.clock.instant();
        let mut exceeded = false;
        let rate = &mut self.rate;
        self.scanner.feed(bytes, |opcode| {
            if let Some(rate) = rate
                && frame::starts_no_message(opcode)
                && rate.judge(now) == Verdict::Disconnect
            {
                exceeded = true;
            }
        });
        if exceeded {
            return Err(io::Error::other(RateExceeded));
        }
        Ok(())
    }
}

impl Duplex<'_> {
    /// `tungstenite` handed over one more data message.
    fn took_message(&mut self) {
        self.taken += 1;
    }

    /// `tungstenite` already holds another whole data message, so the next
    /// read returns it without waiting on the socket.
    fn holds_whole_message(&self) -> bool {
        self.scanner.whole_messages() > self.taken
    }
}

impl Read for Duplex<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (&*self.read).read(buf)?;
        self.meter(&buf[..n])?;
        Ok(n)
    }
}

impl Write for Duplex<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.write.flush()
    }
}

/// How a session ended, for the log.
enum End {
    /// The client sent a close frame.
    ClientClosed(Option<u16>),
    /// The connection dropped, or the server had closed it (expiry, slow).
    Dropped,
    /// The server closed it for a protocol reason, with this code.
    Refused(u16),
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::ClientClosed(Some(code)) => write!(f, "client closed, code {code}"),
            End::ClientClosed(None) => write!(f, "client closed"),
            End::Dropped => write!(f, "connection ended"),
            End::Refused(code) => write!(f, "closed by server, code {code}"),
        }
    }
}

/// Who this connection is, and the rooms it is in.
struct Me<'a> {
    /// The token's subject: a `reauth` must be for the same user.
    sub: &'a str,
    username: &'a str,
    member: Member,
}

/// Takes the client out of every room when the session ends, however it
/// ends (a panic included), so nobody stays "online" forever.
struct Membership<'a> {
    shared: &'a Shared,
    me: Me<'a>,
}

impl Drop for Membership<'_> {
    fn drop(&mut self) {
        self.shared.rooms.disconnect(&self.me.member);
    }
}

/// A connection that passed the WebSocket handshake (`routes::upgrade`):
/// what the session needs from the HTTP phase, and nothing more.
pub struct Upgraded {
    pub stream: TcpStream,
    /// Bytes read past the upgrade request (a client may send its first
    /// frame without waiting for the 101).
    pub leftover: Vec<u8>,
    pub claims: Claims,
    pub peer: SocketAddr,
    /// Where the client's view of `general` ends (`/ws?since=` or
    /// `Jwtchat-Since`): its `welcome` resumes from there.
    pub since: Option<Since>,
}

/// Runs a session to its end.
pub fn run(shared: &Shared, upgraded: Upgraded) {
    let Upgraded {
        stream,
        leftover,
        claims,
        peer,
        since,
    } = upgraded;
    // Only these claims are needed from here on; the rest (issuer,
    // fingerprint) is dropped rather than kept for the session's life.
    let Claims {
        sub,
        username,
        exp,
        rooms,
        ..
    } = claims;
    // The HTTP phase set a read timeout; a chat can be quiet for as long as
    // the token lasts (the sweep ends it at expiry).
    let _ = stream.set_read_timeout(None);
    let _ = stream.set_nodelay(true);
    let stream = Arc::new(stream);
    let config = &shared.config;
    let limit = QueueLimit {
        frames: config.client_queue_frames,
        bytes: config.client_queue_bytes,
    };
    let outbox = Outbox::new(limit, stream.clone(), shared.rooms.reaper().clone());
    let username: Arc<str> = username.into();
    // A conformance suite floods on purpose: no rate in echo mode.
    let rate = (!config.echo)
        .then(|| {
            let shared_budgets = shared
                .message_budgets
                .as_ref()
                .map(|budgets| (budgets, username.clone(), peer.ip()));
            MessageRate::new(
                config.message_rate,
                config.message_burst,
                shared_budgets,
                config.clock.instant(),
            )
        })
        .flatten();
    let mut duplex = Duplex {
        read: stream,
        write: OutboxWriter::new(outbox.clone()),
        rate,
        clock: config.clock.clone(),
        scanner: HeaderScanner::default(),
        taken: 0,
    };
    // The bytes read with the request are frames too; the scanner must see
    // them to stay in step with the stream.
    let _ = duplex.meter(&leftover);
    let mut ws = WebSocket::from_partially_read(
        duplex,
        read_buffer(leftover),
        Role::Server,
        Some(ws_config(shared.config.frame_limit())),
    );

    metrics::inc(&shared.metrics().websocket_connections);
    let (end, who) = if shared.config.echo {
        // A conformance suite expects nothing but its own echoes: no room,
        // no welcome, no presence.
        crate::info!("echo client connected from {peer}");
        crate::sys::release_stack_below_caller();
        (echo_loop(&mut ws, &outbox), format!("echo client {peer}"))
    } else {
        let client = Arc::new(Client::new(username.clone(), exp, outbox.clone()));
        let access = shared.rooms.access(username.clone(), &rooms);
        drop(rooms);
        let member = shared.rooms.connect(client, access, since.as_ref());
        drop(since);
        let id = member.id;
        let mut membership = Membership {
            shared,
            me: Me {
                sub: &sub,
                username: &username,
                member,
            },
        };
        crate::info!("client {id} connected: {username:?} from {peer}");
        // The deep work is done (the handshake's parsing and HMAC, the
        // welcome's JSON): what its stack pages hold is dead, and the
        // client may now be quiet for hours. See the module docs.
        crate::sys::release_stack_below_caller();
        let end = read_loop(shared, &mut ws, &outbox, &mut membership.me);
        drop(membership);
        (end, format!("client {id} ({username:?})"))
    };
    if matches!(end, End::Refused(_)) {
        drain(&ws.get_ref().read);
    }
    // The room may have closed the connection (expiry, slow consumer)
    // while this thread was reading: say so in the log, with its code.
    let end = match (end, outbox.close_code()) {
        (End::Dropped | End::ClientClosed(_), Some(code)) => End::Refused(code),
        (end, _) => end,
    };
    // A close echo tungstenite still holds goes out before the writer stops.
    let _ = ws.flush();
    outbox.finish();
    crate::info!("{who} disconnected: {end}");
}

/// The allocation `tungstenite` reads into, holding `leftover`: exactly
/// [`READ_BUFFER`] bytes (more only if `leftover` is longer). The HTTP
/// phase's buffer would do, but its capacity is whatever the request
/// happened to need, and `tungstenite` grows a short one to twice its size.
fn read_buffer(leftover: Vec<u8>) -> Vec<u8> {
    let mut buffer = Vec::with_capacity(READ_BUFFER.max(leftover.len()));
    buffer.extend_from_slice(&leftover);
    buffer
}

/// Every limit set deliberately (tungstenite's defaults allocate 128 KiB per
/// connection up front and never bound the write buffer).
fn ws_config(frame_limit: usize) -> WebSocketConfig {
    let mut config = WebSocketConfig::default();
    config.read_buffer_size = READ_BUFFER;
    // Write straight through to the outbox, which does the buffering.
    config.write_buffer_size = 0;
    // Only control frames are written through tungstenite (≤ 127 bytes);
    // this must exceed write_buffer_size.
    config.max_write_buffer_size = 4 * 1024;
    config.max_frame_size = Some(frame_limit);
    config.max_message_size = Some(frame_limit);
    // RFC 6455 §5.1: a server MUST close on an unmasked client frame.
    config.accept_unmasked_frames = false;
    config
}

/// Reads frames until the connection ends.
///
/// A chat message whose sender's next message has already arrived whole is
/// held for the room's next fan-out ([`Fanout::Held`]): under load, a
/// burst then leaves in one system call per client rather than one per
/// message. What is held is released ([`Held::release`]) before any read
/// that could wait, before this session writes anything to its own client,
/// and before it ends, so holding never delays a message behind the
/// client's silence. Released means fanned out, or taken by the fan-out
/// another thread is running; in the first case the client sees its
/// messages before the answers to what followed them, in the second it may
/// not, as without holding.
fn read_loop(
    shared: &Shared,
    ws: &mut WebSocket<Duplex<'_>>,
    outbox: &Arc<Outbox>,
    me: &mut Me<'_>,
) -> End {
    let mut held = Held { rooms: Vec::new() };
    let end = loop {
        if !ws.get_ref().holds_whole_message() {
            held.release();
        }
        let message = match ws.read() {
            Ok(message) => message,
            Err(error) => {
                held.release();
                break refuse_on_error(outbox, error);
            }
        };
        // The room may have closed this connection (expiry, slow consumer)
        // while we waited: after its close frame, the client's data counts
        // for nothing (§5.5.1).
        if outbox.is_closing() {
            held.release();
            break closed_by_room(outbox);
        }
        if let Message::Text(text) = &message {
            ws.get_mut().took_message();
            match on_text(shared, ws, outbox, me, text, &mut held) {
                Step::Next => continue,
                Step::End(end) => break end,
            }
        }
        held.release();
        match message {
            Message::Binary(_) => break refuse(outbox, CloseReason::binary_refused()),
            Message::Close(frame) => break End::ClientClosed(frame.map(|f| f.code.into())),
            // tungstenite answers pings itself (through the outbox).
            _ => {}
        }
    };
    held.release();
    end
}

/// The rooms this session gave chat messages with [`Fanout::Held`] that
/// may not have gone out yet.
struct Held {
    rooms: Vec<Arc<Room>>,
}

impl Held {
    /// A message to `room` was held.
    fn hold(&mut self, room: &Arc<Room>) {
        if !self.rooms.iter().any(|held| Arc::ptr_eq(held, room)) {
            self.rooms.push(room.clone());
        }
    }

    /// Sends what is held (or leaves it to a fan-out already under way).
    fn release(&mut self) {
        for room in self.rooms.drain(..) {
            room.flush_pending();
        }
    }
}

/// A panic in the read loop (caught in `server::serve_connection`) must
/// not leave the rooms' next messages waiting for somebody else's.
impl Drop for Held {
    fn drop(&mut self) {
        self.release();
    }
}

/// What [`on_text`] leaves the read loop to do.
enum Step {
    /// Read the next message.
    Next,
    /// The session is over.
    End(End),
}

/// One text message: a chat line, a `reauth`, or something to refuse.
/// Never inlined: its locals (the decoded message, the JSON it builds)
/// would otherwise sit in the frame of [`read_loop`], which stays on the
/// stack for the whole session.
#[inline(never)]
fn on_text(
    shared: &Shared,
    ws: &mut WebSocket<Duplex<'_>>,
    outbox: &Arc<Outbox>,
    me: &mut Me<'_>,
    text: &str,
    held: &mut Held,
) -> Step {
    // Decoded first, so that a refusal can name the message it refuses
    // (its `id`).
    let decoded = protocol::decode(text, shared.config.max_message_bytes);
    let id = match &decoded {
        Ok(Incoming::Chat { id, .. }) | Err(Rejected { id, .. }) => id.as_deref(),
        Ok(Incoming::Reauth(_) | Incoming::Subscribe { .. } | Incoming::Unsubscribe(_)) => None,
    };
    // Every text frame counts against the rate, whatever it holds: a flood
    // of bad messages or reauths is a flood too.
    let verdict = ws.get_mut().judge_message();
    let accepted_chat = matches!(decoded, Ok(Incoming::Chat { .. }))
        && matches!(verdict, None | Some(Verdict::Accept));
    if !accepted_chat {
        // An answer to this message must not overtake the ones before it.
        held.release();
    }
    match verdict {
        None | Some(Verdict::Accept) => {}
        Some(Verdict::Refuse) => {
            notify(
                outbox,
                ErrorCode::RateLimited,
                "too many messages: slow down",
                id,
            );
            return Step::Next;
        }
        Some(Verdict::Disconnect) => {
            return Step::End(refuse(outbox, CloseReason::rate_exceeded()));
        }
    }
    match decoded {
        Ok(Incoming::Chat { text, id, room }) => {
            let id = id.as_deref();
            let Some(joined) = room_to_speak_in(shared, outbox, me, &room, id, held) else {
                return Step::Next;
            };
            // The other user sees a DM live, opened or not.
            shared.rooms.bring_in(&room, me.username, true);
            let room = joined;
            let fanout = if ws.get_ref().holds_whole_message() {
                Fanout::Held
            } else {
                Fanout::Now
            };
            let sent = room.broadcast(me.member.id, me.username, &text, id, fanout);
            match sent {
                Ok(_) if fanout == Fanout::Held => held.hold(&room),
                Ok(_) => {}
                Err(_) => held.release(),
            }
            match sent {
                Ok(_) => {}
                // Evicted (expired) meanwhile: nothing more from it.
                Err(Refused::Gone) => return Step::End(closed_by_room(outbox)),
                // Everyone together is sending faster than the room fans
                // out: this sender must wait.
                Err(Refused::Busy) => notify(
                    outbox,
                    ErrorCode::RateLimited,
                    "the room is busy: slow down and send it again",
                    id,
                ),
                // Redis is away: the client should know, not wait for a
                // message that is not coming.
                Err(Refused::Unavailable(why)) => notify(
                    outbox,
                    ErrorCode::Unavailable,
                    &format!("could not send the message: {why}"),
                    id,
                ),
            }
        }
        Ok(Incoming::Subscribe { room, since }) => {
            if let Err(refused) = shared.rooms.subscribe(&me.member, &room, since.as_ref()) {
                notify_about(
                    outbox,
                    refused.code(),
                    &refused.to_string(),
                    None,
                    Some(&room),
                );
            }
        }
        Ok(Incoming::Unsubscribe(room)) => {
            shared.rooms.unsubscribe(&me.member, room.as_str());
            unsubscribed(outbox, room.as_str(), None);
        }
        Ok(Incoming::Reauth(token)) => {
            reauth(shared, outbox, me, &token);
            // Checking a token (its HMAC, its JSON) is the deepest work a
            // session does, once per token lifetime: give those pages back
            // too, or every long session would keep them.
            crate::sys::release_stack_below_caller();
        }
        Err(rejected) => notify(
            outbox,
            rejected.error.code(),
            &rejected.to_string(),
            rejected.id.as_deref(),
        ),
    }
    Step::Next
}

/// The room a chat message goes to: one this connection is in, or a DM
/// room it may join, which its first message joins it to (answered with
/// `subscribed` before the message). Anything else is answered with an
/// error, and `None`.
fn room_to_speak_in(
    shared: &Shared,
    outbox: &Arc<Outbox>,
    me: &Me<'_>,
    room: &RoomName,
    id: Option<&str>,
    held: &mut Held,
) -> Option<Arc<Room>> {
    if let Some(joined) = me.member.client.room(room.as_str()) {
        return Some(joined);
    }
    // The answer (`subscribed` or an error) must not overtake the messages
    // before it.
    held.release();
    let refused = if room.is_dm() {
        match shared.rooms.subscribe(&me.member, room, None) {
            Ok(joined) => return Some(joined),
            Err(refused) => refused,
        }
    } else {
        RoomError::NotSubscribed
    };
    notify_about(outbox, refused.code(), &refused.to_string(), id, Some(room));
    None
}

/// Tells this client it has left `room` (`reason`: why, when it did not
/// ask).
fn unsubscribed(outbox: &Arc<Outbox>, room: &str, reason: Option<&str>) {
    let _ = outbox.push(Outgoing::Unsubscribed { room, reason }.frame());
}

/// Echo mode (a test aid for conformance suites): reads until the
/// connection ends, sending every data message back to its sender only.
fn echo_loop(ws: &mut WebSocket<Duplex<'_>>, outbox: &Arc<Outbox>) -> End {
    loop {
        match ws.read() {
            Ok(message) => {
                if let Some(end) = echo(outbox, message) {
                    return end;
                }
            }
            Err(error) => return refuse_on_error(outbox, error),
        }
    }
}

/// One message in echo mode: data goes back unchanged.
fn echo(outbox: &Arc<Outbox>, message: Message) -> Option<End> {
    let frame = match message {
        Message::Text(text) => frame::text(&text),
        Message::Binary(data) => frame::binary(&data),
        Message::Close(frame) => return Some(End::ClientClosed(frame.map(|f| f.code.into()))),
        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => return None,
    };
    if outbox.push(frame).is_err() {
        return Some(refuse(outbox, CloseReason::slow_consumer()));
    }
    None
}

/// `{"type":"reauth","token":..}`: a fresh token for the same user, still
/// current in the users file (the same rule as `/auth/refresh`), moves this
/// connection's expiry; anything else leaves it as it was.
fn reauth(shared: &Shared, outbox: &Arc<Outbox>, me: &mut Me<'_>, token: &str) {
    let accounts = &shared.accounts;
    let claims = match accounts.tokens.verify_current(token, &accounts.users) {
        Ok(claims) if claims.sub == me.sub => claims,
        Ok(_) => {
            return notify(
                outbox,
                ErrorCode::BadToken,
                "the token is for another user",
                None,
            );
        }
        Err(reason) => {
            shared.metrics().token_rejected(reason);
            return notify(
                outbox,
                ErrorCode::BadToken,
                &format!("the token is not valid ({})", reason.as_str()),
                None,
            );
        }
    };
    me.member.client.renew(claims.exp);
    crate::info!(
        "client {} renewed its token until {}",
        me.member.id,
        claims.exp
    );
    let _ = outbox.push(
        Outgoing::Reauthed {
            expires_at: claims.exp,
        }
        .frame(),
    );
    narrow_access(shared, outbox, me, &claims.rooms);
}

/// A renewed token's `rooms` claim replaces the old one: the connection
/// leaves each room the new one no longer allows (`unsubscribed` with
/// `"reason":"forbidden"`).
fn narrow_access(shared: &Shared, outbox: &Arc<Outbox>, me: &mut Me<'_>, claim: &[String]) {
    let access = me.member.access.with_claim(claim);
    let names: Vec<Arc<str>> = me
        .member
        .client
        .rooms()
        .rooms
        .iter()
        .map(|room| room.name().clone())
        .collect();
    for name in names {
        let allowed = RoomName::parse(&name).is_ok_and(|room| access.may_join(&room));
        if !allowed && shared.rooms.unsubscribe(&me.member, &name) {
            unsubscribed(outbox, &name, Some("forbidden"));
        }
    }
    me.member.access = access;
}

/// Tells this client (only) what was wrong, keeping the connection; `id`
/// names the client message it is about, if it had one.
fn notify(outbox: &Arc<Outbox>, code: ErrorCode, message: &str, id: Option<&str>) {
    notify_about(outbox, code, message, id, None);
}

/// [`notify`], about `room`.
fn notify_about(
    outbox: &Arc<Outbox>,
    code: ErrorCode,
    message: &str,
    id: Option<&str>,
    room: Option<&RoomName>,
) {
    let room = room.map(RoomName::as_str);
    // A full queue here means the room is evicting this client anyway.
    let _ = outbox.push(
        Outgoing::Error {
            code,
            message,
            id,
            room,
        }
        .frame(),
    );
}

/// Maps a read error to how the session ends: a protocol fault gets the
/// close code RFC 6455 §7.4.1 gives it; a dead connection gets nothing.
fn refuse_on_error(outbox: &Arc<Outbox>, error: WsError) -> End {
    use tungstenite::error::{CapacityError, ProtocolError};
    match error {
        WsError::Io(e) if e.get_ref().is_some_and(|e| e.is::<RateExceeded>()) => {
            refuse(outbox, CloseReason::rate_exceeded())
        }
        // The client vanished without a close frame: nothing to answer.
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => End::Dropped,
        WsError::Capacity(CapacityError::MessageTooLong { size, max_size }) => {
            refuse(outbox, CloseReason::too_big(Some((size, max_size))))
        }
        WsError::Capacity(_) => refuse(outbox, CloseReason::too_big(None)),
        WsError::Utf8(_) => refuse(outbox, CloseReason::invalid_utf8()),
        WsError::Protocol(e) => refuse(outbox, CloseReason::protocol_error(e.to_string())),
        _ => End::Dropped,
    }
}

/// After the server's own close frame, reads and discards until the client
/// closes too (or [`outbox::CLOSE_GRACE`] passes). Closing a socket that
/// still has unread bytes makes the kernel send a reset, which can destroy
/// the close frame before the client reads it. Never inlined: its 4 KiB
/// buffer must not be part of [`run`]'s frame, which is live all session.
#[inline(never)]
fn drain(mut stream: &TcpStream) {
    let deadline = Instant::now() + outbox::CLOSE_GRACE;
    let mut sink = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        // A zero timeout is an error: the grace period is over.
        if stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// The room has sent this client its close frame: end as if we had.
fn closed_by_room(outbox: &Outbox) -> End {
    End::Refused(outbox.close_code().unwrap_or(close_code::NORMAL))
}

/// Closes the connection from the server side.
fn refuse(outbox: &Arc<Outbox>, reason: CloseReason) -> End {
    outbox.close(&reason);
    End::Refused(reason.code)
}
