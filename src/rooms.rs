//! The rooms: which exist, who is in which, the limits on both, and the
//! sweeps that run over all of them (token expiry, presence windows, idle
//! rooms). One room's own business (its pool, `seq`, history, presence,
//! fan-out) is `crate::room`'s.
//!
//! ```text
//!   Rooms ── RwLock<HashMap<name, Arc<Room>>> ── general, ops, dm:a:b, ...
//!     │                                              │ pool: id → Arc<Client>
//!     └─ connections: RwLock<Connections> (by id, by user)  │
//!                                   └── Client.rooms ────┘ (its own list)
//! ```
//!
//! **Lock order.** A client's room list, then the registry's map, then a
//! room's locks (timeline, then pool), then outboxes. A connection's list
//! is held while it joins or leaves a room, so that its own session and a
//! DM bringing it in cannot both add it. A join happens under the map's
//! read lock, and a room is freed under its write lock after checking it
//! is still empty, so a room cannot be freed between being found and being
//! joined. A broadcast takes only its room's locks.
//!
//! **Rooms come and go.** `general` always exists. Any other room is
//! created by the first subscribe that may create it (within
//! `--max-rooms`, and `--max-rooms-per-user` for the user who makes it), and freed when nobody is in it and it holds no history,
//! or, with history, when nobody has been in it for `--room-idle-ttl`.
//!
//! **With a relay** (`--redis`) every room spans the instances. A room made
//! here may have history elsewhere, which only Redis can tell, and Redis is
//! never asked under the map's lock or a room's: the room is registered
//! *seeding* (deliveries reach it, nobody joins it, it is not freed), the
//! relay seeds it with neither held, and then its first member joins under
//! the map's read lock as usual. Others subscribing meanwhile wait for the
//! seeding to end (see `room::relay`). The joining connection's own room
//! list is held throughout (as for any join), so the seeding's round trip
//! (bounded by the relay's timeouts) may hold up only what waits on that
//! list: that connection's own session, a DM bringing it in, its expiry.
//!
//! **Direct messages.** A message to `dm:a:b` first brings every
//! connection of the other user that is not in the room into it
//! ([`Rooms::bring_in`]), so that a DM reaches its recipient live whether or
//! not they had opened the conversation. With a relay, the instance that
//! delivers a DM does the same for the connections there, before the
//! message.
//!
//! **Expiry.** The sweep checks every connection once, whichever rooms it
//! is in (none included: leaving `general` is allowed): it warns a minute
//! ahead, and takes an expired connection out of all its rooms, closing it
//! with 4001 once. A broadcast that finds an expired recipient evicts it
//! from that room at once; the sweep takes it out of the others.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::access::{Access, GENERAL, RoomName};
use crate::close::CloseReason;
use crate::metrics::Metrics;
use crate::outbox::{Outbox, Reaper};
use crate::protocol::{ErrorCode, Since};
use crate::room::{Client, ClientId, Greet, Joined, Relay, Restored, Room, Settings};

/// Why a connection cannot join a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoomError {
    /// Not for this user: the same answer whether the room exists or not.
    Forbidden,
    /// This connection is in `--max-rooms-per-connection` rooms already.
    TooManyForConnection(usize),
    /// Creating it would pass `--max-rooms`.
    TooManyRooms(usize),
    /// Its user has made `--max-rooms-per-user` rooms that still exist.
    TooManyMadeByUser(usize),
    /// A message to a room this connection is not in.
    NotSubscribed,
}

impl RoomError {
    /// The `code` of the `error` that answers it.
    pub fn code(self) -> ErrorCode {
        match self {
            RoomError::Forbidden => ErrorCode::Forbidden,
            RoomError::TooManyForConnection(_)
            | RoomError::TooManyRooms(_)
            | RoomError::TooManyMadeByUser(_) => ErrorCode::TooManyRooms,
            RoomError::NotSubscribed => ErrorCode::NotSubscribed,
        }
    }
}

impl std::fmt::Display for RoomError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RoomError::Forbidden => f.write_str("you may not join this room"),
            RoomError::TooManyForConnection(max) => write!(
                f,
                "this connection is in {max} rooms, the most it may be in; leave one first"
            ),
            RoomError::TooManyRooms(max) => write!(
                f,
                "the server has {max} rooms, the most it keeps; no new room can be made now"
            ),
            RoomError::TooManyMadeByUser(max) => write!(
                f,
                "you have made {max} rooms that still exist, the most one user may; \
                 join an existing one, or wait for yours to be freed"
            ),
            RoomError::NotSubscribed => {
                f.write_str("you are not in this room: subscribe to it first")
            }
        }
    }
}

/// The limits on rooms (`--max-rooms`, `--max-rooms-per-connection`,
/// `--room-idle-ttl`) and the rooms open to everyone (`--room`).
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_rooms: usize,
    pub max_per_connection: usize,
    /// Rooms (DMs included) one user may have made that still exist, so
    /// that one account cannot take every room there may be.
    pub max_per_user: usize,
    /// Seconds.
    pub idle_ttl: u64,
    pub open: Arc<[Box<str>]>,
}

/// One connection, as the registry knows it: what its session holds.
pub struct Member {
    pub id: ClientId,
    pub client: Arc<Client>,
    /// What it may join; a `reauth` replaces it.
    pub access: Access,
}

/// Every connection, by id and by user.
#[derive(Default)]
struct Connections {
    by_id: HashMap<ClientId, Arc<Client>>,
    by_user: HashMap<Arc<str>, Vec<ClientId>>,
}

impl Connections {
    fn add(&mut self, id: ClientId, client: &Arc<Client>) {
        self.by_id.insert(id, client.clone());
        self.by_user
            .entry(client.username.clone())
            .or_default()
            .push(id);
    }

    fn remove(&mut self, id: ClientId, client: &Client) {
        self.by_id.remove(&id);
        if let Some(ids) = self.by_user.get_mut(&client.username) {
            ids.retain(|other| *other != id);
            if ids.is_empty() {
                self.by_user.remove(&client.username);
            }
        }
    }

    /// The connections of `user`.
    fn of(&self, user: &str) -> Vec<(ClientId, Arc<Client>)> {
        let ids = self.by_user.get(user).map_or(&[][..], Vec::as_slice);
        ids.iter()
            .filter_map(|id| Some((*id, self.by_id.get(id)?.clone())))
            .collect()
    }
}

/// Every room, and every connection.
pub struct Rooms {
    general: Arc<Room>,
    rooms: RwLock<HashMap<Arc<str>, Arc<Room>>>,
    /// Every WebSocket connection, in rooms or not: what the expiry sweep
    /// checks, and where a DM finds its recipient.
    connections: RwLock<Connections>,
    next_id: AtomicU64,
    /// How many of the rooms that exist each user made (see
    /// [`Rooms::count_made`]).
    made: Mutex<HashMap<Arc<str>, usize>>,
    settings: Settings,
    limits: Limits,
    /// Closed connections waiting for their client's close reply.
    reaper: Arc<Reaper>,
    /// The other instances (`--redis`): every room is joined to it.
    relay: Option<Arc<dyn Relay>>,
}

impl Rooms {
    /// The registry, with `general`; with `--redis`, every room it makes
    /// is joined to `relay`.
    /// With `restored`, the rooms a journal kept (`--data-dir`): they
    /// exist again, `general` among them, as the last run left them.
    pub fn new(
        settings: Settings,
        limits: Limits,
        relay: Option<Arc<dyn Relay>>,
        restored: Vec<Restored>,
    ) -> Rooms {
        let mut rooms: HashMap<Arc<str>, Arc<Room>> = restored
            .into_iter()
            .map(|record| {
                let room = Room::restored(record, &settings);
                (room.name().clone(), Arc::new(room))
            })
            .collect();
        let general = rooms
            .entry(GENERAL.into())
            .or_insert_with(|| Arc::new(Room::configured(GENERAL.into(), &settings, relay.clone())))
            .clone();
        Rooms {
            general,
            rooms: RwLock::new(rooms),
            connections: RwLock::new(Connections::default()),
            next_id: AtomicU64::new(1),
            made: Mutex::default(),
            settings,
            limits,
            reaper: Arc::default(),
            relay,
        }
    }

    // A panic elsewhere must not take the rooms down: each update of these
    // maps is one insert or remove, so a poisoned lock still guards
    // consistent data.
    fn read(&self) -> RwLockReadGuard<'_, HashMap<Arc<str>, Arc<Room>>> {
        self.rooms.read().unwrap_or_else(PoisonError::into_inner)
    }
    fn write(&self) -> RwLockWriteGuard<'_, HashMap<Arc<str>, Arc<Room>>> {
        self.rooms.write().unwrap_or_else(PoisonError::into_inner)
    }
    fn connections(&self) -> RwLockReadGuard<'_, Connections> {
        self.connections
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }
    fn connections_mut(&self) -> RwLockWriteGuard<'_, Connections> {
        self.connections
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// `general`: every connection starts in it.
    pub fn general(&self) -> &Arc<Room> {
        &self.general
    }

    /// Every room that exists now.
    pub fn list(&self) -> Vec<Arc<Room>> {
        self.read().values().cloned().collect()
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

    /// The counters (kept by the rooms, shared with the server).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.settings.metrics
    }

    /// Where a client's outbox leaves its socket after a close, for the
    /// client's answer; [`Rooms::sweep`] reaps it.
    pub fn reaper(&self) -> &Arc<Reaper> {
        &self.reaper
    }

    /// What a connection of `user` whose token grants `claim` may join.
    pub fn access(&self, user: Arc<str>, claim: &[String]) -> Access {
        Access::new(user, self.limits.open.clone(), claim)
    }

    /// Rooms that exist now.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// WebSocket connections now.
    pub fn clients(&self) -> usize {
        self.connections().by_id.len()
    }

    /// A new connection: it joins `general` and gets `welcome` (with the
    /// rooms `access` lists) as its first frame.
    pub fn connect(&self, client: Arc<Client>, access: Access, since: Option<&Since>) -> Member {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        // Held before anyone can find the connection, so that a DM cannot
        // bring it into a room before its welcome.
        let mut joined = client.rooms();
        self.connections_mut().add(id, &client);
        // Counted before the welcome goes out, so that whoever has read it
        // finds the connection in the metrics.
        self.settings.metrics.subscriptions.moved(None, Some(1));
        let listed = access.listed();
        let greet = Greet::Welcome {
            rooms: &listed,
            since,
        };
        self.general.join(id, client.clone(), greet);
        joined.rooms.push(self.general.clone());
        drop(joined);
        Member { id, client, access }
    }

    /// The connection has ended: out of every room (with a `leave` where it
    /// was the user's last connection) and out of the registry.
    pub fn disconnect(&self, member: &Member) {
        self.connections_mut().remove(member.id, &member.client);
        let mut joined = member.client.rooms();
        // From now on nothing (a DM) can bring it into a room again.
        joined.ended = true;
        let rooms = std::mem::take(&mut joined.rooms);
        for room in &rooms {
            room.leave(member.id);
            self.free_if_unused(room);
        }
        self.settings
            .metrics
            .subscriptions
            .moved(Some(rooms.len()), None);
    }

    /// Joins `member` to `name` (creating the room if it may), which sends
    /// it `subscribed`; if it is in the room already, `subscribed` again.
    /// Resuming from `since`, if given (see `room::Room::greet_again`).
    pub fn subscribe(
        &self,
        member: &Member,
        name: &RoomName,
        since: Option<&Since>,
    ) -> Result<Arc<Room>, RoomError> {
        if !member.access.may_join(name) {
            return Err(RoomError::Forbidden);
        }
        self.enter(member.id, &member.client, name, Some(since))
    }

    /// Puts connection `id` in room `name` (creating the room within
    /// `--max-rooms`) and greets it with `subscribed`, resuming from
    /// `since` if given. If it is in the room already: `subscribed` again
    /// when `asked` is `Some` (a `subscribe`), nothing when it is `None` (a
    /// DM bringing it in).
    fn enter(
        &self,
        id: ClientId,
        client: &Arc<Client>,
        name: &RoomName,
        asked: Option<Option<&Since>>,
    ) -> Result<Arc<Room>, RoomError> {
        // Held throughout, so that its session and a DM cannot both add it.
        let mut joined = client.rooms();
        self.enter_holding(&mut joined, id, client, name, asked)
    }

    /// [`Rooms::enter`], with the connection's room list in hand.
    fn enter_holding(
        &self,
        joined: &mut Joined,
        id: ClientId,
        client: &Arc<Client>,
        name: &RoomName,
        asked: Option<Option<&Since>>,
    ) -> Result<Arc<Room>, RoomError> {
        let since = asked.flatten();
        if let Some(room) = joined.find(name.as_str()) {
            if asked.is_some() {
                room.greet_again(client, since);
            }
            return Ok(room.clone());
        }
        let count = joined.rooms.len();
        // (An ended connection is refused alike: nobody hears the answer.)
        if joined.ended || count >= self.limits.max_per_connection {
            return Err(RoomError::TooManyForConnection(
                self.limits.max_per_connection,
            ));
        }
        // Counted before `subscribed` goes out (see `connect`).
        let histogram = &self.settings.metrics.subscriptions;
        histogram.moved(Some(count), Some(count + 1));
        match self.join(id, client, name, since) {
            Ok(room) => {
                joined.rooms.push(room.clone());
                Ok(room)
            }
            Err(refused) => {
                histogram.moved(Some(count + 1), Some(count));
                Err(refused)
            }
        }
    }

    /// Finds or creates the room and joins it, under the map's lock (see
    /// the module docs).
    fn join(
        &self,
        id: ClientId,
        client: &Arc<Client>,
        name: &RoomName,
        since: Option<&Since>,
    ) -> Result<Arc<Room>, RoomError> {
        loop {
            if let Some(room) = self.join_existing(id, client, name, since) {
                return Ok(room);
            }
            if let Some(room) = self.create(id, client, name, since)? {
                return Ok(room);
            }
            // Another connection made it meanwhile: join that one.
        }
    }

    /// Joins `name` if it exists, once it is seeded; `None` if it does not
    /// exist.
    fn join_existing(
        &self,
        id: ClientId,
        client: &Arc<Client>,
        name: &RoomName,
        since: Option<&Since>,
    ) -> Option<Arc<Room>> {
        let mut patient = true;
        loop {
            let seeding = match self.read().get(name.as_str()) {
                Some(room) if !patient || !room.is_seeding() => {
                    room.join(id, client.clone(), Greet::Subscribed { since });
                    return Some(room.clone());
                }
                Some(room) => room.clone(),
                None => return None,
            };
            // Made a moment ago by another connection, which is reading its
            // history from Redis: wait for it, but not for ever (then join
            // without the history rather than keep the client waiting).
            seeding.wait_seeded();
            patient = !seeding.is_seeding();
        }
    }

    /// Creates `name` and joins connection `id` to it; `None` if it exists
    /// after all. With a relay, the room is seeded first, with neither the
    /// map's lock nor the room's held.
    fn create(
        &self,
        id: ClientId,
        client: &Arc<Client>,
        name: &RoomName,
        since: Option<&Since>,
    ) -> Result<Option<Arc<Room>>, RoomError> {
        let mut rooms = self.write();
        if rooms.contains_key(name.as_str()) {
            return Ok(None);
        }
        if rooms.len() >= self.limits.max_rooms {
            return Err(RoomError::TooManyRooms(self.limits.max_rooms));
        }
        self.count_made(&client.username)?;
        let room = Room::configured(name.shared().clone(), &self.settings, self.relay.clone())
            .made_by(client.username.clone());
        let room = Arc::new(room);
        rooms.insert(name.shared().clone(), room.clone());
        let join = |room: &Arc<Room>| {
            room.join(id, client.clone(), Greet::Subscribed { since });
            Some(room.clone())
        };
        let Some(relay) = &self.relay else {
            return Ok(join(&room));
        };
        let seeding = room.begin_seeding();
        drop(rooms);
        if let Err(why) = relay.seed(&room) {
            crate::warn!(
                "room {:?} starts without its history from Redis ({why}); it gets it once \
                 Redis is back",
                room.name()
            );
        }
        // Not freed while seeding, so still the registered room.
        let _rooms = self.read();
        let joined = join(&room);
        drop(seeding);
        Ok(joined)
    }

    /// A message is about to go to DM room `name` from `sender`: every
    /// connection of the other user that is not in the room joins it
    /// (`subscribed`, with the history so far), so that the message reaches
    /// them live, and their page can show a conversation they did not
    /// open. A connection in `--max-rooms-per-connection` rooms already is
    /// left out: the message waits in the room's history for it.
    ///
    /// `wait` says whether to wait for a connection whose room list its
    /// own session holds (it may be joining a room, which with a relay
    /// takes a round trip to Redis): the relay's one reader must not, or
    /// every room's deliveries would wait; that connection then finds the
    /// message in the room's history when it opens it.
    pub fn bring_in(&self, name: &RoomName, sender: &str, wait: bool) {
        let RoomName::Dm { users, .. } = name else {
            return;
        };
        for user in users.iter().filter(|user| ***user != *sender) {
            let theirs = self.connections().of(user);
            for (id, client) in theirs {
                let joined = if wait {
                    Some(client.rooms())
                } else {
                    client.try_rooms()
                };
                // Refused only for its limit, or because it has just ended.
                if let Some(mut joined) = joined {
                    let _ = self.enter_holding(&mut joined, id, &client, name, None);
                }
            }
        }
    }

    /// Takes `member` out of `name`; false if it was not in it.
    pub fn unsubscribe(&self, member: &Member, name: &str) -> bool {
        let mut joined = member.client.rooms();
        let Some(at) = joined.rooms.iter().position(|r| &**r.name() == name) else {
            return false;
        };
        let count = joined.rooms.len();
        let room = joined.rooms.remove(at);
        // Under the list's lock, so that no DM brings it back in between.
        room.leave(member.id);
        self.free_if_unused(&room);
        drop(joined);
        self.settings
            .metrics
            .subscriptions
            .moved(Some(count), Some(count - 1));
        true
    }

    /// Frees `room` if nobody is in it and it keeps no history (a room
    /// with history waits for `--room-idle-ttl`).
    fn free_if_unused(&self, room: &Arc<Room>) {
        if room.len() == 0 {
            self.free_idle(std::slice::from_ref(room), self.limits.idle_ttl);
        }
    }

    /// Frees each of `candidates` that is still freeable under the map's
    /// write lock (nobody can join it meanwhile). `general` stays.
    fn free_idle(&self, candidates: &[Arc<Room>], idle_ttl: u64) {
        let now = self.settings.clock.unix_secs();
        let mut rooms = self.write();
        for room in candidates {
            let name = room.name();
            let same = rooms.get(name).is_some_and(|r| Arc::ptr_eq(r, room));
            if same && !Arc::ptr_eq(room, &self.general) && room.is_freeable(now, idle_ttl) {
                rooms.remove(name);
                room.forget_journal();
                if let Some(maker) = room.maker() {
                    self.uncount_made(maker);
                }
            }
        }
    }

    /// One more room made by `user`, within `--max-rooms-per-user`. Taken
    /// under the map's write lock, as is [`Rooms::uncount_made`].
    fn count_made(&self, user: &Arc<str>) -> Result<(), RoomError> {
        let mut made = self.made.lock().unwrap_or_else(PoisonError::into_inner);
        let count = made.entry(user.clone()).or_default();
        if *count >= self.limits.max_per_user {
            return Err(RoomError::TooManyMadeByUser(self.limits.max_per_user));
        }
        *count += 1;
        Ok(())
    }

    /// A room `user` made is freed.
    fn uncount_made(&self, user: &str) {
        let mut made = self.made.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = made.get_mut(user) {
            *count -= 1;
            if *count == 0 {
                made.remove(user);
            }
        }
    }

    /// The room `name`, if it exists.
    pub fn get(&self, name: &str) -> Option<Arc<Room>> {
        self.read().get(name).cloned()
    }

    /// Warns connections whose token expires within a minute, takes every
    /// expired one out of all its rooms (close 4001, once), drops history
    /// older than `--history-ttl`, frees rooms idle for `--room-idle-ttl`, and drops connections whose close
    /// handshake has run past its grace. Run at least once a second by the
    /// server's sweeper. Returns how many connections were found expired.
    pub fn sweep(&self) -> usize {
        self.reaper.reap();
        let now = self.settings.clock.unix_secs();
        let expired: Vec<(ClientId, Arc<Client>)> = self
            .connections()
            .by_id
            .iter()
            .filter(|(_, client)| {
                let expired = client.is_expired_at(now);
                if !expired {
                    client.warn_if_expiring(now);
                }
                expired
            })
            .map(|(id, client)| (*id, client.clone()))
            .collect();
        for (id, client) in &expired {
            self.evict_expired(*id, client);
        }
        let rooms: Vec<Arc<Room>> = self.read().values().cloned().collect();
        for room in &rooms {
            room.prune_history();
        }
        if let Some(journal) = &self.settings.journal {
            journal.prune(self.settings.clock.unix_millis());
        }
        let idle: Vec<Arc<Room>> = rooms
            .into_iter()
            .filter(|room| room.len() == 0 && !Arc::ptr_eq(room, &self.general))
            .collect();
        if idle
            .iter()
            .any(|room| room.is_freeable(now, self.limits.idle_ttl))
        {
            self.free_idle(&idle, self.limits.idle_ttl);
        }
        expired.len()
    }

    /// Takes an expired connection out of every room it is in; one in no
    /// room is closed here.
    fn evict_expired(&self, id: ClientId, client: &Client) {
        // A copy: evicting takes each room's locks, and the session may
        // want its list meanwhile. Busy (its session is joining a room):
        // the next sweep, a quarter of a second on, takes it out.
        let Some(joined) = client.try_rooms() else {
            return;
        };
        let rooms = joined.rooms.clone();
        drop(joined);
        for room in &rooms {
            room.evict_expired(id);
        }
        if rooms.is_empty() && client.outbox.close(&CloseReason::token_expired()) {
            crate::info!("client {id} ({:?}) evicted: token expired", client.username);
            crate::metrics::inc(&self.settings.metrics.expiry_disconnects);
        }
    }

    /// Closes every room's presence window
    /// `room::presence::PRESENCE_WINDOW` (100 ms) after it opened, until `stop` is set. The server runs this on a
    /// thread of its own.
    pub fn run_presence_windows(&self, stop: &AtomicBool) {
        self.settings.windows.run(stop, |name| {
            if let Some(room) = self.get(name) {
                room.flush_presence();
            }
        });
    }

    /// Sends every room's gathered joins and leaves now.
    pub fn flush_presence(&self) {
        for room in self.list() {
            room.flush_presence();
        }
    }

    /// With `--data-dir`: everything kept so far is made durable (a clean
    /// shutdown).
    pub fn close_journal(&self) {
        if let Some(journal) = &self.settings.journal {
            journal.close();
        }
    }

    /// Closes every connection for `reason` (the server is going away);
    /// returns their outboxes, so the caller can wait for them to drain.
    pub fn close_all(&self, reason: &CloseReason) -> Vec<Arc<Outbox>> {
        for room in &self.list() {
            room.close_all(reason);
        }
        let clients = self.connections();
        for client in clients.by_id.values() {
            client.outbox.close(reason);
        }
        clients.by_id.values().map(|c| c.outbox.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, TcpStream};
    use std::time::Duration;

    use super::*;
    use crate::clock::ManualClock;
    use crate::outbox::QueueLimit;

    struct Peer {
        member: Member,
        socket: TcpStream,
        unread: Vec<u8>,
    }

    impl Peer {
        /// Each text frame sent so far.
        fn frames(&mut self) -> Vec<serde_json::Value> {
            crate::room::tests::text_frames(&self.socket, &mut self.unread)
        }

        /// The `type` (and room) of each frame sent so far.
        fn types(&mut self) -> Vec<String> {
            self.frames()
                .iter()
                .map(|v| {
                    let room = v["room"]
                        .as_str()
                        .map(|r| format!(" {r}"))
                        .unwrap_or_default();
                    format!("{}{room}", v["type"].as_str().unwrap())
                })
                .collect()
        }
    }

    fn rooms(max_rooms: usize, per_connection: usize) -> (Rooms, ManualClock) {
        let clock = ManualClock::new();
        let settings = Settings {
            retention: crate::room::Retention {
                messages: 10,
                greeting: 10,
                ..Default::default()
            },
            max_pending: 1 << 16,
            clock: clock.clock(),
            presence_list_max: 100,
            ..Settings::default()
        };
        let limits = Limits {
            max_rooms,
            max_per_connection: per_connection,
            max_per_user: 3,
            idle_ttl: 3600,
            open: vec!["ops".into()].into(),
        };
        (Rooms::new(settings, limits, None, Vec::new()), clock)
    }

    fn connect(rooms: &Rooms, name: &str, exp: u64, claim: &[&str]) -> Peer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let socket = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server_side, _) = listener.accept().unwrap();
        let limit = QueueLimit {
            frames: 64,
            bytes: 1 << 20,
        };
        let outbox = Outbox::new(limit, Arc::new(server_side), rooms.reaper().clone());
        let client = Arc::new(Client::new(name.into(), exp, outbox));
        let claim: Vec<String> = claim.iter().map(|c| c.to_string()).collect();
        let access = Access::new(name.into(), rooms.limits.open.clone(), &claim);
        Peer {
            member: rooms.connect(client, access, None),
            socket,
            unread: Vec::new(),
        }
    }

    impl Rooms {
        fn subscribe_to(&self, member: &Member, name: &RoomName) -> Result<Arc<Room>, RoomError> {
            self.subscribe(member, name, None)
        }
    }

    fn room(name: &str) -> RoomName {
        RoomName::parse(name).unwrap()
    }

    #[test]
    fn rooms_are_made_by_joining_and_freed_when_unused() {
        let (rooms, clock) = rooms(3, 64);
        let later = clock.clock().unix_secs() + 600;
        let mut a = connect(&rooms, "a", later, &["team-*"]);
        assert_eq!(a.types(), ["welcome general"]);
        assert_eq!(
            rooms.subscribe_to(&a.member, &room("random")).err(),
            Some(RoomError::Forbidden)
        );
        rooms.subscribe_to(&a.member, &room("ops")).unwrap();
        rooms.subscribe_to(&a.member, &room("team-1")).unwrap();
        assert_eq!(rooms.len(), 3);
        assert_eq!(
            rooms.subscribe_to(&a.member, &room("team-2")).err(),
            Some(RoomError::TooManyRooms(3))
        );
        // Subscribing again answers again, and creates nothing.
        rooms.subscribe_to(&a.member, &room("ops")).unwrap();
        assert_eq!(
            a.types(),
            ["subscribed ops", "subscribed team-1", "subscribed ops"]
        );
        // team-1 has no history: freed as its last member leaves.
        assert!(rooms.unsubscribe(&a.member, "team-1"));
        assert!(!rooms.unsubscribe(&a.member, "team-1"));
        assert_eq!(rooms.len(), 2);
        // ops has history: kept until nobody has been in it for the TTL.
        let ops = rooms.get("ops").unwrap();
        ops.broadcast(a.member.id, "a", "hi", None, crate::room::Fanout::Now)
            .unwrap();
        rooms.unsubscribe(&a.member, "ops");
        rooms.sweep();
        assert!(rooms.get("ops").is_some(), "its history is kept");
        clock.advance(Duration::from_secs(3600));
        rooms.sweep();
        assert!(rooms.get("ops").is_none(), "idle past the TTL");
        // general stays, even empty.
        rooms.unsubscribe(&a.member, "general");
        clock.advance(Duration::from_secs(7200));
        rooms.sweep();
        assert!(rooms.get("general").is_some());
        rooms.disconnect(&a.member);
        assert_eq!(rooms.clients(), 0);
    }

    #[test]
    fn a_connection_has_at_most_its_share_of_rooms() {
        let (rooms, clock) = rooms(100, 2);
        let later = clock.clock().unix_secs() + 600;
        let a = connect(&rooms, "a", later, &["*"]);
        rooms.subscribe_to(&a.member, &room("one")).unwrap();
        assert_eq!(
            rooms.subscribe_to(&a.member, &room("two")).err(),
            Some(RoomError::TooManyForConnection(2))
        );
        // Already in it: no new room, so no limit.
        assert!(rooms.subscribe_to(&a.member, &room("one")).is_ok());
    }

    #[test]
    fn the_sweep_evicts_from_every_room_once_even_from_none() {
        let (rooms, clock) = rooms(100, 64);
        let now = clock.clock().unix_secs();
        let mut a = connect(&rooms, "a", now + 600, &[]);
        let mut old = connect(&rooms, "old", now + 30, &[]);
        rooms.subscribe_to(&a.member, &room("ops")).unwrap();
        rooms.subscribe_to(&old.member, &room("ops")).unwrap();
        let mut gone = connect(&rooms, "gone", now + 30, &[]);
        rooms.unsubscribe(&gone.member, "general");
        rooms.flush_presence();
        a.types();
        assert_eq!(old.types()[..2], ["welcome general", "subscribed ops"]);
        assert_eq!(rooms.sweep(), 0);
        assert_eq!(old.types(), ["expiring"]);
        clock.advance(Duration::from_secs(30));
        assert_eq!(rooms.sweep(), 2);
        rooms.flush_presence();
        assert_eq!(old.types(), ["error"], "one notice, then the close");
        assert_eq!(gone.types(), ["welcome general", "expiring", "error"]);
        assert_eq!(old.member.client.outbox.close_code(), Some(4001));
        assert_eq!(gone.member.client.outbox.close_code(), Some(4001));
        let mut left = a.types();
        left.sort();
        assert_eq!(left, ["leave general", "leave ops"]);
        assert_eq!(
            rooms.metrics().expiry_disconnects.load(Ordering::Relaxed),
            2
        );
    }

    /// A relay whose Redis holds ops's messages 1 and 2 when the room is
    /// seeded, and whose consumer delivers 2 and 3 meanwhile.
    struct Seeder;

    fn said(seq: u64) -> crate::room::Delivery {
        crate::room::Delivery {
            epoch: None,
            seq,
            room: "ops".into(),
            from: "b".into(),
            text: format!("m{seq}"),
            ts: 0,
            id: None,
        }
    }

    impl Relay for Seeder {
        fn publish(
            &self,
            _room: &str,
            _floor: u64,
            _from: &str,
            _text: &str,
            _id: Option<&str>,
        ) -> Result<u64, crate::room::Unavailable> {
            Ok(0)
        }
        fn presence_changed(&self, _room: &Arc<str>, _user: &Arc<str>) {}
        fn health(&self) -> Result<(), crate::room::Unavailable> {
            Ok(())
        }
        fn seed(&self, room: &Room) -> Result<(), crate::room::Unavailable> {
            assert!(room.is_seeding(), "registered, not yet joinable");
            room.deliver_relayed(&[said(2), said(3)]);
            room.seed(crate::room::Seed {
                epoch: None,
                last_seq: 2,
                history: vec![said(1), said(2)],
            });
            Ok(())
        }
        fn start(self: Arc<Self>, _rooms: Arc<Rooms>) {}
        fn stop(&self) {}
    }

    #[test]
    fn a_room_made_with_a_relay_starts_from_its_history_and_what_came_meanwhile() {
        let (plain, clock) = rooms(100, 64);
        let rooms = Rooms::new(
            plain.settings.clone(),
            plain.limits.clone(),
            Some(Arc::new(Seeder)),
            Vec::new(),
        );
        let later = clock.clock().unix_secs() + 600;
        let mut a = connect(&rooms, "a", later, &[]);
        rooms.subscribe_to(&a.member, &room("ops")).unwrap();
        let frames = a.frames();
        let subscribed = frames.iter().find(|f| f["type"] == "subscribed").unwrap();
        let seqs: Vec<u64> = subscribed["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(
            seqs,
            [1, 2, 3],
            "the relay's history, then what came meanwhile, once"
        );
        assert_eq!(subscribed["last_seq"], 3);
        assert!(
            !frames.iter().any(|f| f["type"] == "message"),
            "nothing of it live: {frames:?}"
        );
        // The consumer reads on: 3 again (skipped), then 4 (live).
        let ops = rooms.get("ops").unwrap();
        ops.deliver_relayed(&[said(3), said(4)]);
        let live: Vec<u64> = a
            .frames()
            .iter()
            .filter_map(|f| f["seq"].as_u64())
            .collect();
        assert_eq!(live, [4]);
    }
}
