//! Figures `ceph_os_volume_cold_vs_qd1` and `ceph_os_volume_warm_vs_qd1` (part of `ceph`;
//! cluster needed): what a user waits for most, an OS-image volume, from `Store::create` until the
//! store shows it `Available`.
//!
//! The controllers run in process on `CephBackend` with the daemon's `OciImageSource` and a real
//! `docker-registry` on loopback (the store in memory, as in `ceph_create_volume_*`). The image's
//! rootfs is 512 MiB (`--quick`: 32 MiB) of random bytes with every other 4 MiB zero, roughly the
//! share of an OS disk image that is empty.
//! * **cold**: the first volume of the image: resolve, pull and populate `snap_<digest>`, clone;
//! * **warm**: a second volume of the same image: a clone of the cached OS image.
//!
//! **Ours**: the daemon's defaults. **Reference**: the Go provider's populate, one write of 5 MiB
//! in flight (`populate_queue_depth` 1), otherwise the same code (both skip zero chunks). One
//! run each (the cold one populates); the OS image is removed between the two designs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use ceph::CephBackend;
use controllers::{os_image_name, ControllerConfig, Controllers, OS_SNAPSHOT_NAME};
use rbd::BlockBackend;
use registry_fixture::{IronImage, TestRegistry};
use runner::{Runner, RunnerConfig, ShutdownMode};
use store::keys::{CLASS_LABEL, MANAGER, MANAGER_LABEL};
use store::{Image, ImageSpec, ImageState, ListOptions, Snapshot, Store};
use volumeprovider::events::EventStore;
use volumeprovider::image_source::{OciImageSource, OciOptions};

use super::{Figure, Opts};

const MIB: usize = 1 << 20;
const GIB: u64 = 1 << 30;

/// Both figures (module docs).
pub fn run(
    opts: &Opts,
    rt: &tokio::runtime::Runtime,
    backend: &CephBackend,
) -> Result<Vec<Figure>> {
    let size = if opts.quick { 32 * MIB } else { 512 * MIB };
    let reg = match TestRegistry::try_start() {
        Ok(r) => r,
        Err(e) => {
            println!("ceph_os_volume: skipped ({e})");
            return Ok(Vec::new());
        }
    };
    let mut rootfs = testdata::pattern(size, 0x05_1ae);
    for block in rootfs.chunks_mut(4 * MIB).skip(1).step_by(2) {
        block.fill(0);
    }
    let pushed = rt.block_on(
        reg.pusher()
            .push_image("bench/os", "v1", &IronImage::rootfs(rootfs)),
    );
    let reference = reg.reference("bench/os", "v1");
    let digest = pushed.manifest_digest.clone();
    let defaults = ControllerConfig::default();
    let ours = rt.block_on(cold_and_warm(
        backend,
        &reference,
        &digest,
        defaults.clone(),
    ))?;
    let go = rt.block_on(cold_and_warm(
        backend,
        &reference,
        &digest,
        ControllerConfig {
            populate_queue_depth: 1,
            ..defaults.clone()
        },
    ))?;
    let note = |what: &str| {
        format!(
            "{what}: {} MiB rootfs (half of it zero) from docker-registry on loopback, \
             Store::create until Available, controllers on CephBackend; ours: queue depth {} \
             vs the Go provider's queue depth 1 ({} MiB requests, zero chunks skipped in both); \
             one run each",
            size / MIB,
            defaults.populate_queue_depth,
            controllers::DEFAULT_POPULATOR_BUFFER_SIZE / MIB
        )
    };
    Ok(vec![
        Figure {
            name: "ceph_os_volume_cold_vs_qd1".into(),
            ours: ours.0.as_secs_f64(),
            reference: go.0.as_secs_f64(),
            unit: "s to Available, lower is better",
            note: note("first volume of an image (resolve, pull + populate, clone)"),
        },
        Figure {
            name: "ceph_os_volume_warm_vs_qd1".into(),
            ours: ours.1.as_secs_f64() * 1e3,
            reference: go.1.as_secs_f64() * 1e3,
            unit: "ms to Available, lower is better",
            note: note("second volume of the same image (a clone of the cached OS image)"),
        },
    ])
}

/// (cold, warm) times of one design; removes the volumes and the OS image afterwards.
async fn cold_and_warm(
    backend: &CephBackend,
    reference: &str,
    digest: &str,
    mut cfg: ControllerConfig,
) -> Result<(Duration, Duration)> {
    cfg.monitors = std::env::var("CEPH_MONITORS").unwrap_or_default();
    cfg.client = std::env::var("CEPH_CLIENT").unwrap_or_else(|_| "client.cephvol".into());
    let objects: Arc<dyn store::Backend> = Arc::new(store::MemoryBackend::new());
    let images = Store::<Image>::open(objects.clone()).await?;
    let snapshots = Store::<Snapshot>::open(objects).await?;
    let runner = Runner::new(RunnerConfig::default());
    let source = OciImageSource::new(OciOptions::default()).map_err(|e| anyhow!("{e}"))?;
    let controllers = Controllers::new(
        images.clone(),
        snapshots,
        Arc::new(backend.clone()),
        Arc::new(source),
        runner.clone(),
        Arc::new(EventStore::new(100, Duration::from_secs(300))),
        cfg,
    );
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(controllers.run(shutdown.clone()));
    let result = async {
        let cold = create_and_wait(&images, reference).await?;
        let warm = create_and_wait(&images, reference).await?;
        for img in images.list(&ListOptions::default()).await? {
            images.delete(&img.metadata.id).await?;
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        while !images.list(&ListOptions::default()).await?.is_empty() {
            if Instant::now() > deadline {
                bail!("the volumes were not deleted within 120 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok((cold, warm))
    }
    .await;
    shutdown.cancel();
    let _ = task.await;
    runner
        .shutdown(ShutdownMode::Cancel {
            deadline: Duration::from_secs(5),
        })
        .await;
    // The provider keeps the OS image cached; the next design must pull it again.
    let name = os_image_name(digest);
    let _ = backend.unprotect_snapshot(&name, OS_SNAPSHOT_NAME).await;
    let _ = backend.remove_snapshot(&name, OS_SNAPSHOT_NAME).await;
    let _ = backend.remove_image(&name).await;
    result
}

/// One OS volume of `reference`, from `Store::create` until it is `Available`.
async fn create_and_wait(images: &Store<Image>, reference: &str) -> Result<Duration> {
    let spec = ImageSpec {
        size: GIB,
        image: reference.to_string(),
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
    let deadline = t + Duration::from_secs(600);
    loop {
        let img = images.get(&id).await?;
        match img.status.state {
            ImageState::Available => return Ok(t.elapsed()),
            ImageState::Error => bail!("volume {id} went to Error: {}", img.status.message),
            _ => {}
        }
        if Instant::now() > deadline {
            bail!("volume {id} not Available within 600 s");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
