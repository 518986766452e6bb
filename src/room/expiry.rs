//! Tokens running out while their clients are connected: the sweep that
//! warns a client a minute ahead (`expiring`) and closes it at `exp` (4001,
//! RFC 7519 §4.1.4: the current time "MUST be before" `exp`). A `reauth`
//! moves a connection's expiry ([`super::Client::renew`]). A broadcast
//! checks the same expiry for every recipient on its way (see
//! `Room::fan_out_to`). A connection in several rooms is warned once (the
//! flag is its own, not the room's) and closed once, by whichever room
//! finds it expired first; the others then let it go.

use std::sync::atomic::Ordering;

use super::{Client, ClientId, Departure, Room};
use crate::auth::is_expired;
use crate::protocol::Outgoing;

/// A client is warned (`{"type":"expiring"}`) this long before its token
/// expires, once per token.
pub const EXPIRY_WARNING_SECS: u64 = 60;

impl Client {
    /// Whether this connection's token has expired at `now` (Unix seconds).
    pub fn is_expired_at(&self, now: u64) -> bool {
        is_expired(self.exp(), now)
    }

    /// Sends `expiring` if the token expires within
    /// [`EXPIRY_WARNING_SECS`] of `now` and has not been warned about yet.
    pub fn warn_if_expiring(&self, now: u64) {
        if now + EXPIRY_WARNING_SECS >= self.exp() && !self.warned.swap(true, Ordering::Relaxed) {
            let warning = Outgoing::Expiring {
                expires_at: self.exp(),
            };
            // A full queue is the broadcast's business, not the sweep's.
            let _ = self.outbox.push(warning.frame());
        }
    }
}

impl Room {
    /// Takes connection `id`, whose token has expired, out of the room:
    /// `token_expired` and close 4001 (unless another of its rooms has
    /// closed it already), and a `leave` if it was the user's last
    /// connection here. Nothing if it is not in the room.
    pub fn evict_expired(&self, id: ClientId) {
        let mut timeline = self.timeline();
        self.remove_departing(&mut timeline, vec![(id, Departure::TokenExpired)]);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::tests::{client, clock_at_start};

    #[test]
    fn a_client_is_warned_once_then_evicted_with_4001() {
        let (room, clock) = clock_at_start();
        let start = room.clock.unix_secs();
        let (_, mut a) = client(&room, "a", start + 600);
        room.flush_presence();
        let (old_id, mut old) = client(&room, "old", start + 90);
        room.flush_presence();
        let old_client = room.read()[&old_id].clone();
        old_client.warn_if_expiring(room.clock.unix_secs());
        assert_eq!(old.types(), ["welcome"], "not warned yet");
        clock.advance(Duration::from_secs(30));
        old_client.warn_if_expiring(room.clock.unix_secs());
        assert_eq!(old.types(), ["expiring"], "a minute before exp");
        old_client.warn_if_expiring(room.clock.unix_secs());
        assert!(old.types().is_empty(), "warned once");
        assert!(!old_client.is_expired_at(room.clock.unix_secs()));
        clock.advance(Duration::from_secs(60));
        assert!(old_client.is_expired_at(room.clock.unix_secs()), "at exp");
        room.evict_expired(old_id);
        room.evict_expired(old_id); // idempotent
        room.flush_presence();
        assert_eq!(old.types(), ["error"], "token_expired, then the close");
        assert_eq!(old.outbox.close_code(), Some(4001));
        assert_eq!(a.types(), ["welcome", "join", "leave"]);
        // Renewed, the warning is armed again.
        old_client.renew(room.clock.unix_secs() + 30);
        old_client.warn_if_expiring(room.clock.unix_secs());
        assert!(old_client.warned.load(std::sync::atomic::Ordering::Relaxed));
    }
}
