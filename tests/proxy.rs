//! Behind a real nginx that terminates TLS: log in over `https://`, chat
//! over `wss://`, and rate limiting keyed on the forwarded client address.
//!
//! Needs nginx (Debian's package) and openssl. Without nginx the test is
//! skipped with a loud message, unless `JWTCHAT_REQUIRE_NGINX=1` (as CI
//! sets), where it fails.

mod support;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use native_tls::{TlsConnector, TlsStream};
use serde_json::{Value, json};
use support::*;
use tungstenite::Message;
use tungstenite::client::IntoClientRequest;

/// An nginx running `deploy/nginx-jwtchat.conf` on free loopback ports,
/// proxying to a test server, killed on drop.
struct Nginx {
    child: Child,
    dir: PathBuf,
    /// The TLS site.
    port: u16,
    /// The plain-HTTP site, which redirects.
    http_port: u16,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn find_nginx() -> Option<PathBuf> {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// A self-signed certificate for `localhost`, made now.
fn make_certificate(dir: &Path) {
    let status = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=localhost", "-keyout"])
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run openssl");
    assert!(status.success(), "openssl made a certificate");
}

/// The shipped site, as an operator installs it.
const SITE: &str = include_str!("../deploy/nginx-jwtchat.conf");

/// The shipped site with what must differ in a test, and nothing else,
/// replaced: ports (free ones on loopback; the IPv6 listens are dropped, as
/// a test host may have no IPv6), the upstream (the test server) and the
/// certificate paths (one made now). Each must be found, so the site cannot
/// drift away from the test unnoticed.
fn site_for_test(dir: &Path, upstream: SocketAddr, http_port: u16, https_port: u16) -> String {
    let d = dir.display();
    let substitutions = [
        ("listen 80;", format!("listen 127.0.0.1:{http_port};")),
        ("listen [::]:80;", String::new()),
        (
            "listen 443 ssl;",
            format!("listen 127.0.0.1:{https_port} ssl;"),
        ),
        ("listen [::]:443 ssl;", String::new()),
        (
            "proxy_pass http://127.0.0.1:3000;",
            format!("proxy_pass http://{upstream};"),
        ),
        (
            "/etc/ssl/certs/ssl-cert-snakeoil.pem",
            format!("{d}/cert.pem"),
        ),
        (
            "/etc/ssl/private/ssl-cert-snakeoil.key",
            format!("{d}/key.pem"),
        ),
    ];
    let mut site = SITE.to_string();
    for (from, to) in substitutions {
        assert_eq!(
            site.matches(from).count(),
            1,
            "deploy/nginx-jwtchat.conf should contain {from:?} once"
        );
        site = site.replace(from, &to);
    }
    site
}

/// The minimal `nginx.conf` around a site, everything nginx writes kept in
/// `dir`, as Debian's `/etc/nginx/nginx.conf` includes `sites-enabled/*`
/// inside `http`.
fn main_config(dir: &Path) -> String {
    let d = dir.display();
    // Workers run as the current user: as root, nginx would switch them
    // to `nobody`, who cannot read the test's key.
    let user = if is_root() { "user root;" } else { "" };
    format!(
        r#"daemon off;
{user}
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 512; }}
http {{
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    include {d}/site.conf;
}}
"#
    )
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

fn start_nginx(upstream: SocketAddr) -> Option<Nginx> {
    let Some(binary) = find_nginx() else {
        let required = std::env::var("JWTCHAT_REQUIRE_NGINX").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "JWTCHAT_REQUIRE_NGINX=1 but nginx is not installed"
        );
        eprintln!("\n\n*** SKIPPING PROXY TEST: nginx not found (apt-get install nginx) ***\n");
        return None;
    };
    let dir = std::env::temp_dir().join(format!(
        "jwtchat-nginx-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    make_certificate(&dir);
    let port = free_port();
    let http_port = free_port();
    let site = site_for_test(&dir, upstream, http_port, port);
    std::fs::write(dir.join("site.conf"), site).expect("write site.conf");
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, main_config(&dir)).expect("write nginx.conf");
    let nginx = |test: bool| {
        let mut command = Command::new(&binary);
        command.arg("-c").arg(&conf).arg("-p").arg(&dir);
        command.arg("-e").arg(dir.join("error.log"));
        if test {
            command.arg("-t");
        }
        command
    };
    // What an operator runs before every reload.
    let checked = nginx(true).output().expect("run nginx -t");
    assert!(
        checked.status.success(),
        "nginx -t refuses deploy/nginx-jwtchat.conf:\n{}",
        String::from_utf8_lossy(&checked.stderr)
    );
    let child = nginx(false)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nginx");
    let nginx = Nginx {
        child,
        dir,
        port,
        http_port,
    };
    let deadline = Instant::now() + PATIENCE;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "nginx did not start: {:?}",
            std::fs::read_to_string(nginx.dir.join("error.log"))
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Some(nginx)
}

/// A TLS connection to nginx from `source` (another loopback address
/// stands in for another client machine).
fn tls(source: Ipv4Addr, port: u16) -> TlsStream<TcpStream> {
    let tcp = connect_from(source, SocketAddr::from(([127, 0, 0, 1], port)));
    let connector = TlsConnector::builder()
        .danger_accept_invalid_certs(true) // made a moment ago, self-signed
        .build()
        .expect("TLS connector");
    connector.connect("localhost", tcp).expect("TLS handshake")
}

/// `GET path` over https; returns the status.
fn https_get(port: u16, path: &str) -> u16 {
    let mut stream = tls(Ipv4Addr::LOCALHOST, port);
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    status_of(&response)
}

fn status_of(response: &[u8]) -> u16 {
    String::from_utf8_lossy(response)
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// `POST /auth` over https; returns the status and the JSON body.
fn https_login(source: Ipv4Addr, port: u16, user: &str, password: &str) -> (u16, Value) {
    let body = json!({ "username": user, "password": password }).to_string();
    let mut stream = tls(source, port);
    write!(
        stream,
        "POST /auth HTTP/1.1\r\nHost: localhost:{port}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response); // nginx may close without close_notify
    let text = String::from_utf8_lossy(&response);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let json = text
        .split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str(b).ok())
        .unwrap_or(Value::Null);
    (status, json)
}

#[test]
fn chat_over_https_and_wss_through_nginx() {
    let server = start_with(|c| {
        c.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
        c.max_login_failures = 2;
        // nginx must keep /metrics off the public site even so.
        c.metrics_public = true;
    });
    let Some(nginx) = start_nginx(server.addr) else {
        return;
    };
    let port = nginx.port;

    // Log in over https.
    let (status, body) = https_login(Ipv4Addr::LOCALHOST, port, "userA", "passwordA");
    assert_eq!(status, 200, "{body}");
    let token = body["token"].as_str().expect("token").to_string();

    // Chat over wss, as a browser would: with an Origin of the https page.
    let mut request = format!("wss://localhost:{port}/ws?token={token}")
        .into_client_request()
        .unwrap();
    let origin = format!("https://localhost:{port}");
    request
        .headers_mut()
        .insert("Origin", origin.parse().unwrap());
    let (mut ws, response) = tungstenite::client(request, tls(Ipv4Addr::LOCALHOST, port))
        .expect("wss upgrade through nginx");
    assert_eq!(response.status(), 101);
    let welcome: Value = match ws.read().expect("welcome") {
        Message::Text(t) => serde_json::from_str(&t).unwrap(),
        other => panic!("{other:?}"),
    };
    assert_eq!(welcome["type"], "welcome");
    ws.send(Message::text(
        json!({"type":"message","text":"over TLS"}).to_string(),
    ))
    .unwrap();
    let echoed: Value = match ws.read().expect("message") {
        Message::Text(t) => serde_json::from_str(&t).unwrap(),
        other => panic!("{other:?}"),
    };
    assert_eq!(echoed["text"], "over TLS");

    // Rate limiting sees the client nginx forwarded, not nginx itself:
    // 127.0.0.2 is throttled after two failures; 127.0.0.3 is not.
    let guesser = Ipv4Addr::new(127, 0, 0, 2);
    for _ in 0..2 {
        assert_eq!(https_login(guesser, port, "userA", "wrong").0, 401);
    }
    assert_eq!(https_login(guesser, port, "userA", "wrong").0, 429);
    assert_eq!(
        https_login(Ipv4Addr::new(127, 0, 0, 3), port, "userA", "wrong").0,
        401
    );
    assert_eq!(
        https_login(Ipv4Addr::LOCALHOST, port, "userB", "passwordB").0,
        200
    );

    // /metrics is not proxied, though this jwtchat would serve it; the
    // rest of the site is.
    assert_eq!(https_get(port, "/healthz"), 200);
    assert_eq!(https_get(port, "/metrics"), 404);

    // Plain HTTP is sent to https, but for certbot's challenge.
    let mut plain = TcpStream::connect(("127.0.0.1", nginx.http_port)).expect("connect :80");
    plain
        .write_all(b"GET /ws HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = Vec::new();
    let _ = plain.read_to_end(&mut response);
    assert_eq!(status_of(&response), 301);
    assert!(
        String::from_utf8_lossy(&response).contains("Location: https://localhost/ws"),
        "{}",
        String::from_utf8_lossy(&response)
    );
}
