//! Who may log in, and the tokens that prove it.
//!
//! - Users and passwords: passwords are stored only as argon2id PHC strings
//!   (RFC 9106); a login checks one in constant time for the output, and an
//!   unknown username is checked against a dummy hash so that both failures
//!   take the same time and give the same answer.
//! - Tokens: JSON Web Tokens (RFC 7519) signed with HMAC-SHA256 (JWS,
//!   RFC 7515; "HS256", RFC 7518 §3.2). The algorithm is pinned: a token
//!   whose header names any other algorithm, `none` included, is refused.
//! - Renewal follows the users file: a token is refreshed (or accepted by a
//!   `reauth`) only while its user still exists under the same id and
//!   username with the same password hash ([`Tokens::verify_current`]).

use std::collections::HashMap;
use std::collections::VecDeque;
use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Algorithm as Argon2Algorithm, Argon2, Params, Version};
use hmac::{Hmac, KeyInit, Mac};
use icu_normalizer::ComposingNormalizerBorrowed;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::clock::Clock;
use serde_json::value::RawValue;
use sha2::Sha256;

/// argon2id cost for new hashes: 19 MiB, 2 passes, 1 lane, the first of
/// OWASP's recommended settings. About 25 ms per check on one core of a
/// small x86 host, several times that on a Raspberry Pi; with at most
/// [`PasswordGate`] checks at once the memory stays bounded (2 cores: 38 MiB).
pub const ARGON2_M_KIB: u32 = 19 * 1024;
pub const ARGON2_T: u32 = 2;
pub const ARGON2_P: u32 = 1;

/// RFC 7519 §4.1.4: the current time "MUST be before the expiration
/// date/time". The handshake, the broadcast check and the sweep all ask this
/// one function, so a token accepted at the upgrade is not evicted at once.
pub fn is_expired(exp: u64, now: u64) -> bool {
    now >= exp
}

// ---------------------------------------------------------------------------
// Users and passwords

/// One account.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub id: String,
    pub username: String,
    pub password_hash: String,
    /// Rooms this user may join beyond the open ones: names, or prefixes
    /// ending in `*` (`team-*`). Goes into the token's `rooms` claim.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rooms: Vec<String>,
}

/// What the demo accounts may join beyond `general`: `random`, and any
/// room whose name starts with `team-` (created by joining it).
pub const DEMO_ROOMS: [&str; 2] = ["random", "team-*"];

/// The longest username, in characters.
pub const MAX_USERNAME_CHARS: usize = 64;

/// All accounts, by username and by id.
pub struct Users {
    users: Vec<User>,
    /// Index into `users`.
    by_name: HashMap<String, usize>,
    /// Index into `users`.
    by_id: HashMap<String, usize>,
    /// Checked when the username is unknown, so that failure costs the same.
    dummy_hash: String,
    gate: PasswordGate,
}

/// The users file: `{"users":[{"id":..,"username":..,"password_hash":..}]}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    users: Vec<User>,
}

/// The same file, each entry left as its text, so that an error can name
/// the line the entry starts on.
#[derive(Deserialize)]
struct UsersFileEntries<'a> {
    #[serde(borrow)]
    users: Vec<&'a RawValue>,
}

/// Why the users file cannot be used. Start-up stops with this message.
/// `line` is always the 1-based line of the offending entry's `{`.
#[derive(Debug)]
#[allow(missing_docs)] // the fields are what each variant's doc names
pub enum UsersError {
    /// The file cannot be read (the text says why).
    Read(String),
    /// The file is not the JSON `{"users":[...]}` (the text says where).
    Json(String),
    /// The file lists no users.
    Empty,
    /// Two entries with this username.
    Duplicate { username: String, line: usize },
    /// Two entries with this id: tokens name users by id, so two accounts
    /// would share every session.
    DuplicateId { id: String, line: usize },
    /// A username that is empty, over 64 characters, has a control
    /// character or is not NFC, and why.
    BadUsername { line: usize, why: String },
    /// A `rooms` entry that is no room name or prefix pattern, and why.
    BadRooms {
        username: String,
        line: usize,
        why: String,
    },
    /// A `password_hash` that is not a usable argon2id PHC string, and why.
    BadHash {
        username: String,
        line: usize,
        why: String,
    },
}

impl fmt::Display for UsersError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UsersError::Read(e) => write!(f, "cannot read users file: {e}"),
            UsersError::Json(e) => write!(f, "users file is not valid: {e}"),
            UsersError::Empty => write!(f, "users file lists no users"),
            UsersError::Duplicate { username, line } => {
                write!(f, "users file lists {username:?} twice (line {line})")
            }
            UsersError::DuplicateId { id, line } => {
                write!(f, "users file lists id {id:?} twice (line {line})")
            }
            UsersError::BadUsername { line, why } => {
                write!(f, "users file line {line}: the username {why}")
            }
            UsersError::BadRooms {
                username,
                line,
                why,
            } => write!(f, "users file line {line} ({username:?}): {why}"),
            UsersError::BadHash {
                username,
                line,
                why,
            } => write!(
                f,
                "password_hash of {username:?} (line {line}) is not an argon2id PHC string \
                 ({why}); make one with `jwtchat hash-password`"
            ),
        }
    }
}

impl Users {
    /// The built-in demo accounts, each granted [`DEMO_ROOMS`]:  `userA`/`passwordA`, `userB`/`passwordB`,
    /// `userC`/`passwordC`, hashed at start-up like any other.
    pub fn demo() -> Users {
        let users = ["A", "B", "C"]
            .iter()
            .enumerate()
            .map(|(i, letter)| User {
                id: (i + 1).to_string(),
                username: format!("user{letter}"),
                password_hash: hash_password(&format!("password{letter}")),
                rooms: DEMO_ROOMS.iter().map(|r| r.to_string()).collect(),
            })
            .collect();
        Users::new(users)
    }

    /// Reads and checks a users file.
    pub fn load(path: &Path) -> Result<Users, UsersError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| UsersError::Read(format!("{}: {e}", path.display())))?;
        // Parsed whole first, so a syntax error's line and column are the
        // file's; the second pass only finds where each entry starts.
        let file: UsersFile =
            serde_json::from_str(&text).map_err(|e| UsersError::Json(e.to_string()))?;
        let entries: UsersFileEntries =
            serde_json::from_str(&text).map_err(|e| UsersError::Json(e.to_string()))?;
        if file.users.is_empty() {
            return Err(UsersError::Empty);
        }
        let mut names = HashMap::new();
        let mut ids = HashMap::new();
        for (user, entry) in file.users.iter().zip(&entries.users) {
            let line = line_of(&text, entry.get());
            check_username(&user.username).map_err(|why| UsersError::BadUsername { line, why })?;
            check_phc(&user.password_hash).map_err(|why| UsersError::BadHash {
                username: user.username.clone(),
                line,
                why,
            })?;
            crate::access::check_grants(&user.rooms).map_err(|why| UsersError::BadRooms {
                username: user.username.clone(),
                line,
                why,
            })?;
            if names.insert(user.username.as_str(), ()).is_some() {
                return Err(UsersError::Duplicate {
                    username: user.username.clone(),
                    line,
                });
            }
            if ids.insert(user.id.as_str(), ()).is_some() {
                return Err(UsersError::DuplicateId {
                    id: user.id.clone(),
                    line,
                });
            }
        }
        Ok(Users::new(file.users))
    }

    fn new(users: Vec<User>) -> Users {
        let index = |key: fn(&User) -> &String| {
            users
                .iter()
                .enumerate()
                .map(|(i, u)| (key(u).clone(), i))
                .collect()
        };
        Users {
            by_name: index(|u| &u.username),
            by_id: index(|u| &u.id),
            users,
            dummy_hash: hash_password("not a password anyone has"),
            gate: PasswordGate::new(),
        }
    }

    /// The user with this id (a token's `sub`).
    /// How many users there are.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn by_id(&self, id: &str) -> Option<&User> {
        self.by_id.get(id).map(|&i| &self.users[i])
    }

    /// The user, if the username exists and the password matches. Unknown
    /// users still pay for one hash check, so timing does not reveal which
    /// usernames exist.
    #[cfg(test)]
    pub fn check_password(&self, username: &str, password: &str) -> Option<&User> {
        match self.check_password_if(username, password, || true) {
            PasswordCheck::Match(user) => Some(user),
            PasswordCheck::NoMatch | PasswordCheck::Abandoned => None,
        }
    }

    /// Like [`Users::check_password`], but when this check's turn comes,
    /// it runs only if `still_wanted()`: a client that has gone while
    /// queued costs no argon2 work, and does not delay those behind it.
    pub fn check_password_if(
        &self,
        username: &str,
        password: &str,
        still_wanted: impl FnOnce() -> bool,
    ) -> PasswordCheck<'_> {
        let user = self.by_name.get(username).map(|&i| &self.users[i]);
        let hash = user.map_or(self.dummy_hash.as_str(), |u| u.password_hash.as_str());
        let matches = self.gate.run(username, || {
            still_wanted().then(|| verify_password(password, hash))
        });
        match (matches, user) {
            (None, _) => PasswordCheck::Abandoned,
            (Some(true), Some(user)) => PasswordCheck::Match(user),
            (Some(_), _) => PasswordCheck::NoMatch,
        }
    }
}

/// What [`Users::check_password_if`] found.
#[derive(Debug)]
pub enum PasswordCheck<'a> {
    Match(&'a User),
    NoMatch,
    /// Not checked: the caller no longer wanted the answer.
    Abandoned,
}

/// The 1-based line of `text` on which `part`, a slice of it, starts.
fn line_of(text: &str, part: &str) -> usize {
    // `part` borrows from `text` (serde_json's RawValue does not copy), so
    // the distance between the two pointers is its byte offset.
    let offset = (part.as_ptr() as usize).saturating_sub(text.as_ptr() as usize);
    let before = text.as_bytes().get(..offset).unwrap_or_default();
    1 + before.iter().filter(|&&b| b == b'\n').count()
}

/// A username is shown to every other user and compared byte for byte at
/// login, so it must be visible (no control characters), of sane length,
/// and in one canonical form: in NFC (Unicode UAX #15), "é" typed as one
/// code point and as "e" + U+0301 would otherwise be two different users
/// who look the same.
pub(crate) fn check_username(name: &str) -> Result<(), String> {
    let chars = name.chars().count();
    if chars == 0 {
        return Err("is empty".to_string());
    }
    if chars > MAX_USERNAME_CHARS {
        return Err(format!(
            "is {chars} characters long; at most {MAX_USERNAME_CHARS} are allowed"
        ));
    }
    if let Some(c) = name.chars().find(|c| c.is_control()) {
        return Err(format!(
            "{name:?} contains the control character U+{:04X}",
            u32::from(c)
        ));
    }
    if !ComposingNormalizerBorrowed::new_nfc().is_normalized(name) {
        return Err(format!(
            "{name:?} is not in Unicode normalization form C (NFC); \
             write it with composed characters"
        ));
    }
    Ok(())
}

fn argon2() -> Argon2<'static> {
    let params = Params::new(ARGON2_M_KIB, ARGON2_T, ARGON2_P, None)
        .expect("constant argon2 parameters are valid");
    Argon2::new(Argon2Algorithm::Argon2id, Version::V0x13, params)
}

/// Hashes a password into an argon2id PHC string with a fresh random salt.
pub fn hash_password(password: &str) -> String {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).expect("the OS random source is available");
    argon2()
        .hash_password_with_salt(password.as_bytes(), &salt)
        .expect("hashing with valid parameters and salt cannot fail")
        .to_string()
}

/// True if `password` matches the PHC string. The hash's own parameters are
/// used, so files made with other costs still work.
fn verify_password(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc)
        .is_ok_and(|hash| argon2().verify_password(password.as_bytes(), &hash).is_ok())
}

/// Checks that a stored hash is an argon2id PHC string with sane costs, so a
/// typo in the users file is found at start-up rather than at a login.
fn check_phc(phc: &str) -> Result<(), String> {
    let hash = PasswordHash::new(phc).map_err(|e| e.to_string())?;
    if hash.algorithm.as_str() != "argon2id" {
        return Err(format!("algorithm is {}", hash.algorithm.as_str()));
    }
    let params = Params::try_from(&hash).map_err(|e| e.to_string())?;
    // A memory cost in the gigabytes would let one login exhaust a small host.
    if params.m_cost() > 256 * 1024 {
        return Err(format!(
            "memory cost {} KiB is over 256 MiB",
            params.m_cost()
        ));
    }
    Ok(())
}

/// Lets at most one password check per core run at once, and takes the
/// waiting ones in turns, one user at a time. argon2id is memory-hard by
/// design; without a gate, a burst of logins on a 256 MB host would
/// allocate 19 MiB each and run it out of memory.
///
/// Turns, not arrival order: the checks waiting are grouped by the username
/// they are for, and the users take turns, one check each, like a
/// round-robin scheduler. A storm of one account's logins (all correct, so
/// no throttle stops them at once) then delays anyone else's login by at
/// most one check per user ahead of it in the round, not by the whole storm.
/// Each waiter is woken alone when its turn comes (`park`/`unpark`), so a
/// thousand logins waiting cost no thundering herd.
struct PasswordGate {
    state: Mutex<GateState>,
    limit: usize,
    /// Groups usernames by a hash, seeded at random so that nobody can make
    /// two names share a turn on purpose.
    hasher: std::hash::RandomState,
}

struct GateState {
    running: usize,
    /// Users with checks waiting, in turn order, each with its checks in
    /// arrival order.
    turns: VecDeque<(u64, VecDeque<Waiter>)>,
}

/// A check waiting for its turn.
struct Waiter {
    admitted: Arc<AtomicBool>,
    thread: std::thread::Thread,
}

impl PasswordGate {
    fn new() -> PasswordGate {
        PasswordGate {
            state: Mutex::new(GateState {
                running: 0,
                turns: VecDeque::new(),
            }),
            limit: std::thread::available_parallelism().map_or(1, |n| n.get()),
            hasher: std::hash::RandomState::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `work` (a check for `username`) when a place is free and it is
    /// that user's turn.
    fn run<T>(&self, username: &str, work: impl FnOnce() -> T) -> T {
        use std::hash::BuildHasher;
        let admitted = Arc::new(AtomicBool::new(false));
        {
            let mut state = self.lock();
            if state.running < self.limit && state.turns.is_empty() {
                state.running += 1;
                admitted.store(true, Ordering::Release);
            } else {
                let user = self.hasher.hash_one(username);
                let waiter = Waiter {
                    admitted: admitted.clone(),
                    thread: std::thread::current(),
                };
                match state.turns.iter_mut().find(|(u, _)| *u == user) {
                    Some((_, waiting)) => waiting.push_back(waiter),
                    None => state.turns.push_back((user, VecDeque::from([waiter]))),
                }
            }
        }
        // A park may end for no reason (or an old unpark): check the flag.
        while !admitted.load(Ordering::Acquire) {
            std::thread::park();
        }
        // Released on the way out, a panic included.
        let _slot = Slot(self);
        work()
    }
}

/// One running check of a [`PasswordGate`]; dropping it frees the place
/// for the next user in turn.
struct Slot<'a>(&'a PasswordGate);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.running -= 1;
        let Some((user, mut waiting)) = state.turns.pop_front() else {
            return;
        };
        if let Some(next) = waiting.pop_front() {
            state.running += 1;
            next.admitted.store(true, Ordering::Release);
            next.thread.unpark();
        }
        // To the back of the round, if it has more checks waiting.
        if !waiting.is_empty() {
            state.turns.push_back((user, waiting));
        }
    }
}

// ---------------------------------------------------------------------------
// Tokens

/// The claims in every token this server issues (RFC 7519 §4.1).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// Subject: the user id.
    pub sub: String,
    /// Display name, so the chat needs no user look-up per connection.
    pub username: String,
    /// Issued at, Unix seconds.
    pub iat: u64,
    /// Expiry, Unix seconds: `iat + ttl`.
    pub exp: u64,
    /// Issuer: must equal the configured issuer.
    pub iss: String,
    /// Not before, Unix seconds: honoured when present, never issued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// When the user logged in with a password (OpenID Connect's
    /// `auth_time`), carried unchanged through refreshes so that a session
    /// cannot be renewed forever. Absent means `iat`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_time: Option<u64>,
    /// Password fingerprint: [`Tokens::fingerprint`] of the user's password
    /// hash when the token was issued. A refresh or `reauth` needs it to
    /// match the hash in the users file now; tokens from before this claim
    /// existed lack it and cannot be renewed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pwf: Option<String>,
    /// Rooms the holder may join beyond the open ones: names, or prefixes
    /// ending in `*` (see `crate::access`). From the users file's `rooms`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rooms: Vec<String>,
}

impl Claims {
    /// The login time this session started from.
    pub fn login_time(&self) -> u64 {
        self.auth_time.unwrap_or(self.iat)
    }
}

/// Why a token was refused. All of them answer `401 invalid_token` (RFC 6750
/// §3.1); the kind is for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    Missing,
    Malformed,
    BadSignature,
    WrongAlgorithm,
    WrongIssuer,
    NotYetValid,
    Expired,
    /// Valid, but no longer the identity in the users file: the user was
    /// removed or renamed, the password changed, or the token has no
    /// password fingerprint. Only renewal (refresh, `reauth`) checks this.
    Revoked,
}

impl TokenError {
    /// The machine name: the `reason` label in `/metrics`.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenError::Missing => "missing",
            TokenError::Malformed => "malformed",
            TokenError::BadSignature => "bad_signature",
            TokenError::WrongAlgorithm => "wrong_algorithm",
            TokenError::WrongIssuer => "wrong_issuer",
            TokenError::NotYetValid => "not_yet_valid",
            TokenError::Expired => "expired",
            TokenError::Revoked => "revoked",
        }
    }
}

/// The words for a log line or a trace (`expired token`).
impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TokenError::Missing => "no token",
            TokenError::Malformed => "malformed token",
            TokenError::BadSignature => "bad signature",
            TokenError::WrongAlgorithm => "wrong algorithm",
            TokenError::WrongIssuer => "wrong issuer",
            TokenError::NotYetValid => "token not yet valid",
            TokenError::Expired => "expired token",
            TokenError::Revoked => "revoked token",
        })
    }
}

/// Issues and verifies HS256 tokens with one secret.
pub struct Tokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    issuer: String,
    ttl_secs: u64,
    max_session_secs: u64,
    /// Keys the password fingerprints (see [`Tokens::fingerprint`]).
    fingerprint_key: [u8; 32],
    /// `iat`, and what `exp` and `nbf` are checked against.
    clock: Clock,
}

/// Derives the fingerprint key, so that the JWT signing key is never used
/// for anything but signing.
const FINGERPRINT_KEY_LABEL: &[u8] = b"jwtchat password fingerprint v1";

/// Bytes of HMAC output kept in a fingerprint: 96 bits, far beyond any
/// chance of two hashes of one user colliding, and short in the token.
const FINGERPRINT_BYTES: usize = 12;

fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(message);
    mac.finalize().into_bytes().into()
}

/// A refresh that cannot be granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshError {
    /// The token presented is not valid.
    Token(TokenError),
    /// The session is older than the maximum: log in again.
    SessionOver,
}

impl Tokens {
    pub fn new(secret: &[u8], issuer: &str, ttl_secs: u64) -> Tokens {
        crate::signing::install();
        let mut validation = Validation::new(Algorithm::HS256);
        // `exp` and `nbf` are checked in `verify` against our clock, with no
        // leeway (jsonwebtoken's own checks read the system clock, with 60 s
        // of it by default); `exp` must still be present.
        validation.leeway = 0;
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.set_issuer(&[issuer]);
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        Tokens {
            encoding: EncodingKey::from_secret(secret).expect("an HMAC key of any length is valid"),
            decoding: DecodingKey::from_secret(secret).expect("an HMAC key of any length is valid"),
            validation,
            issuer: issuer.to_string(),
            ttl_secs,
            max_session_secs: u64::MAX,
            fingerprint_key: hmac_sha256(secret, FINGERPRINT_KEY_LABEL),
            clock: Clock::system(),
        }
    }

    /// Takes the time from `clock` (the system clock by default).
    pub fn with_clock(mut self, clock: Clock) -> Tokens {
        self.clock = clock;
        self
    }

    /// The `pwf` claim for a stored password hash: a keyed HMAC-SHA256 of
    /// the PHC string, truncated, in hex. Anyone holding a token can read
    /// its claims, so the claim must say nothing about the hash itself
    /// (which could be cracked offline); without the server's secret the
    /// fingerprint is just random-looking bytes.
    pub fn fingerprint(&self, password_hash: &str) -> String {
        let mac = hmac_sha256(&self.fingerprint_key, password_hash.as_bytes());
        mac[..FINGERPRINT_BYTES]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// [`Tokens::verify`], and then: is the token's identity still the one
    /// in the users file? The user with id `sub` must exist, still have the
    /// token's username, and the token's `pwf` must match the password hash
    /// stored now. Renewal (refresh and `reauth`) asks this; the WebSocket
    /// handshake deliberately does not, so that it stays a pure check of a
    /// token any issuer sharing the key may have signed.
    pub fn verify_current(&self, token: &str, users: &Users) -> Result<Claims, TokenError> {
        let claims = self.verify(token)?;
        let current = users.by_id(&claims.sub).is_some_and(|user| {
            // The claims were signed by us, so comparing in variable time
            // reveals nothing an attacker could not already read.
            user.username == claims.username
                && claims.pwf.as_deref() == Some(self.fingerprint(&user.password_hash).as_str())
        });
        if current {
            Ok(claims)
        } else {
            Err(TokenError::Revoked)
        }
    }

    /// How long after a password login a session may be renewed.
    pub fn with_max_session(mut self, secs: u64) -> Tokens {
        self.max_session_secs = secs;
        self
    }

    /// When the session these claims belong to can no longer be renewed
    /// (Unix seconds): the login time plus `--max-session`.
    pub fn session_end(&self, claims: &Claims) -> u64 {
        claims.login_time().saturating_add(self.max_session_secs)
    }

    /// A new token for `user`, valid from now for the configured TTL.
    pub fn issue(&self, user: &User) -> (String, Claims) {
        let iat = self.clock.unix_secs();
        self.sign(Claims {
            sub: user.id.clone(),
            username: user.username.clone(),
            iat,
            exp: iat + self.ttl_secs,
            iss: self.issuer.clone(),
            nbf: None,
            auth_time: Some(iat),
            pwf: Some(self.fingerprint(&user.password_hash)),
            rooms: user.rooms.clone(),
        })
    }

    /// A new token for the holder of `token`, if it is valid, its identity
    /// still current in `users` ([`Tokens::verify_current`]) and its
    /// session younger than the maximum. The new token keeps the original
    /// login time and never outlives the session.
    pub fn refresh(&self, token: &str, users: &Users) -> Result<(String, Claims), RefreshError> {
        let old = self
            .verify_current(token, users)
            .map_err(RefreshError::Token)?;
        // The rooms the users file grants now, not those of the old token.
        let rooms = users
            .by_id(&old.sub)
            .map(|user| user.rooms.clone())
            .unwrap_or_default();
        let now = self.clock.unix_secs();
        let session_end = old.login_time().saturating_add(self.max_session_secs);
        if now >= session_end {
            return Err(RefreshError::SessionOver);
        }
        Ok(self.sign(Claims {
            iat: now,
            exp: now.saturating_add(self.ttl_secs).min(session_end),
            auth_time: Some(old.login_time()),
            nbf: None,
            iss: self.issuer.clone(),
            rooms,
            ..old
        }))
    }

    fn sign(&self, claims: Claims) -> (String, Claims) {
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing of plain claims cannot fail");
        (token, claims)
    }

    /// Verifies signature, algorithm, issuer, `nbf` and `exp` (zero leeway).
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let claims = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| classify(e.kind()))?
            .claims;
        let now = self.clock.unix_secs();
        // RFC 7519 §4.1.5: not before `nbf`.
        if claims.nbf.is_some_and(|nbf| now < nbf) {
            return Err(TokenError::NotYetValid);
        }
        if is_expired(claims.exp, now) {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

fn classify(kind: &ErrorKind) -> TokenError {
    match kind {
        ErrorKind::InvalidSignature => TokenError::BadSignature,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => TokenError::WrongAlgorithm,
        ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
        ErrorKind::ImmatureSignature => TokenError::NotYetValid,
        ErrorKind::ExpiredSignature => TokenError::Expired,
        _ => TokenError::Malformed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> User {
        User {
            id: "7".into(),
            username: "ann".into(),
            password_hash: hash_password("secret"),
            rooms: vec!["team-*".into()],
        }
    }

    #[test]
    fn password_hashes_are_argon2id_and_verify() {
        let u = user();
        assert!(
            u.password_hash
                .starts_with("$argon2id$v=19$m=19456,t=2,p=1$")
        );
        assert!(check_phc(&u.password_hash).is_ok());
        let users = Users::new(vec![u]);
        assert!(users.check_password("ann", "secret").is_some());
        assert!(users.check_password("ann", "Secret").is_none());
        assert!(users.check_password("bob", "secret").is_none());
    }

    #[test]
    fn an_unwanted_check_is_not_run() {
        let users = Users::new(vec![user()]);
        assert!(matches!(
            users.check_password_if("ann", "secret", || false),
            PasswordCheck::Abandoned
        ));
        assert!(matches!(
            users.check_password_if("ann", "secret", || true),
            PasswordCheck::Match(_)
        ));
    }

    #[test]
    fn the_gate_takes_users_in_turns() {
        let gate = Arc::new(PasswordGate {
            limit: 1,
            ..PasswordGate::new()
        });
        let order = Arc::new(Mutex::new(Vec::new()));
        let waiting =
            |gate: &PasswordGate| -> usize { gate.lock().turns.iter().map(|(_, w)| w.len()).sum() };
        // Hold the only place while a storm of ann's checks queues up, then
        // one of bob's, one at a time so that the arrival order is known.
        let (hold, release) = std::sync::mpsc::channel::<()>();
        let holder = {
            let gate = gate.clone();
            std::thread::spawn(move || gate.run("ann", || release.recv()))
        };
        while gate.lock().running == 0 {
            std::thread::yield_now();
        }
        let arrivals: [&'static str; 4] = ["ann", "ann", "ann", "bob"];
        let waiters: Vec<_> = arrivals
            .into_iter()
            .enumerate()
            .map(|(i, name)| {
                let (queued, order) = (gate.clone(), order.clone());
                let waiter = std::thread::spawn(move || {
                    queued.run(name, || order.lock().unwrap().push(name))
                });
                while waiting(&gate) < i + 1 {
                    std::thread::yield_now();
                }
                waiter
            })
            .collect();
        hold.send(()).unwrap();
        holder.join().unwrap().unwrap();
        for w in waiters {
            w.join().unwrap();
        }
        assert_eq!(*order.lock().unwrap(), ["ann", "bob", "ann", "ann"]);
    }

    #[test]
    fn stored_hashes_must_be_argon2id() {
        assert!(check_phc("plaintext").is_err());
        let argon2i = "$argon2i$v=19$m=16,t=2,p=1$c2FsdHNhbHQ$ZmFrZWhhc2hmYWtlaGFzaA";
        assert!(check_phc(argon2i).unwrap_err().contains("argon2i"));
    }

    #[test]
    fn tokens_round_trip_and_are_checked() {
        let tokens = Tokens::new(&[7; 32], "jwtchat", 60);
        let (token, claims) = tokens.issue(&user());
        assert_eq!(claims.exp, claims.iat + 60);
        assert_eq!(tokens.verify(&token), Ok(claims));

        let other_issuer = Tokens::new(&[7; 32], "someone-else", 60);
        assert_eq!(other_issuer.verify(&token), Err(TokenError::WrongIssuer));
        let other_key = Tokens::new(&[8; 32], "jwtchat", 60);
        assert_eq!(other_key.verify(&token), Err(TokenError::BadSignature));
        assert_eq!(tokens.verify("garbage"), Err(TokenError::Malformed));
    }

    #[test]
    fn fingerprints_depend_on_the_hash_and_the_secret() {
        let tokens = Tokens::new(&[7; 32], "jwtchat", 60);
        let hash = user().password_hash;
        let print = tokens.fingerprint(&hash);
        assert_eq!(print.len(), 2 * FINGERPRINT_BYTES);
        assert_eq!(print, tokens.fingerprint(&hash));
        assert_ne!(print, tokens.fingerprint(&hash_password("secret")));
        let other_key = Tokens::new(&[8; 32], "jwtchat", 60);
        assert_ne!(print, other_key.fingerprint(&hash));
        assert!(!print.contains(&hash[hash.len() - 8..]));
    }

    #[test]
    fn expiry_is_exclusive() {
        assert!(!is_expired(100, 99));
        assert!(is_expired(100, 100));
    }
}
