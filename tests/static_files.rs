//! The front end over a real socket: the embedded files, a `--static`
//! directory on disk, content types, security headers, and every spelling of
//! a path that tries to leave the root.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use support::*;

const SECRET_CONTENT: &str = "TOP-SECRET";

fn assert_static_headers(response: &RawResponse) {
    let csp = response
        .header("Content-Security-Policy")
        .unwrap_or_else(|| panic!("no CSP in {response:?}"));
    assert!(csp.contains("default-src 'self'"), "CSP {csp:?}");
    assert_eq!(response.header("X-Content-Type-Options"), Some("nosniff"));
}

fn assert_ok(response: &RawResponse, content_type: &str) {
    assert_eq!(response.status, 200, "body: {}", response.text());
    assert_eq!(response.header("Content-Type"), Some(content_type));
    assert_eq!(
        response.header("Content-Length"),
        Some(response.body.len().to_string().as_str())
    );
    assert_static_headers(response);
}

fn assert_not_found(response: &RawResponse) {
    assert_eq!(response.status, 404, "body: {}", response.text());
    assert_eq!(response.header("Content-Type"), Some("application/json"));
    assert_eq!(response.json()["error"], "not_found");
}

fn head(addr: std::net::SocketAddr, path: &str) -> (RawResponse, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
    stream
        .write_all(
            format!("HEAD {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .expect("send");
    let response = read_response(&mut stream, true);
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    (response, rest)
}

/// A temp directory tree, unique to this process, test and call, removed
/// when dropped:
///
/// ```text
/// base/
///   root/       index.html a.txt sub/b.json pic.png icon.svg favicon.ico
///               data.json link.txt -> ../outside/secret.txt
///   outside/    secret.txt ("TOP-SECRET")
/// ```
struct Tree {
    base: PathBuf,
}

const INDEX: &str = "<!doctype html><html><body>disk index</body></html>";
const PNG: &[u8] = b"\x89PNG\r\n\x1a\nnot-really-a-png";

impl Tree {
    fn new(test: &str) -> Tree {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let base =
            std::env::temp_dir().join(format!("jwtchat-static-{}-{test}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let root = base.join("root");
        let outside = base.join("outside");
        std::fs::create_dir_all(root.join("sub")).expect("mkdir root/sub");
        std::fs::create_dir_all(&outside).expect("mkdir outside");
        let files: [(&str, &[u8]); 7] = [
            ("index.html", INDEX.as_bytes()),
            ("a.txt", b"plain text"),
            ("sub/b.json", b"{\"b\":true}"),
            ("pic.png", PNG),
            ("icon.svg", b"<svg xmlns=\"http://www.w3.org/2000/svg\"/>"),
            ("favicon.ico", b"\x00\x00\x01\x00"),
            ("data.json", b"[1,2,3]"),
        ];
        for (name, contents) in files {
            std::fs::write(root.join(name), contents).expect("write file");
        }
        std::fs::write(outside.join("secret.txt"), SECRET_CONTENT).expect("write secret");
        std::os::unix::fs::symlink("../outside/secret.txt", root.join("link.txt"))
            .expect("symlink");
        Tree { base }
    }

    fn root(&self) -> PathBuf {
        self.base.join("root")
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

fn start_disk(tree: &Tree) -> TestServer {
    let root = tree.root();
    start_with(|c| c.static_dir = Some(root))
}

// ---------------------------------------------------------------------------
// Embedded front end

#[test]
fn embedded_index_is_served() {
    let server = start();
    let response = get(server.addr, "/");
    assert_ok(&response, "text/html; charset=utf-8");
    assert!(response.text().contains("<html"), "{}", response.text());
    let same = get(server.addr, "/index.html");
    assert_ok(&same, "text/html; charset=utf-8");
    assert_eq!(same.body, response.body);
}

#[test]
fn embedded_script_and_style_have_their_types() {
    let server = start();
    let js = get(server.addr, "/main.js");
    assert_ok(&js, "text/javascript; charset=utf-8");
    assert!(!js.body.is_empty());
    let css = get(server.addr, "/style.css");
    assert_ok(&css, "text/css; charset=utf-8");
    assert!(!css.body.is_empty());
}

#[test]
fn embedded_files_match_the_static_directory() {
    let server = start();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("static");
    for name in ["index.html", "main.js", "style.css"] {
        let response = get(server.addr, &format!("/{name}"));
        assert_eq!(response.status, 200, "{name}");
        let on_disk = std::fs::read(dir.join(name)).expect("read static file");
        assert_eq!(response.body, on_disk, "{name}");
    }
}

#[test]
fn head_index_has_the_get_length_and_no_body() {
    let server = start();
    let full = get(server.addr, "/");
    let (response, rest) = head(server.addr, "/");
    assert_eq!(response.status, 200);
    assert_eq!(
        response.header("Content-Length"),
        Some(full.body.len().to_string().as_str())
    );
    assert_eq!(
        response.header("Content-Type"),
        Some("text/html; charset=utf-8")
    );
    assert_static_headers(&response);
    assert!(rest.is_empty(), "HEAD got a body: {} bytes", rest.len());
}

#[test]
fn embedded_missing_file_is_404() {
    let server = start();
    assert_not_found(&get(server.addr, "/missing.js"));
    assert_not_found(&get(server.addr, "/sub/"));
}

#[test]
fn query_string_is_ignored_for_files() {
    let server = start();
    let response = get(server.addr, "/main.js?v=123");
    assert_ok(&response, "text/javascript; charset=utf-8");
}

// ---------------------------------------------------------------------------
// A directory on disk

#[test]
fn disk_files_have_types_by_extension() {
    let tree = Tree::new("types");
    let server = start_disk(&tree);
    let index = get(server.addr, "/");
    assert_ok(&index, "text/html; charset=utf-8");
    assert_eq!(index.text(), INDEX);
    let cases: [(&str, &str, &[u8]); 7] = [
        ("/index.html", "text/html; charset=utf-8", INDEX.as_bytes()),
        ("/a.txt", "text/plain; charset=utf-8", b"plain text"),
        ("/sub/b.json", "application/json", b"{\"b\":true}"),
        ("/data.json", "application/json", b"[1,2,3]"),
        ("/pic.png", "image/png", PNG),
        (
            "/icon.svg",
            "image/svg+xml",
            b"<svg xmlns=\"http://www.w3.org/2000/svg\"/>",
        ),
        ("/favicon.ico", "image/x-icon", b"\x00\x00\x01\x00"),
    ];
    for (path, content_type, body) in cases {
        let response = get(server.addr, path);
        assert_ok(&response, content_type);
        assert_eq!(response.body, body, "{path}");
    }
}

#[test]
fn disk_mode_does_not_serve_embedded_files() {
    let tree = Tree::new("no-embedded");
    let server = start_disk(&tree);
    assert_not_found(&get(server.addr, "/main.js"));
    assert_not_found(&get(server.addr, "/missing.js"));
    // A directory is not a file.
    assert_not_found(&get(server.addr, "/sub"));
}

#[test]
fn disk_files_are_read_per_request() {
    let tree = Tree::new("fresh");
    let server = start_disk(&tree);
    assert_eq!(get(server.addr, "/a.txt").body, b"plain text");
    std::fs::write(tree.root().join("a.txt"), "changed").expect("rewrite");
    assert_eq!(get(server.addr, "/a.txt").body, b"changed");
}

// ---------------------------------------------------------------------------
// Escapes

const ESCAPES: [&str; 15] = [
    "/../outside/secret.txt",
    "/..%2foutside%2fsecret.txt",
    "/%2e%2e/outside/secret.txt",
    "/%2E%2E%2Foutside%2Fsecret.txt",
    "/sub/../../outside/secret.txt",
    "/sub/%2e%2e/%2e%2e/outside/secret.txt",
    "/..\\outside\\secret.txt",
    "/%5c..%5coutside%5csecret.txt",
    "/a.txt%00.html",
    "//etc/passwd",
    "/%2fetc%2fpasswd",
    "/etc/passwd",
    "/link.txt",
    "/../../../../../../../../etc/passwd",
    "/%2e%2e%2f%2e%2e%2f%2e%2e%2f%2e%2e%2f%2e%2e%2f%2e%2e%2fetc%2fpasswd",
];

fn assert_escapes_refused(server: &TestServer, mode: &str) {
    for target in ESCAPES {
        for method in ["GET", "HEAD"] {
            let raw = format!("{method} {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
            let mut stream = TcpStream::connect(server.addr).expect("connect");
            stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
            stream.write_all(raw.as_bytes()).expect("send");
            let response = read_response(&mut stream, method == "HEAD");
            let mut rest = Vec::new();
            let _ = stream.read_to_end(&mut rest);
            assert!(
                matches!(response.status, 400 | 404),
                "{mode}: {method} {target} got {}",
                response.status
            );
            if method == "GET" {
                let text = response.text();
                assert!(!text.contains(SECRET_CONTENT), "{mode}: {target}: {text}");
                assert!(!text.contains("root:"), "{mode}: {target}: {text}");
                let error = response.json()["error"].clone();
                assert!(
                    error == "bad_request" || error == "not_found",
                    "{mode}: {target}: {text}"
                );
            } else {
                assert!(rest.is_empty(), "{mode}: HEAD {target} got a body");
            }
        }
    }
}

#[test]
fn escapes_are_refused_in_embedded_mode() {
    let server = start();
    assert_escapes_refused(&server, "embedded");
}

#[test]
fn escapes_are_refused_in_disk_mode() {
    let tree = Tree::new("escape-disk");
    let server = start_disk(&tree);
    // Sanity: the escapes would have something to find.
    assert_eq!(
        std::fs::read_to_string(tree.root().join("link.txt")).expect("symlink readable"),
        SECRET_CONTENT
    );
    assert_escapes_refused(&server, "disk");
}

#[test]
fn dot_dot_spellings_are_400_not_404() {
    // Refused by path resolution, not merely absent.
    let tree = Tree::new("bad-path");
    let server = start_disk(&tree);
    for target in [
        "/../outside/secret.txt",
        "/%2e%2e/outside/secret.txt",
        "/..%2foutside%2fsecret.txt",
        "/..\\outside\\secret.txt",
        "/a.txt%00.html",
        "//etc/passwd",
        "/%zz",
    ] {
        let raw = format!("GET {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        let response = send_raw(server.addr, raw.as_bytes());
        assert_eq!(response.status, 400, "{target}: {}", response.text());
        assert_eq!(response.json()["error"], "bad_request", "{target}");
    }
    // Relative-looking absolute paths and symlinks out are simply absent.
    for target in ["/etc/passwd", "/link.txt"] {
        assert_not_found(&get(server.addr, target));
    }
}

#[test]
fn symlink_inside_the_root_is_served() {
    let tree = Tree::new("inner-link");
    std::os::unix::fs::symlink("a.txt", tree.root().join("alias.txt")).expect("symlink");
    let server = start_disk(&tree);
    let response = get(server.addr, "/alias.txt");
    assert_ok(&response, "text/plain; charset=utf-8");
    assert_eq!(response.body, b"plain text");
}

#[test]
fn missing_static_dir_is_refused() {
    let tree = Tree::new("missing-dir");
    let config = jwtchat::Config {
        bind: "127.0.0.1:0".into(),
        secret: Some(SECRET.to_vec()),
        static_dir: Some(tree.root().join("no-such-dir")),
        ..jwtchat::Config::default()
    };
    match jwtchat::Server::bind(config) {
        Ok(_) => panic!("a missing --static directory was accepted"),
        Err(e) => {
            let message = e.to_string();
            assert!(message.contains("--static"), "{message}");
        }
    }
    // A file is not a directory either.
    let config = jwtchat::Config {
        bind: "127.0.0.1:0".into(),
        secret: Some(SECRET.to_vec()),
        static_dir: Some(tree.root().join("a.txt")),
        ..jwtchat::Config::default()
    };
    assert!(jwtchat::Server::bind(config).is_err());
}

#[test]
fn hidden_files_are_404_in_disk_mode_as_in_embedded_mode() {
    let tree = Tree::new("dotfiles");
    let root = tree.root();
    std::fs::write(root.join(".env"), SECRET_CONTENT).expect("write .env");
    std::fs::create_dir_all(root.join(".git")).expect("mkdir .git");
    std::fs::write(root.join(".git/config"), SECRET_CONTENT).expect("write .git/config");
    std::fs::create_dir_all(root.join("sub/.hidden")).expect("mkdir sub/.hidden");
    std::fs::write(root.join("sub/.hidden/x.txt"), SECRET_CONTENT).expect("write");
    std::fs::write(root.join("sub/.htpasswd"), SECRET_CONTENT).expect("write");
    let disk = start_disk(&tree);
    let embedded = start();
    for path in [
        "/.env",
        "/%2eenv",
        "/.git/config",
        "/.git/",
        "/sub/.hidden/x.txt",
        "/sub/.htpasswd",
    ] {
        for server in [&disk, &embedded] {
            let response = get(server.addr, path);
            assert_not_found(&response);
            assert!(!response.text().contains(SECRET_CONTENT), "{path}");
        }
    }
    // Names that merely contain a dot are still files.
    assert_eq!(get(disk.addr, "/a.txt").status, 200);
}
