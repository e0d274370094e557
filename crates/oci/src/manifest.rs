//! The documents of an ironcore OS image: media types, manifest/index/descriptor shapes, the
//! detection of a fetched document's type (`mediaType` or shape), the platform pick and the layer
//! classification. Owns no I/O: the bytes come from the transport in `registry`.
//!
//! The shapes are our own string-typed structs rather than `oci-client`'s: its index entries carry
//! `oci-spec`'s `Arch` enum, which reads the architecture `armbe` as `arm64be`, while the platform
//! rule compares architecture strings exactly (see the crate docs, "Why hand-written").

use std::collections::BTreeMap;

use crate::Error;
use serde::{Deserialize, Serialize};
use tracing::debug;

/// Media types of the OCI, Docker and ironcore documents this module knows.
pub mod media_types {
    /// OCI image index.
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    /// OCI image manifest.
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    /// Docker image manifest v2 schema 2 (rejected).
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    /// Docker manifest list (rejected).
    pub const DOCKER_MANIFEST_LIST: &str =
        "application/vnd.docker.distribution.manifest.list.v2+json";
    /// Docker image manifest v2 schema 1 (rejected).
    pub const DOCKER_MANIFEST_V1: &str = "application/vnd.docker.distribution.manifest.v1+json";
    /// Signed Docker image manifest v2 schema 1 (rejected).
    pub const DOCKER_MANIFEST_V1_SIGNED: &str =
        "application/vnd.docker.distribution.manifest.v1+prettyjws";

    /// ironcore image config.
    pub const CONFIG: &str = "application/vnd.ironcore.image.config.v1+json";
    /// ironcore image config, legacy.
    pub const CONFIG_LEGACY: &str = "application/vnd.ironcore.image.config.v1alpha1+json";
    /// Root file system layer.
    pub const ROOTFS: &str = "application/vnd.ironcore.image.rootfs";
    /// Root file system layer, legacy.
    pub const ROOTFS_LEGACY: &str = "application/vnd.ironcore.image.rootfs.v1alpha1.rootfs";
    /// initramfs layer.
    pub const INITRAMFS: &str = "application/vnd.ironcore.image.initramfs";
    /// initramfs layer, legacy.
    pub const INITRAMFS_LEGACY: &str =
        "application/vnd.ironcore.image.initramfs.v1alpha1.initramfs";
    /// Kernel layer.
    pub const KERNEL: &str = "application/vnd.ironcore.image.kernel";
    /// Kernel layer, legacy.
    pub const KERNEL_LEGACY: &str = "application/vnd.ironcore.image.vmlinuz.v1alpha1.vmlinuz";
    /// squashfs layer.
    pub const SQUASHFS: &str = "application/vnd.ironcore.image.squashfs";
    /// squashfs layer, legacy.
    pub const SQUASHFS_LEGACY: &str = "application/vnd.ironcore.image.squashfs.v1alpha1.squashfs";
    /// Unified kernel image layer.
    pub const UKI: &str = "application/vnd.ironcore.image.uki";
    /// ISO layer.
    pub const ISO: &str = "application/vnd.ironcore.image.iso";
}

use media_types as mt;

/// An OCI content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the referenced content (may be empty in index entries of sloppy writers).
    #[serde(default)]
    pub media_type: String,
    /// `algorithm:hex` digest of the content.
    pub digest: String,
    /// Size of the content in bytes.
    pub size: u64,
    /// Platform of an index entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// Free-form annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// The platform of an index entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    /// Go architecture name (`amd64`, `arm64`).
    #[serde(default)]
    pub architecture: String,
    /// Go OS name (`linux`).
    #[serde(default)]
    pub os: String,
    /// CPU variant (`v8`); ignored by the platform pick.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// An OCI image manifest. ironcore's builder leaves out the top-level `mediaType`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Always 2.
    pub schema_version: u32,
    /// `application/vnd.oci.image.manifest.v1+json` or absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The image config blob.
    pub config: Descriptor,
    /// The layers (raw files for ironcore images).
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    /// Free-form annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An OCI image index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    /// Always 2.
    pub schema_version: u32,
    /// `application/vnd.oci.image.index.v1+json` or absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// One entry per platform manifest.
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
    /// Free-form annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// A fetched manifest-endpoint document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Document {
    /// An OCI image manifest.
    Manifest(Manifest),
    /// An OCI image index.
    Index(Index),
}

/// Decides what a manifest-endpoint body is and parses it.
///
/// The type comes from the body's `mediaType` if present, else from the shape (`manifests` →
/// index, `config`/`layers` → manifest). The HTTP `Content-Type` is not consulted: the transport
/// (`oci-client`) does not hand it out, and the shape decides every document a registry stores
/// without `mediaType` (see the crate docs). Docker manifests and lists, schema 1 and anything
/// unknown are [`Error::Malformed`] ("unsupported media type").
pub fn parse_document(body: &[u8]) -> Result<Document, Error> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| Error::Malformed(format!("manifest is not JSON: {e}")))?;
    let obj = value
        .as_object()
        .ok_or_else(|| Error::Malformed("manifest is not a JSON object".into()))?;
    let body_type = obj
        .get("mediaType")
        .and_then(|v| v.as_str())
        .map(str::to_string);
    let schema_version = obj.get("schemaVersion").and_then(|v| v.as_u64());

    let media_type = match body_type {
        Some(b) if !b.is_empty() => b,
        _ if schema_version == Some(1) => mt::DOCKER_MANIFEST_V1.to_string(),
        _ if obj.contains_key("manifests") => mt::OCI_INDEX.to_string(),
        _ if obj.contains_key("config") || obj.contains_key("layers") => {
            mt::OCI_MANIFEST.to_string()
        }
        _ => {
            return Err(Error::Malformed(
                "unsupported media type: document is neither an OCI manifest nor an index".into(),
            ))
        }
    };
    if media_type != mt::OCI_MANIFEST && media_type != mt::OCI_INDEX {
        return Err(Error::Malformed(format!(
            "unsupported media type {media_type:?} (only OCI manifests and indexes)"
        )));
    }
    if schema_version != Some(2) {
        return Err(Error::Malformed(format!(
            "unsupported schemaVersion {:?}",
            obj.get("schemaVersion")
        )));
    }
    if media_type == mt::OCI_INDEX {
        let index: Index = serde_json::from_value(value)
            .map_err(|e| Error::Malformed(format!("invalid OCI index: {e}")))?;
        Ok(Document::Index(index))
    } else {
        let manifest: Manifest = serde_json::from_value(value)
            .map_err(|e| Error::Malformed(format!("invalid OCI manifest: {e}")))?;
        Ok(Document::Manifest(manifest))
    }
}

/// Picks the index entry for `architecture` by ironcore's rule: with an architecture, the first
/// entry whose `platform.os == "linux"` and `platform.architecture` equal it exactly (variant
/// ignored); without one, the only entry of a one-entry index. Anything else is
/// [`Error::NoPlatformMatch`].
pub fn pick_platform<'a>(
    index: &'a Index,
    architecture: Option<&str>,
) -> Result<&'a Descriptor, Error> {
    match architecture {
        Some(arch) => index
            .manifests
            .iter()
            .find(|d| {
                d.platform
                    .as_ref()
                    .is_some_and(|p| p.os == "linux" && p.architecture == arch)
            })
            .ok_or_else(|| {
                let offered: Vec<String> = index
                    .manifests
                    .iter()
                    .map(|d| match &d.platform {
                        Some(p) => format!("{}/{}", p.os, p.architecture),
                        None => "<no platform>".into(),
                    })
                    .collect();
                Error::NoPlatformMatch(format!(
                    "no manifest for linux/{arch} in the index (offers: {})",
                    offered.join(", ")
                ))
            }),
        None => match index.manifests.as_slice() {
            [only] => Ok(only),
            entries => Err(Error::NoPlatformMatch(format!(
                "no architecture given and the index has {} entries (exactly one needed)",
                entries.len()
            ))),
        },
    }
}

/// The layer slots of an ironcore image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerKind {
    /// Root file system (the only one the volume provider uses).
    Rootfs,
    /// initramfs.
    Initramfs,
    /// Kernel.
    Kernel,
    /// squashfs.
    Squashfs,
    /// Unified kernel image.
    Uki,
    /// ISO.
    Iso,
}

/// (kind, current media type, legacy media type).
const LAYER_TYPES: &[(LayerKind, &str, Option<&str>)] = &[
    (LayerKind::Rootfs, mt::ROOTFS, Some(mt::ROOTFS_LEGACY)),
    (
        LayerKind::Initramfs,
        mt::INITRAMFS,
        Some(mt::INITRAMFS_LEGACY),
    ),
    (LayerKind::Kernel, mt::KERNEL, Some(mt::KERNEL_LEGACY)),
    (LayerKind::Squashfs, mt::SQUASHFS, Some(mt::SQUASHFS_LEGACY)),
    (LayerKind::Uki, mt::UKI, None),
    (LayerKind::Iso, mt::ISO, None),
];

/// The classified layers of a manifest: at most one descriptor per [`LayerKind`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layers {
    slots: BTreeMap<u8, Descriptor>,
}

impl Layers {
    /// Classifies `layers` by media type: a current type always takes its slot, a legacy type fills
    /// it only while it is empty. Unknown media types are ignored (logged at debug level).
    pub fn classify(layers: &[Descriptor]) -> Layers {
        let mut out = Layers::default();
        for layer in layers {
            let hit = LAYER_TYPES.iter().find_map(|(kind, current, legacy)| {
                if layer.media_type == *current {
                    Some((*kind, true))
                } else if legacy.is_some_and(|l| l == layer.media_type) {
                    Some((*kind, false))
                } else {
                    None
                }
            });
            match hit {
                Some((kind, true)) => {
                    out.slots.insert(kind as u8, layer.clone());
                }
                Some((kind, false)) => {
                    out.slots.entry(kind as u8).or_insert_with(|| layer.clone());
                }
                None => debug!(
                    media_type = %layer.media_type,
                    digest = %layer.digest,
                    "ignoring layer of unknown media type"
                ),
            }
        }
        out
    }

    /// The layer of `kind`, if the image has one.
    pub fn get(&self, kind: LayerKind) -> Option<&Descriptor> {
        self.slots.get(&(kind as u8))
    }

    /// The root file system layer.
    pub fn rootfs(&self) -> Option<&Descriptor> {
        self.get(LayerKind::Rootfs)
    }
}

/// The ironcore image config blob. Only `commandLine` is known; other fields are ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageConfig {
    /// Kernel command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_line: Option<String>,
}

impl ImageConfig {
    /// Parses a config blob (a JSON object). Anything else is [`Error::Malformed`].
    pub fn parse(body: &[u8]) -> Result<ImageConfig, Error> {
        let value: serde_json::Value = serde_json::from_slice(body)
            .map_err(|e| Error::Malformed(format!("invalid image config: {e}")))?;
        if !value.is_object() {
            return Err(Error::Malformed(
                "invalid image config: not a JSON object".into(),
            ));
        }
        serde_json::from_value(value)
            .map_err(|e| Error::Malformed(format!("invalid image config: {e}")))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn desc(media_type: &str, n: u8) -> Descriptor {
        Descriptor {
            media_type: media_type.into(),
            digest: format!("sha256:{}", hex::encode([n; 32])),
            size: n as u64,
            platform: None,
            annotations: BTreeMap::new(),
        }
    }

    fn entry(os: &str, arch: &str, variant: Option<&str>, n: u8) -> Descriptor {
        Descriptor {
            platform: Some(Platform {
                architecture: arch.into(),
                os: os.into(),
                variant: variant.map(Into::into),
            }),
            ..desc(mt::OCI_MANIFEST, n)
        }
    }

    fn index(entries: Vec<Descriptor>) -> Index {
        Index {
            schema_version: 2,
            media_type: Some(mt::OCI_INDEX.into()),
            manifests: entries,
            annotations: BTreeMap::new(),
        }
    }

    #[test]
    fn a_manifest_without_media_type_is_detected_by_its_shape() {
        let body = br#"{"schemaVersion":2,"config":{"mediaType":"x","digest":"sha256:00","size":2},"layers":[]}"#;
        assert!(matches!(parse_document(body), Ok(Document::Manifest(_))));
        let only_layers = br#"{"schemaVersion":2,"layers":[],"config":{"mediaType":"x","digest":"sha256:00","size":2}}"#;
        assert!(matches!(
            parse_document(only_layers),
            Ok(Document::Manifest(_))
        ));
        let idx = br#"{"schemaVersion":2,"manifests":[]}"#;
        assert!(matches!(parse_document(idx), Ok(Document::Index(_))));
        // A body with a mediaType is taken by it.
        let typed = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"x","digest":"sha256:00","size":2},"layers":[]}"#;
        assert!(matches!(parse_document(typed), Ok(Document::Manifest(_))));
    }

    #[test]
    fn docker_manifests_and_lists_are_unsupported_media_types() {
        let v2 = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{"mediaType":"x","digest":"sha256:00","size":2},"layers":[]}"#;
        let list = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","manifests":[]}"#;
        let v1 = br#"{"schemaVersion":1,"name":"x","tag":"y","fsLayers":[]}"#;
        for body in [&v2[..], &list[..], &v1[..]] {
            match parse_document(body) {
                Err(Error::Malformed(m)) => assert!(m.contains("unsupported media type")),
                other => panic!("expected Malformed, got {other:?}"),
            }
        }
        // Unknown media types are rejected too, whatever the shape.
        let odd = br#"{"schemaVersion":2,"mediaType":"application/vnd.example+json","config":{"mediaType":"x","digest":"sha256:00","size":2},"layers":[]}"#;
        assert!(matches!(parse_document(odd), Err(Error::Malformed(_))));
    }

    #[test]
    fn garbage_and_wrong_schema_versions_are_malformed() {
        for body in [&b"not json"[..], b"[1,2]", br#"{"foo":1}"#] {
            assert!(matches!(parse_document(body), Err(Error::Malformed(_))));
        }
        let v3 = br#"{"schemaVersion":3,"manifests":[]}"#;
        assert!(matches!(parse_document(v3), Err(Error::Malformed(_))));
    }

    #[test]
    fn platform_pick_needs_an_exact_os_and_architecture_match_and_ignores_the_variant() {
        let idx = index(vec![
            entry("linux", "amd64", None, 1),
            entry("linux", "arm64", Some("v8"), 2),
            entry("linux", "arm64", None, 3),
            entry("windows", "386", None, 4),
        ]);
        assert_eq!(pick_platform(&idx, Some("amd64")).unwrap().size, 1);
        assert_eq!(pick_platform(&idx, Some("arm64")).unwrap().size, 2);
        assert!(matches!(
            pick_platform(&idx, Some("386")),
            Err(Error::NoPlatformMatch(_))
        ));
        assert!(matches!(
            pick_platform(&idx, Some("AMD64")),
            Err(Error::NoPlatformMatch(_))
        ));
        assert!(matches!(
            pick_platform(&idx, None),
            Err(Error::NoPlatformMatch(_))
        ));
    }

    #[test]
    fn architectures_are_compared_as_written_even_where_oci_spec_renames_them() {
        // oci-spec reads "armbe" as its `ARM64be`; the rule compares the strings.
        let idx = index(vec![
            entry("linux", "arm64be", None, 1),
            entry("linux", "armbe", None, 2),
        ]);
        assert_eq!(pick_platform(&idx, Some("armbe")).unwrap().size, 2);
        assert_eq!(pick_platform(&idx, Some("arm64be")).unwrap().size, 1);
    }

    #[test]
    fn without_architecture_only_a_single_entry_index_resolves() {
        let one = index(vec![entry("linux", "arm64", None, 7)]);
        assert_eq!(pick_platform(&one, None).unwrap().size, 7);
        let none = index(vec![]);
        assert!(matches!(
            pick_platform(&none, None),
            Err(Error::NoPlatformMatch(_))
        ));
        assert!(matches!(
            pick_platform(&none, Some("amd64")),
            Err(Error::NoPlatformMatch(_))
        ));
    }

    #[test]
    fn current_layer_types_win_and_legacy_types_fill_only_empty_slots() {
        let l = Layers::classify(&[
            desc(mt::ROOTFS_LEGACY, 1),
            desc(mt::ROOTFS, 2),
            desc(mt::ROOTFS_LEGACY, 3),
            desc(mt::KERNEL_LEGACY, 4),
            desc("application/vnd.ironcore.image.disk.img", 5),
        ]);
        assert_eq!(l.rootfs().unwrap().size, 2);
        assert_eq!(l.get(LayerKind::Kernel).unwrap().size, 4);
        assert!(l.get(LayerKind::Initramfs).is_none());
        let legacy_only = Layers::classify(&[desc(mt::ROOTFS_LEGACY, 9)]);
        assert_eq!(legacy_only.rootfs().unwrap().size, 9);
        let none = Layers::classify(&[desc(mt::SQUASHFS, 1), desc("foo/bar", 2)]);
        assert!(none.rootfs().is_none());
    }

    #[test]
    fn the_config_blob_must_be_a_json_object() {
        let c = ImageConfig::parse(br#"{"commandLine":"root=/dev/vda","extra":1}"#).unwrap();
        assert_eq!(c.command_line.as_deref(), Some("root=/dev/vda"));
        assert_eq!(ImageConfig::parse(b"{}").unwrap(), ImageConfig::default());
        assert!(matches!(
            ImageConfig::parse(b"[]"),
            Err(Error::Malformed(_))
        ));
        assert!(matches!(
            ImageConfig::parse(b"nope"),
            Err(Error::Malformed(_))
        ));
    }
}
