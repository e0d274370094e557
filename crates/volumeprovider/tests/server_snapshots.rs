//! The IRI server's snapshot, restore, event and progress RPCs in-process, over the harness in
//! `support/`.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;

use controllers::events::{Event, EventType};
use iri::cephvol::v1alpha1 as pbp;
use iri::cephvol::v1alpha1::progress_server::Progress as _;
use iri::volume_v1 as pb;
use iri::volume_v1::volume_runtime_server::VolumeRuntime as _;
use store::{Snapshot, SnapshotState};
use tonic::{Code, Request};
use volumeprovider::convert;

use support::*;

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

#[tokio::test]
async fn retained_volumes_and_snapshots_are_gone_for_every_client() {
    let h = harness().await;
    let vid = h
        .create_ok("fast", GIB, &[(convert::VOLUME_NAME_LABEL, "vol-a")])
        .await;
    h.make_available(&vid).await;
    let sid = h
        .snapshot(&vid, &[(convert::SNAPSHOT_NAME_LABEL, "snap-a")])
        .await
        .expect("snapshot")
        .metadata
        .expect("md")
        .id;
    h.make_ready(&sid, GIB).await;
    // What the reconcilers do under the deferred deletion policy: the deleted volume is kept
    // for its snapshot, the deleted snapshot for its clones.
    let mut img = h.images.get(&vid).await.expect("image");
    img.metadata.add_finalizer(store::keys::IMAGE_FINALIZER);
    h.images.update(&img).await.expect("update");
    h.images.delete(&vid).await.expect("delete");
    let mut img = h.images.get(&vid).await.expect("image");
    img.status.state = store::ImageState::Retained;
    h.images.update(&img).await.expect("update");

    assert!(h.list("", &[]).await.is_empty(), "not listed");
    assert!(h.list(&vid, &[]).await.is_empty(), "not found by id");
    let (c, m) = code(
        h.server
            .delete_volume(Request::new(pb::DeleteVolumeRequest {
                volume_id: vid.clone(),
            }))
            .await,
    );
    assert_eq!(c, Code::NotFound, "{m}");
    let (c, m) = code(h.snapshot(&vid, &[]).await);
    assert_eq!(c, Code::NotFound, "{m}");
    assert_eq!(h.list_snaps("", &[]).await.len(), 1, "its snapshot stays");

    let mut s = h.snapshots.get(&sid).await.expect("snapshot");
    s.metadata.add_finalizer(store::keys::SNAPSHOT_FINALIZER);
    h.snapshots.update(&s).await.expect("update");
    h.snapshots.delete(&sid).await.expect("delete");
    let mut s = h.snapshots.get(&sid).await.expect("snapshot");
    s.status.state = SnapshotState::Retained;
    h.snapshots.update(&s).await.expect("update");

    assert!(h.list_snaps("", &[]).await.is_empty(), "not listed");
    assert!(h.list_snaps(&sid, &[]).await.is_empty(), "not found by id");
    let (c, m) = code(
        h.server
            .delete_volume_snapshot(Request::new(pb::DeleteVolumeSnapshotRequest {
                volume_snapshot_id: sid.clone(),
            }))
            .await,
    );
    assert_eq!(c, Code::NotFound, "{m}");
    for source in [sid.as_str(), "snap-a"] {
        let mut r = volume_req("fast", GIB, &[]);
        spec_of(&mut r).volume_data_source = Some(pb::VolumeDataSource {
            image_data_source: None,
            snapshot_data_source: Some(pb::SnapshotDataSource {
                snapshot_id: source.into(),
            }),
        });
        let (c, m) = code(h.create(r).await);
        assert_eq!(c, Code::NotFound, "{source}: {m}");
    }
    assert_eq!(h.counts().await, (1, 1), "nothing was created");
}
