//! `OciClient::open_rootfs` against a real registry on loopback: layer classification (current,
//! legacy, unknown), missing rootfs, and the digest-verifying stream over intact and corrupted blobs.
#![allow(clippy::unwrap_used)]

use std::io;
use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use oci::{media_types as mt, OciClient, OciOptions};
use oci::{Error, Rootfs};
use registry_fixture::{pattern, sha256, IronImage, TestRegistry};
use serde_json::json;

fn source() -> OciClient {
    OciClient::new(OciOptions {
        connect_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(10),
        read_timeout: Duration::from_secs(10),
        ..OciOptions::default()
    })
    .unwrap()
}

async fn open(src: &OciClient, reference: &str, arch: Option<&str>) -> Rootfs {
    match src.open_rootfs(reference, arch).await {
        Ok(r) => r,
        Err(e) => panic!("open_rootfs({reference}): {e:?}"),
    }
}

async fn read_all(r: Rootfs) -> io::Result<Vec<u8>> {
    let chunks: Vec<Bytes> = r.data.try_collect().await?;
    Ok(chunks.concat())
}

#[tokio::test]
async fn the_rootfs_stream_yields_the_pushed_bytes_chunk_by_chunk() {
    let reg = TestRegistry::start();
    let data = pattern(3 * 1024 * 1024 + 17, 1);
    let img = IronImage {
        kernel: Some(b"kernel".to_vec()),
        command_line: Some("root=/dev/vda".into()),
        ..IronImage::rootfs(data.clone())
    };
    let pushed = reg.pusher().push_image("os/img", "v1", &img).await;
    let src = source();
    let rootfs = open(&src, &reg.reference("os/img", "v1"), None).await;
    assert_eq!(rootfs.size, data.len() as u64);
    assert_eq!(rootfs.layer_digest, sha256(&data));
    assert_eq!(rootfs.manifest_digest, pushed.manifest_digest);
    let chunks: Vec<Bytes> = rootfs.data.try_collect().await.unwrap();
    assert!(
        chunks.len() > 1,
        "a 3 MiB body arrives in several chunks, not one buffer"
    );
    assert_eq!(chunks.concat(), data);
}

#[tokio::test]
async fn the_pinned_reference_opens_the_rootfs_of_the_resolved_platform() {
    let reg = TestRegistry::start();
    let idx = reg
        .pusher()
        .push_index(
            "os/multi",
            "v1",
            &[
                ("amd64", IronImage::rootfs(b"amd64 rootfs".to_vec())),
                ("arm64", IronImage::rootfs(b"arm64 rootfs".to_vec())),
            ],
        )
        .await;
    let src = source();
    let resolved = src
        .resolve(&reg.reference("os/multi", "v1"), Some("arm64"))
        .await
        .unwrap();
    let rootfs = open(&src, &resolved.pinned(), Some("arm64")).await;
    assert_eq!(rootfs.manifest_digest, idx.arch("arm64").manifest_digest);
    assert_eq!(read_all(rootfs).await.unwrap(), b"arm64 rootfs");
    let amd = open(&src, &reg.reference("os/multi", "v1"), Some("amd64")).await;
    assert_eq!(read_all(amd).await.unwrap(), b"amd64 rootfs");
}

#[tokio::test]
async fn legacy_media_types_are_accepted() {
    let reg = TestRegistry::start();
    let img = IronImage {
        legacy: true,
        ..IronImage::rootfs(b"legacy rootfs".to_vec())
    };
    let pushed = reg.pusher().push_image("os/legacy", "v1", &img).await;
    let rootfs = open(&source(), &reg.reference("os/legacy", "v1"), None).await;
    assert_eq!(rootfs.layer_digest, pushed.rootfs.unwrap().digest);
    assert_eq!(read_all(rootfs).await.unwrap(), b"legacy rootfs");
}

#[tokio::test]
async fn a_current_rootfs_layer_wins_over_a_legacy_one_in_either_order() {
    let reg = TestRegistry::start();
    let img = IronImage {
        extra_layers: vec![(mt::ROOTFS_LEGACY.to_string(), b"legacy after".to_vec())],
        ..IronImage::rootfs(b"current".to_vec())
    };
    reg.pusher()
        .push_image("os/both", "current-first", &img)
        .await;
    let img = IronImage {
        legacy: true,
        extra_layers: vec![(mt::ROOTFS.to_string(), b"current after".to_vec())],
        ..IronImage::rootfs(b"legacy first".to_vec())
    };
    reg.pusher()
        .push_image("os/both", "legacy-first", &img)
        .await;
    let src = source();
    let r = open(&src, &reg.reference("os/both", "current-first"), None).await;
    assert_eq!(read_all(r).await.unwrap(), b"current");
    let r = open(&src, &reg.reference("os/both", "legacy-first"), None).await;
    assert_eq!(read_all(r).await.unwrap(), b"current after");
}

#[tokio::test]
async fn unknown_layer_media_types_are_ignored() {
    let reg = TestRegistry::start();
    let img = IronImage {
        extra_layers: vec![(
            "application/vnd.ironcore.image.disk.img".into(),
            b"disk".to_vec(),
        )],
        ..IronImage::rootfs(b"rootfs with a disk image beside it".to_vec())
    };
    reg.pusher().push_image("os/extra", "v1", &img).await;
    let r = open(&source(), &reg.reference("os/extra", "v1"), None).await;
    assert_eq!(
        read_all(r).await.unwrap(),
        b"rootfs with a disk image beside it"
    );
}

#[tokio::test]
async fn an_image_without_rootfs_is_no_rootfs() {
    let reg = TestRegistry::start();
    let img = IronImage {
        kernel: Some(b"kernel only".to_vec()),
        ..IronImage::default()
    };
    reg.pusher().push_image("os/kernel", "v1", &img).await;
    let src = source();
    let reference = reg.reference("os/kernel", "v1");
    // Resolving works (no layer is required); opening the rootfs does not.
    src.resolve(&reference, None).await.unwrap();
    let err = src.open_rootfs(&reference, None).await.err().unwrap();
    assert!(matches!(err, Error::NoRootfs(_)), "{err:?}");
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn a_corrupted_blob_fails_at_the_end_of_the_stream_with_invalid_data() {
    let reg = TestRegistry::start();
    let data = pattern(2 * 1024 * 1024, 2);
    let pushed = reg
        .pusher()
        .push_image("os/corrupt", "v1", &IronImage::rootfs(data.clone()))
        .await;
    reg.corrupt_blob(&pushed.rootfs.unwrap().digest);
    let rootfs = open(&source(), &reg.reference("os/corrupt", "v1"), None).await;
    let mut stream = rootfs.data;
    let mut got = 0usize;
    let err = loop {
        match stream.next().await {
            Some(Ok(chunk)) => got += chunk.len(),
            Some(Err(e)) => break e,
            None => panic!("a corrupted blob must not end cleanly"),
        }
    };
    assert_eq!(got, data.len(), "every byte arrives before the verdict");
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    let inner = err.get_ref().and_then(|e| e.downcast_ref::<Error>());
    assert!(matches!(inner, Some(Error::DigestMismatch(_))), "{err:?}");
    assert!(stream.next().await.is_none());
}

#[tokio::test]
async fn a_rootfs_descriptor_with_the_wrong_size_is_a_digest_mismatch() {
    let reg = TestRegistry::start();
    let img = IronImage {
        rootfs_size_override: Some(5),
        ..IronImage::rootfs(b"twelve bytes".to_vec())
    };
    reg.pusher().push_image("os/size", "v1", &img).await;
    let err = source()
        .open_rootfs(&reg.reference("os/size", "v1"), None)
        .await
        .err()
        .unwrap();
    assert!(matches!(err, Error::DigestMismatch(_)), "{err:?}");
    assert!(err.is_retryable());
}

#[tokio::test]
async fn an_invalid_config_blob_is_malformed() {
    let reg = TestRegistry::start();
    let p = reg.pusher();
    let mut config = p.push_blob("os/badcfg", b"[1,2,3]").await;
    config.media_type = mt::CONFIG.into();
    let mut layer = p.push_blob("os/badcfg", b"rootfs").await;
    layer.media_type = mt::ROOTFS.into();
    let manifest = json!({
        "schemaVersion": 2,
        "config": {"mediaType": config.media_type, "digest": config.digest, "size": config.size},
        "layers": [{"mediaType": layer.media_type, "digest": layer.digest, "size": layer.size}],
    });
    p.push_manifest(
        "os/badcfg",
        "v1",
        mt::OCI_MANIFEST,
        &serde_json::to_vec(&manifest).unwrap(),
    )
    .await;
    let err = source()
        .open_rootfs(&reg.reference("os/badcfg", "v1"), None)
        .await
        .err()
        .unwrap();
    assert!(matches!(err, Error::Malformed(_)), "{err:?}");
}
