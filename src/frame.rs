//! The frames the server writes itself (RFC 6455 §5.2).
//!
//! `tungstenite` reads every client frame and writes its own control replies
//! (pong, close echo). The frames the *server* originates, chat messages and
//! closes, are encoded here, once: server-to-client frames are never masked
//! (§5.1), so one encoding is byte-for-byte right for every client and a
//! broadcast shares it as an `Arc<[u8]>`.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-------+-+-------------+-------------------------------+
//! |F|R|R|R| opcode|M| Payload len |    Extended payload length    |
//! |I|S|S|S|  (4)  |A|     (7)     |             (16/64)           |
//! |N|V|V|V|       |S|             |   (if payload len==126/127)   |
//! | |1|2|3|       |K|             |                               |
//! +-+-+-+-+-------+-+-------------+ - - - - - - - - - - - - - - - +
//! ```

use std::sync::Arc;

/// An encoded frame, ready for the wire and cheap to share.
pub type Frame = Arc<[u8]>;

const OPCODE_TEXT: u8 = 0x1;
const OPCODE_BINARY: u8 = 0x2;
const OPCODE_CLOSE: u8 = 0x8;
/// FIN set: every frame we send is a whole message (no fragmentation).
const FIN: u8 = 0x80;

/// A text frame carrying `payload`, which must be UTF-8 (§5.6).
pub fn text(payload: &str) -> Frame {
    encode(OPCODE_TEXT, payload.as_bytes())
}

/// A binary frame (only echo mode sends these).
pub fn binary(payload: &[u8]) -> Frame {
    encode(OPCODE_BINARY, payload)
}

/// A close frame (§5.5.1): a 2-byte status code, then a UTF-8 reason. A
/// control frame's payload is at most 125 bytes (§5.5), so the reason is cut
/// at a character boundary to fit.
pub fn close(code: u16, reason: &str) -> Frame {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    encode(OPCODE_CLOSE, &payload)
}

/// The status code in a close frame this module encoded (short, unmasked).
pub fn close_code(frame: &[u8]) -> Option<u16> {
    match frame {
        [b0, len, hi, lo, ..] if *b0 == FIN | OPCODE_CLOSE && *len >= 2 => {
            Some(u16::from_be_bytes([*hi, *lo]))
        }
        _ => None,
    }
}

fn encode(opcode: u8, payload: &[u8]) -> Frame {
    let len = payload.len();
    let mut out = Vec::with_capacity(len + 10);
    out.push(FIN | opcode);
    // MASK bit clear: a server MUST NOT mask (§5.1). The length uses the
    // shortest form, as §5.2 requires ("the minimal number of bytes").
    if len < 126 {
        out.push(len as u8);
    } else if let Ok(len16) = u16::try_from(len) {
        out.push(126);
        out.extend_from_slice(&len16.to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(payload);
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_use_the_shortest_form() {
        assert_eq!(&text("Hello")[..], b"\x81\x05Hello"); // RFC 6455 §5.7 example
        let medium = text(&"a".repeat(256));
        assert_eq!(&medium[..4], &[0x81, 126, 0x01, 0x00]);
        let large = text(&"a".repeat(65_536));
        assert_eq!(&large[..10], &[0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
    }

    #[test]
    fn close_frames_carry_code_and_bounded_reason() {
        assert_eq!(&close(4001, "expired")[..], b"\x88\x09\x0f\xa1expired");
        assert_eq!(close_code(&close(4008, "slow")), Some(4008));
        assert_eq!(close_code(&text("hi")), None);
        let long = close(1000, &"é".repeat(100));
        assert!(long.len() <= 2 + 125);
        assert!(std::str::from_utf8(&long[4..]).is_ok());
    }
}
