//! Numbers an operator can watch, served at `GET /metrics` in the
//! Prometheus text exposition format (version 0.0.4).
//!
//! Every counter is a relaxed atomic: incrementing one costs about as much
//! as an uncontended add, so the broadcast path can count every delivery.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::auth::TokenError;
use crate::limits::LoginRefusal;

/// Token rejection reasons, in the order they are reported.
const TOKEN_REASONS: [TokenError; 8] = [
    TokenError::Missing,
    TokenError::Malformed,
    TokenError::BadSignature,
    TokenError::WrongAlgorithm,
    TokenError::WrongIssuer,
    TokenError::NotYetValid,
    TokenError::Expired,
    TokenError::Revoked,
];

/// The login throttle's limits, as [`LoginRefusal::limit`] names them.
const LOGIN_LIMITS: [&str; 3] = ["failures_per_ip", "attempts_per_ip", "logins_per_user"];

#[derive(Default)]
pub struct Metrics {
    /// WebSocket connections upgraded and started
    /// (`jwtchat_websocket_connections_total`).
    pub websocket_connections: AtomicU64,
    pub messages_broadcast: AtomicU64,
    pub deliveries: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub expiry_disconnects: AtomicU64,
    pub slow_consumer_disconnects: AtomicU64,
    pub auth_failures: AtomicU64,
    pub logins: AtomicU64,
    /// Logins dropped before their password check: the client had gone.
    pub logins_abandoned: AtomicU64,
    pub refreshes: AtomicU64,
    tokens_rejected: [AtomicU64; TOKEN_REASONS.len()],
    /// Logins refused by the throttle, by limit ([`LOGIN_LIMITS`]).
    logins_throttled: [AtomicU64; LOGIN_LIMITS.len()],
    /// With `--redis` only.
    pub redis: Option<Arc<RedisCounters>>,
    /// How many rooms each connection is in.
    pub subscriptions: SubscriptionHistogram,
}

/// Upper bounds of the subscriptions-per-connection buckets (the default
/// `--max-rooms-per-connection` is the last).
const SUBSCRIPTION_BUCKETS: [u64; 7] = [1, 2, 4, 8, 16, 32, 64];

/// Rooms per open connection, as a histogram of the connections open now
/// (`jwtchat_subscriptions_per_connection`): each connection is counted
/// once, in the bucket of its current number of rooms, and moves between
/// buckets as it subscribes and unsubscribes. No room names: they would
/// make a label per room.
#[derive(Default)]
pub struct SubscriptionHistogram {
    /// Connections with at most `SUBSCRIPTION_BUCKETS[i]` rooms and more
    /// than the bound before (not cumulative); the last is `+Inf`.
    buckets: [AtomicU64; SUBSCRIPTION_BUCKETS.len() + 1],
    /// Subscriptions of every open connection together.
    sum: AtomicU64,
}

impl SubscriptionHistogram {
    fn bucket(rooms: usize) -> usize {
        SUBSCRIPTION_BUCKETS
            .iter()
            .position(|&bound| rooms as u64 <= bound)
            .unwrap_or(SUBSCRIPTION_BUCKETS.len())
    }

    /// A connection went from `from` rooms to `to` (`None`: it was not, or
    /// is no longer, open).
    pub fn moved(&self, from: Option<usize>, to: Option<usize>) {
        if let Some(from) = from {
            self.buckets[Self::bucket(from)].fetch_sub(1, Ordering::Relaxed);
            self.sum.fetch_sub(from as u64, Ordering::Relaxed);
        }
        if let Some(to) = to {
            inc(&self.buckets[Self::bucket(to)]);
            add(&self.sum, to as u64);
        }
    }

    fn render(&self, out: &mut String) {
        out.push_str(
            "# HELP jwtchat_subscriptions_per_connection Rooms each open connection is in \
             (a histogram of the connections open now).\n\
             # TYPE jwtchat_subscriptions_per_connection histogram\n",
        );
        let mut cumulative = 0;
        for (i, count) in self.buckets.iter().enumerate() {
            cumulative += count.load(Ordering::Relaxed);
            let le = SUBSCRIPTION_BUCKETS
                .get(i)
                .map_or("+Inf".to_string(), |b| b.to_string());
            let _ = writeln!(
                out,
                "jwtchat_subscriptions_per_connection_bucket{{le=\"{le}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "jwtchat_subscriptions_per_connection_sum {}\njwtchat_subscriptions_per_connection_count {cumulative}",
            self.sum.load(Ordering::Relaxed)
        );
    }
}

/// What the Redis relay counts (`--redis`).
#[derive(Default)]
pub struct RedisCounters {
    /// 1 while the relay follows the stream, 0 while Redis is unreachable.
    pub up: AtomicU64,
    /// Redis operations that failed.
    pub errors: AtomicU64,
    /// Times the stream reader got its connection back after losing it.
    pub reconnects: AtomicU64,
    /// Messages the stream no longer held when this instance came to read
    /// them.
    pub missed: AtomicU64,
}

/// Adds one.
pub fn inc(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Adds `n`.
pub fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl Metrics {
    /// Counters for a server; with `redis`, the relay's too.
    pub fn new(redis: bool) -> Metrics {
        Metrics {
            redis: redis.then(Arc::default),
            ..Metrics::default()
        }
    }

    pub fn token_rejected(&self, reason: TokenError) {
        if let Some(i) = TOKEN_REASONS.iter().position(|r| *r == reason) {
            inc(&self.tokens_rejected[i]);
        }
    }

    pub fn login_throttled(&self, refusal: LoginRefusal) {
        if let Some(i) = LOGIN_LIMITS.iter().position(|l| *l == refusal.limit()) {
            inc(&self.logins_throttled[i]);
        }
    }

    /// The exposition text. `tcp_connections_open` (every accepted TCP
    /// connection still open, HTTP or WebSocket), `clients` (WebSocket
    /// clients) and `rooms` are gauges read from their owners at the time
    /// of the scrape.
    pub fn render(&self, tcp_connections_open: usize, clients: usize, rooms: usize) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
            );
        };
        metric(
            "jwtchat_tcp_connections_open",
            "gauge",
            "Open TCP connections (HTTP and WebSocket).",
            tcp_connections_open as u64,
        );
        metric(
            "jwtchat_websocket_clients",
            "gauge",
            "Connected WebSocket clients.",
            clients as u64,
        );
        metric(
            "jwtchat_rooms",
            "gauge",
            "Rooms that exist: with anyone in them, or with history (general always).",
            rooms as u64,
        );
        metric(
            "jwtchat_websocket_connections_total",
            "counter",
            "WebSocket connections accepted (upgraded) since start.",
            get(&self.websocket_connections),
        );
        metric(
            "jwtchat_messages_broadcast_total",
            "counter",
            "Chat messages broadcast.",
            get(&self.messages_broadcast),
        );
        metric(
            "jwtchat_deliveries_total",
            "counter",
            "Frames handed to clients (a broadcast to N clients is N).",
            get(&self.deliveries),
        );
        metric(
            "jwtchat_bytes_sent_total",
            "counter",
            "WebSocket bytes written to clients.",
            get(&self.bytes_sent),
        );
        metric(
            "jwtchat_expiry_disconnects_total",
            "counter",
            "Clients closed with 4001 because their token expired.",
            get(&self.expiry_disconnects),
        );
        metric(
            "jwtchat_slow_consumer_disconnects_total",
            "counter",
            "Clients closed with 4008 because they read too slowly.",
            get(&self.slow_consumer_disconnects),
        );
        metric(
            "jwtchat_auth_failures_total",
            "counter",
            "Failed logins (wrong username or password).",
            get(&self.auth_failures),
        );
        metric(
            "jwtchat_logins_total",
            "counter",
            "Successful logins.",
            get(&self.logins),
        );
        metric(
            "jwtchat_logins_abandoned_total",
            "counter",
            "Logins whose client had gone before its password check: no check was run.",
            get(&self.logins_abandoned),
        );
        metric(
            "jwtchat_token_refreshes_total",
            "counter",
            "Tokens renewed at /auth/refresh.",
            get(&self.refreshes),
        );
        if let Some(redis) = &self.redis {
            metric(
                "jwtchat_redis_up",
                "gauge",
                "1 while the room is shared over Redis, 0 while Redis is unreachable.",
                get(&redis.up),
            );
            metric(
                "jwtchat_redis_errors_total",
                "counter",
                "Redis operations that failed.",
                get(&redis.errors),
            );
            metric(
                "jwtchat_redis_reconnects_total",
                "counter",
                "Times the connection to Redis came back after it was lost.",
                get(&redis.reconnects),
            );
            metric(
                "jwtchat_redis_messages_missed_total",
                "counter",
                "Messages trimmed from the Redis stream before this instance read them.",
                get(&redis.missed),
            );
        }
        self.subscriptions.render(&mut out);
        out.push_str("# HELP jwtchat_tokens_rejected_total Tokens refused, by reason.\n");
        out.push_str("# TYPE jwtchat_tokens_rejected_total counter\n");
        for (reason, count) in TOKEN_REASONS.iter().zip(&self.tokens_rejected) {
            let _ = writeln!(
                out,
                "jwtchat_tokens_rejected_total{{reason=\"{}\"}} {}",
                reason.as_str(),
                get(count)
            );
        }
        out.push_str(
            "# HELP jwtchat_logins_throttled_total Logins refused (429) by the login throttle, by limit.\n\
             # TYPE jwtchat_logins_throttled_total counter\n",
        );
        for (limit, count) in LOGIN_LIMITS.iter().zip(&self.logins_throttled) {
            let _ = writeln!(
                out,
                "jwtchat_logins_throttled_total{{limit=\"{limit}\"}} {}",
                get(count)
            );
        }
        out.push_str(
            "# HELP jwtchat_build_info The running version.\n# TYPE jwtchat_build_info gauge\n",
        );
        let _ = writeln!(
            out,
            "jwtchat_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_with_help_and_type() {
        let m = Metrics::default();
        inc(&m.deliveries);
        m.token_rejected(TokenError::Expired);
        m.subscriptions.moved(None, Some(1));
        m.subscriptions.moved(None, Some(1));
        m.subscriptions.moved(Some(1), Some(3));
        let text = m.render(3, 2, 5);
        assert!(text.contains("jwtchat_rooms 5\n"));
        assert!(text.contains(
            "jwtchat_subscriptions_per_connection_bucket{le=\"1\"} 1\n\
             jwtchat_subscriptions_per_connection_bucket{le=\"2\"} 1\n\
             jwtchat_subscriptions_per_connection_bucket{le=\"4\"} 2\n"
        ));
        assert!(text.contains(
            "jwtchat_subscriptions_per_connection_bucket{le=\"+Inf\"} 2\n\
             jwtchat_subscriptions_per_connection_sum 4\n\
             jwtchat_subscriptions_per_connection_count 2\n"
        ));
        assert!(
            text.contains("# TYPE jwtchat_deliveries_total counter\njwtchat_deliveries_total 1\n")
        );
        assert!(text.contains("jwtchat_tokens_rejected_total{reason=\"expired\"} 1\n"));
        assert!(text.contains("jwtchat_tcp_connections_open 3\n"));
        assert!(text.ends_with(&format!(
            "jwtchat_build_info{{version=\"{}\"}} 1\n",
            env!("CARGO_PKG_VERSION")
        )));
    }
}
