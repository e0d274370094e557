//! The leadership primitives against a real cluster, each on separate connections (as two daemons
//! would be): the cls_lock lease (exclusive, renewable, expiring, breakable), writes guarded by it,
//! fencing by blocklist, watch/notify, and the omap store's reports of another process's writes.
#![allow(clippy::unwrap_used)]

mod ceph_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use ceph::{
    CephBackend, ExclusiveLock, GuardedWrite, LockOutcome, ObjectWatch, OmapBackend, WatchMsg,
};
use ceph_support::{backend, bounded, unique};
use store::{
    Backend, Image, ImageSpec, ListOptions, Metadata, Object, Precondition, Store, WatchEvent,
};

/// Removes a scratch object at the end of a test.
struct Scratch(CephBackend, String);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = self.0.ioctx().remove_object(&self.1);
    }
}

fn lock(b: &CephBackend, object: &str, cookie: &str) -> ExclusiveLock {
    ExclusiveLock::new(b.ioctx().clone(), object, "cephvol-test", cookie)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs ceph"]
async fn the_lease_is_exclusive_renewable_and_lapses_at_its_expiry() {
    bounded(async {
        let (a, b) = (backend().await, backend().await);
        let object = unique("cephvol.test.lease");
        let _scratch = Scratch(a.clone(), object.clone());
        let (la, lb) = (lock(&a, &object, "a"), lock(&b, &object, "b"));
        let lease = Duration::from_secs(3);
        let (la2, lb2) = (la.clone(), lb.clone());
        let (held, refused, holders) = blocking(move || {
            (
                la2.acquire(lease, "test").unwrap(),
                lb2.acquire(lease, "test").unwrap(),
                lb2.lockers().unwrap(),
            )
        })
        .await;
        assert_eq!(held, LockOutcome::Held);
        assert_eq!(refused, LockOutcome::NotOurs, "exclusive");
        assert_eq!(holders.len(), 1);
        assert_eq!(
            holders[0].client,
            format!("client.{}", a.rados().instance_id())
        );
        assert_eq!(holders[0].cookie, "a");
        assert_eq!(
            holders[0].addr,
            a.rados().addrs().unwrap(),
            "the lock lists the holder's address as the holder sees it"
        );
        // Renewal keeps it; a renewal by a non-holder does not take it.
        let (la2, lb2) = (la.clone(), lb.clone());
        let (renewed, not_ours) = blocking(move || {
            (
                la2.renew(lease, "t").unwrap(),
                lb2.renew(lease, "t").unwrap(),
            )
        })
        .await;
        assert_eq!(renewed, LockOutcome::Held);
        assert_eq!(not_ours, LockOutcome::NotOurs);
        // Release hands it over at once.
        let (la2, lb2) = (la.clone(), lb.clone());
        let (released, taken) =
            blocking(move || (la2.release().unwrap(), lb2.acquire(lease, "t").unwrap())).await;
        assert_eq!((released, taken), (LockOutcome::Held, LockOutcome::Held));
        // Left alone, b's lease lapses: a renewal of b is refused, a takes it.
        let t = Instant::now();
        let la2 = la.clone();
        let (lb2, la3) = (lb.clone(), la.clone());
        loop {
            let l = la2.clone();
            if blocking(move || l.acquire(lease, "t").unwrap()).await == LockOutcome::Held {
                break;
            }
            assert!(t.elapsed() < lease * 3, "b's lease never lapsed");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(
            t.elapsed() >= lease - Duration::from_millis(500),
            "lapsed early: {:?}",
            t.elapsed()
        );
        assert_eq!(
            blocking(move || lb2.renew(lease, "t").unwrap()).await,
            LockOutcome::NotOurs
        );
        assert_eq!(
            blocking(move || la3.release().unwrap()).await,
            LockOutcome::Held
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs ceph"]
async fn a_guarded_write_happens_only_while_the_writer_holds_the_lease() {
    bounded(async {
        let (a, b) = (backend().await, backend().await);
        let object = unique("cephvol.test.lease");
        let _scratch = Scratch(a.clone(), object.clone());
        let (la, lb) = (lock(&a, &object, "a"), lock(&b, &object, "b"));
        let out = blocking(move || {
            let before = la.set_if_locked("k", b"early").unwrap();
            la.acquire(Duration::from_secs(30), "t").unwrap();
            let mine = la.set_if_locked("k", b"a").unwrap();
            let theirs = lb.set_if_locked("k", b"b").unwrap();
            let value = lb.get("k").unwrap();
            la.release().unwrap();
            (before, mine, theirs, value)
        })
        .await;
        assert_eq!(
            out.0,
            GuardedWrite::NotLocked,
            "no write before the lock exists"
        );
        assert_eq!(out.1, GuardedWrite::Done);
        assert_eq!(out.2, GuardedWrite::NotLocked);
        assert_eq!(out.3.as_deref(), Some(&b"a"[..]));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs ceph"]
async fn a_blocklisted_holder_is_fenced_and_its_lock_can_be_broken() {
    bounded(async {
        let (a, b) = (backend().await, backend().await);
        let object = unique("cephvol.test.lease");
        let _scratch = Scratch(b.clone(), object.clone());
        let (la, lb) = (lock(&a, &object, "a"), lock(&b, &object, "b"));
        let (rb, addr) = (b.rados().clone(), a.rados().addrs().unwrap());
        let out = blocking(move || {
            la.acquire(Duration::from_secs(60), "t").unwrap();
            // Short expiry: the entry only has to outlive the test.
            rb.blocklist_add(&addr, Duration::from_secs(120)).unwrap();
            // Every operation of ours is now ordered after the entry; the blocklisted client's
            // own operations are refused as soon as the OSD has the new map (moments later; what
            // it did before is ordered before our takeover).
            let t = Instant::now();
            let renew = loop {
                let r = la.renew(Duration::from_secs(60), "t").unwrap();
                if r == LockOutcome::Fenced || t.elapsed() > Duration::from_secs(10) {
                    break r;
                }
                std::thread::sleep(Duration::from_millis(100));
            };
            let write = la.set_if_locked("k", b"stale").unwrap();
            let holders = lb.lockers().unwrap();
            lb.break_lock(&holders[0]).unwrap();
            let taken = lb.acquire(Duration::from_secs(5), "t").unwrap();
            let value = lb.get("k").unwrap();
            lb.release().unwrap();
            (renew, write, taken, value)
        })
        .await;
        assert_eq!(
            out.0,
            LockOutcome::Fenced,
            "the OSD refuses the blocklisted client"
        );
        assert_eq!(out.1, GuardedWrite::Fenced);
        assert_eq!(out.2, LockOutcome::Held);
        assert_eq!(out.3, None, "the fenced write did not happen");
        drop(a);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs ceph"]
async fn a_notification_reaches_the_watchers_of_the_object_with_the_senders_id() {
    bounded(async {
        let (a, b) = (backend().await, backend().await);
        let object = unique("cephvol.test.watch");
        let _scratch = Scratch(a.clone(), object.clone());
        // A watch needs the object.
        let la = lock(&a, &object, "creator");
        blocking(move || {
            la.acquire(Duration::from_secs(1), "t").unwrap();
        })
        .await;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let (io, o) = (a.ioctx().clone(), object.clone());
        let watch = blocking(move || ObjectWatch::register(&io, &o, tx).unwrap()).await;
        let (io, o) = (b.ioctx().clone(), object.clone());
        blocking(move || io.notify(&o, b"hello", Duration::from_secs(5)).unwrap()).await;
        let msg = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            msg,
            WatchMsg::Notify {
                notifier: b.rados().instance_id(),
                payload: b"hello".to_vec()
            }
        );
        blocking(move || watch.close()).await;
    })
    .await;
}

/// Images in a collection of their own (the real ones belong to whatever daemon runs on the pool).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct TestRecord(Image);

impl Object for TestRecord {
    const COLLECTION: &'static str = "cephvol.test.remote-changes";
    fn metadata(&self) -> &Metadata {
        self.0.metadata()
    }
    fn metadata_mut(&mut self) -> &mut Metadata {
        self.0.metadata_mut()
    }
    fn prepare_create(&mut self) {
        self.0.prepare_create()
    }
    fn field(&self, name: &str) -> Option<String> {
        self.0.field(name)
    }
}

/// The next event of `w` about `id` (others may come from concurrent runs on the same collection).
async fn next_about(w: &mut store::Watch<TestRecord>, id: &str) -> WatchEvent<TestRecord> {
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(15), w.recv())
            .await
            .expect("an event within 15 s")
            .expect("store alive");
        if ev.object().map(|o| o.0.metadata.id.as_str()) == Some(id) {
            return ev;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs ceph"]
async fn a_store_hears_of_records_another_process_writes() {
    bounded(async {
        let (a, b) = (backend().await, backend().await);
        let _scratch = Scratch(a.clone(), TestRecord::COLLECTION.to_string());
        let oa = Arc::new(OmapBackend::for_backend(&a, 100).unwrap());
        // A watch needs the collection object: make sure it exists (empty).
        let c = TestRecord::COLLECTION;
        oa.put(c, "anchor", b"x".to_vec(), Precondition::None).await.unwrap();
        oa.remove(c, "anchor", Precondition::None).await.unwrap();
        let ob = Arc::new(OmapBackend::for_backend(&b, 100).unwrap());
        let sa = Store::<TestRecord>::open(oa).await.unwrap();
        let sb = Store::<TestRecord>::open(ob).await.unwrap();
        let mut w = sb.watch(ListOptions::new()).unwrap();
        // The watch is announced by a resync once it is established on the (existing) object.
        let first = tokio::time::timeout(Duration::from_secs(15), w.recv())
            .await
            .expect("the watch within 15 s")
            .expect("store alive");
        assert_eq!(first, WatchEvent::Resync);
        let id = unique("cephvol-test-remote");
        let spec = ImageSpec {
            size: 1 << 20,
            ..Default::default()
        };
        let mut rec = sa.create(TestRecord(Image::new(&id, spec))).await.unwrap();
        let ev = next_about(&mut w, &id).await;
        assert!(
            matches!(&ev, WatchEvent::Created(o) if o.0.metadata.resource_version == 1),
            "a create arrives as Created"
        );
        rec.0.spec.size += 4096;
        let rec = sa.update(&rec).await.unwrap();
        let ev = next_about(&mut w, &id).await;
        assert!(
            matches!(&ev, WatchEvent::Updated(o) if o.0.metadata.resource_version == 2 && o.0.spec.size == rec.0.spec.size),
            "an update arrives as Updated"
        );
        sa.delete(&rec.0.metadata.id).await.unwrap();
        let ev = next_about(&mut w, &id).await;
        assert!(
            matches!(&ev, WatchEvent::Deleted(o) if o.0.metadata.resource_version == 3 && o.0.metadata.deleted_at.is_some()),
            "a removal arrives as Deleted with the last state"
        );
    })
    .await;
}
