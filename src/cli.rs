//! The `jwtchat` command line: one table of flags ([`FLAGS`]: name, value,
//! group, how the default is shown, range, help) from which the parser,
//! `--help` and the README's configuration table are all made.
//!
//! Defaults are not written here: `--help` and the README render them
//! from `Config::default()`, and ranges come from `jwtchat::config::range`,
//! which `Config::validate` enforces for embedders too.
//!
//! The parser is hand-written (no `clap`, no `lexopt`): the flag set is
//! small, and it keeps arguments as `OsString` so a path that is not UTF-8
//! reaches the file system unchanged. Every mistake becomes a [`CliError`]
//! whose `Display` is one line, which `main` prints before exiting with
//! status 2.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::ops::RangeInclusive;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use jwtchat::Config;
use jwtchat::config::{ConfigError, Fsync, WeakSecret, range};
use jwtchat::log::{Format as LogFormat, Level};

/// What the command line asked for.
pub enum Command {
    /// Start the server (`jwtchat` or `jwtchat serve`).
    Serve(Box<Config>),
    /// Read a password from stdin, print its argon2id PHC string.
    HashPassword,
    /// `--help`, `-h` or `help`: print [`usage`].
    Help,
    /// `hash-password --help` (or `help hash-password`): print
    /// [`HASH_PASSWORD_USAGE`].
    HashPasswordHelp,
    Version,
}

/// A command-line mistake, printed as one line.
#[derive(Debug, PartialEq, Eq)]
pub enum CliError {
    UnknownFlag(String),
    UnknownCommand(String),
    MissingValue(&'static str),
    BadValue {
        flag: &'static str,
        value: String,
        why: &'static str,
    },
    /// A number outside what the flag accepts, or not a whole number.
    OutOfRange {
        flag: &'static str,
        value: String,
        min: u64,
        max: u64,
    },
    WeakSecret {
        source: &'static str,
        why: WeakSecret,
    },
    SecretFile {
        path: PathBuf,
        error: String,
    },
    /// What `Config::validate` found that the flags themselves did not
    /// (a blank name, say).
    Config(ConfigError),
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::UnknownFlag(flag) => write!(f, "unknown flag {flag} (see --help)"),
            CliError::UnknownCommand(cmd) => write!(
                f,
                "unknown command {cmd:?}: expected serve, hash-password or help (see --help)"
            ),
            CliError::MissingValue(flag) => write!(f, "{flag} needs a value (see --help)"),
            CliError::BadValue { flag, value, why } => {
                write!(f, "invalid value {value:?} for {flag}: {why}")
            }
            CliError::OutOfRange {
                flag,
                value,
                min,
                max,
            } => {
                let why = if value.parse::<i128>().is_ok() {
                    "out of range"
                } else {
                    "not a whole number"
                };
                write!(
                    f,
                    "invalid value {value:?} for {flag}: {why} (expected {min} to {max})"
                )
            }
            CliError::WeakSecret { source, why } => write!(f, "the secret from {source} {why}"),
            CliError::SecretFile { path, error } => {
                write!(f, "cannot read --secret-file {}: {error}", path.display())
            }
            CliError::Config(error) => write!(f, "{error}"),
        }
    }
}

impl std::error::Error for CliError {}

/// The headings of `--help` and of the README's table, in their order.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Group {
    Network,
    Accounts,
    Limits,
    History,
    Rooms,
    Logging,
    Cluster,
    Other,
}

const GROUPS: [(Group, &str, &str); 8] = [
    (Group::Network, "NETWORK", "network"),
    (
        Group::Accounts,
        "ACCOUNTS AND TOKENS",
        "accounts and tokens",
    ),
    (Group::Limits, "LIMITS", "limits"),
    (Group::History, "HISTORY", "history"),
    (Group::Rooms, "ROOMS", "rooms"),
    (Group::Logging, "LOGGING AND METRICS", "logging and metrics"),
    (Group::Cluster, "CLUSTER", "cluster"),
    (Group::Other, "OTHER", "other"),
];

/// What a flag does with its value.
enum Kind {
    /// A whole number in the range; the setter may narrow it, the range
    /// guarantees it fits.
    Number(RangeInclusive<u64>, fn(&mut Config, u64)),
    /// Text, which must be UTF-8 (blank is refused by `Config::validate`).
    Text(fn(&mut Config, String)),
    /// A path, kept as the bytes given.
    Path(fn(&mut Config, PathBuf)),
    /// Text the setter interprets; the `&str` says what it expects.
    Parsed(fn(&mut Config, &str) -> Result<(), ()>, &'static str),
    /// No value.
    Switch(fn(&mut Config)),
    Help,
    Version,
    /// An environment variable, listed with the flags but read by `main`.
    Env,
}

/// One row of `--help` and of the README's configuration table.
struct Flag {
    /// `--bind`, or the variable's name for [`Kind::Env`].
    name: &'static str,
    /// `-h` for `--help`.
    short: Option<&'static str>,
    /// What the value is called in the help (`ADDR`); `""` for none.
    value: &'static str,
    group: Group,
    kind: Kind,
    /// The setting's value in `config` as this flag would take it; `None`
    /// when unset or off. `--help` and the README show it for
    /// `Config::default()`.
    show: fn(&Config) -> Option<String>,
    /// How `--help` and the README state a default `show` gives no value
    /// for ("2 x --message-rate"); `None` and `""` say nothing.
    unset: (Option<&'static str>, &'static str),
    /// The `--help` text, one line however long: it is wrapped.
    help: &'static str,
    /// The README's "meaning" column (Markdown), where `{range}` stands
    /// for a number's range; only the test that keeps the README equal to
    /// this table reads it, so the binary does not carry it.
    #[cfg(test)]
    doc: &'static str,
}

const NOTHING: fn(&Config) -> Option<String> = |_| None;

/// The words `--log-level` takes.
const LEVELS: [(&str, Level); 4] = [
    ("error", Level::Error),
    ("warn", Level::Warn),
    ("info", Level::Info),
    ("debug", Level::Debug),
];

/// The words `--fsync` takes.
const FSYNCS: [(&str, Fsync); 3] = [
    ("always", Fsync::Always),
    ("batch", Fsync::Batch),
    ("never", Fsync::Never),
];

/// The words `--log-format` takes.
const FORMATS: [(&str, LogFormat); 2] = [("text", LogFormat::Text), ("json", LogFormat::Json)];

/// A number for [`Flag::show`].
fn some(n: impl ToString) -> Option<String> {
    Some(n.to_string())
}

/// Every flag, grouped like `--help`; within a group, the one people reach
/// for first comes first.
const FLAGS: &[Flag] = &[
    // NETWORK
    Flag {
        name: "--bind",
        short: None,
        value: "ADDR",
        group: Group::Network,
        kind: Kind::Text(|c, v| c.bind = v),
        show: |c| some(&c.bind),
        unset: (None, ""),
        help: "address to listen on (port 0 picks a free port)",
        #[cfg(test)]
        doc: "listen address; port `0` picks a free port",
    },
    Flag {
        name: "--static",
        short: None,
        value: "DIR",
        group: Group::Network,
        kind: Kind::Path(|c, v| c.static_dir = Some(v)),
        show: |c| c.static_dir.as_ref().map(|p| p.display().to_string()),
        unset: (None, "embedded"),
        help: "serve the front end from DIR instead of the copy embedded in the binary",
        #[cfg(test)]
        doc: "serve the front end from `DIR` instead of the copy built into the binary",
    },
    Flag {
        name: "--allowed-origin",
        short: None,
        value: "ORIGIN",
        group: Group::Network,
        kind: Kind::Text(|c, v| c.allowed_origins.push(v)),
        show: |c| (!c.allowed_origins.is_empty()).then(|| c.allowed_origins.join(" ")),
        unset: (Some("the server's own origin, from the Host header"), ""),
        help: "an origin (e.g. https://chat.example) allowed to open a WebSocket; repeatable",
        #[cfg(test)]
        doc: "a browser origin (e.g. `https://chat.example`) allowed to open a WebSocket \
              besides the server's own; repeatable",
    },
    Flag {
        name: "--trust-proxy",
        short: None,
        value: "CIDR",
        group: Group::Network,
        kind: Kind::Parsed(
            |c, v| {
                c.trusted_proxies.push(v.parse().map_err(|_| ())?);
                Ok(())
            },
            "expected an IP address or network, e.g. 10.0.0.0/8",
        ),
        show: |c| {
            let cidrs: Vec<String> = c.trusted_proxies.iter().map(|p| p.to_string()).collect();
            (!cidrs.is_empty()).then(|| cidrs.join(" "))
        },
        unset: (None, "none"),
        help: "a reverse proxy network (e.g. 127.0.0.1/32) whose X-Forwarded-For names the \
               client; repeatable",
        #[cfg(test)]
        doc: "a reverse proxy network (e.g. `127.0.0.1/32`) whose `X-Forwarded-For` names the \
              client; repeatable",
    },
    // ACCOUNTS AND TOKENS
    Flag {
        name: "--users",
        short: None,
        value: "FILE",
        group: Group::Accounts,
        kind: Kind::Path(|c, v| c.users_file = Some(v)),
        show: |c| c.users_file.as_ref().map(|p| p.display().to_string()),
        unset: (None, "demo users"),
        help: "JSON users file; without it, demo users userA/passwordA, userB/passwordB, \
               userC/passwordC",
        #[cfg(test)]
        doc: "JSON users file (below)",
    },
    Flag {
        name: "--secret-file",
        short: None,
        value: "FILE",
        group: Group::Accounts,
        kind: Kind::Path(|c, v| c.secret_file = Some(v)),
        show: |c| c.secret_file.as_ref().map(|p| p.display().to_string()),
        unset: (None, ""),
        help: "HS256 secret: at least 32 bytes with at least 16 distinct byte values, not the \
               old example's placeholder; a trailing newline is dropped (make one with: head -c \
               32 /dev/urandom | base64)",
        #[cfg(test)]
        doc: "the HS256 secret, at least 32 bytes with at least 16 distinct byte values (a \
              trailing newline is ignored); a warning if group or others may read or write the \
              file",
    },
    Flag {
        name: "JWTCHAT_SECRET",
        short: None,
        value: "",
        group: Group::Accounts,
        kind: Kind::Env,
        show: NOTHING,
        unset: (None, ""),
        help: "HS256 secret, used when --secret-file is not given, with the same rules (taken \
               as raw bytes); set but empty is an error. With neither, a random secret is \
               generated at start-up and tokens do not survive a restart.",
        #[cfg(test)]
        doc: "the secret, when `--secret-file` is not given; the same rules, taken as raw \
              bytes; set but empty is an error",
    },
    Flag {
        name: "--token-ttl",
        short: None,
        value: "SECS",
        group: Group::Accounts,
        kind: Kind::Number(range::SECONDS, |c, n| c.token_ttl_secs = n),
        show: |c| some(c.token_ttl_secs),
        unset: (None, ""),
        help: "token lifetime in seconds",
        #[cfg(test)]
        doc: "token lifetime",
    },
    Flag {
        name: "--issuer",
        short: None,
        value: "NAME",
        group: Group::Accounts,
        kind: Kind::Text(|c, v| c.issuer = v),
        show: |c| some(&c.issuer),
        unset: (None, ""),
        help: "the token issuer (iss claim)",
        #[cfg(test)]
        doc: "the `iss` claim issued and required",
    },
    Flag {
        name: "--max-session",
        short: None,
        value: "SECS",
        group: Group::Accounts,
        kind: Kind::Number(range::SECONDS, |c, n| c.max_session_secs = n),
        show: |c| some(c.max_session_secs),
        unset: (None, ""),
        help: "how long after a login tokens can be refreshed",
        #[cfg(test)]
        doc: "how long after a password login `/auth/refresh` keeps renewing",
    },
    // LIMITS
    Flag {
        name: "--max-message-bytes",
        short: None,
        value: "N",
        group: Group::Limits,
        kind: Kind::Number(range::MESSAGE_BYTES, |c, n| {
            c.max_message_bytes = n as usize
        }),
        show: |c| some(c.max_message_bytes),
        unset: (None, ""),
        help: "largest chat message text in bytes",
        #[cfg(test)]
        doc: "largest chat text in UTF-8 bytes; the WebSocket frame limit is `2N + 1024`",
    },
    Flag {
        name: "--message-rate",
        short: None,
        value: "PER_SEC",
        group: Group::Limits,
        kind: Kind::Number(range::MESSAGE_RATE, |c, n| c.message_rate = n as u32),
        show: |c| some(c.message_rate),
        unset: (None, ""),
        help: "chat messages per second per connection, 0 = no limit",
        #[cfg(test)]
        doc: "chat messages per second per connection; `0` = no limit",
    },
    Flag {
        name: "--message-burst",
        short: None,
        value: "N",
        group: Group::Limits,
        kind: Kind::Number(range::MESSAGE_BURST, |c, n| c.message_burst = n as u32),
        show: |c| some(c.message_burst),
        unset: (None, ""),
        help: "messages allowed at once before the rate applies",
        #[cfg(test)]
        doc: "messages a connection may send at once before the rate applies; also how many \
              refusals it gets (one more each second) before `1008`",
    },
    Flag {
        name: "--user-message-rate",
        short: None,
        value: "PER_SEC",
        group: Group::Limits,
        kind: Kind::Number(range::MESSAGE_RATE, |c, n| {
            c.user_message_rate = Some(n as u32)
        }),
        show: |c| c.user_message_rate.map(|n| n.to_string()),
        unset: (Some("2 x --message-rate"), "2 × `--message-rate`"),
        help: "chat messages per second all of one user's connections may send together, and \
               likewise all connections from one IP address, 0 = no limit",
        #[cfg(test)]
        doc: "chat messages per second all of one user's connections may send together, and \
              likewise all connections from one IP address; `0` = no limit",
    },
    Flag {
        name: "--user-message-burst",
        short: None,
        value: "N",
        group: Group::Limits,
        kind: Kind::Number(range::MESSAGE_BURST, |c, n| {
            c.user_message_burst = Some(n as u32)
        }),
        show: |c| c.user_message_burst.map(|n| n.to_string()),
        unset: (Some("2 x --message-burst"), "2 × `--message-burst`"),
        help: "burst for --user-message-rate",
        #[cfg(test)]
        doc: "the burst for `--user-message-rate`",
    },
    Flag {
        name: "--client-queue-bytes",
        short: None,
        value: "N",
        group: Group::Limits,
        kind: Kind::Number(range::CLIENT_QUEUE_BYTES, |c, n| {
            c.client_queue_bytes = n as usize
        }),
        show: |c| some(c.client_queue_bytes),
        unset: (None, ""),
        help: "unsent bytes one client may fall behind before it is disconnected (4008)",
        #[cfg(test)]
        doc: "unsent bytes one client may fall behind before it is closed with `4008` \
              ({range}); with `--max-connections`, this bounds memory (see [Memory](#memory))",
    },
    Flag {
        name: "--max-connections",
        short: None,
        value: "N",
        group: Group::Limits,
        kind: Kind::Number(range::CONNECTIONS, |c, n| c.max_connections = n as usize),
        show: |c| some(c.max_connections),
        unset: (None, ""),
        help: "open connections at most",
        #[cfg(test)]
        doc: "open connections (HTTP and WebSocket) at most",
    },
    Flag {
        name: "--max-connections-per-ip",
        short: None,
        value: "N",
        group: Group::Limits,
        kind: Kind::Number(range::CONNECTIONS, |c, n| {
            c.max_connections_per_ip = n as usize
        }),
        show: |c| some(c.max_connections_per_ip),
        unset: (None, ""),
        help: "open connections per client IP",
        #[cfg(test)]
        doc: "open connections from one IP address at most",
    },
    Flag {
        name: "--max-login-failures",
        short: None,
        value: "N",
        group: Group::Limits,
        kind: Kind::Number(range::PER_MINUTE, |c, n| c.max_login_failures = n as u32),
        show: |c| some(c.max_login_failures),
        unset: (None, ""),
        help: "failed logins per IP per minute before 429, 0 = no limit",
        #[cfg(test)]
        doc: "failed logins per IP per minute before `429`; `0` = no limit",
    },
    Flag {
        name: "--max-logins-per-ip",
        short: None,
        value: "N",
        group: Group::Limits,
        kind: Kind::Number(range::PER_MINUTE, |c, n| c.max_logins_per_ip = n as u32),
        show: |c| some(c.max_logins_per_ip),
        unset: (None, ""),
        help: "logins (successful ones too) per IP per minute before 429, 0 = no limit",
        #[cfg(test)]
        doc: "logins of any outcome per IP per minute before `429`; `0` = no limit",
    },
    Flag {
        name: "--max-logins-per-user",
        short: None,
        value: "N",
        group: Group::Limits,
        kind: Kind::Number(range::PER_MINUTE, |c, n| c.max_logins_per_user = n as u32),
        show: |c| some(c.max_logins_per_user),
        unset: (None, ""),
        help: "successful logins per username per minute before 429, 0 = no limit",
        #[cfg(test)]
        doc: "successful logins per username per minute before `429`; `0` = no limit",
    },
    Flag {
        name: "--max-refreshes",
        short: None,
        value: "N",
        group: Group::Limits,
        kind: Kind::Number(range::PER_MINUTE, |c, n| c.max_refreshes = n as u32),
        show: |c| some(c.max_refreshes),
        unset: (None, ""),
        help: "token refreshes per user per minute before 429, 0 = no limit",
        #[cfg(test)]
        doc: "`POST /auth/refresh` per user (token `sub`) per minute before `429`; `0` = no \
              limit",
    },
    // HISTORY
    Flag {
        name: "--history",
        short: None,
        value: "N",
        group: Group::History,
        kind: Kind::Number(range::HISTORY, |c, n| c.history = n as usize),
        show: |c| some(c.history),
        unset: (None, ""),
        help: "messages a newcomer's welcome carries, 0 = none",
        #[cfg(test)]
        doc: "messages a newcomer's `welcome` carries; `0` = none",
    },
    Flag {
        name: "--history-size",
        short: None,
        value: "N",
        group: Group::History,
        kind: Kind::Number(range::HISTORY_SIZE, |c, n| c.history_size = n as usize),
        show: |c| some(c.history_size),
        unset: (None, ""),
        help: "messages each room keeps, for newcomers and for clients that resume",
        #[cfg(test)]
        doc: "messages each room keeps: what `history` is taken from and what a client \
              resuming with `since` can recover (see [Resuming](#resuming-after-a-reconnect))",
    },
    Flag {
        name: "--history-ttl",
        short: None,
        value: "SECS",
        group: Group::History,
        kind: Kind::Number(range::SECONDS, |c, n| c.history_ttl_secs = n),
        show: |c| some(c.history_ttl_secs),
        unset: (None, ""),
        help: "a kept message older than this is dropped",
        #[cfg(test)]
        doc: "a kept message older than this is dropped",
    },
    Flag {
        name: "--max-recovery-bytes",
        short: None,
        value: "BYTES",
        group: Group::History,
        kind: Kind::Number(range::RECOVERY_BYTES, |c, n| {
            c.max_recovery_bytes = n as usize
        }),
        show: |c| some(c.max_recovery_bytes),
        unset: (None, ""),
        help: "a resume that would send more than this answers recovered:false",
        #[cfg(test)]
        doc: "a resume whose missed messages come to more than this answers \
              `recovered:false` (with the usual `history`)",
    },
    Flag {
        name: "--data-dir",
        short: None,
        value: "DIR",
        group: Group::History,
        kind: Kind::Path(|c, v| c.data_dir = Some(v)),
        show: |c| c.data_dir.as_ref().map(|d| d.display().to_string()),
        unset: (Some("history in memory only"), ""),
        help: "keep every room's messages, seq and epoch on disk here, so a restart keeps them \
               (not with --redis)",
        #[cfg(test)]
        doc: "keep every room's messages, `seq` and epoch on disk here, so that a restart \
              keeps them and clients resume across it (not with `--redis`; see \
              [Persistence](#persistence))",
    },
    Flag {
        name: "--fsync",
        short: None,
        value: "WHEN",
        group: Group::History,
        kind: Kind::Parsed(
            |c, v| {
                c.fsync = choose(&FSYNCS, v)?;
                Ok(())
            },
            "expected always, batch or never",
        ),
        show: |c| name_of(&FSYNCS, c.fsync),
        unset: (None, ""),
        help: "with --data-dir: always (before each fan-out), batch (every 100 ms) or never",
        #[cfg(test)]
        doc: "with `--data-dir`: `always` (before each message is fanned out), `batch` (at \
              least every 100 ms: at most that much is at risk) or `never` (left to the OS)",
    },
    Flag {
        name: "--presence-list-max",
        short: None,
        value: "N",
        group: Group::History,
        kind: Kind::Number(range::PRESENCE_LIST, |c, n| {
            c.presence_list_max = n as usize
        }),
        show: |c| some(c.presence_list_max),
        unset: (None, ""),
        help: "online users a newcomer's welcome lists at most (online_count says how many there are)",
        #[cfg(test)]
        doc: "online users a newcomer's `welcome` lists at most; `online_count` always says how many there are, and `online_truncated` that the list was cut",
    },
    // ROOMS
    Flag {
        name: "--room",
        short: None,
        value: "NAME",
        group: Group::Rooms,
        kind: Kind::Text(|c, v| c.open_rooms.push(v)),
        show: |c| (!c.open_rooms.is_empty()).then(|| c.open_rooms.join(" ")),
        unset: (Some("only general"), ""),
        help: "a room every logged-in user may join, besides general; repeatable",
        #[cfg(test)]
        doc: "a room every logged-in user may join, besides `general`; repeatable (see \
              [Rooms](#rooms))",
    },
    Flag {
        name: "--max-rooms-per-connection",
        short: None,
        value: "N",
        group: Group::Rooms,
        kind: Kind::Number(range::ROOMS_PER_CONNECTION, |c, n| {
            c.max_rooms_per_connection = n as usize
        }),
        show: |c| some(c.max_rooms_per_connection),
        unset: (None, ""),
        help: "rooms one connection may be in at once, general included",
        #[cfg(test)]
        doc: "rooms one connection may be in at once, `general` included; past it, \
              `too_many_rooms`",
    },
    Flag {
        name: "--max-rooms",
        short: None,
        value: "N",
        group: Group::Rooms,
        kind: Kind::Number(range::ROOMS, |c, n| c.max_rooms = n as usize),
        show: |c| some(c.max_rooms),
        unset: (None, ""),
        help: "rooms the server keeps (with anyone in them, or with history), general included",
        #[cfg(test)]
        doc: "rooms the server keeps (with anyone in them, or with history), `general` \
              included; a subscribe that would make one more gets `too_many_rooms`",
    },
    Flag {
        name: "--max-rooms-per-user",
        short: None,
        value: "N",
        group: Group::Rooms,
        kind: Kind::Number(range::ROOMS, |c, n| c.max_rooms_per_user = n as usize),
        show: |c| some(c.max_rooms_per_user),
        unset: (None, ""),
        help: "rooms (DMs included) one user may have made that still exist",
        #[cfg(test)]
        doc: "rooms (DMs included) one user may have made that still exist, so that one \
              account cannot take all `--max-rooms`; past it, `too_many_rooms`",
    },
    Flag {
        name: "--room-idle-ttl",
        short: None,
        value: "SECS",
        group: Group::Rooms,
        kind: Kind::Number(range::SECONDS, |c, n| c.room_idle_ttl_secs = n),
        show: |c| some(c.room_idle_ttl_secs),
        unset: (None, ""),
        help: "a room nobody has been in for this long is freed with its history",
        #[cfg(test)]
        doc: "a room nobody has been in for this long is freed with its history \
              (`general` never is)",
    },
    // LOGGING AND METRICS
    Flag {
        name: "--log-level",
        short: None,
        value: "LEVEL",
        group: Group::Logging,
        kind: Kind::Parsed(
            |c, v| {
                c.log_level = choose(&LEVELS, v)?;
                Ok(())
            },
            "expected error, warn, info or debug",
        ),
        show: |c| name_of(&LEVELS, c.log_level),
        unset: (None, ""),
        help: "error, warn, info or debug",
        #[cfg(test)]
        doc: "`error`, `warn`, `info` or `debug` (see [Logs](#sessions-history-and-operations))",
    },
    Flag {
        name: "--log-format",
        short: None,
        value: "FORMAT",
        group: Group::Logging,
        kind: Kind::Parsed(
            |c, v| {
                c.log_format = choose(&FORMATS, v)?;
                Ok(())
            },
            "expected text or json",
        ),
        show: |c| name_of(&FORMATS, c.log_format),
        unset: (None, ""),
        help: "text, or json for one JSON object per line",
        #[cfg(test)]
        doc: "`text`, or `json`: one `{\"ts\",\"level\",\"msg\"}` object per line for a log \
              shipper",
    },
    Flag {
        name: "--trace-handshake",
        short: None,
        value: "",
        group: Group::Logging,
        kind: Kind::Switch(|c| c.trace_handshake = true),
        show: |c| c.trace_handshake.then(|| "on".into()),
        unset: (None, "off"),
        help: "print every WebSocket handshake step by step",
        #[cfg(test)]
        doc: "print every WebSocket handshake to stderr: the request (token redacted), each \
              check with its RFC section, the `Sec-WebSocket-Accept` computation, the response",
    },
    Flag {
        name: "--metrics-bind",
        short: None,
        value: "ADDR",
        group: Group::Logging,
        kind: Kind::Text(|c, v| c.metrics_bind = Some(v)),
        show: |c| c.metrics_bind.clone(),
        unset: (None, ""),
        help: "serve /metrics on ADDR (e.g. 127.0.0.1:9100); without it or --metrics-public, \
               /metrics is not served at all",
        #[cfg(test)]
        doc: "serve `/metrics` on this address (e.g. `127.0.0.1:9100`); with neither this nor \
              `--metrics-public`, `/metrics` is not served",
    },
    Flag {
        name: "--metrics-public",
        short: None,
        value: "",
        group: Group::Logging,
        kind: Kind::Switch(|c| c.metrics_public = true),
        show: |c| c.metrics_public.then(|| "on".into()),
        unset: (None, "off"),
        help: "also serve /metrics on the main listener (it tells why tokens were rejected: \
               keep private)",
        #[cfg(test)]
        doc: "also serve `/metrics` on the main listener; its counters say why tokens were \
              rejected, so keep that listener private",
    },
    // CLUSTER
    Flag {
        name: "--redis",
        short: None,
        value: "URL",
        group: Group::Cluster,
        kind: Kind::Text(|c, v| c.redis = Some(v)),
        show: |c| c.redis.clone(),
        unset: (None, ""),
        help: "share every room with every instance using this Redis, e.g. \
               redis://127.0.0.1:6379/0 (builds with --features redis only)",
        #[cfg(test)]
        doc: "share every room with every instance using this Redis, e.g. \
              `redis://127.0.0.1:6379/0` (a build with `--features redis`; see [Scaling \
              out](#scaling-out))",
    },
    Flag {
        name: "--redis-prefix",
        short: None,
        value: "NAME",
        group: Group::Cluster,
        kind: Kind::Text(|c, v| c.redis_prefix = v),
        show: |c| some(&c.redis_prefix),
        unset: (None, ""),
        help: "prefix of jwtchat's Redis keys",
        #[cfg(test)]
        doc: "prefix of every Redis key, so several separate chats can share one Redis",
    },
    // OTHER
    Flag {
        name: "--echo",
        short: None,
        value: "",
        group: Group::Other,
        kind: Kind::Switch(|c| c.echo = true),
        show: |c| c.echo.then(|| "on".into()),
        unset: (None, "off"),
        help: "test aid: echo each message back to its sender only, instead of chatting (for \
               Autobahn)",
        #[cfg(test)]
        doc: "test aid: echo each text/binary message back to its sender only, instead of \
              chatting (for Autobahn)",
    },
    Flag {
        name: "--help",
        short: Some("-h"),
        value: "",
        group: Group::Other,
        kind: Kind::Help,
        show: NOTHING,
        unset: (None, ""),
        help: "print this help",
        #[cfg(test)]
        doc: "`jwtchat help` is `--help`; `jwtchat hash-password --help` explains that command",
    },
    Flag {
        name: "--version",
        short: Some("-V"),
        value: "",
        group: Group::Other,
        kind: Kind::Version,
        show: NOTHING,
        unset: (None, ""),
        help: "print the version and the features built in",
        #[cfg(test)]
        doc: "names the features built in, e.g. `jwtchat 0.1.0 (features: store)`",
    },
];

/// The value a word stands for in `choices`, ignoring case.
fn choose<T: Copy>(choices: &[(&str, T)], word: &str) -> Result<T, ()> {
    let word = word.to_ascii_lowercase();
    choices
        .iter()
        .find(|(name, _)| *name == word)
        .map(|&(_, value)| value)
        .ok_or(())
}

/// The word for `value` in `choices`.
fn name_of<T: PartialEq>(choices: &[(&str, T)], value: T) -> Option<String> {
    choices
        .iter()
        .find(|(_, v)| *v == value)
        .map(|(name, _)| name.to_string())
}

/// The flag an argument names (`--bind`, or `-h`), not an environment
/// variable.
fn lookup(arg: &str) -> Option<&'static Flag> {
    FLAGS
        .iter()
        .filter(|f| !matches!(f.kind, Kind::Env))
        .find(|f| f.name == arg || f.short == Some(arg))
}

/// What `--help` says before the flags.
const USAGE_HEAD: &str = "\
jwtchat - a WebSocket chat server that authenticates every connection with a JWT

USAGE:
    jwtchat [serve] [OPTIONS]     start the server (the default command)
    jwtchat hash-password         read a password, print its argon2id hash
                                  for the users file (--help for more)
    jwtchat help                  print this help

See the README for the protocol: logging in, the WebSocket messages, close
codes and token claims.
";

/// Where the help text of a flag starts, and how wide `--help` is.
const HELP_COLUMN: usize = 32;
const HELP_WIDTH: usize = 80;

/// `jwtchat --help` (and `jwtchat help`), made from [`FLAGS`], with the
/// defaults of `Config::default()`.
pub fn usage() -> String {
    let defaults = Config::default();
    let mut out = USAGE_HEAD.to_string();
    let mut section = |heading: &str, flags: &mut dyn Iterator<Item = &Flag>| {
        out.push_str(&format!("\n{heading}:\n"));
        for flag in flags {
            let mut left = match flag.short {
                Some(short) => format!("{short}, {}", flag.name),
                None => flag.name.to_string(),
            };
            if !flag.value.is_empty() {
                left = format!("{left} {}", flag.value);
            }
            let default = (flag.show)(&defaults)
                .or(flag.unset.0.map(String::from))
                .map(|default| format!("[default: {default}]"));
            let mut words: Vec<&str> = flag.help.split_whitespace().collect();
            match &default {
                // One word to the wrapping, so that it stays on one line.
                Some(default) if default.len() <= HELP_WIDTH - HELP_COLUMN => words.push(default),
                Some(default) => words.extend(default.split_whitespace()),
                None => {}
            }
            out.push_str(&format!("    {left:<width$}", width = HELP_COLUMN - 5));
            out.push_str(&wrap(&words, HELP_COLUMN, HELP_WIDTH));
        }
    };
    for (group, heading, _) in GROUPS {
        let in_group = |f: &&Flag| f.group == group && !matches!(f.kind, Kind::Env);
        section(heading, &mut FLAGS.iter().filter(in_group));
    }
    let env = |f: &&Flag| matches!(f.kind, Kind::Env);
    section("ENVIRONMENT", &mut FLAGS.iter().filter(env));
    out
}

/// `words` as lines no wider than `width` (a longer word gets a line of
/// its own), every line after the first indented to `column`; the first
/// starts after one space.
fn wrap(words: &[&str], column: usize, width: usize) -> String {
    let mut out = String::new();
    let mut line_len = column - 1;
    for word in words {
        if line_len > column && line_len + 1 + word.len() > width {
            out.push('\n');
            out.push_str(&" ".repeat(column - 1));
            line_len = column - 1;
        }
        out.push(' ');
        out.push_str(word);
        line_len += 1 + word.len();
    }
    out.push('\n');
    out
}

/// The README's configuration table (between `<!-- flags -->` and
/// `<!-- /flags -->`), made from [`FLAGS`] like [`usage`].
#[cfg(test)]
fn readme_table() -> String {
    let defaults = Config::default();
    let mut out = String::from("| flag | default | meaning |\n|---|---|---|\n");
    for (group, _, title) in GROUPS {
        out.push_str(&format!("| **{title}** | | |\n"));
        for flag in FLAGS.iter().filter(|f| f.group == group) {
            let name = match (&flag.kind, flag.short, flag.value) {
                (Kind::Env, _, _) => format!("env `{}`", flag.name),
                (_, Some(short), _) => format!("`{short}`, `{}`", flag.name),
                (_, None, "") => format!("`{}`", flag.name),
                (_, None, value) => format!("`{} {value}`", flag.name),
            };
            let default = match (flag.show)(&defaults) {
                Some(value) => format!(" `{value}` "),
                None if flag.unset.1.is_empty() => " ".to_string(),
                None => format!(" {} ", flag.unset.1),
            };
            let doc = match &flag.kind {
                Kind::Number(range, _) => flag
                    .doc
                    .replace("{range}", &format!("{} to {}", range.start(), range.end())),
                _ => flag.doc.to_string(),
            };
            out.push_str(&format!("| {name} |{default}| {doc} |\n"));
        }
    }
    out
}

/// `jwtchat hash-password --help`.
pub const HASH_PASSWORD_USAGE: &str = "\
jwtchat hash-password - print the argon2id hash of a password, for the users file

USAGE:
    jwtchat hash-password

On a terminal, asks for the password twice without echoing it and refuses
two different entries. Otherwise reads one line from stdin (the newline is
not part of the password):

    echo 'correct horse battery staple' | jwtchat hash-password

Prints one line, a PHC string such as $argon2id$v=19$m=19456,t=2,p=1$...,
to put in the users file as \"password_hash\" (see the README, \"Users file\").
";

/// Parses the arguments after the program name. `env_secret` is the value of
/// `JWTCHAT_SECRET`, passed in so tests need not touch the real environment.
pub fn parse<I>(args: I, env_secret: Option<OsString>) -> Result<Command, CliError>
where
    I: IntoIterator<Item = OsString>,
{
    let mut args = args.into_iter();
    let mut config = Config::default();
    let mut first = true;

    while let Some(arg) = args.next() {
        let is_first = std::mem::replace(&mut first, false);
        // `--flag=value` and `--flag value` are both accepted. Split as
        // bytes: the value may be a path that is not UTF-8.
        let bytes = arg.as_bytes();
        let (name, inline) = match bytes.iter().position(|&b| b == b'=') {
            Some(at) if bytes.starts_with(b"--") => (
                OsStr::from_bytes(&bytes[..at]).to_string_lossy(),
                Some(OsStr::from_bytes(&bytes[at + 1..]).to_os_string()),
            ),
            _ => (arg.to_string_lossy(), None),
        };

        if is_first {
            match &*name {
                "serve" => continue,
                "hash-password" => return hash_password_command(args),
                "help" => {
                    return Ok(match args.next() {
                        Some(next) if next == "hash-password" => Command::HashPasswordHelp,
                        _ => Command::Help,
                    });
                }
                other if !other.starts_with('-') => {
                    return Err(CliError::UnknownCommand(other.to_string()));
                }
                _ => {}
            }
        }
        let Some(flag) = lookup(&name) else {
            return Err(CliError::UnknownFlag(name.into_owned()));
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or(CliError::MissingValue(flag.name))
        };
        match &flag.kind {
            Kind::Help => return Ok(Command::Help),
            Kind::Version => return Ok(Command::Version),
            Kind::Switch(set) if inline.is_none() => set(&mut config),
            // `--echo=yes`: a switch takes no value.
            Kind::Switch(_) | Kind::Env => return Err(CliError::UnknownFlag(name.into_owned())),
            Kind::Path(set) => set(&mut config, PathBuf::from(value()?)),
            Kind::Text(set) => set(&mut config, text(flag.name, value()?)?),
            Kind::Number(range, set) => set(&mut config, number(flag.name, value()?, range)?),
            Kind::Parsed(set, expected) => {
                let value = value()?.to_string_lossy().into_owned();
                set(&mut config, &value).map_err(|()| CliError::BadValue {
                    flag: flag.name,
                    value,
                    why: expected,
                })?;
            }
        }
    }

    // An explicit flag beats the ambient environment. The key is bytes, not
    // text: a non-UTF-8 secret is used exactly as given.
    let (secret, source) = match &config.secret_file {
        Some(path) => (Some(read_secret_file(path)?), "--secret-file"),
        None => (env_secret.map(OsStringExt::into_vec), "JWTCHAT_SECRET"),
    };
    config.secret = secret;
    // The same checks `Server::bind` makes; here the secret's source can
    // be named.
    config.validate().map_err(|error| match error {
        ConfigError::WeakSecret(why) => CliError::WeakSecret { source, why },
        other => CliError::Config(other),
    })?;
    Ok(Command::Serve(Box::new(config)))
}

/// Reads the secret, dropping the trailing newline an editor or `echo` adds:
/// it is not part of the key anyone meant.
fn read_secret_file(path: &Path) -> Result<Vec<u8>, CliError> {
    let mut bytes = std::fs::read(path).map_err(|e| CliError::SecretFile {
        path: path.to_path_buf(),
        error: e.to_string(),
    })?;
    while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        bytes.pop();
    }
    Ok(bytes)
}

/// A text value; names, addresses and URLs are UTF-8 or they are mistakes.
fn text(flag: &'static str, value: OsString) -> Result<String, CliError> {
    value.into_string().map_err(|value| CliError::BadValue {
        flag,
        value: value.to_string_lossy().into_owned(),
        why: "not valid UTF-8",
    })
}

/// `hash-password` takes no arguments but `--help`.
fn hash_password_command(mut args: impl Iterator<Item = OsString>) -> Result<Command, CliError> {
    let Some(arg) = args.next() else {
        return Ok(Command::HashPassword);
    };
    match &*arg.to_string_lossy() {
        "-h" | "--help" => Ok(Command::HashPasswordHelp),
        other => Err(CliError::UnknownFlag(format!("{other} for hash-password"))),
    }
}

/// A whole number within `range`; the error says which range.
fn number(
    flag: &'static str,
    value: OsString,
    range: &RangeInclusive<u64>,
) -> Result<u64, CliError> {
    let value = value.to_string_lossy().into_owned();
    match value.parse::<u64>() {
        Ok(n) if range.contains(&n) => Ok(n),
        _ => Err(CliError::OutOfRange {
            flag,
            value,
            min: *range.start(),
            max: *range.end(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jwtchat::config::SECRET_RECIPE;

    fn parse_strs(args: &[&str]) -> Result<Command, CliError> {
        parse(args.iter().map(OsString::from), None)
    }

    fn serve(args: &[&str]) -> Config {
        match parse_strs(args) {
            Ok(Command::Serve(c)) => *c,
            _ => panic!("expected serve for {args:?}"),
        }
    }

    /// Every setting as every flag shows it.
    fn shown(config: &Config) -> Vec<(&'static str, Option<String>)> {
        FLAGS.iter().map(|f| (f.name, (f.show)(config))).collect()
    }

    /// `--help` and the README show each default by rendering it from
    /// `Config::default()`; this checks the rendering is what the flag
    /// takes: typing every shown default gives the default back, and what
    /// is shown as unset is unset.
    #[test]
    fn shown_defaults_are_what_the_flags_take() {
        let defaults = Config::default();
        let mut args = Vec::new();
        for flag in FLAGS {
            match ((flag.show)(&defaults), &flag.kind) {
                (Some(value), Kind::Switch(_)) => panic!("{} is on by default: {value}", flag.name),
                (Some(value), _) => args.extend([flag.name.to_string(), value]),
                (None, _) => assert!(
                    flag.unset.0.is_some() || !flag.unset.1.is_empty() || !has_setting(flag),
                    "{} shows no default and says nothing about it",
                    flag.name
                ),
            }
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_eq!(shown(&serve(&args)), shown(&defaults), "{args:?}");
        // And the defaults are the documented contract.
        let c = serve(&[]);
        assert_eq!(c.bind, "127.0.0.1:3000");
        assert_eq!(c.token_ttl_secs, 900);
        assert_eq!(c.max_message_bytes, 4096);
    }

    /// Flags whose default may go without a word (no value, or nothing
    /// sensible to say: `--secret-file`, `--metrics-bind`, `--redis`).
    fn has_setting(flag: &Flag) -> bool {
        !matches!(flag.kind, Kind::Help | Kind::Version | Kind::Env)
            && !["--secret-file", "--metrics-bind", "--redis"].contains(&flag.name)
    }

    /// Each flag sets what it shows: set it to something other than its
    /// default, and it (only it) shows that.
    #[test]
    fn each_flag_sets_its_own_setting() {
        let defaults = shown(&Config::default());
        for flag in FLAGS {
            let value = match &flag.kind {
                // Within --history-size (1000 by default).
                Kind::Number(..) if flag.name == "--history" => Some("1000".to_string()),
                Kind::Number(range, _) => Some(range.end().to_string()),
                Kind::Text(_) if flag.name == "--room" => Some("ops".to_string()),
                Kind::Text(_) => Some("elsewhere.example:1".to_string()),
                Kind::Path(_) => Some("/some/file".to_string()),
                Kind::Parsed(..) if flag.name == "--trust-proxy" => Some("10.0.0.0/8".into()),
                Kind::Parsed(..) if flag.name == "--log-level" => Some("debug".into()),
                Kind::Parsed(..) if flag.name == "--fsync" => Some("always".into()),
                Kind::Parsed(..) => Some("json".into()),
                Kind::Switch(_) => None,
                Kind::Help | Kind::Version | Kind::Env => continue,
            };
            if flag.name == "--secret-file" {
                continue; // read at once; see the binary's tests
            }
            let mut args = vec![flag.name.to_string()];
            args.extend(value);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let changed: Vec<&str> = shown(&serve(&args))
                .iter()
                .zip(&defaults)
                .filter(|(now, before)| now != before)
                .map(|((name, _), _)| *name)
                .collect();
            assert_eq!(changed, [flag.name], "{args:?}");
        }
    }

    #[test]
    fn flags_take_separate_or_inline_values() {
        let c = serve(&[
            "serve",
            "--bind",
            "0.0.0.0:80",
            "--token-ttl=60",
            "--issuer",
            "me",
        ]);
        assert_eq!(c.bind, "0.0.0.0:80");
        assert_eq!(c.token_ttl_secs, 60);
        assert_eq!(c.issuer, "me");
        let c = serve(&[
            "--max-logins-per-ip=0",
            "--max-logins-per-user",
            "2",
            "--max-refreshes=1",
            "--metrics-public",
            "--log-format",
            "JSON",
        ]);
        assert_eq!(
            (c.max_logins_per_ip, c.max_logins_per_user, c.max_refreshes),
            (0, 2, 1)
        );
        assert!(c.metrics_public);
        assert_eq!(c.log_format, LogFormat::Json);
    }

    /// Paths are taken as bytes: one that is not UTF-8 is not mangled.
    #[test]
    fn paths_keep_bytes_that_are_not_utf8() {
        let path = OsString::from_vec(b"/tmp/users-\xff.json".to_vec());
        let mut inline = OsString::from("--static=");
        inline.push(&path);
        let parsed = parse([OsString::from("--users"), path.clone(), inline], None);
        let Ok(Command::Serve(c)) = parsed else {
            panic!("expected serve");
        };
        assert_eq!(c.users_file.as_deref(), Some(Path::new(&path)));
        assert_eq!(c.static_dir.as_deref(), Some(Path::new(&path)));
        // Names are text: not UTF-8 is a mistake, not a replacement character.
        let bind = parse([OsString::from("--bind"), path], None).err();
        assert_eq!(
            bind.map(|e| e.to_string()),
            Some("invalid value \"/tmp/users-\u{fffd}.json\" for --bind: not valid UTF-8".into())
        );
    }

    #[test]
    fn mistakes_are_reported() {
        assert_eq!(
            parse_strs(&["--nope"]).err(),
            Some(CliError::UnknownFlag("--nope".into()))
        );
        assert_eq!(
            parse_strs(&["--echo=yes"]).err(),
            Some(CliError::UnknownFlag("--echo".into()))
        );
        assert_eq!(
            parse_strs(&["--bind"]).err(),
            Some(CliError::MissingValue("--bind"))
        );
        assert_eq!(
            parse_strs(&["--max-message-bytes", "0"])
                .err()
                .map(|e| e.to_string()),
            Some(
                "invalid value \"0\" for --max-message-bytes: out of range \
                 (expected 1 to 1073741824)"
                    .into()
            )
        );
        // Negative and too big for any integer are out of range too.
        for value in ["-5", "99999999999999999999999"] {
            let error = parse_strs(&["--history", value])
                .err()
                .map(|e| e.to_string());
            assert_eq!(
                error,
                Some(format!(
                    "invalid value {value:?} for --history: out of range (expected 0 to 100000)"
                ))
            );
        }
        assert_eq!(
            parse_strs(&["--token-ttl", "soon"])
                .err()
                .map(|e| e.to_string()),
            Some(
                "invalid value \"soon\" for --token-ttl: not a whole number \
                 (expected 1 to 31536000)"
                    .into()
            )
        );
        assert_eq!(
            parse_strs(&["--issuer", " "]).err().map(|e| e.to_string()),
            Some("invalid value \" \" for --issuer: must not be empty".into())
        );
        assert!(matches!(
            parse_strs(&["--log-format", "xml"]),
            Err(CliError::BadValue { .. })
        ));
        assert!(matches!(
            parse_strs(&["frobnicate"]),
            Err(CliError::UnknownCommand(_))
        ));
        assert!(matches!(
            parse_strs(&["JWTCHAT_SECRET"]),
            Err(CliError::UnknownCommand(_))
        ));
    }

    #[test]
    fn help_and_hash_password_help() {
        for args in [&["help"][..], &["--help"], &["-h"], &["serve", "--help"]] {
            assert!(matches!(parse_strs(args), Ok(Command::Help)), "{args:?}");
        }
        for args in [&["--version"][..], &["-V"]] {
            assert!(matches!(parse_strs(args), Ok(Command::Version)), "{args:?}");
        }
        for args in [
            &["hash-password", "--help"][..],
            &["hash-password", "-h"],
            &["help", "hash-password"],
        ] {
            assert!(
                matches!(parse_strs(args), Ok(Command::HashPasswordHelp)),
                "{args:?}"
            );
        }
        assert!(matches!(
            parse_strs(&["hash-password"]),
            Ok(Command::HashPassword)
        ));
        assert!(matches!(
            parse_strs(&["hash-password", "--nope"]),
            Err(CliError::UnknownFlag(_))
        ));
    }

    /// `--help` has every group, in order, and every flag in its group.
    #[test]
    fn usage_is_grouped_and_complete() {
        let usage = usage();
        let mut at = 0;
        for heading in GROUPS.map(|(_, h, _)| h).iter().chain(&["ENVIRONMENT"]) {
            let found = usage[at..].find(&format!("\n{heading}:\n"));
            at += found.unwrap_or_else(|| panic!("{heading} missing or out of order"));
        }
        for flag in FLAGS {
            assert!(
                usage.contains(&format!("    {} ", flag.name))
                    || usage.contains(&format!(", {} ", flag.name)),
                "{} is not in --help",
                flag.name
            );
        }
        for line in usage.lines() {
            assert!(line.len() <= HELP_WIDTH, "too wide: {line:?}");
        }
        assert!(usage.contains("[default: 127.0.0.1:3000]"), "{usage}");
        assert!(usage.contains(SECRET_RECIPE), "{usage}");
    }

    #[test]
    fn weak_env_secrets_are_refused() {
        let env = |s: &str| parse(Vec::<OsString>::new(), Some(s.into())).err();
        let weak = |why| {
            Some(CliError::WeakSecret {
                source: "JWTCHAT_SECRET",
                why,
            })
        };
        assert_eq!(env("too short"), weak(WeakSecret::TooShort(9)));
        assert_eq!(env(""), weak(WeakSecret::Empty));
        assert_eq!(env(&"x".repeat(32)), weak(WeakSecret::TooFewDistinct(1)));
        assert_eq!(
            env("change-me-to-at-least-32-random-bytes-please"),
            weak(WeakSecret::Placeholder)
        );
        let good = "0123456789abcdef".repeat(2);
        let ok = parse(Vec::<OsString>::new(), Some(good.clone().into()));
        assert!(
            matches!(ok, Ok(Command::Serve(c)) if c.secret.as_deref() == Some(good.as_bytes()))
        );
    }

    #[test]
    fn env_secret_is_taken_as_bytes() {
        let bytes: Vec<u8> = (0x80..=0xff).collect();
        let ok = parse(
            Vec::<OsString>::new(),
            Some(OsString::from_vec(bytes.clone())),
        );
        assert!(matches!(ok, Ok(Command::Serve(c)) if c.secret == Some(bytes)));
    }

    /// The README's configuration table is [`readme_table`]'s output:
    /// a flag, a help text or a default changed here (or in
    /// `Config::default()`) and not in the README fails this test.
    /// `JWTCHAT_UPDATE_DOCS=1 cargo test --bins` rewrites the table.
    #[test]
    fn the_readme_configuration_table_is_the_flag_table() {
        const OPEN: &str = "<!-- flags -->\n";
        const CLOSE: &str = "<!-- /flags -->";
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
        let readme = std::fs::read_to_string(&path).expect("README.md");
        let (before, rest) = readme.split_once(OPEN).expect("README has <!-- flags -->");
        let (table, after) = rest.split_once(CLOSE).expect("README has <!-- /flags -->");
        let expected = readme_table();
        if std::env::var("JWTCHAT_UPDATE_DOCS").is_ok_and(|v| v == "1") {
            std::fs::write(&path, format!("{before}{OPEN}{expected}{CLOSE}{after}"))
                .expect("write README.md");
            return;
        }
        let stale: Vec<&str> = table
            .lines()
            .zip(expected.lines())
            .filter(|(old, new)| old != new)
            .map(|(old, _)| old)
            .collect();
        assert!(
            table == expected,
            "README.md's configuration table differs from src/cli.rs's FLAGS (first \
             differing README rows: {stale:#?}): run JWTCHAT_UPDATE_DOCS=1 cargo test --bins"
        );
    }
}
