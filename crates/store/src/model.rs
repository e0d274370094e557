//! The persisted objects: [`Metadata`], [`Image`], [`Snapshot`] and their value types.
//!
//! The JSON layout is the one the Go provider writes (Go `encoding/json`): camelCase keys in Go's
//! struct order, `null` for nil maps and pointers, `[]byte` as standard base64 with padding, timestamps as
//! RFC 3339 with up to nine fraction digits (trailing zeros trimmed, like Go's `RFC3339Nano`), `deletedAt` and
//! `finalizers` omitted when absent/empty. Records written by the Go provider are read and written back with the
//! same meaning; the fields that exist only in this port (`progress`, `message`, `headerSize`) are omitted when empty, so the Go
//! provider can still read what we write (it ignores unknown keys anyway). The states only this port writes
//! (`Filling`, `Resolving`, `Formatting`, `Error`, `Retained`) use the same layout; the Go provider keeps an
//! unknown state verbatim and its deletion path does not look at the state of a record with `deletedAt`.
//!
//! `status.headerSize` (ours, omitted when 0) marks the layout of an encrypted volume: see [`ImageStatus::header_size`].
//!
//! Unknown state strings (a newer or older provider's states) are kept verbatim in `Other(String)` and written
//! back unchanged.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::serde_go;

/// Metadata shared by every stored object (provider-utils `apiutils.Metadata`), JSON key `metadata`.
///
/// `created_at`, `deleted_at` and `resource_version` are owned by the store: whatever a caller puts there is
/// overwritten (create) or ignored (update keeps the stored `created_at`/`deleted_at`; the version is checked).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    /// Primary key (the omap key / file name). Never empty.
    pub id: String,
    /// Holds the JSON-encoded IRI labels/annotations (poollet labels and annotations). Empty ⇄ `null` (Go nil map).
    #[serde(default, with = "serde_go::map_or_null")]
    pub annotations: BTreeMap<String, String>,
    /// Store-level labels (class, manager, image digest, architecture), matched by [`crate::ListOptions`].
    /// Empty ⇄ `null` (Go nil map).
    #[serde(default, with = "serde_go::map_or_null")]
    pub labels: BTreeMap<String, String>,
    /// Set by the store on create (wall clock). Go's zero time `0001-01-01T00:00:00Z` before that.
    #[serde(with = "serde_go::time")]
    pub created_at: DateTime<Utc>,
    /// Set by the store when a delete finds finalizers; never cleared.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "serde_go::opt_time"
    )]
    pub deleted_at: Option<DateTime<Utc>>,
    /// Never incremented by anyone (always 0); kept for layout compatibility.
    #[serde(default)]
    pub generation: i64,
    /// Incremented by the store on every successful mutation; 1 after create.
    #[serde(default)]
    pub resource_version: u64,
    /// Finalizers; while any remain, a delete only marks the object (`deleted_at`).
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "serde_go::null_as_default"
    )]
    pub finalizers: Vec<String>,
}

impl Metadata {
    /// Metadata for a new object with this id: empty maps, zero time, version 0, no finalizers.
    pub fn new(id: impl Into<String>) -> Self {
        Metadata {
            id: id.into(),
            annotations: BTreeMap::new(),
            labels: BTreeMap::new(),
            created_at: zero_time(),
            deleted_at: None,
            generation: 0,
            resource_version: 0,
            finalizers: Vec::new(),
        }
    }

    /// True once a delete has marked the object (it still exists because finalizers remain).
    pub fn is_deleted(&self) -> bool {
        self.deleted_at.is_some()
    }

    /// True if `name` is among the finalizers.
    pub fn has_finalizer(&self, name: &str) -> bool {
        self.finalizers.iter().any(|f| f == name)
    }

    /// Adds `name` unless present; returns true if it was added.
    pub fn add_finalizer(&mut self, name: &str) -> bool {
        if self.has_finalizer(name) {
            return false;
        }
        self.finalizers.push(name.to_owned());
        true
    }

    /// Removes every occurrence of `name`; returns true if it was present.
    pub fn remove_finalizer(&mut self, name: &str) -> bool {
        let before = self.finalizers.len();
        self.finalizers.retain(|f| f != name);
        self.finalizers.len() != before
    }
}

/// Go's zero `time.Time` (`0001-01-01T00:00:00Z`), the `createdAt` of an object not yet created.
pub fn zero_time() -> DateTime<Utc> {
    DateTime::from_timestamp(-62_135_596_800, 0).expect("0001-01-01T00:00:00Z is representable")
}

/// Progress of a long-running operation on an object (ours; not in the Go layout).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    /// Units done so far (bytes for copies, objects for flatten).
    pub done: u64,
    /// Total units (0 if unknown).
    pub total: u64,
    /// When `done` was last updated.
    #[serde(with = "serde_go::time")]
    pub updated_at: DateTime<Utc>,
}

/// Where an interrupted OS-image populate continues (ours; not in the Go layout): written after
/// every byte below `done` reached the image and before any byte at or beyond `reach` is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Checkpoint {
    /// Every byte of the layer below this offset is in the image.
    pub done: u64,
    /// Nothing at or beyond this offset has been written (bytes between `done` and `reach` may
    /// hold data of the interrupted run).
    pub reach: u64,
}

macro_rules! string_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident { $( $(#[$vmeta:meta])* $variant:ident => $text:literal ),+ $(,)? }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
            /// Any other string: read and written back verbatim.
            Other(String),
        }

        impl $name {
            /// The JSON string of this value.
            pub fn as_str(&self) -> &str {
                match self {
                    $( $name::$variant => $text, )+
                    $name::Other(s) => s,
                }
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                match s {
                    $( $text => $name::$variant, )+
                    other => $name::Other(other.to_owned()),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Ok($name::from(s.as_str()))
            }
        }
    };
}

string_enum! {
    /// `status.state` of an [`Image`].
    pub enum ImageState {
        /// Created, not provisioned yet (set by every create). The default.
        #[default]
        Pending => "Pending",
        /// Fully provisioned; access data is exported only in this state.
        Available => "Available",
        /// Being deleted while the children of its snapshots are flattened (PR #876).
        FlatteningChildren => "FlatteningChildren",
        /// Ours: an encrypted volume is being filled from its source snapshot by a data copy.
        Filling => "Filling",
        /// Ours: an OS-image volume's reference is being resolved to its snapshot (registry).
        Resolving => "Resolving",
        /// Ours: an encrypted volume created empty is getting its LUKS2 header.
        Formatting => "Formatting",
        /// Ours: provisioning failed; `status.message` says why.
        Error => "Error",
        /// Ours: deleted under the deferred deletion policy while its rbd image still holds
        /// snapshots that others need; kept hidden (never listed through IRI) with `deletedAt` and
        /// its finalizer until the last of them is gone, then removed.
        Retained => "Retained",
    }
}

string_enum! {
    /// `status.state` of a [`Snapshot`].
    pub enum SnapshotState {
        /// Created, nothing done yet (set by every create). The default.
        #[default]
        Pending => "Pending",
        /// Legacy; the reconciler rewrites it to `Ready`.
        Populated => "Populated",
        /// OS image stream-copy running (PR #876).
        Populating => "Populating",
        /// Deletion: children of the rbd snapshot being flattened (PR #876).
        Flattening => "Flattening",
        /// Deletion: flattening finished, cleanup may run (PR #876).
        Flattened => "Flattened",
        /// The rbd snapshot exists and is protected.
        Ready => "Ready",
        /// Terminal failure.
        Failed => "Failed",
        /// Ours: deleted under the deferred deletion policy while volumes restored from it are
        /// still clones of it; kept hidden (never listed through IRI) with `deletedAt` and its
        /// finalizer, and its rbd snapshot kept, until the last clone is gone.
        Retained => "Retained",
    }
}

/// `spec.encryption.type` of an [`Image`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EncryptionType {
    /// LUKS2 with a passphrase wrapped by the key-encryption key.
    Encrypted,
    /// Plain image.
    Unencrypted,
}

/// `spec.encryption` of an [`Image`]. `Debug` redacts the wrapped passphrase.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EncryptionSpec {
    /// JSON key `type`.
    #[serde(rename = "type")]
    pub encryption_type: EncryptionType,
    /// The LUKS passphrase encrypted with the KEK; base64 in JSON, `null` when empty (Go nil slice).
    #[serde(default, with = "serde_go::bytes")]
    pub encrypted_passphrase: Vec<u8>,
}

impl fmt::Debug for EncryptionSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncryptionSpec")
            .field("encryption_type", &self.encryption_type)
            .field(
                "encrypted_passphrase",
                &Redacted(self.encrypted_passphrase.len()),
            )
            .finish()
    }
}

/// `status.access` of an [`Image`]: what a client needs to attach the volume.
///
/// `Debug` redacts `user_key`.
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageAccess {
    /// Ceph monitor addresses.
    pub monitors: String,
    /// `<pool>/<rbd image name>`.
    pub handle: String,
    /// Ceph client name.
    pub user: String,
    /// The client's key (a secret: never log it).
    pub user_key: String,
}

impl fmt::Debug for ImageAccess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImageAccess")
            .field("monitors", &self.monitors)
            .field("handle", &self.handle)
            .field("user", &self.user)
            .field("user_key", &Redacted(self.user_key.len()))
            .finish()
    }
}

/// Renders a secret as `<redacted N bytes>` in `Debug` output.
struct Redacted(usize);

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<redacted {} bytes>", self.0)
    }
}

/// `spec` of an [`Image`] (desired state, written by the volume server).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageSpec {
    /// Requested bytes (un-rounded).
    pub size: u64,
    /// 16 lowercase hex chars, generated by create (caller value overwritten).
    pub wwn: String,
    /// QoS values keyed by librbd option name; `null` in JSON when empty (Go nil map).
    #[serde(default, with = "serde_go::map_or_null")]
    pub limits: BTreeMap<String, i64>,
    /// OS image reference, "" if none.
    #[serde(default)]
    pub image: String,
    /// Architecture of the OS image, if given.
    #[serde(default)]
    pub image_architecture: Option<String>,
    /// Id of the [`Snapshot`] this volume is cloned from.
    #[serde(default)]
    pub snapshot_ref: Option<String>,
    /// Encryption request.
    #[serde(default)]
    pub encryption: Option<EncryptionSpec>,
}

/// `status` of an [`Image`] (observed state, written by the image reconciler).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageStatus {
    /// Lifecycle state.
    pub state: ImageState,
    /// `""` or `"EncryptionHeaderSet"` (LUKS header written; never re-done).
    #[serde(default)]
    pub encryption: String,
    /// Access data, set when `Available`.
    #[serde(default)]
    pub access: Option<ImageAccess>,
    /// Rounded size actually provisioned (0 until `Available`).
    #[serde(default)]
    pub size: u64,
    /// Ours: progress of a running long operation; omitted when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    /// Ours: reason of `Error` or of the last failure; omitted when empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Ours: bytes the rbd image holds **on top of** the volume's size: the LUKS2 header of an
    /// encrypted volume provisioned by this version (its rbd image is `round(size) + headerSize`
    /// and the guest sees exactly `round(size)`). 0 for plain volumes and for encrypted volumes
    /// provisioned before (their header lives inside the size: the guest sees 16 MiB less), which
    /// keep that layout for good. Written before the rbd image is created; omitted when 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub header_size: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// The value of `status.encryption` once the LUKS header has been written.
pub const ENCRYPTION_HEADER_SET: &str = "EncryptionHeaderSet";

/// One volume (omap object `ironcore.csi.volumes`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// Store metadata.
    pub metadata: Metadata,
    /// Desired state.
    pub spec: ImageSpec,
    /// Observed state.
    pub status: ImageStatus,
}

impl Image {
    /// A new image with this id and spec and a default (Pending) status.
    pub fn new(id: impl Into<String>, spec: ImageSpec) -> Self {
        Image {
            metadata: Metadata::new(id),
            spec,
            status: ImageStatus::default(),
        }
    }
}

/// `source` of a [`Snapshot`]: exactly one field is non-empty.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotSource {
    /// Pinned OS image `"<registry/repo>@<digest>"` (OS-image snapshot; id = the digest).
    #[serde(rename = "ironcoreImage", default)]
    pub ironcore_image: String,
    /// Id of the [`Image`] the rbd snapshot lives on (volume snapshot).
    #[serde(default)]
    pub volume_image_id: String,
}

/// `status` of a [`Snapshot`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotStatus {
    /// Lifecycle state.
    pub state: SnapshotState,
    /// Manifest digest (OS snapshots only).
    #[serde(default)]
    pub digest: String,
    /// Bytes (OS: rounded rootfs size; volume: source image `status.size`).
    #[serde(default)]
    pub size: i64,
    /// Ours: progress of a running long operation; omitted when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    /// Ours: where an interrupted populate continues (OS snapshots in `Populating`); omitted
    /// when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<Checkpoint>,
    /// Ours: reason of `Failed` or of the last failure; omitted when empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// One snapshot (omap object `ironcore.csi.snapshots`): an OS-image snapshot or a volume snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Store metadata.
    pub metadata: Metadata,
    /// Where the data comes from.
    pub source: SnapshotSource,
    /// Observed state.
    pub status: SnapshotStatus,
}

impl Snapshot {
    /// A new snapshot with this id and source and a default (Pending) status.
    pub fn new(id: impl Into<String>, source: SnapshotSource) -> Self {
        Snapshot {
            metadata: Metadata::new(id),
            source,
            status: SnapshotStatus::default(),
        }
    }
}

/// A type the [`crate::Store`] can hold.
pub trait Object: Serialize + serde::de::DeserializeOwned + Clone + Send + Sync + 'static {
    /// Collection name: the omap object / the hostdir sub-directory.
    const COLLECTION: &'static str;

    /// The object's metadata.
    fn metadata(&self) -> &Metadata;

    /// The object's metadata, mutably.
    fn metadata_mut(&mut self) -> &mut Metadata;

    /// Create strategy, run by [`crate::Store::create`] before writing.
    fn prepare_create(&mut self);

    /// Field indexer: the value of an indexed field (`Some("")` when unset), `None` if `name` has no indexer.
    fn field(&self, name: &str) -> Option<String>;

    /// Names of the fields [`Object::field`] answers for (used to validate selectors without an object).
    /// Added to the contract with a default of "none".
    fn indexed_fields() -> &'static [&'static str] {
        &[]
    }
}

/// The field indexer of the image store.
pub const FIELD_SNAPSHOT_REF: &str = "spec.snapshotRef";

impl Object for Image {
    const COLLECTION: &'static str = "ironcore.csi.volumes";

    fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut Metadata {
        &mut self.metadata
    }

    /// New WWN; status reset to `{state: Pending}`.
    fn prepare_create(&mut self) {
        self.spec.wwn = crate::new_wwn();
        self.status = ImageStatus::default();
    }

    fn field(&self, name: &str) -> Option<String> {
        match name {
            FIELD_SNAPSHOT_REF => Some(self.spec.snapshot_ref.clone().unwrap_or_default()),
            _ => None,
        }
    }

    fn indexed_fields() -> &'static [&'static str] {
        &[FIELD_SNAPSHOT_REF]
    }
}

impl Object for Snapshot {
    const COLLECTION: &'static str = "ironcore.csi.snapshots";

    fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut Metadata {
        &mut self.metadata
    }

    /// Status reset to `{state: Pending}`.
    fn prepare_create(&mut self) {
        self.status = SnapshotStatus::default();
    }

    fn field(&self, _name: &str) -> Option<String> {
        None
    }
}
