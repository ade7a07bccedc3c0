//! Whether an HTTP/2 request without `Content-Length` really carries a body.
//!
//! Promise: HTTP/2 has no `Transfer-Encoding`; a stream whose HEADERS frame did not end it may
//! still carry no bytes (a client may close it with an empty DATA frame). The relay reads up to
//! the first non-empty DATA frame (or the end of the stream) so that the policy sees a body only
//! when there is one, and hands that frame on unchanged: no byte is lost, added or reordered.
//! Defended: a peer that opens a stream and sends nothing holds the relay only for the body idle
//! timeout; only streams that presented the bridge token are peeked at.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;

/// A request body with its first frame already read.
pub struct Peeked {
    first: Option<Frame<Bytes>>,
    rest: Incoming,
}

impl Peeked {
    /// A body nothing was read from.
    pub fn untouched(body: Incoming) -> Self {
        Peeked {
            first: None,
            rest: body,
        }
    }
}

/// What the peek found.
pub enum PeekOutcome {
    /// The stream ended without a byte of body.
    Empty(Peeked),
    /// The stream carries a body; its first frame is kept in front.
    Body(Peeked),
    /// No frame within the idle timeout.
    Stalled,
    /// The stream failed (reset by the peer).
    Failed,
}

/// Reads frames until the first one carrying data (or trailers) or the end of the stream.
pub async fn peek(mut body: Incoming, idle: Duration) -> PeekOutcome {
    loop {
        match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => return PeekOutcome::Stalled,
            Ok(None) => return PeekOutcome::Empty(Peeked::untouched(body)),
            Ok(Some(Err(_))) => return PeekOutcome::Failed,
            Ok(Some(Ok(frame))) => {
                if frame.data_ref().is_some_and(Bytes::is_empty) {
                    continue;
                }
                return PeekOutcome::Body(Peeked {
                    first: Some(frame),
                    rest: body,
                });
            }
        }
    }
}

impl Body for Peeked {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if let Some(frame) = self.first.take() {
            return Poll::Ready(Some(Ok(frame)));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let first = self
            .first
            .as_ref()
            .and_then(Frame::data_ref)
            .map_or(0, |d| d.len() as u64);
        let rest = self.rest.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + first);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + first);
        }
        hint
    }
}
