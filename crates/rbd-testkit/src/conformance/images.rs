//! Rules on images: create, stat, existence, listing, names, resize, and `NotFound` for every call
//! on a missing image.

use testdata::pattern;

use rbd::{no_progress, BlockBackend, CancellationToken, Passphrase, WriteOptions};

use super::support::{cleanup, expected_content, name, read_all, stream_of};
use super::{OBJECT, SIZE};

/// A new image has the requested size, no parent and no snapshots, and reads as zeroes.
pub(super) async fn create_then_stat_reports_size_without_parent_or_snapshots(
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
pub(super) async fn creating_an_existing_image_fails_with_exists(b: &dyn BlockBackend, ns: &str) {
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
pub(super) async fn operations_on_a_missing_image_are_not_found(b: &dyn BlockBackend, ns: &str) {
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
    let child = rbd::ChildRef {
        pool: b.pool().to_string(),
        image: img.clone(),
    };
    assert_err!(
        b.flatten_child(&child, no_progress(), CancellationToken::new())
            .await,
        NotFound,
        "flatten_child"
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
pub(super) async fn list_images_is_sorted(b: &dyn BlockBackend, ns: &str) {
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
pub(super) async fn image_names_may_contain_colons(b: &dyn BlockBackend, ns: &str) {
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

/// Growing adds zeroes; shrinking is allowed and discards the data beyond the new size.
pub(super) async fn resize_grows_with_zeroes_and_shrinking_discards_data(
    b: &dyn BlockBackend,
    ns: &str,
) {
    cleanup(b, ns).await;
    let img = name(ns, "img");
    b.create_image(&img, SIZE).await.expect("create");
    let data = pattern(2000, 5);
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
