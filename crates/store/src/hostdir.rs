//! [`HostDirBackend`]: one JSON file per object in a host directory (the daemon's embedded default).
//!
//! Layout: `<dir>/<escaped collection>/<escaped key>.json`. Escaping keeps `[a-z0-9._-]` (except a leading
//! `.`) and writes every other byte of the UTF-8 key as `%XX` (upper-case hex), so any key — `sha256:ab…`,
//! upper case, `/` — maps to a distinct portable file name, also on case-insensitive file systems.
//!
//! A write goes to `.tmp-<random>` in the same directory, is fsynced, renamed over the target, and the
//! directory is fsynced: a crash leaves either the old or the new record, never a torn one. Names starting
//! with `.` are never records; [`HostDirBackend::open`] deletes leftover `.tmp-*` files.
//!
//! Preconditions are checked under the backend's own lock, so they are atomic for every clone of one
//! `HostDirBackend`. They are **not** atomic across two processes (or two `open`s) on the same directory:
//! use one backend per directory per host.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rand::RngCore;

use crate::backend::{Backend, Precondition};
use crate::error::{Result, StoreError};

const TMP_PREFIX: &str = ".tmp-";
const SUFFIX: &str = ".json";
/// Longest file name we create (most file systems allow 255 bytes).
const MAX_NAME: usize = 255;

/// A backend storing one JSON file per object under a directory. Cloning shares the lock.
#[derive(Clone, Debug)]
pub struct HostDirBackend {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    lock: Mutex<()>,
    /// fsync files and directories (always, except in tests that only simulate process crashes).
    durable: bool,
    #[cfg(test)]
    crash: Mutex<Option<Crash>>,
}

/// Test-only: where the next put stops, as if the process died there.
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Crash {
    /// After writing this many bytes of the temp file (torn temp file), before fsync/rename.
    MidWrite(usize),
    /// After the temp file is complete and fsynced, before the rename.
    BeforeRename,
}

fn backend_err(what: &str, path: &Path, e: io::Error) -> StoreError {
    StoreError::Backend(format!("{what} {}: {e}", path.display()))
}

/// Escapes a key or collection name into a file-name stem (see module docs).
pub(crate) fn escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for (i, b) in name.bytes().enumerate() {
        let plain = matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-') || (b == b'.' && i > 0);
        if plain {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Inverse of [`escape`]; `None` for names [`escape`] cannot produce.
pub(crate) fn unescape(stem: &str) -> Option<String> {
    let bytes = stem.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = stem.get(i + 1..i + 3)?;
            if !hex.bytes().all(|c| matches!(c, b'0'..=b'9' | b'A'..=b'F')) {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    let s = String::from_utf8(out).ok()?;
    (escape(&s) == stem).then_some(s)
}

fn fsync_dir(dir: &Path, durable: bool) -> Result<()> {
    if !durable {
        return Ok(());
    }
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| backend_err("fsync directory", dir, e))
}

fn read_opt(path: &Path) -> Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(backend_err("read", path, e)),
    }
}

impl HostDirBackend {
    /// Opens (creating it if needed) the directory and deletes leftover temp files of interrupted writes.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        Self::open_inner(dir.as_ref(), true)
    }

    /// Test-only: like `open` but without fsync (a simulated process crash does not need it; it is slow).
    #[cfg(test)]
    pub(crate) fn open_without_fsync(dir: impl AsRef<Path>) -> Result<Self> {
        Self::open_inner(dir.as_ref(), false)
    }

    fn open_inner(dir: &Path, durable: bool) -> Result<Self> {
        let root = dir.to_path_buf();
        fs::create_dir_all(&root).map_err(|e| backend_err("create directory", &root, e))?;
        let entries = fs::read_dir(&root).map_err(|e| backend_err("read directory", &root, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| backend_err("read directory", &root, e))?;
            let path = entry.path();
            if path.is_dir() {
                remove_temp_files(&path, durable)?;
            }
        }
        Ok(HostDirBackend {
            inner: Arc::new(Inner {
                root,
                lock: Mutex::new(()),
                durable,
                #[cfg(test)]
                crash: Mutex::new(None),
            }),
        })
    }

    /// The directory this backend stores into.
    pub fn dir(&self) -> &Path {
        &self.inner.root
    }

    /// Test-only: makes the next put stop at `crash` (returning an error), as if the process died there.
    #[cfg(test)]
    pub(crate) fn crash_next_put(&self, crash: Crash) {
        *self.inner.crash.lock().expect("crash lock") = Some(crash);
    }

    fn collection_dir(&self, collection: &str) -> Result<PathBuf> {
        if collection.is_empty() {
            return Err(StoreError::Invalid(
                "collection name must not be empty".to_owned(),
            ));
        }
        Ok(self.inner.root.join(escape(collection)))
    }

    fn record_path(&self, collection: &str, key: &str) -> Result<PathBuf> {
        if key.is_empty() {
            return Err(StoreError::Invalid(
                "object id must not be empty".to_owned(),
            ));
        }
        let name = format!("{}{SUFFIX}", escape(key));
        if name.len() > MAX_NAME {
            return Err(StoreError::Invalid(format!(
                "object id {key:?} is too long for the hostdir backend ({} bytes escaped, max {})",
                name.len(),
                MAX_NAME
            )));
        }
        Ok(self.collection_dir(collection)?.join(name))
    }

    async fn blocking<R: Send + 'static>(
        &self,
        f: impl FnOnce(&HostDirBackend) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || f(&this))
            .await
            .map_err(|e| StoreError::Backend(format!("hostdir worker failed: {e}")))?
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        // The guard protects no data, only the read-check-write sequence: poisoning is harmless.
        self.inner.lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn put_sync(
        &self,
        collection: &str,
        key: &str,
        value: &[u8],
        pre: &Precondition,
    ) -> Result<()> {
        let path = self.record_path(collection, key)?;
        let dir = self.collection_dir(collection)?;
        let _guard = self.lock();
        pre.check(key, read_opt(&path)?.as_deref())?;
        if !dir.is_dir() {
            fs::create_dir_all(&dir).map_err(|e| backend_err("create directory", &dir, e))?;
            fsync_dir(&self.inner.root, self.inner.durable)?;
        }
        let mut rnd = [0u8; 8];
        rand::thread_rng().fill_bytes(&mut rnd);
        let tmp_name: String = rnd.iter().map(|b| format!("{b:02x}")).collect();
        let tmp = dir.join(format!("{TMP_PREFIX}{tmp_name}"));
        let result = self.write_and_rename(&tmp, &path, value);
        // A simulated crash (tests) leaves the temp file behind, like a real one.
        let simulated_crash = cfg!(test)
            && matches!(&result, Err(StoreError::Backend(m)) if m.starts_with("simulated crash"));
        if result.is_err() && !simulated_crash {
            // Best effort: a leftover would be removed by the next open anyway.
            let _ = fs::remove_file(&tmp);
        }
        result?;
        fsync_dir(&dir, self.inner.durable)
    }

    fn write_and_rename(&self, tmp: &Path, path: &Path, value: &[u8]) -> Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(tmp)
            .map_err(|e| backend_err("create", tmp, e))?;
        #[cfg(test)]
        let crash = self.inner.crash.lock().expect("crash lock").take();
        #[cfg(test)]
        if let Some(Crash::MidWrite(n)) = crash {
            f.write_all(&value[..n.min(value.len())])
                .map_err(|e| backend_err("write", tmp, e))?;
            return Err(StoreError::Backend(
                "simulated crash while writing".to_owned(),
            ));
        }
        f.write_all(value)
            .map_err(|e| backend_err("write", tmp, e))?;
        if self.inner.durable {
            f.sync_all().map_err(|e| backend_err("fsync", tmp, e))?;
        }
        drop(f);
        #[cfg(test)]
        if crash == Some(Crash::BeforeRename) {
            return Err(StoreError::Backend(
                "simulated crash before rename".to_owned(),
            ));
        }
        fs::rename(tmp, path).map_err(|e| backend_err("rename", tmp, e))
    }

    fn remove_sync(&self, collection: &str, key: &str, pre: &Precondition) -> Result<()> {
        let path = self.record_path(collection, key)?;
        let _guard = self.lock();
        let current = read_opt(&path)?;
        pre.check(key, current.as_deref())?;
        if current.is_none() {
            return Ok(());
        }
        fs::remove_file(&path).map_err(|e| backend_err("remove", &path, e))?;
        fsync_dir(&self.collection_dir(collection)?, self.inner.durable)
    }

    fn list_sync(&self, collection: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let dir = self.collection_dir(collection)?;
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(backend_err("read directory", &dir, e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| backend_err("read directory", &dir, e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with('.') {
                continue;
            }
            let Some(key) = name.strip_suffix(SUFFIX).and_then(unescape) else {
                tracing::warn!(file = %entry.path().display(), "ignoring a file that is not a record");
                continue;
            };
            // A record removed between read_dir and read is simply not listed.
            if let Some(value) = read_opt(&entry.path())? {
                out.push((key, value));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }
}

fn remove_temp_files(dir: &Path, durable: bool) -> Result<()> {
    let entries = fs::read_dir(dir).map_err(|e| backend_err("read directory", dir, e))?;
    let mut removed = false;
    for entry in entries {
        let entry = entry.map_err(|e| backend_err("read directory", dir, e))?;
        if entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(TMP_PREFIX))
        {
            let path = entry.path();
            tracing::info!(file = %path.display(), "removing the temp file of an interrupted write");
            fs::remove_file(&path).map_err(|e| backend_err("remove", &path, e))?;
            removed = true;
        }
    }
    if removed {
        fsync_dir(dir, durable)?;
    }
    Ok(())
}

#[async_trait]
impl Backend for HostDirBackend {
    async fn get(&self, collection: &str, key: &str) -> Result<Option<Vec<u8>>> {
        let path = self.record_path(collection, key)?;
        self.blocking(move |_| read_opt(&path)).await
    }

    async fn put(
        &self,
        collection: &str,
        key: &str,
        value: Vec<u8>,
        pre: Precondition,
    ) -> Result<()> {
        let (collection, key) = (collection.to_owned(), key.to_owned());
        self.blocking(move |b| b.put_sync(&collection, &key, &value, &pre))
            .await
    }

    async fn remove(&self, collection: &str, key: &str, pre: Precondition) -> Result<()> {
        let (collection, key) = (collection.to_owned(), key.to_owned());
        self.blocking(move |b| b.remove_sync(&collection, &key, &pre))
            .await
    }

    async fn list(&self, collection: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let collection = collection.to_owned();
        self.blocking(move |b| b.list_sync(&collection)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    const C: &str = "ironcore.csi.volumes";

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
    }

    /// One runtime for all cases of a property (keeps its blocking-pool threads warm).
    fn shared_rt() -> &'static tokio::runtime::Runtime {
        static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
        RT.get_or_init(rt)
    }

    fn temp_files(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        for sub in fs::read_dir(dir).expect("read root") {
            let sub = sub.expect("entry").path();
            if sub.is_dir() {
                for f in fs::read_dir(&sub).expect("read collection") {
                    let name = f.expect("entry").file_name().to_string_lossy().into_owned();
                    if name.starts_with(TMP_PREFIX) {
                        out.push(name);
                    }
                }
            }
        }
        out
    }

    #[test]
    fn escaping_keeps_safe_names_and_escapes_everything_else() {
        assert_eq!(escape("abc-0_9.x"), "abc-0_9.x");
        assert_eq!(escape("sha256:abc"), "sha256%3Aabc");
        assert_eq!(escape("A/b"), "%41%2Fb");
        assert_eq!(escape(".hidden"), "%2Ehidden");
        assert_eq!(escape("%"), "%25");
        assert_eq!(unescape("sha256%3Aabc").as_deref(), Some("sha256:abc"));
        assert_eq!(
            unescape("%2e").as_deref(),
            None,
            "lower-case hex is never produced"
        );
        assert_eq!(unescape("A"), None, "upper-case letters are always escaped");
        assert_eq!(unescape("%4"), None);
    }

    proptest! {
        #[test]
        fn escaping_is_reversible_and_yields_portable_names(key in any::<String>()) {
            let e = escape(&key);
            prop_assert!(!e.starts_with('.'));
            prop_assert!(e.bytes().all(|b| b.is_ascii_digit() || b.is_ascii_lowercase()
                || matches!(b, b'.' | b'_' | b'-' | b'%' | b'A'..=b'F')));
            prop_assert_eq!(unescape(&e), Some(key));
        }
    }

    #[test]
    fn records_are_files_named_by_escaped_id_with_a_json_suffix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let b = HostDirBackend::open(dir.path()).expect("open");
        rt().block_on(b.put(C, "sha256:abc", b"{}".to_vec(), Precondition::None))
            .expect("put");
        let path = dir.path().join(C).join("sha256%3Aabc.json");
        assert_eq!(fs::read(path).expect("record file"), b"{}");
    }

    #[test]
    fn ids_too_long_for_a_file_name_are_invalid() {
        let dir = tempfile::tempdir().expect("tempdir");
        let b = HostDirBackend::open(dir.path()).expect("open");
        let long = ":".repeat(100);
        let err = rt()
            .block_on(b.put(C, &long, vec![1], Precondition::None))
            .expect_err("too long");
        assert!(matches!(err, StoreError::Invalid(m) if m.contains("too long")));
    }

    #[test]
    fn list_ignores_temp_and_foreign_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let b = HostDirBackend::open(dir.path()).expect("open");
        let rt = rt();
        rt.block_on(b.put(C, "a", b"1".to_vec(), Precondition::None))
            .expect("put");
        let cdir = dir.path().join(C);
        fs::write(cdir.join(".tmp-0123"), b"torn").expect("write tmp");
        fs::write(cdir.join("README"), b"x").expect("write foreign");
        fs::write(cdir.join("UPPER.json"), b"x").expect("write non-canonical");
        let listed = rt.block_on(b.list(C)).expect("list");
        assert_eq!(listed, vec![("a".to_owned(), b"1".to_vec())]);
    }

    #[test]
    fn open_removes_leftover_temp_files_and_keeps_records() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rt = rt();
        {
            let b = HostDirBackend::open(dir.path()).expect("open");
            rt.block_on(b.put(C, "a", b"old".to_vec(), Precondition::None))
                .expect("put");
        }
        fs::write(dir.path().join(C).join(".tmp-feedbeef"), b"{\"metad").expect("torn temp");
        let b = HostDirBackend::open(dir.path()).expect("reopen");
        assert!(temp_files(dir.path()).is_empty());
        assert_eq!(
            rt.block_on(b.get(C, "a")).expect("get"),
            Some(b"old".to_vec())
        );
    }

    #[test]
    fn a_crash_before_the_rename_keeps_the_old_record_intact() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rt = rt();
        let b = HostDirBackend::open(dir.path()).expect("open");
        rt.block_on(b.put(C, "a", b"old".to_vec(), Precondition::None))
            .expect("put");
        b.crash_next_put(Crash::BeforeRename);
        rt.block_on(b.put(C, "a", b"new".to_vec(), Precondition::None))
            .expect_err("crash");
        assert_eq!(
            temp_files(dir.path()).len(),
            1,
            "the complete temp file is left behind"
        );
        drop(b);
        let b = HostDirBackend::open(dir.path()).expect("reopen");
        assert!(temp_files(dir.path()).is_empty());
        assert_eq!(
            rt.block_on(b.get(C, "a")).expect("get"),
            Some(b"old".to_vec())
        );
        assert_eq!(rt.block_on(b.list(C)).expect("list").len(), 1);
    }

    #[test]
    fn a_crash_in_the_middle_of_writing_leaves_no_torn_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rt = rt();
        let b = HostDirBackend::open(dir.path()).expect("open");
        rt.block_on(b.put(C, "a", b"old-value".to_vec(), Precondition::None))
            .expect("put");
        b.crash_next_put(Crash::MidWrite(3));
        rt.block_on(b.put(C, "a", b"new-value".to_vec(), Precondition::None))
            .expect_err("crash");
        b.crash_next_put(Crash::MidWrite(2));
        rt.block_on(b.put(C, "fresh", b"xyz".to_vec(), Precondition::None))
            .expect_err("crash");
        drop(b);
        let b = HostDirBackend::open(dir.path()).expect("reopen");
        assert_eq!(
            rt.block_on(b.get(C, "a")).expect("get"),
            Some(b"old-value".to_vec())
        );
        assert_eq!(
            rt.block_on(b.get(C, "fresh")).expect("get"),
            None,
            "an unfinished create is lost whole"
        );
        assert_eq!(rt.block_on(b.list(C)).expect("list").len(), 1);
    }

    #[derive(Debug, Clone)]
    enum Step {
        Put(u8, Vec<u8>),
        Remove(u8),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            3 => (0u8..4, proptest::collection::vec(any::<u8>(), 1..40)).prop_map(|(k, v)| Step::Put(k, v)),
            1 => (0u8..4).prop_map(Step::Remove),
        ]
    }

    proptest! {
        // Without fsync (irrelevant for a process crash) 1000 cases stay fast.
        #[test]
        fn reopening_after_a_crash_at_any_write_yields_exactly_the_committed_records(
            steps in proptest::collection::vec(step(), 0..6),
            crash_key in 0u8..4,
            crash_value in proptest::collection::vec(any::<u8>(), 1..40),
            torn_at in proptest::option::of(0usize..40),
        ) {
            let dir = tempfile::tempdir().expect("tempdir");
            let rt = shared_rt();
            let b = HostDirBackend::open_without_fsync(dir.path()).expect("open");
            let mut model: BTreeMap<String, Vec<u8>> = BTreeMap::new();
            for s in &steps {
                match s {
                    Step::Put(k, v) => {
                        rt.block_on(b.put(C, &format!("k:{k}"), v.clone(), Precondition::None)).expect("put");
                        model.insert(format!("k:{k}"), v.clone());
                    }
                    Step::Remove(k) => {
                        rt.block_on(b.remove(C, &format!("k:{k}"), Precondition::None)).expect("remove");
                        model.remove(&format!("k:{k}"));
                    }
                }
            }
            b.crash_next_put(match torn_at {
                Some(n) => Crash::MidWrite(n),
                None => Crash::BeforeRename,
            });
            let crashed = rt.block_on(b.put(C, &format!("k:{crash_key}"), crash_value, Precondition::None));
            prop_assert!(crashed.is_err());
            drop(b);
            let b = HostDirBackend::open_without_fsync(dir.path()).expect("reopen");
            prop_assert!(temp_files(dir.path()).is_empty());
            let listed: BTreeMap<String, Vec<u8>> =
                rt.block_on(b.list(C)).expect("list").into_iter().collect();
            prop_assert_eq!(listed, model);
        }
    }
}
