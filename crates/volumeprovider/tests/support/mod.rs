//! The harness of the in-process server tests (`server_volumes.rs`, `server_snapshots.rs`): the
//! IRI server over in-memory stores and the fake block backend, without the controllers; objects
//! are moved to their next state by editing the store, so every RPC's validation, codes,
//! conversion and filtering is checked deterministically.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use controllers::Kek;
use iri::meta_v1::ObjectMetadata;
use iri::volume_v1 as pb;
use iri::volume_v1::volume_runtime_server::VolumeRuntime as _;
use store::{Image, ImageAccess, ImageState, ListOptions, Snapshot, SnapshotState, Store};
use tonic::{Code, Request};
use volumeprovider::classes::{VolumeClass, VolumeClasses};
use volumeprovider::events::EventStore;
use volumeprovider::server::{ServerConfig, ServerParts, VolumeServer};

pub const GIB: i64 = 1 << 30;
pub const KEK: &[u8; 32] = b"abcjdkekakakakakakakkadfkkasfdks";

pub struct Harness {
    pub server: VolumeServer,
    pub images: Store<Image>,
    pub snapshots: Store<Snapshot>,
    pub events: Arc<EventStore>,
    /// The key/value backend under both stores (tests write raw records into it).
    pub objects: Arc<dyn store::Backend>,
}

pub async fn harness_with(encryption_unsupported: Option<&str>) -> Harness {
    let objects: Arc<dyn store::Backend> = Arc::new(store::MemoryBackend::new());
    let images = Store::<Image>::open(Arc::clone(&objects))
        .await
        .expect("image store");
    let snapshots = Store::<Snapshot>::open(Arc::clone(&objects))
        .await
        .expect("snapshot store");
    let block = rbd_testkit::fake::MemoryBackend::new("pool");
    block.set_capacity(100 * GIB as u64);
    let events = Arc::new(EventStore::new(100, Duration::from_secs(300)));
    let classes = VolumeClasses::new(vec![
        VolumeClass {
            name: "fast".into(),
            tps: 262_144_000,
            iops: 15000,
        },
        VolumeClass {
            name: "slow".into(),
            tps: 1000,
            iops: 10,
        },
    ])
    .expect("classes");
    let server = VolumeServer::new(ServerParts {
        images: images.clone(),
        snapshots: snapshots.clone(),
        backend: Arc::new(block),
        events: Arc::clone(&events),
        runner: None,
        metrics: None,
        config: ServerConfig {
            classes,
            kek: Some(Kek::from_bytes(KEK).expect("kek")),
            encryption_unsupported: encryption_unsupported.map(str::to_string),
            burst_factor: 10,
            burst_duration: 15,
            max_volume_size: volumeprovider::validate::DEFAULT_MAX_VOLUME_SIZE,
        },
    });
    Harness {
        server,
        images,
        snapshots,
        events,
        objects,
    }
}

pub async fn harness() -> Harness {
    harness_with(None).await
}

pub fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn volume_req(class: &str, size: i64, l: &[(&str, &str)]) -> pb::CreateVolumeRequest {
    pb::CreateVolumeRequest {
        volume: Some(pb::Volume {
            metadata: Some(ObjectMetadata {
                labels: labels(l),
                ..Default::default()
            }),
            spec: Some(pb::VolumeSpec {
                class: class.into(),
                resources: Some(pb::VolumeResources {
                    storage_bytes: size,
                }),
                ..Default::default()
            }),
            status: None,
        }),
    }
}

pub fn spec_of(r: &mut pb::CreateVolumeRequest) -> &mut pb::VolumeSpec {
    r.volume
        .as_mut()
        .and_then(|v| v.spec.as_mut())
        .expect("spec")
}

impl Harness {
    pub async fn create(&self, req: pb::CreateVolumeRequest) -> Result<pb::Volume, tonic::Status> {
        self.server
            .create_volume(Request::new(req))
            .await
            .map(|r| r.into_inner().volume.expect("volume"))
    }

    pub async fn create_ok(&self, class: &str, size: i64, l: &[(&str, &str)]) -> String {
        self.create(volume_req(class, size, l))
            .await
            .expect("created")
            .metadata
            .expect("md")
            .id
    }

    pub async fn list(&self, id: &str, sel: &[(&str, &str)]) -> Vec<pb::Volume> {
        let req = pb::ListVolumesRequest {
            filter: Some(pb::VolumeFilter {
                id: id.into(),
                label_selector: labels(sel),
            }),
        };
        self.server
            .list_volumes(Request::new(req))
            .await
            .expect("list")
            .into_inner()
            .volumes
    }

    pub async fn list_snaps(&self, id: &str, sel: &[(&str, &str)]) -> Vec<pb::VolumeSnapshot> {
        let req = pb::ListVolumeSnapshotsRequest {
            filter: Some(pb::VolumeSnapshotFilter {
                id: id.into(),
                label_selector: labels(sel),
            }),
        };
        self.server
            .list_volume_snapshots(Request::new(req))
            .await
            .expect("list")
            .into_inner()
            .volume_snapshots
    }

    /// What the image reconciler does when provisioning finished.
    pub async fn make_available(&self, id: &str) {
        let mut img = self.images.get(id).await.expect("image");
        img.status.state = ImageState::Available;
        img.status.size = controllers::round_size(img.spec.size);
        img.status.access = Some(ImageAccess {
            monitors: "mon:6789".into(),
            handle: format!("pool/img_{id}"),
            user: "volumes".into(),
            user_key: "AQBkey==".into(),
        });
        self.images.update(&img).await.expect("update");
    }

    pub async fn snapshot(
        &self,
        volume_id: &str,
        l: &[(&str, &str)],
    ) -> Result<pb::VolumeSnapshot, tonic::Status> {
        let req = pb::CreateVolumeSnapshotRequest {
            volume_snapshot: Some(pb::VolumeSnapshot {
                metadata: Some(ObjectMetadata {
                    labels: labels(l),
                    ..Default::default()
                }),
                spec: Some(pb::VolumeSnapshotSpec {
                    volume_id: volume_id.into(),
                }),
                status: None,
            }),
        };
        self.server
            .create_volume_snapshot(Request::new(req))
            .await
            .map(|r| r.into_inner().volume_snapshot.expect("snapshot"))
    }

    pub async fn make_ready(&self, id: &str, size: i64) {
        let mut s = self.snapshots.get(id).await.expect("snapshot");
        s.status.state = SnapshotState::Ready;
        s.status.size = size;
        self.snapshots.update(&s).await.expect("update");
    }

    pub async fn counts(&self) -> (usize, usize) {
        (
            self.images
                .list(&ListOptions::new())
                .await
                .expect("list")
                .len(),
            self.snapshots
                .list(&ListOptions::new())
                .await
                .expect("list")
                .len(),
        )
    }
}

pub fn code<T>(r: Result<T, tonic::Status>) -> (Code, String) {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(s) => (s.code(), s.message().to_string()),
    }
}
