//! Image metadata written with one OSD class call, without opening the image.
//!
//! Owns [`IoCtx::set_image_metadata`]: the whole set of keys goes to the image's header object in
//! one `rbd.metadata_set` class call (the call librbd itself makes, one key at a time). Opening an
//! image for writing registers a watch and costs about as much as several metadata writes, and
//! librbd's `rbd_metadata_set` takes the exclusive lock and notifies the image's watchers once per
//! key: on the cluster of `cargo xtask ceph up`, seven keys cost ~35 ms through librbd and ~2 ms
//! here (`crates/bench/src/cluster.rs`, `ceph_create_volume_vs_rbd_create`).
//!
//! What it relies on (the RBD v2 on-disk format, stable since Ceph Jewel): the pool's
//! `rbd_directory` object maps `name_<image>` to the image id (omap, a length-prefixed string);
//! the header object is `rbd_header.<id>`; `rbd.metadata_set` takes an encoded
//! `map<string, bufferlist>` (a little-endian `u32` count, then each key and value as a
//! little-endian `u32` length and its bytes). Because nobody is notified, it is only for images
//! that no client has open: the provider sets an image's metadata while it provisions it, before
//! the volume is handed out (librbd reads the metadata when a client opens the image).
//! It must not be used for anything else.
//!
//! Also owns the lookups for leftovers of interrupted creations and removals under an image name,
//! in the same format: [`IoCtx::may_have_image`] (the directory's `name_<image>` key; the pool's
//! trash object `rbd_trash`, one `id_<id>` key per trashed image, where a half-removed image keeps
//! its name) and [`IoCtx::remove_orphan_id_object`] (the id object `rbd_id.<image>`, which librbd
//! creates first and removes when it moves an image to the trash).

use std::collections::BTreeMap;

use rbd::{RbdError, Result};

use crate::rados::{IoCtx, WriteOutcome, WriteStep};

/// The object that maps image names to ids.
const DIRECTORY: &str = "rbd_directory";

/// The object that lists the images in the pool's trash.
const TRASH: &str = "rbd_trash";

/// Appends `bytes` with their little-endian `u32` length.
fn put(out: &mut Vec<u8>, bytes: &[u8]) -> Result<()> {
    let len = u32::try_from(bytes.len())
        .map_err(|_| RbdError::InvalidArgument("metadata key or value over 4 GiB".into()))?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(bytes);
    Ok(())
}

/// The encoded `map<string, bufferlist>` of `entries` (a later entry for a key wins).
fn encode(entries: &[(String, String)]) -> Result<Vec<u8>> {
    let map: BTreeMap<&str, &str> = entries
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let count = u32::try_from(map.len())
        .map_err(|_| RbdError::InvalidArgument("too many metadata keys".into()))?;
    let mut out = count.to_le_bytes().to_vec();
    for (k, v) in map {
        put(&mut out, k.as_bytes())?;
        put(&mut out, v.as_bytes())?;
    }
    Ok(out)
}

/// The string an omap value of `rbd_directory` holds (length-prefixed).
fn decode_string(raw: &[u8]) -> Option<String> {
    let (len, rest) = raw.split_first_chunk::<4>()?;
    let len = u32::from_le_bytes(*len) as usize;
    let bytes = rest.get(..len)?;
    String::from_utf8(bytes.to_vec()).ok()
}

impl IoCtx {
    /// The pool directory's value for image `name` (its encoded id), `None` when not named there.
    fn directory_entry(&self, name: &str) -> Result<Option<Vec<u8>>> {
        self.omap_get(DIRECTORY, &format!("name_{name}"))
    }

    /// Whether something may be left under image name `name`: the pool's directory names it, or
    /// the pool's trash holds any image (a half-removed one keeps its name there). `false` means
    /// `rbd_remove(name)` would answer ENOENT; the two omap reads cost ~0.3 ms where that
    /// `rbd_remove` costs ~7 ms (both measured on the cluster of `cargo xtask ceph up`).
    pub(crate) fn may_have_image(&self, name: &str) -> Result<bool> {
        if self.directory_entry(name)?.is_some() {
            return Ok(true);
        }
        let (trashed, _) = self.omap_page(TRASH, "", 1)?;
        Ok(!trashed.is_empty())
    }

    /// Removes `rbd_id.<name>` when the pool's directory does not name `name`: the id object a
    /// creation killed before it named the image leaves alone (an image in the directory, or
    /// moved to the trash, which removes its id object, is never touched). For names only this
    /// provider creates, one creation at a time (clones' temporary names).
    pub(crate) fn remove_orphan_id_object(&self, name: &str) -> Result<()> {
        if self.directory_entry(name)?.is_some() {
            return Ok(());
        }
        match self.remove_object(&format!("rbd_id.{name}")) {
            Ok(()) | Err(RbdError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Sets `entries` as metadata of image `name` in one class call on its header (module docs).
    /// `NotFound` when the image does not exist.
    pub(crate) fn set_image_metadata(
        &self,
        name: &str,
        entries: &[(String, String)],
    ) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let missing = || RbdError::NotFound(format!("image {name}"));
        let raw = self.directory_entry(name)?.ok_or_else(missing)?;
        let id = decode_string(&raw).ok_or_else(|| {
            RbdError::Other(format!("{DIRECTORY}: unreadable id of image {name}"))
        })?;
        let input = encode(entries)?;
        let header = format!("rbd_header.{id}");
        match self.write_op(
            &header,
            &[WriteStep::Exec {
                class: "rbd",
                method: "metadata_set",
                input: &input,
            }],
        )? {
            WriteOutcome::Done => Ok(()),
            WriteOutcome::NoObject => Err(missing()),
            other => Err(RbdError::Other(format!(
                "setting metadata of {name} on {header}: {other:?}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_map_is_encoded_with_lengths_and_the_last_value_of_a_key_wins() {
        let entries = vec![
            ("wwn".to_string(), "1".to_string()),
            ("ab".to_string(), "xyz".to_string()),
            ("wwn".to_string(), "2".to_string()),
        ];
        let got = encode(&entries).expect("encodes");
        let mut want = vec![2, 0, 0, 0];
        want.extend([2, 0, 0, 0, b'a', b'b', 3, 0, 0, 0, b'x', b'y', b'z']);
        want.extend([3, 0, 0, 0, b'w', b'w', b'n', 1, 0, 0, 0, b'2']);
        assert_eq!(got, want);
    }

    #[test]
    fn a_directory_id_is_a_length_prefixed_string() {
        assert_eq!(
            decode_string(&[4, 0, 0, 0, b'1', b'2', b'a', b'b']).as_deref(),
            Some("12ab")
        );
        assert_eq!(decode_string(&[9, 0, 0, 0, b'1']), None, "short");
        assert_eq!(decode_string(&[1, 0]), None, "no length");
    }
}
