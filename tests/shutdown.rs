//! Graceful shutdown of the real binary: on SIGTERM or SIGINT it stops
//! accepting, sends every client close 1001 (going away) and exits 0.

mod support;

use std::net::SocketAddr;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use support::*;

fn start_binary() -> (Binary, SocketAddr) {
    let mut binary = Binary::spawn(
        Command::new(env!("CARGO_BIN_EXE_jwtchat"))
            .args(["--bind", "127.0.0.1:0"])
            .env("JWTCHAT_SECRET", std::str::from_utf8(SECRET).unwrap()),
    );
    let addr = binary.wait_listening();
    (binary, addr)
}

fn signal(child: &Child, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(child.id()).expect("pid");
    // SAFETY: sending a signal to our own child process.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::kill(pid, signal) };
    assert_eq!(rc, 0, "kill");
}

fn exits_with_success(child: &mut Child) -> bool {
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().expect("wait") {
            return status.success();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("the server did not exit");
}

fn clients_get_1001_and_the_server_exits_0(sig: libc::c_int) {
    let (mut running, addr) = start_binary();
    let server = TestServer::at(addr);
    let (mut a, _) = server.connect("userA");
    let (mut b, _) = server.connect("userB");
    a.recv_type("join");
    signal(&running.child, sig);
    for client in [&mut a, &mut b] {
        let (code, _) = client.until_close();
        assert_eq!(code, 1001);
    }
    assert!(exits_with_success(&mut running.child));
    // And it no longer accepts.
    assert!(std::net::TcpStream::connect(addr).is_err());
}

#[test]
fn sigterm_closes_every_client_with_1001_and_exits_0() {
    clients_get_1001_and_the_server_exits_0(libc::SIGTERM);
}

#[test]
fn sigint_does_the_same() {
    clients_get_1001_and_the_server_exits_0(libc::SIGINT);
}
