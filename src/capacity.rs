//! How many connections this host can hold: the kernel's thread limits,
//! the open-file limit and the control group's task limit, read once at
//! start-up and turned into the connection cap that
//! [`crate::limits::ConnectionLimits`] enforces. Past the cap a client gets
//! `503` before the server would fail to start a thread or to accept.

use crate::config::Config;

/// Connections the server takes at most: `--max-connections`, or fewer if
/// the threads they could need (a reader each, and a writer each while
/// behind) would pass what the kernel allows, or their sockets the
/// open-file limit. Past it, a new connection gets `503` rather than the
/// server failing to start a thread or to accept at all (`EMFILE` leaves a
/// client hanging in the backlog with no answer).
pub fn connection_cap(config: &Config) -> usize {
    let threads = config.max_threads.or_else(kernel_thread_room);
    let files = crate::sys::open_file_limit().map(file_room);
    let (cap, bound) = cap_connections(config.max_connections, threads, files);
    match bound {
        Bound::Flag => {}
        Bound::Threads(threads) => crate::warn!(
            "--max-connections {} could need {} threads, but only about {threads} can be had \
             (kernel.pid_max, kernel.threads-max, vm.max_map_count, the cgroup's pids.max: \
             see the README): connections past {cap} get 503",
            config.max_connections,
            2 * config.max_connections,
        ),
        Bound::Files(files) => crate::warn!(
            "--max-connections {} needs a file descriptor each, but the open-file limit \
             (ulimit -n) leaves room for about {files}: connections past {cap} get 503",
            config.max_connections,
        ),
    }
    cap
}

/// What bounds the connections: the flag, or a kernel limit (with the
/// room it leaves).
#[derive(Debug, PartialEq)]
enum Bound {
    Flag,
    Threads(usize),
    Files(usize),
}

/// The connection cap from `--max-connections`, the threads that can be
/// started (two per connection at most) and the descriptors that can be
/// opened (one per connection), and which of them set it.
fn cap_connections(flag: usize, threads: Option<usize>, files: Option<usize>) -> (usize, Bound) {
    let mut cap = (flag, Bound::Flag);
    if let Some(threads) = threads.filter(|t| t / 2 < cap.0) {
        cap = ((threads / 2).max(1), Bound::Threads(threads));
    }
    if let Some(files) = files.filter(|f| *f < cap.0) {
        cap = (files.max(1), Bound::Files(files));
    }
    cap
}

/// Descriptors left for connections under an open-file limit of `limit`:
/// a tenth, and at least 64, stay for the listeners, the log, static files,
/// Redis, and the moment a new connection's socket is duplicated to answer
/// it should its thread not start.
fn file_room(limit: usize) -> usize {
    limit.saturating_sub(limit / 10 + 64)
}

/// How many more threads this process can start, as far as the kernel's
/// limits say: every thread takes a process id (`kernel.pid_max`, shared
/// with every process), a place in `kernel.threads-max`, two memory
/// mappings, its stack and the guard below it (`vm.max_map_count`), and a
/// task in its control group (`pids.max`, which systemd sets from
/// `TasksMax=`). Some room is kept for the server's own threads and the
/// rest of the system.
fn kernel_thread_room() -> Option<usize> {
    let limits = [
        read_number("/proc/sys/kernel/pid_max"),
        read_number("/proc/sys/kernel/threads-max"),
        read_number("/proc/sys/vm/max_map_count").map(|maps| maps / 2),
        cgroup_task_room(),
    ];
    let room = limits.into_iter().flatten().min()?;
    Some(room.saturating_sub(room / 10 + 64))
}

/// The number in a one-number file such as `/proc/sys/kernel/pid_max`;
/// `None` if it is missing or says something else (`max`).
fn read_number(path: &str) -> Option<usize> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Tasks (threads) this process's control group may still start: the
/// least `pids.max - pids.current` of its group and every group above it
/// (a limit on `user-1000.slice` binds a shell's session scope too), from
/// the unified hierarchy (cgroup v2, `0::/path`) or the `pids` controller's
/// (v1). `None` if no group on the way up has a limit.
fn cgroup_task_room() -> Option<usize> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let dir = cgroups.lines().find_map(pids_dir)?;
    let room = |dir: &str| -> Option<usize> {
        let max = read_number(&format!("{dir}/pids.max"))?;
        let current = read_number(&format!("{dir}/pids.current")).unwrap_or(0);
        Some(max.saturating_sub(current))
    };
    ancestors(&dir).filter_map(room).min()
}

/// `dir` and each directory above it, up to the hierarchy's root
/// (`/sys/fs/cgroup` or `/sys/fs/cgroup/pids`), which is left out: the
/// root group has no limit files.
fn ancestors(dir: &str) -> impl Iterator<Item = &str> {
    let root = if dir.starts_with("/sys/fs/cgroup/pids") {
        "/sys/fs/cgroup/pids"
    } else {
        "/sys/fs/cgroup"
    };
    std::iter::successors(Some(dir.trim_end_matches('/')), move |d| {
        d.rfind('/').map(|i| &d[..i])
    })
    .take_while(move |d| d.len() > root.len())
}

/// The directory with the `pids` controller's files for one line of
/// `/proc/self/cgroup` (`ID:CONTROLLERS:PATH`), if that line has them.
fn pids_dir(line: &str) -> Option<String> {
    let mut fields = line.splitn(3, ':');
    let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
    if controllers.is_empty() {
        Some(format!("/sys/fs/cgroup{path}"))
    } else if controllers.split(',').any(|c| c == "pids") {
        Some(format!("/sys/fs/cgroup/pids{path}"))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lowest_limit_sets_the_connection_cap() {
        assert_eq!(cap_connections(10_000, None, None), (10_000, Bound::Flag));
        assert_eq!(
            cap_connections(10_000, Some(60_000), Some(50_000)),
            (10_000, Bound::Flag)
        );
        // Two threads per connection at most.
        assert_eq!(
            cap_connections(10_000, Some(14_000), Some(50_000)),
            (7_000, Bound::Threads(14_000))
        );
        assert_eq!(
            cap_connections(30_000, Some(60_000), Some(file_room(20_000))),
            (17_936, Bound::Files(17_936))
        );
        assert_eq!(
            cap_connections(30_000, Some(20_000), Some(file_room(20_000))),
            (10_000, Bound::Threads(20_000))
        );
        // Never zero: one connection is always tried.
        assert_eq!(cap_connections(10, Some(1), Some(0)), (1, Bound::Files(0)));
    }

    #[test]
    fn the_task_limit_is_read_from_the_pids_controller() {
        assert_eq!(
            pids_dir("0::/system.slice/jwtchat.service").as_deref(),
            Some("/sys/fs/cgroup/system.slice/jwtchat.service")
        );
        assert_eq!(
            pids_dir("8:pids:/system.slice/jwtchat.service").as_deref(),
            Some("/sys/fs/cgroup/pids/system.slice/jwtchat.service")
        );
        assert_eq!(
            pids_dir("3:cpu,pids:/a").as_deref(),
            Some("/sys/fs/cgroup/pids/a")
        );
        assert_eq!(pids_dir("4:memory:/a"), None);
        assert_eq!(pids_dir("garbage"), None);
        let up: Vec<&str> =
            ancestors("/sys/fs/cgroup/user.slice/user-1000.slice/session-3.scope").collect();
        assert_eq!(
            up,
            [
                "/sys/fs/cgroup/user.slice/user-1000.slice/session-3.scope",
                "/sys/fs/cgroup/user.slice/user-1000.slice",
                "/sys/fs/cgroup/user.slice",
            ]
        );
        assert_eq!(ancestors("/sys/fs/cgroup/").count(), 0);
        assert_eq!(
            ancestors("/sys/fs/cgroup/pids/a").collect::<Vec<_>>(),
            ["/sys/fs/cgroup/pids/a"]
        );
    }

    #[test]
    fn some_descriptors_stay_free_for_the_server_itself() {
        assert_eq!(file_room(1024), 858);
        assert_eq!(file_room(20_000), 17_936);
        assert_eq!(file_room(50), 0);
    }
}
