//! Figures `ceph_list_volumes_*` and `store_omap_*_100k_vs_10k` (part of `ceph`; cluster
//! needed): the provider at scale on the omap store, in a pool of their own
//! (`cephvol-bench-scale`, created and deleted by the figure as `client.admin`), so that nothing
//! of the provider's own pool is touched.
//!
//! * `ceph_list_volumes_10k_p50/p99_vs_rados_listomapvals`: the real `cephvol` daemon (Ceph
//!   build, `--backend ceph` on that pool, defaults otherwise) gets 10k empty 1 GiB volumes
//!   (`--quick`: 500) over gRPC (`CreateVolume`, 8 in flight) and provisions them all (rbd images,
//!   metadata); then a full `ListVolumes` is timed 30 times over the socket (p50 and p99). The
//!   reference is `rados listomapvals` of the same omap object (every record read raw, no decoding;
//!   with its process start), median of 3. The note has the create rate (volumes per second until
//!   all are `AVAILABLE`).
//! * `ceph_rss_idle_vs_budget` / `ceph_rss_10k_volumes_vs_budget`: `VmRSS` of that daemon, 1 s
//!   after it first answered `Status` (connected to the cluster, nothing created), and after the
//!   timed lists and 2 s of quiet, against the same budgets as the `rss` figure (30 and 64 MiB).
//!   This is the deployment the budget is about: the Ceph build running the Ceph backend (the
//!   `rss` figure runs the local backend, which keeps a catalogue per image).
//! * `store_omap_create_100k_vs_10k` / `store_omap_list_100k_vs_10k`: `Store::create` (µs per
//!   call, 1000 one after the other) and `Store::list` (ms, median of 3) on the omap backend with
//!   100k records in the collection (the Go layout: one omap object per kind), against the same
//!   at 10k (`--quick`: 10k against 1k). The records are the store figure's volume records
//!   (~1 KiB of JSON each), written 16 at a time to fill the collection.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use ceph::{CephBackend, CephConfig, OmapBackend};
use cli::client::Clients;
use futures::StreamExt;
use iri::volume_v1 as pb;
use store::{ListOptions, Object, Store};

use super::rss::{
    available, create_volumes, rss_of, Rss, BUDGET_UNIT, IDLE_BUDGET_MIB, LOADED_BUDGET_MIB,
};
use super::store::{new_volume, BenchImage};
use super::util::{median, temp_dir};
use super::{Figure, Opts};

/// The pool of these figures.
const POOL: &str = "cephvol-bench-scale";
/// `ListVolumes` calls timed.
const LISTS: usize = 30;

/// Every figure of this module (see the module docs).
pub fn run(opts: &Opts, rt: &tokio::runtime::Runtime, cfg: &CephConfig) -> Result<Vec<Figure>> {
    let Some(admin) = Admin::from_env(cfg) else {
        println!("ceph scale: skipped: CEPH_ADMIN_KEYRING not set (cargo xtask ceph env)");
        return Ok(Vec::new());
    };
    admin.pool_rm();
    admin.ceph(&["osd", "pool", "create", POOL, "8"])?;
    admin.rbd(&["pool", "init", POOL])?;
    let result = (|| -> Result<Vec<Figure>> {
        let mut out = list_volumes(opts, rt, &admin)?;
        out.extend(store_scale(opts, rt, &admin)?);
        Ok(out)
    })();
    admin.pool_rm();
    result
}

/// The `ceph`/`rbd`/`rados` CLIs as `client.admin`.
struct Admin {
    conf: Option<PathBuf>,
    monitors: Option<String>,
    keyring: PathBuf,
}

impl Admin {
    fn from_env(cfg: &CephConfig) -> Option<Admin> {
        Some(Admin {
            conf: cfg.conf_file.clone(),
            monitors: cfg.monitors.clone(),
            keyring: std::env::var_os("CEPH_ADMIN_KEYRING")?.into(),
        })
    }

    fn run(&self, prog: &str, args: &[&str]) -> Result<String> {
        let mut cmd = Command::new(prog);
        if let Some(c) = &self.conf {
            cmd.arg("-c").arg(c);
        }
        if let Some(m) = &self.monitors {
            cmd.arg("-m").arg(m);
        }
        cmd.arg("--id")
            .arg("admin")
            .arg("--keyring")
            .arg(&self.keyring);
        cmd.args(args).stdin(Stdio::null());
        let out = cmd.output().with_context(|| format!("running {prog}"))?;
        if !out.status.success() {
            bail!(
                "{prog} {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn ceph(&self, args: &[&str]) -> Result<String> {
        self.run("ceph", args)
    }

    fn rbd(&self, args: &[&str]) -> Result<String> {
        self.run("rbd", args)
    }

    /// Deletes the pool if it exists (the test cluster allows pool deletion).
    fn pool_rm(&self) {
        let _ = self.ceph(&[
            "osd",
            "pool",
            "rm",
            POOL,
            POOL,
            "--yes-i-really-really-mean-it",
        ]);
    }

    /// A client of the pool as `client.admin`.
    async fn backend(&self) -> Result<CephBackend> {
        let base = CephConfig::from_env().ok_or_else(|| anyhow!("CEPH_CONF/CEPH_POOL unset"))?;
        let cfg = CephConfig {
            conf_file: self.conf.clone(),
            monitors: self.monitors.clone(),
            user: "client.admin".into(),
            keyring: Some(self.keyring.clone()),
            key_file: None,
            pool: POOL.into(),
            ..base
        };
        Ok(CephBackend::connect(cfg).await?)
    }
}

/// The daemon on the scale pool.
struct Daemon {
    child: Child,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn daemon_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("CEPHVOL_BIN") {
        return Ok(PathBuf::from(p));
    }
    let bin = std::env::current_exe()
        .context("locating this executable")?
        .with_file_name("cephvol");
    if !bin.is_file() {
        bail!("{} not found (cargo xtask bench builds it)", bin.display());
    }
    Ok(bin)
}

fn list_volumes(opts: &Opts, rt: &tokio::runtime::Runtime, admin: &Admin) -> Result<Vec<Figure>> {
    let n = if opts.quick { 500 } else { 10_000 };
    let dir = temp_dir("scale", None)?;
    let socket = dir.path().join("cephvol.sock");
    let kek = dir.path().join("kek");
    std::fs::write(&kek, [0x42u8; 32]).context("kek")?;
    let log = std::fs::File::create(dir.path().join("daemon.log")).context("log")?;
    let mut cmd = Command::new(daemon_binary()?);
    cmd.arg("--backend=ceph")
        .arg(format!("--ceph-pool={POOL}"))
        .arg("--ceph-user=admin")
        .arg("--ceph-client=client.admin")
        .arg("--ceph-keyring-file")
        .arg(&admin.keyring)
        .arg("--ceph-kek-path")
        .arg(&kek)
        .arg("--address")
        .arg(&socket)
        .args(["--log-level", "warn"]);
    if let Some(m) = &admin.monitors {
        cmd.arg(format!("--ceph-monitors={m}"));
    }
    cmd.env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(log.try_clone().context("log")?)
        .stderr(log);
    let mut daemon = Daemon {
        child: cmd.spawn().context("starting cephvol")?,
    };
    let pid = daemon.child.id();
    let (rate, p50, p99, idle, loaded) = rt.block_on(async {
        let clients = connect(&mut daemon, &socket).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let idle = rss_of(pid)?;
        let t = Instant::now();
        create_volumes(&clients, n).await?;
        wait_all_available(&clients, n).await?;
        let rate = n as f64 / t.elapsed().as_secs_f64();
        let mut times = Vec::with_capacity(LISTS);
        for _ in 0..LISTS {
            let mut c = clients.runtime.clone();
            let t = Instant::now();
            let listed = c
                .list_volumes(pb::ListVolumesRequest { filter: None })
                .await
                .map_err(|e| anyhow!("ListVolumes: {e}"))?
                .into_inner()
                .volumes
                .len();
            times.push(t.elapsed().as_secs_f64() * 1e3);
            if listed != n {
                bail!("listed {listed} volumes, expected {n}");
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let loaded = rss_of(pid)?;
        times.sort_by(f64::total_cmp);
        let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
        Ok::<_, anyhow::Error>((rate, at(0.5), at(0.99), idle, loaded))
    })?;
    drop(daemon);
    let mut raw = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        admin.run(
            "rados",
            &["-p", POOL, "listomapvals", "ironcore.csi.volumes"],
        )?;
        raw.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let reference = median(raw);
    let note = |what: &str| {
        format!(
            "{what} of a full ListVolumes of {n} provisioned volumes over the socket (the real \
             daemon, Ceph build, omap store), {LISTS} calls, vs `rados listomapvals` of the same \
             omap object (raw, incl. process start), median of 3; the {n} volumes were created \
             and provisioned at {rate:.0} volumes/s (8 CreateVolume in flight)"
        )
    };
    let rss_note = |what: String, rss: Rss| {
        format!(
            "{what}; the real daemon, Ceph build, --backend ceph and the omap store on the scale \
             pool; VmHWM {:.1} MiB, RssAnon {:.1} MiB",
            rss.hwm_mib, rss.anon_mib
        )
    };
    Ok(vec![
        Figure {
            name: "ceph_rss_idle_vs_budget".into(),
            ours: idle.rss_mib,
            reference: IDLE_BUDGET_MIB,
            unit: BUDGET_UNIT,
            note: rss_note(
                "connected to the cluster, 1 s after Status answered".into(),
                idle,
            ),
        },
        Figure {
            name: "ceph_rss_10k_volumes_vs_budget".into(),
            ours: loaded.rss_mib,
            reference: LOADED_BUDGET_MIB,
            unit: BUDGET_UNIT,
            note: rss_note(
                format!("{n} volumes provisioned, after {LISTS} full ListVolumes and 2 s quiet"),
                loaded,
            ),
        },
        Figure {
            name: "ceph_list_volumes_10k_p50_vs_rados_listomapvals".into(),
            ours: p50,
            reference,
            unit: "ms, lower is better",
            note: note("p50"),
        },
        Figure {
            name: "ceph_list_volumes_10k_p99_vs_rados_listomapvals".into(),
            ours: p99,
            reference,
            unit: "ms, lower is better",
            note: note("p99"),
        },
    ])
}

async fn connect(daemon: &mut Daemon, socket: &Path) -> Result<Clients> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = daemon.child.try_wait()? {
            bail!("the daemon exited at start with {status}");
        }
        if let Ok(mut c) = Clients::connect(socket).await {
            if c.runtime.status(pb::StatusRequest {}).await.is_ok() {
                return Ok(c);
            }
        }
        if Instant::now() > deadline {
            bail!("the daemon did not serve within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_all_available(clients: &Clients, n: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let volumes = clients
            .runtime
            .clone()
            .list_volumes(pb::ListVolumesRequest { filter: None })
            .await
            .map_err(|e| anyhow!("ListVolumes: {e}"))?
            .into_inner()
            .volumes;
        let ready = available(&volumes);
        if ready == n {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{ready} of {n} volumes available after 900 s");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Create and list costs at 10k and 100k records (1k and 10k with `--quick`).
fn store_scale(opts: &Opts, rt: &tokio::runtime::Runtime, admin: &Admin) -> Result<Vec<Figure>> {
    let (small, large) = if opts.quick {
        (1_000, 10_000)
    } else {
        (10_000, 100_000)
    };
    let (at_small, at_large) = rt.block_on(async {
        let backend = admin.backend().await?;
        let omap = OmapBackend::for_backend(&backend, 1000)?;
        let store = Arc::new(Store::<BenchImage>::open(Arc::new(omap)).await?);
        fill(&store, 0, small).await?;
        let at_small = costs(&store, small).await?;
        fill(&store, small, large).await?;
        let at_large = costs(&store, large).await?;
        Ok::<_, anyhow::Error>((at_small, at_large))
    })?;
    let k = |n: usize| format!("{}k", n / 1000);
    Ok(vec![
        Figure {
            name: "store_omap_create_100k_vs_10k".into(),
            ours: at_large.0,
            reference: at_small.0,
            unit: "us per call, lower is better",
            note: format!(
                "Store::create on omap (one object per kind, as the Go layout), 1000 one after \
                 the other, with {} records in the collection vs {}",
                k(large),
                k(small)
            ),
        },
        Figure {
            name: "store_omap_list_100k_vs_10k".into(),
            ours: at_large.1,
            reference: at_small.1,
            unit: "ms per list of all objects, lower is better",
            note: format!(
                "Store::list on omap (1000 per round trip, decoded), median of 3, of {} records \
                 vs {}",
                k(large),
                k(small)
            ),
        },
    ])
}

/// Creates records `from..to`, 16 at a time.
async fn fill(store: &Arc<Store<BenchImage>>, from: usize, to: usize) -> Result<()> {
    let results: Vec<_> = futures::stream::iter(from..to)
        .map(|i| {
            let store = store.clone();
            async move { store.create(new_volume(i)).await }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    for r in results {
        r?;
    }
    Ok(())
}

/// (µs per create of 1000 more, ms per list of all) at `n` records; the 1000 are removed again.
async fn costs(store: &Store<BenchImage>, n: usize) -> Result<(f64, f64)> {
    let t = Instant::now();
    let mut ids = Vec::with_capacity(1000);
    for i in 0..1000 {
        ids.push(store.create(new_volume(n + i)).await?.metadata().id.clone());
    }
    let create_us = t.elapsed().as_secs_f64() * 1e6 / 1000.0;
    for id in &ids {
        store.delete(id).await?;
    }
    let mut lists = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let all = store.list(&ListOptions::default()).await?;
        lists.push(t.elapsed().as_secs_f64() * 1e3);
        anyhow::ensure!(all.len() == n, "listed {} records, expected {n}", all.len());
    }
    Ok((create_us, median(lists)))
}
