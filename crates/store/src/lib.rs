//! The typed object store of cephvol: volumes ([`Image`]) and snapshots ([`Snapshot`]) with optimistic
//! concurrency, finalizers and watch, over a pluggable key/value [`Backend`].
//!
//! This crate owns the persisted data model (JSON-compatible with the Go provider), the store semantics
//! (the Go store's, with its quirks fixed: see `tests/store_semantics.rs`) and the local backends. It knows nothing about RBD, reconcilers or gRPC.
//!
//! # Guarantees of [`Store`]
//!
//! **Versions.** `metadata.resourceVersion` is 1 after [`Store::create`] and is incremented by exactly one on
//! every mutation (update, soft delete, final removal — the last state carried by the `Deleted` event has the
//! incremented version). [`Store::update`] succeeds only if the caller's version equals the stored one, else it
//! fails with [`StoreError::Conflict`] and changes nothing. The check is atomic: the store reads the record and
//! writes with [`Precondition::Equals`] (compare-and-set on the exact bytes read), so it holds even against
//! another process sharing a backend that implements preconditions atomically (omap). Within one process,
//! mutations of one id are additionally serialised by a per-id async lock, so of N concurrent updates carrying
//! the same version exactly one wins and the others get `Conflict`. `update` returns the stored object: continue
//! with it, the caller's value is stale. An update that changes nothing but the version is a no-op (no write, no
//! event, stored object returned).
//!
//! **Cancellation.** A mutation runs as its own task: once `create`/`update`/`delete` has been polled, it runs
//! to completion (write and event) even if the caller drops the future, so a write can never happen without its
//! event.
//!
//! **Store-owned fields.** `createdAt` is set by create and kept by update; `deletedAt` is set only by delete and
//! can be neither set nor cleared by update; `resourceVersion` is assigned by the store.
//!
//! **Finalizers and deletion.** [`Store::delete`] of an object without finalizers removes it at once. With
//! finalizers it sets `deletedAt` (soft delete, `Updated` event); the object stays readable and updatable until an
//! update leaves it without finalizers, which removes it (final removal, `Deleted` event). Deleting an object that
//! is already being deleted is an `Ok` no-op.
//!
//! **Events.** Every successful mutation made through a `Store` (or any clone of it) produces exactly one event,
//! delivered to each [`Watch`] whose [`ListOptions`] select the object, in the order the mutations happened
//! (per id, and one global order shared by all watchers of the store):
//!
//! | mutation | event |
//! |---|---|
//! | create | `Created(obj)` |
//! | update, soft delete | `Updated(new)` |
//! | final removal (delete without finalizers, update dropping the last finalizer) | `Deleted(last state)` |
//!
//! For a watch with a selector, an update that makes an object start matching is delivered as `Created`, one that
//! makes it stop matching as `Deleted` (carrying the new state), and objects that never match are not delivered.
//! After the `Deleted` of a final removal no further event for that id arrives unless it is created again.
//! Events are those of this store value: open one `Store` per collection per process and clone it (two
//! `Store`s on one backend do not see each other's mutations). Other processes' writes produce events only
//! when the backend reports them ([`Backend::remote_changes`], e.g. the rados-omap backend through watch/notify):
//! each reported change is re-read and delivered as `Created`/`Updated`/`Deleted` like a local one, but possibly
//! coalesced, late or repeated, and a break in the reporting arrives as [`WatchEvent::Resync`].
//!
//! **Watch.** [`Store::watch`] delivers the mutations that happen after the call. Pattern: call `watch()`
//! **before** `list()`; then every change is either in the list or delivered as an event (possibly both).
//! Each watcher has a bounded queue ([`StoreOptions::watch_queue`], default 1024). A watcher never silently loses
//! an event: when an event arrives at a full queue, the queued events are discarded and replaced by one
//! [`WatchEvent::Resync`]; events arriving while that `Resync` is still queued are coalesced into it. After
//! receiving `Resync` the consumer must re-list; every mutation after it received the `Resync` is delivered
//! again. Writers never wait for watchers. [`Watch::recv`] returns `None` only when every handle of the store has
//! been dropped (after draining the queue).
//!
//! **Lists.** [`Store::list`] returns the matching objects sorted by id. Selectors: label equalities (AND),
//! label existence, and indexed fields ([`Object::indexed_fields`]; images index `spec.snapshotRef`, snapshots
//! nothing). A field without an indexer is [`StoreError::Invalid`] naming the field, for `list` and `watch`. A record that cannot be
//! decoded is skipped with a warning and counted ([`Store::skipped_records`]) instead of failing the list.
//!
//! # Backends
//!
//! [`Backend`] is a raw key/value seam with compare-and-set preconditions; its exact contract is in the
//! [`backend`] module docs. [`MemoryBackend`] is for tests; [`HostDirBackend`] stores one JSON file per object,
//! crash-safe (write temp + fsync + rename + fsync dir). The rados-omap backend lives in the `ceph` crate.
//! The record stored under a key is the object's JSON document (camelCase JSON, as the Go provider writes it), the key is `metadata.id`, the
//! collection is [`Object::COLLECTION`].

pub mod backend;
mod error;
mod hostdir;
mod ids;
mod model;
mod serde_go;
mod store;

pub use backend::{Backend, MemoryBackend, Precondition, Previous, RemoteChange, RemoteChanges};
pub use error::{Result, StoreError};
pub use hostdir::HostDirBackend;
pub use ids::{keys, new_id, new_wwn, ID_LEN, WWN_LEN};
pub use model::{
    zero_time, Checkpoint, EncryptionSpec, EncryptionType, Image, ImageAccess, ImageSpec,
    ImageState, ImageStatus, Metadata, Object, Progress, Snapshot, SnapshotSource, SnapshotState,
    SnapshotStatus, ENCRYPTION_HEADER_SET, FIELD_SNAPSHOT_REF,
};
pub use store::{ListOptions, Store, StoreOptions, Watch, WatchEvent, DEFAULT_WATCH_QUEUE};
