//! The raw key/value seam under the store: the [`Backend`] trait, [`Precondition`] and the in-memory backend.
//!
//! # Contract for backend authors
//!
//! A backend stores opaque byte values under `(collection, key)`. Collections are independent namespaces (the
//! omap backend maps each to one rados object, the hostdir backend to one directory); a collection that was never
//! written behaves as empty. Keys are non-empty UTF-8 strings and may contain any character (e.g. `sha256:ab…`).
//!
//! Every `put`/`remove` carries a [`Precondition`] that must be checked **atomically with the write** (for rados:
//! a compare op in the same write op; for local backends: under the backend's own lock). The outcome of a check is
//! exactly what [`Precondition::check`] returns, and implementations are encouraged to call it:
//!
//! | precondition | key absent | key present with bytes `b` |
//! |---|---|---|
//! | `None` | ok | ok |
//! | `Absent` | ok | `AlreadyExists(key)` |
//! | `Equals(e)` | `NotFound(key)` | ok if `b == e`, else `Conflict { id: key, expected: 0, actual: 0 }` |
//!
//! After a passing check, `put` stores the value (create or replace) and `remove` deletes the key (a `remove` of an
//! absent key with `None`/`Absent` is an idempotent no-op returning `Ok`). A failed check changes nothing.
//! `get` of an absent key is `Ok(None)`. `list` returns every `(key, value)` of the collection; the order is not
//! part of the contract (the store sorts). Every other failure is `StoreError::Backend(message naming the key)`.
//! A write that returned `Ok` must be durable and visible to every later `get`/`list` of any handle to the same
//! storage; a write that failed may or may not have happened only if the error is `Backend` (never torn).
//!
//! # Changes made elsewhere (optional)
//!
//! A backend whose storage is shared by several processes may report the writes made through *other* handles
//! with [`Backend::remote_changes`] (the default reports nothing, which is right for storage only this handle
//! writes: memory, a locked directory). The contract of a backend that does:
//! * after each successful `put`/`remove` of another handle, [`RemoteChange::Key`] names the key, with the value
//!   that write replaced when the writer knew it ([`Previous`]: the bytes an `Equals` precondition checked,
//!   `Absent` for an `Absent` precondition, `Unknown` for `None`); the receiver re-reads the key for the current
//!   value, so several writes of one key may arrive as one change (carrying the oldest `Previous`), late, or more
//!   than once — never lost without a [`RemoteChange::Resync`];
//! * writes made through this very handle are not reported (its store already saw them);
//! * whenever changes may have been missed (the notification channel broke and was re-established, including the
//!   moment it is first established), [`RemoteChange::Resync`] is sent: the receiver must re-list;
//! * dropping the [`RemoteChanges`] receiver stops the reporting.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::error::{Result, StoreError};

/// Condition a `put`/`remove` checks atomically with the write. See the module docs for the exact outcomes.
#[derive(Clone, PartialEq, Eq)]
pub enum Precondition {
    /// No condition.
    None,
    /// The key must not exist (create).
    Absent,
    /// The key must exist and hold exactly these bytes (compare-and-set).
    Equals(Vec<u8>),
}

impl fmt::Debug for Precondition {
    // Values may hold secrets (image access keys): never print them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Precondition::None => f.write_str("None"),
            Precondition::Absent => f.write_str("Absent"),
            Precondition::Equals(b) => write!(f, "Equals(<{} bytes>)", b.len()),
        }
    }
}

impl Precondition {
    /// Checks this precondition against the current value of `key` (`None` = absent), returning the error a
    /// backend must report when it fails.
    pub fn check(&self, key: &str, current: Option<&[u8]>) -> Result<()> {
        match (self, current) {
            (Precondition::None, _) => Ok(()),
            (Precondition::Absent, None) => Ok(()),
            (Precondition::Absent, Some(_)) => Err(StoreError::AlreadyExists(key.to_owned())),
            (Precondition::Equals(_), None) => Err(StoreError::NotFound(key.to_owned())),
            (Precondition::Equals(expected), Some(actual)) if expected.as_slice() == actual => {
                Ok(())
            }
            (Precondition::Equals(_), Some(_)) => Err(StoreError::Conflict {
                id: key.to_owned(),
                expected: 0,
                actual: 0,
            }),
        }
    }
}

/// What a backend knows about the value that a write replaced (see [`RemoteChange`]).
#[derive(Clone, PartialEq, Eq)]
pub enum Previous {
    /// The writer did not know (a `put`/`remove` with `Precondition::None`).
    Unknown,
    /// The key did not exist before the write (a create).
    Absent,
    /// The key held exactly these bytes before the write.
    Value(Vec<u8>),
}

impl fmt::Debug for Previous {
    // Values may hold secrets: never print them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Previous::Unknown => f.write_str("Unknown"),
            Previous::Absent => f.write_str("Absent"),
            Previous::Value(b) => write!(f, "Value(<{} bytes>)", b.len()),
        }
    }
}

impl Previous {
    /// What a write with precondition `pre` replaced, as far as the writer knows.
    pub fn of(pre: &Precondition) -> Previous {
        match pre {
            Precondition::None => Previous::Unknown,
            Precondition::Absent => Previous::Absent,
            Precondition::Equals(b) => Previous::Value(b.clone()),
        }
    }
}

/// A change of one collection made through another handle of the same storage (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteChange {
    /// `key` was written or removed; re-read it for its current value.
    Key {
        /// The key.
        key: String,
        /// What the (oldest) reported write replaced.
        previous: Previous,
    },
    /// Changes may have been missed: re-list the collection.
    Resync,
}

/// The receiving end of [`Backend::remote_changes`]; dropping it stops the reporting.
pub type RemoteChanges = tokio::sync::mpsc::Receiver<RemoteChange>;

/// Raw key/value storage under a [`crate::Store`]. See the module docs for the exact contract.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// The value of `key`, `None` if absent.
    async fn get(&self, collection: &str, key: &str) -> Result<Option<Vec<u8>>>;
    /// Creates or replaces `key` if `pre` holds.
    async fn put(
        &self,
        collection: &str,
        key: &str,
        value: Vec<u8>,
        pre: Precondition,
    ) -> Result<()>;
    /// Removes `key` if `pre` holds.
    async fn remove(&self, collection: &str, key: &str, pre: Precondition) -> Result<()>;
    /// Every `(key, value)` of the collection, in any order.
    async fn list(&self, collection: &str) -> Result<Vec<(String, Vec<u8>)>>;
    /// Changes of `collection` made through other handles of the same storage, if this backend reports them
    /// (see "Changes made elsewhere" in the module docs). Called from within a tokio runtime. The default,
    /// `None`, means the store sees only its own writes.
    fn remote_changes(&self, collection: &str) -> Option<RemoteChanges> {
        let _ = collection;
        None
    }
}

type Collections = HashMap<String, BTreeMap<String, Vec<u8>>>;

#[derive(Default)]
struct MemoryState {
    collections: Collections,
    /// Number of upcoming operations that fail with `Backend` (fault injection for tests).
    fail_next: usize,
}

/// In-memory backend (tests). Cloning shares the data, so a test can keep a handle across a simulated
/// restart (open a new `Store` on a clone).
#[derive(Clone, Default)]
pub struct MemoryBackend {
    state: Arc<Mutex<MemoryState>>,
}

impl fmt::Debug for MemoryBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryBackend").finish_non_exhaustive()
    }
}

impl MemoryBackend {
    /// An empty backend.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the next `n` operations (any method) fail with `StoreError::Backend` without effect.
    pub fn fail_next(&self, n: usize) {
        self.lock().fail_next = n;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryState> {
        // A panic while holding the lock cannot leave the maps half-updated (every mutation is one call), so a
        // poisoned lock is still consistent.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn with_state<R>(
        &self,
        op: &str,
        key: &str,
        f: impl FnOnce(&mut Collections) -> Result<R>,
    ) -> Result<R> {
        let mut state = self.lock();
        if state.fail_next > 0 {
            state.fail_next -= 1;
            return Err(StoreError::Backend(format!(
                "injected failure of {op} {key:?}"
            )));
        }
        f(&mut state.collections)
    }
}

#[async_trait]
impl Backend for MemoryBackend {
    async fn get(&self, collection: &str, key: &str) -> Result<Option<Vec<u8>>> {
        self.with_state("get", key, |c| {
            Ok(c.get(collection).and_then(|m| m.get(key)).cloned())
        })
    }

    async fn put(
        &self,
        collection: &str,
        key: &str,
        value: Vec<u8>,
        pre: Precondition,
    ) -> Result<()> {
        self.with_state("put", key, |c| {
            let map = c.entry(collection.to_owned()).or_default();
            pre.check(key, map.get(key).map(Vec::as_slice))?;
            map.insert(key.to_owned(), value);
            Ok(())
        })
    }

    async fn remove(&self, collection: &str, key: &str, pre: Precondition) -> Result<()> {
        self.with_state("remove", key, |c| {
            let current = c
                .get(collection)
                .and_then(|m| m.get(key))
                .map(Vec::as_slice);
            pre.check(key, current)?;
            if let Some(map) = c.get_mut(collection) {
                map.remove(key);
            }
            Ok(())
        })
    }

    async fn list(&self, collection: &str) -> Result<Vec<(String, Vec<u8>)>> {
        self.with_state("list", collection, |c| {
            Ok(c.get(collection)
                .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                .unwrap_or_default())
        })
    }
}

/// Checks that `backend` honours the contract in the module docs, using only keys of `collection` (pass a
/// scratch collection; it is left empty on success). Returns a description of the first violation.
///
/// Meant for backend authors' tests, e.g. the omap backend against a test cluster.
pub async fn check_backend_contract(
    backend: &dyn Backend,
    collection: &str,
) -> std::result::Result<(), String> {
    fn expect<T: fmt::Debug + PartialEq>(
        what: &str,
        got: T,
        want: T,
    ) -> std::result::Result<(), String> {
        if got == want {
            Ok(())
        } else {
            Err(format!("{what}: got {got:?}, want {want:?}"))
        }
    }
    let c = collection;
    let (a, b) = ("contract-a", "sha256:contract/b%");
    expect(
        "list of an empty collection",
        backend.list(c).await,
        Ok(vec![]),
    )?;
    expect("get of an absent key", backend.get(c, a).await, Ok(None))?;
    expect(
        "put Absent of an absent key",
        backend.put(c, a, b"1".to_vec(), Precondition::Absent).await,
        Ok(()),
    )?;
    expect(
        "get after put",
        backend.get(c, a).await,
        Ok(Some(b"1".to_vec())),
    )?;
    expect(
        "put Absent of a present key",
        backend.put(c, a, b"2".to_vec(), Precondition::Absent).await,
        Err(StoreError::AlreadyExists(a.to_owned())),
    )?;
    expect(
        "put Equals with other bytes",
        backend
            .put(c, a, b"2".to_vec(), Precondition::Equals(b"x".to_vec()))
            .await,
        Err(StoreError::Conflict {
            id: a.to_owned(),
            expected: 0,
            actual: 0,
        }),
    )?;
    expect(
        "value after failed puts",
        backend.get(c, a).await,
        Ok(Some(b"1".to_vec())),
    )?;
    expect(
        "put Equals with the stored bytes",
        backend
            .put(c, a, b"2".to_vec(), Precondition::Equals(b"1".to_vec()))
            .await,
        Ok(()),
    )?;
    expect(
        "put Equals of an absent key",
        backend
            .put(c, b, b"3".to_vec(), Precondition::Equals(b"3".to_vec()))
            .await,
        Err(StoreError::NotFound(b.to_owned())),
    )?;
    expect(
        "put None of an absent key",
        backend.put(c, b, b"3".to_vec(), Precondition::None).await,
        Ok(()),
    )?;
    expect(
        "put None of a present key",
        backend.put(c, b, b"4".to_vec(), Precondition::None).await,
        Ok(()),
    )?;
    let mut listed = backend.list(c).await.map_err(|e| format!("list: {e}"))?;
    listed.sort();
    expect(
        "list",
        listed,
        vec![(a.to_owned(), b"2".to_vec()), (b.to_owned(), b"4".to_vec())],
    )?;
    expect(
        "remove Equals with other bytes",
        backend
            .remove(c, a, Precondition::Equals(b"1".to_vec()))
            .await,
        Err(StoreError::Conflict {
            id: a.to_owned(),
            expected: 0,
            actual: 0,
        }),
    )?;
    expect(
        "value after failed remove",
        backend.get(c, a).await,
        Ok(Some(b"2".to_vec())),
    )?;
    expect(
        "remove Equals with the stored bytes",
        backend
            .remove(c, a, Precondition::Equals(b"2".to_vec()))
            .await,
        Ok(()),
    )?;
    expect("get after remove", backend.get(c, a).await, Ok(None))?;
    expect(
        "remove Equals of an absent key",
        backend
            .remove(c, a, Precondition::Equals(b"2".to_vec()))
            .await,
        Err(StoreError::NotFound(a.to_owned())),
    )?;
    expect(
        "remove None of an absent key",
        backend.remove(c, a, Precondition::None).await,
        Ok(()),
    )?;
    expect(
        "remove None of a present key",
        backend.remove(c, b, Precondition::None).await,
        Ok(()),
    )?;
    expect(
        "list after removing everything",
        backend.list(c).await,
        Ok(vec![]),
    )?;
    Ok(())
}
