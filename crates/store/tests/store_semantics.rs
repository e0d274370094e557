//! Store semantics (the Go store's, with its quirks fixed), one rule per test.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use store::{
    keys, Backend, HostDirBackend, Image, ImageSpec, ImageState, ImageStatus, ListOptions,
    MemoryBackend, Precondition, Snapshot, SnapshotSource, SnapshotState, Store, StoreError,
    StoreOptions, WatchEvent, FIELD_SNAPSHOT_REF,
};

fn image(id: &str) -> Image {
    Image::new(
        id,
        ImageSpec {
            size: 1 << 20,
            ..ImageSpec::default()
        },
    )
}

fn labelled(id: &str, k: &str, v: &str) -> Image {
    let mut img = image(id);
    img.metadata.labels.insert(k.to_owned(), v.to_owned());
    img
}

fn with_finalizer(id: &str) -> Image {
    let mut img = image(id);
    img.metadata.add_finalizer(keys::IMAGE_FINALIZER);
    img
}

async fn memory_store() -> (MemoryBackend, Store<Image>) {
    let backend = MemoryBackend::new();
    let store = Store::open(Arc::new(backend.clone())).await.expect("open");
    (backend, store)
}

fn drain<T>(w: &mut store::Watch<T>) -> Vec<WatchEvent<T>> {
    std::iter::from_fn(|| w.try_recv()).collect()
}

fn kinds(events: &[WatchEvent<Image>]) -> Vec<(&'static str, String, u64)> {
    events
        .iter()
        .map(|e| match e {
            WatchEvent::Created(o) => (
                "Created",
                o.metadata.id.clone(),
                o.metadata.resource_version,
            ),
            WatchEvent::Updated(o) => (
                "Updated",
                o.metadata.id.clone(),
                o.metadata.resource_version,
            ),
            WatchEvent::Deleted(o) => (
                "Deleted",
                o.metadata.id.clone(),
                o.metadata.resource_version,
            ),
            WatchEvent::Resync => ("Resync", String::new(), 0),
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------- create

#[tokio::test]
async fn create_sets_version_one_created_at_and_a_pending_status() {
    let (_, s) = memory_store().await;
    let mut img = image("a");
    img.status = ImageStatus {
        state: ImageState::Available,
        size: 9,
        message: "x".into(),
        ..Default::default()
    };
    img.metadata.resource_version = 41;
    img.metadata.deleted_at = Some(chrono::Utc::now());
    let before = chrono::Utc::now();
    let created = s.create(img).await.expect("create");
    assert_eq!(created.metadata.resource_version, 1);
    assert!(created.metadata.created_at >= before);
    assert_eq!(created.metadata.deleted_at, None);
    assert_eq!(created.status, ImageStatus::default());
    assert_eq!(s.get("a").await.expect("get"), created);
}

#[tokio::test]
async fn create_generates_a_new_wwn_overwriting_the_callers() {
    let (_, s) = memory_store().await;
    let mut img = image("a");
    img.spec.wwn = "caller-value".into();
    let created = s.create(img).await.expect("create");
    assert_eq!(created.spec.wwn.len(), 16);
    assert!(created.spec.wwn.chars().all(|c| c.is_ascii_hexdigit()));
}

#[tokio::test]
async fn create_of_a_snapshot_resets_its_status_to_pending() {
    let s: Store<Snapshot> = Store::open(Arc::new(MemoryBackend::new()))
        .await
        .expect("open");
    let mut snap = Snapshot::new("sha256:abc", SnapshotSource::default());
    snap.status.state = SnapshotState::Ready;
    snap.status.digest = "d".into();
    let created = s.create(snap).await.expect("create");
    assert_eq!(created.status.state, SnapshotState::Pending);
    assert_eq!(created.status.digest, "");
}

#[tokio::test]
async fn create_of_an_existing_id_fails_with_already_exists_and_keeps_the_original() {
    let (_, s) = memory_store().await;
    let first = s.create(labelled("a", "v", "1")).await.expect("create");
    let err = s
        .create(labelled("a", "v", "2"))
        .await
        .expect_err("duplicate");
    assert_eq!(err, StoreError::AlreadyExists("a".into()));
    assert!(err.to_string().contains("\"a\""));
    assert_eq!(s.get("a").await.expect("get"), first);
}

#[tokio::test]
async fn an_empty_id_is_invalid() {
    let (_, s) = memory_store().await;
    assert!(matches!(
        s.create(image("")).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        s.update(&image("")).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(s.delete("").await, Err(StoreError::Invalid(_))));
}

// ---------------------------------------------------------------------------------------------- get

#[tokio::test]
async fn get_of_a_missing_id_is_not_found_naming_the_id() {
    let (_, s) = memory_store().await;
    let err = s.get("nope").await.expect_err("missing");
    assert_eq!(err, StoreError::NotFound("nope".into()));
    assert!(err.to_string().contains("nope"));
}

#[tokio::test]
async fn an_undecodable_record_is_invalid_naming_the_id() {
    let (b, s) = memory_store().await;
    b.put(
        "ironcore.csi.volumes",
        "bad",
        b"{not json".to_vec(),
        Precondition::None,
    )
    .await
    .expect("put");
    let err = s.get("bad").await.expect_err("undecodable");
    assert!(
        matches!(&err, StoreError::Invalid(m) if m.contains("bad")),
        "{err}"
    );
}

#[tokio::test]
async fn a_list_skips_an_undecodable_record_counts_it_and_returns_the_others() {
    let (b, s) = memory_store().await;
    s.create(image("a")).await.expect("create");
    b.put(
        "ironcore.csi.volumes",
        "bad",
        b"{not json".to_vec(),
        Precondition::None,
    )
    .await
    .expect("put");
    s.create(image("c")).await.expect("create");
    let listed = s.list(&ListOptions::new()).await.expect("list");
    let ids: Vec<&str> = listed.iter().map(|i| i.metadata.id.as_str()).collect();
    assert_eq!(ids, ["a", "c"]);
    assert_eq!(s.skipped_records(), 1);
    let opts = ListOptions::new().field(FIELD_SNAPSHOT_REF, "");
    assert_eq!(s.list(&opts).await.expect("list").len(), 2);
    assert_eq!(s.skipped_records(), 2, "counted once per list");
}

// ---------------------------------------------------------------------------------------------- update

#[tokio::test]
async fn update_increments_the_version_and_returns_the_stored_object() {
    let (_, s) = memory_store().await;
    let mut img = s.create(image("a")).await.expect("create");
    img.status.state = ImageState::Available;
    let updated = s.update(&img).await.expect("update");
    assert_eq!(updated.metadata.resource_version, 2);
    assert_eq!(updated.status.state, ImageState::Available);
    assert_eq!(s.get("a").await.expect("get"), updated);
    // Continuing with the returned object works; continuing with the old one conflicts.
    let mut next = updated.clone();
    next.status.size = 7;
    assert_eq!(
        s.update(&next)
            .await
            .expect("update")
            .metadata
            .resource_version,
        3
    );
}

#[tokio::test]
async fn update_with_a_stale_version_fails_with_conflict_naming_both_versions() {
    let (_, s) = memory_store().await;
    let mut img = s.create(image("a")).await.expect("create");
    img.status.size = 1;
    s.update(&img).await.expect("first update");
    img.status.size = 2;
    let err = s.update(&img).await.expect_err("stale");
    assert_eq!(
        err,
        StoreError::Conflict {
            id: "a".into(),
            expected: 1,
            actual: 2
        }
    );
    assert!(
        err.to_string().contains("\"a\"")
            && err.to_string().contains('1')
            && err.to_string().contains('2')
    );
    assert_eq!(s.get("a").await.expect("get").status.size, 1);
}

#[tokio::test]
async fn update_of_a_missing_object_is_not_found() {
    let (_, s) = memory_store().await;
    assert_eq!(
        s.update(&image("a")).await,
        Err(StoreError::NotFound("a".into()))
    );
}

#[tokio::test]
async fn update_can_neither_set_nor_clear_deleted_at_nor_change_created_at() {
    let (_, s) = memory_store().await;
    let created = s.create(with_finalizer("a")).await.expect("create");
    let mut img = created.clone();
    img.metadata.deleted_at = Some(chrono::Utc::now());
    img.metadata.created_at = store::zero_time();
    img.status.size = 1;
    let updated = s.update(&img).await.expect("update");
    assert_eq!(
        updated.metadata.deleted_at, None,
        "update cannot set deletedAt"
    );
    assert_eq!(updated.metadata.created_at, created.metadata.created_at);

    s.delete("a").await.expect("delete");
    let deleted = s.get("a").await.expect("still there");
    let mut img = deleted.clone();
    img.metadata.deleted_at = None;
    img.status.size = 2;
    let updated = s.update(&img).await.expect("update");
    assert_eq!(
        updated.metadata.deleted_at, deleted.metadata.deleted_at,
        "update cannot clear deletedAt"
    );
}

#[tokio::test]
async fn an_update_that_changes_nothing_writes_nothing_and_emits_nothing() {
    let (_, s) = memory_store().await;
    let img = s.create(image("a")).await.expect("create");
    let mut w = s.watch(ListOptions::new()).expect("watch");
    let same = s.update(&img).await.expect("no-op update");
    assert_eq!(same, img);
    assert!(drain(&mut w).is_empty());
}

#[tokio::test]
async fn dropping_the_last_finalizer_of_a_deleted_object_removes_it_and_emits_deleted() {
    let (_, s) = memory_store().await;
    s.create(with_finalizer("a")).await.expect("create");
    s.delete("a").await.expect("soft delete");
    let mut w = s.watch(ListOptions::new()).expect("watch");
    let mut img = s.get("a").await.expect("get");
    assert!(img.metadata.remove_finalizer(keys::IMAGE_FINALIZER));
    let last = s.update(&img).await.expect("final update");
    assert_eq!(
        last.metadata.resource_version,
        img.metadata.resource_version + 1
    );
    assert!(last.metadata.is_deleted());
    assert_eq!(s.get("a").await, Err(StoreError::NotFound("a".into())));
    assert_eq!(drain(&mut w), vec![WatchEvent::Deleted(last)]);
}

#[tokio::test]
async fn dropping_the_last_finalizer_with_a_stale_version_conflicts_and_keeps_the_object() {
    let (_, s) = memory_store().await;
    s.create(with_finalizer("a")).await.expect("create");
    let mut stale = s.get("a").await.expect("get");
    s.delete("a").await.expect("soft delete");
    stale.metadata.finalizers.clear();
    assert!(matches!(
        s.update(&stale).await,
        Err(StoreError::Conflict {
            expected: 1,
            actual: 2,
            ..
        })
    ));
    assert!(s.get("a").await.is_ok());
}

#[tokio::test]
async fn dropping_finalizers_of_a_live_object_keeps_it() {
    let (_, s) = memory_store().await;
    let mut img = s.create(with_finalizer("a")).await.expect("create");
    img.metadata.finalizers.clear();
    let updated = s.update(&img).await.expect("update");
    assert!(updated.metadata.finalizers.is_empty());
    assert_eq!(s.get("a").await.expect("still there"), updated);
}

// ---------------------------------------------------------------------------------------------- delete

#[tokio::test]
async fn delete_without_finalizers_removes_at_once_and_emits_deleted() {
    let (_, s) = memory_store().await;
    let img = s.create(image("a")).await.expect("create");
    let mut w = s.watch(ListOptions::new()).expect("watch");
    s.delete("a").await.expect("delete");
    assert_eq!(s.get("a").await, Err(StoreError::NotFound("a".into())));
    let events = drain(&mut w);
    assert_eq!(kinds(&events), vec![("Deleted", "a".to_owned(), 2)]);
    let last = events[0].object().expect("object");
    assert!(last.metadata.is_deleted());
    assert_eq!(last.spec, img.spec);
}

#[tokio::test]
async fn delete_with_finalizers_sets_deleted_at_bumps_the_version_and_emits_updated() {
    let (_, s) = memory_store().await;
    s.create(with_finalizer("a")).await.expect("create");
    let mut w = s.watch(ListOptions::new()).expect("watch");
    s.delete("a").await.expect("delete");
    let img = s.get("a").await.expect("still there");
    assert!(img.metadata.is_deleted());
    assert_eq!(img.metadata.resource_version, 2);
    assert_eq!(drain(&mut w), vec![WatchEvent::Updated(img)]);
}

#[tokio::test]
async fn deleting_an_object_that_is_already_being_deleted_is_a_no_op() {
    let (_, s) = memory_store().await;
    s.create(with_finalizer("a")).await.expect("create");
    s.delete("a").await.expect("delete");
    let before = s.get("a").await.expect("get");
    let mut w = s.watch(ListOptions::new()).expect("watch");
    s.delete("a").await.expect("second delete");
    assert_eq!(s.get("a").await.expect("get"), before);
    assert!(drain(&mut w).is_empty());
}

#[tokio::test]
async fn delete_of_a_missing_object_is_not_found() {
    let (_, s) = memory_store().await;
    assert_eq!(s.delete("a").await, Err(StoreError::NotFound("a".into())));
}

#[tokio::test]
async fn a_recreated_id_starts_again_at_version_one() {
    let (_, s) = memory_store().await;
    s.create(image("a")).await.expect("create");
    s.delete("a").await.expect("delete");
    assert_eq!(
        s.create(image("a"))
            .await
            .expect("recreate")
            .metadata
            .resource_version,
        1
    );
}

// ---------------------------------------------------------------------------------------------- concurrency

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_updates_with_the_same_version_have_exactly_one_winner() {
    let (_, s) = memory_store().await;
    let img = s.create(image("a")).await.expect("create");
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let s = s.clone();
            let mut img = img.clone();
            tokio::spawn(async move {
                img.status.size = i + 1;
                s.update(&img).await
            })
        })
        .collect();
    let mut wins = 0;
    let mut conflicts = 0;
    for t in tasks {
        match t.await.expect("task") {
            Ok(updated) => {
                wins += 1;
                assert_eq!(updated.metadata.resource_version, 2);
            }
            Err(StoreError::Conflict {
                expected: 1,
                actual: 2,
                ..
            }) => conflicts += 1,
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!((wins, conflicts), (1, 15));
}

/// A backend on which "another process" rewrites the record right before each of our compare-and-sets.
struct Interfering {
    inner: MemoryBackend,
    interfere: AtomicUsize,
}

impl Interfering {
    async fn bump(&self, collection: &str, key: &str) {
        if self.interfere.load(Ordering::SeqCst) == 0 {
            return;
        }
        self.interfere.fetch_sub(1, Ordering::SeqCst);
        let bytes = self
            .inner
            .get(collection, key)
            .await
            .expect("get")
            .expect("present");
        let mut v: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
        let rv = v["metadata"]["resourceVersion"].as_u64().expect("rv");
        v["metadata"]["resourceVersion"] = (rv + 1).into();
        let bytes = serde_json::to_vec(&v).expect("encode");
        self.inner
            .put(collection, key, bytes, Precondition::None)
            .await
            .expect("put");
    }
}

#[async_trait]
impl Backend for Interfering {
    async fn get(&self, c: &str, k: &str) -> store::Result<Option<Vec<u8>>> {
        self.inner.get(c, k).await
    }
    async fn put(&self, c: &str, k: &str, v: Vec<u8>, pre: Precondition) -> store::Result<()> {
        if matches!(pre, Precondition::Equals(_)) {
            self.bump(c, k).await;
        }
        self.inner.put(c, k, v, pre).await
    }
    async fn remove(&self, c: &str, k: &str, pre: Precondition) -> store::Result<()> {
        if matches!(pre, Precondition::Equals(_)) {
            self.bump(c, k).await;
        }
        self.inner.remove(c, k, pre).await
    }
    async fn list(&self, c: &str) -> store::Result<Vec<(String, Vec<u8>)>> {
        self.inner.list(c).await
    }
}

#[tokio::test]
async fn a_write_by_another_process_between_read_and_write_is_reported_as_conflict() {
    let backend = Arc::new(Interfering {
        inner: MemoryBackend::new(),
        interfere: AtomicUsize::new(0),
    });
    let s: Store<Image> = Store::open(backend.clone()).await.expect("open");
    let mut img = s.create(image("a")).await.expect("create");
    let mut w = s.watch(ListOptions::new()).expect("watch");
    backend.interfere.store(1, Ordering::SeqCst);
    img.status.size = 5;
    let err = s.update(&img).await.expect_err("lost the race");
    assert_eq!(
        err,
        StoreError::Conflict {
            id: "a".into(),
            expected: 1,
            actual: 2
        }
    );
    assert_eq!(
        s.get("a").await.expect("get").status.size,
        0,
        "our write did not happen"
    );
    assert!(drain(&mut w).is_empty(), "a failed write emits nothing");
}

#[tokio::test]
async fn delete_retries_when_another_process_changed_the_record() {
    let backend = Arc::new(Interfering {
        inner: MemoryBackend::new(),
        interfere: AtomicUsize::new(0),
    });
    let s: Store<Image> = Store::open(backend.clone()).await.expect("open");
    s.create(with_finalizer("a")).await.expect("create");
    backend.interfere.store(2, Ordering::SeqCst);
    s.delete("a").await.expect("delete succeeds after retries");
    let img = s.get("a").await.expect("get");
    assert!(img.metadata.is_deleted());
    assert_eq!(
        img.metadata.resource_version, 4,
        "two foreign writes and our soft delete"
    );
}

#[tokio::test]
async fn a_failed_backend_write_changes_nothing_and_emits_nothing() {
    let (b, s) = memory_store().await;
    let mut img = s.create(image("a")).await.expect("create");
    let mut w = s.watch(ListOptions::new()).expect("watch");
    b.fail_next(1);
    assert!(matches!(
        s.create(image("b")).await,
        Err(StoreError::Backend(_))
    ));
    img.status.size = 3;
    b.fail_next(1);
    assert!(matches!(s.update(&img).await, Err(StoreError::Backend(_))));
    b.fail_next(1);
    assert!(matches!(s.delete("a").await, Err(StoreError::Backend(_))));
    assert!(drain(&mut w).is_empty());
    assert_eq!(s.get("a").await.expect("get").metadata.resource_version, 1);
    assert_eq!(s.get("b").await, Err(StoreError::NotFound("b".into())));
}

// ---------------------------------------------------------------------------------------------- list

#[tokio::test]
async fn list_is_sorted_by_id() {
    let (_, s) = memory_store().await;
    for id in ["c", "a", "b", "sha256:0"] {
        s.create(image(id)).await.expect("create");
    }
    let ids: Vec<_> = s
        .list(&ListOptions::new())
        .await
        .expect("list")
        .into_iter()
        .map(|i| i.metadata.id)
        .collect();
    assert_eq!(ids, ["a", "b", "c", "sha256:0"]);
}

#[tokio::test]
async fn list_filters_by_label_equality_and_existence() {
    let (_, s) = memory_store().await;
    let mut both = labelled("both", keys::CLASS_LABEL, "fast");
    both.metadata
        .labels
        .insert(keys::MANAGER_LABEL.into(), keys::MANAGER.into());
    s.create(both).await.expect("create");
    s.create(labelled("slow", keys::CLASS_LABEL, "slow"))
        .await
        .expect("create");
    s.create(labelled("fast", keys::CLASS_LABEL, "fast"))
        .await
        .expect("create");
    s.create(image("none")).await.expect("create");
    let ids = |v: Vec<Image>| v.into_iter().map(|i| i.metadata.id).collect::<Vec<_>>();
    let fast = s
        .list(&ListOptions::new().label(keys::CLASS_LABEL, "fast"))
        .await
        .expect("list");
    assert_eq!(ids(fast), ["both", "fast"]);
    let and = ListOptions::new()
        .label(keys::CLASS_LABEL, "fast")
        .label(keys::MANAGER_LABEL, keys::MANAGER);
    assert_eq!(ids(s.list(&and).await.expect("list")), ["both"]);
    let has = s
        .list(&ListOptions::new().has_label(keys::CLASS_LABEL))
        .await
        .expect("list");
    assert_eq!(ids(has), ["both", "fast", "slow"]);
    let has_both = ListOptions::new()
        .has_label(keys::CLASS_LABEL)
        .has_label(keys::MANAGER_LABEL);
    assert_eq!(ids(s.list(&has_both).await.expect("list")), ["both"]);
    assert_eq!(s.list(&ListOptions::new()).await.expect("list").len(), 4);
}

#[tokio::test]
async fn list_filters_by_the_snapshot_ref_field_index() {
    let (_, s) = memory_store().await;
    let mut cloned = image("clone");
    cloned.spec.snapshot_ref = Some("snap-1".into());
    s.create(cloned).await.expect("create");
    s.create(image("plain")).await.expect("create");
    let by_ref = s
        .list(&ListOptions::new().field(FIELD_SNAPSHOT_REF, "snap-1"))
        .await
        .expect("list");
    assert_eq!(by_ref.len(), 1);
    assert_eq!(by_ref[0].metadata.id, "clone");
    let unset = s
        .list(&ListOptions::new().field(FIELD_SNAPSHOT_REF, ""))
        .await
        .expect("list");
    assert_eq!(unset.len(), 1);
    assert_eq!(unset[0].metadata.id, "plain");
}

#[tokio::test]
async fn a_field_without_an_indexer_is_invalid_naming_the_field() {
    let (_, s) = memory_store().await;
    let opts = ListOptions::new().field("spec.size", "1");
    let err = s.list(&opts).await.expect_err("no indexer");
    assert!(
        matches!(&err, StoreError::Invalid(m) if m.contains("spec.size")),
        "{err}"
    );
    assert!(matches!(s.watch(opts), Err(StoreError::Invalid(m)) if m.contains("spec.size")));
    let snaps: Store<Snapshot> = Store::open(Arc::new(MemoryBackend::new()))
        .await
        .expect("open");
    let err = snaps
        .list(&ListOptions::new().field(FIELD_SNAPSHOT_REF, "x"))
        .await
        .expect_err("none");
    assert!(
        matches!(&err, StoreError::Invalid(m) if m.contains(FIELD_SNAPSHOT_REF)),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------- watch

#[tokio::test]
async fn watch_delivers_only_mutations_after_the_call_in_order() {
    let (_, s) = memory_store().await;
    s.create(image("before")).await.expect("create");
    let mut w = s.watch(ListOptions::new()).expect("watch");
    let mut img = s.create(with_finalizer("a")).await.expect("create");
    img.status.size = 1;
    s.update(&img).await.expect("update");
    s.delete("a").await.expect("soft delete");
    let mut img = s.get("a").await.expect("get");
    img.metadata.finalizers.clear();
    s.update(&img).await.expect("final update");
    assert_eq!(
        kinds(&drain(&mut w)),
        vec![
            ("Created", "a".to_owned(), 1),
            ("Updated", "a".to_owned(), 2),
            ("Updated", "a".to_owned(), 3),
            ("Deleted", "a".to_owned(), 4),
        ]
    );
}

#[tokio::test]
async fn a_watch_with_a_selector_sees_objects_enter_and_leave_the_selection() {
    let (_, s) = memory_store().await;
    let mut w = s
        .watch(ListOptions::new().label("team", "x"))
        .expect("watch");
    let mut img = s.create(image("a")).await.expect("create");
    s.create(labelled("other", "team", "y"))
        .await
        .expect("create");
    img.metadata.labels.insert("team".into(), "x".into());
    let mut img = s.update(&img).await.expect("enter");
    img.status.size = 1;
    let mut img = s.update(&img).await.expect("change");
    img.metadata.labels.clear();
    let img = s.update(&img).await.expect("leave");
    s.delete("a").await.expect("delete while not selected");
    s.delete("other").await.expect("delete other");
    let events = drain(&mut w);
    assert_eq!(
        kinds(&events),
        vec![
            ("Created", "a".to_owned(), 2),
            ("Updated", "a".to_owned(), 3),
            ("Deleted", "a".to_owned(), 4)
        ]
    );
    assert_eq!(
        events[2],
        WatchEvent::Deleted(img),
        "leaving carries the new state"
    );
}

#[tokio::test]
async fn a_slow_watcher_gets_one_resync_instead_of_silently_losing_events() {
    let backend = Arc::new(MemoryBackend::new());
    let s: Store<Image> = Store::open_with(backend, StoreOptions { watch_queue: 3 })
        .await
        .expect("open");
    let mut slow = s.watch(ListOptions::new()).expect("watch");
    for id in ["a", "b", "c"] {
        s.create(image(id)).await.expect("create");
    }
    assert_eq!(slow.pending(), 3, "the queue holds up to its bound");
    for id in ["d", "e", "f", "g"] {
        s.create(image(id)).await.expect("create");
    }
    assert_eq!(
        drain(&mut slow),
        vec![WatchEvent::Resync],
        "overflow replaces the queue by one Resync"
    );
    // After the Resync was received, events flow again.
    s.create(image("h")).await.expect("create");
    assert_eq!(
        kinds(&drain(&mut slow)),
        vec![("Created", "h".to_owned(), 1)]
    );
}

#[tokio::test]
async fn a_resync_not_yet_received_absorbs_later_events() {
    let backend = Arc::new(MemoryBackend::new());
    let s: Store<Image> = Store::open_with(backend, StoreOptions { watch_queue: 1 })
        .await
        .expect("open");
    let mut slow = s.watch(ListOptions::new()).expect("watch");
    let mut fast = s.watch(ListOptions::new()).expect("watch");
    for id in ["a", "b", "c", "d"] {
        s.create(image(id)).await.expect("create");
        assert_eq!(
            drain(&mut fast).len(),
            1,
            "a watcher that keeps up is unaffected"
        );
    }
    assert_eq!(drain(&mut slow), vec![WatchEvent::Resync]);
    // The documented recovery: re-list, then continue with the watch.
    assert_eq!(s.list(&ListOptions::new()).await.expect("list").len(), 4);
}

#[tokio::test]
async fn recv_waits_for_the_next_event() {
    let (_, s) = memory_store().await;
    let mut w = s.watch(ListOptions::new()).expect("watch");
    let waiter = tokio::spawn(async move { w.recv().await });
    tokio::task::yield_now().await;
    assert!(!waiter.is_finished());
    s.create(image("a")).await.expect("create");
    let ev = waiter.await.expect("task").expect("event");
    assert_eq!(kinds(&[ev]), vec![("Created", "a".to_owned(), 1)]);
}

#[tokio::test]
async fn recv_returns_none_once_the_store_is_dropped_after_draining() {
    let (_, s) = memory_store().await;
    let mut w = s.watch(ListOptions::new()).expect("watch");
    let clone = s.clone();
    s.create(image("a")).await.expect("create");
    drop(s);
    clone
        .create(image("b"))
        .await
        .expect("a clone keeps the store alive");
    drop(clone);
    assert!(matches!(w.recv().await, Some(WatchEvent::Created(_))));
    assert!(matches!(w.recv().await, Some(WatchEvent::Created(_))));
    assert_eq!(w.recv().await, None);
}

#[tokio::test]
async fn a_dropped_watch_does_not_affect_other_watchers() {
    let (_, s) = memory_store().await;
    let w1 = s.watch(ListOptions::new()).expect("watch");
    let mut w2 = s.watch(ListOptions::new()).expect("watch");
    drop(w1);
    s.create(image("a")).await.expect("create");
    assert_eq!(drain(&mut w2).len(), 1);
}

// ---------------------------------------------------------------------------------------------- backends

#[tokio::test]
async fn a_store_reopened_on_the_same_hostdir_sees_every_object() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let s: Store<Image> =
            Store::open(Arc::new(HostDirBackend::open(dir.path()).expect("open")))
                .await
                .expect("store");
        s.create(with_finalizer("a")).await.expect("create");
        s.create(image("b")).await.expect("create");
        s.delete("a").await.expect("soft delete");
        s.delete("b").await.expect("delete");
        let snaps: Store<Snapshot> =
            Store::open(Arc::new(HostDirBackend::open(dir.path()).expect("open")))
                .await
                .expect("store");
        snaps
            .create(Snapshot::new("sha256:ab/c", SnapshotSource::default()))
            .await
            .expect("create");
    }
    let backend = Arc::new(HostDirBackend::open(dir.path()).expect("reopen"));
    let s: Store<Image> = Store::open(backend.clone()).await.expect("store");
    let all = s.list(&ListOptions::new()).await.expect("list");
    assert_eq!(all.len(), 1);
    assert!(all[0].metadata.is_deleted());
    assert_eq!(all[0].metadata.resource_version, 2);
    let snaps: Store<Snapshot> = Store::open(backend).await.expect("store");
    assert_eq!(
        snaps.get("sha256:ab/c").await.expect("get").metadata.id,
        "sha256:ab/c"
    );
}

#[tokio::test]
async fn a_store_reopened_on_a_shared_memory_backend_sees_every_object() {
    let (b, s) = memory_store().await;
    s.create(image("a")).await.expect("create");
    drop(s);
    let s: Store<Image> = Store::open(Arc::new(b)).await.expect("reopen");
    assert_eq!(s.get("a").await.expect("get").metadata.resource_version, 1);
}

/// A backend whose writes wait until the test lets them through.
struct Gated {
    inner: MemoryBackend,
    gate: tokio::sync::Semaphore,
}

#[async_trait]
impl Backend for Gated {
    async fn get(&self, c: &str, k: &str) -> store::Result<Option<Vec<u8>>> {
        self.inner.get(c, k).await
    }
    async fn put(&self, c: &str, k: &str, v: Vec<u8>, pre: Precondition) -> store::Result<()> {
        self.gate.acquire().await.expect("gate open").forget();
        self.inner.put(c, k, v, pre).await
    }
    async fn remove(&self, c: &str, k: &str, pre: Precondition) -> store::Result<()> {
        self.gate.acquire().await.expect("gate open").forget();
        self.inner.remove(c, k, pre).await
    }
    async fn list(&self, c: &str) -> store::Result<Vec<(String, Vec<u8>)>> {
        self.inner.list(c).await
    }
}

#[tokio::test(start_paused = true)]
async fn a_mutation_whose_caller_gives_up_still_completes_and_emits_its_event() {
    let backend = Arc::new(Gated {
        inner: MemoryBackend::new(),
        gate: tokio::sync::Semaphore::new(1),
    });
    let s: Store<Image> = Store::open(backend.clone()).await.expect("open");
    let mut img = s.create(image("a")).await.expect("create");
    let mut w = s.watch(ListOptions::new()).expect("watch");
    img.status.size = 9;
    let gave_up = tokio::time::timeout(std::time::Duration::from_millis(1), s.update(&img)).await;
    assert!(
        gave_up.is_err(),
        "the write is held at the gate, the caller times out"
    );
    backend.gate.add_permits(1);
    let ev = tokio::time::timeout(std::time::Duration::from_secs(5), w.recv())
        .await
        .expect("the event of the completed write arrives")
        .expect("store alive");
    assert_eq!(kinds(&[ev]), vec![("Updated", "a".to_owned(), 2)]);
    assert_eq!(s.get("a").await.expect("get").status.size, 9);
}
