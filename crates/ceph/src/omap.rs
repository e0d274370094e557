//! [`OmapBackend`]: the store's key/value seam ([`store::Backend`]) on rados omap, in the Go
//! provider's layout, so that a pool it managed is taken over without migration: one rados
//! object per collection (`ironcore.csi.volumes`, `ironcore.csi.snapshots`, default namespace), one
//! omap entry per object, key = id, value = the JSON document.
//!
//! # Atomic preconditions
//! Every conditional write is one rados write op, so the check and the write cannot be separated:
//! * `Equals(bytes)`: `omap_cmp(key, EQ, bytes)` + `omap_set`/`omap_rm_keys`. A failed compare
//!   cancels the whole op (ECANCELED); the backend then reads the key once to tell `NotFound`
//!   (key gone) from `Conflict` (other bytes) — nothing was written either way.
//! * `Absent`: the OSD compares a missing key as the empty value, so `omap_cmp(key, EQ, "")` +
//!   `omap_set` succeeds exactly when the key is missing (the store never writes empty values; an
//!   empty stored value would count as absent). On a missing *object* a compare fails with ENOENT:
//!   then `create(exclusive)` + `omap_set` runs instead, which fails with EEXIST if a racing writer
//!   created the object first, and the compare path is tried again. Both paths are single atomic
//!   ops, so of two racing creators exactly one wins (tested against a real cluster).
//! * `remove` with `Absent` writes nothing (removing an absent key is a no-op), so a read suffices.
//!
//! Listing reads `iterator_size` entries per round trip (`--omap-iterator-size`); a missing object
//! is an empty collection and a missing key is `Ok(None)`.
//!
//! # Changes of other processes
//! Several daemons may share a pool (a leader and standbys). Every successful write is reported to
//! the other clients watching the collection object, and [`Backend::remote_changes`] hands a store
//! the reports of the others (watch/notify, see `changes.rs`), so a store learns at once of records
//! another daemon wrote.
//!
//! # Fencing
//! A client that another daemon has blocklisted gets EBLOCKLISTED from every OSD: its writes fail
//! with a `Backend` error saying so, and nothing is written.

use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use store::{Backend, Precondition, Previous, RemoteChanges, StoreError};

use super::CephBackend;
use crate::changes::{self, Notifier};
use crate::rados::{IoCtx, WriteOutcome, WriteStep};
use rbd::{RbdError, Result};

/// How often `put(Absent)` retries when racing creators keep creating/removing the object.
const ABSENT_ATTEMPTS: usize = 16;

/// The omap store backend. Cheap to clone.
#[derive(Clone, Debug)]
pub struct OmapBackend {
    io: IoCtx,
    iterator_size: u64,
    /// Reports this handle's writes to other processes; started on the first write (it needs the
    /// tokio runtime the writes run on).
    notifier: Arc<OnceLock<Notifier>>,
}

impl OmapBackend {
    /// A backend on `io`'s pool listing `iterator_size` entries per read (must be > 0).
    pub fn new(io: IoCtx, iterator_size: usize) -> Result<OmapBackend> {
        if iterator_size == 0 {
            return Err(RbdError::InvalidArgument(
                "omap iterator size must be positive".into(),
            ));
        }
        Ok(OmapBackend {
            io,
            iterator_size: iterator_size as u64,
            notifier: Arc::default(),
        })
    }

    /// A backend on the pool of a [`CephBackend`].
    pub fn for_backend(backend: &CephBackend, iterator_size: usize) -> Result<OmapBackend> {
        OmapBackend::new(backend.ioctx().clone(), iterator_size)
    }

    /// Entries fetched per listing round trip.
    pub fn iterator_size(&self) -> usize {
        self.iterator_size as usize
    }

    /// Reports a successful write of `key` to the other processes watching `collection`.
    fn report(&self, collection: &str, key: &str, pre: &Precondition) {
        self.notifier
            .get_or_init(|| Notifier::start(self.io.clone()))
            .report(collection, key, Previous::of(pre));
    }
}

/// The message of a write refused because this client is blocklisted.
fn fenced(op: &str, object: &str, key: &str) -> StoreError {
    StoreError::Backend(format!(
        "omap {op} {object}/{key:?}: refused, this client is blocklisted (fenced: another daemon \
         took over the pool)"
    ))
}

fn backend_err(op: &str, object: &str, key: &str, e: RbdError) -> StoreError {
    StoreError::Backend(format!("omap {op} {object}/{key:?}: {e}"))
}

async fn blocking<T, F>(f: F) -> store::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> store::Result<T> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Backend(format!("blocking omap task failed: {e}")))?
}

/// After a failed `Equals` compare: `NotFound` if the key is gone, else `Conflict`.
fn classify_mismatch(io: &IoCtx, object: &str, key: &str) -> StoreError {
    match io.omap_get(object, key) {
        Ok(None) => StoreError::NotFound(key.to_string()),
        Ok(Some(_)) => StoreError::Conflict {
            id: key.to_string(),
            expected: 0,
            actual: 0,
        },
        Err(e) => backend_err("get", object, key, e),
    }
}

fn put_blocking(
    io: &IoCtx,
    object: &str,
    key: &str,
    value: &[u8],
    pre: &Precondition,
) -> store::Result<()> {
    let err = |e| backend_err("put", object, key, e);
    let set = WriteStep::OmapSet { key, value };
    match pre {
        Precondition::None => match io.write_op(object, &[set]).map_err(err)? {
            WriteOutcome::Done => Ok(()),
            WriteOutcome::Blocklisted => Err(fenced("put", object, key)),
            other => Err(StoreError::Backend(format!(
                "omap put {object}/{key:?}: unexpected {other:?}"
            ))),
        },
        Precondition::Equals(expected) => {
            let cmp = WriteStep::OmapCmpEq {
                key,
                value: expected,
            };
            match io.write_op(object, &[cmp, set]).map_err(err)? {
                WriteOutcome::Done => Ok(()),
                WriteOutcome::Blocklisted => Err(fenced("put", object, key)),
                WriteOutcome::NoObject => Err(StoreError::NotFound(key.to_string())),
                WriteOutcome::CompareFailed => Err(classify_mismatch(io, object, key)),
                other => Err(StoreError::Backend(format!(
                    "omap put {object}/{key:?}: unexpected {other:?}"
                ))),
            }
        }
        Precondition::Absent => {
            for _ in 0..ABSENT_ATTEMPTS {
                let cmp = WriteStep::OmapCmpEq { key, value: b"" };
                match io.write_op(object, &[cmp, set.clone()]).map_err(err)? {
                    WriteOutcome::Done => return Ok(()),
                    WriteOutcome::CompareFailed => {
                        return Err(StoreError::AlreadyExists(key.to_string()))
                    }
                    WriteOutcome::NoObject => {}
                    WriteOutcome::Blocklisted => return Err(fenced("put", object, key)),
                    other => {
                        return Err(StoreError::Backend(format!(
                            "omap put {object}/{key:?}: unexpected {other:?}"
                        )))
                    }
                }
                // No object yet: create it together with the key, unless someone else just did.
                let create = WriteStep::Create { exclusive: true };
                match io.write_op(object, &[create, set.clone()]).map_err(err)? {
                    WriteOutcome::Done => return Ok(()),
                    WriteOutcome::ObjectExists => continue,
                    WriteOutcome::Blocklisted => return Err(fenced("put", object, key)),
                    other => {
                        return Err(StoreError::Backend(format!(
                            "omap put {object}/{key:?}: unexpected {other:?}"
                        )))
                    }
                }
            }
            Err(StoreError::Backend(format!(
                "omap put {object}/{key:?}: object kept appearing and disappearing ({ABSENT_ATTEMPTS} attempts)"
            )))
        }
    }
}

fn remove_blocking(io: &IoCtx, object: &str, key: &str, pre: &Precondition) -> store::Result<()> {
    let err = |e| backend_err("remove", object, key, e);
    let rm = WriteStep::OmapRm { key };
    match pre {
        Precondition::None => match io.write_op(object, &[rm]).map_err(err)? {
            WriteOutcome::Done | WriteOutcome::NoObject => Ok(()),
            WriteOutcome::Blocklisted => Err(fenced("remove", object, key)),
            other => Err(StoreError::Backend(format!(
                "omap remove {object}/{key:?}: unexpected {other:?}"
            ))),
        },
        Precondition::Absent => {
            let current = io.omap_get(object, key).map_err(err)?;
            pre.check(key, current.as_deref())
        }
        Precondition::Equals(expected) => {
            let cmp = WriteStep::OmapCmpEq {
                key,
                value: expected,
            };
            match io.write_op(object, &[cmp, rm]).map_err(err)? {
                WriteOutcome::Done => Ok(()),
                WriteOutcome::Blocklisted => Err(fenced("remove", object, key)),
                WriteOutcome::NoObject => Err(StoreError::NotFound(key.to_string())),
                WriteOutcome::CompareFailed => Err(classify_mismatch(io, object, key)),
                other => Err(StoreError::Backend(format!(
                    "omap remove {object}/{key:?}: unexpected {other:?}"
                ))),
            }
        }
    }
}

fn list_blocking(io: &IoCtx, object: &str, page: u64) -> store::Result<Vec<(String, Vec<u8>)>> {
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    loop {
        let start = out.last().map(|(k, _)| k.clone()).unwrap_or_default();
        let (entries, more) = io
            .omap_page(object, &start, page)
            .map_err(|e| backend_err("list", object, &start, e))?;
        let got = entries.len();
        out.extend(entries);
        if !more || got == 0 {
            return Ok(out);
        }
    }
}

#[async_trait]
impl Backend for OmapBackend {
    async fn get(&self, collection: &str, key: &str) -> store::Result<Option<Vec<u8>>> {
        let (io, object, key) = (self.io.clone(), collection.to_string(), key.to_string());
        blocking(move || {
            io.omap_get(&object, &key)
                .map_err(|e| backend_err("get", &object, &key, e))
        })
        .await
    }

    async fn put(
        &self,
        collection: &str,
        key: &str,
        value: Vec<u8>,
        pre: Precondition,
    ) -> store::Result<()> {
        let (io, object, k) = (self.io.clone(), collection.to_string(), key.to_string());
        let p = pre.clone();
        blocking(move || put_blocking(&io, &object, &k, &value, &p)).await?;
        self.report(collection, key, &pre);
        Ok(())
    }

    async fn remove(&self, collection: &str, key: &str, pre: Precondition) -> store::Result<()> {
        let (io, object, k) = (self.io.clone(), collection.to_string(), key.to_string());
        let p = pre.clone();
        blocking(move || remove_blocking(&io, &object, &k, &p)).await?;
        // A remove with `Absent` found nothing to remove and wrote nothing.
        if pre != Precondition::Absent {
            self.report(collection, key, &pre);
        }
        Ok(())
    }

    async fn list(&self, collection: &str) -> store::Result<Vec<(String, Vec<u8>)>> {
        let (io, object, page) = (self.io.clone(), collection.to_string(), self.iterator_size);
        blocking(move || list_blocking(&io, &object, page)).await
    }

    fn remote_changes(&self, collection: &str) -> Option<RemoteChanges> {
        Some(changes::follow(self.io.clone(), collection))
    }
}
