//! The WebSocket opening handshake, server side (RFC 6455 §4.2), with the
//! token check in the middle of it.
//!
//! A client asks to upgrade with an ordinary HTTP request:
//!
//! ```text
//! GET /ws?token=eyJ... HTTP/1.1
//! Host: chat.example
//! Upgrade: websocket
//! Connection: Upgrade
//! Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==
//! Sec-WebSocket-Version: 13
//! ```
//!
//! [`check`] walks §4.2.1 in order; the first failed check decides the
//! answer, and [`HandshakeError::response`] maps every failure to its status
//! in one place. Only when all pass, the token included, does the server
//! write `101 Switching Protocols` ([`switching_protocols`]); a bad token is
//! refused *before* the upgrade, as a plain HTTP `401`.

use crate::auth::{Claims, TokenError, Tokens};
use crate::http::{Request, Response};

/// Why an upgrade was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum HandshakeError {
    /// §4.2.1 (1): "An HTTP/1.1 or higher GET request".
    OldHttpVersion,
    /// §4.2.1 (2): "A |Host| header field".
    MissingHost,
    /// §4.2.1 (3): no `Upgrade: websocket`; this is not a WebSocket request.
    NotAnUpgrade,
    /// §4.2.1 (4): "A |Connection| header field that includes the token
    /// "Upgrade"".
    MissingConnectionUpgrade,
    /// §4.2.1 (5): no `Sec-WebSocket-Key`, or not 16 bytes in base64.
    BadKey,
    /// §4.2.1 (6) and §4.4: only version 13 is spoken.
    UnsupportedVersion,
    /// §10.2: a browser page from another origin (cross-site WebSocket
    /// hijacking).
    ForbiddenOrigin,
    /// RFC 6750 §3.1: missing or invalid bearer token.
    Token(TokenError),
}

/// What was wrong, in words, for the log and the `--trace-handshake` FAIL
/// line (`expired token`, `forbidden origin`). The `400`s send the same
/// words to the client; a bad token's reason is never sent (see
/// [`HandshakeError::response`]).
impl std::fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandshakeError::OldHttpVersion => f.write_str("WebSocket needs HTTP/1.1 or later"),
            HandshakeError::MissingHost => f.write_str("no \"Host\" header"),
            HandshakeError::NotAnUpgrade => f.write_str("not a WebSocket upgrade"),
            HandshakeError::MissingConnectionUpgrade => {
                f.write_str("\"Connection\" header must include \"Upgrade\"")
            }
            HandshakeError::BadKey => {
                f.write_str("\"Sec-WebSocket-Key\" must be 16 bytes in base64")
            }
            HandshakeError::UnsupportedVersion => f.write_str("unsupported WebSocket version"),
            HandshakeError::ForbiddenOrigin => f.write_str("forbidden origin"),
            HandshakeError::Token(reason) => write!(f, "{reason}"),
        }
    }
}

impl HandshakeError {
    /// The one place a refused upgrade becomes a status code.
    pub fn response(&self) -> Response {
        let bad_request = || Response::error(400, "bad_request", &self.to_string());
        match self {
            HandshakeError::OldHttpVersion
            | HandshakeError::MissingHost
            | HandshakeError::MissingConnectionUpgrade
            | HandshakeError::BadKey => bad_request(),
            // §4.2.2: a server that wants a different protocol "MAY send a
            // 426 ... with an |Upgrade| header field".
            HandshakeError::NotAnUpgrade => Response::error(
                426,
                "upgrade_required",
                "this endpoint speaks WebSocket: send \"Upgrade: websocket\"",
            )
            .with_header("Upgrade", "websocket"),
            // §4.4: the server answers with the versions it supports.
            HandshakeError::UnsupportedVersion => Response::error(
                426,
                "unsupported_version",
                "only Sec-WebSocket-Version 13 is supported",
            )
            .with_header("Sec-WebSocket-Version", "13"),
            HandshakeError::ForbiddenOrigin => Response::error(
                403,
                "forbidden_origin",
                "pages from this origin may not connect (see --allowed-origin)",
            ),
            // One answer for every bad token: telling a caller *why* its
            // forged token failed helps nobody honest.
            HandshakeError::Token(_) => invalid_token(),
        }
    }
}

/// `401 {"error":"invalid_token"}`, with the RFC 6750 §3 challenge.
pub fn invalid_token() -> Response {
    Response::json(401, &serde_json::json!({ "error": "invalid_token" }))
        .with_header("WWW-Authenticate", "Bearer error=\"invalid_token\"")
}

/// A handshake that passed every check.
#[derive(Debug)]
pub struct Accepted {
    pub claims: Claims,
    /// The `Sec-WebSocket-Accept` value for the 101.
    pub accept: String,
}

/// Runs the server's checks of §4.2.1, in order, then the origin's and the
/// token's. `allowed_origins` are origins besides the server's own. Each
/// check is written into `trace` (a no-op unless `--trace-handshake`).
pub fn check(
    request: &Request,
    tokens: &Tokens,
    allowed_origins: &[String],
    trace: &mut Trace,
) -> Result<Accepted, HandshakeError> {
    use HandshakeError::*;
    // (1) The method is GET: the router sends anything else a 405.
    trace.require(
        request.minor_version >= 1,
        "RFC 6455 §4.2.1 (1)",
        "an HTTP/1.1 or later GET request",
        OldHttpVersion,
    )?;
    // (2) Host, which the same-origin policy of browsers relies on.
    let host = request.header("Host").unwrap_or_default();
    trace.require(
        !host.is_empty(),
        "RFC 6455 §4.2.1 (2)",
        "a Host header",
        MissingHost,
    )?;
    // (3) Upgrade: websocket (the value is case-insensitive).
    trace.require(
        request.header_has_token("Upgrade", "websocket"),
        "RFC 6455 §4.2.1 (3)",
        "Upgrade: websocket",
        NotAnUpgrade,
    )?;
    // (4) Connection: Upgrade, possibly among other tokens
    // ("keep-alive, Upgrade" is what Firefox sends).
    trace.require(
        request.header_has_token("Connection", "Upgrade"),
        "RFC 6455 §4.2.1 (4)",
        "Connection includes Upgrade",
        MissingConnectionUpgrade,
    )?;
    // (5) Sec-WebSocket-Key: "a base64-encoded value that, when decoded, is
    // 16 bytes in length".
    let key = request.header("Sec-WebSocket-Key").unwrap_or_default();
    trace.require(
        is_base64_of_16_bytes(key),
        "RFC 6455 §4.2.1 (5)",
        "Sec-WebSocket-Key is 16 bytes in base64",
        BadKey,
    )?;
    // (6) Sec-WebSocket-Version: 13.
    trace.require(
        request.header("Sec-WebSocket-Version") == Some("13"),
        "RFC 6455 §4.2.1 (6)",
        "Sec-WebSocket-Version: 13",
        UnsupportedVersion,
    )?;
    // §4.2.1 (7) and §10.2: browsers send `Origin`; a page from another
    // site must not ride on a user's credentials. Clients without `Origin`
    // are not browsers, and are not at risk.
    trace.require(
        origin_allowed(request, allowed_origins),
        "RFC 6455 §10.2",
        "no Origin, or the server's own or an allowed one",
        ForbiddenOrigin,
    )?;
    // Not in RFC 6455, which leaves authentication to the application
    // (§10.5): the bearer token, checked as RFC 7519 §7.2 says.
    let token = bearer_token(request);
    trace.require(
        token.is_some(),
        "RFC 6750 §2.1, §2.3",
        "a bearer token (Authorization header or ?token=)",
        Token(TokenError::Missing),
    )?;
    let verified = tokens.verify(token.as_deref().unwrap_or_default());
    trace.require(
        verified.is_ok(),
        "RFC 7515 §5.2, RFC 7519 §7.2",
        "HS256 signature, iss, nbf and exp (no leeway)",
        Token(
            verified
                .as_ref()
                .err()
                .copied()
                .unwrap_or(TokenError::Malformed),
        ),
    )?;
    let claims = verified.map_err(Token)?;
    let accept = accept_key(key);
    trace.note(|| {
        format!(
            "  token: sub={} username={} exp={}\n  \
             Sec-WebSocket-Accept = base64(SHA-1({key:?} + \"{GUID}\")) = {accept}",
            claims.sub, claims.username, claims.exp
        )
    });
    Ok(Accepted { claims, accept })
}

/// The GUID RFC 6455 §1.3 appends to the key before hashing.
pub const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// What `--trace-handshake` prints for one upgrade: the request, each check
/// with the section it enforces, and the response. Off, it records nothing.
#[derive(Default)]
pub struct Trace {
    lines: Option<Vec<String>>,
}

impl Trace {
    pub fn new(on: bool) -> Trace {
        Trace {
            lines: on.then(Vec::new),
        }
    }

    /// Records a check; `Err(error)` if it failed.
    fn require(
        &mut self,
        passed: bool,
        section: &str,
        what: &str,
        error: HandshakeError,
    ) -> Result<(), HandshakeError> {
        if passed {
            self.note(|| format!("  ok   {section:<30} {what}"));
            Ok(())
        } else {
            // The check, then what was wrong: "... exp (no leeway): expired token".
            self.note(|| format!("  FAIL {section:<30} {what}: {error}"));
            Err(error)
        }
    }

    /// Adds lines (built only when tracing).
    pub fn note(&mut self, text: impl FnOnce() -> String) {
        if let Some(lines) = &mut self.lines {
            lines.push(text());
        }
    }

    /// The request head as received, with any token replaced.
    pub fn request(&mut self, request: &Request) {
        self.note(|| {
            let mut head = format!(
                "> {} {} HTTP/1.{}",
                request.method,
                crate::log::redact_target(&request.target),
                request.minor_version
            );
            for (name, value) in &request.headers {
                let value = String::from_utf8_lossy(value);
                let value = if name.eq_ignore_ascii_case("Authorization") {
                    "Bearer [redacted]".into()
                } else {
                    value
                };
                head.push_str(&format!("\n> {name}: {value}"));
            }
            head
        });
    }

    /// The response as sent.
    pub fn response(&mut self, raw: &str) {
        self.note(|| {
            raw.trim_end()
                .lines()
                .map(|l| format!("< {l}"))
                .collect::<Vec<_>>()
                .join("\n")
        });
    }

    /// Everything recorded, one block of text; `None` when off.
    pub fn finish(self) -> Option<String> {
        self.lines.map(|lines| lines.join("\n") + "\n")
    }
}

/// True if the request has no `Origin`, or its origin is the server's own
/// (`http://` or `https://` followed by the `Host` the browser connected
/// to), or one of `allowed` (RFC 6454 origins, compared without case and
/// without a trailing slash).
fn origin_allowed(request: &Request, allowed: &[String]) -> bool {
    let Some(origin) = request.header("Origin") else {
        return true;
    };
    let origin = origin.trim_end_matches('/');
    let host = request.header("Host").unwrap_or_default();
    let same_origin = ["http://", "https://"].iter().any(|scheme| {
        origin
            .strip_prefix(scheme)
            .is_some_and(|rest| rest.eq_ignore_ascii_case(host))
    });
    same_origin
        || allowed
            .iter()
            .any(|a| a.trim_end_matches('/').eq_ignore_ascii_case(origin))
}

/// The token from `Authorization: Bearer <jwt>` (RFC 6750 §2.1), else from
/// the `token` query parameter (§2.3), which is all a browser's WebSocket
/// API can send.
pub fn bearer_token(request: &Request) -> Option<String> {
    if request.header("Authorization").is_some() {
        return authorization_bearer(request).map(str::to_string);
    }
    request.query_param("token").filter(|t| !t.is_empty())
}

/// The token in an `Authorization: Bearer <token>` header (RFC 6750 §2.1;
/// the scheme is case-insensitive), if there is one.
pub fn authorization_bearer(request: &Request) -> Option<&str> {
    let (scheme, token) = request.header("Authorization")?.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("Bearer") && !token.is_empty()).then_some(token)
}

/// §4.2.2 (5.4): the base64 of the SHA-1 of the key followed by the GUID
/// `258EAFA5-E914-47DA-95CA-C5AB0DC85B11`. It proves to the client that the
/// server read its handshake, and is not a security measure.
pub fn accept_key(key: &str) -> String {
    tungstenite::handshake::derive_accept_key(key.as_bytes())
}

/// True if `key` is the base64 (RFC 4648 §4, padded) of exactly 16 bytes:
/// 22 alphabet characters and `==`. 16 bytes are 128 bits and 22 characters
/// carry 132, so the last character's low 4 bits must be zero: it is one of
/// `A`, `Q`, `g`, `w`.
fn is_base64_of_16_bytes(key: &str) -> bool {
    let bytes = key.as_bytes();
    let alphabet = |b: &u8| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/';
    bytes.len() == 24
        && bytes[..22].iter().all(alphabet)
        && matches!(bytes[21], b'A' | b'Q' | b'g' | b'w')
        && &bytes[22..] == b"=="
}

/// The `101` that completes the handshake (§4.2.2 (5)). No subprotocol and
/// no extension is chosen: the server offers neither.
pub fn switching_protocols(accept: &str) -> String {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\n\
         Upgrade: websocket\r\n\
         Connection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_rfc_example() {
        // RFC 6455 §1.3.
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn keys_must_be_16_bytes_of_base64() {
        assert!(is_base64_of_16_bytes("dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(!is_base64_of_16_bytes("dGhlIHNhbXBsZSBub25jZR==")); // 'R' leaves bits
        assert!(!is_base64_of_16_bytes("dGhlIHNhbXBsZSBub25j")); // too short
        assert!(!is_base64_of_16_bytes("dGhlIHNhbXBsZSBub2*jZQ=="));
        assert!(!is_base64_of_16_bytes(""));
    }
}
