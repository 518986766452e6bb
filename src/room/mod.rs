//! One room: who is in it, and every broadcast to them. The rooms
//! themselves (which exist, who may join, the limits) are `crate::rooms`'s.
//!
//! | file | what it owns |
//! |---|---|
//! | `mod.rs` | the pool, joining and leaving, broadcast, fan-out, eviction, shutdown, and the lock order |
//! | [`timeline`] | numbering, the pending batch, history: pure data |
//! | [`expiry`] | the expiry sweep, `expiring` warnings, `reauth` |
//! | [`presence`] | presence windows: gathering joins and leaves, one frame per window |
//! | [`relay`] | the [`Relay`] trait, what a relay feeds back in, seeding a room from it |
//!
//! The pool is a `RwLock<HashMap<ClientId, Arc<Client>>>`: a connection in
//! several rooms is one [`Client`], shared by their pools, so that its
//! token's expiry is one value wherever it is checked. Everything that must
//! reach clients *in one order* (messages with their `seq`, joins, leaves,
//! evictions) runs under one more lock, the timeline mutex, taken before
//! the pool lock and never after it. That is what makes `seq` order the same
//! for everyone: two senders cannot interleave their fan-outs.
//!
//! A fan-out serialises and frames the message once, then for each client
//! compares the stored `exp` with the clock (no cryptography: the token was
//! verified at the handshake) and pushes the shared frame onto the client's
//! bounded queue. Nobody waits on a socket here. An expired client is sent
//! `token_expired` and closed with 4001 instead of receiving the message; a
//! client whose queue is full is closed with 4008. Both leave the pool at
//! once.
//!
//! Joins and leaves are gathered for up to [`presence::PRESENCE_WINDOW`] and go out as
//! one frame to everyone (see `timeline::PresenceWindow`): a storm of N
//! users connecting costs each client a frame or two, not N.

mod expiry;
mod presence;
mod relay;
mod timeline;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

// `Delivery` is what the cluster (`--features redis`) hands back in.
use self::presence::who_is_online;
pub use self::presence::{OpenWindows, PRESENCE_LIST_MAX};
use self::relay::Seeding;
#[allow(unused_imports)]
pub use self::relay::{Delivery, Relay, Seed, SeedingGuard, Unavailable};
pub use self::timeline::MAX_PENDING_BYTES;
pub use self::timeline::Retention;
use self::timeline::{Numbered, Timeline};
use crate::auth::is_expired;
use crate::clock::Clock;
use crate::close::CloseReason;
use crate::frame::Frame;
use crate::metrics::{self, Metrics};
use crate::outbox::Outbox;
use crate::presence::Presence;
pub use crate::presence::RemotePresence;
use crate::protocol::{Greeting, Limits, Outgoing, Since};

/// Identifies one connection (a user may have several).
pub type ClientId = u64;

/// When [`Room::broadcast`] fans a message out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fanout {
    /// At once (or with the fan-out already under way).
    Now,
    /// With the sender's next message, or at its [`Room::flush_pending`].
    Held,
}

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

/// One connection, as the rooms see it (the same in each of its rooms).
pub struct Client {
    pub username: Arc<str>,
    /// Token expiry, Unix seconds; a `reauth` moves it.
    exp: AtomicU64,
    /// Whether this token's `expiring` warning has gone out.
    warned: AtomicBool,
    pub outbox: Arc<Outbox>,
    /// The rooms this connection is in. Changed through `crate::rooms`,
    /// under this lock for the whole change (its own session subscribing,
    /// and a DM bringing it in, must not both add it to one room); read by
    /// the expiry sweep, which must take it out of every one.
    rooms: Mutex<Joined>,
}

/// The rooms a connection is in, in the order it joined them.
#[derive(Default)]
pub struct Joined {
    pub rooms: Vec<Arc<Room>>,
    /// The connection has ended: it joins nothing more.
    pub ended: bool,
}

impl Joined {
    /// The room `name`, if the connection is in it.
    pub fn find(&self, name: &str) -> Option<&Arc<Room>> {
        self.rooms.iter().find(|r| &*r.name == name)
    }
}

impl Client {
    pub fn new(username: Arc<str>, exp: u64, outbox: Arc<Outbox>) -> Client {
        Client {
            username,
            exp: AtomicU64::new(exp),
            warned: AtomicBool::new(false),
            outbox,
            rooms: Mutex::new(Joined::default()),
        }
    }

    /// The rooms this connection is in. Taken before the registry's and
    /// any room's locks, never after them.
    pub fn rooms(&self) -> MutexGuard<'_, Joined> {
        self.rooms.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// [`Client::rooms`] if nobody holds it now.
    pub fn try_rooms(&self) -> Option<MutexGuard<'_, Joined>> {
        match self.rooms.try_lock() {
            Ok(joined) => Some(joined),
            Err(std::sync::TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    /// The room `name`, if this connection is in it.
    pub fn room(&self, name: &str) -> Option<Arc<Room>> {
        self.rooms().find(name).cloned()
    }

    fn exp(&self) -> u64 {
        self.exp.load(Ordering::Relaxed)
    }

    /// A `reauth` was accepted: the connection lasts until `exp` now, in
    /// every room, and will be warned again before it.
    pub fn renew(&self, exp: u64) {
        self.exp.store(exp, Ordering::Relaxed);
        self.warned.store(false, Ordering::Relaxed);
    }
}

/// What a client joining a room is sent first.
#[derive(Clone, Copy)]
pub enum Greet<'a> {
    /// `welcome`: the connection's first frame, about `general`, with the
    /// rooms the user may join.
    Welcome {
        rooms: &'a [String],
        since: Option<&'a Since>,
    },
    /// `subscribed`.
    Subscribed { since: Option<&'a Since> },
}

impl<'a> Greet<'a> {
    /// Where the client asks to resume from, if it does.
    fn since(self) -> Option<&'a Since> {
        match self {
            Greet::Welcome { since, .. } | Greet::Subscribed { since } => since,
        }
    }
}

/// A new epoch: 12 hex digits from the OS's random source (with the time
/// and process id standing in, should that fail), short in every frame and
/// never the same twice in practice.
pub fn new_epoch() -> Arc<str> {
    let mut bytes = [0u8; 6];
    if getrandom::fill(&mut bytes).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let mixed = nanos ^ (u64::from(std::process::id()) << 32);
        bytes.copy_from_slice(&mixed.to_le_bytes()[..6]);
    }
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
        .into()
}

/// Where each room's messages go before they are fanned out: the store
/// behind `--data-dir` (`crate::store`), so that a restart keeps them.
pub trait Journal: Send + Sync {
    /// Keeps `messages` (in `seq` order) of `room`, whose history is
    /// `epoch`. Called under the room's lock before they fan out; an error
    /// says why they were not kept (they fan out all the same).
    fn append(&self, room: &str, epoch: &str, messages: &[Kept<'_>]) -> Result<(), String>;
    /// `room` was freed with its history.
    fn forget(&self, room: &str);
    /// Drops what is older than `--history-ttl` at `now_ms`.
    fn prune(&self, now_ms: u64);
    /// A clean shutdown: everything kept so far is made durable.
    fn close(&self);
}

/// One message on its way to the [`Journal`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kept<'a> {
    pub seq: u64,
    pub from: &'a str,
    pub text: &'a str,
    /// Unix milliseconds.
    pub ts: u64,
    pub id: Option<&'a str>,
}

/// A room as the journal had it at start-up.
pub struct Restored {
    pub room: String,
    pub epoch: String,
    /// The room's last `seq`, even if its message is gone.
    pub last_seq: u64,
    /// Its kept messages, oldest first: `(seq, from, text, ts, id)`.
    pub messages: Vec<(u64, String, String, u64, Option<String>)>,
}

/// How every room of a server is set up (the registry makes rooms with it).
#[derive(Clone, Default)]
pub struct Settings {
    /// What history each room keeps, and how much of it a greeting or a
    /// recovery carries.
    pub retention: Retention,
    /// The pending batch's cap (see [`Room::with_max_pending`]).
    pub max_pending: usize,
    /// Told to every client in its `welcome`.
    pub limits: Limits,
    pub clock: Clock,
    /// `--presence-list-max`.
    pub presence_list_max: usize,
    pub metrics: Arc<Metrics>,
    /// Shared by every room, so that one thread closes all their windows.
    pub windows: Arc<OpenWindows>,
    /// With `--data-dir`: where messages are kept before they fan out.
    pub journal: Option<Arc<dyn Journal>>,
}

/// Why a client left the room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Departure {
    /// The client closed, or its connection ended.
    Disconnected,
    /// Its token expired (close 4001).
    TokenExpired,
    /// Its queue overflowed (close 4008).
    SlowConsumer,
}

impl Departure {
    /// How the server closes an evicted client; `None` for one that left.
    fn close_reason(self) -> Option<CloseReason> {
        match self {
            Departure::Disconnected => None,
            Departure::TokenExpired => Some(CloseReason::token_expired()),
            Departure::SlowConsumer => Some(CloseReason::slow_consumer()),
        }
    }
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

pub struct Room {
    /// As clients write it: `general`, `ops`, `dm:a:b`.
    name: Arc<str>,
    clients: RwLock<HashMap<ClientId, Arc<Client>>>,
    /// Unix seconds when somebody last joined or left: a room nobody has
    /// been in for `--room-idle-ttl` is freed, history and all.
    last_active: AtomicU64,
    /// The other instances, with `--redis`.
    relay: Option<Arc<dyn Relay>>,
    /// Whether it waits for its history from the relay (see `relay.rs`).
    seeding: Seeding,
    /// A thread is fanning out chat messages, and will take `pending` too.
    /// Set and cleared under the timeline lock; an atomic only so that a
    /// panicking flusher can clear it on its way out without that lock.
    flushing: AtomicBool,
    metrics: Arc<Metrics>,
    timeline: Mutex<Timeline>,
    /// Told to every client in its `welcome`.
    limits: Limits,
    /// Token expiry and message timestamps.
    clock: Clock,
    /// Where this room's presence window is queued when it opens.
    windows: Arc<OpenWindows>,
    /// Names a `welcome` lists at most.
    presence_list_max: usize,
    /// Who made it (`None`: `general`), counted against
    /// `--max-rooms-per-user` while it exists.
    maker: Option<Arc<str>>,
    /// With `--data-dir`: every batch is kept here before it fans out.
    journal: Option<Arc<dyn Journal>>,
}

impl Default for Room {
    fn default() -> Self {
        Room::new(0)
    }
}

impl Room {
    /// `general`, keeping the last `history` messages for newcomers.
    pub fn new(history: usize) -> Room {
        Room::with_relay(history, None, Arc::default())
    }

    /// `general` as one instance of several, joined by `relay`, counting
    /// into `metrics`.
    pub fn with_relay(
        history: usize,
        relay: Option<Arc<dyn Relay>>,
        metrics: Arc<Metrics>,
    ) -> Room {
        let settings = Settings {
            retention: Retention {
                messages: history,
                greeting: history,
                ..Retention::default()
            },
            max_pending: MAX_PENDING_BYTES,
            presence_list_max: PRESENCE_LIST_MAX,
            metrics,
            ..Settings::default()
        };
        Room::configured(crate::access::GENERAL.into(), &settings, relay)
    }

    /// The room `name`, set up as `settings` say.
    pub fn configured(name: Arc<str>, settings: &Settings, relay: Option<Arc<dyn Relay>>) -> Room {
        let mut timeline = Timeline::new(name.clone(), new_epoch(), settings.retention);
        timeline.max_pending = settings.max_pending;
        Room {
            last_active: AtomicU64::new(settings.clock.unix_secs()),
            name,
            clients: RwLock::new(HashMap::new()),
            seeding: Seeding::new(relay.is_some()),
            relay,
            metrics: settings.metrics.clone(),
            flushing: AtomicBool::new(false),
            timeline: Mutex::new(timeline),
            limits: settings.limits,
            clock: settings.clock.clone(),
            windows: settings.windows.clone(),
            presence_list_max: settings.presence_list_max,
            maker: None,
            journal: settings.journal.clone(),
        }
    }

    /// The room as the journal kept it: its epoch, its last `seq`, its
    /// messages (a restart goes on where the last run stopped).
    pub fn restored(record: Restored, settings: &Settings) -> Room {
        let room = Room::configured(record.room.into(), settings, None);
        room.timeline()
            .restore(record.epoch.into(), record.last_seq, record.messages);
        room
    }

    /// Frees what the journal keeps of this room (it is freed).
    pub fn forget_journal(&self) {
        if let Some(journal) = &self.journal {
            journal.forget(&self.name);
        }
    }

    /// The room was made by `user` (see `rooms::Rooms::count_made`).
    pub fn made_by(mut self, user: Arc<str>) -> Room {
        self.maker = Some(user);
        self
    }

    /// Who made it, if a user did.
    pub fn maker(&self) -> Option<&str> {
        self.maker.as_deref()
    }

    /// The room's name.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    #[cfg(test)]
    /// Lists at most `names` online users in a `welcome` (the default is
    /// [`PRESENCE_LIST_MAX`]).
    pub fn with_presence_list_max(mut self, names: usize) -> Room {
        self.presence_list_max = names;
        self
    }

    #[cfg(test)]
    /// Caps the pending batch at `bytes` (the default is
    /// [`MAX_PENDING_BYTES`]); past it, senders are refused with
    /// [`Refused::Busy`] until a fan-out takes the batch.
    pub fn with_max_pending(self, bytes: usize) -> Room {
        self.timeline().max_pending = bytes;
        self
    }

    #[cfg(test)]
    /// Takes the time (token expiry, message timestamps) from `clock`.
    pub fn with_clock(mut self, clock: Clock) -> Room {
        self.clock = clock;
        self
    }

    // A panic elsewhere must not take the room down with it: a poisoned
    // lock still guards consistent data here (every update is one insert or
    // remove), so take it anyway.
    fn timeline(&self) -> MutexGuard<'_, Timeline> {
        self.timeline.lock().unwrap_or_else(PoisonError::into_inner)
    }
    fn read(&self) -> RwLockReadGuard<'_, HashMap<ClientId, Arc<Client>>> {
        self.clients.read().unwrap_or_else(PoisonError::into_inner)
    }
    fn write(&self) -> RwLockWriteGuard<'_, HashMap<ClientId, Arc<Client>>> {
        self.clients.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// The counters the room keeps (and the server shares).
    #[cfg(test)]
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Number of connections in the room.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether the room may be freed at `now`: nobody is in it, it is not
    /// being seeded, and it keeps no history, or nobody has been in it for
    /// `idle_ttl` seconds.
    pub fn is_freeable(&self, now: u64, idle_ttl: u64) -> bool {
        let timeline = self.timeline();
        self.read().is_empty()
            && !self.is_seeding()
            && (!timeline.has_history()
                || now
                    >= self
                        .last_active
                        .load(Ordering::Relaxed)
                        .saturating_add(idle_ttl))
    }

    /// Drops the messages older than `--history-ttl`.
    pub fn prune_history(&self) {
        self.timeline().prune(self.clock.unix_millis());
    }

    fn touch(&self) {
        self.last_active
            .store(self.clock.unix_secs(), Ordering::Relaxed);
    }

    /// Adds connection `id`: it gets `welcome` or `subscribed` (with
    /// everyone online in the room, itself included) as its first frame
    /// about the room, and everyone else in the room gets `join` if this is
    /// the user's first connection here.
    pub fn join(&self, id: ClientId, client: Arc<Client>, greet: Greet<'_>) {
        let mut timeline = self.timeline();
        self.touch();
        let username = client.username.clone();
        let change = timeline.presence.connect(&username);
        if change.here {
            self.tell_relay(&username);
        }
        if change.everywhere {
            self.presence_changed(&mut timeline, &username);
            timeline.window.newcomer(id, &username);
        }
        // Under the timeline lock, so that nothing numbered after this
        // greeting's history can reach the client before it.
        let greeting = self.greeting(&timeline, &client, greet);
        let _ = client.outbox.push(greeting);
        self.write().insert(id, client);
    }

    /// `subscribed` again, for a connection already in the room (resuming
    /// from `since`, if given).
    pub fn greet_again(&self, client: &Client, since: Option<&Since>) {
        let timeline = self.timeline();
        let greeting = self.greeting(&timeline, client, Greet::Subscribed { since });
        let _ = client.outbox.push(greeting);
    }

    /// The `welcome` or `subscribed` frame for `client`: who is online as
    /// the last presence frame told the others (so the next frame's diff
    /// applies to it too), itself included, and the history, or, resuming
    /// from `since`, what the client missed if it can all be had.
    fn greeting(&self, timeline: &Timeline, client: &Client, greet: Greet<'_>) -> Frame {
        let since = greet.since();
        let (online, online_count) = who_is_online(
            &timeline.window.published,
            &client.username,
            self.presence_list_max,
        );
        let missed = since.and_then(|since| timeline.recover(since));
        let greeting = Greeting {
            epoch: &timeline.epoch,
            recovered: since.map(|_| missed.is_some()),
            online_truncated: online.len() < online_count,
            online,
            online_count,
            // Messages still pending will reach this client live; the
            // history (or what it missed) stops where they begin, so
            // nothing arrives twice. Recovered, it needs no history.
            history: match missed {
                Some(_) => Vec::new(),
                None => timeline.recent_history(),
            },
            missed,
            // What this client will not see live: the history ends here.
            last_seq: timeline.fanned_out,
        };
        match greet {
            Greet::Welcome { rooms, .. } => Outgoing::Welcome {
                user: &client.username,
                expires_at: client.exp(),
                room: &self.name,
                rooms,
                greeting,
                limits: self.limits,
            }
            .frame(),
            Greet::Subscribed { .. } => Outgoing::Subscribed {
                room: &self.name,
                greeting,
            }
            .frame(),
        }
    }

    /// Removes a connection that left the room (unsubscribed, or its
    /// connection ended). Idempotent: whoever removes it first (the reader,
    /// an eviction) sends the `leave`.
    pub fn leave(&self, id: ClientId) {
        let mut timeline = self.timeline();
        self.touch();
        self.remove_departing(&mut timeline, vec![(id, Departure::Disconnected)]);
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
    /// the fan-out happens when it comes back through [`Room::deliver_relayed`].
    ///
    /// Refused if the sender may not speak any more (it has left the room,
    /// or its token has expired: then it is evicted like on any broadcast),
    /// if the pending batch is full, or if the relay cannot take the
    /// message.
    ///
    /// With [`Fanout::Held`] the fan-out is left to a later call: for a
    /// sender whose next messages have already arrived, so that they leave
    /// together, one system call per client for the lot instead of one
    /// each. Whoever holds a message must call [`Room::flush_pending`]
    /// before waiting for anything.
    pub fn broadcast(
        &self,
        sender: ClientId,
        from: &str,
        text: &str,
        id: Option<&str>,
        fanout: Fanout,
    ) -> Result<u64, Refused> {
        let mut timeline = self.timeline();
        let sender_exp = self.read().get(&sender).map(|c| c.exp());
        match sender_exp {
            None => return Err(Refused::Gone),
            Some(exp) if is_expired(exp, self.clock.unix_secs()) => {
                self.remove_departing(&mut timeline, vec![(sender, Departure::TokenExpired)]);
                return Err(Refused::Gone);
            }
            Some(_) => {}
        }
        if let Some(relay) = &self.relay {
            // The relay never numbers at or below what this room has seen.
            let floor = timeline.seq;
            // Never wait on Redis while holding the room.
            drop(timeline);
            return relay
                .publish(&self.name, floor, from, text, id)
                .map_err(Refused::Unavailable);
        }
        if timeline.is_full() {
            return Err(Refused::Busy);
        }
        let seq = timeline.seq + 1;
        let ts = self.clock.unix_millis();
        self.number(
            &mut timeline,
            Numbered {
                seq,
                from,
                text,
                ts,
                id,
            },
        );
        // Held, but never so long that the batch fills and refuses senders.
        if fanout == Fanout::Now || timeline.pending.len() >= timeline.max_pending / 2 {
            self.flush_unless_flushing(timeline);
        }
        Ok(seq)
    }

    /// Fans out what is pending, unless a fan-out is already under way
    /// (which will take it): the end of a run of [`Fanout::Held`] messages.
    pub fn flush_pending(&self) {
        self.flush_unless_flushing(self.timeline());
    }

    /// Adds one numbered message to the pending batch and the history.
    fn number(&self, timeline: &mut Timeline, message: Numbered<'_>) {
        timeline.push(message);
        metrics::inc(&self.metrics.messages_broadcast);
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
            let before = timeline.fanned_out;
            let batch: Frame = timeline.take_batch().into();
            // Kept first: nothing reaches a client (live, or in a later
            // greeting) that a restart would not have.
            self.journal_after(&timeline, before);
            // Take the pool before letting go of the timeline, so that no
            // client can join between the two and get this batch both in
            // its welcome's history and live.
            let pool = self.read();
            drop(timeline);
            let evictions = self.fan_out_to(&pool, &batch, &[]);
            drop(pool);
            timeline = self.timeline();
            self.remove_departing(&mut timeline, evictions);
        }
        self.flushing.store(false, Ordering::Release);
    }

    /// Hands the journal the messages numbered after `before`.
    fn journal_after(&self, timeline: &Timeline, before: u64) {
        let Some(journal) = &self.journal else {
            return;
        };
        let kept = timeline.kept_after(before);
        if kept.is_empty() {
            return;
        }
        if let Err(why) = journal.append(&self.name, &timeline.epoch, &kept) {
            crate::error!(
                "room {:?}: {} messages not written to --data-dir: {why}",
                self.name,
                kept.len()
            );
        }
    }

    /// Closes every connection for `reason` (the server is going away) and
    /// empties the room; no `leave` is sent, since everyone is leaving.
    /// Returns the outboxes, so the caller can wait for them to drain.
    pub fn close_all(&self, reason: &CloseReason) -> Vec<Arc<Outbox>> {
        let mut timeline = self.timeline();
        timeline.presence = Presence::default();
        let clients: Vec<Arc<Client>> = self.write().drain().map(|(_, c)| c).collect();
        for client in &clients {
            client.outbox.close(reason);
        }
        clients.iter().map(|c| c.outbox.clone()).collect()
    }

    fn fan_out(&self, frame: &Frame, except: &[ClientId]) -> Vec<(ClientId, Departure)> {
        self.fan_out_to(&self.read(), frame, except)
    }

    /// Pushes `frame` to every client in `pool` but `except`, and returns
    /// the clients that must go instead: expired ones (they never get the
    /// frame) and ones whose queue is full.
    fn fan_out_to(
        &self,
        pool: &HashMap<ClientId, Arc<Client>>,
        frame: &Frame,
        except: &[ClientId],
    ) -> Vec<(ClientId, Departure)> {
        let now = self.clock.unix_secs();
        let mut evictions = Vec::new();
        let mut delivered = 0;
        for (&id, client) in pool {
            if except.contains(&id) {
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

    /// Takes the departing clients out of the pool, closes the evicted ones
    /// (the close says why: 4001 after a `token_expired` notice, or 4008
    /// ahead of the backlog a slow consumer will never read), and puts a
    /// `leave` into the presence window for each user whose last
    /// connection this was.
    fn remove_departing(&self, timeline: &mut Timeline, mut departing: Vec<(ClientId, Departure)>) {
        while !departing.is_empty() {
            let removed: Vec<(ClientId, Arc<Client>, Departure)> = {
                let mut pool = self.write();
                departing
                    .drain(..)
                    .filter_map(|(id, why)| pool.remove(&id).map(|c| (id, c, why)))
                    .collect()
            };
            for (id, client, why) in removed {
                // Closed once, by the first of its rooms to evict it; the
                // others only let it go.
                let reason = why.close_reason();
                if reason.is_some_and(|reason| client.outbox.close(&reason)) {
                    crate::info!("client {id} ({:?}) evicted: {why}", client.username);
                    let counter = match why {
                        Departure::TokenExpired => &self.metrics.expiry_disconnects,
                        _ => &self.metrics.slow_consumer_disconnects,
                    };
                    metrics::inc(counter);
                }
                let change = timeline.presence.disconnect(&client.username);
                if change.here {
                    self.tell_relay(&client.username);
                }
                if change.everywhere {
                    self.presence_changed(timeline, &client.username);
                }
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::Read;
    use std::net::TcpStream;

    use super::*;
    use crate::clock::ManualClock;
    use crate::outbox::QueueLimit;

    /// A client of the room at the other end of a loopback connection: the
    /// test reads what it was sent off the socket, as a client would.
    pub(in crate::room) struct Peer {
        pub(in crate::room) outbox: Arc<Outbox>,
        socket: TcpStream,
        unread: Vec<u8>,
    }

    impl Peer {
        /// The JSON of every text frame sent since the last call (frames
        /// reach a loopback peer as soon as they are sent).
        pub(in crate::room) fn messages(&mut self) -> Vec<serde_json::Value> {
            text_frames(&self.socket, &mut self.unread)
        }

        /// The `type` of every message sent since the last call.
        pub(in crate::room) fn types(&mut self) -> Vec<String> {
            self.messages()
                .iter()
                .map(|m| m["type"].as_str().unwrap().to_string())
                .collect()
        }
    }

    /// The JSON of every text frame `socket` has been sent since the last
    /// call (frames reach a loopback peer as soon as they are sent); a
    /// frame not yet whole waits in `unread` for the next call.
    pub(crate) fn text_frames(
        mut socket: &TcpStream,
        unread: &mut Vec<u8>,
    ) -> Vec<serde_json::Value> {
        socket.set_nonblocking(true).unwrap();
        let mut chunk = [0u8; 64 * 1024];
        while let Ok(n @ 1..) = socket.read(&mut chunk) {
            unread.extend_from_slice(&chunk[..n]);
        }
        let mut messages = Vec::new();
        // Server frames are unmasked (RFC 6455 §5.1): a 7-bit length, or
        // 126 and a 16-bit one (nothing here is bigger).
        while unread.len() >= 2 {
            let (start, len) = match unread[1] & 0x7f {
                126 if unread.len() >= 4 => {
                    (4, usize::from(u16::from_be_bytes([unread[2], unread[3]])))
                }
                126 => break,
                len => (2, usize::from(len)),
            };
            if unread.len() < start + len {
                break;
            }
            let frame: Vec<u8> = unread.drain(..start + len).collect();
            if frame[0] == 0x81 {
                messages.push(serde_json::from_slice(&frame[start..]).unwrap());
            }
        }
        messages
    }

    pub(in crate::room) fn client(room: &Room, name: &str, exp: u64) -> (ClientId, Peer) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let socket = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server_side, _) = listener.accept().unwrap();
        let limit = QueueLimit {
            frames: 8,
            bytes: 1 << 20,
        };
        let outbox = Outbox::new(limit, Arc::new(server_side), Arc::default());
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let client = Arc::new(Client::new(name.into(), exp, outbox.clone()));
        room.join(
            id,
            client,
            Greet::Welcome {
                rooms: &[],
                since: None,
            },
        );
        let peer = Peer {
            outbox,
            socket,
            unread: Vec::new(),
        };
        (id, peer)
    }

    /// A room on a clock that moves only when the test says.
    pub(in crate::room) fn clock_at_start() -> (Room, ManualClock) {
        let clock = ManualClock::new();
        (Room::new(10).with_clock(clock.clock()), clock)
    }

    pub(in crate::room) fn later() -> u64 {
        crate::clock::Clock::system().unix_secs() + 600
    }

    #[test]
    fn presence_counts_users_not_connections() {
        let room = Room::new(10);
        let (_, mut a) = client(&room, "a", later());
        room.flush_presence();
        assert_eq!(a.types(), ["welcome"], "no join about itself");
        let (b1, _b1) = client(&room, "b", later());
        let (b2, _b2) = client(&room, "b", later());
        room.flush_presence();
        room.leave(b1);
        room.leave(b1); // idempotent
        room.flush_presence();
        room.leave(b2);
        room.flush_presence();
        assert_eq!(a.types(), ["join", "leave"]);
        assert!(room.len() == 1);
    }

    #[test]
    fn an_expired_client_is_closed_instead_of_served() {
        let (room, clock) = clock_at_start();
        let start = room.clock.unix_secs();
        let (a_id, mut a) = client(&room, "a", start + 600);
        room.flush_presence();
        let (_, mut old) = client(&room, "old", start + 5);
        room.flush_presence();
        clock.advance(std::time::Duration::from_secs(5));
        assert_eq!(room.broadcast(a_id, "a", "hi", None, Fanout::Now), Ok(1));
        room.flush_presence();
        assert_eq!(room.len(), 1);
        // The expired client got its notice and the close, not the message.
        assert_eq!(old.types(), ["welcome", "error"]);
        assert!(old.outbox.is_closing());
        assert_eq!(old.outbox.close_code(), Some(4001));
        assert_eq!(a.types(), ["welcome", "join", "message", "leave"]);
    }

    #[test]
    fn held_messages_wait_for_the_flush_and_leave_as_one_batch() {
        let room = Room::new(10);
        let (a_id, mut a) = client(&room, "a", later());
        room.flush_presence();
        assert_eq!(a.types(), ["welcome"]);
        let deliveries = || room.metrics().deliveries.load(Ordering::Relaxed);
        let before = deliveries();
        assert_eq!(room.broadcast(a_id, "a", "one", None, Fanout::Held), Ok(1));
        assert_eq!(room.broadcast(a_id, "a", "two", None, Fanout::Held), Ok(2));
        assert!(a.messages().is_empty(), "a held message went out");
        room.flush_pending();
        let texts: Vec<_> = a.messages().iter().map(|m| m["text"].clone()).collect();
        assert_eq!(texts, ["one", "two"]);
        assert_eq!(
            deliveries() - before,
            1,
            "two messages, one push per client"
        );
        // Nothing pending: a flush is harmless.
        room.flush_pending();
        assert!(a.messages().is_empty());
    }

    #[test]
    fn presence_changes_in_one_window_go_out_as_one_frame() {
        let room = Room::new(10).with_presence_list_max(2);
        let (_, mut a) = client(&room, "a", later());
        room.flush_presence();
        let _others: Vec<_> = ["b", "c", "d"]
            .iter()
            .map(|name| client(&room, name, later()))
            .collect();
        room.flush_presence();
        let frames = a.messages();
        assert_eq!(frames.len(), 2, "welcome, then one frame: {frames:?}");
        assert_eq!(
            frames[1],
            serde_json::json!({"type":"presence","room":"general","joined":["b","c","d"],"left":[]})
        );
        // A newcomer's welcome lists whom the others were told of, itself
        // included, cut to the list's length, and counts them all.
        let (_, mut e) = client(&room, "e", later());
        let welcome = &e.messages()[0];
        assert_eq!(welcome["online"], serde_json::json!(["a", "b"]));
        assert_eq!(welcome["online_count"], 5);
        assert_eq!(welcome["online_truncated"], true);
    }

    #[test]
    fn a_poisoned_lock_does_not_stop_the_room() {
        let room = Arc::new(Room::new(10));
        let (a_id, mut a) = client(&room, "a", later());
        let poisoner = room.clone();
        let _ = std::thread::spawn(move || {
            let _timeline = poisoner.timeline();
            let _pool = poisoner.write();
            panic!("a client thread dies holding both locks");
        })
        .join();
        assert!(room.timeline.is_poisoned() && room.clients.is_poisoned());
        assert_eq!(
            room.broadcast(a_id, "a", "still works", None, Fanout::Now),
            Ok(1)
        );
        assert_eq!(a.types(), ["welcome", "message"]);
    }

    #[test]
    fn a_full_pending_batch_refuses_senders_instead_of_growing() {
        let room = Room::new(0).with_max_pending(100);
        let (a_id, mut a) = client(&room, "a", later());
        // Another thread is fanning out: messages wait in the batch.
        room.flushing.store(true, Ordering::Release);
        let mut taken = 0;
        while room.broadcast(a_id, "a", "0123456789", None, Fanout::Now) != Err(Refused::Busy) {
            taken += 1;
            assert!(taken < 10, "the batch never filled");
        }
        assert_eq!(a.types(), ["welcome"], "nothing fanned out yet");
        // That fan-out takes the batch; the room takes messages again.
        room.flushing.store(false, Ordering::Release);
        room.flush_unless_flushing(room.timeline());
        assert_eq!(a.messages().len() as u64, taken, "every message taken");
        assert_eq!(
            room.broadcast(a_id, "a", "again", None, Fanout::Now),
            Ok(taken + 1)
        );
    }

    #[test]
    fn closing_all_says_going_away_to_everyone() {
        let room = Room::new(10);
        let (_, _a) = client(&room, "a", later());
        let (_, _b) = client(&room, "b", later());
        let outboxes = room.close_all(&CloseReason::going_away());
        assert_eq!(outboxes.len(), 2);
        assert!(outboxes.iter().all(|o| o.close_code() == Some(1001)));
        assert_eq!(room.len(), 0);
    }
}
