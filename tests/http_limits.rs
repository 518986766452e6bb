//! HTTP/1.1 framing and limits over a real socket: `/healthz`, keep-alive,
//! pipelining, head size and header count, slow clients, routing errors and
//! malformed requests.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::*;

/// Checks the shape every error response has: the status, a JSON body with
/// the `error` code as a string and a `message` string, and framing headers.
fn assert_error(response: &RawResponse, status: u16, code: &str) {
    assert_eq!(response.status, status, "body: {}", response.text());
    assert_eq!(
        response.header("Content-Type"),
        Some("application/json"),
        "{response:?}"
    );
    assert_content_length(response);
    let body = response.json();
    assert_eq!(body["error"].as_str(), Some(code), "body: {body}");
    assert!(body["message"].is_string(), "body: {body}");
}

/// `Content-Length` is present and equals the body length read.
fn assert_content_length(response: &RawResponse) {
    let length = response
        .header("Content-Length")
        .unwrap_or_else(|| panic!("no Content-Length in {response:?}"));
    assert_eq!(length, response.body.len().to_string(), "{response:?}");
}

fn connect(server: &TestServer) -> TcpStream {
    let stream = TcpStream::connect(server.addr).expect("connect");
    stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
    stream
}

/// Reads until the server closes the connection; returns every byte that
/// arrived first. Panics if it is still open after [`PATIENCE`].
fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
    let mut out = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return out,
            Err(e) => panic!(
                "connection not closed ({e}); received {:?}",
                String::from_utf8_lossy(&out)
            ),
        }
    }
}

/// True if nothing at all arrives within `wait` and the connection stays
/// open (a read times out).
fn stays_open_and_silent(stream: &mut TcpStream, wait: Duration) -> bool {
    stream.set_read_timeout(Some(wait)).expect("timeout");
    let mut byte = [0u8; 1];
    let silent = matches!(
        stream.read(&mut byte),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
    );
    stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
    silent
}

// ---------------------------------------------------------------------------
// /healthz and framing

#[test]
fn healthz_answers_ok() {
    let server = start();
    let response = get(server.addr, "/healthz");
    assert_eq!(response.status, 200);
    assert_eq!(response.body, b"ok");
    assert_eq!(response.header("Content-Length"), Some("2"));
    assert_eq!(
        response.header("Content-Type"),
        Some("text/plain; charset=utf-8")
    );
}

#[test]
fn head_healthz_has_length_but_no_body() {
    let server = start();
    let mut stream = connect(&server);
    stream
        .write_all(b"HEAD /healthz HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .expect("send");
    let response = read_response(&mut stream, true);
    assert_eq!(response.status, 200);
    assert_eq!(response.header("Content-Length"), Some("2"));
    let rest = read_to_close(&mut stream);
    assert!(
        rest.is_empty(),
        "HEAD response carried a body: {:?}",
        String::from_utf8_lossy(&rest)
    );
}

#[test]
fn every_response_has_content_length() {
    let server = start();
    let requests: [&[u8]; 10] = [
        b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        b"GET /nope HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        b"DELETE /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        b"POST /ws HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        b"GET /auth HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        b"POST /auth HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi",
        b"POST /auth HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n{}",
        b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        b"HELLO\r\n\r\n",
    ];
    for raw in requests {
        let response = send_raw(server.addr, raw);
        assert_content_length(&response);
    }
}

// ---------------------------------------------------------------------------
// Persistent connections and pipelining

#[test]
fn http11_keeps_the_connection_open_until_close() {
    let server = start();
    let mut stream = connect(&server);
    for _ in 0..2 {
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
            .expect("send");
        let response = read_response(&mut stream, false);
        assert_eq!(response.status, 200);
        assert_eq!(response.body, b"ok");
        assert_eq!(response.header("Connection"), Some("keep-alive"));
    }
    assert!(
        stays_open_and_silent(&mut stream, Duration::from_millis(200)),
        "a keep-alive connection was closed after a response"
    );
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .expect("send");
    let response = read_response(&mut stream, false);
    assert_eq!(response.status, 200);
    assert_eq!(response.header("Connection"), Some("close"));
    let rest = read_to_close(&mut stream);
    assert!(rest.is_empty(), "bytes after the last response: {rest:?}");
}

#[test]
fn connection_close_is_case_insensitive_and_listed() {
    let server = start();
    let mut stream = connect(&server);
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\nconnection: TE, CLOSE\r\n\r\n")
        .expect("send");
    let response = read_response(&mut stream, false);
    assert_eq!(response.status, 200);
    assert_eq!(response.header("Connection"), Some("close"));
    assert!(closed_by_server(&mut stream));
}

#[test]
fn http10_closes_unless_keep_alive() {
    let server = start();
    let mut stream = connect(&server);
    stream
        .write_all(b"GET /healthz HTTP/1.0\r\n\r\n")
        .expect("send");
    let response = read_response(&mut stream, false);
    assert_eq!(response.status, 200);
    assert_eq!(response.body, b"ok");
    assert_eq!(response.header("Connection"), Some("close"));
    let rest = read_to_close(&mut stream);
    assert!(rest.is_empty(), "bytes after the response: {rest:?}");

    let mut stream = connect(&server);
    for _ in 0..2 {
        stream
            .write_all(b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .expect("send");
        let response = read_response(&mut stream, false);
        assert_eq!(response.status, 200);
        assert_eq!(response.header("Connection"), Some("keep-alive"));
    }
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let server = start();
    let mut stream = connect(&server);
    stream
        .write_all(
            b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n\
              GET /nope HTTP/1.1\r\nHost: test\r\n\r\n\
              HEAD /healthz HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n",
        )
        .expect("send");
    let first = read_response(&mut stream, false);
    assert_eq!(first.status, 200);
    assert_eq!(first.body, b"ok");
    let second = read_response(&mut stream, false);
    assert_error(&second, 404, "not_found");
    let third = read_response(&mut stream, true);
    assert_eq!(third.status, 200);
    assert_eq!(third.header("Content-Length"), Some("2"));
    let rest = read_to_close(&mut stream);
    assert!(rest.is_empty(), "bytes after the last response: {rest:?}");
}

#[test]
fn pipelined_request_after_a_body_is_not_swallowed() {
    let server = start();
    let mut stream = connect(&server);
    // A 415 login (body read and discarded) followed by a health check.
    stream
        .write_all(
            b"POST /auth HTTP/1.1\r\nHost: test\r\nContent-Type: text/plain\r\n\
              Content-Length: 5\r\n\r\nhelloGET /healthz HTTP/1.1\r\nHost: test\r\n\
              Connection: close\r\n\r\n",
        )
        .expect("send");
    let first = read_response(&mut stream, false);
    assert_error(&first, 415, "unsupported_media_type");
    let second = read_response(&mut stream, false);
    assert_eq!(second.status, 200);
    assert_eq!(second.body, b"ok");
}

// ---------------------------------------------------------------------------
// Head size and header count

#[test]
fn head_over_8_kib_is_431() {
    let server = start();
    let raw = format!(
        "GET /healthz HTTP/1.1\r\nHost: test\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(9000)
    );
    let response = send_raw(server.addr, raw.as_bytes());
    assert_error(&response, 431, "request_header_fields_too_large");
}

#[test]
fn head_just_under_8_kib_is_served() {
    let server = start();
    let prefix = "GET /healthz HTTP/1.1\r\nHost: test\r\nConnection: close\r\nX-Big: ";
    let suffix = "\r\n\r\n";
    let filler = 8 * 1024 - prefix.len() - suffix.len();
    let raw = format!("{prefix}{}{suffix}", "a".repeat(filler));
    assert_eq!(raw.len(), 8 * 1024);
    let response = send_raw(server.addr, raw.as_bytes());
    assert_eq!(response.status, 200, "body: {}", response.text());
    assert_eq!(response.body, b"ok");
}

fn request_with_headers(count: usize) -> String {
    // `Host` counts as one of the fields.
    let mut raw = String::from("GET /healthz HTTP/1.1\r\nHost: test\r\n");
    for i in 1..count {
        raw.push_str(&format!("X-H{i}: v\r\n"));
    }
    raw.push_str("\r\n");
    raw
}

#[test]
fn sixty_five_headers_is_431() {
    let server = start();
    let response = send_raw(server.addr, request_with_headers(65).as_bytes());
    assert_error(&response, 431, "request_header_fields_too_large");
}

#[test]
fn sixty_four_headers_is_fine() {
    let server = start();
    let response = send_raw(server.addr, request_with_headers(64).as_bytes());
    assert_eq!(response.status, 200, "body: {}", response.text());
    assert_eq!(response.body, b"ok");
}

// ---------------------------------------------------------------------------
// Slow and idle clients

fn start_impatient() -> TestServer {
    start_with(|c| c.request_timeout = Duration::from_secs(1))
}

#[test]
fn incomplete_head_gets_408_and_close() {
    let server = start_impatient();
    let mut stream = connect(&server);
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .expect("send");
    let response = read_response(&mut stream, false);
    assert_error(&response, 408, "request_timeout");
    assert_eq!(response.header("Connection"), Some("close"));
    assert!(closed_by_server(&mut stream), "still open after the 408");
}

#[test]
fn incomplete_body_gets_408_and_close() {
    let server = start_impatient();
    let mut stream = connect(&server);
    stream
        .write_all(
            b"POST /auth HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              Content-Length: 50\r\n\r\n{\"username\"",
        )
        .expect("send");
    let response = read_response(&mut stream, false);
    assert_error(&response, 408, "request_timeout");
    assert!(closed_by_server(&mut stream), "still open after the 408");
}

#[test]
fn idle_connection_is_closed_without_a_response() {
    let server = start_impatient();
    let mut stream = connect(&server);
    let received = read_to_close(&mut stream);
    assert!(
        received.is_empty(),
        "an idle connection got {:?}",
        String::from_utf8_lossy(&received)
    );
}

#[test]
fn idle_keep_alive_after_a_request_is_closed_without_a_response() {
    let server = start_impatient();
    let mut stream = connect(&server);
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send");
    assert_eq!(read_response(&mut stream, false).status, 200);
    let received = read_to_close(&mut stream);
    assert!(
        received.is_empty(),
        "an idle keep-alive got {:?}",
        String::from_utf8_lossy(&received)
    );
}

#[test]
fn trickled_head_is_cut_off() {
    let server = start_impatient();
    let mut stream = connect(&server);
    let head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: 1\r\n\r\n";
    let mut received = Vec::new();
    let mut closed = false;
    let give_up = Instant::now() + PATIENCE;
    let mut chunk = [0u8; 1024];
    'trickle: for byte in head.iter().cycle() {
        if Instant::now() > give_up {
            break;
        }
        if stream.write_all(&[*byte]).is_err() {
            closed = true;
            break;
        }
        // Wait ~300 ms for anything from the server before the next byte.
        stream
            .set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
        loop {
            match stream.read(&mut chunk) {
                Ok(0) => {
                    closed = true;
                    break 'trickle;
                }
                Ok(n) => received.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    break;
                }
                Err(_) => {
                    closed = true;
                    break 'trickle;
                }
            }
        }
    }
    assert!(closed, "a trickling client was never cut off");
    let text = String::from_utf8_lossy(&received);
    assert!(
        text.starts_with("HTTP/1.1 408 "),
        "unexpected answer to a trickled head: {text:?}"
    );
    assert!(text.contains("request_timeout"), "{text:?}");
}

// ---------------------------------------------------------------------------
// Routing

#[test]
fn unknown_path_is_404() {
    let server = start();
    let response = get(server.addr, "/nope");
    assert_error(&response, 404, "not_found");
}

#[test]
fn wrong_methods_are_405_with_allow() {
    let server = start();
    let cases = [
        ("DELETE", "/healthz", "GET, HEAD"),
        ("POST", "/healthz", "GET, HEAD"),
        ("PUT", "/", "GET, HEAD"),
        ("DELETE", "/main.js", "GET, HEAD"),
        ("POST", "/ws", "GET"),
        ("PUT", "/ws", "GET"),
        ("GET", "/auth", "POST"),
    ];
    for (method, path, allow) in cases {
        let raw = format!("{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        let response = send_raw(server.addr, raw.as_bytes());
        assert_error(&response, 405, "method_not_allowed");
        assert_eq!(
            response.header("Allow"),
            Some(allow),
            "{method} {path}: {response:?}"
        );
    }
}

#[test]
fn head_of_an_error_has_no_body() {
    let server = start();
    let mut stream = connect(&server);
    stream
        .write_all(b"HEAD /nope HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .expect("send");
    let response = read_response(&mut stream, true);
    assert_eq!(response.status, 404);
    let length: usize = response
        .header("Content-Length")
        .expect("Content-Length")
        .parse()
        .expect("number");
    assert!(length > 0);
    assert!(read_to_close(&mut stream).is_empty(), "HEAD got a body");
}

// ---------------------------------------------------------------------------
// Malformed and unsupported requests

#[test]
fn chunked_body_is_501() {
    let server = start();
    let response = send_raw(
        server.addr,
        b"POST /auth HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
          Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    );
    assert_error(&response, 501, "not_implemented");
    assert_eq!(response.header("Connection"), Some("close"));
}

#[test]
fn conflicting_content_length_is_400() {
    let server = start();
    let response = send_raw(
        server.addr,
        b"POST /auth HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
          Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}x",
    );
    assert_error(&response, 400, "bad_request");
    assert_eq!(response.header("Connection"), Some("close"));
}

#[test]
fn non_numeric_content_length_is_400() {
    let server = start();
    for value in ["ten", "-1", "1 2", "0x10"] {
        let raw = format!(
            "POST /auth HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
             Content-Length: {value}\r\n\r\n{{}}"
        );
        let response = send_raw(server.addr, raw.as_bytes());
        assert_error(&response, 400, "bad_request");
    }
}

/// RFC 9110 §8.6: `Content-Length = 1*DIGIT`. A sign is not a digit, and a
/// server that reads `+2` as 2 disagrees with peers that refuse it about
/// where the body ends.
#[test]
fn signed_content_length_is_400() {
    let server = start();
    let response = send_raw(
        server.addr,
        b"GET /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: +2\r\n\
          Connection: close\r\n\r\nxx",
    );
    assert_error(&response, 400, "bad_request");
}

#[test]
fn garbage_request_line_is_400() {
    let server = start();
    for raw in [
        &b"HELLO\r\n\r\n"[..],
        b"GET\r\n\r\n",
        b"GET /healthz HTTP/9.9\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nNo Colon Here\r\n\r\n",
    ] {
        let response = send_raw(server.addr, raw);
        assert_error(&response, 400, "bad_request");
        assert_eq!(response.header("Connection"), Some("close"));
    }
}

#[test]
fn connection_closed_mid_head_is_400_and_closed() {
    // The server must cope with a client that half-closes mid-head: it
    // answers 400 and closes rather than hanging on to the connection.
    let server = start();
    let mut stream = connect(&server);
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .expect("send");
    stream
        .shutdown(std::net::Shutdown::Write)
        .expect("half-close");
    let response = read_response(&mut stream, false);
    assert_error(&response, 400, "bad_request");
    assert!(closed_by_server(&mut stream));
}

#[test]
fn a_body_that_never_comes_gets_408() {
    let server = start_with(|c| c.request_timeout = Duration::from_secs(1));
    let r = send_raw(
        server.addr,
        b"POST /auth HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 10\r\n\r\n",
    );
    assert_eq!(r.status, 408);
}

#[test]
fn framing_headers_that_are_not_utf8_are_not_ignored() {
    let server = start();
    let r = send_raw(
        server.addr,
        b"POST /auth HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: \xffchunked\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(r.status, 501);
    let r = send_raw(
        server.addr,
        b"GET /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nContent-Length: \xff\r\n\r\n",
    );
    assert_eq!(r.status, 400);
}

#[test]
fn http11_without_host_or_with_two_is_400() {
    let server = start();
    let cases = [
        (
            &b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n"[..],
            "missing Host header",
        ),
        (
            b"GET /healthz HTTP/1.1\r\nHost: a\r\nhost: b\r\nConnection: close\r\n\r\n",
            "more than one Host header",
        ),
        (
            b"GET /healthz HTTP/1.1\r\nHost: a\r\nHost: a\r\nConnection: close\r\n\r\n",
            "more than one Host header",
        ),
        (
            b"POST /auth HTTP/1.1\r\nContent-Type: application/json\r\n\
              Content-Length: 2\r\n\r\n{}",
            "missing Host header",
        ),
        (
            b"GET /ws?token=x HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            "missing Host header",
        ),
    ];
    for (raw, message) in cases {
        let response = send_raw(server.addr, raw);
        assert_error(&response, 400, "bad_request");
        assert_eq!(response.json()["message"], message);
        assert_eq!(response.header("Connection"), Some("close"));
    }
    // HTTP/1.0 predates Host: still served.
    let old = send_raw(server.addr, b"GET /healthz HTTP/1.0\r\n\r\n");
    assert_eq!(old.status, 200);
}
