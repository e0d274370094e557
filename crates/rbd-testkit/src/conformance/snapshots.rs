//! Rules on snapshots of an image: content, creation order and sizes, protection, and what they
//! keep from being removed.

use testdata::pattern;

use rbd::BlockBackend;

use super::support::{cleanup, expected_content, name, read_all};
use super::SIZE;

/// A snapshot keeps the content and size of the moment it was taken.
pub(super) async fn snapshot_keeps_the_content_it_was_taken_with(b: &dyn BlockBackend, ns: &str) {
    cleanup(b, ns).await;
    let img = name(ns, "img");
    b.create_image(&img, SIZE).await.expect("create");
    let before = pattern(3000, 6);
    b.write_at(&img, 100, &before).await.expect("write");
    b.create_snapshot(&img, "s1").await.expect("snapshot");
    let sum = read_all(b, &img, Some("s1")).await;
    b.write_at(&img, 100, &pattern(3000, 7))
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
pub(super) async fn creating_an_existing_snapshot_fails_with_exists(
    b: &dyn BlockBackend,
    ns: &str,
) {
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
pub(super) async fn snapshots_are_listed_in_creation_order_with_their_size(
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
pub(super) async fn operations_on_a_missing_snapshot_are_not_found(b: &dyn BlockBackend, ns: &str) {
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
pub(super) async fn protect_and_unprotect_are_idempotent(b: &dyn BlockBackend, ns: &str) {
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
pub(super) async fn removing_protected_snapshot_is_busy(b: &dyn BlockBackend, ns: &str) {
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
pub(super) async fn image_with_snapshots_cannot_be_removed(b: &dyn BlockBackend, ns: &str) {
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
