//! The omap store backend against a real cluster: layout (checked with the `rados` CLI), atomic
//! preconditions with racing writers on separate connections, paged listing, and Go-written records
//! read, updated and written back through `store::Store` without loss.
#![allow(clippy::unwrap_used)]

mod ceph_support;

use std::sync::Arc;

use ceph::OmapBackend;
use ceph_support::{backend, bounded, cli, unique};
use store::{Backend, Image, Object, Precondition, Snapshot, Store, StoreError};

/// A backend on its own connection, listing `page` entries per round trip.
async fn omap(page: usize) -> OmapBackend {
    OmapBackend::for_backend(&backend().await, page).expect("omap backend")
}

/// A collection (rados object) of its own, removed at the end of the test.
struct TempCollection {
    name: String,
}

impl TempCollection {
    fn new() -> TempCollection {
        TempCollection {
            name: unique("cephvol.test.omap"),
        }
    }
}

impl Drop for TempCollection {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rados")
            .arg("-c")
            .arg(ceph_support::config().conf_file.expect("conf"))
            .args(["--id", &ceph_support::config().user])
            .arg("--keyring")
            .arg(ceph_support::config().keyring.expect("keyring"))
            .args(["-p", &ceph_support::config().pool, "rm", &self.name])
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs ceph"]
async fn keys_are_stored_as_omap_entries_of_one_object_per_collection() {
    bounded(async {
        let b = omap(1000).await;
        let c = TempCollection::new();
        assert_eq!(
            b.list(&c.name).await.expect("list of a missing object"),
            vec![]
        );
        assert_eq!(
            b.get(&c.name, "k").await.expect("get of a missing object"),
            None
        );
        b.remove(&c.name, "k", Precondition::None)
            .await
            .expect("remove of a missing object is a no-op");

        b.put(
            &c.name,
            "sha256:ab12",
            b"{\"a\":1}".to_vec(),
            Precondition::None,
        )
        .await
        .expect("put");
        b.put(&c.name, "k2", b"{}".to_vec(), Precondition::None)
            .await
            .expect("put");
        assert_eq!(
            b.get(&c.name, "sha256:ab12").await.expect("get"),
            Some(b"{\"a\":1}".to_vec())
        );
        assert_eq!(b.get(&c.name, "other").await.expect("get"), None);

        let keys = cli("rados", &["listomapkeys", &c.name]);
        assert_eq!(keys.lines().collect::<Vec<_>>(), ["k2", "sha256:ab12"]);

        b.remove(&c.name, "k2", Precondition::None)
            .await
            .expect("remove");
        b.remove(&c.name, "k2", Precondition::None)
            .await
            .expect("remove again is a no-op");
        let listed = b.list(&c.name).await.expect("list");
        assert_eq!(
            listed,
            vec![("sha256:ab12".to_string(), b"{\"a\":1}".to_vec())]
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs ceph"]
async fn preconditions_give_the_backend_contract_outcomes() {
    bounded(async {
        let b = omap(1000).await;
        let c = TempCollection::new();
        let n = &c.name;
        // Equals on a missing object / key.
        assert_eq!(
            b.put(n, "k", b"1".to_vec(), Precondition::Equals(b"0".to_vec()))
                .await,
            Err(StoreError::NotFound("k".into()))
        );
        // Absent on a missing object creates it.
        b.put(n, "k", b"1".to_vec(), Precondition::Absent)
            .await
            .expect("create");
        assert_eq!(
            b.put(n, "k", b"2".to_vec(), Precondition::Absent).await,
            Err(StoreError::AlreadyExists("k".into()))
        );
        // Absent on an existing object with another key.
        b.put(n, "j", b"1".to_vec(), Precondition::Absent)
            .await
            .expect("create second key");
        assert_eq!(
            b.put(n, "x", b"1".to_vec(), Precondition::Equals(b"1".to_vec()))
                .await,
            Err(StoreError::NotFound("x".into()))
        );
        let conflict = StoreError::Conflict {
            id: "k".into(),
            expected: 0,
            actual: 0,
        };
        assert_eq!(
            b.put(n, "k", b"2".to_vec(), Precondition::Equals(b"0".to_vec()))
                .await,
            Err(conflict.clone())
        );
        assert_eq!(
            b.get(n, "k").await.expect("get"),
            Some(b"1".to_vec()),
            "a failed check changes nothing"
        );
        b.put(n, "k", b"2".to_vec(), Precondition::Equals(b"1".to_vec()))
            .await
            .expect("cas");
        assert_eq!(b.get(n, "k").await.expect("get"), Some(b"2".to_vec()));

        assert_eq!(
            b.remove(n, "k", Precondition::Equals(b"1".to_vec())).await,
            Err(conflict)
        );
        assert_eq!(
            b.remove(n, "k", Precondition::Absent).await,
            Err(StoreError::AlreadyExists("k".into()))
        );
        b.remove(n, "nope", Precondition::Absent)
            .await
            .expect("absent key: no-op");
        b.remove(n, "k", Precondition::Equals(b"2".to_vec()))
            .await
            .expect("remove");
        assert_eq!(
            b.remove(n, "k", Precondition::Equals(b"2".to_vec())).await,
            Err(StoreError::NotFound("k".into()))
        );
        assert_eq!(b.get(n, "k").await.expect("get"), None);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs ceph"]
async fn of_two_racing_writers_exactly_one_wins_each_round() {
    bounded(async {
        // Two separate cluster connections, as two provider processes would have.
        let (a, b) = (omap(1000).await, omap(1000).await);
        for round in 0..10 {
            // Create race on a fresh object (exercises the create(exclusive) path too).
            let c = TempCollection::new();
            let (ra, rb) = tokio::join!(
                a.put(&c.name, "id", b"from-a".to_vec(), Precondition::Absent),
                b.put(&c.name, "id", b"from-b".to_vec(), Precondition::Absent),
            );
            let winners = [&ra, &rb].iter().filter(|r| r.is_ok()).count();
            assert_eq!(winners, 1, "round {round}: {ra:?} {rb:?}");
            let loser = if ra.is_ok() { rb } else { ra };
            assert_eq!(loser, Err(StoreError::AlreadyExists("id".into())));
            let stored = a.get(&c.name, "id").await.expect("get").expect("present");

            // Compare-and-set race: both saw the same bytes.
            let (ra, rb) = tokio::join!(
                a.put(
                    &c.name,
                    "id",
                    b"cas-a".to_vec(),
                    Precondition::Equals(stored.clone())
                ),
                b.put(
                    &c.name,
                    "id",
                    b"cas-b".to_vec(),
                    Precondition::Equals(stored.clone())
                ),
            );
            assert_eq!(
                [&ra, &rb].iter().filter(|r| r.is_ok()).count(),
                1,
                "round {round}: {ra:?} {rb:?}"
            );
            let loser = if ra.is_ok() { rb } else { ra };
            assert!(
                matches!(loser, Err(StoreError::Conflict { .. })),
                "{loser:?}"
            );
            let now = a.get(&c.name, "id").await.expect("get").expect("present");
            assert!(now == b"cas-a" || now == b"cas-b");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs ceph"]
async fn listing_pages_through_every_entry_with_a_small_iterator_size() {
    bounded(async {
        assert!(
            OmapBackend::for_backend(&backend().await, 0).is_err(),
            "iterator size 0 is rejected"
        );
        let b = omap(2).await;
        assert_eq!(b.iterator_size(), 2);
        let c = TempCollection::new();
        let mut expected: Vec<(String, Vec<u8>)> = (0..7)
            .map(|i| (format!("key-{i:02}"), format!("{{\"n\":{i}}}").into_bytes()))
            .collect();
        for (k, v) in &expected {
            b.put(&c.name, k, v.clone(), Precondition::Absent)
                .await
                .expect("put");
        }
        let mut listed = b.list(&c.name).await.expect("list");
        listed.sort();
        expected.sort();
        assert_eq!(listed, expected);
        let one = omap(1).await;
        assert_eq!(one.list(&c.name).await.expect("list").len(), 7);
    })
    .await;
}

/// A Go-written fixture with a fresh id (so that runs never collide), as raw JSON.
fn fixture(name: &str, id: &str) -> serde_json::Value {
    let path = format!(
        "{}/../store/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut doc: serde_json::Value = serde_json::from_str(&text).expect("fixture json");
    doc["metadata"]["id"] = serde_json::Value::String(id.to_string());
    doc
}

async fn go_record_round_trip<T: Object>(fixture_name: &str, id: String) {
    let raw = omap(1000).await;
    let doc = fixture(fixture_name, &id);
    raw.put(
        T::COLLECTION,
        &id,
        serde_json::to_vec(&doc).expect("json"),
        Precondition::Absent,
    )
    .await
    .expect("put raw");

    let store: Store<T> = Store::open(Arc::new(omap(1000).await))
        .await
        .expect("store");
    let obj = store.get(&id).await.expect("read through the store");
    assert_eq!(obj.metadata().id, id);
    let mut changed = obj.clone();
    changed
        .metadata_mut()
        .labels
        .insert("cephvol.test/touched".into(), "yes".into());
    let updated = store
        .update(&changed)
        .await
        .expect("update through the store");
    assert_eq!(
        updated.metadata().resource_version,
        obj.metadata().resource_version + 1
    );

    // Everything the Go provider wrote is still there; only the label and the version changed.
    let written = raw
        .get(T::COLLECTION, &id)
        .await
        .expect("get")
        .expect("present");
    let written: serde_json::Value = serde_json::from_slice(&written).expect("json");
    let mut expected = doc.clone();
    expected["metadata"]["labels"]["cephvol.test/touched"] = "yes".into();
    let rv = doc["metadata"]["resourceVersion"].as_u64().expect("rv");
    expected["metadata"]["resourceVersion"] = (rv + 1).into();
    assert_eq!(written, expected);

    // The omap entry is where the Go provider (and its tests) look for it.
    let keys = cli("rados", &["listomapkeys", T::COLLECTION]);
    assert!(
        keys.lines().any(|k| k == id),
        "{id} not among the omap keys of {}",
        T::COLLECTION
    );

    raw.remove(T::COLLECTION, &id, Precondition::None)
        .await
        .expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs ceph"]
async fn go_written_image_records_are_read_updated_and_written_back_without_loss() {
    bounded(async {
        go_record_round_trip::<Image>("image_available.json", store::new_id()).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs ceph"]
async fn go_written_snapshot_records_are_read_updated_and_written_back_without_loss() {
    bounded(async {
        let id = format!("sha256:{}", store::new_id());
        go_record_round_trip::<Snapshot>("snapshot_os_ready.json", id).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs ceph"]
async fn store_updates_with_a_stale_version_conflict_across_processes() {
    bounded(async {
        // Two stores on two connections: the per-process lock cannot help, the omap compare must.
        let s1: Store<Image> = Store::open(Arc::new(omap(1000).await))
            .await
            .expect("store");
        let s2: Store<Image> = Store::open(Arc::new(omap(1000).await))
            .await
            .expect("store");
        let doc = fixture("image_available.json", &store::new_id());
        let img: Image = serde_json::from_value(doc).expect("image");
        let created = s1.create(img).await.expect("create");
        let id = created.metadata.id.clone();
        let seen_by_2 = s2.get(&id).await.expect("get");

        let mut a = created.clone();
        a.metadata.labels.insert("writer".into(), "1".into());
        let mut b = seen_by_2.clone();
        b.metadata.labels.insert("writer".into(), "2".into());
        let (ra, rb) = tokio::join!(s1.update(&a), s2.update(&b));
        assert_eq!(
            [ra.is_ok(), rb.is_ok()].iter().filter(|ok| **ok).count(),
            1,
            "{ra:?} {rb:?}"
        );
        let loser = if ra.is_ok() { rb } else { ra };
        assert!(
            matches!(loser, Err(StoreError::Conflict { .. })),
            "{loser:?}"
        );

        let mut last = s1.get(&id).await.expect("get");
        last.metadata.finalizers.clear();
        let last = s1.update(&last).await.expect("drop finalizers");
        s1.delete(&last.metadata.id).await.expect("delete");
        assert!(matches!(s2.get(&id).await, Err(StoreError::NotFound(_))));
    })
    .await;
}
