//! Test harness shared by the controllers' integration tests: a fake [`ImageSource`], a "world"
//! (fake cluster + store backend kept across simulated provider restarts) and helpers to drive
//! paused tokio time until the controllers settle. The world's backend and source are wrapped in
//! the guard of `guard.rs`; a world that saw a slow call on a reconcile worker fails its test
//! when it is dropped (unless it runs a benchmark baseline, which does so on purpose).

#![allow(dead_code, clippy::unwrap_used)]

pub mod guard;

pub use guard::{GuardedBackend, GuardedSource, SlowCalls};

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use controllers::events::MemoryEvents;
use controllers::{
    ControllerConfig, Controllers, ImageSource, Kek, Probe, ResolvedImage, Rootfs, SourceError,
};
use futures::TryStreamExt;
use rbd_testkit::fake::MemoryBackend;
use runner::{Runner, RunnerConfig, ShutdownMode};
use sha2::{Digest, Sha256};
use store::{Image, ListOptions, Snapshot, Store};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub const MIB: u64 = 1 << 20;
pub const POOL: &str = "pool";
pub const CLIENT: &str = "client.volumes";
pub const KEK_BYTES: &[u8; 32] = b"0123456789abcdef0123456789abcdef";

pub fn digest_of(name: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(name.as_bytes())))
}

pub fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// One OS image of the fake registry.
#[derive(Clone)]
pub struct OsImage {
    pub locator: String,
    pub digest: String,
    pub data: Vec<u8>,
}

#[derive(Default)]
struct SourceState {
    /// tag reference → image
    tags: HashMap<String, OsImage>,
    resolve_faults: VecDeque<SourceError>,
    open_faults: VecDeque<SourceError>,
    /// Streams that end with a digest error (retryable).
    corrupt_next: usize,
    opens: u64,
    resolves: u64,
    /// Layer bytes handed out by every stream so far (what a registry would have served).
    served: u64,
    /// Answer `open_rootfs_from` with the whole layer (a registry that ignores `Range`).
    ignores_range: bool,
    /// Stream errors after this many bytes of the next stream (a broken download), once.
    break_after: Option<u64>,
}

/// An in-memory registry: `reg/<name>:latest` → bytes. Failures can be injected; streams can be
/// held at their first chunk until [`FakeSource::release`].
#[derive(Default)]
pub struct FakeSource {
    state: Mutex<SourceState>,
    hold: Mutex<bool>,
    released: Notify,
    /// While set, `resolve` never answers (a registry that accepts and then says nothing).
    mute: Mutex<bool>,
    unmuted: Notify,
    pub chunk: usize,
}

impl FakeSource {
    pub fn new() -> Self {
        FakeSource {
            chunk: 64 * 1024,
            ..Default::default()
        }
    }

    /// Adds `reg/<name>:latest` holding `data`; returns its tag reference.
    pub fn add(&self, name: &str, data: Vec<u8>) -> String {
        let reference = format!("reg/{name}:latest");
        let img = OsImage {
            locator: format!("reg/{name}"),
            digest: digest_of(name),
            data,
        };
        self.state
            .lock()
            .unwrap()
            .tags
            .insert(reference.clone(), img);
        reference
    }

    pub fn image(&self, reference: &str) -> Option<OsImage> {
        self.state.lock().unwrap().tags.get(reference).cloned()
    }

    pub fn by_digest(&self, digest: &str) -> Option<OsImage> {
        self.state
            .lock()
            .unwrap()
            .tags
            .values()
            .find(|i| i.digest == digest)
            .cloned()
    }

    pub fn fail_resolve(&self, e: SourceError) {
        self.state.lock().unwrap().resolve_faults.push_back(e);
    }

    pub fn fail_open(&self, e: SourceError) {
        self.state.lock().unwrap().open_faults.push_back(e);
    }

    pub fn corrupt_next(&self, n: usize) {
        self.state.lock().unwrap().corrupt_next += n;
    }

    pub fn opens(&self) -> u64 {
        self.state.lock().unwrap().opens
    }

    /// Layer bytes every stream handed out so far.
    pub fn served(&self) -> u64 {
        self.state.lock().unwrap().served
    }

    /// From now on, ranges are ignored: a resumed open gets the whole layer.
    pub fn ignore_ranges(&self) {
        self.state.lock().unwrap().ignores_range = true;
    }

    /// The next stream breaks (an `Other` I/O error, as a dropped connection) after `bytes`.
    pub fn break_next_after(&self, bytes: u64) {
        self.state.lock().unwrap().break_after = Some(bytes);
    }

    /// How many times `resolve` was called.
    pub fn resolves(&self) -> u64 {
        self.state.lock().unwrap().resolves
    }

    /// `resolve` calls from now on (and those waiting) never answer until [`FakeSource::unmute`].
    pub fn mute(&self) {
        *self.mute.lock().unwrap() = true;
    }

    pub fn unmute(&self) {
        *self.mute.lock().unwrap() = false;
        self.unmuted.notify_waiters();
    }

    async fn wait_unmuted(&self) {
        loop {
            let n = self.unmuted.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if !*self.mute.lock().unwrap() {
                return;
            }
            n.await;
        }
    }

    /// Streams opened from now on stop after their first chunk until [`FakeSource::release`].
    pub fn hold(&self) {
        *self.hold.lock().unwrap() = true;
    }

    pub fn release(&self) {
        *self.hold.lock().unwrap() = false;
        self.released.notify_waiters();
    }

    async fn wait_released(self: &Arc<Self>) {
        loop {
            let n = self.released.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if !*self.hold.lock().unwrap() {
                return;
            }
            n.await;
        }
    }
}

/// `Arc<FakeSource>` as an [`ImageSource`].
pub struct SharedSource(pub Arc<FakeSource>);

#[async_trait]
impl ImageSource for SharedSource {
    async fn resolve(
        &self,
        reference: &str,
        _architecture: Option<&str>,
    ) -> Result<ResolvedImage, SourceError> {
        self.0.state.lock().unwrap().resolves += 1;
        self.0.wait_unmuted().await;
        let mut st = self.0.state.lock().unwrap();
        if let Some(e) = st.resolve_faults.pop_front() {
            return Err(e);
        }
        let img = st
            .tags
            .get(reference)
            .ok_or_else(|| SourceError::NotFound(reference.into()))?;
        Ok(ResolvedImage {
            locator: img.locator.clone(),
            digest: img.digest.clone(),
        })
    }

    async fn open_rootfs(
        &self,
        reference: &str,
        _architecture: Option<&str>,
    ) -> Result<Rootfs, SourceError> {
        self.open_at(reference, 0, None)
    }

    async fn open_rootfs_from(
        &self,
        reference: &str,
        _architecture: Option<&str>,
        offset: u64,
        prefix: rbd::ByteStream,
    ) -> Result<Rootfs, SourceError> {
        if self.0.state.lock().unwrap().ignores_range {
            return self.open_at(reference, 0, None);
        }
        self.open_at(reference, offset, Some(prefix))
    }
}

/// One chunk of a fake layer stream, or its end.
enum Piece {
    Data(Bytes),
    Fail(std::io::Error),
}

impl SharedSource {
    /// The layer from `offset` on; with a `prefix`, the stream reads it first and ends with a
    /// digest error (`InvalidData`) unless it equals the layer's first `offset` bytes.
    fn open_at(
        &self,
        reference: &str,
        offset: u64,
        prefix: Option<rbd::ByteStream>,
    ) -> Result<Rootfs, SourceError> {
        let (img, corrupt, break_after) = {
            let mut st = self.0.state.lock().unwrap();
            st.opens += 1;
            if let Some(e) = st.open_faults.pop_front() {
                return Err(e);
            }
            let Some((_, digest)) = reference.split_once('@') else {
                return Err(SourceError::InvalidReference(reference.into()));
            };
            let img = st
                .tags
                .values()
                .find(|i| i.digest == digest)
                .cloned()
                .ok_or_else(|| SourceError::NotFound(reference.into()))?;
            let corrupt = st.corrupt_next > 0;
            if corrupt {
                st.corrupt_next -= 1;
            }
            (img, corrupt, st.break_after.take())
        };
        let start = offset.min(img.data.len() as u64);
        let expected_prefix = img.data[..start as usize].to_vec();
        let chunk = self.0.chunk.max(1);
        let mut pieces: Vec<Piece> = img.data[start as usize..]
            .chunks(chunk)
            .map(|c| Piece::Data(Bytes::copy_from_slice(c)))
            .collect();
        if let Some(limit) = break_after {
            let mut kept = 0u64;
            let mut cut = Vec::new();
            for p in pieces {
                if let Piece::Data(b) = &p {
                    if kept + b.len() as u64 > limit {
                        break;
                    }
                    kept += b.len() as u64;
                }
                cut.push(p);
            }
            cut.push(Piece::Fail(std::io::Error::other("connection reset")));
            pieces = cut;
        }
        if corrupt {
            pieces.push(Piece::Fail(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "layer digest mismatch",
            )));
        }
        let source = self.0.clone();
        let held = *source.hold.lock().unwrap();
        let stream = futures::stream::unfold(
            (pieces.into_iter(), 0usize, false, prefix),
            move |(mut it, n, ended, mut prefix)| {
                let source = source.clone();
                let expected_prefix = expected_prefix.clone();
                async move {
                    if ended {
                        return None;
                    }
                    if let Some(p) = prefix.take() {
                        let read: Vec<Bytes> = p.try_collect().await.unwrap_or_default();
                        if read.concat() != expected_prefix {
                            let e = std::io::Error::new(
                                std::io::ErrorKind::InvalidData,
                                "layer digest mismatch (the prefix read back differs)",
                            );
                            return Some((Err(e), (it, n + 1, true, None)));
                        }
                    }
                    if n == 1 && held {
                        source.wait_released().await;
                    }
                    match it.next() {
                        Some(Piece::Data(b)) => {
                            source.state.lock().unwrap().served += b.len() as u64;
                            Some((Ok(b), (it, n + 1, false, None)))
                        }
                        Some(Piece::Fail(e)) => Some((Err(e), (it, n + 1, true, None))),
                        None => None,
                    }
                }
            },
        );
        Ok(Rootfs {
            size: img.data.len() as u64,
            layer_digest: format!("sha256:{}", sha(&img.data)),
            manifest_digest: img.digest.clone(),
            start,
            data: Box::pin(stream),
        })
    }
}

/// A running provider.
pub struct Running {
    pub images: Store<Image>,
    pub snapshots: Store<Snapshot>,
    pub runner: Runner,
    pub probe: Probe,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<controllers::Result<()>>,
}

/// The persistent parts (cluster, store backend, registry) plus the provider currently running.
pub struct World {
    pub cluster: MemoryBackend,
    /// Slow calls seen by the guarded backend and source of every provider started here.
    pub slow: Arc<SlowCalls>,
    pub store_backend: store::MemoryBackend,
    pub source: Arc<FakeSource>,
    pub events: Arc<MemoryEvents>,
    pub cfg: ControllerConfig,
    pub runner_cfg: RunnerConfig,
    pub running: Option<Running>,
}

pub fn test_config() -> ControllerConfig {
    ControllerConfig {
        worker_size: 3,
        monitors: "10.0.0.1:6789".into(),
        client: CLIENT.into(),
        kek: Some(Kek::from_bytes(KEK_BYTES).unwrap()),
        populator_buffer_size: 256 * 1024,
        populate_queue_depth: 2,
        max_backoff: Duration::from_secs(2),
        busy_backoff: Duration::from_millis(500),
        // Unused OS images are kept unless a test asks for their removal: a pending removal
        // keeps the queues busy for its grace period, and `settle` waits for idle queues.
        os_image_gc_grace: Duration::ZERO,
        ..ControllerConfig::default()
    }
}

/// [`test_config`] with the Go provider's deletion policy: clones are flattened, snapshots
/// re-homed.
pub fn flatten_config() -> ControllerConfig {
    ControllerConfig {
        delete_policy: controllers::DeletePolicy::Flatten,
        ..test_config()
    }
}

impl World {
    pub fn new(cfg: ControllerConfig, runner_cfg: RunnerConfig) -> Self {
        World {
            cluster: MemoryBackend::builder(POOL).chunk_size(256 * 1024).build(),
            slow: Arc::default(),
            store_backend: store::MemoryBackend::new(),
            source: Arc::new(FakeSource::new()),
            events: Arc::new(MemoryEvents::new()),
            cfg,
            runner_cfg,
            running: None,
        }
    }

    pub async fn start(&mut self) {
        assert!(self.running.is_none());
        let sb: Arc<dyn store::Backend> = Arc::new(self.store_backend.clone());
        let images = Store::<Image>::open(sb.clone()).await.unwrap();
        let snapshots = Store::<Snapshot>::open(sb).await.unwrap();
        let runner = Runner::new(self.runner_cfg.clone());
        let controllers = Controllers::new(
            images.clone(),
            snapshots.clone(),
            Arc::new(GuardedBackend {
                inner: self.cluster.clone(),
                slow: self.slow.clone(),
            }),
            Arc::new(GuardedSource {
                inner: SharedSource(self.source.clone()),
                slow: self.slow.clone(),
            }),
            runner.clone(),
            self.events.clone(),
            self.cfg.clone(),
        );
        let probe = controllers.probe();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(controllers.run(shutdown.clone()));
        self.running = Some(Running {
            images,
            snapshots,
            runner,
            probe,
            shutdown,
            task,
        });
    }

    /// Simulates a crash: the controllers' task is aborted mid-pass and running operations are
    /// cancelled and then aborted without waiting; only the cluster and the store backend remain.
    pub async fn crash(&mut self) {
        let Some(r) = self.running.take() else { return };
        r.task.abort();
        let _ = r.task.await;
        r.runner
            .shutdown(ShutdownMode::Cancel {
                deadline: Duration::ZERO,
            })
            .await;
    }

    /// A clean stop (shutdown token, runner cancelled with a short deadline).
    pub async fn stop(&mut self) {
        let Some(r) = self.running.take() else { return };
        r.shutdown.cancel();
        r.task.await.unwrap().unwrap();
        r.runner
            .shutdown(ShutdownMode::Cancel {
                deadline: Duration::from_secs(1),
            })
            .await;
    }

    pub fn r(&self) -> &Running {
        self.running.as_ref().expect("provider running")
    }

    pub fn images(&self) -> &Store<Image> {
        &self.r().images
    }

    pub fn snapshots(&self) -> &Store<Snapshot> {
        &self.r().snapshots
    }

    /// Whether nothing is queued, delayed, processing or running.
    pub fn idle(&self) -> bool {
        let r = self.r();
        r.probe.is_idle() && r.runner.snapshot().is_empty()
    }

    /// Advances paused time in small steps until `done` holds and everything is idle (checked
    /// three times in a row), or `budget` of virtual time has passed. Returns whether it settled.
    pub async fn settle_until(
        &self,
        budget: Duration,
        mut done: impl FnMut(&[Image], &[Snapshot]) -> bool,
    ) -> bool {
        let start = tokio::time::Instant::now();
        let mut quiet = 0;
        while start.elapsed() < budget {
            tokio::time::sleep(Duration::from_millis(20)).await;
            if !self.idle() {
                quiet = 0;
                continue;
            }
            let images = self
                .images()
                .list(&ListOptions::default())
                .await
                .unwrap_or_default();
            let snaps = self
                .snapshots()
                .list(&ListOptions::default())
                .await
                .unwrap_or_default();
            if done(&images, &snaps) {
                quiet += 1;
                if quiet >= 3 {
                    return true;
                }
            } else {
                quiet = 0;
            }
        }
        false
    }

    /// Advances paused time until `cond` holds (without waiting for idleness), or `budget` passed.
    pub async fn wait_for(
        &self,
        budget: Duration,
        mut cond: impl FnMut(&Running, &[Image], &[Snapshot]) -> bool,
    ) -> bool {
        let start = tokio::time::Instant::now();
        while start.elapsed() < budget {
            let images = self
                .images()
                .list(&ListOptions::default())
                .await
                .unwrap_or_default();
            let snaps = self
                .snapshots()
                .list(&ListOptions::default())
                .await
                .unwrap_or_default();
            if cond(self.r(), &images, &snaps) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// Settles until every object is in a final state (no deleted object left).
    pub async fn settle(&self, budget: Duration) -> bool {
        self.settle_until(budget, |images, snaps| {
            images.iter().all(image_final) && snaps.iter().all(snapshot_final)
        })
        .await
    }

    pub fn kek(&self) -> Kek {
        Kek::from_bytes(KEK_BYTES).unwrap()
    }

    /// `Err` naming the slow calls made on a reconcile worker, if any.
    pub fn no_slow_calls_on_workers(&self) -> Result<(), String> {
        let v = self.slow.violations();
        if v.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "slow calls on a reconcile worker ({}): {}",
                v.len(),
                v.join(", ")
            ))
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if self.cfg.baseline == controllers::Baseline::None && !std::thread::panicking() {
            if let Err(e) = self.no_slow_calls_on_workers() {
                panic!("{e}");
            }
        }
    }
}

/// A steady state: a live volume `Available` or in `Error`, or a deleted one `Retained` (kept
/// hidden for its snapshots under the deferred deletion policy).
pub fn image_final(i: &Image) -> bool {
    use store::ImageState::*;
    match i.metadata.is_deleted() {
        false => matches!(i.status.state, Available | Error),
        true => i.status.state == Retained,
    }
}

/// A steady state: a live snapshot `Ready` or `Failed`, or a deleted one `Retained` (kept hidden
/// for its clones under the deferred deletion policy).
pub fn snapshot_final(s: &Snapshot) -> bool {
    use store::SnapshotState::*;
    match s.metadata.is_deleted() {
        false => matches!(s.status.state, Ready | Failed),
        true => s.status.state == Retained,
    }
}

/// A new volume as the volume server creates it (manager label, class label).
pub fn new_volume(size: u64) -> Image {
    let mut img = Image::new(
        store::new_id(),
        store::ImageSpec {
            size,
            ..Default::default()
        },
    );
    img.metadata.labels.insert(
        store::keys::MANAGER_LABEL.into(),
        store::keys::MANAGER.into(),
    );
    img.metadata
        .labels
        .insert(store::keys::CLASS_LABEL.into(), "fast".into());
    img
}

/// A new volume snapshot as the volume server creates it.
pub fn new_volume_snapshot(volume: &str) -> Snapshot {
    let mut s = Snapshot::new(
        store::new_id(),
        store::SnapshotSource {
            ironcore_image: String::new(),
            volume_image_id: volume.into(),
        },
    );
    s.metadata.labels.insert(
        store::keys::MANAGER_LABEL.into(),
        store::keys::MANAGER.into(),
    );
    s
}

pub fn encryption(kek: &Kek, passphrase: &[u8]) -> store::EncryptionSpec {
    store::EncryptionSpec {
        encryption_type: store::EncryptionType::Encrypted,
        encrypted_passphrase: kek.encrypt(passphrase),
    }
}

/// A workload that makes every kind of slow call once or more, then settles: an OS volume
/// (resolve, open_rootfs, write_stream), an encrypted empty volume (format), an encrypted OS volume
/// (format, read_stream and write_stream of its fill), then the deletion of a volume with a
/// snapshot and a restore (flatten of its children). `name`/`seed` make the OS image. Returns the
/// id of the deleted volume.
pub async fn every_slow_call(w: &World, name: &str, seed: u64, budget: Duration) -> String {
    let reference = w.source.add(name, testdata::pattern(MIB as usize, seed));
    let mut os = new_volume(2 * MIB);
    os.spec.image = reference.clone();
    let os = w.images().create(os).await.unwrap().metadata.id;
    let mut enc = new_volume(20 * MIB);
    enc.spec.encryption = Some(encryption(&w.kek(), b"a"));
    w.images().create(enc).await.unwrap();
    let mut enc_os = new_volume(20 * MIB);
    enc_os.spec.image = reference;
    enc_os.spec.encryption = Some(encryption(&w.kek(), b"b"));
    w.images().create(enc_os).await.unwrap();
    assert!(w.settle(budget).await);
    let snap = w
        .snapshots()
        .create(new_volume_snapshot(&os))
        .await
        .unwrap();
    assert!(w.settle(budget).await);
    let mut restore = new_volume(2 * MIB);
    restore.spec.snapshot_ref = Some(snap.metadata.id.clone());
    w.images().create(restore).await.unwrap();
    assert!(w.settle(budget).await);
    w.images().delete(&os).await.unwrap();
    assert!(w.settle(budget).await);
    os
}
