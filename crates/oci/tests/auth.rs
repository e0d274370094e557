//! Registry credentials from a Docker config file: HTTP Basic against a real `docker-registry` with
//! htpasswd, and the bearer-token flow (anonymous, Basic at the token endpoint, identity token as an
//! OAuth2 refresh token) through a token gate serving a copy of a real registry.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use oci::Error;
use oci::{OciClient, OciOptions};
use registry_fixture::{
    write_docker_config, write_docker_config_json, IronImage, TestRegistry, TokenGate, TokenPolicy,
    TEST_PASSWORD, TEST_USER,
};
use serde_json::json;

fn source(docker_config: PathBuf) -> OciClient {
    OciClient::new(OciOptions {
        docker_config: Some(docker_config),
        connect_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(10),
        read_timeout: Duration::from_secs(10),
        ..OciOptions::default()
    })
    .unwrap()
}

async fn read_rootfs(src: &OciClient, reference: &str) -> Result<Vec<u8>, Error> {
    let r = src.open_rootfs(reference, None).await?;
    let chunks: Vec<Bytes> = r.data.try_collect().await.unwrap();
    Ok(chunks.concat())
}

#[tokio::test]
async fn a_basic_auth_registry_is_read_with_credentials_from_the_docker_config() {
    let reg = TestRegistry::start_with_basic_auth();
    let pushed = reg
        .pusher()
        .push_image(
            "os/private",
            "v1",
            &IronImage::rootfs(b"secret os".to_vec()),
        )
        .await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_docker_config(dir.path(), reg.host(), TEST_USER, TEST_PASSWORD);
    let src = source(cfg);
    let reference = reg.reference("os/private", "v1");
    assert_eq!(
        src.resolve(&reference, None).await.unwrap().digest,
        pushed.manifest_digest
    );
    assert_eq!(read_rootfs(&src, &reference).await.unwrap(), b"secret os");
}

#[tokio::test]
async fn missing_or_wrong_credentials_are_access_denied_and_retryable() {
    let reg = TestRegistry::start_with_basic_auth();
    reg.pusher()
        .push_image("os/private", "v1", &IronImage::rootfs(b"x".to_vec()))
        .await;
    let dir = tempfile::tempdir().unwrap();
    let reference = reg.reference("os/private", "v1");
    let none = source(dir.path().join("missing.json"));
    let wrong = source(write_docker_config(
        dir.path(),
        reg.host(),
        TEST_USER,
        "wrong",
    ));
    for src in [none, wrong] {
        let err = src.resolve(&reference, None).await.unwrap_err();
        match &err {
            Error::Unavailable(m) => assert!(m.contains("access denied"), "{m}"),
            other => panic!("expected Unavailable, got {other:?}"),
        }
        assert!(err.is_retryable());
    }
}

#[tokio::test]
async fn an_anonymous_bearer_token_is_fetched_once_and_reused() {
    let reg = TestRegistry::start();
    reg.pusher()
        .push_image("os/public", "v1", &IronImage::rootfs(b"public os".to_vec()))
        .await;
    let gate = TokenGate::start(reg.host(), TokenPolicy::Anonymous).await;
    let dir = tempfile::tempdir().unwrap();
    let src = source(dir.path().join("missing.json"));
    let reference = format!("{}/os/public:v1", gate.host());
    src.resolve(&reference, None).await.unwrap();
    assert_eq!(read_rootfs(&src, &reference).await.unwrap(), b"public os");
    let log = gate.log().await;
    assert_eq!(log.token_requests.len(), 1, "{log:?}");
    let (method, query) = &log.token_requests[0];
    assert_eq!(method, "GET");
    assert!(
        query.contains("scope=repository%3Aos%2Fpublic%3Apull"),
        "{query}"
    );
    assert!(query.contains("service=cephvol-gate"), "{query}");
    assert_eq!(log.challenged, 1);
    assert!(
        log.authorized >= 4,
        "manifest, manifest, config, rootfs: {log:?}"
    );
}

#[tokio::test]
async fn basic_credentials_are_sent_to_the_token_endpoint() {
    let reg = TestRegistry::start();
    reg.pusher()
        .push_image(
            "os/private",
            "v1",
            &IronImage::rootfs(b"private os".to_vec()),
        )
        .await;
    let gate = TokenGate::start(reg.host(), TokenPolicy::Basic("robot".into(), "pw".into())).await;
    let dir = tempfile::tempdir().unwrap();
    let reference = format!("{}/os/private:v1", gate.host());

    let anonymous = source(dir.path().join("missing.json"));
    let err = anonymous.resolve(&reference, None).await.unwrap_err();
    assert!(matches!(err, Error::Unavailable(_)), "{err:?}");

    let cfg = write_docker_config(dir.path(), gate.host(), "robot", "pw");
    let src = source(cfg);
    assert_eq!(read_rootfs(&src, &reference).await.unwrap(), b"private os");
}

#[tokio::test]
async fn an_identity_token_is_exchanged_with_the_refresh_token_grant() {
    let reg = TestRegistry::start();
    reg.pusher()
        .push_image("os/idtoken", "v1", &IronImage::rootfs(b"id os".to_vec()))
        .await;
    let gate = TokenGate::start(reg.host(), TokenPolicy::RefreshToken("refresh-123".into())).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_docker_config_json(
        dir.path(),
        &json!({"auths": {gate.host(): {"auth": "", "identitytoken": "refresh-123"}}}),
    );
    let src = source(cfg);
    let reference = format!("{}/os/idtoken:v1", gate.host());
    assert_eq!(read_rootfs(&src, &reference).await.unwrap(), b"id os");
    let log = gate.log().await;
    let (method, form) = &log.token_requests[0];
    assert_eq!(method, "POST");
    assert!(form.contains("grant_type=refresh_token"), "{form}");
    assert!(
        form.contains("scope=repository%3Aos%2Fidtoken%3Apull"),
        "{form}"
    );
}
