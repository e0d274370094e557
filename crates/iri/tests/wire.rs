//! The wire contract: field numbers, wire types and enum values of the IRI messages, checked on
//! encoded bytes (the numbers are those of `proto/`, which must not change: clients depend on them).

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use prost::Message;

use iri::*;
use volume_v1 as v;

/// (field number, wire type) of the first key in an encoding.
fn first_key(bytes: &[u8]) -> (u64, u64) {
    let mut b = bytes;
    let key = prost::encoding::decode_varint(&mut b).expect("a key");
    (key >> 3, key & 7)
}

fn s() -> String {
    "x".to_string()
}

fn m() -> BTreeMap<String, String> {
    BTreeMap::from([("k".to_string(), "v".to_string())])
}

fn bm() -> BTreeMap<String, Vec<u8>> {
    BTreeMap::from([("k".to_string(), b"v".to_vec())])
}

const VARINT: u64 = 0;
const LEN: u64 = 2;

#[test]
fn every_field_has_the_number_and_wire_type_of_the_contract() {
    let md = || Some(meta_v1::ObjectMetadata::default());
    let res = || Some(v::VolumeResources { storage_bytes: 1 });
    let cases: Vec<(&str, Vec<u8>, u64, u64)> = vec![
        (
            "ObjectMetadata.id",
            meta_v1::ObjectMetadata {
                id: s(),
                ..Default::default()
            }
            .encode_to_vec(),
            1,
            LEN,
        ),
        (
            "ObjectMetadata.annotations",
            meta_v1::ObjectMetadata {
                annotations: m(),
                ..Default::default()
            }
            .encode_to_vec(),
            2,
            LEN,
        ),
        (
            "ObjectMetadata.labels",
            meta_v1::ObjectMetadata {
                labels: m(),
                ..Default::default()
            }
            .encode_to_vec(),
            3,
            LEN,
        ),
        (
            "ObjectMetadata.generation",
            meta_v1::ObjectMetadata {
                generation: 1,
                ..Default::default()
            }
            .encode_to_vec(),
            4,
            VARINT,
        ),
        (
            "ObjectMetadata.created_at",
            meta_v1::ObjectMetadata {
                created_at: 1,
                ..Default::default()
            }
            .encode_to_vec(),
            5,
            VARINT,
        ),
        (
            "ObjectMetadata.deleted_at",
            meta_v1::ObjectMetadata {
                deleted_at: 1,
                ..Default::default()
            }
            .encode_to_vec(),
            6,
            VARINT,
        ),
        (
            "Event.spec",
            event_v1::Event {
                spec: Some(Default::default()),
            }
            .encode_to_vec(),
            2,
            LEN,
        ),
        (
            "EventSpec.involved_object_meta",
            event_v1::EventSpec {
                involved_object_meta: md(),
                ..Default::default()
            }
            .encode_to_vec(),
            1,
            LEN,
        ),
        (
            "EventSpec.reason",
            event_v1::EventSpec {
                reason: s(),
                ..Default::default()
            }
            .encode_to_vec(),
            2,
            LEN,
        ),
        (
            "EventSpec.message",
            event_v1::EventSpec {
                message: s(),
                ..Default::default()
            }
            .encode_to_vec(),
            3,
            LEN,
        ),
        (
            "EventSpec.type",
            event_v1::EventSpec {
                r#type: s(),
                ..Default::default()
            }
            .encode_to_vec(),
            4,
            LEN,
        ),
        (
            "EventSpec.event_time",
            event_v1::EventSpec {
                event_time: 1,
                ..Default::default()
            }
            .encode_to_vec(),
            5,
            VARINT,
        ),
        (
            "EventSpec.action",
            event_v1::EventSpec {
                action: s(),
                ..Default::default()
            }
            .encode_to_vec(),
            6,
            LEN,
        ),
        (
            "VolumeFilter.id",
            v::VolumeFilter {
                id: s(),
                ..Default::default()
            }
            .encode_to_vec(),
            1,
            LEN,
        ),
        (
            "VolumeFilter.label_selector",
            v::VolumeFilter {
                label_selector: m(),
                ..Default::default()
            }
            .encode_to_vec(),
            2,
            LEN,
        ),
        (
            "EventFilter.id",
            v::EventFilter {
                id: s(),
                ..Default::default()
            }
            .encode_to_vec(),
            1,
            LEN,
        ),
        (
            "EventFilter.label_selector",
            v::EventFilter {
                label_selector: m(),
                ..Default::default()
            }
            .encode_to_vec(),
            2,
            LEN,
        ),
        (
            "EventFilter.events_from_time",
            v::EventFilter {
                events_from_time: 1,
                ..Default::default()
            }
            .encode_to_vec(),
            3,
            VARINT,
        ),
        (
            "EventFilter.events_to_time",
            v::EventFilter {
                events_to_time: 1,
                ..Default::default()
            }
            .encode_to_vec(),
            4,
            VARINT,
        ),
        (
            "VolumeResources.storage_bytes",
            v::VolumeResources { storage_bytes: 1 }.encode_to_vec(),
            1,
            VARINT,
        ),
        (
            "EncryptionSpec.secret_data",
            v::EncryptionSpec { secret_data: bm() }.encode_to_vec(),
            1,
            LEN,
        ),
        (
            "ImageDataSource.image",
            v::ImageDataSource {
                image: s(),
                ..Default::default()
            }
            .encode_to_vec(),
            1,
            LEN,
        ),
        (
            "ImageDataSource.architecture",
            v::ImageDataSource {
                architecture: s(),
                ..Default::default()
            }
            .encode_to_vec(),
            2,
            LEN,
        ),
        (
            "SnapshotDataSource.snapshot_id",
            v::SnapshotDataSource { snapshot_id: s() }.encode_to_vec(),
            1,
            LEN,
        ),
        (
            "VolumeDataSource.image_data_source",
            v::VolumeDataSource {
                image_data_source: Some(Default::default()),
                ..Default::default()
            }
            .encode_to_vec(),
            1,
            LEN,
        ),
        (
            "VolumeDataSource.snapshot_data_source",
            v::VolumeDataSource {
                snapshot_data_source: Some(Default::default()),
                ..Default::default()
            }
            .encode_to_vec(),
            2,
            LEN,
        ),
        (
            "VolumeSpec.class",
            v::VolumeSpec {
                class: s(),
                ..Default::default()
            }
            .encode_to_vec(),
            2,
            LEN,
        ),
        (
            "VolumeSpec.resources",
            v::VolumeSpec {
                resources: res(),
                ..Default::default()
            }
            .encode_to_vec(),
            3,
            LEN,
        ),
        (
            "VolumeSpec.encryption",
            v::VolumeSpec {
                encryption: Some(Default::default()),
                ..Default::default()
            }
            .encode_to_vec(),
            4,
            LEN,
        ),
        (
            "VolumeSpec.volume_data_source",
            v::VolumeSpec {
                volume_data_source: Some(Default::default()),
                ..Default::default()
            }
            .encode_to_vec(),
            5,
            LEN,
        ),
        (
            "VolumeStatus.state",
            v::VolumeStatus {
                state: 1,
                ..Default::default()
            }
            .encode_to_vec(),
            1,
            VARINT,
        ),
        (
            "VolumeStatus.access",
            v::VolumeStatus {
                access: Some(Default::default()),
                ..Default::default()
            }
            .encode_to_vec(),
            2,
            LEN,
        ),
        (
            "VolumeStatus.resources",
            v::VolumeStatus {
                resources: res(),
                ..Default::default()
            }
            .encode_to_vec(),
            3,
            LEN,
        ),
        (
            "Volume.metadata",
            v::Volume {
                metadata: md(),
                ..Default::default()
            }
            .encode_to_vec(),
            1,
            LEN,
        ),
        (
            "Volume.spec",
            v::Volume {
                spec: Some(Default::default()),
                ..Default::default()
            }
            .encode_to_vec(),
            2,
            LEN,
        ),
        (
            "Volume.status",
            v::Volume {
                status: Some(Default::default()),
                ..Default::default()
            }
            .encode_to_vec(),
            3,
            LEN,
        ),
        (
            "VolumeClassCapabilities.tps",
            v::VolumeClassCapabilities { tps: 1, iops: 0 }.encode_to_vec(),
            1,
            VARINT,
        ),
        (
            "VolumeClassCapabilities.iops",
            v::VolumeClassCapabilities { tps: 0, iops: 1 }.encode_to_vec(),
            2,
            VARINT,
        ),
        (
            "VolumeClass.name",
            v::VolumeClass {
                name: s(),
                ..Default::default()
            }
            .encode_to_vec(),
            1,
            LEN,
        ),
        (
            "VolumeClass.capabilities",
            v::VolumeClass {
                capabilities: Some(Default::default()),
                ..Default::default()
            }
            .encode_to_vec(),
            2,
            LEN,
        ),
        (
            "VolumeClassStatus.volume_class",
            v::VolumeClassStatus {
                volume_class: Some(Default::default()),
                ..Default::default()
            }
            .encode_to_vec(),
            1,
            LEN,
        ),
        (
            "VolumeClassStatus.quantity",
            v::VolumeClassStatus {
                quantity: 1,
                ..Default::default()
            }
            .encode_to_vec(),
            2,
            VARINT,
        ),
        (
            "VolumeAccess.driver",
            v::VolumeAccess {
                driver: s(),
                ..Default::default()
            }
            .encode_to_vec(),
            1,
            LEN,
        ),
        (
            "VolumeAccess.handle",
            v::VolumeAccess {
                handle: s(),
                ..Default::default()
            }
            .encode_to_vec(),
            2,
            LEN,
        ),
        (
            "VolumeAccess.attributes",
            v::VolumeAccess {
                attributes: m(),
                ..Default::default()
            }
            .encode_to_vec(),
            3,
            LEN,
        ),
        (
            "VolumeAccess.secret_data",
            v::VolumeAccess {
                secret_data: bm(),
                ..Default::default()
            }
            .encode_to_vec(),
            4,
            LEN,
        ),
        (
            "ListEventsRequest.filter",
            v::ListEventsRequest {
                filter: Some(Default::default()),
            }
            .encode_to_vec(),
            1,
            LEN,
        ),
        (
            "ListEventsResponse.events",
            v::ListEventsResponse {
                events: vec![Default::default()],
            }
            .encode_to_vec(),
            1,
            LEN,
        ),
        (
            "VersionRequest.version",
            v::VersionRequest { version: s() }.encode_to_vec(),
            1,
            LEN,
        ),
        (
            "VersionResponse.runtime_name",
            v::VersionResponse {
                runtime_name: s(),
                ..Default::default()
            }
            .encode_to_vec(),
            1,
            LEN,
        ),
        (
            "VersionResponse.runtime_version",
            v::VersionResponse {
                runtime_version: s(),
                ..Default::default()
            }
            .encode_to_vec(),
            2,
            LEN,
        ),
        (
            "ListVolumesRequest.filter",
            v::ListVolumesRequest {
                filter: Some(Default::default()),
            }
            .encode_to_vec(),
            1,
            LEN,
        ),
        (
            "ListVolumesResponse.volumes",
            v::ListVolumesResponse {
                volumes: vec![Default::default()],
            }
            .encode_to_vec(),
            1,
            LEN,
        ),
        (
            "CreateVolumeRequest.volume",
            v::CreateVolumeRequest {
                volume: Some(Default::default()),
            }
            .encode_to_vec(),
            1,
            LEN,
        ),
        (
            "CreateVolumeResponse.volume",
            v::CreateVolumeResponse {
                volume: Some(Default::default()),
            }
            .encode_to_vec(),
            1,
            LEN,
        ),
        (
            "ExpandVolumeRequest.volume_id",
            v::ExpandVolumeRequest {
                volume_id: s(),
                ..Default::default()
            }
            .encode_to_vec(),
            1,
            LEN,
        ),
        (
            "ExpandVolumeRequest.resources",
            v::ExpandVolumeRequest {
                resources: res(),
                ..Default::default()
            }
            .encode_to_vec(),
            2,
            LEN,
        ),
        (
            "DeleteVolumeRequest.volume_id",
            v::DeleteVolumeRequest { volume_id: s() }.encode_to_vec(),
            1,
            LEN,
        ),
        (
            "StatusResponse.volume_class_status",
            v::StatusResponse {
                volume_class_status: vec![Default::default()],
            }
            .encode_to_vec(),
            1,
            LEN,
        ),
        (
            "VolumeSnapshotSpec.volume_id",
            v::VolumeSnapshotSpec { volume_id: s() }.encode_to_vec(),
            1,
            LEN,
        ),
        (
            "VolumeSnapshotStatus.state",
            v::VolumeSnapshotStatus {
                state: 1,
                ..Default::default()
            }
            .encode_to_vec(),
            1,
            VARINT,
        ),
        (
            "VolumeSnapshotStatus.size",
            v::VolumeSnapshotStatus {
                size: 1,
                ..Default::default()
            }
            .encode_to_vec(),
            2,
            VARINT,
        ),
        (
            "VolumeSnapshot.metadata",
            v::VolumeSnapshot {
                metadata: md(),
                ..Default::default()
            }
            .encode_to_vec(),
            1,
            LEN,
        ),
        (
            "VolumeSnapshot.spec",
            v::VolumeSnapshot {
                spec: Some(Default::default()),
                ..Default::default()
            }
            .encode_to_vec(),
            2,
            LEN,
        ),
        (
            "VolumeSnapshot.status",
            v::VolumeSnapshot {
                status: Some(Default::default()),
                ..Default::default()
            }
            .encode_to_vec(),
            3,
            LEN,
        ),
        (
            "VolumeSnapshotFilter.id",
            v::VolumeSnapshotFilter {
                id: s(),
                ..Default::default()
            }
            .encode_to_vec(),
            1,
            LEN,
        ),
        (
            "VolumeSnapshotFilter.label_selector",
            v::VolumeSnapshotFilter {
                label_selector: m(),
                ..Default::default()
            }
            .encode_to_vec(),
            2,
            LEN,
        ),
        (
            "ListVolumeSnapshotsRequest.filter",
            v::ListVolumeSnapshotsRequest {
                filter: Some(Default::default()),
            }
            .encode_to_vec(),
            1,
            LEN,
        ),
        (
            "ListVolumeSnapshotsResponse.volume_snapshots",
            v::ListVolumeSnapshotsResponse {
                volume_snapshots: vec![Default::default()],
            }
            .encode_to_vec(),
            1,
            LEN,
        ),
        (
            "CreateVolumeSnapshotRequest.volume_snapshot",
            v::CreateVolumeSnapshotRequest {
                volume_snapshot: Some(Default::default()),
            }
            .encode_to_vec(),
            1,
            LEN,
        ),
        (
            "CreateVolumeSnapshotResponse.volume_snapshot",
            v::CreateVolumeSnapshotResponse {
                volume_snapshot: Some(Default::default()),
            }
            .encode_to_vec(),
            1,
            LEN,
        ),
        (
            "DeleteVolumeSnapshotRequest.volume_snapshot_id",
            v::DeleteVolumeSnapshotRequest {
                volume_snapshot_id: s(),
            }
            .encode_to_vec(),
            1,
            LEN,
        ),
    ];
    for (name, bytes, number, wire) in cases {
        assert_eq!(first_key(&bytes), (number, wire), "{name}");
    }
    // Messages without fields encode to nothing.
    assert!(v::StatusRequest {}.encode_to_vec().is_empty());
    assert!(v::ExpandVolumeResponse {}.encode_to_vec().is_empty());
    assert!(v::DeleteVolumeResponse {}.encode_to_vec().is_empty());
    assert!(v::DeleteVolumeSnapshotResponse {}
        .encode_to_vec()
        .is_empty());
}

#[test]
fn enum_values_match_the_contract() {
    assert_eq!(v::VolumeState::VolumePending as i32, 0);
    assert_eq!(v::VolumeState::VolumeAvailable as i32, 1);
    assert_eq!(v::VolumeState::VolumeError as i32, 2);
    assert_eq!(v::VolumeSnapshotState::VolumeSnapshotPending as i32, 0);
    assert_eq!(v::VolumeSnapshotState::VolumeSnapshotReady as i32, 1);
    assert_eq!(v::VolumeSnapshotState::VolumeSnapshotFailed as i32, 2);
    assert_eq!(
        v::VolumeState::VolumeAvailable.as_str_name(),
        "VOLUME_AVAILABLE"
    );
}

#[test]
fn known_bytes_decode_to_the_expected_fields() {
    // ObjectMetadata{id:"a", labels:{"k":"v"}, generation:1, created_at:2, deleted_at:3}
    let bytes = [
        0x0a, 0x01, b'a', //
        0x1a, 0x06, 0x0a, 0x01, b'k', 0x12, 0x01, b'v', //
        0x20, 0x01, 0x28, 0x02, 0x30, 0x03,
    ];
    let md = meta_v1::ObjectMetadata::decode(&bytes[..]).expect("decodes");
    assert_eq!(md.id, "a");
    assert_eq!(md.labels["k"], "v");
    assert_eq!((md.generation, md.created_at, md.deleted_at), (1, 2, 3));
    assert_eq!(md.encode_to_vec(), bytes, "canonical encoding round-trips");

    // VolumeSpec with the reserved field 1 (old `string image`) set: ignored, class at 2.
    let bytes = [
        0x0a, 0x03, b'o', b'l', b'd', 0x12, 0x04, b'f', b'a', b's', b't', 0x1a, 0x02, 0x08, 0x05,
    ];
    let spec = v::VolumeSpec::decode(&bytes[..]).expect("decodes");
    assert_eq!(spec.class, "fast");
    assert_eq!(spec.resources.expect("resources").storage_bytes, 5);

    // Event: spec at field 2, event_time 5 varint, action 6.
    let ev = event_v1::Event {
        spec: Some(event_v1::EventSpec {
            event_time: 7,
            action: "A".into(),
            ..Default::default()
        }),
    };
    assert_eq!(
        ev.encode_to_vec(),
        [0x12, 0x05, 0x28, 0x07, 0x32, 0x01, b'A']
    );
}

#[test]
fn method_paths_carry_the_package_name() {
    let generated = include_str!(concat!(env!("OUT_DIR"), "/volume.v1alpha1.rs"));
    for m in [
        "Version",
        "ListEvents",
        "ListVolumes",
        "CreateVolume",
        "ExpandVolume",
        "DeleteVolume",
        "CreateVolumeSnapshot",
        "DeleteVolumeSnapshot",
        "ListVolumeSnapshots",
        "Status",
    ] {
        let path = format!("\"/volume.v1alpha1.VolumeRuntime/{m}\"");
        assert!(generated.contains(&path), "{path}");
    }
}
