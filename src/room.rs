//! The room: who is connected, and every broadcast to them.
//!
//! The pool is a `RwLock<HashMap<ClientId, Client>>`. Everything that must
//! reach clients *in one order* (messages with their `seq`, joins, leaves,
//! evictions) runs under one more lock, the [`Timeline`] mutex, taken before
//! the pool lock and never after it. That is what makes `seq` order the same
//! for everyone: two senders cannot interleave their fan-outs.
//!
//! A fan-out serialises and frames the message once, then for each client
//! compares the stored `exp` with the clock (no cryptography: the token was
//! verified at the handshake) and pushes the shared frame onto the client's
//! bounded queue. Nobody waits on a socket here. An expired client is sent
//! `token_expired` and closed with 4001 instead of receiving the message; a
//! client whose queue is full is closed with 4008. Both leave the pool at
//! once, and their `leave` goes out in the same order as everything else.
//!
//! With a [`Relay`] (`--redis`, see `crate::cluster`) the room is one of
//! several instances of one chat: a message is numbered and stored by the
//! relay, and comes back to every instance, this one included, through
//! [`Room::deliver`], which feeds the same fan-out. Presence then counts
//! users on the other instances too.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::auth::{is_expired, now_secs};
use crate::frame::{self, Frame};
use crate::metrics::{self, Metrics};
use crate::outbox::Outbox;
use crate::presence::Presence;
pub use crate::presence::RemotePresence;
use crate::protocol::{ErrorCode, Limits, Outgoing, TOKEN_EXPIRED_TEXT, close_code};

/// Identifies one connection (a user may have several).
pub type ClientId = u64;

/// A client is warned (`{"type":"expiring"}`) this long before its token
/// expires, once per token.
pub const EXPIRY_WARNING_SECS: u64 = 60;

/// What the room needs from a relay: the way to the other instances.
pub trait Relay: Send + Sync {
    /// Stores a chat message for every instance and returns its `seq`. The
    /// message is not fanned out here: it comes back through
    /// [`Room::deliver`] like everyone else's, with the sender's `id`. An error means it was not
    /// stored, or (if Redis's reply was lost) that it is not known whether
    /// it was: the sender must be told either way.
    fn publish(&self, from: &str, text: &str, id: Option<&str>) -> Result<u64, Unavailable>;
    /// `user` came online or went offline on this instance
    /// ([`Room::which_are_here`] says which, when the relay gets to it). Called
    /// under the room's lock: it must only take note, never wait.
    fn presence_changed(&self, user: &Arc<str>);
    /// Whether messages can be taken now, and if not, why.
    fn health(&self) -> Result<(), Unavailable>;
}

/// The relay cannot take messages now; the text says why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unavailable(pub String);

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Chat bytes waiting for a fan-out at most, by default. They are framed
/// once and shared by every client's queue, so this, not the number of
/// clients, is what a burst of messages costs while a fan-out runs.
pub const MAX_PENDING_BYTES: usize = 256 * 1024;

/// Why [`Room::broadcast`] did not take a message.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The sender has left the room, or was just evicted (expired token).
    Gone,
    /// Messages are arriving faster than they can be fanned out: the
    /// pending batch is full. The sender should slow down.
    Busy,
    /// The relay cannot take messages now (Redis unreachable).
    Unavailable(Unavailable),
}

/// A chat message numbered by the relay, on its way to this instance's
/// clients.
pub struct Delivery {
    pub seq: u64,
    pub from: String,
    pub text: String,
    /// Unix milliseconds, when the relay stored it.
    pub ts: u64,
    /// The sender's `id` for it, if it gave one.
    pub id: Option<String>,
}

/// One connected client, as the room sees it.
pub struct Client {
    pub username: Arc<str>,
    /// Token expiry, Unix seconds; a `reauth` moves it.
    exp: AtomicU64,
    /// Whether this token's `expiring` warning has gone out.
    warned: AtomicBool,
    pub outbox: Arc<Outbox>,
}

impl Client {
    pub fn new(username: Arc<str>, exp: u64, outbox: Arc<Outbox>) -> Client {
        Client {
            username,
            exp: AtomicU64::new(exp),
            warned: AtomicBool::new(false),
            outbox,
        }
    }

    fn exp(&self) -> u64 {
        self.exp.load(Ordering::Relaxed)
    }
}

/// A chat message kept for the `welcome` of those who join later.
struct Stored {
    seq: u64,
    from: Arc<str>,
    text: Box<str>,
    ts: u64,
}

impl Stored {
    fn message(&self) -> Outgoing<'_> {
        Outgoing::Message {
            seq: self.seq,
            from: &self.from,
            text: &self.text,
            ts: self.ts,
            // Only the live broadcast needs it: a sender waits for its own
            // message live, never in a later welcome.
            id: None,
        }
    }
}

/// Why a client left the room: for the log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Departure {
    /// The client closed, or its connection ended.
    Disconnected,
    /// Its token expired (close 4001).
    TokenExpired,
    /// Its queue overflowed (close 4008).
    SlowConsumer,
}

impl std::fmt::Display for Departure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Departure::Disconnected => "disconnected",
            Departure::TokenExpired => "token expired",
            Departure::SlowConsumer => "too slow to read its messages",
        })
    }
}

/// State that changes in broadcast order.
struct Timeline {
    /// The `seq` of the last chat message (numbered here, or delivered by
    /// the relay).
    seq: u64,
    /// Who is online, here and (with a relay) on other instances.
    presence: Presence,
    /// Chat frames accepted but not yet fanned out, in `seq` order, encoded
    /// back to back. At most `max_pending` bytes (plus the one message that
    /// crossed the line): the next fan-out's batch.
    pending: Vec<u8>,
    max_pending: usize,
    /// The highest `seq` taken out of `pending` for a fan-out: a client
    /// that joins now has seen, or will see live, nothing up to it.
    fanned_out: u64,
    /// The last `history_limit` messages, oldest first.
    history: VecDeque<Stored>,
    history_limit: usize,
}

pub struct Room {
    clients: RwLock<HashMap<ClientId, Client>>,
    /// The other instances, with `--redis`.
    relay: Option<Arc<dyn Relay>>,
    /// A thread is fanning out chat messages, and will take `pending` too.
    /// Set and cleared under the timeline lock; an atomic only so that a
    /// panicking flusher can clear it on its way out without that lock.
    flushing: AtomicBool,
    metrics: Arc<Metrics>,
    timeline: Mutex<Timeline>,
    next_id: AtomicU64,
    /// Told to every client in its `welcome`.
    limits: Limits,
}

impl Default for Room {
    fn default() -> Self {
        Room::new(0)
    }
}

impl Room {
    /// A room that keeps the last `history` messages for newcomers.
    pub fn new(history: usize) -> Room {
        Room::with_relay(history, None, Arc::default())
    }

    /// A room that is one instance of several, joined by `relay`, and
    /// counts into `metrics`.
    pub fn with_relay(
        history: usize,
        relay: Option<Arc<dyn Relay>>,
        metrics: Arc<Metrics>,
    ) -> Room {
        Room {
            clients: RwLock::new(HashMap::new()),
            relay,
            metrics,
            flushing: AtomicBool::new(false),
            timeline: Mutex::new(Timeline {
                seq: 0,
                presence: Presence::default(),
                pending: Vec::new(),
                max_pending: MAX_PENDING_BYTES,
                fanned_out: 0,
                history: VecDeque::with_capacity(history.min(1024)),
                history_limit: history,
            }),
            next_id: AtomicU64::new(1),
            limits: Limits::default(),
        }
    }

    /// Caps the pending batch at `bytes` (the default is
    /// [`MAX_PENDING_BYTES`]); past it, senders are refused with
    /// [`Refused::Busy`] until a fan-out takes the batch.
    pub fn with_max_pending(self, bytes: usize) -> Room {
        self.timeline().max_pending = bytes;
        self
    }

    /// The limits every `welcome` announces (the server's
    /// `--max-message-bytes` and `--message-rate`).
    pub fn with_limits(mut self, limits: Limits) -> Room {
        self.limits = limits;
        self
    }

    // A panic elsewhere must not take the room down with it: a poisoned
    // lock still guards consistent data here (every update is one insert or
    // remove), so take it anyway.
    fn timeline(&self) -> MutexGuard<'_, Timeline> {
        self.timeline.lock().unwrap_or_else(PoisonError::into_inner)
    }
    fn read(&self) -> RwLockReadGuard<'_, HashMap<ClientId, Client>> {
        self.clients.read().unwrap_or_else(PoisonError::into_inner)
    }
    fn write(&self) -> RwLockWriteGuard<'_, HashMap<ClientId, Client>> {
        self.clients.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// The counters the room keeps (and the server shares).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Number of connections.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether new messages can be taken: always, without a relay.
    pub fn health(&self) -> Result<(), Unavailable> {
        self.relay.as_ref().map_or(Ok(()), |relay| relay.health())
    }

    /// Adds a client: it gets `welcome` (with everyone online, itself
    /// included) as its first frame, and everyone else gets `join` if this
    /// is the user's first connection.
    pub fn join(&self, client: Client) -> ClientId {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut timeline = self.timeline();
        let username = client.username.clone();
        let change = timeline.presence.connect(&username);
        if change.here {
            self.tell_relay(&username);
        }
        let online: Vec<&str> = timeline.presence.online().collect();
        // Messages still pending will reach this client live; the history
        // stops where they begin, so nothing arrives twice.
        let history = recent_history(&timeline);
        let welcome = Outgoing::Welcome {
            user: &username,
            expires_at: client.exp(),
            online,
            history,
            limits: self.limits,
        }
        .frame();
        // A fresh queue has room for its first frame.
        let _ = client.outbox.push(welcome);
        self.write().insert(id, client);
        if change.everywhere {
            let join = Outgoing::Join { user: &username }.frame();
            let evictions = self.fan_out(&join, Some(id));
            self.settle(&mut timeline, evictions);
        }
        id
    }

    fn tell_relay(&self, user: &Arc<str>) {
        if let Some(relay) = &self.relay {
            relay.presence_changed(user);
        }
    }

    /// Removes a client whose connection ended. Idempotent: whoever removes
    /// it first (the reader, an eviction) sends the `leave`.
    pub fn leave(&self, id: ClientId) {
        let mut timeline = self.timeline();
        self.settle(&mut timeline, vec![(id, Departure::Disconnected)]);
    }

    /// Broadcasts a chat message from `from` to everyone, the sender
    /// included, with the sender's `id` for it, and returns its `seq`.
    ///
    /// The message gets its `seq` and joins the pending batch under the
    /// timeline lock. If no other thread is fanning out, this one does,
    /// until the batch is empty; otherwise the thread that is will take this
    /// message with its next batch. Under load, then, several messages
    /// leave in one system call per client, and when it is quiet a batch is
    /// one message sent at once.
    ///
    /// With a relay, the relay numbers and stores the message instead, and
    /// the fan-out happens when it comes back through [`Room::deliver`].
    ///
    /// Refused if the sender may not speak any more (it has left the room,
    /// or its token has expired: then it is evicted like on any broadcast),
    /// if the pending batch is full, or if the relay cannot take the
    /// message.
    pub fn broadcast(
        &self,
        sender: ClientId,
        from: &str,
        text: &str,
        id: Option<&str>,
    ) -> Result<u64, Refused> {
        let mut timeline = self.timeline();
        let sender_exp = self.read().get(&sender).map(Client::exp);
        match sender_exp {
            None => return Err(Refused::Gone),
            Some(exp) if is_expired(exp, now_secs()) => {
                self.settle(&mut timeline, vec![(sender, Departure::TokenExpired)]);
                return Err(Refused::Gone);
            }
            Some(_) => {}
        }
        if let Some(relay) = &self.relay {
            // Never wait on Redis while holding the room.
            drop(timeline);
            return relay.publish(from, text, id).map_err(Refused::Unavailable);
        }
        if timeline.pending.len() >= timeline.max_pending {
            return Err(Refused::Busy);
        }
        let seq = timeline.seq + 1;
        self.enqueue(&mut timeline, seq, from, text, unix_millis(), id);
        self.flush_unless_flushing(timeline);
        Ok(seq)
    }

    /// Messages the relay numbered (from any instance), in `seq` order, for
    /// this instance's clients. One already delivered is skipped, so a relay
    /// that reads a message twice cannot send it twice.
    ///
    /// These are never refused for a full batch: they are already numbered.
    /// The pending batch stays bounded all the same, since only the relay's
    /// one reader thread delivers, a bounded read at a time, and it fans out
    /// each delivery itself before reading more.
    pub fn deliver(&self, messages: &[Delivery]) {
        let mut timeline = self.timeline();
        for m in messages {
            if m.seq > timeline.seq {
                self.enqueue(
                    &mut timeline,
                    m.seq,
                    &m.from,
                    &m.text,
                    m.ts,
                    m.id.as_deref(),
                );
            }
        }
        self.flush_unless_flushing(timeline);
    }

    /// The relay's recent messages, oldest first, as the history of a room
    /// that has seen none yet (an instance starting up). Ignored otherwise.
    pub fn seed_history(&self, messages: Vec<Delivery>) {
        let mut timeline = self.timeline();
        let Some(last) = messages.last().map(|m| m.seq) else {
            return;
        };
        if timeline.seq != 0 {
            return;
        }
        for m in messages {
            timeline.remember(m.seq, m.from.into(), m.text.into(), m.ts);
        }
        timeline.seq = last;
        timeline.fanned_out = last;
    }

    /// The `seq` of the last message numbered or delivered here.
    pub fn last_seq(&self) -> u64 {
        self.timeline().seq
    }

    /// Adds one numbered message to the pending batch and the history.
    fn enqueue(
        &self,
        timeline: &mut Timeline,
        seq: u64,
        from: &str,
        text: &str,
        ts: u64,
        id: Option<&str>,
    ) {
        timeline.seq = seq;
        let message = Outgoing::Message {
            seq,
            from,
            text,
            ts,
            id,
        }
        .frame();
        timeline.pending.extend_from_slice(&message);
        metrics::inc(&self.metrics.messages_broadcast);
        timeline.remember(seq, from.into(), text.into(), ts);
    }

    fn flush_unless_flushing<'a>(&'a self, timeline: MutexGuard<'a, Timeline>) {
        if !timeline.pending.is_empty() && !self.flushing.swap(true, Ordering::AcqRel) {
            self.flush(timeline);
        }
    }

    /// Fans out pending chat messages until none are left. The timeline
    /// lock is released during each fan-out so that other senders can add
    /// to the next batch meanwhile; only one thread flushes at a time, so
    /// every client still gets the batches in `seq` order.
    fn flush<'a>(&'a self, mut timeline: MutexGuard<'a, Timeline>) {
        // Should a fan-out panic, the next broadcast must flush instead of
        // finding the flag stuck and leaving every message pending.
        struct Unstick<'f>(&'f AtomicBool);
        impl Drop for Unstick<'_> {
            fn drop(&mut self) {
                if std::thread::panicking() {
                    self.0.store(false, Ordering::Release);
                }
            }
        }
        let _unstick = Unstick(&self.flushing);
        while !timeline.pending.is_empty() {
            let batch: Frame = std::mem::take(&mut timeline.pending).into();
            timeline.fanned_out = timeline.seq;
            // Take the pool before letting go of the timeline, so that no
            // client can join between the two and get this batch both in
            // its welcome's history and live.
            let pool = self.read();
            drop(timeline);
            let evictions = self.fan_out_to(&pool, &batch, None);
            drop(pool);
            timeline = self.timeline();
            self.settle(&mut timeline, evictions);
        }
        self.flushing.store(false, Ordering::Release);
    }

    /// Closes every client whose token has expired. Run by the sweeper at
    /// least once a second, so an idle client goes within about a second of
    /// its `exp`. Returns how many went.
    pub fn sweep(&self) -> usize {
        let now = now_secs();
        let expired = |c: &Client| is_expired(c.exp(), now);
        let mut any_expired = false;
        for client in self.read().values() {
            if expired(client) {
                any_expired = true;
            } else if now + EXPIRY_WARNING_SECS >= client.exp()
                && !client.warned.swap(true, Ordering::Relaxed)
            {
                let warning = Outgoing::Expiring {
                    expires_at: client.exp(),
                };
                // A full queue is the broadcast's business, not the sweep's.
                let _ = client.outbox.push(warning.frame());
            }
        }
        if !any_expired {
            return 0;
        }
        let mut timeline = self.timeline();
        let evictions: Vec<_> = self
            .read()
            .iter()
            .filter(|(_, c)| expired(c))
            .map(|(id, _)| (*id, Departure::TokenExpired))
            .collect();
        let count = evictions.len();
        self.settle(&mut timeline, evictions);
        count
    }

    /// Closes every connection with `code` (the server is going away) and
    /// empties the room; no `leave` is sent, since everyone is leaving.
    /// Returns the outboxes, so the caller can wait for them to drain.
    pub fn close_all(&self, code: u16, reason: &str) -> Vec<Arc<Outbox>> {
        let mut timeline = self.timeline();
        timeline.presence = Presence::default();
        let close = frame::close(code, reason);
        let clients: Vec<Client> = self.write().drain().map(|(_, c)| c).collect();
        for client in &clients {
            client.outbox.close(std::slice::from_ref(&close), false);
        }
        clients.into_iter().map(|c| c.outbox).collect()
    }

    /// A client renewed its token: its expiry moves, and it will be warned
    /// again before the new one. False if it is no longer in the room.
    pub fn reauth(&self, id: ClientId, exp: u64) -> bool {
        let pool = self.read();
        let Some(client) = pool.get(&id) else {
            return false;
        };
        client.exp.store(exp, Ordering::Relaxed);
        client.warned.store(false, Ordering::Relaxed);
        true
    }

    /// For each of `users`, whether it has a connection on this instance
    /// (read at one instant, under one lock).
    pub fn which_are_here<'a>(
        &self,
        users: impl IntoIterator<Item = &'a Arc<str>>,
    ) -> Vec<(&'a Arc<str>, bool)> {
        let timeline = self.timeline();
        users
            .into_iter()
            .map(|user| (user, timeline.presence.is_here(user)))
            .collect()
    }

    /// Every user with a connection on this instance.
    pub fn local_users(&self) -> Vec<Arc<str>> {
        self.timeline().presence.local_users()
    }

    /// Another instance says `user` came online (or went offline) there.
    pub fn remote_presence(&self, instance: &str, user: &str, online: bool) {
        let mut timeline = self.timeline();
        if let Some(user) = timeline.presence.set_remote(instance, user, online) {
            self.announce(&mut timeline, &user, online);
        }
    }

    /// Who is online on each other live instance, read at once from the
    /// relay. An instance missing from it has stopped (its heartbeat ran
    /// out) and its users go offline, unless `keep_missing` (just after a
    /// reconnect, when live instances may not have written theirs yet).
    pub fn remote_snapshot(&self, snapshot: RemotePresence, keep_missing: bool) {
        let mut timeline = self.timeline();
        let (came, went) = timeline.presence.replace_remote(snapshot, keep_missing);
        for user in came {
            self.announce(&mut timeline, &user, true);
        }
        for user in went {
            self.announce(&mut timeline, &user, false);
        }
    }

    /// Fans out `join` or `leave` for a user of another instance.
    fn announce(&self, timeline: &mut Timeline, user: &str, online: bool) {
        let frame = if online {
            Outgoing::Join { user }
        } else {
            Outgoing::Leave { user }
        }
        .frame();
        let evictions = self.fan_out(&frame, None);
        self.settle(timeline, evictions);
    }

    fn fan_out(&self, frame: &Frame, except: Option<ClientId>) -> Vec<(ClientId, Departure)> {
        self.fan_out_to(&self.read(), frame, except)
    }

    /// Pushes `frame` to every client in `pool` but `except`, and returns
    /// the clients that must go instead: expired ones (they never get the
    /// frame) and ones whose queue is full.
    fn fan_out_to(
        &self,
        pool: &HashMap<ClientId, Client>,
        frame: &Frame,
        except: Option<ClientId>,
    ) -> Vec<(ClientId, Departure)> {
        let now = now_secs();
        let mut evictions = Vec::new();
        let mut delivered = 0;
        for (&id, client) in pool {
            if Some(id) == except {
                continue;
            }
            if is_expired(client.exp(), now) {
                evictions.push((id, Departure::TokenExpired));
            } else if client.outbox.push(frame.clone()).is_err() {
                evictions.push((id, Departure::SlowConsumer));
            } else {
                delivered += 1;
            }
        }
        metrics::add(&self.metrics.deliveries, delivered);
        metrics::add(&self.metrics.bytes_sent, delivered * frame.len() as u64);
        evictions
    }

    /// Takes the departing clients out of the pool, says goodbye to the
    /// evicted ones, and fans out a `leave` for each user whose last
    /// connection this was. A `leave` can find more clients to evict; the
    /// loop runs until nobody else has to go. (A loop, not recursion: a
    /// thousand tokens expiring in the same second must not grow the stack.)
    fn settle(&self, timeline: &mut Timeline, mut departing: Vec<(ClientId, Departure)>) {
        while !departing.is_empty() {
            let removed: Vec<(ClientId, Client, Departure)> = {
                let mut pool = self.write();
                departing
                    .drain(..)
                    .filter_map(|(id, why)| pool.remove(&id).map(|c| (id, c, why)))
                    .collect()
            };
            for (id, client, why) in removed {
                if why != Departure::Disconnected {
                    crate::info!("client {id} ({:?}) evicted: {why}", client.username);
                    let counter = match why {
                        Departure::TokenExpired => &self.metrics.expiry_disconnects,
                        _ => &self.metrics.slow_consumer_disconnects,
                    };
                    metrics::inc(counter);
                    send_farewell(&client.outbox, why);
                }
                let change = timeline.presence.disconnect(&client.username);
                if change.here {
                    self.tell_relay(&client.username);
                }
                if change.everywhere {
                    let leave = Outgoing::Leave {
                        user: &client.username,
                    }
                    .frame();
                    departing.extend(self.fan_out(&leave, None));
                }
            }
        }
    }
}

impl Timeline {
    /// Keeps a message for the welcome of those who join later.
    fn remember(&mut self, seq: u64, from: Arc<str>, text: Box<str>, ts: u64) {
        if self.history_limit == 0 {
            return;
        }
        if self.history.len() == self.history_limit {
            self.history.pop_front();
        }
        self.history.push_back(Stored {
            seq,
            from,
            text,
            ts,
        });
    }
}

/// Text a `welcome`'s history carries at most: each welcome is its own
/// frame, so this bounds what a thousand clients joining at once cost.
const WELCOME_HISTORY_BYTES: usize = 64 * 1024;

/// The newest stored messages (oldest first) that were already fanned out
/// and fit in [`WELCOME_HISTORY_BYTES`].
fn recent_history(timeline: &Timeline) -> Vec<Outgoing<'_>> {
    let mut budget = WELCOME_HISTORY_BYTES;
    let mut newest_first: Vec<Outgoing<'_>> = timeline
        .history
        .iter()
        .rev()
        .filter(|m| m.seq <= timeline.fanned_out)
        .take_while(|m| {
            let fits = m.text.len() <= budget;
            budget = budget.saturating_sub(m.text.len());
            fits
        })
        .map(Stored::message)
        .collect();
    newest_first.reverse();
    newest_first
}

/// The last words to an evicted client: for an expired token, the
/// `token_expired` error then close 4001; for a slow consumer, close 4008
/// ahead of the backlog it will never read.
fn send_farewell(outbox: &Arc<Outbox>, why: Departure) {
    match why {
        Departure::TokenExpired => {
            let notice = Outgoing::Error {
                code: ErrorCode::TokenExpired,
                message: TOKEN_EXPIRED_TEXT,
                id: None,
            }
            .frame();
            let close = frame::close(close_code::TOKEN_EXPIRED, "token expired");
            outbox.close(&[notice, close], false);
        }
        Departure::SlowConsumer => {
            let close = frame::close(
                close_code::SLOW_CONSUMER,
                "too slow: messages were not read",
            );
            outbox.close(&[close], true);
        }
        Departure::Disconnected => {}
    }
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client whose queue the test can read directly.
    fn client(room: &Room, name: &str, exp: u64) -> (ClientId, Arc<Outbox>) {
        let outbox = Outbox::new(crate::outbox::QueueLimit {
            frames: 8,
            bytes: 1 << 20,
        });
        let id = room.join(Client::new(name.into(), exp, outbox.clone()));
        (id, outbox)
    }

    fn later() -> u64 {
        now_secs() + 600
    }

    /// The JSON in one unfragmented server text frame under 64 KiB.
    fn payload(frame: &[u8]) -> serde_json::Value {
        // RFC 6455 §5.2: a 7-bit length, or 126 and a 16-bit one.
        let start = if frame[1] & 0x7f == 126 { 4 } else { 2 };
        serde_json::from_slice(&frame[start..]).unwrap()
    }

    /// The JSON `type`s queued for a client so far (one message a frame).
    fn types(outbox: &Outbox) -> Vec<String> {
        outbox
            .take_queued()
            .iter()
            .filter(|f| f[0] == 0x81)
            .map(|f| payload(f)["type"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn presence_counts_users_not_connections() {
        let room = Room::new(10);
        let (_, a) = client(&room, "a", later());
        let (b1, _) = client(&room, "b", later());
        let (b2, _) = client(&room, "b", later());
        room.leave(b1);
        room.leave(b1); // idempotent
        room.leave(b2);
        assert_eq!(types(&a), ["welcome", "join", "leave"]);
        assert!(room.len() == 1);
    }

    #[test]
    fn an_expired_client_is_closed_instead_of_served() {
        let room = Room::new(10);
        let (a_id, a) = client(&room, "a", later());
        let (_, old) = client(&room, "old", now_secs());
        assert_eq!(room.broadcast(a_id, "a", "hi", None), Ok(1));
        assert_eq!(room.len(), 1);
        // The expired client got its notice and the close, not the message.
        let batch = old.take_queued();
        assert_eq!(batch.last().map(|f| f[0]), Some(0x88), "close frame last");
        assert!(old.is_closing());
        assert_eq!(types(&a), ["welcome", "join", "message", "leave"]);
    }

    #[test]
    fn the_sweep_finds_idle_expired_clients() {
        let room = Room::new(10);
        let (_, _a) = client(&room, "a", later());
        let (_, old) = client(&room, "old", now_secs());
        assert_eq!(room.sweep(), 1);
        assert!(old.is_closing());
        assert_eq!(room.sweep(), 0);
    }

    #[test]
    fn a_poisoned_lock_does_not_stop_the_room() {
        let room = Arc::new(Room::new(10));
        let (a_id, a) = client(&room, "a", later());
        let poisoner = room.clone();
        let _ = std::thread::spawn(move || {
            let _timeline = poisoner.timeline();
            let _pool = poisoner.write();
            panic!("a client thread dies holding both locks");
        })
        .join();
        assert!(room.timeline.is_poisoned() && room.clients.is_poisoned());
        assert_eq!(room.broadcast(a_id, "a", "still works", None), Ok(1));
        assert_eq!(types(&a), ["welcome", "message"]);
    }

    #[test]
    fn a_full_pending_batch_refuses_senders_instead_of_growing() {
        let room = Room::new(0).with_max_pending(100);
        let (a_id, a) = client(&room, "a", later());
        // Another thread is fanning out: messages wait in the batch.
        room.flushing.store(true, Ordering::Release);
        let mut taken = 0;
        while room.broadcast(a_id, "a", "0123456789", None) != Err(Refused::Busy) {
            taken += 1;
            assert!(taken < 10, "the batch never filled");
        }
        assert!(room.timeline().pending.len() < 100 + 64);
        // That fan-out takes the batch; the room takes messages again.
        room.flushing.store(false, Ordering::Release);
        room.flush_unless_flushing(room.timeline());
        let queued = a.take_queued();
        assert_eq!(queued.len(), 1 + 1, "the welcome, then the batch");
        assert!(queued[1].len() > 100, "the batch holds every message taken");
        assert_eq!(room.broadcast(a_id, "a", "again", None), Ok(taken + 1));
    }

    /// A relay that numbers messages but, like Redis, delivers them only
    /// when told.
    #[derive(Default)]
    struct Numbering(std::sync::atomic::AtomicU64);

    impl Relay for Numbering {
        fn publish(&self, _from: &str, _text: &str, _id: Option<&str>) -> Result<u64, Unavailable> {
            Ok(self.0.fetch_add(1, Ordering::Relaxed) + 1)
        }
        fn presence_changed(&self, _user: &Arc<str>) {}
        fn health(&self) -> Result<(), Unavailable> {
            Ok(())
        }
    }

    #[test]
    fn with_a_relay_messages_go_out_when_delivered_and_only_once() {
        let room = Room::with_relay(10, Some(Arc::new(Numbering::default())), Arc::default());
        let (a_id, a) = client(&room, "a", later());
        assert_eq!(room.broadcast(a_id, "a", "hi", None), Ok(1));
        assert_eq!(types(&a), ["welcome"], "nothing before the relay delivers");
        let hi = |seq| Delivery {
            seq,
            from: "a".into(),
            text: "hi".into(),
            ts: 0,
            id: None,
        };
        room.deliver(&[hi(1)]);
        room.deliver(&[hi(1), hi(2)]);
        let seqs: Vec<u64> = a
            .take_queued()
            .iter()
            .map(|f| payload(f)["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(seqs, [1, 2]);
        assert_eq!(room.last_seq(), 2);
    }
}
