//! Whether an HTTP/2 request without `Content-Length` really carries a body, and how long it is
//! when it is short.
//!
//! Promise: HTTP/2 has no `Transfer-Encoding`; a stream whose HEADERS frame did not end it may
//! still carry no bytes (a client may close it with an empty DATA frame). The relay reads the
//! stream's first [`WHOLE_UP_TO`] bytes (or up to its end) so that the policy sees a body only
//! when there is one, and a body that ended within them gets its exact length (forwarded as
//! `Content-Length`, as Paperclip's host does, instead of chunked). The frames read are handed on
//! unchanged: no byte is lost, added or reordered.
//! Defended: a peer that opens a stream and sends nothing holds the relay only for the body idle
//! timeout; only streams that presented the bridge token are peeked at.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;

/// A body that ends within this many bytes is read whole before the policy runs, so it is
/// forwarded with its length; a longer one streams on, chunked, after these bytes.
pub const WHOLE_UP_TO: u64 = 64 * 1024;

/// A request body with its first frames already read.
pub struct Peeked {
    read: VecDeque<Frame<Bytes>>,
    rest: Incoming,
}

impl Peeked {
    /// A body nothing was read from.
    pub fn untouched(body: Incoming) -> Self {
        Peeked {
            read: VecDeque::new(),
            rest: body,
        }
    }
}

/// What the peek found.
pub enum PeekOutcome {
    /// The stream ended without a byte of body.
    Empty(Peeked),
    /// The stream ended after this many bytes (at most [`WHOLE_UP_TO`]), all read.
    Whole(Peeked, u64),
    /// The stream carries a longer body (or trailers); what was read is kept in front.
    Body(Peeked),
    /// No frame within the idle timeout.
    Stalled,
    /// The stream failed (reset by the peer).
    Failed,
}

/// Reads frames until the end of the stream, more than [`WHOLE_UP_TO`] bytes, or trailers.
pub async fn peek(mut body: Incoming, idle: Duration) -> PeekOutcome {
    let mut read = VecDeque::new();
    let mut len = 0u64;
    loop {
        match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => return PeekOutcome::Stalled,
            Ok(None) => {
                let peeked = Peeked { read, rest: body };
                return if len == 0 {
                    PeekOutcome::Empty(peeked)
                } else {
                    PeekOutcome::Whole(peeked, len)
                };
            }
            Ok(Some(Err(_))) => return PeekOutcome::Failed,
            Ok(Some(Ok(frame))) => {
                let Some(data) = frame.data_ref() else {
                    // Trailers: only chunked framing can carry them on.
                    read.push_back(frame);
                    return PeekOutcome::Body(Peeked { read, rest: body });
                };
                if data.is_empty() {
                    continue;
                }
                len += data.len() as u64;
                read.push_back(frame);
                if len > WHOLE_UP_TO {
                    return PeekOutcome::Body(Peeked { read, rest: body });
                }
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
        if let Some(frame) = self.read.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.read.is_empty() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let read: u64 = self
            .read
            .iter()
            .filter_map(Frame::data_ref)
            .map(|d| d.len() as u64)
            .sum();
        let rest = self.rest.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + read);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + read);
        }
        hint
    }
}
