//! Several instances, every room shared, over Redis (`--features redis`,
//! `--redis URL`): the [`Relay`] that joins this instance's rooms to every
//! other instance using the same Redis and key prefix.
//!
//! ```text
//!   instance A                         Redis                          instance B
//!  ┌───────────┐ EVAL publish ┌─────────────────────────┐
//!  │ a reader  │─────────────►│ P:seq, {P:R}:seq  INCR  │
//!  │ thread    │◄── R's seq ──│ P:messages  stream,     │  XREAD BLOCK  ┌──────────┐
//!  └───────────┘              │   every room, MAXLEN ~  │──────────────►│ consumer │─► rooms.get(R)
//!  ┌───────────┐ XREAD BLOCK  │ {P:R}:history  R's own  │               └──────────┘   .deliver
//!  │ consumer  │◄─────────────│ P:presence  stream of   │                              ─► R's clients
//!  └─────┬─────┘              │   join/leave events     │
//!        ▼ rooms.get(R)       │ P:online:ID set, TTL    │◄─ SADD/SREM, heartbeat ─ presence thread
//!  ┌───────────┐ SADD/SREM,   │ P:instances zset of     │
//!  │ presence  │─ heartbeat ─►│   live ids (by expiry)  │
//!  └───────────┘              └─────────────────────────┘
//! ```
//!
//! **Messages** ([`Relay::publish`], here). A reader thread runs one Lua
//! script: it numbers the message twice, `INCR P:seq` (the delivery
//! number, over every room) and `INCR {P:R}:seq` (the room's `seq`), then
//! appends it to `P:messages` under the delivery number and to the room's
//! own `{P:R}:history` under its `seq`. A script runs atomically, so every
//! instance's messages to a room share one `seq` sequence, and the
//! delivery stream holds every room's messages in one order. Nothing is
//! fanned out at that point.
//!
//! **Delivery** ([`follow`]). Each instance has one consumer thread that
//! follows the delivery stream with `XREAD BLOCK` from the last entry it
//! read and hands each message to its room here, if the room exists here
//! ([`Room::deliver_relayed`]): the sender's own instance included, so
//! every client everywhere sees a room's messages in the same order. A
//! consumer whose connection drops reconnects and reads on from the same
//! number, so nothing is lost or repeated (as long as the stream still
//! holds it: it keeps [`STREAM_MIN_LEN`] messages, or `--history-size` if more).
//!
//! **History.** A room made here (the first subscribe on this instance,
//! or `general` at start) reads its newest `--history-size` messages and its
//! last `seq` from its own keys ([`Relay::seed`]), so `subscribed.history`
//! and `last_seq` are the same on every instance. Each history entry
//! carries its delivery number: the room takes as history what the
//! consumer has already handed out ([`Cluster::upto`]), and gets the rest
//! live, so a message stored meanwhile is neither lost nor shown twice.
//! See `crate::rooms` for how Redis is never asked under a lock.
//!
//! **Presence** ([`presence`]). Each instance keeps the set of its users,
//! per room, in `P:online:<id>` (entries `room<US>user`) and announces
//! each change on the `P:presence` stream, which every consumer reads
//! alongside the messages and hands to the room concerned. Every second an
//! instance renews its entry in `P:instances` (a sorted set scored by
//! expiry), and reads the sets that changed, to correct any drift; an
//! instance that stops renewing (it crashed) drops out after
//! [`INSTANCE_TTL`], and its users get a `leave` in each of their rooms.
//! The consumer keeps the last word per room (even rooms not here), so a
//! room made here later starts with who is in it elsewhere.
//!
//! **Redis away.** The consumer's connection breaking marks the relay
//! unavailable: messages are refused with `unavailable`, `/healthz` says
//! 503, clients stay connected. The threads retry with back-off and
//! everything resumes when Redis answers. A Redis that comes back without
//! its data would start the numbers at 1 again: each consumer, as it
//! reconnects, raises the delivery counter and each of its rooms' counters
//! to the last it delivered, and nobody publishes until [`SETTLE`] after
//! Redis's data began, by when every instance that was following has
//! reconnected.
//!
//! The scripts and keys are in [`scripts`]; what a Redis Cluster would
//! refuse is said there.

mod follow;
mod presence;
mod scripts;

use std::collections::{BTreeSet, HashMap};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, RwLock};
use std::thread;
use std::time::{Duration, Instant};

use redis::{Connection, RedisError, RedisResult};

use crate::metrics::{self, RedisCounters};
use crate::room::{Relay, RemotePresence, Room, Unavailable};
use crate::rooms::Rooms;
use scripts::{Keys, Scripts};

/// How often an instance renews its heartbeat and re-reads everyone's
/// presence.
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// An instance whose heartbeat is this old is gone, with its users.
pub const INSTANCE_TTL: Duration = Duration::from_secs(5);

/// Connecting to Redis, and each command but the blocking read, give up
/// after this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// Between attempts to reach Redis again.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// How long after a Redis's data began (it started empty, or lost its
/// data) nobody publishes: longer than the longest back-off plus a connect,
/// so every instance that was following the old data has reconnected and
/// raised `P:seq` to the last `seq` it delivered.
pub const SETTLE: Duration = Duration::from_secs(2);

/// Connections that publish messages: reader threads take turns on them.
const PUBLISHERS: usize = 4;

/// A publishing connection unused for this long is checked with a `PING`
/// before it carries a message: Redis's `timeout` setting, or a NAT, may
/// have closed it quietly, and a message must not be refused for that.
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// The message stream keeps at least this many messages (or `--history-size`,
/// if more). It is what instances read their deliveries from: one that
/// falls further behind than this (busy, or cut off from Redis while the
/// others chat on) finds the oldest ones trimmed. With only the history
/// (100) that would take a tenth of a second under load.
pub const STREAM_MIN_LEN: usize = 10_000;

/// The presence stream is only read live (drift is corrected by the
/// snapshots), so it is trimmed loosely to about this many events.
const PRESENCE_EVENTS: usize = 1000;

/// The `--redis` URL cannot be used; the text says why.
#[derive(Debug)]
pub struct BadUrl(pub String);

/// The URL for the log: a password in it stays out.
pub fn without_password(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("***"));
            }
            parsed.to_string()
        }
        Err(_) => "(unparsable URL)".to_string(),
    }
}

/// A publishing connection.
struct Publisher {
    con: Connection,
    /// [`Cluster::outages`] when it was opened.
    outages: u64,
    used: Instant,
}

/// The relay over Redis. Created by the server at start; its two threads
/// run from [`Cluster::start`] until [`Cluster::stop`].
pub struct Cluster {
    /// A room's keys expire this long after its last message.
    room_ttl: Duration,
    client: redis::Client,
    keys: Keys,
    scripts: Scripts,
    /// This instance's id in Redis: random, new at every start.
    id: String,
    /// The message stream's `MAXLEN` (see [`STREAM_MIN_LEN`]).
    stream_len: usize,
    /// `--history-size`: how many messages a room made here reads back
    /// (what recovery can reach back through, on any instance), and (at
    /// least 1) each room's history stream's `MAXLEN`.
    history: usize,
    publishers: Vec<Mutex<Option<Publisher>>>,
    next_publisher: AtomicUsize,
    /// How many times Redis has been lost: a publishing connection opened
    /// before the latest loss is dead even if nobody has used it since.
    outages: AtomicU64,
    /// `None` while the consumer follows the stream; otherwise why not.
    down: RwLock<Option<String>>,
    /// The consumer has tried Redis once: it follows the stream, or knows
    /// it cannot.
    tried: AtomicBool,
    /// The highest delivery number read here (from `P:messages`): where
    /// the consumer reads on after a reconnect, and the floor for numbering.
    delivered: AtomicU64,
    /// Held while the consumer hands a batch to the rooms and moves
    /// `delivered` on (see [`Cluster::upto`]).
    handing: Mutex<()>,
    /// (room, user) pairs whose presence here changed since the presence
    /// thread last wrote them.
    changed: Mutex<BTreeSet<(Arc<str>, Arc<str>)>>,
    /// Who is in each room on the other instances, as the consumer last
    /// read it (rooms not here included): what a room made here starts
    /// from. The consumer holds this lock while it hands presence to the
    /// rooms, so that a room being seeded misses nothing in between.
    remote: Mutex<HashMap<Arc<str>, RemotePresence>>,
    wake: Condvar,
    counters: Arc<RedisCounters>,
    stop: AtomicBool,
    presence_thread: Mutex<Option<thread::JoinHandle<()>>>,
}

impl Cluster {
    /// Checks the URL; connects only when started (Redis may be down now
    /// and come up later).
    /// `room_ttl`: a room's keys expire this long after its last message
    /// (`--room-idle-ttl`), so Redis forgets idle rooms as instances do.
    pub fn new(
        url: &str,
        prefix: &str,
        history: usize,
        room_ttl: Duration,
        counters: Arc<RedisCounters>,
    ) -> Result<Cluster, BadUrl> {
        let client = redis::Client::open(url).map_err(|e| BadUrl(e.to_string()))?;
        let id = instance_id();
        Ok(Cluster {
            client,
            keys: Keys::new(prefix, &id),
            room_ttl,
            scripts: Scripts::new(),
            id,
            stream_len: history.max(STREAM_MIN_LEN),
            history,
            publishers: (0..PUBLISHERS).map(|_| Mutex::new(None)).collect(),
            next_publisher: AtomicUsize::new(0),
            outages: AtomicU64::new(0),
            down: RwLock::new(Some("not connected to Redis yet".to_string())),
            tried: AtomicBool::new(false),
            delivered: AtomicU64::new(0),
            handing: Mutex::new(()),
            changed: Mutex::new(BTreeSet::new()),
            remote: Mutex::new(HashMap::new()),
            wake: Condvar::new(),
            counters,
            stop: AtomicBool::new(false),
            presence_thread: Mutex::new(None),
        })
    }

    /// This instance's id in Redis.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn spawn(
        self: &Arc<Self>,
        rooms: &Arc<Rooms>,
        name: &str,
        body: fn(&Cluster, &Rooms),
    ) -> Option<thread::JoinHandle<()>> {
        let (cluster, rooms) = (self.clone(), rooms.clone());
        let spawned = thread::Builder::new()
            .name(name.into())
            .stack_size(256 * 1024)
            .spawn(move || body(&cluster, &rooms));
        spawned
            .inspect_err(|e| crate::error!("cannot start the {name} thread: {e}"))
            .ok()
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    fn connect(&self, read_timeout: Duration) -> RedisResult<Connection> {
        let con = self.client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
        con.set_read_timeout(Some(read_timeout))?;
        con.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(con)
    }

    /// Counts a failed Redis operation, and logs it: as a warning the
    /// first time, and only at debug level while the same outage goes on
    /// (retries come every second).
    fn failed(&self, what: &str, error: &str, again: bool) {
        metrics::inc(&self.counters.errors);
        if again {
            crate::debug!("redis: {what} failed again: {error}");
        } else {
            crate::warn!("redis: {what} failed: {error}");
        }
    }

    /// The relay can take messages again (`None`), or cannot, and why.
    fn set_down(&self, why: Option<String>) {
        let up = why.is_none();
        let mut down = self.down.write().unwrap_or_else(PoisonError::into_inner);
        if down.is_some() && up {
            crate::info!("redis: connected; following the rooms' stream");
        } else if down.is_none() && !up {
            crate::warn!("redis: unavailable; chat messages are refused until it is back");
            self.outages.fetch_add(1, Ordering::Release);
        }
        *down = why;
        self.counters.up.store(u64::from(up), Ordering::Relaxed);
    }

    /// Runs `body` on one of the pooled connections, taking turns; `what`
    /// names it in the log if it fails.
    fn on_pool<T>(
        &self,
        what: &str,
        body: impl FnOnce(&mut Connection) -> RedisResult<T>,
    ) -> Result<T, Unavailable> {
        let turn = self.next_publisher.fetch_add(1, Ordering::Relaxed) % self.publishers.len();
        let mut slot = lock(&self.publishers[turn]);
        // Waiting for the slot may have outlasted Redis (a hung Redis
        // holds each slot for a timeout): do not queue behind it.
        self.health()?;
        let done = self.ready_publisher(&mut slot).and_then(body);
        done.map_err(|error| {
            *slot = None;
            self.failed(what, &error.to_string(), false);
            Unavailable(short(&error))
        })
    }

    /// Where a room registered before this call takes its history up to:
    /// every message numbered up to it has been handed to the rooms (this
    /// one too, had it been here), and every one after it will be handed
    /// to this room live, since the consumer looks rooms up after this.
    fn upto(&self) -> u64 {
        let _handing = lock(&self.handing);
        self.delivered.load(Ordering::Relaxed)
    }

    /// Publishes on the pool (see [`Relay::publish`]).
    fn publish_on_pool(
        &self,
        room: &str,
        floor: u64,
        from: &str,
        text: &str,
        id: Option<&str>,
    ) -> Result<u64, Unavailable> {
        let keys = self.keys.room(room);
        let delivered = self.delivered.load(Ordering::Relaxed);
        let stored = self.on_pool("publishing a message", |con| {
            self.scripts
                .publish
                .key(&self.keys.seq)
                .key(&self.keys.messages)
                .key(&keys.seq)
                .key(&keys.history)
                .key(&keys.epoch)
                .arg(room)
                .arg(from)
                .arg(text)
                .arg(self.stream_len)
                .arg(delivered)
                .arg(id.unwrap_or(""))
                .arg(floor)
                .arg(self.history.max(1))
                .arg(millis(self.room_ttl))
                .invoke::<u64>(con)
        });
        // It may have been stored all the same (the reply was lost).
        stored.map_err(|Unavailable(why)| {
            Unavailable(format!(
                "Redis did not confirm it ({why}); it may still appear"
            ))
        })
    }

    /// The slot's connection, ready to use: replaced if it was opened before
    /// the last outage, or if it sat idle and no longer answers.
    fn ready_publisher<'a>(
        &self,
        slot: &'a mut Option<Publisher>,
    ) -> RedisResult<&'a mut Connection> {
        let outages = self.outages.load(Ordering::Acquire);
        let usable = match slot.as_mut() {
            Some(p) if p.outages == outages => {
                p.used.elapsed() < IDLE_CHECK || redis::cmd("PING").query::<()>(&mut p.con).is_ok()
            }
            _ => false,
        };
        if !usable {
            *slot = None;
        }
        let publisher = match slot {
            Some(publisher) => publisher,
            None => slot.insert(Publisher {
                con: self.connect(IO_TIMEOUT)?,
                outages,
                used: Instant::now(),
            }),
        };
        publisher.used = Instant::now();
        Ok(&mut publisher.con)
    }

    /// Runs one of the relay's thread bodies, turning a panic (a bug) into
    /// an error, so the thread carries on and the relay says it is down
    /// rather than silently stopping.
    fn guarded<T>(&self, body: impl FnOnce() -> RedisResult<T>) -> Result<T, String> {
        match catch_unwind(AssertUnwindSafe(body)) {
            Ok(result) => result.map_err(|e| short(&e)),
            Err(_) => {
                crate::error!("redis: a relay thread panicked (a bug; see above); restarting it");
                Err("the relay restarted after an internal error".to_string())
            }
        }
    }
}

impl Relay for Cluster {
    fn publish(
        &self,
        room: &str,
        floor: u64,
        from: &str,
        text: &str,
        id: Option<&str>,
    ) -> Result<u64, Unavailable> {
        self.health()?;
        self.publish_on_pool(room, floor, from, text, id)
    }

    /// Who is in the room elsewhere first (the consumer's last word, taken
    /// under its lock, so no event falls in between), then its history.
    fn seed(&self, room: &Room) -> Result<(), Unavailable> {
        {
            let remote = lock(&self.remote);
            let elsewhere = remote.get(&**room.name()).cloned().unwrap_or_default();
            room.remote_snapshot(elsewhere, false);
        }
        // Nobody is in it yet: the list goes out now, for its first
        // member's `subscribed`, rather than with the next window.
        room.flush_presence();
        let upto = self.upto();
        let seed = self.on_pool("reading a room's history", |con| {
            self.fetch(con, room.name(), upto)
        })?;
        room.seed(seed);
        Ok(())
    }

    /// Starts the consumer and the presence thread, which run until
    /// [`Relay::stop`], and waits for the consumer's first try at Redis,
    /// so that a server whose Redis is up takes messages from its first
    /// client.
    fn start(self: Arc<Self>, rooms: Arc<Rooms>) {
        self.spawn(&rooms, "redis-consumer", Cluster::consume);
        *lock(&self.presence_thread) = self.spawn(&rooms, "redis-presence", Cluster::keep_present);
        let deadline = Instant::now() + CONNECT_TIMEOUT + IO_TIMEOUT + SETTLE;
        while !self.tried.load(Ordering::Acquire) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(2));
        }
    }

    /// Stops the presence thread and tells the other instances that this
    /// one and its users are gone now, rather than when its heartbeat runs
    /// out. The consumer ends by itself within one blocking read
    /// ([`HEARTBEAT`]); it delivers nothing new meanwhile that matters, as
    /// the server is closing its clients.
    fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        *self.down.write().unwrap_or_else(PoisonError::into_inner) =
            Some("the server is stopping".to_string());
        {
            // Under the lock, so the wake-up cannot fall between the
            // presence thread's check of `stop` and its wait.
            let _changed = lock(&self.changed);
            self.wake.notify_all();
        }
        let Some(presence) = lock(&self.presence_thread).take() else {
            return;
        };
        // Its last heartbeat must not land after the goodbye.
        let _ = presence.join();
        let goodbye = self.connect(IO_TIMEOUT).and_then(|mut con| {
            self.scripts
                .gone
                .key(&self.keys.online)
                .key(&self.keys.version)
                .key(&self.keys.presence)
                .key(&self.keys.instances)
                .arg(&self.id)
                .arg(PRESENCE_EVENTS)
                .invoke::<()>(&mut con)
        });
        if let Err(e) = goodbye {
            crate::warn!("redis: could not say goodbye: {e}");
        }
    }

    fn presence_changed(&self, room: &Arc<str>, user: &Arc<str>) {
        lock(&self.changed).insert((room.clone(), user.clone()));
        self.wake.notify_one();
    }

    fn health(&self) -> Result<(), Unavailable> {
        match &*self.down.read().unwrap_or_else(PoisonError::into_inner) {
            None => Ok(()),
            Some(why) => Err(Unavailable(why.clone())),
        }
    }
}

/// A poisoned lock still guards consistent data here (each holder makes
/// one whole update), so a panic elsewhere must not stop the relay.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn millis(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// A fresh random instance id.
fn instance_id() -> String {
    let mut bytes = [0u8; 8];
    // Without the OS random source, the time and process id still tell
    // instances apart.
    if getrandom::fill(&mut bytes).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        bytes = (nanos ^ u64::from(std::process::id())).to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The error in a few words for clients and `/healthz`.
fn short(error: &RedisError) -> String {
    if error.is_timeout() {
        "timed out".to_string()
    } else if error.is_connection_refusal() {
        "connection refused".to_string()
    } else if error.is_connection_dropped() || error.is_io_error() {
        "connection lost".to_string()
    } else {
        error.to_string()
    }
}
