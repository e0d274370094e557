//! `cephvol-bench`: benchmarks that print how cephvol compares with a reference, one line per figure:
//! `name ours reference ratio` (ratio = ours / reference, higher is better for throughputs).
//!
//! Usage: `cephvol-bench [FIGURE...] [--quick] [--json PATH]` (`cargo xtask bench` runs it in release
//! mode). Without a figure name every figure runs. `--quick` shrinks the work so CI can run it as a
//! smoke test (timings are then only indicative); `--json PATH` also writes all lines as JSON
//! (`{"figures":[{"name","ours","reference","ratio","unit","note"}]}`).
//!
//! # Figures
//! * `populate` — OS-image populate throughput (MB/s, 10^6 bytes per second) of a 256 MiB rootfs
//!   (`--quick`: 32 MiB) written with `BlockBackend::write_stream` into `rbd_testkit::fake::MemoryBackend`
//!   at the configured queue depth (`ControllerConfig::default().populate_queue_depth`, 4) against
//!   queue depth 1 (the Go provider's one write in flight). Write requests are 4 MiB (one RADOS
//!   object) and the fake waits **5 ms per write request** (`set_chunk_delay(Op::Write, 5 ms)`),
//!   modelling the round trip of a replicated 4 MiB object write. The data is random (no chunk is
//!   skipped as zero). Lines:
//!   - `populate_qd4_vs_qd1`: the source is an in-memory stream of 64 KiB chunks (what an HTTP
//!     body delivers), so the figure isolates the write pipeline;
//!   - `populate_qd4_vs_qd1_20ms`: the same with **20 ms per write** (HDD OSDs or a busy network),
//!     where the write latency rather than the copying dominates;
//!   - `populate_registry_qd4_vs_qd1`: the first line's setup through the real path — Debian's `docker-registry`
//!     on 127.0.0.1, `OciImageSource` resolving the ironcore image and streaming the layer with
//!     sha256 verification. Skipped (note on stderr) when `docker-registry` is not installed.
//!
//!   Each side runs 3 times (`--quick`: once); the median counts.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use controllers::{ControllerConfig, ImageSource};
use rbd::{BlockBackend, ByteStream, CancellationToken, WriteOptions};
use rbd_testkit::fake::{MemoryBackend, Op};
use registry_fixture::{IronImage, TestRegistry};
use testdata::pattern;
use volumeprovider::image_source::{OciImageSource, OciOptions};

// The other figures, one module each (see their module docs).
mod cluster;
#[cfg(feature = "ceph")]
mod cluster_load;
#[cfg(feature = "ceph")]
mod delete;
mod fairness;
#[cfg(feature = "ceph")]
mod omap_scale;
#[cfg(feature = "ceph")]
mod os_volume;
#[cfg(feature = "ceph")]
mod populate_limit;
mod responsiveness;
mod rss;
mod store;
#[cfg(feature = "ceph")]
mod unbounded;
mod util;
mod world;

const MIB: usize = 1024 * 1024;

/// Command-line options shared by all figures.
struct Opts {
    quick: bool,
}

/// One printed line.
struct Figure {
    name: String,
    ours: f64,
    reference: f64,
    unit: &'static str,
    note: String,
}

impl Figure {
    fn ratio(&self) -> f64 {
        if self.reference > 0.0 {
            self.ours / self.reference
        } else {
            0.0
        }
    }
}

type FigureFn = fn(&Opts, &tokio::runtime::Runtime) -> Result<Vec<Figure>>;

/// Every figure: name (as given on the command line), what it measures, how.
const FIGURES: &[(&str, &str, FigureFn)] = &[
    (
        "populate",
        "OS-image populate throughput at the configured queue depth vs queue depth 1",
        populate,
    ),
    (
        "responsiveness",
        "time to Available of empty volumes under format/resolve/flatten loads: ours and the Go designs vs idle",
        responsiveness::run,
    ),
    (
        "fairness",
        "one deletion's flatten while 50 OS-image populates are queued vs alone",
        fairness::run,
    ),
    (
        "store",
        "store Create/Get/Update/List at 10k objects: hostdir (and omap) vs memory",
        store::run,
    ),
    (
        "ceph",
        "real Ceph: populate vs rbd import, flatten vs rbd flatten, create volume vs rbd create, creates under load vs idle, delete deferred vs flatten",
        cluster::run,
    ),
    (
        "rss",
        "daemon RSS idle and with 10k volumes, against the budgets",
        rss::run,
    ),
];

fn usage() -> String {
    let mut s =
        String::from("usage: cephvol-bench [FIGURE...] [--quick] [--json PATH]\nfigures:\n");
    for (name, what, _) in FIGURES {
        s.push_str(&format!("  {name:<12} {what}\n"));
    }
    s
}

fn main() -> Result<()> {
    let mut names = Vec::new();
    let mut quick = false;
    let mut json: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--json" => {
                json =
                    Some(PathBuf::from(args.next().ok_or_else(|| {
                        anyhow!("--json needs a path\n{}", usage())
                    })?))
            }
            "-h" | "--help" => {
                print!("{}", usage());
                return Ok(());
            }
            s if s.starts_with('-') => bail!("unknown option {s}\n{}", usage()),
            s => names.push(s.to_string()),
        }
    }
    let selected: Vec<&(&str, &str, FigureFn)> = if names.is_empty() {
        FIGURES.iter().collect()
    } else {
        names
            .iter()
            .map(|n| {
                FIGURES
                    .iter()
                    .find(|(name, _, _)| name == n)
                    .ok_or_else(|| anyhow!("unknown figure {n:?}\n{}", usage()))
            })
            .collect::<Result<_>>()?
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let opts = Opts { quick };
    let mut all = Vec::new();
    for (name, _, run) in selected {
        let figures = run(&opts, &rt).with_context(|| format!("figure {name}"))?;
        for f in figures {
            println!(
                "{} {:.1} {:.1} {:.2}",
                f.name,
                f.ours,
                f.reference,
                f.ratio()
            );
            eprintln!("  ({}: {})", f.unit, f.note);
            all.push(f);
        }
    }
    if let Some(path) = json {
        let figures: Vec<serde_json::Value> = all
            .iter()
            .map(|f| {
                serde_json::json!({
                    "name": f.name, "ours": f.ours, "reference": f.reference,
                    "ratio": f.ratio(), "unit": f.unit, "note": f.note,
                })
            })
            .collect();
        let text = serde_json::to_string_pretty(&serde_json::json!({ "figures": figures }))?;
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// populate

/// Bytes per write request in the populate figure (one 4 MiB RADOS object).
const POPULATE_CHUNK: usize = 4 * MIB;
/// Injected latency of each write request.
const POPULATE_WRITE_LATENCY: Duration = Duration::from_millis(5);
/// The slower cluster of the second in-memory line (HDD OSDs, or 3 replicas over a busy network).
const POPULATE_SLOW_WRITE_LATENCY: Duration = Duration::from_millis(20);
/// Chunk size of the in-memory source stream (what an HTTP body typically yields).
const SOURCE_CHUNK: usize = 64 * 1024;

fn populate(opts: &Opts, rt: &tokio::runtime::Runtime) -> Result<Vec<Figure>> {
    let size = if opts.quick { 32 * MIB } else { 256 * MIB };
    let runs = if opts.quick { 1 } else { 3 };
    let depth = ControllerConfig::default().populate_queue_depth.max(1);
    let data = Bytes::from(pattern(size, 42));
    let expected = testdata::sha256_hex(&data);
    let note = |latency: Duration, source: &str| {
        format!(
            "{} MiB, {} MiB writes, {} ms per write, qd {depth} vs qd 1, median of {runs}, {source}",
            size / MIB,
            POPULATE_CHUNK / MIB,
            latency.as_millis()
        )
    };

    let mut out = Vec::new();
    let mem = |qd: usize, latency: Duration| -> Result<f64> {
        median_rate(runs, size, || {
            rt.block_on(write_once(
                memory_stream(data.clone()),
                size,
                qd,
                latency,
                &expected,
            ))
        })
    };
    let ours = mem(depth, POPULATE_WRITE_LATENCY)?;
    let reference = mem(1, POPULATE_WRITE_LATENCY)?;
    out.push(Figure {
        name: format!("populate_qd{depth}_vs_qd1"),
        ours,
        reference,
        unit: "MB/s",
        note: note(POPULATE_WRITE_LATENCY, "in-memory source"),
    });
    let slow_ms = POPULATE_SLOW_WRITE_LATENCY.as_millis();
    let ours = mem(depth, POPULATE_SLOW_WRITE_LATENCY)?;
    let reference = mem(1, POPULATE_SLOW_WRITE_LATENCY)?;
    out.push(Figure {
        name: format!("populate_qd{depth}_vs_qd1_{slow_ms}ms"),
        ours,
        reference,
        unit: "MB/s",
        note: note(POPULATE_SLOW_WRITE_LATENCY, "in-memory source"),
    });

    match TestRegistry::try_start() {
        Ok(reg) => {
            let pushed = rt.block_on(reg.pusher().push_image(
                "bench/rootfs",
                "v1",
                &IronImage::rootfs(data.to_vec()),
            ));
            let rootfs_size = pushed.rootfs.map(|l| l.size);
            if rootfs_size != Some(size as u64) {
                bail!("pushed rootfs of {rootfs_size:?} bytes, expected {size}");
            }
            let src = OciImageSource::new(OciOptions::default()).map_err(|e| anyhow!("{e}"))?;
            let reference_str = reg.reference("bench/rootfs", "v1");
            let via = |qd: usize| -> Result<f64> {
                median_rate(runs, size, || {
                    rt.block_on(async {
                        let rootfs = src
                            .open_rootfs(&reference_str, None)
                            .await
                            .map_err(|e| anyhow!("open_rootfs: {e}"))?;
                        write_once(rootfs.data, size, qd, POPULATE_WRITE_LATENCY, &expected).await
                    })
                })
            };
            let ours = via(depth)?;
            let reference = via(1)?;
            // The download alone (HTTP + sha256, no writes): the ceiling of this line.
            let download = median_rate(runs, size, || {
                rt.block_on(async {
                    let rootfs = src
                        .open_rootfs(&reference_str, None)
                        .await
                        .map_err(|e| anyhow!("open_rootfs: {e}"))?;
                    let start = Instant::now();
                    let mut data = rootfs.data;
                    let mut n = 0usize;
                    while let Some(chunk) = futures::StreamExt::next(&mut data).await {
                        n += chunk?.len();
                    }
                    if n != size {
                        bail!("downloaded {n} bytes, expected {size}");
                    }
                    Ok(start.elapsed())
                })
            })?;
            out.push(Figure {
                name: format!("populate_registry_qd{depth}_vs_qd1"),
                ours,
                reference,
                unit: "MB/s",
                note: note(
                    POPULATE_WRITE_LATENCY,
                    &format!(
                        "docker-registry on loopback + sha256 verification; \
                         download alone {download:.0} MB/s"
                    ),
                ),
            });
        }
        Err(e @ registry_fixture::Error::NotInstalled) => {
            eprintln!("populate_registry: skipped ({e})")
        }
        Err(e) => eprintln!("populate_registry: skipped, {e}"),
    }
    Ok(out)
}

/// Runs `once` `runs` times and returns the median throughput in MB/s.
fn median_rate(
    runs: usize,
    size: usize,
    mut once: impl FnMut() -> Result<Duration>,
) -> Result<f64> {
    let mut rates = Vec::with_capacity(runs);
    for _ in 0..runs {
        let d = once()?;
        rates.push(size as f64 / d.as_secs_f64().max(1e-9) / 1e6);
    }
    rates.sort_by(f64::total_cmp);
    Ok(rates[rates.len() / 2])
}

/// `data` as a stream of [`SOURCE_CHUNK`] slices (no copies).
fn memory_stream(data: Bytes) -> ByteStream {
    let len = data.len();
    let chunks = (0..len)
        .step_by(SOURCE_CHUNK)
        .map(move |o| Ok(data.slice(o..(o + SOURCE_CHUNK).min(len))));
    Box::pin(futures::stream::iter(chunks.collect::<Vec<_>>()))
}

/// One populate into a fresh fake pool; returns the time of the `write_stream` call. Checks the
/// written data's checksum afterwards (outside the timing).
async fn write_once(
    stream: ByteStream,
    size: usize,
    qd: usize,
    latency: Duration,
    expected: &str,
) -> Result<Duration> {
    let backend = MemoryBackend::builder("bench")
        .chunk_size(POPULATE_CHUNK as u64)
        .build();
    backend.create_image("snap_bench", size as u64).await?;
    backend.set_chunk_delay(Op::Write, latency);
    let opts = WriteOptions {
        chunk_size: POPULATE_CHUNK,
        queue_depth: qd,
        skip_zeroes: true,
        start: 0,
        dirty_until: 0,
        total_hint: size as u64,
        passphrase: None,
    };
    let start = Instant::now();
    let n = backend
        .write_stream(
            "snap_bench",
            stream,
            opts,
            rbd::no_progress(),
            CancellationToken::new(),
        )
        .await?;
    let took = start.elapsed();
    if n != size as u64 {
        bail!("wrote {n} bytes, expected {size}");
    }
    if backend.checksum("snap_bench", None)? != expected {
        bail!("populated data differs from the source");
    }
    if backend.max_writes_in_flight() > qd {
        bail!("more than {qd} writes in flight");
    }
    Ok(took)
}
