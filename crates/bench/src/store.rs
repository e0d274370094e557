//! Figure `store`: `Store` Create/Get/Update/List with 10k objects (`--quick`: 1k) on the
//! `hostdir` backend (and the rados `omap` backend with the `ceph` feature and a cluster) against
//! the in-memory backend, plus an omap list against `rados listomapvals` of the same object.
//!
//! The objects are volumes as the provider stores them: created as the volume server creates them
//! (labels, class limits), then updated as the image reconciler leaves them (`Available`, access
//! data), so a record is about 1 KiB of JSON. One task issues the calls one after another:
//! * Create: N creates into an empty collection (µs per call);
//! * Get: every object once (µs per call);
//! * Update: every 10th object once, 1k of the 10k (µs per call; a durable `hostdir` write takes
//!   ~10 ms on this VM's disk, and updating all 10k would take minutes);
//! * List: the whole collection, decoded (ms per list, median of 3).
//!
//! They are stored in their own collection `cephvol-bench.volumes` (a newtype of `store::Image`
//! with another [`Object::COLLECTION`]), so the omap run never touches the provider's objects.
//! `hostdir` writes to a fresh directory under the system temp directory (the VM's ext4 disk
//! here): every write is durable (temp file, fsync, rename, fsync of the directory), which is what
//! the ratio mostly shows.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use controllers::limits_for_class;
use serde::{Deserialize, Serialize};
use store::keys::{CLASS_LABEL, MANAGER, MANAGER_LABEL};
use store::{Image, ImageAccess, ImageSpec, ImageState, ListOptions, Metadata, Object, Store};

use super::util::{median, temp_dir};
use super::{Figure, Opts};

/// Collection (omap object / hostdir directory) of the benchmark's objects.
pub const COLLECTION: &str = "cephvol-bench.volumes";

/// A volume record stored under [`COLLECTION`].
#[derive(Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub(crate) struct BenchImage(Image);

impl Object for BenchImage {
    const COLLECTION: &'static str = COLLECTION;

    fn metadata(&self) -> &Metadata {
        self.0.metadata()
    }

    fn metadata_mut(&mut self) -> &mut Metadata {
        self.0.metadata_mut()
    }

    fn prepare_create(&mut self) {
        self.0.prepare_create()
    }

    fn field(&self, name: &str) -> Option<String> {
        self.0.field(name)
    }

    fn indexed_fields() -> &'static [&'static str] {
        Image::indexed_fields()
    }
}

/// Update is timed on every `UPDATE_STRIDE`-th object.
const UPDATE_STRIDE: usize = 10;

/// Mean cost of each operation on one backend.
#[derive(Debug, Clone, Copy)]
struct Costs {
    create_us: f64,
    get_us: f64,
    update_us: f64,
    list_ms: f64,
}

pub fn run(opts: &Opts, _rt: &tokio::runtime::Runtime) -> Result<Vec<Figure>> {
    let n = if opts.quick { 1_000 } else { 10_000 };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")?;

    let memory = rt.block_on(measure(Arc::new(store::MemoryBackend::new()), n))?;
    eprintln!("  store memory: {memory:?}");
    let dir = temp_dir("store", None)?;
    let hostdir = store::HostDirBackend::open(dir.path())?;
    let hostdir = rt.block_on(measure(Arc::new(hostdir), n))?;
    eprintln!("  store hostdir: {hostdir:?}");
    drop(dir);

    let mut out = compare(
        "hostdir",
        &hostdir,
        &memory,
        n,
        "one JSON file per object, fsync per write, ext4 temp dir",
    );
    out.extend(omap::run(&rt, n, &memory)?);
    Ok(out)
}

/// The four lines of `backend` against the memory backend.
fn compare(backend: &str, ours: &Costs, memory: &Costs, n: usize, how: &str) -> Vec<Figure> {
    let note = |op: &str| format!("{op} at {n} objects, {backend} ({how}) vs memory, one caller");
    let updated = n.div_ceil(UPDATE_STRIDE);
    vec![
        Figure {
            name: format!("store_create_{backend}_vs_memory"),
            ours: ours.create_us,
            reference: memory.create_us,
            unit: "us per call",
            note: note("Create"),
        },
        Figure {
            name: format!("store_get_{backend}_vs_memory"),
            ours: ours.get_us,
            reference: memory.get_us,
            unit: "us per call",
            note: note("Get"),
        },
        Figure {
            name: format!("store_update_{backend}_vs_memory"),
            ours: ours.update_us,
            reference: memory.update_us,
            unit: "us per call",
            note: note(&format!("Update of {updated} of them")),
        },
        Figure {
            name: format!("store_list_{backend}_vs_memory"),
            ours: ours.list_ms,
            reference: memory.list_ms,
            unit: "ms per list of all objects",
            note: note("List (decoded, median of 3)"),
        },
    ]
}

/// A new volume as the volume server creates it.
pub(crate) fn new_volume(i: usize) -> BenchImage {
    let spec = ImageSpec {
        size: 10 << 30,
        limits: limits_for_class(3000, 100 << 20, 10, 15),
        ..ImageSpec::default()
    };
    let mut img = Image::new(store::new_id(), spec);
    let labels: BTreeMap<String, String> = [
        (MANAGER_LABEL, MANAGER.to_string()),
        (CLASS_LABEL, "standard".to_string()),
        ("bench-index", i.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    img.metadata.labels = labels;
    BenchImage(img)
}

/// What the image reconciler writes once the volume is provisioned.
fn provisioned(mut img: BenchImage) -> BenchImage {
    let id = img.0.metadata.id.clone();
    img.0.metadata.finalizers.push("image".into());
    img.0.status.state = ImageState::Available;
    img.0.status.size = img.0.spec.size;
    img.0.status.access = Some(ImageAccess {
        monitors: "10.0.0.1:6789,10.0.0.2:6789,10.0.0.3:6789".into(),
        handle: format!("cephvol/img_{id}"),
        user: "volumes".into(),
        user_key: "AQBhc2RmZ2hqa2w7MTIzNDU2Nzg5MGFzZGZnaGprbA==".into(),
    });
    img
}

async fn measure(backend: Arc<dyn store::Backend>, n: usize) -> Result<Costs> {
    let store = Store::<BenchImage>::open(backend).await?;
    let per_call = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;

    let t = Instant::now();
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        ids.push(store.create(new_volume(i)).await?.0.metadata.id);
    }
    let create_us = per_call(t.elapsed());

    let t = Instant::now();
    let mut objects = Vec::with_capacity(n);
    for id in &ids {
        objects.push(store.get(id).await?);
    }
    let get_us = per_call(t.elapsed());

    // Every UPDATE_STRIDE-th object (a durable hostdir write costs ~10 ms on this disk).
    let sample: Vec<BenchImage> = objects.into_iter().step_by(UPDATE_STRIDE).collect();
    let updates = sample.len().max(1);
    let t = Instant::now();
    for obj in sample {
        store.update(&provisioned(obj)).await?;
    }
    let update_us = t.elapsed().as_secs_f64() * 1e6 / updates as f64;

    let mut lists = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let all = store.list(&ListOptions::default()).await?;
        lists.push(t.elapsed().as_secs_f64() * 1e3);
        anyhow::ensure!(all.len() == n, "listed {} objects, expected {n}", all.len());
    }
    Ok(Costs {
        create_us,
        get_us,
        update_us,
        list_ms: median(lists),
    })
}

#[cfg(not(feature = "ceph"))]
mod omap {
    use super::*;

    pub fn run(_rt: &tokio::runtime::Runtime, _n: usize, _memory: &Costs) -> Result<Vec<Figure>> {
        println!("store_omap: skipped: {}", crate::cluster::skip_reason());
        Ok(Vec::new())
    }
}

#[cfg(feature = "ceph")]
mod omap {
    use std::process::{Command, Stdio};

    use anyhow::bail;
    use ceph::{CephBackend, CephConfig, OmapBackend};

    use super::*;

    pub fn run(rt: &tokio::runtime::Runtime, n: usize, memory: &Costs) -> Result<Vec<Figure>> {
        let Some(cfg) = CephConfig::from_env() else {
            println!("store_omap: skipped: {}", crate::cluster::skip_reason());
            return Ok(Vec::new());
        };
        let backend = match rt.block_on(CephBackend::connect(cfg.clone())) {
            Ok(b) => b,
            Err(e) => {
                println!("store_omap: skipped: cannot connect to the Ceph cluster ({e})");
                return Ok(Vec::new());
            }
        };
        // A leftover of an interrupted run would make creates fail.
        let _ = backend.ioctx().remove_object(COLLECTION);
        let omap = OmapBackend::for_backend(&backend, 1000)?;
        let result = rt.block_on(measure(Arc::new(omap), n));
        let listomapvals = result.as_ref().ok().map(|_| rados_listomapvals(&cfg));
        let _ = backend.ioctx().remove_object(COLLECTION);
        let ours = result?;
        eprintln!("  store omap: {ours:?}");
        let mut out = compare(
            "omap",
            &ours,
            memory,
            n,
            "rados omap of one object, pool of a 1-OSD cluster",
        );
        let reference = listomapvals.unwrap_or_else(|| bail!("no listing"))?;
        out.push(Figure {
            name: "store_list_omap_vs_rados_listomapvals".into(),
            ours: ours.list_ms,
            reference,
            unit: "ms per list of all objects",
            note: format!(
                "{n} objects: Store::list on omap (1000 per round trip, JSON decoded) vs \
                 `rados listomapvals` of the same object (output discarded; includes process \
                 start and connect), median of 3"
            ),
        });
        Ok(out)
    }

    /// Median time of `rados listomapvals` of the benchmark's object, in ms.
    fn rados_listomapvals(cfg: &CephConfig) -> Result<f64> {
        let mut times = Vec::new();
        for _ in 0..3 {
            let mut cmd = Command::new("rados");
            crate::cluster::cli_args(&mut cmd, cfg);
            cmd.args(["listomapvals", COLLECTION])
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            let t = Instant::now();
            let out = cmd.output().context("running rados")?;
            times.push(t.elapsed().as_secs_f64() * 1e3);
            if !out.status.success() {
                bail!(
                    "rados listomapvals failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
        Ok(median(times))
    }
}
