//! Room names, and who may join which room.
//!
//! A room is named `^[a-z0-9][a-z0-9_-]{0,31}$` (`general`, `ops`,
//! `team-7`), or is a direct-message room between two users,
//! `dm:<user1>:<user2>`: the two usernames sorted by their UTF-8 bytes, so
//! that a pair has one name, each with `%` written `%25` and `:` written
//! `%3A`, so that the `:` between them is unambiguous. Nothing else is a
//! room name; a client that sends one gets `bad_room`.
//!
//! Who may join ([`Access::may_join`]):
//! - `general` and every `--room` name: every authenticated user;
//! - a name or prefix pattern (`team-*`) in the token's `rooms` claim: its
//!   holder, who may also create the room by joining it;
//! - `dm:a:b`: users `a` and `b`, and nobody else.
//!
//! The answer depends on the name and the token only, never on whether the
//! room exists, so that probing cannot discover room names.

use std::fmt;
use std::sync::Arc;

/// The room every connection starts in, and which always exists.
pub const GENERAL: &str = "general";

/// The longest plain room name, in bytes.
pub const MAX_NAME_BYTES: usize = 32;

/// Why a `room` field is not a room name. The client gets `bad_room` with
/// this text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadRoom {
    /// Not `^[a-z0-9][a-z0-9_-]{0,31}$`, and not `dm:`.
    Plain,
    /// `dm:` but not two usernames joined by `:`, escaped as they must be.
    Dm,
    /// The right two users in the wrong order: the canonical name.
    DmOrder(String),
}

impl fmt::Display for BadRoom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BadRoom::Plain => write!(
                f,
                "a room name is 1 to {MAX_NAME_BYTES} characters of a-z, 0-9, '_' and '-', \
                 starting with a letter or digit, or dm:<user>:<user>"
            ),
            BadRoom::Dm => f.write_str(
                "a direct-message room is dm:<user>:<user>, with '%' written %25 and ':' written %3A",
            ),
            BadRoom::DmOrder(name) => write!(
                f,
                "the two usernames go in byte order: the room is {name}"
            ),
        }
    }
}

/// A checked room name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomName {
    /// `general`, `ops`, ...
    Plain(Arc<str>),
    /// `dm:a:b`: the name, and the two usernames (unescaped, in order).
    Dm {
        name: Arc<str>,
        users: [Box<str>; 2],
    },
}

impl RoomName {
    /// `general`.
    pub fn general() -> RoomName {
        RoomName::Plain(GENERAL.into())
    }

    /// Checks a `room` field.
    pub fn parse(name: &str) -> Result<RoomName, BadRoom> {
        match name.strip_prefix("dm:") {
            Some(pair) => parse_dm(name, pair),
            None if is_plain(name) => Ok(RoomName::Plain(name.into())),
            None => Err(BadRoom::Plain),
        }
    }

    /// The direct-message room of users `a` and `b`.
    pub fn dm(a: &str, b: &str) -> RoomName {
        let (first, second) = if a.as_bytes() <= b.as_bytes() {
            (a, b)
        } else {
            (b, a)
        };
        RoomName::Dm {
            name: format!("dm:{}:{}", escape(first), escape(second)).into(),
            users: [first.into(), second.into()],
        }
    }

    /// The name as clients write it.
    pub fn as_str(&self) -> &str {
        match self {
            RoomName::Plain(name) | RoomName::Dm { name, .. } => name,
        }
    }

    /// The name, shared.
    pub fn shared(&self) -> &Arc<str> {
        match self {
            RoomName::Plain(name) | RoomName::Dm { name, .. } => name,
        }
    }

    pub fn is_dm(&self) -> bool {
        matches!(self, RoomName::Dm { .. })
    }
}

/// Whether `name` can be a `--room`: a plain room name.
pub fn is_open_room_name(name: &str) -> bool {
    is_plain(name)
}

/// `^[a-z0-9][a-z0-9_-]{0,31}$`.
fn is_plain(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_NAME_BYTES
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes.iter().all(|&b| is_name_byte(b))
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'
}

/// `dm:<a>:<b>`: exactly two escaped usernames, in byte order.
fn parse_dm(name: &str, pair: &str) -> Result<RoomName, BadRoom> {
    let mut parts = pair.split(':');
    let (Some(a), Some(b), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(BadRoom::Dm);
    };
    let (a, b) = (
        unescape(a).ok_or(BadRoom::Dm)?,
        unescape(b).ok_or(BadRoom::Dm)?,
    );
    if crate::auth::check_username(&a).is_err() || crate::auth::check_username(&b).is_err() {
        return Err(BadRoom::Dm);
    }
    let canonical = RoomName::dm(&a, &b);
    if canonical.as_str() != name {
        return Err(BadRoom::DmOrder(canonical.as_str().to_string()));
    }
    Ok(canonical)
}

/// A username as it is written in a DM room's name.
fn escape(user: &str) -> String {
    user.replace('%', "%25").replace(':', "%3A")
}

/// The reverse of [`escape`]; `None` for any other `%` (a bare one, or
/// another escape), so that each name has one spelling.
fn unescape(part: &str) -> Option<String> {
    let mut out = String::with_capacity(part.len());
    let mut rest = part;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        let escaped = rest.get(at..at + 3)?;
        out.push(match escaped {
            "%25" => '%',
            "%3A" => ':',
            _ => return None,
        });
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    Some(out)
}

/// One entry of a `rooms` claim (or a users file's `rooms`): a room name,
/// or a prefix followed by `*` (`team-*`; `*` alone is every plain room).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    Room(Box<str>),
    Prefix(Box<str>),
}

impl Grant {
    /// Checks one entry; `None` if it can match no room (a `dm:` name, a
    /// bad name): DMs are decided by their names, not by grants.
    pub fn parse(entry: &str) -> Option<Grant> {
        match entry.strip_suffix('*') {
            Some(prefix) if is_prefix(prefix) => Some(Grant::Prefix(prefix.into())),
            Some(_) => None,
            None if is_plain(entry) => Some(Grant::Room(entry.into())),
            None => None,
        }
    }

    fn allows(&self, room: &str) -> bool {
        match self {
            Grant::Room(name) => &**name == room,
            Grant::Prefix(prefix) => room.starts_with(&**prefix),
        }
    }

    /// As written in the claim (`ops`, `team-*`).
    pub fn to_claim(&self) -> String {
        match self {
            Grant::Room(name) => name.to_string(),
            Grant::Prefix(prefix) => format!("{prefix}*"),
        }
    }
}

/// A prefix some plain room name starts with (empty: every one).
fn is_prefix(prefix: &str) -> bool {
    prefix.is_empty() || (prefix.len() < MAX_NAME_BYTES && is_plain(prefix))
}

/// Checks a users file's `rooms` list, entry by entry.
pub fn check_grants(entries: &[String]) -> Result<(), String> {
    for entry in entries {
        if Grant::parse(entry).is_none() {
            return Err(format!(
                "{entry:?} in \"rooms\" is neither a room name (a-z, 0-9, '_', '-', \
                 at most {MAX_NAME_BYTES}) nor a prefix ending in '*'"
            ));
        }
    }
    Ok(())
}

/// What one connection may join: the server's open rooms, its token's
/// grants, and the DMs of its user.
#[derive(Debug, Clone)]
pub struct Access {
    user: Arc<str>,
    open: Arc<[Box<str>]>,
    grants: Vec<Grant>,
}

impl Access {
    /// For `user`, with the server's open rooms (`--room`) and the token's
    /// `rooms` claim (entries that can match nothing are ignored: a token
    /// from elsewhere is not ours to refuse for them).
    pub fn new(user: Arc<str>, open: Arc<[Box<str>]>, claim: &[String]) -> Access {
        Access {
            user,
            open,
            grants: claim.iter().filter_map(|e| Grant::parse(e)).collect(),
        }
    }

    pub fn may_join(&self, room: &RoomName) -> bool {
        match room {
            RoomName::Dm { users, .. } => users.iter().any(|u| **u == *self.user),
            RoomName::Plain(name) => {
                &**name == GENERAL
                    || self.open.iter().any(|open| **open == **name)
                    || self.grants.iter().any(|grant| grant.allows(name))
            }
        }
    }

    /// What `welcome.rooms` lists: `general`, the open rooms, then the
    /// grants (patterns as `team-*`), each once.
    pub fn listed(&self) -> Vec<String> {
        let mut listed = vec![GENERAL.to_string()];
        let named = self.open.iter().map(|r| r.to_string());
        for entry in named.chain(self.grants.iter().map(Grant::to_claim)) {
            if !listed.contains(&entry) {
                listed.push(entry);
            }
        }
        listed
    }

    /// The same user with a new token's claim.
    pub fn with_claim(&self, claim: &[String]) -> Access {
        Access::new(self.user.clone(), self.open.clone(), claim)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(user: &str, open: &[&str], claim: &[&str]) -> Access {
        let open: Vec<Box<str>> = open.iter().map(|r| (*r).into()).collect();
        let claim: Vec<String> = claim.iter().map(|r| r.to_string()).collect();
        Access::new(user.into(), open.into(), &claim)
    }

    #[test]
    fn plain_names_follow_the_pattern() {
        for good in ["general", "ops", "a", "0-_", &"x".repeat(32)] {
            assert!(RoomName::parse(good).is_ok(), "{good}");
        }
        for bad in ["", "Ops", "-ops", "_a", "a b", "é", &"x".repeat(33), "a*"] {
            assert_eq!(RoomName::parse(bad), Err(BadRoom::Plain), "{bad}");
        }
    }

    #[test]
    fn a_pair_has_one_dm_name() {
        assert_eq!(RoomName::dm("userB", "userA").as_str(), "dm:userA:userB");
        assert_eq!(
            RoomName::dm("userA", "userB"),
            RoomName::dm("userB", "userA")
        );
        // Sorted by the raw bytes, then escaped: ':' (0x3A) sorts after
        // '9', though "%3A" would sort before it.
        assert_eq!(RoomName::dm("a9", "a:").as_str(), "dm:a9:a%3A");
        assert_eq!(RoomName::dm("50%", "x").as_str(), "dm:50%25:x");
        let parsed = RoomName::parse("dm:a9:a%3A").unwrap();
        assert_eq!(parsed, RoomName::dm("a:", "a9"));
        assert_eq!(
            RoomName::parse("dm:userB:userA"),
            Err(BadRoom::DmOrder("dm:userA:userB".into()))
        );
        for bad in [
            "dm:",
            "dm:a",
            "dm:a:b:c",
            "dm:a%:b",
            "dm:a%3a:b",
            "dm::b",
            "dm:a:\n",
        ] {
            assert_eq!(RoomName::parse(bad), Err(BadRoom::Dm), "{bad}");
        }
    }

    #[test]
    fn access_is_decided_by_the_name_and_the_token() {
        let a = access("ann", &["ops"], &["team-*", "lab", "dm:ann:bob", "Bad*"]);
        let may = |name: &str| a.may_join(&RoomName::parse(name).unwrap());
        assert!(may("general") && may("ops") && may("lab"));
        assert!(may("team-") && may("team-red") && !may("team") && !may("random"));
        assert!(may("dm:ann:bob") && may("dm:ann:ann") && !may("dm:bob:cat"));
        assert_eq!(a.listed(), ["general", "ops", "team-*", "lab"]);
        // A narrower token takes the pattern away.
        let narrower = a.with_claim(&["lab".to_string()]);
        assert!(!narrower.may_join(&RoomName::parse("team-red").unwrap()));
        assert!(access("x", &[], &["*"]).may_join(&RoomName::parse("anything").unwrap()));
    }

    #[test]
    fn users_file_grants_are_checked() {
        assert!(check_grants(&["ops".into(), "team-*".into(), "*".into()]).is_ok());
        for bad in [
            "Ops",
            "dm:a:b",
            "team*x",
            "-*",
            &format!("{}*", "x".repeat(32)),
        ] {
            assert!(check_grants(&[bad.to_string()]).is_err(), "{bad}");
        }
    }
}
