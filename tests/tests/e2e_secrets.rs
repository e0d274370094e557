//! The daemon never logs secrets: a full scenario at debug level with a known KEK, an encryption
//! passphrase and the consumers' user key, then the whole log is searched for each of them in
//! every encoding a careless log line could use.

use std::collections::BTreeMap;

use iri::volume_v1 as pb;
use tests::cephvol_bin;
use tests::daemon::{id_of, ops, restore_req, snapshot_req, volume_req, Daemon};

const KEK: &[u8; 32] = b"abcjdkekakakakakakakkadfkkasfdks";
const PASSPHRASE: &str = "correct-horse-battery-staple-42";
/// What the local backend hands consumers as `userKey`.
const USER_KEY: &str = "local-no-key";

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_logs_of_a_full_run_contain_no_key_and_no_passphrase() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kek_path = dir.path().join("kek");
    std::fs::write(&kek_path, KEK).expect("write kek");
    let kek_flag = format!("--ceph-kek-path={}", kek_path.display());
    let mut d = Daemon::start_in(cephvol_bin!(), dir, &[kek_flag.as_str()]).await;
    let mut c = d.clients().await;

    // an encrypted volume: the passphrase crosses the wire (rejected on the local backend)
    let mut enc = volume_req("standard", 1 << 20, &[]);
    enc.volume
        .as_mut()
        .and_then(|v| v.spec.as_mut())
        .expect("spec")
        .encryption = Some(pb::EncryptionSpec {
        secret_data: BTreeMap::from([(
            "encryptionKey".to_string(),
            PASSPHRASE.as_bytes().to_vec(),
        )]),
    });
    let e = c
        .runtime
        .create_volume(enc)
        .await
        .expect_err("local backend");
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert!(!e.message().contains(PASSPHRASE));

    // a full lifecycle: the user key is in every AVAILABLE reply
    let id = ops::create(
        &mut c,
        volume_req("standard", 1 << 20, &[("app", "secrets")]),
    )
    .await;
    let v = ops::wait_available(&mut c, &id).await;
    let key = v
        .status
        .expect("status")
        .access
        .expect("access")
        .secret_data["userKey"]
        .clone();
    assert_eq!(key, USER_KEY.as_bytes());
    let snap = c
        .runtime
        .create_volume_snapshot(snapshot_req(&id, &[]))
        .await
        .expect("snapshot");
    let sid = id_of(&snap.into_inner().volume_snapshot.expect("s").metadata);
    ops::wait_ready(&mut c, &sid).await;
    let rid = ops::create(&mut c, restore_req("standard", 1 << 20, &sid, &[])).await;
    ops::wait_available(&mut c, &rid).await;
    c.runtime
        .list_events(pb::ListEventsRequest::default())
        .await
        .expect("events");
    ops::delete(&mut c, &id).await;
    ops::delete(&mut c, &rid).await;
    ops::delete_snapshot(&mut c, &sid).await;
    ops::wait_volume_gone(&mut c, &id).await;
    ops::wait_volume_gone(&mut c, &rid).await;
    ops::wait_snapshot_gone(&mut c, &sid).await;
    drop(c);
    let status = d.terminate().await;
    assert!(status.success());

    let logs = d.logs();
    assert!(
        logs.contains("volume created") && logs.contains("\"level\":\"DEBUG\""),
        "a debug run was captured:\n{logs}"
    );
    let kek_str = std::str::from_utf8(KEK).expect("ascii");
    let needles = [
        ("passphrase", PASSPHRASE.to_string()),
        ("passphrase (base64)", b64(PASSPHRASE.as_bytes())),
        ("KEK", kek_str.to_string()),
        ("KEK (hex)", hex::encode(KEK)),
        ("KEK (base64)", b64(KEK)),
        (
            "KEK (byte list)",
            format!("{:?}", &KEK[..8]).trim_end_matches(']').to_string(),
        ),
        ("user key", USER_KEY.to_string()),
        ("user key (base64)", b64(USER_KEY.as_bytes())),
    ];
    for (what, needle) in needles {
        assert!(
            !logs.contains(&needle),
            "the logs contain the {what} ({needle:?})"
        );
    }
}
