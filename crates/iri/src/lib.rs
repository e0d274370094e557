//! ironcore's IRI Volume API as Rust types: the packages `meta.v1alpha1`, `event.v1alpha1` and
//! `volume.v1alpha1` (service `volume.v1alpha1.VolumeRuntime`; the `.proto` files under `proto/`
//! are the contract, compiled by `build.rs`) plus cephvol's own `cephvol.v1alpha1.Progress`
//! extension service. Client stubs come with the `client` feature, server traits with `server`;
//! no transport code is generated.
//!
//! Every message also derives serde with snake_case proto field names, enums as numbers, bytes maps
//! as base64 and missing keys defaulted, which is what irictl's `-o json|yaml` and `-f FILE` use.
//!
//! Wire helpers: [`labels`] (the label keys the volumepoollet puts on IRI objects) and
//! [`base64_map`] (the JSON form of `map<string, bytes>`).
//!
//! Owns no behaviour of a provider: it must not depend on stores, block devices or servers.

#![allow(clippy::all, clippy::pedantic)]

/// Label keys the volumepoollet sets on the IRI objects it creates (`metadata.labels`).
pub mod labels {
    /// Label prefix of the poollet's labels.
    pub const POOLLET_PREFIX: &str = "volumepoollet.ironcore.dev/";
    /// Poollet label: uid of the k8s Volume (the poollet lists by it; at most one volume per uid).
    pub const VOLUME_UID_LABEL: &str = "volumepoollet.ironcore.dev/volume-uid";
    /// Poollet label: namespace of the k8s Volume.
    pub const VOLUME_NAMESPACE_LABEL: &str = "volumepoollet.ironcore.dev/volume-namespace";
    /// Poollet label: name of the k8s Volume.
    pub const VOLUME_NAME_LABEL: &str = "volumepoollet.ironcore.dev/volume-name";
    /// Poollet label: uid of the k8s VolumeSnapshot.
    pub const SNAPSHOT_UID_LABEL: &str = "volumepoollet.ironcore.dev/volume-snapshot-uid";
    /// Poollet label: namespace of the k8s VolumeSnapshot.
    pub const SNAPSHOT_NAMESPACE_LABEL: &str =
        "volumepoollet.ironcore.dev/volume-snapshot-namespace";
    /// Poollet label: name of the k8s VolumeSnapshot.
    pub const SNAPSHOT_NAME_LABEL: &str = "volumepoollet.ironcore.dev/volume-snapshot-name";
}

/// `meta.v1alpha1`: object metadata.
pub mod meta {
    /// Version v1alpha1.
    pub mod v1alpha1 {
        #![allow(missing_docs)]
        tonic::include_proto!("meta.v1alpha1");
    }
}

/// `event.v1alpha1`: events.
pub mod event {
    /// Version v1alpha1.
    pub mod v1alpha1 {
        #![allow(missing_docs)]
        tonic::include_proto!("event.v1alpha1");
    }
}

/// `volume.v1alpha1`: the VolumeRuntime service and its messages.
pub mod volume {
    /// Version v1alpha1.
    pub mod v1alpha1 {
        #![allow(missing_docs)]
        tonic::include_proto!("volume.v1alpha1");
    }
}

/// `cephvol.v1alpha1`: cephvol's progress extension (not part of IRI).
pub mod cephvol {
    /// Version v1alpha1.
    pub mod v1alpha1 {
        #![allow(missing_docs)]
        tonic::include_proto!("cephvol.v1alpha1");
    }
}

pub use event::v1alpha1 as event_v1;
pub use meta::v1alpha1 as meta_v1;
pub use volume::v1alpha1 as volume_v1;

/// Serde helper: `map<string, bytes>` as a map of standard base64 strings (Go `encoding/json`).
pub mod base64_map {
    use std::collections::BTreeMap;

    use base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    /// Serializes every value as base64.
    pub fn serialize<S: Serializer>(
        map: &BTreeMap<String, Vec<u8>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let encoded: BTreeMap<&str, String> = map
            .iter()
            .map(|(k, v)| (k.as_str(), STANDARD.encode(v)))
            .collect();
        encoded.serialize(serializer)
    }

    /// Decodes base64 values; `null` is an empty map.
    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<BTreeMap<String, Vec<u8>>, D::Error> {
        let raw: Option<BTreeMap<String, String>> = Option::deserialize(deserializer)?;
        raw.unwrap_or_default()
            .into_iter()
            .map(|(k, v)| {
                STANDARD
                    .decode(v.trim())
                    .map(|bytes| (k.clone(), bytes))
                    .map_err(|e| serde::de::Error::custom(format!("{k}: invalid base64: {e}")))
            })
            .collect()
    }
}
