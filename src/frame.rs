//! The frames the server writes itself (RFC 6455 §5.2).
//!
//! `tungstenite` reads every client frame and writes its own control replies
//! (pong, close echo). The frames the *server* originates, chat messages and
//! closes, are encoded here, once: server-to-client frames are never masked
//! (§5.1), so one encoding is byte-for-byte right for every client and a
//! broadcast shares it as an `Arc<[u8]>`.
//!
//! [`HeaderScanner`] reads the other direction, only far enough to see
//! where each client frame starts and what its opcode is: `tungstenite`
//! reassembles fragmented messages out of sight, and the message rate must
//! count the frames that never surface as a message.
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

/// Opcode of a continuation frame (§5.4): the next fragment of a message.
pub const OPCODE_CONTINUATION: u8 = 0x0;
const OPCODE_TEXT: u8 = 0x1;
const OPCODE_BINARY: u8 = 0x2;
const OPCODE_CLOSE: u8 = 0x8;
const OPCODE_PING: u8 = 0x9;
const OPCODE_PONG: u8 = 0xa;

/// True for the frames that do not start a message: continuations (§5.4),
/// pings and pongs (§5.5.2, §5.5.3). Each costs the server a frame's work
/// all the same.
pub fn starts_no_message(opcode: u8) -> bool {
    matches!(opcode, OPCODE_CONTINUATION | OPCODE_PING | OPCODE_PONG)
}
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

/// Follows a client's byte stream frame by frame (§5.2), reporting each
/// frame's opcode as its header completes, and counting the data messages
/// whose last byte has gone by. It checks nothing: malformed input is
/// `tungstenite`'s to refuse, and the connection ends with it.
#[derive(Debug, Default)]
pub struct HeaderScanner {
    header: [u8; 14],
    /// Header bytes seen so far of the current frame.
    have: usize,
    /// Payload bytes of the current frame still to skip.
    payload_left: u64,
    /// The current frame is the last of a data message (FIN set on a text,
    /// binary or continuation frame, §5.4).
    ends_message: bool,
    /// Data messages seen whole so far.
    messages: u64,
}

impl HeaderScanner {
    /// Reads `bytes` (the next bytes of the stream) and calls `on_frame`
    /// with the opcode of each frame whose header they complete.
    pub fn feed(&mut self, mut bytes: &[u8], mut on_frame: impl FnMut(u8)) {
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let skip =
                    usize::try_from(self.payload_left).map_or(bytes.len(), |n| n.min(bytes.len()));
                bytes = &bytes[skip..];
                self.payload_left -= skip as u64;
                self.count_if_whole();
                continue;
            }
            self.header[self.have] = bytes[0];
            self.have += 1;
            bytes = &bytes[1..];
            if self.have == self.header_len() {
                let opcode = self.header[0] & 0x0f;
                on_frame(opcode);
                let fin = self.header[0] & 0x80 != 0;
                self.ends_message =
                    fin && matches!(opcode, OPCODE_CONTINUATION | OPCODE_TEXT | OPCODE_BINARY);
                self.payload_left = self.payload_len();
                self.have = 0;
                self.count_if_whole();
            }
        }
    }

    /// Data messages whose every byte has been fed so far.
    pub fn whole_messages(&self) -> u64 {
        self.messages
    }

    /// Counts the current frame's message once its payload is all here.
    fn count_if_whole(&mut self) {
        if self.payload_left == 0 && self.ends_message {
            self.messages += 1;
            self.ends_message = false;
        }
    }

    /// The whole header's length, as far as the bytes so far tell: 2, plus
    /// 2 or 8 for an extended length, plus 4 for a masking key.
    fn header_len(&self) -> usize {
        if self.have < 2 {
            return 2;
        }
        let extended = match self.header[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if self.header[1] & 0x80 != 0 { 4 } else { 0 };
        2 + extended + mask
    }

    fn payload_len(&self) -> u64 {
        match self.header[1] & 0x7f {
            126 => u64::from(u16::from_be_bytes([self.header[2], self.header[3]])),
            127 => {
                let mut len = [0u8; 8];
                len.copy_from_slice(&self.header[2..10]);
                u64::from_be_bytes(len)
            }
            len => u64::from(len),
        }
    }
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
        let long = close(1000, &"é".repeat(100));
        assert!(long.len() <= 2 + 125);
        assert!(std::str::from_utf8(&long[4..]).is_ok());
    }

    #[test]
    fn the_scanner_counts_whole_messages_only_once_their_last_byte_is_in() {
        // A text message in two fragments, a ping between them, then an
        // empty text message: two messages.
        let mut stream = Vec::new();
        stream.extend([0x01, 0x80 | 3, 0, 0, 0, 0, b'a', b'b', b'c']);
        stream.extend([0x89, 0x80, 0, 0, 0, 0]);
        stream.extend([0x80, 0x80 | 2, 0, 0, 0, 0, b'd', b'e']);
        stream.extend([0x81, 0x80, 0, 0, 0, 0]);
        let mut counts = Vec::new();
        let mut scanner = HeaderScanner::default();
        for byte in &stream {
            scanner.feed(std::slice::from_ref(byte), |_| {});
            counts.push(scanner.whole_messages());
        }
        // The first message is whole at its last fragment's last byte (the
        // 23rd), the empty one at its header's last byte (the 29th).
        let first_whole = counts.iter().position(|&n| n == 1);
        let second_whole = counts.iter().position(|&n| n == 2);
        assert_eq!((first_whole, second_whole), (Some(22), Some(28)));
        assert_eq!(counts.len(), 29);
    }

    #[test]
    fn the_scanner_finds_every_frame_however_the_bytes_are_split() {
        // A masked text fragment, two empty continuations, a ping, and a
        // 300-byte binary frame (16-bit length), as a client sends them.
        let mut stream = Vec::new();
        stream.extend_from_slice(&[0x01, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2]);
        stream.extend_from_slice(&[0x00, 0x80, 1, 2, 3, 4]);
        stream.extend_from_slice(&[0x80, 0x80, 1, 2, 3, 4]);
        stream.extend_from_slice(&[0x89, 0x80, 1, 2, 3, 4]);
        stream.extend_from_slice(&[0x82, 0xfe, 0x01, 0x2c, 1, 2, 3, 4]);
        stream.extend_from_slice(&[0u8; 300]);
        for chunk in [1, 3, 7, stream.len()] {
            let mut scanner = HeaderScanner::default();
            let mut opcodes = Vec::new();
            for piece in stream.chunks(chunk) {
                scanner.feed(piece, |op| opcodes.push(op));
            }
            assert_eq!(opcodes, [0x1, 0x0, 0x0, 0x9, 0x2], "in pieces of {chunk}");
        }
    }
}
