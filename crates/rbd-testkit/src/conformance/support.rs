//! Helpers of the rules: reading a whole image, streams of bytes, cleanup under a name prefix, a
//! protected parent snapshot to clone. Public ones are re-exported by the module root for other
//! tests (the fake's and the backends' own tests use them too).

use bytes::Bytes;
use futures::StreamExt;
use testdata::pattern;

use rbd::{BlockBackend, ChildRef};

use super::{OBJECT, SIZE};

/// The whole image head (or snapshot) through `read_stream`.
pub async fn read_all(b: &dyn BlockBackend, image: &str, snap: Option<&str>) -> Vec<u8> {
    let mut stream = b
        .read_stream(image, snap, 1024 * 1024)
        .await
        .expect("read_stream of an existing image");
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.expect("read_stream chunk"));
    }
    out
}

/// SHA-256 (lowercase hex) of the whole image head (or snapshot) through `read_stream`.
pub async fn checksum(b: &dyn BlockBackend, image: &str, snap: Option<&str>) -> String {
    testdata::sha256_hex(&read_all(b, image, snap).await)
}

/// A stream yielding `data` in pieces of `piece` bytes.
pub fn stream_of(data: Vec<u8>, piece: usize) -> rbd::ByteStream {
    let pieces: Vec<std::io::Result<Bytes>> = data
        .chunks(piece.max(1))
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    Box::pin(futures::stream::iter(pieces))
}

/// Removes every image named `<ns>-…` with its snapshots (best effort, clones first).
pub async fn cleanup(b: &dyn BlockBackend, ns: &str) {
    let prefix = format!("{ns}-");
    for _round in 0..8 {
        let Ok(images) = b.list_images().await else {
            return;
        };
        let mine: Vec<String> = images
            .into_iter()
            .filter(|i| i.starts_with(&prefix))
            .collect();
        if mine.is_empty() {
            return;
        }
        for image in &mine {
            if let Ok(snaps) = b.list_snapshots(image).await {
                for s in snaps {
                    let _ = b.unprotect_snapshot(image, &s.name).await;
                    let _ = b.remove_snapshot(image, &s.name).await;
                }
            }
            let _ = b.remove_image(image).await;
        }
    }
}

/// The image `what` under the prefix `ns`.
pub(super) fn name(ns: &str, what: &str) -> String {
    format!("{ns}-{what}")
}

/// Creates `<ns>-parent` with data in both objects (one write across the boundary), snapshot `s1`
/// protected. Returns (parent name, its content at the snapshot).
pub(super) async fn parent_with_protected_snapshot(
    b: &dyn BlockBackend,
    ns: &str,
) -> (String, Vec<u8>) {
    let parent = name(ns, "parent");
    b.create_image(&parent, SIZE).await.expect("create parent");
    b.write_at(&parent, 0, &pattern(1000, 1))
        .await
        .expect("write parent start");
    b.write_at(&parent, OBJECT - 100, &pattern(300, 2))
        .await
        .expect("write parent across objects");
    b.create_snapshot(&parent, "s1").await.expect("snapshot");
    b.protect_snapshot(&parent, "s1").await.expect("protect");
    let content = read_all(b, &parent, None).await;
    (parent, content)
}

/// An image of `size` zero bytes with `writes` (offset, bytes) applied in order.
pub(super) fn expected_content(size: u64, writes: &[(u64, &[u8])]) -> Vec<u8> {
    let mut v = vec![0u8; usize::try_from(size).expect("test sizes fit usize")];
    for (off, data) in writes {
        let off = usize::try_from(*off).expect("test offsets fit usize");
        v[off..off + data.len()].copy_from_slice(data);
    }
    v
}

/// The children references of `images` in the backend's pool.
pub(super) fn children(b: &dyn BlockBackend, images: &[&str]) -> Vec<ChildRef> {
    images
        .iter()
        .map(|i| ChildRef {
            pool: b.pool().to_string(),
            image: i.to_string(),
        })
        .collect()
}
