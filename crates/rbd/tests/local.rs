//! Behaviour of `rbd::local::LocalBackend` beyond the shared conformance rules: persistence across
//! re-opening, the on-disk layout, sparse copies, crash leftovers, and what it does not support.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::MetadataExt;

use rbd::local::{LocalBackend, LOCAL_CLIENT_KEY};
use rbd::{no_progress, BlockBackend, CancellationToken, Passphrase, RbdError, WriteOptions};
use rbd_testkit::conformance::{read_all, stream_of};
use testdata::pattern;

const MIB: u64 = 1024 * 1024;

fn open(dir: &tempfile::TempDir) -> LocalBackend {
    LocalBackend::open(dir.path(), "pool").expect("open")
}

#[tokio::test]
async fn state_survives_reopening_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let data = pattern(5000, 1);
    {
        let b = open(&dir);
        b.create_image("snap_sha256:abc", 8 * MIB).await.unwrap();
        b.write_at("snap_sha256:abc", 4 * MIB - 10, &data)
            .await
            .unwrap();
        b.metadata_set("snap_sha256:abc", "wwn", "0123")
            .await
            .unwrap();
        b.create_snapshot("snap_sha256:abc", "v1").await.unwrap();
        b.protect_snapshot("snap_sha256:abc", "v1").await.unwrap();
        b.clone_image("snap_sha256:abc", "v1", "img_1")
            .await
            .unwrap();
        b.create_snapshot("img_1", "later").await.unwrap();
    }
    let b = open(&dir);
    assert_eq!(
        b.list_images().await.unwrap(),
        vec!["img_1", "snap_sha256:abc"]
    );
    let info = b.stat("img_1").await.unwrap();
    assert_eq!(info.parent.unwrap().image, "snap_sha256:abc");
    assert_eq!(info.snapshots.len(), 1);
    assert!(b
        .is_snapshot_protected("snap_sha256:abc", "v1")
        .await
        .unwrap());
    assert_eq!(
        b.metadata_get("img_1", "wwn").await.unwrap().as_deref(),
        Some("0123")
    );
    assert_eq!(
        &b.read("img_1", Some("later"), 4 * MIB - 10, 5000)
            .await
            .unwrap()[..],
        &data[..]
    );
    assert!(matches!(
        b.unprotect_snapshot("snap_sha256:abc", "v1").await,
        Err(RbdError::Busy(_))
    ));
}

#[tokio::test]
async fn names_with_colons_and_slashes_are_escaped_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(&dir);
    b.create_image("snap_sha256:ab/../cd", MIB).await.unwrap();
    b.create_snapshot("snap_sha256:ab/../cd", "sha256:x/y")
        .await
        .unwrap();
    let image_dir = dir.path().join("images").join("snap_sha256%3Aab%2F..%2Fcd");
    assert!(image_dir.join("data").is_file());
    assert!(image_dir.join("meta.json").is_file());
    assert!(image_dir.join("snaps").join("sha256%3Ax%2Fy").is_file());
    let entries: Vec<_> = std::fs::read_dir(dir.path().join("images"))
        .unwrap()
        .collect();
    assert_eq!(entries.len(), 1, "nothing escaped the images directory");
}

#[tokio::test]
async fn snapshots_and_clones_are_sparse_copies() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(&dir);
    let size = 64 * MIB;
    b.create_image("img", size).await.unwrap();
    b.write_at("img", 10 * MIB, &pattern(4096, 2))
        .await
        .unwrap();
    b.create_snapshot("img", "s").await.unwrap();
    b.protect_snapshot("img", "s").await.unwrap();
    b.clone_image("img", "s", "clone").await.unwrap();
    let img_dir = dir.path().join("images");
    for file in [img_dir.join("img/snaps/s"), img_dir.join("clone/data")] {
        let meta = std::fs::metadata(&file).unwrap();
        assert_eq!(meta.len(), size);
        assert!(
            meta.blocks() * 512 < 4 * MIB,
            "{} is sparse",
            file.display()
        );
    }
    let usage = b.pool_usage().await.unwrap();
    assert!(usage.stored < 12 * MIB, "stored {}", usage.stored);
    assert_eq!(
        read_all(&b, "clone", None).await,
        read_all(&b, "img", Some("s")).await
    );
}

#[tokio::test]
async fn pool_usage_is_configured_capacity_minus_allocated_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(&dir).with_capacity(100 * MIB);
    b.create_image("img", 8 * MIB).await.unwrap();
    let empty = b.pool_usage().await.unwrap();
    b.write_at("img", 0, &vec![1u8; 2 * MIB as usize])
        .await
        .unwrap();
    let used = b.pool_usage().await.unwrap();
    assert!(used.stored >= empty.stored + 2 * MIB, "{used:?}");
    assert_eq!(used.capacity(), 100 * MIB);
}

#[tokio::test]
async fn encryption_needs_the_ceph_backend() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(&dir);
    b.create_image("img", 32 * MIB).await.unwrap();
    assert_eq!(
        b.encryption_format("img", &Passphrase::new("pw")).await,
        Err(RbdError::Unsupported(
            "encryption needs the ceph backend".into()
        ))
    );
    let opts = WriteOptions {
        passphrase: Some(Passphrase::new("pw")),
        ..WriteOptions::default()
    };
    let res = b
        .write_stream(
            "img",
            stream_of(vec![1; 10], 10),
            opts,
            no_progress(),
            CancellationToken::new(),
        )
        .await;
    assert!(matches!(res, Err(RbdError::Unsupported(_))), "{res:?}");
}

#[tokio::test]
async fn client_key_is_a_local_placeholder() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(&dir);
    assert_eq!(
        b.client_key("client.volumes").await.unwrap(),
        LOCAL_CLIENT_KEY
    );
}

#[tokio::test]
async fn leftovers_of_interrupted_operations_are_cleaned_up_on_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let b = open(&dir);
        b.create_image("img", MIB).await.unwrap();
        b.create_snapshot("img", "kept").await.unwrap();
    }
    // A crash mid-create (staging dir), mid-remove (trash), mid-snapshot (unrecorded file) and
    // mid-resize (data length differs from meta.json).
    std::fs::create_dir_all(dir.path().join("tmp/image.1.2/snaps")).unwrap();
    std::fs::create_dir_all(dir.path().join("trash/old.3")).unwrap();
    std::fs::write(dir.path().join("images/img/snaps/orphan"), b"x").unwrap();
    let data = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.path().join("images/img/data"))
        .unwrap();
    data.set_len(3 * MIB).unwrap();
    drop(data);

    let b = open(&dir);
    assert_eq!(
        std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
        0
    );
    assert_eq!(
        std::fs::read_dir(dir.path().join("trash")).unwrap().count(),
        0
    );
    assert!(!dir.path().join("images/img/snaps/orphan").exists());
    assert!(dir.path().join("images/img/snaps/kept").exists());
    assert_eq!(
        std::fs::metadata(dir.path().join("images/img/data"))
            .unwrap()
            .len(),
        MIB
    );
    assert_eq!(b.stat("img").await.unwrap().size, MIB);
}

#[tokio::test]
async fn a_corrupt_metadata_file_fails_the_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let b = open(&dir);
        b.create_image("img", MIB).await.unwrap();
    }
    std::fs::write(dir.path().join("images/img/meta.json"), b"{not json").unwrap();
    assert!(matches!(
        LocalBackend::open(dir.path(), "pool"),
        Err(RbdError::Other(_))
    ));
}

#[tokio::test]
async fn flatten_reports_all_objects_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(&dir);
    b.create_image("p", 10 * MIB).await.unwrap();
    b.create_snapshot("p", "s").await.unwrap();
    b.protect_snapshot("p", "s").await.unwrap();
    b.clone_image("p", "s", "c").await.unwrap();
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = log.clone();
    let progress: rbd::ProgressFn =
        std::sync::Arc::new(move |d, t| sink.lock().unwrap().push((d, t)));
    b.flatten("c", progress, CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(*log.lock().unwrap(), vec![(3, 3)]);
}
