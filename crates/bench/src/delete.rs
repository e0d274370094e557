//! Figure `ceph_delete_*` (part of `ceph`; cluster needed): deleting a volume whose snapshot has
//! restores, under the two deletion policies, on the real cluster.
//!
//! For each policy, on a fresh provider (controllers and runner in process on `CephBackend`, the
//! daemon's defaults but `delete_policy`, the store in memory): a volume of 2 GiB (`--quick`:
//! 64 MiB) filled with pseudo-random data, a snapshot of it and three volumes restored from the
//! snapshot (clones). Then the volume is deleted and two times are taken from `Store::delete`:
//! until the volume is gone for clients (`ListVolumes` no longer shows it: its record is gone or
//! `Retained`) and until its deletion is finished (the record gone, or `Retained` with nothing
//! left to do). **Bytes copied**: what the clones and a re-home image hold of their own afterwards
//! (`rbd du`; a clone that was not flattened holds nothing). Finally the snapshot and the restores
//! are deleted and everything must go (under `deferred` that releases the retained volume too);
//! that time is in the note.
//!
//! The two policies run one after the other in one run; `deferred` is "ours", `flatten` (the Go
//! provider's) the reference.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use ceph::{CephBackend, CephConfig};
use controllers::{ControllerConfig, DeletePolicy};
use rbd::{BlockBackend, CancellationToken, WriteOptions};
use store::{Image, ImageState, Snapshot, SnapshotSource, SnapshotState};

use super::cluster::cli_args;
use super::util::NoImages;
use super::world::{managed, volume, wait_until, Design, Provider};
use super::{Figure, Opts};

const MIB: u64 = 1 << 20;
/// Restores of the snapshot.
const RESTORES: usize = 3;
/// Bound of every wait.
const WAIT: Duration = Duration::from_secs(600);

/// What one policy measured.
struct Outcome {
    /// From `Store::delete` until clients no longer see the volume.
    hidden: Duration,
    /// From `Store::delete` until the deletion has nothing left to do.
    finished: Duration,
    /// Bytes the clones and a re-home image hold of their own afterwards.
    copied: u64,
    /// Deleting the snapshot and the restores afterwards, until everything was gone.
    release: Duration,
}

/// Both policies, one run each.
pub fn run(
    opts: &Opts,
    rt: &tokio::runtime::Runtime,
    backend: &CephBackend,
    cfg: &CephConfig,
) -> Result<Vec<Figure>> {
    let size = if opts.quick { 64 * MIB } else { 2048 * MIB };
    let deferred = rt
        .block_on(scenario(backend, cfg, DeletePolicy::Deferred, size))
        .context("deferred policy")?;
    let flatten = rt
        .block_on(scenario(backend, cfg, DeletePolicy::Flatten, size))
        .context("flatten policy")?;
    let note = format!(
        "a {} MiB volume full of data, a snapshot, {RESTORES} restores (clones); deleted with \
         --delete-policy deferred vs flatten. Gone from ListVolumes {:.2} s vs {:.2} s; deletion \
         finished {:.2} s vs {:.2} s; bytes copied {} MiB vs {} MiB; deleting the snapshot and \
         the restores afterwards until nothing was left: {:.2} s vs {:.2} s",
        size / MIB,
        deferred.hidden.as_secs_f64(),
        flatten.hidden.as_secs_f64(),
        deferred.finished.as_secs_f64(),
        flatten.finished.as_secs_f64(),
        deferred.copied / MIB,
        flatten.copied / MIB,
        deferred.release.as_secs_f64(),
        flatten.release.as_secs_f64(),
    );
    Ok(vec![
        Figure {
            name: "ceph_delete_gone_from_list_deferred_vs_flatten".into(),
            ours: deferred.hidden.as_secs_f64(),
            reference: flatten.hidden.as_secs_f64(),
            unit: "s from DeleteVolume until ListVolumes no longer shows it, lower is better",
            note: note.clone(),
        },
        Figure {
            name: "ceph_delete_finished_deferred_vs_flatten".into(),
            ours: deferred.finished.as_secs_f64(),
            reference: flatten.finished.as_secs_f64(),
            unit: "s until the deletion has nothing left to do, lower is better",
            note: "set-up as above".into(),
        },
        Figure {
            name: "ceph_delete_mib_copied_deferred_vs_flatten".into(),
            ours: (deferred.copied / MIB) as f64,
            reference: (flatten.copied / MIB) as f64,
            unit:
                "MiB the deletion copied (rbd du of the clones and re-home image), lower is better",
            note: "set-up as above".into(),
        },
    ])
}

async fn scenario(
    backend: &CephBackend,
    ceph: &CephConfig,
    policy: DeletePolicy,
    size: u64,
) -> Result<Outcome> {
    let cfg = ControllerConfig {
        monitors: std::env::var("CEPH_MONITORS").unwrap_or_default(),
        client: std::env::var("CEPH_CLIENT").unwrap_or_else(|_| "client.cephvol".into()),
        delete_policy: policy,
        ..ControllerConfig::default()
    };
    let provider = Provider::start(
        Arc::new(backend.clone()),
        Arc::new(NoImages),
        Design::Ours,
        cfg,
    )
    .await?;
    let result = measure(&provider, backend, ceph, size).await;
    provider.stop(Duration::from_secs(5)).await;
    result
}

async fn measure(
    p: &Provider,
    backend: &CephBackend,
    ceph: &CephConfig,
    size: u64,
) -> Result<Outcome> {
    let (images, snapshots) = (&p.images, &p.snapshots);
    // Unthrottled volumes: the class limits would pace the data written below.
    let plain = |snapshot_ref: Option<String>| {
        let mut v = volume(size, snapshot_ref);
        v.spec.limits = Default::default();
        v
    };
    let parent = images.create(plain(None)).await?.metadata.id;
    wait_until(images, "the parent Available", WAIT, |all| {
        state(all, &parent) == Some(ImageState::Available)
    })
    .await?;
    fill(backend, &controllers::volume_image_name(&parent), size).await?;
    let snap = Snapshot::new(
        store::new_id(),
        SnapshotSource {
            ironcore_image: String::new(),
            volume_image_id: parent.clone(),
        },
    );
    let sid = snapshots.create(managed(snap)).await?.metadata.id;
    wait_until(snapshots, "the snapshot Ready", WAIT, |all| {
        all.iter()
            .any(|s| s.metadata.id == sid && s.status.state == SnapshotState::Ready)
    })
    .await?;
    let mut restores = Vec::new();
    for _ in 0..RESTORES {
        restores.push(images.create(plain(Some(sid.clone()))).await?.metadata.id);
    }
    wait_until(images, "the restores Available", WAIT, |all| {
        restores
            .iter()
            .all(|r| state(all, r) == Some(ImageState::Available))
    })
    .await?;

    let t = Instant::now();
    images.delete(&parent).await?;
    wait_until(images, "the volume gone for clients", WAIT, |all| {
        all.iter()
            .find(|i| i.metadata.id == parent)
            .is_none_or(|i| !volumeprovider::convert::is_visible_volume(i))
    })
    .await?;
    let hidden = t.elapsed();
    loop {
        let all = images.list(&store::ListOptions::default()).await?;
        let settled = match state(&all, &parent) {
            None => true,
            Some(ImageState::Retained) => p.runner.snapshot().is_empty(),
            Some(_) => false,
        };
        if settled {
            break;
        }
        if t.elapsed() > WAIT {
            bail!("the deletion did not finish within {WAIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let finished = t.elapsed();
    let mut copied = 0;
    for id in restores.iter().chain([&sid]) {
        copied += rbd_used(ceph, &controllers::volume_image_name(id))?;
    }

    let t = Instant::now();
    snapshots.delete(&sid).await?;
    for r in &restores {
        images.delete(r).await?;
    }
    wait_until(images, "every volume gone", WAIT, |all| all.is_empty()).await?;
    wait_until(snapshots, "the snapshot gone", WAIT, |all| all.is_empty()).await?;
    let release = t.elapsed();
    let ours: Vec<String> = restores
        .iter()
        .chain([&parent, &sid])
        .map(|id| controllers::volume_image_name(id))
        .collect();
    let left: Vec<String> = backend
        .list_images()
        .await?
        .into_iter()
        .filter(|n| ours.contains(n))
        .collect();
    if !left.is_empty() {
        bail!("images left behind: {left:?}");
    }
    Ok(Outcome {
        hidden,
        finished,
        copied,
        release,
    })
}

fn state(all: &[Image], id: &str) -> Option<ImageState> {
    all.iter()
        .find(|i| i.metadata.id == id)
        .map(|i| i.status.state.clone())
}

/// Writes `size` bytes of pseudo-random data into `image` (4 MiB requests, 4 in flight).
async fn fill(backend: &CephBackend, image: &str, size: u64) -> Result<()> {
    const CHUNK: u64 = 4 * MIB;
    let chunks = size.div_ceil(CHUNK);
    let stream = futures::stream::iter((0..chunks).map(move |i| {
        let len = CHUNK.min(size - i * CHUNK) as usize;
        Ok::<Bytes, std::io::Error>(Bytes::from(testdata::pattern(len, 0xde1e7e + i)))
    }));
    let opts = WriteOptions {
        chunk_size: CHUNK as usize,
        queue_depth: 4,
        skip_zeroes: false,
        start: 0,
        dirty_until: 0,
        total_hint: size,
        passphrase: None,
    };
    let n = backend
        .write_stream(
            image,
            Box::pin(stream),
            opts,
            rbd::no_progress(),
            CancellationToken::new(),
        )
        .await?;
    if n != size {
        bail!("wrote {n} bytes of {size}");
    }
    Ok(())
}

/// Bytes `image` holds of its own (`rbd du`; 0 for a missing image).
fn rbd_used(cfg: &CephConfig, image: &str) -> Result<u64> {
    let mut cmd = Command::new("rbd");
    cli_args(&mut cmd, cfg);
    cmd.args(["du", "--format", "json", image])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = cmd.output().map_err(|e| anyhow!("running rbd du: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("No such file") || err.contains("not found") {
            return Ok(0);
        }
        bail!("rbd du {image}: {}", err.trim());
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("rbd du JSON")?;
    Ok(v["images"]
        .as_array()
        .map(|a| a.iter().filter_map(|i| i["used_size"].as_u64()).sum())
        .unwrap_or(0))
}
