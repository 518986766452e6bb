//! `GET /metrics`: the Prometheus text format, parsed, with counters that
//! move as the server works.

mod support;

use std::collections::HashMap;

use serde_json::json;
use support::*;

/// Parses the exposition text into `name{labels}` → value, checking that
/// every sample belongs to a family announced with `# TYPE`.
fn scrape(addr: std::net::SocketAddr) -> HashMap<String, f64> {
    let response = get(addr, "/metrics");
    assert_eq!(response.status, 200);
    assert!(
        response
            .header("Content-Type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let mut typed = Vec::new();
    let mut samples = HashMap::new();
    for line in response.text().lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            typed.push(name.to_string());
        } else if line.starts_with("# HELP ") {
            continue;
        } else {
            let (series, value) = line.rsplit_once(' ').expect("name value");
            let name = series.split('{').next().unwrap();
            // A histogram's samples are its family's name and a suffix.
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .filter(|family| typed.iter().any(|t| t == family))
                .unwrap_or(name);
            assert!(typed.iter().any(|t| t == family), "untyped sample {line}");
            samples.insert(series.to_string(), value.parse().expect("a number"));
        }
    }
    samples
}

/// A server that serves `/metrics` on its main listener.
fn start_public() -> TestServer {
    start_with(|c| c.metrics_public = true)
}

#[test]
fn counters_follow_what_the_server_does() {
    let server = start_public();
    let before = scrape(server.addr);
    assert_eq!(before["jwtchat_websocket_clients"], 0.0);
    assert_eq!(before["jwtchat_messages_broadcast_total"], 0.0);
    assert_eq!(
        before[&format!(
            "jwtchat_build_info{{version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        )],
        1.0
    );

    let failed = post_json(
        server.addr,
        "/auth",
        &json!({"username":"userA","password":"no"}).to_string(),
    );
    assert_eq!(failed.status, 401);
    assert!(server.connect_token("garbage").is_err());
    let (mut a, _) = server.connect("userA");
    let (mut b, _) = server.connect("userB");
    a.recv_type("join");
    a.say("counted");
    a.recv_type("message");
    b.recv_type("message");

    let after = scrape(server.addr);
    assert_eq!(after["jwtchat_auth_failures_total"], 1.0);
    assert_eq!(after["jwtchat_logins_total"], 2.0);
    assert_eq!(
        after["jwtchat_tokens_rejected_total{reason=\"malformed\"}"],
        1.0
    );
    assert_eq!(
        after["jwtchat_tokens_rejected_total{reason=\"expired\"}"],
        0.0
    );
    assert_eq!(after["jwtchat_websocket_connections_total"], 2.0);
    assert_eq!(after["jwtchat_websocket_clients"], 2.0);
    assert_eq!(after["jwtchat_messages_broadcast_total"], 1.0);
    // welcome ×2, join ×1, the message ×2.
    assert_eq!(
        after["jwtchat_deliveries_total"], 3.0,
        "fan-out deliveries: join + message ×2"
    );
    assert!(after["jwtchat_bytes_sent_total"] > 0.0);
    assert!(after["jwtchat_tcp_connections_open"] >= 2.0);
}

#[test]
fn expiry_and_slow_consumer_disconnects_are_counted() {
    let server = start_with(|c| {
        c.token_ttl_secs = 2;
        c.metrics_public = true;
    });
    let (mut a, _) = server.connect("userA");
    assert_eq!(a.until_close().0, 4001);
    assert_eq!(scrape(server.addr)["jwtchat_expiry_disconnects_total"], 1.0);
}

#[test]
fn metrics_can_have_a_listener_of_their_own() {
    let server = start_with(|c| c.metrics_bind = Some("127.0.0.1:0".into()));
    let metrics_addr = server
        .handle
        .as_ref()
        .unwrap()
        .metrics_addr()
        .expect("metrics listener");
    assert_eq!(get(server.addr, "/metrics").status, 404);
    assert_eq!(get(metrics_addr, "/").status, 404);
    assert!(scrape(metrics_addr).contains_key("jwtchat_deliveries_total"));
}

#[test]
fn metrics_are_not_public_unless_asked() {
    let server = start();
    let response = get(server.addr, "/metrics");
    assert_eq!(response.status, 404, "{}", response.text());
    // The same answer as any other missing path.
    let missing = get(server.addr, "/no-such-file");
    assert_eq!(response.json(), missing.json());
    assert_eq!(response.header("Content-Type"), Some("application/json"));
    assert!(!response.text().contains("tokens_rejected"));

    let public = start_public();
    assert!(scrape(public.addr).contains_key("jwtchat_tokens_rejected_total{reason=\"missing\"}"));
    // Both listeners, when both are asked for.
    let both = start_with(|c| {
        c.metrics_public = true;
        c.metrics_bind = Some("127.0.0.1:0".into());
    });
    let metrics_addr = both.handle.as_ref().unwrap().metrics_addr().unwrap();
    assert_eq!(get(both.addr, "/metrics").status, 200);
    assert_eq!(get(metrics_addr, "/metrics").status, 200);
}
