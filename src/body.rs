//! Bodies: the one body type the bridge sends and forwards, and the guard that bounds a body's
//! size and idle time.
//!
//! Promise: no body larger than the limit is passed on (the stream fails at the first byte past
//! it, so the peer sees an aborted message, never a truncated "complete" one), and a body that
//! stalls longer than the idle timeout fails the same way; how a guarded body ended stays
//! readable after the body itself moved into hyper ([`BodyState`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use tokio::time::{Instant, Sleep};

/// The body type of every response the bridge sends and every request it forwards.
pub type BridgeBody = BoxBody<Bytes, BodyError>;

/// A boxed error from a body or a connection.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A body from bytes already in memory.
pub fn full(bytes: impl Into<Bytes>) -> BridgeBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// An empty body.
pub fn empty() -> BridgeBody {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed()
}

/// Why a guarded body stopped early.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("body exceeds the limit of {0} bytes")]
    TooLarge(u64),
    #[error("body stalled for longer than the idle timeout")]
    IdleTimeout,
    #[error("body stream failed: {0}")]
    Stream(#[source] BoxError),
}

/// How a guarded body ended, observable after the body itself moved into hyper.
#[derive(Debug, Default)]
pub struct BodyState {
    failure: AtomicU8,
    bytes: AtomicU64,
}

impl BodyState {
    const OK: u8 = 0;
    const TOO_LARGE: u8 = 1;
    const IDLE: u8 = 2;
    const STREAM: u8 = 3;

    pub fn too_large(&self) -> bool {
        self.failure.load(Ordering::Acquire) == Self::TOO_LARGE
    }
    pub fn idle_timed_out(&self) -> bool {
        self.failure.load(Ordering::Acquire) == Self::IDLE
    }
    pub fn failed(&self) -> bool {
        self.failure.load(Ordering::Acquire) != Self::OK
    }
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
    fn fail(&self, why: u8) {
        let _ = self
            .failure
            .compare_exchange(Self::OK, why, Ordering::AcqRel, Ordering::Acquire);
    }
}

pin_project_lite::pin_project! {
    /// A body with a size limit and an idle timeout between frames.
    pub struct GuardedBody<B> {
        #[pin]
        inner: B,
        max: u64,
        seen: u64,
        idle: Duration,
        // Armed only when the body actually waits: most small bodies arrive with their head and
        // never touch the timer wheel.
        timer: Option<Pin<Box<Sleep>>>,
        progressed: bool,
        state: Arc<BodyState>,
        done: bool,
    }
}

impl<B> GuardedBody<B> {
    pub fn new(inner: B, max: u64, idle: Duration, state: Arc<BodyState>) -> Self {
        GuardedBody {
            inner,
            max,
            seen: 0,
            idle,
            timer: None,
            progressed: false,
            state,
            done: false,
        }
    }
}

impl<B> Body for GuardedBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let mut this = self.project();
        if *this.done {
            return Poll::Ready(None);
        }
        match this.inner.as_mut().poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    *this.seen += data.len() as u64;
                    this.state
                        .bytes
                        .fetch_add(data.len() as u64, Ordering::Relaxed);
                    if *this.seen > *this.max {
                        *this.done = true;
                        this.state.fail(BodyState::TOO_LARGE);
                        return Poll::Ready(Some(Err(BodyError::TooLarge(*this.max))));
                    }
                }
                *this.progressed = true;
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                *this.done = true;
                this.state.fail(BodyState::STREAM);
                Poll::Ready(Some(Err(BodyError::Stream(e.into()))))
            }
            Poll::Ready(None) => {
                *this.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => {
                let idle = *this.idle;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                if std::mem::take(this.progressed) {
                    timer.as_mut().reset(Instant::now() + idle);
                }
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        *this.done = true;
                        this.state.fail(BodyState::IDLE);
                        Poll::Ready(Some(Err(BodyError::IdleTimeout)))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::StreamBody;

    #[tokio::test]
    async fn body_past_limit_fails_and_is_flagged() {
        let state = Arc::new(BodyState::default());
        let body = GuardedBody::new(
            Full::new(Bytes::from(vec![0u8; 11])),
            10,
            Duration::from_secs(5),
            state.clone(),
        );
        assert!(body.collect().await.is_err());
        assert!(state.too_large());
    }

    #[tokio::test]
    async fn body_within_limit_passes_unchanged() {
        let state = Arc::new(BodyState::default());
        let body = GuardedBody::new(
            Full::new(Bytes::from_static(b"0123456789")),
            10,
            Duration::from_secs(5),
            state.clone(),
        );
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"0123456789");
        assert!(!state.failed());
        assert_eq!(state.bytes(), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn stalled_body_times_out() {
        let state = Arc::new(BodyState::default());
        let stream = futures_stall();
        let body = GuardedBody::new(
            StreamBody::new(stream),
            10,
            Duration::from_millis(100),
            state.clone(),
        );
        assert!(body.collect().await.is_err());
        assert!(state.idle_timed_out());
    }

    fn futures_stall(
    ) -> impl futures_core::Stream<Item = Result<Frame<Bytes>, std::convert::Infallible>> {
        struct Never;
        impl futures_core::Stream for Never {
            type Item = Result<Frame<Bytes>, std::convert::Infallible>;
            fn poll_next(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
                Poll::Pending
            }
        }
        Never
    }
}
