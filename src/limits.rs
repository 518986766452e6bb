//! Abuse limits: how many connections, how many logins and refreshes, how
//! many messages. Each answers "may this go ahead?" cheaply and holds bounded
//! memory, so a hostile client costs the server little and everyone else
//! nothing.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The unit a per-IP limit counts: an IPv4 address, or an IPv6 /64 (one
/// host or home network is routinely given a whole /64, so counting single
/// IPv6 addresses would let it choose a fresh one per attempt).
fn limit_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => IpAddr::V6(std::net::Ipv6Addr::from_bits(
            v6.to_bits() & !((1u128 << 64) - 1),
        )),
    }
}

// ---------------------------------------------------------------------------
// Connections

/// Open connections, in all and per client IP.
pub struct ConnectionLimits {
    max_total: usize,
    max_per_ip: usize,
    open: Mutex<OpenConnections>,
}

#[derive(Default)]
struct OpenConnections {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// One admitted connection; dropping it frees its place.
pub struct ConnectionPermit {
    limits: Arc<ConnectionLimits>,
    /// The IP it counts against; `None` for a trusted proxy's connection
    /// until [`ConnectionPermit::rebind`] names the client behind it.
    ip: Option<IpAddr>,
}

/// Why a connection was turned away (answered `503`).
#[derive(Debug, PartialEq, Eq)]
pub enum ConnectionRefusal {
    ServerFull,
    TooManyFromIp,
}

impl std::fmt::Display for ConnectionRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ConnectionRefusal::ServerFull => "server full",
            ConnectionRefusal::TooManyFromIp => "too many connections from this address",
        })
    }
}

impl ConnectionLimits {
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<ConnectionLimits> {
        Arc::new(ConnectionLimits {
            max_total,
            max_per_ip,
            open: Mutex::new(OpenConnections::default()),
        })
    }

    /// Admits a connection from `ip` (`None`: a trusted proxy, counted per
    /// client later), or says why not.
    pub fn admit(
        self: &Arc<Self>,
        ip: Option<IpAddr>,
    ) -> Result<ConnectionPermit, ConnectionRefusal> {
        let mut open = lock(&self.open);
        if open.total >= self.max_total {
            return Err(ConnectionRefusal::ServerFull);
        }
        if let Some(ip) = ip {
            open.take_ip_place(ip, self.max_per_ip)?;
        }
        open.total += 1;
        Ok(ConnectionPermit {
            limits: self.clone(),
            ip,
        })
    }

    /// Connections admitted at most.
    pub fn max_total(&self) -> usize {
        self.max_total
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        lock(&self.open).total
    }
}

impl OpenConnections {
    fn take_ip_place(&mut self, ip: IpAddr, max: usize) -> Result<(), ConnectionRefusal> {
        let ip = limit_key(ip);
        let from_ip = self.per_ip.entry(ip).or_insert(0);
        if *from_ip >= max {
            if *from_ip == 0 {
                self.per_ip.remove(&ip);
            }
            return Err(ConnectionRefusal::TooManyFromIp);
        }
        *from_ip += 1;
        Ok(())
    }

    fn free_ip_place(&mut self, ip: IpAddr) {
        let ip = limit_key(ip);
        if let Some(count) = self.per_ip.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                self.per_ip.remove(&ip);
            }
        }
    }
}

impl ConnectionPermit {
    /// Counts this connection against `ip` from now on: the client a
    /// trusted proxy named. Refused if that client has too many already.
    pub fn rebind(&mut self, ip: IpAddr) -> Result<(), ConnectionRefusal> {
        if self.ip == Some(ip) {
            return Ok(());
        }
        let mut open = lock(&self.limits.open);
        open.take_ip_place(ip, self.limits.max_per_ip)?;
        if let Some(old) = self.ip.replace(ip) {
            open.free_ip_place(old);
        }
        Ok(())
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut open = lock(&self.limits.open);
        open.total = open.total.saturating_sub(1);
        if let Some(ip) = self.ip {
            open.free_ip_place(ip);
        }
    }
}

// ---------------------------------------------------------------------------
// Logins and refreshes

/// Keys tracked at most by one [`Window`]. Past this, keys with no event in
/// the window are dropped; if every one is still active, new keys are
/// refused until some age out (failing closed: memory stays bounded, and
/// filling the table takes tens of thousands of addresses or accounts).
const MAX_TRACKED_KEYS: usize = 65_536;

/// Events per key over a sliding window, at most `max` of them.
struct Window<K> {
    max: u32,
    window: Duration,
    events: HashMap<K, VecDeque<Instant>>,
}

impl<K: std::hash::Hash + Eq + Clone> Window<K> {
    fn new(max: u32, window: Duration) -> Window<K> {
        Window {
            max,
            window,
            events: HashMap::new(),
        }
    }

    /// `Err(wait)` if `key` has had `max` events in the window (or the table
    /// is full). Records nothing.
    fn check(&mut self, key: &K, now: Instant) -> Result<(), Duration> {
        if self.max == 0 {
            return Ok(());
        }
        let window = self.window;
        let fresh = |t: &Instant| now.saturating_duration_since(*t) < window;
        if let Some(recent) = self.events.get_mut(key) {
            while recent.front().is_some_and(|t| !fresh(t)) {
                recent.pop_front();
            }
            if recent.len() >= self.max as usize {
                let oldest = recent.front().copied().unwrap_or(now);
                return Err(window.saturating_sub(now.saturating_duration_since(oldest)));
            }
            return Ok(());
        }
        if self.events.len() >= MAX_TRACKED_KEYS {
            self.events
                .retain(|_, recent| recent.back().is_some_and(fresh));
            if self.events.len() >= MAX_TRACKED_KEYS {
                return Err(window);
            }
        }
        Ok(())
    }

    /// Records an event; call after [`Window::check`] passed, under the same
    /// lock.
    fn record(&mut self, key: K, now: Instant) {
        if self.max > 0 {
            self.events.entry(key).or_default().push_back(now);
        }
    }

    /// Takes back the event recorded at `at`.
    fn forget(&mut self, key: &K, at: Instant) {
        if let Some(recent) = self.events.get_mut(key) {
            if let Some(i) = recent.iter().rposition(|t| *t == at) {
                recent.remove(i);
            }
            if recent.is_empty() {
                self.events.remove(key);
            }
        }
    }
}

/// Login attempts over a sliding minute, three ways:
///
/// - failed logins per IP (`--max-login-failures`, 10): guessing passwords
///   costs an attacker a minute per ten guesses, and the server no argon2
///   work;
/// - all logins per IP, successful ones included (`--max-logins-per-ip`,
///   30): a correct password is no licence to make the server hash it in a
///   loop;
/// - successful logins per username (`--max-logins-per-user`, 6): one
///   account's storm of logins, from however many addresses, cannot fill
///   the password queue for everyone else. Failures are not counted per
///   username: that would let anyone who knows a username lock its owner
///   out by guessing wrong; they are limited per IP instead.
///
/// An attempt is reserved in all three before the password is checked, under
/// one lock, so that a hundred attempts sent at once cannot all get past the
/// checks before any is recorded; the check's outcome then takes back what
/// it was not ([`LoginThrottle::succeeded`], [`LoginThrottle::failed`]).
pub struct LoginThrottle {
    windows: Mutex<LoginWindows>,
    /// Keys usernames in the table by a hash, so a client's 8 KiB username
    /// costs 8 bytes; seeded at random, so nobody can aim for collisions.
    hasher: std::hash::RandomState,
}

struct LoginWindows {
    failures_per_ip: Window<IpAddr>,
    attempts_per_ip: Window<IpAddr>,
    logins_per_user: Window<u64>,
}

/// The limits a [`LoginThrottle`] enforces per minute; 0 turns one off.
#[derive(Debug, Clone, Copy)]
pub struct LoginLimits {
    pub failures_per_ip: u32,
    pub attempts_per_ip: u32,
    pub logins_per_user: u32,
}

/// A login attempt that was let through, recorded at `at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginAttempt {
    ip: IpAddr,
    user: u64,
    at: Instant,
}

/// Which limit refused a login, and how long until it would pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginRefusal {
    FailuresFromIp(Duration),
    LoginsFromIp(Duration),
    LoginsForUser(Duration),
}

impl LoginRefusal {
    pub fn wait(self) -> Duration {
        match self {
            LoginRefusal::FailuresFromIp(w)
            | LoginRefusal::LoginsFromIp(w)
            | LoginRefusal::LoginsForUser(w) => w,
        }
    }

    /// For the `429`'s message and the log.
    pub fn reason(self) -> &'static str {
        match self {
            LoginRefusal::FailuresFromIp(_) => "too many failed logins",
            LoginRefusal::LoginsFromIp(_) => "too many logins from this address",
            LoginRefusal::LoginsForUser(_) => "too many logins for this user",
        }
    }

    /// Which limit refused: the `limit` label in `/metrics`.
    pub fn limit(self) -> &'static str {
        match self {
            LoginRefusal::FailuresFromIp(_) => "failures_per_ip",
            LoginRefusal::LoginsFromIp(_) => "attempts_per_ip",
            LoginRefusal::LoginsForUser(_) => "logins_per_user",
        }
    }

    /// The option that sets the limit, for the log.
    pub fn option(self) -> &'static str {
        match self {
            LoginRefusal::FailuresFromIp(_) => "--max-login-failures",
            LoginRefusal::LoginsFromIp(_) => "--max-logins-per-ip",
            LoginRefusal::LoginsForUser(_) => "--max-logins-per-user",
        }
    }
}

impl std::fmt::Display for LoginRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason())
    }
}

impl LoginThrottle {
    pub fn new(limits: LoginLimits) -> LoginThrottle {
        let minute = Duration::from_secs(60);
        LoginThrottle {
            windows: Mutex::new(LoginWindows {
                failures_per_ip: Window::new(limits.failures_per_ip, minute),
                attempts_per_ip: Window::new(limits.attempts_per_ip, minute),
                logins_per_user: Window::new(limits.logins_per_user, minute),
            }),
            hasher: std::hash::RandomState::new(),
        }
    }

    /// Starts a login attempt from `ip` for `username`: refused if any limit
    /// is reached, else recorded in all three at once, as both a failure
    /// and a success until the check says which. A refused attempt is
    /// recorded nowhere.
    pub fn begin(
        &self,
        ip: IpAddr,
        username: &str,
        now: Instant,
    ) -> Result<LoginAttempt, LoginRefusal> {
        use std::hash::BuildHasher;
        let ip = limit_key(ip);
        let user = self.hasher.hash_one(username);
        let mut windows = lock(&self.windows);
        let w = &mut *windows;
        w.failures_per_ip
            .check(&ip, now)
            .map_err(LoginRefusal::FailuresFromIp)?;
        w.attempts_per_ip
            .check(&ip, now)
            .map_err(LoginRefusal::LoginsFromIp)?;
        w.logins_per_user
            .check(&user, now)
            .map_err(LoginRefusal::LoginsForUser)?;
        w.failures_per_ip.record(ip, now);
        w.attempts_per_ip.record(ip, now);
        w.logins_per_user.record(user, now);
        Ok(LoginAttempt { ip, user, at: now })
    }

    /// The password matched: not a failure. It still counts as a login for
    /// its IP and its user.
    pub fn succeeded(&self, attempt: LoginAttempt) {
        lock(&self.windows)
            .failures_per_ip
            .forget(&attempt.ip, attempt.at);
    }

    /// The password did not match: a failure for its IP, not a login for
    /// the user it named.
    pub fn failed(&self, attempt: LoginAttempt) {
        lock(&self.windows)
            .logins_per_user
            .forget(&attempt.user, attempt.at);
    }

    /// The attempt was never checked (the client left before its turn): it
    /// counts as nothing, so a client cut off by its network is not held
    /// against its address or its user.
    pub fn abandoned(&self, attempt: LoginAttempt) {
        let mut windows = lock(&self.windows);
        windows.failures_per_ip.forget(&attempt.ip, attempt.at);
        windows.attempts_per_ip.forget(&attempt.ip, attempt.at);
        windows.logins_per_user.forget(&attempt.user, attempt.at);
    }
}

/// `POST /auth/refresh` per token subject over a sliding minute: renewing is
/// cheap, but each one is a log line and a signature, and a client stuck in
/// a loop (or a stolen token in a script) should not make thousands.
pub struct RefreshLimit {
    window: Mutex<Window<String>>,
}

impl RefreshLimit {
    /// `max` refreshes per subject per minute; 0 turns the limit off.
    pub fn new(max: u32) -> RefreshLimit {
        RefreshLimit {
            window: Mutex::new(Window::new(max, Duration::from_secs(60))),
        }
    }

    /// Counts a refresh for `sub`, or `Err(wait)` if it has had its share.
    pub fn take(&self, sub: &str, now: Instant) -> Result<(), Duration> {
        let mut window = lock(&self.window);
        let key = sub.to_string();
        window.check(&key, now)?;
        window.record(key, now);
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Messages

/// A token bucket: `rate` tokens a second, at most `burst` saved up.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate: f64, burst: f64, now: Instant) -> TokenBucket {
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Adds what was earned since the last call; returns the tokens now.
    fn refill(&mut self, now: Instant) -> f64 {
        let earned = now.duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + earned).min(self.burst);
        self.last = self.last.max(now);
        self.tokens
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self, now: Instant) -> bool {
        if self.refill(now) >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Message budgets shared by every connection of one user, and by every
/// connection from one IP address: without them, one account with a
/// hundred sockets would get a hundred times the rate.
///
/// A bucket that has filled up again is the same as a fresh one, so it is
/// forgotten: the map holds only users and addresses that sent recently,
/// and a user who closes every socket and reconnects starts from the
/// bucket they left, not a fresh one.
pub struct SharedBudgets {
    rate: f64,
    burst: f64,
    buckets: Mutex<Buckets>,
}

#[derive(Default)]
struct Buckets {
    by_key: HashMap<BudgetKey, TokenBucket>,
    /// Forget full buckets when the map reaches this size.
    prune_at: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum BudgetKey {
    User(Arc<str>),
    Ip(IpAddr),
}

impl SharedBudgets {
    /// `None` when `rate` is 0 (no limit).
    pub fn new(rate: u32, burst: u32) -> Option<SharedBudgets> {
        (rate > 0).then(|| SharedBudgets {
            rate: f64::from(rate),
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(Buckets::default()),
        })
    }

    /// Takes one message from both `user`'s and `ip`'s budget, or from
    /// neither if either is empty.
    pub fn try_take(&self, user: &Arc<str>, ip: IpAddr, now: Instant) -> bool {
        let keys = [BudgetKey::User(user.clone()), BudgetKey::Ip(limit_key(ip))];
        let mut buckets = lock(&self.buckets);
        buckets.prune(now);
        let has_one = |buckets: &mut Buckets, key: &BudgetKey| {
            buckets
                .by_key
                .entry(key.clone())
                .or_insert_with(|| TokenBucket::new(self.rate, self.burst, now))
                .refill(now)
                >= 1.0
        };
        if !keys.iter().all(|key| has_one(&mut buckets, key)) {
            return false;
        }
        for key in &keys {
            if let Some(bucket) = buckets.by_key.get_mut(key) {
                bucket.try_take(now);
            }
        }
        true
    }

    /// Users and addresses tracked now (for tests).
    #[cfg(test)]
    fn tracked(&self) -> usize {
        lock(&self.buckets).by_key.len()
    }
}

impl Buckets {
    /// Drops full buckets once the map has doubled since the last prune, so
    /// the cost is amortised and the map stays within twice the number of
    /// users and addresses that sent within one burst's refill time.
    fn prune(&mut self, now: Instant) {
        if self.by_key.len() < self.prune_at {
            return;
        }
        self.by_key
            .retain(|_, bucket| bucket.refill(now) < bucket.burst);
        self.prune_at = (self.by_key.len() * 2).max(1024);
    }
}

/// One connection's message rate: `rate` messages a second with bursts of
/// `burst`, and the shared budgets of its user and address. A message over
/// a rate is refused (the client is told); a client that keeps sending
/// after being told (more than `burst` refusals, forgiven at one a second)
/// is abusing the room and is disconnected.
pub struct MessageRate<'a> {
    own: Option<TokenBucket>,
    shared: Option<Shared<'a>>,
    patience: TokenBucket,
}

/// Whose shared budgets a connection draws on.
struct Shared<'a> {
    budgets: &'a SharedBudgets,
    user: Arc<str>,
    ip: IpAddr,
}

/// What to do with a message.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    /// Over the rate: refuse this one.
    Refuse,
    /// Refused too often: close the connection (1008).
    Disconnect,
}

impl<'a> MessageRate<'a> {
    /// `None` when there is no limit at all (`rate` is 0 and there are no
    /// shared budgets).
    pub fn new(
        rate: u32,
        burst: u32,
        shared: Option<(&'a SharedBudgets, Arc<str>, IpAddr)>,
        now: Instant,
    ) -> Option<MessageRate<'a>> {
        if rate == 0 && shared.is_none() {
            return None;
        }
        Some(MessageRate {
            own: (rate > 0)
                .then(|| TokenBucket::new(f64::from(rate), f64::from(burst.max(1)), now)),
            shared: shared.map(|(budgets, user, ip)| Shared { budgets, user, ip }),
            patience: TokenBucket::new(1.0, f64::from(burst.max(1)), now),
        })
    }

    pub fn judge(&mut self, now: Instant) -> Verdict {
        let own = self.own.as_mut().is_none_or(|b| b.try_take(now));
        let shared = || {
            self.shared
                .as_ref()
                .is_none_or(|s| s.budgets.try_take(&s.user, s.ip, now))
        };
        if own && shared() {
            Verdict::Accept
        } else if self.patience.try_take(now) {
            Verdict::Refuse
        } else {
            Verdict::Disconnect
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn connections_are_capped_in_all_and_per_ip() {
        let limits = ConnectionLimits::new(3, 2);
        let a1 = limits.admit(Some(A)).unwrap();
        let _a2 = limits.admit(Some(A)).unwrap();
        assert_eq!(
            limits.admit(Some(A)).err(),
            Some(ConnectionRefusal::TooManyFromIp)
        );
        let _b1 = limits.admit(Some(B)).unwrap();
        assert_eq!(
            limits.admit(Some(B)).err(),
            Some(ConnectionRefusal::ServerFull)
        );
        drop(a1);
        assert!(
            limits.admit(Some(A)).is_ok(),
            "a closed connection frees its place"
        );
    }

    #[test]
    fn proxied_connections_count_against_the_client_they_name() {
        let limits = ConnectionLimits::new(10, 1);
        let mut via_proxy = limits.admit(None).unwrap();
        let mut again = limits.admit(None).unwrap();
        via_proxy.rebind(A).unwrap();
        assert_eq!(again.rebind(A), Err(ConnectionRefusal::TooManyFromIp));
        again.rebind(B).unwrap();
        drop(via_proxy);
        assert!(limits.admit(Some(A)).is_ok());
    }

    const LIMITS: LoginLimits = LoginLimits {
        failures_per_ip: 3,
        attempts_per_ip: 0,
        logins_per_user: 0,
    };

    #[test]
    fn failed_logins_are_throttled_per_ip_for_a_minute() {
        let throttle = LoginThrottle::new(LIMITS);
        let t0 = Instant::now();
        for i in 0..3 {
            assert!(throttle.begin(A, "u", t0 + Duration::from_secs(i)).is_ok());
        }
        let refused = throttle.begin(A, "u", t0 + Duration::from_secs(10));
        assert_eq!(
            refused,
            Err(LoginRefusal::FailuresFromIp(Duration::from_secs(50)))
        );
        assert!(
            throttle.begin(B, "u", t0).is_ok(),
            "other IPs are unaffected"
        );
        assert!(throttle.begin(A, "u", t0 + Duration::from_secs(60)).is_ok());
        let off = LoginThrottle::new(LoginLimits {
            failures_per_ip: 0,
            ..LIMITS
        });
        assert!((0..100).all(|_| off.begin(A, "u", t0).is_ok()));
    }

    #[test]
    fn successful_logins_are_throttled_per_user_and_all_per_ip() {
        let throttle = LoginThrottle::new(LoginLimits {
            failures_per_ip: 10,
            attempts_per_ip: 5,
            logins_per_user: 2,
        });
        let t0 = Instant::now();
        for _ in 0..2 {
            let attempt = throttle.begin(A, "ann", t0).unwrap();
            throttle.succeeded(attempt);
        }
        // Successes count too: the third login for ann waits, from any IP.
        assert!(matches!(
            throttle.begin(B, "ann", t0),
            Err(LoginRefusal::LoginsForUser(_))
        ));
        // Other users are unaffected until A's address has made five.
        throttle.succeeded(throttle.begin(A, "bob", t0).unwrap());
        throttle.failed(throttle.begin(A, "cat", t0).unwrap());
        throttle.failed(throttle.begin(A, "cat", t0).unwrap());
        assert!(matches!(
            throttle.begin(A, "dan", t0),
            Err(LoginRefusal::LoginsFromIp(_))
        ));
        assert!(throttle.begin(B, "dan", t0).is_ok());
        let later = t0 + Duration::from_secs(60);
        assert!(throttle.begin(A, "ann", later).is_ok(), "a minute later");
    }

    #[test]
    fn failed_logins_do_not_lock_a_user_out() {
        let throttle = LoginThrottle::new(LoginLimits {
            failures_per_ip: 0,
            attempts_per_ip: 0,
            logins_per_user: 2,
        });
        let t0 = Instant::now();
        for i in 0..10 {
            let attempt = throttle.begin(A, "ann", t0 + Duration::from_millis(i));
            throttle.failed(attempt.unwrap());
        }
        assert!(
            throttle
                .begin(B, "ann", t0 + Duration::from_millis(10))
                .is_ok()
        );
    }

    #[test]
    fn abandoned_logins_count_for_nothing() {
        let throttle = LoginThrottle::new(LoginLimits {
            failures_per_ip: 1,
            attempts_per_ip: 1,
            logins_per_user: 1,
        });
        let t0 = Instant::now();
        for i in 0..5 {
            let attempt = throttle.begin(A, "ann", t0 + Duration::from_millis(i));
            throttle.abandoned(attempt.unwrap());
        }
    }

    #[test]
    fn refreshes_are_limited_per_subject() {
        let limit = RefreshLimit::new(3);
        let t0 = Instant::now();
        for i in 0..3 {
            assert_eq!(limit.take("7", t0 + Duration::from_secs(i)), Ok(()));
        }
        assert_eq!(
            limit.take("7", t0 + Duration::from_secs(20)),
            Err(Duration::from_secs(40))
        );
        assert_eq!(limit.take("8", t0), Ok(()), "other subjects are unaffected");
        assert_eq!(limit.take("7", t0 + Duration::from_secs(60)), Ok(()));
        assert!((0..100).all(|_| RefreshLimit::new(0).take("7", t0).is_ok()));
    }

    #[test]
    fn tracked_keys_are_bounded() {
        let mut window = Window::new(1, Duration::from_secs(60));
        let t0 = Instant::now();
        for key in 0..MAX_TRACKED_KEYS {
            assert!(window.check(&key, t0).is_ok());
            window.record(key, t0);
        }
        // Full of active keys: a new one waits rather than growing the table.
        assert!(window.check(&usize::MAX, t0).is_err());
        // A minute on, the stale ones make room.
        let later = t0 + Duration::from_secs(60);
        assert!(window.check(&usize::MAX, later).is_ok());
        assert!(window.events.is_empty());
    }

    #[test]
    fn ipv6_addresses_are_limited_per_64() {
        let limits = ConnectionLimits::new(10, 1);
        let one: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let same_64: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other_64: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        let _held = limits.admit(Some(one)).unwrap();
        assert_eq!(
            limits.admit(Some(same_64)).err(),
            Some(ConnectionRefusal::TooManyFromIp)
        );
        assert!(limits.admit(Some(other_64)).is_ok());
    }

    #[test]
    fn successful_logins_are_not_failures() {
        let throttle = LoginThrottle::new(LoginLimits {
            failures_per_ip: 2,
            ..LIMITS
        });
        let t0 = Instant::now();
        for i in 0..5 {
            let attempt = throttle.begin(A, "u", t0 + Duration::from_millis(i));
            throttle.succeeded(attempt.unwrap());
        }
    }

    #[test]
    fn messages_flow_at_the_rate_after_a_burst() {
        let t0 = Instant::now();
        let mut rate = MessageRate::new(10, 5, None, t0).unwrap();
        let verdicts: Vec<Verdict> = (0..12).map(|_| rate.judge(t0)).collect();
        assert!(verdicts[..5].iter().all(|v| *v == Verdict::Accept));
        assert!(verdicts[5..10].iter().all(|v| *v == Verdict::Refuse));
        assert_eq!(verdicts[10], Verdict::Disconnect);
        let later = t0 + Duration::from_millis(100);
        assert_eq!(rate.judge(later), Verdict::Accept, "a token every 100 ms");
        assert!(MessageRate::new(0, 5, None, t0).is_none());
    }

    #[test]
    fn one_users_connections_share_one_budget() {
        let t0 = Instant::now();
        let budgets = SharedBudgets::new(10, 4).unwrap();
        let ann: Arc<str> = "ann".into();
        let mut sockets: Vec<MessageRate<'_>> = (0..10)
            .map(|_| MessageRate::new(20, 40, Some((&budgets, ann.clone(), A)), t0).unwrap())
            .collect();
        let accepted = sockets
            .iter_mut()
            .map(|s| s.judge(t0))
            .filter(|v| *v == Verdict::Accept)
            .count();
        assert_eq!(accepted, 4, "ten sockets, one burst between them");
        // Another user from another address has a budget of its own; the
        // same address is shared.
        let mut bob = MessageRate::new(20, 40, Some((&budgets, "bob".into(), B)), t0).unwrap();
        assert_eq!(bob.judge(t0), Verdict::Accept);
        let mut eve = MessageRate::new(20, 40, Some((&budgets, "eve".into(), A)), t0).unwrap();
        assert_eq!(eve.judge(t0), Verdict::Refuse, "A's address is spent");
        let later = t0 + Duration::from_millis(100);
        assert_eq!(
            sockets[0].judge(later),
            Verdict::Accept,
            "a token every 100 ms"
        );
    }

    #[test]
    fn full_budgets_are_forgotten() {
        let t0 = Instant::now();
        let budgets = SharedBudgets::new(10, 2).unwrap();
        let take = |i: u32, now| {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            assert!(budgets.try_take(&format!("u{i}").into(), ip, now));
        };
        (0..1000).for_each(|i| take(i, t0));
        assert_eq!(budgets.tracked(), 2000, "a user and an address each");
        // A second later those buckets are full again, as good as new: when
        // the map next doubles, they go.
        let later = t0 + Duration::from_secs(1);
        (1000..1030).for_each(|i| take(i, later));
        assert!(budgets.tracked() < 100, "{} tracked", budgets.tracked());
    }
}
