//! Configuration: every knob the server has, its default, the range each
//! number may take, and [`Config::validate`], which [`crate::Server::bind`]
//! calls before anything else, so an embedder's `Config` gets the checks
//! the command line gets.
//!
//! The command line itself (the flags, `--help`, parsing) belongs to the
//! `jwtchat` binary (`src/cli.rs`), which quotes the ranges in [`range`].

use std::fmt;
use std::ops::RangeInclusive;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::clock::Clock;
use crate::log::{Format as LogFormat, Level};
use crate::proxy::Cidr;

/// A secret shorter than this is refused: HS256 keys should be at least as
/// long as the hash output (RFC 7518 §3.2: "a key of the same size as the
/// hash output (for instance, 256 bits for "HS256") or larger MUST be used").
pub const MIN_SECRET_BYTES: usize = 32;

/// A secret with fewer different byte values than this is refused: a
/// repeated character, a word pattern, or the like. Random bytes in base64
/// (`head -c 32 /dev/urandom | base64`: 43 characters from 64) have about 31.
/// Hex has at most 16, so a hex secret passes only if every digit appears.
pub const MIN_SECRET_DISTINCT_BYTES: usize = 16;

/// The secret `deploy/jwtchat.env.example` used to ship with. It is public,
/// so anyone could mint tokens for a server that kept it: refused forever,
/// even though it would pass the other checks.
const PUBLIC_PLACEHOLDER_SECRET: &[u8] = b"change-me-to-at-least-32-random-bytes-please";

/// How the documentation and every refusal tell an operator to make one.
pub const SECRET_RECIPE: &str = "head -c 32 /dev/urandom | base64";

/// Why a secret cannot sign tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeakSecret {
    /// Set but empty, as `JWTCHAT_SECRET=` in an environment file gives.
    Empty,
    /// Shorter than [`MIN_SECRET_BYTES`]; the length.
    TooShort(usize),
    /// Fewer than [`MIN_SECRET_DISTINCT_BYTES`] byte values; the count.
    TooFewDistinct(usize),
    /// The public placeholder from the old example file.
    Placeholder,
}

impl fmt::Display for WeakSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WeakSecret::Empty => write!(f, "is empty; generate one with `{SECRET_RECIPE}`"),
            WeakSecret::TooShort(len) => write!(
                f,
                "is {len} bytes; HS256 needs at least {MIN_SECRET_BYTES} \
                 (generate one with `{SECRET_RECIPE}`)"
            ),
            WeakSecret::TooFewDistinct(n) => write!(
                f,
                "has only {n} distinct byte values; at least {MIN_SECRET_DISTINCT_BYTES} \
                 are required (generate one with `{SECRET_RECIPE}`)"
            ),
            WeakSecret::Placeholder => write!(
                f,
                "is the placeholder from jwtchat.env.example, which is public: anyone \
                 could sign tokens with it; generate one with `{SECRET_RECIPE}`"
            ),
        }
    }
}

/// The one check every secret passes before it signs anything, whether
/// it came from the command line, the environment or an embedder's
/// [`Config`] ([`Config::validate`] calls it).
pub fn check_secret(secret: &[u8]) -> Result<(), WeakSecret> {
    if secret.is_empty() {
        return Err(WeakSecret::Empty);
    }
    if secret.len() < MIN_SECRET_BYTES {
        return Err(WeakSecret::TooShort(secret.len()));
    }
    if secret == PUBLIC_PLACEHOLDER_SECRET {
        return Err(WeakSecret::Placeholder);
    }
    let mut seen = [false; 256];
    for &b in secret {
        seen[usize::from(b)] = true;
    }
    let distinct = seen.iter().filter(|&&s| s).count();
    if distinct < MIN_SECRET_DISTINCT_BYTES {
        return Err(WeakSecret::TooFewDistinct(distinct));
    }
    Ok(())
}

/// The permission bits of a secret file if anyone but its owner may read
/// or write it (what ssh refuses for a private key; here, a warning).
pub(crate) fn loose_permissions(path: &Path) -> Option<u32> {
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then_some(mode)
}

/// Everything a [`crate::Server`] needs to start. `Config::default()` is the
/// demo setup `cargo run` gives; tests start from it and change a field or two.
#[derive(Clone)]
pub struct Config {
    /// Address to listen on; port 0 picks a free one.
    pub bind: String,
    /// JSON users file; `None` runs in demo mode with built-in users.
    pub users_file: Option<PathBuf>,
    /// Serve the front end from this directory instead of the embedded copy.
    pub static_dir: Option<PathBuf>,
    /// Lifetime of an issued token (`exp - iat`), in seconds.
    pub token_ttl_secs: u64,
    /// The `iss` claim written into tokens and required of every token.
    pub issuer: String,
    /// Largest chat message text, in UTF-8 bytes. Also sizes the WebSocket
    /// frame and message limits (see [`Config::frame_limit`]).
    pub max_message_bytes: usize,
    /// HMAC key for HS256; `None` generates a random one at start-up.
    /// Checked by [`check_secret`] (through [`Config::validate`]).
    pub secret: Option<Vec<u8>>,
    /// The file `secret` was read from (`--secret-file`), so start-up can
    /// warn when group or others may read it.
    pub secret_file: Option<PathBuf>,
    /// How many frames may wait in one client's outbound queue before the
    /// client is disconnected as a slow consumer (close code 4008).
    pub client_queue_frames: usize,
    /// How many unsent bytes one client's outbound queue may hold before
    /// the client is disconnected as a slow consumer (close code 4008).
    /// With `max_connections`, this bounds the server's memory.
    pub client_queue_bytes: usize,
    /// How often the expiry sweep runs.
    pub sweep_interval: Duration,
    /// Time a client has to send a request head (and, separately, its
    /// body); also how long an idle keep-alive connection is kept.
    pub request_timeout: Duration,
    /// Test aid for protocol conformance suites: every text and binary
    /// message is sent back, unchanged, to its sender only.
    pub echo: bool,
    /// Chat messages per second one connection may send; 0 turns the
    /// limit off.
    pub message_rate: u32,
    /// How many messages a connection may send at once before the rate
    /// applies.
    pub message_burst: u32,
    /// Messages per second all of one user's connections together may
    /// send, and likewise all connections from one IP address; `None`
    /// means twice `message_rate`, 0 turns the limit off.
    pub user_message_rate: Option<u32>,
    /// The burst for `user_message_rate`; `None` means twice
    /// `message_burst`.
    pub user_message_burst: Option<u32>,
    /// Origins allowed to open a WebSocket; empty means "the server's own
    /// origin" (the request's `Host`).
    pub allowed_origins: Vec<String>,
    /// Open connections (HTTP and WebSocket) at most; more get `503`.
    pub max_connections: usize,
    /// Open connections from one IP address at most; more get `503`.
    pub max_connections_per_ip: usize,
    /// Threads the server may run for its connections at most (a reader
    /// each, and a writer while one is behind); `None` reads the kernel's
    /// limits at start-up. Connections past half of it get `503`, before
    /// the kernel would refuse a thread.
    pub max_threads: Option<usize>,
    /// Failed logins one IP address may make per minute before `429`;
    /// 0 turns the limit off.
    pub max_login_failures: u32,
    /// Logins, successful or not, one IP address may make per minute
    /// before `429`; 0 turns the limit off.
    pub max_logins_per_ip: u32,
    /// Successful logins for one username per minute before `429`; 0 turns
    /// the limit off. (Failures are limited per IP: counting them per
    /// username would let anyone lock a user out.)
    pub max_logins_per_user: u32,
    /// `POST /auth/refresh` calls per token subject per minute before
    /// `429`; 0 turns the limit off.
    pub max_refreshes: u32,
    /// Serve `/metrics` on this separate address.
    pub metrics_bind: Option<String>,
    /// Serve `/metrics` on the main listener too. Off by default: the
    /// counters say why tokens fail (`tokens_rejected_total{reason}`),
    /// which the uniform `401 invalid_token` exists to hide.
    pub metrics_public: bool,
    /// The most verbose log level printed.
    pub log_level: Level,
    /// Text lines, or one JSON object per line (`--log-format json`).
    pub log_format: LogFormat,
    /// Where time comes from: the system clock, or a test's
    /// [`crate::clock::ManualClock`] (token expiry, the sweep, the limits).
    pub clock: Clock,
    /// How long after a password login `/auth/refresh` keeps renewing a
    /// session, in seconds.
    pub max_session_secs: u64,
    /// Chat messages a `welcome` or `subscribed` carries for newcomers (of
    /// those kept, see `history_size`); 0 sends none.
    pub history: usize,
    /// Chat messages each room keeps (`--history-size`): what newcomers'
    /// history and a returning client's recovery are taken from.
    pub history_size: usize,
    /// A kept message older than this is dropped, in seconds.
    pub history_ttl_secs: u64,
    /// A recovery whose missed messages are bigger than this answers
    /// `recovered: false` instead, in bytes.
    pub max_recovery_bytes: usize,
    /// `--data-dir`: keep every room's messages, `seq` and epoch on disk
    /// here, so that a restart keeps them (a build with the `store`
    /// feature, the default).
    pub data_dir: Option<PathBuf>,
    /// `--fsync`: when what is written to `data_dir` is forced to disk.
    pub fsync: Fsync,
    /// Online users a `welcome` lists at most (`online_count` says how
    /// many there are).
    pub presence_list_max: usize,
    /// Print every WebSocket handshake, check by check, to stderr.
    pub trace_handshake: bool,
    /// Reverse proxies whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Vec<Cidr>,
    /// `redis://HOST:PORT/DB`: share every room with every instance using
    /// this Redis (needs a build with `--features redis`).
    pub redis: Option<String>,
    /// Prefix of every Redis key, so several separate chats can share one Redis.
    pub redis_prefix: String,
    /// Rooms every authenticated user may join, beyond `general`
    /// (`--room`, repeatable).
    pub open_rooms: Vec<String>,
    /// Rooms one connection may be in at once, `general` included.
    pub max_rooms_per_connection: usize,
    /// Rooms the server keeps at most: with anyone in them, or with
    /// history; `general` included.
    pub max_rooms: usize,
    /// Rooms (DMs included) one user may have made that still exist.
    pub max_rooms_per_user: usize,
    /// A room nobody has been in for this long is freed with its history,
    /// in seconds.
    pub room_idle_ttl_secs: u64,
}

/// When messages written to `--data-dir` are forced to disk (`fsync`).
/// Every message is in the store before it is fanned out; this is about
/// how much a power cut (or a crash of the host) may take back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    /// Before each message is fanned out: nothing a client saw is lost.
    Always,
    /// At least every 100 ms: at most the last 100 ms of messages are at
    /// risk.
    Batch,
    /// Left to the operating system (and done at a clean shutdown).
    Never,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            bind: "127.0.0.1:3000".to_string(),
            users_file: None,
            static_dir: None,
            token_ttl_secs: 900,
            issuer: "jwtchat".to_string(),
            max_message_bytes: 4096,
            secret: None,
            secret_file: None,
            client_queue_frames: 256,
            client_queue_bytes: 1 << 20,
            sweep_interval: Duration::from_millis(250),
            request_timeout: Duration::from_secs(10),
            echo: false,
            message_rate: 20,
            message_burst: 40,
            user_message_rate: None,
            user_message_burst: None,
            allowed_origins: Vec::new(),
            max_connections: 10_000,
            max_connections_per_ip: 256,
            max_threads: None,
            max_login_failures: 10,
            max_logins_per_ip: 30,
            max_logins_per_user: 6,
            max_refreshes: 6,
            metrics_bind: None,
            metrics_public: false,
            log_level: Level::Info,
            log_format: LogFormat::Text,
            clock: Clock::system(),
            max_session_secs: 12 * 3600,
            history: 100,
            history_size: 1000,
            history_ttl_secs: 86_400,
            max_recovery_bytes: 1 << 20,
            data_dir: None,
            fsync: Fsync::Batch,
            presence_list_max: 1000,
            trace_handshake: false,
            trusted_proxies: Vec::new(),
            redis: None,
            redis_prefix: "jwtchat".to_string(),
            open_rooms: Vec::new(),
            max_rooms_per_connection: 64,
            max_rooms: 10_000,
            max_rooms_per_user: 200,
            room_idle_ttl_secs: 24 * 3600,
        }
    }
}

impl Config {
    /// The largest WebSocket frame (and message) a client may send.
    ///
    /// A chat message arrives as JSON, `{"type":"message","text":"..."}`, and
    /// JSON escaping can double the text (`"` becomes `\"`, a newline `\n`),
    /// so the frame limit is twice the text limit plus room for the envelope.
    /// A frame over this is closed with 1009; a frame under it whose text is
    /// still too long gets a `bad_message` error and stays connected.
    pub fn frame_limit(&self) -> usize {
        self.max_message_bytes
            .saturating_mul(2)
            .saturating_add(1024)
    }

    /// The per-user (and per-IP) message rate in force.
    pub fn user_rate(&self) -> u32 {
        self.user_message_rate
            .unwrap_or(self.message_rate.saturating_mul(2))
    }

    /// The per-user (and per-IP) burst in force.
    pub fn user_burst(&self) -> u32 {
        self.user_message_burst
            .unwrap_or(self.message_burst.saturating_mul(2))
    }
}

/// The range of every number a [`Config`] holds that has one: written only
/// here. [`Config::validate`] enforces them, and the command line quotes
/// them in `--help` and in its errors ("expected 1 to 31536000").
pub mod range {
    use std::ops::RangeInclusive;

    /// `token_ttl_secs` and `max_session_secs`: a second to a year.
    pub const SECONDS: RangeInclusive<u64> = 1..=31_536_000;
    /// `max_message_bytes`: up to 1 GiB (the frame limit is twice that).
    pub const MESSAGE_BYTES: RangeInclusive<u64> = 1..=1 << 30;
    /// `message_rate` and `user_message_rate`; 0 turns the limit off.
    pub const MESSAGE_RATE: RangeInclusive<u64> = 0..=1_000_000;
    /// `message_burst` and `user_message_burst`: a burst of 0 would refuse
    /// every message.
    pub const MESSAGE_BURST: RangeInclusive<u64> = 1..=1_000_000;
    /// `client_queue_bytes`: below 64 KiB a client that keeps up could be
    /// cut off for one large batch.
    pub const CLIENT_QUEUE_BYTES: RangeInclusive<u64> = 64 * 1024..=1 << 30;
    /// `max_connections` and `max_connections_per_ip`.
    pub const CONNECTIONS: RangeInclusive<u64> = 1..=10_000_000;
    /// The per-minute login and refresh limits; 0 turns one off.
    pub const PER_MINUTE: RangeInclusive<u64> = 0..=1_000_000;
    /// `history`: every welcome carries it, so it is kept small.
    pub const HISTORY: RangeInclusive<u64> = 0..=100_000;
    /// `history_size`: per room, times `--max-rooms`.
    pub const HISTORY_SIZE: RangeInclusive<u64> = 0..=1_000_000;
    /// `max_recovery_bytes`: one frame to one client.
    pub const RECOVERY_BYTES: RangeInclusive<u64> = 1024..=1 << 30;
    /// `presence_list_max`: each name costs every welcome its bytes.
    pub const PRESENCE_LIST: RangeInclusive<u64> = 1..=100_000;
    /// `max_rooms_per_connection`: each subscription costs a pool entry.
    pub const ROOMS_PER_CONNECTION: RangeInclusive<u64> = 1..=10_000;
    /// `max_rooms`: `general` is always one.
    pub const ROOMS: RangeInclusive<u64> = 1..=10_000_000;
}

/// Why a [`Config`] cannot start a server. Each `Display` is one line, the
/// same the command line prints for the same mistake; settings that have a
/// flag are named by it (the README's configuration table maps flags to
/// fields), the others by their field name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// A number outside its [`range`].
    OutOfRange {
        /// The flag (or field) it was given for.
        setting: &'static str,
        /// What was given.
        value: u64,
        /// The smallest value allowed.
        min: u64,
        /// The largest value allowed.
        max: u64,
    },
    /// A name or address that is empty or only spaces.
    Blank {
        /// The flag (or field) it was given for.
        setting: &'static str,
        /// What was given.
        value: String,
    },
    /// A duration or count that must be more than zero (zero would make the
    /// expiry sweep a busy loop, say).
    Zero {
        /// The flag (or field) it was given for.
        setting: &'static str,
    },
    /// The secret fails [`check_secret`].
    WeakSecret(WeakSecret),
    /// A `--room` that is not a plain room name (`a-z`, `0-9`, `_`, `-`).
    BadRoom(String),
    /// `--data-dir` and `--redis` together: with Redis, Redis keeps the
    /// history.
    DataDirWithRedis,
    /// `--history` asks greetings to carry more than `--history-size`
    /// keeps.
    HistoryOverSize {
        /// `--history`.
        history: usize,
        /// `--history-size`.
        size: usize,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::OutOfRange {
                setting,
                value,
                min,
                max,
            } => write!(
                f,
                "invalid value \"{value}\" for {setting}: out of range (expected {min} to {max})"
            ),
            ConfigError::Blank { setting, value } => {
                write!(
                    f,
                    "invalid value {value:?} for {setting}: must not be empty"
                )
            }
            ConfigError::Zero { setting } => write!(f, "{setting} must be more than zero"),
            ConfigError::WeakSecret(why) => write!(f, "the secret {why}"),
            ConfigError::DataDirWithRedis => write!(
                f,
                "--data-dir cannot be used with --redis: Redis keeps the history then"
            ),
            ConfigError::HistoryOverSize { history, size } => write!(
                f,
                "--history {history} is more than --history-size {size} keeps: \
                 raise --history-size or lower --history"
            ),
            ConfigError::BadRoom(room) => write!(
                f,
                "invalid value {room:?} for --room: a room name is 1 to 32 characters of \
                 a-z, 0-9, '_' and '-', starting with a letter or digit"
            ),
        }
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Checks every setting that has a rule: numbers within their
    /// [`range`], names and addresses not blank, intervals above zero, the
    /// secret by [`check_secret`]. Returns the first mistake.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn within(
            setting: &'static str,
            value: u64,
            range: RangeInclusive<u64>,
        ) -> Result<(), ConfigError> {
            if range.contains(&value) {
                return Ok(());
            }
            Err(ConfigError::OutOfRange {
                setting,
                value,
                min: *range.start(),
                max: *range.end(),
            })
        }
        fn not_blank(setting: &'static str, value: &str) -> Result<(), ConfigError> {
            if value.trim().is_empty() {
                return Err(ConfigError::Blank {
                    setting,
                    value: value.to_string(),
                });
            }
            Ok(())
        }
        // usize is at most 64 bits on every target Rust supports.
        let wide = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);

        not_blank("--bind", &self.bind)?;
        for origin in &self.allowed_origins {
            not_blank("--allowed-origin", origin)?;
        }
        within("--token-ttl", self.token_ttl_secs, range::SECONDS)?;
        not_blank("--issuer", &self.issuer)?;
        within("--max-session", self.max_session_secs, range::SECONDS)?;
        within(
            "--max-message-bytes",
            wide(self.max_message_bytes),
            range::MESSAGE_BYTES,
        )?;
        within(
            "--message-rate",
            self.message_rate.into(),
            range::MESSAGE_RATE,
        )?;
        within(
            "--message-burst",
            self.message_burst.into(),
            range::MESSAGE_BURST,
        )?;
        if let Some(rate) = self.user_message_rate {
            within("--user-message-rate", rate.into(), range::MESSAGE_RATE)?;
        }
        if let Some(burst) = self.user_message_burst {
            within("--user-message-burst", burst.into(), range::MESSAGE_BURST)?;
        }
        within(
            "--client-queue-bytes",
            wide(self.client_queue_bytes),
            range::CLIENT_QUEUE_BYTES,
        )?;
        within(
            "--max-connections",
            wide(self.max_connections),
            range::CONNECTIONS,
        )?;
        within(
            "--max-connections-per-ip",
            wide(self.max_connections_per_ip),
            range::CONNECTIONS,
        )?;
        within(
            "--max-login-failures",
            self.max_login_failures.into(),
            range::PER_MINUTE,
        )?;
        within(
            "--max-logins-per-ip",
            self.max_logins_per_ip.into(),
            range::PER_MINUTE,
        )?;
        within(
            "--max-logins-per-user",
            self.max_logins_per_user.into(),
            range::PER_MINUTE,
        )?;
        within(
            "--max-refreshes",
            self.max_refreshes.into(),
            range::PER_MINUTE,
        )?;
        within("--history", wide(self.history), range::HISTORY)?;
        within(
            "--history-size",
            wide(self.history_size),
            range::HISTORY_SIZE,
        )?;
        within("--history-ttl", self.history_ttl_secs, range::SECONDS)?;
        within(
            "--max-recovery-bytes",
            wide(self.max_recovery_bytes),
            range::RECOVERY_BYTES,
        )?;
        if self.data_dir.is_some() && self.redis.is_some() {
            return Err(ConfigError::DataDirWithRedis);
        }
        if self.history > self.history_size {
            return Err(ConfigError::HistoryOverSize {
                history: self.history,
                size: self.history_size,
            });
        }
        within(
            "--presence-list-max",
            wide(self.presence_list_max),
            range::PRESENCE_LIST,
        )?;
        if let Some(addr) = &self.metrics_bind {
            not_blank("--metrics-bind", addr)?;
        }
        if let Some(url) = &self.redis {
            not_blank("--redis", url)?;
        }
        not_blank("--redis-prefix", &self.redis_prefix)?;
        within(
            "--max-rooms-per-connection",
            wide(self.max_rooms_per_connection),
            range::ROOMS_PER_CONNECTION,
        )?;
        within("--max-rooms", wide(self.max_rooms), range::ROOMS)?;
        within(
            "--max-rooms-per-user",
            wide(self.max_rooms_per_user),
            range::ROOMS,
        )?;
        within("--room-idle-ttl", self.room_idle_ttl_secs, range::SECONDS)?;
        for room in &self.open_rooms {
            if !crate::access::is_open_room_name(room) {
                return Err(ConfigError::BadRoom(room.clone()));
            }
        }
        // No flags: only an embedder sets these.
        if self.sweep_interval.is_zero() {
            return Err(ConfigError::Zero {
                setting: "sweep_interval",
            });
        }
        if self.request_timeout.is_zero() {
            return Err(ConfigError::Zero {
                setting: "request_timeout",
            });
        }
        if self.client_queue_frames == 0 {
            return Err(ConfigError::Zero {
                setting: "client_queue_frames",
            });
        }
        if let Some(secret) = &self.secret {
            check_secret(secret).map_err(ConfigError::WeakSecret)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_valid() {
        assert_eq!(Config::default().validate(), Ok(()));
    }

    #[test]
    fn each_rule_names_its_setting() {
        let error = |tweak: fn(&mut Config)| {
            let mut config = Config::default();
            tweak(&mut config);
            config.validate().map_err(|e| e.to_string()).err()
        };
        assert_eq!(
            error(|c| c.max_message_bytes = 0).as_deref(),
            Some(
                "invalid value \"0\" for --max-message-bytes: out of range \
                 (expected 1 to 1073741824)"
            )
        );
        assert_eq!(
            error(|c| c.history = 100_001).as_deref(),
            Some("invalid value \"100001\" for --history: out of range (expected 0 to 100000)")
        );
        assert_eq!(
            error(|c| c.client_queue_bytes = 1024).as_deref(),
            Some(
                "invalid value \"1024\" for --client-queue-bytes: out of range \
                 (expected 65536 to 1073741824)"
            )
        );
        assert_eq!(
            error(|c| c.user_message_burst = Some(0)).as_deref(),
            Some(
                "invalid value \"0\" for --user-message-burst: out of range \
                 (expected 1 to 1000000)"
            )
        );
        assert_eq!(
            error(|c| c.issuer = " ".into()).as_deref(),
            Some("invalid value \" \" for --issuer: must not be empty")
        );
        assert_eq!(
            error(|c| c.sweep_interval = Duration::ZERO).as_deref(),
            Some("sweep_interval must be more than zero")
        );
        assert_eq!(
            error(|c| c.request_timeout = Duration::ZERO).as_deref(),
            Some("request_timeout must be more than zero")
        );
        assert_eq!(
            error(|c| c.client_queue_frames = 0).as_deref(),
            Some("client_queue_frames must be more than zero")
        );
        assert_eq!(
            error(|c| c.secret = Some(b"short".to_vec())).as_deref(),
            Some(
                "the secret is 5 bytes; HS256 needs at least 32 \
                 (generate one with `head -c 32 /dev/urandom | base64`)"
            )
        );
    }

    #[test]
    fn weak_secrets_are_named() {
        assert_eq!(check_secret(b""), Err(WeakSecret::Empty));
        assert_eq!(check_secret(b"too short"), Err(WeakSecret::TooShort(9)));
        assert_eq!(
            check_secret("x".repeat(32).as_bytes()),
            Err(WeakSecret::TooFewDistinct(1))
        );
        assert_eq!(
            check_secret(PUBLIC_PLACEHOLDER_SECRET),
            Err(WeakSecret::Placeholder)
        );
        assert_eq!(
            check_secret("0123456789abcdef".repeat(2).as_bytes()),
            Ok(())
        );
        let bytes: Vec<u8> = (0x80..=0xff).collect();
        assert_eq!(check_secret(&bytes), Ok(()));
    }
}
