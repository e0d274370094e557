//! The fake servers as a client sees them: `FakeHttp` answers everything alike, `TokenGate` serves
//! a registry's content byte for byte, but only with the token its endpoint grants, and `RangeFake`
//! serves it openly but answers ranged blob GETs as its `RangeAnswer` says.
#![allow(clippy::unwrap_used)]

use registry_fixture::{
    mt, FakeHttp, IronImage, RangeAnswer, RangeFake, TestRegistry, TokenGate, TokenPolicy,
};

#[tokio::test]
async fn a_fake_http_server_answers_every_request_with_the_same_status_and_body() {
    let fake = FakeHttp::start(503, "application/json", br#"{"down":true}"#).await;
    let http = reqwest::Client::new();
    for path in ["/v2/", "/v2/os/image/manifests/v1"] {
        let resp = http
            .get(format!("http://{}{path}", fake.host()))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 503, "{path}");
        assert_eq!(resp.headers()["content-type"], "application/json");
        assert_eq!(resp.text().await.unwrap(), r#"{"down":true}"#);
    }
}

#[tokio::test]
async fn the_token_gate_serves_the_registry_content_only_with_the_token_it_grants() {
    let reg = TestRegistry::start();
    let pushed = reg
        .pusher()
        .push_image("os/gated", "v1", &IronImage::rootfs(b"gated os".to_vec()))
        .await;
    let gate = TokenGate::start(reg.host(), TokenPolicy::Basic("robot".into(), "pw".into())).await;
    let http = reqwest::Client::new();
    let manifest = format!("http://{}/v2/os/gated/manifests/v1", gate.host());

    let challenged = http.get(&manifest).send().await.unwrap();
    assert_eq!(challenged.status().as_u16(), 401);
    let challenge = challenged.headers()["www-authenticate"].to_str().unwrap();
    assert_eq!(
        challenge,
        format!(
            "Bearer realm=\"http://{}/token\",service=\"cephvol-gate\",\
             scope=\"repository:os/gated:pull\"",
            gate.host()
        )
    );

    let token_url = format!("http://{}/token", gate.host());
    for (user, password) in [("robot", "wrong"), ("someone", "pw")] {
        let denied = http
            .get(&token_url)
            .basic_auth(user, Some(password))
            .send()
            .await
            .unwrap();
        assert_eq!(denied.status().as_u16(), 401, "{user}:{password}");
    }
    let anonymous = http.get(&token_url).send().await.unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);
    let granted = http
        .get(&token_url)
        .basic_auth("robot", Some("pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(granted.status().as_u16(), 200);
    let granted: serde_json::Value =
        serde_json::from_slice(&granted.bytes().await.unwrap()).unwrap();
    let token = granted["token"].as_str().unwrap().to_string();

    let wrong = http
        .get(&manifest)
        .bearer_auth("not-the-token")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status().as_u16(), 401);
    let upstream = http
        .get(format!("http://{}/v2/os/gated/manifests/v1", reg.host()))
        .header("accept", mt::MANIFEST_ACCEPT)
        .send()
        .await
        .unwrap();
    let upstream_type = upstream.headers()["content-type"].clone();
    let upstream_body = upstream.bytes().await.unwrap();
    for reference in ["v1", pushed.manifest_digest.as_str()] {
        let url = format!("http://{}/v2/os/gated/manifests/{reference}", gate.host());
        let resp = http.get(&url).bearer_auth(&token).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 200, "{reference}");
        assert_eq!(resp.headers()["content-type"], upstream_type);
        assert_eq!(
            resp.headers()["docker-content-digest"],
            pushed.manifest_digest.as_str()
        );
        assert_eq!(resp.bytes().await.unwrap(), upstream_body);
    }
    let rootfs = pushed.rootfs.as_ref().unwrap();
    let blob = http
        .get(format!(
            "http://{}/v2/os/gated/blobs/{}",
            gate.host(),
            rootfs.digest
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(blob.bytes().await.unwrap().as_ref(), b"gated os");
    let unknown = http
        .get(format!("http://{}/v2/os/gated/manifests/v2", gate.host()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status().as_u16(), 404);

    let log = gate.log().await;
    assert_eq!(log.token_requests.len(), 4, "{log:?}");
    assert!(log.token_requests.iter().all(|(m, _)| m == "GET"));
    assert_eq!(log.challenged, 2, "no token, a wrong token: {log:?}");
    assert_eq!(
        log.authorized, 4,
        "two manifests, a blob, an unknown tag: {log:?}"
    );
}

#[tokio::test]
async fn the_token_gate_grants_a_refresh_token_only_by_post_with_that_token() {
    let reg = TestRegistry::start();
    let gate = TokenGate::start(reg.host(), TokenPolicy::RefreshToken("refresh-1".into())).await;
    let http = reqwest::Client::new();
    let token_url = format!("http://{}/token", gate.host());
    let post = |form: &'static str| {
        http.post(&token_url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form)
            .send()
    };
    let ok = post("grant_type=refresh_token&refresh_token=refresh-1&scope=x")
        .await
        .unwrap();
    assert_eq!(ok.status().as_u16(), 200);
    let body: serde_json::Value = serde_json::from_slice(&ok.bytes().await.unwrap()).unwrap();
    assert!(body["access_token"].is_string(), "{body}");
    for form in [
        "grant_type=refresh_token&refresh_token=other",
        "grant_type=password&refresh_token=refresh-1",
    ] {
        assert_eq!(post(form).await.unwrap().status().as_u16(), 401, "{form}");
    }
    assert_eq!(
        http.get(&token_url).send().await.unwrap().status().as_u16(),
        401
    );
    let log = gate.log().await;
    assert_eq!(log.token_requests.len(), 4, "{log:?}");
    assert_eq!(
        log.token_requests[0],
        (
            "POST".to_string(),
            "grant_type=refresh_token&refresh_token=refresh-1&scope=x".to_string()
        )
    );
}

#[tokio::test]
async fn the_range_fake_answers_ranged_blob_gets_as_told_and_everything_else_in_full() {
    let reg = TestRegistry::start();
    let pushed = reg
        .pusher()
        .push_image("os/ranged", "v1", &IronImage::rootfs(b"ranged os".to_vec()))
        .await;
    let rootfs = pushed.rootfs.as_ref().unwrap();
    let http = reqwest::Client::new();
    for (answer, status, body) in [
        (RangeAnswer::Ignored, 200, &b"ranged os"[..]),
        (RangeAnswer::WrongLength, 206, &b"ranged os"[..]),
        (
            RangeAnswer::NotSatisfiable,
            416,
            &b"requested range not satisfiable"[..],
        ),
    ] {
        let fake = RangeFake::start(reg.host(), answer).await;
        let blob = format!(
            "http://{}/v2/os/ranged/blobs/{}",
            fake.host(),
            rootfs.digest
        );
        let ranged = http
            .get(&blob)
            .header("range", "bytes=3-")
            .send()
            .await
            .unwrap();
        assert_eq!(ranged.status().as_u16(), status, "{answer:?}");
        assert_eq!(ranged.bytes().await.unwrap().as_ref(), body, "{answer:?}");
        let whole = http.get(&blob).send().await.unwrap();
        assert_eq!(whole.status().as_u16(), 200, "{answer:?}");
        assert_eq!(
            whole.headers()["docker-content-digest"],
            rootfs.digest.as_str()
        );
        assert_eq!(whole.bytes().await.unwrap().as_ref(), b"ranged os");
        let manifest = http
            .get(format!("http://{}/v2/os/ranged/manifests/v1", fake.host()))
            .header("range", "bytes=3-")
            .send()
            .await
            .unwrap();
        assert_eq!(
            manifest.status().as_u16(),
            200,
            "{answer:?}: manifests in full"
        );
        let unknown = http
            .get(format!("http://{}/v2/os/other/manifests/v1", fake.host()))
            .send()
            .await
            .unwrap();
        assert_eq!(unknown.status().as_u16(), 404, "{answer:?}");
        assert_eq!(fake.ranges().await, vec!["bytes=3-"; 2], "{answer:?}");
    }
}
