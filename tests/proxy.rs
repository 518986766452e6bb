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

/// An nginx on a free loopback port, proxying to `upstream`, killed on drop.
struct Nginx {
    child: Child,
    dir: PathBuf,
    port: u16,
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
    let d = dir.display();
    // The same proxy settings as deploy/nginx-jwtchat.conf.
    let config = format!(
        r#"daemon off;
user root;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 512; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {d}/cert.pem;
        ssl_certificate_key {d}/key.pem;
        location / {{
            proxy_pass http://{upstream};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_read_timeout 1h;
            proxy_buffering off;
        }}
    }}
}}
"#
    );
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, config).expect("write nginx.conf");
    let child = Command::new(binary)
        .arg("-c")
        .arg(&conf)
        .arg("-p")
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nginx");
    let nginx = Nginx { child, dir, port };
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
}
