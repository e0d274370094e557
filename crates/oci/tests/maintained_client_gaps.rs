//! What the maintained crates (`oci-client` 0.18 and the `oci-spec` references it uses) get wrong
//! for ironcore images, each shown against a real registry on loopback next to [`OciClient`]
//! handling the same case. The crate docs ("Why hand-written") say why each piece stays ours; a
//! test here that starts failing means the maintained crate caught up and the piece can go.
#![allow(clippy::unwrap_used)]

use std::io;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use oci::{Error, OciClient, OciOptions};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{DigestError, OciDistributionError};
use oci_client::manifest::{OciDescriptor, OciManifest};
use oci_client::secrets::RegistryAuth;
use registry_fixture::{
    mt, write_docker_config, write_docker_config_json, IronImage, TestRegistry, TokenGate,
    TokenPolicy, TEST_PASSWORD, TEST_USER,
};
use serde_json::json;

/// An `oci-client` client as its docs suggest, reaching hosts over plain HTTP (the fixture serves
/// no TLS), with its default platform resolver.
fn maintained() -> oci_client::Client {
    maintained_with(ClientProtocol::Http)
}

fn maintained_with(protocol: ClientProtocol) -> oci_client::Client {
    // Built without a crypto provider of its own (see the workspace Cargo.toml).
    let _ = rustls::crypto::ring::default_provider().install_default();
    oci_client::Client::try_from(ClientConfig {
        protocol,
        ..ClientConfig::default()
    })
    .unwrap()
}

fn ours() -> OciClient {
    ours_with(None)
}

fn ours_with(docker_config: Option<std::path::PathBuf>) -> OciClient {
    OciClient::new(OciOptions {
        docker_config: docker_config.or_else(|| Some("/nonexistent/config.json".into())),
        connect_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(10),
        read_timeout: Duration::from_secs(10),
        ..OciOptions::default()
    })
    .unwrap()
}

fn image(reference: &str) -> oci_client::Reference {
    reference.parse().unwrap()
}

#[tokio::test]
async fn oci_spec_normalises_references_that_ironcore_takes_as_written() {
    // No host: oci-spec makes it a Docker Hub library image; ironcore needs an explicit host.
    let hub: oci_client::Reference = "ubuntu:22.04".parse().unwrap();
    assert_eq!(hub.registry(), "docker.io");
    assert_eq!(hub.repository(), "library/ubuntu");
    assert!(matches!(
        ours().resolve("ubuntu:22.04", None).await,
        Err(Error::InvalidReference(_))
    ));
    // No tag: oci-spec adds `latest`; ironcore needs a tag or a digest.
    let untagged: oci_client::Reference = "ghcr.io/os/image".parse().unwrap();
    assert_eq!(untagged.tag(), Some("latest"));
    assert!(matches!(
        ours().resolve("ghcr.io/os/image", None).await,
        Err(Error::InvalidReference(_))
    ));
    // A bracketed IPv6 registry: oci-spec refuses it, ironcore (like containerd) takes it.
    assert!("[::1]:5000/os/image:v1"
        .parse::<oci_client::Reference>()
        .is_err());
    let r = oci::Reference::parse("[::1]:5000/os/image:v1").unwrap();
    assert_eq!(r.host(), "[::1]:5000");
    // A registry on loopback reads the same either way.
    let reg = TestRegistry::start();
    let pushed = reg
        .pusher()
        .push_image("os/ref", "v1", &IronImage::rootfs(b"x".to_vec()))
        .await;
    let (_, digest) = maintained()
        .pull_manifest(
            &image(&reg.reference("os/ref", "v1")),
            &RegistryAuth::Anonymous,
        )
        .await
        .unwrap();
    assert_eq!(digest, pushed.manifest_digest);
    let resolved = ours()
        .resolve(&reg.reference("os/ref", "v1"), None)
        .await
        .unwrap();
    assert_eq!(resolved.digest, pushed.manifest_digest);
}

#[tokio::test]
async fn oci_client_resolves_an_index_for_this_machine_where_ironcore_needs_an_architecture() {
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
    let reference = reg.reference("os/multi", "v1");
    // oci-client's default resolver takes the platform the test runs on.
    let here = match std::env::consts::ARCH {
        "aarch64" => "arm64",
        _ => "amd64",
    };
    let (_, digest) = maintained()
        .pull_image_manifest(&image(&reference), &RegistryAuth::Anonymous)
        .await
        .unwrap();
    assert_eq!(digest, idx.arch(here).manifest_digest);
    // ironcore: no architecture and two entries is no match.
    let err = ours().resolve(&reference, None).await.unwrap_err();
    assert!(matches!(err, Error::NoPlatformMatch(_)), "{err:?}");
    // Asked for one, both pick the same manifest; oci-client would need a client per architecture.
    let arm = ours().resolve(&reference, Some("arm64")).await.unwrap();
    assert_eq!(arm.digest, idx.arch("arm64").manifest_digest);
}

#[tokio::test]
async fn oci_client_index_entries_read_the_architecture_armbe_as_arm64be() {
    let reg = TestRegistry::start();
    let p = reg.pusher();
    let be = p
        .push_image("os/be", "be", &IronImage::rootfs(b"armbe rootfs".to_vec()))
        .await;
    p.push_raw_index(
        "os/be",
        "v1",
        vec![json!({
            "mediaType": mt::OCI_MANIFEST,
            "digest": be.manifest_digest,
            "size": be.manifest_size,
            "platform": {"architecture": "armbe", "os": "linux"},
        })],
    )
    .await;
    let reference = reg.reference("os/be", "v1");
    let (doc, _) = maintained()
        .pull_manifest(&image(&reference), &RegistryAuth::Anonymous)
        .await
        .unwrap();
    let OciManifest::ImageIndex(index) = doc else {
        panic!("an index")
    };
    let platform = index.manifests[0].platform.as_ref().unwrap();
    assert_eq!(platform.architecture.to_string(), "arm64be");
    // ironcore compares the strings as written.
    let r = ours().resolve(&reference, Some("armbe")).await.unwrap();
    assert_eq!(r.digest, be.manifest_digest);
    let err = ours()
        .resolve(&reference, Some("arm64be"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NoPlatformMatch(_)), "{err:?}");
}

#[tokio::test]
async fn oci_client_accepts_docker_manifests_and_manifest_lists() {
    let reg = TestRegistry::start();
    let p = reg.pusher();
    p.push_docker_manifest("os/docker", "v2", b"layer").await;
    p.push_docker_list("os/docker", "list", b"layer").await;
    let client = maintained();
    let (v2, _) = client
        .pull_manifest(
            &image(&reg.reference("os/docker", "v2")),
            &RegistryAuth::Anonymous,
        )
        .await
        .unwrap();
    assert!(
        matches!(&v2, OciManifest::Image(m) if m.media_type.as_deref() == Some(mt::DOCKER_MANIFEST))
    );
    let (list, _) = client
        .pull_manifest(
            &image(&reg.reference("os/docker", "list")),
            &RegistryAuth::Anonymous,
        )
        .await
        .unwrap();
    assert!(
        matches!(&list, OciManifest::ImageIndex(i) if i.media_type.as_deref() == Some(mt::DOCKER_MANIFEST_LIST))
    );
    for tag in ["v2", "list"] {
        let err = ours()
            .resolve(&reg.reference("os/docker", tag), Some("amd64"))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::Malformed(m) if m.contains("unsupported media type")),
            "{tag}: {err:?}"
        );
    }
}

#[tokio::test]
async fn the_builders_manifests_without_media_type_need_no_content_type() {
    // oci-client never looks at the Content-Type, and needs not: the shape decides.
    let reg = TestRegistry::start();
    let pushed = reg
        .pusher()
        .push_image("os/bare", "v1", &IronImage::rootfs(b"rootfs".to_vec()))
        .await;
    let reference = reg.reference("os/bare", "v1");
    let (doc, digest) = maintained()
        .pull_manifest(&image(&reference), &RegistryAuth::Anonymous)
        .await
        .unwrap();
    assert!(matches!(&doc, OciManifest::Image(m) if m.media_type.is_none()));
    assert_eq!(digest, pushed.manifest_digest);
    assert_eq!(
        ours().resolve(&reference, None).await.unwrap().digest,
        pushed.manifest_digest
    );
    // And a Docker manifest cannot be stored without its mediaType, so a Content-Type never has
    // to tell one apart from an OCI manifest.
    let p = reg.pusher();
    let config = p.push_blob("os/bare", b"{}").await;
    let layer = p.push_blob("os/bare", b"layer").await;
    let body = json!({
        "schemaVersion": 2,
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": config.digest, "size": config.size},
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": layer.digest, "size": layer.size}],
    });
    let resp = reqwest::Client::new()
        .put(format!("http://{}/v2/os/bare/manifests/docker", reg.host()))
        .basic_auth(TEST_USER, Some(TEST_PASSWORD))
        .header("content-type", mt::DOCKER_MANIFEST)
        .body(serde_json::to_vec(&body).unwrap())
        .send()
        .await
        .unwrap();
    assert!(
        resp.status().is_client_error(),
        "the registry stored a Docker manifest without mediaType: {}",
        resp.status()
    );
}

#[tokio::test]
async fn oci_client_cannot_use_an_identity_token() {
    let reg = TestRegistry::start();
    reg.pusher()
        .push_image("os/idtoken", "v1", &IronImage::rootfs(b"id os".to_vec()))
        .await;
    let gate = TokenGate::start(reg.host(), TokenPolicy::RefreshToken("refresh-123".into())).await;
    let reference = format!("{}/os/idtoken:v1", gate.host());
    // What RegistryAuth can express: Basic (with Docker's "<token>" user name or none), or the
    // identity token sent as a bearer token. None of them is the refresh-token grant.
    for auth in [
        RegistryAuth::Basic("<token>".into(), "refresh-123".into()),
        RegistryAuth::Basic(String::new(), "refresh-123".into()),
        RegistryAuth::Bearer("refresh-123".into()),
    ] {
        let err = maintained()
            .pull_manifest(&image(&reference), &auth)
            .await
            .unwrap_err();
        assert!(
            matches!(err, OciDistributionError::UnauthorizedError { .. }),
            "{auth:?}: {err:?}"
        );
    }
    let before = gate.log().await;
    assert!(
        before.token_requests.iter().all(|(m, _)| m == "GET"),
        "oci-client only GETs tokens: {before:?}"
    );
    // Ours exchanges it with a form POST and reads the image.
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_docker_config_json(
        dir.path(),
        &json!({"auths": {gate.host(): {"auth": "", "identitytoken": "refresh-123"}}}),
    );
    let src = ours_with(Some(cfg));
    let rootfs = src.open_rootfs(&reference, None).await.unwrap();
    let chunks: Vec<Bytes> = rootfs.data.try_collect().await.unwrap();
    assert_eq!(chunks.concat(), b"id os");
    let log = gate.log().await;
    assert!(
        log.token_requests
            .iter()
            .any(|(m, form)| m == "POST" && form.contains("grant_type=refresh_token")),
        "{log:?}"
    );
}

#[tokio::test]
async fn an_oci_client_keeps_the_first_credentials_it_was_given_for_a_registry() {
    let reg = TestRegistry::start_with_basic_auth();
    reg.pusher()
        .push_image("os/private", "v1", &IronImage::rootfs(b"secret".to_vec()))
        .await;
    let reference = reg.reference("os/private", "v1");
    let wrong = RegistryAuth::Basic(TEST_USER.into(), "wrong".into());
    let right = RegistryAuth::Basic(TEST_USER.into(), TEST_PASSWORD.into());
    let client = maintained();
    assert!(client
        .pull_manifest(&image(&reference), &wrong)
        .await
        .is_err());
    let err = client
        .pull_manifest(&image(&reference), &right)
        .await
        .unwrap_err();
    assert!(
        matches!(err, OciDistributionError::UnauthorizedError { .. }),
        "the right password is ignored: {err:?}"
    );
    // A new client takes it: the old one kept the wrong password.
    assert!(maintained()
        .pull_manifest(&image(&reference), &right)
        .await
        .is_ok());
    // Ours reads the Docker config on every call: fixing it heals the same client.
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_docker_config(dir.path(), reg.host(), TEST_USER, "wrong");
    let src = ours_with(Some(cfg));
    let err = src.resolve(&reference, None).await.unwrap_err();
    assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
    write_docker_config(dir.path(), reg.host(), TEST_USER, TEST_PASSWORD);
    src.resolve(&reference, None).await.unwrap();
}

#[tokio::test]
async fn oci_client_reaches_loopback_registries_over_https_unless_listed() {
    let reg = TestRegistry::start();
    reg.pusher()
        .push_image("os/local", "v1", &IronImage::rootfs(b"x".to_vec()))
        .await;
    let reference = reg.reference("os/local", "v1");
    for protocol in [
        ClientProtocol::Https,
        ClientProtocol::HttpsExcept(Vec::new()),
    ] {
        let err = maintained_with(protocol.clone())
            .pull_manifest(&image(&reference), &RegistryAuth::Anonymous)
            .await
            .unwrap_err();
        assert!(
            matches!(err, OciDistributionError::RequestError(_)),
            "{protocol:?}: {err:?}"
        );
    }
    // Ours, with default options, reaches loopback over plain HTTP as containerd does.
    ours().resolve(&reference, None).await.unwrap();
}

#[tokio::test]
async fn oci_client_blob_streams_do_not_check_the_descriptor_size() {
    let reg = TestRegistry::start();
    let img = IronImage {
        rootfs_size_override: Some(5),
        ..IronImage::rootfs(b"twelve bytes".to_vec())
    };
    let pushed = reg.pusher().push_image("os/size", "v1", &img).await;
    let reference = reg.reference("os/size", "v1");
    let rootfs = pushed.rootfs.unwrap();
    let described = OciDescriptor {
        media_type: mt::ROOTFS.into(),
        digest: rootfs.digest.clone(),
        size: 5,
        ..OciDescriptor::default()
    };
    let stream = maintained()
        .pull_blob_stream(&image(&reference), &described)
        .await
        .unwrap();
    let chunks: Vec<Bytes> = stream.try_collect().await.unwrap();
    assert_eq!(
        chunks.concat(),
        b"twelve bytes",
        "all 12 bytes of a 5-byte layer, and no error"
    );
    let err = ours().open_rootfs(&reference, None).await.err().unwrap();
    assert!(matches!(err, Error::DigestMismatch(_)), "{err:?}");
}

#[tokio::test]
async fn oci_client_reports_a_corrupt_blob_as_an_error_of_kind_other() {
    let reg = TestRegistry::start();
    let pushed = reg
        .pusher()
        .push_image(
            "os/corrupt",
            "v1",
            &IronImage::rootfs(b"intact rootfs".to_vec()),
        )
        .await;
    let rootfs = pushed.rootfs.unwrap();
    reg.corrupt_blob(&rootfs.digest);
    let reference = reg.reference("os/corrupt", "v1");
    let described = OciDescriptor {
        media_type: mt::ROOTFS.into(),
        digest: rootfs.digest.clone(),
        size: rootfs.size as i64,
        ..OciDescriptor::default()
    };
    let stream = maintained()
        .pull_blob_stream(&image(&reference), &described)
        .await
        .unwrap();
    let err = stream.try_collect::<Vec<Bytes>>().await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::Other);
    assert!(err
        .get_ref()
        .unwrap()
        .downcast_ref::<DigestError>()
        .is_some());
    // Ours: InvalidData wrapping DigestMismatch, as the volume writer expects.
    let ours = ours().open_rootfs(&reference, None).await.unwrap();
    let err = ours.data.try_collect::<Vec<Bytes>>().await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    let inner = err.get_ref().and_then(|e| e.downcast_ref::<Error>());
    assert!(matches!(inner, Some(Error::DigestMismatch(_))), "{err:?}");
}

#[tokio::test(start_paused = true)]
async fn oci_client_waits_forever_for_a_registry_that_never_answers() {
    // A listener whose connections are accepted by the kernel and never answered. The clock is
    // paused: every timer, oci-client's included, fires in order without real waiting.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let host = silent.local_addr().unwrap().to_string();
    let reference = format!("{host}/os/image:v1");
    let stalled = tokio::time::timeout(
        Duration::from_secs(3600),
        maintained().pull_manifest(&image(&reference), &RegistryAuth::Anonymous),
    )
    .await;
    assert!(
        stalled.is_err(),
        "oci-client gave up by itself: {stalled:?}"
    );
    // Ours bounds the request as a whole.
    let src = OciClient::new(OciOptions {
        docker_config: Some("/nonexistent/config.json".into()),
        request_timeout: Duration::from_millis(500),
        ..OciOptions::default()
    })
    .unwrap();
    let err = src.resolve(&reference, None).await.unwrap_err();
    assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
    drop(silent);
}
