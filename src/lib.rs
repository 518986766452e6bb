//! # jwtchat
//!
//! A small WebSocket chat server that authenticates every connection with a
//! JSON Web Token, written on the standard library and threads: blocking
//! I/O, one thread per connection, no async runtime and no web framework,
//! so that every step from `POST /auth` to a broadcast frame can be read.
//!
//! The modules follow a request's journey:
//!
//! | step | module |
//! |---|---|
//! | read an HTTP request with limits, write a response | [`http`] |
//! | accept, admit, one thread per connection | [`server`] |
//! | route it to its handler | [`routes`] |
//! | log in: users, passwords, tokens | [`auth`] |
//! | serve the front end | [`assets`] |
//! | upgrade to WebSocket (RFC 6455 §4.2) | [`handshake`] |
//! | one client's reader and writer threads | [`session`], [`outbox`] |
//! | the pool, broadcast and expiry | [`room`] |
//! | connection, login and message limits | [`limits`] |
//! | counters for `GET /metrics` | [`metrics`] |
//! | the client's address behind a reverse proxy | [`proxy`] |
//! | the JSON messages and close codes | [`protocol`], [`frame`] |
//! | settings, defaults and their ranges | [`config`] |
//!
//! Start a server in-process (this is how the tests and benchmarks do it):
//!
//! ```no_run
//! let mut config = jwtchat::Config::default();
//! config.bind = "127.0.0.1:0".into();
//! let server = jwtchat::Server::bind(config).expect("start");
//! println!("listening on http://{}", server.local_addr());
//! let handle = server.spawn().expect("spawn");
//! // ... talk to it ...
//! handle.stop();
//! ```
//!
//! The `jwtchat` binary adds the command line (`src/cli.rs`) and the
//! process set-up (`src/process.rs`: signals, the open-file limit, the
//! allocator) around the same two calls.

// The one exception is `sys`: a send that never blocks, one commented call.
#![deny(unsafe_code)]

pub mod log;

pub mod assets;
pub mod auth;
pub mod clock;
pub mod close;
#[cfg(feature = "redis")]
pub mod cluster;
pub mod config;
pub mod frame;
pub mod handshake;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod outbox;
pub mod presence;
pub mod protocol;
pub mod proxy;
pub mod room;
pub mod routes;
pub mod server;
pub mod session;
pub mod sys;

pub use config::{Config, ConfigError};
pub use server::{Server, ServerHandle, StartError};

/// What every connection thread shares: configuration, accounts, token
/// keys, the front end and the room.
pub struct Shared {
    pub config: Config,
    pub users: auth::Users,
    pub tokens: auth::Tokens,
    pub assets: assets::Assets,
    pub room: std::sync::Arc<room::Room>,
    pub connections: std::sync::Arc<limits::ConnectionLimits>,
    pub logins: limits::LoginThrottle,
    /// Message budgets per user and per IP (`None`: no such limit).
    pub message_budgets: Option<limits::SharedBudgets>,
    pub refreshes: limits::RefreshLimit,
}

impl Shared {
    /// The server's counters (kept by the room, shared by everyone).
    pub fn metrics(&self) -> &metrics::Metrics {
        self.room.metrics()
    }
}
