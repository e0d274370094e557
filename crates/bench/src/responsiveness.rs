//! Figure `responsiveness`: how fast an empty volume becomes `Available` while long operations run.
//!
//! The provider is wired as the daemon wires it (`store::Store` on `store::MemoryBackend`,
//! `rbd_testkit::fake::MemoryBackend`, `runner::Runner` with its defaults, `controllers::Controllers` with
//! the default 15 workers, the daemon's `EventStore`), in real time. The fake backend waits
//! [`Params::call_delay`] at the start of every call (a Ceph round trip).
//!
//! Load: `long_ops` volumes that each have a snapshot and a volume restored from it are deleted.
//! Deleting such a volume re-homes the snapshot (one more clone) and then flattens both clones —
//! the long operation, `image:<id>` on the runner — at [`Params::object_delay`] per 4 MiB object.
//! Once at least 10 of them are flattening, `creates` empty volumes are created through the store,
//! one every `interval`, and the time from `Store::create` until the store's watch shows the volume
//! `Available` is recorded (p50, p99).
//!
//! Runs on fresh worlds: **load** (ours), **idle** (the same world, nothing deleted), and
//! **sync** (`ControllerConfig::sync_long_ops`: the flatten runs inline on the reconcile worker,
//! the Go provider's design, kept only as this benchmark's baseline). Idle and load alternate
//! three times (`--quick`: once) and the median of each percentile counts; sync runs once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use controllers::{limits_for_class, ControllerConfig, Controllers};
use rbd_testkit::fake::{MemoryBackend, Op};
use runner::{Runner, RunnerConfig, ShutdownMode};
use store::keys::{CLASS_LABEL, MANAGER, MANAGER_LABEL};
use store::{
    Image, ImageSpec, ImageState, ListOptions, Object, Snapshot, SnapshotSource, SnapshotState,
    Store, WatchEvent,
};
use tokio_util::sync::CancellationToken;
use volumeprovider::events::EventStore;

use super::util::NoImages;
use super::{Figure, Opts};

const MIB: u64 = 1 << 20;

/// Sizes and latencies of one run.
struct Params {
    /// Volume deletions running as long operations.
    long_ops: usize,
    /// Empty volumes created and timed.
    creates: usize,
    /// Time between two creates.
    interval: Duration,
    /// Size of the deleted volumes and their clones (4 MiB objects).
    volume_size: u64,
    /// Flatten time per 4 MiB object.
    object_delay: Duration,
    /// Latency of every backend call.
    call_delay: Duration,
    /// Idle and load runs (the medians count).
    rounds: usize,
}

impl Params {
    fn new(quick: bool) -> Params {
        if quick {
            Params {
                long_ops: 20,
                creates: 40,
                interval: Duration::from_millis(20),
                volume_size: 32 * MIB,
                object_delay: Duration::from_millis(100),
                call_delay: Duration::from_millis(2),
                rounds: 1,
            }
        } else {
            Params {
                long_ops: 20,
                creates: 300,
                interval: Duration::from_millis(20),
                volume_size: 32 * MIB,
                object_delay: Duration::from_millis(500),
                call_delay: Duration::from_millis(2),
                rounds: 3,
            }
        }
    }

    fn objects(&self) -> u64 {
        self.volume_size
            .div_ceil(rbd_testkit::fake::DEFAULT_CHUNK_SIZE)
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Idle,
    Load,
    Sync,
}

/// What one run measured.
struct Outcome {
    p50: Duration,
    p99: Duration,
    max: Duration,
    /// Long operations still flattening when the last volume became available.
    still_loaded: usize,
}

impl Outcome {
    /// Field-wise median of several runs.
    fn median(runs: Vec<Outcome>) -> Outcome {
        let mid = |f: fn(&Outcome) -> Duration| {
            let mut v: Vec<Duration> = runs.iter().map(f).collect();
            v.sort();
            v.get(v.len() / 2).copied().unwrap_or_default()
        };
        let mut loaded: Vec<usize> = runs.iter().map(|o| o.still_loaded).collect();
        loaded.sort_unstable();
        Outcome {
            p50: mid(|o| o.p50),
            p99: mid(|o| o.p99),
            max: mid(|o| o.max),
            still_loaded: loaded.get(loaded.len() / 2).copied().unwrap_or_default(),
        }
    }
}

/// Runs the three scenarios and prints the figures.
pub fn run(opts: &Opts, _rt: &tokio::runtime::Runtime) -> Result<Vec<Figure>> {
    let p = Params::new(opts.quick);
    // Idle and load runs alternate, `rounds` times each, and the medians count: the machine is
    // shared and a single run's tail is noisy. The sync baseline is far off; one run suffices.
    let (mut idles, mut loads) = (Vec::new(), Vec::new());
    for _ in 0..p.rounds {
        idles.push(scenario(&p, Mode::Idle).context("idle run")?);
        loads.push(scenario(&p, Mode::Load).context("run under load")?);
    }
    let idle = Outcome::median(idles);
    let load = Outcome::median(loads);
    let sync = scenario(&p, Mode::Sync).context("sync-mode run under load")?;
    let op_secs = 2.0 * p.objects() as f64 * p.object_delay.as_secs_f64();
    let setup = format!(
        "{} empty volumes, one every {} ms, while {} volume deletions each flatten 2 clones \
         ({} objects x {} ms, {op_secs:.1} s per deletion); fake backend {} ms per call; \
         15 workers, runner 10 running; idle and load: median of {} alternating runs",
        p.creates,
        p.interval.as_millis(),
        p.long_ops,
        p.objects(),
        p.object_delay.as_millis(),
        p.call_delay.as_millis(),
        p.rounds,
    );
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    Ok(vec![
        Figure {
            name: "responsiveness_p99_load_vs_idle".into(),
            ours: ms(load.p99),
            reference: ms(idle.p99),
            unit: "ms to Available (p99), lower is better; target ratio <= 1.2",
            note: format!(
                "{setup}; load max {:.1} ms, {} deletions still flattening at the end",
                ms(load.max),
                load.still_loaded
            ),
        },
        Figure {
            name: "responsiveness_p50_load_vs_idle".into(),
            ours: ms(load.p50),
            reference: ms(idle.p50),
            unit: "ms to Available (p50), lower is better",
            note: setup.clone(),
        },
        Figure {
            name: "responsiveness_sync_p99_load_vs_idle".into(),
            ours: ms(sync.p99),
            reference: ms(idle.p99),
            unit: "ms to Available (p99) of the sync baseline (Go design) under load vs idle",
            note: format!(
                "{setup}; sync_long_ops = true (flatten inline on the reconcile workers); \
                 sync p50 {:.1} ms, max {:.1} ms",
                ms(sync.p50),
                ms(sync.max)
            ),
        },
        Figure {
            name: "responsiveness_p99_ours_vs_sync".into(),
            ours: ms(load.p99),
            reference: ms(sync.p99),
            unit: "ms to Available (p99) under load, ours vs the sync baseline; lower is better",
            note: setup,
        },
    ])
}

/// One run on a fresh runtime (2 worker threads, as the daemon on this machine).
fn scenario(p: &Params, mode: Mode) -> Result<Outcome> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let out = rt.block_on(scenario_async(p, mode));
    // Flattens still sleeping in the background are dropped with the runtime.
    rt.shutdown_background();
    let out = out?;
    eprintln!(
        "  responsiveness {mode:?}: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        out.p50.as_secs_f64() * 1e3,
        out.p99.as_secs_f64() * 1e3,
        out.max.as_secs_f64() * 1e3
    );
    Ok(out)
}

/// Every backend call the controllers make for these volumes.
const CALLS: &[Op] = &[
    Op::CreateImage,
    Op::Stat,
    Op::ListImages,
    Op::Resize,
    Op::Remove,
    Op::CreateSnapshot,
    Op::Protect,
    Op::Unprotect,
    Op::IsProtected,
    Op::RemoveSnapshot,
    Op::ListSnapshots,
    Op::Clone,
    Op::ListChildren,
    Op::Flatten,
    Op::MetadataGet,
    Op::MetadataSet,
    Op::MetadataList,
    Op::ClientKey,
];

async fn scenario_async(p: &Params, mode: Mode) -> Result<Outcome> {
    let cluster = MemoryBackend::new("bench");
    for op in CALLS {
        cluster.set_delay(*op, p.call_delay);
    }
    let objects: Arc<dyn store::Backend> = Arc::new(store::MemoryBackend::new());
    let images = Store::<Image>::open(objects.clone()).await?;
    let snapshots = Store::<Snapshot>::open(objects).await?;
    let runner = Runner::new(RunnerConfig::default());
    let cfg = ControllerConfig {
        monitors: "127.0.0.1:6789".into(),
        client: "client.bench".into(),
        sync_long_ops: mode == Mode::Sync,
        ..ControllerConfig::default()
    };
    let controllers = Controllers::new(
        images.clone(),
        snapshots.clone(),
        Arc::new(cluster.clone()),
        Arc::new(NoImages),
        runner.clone(),
        Arc::new(EventStore::new(100, Duration::from_secs(300))),
        cfg,
    );
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(controllers.run(shutdown.clone()));

    // The world: volumes with a snapshot and a volume restored from it.
    let setup = Duration::from_secs(60);
    let mut parents = Vec::new();
    for _ in 0..p.long_ops {
        parents.push(
            images
                .create(volume(p.volume_size, None))
                .await?
                .metadata
                .id,
        );
    }
    wait_until(&images, "parent volumes Available", setup, |all| {
        all.iter()
            .filter(|i| i.status.state == ImageState::Available)
            .count()
            >= p.long_ops
    })
    .await?;
    let mut snaps = Vec::new();
    for parent in &parents {
        let s = Snapshot::new(
            store::new_id(),
            SnapshotSource {
                ironcore_image: String::new(),
                volume_image_id: parent.clone(),
            },
        );
        snaps.push(snapshots.create(managed(s)).await?.metadata.id);
    }
    wait_until(&snapshots, "snapshots Ready", setup, |all| {
        all.iter()
            .filter(|s| s.status.state == SnapshotState::Ready)
            .count()
            >= p.long_ops
    })
    .await?;
    for s in &snaps {
        images
            .create(volume(p.volume_size, Some(s.clone())))
            .await?;
    }
    wait_until(&images, "restored volumes Available", setup, |all| {
        all.iter()
            .filter(|i| i.status.state == ImageState::Available)
            .count()
            >= 2 * p.long_ops
    })
    .await?;

    // The load.
    if mode != Mode::Idle {
        cluster.set_chunk_delay(Op::Flatten, p.object_delay);
        for parent in &parents {
            images.delete(parent).await?;
        }
        let busy = p.long_ops.min(10);
        wait_until(&images, "deletions flattening", setup, |all| {
            flattening(all) >= busy
        })
        .await?;
    }

    // The measurement.
    let pending: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let took: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let mut watch = images.watch(ListOptions::default())?;
    let collector = {
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
    let mut ticker = tokio::time::interval(p.interval);
    for _ in 0..p.creates {
        ticker.tick().await;
        let vol = volume(p.volume_size, None);
        lock(&pending).insert(vol.metadata.id.clone(), Instant::now());
        images.create(vol).await?;
    }
    let deadline = Instant::now() + Duration::from_secs(180);
    while lock(&took).len() < p.creates {
        if Instant::now() > deadline {
            bail!(
                "only {} of {} volumes became Available within 180 s",
                lock(&took).len(),
                p.creates
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let still_loaded = match mode {
        Mode::Idle => 0,
        _ => flattening(&images.list(&ListOptions::default()).await?),
    };
    collector.abort();

    shutdown.cancel();
    task.abort();
    runner
        .shutdown(ShutdownMode::Cancel {
            deadline: Duration::ZERO,
        })
        .await;

    let mut took = std::mem::take(&mut *lock(&took));
    took.sort();
    Ok(Outcome {
        p50: percentile(&took, 0.50),
        p99: percentile(&took, 0.99),
        max: took.last().copied().unwrap_or_default(),
        still_loaded,
    })
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn flattening(all: &[Image]) -> usize {
    all.iter()
        .filter(|i| i.status.state == ImageState::FlatteningChildren)
        .count()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A volume as the volume server creates it (manager and class labels, class limits).
fn volume(size: u64, snapshot_ref: Option<String>) -> Image {
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

fn managed<T: Object>(mut obj: T) -> T {
    obj.metadata_mut()
        .labels
        .insert(MANAGER_LABEL.into(), MANAGER.into());
    obj
}

/// Polls the store until `done` holds for its objects.
async fn wait_until<T: Object>(
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
