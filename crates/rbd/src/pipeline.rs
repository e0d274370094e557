//! The write pipeline shared by the backends' [`BlockBackend::write_stream`](crate::BlockBackend::write_stream):
//! re-chunking of an arbitrary byte stream into fixed-size write requests, zero-chunk skipping,
//! `queue_depth` requests in flight, byte progress and cancellation.
//!
//! Owns no backend state: the backend passes a closure that performs one write request.

use std::collections::BTreeSet;
use std::future::Future;

use bytes::{Bytes, BytesMut};
use futures::stream::{FuturesUnordered, StreamExt};

use crate::{ByteStream, CancellationToken, ProgressFn, RbdError, Result, WriteOptions};

/// Whether every byte of `buf` is zero. Compares against a static zero block (memcmp), which stays
/// fast even in unoptimised test builds.
pub fn is_zero(buf: &[u8]) -> bool {
    static ZEROES: [u8; 64 * 1024] = [0; 64 * 1024];
    buf.chunks(ZEROES.len())
        .all(|piece| piece == &ZEROES[..piece.len()])
}

/// Pulls fixed-size chunks out of a byte stream. Cancel-safe: a dropped [`Rechunker::next_chunk`]
/// future loses no data (partial chunks stay in the buffer).
struct Rechunker {
    stream: ByteStream,
    buf: BytesMut,
    chunk_size: usize,
    done: bool,
}

impl Rechunker {
    async fn next_chunk(&mut self) -> Result<Option<Bytes>> {
        loop {
            if self.buf.len() >= self.chunk_size {
                return Ok(Some(self.buf.split_to(self.chunk_size).freeze()));
            }
            if self.done {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Ok(Some(self.buf.split().freeze()));
            }
            match self.stream.next().await {
                Some(Ok(bytes)) => self.buf.extend_from_slice(&bytes),
                Some(Err(e)) => return Err(RbdError::Other(format!("reading input stream: {e}"))),
                None => self.done = true,
            }
        }
    }
}

/// Runs a pipelined write of `data` from offset `opts.start`.
///
/// * `limit`: writable bytes (image size, minus an encryption header where one applies); a request
///   reaching past it fails the whole call with `InvalidArgument` (earlier requests stay written).
/// * `write(offset, bytes)`: performs one request; up to `opts.queue_depth` of them run concurrently.
/// * progress: the watermark below which every request has completed (requests complete out of
///   order; the lowest one still running holds it back), from `opts.start` on.
///
/// Returns the offset behind the last byte consumed from the stream.
pub async fn pipelined_write<F, Fut>(
    data: ByteStream,
    opts: &WriteOptions,
    limit: u64,
    progress: &ProgressFn,
    cancel: &CancellationToken,
    write: F,
) -> Result<u64>
where
    F: Fn(u64, Bytes) -> Fut,
    Fut: Future<Output = Result<u64>>,
{
    if opts.chunk_size == 0 {
        return Err(RbdError::InvalidArgument(
            "chunk_size must be positive".into(),
        ));
    }
    let depth = opts.queue_depth.max(1);
    let mut input = Rechunker {
        stream: data,
        buf: BytesMut::new(),
        chunk_size: opts.chunk_size,
        done: false,
    };
    let mut in_flight = FuturesUnordered::new();
    // Start offsets of the requests still running: the lowest holds the watermark back.
    let mut running = BTreeSet::new();
    let mut offset: u64 = opts.start;
    let mut reported: u64 = opts.start;
    let mut input_done = false;
    let report = |running: &BTreeSet<u64>, offset: u64, reported: &mut u64| {
        let mark = running.first().copied().unwrap_or(offset);
        if mark > *reported {
            *reported = mark;
            progress(mark, opts.total_hint);
        }
    };
    let submit = |at: u64, chunk: Bytes| {
        let fut = write(at, chunk);
        async move { fut.await.map(|_| at) }
    };
    loop {
        if cancel.is_cancelled() {
            return Err(RbdError::Cancelled);
        }
        if !input_done && in_flight.len() < depth {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return Err(RbdError::Cancelled),
                Some(res) = in_flight.next(), if !in_flight.is_empty() => {
                    running.remove(&res?);
                    report(&running, offset, &mut reported);
                }
                chunk = input.next_chunk() => match chunk? {
                    None => input_done = true,
                    Some(chunk) => {
                        let len = chunk.len() as u64;
                        let end = offset.checked_add(len).ok_or_else(|| {
                            RbdError::InvalidArgument("stream length overflows u64".into())
                        })?;
                        if end > limit {
                            return Err(RbdError::InvalidArgument(format!(
                                "data reaches byte {end}, beyond the writable size {limit}"
                            )));
                        }
                        let skip = opts.skip_zeroes && offset >= opts.dirty_until && is_zero(&chunk);
                        if !skip {
                            running.insert(offset);
                            in_flight.push(submit(offset, chunk));
                        }
                        offset = end;
                        report(&running, offset, &mut reported);
                    }
                },
            }
        } else if !in_flight.is_empty() {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return Err(RbdError::Cancelled),
                Some(res) = in_flight.next() => {
                    running.remove(&res?);
                    report(&running, offset, &mut reported);
                }
            }
        } else {
            return Ok(offset);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::is_zero;

    #[test]
    fn zero_detection_handles_unaligned_edges_and_blocks_larger_than_its_zero_block() {
        let mut buf = vec![0u8; 200 * 1024 + 3];
        assert!(is_zero(&buf));
        assert!(is_zero(&buf[1..4098]));
        buf[200 * 1024 + 2] = 1;
        assert!(!is_zero(&buf));
        assert!(is_zero(&buf[..200 * 1024 + 2]));
        buf[0] = 1;
        assert!(!is_zero(&buf[..3]));
        assert!(is_zero(&[]));
    }
}
