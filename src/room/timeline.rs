//! What changes in broadcast order: the `seq` counter, who is online, the
//! batch waiting for the next fan-out, and the history newcomers get. Pure
//! data, under the room's timeline lock; nothing here touches a socket.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use super::ClientId;
use crate::presence::Presence;
use crate::protocol::Outgoing;

/// Chat bytes waiting for a fan-out at most, by default. They are framed
/// once and shared by every client's queue, so this, not the number of
/// clients, is what a burst of messages costs while a fan-out runs.
pub const MAX_PENDING_BYTES: usize = 256 * 1024;

/// Text a `welcome`'s history carries at most: each welcome is its own
/// frame, so this bounds what a thousand clients joining at once cost.
const WELCOME_HISTORY_BYTES: usize = 64 * 1024;

/// State that changes in broadcast order.
pub(super) struct Timeline {
    /// The room's name, in every message frame.
    room: Arc<str>,
    /// The `seq` of the last chat message (numbered here, or delivered by
    /// the relay).
    pub(super) seq: u64,
    /// Who is online, here and (with a relay) on other instances.
    pub(super) presence: Presence,
    /// Chat frames accepted but not yet fanned out, in `seq` order, encoded
    /// back to back. At most `max_pending` bytes (plus the one message that
    /// crossed the line): the next fan-out's batch.
    pub(super) pending: Vec<u8>,
    pub(super) max_pending: usize,
    /// The highest `seq` taken out of `pending` for a fan-out: a client
    /// that joins now has seen, or will see live, nothing up to it.
    pub(super) fanned_out: u64,
    /// The last `history_limit` messages, oldest first.
    history: VecDeque<Stored>,
    history_limit: usize,
    /// Presence changes gathered for the next presence frame.
    pub(super) window: PresenceWindow,
}

/// Presence as every client has been told it, and the changes since.
///
/// Joins and leaves are not sent one by one: a storm of N users connecting
/// would be N frames to each of N clients. They are gathered for at most
/// `room::presence::PRESENCE_WINDOW` and sent as one frame to everyone: `join` or
/// `leave` when the window holds one change (so a quiet room looks as it
/// always did), else `presence` with the lists.
#[derive(Default)]
pub(super) struct PresenceWindow {
    /// Who is online as the last presence frame told everyone: what a
    /// `welcome` lists, so that the next frame's diff applies to it.
    pub(super) published: BTreeSet<Arc<str>>,
    /// Users whose presence changed since, in the order they did.
    touched: Vec<Arc<str>>,
    /// When the first of those changes came: the window closes a window's
    /// length later.
    pub(super) opened: Option<Instant>,
    /// Connections that came online in this window, with their user.
    newcomers: Vec<(ClientId, Arc<str>)>,
}

/// What a closed window says, net: who came online and who went, and the
/// connections that came online in it.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct PresenceDiff {
    pub(super) joined: Vec<Arc<str>>,
    pub(super) left: Vec<Arc<str>>,
    newcomers: Vec<(ClientId, Arc<str>)>,
}

impl PresenceDiff {
    /// The connections of `user` that came online in the window.
    pub(super) fn newcomers_named(&self, user: &str) -> Vec<ClientId> {
        self.newcomers
            .iter()
            .filter(|(_, name)| &**name == user)
            .map(|(id, _)| *id)
            .collect()
    }
}

impl PresenceWindow {
    /// Notes that `user`'s presence changed; true if this opens the window.
    pub(super) fn touch(&mut self, user: &Arc<str>, now: Instant) -> bool {
        self.touched.push(user.clone());
        let opens = self.opened.is_none();
        if opens {
            self.opened = Some(now);
        }
        opens
    }

    /// Notes that connection `id` brought `user` online in this window.
    pub(super) fn newcomer(&mut self, id: ClientId, user: &Arc<str>) {
        self.newcomers.push((id, user.clone()));
    }

    /// Closes the window: compares each user touched in it with
    /// `is_online` now, and moves `published` on. A user who came and went
    /// within the window is in neither list.
    pub(super) fn close(&mut self, is_online: impl Fn(&str) -> bool) -> PresenceDiff {
        self.opened = None;
        let mut touched = std::mem::take(&mut self.touched);
        touched.sort();
        touched.dedup();
        let mut diff = PresenceDiff {
            newcomers: std::mem::take(&mut self.newcomers),
            ..PresenceDiff::default()
        };
        for user in touched {
            match (is_online(&user), self.published.contains(&user)) {
                (true, false) => {
                    self.published.insert(user.clone());
                    diff.joined.push(user);
                }
                (false, true) => {
                    self.published.remove(&user);
                    diff.left.push(user);
                }
                _ => {}
            }
        }
        diff
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
    fn message<'a>(&'a self, room: &'a str) -> Outgoing<'a> {
        Outgoing::Message {
            room,
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

/// One numbered chat message, as it joins the timeline.
pub(super) struct Numbered<'a> {
    pub(super) seq: u64,
    pub(super) from: &'a str,
    pub(super) text: &'a str,
    /// Unix milliseconds.
    pub(super) ts: u64,
    /// The sender's own `id` for it, echoed on the broadcast only.
    pub(super) id: Option<&'a str>,
}

impl Timeline {
    /// An empty timeline of `room` that keeps the last `history` messages.
    pub(super) fn new(room: Arc<str>, history: usize) -> Timeline {
        Timeline {
            room,
            seq: 0,
            presence: Presence::default(),
            pending: Vec::new(),
            max_pending: MAX_PENDING_BYTES,
            fanned_out: 0,
            // Grown as messages come: most of ten thousand rooms never
            // hold a full history.
            history: VecDeque::new(),
            history_limit: history,
            window: PresenceWindow::default(),
        }
    }

    /// Whether the next fan-out's batch is full: senders must wait.
    pub(super) fn is_full(&self) -> bool {
        self.pending.len() >= self.max_pending
    }

    /// Numbers `message` in: framed once onto the pending batch, and kept
    /// for newcomers' history.
    pub(super) fn push(&mut self, message: Numbered<'_>) {
        self.seq = message.seq;
        let frame = Outgoing::Message {
            room: &self.room,
            seq: message.seq,
            from: message.from,
            text: message.text,
            ts: message.ts,
            id: message.id,
        }
        .frame();
        self.pending.extend_from_slice(&frame);
        self.remember(
            message.seq,
            message.from.into(),
            message.text.into(),
            message.ts,
        );
    }

    /// Takes the pending batch for a fan-out: everything up to `seq` is
    /// then on its way to every client in the pool.
    pub(super) fn take_batch(&mut self) -> Vec<u8> {
        self.fanned_out = self.seq;
        std::mem::take(&mut self.pending)
    }

    /// Whether any message is kept for newcomers.
    pub(super) fn has_history(&self) -> bool {
        !self.history.is_empty()
    }

    /// Keeps a message for the welcome of those who join later.
    pub(super) fn remember(&mut self, seq: u64, from: Arc<str>, text: Box<str>, ts: u64) {
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

    /// The newest stored messages (oldest first) that were already fanned
    /// out, so none also arrives live, and that fit in
    /// [`WELCOME_HISTORY_BYTES`].
    pub(super) fn recent_history(&self) -> Vec<Outgoing<'_>> {
        let mut budget = WELCOME_HISTORY_BYTES;
        let mut newest_first: Vec<Outgoing<'_>> = self
            .history
            .iter()
            .rev()
            .filter(|m| m.seq <= self.fanned_out)
            .take_while(|m| {
                let fits = m.text.len() <= budget;
                budget = budget.saturating_sub(m.text.len());
                fits
            })
            .map(|m| m.message(&self.room))
            .collect();
        newest_first.reverse();
        newest_first
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(seq: u64, text: &str) -> Numbered<'_> {
        Numbered {
            seq,
            from: "a",
            text,
            ts: 0,
            id: None,
        }
    }

    fn seqs(history: &[Outgoing<'_>]) -> Vec<u64> {
        history
            .iter()
            .map(|m| match m {
                Outgoing::Message { seq, .. } => *seq,
                _ => 0,
            })
            .collect()
    }

    #[test]
    fn history_holds_only_what_was_fanned_out() {
        let mut timeline = Timeline::new("general".into(), 10);
        timeline.push(message(1, "one"));
        timeline.push(message(2, "two"));
        assert!(timeline.recent_history().is_empty(), "still pending");
        let batch = timeline.take_batch();
        assert!(!batch.is_empty());
        timeline.push(message(3, "three"));
        assert_eq!(seqs(&timeline.recent_history()), [1, 2]);
    }

    #[test]
    fn history_keeps_the_newest_within_its_count_and_bytes() {
        let mut timeline = Timeline::new("general".into(), 3);
        for seq in 1..=5 {
            timeline.push(message(seq, "x"));
        }
        timeline.take_batch();
        assert_eq!(seqs(&timeline.recent_history()), [3, 4, 5]);

        let mut timeline = Timeline::new("general".into(), 100);
        let big = "y".repeat(WELCOME_HISTORY_BYTES / 2 + 1);
        for seq in 1..=3 {
            timeline.push(message(seq, &big));
        }
        timeline.take_batch();
        assert_eq!(seqs(&timeline.recent_history()), [3], "one fits the budget");
    }

    #[test]
    fn a_window_says_what_changed_net() {
        let mut window = PresenceWindow::default();
        let now = Instant::now();
        let (a, b, c): (Arc<str>, Arc<str>, Arc<str>) = ("a".into(), "b".into(), "c".into());
        assert!(window.touch(&a, now), "the first change opens it");
        assert!(!window.touch(&b, now));
        window.touch(&a, now);
        let online = ["a", "b"];
        let diff = window.close(|u| online.contains(&u));
        assert_eq!(diff.joined, [a.clone(), b.clone()]);
        assert!(diff.left.is_empty() && window.opened.is_none());
        // b goes, c comes and goes again within one window.
        window.touch(&b, now);
        window.touch(&c, now);
        window.touch(&c, now);
        let diff = window.close(|u| u == "a");
        assert_eq!((diff.joined, diff.left), (vec![], vec![b]));
        assert_eq!(window.published.iter().collect::<Vec<_>>(), [&a]);
    }

    #[test]
    fn the_batch_fills_to_its_cap() {
        let mut timeline = Timeline::new("general".into(), 0);
        timeline.max_pending = 100;
        let mut taken = 0;
        while !timeline.is_full() {
            taken += 1;
            timeline.push(message(taken, "0123456789"));
        }
        assert!(taken > 1 && timeline.pending.len() < 100 + 96);
        timeline.take_batch();
        assert!(!timeline.is_full());
    }
}
