//! Conversion between stored objects (`store::Image`, `store::Snapshot`, `controllers` events) and
//! IRI messages (the protos in `crates/iri/proto`).
//!
//! * IRI labels/annotations travel as JSON strings in the store annotations
//!   `ceph-provider.ironcore.dev/labels` / `…/annotations`. A missing annotation or JSON `null` reads
//!   as an empty map; an undecodable one is a [`ConvertError`] and the caller skips that object
//!   with a log line (a List never fails because of one bad object).
//! * Every state maps to an IRI enum value: unknown and legacy states never fail (an
//!   unknown state reads as PENDING, the legacy `Populated` as READY), so one odd record never
//!   fails a List.
//! * `spec.resources.storage_bytes` echoes the **requested** size, `status.resources` the rounded
//!   one (the poollet compares the two and would resize again if the
//!   request were replaced by the rounded size); `metadata`, `spec`, `spec.resources` and `status` are always set.
//! * Access data only when AVAILABLE: driver `ceph`, handle = WWN, attributes `monitors`/`image`,
//!   secret `userID`/`userKey`.
//! * Times: metadata in Unix nanoseconds, events in Unix seconds.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use store::keys::{self, SOURCE_VOLUME_ANNOTATION};
use store::{Image, ImageState, Metadata, Snapshot, SnapshotState};

use iri::{event_v1, meta_v1, volume_v1};

pub use iri::labels::{
    POOLLET_PREFIX, SNAPSHOT_NAMESPACE_LABEL, SNAPSHOT_NAME_LABEL, VOLUME_NAMESPACE_LABEL,
    VOLUME_NAME_LABEL,
};

/// An object that cannot be shown through IRI.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("object {id}: {reason}")]
pub struct ConvertError {
    /// Object id.
    pub id: String,
    /// Why.
    pub reason: String,
}

/// Encodes an IRI map as the JSON string stored in an annotation.
pub fn encode_map(map: &BTreeMap<String, String>) -> String {
    serde_json::to_string(map).expect("a string map always serializes")
}

fn decode_map(md: &Metadata, key: &str) -> Result<BTreeMap<String, String>, ConvertError> {
    match md.annotations.get(key) {
        None => Ok(BTreeMap::new()),
        Some(text) => serde_json::from_str::<Option<BTreeMap<String, String>>>(text)
            .map(Option::unwrap_or_default)
            .map_err(|e| ConvertError {
                id: md.id.clone(),
                reason: format!("annotation {key}: {e}"),
            }),
    }
}

/// The IRI labels of a stored object.
pub fn iri_labels(md: &Metadata) -> Result<BTreeMap<String, String>, ConvertError> {
    decode_map(md, keys::LABELS_ANNOTATION)
}

/// The IRI annotations of a stored object.
pub fn iri_annotations(md: &Metadata) -> Result<BTreeMap<String, String>, ConvertError> {
    decode_map(md, keys::ANNOTATIONS_ANNOTATION)
}

/// Store metadata annotations carrying IRI labels and annotations.
pub fn store_annotations(
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    BTreeMap::from([
        (keys::LABELS_ANNOTATION.to_string(), encode_map(labels)),
        (
            keys::ANNOTATIONS_ANNOTATION.to_string(),
            encode_map(annotations),
        ),
    ])
}

/// Unix nanoseconds of a time (saturating; Go's zero time and earlier give 0).
pub fn unix_nanos(t: DateTime<Utc>) -> i64 {
    if t.timestamp() <= 0 {
        return 0;
    }
    t.timestamp_nanos_opt().unwrap_or(i64::MAX)
}

/// IRI metadata of a stored object.
pub fn object_metadata(md: &Metadata) -> Result<meta_v1::ObjectMetadata, ConvertError> {
    Ok(meta_v1::ObjectMetadata {
        id: md.id.clone(),
        annotations: iri_annotations(md)?,
        labels: iri_labels(md)?,
        generation: md.generation,
        created_at: unix_nanos(md.created_at),
        deleted_at: md.deleted_at.map(unix_nanos).unwrap_or(0),
    })
}

/// Whether an object carries the manager label of this provider.
pub fn is_managed(md: &Metadata) -> bool {
    md.labels.get(keys::MANAGER_LABEL).map(String::as_str) == Some(keys::MANAGER)
}

/// Whether an image is internal (never shown through IRI): not managed, or a clone made while
/// re-homing a snapshot during its parent's deletion (its id is the snapshot's id and it is cloned
/// from that snapshot).
pub fn is_internal_image(img: &Image) -> bool {
    !is_managed(&img.metadata) || img.spec.snapshot_ref.as_deref() == Some(img.metadata.id.as_str())
}

/// Whether the volume server shows this image as a volume: not internal, and not `Retained` (a
/// volume deleted under the deferred deletion policy whose image is kept for its snapshots: gone
/// for every client, NOT_FOUND by id).
pub fn is_visible_volume(img: &Image) -> bool {
    !is_internal_image(img) && img.status.state != ImageState::Retained
}

/// Whether the volume server shows this snapshot: managed by this provider and not `Retained` (a
/// snapshot deleted under the deferred deletion policy whose rbd snapshot is kept for its clones).
pub fn is_visible_snapshot(snap: &Snapshot) -> bool {
    is_managed(&snap.metadata) && snap.status.state != SnapshotState::Retained
}

/// The IRI state of an image state (never fails).
pub fn volume_state(state: &ImageState) -> volume_v1::VolumeState {
    match state {
        ImageState::Available => volume_v1::VolumeState::VolumeAvailable,
        ImageState::Error => volume_v1::VolumeState::VolumeError,
        ImageState::Pending
        | ImageState::Resolving
        | ImageState::Formatting
        | ImageState::FlatteningChildren
        | ImageState::Filling
        | ImageState::Retained
        | ImageState::Other(_) => volume_v1::VolumeState::VolumePending,
    }
}

/// The IRI state of a snapshot state (never fails; legacy `Populated` is READY).
pub fn snapshot_state(state: &SnapshotState) -> volume_v1::VolumeSnapshotState {
    match state {
        SnapshotState::Ready | SnapshotState::Populated => {
            volume_v1::VolumeSnapshotState::VolumeSnapshotReady
        }
        SnapshotState::Failed => volume_v1::VolumeSnapshotState::VolumeSnapshotFailed,
        SnapshotState::Pending
        | SnapshotState::Populating
        | SnapshotState::Flattening
        | SnapshotState::Flattened
        | SnapshotState::Retained
        | SnapshotState::Other(_) => volume_v1::VolumeSnapshotState::VolumeSnapshotPending,
    }
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The IRI volume of a stored image.
///
/// An image that says `Available` but has no access data is reported PENDING (a client could not
/// use it) instead of failing.
pub fn volume(img: &Image) -> Result<volume_v1::Volume, ConvertError> {
    let metadata = object_metadata(&img.metadata)?;
    let class = img
        .metadata
        .labels
        .get(keys::CLASS_LABEL)
        .cloned()
        .unwrap_or_default();
    let mut state = volume_state(&img.status.state);
    let access = match (&img.status.state, &img.status.access) {
        (ImageState::Available, Some(a)) => Some(volume_v1::VolumeAccess {
            driver: "ceph".to_string(),
            handle: img.spec.wwn.clone(),
            attributes: BTreeMap::from([
                ("monitors".to_string(), a.monitors.clone()),
                ("image".to_string(), a.handle.clone()),
            ]),
            secret_data: BTreeMap::from([
                ("userID".to_string(), a.user.clone().into_bytes()),
                ("userKey".to_string(), a.user_key.clone().into_bytes()),
            ]),
        }),
        (ImageState::Available, None) => {
            state = volume_v1::VolumeState::VolumePending;
            None
        }
        _ => None,
    };
    Ok(volume_v1::Volume {
        metadata: Some(metadata),
        spec: Some(volume_v1::VolumeSpec {
            class,
            resources: Some(volume_v1::VolumeResources {
                storage_bytes: to_i64(img.spec.size),
            }),
            encryption: None,
            volume_data_source: None,
        }),
        status: Some(volume_v1::VolumeStatus {
            state: state as i32,
            access,
            resources: Some(volume_v1::VolumeResources {
                storage_bytes: to_i64(img.status.size),
            }),
        }),
    })
}

/// The volume id a snapshot reports: the id recorded at creation, else the current source.
pub fn snapshot_volume_id(snap: &Snapshot) -> String {
    snap.metadata
        .annotations
        .get(SOURCE_VOLUME_ANNOTATION)
        .filter(|v| !v.is_empty())
        .cloned()
        .unwrap_or_else(|| snap.source.volume_image_id.clone())
}

/// The IRI volume snapshot of a stored snapshot.
pub fn volume_snapshot(snap: &Snapshot) -> Result<volume_v1::VolumeSnapshot, ConvertError> {
    Ok(volume_v1::VolumeSnapshot {
        metadata: Some(object_metadata(&snap.metadata)?),
        spec: Some(volume_v1::VolumeSnapshotSpec {
            volume_id: snapshot_volume_id(snap),
        }),
        status: Some(volume_v1::VolumeSnapshotStatus {
            state: snapshot_state(&snap.status.state) as i32,
            size: snap.status.size.max(0),
        }),
    })
}

/// The IRI event of a recorded event.
pub fn event(ev: &controllers::events::Event) -> Result<event_v1::Event, ConvertError> {
    Ok(event_v1::Event {
        spec: Some(event_v1::EventSpec {
            involved_object_meta: Some(object_metadata(&ev.involved)?),
            reason: ev.reason.clone(),
            message: ev.message.clone(),
            r#type: ev.event_type.as_str().to_string(),
            event_time: ev.time.timestamp(),
            action: ev.action.clone(),
        }),
    })
}

/// Whether `labels` contain every pair of `selector` (plain equality, AND; empty selects all).
pub fn labels_match(
    labels: &BTreeMap<String, String>,
    selector: &BTreeMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[cfg(test)]
mod tests {
    use store::{ImageAccess, ImageSpec, ImageStatus, SnapshotSource, SnapshotStatus};

    use super::*;

    fn image(state: ImageState) -> Image {
        let mut md = Metadata::new("vol1");
        md.annotations = store_annotations(
            &BTreeMap::from([("a".to_string(), "b".to_string())]),
            &BTreeMap::new(),
        );
        md.labels.insert(keys::CLASS_LABEL.into(), "fast".into());
        md.labels
            .insert(keys::MANAGER_LABEL.into(), keys::MANAGER.into());
        md.created_at = DateTime::from_timestamp(1_700_000_000, 5).expect("valid");
        Image {
            metadata: md,
            spec: ImageSpec {
                size: 1_500_000_000,
                wwn: "0123456789abcdef".into(),
                ..Default::default()
            },
            status: ImageStatus {
                state,
                size: 2 << 30,
                access: Some(ImageAccess {
                    monitors: "m:6789".into(),
                    handle: "pool/img_vol1".into(),
                    user: "volumes".into(),
                    user_key: "KEY".into(),
                }),
                ..Default::default()
            },
        }
    }

    #[test]
    fn an_available_image_becomes_a_volume_with_access_data() {
        let v = volume(&image(ImageState::Available)).expect("converts");
        let md = v.metadata.expect("metadata");
        assert_eq!(md.id, "vol1");
        assert_eq!(md.labels["a"], "b");
        assert_eq!(md.created_at, 1_700_000_000_000_000_005);
        assert_eq!(md.deleted_at, 0);
        let spec = v.spec.expect("spec");
        assert_eq!(spec.class, "fast");
        assert_eq!(
            spec.resources.expect("resources").storage_bytes,
            1_500_000_000
        );
        let status = v.status.expect("status");
        assert_eq!(status.state, volume_v1::VolumeState::VolumeAvailable as i32);
        assert_eq!(status.resources.expect("resources").storage_bytes, 2 << 30);
        let a = status.access.expect("access");
        assert_eq!(a.driver, "ceph");
        assert_eq!(a.handle, "0123456789abcdef");
        assert_eq!(a.attributes["monitors"], "m:6789");
        assert_eq!(a.attributes["image"], "pool/img_vol1");
        assert_eq!(a.secret_data["userID"], b"volumes");
        assert_eq!(a.secret_data["userKey"], b"KEY");
    }

    #[test]
    fn every_image_state_maps_and_only_available_carries_access() {
        for (state, want) in [
            (ImageState::Pending, volume_v1::VolumeState::VolumePending),
            (
                ImageState::FlatteningChildren,
                volume_v1::VolumeState::VolumePending,
            ),
            (ImageState::Filling, volume_v1::VolumeState::VolumePending),
            (ImageState::Resolving, volume_v1::VolumeState::VolumePending),
            (
                ImageState::Formatting,
                volume_v1::VolumeState::VolumePending,
            ),
            (ImageState::Error, volume_v1::VolumeState::VolumeError),
            (
                ImageState::Other("Future".into()),
                volume_v1::VolumeState::VolumePending,
            ),
        ] {
            let v = volume(&image(state)).expect("converts");
            let status = v.status.expect("status");
            assert_eq!(status.state, want as i32);
            assert!(status.access.is_none());
        }
    }

    #[test]
    fn available_without_access_is_reported_pending() {
        let mut img = image(ImageState::Available);
        img.status.access = None;
        let status = volume(&img).expect("converts").status.expect("status");
        assert_eq!(status.state, volume_v1::VolumeState::VolumePending as i32);
    }

    #[test]
    fn every_snapshot_state_maps() {
        use volume_v1::VolumeSnapshotState as S;
        for (state, want) in [
            (SnapshotState::Pending, S::VolumeSnapshotPending),
            (SnapshotState::Populated, S::VolumeSnapshotReady),
            (SnapshotState::Populating, S::VolumeSnapshotPending),
            (SnapshotState::Flattening, S::VolumeSnapshotPending),
            (SnapshotState::Flattened, S::VolumeSnapshotPending),
            (SnapshotState::Ready, S::VolumeSnapshotReady),
            (SnapshotState::Failed, S::VolumeSnapshotFailed),
            (SnapshotState::Other("x".into()), S::VolumeSnapshotPending),
        ] {
            assert_eq!(snapshot_state(&state), want);
        }
    }

    #[test]
    fn broken_label_annotations_are_a_conversion_error_and_missing_ones_are_empty() {
        let mut img = image(ImageState::Pending);
        img.metadata
            .annotations
            .insert(keys::LABELS_ANNOTATION.into(), "{not json".into());
        assert!(volume(&img).is_err());
        img.metadata.annotations.clear();
        let md = volume(&img).expect("converts").metadata.expect("metadata");
        assert!(md.labels.is_empty() && md.annotations.is_empty());
        img.metadata
            .annotations
            .insert(keys::LABELS_ANNOTATION.into(), "null".into());
        assert!(volume(&img).is_ok());
    }

    #[test]
    fn a_snapshot_reports_the_volume_id_recorded_at_creation() {
        let mut s = Snapshot {
            metadata: Metadata::new("snap1"),
            source: SnapshotSource {
                ironcore_image: String::new(),
                volume_image_id: "snap1".into(),
            },
            status: SnapshotStatus {
                state: SnapshotState::Ready,
                size: 42,
                ..Default::default()
            },
        };
        assert_eq!(snapshot_volume_id(&s), "snap1");
        s.metadata
            .annotations
            .insert(SOURCE_VOLUME_ANNOTATION.into(), "vol1".into());
        let v = volume_snapshot(&s).expect("converts");
        assert_eq!(v.spec.expect("spec").volume_id, "vol1");
        assert_eq!(v.status.expect("status").size, 42);
    }

    #[test]
    fn rehomed_clones_and_unmanaged_images_are_internal() {
        let mut img = image(ImageState::Pending);
        assert!(!is_internal_image(&img));
        img.spec.snapshot_ref = Some("vol1".into());
        assert!(is_internal_image(&img));
        img.spec.snapshot_ref = None;
        img.metadata.labels.remove(keys::MANAGER_LABEL);
        assert!(is_internal_image(&img));
    }

    #[test]
    fn label_selectors_are_equality_and() {
        let l = BTreeMap::from([
            ("a".to_string(), "1".to_string()),
            ("b".to_string(), "2".to_string()),
        ]);
        assert!(labels_match(&l, &BTreeMap::new()));
        assert!(labels_match(
            &l,
            &BTreeMap::from([("a".to_string(), "1".to_string())])
        ));
        assert!(!labels_match(
            &l,
            &BTreeMap::from([("a".to_string(), "2".to_string())])
        ));
        assert!(!labels_match(
            &l,
            &BTreeMap::from([("c".to_string(), String::new())])
        ));
    }

    #[test]
    fn go_zero_time_is_zero_nanoseconds() {
        assert_eq!(unix_nanos(store::zero_time()), 0);
    }
}
