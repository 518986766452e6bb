//! Tokens running out while their clients are connected: the sweep that
//! warns a client a minute ahead (`expiring`) and closes it at `exp` (4001,
//! RFC 7519 §4.1.4: the current time "MUST be before" `exp`), and `reauth`,
//! which moves a connection's expiry. A broadcast checks the same expiry
//! for every recipient on its way (see `Room::fan_out_to`).

use std::sync::atomic::Ordering;

use super::{Client, ClientId, Departure, Room};
use crate::auth::is_expired;
use crate::protocol::Outgoing;

/// A client is warned (`{"type":"expiring"}`) this long before its token
/// expires, once per token.
pub const EXPIRY_WARNING_SECS: u64 = 60;

impl Room {
    /// Warns clients whose token expires within a minute, closes every
    /// client whose token has expired, and drops connections whose close
    /// handshake has run past its grace. Run by the server's sweeper at
    /// least once a second, so an idle client goes within about a second of
    /// its `exp`. Returns how many clients went.
    pub fn sweep(&self) -> usize {
        self.reaper.reap();
        let now = self.clock.unix_secs();
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
        self.remove_departing(&mut timeline, evictions);
        count
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
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::tests::{client, clock_at_start};

    #[test]
    fn the_sweep_warns_then_closes_at_exp() {
        let (room, clock) = clock_at_start();
        let start = room.clock.unix_secs();
        let (_, mut a) = client(&room, "a", start + 600);
        room.flush_presence();
        let (_, mut old) = client(&room, "old", start + 90);
        room.flush_presence();
        assert_eq!(room.sweep(), 0);
        assert_eq!(old.types(), ["welcome"], "not warned yet");
        clock.advance(Duration::from_secs(30));
        assert_eq!(room.sweep(), 0);
        assert_eq!(old.types(), ["expiring"], "a minute before exp");
        room.sweep();
        assert!(old.types().is_empty(), "warned once");
        clock.advance(Duration::from_secs(60));
        assert_eq!(room.sweep(), 1, "at exp, not after");
        room.flush_presence();
        assert_eq!(old.types(), ["error"], "token_expired, then the close");
        assert!(old.outbox.is_closing());
        assert_eq!(a.types(), ["welcome", "join", "leave"]);
        assert_eq!(room.sweep(), 0);
    }

    #[test]
    fn reauth_moves_the_expiry_and_rearms_the_warning() {
        let (room, clock) = clock_at_start();
        let start = room.clock.unix_secs();
        let (id, mut a) = client(&room, "a", start + 30);
        room.sweep();
        assert_eq!(a.types(), ["welcome", "expiring"]);
        assert!(room.reauth(id, start + 600));
        clock.advance(Duration::from_secs(31));
        assert_eq!(room.sweep(), 0, "the new expiry holds");
        clock.advance(Duration::from_secs(540));
        room.sweep();
        assert_eq!(a.types(), ["expiring"], "warned again for the new token");
        room.leave(id);
        assert!(!room.reauth(id, start + 900), "gone");
    }
}
