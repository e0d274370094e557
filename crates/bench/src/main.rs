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

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use controllers::{ControllerConfig, ImageSource};
use oci::media_types;
use rbd::{BlockBackend, ByteStream, CancellationToken, WriteOptions};
use rbd_testkit::fake::{MemoryBackend, Op};
use sha2::{Digest as _, Sha256};
use volumeprovider::image_source::{OciImageSource, OciOptions};

// Figures of issue 8, one module each (see their module docs).
mod cluster;
mod responsiveness;
mod rss;
mod store;
mod util;

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
        "time to Available of empty volumes while flattens run: load vs idle vs sync baseline",
        responsiveness::run,
    ),
    (
        "store",
        "store Create/Get/Update/List at 10k objects: hostdir (and omap) vs memory",
        store::run,
    ),
    (
        "ceph",
        "real Ceph: populate vs rbd import, flatten vs rbd flatten, create volume vs rbd create",
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
    let expected = hex::encode(Sha256::digest(&data));
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

    match RegistryFixture::start(&data) {
        Ok(Some(reg)) => {
            let src = OciImageSource::new(OciOptions::default()).map_err(|e| anyhow!("{e}"))?;
            let reference_str = reg.reference.clone();
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
        Ok(None) => eprintln!(
            "populate_registry: skipped (docker-registry not installed: apt-get install docker-registry)"
        ),
        Err(e) => eprintln!("populate_registry: skipped, docker-registry failed to start: {e:#}"),
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

/// Deterministic pseudo-random bytes (xorshift64).
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A `docker-registry` on 127.0.0.1 holding one ironcore image whose rootfs is the bench data.
/// Killed and its storage removed on drop.
struct RegistryFixture {
    child: Child,
    dir: PathBuf,
    reference: String,
}

impl Drop for RegistryFixture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl RegistryFixture {
    /// `Ok(None)` when `docker-registry` is not installed.
    fn start(rootfs: &Bytes) -> Result<Option<RegistryFixture>> {
        let bin = std::env::var_os("DOCKER_REGISTRY_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/usr/bin/docker-registry"));
        if !bin.is_file() {
            return Ok(None);
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir =
            std::env::temp_dir().join(format!("cephvol-bench-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(dir.join("data"))?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let host = format!("127.0.0.1:{port}");
        let cfg = dir.join("config.yml");
        std::fs::write(
            &cfg,
            format!(
                "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: {host}\n  secret: cephvol-bench\n",
                dir.join("data").display()
            ),
        )?;
        let child = Command::new(&bin)
            .arg("serve")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("spawn {}", bin.display()))?;
        let mut fx = RegistryFixture {
            child,
            dir,
            reference: format!("{host}/bench/rootfs:v1"),
        };
        wait_ready(&mut fx.child, &host)?;
        push_image(&host, rootfs)?;
        Ok(Some(fx))
    }
}

fn wait_ready(child: &mut Child, host: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("docker-registry exited with {status}");
        }
        if let Ok(mut s) = TcpStream::connect(host) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let req = format!("GET /v2/ HTTP/1.0\r\nHost: {host}\r\n\r\n");
            let mut buf = [0u8; 16];
            if s.write_all(req.as_bytes()).is_ok()
                && s.read(&mut buf).is_ok_and(|n| {
                    // Go answers an HTTP/1.0 request with HTTP/1.0.
                    let head = String::from_utf8_lossy(&buf[..n]);
                    head.starts_with("HTTP/1.") && head.split(' ').nth(1) == Some("200")
                })
            {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("docker-registry on {host} did not answer within 15 s");
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Pushes `rootfs` as a single-arch ironcore image `bench/rootfs:v1` (plain HTTP, monolithic
/// uploads, manifest without top-level mediaType).
fn push_image(host: &str, rootfs: &Bytes) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let http = reqwest::Client::new();
        let config = Bytes::from_static(b"{}");
        let config_digest = push_blob(&http, host, &config).await?;
        let rootfs_digest = push_blob(&http, host, rootfs).await?;
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "config": {"mediaType": media_types::CONFIG, "digest": config_digest, "size": config.len()},
            "layers": [{"mediaType": media_types::ROOTFS, "digest": rootfs_digest, "size": rootfs.len()}],
        });
        let resp = http
            .put(format!("http://{host}/v2/bench/rootfs/manifests/v1"))
            .header("content-type", media_types::OCI_MANIFEST)
            .body(serde_json::to_vec(&manifest)?)
            .send()
            .await?;
        if resp.status().as_u16() != 201 {
            bail!("PUT manifest: {}", resp.status());
        }
        Ok(())
    })
}

async fn push_blob(http: &reqwest::Client, host: &str, data: &Bytes) -> Result<String> {
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(data)));
    let resp = http
        .post(format!("http://{host}/v2/bench/rootfs/blobs/uploads/"))
        .send()
        .await?;
    let location = resp
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| anyhow!("upload without Location ({})", resp.status()))?
        .to_string();
    let location = if location.starts_with("http") {
        location
    } else {
        format!("http://{host}{location}")
    };
    let sep = if location.contains('?') { '&' } else { '?' };
    let resp = http
        .put(format!("{location}{sep}digest={digest}"))
        .header("content-type", "application/octet-stream")
        .body(data.clone())
        .send()
        .await?;
    if resp.status().as_u16() != 201 {
        bail!("PUT blob: {}", resp.status());
    }
    Ok(digest)
}
