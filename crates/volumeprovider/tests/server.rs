//! The IRI server in-process over in-memory stores and the fake block backend, without the
//! controllers: objects are moved to their next state by editing the store, so every RPC's
//! validation, codes, conversion and filtering is checked deterministically.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use controllers::events::{Event, EventType};
use controllers::Kek;
use iri::cephvol::v1alpha1 as pbp;
use iri::cephvol::v1alpha1::progress_server::Progress as _;
use iri::meta_v1::ObjectMetadata;
use iri::volume_v1 as pb;
use iri::volume_v1::volume_runtime_server::VolumeRuntime as _;
use store::{keys, Image, ImageAccess, ImageState, ListOptions, Snapshot, SnapshotState, Store};
use tonic::{Code, Request};
use volumeprovider::classes::{VolumeClass, VolumeClasses};
use volumeprovider::convert;
use volumeprovider::events::EventStore;
use volumeprovider::server::{ServerConfig, ServerParts, VolumeServer};

const GIB: i64 = 1 << 30;
const KEK: &[u8; 32] = b"abcjdkekakakakakakakkadfkkasfdks";

struct Harness {
    server: VolumeServer,
    images: Store<Image>,
    snapshots: Store<Snapshot>,
    events: Arc<EventStore>,
}

async fn harness_with(encryption_unsupported: Option<&str>) -> Harness {
    let objects: Arc<dyn store::Backend> = Arc::new(store::MemoryBackend::new());
    let images = Store::<Image>::open(Arc::clone(&objects))
        .await
        .expect("image store");
    let snapshots = Store::<Snapshot>::open(objects)
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
        },
    });
    Harness {
        server,
        images,
        snapshots,
        events,
    }
}

async fn harness() -> Harness {
    harness_with(None).await
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn volume_req(class: &str, size: i64, l: &[(&str, &str)]) -> pb::CreateVolumeRequest {
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

fn spec_of(r: &mut pb::CreateVolumeRequest) -> &mut pb::VolumeSpec {
    r.volume
        .as_mut()
        .and_then(|v| v.spec.as_mut())
        .expect("spec")
}

impl Harness {
    async fn create(&self, req: pb::CreateVolumeRequest) -> Result<pb::Volume, tonic::Status> {
        self.server
            .create_volume(Request::new(req))
            .await
            .map(|r| r.into_inner().volume.expect("volume"))
    }

    async fn create_ok(&self, class: &str, size: i64, l: &[(&str, &str)]) -> String {
        self.create(volume_req(class, size, l))
            .await
            .expect("created")
            .metadata
            .expect("md")
            .id
    }

    async fn list(&self, id: &str, sel: &[(&str, &str)]) -> Vec<pb::Volume> {
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

    async fn list_snaps(&self, id: &str, sel: &[(&str, &str)]) -> Vec<pb::VolumeSnapshot> {
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
    async fn make_available(&self, id: &str) {
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

    async fn snapshot(
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

    async fn make_ready(&self, id: &str, size: i64) {
        let mut s = self.snapshots.get(id).await.expect("snapshot");
        s.status.state = SnapshotState::Ready;
        s.status.size = size;
        self.snapshots.update(&s).await.expect("update");
    }

    async fn counts(&self) -> (usize, usize) {
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

fn code<T>(r: Result<T, tonic::Status>) -> (Code, String) {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(s) => (s.code(), s.message().to_string()),
    }
}

#[tokio::test]
async fn version_reports_the_drop_in_runtime_name() {
    let h = harness().await;
    let v = h
        .server
        .version(Request::new(pb::VersionRequest::default()))
        .await
        .expect("ok")
        .into_inner();
    assert_eq!(v.runtime_name, "ceph-provider");
    assert_eq!(v.runtime_version, env!("CARGO_PKG_VERSION"));
}

#[tokio::test]
async fn status_lists_classes_in_file_order_with_the_pool_capacity() {
    let h = harness().await;
    let st = h
        .server
        .status(Request::new(pb::StatusRequest {}))
        .await
        .expect("ok")
        .into_inner();
    let names: Vec<_> = st
        .volume_class_status
        .iter()
        .map(|c| c.volume_class.clone().expect("class").name)
        .collect();
    assert_eq!(names, ["fast", "slow"]);
    let caps = st.volume_class_status[0]
        .volume_class
        .clone()
        .expect("c")
        .capabilities
        .expect("caps");
    assert_eq!((caps.tps, caps.iops), (262_144_000, 15000));
    assert!(st
        .volume_class_status
        .iter()
        .all(|c| c.quantity >= 100 * GIB));
}

#[tokio::test]
async fn create_volume_stores_the_spec_and_replies_pending_with_the_requested_size() {
    let h = harness().await;
    let v = h
        .create(volume_req("fast", GIB + 1, &[("a", "b")]))
        .await
        .expect("created");
    let md = v.metadata.clone().expect("md");
    assert_eq!(md.id.len(), 63);
    assert!(md.created_at > 0);
    assert_eq!(md.labels["a"], "b");
    let spec = v.spec.clone().expect("spec");
    assert_eq!(spec.class, "fast");
    assert_eq!(spec.resources.expect("r").storage_bytes, GIB + 1);
    assert!(spec.encryption.is_none() && spec.volume_data_source.is_none());
    let status = v.status.expect("status");
    assert_eq!(status.state, pb::VolumeState::VolumePending as i32);
    assert!(status.access.is_none());
    assert_eq!(status.resources.expect("r").storage_bytes, 0);

    let img = h.images.get(&md.id).await.expect("stored");
    assert_eq!(img.spec.size, (GIB + 1) as u64);
    assert_eq!(img.metadata.labels[keys::CLASS_LABEL], "fast");
    assert_eq!(img.metadata.labels[keys::MANAGER_LABEL], keys::MANAGER);
    assert_eq!(img.spec.limits["rbd_qos_iops_limit"], 15000);
    assert_eq!(img.spec.limits["rbd_qos_bps_burst"], 2_621_440_000);
    assert_eq!(img.spec.limits["rbd_qos_iops_burst_seconds"], 15);
    assert_eq!(img.spec.wwn.len(), 16);
    assert!(img.spec.encryption.is_none() && img.spec.snapshot_ref.is_none());
}

#[tokio::test]
async fn an_available_volume_lists_with_access_data_and_rounded_status_size() {
    let h = harness().await;
    let id = h.create_ok("fast", GIB + 1, &[]).await;
    h.make_available(&id).await;
    let wwn = h.images.get(&id).await.expect("img").spec.wwn;
    let v = h.list(&id, &[]).await.pop().expect("listed");
    assert_eq!(
        v.spec.expect("spec").resources.expect("r").storage_bytes,
        GIB + 1,
        "requested size echoed"
    );
    let st = v.status.expect("status");
    assert_eq!(st.state, pb::VolumeState::VolumeAvailable as i32);
    assert_eq!(
        st.resources.expect("r").storage_bytes,
        2 * GIB,
        "rounded actual size"
    );
    let a = st.access.expect("access");
    assert_eq!(a.driver, "ceph");
    assert_eq!(a.handle, wwn);
    assert_eq!(a.attributes["monitors"], "mon:6789");
    assert_eq!(a.attributes["image"], format!("pool/img_{id}"));
    assert_eq!(a.secret_data["userID"], b"volumes");
    assert_eq!(a.secret_data["userKey"], b"AQBkey==");
}

#[tokio::test]
async fn lists_filter_by_id_and_selector_and_an_unknown_id_is_an_empty_list() {
    let h = harness().await;
    let a = h
        .create_ok("fast", GIB, &[("app", "x"), ("tier", "1")])
        .await;
    let b = h.create_ok("fast", GIB, &[("app", "y")]).await;
    assert_eq!(h.list("", &[]).await.len(), 2);
    let only_a = h.list("", &[("app", "x")]).await;
    assert_eq!(only_a.len(), 1);
    assert_eq!(only_a[0].metadata.clone().expect("md").id, a);
    assert!(h.list("", &[("app", "x"), ("tier", "2")]).await.is_empty());
    assert!(h.list("0".repeat(63).as_str(), &[]).await.is_empty());
    assert!(h.list("../../etc/passwd", &[]).await.is_empty());
    // id wins over the selector
    let by_id = h.list(&b, &[("app", "x")]).await;
    assert_eq!(by_id.len(), 1);
    assert_eq!(by_id[0].metadata.clone().expect("md").id, b);
    // replies are deterministic
    assert_eq!(h.list("", &[]).await, h.list("", &[]).await);
}

#[tokio::test]
async fn a_bad_selector_is_invalid_argument() {
    let h = harness().await;
    let req = pb::ListVolumesRequest {
        filter: Some(pb::VolumeFilter {
            id: String::new(),
            label_selector: labels(&[("", "x")]),
        }),
    };
    let (c, m) = code(h.server.list_volumes(Request::new(req)).await);
    assert_eq!(c, Code::InvalidArgument);
    assert!(m.starts_with("filter.label_selector:"), "{m}");
}

#[tokio::test]
async fn one_broken_or_unknown_object_never_fails_a_list() {
    let h = harness().await;
    let good = h.create_ok("fast", GIB, &[]).await;
    let broken = h.create_ok("fast", GIB, &[]).await;
    let future = h.create_ok("fast", GIB, &[]).await;
    let mut img = h.images.get(&broken).await.expect("img");
    img.metadata
        .annotations
        .insert(keys::LABELS_ANNOTATION.into(), "{oops".into());
    h.images.update(&img).await.expect("update");
    let mut img = h.images.get(&future).await.expect("img");
    img.status.state = ImageState::Other("SomethingNew".into());
    h.images.update(&img).await.expect("update");
    let ids: Vec<_> = h
        .list("", &[])
        .await
        .into_iter()
        .map(|v| v.metadata.expect("md").id)
        .collect();
    assert!(ids.contains(&good) && ids.contains(&future));
    assert!(!ids.contains(&broken), "broken annotations are skipped");
    let v = h.list(&future, &[]).await.pop().expect("listed");
    assert_eq!(
        v.status.expect("s").state,
        pb::VolumeState::VolumePending as i32
    );
}

#[tokio::test]
async fn internal_and_unmanaged_images_are_never_listed_or_deleted() {
    let h = harness().await;
    let id = h
        .create_ok(
            "fast",
            GIB,
            &[("volumepoollet.ironcore.dev/volume-uid", "u1")],
        )
        .await;
    // a re-homed clone: same IRI labels, no manager label, id = snapshot id
    let mut clone = h.images.get(&id).await.expect("img");
    clone.metadata = store::Metadata::new("rehomed");
    clone.metadata.annotations = h.images.get(&id).await.expect("img").metadata.annotations;
    clone
        .metadata
        .labels
        .insert(keys::INTERNAL_LABEL.into(), keys::INTERNAL_REHOME.into());
    clone.spec.snapshot_ref = Some("rehomed".into());
    h.images.create(clone).await.expect("created");
    let listed = h
        .list("", &[("volumepoollet.ironcore.dev/volume-uid", "u1")])
        .await;
    assert_eq!(listed.len(), 1, "never two volumes with one volume-uid");
    assert!(h.list("rehomed", &[]).await.is_empty());
    let (c, _) = code(
        h.server
            .delete_volume(Request::new(pb::DeleteVolumeRequest {
                volume_id: "rehomed".into(),
            }))
            .await,
    );
    assert_eq!(c, Code::InvalidArgument);
    assert!(h
        .images
        .get("rehomed")
        .await
        .expect("still there")
        .metadata
        .deleted_at
        .is_none());
}

#[tokio::test]
async fn malformed_create_requests_are_rejected_and_change_nothing() {
    let h = harness_with(Some("encryption needs the ceph backend")).await;
    let mut cases: Vec<(pb::CreateVolumeRequest, Code, &str)> = Vec::new();
    cases.push((
        pb::CreateVolumeRequest { volume: None },
        Code::InvalidArgument,
        "volume: required",
    ));
    let mut r = volume_req("fast", GIB, &[]);
    r.volume.as_mut().expect("v").metadata = None;
    cases.push((r, Code::InvalidArgument, "volume.metadata: required"));
    let mut r = volume_req("fast", GIB, &[]);
    r.volume.as_mut().expect("v").spec = None;
    cases.push((r, Code::InvalidArgument, "volume.spec: required"));
    let mut r = volume_req("fast", GIB, &[]);
    spec_of(&mut r).resources = None;
    cases.push((r, Code::InvalidArgument, "volume.spec.resources: required"));
    cases.push((
        volume_req("fast", 0, &[]),
        Code::InvalidArgument,
        "volume.spec.resources.storage_bytes: must be > 0",
    ));
    cases.push((
        volume_req("fast", -1, &[]),
        Code::InvalidArgument,
        "volume.spec.resources.storage_bytes: must be > 0",
    ));
    cases.push((
        volume_req("gold", GIB, &[]),
        Code::InvalidArgument,
        "volume.spec.class: unknown volume class",
    ));
    cases.push((
        volume_req("", GIB, &[]),
        Code::InvalidArgument,
        "volume.spec.class: required",
    ));
    let mut r = volume_req("fast", GIB, &[]);
    spec_of(&mut r).volume_data_source = Some(pb::VolumeDataSource {
        image_data_source: Some(pb::ImageDataSource::default()),
        snapshot_data_source: None,
    });
    cases.push((
        r,
        Code::InvalidArgument,
        "volume.spec.volume_data_source.image_data_source.image: must not be empty",
    ));
    let mut r = volume_req("fast", GIB, &[]);
    spec_of(&mut r).encryption = Some(pb::EncryptionSpec {
        secret_data: BTreeMap::new(),
    });
    cases.push((
        r,
        Code::InvalidArgument,
        "volume.spec.encryption.secret_data: missing key \"encryptionKey\"",
    ));
    let mut r = volume_req("fast", GIB, &[]);
    spec_of(&mut r).encryption = Some(pb::EncryptionSpec {
        secret_data: BTreeMap::from([("encryptionKey".to_string(), b"pw".to_vec())]),
    });
    cases.push((
        r,
        Code::FailedPrecondition,
        "volume.spec.encryption: encryption needs the ceph backend",
    ));
    let mut r = volume_req("fast", GIB, &[]);
    spec_of(&mut r).volume_data_source = Some(pb::VolumeDataSource {
        image_data_source: None,
        snapshot_data_source: Some(pb::SnapshotDataSource {
            snapshot_id: "nope".into(),
        }),
    });
    cases.push((
        r,
        Code::NotFound,
        "volume.spec.volume_data_source.snapshot_data_source.snapshot_id: snapshot nope not found",
    ));

    for (req, want_code, want_msg) in cases {
        let (c, m) = code(h.create(req).await);
        assert_eq!(c, want_code, "{m}");
        assert!(
            m.starts_with(want_msg),
            "{m:?} should start with {want_msg:?}"
        );
    }
    assert_eq!(h.counts().await, (0, 0), "nothing was created");
}

#[tokio::test]
async fn an_encrypted_volume_keeps_only_the_kek_wrapped_passphrase() {
    let h = harness().await;
    let mut r = volume_req("fast", GIB, &[]);
    spec_of(&mut r).encryption = Some(pb::EncryptionSpec {
        secret_data: BTreeMap::from([("encryptionKey".to_string(), b"s3cret".to_vec())]),
    });
    let v = h.create(r).await.expect("created");
    assert!(
        v.spec.clone().expect("spec").encryption.is_none(),
        "encryption is never echoed"
    );
    let img = h
        .images
        .get(&v.metadata.expect("md").id)
        .await
        .expect("img");
    let enc = img.spec.encryption.expect("encryption");
    assert_eq!(enc.encryption_type, store::EncryptionType::Encrypted);
    assert!(!enc.encrypted_passphrase.windows(6).any(|w| w == b"s3cret"));
    let kek = Kek::from_bytes(KEK).expect("kek");
    assert_eq!(
        kek.decrypt(&enc.encrypted_passphrase).expect("decrypts"),
        b"s3cret"
    );
}

#[tokio::test]
async fn an_os_image_source_is_recorded_with_its_architecture() {
    let h = harness().await;
    let mut r = volume_req("fast", GIB, &[]);
    spec_of(&mut r).volume_data_source = Some(pb::VolumeDataSource {
        image_data_source: Some(pb::ImageDataSource {
            image: "reg.test/os:1".into(),
            architecture: "arm64".into(),
        }),
        snapshot_data_source: None,
    });
    let id = h.create(r).await.expect("created").metadata.expect("md").id;
    let img = h.images.get(&id).await.expect("img");
    assert_eq!(img.spec.image, "reg.test/os:1");
    assert_eq!(img.spec.image_architecture.as_deref(), Some("arm64"));
}

#[tokio::test]
async fn expand_grows_only_and_unknown_ids_are_not_found() {
    let h = harness().await;
    let id = h.create_ok("fast", GIB, &[]).await;
    let exp = |id: &str, size: i64| pb::ExpandVolumeRequest {
        volume_id: id.into(),
        resources: Some(pb::VolumeResources {
            storage_bytes: size,
        }),
    };
    let (c, m) = code(h.server.expand_volume(Request::new(exp(&id, GIB))).await);
    assert_eq!(c, Code::InvalidArgument);
    assert!(
        m.starts_with("resources.storage_bytes: 1073741824 must be greater than the current size"),
        "{m}"
    );
    let (c, _) = code(
        h.server
            .expand_volume(Request::new(exp(&id, GIB / 2)))
            .await,
    );
    assert_eq!(c, Code::InvalidArgument);
    let (c, _) = code(h.server.expand_volume(Request::new(exp(&id, 0))).await);
    assert_eq!(c, Code::InvalidArgument);
    let (c, m) = code(
        h.server
            .expand_volume(Request::new(exp(&"f".repeat(63), 2 * GIB)))
            .await,
    );
    assert_eq!(c, Code::NotFound, "{m}");
    let (c, _) = code(
        h.server
            .expand_volume(Request::new(pb::ExpandVolumeRequest {
                volume_id: id.clone(),
                resources: None,
            }))
            .await,
    );
    assert_eq!(c, Code::InvalidArgument);
    assert_eq!(
        h.images.get(&id).await.expect("img").spec.size,
        GIB as u64,
        "unchanged"
    );
    h.server
        .expand_volume(Request::new(exp(&id, 2 * GIB)))
        .await
        .expect("grows");
    assert_eq!(
        h.images.get(&id).await.expect("img").spec.size,
        2 * GIB as u64
    );
    let v = h.list(&id, &[]).await.pop().expect("listed");
    assert_eq!(
        v.spec.expect("s").resources.expect("r").storage_bytes,
        2 * GIB
    );
}

#[tokio::test]
async fn delete_is_soft_idempotent_and_not_found_for_unknown_ids() {
    let h = harness().await;
    let id = h.create_ok("fast", GIB, &[]).await;
    // the reconciler's finalizer keeps the object while it cleans up
    let mut img = h.images.get(&id).await.expect("img");
    img.metadata.add_finalizer(keys::IMAGE_FINALIZER);
    h.images.update(&img).await.expect("update");
    let del = |id: &str| pb::DeleteVolumeRequest {
        volume_id: id.into(),
    };
    h.server
        .delete_volume(Request::new(del(&id)))
        .await
        .expect("deleted");
    let v = h
        .list(&id, &[])
        .await
        .pop()
        .expect("still listed while cleaning up");
    assert!(v.metadata.expect("md").deleted_at > 0);
    h.server
        .delete_volume(Request::new(del(&id)))
        .await
        .expect("again: OK");
    let (c, _) = code(
        h.server
            .delete_volume(Request::new(del(&"a".repeat(63))))
            .await,
    );
    assert_eq!(c, Code::NotFound);
    let (c, m) = code(h.server.delete_volume(Request::new(del(""))).await);
    assert_eq!(
        (c, m.as_str()),
        (Code::InvalidArgument, "volume_id: must not be empty")
    );
    let (c, _) = code(
        h.server
            .expand_volume(Request::new(pb::ExpandVolumeRequest {
                volume_id: id.clone(),
                resources: Some(pb::VolumeResources {
                    storage_bytes: 5 * GIB,
                }),
            }))
            .await,
    );
    assert_eq!(c, Code::FailedPrecondition, "no expand while deleting");
}

#[tokio::test]
async fn snapshots_need_an_available_source_and_report_pending_then_ready() {
    let h = harness().await;
    let id = h.create_ok("fast", GIB, &[]).await;
    let (c, m) = code(h.snapshot(&id, &[]).await);
    assert_eq!(c, Code::FailedPrecondition);
    assert!(m.contains("is not available"), "{m}");
    let (c, _) = code(h.snapshot(&"b".repeat(63), &[]).await);
    assert_eq!(c, Code::NotFound);
    let (c, m) = code(h.snapshot("", &[]).await);
    assert_eq!(
        (c, m.as_str()),
        (
            Code::InvalidArgument,
            "volume_snapshot.spec.volume_id: must not be empty"
        )
    );
    assert_eq!(h.counts().await.1, 0);

    h.make_available(&id).await;
    let s = h.snapshot(&id, &[("snap", "1")]).await.expect("created");
    let sid = s.metadata.clone().expect("md").id;
    assert_eq!(s.spec.expect("spec").volume_id, id);
    assert_eq!(
        s.status.expect("status").state,
        pb::VolumeSnapshotState::VolumeSnapshotPending as i32
    );
    h.make_ready(&sid, GIB).await;
    let listed = h.list_snaps(&sid, &[]).await.pop().expect("listed");
    let st = listed.status.expect("status");
    assert_eq!(
        (st.state, st.size),
        (pb::VolumeSnapshotState::VolumeSnapshotReady as i32, GIB)
    );
    assert_eq!(h.list_snaps("", &[("snap", "1")]).await.len(), 1);
    assert!(h.list_snaps("", &[("snap", "2")]).await.is_empty());
    assert!(h.list_snaps(&"c".repeat(63), &[]).await.is_empty());
}

#[tokio::test]
async fn a_snapshot_accepts_the_k8s_volume_name_in_the_same_namespace() {
    let h = harness().await;
    let id = h
        .create_ok(
            "fast",
            GIB,
            &[
                (convert::VOLUME_NAME_LABEL, "data"),
                (convert::VOLUME_NAMESPACE_LABEL, "ns1"),
            ],
        )
        .await;
    h.make_available(&id).await;
    let (c, _) = code(
        h.snapshot("data", &[(convert::SNAPSHOT_NAMESPACE_LABEL, "ns2")])
            .await,
    );
    assert_eq!(c, Code::NotFound, "other namespace");
    let s = h
        .snapshot("data", &[(convert::SNAPSHOT_NAMESPACE_LABEL, "ns1")])
        .await
        .expect("by name");
    assert_eq!(s.spec.expect("spec").volume_id, id);
}

#[tokio::test]
async fn restore_accepts_the_snapshot_id_or_its_k8s_name_and_checks_the_size() {
    let h = harness().await;
    let src = h.create_ok("fast", GIB, &[]).await;
    h.make_available(&src).await;
    let sid = h
        .snapshot(
            &src,
            &[
                (convert::SNAPSHOT_NAME_LABEL, "snap-a"),
                (convert::SNAPSHOT_NAMESPACE_LABEL, "ns1"),
            ],
        )
        .await
        .expect("snapshot")
        .metadata
        .expect("md")
        .id;
    h.make_ready(&sid, GIB).await;
    let restore = |snapshot_id: &str, size: i64, ns: &str| {
        let mut r = volume_req("fast", size, &[(convert::VOLUME_NAMESPACE_LABEL, ns)]);
        spec_of(&mut r).volume_data_source = Some(pb::VolumeDataSource {
            image_data_source: None,
            snapshot_data_source: Some(pb::SnapshotDataSource {
                snapshot_id: snapshot_id.into(),
            }),
        });
        r
    };
    let by_id = h
        .create(restore(&sid, GIB, "x"))
        .await
        .expect("by id")
        .metadata
        .expect("md")
        .id;
    assert_eq!(
        h.images
            .get(&by_id)
            .await
            .expect("img")
            .spec
            .snapshot_ref
            .as_deref(),
        Some(sid.as_str())
    );
    let by_name = h
        .create(restore("snap-a", 0, "ns1"))
        .await
        .expect("by name");
    assert_eq!(
        by_name
            .spec
            .expect("spec")
            .resources
            .expect("r")
            .storage_bytes,
        GIB,
        "0 = the source size"
    );
    let (c, _) = code(h.create(restore("snap-a", GIB, "ns2")).await);
    assert_eq!(c, Code::NotFound, "a name only resolves in its namespace");
    let (c, m) = code(h.create(restore(&sid, GIB / 2, "x")).await);
    assert_eq!(c, Code::InvalidArgument);
    assert!(m.starts_with("volume.spec.resources.storage_bytes:"), "{m}");
    // a restore cannot bring its own encryption
    let mut r = restore(&sid, GIB, "x");
    spec_of(&mut r).encryption = Some(pb::EncryptionSpec {
        secret_data: BTreeMap::from([("encryptionKey".to_string(), b"pw".to_vec())]),
    });
    let (c, m) = code(h.create(r).await);
    assert_eq!(c, Code::InvalidArgument);
    assert!(m.starts_with("volume.spec.encryption:"), "{m}");
    // a failed snapshot cannot be restored
    let mut s = h.snapshots.get(&sid).await.expect("snap");
    s.status.state = SnapshotState::Failed;
    h.snapshots.update(&s).await.expect("update");
    let (c, _) = code(h.create(restore(&sid, GIB, "x")).await);
    assert_eq!(c, Code::FailedPrecondition);
}

#[tokio::test]
async fn a_restore_of_an_encrypted_source_inherits_its_encryption_when_the_key_matches() {
    let h = harness().await;
    let enc = |pw: &[u8]| {
        Some(pb::EncryptionSpec {
            secret_data: BTreeMap::from([("encryptionKey".to_string(), pw.to_vec())]),
        })
    };
    let mut r = volume_req("fast", GIB, &[]);
    spec_of(&mut r).encryption = enc(b"pw");
    let src = h.create(r).await.expect("created").metadata.expect("md").id;
    h.make_available(&src).await;
    let sid = h
        .snapshot(&src, &[])
        .await
        .expect("snap")
        .metadata
        .expect("md")
        .id;
    h.make_ready(&sid, GIB).await;
    let restore = |pw: &[u8]| {
        let mut r = volume_req("fast", GIB, &[]);
        let s = spec_of(&mut r);
        s.encryption = enc(pw);
        s.volume_data_source = Some(pb::VolumeDataSource {
            image_data_source: None,
            snapshot_data_source: Some(pb::SnapshotDataSource {
                snapshot_id: sid.clone(),
            }),
        });
        r
    };
    let (c, _) = code(h.create(restore(b"other")).await);
    assert_eq!(c, Code::InvalidArgument);
    let id = h
        .create(restore(b"pw"))
        .await
        .expect("same secret")
        .metadata
        .expect("md")
        .id;
    let (restored, source) = (
        h.images.get(&id).await.expect("img"),
        h.images.get(&src).await.expect("img"),
    );
    assert_eq!(restored.spec.encryption, source.spec.encryption);
}

#[tokio::test]
async fn delete_snapshot_is_not_found_for_unknown_ids_and_invalid_for_os_snapshots() {
    let h = harness().await;
    let del = |id: &str| pb::DeleteVolumeSnapshotRequest {
        volume_snapshot_id: id.into(),
    };
    let (c, _) = code(
        h.server
            .delete_volume_snapshot(Request::new(del(&"d".repeat(63))))
            .await,
    );
    assert_eq!(c, Code::NotFound);
    let os = Snapshot::new(
        "sha256:abc",
        store::SnapshotSource {
            ironcore_image: "reg/os@sha256:abc".into(),
            volume_image_id: String::new(),
        },
    );
    h.snapshots.create(os).await.expect("os snapshot");
    assert!(
        h.list_snaps("", &[]).await.is_empty(),
        "OS snapshots are internal"
    );
    let (c, _) = code(
        h.server
            .delete_volume_snapshot(Request::new(del("sha256:abc")))
            .await,
    );
    assert_eq!(c, Code::InvalidArgument);

    let src = h.create_ok("fast", GIB, &[]).await;
    h.make_available(&src).await;
    let sid = h
        .snapshot(&src, &[])
        .await
        .expect("snap")
        .metadata
        .expect("md")
        .id;
    h.server
        .delete_volume_snapshot(Request::new(del(&sid)))
        .await
        .expect("deleted");
    assert!(
        h.list_snaps(&sid, &[]).await.is_empty(),
        "no finalizer: gone at once"
    );
}

#[tokio::test]
async fn list_events_honours_id_labels_and_the_time_window() {
    let h = harness().await;
    let a = h.create_ok("fast", GIB, &[("app", "x")]).await;
    let b = h.create_ok("fast", GIB, &[("app", "y")]).await;
    for (id, secs) in [(&a, 1000), (&b, 2000)] {
        let img = h.images.get(id).await.expect("img");
        h.events.push(Event {
            involved: img.metadata,
            event_type: EventType::Warning,
            reason: "R".into(),
            action: "A".into(),
            message: format!("m{secs}"),
            time: chrono::DateTime::from_timestamp(secs, 0).expect("t"),
        });
    }
    let list = |id: &str, sel: &[(&str, &str)], from: i64, to: i64| {
        let req = pb::ListEventsRequest {
            filter: Some(pb::EventFilter {
                id: id.into(),
                label_selector: labels(sel),
                events_from_time: from,
                events_to_time: to,
            }),
        };
        let s = h.server.clone();
        async move {
            s.list_events(Request::new(req))
                .await
                .expect("ok")
                .into_inner()
                .events
                .into_iter()
                .map(|e| e.spec.expect("spec"))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(list("", &[], 0, 0).await.len(), 2);
    let only_b = list(&b, &[], 0, 0).await;
    assert_eq!(only_b.len(), 1);
    let e = &only_b[0];
    assert_eq!(
        (
            e.r#type.as_str(),
            e.reason.as_str(),
            e.action.as_str(),
            e.event_time
        ),
        ("Warning", "R", "A", 2000)
    );
    let md = e.involved_object_meta.clone().expect("md");
    assert_eq!(
        (md.id.as_str(), md.labels["app"].as_str()),
        (b.as_str(), "y")
    );
    assert_eq!(list("", &[("app", "x")], 0, 0).await.len(), 1);
    assert_eq!(list("", &[], 1000, 1000).await.len(), 1, "inclusive bounds");
    assert_eq!(list("", &[], 1001, 1999).await.len(), 0);
    assert_eq!(
        list("", &[], 1001, 0).await.len(),
        2,
        "one bound: no window"
    );
}

#[tokio::test]
async fn progress_reports_the_phase_of_a_volume_waiting_for_its_snapshot() {
    let h = harness().await;
    let mut r = volume_req("fast", GIB, &[]);
    spec_of(&mut r).volume_data_source = Some(pb::VolumeDataSource {
        image_data_source: Some(pb::ImageDataSource {
            image: "reg.test/os:1".into(),
            architecture: String::new(),
        }),
        snapshot_data_source: None,
    });
    let id = h.create(r).await.expect("created").metadata.expect("md").id;
    let get = |kind: pbp::ObjectKind, id: &str| pbp::GetProgressRequest {
        kind: kind as i32,
        id: id.into(),
    };
    let p = h
        .server
        .get_progress(Request::new(get(pbp::ObjectKind::Volume, &id)))
        .await
        .expect("ok")
        .into_inner();
    assert_eq!(p.state, "Pending");
    assert_eq!(p.phase, "resolving OS image reg.test/os:1");
    // the reconciler resolved the image and the populate runs
    let mut os = Snapshot::new(
        "sha256:feed",
        store::SnapshotSource {
            ironcore_image: "reg.test/os@sha256:feed".into(),
            volume_image_id: String::new(),
        },
    );
    os.status.state = SnapshotState::Populating;
    let mut os = h.snapshots.create(os).await.expect("created");
    os.status.state = SnapshotState::Populating;
    os.status.progress = Some(store::Progress {
        done: 5,
        total: 10,
        updated_at: chrono::Utc::now(),
    });
    h.snapshots.update(&os).await.expect("update");
    let mut img = h.images.get(&id).await.expect("img");
    img.spec.snapshot_ref = Some("sha256:feed".into());
    h.images.update(&img).await.expect("update");
    let p = h
        .server
        .get_progress(Request::new(get(pbp::ObjectKind::Volume, &id)))
        .await
        .expect("ok")
        .into_inner();
    assert_eq!(p.phase, "populating OS image reg.test/os@sha256:feed");
    assert_eq!((p.done, p.total), (5, 10));
    let (c, _) = code(
        h.server
            .get_progress(Request::new(get(pbp::ObjectKind::Volume, &"e".repeat(63))))
            .await,
    );
    assert_eq!(c, Code::NotFound);
}
