//! An I/O wrapper that closes connections which stop sending: a read left
//! pending longer than its deadline fails with `TimedOut`, which ends the
//! connection. Until the first 24 bytes (the HTTP/2 preface length) arrive
//! the deadline is the header timeout, so silent or half-open connections
//! cannot pin a slot; after that it is the idle timeout (keep-alive, stalled
//! bodies, silent WebSocket peers).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Bytes after which a connection is past its opening.
const OPENING: u64 = 24;

/// See the module docs.
#[derive(Debug)]
pub struct IdleTimeout<T> {
    inner: T,
    opening: Duration,
    idle: Duration,
    read: u64,
    timer: Option<Pin<Box<Sleep>>>,
}

impl<T> IdleTimeout<T> {
    /// Wraps `inner`.
    pub fn new(inner: T, opening: Duration, idle: Duration) -> Self {
        Self {
            inner,
            opening,
            idle,
            read: 0,
            timer: None,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleTimeout<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                this.read += (buf.filled().len() - before) as u64;
                this.timer = None;
                Poll::Ready(r)
            }
            Poll::Pending => {
                let limit = if this.read < OPENING {
                    this.opening
                } else {
                    this.idle
                };
                let timer = this.timer.get_or_insert_with(|| {
                    Box::pin(tokio::time::sleep_until(Instant::now() + limit))
                });
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        this.timer = None;
                        Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "client idle")))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleTimeout<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn silent_peer_times_out_and_active_one_does_not() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut io = IdleTimeout::new(a, Duration::from_secs(1), Duration::from_secs(5));
        let mut buf = [0u8; 64];
        let err = io.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        // Past the opening, the idle limit applies.
        let (a, mut b2) = tokio::io::duplex(64);
        let mut io = IdleTimeout::new(a, Duration::from_secs(1), Duration::from_secs(5));
        b2.write_all(&[1; 30]).await.unwrap();
        assert_eq!(io.read(&mut buf).await.unwrap(), 30);
        let started = Instant::now();
        let err = io.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_secs(5));
        drop(b.write_all(b"x").await);
    }
}
