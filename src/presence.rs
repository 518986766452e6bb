//! Who is online: the room's presence, per username, across this
//! instance and (with `--redis`) the others. Presence is per username, not
//! per connection: `join` goes out when a user comes online in the first
//! place, `leave` when they are gone from the last, whether those places
//! are connections here or other instances reporting them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

/// Users on each other instance, by instance id.
pub type RemotePresence = HashMap<Box<str>, BTreeSet<Arc<str>>>;

/// Who is online. Presence is per username: `join` goes out when a user
/// comes online in the first place (a connection here, or another instance
/// reporting them), `leave` when they are gone from the last.
#[derive(Default)]
pub struct Presence {
    /// Connections on this instance, per username.
    local: BTreeMap<Arc<str>, usize>,
    /// Users on the other instances, as the relay last reported them.
    remote: RemotePresence,
    /// In how many places (this instance, each other one) each user is.
    places: BTreeMap<Arc<str>, usize>,
}

/// What one connection coming or going changed.
pub struct Change {
    /// The user's first connection here, or their last one went.
    pub here: bool,
    /// The user came online, or went offline, everywhere: `join`/`leave`.
    pub everywhere: bool,
}

impl Presence {
    /// Whether `user` is online anywhere.
    pub fn is_online(&self, user: &str) -> bool {
        self.places.contains_key(user)
    }

    /// Whether `user` has a connection on this instance.
    pub fn is_here(&self, user: &str) -> bool {
        self.local.contains_key(user)
    }

    /// Every user with a connection on this instance.
    pub fn local_users(&self) -> Vec<Arc<str>> {
        self.local.keys().cloned().collect()
    }

    /// One more connection of `user` here.
    pub fn connect(&mut self, user: &Arc<str>) -> Change {
        let here = count_in(&mut self.local, user);
        Change {
            here,
            everywhere: here && self.arrive(user),
        }
    }

    /// One connection of `user` here is gone.
    pub fn disconnect(&mut self, user: &str) -> Change {
        let here = count_out(&mut self.local, user);
        Change {
            here,
            everywhere: here && self.depart(user),
        }
    }

    /// `user` is in one more place; true if it is their first.
    fn arrive(&mut self, user: &Arc<str>) -> bool {
        count_in(&mut self.places, user)
    }

    /// `user` is in one place fewer; true if that was their last.
    fn depart(&mut self, user: &str) -> bool {
        count_out(&mut self.places, user)
    }

    /// Another instance reports `user` there or not; the user, if that
    /// makes them come online or go offline.
    pub fn set_remote(&mut self, instance: &str, user: &str, online: bool) -> Option<Arc<str>> {
        let user: Arc<str> = user.into();
        let changed = if online {
            let users = self.remote.entry(instance.into()).or_default();
            users.insert(user.clone()) && self.arrive(&user)
        } else {
            let users = self.remote.get_mut(instance)?;
            let removed = users.remove(&user);
            if users.is_empty() {
                self.remote.remove(instance);
            }
            removed && self.depart(&user)
        };
        changed.then_some(user)
    }

    /// Replaces what other instances report with `snapshot`; returns who
    /// came online and who went offline.
    pub fn replace_remote(
        &mut self,
        mut snapshot: RemotePresence,
        keep_missing: bool,
    ) -> (Vec<Arc<str>>, Vec<Arc<str>>) {
        snapshot.retain(|_, users| !users.is_empty());
        let old = std::mem::take(&mut self.remote);
        if keep_missing {
            for (instance, users) in &old {
                snapshot
                    .entry(instance.clone())
                    .or_insert_with(|| users.clone());
            }
        }
        // Arrivals first, so a user moving between instances does not flap.
        let mut came = Vec::new();
        for (instance, users) in &snapshot {
            let before = old.get(instance);
            for user in users {
                if before.is_none_or(|b| !b.contains(user)) && self.arrive(user) {
                    came.push(user.clone());
                }
            }
        }
        let mut went = Vec::new();
        for (instance, users) in &old {
            let after = snapshot.get(instance);
            for user in users {
                if after.is_none_or(|a| !a.contains(user)) && self.depart(user) {
                    went.push(user.clone());
                }
            }
        }
        self.remote = snapshot;
        (came, went)
    }
}

/// Adds one to `user`'s count; true if it was the first.
fn count_in(counts: &mut BTreeMap<Arc<str>, usize>, user: &Arc<str>) -> bool {
    let count = counts.entry(user.clone()).or_insert(0);
    *count += 1;
    *count == 1
}

/// Takes one from `user`'s count; true if that was the last (and the
/// entry is gone).
fn count_out(counts: &mut BTreeMap<Arc<str>, usize>, user: &str) -> bool {
    match counts.get_mut(user) {
        Some(count) if *count > 1 => {
            *count -= 1;
            false
        }
        Some(_) => {
            counts.remove(user);
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users(names: &[&str]) -> BTreeSet<Arc<str>> {
        names.iter().map(|n| Arc::from(*n)).collect()
    }

    #[test]
    fn presence_spans_instances_per_username() {
        let mut p = Presence::default();
        let a: Arc<str> = "a".into();
        assert!(p.connect(&a).everywhere, "first connection anywhere");
        // Another instance reports `a` too: no second join, and `a` leaving
        // here is no leave while it is still there.
        assert_eq!(p.set_remote("i2", "a", true), None);
        let gone_here = p.disconnect(&a);
        assert!(gone_here.here && !gone_here.everywhere);
        assert_eq!(p.set_remote("i2", "b", true).as_deref(), Some("b"));
        assert!(p.is_online("a") && p.is_online("b"));
        assert_eq!(p.set_remote("i2", "a", false).as_deref(), Some("a"));
        assert!(!p.is_online("a") && p.is_online("b"));
    }

    #[test]
    fn a_snapshot_drops_dead_instances_unless_told_to_keep_them() {
        let mut p = Presence::default();
        p.set_remote("i2", "b", true);
        p.set_remote("i3", "c", true);
        // Just after a reconnect: i3 is missing, but kept; i4 is new.
        let snapshot =
            RemotePresence::from([("i2".into(), users(&["b"])), ("i4".into(), users(&["d"]))]);
        let (came, went) = p.replace_remote(snapshot.clone(), true);
        assert_eq!((came, went), (vec!["d".into()], vec![]));
        // Later: i3's heartbeat has run out.
        let (came, went) = p.replace_remote(snapshot, false);
        assert_eq!((came, went), (vec![], vec!["c".into()]));
        // A user moving between instances does not flap.
        let moved = RemotePresence::from([("i2".into(), users(&["b", "d"]))]);
        assert_eq!(p.replace_remote(moved, false), (vec![], vec![]));
    }
}
