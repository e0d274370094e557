//! The typed store: [`Store`], [`ListOptions`], [`Watch`] and [`WatchEvent`].

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use chrono::Utc;
use tracing::{debug, warn};

use crate::backend::{Backend, Precondition, Previous, RemoteChange, RemoteChanges};
use crate::error::{Result, StoreError};
use crate::model::Object;

/// Default bound of a watcher's queue (the Go provider's channel size).
pub const DEFAULT_WATCH_QUEUE: usize = 1024;

/// Number of per-id lock stripes.
const LOCK_STRIPES: usize = 64;

/// How often a delete re-reads and retries when another writer (another process on a shared backend) changed
/// the record between its read and its compare-and-set.
const DELETE_RETRIES: usize = 16;

/// Tuning of a [`Store`].
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Bound of each watcher's queue; when a watcher has this many undelivered events and another one arrives,
    /// the queue is replaced by one [`WatchEvent::Resync`]. At least 1.
    pub watch_queue: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            watch_queue: DEFAULT_WATCH_QUEUE,
        }
    }
}

/// Selects objects by labels and indexed fields (all conditions must hold).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ListOptions {
    /// Label equalities (AND).
    pub labels: BTreeMap<String, String>,
    /// Labels that must exist, with any value.
    pub has_labels: Vec<String>,
    /// Indexed field equalities (AND). A field without an indexer ([`Object::indexed_fields`]) is
    /// `StoreError::Invalid`.
    pub fields: BTreeMap<String, String>,
}

impl ListOptions {
    /// No conditions: selects everything.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the condition `labels[key] == value`.
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// Adds the condition "label `key` exists".
    pub fn has_label(mut self, key: impl Into<String>) -> Self {
        self.has_labels.push(key.into());
        self
    }

    /// Adds the condition `field(name) == value`.
    pub fn field(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.fields.insert(name.into(), value.into());
        self
    }

    fn validate<T: Object>(&self) -> Result<()> {
        for name in self.fields.keys() {
            if !T::indexed_fields().contains(&name.as_str()) {
                return Err(StoreError::Invalid(format!(
                    "field selector {name:?}: {} has no indexer for this field (indexed: {:?})",
                    T::COLLECTION,
                    T::indexed_fields()
                )));
            }
        }
        Ok(())
    }

    /// True if `obj` satisfies every condition (fields must have been validated).
    pub fn matches<T: Object>(&self, obj: &T) -> bool {
        let labels = &obj.metadata().labels;
        self.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.has_labels.iter().all(|k| labels.contains_key(k))
            && self
                .fields
                .iter()
                .all(|(name, v)| obj.field(name).as_ref() == Some(v))
    }
}

/// One change seen by a [`Watch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent<T> {
    /// The object was created, or an update made it match the watch's selector.
    Created(T),
    /// The object changed (including a soft delete that set `deletedAt`) and still matches.
    Updated(T),
    /// The object is gone (final removal; the payload is its last state, with `deletedAt` set and the version
    /// one above the last stored one), or an update made it stop matching the selector (payload: the new state).
    Deleted(T),
    /// The watcher fell behind: some events were dropped and replaced by this marker. Re-list to catch up;
    /// events after the marker are delivered normally again.
    Resync,
}

impl<T> WatchEvent<T> {
    /// The object carried by the event (`None` for `Resync`).
    pub fn object(&self) -> Option<&T> {
        match self {
            WatchEvent::Created(o) | WatchEvent::Updated(o) | WatchEvent::Deleted(o) => Some(o),
            WatchEvent::Resync => None,
        }
    }
}

struct Queue<T> {
    events: VecDeque<WatchEvent<T>>,
    /// A `Resync` is queued and not yet received: further events are coalesced into it.
    resync_pending: bool,
    /// The store was dropped: `recv` drains the queue, then returns `None`.
    closed: bool,
    /// The `Watch` was dropped: the store forgets this watcher.
    dropped: bool,
}

struct Watcher<T> {
    opts: ListOptions,
    capacity: usize,
    queue: Mutex<Queue<T>>,
    notify: tokio::sync::Notify,
}

impl<T> Watcher<T> {
    fn lock(&self) -> MutexGuard<'_, Queue<T>> {
        // Queue operations cannot panic half-way; a poisoned lock is still consistent.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, event: WatchEvent<T>, collection: &str) {
        let mut q = self.lock();
        if q.dropped || q.closed || q.resync_pending {
            return;
        }
        if q.events.len() >= self.capacity {
            warn!(
                collection,
                capacity = self.capacity,
                "watcher lagged: queued events replaced by Resync"
            );
            q.events.clear();
            q.events.push_back(WatchEvent::Resync);
            q.resync_pending = true;
        } else {
            q.events.push_back(event);
        }
        drop(q);
        self.notify.notify_one();
    }

    /// Queues a `Resync` (unless one is pending): the consumer must re-list.
    fn push_resync(&self) {
        let mut q = self.lock();
        if q.dropped || q.closed || q.resync_pending {
            return;
        }
        q.events.push_back(WatchEvent::Resync);
        q.resync_pending = true;
        drop(q);
        self.notify.notify_one();
    }
}

/// A stream of changes of one [`Store`], filtered by [`ListOptions`]. See [`Store::watch`].
pub struct Watch<T> {
    watcher: Arc<Watcher<T>>,
}

impl<T> fmt::Debug for Watch<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watch")
            .field("opts", &self.watcher.opts)
            .finish_non_exhaustive()
    }
}

impl<T> Watch<T> {
    /// The next event; waits for one. `None` only once every handle of the store is dropped and the queued
    /// events are drained.
    pub async fn recv(&mut self) -> Option<WatchEvent<T>> {
        loop {
            if let Some(next) = self.try_next() {
                return next;
            }
            self.watcher.notify.notified().await;
        }
    }

    /// The next event if one is queued, without waiting (`None` also when the store is gone).
    pub fn try_recv(&mut self) -> Option<WatchEvent<T>> {
        self.try_next().flatten()
    }

    /// `Some(Some(ev))`: an event; `Some(None)`: closed and drained; `None`: nothing yet.
    fn try_next(&mut self) -> Option<Option<WatchEvent<T>>> {
        let mut q = self.watcher.lock();
        match q.events.pop_front() {
            Some(ev) => {
                if matches!(ev, WatchEvent::Resync) {
                    q.resync_pending = false;
                }
                Some(Some(ev))
            }
            None if q.closed => Some(None),
            None => None,
        }
    }

    /// Number of events queued and not yet received.
    pub fn pending(&self) -> usize {
        self.watcher.lock().events.len()
    }
}

impl<T> Drop for Watch<T> {
    fn drop(&mut self) {
        let mut q = self.watcher.lock();
        q.dropped = true;
        q.events.clear();
    }
}

/// A mutation, as seen by the dispatcher.
enum Change<'a, T> {
    Created(&'a T),
    Updated { old: &'a T, new: &'a T },
    Removed { old: &'a T, last: &'a T },
}

struct Inner<T: Object> {
    backend: Arc<dyn Backend>,
    locks: Vec<tokio::sync::Mutex<()>>,
    watchers: Mutex<Vec<Arc<Watcher<T>>>>,
    watch_queue: usize,
    /// Undecodable records skipped by lists (see [`Store::list`]).
    skipped: AtomicU64,
}

impl<T: Object> Inner<T> {
    fn watchers(&self) -> MutexGuard<'_, Vec<Arc<Watcher<T>>>> {
        // Pushing to watchers cannot panic half-way; a poisoned lock is still consistent.
        self.watchers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// True while at least one `Watch` is alive.
    fn watched(&self) -> bool {
        self.watchers().iter().any(|w| !w.lock().dropped)
    }

    fn dispatch(&self, change: Change<'_, T>) {
        let mut watchers = self.watchers();
        watchers.retain(|w| !w.lock().dropped);
        for w in watchers.iter() {
            let event = match change {
                Change::Created(new) => w
                    .opts
                    .matches(new)
                    .then(|| WatchEvent::Created(new.clone())),
                Change::Updated { old, new } => match (w.opts.matches(old), w.opts.matches(new)) {
                    (true, true) => Some(WatchEvent::Updated(new.clone())),
                    (false, true) => Some(WatchEvent::Created(new.clone())),
                    (true, false) => Some(WatchEvent::Deleted(new.clone())),
                    (false, false) => None,
                },
                Change::Removed { old, last } => w
                    .opts
                    .matches(old)
                    .then(|| WatchEvent::Deleted(last.clone())),
            };
            if let Some(event) = event {
                w.push(event, T::COLLECTION);
            }
        }
    }
}

impl<T: Object> Drop for Inner<T> {
    fn drop(&mut self) {
        for w in self.watchers().drain(..) {
            w.lock().closed = true;
            w.notify.notify_one();
        }
    }
}

/// A typed object store over a [`Backend`]. Cloning is cheap and shares everything (locks, watchers).
///
/// See the crate docs for the guarantees.
pub struct Store<T: Object> {
    inner: Arc<Inner<T>>,
}

impl<T: Object> Clone for Store<T> {
    fn clone(&self) -> Self {
        Store {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<T: Object> fmt::Debug for Store<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("collection", &T::COLLECTION)
            .finish_non_exhaustive()
    }
}

fn encode<T: Object>(obj: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(obj).map_err(|e| {
        StoreError::Invalid(format!(
            "cannot encode {}/{}: {e}",
            T::COLLECTION,
            obj.metadata().id
        ))
    })
}

fn decode<T: Object>(id: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes)
        .map_err(|e| StoreError::Invalid(format!("cannot decode {}/{id}: {e}", T::COLLECTION)))
}

fn validate_id(id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(StoreError::Invalid(
            "object id must not be empty".to_owned(),
        ));
    }
    Ok(())
}

impl<T: Object> Store<T> {
    /// A store over `backend` with default options. Loads nothing eagerly.
    pub async fn open(backend: Arc<dyn Backend>) -> Result<Self> {
        Self::open_with(backend, StoreOptions::default()).await
    }

    /// A store over `backend` with these options.
    pub async fn open_with(backend: Arc<dyn Backend>, opts: StoreOptions) -> Result<Self> {
        if opts.watch_queue == 0 {
            return Err(StoreError::Invalid(
                "watch_queue must be at least 1".to_owned(),
            ));
        }
        let remote = backend.remote_changes(T::COLLECTION);
        let store = Store {
            inner: Arc::new(Inner {
                backend,
                locks: (0..LOCK_STRIPES)
                    .map(|_| tokio::sync::Mutex::new(()))
                    .collect(),
                watchers: Mutex::new(Vec::new()),
                watch_queue: opts.watch_queue,
                skipped: AtomicU64::new(0),
            }),
        };
        if let Some(changes) = remote {
            tokio::spawn(follow_remote(Arc::downgrade(&store.inner), changes));
        }
        Ok(store)
    }

    /// Turns one change reported by the backend (another process wrote `key`) into watch events: the key is
    /// re-read under its lock; present → `Created` (the writer created it) or `Updated` (old state: what the
    /// writer replaced, when known); absent after a write that replaced a known value → final removal
    /// (`Deleted` with that value, marked deleted, version + 1). Nothing is read while nobody watches.
    async fn apply_remote(&self, change: RemoteChange) {
        if !self.inner.watched() {
            return;
        }
        let (key, previous) = match change {
            RemoteChange::Resync => {
                debug!(
                    collection = T::COLLECTION,
                    "remote changes may be missed: resync"
                );
                for w in self.inner.watchers().iter() {
                    w.push_resync();
                }
                return;
            }
            RemoteChange::Key { key, previous } => (key, previous),
        };
        let _guard = self.lock(&key).await;
        let current = match self.inner.backend.get(T::COLLECTION, &key).await {
            Ok(current) => current,
            Err(e) => {
                warn!(collection = T::COLLECTION, id = %key, error = %e,
                    "re-reading a remotely changed record failed: resync");
                for w in self.inner.watchers().iter() {
                    w.push_resync();
                }
                return;
            }
        };
        let old = match &previous {
            Previous::Value(bytes) => match decode::<T>(&key, bytes) {
                Ok(old) => Some((bytes.as_slice(), old)),
                Err(e) => {
                    debug!(error = %e, "undecodable previous value of a remote change");
                    None
                }
            },
            Previous::Absent | Previous::Unknown => None,
        };
        match current {
            Some(bytes) => {
                let new = match decode::<T>(&key, &bytes) {
                    Ok(new) => new,
                    Err(e) => {
                        warn!(error = %e, "remotely changed record is undecodable");
                        return;
                    }
                };
                debug!(collection = T::COLLECTION, id = %key, "remote change");
                match (&previous, old) {
                    (_, Some((old_bytes, _))) if old_bytes == bytes.as_slice() => {}
                    (_, Some((_, old))) => self.inner.dispatch(Change::Updated {
                        old: &old,
                        new: &new,
                    }),
                    (Previous::Absent, None) => self.inner.dispatch(Change::Created(&new)),
                    (_, None) => self.inner.dispatch(Change::Updated {
                        old: &new,
                        new: &new,
                    }),
                }
            }
            None => {
                // Gone: a final removal if we know what was removed; otherwise the write we were told
                // about was followed by a removal whose own report carries the removed value.
                if let Some((_, old)) = old {
                    let mut last = old.clone();
                    let md = last.metadata_mut();
                    md.deleted_at = Some(md.deleted_at.unwrap_or_else(Utc::now));
                    md.resource_version = md.resource_version.saturating_add(1);
                    debug!(collection = T::COLLECTION, id = %key, "remote removal");
                    self.inner.dispatch(Change::Removed {
                        old: &old,
                        last: &last,
                    });
                }
            }
        }
    }

    async fn lock(&self, id: &str) -> tokio::sync::MutexGuard<'_, ()> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        id.hash(&mut h);
        let stripe = (h.finish() % LOCK_STRIPES as u64) as usize;
        self.inner.locks[stripe].lock().await
    }

    /// Reads `id`: its stored bytes and the decoded object.
    async fn read(&self, id: &str) -> Result<(Vec<u8>, T)> {
        match self.inner.backend.get(T::COLLECTION, id).await? {
            Some(bytes) => {
                let obj = decode::<T>(id, &bytes)?;
                Ok((bytes, obj))
            }
            None => Err(StoreError::NotFound(id.to_owned())),
        }
    }

    /// Creates `obj`: runs [`Object::prepare_create`], sets `createdAt = now`, `resourceVersion = 1`, clears
    /// `deletedAt`, writes with `Precondition::Absent` and emits `Created`. Returns the stored object.
    ///
    /// Errors: `AlreadyExists(id)`, `Invalid` (empty id), `Backend`.
    pub async fn create(&self, obj: T) -> Result<T> {
        let this = self.clone();
        detach(async move { this.create_inner(obj).await }).await
    }

    #[tracing::instrument(level = "debug", name = "store.create", skip_all,
        fields(collection = T::COLLECTION, id = %obj.metadata().id))]
    async fn create_inner(&self, obj: T) -> Result<T> {
        let id = obj.metadata().id.clone();
        validate_id(&id)?;
        let _guard = self.lock(&id).await;
        let mut obj = obj;
        obj.prepare_create();
        {
            let md = obj.metadata_mut();
            md.created_at = Utc::now();
            md.deleted_at = None;
            md.resource_version = 1;
        }
        let bytes = encode(&obj)?;
        self.inner
            .backend
            .put(T::COLLECTION, &id, bytes, Precondition::Absent)
            .await?;
        debug!("created");
        self.inner.dispatch(Change::Created(&obj));
        Ok(obj)
    }

    /// The stored object `id`. Errors: `NotFound(id)`, `Invalid` (undecodable record), `Backend`.
    pub async fn get(&self, id: &str) -> Result<T> {
        Ok(self.read(id).await?.1)
    }

    /// Writes `obj` if its `resourceVersion` is the stored one, and returns the stored result.
    ///
    /// * `createdAt` and `deletedAt` are store-owned: the stored values are kept whatever `obj` says (an update
    ///   can neither clear nor set `deletedAt`).
    /// * If the stored object is deleted (`deletedAt` set) and `obj` has no finalizers left, the object is
    ///   removed (final removal) and `Deleted` is emitted; the returned object is its last state.
    /// * If nothing but the version would change (same JSON meaning), nothing is written, no event is emitted
    ///   and the stored object is returned unchanged (this keeps reconcilers from waking themselves up).
    /// * Otherwise `resourceVersion` is incremented, the record is replaced with a compare-and-set against the
    ///   bytes read, and `Updated` is emitted.
    ///
    /// Errors: `NotFound(id)`, `Conflict { id, expected: obj's version, actual: stored version }`, `Invalid`,
    /// `Backend`.
    pub async fn update(&self, obj: &T) -> Result<T> {
        let this = self.clone();
        let obj = obj.clone();
        detach(async move { this.update_inner(&obj).await }).await
    }

    #[tracing::instrument(level = "debug", name = "store.update", skip_all,
        fields(collection = T::COLLECTION, id = %obj.metadata().id))]
    async fn update_inner(&self, obj: &T) -> Result<T> {
        let id = obj.metadata().id.clone();
        validate_id(&id)?;
        let _guard = self.lock(&id).await;
        let (old_bytes, old) = self.read(&id).await?;
        let expected = obj.metadata().resource_version;
        let actual = old.metadata().resource_version;
        if expected != actual {
            return Err(StoreError::Conflict {
                id,
                expected,
                actual,
            });
        }
        let mut new = obj.clone();
        {
            let md = new.metadata_mut();
            md.created_at = old.metadata().created_at;
            md.deleted_at = old.metadata().deleted_at;
        }
        if new.metadata().is_deleted() && new.metadata().finalizers.is_empty() {
            new.metadata_mut().resource_version = actual.saturating_add(1);
            self.cas_remove(&id, expected, old_bytes).await?;
            debug!(
                version = actual.saturating_add(1),
                "removed (last finalizer dropped)"
            );
            self.inner.dispatch(Change::Removed {
                old: &old,
                last: &new,
            });
            return Ok(new);
        }
        if same_meaning(&old, &new)? {
            return Ok(old);
        }
        new.metadata_mut().resource_version = actual.saturating_add(1);
        let bytes = encode(&new)?;
        self.cas_put(&id, expected, bytes, old_bytes).await?;
        debug!(version = actual.saturating_add(1), "updated");
        self.inner.dispatch(Change::Updated {
            old: &old,
            new: &new,
        });
        Ok(new)
    }

    /// Deletes `id`.
    ///
    /// * No finalizers: removed at once; `Deleted` is emitted with the last state (`deletedAt = now`, version + 1).
    /// * Finalizers and not yet deleted: `deletedAt = now`, version + 1, written; `Updated` is emitted.
    /// * Already deleted (finalizers remain): no-op, `Ok`.
    ///
    /// If another process changes the record between our read and our compare-and-set, the delete re-reads and
    /// retries (up to 16 times, then `Conflict`).
    ///
    /// Errors: `NotFound(id)`, `Conflict` (see above), `Invalid`, `Backend`.
    pub async fn delete(&self, id: &str) -> Result<()> {
        let this = self.clone();
        let id = id.to_owned();
        detach(async move { this.delete_inner(&id).await }).await
    }

    #[tracing::instrument(level = "debug", name = "store.delete", skip_all,
        fields(collection = T::COLLECTION, id = %id))]
    async fn delete_inner(&self, id: &str) -> Result<()> {
        validate_id(id)?;
        let _guard = self.lock(id).await;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (old_bytes, old) = self.read(id).await?;
            let md = old.metadata();
            if md.is_deleted() && !md.finalizers.is_empty() {
                return Ok(());
            }
            let version = md.resource_version;
            let mut new = old.clone();
            {
                let md = new.metadata_mut();
                md.deleted_at = Some(md.deleted_at.unwrap_or_else(Utc::now));
                md.resource_version = version.saturating_add(1);
            }
            let result = if new.metadata().finalizers.is_empty() {
                self.cas_remove(id, version, old_bytes).await.map(|()| true)
            } else {
                let bytes = encode(&new)?;
                self.cas_put(id, version, bytes, old_bytes)
                    .await
                    .map(|()| false)
            };
            match result {
                Ok(removed) => {
                    if removed {
                        debug!(version = version.saturating_add(1), "removed");
                        self.inner.dispatch(Change::Removed {
                            old: &old,
                            last: &new,
                        });
                    } else {
                        debug!(version = version.saturating_add(1), "marked deleted");
                        self.inner.dispatch(Change::Updated {
                            old: &old,
                            new: &new,
                        });
                    }
                    return Ok(());
                }
                // Another writer on the same backend changed the record since our read: re-read and retry.
                Err(StoreError::Conflict { .. }) if attempts < DELETE_RETRIES => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// The objects matching `opts`, sorted by id. Errors: `Invalid` (unknown field), `Backend`.
    ///
    /// A record that cannot be decoded (corrupt, or written by an incompatible program) is
    /// **skipped** with a warning naming it and counted in [`Store::skipped_records`]: one bad
    /// record must never fail every list (and with it the reconcilers' start and ListVolumes).
    /// [`Store::get`] of that id still fails with `Invalid`.
    pub async fn list(&self, opts: &ListOptions) -> Result<Vec<T>> {
        opts.validate::<T>()?;
        let records = self.inner.backend.list(T::COLLECTION).await?;
        let mut out = Vec::with_capacity(records.len());
        for (key, bytes) in records {
            let obj = match decode::<T>(&key, &bytes) {
                Ok(obj) => obj,
                Err(e) => {
                    self.inner.skipped.fetch_add(1, Ordering::Relaxed);
                    warn!(collection = T::COLLECTION, id = %key, error = %e, "skipping an undecodable record");
                    continue;
                }
            };
            if opts.matches(&obj) {
                out.push(obj);
            }
        }
        out.sort_by(|a, b| a.metadata().id.cmp(&b.metadata().id));
        Ok(out)
    }

    /// How many undecodable records the lists of this store (and its clones) have skipped so
    /// far; a record skipped by several lists counts once per list.
    pub fn skipped_records(&self) -> u64 {
        self.inner.skipped.load(Ordering::Relaxed)
    }

    /// Starts watching: every mutation made through this store (or a clone of it) after this call is delivered,
    /// filtered by `opts`. To get a consistent picture, call `watch` **before** `list`: changes that race with
    /// the list are then delivered as events (possibly duplicating what the list showed), never missed.
    ///
    /// Errors: `Invalid` (field without indexer).
    pub fn watch(&self, opts: ListOptions) -> Result<Watch<T>> {
        opts.validate::<T>()?;
        let watcher = Arc::new(Watcher {
            opts,
            capacity: self.inner.watch_queue,
            queue: Mutex::new(Queue {
                events: VecDeque::new(),
                resync_pending: false,
                closed: false,
                dropped: false,
            }),
            notify: tokio::sync::Notify::new(),
        });
        self.inner.watchers().push(Arc::clone(&watcher));
        Ok(Watch { watcher })
    }

    /// Compare-and-set put; a lost race is reported as a `Conflict` with the real versions.
    async fn cas_put(&self, id: &str, expected: u64, bytes: Vec<u8>, old: Vec<u8>) -> Result<()> {
        let res = self
            .inner
            .backend
            .put(T::COLLECTION, id, bytes, Precondition::Equals(old))
            .await;
        self.explain_cas(id, expected, res).await
    }

    /// Compare-and-set remove; a lost race is reported as a `Conflict` with the real versions.
    async fn cas_remove(&self, id: &str, expected: u64, old: Vec<u8>) -> Result<()> {
        let res = self
            .inner
            .backend
            .remove(T::COLLECTION, id, Precondition::Equals(old))
            .await;
        self.explain_cas(id, expected, res).await
    }

    async fn explain_cas(&self, id: &str, expected: u64, res: Result<()>) -> Result<()> {
        match res {
            Err(StoreError::Conflict { .. }) => {
                let actual = self.read(id).await?.1.metadata().resource_version;
                Err(StoreError::Conflict {
                    id: id.to_owned(),
                    expected,
                    actual,
                })
            }
            other => other,
        }
    }
}

/// Feeds the backend's remote changes into the store's watchers until the store or the backend's
/// channel is gone.
async fn follow_remote<T: Object>(inner: Weak<Inner<T>>, mut changes: RemoteChanges) {
    while let Some(change) = changes.recv().await {
        let Some(inner) = inner.upgrade() else {
            return;
        };
        Store { inner }.apply_remote(change).await;
    }
}

/// Runs a mutation as its own task, so that dropping the caller's future cannot interrupt it between the
/// backend write and the event dispatch (a mutation that started always completes and emits its event).
async fn detach<R: Send + 'static>(
    fut: impl std::future::Future<Output = Result<R>> + Send + 'static,
) -> Result<R> {
    tokio::spawn(fut)
        .await
        .map_err(|e| StoreError::Backend(format!("store mutation task failed: {e}")))?
}

/// True if `a` and `b` have the same JSON meaning apart from the resource version.
fn same_meaning<T: Object>(a: &T, b: &T) -> Result<bool> {
    let value = |o: &T| {
        let mut o = o.clone();
        o.metadata_mut().resource_version = 0;
        serde_json::to_value(&o).map_err(|e| {
            StoreError::Invalid(format!(
                "cannot encode {}/{}: {e}",
                T::COLLECTION,
                o.metadata().id
            ))
        })
    };
    Ok(value(a)? == value(b)?)
}
