//! The real `jwtchat` binary: help and version, usage errors (exit 2, one
//! line on stderr), start-up warnings, `hash-password`, and the secret from
//! the environment or a file.

mod support;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Value, json};
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_jwtchat");
const SECRET_40: &str = "0123456789abcdefghijklmnopqrstuvwxyzABCD";

/// The binary with no secret from the environment of whoever runs the tests.
fn jwtchat() -> Command {
    let mut command = Command::new(BIN);
    command.env_remove("JWTCHAT_SECRET");
    command
}

/// [`jwtchat`] with `--bind 127.0.0.1:0`, for [`run_command`].
fn jwtchat_on_a_free_port() -> Command {
    let mut command = jwtchat();
    command.args(["--bind", "127.0.0.1:0"]);
    command
}

/// Runs the binary to completion with `args`, on a free port: a test of
/// an error that must stop the server never depends on port 3000 being
/// free, and if the check it is about regresses, the server that starts
/// instead is killed after [`PATIENCE`] and the test fails saying so.
/// A later `--bind` in `args` wins over this one.
fn run(args: &[&str]) -> Output {
    let mut command = jwtchat();
    // A command (`serve`, `hash-password`, ...) must come first.
    match args.split_first() {
        Some((first, rest)) if !first.starts_with('-') => command
            .arg(first)
            .args(["--bind", "127.0.0.1:0"])
            .args(rest),
        _ => command.args(["--bind", "127.0.0.1:0"]).args(args),
    };
    run_command(&mut command)
}

/// Runs `command` to completion with stdin empty, output captured, and a
/// deadline: a binary still running after [`PATIENCE`] is killed and the
/// test fails with what it printed, instead of hanging `cargo test`.
fn run_command(command: &mut Command) -> Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the jwtchat binary");
    let read_all = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = read_all(Box::new(child.stdout.take().expect("piped stdout")));
    let stderr = read_all(Box::new(child.stderr.take().expect("piped stderr")));
    let deadline = std::time::Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for jwtchat") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let err = String::from_utf8_lossy(&stderr.join().unwrap_or_default()).into_owned();
            panic!(
                "{command:?} was still running after {PATIENCE:?} and was killed: \
                 it should have exited (did a start-up check stop refusing?); stderr: {err:?}"
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    Output {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Exit status 2 and exactly one line on stderr, without a panic; returns
/// that line.
fn assert_usage_error(output: &Output) -> String {
    let err = stderr(output);
    assert_eq!(
        output.status.code(),
        Some(2),
        "status {:?}, stderr {err:?}",
        output.status
    );
    assert!(!err.contains("panicked"), "stderr {err:?}");
    let line = err.trim();
    assert!(!line.is_empty(), "stderr is empty");
    assert!(!line.contains('\n'), "stderr is not one line: {err:?}");
    assert!(stdout(output).is_empty(), "stdout {:?}", stdout(output));
    line.to_string()
}

/// A file under the temp dir, unique to this process, test and call,
/// removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(test: &str, contents: &[u8]) -> TempFile {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("jwtchat-cli-{}-{test}-{n}", std::process::id()));
        std::fs::write(&path, contents).expect("write temp file");
        TempFile(path)
    }

    fn arg(&self) -> &str {
        self.0.to_str().expect("UTF-8 temp path")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn serve(args: &[&str]) -> (Binary, SocketAddr) {
    let mut server = Binary::spawn(jwtchat().args(args));
    let addr = server.wait_listening();
    (server, addr)
}

fn login(addr: SocketAddr, user: &str, password: &str) -> RawResponse {
    post_json(
        addr,
        "/auth",
        &json!({ "username": user, "password": password }).to_string(),
    )
}

fn token_of(response: &RawResponse) -> String {
    assert_eq!(response.status, 200, "login: {}", response.text());
    response.json()["token"]
        .as_str()
        .expect("token in body")
        .to_string()
}

fn verify(token: &str, key: &[u8]) -> Result<Value, jsonwebtoken::errors::Error> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_issuer(&["jwtchat"]);
    let key = DecodingKey::from_secret(key).unwrap();
    jsonwebtoken::decode::<Value>(token, &key, &validation).map(|data| data.claims)
}

// ---------------------------------------------------------------------------
// Help and version

#[test]
fn help_lists_the_flags_and_commands() {
    for flag in ["--help", "-h"] {
        let output = run(&[flag]);
        assert_eq!(output.status.code(), Some(0), "{flag}");
        let out = stdout(&output);
        for needle in [
            "--bind",
            "--token-ttl",
            "--users",
            "--secret-file",
            "hash-password",
        ] {
            assert!(out.contains(needle), "{flag}: {needle} missing from {out}");
        }
        assert!(stderr(&output).is_empty(), "{flag}: {}", stderr(&output));
    }
}

#[test]
fn version_prints_name_and_version() {
    for flag in ["--version", "-V"] {
        let output = run(&[flag]);
        assert_eq!(output.status.code(), Some(0), "{flag}");
        let features = match (cfg!(feature = "store"), cfg!(feature = "redis")) {
            (true, true) => "store, redis",
            (true, false) => "store",
            (false, true) => "redis",
            (false, false) => "none",
        };
        assert_eq!(
            stdout(&output),
            format!(
                "jwtchat {} (features: {features})\n",
                env!("CARGO_PKG_VERSION")
            )
        );
    }
}

/// `jwtchat help` is `--help`; the help is grouped and points to the README.
#[test]
fn help_command_is_grouped_help() {
    let output = run(&["help"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(stdout(&output), stdout(&run(&["--help"])));
    let out = stdout(&output);
    for heading in [
        "NETWORK:",
        "ACCOUNTS AND TOKENS:",
        "LIMITS:",
        "HISTORY:",
        "LOGGING AND METRICS:",
        "CLUSTER:",
    ] {
        assert!(out.contains(heading), "{heading} missing from {out}");
    }
    assert!(out.contains("See the README for the protocol"), "{out}");
}

#[test]
fn hash_password_has_its_own_help() {
    for args in [&["hash-password", "--help"][..], &["help", "hash-password"]] {
        let output = run_command(jwtchat().args(args));
        assert_eq!(output.status.code(), Some(0), "{args:?}");
        let out = stdout(&output);
        assert!(out.starts_with("jwtchat hash-password - "), "{out}");
        assert!(out.contains("twice"), "{out}");
        assert!(!out.contains("--max-connections"), "the whole help: {out}");
    }
}

/// Out of range says what the range is.
#[test]
fn out_of_range_values_give_the_range() {
    let line = assert_usage_error(&run(&["--max-message-bytes", "0"]));
    assert_eq!(
        line,
        "jwtchat: invalid value \"0\" for --max-message-bytes: out of range \
         (expected 1 to 1073741824)"
    );
}

// ---------------------------------------------------------------------------
// Usage errors

#[test]
fn unknown_flag_is_exit_2_with_one_line() {
    let line = assert_usage_error(&run(&["--frobnicate"]));
    assert!(line.contains("--frobnicate"), "{line}");
}

#[test]
fn bad_flag_values_are_exit_2() {
    let line = assert_usage_error(&run(&["--token-ttl", "abc"]));
    assert!(
        line.contains("--token-ttl") && line.contains("abc"),
        "{line}"
    );
    let line = assert_usage_error(&run(&["--token-ttl=0"]));
    assert!(line.contains("--token-ttl"), "{line}");
    let line = assert_usage_error(&run(&["--max-message-bytes", "-5"]));
    assert!(line.contains("--max-message-bytes"), "{line}");
    let line = assert_usage_error(&run(&["--bind"]));
    assert!(line.contains("--bind"), "{line}");
    let line = assert_usage_error(&run(&["serve", "--issuer", " "]));
    assert!(line.contains("--issuer"), "{line}");
}

#[test]
fn unknown_command_is_exit_2() {
    let line = assert_usage_error(&run(&["frobnicate"]));
    assert!(line.contains("frobnicate"), "{line}");
}

/// Exit status 2 with the error as the last stderr line (start-up warnings
/// may come first), and no panic; returns that line.
fn assert_start_error(output: &Output) -> String {
    let err = stderr(output);
    assert_eq!(output.status.code(), Some(2), "stderr {err:?}");
    assert!(!err.contains("panicked"), "stderr {err:?}");
    let line = err.trim().lines().last().unwrap_or_default().to_string();
    assert!(line.starts_with("jwtchat: "), "stderr {err:?}");
    line
}

#[test]
fn unusable_bind_address_is_exit_2() {
    let line = assert_start_error(&run(&["--bind", "not-an-address"]));
    assert!(line.contains("cannot listen on not-an-address"), "{line}");

    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let addr = taken.local_addr().expect("address").to_string();
    let line = assert_start_error(&run(&["--bind", &addr]));
    assert!(line.contains(&format!("cannot listen on {addr}")), "{line}");
}

/// A configuration mistake is reported as itself, even when the port is
/// taken (say, by a server the user left running): everything is checked
/// before anything is bound.
#[test]
fn configuration_is_checked_before_the_port_is_bound() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let addr = taken.local_addr().expect("address").to_string();
    let line = assert_start_error(&run(&["--bind", &addr, "--redis", "http://x/0"]));
    assert!(line.contains("redis"), "{line}");
    let missing = std::env::temp_dir().join("jwtchat-cli-no-such-dir");
    let missing = missing.to_str().expect("UTF-8 path");
    let line = assert_start_error(&run(&["--bind", &addr, "--static", missing]));
    assert!(line.contains("--static"), "{line}");
}

/// The default build has no Redis client in it: `--redis` says how to get
/// one instead of being ignored.
#[cfg(not(feature = "redis"))]
#[test]
fn redis_without_the_feature_is_exit_2() {
    let line = assert_start_error(&run(&["--redis", "redis://127.0.0.1:6379/0"]));
    assert!(line.contains("--features redis"), "{line}");
}

#[cfg(feature = "redis")]
#[test]
fn unusable_redis_url_is_exit_2() {
    let line = assert_start_error(&run(&["--redis", "http://127.0.0.1:6379/0"]));
    assert!(line.contains("invalid --redis URL"), "{line}");
}

#[test]
fn missing_static_dir_is_exit_2() {
    let path = std::env::temp_dir().join(format!(
        "jwtchat-cli-{}-no-such-static-dir",
        std::process::id()
    ));
    let line = assert_start_error(&run(&["--static", path.to_str().expect("UTF-8 path")]));
    assert!(line.contains("--static"), "{line}");
}

/// `main` promises "one line on stderr saying what is wrong" for every
/// configuration error, but `Server::bind` logs the demo-mode and
/// random-secret warnings before it checks `--static` and `--bind`, so
/// those errors arrive as the third line.
#[test]
fn late_start_errors_are_one_line() {
    let line = assert_usage_error(&run(&["--bind", "not-an-address"]));
    assert!(line.contains("not-an-address"), "{line}");
    let path = std::env::temp_dir().join(format!(
        "jwtchat-cli-{}-no-such-static-dir-2",
        std::process::id()
    ));
    let line = assert_usage_error(&run(&["--static", path.to_str().expect("UTF-8 path")]));
    assert!(line.contains("--static"), "{line}");
}

#[test]
fn short_env_secret_is_exit_2() {
    let line = assert_usage_error(&run_command(
        jwtchat_on_a_free_port().env("JWTCHAT_SECRET", "short"),
    ));
    assert!(line.contains("32"), "{line}");
    assert!(line.contains("JWTCHAT_SECRET"), "{line}");
    assert!(!line.contains("short"), "the secret was echoed: {line}");
}

#[test]
fn short_secret_file_is_exit_2() {
    let file = TempFile::new("short-secret", b"0123456789");
    let line = assert_usage_error(&run(&["--secret-file", file.arg()]));
    assert!(line.contains("32"), "{line}");
    assert!(
        !line.contains("0123456789"),
        "the secret was echoed: {line}"
    );
}

/// The old example file's value is public: anyone could sign tokens with it.
#[test]
fn the_old_placeholder_secret_is_exit_2() {
    let placeholder = "change-me-to-at-least-32-random-bytes-please";
    let line = assert_usage_error(&run_command(
        jwtchat_on_a_free_port().env("JWTCHAT_SECRET", placeholder),
    ));
    assert!(line.contains("placeholder"), "{line}");
    let file = TempFile::new("placeholder-secret", placeholder.as_bytes());
    let line = assert_usage_error(&run(&["--secret-file", file.arg()]));
    assert!(line.contains("placeholder"), "{line}");
}

/// Long enough, but a pattern: fewer than 16 different bytes.
#[test]
fn a_secret_with_few_distinct_bytes_is_exit_2() {
    for secret in ["x".repeat(40), "abcdefghijklmno".repeat(3)] {
        let line = assert_usage_error(&run_command(
            jwtchat_on_a_free_port().env("JWTCHAT_SECRET", &secret),
        ));
        assert!(line.contains("distinct"), "{line}");
        assert!(line.contains("head -c 32 /dev/urandom | base64"), "{line}");
        assert!(!line.contains(&secret), "the secret was echoed: {line}");
    }
    // Exactly 16 different bytes is enough.
    let secret = "abcdefghijklmnop".repeat(2);
    let mut server = Binary::spawn(
        jwtchat()
            .args(["--bind", "127.0.0.1:0"])
            .env("JWTCHAT_SECRET", &secret),
    );
    server.wait_listening();
}

/// `JWTCHAT_SECRET=` with nothing after it, as an environment file copied
/// from the example and never filled in gives, is an error, not a random
/// secret.
#[test]
fn an_empty_env_secret_is_exit_2() {
    let line = assert_usage_error(&run_command(
        jwtchat_on_a_free_port().env("JWTCHAT_SECRET", ""),
    ));
    assert!(line.contains("JWTCHAT_SECRET is empty"), "{line}");
    assert!(line.contains("head -c 32 /dev/urandom | base64"), "{line}");
}

/// The example environment file as shipped cannot start a server: its
/// secret must be filled in.
#[test]
fn the_example_env_file_leaves_the_secret_empty() {
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/jwtchat.env.example"
    ))
    .expect("read the example");
    let values: Vec<&str> = example
        .lines()
        .filter_map(|l| l.strip_prefix("JWTCHAT_SECRET="))
        .collect();
    assert_eq!(values, [""], "{example}");
    let line = assert_usage_error(&run_command(
        jwtchat_on_a_free_port().env("JWTCHAT_SECRET", values[0]),
    ));
    assert!(line.contains("empty"), "{line}");
}

/// The key is the environment variable's bytes, not a UTF-8 rendering of
/// them (which would turn every invalid byte into the same U+FFFD).
#[test]
fn a_non_utf8_env_secret_is_used_as_bytes() {
    use std::os::unix::ffi::OsStringExt;
    let secret: Vec<u8> = (0..40u8).map(|i| 0x80 + i * 3).collect();
    assert!(std::str::from_utf8(&secret).is_err());
    let mut server = Binary::spawn(jwtchat().args(["--bind", "127.0.0.1:0"]).env(
        "JWTCHAT_SECRET",
        std::ffi::OsString::from_vec(secret.clone()),
    ));
    let addr = server.wait_listening();
    let token = token_of(&login(addr, "userA", "passwordA"));
    let claims = verify(&token, &secret).expect("verifies with the raw bytes");
    assert_eq!(claims["username"], "userA");
}

fn secret_file_with_mode(test: &str, mode: u32) -> TempFile {
    use std::os::unix::fs::PermissionsExt;
    let file = TempFile::new(test, SECRET_40.as_bytes());
    std::fs::set_permissions(&file.0, std::fs::Permissions::from_mode(mode)).expect("chmod");
    file
}

/// Like ssh with a private key: a secret others can read is pointed out.
#[test]
fn a_secret_file_others_can_read_is_warned_about() {
    for mode in [0o644, 0o640, 0o604] {
        let file = secret_file_with_mode("loose-secret", mode);
        let (server, _) = serve(&["--secret-file", file.arg(), "--bind", "127.0.0.1:0"]);
        let warning = format!(
            "--secret-file {:?} can be read or written by group or others (mode {mode:04o}); \
             chmod 600 it",
            file.arg()
        );
        assert!(server.any_line_contains(&warning), "{:#?}", server.seen);
    }
    for mode in [0o600, 0o400] {
        let file = secret_file_with_mode("tight-secret", mode);
        let (server, _) = serve(&["--secret-file", file.arg(), "--bind", "127.0.0.1:0"]);
        assert!(
            !server.any_line_contains("group or others"),
            "{mode:o}: {:#?}",
            server.seen
        );
    }
}

/// An embedder's `Config` gets the same checks as the command line.
#[test]
fn server_bind_refuses_weak_secrets() {
    for (secret, why) in [
        (&b""[..], "is empty"),
        (b"0123456789", "10 bytes"),
        (&[7u8; 32], "distinct"),
        (
            b"change-me-to-at-least-32-random-bytes-please",
            "placeholder",
        ),
    ] {
        let config = jwtchat::Config {
            bind: "127.0.0.1:0".into(),
            secret: Some(secret.to_vec()),
            ..jwtchat::Config::default()
        };
        match jwtchat::Server::bind(config) {
            Ok(_) => panic!("{secret:?} was accepted"),
            Err(e) => {
                let message = e.to_string();
                assert!(message.starts_with("the secret "), "{message}");
                assert!(message.contains(why), "{message}");
            }
        }
    }
}

/// `Server::bind` checks an embedder's settings before it reads a file or
/// binds a port, with the command line's wording.
#[test]
fn server_bind_refuses_out_of_range_settings() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let bind = taken.local_addr().expect("address").to_string();
    type Tweak = fn(&mut jwtchat::Config);
    let cases: [(Tweak, &str); 3] = [
        (
            |c| c.sweep_interval = std::time::Duration::ZERO,
            "sweep_interval must be more than zero",
        ),
        (
            |c| c.max_message_bytes = 0,
            "invalid value \"0\" for --max-message-bytes: out of range \
             (expected 1 to 1073741824)",
        ),
        (
            |c| c.client_queue_bytes = 1024,
            "invalid value \"1024\" for --client-queue-bytes: out of range \
             (expected 65536 to 1073741824)",
        ),
    ];
    for (tweak, expected) in cases {
        let mut config = jwtchat::Config {
            // Taken, and a file that is not there: neither is reached.
            bind: bind.clone(),
            users_file: Some("/nonexistent.json".into()),
            ..jwtchat::Config::default()
        };
        tweak(&mut config);
        match jwtchat::Server::bind(config) {
            Ok(_) => panic!("{expected:?} was not refused"),
            Err(e) => assert_eq!(e.to_string(), expected),
        }
    }
}

/// A path is used as the bytes given, even when they are not UTF-8: the
/// users file named with byte 0xff is the one read.
#[test]
fn a_users_file_whose_name_is_not_utf8_is_read() {
    use std::os::unix::ffi::OsStringExt;
    let hash = stdout(&hash_password(b"hunter2\n"));
    let users =
        json!({ "users": [{ "id": "9", "username": "zoe", "password_hash": hash.trim_end() }] });
    let name = format!("jwtchat-cli-{}-users-", std::process::id());
    let mut bytes = std::env::temp_dir().join(name).into_os_string().into_vec();
    bytes.extend_from_slice(b"\xff.json");
    let path = PathBuf::from(std::ffi::OsString::from_vec(bytes));
    std::fs::write(&path, users.to_string()).expect("write the users file");
    let file = TempFile(path);
    let mut server = Binary::spawn(
        jwtchat()
            .args(["--bind", "127.0.0.1:0"])
            .arg("--users")
            .arg(&file.0),
    );
    let addr = server.wait_listening();
    assert!(!server.any_line_contains("demo"), "{:#?}", server.seen);
    token_of(&login(addr, "zoe", "hunter2"));
}

#[test]
fn missing_secret_file_is_exit_2() {
    let path =
        std::env::temp_dir().join(format!("jwtchat-cli-{}-no-such-secret", std::process::id()));
    let line = assert_usage_error(&run(&["--secret-file", path.to_str().expect("UTF-8 path")]));
    assert!(line.contains("--secret-file"), "{line}");
}

#[test]
fn missing_users_file_is_exit_2() {
    let line = assert_usage_error(&run(&["--users", "/nonexistent.json"]));
    assert!(line.contains("/nonexistent.json"), "{line}");
}

#[test]
fn malformed_users_file_is_exit_2() {
    let file = TempFile::new("malformed-users", b"{\"users\":[{\"id\":\"1\"");
    let line = assert_usage_error(&run(&["--users", file.arg()]));
    assert!(line.contains("users file"), "{line}");
    let plaintext = TempFile::new(
        "plaintext-users",
        json!({ "users": [{ "id": "1", "username": "zoe", "password": "hunter2" }] })
            .to_string()
            .as_bytes(),
    );
    let line = assert_usage_error(&run(&["--users", plaintext.arg()]));
    assert!(!line.contains("hunter2"), "a password was echoed: {line}");
}

// ---------------------------------------------------------------------------
// Serving

#[test]
fn serves_on_the_port_it_reports_and_warns_about_demo_and_secret() {
    let (server, addr) = serve(&["--bind", "127.0.0.1:0"]);
    let response = get(addr, "/healthz");
    assert_eq!(response.status, 200);
    assert_eq!(response.body, b"ok");
    assert!(server.any_line_contains("demo"), "{:#?}", server.seen);
    assert!(server.any_line_contains("restart"), "{:#?}", server.seen);
    // Demo users work.
    let token = token_of(&login(addr, "userA", "passwordA"));
    assert_eq!(token.split('.').count(), 3);
}

#[test]
fn serve_command_works_the_same() {
    let (server, addr) = serve(&["serve", "--bind", "127.0.0.1:0"]);
    let response = get(addr, "/healthz");
    assert_eq!(response.status, 200);
    assert_eq!(response.body, b"ok");
    assert!(server.any_line_contains("demo"), "{:#?}", server.seen);
}

#[test]
fn env_secret_is_used_and_silences_the_restart_warning() {
    let mut server = Binary::spawn(
        jwtchat()
            .args(["--bind=127.0.0.1:0"])
            .env("JWTCHAT_SECRET", SECRET_40),
    );
    let addr = server.wait_listening();
    assert!(!server.any_line_contains("restart"), "{:#?}", server.seen);
    assert!(server.any_line_contains("demo"), "{:#?}", server.seen);
    let token = token_of(&login(addr, "userB", "passwordB"));
    let claims = verify(&token, SECRET_40.as_bytes()).expect("verifies with the env secret");
    assert_eq!(claims["sub"], "2");
}

#[test]
fn secret_file_drops_its_trailing_newline() {
    let file = TempFile::new("secret-file", format!("{SECRET_40}\n").as_bytes());
    let (server, addr) = serve(&["--secret-file", file.arg(), "--bind", "127.0.0.1:0"]);
    assert!(!server.any_line_contains("restart"), "{:#?}", server.seen);
    let token = token_of(&login(addr, "userA", "passwordA"));
    let claims = verify(&token, SECRET_40.as_bytes()).expect("verifies with the 40 bytes");
    assert_eq!(claims["username"], "userA");
    assert!(
        verify(&token, format!("{SECRET_40}\n").as_bytes()).is_err(),
        "the newline was part of the key"
    );
}

#[test]
fn secret_file_beats_the_environment() {
    let file = TempFile::new("secret-beats-env", SECRET_40.as_bytes());
    let mut server = Binary::spawn(
        jwtchat()
            .args(["--secret-file", file.arg(), "--bind", "127.0.0.1:0"])
            .env("JWTCHAT_SECRET", "short"),
    );
    let addr = server.wait_listening();
    let token = token_of(&login(addr, "userA", "passwordA"));
    verify(&token, SECRET_40.as_bytes()).expect("verifies with the file's secret");
}

// ---------------------------------------------------------------------------
// hash-password and a users file

fn hash_password(stdin: &[u8]) -> Output {
    let mut child = jwtchat()
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn hash-password");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(stdin)
        .expect("write the password");
    child.wait_with_output().expect("hash-password output")
}

#[test]
fn hashed_password_logs_in_through_a_users_file() {
    let output = hash_password(b"hunter2\n");
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let out = stdout(&output);
    assert_eq!(out.lines().count(), 1, "{out:?}");
    assert!(out.ends_with('\n'), "{out:?}");
    let hash = out.trim_end();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert!(!out.contains("hunter2"), "{out}");

    let users = TempFile::new(
        "zoe",
        json!({ "users": [{ "id": "9", "username": "zoe", "password_hash": hash }] })
            .to_string()
            .as_bytes(),
    );
    let (server, addr) = serve(&["--users", users.arg(), "--bind", "127.0.0.1:0"]);
    assert!(!server.any_line_contains("demo"), "{:#?}", server.seen);

    let response = login(addr, "zoe", "hunter2");
    let token = token_of(&response);
    assert_eq!(token.split('.').count(), 3);
    // The newline from stdin is not part of the password.
    assert_eq!(login(addr, "zoe", "hunter2\n").status, 401);
    assert_eq!(login(addr, "userA", "passwordA").status, 401);
}

#[test]
fn each_hash_has_its_own_salt() {
    let a = stdout(&hash_password(b"hunter2\n"));
    let b = stdout(&hash_password(b"hunter2"));
    assert!(a.starts_with("$argon2id$") && b.starts_with("$argon2id$"));
    assert_ne!(a, b);
}

#[test]
fn empty_password_is_exit_2() {
    for stdin in [&b""[..], b"\n", b"\r\n"] {
        let output = hash_password(stdin);
        assert_eq!(output.status.code(), Some(2), "stdin {stdin:?}");
        assert!(stdout(&output).is_empty(), "stdin {stdin:?}");
        let err = stderr(&output);
        assert!(
            !err.trim().is_empty() && !err.trim().contains('\n'),
            "{err:?}"
        );
    }
}

/// Drives `jwtchat hash-password` through a pseudo-terminal (python3's
/// `pty`), typing each of `typed` after the next prompt (`"\x03"` is
/// Ctrl-C). Returns the exit status, everything the terminal showed, and
/// whether echo was on again afterwards (`stty` in the same terminal);
/// `None` without python3.
fn hash_password_on_a_terminal(typed: &[&str]) -> Option<(i32, String, bool)> {
    const DRIVER: &str = r#"
import os, pty, select, sys
binary, typed = sys.argv[1], sys.argv[2:]
# The shell outlives a Ctrl-C (`trap :`; the program gets the default
# action) to report the terminal's echo setting afterwards.
script = 'trap : INT; "$0" hash-password; s=$?; stty -a | tr " ;" "\n\n" | grep -x -- "-\\?echo"; exit $s'
pid, fd = pty.fork()
if pid == 0:
    os.execv("/bin/sh", ["sh", "-c", script, binary])
seen = b""
def read(until=None):
    global seen
    while until is None or until not in seen:
        ready, _, _ = select.select([fd], [], [], 10)
        if not ready:
            sys.exit("timed out waiting for %r; saw %r" % (until, seen))
        try:
            chunk = os.read(fd, 1024)
        except OSError:
            chunk = b""
        if not chunk:
            if until is None:
                return
            sys.exit("the terminal closed before %r; saw %r" % (until, seen))
        seen += chunk
for line, prompt in zip(typed, [b"Password: ", b"Again: "]):
    read(prompt)
    os.write(fd, line.encode() + (b"" if line == "\x03" else b"\n"))
read()
_, status = os.waitpid(pid, 0)
sys.stdout.write(seen.decode(errors="replace"))
sys.exit(os.waitstatus_to_exitcode(status))
"#;
    let output = match Command::new("python3")
        .arg("-c")
        .arg(DRIVER)
        .arg(BIN)
        .args(typed)
        .env_remove("JWTCHAT_SECRET")
        .output()
    {
        Ok(output) => output,
        Err(e) => {
            eprintln!("SKIPPED: hash-password on a terminal needs python3 ({e})");
            return None;
        }
    };
    let shown = stdout(&output).replace("\r\n", "\n");
    assert!(stderr(&output).is_empty(), "driver: {}", stderr(&output));
    let echo_back = shown.lines().last() == Some("echo");
    Some((output.status.code().unwrap_or(-1), shown, echo_back))
}

#[test]
fn hash_password_on_a_terminal_asks_twice_without_echo() {
    let Some((status, shown, echo_back)) = hash_password_on_a_terminal(&["hunter2", "hunter2"])
    else {
        return;
    };
    assert_eq!(status, 0, "{shown}");
    assert!(
        !shown.contains("hunter2"),
        "the password was echoed: {shown}"
    );
    assert!(
        shown.starts_with("Password: \nAgain: \n$argon2id$"),
        "{shown}"
    );
    assert!(echo_back, "echo was left off: {shown}");
}

#[test]
fn hash_password_on_a_terminal_refuses_two_different_entries() {
    let Some((status, shown, echo_back)) = hash_password_on_a_terminal(&["hunter2", "hunter3"])
    else {
        return;
    };
    assert_eq!(status, 2, "{shown}");
    assert!(!shown.contains("$argon2id$"), "{shown}");
    assert!(
        shown.contains("jwtchat: the two passwords differ; nothing was hashed\n"),
        "{shown}"
    );
    assert!(echo_back, "echo was left off: {shown}");
}

/// Ctrl-C at the second prompt ends the program and gives the echo back.
#[test]
fn hash_password_on_a_terminal_restores_echo_on_ctrl_c() {
    let Some((status, shown, echo_back)) = hash_password_on_a_terminal(&["hunter2", "\x03"]) else {
        return;
    };
    assert_eq!(status, 130, "128 + SIGINT: {shown}");
    assert!(!shown.contains("$argon2id$"), "{shown}");
    assert!(echo_back, "echo was left off: {shown}");
}
