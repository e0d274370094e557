//! Figure `responsiveness`: how fast an empty volume becomes `Available` while long operations of
//! every kind run, for this provider and for the Go provider's two designs.
//!
//! The provider is wired as the daemon wires it (`store::Store` on `store::MemoryBackend`,
//! `rbd_testkit::fake::MemoryBackend`, the runner and controllers with the daemon's default flags:
//! 15 workers per reconciler, `--async-max-workers` 10 in classes populate/fill/flatten 5/3/2,
//! the daemon's `EventStore`), in real time. The fake backend waits [`Params::call_delay`] at the
//! start of every metadata call (a Ceph round trip).
//!
//! The world: `deletions` volumes, each with a snapshot and a volume restored from it. Loads
//! ([`Load`]), each alone and all together:
//! * **encrypted**: `encrypted` encrypted empty volumes are created; each LUKS2 format takes
//!   [`Params::format_delay`] (Ceph Pacific derives the key for seconds);
//! * **registry**: `registry` OS-image volumes whose registry accepts the connection and never
//!   answers (a loopback listener), resolved by the daemon's `OciImageSource` with its default
//!   timeouts (connect 10 s, request 60 s): each resolve really blocks on the network;
//! * **flatten**: the `deletions` volumes are deleted; each deletion re-homes the snapshot and
//!   flattens two clones at [`Params::object_delay`] per 4 MiB object;
//! * **all**: the three at once.
//!
//! Once the load runs (at least 10 volumes in the state of each of its parts: `Formatting`,
//! `Resolving`, `FlatteningChildren`; a baseline whose blocked workers keep a part from starting
//! within 15 s is measured once 10 volumes of any part are loaded), `creates` empty volumes are created through the store, one every `interval`, and the time
//! from `Store::create` until the store's watch shows the volume `Available` is recorded.
//! Volumes not `Available` [`Params::cap`] after the last create count with their time so far
//! (the percentile is then a lower bound, said in the note).
//!
//! Sides, each on a fresh world and runtime: **idle** (the same world, no load) and **ours**
//! under each load alternate `rounds` times and the medians count; the baselines run once per
//! load (`--quick`: only under all loads together): **gopool** (`Baseline::GoPool`) and
//! **goinline** (`Baseline::GoInline`), see `world::Design`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rbd_testkit::fake::{MemoryBackend, Op};
use store::{ImageState, Snapshot, SnapshotSource, SnapshotState};
use volumeprovider::image_source::{OciImageSource, OciOptions};

use super::util::on_fresh_runtime;
use super::world::{
    controller_config, encrypted_volume, managed, os_volume, volume, wait_until, BlackHole, Clock,
    Design, Provider, Samples, MIB,
};
use super::{Figure, Opts};

/// Sizes and latencies of one run.
struct Params {
    /// Volumes deleted by the flatten load (each flattens two clones).
    deletions: usize,
    /// Encrypted empty volumes created by the encrypted load.
    encrypted: usize,
    /// OS-image volumes of the registry load.
    registry: usize,
    /// Empty volumes created and timed.
    creates: usize,
    /// Time between two creates.
    interval: Duration,
    /// Size of every volume (4 MiB objects).
    volume_size: u64,
    /// Flatten time per 4 MiB object.
    object_delay: Duration,
    /// One LUKS2 format.
    format_delay: Duration,
    /// Latency of every other backend call.
    call_delay: Duration,
    /// Idle and ours runs per load (the medians count).
    rounds: usize,
    /// How long after the last create the run waits for the timed volumes.
    cap: Duration,
    /// Loads the baselines run under.
    baseline_loads: &'static [Load],
}

impl Params {
    fn new(quick: bool) -> Params {
        let full = Params {
            deletions: 20,
            encrypted: 15,
            registry: 15,
            creates: 300,
            interval: Duration::from_millis(20),
            volume_size: 32 * MIB,
            object_delay: Duration::from_millis(500),
            format_delay: Duration::from_secs(5),
            call_delay: Duration::from_millis(2),
            rounds: 3,
            cap: Duration::from_secs(30),
            baseline_loads: &Load::LOADED,
        };
        if quick {
            Params {
                creates: 40,
                object_delay: Duration::from_millis(100),
                rounds: 1,
                cap: Duration::from_secs(3),
                baseline_loads: &[Load::All],
                ..full
            }
        } else {
            full
        }
    }

    fn objects(&self) -> u64 {
        self.volume_size
            .div_ceil(rbd_testkit::fake::DEFAULT_CHUNK_SIZE)
    }
}

/// What runs while the volumes are timed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Load {
    Idle,
    Encrypted,
    Registry,
    Flatten,
    All,
}

impl Load {
    const LOADED: [Load; 4] = [Load::Encrypted, Load::Registry, Load::Flatten, Load::All];

    fn name(self) -> &'static str {
        match self {
            Load::Idle => "idle",
            Load::Encrypted => "encrypted",
            Load::Registry => "registry",
            Load::Flatten => "flatten",
            Load::All => "all",
        }
    }

    fn encrypted(self) -> bool {
        matches!(self, Load::Encrypted | Load::All)
    }

    fn registry(self) -> bool {
        matches!(self, Load::Registry | Load::All)
    }

    fn flatten(self) -> bool {
        matches!(self, Load::Flatten | Load::All)
    }
}

/// What one run measured.
#[derive(Clone)]
struct Outcome {
    p50: Duration,
    p99: Duration,
    max: Duration,
    /// Timed volumes not `Available` when the run ended.
    censored: usize,
    /// Volumes still formatting / resolving / flattening when the run ended.
    still: [usize; 3],
}

impl Outcome {
    fn of(s: &Samples, still: [usize; 3]) -> Outcome {
        Outcome {
            p50: s.percentile(0.50),
            p99: s.percentile(0.99),
            max: s.max(),
            censored: s.censored,
            still,
        }
    }

    /// Field-wise median of several runs.
    fn median(runs: &[Outcome]) -> Outcome {
        fn mid<T: Ord + Copy + Default>(mut v: Vec<T>) -> T {
            v.sort();
            v.get(v.len() / 2).copied().unwrap_or_default()
        }
        Outcome {
            p50: mid(runs.iter().map(|o| o.p50).collect()),
            p99: mid(runs.iter().map(|o| o.p99).collect()),
            max: mid(runs.iter().map(|o| o.max).collect()),
            censored: mid(runs.iter().map(|o| o.censored).collect()),
            still: [0, 1, 2].map(|i| mid(runs.iter().map(|o| o.still[i]).collect())),
        }
    }

    /// "p99 … ms" plus what was left, for notes.
    fn describe(&self, p: &Params) -> String {
        let lower = if self.censored > 0 {
            format!(
                " ({} of {} not Available {} s after the last create: lower bounds)",
                self.censored,
                p.creates,
                p.cap.as_secs()
            )
        } else {
            String::new()
        };
        format!(
            "p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms{lower}; at the end {} formatting, {} \
             resolving, {} flattening",
            ms(self.p50),
            ms(self.p99),
            ms(self.max),
            self.still[0],
            self.still[1],
            self.still[2]
        )
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Runs every side and returns the figures.
pub fn run(opts: &Opts, _rt: &tokio::runtime::Runtime) -> Result<Vec<Figure>> {
    let p = Params::new(opts.quick);
    // Idle and ours alternate, `rounds` times each, and the medians count: the machine is shared
    // and a single run's tail is noisy. The baselines are far off (or not): one run each.
    let mut idles = Vec::new();
    let mut ours: Vec<Vec<Outcome>> = vec![Vec::new(); Load::LOADED.len()];
    for _ in 0..p.rounds {
        idles.push(scenario(&p, Design::Ours, Load::Idle).context("idle run")?);
        for (i, load) in Load::LOADED.iter().enumerate() {
            ours[i].push(
                scenario(&p, Design::Ours, *load)
                    .with_context(|| format!("run under the {} load", load.name()))?,
            );
        }
    }
    let mut baselines = Vec::new();
    for load in p.baseline_loads {
        for design in [Design::GoPool, Design::GoInline] {
            let o = scenario(&p, design, *load).with_context(|| {
                format!("{} run under the {} load", design.label(), load.name())
            })?;
            baselines.push((design, *load, o));
        }
    }
    let idle = Outcome::median(&idles);
    let setup = format!(
        "{} empty volumes, one every {} ms; loads: {} encrypted creates (LUKS2 format {} s \
         each), {} OS-image volumes whose registry (loopback) accepts and never answers \
         (OciImageSource, default timeouts), {} deletions flattening 2 clones each ({} objects \
         x {} ms); fake backend {} ms per call; daemon defaults (15 workers, runner 10); idle \
         {}",
        p.creates,
        p.interval.as_millis(),
        p.encrypted,
        p.format_delay.as_secs_f64(),
        p.registry,
        p.deletions,
        p.objects(),
        p.object_delay.as_millis(),
        p.call_delay.as_millis(),
        idle.describe(&p),
    );

    let mut out = Vec::new();
    let mut ours_all = None;
    for (i, load) in Load::LOADED.iter().enumerate() {
        let o = Outcome::median(&ours[i]);
        // The set-up once, in the first note.
        let tail = if i == 0 {
            setup.as_str()
        } else {
            "set-up as above"
        };
        out.push(Figure {
            name: format!("responsiveness_p99_{}_vs_idle", load.name()),
            ours: ms(o.p99),
            reference: ms(idle.p99),
            unit: "ms to Available (p99), lower is better; target ratio <= 1.2",
            note: format!(
                "{} load, ours: {}; medians of {} alternating runs; {tail}",
                load.name(),
                o.describe(&p),
                p.rounds
            ),
        });
        if *load == Load::All {
            out.push(Figure {
                name: "responsiveness_p50_all_vs_idle".into(),
                ours: ms(o.p50),
                reference: ms(idle.p50),
                unit: "ms to Available (p50), lower is better",
                note: format!("all loads, ours; medians of {} runs", p.rounds),
            });
            ours_all = Some(o);
        }
    }
    for (design, load, o) in &baselines {
        out.push(Figure {
            name: format!(
                "responsiveness_{}_p99_{}_vs_idle",
                design.label(),
                load.name()
            ),
            ours: ms(o.p99),
            reference: ms(idle.p99),
            unit: "ms to Available (p99) of a baseline design under load vs idle (ours)",
            note: format!(
                "{} load, {}: {}; one run",
                load.name(),
                design.describe(),
                o.describe(&p)
            ),
        });
    }
    if let Some(all) = ours_all {
        for (design, load, o) in &baselines {
            if *load == Load::All {
                out.push(Figure {
                    name: format!("responsiveness_p99_all_ours_vs_{}", design.label()),
                    ours: ms(all.p99),
                    reference: ms(o.p99),
                    unit: "ms to Available (p99) under all loads, ours vs the baseline; lower \
                           is better",
                    note: format!("ours (median) vs {} (one run)", design.label()),
                });
            }
        }
    }
    Ok(out)
}

/// One run on a fresh runtime (2 worker threads, as the daemon on this machine).
fn scenario(p: &Params, design: Design, load: Load) -> Result<Outcome> {
    let out = on_fresh_runtime(scenario_async(p, design, load))??;
    eprintln!(
        "  responsiveness {} {}: {}",
        design.label(),
        load.name(),
        out.describe(p)
    );
    Ok(out)
}

/// Every metadata call the controllers make for these volumes.
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

async fn scenario_async(p: &Params, design: Design, load: Load) -> Result<Outcome> {
    let cluster = MemoryBackend::new("bench");
    for op in CALLS {
        cluster.set_delay(*op, p.call_delay);
    }
    cluster.set_delay(Op::EncryptionFormat, p.format_delay);
    let registry = BlackHole::start().await?;
    let source = OciImageSource::new(OciOptions::default())
        .map_err(|e| anyhow::anyhow!("image source: {e}"))?;
    let provider = Provider::start(
        Arc::new(cluster.clone()),
        Arc::new(source),
        design,
        controller_config(design)?,
    )
    .await?;
    let result = measure(p, load, &cluster, &registry, &provider).await;
    provider.stop(Duration::ZERO).await;
    result
}

async fn measure(
    p: &Params,
    load: Load,
    cluster: &MemoryBackend,
    registry: &BlackHole,
    provider: &Provider,
) -> Result<Outcome> {
    let (images, snapshots) = (&provider.images, &provider.snapshots);
    // The world: volumes with a snapshot and a volume restored from it.
    let setup = Duration::from_secs(60);
    let mut parents = Vec::new();
    for _ in 0..p.deletions {
        let v = images.create(volume(p.volume_size, None)).await?;
        parents.push(v.metadata.id);
    }
    wait_until(images, "parent volumes Available", setup, |all| {
        available(all) >= p.deletions
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
    wait_until(snapshots, "snapshots Ready", setup, |all| {
        all.iter()
            .filter(|s| s.status.state == SnapshotState::Ready)
            .count()
            >= p.deletions
    })
    .await?;
    for s in &snaps {
        images
            .create(volume(p.volume_size, Some(s.clone())))
            .await?;
    }
    wait_until(images, "restored volumes Available", setup, |all| {
        available(all) >= 2 * p.deletions
    })
    .await?;

    // The load.
    if load.encrypted() {
        for _ in 0..p.encrypted {
            images.create(encrypted_volume(p.volume_size)?).await?;
        }
    }
    if load.registry() {
        for i in 0..p.registry {
            let reference = registry.reference(&format!("os-{i}"));
            images.create(os_volume(p.volume_size, &reference)).await?;
        }
    }
    if load.flatten() {
        cluster.set_chunk_delay(Op::Flatten, p.object_delay);
        for parent in &parents {
            images.delete(parent).await?;
        }
    }
    if load != Load::Idle {
        // Every part of the load must be running, each as far as when it runs alone: under all
        // loads the formats reach `Formatting` at once, while the deletions are still making
        // their re-home images (a burst of provisioning passes the flatten load alone does not
        // measure either).
        let wanted: Vec<(ImageState, usize)> = [
            (load.encrypted(), ImageState::Formatting, p.encrypted),
            (load.registry(), ImageState::Resolving, p.registry),
            (load.flatten(), ImageState::FlatteningChildren, p.deletions),
        ]
        .into_iter()
        .filter(|(on, _, _)| *on)
        .map(|(_, state, n)| (state, n.min(RUNNING)))
        .collect();
        let running = wait_until(images, "every part of the load running", PARTS, |all| {
            wanted
                .iter()
                .all(|(state, n)| all.iter().filter(|i| i.status.state == *state).count() >= *n)
        })
        .await;
        if running.is_err() {
            // A baseline whose workers are all blocked (the registry load) never gets the other
            // parts going: it is measured once any part runs.
            eprintln!(
                "  responsiveness {}: not every part of the load was running after {PARTS:?}; \
                 measuring once {RUNNING} volumes are loaded",
                load.name()
            );
            wait_until(images, "the load running", setup, |all| {
                all.iter()
                    .filter(|i| LOADED_STATES.contains(&i.status.state))
                    .count()
                    >= RUNNING
            })
            .await?;
        }
    }

    // The measurement.
    let clock = Clock::start(images)?;
    let mut ticker = tokio::time::interval(p.interval);
    for _ in 0..p.creates {
        ticker.tick().await;
        let vol = volume(p.volume_size, None);
        clock.begin(&vol.metadata.id);
        images.create(vol).await?;
    }
    clock.wait_done(p.creates, Instant::now() + p.cap).await;
    let mut still = [0; 3];
    for (i, state) in LOADED_STATES.iter().enumerate() {
        still[i] = provider.count(std::slice::from_ref(state)).await?;
    }
    Ok(Outcome::of(&clock.finish(), still))
}

/// How many volumes of each part of a load must be in its state before the creates start.
const RUNNING: usize = 10;

/// How long a run waits for every part of its load to be running (ours needs about a second).
const PARTS: Duration = Duration::from_secs(15);

/// The states of a volume whose long operation belongs to a load.
const LOADED_STATES: [ImageState; 3] = [
    ImageState::Formatting,
    ImageState::Resolving,
    ImageState::FlatteningChildren,
];

fn available(all: &[store::Image]) -> usize {
    all.iter()
        .filter(|i| i.status.state == ImageState::Available)
        .count()
}
