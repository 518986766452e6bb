//! The `jwtchat` process's set-up, which an embedder of the library does
//! not want done behind its back: tuning the C allocator for many threads,
//! raising the open-file limit, taking SIGINT/SIGTERM as events, and
//! turning terminal echo off while `hash-password` reads a password. All
//! of it is system calls the standard library does not offer, hence the
//! `unsafe`, each block with why it is sound.
//!
//! The benchmarks include this file too (`#[path]`), for the open-file
//! limit.

#![allow(unsafe_code)]

use std::io;
use std::os::fd::RawFd;

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

/// The terminal settings to put back if a signal ends the process while
/// echo is off; set once, by the first [`EchoOff::new`].
static SAVED_TERMINAL: std::sync::OnceLock<(RawFd, libc::termios)> = std::sync::OnceLock::new();

/// SIGINT/SIGTERM while echo is off: restore the terminal, then die of the
/// signal as if no handler had been installed. Only async-signal-safe
/// calls (tcsetattr, write, signal, raise; the `OnceLock` read is one
/// atomic load).
extern "C" fn restore_terminal_and_die(signal: libc::c_int) {
    if let Some((fd, saved)) = SAVED_TERMINAL.get() {
        // SAFETY: `saved` is a valid termios read by tcgetattr; `fd` is
        // the terminal it came from. "\n" is a valid one-byte buffer.
        unsafe {
            libc::tcsetattr(*fd, libc::TCSANOW, saved);
            libc::write(libc::STDERR_FILENO, b"\n".as_ptr().cast(), 1);
        }
    }
    // SAFETY: resetting to the default action and re-raising is how a
    // handler passes a fatal signal on.
    unsafe {
        libc::signal(signal, libc::SIG_DFL);
        libc::raise(signal);
    }
}

/// Terminal echo off on one descriptor (a terminal), for reading a
/// password; the previous settings come back when this is dropped, and
/// also if SIGINT (Ctrl-C) or SIGTERM ends the process meanwhile.
pub struct EchoOff {
    fd: RawFd,
    saved: libc::termios,
    old_handlers: [(libc::c_int, libc::sigaction); 2],
}

impl EchoOff {
    /// Turns echo off on `fd` (typed characters are not shown; Enter still
    /// ends the line). Fails if `fd` is not a terminal.
    pub fn new(fd: RawFd) -> io::Result<EchoOff> {
        // SAFETY: a zeroed termios is valid storage for tcgetattr to fill.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: `saved` is writable; `fd` is only read.
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let _ = SAVED_TERMINAL.set((fd, saved));
        let mut old_handlers = [
            (libc::SIGINT, zeroed_sigaction()),
            (libc::SIGTERM, zeroed_sigaction()),
        ];
        for (signal, old) in &mut old_handlers {
            let mut action = zeroed_sigaction();
            action.sa_sigaction = restore_terminal_and_die as extern "C" fn(libc::c_int) as usize;
            // SAFETY: `action` is initialised (empty mask, no flags, a
            // handler that only makes async-signal-safe calls); `old` is
            // writable.
            unsafe {
                libc::sigemptyset(&mut action.sa_mask);
                libc::sigaction(*signal, &action, old);
            }
        }
        let mut quiet = saved;
        quiet.c_lflag &= !(libc::ECHO | libc::ECHOE | libc::ECHOK);
        // Keep echoing the newline, so the next prompt starts on its own line.
        quiet.c_lflag |= libc::ECHONL;
        let guard = EchoOff {
            fd,
            saved,
            old_handlers,
        };
        // SAFETY: `quiet` is a valid termios derived from the current one.
        // TCSAFLUSH drops anything typed before echo went off.
        if unsafe { libc::tcsetattr(fd, libc::TCSAFLUSH, &quiet) } != 0 {
            return Err(io::Error::last_os_error()); // `guard` restores
        }
        Ok(guard)
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        // SAFETY: `saved` came from tcgetattr on this descriptor, and each
        // old action from sigaction.
        unsafe {
            libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved);
            for (signal, old) in &self.old_handlers {
                libc::sigaction(*signal, old, std::ptr::null_mut());
            }
        }
    }
}

fn zeroed_sigaction() -> libc::sigaction {
    // SAFETY: all-zero is a valid sigaction (SIG_DFL, empty mask, no flags).
    unsafe { std::mem::zeroed() }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_open_file_limit_can_be_raised() {
        assert!(super::raise_open_file_limit().unwrap() >= 1024);
    }
}
