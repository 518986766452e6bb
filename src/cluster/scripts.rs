//! The Redis side of the relay: the keys of one room and the Lua scripts
//! that change them. A script runs atomically in Redis (nothing else runs
//! in between), which is what makes a `seq` unique and a presence snapshot
//! consistent. Times come from Redis's own clock (`TIME`), so instances
//! whose clocks disagree still agree on heartbeats.
//!
//! | key (`P` = `--redis-prefix`) | type | holds |
//! |---|---|---|
//! | `P:seq` | string | the last `seq` handed out |
//! | `P:messages` | stream | the messages, entry id `<seq>-0` |
//! | `P:epoch` | string | when this Redis's data began (ms) |
//! | `P:presence` | stream | `join`/`leave`/`sync`/`gone` events |
//! | `P:instances` | sorted set | live instance ids, scored by expiry (ms) |
//! | `P:online:<id>` | set, TTL | the users on instance `<id>` |
//! | `P:version:<id>` | string, TTL | bumped on each change of that set |

use redis::Script;

/// Numbers and stores one message. KEYS: seq counter, message stream.
/// ARGV: from, text, stream length, floor (the highest `seq` the caller
/// has delivered), the sender's message id ("" for none, then the entry has
/// no `cid` field). Returns the `seq`.
const PUBLISH: &str = r"
local seq = redis.call('INCR', KEYS[1])
local floor = tonumber(ARGV[4])
local top = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
if #top > 0 then
  local last = tonumber(string.match(top[1][1], '^%d+'))
  if last > floor then floor = last end
end
if seq <= floor then
  -- The counter is behind what clients have seen (Redis lost it):
  -- never hand out a seq twice.
  seq = floor + 1
  redis.call('SET', KEYS[1], seq)
end
local t = redis.call('TIME')
local ts = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local entry = string.format('%d-0', seq)
if ARGV[5] == '' then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], entry,
    'from', ARGV[1], 'text', ARGV[2], 'ts', ts)
else
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], entry,
    'from', ARGV[1], 'text', ARGV[2], 'ts', ts, 'cid', ARGV[5])
end
return seq
";

/// An instance's consumer has (re)connected. KEYS: epoch, seq counter.
/// ARGV: the highest `seq` it has delivered, the settling time (ms).
/// Raises the counter to that `seq`, and stamps the epoch if this Redis has
/// none (it is new, or lost its data). Returns the milliseconds until the
/// epoch is older than the settling time: until then nobody publishes, so
/// that every instance that was following the old data has time to raise
/// the counter first.
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

/// Some of this instance's users came or went. KEYS: its online set, its
/// version, the presence stream. ARGV: instance id, TTL ms, presence
/// stream length, then pairs of user and `1` (here) or `0` (gone).
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
    'instance', ARGV[1], 'user', ARGV[i], 'op', op)
end
redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
";

/// Writes this instance's whole user set and its heartbeat (after a
/// connect, when Redis may have lost them). KEYS: online set, version,
/// presence stream, instances. ARGV: instance id, TTL ms, presence stream
/// length, users...
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
/// other live instance: its id, its version, and its users, or nil if the
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
            connect: Script::new(CONNECT),
            change: Script::new(CHANGE),
            sync: Script::new(SYNC),
            beat: Script::new(BEAT),
            gone: Script::new(GONE),
            snapshot: Script::new(SNAPSHOT),
        }
    }
}

/// The Redis keys of one room (one `--redis-prefix`), as seen by one
/// instance.
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
}
