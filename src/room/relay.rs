//! The way to the other instances (`--redis`, see `crate::cluster`): what
//! the rooms need from a relay, and what the relay feeds back into a room.
//! With a relay, every room spans the instances: a message is numbered
//! (per room) and stored by the relay and comes back to every instance that
//! has the room, this one included, through [`Room::deliver_relayed`],
//! which feeds the same fan-out as a local broadcast. Presence then counts
//! the room's users on the other instances too.
//!
//! **Seeding.** A room made here when others already used it starts from
//! the relay: its history and last `seq` ([`Room::seed`]) and who is in it
//! elsewhere ([`Room::remote_snapshot`]). The registry makes such a room
//! *seeding* first (see [`Seeding`]): registered, so that the relay's
//! deliveries reach it meanwhile, but joined by nobody until the history
//! is in, so every member's `subscribed` holds the whole history and
//! nothing arrives twice.
//!
//! Only the cluster (`--features redis`) and the tests use what a relay
//! feeds back, so a default build would call it dead code.
#![cfg_attr(not(feature = "redis"), allow(dead_code))]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::timeline::{Numbered, Timeline};
use super::{RemotePresence, Room};
use crate::rooms::Rooms;

/// What the rooms need from a relay.
pub trait Relay: Send + Sync {
    /// Stores a chat message to `room` for every instance and returns its
    /// `seq` in that room. `floor` is the room's last `seq` here: the relay
    /// never hands out one at or below it. The message is not fanned out
    /// here: it comes back through [`Room::deliver_relayed`] like everyone
    /// else's, with the sender's `id`. An error means it was not stored, or
    /// (if Redis's reply was lost) that it is not known whether it was: the
    /// sender must be told either way.
    fn publish(
        &self,
        room: &str,
        floor: u64,
        from: &str,
        text: &str,
        id: Option<&str>,
    ) -> Result<u64, Unavailable>;
    /// `user` came online or went offline in `room` on this instance
    /// ([`Room::which_are_here`] says which, when the relay gets to it).
    /// Called under the room's lock: it must only take note, never wait.
    fn presence_changed(&self, room: &Arc<str>, user: &Arc<str>);
    /// Whether messages can be taken now, and if not, why.
    fn health(&self) -> Result<(), Unavailable>;
    /// Gives `room`, just made here, what the other instances know of it:
    /// who is in it there, then its history and last `seq`
    /// ([`Room::seed`]). May wait on Redis: called with no lock held. On an
    /// error the room stays unseeded ([`Room::is_unseeded`]) and the relay
    /// seeds it once Redis is back.
    fn seed(&self, room: &Room) -> Result<(), Unavailable>;
    /// Starts following the other instances, feeding what they say into
    /// the rooms of `rooms`; returns once the relay has had its first try
    /// at taking messages, so a server's first client is not refused for
    /// nothing.
    fn start(self: Arc<Self>, rooms: Arc<Rooms>);
    /// Stops following and tells the other instances this one is gone
    /// (once; later calls do nothing).
    fn stop(&self);
}

/// The relay cannot take messages now; the text says why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unavailable(pub String);

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A chat message numbered by the relay, on its way to this instance's
/// clients in its room.
pub struct Delivery {
    /// Its `seq` in its room.
    pub seq: u64,
    pub room: String,
    pub from: String,
    pub text: String,
    /// Unix milliseconds, when the relay stored it.
    pub ts: u64,
    /// The sender's `id` for it, if it gave one.
    pub id: Option<String>,
    /// The room's epoch in the relay (see [`Room::adopt_epoch`]).
    pub epoch: Option<String>,
}

impl Delivery {
    fn numbered(&self) -> Numbered<'_> {
        Numbered {
            seq: self.seq,
            from: &self.from,
            text: &self.text,
            ts: self.ts,
            id: self.id.as_deref(),
        }
    }
}

/// What a room starts from when the relay knows it already.
#[derive(Default)]
pub struct Seed {
    /// The room's epoch in the relay (`None`: it has had no message yet).
    pub epoch: Option<String>,
    /// The room's last `seq` in the relay (0: it has none).
    pub last_seq: u64,
    /// Its newest messages, oldest first (at most `--history`).
    pub history: Vec<Delivery>,
}

/// How long a subscriber waits for a room another connection is seeding
/// before it joins anyway: longer than the relay takes to give up on Redis.
const SEEDING_PATIENCE: Duration = Duration::from_secs(5);

/// A room's seeding state (see the module docs).
#[derive(Default)]
pub(super) struct Seeding {
    /// Registered, not joinable yet: its history is on its way.
    busy: Mutex<bool>,
    done: Condvar,
    /// It has not had its history from the relay yet (made while Redis
    /// was away, or `general` before the relay first connects).
    unseeded: AtomicBool,
}

impl Seeding {
    fn busy(&self) -> std::sync::MutexGuard<'_, bool> {
        // One bool: a panic elsewhere cannot leave it half-written.
        self.busy.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Ends a room's seeding when dropped, so that a panic while seeding does
/// not leave its subscribers waiting.
pub struct SeedingGuard<'a>(&'a Room);

impl Drop for SeedingGuard<'_> {
    fn drop(&mut self) {
        *self.0.seeding.busy() = false;
        self.0.seeding.done.notify_all();
    }
}

impl Seeding {
    pub(super) fn new(unseeded: bool) -> Seeding {
        Seeding {
            unseeded: AtomicBool::new(unseeded),
            ..Seeding::default()
        }
    }
}

impl Room {
    /// Whether new messages can be taken: always, without a relay.
    pub fn health(&self) -> Result<(), Unavailable> {
        self.relay.as_ref().map_or(Ok(()), |relay| relay.health())
    }

    /// The `seq` of the last message numbered or delivered here.
    pub fn last_seq(&self) -> u64 {
        self.timeline().seq
    }

    pub(super) fn tell_relay(&self, user: &Arc<str>) {
        if let Some(relay) = &self.relay {
            relay.presence_changed(&self.name, user);
        }
    }

    /// Marks the room seeding (see the module docs) until the guard is
    /// dropped: nobody joins it, and it is not freed, meanwhile.
    pub fn begin_seeding(&self) -> SeedingGuard<'_> {
        *self.seeding.busy() = true;
        SeedingGuard(self)
    }

    /// Whether the room is seeding: joining it must wait
    /// ([`Room::wait_seeded`]).
    pub fn is_seeding(&self) -> bool {
        *self.seeding.busy()
    }

    /// Waits until the room is no longer seeding, or a few seconds have
    /// passed (the relay gives up on Redis sooner).
    pub fn wait_seeded(&self) {
        let deadline = Instant::now() + SEEDING_PATIENCE;
        let mut busy = self.seeding.busy();
        while *busy {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            busy = self
                .seeding
                .done
                .wait_timeout(busy, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Whether the room still waits for its history from the relay.
    pub fn is_unseeded(&self) -> bool {
        self.seeding.unseeded.load(Ordering::Acquire)
    }

    /// The relay's history of this room and its last `seq`: merged into
    /// the history (by `seq`, keeping the newest), and the room's `seq`
    /// raised to it, so that the relay's deliveries up to it, already in the
    /// history, are skipped. Nothing is fanned out: whoever joins later
    /// gets it as history. Harmless twice, and with deliveries that came in
    /// meanwhile.
    pub fn seed(&self, seed: Seed) {
        let mut timeline = self.timeline();
        if let Some(epoch) = &seed.epoch {
            timeline.adopt_epoch(epoch);
        }
        let newest = seed.history.last().map_or(0, |m| m.seq);
        let last = newest.max(seed.last_seq);
        timeline.merge_history(
            seed.history
                .into_iter()
                .map(|m| (m.seq, m.from.into(), m.text.into(), m.ts)),
        );
        if last > timeline.seq {
            timeline.seq = last;
            // A fan-out under way sets it as it takes its batch.
            if timeline.pending.is_empty() {
                timeline.fanned_out = last;
            }
        }
        self.seeding.unseeded.store(false, Ordering::Release);
        self.flush_unless_flushing(timeline);
    }

    /// Messages the relay numbered (from any instance), in `seq` order, for
    /// this instance's clients. One already delivered is skipped, so a relay
    /// that reads a message twice cannot send it twice.
    ///
    /// These are never refused for a full batch: they are already numbered.
    /// The pending batch stays bounded all the same, since only the relay's
    /// one reader thread delivers, a bounded read at a time, and it fans out
    /// each delivery itself before reading more.
    pub fn deliver_relayed(&self, messages: &[Delivery]) {
        let mut timeline = self.timeline();
        for message in messages {
            if let Some(epoch) = &message.epoch {
                timeline.adopt_epoch(epoch);
            }
            if message.seq > timeline.seq {
                self.number(&mut timeline, message.numbered());
            }
        }
        self.flush_unless_flushing(timeline);
    }

    /// For each of `users`, whether it has a connection in this room on
    /// this instance (read at one instant, under one lock).
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

    /// Every user with a connection in this room on this instance.
    pub fn local_users(&self) -> Vec<Arc<str>> {
        self.timeline().presence.local_users()
    }

    /// Another instance says `user` came into this room (or left it) there.
    pub fn remote_presence(&self, instance: &str, user: &str, online: bool) {
        let mut timeline = self.timeline();
        if let Some(user) = timeline.presence.set_remote(instance, user, online) {
            self.announce(&mut timeline, &user);
        }
    }

    /// Who is in this room on each other live instance, read at once from
    /// the relay. An instance missing from it has no one here (or has
    /// stopped), unless `keep_missing` (just after a reconnect, when live
    /// instances may not have written theirs yet).
    pub fn remote_snapshot(&self, snapshot: RemotePresence, keep_missing: bool) {
        let mut timeline = self.timeline();
        let (came, went) = timeline.presence.replace_remote(snapshot, keep_missing);
        for user in came.iter().chain(&went) {
            self.announce(&mut timeline, user);
        }
    }

    /// A user of another instance came online or went offline: into the
    /// presence window, like a local one.
    fn announce(&self, timeline: &mut Timeline, user: &Arc<str>) {
        self.presence_changed(timeline, user);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::super::Fanout;
    use super::super::tests::{client, later};
    use super::*;

    /// A relay that numbers messages but, like Redis, delivers them only
    /// when told.
    #[derive(Default)]
    struct Numbering(AtomicU64);

    impl Relay for Numbering {
        fn publish(
            &self,
            _room: &str,
            _floor: u64,
            _from: &str,
            _text: &str,
            _id: Option<&str>,
        ) -> Result<u64, Unavailable> {
            Ok(self.0.fetch_add(1, Ordering::Relaxed) + 1)
        }
        fn presence_changed(&self, _room: &Arc<str>, _user: &Arc<str>) {}
        fn health(&self) -> Result<(), Unavailable> {
            Ok(())
        }
        fn seed(&self, _room: &Room) -> Result<(), Unavailable> {
            Ok(())
        }
        fn start(self: Arc<Self>, _rooms: Arc<Rooms>) {}
        fn stop(&self) {}
    }

    fn said(seq: u64, text: &str) -> Delivery {
        Delivery {
            epoch: None,
            seq,
            room: "general".into(),
            from: "a".into(),
            text: text.into(),
            ts: 0,
            id: None,
        }
    }

    #[test]
    fn with_a_relay_messages_go_out_when_delivered_and_only_once() {
        let room = Room::with_relay(10, Some(Arc::new(Numbering::default())), Arc::default());
        let (a_id, mut a) = client(&room, "a", later());
        assert_eq!(room.broadcast(a_id, "a", "hi", None, Fanout::Now), Ok(1));
        assert_eq!(a.types(), ["welcome"], "nothing before the relay delivers");
        let hi = |seq| said(seq, "hi");
        room.deliver_relayed(&[hi(1)]);
        room.deliver_relayed(&[hi(1), hi(2)]);
        let seqs: Vec<u64> = a
            .messages()
            .iter()
            .filter_map(|m| m["seq"].as_u64())
            .collect();
        assert_eq!(seqs, [1, 2]);
        assert_eq!(room.last_seq(), 2);
    }

    #[test]
    fn seeding_merges_the_relays_history_under_what_came_meanwhile() {
        let room = Room::with_relay(3, Some(Arc::new(Numbering::default())), Arc::default());
        assert!(room.is_unseeded(), "a room with a relay starts unseeded");
        let guard = room.begin_seeding();
        assert!(room.is_seeding());
        assert!(!room.is_freeable(u64::MAX, 0), "never freed while seeding");
        // Delivered while the history was on its way: 5, then 6 after the
        // read.
        room.deliver_relayed(&[said(5, "five")]);
        room.seed(Seed {
            epoch: None,
            last_seq: 5,
            history: vec![said(3, "three"), said(4, "four"), said(5, "five")],
        });
        room.deliver_relayed(&[said(4, "four"), said(6, "six")]);
        drop(guard);
        assert!(!room.is_seeding() && !room.is_unseeded());
        let (_, mut a) = client(&room, "a", later());
        let welcome = &a.messages()[0];
        let texts: Vec<&str> = welcome["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["text"].as_str().unwrap())
            .collect();
        assert_eq!(texts, ["four", "five", "six"], "by seq, the newest 3, once");
        assert_eq!(room.last_seq(), 6);
        // A seed behind the room changes nothing.
        room.seed(Seed {
            epoch: None,
            last_seq: 2,
            history: vec![said(2, "two")],
        });
        assert_eq!(room.last_seq(), 6);
    }
}
