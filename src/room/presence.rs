//! Presence in windows: joins and leaves are not sent one by one (a storm
//! of N users connecting would be N frames to each of N clients) but
//! gathered for up to [`PRESENCE_WINDOW`] and sent as one frame to
//! everyone: `join` or `leave` when the window holds one change, else
//! `presence` with the lists. What the window holds, and what the others
//! were last told, is in `timeline::PresenceWindow`; this file sends it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::Room;
use super::timeline::Timeline;
use crate::protocol::Outgoing;

/// How long joins and leaves are gathered before they go out as one frame.
pub const PRESENCE_WINDOW: Duration = Duration::from_millis(100);

/// A `welcome` lists this many online users at most, by default
/// (`--presence-list-max`); `online_count` says how many there are.
pub const PRESENCE_LIST_MAX: usize = 1000;

/// The rooms whose presence window is open, in the order they opened:
/// one thread ([`OpenWindows::run`]) closes every room's window on time,
/// however many rooms there are.
#[derive(Default)]
pub struct OpenWindows {
    queue: Mutex<VecDeque<(Instant, Arc<str>)>>,
    opened: Condvar,
}

impl OpenWindows {
    /// The window of `room` opened at `at`. (Taken under the room's
    /// timeline lock: this lock is only ever taken last.)
    fn opened(&self, room: &Arc<str>, at: Instant) {
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        queue.push_back((at, room.clone()));
        self.opened.notify_all();
    }

    /// Calls `close(room)` [`PRESENCE_WINDOW`] after each room's window
    /// opened, until `stop` is set (checked at least once a second).
    pub fn run(&self, stop: &AtomicBool, close: impl Fn(&str)) {
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        while !stop.load(Ordering::Acquire) {
            let wait = match queue.front() {
                None => Duration::from_secs(1),
                Some((opened, _)) => {
                    (*opened + PRESENCE_WINDOW).saturating_duration_since(Instant::now())
                }
            };
            if !wait.is_zero() {
                queue = self
                    .opened
                    .wait_timeout(queue, wait.min(Duration::from_secs(1)))
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
                continue;
            }
            let Some((_, room)) = queue.pop_front() else {
                continue;
            };
            // Not under this lock: closing takes the room's.
            drop(queue);
            close(&room);
            queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        }
    }
}

impl Room {
    /// `user` came online or went offline everywhere: into the presence
    /// window, which is queued to be closed in good time if this opens it.
    pub(super) fn presence_changed(&self, timeline: &mut Timeline, user: &Arc<str>) {
        let now = Instant::now();
        if timeline.window.touch(user, now) {
            self.windows.opened(&self.name, now);
        }
    }

    /// Closes the presence window now: one frame to everyone with what
    /// changed since the last (`join`, `leave` or `presence`), nothing if
    /// nothing did, net.
    pub fn flush_presence(&self) {
        let mut timeline = self.timeline();
        let timeline = &mut *timeline;
        let presence = &timeline.presence;
        let diff = timeline.window.close(|user| presence.is_online(user));
        // A lone `join` skips the newcomer it is about: its welcome already
        // listed itself, so a quiet room looks as it always did. (In a
        // `presence` frame a newcomer may find its own name; it changes
        // nothing for it.)
        let mut newcomers = Vec::new();
        let frame = match (&diff.joined[..], &diff.left[..]) {
            ([], []) => return,
            ([user], []) => {
                newcomers = diff.newcomers_named(user);
                Outgoing::Join {
                    room: &self.name,
                    user,
                }
                .frame()
            }
            ([], [user]) => Outgoing::Leave {
                room: &self.name,
                user,
            }
            .frame(),
            (joined, left) => Outgoing::Presence {
                room: &self.name,
                joined: names(joined),
                left: names(left),
            }
            .frame(),
        };
        let evictions = self.fan_out(&frame, &newcomers);
        self.remove_departing(timeline, evictions);
    }
}

fn names(users: &[Arc<str>]) -> Vec<&str> {
    users.iter().map(|u| &**u).collect()
}

/// A newcomer's `online` list and `online_count`: everyone as the last
/// presence frame told the others (so the next frame's diff applies to it
/// too), and the newcomer itself, sorted, cut to `max` names.
pub(super) fn who_is_online<'a>(
    published: &'a std::collections::BTreeSet<Arc<str>>,
    me: &'a str,
    max: usize,
) -> (Vec<&'a str>, usize) {
    let me_too = !published.contains(me);
    let count = published.len() + usize::from(me_too);
    let mut online: Vec<&str> = published.iter().map(|u| &**u).take(max + 1).collect();
    if me_too {
        let at = online.binary_search(&me).unwrap_or_else(|at| at);
        online.insert(at, me);
    }
    online.truncate(max);
    (online, count)
}
