//! The router and the handlers behind it: what each request gets.
//!
//! | request | answer |
//! |---|---|
//! | `POST /auth` | a token, or `401`/`400`/`413`/`415`/`429` ([`crate::auth`]) |
//! | `POST /auth/refresh` | a renewed token, or `401` |
//! | `GET /ws` | the WebSocket upgrade ([`crate::handshake`], then [`crate::session`]) |
//! | `GET /healthz` | `200 ok`, or `503` while Redis is unreachable |
//! | `GET /metrics` | the counters ([`crate::metrics`]), with `--metrics-public` only; else like any missing file |
//! | `GET`/`HEAD` anything else | a front-end file ([`crate::assets`]) |

use std::net::SocketAddr;

use serde::Deserialize;

use crate::assets::Assets;
use crate::auth::{Claims, PasswordCheck, RefreshError, TokenError};
use crate::handshake::Trace;
use crate::http::{Connection, Request, Response};
use crate::limits::LoginRefusal;
use crate::log::Level;
use crate::metrics::Metrics;
use crate::protocol::Since;
use crate::room::Room;
use crate::session::Upgraded;
use crate::{Accounts, Shared, handshake, metrics};

/// Headers on every front-end file: a strict Content-Security-Policy (the
/// page has no inline script or style) and no MIME sniffing.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; connect-src 'self' ws: wss:; \
     img-src 'self' data:; style-src 'self'; base-uri 'none'; form-action 'self'; \
     frame-ancestors 'none'";

/// Why a request (other than an upgrade, see [`handshake::HandshakeError`])
/// was refused. Each maps to one status and JSON error body, in
/// [`Refusal::response`] and nowhere else.
enum Refusal {
    /// `405`, with the methods the path does take.
    MethodNotAllowed(&'static str),
    /// `404` from the `--metrics-bind` listener for anything but `/metrics`.
    OnlyMetricsHere,
    /// `503`: the room cannot take messages (Redis is unreachable).
    Unavailable(String),
    /// `400`: a login body that is not the credentials.
    BadBody(String),
    /// `415`: a login body in another content type.
    UnsupportedMediaType(String),
    /// `401 invalid_credentials`: unknown user and wrong password alike.
    InvalidCredentials,
    /// `400`: the client hung up while its login waited; nobody reads this.
    ClientGone,
    /// `429` with `Retry-After`: a login or refresh limit.
    RateLimited {
        what: &'static str,
        wait: std::time::Duration,
    },
    /// `401 invalid_token`, as for `/ws`.
    InvalidToken,
    /// `401 session_expired`: past `--max-session`.
    SessionOver,
}

impl Refusal {
    fn response(&self) -> Response {
        match self {
            Refusal::MethodNotAllowed(allow) => {
                Response::error(405, "method_not_allowed", &format!("allowed: {allow}"))
                    .with_header("Allow", *allow)
            }
            Refusal::OnlyMetricsHere => {
                Response::error(404, "not_found", "only /metrics is served here")
            }
            Refusal::Unavailable(why) => Response::error(503, "unavailable", why),
            Refusal::BadBody(why) => Response::error(400, "bad_request", why),
            Refusal::UnsupportedMediaType(what) => Response::error(
                415,
                "unsupported_media_type",
                &format!(
                    "Content-Type {what:?}: send application/json or \
                     application/x-www-form-urlencoded"
                ),
            ),
            Refusal::InvalidCredentials => {
                Response::json(401, &serde_json::json!({ "error": "invalid_credentials" }))
            }
            Refusal::ClientGone => {
                Response::error(400, "bad_request", "the client closed the connection")
            }
            Refusal::RateLimited { what, wait } => {
                // Whole seconds, rounded up: never "try again in 0 s".
                let secs = (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1);
                Response::error(
                    429,
                    "rate_limited",
                    &format!("{what}; try again in {secs} s"),
                )
                .with_header("Retry-After", secs.to_string())
            }
            Refusal::InvalidToken => handshake::invalid_token(),
            Refusal::SessionOver => Response::error(
                401,
                "session_expired",
                "the session is older than --max-session; log in again",
            )
            .with_header("WWW-Authenticate", "Bearer error=\"invalid_token\""),
        }
    }
}

/// What a handler answers: a response, or why not.
type Answer = Result<Response, Refusal>;

/// Every request but a WebSocket upgrade. `conn` is the request's
/// connection, for a handler that must know whether its client is still there.
pub fn route(shared: &Shared, request: &Request, peer: SocketAddr, conn: &Connection) -> Response {
    let method = request.method.as_str();
    let answer = match (request.path(), method) {
        // Otherwise `/metrics` is answered like any path that does not
        // exist: the counters say why tokens fail, which the uniform 401
        // is there to hide (`--metrics-bind` serves them privately).
        ("/metrics", _) if shared.config.metrics_public => metrics_only(shared, request),
        ("/auth", "POST") => login(&shared.accounts, shared.metrics(), request, peer, conn),
        ("/auth/refresh", "POST") => refresh(&shared.accounts, shared.metrics(), request, peer),
        ("/auth/refresh", _) => Err(Refusal::MethodNotAllowed("POST")),
        ("/auth", _) => Err(Refusal::MethodNotAllowed("POST")),
        ("/ws", _) => Err(Refusal::MethodNotAllowed("GET")),
        ("/healthz", "GET" | "HEAD") => health(shared.rooms.general()),
        ("/healthz", _) => Err(Refusal::MethodNotAllowed("GET, HEAD")),
        (path, "GET" | "HEAD") => Ok(static_file(&shared.assets, path)),
        _ => Err(Refusal::MethodNotAllowed("GET, HEAD")),
    };
    answer.unwrap_or_else(|refusal| refusal.response())
}

/// `200 ok`, or `503` with the reason when the room cannot take messages
/// (with `--redis`: Redis is unreachable), so a load balancer can steer
/// new clients elsewhere.
fn health(room: &Room) -> Answer {
    match room.health() {
        Ok(()) => Ok(Response::new(200, "text/plain; charset=utf-8", &b"ok"[..])),
        Err(why) => Err(Refusal::Unavailable(why.0)),
    }
}

/// The `--metrics-bind` listener: `/metrics` and nothing else.
pub fn route_metrics_only(shared: &Shared, request: &Request) -> Response {
    metrics_only(shared, request).unwrap_or_else(|refusal| refusal.response())
}

fn metrics_only(shared: &Shared, request: &Request) -> Answer {
    match (request.path(), request.method.as_str()) {
        ("/metrics", "GET" | "HEAD") => Ok(Response::new(
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            shared.metrics_text().into_bytes(),
        )),
        ("/metrics", _) => Err(Refusal::MethodNotAllowed("GET, HEAD")),
        _ => Err(Refusal::OnlyMetricsHere),
    }
}

fn static_file(assets: &Assets, path: &str) -> Response {
    match assets.get(path) {
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

fn login(
    accounts: &Accounts,
    metrics: &Metrics,
    request: &Request,
    peer: SocketAddr,
    conn: &Connection,
) -> Answer {
    let credentials = parse_credentials(request)?;
    let username = &credentials.username;
    let attempt = match accounts
        .logins
        .begin(peer.ip(), username, accounts.clock.instant())
    {
        Ok(attempt) => attempt,
        Err(refusal) => {
            metrics.login_throttled(refusal);
            log_throttled(refusal, username, peer);
            return Err(Refusal::RateLimited {
                what: refusal.reason(),
                wait: refusal.wait(),
            });
        }
    };
    // The password queue can be long under load: a client that gave up
    // while waiting in it must not cost an argon2 check, nor delay the
    // clients queued behind it.
    let checked = accounts
        .users
        .check_password_if(username, &credentials.password, || !conn.client_gone());
    let user = match checked {
        PasswordCheck::Match(user) => user,
        PasswordCheck::NoMatch => {
            accounts.logins.failed(attempt);
            metrics::inc(&metrics.auth_failures);
            crate::warn!("login failed for {username:?} from {peer}");
            return Err(Refusal::InvalidCredentials);
        }
        PasswordCheck::Abandoned => {
            accounts.logins.abandoned(attempt);
            metrics::inc(&metrics.logins_abandoned);
            crate::debug!("login for {username:?} from {peer} dropped: the client had gone");
            // Nobody reads this; the write fails and the connection ends.
            return Err(Refusal::ClientGone);
        }
    };
    accounts.logins.succeeded(attempt);
    let (token, claims) = accounts.tokens.issue(user);
    metrics::inc(&metrics.logins);
    crate::info!("login ok: {:?} from {peer}", user.username);
    Ok(token_response(
        &token,
        &claims,
        accounts.tokens.session_end(&claims),
    ))
}

/// One WARN line a second for each login limit, the rest at DEBUG: a flood
/// of refused logins is one line a second in the log, and every refusal is
/// counted in `jwtchat_logins_throttled_total`.
static THROTTLE_LOG: [crate::log::OncePerSecond; 3] = [
    crate::log::OncePerSecond::new(),
    crate::log::OncePerSecond::new(),
    crate::log::OncePerSecond::new(),
];

fn log_throttled(refusal: LoginRefusal, username: &str, peer: SocketAddr) {
    let slot = match refusal {
        LoginRefusal::FailuresFromIp(_) => 0,
        LoginRefusal::LoginsFromIp(_) => 1,
        LoginRefusal::LoginsForUser(_) => 2,
    };
    let level = if THROTTLE_LOG[slot].first() {
        Level::Warn
    } else {
        Level::Debug
    };
    crate::log::write(
        level,
        format_args!(
            "login throttled for {username:?} from {peer}: {refusal} ({} per minute)",
            refusal.option()
        ),
    );
}

/// `POST /auth/refresh` with `Authorization: Bearer <a valid token>`: a new
/// token for the same session, until `--max-session` after the login, while
/// the user is still in the users file as the token knew them.
fn refresh(accounts: &Accounts, metrics: &Metrics, request: &Request, peer: SocketAddr) -> Answer {
    let Some(token) = handshake::authorization_bearer(request) else {
        metrics.token_rejected(TokenError::Missing);
        return Err(Refusal::InvalidToken);
    };
    let refreshed = accounts.tokens.refresh(token, &accounts.users);
    // Counted per subject once the token is verified: counted before, anyone
    // could use up a user's refreshes with garbage tokens naming their `sub`.
    // (The new token is signed first and then thrown away when refused: an
    // HMAC is cheap next to the log line and response this limit saves.)
    if let Ok((_, claims)) = &refreshed
        && let Err(wait) = accounts
            .refreshes
            .take(&claims.sub, accounts.clock.instant())
    {
        crate::debug!(
            "token refresh for {:?} from {peer} refused: too many",
            claims.username
        );
        return Err(Refusal::RateLimited {
            what: "too many token refreshes",
            wait,
        });
    }
    match refreshed {
        Ok((token, claims)) => {
            metrics::inc(&metrics.refreshes);
            crate::info!("token refreshed: {:?} from {peer}", claims.username);
            Ok(token_response(
                &token,
                &claims,
                accounts.tokens.session_end(&claims),
            ))
        }
        Err(RefreshError::Token(reason)) => {
            metrics.token_rejected(reason);
            Err(Refusal::InvalidToken)
        }
        Err(RefreshError::SessionOver) => Err(Refusal::SessionOver),
    }
}

/// `{"token":..,"token_type":"Bearer","expires_in":..,"session_expires_at":..}`,
/// never cached (RFC 6749 §5.1). `session_expires_at` (Unix seconds) is
/// when `--max-session` stops renewals, so a page can warn before it.
fn token_response(token: &str, claims: &Claims, session_end: u64) -> Response {
    Response::json(
        200,
        &serde_json::json!({
            "token": token,
            "token_type": "Bearer",
            "expires_in": claims.exp.saturating_sub(claims.iat),
            "session_expires_at": session_end,
        }),
    )
    .with_header("Cache-Control", "no-store")
}

fn parse_credentials(request: &Request) -> Result<Credentials, Refusal> {
    let content_type = request
        .header("Content-Type")
        .unwrap_or("application/json")
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let bad = Refusal::BadBody;
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
        other => Err(Refusal::UnsupportedMediaType(other.to_string())),
    }
}

/// `GET /ws`: check the handshake and token and send the `101`. What the
/// session needs is returned, not run from here: the HTTP phase's frames
/// and the request itself are gone before the session starts (see
/// `server::serve_connection`). `None`: refused, or the client left.
pub fn upgrade(
    shared: &Shared,
    mut conn: Connection,
    request: &Request,
    peer: SocketAddr,
) -> Option<Upgraded> {
    let mut trace = Trace::new(shared.config.trace_handshake);
    trace.note(|| format!("== WebSocket handshake from {peer}"));
    trace.request(request);
    let checked = handshake::check(
        request,
        &shared.accounts.tokens,
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
                "upgrade refused for {peer} ({:?}): {error}",
                crate::log::redact_target(&request.target)
            );
            let response = error.response();
            trace.response(&String::from_utf8_lossy(&response.to_bytes(false, false)));
            print_trace(trace);
            let _ = conn.write_response(&response, false, false);
            return None;
        }
    };
    // Checked before the 101, so that a malformed one is a clear 400 rather
    // than a resume silently not done.
    let since = match resume_point(request) {
        Ok(since) => since,
        Err(why) => {
            crate::info!("upgrade refused for {peer}: {why}");
            let _ = conn.write_response(&Response::error(400, "bad_request", &why), false, false);
            return None;
        }
    };
    crate::debug!(
        "{peer}: GET {:?} 101, upgraded to WebSocket",
        crate::log::redact_target(&request.target)
    );
    let switching = handshake::switching_protocols(&accepted.accept);
    trace.response(&switching);
    print_trace(trace);
    if conn.write_raw(switching.as_bytes()).is_err() {
        return None;
    }
    let (stream, leftover) = conn.into_parts();
    Some(Upgraded {
        stream,
        leftover,
        claims: accepted.claims,
        peer,
        since,
    })
}

/// Where the client's view of `general` ends, to resume it in the
/// `welcome`: the `Jwtchat-Since` header, else the `since` query parameter
/// (all a browser's WebSocket can send), as `general:EPOCH:SEQ`.
fn resume_point(request: &Request) -> Result<Option<Since>, String> {
    let value = match request.header("Jwtchat-Since") {
        Some(value) => value.to_string(),
        None => match request.query_param("since") {
            Some(value) => value,
            None => return Ok(None),
        },
    };
    let (room, since) = Since::parse_with_room(value.trim())?;
    if room.as_str() != crate::access::GENERAL {
        return Err(format!(
            "since names {:?}: only general is resumed in the welcome; \
             resume other rooms with subscribe",
            room.as_str()
        ));
    }
    Ok(Some(since))
}

fn print_trace(trace: Trace) {
    if let Some(text) = trace.finish() {
        crate::log::raw(&text);
    }
}
