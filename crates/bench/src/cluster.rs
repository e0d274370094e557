//! Figure `ceph` (cargo feature `ceph` and a cluster from `cargo xtask ceph up`, whose
//! `cargo xtask ceph env` variables `cargo xtask bench` passes on): cephvol's librbd paths against
//! Ceph's own `rbd` command on the same pool.
//!
//! * `ceph_populate_vs_rbd_import`: a 256 MiB file of random bytes (`--quick`: 32 MiB) written into
//!   a new image with `CephBackend::create_image` + `write_stream` (the populate path: 5 MiB
//!   requests, queue depth 4, as the daemon's defaults), the file read as a stream, against
//!   `rbd import FILE` (MB/s, median of 3; `--quick`: 1).
//! * `ceph_populate_registry_vs_write_limit`: the populate path from a loopback registry against
//!   the cluster's write limit (`rbd bench`); see `populate_limit.rs`.
//! * `ceph_flatten_vs_rbd_flatten`: flatten of a clone of a 256 MiB image full of data with
//!   `CephBackend::flatten` against `rbd flatten` of a second clone of the same snapshot (MB/s).
//! * `ceph_create_volume_vs_rbd_create`: an empty 1 GiB volume created through the store and
//!   reconciled by the controllers on `CephBackend` (image, WWN and QoS metadata, access data with
//!   the client key) until the store shows it `Available`, against `rbd create --size 1G`
//!   (ms, median of 10; `--quick`: 3). The store is in memory: the omap collections of the pool
//!   may belong to another provider.
//! * `ceph_os_volume_{cold,warm}_vs_qd1`: an OS-image volume to `Available`, first and second of
//!   its image, against the Go provider's one write in flight (see `os_volume.rs`).
//! * `ceph_responsiveness_*`: the same creates while encrypted volumes are formatted and OS-image
//!   volumes wait for a silent registry, against idle (see `cluster_load.rs`).
//! * `ceph_list_volumes_*`, `ceph_rss_*`, `store_omap_*_100k_vs_10k`: the daemon (its list
//!   times and resident memory on the Ceph backend) and the omap store at scale, in a pool of
//!   their own (see `omap_scale.rs`).
//! * `ceph_delete_*`: deleting a volume whose snapshot has three restores, deletion policy
//!   `deferred` against `flatten` (see `delete.rs`).
//!
//! The `rbd` runs include the process start and the cluster connection (tens of ms); cephvol's
//! connection is made once, as in the daemon. Every image the figure creates is named
//! `cephvol-bench-*` or `img_<random id>` and removed at the end.

#[cfg(feature = "ceph")]
use std::process::Command;

#[cfg(not(feature = "ceph"))]
use super::{Figure, Opts};

/// Why the Ceph figures are skipped in this build/run (`CEPHVOL_BENCH_CEPH_SKIP` from
/// `cargo xtask bench`, else what this build lacks).
pub fn skip_reason() -> String {
    if let Ok(reason) = std::env::var("CEPHVOL_BENCH_CEPH_SKIP") {
        if !reason.is_empty() {
            return reason;
        }
    }
    if cfg!(feature = "ceph") {
        "no Ceph cluster up (cargo xtask ceph up); CEPH_CONF/CEPH_POOL unset".into()
    } else {
        "built without the `ceph` feature (cargo xtask bench enables it when a cluster is up)"
            .into()
    }
}

#[cfg(not(feature = "ceph"))]
pub fn run(_opts: &Opts, _rt: &tokio::runtime::Runtime) -> anyhow::Result<Vec<Figure>> {
    println!("ceph: skipped: {}", skip_reason());
    Ok(Vec::new())
}

/// Adds the connection options of `cfg` to an `rbd`/`rados` command.
#[cfg(feature = "ceph")]
pub fn cli_args(cmd: &mut Command, cfg: &ceph::CephConfig) {
    if let Some(conf) = &cfg.conf_file {
        cmd.arg("-c").arg(conf);
    }
    if let Some(m) = &cfg.monitors {
        cmd.arg("-m").arg(m);
    }
    cmd.arg("--id")
        .arg(cfg.user.strip_prefix("client.").unwrap_or(&cfg.user));
    if let Some(k) = &cfg.keyring {
        cmd.arg("--keyring").arg(k);
    } else if let Some(k) = &cfg.key_file {
        cmd.arg("--keyfile").arg(k);
    }
    cmd.arg("-p").arg(&cfg.pool);
}

#[cfg(feature = "ceph")]
pub use real::run;

#[cfg(feature = "ceph")]
mod real {
    use std::path::Path;
    use std::process::Stdio;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use anyhow::{anyhow, bail, Context, Result};
    use bytes::Bytes;
    use ceph::{CephBackend, CephConfig};
    use controllers::{
        limits_for_class, ControllerConfig, Controllers, DEFAULT_POPULATOR_BUFFER_SIZE,
    };
    use rbd::{BlockBackend, ByteStream, CancellationToken, WriteOptions};
    use runner::{Runner, RunnerConfig, ShutdownMode};
    use store::keys::{CLASS_LABEL, MANAGER, MANAGER_LABEL};
    use store::{Image, ImageSpec, ImageState, ListOptions, Snapshot, Store, WatchEvent};
    use tokio::io::AsyncReadExt;
    use volumeprovider::events::EventStore;

    use super::super::util::{median, temp_dir, NoImages};
    use super::super::{Figure, Opts};
    use super::{cli_args, skip_reason, Command};

    const MIB: usize = 1 << 20;
    const GIB: u64 = 1 << 30;
    /// Prefix of every image this figure creates.
    const PREFIX: &str = "cephvol-bench-";

    pub fn run(opts: &Opts, _rt: &tokio::runtime::Runtime) -> Result<Vec<Figure>> {
        let Some(cfg) = CephConfig::from_env() else {
            println!("ceph: skipped: {}", skip_reason());
            return Ok(Vec::new());
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("tokio runtime")?;
        // The cluster can go away between `cargo xtask ceph status` and here: say so, and let
        // the other figures run.
        let backend = match rt.block_on(CephBackend::connect(cfg.clone())) {
            Ok(b) => b,
            Err(e) => {
                println!("ceph: skipped: cannot connect to the Ceph cluster ({e})");
                return Ok(Vec::new());
            }
        };
        let size = if opts.quick { 32 * MIB } else { 256 * MIB };
        let runs = if opts.quick { 1 } else { 3 };
        let creates = if opts.quick { 3 } else { 10 };
        rt.block_on(cleanup(&backend));
        let dir = temp_dir("ceph", None)?;
        let file = dir.path().join("rootfs.raw");
        std::fs::write(&file, testdata::pattern(size, 7)).context("writing the source file")?;

        let mut out = Vec::new();
        let result = (|| -> Result<()> {
            out.push(populate(&rt, &backend, &cfg, &file, size, runs)?);
            out.extend(super::super::populate_limit::run(
                opts, &rt, &backend, &cfg,
            )?);
            out.push(flatten(&rt, &backend, &cfg, &file, size, runs)?);
            out.push(create_volume(&rt, &backend, &cfg, creates)?);
            out.extend(super::super::os_volume::run(opts, &rt, &backend)?);
            out.extend(super::super::cluster_load::run(opts, &rt, &backend)?);
            out.extend(super::super::delete::run(opts, &rt, &backend, &cfg)?);
            out.extend(super::super::omap_scale::run(opts, &rt, &cfg)?);
            Ok(())
        })();
        rt.block_on(cleanup(&backend));
        result?;
        Ok(out)
    }

    fn mbps(size: usize, d: Duration) -> f64 {
        size as f64 / d.as_secs_f64().max(1e-9) / 1e6
    }

    fn populate(
        rt: &tokio::runtime::Runtime,
        backend: &CephBackend,
        cfg: &CephConfig,
        file: &Path,
        size: usize,
        runs: usize,
    ) -> Result<Figure> {
        let depth = ControllerConfig::default().populate_queue_depth.max(1);
        let (mut ours, mut reference) = (Vec::new(), Vec::new());
        for i in 0..runs {
            let name = format!("{PREFIX}populate-{i}");
            let t = Instant::now();
            rt.block_on(async {
                backend.create_image(&name, size as u64).await?;
                let opts = WriteOptions {
                    chunk_size: DEFAULT_POPULATOR_BUFFER_SIZE,
                    queue_depth: depth,
                    skip_zeroes: true,
                    start: 0,
                    dirty_until: 0,
                    total_hint: size as u64,
                    passphrase: None,
                };
                let n = backend
                    .write_stream(
                        &name,
                        file_stream(file).await?,
                        opts,
                        rbd::no_progress(),
                        CancellationToken::new(),
                    )
                    .await?;
                anyhow::ensure!(n == size as u64, "wrote {n} bytes of {size}");
                Ok::<(), anyhow::Error>(())
            })?;
            ours.push(mbps(size, t.elapsed()));
            rt.block_on(backend.remove_image(&name))?;

            let name = format!("{PREFIX}import-{i}");
            let t = Instant::now();
            rbd_cli(
                cfg,
                &[
                    "import",
                    "--no-progress",
                    &file.display().to_string(),
                    &name,
                ],
            )?;
            reference.push(mbps(size, t.elapsed()));
            rbd_cli(cfg, &["rm", "--no-progress", &name])?;
        }
        Ok(Figure {
            name: "ceph_populate_vs_rbd_import".into(),
            ours: median(ours),
            reference: median(reference),
            unit: "MB/s, higher is better; target ratio >= 1.0",
            note: format!(
                "{} MiB random file into a new image: create_image + write_stream ({} MiB \
                 requests, queue depth {depth}) vs `rbd import` (incl. process start and \
                 connect), median of {runs}",
                size / MIB,
                DEFAULT_POPULATOR_BUFFER_SIZE / MIB
            ),
        })
    }

    fn flatten(
        rt: &tokio::runtime::Runtime,
        backend: &CephBackend,
        cfg: &CephConfig,
        file: &Path,
        size: usize,
        runs: usize,
    ) -> Result<Figure> {
        let base = format!("{PREFIX}base");
        rbd_cli(
            cfg,
            &[
                "import",
                "--no-progress",
                &file.display().to_string(),
                &base,
            ],
        )?;
        rt.block_on(async {
            backend.create_snapshot(&base, "s").await?;
            backend.protect_snapshot(&base, "s").await
        })?;
        let (mut ours, mut reference) = (Vec::new(), Vec::new());
        for i in 0..runs {
            let a = format!("{PREFIX}clone-a-{i}");
            let b = format!("{PREFIX}clone-b-{i}");
            rt.block_on(async {
                backend.clone_image(&base, "s", &a).await?;
                backend.clone_image(&base, "s", &b).await
            })?;
            let t = Instant::now();
            rt.block_on(backend.flatten(&a, rbd::no_progress(), CancellationToken::new()))?;
            ours.push(mbps(size, t.elapsed()));
            let t = Instant::now();
            rbd_cli(cfg, &["flatten", "--no-progress", &b])?;
            reference.push(mbps(size, t.elapsed()));
            rt.block_on(async {
                backend.remove_image(&a).await?;
                backend.remove_image(&b).await
            })?;
        }
        Ok(Figure {
            name: "ceph_flatten_vs_rbd_flatten".into(),
            ours: median(ours),
            reference: median(reference),
            unit: "MB/s, higher is better; target ratio >= 0.95",
            note: format!(
                "clone of a {} MiB image full of data: CephBackend::flatten vs `rbd flatten` \
                 (incl. process start and connect), median of {runs}",
                size / MIB
            ),
        })
    }

    fn create_volume(
        rt: &tokio::runtime::Runtime,
        backend: &CephBackend,
        cfg: &CephConfig,
        creates: usize,
    ) -> Result<Figure> {
        let ours = rt.block_on(create_through_controllers(backend, creates))?;
        let calls = rt.block_on(call_costs(backend))?;
        let mut reference = Vec::new();
        for i in 0..creates {
            let name = format!("{PREFIX}create-{i}");
            let t = Instant::now();
            rbd_cli(cfg, &["create", "--size", "1G", &name])?;
            reference.push(t.elapsed().as_secs_f64() * 1e3);
            rbd_cli(cfg, &["rm", "--no-progress", &name])?;
        }
        Ok(Figure {
            name: "ceph_create_volume_vs_rbd_create".into(),
            ours: median(ours),
            reference: median(reference),
            unit: "ms, lower is better; target ratio <= 1.5",
            note: format!(
                "empty 1 GiB volume: Store::create until the store shows it Available \
                 (controllers on CephBackend: image, WWN + 6 QoS metadata, client key, access) \
                 vs `rbd create --size 1G` (incl. process start and connect), median of \
                 {creates}, one at a time; single CephBackend calls: {calls}"
            ),
        })
    }

    /// What single backend calls of the provisioning path cost (for the note).
    async fn call_costs(backend: &CephBackend) -> Result<String> {
        let name = format!("{PREFIX}calls");
        let mut parts = Vec::new();
        let mut time = |what: &str, t: Instant| {
            parts.push(format!("{what} {:.1} ms", t.elapsed().as_secs_f64() * 1e3));
        };
        let t = Instant::now();
        backend.create_image(&name, GIB).await?;
        time("create_image", t);
        let t = Instant::now();
        backend.stat(&name).await?;
        time("stat", t);
        let t = Instant::now();
        backend
            .metadata_set(&name, "wwn", "0123456789abcdef")
            .await?;
        time("metadata_set", t);
        let t = Instant::now();
        backend.metadata_get(&name, "wwn").await?;
        time("metadata_get", t);
        let t = Instant::now();
        backend.metadata_list(&name).await?;
        time("metadata_list", t);
        let client = std::env::var("CEPH_CLIENT").unwrap_or_else(|_| "client.cephvol".into());
        let t = Instant::now();
        backend.client_key(&client).await?;
        time("client_key", t);
        let t = Instant::now();
        backend.remove_image(&name).await?;
        time("remove_image", t);
        Ok(parts.join(", "))
    }

    /// Creates `n` volumes one at a time through the store and the controllers; ms each.
    async fn create_through_controllers(backend: &CephBackend, n: usize) -> Result<Vec<f64>> {
        let objects: Arc<dyn store::Backend> = Arc::new(store::MemoryBackend::new());
        let images = Store::<Image>::open(objects.clone()).await?;
        let snapshots = Store::<Snapshot>::open(objects).await?;
        let runner = Runner::new(RunnerConfig::default());
        let client = std::env::var("CEPH_CLIENT").unwrap_or_else(|_| "client.cephvol".into());
        let cfg = ControllerConfig {
            monitors: std::env::var("CEPH_MONITORS").unwrap_or_default(),
            client,
            ..ControllerConfig::default()
        };
        let controllers = Controllers::new(
            images.clone(),
            snapshots,
            Arc::new(backend.clone()),
            Arc::new(NoImages),
            runner.clone(),
            Arc::new(EventStore::new(100, Duration::from_secs(300))),
            cfg,
        );
        let shutdown = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(controllers.run(shutdown.clone()));
        let mut watch = images.watch(ListOptions::default())?;
        let mut took = Vec::new();
        let result = async {
            for _ in 0..n {
                let spec = ImageSpec {
                    size: GIB,
                    limits: limits_for_class(3000, 100 << 20, 10, 15),
                    ..ImageSpec::default()
                };
                let mut img = Image::new(store::new_id(), spec);
                img.metadata
                    .labels
                    .insert(MANAGER_LABEL.into(), MANAGER.into());
                img.metadata
                    .labels
                    .insert(CLASS_LABEL.into(), "standard".into());
                let id = img.metadata.id.clone();
                let t = Instant::now();
                images.create(img).await?;
                wait_for(&mut watch, &images, &id, Duration::from_secs(60), |i| {
                    i.is_some_and(|i| i.status.state == ImageState::Available)
                })
                .await?;
                took.push(t.elapsed().as_secs_f64() * 1e3);
                images.delete(&id).await?;
                wait_for(&mut watch, &images, &id, Duration::from_secs(60), |i| {
                    i.is_none()
                })
                .await?;
            }
            Ok::<(), anyhow::Error>(())
        }
        .await;
        shutdown.cancel();
        let _ = task.await;
        runner
            .shutdown(ShutdownMode::Cancel {
                deadline: Duration::from_secs(5),
            })
            .await;
        result?;
        Ok(took)
    }

    /// Waits until `done(current state of id)` holds, woken by the watch.
    async fn wait_for(
        watch: &mut store::Watch<Image>,
        images: &Store<Image>,
        id: &str,
        timeout: Duration,
        done: impl Fn(Option<&Image>) -> bool,
    ) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let current = match images.get(id).await {
                Ok(i) => Some(i),
                Err(store::StoreError::NotFound(_)) => None,
                Err(e) => return Err(e.into()),
            };
            if done(current.as_ref()) {
                return Ok(());
            }
            // Any event (or a short timeout) re-checks.
            let ev = tokio::time::timeout_at(
                deadline.min(tokio::time::Instant::now() + Duration::from_millis(200)),
                watch.recv(),
            )
            .await;
            if let Ok(Some(WatchEvent::Updated(i) | WatchEvent::Created(i))) = &ev {
                if i.metadata.id == id && i.status.state == ImageState::Error {
                    bail!("volume {id} went to Error: {}", i.status.message);
                }
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("volume {id} not done within {timeout:?}");
            }
        }
    }

    /// The file as a stream of 4 MiB chunks.
    async fn file_stream(path: &Path) -> Result<ByteStream> {
        let f = tokio::fs::File::open(path)
            .await
            .with_context(|| format!("opening {}", path.display()))?;
        let stream = futures::stream::unfold(Some(f), |f| async move {
            let mut f = f?;
            let mut buf = vec![0u8; 4 * MIB];
            let mut filled = 0;
            while filled < buf.len() {
                match f.read(&mut buf[filled..]).await {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) => return Some((Err(e), None)),
                }
            }
            if filled == 0 {
                return None;
            }
            buf.truncate(filled);
            Some((Ok(Bytes::from(buf)), Some(f)))
        });
        Ok(Box::pin(stream))
    }

    /// Runs `rbd ARGS` on the pool; fails with its stderr.
    fn rbd_cli(cfg: &CephConfig, args: &[&str]) -> Result<()> {
        let mut cmd = Command::new("rbd");
        cli_args(&mut cmd, cfg);
        cmd.args(args).stdout(Stdio::null()).stderr(Stdio::piped());
        let out = cmd.output().map_err(|e| anyhow!("running rbd: {e}"))?;
        if !out.status.success() {
            bail!(
                "rbd {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// Removes every image (and its snapshots) this figure may have left.
    async fn cleanup(backend: &CephBackend) {
        let Ok(names) = backend.list_images().await else {
            return;
        };
        // Clones first, then the base.
        let mut names: Vec<String> = names
            .into_iter()
            .filter(|n| n.starts_with(PREFIX))
            .collect();
        names.sort_by_key(|n| n.ends_with("base"));
        for name in names {
            if let Ok(snaps) = backend.list_snapshots(&name).await {
                for s in snaps {
                    let _ = backend.unprotect_snapshot(&name, &s.name).await;
                    let _ = backend.remove_snapshot(&name, &s.name).await;
                }
            }
            let _ = backend.remove_image(&name).await;
        }
    }
}
