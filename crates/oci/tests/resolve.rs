//! `OciClient::resolve` against a real registry on loopback (Debian's `docker-registry`):
//! tags and digests, the ironcore platform pick (exact `linux/<arch>`, variant ignored; without an
//! architecture only a one-entry index), and the error classes; broken registries are played by
//! `FakeHttp`.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use oci::Error;
use oci::{media_types as mt, OciClient, OciOptions};
use registry_fixture::{closed_port_host, FakeHttp, IronImage, TestRegistry};
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

#[tokio::test]
async fn a_tag_of_a_single_arch_manifest_resolves_to_the_manifest_digest() {
    let reg = TestRegistry::start();
    let pushed = reg
        .pusher()
        .push_image("os/single", "v1", &IronImage::rootfs(b"rootfs".to_vec()))
        .await;
    let r = source()
        .resolve(&reg.reference("os/single", "v1"), None)
        .await
        .unwrap();
    assert_eq!(r.digest, pushed.manifest_digest);
    assert_eq!(r.locator, format!("{}/os/single", reg.host()));
    assert_eq!(r.pinned(), reg.pinned("os/single", &pushed.manifest_digest));
}

#[tokio::test]
async fn a_digest_reference_resolves_to_the_same_snapshot_id_as_its_tag() {
    let reg = TestRegistry::start();
    let pushed = reg
        .pusher()
        .push_image("os/single", "v1", &IronImage::rootfs(b"rootfs".to_vec()))
        .await;
    let src = source();
    let by_tag = src
        .resolve(&reg.reference("os/single", "v1"), None)
        .await
        .unwrap();
    let by_digest = src.resolve(&by_tag.pinned(), None).await.unwrap();
    assert_eq!(by_digest, by_tag);
    let both = format!("{}/os/single:v1@{}", reg.host(), pushed.manifest_digest);
    assert_eq!(
        src.resolve(&both, None).await.unwrap().digest,
        pushed.manifest_digest
    );
}

#[tokio::test]
async fn a_direct_manifest_reference_ignores_the_requested_architecture() {
    let reg = TestRegistry::start();
    let pushed = reg
        .pusher()
        .push_image("os/single", "v1", &IronImage::rootfs(b"x".to_vec()))
        .await;
    let r = source()
        .resolve(&reg.reference("os/single", "v1"), Some("arm64"))
        .await
        .unwrap();
    assert_eq!(r.digest, pushed.manifest_digest);
}

#[tokio::test]
async fn a_multi_arch_index_resolves_to_the_platform_manifest_and_never_the_index() {
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
    let reference = reg.reference("os/multi", "v1");
    let amd = src.resolve(&reference, Some("amd64")).await.unwrap();
    let arm = src.resolve(&reference, Some("arm64")).await.unwrap();
    assert_eq!(amd.digest, idx.arch("amd64").manifest_digest);
    assert_eq!(arm.digest, idx.arch("arm64").manifest_digest);
    assert_ne!(amd.digest, idx.index_digest);
    // The index digest itself resolves the same way.
    let by_index_digest = reg.pinned("os/multi", &idx.index_digest);
    assert_eq!(
        src.resolve(&by_index_digest, Some("arm64"))
            .await
            .unwrap()
            .digest,
        arm.digest
    );
    // The per-arch tags the builder pushes are plain manifests.
    let amd_tag = src
        .resolve(&reg.reference("os/multi", "v1-amd64"), None)
        .await
        .unwrap();
    assert_eq!(amd_tag.digest, amd.digest);
}

#[tokio::test]
async fn an_index_without_the_requested_architecture_is_no_platform_match() {
    let reg = TestRegistry::start();
    reg.pusher()
        .push_index(
            "os/multi",
            "v1",
            &[("amd64", IronImage::rootfs(b"a".to_vec()))],
        )
        .await;
    let err = source()
        .resolve(&reg.reference("os/multi", "v1"), Some("arm64"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NoPlatformMatch(_)), "{err:?}");
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn without_architecture_only_a_single_entry_index_resolves() {
    let reg = TestRegistry::start();
    let p = reg.pusher();
    let one = p
        .push_index(
            "os/one",
            "v1",
            &[("arm64", IronImage::rootfs(b"only".to_vec()))],
        )
        .await;
    p.push_index(
        "os/two",
        "v1",
        &[
            ("amd64", IronImage::rootfs(b"a".to_vec())),
            ("arm64", IronImage::rootfs(b"b".to_vec())),
        ],
    )
    .await;
    let src = source();
    let r = src
        .resolve(&reg.reference("os/one", "v1"), None)
        .await
        .unwrap();
    assert_eq!(r.digest, one.arch("arm64").manifest_digest);
    let err = src
        .resolve(&reg.reference("os/two", "v1"), None)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NoPlatformMatch(_)), "{err:?}");
}

#[tokio::test]
async fn the_platform_pick_matches_os_and_architecture_exactly_and_ignores_the_variant() {
    let reg = TestRegistry::start();
    let p = reg.pusher();
    let win = p
        .push_image("os/pick", "win", &IronImage::rootfs(b"w".to_vec()))
        .await;
    let v8 = p
        .push_image("os/pick", "v8", &IronImage::rootfs(b"v8".to_vec()))
        .await;
    let plain = p
        .push_image("os/pick", "plain", &IronImage::rootfs(b"p".to_vec()))
        .await;
    let entry = |d: &registry_fixture::PushedImage, platform: serde_json::Value| json!({"mediaType": mt::OCI_MANIFEST, "digest": d.manifest_digest, "size": d.manifest_size, "platform": platform});
    p.push_raw_index(
        "os/pick",
        "v1",
        vec![
            entry(&win, json!({"architecture": "arm64", "os": "windows"})),
            entry(
                &v8,
                json!({"architecture": "arm64", "os": "linux", "variant": "v8"}),
            ),
            entry(&plain, json!({"architecture": "arm64", "os": "linux"})),
        ],
    )
    .await;
    let src = source();
    let r = src
        .resolve(&reg.reference("os/pick", "v1"), Some("arm64"))
        .await
        .unwrap();
    assert_eq!(
        r.digest, v8.manifest_digest,
        "first exact linux/arm64 entry, variant ignored"
    );
    let err = src
        .resolve(&reg.reference("os/pick", "v1"), Some("ARM64"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NoPlatformMatch(_)), "{err:?}");
}

#[tokio::test]
async fn unknown_tags_repositories_and_digests_are_not_found() {
    let reg = TestRegistry::start();
    reg.pusher()
        .push_image("os/single", "v1", &IronImage::rootfs(b"x".to_vec()))
        .await;
    let src = source();
    for reference in [
        reg.reference("os/single", "nope"),
        reg.reference("os/unknown", "v1"),
        reg.pinned("os/single", &format!("sha256:{}", "0".repeat(64))),
    ] {
        let err = src.resolve(&reference, None).await.unwrap_err();
        assert!(matches!(err, Error::NotFound(_)), "{reference}: {err:?}");
        assert!(!err.is_retryable());
    }
}

#[tokio::test]
async fn docker_manifests_and_manifest_lists_are_rejected_as_unsupported_media_types() {
    let reg = TestRegistry::start();
    let p = reg.pusher();
    p.push_docker_manifest("os/docker", "v2", b"layer").await;
    p.push_docker_list("os/docker", "list", b"layer").await;
    let src = source();
    for tag in ["v2", "list"] {
        let err = src
            .resolve(&reg.reference("os/docker", tag), Some("amd64"))
            .await
            .unwrap_err();
        match &err {
            Error::Malformed(m) => assert!(m.contains("unsupported media type"), "{m}"),
            other => panic!("{tag}: expected Malformed, got {other:?}"),
        }
        assert!(!err.is_retryable());
    }
}

#[tokio::test]
async fn references_without_an_explicit_host_or_object_are_invalid() {
    let src = source();
    for reference in [
        "ubuntu:22.04",
        "ghcr.io/os/image",
        "https://ghcr.io/os/image:v1",
        "",
    ] {
        let err = src.resolve(reference, None).await.unwrap_err();
        assert!(
            matches!(err, Error::InvalidReference(_)),
            "{reference:?}: {err:?}"
        );
    }
}

#[tokio::test]
async fn an_unreachable_registry_is_unavailable_and_retryable() {
    let src = source();
    for host in [
        closed_port_host(),
        "no-such-registry.invalid:5000".to_string(),
    ] {
        let err = src
            .resolve(&format!("{host}/os/image:v1"), None)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Unavailable(_)), "{host}: {err:?}");
        assert!(err.is_retryable());
    }
}

#[tokio::test]
async fn a_registry_answering_server_errors_is_unavailable() {
    let fake = FakeHttp::start(
        503,
        "application/json",
        br#"{"errors":[{"code":"UNAVAILABLE","message":"down"}]}"#,
    )
    .await;
    let err = source()
        .resolve(&format!("{}/os/image:v1", fake.host()), None)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
    assert!(err.is_retryable());
}

#[tokio::test]
async fn a_manifest_that_is_not_json_is_malformed() {
    let fake = FakeHttp::start(200, mt::OCI_MANIFEST, b"<html>not a manifest</html>").await;
    let err = source()
        .resolve(&format!("{}/os/image:v1", fake.host()), None)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Malformed(_)), "{err:?}");
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn a_manifest_whose_bytes_do_not_match_the_requested_digest_is_a_digest_mismatch() {
    let body = br#"{"schemaVersion":2,"manifests":[]}"#;
    let fake = FakeHttp::start(200, mt::OCI_INDEX, body).await;
    let wrong = format!("sha256:{}", "ab".repeat(32));
    let err = source()
        .resolve(&format!("{}/os/image@{wrong}", fake.host()), None)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::DigestMismatch(_)), "{err:?}");
}

#[tokio::test]
async fn the_registry_process_is_gone_after_drop() {
    let reg = TestRegistry::start();
    let pid = reg.pid();
    let host = reg.host().to_string();
    drop(reg);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "registry {pid} leaked"
    );
    let err = source()
        .resolve(&format!("{host}/os/image:v1"), None)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
}
