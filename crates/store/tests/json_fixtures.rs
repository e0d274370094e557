//! The JSON layout is the Go provider's: records written by Go read and write back unchanged, and
//! the states only we write (`Filling`, `Resolving`, `Formatting`, `Retained`) use the same layout.

use std::path::PathBuf;

use store::{
    keys, EncryptionType, Image, ImageState, Object, Snapshot, SnapshotState, FIELD_SNAPSHOT_REF,
};

fn fixture(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .trim_end()
        .to_owned()
}

/// Parses the fixture as `T`, writes it back and checks that the bytes are identical.
fn round_trips_byte_for_byte<T: Object>(name: &str) -> T {
    let text = fixture(name);
    let obj: T = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
    let written = serde_json::to_string(&obj).expect("encode");
    assert_eq!(written, text, "{name} must be written back byte for byte");
    obj
}

/// Parses the fixture as `T`, writes it back, reads that again: the same value.
fn round_trips_in_meaning<T: Object + PartialEq + std::fmt::Debug>(
    name: &str,
) -> (T, serde_json::Value) {
    let text = fixture(name);
    let obj: T = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
    let written = serde_json::to_value(&obj).expect("encode");
    let again: T = serde_json::from_value(written.clone()).expect("decode what we wrote");
    assert_eq!(again, obj);
    (obj, written)
}

#[test]
fn an_available_encrypted_image_written_by_go_round_trips_byte_for_byte() {
    let img: Image = round_trips_byte_for_byte("image_available.json");
    assert_eq!(img.metadata.resource_version, 7);
    assert_eq!(
        img.metadata.finalizers,
        vec![keys::IMAGE_FINALIZER.to_owned()]
    );
    assert_eq!(img.metadata.labels[keys::CLASS_LABEL], "fast");
    assert!(img
        .metadata
        .annotations
        .contains_key(keys::LABELS_ANNOTATION));
    assert_eq!(
        img.metadata.created_at.timestamp_subsec_nanos(),
        123_456_789
    );
    assert_eq!(img.spec.size, 10_737_418_240);
    assert_eq!(img.spec.limits.len(), 14);
    assert_eq!(img.spec.limits["rbd_qos_iops_limit"], 100);
    assert_eq!(img.spec.image_architecture.as_deref(), Some("amd64"));
    let enc = img.spec.encryption.as_ref().expect("encryption");
    assert_eq!(enc.encryption_type, EncryptionType::Encrypted);
    assert_eq!(&enc.encrypted_passphrase[..4], &[0xde, 0xad, 0xbe, 0xef]);
    assert_eq!(img.status.state, ImageState::Available);
    assert_eq!(img.status.encryption, store::ENCRYPTION_HEADER_SET);
    assert_eq!(
        img.status.access.as_ref().expect("access").user,
        "client.volume-provider"
    );
    assert_eq!(img.status.progress, None);
    assert_eq!(img.status.message, "");
    assert!(img
        .field(FIELD_SNAPSHOT_REF)
        .expect("indexed")
        .starts_with("sha256:"));
}

#[test]
fn a_pending_image_with_nil_maps_and_pointers_round_trips_byte_for_byte() {
    let img: Image = round_trips_byte_for_byte("image_pending_minimal.json");
    assert!(img.spec.limits.is_empty());
    assert_eq!(img.spec.image_architecture, None);
    assert_eq!(img.spec.snapshot_ref, None);
    assert_eq!(img.spec.encryption, None);
    assert_eq!(img.status.access, None);
    assert_eq!(img.status.state, ImageState::Pending);
    assert!(img.metadata.finalizers.is_empty());
    assert_eq!(img.metadata.deleted_at, None);
    assert_eq!(img.field(FIELD_SNAPSHOT_REF).as_deref(), Some(""));
}

#[test]
fn a_deleting_image_flattening_children_round_trips_byte_for_byte() {
    let img: Image = round_trips_byte_for_byte("image_deleting_flattening_children.json");
    assert!(img.metadata.is_deleted());
    assert_eq!(
        img.metadata
            .deleted_at
            .expect("deletedAt")
            .timestamp_subsec_nanos(),
        1
    );
    assert_eq!(img.status.state, ImageState::FlatteningChildren);
    let enc = img.spec.encryption.expect("encryption");
    assert_eq!(enc.encryption_type, EncryptionType::Unencrypted);
    assert!(enc.encrypted_passphrase.is_empty());
}

#[test]
fn a_retained_image_of_the_deferred_deletion_round_trips_byte_for_byte() {
    let img: Image = round_trips_byte_for_byte("image_retained.json");
    assert!(img.metadata.is_deleted());
    assert!(img.metadata.has_finalizer(keys::IMAGE_FINALIZER));
    assert_eq!(img.status.state, ImageState::Retained);
    assert_eq!(img.status.state.as_str(), "Retained");
    assert!(img.status.message.starts_with("kept hidden"));
    assert!(img.status.access.is_some(), "access data is kept as it was");
}

#[test]
fn a_retained_snapshot_of_the_deferred_deletion_round_trips_byte_for_byte() {
    let s: Snapshot = round_trips_byte_for_byte("snapshot_retained.json");
    assert!(s.metadata.is_deleted());
    assert!(s.metadata.has_finalizer(keys::SNAPSHOT_FINALIZER));
    assert_eq!(s.status.state, SnapshotState::Retained);
    assert_eq!(SnapshotState::from("Retained"), SnapshotState::Retained);
    assert_eq!(s.status.size, 1_073_741_824);
}

#[test]
fn an_image_in_an_unknown_state_keeps_the_state_string() {
    let img: Image = round_trips_byte_for_byte("image_unknown_state.json");
    assert_eq!(
        img.status.state,
        ImageState::Other("SomethingNew".to_owned())
    );
    assert_eq!(img.metadata.created_at, store::zero_time());
}

#[test]
fn an_image_written_by_us_carries_progress_and_message_and_round_trips() {
    let img: Image = round_trips_byte_for_byte("image_filling_with_progress.json");
    assert_eq!(img.status.state, ImageState::Filling);
    let p = img.status.progress.as_ref().expect("progress");
    assert_eq!((p.done, p.total), (1024, 2048));
    assert_eq!(img.status.message, "copying from snapshot");
}

#[test]
fn an_os_volume_resolving_its_reference_round_trips_byte_for_byte() {
    let img: Image = round_trips_byte_for_byte("image_resolving.json");
    assert_eq!(img.status.state, ImageState::Resolving);
    assert_eq!(
        img.spec.image,
        "ghcr.io/ironcore-dev/os-images/gardenlinux:1443"
    );
    assert_eq!(img.spec.snapshot_ref, None);
    assert_eq!(img.field(FIELD_SNAPSHOT_REF).as_deref(), Some(""));
    assert!(img.status.message.starts_with("retrying:"));
    assert_eq!(img.status.progress, None);
}

#[test]
fn an_encrypted_volume_with_its_header_on_top_round_trips_byte_for_byte() {
    let img: Image = round_trips_byte_for_byte("image_encrypted_header_on_top.json");
    assert_eq!(img.status.header_size, 16 << 20);
    assert_eq!(
        img.status.size, img.spec.size,
        "the guest sees the size asked for"
    );
    // Go's records (and ours of plain volumes and older encrypted ones) carry no such key.
    let old: Image = serde_json::from_str(&fixture("image_available.json")).expect("decode");
    assert_eq!(old.status.header_size, 0);
    let v = serde_json::to_value(&old).expect("encode");
    assert!(v["status"].get("headerSize").is_none());
}

#[test]
fn an_encrypted_volume_being_formatted_round_trips_byte_for_byte() {
    let img: Image = round_trips_byte_for_byte("image_formatting.json");
    assert_eq!(img.status.state, ImageState::Formatting);
    let enc = img.spec.encryption.as_ref().expect("encryption");
    assert_eq!(enc.encryption_type, EncryptionType::Encrypted);
    assert_eq!(img.status.encryption, "", "the header is not set yet");
    assert_eq!(img.status.message, "");
}

#[test]
fn an_os_snapshot_written_by_go_round_trips_byte_for_byte() {
    let s: Snapshot = round_trips_byte_for_byte("snapshot_os_ready.json");
    assert_eq!(s.metadata.id, s.status.digest);
    assert!(s.metadata.annotations.is_empty());
    assert_eq!(s.status.state, SnapshotState::Ready);
    assert_eq!(s.status.size, 3_221_225_472);
    assert_eq!(s.source.volume_image_id, "");
    assert!(s.source.ironcore_image.contains("@sha256:"));
    assert_eq!(s.metadata.created_at.timestamp_subsec_nanos(), 999_999_999);
}

#[test]
fn a_legacy_populated_snapshot_round_trips_as_populated() {
    let s: Snapshot = round_trips_byte_for_byte("snapshot_populated_legacy.json");
    assert_eq!(s.status.state, SnapshotState::Populated);
}

#[test]
fn a_volume_snapshot_in_an_unknown_state_keeps_the_state_string() {
    let s: Snapshot = round_trips_byte_for_byte("snapshot_volume_unknown_state.json");
    assert_eq!(
        s.status.state,
        SnapshotState::Other("SomethingNew".to_owned())
    );
    assert!(s.metadata.is_deleted());
    assert_eq!(s.source.ironcore_image, "");
    assert_eq!(
        s.field(FIELD_SNAPSHOT_REF),
        None,
        "snapshots have no field indexer"
    );
}

#[test]
fn go_variants_of_empty_values_and_offsets_read_with_the_same_meaning() {
    let (img, written) = round_trips_in_meaning::<Image>("image_go_variants.json");
    assert!(img.metadata.labels.is_empty() && img.metadata.annotations.is_empty());
    assert!(img.metadata.finalizers.is_empty());
    assert!(img.spec.limits.is_empty());
    assert!(img
        .spec
        .encryption
        .as_ref()
        .expect("encryption")
        .encrypted_passphrase
        .is_empty());
    // 12:11:12.12+02:00 is 10:11:12.12Z; we always write UTC.
    assert_eq!(written["metadata"]["createdAt"], "2024-05-01T10:11:12.12Z");
    assert_eq!(written["spec"]["limits"], serde_json::Value::Null);
    assert!(written["metadata"].get("finalizers").is_none());
    assert!(written["metadata"].get("deletedAt").is_none());
}

#[test]
fn a_snapshot_of_an_older_layout_reads_missing_fields_as_empty() {
    let (s, written) = round_trips_in_meaning::<Snapshot>("snapshot_old_layout.json");
    assert_eq!(s.status.state, SnapshotState::Populated);
    assert_eq!(s.status.size, 0);
    assert_eq!(s.source.volume_image_id, "");
    assert_eq!(written["source"]["volumeImageId"], "");
}

#[test]
fn our_extra_fields_are_omitted_when_empty() {
    let img: Image = serde_json::from_str(&fixture("image_pending_minimal.json")).expect("decode");
    let v = serde_json::to_value(&img).expect("encode");
    let status = v["status"].as_object().expect("status object");
    assert!(!status.contains_key("progress"));
    assert!(!status.contains_key("message"));
    let snap: Snapshot = serde_json::from_str(&fixture("snapshot_os_ready.json")).expect("decode");
    let v = serde_json::to_value(&snap).expect("encode");
    let status = v["status"].as_object().expect("status object");
    assert!(!status.contains_key("progress") && !status.contains_key("message"));
}

#[test]
fn every_known_state_is_written_as_its_go_name() {
    for (state, text) in [
        (ImageState::Pending, "Pending"),
        (ImageState::Available, "Available"),
        (ImageState::FlatteningChildren, "FlatteningChildren"),
        (ImageState::Filling, "Filling"),
        (ImageState::Resolving, "Resolving"),
        (ImageState::Formatting, "Formatting"),
        (ImageState::Error, "Error"),
    ] {
        assert_eq!(serde_json::to_value(&state).expect("encode"), text);
        assert_eq!(
            serde_json::from_value::<ImageState>(text.into()).expect("decode"),
            state
        );
    }
    for (state, text) in [
        (SnapshotState::Pending, "Pending"),
        (SnapshotState::Populated, "Populated"),
        (SnapshotState::Populating, "Populating"),
        (SnapshotState::Flattening, "Flattening"),
        (SnapshotState::Flattened, "Flattened"),
        (SnapshotState::Ready, "Ready"),
        (SnapshotState::Failed, "Failed"),
    ] {
        assert_eq!(serde_json::to_value(&state).expect("encode"), text);
        assert_eq!(
            serde_json::from_value::<SnapshotState>(text.into()).expect("decode"),
            state
        );
    }
    assert_eq!(
        serde_json::from_value::<SnapshotState>("".into()).expect("decode"),
        SnapshotState::Other(String::new())
    );
}

#[test]
fn debug_output_never_shows_secrets() {
    let img: Image = serde_json::from_str(&fixture("image_available.json")).expect("decode");
    let dbg = format!("{img:?}");
    assert!(
        !dbg.contains("AQBzZXNhbWUtbm90LWEtcmVhbC1rZXk9PQ=="),
        "user key leaked: {dbg}"
    );
    assert!(dbg.contains("<redacted"));
    assert!(
        !dbg.contains("222, 173, 190, 239"),
        "wrapped passphrase leaked"
    );
}

#[test]
fn a_new_metadata_has_go_zero_time_and_no_version() {
    let md = store::Metadata::new("x");
    let v = serde_json::to_value(&md).expect("encode");
    assert_eq!(
        v,
        serde_json::json!({"id": "x", "annotations": null, "labels": null,
            "createdAt": "0001-01-01T00:00:00Z", "generation": 0, "resourceVersion": 0})
    );
}

#[test]
fn finalizer_helpers_add_once_and_remove_all() {
    let mut md = store::Metadata::new("x");
    assert!(md.add_finalizer("image"));
    assert!(!md.add_finalizer("image"));
    assert!(md.has_finalizer("image"));
    assert!(md.remove_finalizer("image"));
    assert!(!md.remove_finalizer("image"));
    assert!(!md.has_finalizer("image"));
    assert!(!md.is_deleted());
}
