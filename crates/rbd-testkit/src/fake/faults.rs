//! Fault and latency injection of the in-memory backend: which operation fails or waits, and when.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use rbd::RbdError;

/// Kinds of [`BlockBackend`](rbd::BlockBackend) calls, the unit of fault and latency injection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    /// `create_image`.
    CreateImage,
    /// `stat` and `image_exists`.
    Stat,
    /// `list_images`.
    ListImages,
    /// `resize`.
    Resize,
    /// `remove_image`.
    Remove,
    /// `create_snapshot`.
    CreateSnapshot,
    /// `protect_snapshot`.
    Protect,
    /// `unprotect_snapshot`.
    Unprotect,
    /// `is_snapshot_protected`.
    IsProtected,
    /// `remove_snapshot`.
    RemoveSnapshot,
    /// `list_snapshots`.
    ListSnapshots,
    /// `clone_image`.
    Clone,
    /// `list_children`.
    ListChildren,
    /// `flatten` (chunk faults apply per copied object).
    Flatten,
    /// `read`.
    Read,
    /// `read_stream`.
    ReadStream,
    /// `write_stream` (chunk faults apply per write request).
    Write,
    /// `write_at`.
    WriteAt,
    /// `encryption_format`.
    EncryptionFormat,
    /// `metadata_get`.
    MetadataGet,
    /// `metadata_set`.
    MetadataSet,
    /// `metadata_list`.
    MetadataList,
    /// `pool_usage`.
    PoolUsage,
    /// `client_key`.
    ClientKey,
}

/// Faults armed for one operation kind.
#[derive(Debug, Default)]
struct OpFaults {
    calls: u64,
    fail_next: VecDeque<RbdError>,
    random: Option<(f64, RbdError)>,
    delay: Duration,
    chunk_delay: Duration,
    fail_after_chunks: Option<(u64, RbdError)>,
}

/// Per-call chunk faults, read once when a chunked call (flatten, write_stream) starts.
#[derive(Debug, Clone, Default)]
pub(crate) struct ChunkFaults {
    /// Delay before each chunk (object copy or write request).
    pub delay: Duration,
    /// Fail once this many chunks are done (one-shot: consumed by the call that read it).
    pub fail_after: Option<(u64, RbdError)>,
}

/// All injected faults of one backend, with the seeded RNG of probabilistic failures.
#[derive(Debug)]
pub(crate) struct Faults {
    ops: HashMap<Op, OpFaults>,
    rng: StdRng,
}

impl Faults {
    pub fn new(seed: u64) -> Self {
        Faults {
            ops: HashMap::new(),
            rng: StdRng::seed_from_u64(seed),
        }
    }

    fn op(&mut self, op: Op) -> &mut OpFaults {
        self.ops.entry(op).or_default()
    }

    /// Counts a call and returns the delay to wait before deciding its fate.
    pub fn begin(&mut self, op: Op) -> Duration {
        let f = self.op(op);
        f.calls += 1;
        f.delay
    }

    /// Decides whether the call fails (after its delay): queued failures first, then the coin.
    pub fn decide(&mut self, op: Op) -> Result<(), RbdError> {
        let Faults { ops, rng } = self;
        let f = ops.entry(op).or_default();
        if let Some(err) = f.fail_next.pop_front() {
            return Err(err);
        }
        if let Some((p, err)) = &f.random {
            if rng.gen_bool(*p) {
                return Err(err.clone());
            }
        }
        Ok(())
    }

    pub fn chunk_faults(&mut self, op: Op) -> ChunkFaults {
        let f = self.op(op);
        ChunkFaults {
            delay: f.chunk_delay,
            fail_after: f.fail_after_chunks.take(),
        }
    }

    pub fn calls(&self, op: Op) -> u64 {
        self.ops.get(&op).map_or(0, |f| f.calls)
    }

    pub fn fail_next(&mut self, op: Op, count: usize, error: RbdError) {
        let f = self.op(op);
        f.fail_next.extend(std::iter::repeat_n(error, count));
    }

    pub fn fail_randomly(&mut self, op: Op, probability: f64, error: RbdError) {
        self.op(op).random = Some((probability.clamp(0.0, 1.0), error));
    }

    pub fn set_delay(&mut self, op: Op, delay: Duration) {
        self.op(op).delay = delay;
    }

    pub fn set_chunk_delay(&mut self, op: Op, delay: Duration) {
        self.op(op).chunk_delay = delay;
    }

    pub fn fail_after_chunks(&mut self, op: Op, chunks: u64, error: RbdError) {
        self.op(op).fail_after_chunks = Some((chunks, error));
    }

    /// Disarms every fault and delay; call counters are kept.
    pub fn clear(&mut self) {
        for f in self.ops.values_mut() {
            let calls = f.calls;
            *f = OpFaults {
                calls,
                ..OpFaults::default()
            };
        }
    }
}
