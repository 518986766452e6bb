//! The server: the listener, one thread per connection, and the router that
//! sends each request to its handler.
//!
//! | request | answer |
//! |---|---|
//! | `POST /auth` | a token, or `401`/`400`/`413`/`415` |
//! | `GET /ws` | the WebSocket upgrade ([`crate::handshake`]) |
//! | `GET /healthz` | `200 ok` |
//! | `GET`/`HEAD` anything else | a front-end file ([`crate::assets`]) |

use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::assets::Assets;
use crate::auth::{Claims, RefreshError, TokenError, Tokens, Users, UsersError};
use crate::config::{Config, MIN_SECRET_BYTES};
use crate::handshake::Trace;
use crate::http::{Connection, Request, RequestError, Response};
use crate::limits::{ConnectionLimits, ConnectionPermit, LoginThrottle};
use crate::metrics;
use crate::protocol::close_code;
use crate::room::Room;
use crate::{Shared, handshake, proxy, session};

/// Stack for a connection thread, which becomes the client's reader after
/// an upgrade. Small, so thousands of clients fit in little memory; JSON
/// parsing is depth-limited (serde_json stops at 128 levels), so this is
/// ample.
const CONNECTION_STACK: usize = 256 * 1024;

/// Headers on every front-end file: a strict Content-Security-Policy (the
/// page has no inline script or style) and no MIME sniffing.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; connect-src 'self' ws: wss:; \
     img-src 'self' data:; style-src 'self'; base-uri 'none'; form-action 'self'; \
     frame-ancestors 'none'";

/// Why the server could not start. `main` prints it and exits with 2.
#[derive(Debug)]
pub enum StartError {
    Users(UsersError),
    Static(io::Error),
    SecretTooShort(usize),
    Bind(String, io::Error),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Users(e) => write!(f, "{e}"),
            StartError::Static(e) => write!(f, "cannot serve --static directory: {e}"),
            StartError::SecretTooShort(len) => write!(
                f,
                "the secret is {len} bytes; HS256 needs at least {MIN_SECRET_BYTES}"
            ),
            StartError::Bind(addr, e) => write!(f, "cannot listen on {addr}: {e}"),
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
    /// Everything (and `/metrics` too, unless it has its own listener).
    Main,
    /// Only `/metrics`.
    Metrics,
}

impl Server {
    /// Loads users, keys and the front end, and binds the listener.
    pub fn bind(config: Config) -> Result<Server, StartError> {
        // Every check first, so that a mistake is the one line on stderr;
        // the warnings about demo mode and a random secret come after.
        let users = match &config.users_file {
            Some(path) => Users::load(path).map_err(StartError::Users)?,
            None => Users::demo(),
        };
        let secret = match &config.secret {
            Some(secret) if secret.len() < MIN_SECRET_BYTES => {
                return Err(StartError::SecretTooShort(secret.len()));
            }
            Some(secret) => secret.clone(),
            None => random_secret(),
        };
        let assets = match &config.static_dir {
            Some(dir) => Assets::from_dir(dir).map_err(StartError::Static)?,
            None => Assets::Embedded,
        };
        let listener = bind(&config.bind)?;
        let metrics_listener = config.metrics_bind.as_deref().map(bind).transpose()?;

        if config.users_file.is_none() {
            crate::warn!(
                "demo mode: built-in users userA/passwordA, userB/passwordB, userC/passwordC \
                 (pass --users FILE for real accounts)"
            );
        }
        if config.secret.is_none() {
            crate::warn!(
                "no JWTCHAT_SECRET or --secret-file: using a random secret; \
                 tokens will not survive a restart"
            );
        }
        let tokens = Tokens::new(&secret, &config.issuer, config.token_ttl_secs)
            .with_max_session(config.max_session_secs);
        let room = Room::new(config.history);
        let shared = Shared {
            connections: ConnectionLimits::new(
                config.max_connections,
                config.max_connections_per_ip,
            ),
            logins: LoginThrottle::new(config.max_login_failures),
            config,
            users,
            tokens,
            assets,
            room,
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

    /// Shared state, for tests that look inside.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Serves until the process ends.
    pub fn run(self) {
        let stop = Arc::new(AtomicBool::new(false));
        self.serve(&stop);
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
        spawn_sweeper(self.shared.clone(), stop.clone());
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
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
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
        self.shutdown();
        let outboxes = self
            .shared
            .room
            .close_all(close_code::GOING_AWAY, "server shutting down");
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline && outboxes.iter().any(|o| !o.is_done()) {
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Release);
        // The accept loops are blocked in accept(): a connection wakes each.
        for addr in std::iter::once(self.addr).chain(self.metrics_addr) {
            let _ = TcpStream::connect_timeout(&addr, Duration::from_secs(1));
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
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
                shared.room.sweep();
                crate::outbox::reap_lingering();
            }
        });
    if let Err(e) = spawned {
        crate::error!("cannot start the expiry sweep: {e}");
    }
}

/// Admits a connection and gives it a thread, or turns it away with `503`
/// before any thread or buffer is spent on it.
fn spawn_connection(shared: &Arc<Shared>, stream: TcpStream, role: Role) {
    let Ok(peer) = stream.peer_addr() else {
        return;
    };
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
            crate::warn!("refused a connection from {peer}: {refusal:?}");
            let response = too_busy();
            // A fresh socket's buffer has room for this; never wait here.
            let _ = crate::sys::send_nonblocking(&stream, &response.to_bytes(false, false));
            return;
        }
    };
    let shared = shared.clone();
    let spawned = thread::Builder::new()
        .name("conn".into())
        .stack_size(CONNECTION_STACK)
        .spawn(move || serve_connection(&shared, stream, peer, permit, role));
    if let Err(e) = spawned {
        // The stream was moved into the closure and is dropped with it.
        crate::warn!("cannot start a connection thread: {e}");
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
fn serve_connection(
    shared: &Shared,
    stream: TcpStream,
    peer: SocketAddr,
    mut permit: ConnectionPermit,
    role: Role,
) {
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        handle_connection(shared, stream, peer, &mut permit, role)
    }));
    if outcome.is_err() {
        crate::error!("the connection from {peer} ended in a panic (see above); still serving");
    }
    drop(permit);
}

/// Serves requests on one connection until it closes or upgrades.
fn handle_connection(
    shared: &Shared,
    stream: TcpStream,
    peer: SocketAddr,
    permit: &mut ConnectionPermit,
    role: Role,
) {
    let mut conn = Connection::new(stream, shared.config.request_timeout);
    loop {
        let request = match conn.read_request() {
            Ok(request) => request,
            Err(error) => {
                refuse(&mut conn, &error, peer);
                return;
            }
        };
        // Behind a trusted proxy, the client is who X-Forwarded-For says;
        // from here on limits and logs use that address.
        let peer = proxy::client_addr(&shared.config.trusted_proxies, peer, &request);
        if permit.rebind(peer.ip()).is_err() {
            let _ = conn.write_response(&too_busy(), false, false);
            return;
        }
        if role == Role::Main && request.path() == "/ws" && request.method == "GET" {
            return upgrade(shared, conn, &request, peer);
        }
        let keep_alive = request.keep_alive();
        let response = match role {
            Role::Main => route(shared, &request, peer),
            Role::Metrics => route_metrics_only(shared, &request),
        };
        let head_only = request.method == "HEAD";
        if conn
            .write_response(&response, head_only, keep_alive)
            .is_err()
            || !keep_alive
        {
            return;
        }
    }
}

fn refuse(conn: &mut Connection, error: &RequestError, peer: SocketAddr) {
    if let Some(response) = error.response() {
        crate::debug!("{peer}: {error}");
        let _ = conn.write_response(&response, false, false);
    }
}

/// Every request but a WebSocket upgrade.
fn route(shared: &Shared, request: &Request, peer: SocketAddr) -> Response {
    let method = request.method.as_str();
    let own_metrics_listener = shared.config.metrics_bind.is_some();
    match (request.path(), method) {
        ("/metrics", _) if !own_metrics_listener => route_metrics_only(shared, request),
        ("/auth", "POST") => login(shared, request, peer),
        ("/auth/refresh", "POST") => refresh(shared, request, peer),
        ("/auth/refresh", _) => method_not_allowed("POST"),
        ("/auth", _) => method_not_allowed("POST"),
        ("/ws", _) => method_not_allowed("GET"),
        ("/healthz", "GET" | "HEAD") => Response::new(200, "text/plain; charset=utf-8", &b"ok"[..]),
        ("/healthz", _) => method_not_allowed("GET, HEAD"),
        (path, "GET" | "HEAD") => static_file(shared, path),
        _ => method_not_allowed("GET, HEAD"),
    }
}

/// The `--metrics-bind` listener: `/metrics` and nothing else.
fn route_metrics_only(shared: &Shared, request: &Request) -> Response {
    match (request.path(), request.method.as_str()) {
        ("/metrics", "GET" | "HEAD") => {
            let text = shared
                .metrics()
                .render(shared.connections.open(), shared.room.len());
            Response::new(
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                text.into_bytes(),
            )
        }
        ("/metrics", _) => method_not_allowed("GET, HEAD"),
        _ => Response::error(404, "not_found", "only /metrics is served here"),
    }
}

fn method_not_allowed(allow: &'static str) -> Response {
    Response::error(405, "method_not_allowed", &format!("allowed: {allow}"))
        .with_header("Allow", allow)
}

fn static_file(shared: &Shared, path: &str) -> Response {
    match shared.assets.get(path) {
        Ok((content_type, body)) => Response::new(200, content_type, body)
            .with_header("Content-Security-Policy", CONTENT_SECURITY_POLICY)
            .with_header("X-Content-Type-Options", "nosniff")
            .with_header("Cache-Control", "no-cache"),
        Err(error) => error.response(),
    }
}

/// `POST /auth` login form: JSON, or a URL-encoded form.
#[derive(Deserialize)]
struct Credentials {
    username: String,
    password: String,
}

fn login(shared: &Shared, request: &Request, peer: SocketAddr) -> Response {
    let credentials = match parse_credentials(request) {
        Ok(credentials) => credentials,
        Err(response) => return response,
    };
    let now = Instant::now();
    if let Err(wait) = shared.logins.begin(peer.ip(), now) {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        return Response::error(
            429,
            "rate_limited",
            &format!("too many failed logins; try again in {secs} s"),
        )
        .with_header("Retry-After", secs.max(1).to_string());
    }
    let Some(user) = shared
        .users
        .check_password(&credentials.username, &credentials.password)
    else {
        metrics::inc(&shared.metrics().auth_failures);
        crate::info!("login failed for {:?} from {peer}", credentials.username);
        return Response::json(401, &serde_json::json!({ "error": "invalid_credentials" }));
    };
    shared.logins.forgive(peer.ip(), now);
    let (token, claims) = shared.tokens.issue(user);
    metrics::inc(&shared.metrics().logins);
    crate::info!("login ok: {} from {peer}", user.username);
    token_response(&token, &claims)
}

/// `POST /auth/refresh` with `Authorization: Bearer <a valid token>`: a new
/// token for the same session, until `--max-session` after the login.
fn refresh(shared: &Shared, request: &Request, peer: SocketAddr) -> Response {
    let Some(token) = request
        .header("Authorization")
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("Bearer"))
        .map(|(_, token)| token.trim())
    else {
        shared.metrics().token_rejected(TokenError::Missing);
        return handshake::invalid_token();
    };
    match shared.tokens.refresh(token) {
        Ok((token, claims)) => {
            metrics::inc(&shared.metrics().refreshes);
            crate::info!("token refreshed: {} from {peer}", claims.username);
            token_response(&token, &claims)
        }
        Err(RefreshError::Token(reason)) => {
            shared.metrics().token_rejected(reason);
            handshake::invalid_token()
        }
        Err(RefreshError::SessionOver) => Response::error(
            401,
            "session_expired",
            "the session is older than --max-session; log in again",
        )
        .with_header("WWW-Authenticate", "Bearer error=\"invalid_token\""),
    }
}

/// `{"token":..,"token_type":"Bearer","expires_in":..}`, never cached
/// (RFC 6749 §5.1).
fn token_response(token: &str, claims: &Claims) -> Response {
    Response::json(
        200,
        &serde_json::json!({
            "token": token,
            "token_type": "Bearer",
            "expires_in": claims.exp.saturating_sub(claims.iat),
        }),
    )
    .with_header("Cache-Control", "no-store")
}

fn parse_credentials(request: &Request) -> Result<Credentials, Response> {
    let content_type = request
        .header("Content-Type")
        .unwrap_or("application/json")
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let bad = |message: String| Response::error(400, "bad_request", &message);
    match content_type.as_str() {
        "application/json" => {
            // An object, not just anything serde could map onto the struct
            // (it would also take `["user","password"]`).
            let shape = "body must be {\"username\":..,\"password\":..}";
            let value: serde_json::Value =
                serde_json::from_slice(&request.body).map_err(|e| bad(format!("{shape}: {e}")))?;
            if !value.is_object() {
                return Err(bad(shape.to_string()));
            }
            serde_json::from_value(value).map_err(|e| bad(format!("{shape}: {e}")))
        }
        "application/x-www-form-urlencoded" => {
            let field = |name: &str| {
                url::form_urlencoded::parse(&request.body)
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.into_owned())
                    .ok_or_else(|| bad(format!("form field {name:?} is missing")))
            };
            Ok(Credentials {
                username: field("username")?,
                password: field("password")?,
            })
        }
        other => Err(Response::error(
            415,
            "unsupported_media_type",
            &format!("Content-Type {other:?}: send application/json"),
        )),
    }
}

/// `GET /ws`: check the handshake and token, send the `101`, and become the
/// client's session.
fn upgrade(shared: &Shared, mut conn: Connection, request: &Request, peer: SocketAddr) {
    let mut trace = Trace::new(shared.config.trace_handshake);
    trace.note(|| format!("== WebSocket handshake from {peer}"));
    trace.request(request);
    let checked = handshake::check(
        request,
        &shared.tokens,
        &shared.config.allowed_origins,
        &mut trace,
    );
    let accepted = match checked {
        Ok(accepted) => accepted,
        Err(error) => {
            if let handshake::HandshakeError::Token(reason) = error {
                shared.metrics().token_rejected(reason);
            }
            crate::info!(
                "upgrade refused for {peer} ({}): {error:?}",
                crate::log::redact_token(&request.target)
            );
            let response = error.response();
            trace.response(&String::from_utf8_lossy(&response.to_bytes(false, false)));
            print_trace(trace);
            let _ = conn.write_response(&response, false, false);
            return;
        }
    };
    let switching = handshake::switching_protocols(&accepted.accept);
    trace.response(&switching);
    print_trace(trace);
    if conn.write_raw(switching.as_bytes()).is_err() {
        return;
    }
    let (stream, leftover) = conn.into_parts();
    session::run(shared, stream, leftover, accepted.claims, peer);
}

fn print_trace(trace: Trace) {
    if let Some(text) = trace.finish() {
        crate::log::raw(&text);
    }
}
