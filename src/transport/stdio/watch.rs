//! The relay's watch over the gateway command's stdio, independent of the HTTP/2 library: the
//! session ends when the channel stalls or floods, whatever state the library is in.
//!
//! Promise: [`Watched`] records, on the raw bytes, when something was last read from the command
//! and since when a write has been waiting for the command to read; it prices every frame read
//! ([`FrameScanner`]) against [`CONTROL_BYTES_PER_SECOND`]. [`ChannelWatch::fault`] resolves as
//! soon as nothing was read, or a write stayed pending, for the stall timeout, or the budget was
//! overspent. Attacks defended: a frozen or hostile sandbox (`docker pause`, a stalled `kubectl
//! exec`, a gateway that stops reading so that the HTTP/2 library's own GOAWAY can never be
//! written) holding the relay and its in-flight requests forever, and a flood of cheap control
//! frames holding a host core at 100 %.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::frames::FrameScanner;
use super::CONTROL_BYTES_PER_SECOND;

/// The window over which control bytes are counted against [`CONTROL_BYTES_PER_SECOND`].
const BUDGET_WINDOW: Duration = Duration::from_secs(1);

/// Why the relay ended a session on its own.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelFault {
    #[error("nothing was read from the gateway command for {}s", .0.as_secs_f32())]
    ReadStall(Duration),
    #[error("the gateway command has not read what the relay wrote for {}s", .0.as_secs_f32())]
    WriteStall(Duration),
    #[error(
        "hostile: the gateway command sent {spent} bytes of HTTP/2 control frames within one \
         second (budget {CONTROL_BYTES_PER_SECOND})"
    )]
    Flood { spent: u64 },
}

impl ChannelFault {
    /// A flood is an attack, not an accident of the channel.
    pub fn is_hostile(&self) -> bool {
        matches!(self, ChannelFault::Flood { .. })
    }
}

#[derive(Debug)]
struct State {
    last_read: Instant,
    write_pending_since: Option<Instant>,
    window_start: Instant,
    spent: u64,
    fault: Option<ChannelFault>,
}

/// What [`Watched`] records and the session loop waits on.
#[derive(Debug)]
pub struct ChannelWatch {
    stall_timeout: Duration,
    state: Mutex<State>,
    /// Woken when a fault is recorded by the stream itself (a flood).
    changed: Notify,
}

impl ChannelWatch {
    pub fn new(stall_timeout: Duration) -> Arc<ChannelWatch> {
        let now = Instant::now();
        Arc::new(ChannelWatch {
            stall_timeout,
            state: Mutex::new(State {
                last_read: now,
                write_pending_since: None,
                window_start: now,
                spent: 0,
                fault: None,
            }),
            changed: Notify::new(),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock aborts the process (panic = "abort"), so a poisoned
        // lock can only be seen in tests; its data is still consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The fault already recorded, if any.
    pub fn recorded(&self) -> Option<ChannelFault> {
        self.state().fault.clone()
    }

    /// Resolves with the first fault: a stall found by the clock, or a flood the stream reported.
    pub async fn fault(&self) -> ChannelFault {
        loop {
            let notified = self.changed.notified();
            let wake = {
                let mut state = self.state();
                if let Some(fault) = &state.fault {
                    return fault.clone();
                }
                let now = Instant::now();
                let read_deadline = state.last_read + self.stall_timeout;
                if now >= read_deadline {
                    let fault = ChannelFault::ReadStall(self.stall_timeout);
                    state.fault = Some(fault.clone());
                    return fault;
                }
                let write_deadline = state.write_pending_since.map(|t| t + self.stall_timeout);
                if write_deadline.is_some_and(|d| now >= d) {
                    let fault = ChannelFault::WriteStall(self.stall_timeout);
                    state.fault = Some(fault.clone());
                    return fault;
                }
                write_deadline.map_or(read_deadline, |d| d.min(read_deadline))
            };
            tokio::select! {
                () = tokio::time::sleep_until(wake) => {}
                () = notified => {}
            }
        }
    }

    /// Bytes arrived; `cost` is their control cost. Returns the fault if the budget is spent.
    fn record_read(&self, cost: u64) -> Option<ChannelFault> {
        let now = Instant::now();
        let mut state = self.state();
        state.last_read = now;
        if cost == 0 {
            return None;
        }
        if now.duration_since(state.window_start) >= BUDGET_WINDOW {
            state.window_start = now;
            state.spent = 0;
        }
        state.spent = state.spent.saturating_add(cost);
        if state.spent <= CONTROL_BYTES_PER_SECOND || state.fault.is_some() {
            return None;
        }
        let fault = ChannelFault::Flood { spent: state.spent };
        state.fault = Some(fault.clone());
        drop(state);
        self.changed.notify_one();
        Some(fault)
    }

    fn record_write<T>(&self, poll: &Poll<T>) {
        let mut state = self.state();
        match poll {
            Poll::Pending => {
                state.write_pending_since.get_or_insert_with(Instant::now);
            }
            Poll::Ready(_) => state.write_pending_since = None,
        }
    }
}

/// A stream to the gateway command whose reads and writes are recorded in a [`ChannelWatch`].
#[derive(Debug)]
pub struct Watched<S> {
    inner: S,
    scanner: FrameScanner,
    watch: Arc<ChannelWatch>,
}

impl<S> Watched<S> {
    /// `preface_len`: bytes of the HTTP/2 client preface the stream starts with (skipped by the
    /// frame scanner).
    pub fn new(inner: S, preface_len: usize, watch: Arc<ChannelWatch>) -> Watched<S> {
        Watched {
            inner,
            scanner: FrameScanner::new(preface_len),
            watch,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if let Some(fault) = self.watch.recorded().filter(ChannelFault::is_hostile) {
            // Read nothing more from a flooding command.
            return Poll::Ready(Err(std::io::Error::other(fault)));
        }
        let before = buf.filled().len();
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = poll {
            let new = &buf.filled()[before..];
            if !new.is_empty() {
                let cost = this.scanner.scan(new);
                if let Some(fault) = this.watch.record_read(cost) {
                    // The bytes that overspent the budget are not handed to the library.
                    buf.set_filled(before);
                    return Poll::Ready(Err(std::io::Error::other(fault)));
                }
            }
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch.record_write(&poll);
        poll
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch.record_write(&poll);
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch.record_write(&poll);
        poll
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const STALL: Duration = Duration::from_secs(20);

    fn priority_frames(n: usize) -> Vec<u8> {
        let one = [0, 0, 5, 0x2, 0, 0, 0, 0, 1, 0, 0, 0, 0, 16];
        one.repeat(n)
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_sends_nothing_is_a_read_stall_after_the_timeout() {
        let watch = ChannelWatch::new(STALL);
        let started = Instant::now();
        assert_eq!(watch.fault().await, ChannelFault::ReadStall(STALL));
        assert_eq!(started.elapsed(), STALL);
    }

    #[tokio::test(start_paused = true)]
    async fn reads_keep_the_session_alive() {
        let watch = ChannelWatch::new(STALL);
        let (mut peer, ours) = tokio::io::duplex(64);
        let mut watched = Watched::new(ours, 0, watch.clone());
        let fault = tokio::spawn({
            let watch = watch.clone();
            async move { watch.fault().await }
        });
        let started = Instant::now();
        for _ in 0..10 {
            tokio::time::sleep(STALL / 2).await;
            peer.write_all(&[0, 0, 0, 0, 0x4, 0, 0, 0, 0])
                .await
                .unwrap();
            let mut got = [0; 9];
            watched.read_exact(&mut got).await.unwrap();
        }
        assert!(!fault.is_finished());
        assert_eq!(fault.await.unwrap(), ChannelFault::ReadStall(STALL));
        assert_eq!(started.elapsed(), STALL / 2 * 10 + STALL);
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_pending_for_the_timeout_is_a_write_stall_even_while_reads_arrive() {
        let watch = ChannelWatch::new(STALL);
        let (mut peer, ours) = tokio::io::duplex(16);
        let (mut reader, mut writer) = tokio::io::split(Watched::new(ours, 0, watch.clone()));
        let started = Instant::now();
        // The peer keeps writing PINGs but never reads: the relay's write stays pending.
        let pinging = async {
            loop {
                peer.write_all(&[0, 0, 0, 0, 0x6, 0, 0, 0, 0])
                    .await
                    .unwrap();
                tokio::time::sleep(STALL / 4).await;
            }
        };
        let relay = async {
            let mut sink = [0; 64];
            tokio::join!(writer.write_all(&[0; 1024]), async {
                while reader.read(&mut sink).await.is_ok_and(|n| n > 0) {}
            })
        };
        let fault = tokio::select! {
            fault = watch.fault() => fault,
            _ = pinging => unreachable!("the peer never stops"),
            _ = relay => unreachable!("the write never completes"),
        };
        assert_eq!(fault, ChannelFault::WriteStall(STALL));
        let after = started.elapsed();
        assert!(after >= STALL && after < STALL * 2, "{after:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn control_frames_beyond_the_budget_end_the_session_as_hostile() {
        let watch = ChannelWatch::new(STALL);
        let frames = priority_frames(CONTROL_BYTES_PER_SECOND as usize / 14 + 1);
        let mut watched = Watched::new(&frames[..], 0, watch.clone());
        let mut sink = Vec::new();
        let err = watched.read_to_end(&mut sink).await.unwrap_err();
        assert!(err.to_string().starts_with("hostile"), "{err}");
        let fault = watch.fault().await;
        assert!(fault.is_hostile(), "{fault}");
        // Nothing more is read from it.
        assert!(watched.read(&mut [0; 8]).await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_is_per_second() {
        let watch = ChannelWatch::new(STALL);
        let per_second = priority_frames(CONTROL_BYTES_PER_SECOND as usize / 14 / 2);
        let mut scanner = FrameScanner::new(0);
        for _ in 0..20 {
            assert_eq!(watch.record_read(scanner.scan(&per_second)), None);
            tokio::time::sleep(BUDGET_WINDOW).await;
        }
        assert_eq!(watch.recorded(), None);
    }
}
