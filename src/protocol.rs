//! The chat protocol: the JSON objects inside WebSocket text frames (RFC
//! 6455 §5.6), and the close codes the server uses (RFC 6455 §7.4).
//! `docs/PROTOCOL.md` lists every message and close code in one table;
//! README "WebSocket messages" says when each is sent.
//!
//! Client → server, read by [`decode`] into an [`Incoming`]:
//! - `{"type":"message","text":"...","id":"..."}`: chat text. `id` is
//!   optional: the client's own name for the message (at most
//!   [`MAX_ID_BYTES`]), echoed on its broadcast and on any `error` about it.
//! - `{"type":"reauth","token":"<jwt>"}`: a renewed token for this
//!   connection, same user, checked as `POST /auth/refresh` checks one
//!   (README "Tokens").
//!
//! Server → client, an [`Outgoing`] each, serialised and framed once by
//! [`Outgoing::frame`]:
//! - `welcome`: the first frame, with `user`, `expires_at`, `online` (at
//!   most `--presence-list-max` names, `online_truncated` when cut),
//!   `online_count`, `history` (recent `message`s, without `id`) and
//!   `limits` (the message size and rate the client must keep to).
//! - `expiring`: the token expires within a minute; time to `reauth`.
//! - `reauthed`: a `reauth` was accepted, with the new `expires_at`.
//! - `join` and `leave`: a user's first connection opened, their last
//!   closed; `presence` (`joined`, `left`) when several did within one
//!   presence window (100 ms).
//! - `message`: a broadcast, with `seq`, `from`, `text`, `ts` and the
//!   sender's `id` if it gave one.
//! - `error`: an [`ErrorCode`] (`bad_message`, `bad_token`, `rate_limited`,
//!   `unavailable`, `token_expired`), a `message` in words, and the `id` of
//!   the client message it is about, if any. `token_expired` is followed by
//!   close `4001` ([`close_code::TOKEN_EXPIRED`]).

use serde::{Deserialize, Serialize};

use crate::access::{BadRoom, RoomName};
use crate::frame::{self, Frame};

/// Close codes (RFC 6455 §7.4.1; 4000–4999 are for applications, §7.4.2).
pub mod close_code {
    /// The peer asked to close, or the server is done.
    pub const NORMAL: u16 = 1000;
    /// The server is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// The client broke the WebSocket protocol.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A data type the server does not accept (binary frames).
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// A text frame that was not valid UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// The client kept sending over the message rate after being told.
    pub const POLICY_VIOLATION: u16 = 1008;
    /// A frame or message over the size limit.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// The token expired: log in again.
    pub const TOKEN_EXPIRED: u16 = 4001;
    /// The client read too slowly and its queue overflowed.
    pub const SLOW_CONSUMER: u16 = 4008;
}

/// The longest client-chosen message `id`, in bytes.
pub const MAX_ID_BYTES: usize = 64;

/// A message from a client, after checks.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    /// Chat text to broadcast to `room` (`general` if it named none), with
    /// the sender's own `id` for it, if any: echoed on the broadcast and on
    /// any error about it, so the sender can tell which of its messages was
    /// taken or refused.
    Chat {
        text: String,
        id: Option<String>,
        room: RoomName,
    },
    /// Join a room; with `since`, resume it from there (`recovered`,
    /// `missed`).
    Subscribe {
        room: RoomName,
        since: Option<Since>,
    },
    /// Leave a room.
    Unsubscribe(RoomName),
    /// A renewed token for this connection.
    Reauth(String),
}

/// The wire shape of client messages; `type` selects the variant.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Wire {
    Message {
        text: String,
        id: Option<String>,
        /// Absent: `general`. Present, even `null`, it must be a room name.
        #[serde(default, deserialize_with = "present")]
        room: Option<serde_json::Value>,
    },
    Subscribe {
        room: serde_json::Value,
        since: Option<Since>,
    },
    Unsubscribe {
        room: serde_json::Value,
    },
    Reauth {
        token: String,
    },
}

/// Why a client message was refused. The client gets
/// `{"type":"error","code":"bad_message","message":<Display>}` and stays.
#[derive(Debug, PartialEq, Eq)]
pub enum MessageError {
    /// Not JSON, or JSON but not an object: someone typing `hello` into a
    /// WebSocket client. serde's "expected value" would not tell them what
    /// to send instead; this does.
    NotAnObject,
    /// An object with no or an unknown `type`, or a missing `text`.
    Invalid(String),
    /// An `id` over [`MAX_ID_BYTES`].
    IdTooLong {
        len: usize,
    },
    EmptyText,
    TextTooLong {
        len: usize,
        max: usize,
    },
    /// A `room` that is no room name (answered with `bad_room`).
    BadRoom(BadRoom),
}

impl MessageError {
    /// The `code` of the `error` that answers it.
    pub fn code(&self) -> ErrorCode {
        match self {
            MessageError::BadRoom(_) => ErrorCode::BadRoom,
            _ => ErrorCode::BadMessage,
        }
    }
}

impl std::fmt::Display for MessageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MessageError::NotAnObject => write!(
                f,
                "invalid message: expected a JSON object such as {EXAMPLE_MESSAGE}"
            ),
            MessageError::Invalid(why) => write!(f, "invalid message: {why}"),
            MessageError::IdTooLong { len } => {
                write!(f, "id is {len} bytes; the limit is {MAX_ID_BYTES}")
            }
            MessageError::EmptyText => write!(f, "text must not be empty"),
            MessageError::TextTooLong { len, max } => {
                write!(f, "text is {len} bytes; the limit is {max}")
            }
            MessageError::BadRoom(why) => why.fmt(f),
        }
    }
}

/// What a `bad_message` error for text that is not a JSON object shows.
pub const EXAMPLE_MESSAGE: &str = r#"{"type":"message","text":"hi"}"#;

/// A refused client message, with the `id` it carried (if it was readable
/// and not itself the problem) for the error that answers it.
#[derive(Debug, PartialEq, Eq)]
pub struct Rejected {
    pub error: MessageError,
    pub id: Option<String>,
}

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl From<MessageError> for Rejected {
    fn from(error: MessageError) -> Self {
        Rejected { error, id: None }
    }
}

/// Decodes and checks one client text frame.
pub fn decode(raw: &str, max_text_bytes: usize) -> Result<Incoming, Rejected> {
    let wire: Wire = serde_json::from_str(raw).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Syntax | Category::Eof | Category::Io => MessageError::NotAnObject,
            // Valid JSON whose first character is not `{` is a string, a
            // number, an array, ...: serde would say "invalid type: ...,
            // expected internally tagged enum Wire".
            Category::Data if !raw.trim_start().starts_with('{') => MessageError::NotAnObject,
            Category::Data => MessageError::Invalid(short_json_error(&e)),
        }
    })?;
    match wire {
        Wire::Message { text, id, room } => {
            if let Some(id) = &id
                && id.len() > MAX_ID_BYTES
            {
                return Err(MessageError::IdTooLong { len: id.len() }.into());
            }
            let room = match room.as_ref().map(room_name) {
                None => RoomName::general(),
                Some(Ok(room)) => room,
                Some(Err(why)) => {
                    return Err(Rejected {
                        error: MessageError::BadRoom(why),
                        id,
                    });
                }
            };
            let error = if text.trim().is_empty() {
                MessageError::EmptyText
            } else if text.len() > max_text_bytes {
                MessageError::TextTooLong {
                    len: text.len(),
                    max: max_text_bytes,
                }
            } else {
                return Ok(Incoming::Chat { text, id, room });
            };
            Err(Rejected { error, id })
        }
        Wire::Subscribe { room, since } => {
            let room = parse_room(&room)?;
            if let Some(since) = &since {
                since.check().map_err(MessageError::Invalid)?;
            }
            Ok(Incoming::Subscribe { room, since })
        }
        Wire::Unsubscribe { room } => Ok(Incoming::Unsubscribe(parse_room(&room)?)),
        Wire::Reauth { token } => Ok(Incoming::Reauth(token)),
    }
}

/// A field that is there, whatever its value (`null` included): serde
/// would read `null` as absent.
fn present<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<serde_json::Value>, D::Error> {
    serde_json::Value::deserialize(deserializer).map(Some)
}

/// Where a client's view of a room ends: the `epoch` of its history and
/// the last `seq` it has. A `subscribe` (or the `/ws` upgrade, for
/// `general`) with one resumes from there.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Since {
    pub epoch: String,
    pub seq: u64,
}

/// The longest `epoch` a client may send back (the server's are 12).
pub const MAX_EPOCH_BYTES: usize = 64;

impl Since {
    /// Nothing longer than an epoch can be.
    fn check(&self) -> Result<(), String> {
        if self.epoch.len() > MAX_EPOCH_BYTES {
            return Err(format!(
                "since.epoch is {} bytes; an epoch is at most {MAX_EPOCH_BYTES}",
                self.epoch.len()
            ));
        }
        Ok(())
    }

    /// `ROOM:EPOCH:SEQ`, as `/ws?since=` and `Jwtchat-Since` carry it (the
    /// room first, so a room name with `:` in it, a DM's, still parses).
    pub fn parse_with_room(value: &str) -> Result<(RoomName, Since), String> {
        let shape = || format!("since {value:?} is not ROOM:EPOCH:SEQ");
        let (rest, seq) = value.rsplit_once(':').ok_or_else(shape)?;
        let (room, epoch) = rest.rsplit_once(':').ok_or_else(shape)?;
        let seq = seq.parse().map_err(|_| shape())?;
        let room = RoomName::parse(room).map_err(|why| format!("since: {why}"))?;
        let since = Since {
            epoch: epoch.to_string(),
            seq,
        };
        since.check()?;
        Ok((room, since))
    }
}

/// A `room` field: a string that is a room name.
fn room_name(room: &serde_json::Value) -> Result<RoomName, BadRoom> {
    match room {
        serde_json::Value::String(name) => RoomName::parse(name),
        _ => Err(BadRoom::Plain),
    }
}

fn parse_room(room: &serde_json::Value) -> Result<RoomName, Rejected> {
    room_name(room).map_err(|why| MessageError::BadRoom(why).into())
}

/// serde's message without the position, which means nothing to a chat user
/// ("unknown variant `foo`, expected `message`").
fn short_json_error(e: &serde_json::Error) -> String {
    let full = e.to_string();
    match full.find(" at line ") {
        Some(cut) => full[..cut].to_string(),
        None => full,
    }
}

/// Error codes in `{"type":"error","code":..}`.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadMessage,
    BadToken,
    RateLimited,
    TokenExpired,
    /// The chat cannot take messages now (with `--redis`: Redis is
    /// unreachable); the message was not sent.
    Unavailable,
    /// A `room` that is no room name.
    BadRoom,
    /// A room this user may not join (the same answer whether it exists
    /// or not).
    Forbidden,
    /// A message to a room this connection has not subscribed to.
    NotSubscribed,
    /// Past `--max-rooms-per-connection`, or a new room past `--max-rooms`.
    TooManyRooms,
}

/// The limits a client should keep to, in `welcome`, so a page can check a
/// message before sending it.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Limits {
    /// `--max-message-bytes`: the longest `text`, in UTF-8 bytes.
    pub max_message_bytes: usize,
    /// `--message-rate`: messages per second per connection (0: no limit).
    pub message_rate: u32,
}

/// Everything the server sends.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Outgoing<'a> {
    /// First frame on every connection: the user, the token's expiry, the
    /// limits, and `general` (every connection starts in it).
    Welcome {
        user: &'a str,
        expires_at: u64,
        /// Always `general`: the room the other fields describe.
        room: &'a str,
        /// The rooms this user may join (`general`, `--room`s, the token's
        /// grants; patterns as `team-*`), not DMs.
        rooms: &'a [String],
        #[serde(flatten)]
        greeting: Greeting<'a>,
        limits: Limits,
    },
    /// A `subscribe` was accepted (or a first DM subscribed its sender).
    Subscribed {
        room: &'a str,
        #[serde(flatten)]
        greeting: Greeting<'a>,
    },
    /// This connection left `room`: it asked, or (`reason: "forbidden"`)
    /// a `reauth` took the room away.
    Unsubscribed {
        room: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<&'a str>,
    },
    /// The token expires in a minute or less: time to renew it.
    Expiring { expires_at: u64 },
    /// A `reauth` was accepted: the connection now lasts until this.
    Reauthed { expires_at: u64 },
    /// A user came online in `room` (their first connection there).
    Join { room: &'a str, user: &'a str },
    /// A user went offline in `room` (their last connection there closed).
    Leave { room: &'a str, user: &'a str },
    /// Several users came online or went offline within one presence
    /// window (see `room::presence::PRESENCE_WINDOW`): one frame instead of one each.
    Presence {
        room: &'a str,
        joined: Vec<&'a str>,
        left: Vec<&'a str>,
    },
    /// A chat message, to everyone in `room`, the sender included.
    Message {
        room: &'a str,
        /// The history this `seq` belongs to (see [`Greeting::epoch`]).
        epoch: &'a str,
        /// Numbers this room's messages from 1, with no gaps.
        seq: u64,
        from: &'a str,
        text: &'a str,
        /// Unix milliseconds, when the server accepted it.
        ts: u64,
        /// The sender's `id` for it, if it gave one.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a str>,
    },
    Error {
        code: ErrorCode,
        message: &'a str,
        /// The `id` of the client message this error is about, if it had one.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a str>,
        /// The room this error is about, if it is about one.
        #[serde(skip_serializing_if = "Option::is_none")]
        room: Option<&'a str>,
    },
}

/// What a newcomer to a room is told of it, in `welcome` (for `general`)
/// and `subscribed`.
#[derive(Debug, Serialize)]
pub struct Greeting<'a> {
    /// Names one continuous history of the room: it changes when the
    /// history the `seq` numbers refer to is lost (a restart without
    /// `--data-dir`, Redis losing its data, the room freed). Within one
    /// epoch, `seq` never repeats and never goes back.
    pub epoch: &'a str,
    /// Only when the client asked to resume (`since`): whether `missed`
    /// holds everything after its `seq`. When false, its view is stale and
    /// `history` is what to show.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovered: Option<bool>,
    /// With `recovered: true`: every message after the client's `seq`, in
    /// order (and `history` is empty).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub missed: Option<Vec<Outgoing<'a>>>,
    /// Who is online in the room, sorted; at most `--presence-list-max`
    /// names.
    pub online: Vec<&'a str>,
    /// How many users are online in the room, however many `online` lists.
    pub online_count: usize,
    /// Present (true) when `online` was cut to `--presence-list-max`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub online_truncated: bool,
    /// The room's recent messages, oldest first (see `--history`).
    pub history: Vec<Outgoing<'a>>,
    /// The `seq` of the room's last message before what the client gets
    /// live (0: none yet): where `history` (or `missed`) ends.
    pub last_seq: u64,
}

/// What the server says, once, before closing with 4001.
pub const TOKEN_EXPIRED_TEXT: &str = "Your token is no longer valid. Please reauthenticate.";

impl Outgoing<'_> {
    /// Serialises to JSON and encodes one text frame.
    pub fn frame(&self) -> Frame {
        // Serialising these plain structs cannot fail; an empty object is a
        // harmless fallback rather than a panic on a client's path.
        let json = serde_json::to_string(self).unwrap_or_else(|_| "{}".to_string());
        frame::text(&json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_messages_decode() {
        assert_eq!(
            decode(r#"{"type":"message","text":"hi"}"#, 10),
            Ok(Incoming::Chat {
                text: "hi".into(),
                id: None,
                room: RoomName::general(),
            })
        );
        assert_eq!(
            decode(
                r#"{"type":"message","text":"hi","id":"c1","room":"ops"}"#,
                10
            ),
            Ok(Incoming::Chat {
                text: "hi".into(),
                id: Some("c1".into()),
                room: RoomName::parse("ops").unwrap(),
            })
        );
    }

    #[test]
    fn room_messages_decode_and_bad_rooms_are_named() {
        assert_eq!(
            decode(r#"{"type":"subscribe","room":"ops"}"#, 10),
            Ok(Incoming::Subscribe {
                room: RoomName::parse("ops").unwrap(),
                since: None
            })
        );
        assert_eq!(
            decode(r#"{"type":"unsubscribe","room":"dm:a:b"}"#, 10),
            Ok(Incoming::Unsubscribe(RoomName::dm("b", "a")))
        );
        let bad = decode(
            r#"{"type":"message","text":"hi","id":"c9","room":"Ops"}"#,
            10,
        );
        let bad = bad.unwrap_err();
        assert_eq!(bad.error.code(), ErrorCode::BadRoom);
        assert_eq!(bad.id.as_deref(), Some("c9"));
        let bad = decode(r#"{"type":"subscribe","room":"dm:b:a"}"#, 10).unwrap_err();
        assert_eq!(
            bad.to_string(),
            "the two usernames go in byte order: the room is dm:a:b"
        );
        // Resuming: `since` is checked, and so is ROOM:EPOCH:SEQ.
        assert_eq!(
            decode(
                r#"{"type":"subscribe","room":"ops","since":{"epoch":"e","seq":4}}"#,
                10
            ),
            Ok(Incoming::Subscribe {
                room: RoomName::parse("ops").unwrap(),
                since: Some(Since {
                    epoch: "e".into(),
                    seq: 4
                })
            })
        );
        let long = format!(
            r#"{{"type":"subscribe","room":"ops","since":{{"epoch":"{}","seq":4}}}}"#,
            "e".repeat(65)
        );
        assert!(decode(&long, 10).is_err());
        assert!(decode(r#"{"type":"subscribe","room":"ops","since":{"seq":4}}"#, 10).is_err());
        let (room, since) = Since::parse_with_room("dm:a:b:e1:41").unwrap();
        assert_eq!(
            (room.as_str(), since.epoch.as_str(), since.seq),
            ("dm:a:b", "e1", 41)
        );
        for bad in [
            "general",
            "general:e1",
            "general:e1:x",
            "Bad:e1:1",
            "general:e1:-1",
        ] {
            assert!(Since::parse_with_room(bad).is_err(), "{bad}");
        }
        // A room field must be a string: `null` is no room either.
        let bad = decode(r#"{"type":"message","text":"hi","room":null}"#, 10).unwrap_err();
        assert_eq!(bad.error.code(), ErrorCode::BadRoom);
        let bad = decode(r#"{"type":"subscribe","room":5}"#, 10).unwrap_err();
        assert_eq!(bad.error.code(), ErrorCode::BadRoom);
        let bad = decode(r#"{"type":"subscribe"}"#, 10).unwrap_err();
        assert_eq!(bad.error.code(), ErrorCode::BadMessage);
    }

    #[test]
    fn refusals_carry_the_message_id() {
        let refused = decode(r#"{"type":"message","text":"12345678901","id":"c7"}"#, 10);
        assert_eq!(
            refused,
            Err(Rejected {
                error: MessageError::TextTooLong { len: 11, max: 10 },
                id: Some("c7".into())
            })
        );
        let empty = decode(r#"{"type":"message","text":" ","id":"c8"}"#, 10);
        assert_eq!(empty.unwrap_err().id.as_deref(), Some("c8"));
        // An id over the limit is the problem itself: it is not echoed.
        let long = format!(
            r#"{{"type":"message","text":"hi","id":"{}"}}"#,
            "x".repeat(65)
        );
        let refused = decode(&long, 10).unwrap_err();
        assert_eq!(refused.error, MessageError::IdTooLong { len: 65 });
        assert_eq!(refused.id, None);
        let longest = format!(
            r#"{{"type":"message","text":"hi","id":"{}"}}"#,
            "x".repeat(64)
        );
        assert!(decode(&longest, 10).is_ok());
        // Not a string: invalid, like any other bad field.
        assert!(decode(r#"{"type":"message","text":"hi","id":5}"#, 10).is_err());
    }

    #[test]
    fn bad_messages_are_explained() {
        let cases = [
            (
                "hello",
                r#"invalid message: expected a JSON object such as {"type":"message","text":"hi"}"#,
            ),
            (
                r#""hello""#,
                r#"invalid message: expected a JSON object such as {"type":"message","text":"hi"}"#,
            ),
            (
                "[1,2]",
                r#"invalid message: expected a JSON object such as {"type":"message","text":"hi"}"#,
            ),
            (
                r#"{"type":"message","#,
                r#"invalid message: expected a JSON object such as {"type":"message","text":"hi"}"#,
            ),
            (
                r#"{"type":"dance"}"#,
                "invalid message: unknown variant `dance`",
            ),
            (r#"{"text":"x"}"#, "invalid message: missing field `type`"),
            (
                r#"{"type":"message"}"#,
                "invalid message: missing field `text`",
            ),
            (
                r#"{"type":"message","text":"  "}"#,
                "text must not be empty",
            ),
            (
                r#"{"type":"message","text":"12345678901"}"#,
                "text is 11 bytes; the limit is 10",
            ),
        ];
        for (raw, want) in cases {
            let got = decode(raw, 10).unwrap_err().to_string();
            assert!(got.starts_with(want), "{raw}: {got}");
        }
    }

    #[test]
    fn outgoing_shapes_match_the_contract() {
        let json = |m: Outgoing| {
            let f = m.frame();
            // §5.2: a 7-bit length, or 126 and a 16-bit one.
            let start = if f[1] & 0x7f == 126 { 4 } else { 2 };
            serde_json::from_slice::<serde_json::Value>(&f[start..]).unwrap()
        };
        assert_eq!(
            json(Outgoing::Message {
                room: "general",
                epoch: "e1",
                seq: 1,
                from: "a",
                text: "<b>",
                ts: 5,
                id: None
            }),
            serde_json::json!({"type":"message","room":"general","epoch":"e1","seq":1,"from":"a","text":"<b>","ts":5})
        );
        assert_eq!(
            json(Outgoing::Message {
                room: "ops",
                epoch: "e1",
                seq: 1,
                from: "a",
                text: "<b>",
                ts: 5,
                id: Some("c1")
            }),
            serde_json::json!({"type":"message","room":"ops","epoch":"e1","seq":1,"from":"a","text":"<b>","ts":5,"id":"c1"})
        );
        assert_eq!(
            json(Outgoing::Error {
                code: ErrorCode::TokenExpired,
                message: "m",
                id: None,
                room: None
            }),
            serde_json::json!({"type":"error","code":"token_expired","message":"m"})
        );
        assert_eq!(
            json(Outgoing::Error {
                code: ErrorCode::RateLimited,
                message: "m",
                id: Some("c2"),
                room: None
            }),
            serde_json::json!({"type":"error","code":"rate_limited","message":"m","id":"c2"})
        );
        assert_eq!(
            json(Outgoing::Error {
                code: ErrorCode::NotSubscribed,
                message: "m",
                id: None,
                room: Some("ops")
            }),
            serde_json::json!({"type":"error","code":"not_subscribed","message":"m","room":"ops"})
        );
        assert_eq!(
            json(Outgoing::Welcome {
                user: "a",
                expires_at: 9,
                room: "general",
                rooms: &["general".to_string(), "team-*".to_string()],
                greeting: Greeting {
                    epoch: "e1",
                    recovered: None,
                    missed: None,
                    online: vec!["a"],
                    online_count: 1,
                    online_truncated: false,
                    history: vec![],
                    last_seq: 0,
                },
                limits: Limits {
                    max_message_bytes: 10,
                    message_rate: 3
                }
            }),
            serde_json::json!({"type":"welcome","user":"a","expires_at":9,"epoch":"e1","online":["a"],
                "online_count":1,"history":[],"last_seq":0,"room":"general","rooms":["general","team-*"],
                "limits":{"max_message_bytes":10,"message_rate":3}})
        );
        assert_eq!(
            json(Outgoing::Subscribed {
                room: "ops",
                greeting: Greeting {
                    epoch: "e2",
                    recovered: Some(false),
                    missed: None,
                    online: vec!["a", "b"],
                    online_count: 3,
                    online_truncated: true,
                    history: vec![],
                    last_seq: 7,
                },
            }),
            serde_json::json!({"type":"subscribed","room":"ops","epoch":"e2","recovered":false,"online":["a","b"],
                "online_count":3,"online_truncated":true,"history":[],"last_seq":7})
        );
        assert_eq!(
            json(Outgoing::Unsubscribed {
                room: "ops",
                reason: Some("forbidden")
            }),
            serde_json::json!({"type":"unsubscribed","room":"ops","reason":"forbidden"})
        );
    }
}
