//! The Redis side of the relay: the keys and the Lua scripts that change
//! them. A script runs atomically in Redis (nothing else runs in between),
//! which is what makes a `seq` unique and a presence snapshot consistent.
//! Times come from Redis's own clock (`TIME`), so instances whose clocks
//! disagree still agree on heartbeats.
//!
//! | key (`P` = `--redis-prefix`, `R` = a room) | type | holds |
//! |---|---|---|
//! | `P:seq` | string | the last delivery number handed out (all rooms) |
//! | `P:messages` | stream | every room's messages, entry id `<delivery number>-0`, fields `room`, `rseq` (the room's `seq`), `from`, `text`, `ts`, `cid` |
//! | `{P:R}:seq` | string, TTL | room `R`'s last `seq`; expires `--room-idle-ttl` after its last message |
//! | `{P:R}:epoch` | string, TTL | room `R`'s epoch: 12 hex digits, set by its first message; expires with the counter |
//! | `{P:R}:history` | stream, TTL | room `R`'s messages, entry id `<seq>-0`, fields `n` (the delivery number), `from`, `text`, `ts`; `MAXLEN ~ --history`; expires with the counter |
//! | `P:epoch` | string | when this Redis's data began (ms) |
//! | `P:presence` | stream | `join`/`leave` (of a `R<US>user` entry), `sync`/`gone` events |
//! | `P:instances` | sorted set | live instance ids, scored by expiry (ms) |
//! | `P:online:<id>` | set, TTL | the `R<US>user` entries on instance `<id>` (`<US>` = `\x1f`) |
//! | `P:version:<id>` | string, TTL | bumped on each change of that set |
//!
//! A room's own keys share the hash tag `{P:R}`, so a Redis Cluster would
//! keep each room's counter and history together on one shard. The scripts
//! themselves are not Cluster-ready: the publish script writes `P:seq` and
//! `P:messages` with the room's keys, and the snapshot computes key names,
//! which a Redis Cluster refuses (`CROSSSLOT`). One Redis (with replicas)
//! is what the relay supports.

use redis::Script;

/// Numbers and stores one message to a room. KEYS: delivery counter,
/// delivery stream, the room's counter, the room's history, the room's
/// epoch (made with the room's first message). ARGV: room,
/// from, text, delivery stream length, delivery floor (the highest number
/// the caller has delivered), the sender's message id ("" for none, then
/// the entry has no `cid` field), room floor (the room's last `seq` at the
/// caller), room history length, the room's TTL in ms (`--room-idle-ttl`:
/// its keys expire that long after its last message, so Redis forgets idle
/// rooms as instances do). Returns the room's `seq`.
///
/// Each counter is raised past its stream's newest entry and the caller's
/// floor first: a counter behind what clients have seen (Redis lost it)
/// must never hand out a number twice.
const PUBLISH: &str = r"
local function next_number(counter, stream, floor)
  local n = redis.call('INCR', counter)
  local top = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
  if #top > 0 then
    local last = tonumber(string.match(top[1][1], '^%d+'))
    if last > floor then floor = last end
  end
  if n <= floor then
    n = floor + 1
    redis.call('SET', counter, n)
  end
  return n
end
local number = next_number(KEYS[1], KEYS[2], tonumber(ARGV[5]))
local seq = next_number(KEYS[3], KEYS[4], tonumber(ARGV[7]))
local t = redis.call('TIME')
local ts = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local epoch = redis.call('GET', KEYS[5])
if not epoch then
  -- The room's history begins (or began again, its keys gone): a new
  -- epoch, 12 hex digits of the time, like the instances' own.
  epoch = string.format('%012x', ts)
  redis.call('SET', KEYS[5], epoch)
end
local fields = { 'room', ARGV[1], 'rseq', seq, 'epoch', epoch, 'from', ARGV[2], 'text', ARGV[3],
  'ts', ts }
if ARGV[6] ~= '' then
  table.insert(fields, 'cid')
  table.insert(fields, ARGV[6])
end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], string.format('%d-0', number),
  unpack(fields))
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[8], string.format('%d-0', seq),
  'n', number, 'from', ARGV[2], 'text', ARGV[3], 'ts', ts)
redis.call('PEXPIRE', KEYS[3], ARGV[9])
redis.call('PEXPIRE', KEYS[4], ARGV[9])
redis.call('PEXPIRE', KEYS[5], ARGV[9])
return seq
";

/// Raises a room's counter to what an instance has delivered of it, after
/// Redis lost its data (see CONNECT). KEYS: the room's counter. ARGV: its
/// last `seq` at the caller.
const RAISE: &str = r"
if (tonumber(redis.call('GET', KEYS[1])) or 0) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1])
end
";

/// An instance's consumer has (re)connected. KEYS: epoch, delivery
/// counter. ARGV: the highest delivery number it has read, the settling
/// time (ms). Raises the counter to that number (RAISE does the same for
/// each of its rooms' counters), and stamps the epoch if this Redis has
/// none (it is new, or lost its data). Returns the milliseconds until the
/// epoch is older than the settling time: until then nobody publishes, so
/// that every instance that was following the old data has time to raise
/// the counters first.
const CONNECT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('SET', KEYS[1], now, 'NX')
local born = tonumber(redis.call('GET', KEYS[1]))
if (tonumber(redis.call('GET', KEYS[2])) or 0) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[2], ARGV[1])
end
local wait = born + tonumber(ARGV[2]) - now
if wait < 0 then wait = 0 end
return wait
";

/// Some of this instance's users came into a room or left it. KEYS: its
/// online set, its version, the presence stream. ARGV: instance id, TTL
/// ms, presence stream length, then pairs of entry (`room<US>user`) and
/// `1` (here) or `0` (gone).
const CHANGE: &str = r"
for i = 4, #ARGV, 2 do
  local op = 'leave'
  if ARGV[i + 1] == '1' then
    redis.call('SADD', KEYS[1], ARGV[i])
    op = 'join'
  else
    redis.call('SREM', KEYS[1], ARGV[i])
  end
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*',
    'instance', ARGV[1], 'entry', ARGV[i], 'op', op)
end
redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
";

/// Writes this instance's whole user set and its heartbeat (after a
/// connect, when Redis may have lost them). KEYS: online set, version,
/// presence stream, instances. ARGV: instance id, TTL ms, presence stream
/// length, entries (`room<US>user`)...
const SYNC: &str = r"
redis.call('DEL', KEYS[1])
for i = 4, #ARGV do redis.call('SADD', KEYS[1], ARGV[i]) end
redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[4], now + tonumber(ARGV[2]), ARGV[1])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*',
  'instance', ARGV[1], 'op', 'sync')
";

/// The heartbeat: this instance lives for another TTL; entries of dead
/// ones go. KEYS: online set, version, instances. ARGV: instance id, TTL
/// ms, `1` if it has users. Returns 1 if Redis had forgotten this instance
/// meanwhile (it stalled past its TTL, or its set was evicted): the others
/// have sent `leave` for its users, and a SYNC must bring them back.
const BEAT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expiry = redis.call('ZSCORE', KEYS[3], ARGV[1])
local forgotten = (not expiry) or tonumber(expiry) < now
  or (ARGV[3] == '1' and redis.call('EXISTS', KEYS[1]) == 0)
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
if forgotten then return 1 end
return 0
";

/// A clean shutdown: this instance and its users are gone now, not after
/// the TTL. KEYS: online set, version, presence stream, instances. ARGV:
/// instance id, presence stream length.
const GONE: &str = r"
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[2], '*',
  'instance', ARGV[1], 'op', 'gone')
";

/// Everyone's presence at one instant. KEYS: instances, presence stream.
/// ARGV: key prefix, this instance's id, then pairs of instance id and the
/// version of its set the caller already has. Returns the presence
/// stream's last id (events up to it are in the snapshot), then for every
/// other live instance: its id, its version, and its entries, or nil if the
/// caller's copy is current (so a quiet room costs almost nothing).
const SNAPSHOT: &str = r"
local known = {}
for i = 3, #ARGV, 2 do known[ARGV[i]] = ARGV[i + 1] end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local top = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
local out = { '0-0' }
if #top > 0 then out[1] = top[1][1] end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')) do
  if id ~= ARGV[2] then
    local version = redis.call('GET', ARGV[1] .. ':version:' .. id) or '0'
    table.insert(out, id)
    table.insert(out, version)
    if known[id] == version then
      table.insert(out, false)
    else
      table.insert(out, redis.call('SMEMBERS', ARGV[1] .. ':online:' .. id))
    end
  end
end
return out
";

/// The scripts, hashed once: they run by `EVALSHA`, and the `redis` crate
/// loads one again if Redis answers `NOSCRIPT` (as after a restart).
pub(super) struct Scripts {
    pub publish: Script,
    pub raise: Script,
    pub connect: Script,
    pub change: Script,
    pub sync: Script,
    pub beat: Script,
    pub gone: Script,
    pub snapshot: Script,
}

impl Scripts {
    pub fn new() -> Scripts {
        Scripts {
            publish: Script::new(PUBLISH),
            raise: Script::new(RAISE),
            connect: Script::new(CONNECT),
            change: Script::new(CHANGE),
            sync: Script::new(SYNC),
            beat: Script::new(BEAT),
            gone: Script::new(GONE),
            snapshot: Script::new(SNAPSHOT),
        }
    }
}

/// The Redis keys of one deployment (one `--redis-prefix`), as seen by
/// one instance; a room's own keys come from [`Keys::room`].
pub(super) struct Keys {
    pub prefix: String,
    pub seq: String,
    pub messages: String,
    pub epoch: String,
    pub presence: String,
    pub instances: String,
    /// This instance's user set.
    pub online: String,
    /// This instance's user set's version.
    pub version: String,
}

impl Keys {
    pub fn new(prefix: &str, instance: &str) -> Keys {
        Keys {
            prefix: prefix.to_string(),
            seq: format!("{prefix}:seq"),
            messages: format!("{prefix}:messages"),
            epoch: format!("{prefix}:epoch"),
            presence: format!("{prefix}:presence"),
            instances: format!("{prefix}:instances"),
            online: format!("{prefix}:online:{instance}"),
            version: format!("{prefix}:version:{instance}"),
        }
    }

    /// Room `room`'s counter and history, under one hash tag.
    pub fn room(&self, room: &str) -> RoomKeys {
        RoomKeys {
            seq: format!("{{{}:{room}}}:seq", self.prefix),
            history: format!("{{{}:{room}}}:history", self.prefix),
            epoch: format!("{{{}:{room}}}:epoch", self.prefix),
        }
    }
}

/// One room's keys.
pub(super) struct RoomKeys {
    pub seq: String,
    pub history: String,
    pub epoch: String,
}
