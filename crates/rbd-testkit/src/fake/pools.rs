//! Other pools and interrupted removals of the in-memory backend: the test helpers that put a
//! clone of this pool's snapshot into another pool or leave an image half-removed, and the flatten
//! that works on an image of any pool.
//!
//! Other pools are modelled only as far as children need: an image of another pool is a clone of
//! a protected snapshot of this pool (made by [`MemoryBackend::clone_to_pool`]), listed by
//! `list_children` with its pool, flattened by `flatten_child` in its own pool, and holding its
//! parent snapshot like any clone. The trait's calls by name (`stat`, `flatten`, …) only ever see
//! this pool.

use std::collections::BTreeMap;

use rbd::{CancellationToken, ImageInfo, ProgressFn, RbdError, Result};

use super::data::{chunk_count, not_found_image, Content, Link};
use super::{copy_up, lock, MemoryBackend, Op};

/// What `stat` answers for a half-removed image.
pub(super) fn half_removed(name: &str) -> RbdError {
    RbdError::Busy(format!(
        "image {name} is half-removed (listed, cannot be opened): removing it again finishes the removal"
    ))
}

impl MemoryBackend {
    /// Adds an empty pool `pool` to the modelled cluster (a no-op if it exists).
    pub fn add_pool(&self, pool: &str) {
        let mut st = self.state();
        if pool != st.pool {
            st.other_pools.entry(pool.to_string()).or_default();
        }
    }

    /// Clones `parent@snap` of this pool into `child` of another pool `pool` (added with
    /// [`MemoryBackend::add_pool`]; `NotFound` otherwise). Same rules as
    /// [`rbd::BlockBackend::clone_image`]: the snapshot must be protected (`InvalidArgument`), the
    /// child name free in its pool (`Exists`).
    pub fn clone_to_pool(&self, parent: &str, snap: &str, pool: &str, child: &str) -> Result<()> {
        let mut st = self.state();
        let metadata = st.image(parent)?.metadata.clone();
        let s = st.snap(parent, snap)?;
        if !s.protected {
            return Err(RbdError::InvalidArgument(format!(
                "snapshot {parent}@{snap} is not protected (clone format v1 needs a protected snapshot)"
            )));
        }
        if st.pool_images(pool)?.contains_key(child) {
            return Err(RbdError::Exists(format!("image {pool}/{child}")));
        }
        let head = Content {
            size: s.content.size,
            chunks: BTreeMap::new(),
            parent: Some(Link {
                image: parent.to_string(),
                snap: snap.to_string(),
                overlap: s.content.size,
            }),
        };
        let encryption = s.encryption.clone();
        st.insert_image_in(pool, child, head, metadata)?;
        st.image_in_mut(pool, child)?.encryption = encryption;
        Ok(())
    }

    /// Names of the images of `pool` (this pool or another), sorted. `NotFound` for an unknown pool.
    pub fn pool_images(&self, pool: &str) -> Result<Vec<String>> {
        Ok(self.state().pool_images(pool)?.keys().cloned().collect())
    }

    /// What `stat` would report about image `name` of `pool`.
    pub fn stat_in_pool(&self, pool: &str, name: &str) -> Result<ImageInfo> {
        self.state().info_in(pool, name)
    }

    /// Removes image `name` of another pool (as `remove_image` does in this pool: `Busy` while it
    /// has snapshots).
    pub fn remove_in_pool(&self, pool: &str, name: &str) -> Result<()> {
        let mut st = self.state();
        let img = st.image_in(pool, name)?;
        if !img.snapshots.is_empty() {
            return Err(RbdError::Busy(format!(
                "image {pool}/{name} has {} snapshot(s)",
                img.snapshots.len()
            )));
        }
        st.other_pools
            .get_mut(pool)
            .map(|images| images.remove(name));
        Ok(())
    }

    /// Leaves image `name` half-removed, as a crash in the middle of librbd's removal does: it stays
    /// listed by `list_images` and `image_exists`, `stat` fails with `Busy`, every other call by
    /// name fails with `NotFound`, and `remove_image` finishes the removal. A half-removed clone
    /// still holds its parent snapshot (unprotect and snapshot removal are `Busy`) but is no longer
    /// listed as a child. `Busy` if the image has snapshots (librbd refuses to start removing
    /// those).
    pub fn interrupt_removal(&self, name: &str) -> Result<()> {
        let mut st = self.state();
        let img = st.image_mut(name)?;
        if !img.snapshots.is_empty() {
            return Err(RbdError::Busy(format!(
                "image {name} has {} snapshot(s)",
                img.snapshots.len()
            )));
        }
        img.removing = true;
        img.head.chunks.clear();
        Ok(())
    }

    /// `flatten` of image `image` of `pool` (call counted and faults decided by the caller).
    pub(super) async fn flatten_in(
        &self,
        pool: &str,
        image: &str,
        progress: ProgressFn,
        cancel: CancellationToken,
    ) -> Result<()> {
        let cs = self.inner.chunk_size;
        let (id, parent_chunks, total) = {
            let st = self.state();
            let img = st.image_in(pool, image)?;
            let Some(link) = &img.head.parent else {
                return Ok(());
            };
            let parent = st.snap(&link.image, &link.snap)?;
            // Snapshots taken while the image was a clone are flattened too (as librbd's copy-up
            // does); one of them may see more of the parent than the (shrunk) head.
            let overlap = img
                .snapshots
                .iter()
                .filter_map(|s| s.content.parent.as_ref())
                .map(|l| l.overlap)
                .fold(link.overlap, u64::max);
            (
                img.id,
                st.resolve_all(&parent.content),
                chunk_count(overlap, cs),
            )
        };
        let faults = lock(&self.inner.faults).chunk_faults(Op::Flatten);
        let own = pool == self.inner.pool;
        let gone = || match own {
            true => not_found_image(image),
            false => not_found_image(&format!("{pool}/{image}")),
        };
        for idx in 0..total {
            if cancel.is_cancelled() {
                return Err(RbdError::Cancelled);
            }
            if let Some((after, err)) = &faults.fail_after {
                if idx >= *after {
                    return Err(err.clone());
                }
            }
            if !faults.delay.is_zero() {
                tokio::time::sleep(faults.delay).await;
            }
            {
                let mut st = self.state();
                let img = st.image_in_mut(pool, image)?;
                if img.id != id {
                    return Err(gone());
                }
                if img.head.parent.is_none() {
                    // Flattened meanwhile by another call.
                    return Ok(());
                }
                if let Some(chunk) = parent_chunks.get(&idx) {
                    copy_up(img, idx, cs, chunk);
                }
            }
            progress(idx + 1, total);
        }
        if cancel.is_cancelled() {
            return Err(RbdError::Cancelled);
        }
        let mut st = self.state();
        let img = st.image_in_mut(pool, image)?;
        if img.id != id {
            return Err(gone());
        }
        img.head.parent = None;
        for s in &mut img.snapshots {
            s.content.parent = None;
        }
        Ok(())
    }
}
