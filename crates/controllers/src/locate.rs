//! Where the reconcilers' objects live outside the store: the rbd image and snapshot names of
//! volumes, OS-image base images and snapshots, and the runner keys of their long operations.
//! Pure functions over ids and stored records; shared by both reconcilers, depends on neither.

use store::Snapshot;

/// Name of the rbd snapshot on an OS-image base image (`snap_<digest>@v1`).
pub const OS_SNAPSHOT_NAME: &str = "v1";

/// Runner key of an image's long operation (flatten children, encrypted fill).
pub fn image_key(id: &str) -> String {
    format!("image:{id}")
}

/// Runner key of a snapshot's long operation (populate, flatten).
pub fn snapshot_key(id: &str) -> String {
    format!("snapshot:{id}")
}

/// RBD image name of a volume.
pub fn volume_image_name(id: &str) -> String {
    format!("img_{id}")
}

/// RBD image name of an OS-image snapshot's base image.
pub fn os_image_name(snapshot_id: &str) -> String {
    format!("snap_{snapshot_id}")
}

/// The rbd location `(image, snapshot)` of a snapshot's data: `snap_<id>@v1` for an OS-image
/// snapshot, `img_<volumeImageId>@<id>` for a volume snapshot, `None` when it has no source.
pub fn source_details(snap: &Snapshot) -> Option<(String, String)> {
    if !snap.source.ironcore_image.is_empty() {
        Some((
            os_image_name(&snap.metadata.id),
            OS_SNAPSHOT_NAME.to_string(),
        ))
    } else if !snap.source.volume_image_id.is_empty() {
        Some((
            volume_image_name(&snap.source.volume_image_id),
            snap.metadata.id.clone(),
        ))
    } else {
        None
    }
}
