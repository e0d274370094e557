//! The two halves of [`crate::CephBackend`]'s `write_stream`: [`feed`] cuts the incoming byte
//! stream into chunks on the async side, [`write_chunks`] writes them on a blocking thread with a
//! bounded number of librbd aio writes in flight, skipping all-zero chunks where that reads back
//! the same. It owns no image lifecycle: the caller opens and closes the image.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tokio::sync::mpsc;

use crate::image::{Image, PendingWrite};
use rbd::pipeline::is_zero;
use rbd::{ByteStream, CancellationToken, ProgressFn, RbdError, Result, WriteOptions};

/// Cuts the input stream into `chunk_size` pieces and feeds them to the writer thread.
pub(crate) async fn feed(
    mut data: ByteStream,
    chunk_size: usize,
    tx: mpsc::Sender<Result<Bytes>>,
    cancel: CancellationToken,
) {
    let mut buf = BytesMut::new();
    loop {
        let next = tokio::select! {
            _ = cancel.cancelled() => return,
            next = data.next() => next,
        };
        match next {
            Some(Ok(bytes)) => {
                buf.extend_from_slice(&bytes);
                while buf.len() >= chunk_size {
                    let chunk = buf.split_to(chunk_size).freeze();
                    if tx.send(Ok(chunk)).await.is_err() {
                        return;
                    }
                }
            }
            Some(Err(e)) => {
                let _ = tx
                    .send(Err(RbdError::Other(format!("reading input stream: {e}"))))
                    .await;
                return;
            }
            None => {
                if !buf.is_empty() {
                    let _ = tx.send(Ok(buf.split().freeze())).await;
                }
                return;
            }
        }
    }
}

/// The writer side of `write_stream`: `depth` aio writes in flight, FIFO completion (so `done`,
/// the end of the oldest completed write, is the watermark progress reports).
pub(crate) fn write_chunks(
    image: &Image,
    mut rx: mpsc::Receiver<Result<Bytes>>,
    opts: &WriteOptions,
    progress: &ProgressFn,
    cancel: &CancellationToken,
) -> Result<u64> {
    if let Some(p) = &opts.passphrase {
        image.encryption_load_luks2(p)?;
    }
    // Through LUKS, unwritten blocks do not read back as zeroes: never skip there.
    let skip_zeroes = opts.skip_zeroes && opts.passphrase.is_none();
    let limit = image.size()?;
    let depth = opts.queue_depth.max(1);
    let mut in_flight: VecDeque<PendingWrite> = VecDeque::with_capacity(depth);
    let mut offset: u64 = opts.start;
    let mut done: u64 = opts.start;
    let finish = |w: PendingWrite, done: &mut u64| -> Result<()> {
        let end = w.offset + w.len as u64;
        w.finish(image.name())?;
        *done = (*done).max(end);
        progress(*done, opts.total_hint);
        Ok(())
    };
    loop {
        if cancel.is_cancelled() {
            // Dropping the pending writes waits for them (their buffers must outlive them).
            drop(in_flight);
            return Err(RbdError::Cancelled);
        }
        let chunk = match rx.blocking_recv() {
            None if cancel.is_cancelled() => continue,
            None => break,
            Some(Err(e)) => return Err(e),
            Some(Ok(chunk)) => chunk,
        };
        let len = chunk.len() as u64;
        if offset + len > limit {
            return Err(RbdError::InvalidArgument(format!(
                "write of {len} bytes at {offset} goes beyond the size {limit} of {}",
                image.name()
            )));
        }
        if skip_zeroes && offset >= opts.dirty_until && is_zero(&chunk) {
            offset += len;
            if in_flight.is_empty() {
                done = offset;
                progress(done, opts.total_hint);
            }
            continue;
        }
        if in_flight.len() >= depth {
            let oldest = in_flight
                .pop_front()
                .ok_or_else(|| RbdError::Other("empty queue".into()))?;
            finish(oldest, &mut done)?;
        }
        in_flight.push_back(image.aio_write(offset, chunk)?);
        offset += len;
    }
    while let Some(w) = in_flight.pop_front() {
        finish(w, &mut done)?;
    }
    image.flush()?;
    if done != offset {
        progress(offset, opts.total_hint);
    }
    Ok(offset)
}
