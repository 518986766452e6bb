//! Why the server closes a WebSocket, decided in one place.
//!
//! Every close the server starts is a [`CloseReason`]: the status code
//! (RFC 6455 §7.4.1, and 4000–4999 for this application, §7.4.2), the
//! reason text carried in the close frame (§5.5.1), and, where the page must
//! be told more than a code, a JSON `error` sent just before the close frame.
//! The session (protocol faults, floods), the room (expiry, slow consumers)
//! and the server (shutdown) all close through here, and the outbox keeps
//! the reason it was closed with, for the log.

use std::borrow::Cow;

use crate::frame::{self, Frame};
use crate::protocol::{ErrorCode, Outgoing, TOKEN_EXPIRED_TEXT, close_code};

/// A close the server starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseReason {
    /// The status code (§7.4).
    pub code: u16,
    /// The close frame's reason text; cut to fit a control frame (§5.5).
    pub reason: Cow<'static, str>,
    /// An `error` message the client gets just before the close frame.
    pub notice: Option<(ErrorCode, &'static str)>,
}

impl CloseReason {
    const fn new(code: u16, reason: &'static str) -> CloseReason {
        CloseReason {
            code,
            reason: Cow::Borrowed(reason),
            notice: None,
        }
    }

    /// 4001: the token has expired; log in again (or `reauth` sooner).
    pub fn token_expired() -> CloseReason {
        CloseReason {
            notice: Some((ErrorCode::TokenExpired, TOKEN_EXPIRED_TEXT)),
            ..CloseReason::new(close_code::TOKEN_EXPIRED, "token expired")
        }
    }

    /// 4008: the client fell too far behind reading what it was sent.
    pub fn slow_consumer() -> CloseReason {
        CloseReason::new(
            close_code::SLOW_CONSUMER,
            "too slow: messages were not read",
        )
    }

    /// 1001: the server is shutting down.
    pub fn going_away() -> CloseReason {
        CloseReason::new(close_code::GOING_AWAY, "server shutting down")
    }

    /// 1008: the client kept sending over the message rate after being
    /// told.
    pub fn rate_exceeded() -> CloseReason {
        CloseReason::new(close_code::POLICY_VIOLATION, "message rate exceeded")
    }

    /// 1003: a binary message; the chat speaks JSON text.
    pub fn binary_refused() -> CloseReason {
        CloseReason::new(
            close_code::UNSUPPORTED_DATA,
            "binary messages are not accepted; send JSON text",
        )
    }

    /// 1009: a frame or message over the size limit, with its size if
    /// known.
    pub fn too_big(size_and_max: Option<(usize, usize)>) -> CloseReason {
        let reason = match size_and_max {
            Some((size, max)) => Cow::Owned(format!(
                "message of {size} bytes is over the {max}-byte limit"
            )),
            None => Cow::Borrowed("message too big"),
        };
        CloseReason {
            reason,
            ..CloseReason::new(close_code::MESSAGE_TOO_BIG, "")
        }
    }

    /// 1007: text that is not UTF-8 (§8.1).
    pub fn invalid_utf8() -> CloseReason {
        CloseReason::new(close_code::INVALID_PAYLOAD, "text is not valid UTF-8")
    }

    /// 1002: any other breach of the WebSocket protocol, as `tungstenite`
    /// describes it.
    pub fn protocol_error(what: String) -> CloseReason {
        CloseReason {
            reason: Cow::Owned(what),
            ..CloseReason::new(close_code::PROTOCOL_ERROR, "")
        }
    }

    /// The frames that say goodbye, in order: the notice, if any, then the
    /// close frame.
    pub fn frames(&self) -> Vec<Frame> {
        let notice = self.notice.map(|(code, message)| {
            Outgoing::Error {
                code,
                message,
                id: None,
                room: None,
            }
            .frame()
        });
        notice
            .into_iter()
            .chain(std::iter::once(frame::close(self.code, &self.reason)))
            .collect()
    }

    /// Whether what is still queued for the client is dropped first: a slow
    /// consumer would never read it, and its close frame must not wait
    /// behind it. Every other close lets the queue go out first.
    pub fn discards_queued(&self) -> bool {
        self.code == close_code::SLOW_CONSUMER
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_expired_token_is_told_before_the_close() {
        let frames = CloseReason::token_expired().frames();
        assert_eq!(frames.len(), 2);
        let notice: serde_json::Value = serde_json::from_slice(&frames[0][2..]).unwrap();
        assert_eq!(notice["code"], "token_expired");
        assert_eq!(&frames[1][..], &frame::close(4001, "token expired")[..]);
    }

    #[test]
    fn only_a_slow_consumer_loses_its_queue() {
        assert!(CloseReason::slow_consumer().discards_queued());
        assert!(!CloseReason::token_expired().discards_queued());
        assert!(!CloseReason::going_away().discards_queued());
    }

    #[test]
    fn sizes_are_named_when_known() {
        assert_eq!(
            CloseReason::too_big(Some((10, 5))).reason,
            "message of 10 bytes is over the 5-byte limit"
        );
        assert_eq!(CloseReason::too_big(None).code, 1009);
    }
}
