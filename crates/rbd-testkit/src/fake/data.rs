//! The in-memory pool: images, snapshots and their sparse, chunked, copy-on-write data, plus the
//! images of other pools that are clones of this pool's snapshots.
//!
//! Invariants (kept by every mutation here):
//! * a stored chunk is exactly `chunk_size` bytes; no chunk is stored at or beyond the content's
//!   size, and the bytes of the boundary chunk beyond the size are zero;
//! * a link's `overlap` never exceeds the size of the content holding it;
//! * snapshots are immutable; their chunks are shared (`Arc`) with the head until the head writes.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use rbd::pipeline::is_zero;
use rbd::{ChildRef, ImageInfo, ParentSpec, Passphrase, RbdError, Result, SnapshotInfo};

/// One chunk ("object") of data, shared copy-on-write between a head and its snapshots.
pub(crate) type Chunk = Arc<Vec<u8>>;

/// The parent of a clone (head or snapshot of a clone): reads of unwritten chunks below `overlap`
/// go to `image@snap`.
#[derive(Debug, Clone)]
pub(crate) struct Link {
    pub image: String,
    pub snap: String,
    /// Bytes of the parent visible through the link: the parent snapshot's size at clone time,
    /// reduced (never grown again) by shrinking the clone, as librbd does.
    pub overlap: u64,
}

/// Sparse data of a head or a snapshot.
#[derive(Debug, Clone, Default)]
pub(crate) struct Content {
    pub size: u64,
    pub chunks: BTreeMap<u64, Chunk>,
    pub parent: Option<Link>,
}

#[derive(Debug, Clone)]
pub(crate) struct Snap {
    pub name: String,
    pub protected: bool,
    pub content: Content,
    pub encryption: Option<Passphrase>,
}

#[derive(Debug, Clone)]
pub(crate) struct Image {
    /// Unique per created image, so that a long call notices a remove + re-create under its name.
    pub id: u64,
    pub head: Content,
    pub snapshots: Vec<Snap>,
    pub metadata: BTreeMap<String, String>,
    /// Passphrase of the (modelled) LUKS2 format, inherited by clones of its snapshots.
    pub encryption: Option<Passphrase>,
    /// Half-removed: a removal was interrupted. Listed, but every lookup by name misses it.
    pub removing: bool,
}

#[derive(Debug)]
pub(crate) struct State {
    pub pool: String,
    pub chunk_size: u64,
    pub images: BTreeMap<String, Image>,
    /// Images of other pools by pool name: clones of this pool's snapshots only (their parents
    /// always resolve in `images`).
    pub other_pools: BTreeMap<String, BTreeMap<String, Image>>,
    next_id: u64,
}

pub(crate) fn not_found_image(name: &str) -> RbdError {
    RbdError::NotFound(format!("image {name}"))
}

pub(crate) fn not_found_snap(image: &str, snap: &str) -> RbdError {
    RbdError::NotFound(format!("snapshot {image}@{snap}"))
}

/// Number of chunks needed to hold `bytes`.
pub(crate) fn chunk_count(bytes: u64, chunk_size: u64) -> u64 {
    bytes.div_ceil(chunk_size)
}

/// `chunk` with every byte from `keep` on zeroed (a copy only when something changes).
fn masked(chunk: Chunk, keep: u64) -> Chunk {
    let keep = usize::try_from(keep).unwrap_or(usize::MAX);
    if keep >= chunk.len() || is_zero(&chunk[keep..]) {
        return chunk;
    }
    let mut bytes = chunk.as_ref().clone();
    bytes[keep..].fill(0);
    Arc::new(bytes)
}

impl State {
    pub fn new(pool: String, chunk_size: u64) -> Self {
        State {
            pool,
            chunk_size,
            images: BTreeMap::new(),
            other_pools: BTreeMap::new(),
            next_id: 1,
        }
    }

    /// An image of this pool; a half-removed one is `NotFound` (it cannot be opened).
    pub fn image(&self, name: &str) -> Result<&Image> {
        self.images
            .get(name)
            .filter(|i| !i.removing)
            .ok_or_else(|| not_found_image(name))
    }

    pub fn image_mut(&mut self, name: &str) -> Result<&mut Image> {
        self.images
            .get_mut(name)
            .filter(|i| !i.removing)
            .ok_or_else(|| not_found_image(name))
    }

    /// The images of `pool` (this pool or another one); `NotFound` for a pool that does not exist.
    pub fn pool_images(&self, pool: &str) -> Result<&BTreeMap<String, Image>> {
        if pool == self.pool {
            return Ok(&self.images);
        }
        self.other_pools
            .get(pool)
            .ok_or_else(|| RbdError::NotFound(format!("pool {pool}")))
    }

    fn pool_images_mut(&mut self, pool: &str) -> Result<&mut BTreeMap<String, Image>> {
        if pool == self.pool {
            return Ok(&mut self.images);
        }
        self.other_pools
            .get_mut(pool)
            .ok_or_else(|| RbdError::NotFound(format!("pool {pool}")))
    }

    /// An image of `pool` (see [`State::image`]).
    pub fn image_in(&self, pool: &str, name: &str) -> Result<&Image> {
        if pool == self.pool {
            return self.image(name);
        }
        self.pool_images(pool)?
            .get(name)
            .filter(|i| !i.removing)
            .ok_or_else(|| not_found_image(&format!("{pool}/{name}")))
    }

    pub fn image_in_mut(&mut self, pool: &str, name: &str) -> Result<&mut Image> {
        if pool == self.pool {
            return self.image_mut(name);
        }
        self.pool_images_mut(pool)?
            .get_mut(name)
            .filter(|i| !i.removing)
            .ok_or_else(|| not_found_image(&format!("{pool}/{name}")))
    }

    pub fn snap(&self, image: &str, snap: &str) -> Result<&Snap> {
        self.image(image)?
            .snapshots
            .iter()
            .find(|s| s.name == snap)
            .ok_or_else(|| not_found_snap(image, snap))
    }

    /// The head (`snap == None`) or a snapshot of an image.
    pub fn content(&self, image: &str, snap: Option<&str>) -> Result<&Content> {
        match snap {
            None => Ok(&self.image(image)?.head),
            Some(s) => Ok(&self.snap(image, s)?.content),
        }
    }

    pub fn insert_image(&mut self, name: &str, head: Content, metadata: BTreeMap<String, String>) {
        let pool = self.pool.clone();
        self.insert_image_in(&pool, name, head, metadata)
            .expect("this pool always exists");
    }

    /// Inserts an image into `pool` (`NotFound` for a pool that does not exist).
    pub fn insert_image_in(
        &mut self,
        pool: &str,
        name: &str,
        head: Content,
        metadata: BTreeMap<String, String>,
    ) -> Result<()> {
        let id = self.next_id;
        self.next_id += 1;
        self.pool_images_mut(pool)?.insert(
            name.to_string(),
            Image {
                id,
                head,
                snapshots: Vec::new(),
                metadata,
                encryption: None,
                removing: false,
            },
        );
        Ok(())
    }

    /// Chunk `idx` as `content` reads it (through its parents), `None` when it reads as zeroes.
    pub fn resolve_chunk(&self, content: &Content, idx: u64) -> Option<Chunk> {
        let start = idx.checked_mul(self.chunk_size)?;
        if start >= content.size {
            return None;
        }
        if let Some(c) = content.chunks.get(&idx) {
            return Some(c.clone());
        }
        let link = content.parent.as_ref()?;
        if start >= link.overlap {
            return None;
        }
        let parent = self.parent_content(link)?;
        let chunk = self.resolve_chunk(parent, idx)?;
        Some(masked(chunk, link.overlap - start))
    }

    /// Every chunk `content` reads as non-sparse, resolved through its parents.
    pub fn resolve_all(&self, content: &Content) -> BTreeMap<u64, Chunk> {
        let mut out = content.chunks.clone();
        if let Some(link) = &content.parent {
            if let Some(parent) = self.parent_content(link) {
                let cs = self.chunk_size;
                for (idx, chunk) in self.resolve_all(parent) {
                    let start = idx * cs;
                    if start >= link.overlap {
                        break;
                    }
                    out.entry(idx)
                        .or_insert_with(|| masked(chunk, link.overlap - start));
                }
            }
        }
        out
    }

    fn parent_content(&self, link: &Link) -> Option<&Content> {
        let snap = self.snap(&link.image, &link.snap).ok();
        if snap.is_none() {
            tracing::error!(
                parent = %link.image,
                snap = %link.snap,
                "fake rbd: parent snapshot of a clone is missing (invariant broken)"
            );
        }
        snap.map(|s| &s.content)
    }

    /// Reads `len` bytes at `offset` of `content`, truncated at its size.
    pub fn read(&self, content: &Content, offset: u64, len: u64) -> Vec<u8> {
        let end = offset.saturating_add(len).min(content.size);
        if offset >= end {
            return Vec::new();
        }
        let cs = self.chunk_size;
        let mut out = vec![0u8; to_usize(end - offset)];
        let mut pos = offset;
        while pos < end {
            let idx = pos / cs;
            let in_chunk = pos % cs;
            let n = (cs - in_chunk).min(end - pos);
            if let Some(chunk) = self.resolve_chunk(content, idx) {
                let dst = to_usize(pos - offset);
                let src = to_usize(in_chunk);
                out[dst..dst + to_usize(n)].copy_from_slice(&chunk[src..src + to_usize(n)]);
            }
            pos += n;
        }
        out
    }

    /// Writes `data` at `offset` of the head of `image` (copy-up from the parent for chunks the
    /// clone has not written yet). The range must lie within the image size.
    pub fn write_head(&mut self, image: &str, offset: u64, data: &[u8]) -> Result<()> {
        let cs = self.chunk_size;
        let size = self.image(image)?.head.size;
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|&end| end <= size)
            .ok_or_else(|| {
                RbdError::InvalidArgument(format!(
                    "write of {} bytes at {offset} reaches beyond the image size {size}",
                    data.len()
                ))
            })?;
        let mut pos = offset;
        while pos < end {
            let idx = pos / cs;
            let in_chunk = to_usize(pos % cs);
            let n = to_usize((cs - pos % cs).min(end - pos));
            let base = {
                let head = &self.image(image)?.head;
                self.resolve_chunk(head, idx)
            };
            let mut chunk = base.unwrap_or_else(|| Arc::new(vec![0u8; to_usize(cs)]));
            let src = to_usize(pos - offset);
            Arc::make_mut(&mut chunk)[in_chunk..in_chunk + n].copy_from_slice(&data[src..src + n]);
            self.image_mut(image)?.head.chunks.insert(idx, chunk);
            pos += n as u64;
        }
        Ok(())
    }

    /// Sets the head size: shrinking drops data beyond it and reduces the parent overlap.
    pub fn resize_head(&mut self, image: &str, size: u64) -> Result<()> {
        let cs = self.chunk_size;
        let head = &mut self.image_mut(image)?.head;
        if size < head.size {
            let keep_chunks = chunk_count(size, cs);
            head.chunks.retain(|&idx, _| idx < keep_chunks);
            if size % cs != 0 {
                if let Some(last) = head.chunks.get_mut(&(size / cs)) {
                    Arc::make_mut(last)[to_usize(size % cs)..].fill(0);
                }
            }
            if let Some(link) = &mut head.parent {
                link.overlap = link.overlap.min(size);
            }
        }
        head.size = size;
        Ok(())
    }

    /// Images of any pool whose head or one of whose snapshots reads through to `image@snap` (any
    /// snapshot of `image` when `snap` is `None`), sorted. Flatten detaches the head and its
    /// snapshots together, so in practice this is "images whose head is a clone of it".
    /// Half-removed clones are left out (librbd lists them as in the trash), but they still hold
    /// the parent snapshot: see [`State::has_children`].
    pub fn children(&self, image: &str, snap: Option<&str>) -> Vec<ChildRef> {
        let mut out: Vec<ChildRef> = self
            .child_images(image, snap)
            .filter(|(_, _, img)| !img.removing)
            .map(|(pool, name, _)| ChildRef {
                pool: pool.to_string(),
                image: name.to_string(),
            })
            .collect();
        out.sort();
        out
    }

    /// Whether anything, half-removed clones included, reads through to `image@snap` (what
    /// librbd checks before it unprotects or removes a snapshot).
    pub fn has_children(&self, image: &str, snap: Option<&str>) -> bool {
        self.child_images(image, snap).next().is_some()
    }

    fn child_images<'a>(
        &'a self,
        image: &'a str,
        snap: Option<&'a str>,
    ) -> impl Iterator<Item = (&'a str, &'a str, &'a Image)> + 'a {
        let matches = move |link: &Option<Link>| {
            link.as_ref()
                .is_some_and(|l| l.image == image && snap.is_none_or(|s| l.snap == s))
        };
        std::iter::once((self.pool.as_str(), &self.images))
            .chain(self.other_pools.iter().map(|(p, m)| (p.as_str(), m)))
            .flat_map(|(pool, images)| images.iter().map(move |(n, i)| (pool, n.as_str(), i)))
            .filter(move |(_, _, img)| {
                matches(&img.head.parent)
                    || img.snapshots.iter().any(|s| matches(&s.content.parent))
            })
    }

    pub fn info(&self, name: &str) -> Result<ImageInfo> {
        let pool = self.pool.clone();
        self.info_in(&pool, name)
    }

    /// What `stat` reports about an image of `pool` (parents are always in this pool).
    pub fn info_in(&self, pool: &str, name: &str) -> Result<ImageInfo> {
        let img = self.image_in(pool, name)?;
        Ok(ImageInfo {
            name: name.to_string(),
            size: img.head.size,
            parent: img.head.parent.as_ref().map(|l| ParentSpec {
                pool: self.pool.clone(),
                image: l.image.clone(),
                snapshot: l.snap.clone(),
            }),
            snapshots: img.snapshots.iter().map(snapshot_info).collect(),
        })
    }

    /// Bytes allocated in the pool: distinct chunks (shared ones count once).
    pub fn allocated_bytes(&self) -> u64 {
        let mut seen = HashSet::new();
        for img in self.images.values() {
            let contents =
                std::iter::once(&img.head).chain(img.snapshots.iter().map(|s| &s.content));
            for c in contents {
                for chunk in c.chunks.values() {
                    seen.insert(Arc::as_ptr(chunk));
                }
            }
        }
        seen.len() as u64 * self.chunk_size
    }
}

pub(crate) fn snapshot_info(s: &Snap) -> SnapshotInfo {
    SnapshotInfo {
        name: s.name.clone(),
        size: s.content.size,
        protected: s.protected,
    }
}

/// Offsets within one in-memory buffer always fit `usize` (the buffer exists).
pub(crate) fn to_usize(n: u64) -> usize {
    usize::try_from(n).expect("in-memory offsets fit usize")
}
