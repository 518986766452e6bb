//! The room: who is connected, and every broadcast to them.
//!
//! The pool is a `RwLock<HashMap<ClientId, Client>>`. Everything that must
//! reach clients *in one order* (messages with their `seq`, joins, leaves,
//! evictions) runs under one more lock, the [`Timeline`] mutex, taken before
//! the pool lock and never after it. That is what makes `seq` order the same
//! for everyone: two senders cannot interleave their fan-outs.
//!
//! A fan-out serialises and frames the message once, then for each client
//! compares the stored `exp` with the clock (no cryptography: the token was
//! verified at the handshake) and pushes the shared frame onto the client's
//! bounded queue. Nobody waits on a socket here. An expired client is sent
//! `token_expired` and closed with 4001 instead of receiving the message; a
//! client whose queue is full is closed with 4008. Both leave the pool at
//! once, and their `leave` goes out in the same order as everything else.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::auth::{is_expired, now_secs};
use crate::frame::{self, Frame};
use crate::metrics::{self, Metrics};
use crate::outbox::Outbox;
use crate::protocol::{ErrorCode, Outgoing, TOKEN_EXPIRED_TEXT, close_code};

/// Identifies one connection (a user may have several).
pub type ClientId = u64;

/// A client is warned (`{"type":"expiring"}`) this long before its token
/// expires, once per token.
pub const EXPIRY_WARNING_SECS: u64 = 60;

/// One connected client, as the room sees it.
pub struct Client {
    pub username: Arc<str>,
    /// Token expiry, Unix seconds; a `reauth` moves it.
    exp: AtomicU64,
    /// Whether this token's `expiring` warning has gone out.
    warned: AtomicBool,
    pub outbox: Arc<Outbox>,
}

impl Client {
    pub fn new(username: Arc<str>, exp: u64, outbox: Arc<Outbox>) -> Client {
        Client {
            username,
            exp: AtomicU64::new(exp),
            warned: AtomicBool::new(false),
            outbox,
        }
    }

    fn exp(&self) -> u64 {
        self.exp.load(Ordering::Relaxed)
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
    fn message(&self) -> Outgoing<'_> {
        Outgoing::Message {
            seq: self.seq,
            from: &self.from,
            text: &self.text,
            ts: self.ts,
        }
    }
}

/// Why a client left the room: for the log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Departure {
    /// The client closed, or its connection ended.
    Disconnected,
    /// Its token expired (close 4001).
    TokenExpired,
    /// Its queue overflowed (close 4008).
    SlowConsumer,
}

/// State that changes in broadcast order.
struct Timeline {
    /// The `seq` of the last chat message.
    seq: u64,
    /// Connections per username: `join` when it becomes 1, `leave` at 0.
    presence: BTreeMap<Arc<str>, usize>,
    /// Chat frames accepted but not yet fanned out, in `seq` order, encoded
    /// back to back.
    pending: Vec<u8>,
    /// The highest `seq` taken out of `pending` for a fan-out: a client
    /// that joins now has seen, or will see live, nothing up to it.
    fanned_out: u64,
    /// The last `history_limit` messages, oldest first.
    history: VecDeque<Stored>,
    history_limit: usize,
}

pub struct Room {
    clients: RwLock<HashMap<ClientId, Client>>,
    /// A thread is fanning out chat messages, and will take `pending` too.
    /// Set and cleared under the timeline lock; an atomic only so that a
    /// panicking flusher can clear it on its way out without that lock.
    flushing: AtomicBool,
    metrics: Arc<Metrics>,
    timeline: Mutex<Timeline>,
    next_id: AtomicU64,
}

impl Default for Room {
    fn default() -> Self {
        Room::new(0)
    }
}

impl Room {
    /// A room that keeps the last `history` messages for newcomers.
    pub fn new(history: usize) -> Room {
        Room {
            clients: RwLock::new(HashMap::new()),
            flushing: AtomicBool::new(false),
            metrics: Arc::new(Metrics::default()),
            timeline: Mutex::new(Timeline {
                seq: 0,
                presence: BTreeMap::new(),
                pending: Vec::new(),
                fanned_out: 0,
                history: VecDeque::with_capacity(history.min(1024)),
                history_limit: history,
            }),
            next_id: AtomicU64::new(1),
        }
    }

    // A panic elsewhere must not take the room down with it: a poisoned
    // lock still guards consistent data here (every update is one insert or
    // remove), so take it anyway.
    fn timeline(&self) -> MutexGuard<'_, Timeline> {
        self.timeline.lock().unwrap_or_else(PoisonError::into_inner)
    }
    fn read(&self) -> RwLockReadGuard<'_, HashMap<ClientId, Client>> {
        self.clients.read().unwrap_or_else(PoisonError::into_inner)
    }
    fn write(&self) -> RwLockWriteGuard<'_, HashMap<ClientId, Client>> {
        self.clients.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// The counters the room keeps (and the server shares).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Number of connections.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds a client: it gets `welcome` (with everyone online, itself
    /// included) as its first frame, and everyone else gets `join` if this
    /// is the user's first connection.
    pub fn join(&self, client: Client) -> ClientId {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut timeline = self.timeline();
        let username = client.username.clone();
        let count = timeline.presence.entry(username.clone()).or_insert(0);
        *count += 1;
        let first = *count == 1;
        let online: Vec<&str> = timeline.presence.keys().map(|u| &**u).collect();
        // Messages still pending will reach this client live; the history
        // stops where they begin, so nothing arrives twice.
        let history = recent_history(&timeline);
        let welcome = Outgoing::Welcome {
            user: &username,
            expires_at: client.exp(),
            online,
            history,
        }
        .frame();
        // A fresh queue has room for its first frame.
        let _ = client.outbox.push(welcome);
        self.write().insert(id, client);
        if first {
            let join = Outgoing::Join { user: &username }.frame();
            let evictions = self.fan_out(&join, Some(id));
            self.settle(&mut timeline, evictions);
        }
        id
    }

    /// Removes a client whose connection ended. Idempotent: whoever removes
    /// it first (the reader, an eviction) sends the `leave`.
    pub fn leave(&self, id: ClientId) {
        let mut timeline = self.timeline();
        self.settle(&mut timeline, vec![(id, Departure::Disconnected)]);
    }

    /// Broadcasts a chat message from `from` to everyone, the sender
    /// included, and returns its `seq`.
    ///
    /// The message gets its `seq` and joins the pending batch under the
    /// timeline lock. If no other thread is fanning out, this one does,
    /// until the batch is empty; otherwise the thread that is will take this
    /// message with its next batch. Under load, then, several messages
    /// leave in one system call per client, and when it is quiet a batch is
    /// one message sent at once.
    ///
    /// `None` if the sender may not speak any more: it has left the room,
    /// or its token has expired (then it is evicted like on any broadcast).
    pub fn broadcast(&self, sender: ClientId, from: &str, text: &str) -> Option<u64> {
        let mut timeline = self.timeline();
        let sender_exp = self.read().get(&sender).map(Client::exp);
        match sender_exp {
            None => return None,
            Some(exp) if is_expired(exp, now_secs()) => {
                self.settle(&mut timeline, vec![(sender, Departure::TokenExpired)]);
                return None;
            }
            Some(_) => {}
        }
        timeline.seq += 1;
        let seq = timeline.seq;
        let ts = unix_millis();
        let message = Outgoing::Message {
            seq,
            from,
            text,
            ts,
        }
        .frame();
        timeline.pending.extend_from_slice(&message);
        metrics::inc(&self.metrics.messages_broadcast);
        if timeline.history_limit > 0 {
            if timeline.history.len() == timeline.history_limit {
                timeline.history.pop_front();
            }
            timeline.history.push_back(Stored {
                seq,
                from: from.into(),
                text: text.into(),
                ts,
            });
        }
        if !self.flushing.swap(true, Ordering::AcqRel) {
            self.flush(timeline);
        }
        Some(seq)
    }

    /// Fans out pending chat messages until none are left. The timeline
    /// lock is released during each fan-out so that other senders can add
    /// to the next batch meanwhile; only one thread flushes at a time, so
    /// every client still gets the batches in `seq` order.
    fn flush<'a>(&'a self, mut timeline: MutexGuard<'a, Timeline>) {
        // Should a fan-out panic, the next broadcast must flush instead of
        // finding the flag stuck and leaving every message pending.
        struct Unstick<'f>(&'f AtomicBool);
        impl Drop for Unstick<'_> {
            fn drop(&mut self) {
                if std::thread::panicking() {
                    self.0.store(false, Ordering::Release);
                }
            }
        }
        let _unstick = Unstick(&self.flushing);
        while !timeline.pending.is_empty() {
            let batch: Frame = std::mem::take(&mut timeline.pending).into();
            timeline.fanned_out = timeline.seq;
            // Take the pool before letting go of the timeline, so that no
            // client can join between the two and get this batch both in
            // its welcome's history and live.
            let pool = self.read();
            drop(timeline);
            let evictions = self.fan_out_to(&pool, &batch, None);
            drop(pool);
            timeline = self.timeline();
            self.settle(&mut timeline, evictions);
        }
        self.flushing.store(false, Ordering::Release);
    }

    /// Closes every client whose token has expired. Run by the sweeper at
    /// least once a second, so an idle client goes within about a second of
    /// its `exp`. Returns how many went.
    pub fn sweep(&self) -> usize {
        let now = now_secs();
        let expired = |c: &Client| is_expired(c.exp(), now);
        let mut any_expired = false;
        for client in self.read().values() {
            if expired(client) {
                any_expired = true;
            } else if now + EXPIRY_WARNING_SECS >= client.exp()
                && !client.warned.swap(true, Ordering::Relaxed)
            {
                let warning = Outgoing::Expiring {
                    expires_at: client.exp(),
                };
                // A full queue is the broadcast's business, not the sweep's.
                let _ = client.outbox.push(warning.frame());
            }
        }
        if !any_expired {
            return 0;
        }
        let mut timeline = self.timeline();
        let evictions: Vec<_> = self
            .read()
            .iter()
            .filter(|(_, c)| expired(c))
            .map(|(id, _)| (*id, Departure::TokenExpired))
            .collect();
        let count = evictions.len();
        self.settle(&mut timeline, evictions);
        count
    }

    /// Closes every connection with `code` (the server is going away) and
    /// empties the room; no `leave` is sent, since everyone is leaving.
    /// Returns the outboxes, so the caller can wait for them to drain.
    pub fn close_all(&self, code: u16, reason: &str) -> Vec<Arc<Outbox>> {
        let mut timeline = self.timeline();
        timeline.presence.clear();
        let close = frame::close(code, reason);
        let clients: Vec<Client> = self.write().drain().map(|(_, c)| c).collect();
        for client in &clients {
            client.outbox.close(std::slice::from_ref(&close), false);
        }
        clients.into_iter().map(|c| c.outbox).collect()
    }

    /// A client renewed its token: its expiry moves, and it will be warned
    /// again before the new one. False if it is no longer in the room.
    pub fn reauth(&self, id: ClientId, exp: u64) -> bool {
        let pool = self.read();
        let Some(client) = pool.get(&id) else {
            return false;
        };
        client.exp.store(exp, Ordering::Relaxed);
        client.warned.store(false, Ordering::Relaxed);
        true
    }

    fn fan_out(&self, frame: &Frame, except: Option<ClientId>) -> Vec<(ClientId, Departure)> {
        self.fan_out_to(&self.read(), frame, except)
    }

    /// Pushes `frame` to every client in `pool` but `except`, and returns
    /// the clients that must go instead: expired ones (they never get the
    /// frame) and ones whose queue is full.
    fn fan_out_to(
        &self,
        pool: &HashMap<ClientId, Client>,
        frame: &Frame,
        except: Option<ClientId>,
    ) -> Vec<(ClientId, Departure)> {
        let now = now_secs();
        let mut evictions = Vec::new();
        let mut delivered = 0;
        for (&id, client) in pool {
            if Some(id) == except {
                continue;
            }
            if is_expired(client.exp(), now) {
                evictions.push((id, Departure::TokenExpired));
            } else if client.outbox.push(frame.clone()).is_err() {
                evictions.push((id, Departure::SlowConsumer));
            } else {
                delivered += 1;
            }
        }
        metrics::add(&self.metrics.deliveries, delivered);
        metrics::add(&self.metrics.bytes_sent, delivered * frame.len() as u64);
        evictions
    }

    /// Takes the departing clients out of the pool, says goodbye to the
    /// evicted ones, and fans out a `leave` for each user whose last
    /// connection this was. A `leave` can find more clients to evict; the
    /// loop runs until nobody else has to go. (A loop, not recursion: a
    /// thousand tokens expiring in the same second must not grow the stack.)
    fn settle(&self, timeline: &mut Timeline, mut departing: Vec<(ClientId, Departure)>) {
        while !departing.is_empty() {
            let removed: Vec<(ClientId, Client, Departure)> = {
                let mut pool = self.write();
                departing
                    .drain(..)
                    .filter_map(|(id, why)| pool.remove(&id).map(|c| (id, c, why)))
                    .collect()
            };
            for (id, client, why) in removed {
                if why != Departure::Disconnected {
                    crate::info!("client {id} ({}) evicted: {why:?}", client.username);
                    let counter = match why {
                        Departure::TokenExpired => &self.metrics.expiry_disconnects,
                        _ => &self.metrics.slow_consumer_disconnects,
                    };
                    metrics::inc(counter);
                    send_farewell(&client.outbox, why);
                }
                if timeline.release(&client.username) {
                    let leave = Outgoing::Leave {
                        user: &client.username,
                    }
                    .frame();
                    departing.extend(self.fan_out(&leave, None));
                }
            }
        }
    }
}

impl Timeline {
    /// One connection of `username` is gone; true if it was the last.
    fn release(&mut self, username: &str) -> bool {
        match self.presence.get_mut(username) {
            Some(count) if *count > 1 => {
                *count -= 1;
                false
            }
            _ => {
                self.presence.remove(username);
                true
            }
        }
    }
}

/// Text a `welcome`'s history carries at most: each welcome is its own
/// frame, so this bounds what a thousand clients joining at once cost.
const WELCOME_HISTORY_BYTES: usize = 64 * 1024;

/// The newest stored messages (oldest first) that were already fanned out
/// and fit in [`WELCOME_HISTORY_BYTES`].
fn recent_history(timeline: &Timeline) -> Vec<Outgoing<'_>> {
    let mut budget = WELCOME_HISTORY_BYTES;
    let mut newest_first: Vec<Outgoing<'_>> = timeline
        .history
        .iter()
        .rev()
        .filter(|m| m.seq <= timeline.fanned_out)
        .take_while(|m| {
            let fits = m.text.len() <= budget;
            budget = budget.saturating_sub(m.text.len());
            fits
        })
        .map(Stored::message)
        .collect();
    newest_first.reverse();
    newest_first
}

/// The last words to an evicted client: for an expired token, the
/// `token_expired` error then close 4001; for a slow consumer, close 4008
/// ahead of the backlog it will never read.
fn send_farewell(outbox: &Arc<Outbox>, why: Departure) {
    match why {
        Departure::TokenExpired => {
            let notice = Outgoing::Error {
                code: ErrorCode::TokenExpired,
                message: TOKEN_EXPIRED_TEXT,
            }
            .frame();
            let close = frame::close(close_code::TOKEN_EXPIRED, "token expired");
            outbox.close(&[notice, close], false);
        }
        Departure::SlowConsumer => {
            let close = frame::close(
                close_code::SLOW_CONSUMER,
                "too slow: messages were not read",
            );
            outbox.close(&[close], true);
        }
        Departure::Disconnected => {}
    }
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client whose queue the test can read directly.
    fn client(room: &Room, name: &str, exp: u64) -> (ClientId, Arc<Outbox>) {
        let outbox = Outbox::new(8);
        let id = room.join(Client::new(name.into(), exp, outbox.clone()));
        (id, outbox)
    }

    fn later() -> u64 {
        now_secs() + 600
    }

    /// The JSON `type`s queued for a client so far (frames < 126 bytes).
    fn types(outbox: &Outbox) -> Vec<String> {
        outbox
            .take_queued()
            .iter()
            .filter(|f| f[0] == 0x81)
            .map(|f| {
                let v: serde_json::Value = serde_json::from_slice(&f[2..]).unwrap();
                v["type"].as_str().unwrap().to_string()
            })
            .collect()
    }

    #[test]
    fn presence_counts_users_not_connections() {
        let room = Room::new(10);
        let (_, a) = client(&room, "a", later());
        let (b1, _) = client(&room, "b", later());
        let (b2, _) = client(&room, "b", later());
        room.leave(b1);
        room.leave(b1); // idempotent
        room.leave(b2);
        assert_eq!(types(&a), ["welcome", "join", "leave"]);
        assert!(room.len() == 1);
    }

    #[test]
    fn an_expired_client_is_closed_instead_of_served() {
        let room = Room::new(10);
        let (a_id, a) = client(&room, "a", later());
        let (_, old) = client(&room, "old", now_secs());
        room.broadcast(a_id, "a", "hi");
        assert_eq!(room.len(), 1);
        // The expired client got its notice and the close, not the message.
        let batch = old.take_queued();
        assert_eq!(batch.last().map(|f| f[0]), Some(0x88), "close frame last");
        assert!(old.is_closing());
        assert_eq!(types(&a), ["welcome", "join", "message", "leave"]);
    }

    #[test]
    fn the_sweep_finds_idle_expired_clients() {
        let room = Room::new(10);
        let (_, _a) = client(&room, "a", later());
        let (_, old) = client(&room, "old", now_secs());
        assert_eq!(room.sweep(), 1);
        assert!(old.is_closing());
        assert_eq!(room.sweep(), 0);
    }

    #[test]
    fn a_poisoned_lock_does_not_stop_the_room() {
        let room = Arc::new(Room::new(10));
        let (a_id, a) = client(&room, "a", later());
        let poisoner = room.clone();
        let _ = std::thread::spawn(move || {
            let _timeline = poisoner.timeline();
            let _pool = poisoner.write();
            panic!("a client thread dies holding both locks");
        })
        .join();
        assert!(room.timeline.is_poisoned() && room.clients.is_poisoned());
        assert_eq!(room.broadcast(a_id, "a", "still works"), Some(1));
        assert_eq!(types(&a), ["welcome", "message"]);
    }
}
