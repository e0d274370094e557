//! Changes made through another handle of shared storage (`Backend::remote_changes`): two stores on two
//! handles of one in-memory storage stand for two processes; each handle reports its writes to the other,
//! as the rados-omap backend does with watch/notify.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use store::{
    Backend, Image, ImageSpec, ListOptions, MemoryBackend, Precondition, Previous, RemoteChange,
    RemoteChanges, Store, WatchEvent,
};
use tokio::sync::mpsc;

type Peers = Arc<Mutex<Vec<(usize, String, mpsc::Sender<RemoteChange>)>>>;

/// One handle of the shared storage: writes go to the shared memory and are reported to every other
/// handle that asked for remote changes of the collection.
#[derive(Clone)]
struct Handle {
    me: usize,
    mem: MemoryBackend,
    peers: Peers,
    gets: Arc<AtomicUsize>,
}

impl Handle {
    fn pair() -> (Handle, Handle) {
        let mem = MemoryBackend::new();
        let peers = Peers::default();
        let h = |me| Handle {
            me,
            mem: mem.clone(),
            peers: peers.clone(),
            gets: Arc::default(),
        };
        (h(0), h(1))
    }

    fn report(&self, collection: &str, key: &str, pre: &Precondition) {
        for (who, c, tx) in self.peers.lock().expect("peers").iter() {
            if *who != self.me && c == collection {
                let _ = tx.try_send(RemoteChange::Key {
                    key: key.to_owned(),
                    previous: Previous::of(pre),
                });
            }
        }
    }

    /// Sends `change` to this handle's own receivers (as if the storage reported it).
    fn inject(&self, change: RemoteChange) {
        for (who, _, tx) in self.peers.lock().expect("peers").iter() {
            if *who == self.me {
                tx.try_send(change.clone()).expect("room");
            }
        }
    }
}

#[async_trait]
impl Backend for Handle {
    async fn get(&self, collection: &str, key: &str) -> store::Result<Option<Vec<u8>>> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        self.mem.get(collection, key).await
    }
    async fn put(
        &self,
        collection: &str,
        key: &str,
        value: Vec<u8>,
        pre: Precondition,
    ) -> store::Result<()> {
        self.mem.put(collection, key, value, pre.clone()).await?;
        self.report(collection, key, &pre);
        Ok(())
    }
    async fn remove(&self, collection: &str, key: &str, pre: Precondition) -> store::Result<()> {
        self.mem.remove(collection, key, pre.clone()).await?;
        self.report(collection, key, &pre);
        Ok(())
    }
    async fn list(&self, collection: &str) -> store::Result<Vec<(String, Vec<u8>)>> {
        self.mem.list(collection).await
    }
    fn remote_changes(&self, collection: &str) -> Option<RemoteChanges> {
        let (tx, rx) = mpsc::channel(64);
        self.peers
            .lock()
            .expect("peers")
            .push((self.me, collection.to_owned(), tx));
        Some(rx)
    }
}

fn image(id: &str) -> Image {
    Image::new(
        id,
        ImageSpec {
            size: 1 << 20,
            ..ImageSpec::default()
        },
    )
}

async fn next(w: &mut store::Watch<Image>) -> WatchEvent<Image> {
    tokio::time::timeout(Duration::from_secs(10), w.recv())
        .await
        .expect("an event within 10 s")
        .expect("store alive")
}

fn kind(e: &WatchEvent<Image>) -> (&'static str, String, u64) {
    match e {
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
    }
}

/// Lets the stores' report-handling tasks run (single-threaded test runtime: they run when we yield).
async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

async fn two_stores() -> (Handle, Store<Image>, Handle, Store<Image>) {
    let (a, b) = Handle::pair();
    let sa = Store::<Image>::open(Arc::new(a.clone())).await.expect("a");
    let sb = Store::<Image>::open(Arc::new(b.clone())).await.expect("b");
    (a, sa, b, sb)
}

#[tokio::test]
async fn writes_of_another_process_arrive_as_created_updated_and_deleted() {
    let (_, a, _, b) = two_stores().await;
    let mut w = b.watch(ListOptions::new()).expect("watch");
    let created = a.create(image("x")).await.expect("create");
    assert_eq!(kind(&next(&mut w).await), ("Created", "x".into(), 1));
    let mut changed = created.clone();
    changed.spec.size *= 2;
    a.update(&changed).await.expect("update");
    let ev = next(&mut w).await;
    assert_eq!(kind(&ev), ("Updated", "x".into(), 2));
    assert_eq!(ev.object().map(|o| o.spec.size), Some(2 << 20));
    a.delete("x").await.expect("delete");
    let ev = next(&mut w).await;
    assert_eq!(kind(&ev), ("Deleted", "x".into(), 3));
    assert!(ev.object().and_then(|o| o.metadata.deleted_at).is_some());
    assert_eq!(w.pending(), 0);
}

#[tokio::test]
async fn a_remote_update_that_makes_an_object_match_a_selector_arrives_as_created() {
    let (_, a, _, b) = two_stores().await;
    let mut w = b
        .watch(ListOptions::new().label("tier", "gold"))
        .expect("watch");
    let created = a.create(image("y")).await.expect("create");
    let mut gold = created.clone();
    gold.metadata.labels.insert("tier".into(), "gold".into());
    let gold = a.update(&gold).await.expect("label");
    assert_eq!(kind(&next(&mut w).await), ("Created", "y".into(), 2));
    let mut plain = gold.clone();
    plain.metadata.labels.clear();
    a.update(&plain).await.expect("unlabel");
    assert_eq!(kind(&next(&mut w).await), ("Deleted", "y".into(), 3));
}

#[tokio::test]
async fn a_reported_break_reaches_every_watcher_as_one_resync() {
    let (_, _, hb, b) = two_stores().await;
    let mut w1 = b.watch(ListOptions::new()).expect("watch");
    let mut w2 = b.watch(ListOptions::new()).expect("watch");
    hb.inject(RemoteChange::Resync);
    hb.inject(RemoteChange::Resync);
    settle().await;
    // The second report is coalesced into the resync still queued at each watcher.
    assert_eq!(w1.pending(), 1);
    assert_eq!(w2.pending(), 1);
    assert_eq!(next(&mut w1).await, WatchEvent::Resync);
    assert_eq!(next(&mut w2).await, WatchEvent::Resync);
}

#[tokio::test]
async fn nothing_is_read_for_remote_changes_while_nobody_watches() {
    let (_, a, hb, b) = two_stores().await;
    a.create(image("z")).await.expect("create");
    let created = a.create(image("z2")).await.expect("create");
    settle().await;
    assert_eq!(hb.gets.load(Ordering::SeqCst), 0, "no watcher: no re-reads");
    let mut w = b.watch(ListOptions::new()).expect("watch");
    let mut changed = created.clone();
    changed.spec.size += 512;
    a.update(&changed).await.expect("update");
    assert_eq!(kind(&next(&mut w).await), ("Updated", "z2".into(), 2));
    assert_eq!(
        hb.gets.load(Ordering::SeqCst),
        1,
        "one re-read per reported change"
    );
}

#[tokio::test]
async fn a_report_is_answered_with_the_current_state_and_what_the_writer_replaced() {
    let (_, _, hb, b) = two_stores().await;
    let mut w = b.watch(ListOptions::new()).expect("watch");
    // Writes that report nothing (a plain handle of the same storage), then reports injected by hand.
    let silent = Store::<Image>::open(Arc::new(hb.mem.clone()))
        .await
        .expect("open");
    let created = silent.create(image("c")).await.expect("create");
    let mut changed = created.clone();
    changed.spec.size *= 4;
    silent.update(&changed).await.expect("update");
    // Two writes coalesced into one report carrying the oldest `previous` (the key was absent).
    hb.inject(RemoteChange::Key {
        key: "c".into(),
        previous: Previous::Absent,
    });
    assert_eq!(kind(&next(&mut w).await), ("Created", "c".into(), 2));
    // A repeated report re-reads the current state again (never an older one).
    hb.inject(RemoteChange::Key {
        key: "c".into(),
        previous: Previous::Unknown,
    });
    assert_eq!(kind(&next(&mut w).await), ("Updated", "c".into(), 2));
    // A report of a key that is gone, without the removed value, yields nothing (the removal's own
    // report carries it).
    silent.delete("c").await.expect("delete");
    hb.inject(RemoteChange::Key {
        key: "c".into(),
        previous: Previous::Unknown,
    });
    hb.inject(RemoteChange::Resync);
    assert_eq!(next(&mut w).await, WatchEvent::Resync);
}

#[tokio::test]
async fn the_own_writes_of_a_store_are_delivered_once() {
    let (_, a, _, b) = two_stores().await;
    let mut wa = a.watch(ListOptions::new()).expect("watch");
    let _wb = b.watch(ListOptions::new()).expect("watch");
    a.create(image("o")).await.expect("create");
    assert_eq!(kind(&next(&mut wa).await), ("Created", "o".into(), 1));
    settle().await;
    assert_eq!(
        wa.pending(),
        0,
        "a store does not hear its own writes again"
    );
}
