//! Well-known label/annotation keys and id generation.

use rand::RngCore;

/// Well-known keys of the labels, annotations and finalizers on stored objects: the one home of
/// every key the provider writes into the store (the poollet's own label keys live in
/// `iri::labels`).
pub mod keys {
    /// Annotation holding the JSON-encoded IRI labels.
    pub const LABELS_ANNOTATION: &str = "ceph-provider.ironcore.dev/labels";
    /// Annotation holding the JSON-encoded IRI annotations.
    pub const ANNOTATIONS_ANNOTATION: &str = "ceph-provider.ironcore.dev/annotations";
    /// Label: volume class name.
    pub const CLASS_LABEL: &str = "ceph-provider.ironcore.dev/class";
    /// Label: which manager created the object.
    pub const MANAGER_LABEL: &str = "ceph-provider.ironcore.dev/manager";
    /// Value of [`MANAGER_LABEL`] for objects of this provider.
    pub const MANAGER: &str = "ceph-volume-provider";
    /// Label: digest of the OS image.
    pub const IMAGE_DIGEST_LABEL: &str = "image-digest";
    /// Label: architecture of the OS image.
    pub const ARCHITECTURE_LABEL: &str = "common.ironcore.dev/architecture";
    /// Finalizer of images.
    pub const IMAGE_FINALIZER: &str = "image";
    /// Finalizer of snapshots.
    pub const SNAPSHOT_FINALIZER: &str = "snapshot";
    /// Label that marks internal objects the volume server must not list; value
    /// [`INTERNAL_REHOME`] for re-homed snapshot images. Internal objects carry no
    /// [`MANAGER_LABEL`], and the volume server lists only objects with it.
    pub const INTERNAL_LABEL: &str = "ceph-provider.ironcore.dev/internal";
    /// Value of [`INTERNAL_LABEL`] on an image that holds a re-homed volume snapshot.
    pub const INTERNAL_REHOME: &str = "rehome";
    /// Label on a re-homed snapshot image: id of the deleted volume it was made for.
    pub const REHOME_OF_LABEL: &str = "ceph-provider.ironcore.dev/rehome-of";
    /// Annotation on a snapshot holding the id of the volume it was taken from, as the client
    /// named it at creation. Keeps the snapshot's reported volume id stable when the snapshot is
    /// re-homed onto an internal clone during the source volume's deletion.
    pub const SOURCE_VOLUME_ANNOTATION: &str = "cephvol.ironcore.dev/source-volume-id";
}

/// Length of object ids made by [`new_id`].
pub const ID_LEN: usize = 63;
/// Length of WWNs made by [`new_wwn`].
pub const WWN_LEN: usize = 16;

fn random_hex(len: usize) -> String {
    let mut bytes = vec![0u8; len.div_ceil(2)];
    rand::thread_rng().fill_bytes(&mut bytes);
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s.truncate(len);
    s
}

/// A new object id: 63 random lowercase hex chars (compatible with ironcore `idgen`; its quirk of redrawing until
/// the first 12 chars are decimal digits is not reproduced — ids are opaque to every client).
pub fn new_id() -> String {
    random_hex(ID_LEN)
}

/// A new WWN: 16 random lowercase hex chars.
pub fn new_wwn() -> String {
    random_hex(WWN_LEN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_id_is_63_lowercase_hex_chars_and_random() {
        let a = new_id();
        assert_eq!(a.len(), 63);
        assert!(a
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(a, new_id());
    }

    #[test]
    fn new_wwn_is_16_lowercase_hex_chars_and_random() {
        let a = new_wwn();
        assert_eq!(a.len(), 16);
        assert!(a
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(a, new_wwn());
    }
}
