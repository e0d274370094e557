//! Volumes from OS images through the real daemon and a real registry on loopback
//! (`docker-registry`): the CLI waits for the populate, two volumes of one image share one
//! internal OS snapshot that is never listed, the waiting volume hears the populate's end through
//! ListEvents, and an unknown image leaves the volume pending with
//! a warning event instead of failing the call.

use iri::volume_v1 as pb;
use registry_fixture::{pattern, IronImage, TestRegistry};
use tests::cephvol_bin;
use tests::daemon::{eventually, ops, volume_req, Daemon, WAIT};

const MIB: usize = 1 << 20;

fn image_req(reference: &str, size: i64) -> pb::CreateVolumeRequest {
    let mut r = volume_req("standard", size, &[]);
    r.volume
        .as_mut()
        .and_then(|v| v.spec.as_mut())
        .expect("spec")
        .volume_data_source = Some(pb::VolumeDataSource {
        image_data_source: Some(pb::ImageDataSource {
            image: reference.into(),
            architecture: String::new(),
        }),
        snapshot_data_source: None,
    });
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_from_an_os_image_become_available_and_share_one_hidden_snapshot() {
    let reg = TestRegistry::start();
    let pushed = reg
        .pusher()
        .push_image(
            "os/debian",
            "12",
            &IronImage::rootfs(pattern(6 * MIB + 123, 7)),
        )
        .await;
    let reference = reg.reference("os/debian", "12");
    let d = Daemon::start(cephvol_bin!(), &[]).await;

    // the CLI waits for the populate and the clone
    let o = d.cli(&[
        "create",
        "volume",
        "--class",
        "standard",
        "--size",
        "16Mi",
        "--image",
        &reference,
        "--wait",
        "--timeout",
        "2m",
    ]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{out}\n{}\n{}",
        String::from_utf8_lossy(&o.stderr),
        d.logs()
    );
    assert!(out.contains("is available"), "{out}");

    let mut c = d.clients().await;
    let second = ops::create(&mut c, image_req(&reference, 8 * MIB as i64)).await;
    ops::wait_available(&mut c, &second).await;
    assert_eq!(ops::list(&mut c).await.len(), 2);
    assert!(
        ops::list_snapshots(&mut c).await.is_empty(),
        "the OS snapshot {} is internal",
        pushed.manifest_digest
    );

    // The volume that waited for the populate heard its end through ListEvents.
    let first = ops::list(&mut c)
        .await
        .into_iter()
        .filter_map(|v| v.metadata.map(|m| m.id))
        .find(|id| *id != second)
        .expect("the first volume");
    let events = c
        .runtime
        .list_events(pb::ListEventsRequest {
            filter: Some(pb::EventFilter {
                id: first.clone(),
                ..Default::default()
            }),
        })
        .await
        .expect("ListEvents")
        .into_inner()
        .events;
    let populated: Vec<_> = events
        .into_iter()
        .filter_map(|e| e.spec)
        .filter(|s| s.reason == "PopulateCompleted")
        .collect();
    assert_eq!(populated.len(), 1, "{populated:?}");
    assert_eq!(populated[0].r#type, "Normal");
    assert!(
        populated[0]
            .message
            .starts_with("populated OS image: 6 MiB in "),
        "{populated:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_image_keeps_the_volume_pending_with_a_warning_event() {
    let reg = TestRegistry::start();
    let d = Daemon::start(cephvol_bin!(), &[]).await;
    let mut c = d.clients().await;
    let id = ops::create(
        &mut c,
        image_req(&reg.reference("os/missing", "1"), 8 * MIB as i64),
    )
    .await;
    let warning = eventually(WAIT, "a warning event", || {
        let mut c = c.clone();
        let id = id.clone();
        async move {
            let req = pb::ListEventsRequest {
                filter: Some(pb::EventFilter {
                    id,
                    ..Default::default()
                }),
            };
            let events = c.runtime.list_events(req).await.ok()?.into_inner().events;
            events
                .into_iter()
                .filter_map(|e| e.spec)
                .find(|s| s.r#type == "Warning")
        }
    })
    .await;
    assert!(!warning.reason.is_empty() && !warning.action.is_empty());
    let v = ops::get(&mut c, &id).await.expect("still listed");
    assert_ne!(
        v.status.expect("status").state,
        pb::VolumeState::VolumeAvailable as i32
    );
}
