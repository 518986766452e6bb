//! What the standard library cannot do for the server, and the only
//! `unsafe` in the library: a send that never blocks on a blocking socket,
//! reading the open-file limit, and giving a thread's unused stack pages
//! back to the kernel.
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

/// What [`release_stack_below_caller`] leaves below its own local: room for
/// the rest of its frame (under a hundred bytes) and for the `madvise`
/// call (a return address; the system call runs on the kernel's stack),
/// many times over.
const MARGIN: usize = 1024;

/// Gives back to the kernel the whole pages of the calling thread's stack
/// that lie below the caller's frame (less a small margin, [`MARGIN`]), and
/// returns how many bytes that was (0 if none).
///
/// A connection thread works deep in its stack once (HTTP parsing, the
/// JWT's HMAC, the welcome's JSON) and then waits in a shallow `read` for
/// hours. The pages that deep work touched stay resident unless released:
/// most of an idle client's memory. After `MADV_DONTNEED` a private
/// anonymous page reads as zeros again and costs nothing until touched.
/// (glibc does the same to a thread's stack when the thread exits.)
///
/// `inline(never)`: the frame this function runs in must be below its
/// caller's, so that "below the caller" is well defined.
#[inline(never)]
pub fn release_stack_below_caller() -> usize {
    // A local of this frame: every frame still live (the caller's and
    // those above it) is at a higher address; only this function's frame
    // and the libc calls it makes are lower, within the margin.
    let marker = 0u8;
    let here = std::hint::black_box(&marker) as *const u8 as usize;
    let Some((low, high)) = stack_bounds() else {
        return 0;
    };
    // Only on the thread's own stack: called from any other (a signal
    // stack, a stack some library switched to), the range below would not
    // be dead.
    if !(low < here && here <= high) {
        return 0;
    }
    let page = page_size();
    let end = here.saturating_sub(MARGIN) & !(page - 1);
    if end <= low {
        return 0;
    }
    // SAFETY: [low, end) is inside this thread's own stack mapping (from
    // pthread_getattr_np, guard page excluded) and at least MARGIN bytes
    // below a local of this frame, so below the stack pointer and below
    // whatever `madvise` itself pushes: no live frame, no red zone (this
    // function is not a leaf) and no reference can point there, since a
    // reference into a frame keeps that frame live. A signal handler runs
    // only after the call returns, and then simply faults in a fresh page.
    // Discarding the range only makes the kernel supply zeroed pages if the
    // stack grows into it again.
    let rc = unsafe { libc::madvise(low as *mut libc::c_void, end - low, libc::MADV_DONTNEED) };
    if rc == 0 { end - low } else { 0 }
}

/// The calling thread's stack, lowest usable address (above its guard
/// page) to its top, if the C library knows it.
#[cfg(target_os = "linux")]
fn stack_bounds() -> Option<(usize, usize)> {
    // SAFETY: a zeroed pthread_attr_t is valid storage for
    // pthread_getattr_np to initialise; it is destroyed once, and only if
    // that succeeded. `addr` and `size` are writable.
    unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        if libc::pthread_getattr_np(libc::pthread_self(), &mut attr) != 0 {
            return None;
        }
        let mut addr: *mut libc::c_void = std::ptr::null_mut();
        let mut size: libc::size_t = 0;
        let rc = libc::pthread_attr_getstack(&attr, &mut addr, &mut size);
        libc::pthread_attr_destroy(&mut attr);
        let low = addr as usize;
        (rc == 0 && !addr.is_null()).then_some((low, low.saturating_add(size)))
    }
}

/// Elsewhere `pthread_getattr_np` may not exist: nothing is released.
#[cfg(not(target_os = "linux"))]
fn stack_bounds() -> Option<(usize, usize)> {
    None
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size)
        .ok()
        .filter(|s| s.is_power_of_two())
        .unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpListener;

    /// Writes `depth` KiB of stack, one frame per KiB, and sums it back.
    fn deep(depth: u32) -> u64 {
        let mut frame = [0u8; 1024];
        for (i, byte) in frame.iter_mut().enumerate() {
            *byte = (i as u32 ^ depth) as u8;
        }
        let frame = std::hint::black_box(frame);
        let below = if depth > 1 { deep(depth - 1) } else { 0 };
        below + frame.iter().map(|&b| u64::from(b)).sum::<u64>()
    }

    #[test]
    fn releases_the_dead_stack_and_the_thread_can_use_it_again() {
        let thread = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(|| {
                let before = deep(64);
                let released = release_stack_below_caller();
                // Back into the released pages: they must read as fresh
                // memory, and the same work gives the same answer.
                (before, released, deep(64))
            })
            .unwrap();
        let (before, released, after) = thread.join().unwrap();
        if cfg!(target_os = "linux") {
            assert!(released >= 32 * 1024, "released {released} bytes");
        }
        assert_eq!(before, after);
    }

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
