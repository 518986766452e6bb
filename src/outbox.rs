//! One client's outbound queue, and how it reaches the socket.
//!
//! Every byte the server sends on a WebSocket passes through here: broadcast
//! frames, the client's own notices, and `tungstenite`'s automatic pongs and
//! close replies (via [`OutboxWriter`]). Whoever holds the queue's lock
//! owns the socket's write side, so frames never interleave.
//!
//! The common case costs one system call and wakes no thread: while nothing
//! is queued, [`Outbox::push`] sends the frame straight into the socket's
//! buffer with a non-blocking send. Only when that buffer is full (a client
//! reading slowly, or a burst) does the rest queue up, and a writer thread
//! starts to drain it with blocking, vectored writes, batching whatever
//! piles up. It lingers a moment once the queue is empty, then exits: a
//! client costs a second thread only while it is behind.
//!
//! The queue is bounded, in frames and in bytes. `push` never waits: when
//! the queue is full it reports [`Full`], and the room disconnects the
//! client as a slow consumer. The frames are the room's shared `Arc`s: a
//! client that is behind holds references, never copies, and a frame sent in
//! part is remembered as an offset into the shared bytes. So however many
//! clients fall behind on the same broadcast, its bytes exist once.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use crate::close::CloseReason;
use crate::frame::Frame;
use crate::sys;

/// How long one socket write may block before the client is given up on.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// After the server sends a close frame, how long the reader waits for the
/// client's close reply before dropping the connection (RFC 6455 §7.1.1).
pub const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Frames written with one vectored write, at most.
const MAX_BATCH: usize = 64;
/// How long an idle writer thread waits for more work before it exits.
const WRITER_LINGER: Duration = Duration::from_secs(1);
/// Stack for a writer thread: it only moves bytes.
const WRITER_STACK: usize = 64 * 1024;

/// The queue was full: the client is not keeping up.
#[derive(Debug, PartialEq, Eq)]
pub struct Full;

/// How much one client's queue may hold before the client counts as a slow
/// consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimit {
    pub frames: usize,
    /// Unsent bytes. One frame larger than this still fits an empty queue
    /// (a single message can be that big only with a large
    /// `--max-message-bytes`; the room caps its batches well below it).
    pub bytes: usize,
}

pub struct Outbox {
    queue: Mutex<Queue>,
    wake: Condvar,
    limit: QueueLimit,
    socket: Arc<TcpStream>,
    /// Where the socket goes to wait for the client's close reply.
    reaper: Arc<Reaper>,
}

struct Queue {
    frames: VecDeque<Frame>,
    /// Bytes of the front frame already sent. While it is not 0 the rest of
    /// that frame must go out before anything else, even when the queue is
    /// discarded, or the stream would be corrupt.
    front_sent: usize,
    /// Bytes in `frames` not yet sent.
    bytes: usize,
    state: State,
    writer: Writer,
    /// The status code of the close the server started, for the log.
    closed_with: Option<u16>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    /// Accepting frames.
    Open,
    /// A close frame is queued last: send what is queued, then half-close.
    Closing,
    /// The reader is done: send what is queued, then stop.
    Finished,
    /// Nothing more will be written (sent and shut down, or the socket
    /// failed).
    Done,
}

/// Whether a writer thread exists, and what it is doing. Only while it is
/// `Writing` does it use the socket outside the lock.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Writer {
    None,
    Writing,
    Asleep,
}

impl Outbox {
    /// An outbox for `socket`, holding at most `limit`; after a close, the
    /// socket waits in `reaper` for the client's answer.
    pub fn new(limit: QueueLimit, socket: Arc<TcpStream>, reaper: Arc<Reaper>) -> Arc<Outbox> {
        Arc::new(Outbox {
            queue: Mutex::new(Queue {
                frames: VecDeque::new(),
                front_sent: 0,
                bytes: 0,
                state: State::Open,
                writer: Writer::None,
                closed_with: None,
            }),
            wake: Condvar::new(),
            limit: QueueLimit {
                frames: limit.frames.max(1),
                bytes: limit.bytes,
            },
            socket,
            reaper,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends or queues a frame, never waiting. After a close it is dropped
    /// (nothing may follow a close frame, §5.5.1).
    pub fn push(self: &Arc<Self>, frame: Frame) -> Result<(), Full> {
        let mut queue = self.lock();
        if queue.state != State::Open {
            return Ok(());
        }
        // Bounded in frames and in bytes (a batch is one frame of many
        // messages).
        let too_many = queue.frames.len() >= self.limit.frames;
        let too_big = !queue.frames.is_empty() && queue.bytes + frame.len() > self.limit.bytes;
        if too_many || too_big {
            return Err(Full);
        }
        queue.push(frame);
        self.send_queued(queue);
        Ok(())
    }

    /// Queues the frames that close the connection for `reason` (a notice,
    /// then the close frame) and stops accepting more. For a slow consumer,
    /// frames not yet sent are dropped first: it would never read them, and
    /// the close frame should not wait behind them. Returns false if the
    /// connection was already closing.
    pub fn close(self: &Arc<Self>, reason: &CloseReason) -> bool {
        let mut queue = self.lock();
        if queue.state != State::Open {
            return false;
        }
        if reason.discards_queued() {
            queue.discard();
        }
        for frame in reason.frames() {
            queue.push(frame);
        }
        queue.closed_with = Some(reason.code);
        queue.state = State::Closing;
        self.send_queued(queue);
        true
    }

    /// The reader has finished: what is queued still goes out, then the
    /// writer (if any) stops.
    pub fn finish(self: &Arc<Self>) {
        let mut queue = self.lock();
        if queue.state == State::Open {
            queue.state = State::Finished;
        }
        self.send_queued(queue);
    }

    /// The code of the close frame the server sent, if it sent one.
    pub fn close_code(&self) -> Option<u16> {
        self.lock().closed_with
    }

    /// True once everything is sent and the socket shut down (or failed).
    pub fn is_done(&self) -> bool {
        self.lock().state == State::Done
    }

    /// True once a close frame is queued or the socket is done.
    pub fn is_closing(&self) -> bool {
        matches!(self.lock().state, State::Closing | State::Done)
    }

    /// Moves queued frames towards the socket: directly if the socket is
    /// free, else by waking or starting the writer.
    fn send_queued(self: &Arc<Self>, mut queue: MutexGuard<'_, Queue>) {
        let socket = &self.socket;
        if queue.writer != Writer::Writing {
            // Nobody else can write while we hold the lock.
            queue.send_what_fits(socket);
        }
        if queue.frames.is_empty() {
            if queue.writer == Writer::Asleep && queue.state != State::Open {
                self.wake.notify_one(); // let it finish and exit
            } else if queue.writer == Writer::None && queue.state != State::Open {
                self.end(queue.state);
                queue.state = State::Done;
            }
            return;
        }
        match queue.writer {
            Writer::Writing => {}
            Writer::Asleep => self.wake.notify_one(),
            Writer::None => {
                queue.writer = Writer::Writing;
                if let Err(e) = self.spawn_writer() {
                    crate::warn!("cannot start a writer thread: {e}");
                    queue.writer = Writer::None;
                    queue.state = State::Done;
                    queue.discard();
                    let _ = socket.shutdown(Shutdown::Both);
                }
            }
        }
    }

    /// After the last frame: once we sent a close frame, half-close our side
    /// and give the client [`CLOSE_GRACE`] to answer before the reader gives
    /// up (the server closes the TCP connection first, §7.1.1). When the
    /// reader is done, close both ways.
    fn end(&self, state: State) {
        match state {
            State::Closing => {
                let _ = self.socket.shutdown(Shutdown::Write);
                // The reader may be blocked in a read that no timeout set
                // now would end; the reaper shuts the socket if the client
                // has not closed by then.
                self.reaper.linger(&self.socket);
            }
            State::Finished => {
                let _ = self.socket.shutdown(Shutdown::Both);
            }
            State::Open | State::Done => {}
        }
    }

    fn spawn_writer(self: &Arc<Self>) -> io::Result<()> {
        let outbox = self.clone();
        std::thread::Builder::new()
            .name("ws-writer".into())
            .stack_size(WRITER_STACK)
            .spawn(move || outbox.write_loop())
            .map(drop)
    }

    /// The writer thread: blocking, batched writes until the queue stays
    /// empty for [`WRITER_LINGER`] or the connection ends.
    fn write_loop(&self) {
        let socket = &self.socket;
        // A write that cannot finish in this time means the client has
        // stopped reading; the error ends the connection.
        let _ = socket.set_write_timeout(Some(WRITE_TIMEOUT));
        let mut batch = Vec::with_capacity(MAX_BATCH);
        loop {
            let sent_of_first = {
                let mut queue = self.lock();
                while queue.frames.is_empty() && queue.state == State::Open {
                    queue.writer = Writer::Asleep;
                    let (woken, timeout) = self
                        .wake
                        .wait_timeout(queue, WRITER_LINGER)
                        .unwrap_or_else(PoisonError::into_inner);
                    queue = woken;
                    if timeout.timed_out()
                        && queue.frames.is_empty()
                        && queue.state == State::Open
                        && queue.writer == Writer::Asleep
                    {
                        queue.writer = Writer::None;
                        return;
                    }
                }
                if queue.frames.is_empty() {
                    // Closing or finished, all sent.
                    self.end(queue.state);
                    queue.state = State::Done;
                    queue.writer = Writer::None;
                    return;
                }
                queue.writer = Writer::Writing;
                queue.take_batch(&mut batch)
            };
            if write_all(socket, &batch, sent_of_first).is_err() {
                let mut queue = self.lock();
                queue.state = State::Done;
                queue.discard();
                queue.writer = Writer::None;
                // Wake the reader, which is blocked on this same socket.
                let _ = socket.shutdown(Shutdown::Both);
                return;
            }
            batch.clear();
        }
    }
}

impl Queue {
    fn push(&mut self, frame: Frame) {
        self.bytes += frame.len();
        self.frames.push_back(frame);
    }

    /// Removes the front frame, however much of it was sent.
    fn pop_front(&mut self) {
        if let Some(frame) = self.frames.pop_front() {
            self.bytes -= frame.len() - self.front_sent;
        }
        self.front_sent = 0;
    }

    /// Drops what has not started to go out; a frame already partly sent
    /// stays, or the stream would be corrupt.
    fn discard(&mut self) {
        let keep = usize::from(self.front_sent > 0);
        while self.frames.len() > keep {
            if let Some(frame) = self.frames.pop_back() {
                self.bytes -= frame.len();
            }
        }
    }

    /// Moves up to [`MAX_BATCH`] frames into `batch` for the writer, and
    /// returns how much of the first was already sent.
    fn take_batch(&mut self, batch: &mut Vec<Frame>) -> usize {
        let sent_of_first = self.front_sent;
        let n = self.frames.len().min(MAX_BATCH);
        for _ in 0..n {
            if let Some(frame) = self.frames.front() {
                batch.push(frame.clone());
            }
            self.pop_front();
        }
        sent_of_first
    }

    /// Sends queued frames from the front with non-blocking sends while
    /// they fit; a frame sent in part stays at the front, its offset noted.
    fn send_what_fits(&mut self, socket: &TcpStream) {
        while let Some(front) = self.frames.front() {
            let unsent = &front[self.front_sent..];
            match sys::send_nonblocking(socket, unsent) {
                Ok(sent) if sent == unsent.len() => self.pop_front(),
                Ok(sent) => {
                    self.front_sent += sent;
                    self.bytes -= sent;
                    return;
                }
                // A full buffer, or a failed socket (the writer will find
                // out for itself): leave the rest for the writer.
                Err(_) => return,
            }
        }
    }
}

/// Sockets the server has sent a close frame on, each with the time after
/// which the client has had its chance to answer. The room owns one and
/// reaps it on every sweep, so an embedder that runs a room gets this too.
#[derive(Default)]
pub struct Reaper {
    lingering: Mutex<Vec<(Instant, Weak<TcpStream>)>>,
}

impl Reaper {
    fn lock(&self) -> MutexGuard<'_, Vec<(Instant, Weak<TcpStream>)>> {
        self.lingering
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn linger(&self, socket: &Arc<TcpStream>) {
        self.lock()
            .push((Instant::now() + CLOSE_GRACE, Arc::downgrade(socket)));
    }

    /// Shuts down every socket whose close handshake is past
    /// [`CLOSE_GRACE`] (RFC 6455 §7.1.1: the server may then drop the
    /// connection), which wakes its reader.
    pub fn reap(&self) {
        let now = Instant::now();
        self.lock().retain(|(deadline, socket)| {
            let Some(socket) = socket.upgrade() else {
                return false; // already gone
            };
            if now < *deadline {
                return true;
            }
            let _ = socket.shutdown(Shutdown::Both);
            false
        });
    }
}

/// Writes every frame, in order, the first from `sent_of_first` on, with as
/// few system calls as the kernel allows: one vectored write for the whole
/// batch in the common case.
fn write_all(mut stream: &TcpStream, frames: &[Frame], sent_of_first: usize) -> io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = frames.iter().map(|f| IoSlice::new(f)).collect();
    let mut slices = &mut slices[..];
    IoSlice::advance_slices(&mut slices, sent_of_first);
    while !slices.is_empty() {
        match stream.write_vectored(slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The `Write` half `tungstenite` writes its control replies to (pongs,
/// close echoes), so they take their turn with everything else.
///
/// tungstenite hands over its buffer of whole, encoded frames in one
/// `write` call, and this writer always takes all of it, so each call is
/// queued as it comes. (Waiting for `flush` would lose the close echo:
/// tungstenite writes it and then reports the connection closed without
/// flushing.)
pub struct OutboxWriter {
    outbox: Arc<Outbox>,
}

impl OutboxWriter {
    pub fn new(outbox: Arc<Outbox>) -> OutboxWriter {
        OutboxWriter { outbox }
    }
}

impl Write for OutboxWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // A client that floods pings faster than it reads pongs overflows
        // like any slow consumer; the reader sees the error and ends.
        self.outbox
            .push(buf.into())
            .map_err(|Full| io::Error::other("outbound queue full"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::Read;
    use std::net::TcpListener;

    use super::*;
    use crate::frame;

    /// An outbox on one end of a loopback connection, and the other end, as
    /// the client.
    pub(crate) fn pair(limit: QueueLimit) -> (Arc<Outbox>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let outbox = Outbox::new(limit, Arc::new(server), Arc::default());
        (outbox, client)
    }

    /// Reads one server frame (unmasked, §5.2): its opcode and payload, or
    /// `None` at the end of the stream.
    pub(crate) fn read_frame(client: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
        let mut head = [0u8; 2];
        client.read_exact(&mut head).ok()?;
        let len = match head[1] & 0x7f {
            126 => {
                let mut len = [0u8; 2];
                client.read_exact(&mut len).ok()?;
                u64::from(u16::from_be_bytes(len))
            }
            127 => {
                let mut len = [0u8; 8];
                client.read_exact(&mut len).ok()?;
                u64::from_be_bytes(len)
            }
            len => u64::from(len),
        };
        let mut payload = vec![0u8; usize::try_from(len).ok()?];
        client.read_exact(&mut payload).ok()?;
        Some((head[0] & 0x0f, payload))
    }

    fn limit(frames: usize, bytes: usize) -> QueueLimit {
        QueueLimit { frames, bytes }
    }

    /// A frame larger than the socket buffers hold: part is sent, the rest
    /// waits for a client that does not read.
    fn stalling_frame() -> Frame {
        frame::binary(&vec![0; 32 << 20])
    }

    /// Pushes a frame the client will not take, and waits until the writer
    /// thread is blocked writing it: what is pushed next stays queued.
    fn stall(outbox: &Arc<Outbox>) {
        outbox.push(stalling_frame()).unwrap();
        while !outbox.lock().frames.is_empty() {
            std::thread::yield_now();
        }
    }

    /// Pushes `frame` until the queue is full; how many pushes it took.
    fn pushes_until_full(outbox: &Arc<Outbox>, frame: &Frame) -> usize {
        (1..=1000)
            .find(|_| outbox.push(frame.clone()) == Err(Full))
            .unwrap_or(usize::MAX)
    }

    #[test]
    fn a_client_that_reads_gets_frames_at_once() {
        let (outbox, mut client) = pair(limit(2, 1 << 20));
        for text in ["1", "2", "3", "4"] {
            assert_eq!(outbox.push(frame::text(text)), Ok(()), "sent, not queued");
        }
        let got: Vec<_> = (0..4).map(|_| read_frame(&mut client).unwrap()).collect();
        assert_eq!(got[3], (0x1, b"4".to_vec()));
    }

    #[test]
    fn push_is_bounded_in_frames() {
        let (outbox, _client) = pair(limit(2, 1 << 30));
        stall(&outbox);
        assert_eq!(pushes_until_full(&outbox, &frame::text("x")), 3);
    }

    #[test]
    fn push_is_bounded_in_bytes() {
        let (outbox, _client) = pair(limit(1000, 64 * 1024));
        stall(&outbox);
        // 16 KiB plus a 4-byte header each: three fit, the fourth would not.
        let pushes = pushes_until_full(&outbox, &frame::binary(&[0; 16 * 1024]));
        assert_eq!(pushes, 4);
    }

    #[test]
    fn a_client_behind_holds_the_shared_frame_not_a_copy() {
        let (outbox, client) = pair(limit(8, 1 << 20));
        let big = stalling_frame();
        outbox.push(big.clone()).unwrap();
        assert!(
            Arc::strong_count(&big) >= 2,
            "the rest waits as the shared frame, not as a private copy"
        );
        drop(client);
    }

    #[test]
    fn a_close_goes_out_after_the_queue_then_the_socket_half_closes() {
        let (outbox, mut client) = pair(limit(8, 1 << 20));
        outbox.push(frame::text("old")).unwrap();
        assert!(outbox.close(&CloseReason::token_expired()));
        assert!(!outbox.close(&CloseReason::going_away()), "closing once");
        assert_eq!(
            outbox.push(frame::text("late")),
            Ok(()),
            "dropped, not an error"
        );
        assert!(outbox.is_closing());
        assert_eq!(outbox.close_code(), Some(4001));
        let opcodes: Vec<u8> = std::iter::from_fn(|| read_frame(&mut client))
            .map(|(opcode, _)| opcode)
            .collect();
        // old, the token_expired notice, the close frame; then end of stream.
        assert_eq!(opcodes, [0x1, 0x1, 0x8]);
    }
}
