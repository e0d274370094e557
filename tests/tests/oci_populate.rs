//! Populate end to end from a real registry on loopback: the rootfs stream of `OciImageSource`
//! written into `rbd_testkit::fake::MemoryBackend` with several writes in flight, and the whole controller
//! path (Image with `spec.image` → OS snapshot Ready → volume Available, clone data = rootfs).
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use controllers::events::MemoryEvents;
use controllers::{os_image_name, volume_image_name, ControllerConfig, Controllers, ImageSource};
use rbd::{BlockBackend, CancellationToken, WriteOptions};
use rbd_testkit::fake::{MemoryBackend, Op};
use registry_fixture::{pattern, sha256, IronImage, TestRegistry};
use runner::{Runner, RunnerConfig, ShutdownMode};
use store::{
    Image, ImageSpec, ImageState, ListOptions, Snapshot, SnapshotState, Store, WatchEvent,
};
use volumeprovider::image_source::{OciImageSource, OciOptions};

const MIB: usize = 1024 * 1024;
/// Write request and fake object size (small: the tests run unoptimised).
const CHUNK: usize = 256 * 1024;

fn source() -> OciImageSource {
    OciImageSource::new(OciOptions {
        connect_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(10),
        read_timeout: Duration::from_secs(10),
        ..OciOptions::default()
    })
    .unwrap()
}

/// 1 MiB of data, 1 MiB of zeroes, 1 MiB + 100 bytes of data.
fn sparse_rootfs(seed: u64) -> Vec<u8> {
    [
        pattern(MIB, seed),
        vec![0u8; MIB],
        pattern(MIB + 100, seed + 1),
    ]
    .concat()
}

fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rootfs_streams_into_a_fake_rbd_image_with_four_writes_in_flight_skipping_zeroes() {
    let reg = TestRegistry::start();
    let data = sparse_rootfs(10);
    reg.pusher()
        .push_image("os/pop", "v1", &IronImage::rootfs(data.clone()))
        .await;
    let rootfs = source()
        .open_rootfs(&reg.reference("os/pop", "v1"), None)
        .await
        .unwrap();

    let backend = MemoryBackend::builder("pool")
        .chunk_size(CHUNK as u64)
        .build();
    backend.create_image("snap_x", rootfs.size).await.unwrap();
    backend.set_chunk_delay(Op::Write, Duration::from_millis(20));
    let reports = Arc::new(Mutex::new(Vec::new()));
    let r2 = reports.clone();
    let opts = WriteOptions {
        chunk_size: CHUNK,
        queue_depth: 4,
        skip_zeroes: true,
        start: 0,
        dirty_until: 0,
        total_hint: rootfs.size,
        passphrase: None,
    };
    let written = backend
        .write_stream(
            "snap_x",
            rootfs.data,
            opts,
            Arc::new(move |done, total| r2.lock().unwrap().push((done, total))),
            CancellationToken::new(),
        )
        .await
        .unwrap();

    assert_eq!(written, data.len() as u64);
    assert_eq!(
        backend.checksum("snap_x", None).unwrap(),
        hex_of(&sha256(&data))
    );
    assert!(
        backend.max_writes_in_flight() > 1,
        "writes overlap (queue depth 4)"
    );
    assert!(backend.max_writes_in_flight() <= 4);
    let stored = backend.pool_usage().await.unwrap().stored;
    assert_eq!(
        stored,
        9 * CHUNK as u64,
        "the 4 zero chunks are never written"
    );
    let last = *reports.lock().unwrap().last().unwrap();
    assert_eq!(last, (data.len() as u64, data.len() as u64));
}

#[tokio::test]
async fn a_corrupted_blob_makes_the_write_stream_fail() {
    let reg = TestRegistry::start();
    let data = pattern(MIB, 20);
    let pushed = reg
        .pusher()
        .push_image("os/bad", "v1", &IronImage::rootfs(data))
        .await;
    reg.corrupt_blob(&pushed.rootfs.unwrap().digest);
    let rootfs = source()
        .open_rootfs(&reg.reference("os/bad", "v1"), None)
        .await
        .unwrap();
    let backend = MemoryBackend::new("pool");
    backend.create_image("snap_x", rootfs.size).await.unwrap();
    let err = backend
        .write_stream(
            "snap_x",
            rootfs.data,
            WriteOptions::default(),
            rbd::no_progress(),
            CancellationToken::new(),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("digest mismatch"), "{err}");
}

/// A provider (stores, runner, controllers over the fake cluster and the real registry).
struct Provider {
    images: Store<Image>,
    snapshots: Store<Snapshot>,
    cluster: MemoryBackend,
    events: Arc<MemoryEvents>,
    runner: Runner,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<controllers::Result<()>>,
}

impl Provider {
    async fn start() -> Provider {
        let sb: Arc<dyn store::Backend> = Arc::new(store::MemoryBackend::new());
        let images = Store::<Image>::open(sb.clone()).await.unwrap();
        let snapshots = Store::<Snapshot>::open(sb).await.unwrap();
        let cluster = MemoryBackend::builder("pool")
            .chunk_size(CHUNK as u64)
            .build();
        cluster.set_chunk_delay(Op::Write, Duration::from_millis(5));
        let events = Arc::new(MemoryEvents::new());
        let runner = Runner::new(RunnerConfig::default());
        let cfg = ControllerConfig {
            worker_size: 2,
            monitors: "127.0.0.1:6789".into(),
            client: "client.volumes".into(),
            populator_buffer_size: CHUNK,
            populate_queue_depth: 4,
            ..ControllerConfig::default()
        };
        let controllers = Controllers::new(
            images.clone(),
            snapshots.clone(),
            Arc::new(cluster.clone()),
            Arc::new(source()),
            runner.clone(),
            events.clone(),
            cfg,
        );
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(controllers.run(shutdown.clone()));
        Provider {
            images,
            snapshots,
            cluster,
            events,
            runner,
            shutdown,
            task,
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
        self.runner
            .shutdown(ShutdownMode::Cancel {
                deadline: Duration::from_secs(1),
            })
            .await;
    }

    /// Creates `image` and waits (store watch, at most 60 s) until it reaches `Available` or
    /// `Error`; returns the stored image.
    async fn create_and_wait(&self, image: Image) -> Image {
        let mut watch = self.images.watch(ListOptions::default()).unwrap();
        let id = self.images.create(image).await.unwrap().metadata.id;
        let done = |i: &Image| matches!(i.status.state, ImageState::Available | ImageState::Error);
        let wait = async {
            loop {
                let current = self.images.get(&id).await.unwrap();
                if done(&current) {
                    return current;
                }
                match watch.recv().await {
                    Some(WatchEvent::Created(i) | WatchEvent::Updated(i))
                        if i.metadata.id == id && done(&i) =>
                    {
                        return i
                    }
                    Some(_) => continue,
                    None => panic!("store dropped"),
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(60), wait)
            .await
            .unwrap_or_else(|_| panic!("image {id} did not settle within 60 s"))
    }
}

fn os_volume(reference: &str, arch: Option<&str>, size: u64) -> Image {
    let mut img = Image::new(
        store::new_id(),
        ImageSpec {
            size,
            image: reference.to_string(),
            image_architecture: arch.map(str::to_string),
            ..Default::default()
        },
    );
    img.metadata.labels.insert(
        store::keys::MANAGER_LABEL.into(),
        store::keys::MANAGER.into(),
    );
    img
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_from_a_registry_image_is_populated_snapshotted_and_cloned() {
    let reg = TestRegistry::start();
    let amd = sparse_rootfs(30);
    let arm = pattern(MIB, 31);
    let idx = reg
        .pusher()
        .push_index(
            "os/gardenlinux",
            "1443",
            &[
                ("amd64", IronImage::rootfs(amd.clone())),
                ("arm64", IronImage::rootfs(arm)),
            ],
        )
        .await;
    let digest = idx.arch("amd64").manifest_digest.clone();
    let p = Provider::start().await;

    let volume_size = 4 * MIB as u64;
    let vol = p
        .create_and_wait(os_volume(
            &reg.reference("os/gardenlinux", "1443"),
            Some("amd64"),
            volume_size,
        ))
        .await;
    assert_eq!(
        vol.status.state,
        ImageState::Available,
        "{}",
        vol.status.message
    );
    assert_eq!(vol.spec.snapshot_ref.as_deref(), Some(digest.as_str()));

    let snap = p.snapshots.get(&digest).await.unwrap();
    assert_eq!(snap.status.state, SnapshotState::Ready);
    assert_eq!(snap.status.digest, digest);
    assert_eq!(
        snap.source.ironcore_image,
        reg.pinned("os/gardenlinux", &digest)
    );
    assert_eq!(
        snap.metadata.labels[store::keys::IMAGE_DIGEST_LABEL],
        digest
    );

    // The base image holds exactly the rootfs, its zero chunks never written.
    let base = os_image_name(&digest);
    let base_size = p.cluster.stat(&base).await.unwrap().size;
    let padded = [amd.clone(), vec![0u8; base_size as usize - amd.len()]].concat();
    assert_eq!(
        p.cluster.checksum(&base, Some("v1")).unwrap(),
        hex_of(&sha256(&padded))
    );
    assert!(
        p.cluster.max_writes_in_flight() > 1,
        "populate used several writes in flight"
    );

    // The volume is a clone whose data is the rootfs followed by zeroes.
    let name = volume_image_name(&vol.metadata.id);
    let info = p.cluster.stat(&name).await.unwrap();
    assert_eq!(info.parent.unwrap().image, base);
    assert_eq!(info.size, volume_size);
    let full = [amd.clone(), vec![0u8; volume_size as usize - amd.len()]].concat();
    assert_eq!(
        p.cluster.checksum(&name, None).unwrap(),
        hex_of(&sha256(&full))
    );

    // A second volume of the same image reuses the snapshot: one base image.
    let again = p
        .create_and_wait(os_volume(
            &reg.reference("os/gardenlinux", "1443"),
            Some("amd64"),
            volume_size,
        ))
        .await;
    assert_eq!(again.status.state, ImageState::Available);
    let bases: Vec<String> = p
        .cluster
        .list_images()
        .await
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with("snap_"))
        .collect();
    assert_eq!(bases, vec![base]);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_for_an_architecture_the_index_lacks_ends_in_error_with_a_no_platform_match_event()
{
    let reg = TestRegistry::start();
    reg.pusher()
        .push_index(
            "os/amd-only",
            "v1",
            &[("amd64", IronImage::rootfs(b"x".to_vec()))],
        )
        .await;
    let p = Provider::start().await;
    let vol = p
        .create_and_wait(os_volume(
            &reg.reference("os/amd-only", "v1"),
            Some("arm64"),
            MIB as u64,
        ))
        .await;
    assert_eq!(vol.status.state, ImageState::Error);
    assert!(!p
        .events
        .with_reason(
            &vol.metadata.id,
            controllers::events::reason::NO_PLATFORM_MATCH
        )
        .is_empty());
    assert!(p
        .snapshots
        .list(&ListOptions::default())
        .await
        .unwrap()
        .is_empty());
    p.stop().await;
}
