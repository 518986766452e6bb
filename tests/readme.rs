//! Keeps the README's "Walk-through with curl" true: every sample output
//! in it is produced here, from the real binary, and must match the file.
//! `JWTCHAT_UPDATE_DOCS=1 cargo test --test readme` rewrites those blocks.
//!
//! Each generated block sits between `<!-- walkthrough:NAME -->` and
//! `<!-- /walkthrough -->`. The commands in them are the ones this test
//! replays (curl and websocat are not needed to run it: it sends the same
//! requests itself, over a plain socket). Only what must vary from run to
//! run is replaced: the token, times and the password fingerprint.

mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;

use serde_json::Value;
use support::*;
use tungstenite::Message;
use tungstenite::client::IntoClientRequest;

/// What the README shows for `iat`; every other Unix time keeps its
/// distance from the real `iat` (`exp` is still `iat` + 900).
const SHOWN_IAT: u64 = 1_795_910_061;
/// What the README shows for a message's `ts` (Unix milliseconds).
const SHOWN_TS: &str = "1795910061123";
/// What the README shows for `pwf`: demo users are hashed afresh at each
/// start, so the real one changes every run.
const SHOWN_PWF: &str = "9c0e4b1a7d3f52e8a61b0c4d";

const LOGIN: &str = "\
$ curl -s -X POST http://127.0.0.1:3000/auth \\
    -H 'Content-Type: application/json' \\
    -d '{\"username\":\"userA\",\"password\":\"passwordA\"}'";
const KEEP_TOKEN: &str = "\
$ TOKEN=$(curl -s -X POST http://127.0.0.1:3000/auth \\
    -H 'Content-Type: application/json' \\
    -d '{\"username\":\"userA\",\"password\":\"passwordA\"}' | jq -r .token)";
const DECODE: &str = "\
$ jq -cR 'split(\".\")[1] | gsub(\"-\";\"+\") | gsub(\"_\";\"/\") | @base64d | fromjson' <<< \"$TOKEN\"";
const UPGRADE: &str = "\
$ curl -i -N http://127.0.0.1:3000/ws \\
    -H \"Authorization: Bearer $TOKEN\" \\
    -H 'Connection: Upgrade' -H 'Upgrade: websocket' \\
    -H 'Sec-WebSocket-Version: 13' \\
    -H 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=='";
const BAD_TOKEN: &str = "\
$ curl -i http://127.0.0.1:3000/ws -H 'Authorization: Bearer nope' \\
    -H 'Connection: Upgrade' -H 'Upgrade: websocket' \\
    -H 'Sec-WebSocket-Version: 13' -H 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=='";
const WRONG_TYPE: &str = "\
$ curl -si -X POST http://127.0.0.1:3000/auth \\
    -H 'Content-Type: text/plain' -d 'userA:passwordA'";
const WEBSOCAT: &str = "$ websocat -H=\"Authorization: Bearer $TOKEN\" ws://127.0.0.1:3000/ws";
/// What the websocat user types, line by line.
const TYPED: [&str; 2] = [r#"{"type":"message","text":"hello"}"#, "hello"];

#[test]
fn the_readme_walkthrough_matches_the_real_server() {
    let blocks = walkthrough();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    let readme = std::fs::read_to_string(&path).expect("README.md");
    let (expected, stale) = regenerate(&readme, &blocks);
    if std::env::var("JWTCHAT_UPDATE_DOCS").is_ok_and(|v| v == "1") {
        std::fs::write(&path, &expected).expect("write README.md");
        return;
    }
    assert!(
        stale.is_empty(),
        "README.md's walk-through is out of date in {stale:?}: \
         run JWTCHAT_UPDATE_DOCS=1 cargo test --test readme\n{}",
        stale
            .iter()
            .map(|name| format!("--- generated {name} ---\n{}", blocks[name.as_str()]))
            .collect::<String>()
    );
    assert_eq!(readme, expected);
}

/// The README's "Tokens" section names every claim a real token carries.
#[test]
fn the_readme_names_every_token_claim() {
    let mut binary = start_binary();
    let addr = binary.wait_listening();
    let (_, token) = login(addr);
    let payload = decode_payload(&token);
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let (_, tokens) = readme.split_once("\n## Tokens\n").expect("## Tokens");
    let section = tokens.split("\n## ").next().unwrap_or_default();
    for claim in payload.as_object().expect("an object").keys() {
        assert!(
            section.contains(&format!("`{claim}`")),
            "README's Tokens section does not name the `{claim}` claim: {section}"
        );
    }
}

/// Replaces the content of every marked block; returns the new text and
/// the names of the blocks that changed. A marker the test does not
/// generate, or a block the README lacks, fails.
/// The module map in "How it works" names every source file, so a new
/// module cannot arrive without a line saying what it owns.
#[test]
fn the_readme_maps_every_source_file() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let map = readme
        .split("## How it works")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("a How it works section");
    let mut missing = Vec::new();
    let mut dirs = vec![std::path::PathBuf::from("src")];
    let root = env!("CARGO_MANIFEST_DIR");
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(std::path::Path::new(root).join(&dir)).expect("src") {
            let path = dir.join(entry.expect("entry").file_name());
            let name = path.to_string_lossy().into_owned();
            if std::path::Path::new(root).join(&path).is_dir() {
                // A directory may be mapped as a whole (`src/cluster/`).
                if !map.contains(&format!("`{name}/`")) {
                    dirs.push(path);
                }
            } else if !map.contains(&format!("`{name}`")) {
                missing.push(name);
            }
        }
    }
    assert!(
        missing.is_empty(),
        "not in the README's module map: {missing:?}"
    );
}

fn regenerate(readme: &str, blocks: &BTreeMap<&'static str, String>) -> (String, Vec<String>) {
    const OPEN: &str = "<!-- walkthrough:";
    const CLOSE: &str = "<!-- /walkthrough -->";
    let mut out = String::new();
    let mut stale = Vec::new();
    let mut seen = Vec::new();
    let mut rest = readme;
    while let Some(start) = rest.find(OPEN) {
        let (before, from) = rest.split_at(start);
        out.push_str(before);
        let (marker, after) = from.split_once("-->\n").expect("a complete opening marker");
        let name = marker[OPEN.len()..].trim();
        let (old, after) = after.split_once(CLOSE).expect("a closing marker");
        let new = blocks
            .get(name)
            .unwrap_or_else(|| panic!("README has a walkthrough:{name} block nobody generates"));
        if old != new {
            stale.push(name.to_string());
        }
        seen.push(name.to_string());
        out.push_str(marker);
        out.push_str("-->\n");
        out.push_str(new);
        out.push_str(CLOSE);
        rest = after;
    }
    out.push_str(rest);
    for name in blocks.keys() {
        assert!(
            seen.iter().any(|s| s == name),
            "README.md has no <!-- walkthrough:{name} --> block"
        );
    }
    (out, stale)
}

fn start_binary() -> Binary {
    Binary::spawn(
        Command::new(env!("CARGO_BIN_EXE_jwtchat"))
            .args(["--bind", "127.0.0.1:0"])
            .env("JWTCHAT_SECRET", std::str::from_utf8(SECRET).unwrap()),
    )
}

/// Runs every step of the walk-through against a fresh binary and returns
/// each block's text, by name.
fn walkthrough() -> BTreeMap<&'static str, String> {
    let mut binary = start_binary();
    let addr = binary.wait_listening();
    let mut blocks = BTreeMap::new();

    // Log in. Every later step uses this one token, so every Unix time
    // shown is this login's `iat` or `exp`.
    let (body, token) = login(addr);
    let payload = decode_payload(&token);
    let iat = payload["iat"].as_u64().expect("iat");
    let pwf = payload["pwf"].as_str().expect("pwf").to_string();
    let shown = |text: &str| normalise(text, iat, &pwf);
    let parts: Vec<&str> = token.split('.').collect();
    let short_token = format!("{}.{}...", parts[0], &parts[1][..8]);
    blocks.insert(
        "login",
        console(&format!(
            "{LOGIN}\n{}\n\n{KEEP_TOKEN}\n",
            shown(&body.replace(&token, &short_token))
        )),
    );
    blocks.insert(
        "payload",
        console(&format!("{DECODE}\n{}\n", shown(&payload_text(&token)))),
    );

    // The upgrade by hand, and the first frame as curl prints it.
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: 127.0.0.1:3000\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\
         Authorization: Bearer {token}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).unwrap();
    let (head, _) = read_head_and_body(&mut stream);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    let frame = read_frame(&mut stream);
    let (header, payload_bytes) = frame.split_at(frame_header_len(&frame));
    let welcome = shown(std::str::from_utf8(payload_bytes).expect("UTF-8 text frame"));
    assert_eq!(welcome.len(), payload_bytes.len(), "lengths kept");
    blocks.insert(
        "upgrade",
        console(&format!(
            "{UPGRADE}\n{head}{}{welcome}\n",
            as_a_terminal_shows(header)
        )),
    );
    blocks.insert("frame-header", explain_header(header));

    // A bad token.
    let response = exchange(
        addr,
        "GET /ws HTTP/1.1\r\nHost: 127.0.0.1:3000\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\
         Authorization: Bearer nope\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    );
    blocks.insert("bad-token", console(&format!("{BAD_TOKEN}\n{response}\n")));

    // A body of the wrong type.
    let form = "userA:passwordA";
    let response = exchange(
        addr,
        &format!(
            "POST /auth HTTP/1.1\r\nHost: 127.0.0.1:3000\r\nUser-Agent: curl/7.88.1\r\n\
             Accept: */*\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{form}",
            form.len()
        ),
    );
    blocks.insert(
        "wrong-type",
        console(&format!("{WRONG_TYPE}\n{response}\n")),
    );

    // A websocat session: what arrives, interleaved with what was typed.
    let mut session = format!("{WEBSOCAT}\n");
    let url = format!("ws://{addr}/ws");
    let mut request = url.into_client_request().unwrap();
    request.headers_mut().insert(
        "Authorization",
        format!("Bearer {token}").parse().expect("header value"),
    );
    let client = TcpStream::connect(addr).expect("connect");
    client.set_read_timeout(Some(PATIENCE)).unwrap();
    let (mut ws, _) = tungstenite::client(request, client).expect("upgrade");
    let welcome = loop {
        match ws.read().expect("the welcome") {
            Message::Text(text) => break text.to_string(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected text, got {other:?}"),
        }
    };
    session.push_str(&shown(&welcome));
    session.push('\n');
    for typed in TYPED {
        ws.send(Message::text(typed)).expect("send");
        session.push_str(typed);
        session.push('\n');
        let reply = loop {
            match ws.read().expect("a reply") {
                Message::Text(text) => break text.to_string(),
                _ => continue,
            }
        };
        session.push_str(&shown(&reply));
        session.push('\n');
    }
    blocks.insert("websocat", console(&session));
    blocks
}

fn console(text: &str) -> String {
    format!("```console\n{text}```\n")
}

/// Logs in userA; returns the response body and the token.
fn login(addr: SocketAddr) -> (String, String) {
    let response = post_json(
        addr,
        "/auth",
        r#"{"username":"userA","password":"passwordA"}"#,
    );
    assert_eq!(response.status, 200, "{}", response.text());
    let token = response.json()["token"]
        .as_str()
        .expect("token")
        .to_string();
    (response.text(), token)
}

/// The token's payload as `jq -c` prints it: the JSON text, keys in the
/// order they were sent (serde_json's `Value` would sort them).
fn payload_text(token: &str) -> String {
    use base64::Engine;
    let payload = token.split('.').nth(1).expect("three parts");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url");
    String::from_utf8(bytes).expect("UTF-8")
}

fn decode_payload(token: &str) -> Value {
    serde_json::from_str(&payload_text(token)).expect("JSON payload")
}

/// Replaces what changes from run to run, keeping every length.
fn normalise(text: &str, iat: u64, pwf: &str) -> String {
    let text = fixed_epochs(&text.replace(pwf, SHOWN_PWF));
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(i) = rest.find(|c: char| c.is_ascii_digit()) {
        let (head, tail) = rest.split_at(i);
        out.push_str(head);
        let digits: String = tail.chars().take_while(char::is_ascii_digit).collect();
        let after_letter = head.ends_with(|c: char| c.is_ascii_alphabetic());
        match digits.len() {
            // Unix seconds: the same distance from `iat` as for real.
            10 if !after_letter => {
                let n: u64 = digits.parse().unwrap();
                out.push_str(&(SHOWN_IAT + n.saturating_sub(iat)).to_string());
            }
            13 if !after_letter => out.push_str(SHOWN_TS),
            _ => out.push_str(&digits),
        }
        rest = &tail[digits.len()..];
    }
    out.push_str(rest);
    out
}

/// Sends `raw` on a new connection; returns the response as `curl -i`
/// prints it (the head, then the body).
fn exchange(addr: SocketAddr, raw: &str) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream.write_all(raw.as_bytes()).unwrap();
    let (head, body) = read_head_and_body(&mut stream);
    format!("{head}{}", String::from_utf8(body).expect("UTF-8 body"))
}

/// The response head exactly as sent, CRLFs as newlines, with its blank
/// line; and the body, if `Content-Length` announces one.
fn read_head_and_body(stream: &mut TcpStream) -> (String, Vec<u8>) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).expect("response head");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head)
        .expect("ASCII head")
        .replace("\r\n", "\n");
    let length = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(n, _)| n.eq_ignore_ascii_case("Content-Length"))
        .map_or(0, |(_, v)| v.trim().parse().expect("numeric length"));
    let mut body = vec![0u8; length];
    if !head.starts_with("HTTP/1.1 101 ") {
        stream.read_exact(&mut body).expect("body");
    }
    (head, body)
}

/// One unmasked server frame, header and payload (RFC 6455 §5.2).
fn read_frame(stream: &mut TcpStream) -> Vec<u8> {
    let mut frame = vec![0u8; 2];
    stream.read_exact(&mut frame).unwrap();
    assert_eq!(frame[1] & 0x80, 0, "server frames are not masked");
    let len = match frame[1] & 0x7f {
        126 => {
            let mut ext = [0u8; 2];
            stream.read_exact(&mut ext).unwrap();
            frame.extend_from_slice(&ext);
            usize::from(u16::from_be_bytes(ext))
        }
        127 => panic!("a welcome over 64 KiB"),
        n => usize::from(n),
    };
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload).unwrap();
    frame.extend_from_slice(&payload);
    frame
}

fn frame_header_len(frame: &[u8]) -> usize {
    if frame[1] & 0x7f == 126 { 4 } else { 2 }
}

/// Bytes as a UTF-8 terminal shows them: printable ASCII as itself,
/// anything else as the replacement character.
fn as_a_terminal_shows(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| {
            if (0x20..0x7f).contains(&b) {
                char::from(b)
            } else {
                '\u{fffd}'
            }
        })
        .collect()
}

/// The sentence after the curl session that reads the frame header.
fn explain_header(header: &[u8]) -> String {
    let bytes: Vec<String> = header.iter().map(|b| format!("0x{b:02X}")).collect();
    let length = match header.len() {
        2 => format!("the unmasked payload length, {}", header[1]),
        _ => format!(
            "126, meaning \"the length follows in 16 bits\", and the length, {}",
            u16::from_be_bytes([header[2], header[3]])
        ),
    };
    format!(
        "(`{}` before the JSON is the frame header: FIN + text opcode, then\n\
         {length}. JSON key order is not part of the protocol.)\n",
        bytes.join(" ")
    )
}
