//! The backend conformance **test suite**: one async function per rule of the [`BlockBackend`]
//! contract, runnable against any backend (the fake, the local directory backend, librbd).
//!
//! Owns the executable form of the contract in `backend.rs`. It is compiled into the library (not
//! `cfg(test)`) so that every backend's tests, including the Ceph ones, can reuse it; it is not used
//! at run time. The rules **panic** on a violation, like test assertions.
//!
//! Every rule takes a name prefix `ns` and only touches images named `<ns>-…`; it removes leftovers
//! of an earlier run under that prefix first ([`cleanup`]) and cleans up after itself on success,
//! so the rules can share one pool. Images are [`SIZE`] (8 MiB, two 4 MiB objects) so a real cluster
//! runs the suite quickly.
//!
//! Use [`crate::conformance_tests!`] to get one `#[tokio::test]` per rule:
//! ```ignore
//! async fn backend() -> rbd::fake::MemoryBackend { rbd::fake::MemoryBackend::new("pool") }
//! mod memory { rbd::conformance_tests!(super::backend()); }
//! ```
//! or [`run_all`] to run every rule in sequence.

use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::StreamExt;
use sha2::{Digest, Sha256};

use rbd::{
    no_progress, BlockBackend, CancellationToken, ChildRef, ParentSpec, Passphrase, PoolUsage,
    RbdError, WriteOptions,
};

/// Size of the images the rules create: 8 MiB.
pub const SIZE: u64 = 8 * 1024 * 1024;

/// librbd's default object size; the rules write across object boundaries.
pub const OBJECT: u64 = 4 * 1024 * 1024;

/// A backend under test, possibly with resources that must live as long as it (a temp dir, a
/// cluster connection). Every [`BlockBackend`] is a fixture of itself.
pub trait Fixture: Send + Sync {
    /// The backend to test.
    fn backend(&self) -> &dyn BlockBackend;
}

impl<B: BlockBackend> Fixture for B {
    fn backend(&self) -> &dyn BlockBackend {
        self
    }
}

/// One rule of the suite.
#[derive(Clone, Copy)]
pub struct Rule {
    /// The rule, as a sentence (also the test name).
    pub name: &'static str,
    /// Runs the rule against a backend with a name prefix.
    pub run: for<'a> fn(&'a dyn BlockBackend, &'a str) -> BoxFuture<'a, ()>,
}

impl Debug for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

/// The list of rules, in one place for [`RULES`] and [`crate::conformance_tests!`].
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_rules {
    ($($ctx:tt)*) => {
        $crate::__conformance_expand!([$($ctx)*]
            create_then_stat_reports_size_without_parent_or_snapshots
            creating_an_existing_image_fails_with_exists
            operations_on_a_missing_image_are_not_found
            list_images_is_sorted
            image_names_may_contain_colons
            written_data_reads_back_and_reads_stop_at_the_image_size
            writing_beyond_the_image_size_is_invalid
            resize_grows_with_zeroes_and_shrinking_discards_data
            snapshot_keeps_the_content_it_was_taken_with
            creating_an_existing_snapshot_fails_with_exists
            snapshots_are_listed_in_creation_order_with_their_size
            operations_on_a_missing_snapshot_are_not_found
            protect_and_unprotect_are_idempotent
            removing_protected_snapshot_is_busy
            image_with_snapshots_cannot_be_removed
            clone_requires_protected_snapshot
            clone_of_a_missing_snapshot_is_not_found
            cloning_onto_an_existing_image_fails_with_exists
            clone_starts_with_the_snapshot_size_and_reports_its_parent
            clone_reads_through_to_parent_until_written
            clone_copies_the_parent_image_metadata
            unprotect_fails_while_clones_exist
            snapshot_with_clones_cannot_be_removed
            removing_the_clone_releases_the_parent_snapshot
            list_children_of_a_snapshot_or_the_whole_image_is_sorted
            flatten_detaches_the_clone_and_keeps_its_content
            flattened_clone_keeps_data_after_parent_removed
            flatten_of_an_image_without_parent_succeeds
            flattening_a_clone_with_snapshots_detaches_it_at_once
            snapshot_of_a_clone_reads_like_the_clone
            shrinking_a_clone_hides_parent_data_beyond_the_new_size
            cancelled_flatten_leaves_clone_intact
            metadata_is_set_listed_and_read_back
            read_stream_returns_the_whole_image_or_snapshot
            write_stream_writes_from_offset_zero_and_reports_progress_in_bytes
            write_stream_with_skip_zeroes_gives_the_same_content
            write_stream_beyond_the_image_size_is_invalid
            cancelled_write_stream_returns_cancelled
            encryption_format_of_clone_is_unsupported
            pool_usage_capacity_is_max_avail_plus_stored
            client_key_is_stable
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_expand {
    ([rules] $($rule:ident)*) => {
        /// Every rule of the suite, in a sensible order.
        pub const RULES: &[Rule] = &[$(
            Rule { name: stringify!($rule), run: |b, ns| Box::pin($rule(b, ns)) },
        )*];
    };
    ([tests $attrs:tt $setup:tt] $rule:ident $($rest:ident)*) => {
        $crate::__conformance_expand!(@one $attrs $setup $rule);
        $crate::__conformance_expand!([tests $attrs $setup] $($rest)*);
    };
    ([tests $attrs:tt $setup:tt]) => {};
    (@one [$(#[$attr:meta])+] [$setup:expr] $rule:ident) => {
        $(#[$attr])+
        async fn $rule() {
            let fixture = $setup.await;
            $crate::conformance::$rule(
                $crate::conformance::Fixture::backend(&fixture),
                stringify!($rule),
            )
            .await;
        }
    };
}

/// Generates one test per conformance rule, named after the rule, in the current module.
///
/// `$setup` is an expression evaluated (and awaited) once per test; it yields a
/// [`Fixture`] (any [`BlockBackend`], or a struct that also keeps a temp dir alive). The test
/// attribute defaults to `#[tokio::test]`; pass others first, e.g.
/// `rbd::conformance_tests!(#[tokio::test(flavor = "multi_thread")] #[ignore] setup());`.
#[macro_export]
macro_rules! conformance_tests {
    ($(#[$attr:meta])+ $setup:expr) => {
        $crate::__conformance_rules!(tests [$(#[$attr])+] [$setup]);
    };
    ($setup:expr) => {
        $crate::__conformance_rules!(tests [#[tokio::test]] [$setup]);
    };
}

__conformance_rules!(rules);

/// Runs every rule in sequence against `backend`, each under the prefix `<ns><rule name>`.
pub async fn run_all(backend: &dyn BlockBackend, ns: &str) {
    for rule in RULES {
        let prefix = format!("{ns}{}", rule.name);
        tracing::info!(rule = rule.name, "conformance rule");
        (rule.run)(backend, &prefix).await;
    }
}

// ------------------------------------------------------------------------------------------------
// Helpers (public: the Ceph tests use them too)

/// Deterministic, never-zero test bytes.
pub fn pattern(seed: u8, len: usize) -> Vec<u8> {
    // One period of 251 bytes (prime: no alignment with object sizes), then copied (fast even in
    // unoptimised test builds).
    let period: Vec<u8> = (0..251u8)
        .map(|i| i.wrapping_mul(7).wrapping_add(seed) | 1)
        .collect();
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let n = (len - out.len()).min(period.len());
        out.extend_from_slice(&period[..n]);
    }
    out
}

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
    hex::encode(Sha256::digest(read_all(b, image, snap).await))
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

fn name(ns: &str, what: &str) -> String {
    format!("{ns}-{what}")
}

/// Asserts that a result is an error of the given variant.
macro_rules! assert_err {
    ($res:expr, $variant:ident, $what:expr) => {
        match $res {
            Err(RbdError::$variant { .. }) => {}
            other => panic!(
                "{}: expected {} error, got {:?}",
                $what,
                stringify!($variant),
                other.map(|_| ())
            ),
        }
    };
}

/// Creates `<ns>-parent` with data in both objects (one write across the boundary), snapshot `s1`
/// protected. Returns (parent name, its content at the snapshot).
async fn parent_with_protected_snapshot(b: &dyn BlockBackend, ns: &str) -> (String, Vec<u8>) {
    let parent = name(ns, "parent");
    b.create_image(&parent, SIZE).await.expect("create parent");
    b.write_at(&parent, 0, &pattern(1, 1000))
        .await
        .expect("write parent start");
    b.write_at(&parent, OBJECT - 100, &pattern(2, 300))
        .await
        .expect("write parent across objects");
    b.create_snapshot(&parent, "s1").await.expect("snapshot");
    b.protect_snapshot(&parent, "s1").await.expect("protect");
    let content = read_all(b, &parent, None).await;
    (parent, content)
}

fn expected_content(size: u64, writes: &[(u64, &[u8])]) -> Vec<u8> {
    let mut v = vec![0u8; usize::try_from(size).expect("test sizes fit usize")];
    for (off, data) in writes {
        let off = usize::try_from(*off).expect("test offsets fit usize");
        v[off..off + data.len()].copy_from_slice(data);
    }
    v
}

fn children(b: &dyn BlockBackend, images: &[&str]) -> Vec<ChildRef> {
    images
        .iter()
        .map(|i| ChildRef {
            pool: b.pool().to_string(),
            image: i.to_string(),
        })
        .collect()
}

// ------------------------------------------------------------------------------------------------
// Rules

/// A new image has the requested size, no parent and no snapshots, and reads as zeroes.
pub async fn create_then_stat_reports_size_without_parent_or_snapshots(
    b: &dyn BlockBackend,
    ns: &str,
) {
    cleanup(b, ns).await;
    let img = name(ns, "img");
    b.create_image(&img, SIZE).await.expect("create");
    let info = b.stat(&img).await.expect("stat");
    assert_eq!(info.name, img);
    assert_eq!(info.size, SIZE);
    assert_eq!(info.parent, None);
    assert!(info.snapshots.is_empty());
    assert!(b.image_exists(&img).await.expect("image_exists"));
    assert_eq!(read_all(b, &img, None).await, vec![0u8; SIZE as usize]);
    cleanup(b, ns).await;
}

/// Creating an image whose name is taken fails with `Exists` and leaves the image alone.
pub async fn creating_an_existing_image_fails_with_exists(b: &dyn BlockBackend, ns: &str) {
    cleanup(b, ns).await;
    let img = name(ns, "img");
    b.create_image(&img, SIZE).await.expect("create");
    b.write_at(&img, 0, b"keep").await.expect("write");
    assert_err!(
        b.create_image(&img, 2 * SIZE).await,
        Exists,
        "second create"
    );
    assert_eq!(b.stat(&img).await.expect("stat").size, SIZE);
    assert_eq!(&b.read(&img, None, 0, 4).await.expect("read")[..], b"keep");
    cleanup(b, ns).await;
}

/// Every call naming a missing image fails with `NotFound`; `image_exists` says false.
pub async fn operations_on_a_missing_image_are_not_found(b: &dyn BlockBackend, ns: &str) {
    cleanup(b, ns).await;
    let img = name(ns, "missing");
    let other = name(ns, "other");
    assert!(!b.image_exists(&img).await.expect("image_exists"));
    assert_err!(b.stat(&img).await, NotFound, "stat");
    assert_err!(b.resize(&img, SIZE).await, NotFound, "resize");
    assert_err!(b.remove_image(&img).await, NotFound, "remove_image");
    assert_err!(
        b.create_snapshot(&img, "s").await,
        NotFound,
        "create_snapshot"
    );
    assert_err!(b.list_snapshots(&img).await, NotFound, "list_snapshots");
    assert_err!(b.list_children(&img, None).await, NotFound, "list_children");
    assert_err!(
        b.clone_image(&img, "s", &other).await,
        NotFound,
        "clone_image"
    );
    assert_err!(
        b.flatten(&img, no_progress(), CancellationToken::new())
            .await,
        NotFound,
        "flatten"
    );
    assert_err!(b.read(&img, None, 0, 1).await, NotFound, "read");
    assert_err!(
        b.read_stream(&img, None, 4096).await,
        NotFound,
        "read_stream"
    );
    assert_err!(b.write_at(&img, 0, b"x").await, NotFound, "write_at");
    assert_err!(
        b.write_stream(
            &img,
            stream_of(vec![1; 10], 10),
            WriteOptions::default(),
            no_progress(),
            CancellationToken::new()
        )
        .await,
        NotFound,
        "write_stream"
    );
    assert_err!(b.metadata_get(&img, "k").await, NotFound, "metadata_get");
    assert_err!(
        b.metadata_set(&img, "k", "v").await,
        NotFound,
        "metadata_set"
    );
    assert_err!(b.metadata_list(&img).await, NotFound, "metadata_list");
    assert_err!(
        b.encryption_format(&img, &Passphrase::new("secret")).await,
        NotFound,
        "encryption_format"
    );
    assert!(!b.image_exists(&other).await.expect("image_exists"));
}

/// `list_images` returns every image, sorted by name.
pub async fn list_images_is_sorted(b: &dyn BlockBackend, ns: &str) {
    cleanup(b, ns).await;
    let names = [name(ns, "c"), name(ns, "a"), name(ns, "b")];
    for n in &names {
        b.create_image(n, SIZE).await.expect("create");
    }
    let listed = b.list_images().await.expect("list_images");
    let mine: Vec<&String> = listed.iter().filter(|i| i.starts_with(ns)).collect();
    assert_eq!(mine, vec![&names[1], &names[2], &names[0]]);
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(listed, sorted, "list_images must be sorted");
    cleanup(b, ns).await;
}

/// Names like `snap_sha256:<hex>` (OS image bases) work for images and snapshots.
pub async fn image_names_may_contain_colons(b: &dyn BlockBackend, ns: &str) {
    cleanup(b, ns).await;
    let img = name(ns, "snap_sha256:0123abcd");
    b.create_image(&img, SIZE).await.expect("create");
    b.write_at(&img, 5, b"data").await.expect("write");
    b.create_snapshot(&img, "sha256:feed")
        .await
        .expect("snapshot");
    assert!(b.list_images().await.expect("list").contains(&img));
    assert_eq!(
        &b.read(&img, Some("sha256:feed"), 5, 4).await.expect("read")[..],
        b"data"
    );
    cleanup(b, ns).await;
}

/// Written bytes read back; unwritten ones read as zeroes; reads stop at the image size.
pub async fn written_data_reads_back_and_reads_stop_at_the_image_size(
    b: &dyn BlockBackend,
    ns: &str,
) {
    cleanup(b, ns).await;
    let img = name(ns, "img");
    b.create_image(&img, SIZE).await.expect("create");
    let across = pattern(3, 5000);
    let tail = pattern(4, 10);
    b.write_at(&img, OBJECT - 2500, &across)
        .await
        .expect("write");
    b.write_at(&img, SIZE - 10, &tail)
        .await
        .expect("write tail");
    let got = b.read(&img, None, OBJECT - 2600, 5200).await.expect("read");
    let mut want = vec![0u8; 100];
    want.extend_from_slice(&across);
    want.extend_from_slice(&[0u8; 100]);
    assert_eq!(&got[..], &want[..]);
    let end = b
        .read(&img, None, SIZE - 10, 100)
        .await
        .expect("read at end");
    assert_eq!(&end[..], &tail[..], "read past the end is truncated");
    let past = b
        .read(&img, None, SIZE + 10, 10)
        .await
        .expect("read past end");
    assert!(past.is_empty());
    let all = read_all(b, &img, None).await;
    assert_eq!(
        all,
        expected_content(SIZE, &[(OBJECT - 2500, &across), (SIZE - 10, &tail)])
    );
    cleanup(b, ns).await;
}

/// `write_at` reaching beyond the image size is `InvalidArgument`.
pub async fn writing_beyond_the_image_size_is_invalid(b: &dyn BlockBackend, ns: &str) {
    cleanup(b, ns).await;
    let img = name(ns, "img");
    b.create_image(&img, SIZE).await.expect("create");
    assert_err!(
        b.write_at(&img, SIZE - 2, b"abcd").await,
        InvalidArgument,
        "write across the end"
    );
    assert_err!(
        b.write_at(&img, SIZE + 1, b"a").await,
        InvalidArgument,
        "write past the end"
    );
    assert_eq!(b.stat(&img).await.expect("stat").size, SIZE);
    cleanup(b, ns).await;
}

/// Growing adds zeroes; shrinking is allowed and discards the data beyond the new size.
pub async fn resize_grows_with_zeroes_and_shrinking_discards_data(b: &dyn BlockBackend, ns: &str) {
    cleanup(b, ns).await;
    let img = name(ns, "img");
    b.create_image(&img, SIZE).await.expect("create");
    let data = pattern(5, 2000);
    b.write_at(&img, OBJECT - 1000, &data).await.expect("write");
    b.resize(&img, 2 * SIZE).await.expect("grow");
    assert_eq!(b.stat(&img).await.expect("stat").size, 2 * SIZE);
    assert_eq!(
        read_all(b, &img, None).await,
        expected_content(2 * SIZE, &[(OBJECT - 1000, &data)])
    );
    b.resize(&img, OBJECT - 500).await.expect("shrink");
    assert_eq!(b.stat(&img).await.expect("stat").size, OBJECT - 500);
    b.resize(&img, SIZE).await.expect("grow again");
    assert_eq!(
        read_all(b, &img, None).await,
        expected_content(SIZE, &[(OBJECT - 1000, &data[..500])]),
        "data beyond a shrink is gone"
    );
    cleanup(b, ns).await;
}

/// A snapshot keeps the content and size of the moment it was taken.
pub async fn snapshot_keeps_the_content_it_was_taken_with(b: &dyn BlockBackend, ns: &str) {
    cleanup(b, ns).await;
    let img = name(ns, "img");
    b.create_image(&img, SIZE).await.expect("create");
    let before = pattern(6, 3000);
    b.write_at(&img, 100, &before).await.expect("write");
    b.create_snapshot(&img, "s1").await.expect("snapshot");
    let sum = read_all(b, &img, Some("s1")).await;
    b.write_at(&img, 100, &pattern(7, 3000))
        .await
        .expect("overwrite");
    b.resize(&img, SIZE / 2).await.expect("shrink head");
    assert_eq!(read_all(b, &img, Some("s1")).await, sum);
    assert_eq!(
        read_all(b, &img, Some("s1")).await,
        expected_content(SIZE, &[(100, &before)])
    );
    assert_eq!(
        &b.read(&img, Some("s1"), 100, 3000)
            .await
            .expect("read snap")[..],
        &before[..]
    );
    b.remove_snapshot(&img, "s1")
        .await
        .expect("remove snapshot");
    cleanup(b, ns).await;
}

/// Creating a snapshot whose name is taken fails with `Exists`.
pub async fn creating_an_existing_snapshot_fails_with_exists(b: &dyn BlockBackend, ns: &str) {
    cleanup(b, ns).await;
    let img = name(ns, "img");
    b.create_image(&img, SIZE).await.expect("create");
    b.create_snapshot(&img, "s1").await.expect("snapshot");
    assert_err!(
        b.create_snapshot(&img, "s1").await,
        Exists,
        "second snapshot"
    );
    assert_eq!(b.list_snapshots(&img).await.expect("list").len(), 1);
    cleanup(b, ns).await;
}

/// Snapshots are listed (by `list_snapshots` and `stat`) in creation order with their sizes.
pub async fn snapshots_are_listed_in_creation_order_with_their_size(
    b: &dyn BlockBackend,
    ns: &str,
) {
    cleanup(b, ns).await;
    let img = name(ns, "img");
    b.create_image(&img, SIZE).await.expect("create");
    b.create_snapshot(&img, "zeta").await.expect("snapshot");
    b.resize(&img, 2 * SIZE).await.expect("grow");
    b.create_snapshot(&img, "alpha").await.expect("snapshot");
    b.protect_snapshot(&img, "alpha").await.expect("protect");
    let listed = b.list_snapshots(&img).await.expect("list");
    let summary: Vec<(&str, u64, bool)> = listed
        .iter()
        .map(|s| (s.name.as_str(), s.size, s.protected))
        .collect();
    assert_eq!(
        summary,
        vec![("zeta", SIZE, false), ("alpha", 2 * SIZE, true)]
    );
    assert_eq!(b.stat(&img).await.expect("stat").snapshots, listed);
    cleanup(b, ns).await;
}

/// Calls naming a missing snapshot of an existing image fail with `NotFound`.
pub async fn operations_on_a_missing_snapshot_are_not_found(b: &dyn BlockBackend, ns: &str) {
    cleanup(b, ns).await;
    let img = name(ns, "img");
    b.create_image(&img, SIZE).await.expect("create");
    assert_err!(b.protect_snapshot(&img, "nope").await, NotFound, "protect");
    assert_err!(
        b.unprotect_snapshot(&img, "nope").await,
        NotFound,
        "unprotect"
    );
    assert_err!(
        b.is_snapshot_protected(&img, "nope").await,
        NotFound,
        "is_protected"
    );
    assert_err!(b.remove_snapshot(&img, "nope").await, NotFound, "remove");
    assert_err!(
        b.list_children(&img, Some("nope")).await,
        NotFound,
        "children"
    );
    assert_err!(b.read(&img, Some("nope"), 0, 1).await, NotFound, "read");
    assert_err!(
        b.read_stream(&img, Some("nope"), 4096).await,
        NotFound,
        "read_stream"
    );
    assert_err!(
        b.is_snapshot_protected(&name(ns, "missing"), "nope").await,
        NotFound,
        "is_protected of a missing image"
    );
    cleanup(b, ns).await;
}

/// Protecting a protected snapshot and unprotecting an unprotected one succeed.
pub async fn protect_and_unprotect_are_idempotent(b: &dyn BlockBackend, ns: &str) {
    cleanup(b, ns).await;
    let img = name(ns, "img");
    b.create_image(&img, SIZE).await.expect("create");
    b.create_snapshot(&img, "s1").await.expect("snapshot");
    assert!(!b
        .is_snapshot_protected(&img, "s1")
        .await
        .expect("is_protected"));
    b.unprotect_snapshot(&img, "s1")
        .await
        .expect("unprotect unprotected");
    b.protect_snapshot(&img, "s1").await.expect("protect");
    b.protect_snapshot(&img, "s1").await.expect("protect again");
    assert!(b
        .is_snapshot_protected(&img, "s1")
        .await
        .expect("is_protected"));
    b.unprotect_snapshot(&img, "s1").await.expect("unprotect");
    b.unprotect_snapshot(&img, "s1")
        .await
        .expect("unprotect again");
    assert!(!b
        .is_snapshot_protected(&img, "s1")
        .await
        .expect("is_protected"));
    cleanup(b, ns).await;
}

/// A protected snapshot cannot be removed (`Busy`); after unprotecting it can.
pub async fn removing_protected_snapshot_is_busy(b: &dyn BlockBackend, ns: &str) {
    cleanup(b, ns).await;
    let img = name(ns, "img");
    b.create_image(&img, SIZE).await.expect("create");
    b.create_snapshot(&img, "s1").await.expect("snapshot");
    b.protect_snapshot(&img, "s1").await.expect("protect");
    assert_err!(
        b.remove_snapshot(&img, "s1").await,
        Busy,
        "remove protected"
    );
    assert_eq!(b.list_snapshots(&img).await.expect("list").len(), 1);
    b.unprotect_snapshot(&img, "s1").await.expect("unprotect");
    b.remove_snapshot(&img, "s1").await.expect("remove");
    assert!(b.list_snapshots(&img).await.expect("list").is_empty());
    cleanup(b, ns).await;
}

/// An image with snapshots cannot be removed (`Busy`); without them it can.
pub async fn image_with_snapshots_cannot_be_removed(b: &dyn BlockBackend, ns: &str) {
    cleanup(b, ns).await;
    let img = name(ns, "img");
    b.create_image(&img, SIZE).await.expect("create");
    b.create_snapshot(&img, "s1").await.expect("snapshot");
    assert_err!(b.remove_image(&img).await, Busy, "remove with snapshot");
    assert!(b.image_exists(&img).await.expect("exists"));
    b.remove_snapshot(&img, "s1")
        .await
        .expect("remove snapshot");
    b.remove_image(&img).await.expect("remove");
    assert!(!b.image_exists(&img).await.expect("exists"));
}

/// Cloning an unprotected snapshot is `InvalidArgument` (clone format v1) and creates nothing.
pub async fn clone_requires_protected_snapshot(b: &dyn BlockBackend, ns: &str) {
    cleanup(b, ns).await;
    let img = name(ns, "img");
    let child = name(ns, "child");
    b.create_image(&img, SIZE).await.expect("create");
    b.create_snapshot(&img, "s1").await.expect("snapshot");
    assert_err!(
        b.clone_image(&img, "s1", &child).await,
        InvalidArgument,
        "clone of unprotected"
    );
    assert!(!b.image_exists(&child).await.expect("exists"));
    b.protect_snapshot(&img, "s1").await.expect("protect");
    b.clone_image(&img, "s1", &child)
        .await
        .expect("clone of protected");
    cleanup(b, ns).await;
}

/// Cloning a snapshot that does not exist is `NotFound`.
pub async fn clone_of_a_missing_snapshot_is_not_found(b: &dyn BlockBackend, ns: &str) {
    cleanup(b, ns).await;
    let img = name(ns, "img");
    b.create_image(&img, SIZE).await.expect("create");
    assert_err!(
        b.clone_image(&img, "nope", &name(ns, "child")).await,
        NotFound,
        "clone of missing snapshot"
    );
    cleanup(b, ns).await;
}

/// Cloning onto a taken name is `Exists` and leaves that image alone.
pub async fn cloning_onto_an_existing_image_fails_with_exists(b: &dyn BlockBackend, ns: &str) {
    cleanup(b, ns).await;
    let (parent, _) = parent_with_protected_snapshot(b, ns).await;
    let other = name(ns, "other");
    b.create_image(&other, 2 * SIZE)
        .await
        .expect("create other");
    assert_err!(
        b.clone_image(&parent, "s1", &other).await,
        Exists,
        "clone onto"
    );
    let info = b.stat(&other).await.expect("stat");
    assert_eq!((info.size, info.parent), (2 * SIZE, None));
    assert!(b
        .list_children(&parent, None)
        .await
        .expect("children")
        .is_empty());
    cleanup(b, ns).await;
}

/// A clone has the snapshot's size and reports `pool/parent@snap` as its parent.
pub async fn clone_starts_with_the_snapshot_size_and_reports_its_parent(
    b: &dyn BlockBackend,
    ns: &str,
) {
    cleanup(b, ns).await;
    let (parent, _) = parent_with_protected_snapshot(b, ns).await;
    b.resize(&parent, 2 * SIZE).await.expect("grow parent head");
    let child = name(ns, "child");
    b.clone_image(&parent, "s1", &child).await.expect("clone");
    let info = b.stat(&child).await.expect("stat");
    assert_eq!(info.size, SIZE, "clone has the snapshot's size");
    assert_eq!(
        info.parent,
        Some(ParentSpec {
            pool: b.pool().to_string(),
            image: parent.clone(),
            snapshot: "s1".into()
        })
    );
    assert!(info.snapshots.is_empty());
    cleanup(b, ns).await;
}

/// A clone reads the parent snapshot's bytes until it writes them itself; writes on either side
/// after the clone do not leak to the other.
pub async fn clone_reads_through_to_parent_until_written(b: &dyn BlockBackend, ns: &str) {
    cleanup(b, ns).await;
    let (parent, at_snap) = parent_with_protected_snapshot(b, ns).await;
    let child = name(ns, "child");
    b.clone_image(&parent, "s1", &child).await.expect("clone");
    assert_eq!(read_all(b, &child, None).await, at_snap);
    b.write_at(&parent, 0, &pattern(9, 1000))
        .await
        .expect("write parent head");
    assert_eq!(
        read_all(b, &child, None).await,
        at_snap,
        "parent head writes stay out"
    );
    let own = pattern(10, 50);
    b.write_at(&child, 10, &own).await.expect("write clone");
    let mut want = at_snap.clone();
    want[10..60].copy_from_slice(&own);
    assert_eq!(
        read_all(b, &child, None).await,
        want,
        "clone sees its write and the rest"
    );
    assert_eq!(
        read_all(b, &parent, Some("s1")).await,
        at_snap,
        "snapshot untouched"
    );
    cleanup(b, ns).await;
}

/// A new clone starts with a copy of the parent image's metadata (as librbd's clone does).
pub async fn clone_copies_the_parent_image_metadata(b: &dyn BlockBackend, ns: &str) {
    cleanup(b, ns).await;
    let parent = name(ns, "parent");
    b.create_image(&parent, SIZE).await.expect("create");
    b.metadata_set(&parent, "conf_rbd_qos_iops_limit", "100")
        .await
        .expect("metadata");
    b.create_snapshot(&parent, "s1").await.expect("snapshot");
    b.protect_snapshot(&parent, "s1").await.expect("protect");
    let child = name(ns, "child");
    b.clone_image(&parent, "s1", &child).await.expect("clone");
    assert_eq!(
        b.metadata_get(&child, "conf_rbd_qos_iops_limit")
            .await
            .expect("get"),
        Some("100".to_string())
    );
    b.metadata_set(&child, "wwn", "abc")
        .await
        .expect("set on clone");
    assert_eq!(b.metadata_get(&parent, "wwn").await.expect("get"), None);
    cleanup(b, ns).await;
}

/// Unprotecting a snapshot fails with `Busy` while clones of it exist.
pub async fn unprotect_fails_while_clones_exist(b: &dyn BlockBackend, ns: &str) {
    cleanup(b, ns).await;
    let (parent, _) = parent_with_protected_snapshot(b, ns).await;
    let child = name(ns, "child");
    b.clone_image(&parent, "s1", &child).await.expect("clone");
    assert_err!(b.unprotect_snapshot(&parent, "s1").await, Busy, "unprotect");
    assert!(b
        .is_snapshot_protected(&parent, "s1")
        .await
        .expect("is_protected"));
    b.flatten(&child, no_progress(), CancellationToken::new())
        .await
        .expect("flatten");
    b.unprotect_snapshot(&parent, "s1")
        .await
        .expect("unprotect after flatten");
    cleanup(b, ns).await;
}

/// A snapshot with clones can lose neither its protection nor itself.
pub async fn snapshot_with_clones_cannot_be_removed(b: &dyn BlockBackend, ns: &str) {
    cleanup(b, ns).await;
    let (parent, at_snap) = parent_with_protected_snapshot(b, ns).await;
    let child = name(ns, "child");
    b.clone_image(&parent, "s1", &child).await.expect("clone");
    assert_err!(
        b.remove_snapshot(&parent, "s1").await,
        Busy,
        "remove snapshot"
    );
    assert_err!(b.unprotect_snapshot(&parent, "s1").await, Busy, "unprotect");
    assert_err!(b.remove_image(&parent).await, Busy, "remove parent");
    assert_eq!(read_all(b, &child, None).await, at_snap);
    cleanup(b, ns).await;
}

/// Removing the only clone lets the parent snapshot be unprotected and removed.
pub async fn removing_the_clone_releases_the_parent_snapshot(b: &dyn BlockBackend, ns: &str) {
    cleanup(b, ns).await;
    let (parent, _) = parent_with_protected_snapshot(b, ns).await;
    let child = name(ns, "child");
    b.clone_image(&parent, "s1", &child).await.expect("clone");
    b.remove_image(&child).await.expect("remove clone");
    assert!(b
        .list_children(&parent, Some("s1"))
        .await
        .expect("children")
        .is_empty());
    b.unprotect_snapshot(&parent, "s1")
        .await
        .expect("unprotect");
    b.remove_snapshot(&parent, "s1")
        .await
        .expect("remove snapshot");
    b.remove_image(&parent).await.expect("remove parent");
}

/// `list_children` lists the clones of one snapshot, or of all snapshots (`None`), sorted.
pub async fn list_children_of_a_snapshot_or_the_whole_image_is_sorted(
    b: &dyn BlockBackend,
    ns: &str,
) {
    cleanup(b, ns).await;
    let (parent, _) = parent_with_protected_snapshot(b, ns).await;
    b.create_snapshot(&parent, "s2").await.expect("snapshot 2");
    b.protect_snapshot(&parent, "s2").await.expect("protect 2");
    let (c1, c2, c3) = (name(ns, "c"), name(ns, "a"), name(ns, "b"));
    b.clone_image(&parent, "s1", &c1).await.expect("clone c");
    b.clone_image(&parent, "s1", &c2).await.expect("clone a");
    b.clone_image(&parent, "s2", &c3).await.expect("clone b");
    assert_eq!(
        b.list_children(&parent, Some("s1"))
            .await
            .expect("children s1"),
        children(b, &[&c2, &c1])
    );
    assert_eq!(
        b.list_children(&parent, Some("s2"))
            .await
            .expect("children s2"),
        children(b, &[&c3])
    );
    assert_eq!(
        b.list_children(&parent, None).await.expect("children all"),
        children(b, &[&c2, &c3, &c1])
    );
    assert!(b
        .list_children(&c1, None)
        .await
        .expect("no grandchildren")
        .is_empty());
    cleanup(b, ns).await;
}

/// Flatten keeps the clone's bytes, detaches it, and removes it from the parent's children.
pub async fn flatten_detaches_the_clone_and_keeps_its_content(b: &dyn BlockBackend, ns: &str) {
    cleanup(b, ns).await;
    let (parent, _) = parent_with_protected_snapshot(b, ns).await;
    let child = name(ns, "child");
    b.clone_image(&parent, "s1", &child).await.expect("clone");
    b.write_at(&child, OBJECT + 7, b"own")
        .await
        .expect("write clone");
    let before = read_all(b, &child, None).await;
    let reports = Arc::new(Mutex::new(Vec::new()));
    let sink = reports.clone();
    let progress: rbd::ProgressFn = Arc::new(move |done, total| {
        sink.lock().expect("progress log").push((done, total));
    });
    b.flatten(&child, progress, CancellationToken::new())
        .await
        .expect("flatten");
    assert_eq!(b.stat(&child).await.expect("stat").parent, None);
    assert_eq!(read_all(b, &child, None).await, before);
    assert!(b
        .list_children(&parent, None)
        .await
        .expect("children")
        .is_empty());
    let reports = reports.lock().expect("progress log").clone();
    if let Some(&(done, total)) = reports.last() {
        assert_eq!(done, total, "the last progress report is complete");
    }
    assert!(
        reports.windows(2).all(|w| w[0].0 <= w[1].0),
        "progress never goes back"
    );
    cleanup(b, ns).await;
}

/// A flattened clone keeps its bytes after the parent snapshot and image are gone.
pub async fn flattened_clone_keeps_data_after_parent_removed(b: &dyn BlockBackend, ns: &str) {
    cleanup(b, ns).await;
    let (parent, at_snap) = parent_with_protected_snapshot(b, ns).await;
    let child = name(ns, "child");
    b.clone_image(&parent, "s1", &child).await.expect("clone");
    let sum = read_all(b, &child, None).await;
    b.flatten(&child, no_progress(), CancellationToken::new())
        .await
        .expect("flatten");
    b.unprotect_snapshot(&parent, "s1")
        .await
        .expect("unprotect");
    b.remove_snapshot(&parent, "s1")
        .await
        .expect("remove snapshot");
    b.remove_image(&parent).await.expect("remove parent");
    assert_eq!(read_all(b, &child, None).await, sum);
    assert_eq!(read_all(b, &child, None).await, at_snap);
    cleanup(b, ns).await;
}

/// Flattening an image that has no parent succeeds and changes nothing.
pub async fn flatten_of_an_image_without_parent_succeeds(b: &dyn BlockBackend, ns: &str) {
    cleanup(b, ns).await;
    let img = name(ns, "img");
    b.create_image(&img, SIZE).await.expect("create");
    b.write_at(&img, 3, b"abc").await.expect("write");
    let sum = read_all(b, &img, None).await;
    b.flatten(&img, no_progress(), CancellationToken::new())
        .await
        .expect("flatten");
    assert_eq!(read_all(b, &img, None).await, sum);
    cleanup(b, ns).await;
}

/// Flattening a clone that has snapshots detaches it (and them) at once, as Ceph Pacific does: the
/// parent snapshot has no children left, and the clone's snapshots keep their bytes after the
/// parent is gone.
pub async fn flattening_a_clone_with_snapshots_detaches_it_at_once(b: &dyn BlockBackend, ns: &str) {
    cleanup(b, ns).await;
    let (parent, at_snap) = parent_with_protected_snapshot(b, ns).await;
    let child = name(ns, "child");
    b.clone_image(&parent, "s1", &child).await.expect("clone");
    b.create_snapshot(&child, "cs")
        .await
        .expect("snapshot of clone");
    b.write_at(&child, 0, b"head")
        .await
        .expect("write clone head");
    b.flatten(&child, no_progress(), CancellationToken::new())
        .await
        .expect("flatten");
    assert_eq!(b.stat(&child).await.expect("stat").parent, None);
    assert!(b
        .list_children(&parent, Some("s1"))
        .await
        .expect("children")
        .is_empty());
    b.unprotect_snapshot(&parent, "s1")
        .await
        .expect("unprotect");
    b.remove_snapshot(&parent, "s1")
        .await
        .expect("remove snapshot");
    b.remove_image(&parent).await.expect("remove parent");
    assert_eq!(read_all(b, &child, Some("cs")).await, at_snap);
    let mut head = at_snap.clone();
    head[..4].copy_from_slice(b"head");
    assert_eq!(read_all(b, &child, None).await, head);
    cleanup(b, ns).await;
}

/// A snapshot of a clone reads like the clone did when it was taken.
pub async fn snapshot_of_a_clone_reads_like_the_clone(b: &dyn BlockBackend, ns: &str) {
    cleanup(b, ns).await;
    let (parent, _) = parent_with_protected_snapshot(b, ns).await;
    let child = name(ns, "child");
    b.clone_image(&parent, "s1", &child).await.expect("clone");
    b.write_at(&child, 2, b"mine").await.expect("write clone");
    let want = read_all(b, &child, None).await;
    b.create_snapshot(&child, "cs")
        .await
        .expect("snapshot of clone");
    b.write_at(&child, 0, &pattern(11, 4000))
        .await
        .expect("overwrite");
    assert_eq!(read_all(b, &child, Some("cs")).await, want);
    cleanup(b, ns).await;
}

/// Shrinking a clone discards the parent's data beyond the new size for good (growing again reads
/// zeroes there, not the parent's bytes).
pub async fn shrinking_a_clone_hides_parent_data_beyond_the_new_size(
    b: &dyn BlockBackend,
    ns: &str,
) {
    cleanup(b, ns).await;
    let (parent, at_snap) = parent_with_protected_snapshot(b, ns).await;
    let child = name(ns, "child");
    b.clone_image(&parent, "s1", &child).await.expect("clone");
    let keep = 500u64;
    b.resize(&child, keep).await.expect("shrink clone");
    b.resize(&child, SIZE).await.expect("grow clone");
    let want = expected_content(SIZE, &[(0, &at_snap[..keep as usize])]);
    assert_eq!(read_all(b, &child, None).await, want);
    b.flatten(&child, no_progress(), CancellationToken::new())
        .await
        .expect("flatten");
    assert_eq!(read_all(b, &child, None).await, want);
    cleanup(b, ns).await;
}

/// A flatten whose token is cancelled returns `Cancelled` (or finishes if it was already done)
/// and leaves the clone intact: same bytes, still a clone unless it completed.
pub async fn cancelled_flatten_leaves_clone_intact(b: &dyn BlockBackend, ns: &str) {
    cleanup(b, ns).await;
    let (parent, at_snap) = parent_with_protected_snapshot(b, ns).await;
    let child = name(ns, "child");
    b.clone_image(&parent, "s1", &child).await.expect("clone");
    let cancel = CancellationToken::new();
    cancel.cancel();
    match b.flatten(&child, no_progress(), cancel).await {
        Err(RbdError::Cancelled) => {
            assert!(b.stat(&child).await.expect("stat").parent.is_some());
            assert_eq!(
                b.list_children(&parent, Some("s1"))
                    .await
                    .expect("children"),
                children(b, &[&child])
            );
        }
        Ok(()) => assert_eq!(b.stat(&child).await.expect("stat").parent, None),
        Err(e) => panic!("cancelled flatten: unexpected error {e}"),
    }
    assert_eq!(read_all(b, &child, None).await, at_snap);
    b.flatten(&child, no_progress(), CancellationToken::new())
        .await
        .expect("flatten after a cancelled one");
    assert_eq!(read_all(b, &child, None).await, at_snap);
    cleanup(b, ns).await;
}

/// Image metadata can be set, overwritten, read and listed; unset keys read as `None`.
pub async fn metadata_is_set_listed_and_read_back(b: &dyn BlockBackend, ns: &str) {
    cleanup(b, ns).await;
    let img = name(ns, "img");
    b.create_image(&img, SIZE).await.expect("create");
    assert_eq!(b.metadata_get(&img, "wwn").await.expect("get"), None);
    b.metadata_set(&img, "wwn", "1").await.expect("set");
    b.metadata_set(&img, "wwn", "2").await.expect("overwrite");
    b.metadata_set(&img, "conf_rbd_qos_bps_limit", "10")
        .await
        .expect("set");
    assert_eq!(
        b.metadata_get(&img, "wwn").await.expect("get"),
        Some("2".into())
    );
    let all = b.metadata_list(&img).await.expect("list");
    let want: std::collections::BTreeMap<String, String> = [
        ("conf_rbd_qos_bps_limit".to_string(), "10".to_string()),
        ("wwn".to_string(), "2".to_string()),
    ]
    .into();
    assert_eq!(all, want);
    cleanup(b, ns).await;
}

/// `read_stream` yields the whole head or snapshot from offset 0 in pieces of at most the asked
/// chunk size.
pub async fn read_stream_returns_the_whole_image_or_snapshot(b: &dyn BlockBackend, ns: &str) {
    cleanup(b, ns).await;
    let img = name(ns, "img");
    b.create_image(&img, SIZE).await.expect("create");
    let data = pattern(12, 3333);
    b.write_at(&img, OBJECT - 1111, &data).await.expect("write");
    b.create_snapshot(&img, "s1").await.expect("snapshot");
    b.write_at(&img, 0, b"head only").await.expect("write head");
    let chunk = 1_000_003usize;
    let mut stream = b
        .read_stream(&img, Some("s1"), chunk)
        .await
        .expect("stream");
    let mut got = Vec::new();
    while let Some(piece) = stream.next().await {
        let piece = piece.expect("piece");
        assert!(
            !piece.is_empty() && piece.len() <= chunk,
            "piece of {}",
            piece.len()
        );
        got.extend_from_slice(&piece);
    }
    assert_eq!(got, expected_content(SIZE, &[(OBJECT - 1111, &data)]));
    let head = read_all(b, &img, None).await;
    assert_eq!(&head[..9], b"head only");
    cleanup(b, ns).await;
}

/// `write_stream` writes the stream from offset 0, returns the bytes consumed and reports byte
/// progress up to the total.
pub async fn write_stream_writes_from_offset_zero_and_reports_progress_in_bytes(
    b: &dyn BlockBackend,
    ns: &str,
) {
    cleanup(b, ns).await;
    let img = name(ns, "img");
    b.create_image(&img, SIZE).await.expect("create");
    let len = 3 * 1024 * 1024 + 17;
    let data = pattern(13, len);
    let reports = Arc::new(Mutex::new(Vec::new()));
    let sink = reports.clone();
    let progress: rbd::ProgressFn = Arc::new(move |done, total| {
        sink.lock().expect("progress log").push((done, total));
    });
    let opts = WriteOptions {
        chunk_size: 1024 * 1024,
        queue_depth: 3,
        skip_zeroes: false,
        total_hint: len as u64,
        passphrase: None,
    };
    let written = b
        .write_stream(
            &img,
            stream_of(data.clone(), 100_000),
            opts,
            progress,
            CancellationToken::new(),
        )
        .await
        .expect("write_stream");
    assert_eq!(written, len as u64);
    assert_eq!(
        read_all(b, &img, None).await,
        expected_content(SIZE, &[(0, &data)])
    );
    let reports = reports.lock().expect("progress log").clone();
    assert_eq!(reports.last(), Some(&(len as u64, len as u64)));
    assert!(
        reports.windows(2).all(|w| w[0].0 <= w[1].0),
        "progress never goes back"
    );
    cleanup(b, ns).await;
}

/// With `skip_zeroes`, all-zero chunks are not written, and a fresh image reads the same.
pub async fn write_stream_with_skip_zeroes_gives_the_same_content(b: &dyn BlockBackend, ns: &str) {
    cleanup(b, ns).await;
    let img = name(ns, "img");
    b.create_image(&img, SIZE).await.expect("create");
    let mut data = vec![0u8; 4 * 1024 * 1024];
    data[1024 * 1024..1024 * 1024 + 10].copy_from_slice(&pattern(14, 10));
    data[3 * 1024 * 1024 + 5] = 9;
    let opts = WriteOptions {
        chunk_size: 512 * 1024,
        queue_depth: 2,
        skip_zeroes: true,
        total_hint: data.len() as u64,
        passphrase: None,
    };
    let written = b
        .write_stream(
            &img,
            stream_of(data.clone(), 300_000),
            opts,
            no_progress(),
            CancellationToken::new(),
        )
        .await
        .expect("write_stream");
    assert_eq!(written, data.len() as u64);
    assert_eq!(
        read_all(b, &img, None).await,
        expected_content(SIZE, &[(0, &data)])
    );
    cleanup(b, ns).await;
}

/// A stream longer than the image is `InvalidArgument`.
pub async fn write_stream_beyond_the_image_size_is_invalid(b: &dyn BlockBackend, ns: &str) {
    cleanup(b, ns).await;
    let img = name(ns, "img");
    b.create_image(&img, 1024 * 1024).await.expect("create");
    let res = b
        .write_stream(
            &img,
            stream_of(pattern(15, 1024 * 1024 + 1), 65536),
            WriteOptions::default(),
            no_progress(),
            CancellationToken::new(),
        )
        .await;
    assert_err!(res, InvalidArgument, "write_stream past the end");
    cleanup(b, ns).await;
}

/// A `write_stream` whose token is cancelled returns `Cancelled`.
pub async fn cancelled_write_stream_returns_cancelled(b: &dyn BlockBackend, ns: &str) {
    cleanup(b, ns).await;
    let img = name(ns, "img");
    b.create_image(&img, SIZE).await.expect("create");
    let cancel = CancellationToken::new();
    cancel.cancel();
    let res = b
        .write_stream(
            &img,
            stream_of(pattern(16, 2 * 1024 * 1024), 65536),
            WriteOptions::default(),
            no_progress(),
            cancel,
        )
        .await;
    assert_err!(res, Cancelled, "cancelled write_stream");
    cleanup(b, ns).await;
}

/// Formatting a clone for encryption is `Unsupported` (Ceph Pacific).
pub async fn encryption_format_of_clone_is_unsupported(b: &dyn BlockBackend, ns: &str) {
    cleanup(b, ns).await;
    let parent = name(ns, "parent");
    b.create_image(&parent, 32 * 1024 * 1024)
        .await
        .expect("create");
    b.create_snapshot(&parent, "s1").await.expect("snapshot");
    b.protect_snapshot(&parent, "s1").await.expect("protect");
    let child = name(ns, "child");
    b.clone_image(&parent, "s1", &child).await.expect("clone");
    assert_err!(
        b.encryption_format(&child, &Passphrase::new("secret"))
            .await,
        Unsupported,
        "format a clone"
    );
    cleanup(b, ns).await;
}

/// Pool figures are consistent: capacity is `max_avail + stored`.
pub async fn pool_usage_capacity_is_max_avail_plus_stored(b: &dyn BlockBackend, _ns: &str) {
    let usage: PoolUsage = b.pool_usage().await.expect("pool_usage");
    assert_eq!(
        usage.capacity(),
        usage.max_avail.saturating_add(usage.stored)
    );
    assert!(usage.capacity() > 0, "a pool has some capacity");
}

/// `client_key` of the admin client is non-empty and stable.
pub async fn client_key_is_stable(b: &dyn BlockBackend, _ns: &str) {
    let k1 = b.client_key("client.admin").await.expect("client_key");
    let k2 = b.client_key("client.admin").await.expect("client_key");
    assert!(!k1.is_empty());
    assert_eq!(k1, k2);
}
