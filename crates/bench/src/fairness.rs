//! Figure `fairness`: how long one volume deletion takes (its flatten is the long part) while a
//! burst of OS-image populates is queued, against the same deletion alone.
//!
//! Set-up, in real time, on `rbd_testkit::fake::MemoryBackend` with the provider wired as in
//! `responsiveness` (daemon defaults): every metadata call waits [`Params::call_delay`], every
//! 4 MiB write [`Params::write_delay`], every 4 MiB object a flatten copies
//! [`Params::object_delay`]. The deleted volume has a snapshot and a volume restored from it, so
//! its deletion re-homes the snapshot and flattens two clones (the work of `responsiveness`'s
//! flatten load). The populates come from `world::PacedSource`: `populates` OS-image volumes of
//! distinct references, each resolved in [`Params::resolve_delay`] and populated from a
//! [`Params::image_size`] rootfs streamed at [`Params::rate`] (network-bound; its first 5 MiB
//! are data, the rest zeroes the populate skips).
//!
//! **Loaded**: the OS-image volumes are created; once at least 10 snapshots are `Populating`
//! and [`Params::settle`] has passed (every design has then queued or started what it can),
//! the volume is deleted and the time until it is gone from the store is taken. **Alone**: the
//! same deletion without the OS-image volumes. Ours alone and loaded alternate `rounds` times
//! (medians); the other designs run loaded once: **fifo** (the runner without classes),
//! **gopool** and **goinline** (see `world::Design`). Every ratio is against ours alone.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use rbd_testkit::fake::{MemoryBackend, Op};
use store::{ImageState, ListOptions, Snapshot, SnapshotSource, SnapshotState, StoreError};

use super::util::on_fresh_runtime;
use super::world::{
    controller_config, managed, os_volume, volume, wait_until, Design, PacedSource, Provider, MIB,
};
use super::{Figure, Opts};

/// Sizes and latencies.
struct Params {
    /// OS-image volumes (distinct images: one populate each).
    populates: usize,
    /// Rootfs size of each OS image.
    image_size: u64,
    /// Download rate of one rootfs stream, bytes per second.
    rate: f64,
    /// Resolve (and rootfs open) latency of the registry.
    resolve_delay: Duration,
    /// Size of the deleted volume and its clones.
    volume_size: u64,
    /// Flatten time per 4 MiB object.
    object_delay: Duration,
    /// Latency of each 4 MiB write.
    write_delay: Duration,
    /// Latency of every metadata call.
    call_delay: Duration,
    /// Wait between the populates running and the deletion.
    settle: Duration,
    /// Ours alone and loaded, alternating (medians).
    rounds: usize,
}

impl Params {
    fn new(quick: bool) -> Params {
        let full = Params {
            populates: 50,
            image_size: 128 * MIB,
            rate: 32e6,
            resolve_delay: Duration::from_millis(50),
            volume_size: 32 * MIB,
            object_delay: Duration::from_millis(500),
            write_delay: Duration::from_millis(5),
            call_delay: Duration::from_millis(2),
            settle: Duration::from_secs(1),
            rounds: 3,
        };
        if quick {
            Params {
                image_size: 16 * MIB,
                object_delay: Duration::from_millis(100),
                settle: Duration::from_millis(300),
                rounds: 1,
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

/// One deletion's time and how many OS-image volumes were not yet `Available` when it was done.
#[derive(Clone, Copy)]
struct Outcome {
    took: Duration,
    populating: usize,
}

pub fn run(opts: &Opts, _rt: &tokio::runtime::Runtime) -> Result<Vec<Figure>> {
    let p = Params::new(opts.quick);
    let (mut alone, mut loaded) = (Vec::new(), Vec::new());
    for _ in 0..p.rounds {
        alone.push(scenario(&p, Design::Ours, false).context("deletion alone")?);
        loaded.push(scenario(&p, Design::Ours, true).context("deletion during populates")?);
    }
    let mut others = Vec::new();
    for design in [Design::Fifo, Design::GoPool, Design::GoInline] {
        let o = scenario(&p, design, true)
            .with_context(|| format!("{} deletion during populates", design.label()))?;
        others.push((design, o));
    }
    let median = |v: &[Outcome]| -> Outcome {
        let mut v = v.to_vec();
        v.sort_by_key(|o| o.took);
        v[v.len() / 2]
    };
    let alone = median(&alone);
    let ours = median(&loaded);
    let setup = format!(
        "deletion of a {} MiB volume with a snapshot and a restore (2 clones flattened, {} \
         objects x {} ms) while {} OS-image populates are queued ({} MiB rootfs each at {:.0} \
         MB/s, resolve {} ms, {} ms per 4 MiB write); fake backend {} ms per call; daemon \
         defaults (15 workers, runner 10); alone {:.1} s (ours, median of {})",
        p.volume_size / MIB,
        p.objects(),
        p.object_delay.as_millis(),
        p.populates,
        p.image_size / MIB,
        p.rate / 1e6,
        p.resolve_delay.as_millis(),
        p.write_delay.as_millis(),
        p.call_delay.as_millis(),
        alone.took.as_secs_f64(),
        p.rounds,
    );
    let secs = |o: &Outcome| o.took.as_secs_f64();
    let mut out = vec![Figure {
        name: "fairness_flatten_loaded_vs_alone".into(),
        ours: secs(&ours),
        reference: secs(&alone),
        unit: "s until the deleted volume is gone, lower is better; target ratio <= 1.5",
        note: format!(
            "{}; {} OS-image volumes not yet Available when it was done; median of {}; {setup}",
            Design::Ours.describe(),
            ours.populating,
            p.rounds
        ),
    }];
    for (design, o) in others {
        out.push(Figure {
            name: format!("fairness_{}_flatten_loaded_vs_alone", design.label()),
            ours: secs(&o),
            reference: secs(&alone),
            unit: "s until the deleted volume is gone under a baseline design vs ours alone",
            note: format!(
                "{}; {} OS-image volumes not yet Available when it was done; one run; {setup}",
                design.describe(),
                o.populating
            ),
        });
    }
    Ok(out)
}

/// One run on a fresh runtime.
fn scenario(p: &Params, design: Design, loaded: bool) -> Result<Outcome> {
    let out = on_fresh_runtime(scenario_async(p, design, loaded))??;
    eprintln!(
        "  fairness {} {}: deletion {:.2} s, {} OS-image volumes not yet Available",
        design.label(),
        if loaded { "loaded" } else { "alone" },
        out.took.as_secs_f64(),
        out.populating
    );
    Ok(out)
}

async fn scenario_async(p: &Params, design: Design, loaded: bool) -> Result<Outcome> {
    let cluster = MemoryBackend::new("bench");
    for op in [
        Op::CreateImage,
        Op::Stat,
        Op::ListImages,
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
    ] {
        cluster.set_delay(op, p.call_delay);
    }
    cluster.set_chunk_delay(Op::Write, p.write_delay);
    let source = PacedSource {
        resolve_delay: p.resolve_delay,
        size: p.image_size,
        rate: p.rate,
        head: Bytes::from(testdata::pattern(5 * MIB as usize, 11)),
    };
    let provider = Provider::start(
        Arc::new(cluster.clone()),
        Arc::new(source),
        design,
        controller_config(design)?,
    )
    .await?;
    let result = measure(p, loaded, &cluster, &provider).await;
    provider.stop(Duration::ZERO).await;
    result
}

async fn measure(
    p: &Params,
    loaded: bool,
    cluster: &MemoryBackend,
    provider: &Provider,
) -> Result<Outcome> {
    let (images, snapshots) = (&provider.images, &provider.snapshots);
    let setup = Duration::from_secs(60);
    let parent = images
        .create(volume(p.volume_size, None))
        .await?
        .metadata
        .id;
    wait_until(images, "the volume Available", setup, |all| {
        all.iter().any(|i| i.status.state == ImageState::Available)
    })
    .await?;
    let snap = Snapshot::new(
        store::new_id(),
        SnapshotSource {
            ironcore_image: String::new(),
            volume_image_id: parent.clone(),
        },
    );
    snapshots.create(managed(snap.clone())).await?;
    wait_until(snapshots, "its snapshot Ready", setup, |all| {
        all.iter().any(|s| s.status.state == SnapshotState::Ready)
    })
    .await?;
    images
        .create(volume(p.volume_size, Some(snap.metadata.id.clone())))
        .await?;
    wait_until(images, "the restore Available", setup, |all| {
        all.iter()
            .filter(|i| i.status.state == ImageState::Available)
            .count()
            >= 2
    })
    .await?;
    cluster.set_chunk_delay(Op::Flatten, p.object_delay);

    if loaded {
        for i in 0..p.populates {
            let reference = format!("registry.bench:5000/os/image-{i}:v1");
            images.create(os_volume(p.image_size, &reference)).await?;
        }
        wait_until(snapshots, "populates running", setup, |all| {
            populating(all) >= p.populates.min(10)
        })
        .await?;
        tokio::time::sleep(p.settle).await;
    }

    let t0 = Instant::now();
    images.delete(&parent).await?;
    let deadline = t0 + Duration::from_secs(600);
    loop {
        match images.get(&parent).await {
            Err(StoreError::NotFound(_)) => break,
            Err(e) => return Err(e.into()),
            Ok(_) if Instant::now() > deadline => {
                return Err(anyhow!("the deletion did not finish within 600 s"))
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    let took = t0.elapsed();
    let left = images
        .list(&ListOptions::default())
        .await?
        .iter()
        .filter(|i| !i.spec.image.is_empty() && i.status.state != ImageState::Available)
        .count();
    Ok(Outcome {
        took,
        populating: left,
    })
}

fn populating(all: &[Snapshot]) -> usize {
    all.iter()
        .filter(|s| s.status.state == SnapshotState::Populating)
        .count()
}
