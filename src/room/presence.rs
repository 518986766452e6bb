//! Presence in windows: joins and leaves are not sent one by one (a storm
//! of N users connecting would be N frames to each of N clients) but
//! gathered for up to [`PRESENCE_WINDOW`] and sent as one frame to
//! everyone: `join` or `leave` when the window holds one change, else
//! `presence` with the lists. What the window holds, and what the others
//! were last told, is in `timeline::PresenceWindow`; this file sends it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use super::Room;
use super::timeline::Timeline;
use crate::protocol::Outgoing;

/// How long joins and leaves are gathered before they go out as one frame.
pub const PRESENCE_WINDOW: Duration = Duration::from_millis(100);

/// A `welcome` lists this many online users at most, by default
/// (`--presence-list-max`); `online_count` says how many there are.
pub const PRESENCE_LIST_MAX: usize = 1000;

impl Room {
    /// `user` came online or went offline everywhere: into the presence
    /// window, which the presence thread is woken to close in good time.
    pub(super) fn presence_changed(&self, timeline: &mut Timeline, user: &Arc<str>) {
        if timeline.window.touch(user, Instant::now()) {
            self.window_opened.notify_all();
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
                Outgoing::Join { user }.frame()
            }
            ([], [user]) => Outgoing::Leave { user }.frame(),
            (joined, left) => Outgoing::Presence {
                room: "general",
                joined: names(joined),
                left: names(left),
            }
            .frame(),
        };
        let evictions = self.fan_out(&frame, &newcomers);
        self.remove_departing(timeline, evictions);
    }

    /// Closes each presence window [`PRESENCE_WINDOW`] after it opened,
    /// until `stop` is set (checked at least once a second). The server
    /// runs this on a thread of its own.
    pub fn run_presence_windows(&self, stop: &AtomicBool) {
        while !stop.load(Ordering::Acquire) {
            let opened = {
                let mut timeline = self.timeline();
                if timeline.window.opened.is_none() {
                    let (woken, _) = self
                        .window_opened
                        .wait_timeout(timeline, Duration::from_secs(1))
                        .unwrap_or_else(PoisonError::into_inner);
                    timeline = woken;
                }
                timeline.window.opened
            };
            let Some(opened) = opened else {
                continue;
            };
            std::thread::sleep(
                (opened + PRESENCE_WINDOW).saturating_duration_since(Instant::now()),
            );
            self.flush_presence();
        }
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
