//! Figure `rss`: resident memory of the real `cephvol` daemon, idle and holding 10k volumes
//! (`--quick`: 1k), against the budgets of the issue "Real-cluster speed and footprint" (30 MiB
//! idle, 64 MiB with 10k volumes after a full ListVolumes; the reference column is the budget,
//! so a ratio ≤ 1 meets it).
//!
//! The daemon is the `cephvol` binary next to this one (or `$CEPHVOL_BIN`), started on its embedded
//! default (local backend: sparse files and one JSON file per object) with a fresh `--data-dir` and
//! socket, `--log-level warn`, every other flag at its default. The data dir is on `/dev/shm`
//! when it exists: tmpfs pages are not mapped into the daemon, so they do not count in its RSS,
//! and the volumes are created faster than on a disk that syncs every record.
//!
//! Which build: the figure is meant for the daemon **built with the `ceph` feature**. That build
//! loads librbd and librados only when it connects to a cluster (`crates/ceph/src/libs.rs`), so on
//! the local backend they are not mapped; when they were linked they were 17–18 MiB of both
//! figures. The notes say which build was measured, read from the daemon's `--version` (which
//! names its backends), and whether librbd is mapped (`librbd.so` in `/proc/<pid>/maps`), not
//! from this binary's features. `cargo xtask bench`
//! builds with `ceph` only when a Ceph figure (`store`, `ceph`) runs with the cluster up, so
//! `cargo xtask bench rss` alone measures the build without it; for the Ceph build run
//! `cargo build --release -p volumeprovider -p bench --bins --features volumeprovider/ceph,bench/ceph`
//! then `target/release/cephvol-bench rss`, or the whole bench with the cluster up.
//!
//! * idle: `VmRSS` of `/proc/<pid>/status` once the socket answers `Status`, after 1 s of quiet;
//! * with volumes: N empty 1 GiB volumes are created through the daemon's gRPC API
//!   (`CreateVolume`, 8 in flight, the daemon's own client code); the last one created is polled
//!   (`ListVolumes` filtered by id, every 500 ms) until it is `AVAILABLE`, then one full
//!   `ListVolumes` checks that all are (repeated every 2 s if not), as a poollet's periodic list
//!   would; `VmRSS` is read after 2 s of quiet. The peak (`VmHWM`), `RssAnon` and how long the
//!   last full list took (client decoding included) are in the note.
//!
//! What the daemon holds after the quiet is, beyond the mapped files (about 12 MiB without the
//! Ceph libraries, 27 MiB when they were linked), what it keeps per volume (the local backend's in-memory catalogue, the
//! controllers' state) plus what its allocator has not given back. The binary's allocator is
//! jemalloc, set to give unused pages back within about a second (see
//! `crates/volumeprovider/src/main.rs`); with glibc malloc, which keeps freed memory in its
//! per-thread arenas, the figure depended on how the work overlapped (full lists *while* the
//! volumes were being provisioned left far more behind, see BENCHMARKS.md).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use cli::client::Clients;
use futures::StreamExt;
use iri::meta_v1::ObjectMetadata;
use iri::volume_v1 as pb;

use super::util::temp_dir;
use super::{Figure, Opts};

/// The idle budget (MiB `VmRSS`).
pub(super) const IDLE_BUDGET_MIB: f64 = 30.0;
/// The budget with 10k volumes after a full `ListVolumes` (MiB `VmRSS`).
pub(super) const LOADED_BUDGET_MIB: f64 = 64.0;
/// The unit of every figure measured against these budgets.
pub(super) const BUDGET_UNIT: &str = "MiB VmRSS; reference = budget, ratio <= 1 meets it";

pub fn run(opts: &Opts, _rt: &tokio::runtime::Runtime) -> Result<Vec<Figure>> {
    let n = if opts.quick { 1_000 } else { 10_000 };
    let bin = daemon_binary()?;
    let shm = Path::new("/dev/shm");
    let dir = temp_dir("rss", shm.is_dir().then_some(shm))?;
    let socket = dir.path().join("cephvol.sock");
    let log = dir.path().join("daemon.log");
    let mut daemon = Daemon::start(&bin, dir.path(), &socket, &log)?;
    let result = measure(&mut daemon, &socket, n);
    let stopped = daemon.stop();
    let (m, idle, loaded) = match result {
        Ok(v) => v,
        Err(e) => {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(20).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            return Err(e.context(format!("daemon log tail:\n{}", tail.join("\n"))));
        }
    };
    stopped?;
    let build = match (built_with_ceph(&bin)?, m.ceph_linked) {
        (true, false) => {
            "cephvol built with the ceph feature (librbd not loaded: the local backend)"
        }
        (true, true) => "cephvol built with the ceph feature (librbd/librados mapped)",
        (false, _) => "cephvol built WITHOUT the ceph feature",
    };
    let on = if shm.is_dir() {
        "tmpfs /dev/shm"
    } else {
        "the temp dir"
    };
    Ok(vec![
        Figure {
            name: "rss_idle_vs_budget".into(),
            ours: idle.rss_mib,
            reference: IDLE_BUDGET_MIB,
            unit: BUDGET_UNIT,
            note: format!(
                "{build}, on the embedded default (local backend, data dir on {on}), idle after \
                 start; VmHWM {:.1} MiB, RssAnon {:.1} MiB",
                idle.hwm_mib, idle.anon_mib
            ),
        },
        Figure {
            name: format!("rss_{}k_volumes_vs_budget", n / 1000),
            ours: loaded.rss_mib,
            reference: LOADED_BUDGET_MIB,
            unit: BUDGET_UNIT,
            note: format!(
                "{n} empty 1 GiB volumes created over gRPC (8 in flight), all Available \
                 ({:.1} s) and listed once (the full ListVolumes took {:.0} ms), then 2 s quiet; \
                 VmHWM {:.1} MiB, RssAnon {:.1} MiB; {build}, local backend",
                m.took.as_secs_f64(),
                m.list.as_secs_f64() * 1000.0,
                loaded.hwm_mib,
                loaded.anon_mib
            ),
        },
    ])
}

/// `$CEPHVOL_BIN`, else `cephvol` next to this executable.
fn daemon_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("CEPHVOL_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().context("locating this executable")?;
    let bin = exe.with_file_name("cephvol");
    if !bin.is_file() {
        bail!(
            "{} not found: build it first (cargo build --release -p volumeprovider --bins; \
             `cargo xtask bench` does) or set CEPHVOL_BIN",
            bin.display()
        );
    }
    Ok(bin)
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Rss {
    pub(super) rss_mib: f64,
    pub(super) hwm_mib: f64,
    pub(super) anon_mib: f64,
}

/// `VmRSS` and `VmHWM` of a process.
pub(super) fn rss_of(pid: u32) -> Result<Rss> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let field = |name: &str| -> Result<f64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .ok_or_else(|| anyhow!("no {name} in /proc/{pid}/status"))?;
        let kib: f64 = line
            .split_whitespace()
            .nth(1)
            .ok_or_else(|| anyhow!("malformed {line:?}"))?
            .parse()
            .with_context(|| format!("malformed {line:?}"))?;
        Ok(kib / 1024.0)
    };
    Ok(Rss {
        rss_mib: field("VmRSS:")?,
        hwm_mib: field("VmHWM:")?,
        anon_mib: field("RssAnon:")?,
    })
}

/// The daemon process; killed on drop if still running.
struct Daemon {
    child: Child,
}

impl Daemon {
    fn start(bin: &Path, data_dir: &Path, socket: &Path, log: &Path) -> Result<Daemon> {
        let log = std::fs::File::create(log).context("daemon log file")?;
        let child = Command::new(bin)
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--address")
            .arg(socket)
            .args(["--log-level", "warn"])
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("daemon log file")?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        Ok(Daemon { child })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then waits up to 30 s (killed after that).
    fn stop(&mut self) -> Result<()> {
        if self.child.try_wait()?.is_some() {
            return Ok(());
        }
        let pid = i32::try_from(self.child.id())
            .ok()
            .and_then(rustix::process::Pid::from_raw)
            .ok_or_else(|| anyhow!("bad pid {}", self.child.id()))?;
        rustix::process::kill_process(pid, rustix::process::Signal::TERM)
            .context("sending SIGTERM to the daemon")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    bail!("daemon exited with {status}");
                }
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        bail!("daemon did not stop within 30 s of SIGTERM")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What one run measured besides the two readings.
struct Measured {
    /// From the first CreateVolume to all volumes Available.
    took: Duration,
    /// The last full ListVolumes (the one that found all volumes Available).
    list: Duration,
    /// Whether librbd is mapped into the daemon.
    ceph_linked: bool,
}

/// Whether the daemon binary was built with the `ceph` feature, from its `--version` (which names
/// the backends it offers); this bench's own features do not tell: `$CEPHVOL_BIN` may be another
/// build.
fn built_with_ceph(bin: &Path) -> Result<bool> {
    let out = Command::new(bin)
        .arg("--version")
        .output()
        .with_context(|| format!("{} --version", bin.display()))?;
    let version = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !version.contains("(backends: ") {
        bail!("{} --version: unexpected answer {version:?}", bin.display());
    }
    Ok(version.contains(", ceph)"))
}

/// Whether `librbd` is mapped into the process: the Ceph build loads it at its first connection
/// to a cluster, so on the local backend it should not be.
fn ceph_linked(pid: u32) -> Result<bool> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .with_context(|| format!("reading /proc/{pid}/maps"))?;
    Ok(maps.lines().any(|l| l.contains("/librbd.so")))
}

fn measure(daemon: &mut Daemon, socket: &Path, n: usize) -> Result<(Measured, Rss, Rss)> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    rt.block_on(async {
        let clients = connect(daemon, socket).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let idle = rss_of(daemon.pid())?;
        let ceph_linked = ceph_linked(daemon.pid())?;
        eprintln!("  rss idle: {idle:?} (librbd mapped: {ceph_linked})");

        let t = Instant::now();
        let last = create_volumes(&clients, n).await?;
        let list = wait_available(daemon, &clients, &last, n).await?;
        let took = t.elapsed();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let loaded = rss_of(daemon.pid())?;
        eprintln!(
            "  rss with {n} volumes: {loaded:?} ({:.1} s to create, full list {:.0} ms)",
            took.as_secs_f64(),
            list.as_secs_f64() * 1000.0
        );
        let m = Measured {
            took,
            list,
            ceph_linked,
        };
        Ok((m, idle, loaded))
    })
}

/// Connects once the daemon serves `Status`.
async fn connect(daemon: &mut Daemon, socket: &Path) -> Result<Clients> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = daemon.child.try_wait()? {
            bail!("daemon exited at start with {status}");
        }
        if socket.exists() {
            if let Ok(mut c) = Clients::connect(socket).await {
                if c.runtime.status(pb::StatusRequest {}).await.is_ok() {
                    return Ok(c);
                }
            }
        }
        if Instant::now() > deadline {
            bail!("daemon did not serve on {} within 60 s", socket.display());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Creates `n` volumes; returns the id of the one created last.
pub(super) async fn create_volumes(clients: &Clients, n: usize) -> Result<String> {
    let results = futures::stream::iter(0..n)
        .map(|i| {
            let mut c = clients.runtime.clone();
            async move {
                let req = pb::CreateVolumeRequest {
                    volume: Some(pb::Volume {
                        metadata: Some(ObjectMetadata {
                            labels: [("bench-index".to_string(), i.to_string())].into(),
                            ..Default::default()
                        }),
                        spec: Some(pb::VolumeSpec {
                            class: "standard".into(),
                            resources: Some(pb::VolumeResources {
                                storage_bytes: 1 << 30,
                            }),
                            ..Default::default()
                        }),
                        status: None,
                    }),
                };
                c.create_volume(req).await.map(|r| {
                    r.into_inner()
                        .volume
                        .and_then(|v| v.metadata)
                        .map(|m| m.id)
                        .unwrap_or_default()
                })
            }
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
    let mut last = String::new();
    for r in results {
        last = r.map_err(|e| anyhow!("CreateVolume failed: {e}"))?;
    }
    Ok(last)
}

pub(super) fn available(volumes: &[pb::Volume]) -> usize {
    volumes
        .iter()
        .filter(|v| {
            v.status
                .as_ref()
                .is_some_and(|s| s.state == pb::VolumeState::VolumeAvailable as i32)
        })
        .count()
}

/// Polls the volume created last until it is Available, then lists all until all are; returns
/// how long the last full list took.
async fn wait_available(
    daemon: &mut Daemon,
    clients: &Clients,
    last: &str,
    n: usize,
) -> Result<Duration> {
    let deadline = Instant::now() + Duration::from_secs(300);
    let c = clients.runtime.clone();
    let list = |id: &str| {
        let filter = (!id.is_empty()).then(|| pb::VolumeFilter {
            id: id.to_string(),
            ..Default::default()
        });
        let mut c = c.clone();
        async move {
            c.list_volumes(pb::ListVolumesRequest { filter })
                .await
                .map(|r| r.into_inner().volumes)
                .map_err(|e| anyhow!("ListVolumes: {e}"))
        }
    };
    let mut whole = false;
    loop {
        if let Some(status) = daemon.child.try_wait()? {
            bail!("daemon exited with {status}");
        }
        if !whole {
            whole = available(&list(last).await?) == 1;
        }
        if whole {
            let t = Instant::now();
            let all = list("").await?;
            let took = t.elapsed();
            let done = available(&all);
            drop(all);
            if done >= n {
                return Ok(took);
            }
            if Instant::now() > deadline {
                bail!("only {done} of {n} volumes Available within 300 s");
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
            continue;
        }
        if Instant::now() > deadline {
            bail!("volume {last} not Available within 300 s");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
