//! The loaded lines of figure `ceph` (cargo feature `ceph` and a cluster): how long a plain empty
//! volume takes to become `Available` on the real cluster while encrypted volumes are formatted
//! and OS-image volumes wait for a registry that never answers.
//!
//! The controllers run in process on `CephBackend` as the daemon wires them (daemon default
//! flags: 15 workers per reconciler, runner 10 in classes populate/fill/flatten 5/3/2; the
//! daemon's `OciImageSource` with its default timeouts, connect 10 s and request 60 s). The store
//! is in memory: the pool's omap collections may belong to another provider (the integration
//! suites share the cluster), and the store is the same on both sides of every ratio.
//!
//! * **idle**: `creates` empty 256 MiB volumes created one by one (each waits for `Available`).
//! * **loaded**: first `encrypted` encrypted empty 256 MiB volumes (real LUKS2 format by librbd:
//!   argon2 key derivation, seconds of CPU and up to 1 GiB of memory each) and `registry`
//!   OS-image volumes whose registry (a loopback listener) accepts and never answers are created
//!   at once; once at least half of them are `Formatting` or `Resolving`, the same creates.
//! * **registry only**: the registry part of the load alone (no key derivation on the machine).
//! * **loaded, unbounded formats** (the reference: this provider before
//!   `CephConfig::format_concurrency`): the full load with every LUKS2 format on the blocking
//!   pool at normal priority, as many at once as the runner submits (`unbounded.rs`). The daemon
//!   now runs them one by one under `SCHED_IDLE` (`CephConfig::format_concurrency`).
//!
//! Idle, loaded, registry only and loaded with unbounded formats alternate `rounds` times; the upper median
//! of each counts (with two rounds: the higher of the two).
//! * **gopool, registry only** (one run): `Baseline::GoPool` (resolve and format in the pass) under
//!   the registry part of the load alone: every reconcile worker waits for the registry. The
//!   encrypted part is left out of this baseline on purpose: in the pass, all 15 formats would
//!   run at once, ~15 GiB of argon2 memory on a machine shared with other work. Created volumes
//!   not `Available` by [`Params::cap`] count with their time so far (a lower bound).
//!
//! Every rbd image the lines create is `img_<id>` of a volume they created; all are removed at the
//! end of each run (retried while a format still holds one open).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use ceph::CephBackend;
use rbd::BlockBackend;
use store::{ImageState, ListOptions};
use volumeprovider::image_source::{OciImageSource, OciOptions};

use super::unbounded::UnboundedFormat;
use super::world::{
    controller_config, encrypted_volume, os_volume, volume, wait_until, BlackHole, Clock, Design,
    Provider, Samples,
};
use super::{Figure, Opts};

/// Size of every volume the lines create (thin: nothing is written but LUKS2 headers).
const SIZE: u64 = 256 << 20;

struct Params {
    encrypted: usize,
    registry: usize,
    creates: usize,
    rounds: usize,
    /// Longest a run's creates may take in all (then the run ends, lower bounds).
    cap: Duration,
}

impl Params {
    fn new(quick: bool) -> Params {
        if quick {
            Params {
                encrypted: 2,
                registry: 2,
                creates: 3,
                rounds: 1,
                cap: Duration::from_secs(10),
            }
        } else {
            Params {
                encrypted: 15,
                registry: 15,
                creates: 20,
                rounds: 2,
                cap: Duration::from_secs(120),
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Load {
    Idle,
    Both,
    RegistryOnly,
}

struct Outcome {
    samples: Samples,
    /// Volumes still formatting / resolving when the creates were done.
    still: (usize, usize),
}

pub fn run(
    opts: &Opts,
    rt: &tokio::runtime::Runtime,
    backend: &CephBackend,
) -> Result<Vec<Figure>> {
    let p = Params::new(opts.quick);
    let sides = [
        (Load::Idle, false),
        (Load::Both, false),
        (Load::RegistryOnly, false),
        (Load::Both, true),
    ];
    let mut runs: Vec<Vec<Outcome>> = sides.iter().map(|_| Vec::new()).collect();
    for _ in 0..p.rounds {
        for (i, (load, unbounded)) in sides.iter().enumerate() {
            runs[i].push(scenario(rt, backend, &p, Design::Ours, *load, *unbounded)?);
        }
    }
    let pool = scenario(rt, backend, &p, Design::GoPool, Load::RegistryOnly, false)?;
    let [idle, loaded, registry, unbounded] = [0, 1, 2, 3].map(|i| &runs[i]);
    let med = |v: &[Outcome], q: f64| -> f64 {
        let mut x: Vec<Duration> = v.iter().map(|o| o.samples.percentile(q)).collect();
        x.sort();
        x[x.len() / 2].as_secs_f64()
    };
    let setup = format!(
        "{} empty 256 MiB volumes one by one on CephBackend (store in memory, daemon defaults); \
         load: {} encrypted 256 MiB creates (librbd LUKS2 format) + {} OS-image volumes whose \
         registry accepts and never answers; medians of {} alternating runs",
        p.creates, p.encrypted, p.registry, p.rounds
    );
    let target = "s to Available (p99), lower is better; target ratio <= 1.5";
    Ok(vec![
        Figure {
            name: "ceph_responsiveness_p99_loaded_vs_idle".into(),
            ours: med(loaded, 0.99),
            reference: med(idle, 0.99),
            unit: target,
            note: format!(
                "{setup}; loaded runs: {}; idle runs: {}",
                describe(loaded),
                describe(idle)
            ),
        },
        Figure {
            name: "ceph_responsiveness_p50_loaded_vs_idle".into(),
            ours: med(loaded, 0.50),
            reference: med(idle, 0.50),
            unit: "s to Available (p50), lower is better",
            note: "set-up as above".into(),
        },
        Figure {
            name: "ceph_responsiveness_p99_registry_vs_idle".into(),
            ours: med(registry, 0.99),
            reference: med(idle, 0.99),
            unit: target,
            note: format!(
                "the registry part of the load alone (no encrypted creates): {}",
                describe(registry)
            ),
        },
        Figure {
            name: "ceph_responsiveness_p99_loaded_vs_unbounded_formats".into(),
            ours: med(loaded, 0.99),
            reference: med(unbounded, 0.99),
            unit:
                "s to Available (p99) under the full load: ours (formats one by one, SCHED_IDLE) \
                   vs formats unbounded at normal priority (before); lower is better",
            note: format!(
                "the full load with every LUKS2 format on the blocking pool at normal priority, as \
                 many at once as the runner submits (src/unbounded.rs): {}",
                describe(unbounded)
            ),
        },
        Figure {
            name: "ceph_responsiveness_p50_loaded_vs_unbounded_formats".into(),
            ours: med(loaded, 0.50),
            reference: med(unbounded, 0.50),
            unit: "s to Available (p50) under the full load: ours vs formats unbounded (before)",
            note: "set-up as above".into(),
        },
        Figure {
            name: "ceph_responsiveness_gopool_p99_registry_vs_idle".into(),
            ours: pool.samples.percentile(0.99).as_secs_f64(),
            reference: med(idle, 0.99),
            unit: "s to Available (p99) of the Go pool design under the registry load vs idle \
                   (ours)",
            note: format!(
                "{}; {} OS-image volumes whose registry never answers, no encrypted creates; one \
                 run: {}",
                Design::GoPool.describe(),
                p.registry,
                describe(std::slice::from_ref(&pool))
            ),
        },
    ])
}

/// "p99 … s (…)" of each run, for notes.
fn describe(v: &[Outcome]) -> String {
    v.iter()
        .map(|o| {
            format!(
                "p99 {:.2} s ({} formatting, {} resolving at the end{})",
                o.samples.percentile(0.99).as_secs_f64(),
                o.still.0,
                o.still.1,
                if o.samples.censored > 0 {
                    format!(", {} not Available: lower bound", o.samples.censored)
                } else {
                    String::new()
                }
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn scenario(
    rt: &tokio::runtime::Runtime,
    backend: &CephBackend,
    p: &Params,
    design: Design,
    load: Load,
    unbounded: bool,
) -> Result<Outcome> {
    let out = rt.block_on(async {
        let registry = BlackHole::start().await?;
        let source =
            OciImageSource::new(OciOptions::default()).map_err(|e| anyhow!("image source: {e}"))?;
        let mut cfg = controller_config(design)?;
        cfg.monitors = std::env::var("CEPH_MONITORS").unwrap_or_default();
        cfg.client = std::env::var("CEPH_CLIENT").unwrap_or_else(|_| "client.cephvol".into());
        let block: Arc<dyn BlockBackend> = if unbounded {
            Arc::new(UnboundedFormat(backend.clone()))
        } else {
            Arc::new(backend.clone())
        };
        let provider = Provider::start(block, Arc::new(source), design, cfg).await?;
        let result = measure(p, load, &registry, &provider).await;
        let ids: Vec<String> = provider
            .images
            .list(&ListOptions::default())
            .await
            .map(|all| all.into_iter().map(|i| i.metadata.id).collect())
            .unwrap_or_default();
        provider.stop(Duration::from_secs(5)).await;
        remove_images(backend, &ids).await;
        result
    });
    let side = format!(
        "{} {load:?}{}",
        design.label(),
        if unbounded { " unbounded formats" } else { "" }
    );
    let out = out.with_context(|| format!("ceph {side}"))?;
    eprintln!(
        "  ceph responsiveness {side}: p50 {:.2} s, p99 {:.2} s, {} not Available; {} \
         formatting, {} resolving at the end",
        out.samples.percentile(0.5).as_secs_f64(),
        out.samples.percentile(0.99).as_secs_f64(),
        out.samples.censored,
        out.still.0,
        out.still.1
    );
    Ok(out)
}

async fn measure(
    p: &Params,
    load: Load,
    registry: &BlackHole,
    provider: &Provider,
) -> Result<Outcome> {
    let images = &provider.images;
    let mut started = 0;
    if load == Load::Both {
        for _ in 0..p.encrypted {
            images.create(encrypted_volume(SIZE)?).await?;
        }
        started += p.encrypted;
    }
    if load != Load::Idle {
        for i in 0..p.registry {
            let reference = registry.reference(&format!("os-{i}"));
            images.create(os_volume(SIZE, &reference)).await?;
        }
        started += p.registry;
        wait_until(
            images,
            "the load running",
            Duration::from_secs(120),
            |all| {
                let busy = all
                    .iter()
                    .filter(|i| {
                        matches!(
                            i.status.state,
                            ImageState::Formatting | ImageState::Resolving
                        )
                    })
                    .count();
                busy >= started.div_ceil(2)
            },
        )
        .await?;
    }
    let clock = Clock::start(images)?;
    let deadline = Instant::now() + p.cap;
    for n in 1..=p.creates {
        let vol = volume(SIZE, None);
        clock.begin(&vol.metadata.id);
        images.create(vol).await?;
        if !clock.wait_done(n, deadline).await {
            break;
        }
    }
    let still = (
        provider.count(&[ImageState::Formatting]).await?,
        provider.count(&[ImageState::Resolving]).await?,
    );
    Ok(Outcome {
        samples: clock.finish(),
        still,
    })
}

/// Removes `img_<id>` of every volume (missing ones ignored), retrying for up to 3 minutes while
/// an image is still open (a LUKS2 format ends in the background after its operation stopped).
async fn remove_images(backend: &CephBackend, ids: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut left: Vec<String> = ids
        .iter()
        .map(|id| controllers::volume_image_name(id))
        .collect();
    while !left.is_empty() {
        let mut busy = Vec::new();
        for name in left {
            match backend.remove_image(&name).await {
                Ok(()) | Err(rbd::RbdError::NotFound(_)) => {}
                Err(e) => busy.push((name, e)),
            }
        }
        if busy.is_empty() || Instant::now() > deadline {
            for (name, e) in &busy {
                eprintln!("  ceph responsiveness: could not remove {name}: {e}");
            }
            return;
        }
        left = busy.into_iter().map(|(n, _)| n).collect();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
