//! A throwaway `redis-server` (Debian's package) for the tests: a child
//! process on a free loopback port, persistence off, killed when dropped.
//!
//! Without `redis-server` the tests that need it are skipped with a loud
//! message, unless `JWTCHAT_REQUIRE_REDIS=1` (as CI sets), where they fail.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long `redis-server` gets to answer `PING` after it is started.
const START_PATIENCE: Duration = Duration::from_secs(10);

/// A `redis-server` child process on `127.0.0.1:port`, with no RDB
/// snapshots and no AOF, so that a restart comes back empty.
pub struct RedisServer {
    binary: PathBuf,
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

/// `redis-server` on `PATH`, else at `/usr/bin/redis-server`.
pub fn find_redis_server() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("redis-server"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([PathBuf::from("/usr/bin/redis-server")])
        .find(|p| p.is_file())
}

/// A fresh Redis for one test, or `None` (after a loud message) when
/// `redis-server` is not installed. With `JWTCHAT_REQUIRE_REDIS=1` a
/// missing `redis-server` is a failure instead.
pub fn redis_or_skip() -> Option<RedisServer> {
    let Some(binary) = find_redis_server() else {
        let required = std::env::var("JWTCHAT_REQUIRE_REDIS").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "JWTCHAT_REQUIRE_REDIS=1 but redis-server is not installed \
             (apt-get install redis-server)"
        );
        eprintln!(
            "\n\n*** SKIPPED: redis-server not found; install Debian's redis-server package \
             (apt-get install redis-server) — set JWTCHAT_REQUIRE_REDIS=1 to make this a \
             failure ***\n"
        );
        return None;
    };
    Some(RedisServer::start(binary))
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr").port()
}

impl RedisServer {
    /// Starts `binary` on a free port, retrying on another port if it
    /// does not come up (another process may have taken the port).
    pub fn start(binary: PathBuf) -> RedisServer {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("jwtchat-redis-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir for redis-server");
        let mut server = RedisServer {
            binary,
            port: 0,
            dir,
            child: None,
        };
        let mut failures = Vec::new();
        for _ in 0..5 {
            server.port = free_port();
            match server.launch() {
                Ok(()) => return server,
                Err(e) => failures.push(format!("port {}: {e}", server.port)),
            }
        }
        panic!("redis-server did not start: {failures:#?}");
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// SIGKILL: no shutdown, no save; connections are reset.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port (empty: persistence is off) and
    /// waits until it answers `PING`. Retries for a while if the port is
    /// briefly unavailable.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + START_PATIENCE;
        loop {
            match self.launch() {
                Ok(()) => return,
                Err(e) if Instant::now() < deadline => {
                    eprintln!(
                        "redis-server restart on port {} failed, retrying: {e}",
                        self.port
                    );
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => panic!("redis-server did not restart on port {}: {e}", self.port),
            }
        }
    }

    /// Sends one command and returns the reply (see [`Reply`]).
    pub fn command(&self, args: &[&str]) -> Reply {
        self.command_as(None, args)
    }

    /// Sends one command as ACL user `(name, password)` (the default user
    /// if `None`) and returns the reply.
    pub fn command_as(&self, user: Option<(&str, &str)>, args: &[&str]) -> Reply {
        let mut stream = TcpStream::connect(self.addr()).expect("connect to redis-server");
        stream
            .set_read_timeout(Some(START_PATIENCE))
            .expect("read timeout");
        let mut reader = BufReader::new(stream.try_clone().expect("clone the stream"));
        if let Some((name, password)) = user {
            stream
                .write_all(&encode(&["AUTH", name, password]))
                .expect("send AUTH");
            let auth = read_reply(&mut reader).expect("a RESP reply");
            assert_eq!(auth, Reply::Status("OK".into()), "AUTH {name}");
        }
        stream.write_all(&encode(args)).expect("send a command");
        read_reply(&mut reader).expect("a RESP reply")
    }

    /// `redis://name:password@127.0.0.1:PORT/0`, for an ACL user.
    pub fn url_as(&self, name: &str, password: &str) -> String {
        format!("redis://{name}:{password}@127.0.0.1:{}/0", self.port)
    }

    /// Every key in the database (`KEYS *`, fine for a test's few keys).
    pub fn keys(&self) -> Vec<String> {
        match self.command(&["KEYS", "*"]) {
            Reply::Array(items) => items
                .into_iter()
                .map(|item| match item {
                    Reply::Bulk(Some(key)) => key,
                    other => panic!("KEYS gave {other:?}"),
                })
                .collect(),
            other => panic!("KEYS gave {other:?}"),
        }
    }

    /// Spawns the child and waits for `PONG`; on failure the child is
    /// killed and the log is in the error.
    fn launch(&mut self) -> Result<(), String> {
        let log = self.dir.join(format!("redis-{}.log", self.port));
        let child = Command::new(&self.binary)
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--daemonize", "no"])
            .args(["--protected-mode", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", self.binary.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + START_PATIENCE;
        loop {
            // Answering is not enough: another test's redis-server may have
            // taken the port meanwhile (ours then fails to bind and exits).
            if ping(self.addr()) && self.answering_is_ours() {
                return Ok(());
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() >= deadline {
                let stderr = self.child.take().map(collect_stderr).unwrap_or_default();
                return Err(format!(
                    "exit status {exited:?}; stderr {stderr:?}; log {:?}",
                    read_log(&log)
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl RedisServer {
    /// Whether the redis-server answering on our port is our child.
    fn answering_is_ours(&self) -> bool {
        let Some(child) = &self.child else {
            return false;
        };
        match self.command(&["INFO", "server"]) {
            Reply::Bulk(Some(info)) => info
                .lines()
                .any(|line| line.trim() == format!("process_id:{}", child.id())),
            _ => false,
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Kills `child` if still running and returns what it wrote on stderr.
fn collect_stderr(mut child: Child) -> String {
    let _ = child.kill();
    let _ = child.wait();
    let mut out = String::new();
    if let Some(stderr) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut out);
    }
    out
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// True if something on `addr` answers `PING` with `+PONG`.
pub fn ping(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    if stream
        .set_read_timeout(Some(Duration::from_secs(1)))
        .is_err()
        || stream.write_all(b"*1\r\n$4\r\nPING\r\n").is_err()
    {
        return false;
    }
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).is_ok() && line.starts_with("+PONG")
}

/// A RESP reply, as much of it as the tests need.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Status(String),
    Error(String),
    Integer(i64),
    Bulk(Option<String>),
    Array(Vec<Reply>),
}

fn encode(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n{arg}\r\n", arg.len()).as_bytes());
    }
    out
}

fn read_reply(reader: &mut impl BufRead) -> std::io::Result<Reply> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let line = line.trim_end_matches("\r\n");
    let (kind, rest) = line.split_at_checked(1).ok_or_else(|| bad("empty reply"))?;
    let number = || rest.parse::<i64>().map_err(|_| bad(line));
    Ok(match kind {
        "+" => Reply::Status(rest.to_string()),
        "-" => Reply::Error(rest.to_string()),
        ":" => Reply::Integer(number()?),
        "$" => match number()? {
            -1 => Reply::Bulk(None),
            n => {
                let mut body = vec![0; n as usize + 2];
                std::io::Read::read_exact(reader, &mut body)?;
                body.truncate(n as usize);
                Reply::Bulk(Some(String::from_utf8_lossy(&body).into_owned()))
            }
        },
        "*" => match number()? {
            -1 => Reply::Array(Vec::new()),
            n => {
                let mut items = Vec::new();
                for _ in 0..n {
                    items.push(read_reply(reader)?);
                }
                Reply::Array(items)
            }
        },
        _ => return Err(bad(line)),
    })
}
