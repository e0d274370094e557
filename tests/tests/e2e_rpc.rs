//! End to end over the real binary on the embedded default (local backend): every IRI RPC's happy
//! path, snapshots and restores, and the error codes of bad input, through the unix socket.

use std::collections::BTreeMap;

use iri::meta_v1::ObjectMetadata;
use iri::volume_v1 as pb;
use tests::cephvol_bin;
use tests::daemon::{id_of, labels, ops, restore_req, snapshot_req, volume_req, Daemon};
use tonic::Code;

const MIB: i64 = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_works_end_to_end_on_the_embedded_default() {
    let d = Daemon::start(cephvol_bin!(), &[]).await;
    let mut c = d.clients().await;

    let v = c
        .runtime
        .version(pb::VersionRequest::default())
        .await
        .expect("Version")
        .into_inner();
    assert_eq!(v.runtime_name, "ceph-provider");
    assert!(!v.runtime_version.is_empty());

    let st = c
        .runtime
        .status(pb::StatusRequest {})
        .await
        .expect("Status")
        .into_inner();
    assert_eq!(st.volume_class_status.len(), 1);
    let class = st.volume_class_status[0]
        .volume_class
        .clone()
        .expect("class");
    assert_eq!(class.name, "standard");
    assert!(st.volume_class_status[0].quantity > 0);

    // create → PENDING reply with the requested size echoed
    let reply = c
        .runtime
        .create_volume(volume_req("standard", 8 * MIB + 1, &[("app", "e2e")]))
        .await
        .expect("CreateVolume")
        .into_inner()
        .volume
        .expect("volume");
    let id = id_of(&reply.metadata);
    assert_eq!(
        reply.status.clone().expect("status").state,
        pb::VolumeState::VolumePending as i32
    );
    assert_eq!(
        reply
            .spec
            .clone()
            .expect("spec")
            .resources
            .expect("r")
            .storage_bytes,
        8 * MIB + 1
    );

    // → AVAILABLE with access data; requested size in spec, rounded in status
    let v = ops::wait_available(&mut c, &id).await;
    assert_eq!(
        v.spec
            .clone()
            .expect("spec")
            .resources
            .expect("r")
            .storage_bytes,
        8 * MIB + 1
    );
    let status = v.status.clone().expect("status");
    assert_eq!(status.resources.expect("r").storage_bytes, 9 * MIB);
    let access = status.access.expect("access");
    assert_eq!(access.driver, "ceph");
    assert_eq!(access.handle.len(), 16);
    assert_eq!(access.attributes["monitors"], "127.0.0.1:6789");
    assert_eq!(access.attributes["image"], format!("cephvol/img_{id}"));
    assert!(!access.secret_data["userID"].is_empty() && !access.secret_data["userKey"].is_empty());

    // list by label selector and by id; repeated lists are identical (deterministic)
    let req = pb::ListVolumesRequest {
        filter: Some(pb::VolumeFilter {
            id: String::new(),
            label_selector: labels(&[("app", "e2e")]),
        }),
    };
    let listed = c
        .runtime
        .list_volumes(req)
        .await
        .expect("ListVolumes")
        .into_inner()
        .volumes;
    assert_eq!(listed.len(), 1);
    assert_eq!(ops::list(&mut c).await, ops::list(&mut c).await);

    // expand → status grows
    c.runtime
        .expand_volume(pb::ExpandVolumeRequest {
            volume_id: id.clone(),
            resources: Some(pb::VolumeResources {
                storage_bytes: 16 * MIB,
            }),
        })
        .await
        .expect("ExpandVolume");
    tests::daemon::eventually(tests::daemon::WAIT, "the expansion", || {
        let mut c = c.clone();
        let id = id.clone();
        async move {
            let v = ops::get(&mut c, &id).await?;
            let size = v.status?.resources?.storage_bytes;
            (size == 16 * MIB).then_some(())
        }
    })
    .await;

    // snapshot → READY with the source's size
    let snap = c
        .runtime
        .create_volume_snapshot(snapshot_req(&id, &[("snap", "e2e")]))
        .await
        .expect("CreateVolumeSnapshot")
        .into_inner()
        .volume_snapshot
        .expect("snapshot");
    let sid = id_of(&snap.metadata);
    assert_eq!(snap.spec.expect("spec").volume_id, id);
    let ready = ops::wait_ready(&mut c, &sid).await;
    assert_eq!(ready.status.expect("status").size, 16 * MIB);

    // restore → AVAILABLE
    let rid = ops::create(&mut c, restore_req("standard", 16 * MIB, &sid, &[])).await;
    ops::wait_available(&mut c, &rid).await;

    // events about the volume are listed, filter.id honoured
    let req = pb::ListEventsRequest {
        filter: Some(pb::EventFilter {
            id: id.clone(),
            ..Default::default()
        }),
    };
    let events = c
        .runtime
        .list_events(req)
        .await
        .expect("ListEvents")
        .into_inner()
        .events;
    assert!(!events.is_empty(), "events about {id}");
    for e in &events {
        let spec = e.spec.clone().expect("spec");
        assert_eq!(spec.involved_object_meta.expect("md").id, id);
        assert!(!spec.action.is_empty() && !spec.reason.is_empty());
        assert!(spec.r#type == "Normal" || spec.r#type == "Warning");
    }

    // delete everything → lists empty
    ops::delete(&mut c, &rid).await;
    ops::delete_snapshot(&mut c, &sid).await;
    ops::delete(&mut c, &id).await;
    // Again: OK while the volume is still being deleted, NOT_FOUND once it is gone for clients
    // (under the default deletion policy it is retained, hidden at once, while the deletion of
    // its snapshot is still running): never another answer.
    let again = c
        .runtime
        .delete_volume(pb::DeleteVolumeRequest {
            volume_id: id.clone(),
        })
        .await;
    assert!(
        again.is_ok() || again.as_ref().is_err_and(|s| s.code() == Code::NotFound),
        "a repeated DeleteVolume: {again:?}"
    );
    ops::wait_volume_gone(&mut c, &rid).await;
    ops::wait_snapshot_gone(&mut c, &sid).await;
    ops::wait_volume_gone(&mut c, &id).await;
    assert!(ops::list(&mut c).await.is_empty());
    assert!(ops::list_snapshots(&mut c).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_snapshotted_volume_keeps_the_snapshot_and_its_restores_usable() {
    let d = Daemon::start(cephvol_bin!(), &[]).await;
    let mut c = d.clients().await;
    let uid = [("volumepoollet.ironcore.dev/volume-uid", "u-1")];
    let id = ops::create(&mut c, volume_req("standard", 4 * MIB, &uid)).await;
    ops::wait_available(&mut c, &id).await;
    let sid = id_of(
        &c.runtime
            .create_volume_snapshot(snapshot_req(&id, &[]))
            .await
            .expect("snap")
            .into_inner()
            .volume_snapshot
            .expect("s")
            .metadata,
    );
    ops::wait_ready(&mut c, &sid).await;
    let rid = ops::create(&mut c, restore_req("standard", 4 * MIB, &sid, &[])).await;
    ops::wait_available(&mut c, &rid).await;

    ops::delete(&mut c, &id).await;
    ops::wait_volume_gone(&mut c, &id).await;

    // no internal clone shows up, never two volumes with one volume-uid
    let vols = ops::list(&mut c).await;
    assert_eq!(
        vols.iter().map(|v| id_of(&v.metadata)).collect::<Vec<_>>(),
        std::slice::from_ref(&rid)
    );
    let s = ops::get_snapshot(&mut c, &sid)
        .await
        .expect("snapshot survives its volume");
    assert_eq!(
        s.spec.expect("spec").volume_id,
        id,
        "volume_id stays stable"
    );
    assert_eq!(
        s.status.expect("status").state,
        pb::VolumeSnapshotState::VolumeSnapshotReady as i32
    );
    // the snapshot can still be restored
    let rid2 = ops::create(&mut c, restore_req("standard", 4 * MIB, &sid, &[])).await;
    ops::wait_available(&mut c, &rid2).await;

    for v in [&rid, &rid2] {
        ops::delete(&mut c, v).await;
    }
    ops::delete_snapshot(&mut c, &sid).await;
    for v in [&rid, &rid2] {
        ops::wait_volume_gone(&mut c, v).await;
    }
    ops::wait_snapshot_gone(&mut c, &sid).await;
    assert!(ops::list(&mut c).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_accepts_the_k8s_snapshot_name_the_poollet_sends() {
    let d = Daemon::start(cephvol_bin!(), &[]).await;
    let mut c = d.clients().await;
    let id = ops::create(&mut c, volume_req("standard", 2 * MIB, &[])).await;
    ops::wait_available(&mut c, &id).await;
    let snap_labels = [
        ("volumepoollet.ironcore.dev/volume-snapshot-name", "nightly"),
        (
            "volumepoollet.ironcore.dev/volume-snapshot-namespace",
            "team-a",
        ),
    ];
    let sid = id_of(
        &c.runtime
            .create_volume_snapshot(snapshot_req(&id, &snap_labels))
            .await
            .expect("snap")
            .into_inner()
            .volume_snapshot
            .expect("s")
            .metadata,
    );
    ops::wait_ready(&mut c, &sid).await;
    let rid = ops::create(
        &mut c,
        restore_req(
            "standard",
            2 * MIB,
            "nightly",
            &[("volumepoollet.ironcore.dev/volume-namespace", "team-a")],
        ),
    )
    .await;
    ops::wait_available(&mut c, &rid).await;
    let err = c
        .runtime
        .create_volume(restore_req(
            "standard",
            2 * MIB,
            "nightly",
            &[("volumepoollet.ironcore.dev/volume-namespace", "team-b")],
        ))
        .await
        .expect_err("other namespace");
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_the_right_code_and_creates_nothing() {
    let d = Daemon::start(cephvol_bin!(), &[]).await;
    let mut c = d.clients().await;
    let unknown = "0".repeat(63);

    let mut bad: Vec<(pb::CreateVolumeRequest, Code, &str)> = vec![
        (
            pb::CreateVolumeRequest { volume: None },
            Code::InvalidArgument,
            "volume: required",
        ),
        (
            volume_req("standard", 0, &[]),
            Code::InvalidArgument,
            "volume.spec.resources.storage_bytes: must be > 0",
        ),
        (
            volume_req("standard", -MIB, &[]),
            Code::InvalidArgument,
            "volume.spec.resources.storage_bytes: must be > 0",
        ),
        (
            volume_req("platinum", MIB, &[]),
            Code::InvalidArgument,
            "volume.spec.class: unknown volume class",
        ),
        (
            restore_req("standard", MIB, &unknown, &[]),
            Code::NotFound,
            "volume.spec.volume_data_source.snapshot_data_source.snapshot_id",
        ),
    ];
    let mut no_meta = volume_req("standard", MIB, &[]);
    no_meta.volume.as_mut().expect("v").metadata = None;
    bad.push((no_meta, Code::InvalidArgument, "volume.metadata: required"));
    let mut enc = volume_req("standard", MIB, &[]);
    enc.volume
        .as_mut()
        .and_then(|v| v.spec.as_mut())
        .expect("spec")
        .encryption = Some(pb::EncryptionSpec {
        secret_data: BTreeMap::from([("encryptionKey".to_string(), b"pw".to_vec())]),
    });
    bad.push((
        enc,
        Code::FailedPrecondition,
        "volume.spec.encryption: encryption needs the ceph backend",
    ));
    let mut enc = volume_req("standard", MIB, &[]);
    enc.volume
        .as_mut()
        .and_then(|v| v.spec.as_mut())
        .expect("spec")
        .encryption = Some(pb::EncryptionSpec::default());
    bad.push((
        enc,
        Code::InvalidArgument,
        "volume.spec.encryption.secret_data: missing key",
    ));
    for (req, code, msg) in bad {
        let e = c.runtime.create_volume(req).await.expect_err(msg);
        assert_eq!(e.code(), code, "{}", e.message());
        assert!(e.message().starts_with(msg), "{:?} vs {msg:?}", e.message());
    }

    let e = c
        .runtime
        .delete_volume(pb::DeleteVolumeRequest {
            volume_id: unknown.clone(),
        })
        .await
        .expect_err("unknown");
    assert_eq!(e.code(), Code::NotFound);
    let e = c
        .runtime
        .delete_volume_snapshot(pb::DeleteVolumeSnapshotRequest {
            volume_snapshot_id: unknown.clone(),
        })
        .await
        .expect_err("unknown");
    assert_eq!(e.code(), Code::NotFound);
    let e = c
        .runtime
        .expand_volume(pb::ExpandVolumeRequest {
            volume_id: unknown.clone(),
            resources: Some(pb::VolumeResources { storage_bytes: MIB }),
        })
        .await
        .expect_err("unknown");
    assert_eq!(e.code(), Code::NotFound);
    let e = c
        .runtime
        .create_volume_snapshot(snapshot_req(&unknown, &[]))
        .await
        .expect_err("unknown");
    assert_eq!(e.code(), Code::NotFound);
    let req = pb::ListVolumesRequest {
        filter: Some(pb::VolumeFilter {
            id: unknown.clone(),
            ..Default::default()
        }),
    };
    assert!(c
        .runtime
        .list_volumes(req)
        .await
        .expect("[] not an error")
        .into_inner()
        .volumes
        .is_empty());
    let req = pb::ListVolumeSnapshotsRequest {
        filter: Some(pb::VolumeSnapshotFilter {
            id: unknown.clone(),
            ..Default::default()
        }),
    };
    assert!(c
        .runtime
        .list_volume_snapshots(req)
        .await
        .expect("[]")
        .into_inner()
        .volume_snapshots
        .is_empty());
    let req = pb::ListVolumesRequest {
        filter: Some(pb::VolumeFilter {
            id: String::new(),
            label_selector: labels(&[("", "x")]),
        }),
    };
    assert_eq!(
        c.runtime
            .list_volumes(req)
            .await
            .expect_err("bad selector")
            .code(),
        Code::InvalidArgument
    );

    // shrink/equal expand, and a snapshot of a volume that is not available yet
    let id = ops::create(&mut c, volume_req("standard", 2 * MIB, &[])).await;
    for size in [2 * MIB, MIB] {
        let e = c
            .runtime
            .expand_volume(pb::ExpandVolumeRequest {
                volume_id: id.clone(),
                resources: Some(pb::VolumeResources {
                    storage_bytes: size,
                }),
            })
            .await
            .expect_err("no shrink");
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(
            e.message().starts_with("resources.storage_bytes:"),
            "{}",
            e.message()
        );
    }
    let e = c
        .runtime
        .create_volume_snapshot(pb::CreateVolumeSnapshotRequest {
            volume_snapshot: Some(pb::VolumeSnapshot {
                metadata: Some(ObjectMetadata::default()),
                spec: None,
                status: None,
            }),
        })
        .await
        .expect_err("no spec");
    assert_eq!(
        (e.code(), e.message()),
        (Code::InvalidArgument, "volume_snapshot.spec: required")
    );

    let vols = ops::list(&mut c).await;
    assert_eq!(vols.len(), 1, "only the one good volume exists");
    assert_eq!(
        vols[0]
            .spec
            .clone()
            .expect("spec")
            .resources
            .expect("r")
            .storage_bytes,
        2 * MIB
    );
    assert!(ops::list_snapshots(&mut c).await.is_empty());
}
