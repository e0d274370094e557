//! Rules on image metadata, encryption formatting, pool figures and client keys.

use rbd::{BlockBackend, Passphrase, PoolUsage};

use super::support::{cleanup, name};
use super::SIZE;

/// Image metadata can be set, overwritten, read and listed; unset keys read as `None`.
pub(super) async fn metadata_is_set_listed_and_read_back(b: &dyn BlockBackend, ns: &str) {
    cleanup(b, ns).await;
    let img = name(ns, "img");
    b.create_image(&img, SIZE).await.expect("create");
    assert_eq!(b.metadata_get(&img, "wwn").await.expect("get"), None);
    b.metadata_set(&img, "wwn", "1").await.expect("set");
    b.metadata_set(&img, "wwn", "2").await.expect("overwrite");
    b.metadata_set(&img, "conf_rbd_qos_bps_limit", "10")
        .await
        .expect("set");
    assert_eq!(
        b.metadata_get(&img, "wwn").await.expect("get"),
        Some("2".into())
    );
    let all = b.metadata_list(&img).await.expect("list");
    let want: std::collections::BTreeMap<String, String> = [
        ("conf_rbd_qos_bps_limit".to_string(), "10".to_string()),
        ("wwn".to_string(), "2".to_string()),
    ]
    .into();
    assert_eq!(all, want);
    cleanup(b, ns).await;
}

/// `metadata_set_all` sets every value in order (a later one for the same key wins) and keeps
/// the keys it does not name; on a missing image it is `NotFound`.
pub(super) async fn metadata_set_all_sets_every_value_in_order(b: &dyn BlockBackend, ns: &str) {
    cleanup(b, ns).await;
    let img = name(ns, "img");
    b.create_image(&img, SIZE).await.expect("create");
    b.metadata_set(&img, "kept", "k").await.expect("set");
    let entries: Vec<(String, String)> = [
        ("wwn", "1"),
        ("conf_rbd_qos_iops_limit", "300"),
        ("conf_rbd_qos_bps_limit", "1000"),
        ("wwn", "2"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    b.metadata_set_all(&img, &entries).await.expect("set all");
    let want: std::collections::BTreeMap<String, String> = [
        ("conf_rbd_qos_bps_limit", "1000"),
        ("conf_rbd_qos_iops_limit", "300"),
        ("kept", "k"),
        ("wwn", "2"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(b.metadata_list(&img).await.expect("list"), want);
    let missing = b.metadata_set_all(&name(ns, "missing"), &entries).await;
    assert!(
        matches!(missing, Err(rbd::RbdError::NotFound(_))),
        "{missing:?}"
    );
    cleanup(b, ns).await;
}

/// Formatting a clone for encryption is `Unsupported` (Ceph Pacific).
pub(super) async fn encryption_format_of_clone_is_unsupported(b: &dyn BlockBackend, ns: &str) {
    cleanup(b, ns).await;
    let parent = name(ns, "parent");
    b.create_image(&parent, 32 * 1024 * 1024)
        .await
        .expect("create");
    b.create_snapshot(&parent, "s1").await.expect("snapshot");
    b.protect_snapshot(&parent, "s1").await.expect("protect");
    let child = name(ns, "child");
    b.clone_image(&parent, "s1", &child).await.expect("clone");
    assert_err!(
        b.encryption_format(&child, &Passphrase::new("secret"))
            .await,
        Unsupported,
        "format a clone"
    );
    cleanup(b, ns).await;
}

/// Pool figures are consistent: capacity is `max_avail + stored`.
pub(super) async fn pool_usage_capacity_is_max_avail_plus_stored(b: &dyn BlockBackend, _ns: &str) {
    let usage: PoolUsage = b.pool_usage().await.expect("pool_usage");
    assert_eq!(
        usage.capacity(),
        usage.max_avail.saturating_add(usage.stored)
    );
    assert!(usage.capacity() > 0, "a pool has some capacity");
}

/// `client_key` of the admin client is non-empty and stable.
pub(super) async fn client_key_is_stable(b: &dyn BlockBackend, _ns: &str) {
    let k1 = b.client_key("client.admin").await.expect("client_key");
    let k2 = b.client_key("client.admin").await.expect("client_key");
    assert!(!k1.is_empty());
    assert_eq!(k1, k2);
}
