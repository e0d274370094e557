//! Leadership: one writer per pool. Owns the leader lease loop ([`Leadership`]), running the
//! controllers only while this daemon leads ([`lead`]), and the Ceph implementation of the lease
//! ([`CephLease`], feature `ceph`). Must not touch the gRPC server: every daemon, leader or
//! standby, serves the IRI socket and writes requests into the shared store (its compare-and-set
//! keeps that safe); only the leader reconciles them and runs long operations.
//!
//! # The lease (Ceph backend)
//! An exclusive cls_lock `cephvol-leader` on the object `cephvol.leader` of the pool, taken for
//! `--leader-lease` and renewed every `--leader-renew-interval` (the OSD expires it if renewals
//! stop). The lock's cookie is the replica's identity (`--leader-id`). Next to it, the omap key
//! `leader` of the same object holds the [`LeaderRecord`] of the current (or last) leader: its
//! identity, client and address, written only while the writer holds the lock (checked by the
//! OSD in the same op).
//!
//! A daemon without the lease is a standby: it tries to take the lock every
//! [`LeaseTiming::poll`] (1 s at most). When it gets it, before acting it **fences** the previous
//! leader: it blocklists the address in the record (unless that leader released the lease on a
//! clean shutdown) and the last holder it saw while waiting, so that a paused old leader that wakes
//! up after its lease can no longer write anything (the OSDs refuse a blocklisted client, and drop
//! its watches, which also frees its images' exclusive locks at once). Only then does it write its
//! own record and start the controllers. If fencing fails (e.g. missing `osd blocklist` caps) it
//! does not lead: it releases the lock and keeps trying.
//!
//! A restarted daemon finds the lock held under its own identity by its dead predecessor (a live
//! one would still hold the socket, which refuses a second daemon, so the identity proves it is
//! gone): it fences that client, breaks its lock and takes over at once instead of waiting for the
//! lease to lapse.
//!
//! # Losing the lease
//! A leader steps down when a renewal says another client holds the lock, when this client is
//! fenced (blocklisted), or when its own lease lapses locally (no successful renewal within
//! `--leader-lease` of the last one's start; renewals that fail otherwise are retried every
//! second until then). Stepping down cancels the runner (interrupted operations leave the
//! resumable states the next leader picks up) and stops the controllers; the daemon then exits
//! with [`EXIT_LOST_LEADERSHIP`] (75) for its supervisor to restart it as a standby. It does not
//! re-join in-process: a fenced client's rados handle is dead for good, and a fresh process is the
//! only state known to be clean (new cluster client, empty queues); the store holds everything
//! that matters.
//!
//! On SIGTERM the leader drains as before, then marks its record released and unlocks, so a
//! standby takes over within a second and without fencing it (rolling upgrades).
//!
//! # Local backend
//! The data directory's `flock` already makes a second daemon on the same directory refuse to
//! start, so the only daemon is the leader ([`Leadership::always`]); there is no standby.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use controllers::Controllers;
use runner::{Runner, ShutdownMode};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::error::{Error, Result};

/// The object of the pool carrying the lease and the leader record.
pub const LEASE_OBJECT: &str = "cephvol.leader";
/// The cls_lock name.
pub const LOCK_NAME: &str = "cephvol-leader";
/// Omap key of [`LEASE_OBJECT`] holding the [`LeaderRecord`].
pub const RECORD_KEY: &str = "leader";
/// How long a fenced client stays blocklisted: far longer than any pause a process survives
/// (it notices its lapsed lease as soon as it runs again, and exits).
pub const FENCE_EXPIRY: Duration = Duration::from_secs(24 * 3600);
/// Exit code of a daemon that lost the leadership (EX_TEMPFAIL: restart me).
pub const EXIT_LOST_LEADERSHIP: u8 = 75;
/// Bound of the runner's cancellation when stepping down.
const STEP_DOWN_GRACE: Duration = Duration::from_secs(5);

/// A (would-be) holder of the lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// The replica's name (`--leader-id`), the lock's cookie.
    pub identity: String,
    /// The cluster client, `client.<global id>` (one per process).
    pub client: String,
    /// The client's address (what fencing blocklists).
    pub addr: String,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({} at {})", self.identity, self.client, self.addr)
    }
}

/// Outcome of a lease operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// Done: we hold the lease (take, renew), released it, or wrote under it.
    Held,
    /// Someone else holds it, or (renew, guarded write) we no longer do.
    NotOurs,
    /// This client is fenced (blocklisted): the cluster refuses everything it sends.
    Fenced,
}

/// The current (or last) leader, kept next to the lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderRecord {
    /// The leader's identity.
    pub identity: String,
    /// Its cluster client.
    pub client: String,
    /// Its address.
    pub addr: String,
    /// When it took over (RFC 3339).
    pub since: String,
    /// It released the lease on a clean shutdown: nothing to fence.
    #[serde(default)]
    pub released: bool,
}

impl LeaderRecord {
    fn of(h: &Holder) -> LeaderRecord {
        LeaderRecord {
            identity: h.identity.clone(),
            client: h.client.clone(),
            addr: h.addr.clone(),
            since: chrono::Utc::now().to_rfc3339(),
            released: false,
        }
    }
}

/// The cluster side of the lease: a lock with an expiry, the record beside it, and fencing.
/// Implemented on Ceph by [`CephLease`]; the tests use an in-memory one.
#[async_trait]
pub trait LeaseLock: Send + Sync + 'static {
    /// This process.
    fn me(&self) -> &Holder;
    /// Takes the lock for `lease` (or extends ours).
    async fn acquire(&self, lease: Duration) -> Result<Attempt>;
    /// Extends our lock by `lease`; `NotOurs` once it lapsed or was broken.
    async fn renew(&self, lease: Duration) -> Result<Attempt>;
    /// Gives our lock up.
    async fn release(&self) -> Result<Attempt>;
    /// The live holders of the lock.
    async fn holders(&self) -> Result<Vec<Holder>>;
    /// Removes another holder's lock.
    async fn break_lock(&self, holder: &Holder) -> Result<()>;
    /// Blocklists `addr` and waits until our later operations are ordered after that.
    async fn fence(&self, addr: &str) -> Result<()>;
    /// The leader record, if any.
    async fn record(&self) -> Result<Option<LeaderRecord>>;
    /// Writes the leader record, only while we hold the lock (`NotOurs` otherwise).
    async fn set_record(&self, record: &LeaderRecord) -> Result<Attempt>;
}

/// This daemon's part in the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Not leading: the leader (when known) is another daemon, or the lease is being sought.
    Standby {
        /// The holder of the lease, as last seen.
        leader: Option<Holder>,
    },
    /// This daemon leads: it reconciles and runs long operations.
    Leader,
    /// This daemon led and lost the lease: it stops acting and exits.
    Lost {
        /// Why.
        reason: String,
    },
}

/// Lease timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTiming {
    /// Duration of the lease (`--leader-lease`).
    pub lease: Duration,
    /// Renewal period of the leader (`--leader-renew-interval`).
    pub renew: Duration,
    /// How often a standby tries to take the lease: the renewal period, at most 1 s.
    pub poll: Duration,
}

impl LeaseTiming {
    /// Timing from the two flags.
    pub fn new(lease: Duration, renew: Duration) -> LeaseTiming {
        LeaseTiming {
            lease,
            renew,
            poll: renew.min(Duration::from_secs(1)),
        }
    }
}

/// The running lease loop (or, on the local backend, permanent leadership).
#[derive(Debug)]
pub struct Leadership {
    role: watch::Receiver<Role>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
    /// The sender of a fixed role (no lease loop), kept so the role channel stays open.
    _fixed: Option<watch::Sender<Role>>,
}

impl Leadership {
    /// Leader from the start and for good (the local backend: the data directory lock already
    /// excludes any other daemon).
    pub fn always() -> Leadership {
        let (tx, role) = watch::channel(Role::Leader);
        Leadership {
            role,
            stop: CancellationToken::new(),
            task: None,
            _fixed: Some(tx),
        }
    }

    /// Starts the lease loop on `lock` (standby until it gets the lease).
    pub fn start(lock: Arc<dyn LeaseLock>, timing: LeaseTiming) -> Leadership {
        let (tx, role) = watch::channel(Role::Standby { leader: None });
        let stop = CancellationToken::new();
        let task = tokio::spawn(campaign(lock, timing, tx, stop.clone()));
        Leadership {
            role,
            stop,
            task: Some(task),
            _fixed: None,
        }
    }

    /// Follows the role.
    pub fn role(&self) -> watch::Receiver<Role> {
        self.role.clone()
    }

    /// True while this daemon leads.
    pub fn is_leader(&self) -> bool {
        *self.role.borrow() == Role::Leader
    }

    /// Ends the lease loop; a leader marks its record released and unlocks, so a standby takes
    /// over at once without fencing it. Call after the controllers and the runner stopped.
    pub async fn release(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Runs the controllers while this daemon leads (waiting in standby until it does). Returns
/// `Ok` when `shutdown` is cancelled, and `Error::LostLeadership` after stepping down: runner
/// cancelled, controllers stopped.
pub async fn lead(
    mut role: watch::Receiver<Role>,
    controllers: Controllers,
    runner: Runner,
    shutdown: CancellationToken,
) -> Result<()> {
    loop {
        let current = role.borrow_and_update().clone();
        match current {
            Role::Leader => break,
            Role::Lost { reason } => return Err(Error::LostLeadership(reason)),
            Role::Standby { .. } => {}
        }
        tokio::select! {
            changed = role.changed() => {
                if changed.is_err() {
                    return Err(Error::LostLeadership("the lease loop ended".into()));
                }
            }
            _ = shutdown.cancelled() => return Ok(()),
        }
    }
    let token = shutdown.child_token();
    let mut task = tokio::spawn(controllers.run(token.clone()));
    let reason = loop {
        tokio::select! {
            res = &mut task => {
                return match res {
                    Ok(Ok(())) if shutdown.is_cancelled() => Ok(()),
                    Ok(Ok(())) => Err(Error::Backend("controllers stopped unexpectedly".into())),
                    Ok(Err(e)) => Err(Error::Backend(format!("controllers failed: {e}"))),
                    Err(e) => Err(Error::Backend(format!("controllers task failed: {e}"))),
                };
            }
            changed = role.changed() => {
                if changed.is_err() {
                    break "the lease loop ended".to_string();
                }
                if let Role::Lost { reason } = role.borrow_and_update().clone() {
                    break reason;
                }
            }
        }
    };
    error!(
        reason,
        "stepping down: cancelling long operations and stopping the controllers (interrupted \
         work resumes under the next leader)"
    );
    token.cancel();
    runner
        .shutdown(ShutdownMode::Cancel {
            deadline: STEP_DOWN_GRACE,
        })
        .await;
    if tokio::time::timeout(STEP_DOWN_GRACE, &mut task)
        .await
        .is_err()
    {
        warn!("controllers did not stop in time after stepping down");
        task.abort();
    }
    Err(Error::LostLeadership(reason))
}

/// Resolves with the reason once `role` says the lease is lost (never while it is not).
pub async fn lost(mut role: watch::Receiver<Role>) -> String {
    loop {
        if let Role::Lost { reason } = &*role.borrow_and_update() {
            return reason.clone();
        }
        if role.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// Publishes a role change (and logs it) if it is one.
fn publish(tx: &watch::Sender<Role>, role: Role) {
    tx.send_if_modified(|current| {
        if *current == role {
            return false;
        }
        match &role {
            Role::Standby { leader: Some(h) } => {
                info!(leader = %h, "standby: another daemon leads the pool")
            }
            Role::Standby { leader: None } => info!("not leading"),
            Role::Leader => info!("leader: this daemon now reconciles the pool"),
            Role::Lost { reason } => error!(reason, "lost the leader lease"),
        }
        *current = role;
        true
    });
}

/// Sleeps `d`; false if `stop` fired first.
async fn pause(d: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = stop.cancelled() => false,
    }
}

/// The lease loop: standby until the lease is ours, fence, lead until it is lost or released.
async fn campaign(
    lock: Arc<dyn LeaseLock>,
    t: LeaseTiming,
    tx: watch::Sender<Role>,
    stop: CancellationToken,
) {
    let me = lock.me().clone();
    info!(identity = %me.identity, client = %me.client, addr = %me.addr,
        lease = ?t.lease, renew = ?t.renew, "seeking the leader lease of the pool");
    // Holders seen while waiting (fenced on takeover), and addresses already fenced.
    let mut seen: Option<Holder> = None;
    let mut fenced: BTreeSet<String> = BTreeSet::new();
    loop {
        // Standby: try to take the lease.
        let started = Instant::now();
        let attempt = match lock.acquire(t.lease).await {
            Ok(a) => a,
            Err(e) => {
                warn!(error = %e, "trying to take the leader lease failed");
                if !pause(t.poll, &stop).await {
                    return;
                }
                continue;
            }
        };
        match attempt {
            Attempt::Fenced => {
                publish(
                    &tx,
                    Role::Lost {
                        reason: "this client is blocklisted (fenced)".into(),
                    },
                );
                return;
            }
            Attempt::NotOurs => {
                match lock.holders().await {
                    Ok(holders) => {
                        if let Some(h) = holders.into_iter().next() {
                            if h.identity == me.identity && h.client != me.client {
                                info!(previous = %h, "the lease is held under this daemon's \
                                    identity by an earlier process, which is gone: fencing it and \
                                    taking over");
                                let broken = match fence(&*lock, &h.addr, &mut fenced).await {
                                    Ok(()) => lock.break_lock(&h).await,
                                    Err(e) => Err(e),
                                };
                                match broken {
                                    Ok(()) => continue,
                                    Err(e) => {
                                        warn!(error = %e, "taking the lease from the earlier process failed")
                                    }
                                }
                            }
                            seen = Some(h.clone());
                            publish(&tx, Role::Standby { leader: Some(h) });
                        }
                    }
                    Err(e) => debug!(error = %e, "listing the lease holders failed"),
                }
                if !pause(t.poll, &stop).await {
                    return;
                }
                continue;
            }
            Attempt::Held => {}
        }
        // Ours: fence the previous leader before acting.
        match take_over(&*lock, &me, seen.as_ref(), &mut fenced).await {
            Ok(Attempt::Held) => {}
            Ok(Attempt::Fenced) => {
                publish(
                    &tx,
                    Role::Lost {
                        reason: "this client is blocklisted (fenced)".into(),
                    },
                );
                return;
            }
            Ok(Attempt::NotOurs) | Err(_) => {
                if let Ok(Attempt::NotOurs) = lock.release().await {
                    debug!("the lease was already gone");
                }
                if !pause(t.poll, &stop).await {
                    return;
                }
                continue;
            }
        }
        if started.elapsed() >= t.lease {
            warn!(took = ?started.elapsed(), "taking over outlasted the lease: trying again");
            let _ = lock.release().await;
            continue;
        }
        publish(&tx, Role::Leader);
        let reason = hold(&*lock, t, started, &stop).await;
        match reason {
            None => {
                // Released on request (clean shutdown).
                let mut record = LeaderRecord::of(&me);
                record.released = true;
                match lock.set_record(&record).await {
                    Ok(Attempt::Held) => {}
                    other => debug!(?other, "marking the leader record released failed"),
                }
                match lock.release().await {
                    Ok(Attempt::Held) => info!("released the leader lease"),
                    other => warn!(?other, "releasing the leader lease failed"),
                }
                publish(&tx, Role::Standby { leader: None });
            }
            Some(reason) => {
                publish(&tx, Role::Lost { reason });
                // Hand over at once if we still can; a fenced client is refused.
                match lock.release().await {
                    Ok(Attempt::Fenced) => error!(
                        "the cluster refuses this daemon's writes: it is blocklisted (fenced by the \
                         daemon that took over)"
                    ),
                    Ok(_) => {}
                    Err(e) => debug!(error = %e, "releasing the lapsed lease failed"),
                }
            }
        }
        return;
    }
}

/// Blocklists `addr` unless already done.
async fn fence(lock: &dyn LeaseLock, addr: &str, fenced: &mut BTreeSet<String>) -> Result<()> {
    if fenced.contains(addr) {
        return Ok(());
    }
    lock.fence(addr).await?;
    info!(addr, "fenced (blocklisted) the previous leader");
    fenced.insert(addr.to_string());
    Ok(())
}

/// With the lock just taken: fences the previous leader (from the record, unless it released
/// cleanly, and the last holder seen), then writes our record. `Held` when we may lead.
async fn take_over(
    lock: &dyn LeaseLock,
    me: &Holder,
    seen: Option<&Holder>,
    fenced: &mut BTreeSet<String>,
) -> Result<Attempt> {
    let record = lock.record().await.inspect_err(|e| {
        warn!(error = %e, "reading the leader record failed: not taking over yet");
    })?;
    // The recorded leader, unless it released the lease cleanly; and the holder last seen, unless
    // that is the one that released cleanly.
    let released = record
        .as_ref()
        .filter(|r| r.released)
        .map(|r| r.client.clone());
    let mut targets: Vec<String> = Vec::new();
    if let Some(r) = &record {
        if !r.released && r.addr != me.addr {
            targets.push(r.addr.clone());
        }
    }
    if let Some(h) = seen {
        if h.addr != me.addr && !targets.contains(&h.addr) && released.as_ref() != Some(&h.client) {
            targets.push(h.addr.clone());
        }
    }
    for addr in targets {
        fence(lock, &addr, fenced).await.inspect_err(|e| {
            error!(addr, error = %e, "cannot fence the previous leader: not taking over \
                (does the client have the `osd blocklist` mon capability of `profile rbd`?)");
        })?;
    }
    let written = lock.set_record(&LeaderRecord::of(me)).await?;
    if written == Attempt::Held {
        let from = record
            .filter(|r| r.addr != me.addr)
            .map(|r| format!("{} ({} at {})", r.identity, r.client, r.addr));
        info!(
            previous = from.as_deref().unwrap_or("none"),
            "took over the leader lease"
        );
    }
    Ok(written)
}

/// Leads: renews the lease until it is lost (the reason) or `stop` fires (`None`).
async fn hold(
    lock: &dyn LeaseLock,
    t: LeaseTiming,
    mut valid_from: Instant,
    stop: &CancellationToken,
) -> Option<String> {
    let mut next = t.renew;
    loop {
        let deadline = valid_from + t.lease;
        tokio::select! {
            biased;
            _ = tokio::time::sleep_until(deadline) => {
                return Some(format!("the lease lapsed: no renewal succeeded for {:?}", t.lease));
            }
            _ = stop.cancelled() => return None,
            _ = tokio::time::sleep(next) => {}
        }
        let sent = Instant::now();
        let outcome = tokio::select! {
            biased;
            _ = tokio::time::sleep_until(deadline) => {
                return Some(format!("the lease lapsed: no renewal succeeded for {:?}", t.lease));
            }
            res = lock.renew(t.lease) => res,
        };
        match outcome {
            Ok(Attempt::Held) => {
                valid_from = sent;
                next = t.renew;
            }
            Ok(Attempt::NotOurs) => {
                return Some("another daemon holds the lease (ours lapsed or was broken)".into())
            }
            Ok(Attempt::Fenced) => {
                return Some(
                    "this daemon was fenced (blocklisted) by the daemon that took over".into(),
                )
            }
            Err(e) => {
                next = t.poll;
                warn!(error = %e, "renewing the leader lease failed: retrying");
            }
        }
    }
}

#[cfg(feature = "ceph")]
pub use self::ceph_lease::CephLease;

#[cfg(feature = "ceph")]
mod ceph_lease {
    use super::*;

    /// The lease on a Ceph pool: cls_lock on [`LEASE_OBJECT`], the record in its omap, fencing by
    /// `osd blocklist add` (see the module docs).
    #[derive(Debug)]
    pub struct CephLease {
        lock: ceph::ExclusiveLock,
        rados: ceph::Rados,
        me: Holder,
    }

    impl CephLease {
        /// The lease of `backend`'s pool for the replica named `identity`.
        pub fn new(backend: &ceph::CephBackend, identity: &str) -> Result<CephLease> {
            let rados = backend.rados().clone();
            let addr = rados
                .addrs()
                .map_err(|e| Error::Backend(format!("reading this client's address: {e}")))?;
            let me = Holder {
                identity: identity.to_string(),
                client: format!("client.{}", rados.instance_id()),
                addr,
            };
            let lock = ceph::ExclusiveLock::new(
                backend.ioctx().clone(),
                LEASE_OBJECT,
                LOCK_NAME,
                identity,
            );
            Ok(CephLease { lock, rados, me })
        }
    }

    fn err(what: &str) -> impl FnOnce(rbd::RbdError) -> Error + '_ {
        move |e| Error::Backend(format!("{what}: {e}"))
    }

    fn attempt(o: ceph::LockOutcome) -> Attempt {
        match o {
            ceph::LockOutcome::Held => Attempt::Held,
            ceph::LockOutcome::NotOurs => Attempt::NotOurs,
            ceph::LockOutcome::Fenced => Attempt::Fenced,
        }
    }

    async fn blocking<T: Send + 'static>(
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<T> {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| Error::Backend(format!("lease task failed: {e}")))?
    }

    #[async_trait]
    impl LeaseLock for CephLease {
        fn me(&self) -> &Holder {
            &self.me
        }

        async fn acquire(&self, lease: Duration) -> Result<Attempt> {
            let l = self.lock.clone();
            blocking(move || {
                l.acquire(lease, "cephvol leader lease")
                    .map(attempt)
                    .map_err(err("taking the leader lease"))
            })
            .await
        }

        async fn renew(&self, lease: Duration) -> Result<Attempt> {
            let l = self.lock.clone();
            blocking(move || {
                l.renew(lease, "cephvol leader lease")
                    .map(attempt)
                    .map_err(err("renewing the leader lease"))
            })
            .await
        }

        async fn release(&self) -> Result<Attempt> {
            let l = self.lock.clone();
            blocking(move || {
                l.release()
                    .map(attempt)
                    .map_err(err("releasing the leader lease"))
            })
            .await
        }

        async fn holders(&self) -> Result<Vec<Holder>> {
            let l = self.lock.clone();
            blocking(move || {
                Ok(l.lockers()
                    .map_err(err("listing the leader lease"))?
                    .into_iter()
                    .map(|h| Holder {
                        identity: h.cookie,
                        client: h.client,
                        addr: h.addr,
                    })
                    .collect())
            })
            .await
        }

        async fn break_lock(&self, holder: &Holder) -> Result<()> {
            let (l, h) = (self.lock.clone(), holder.clone());
            blocking(move || {
                l.break_lock(&ceph::Locker {
                    client: h.client,
                    cookie: h.identity,
                    addr: h.addr,
                })
                .map_err(err("breaking the leader lease"))
            })
            .await
        }

        async fn fence(&self, addr: &str) -> Result<()> {
            let (r, a) = (self.rados.clone(), addr.to_string());
            blocking(move || {
                r.blocklist_add(&a, FENCE_EXPIRY)
                    .map_err(err("blocklisting the previous leader"))
            })
            .await
        }

        async fn record(&self) -> Result<Option<LeaderRecord>> {
            let l = self.lock.clone();
            let bytes =
                blocking(move || l.get(RECORD_KEY).map_err(err("reading the leader record")))
                    .await?;
            match bytes {
                None => Ok(None),
                Some(b) => match serde_json::from_slice(&b) {
                    Ok(r) => Ok(Some(r)),
                    Err(e) => {
                        warn!(error = %e, "the leader record is unreadable: ignoring it");
                        Ok(None)
                    }
                },
            }
        }

        async fn set_record(&self, record: &LeaderRecord) -> Result<Attempt> {
            let bytes = serde_json::to_vec(record)
                .map_err(|e| Error::Backend(format!("encoding the leader record: {e}")))?;
            let l = self.lock.clone();
            blocking(move || {
                let done = l
                    .set_if_locked(RECORD_KEY, &bytes)
                    .map_err(err("writing the leader record"))?;
                Ok(match done {
                    ceph::GuardedWrite::Done => Attempt::Held,
                    ceph::GuardedWrite::NotLocked => Attempt::NotOurs,
                    ceph::GuardedWrite::Fenced => Attempt::Fenced,
                })
            })
            .await
        }
    }
}

#[cfg(test)]
mod tests;
