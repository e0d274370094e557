//! Rules on clones of protected snapshots and on flatten: what a clone reads, what it copies from
//! its parent, what it keeps alive, and how flatten (also cancelled) detaches it.

use std::sync::{Arc, Mutex};

use testdata::pattern;

use rbd::{no_progress, BlockBackend, CancellationToken, ParentSpec, RbdError};

use super::support::{
    children, cleanup, expected_content, name, parent_with_protected_snapshot, read_all,
};
use super::{OBJECT, SIZE};

/// Cloning an unprotected snapshot is `InvalidArgument` (clone format v1) and creates nothing.
pub(super) async fn clone_requires_protected_snapshot(b: &dyn BlockBackend, ns: &str) {
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
pub(super) async fn clone_of_a_missing_snapshot_is_not_found(b: &dyn BlockBackend, ns: &str) {
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
pub(super) async fn cloning_onto_an_existing_image_fails_with_exists(
    b: &dyn BlockBackend,
    ns: &str,
) {
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
pub(super) async fn clone_starts_with_the_snapshot_size_and_reports_its_parent(
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
pub(super) async fn clone_reads_through_to_parent_until_written(b: &dyn BlockBackend, ns: &str) {
    cleanup(b, ns).await;
    let (parent, at_snap) = parent_with_protected_snapshot(b, ns).await;
    let child = name(ns, "child");
    b.clone_image(&parent, "s1", &child).await.expect("clone");
    assert_eq!(read_all(b, &child, None).await, at_snap);
    b.write_at(&parent, 0, &pattern(1000, 9))
        .await
        .expect("write parent head");
    assert_eq!(
        read_all(b, &child, None).await,
        at_snap,
        "parent head writes stay out"
    );
    let own = pattern(50, 10);
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
pub(super) async fn clone_copies_the_parent_image_metadata(b: &dyn BlockBackend, ns: &str) {
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
pub(super) async fn unprotect_fails_while_clones_exist(b: &dyn BlockBackend, ns: &str) {
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
pub(super) async fn snapshot_with_clones_cannot_be_removed(b: &dyn BlockBackend, ns: &str) {
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
pub(super) async fn removing_the_clone_releases_the_parent_snapshot(
    b: &dyn BlockBackend,
    ns: &str,
) {
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
pub(super) async fn list_children_of_a_snapshot_or_the_whole_image_is_sorted(
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
pub(super) async fn flatten_detaches_the_clone_and_keeps_its_content(
    b: &dyn BlockBackend,
    ns: &str,
) {
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

/// `flatten_child` of a child as `list_children` reports it flattens it in its own pool, like
/// `flatten`, and releases the parent snapshot.
pub(super) async fn flatten_child_flattens_a_listed_child_where_it_lives(
    b: &dyn BlockBackend,
    ns: &str,
) {
    cleanup(b, ns).await;
    let (parent, at_snap) = parent_with_protected_snapshot(b, ns).await;
    let child = name(ns, "child");
    b.clone_image(&parent, "s1", &child).await.expect("clone");
    let listed = b
        .list_children(&parent, Some("s1"))
        .await
        .expect("children");
    assert_eq!(listed, children(b, &[&child]));
    b.flatten_child(&listed[0], no_progress(), CancellationToken::new())
        .await
        .expect("flatten_child");
    assert_eq!(b.stat(&child).await.expect("stat").parent, None);
    assert_eq!(read_all(b, &child, None).await, at_snap);
    assert!(b
        .list_children(&parent, Some("s1"))
        .await
        .expect("children")
        .is_empty());
    b.unprotect_snapshot(&parent, "s1")
        .await
        .expect("unprotect once the only child is flattened");
    cleanup(b, ns).await;
}

/// `flatten_child` of a child in another pool never flattens the same-named image of this pool:
/// it fails (`NotFound` when that pool does not exist, `Unsupported` on a backend with one pool)
/// and this pool's clone stays a clone.
pub(super) async fn flatten_child_of_another_pool_leaves_this_pool_alone(
    b: &dyn BlockBackend,
    ns: &str,
) {
    cleanup(b, ns).await;
    let (parent, _) = parent_with_protected_snapshot(b, ns).await;
    let child = name(ns, "child");
    b.clone_image(&parent, "s1", &child).await.expect("clone");
    let elsewhere = rbd::ChildRef {
        pool: format!("{}-other-{ns}", b.pool()),
        image: child.clone(),
    };
    match b
        .flatten_child(&elsewhere, no_progress(), CancellationToken::new())
        .await
    {
        Err(RbdError::NotFound(_) | RbdError::Unsupported(_)) => {}
        other => panic!("flatten_child in a pool that does not exist gave {other:?}"),
    }
    let parent_spec = b.stat(&child).await.expect("stat").parent;
    assert_eq!(
        parent_spec.map(|p| (p.image, p.snapshot)),
        Some((parent.clone(), "s1".to_string())),
        "the clone of this pool is untouched"
    );
    cleanup(b, ns).await;
}

/// A flattened clone keeps its bytes after the parent snapshot and image are gone.
pub(super) async fn flattened_clone_keeps_data_after_parent_removed(
    b: &dyn BlockBackend,
    ns: &str,
) {
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
pub(super) async fn flatten_of_an_image_without_parent_succeeds(b: &dyn BlockBackend, ns: &str) {
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
pub(super) async fn flattening_a_clone_with_snapshots_detaches_it_at_once(
    b: &dyn BlockBackend,
    ns: &str,
) {
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
pub(super) async fn snapshot_of_a_clone_reads_like_the_clone(b: &dyn BlockBackend, ns: &str) {
    cleanup(b, ns).await;
    let (parent, _) = parent_with_protected_snapshot(b, ns).await;
    let child = name(ns, "child");
    b.clone_image(&parent, "s1", &child).await.expect("clone");
    b.write_at(&child, 2, b"mine").await.expect("write clone");
    let want = read_all(b, &child, None).await;
    b.create_snapshot(&child, "cs")
        .await
        .expect("snapshot of clone");
    b.write_at(&child, 0, &pattern(4000, 11))
        .await
        .expect("overwrite");
    assert_eq!(read_all(b, &child, Some("cs")).await, want);
    cleanup(b, ns).await;
}

/// Shrinking a clone discards the parent's data beyond the new size for good (growing again reads
/// zeroes there, not the parent's bytes).
pub(super) async fn shrinking_a_clone_hides_parent_data_beyond_the_new_size(
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
pub(super) async fn cancelled_flatten_leaves_clone_intact(b: &dyn BlockBackend, ns: &str) {
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
