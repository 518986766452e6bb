//! The consumer thread: follows the message and presence streams and hands
//! what it reads to the room, and snapshots everyone's presence once a
//! second. Its connection is the one whose health decides whether the
//! relay takes messages: if it cannot follow the stream, nothing published
//! now would reach this instance's clients.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use redis::streams::{StreamId, StreamRangeReply, StreamReadReply};
use redis::{Connection, RedisResult, Value};

use super::millis;
use super::{BACKOFF_MAX, BACKOFF_MIN, Cluster, HEARTBEAT, INSTANCE_TTL, IO_TIMEOUT, SETTLE};
use crate::metrics;
use crate::room::{Delivery, RemotePresence, Room};

/// Entries one `XREAD` returns at most per stream.
const READ_BATCH: usize = 512;

/// Another instance's user set as last read, with its version.
type KnownSets = HashMap<String, (String, std::collections::BTreeSet<Arc<str>>)>;

impl Cluster {
    /// The consumer thread: connect, follow, and when the connection
    /// breaks, be unavailable until it is back.
    pub(super) fn consume(&self, room: &Room) {
        let mut backoff = BACKOFF_MIN;
        let mut lost = false;
        while !self.stopping() {
            let ended = self.guarded(|| {
                let mut con = self.connect(HEARTBEAT + IO_TIMEOUT)?;
                if lost {
                    metrics::inc(&self.counters.reconnects);
                    lost = false;
                }
                backoff = BACKOFF_MIN;
                self.follow(&mut con, room)
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
    fn follow(&self, con: &mut Connection, room: &Room) -> RedisResult<()> {
        if room.last_seq() == 0 {
            room.seed_history(self.recent(con)?);
        }
        self.settle(con, room)?;
        let connected = Instant::now();
        // Versions are only comparable within one Redis's life: start over.
        let mut known = KnownSets::new();
        let mut presence_cursor = self.snapshot(con, room, &mut known, true)?;
        // The stream's entry ids are `<seq>-0`, so the last seq delivered is
        // where reading goes on; after that, the last id read.
        let mut cursor = format!("{}-0", room.last_seq());
        self.delivered.store(room.last_seq(), Ordering::Relaxed);
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
                presence_cursor = self.snapshot(con, room, &mut known, settling)?;
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
                    self.hand_to_room(room, &stream.ids);
                } else {
                    presence_cursor = last.id.clone();
                    if self.apply_presence(room, &stream.ids) {
                        next_snapshot = Instant::now();
                    }
                }
            }
        }
        Ok(())
    }

    /// Raises the counter to what this instance has delivered, and if this
    /// Redis's data has just begun, waits until every instance has had the
    /// time to do the same (see [`SETTLE`]).
    fn settle(&self, con: &mut Connection, room: &Room) -> RedisResult<()> {
        let wait: u64 = self
            .scripts
            .connect
            .key(&self.keys.epoch)
            .key(&self.keys.seq)
            .arg(room.last_seq())
            .arg(millis(SETTLE))
            .invoke(con)?;
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

    /// The newest messages in the stream, oldest first, for the history.
    fn recent(&self, con: &mut Connection) -> RedisResult<Vec<Delivery>> {
        let reply: StreamRangeReply = redis::cmd("XREVRANGE")
            .arg(&self.keys.messages)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            // At least one, for the `seq` to go on from.
            .arg(self.history.max(1))
            .query(con)?;
        Ok(reply.ids.iter().rev().filter_map(delivery).collect())
    }

    /// Hands messages read from the stream to the room.
    fn hand_to_room(&self, room: &Room, entries: &[StreamId]) {
        let messages: Vec<Delivery> = entries.iter().filter_map(delivery).collect();
        if messages.len() < entries.len() {
            crate::warn!(
                "redis: skipped {} stream entries that are not chat messages",
                entries.len() - messages.len()
            );
        }
        let (Some(first), Some(last)) = (messages.first(), messages.last()) else {
            return;
        };
        let before = room.last_seq();
        if before > 0 && first.seq > before + 1 {
            // The stream no longer held them: this instance was cut off
            // for longer than the stream lasts, or Redis lost its data.
            let missed = first.seq - before - 1;
            metrics::add(&self.counters.missed, missed);
            crate::warn!(
                "redis: {missed} messages (seq {}..{}) were gone from the stream before this \
                 instance read them",
                before + 1,
                first.seq - 1
            );
        }
        room.deliver_relayed(&messages);
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

    /// Reads the other live instances' users at once (only the sets that
    /// changed since `known`) and gives them to the room; returns the
    /// presence stream id the snapshot is as of.
    fn snapshot(
        &self,
        con: &mut Connection,
        room: &Room,
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
        while let (Some(id), Some(version), Some(users)) =
            (items.next(), items.next(), items.next())
        {
            let id: String = redis::from_redis_value(id)?;
            let version: String = redis::from_redis_value(version)?;
            let users = match users {
                // Unchanged since the copy we have.
                Value::Nil => known
                    .remove(&id)
                    .map(|(_, users)| users)
                    .unwrap_or_default(),
                users => {
                    let users: Vec<String> = redis::from_redis_value(users)?;
                    users.into_iter().map(Arc::from).collect()
                }
            };
            live.insert(id, (version, users));
        }
        *known = live;
        let remote: RemotePresence = known
            .iter()
            .map(|(id, (_, users))| (id.as_str().into(), users.clone()))
            .collect();
        room.remote_snapshot(remote, keep_missing);
        Ok(cursor)
    }
}

/// A message as the stream holds it: the id is `<seq>-0`.
fn delivery(entry: &StreamId) -> Option<Delivery> {
    let seq = entry.id.split('-').next()?.parse().ok()?;
    Some(Delivery {
        seq,
        from: entry.get("from")?,
        text: entry.get("text")?,
        ts: entry.get("ts").unwrap_or(0),
        id: entry.get("cid"),
    })
}
