//! The server: the listeners, admission (connection caps), one thread per
//! connection reading its requests, the expiry sweep, and start-up and
//! shutdown. What each request gets is decided in [`crate::routes`].

use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::assets::Assets;
use crate::auth::{Tokens, Users, UsersError};
use crate::close::CloseReason;
use crate::config::{self, Config, ConfigError};
use crate::http::{Connection, RequestError, Response};
use crate::limits::{
    ConnectionLimits, ConnectionPermit, LoginLimits, LoginThrottle, RefreshLimit, SharedBudgets,
};
use crate::metrics::Metrics;
use crate::protocol::Limits;
use crate::room::{self, MAX_PENDING_BYTES, Relay};
use crate::rooms::{self, Rooms};
use crate::session::{self, Upgraded};
use crate::{Accounts, Shared, proxy, routes};

/// Stack for a connection thread, which becomes the client's reader after
/// an upgrade. Small, so thousands of clients fit in little memory; JSON
/// parsing is depth-limited (serde_json stops at 128 levels), so this is
/// ample.
const CONNECTION_STACK: usize = 256 * 1024;

/// Why the server could not start. `main` prints it and exits with 2.
#[derive(Debug)]
pub enum StartError {
    /// A setting out of its range, or a weak secret: see
    /// [`Config::validate`].
    Config(ConfigError),
    /// The users file cannot be read or is not right (the message names
    /// the line).
    Users(UsersError),
    /// The `--static` directory cannot be read.
    Static(io::Error),
    /// The address cannot be listened on (in use, say), with the address.
    Bind(String, io::Error),
    /// `--redis` given to a build without the `redis` feature.
    RedisNotBuilt,
    /// `--redis` with a URL the Redis client cannot use.
    RedisUrl(String),
    /// `--data-dir` given to a build without the `store` feature.
    StoreNotBuilt,
    /// `--data-dir` cannot be used: the file (or directory) and why
    /// (unreadable, corrupt, read-only).
    Store(String),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Config(e) => write!(f, "{e}"),
            StartError::Users(e) => write!(f, "{e}"),
            StartError::Static(e) => write!(f, "cannot serve --static directory: {e}"),
            StartError::Bind(addr, e) => write!(f, "cannot listen on {addr}: {e}"),
            StartError::RedisNotBuilt => write!(
                f,
                "--redis needs a jwtchat built with Redis support: \
                 cargo build --release --features redis"
            ),
            StartError::RedisUrl(why) => write!(f, "invalid --redis URL: {why}"),
            StartError::StoreNotBuilt => write!(
                f,
                "--data-dir needs a jwtchat built with the store (the default build; this \
                 one was built with --no-default-features)"
            ),
            StartError::Store(why) => write!(f, "{why}"),
        }
    }
}

impl std::error::Error for StartError {}

/// A bound, not yet running, server.
pub struct Server {
    listener: TcpListener,
    /// `--metrics-bind`: a second listener that serves only `/metrics`.
    metrics_listener: Option<TcpListener>,
    shared: Arc<Shared>,
}

/// What a listener serves.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Everything (`/metrics` only with `--metrics-public`).
    Main,
    /// Only `/metrics`.
    Metrics,
}

impl Server {
    /// Loads users, keys and the front end, and binds the listener.
    pub fn bind(config: Config) -> Result<Server, StartError> {
        // Every check first, so that a mistake is the one line on stderr;
        // the warnings about demo mode and a random secret come after. The
        // settings before any file is read or any port bound.
        config.validate().map_err(StartError::Config)?;
        let users = match &config.users_file {
            Some(path) => Users::load(path).map_err(StartError::Users)?,
            None => Users::demo(),
        };
        let secret = match &config.secret {
            Some(secret) => secret.clone(),
            None => random_secret(),
        };
        let assets = match &config.static_dir {
            Some(dir) => Assets::from_dir(dir).map_err(StartError::Static)?,
            None => Assets::Embedded,
        };
        let metrics = Arc::new(Metrics::new(config.redis.is_some()));
        let relay = relay(&config, &metrics)?;
        let (journal, restored) = journal(&config)?;
        // Only once everything else is known to be right: a mistake must
        // not look like "address already in use" because another server
        // holds the port.
        let listener = bind(&config.bind)?;
        let metrics_listener = config.metrics_bind.as_deref().map(bind).transpose()?;

        if config.users_file.is_none() {
            // Once per process: a test suite starts a hundred demo servers.
            static DEMO_WARNING: std::sync::Once = std::sync::Once::new();
            DEMO_WARNING.call_once(|| {
                crate::warn!(
                    "demo mode: built-in users userA/passwordA, userB/passwordB, \
                     userC/passwordC (pass --users FILE for real accounts)"
                )
            });
        }
        if config.secret.is_none() {
            crate::warn!(
                "no JWTCHAT_SECRET or --secret-file: using a random secret; \
                 tokens will not survive a restart"
            );
        }
        if let Some(path) = &config.secret_file
            && let Some(mode) = config::loose_permissions(path)
        {
            crate::warn!(
                "--secret-file {path:?} can be read or written by group or others \
                     (mode {mode:04o}); chmod 600 it"
            );
        }
        let tokens = Tokens::new(&secret, &config.issuer, config.token_ttl_secs)
            .with_max_session(config.max_session_secs)
            .with_clock(config.clock.clone());
        let rooms = Arc::new(Rooms::new(
            room_settings(&config, metrics, journal),
            room_limits(&config),
            relay,
            restored,
        ));
        let shared = Shared {
            connections: ConnectionLimits::new(
                crate::capacity::connection_cap(&config),
                config.max_connections_per_ip,
            ),
            accounts: Accounts {
                users,
                tokens,
                logins: LoginThrottle::new(LoginLimits {
                    failures_per_ip: config.max_login_failures,
                    attempts_per_ip: config.max_logins_per_ip,
                    logins_per_user: config.max_logins_per_user,
                }),
                refreshes: RefreshLimit::new(config.max_refreshes),
                clock: config.clock.clone(),
            },
            message_budgets: SharedBudgets::new(config.user_rate(), config.user_burst()),
            config,
            assets,
            rooms,
        };
        Ok(Server {
            listener,
            metrics_listener,
            shared: Arc::new(shared),
        })
    }

    /// The address actually bound (the real port when asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves on a background thread; the handle stops it.
    pub fn spawn(self) -> io::Result<ServerHandle> {
        let addr = self.local_addr();
        let metrics_addr = self.metrics_addr();
        let shared = self.shared.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::Builder::new()
            .name("jwtchat-accept".into())
            .spawn(move || self.serve(&flag))?;
        Ok(ServerHandle {
            addr,
            metrics_addr,
            shared,
            stop,
            thread: Some(thread),
        })
    }

    /// The `/metrics` listener's address, with `--metrics-bind`.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    fn serve(self, stop: &Arc<AtomicBool>) {
        crate::info!("listening on http://{}", self.local_addr());
        crate::info!("{}", summary(&self.shared));
        spawn_sweeper(self.shared.clone(), stop.clone());
        spawn_presence_windows(self.shared.clone(), stop.clone());
        if self.shared.config.metrics_public {
            crate::info!("metrics on http://{}/metrics", self.local_addr());
        } else if self.metrics_listener.is_none() {
            crate::info!("metrics not served (see --metrics-bind)");
        }
        self.shared.rooms.start_relay();
        if let Some(listener) = self.metrics_listener {
            if let Ok(addr) = listener.local_addr() {
                crate::info!("metrics on http://{addr}/metrics");
            }
            let (shared, stop) = (self.shared.clone(), stop.clone());
            let spawned = thread::Builder::new()
                .name("metrics-accept".into())
                .spawn(move || accept_loop(&listener, &shared, Role::Metrics, &stop));
            if let Err(e) = spawned {
                crate::error!("cannot start the metrics listener: {e}");
            }
        }
        accept_loop(&self.listener, &self.shared, Role::Main, stop);
    }
}

/// The start-up line: where the users and the secret came from (never the
/// secret itself) and the limits in force, so one line of the log says how
/// this server was started.
fn summary(shared: &Shared) -> String {
    let c = &shared.config;
    let n = shared.accounts.users.len();
    let users = if n == 1 { "user" } else { "users" };
    let users = match &c.users_file {
        Some(path) => format!("{n} {users} from {path:?}"),
        None => format!("{n} demo {users}"),
    };
    let secret = match (&c.secret_file, &c.secret) {
        (Some(path), _) => format!("secret from --secret-file {path:?}"),
        (None, Some(_)) => "secret from JWTCHAT_SECRET".to_string(),
        (None, None) => "random secret".to_string(),
    };
    let per_minute = |n: u32| match n {
        0 => "off".to_string(),
        n => n.to_string(),
    };
    format!(
        "starting: {users}, {secret}, token ttl {} s, max session {} s, \
         message rate {}/s burst {} (user {}/s burst {}), \
         max connections {} ({} per IP), \
         logins per minute: {} failures per IP, {} per IP, {} per user; history {}",
        c.token_ttl_secs,
        c.max_session_secs,
        c.message_rate,
        c.message_burst,
        c.user_rate(),
        c.user_burst(),
        shared.connections.max_total(),
        c.max_connections_per_ip,
        per_minute(c.max_login_failures),
        per_minute(c.max_logins_per_ip),
        per_minute(c.max_logins_per_user),
        c.history,
    )
}

/// Accepts connections until `stop` is set.
fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>, role: Role, stop: &AtomicBool) {
    for incoming in listener.incoming() {
        if stop.load(Ordering::Acquire) {
            break;
        }
        match incoming {
            Ok(stream) => spawn_connection(shared, stream, role),
            Err(e) => {
                // Out of file descriptors, usually: back off instead of
                // spinning, and keep serving the clients we have.
                crate::warn!("accept failed: {e}");
                thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// A server running in the background (see [`Server::spawn`]).
pub struct ServerHandle {
    addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ServerHandle {
    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends the joins and leaves gathered so far now, rather than when
    /// their presence window closes (at most 100 ms later): for a caller
    /// that needs presence settled, as a test does before its next step.
    pub fn flush_presence(&self) {
        self.shared.rooms.flush_presence();
    }

    /// TCP connections open now (HTTP and WebSocket alike).
    pub fn open_connections(&self) -> usize {
        self.shared.connections.open()
    }

    /// The counters, as `GET /metrics` would serve them (Prometheus text),
    /// wherever `/metrics` is or is not served.
    pub fn metrics_text(&self) -> String {
        self.shared.metrics_text()
    }

    /// The `/metrics` listener's address, with `--metrics-bind`.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Stops accepting connections. Open connections run to their end.
    pub fn stop(mut self) {
        self.shutdown();
    }

    /// Stops accepting, sends every client close 1001 ("going away",
    /// RFC 6455 §7.4.1), and waits up to `grace` for those frames to be
    /// written.
    pub fn shutdown_gracefully(mut self, grace: Duration) {
        self.stop_accepting();
        let outboxes = self.shared.rooms.close_all(&CloseReason::going_away());
        // After the close frames are on their way: saying goodbye to Redis
        // can take a while if it is unwell.
        self.stop_relay();
        self.shared.rooms.close_journal();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline && outboxes.iter().any(|o| !o.is_done()) {
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn shutdown(&mut self) {
        self.stop_accepting();
        self.stop_relay();
        self.shared.rooms.close_journal();
    }

    fn stop_accepting(&mut self) {
        self.stop.store(true, Ordering::Release);
        // The accept loops are blocked in accept(): a connection wakes each.
        for addr in std::iter::once(self.addr).chain(self.metrics_addr) {
            let _ = TcpStream::connect_timeout(&addr, Duration::from_secs(1));
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }

    /// With `--redis`: stops following Redis and tells the other instances
    /// this one is gone (once; later calls do nothing).
    fn stop_relay(&self) {
        self.shared.rooms.stop_relay();
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn bind(addr: &str) -> Result<TcpListener, StartError> {
    let fail = |e| StartError::Bind(addr.to_string(), e);
    let addrs: Vec<SocketAddr> = addr.to_socket_addrs().map_err(fail)?.collect();
    TcpListener::bind(&addrs[..]).map_err(fail)
}

/// The relay to the other instances, with `--redis`: the one place the
/// `redis` feature shows in the server.
fn relay(config: &Config, metrics: &Metrics) -> Result<Option<Arc<dyn Relay>>, StartError> {
    let Some(url) = &config.redis else {
        return Ok(None);
    };
    #[cfg(not(feature = "redis"))]
    {
        let _ = (url, metrics);
        Err(StartError::RedisNotBuilt)
    }
    #[cfg(feature = "redis")]
    {
        let counters = metrics.redis.clone().unwrap_or_default();
        let cluster = crate::cluster::Cluster::new(
            url,
            &config.redis_prefix,
            config.history_size,
            Duration::from_secs(config.room_idle_ttl_secs),
            counters,
        )
        .map_err(|e| StartError::RedisUrl(e.0))?;
        crate::info!(
            "sharing the room over Redis at {} (key prefix {:?}, instance {})",
            crate::cluster::without_password(url),
            config.redis_prefix,
            cluster.id()
        );
        Ok(Some(Arc::new(cluster)))
    }
}

/// With `--data-dir`: the store, opened (its file checked, every page), and
/// the rooms it kept. The one place the `store` feature shows here.
type Journal = (Option<Arc<dyn room::Journal>>, Vec<room::Restored>);

fn journal(config: &Config) -> Result<Journal, StartError> {
    let Some(dir) = &config.data_dir else {
        return Ok((None, Vec::new()));
    };
    #[cfg(not(feature = "store"))]
    {
        let _ = dir;
        Err(StartError::StoreNotBuilt)
    }
    #[cfg(feature = "store")]
    {
        let retention = crate::store::Retention {
            messages_per_room: config.history_size,
            ttl_secs: config.history_ttl_secs,
        };
        let failed = |e: crate::store::StoreError| StartError::Store(e.to_string());
        let store = crate::store::Store::open(dir, config.fsync, retention).map_err(failed)?;
        // What expired while the server was down goes before it is read.
        store
            .prune_expired(config.clock.unix_millis())
            .map_err(failed)?;
        let lost = store.lost_on_crash();
        if lost {
            crate::warn!(
                "--data-dir: the last run ended without closing the store (--fsync {:?}): \
                 its last messages may be missing, so every room starts a new epoch",
                config.fsync
            );
        }
        let restored = store
            .load()
            .map_err(failed)?
            .into_iter()
            .map(|record| {
                let mut room = record.restored();
                // Seqs clients saw may be given out again: another history.
                if lost {
                    room.epoch = room::new_epoch().to_string();
                }
                room
            })
            .collect();
        Ok((Some(Arc::new(store)), restored))
    }
}

/// How every room is set up.
fn room_settings(
    config: &Config,
    metrics: Arc<Metrics>,
    journal: Option<Arc<dyn room::Journal>>,
) -> room::Settings {
    room::Settings {
        retention: room::Retention {
            messages: config.history_size,
            ttl_ms: config.history_ttl_secs.saturating_mul(1000),
            greeting: config.history,
            max_recovery_bytes: config.max_recovery_bytes,
        },
        // A batch must fit a client's queue with room to spare, or clients
        // that keep up would be cut off for one batch.
        max_pending: MAX_PENDING_BYTES.min(config.client_queue_bytes / 4),
        limits: Limits {
            max_message_bytes: config.max_message_bytes,
            message_rate: config.message_rate,
        },
        clock: config.clock.clone(),
        presence_list_max: config.presence_list_max,
        metrics,
        windows: Arc::default(),
        journal,
    }
}

/// The limits on rooms, and the rooms open to everyone.
fn room_limits(config: &Config) -> rooms::Limits {
    rooms::Limits {
        max_rooms: config.max_rooms,
        max_per_connection: config.max_rooms_per_connection,
        max_per_user: config.max_rooms_per_user,
        idle_ttl: config.room_idle_ttl_secs,
        open: config
            .open_rooms
            .iter()
            .map(|r| r.as_str().into())
            .collect(),
    }
}

fn random_secret() -> Vec<u8> {
    let mut secret = vec![0u8; 32];
    getrandom::fill(&mut secret).expect("the OS random source is available");
    secret
}

/// Checks every client's token expiry at `sweep_interval`.
fn spawn_sweeper(shared: Arc<Shared>, stop: Arc<AtomicBool>) {
    let interval = shared.config.sweep_interval;
    let spawned = thread::Builder::new()
        .name("expiry-sweep".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            while !stop.load(Ordering::Acquire) {
                thread::sleep(interval);
                shared.rooms.sweep();
            }
        });
    if let Err(e) = spawned {
        crate::error!("cannot start the expiry sweep: {e}");
    }
}

/// Closes each room's presence window in time (see
/// `Rooms::run_presence_windows`).
fn spawn_presence_windows(shared: Arc<Shared>, stop: Arc<AtomicBool>) {
    let spawned = thread::Builder::new()
        .name("presence".into())
        .stack_size(64 * 1024)
        .spawn(move || shared.rooms.run_presence_windows(&stop));
    if let Err(e) = spawned {
        crate::error!("cannot start the presence thread: {e}");
    }
}

/// Admits a connection and gives it a thread, or turns it away with `503`
/// before any thread or buffer is spent on it.
fn spawn_connection(shared: &Arc<Shared>, stream: TcpStream, role: Role) {
    let Ok(peer) = stream.peer_addr() else {
        return;
    };
    // On a dual-stack listener (`[::]`) an IPv4 client arrives as
    // `::ffff:a.b.c.d`. Every limit, log line and proxy match below must
    // see the IPv4 address it really is, or all IPv4 clients would share
    // one IPv6 /64 bucket.
    let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
    // A trusted proxy's connections are counted per client once the first
    // request says who the client is (see `handle_connection`).
    let trusted = shared
        .config
        .trusted_proxies
        .iter()
        .any(|net| net.contains(peer.ip()));
    let permit = match shared.connections.admit((!trusted).then_some(peer.ip())) {
        Ok(permit) => permit,
        Err(refusal) => {
            crate::warn!("refused a connection from {peer}: {refusal}");
            let response = too_busy();
            // A fresh socket's buffer has room for this; never wait here.
            let _ = crate::sys::send_nonblocking(&stream, &response.to_bytes(false, false));
            return;
        }
    };
    crate::debug!("connection from {peer} accepted");
    // The thread takes the stream; keep a handle to answer `503` on should
    // no thread be had (the kernel's limits, or memory).
    let answer_on = stream.try_clone().ok();
    let shared = shared.clone();
    let spawned = thread::Builder::new()
        .name("conn".into())
        .stack_size(CONNECTION_STACK)
        .spawn(move || serve_connection(&shared, stream, peer, permit, role));
    if let Err(e) = spawned {
        static LOG: crate::log::OncePerSecond = crate::log::OncePerSecond::new();
        if LOG.first() {
            crate::warn!("cannot start a connection thread ({e}): answering 503");
        }
        if let Some(stream) = answer_on {
            let _ = crate::sys::send_nonblocking(&stream, &too_busy().to_bytes(false, false));
        }
    }
}

/// `503`: over a connection cap.
fn too_busy() -> Response {
    Response::error(
        503,
        "service_unavailable",
        "too many connections; try again later",
    )
    .with_header("Retry-After", "1")
}

/// A connection thread's body. A panic here is a bug, but it must cost one
/// connection, not the server: it is caught and logged, and the client's
/// room membership and connection permit are released as the stack unwinds.
///
/// The HTTP phase returns before an upgraded connection's session starts,
/// so the session, which may wait for hours, runs from this shallow frame:
/// the deep frames of parsing and token checking, and the request, are
/// gone by then (see [`session::run`] for why that matters).
fn serve_connection(
    shared: &Shared,
    stream: TcpStream,
    peer: SocketAddr,
    mut permit: ConnectionPermit,
    role: Role,
) {
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        if let Some(upgraded) = handle_connection(shared, stream, peer, &mut permit, role) {
            session::run(shared, upgraded);
        }
    }));
    if outcome.is_err() {
        crate::error!("the connection from {peer} ended in a panic (see above); still serving");
    }
    crate::debug!("connection from {peer} closed");
    drop(permit);
}

/// Serves requests on one connection until it closes, or upgrades: then
/// the connection is returned for its session. Never inlined, so that its
/// frame (a few KiB: the request, the response, the parser's buffers) is
/// not part of the session's.
#[inline(never)]
fn handle_connection(
    shared: &Shared,
    stream: TcpStream,
    peer: SocketAddr,
    permit: &mut ConnectionPermit,
    role: Role,
) -> Option<Upgraded> {
    let mut conn = Connection::new(stream, shared.config.request_timeout);
    loop {
        let request = match conn.read_request() {
            Ok(request) => request,
            Err(error) => {
                refuse(&mut conn, &error, peer);
                return None;
            }
        };
        // Behind a trusted proxy, the client is who X-Forwarded-For says;
        // from here on limits and logs use that address.
        let peer = proxy::client_addr(&shared.config.trusted_proxies, peer, &request);
        if permit.rebind(peer.ip()).is_err() {
            let _ = conn.write_response(&too_busy(), false, false);
            return None;
        }
        if role == Role::Main && request.path() == "/ws" && request.method == "GET" {
            return routes::upgrade(shared, conn, &request, peer);
        }
        let keep_alive = request.keep_alive();
        let response = match role {
            Role::Main => routes::route(shared, &request, peer, &conn),
            Role::Metrics => routes::route_metrics_only(shared, &request),
        };
        crate::debug!(
            "{peer}: {} {:?} {}",
            request.method,
            crate::log::redact_target(&request.target),
            response.status
        );
        let head_only = request.method == "HEAD";
        if conn
            .write_response(&response, head_only, keep_alive)
            .is_err()
            || !keep_alive
        {
            return None;
        }
    }
}

fn refuse(conn: &mut Connection, error: &RequestError, peer: SocketAddr) {
    if let Some(response) = error.response() {
        crate::debug!("{peer}: {error}");
        let _ = conn.write_response(&response, false, false);
    }
}
