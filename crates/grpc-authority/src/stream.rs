//! The connection wrapper: [`NormalizeAuthority`] is the accepted stream as the server sees it.
//!
//! Owns: moving bytes between the socket, the server's read buffer and [`crate::frame::Rewriter`].
//! Must not: parse anything itself, or touch what the server writes (writes go straight to the
//! socket).
//!
//! Reads go straight into the server's buffer; the new bytes are then walked in place. Bytes that
//! pass through (the preface and every frame but HEADERS/CONTINUATION, DATA above all) stay where
//! the socket put them: no copy beyond the one a plain socket read makes. Only when a header block
//! is taken out of the middle of a read are the bytes after it moved up (or, once a rewritten block
//! is waiting, held back in a small stash until the block has been read).

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::frame::{Rewriter, Step};
use crate::{Config, Error};

/// An accepted HTTP/2 connection whose client→server header blocks carry only an `:authority`
/// the server accepts (see the crate docs). Server→client bytes pass through unchanged.
pub struct NormalizeAuthority<S> {
    inner: S,
    rewriter: Rewriter,
    /// Input read from `inner` that is not processed yet (only after a rewritten block).
    stash: Vec<u8>,
    stash_pos: usize,
    /// The error that closed the connection, repeated to every later read.
    failed: Option<String>,
}

impl<S> std::fmt::Debug for NormalizeAuthority<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NormalizeAuthority")
            .field("replaced", &self.rewriter.replaced())
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl<S> NormalizeAuthority<S> {
    /// Wraps a freshly accepted connection, with the default [`Config`].
    pub fn new(inner: S) -> NormalizeAuthority<S> {
        NormalizeAuthority::with_config(inner, &Config::default())
    }

    /// Wraps a freshly accepted connection.
    pub fn with_config(inner: S, config: &Config) -> NormalizeAuthority<S> {
        NormalizeAuthority {
            inner,
            rewriter: Rewriter::new(config),
            stash: Vec::new(),
            stash_pos: 0,
            failed: None,
        }
    }

    /// The wrapped connection.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// How many `:authority` values were replaced on this connection so far.
    pub fn replaced(&self) -> u64 {
        self.rewriter.replaced()
    }

    fn fail(&mut self, e: Error) -> io::Error {
        tracing::warn!(error = %e, "closing an HTTP/2 connection that cannot be rewritten");
        let message = e.to_string();
        self.failed = Some(message);
        io::Error::new(io::ErrorKind::InvalidData, e)
    }

    /// Copies pending rewritten bytes into `buf`; `true` if any were.
    fn drain_pending(&mut self, buf: &mut ReadBuf<'_>) -> bool {
        let pending = self.rewriter.pending();
        if pending.is_empty() {
            return false;
        }
        let n = pending.len().min(buf.remaining());
        buf.put_slice(&pending[..n]);
        self.rewriter.consume_pending(n);
        true
    }

    /// Feeds stashed input until `buf` has something, something is pending or the stash is empty.
    fn drain_stash(&mut self, buf: &mut ReadBuf<'_>) -> Result<bool, Error> {
        let before = buf.filled().len();
        while self.stash_pos < self.stash.len()
            && self.rewriter.pending().is_empty()
            && buf.remaining() > 0
        {
            // Offer no more than fits, so that whatever passes can be copied whole.
            let end = self.stash.len().min(self.stash_pos + buf.remaining());
            match self.rewriter.feed(&self.stash[self.stash_pos..end])? {
                Step::Pass(n) => {
                    buf.put_slice(&self.stash[self.stash_pos..self.stash_pos + n]);
                    self.stash_pos += n;
                }
                Step::Took(n) => self.stash_pos += n,
            }
        }
        if self.stash_pos >= self.stash.len() {
            self.stash.clear();
            self.stash_pos = 0;
        }
        Ok(buf.filled().len() > before)
    }

    /// Walks the bytes `inner` just put into `buf` at `start..`: passing bytes stay (moved up over
    /// taken ones), taken bytes are cut out, and once a rewritten block is pending the rest of the
    /// read waits in the stash.
    fn process_in_place(&mut self, buf: &mut ReadBuf<'_>, start: usize) -> Result<(), Error> {
        let end = buf.filled().len();
        let filled = buf.filled_mut();
        let (mut read, mut write) = (start, start);
        while read < end {
            if !self.rewriter.pending().is_empty() {
                self.stash.extend_from_slice(&filled[read..end]);
                break;
            }
            match self.rewriter.feed(&filled[read..end])? {
                Step::Pass(n) => {
                    if write != read {
                        filled.copy_within(read..read + n, write);
                    }
                    read += n;
                    write += n;
                }
                Step::Took(n) => read += n,
            }
        }
        buf.set_filled(write);
        Ok(())
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for NormalizeAuthority<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(message) = &this.failed {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                message.clone(),
            )));
        }
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if this.drain_pending(buf) {
                return Poll::Ready(Ok(()));
            }
            if this.stash_pos < this.stash.len() {
                match this.drain_stash(buf) {
                    Ok(true) => return Poll::Ready(Ok(())),
                    Ok(false) => continue,
                    Err(e) => return Poll::Ready(Err(this.fail(e))),
                }
            }
            let start = buf.filled().len();
            ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
            if buf.filled().len() == start {
                return Poll::Ready(Ok(())); // end of stream
            }
            if let Err(e) = this.process_in_place(buf, start) {
                return Poll::Ready(Err(this.fail(e)));
            }
            if buf.filled().len() > start {
                return Poll::Ready(Ok(()));
            }
            // Everything read was taken: serve what it produced, or read on.
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for NormalizeAuthority<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
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

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(feature = "tonic")]
impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected
    for NormalizeAuthority<S>
{
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}
