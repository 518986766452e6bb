//! What changes in broadcast order: the `seq` counter, who is online, the
//! batch waiting for the next fan-out, and the history: what newcomers get,
//! and what a returning client recovers from. Pure data, under the room's
//! timeline lock; nothing here touches a socket.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use super::ClientId;
use crate::presence::Presence;
use crate::protocol::{Outgoing, Since};

/// Chat bytes waiting for a fan-out at most, by default. They are framed
/// once and shared by every client's queue, so this, not the number of
/// clients, is what a burst of messages costs while a fan-out runs.
pub const MAX_PENDING_BYTES: usize = 256 * 1024;

/// Text a `welcome`'s history carries at most: each welcome is its own
/// frame, so this bounds what a thousand clients joining at once cost.
const WELCOME_HISTORY_BYTES: usize = 64 * 1024;

/// How much history a room keeps: what recovery can reach back through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// `--history-size`: messages kept at most.
    pub messages: usize,
    /// `--history-ttl`: a message older than this goes (milliseconds).
    pub ttl_ms: u64,
    /// `--history`: how many of them a `welcome` or `subscribed` carries.
    pub greeting: usize,
    /// `--max-recovery-bytes`: a `missed` list larger than this is refused
    /// (`recovered: false`).
    pub max_recovery_bytes: usize,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            messages: 1000,
            ttl_ms: 86_400_000,
            greeting: 100,
            max_recovery_bytes: 1 << 20,
        }
    }
}

/// State that changes in broadcast order.
pub(super) struct Timeline {
    /// The room's name, in every message frame.
    room: Arc<str>,
    /// The history the `seq` numbers belong to, in every message frame.
    pub(super) epoch: Arc<str>,
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
    /// The last messages, oldest first, in `seq` order: at most
    /// `retention.messages`, none older than `retention.ttl_ms`.
    history: VecDeque<Stored>,
    pub(super) retention: Retention,
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

/// A chat message kept for newcomers and for recovery.
struct Stored {
    seq: u64,
    from: Arc<str>,
    text: Box<str>,
    ts: u64,
    /// The sender's own `id`: a sender that lost its connection learns
    /// from `missed` which of its messages were taken.
    id: Option<Box<str>>,
}

impl Stored {
    /// As a `message`; with its `id` only for recovery (a newcomer's
    /// history has nothing waiting for it).
    fn message<'a>(&'a self, room: &'a str, epoch: &'a str, with_id: bool) -> Outgoing<'a> {
        Outgoing::Message {
            room,
            epoch,
            seq: self.seq,
            from: &self.from,
            text: &self.text,
            ts: self.ts,
            id: self.id.as_deref().filter(|_| with_id),
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
    /// An empty timeline of `room`, a new history (`epoch`), keeping what
    /// `retention` says.
    pub(super) fn new(room: Arc<str>, epoch: Arc<str>, retention: Retention) -> Timeline {
        Timeline {
            room,
            epoch,
            seq: 0,
            presence: Presence::default(),
            pending: Vec::new(),
            max_pending: MAX_PENDING_BYTES,
            fanned_out: 0,
            // Grown as messages come: most of ten thousand rooms never
            // hold a full history.
            history: VecDeque::new(),
            retention,
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
            epoch: &self.epoch,
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
            message.id.map(Into::into),
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

    /// Keeps a message for newcomers and for recovery.
    pub(super) fn remember(
        &mut self,
        seq: u64,
        from: Arc<str>,
        text: Box<str>,
        ts: u64,
        id: Option<Box<str>>,
    ) {
        if self.retention.messages == 0 {
            return;
        }
        if self.history.len() == self.retention.messages {
            self.history.pop_front();
        }
        self.history.push_back(Stored {
            seq,
            from,
            text,
            ts,
            id,
        });
    }

    /// Takes `epoch` as the history's, as the relay has it: every instance
    /// then names the room's history alike. A history kept under another
    /// epoch goes (its `seq`s belong to a history that is no more); `seq`
    /// itself goes on, so nothing numbered here is numbered twice.
    pub(super) fn adopt_epoch(&mut self, epoch: &str) {
        if *self.epoch != *epoch {
            self.epoch = epoch.into();
            self.history.clear();
        }
    }

    /// The kept messages numbered after `seq`, for the journal.
    pub(super) fn kept_after(&self, seq: u64) -> Vec<super::Kept<'_>> {
        let first = self.history.partition_point(|m| m.seq <= seq);
        self.history
            .range(first..)
            .map(|m| super::Kept {
                seq: m.seq,
                from: &m.from,
                text: &m.text,
                ts: m.ts,
                id: m.id.as_deref(),
            })
            .collect()
    }

    /// Takes the history a journal kept (a restart): its epoch, last `seq`
    /// and messages, oldest first, all of them already fanned out.
    pub(super) fn restore(
        &mut self,
        epoch: Arc<str>,
        last_seq: u64,
        messages: Vec<(u64, String, String, u64, Option<String>)>,
    ) {
        self.epoch = epoch;
        self.seq = last_seq;
        self.fanned_out = last_seq;
        for (seq, from, text, ts, id) in messages {
            self.remember(seq, from.into(), text.into(), ts, id.map(Into::into));
        }
    }

    /// Drops the messages older than the retention's TTL at `now_ms`.
    pub(super) fn prune(&mut self, now_ms: u64) {
        let oldest = now_ms.saturating_sub(self.retention.ttl_ms);
        while self.history.front().is_some_and(|m| m.ts < oldest) {
            self.history.pop_front();
        }
    }

    /// Adds messages `(seq, from, text, ts)` from elsewhere (the relay, as
    /// the room is seeded) to the history: in `seq` order with what it
    /// holds, each `seq` once, keeping the newest.
    pub(super) fn merge_history(
        &mut self,
        messages: impl IntoIterator<Item = (u64, Arc<str>, Box<str>, u64)>,
    ) {
        if self.retention.messages == 0 {
            return;
        }
        let mut by_seq: BTreeMap<u64, Stored> =
            self.history.drain(..).map(|m| (m.seq, m)).collect();
        for (seq, from, text, ts) in messages {
            by_seq.entry(seq).or_insert(Stored {
                seq,
                from,
                text,
                ts,
                id: None,
            });
        }
        let older = by_seq.len().saturating_sub(self.retention.messages);
        self.history = by_seq.into_values().skip(older).collect();
    }

    /// The newest `--history` stored messages (oldest first) that were
    /// already fanned out, so none also arrives live, and that fit in
    /// [`WELCOME_HISTORY_BYTES`].
    pub(super) fn recent_history(&self) -> Vec<Outgoing<'_>> {
        let mut budget = WELCOME_HISTORY_BYTES;
        let mut newest_first: Vec<Outgoing<'_>> = self
            .history
            .iter()
            .rev()
            .filter(|m| m.seq <= self.fanned_out)
            .take(self.retention.greeting)
            .take_while(|m| {
                let fits = m.text.len() <= budget;
                budget = budget.saturating_sub(m.text.len());
                fits
            })
            .map(|m| m.message(&self.room, &self.epoch, false))
            .collect();
        newest_first.reverse();
        newest_first
    }

    /// Everything after `since` up to what was fanned out (what is still
    /// pending reaches the client live), if this history holds all of it:
    /// the same epoch, no message after `since.seq` dropped, and no more
    /// than `max_recovery_bytes` of it. `None`: the client's view cannot be
    /// mended, and it must start again from the history.
    ///
    /// Found by `seq` in the history (it is in `seq` order), so a recovery
    /// costs its own range, not a scan of everything kept.
    pub(super) fn recover(&self, since: &Since) -> Option<Vec<Outgoing<'_>>> {
        if *since.epoch != *self.epoch || since.seq > self.fanned_out {
            return None;
        }
        let first = self.history.partition_point(|m| m.seq <= since.seq);
        let missed = self.history.range(first..);
        let wanted = (self.fanned_out - since.seq) as usize;
        let mut budget = self.retention.max_recovery_bytes;
        let mut out = Vec::with_capacity(wanted.min(1024));
        for (expected, m) in (since.seq + 1..).zip(missed.take(wanted)) {
            // A gap (a message dropped, or never held) cannot be mended.
            let size = m.text.len() + m.from.len() + 64;
            if m.seq != expected || size > budget {
                return None;
            }
            budget -= size;
            out.push(m.message(&self.room, &self.epoch, true));
        }
        (out.len() == wanted).then_some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keeps and greets with `n` messages.
    fn keep(n: usize) -> Retention {
        Retention {
            messages: n,
            greeting: n,
            ..Retention::default()
        }
    }

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
        let mut timeline = Timeline::new("general".into(), "e1".into(), keep(10));
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
        let mut timeline = Timeline::new("general".into(), "e1".into(), keep(3));
        for seq in 1..=5 {
            timeline.push(message(seq, "x"));
        }
        timeline.take_batch();
        assert_eq!(seqs(&timeline.recent_history()), [3, 4, 5]);

        let mut timeline = Timeline::new("general".into(), "e1".into(), keep(100));
        let big = "y".repeat(WELCOME_HISTORY_BYTES / 2 + 1);
        for seq in 1..=3 {
            timeline.push(message(seq, &big));
        }
        timeline.take_batch();
        assert_eq!(seqs(&timeline.recent_history()), [3], "one fits the budget");
    }

    fn since(epoch: &str, seq: u64) -> Since {
        Since {
            epoch: epoch.into(),
            seq,
        }
    }

    #[test]
    fn recovery_gives_exactly_what_came_after_or_nothing() {
        let mut timeline = Timeline::new("general".into(), "e1".into(), keep(5));
        for seq in 1..=8 {
            timeline.push(message(seq, "x"));
        }
        timeline.take_batch();
        timeline.push(message(9, "pending"));
        // Kept: 5..=9; fanned out: up to 8 (9 reaches everyone live).
        assert_eq!(seqs(&timeline.recover(&since("e1", 5)).unwrap()), [6, 7, 8]);
        assert_eq!(
            seqs(&timeline.recover(&since("e1", 4)).unwrap()),
            [5, 6, 7, 8]
        );
        assert_eq!(timeline.recover(&since("e1", 8)).unwrap().len(), 0);
        assert!(timeline.recover(&since("e1", 3)).is_none(), "4 was dropped");
        assert!(timeline.recover(&since("e2", 7)).is_none(), "another epoch");
        assert!(timeline.recover(&since("e1", 9)).is_none(), "not yet sent");
        timeline.retention.max_recovery_bytes = 140;
        assert!(timeline.recover(&since("e1", 6)).is_some(), "2 fit");
        assert!(timeline.recover(&since("e1", 4)).is_none(), "4 do not");
    }

    #[test]
    fn old_messages_go_after_the_ttl() {
        let mut timeline = Timeline::new("general".into(), "e1".into(), keep(10));
        timeline.retention.ttl_ms = 1000;
        for (seq, ts) in [(1, 100), (2, 900), (3, 2000)] {
            timeline.push(Numbered {
                ts,
                ..message(seq, "x")
            });
        }
        timeline.take_batch();
        timeline.prune(1850);
        assert_eq!(seqs(&timeline.recent_history()), [2, 3]);
        timeline.prune(3000);
        assert_eq!(seqs(&timeline.recent_history()), [3]);
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
        let mut timeline = Timeline::new("general".into(), "e1".into(), keep(0));
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
