//! What the standard library cannot do for the server, and the only
//! `unsafe` in the library: a send that never blocks on a blocking socket,
//! and reading the open-file limit.
//! (The process set-up the `jwtchat` binary does, signals, the open-file
//! limit, the allocator, terminal echo, is in the binary: `src/process.rs`.)

#![allow(unsafe_code)]

use std::io;
use std::net::TcpStream;
use std::os::fd::AsRawFd;

/// Sends what fits in the socket's buffer right now and returns how much
/// that was; `WouldBlock` if nothing fits. `MSG_DONTWAIT` makes this one
/// call non-blocking while the socket stays blocking for the threads that
/// own it; `MSG_NOSIGNAL` turns a closed peer into an error, not SIGPIPE.
pub fn send_nonblocking(stream: &TcpStream, bytes: &[u8]) -> io::Result<usize> {
    // SAFETY: the descriptor is an open socket borrowed from `stream` for
    // the duration of the call, and `bytes` is valid for `bytes.len()`
    // bytes of reads.
    let sent = unsafe {
        libc::send(
            stream.as_raw_fd(),
            bytes.as_ptr().cast(),
            bytes.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    usize::try_from(sent).map_err(|_| io::Error::last_os_error())
}

/// The process's open-file limit (`ulimit -n`, the soft `RLIMIT_NOFILE`),
/// if it has one.
pub fn open_file_limit() -> Option<usize> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit for getrlimit to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    (limit.rlim_cur != libc::RLIM_INFINITY).then(|| usize::try_from(limit.rlim_cur).ok())?
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpListener;

    #[test]
    fn sends_without_blocking_until_the_buffer_is_full() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server_side, _) = listener.accept().unwrap();
        assert_eq!(send_nonblocking(&client, b"hello").unwrap(), 5);
        let mut buf = [0u8; 5];
        server_side.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hello");
        // Nobody reads: eventually the buffers fill and it says so at once.
        let chunk = vec![0u8; 1 << 16];
        let error = loop {
            match send_nonblocking(&client, &chunk) {
                Ok(_) => continue,
                Err(e) => break e,
            }
        };
        assert_eq!(error.kind(), io::ErrorKind::WouldBlock);
    }
}
