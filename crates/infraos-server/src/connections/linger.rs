//! Closing a socket the client is still writing to, without losing the answer.
//!
//! When the server answers early — 431 for a request head over the cap, 413 for a body it will
//! not read — the client is usually still sending. Closing a TCP socket with unread bytes in
//! its receive buffer makes the kernel send a reset, which discards the answer on the way: the
//! client sees "connection reset" instead of the 431. So the socket is closed as Apache's
//! lingering close does: shut down our side (FIN after the answer), read and discard what the
//! client still sends for a short while, then close. The connection's [`Slot`] is held until
//! then, so a lingering socket still counts against the caps.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use super::Slot;

/// How long a closed connection's leftovers are read at most.
const LINGER: Duration = Duration::from_secs(2);

/// A TCP stream that lingers when dropped (unless told not to), then frees its slot.
pub struct Lingering {
    stream: Option<TcpStream>,
    slot: Option<Slot>,
    linger: Arc<AtomicBool>,
}

impl Lingering {
    pub fn new(stream: TcpStream, slot: Slot) -> Lingering {
        Lingering {
            stream: Some(stream),
            slot: Some(slot),
            linger: Arc::new(AtomicBool::new(true)),
        }
    }

    /// A switch to close without lingering (an evicted connection, a failed handshake: no
    /// answer is on its way, and the slot is wanted at once).
    pub fn switch(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.linger)
    }

    fn stream(&mut self) -> std::io::Result<&mut TcpStream> {
        self.stream
            .as_mut()
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotConnected))
    }
}

impl Drop for Lingering {
    fn drop(&mut self) {
        let (Some(stream), Some(slot)) = (self.stream.take(), self.slot.take()) else {
            return;
        };
        if !self.linger.load(Ordering::Acquire) {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(drain(stream, slot));
        }
    }
}

/// Shuts our side down, then reads until the client closes or [`LINGER`] passes.
async fn drain(mut stream: TcpStream, slot: Slot) {
    let _ = stream.shutdown().await;
    let deadline = tokio::time::Instant::now() + LINGER;
    let mut buf = [0u8; 4096];
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
        if n == 0 {
            break;
        }
    }
    drop(stream);
    drop(slot);
}

impl AsyncRead for Lingering {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.stream() {
            Ok(s) => Pin::new(s).poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for Lingering {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.stream() {
            Ok(s) => Pin::new(s).poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.stream() {
            Ok(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.as_ref().is_some_and(|s| s.is_write_vectored())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.stream() {
            Ok(s) => Pin::new(s).poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.stream() {
            Ok(s) => Pin::new(s).poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}
