//! The on-disk message store behind `--data-dir` (#16): every room's
//! retained messages, its last `seq` and its epoch, in one file,
//! `DIR/messages.redb`, so that a restart keeps history and a client that
//! reconnects across it can resume. Only with the `store` cargo feature
//! (on by default; `--no-default-features` leaves it out).
//!
//! It owns that file and what is in it: the tables, retention on disk
//! (`--history-size` messages per room, `--history-ttl`), and when a write
//! becomes durable (`--fsync`). It never touches a room or a socket: a room
//! calls [`Store::append`] under its own lock before a batch fans out, the
//! periodic sweep calls [`Store::prune_expired`], and start-up calls
//! [`Store::load`] once.
//!
//! The file is a [redb] database (pure Rust, ACID, copy-on-write B-trees
//! with a checksum on every page) rather than a format of our own:
//!
//! ```text
//!   rooms:    room → (epoch, last seq, messages kept)
//!   messages: (room, seq) → (from, text, ts, id)   a room's messages, in seq order
//!   by_time:  (ts, room, seq) → ()                 the oldest first, for the TTL
//!   meta:     "format" → 1, "running" → the --fsync of the process that has it open, or 0
//! ```
//!
//! **Durability.** redb knows two kinds of commit. A durable one has
//! written its pages and the file's header and fsynced them when `commit`
//! returns. A non-durable one (`Durability::None`) is seen at once by every
//! later read in this process, but the header on disk still names the last
//! durable commit, so a crash, *of the process as much as of the machine*,
//! reopens the file as it was at that commit. There is nothing in between
//! (no "written, not yet fsynced"). So `--fsync` means:
//!
//! | mode | [`Store::append`] returns after | a crash (`kill -9`, OOM, panic=abort, power) loses |
//! |---|---|---|
//! | `always` | a durable commit | nothing it acknowledged |
//! | `batch` (default) | a non-durable commit; a thread makes a durable one at most 100 ms after the first that is not | what was appended since the last durable commit began: at most the last 100 ms, plus one fsync's time |
//! | `never` | a non-durable commit | everything since [`Store::open`] (durable only at [`Store::close`]) |
//!
//! A crash never leaves a file that will not open: redb's commits are
//! atomic, and the next open repairs its free-space bookkeeping and goes on
//! from the last durable commit. After a crash in `batch` or `never`, that
//! commit may lack messages clients saw, and their `seq` numbers would be
//! given out again: [`Store::lost_on_crash`] says so, and every room then
//! needs a new epoch. A file damaged or changed outside redb is
//! refused ([`Reason::Corrupt`]), never read as an empty history: the open
//! checks the checksum of every page, because redb trusts (and may panic
//! on) a file it did not leave that way.
//!
//! **Cost.** A durable commit waits for an fsync, and redb has one writer
//! at a time: with `always` every room's batches queue behind each other's
//! fsync; with `batch` an append now and then waits for the sync thread's.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{DirBuilder, OpenOptions};
use std::ops::RangeInclusive;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use redb::backends::FileBackend;
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, Table, TableDefinition, WriteTransaction,
};

/// The file in `--data-dir`.
pub const FILE_NAME: &str = "messages.redb";

/// With [`Fsync::Batch`], how long after a non-durable commit the durable
/// one that covers it starts, at most.
pub const BATCH_WINDOW: Duration = Duration::from_millis(100);

/// The layout of the tables below; an open refuses any other.
const FORMAT: u64 = 1;

/// `(room, seq)`, and `(from, text, ts, id)`.
type MessageKey = (&'static str, u64);
type MessageValue = (&'static str, &'static str, u64, Option<&'static str>);

const ROOMS: TableDefinition<&str, (&str, u64, u64)> = TableDefinition::new("rooms");
const MESSAGES: TableDefinition<MessageKey, MessageValue> = TableDefinition::new("messages");
const BY_TIME: TableDefinition<(u64, &str, u64), ()> = TableDefinition::new("by_time");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// The `meta` key that says whether a process has the file open, and with
/// which `--fsync`: written durably by the open, set to [`CLOSED`] by the
/// close. Still set at the next open: that process crashed.
const RUNNING: &str = "running";
const CLOSED: u64 = 0;

/// [`RUNNING`]'s value while a process with `fsync` has the file.
fn running(fsync: Fsync) -> u64 {
    match fsync {
        Fsync::Always => 1,
        Fsync::Batch => 2,
        Fsync::Never => 3,
    }
}

/// When an appended message is on disk for good (`--fsync`); the module
/// docs say what a crash loses with each.
pub use crate::config::Fsync;

/// What the store keeps: the same limits as the rooms in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Messages kept per room (`--history-size`); older ones are dropped
    /// as new ones come, and at open if the limit went down.
    pub messages_per_room: usize,
    /// Messages older than this (`--history-ttl`) go at the next
    /// [`Store::prune_expired`].
    pub ttl_secs: u64,
}

/// One chat message as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Its number within the room's epoch.
    pub seq: u64,
    /// The sender's username.
    pub from: String,
    /// The text.
    pub text: String,
    /// When the server took it, unix milliseconds.
    pub ts: u64,
    /// The sender's own `id` for it, if it gave one.
    pub id: Option<String>,
}

/// One room as the store has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomRecord {
    /// The room's name.
    pub room: String,
    /// The epoch its `seq` numbers belong to.
    pub epoch: String,
    /// The highest `seq` appended in that epoch, kept even when the
    /// message itself has gone (so numbering goes on without reuse).
    pub last_seq: u64,
    /// The retained messages, oldest first.
    pub messages: Vec<StoredMessage>,
}

/// Why the store cannot be used: the file (or directory) and the reason.
/// Its `Display` is one line, which start-up prints before exiting with 2.
#[derive(Debug)]
pub struct StoreError {
    /// The file, or the directory when that is what failed.
    pub path: PathBuf,
    /// What went wrong.
    pub reason: Reason,
}

/// What went wrong with the store.
#[derive(Debug)]
pub enum Reason {
    /// The directory or the file cannot be created, opened, read or
    /// written: permissions, a read-only file system, a full disk.
    Io(std::io::Error),
    /// Another process has the file open (another jwtchat with the same
    /// `--data-dir`).
    InUse,
    /// The file is not a redb database, or a page fails its checksum.
    Corrupt(String),
    /// A redb database, but not in this build's layout ([`FORMAT`]).
    Format(String),
    /// Anything else redb reports.
    Database(redb::Error),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot use --data-dir {:?}: ", self.path)?;
        match &self.reason {
            Reason::Io(e) => write!(f, "{e}"),
            Reason::InUse => f.write_str("another process has it open"),
            Reason::Corrupt(why) => write!(
                f,
                "the file is damaged or not jwtchat's ({why}); move it away to start \
                 with no history"
            ),
            Reason::Format(why) => f.write_str(why),
            Reason::Database(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<redb::Error> for Reason {
    fn from(e: redb::Error) -> Reason {
        match e {
            // redb's word for "not a redb file" (a wrong magic number).
            redb::Error::Io(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                Reason::Corrupt(e.to_string())
            }
            redb::Error::Io(e) => Reason::Io(e),
            redb::Error::DatabaseAlreadyOpen => Reason::InUse,
            redb::Error::Corrupted(why) => Reason::Corrupt(why),
            redb::Error::UpgradeRequired(version) => Reason::Format(format!(
                "the file is in redb's format {version}, which this build does not read"
            )),
            other => Reason::Database(other),
        }
    }
}

/// The message store. `Send + Sync`: rooms share one and call it under
/// their own locks; redb lets one write transaction run at a time.
pub struct Store {
    shared: Arc<Shared>,
    /// The sync thread, with [`Fsync::Batch`] until [`Store::close`].
    syncer: Mutex<Option<JoinHandle<()>>>,
    /// See [`Store::lost_on_crash`].
    lost_on_crash: bool,
}

/// What the store and its sync thread share.
struct Shared {
    db: Database,
    path: PathBuf,
    fsync: Fsync,
    retention: Retention,
    /// Set by [`Store::close`]: every commit after it is durable.
    closed: AtomicBool,
    unsynced: Mutex<Unsynced>,
    /// Wakes the sync thread: a first unsynced commit, or the close.
    wake: Condvar,
}

/// The sync thread's state.
#[derive(Default)]
struct Unsynced {
    /// When the oldest commit not yet covered by a durable one was made.
    since: Option<Instant>,
    /// The thread should end.
    stop: bool,
}

impl Store {
    /// Opens `dir/messages.redb`, creating the directory (mode 0700) and the
    /// file (0600: it holds every room's messages) if they are missing.
    /// Checks every page's checksum, refuses a file in another layout,
    /// proves the file writable with a durable commit, and drops what is
    /// over `retention.messages_per_room` (the limit may have gone down
    /// since the last run).
    pub fn open(dir: &Path, fsync: Fsync, retention: Retention) -> Result<Store, StoreError> {
        let path = dir.join(FILE_NAME);
        let io = |path: &Path, e| StoreError {
            path: path.to_path_buf(),
            reason: Reason::Io(e),
        };
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| io(dir, e))?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| io(&path, e))?;
        let db = FileBackend::new(file)
            .and_then(|backend| {
                Database::builder()
                    .set_check_integrity_on_open(true)
                    .create_with_backend(backend)
            })
            .map_err(|e| StoreError {
                path: path.clone(),
                reason: redb::Error::from(e).into(),
            })?;
        let shared = Arc::new(Shared {
            db,
            path,
            fsync,
            retention,
            closed: AtomicBool::new(false),
            unsynced: Mutex::new(Unsynced::default()),
            wake: Condvar::new(),
        });
        let previous = shared.check_meta()?;
        shared.write(true, |txn| {
            let mut meta = txn.open_table(META)?;
            meta.insert("format", FORMAT)?;
            meta.insert(RUNNING, running(fsync))?;
            drop(meta);
            Tables::open(txn)?.trim_all(shared.retention.messages_per_room)
        })?;
        let syncer = match fsync {
            Fsync::Batch => Some(spawn_syncer(&shared)?),
            Fsync::Always | Fsync::Never => None,
        };
        Ok(Store {
            shared,
            syncer: Mutex::new(syncer),
            lost_on_crash: previous == Some(running(Fsync::Batch))
                || previous == Some(running(Fsync::Never)),
        })
    }

    /// Whether the previous run ended without [`Store::close`] (a crash,
    /// `kill -9`) while its `--fsync` let acknowledged messages wait for a
    /// sync (`batch`, `never`). Then some messages clients saw may be
    /// missing, and their `seq` numbers would be given out again: every
    /// room needs a new epoch. (After `always`, nothing acknowledged is
    /// missing.)
    pub fn lost_on_crash(&self) -> bool {
        self.lost_on_crash
    }

    /// Every room the store holds, by name, each with its retained
    /// messages oldest first. Read once at start-up, after
    /// [`Store::prune_expired`] has dropped what expired while the server
    /// was down.
    pub fn load(&self) -> Result<Vec<RoomRecord>, StoreError> {
        self.shared.read(|db| {
            let txn = db.begin_read()?;
            let rooms = txn.open_table(ROOMS)?;
            let messages = txn.open_table(MESSAGES)?;
            let mut loaded = Vec::new();
            for entry in rooms.iter()? {
                let (room, state) = entry?;
                let room = room.value().to_string();
                let (epoch, last_seq, _) = state.value();
                let mut kept = Vec::new();
                for entry in messages.range(seqs_of(&room))? {
                    let (key, value) = entry?;
                    let (from, text, ts, id) = value.value();
                    kept.push(StoredMessage {
                        seq: key.value().1,
                        from: from.to_string(),
                        text: text.to_string(),
                        ts,
                        id: id.map(str::to_string),
                    });
                }
                loaded.push(RoomRecord {
                    room,
                    epoch: epoch.to_string(),
                    last_seq,
                    messages: kept,
                });
            }
            Ok(loaded)
        })
    }

    /// Stores `messages` (in `seq` order) for `room` in one transaction,
    /// records `epoch` and the last `seq`, and drops the room's oldest
    /// messages over the retention count. An `epoch` other than the one
    /// stored replaces the room's history: its `seq` numbers start over.
    /// Returns once the messages are in the store; durable on disk per
    /// [`Fsync`].
    pub fn append(
        &self,
        room: &str,
        epoch: &str,
        messages: &[StoredMessage],
    ) -> Result<(), StoreError> {
        debug_assert!(messages.windows(2).all(|w| w[0].seq < w[1].seq));
        let keep = self.shared.retention.messages_per_room;
        self.shared.write(false, |txn| {
            let mut tables = Tables::open(txn)?;
            let (mut last_seq, mut count) = tables.state_in(room, epoch)?;
            for message in messages {
                count += tables.put(room, message)?;
                last_seq = last_seq.max(message.seq);
            }
            count -= tables.drop_oldest(room, count.saturating_sub(wide(keep)))?;
            tables.rooms.insert(room, (epoch, last_seq, count))?;
            Ok(())
        })
    }

    /// Drops every message older than [`Retention::ttl_secs`] at `now_ms`
    /// (unix milliseconds, from the server's clock). Cheap when nothing is
    /// that old: one read, no commit.
    pub fn prune_expired(&self, now_ms: u64) -> Result<(), StoreError> {
        let ttl_ms = self.shared.retention.ttl_secs.saturating_mul(1000);
        let cutoff = now_ms.saturating_sub(ttl_ms);
        let anything_old = self.shared.read(|db| {
            let txn = db.begin_read()?;
            let by_time = txn.open_table(BY_TIME)?;
            let oldest = by_time.first()?;
            Ok(oldest.is_some_and(|(key, _)| key.value().0 < cutoff))
        })?;
        if !anything_old {
            return Ok(());
        }
        self.shared.write(false, |txn| {
            let mut tables = Tables::open(txn)?;
            tables.drop_older_than(cutoff)
        })
    }

    /// Drops `room` and everything stored for it (the room was freed with
    /// its history).
    pub fn forget_room(&self, room: &str) -> Result<(), StoreError> {
        self.shared.write(false, |txn| {
            let mut tables = Tables::open(txn)?;
            tables.drop_oldest(room, u64::MAX)?;
            tables.rooms.remove(room)?;
            Ok(())
        })
    }

    /// A clean shutdown: stops the sync thread and makes everything
    /// appended so far durable. Appends after it are durable one by one.
    /// Dropping the store closes it too (and logs a failure).
    pub fn close(&self) -> Result<(), StoreError> {
        if self.shared.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.stop_syncer();
        self.shared.write(true, |txn| {
            txn.open_table(META)?.insert(RUNNING, CLOSED)?;
            Ok(())
        })
    }

    fn stop_syncer(&self) {
        let syncer = self
            .syncer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(thread) = syncer {
            self.shared.unsynced().stop = true;
            self.shared.wake.notify_one();
            // A panic in it has been reported on stderr already.
            let _ = thread.join();
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            crate::error!("{e}");
        }
    }
}

impl Shared {
    /// Runs `work` in a write transaction and commits it: durable if asked,
    /// with [`Fsync::Always`], or once the store is closed; otherwise not,
    /// and the sync thread hears of it.
    fn write<T>(
        &self,
        durable: bool,
        work: impl FnOnce(&WriteTransaction) -> Result<T, redb::Error>,
    ) -> Result<T, StoreError> {
        let mut committed_durable = durable;
        let outcome = (|| {
            let mut txn = self.db.begin_write()?;
            // Read only now, holding redb's one writer slot: a commit that
            // starts after close's has begun sees `closed`, and any other
            // was committed before close's durable one.
            committed_durable |= self.fsync == Fsync::Always || self.closed.load(Ordering::Acquire);
            txn.set_durability(if committed_durable {
                Durability::Immediate
            } else {
                Durability::None
            })?;
            let out = work(&txn)?;
            txn.commit()?;
            Ok(out)
        })();
        let out = outcome.map_err(|e| self.error(e))?;
        if !committed_durable && self.fsync == Fsync::Batch {
            self.note_unsynced();
        }
        Ok(out)
    }

    fn read<T>(
        &self,
        work: impl FnOnce(&Database) -> Result<T, redb::Error>,
    ) -> Result<T, StoreError> {
        work(&self.db).map_err(|e| self.error(e))
    }

    /// Refuses a file whose tables are laid out for another build;
    /// returns how the previous run left it ([`RUNNING`]).
    fn check_meta(&self) -> Result<Option<u64>, StoreError> {
        let (format, previous) = self.read(|db| {
            let txn = db.begin_read()?;
            match txn.open_table(META) {
                Ok(meta) => Ok((
                    meta.get("format")?.map(|v| v.value()),
                    meta.get(RUNNING)?.map(|v| v.value()),
                )),
                // A new file: the first write makes the tables.
                Err(redb::TableError::TableDoesNotExist(_)) => Ok((None, None)),
                Err(e) => Err(e.into()),
            }
        })?;
        match format {
            None | Some(FORMAT) => Ok(previous),
            Some(other) => Err(StoreError {
                path: self.path.clone(),
                reason: Reason::Format(format!(
                    "the file is in jwtchat's store format {other}; this build reads {FORMAT}"
                )),
            }),
        }
    }

    fn error(&self, e: redb::Error) -> StoreError {
        StoreError {
            path: self.path.clone(),
            reason: e.into(),
        }
    }

    fn unsynced(&self) -> MutexGuard<'_, Unsynced> {
        self.unsynced.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A non-durable commit was made: the sync thread's window opens if it
    /// was not already.
    fn note_unsynced(&self) {
        let mut state = self.unsynced();
        if state.since.is_none() {
            state.since = Some(Instant::now());
            self.wake.notify_one();
        }
    }

    /// The sync thread: a durable commit [`BATCH_WINDOW`] after the first
    /// commit that is not, and sleep while there is none.
    fn sync_loop(&self) {
        let mut state = self.unsynced();
        loop {
            if state.stop {
                return;
            }
            let Some(since) = state.since else {
                state = self
                    .wake
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
                continue;
            };
            let due = since + BATCH_WINDOW;
            let now = Instant::now();
            if now < due {
                state = self
                    .wake
                    .wait_timeout(state, due - now)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
                continue;
            }
            // Cleared first: a commit made after this point opens the next
            // window, one made before it is covered by this durable commit
            // (redb runs write transactions one at a time, in order).
            state.since = None;
            drop(state);
            if let Err(e) = self.write(true, |_| Ok(())) {
                crate::error!("{e} (syncing recent messages to disk)");
            }
            state = self.unsynced();
        }
    }
}

fn spawn_syncer(shared: &Arc<Shared>) -> Result<JoinHandle<()>, StoreError> {
    let for_thread = Arc::clone(shared);
    std::thread::Builder::new()
        .name("store-sync".into())
        .spawn(move || for_thread.sync_loop())
        .map_err(|e| StoreError {
            path: shared.path.clone(),
            reason: Reason::Io(e),
        })
}

/// The tables one write transaction changes, and the steps that keep them
/// in agreement: a message is in `messages` and `by_time` or in neither,
/// and `rooms` counts what `messages` holds.
struct Tables<'t> {
    rooms: Table<'t, &'static str, (&'static str, u64, u64)>,
    messages: Table<'t, MessageKey, MessageValue>,
    by_time: Table<'t, (u64, &'static str, u64), ()>,
}

impl<'t> Tables<'t> {
    fn open(txn: &'t WriteTransaction) -> Result<Tables<'t>, redb::Error> {
        Ok(Tables {
            rooms: txn.open_table(ROOMS)?,
            messages: txn.open_table(MESSAGES)?,
            by_time: txn.open_table(BY_TIME)?,
        })
    }

    /// `room`'s last `seq` and message count in `epoch`; a room stored
    /// under another epoch loses its messages and starts from nothing.
    fn state_in(&mut self, room: &str, epoch: &str) -> Result<(u64, u64), redb::Error> {
        let stored = self.rooms.get(room)?.map(|state| {
            let (stored_epoch, last_seq, count) = state.value();
            (stored_epoch == epoch, last_seq, count)
        });
        match stored {
            Some((true, last_seq, count)) => Ok((last_seq, count)),
            Some((false, ..)) => {
                self.drop_oldest(room, u64::MAX)?;
                Ok((0, 0))
            }
            None => Ok((0, 0)),
        }
    }

    /// Stores one message; 1 if it is new, 0 if it replaced one with its
    /// `seq`.
    fn put(&mut self, room: &str, message: &StoredMessage) -> Result<u64, redb::Error> {
        let value = (
            message.from.as_str(),
            message.text.as_str(),
            message.ts,
            message.id.as_deref(),
        );
        let replaced = self
            .messages
            .insert((room, message.seq), value)?
            .map(|old| old.value().2);
        self.by_time.insert((message.ts, room, message.seq), ())?;
        match replaced {
            Some(old_ts) if old_ts != message.ts => {
                self.by_time.remove((old_ts, room, message.seq))?;
                Ok(0)
            }
            Some(_) => Ok(0),
            None => Ok(1),
        }
    }

    /// Drops the `n` oldest messages of `room` (all of them for
    /// `u64::MAX`); returns how many went.
    fn drop_oldest(&mut self, room: &str, n: u64) -> Result<u64, redb::Error> {
        if n == 0 {
            return Ok(0);
        }
        let take = usize::try_from(n).unwrap_or(usize::MAX);
        let mut gone = Vec::new();
        for entry in self
            .messages
            .extract_from_if(seqs_of(room), |_, _| true)?
            .take(take)
        {
            let (key, value) = entry?;
            gone.push((value.value().2, key.value().1));
        }
        for &(ts, seq) in &gone {
            self.by_time.remove((ts, room, seq))?;
        }
        Ok(wide(gone.len()))
    }

    /// Drops every message with a `ts` before `cutoff`, in every room.
    fn drop_older_than(&mut self, cutoff: u64) -> Result<(), redb::Error> {
        let mut gone: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for entry in self
            .by_time
            .extract_from_if(..(cutoff, "", 0), |_, _| true)?
        {
            let (key, _) = entry?;
            let (_, room, seq) = key.value();
            gone.entry(room.to_string()).or_default().push(seq);
        }
        for (room, seqs) in gone {
            for &seq in &seqs {
                self.messages.remove((room.as_str(), seq))?;
            }
            let state = self.rooms.get(room.as_str())?.map(|state| {
                let (epoch, last_seq, count) = state.value();
                (epoch.to_string(), last_seq, count)
            });
            if let Some((epoch, last_seq, count)) = state {
                let count = count.saturating_sub(wide(seqs.len()));
                self.rooms
                    .insert(room.as_str(), (epoch.as_str(), last_seq, count))?;
            }
        }
        Ok(())
    }

    /// Brings every room within `keep` messages (at open: the limit may
    /// have gone down since the file was written).
    fn trim_all(&mut self, keep: usize) -> Result<(), redb::Error> {
        let mut over = Vec::new();
        for entry in self.rooms.iter()? {
            let (room, state) = entry?;
            let (epoch, last_seq, count) = state.value();
            if count > wide(keep) {
                over.push((room.value().to_string(), epoch.to_string(), last_seq, count));
            }
        }
        for (room, epoch, last_seq, count) in over {
            let count = count - self.drop_oldest(&room, count - wide(keep))?;
            self.rooms
                .insert(room.as_str(), (epoch.as_str(), last_seq, count))?;
        }
        Ok(())
    }
}

/// Every key of `room` in the messages table.
fn seqs_of(room: &str) -> RangeInclusive<(&str, u64)> {
    (room, 0)..=(room, u64::MAX)
}

// usize is at most 64 bits on every target Rust supports.
fn wide(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// The store as the rooms see it: where each batch goes before it fans
/// out (see `room::Journal`).
impl crate::room::Journal for Store {
    fn append(
        &self,
        room: &str,
        epoch: &str,
        messages: &[crate::room::Kept<'_>],
    ) -> Result<(), String> {
        let messages: Vec<StoredMessage> = messages
            .iter()
            .map(|m| StoredMessage {
                seq: m.seq,
                from: m.from.to_string(),
                text: m.text.to_string(),
                ts: m.ts,
                id: m.id.map(str::to_string),
            })
            .collect();
        Store::append(self, room, epoch, &messages).map_err(|e| e.to_string())
    }

    fn forget(&self, room: &str) {
        if let Err(e) = self.forget_room(room) {
            crate::error!("{e}");
        }
    }

    fn prune(&self, now_ms: u64) {
        if let Err(e) = self.prune_expired(now_ms) {
            crate::error!("{e}");
        }
    }

    fn close(&self) {
        if let Err(e) = Store::close(self) {
            crate::error!("{e}");
        }
    }
}

impl RoomRecord {
    /// The room as the rooms take it back at start-up.
    pub fn restored(self) -> crate::room::Restored {
        crate::room::Restored {
            room: self.room,
            epoch: self.epoch,
            last_seq: self.last_seq,
            messages: self
                .messages
                .into_iter()
                .map(|m| (m.seq, m.from, m.text, m.ts, m.id))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Command, Stdio};
    use std::sync::atomic::AtomicUsize;

    /// A directory of its own under the system's temp dir, removed at the
    /// end. Not created: [`Store::open`] makes it.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir()
                .join(format!("jwtchat-store-{}-{name}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            TempDir(dir)
        }

        fn file(&self) -> PathBuf {
            self.0.join(FILE_NAME)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::set_permissions(&self.0, std::fs::Permissions::from_mode(0o700));
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const KEEP_ALL: Retention = Retention {
        messages_per_room: 1000,
        ttl_secs: 86_400,
    };

    fn message(seq: u64, text: &str, ts: u64) -> StoredMessage {
        StoredMessage {
            seq,
            from: "userA".into(),
            text: text.into(),
            ts,
            id: None,
        }
    }

    fn seqs(record: &RoomRecord) -> Vec<u64> {
        record.messages.iter().map(|m| m.seq).collect()
    }

    fn room<'a>(loaded: &'a [RoomRecord], name: &str) -> &'a RoomRecord {
        loaded
            .iter()
            .find(|r| r.room == name)
            .unwrap_or_else(|| panic!("no room {name:?} in {loaded:?}"))
    }

    #[test]
    fn the_store_is_shared_between_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Store>();
    }

    #[test]
    fn rooms_round_trip() {
        let dir = TempDir::new("round-trip");
        let store = Store::open(&dir.0, Fsync::Batch, KEEP_ALL).expect("open");
        assert_eq!(store.load().expect("load"), []);
        let mut with_id = message(3, "three", 1_003);
        with_id.id = Some("c-1".into());
        store
            .append(
                "general",
                "E1",
                &[message(1, "one", 1_001), message(2, "two", 1_002)],
            )
            .expect("append");
        store
            .append("general", "E1", &[with_id.clone()])
            .expect("append");
        store
            .append("dm:usera:userb", "E2", &[message(7, "ünïcode ✓", 1_007)])
            .expect("append");
        store.append("ops", "E3", &[]).expect("an epoch alone");
        assert_eq!(
            store.load().expect("load"),
            [
                RoomRecord {
                    room: "dm:usera:userb".into(),
                    epoch: "E2".into(),
                    last_seq: 7,
                    messages: vec![message(7, "ünïcode ✓", 1_007)],
                },
                RoomRecord {
                    room: "general".into(),
                    epoch: "E1".into(),
                    last_seq: 3,
                    messages: vec![message(1, "one", 1_001), message(2, "two", 1_002), with_id],
                },
                RoomRecord {
                    room: "ops".into(),
                    epoch: "E3".into(),
                    last_seq: 0,
                    messages: vec![],
                },
            ]
        );
    }

    #[test]
    fn reopening_after_a_drop_keeps_everything() {
        let dir = TempDir::new("reopen");
        // `never`: only the close that dropping the store does writes it.
        let store = Store::open(&dir.0, Fsync::Never, KEEP_ALL).expect("open");
        store
            .append(
                "general",
                "E1",
                &[message(1, "one", 1), message(2, "two", 2)],
            )
            .expect("append");
        store
            .append("ops", "E2", &[message(5, "five", 5)])
            .expect("append");
        let before = store.load().expect("load");
        drop(store);
        let store = Store::open(&dir.0, Fsync::Always, KEEP_ALL).expect("reopen");
        assert!(!store.lost_on_crash(), "a drop is a clean close");
        assert_eq!(store.load().expect("load"), before);
        // Numbering goes on where it was.
        store
            .append("general", "E1", &[message(3, "three", 3)])
            .expect("append");
        assert_eq!(
            seqs(room(&store.load().expect("load"), "general")),
            [1, 2, 3]
        );
    }

    #[test]
    fn each_room_keeps_its_newest_messages() {
        let dir = TempDir::new("count");
        let three = Retention {
            messages_per_room: 3,
            ..KEEP_ALL
        };
        let store = Store::open(&dir.0, Fsync::Batch, three).expect("open");
        for seq in 1..=4 {
            store
                .append("general", "E", &[message(seq, "x", seq)])
                .expect("append");
        }
        let batch: Vec<StoredMessage> = (5..=9).map(|seq| message(seq, "y", seq)).collect();
        store
            .append("general", "E", &batch)
            .expect("a batch over the limit");
        store
            .append("ops", "E", &[message(1, "z", 1)])
            .expect("append");
        let loaded = store.load().expect("load");
        assert_eq!(seqs(room(&loaded, "general")), [7, 8, 9]);
        assert_eq!(room(&loaded, "general").last_seq, 9);
        assert_eq!(seqs(room(&loaded, "ops")), [1], "other rooms keep theirs");
        drop(store);

        // A lower limit applies at the next open.
        let two = Retention {
            messages_per_room: 2,
            ..KEEP_ALL
        };
        let store = Store::open(&dir.0, Fsync::Batch, two).expect("reopen");
        let loaded = store.load().expect("load");
        assert_eq!(seqs(room(&loaded, "general")), [8, 9]);
        store
            .append("general", "E", &[message(10, "w", 10)])
            .expect("append");
        assert_eq!(seqs(room(&store.load().expect("load"), "general")), [9, 10]);
    }

    #[test]
    fn old_messages_expire() {
        let dir = TempDir::new("ttl");
        let ten_secs = Retention {
            messages_per_room: 3,
            ttl_secs: 10,
        };
        let store = Store::open(&dir.0, Fsync::Batch, ten_secs).expect("open");
        store
            .append(
                "general",
                "E",
                &[message(1, "a", 1_000), message(2, "b", 2_000)],
            )
            .expect("append");
        store
            .append("general", "E", &[message(3, "c", 20_000)])
            .expect("append");
        store
            .append("ops", "F", &[message(1, "d", 1_500)])
            .expect("append");

        store
            .prune_expired(11_000)
            .expect("nothing is 10 s old yet");
        assert_eq!(
            seqs(room(&store.load().expect("load"), "general")),
            [1, 2, 3]
        );

        store.prune_expired(15_000).expect("prune");
        let loaded = store.load().expect("load");
        assert_eq!(seqs(room(&loaded, "general")), [3]);
        // A room whose messages all expired keeps its epoch and numbering.
        let ops = room(&loaded, "ops");
        assert_eq!(
            (ops.epoch.as_str(), ops.last_seq, seqs(ops)),
            ("F", 1, vec![])
        );

        // The count it keeps follows: three fit again, not one.
        for seq in 4..=6 {
            store
                .append("general", "E", &[message(seq, "e", 30_000)])
                .expect("append");
        }
        assert_eq!(
            seqs(room(&store.load().expect("load"), "general")),
            [4, 5, 6]
        );
    }

    #[test]
    fn a_new_epoch_replaces_the_history() {
        let dir = TempDir::new("epoch");
        let store = Store::open(&dir.0, Fsync::Batch, KEEP_ALL).expect("open");
        store
            .append(
                "general",
                "OLD",
                &[message(41, "a", 1), message(42, "b", 2)],
            )
            .expect("append");
        store
            .append("general", "NEW", &[message(1, "c", 3)])
            .expect("append");
        let loaded = store.load().expect("load");
        let general = room(&loaded, "general");
        assert_eq!((general.epoch.as_str(), general.last_seq), ("NEW", 1));
        assert_eq!(seqs(general), [1]);
        // The old epoch's messages left the TTL index too.
        store.prune_expired(u64::MAX).expect("prune");
        assert_eq!(
            seqs(room(&store.load().expect("load"), "general")),
            Vec::<u64>::new()
        );
    }

    #[test]
    fn a_forgotten_room_is_gone() {
        let dir = TempDir::new("forget");
        let store = Store::open(&dir.0, Fsync::Batch, KEEP_ALL).expect("open");
        store
            .append("ops", "E", &[message(1, "a", 1)])
            .expect("append");
        store
            .append("general", "E", &[message(1, "b", 1)])
            .expect("append");
        store.forget_room("ops").expect("forget");
        store.forget_room("never-was").expect("forgetting nothing");
        let loaded = store.load().expect("load");
        assert_eq!(
            loaded.iter().map(|r| r.room.as_str()).collect::<Vec<_>>(),
            ["general"]
        );
    }

    #[test]
    fn a_corrupt_file_is_named_and_refused() {
        let dir = TempDir::new("garbage");
        std::fs::create_dir_all(&dir.0).expect("mkdir");
        let garbage: Vec<u8> = (0..16_384u32).map(|i| (i * 7 + 3) as u8).collect();
        std::fs::write(dir.file(), &garbage).expect("write garbage");
        let error = Store::open(&dir.0, Fsync::Batch, KEEP_ALL)
            .err()
            .expect("garbage must not open");
        let text = error.to_string();
        assert!(
            text.starts_with(&format!("cannot use --data-dir {:?}: ", dir.file())),
            "{text}"
        );
        assert!(matches!(error.reason, Reason::Corrupt(_)), "{error:?}");
        assert_eq!(
            std::fs::read(dir.file()).expect("read"),
            garbage,
            "left as it was"
        );
    }

    #[test]
    fn a_damaged_page_is_refused() {
        let dir = TempDir::new("damaged");
        let store = Store::open(&dir.0, Fsync::Always, KEEP_ALL).expect("open");
        let text = "x".repeat(2000);
        let batch: Vec<StoredMessage> = (1..=50).map(|seq| message(seq, &text, seq)).collect();
        store.append("general", "E", &batch).expect("append");
        drop(store);
        // Overwrite the middle of every message text: checksummed pages.
        let mut bytes = std::fs::read(dir.file()).expect("read");
        let needle = text.as_bytes();
        let mut damaged = 0;
        let mut at = 0;
        while let Some(found) = bytes[at..].windows(needle.len()).position(|w| w == needle) {
            bytes[at + found + 1000] = b'!';
            damaged += 1;
            at += found + needle.len();
        }
        assert!(damaged > 0, "the texts are in the file");
        std::fs::write(dir.file(), &bytes).expect("write");
        let error = Store::open(&dir.0, Fsync::Batch, KEEP_ALL)
            .err()
            .expect("a damaged file must not open");
        assert!(matches!(error.reason, Reason::Corrupt(_)), "{error:?}");
        assert!(error.to_string().contains(FILE_NAME), "{error}");
    }

    #[test]
    fn a_read_only_directory_is_refused() {
        let dir = TempDir::new("read-only");
        std::fs::create_dir_all(&dir.0).expect("mkdir");
        std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o500)).expect("chmod");
        // root (and CAP_DAC_OVERRIDE) writes anyway: nothing to prove then.
        if std::fs::write(dir.0.join("probe"), b"").is_ok() {
            eprintln!("skipped: this user can write to a read-only directory");
            return;
        }
        let error = Store::open(&dir.0, Fsync::Batch, KEEP_ALL)
            .err()
            .expect("must not open");
        assert!(matches!(error.reason, Reason::Io(_)), "{error:?}");
        assert!(error.to_string().contains(FILE_NAME), "{error}");
    }

    #[test]
    fn one_process_at_a_time() {
        let dir = TempDir::new("in-use");
        let _store = Store::open(&dir.0, Fsync::Batch, KEEP_ALL).expect("open");
        let error = Store::open(&dir.0, Fsync::Batch, KEEP_ALL)
            .err()
            .expect("a second open must fail");
        assert!(matches!(error.reason, Reason::InUse), "{error:?}");
        assert!(
            error.to_string().ends_with("another process has it open"),
            "{error}"
        );
    }

    /// Set (to `MODE:DIR`) in the child that [`killed`] starts.
    const CHILD: &str = "JWTCHAT_STORE_TEST_CHILD";

    /// Runs only in that child: opens the store in `MODE`, appends one
    /// message (and with `batch-close` closes), says so on stdout, and
    /// waits for the SIGKILL.
    #[test]
    fn child_appends_then_waits_to_be_killed() {
        let Ok(spec) = std::env::var(CHILD) else {
            return;
        };
        let (mode, dir) = spec.split_once(':').expect("MODE:DIR");
        let fsync = match mode {
            "always" => Fsync::Always,
            "batch-close" => Fsync::Batch,
            _ => Fsync::Never,
        };
        let store = Store::open(Path::new(dir), fsync, KEEP_ALL).expect("open");
        store
            .append("general", "E", &[message(1, "kept?", 1)])
            .expect("append");
        if mode == "batch-close" {
            store.close().expect("close");
        }
        // Past the test harness's capture of `println!`, straight to the pipe.
        let mut stdout = std::io::stdout().lock();
        // On a line of its own: the harness has written "test ... " before it.
        stdout.write_all(b"\nappended\n").expect("stdout");
        stdout.flush().expect("stdout");
        // Blocks until the parent kills this process (it never writes).
        let _ = std::io::stdin().read_line(&mut String::new());
        std::process::abort();
    }

    /// Starts this test binary as a child that appends in `mode` and is
    /// then killed with SIGKILL; returns what the store holds afterwards.
    fn killed(mode: &str) -> (Vec<u64>, bool) {
        let dir = TempDir::new(&format!("killed-{mode}"));
        let mut child = Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                "store::tests::child_appends_then_waits_to_be_killed",
                "--test-threads=1",
            ])
            .env(CHILD, format!("{mode}:{}", dir.0.display()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the child");
        let stdout = child.stdout.take().expect("piped");
        let appended = BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .any(|line| line == "appended");
        assert!(appended, "the child ended before appending");
        child.kill().expect("SIGKILL");
        let status = child.wait().expect("wait");
        assert_eq!(status.signal(), Some(9), "{status:?}");
        let store = Store::open(&dir.0, Fsync::Always, KEEP_ALL).expect("reopen after the kill");
        let loaded = store.load().expect("load");
        let kept = loaded
            .iter()
            .flat_map(|r| r.messages.iter().map(|m| m.seq))
            .collect();
        (kept, store.lost_on_crash())
    }

    #[test]
    fn always_survives_sigkill_after_append() {
        assert_eq!(
            killed("always"),
            (vec![1], false),
            "nothing lost, and it knows"
        );
    }

    #[test]
    fn batch_survives_sigkill_after_close() {
        assert_eq!(killed("batch-close"), (vec![1], false));
    }

    #[test]
    fn never_loses_what_was_not_closed() {
        // What the module docs promise: a non-durable commit does not
        // outlive the process. (`batch` alone is not tested this way: its
        // sync thread may or may not have run before the kill.)
        assert_eq!(killed("never"), (vec![], true), "lost, and it says so");
    }

    /// Not a check: how long [`Store::append`] takes in each mode, for a
    /// batch of 1 and of 32 64-byte messages, over ten rooms that are at
    /// their retention (so every append also drops the oldest). Prints;
    /// run it with redb optimised, as in a release build:
    ///
    /// ```text
    /// cargo test --lib --config 'profile.dev.package.redb.opt-level=3' \
    ///     --config 'profile.dev.package.redb.debug-assertions=false' \
    ///     store::tests::append_timings -- --ignored --no-capture
    /// ```
    #[test]
    #[ignore = "a measurement; prints its numbers"]
    fn append_timings() {
        let text = "x".repeat(64);
        let keep = Retention {
            messages_per_room: 1000,
            ..KEEP_ALL
        };
        for fsync in [Fsync::Always, Fsync::Batch, Fsync::Never] {
            for batch in [1u64, 32] {
                let dir = TempDir::new("timings");
                let store = Store::open(&dir.0, fsync, keep).expect("open");
                let rounds = if fsync == Fsync::Always { 300 } else { 3000 };
                let warm_up = 1000 / batch + 1;
                let mut seq = [0u64; 10];
                let mut times = Vec::new();
                for round in 0..warm_up * 10 + rounds {
                    let room = usize::try_from(round % 10).expect("small");
                    let messages: Vec<StoredMessage> = (1..=batch)
                        .map(|i| message(seq[room] + i, &text, seq[room] + i))
                        .collect();
                    seq[room] += batch;
                    let name = format!("room-{room}");
                    let start = Instant::now();
                    store.append(&name, "E", &messages).expect("append");
                    if round >= warm_up * 10 {
                        times.push(start.elapsed());
                    }
                }
                times.sort();
                let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize];
                let size = std::fs::metadata(dir.file()).map_or(0, |m| m.len());
                eprintln!(
                    "{fsync:?}, batch of {batch}: median {:?}, p99 {:?}, max {:?} \
                     ({} appends; file {} KiB)",
                    at(0.5),
                    at(0.99),
                    at(1.0),
                    times.len(),
                    size / 1024
                );
            }
        }
    }
}
