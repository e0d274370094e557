//! The IRI server facing faults: sizes beyond the bound and records the store cannot read, over
//! the harness in `support/`.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;

use iri::volume_v1 as pb;
use iri::volume_v1::volume_runtime_server::VolumeRuntime as _;
use store::Precondition;
use tonic::{Code, Request};
use volumeprovider::validate::DEFAULT_MAX_VOLUME_SIZE;

use support::*;

#[tokio::test]
async fn an_eight_exbibyte_volume_is_refused_naming_the_size_field_and_nothing_is_stored() {
    let h = harness().await;
    // 8 EiB: the largest size the request can carry.
    let (c, m) = code(h.create(volume_req("fast", i64::MAX, &[])).await);
    assert_eq!(c, Code::InvalidArgument, "{m}");
    assert!(
        m.starts_with("volume.spec.resources.storage_bytes: ") && m.contains("--max-volume-size"),
        "{m}"
    );
    assert_eq!(h.counts().await, (0, 0));
    // The bound itself is accepted; an encrypted volume needs room for its header on top.
    let max = DEFAULT_MAX_VOLUME_SIZE as i64;
    h.create_ok("fast", max, &[]).await;
    let mut enc = volume_req("fast", max, &[]);
    spec_of(&mut enc).encryption = Some(pb::EncryptionSpec {
        secret_data: BTreeMap::from([("encryptionKey".to_string(), b"pw".to_vec())]),
    });
    let (c, m) = code(h.create(enc.clone()).await);
    assert_eq!(c, Code::InvalidArgument, "{m}");
    assert!(m.contains("LUKS2 header"), "{m}");
    spec_of(&mut enc).resources = Some(pb::VolumeResources {
        storage_bytes: max - (1 << 30),
    });
    h.create(enc).await.expect("fits with its header");
}

#[tokio::test]
async fn an_expand_beyond_the_bound_is_refused_and_changes_nothing() {
    let h = harness().await;
    let id = h.create_ok("fast", GIB, &[]).await;
    h.make_available(&id).await;
    let (c, m) = code(
        h.server
            .expand_volume(Request::new(pb::ExpandVolumeRequest {
                volume_id: id.clone(),
                resources: Some(pb::VolumeResources {
                    storage_bytes: i64::MAX,
                }),
            }))
            .await,
    );
    assert_eq!(c, Code::InvalidArgument, "{m}");
    assert!(m.starts_with("resources.storage_bytes: "), "{m}");
    assert_eq!(h.images.get(&id).await.unwrap().spec.size, GIB as u64);
}

#[tokio::test]
async fn one_undecodable_record_never_fails_list_volumes() {
    let h = harness().await;
    let good = h.create_ok("fast", GIB, &[]).await;
    h.objects
        .put(
            "ironcore.csi.volumes",
            "0bad",
            b"{\"metadata\": 42".to_vec(),
            Precondition::None,
        )
        .await
        .unwrap();
    let ids: Vec<String> = h
        .list("", &[])
        .await
        .into_iter()
        .map(|v| v.metadata.unwrap().id)
        .collect();
    assert_eq!(ids, [good]);
    assert_eq!(h.images.skipped_records(), 1);
}
