//! Request validation: every malformed request is answered with a precise code and a message that
//! names the offending field (e.g. `volume.spec.resources.storage_bytes: must be > 0`), before
//! anything is changed. Checks that need stored objects (unknown ids, source state) live in
//! `server`; this module checks the request alone.
//!
//! Codes: `INVALID_ARGUMENT` for bad input, `FAILED_PRECONDITION` for input that is fine but cannot
//! be served in the current setup (encryption on the local backend).

use std::collections::BTreeMap;
use std::fmt::Display;

use tonic::Status;

use crate::classes::{VolumeClass, VolumeClasses};
use iri::volume_v1;

/// Key of `spec.encryption.secret_data` holding the raw LUKS passphrase.
pub const ENCRYPTION_KEY: &str = "encryptionKey";

/// `INVALID_ARGUMENT` with `field: reason`.
pub fn invalid(field: &str, reason: impl Display) -> Status {
    Status::invalid_argument(format!("{field}: {reason}"))
}

/// Checks a label selector: keys must be non-empty and free of whitespace and control characters,
/// values free of control characters.
pub fn selector(field: &str, sel: &BTreeMap<String, String>) -> Result<(), Status> {
    for (k, v) in sel {
        if k.is_empty() {
            return Err(invalid(field, "label key must not be empty"));
        }
        if k.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid(
                field,
                format!("label key {k:?} contains whitespace"),
            ));
        }
        if v.chars().any(char::is_control) {
            return Err(invalid(
                field,
                format!("value of label {k:?} contains control characters"),
            ));
        }
    }
    Ok(())
}

/// Whether `id` could be an object id: 1–255 characters of `[A-Za-z0-9._:-]`, not `.`/`..`
/// (provider ids are 63 hex characters, OS snapshot ids `sha256:<hex>`). Anything else cannot
/// exist, so lists answer `[]` and mutations `INVALID_ARGUMENT` without touching the store.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 255
        && id != "."
        && id != ".."
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'))
}

/// Checks that an id argument is set and well-formed.
pub fn id(field: &str, id: &str) -> Result<(), Status> {
    if id.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if !is_valid_id(id) {
        return Err(invalid(field, format!("{id:?} is not a valid id")));
    }
    Ok(())
}

/// Where a new volume's data comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataSource {
    /// An empty volume.
    Empty,
    /// An OS image (reference, optional architecture).
    Image {
        /// OCI reference.
        image: String,
        /// Architecture, if given.
        architecture: Option<String>,
    },
    /// A snapshot, as the client named it (provider id or k8s VolumeSnapshot name).
    Snapshot(String),
}

/// A validated CreateVolume request.
#[derive(Clone)]
pub struct CreateVolume {
    /// IRI labels.
    pub labels: BTreeMap<String, String>,
    /// IRI annotations.
    pub annotations: BTreeMap<String, String>,
    /// The volume class.
    pub class: VolumeClass,
    /// Requested size; 0 only with a snapshot source (use the source's size).
    pub size: u64,
    /// Data source.
    pub source: DataSource,
    /// The raw passphrase when encryption was requested.
    pub passphrase: Option<Vec<u8>>,
}

impl std::fmt::Debug for CreateVolume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateVolume")
            .field("class", &self.class.name)
            .field("size", &self.size)
            .field("source", &self.source)
            .field("encrypted", &self.passphrase.is_some())
            .finish_non_exhaustive()
    }
}

/// Validates a CreateVolume request against the configured classes.
///
/// `encryption_unsupported`: when set (local backend), a request with encryption is answered
/// `FAILED_PRECONDITION` with this reason.
pub fn create_volume(
    req: &volume_v1::CreateVolumeRequest,
    classes: &VolumeClasses,
    encryption_unsupported: Option<&str>,
) -> Result<CreateVolume, Status> {
    let volume = req
        .volume
        .as_ref()
        .ok_or_else(|| invalid("volume", "required"))?;
    let md = volume
        .metadata
        .as_ref()
        .ok_or_else(|| invalid("volume.metadata", "required"))?;
    selector("volume.metadata.labels", &md.labels)?;
    let spec = volume
        .spec
        .as_ref()
        .ok_or_else(|| invalid("volume.spec", "required"))?;

    if spec.class.is_empty() {
        return Err(invalid("volume.spec.class", "required"));
    }
    let class = classes.get(&spec.class).cloned().ok_or_else(|| {
        invalid(
            "volume.spec.class",
            format!(
                "unknown volume class {:?} (supported: {})",
                spec.class,
                classes.names()
            ),
        )
    })?;

    let source = match &spec.volume_data_source {
        None => DataSource::Empty,
        Some(ds) => match (&ds.snapshot_data_source, &ds.image_data_source) {
            // The Go provider lets the snapshot win when both are set.
            (Some(snap), _) => {
                if snap.snapshot_id.is_empty() {
                    return Err(invalid(
                        "volume.spec.volume_data_source.snapshot_data_source.snapshot_id",
                        "must not be empty",
                    ));
                }
                DataSource::Snapshot(snap.snapshot_id.clone())
            }
            (None, Some(img)) => {
                let image = img.image.trim();
                if image.is_empty() {
                    return Err(invalid(
                        "volume.spec.volume_data_source.image_data_source.image",
                        "must not be empty",
                    ));
                }
                if image.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    return Err(invalid(
                        "volume.spec.volume_data_source.image_data_source.image",
                        format!("{image:?} is not an image reference"),
                    ));
                }
                let arch = img.architecture.trim();
                DataSource::Image {
                    image: image.to_string(),
                    architecture: (!arch.is_empty()).then(|| arch.to_string()),
                }
            }
            (None, None) => {
                return Err(invalid(
                    "volume.spec.volume_data_source",
                    "set image_data_source or snapshot_data_source",
                ))
            }
        },
    };

    let resources = spec
        .resources
        .as_ref()
        .ok_or_else(|| invalid("volume.spec.resources", "required"))?;
    let bytes = resources.storage_bytes;
    const SIZE: &str = "volume.spec.resources.storage_bytes";
    if bytes < 0 {
        return Err(invalid(SIZE, format!("must be > 0, got {bytes}")));
    }
    if bytes == 0 && !matches!(source, DataSource::Snapshot(_)) {
        return Err(invalid(SIZE, "must be > 0"));
    }

    let passphrase = match &spec.encryption {
        None => None,
        Some(enc) => {
            let key = enc.secret_data.get(ENCRYPTION_KEY).ok_or_else(|| {
                invalid(
                    "volume.spec.encryption.secret_data",
                    format!("missing key {ENCRYPTION_KEY:?}"),
                )
            })?;
            if key.is_empty() {
                return Err(invalid(
                    "volume.spec.encryption.secret_data",
                    format!("key {ENCRYPTION_KEY:?} is empty"),
                ));
            }
            if let Some(reason) = encryption_unsupported {
                return Err(Status::failed_precondition(format!(
                    "volume.spec.encryption: {reason}"
                )));
            }
            Some(key.clone())
        }
    };

    Ok(CreateVolume {
        labels: md.labels.clone(),
        annotations: md.annotations.clone(),
        class,
        size: bytes as u64,
        source,
        passphrase,
    })
}

/// The default bound of volume sizes (`--max-volume-size`): 1,000,000 GiB, the largest image
/// librbd creates with its default features (object map) and 4 MiB objects — an object map
/// holds at most 256,000,000 objects, and `rbd create` refuses one object more with EINVAL
/// (measured on Ceph Pacific 16.2.15). The size of a volume is rounded as it is provisioned, and
/// an encrypted volume's image holds its 16 MiB LUKS2 header on top.
pub const DEFAULT_MAX_VOLUME_SIZE: u64 = 1_000_000 << 30;

/// Checks that a volume of `bytes` (encrypted or not) fits the configured bound `max`: the rbd
/// image it needs, `round(bytes)` plus the LUKS2 header when `encrypted`, is at most `max`.
/// `INVALID_ARGUMENT` naming `field` otherwise.
pub fn size_bound(field: &str, bytes: u64, encrypted: bool, max: u64) -> Result<(), Status> {
    let header = if encrypted { rbd::LUKS2_HEADER_SIZE } else { 0 };
    let needed = controllers::round_size(bytes).saturating_add(header);
    if needed > max {
        return Err(invalid(
            field,
            format!(
                "{bytes} bytes exceed the largest volume this provider creates: {max} bytes{} \
                 (--max-volume-size)",
                if encrypted {
                    " including the 16 MiB LUKS2 header of an encrypted volume"
                } else {
                    ""
                }
            ),
        ));
    }
    Ok(())
}

/// A validated ExpandVolume request: `(volume id, new size)`.
pub fn expand_volume(req: &volume_v1::ExpandVolumeRequest) -> Result<(String, u64), Status> {
    id("volume_id", &req.volume_id)?;
    let resources = req
        .resources
        .as_ref()
        .ok_or_else(|| invalid("resources", "required"))?;
    if resources.storage_bytes <= 0 {
        return Err(invalid(
            "resources.storage_bytes",
            format!("must be > 0, got {}", resources.storage_bytes),
        ));
    }
    Ok((req.volume_id.clone(), resources.storage_bytes as u64))
}

/// A validated CreateVolumeSnapshot request.
#[derive(Debug, Clone)]
pub struct CreateSnapshot {
    /// IRI labels.
    pub labels: BTreeMap<String, String>,
    /// IRI annotations.
    pub annotations: BTreeMap<String, String>,
    /// The source volume as the client named it (provider id or k8s Volume name).
    pub volume: String,
}

/// Validates a CreateVolumeSnapshot request.
pub fn create_snapshot(
    req: &volume_v1::CreateVolumeSnapshotRequest,
) -> Result<CreateSnapshot, Status> {
    let snap = req
        .volume_snapshot
        .as_ref()
        .ok_or_else(|| invalid("volume_snapshot", "required"))?;
    let md = snap
        .metadata
        .as_ref()
        .ok_or_else(|| invalid("volume_snapshot.metadata", "required"))?;
    selector("volume_snapshot.metadata.labels", &md.labels)?;
    let spec = snap
        .spec
        .as_ref()
        .ok_or_else(|| invalid("volume_snapshot.spec", "required"))?;
    id("volume_snapshot.spec.volume_id", &spec.volume_id)?;
    Ok(CreateSnapshot {
        labels: md.labels.clone(),
        annotations: md.annotations.clone(),
        volume: spec.volume_id.clone(),
    })
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;
    use iri::meta_v1::ObjectMetadata;

    fn req(size: i64) -> volume_v1::CreateVolumeRequest {
        volume_v1::CreateVolumeRequest {
            volume: Some(volume_v1::Volume {
                metadata: Some(ObjectMetadata::default()),
                spec: Some(volume_v1::VolumeSpec {
                    class: "standard".into(),
                    resources: Some(volume_v1::VolumeResources {
                        storage_bytes: size,
                    }),
                    ..Default::default()
                }),
                status: None,
            }),
        }
    }

    fn spec(r: &mut volume_v1::CreateVolumeRequest) -> &mut volume_v1::VolumeSpec {
        r.volume
            .as_mut()
            .and_then(|v| v.spec.as_mut())
            .expect("spec")
    }

    fn check(r: &volume_v1::CreateVolumeRequest) -> Result<CreateVolume, Status> {
        create_volume(r, &VolumeClasses::builtin(), None)
    }

    fn err(r: &volume_v1::CreateVolumeRequest) -> (Code, String) {
        let s = check(r).expect_err("must be rejected");
        (s.code(), s.message().to_string())
    }

    #[test]
    fn a_plain_request_is_accepted() {
        let ok = check(&req(1 << 30)).expect("valid");
        assert_eq!(ok.size, 1 << 30);
        assert_eq!(ok.class.name, "standard");
        assert_eq!(ok.source, DataSource::Empty);
    }

    #[test]
    fn missing_parts_are_named() {
        let mut r = req(1);
        r.volume = None;
        assert_eq!(err(&r), (Code::InvalidArgument, "volume: required".into()));
        let mut r = req(1);
        r.volume.as_mut().expect("v").metadata = None;
        assert_eq!(err(&r).1, "volume.metadata: required");
        let mut r = req(1);
        r.volume.as_mut().expect("v").spec = None;
        assert_eq!(err(&r).1, "volume.spec: required");
        let mut r = req(1);
        spec(&mut r).resources = None;
        assert_eq!(err(&r).1, "volume.spec.resources: required");
    }

    #[test]
    fn zero_and_negative_sizes_are_rejected() {
        assert_eq!(
            err(&req(0)),
            (
                Code::InvalidArgument,
                "volume.spec.resources.storage_bytes: must be > 0".into()
            )
        );
        assert!(err(&req(-5))
            .1
            .starts_with("volume.spec.resources.storage_bytes: must be > 0"));
    }

    #[test]
    fn a_snapshot_source_may_leave_the_size_zero() {
        let mut r = req(0);
        spec(&mut r).volume_data_source = Some(volume_v1::VolumeDataSource {
            image_data_source: Some(volume_v1::ImageDataSource {
                image: "x/y:z".into(),
                architecture: String::new(),
            }),
            snapshot_data_source: Some(volume_v1::SnapshotDataSource {
                snapshot_id: "s".into(),
            }),
        });
        assert_eq!(
            check(&r).expect("valid").source,
            DataSource::Snapshot("s".into())
        );
    }

    #[test]
    fn unknown_classes_and_empty_images_are_rejected() {
        let mut r = req(1);
        spec(&mut r).class = "gold".into();
        let (code, msg) = err(&r);
        assert_eq!(code, Code::InvalidArgument);
        assert!(
            msg.starts_with("volume.spec.class: unknown volume class \"gold\""),
            "{msg}"
        );
        let mut r = req(1);
        spec(&mut r).volume_data_source = Some(volume_v1::VolumeDataSource {
            image_data_source: Some(volume_v1::ImageDataSource::default()),
            snapshot_data_source: None,
        });
        assert_eq!(
            err(&r).1,
            "volume.spec.volume_data_source.image_data_source.image: must not be empty"
        );
        let mut r = req(1);
        spec(&mut r).volume_data_source = Some(volume_v1::VolumeDataSource::default());
        assert!(err(&r).1.starts_with("volume.spec.volume_data_source:"));
    }

    #[test]
    fn encryption_needs_the_key_and_a_capable_backend() {
        let mut r = req(1);
        spec(&mut r).encryption = Some(volume_v1::EncryptionSpec::default());
        assert_eq!(
            err(&r),
            (
                Code::InvalidArgument,
                "volume.spec.encryption.secret_data: missing key \"encryptionKey\"".into()
            )
        );
        spec(&mut r).encryption = Some(volume_v1::EncryptionSpec {
            secret_data: BTreeMap::from([(ENCRYPTION_KEY.to_string(), b"pw".to_vec())]),
        });
        assert_eq!(
            check(&r).expect("valid").passphrase.as_deref(),
            Some(&b"pw"[..])
        );
        let s = create_volume(
            &r,
            &VolumeClasses::builtin(),
            Some("encryption needs the ceph backend"),
        )
        .expect_err("local backend");
        assert_eq!(s.code(), Code::FailedPrecondition);
        assert_eq!(
            s.message(),
            "volume.spec.encryption: encryption needs the ceph backend"
        );
    }

    #[test]
    fn debug_output_of_a_plan_hides_the_passphrase() {
        let mut r = req(1);
        spec(&mut r).encryption = Some(volume_v1::EncryptionSpec {
            secret_data: BTreeMap::from([(ENCRYPTION_KEY.to_string(), b"topsecret".to_vec())]),
        });
        let plan = check(&r).expect("valid");
        assert!(!format!("{plan:?}").contains("topsecret"));
    }

    #[test]
    fn bad_selectors_and_ids_are_rejected() {
        assert!(selector("f", &BTreeMap::from([(String::new(), "v".into())])).is_err());
        assert!(selector("f", &BTreeMap::from([("a b".into(), "v".into())])).is_err());
        assert!(selector("f", &BTreeMap::from([("a".into(), "\n".into())])).is_err());
        assert!(selector("f", &BTreeMap::from([("a/b".into(), String::new())])).is_ok());
        assert_eq!(
            id("volume_id", "").expect_err("must fail").message(),
            "volume_id: must not be empty"
        );
        assert!(id("volume_id", "../etc").is_err());
        assert!(id("volume_id", "..").is_err());
        assert!(id("volume_id", "sha256:abc").is_ok());
    }

    #[test]
    fn expand_needs_a_positive_size() {
        let r = volume_v1::ExpandVolumeRequest {
            volume_id: "v".into(),
            resources: None,
        };
        assert_eq!(
            expand_volume(&r).expect_err("must fail").message(),
            "resources: required"
        );
        let r = volume_v1::ExpandVolumeRequest {
            volume_id: "v".into(),
            resources: Some(volume_v1::VolumeResources { storage_bytes: 0 }),
        };
        assert!(expand_volume(&r)
            .expect_err("must fail")
            .message()
            .starts_with("resources.storage_bytes: must be > 0"));
    }

    #[test]
    fn sizes_beyond_the_bound_are_rejected_naming_the_field() {
        let max = DEFAULT_MAX_VOLUME_SIZE;
        assert!(size_bound("f", max, false, max).is_ok());
        assert!(size_bound("f", max - (1 << 30) + 1, false, max).is_ok());
        let s = size_bound("volume.spec.resources.storage_bytes", max + 1, false, max)
            .expect_err("rounds to one GiB more");
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(
            s.message()
                .starts_with("volume.spec.resources.storage_bytes: 1073741824000001 bytes exceed"),
            "{}",
            s.message()
        );
        assert!(
            size_bound("f", max, true, max).is_err(),
            "the header on top"
        );
        assert!(size_bound("f", max - (1 << 30), true, max).is_ok());
        assert!(size_bound("f", 8 << 60, false, max).is_err(), "8 EiB");
        assert!(size_bound("f", u64::MAX, true, max).is_err());
    }

    #[test]
    fn snapshot_requests_need_metadata_spec_and_volume() {
        let mut r = volume_v1::CreateVolumeSnapshotRequest {
            volume_snapshot: None,
        };
        assert_eq!(
            create_snapshot(&r).expect_err("must fail").message(),
            "volume_snapshot: required"
        );
        r.volume_snapshot = Some(volume_v1::VolumeSnapshot {
            metadata: Some(ObjectMetadata::default()),
            spec: Some(volume_v1::VolumeSnapshotSpec::default()),
            status: None,
        });
        assert_eq!(
            create_snapshot(&r).expect_err("must fail").message(),
            "volume_snapshot.spec.volume_id: must not be empty"
        );
    }
}
