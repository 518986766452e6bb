//! Where the server's time comes from.
//!
//! Token validity (`exp` and `nbf`, RFC 7519 §4.1.4–§4.1.5), the room's
//! expiry sweep and `expiring` warnings, message timestamps, and the abuse
//! limits' windows and buckets all ask one [`Clock`]. In production it is
//! the system clock. A test holds a [`ManualClock`] and moves it forward, so
//! it can watch a token expire, a warning go out or a session cap pass
//! without sleeping.
//!
//! Network time stays real: read and write timeouts, the close handshake's
//! grace, Redis reconnects. Those are about what sockets do, and a manual
//! clock cannot make a socket hurry.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The time, as the server sees it. Cheap to clone.
#[derive(Clone, Default)]
pub struct Clock {
    /// `None`: the system clock.
    manual: Option<Arc<Manual>>,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Clock {
        Clock::default()
    }

    /// Unix time in whole seconds (what `iat`, `exp` and `nbf` count).
    pub fn unix_secs(&self) -> u64 {
        self.unix().as_secs()
    }

    /// Unix time in milliseconds (what a message's `ts` counts).
    pub fn unix_millis(&self) -> u64 {
        u64::try_from(self.unix().as_millis()).unwrap_or(u64::MAX)
    }

    /// A monotonic instant, for the limits' windows and buckets.
    pub fn instant(&self) -> Instant {
        match &self.manual {
            None => Instant::now(),
            Some(manual) => manual.start_instant + manual.advanced(),
        }
    }

    fn unix(&self) -> Duration {
        match &self.manual {
            None => unix_now(),
            Some(manual) => manual.start_unix + manual.advanced(),
        }
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.manual {
            None => "Clock::system()",
            Some(_) => "Clock(manual)",
        })
    }
}

/// A clock that stands still until it is moved: for tests. It starts at the
/// time it was made.
#[derive(Clone)]
pub struct ManualClock(Arc<Manual>);

struct Manual {
    start_instant: Instant,
    start_unix: Duration,
    advanced_nanos: AtomicU64,
}

impl Manual {
    fn advanced(&self) -> Duration {
        Duration::from_nanos(self.advanced_nanos.load(Ordering::Acquire))
    }
}

impl ManualClock {
    /// A clock stopped at the current time.
    pub fn new() -> ManualClock {
        ManualClock(Arc::new(Manual {
            start_instant: Instant::now(),
            start_unix: unix_now(),
            advanced_nanos: AtomicU64::new(0),
        }))
    }

    /// Moves the time forward by `by` (never back: `Instant`s must not).
    pub fn advance(&self, by: Duration) {
        let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.0.advanced_nanos.fetch_add(nanos, Ordering::AcqRel);
    }

    /// The [`Clock`] to give the server: it reads this one's time.
    pub fn clock(&self) -> Clock {
        Clock {
            manual: Some(self.0.clone()),
        }
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        ManualClock::new()
    }
}

fn unix_now() -> Duration {
    // A system clock set before 1970 reads as the epoch; nothing here is
    // worth failing for it.
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told() {
        let manual = ManualClock::new();
        let clock = manual.clock();
        let (secs, instant) = (clock.unix_secs(), clock.instant());
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(clock.unix_secs(), secs);
        assert_eq!(clock.instant(), instant);
        manual.advance(Duration::from_secs(90));
        assert_eq!(clock.unix_secs(), secs + 90);
        assert_eq!(clock.instant(), instant + Duration::from_secs(90));
    }

    #[test]
    fn the_system_clock_is_now() {
        let system = Clock::system();
        let now = unix_now().as_secs();
        assert!(system.unix_secs().abs_diff(now) <= 1);
    }
}
