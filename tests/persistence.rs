//! `--data-dir`: the real binary stopped (SIGTERM) or killed (SIGKILL) and
//! started again on the same directory keeps every room's history, `seq`
//! and epoch, and a client resumes across the restart. Data it cannot use
//! stops it with exit status 2 and the reason.

mod support;

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_jwtchat");

/// A fresh directory for one test's data.
fn data_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("jwtchat-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// The binary on `dir`, with the test secret (tokens survive restarts).
fn start(dir: &std::path::Path, extra: &[&str]) -> (Binary, TestServer) {
    let secret = std::str::from_utf8(SECRET).expect("an ASCII test secret");
    let mut binary = Binary::spawn(
        Command::new(BIN)
            .args(["--bind", "127.0.0.1:0", "--message-rate", "0", "--data-dir"])
            .arg(dir)
            .args(extra)
            .env("JWTCHAT_SECRET", secret),
    );
    let addr = binary.wait_listening();
    (binary, TestServer::at(addr))
}

fn sigterm(binary: &mut Binary) {
    // SAFETY: kill(2) with a pid we spawned and a valid signal number.
    let sent = unsafe { libc::kill(binary.child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(sent, 0, "SIGTERM sent");
    let status = binary.child.wait().expect("the binary exits");
    assert!(status.success(), "a clean exit on SIGTERM: {status:?}");
}

/// Connects `user`, resuming general from `epoch`/`seq`.
fn resume(server: &TestServer, user: &str, epoch: &str, seq: u64) -> Value {
    let token = server.token(user);
    let mut client = server
        .connect_token(&format!("{token}&since=general:{epoch}:{seq}"))
        .expect("upgrade");
    client.recv_type("welcome")
}

fn seqs(list: &Value) -> Vec<u64> {
    list.as_array()
        .expect("a list")
        .iter()
        .map(|m| m["seq"].as_u64().expect("seq"))
        .collect()
}

#[test]
fn a_restart_keeps_history_and_a_client_resumes_across_it() {
    let dir = data_dir("restart");
    let (mut binary, server) = start(&dir, &[]);
    let (mut a, welcome) = server.connect("userA");
    let epoch = welcome["epoch"].as_str().unwrap().to_string();
    let (mut b, _) = server.connect("userB");
    for i in 0..10 {
        b.say(&format!("m{i}"));
    }
    let mut last = 0;
    for _ in 0..10 {
        last = a.recv_type("message")["seq"].as_u64().unwrap();
    }
    drop(a);
    for i in 10..15 {
        b.say(&format!("m{i}"));
    }
    for _ in 0..15 {
        b.recv_type("message");
    }
    drop(b);
    sigterm(&mut binary);

    let (_binary, server) = start(&dir, &[]);
    let welcome = resume(&server, "userA", &epoch, last);
    assert_eq!(welcome["recovered"], true, "{welcome}");
    assert_eq!(welcome["epoch"], epoch.as_str(), "the same history");
    assert_eq!(seqs(&welcome["missed"]), (11..=15).collect::<Vec<_>>());
    assert_eq!(welcome["missed"][4]["text"], "m14");
    // Numbering goes on; a newcomer's history is the old one.
    let (mut c, welcome) = server.connect("userC");
    assert_eq!(seqs(&welcome["history"]).len(), 15);
    c.say("after the restart");
    assert_eq!(c.recv_type("message")["seq"], 16);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_kill_loses_nothing_anyone_saw_and_seq_goes_on() {
    let dir = data_dir("kill");
    let (mut binary, server) = start(&dir, &["--fsync", "always"]);
    let (mut watcher, welcome) = server.connect("userA");
    let epoch = welcome["epoch"].as_str().unwrap().to_string();
    let (mut sender, _) = server.connect("userB");
    let flood = std::thread::spawn(move || {
        for i in 0..2000 {
            sender.say(&format!("flood {i}"));
        }
        sender
    });
    // Kill it mid-flood, once the watcher has seen some of it.
    let mut seen = Vec::new();
    while seen.len() < 200 {
        seen.push(watcher.recv_type("message"));
    }
    binary.child.kill().expect("SIGKILL");
    binary.child.wait().expect("reaped");
    // Whatever else reached the watcher before the socket died.
    loop {
        match watcher.next() {
            Event::Json(m) if m["type"] == "message" => seen.push(m),
            Event::Json(_) => {}
            Event::Closed(_) | Event::Error(_) => break,
        }
    }
    let _ = flood.join();

    let (_binary, server) = start(&dir, &["--fsync", "always"]);
    let welcome = resume(&server, "userC", &epoch, 0);
    assert_eq!(
        welcome["recovered"], true,
        "the same epoch, all kept: {welcome}"
    );
    let kept = welcome["missed"].as_array().unwrap();
    for m in &seen {
        let seq = m["seq"].as_u64().unwrap() as usize;
        assert_eq!(kept[seq - 1]["text"], m["text"], "seq {seq} as it was seen");
    }
    // No seq is handed out twice.
    let (mut c, _) = server.connect("userC");
    c.say("after");
    let next = c.recv_type("message")["seq"].as_u64().unwrap();
    assert_eq!(next, kept.len() as u64 + 1);
    assert!(next > seen.len() as u64);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs the binary to its exit (it must not start) and returns its status
/// and what it said.
fn refused(args: &[&str]) -> (Option<i32>, String) {
    let output = Command::new(BIN)
        .args(["--bind", "127.0.0.1:0"])
        .args(args)
        .output()
        .expect("run the binary");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn data_it_cannot_use_stops_it_with_the_reason() {
    let dir = data_dir("corrupt");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("messages.redb");
    std::fs::write(&file, vec![0x5a; 64 * 1024]).unwrap();
    let (code, stderr) = refused(&["--data-dir", dir.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("messages.redb"), "names the file: {stderr}");
    let _ = std::fs::remove_dir_all(&dir);

    // A path nothing can be written under (as root too).
    let (code, stderr) = refused(&["--data-dir", "/proc/jwtchat-data"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("/proc/jwtchat-data"), "{stderr}");

    // With Redis, Redis keeps the history.
    let (code, stderr) = refused(&["--data-dir", "/tmp/x", "--redis", "redis://127.0.0.1:1"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("--data-dir cannot be used with --redis"),
        "{stderr}"
    );
}

#[test]
fn a_restart_without_the_data_dir_is_a_new_epoch() {
    let dir = data_dir("epoch");
    let (mut binary, server) = start(&dir, &[]);
    let (mut a, welcome) = server.connect("userA");
    let epoch = welcome["epoch"].as_str().unwrap().to_string();
    a.say("one");
    a.recv_type("message");
    sigterm(&mut binary);
    let _ = std::fs::remove_dir_all(&dir);
    // Same flags, an empty directory: that history is gone.
    let (_binary, server) = start(&dir, &[]);
    let welcome = resume(&server, "userA", &epoch, 1);
    assert_eq!(welcome["recovered"], false);
    assert_ne!(welcome["epoch"], epoch.as_str());
    let _ = std::fs::remove_dir_all(&dir);
}
