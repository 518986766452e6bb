//! Abuse limits: how many connections, how many failed logins, how many
//! messages. Each answers "may this go ahead?" cheaply and holds bounded
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
pub enum Refusal {
    ServerFull,
    TooManyFromIp,
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
    pub fn admit(self: &Arc<Self>, ip: Option<IpAddr>) -> Result<ConnectionPermit, Refusal> {
        let mut open = lock(&self.open);
        if open.total >= self.max_total {
            return Err(Refusal::ServerFull);
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

    /// Connections open now.
    pub fn open(&self) -> usize {
        lock(&self.open).total
    }
}

impl OpenConnections {
    fn take_ip_place(&mut self, ip: IpAddr, max: usize) -> Result<(), Refusal> {
        let ip = limit_key(ip);
        let from_ip = self.per_ip.entry(ip).or_insert(0);
        if *from_ip >= max {
            if *from_ip == 0 {
                self.per_ip.remove(&ip);
            }
            return Err(Refusal::TooManyFromIp);
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
    pub fn rebind(&mut self, ip: IpAddr) -> Result<(), Refusal> {
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
// Logins

/// Failed logins per IP over a sliding minute. Past the limit, every login
/// from that IP is refused until the oldest failure is a minute old:
/// guessing passwords then costs an attacker a minute per ten guesses, and
/// the server no argon2 work.
pub struct LoginThrottle {
    max_failures: u32,
    window: Duration,
    failures: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
}

/// IPs tracked at most; past this, IPs with no recent failure are dropped.
const MAX_TRACKED_IPS: usize = 65_536;

impl LoginThrottle {
    /// `max_failures` per minute; 0 turns the throttle off.
    pub fn new(max_failures: u32) -> LoginThrottle {
        LoginThrottle {
            max_failures,
            window: Duration::from_secs(60),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Starts a login attempt from `ip`: `Err(wait)` if it must wait, else
    /// the attempt is counted as a failure straight away, under the same
    /// lock, so that a hundred attempts sent at once cannot all get past
    /// the check before any is recorded. [`LoginThrottle::forgive`] takes
    /// it back when the password matched.
    pub fn begin(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        if self.max_failures == 0 {
            return Ok(());
        }
        let ip = limit_key(ip);
        let mut failures = lock(&self.failures);
        if failures.len() >= MAX_TRACKED_IPS {
            let window = self.window;
            failures.retain(|_, recent| {
                recent
                    .back()
                    .is_some_and(|t| now.duration_since(*t) < window)
            });
        }
        let recent = failures.entry(ip).or_default();
        while recent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.window)
        {
            recent.pop_front();
        }
        if recent.len() >= self.max_failures as usize {
            let oldest = recent.front().copied().unwrap_or(now);
            return Err(self.window.saturating_sub(now.duration_since(oldest)));
        }
        recent.push_back(now);
        Ok(())
    }

    /// The attempt begun at `at` succeeded: it was not a failure.
    pub fn forgive(&self, ip: IpAddr, at: Instant) {
        let ip = limit_key(ip);
        let mut failures = lock(&self.failures);
        if let Some(recent) = failures.get_mut(&ip) {
            if let Some(i) = recent.iter().rposition(|t| *t == at) {
                recent.remove(i);
            }
            if recent.is_empty() {
                failures.remove(&ip);
            }
        }
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
    pub fn tracked(&self) -> usize {
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
        assert_eq!(limits.admit(Some(A)).err(), Some(Refusal::TooManyFromIp));
        let _b1 = limits.admit(Some(B)).unwrap();
        assert_eq!(limits.admit(Some(B)).err(), Some(Refusal::ServerFull));
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
        assert_eq!(again.rebind(A), Err(Refusal::TooManyFromIp));
        again.rebind(B).unwrap();
        drop(via_proxy);
        assert!(limits.admit(Some(A)).is_ok());
    }

    #[test]
    fn failed_logins_are_throttled_per_ip_for_a_minute() {
        let throttle = LoginThrottle::new(3);
        let t0 = Instant::now();
        for i in 0..3 {
            assert_eq!(throttle.begin(A, t0 + Duration::from_secs(i)), Ok(()));
        }
        let wait = throttle.begin(A, t0 + Duration::from_secs(10)).unwrap_err();
        assert_eq!(wait, Duration::from_secs(50));
        assert_eq!(throttle.begin(B, t0), Ok(()), "other IPs are unaffected");
        assert_eq!(throttle.begin(A, t0 + Duration::from_secs(60)), Ok(()));
        assert_eq!(LoginThrottle::new(0).begin(A, t0), Ok(()));
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
            Some(Refusal::TooManyFromIp)
        );
        assert!(limits.admit(Some(other_64)).is_ok());
    }

    #[test]
    fn successful_logins_are_forgiven() {
        let throttle = LoginThrottle::new(2);
        let t0 = Instant::now();
        for i in 0..5 {
            let at = t0 + Duration::from_millis(i);
            assert_eq!(throttle.begin(A, at), Ok(()));
            throttle.forgive(A, at);
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
