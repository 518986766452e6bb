//! # jwtchat
//!
//! A small WebSocket chat server that authenticates every connection with a
//! JSON Web Token, written on the standard library and threads: blocking
//! I/O, one thread per connection, no async runtime and no web framework,
//! so that every step from `POST /auth` to a broadcast frame can be read.
//!
//! The API is what an embedder needs to start one: [`Config`] (with
//! [`Config::validate`]), [`Server`] and [`ServerHandle`], [`StartError`],
//! the [`clock`] a test can stop, the [`log`] level and format, and
//! [`hash_password`] for users files. Everything else is the server's own
//! and may change; the README's "How it works" maps every file.
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

// The one exception is `sys`: a send that never blocks, and giving a
// thread's dead stack pages back; each call commented.
#![deny(unsafe_code)]
// Every public item is documented (the fuzzing hooks are not the API).
#![cfg_attr(not(feature = "fuzzing"), deny(missing_docs))]

// The API: what an embedder (the binary, a test, a bench) starts a server
// with. Everything else is the server's own business and may change.
pub mod clock;
pub mod config;
pub mod log;

pub use auth::{UsersError, hash_password};
pub use clock::{Clock, ManualClock};
pub use config::{Config, ConfigError};
pub use server::{Server, ServerHandle, StartError};

mod access;
mod assets;
mod auth;
mod capacity;
mod close;
#[cfg(feature = "redis")]
mod cluster;
mod frame;
mod handshake;
mod http;
mod limits;
mod metrics;
mod outbox;
mod presence;
mod protocol;
mod proxy;
mod room;
mod rooms;
mod routes;
mod server;
mod session;
mod signing;
// The message store behind `--data-dir` (#16). Not called by the server yet:
// the rooms' epochs and recovery wire it in, and this allow goes then.
#[cfg(feature = "store")]
mod store;
mod sys;

/// The parsers and checks the fuzz targets in `fuzz/` drive directly; only
/// with `--features fuzzing`, never part of the API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::assets::resolve;
    pub use crate::auth::Tokens;
    pub use crate::handshake::{Trace, bearer_token, check};
    pub use crate::http::{content_length, parse_head};
    pub use crate::protocol::{Incoming, decode};
}

/// What every connection thread shares: configuration, accounts, token
/// keys, the front end and the rooms.
pub(crate) struct Shared {
    pub config: Config,
    pub accounts: Accounts,
    pub assets: assets::Assets,
    pub rooms: std::sync::Arc<rooms::Rooms>,
    pub connections: std::sync::Arc<limits::ConnectionLimits>,
    /// Message budgets per user and per IP (`None`: no such limit).
    pub message_budgets: Option<limits::SharedBudgets>,
}

/// What logging in, renewing a token and `reauth` need, and nothing else:
/// the users, the token keys, the login and refresh limits, and the time.
pub(crate) struct Accounts {
    pub users: auth::Users,
    pub tokens: auth::Tokens,
    pub logins: limits::LoginThrottle,
    pub refreshes: limits::RefreshLimit,
    pub clock: Clock,
}

impl Shared {
    /// The server's counters (kept by the rooms, shared by everyone).
    fn metrics(&self) -> &metrics::Metrics {
        self.rooms.metrics()
    }

    /// The counters in Prometheus's text format.
    fn metrics_text(&self) -> String {
        self.metrics().render(
            self.connections.open(),
            self.rooms.clients(),
            self.rooms.len(),
        )
    }
}
