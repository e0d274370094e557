//! The IRI server's volume RPCs (Version, Status, CreateVolume, ListVolumes, ExpandVolume,
//! DeleteVolume) in-process, over the harness in `support/`.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;

use controllers::Kek;
use iri::volume_v1 as pb;
use iri::volume_v1::volume_runtime_server::VolumeRuntime as _;
use store::{keys, ImageState};
use tonic::{Code, Request};

use support::*;

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
