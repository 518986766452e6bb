//! Logging: one line per event on stderr, `2026-11-28T23:59:59.123Z INFO message`,
//! or with `--log-format json` one JSON object per line for a log shipper,
//! `{"ts":"2026-11-28T23:59:59.123Z","level":"info","msg":"message"}`.
//!
//! Names that come from outside or from the configuration (usernames,
//! request targets, file paths) are written with `{:?}`: quoted, with any
//! quote, backslash or control character escaped, so no name can end a
//! line or pass for another field. Addresses and numbers are written bare.
//!
//! A logging crate would bring more than it gives here: the server logs a
//! handful of events and never secrets (no token or password is passed to
//! these macros; request targets are logged with every query value
//! redacted).

use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// How much is logged: each level includes the ones above it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Level {
    /// The server cannot do something it should (a thread would not start).
    Error = 1,
    /// Something an operator should look at: a refused connection, a failed
    /// login, demo mode.
    Warn = 2,
    /// Each login, connection and disconnection.
    Info = 3,
    /// Each request and each connection's life.
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

impl Level {
    fn json_name(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
        }
    }
}

/// How lines are written (`--log-format`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Format {
    /// `2026-11-28T23:59:59.123Z INFO  message`, for people.
    Text = 0,
    /// One JSON object per line, for log shippers.
    Json = 1,
}

// Unit tests print only warnings and errors: their INFO lines (evictions,
// say) would only bury cargo's own output.
static MAX_LEVEL: AtomicU8 = AtomicU8::new(if cfg!(test) {
    Level::Warn as u8
} else {
    Level::Info as u8
});
static FORMAT: AtomicU8 = AtomicU8::new(Format::Text as u8);

/// Sets the most verbose level that is printed.
pub fn set_level(level: Level) {
    MAX_LEVEL.store(level as u8, Ordering::Relaxed);
}

/// Sets how lines are written.
pub fn set_format(format: Format) {
    FORMAT.store(format as u8, Ordering::Relaxed);
}

fn json() -> bool {
    FORMAT.load(Ordering::Relaxed) == Format::Json as u8
}

/// Whether lines of `level` are printed now.
pub fn enabled(level: Level) -> bool {
    level as u8 <= MAX_LEVEL.load(Ordering::Relaxed)
}

/// Writes one line. Use the `info!`/`warn!`/... macros instead.
#[doc(hidden)]
pub fn write(level: Level, args: fmt::Arguments<'_>) {
    if !enabled(level) {
        return;
    }
    let now = timestamp(SystemTime::now());
    let line = if json() {
        json_line(&now, level.json_name(), &args.to_string())
    } else {
        format!("{now} {:<5} {args}\n", level.label())
    };
    // A closed stderr must not take the server down: ignore the error.
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// `{"ts":..,"level":..,"msg":..}` and a newline; serde_json escapes the
/// message, so a newline in it cannot start another line.
fn json_line(ts: &str, level: &str, msg: &str) -> String {
    let mut line = serde_json::json!({ "ts": ts, "level": level, "msg": msg }).to_string();
    line.push('\n');
    line
}

/// Writes a block of text to stderr in one piece (the `--trace-handshake`
/// transcript): as it is, or with `--log-format json` as one object whose
/// level is `trace` and whose `msg` is the whole block.
pub(crate) fn raw(text: &str) {
    let block = if json() {
        json_line(&timestamp(SystemTime::now()), "trace", text.trim_end())
    } else {
        text.to_string()
    };
    let _ = std::io::stderr().lock().write_all(block.as_bytes());
}

/// Says yes at most once a second: for a line a flood could repeat.
pub(crate) struct OncePerSecond {
    /// The second (since the epoch) of the last yes; 0 before any.
    last: AtomicU64,
}

impl OncePerSecond {
    /// One that has not said yes yet.
    pub(crate) const fn new() -> OncePerSecond {
        OncePerSecond {
            last: AtomicU64::new(0),
        }
    }

    /// True the first time in each second.
    pub(crate) fn first(&self) -> bool {
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

/// Logs an ERROR line: `error!("format", args)`, like `format!`.
#[macro_export]
macro_rules! error { ($($t:tt)*) => { $crate::log::write($crate::log::Level::Error, format_args!($($t)*)) } }
/// Logs a WARN line: `warn!("format", args)`, like `format!`.
#[macro_export]
macro_rules! warn { ($($t:tt)*) => { $crate::log::write($crate::log::Level::Warn, format_args!($($t)*)) } }
/// Logs an INFO line: `info!("format", args)`, like `format!`.
#[macro_export]
macro_rules! info { ($($t:tt)*) => { $crate::log::write($crate::log::Level::Info, format_args!($($t)*)) } }
/// Logs a DEBUG line: `debug!("format", args)`, like `format!`.
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
pub(crate) fn redact_target(target: &str) -> String {
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
    fn json_lines_are_one_escaped_object() {
        let line = json_line("2026-11-28T00:00:00.123Z", "warn", "a \"b\"\nc");
        assert_eq!(
            line,
            "{\"level\":\"warn\",\"msg\":\"a \\\"b\\\"\\nc\",\"ts\":\"2026-11-28T00:00:00.123Z\"}\n"
        );
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
