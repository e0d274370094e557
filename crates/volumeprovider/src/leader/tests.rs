//! The lease loop against an in-memory lease with the cluster's rules (exclusive lock with an
//! expiry, record writable only by the holder, fencing refuses everything a client sends), in
//! tokio's paused time; and `lead` running the controllers only while leading.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use super::*;

/// What the cluster knows.
#[derive(Default)]
struct World {
    holder: Option<(Holder, Instant)>,
    record: Option<LeaderRecord>,
    fenced: BTreeSet<String>,
    fence_fails: bool,
}

/// One daemon's view of the cluster.
struct Fake {
    me: Holder,
    world: Arc<Mutex<World>>,
    /// Every call hangs (cluster unreachable).
    hang: Arc<AtomicBool>,
}

const LEASE: Duration = Duration::from_secs(15);
const RENEW: Duration = Duration::from_secs(5);

fn timing() -> LeaseTiming {
    LeaseTiming::new(LEASE, RENEW)
}

fn holder(identity: &str, client: u64) -> Holder {
    Holder {
        identity: identity.into(),
        client: format!("client.{client}"),
        addr: format!("127.0.0.1:0/{client}"),
    }
}

impl Fake {
    fn new(world: &Arc<Mutex<World>>, me: Holder) -> Arc<Fake> {
        Arc::new(Fake {
            me,
            world: Arc::clone(world),
            hang: Arc::default(),
        })
    }

    /// Runs `f` on the world as the cluster would: hanging, refusing a fenced client, expiring.
    async fn call<T>(
        &self,
        f: impl FnOnce(&mut World, &Holder) -> T,
    ) -> Result<Result<T, Attempt>> {
        if self.hang.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        let mut w = self.world.lock().expect("world");
        if w.fenced.contains(&self.me.addr) {
            return Ok(Err(Attempt::Fenced));
        }
        if w.holder
            .as_ref()
            .is_some_and(|(_, until)| *until <= Instant::now())
        {
            w.holder = None;
        }
        Ok(Ok(f(&mut w, &self.me)))
    }

    fn mine(w: &World, me: &Holder) -> bool {
        w.holder.as_ref().is_some_and(|(h, _)| h == me)
    }
}

fn flat(r: Result<Result<Attempt, Attempt>>) -> Result<Attempt> {
    r.map(|a| a.unwrap_or_else(|fenced| fenced))
}

#[async_trait]
impl LeaseLock for Fake {
    fn me(&self) -> &Holder {
        &self.me
    }
    async fn acquire(&self, lease: Duration) -> Result<Attempt> {
        flat(
            self.call(|w, me| {
                if w.holder.is_none() || Fake::mine(w, me) {
                    w.holder = Some((me.clone(), Instant::now() + lease));
                    Attempt::Held
                } else {
                    Attempt::NotOurs
                }
            })
            .await,
        )
    }
    async fn renew(&self, lease: Duration) -> Result<Attempt> {
        flat(
            self.call(|w, me| {
                if Fake::mine(w, me) {
                    w.holder = Some((me.clone(), Instant::now() + lease));
                    Attempt::Held
                } else {
                    Attempt::NotOurs
                }
            })
            .await,
        )
    }
    async fn release(&self) -> Result<Attempt> {
        flat(
            self.call(|w, me| {
                if Fake::mine(w, me) {
                    w.holder = None;
                    Attempt::Held
                } else {
                    Attempt::NotOurs
                }
            })
            .await,
        )
    }
    async fn holders(&self) -> Result<Vec<Holder>> {
        let r = self
            .call(|w, _| w.holder.iter().map(|(h, _)| h.clone()).collect())
            .await?;
        r.map_err(|_| Error::Backend("fenced".into()))
    }
    async fn break_lock(&self, h: &Holder) -> Result<()> {
        let r = self
            .call(|w, _| {
                if w.holder.as_ref().is_some_and(|(x, _)| x == h) {
                    w.holder = None;
                }
            })
            .await?;
        r.map_err(|_| Error::Backend("fenced".into()))
    }
    async fn fence(&self, addr: &str) -> Result<()> {
        let r = self
            .call(|w, _| {
                if w.fence_fails {
                    return false;
                }
                w.fenced.insert(addr.to_string());
                true
            })
            .await?;
        match r {
            Ok(true) => Ok(()),
            _ => Err(Error::Backend("permission denied".into())),
        }
    }
    async fn record(&self) -> Result<Option<LeaderRecord>> {
        let r = self.call(|w, _| w.record.clone()).await?;
        r.map_err(|_| Error::Backend("fenced".into()))
    }
    async fn set_record(&self, record: &LeaderRecord) -> Result<Attempt> {
        flat(
            self.call(|w, me| {
                if Fake::mine(w, me) {
                    w.record = Some(record.clone());
                    Attempt::Held
                } else {
                    Attempt::NotOurs
                }
            })
            .await,
        )
    }
}

/// Waits (virtual time) until `l`'s role satisfies `want`; returns how long that took.
async fn until(l: &Leadership, bound: Duration, want: impl Fn(&Role) -> bool) -> Duration {
    let start = Instant::now();
    let mut role = l.role();
    loop {
        if want(&role.borrow_and_update()) {
            return start.elapsed();
        }
        tokio::select! {
            _ = role.changed() => {}
            _ = tokio::time::sleep_until(start + bound) => {
                panic!("role still {:?} after {bound:?}", *role.borrow())
            }
        }
    }
}

fn leading(r: &Role) -> bool {
    *r == Role::Leader
}

/// Kills the lease loop as SIGKILL would: no release, nothing more sent.
fn kill(mut l: Leadership) {
    if let Some(t) = l.task.take() {
        t.abort();
    }
}

#[tokio::test(start_paused = true)]
async fn one_daemon_leads_and_a_standby_takes_over_within_the_lease_after_it_dies() {
    let world = Arc::new(Mutex::new(World::default()));
    let (a, b) = (holder("a", 1), holder("b", 2));
    let la = Leadership::start(Fake::new(&world, a.clone()), timing());
    until(&la, Duration::from_secs(1), leading).await;
    let lb = Leadership::start(Fake::new(&world, b.clone()), timing());
    until(&lb, Duration::from_secs(1), |r| {
        *r == Role::Standby {
            leader: Some(a.clone()),
        }
    })
    .await;
    // Both keep their roles for many leases.
    tokio::time::sleep(LEASE * 5).await;
    assert!(la.is_leader() && !lb.is_leader());
    kill(la);
    let took = until(&lb, LEASE * 2, leading).await;
    assert!(took <= LEASE + timing().poll, "took over after {took:?}");
    let w = world.lock().expect("world");
    assert!(
        w.fenced.contains(&a.addr),
        "the dead leader is fenced first"
    );
    assert_eq!(w.record.as_ref().map(|r| r.identity.as_str()), Some("b"));
}

#[tokio::test(start_paused = true)]
async fn a_leader_that_cannot_reach_the_cluster_steps_down_when_its_lease_lapses() {
    let world = Arc::new(Mutex::new(World::default()));
    let fake = Fake::new(&world, holder("a", 1));
    let hang = Arc::clone(&fake.hang);
    let la = Leadership::start(fake, timing());
    until(&la, Duration::from_secs(1), leading).await;
    tokio::time::sleep(RENEW * 3).await;
    hang.store(true, Ordering::SeqCst);
    let took = until(&la, LEASE * 2, |r| matches!(r, Role::Lost { .. })).await;
    assert!(
        took <= LEASE,
        "stepped down after {took:?}, later than its lease"
    );
    let role = la.role().borrow().clone();
    assert!(
        matches!(&role, Role::Lost { reason } if reason.contains("lapsed")),
        "{role:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn losing_the_lease_is_announced_once_and_never_before() {
    let (tx, rx) = watch::channel(Role::Leader);
    let waiter = tokio::spawn(lost(rx));
    tokio::time::sleep(LEASE).await;
    tx.send(Role::Standby { leader: None }).expect("send");
    tokio::time::sleep(LEASE).await;
    assert!(!waiter.is_finished(), "not lost yet");
    tx.send(Role::Lost {
        reason: "gone".into(),
    })
    .expect("send");
    assert_eq!(waiter.await.expect("task"), "gone");
}

#[tokio::test(start_paused = true)]
async fn a_fenced_leader_steps_down_at_its_next_renewal() {
    let world = Arc::new(Mutex::new(World::default()));
    let a = holder("a", 1);
    let la = Leadership::start(Fake::new(&world, a.clone()), timing());
    until(&la, Duration::from_secs(1), leading).await;
    world.lock().expect("world").fenced.insert(a.addr.clone());
    let took = until(&la, LEASE, |r| matches!(r, Role::Lost { .. })).await;
    assert!(took <= RENEW + Duration::from_millis(10), "{took:?}");
    let role = la.role().borrow().clone();
    assert!(
        matches!(&role, Role::Lost { reason } if reason.contains("fenced")),
        "{role:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_paused_leader_that_wakes_after_its_lease_finds_itself_fenced_and_replaced() {
    let world = Arc::new(Mutex::new(World::default()));
    let (a, b) = (holder("a", 1), holder("b", 2));
    let fa = Fake::new(&world, a.clone());
    let paused = Arc::clone(&fa.hang);
    let la = Leadership::start(fa, timing());
    until(&la, Duration::from_secs(1), leading).await;
    let lb = Leadership::start(Fake::new(&world, b.clone()), timing());
    until(&lb, Duration::from_secs(1), |r| {
        matches!(r, Role::Standby { leader: Some(_) })
    })
    .await;
    paused.store(true, Ordering::SeqCst);
    until(&lb, LEASE * 2, leading).await;
    // a knows by its own clock that its lease lapsed.
    until(&la, Duration::from_secs(1), |r| {
        matches!(r, Role::Lost { .. })
    })
    .await;
    let w = world.lock().expect("world");
    assert!(w.fenced.contains(&a.addr));
    assert_eq!(
        w.holder.as_ref().map(|(h, _)| h.identity.as_str()),
        Some("b")
    );
}

#[tokio::test(start_paused = true)]
async fn a_restart_under_the_same_identity_fences_its_predecessor_and_takes_over_at_once() {
    let world = Arc::new(Mutex::new(World::default()));
    let (first, second) = (holder("r1", 1), holder("r1", 7));
    let l1 = Leadership::start(Fake::new(&world, first.clone()), timing());
    until(&l1, Duration::from_secs(1), leading).await;
    kill(l1);
    let l2 = Leadership::start(Fake::new(&world, second), timing());
    let took = until(&l2, LEASE, leading).await;
    assert!(
        took < Duration::from_secs(1),
        "waited {took:?} for a dead predecessor"
    );
    assert!(world.lock().expect("world").fenced.contains(&first.addr));
}

#[tokio::test(start_paused = true)]
async fn a_clean_release_hands_over_at_once_without_fencing() {
    let world = Arc::new(Mutex::new(World::default()));
    let (a, b) = (holder("a", 1), holder("b", 2));
    let la = Leadership::start(Fake::new(&world, a.clone()), timing());
    until(&la, Duration::from_secs(1), leading).await;
    let lb = Leadership::start(Fake::new(&world, b), timing());
    until(&lb, Duration::from_secs(1), |r| {
        matches!(r, Role::Standby { leader: Some(_) })
    })
    .await;
    la.release().await;
    let took = until(&lb, LEASE, leading).await;
    assert!(
        took <= timing().poll + Duration::from_millis(10),
        "{took:?}"
    );
    assert!(
        world.lock().expect("world").fenced.is_empty(),
        "nothing to fence"
    );
}

#[tokio::test(start_paused = true)]
async fn a_standby_that_cannot_fence_the_previous_leader_does_not_lead() {
    let world = Arc::new(Mutex::new(World::default()));
    let (a, b) = (holder("a", 1), holder("b", 2));
    let la = Leadership::start(Fake::new(&world, a), timing());
    until(&la, Duration::from_secs(1), leading).await;
    let lb = Leadership::start(Fake::new(&world, b), timing());
    until(&lb, Duration::from_secs(1), |r| {
        matches!(r, Role::Standby { leader: Some(_) })
    })
    .await;
    world.lock().expect("world").fence_fails = true;
    kill(la);
    tokio::time::sleep(LEASE * 4).await;
    assert!(!lb.is_leader(), "led without fencing");
    world.lock().expect("world").fence_fails = false;
    until(&lb, LEASE, leading).await;
}

#[tokio::test(start_paused = true)]
async fn a_standby_never_takes_the_lease_of_a_live_leader() {
    let world = Arc::new(Mutex::new(World::default()));
    let la = Leadership::start(Fake::new(&world, holder("a", 1)), timing());
    until(&la, Duration::from_secs(1), leading).await;
    let standbys: Vec<Leadership> = (2..5)
        .map(|n| Leadership::start(Fake::new(&world, holder(&format!("s{n}"), n)), timing()))
        .collect();
    tokio::time::sleep(LEASE * 10).await;
    assert!(la.is_leader());
    assert!(standbys.iter().all(|s| !s.is_leader()));
    assert!(world.lock().expect("world").fenced.is_empty());
}

/// `lead` with real controllers on in-memory backends: nothing is reconciled on a standby; the
/// leader reconciles; losing the lease stops the controllers and the runner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_reconciles_and_a_lost_lease_stops_everything() {
    use rbd_testkit::fake::{MemoryBackend as Block, Op};
    use store::{Image, ImageSpec, ImageState, MemoryBackend, Snapshot, Store};

    let objects = Arc::new(MemoryBackend::new());
    let images = Store::<Image>::open(objects.clone()).await.expect("images");
    let snapshots = Store::<Snapshot>::open(objects).await.expect("snapshots");
    let block = Arc::new(Block::new("pool"));
    let runner = Runner::new(runner::RunnerConfig::default());
    let source = crate::image_source::OciImageSource::new(Default::default()).expect("source");
    let controllers = Controllers::new(
        images.clone(),
        snapshots,
        block.clone(),
        Arc::new(source),
        runner.clone(),
        Arc::new(crate::events::EventStore::new(10, Duration::from_secs(60))),
        controllers::ControllerConfig::default(),
    );
    let mut img = Image::new(
        "v1",
        ImageSpec {
            size: 1 << 30,
            ..Default::default()
        },
    );
    img.metadata.labels.insert(
        store::keys::MANAGER_LABEL.into(),
        store::keys::MANAGER.into(),
    );
    images.create(img).await.expect("create");

    let (tx, rx) = watch::channel(Role::Standby { leader: None });
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(lead(rx, controllers, runner.clone(), shutdown.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        block.calls(Op::CreateImage),
        0,
        "a standby reconciles nothing"
    );

    tx.send(Role::Leader).expect("send");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while images.get("v1").await.expect("get").status.state != ImageState::Available {
        assert!(
            std::time::Instant::now() < deadline,
            "the leader never reconciled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    tx.send(Role::Lost {
        reason: "test".into(),
    })
    .expect("send");
    let res = tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .expect("lead returns")
        .expect("task");
    assert!(matches!(res, Err(Error::LostLeadership(r)) if r == "test"));
    let refused = runner.try_submit("after", |_| async { Ok(()) }).is_err();
    assert!(refused, "the runner is shut down after stepping down");
}
