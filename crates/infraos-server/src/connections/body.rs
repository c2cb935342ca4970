//! Request and response bodies as the connection sees them.
//!
//! A handler that refuses a request before reading its body (413, 401) drops the body. Over
//! HTTP/2 that resets the stream with CANCEL at once, before the answer goes out, so the client
//! gets a reset instead of the 413. So the request body is shared: the handler reads it through
//! [`RequestBody`], and the answer ([`Answer`]) keeps what is left of it until the response has
//! been sent; the stream is then closed with NO_ERROR after a complete response, which clients
//! read (RFC 9113 §8.1); what the client is still sending is first read and dropped, within
//! bounds ([`Held::settle`]). The answer also carries the request's [`RequestGuard`], so the
//! connection counts as busy until the response body (a watch, a log stream) ends.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use parking_lot::Mutex;

use super::RequestGuard;

type Shared = Arc<Mutex<Option<Incoming>>>;

/// The request body as handlers read it.
pub struct RequestBody(Shared);

/// What the answer keeps of a request until it has been sent (only to drop it then).
pub struct Held {
    body: Shared,
}

/// Most bytes of a request body left unread by its handler that are read and dropped before
/// the answer goes out, and for how long at most: the client, still sending, then finishes
/// and reads the answer. Many HTTP/2 clients (curl before 8.x among them) treat the stream
/// reset that otherwise follows an early answer as a failure, although RFC 9113 allows it.
/// Beyond either bound the stream is reset after the answer (HTTP/1.1: the connection is
/// closed after it, lingering).
const DRAIN_BYTES: usize = 64 << 20;
const DRAIN_TIME: Duration = Duration::from_secs(2);

impl Held {
    /// Reads and drops what the handler left of the request body, within the bounds above,
    /// unless the client waits for `100 Continue` before sending it (`expects_continue`):
    /// reading would ask it for the whole body only to drop it.
    pub async fn settle(&self, expects_continue: bool) {
        if expects_continue || Arc::strong_count(&self.body) > 1 {
            // The handler still holds the body (streaming it): not ours to drain.
            return;
        }
        let Some(mut body) = self.body.lock().take() else {
            return;
        };
        if body.is_end_stream() {
            return;
        }
        let deadline = tokio::time::Instant::now() + DRAIN_TIME;
        let mut read = 0usize;
        loop {
            match tokio::time::timeout_at(deadline, body.frame()).await {
                Ok(Some(Ok(frame))) => {
                    read += frame.data_ref().map_or(0, Bytes::len);
                    if read > DRAIN_BYTES {
                        break;
                    }
                }
                // All read (nothing left to reset), or the client gave up.
                Ok(None | Some(Err(_))) => return,
                Err(_) => break,
            }
        }
        *self.body.lock() = Some(body);
    }
}

/// Splits a request body into the part handlers read and the part the answer keeps.
pub fn hold_request_body(body: Incoming) -> (RequestBody, Held) {
    let shared = Arc::new(Mutex::new(Some(body)));
    (RequestBody(Arc::clone(&shared)), Held { body: shared })
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let mut body = self.0.lock();
        match body.as_mut() {
            Some(b) => Pin::new(b).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.lock().as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.0
            .lock()
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

/// A response body that holds its request's leftovers and guard until it is done.
pub struct Answer<B> {
    inner: B,
    _request: Held,
    _guard: RequestGuard,
}

impl<B> Answer<B> {
    pub fn new(inner: B, request: Held, guard: RequestGuard) -> Self {
        Answer {
            inner,
            _request: request,
            _guard: guard,
        }
    }
}

impl<B: Body + Unpin> Body for Answer<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
