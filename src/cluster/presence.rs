//! The presence thread: keeps this instance's entry in Redis true. It
//! writes each change of who is in which room here (the room tells it
//! through [`Relay::presence_changed`](crate::room::Relay::presence_changed)),
//! and renews the heartbeat every [`HEARTBEAT`]. On a new connection, or
//! when Redis has forgotten this instance (it stalled past its TTL, or its
//! set was evicted), it writes the whole set again.
//!
//! The set holds one entry per room and user, `room<US>user` (`<US>` is
//! the unit separator, `\x1f`): room names and usernames hold no control
//! characters, so the split is unambiguous.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::thread;
use std::time::Instant;

use redis::{Connection, RedisResult, Script, ScriptInvocation};

use super::{BACKOFF_MAX, BACKOFF_MIN, Cluster, HEARTBEAT, INSTANCE_TTL, IO_TIMEOUT};
use super::{PRESENCE_EVENTS, lock, millis};
use crate::rooms::Rooms;

/// Between a room and a user in an entry of an instance's set.
const SEPARATOR: char = '\u{1f}';

/// The entry of `user` in `room`.
pub(super) fn entry(room: &str, user: &str) -> String {
    format!("{room}{SEPARATOR}{user}")
}

/// The room and the user of an entry; `None` for anything else.
pub(super) fn split_entry(entry: &str) -> Option<(&str, &str)> {
    entry
        .split_once(SEPARATOR)
        .filter(|(room, user)| !room.is_empty() && !user.is_empty())
}

/// (room, user) pairs whose presence here changed.
type Changed = BTreeSet<(Arc<str>, Arc<str>)>;

impl Cluster {
    /// The presence thread's body.
    pub(super) fn keep_present(&self, rooms: &Rooms) {
        let mut con: Option<Connection> = None;
        let mut backoff = BACKOFF_MIN;
        let mut next_beat = Instant::now();
        while !self.stopping() {
            let changed = self.wait_for_changes(next_beat);
            if self.stopping() {
                break;
            }
            let beat = Instant::now() >= next_beat;
            if beat {
                next_beat = Instant::now() + HEARTBEAT;
            }
            let written = self.guarded(|| self.write_presence(&mut con, rooms, changed, beat));
            match written {
                Ok(()) => backoff = BACKOFF_MIN,
                Err(error) => {
                    self.failed("writing presence", &error, backoff > BACKOFF_MIN);
                    // Reconnect and write the whole set, which covers the
                    // changes that were not written.
                    con = None;
                    thread::sleep(backoff);
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    /// One round: connect and write everything if need be, else the
    /// changes; then the heartbeat if it is due.
    fn write_presence(
        &self,
        con: &mut Option<Connection>,
        rooms: &Rooms,
        changed: Changed,
        beat: bool,
    ) -> RedisResult<()> {
        let con = match con {
            Some(con) => {
                self.write_changes(con, rooms, changed)?;
                con
            }
            // A new connection may be to a Redis that lost everything.
            None => {
                let mut fresh = self.connect(IO_TIMEOUT)?;
                self.sync(&mut fresh, rooms)?;
                con.insert(fresh)
            }
        };
        if beat && self.beat(con, rooms)? {
            crate::warn!(
                "redis: this instance had been forgotten (stalled past its {} s heartbeat?); \
                 announcing its users again",
                INSTANCE_TTL.as_secs()
            );
            self.sync(con, rooms)?;
        }
        Ok(())
    }

    /// Waits until a user's presence in a room changes here or `until`,
    /// and takes the changed pairs.
    fn wait_for_changes(&self, until: Instant) -> Changed {
        let mut changed = lock(&self.changed);
        while changed.is_empty() && !self.stopping() {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            changed = self
                .wake
                .wait_timeout(changed, left)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        std::mem::take(&mut *changed)
    }

    fn write_changes(
        &self,
        con: &mut Connection,
        rooms: &Rooms,
        changed: Changed,
    ) -> RedisResult<()> {
        if changed.is_empty() {
            return Ok(());
        }
        let mut by_room: BTreeMap<Arc<str>, Vec<Arc<str>>> = BTreeMap::new();
        for (room, user) in changed {
            by_room.entry(room).or_default().push(user);
        }
        let mut call = self.presence_call(&self.scripts.change);
        // Whatever happened in between, write how it is now; a room freed
        // meanwhile has nobody here.
        for (name, users) in &by_room {
            let here = match rooms.get(name) {
                Some(room) => room.which_are_here(users),
                None => users.iter().map(|user| (user, false)).collect(),
            };
            for (user, here) in here {
                call.arg(entry(name, user))
                    .arg(if here { "1" } else { "0" });
            }
        }
        call.invoke(con)
    }

    /// Writes this instance's whole set and heartbeat.
    fn sync(&self, con: &mut Connection, rooms: &Rooms) -> RedisResult<()> {
        lock(&self.changed).clear();
        let mut call = self.presence_call(&self.scripts.sync);
        call.key(&self.keys.instances);
        for room in rooms.list() {
            for user in room.local_users() {
                call.arg(entry(room.name(), &user));
            }
        }
        call.invoke(con)
    }

    /// `script` with what the presence scripts share: KEYS this
    /// instance's set, its version, the presence stream; ARGV its id, the
    /// TTL and the presence stream's length.
    fn presence_call<'s>(&self, script: &'s Script) -> ScriptInvocation<'s> {
        let mut call = script.prepare_invoke();
        call.key(&self.keys.online)
            .key(&self.keys.version)
            .key(&self.keys.presence)
            .arg(&self.id)
            .arg(millis(INSTANCE_TTL))
            .arg(PRESENCE_EVENTS);
        call
    }

    /// Renews the heartbeat; true if Redis had forgotten this instance.
    fn beat(&self, con: &mut Connection, rooms: &Rooms) -> RedisResult<bool> {
        let has_users = rooms.list().iter().any(|room| room.len() > 0);
        let forgotten: u8 = self
            .scripts
            .beat
            .key(&self.keys.online)
            .key(&self.keys.version)
            .key(&self.keys.instances)
            .arg(&self.id)
            .arg(millis(INSTANCE_TTL))
            .arg(if has_users { "1" } else { "0" })
            .invoke(con)?;
        Ok(forgotten == 1)
    }
}
