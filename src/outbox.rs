//! One client's outbound queue, and the one thread that writes it to the
//! socket.
//!
//! Every byte the server sends on a WebSocket passes through here: broadcast
//! frames, the client's own notices, and `tungstenite`'s automatic pongs and
//! close replies (via [`OutboxWriter`]). One writer per socket means frames
//! never interleave, and a socket write that blocks (a client that stopped
//! reading) blocks only this client's writer, never the sender or the room.
//!
//! The queue is bounded. [`Outbox::push`] never waits: when the queue is
//! full it reports [`Full`], and the room disconnects the client as a slow
//! consumer.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::frame::Frame;
use crate::sys;

/// How long one socket write may block before the client is given up on.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// After the server sends a close frame, how long the reader waits for the
/// client's close reply before dropping the connection (RFC 6455 §7.1.1).
pub const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Frames written with one vectored write, at most.
const MAX_BATCH: usize = 64;

/// The queue was full: the client is not keeping up.
#[derive(Debug, PartialEq, Eq)]
pub struct Full;

pub struct Outbox {
    queue: Mutex<Queue>,
    wake: Condvar,
    limit: usize,
    /// The client's socket, for the direct path in [`Outbox::push`].
    socket: Option<Arc<TcpStream>>,
}

struct Queue {
    frames: VecDeque<Frame>,
    state: State,
    /// The writer is asleep in `next_batch`. Waking a thread is a system
    /// call; while the writer is busy writing it will find new frames on
    /// its own, so only a sleeping writer is woken.
    writer_asleep: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum State {
    /// Accepting frames.
    Open,
    /// A close frame is queued last: write what is queued, then half-close.
    Closing,
    /// The reader is done: write what is queued, then stop.
    Finished,
    /// The socket failed: drop everything.
    Dead,
}

impl Outbox {
    /// An outbox for `socket`, holding at most `limit` frames.
    pub fn for_socket(limit: usize, socket: Arc<TcpStream>) -> Arc<Outbox> {
        Outbox::build(limit, Some(socket))
    }

    /// An outbox with no socket behind it: frames only queue (for tests).
    pub fn new(limit: usize) -> Arc<Outbox> {
        Outbox::build(limit, None)
    }

    fn build(limit: usize, socket: Option<Arc<TcpStream>>) -> Arc<Outbox> {
        Arc::new(Outbox {
            queue: Mutex::new(Queue {
                frames: VecDeque::new(),
                state: State::Open,
                writer_asleep: false,
            }),
            wake: Condvar::new(),
            limit: limit.max(1),
            socket,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends or queues a frame, never waiting. After a close it is dropped
    /// (nothing may follow a close frame, §5.5.1).
    ///
    /// The common case, an idle client, costs one system call and wakes no
    /// thread: with nothing queued and the writer asleep, the frame goes
    /// straight into the socket's buffer with a non-blocking send. Only
    /// what does not fit is queued for the writer, which then batches
    /// everything that piles up behind it into one vectored write.
    pub fn push(&self, frame: Frame) -> Result<(), Full> {
        let mut queue = self.lock();
        if queue.state != State::Open {
            return Ok(());
        }
        let mut frame = frame;
        if queue.frames.is_empty() && queue.writer_asleep {
            // The writer cannot wake while we hold the lock, so this write
            // cannot interleave with one of its own.
            if let Some(socket) = &self.socket {
                match sys::send_nonblocking(socket, &frame) {
                    Ok(sent) if sent == frame.len() => return Ok(()),
                    Ok(sent) => frame = frame[sent..].into(),
                    // A full buffer (or a failed socket, which the writer
                    // will find out for itself): hand the frame over.
                    Err(_) => {}
                }
            }
        }
        if queue.frames.len() >= self.limit {
            return Err(Full);
        }
        queue.frames.push_back(frame);
        self.wake_writer(queue);
        Ok(())
    }

    /// Queues `last` frames (a notice, then the close frame) and stops
    /// accepting more. With `discard_queued`, frames not yet written are
    /// dropped first: a slow consumer would never read them anyway, and the
    /// close frame should not wait behind them. Returns false if the
    /// connection was already closing.
    pub fn close(&self, last: &[Frame], discard_queued: bool) -> bool {
        let mut queue = self.lock();
        if queue.state != State::Open {
            return false;
        }
        if discard_queued {
            queue.frames.clear();
        }
        queue.frames.extend(last.iter().cloned());
        queue.state = State::Closing;
        self.wake_writer(queue);
        true
    }

    /// The reader has finished: the writer sends what is queued and exits.
    pub fn finish(&self) {
        let mut queue = self.lock();
        if queue.state == State::Open {
            queue.state = State::Finished;
        }
        self.wake_writer(queue);
    }

    fn wake_writer(&self, queue: MutexGuard<'_, Queue>) {
        let asleep = queue.writer_asleep;
        drop(queue);
        if asleep {
            self.wake.notify_one();
        }
    }

    /// True once a close frame is queued or the socket has failed.
    pub fn is_closing(&self) -> bool {
        matches!(self.lock().state, State::Closing | State::Dead)
    }

    /// Waits for frames and moves up to [`MAX_BATCH`] of them into `batch`.
    /// Returns the state seen: anything but `Open` with an empty queue
    /// means "write this batch, then stop".
    pub(crate) fn next_batch(&self, batch: &mut Vec<Frame>) -> (State, bool) {
        let mut queue = self.lock();
        while queue.frames.is_empty() && queue.state == State::Open {
            queue.writer_asleep = true;
            queue = self
                .wake
                .wait(queue)
                .unwrap_or_else(PoisonError::into_inner);
            queue.writer_asleep = false;
        }
        let n = queue.frames.len().min(MAX_BATCH);
        batch.extend(queue.frames.drain(..n));
        (queue.state, queue.frames.is_empty())
    }

    fn mark_dead(&self) {
        let mut queue = self.lock();
        queue.state = State::Dead;
        queue.frames.clear();
    }
}

/// The writer thread's body: drain the queue to the socket until the
/// connection ends.
pub fn write_loop(outbox: &Outbox, stream: &TcpStream) {
    // A write that cannot finish in this time means the client has stopped
    // reading; the error ends this loop.
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        let (state, drained) = outbox.next_batch(&mut batch);
        if write_all(stream, &batch).is_err() {
            outbox.mark_dead();
            // Wake the reader, which is blocked on this same socket.
            let _ = stream.shutdown(Shutdown::Both);
            return;
        }
        batch.clear();
        if drained && state != State::Open {
            end(stream, state);
            return;
        }
    }
}

/// After the last frame: once we sent a close frame, half-close our side
/// and give the client [`CLOSE_GRACE`] to answer before the reader gives up
/// (the server closes the TCP connection first, §7.1.1).
fn end(stream: &TcpStream, state: State) {
    if state == State::Closing {
        let _ = stream.set_read_timeout(Some(CLOSE_GRACE));
        let _ = stream.shutdown(Shutdown::Write);
    } else {
        let _ = stream.shutdown(Shutdown::Both);
    }
}

/// Writes every frame, in order, with as few system calls as the kernel
/// allows: one vectored write for the whole batch in the common case.
fn write_all(mut stream: &TcpStream, frames: &[Frame]) -> io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = frames.iter().map(|f| IoSlice::new(f)).collect();
    let mut slices = &mut slices[..];
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
mod tests {
    use super::*;

    fn frame(b: &[u8]) -> Frame {
        b.to_vec().into()
    }

    #[test]
    fn push_is_bounded() {
        let outbox = Outbox::new(2);
        assert_eq!(outbox.push(frame(b"1")), Ok(()));
        assert_eq!(outbox.push(frame(b"2")), Ok(()));
        assert_eq!(outbox.push(frame(b"3")), Err(Full));
    }

    #[test]
    fn nothing_follows_a_close() {
        let outbox = Outbox::new(8);
        outbox.push(frame(b"old")).unwrap();
        assert!(outbox.close(&[frame(b"bye")], true));
        assert!(!outbox.close(&[frame(b"again")], false));
        assert_eq!(outbox.push(frame(b"late")), Ok(()));
        let mut batch = Vec::new();
        let (state, drained) = outbox.next_batch(&mut batch);
        assert_eq!(state, State::Closing);
        assert!(drained);
        assert_eq!(batch, vec![frame(b"bye")]);
    }
}
