//! Logging: one line per event on stderr, `2026-11-28T23:59:59.123Z INFO message`.
//!
//! A logging crate would bring more than it gives here: the server logs a
//! handful of events and never secrets (no token or password is passed to
//! these macros; request targets are redacted by [`redact_target`]).

use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Level {
    Error = 1,
    Warn = 2,
    Info = 3,
    Debug = 4,
}

impl Level {
    fn label(self) -> &'static str {
        match self {
            Level::Error => "ERROR",
            Level::Warn => "WARN",
            Level::Info => "INFO",
            Level::Debug => "DEBUG",
        }
    }
}

static MAX_LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);

/// Sets the most verbose level that is printed.
pub fn set_level(level: Level) {
    MAX_LEVEL.store(level as u8, Ordering::Relaxed);
}

pub fn enabled(level: Level) -> bool {
    level as u8 <= MAX_LEVEL.load(Ordering::Relaxed)
}

/// Writes one line. Use the `info!`/`warn!`/... macros instead.
pub fn write(level: Level, args: fmt::Arguments<'_>) {
    if !enabled(level) {
        return;
    }
    let line = format!(
        "{} {:<5} {}\n",
        timestamp(SystemTime::now()),
        level.label(),
        args
    );
    // A closed stderr must not take the server down: ignore the error.
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// Writes a block of text to stderr as it is, in one piece (the
/// `--trace-handshake` transcript).
pub fn raw(text: &str) {
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

/// Says yes at most once a second: for a line a flood could repeat.
pub struct OncePerSecond {
    /// The second (since the epoch) of the last yes; 0 before any.
    last: AtomicU64,
}

impl OncePerSecond {
    pub const fn new() -> OncePerSecond {
        OncePerSecond {
            last: AtomicU64::new(0),
        }
    }

    /// True the first time in each second.
    pub fn first(&self) -> bool {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_secs());
        self.last.swap(now, Ordering::Relaxed) != now
    }
}

impl Default for OncePerSecond {
    fn default() -> Self {
        OncePerSecond::new()
    }
}

#[macro_export]
macro_rules! error { ($($t:tt)*) => { $crate::log::write($crate::log::Level::Error, format_args!($($t)*)) } }
#[macro_export]
macro_rules! warn { ($($t:tt)*) => { $crate::log::write($crate::log::Level::Warn, format_args!($($t)*)) } }
#[macro_export]
macro_rules! info { ($($t:tt)*) => { $crate::log::write($crate::log::Level::Info, format_args!($($t)*)) } }
#[macro_export]
macro_rules! debug { ($($t:tt)*) => { $crate::log::write($crate::log::Level::Debug, format_args!($($t)*)) } }

/// RFC 3339 UTC timestamp with milliseconds.
fn timestamp(now: SystemTime) -> String {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day), after Howard Hinnant's
/// `civil_from_days` (proleptic Gregorian calendar).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A request target safe to log: the path and the name of every query
/// parameter, with every value replaced by `[redacted]`.
///
/// Every value, not only `token`'s: a client may put a credential under any
/// name (`access_token`, RFC 6750 §2.3; `jwt`; `Token`; a `%74oken` spelling),
/// and a token in a log is a credential in a log. Pairs are split on `;` as
/// well as `&`, the separator older form encoders and some proxies use. A
/// parameter without `=` has no value and is kept.
pub fn redact_target(target: &str) -> String {
    let Some((path, query)) = target.split_once('?') else {
        return target.to_string();
    };
    let mut out = format!("{path}?");
    // Each piece keeps its separator, so the line shows the request's shape.
    for piece in query.split_inclusive(['&', ';']) {
        let (pair, separator) = match piece.strip_suffix(['&', ';']) {
            Some(pair) => (pair, &piece[pair.len()..]),
            None => (piece, ""),
        };
        match pair.split_once('=') {
            Some((name, _)) => {
                out.push_str(name);
                out.push_str("=[redacted]");
            }
            None => out.push_str(pair),
        }
        out.push_str(separator);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_824_000_123);
        assert_eq!(timestamp(t), "2026-11-28T00:00:00.123Z");
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(&timestamp(leap)[..10], "2000-02-29");
    }

    #[test]
    fn every_query_value_is_redacted_from_targets() {
        assert_eq!(
            redact_target("/ws?token=abc.def.ghi"),
            "/ws?token=[redacted]"
        );
        assert_eq!(
            redact_target("/ws?a=1&token=x&b=2"),
            "/ws?a=[redacted]&token=[redacted]&b=[redacted]"
        );
        assert_eq!(redact_target("/healthz"), "/healthz");
        assert_eq!(redact_target("/ws?%74oken=abc"), "/ws?%74oken=[redacted]");
        assert_eq!(
            redact_target("/ws?access_token=s&jwt=s&Token=s"),
            "/ws?access_token=[redacted]&jwt=[redacted]&Token=[redacted]"
        );
        assert_eq!(
            redact_target("/auth/refresh?a=1;token=s&x"),
            "/auth/refresh?a=[redacted];token=[redacted]&x"
        );
        assert_eq!(redact_target("/ws?t=a=b&"), "/ws?t=[redacted]&");
        assert_eq!(redact_target("/ws?"), "/ws?");
    }
}
