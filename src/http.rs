//! HTTP/1.1 on one connection: read a request with limits, write a response.
//!
//! Implements the parts of RFC 9112 (HTTP/1.1 message syntax) this server
//! needs: a request head parsed by `httparse`, a body framed by
//! `Content-Length` only (§6.3), persistent connections (§9.3), and every
//! response framed by `Content-Length`. Every read is bounded in size and in
//! time, so a client cannot hold a thread or memory by sending slowly or
//! sending much.

use std::borrow::Cow;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Largest request head (request line plus headers); more is `431`.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
/// Most header fields in one request; more is `431`.
pub const MAX_HEADERS: usize = 64;
/// Largest request body; more is `413`.
pub const MAX_BODY_BYTES: usize = 8 * 1024;

/// A parsed request. Header names keep their spelling; look-ups ignore case
/// (RFC 9110 §5.1).
#[derive(Debug)]
pub struct Request {
    pub method: String,
    /// The request target as sent, e.g. `/ws?token=...` (origin-form).
    pub target: String,
    /// Minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl Request {
    /// The first value of a header, if present and valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers_named(name).next()
    }

    /// True if the header is present, whatever its value.
    pub fn has_header(&self, name: &str) -> bool {
        self.headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(name))
    }

    /// Every value of a header (a field may be sent more than once).
    pub fn headers_named<'a, 'n>(
        &'a self,
        name: &'n str,
    ) -> impl Iterator<Item = &'a str> + use<'a, 'n> {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .filter_map(|(_, v)| std::str::from_utf8(v).ok())
            .map(str::trim)
    }

    /// True if a comma-separated header (like `Connection`) lists `token`,
    /// ignoring case (RFC 9110 §5.6.1).
    pub fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.headers_named(name)
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// The path part of the target, without the query.
    pub fn path(&self) -> &str {
        self.target.split_once('?').map_or(&self.target, |(p, _)| p)
    }

    /// The value of one query parameter, percent-decoded.
    pub fn query_param(&self, key: &str) -> Option<String> {
        let (_, query) = self.target.split_once('?')?;
        url::form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.into_owned())
    }

    /// RFC 9112 §9.3: HTTP/1.1 stays open unless `Connection: close`;
    /// HTTP/1.0 closes unless `Connection: keep-alive`.
    pub fn keep_alive(&self) -> bool {
        if self.minor_version == 0 {
            self.header_has_token("Connection", "keep-alive")
        } else {
            !self.header_has_token("Connection", "close")
        }
    }
}

/// Why a request could not be read. [`RequestError::response`] maps each to
/// the answer the client gets, in one place.
#[derive(Debug)]
pub enum RequestError {
    /// The client closed or went idle before sending a byte: nothing to say.
    Idle,
    /// The head (or the body) did not arrive in time.
    TimedOut,
    HeadTooLarge,
    TooManyHeaders,
    Malformed(String),
    BodyTooLarge,
    /// `Transfer-Encoding` (chunked bodies) is not implemented.
    TransferEncoding,
    /// An HTTP/1.1 request without a `Host` header (RFC 9112 §3.2).
    MissingHost,
    /// More than one `Host` header (RFC 9112 §3.2).
    MultipleHosts,
    Io(io::Error),
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestError::Idle => write!(f, "connection idle"),
            RequestError::TimedOut => write!(f, "request not received in time"),
            RequestError::HeadTooLarge => {
                write!(f, "request head is larger than {MAX_HEAD_BYTES} bytes")
            }
            RequestError::TooManyHeaders => write!(f, "more than {MAX_HEADERS} header fields"),
            RequestError::Malformed(why) => write!(f, "malformed request: {why}"),
            RequestError::BodyTooLarge => {
                write!(f, "request body is larger than {MAX_BODY_BYTES} bytes")
            }
            RequestError::TransferEncoding => write!(
                f,
                "Transfer-Encoding is not supported; send the body with Content-Length"
            ),
            RequestError::MissingHost => write!(f, "missing Host header"),
            RequestError::MultipleHosts => write!(f, "more than one Host header"),
            RequestError::Io(e) => write!(f, "i/o error: {e}"),
        }
    }
}

impl RequestError {
    /// The response to send before closing, or `None` to close silently
    /// (the peer is gone or never spoke).
    pub fn response(&self) -> Option<Response> {
        let (status, code) = match self {
            RequestError::Idle | RequestError::Io(_) => return None,
            RequestError::TimedOut => (408, "request_timeout"),
            RequestError::HeadTooLarge | RequestError::TooManyHeaders => {
                (431, "request_header_fields_too_large")
            }
            RequestError::Malformed(_)
            | RequestError::MissingHost
            | RequestError::MultipleHosts => (400, "bad_request"),
            RequestError::BodyTooLarge => (413, "payload_too_large"),
            RequestError::TransferEncoding => (501, "not_implemented"),
        };
        Some(Response::error(status, code, &self.to_string()))
    }
}

/// One client connection: the socket plus bytes read past the end of the
/// last request (the start of a pipelined request, or of WebSocket frames).
pub struct Connection {
    stream: TcpStream,
    buf: Vec<u8>,
    /// How long the head may take to arrive, counted from when the server
    /// starts waiting (so it also bounds an idle keep-alive); the body gets
    /// as long again.
    timeout: Duration,
}

impl Connection {
    pub fn new(stream: TcpStream, timeout: Duration) -> Connection {
        // A client that stops reading must not hold this thread in a write
        // forever either.
        let _ = stream.set_write_timeout(Some(timeout));
        Connection {
            stream,
            buf: Vec::new(),
            timeout,
        }
    }

    /// Reads the next request: the head within the timeout and
    /// [`MAX_HEAD_BYTES`], then a `Content-Length` body within the timeout
    /// and [`MAX_BODY_BYTES`]. A slow client cannot hold the thread longer.
    pub fn read_request(&mut self) -> Result<Request, RequestError> {
        let deadline = Instant::now() + self.timeout;
        loop {
            if let Some(request) = self.parse_head()? {
                check_host(&request)?;
                return self.read_body(request);
            }
            if self.buf.len() >= MAX_HEAD_BYTES {
                return Err(RequestError::HeadTooLarge);
            }
            let room = MAX_HEAD_BYTES - self.buf.len();
            if self.fill(room, deadline)? == 0 {
                // EOF: quiet if between requests, an error if mid-head.
                return Err(if self.buf.is_empty() {
                    RequestError::Idle
                } else {
                    RequestError::Malformed("connection closed mid-request".into())
                });
            }
        }
    }

    /// Parses a complete head out of `buf`, if there is one, and removes
    /// it, leaving any bytes after it.
    fn parse_head(&mut self) -> Result<Option<Request>, RequestError> {
        let Some((request, len)) = parse_head(&self.buf)? else {
            return Ok(None);
        };
        self.buf.drain(..len);
        Ok(Some(request))
    }

    fn read_body(&mut self, mut request: Request) -> Result<Request, RequestError> {
        // Looked up by name on the raw headers: a value that is not UTF-8
        // must not make the header invisible (a smuggling vector).
        if request.has_header("Transfer-Encoding") {
            return Err(RequestError::TransferEncoding);
        }
        let length = content_length(&request)?;
        if length > MAX_BODY_BYTES {
            return Err(RequestError::BodyTooLarge);
        }
        let deadline = Instant::now() + self.timeout;
        while self.buf.len() < length {
            let missing = length - self.buf.len();
            // The head has arrived, so silence now is a stalled request.
            let got = self.fill(missing, deadline).map_err(|e| match e {
                RequestError::Idle => RequestError::TimedOut,
                other => other,
            })?;
            if got == 0 {
                return Err(RequestError::Malformed("connection closed mid-body".into()));
            }
        }
        request.body = self.buf.drain(..length).collect();
        Ok(request)
    }

    /// Reads at most `max` more bytes into `buf`, waiting no later than
    /// `deadline`. Returns how many arrived (0 at end of stream).
    fn fill(&mut self, max: usize, deadline: Instant) -> Result<usize, RequestError> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(self.timed_out());
        }
        self.stream
            .set_read_timeout(Some(left))
            .map_err(RequestError::Io)?;
        let mut chunk = [0u8; 2048];
        let want = max.min(chunk.len());
        match self.stream.read(&mut chunk[..want]) {
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(n)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Err(self.timed_out())
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => self.fill(max, deadline),
            Err(e) => Err(RequestError::Io(e)),
        }
    }

    /// A keep-alive connection that sent nothing is closed quietly; one that
    /// started a request and stalled is told why.
    fn timed_out(&self) -> RequestError {
        if self.buf.is_empty() {
            RequestError::Idle
        } else {
            RequestError::TimedOut
        }
    }

    /// Writes a response. For `HEAD` requests the body is left out but
    /// `Content-Length` still gives its size (RFC 9110 §9.3.2).
    pub fn write_response(
        &mut self,
        response: &Response,
        head_only: bool,
        keep_alive: bool,
    ) -> io::Result<()> {
        self.stream
            .write_all(&response.to_bytes(keep_alive, head_only))?;
        self.stream.flush()
    }

    /// Writes bytes as they are (the `101` of a WebSocket upgrade).
    pub fn write_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// True if the client has closed the connection (or reset it) since
    /// sending its request: nobody is left to read an answer. A client
    /// that half-closes after its request (`shutdown(SHUT_WR)`, which few
    /// do) looks the same. Bytes already read past the request (a
    /// pipelined one) mean it is still there.
    pub fn client_gone(&self) -> bool {
        self.buf.is_empty() && peer_closed(&self.stream)
    }

    /// Hands over the socket and whatever was read past the last request.
    pub fn into_parts(self) -> (TcpStream, Vec<u8>) {
        (self.stream, self.buf)
    }
}

/// Parses a request head from the start of `buf`: `Ok(None)` if it is not
/// complete yet, else the request (without its body) and the head's length.
/// No limit on `buf` is applied here; the caller bounds what it reads.
pub fn parse_head(buf: &[u8]) -> Result<Option<(Request, usize)>, RequestError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(RequestError::TooManyHeaders),
        Err(e) => return Err(RequestError::Malformed(e.to_string())),
    };
    let request = Request {
        method: parsed.method.unwrap_or_default().to_string(),
        target: parsed.path.unwrap_or_default().to_string(),
        minor_version: parsed.version.unwrap_or(1),
        headers: parsed
            .headers
            .iter()
            .map(|h| (h.name.to_string(), h.value.to_vec()))
            .collect(),
        body: Vec::new(),
    };
    Ok(Some((request, len)))
}

/// True if the peer has closed its side of `stream` (or reset it), without
/// taking any byte from the stream and without blocking: a non-blocking
/// peek reads 0 bytes only at the end of the stream. Data waiting (a
/// pipelined request) or nothing yet both mean the peer is still there.
fn peer_closed(stream: &TcpStream) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return false;
    }
    let closed = match stream.peek(&mut [0u8; 1]) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
        ),
    };
    // The connection goes on blocking, with its timeouts; if this fails the
    // next read or write fails too, and the connection ends.
    let _ = stream.set_nonblocking(false);
    closed
}

/// RFC 9112 §3.2: "A server MUST respond with a 400 (Bad Request) status
/// code to any HTTP/1.1 request message that lacks a Host header field and
/// to any request message that contains more than one Host header field".
/// HTTP/1.0 predates `Host` and may leave it out.
pub fn check_host(request: &Request) -> Result<(), RequestError> {
    let hosts = request
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("Host"))
        .count();
    match hosts {
        0 if request.minor_version >= 1 => Err(RequestError::MissingHost),
        0 | 1 => Ok(()),
        _ => Err(RequestError::MultipleHosts),
    }
}

/// The body length: absent means none; present must be one decimal number
/// (repeated fields must agree, RFC 9110 §8.6).
pub fn content_length(request: &Request) -> Result<usize, RequestError> {
    let mut length = None;
    let raw = request
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("Content-Length"));
    for (_, value) in raw {
        let value = std::str::from_utf8(value).unwrap_or("(not UTF-8)").trim();
        // RFC 9110 §8.6: `1*DIGIT`. `str::parse` would also take "+2", and
        // a proxy that reads the length differently is how requests get
        // smuggled.
        let n = Some(value)
            .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|v| v.parse::<usize>().ok())
            .ok_or_else(|| RequestError::Malformed(format!("bad Content-Length {value:?}")))?;
        if length.is_some_and(|l| l != n) {
            return Err(RequestError::Malformed("conflicting Content-Length".into()));
        }
        length = Some(n);
    }
    Ok(length.unwrap_or(0))
}

/// A response ready to write. Bodies are short JSON, text or a static file.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Cow<'static, [u8]>,
}

impl Response {
    pub fn new(status: u16, content_type: &str, body: impl Into<Cow<'static, [u8]>>) -> Response {
        Response {
            status,
            headers: vec![("Content-Type", content_type.to_string())],
            body: body.into(),
        }
    }

    /// A JSON body.
    pub fn json(status: u16, value: &serde_json::Value) -> Response {
        Response::new(status, "application/json", value.to_string().into_bytes())
    }

    /// The error shape every failure uses: `{"error":code,"message":..}`.
    pub fn error(status: u16, code: &str, message: &str) -> Response {
        Response::json(
            status,
            &serde_json::json!({ "error": code, "message": message }),
        )
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }

    /// The response on the wire: the head, then the body unless
    /// `head_only` (a `HEAD` request).
    pub fn to_bytes(&self, keep_alive: bool, head_only: bool) -> Vec<u8> {
        let mut out = self.head(keep_alive).into_bytes();
        if !head_only {
            out.extend_from_slice(&self.body);
        }
        out
    }

    /// Status line and headers, ending with the blank line.
    fn head(&self, keep_alive: bool) -> String {
        let mut head = format!("HTTP/1.1 {} {}\r\n", self.status, reason(self.status));
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str(&format!("Content-Length: {}\r\n", self.body.len()));
        let connection = if keep_alive { "keep-alive" } else { "close" };
        head.push_str(&format!("Connection: {connection}\r\n\r\n"));
        head
    }
}

/// Reason phrases for the statuses this server sends (RFC 9110 §15).
pub fn reason(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(headers: &[(&str, &str)], target: &str) -> Request {
        Request {
            method: "GET".into(),
            target: target.into(),
            minor_version: 1,
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                .collect(),
            body: Vec::new(),
        }
    }

    #[test]
    fn header_tokens_ignore_case_and_lists() {
        let r = request(&[("connection", "keep-alive, Upgrade")], "/");
        assert!(r.header_has_token("Connection", "upgrade"));
        assert!(!r.header_has_token("Connection", "close"));
        assert!(r.keep_alive());
    }

    #[test]
    fn query_params_are_decoded() {
        let r = request(&[], "/ws?x=1&token=a%2Eb.c");
        assert_eq!(r.path(), "/ws");
        assert_eq!(r.query_param("token").as_deref(), Some("a.b.c"));
        assert_eq!(r.query_param("nope"), None);
    }

    #[test]
    fn content_length_must_be_a_number_and_agree() {
        assert_eq!(content_length(&request(&[], "/")).ok(), Some(0));
        let bad = request(&[("Content-Length", "ten")], "/");
        assert!(matches!(
            content_length(&bad),
            Err(RequestError::Malformed(_))
        ));
        let twice = request(&[("Content-Length", "1"), ("Content-Length", "2")], "/");
        assert!(matches!(
            content_length(&twice),
            Err(RequestError::Malformed(_))
        ));
    }

    #[test]
    fn a_closed_peer_is_seen_without_consuming_data() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server_side, _) = listener.accept().unwrap();
        assert!(!peer_closed(&server_side), "open and silent");
        client.write_all(b"x").unwrap();
        drop(client);
        // The byte is still there to read, then the end of the stream.
        std::thread::sleep(Duration::from_millis(50));
        assert!(!peer_closed(&server_side), "a byte is waiting");
        let mut buf = [0u8; 1];
        server_side.read_exact(&mut buf).unwrap();
        assert!(peer_closed(&server_side));
    }

    #[test]
    fn http11_needs_exactly_one_host() {
        assert!(check_host(&request(&[("Host", "a")], "/")).is_ok());
        assert!(matches!(
            check_host(&request(&[], "/")),
            Err(RequestError::MissingHost)
        ));
        assert!(matches!(
            check_host(&request(&[("Host", "a"), ("host", "b")], "/")),
            Err(RequestError::MultipleHosts)
        ));
        let mut old = request(&[], "/");
        old.minor_version = 0;
        assert!(check_host(&old).is_ok(), "HTTP/1.0 may leave Host out");
    }

    #[test]
    fn responses_always_carry_content_length() {
        let r = Response::new(200, "text/plain", b"ok".to_vec());
        assert_eq!(
            r.head(true),
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\n"
        );
    }
}
