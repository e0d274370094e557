//! Events recorded by the reconcilers about the objects they work on. The provider keeps them for
//! IRI `ListEvents`; tests collect them. Owns the event type, the recorder seam and the one set of
//! event reasons ([`reason`]) and actions ([`action`]) the reconcilers record: match on these
//! constants, never on a repeated string literal.

use std::sync::Mutex;

use chrono::{DateTime, Utc};

/// The CamelCase reasons of the recorded events (what happened).
pub mod reason {
    /// An OS image reference could not be resolved (not found, malformed, …).
    pub const RESOLVE_IMAGE_FAILED: &str = "ResolveImageFailed";
    /// The OS image index has no manifest for the requested architecture.
    pub const NO_PLATFORM_MATCH: &str = "NoPlatformMatch";
    /// The Snapshot object of an OS image was created (or already existed).
    pub const CREATE_IMAGE_SNAPSHOT_SUCCEEDED: &str = "CreateImageSnapshotSucceeded";
    /// The Snapshot object of an OS image could not be created.
    pub const CREATE_IMAGE_SNAPSHOT_FAILED: &str = "CreateImageSnapshotFailed";
    /// An empty volume image was created.
    pub const EMPTY_IMAGE_CREATION_SUCCEEDED: &str = "EmptyImageCreationSucceeded";
    /// An empty volume image could not be created.
    pub const EMPTY_IMAGE_CREATION_FAILED: &str = "EmptyImageCreationFailed";
    /// The snapshot a volume is restored from does not exist.
    pub const SNAPSHOT_NOT_FOUND: &str = "SnapshotNotFound";
    /// A snapshot failed (its own reconciler), or a restore found its snapshot failed or gone.
    pub const SNAPSHOT_FAILED: &str = "SnapshotFailed";
    /// The volume is too small for the snapshot it is restored from.
    pub const IMAGE_SIZE_IS_SMALLER_THAN_SNAPSHOT_SIZE: &str = "ImageSizeIsSmallerThanSnapshotSize";
    /// A volume was restored from its snapshot (clone or encrypted copy).
    pub const CREATE_IMAGE_FROM_SNAPSHOT_SUCCEEDED: &str = "CreateImageFromSnapshotSucceeded";
    /// A volume could not be restored from its snapshot.
    pub const CREATE_IMAGE_FROM_SNAPSHOT_FAILED: &str = "CreateImageFromSnapshotFailed";
    /// A volume restored from an OS image snapshot has the OS image's data.
    pub const IMAGE_PULL_SUCCEEDED: &str = "ImagePullSucceeded";
    /// The LUKS2 header of an encrypted volume was written.
    pub const CONFIGURE_ENCRYPTION_SUCCEEDED: &str = "ConfigureEncryptionSucceeded";
    /// The encryption of a volume could not be set up (no KEK, bad passphrase, format failed, …).
    pub const CONFIGURE_ENCRYPTION_FAILED: &str = "ConfigureEncryptionFailed";
    /// The QoS limits of a volume were written to its image metadata.
    pub const SET_IMAGE_LIMITS_SUCCEEDED: &str = "SetImageLimitsSucceeded";
    /// A QoS limit of a volume could not be written.
    pub const SET_IMAGE_LIMIT_FAILED: &str = "SetImageLimitFailed";
    /// A volume was grown to its requested size.
    pub const UPDATED_IMAGE_SIZE_SUCCEEDED: &str = "UpdatedImageSizeSucceeded";
    /// A volume could not be resized (backend failure, or a refused shrink).
    pub const UPDATE_IMAGE_SIZE_FAILED: &str = "UpdateImageSizeFailed";
    /// The rbd image of an `Available` volume is gone.
    pub const IMAGE_VANISHED: &str = "ImageVanished";
    /// A volume and its rbd image were deleted.
    pub const IMAGE_DELETION_SUCCEEDED: &str = "ImageDeletionSucceeded";
    /// How far the populate of the OS image a volume waits for is (every 25%, or every
    /// `progress_event_interval`).
    pub const POPULATE_PROGRESS: &str = "PopulateProgress";
    /// The OS image a volume waits for is populated: size, duration, average throughput.
    pub const POPULATE_COMPLETED: &str = "PopulateCompleted";
    /// How far the copy of an encrypted restore is.
    pub const FILL_PROGRESS: &str = "FillProgress";
    /// The copy of an encrypted restore is done: size, duration, average throughput.
    pub const FILL_COMPLETED: &str = "FillCompleted";
    /// How far a flatten is (restored volumes made independent of a volume or snapshot being
    /// deleted, or the volume a snapshot is taken of).
    pub const FLATTEN_PROGRESS: &str = "FlattenProgress";
    /// A flatten is done, with its duration.
    pub const FLATTEN_COMPLETED: &str = "FlattenCompleted";
}

/// The CamelCase actions of the recorded events (what the reconciler was doing).
pub mod action {
    /// Resolving an OS image reference to a platform manifest digest.
    pub const RESOLVE_IMAGE: &str = "ResolveImage";
    /// Creating the Snapshot object of an OS image.
    pub const CREATE_IMAGE_SNAPSHOT: &str = "CreateImageSnapshot";
    /// Creating an empty volume image.
    pub const CREATE_IMAGE: &str = "CreateImage";
    /// Restoring a volume from a snapshot.
    pub const CREATE_IMAGE_FROM_SNAPSHOT: &str = "CreateImageFromSnapshot";
    /// Providing a volume with an OS image's data.
    pub const PULL_IMAGE: &str = "PullImage";
    /// Setting up the encryption of a volume.
    pub const CONFIGURE_ENCRYPTION: &str = "ConfigureEncryption";
    /// Writing the QoS limits of a volume.
    pub const SET_IMAGE_LIMITS: &str = "SetImageLimits";
    /// Resizing a volume.
    pub const RESIZE_IMAGE: &str = "ResizeImage";
    /// Keeping a provisioned volume provisioned.
    pub const PROVISION_IMAGE: &str = "ProvisionImage";
    /// Deleting a volume.
    pub const DELETE_IMAGE: &str = "DeleteImage";
    /// Creating a snapshot.
    pub const CREATE_SNAPSHOT: &str = "CreateSnapshot";
    /// Deleting a snapshot.
    pub const DELETE_SNAPSHOT: &str = "DeleteSnapshot";
}

/// Kind of an [`Event`] (Kubernetes event types).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    /// Something went as planned.
    Normal,
    /// Something failed or needs attention.
    Warning,
}

impl EventType {
    /// `"Normal"` or `"Warning"` (the IRI wire strings).
    pub fn as_str(&self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// One recorded event about an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Metadata of the object the event is about (id, labels, annotations at the time).
    pub involved: store::Metadata,
    /// Normal or Warning.
    pub event_type: EventType,
    /// CamelCase reason, e.g. `EmptyImageCreationSucceeded`.
    pub reason: String,
    /// CamelCase action, e.g. `CreateImage` (never empty).
    pub action: String,
    /// Human-readable message.
    pub message: String,
    /// When it happened (wall clock).
    pub time: DateTime<Utc>,
}

/// Where events go. Must not block: it is called from reconcile workers.
pub trait EventRecorder: Send + Sync + 'static {
    /// Records one event.
    fn record(&self, event: Event);
}

/// A recorder that drops every event.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoEvents;

impl EventRecorder for NoEvents {
    fn record(&self, _event: Event) {}
}

/// A recorder that keeps every event in memory (tests, diagnostics).
#[derive(Debug, Default)]
pub struct MemoryEvents {
    events: Mutex<Vec<Event>>,
}

impl MemoryEvents {
    /// An empty recorder.
    pub fn new() -> Self {
        Self::default()
    }

    /// All events recorded so far, oldest first.
    pub fn all(&self) -> Vec<Event> {
        self.events.lock().map(|e| e.clone()).unwrap_or_default()
    }

    /// The events about object `id` with `reason`.
    pub fn with_reason(&self, id: &str, reason: &str) -> Vec<Event> {
        self.all()
            .into_iter()
            .filter(|e| e.involved.id == id && e.reason == reason)
            .collect()
    }
}

impl EventRecorder for MemoryEvents {
    fn record(&self, event: Event) {
        if let Ok(mut events) = self.events.lock() {
            events.push(event);
        }
    }
}

pub(crate) fn event(
    involved: &store::Metadata,
    event_type: EventType,
    reason: &str,
    action: &str,
    message: impl Into<String>,
) -> Event {
    Event {
        involved: involved.clone(),
        event_type,
        reason: reason.to_string(),
        action: action.to_string(),
        message: message.into(),
        time: Utc::now(),
    }
}
