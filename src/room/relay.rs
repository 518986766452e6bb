//! The way to the other instances (`--redis`, see `crate::cluster`): what
//! the room needs from a relay, and what the relay feeds back into the
//! room. With a relay, a message is numbered and stored by the relay and
//! comes back to every instance, this one included, through
//! [`Room::deliver_relayed`], which feeds the same fan-out as a local broadcast.
//! Presence then counts users on the other instances too.
//!
//! Only the cluster (`--features redis`) and the tests use what a relay
//! feeds back, so a default build would call it dead code.
#![cfg_attr(not(feature = "redis"), allow(dead_code))]

use std::sync::Arc;

use super::timeline::{Numbered, Timeline};
use super::{RemotePresence, Room};

/// What the room needs from a relay.
pub trait Relay: Send + Sync {
    /// Stores a chat message for every instance and returns its `seq`. The
    /// message is not fanned out here: it comes back through
    /// [`Room::deliver_relayed`] like everyone else's, with the sender's `id`. An
    /// error means it was not stored, or (if Redis's reply was lost) that
    /// it is not known whether it was: the sender must be told either way.
    fn publish(&self, from: &str, text: &str, id: Option<&str>) -> Result<u64, Unavailable>;
    /// `user` came online or went offline on this instance
    /// ([`Room::which_are_here`] says which, when the relay gets to it).
    /// Called under the room's lock: it must only take note, never wait.
    fn presence_changed(&self, user: &Arc<str>);
    /// Whether messages can be taken now, and if not, why.
    fn health(&self) -> Result<(), Unavailable>;
    /// Starts following the other instances, feeding what they say into
    /// `room`; returns once the relay has had its first try at taking
    /// messages, so a server's first client is not refused for nothing.
    fn start(self: Arc<Self>, room: Arc<Room>);
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

impl Room {
    /// Whether new messages can be taken: always, without a relay.
    pub fn health(&self) -> Result<(), Unavailable> {
        self.relay.as_ref().map_or(Ok(()), |relay| relay.health())
    }

    /// The `seq` of the last message numbered or delivered here.
    pub fn last_seq(&self) -> u64 {
        self.timeline().seq
    }

    /// Starts the relay, if there is one (see [`Relay::start`]).
    pub fn start_relay(self: &Arc<Self>) {
        if let Some(relay) = &self.relay {
            relay.clone().start(self.clone());
        }
    }

    /// Stops the relay, if there is one (see [`Relay::stop`]).
    pub fn stop_relay(&self) {
        if let Some(relay) = &self.relay {
            relay.stop();
        }
    }

    pub(super) fn tell_relay(&self, user: &Arc<str>) {
        if let Some(relay) = &self.relay {
            relay.presence_changed(user);
        }
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
            if message.seq > timeline.seq {
                self.number(&mut timeline, message.numbered());
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
            self.announce(&mut timeline, &user);
        }
    }

    /// Who is online on each other live instance, read at once from the
    /// relay. An instance missing from it has stopped (its heartbeat ran
    /// out) and its users go offline, unless `keep_missing` (just after a
    /// reconnect, when live instances may not have written theirs yet).
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
        fn publish(&self, _from: &str, _text: &str, _id: Option<&str>) -> Result<u64, Unavailable> {
            Ok(self.0.fetch_add(1, Ordering::Relaxed) + 1)
        }
        fn presence_changed(&self, _user: &Arc<str>) {}
        fn health(&self) -> Result<(), Unavailable> {
            Ok(())
        }
        fn start(self: Arc<Self>, _room: Arc<Room>) {}
        fn stop(&self) {}
    }

    #[test]
    fn with_a_relay_messages_go_out_when_delivered_and_only_once() {
        let room = Room::with_relay(10, Some(Arc::new(Numbering::default())), Arc::default());
        let (a_id, mut a) = client(&room, "a", later());
        assert_eq!(room.broadcast(a_id, "a", "hi", None, Fanout::Now), Ok(1));
        assert_eq!(a.types(), ["welcome"], "nothing before the relay delivers");
        let hi = |seq| Delivery {
            seq,
            from: "a".into(),
            text: "hi".into(),
            ts: 0,
            id: None,
        };
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
}
