//! One account must not be able to exhaust the server's memory.
//!
//! The attack: one user opens 100 WebSockets from one address, each sends
//! its whole burst of large messages and never reads a byte. Every message
//! is fanned out to all 100 sockets that are not reading, so a server that
//! copies or batches without bound holds gigabytes for a moment. The
//! server's peak RSS (`VmHWM`) must grow by less than 64 MiB, and a client
//! that does read must keep getting every message.
//!
//! These tests measure the whole process, so they run one at a time, and
//! this file holds nothing else.

mod support;

use std::io::Write;
use std::net::TcpStream;
use std::sync::Mutex;
use std::thread;
use std::time::Duration;

use jwtchat::Config;
use support::{PATIENCE, TestServer, read_response, start_with, upgrade_request};

const SOCKETS: usize = 100;
const TEXT_BYTES: usize = 4000;
const PEAK_GROWTH_LIMIT: u64 = 64 * 1024 * 1024;

/// The peak RSS is process-wide: one measurement at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

#[test]
fn one_user_with_100_sockets_that_never_read_cannot_exhaust_memory() {
    // Default limits: the per-user message rate is what stops most of it.
    let growth = attack(|_| {});
    assert_under_limit(growth);
}

#[test]
fn without_message_rates_memory_is_still_bounded() {
    // As if each socket were a different user from a different address: no
    // rate stops the flood, so the bounds on batches and queues must.
    let growth = attack(|c| {
        c.message_rate = 0;
        c.user_message_rate = Some(0);
    });
    assert_under_limit(growth);
}

fn assert_under_limit(growth: u64) {
    eprintln!("peak RSS growth: {:.1} MiB", growth as f64 / 1048576.0);
    assert!(
        growth < PEAK_GROWTH_LIMIT,
        "peak RSS grew by {} MiB (limit {} MiB)",
        growth >> 20,
        PEAK_GROWTH_LIMIT >> 20
    );
}

/// Runs the attack against a fresh server and returns how far the peak RSS
/// rose above the RSS just before it.
fn attack(tweak: impl FnOnce(&mut Config)) -> u64 {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let server = start_with(tweak);
    let token = server.token("userA");
    let (mut reader, _) = server.connect("userB");
    let sockets: Vec<TcpStream> = (0..SOCKETS).map(|_| upgraded(&server, &token)).collect();

    let baseline = rss_kib("VmRSS");
    reset_peak_rss();
    let chat = frame(&serde_json::json!({ "type": "message", "text": "x".repeat(TEXT_BYTES) }));
    let burst = Config::default().message_burst as usize;
    let senders: Vec<_> = sockets
        .into_iter()
        .map(|mut socket| {
            let chat = chat.clone();
            thread::spawn(move || {
                for _ in 0..burst {
                    // The server may cut a socket off (4008) mid-flood.
                    if socket.write_all(&chat).is_err() {
                        break;
                    }
                }
                socket // kept open, never read
            })
        })
        .collect();
    let sockets: Vec<TcpStream> = senders.into_iter().filter_map(|s| s.join().ok()).collect();

    // The reader keeps up, so it gets every message in order and is never
    // dropped for somebody else's flood; once it has been quiet for a
    // second, the flood is over.
    let seqs: Vec<u64> = reader
        .messages_until_quiet(Duration::from_secs(1))
        .iter()
        .map(|m| m["seq"].as_u64().expect("seq"))
        .collect();
    let in_order: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, in_order, "messages arrive in order, none lost");
    assert!(!seqs.is_empty(), "some of the flood was chatted");
    let peak = rss_kib("VmHWM");
    drop(sockets);
    peak.saturating_sub(baseline) * 1024
}

/// A raw socket past the `101`, for a client that will never read.
fn upgraded(server: &TestServer, token: &str) -> TcpStream {
    let mut stream = TcpStream::connect(server.addr).expect("connect");
    stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
    let request = upgrade_request(&format!("/ws?token={token}"), "");
    stream.write_all(request.as_bytes()).expect("upgrade");
    assert_eq!(read_response(&mut stream, true).status, 101);
    stream
}

/// A masked client text frame (RFC 6455 §5.2) carrying `value`.
fn frame(value: &serde_json::Value) -> Vec<u8> {
    let payload = value.to_string().into_bytes();
    let mask = [0x11, 0x22, 0x33, 0x44];
    let mut out = vec![0x81];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// A field of `/proc/self/status`, in KiB.
fn rss_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

/// Resets `VmHWM` to the current RSS (Linux ≥ 4.0, `clear_refs` value 5).
fn reset_peak_rss() {
    std::fs::write("/proc/self/clear_refs", "5").expect("reset the peak RSS");
}
