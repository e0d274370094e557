//! What the load figures (`responsiveness`, `fairness`, and the loaded part of `ceph`) share: the
//! provider wired as the daemon wires it (or as one of the reference designs), the clock of
//! time-to-`Available`, a registry that accepts connections and never answers, a paced OS-image
//! source, and volume builders. Owns no figure and prints nothing.
//!
//! The designs ([`Design`]) differ only in `ControllerConfig::baseline` and the runner's
//! configuration; everything else (15 reconcile workers per reconciler, the event store, the
//! store, the backend) is the same, so the figures compare the designs and nothing else.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use async_trait::async_trait;
use bytes::Bytes;
use clap::Parser;
use controllers::{
    limits_for_class, Baseline, ControllerConfig, Controllers, ImageSource, Kek, ResolvedImage,
    Rootfs, SourceError,
};
use rbd::BlockBackend;
use runner::{Runner, RunnerConfig, ShutdownMode};
use store::keys::{CLASS_LABEL, MANAGER, MANAGER_LABEL};
use store::{
    EncryptionSpec, EncryptionType, Image, ImageSpec, ImageState, ListOptions, Object, Snapshot,
    Store, WatchEvent,
};
use tokio_util::sync::CancellationToken;
use volumeprovider::events::EventStore;
use volumeprovider::flags::DaemonArgs;

pub const MIB: u64 = 1 << 20;

/// The key-encryption key of the figures' encrypted volumes (any 32 bytes do).
const KEK: &[u8; 32] = b"cephvol-bench-kek-32-bytes-long!";

/// How the provider runs its long operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Design {
    /// This provider, as the daemon runs it: every long operation on the runner, in its class
    /// (`--async-max-workers` and the class shares at their defaults).
    Ours,
    /// The runner without classes: one FIFO queue for every long operation (this provider
    /// before operation classes).
    Fifo,
    /// `Baseline::GoPool`: resolve and format in the pass, a pool of 10 without a queue.
    GoPool,
    /// `Baseline::GoInline`: every long operation in the pass (the Go provider as released).
    GoInline,
}

impl Design {
    /// Name used in figure names (`ours` is left out of them).
    pub fn label(self) -> &'static str {
        match self {
            Design::Ours => "ours",
            Design::Fifo => "fifo",
            Design::GoPool => "gopool",
            Design::GoInline => "goinline",
        }
    }

    fn baseline(self) -> Baseline {
        match self {
            Design::Ours | Design::Fifo => Baseline::None,
            Design::GoPool => Baseline::GoPool,
            Design::GoInline => Baseline::GoInline,
        }
    }

    /// The runner of this design.
    pub fn runner_config(self) -> Result<RunnerConfig> {
        let d = daemon_defaults()?;
        Ok(match self {
            Design::Ours => RunnerConfig {
                max_running: d.async_max_workers,
                classes: d.runner_classes(),
                aging: d.async_aging,
                ..RunnerConfig::default()
            },
            Design::Fifo => RunnerConfig {
                max_running: d.async_max_workers,
                aging: d.async_aging,
                ..RunnerConfig::default()
            },
            // The proposal's pool: 10 at once, nothing waits.
            Design::GoPool => RunnerConfig {
                max_running: 10,
                max_waiting: 0,
                ..RunnerConfig::default()
            },
            // Nothing reaches the runner.
            Design::GoInline => RunnerConfig::default(),
        })
    }

    /// One line for the figures' notes.
    pub fn describe(self) -> &'static str {
        match self {
            Design::Ours => "ours: runner classes populate/fill/flatten 5/3/2 of 10",
            Design::Fifo => "one FIFO runner of 10 without classes",
            Design::GoPool => {
                "Go pool design: resolve and format in the pass, other long operations on a \
                 pool of 10 without a queue, a refused object polls through the rate-limited \
                 queue (5 ms per key, reset each pass; 10/s global bucket)"
            }
            Design::GoInline => "Go design as released: every long operation in the pass",
        }
    }
}

/// The daemon's flag defaults (what `cephvol` runs with when no flag is given).
pub fn daemon_defaults() -> Result<DaemonArgs> {
    volumeprovider::entry::Cli::try_parse_from(["cephvol"])
        .map(|cli| cli.daemon)
        .map_err(|e| anyhow!("parsing the daemon's default flags: {e}"))
}

/// The daemon's controller settings for `design`, with the figures' KEK and the flatten deletion
/// policy.
pub fn controller_config(design: Design) -> Result<ControllerConfig> {
    let d = daemon_defaults()?;
    Ok(ControllerConfig {
        worker_size: d.worker_size,
        monitors: "127.0.0.1:6789".into(),
        client: "client.bench".into(),
        kek: Some(kek()?),
        populator_buffer_size: d.populator_buffer(),
        populate_queue_depth: d.populate_queue_depth,
        baseline: design.baseline(),
        // The loads of these figures include deletions that flatten their clones (the Go
        // provider's policy, and the work the flatten class exists for); under the default
        // deferred policy a deletion copies nothing (figure `delete`).
        delete_policy: controllers::DeletePolicy::Flatten,
        ..ControllerConfig::default()
    })
}

fn kek() -> Result<Kek> {
    Kek::from_bytes(KEK).map_err(|e| anyhow!("bench KEK: {e}"))
}

/// A running provider (controllers and runner) on some backend and store.
pub struct Provider {
    pub images: Store<Image>,
    pub snapshots: Store<Snapshot>,
    pub runner: Runner,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<controllers::Result<()>>,
}

impl Provider {
    /// Starts the controllers of `design` on `backend` with `cfg`, on a fresh in-memory store.
    pub async fn start(
        backend: Arc<dyn BlockBackend>,
        source: Arc<dyn ImageSource>,
        design: Design,
        cfg: ControllerConfig,
    ) -> Result<Provider> {
        let objects: Arc<dyn store::Backend> = Arc::new(store::MemoryBackend::new());
        let images = Store::<Image>::open(objects.clone()).await?;
        let snapshots = Store::<Snapshot>::open(objects).await?;
        let runner = Runner::new(design.runner_config()?);
        let controllers = Controllers::new(
            images.clone(),
            snapshots.clone(),
            backend,
            source,
            runner.clone(),
            Arc::new(EventStore::new(100, Duration::from_secs(300))),
            cfg,
        );
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(controllers.run(shutdown.clone()));
        Ok(Provider {
            images,
            snapshots,
            runner,
            shutdown,
            task,
        })
    }

    /// Stops at once: passes blocked inline (baselines) are aborted, operations cancelled.
    pub async fn stop(self, grace: Duration) {
        self.shutdown.cancel();
        self.task.abort();
        let _ = self.task.await;
        self.runner
            .shutdown(ShutdownMode::Cancel { deadline: grace })
            .await;
    }

    /// How many images are in each of these states.
    pub async fn count(&self, states: &[ImageState]) -> Result<usize> {
        Ok(self
            .images
            .list(&ListOptions::default())
            .await?
            .iter()
            .filter(|i| states.contains(&i.status.state))
            .count())
    }
}

/// A volume as the volume server creates it (manager and class labels, class limits).
pub fn volume(size: u64, snapshot_ref: Option<String>) -> Image {
    let spec = ImageSpec {
        size,
        limits: limits_for_class(3000, 100 * MIB as i64, 10, 15),
        snapshot_ref,
        ..ImageSpec::default()
    };
    let mut img = managed(Image::new(store::new_id(), spec));
    img.metadata
        .labels
        .insert(CLASS_LABEL.into(), "standard".into());
    img
}

/// An encrypted empty volume (passphrase wrapped with the figures' KEK).
pub fn encrypted_volume(size: u64) -> Result<Image> {
    let mut img = volume(size, None);
    let passphrase = testdata::pattern(32, rand_seed());
    img.spec.encryption = Some(EncryptionSpec {
        encryption_type: EncryptionType::Encrypted,
        encrypted_passphrase: kek()?.encrypt(&passphrase),
    });
    Ok(img)
}

/// A volume created from the OS image `reference`.
pub fn os_volume(size: u64, reference: &str) -> Image {
    let mut img = volume(size, None);
    img.spec.image = reference.to_string();
    img
}

fn rand_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(7)
}

pub fn managed<T: Object>(mut obj: T) -> T {
    obj.metadata_mut()
        .labels
        .insert(MANAGER_LABEL.into(), MANAGER.into());
    obj
}

/// Polls the store until `done` holds for its objects.
pub async fn wait_until<T: Object>(
    store: &Store<T>,
    what: &str,
    timeout: Duration,
    done: impl Fn(&[T]) -> bool,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let all = store.list(&ListOptions::default()).await?;
        if done(&all) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(anyhow!("timed out after {timeout:?} waiting for {what}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Times volumes from [`Clock::begin`] until the store's watch shows them `Available`.
pub struct Clock {
    pending: Arc<Mutex<HashMap<String, Instant>>>,
    took: Arc<Mutex<Vec<Duration>>>,
    task: tokio::task::JoinHandle<()>,
}

/// What a [`Clock`] measured: every volume's time to `Available`, those still pending counted
/// with their time so far (`censored` of them), so percentiles are lower bounds when any is.
pub struct Samples {
    pub sorted: Vec<Duration>,
    pub censored: usize,
}

impl Samples {
    /// Nearest-rank percentile.
    pub fn percentile(&self, q: f64) -> Duration {
        if self.sorted.is_empty() {
            return Duration::ZERO;
        }
        let n = self.sorted.len();
        let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
        self.sorted[rank - 1]
    }

    pub fn max(&self) -> Duration {
        self.sorted.last().copied().unwrap_or_default()
    }
}

impl Clock {
    /// Starts watching `images`.
    pub fn start(images: &Store<Image>) -> Result<Clock> {
        let pending: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
        let took: Arc<Mutex<Vec<Duration>>> = Arc::default();
        let mut watch = images.watch(ListOptions::default())?;
        let task = {
            let pending = pending.clone();
            let took = took.clone();
            let images = images.clone();
            tokio::spawn(async move {
                let record = |img: &Image| {
                    if img.status.state == ImageState::Available {
                        let t0 = lock(&pending).remove(&img.metadata.id);
                        if let Some(t0) = t0 {
                            lock(&took).push(t0.elapsed());
                        }
                    }
                };
                while let Some(ev) = watch.recv().await {
                    match ev {
                        WatchEvent::Created(img) | WatchEvent::Updated(img) => record(&img),
                        WatchEvent::Deleted(_) => {}
                        WatchEvent::Resync => {
                            if let Ok(all) = images.list(&ListOptions::default()).await {
                                all.iter().for_each(record);
                            }
                        }
                    }
                }
            })
        };
        Ok(Clock {
            pending,
            took,
            task,
        })
    }

    /// Starts timing the volume `id` (call just before `Store::create`).
    pub fn begin(&self, id: &str) {
        lock(&self.pending).insert(id.to_string(), Instant::now());
    }

    /// How many timed volumes are `Available`.
    pub fn done(&self) -> usize {
        lock(&self.took).len()
    }

    /// Waits until `n` volumes are `Available` or `deadline` passes; true if they all are.
    pub async fn wait_done(&self, n: usize, deadline: Instant) -> bool {
        while self.done() < n {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    }

    /// Stops the clock; volumes still pending count with their time so far.
    pub fn finish(self) -> Samples {
        self.task.abort();
        let mut sorted = std::mem::take(&mut *lock(&self.took));
        let pending = std::mem::take(&mut *lock(&self.pending));
        let censored = pending.len();
        sorted.extend(pending.values().map(|t0| t0.elapsed()));
        sorted.sort();
        Samples { sorted, censored }
    }
}

/// A registry that accepts TCP connections on loopback and never answers: a resolve against it
/// blocks in the registry client until the client's own request timeout. Lives as long as the
/// runtime it was started on.
pub struct BlackHole {
    pub addr: SocketAddr,
}

impl BlackHole {
    pub async fn start() -> Result<BlackHole> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the silent registry")?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            // Hold every connection open, read nothing, answer nothing.
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        Ok(BlackHole { addr })
    }

    /// An OS image reference on this registry (reached over plain HTTP: loopback).
    pub fn reference(&self, name: &str) -> String {
        format!("{}/bench/{name}:v1", self.addr)
    }
}

/// An OS-image source with the latencies of a registry and no registry: `resolve` answers after
/// `resolve_delay` with a digest derived from the reference; `open_rootfs` streams `size` bytes
/// (the first `head.len()` bytes are `head`, the rest zeroes, which the populate skips) in 1 MiB
/// chunks paced at `rate` bytes per second, the download of a network-bound pull.
pub struct PacedSource {
    pub resolve_delay: Duration,
    pub size: u64,
    pub rate: f64,
    pub head: Bytes,
}

/// 1 MiB of zeroes, shared by every paced stream.
static ZEROES: [u8; 1 << 20] = [0; 1 << 20];

fn digest_of(reference: &str) -> String {
    format!("sha256:{}", testdata::sha256_hex(reference.as_bytes()))
}

#[async_trait]
impl ImageSource for PacedSource {
    async fn resolve(
        &self,
        reference: &str,
        _architecture: Option<&str>,
    ) -> Result<ResolvedImage, SourceError> {
        tokio::time::sleep(self.resolve_delay).await;
        let locator = reference
            .rsplit_once(':')
            .map(|(l, _)| l)
            .unwrap_or(reference);
        Ok(ResolvedImage {
            locator: locator.to_string(),
            digest: digest_of(reference),
        })
    }

    async fn open_rootfs(
        &self,
        reference: &str,
        _architecture: Option<&str>,
    ) -> Result<Rootfs, SourceError> {
        tokio::time::sleep(self.resolve_delay).await;
        let Some((_, digest)) = reference.split_once('@') else {
            return Err(SourceError::InvalidReference(reference.into()));
        };
        let (size, rate, head) = (self.size, self.rate.max(1.0), self.head.clone());
        let start = tokio::time::Instant::now();
        let stream = futures::stream::unfold(0u64, move |sent| {
            let head = head.clone();
            async move {
                if sent >= size {
                    return None;
                }
                let len = (size - sent).min(ZEROES.len() as u64);
                let chunk = if sent < head.len() as u64 {
                    let end = (sent + len).min(head.len() as u64);
                    head.slice(sent as usize..end as usize)
                } else {
                    Bytes::from_static(&ZEROES[..len as usize])
                };
                let sent = sent + chunk.len() as u64;
                let due = start + Duration::from_secs_f64(sent as f64 / rate);
                tokio::time::sleep_until(due).await;
                Some((Ok(chunk), sent))
            }
        });
        Ok(Rootfs {
            size,
            layer_digest: digest_of(&format!("{reference}/layer")),
            manifest_digest: digest.to_string(),
            start: 0,
            data: Box::pin(stream),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_daemon_defaults_give_ours_three_classes_and_the_pool_no_queue() {
        let ours = Design::Ours.runner_config().expect("defaults");
        assert_eq!(ours.max_running, 10);
        assert_eq!(ours.classes.len(), 3);
        let pool = Design::GoPool.runner_config().expect("defaults");
        assert_eq!((pool.max_running, pool.max_waiting), (10, 0));
        assert!(pool.classes.is_empty());
        assert!(Design::Fifo
            .runner_config()
            .expect("defaults")
            .classes
            .is_empty());
    }

    #[test]
    fn percentiles_of_samples_are_nearest_rank() {
        let s = Samples {
            sorted: (1..=100).map(Duration::from_millis).collect(),
            censored: 0,
        };
        assert_eq!(s.percentile(0.99), Duration::from_millis(99));
        assert_eq!(s.percentile(0.5), Duration::from_millis(50));
        assert_eq!(s.max(), Duration::from_millis(100));
    }
}
