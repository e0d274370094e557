//! Figure `ceph_populate_registry_vs_write_limit` (part of `ceph`; cluster needed): the OS-image
//! populate path on the real cluster against what the cluster takes at all.
//!
//! **Ours**: a 1 GiB rootfs of random bytes (`--quick`: 64 MiB; no zero stretch to skip) pushed to
//! a real `docker-registry` on loopback, opened with the daemon's `OciImageSource` (HTTP, sha256
//! verification, the stream guard) and written with `CephBackend::create_image` + `write_stream`
//! at the daemon's defaults (`--populator-buffer-size`, `--populate-queue-depth`): the populate
//! op without the store. MB/s from the open to the last write, median of 3 (`--quick`: 1).
//! **Reference**: the cluster's write limit measured in the same minutes, `rbd bench --io-type
//! write --io-size 4M --io-threads 16 --io-pattern seq --io-total <size>` on a fresh image (its
//! own `bytes/sec`, so without its process start). Target ratio ≥ 0.9.
//!
//! The note has a sweep of request sizes and queue depths (one run each), the download alone
//! (HTTP + sha256, nothing written), and CPU seconds per GiB of each side, read from
//! `/proc/<pid>/stat` (user + system, in the kernel's fixed 100 ticks/s) of this process, the
//! registry and the OSD around one run: on a small machine the populate competes with the OSD
//! for the same cores, which `rbd bench` does not.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use ceph::{CephBackend, CephConfig};
use controllers::{ControllerConfig, DEFAULT_POPULATOR_BUFFER_SIZE};
use futures::StreamExt;
use rbd::{BlockBackend, CancellationToken, WriteOptions};
use registry_fixture::{IronImage, TestRegistry};
use volumeprovider::image_source::{OciImageSource, OciOptions};

use super::cluster::cli_args;
use super::util::median;
use super::{Figure, Opts};
use controllers::ImageSource;

const MIB: u64 = 1 << 20;
/// Prefix of every image this figure creates (removed by the `ceph` figure's clean-up).
const PREFIX: &str = "cephvol-bench-limit-";

/// The figure (see the module docs).
pub fn run(
    opts: &Opts,
    rt: &tokio::runtime::Runtime,
    backend: &CephBackend,
    cfg: &CephConfig,
) -> Result<Vec<Figure>> {
    let size = if opts.quick { 64 * MIB } else { 1024 * MIB };
    let runs = if opts.quick { 1 } else { 3 };
    let reg = match TestRegistry::try_start() {
        Ok(r) => r,
        Err(e) => {
            println!("ceph_populate_registry: skipped ({e})");
            return Ok(Vec::new());
        }
    };
    let data = testdata::pattern(size as usize, 0x11_6e5);
    let pushed = rt.block_on(reg.pusher().push_image(
        "bench/limit",
        "v1",
        &IronImage::rootfs(data),
    ));
    if pushed.rootfs.map(|l| l.size) != Some(size) {
        bail!("the pushed rootfs is not {size} bytes");
    }
    let reference = reg.reference("bench/limit", "v1");
    let source = OciImageSource::new(OciOptions::default()).map_err(|e| anyhow!("{e}"))?;
    let defaults = ControllerConfig::default();
    let (chunk, depth) = (
        DEFAULT_POPULATOR_BUFFER_SIZE,
        defaults.populate_queue_depth.max(1),
    );

    let osd = osd_pid();
    let gib = size as f64 / (1u64 << 30) as f64;
    let cpu = |pid: Option<u32>| pid.and_then(cpu_secs).unwrap_or(f64::NAN);
    let (osd0, rbd0) = (cpu(osd), cpu_children());
    let limit = write_limit(cfg, size)?;
    let (osd_bench, rbd_bench) = (cpu(osd) - osd0, cpu_children() - rbd0);
    let mut ours = Vec::new();
    let mut cpu_ours = String::new();
    for i in 0..runs {
        let me = std::process::id();
        let (o0, s0, r0) = (cpu(osd), cpu(Some(me)), cpu(Some(reg.pid())));
        ours.push(rt.block_on(populate(
            backend, &source, &reference, size, chunk, depth, i,
        ))?);
        if i == 0 {
            cpu_ours = format!(
                "ours: this process {:.2}, registry {:.2}, OSD {:.2}",
                (cpu(Some(me)) - s0) / gib,
                (cpu(Some(reg.pid())) - r0) / gib,
                (cpu(osd) - o0) / gib
            );
        }
    }
    let mut sweep = Vec::new();
    for (c, d) in [(4, 4), (4, 8), (4, 16), (8, 4), (8, 8)] {
        let rate = rt.block_on(populate(
            backend,
            &source,
            &reference,
            size,
            c * MIB as usize,
            d,
            100 + sweep.len(),
        ))?;
        sweep.push(format!("{c} MiB × {d}: {rate:.0}"));
    }
    let download = rt.block_on(download(&source, &reference, size))?;
    Ok(vec![Figure {
        name: "ceph_populate_registry_vs_write_limit".into(),
        ours: median(ours),
        reference: limit,
        unit: "MB/s, higher is better; target ratio >= 0.9",
        note: format!(
            "{} MiB random rootfs from docker-registry on loopback (OciImageSource: HTTP + \
             sha256) into a new image, {} MiB requests × queue depth {depth} (the daemon's \
             defaults), median of {runs}, vs the cluster's write limit `rbd bench --io-type write \
             --io-size 4M --io-threads 16` ({} MiB, its own bytes/sec); other request sizes × \
             depths (MB/s, one run each): {}; the download alone (HTTP + sha256): {download:.0} \
             MB/s; CPU s per GiB (user + system): {cpu_ours}; rbd bench: its process {:.2} (with \
             the image's create and removal), OSD {:.2}; {} cores",
            size / MIB,
            chunk / MIB as usize,
            size / MIB,
            sweep.join(", "),
            rbd_bench / gib,
            osd_bench / gib,
            std::thread::available_parallelism().map_or(0, |n| n.get()),
        ),
    }])
}

/// One populate of `reference` into a new image; MB/s from the open to the last write.
async fn populate(
    backend: &CephBackend,
    source: &OciImageSource,
    reference: &str,
    size: u64,
    chunk: usize,
    depth: usize,
    run: usize,
) -> Result<f64> {
    let name = format!("{PREFIX}{run}");
    backend.create_image(&name, size).await?;
    let t = Instant::now();
    let rootfs = source
        .open_rootfs(reference, None)
        .await
        .map_err(|e| anyhow!("open_rootfs: {e}"))?;
    let opts = WriteOptions {
        chunk_size: chunk,
        queue_depth: depth,
        skip_zeroes: true,
        start: 0,
        dirty_until: 0,
        total_hint: size,
        passphrase: None,
    };
    let written = backend
        .write_stream(
            &name,
            rootfs.data,
            opts,
            rbd::no_progress(),
            CancellationToken::new(),
        )
        .await?;
    let took = t.elapsed();
    backend.remove_image(&name).await?;
    if written != size {
        bail!("wrote {written} bytes of {size}");
    }
    Ok(mbps(size, took))
}

/// The download alone (HTTP + sha256, nothing written), MB/s.
async fn download(source: &OciImageSource, reference: &str, size: u64) -> Result<f64> {
    let t = Instant::now();
    let mut data = source
        .open_rootfs(reference, None)
        .await
        .map_err(|e| anyhow!("open_rootfs: {e}"))?
        .data;
    let mut n = 0u64;
    while let Some(chunk) = data.next().await {
        n += chunk?.len() as u64;
    }
    if n != size {
        bail!("downloaded {n} bytes of {size}");
    }
    Ok(mbps(size, t.elapsed()))
}

/// User + system CPU seconds of process `pid` so far (`/proc/<pid>/stat` fields 14 and 15, in
/// the 100 ticks/s the kernel uses for them).
fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces), from field 3 on.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// CPU seconds the finished (waited-for) children of this process used so far.
fn cpu_children() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return f64::NAN;
    };
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return f64::NAN;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
    match (get(13), get(14)) {
        (Some(cu), Some(cs)) => (cu + cs) / 100.0,
        _ => f64::NAN,
    }
}

/// The pid of the (single) `ceph-osd` of the test cluster, if one runs here.
fn osd_pid() -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
        (comm.trim() == "ceph-osd").then_some(pid)
    })
}

fn mbps(size: u64, d: Duration) -> f64 {
    size as f64 / d.as_secs_f64().max(1e-9) / 1e6
}

/// The cluster's write limit in MB/s: `rbd bench` (module docs) on a fresh image.
fn write_limit(cfg: &CephConfig, size: u64) -> Result<f64> {
    let image = format!("{PREFIX}rbd-bench");
    let rbd = |args: &[&str]| -> Result<String> {
        let mut cmd = Command::new("rbd");
        cli_args(&mut cmd, cfg);
        cmd.args(args).stdin(Stdio::null());
        let out = cmd.output().context("running rbd")?;
        if !out.status.success() {
            bail!(
                "rbd {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let bytes = (2 * size).to_string();
    rbd(&["create", "--size", &format!("{bytes}B"), &image])?;
    let out = rbd(&[
        "bench",
        "--io-type",
        "write",
        "--io-size",
        "4M",
        "--io-threads",
        "16",
        "--io-pattern",
        "seq",
        "--io-total",
        &format!("{size}B"),
        &image,
    ]);
    rbd(&["rm", "--no-progress", &image])?;
    parse_bytes_per_sec(&out?)
}

/// The `bytes/sec: N UNIT` of `rbd bench`'s summary line, in MB/s.
fn parse_bytes_per_sec(out: &str) -> Result<f64> {
    let line = out
        .lines()
        .rev()
        .find(|l| l.contains("bytes/sec:"))
        .ok_or_else(|| anyhow!("no summary in rbd bench output: {out}"))?;
    let rest = line
        .split("bytes/sec:")
        .nth(1)
        .ok_or_else(|| anyhow!("no bytes/sec in {line:?}"))?;
    let mut words = rest.split_whitespace();
    let value: f64 = words
        .next()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("no number in {line:?}"))?;
    let scale = match words.next().unwrap_or("B/s") {
        "B/s" => 1.0,
        "KiB/s" => 1024.0,
        "MiB/s" => 1024.0 * 1024.0,
        "GiB/s" => 1024.0 * 1024.0 * 1024.0,
        other => bail!("unknown unit {other:?} in {line:?}"),
    };
    Ok(value * scale / 1e6)
}

#[cfg(test)]
mod tests {
    use super::parse_bytes_per_sec;

    #[test]
    fn the_summary_line_of_rbd_bench_is_read_in_mb_per_second() {
        let out = "  SEC       OPS   OPS/SEC   BYTES/SEC\n    1       208   223.108   892 MiB/s\n\
                   elapsed: 1   ops: 256   ops/sec: 192.771   bytes/sec: 771 MiB/s\n";
        let got = parse_bytes_per_sec(out).expect("parses");
        assert!((got - 771.0 * 1.048_576).abs() < 0.01, "{got}");
        assert!(parse_bytes_per_sec("nothing").is_err());
    }
}
