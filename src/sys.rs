//! What the standard library cannot do, and the only `unsafe` in the
//! crate: a send that never blocks on a blocking socket, raising the
//! open-file limit, waiting for SIGINT/SIGTERM, and tuning the C allocator
//! for many threads.

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

/// Raises this process's soft limit on open files to its hard limit and
/// returns the new soft limit. Each client is one file descriptor; the
/// common default soft limit of 1024 would cap the server near a thousand
/// clients however much memory it has.
pub fn raise_open_file_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit for getrlimit to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: `raised` is a valid rlimit that setrlimit only reads.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(io::Error::last_os_error());
        }
        limit = raised;
    }
    Ok(limit.rlim_cur)
}

/// The signals that ask the server to stop: Ctrl-C and `kill`/systemd.
fn termination_signals() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill the set we own;
    // a zeroed sigset_t is valid storage for them.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        set
    }
}

/// Blocks SIGINT and SIGTERM in the calling thread and every thread it
/// starts afterwards, so that [`wait_for_termination`] can take them as
/// ordinary events instead of an asynchronous handler interrupting
/// whichever thread happens to run. Call before starting any thread.
pub fn block_termination_signals() -> io::Result<()> {
    let set = termination_signals();
    // SAFETY: `set` is initialised; the old mask is not asked for.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Waits until SIGINT or SIGTERM arrives (they must be blocked, see
/// [`block_termination_signals`]) and returns its name.
pub fn wait_for_termination() -> io::Result<&'static str> {
    let set = termination_signals();
    let mut signal: libc::c_int = 0;
    // SAFETY: `set` is initialised and `signal` is writable.
    let rc = unsafe { libc::sigwait(&set, &mut signal) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(if signal == libc::SIGINT {
        "SIGINT"
    } else {
        "SIGTERM"
    })
}

/// Tunes glibc's allocator for many threads on a small host, before any
/// thread starts:
///
/// - a fixed mmap threshold (128 KiB), so large blocks (argon2's 19 MiB per
///   password check) go back to the OS when freed; by default glibc raises
///   the threshold after the first such free and keeps later ones in its
///   heaps, tens of megabytes that never come back;
/// - at most two arenas: with one thread per client, glibc would otherwise
///   spread small allocations over up to eight arenas per core.
///
/// Does nothing on other C libraries.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called
    // from `main` before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
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

    #[test]
    fn the_open_file_limit_can_be_raised() {
        assert!(raise_open_file_limit().unwrap() >= 1024);
    }
}
