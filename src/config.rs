//! Configuration: every knob the server has, its default, and the command
//! line that sets it.
//!
//! The parser is hand-written (no `clap`): the flag set is small, and a
//! reader can see exactly what each flag does. Every mistake becomes a
//! [`CliError`] whose `Display` is one line, which `main` prints before
//! exiting with status 2.

use std::ffi::OsString;
use std::fmt;
use std::os::unix::ffi::OsStringExt;
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
/// [`Config`] (both [`parse`] and [`crate::Server::bind`] call it).
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
pub fn loose_permissions(path: &Path) -> Option<u32> {
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
    /// Checked by [`check_secret`] at start-up.
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
    /// Chat messages kept for the `welcome` of late joiners; 0 keeps none.
    pub history: usize,
    /// Print every WebSocket handshake, check by check, to stderr.
    pub trace_handshake: bool,
    /// Reverse proxies whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Vec<Cidr>,
    /// `redis://HOST:PORT/DB`: share one room with every instance using
    /// this Redis (needs a build with `--features redis`).
    pub redis: Option<String>,
    /// Prefix of every Redis key, so several rooms can share one Redis.
    pub redis_prefix: String,
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
            trace_handshake: false,
            trusted_proxies: Vec::new(),
            redis: None,
            redis_prefix: "jwtchat".to_string(),
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

/// What the command line asked for.
pub enum Command {
    /// Start the server (`jwtchat` or `jwtchat serve`).
    Serve(Box<Config>),
    /// Read a password from stdin, print its argon2id PHC string.
    HashPassword,
    /// `--help`, `-h` or `help`: print [`USAGE`].
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
        }
    }
}

impl std::error::Error for CliError {}

/// `jwtchat --help` (and `jwtchat help`). Flags are grouped by what they
/// are about; within a group, the one people reach for first comes first.
pub const USAGE: &str = "\
jwtchat - a WebSocket chat server that authenticates every connection with a JWT

USAGE:
    jwtchat [serve] [OPTIONS]     start the server (the default command)
    jwtchat hash-password         read a password, print its argon2id hash
                                  for the users file (--help for more)
    jwtchat help                  print this help

See the README for the protocol: logging in, the WebSocket messages, close
codes and token claims.

NETWORK:
    --bind ADDR                 address to listen on [default: 127.0.0.1:3000]
                                (port 0 picks a free port)
    --static DIR                serve the front end from DIR instead of the
                                copy embedded in the binary
    --allowed-origin ORIGIN     an origin (e.g. https://chat.example) allowed to
                                open a WebSocket; repeatable [default: the
                                server's own origin, from the Host header]
    --trust-proxy CIDR          a reverse proxy network (e.g. 127.0.0.1/32) whose
                                X-Forwarded-For names the client; repeatable

ACCOUNTS AND TOKENS:
    --users FILE                JSON users file; without it, demo users
                                userA/passwordA, userB/passwordB, userC/passwordC
    --secret-file FILE          HS256 secret: at least 32 bytes with at least 16
                                distinct byte values, not the old example's
                                placeholder; a trailing newline is dropped
                                (make one with: head -c 32 /dev/urandom | base64)
    --token-ttl SECS            token lifetime in seconds [default: 900]
    --issuer NAME               the token issuer (iss claim) [default: jwtchat]
    --max-session SECS          how long after a login tokens can be refreshed
                                [default: 43200]

LIMITS:
    --max-message-bytes N       largest chat message text in bytes [default: 4096]
    --message-rate PER_SEC      chat messages per second per connection,
                                0 = no limit [default: 20]
    --message-burst N           messages allowed at once before the rate
                                applies [default: 40]
    --user-message-rate PER_SEC chat messages per second all of one user's
                                connections may send together, and likewise
                                all connections from one IP address,
                                0 = no limit [default: 2 x --message-rate]
    --user-message-burst N      burst for --user-message-rate
                                [default: 2 x --message-burst]
    --client-queue-bytes N      unsent bytes one client may fall behind before
                                it is disconnected (4008) [default: 1048576]
    --max-connections N         open connections at most [default: 10000]
    --max-connections-per-ip N  open connections per client IP [default: 256]
    --max-login-failures N      failed logins per IP per minute before 429,
                                0 = no limit [default: 10]
    --max-logins-per-ip N       logins (successful ones too) per IP per minute
                                before 429, 0 = no limit [default: 30]
    --max-logins-per-user N     successful logins per username per minute
                                before 429, 0 = no limit [default: 6]
    --max-refreshes N           token refreshes per user per minute before 429,
                                0 = no limit [default: 6]

HISTORY:
    --history N                 messages a newcomer's welcome carries, 0 = none
                                [default: 100]

LOGGING AND METRICS:
    --log-level LEVEL           error, warn, info or debug [default: info]
    --log-format FORMAT         text, or json for one JSON object per line
                                [default: text]
    --trace-handshake           print every WebSocket handshake step by step
    --metrics-bind ADDR         serve /metrics on ADDR (e.g. 127.0.0.1:9100);
                                without it or --metrics-public, /metrics is
                                not served at all
    --metrics-public            also serve /metrics on the main listener (it
                                tells why tokens were rejected: keep private)

CLUSTER:
    --redis URL                 share one room with every instance using this
                                Redis, e.g. redis://127.0.0.1:6379/0 (builds
                                with --features redis only)
    --redis-prefix NAME         prefix of jwtchat's Redis keys [default: jwtchat]

OTHER:
    --echo                      test aid: echo each message back to its sender
                                only, instead of chatting (for Autobahn)
    -h, --help                  print this help
    -V, --version               print the version and the features built in

ENVIRONMENT:
    JWTCHAT_SECRET              HS256 secret, used when --secret-file is not
                                given, with the same rules (taken as raw
                                bytes); set but empty is an error. With
                                neither, a random secret is generated at
                                start-up and tokens do not survive a restart.
";

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
    let mut args = args.into_iter().map(|a| a.to_string_lossy().into_owned());
    let mut config = Config::default();
    let mut secret_file: Option<PathBuf> = None;
    let mut first = true;

    while let Some(arg) = args.next() {
        let is_first = std::mem::replace(&mut first, false);
        // `--flag=value` and `--flag value` are both accepted.
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &'static str| {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or(CliError::MissingValue(name))
        };

        match flag.as_str() {
            "serve" if is_first => {}
            "hash-password" if is_first => return hash_password_command(args),
            "help" if is_first => {
                return Ok(match args.next().as_deref() {
                    Some("hash-password") => Command::HashPasswordHelp,
                    _ => Command::Help,
                });
            }
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            "--bind" => config.bind = non_empty("--bind", value("--bind")?)?,
            "--users" => config.users_file = Some(PathBuf::from(value("--users")?)),
            "--static" => config.static_dir = Some(PathBuf::from(value("--static")?)),
            "--secret-file" => secret_file = Some(PathBuf::from(value("--secret-file")?)),
            "--issuer" => config.issuer = non_empty("--issuer", value("--issuer")?)?,
            "--token-ttl" => {
                config.token_ttl_secs = number("--token-ttl", value("--token-ttl")?, 1, 31_536_000)?
            }
            "--message-rate" => {
                config.message_rate =
                    number("--message-rate", value("--message-rate")?, 0, 1_000_000)? as u32
            }
            "--message-burst" => {
                config.message_burst =
                    number("--message-burst", value("--message-burst")?, 1, 1_000_000)? as u32
            }
            "--user-message-rate" => {
                config.user_message_rate = Some(number(
                    "--user-message-rate",
                    value("--user-message-rate")?,
                    0,
                    1_000_000,
                )? as u32)
            }
            "--user-message-burst" => {
                config.user_message_burst = Some(number(
                    "--user-message-burst",
                    value("--user-message-burst")?,
                    1,
                    1_000_000,
                )? as u32)
            }
            "--client-queue-bytes" => {
                config.client_queue_bytes = number(
                    "--client-queue-bytes",
                    value("--client-queue-bytes")?,
                    64 * 1024,
                    1 << 30,
                )? as usize
            }
            "--allowed-origin" => config
                .allowed_origins
                .push(non_empty("--allowed-origin", value("--allowed-origin")?)?),
            "--max-connections" => {
                config.max_connections = number(
                    "--max-connections",
                    value("--max-connections")?,
                    1,
                    10_000_000,
                )? as usize
            }
            "--max-connections-per-ip" => {
                config.max_connections_per_ip = number(
                    "--max-connections-per-ip",
                    value("--max-connections-per-ip")?,
                    1,
                    10_000_000,
                )? as usize
            }
            "--max-login-failures" => {
                config.max_login_failures = number(
                    "--max-login-failures",
                    value("--max-login-failures")?,
                    0,
                    1_000_000,
                )? as u32
            }
            "--max-logins-per-ip" => {
                config.max_logins_per_ip = number(
                    "--max-logins-per-ip",
                    value("--max-logins-per-ip")?,
                    0,
                    1_000_000,
                )? as u32
            }
            "--max-logins-per-user" => {
                config.max_logins_per_user = number(
                    "--max-logins-per-user",
                    value("--max-logins-per-user")?,
                    0,
                    1_000_000,
                )? as u32
            }
            "--max-refreshes" => {
                config.max_refreshes =
                    number("--max-refreshes", value("--max-refreshes")?, 0, 1_000_000)? as u32
            }
            "--echo" if inline.is_none() => config.echo = true,
            "--trace-handshake" if inline.is_none() => config.trace_handshake = true,
            "--metrics-public" if inline.is_none() => config.metrics_public = true,
            "--trust-proxy" => {
                let value = value("--trust-proxy")?;
                let cidr = value.parse().map_err(|_| CliError::BadValue {
                    flag: "--trust-proxy",
                    value,
                    why: "expected an IP address or network, e.g. 10.0.0.0/8",
                })?;
                config.trusted_proxies.push(cidr);
            }
            "--max-session" => {
                config.max_session_secs =
                    number("--max-session", value("--max-session")?, 1, 31_536_000)?
            }
            "--history" => {
                config.history = number("--history", value("--history")?, 0, 100_000)? as usize
            }
            "--metrics-bind" => {
                config.metrics_bind = Some(non_empty("--metrics-bind", value("--metrics-bind")?)?)
            }
            "--redis" => config.redis = Some(non_empty("--redis", value("--redis")?)?),
            "--redis-prefix" => {
                config.redis_prefix = non_empty("--redis-prefix", value("--redis-prefix")?)?
            }
            "--log-level" => {
                let level = value("--log-level")?;
                config.log_level = match level.to_ascii_lowercase().as_str() {
                    "error" => Level::Error,
                    "warn" => Level::Warn,
                    "info" => Level::Info,
                    "debug" => Level::Debug,
                    _ => {
                        return Err(CliError::BadValue {
                            flag: "--log-level",
                            value: level,
                            why: "expected error, warn, info or debug",
                        });
                    }
                };
            }
            "--log-format" => {
                let format = value("--log-format")?;
                config.log_format = match format.to_ascii_lowercase().as_str() {
                    "text" => LogFormat::Text,
                    "json" => LogFormat::Json,
                    _ => {
                        return Err(CliError::BadValue {
                            flag: "--log-format",
                            value: format,
                            why: "expected text or json",
                        });
                    }
                };
            }
            "--max-message-bytes" => {
                let n = number(
                    "--max-message-bytes",
                    value("--max-message-bytes")?,
                    1,
                    1 << 30,
                )?;
                config.max_message_bytes = n as usize;
            }
            other if is_first && !other.starts_with('-') => {
                return Err(CliError::UnknownCommand(other.to_string()));
            }
            _ => return Err(CliError::UnknownFlag(flag)),
        }
    }

    // An explicit flag beats the ambient environment. The key is bytes, not
    // text: a non-UTF-8 secret is used exactly as given.
    let (secret, source) = match &secret_file {
        Some(path) => (Some(read_secret_file(path)?), "--secret-file"),
        None => (env_secret.map(OsStringExt::into_vec), "JWTCHAT_SECRET"),
    };
    // Checked here too (not only in `Server::bind`) to name the source.
    if let Some(secret) = &secret {
        check_secret(secret).map_err(|why| CliError::WeakSecret { source, why })?;
    }
    config.secret = secret;
    config.secret_file = secret_file;
    Ok(Command::Serve(Box::new(config)))
}

/// Reads the secret, dropping the trailing newline an editor or `echo` adds:
/// it is not part of the key anyone meant.
fn read_secret_file(path: &PathBuf) -> Result<Vec<u8>, CliError> {
    let mut bytes = std::fs::read(path).map_err(|e| CliError::SecretFile {
        path: path.clone(),
        error: e.to_string(),
    })?;
    while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        bytes.pop();
    }
    Ok(bytes)
}

fn non_empty(flag: &'static str, value: String) -> Result<String, CliError> {
    if value.trim().is_empty() {
        return Err(CliError::BadValue {
            flag,
            value,
            why: "must not be empty",
        });
    }
    Ok(value)
}

/// `hash-password` takes no arguments but `--help`.
fn hash_password_command(mut args: impl Iterator<Item = String>) -> Result<Command, CliError> {
    match args.next().as_deref() {
        None => Ok(Command::HashPassword),
        Some("-h" | "--help") => Ok(Command::HashPasswordHelp),
        Some(other) => Err(CliError::UnknownFlag(format!("{other} for hash-password"))),
    }
}

/// A whole number from `min` to `max`; the error says which range.
fn number(flag: &'static str, value: String, min: u64, max: u64) -> Result<u64, CliError> {
    match value.parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(CliError::OutOfRange {
            flag,
            value,
            min,
            max,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_strs(args: &[&str]) -> Result<Command, CliError> {
        parse(args.iter().map(OsString::from), None)
    }

    fn serve(args: &[&str]) -> Config {
        match parse_strs(args) {
            Ok(Command::Serve(c)) => *c,
            _ => panic!("expected serve for {args:?}"),
        }
    }

    #[test]
    fn defaults_match_the_contract() {
        let c = serve(&[]);
        assert_eq!(c.bind, "127.0.0.1:3000");
        assert_eq!(c.token_ttl_secs, 900);
        assert_eq!(c.issuer, "jwtchat");
        assert_eq!(c.max_message_bytes, 4096);
        assert!(c.users_file.is_none() && c.static_dir.is_none() && c.secret.is_none());
        assert!(c.metrics_bind.is_none() && !c.metrics_public);
        assert!(serve(&["--metrics-public"]).metrics_public);
        assert_eq!(c.log_format, LogFormat::Text);
        assert_eq!(serve(&["--log-format", "json"]).log_format, LogFormat::Json);
        assert_eq!((c.max_logins_per_ip, c.max_logins_per_user), (30, 6));
        assert_eq!(c.max_refreshes, 6);
        let c = serve(&[
            "--max-logins-per-ip=0",
            "--max-logins-per-user",
            "2",
            "--max-refreshes=1",
        ]);
        assert_eq!(
            (c.max_logins_per_ip, c.max_logins_per_user, c.max_refreshes),
            (0, 2, 1)
        );
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
    }

    #[test]
    fn mistakes_are_reported() {
        assert_eq!(
            parse_strs(&["--nope"]).err(),
            Some(CliError::UnknownFlag("--nope".into()))
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
            let error = parse_strs(&["--history", value]).err().unwrap();
            assert_eq!(
                error.to_string(),
                format!(
                    "invalid value {value:?} for --history: out of range (expected 0 to 100000)"
                )
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
        assert!(matches!(
            parse_strs(&["--log-format", "xml"]),
            Err(CliError::BadValue { .. })
        ));
        assert!(matches!(
            parse_strs(&["frobnicate"]),
            Err(CliError::UnknownCommand(_))
        ));
    }

    #[test]
    fn help_and_hash_password_help() {
        for args in [&["help"][..], &["--help"], &["-h"], &["serve", "--help"]] {
            assert!(matches!(parse_strs(args), Ok(Command::Help)), "{args:?}");
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

    /// Every flag the parser takes is in `--help`, under a group heading.
    #[test]
    fn usage_is_grouped_and_complete() {
        let headings = [
            "NETWORK:",
            "ACCOUNTS AND TOKENS:",
            "LIMITS:",
            "HISTORY:",
            "LOGGING AND METRICS:",
            "CLUSTER:",
        ];
        let mut at = 0;
        for heading in headings {
            let found = USAGE[at..].find(&format!("\n{heading}\n"));
            at += found.unwrap_or_else(|| panic!("{heading} missing or out of order"));
        }
        let source = include_str!("config.rs");
        let (_, parser) = source
            .split_once("match flag.as_str() {")
            .expect("the flag match");
        let parser = parser.split("other if is_first").next().unwrap();
        for flag in parser
            .split('"')
            .filter(|s| s.starts_with("--") && !s.contains(' '))
        {
            assert!(
                USAGE.contains(&format!("    {flag} ")) || USAGE.contains(&format!(", {flag} ")),
                "{flag} is not in USAGE"
            );
        }
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
}
