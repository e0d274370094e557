//! Checkpoints of the OS-image populate: how an interrupted populate knows where to continue.
//!
//! Owns the gate between the layer stream and the block backend, and the prefix read-back. Must
//! not decide whether a populate resumes (that is `populate.rs`) or touch the image itself.
//!
//! A checkpoint (`status.checkpoint` of the OS snapshot, see [`store::Checkpoint`]) says two
//! things: every byte of the layer below `done` is in the image, and nothing at or beyond `reach`
//! has been written. The gate keeps both true:
//! * `done` is the backend's progress watermark (every write below it completed), read when a
//!   save starts, so it never claims more than is written;
//! * the gate hands the backend no byte at or beyond the saved `reach`: a write can only carry
//!   bytes the stream already yielded. When the stream needs more, it saves a new checkpoint
//!   (`reach` = watermark + `window`) and waits for it.
//!
//! Saves run one at a time, alongside the stream (never in a task of their own: a save must not
//! outlive the populate that made it). A save starts when the watermark has moved `every` bytes
//! since the last one, so a crash loses at most about `every` + `window` bytes of work. The
//! bytes between `done` and `reach` may hold data of the interrupted run: a resumed run writes
//! its zero chunks there instead of skipping them ([`rbd::WriteOptions::dirty_until`]).

use std::future::Future;
use std::io;
use std::pin::Pin;

use bytes::Bytes;
use futures::StreamExt;
use rbd::ByteStream;
use store::Checkpoint;

/// Saves one checkpoint; an error ends the stream.
pub(super) type SaveFn =
    Box<dyn Fn(Checkpoint) -> Pin<Box<dyn Future<Output = crate::Result<()>> + Send>> + Send>;

/// How often and how far ahead checkpoints are saved.
#[derive(Debug, Clone, Copy)]
pub(super) struct Spacing {
    /// Watermark progress (bytes) after which the next save starts.
    pub every: u64,
    /// How far past the watermark a saved `reach` lets the stream run.
    pub window: u64,
}

impl Spacing {
    /// Spacing for writes of `chunk` bytes with `queue_depth` in flight: a save per chunk of
    /// progress, and room for every write in flight, the one being cut and one more.
    pub fn for_writes(chunk: usize, queue_depth: usize) -> Spacing {
        let chunk = chunk.max(1) as u64;
        let every = chunk.max(1 << 20);
        Spacing {
            every,
            window: (queue_depth.max(1) as u64 + 2) * chunk + every,
        }
    }
}

struct Gate<M> {
    data: ByteStream,
    /// Layer offset of the next byte to yield.
    pos: u64,
    saved: Checkpoint,
    pending: Option<Pin<Box<dyn Future<Output = crate::Result<Checkpoint>> + Send>>>,
    /// An item read from `data` that waits for `reach`.
    held: Option<Bytes>,
    watermark: M,
    spacing: Spacing,
    save: SaveFn,
    ended: bool,
}

impl<M: Fn() -> u64 + Send + 'static> Gate<M> {
    fn start_save(&mut self, need: u64) {
        let done = (self.watermark)().max(self.saved.done).min(self.pos);
        let next = Checkpoint {
            done,
            reach: self
                .saved
                .reach
                .max(need)
                .max(done.saturating_add(self.spacing.window)),
        };
        let fut = (self.save)(next);
        self.pending = Some(Box::pin(async move { fut.await.map(|()| next) }));
    }

    fn saved(&mut self, res: crate::Result<Checkpoint>) -> io::Result<()> {
        self.pending = None;
        match res {
            Ok(cp) => {
                self.saved = cp;
                Ok(())
            }
            Err(e) => Err(io::Error::other(format!(
                "saving the populate checkpoint: {e}"
            ))),
        }
    }

    async fn next(&mut self) -> Option<io::Result<Bytes>> {
        if self.ended {
            return None;
        }
        loop {
            if let Some(item) = self.held.take() {
                let end = self.pos + item.len() as u64;
                if end <= self.saved.reach {
                    if self.pending.is_none()
                        && (self.watermark)() >= self.saved.done + self.spacing.every
                    {
                        self.start_save(end);
                    }
                    self.pos = end;
                    return Some(Ok(item));
                }
                if self.pending.is_none() {
                    self.start_save(end);
                }
                self.held = Some(item);
                let res = self.pending.as_mut()?.await;
                if let Err(e) = self.saved(res) {
                    self.ended = true;
                    return Some(Err(e));
                }
                continue;
            }
            let next = match self.pending.as_mut() {
                Some(save) => tokio::select! {
                    res = save => {
                        if let Err(e) = self.saved(res) {
                            self.ended = true;
                            return Some(Err(e));
                        }
                        continue;
                    }
                    next = self.data.next() => next,
                },
                None => self.data.next().await,
            };
            match next {
                Some(Ok(item)) => self.held = Some(item),
                other => {
                    self.ended = true;
                    return other;
                }
            }
        }
    }
}

/// The layer stream from `start` on, gated by checkpoints (module docs). `saved` is the
/// checkpoint already in the store (`done` = `start`, and the `reach` of an interrupted run, or
/// both 0 for a fresh image); `watermark` reads the backend's progress.
pub(super) fn gate(
    data: ByteStream,
    saved: Checkpoint,
    watermark: impl Fn() -> u64 + Send + 'static,
    spacing: Spacing,
    save: SaveFn,
) -> ByteStream {
    let gate = Gate {
        data,
        pos: saved.done,
        saved,
        pending: None,
        held: None,
        watermark,
        spacing,
        save,
        ended: false,
    };
    Box::pin(futures::stream::unfold(gate, |mut g| async move {
        g.next().await.map(|item| (item, g))
    }))
}

/// The first `len` bytes of `data` (the last chunk cut short); fewer if it ends before.
pub(super) fn first_bytes(data: ByteStream, len: u64) -> ByteStream {
    Box::pin(futures::stream::unfold(
        (data, len),
        |(mut data, left)| async move {
            if left == 0 {
                return None;
            }
            match data.next().await? {
                Ok(mut b) => {
                    if b.len() as u64 > left {
                        b.truncate(left as usize);
                    }
                    let left = left - b.len() as u64;
                    Some((Ok(b), (data, left)))
                }
                Err(e) => Some((Err(e), (data, 0))),
            }
        },
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use futures::TryStreamExt;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    fn chunks(n: usize, size: usize) -> ByteStream {
        let items: Vec<io::Result<Bytes>> = (0..n)
            .map(|i| Ok(Bytes::from(vec![i as u8; size])))
            .collect();
        Box::pin(futures::stream::iter(items))
    }

    type Log = Arc<Mutex<Vec<Checkpoint>>>;

    fn recorder() -> (Log, SaveFn) {
        let log: Log = Arc::default();
        let sink = log.clone();
        let save: SaveFn = Box::new(move |cp| {
            let sink = sink.clone();
            Box::pin(async move {
                sink.lock().unwrap().push(cp);
                Ok(())
            })
        });
        (log, save)
    }

    #[tokio::test]
    async fn no_byte_beyond_a_saved_reach_leaves_the_gate() {
        let (log, save) = recorder();
        let spacing = Spacing {
            every: 100,
            window: 250,
        };
        let mark = Arc::new(AtomicU64::new(0));
        let m = mark.clone();
        let mut s = gate(
            chunks(20, 50),
            Checkpoint { done: 0, reach: 0 },
            move || m.load(Ordering::SeqCst),
            spacing,
            save,
        );
        let mut pos = 0u64;
        while let Some(item) = s.next().await {
            pos += item.unwrap().len() as u64;
            let reach = log.lock().unwrap().last().map_or(0, |c| c.reach);
            assert!(pos <= reach, "{pos} yielded past the saved reach {reach}");
            // The writer lags one chunk behind.
            mark.store(pos.saturating_sub(50), Ordering::SeqCst);
        }
        assert_eq!(pos, 1000);
        let log = log.lock().unwrap().clone();
        assert!(log
            .windows(2)
            .all(|w| w[0].done <= w[1].done && w[0].reach <= w[1].reach));
        assert!(log.iter().all(|c| c.done <= c.reach));
    }

    #[tokio::test]
    async fn a_checkpoint_never_claims_more_than_the_watermark() {
        let (log, save) = recorder();
        let mark = Arc::new(AtomicU64::new(0));
        let m = mark.clone();
        let mut s = gate(
            chunks(10, 100),
            Checkpoint { done: 0, reach: 0 },
            move || m.load(Ordering::SeqCst),
            Spacing {
                every: 100,
                window: 300,
            },
            save,
        );
        let mut pos = 0;
        while let Some(item) = s.next().await {
            pos += item.unwrap().len() as u64;
            mark.store(pos / 2, Ordering::SeqCst);
        }
        let log = log.lock().unwrap().clone();
        assert!(log.len() >= 3, "saves as the watermark moves: {log:?}");
        assert!(log.iter().all(|c| c.done <= 500), "{log:?}");
    }

    #[tokio::test]
    async fn a_resumed_gate_starts_at_the_checkpoint_and_keeps_its_reach() {
        let (log, save) = recorder();
        let mut s = gate(
            chunks(2, 100),
            Checkpoint {
                done: 1000,
                reach: 5000,
            },
            || 0,
            Spacing {
                every: 1 << 20,
                window: 1 << 20,
            },
            save,
        );
        let got: Vec<Bytes> = (&mut s).try_collect().await.unwrap();
        assert_eq!(got.len(), 2);
        assert!(
            log.lock().unwrap().is_empty(),
            "within the saved reach: no save"
        );
    }

    #[tokio::test]
    async fn a_failed_save_ends_the_stream_with_an_error() {
        let save: SaveFn = Box::new(|_| {
            Box::pin(async {
                Err(crate::ControllerError::Op {
                    key: "snapshot:x".into(),
                    reason: "store down".into(),
                })
            })
        });
        let mut s = gate(
            chunks(3, 10),
            Checkpoint { done: 0, reach: 0 },
            || 0,
            Spacing {
                every: 10,
                window: 10,
            },
            save,
        );
        let err = s.next().await.unwrap().unwrap_err();
        assert!(
            err.to_string().contains("saving the populate checkpoint"),
            "{err}"
        );
        assert!(s.next().await.is_none());
    }

    #[tokio::test]
    async fn first_bytes_cuts_the_stream_at_the_length() {
        let got: Vec<Bytes> = first_bytes(chunks(4, 10), 25).try_collect().await.unwrap();
        assert_eq!(
            got.iter().map(|b| b.len()).collect::<Vec<_>>(),
            vec![10, 10, 5]
        );
        let all: Vec<Bytes> = first_bytes(chunks(2, 10), 100).try_collect().await.unwrap();
        assert_eq!(all.concat().len(), 20, "a shorter stream ends early");
    }
}
