//! Several instances, one room, over Redis (`--features redis`,
//! `--redis URL`): the [`Relay`] that joins this instance's [`Room`] to
//! every other one using the same Redis and key prefix.
//!
//! ```text
//!   instance A                         Redis                          instance B
//!  ┌───────────┐ EVAL publish ┌─────────────────────────┐
//!  │ a reader  │─────────────►│ P:seq       INCR        │
//!  │ thread    │◄── seq ──────│ P:messages  stream,     │  XREAD BLOCK  ┌──────────┐
//!  └───────────┘              │   id = seq, MAXLEN ~    │──────────────►│ consumer │─► room.deliver
//!  ┌───────────┐ XREAD BLOCK  │   10,000                │               └──────────┘   ─► clients
//!  │ consumer  │◄─────────────│ P:presence  stream of   │
//!  └─────┬─────┘              │   join/leave events     │
//!        ▼ room.deliver       │ P:online:ID set, TTL    │◄─ SADD/SREM, heartbeat ─ presence thread
//!  ┌───────────┐ SADD/SREM,   │ P:instances zset of     │
//!  │ presence  │─ heartbeat ─►│   live ids (by expiry)  │
//!  └───────────┘              └─────────────────────────┘
//! ```
//!
//! **Messages.** A reader thread's [`Relay::publish`] runs one Lua script:
//! `INCR P:seq`, then `XADD P:messages MAXLEN ~ <len> <seq>-0 ...`. A
//! script runs atomically, so every instance's messages share one `seq`
//! sequence, and the stream holds them in that order (the entry id *is*
//! the `seq`). Nothing is fanned out at that point. Each instance has one
//! consumer thread that follows the stream with `XREAD BLOCK` from the last
//! `seq` it delivered and hands what it reads to [`Room::deliver`]: the
//! sender's own instance included, so every client everywhere sees the same
//! order. A consumer whose connection drops reconnects and reads on from
//! the same id, so nothing is lost or repeated (as long as the stream still
//! holds it: it keeps [`STREAM_MIN_LEN`] messages, or `--history` if more).
//! The newest `--history` entries are also the `welcome.history` of an
//! instance that starts.
//!
//! **Presence.** Each instance keeps the set of its users in
//! `P:online:<id>` and announces each change on the `P:presence` stream,
//! which every consumer reads alongside the messages. Every second an
//! instance renews its entry in `P:instances` (a sorted set scored by
//! expiry) and the set's TTL, and reads everyone's sets at once to correct
//! any drift; an instance that stops renewing (it crashed) drops out after
//! [`INSTANCE_TTL`], and its users get a `leave`.
//!
//! **Redis away.** The consumer's connection breaking marks the relay
//! unavailable: messages are refused with `unavailable` (never accepted
//! and lost), `/healthz` says 503, clients stay connected. The threads
//! retry with back-off and everything resumes when Redis answers. A Redis
//! restarted without its data would start `seq` again at 1; the publish
//! script never numbers a message at or below the highest `seq` the
//! publishing instance has delivered, so the sequence goes on.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, RwLock};
use std::thread;
use std::time::{Duration, Instant};

use redis::streams::{StreamId, StreamRangeReply, StreamReadReply};
use redis::{Connection, RedisError, RedisResult, Script, Value};

use crate::Shared;
use crate::metrics::{self, RedisCounters};
use crate::room::{Delivery, Relay, RemotePresence, Room, Unavailable};

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

/// Connections that publish messages: reader threads take turns on them.
const PUBLISHERS: usize = 4;

/// The message stream keeps at least this many messages (or `--history`,
/// if more). It is what an instance reads its deliveries from: an instance
/// that falls further behind than this (busy, or cut off from Redis while
/// the others chat on) finds the oldest ones trimmed. With only the history
/// (100) that would take a tenth of a second under load.
pub const STREAM_MIN_LEN: usize = 10_000;

/// Entries one `XREAD` returns at most per stream.
const READ_BATCH: usize = 512;

/// The presence stream is only read live (drift is corrected by the
/// snapshots), so it is trimmed loosely to about this many events.
const PRESENCE_EVENTS: usize = 1000;

/// Numbers and stores one message. KEYS: seq counter, message stream.
/// ARGV: from, text, MAXLEN, floor (the highest `seq` the caller has
/// delivered). Returns the `seq`.
const PUBLISH: &str = r"
local seq = redis.call('INCR', KEYS[1])
local floor = tonumber(ARGV[4])
local top = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
if #top > 0 then
  local last = tonumber(string.match(top[1][1], '^%d+'))
  if last > floor then floor = last end
end
if seq <= floor then
  -- Redis lost the counter (restarted empty, or the key was deleted):
  -- never reuse a seq that clients have already seen.
  seq = floor + 1
  redis.call('SET', KEYS[1], seq)
end
local t = redis.call('TIME')
local ts = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], string.format('%d-0', seq),
  'from', ARGV[1], 'text', ARGV[2], 'ts', ts)
return seq
";

/// This instance's users changed. KEYS: its online set, presence stream.
/// ARGV: instance id, TTL ms, presence MAXLEN, then pairs of user and `1`
/// (here) or `0` (gone).
const CHANGE: &str = r"
for i = 4, #ARGV, 2 do
  local op = 'leave'
  if ARGV[i + 1] == '1' then
    redis.call('SADD', KEYS[1], ARGV[i])
    op = 'join'
  else
    redis.call('SREM', KEYS[1], ARGV[i])
  end
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*',
    'instance', ARGV[1], 'user', ARGV[i], 'op', op)
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
";

/// Writes this instance's whole user set (after a (re)connect, when Redis
/// may have lost it) and its heartbeat. KEYS: online set, presence stream,
/// instances. ARGV: instance id, TTL ms, presence MAXLEN, users...
const SYNC: &str = r"
redis.call('DEL', KEYS[1])
for i = 4, #ARGV do redis.call('SADD', KEYS[1], ARGV[i]) end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[2]), ARGV[1])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*',
  'instance', ARGV[1], 'op', 'sync')
";

/// The heartbeat: this instance is alive for another TTL; dead entries go.
/// KEYS: online set, instances. ARGV: instance id, TTL ms.
const BEAT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
";

/// A clean shutdown: this instance and its users are gone now, not after
/// the TTL. KEYS: online set, presence stream, instances. ARGV: instance
/// id, presence MAXLEN.
const GONE: &str = r"
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*',
  'instance', ARGV[1], 'op', 'gone')
";

/// Everyone's presence at one instant. KEYS: instances, presence stream.
/// ARGV: key prefix, this instance's id. Returns the presence stream's last
/// id (events up to it are in the snapshot), then pairs of instance id and
/// its users, for every live instance but this one.
const SNAPSHOT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local top = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
local out = { '0-0' }
if #top > 0 then out[1] = top[1][1] end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')) do
  if id ~= ARGV[2] then
    table.insert(out, id)
    table.insert(out, redis.call('SMEMBERS', ARGV[1] .. ':online:' .. id))
  end
end
return out
";

/// The scripts, hashed once (they run by `EVALSHA`, and are loaded again
/// if Redis answers `NOSCRIPT`, as after a restart).
struct Scripts {
    publish: Script,
    change: Script,
    sync: Script,
    beat: Script,
    gone: Script,
    snapshot: Script,
}

impl Scripts {
    fn new() -> Scripts {
        Scripts {
            publish: Script::new(PUBLISH),
            change: Script::new(CHANGE),
            sync: Script::new(SYNC),
            beat: Script::new(BEAT),
            gone: Script::new(GONE),
            snapshot: Script::new(SNAPSHOT),
        }
    }
}

/// The Redis keys of one room (one `--redis-prefix`).
struct Keys {
    prefix: String,
    seq: String,
    messages: String,
    presence: String,
    instances: String,
    /// This instance's user set.
    online: String,
}

impl Keys {
    fn new(prefix: &str, instance: &str) -> Keys {
        Keys {
            prefix: prefix.to_string(),
            seq: format!("{prefix}:seq"),
            messages: format!("{prefix}:messages"),
            presence: format!("{prefix}:presence"),
            instances: format!("{prefix}:instances"),
            online: format!("{prefix}:online:{instance}"),
        }
    }
}

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

/// The relay over Redis. Created by the server at start; its two threads
/// run from [`Cluster::start`] until the server stops.
pub struct Cluster {
    client: redis::Client,
    keys: Keys,
    scripts: Scripts,
    /// This instance's id in Redis: random, new at every start.
    id: String,
    /// The message stream's `MAXLEN` (see [`STREAM_MIN_LEN`]).
    stream_len: usize,
    /// `--history`: how many messages a starting instance reads back.
    history: usize,
    /// Each with the outage count it was opened in.
    publishers: Vec<Mutex<Option<(u64, Connection)>>>,
    /// How many times Redis has been lost: a publishing connection opened
    /// before the latest loss is dead even if nobody has used it since.
    outages: AtomicU64,
    next_publisher: AtomicUsize,
    /// `None` while the consumer follows the stream; otherwise why not.
    down: RwLock<Option<String>>,
    /// The consumer has tried Redis once (and is either following the
    /// stream or knows it cannot).
    tried: AtomicBool,
    /// The highest `seq` delivered here: the floor for numbering.
    delivered: AtomicU64,
    /// Users whose presence here changed since the presence thread last
    /// wrote them.
    changed: Mutex<BTreeSet<Arc<str>>>,
    wake: Condvar,
    counters: Arc<RedisCounters>,
    /// Set when the server stops; the presence thread, to be waited for.
    stop: Arc<AtomicBool>,
    presence_thread: Mutex<Option<thread::JoinHandle<()>>>,
}

impl Cluster {
    /// Checks the URL; connects only when started (Redis may be down now
    /// and come up later).
    pub fn new(
        url: &str,
        prefix: &str,
        history: usize,
        counters: Arc<RedisCounters>,
    ) -> Result<Cluster, BadUrl> {
        let client = redis::Client::open(url).map_err(|e| BadUrl(e.to_string()))?;
        let id = instance_id();
        Ok(Cluster {
            client,
            keys: Keys::new(prefix, &id),
            scripts: Scripts::new(),
            id,
            stream_len: history.max(STREAM_MIN_LEN),
            history,
            publishers: (0..PUBLISHERS).map(|_| Mutex::new(None)).collect(),
            outages: AtomicU64::new(0),
            next_publisher: AtomicUsize::new(0),
            down: RwLock::new(Some("not connected to Redis yet".to_string())),
            tried: AtomicBool::new(false),
            delivered: AtomicU64::new(0),
            changed: Mutex::new(BTreeSet::new()),
            wake: Condvar::new(),
            counters,
            stop: Arc::default(),
            presence_thread: Mutex::new(None),
        })
    }

    /// This instance's id in Redis.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Starts the consumer and the presence thread, which run until
    /// [`Cluster::stop`], and waits for the first try at Redis, so that a
    /// server whose Redis is up takes messages from its first client.
    pub fn start(self: &Arc<Self>, shared: &Arc<Shared>) {
        self.spawn(shared, "redis-consumer", Cluster::consume);
        *lock(&self.presence_thread) = self.spawn(shared, "redis-presence", Cluster::announce);
        let deadline = Instant::now() + CONNECT_TIMEOUT + IO_TIMEOUT;
        while !self.tried.load(Ordering::Acquire) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(2));
        }
    }

    fn spawn(
        self: &Arc<Self>,
        shared: &Arc<Shared>,
        name: &str,
        body: fn(&Cluster, &Room),
    ) -> Option<thread::JoinHandle<()>> {
        let (cluster, shared) = (self.clone(), shared.clone());
        let spawned = thread::Builder::new()
            .name(name.into())
            .stack_size(256 * 1024)
            .spawn(move || body(&cluster, &shared.room));
        spawned
            .inspect_err(|e| crate::error!("cannot start the {name} thread: {e}"))
            .ok()
    }

    /// Stops both threads and tells the other instances that this one and
    /// its users are gone now, rather than when its heartbeat runs out.
    /// The consumer ends within one blocking read ([`HEARTBEAT`]).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        *self.down.write().unwrap_or_else(PoisonError::into_inner) =
            Some("the server is stopping".to_string());
        self.wake.notify_all();
        let Some(presence) = lock(&self.presence_thread).take() else {
            return;
        };
        // Its last heartbeat must not land after the goodbye.
        let _ = presence.join();
        let result = self.connect(IO_TIMEOUT).and_then(|mut con| {
            self.scripts
                .gone
                .key(&self.keys.online)
                .key(&self.keys.presence)
                .key(&self.keys.instances)
                .arg(&self.id)
                .arg(PRESENCE_EVENTS)
                .invoke::<()>(&mut con)
        });
        if let Err(e) = result {
            crate::warn!("redis: could not say goodbye: {e}");
        }
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
    fn failed(&self, what: &str, error: &RedisError, again: bool) {
        metrics::inc(&self.counters.errors);
        if again {
            crate::debug!("redis: {what} failed again: {error}");
        } else {
            crate::warn!("redis: {what} failed: {error}");
        }
    }

    fn set_down(&self, why: Option<String>) {
        let up = why.is_none();
        let mut down = self.down.write().unwrap_or_else(PoisonError::into_inner);
        if down.is_some() && up {
            crate::info!("redis: connected; following the room's stream");
        } else if down.is_none() && !up {
            crate::warn!("redis: unavailable; chat messages are refused until it is back");
            self.outages.fetch_add(1, Ordering::Release);
        }
        *down = why;
        self.counters.up.store(u64::from(up), Ordering::Relaxed);
        self.tried.store(true, Ordering::Release);
    }

    // ---------------------------------------------------------------------
    // The consumer: follows both streams and snapshots presence.

    /// The consumer thread: connect, follow, and when the connection
    /// breaks, be unavailable until it is back.
    fn consume(&self, room: &Room) {
        let stop = &*self.stop;
        let mut backoff = BACKOFF_MIN;
        let mut lost = false;
        while !stop.load(Ordering::Acquire) {
            let ended = self.connect(HEARTBEAT + IO_TIMEOUT).and_then(|mut con| {
                if lost {
                    metrics::inc(&self.counters.reconnects);
                    lost = false;
                }
                backoff = BACKOFF_MIN;
                self.follow(&mut con, room, stop)
            });
            if let Err(error) = ended {
                self.failed("reading the streams", &error, lost);
                self.set_down(Some(format!("Redis is unreachable ({})", short(&error))));
                lost = true;
                thread::sleep(backoff);
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }

    /// Reads both streams on one connection until it fails or `stop`.
    fn follow(&self, con: &mut Connection, room: &Room, stop: &AtomicBool) -> RedisResult<()> {
        if room.last_seq() == 0 {
            room.seed_history(self.recent(con)?);
        }
        let connected = Instant::now();
        let mut presence_cursor = self.snapshot(con, room, true)?;
        self.delivered.store(room.last_seq(), Ordering::Relaxed);
        self.set_down(None);
        let mut next_snapshot = connected + HEARTBEAT;
        while !stop.load(Ordering::Acquire) {
            let now = Instant::now();
            if now >= next_snapshot {
                // Right after a reconnect, an instance missing from Redis
                // may just not have rewritten its set yet: keep its users
                // for one TTL rather than flap them offline and back.
                let settling = now < connected + INSTANCE_TTL;
                presence_cursor = self.snapshot(con, room, settling)?;
                next_snapshot = now + HEARTBEAT;
            }
            let block = next_snapshot
                .saturating_duration_since(now)
                .max(Duration::from_millis(1));
            let cursor = format!("{}-0", room.last_seq());
            let reply: Option<StreamReadReply> = redis::cmd("XREAD")
                .arg("COUNT")
                .arg(READ_BATCH)
                .arg("BLOCK")
                .arg(block.as_millis() as u64)
                .arg("STREAMS")
                .arg(&self.keys.messages)
                .arg(&self.keys.presence)
                .arg(&cursor)
                .arg(&presence_cursor)
                .query(con)?;
            for stream in reply.map(|r| r.keys).unwrap_or_default() {
                if stream.key == self.keys.messages {
                    self.deliver(room, &stream.ids);
                } else if let Some(last) = stream.ids.last() {
                    presence_cursor = last.id.clone();
                    if self.apply_presence(room, &stream.ids) {
                        next_snapshot = Instant::now();
                    }
                }
            }
        }
        Ok(())
    }

    /// The newest messages in the stream, oldest first, for the history.
    fn recent(&self, con: &mut Connection) -> RedisResult<Vec<Delivery>> {
        let reply: StreamRangeReply = redis::cmd("XREVRANGE")
            .arg(&self.keys.messages)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            // At least one, for the `seq` to follow on from.
            .arg(self.history.max(1))
            .query(con)?;
        Ok(reply.ids.iter().rev().filter_map(delivery).collect())
    }

    /// Hands messages read from the stream to the room.
    fn deliver(&self, room: &Room, entries: &[StreamId]) {
        let messages: Vec<Delivery> = entries.iter().filter_map(delivery).collect();
        let (Some(first), Some(last)) = (messages.first(), messages.last()) else {
            return;
        };
        let before = room.last_seq();
        if before > 0 && first.seq > before + 1 {
            // The stream no longer held them: this instance was cut off
            // for longer than the history lasts, or Redis lost its data.
            let missed = first.seq - before - 1;
            metrics::add(&self.counters.missed, missed);
            crate::warn!(
                "redis: {missed} messages (seq {}..{}) were gone from the stream before this \
                 instance read them",
                before + 1,
                first.seq - 1
            );
        }
        room.deliver(&messages);
        self.delivered.store(last.seq, Ordering::Relaxed);
    }

    /// Applies other instances' presence events; true if one asks for a
    /// fresh snapshot (an instance resynced or left).
    fn apply_presence(&self, room: &Room, events: &[StreamId]) -> bool {
        let mut resnapshot = false;
        for event in events {
            let instance: Option<String> = event.get("instance");
            let Some(instance) = instance.filter(|i| *i != self.id) else {
                continue;
            };
            let op: Option<String> = event.get("op");
            let user: Option<String> = event.get("user");
            match (op.as_deref(), user) {
                (Some("join"), Some(user)) => room.remote_presence(&instance, &user, true),
                (Some("leave"), Some(user)) => room.remote_presence(&instance, &user, false),
                _ => resnapshot = true,
            }
        }
        resnapshot
    }

    /// Reads every live instance's users at once and gives them to the
    /// room; returns the presence stream id the snapshot is as of.
    fn snapshot(
        &self,
        con: &mut Connection,
        room: &Room,
        keep_missing: bool,
    ) -> RedisResult<String> {
        let reply: Vec<Value> = self
            .scripts
            .snapshot
            .key(&self.keys.instances)
            .key(&self.keys.presence)
            .arg(&self.keys.prefix)
            .arg(&self.id)
            .invoke(con)?;
        let mut items = reply.into_iter();
        let cursor: String = match items.next() {
            Some(v) => redis::from_redis_value(v)?,
            None => "0-0".to_string(),
        };
        let mut remote = RemotePresence::new();
        while let (Some(id), Some(users)) = (items.next(), items.next()) {
            let id: String = redis::from_redis_value(id)?;
            let users: Vec<String> = redis::from_redis_value(users)?;
            remote.insert(id.into(), users.into_iter().map(Arc::from).collect());
        }
        room.remote_snapshot(remote, keep_missing);
        Ok(cursor)
    }

    // ---------------------------------------------------------------------
    // The presence thread: writes this instance's users and heartbeat.

    /// The presence thread: after each change, and every [`HEARTBEAT`],
    /// brings this instance's entry in Redis up to date.
    fn announce(&self, room: &Room) {
        let stop = &*self.stop;
        let mut con: Option<Connection> = None;
        let mut backoff = BACKOFF_MIN;
        let mut next_beat = Instant::now();
        while !stop.load(Ordering::Acquire) {
            let changed = self.wait_for_changes(next_beat);
            if stop.load(Ordering::Acquire) {
                break;
            }
            let result = match con.as_mut() {
                Some(con) => self.write_changes(con, room, changed),
                // A new connection may be to a Redis that lost everything:
                // write the whole set, which covers `changed` too.
                None => self.connect(IO_TIMEOUT).and_then(|mut fresh| {
                    self.sync(&mut fresh, room)?;
                    con = Some(fresh);
                    Ok(())
                }),
            };
            let result = result.and_then(|()| match con.as_mut() {
                Some(c) if Instant::now() >= next_beat => {
                    next_beat = Instant::now() + HEARTBEAT;
                    self.beat(c)
                }
                _ => Ok(()),
            });
            match result {
                Ok(()) => backoff = BACKOFF_MIN,
                Err(error) => {
                    self.failed("writing presence", &error, backoff > BACKOFF_MIN);
                    con = None;
                    thread::sleep(backoff);
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    /// Waits until a user's presence changes here or `until`, and takes
    /// the changed users.
    fn wait_for_changes(&self, until: Instant) -> BTreeSet<Arc<str>> {
        let mut changed = self.changed();
        while changed.is_empty() && !self.stop.load(Ordering::Acquire) {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            changed = self
                .wake
                .wait_timeout(changed, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        std::mem::take(&mut *changed)
    }

    fn changed(&self) -> MutexGuard<'_, BTreeSet<Arc<str>>> {
        lock(&self.changed)
    }

    fn write_changes(
        &self,
        con: &mut Connection,
        room: &Room,
        changed: BTreeSet<Arc<str>>,
    ) -> RedisResult<()> {
        if changed.is_empty() {
            return Ok(());
        }
        let mut call = self.scripts.change.prepare_invoke();
        call.key(&self.keys.online)
            .key(&self.keys.presence)
            .arg(&self.id)
            .arg(ttl_ms())
            .arg(PRESENCE_EVENTS);
        for user in &changed {
            // Whatever happened in between, write how it is now.
            call.arg(&**user)
                .arg(if room.is_here(user) { "1" } else { "0" });
        }
        call.invoke(con)
    }

    fn sync(&self, con: &mut Connection, room: &Room) -> RedisResult<()> {
        self.changed().clear();
        let users = room.local_users();
        let mut call = self.scripts.sync.prepare_invoke();
        call.key(&self.keys.online)
            .key(&self.keys.presence)
            .key(&self.keys.instances)
            .arg(&self.id)
            .arg(ttl_ms())
            .arg(PRESENCE_EVENTS);
        for user in &users {
            call.arg(&**user);
        }
        call.invoke(con)
    }

    fn beat(&self, con: &mut Connection) -> RedisResult<()> {
        self.scripts
            .beat
            .key(&self.keys.online)
            .key(&self.keys.instances)
            .arg(&self.id)
            .arg(ttl_ms())
            .invoke(con)
    }

    /// Runs `f` on one of the publishing connections, connecting it first
    /// if need be; a connection that fails is dropped, and the next use
    /// connects afresh.
    fn with_publisher<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> RedisResult<T>,
    ) -> RedisResult<T> {
        let turn = self.next_publisher.fetch_add(1, Ordering::Relaxed) % self.publishers.len();
        let mut slot = lock(&self.publishers[turn]);
        let outages = self.outages.load(Ordering::Acquire);
        if slot.as_ref().is_some_and(|(opened, _)| *opened != outages) {
            // Its first command would fail: a message refused for nothing.
            *slot = None;
        }
        let (_, con) = match slot.as_mut() {
            Some(open) => open,
            None => slot.insert((outages, self.connect(IO_TIMEOUT)?)),
        };
        let result = f(con);
        if result.is_err() {
            *slot = None;
        }
        result
    }
}

impl Relay for Cluster {
    fn publish(&self, from: &str, text: &str) -> Result<u64, Unavailable> {
        self.health()?;
        let floor = self.delivered.load(Ordering::Relaxed);
        let stored = self.with_publisher(|con| {
            self.scripts
                .publish
                .key(&self.keys.seq)
                .key(&self.keys.messages)
                .arg(from)
                .arg(text)
                .arg(self.stream_len)
                .arg(floor)
                .invoke::<u64>(con)
        });
        stored.map_err(|error| {
            self.failed("publishing a message", &error, self.health().is_err());
            Unavailable(format!("Redis is unreachable ({})", short(&error)))
        })
    }

    fn presence_changed(&self, user: &Arc<str>) {
        self.changed().insert(user.clone());
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

/// A message as the stream holds it: the id is `<seq>-0`.
fn delivery(entry: &StreamId) -> Option<Delivery> {
    let seq = entry.id.split('-').next()?.parse().ok()?;
    Some(Delivery {
        seq,
        from: entry.get("from")?,
        text: entry.get("text")?,
        ts: entry.get("ts").unwrap_or(0),
    })
}

fn ttl_ms() -> u64 {
    INSTANCE_TTL.as_millis() as u64
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
