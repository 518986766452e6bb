//! The consumer thread: follows the delivery and presence streams and
//! hands what it reads to the rooms here, seeds rooms that have not had
//! their history yet, and snapshots everyone's presence once a second. Its
//! connection is the one whose health decides whether the relay takes
//! messages: if it cannot follow the stream, nothing published now would
//! reach this instance's clients.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use redis::streams::{StreamId, StreamRangeReply, StreamReadReply};
use redis::{Connection, RedisResult, Value};

use super::presence::split_entry;
use super::{BACKOFF_MAX, BACKOFF_MIN, Cluster, HEARTBEAT, INSTANCE_TTL, IO_TIMEOUT, SETTLE};
use super::{lock, millis};
use crate::access::RoomName;
use crate::metrics;
use crate::room::{Delivery, RemotePresence, Seed};
use crate::rooms::Rooms;

/// Entries one `XREAD` returns at most per stream.
const READ_BATCH: usize = 512;

/// Another instance's `room<US>user` entries as last read, with their
/// version.
type KnownSets = HashMap<String, (String, BTreeSet<Arc<str>>)>;

impl Cluster {
    /// The consumer thread: connect, follow, and when the connection
    /// breaks, be unavailable until it is back.
    pub(super) fn consume(&self, rooms: &Rooms) {
        let mut backoff = BACKOFF_MIN;
        let mut lost = false;
        // Whether `delivered` says where to read on (after the first
        // connection), or the stream's end is where to begin.
        let mut following = false;
        while !self.stopping() {
            let ended = self.guarded(|| {
                let mut con = self.connect(HEARTBEAT + IO_TIMEOUT)?;
                if lost {
                    metrics::inc(&self.counters.reconnects);
                    lost = false;
                }
                backoff = BACKOFF_MIN;
                self.follow(&mut con, rooms, &mut following)
            });
            if let Err(error) = ended {
                self.failed("reading the streams", &error, lost);
                self.set_down(Some(format!("Redis is unreachable ({error})")));
                self.tried.store(true, Ordering::Release);
                lost = true;
                thread::sleep(backoff);
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }

    /// Reads both streams on one connection until it fails or the relay
    /// stops.
    fn follow(&self, con: &mut Connection, rooms: &Rooms, following: &mut bool) -> RedisResult<()> {
        // First where to read from, then the histories: a message stored
        // in between is both in a history and delivered, and the room
        // skips it the second time (by its `seq`); the other way round it
        // could be in neither.
        let start = if *following {
            self.delivered.load(Ordering::Relaxed)
        } else {
            self.stream_end(con)?
        };
        self.seed_unseeded(con, rooms, start)?;
        self.settle(con, rooms, start)?;
        let connected = Instant::now();
        // Versions are only comparable within one Redis's life: start over.
        let mut known = KnownSets::new();
        let mut presence_cursor = self.snapshot(con, rooms, &mut known, true)?;
        // The delivery stream's entry ids are `<number>-0`.
        let mut cursor = format!("{start}-0");
        self.delivered.store(start, Ordering::Relaxed);
        *following = true;
        self.set_down(None);
        self.tried.store(true, Ordering::Release);
        let mut next_snapshot = connected + HEARTBEAT;
        while !self.stopping() {
            let now = Instant::now();
            if now >= next_snapshot {
                // Right after a reconnect, an instance missing from Redis
                // may just not have rewritten its set yet: keep its users
                // for one TTL rather than flap them offline and back.
                let settling = now < connected + INSTANCE_TTL;
                presence_cursor = self.snapshot(con, rooms, &mut known, settling)?;
                // A room whose seeding failed since (a publishing
                // connection broke, say) need not wait for a reconnect.
                self.seed_unseeded(con, rooms, self.delivered.load(Ordering::Relaxed))?;
                next_snapshot = now + HEARTBEAT;
            }
            let block = next_snapshot
                .saturating_duration_since(now)
                .max(Duration::from_millis(1));
            let reply: Option<StreamReadReply> = redis::cmd("XREAD")
                .arg("COUNT")
                .arg(READ_BATCH)
                .arg("BLOCK")
                .arg(millis(block))
                .arg("STREAMS")
                .arg(&self.keys.messages)
                .arg(&self.keys.presence)
                .arg(&cursor)
                .arg(&presence_cursor)
                .query(con)?;
            for stream in reply.map(|r| r.keys).unwrap_or_default() {
                let Some(last) = stream.ids.last() else {
                    continue;
                };
                if stream.key == self.keys.messages {
                    cursor = last.id.clone();
                    self.hand_to_rooms(rooms, &stream.ids);
                } else {
                    presence_cursor = last.id.clone();
                    if self.apply_presence(rooms, &stream.ids) {
                        next_snapshot = Instant::now();
                    }
                }
            }
        }
        Ok(())
    }

    /// The delivery stream's newest number (0 if empty): where an instance
    /// that has delivered nothing yet begins. What came before is history,
    /// which each room reads from its own keys.
    fn stream_end(&self, con: &mut Connection) -> RedisResult<u64> {
        let top: StreamRangeReply = redis::cmd("XREVRANGE")
            .arg(&self.keys.messages)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query(con)?;
        Ok(top.ids.first().and_then(|e| number(&e.id)).unwrap_or(0))
    }

    /// Seeds every room here that has not had its history yet: `general`
    /// at start, and rooms made while Redis was away. What comes after
    /// `start` the consumer is about to read, and delivers live.
    fn seed_unseeded(&self, con: &mut Connection, rooms: &Rooms, start: u64) -> RedisResult<()> {
        for room in rooms.list().into_iter().filter(|r| r.is_unseeded()) {
            room.seed(self.fetch(con, room.name(), start)?);
        }
        Ok(())
    }

    /// Room `room`'s newest `--history` messages up to delivery number
    /// `upto`, and the `seq` of the newest. Those after `upto` are left
    /// out: the consumer delivers them to the room live (see
    /// [`Cluster::upto`]).
    pub(super) fn fetch(&self, con: &mut Connection, room: &str, upto: u64) -> RedisResult<Seed> {
        let newest: StreamRangeReply = redis::cmd("XREVRANGE")
            .arg(&self.keys.room(room).history)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            // At least one, for the `seq` to go on from.
            .arg(self.history.max(1))
            .query(con)?;
        let mut history: Vec<Delivery> = newest
            .ids
            .iter()
            .rev()
            .filter(|entry| entry.get::<u64>("n").unwrap_or(0) <= upto)
            .filter_map(|entry| message(entry, room, number(&entry.id)?))
            .collect();
        let last_seq = history.last().map_or(0, |m| m.seq);
        // `--history 0` read one, only for its `seq`.
        history.truncate(self.history);
        let epoch: Option<String> = redis::cmd("GET")
            .arg(&self.keys.room(room).epoch)
            .query(con)?;
        Ok(Seed {
            epoch,
            last_seq,
            history,
        })
    }

    /// Raises the delivery counter to what this instance has read, and
    /// each room's counter to its last `seq` here, and if this Redis's data
    /// has just begun, waits until every instance has had the time to do
    /// the same (see [`SETTLE`]).
    fn settle(&self, con: &mut Connection, rooms: &Rooms, delivered: u64) -> RedisResult<()> {
        let wait: u64 = self
            .scripts
            .connect
            .key(&self.keys.epoch)
            .key(&self.keys.seq)
            .arg(delivered)
            .arg(millis(SETTLE))
            .invoke(con)?;
        // One room's keys per call: each is on its room's shard.
        for room in rooms.list() {
            let last = room.last_seq();
            if last > 0 {
                self.scripts
                    .raise
                    .key(self.keys.room(room.name()).seq)
                    .arg(last)
                    .invoke::<()>(con)?;
            }
        }
        if wait > 0 {
            crate::info!(
                "redis: its data is new (first start, or it lost it); \
                 taking messages in {wait} ms, once every instance has reconnected"
            );
            self.set_down(Some(
                "Redis has just started; waiting for every instance to reconnect".to_string(),
            ));
            thread::sleep(Duration::from_millis(wait));
        }
        Ok(())
    }

    /// Hands messages read from the delivery stream to their rooms here, in
    /// order within each room (a room not here has nobody to tell).
    fn hand_to_rooms(&self, rooms: &Rooms, entries: &[StreamId]) {
        let mut by_room: Vec<(String, Vec<Delivery>)> = Vec::new();
        let mut numbers = Vec::new();
        for entry in entries {
            let Some((n, delivery)) = delivery(entry) else {
                crate::warn!("redis: skipped a stream entry that is not a chat message");
                continue;
            };
            numbers.push(n);
            match by_room.iter_mut().find(|(room, _)| *room == delivery.room) {
                Some((_, messages)) => messages.push(delivery),
                None => by_room.push((delivery.room.clone(), vec![delivery])),
            }
        }
        let (Some(&first), Some(&last)) = (numbers.first(), numbers.last()) else {
            return;
        };
        bring_in(rooms, &by_room);
        // Rooms are looked up and `delivered` moves on as one step for
        // [`Cluster::upto`].
        let _handing = lock(&self.handing);
        let before = self.delivered.load(Ordering::Relaxed);
        if before > 0 && first > before + 1 {
            // The stream no longer held them: this instance was cut off
            // for longer than the stream lasts, or Redis lost its data.
            let missed = first - before - 1;
            metrics::add(&self.counters.missed, missed);
            crate::warn!(
                "redis: {missed} messages (numbers {}..{}) were gone from the stream before \
                 this instance read them",
                before + 1,
                first - 1
            );
        }
        for (name, messages) in by_room {
            if let Some(room) = rooms.get(&name) {
                room.deliver_relayed(&messages);
            }
        }
        self.delivered.store(last, Ordering::Relaxed);
    }

    /// Applies other instances' presence events to the rooms concerned
    /// (and to what rooms made later start from); true if one asks for a
    /// fresh snapshot (an instance resynced or left).
    fn apply_presence(&self, rooms: &Rooms, events: &[StreamId]) -> bool {
        let mut resnapshot = false;
        let mut remote = lock(&self.remote);
        for event in events {
            let instance: Option<String> = event.get("instance");
            let Some(instance) = instance.filter(|i| *i != self.id) else {
                continue;
            };
            let op: Option<String> = event.get("op");
            let entry: Option<String> = event.get("entry");
            let online = match op.as_deref() {
                Some("join") => true,
                Some("leave") => false,
                _ => {
                    resnapshot = true;
                    continue;
                }
            };
            let Some((room, user)) = entry.as_deref().and_then(split_entry) else {
                resnapshot = true;
                continue;
            };
            note_remote(&mut remote, room, &instance, user, online);
            if let Some(room) = rooms.get(room) {
                room.remote_presence(&instance, user, online);
            }
        }
        resnapshot
    }

    /// Reads the other live instances' entries at once (only the sets that
    /// changed since `known`) and gives each room here who is in it
    /// elsewhere; returns the presence stream id the snapshot is as of.
    /// With `keep_missing`, an instance missing from Redis keeps its last
    /// known entries (just after a reconnect, see [`Cluster::follow`]).
    fn snapshot(
        &self,
        con: &mut Connection,
        rooms: &Rooms,
        known: &mut KnownSets,
        keep_missing: bool,
    ) -> RedisResult<String> {
        let mut call = self.scripts.snapshot.prepare_invoke();
        call.key(&self.keys.instances)
            .key(&self.keys.presence)
            .arg(&self.keys.prefix)
            .arg(&self.id);
        for (id, (version, _)) in known.iter() {
            call.arg(id).arg(version);
        }
        let reply: Vec<Value> = call.invoke(con)?;
        let mut items = reply.into_iter();
        let cursor: String = match items.next() {
            Some(v) => redis::from_redis_value(v)?,
            None => "0-0".to_string(),
        };
        let mut live = KnownSets::new();
        while let (Some(id), Some(version), Some(entries)) =
            (items.next(), items.next(), items.next())
        {
            let id: String = redis::from_redis_value(id)?;
            let version: String = redis::from_redis_value(version)?;
            let entries = match entries {
                // Unchanged since the copy we have.
                Value::Nil => known
                    .remove(&id)
                    .map(|(_, entries)| entries)
                    .unwrap_or_default(),
                entries => {
                    let entries: Vec<String> = redis::from_redis_value(entries)?;
                    entries.into_iter().map(Arc::from).collect()
                }
            };
            live.insert(id, (version, entries));
        }
        if keep_missing {
            // Kept without its version: once it is back, its set may have
            // started over at the same version (Redis forgot it), so the
            // next snapshot must read it whole.
            for (id, (_, entries)) in known.drain() {
                live.entry(id).or_insert((String::new(), entries));
            }
        }
        *known = live;
        let by_room = per_room(known);
        let mut remote = lock(&self.remote);
        *remote = by_room;
        for room in rooms.list() {
            let elsewhere = remote.get(&**room.name()).cloned().unwrap_or_default();
            room.remote_snapshot(elsewhere, false);
        }
        Ok(cursor)
    }
}

/// A DM reaches its recipient live on every instance, as on the sender's
/// ([`Rooms::bring_in`]): the recipient's connections here join the room
/// before its messages are handed to it. Outside the handing lock: a room
/// made for them is seeded, which takes it (see [`Cluster::upto`]).
fn bring_in(rooms: &Rooms, by_room: &[(String, Vec<Delivery>)]) {
    for (name, messages) in by_room {
        let Ok(room) = RoomName::parse(name) else {
            continue;
        };
        if !room.is_dm() {
            continue;
        }
        let mut senders: Vec<&str> = messages.iter().map(|m| m.from.as_str()).collect();
        senders.sort_unstable();
        senders.dedup();
        for sender in senders {
            rooms.bring_in(&room, sender, false);
        }
    }
}

/// The instances' entries, as who is in each room on which instance.
fn per_room(known: &KnownSets) -> HashMap<Arc<str>, RemotePresence> {
    let mut rooms: HashMap<Arc<str>, RemotePresence> = HashMap::new();
    for (instance, (_, entries)) in known {
        for (room, user) in entries.iter().filter_map(|e| split_entry(e)) {
            rooms
                .entry(room.into())
                .or_default()
                .entry(instance.as_str().into())
                .or_default()
                .insert(user.into());
        }
    }
    rooms
}

/// Notes one presence event in the last word per room.
fn note_remote(
    remote: &mut HashMap<Arc<str>, RemotePresence>,
    room: &str,
    instance: &str,
    user: &str,
    online: bool,
) {
    if online {
        remote
            .entry(room.into())
            .or_default()
            .entry(instance.into())
            .or_default()
            .insert(user.into());
        return;
    }
    let Some(instances) = remote.get_mut(room) else {
        return;
    };
    if let Some(users) = instances.get_mut(instance) {
        users.remove(user);
        if users.is_empty() {
            instances.remove(instance);
        }
    }
    if instances.is_empty() {
        remote.remove(room);
    }
}

/// The number in a stream entry id `<number>-0`.
fn number(id: &str) -> Option<u64> {
    id.split('-').next()?.parse().ok()
}

/// A message of `room` as a stream holds it, numbered `seq` in its room.
fn message(entry: &StreamId, room: &str, seq: u64) -> Option<Delivery> {
    Some(Delivery {
        seq,
        room: room.to_string(),
        from: entry.get("from")?,
        text: entry.get("text")?,
        ts: entry.get("ts").unwrap_or(0),
        id: entry.get("cid"),
        epoch: entry.get("epoch"),
    })
}

/// A message as the delivery stream holds it: its delivery number (the
/// entry id), and the message with its room and `seq` there.
fn delivery(entry: &StreamId) -> Option<(u64, Delivery)> {
    let n = number(&entry.id)?;
    let room: String = entry.get("room")?;
    let seq: u64 = entry.get("rseq")?;
    Some((n, message(entry, &room, seq)?))
}
