//! Safe librbd: pool-level image calls on an [`IoCtx`] and the open-image handle [`Image`].
//! Every call blocks: run them off the reactor threads.

use std::collections::BTreeMap;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;
use std::sync::Arc;

use crate::error::check;
use crate::libs::libs;
use crate::rados::{cstring, from_c, IoCtx, IoCtxHandle};
use crate::sys;
use rbd::{ChildRef, ParentSpec, Passphrase, RbdError, Result, SnapshotInfo};

/// RAII owner of `rbd_image_options_t`.
pub struct ImageOptions(sys::rbd_image_options_t);

impl ImageOptions {
    /// Empty options (librbd's `rbd_create4` must never get a NULL options handle: it crashes).
    /// Loads the Ceph libraries if no connection did yet, hence the `Result`.
    pub fn new() -> Result<ImageOptions> {
        let libraries = crate::libs::load()?;
        let mut raw: sys::rbd_image_options_t = ptr::null_mut();
        // SAFETY: raw is a valid out-pointer; the handle is destroyed by Drop.
        unsafe { libraries.rbd_image_options_create(&mut raw) };
        Ok(ImageOptions(raw))
    }

    /// Sets a string option (e.g. `RBD_IMAGE_OPTION_DATA_POOL`).
    pub fn set_str(&mut self, option: u32, value: &str) -> Result<&mut Self> {
        let v = cstring(value)?;
        // SAFETY: self.0 is a live options handle; v is NUL-terminated and copied by librbd.
        let ret =
            unsafe { libs().rbd_image_options_set_string(self.0, option as c_int, v.as_ptr()) };
        check(ret, || format!("image option {option} = {value:?}"))?;
        Ok(self)
    }

    /// Sets an integer option (e.g. `RBD_IMAGE_OPTION_CLONE_FORMAT`).
    pub fn set_u64(&mut self, option: u32, value: u64) -> Result<&mut Self> {
        // SAFETY: self.0 is a live options handle.
        let ret = unsafe { libs().rbd_image_options_set_uint64(self.0, option as c_int, value) };
        check(ret, || format!("image option {option} = {value}"))?;
        Ok(self)
    }
}

// SAFETY: an rbd_image_options_t is a plain heap map owned by exactly one ImageOptions; moving it to
// another thread is fine (it is not Sync: never used by two threads at once).
unsafe impl Send for ImageOptions {}

impl Drop for ImageOptions {
    fn drop(&mut self) {
        // SAFETY: self.0 came from rbd_image_options_create and is destroyed exactly once.
        unsafe { libs().rbd_image_options_destroy(self.0) }
    }
}

impl IoCtx {
    /// Creates an image (`Exists` if the name is taken).
    pub fn create_image(&self, name: &str, size: u64, opts: &ImageOptions) -> Result<()> {
        let n = cstring(name)?;
        // SAFETY: live ioctx, NUL-terminated name, live (non-NULL) options handle.
        let ret = unsafe { libs().rbd_create4(self.raw(), n.as_ptr(), size, opts.0) };
        check(ret, || format!("create image {name}"))?;
        Ok(())
    }

    /// Clones `parent@snap` (in this pool) into `child` (in `child_io`'s pool).
    pub fn clone_image(
        &self,
        parent: &str,
        snap: &str,
        child_io: &IoCtx,
        child: &str,
        opts: &ImageOptions,
    ) -> Result<()> {
        let (p, s, c) = (cstring(parent)?, cstring(snap)?, cstring(child)?);
        // SAFETY: both ioctxs are live; all names are NUL-terminated; opts is a live handle.
        let ret = unsafe {
            libs().rbd_clone3(
                self.raw(),
                p.as_ptr(),
                s.as_ptr(),
                child_io.raw(),
                c.as_ptr(),
                opts.0,
            )
        };
        check(ret, || format!("clone {parent}@{snap} to {child}"))?;
        Ok(())
    }

    /// Renames image `from` to `to` within this pool (`AlreadyExists` if `to` exists). A rename
    /// is one update of the pool's directory object: after a crash the image has one name or the
    /// other, never both or neither.
    pub fn rename_image(&self, from: &str, to: &str) -> Result<()> {
        let (f, t) = (cstring(from)?, cstring(to)?);
        // SAFETY: live ioctx; both names NUL-terminated.
        let ret = unsafe { libs().rbd_rename(self.raw(), f.as_ptr(), t.as_ptr()) };
        check(ret, || format!("rename image {from} to {to}"))?;
        Ok(())
    }

    /// Removes an image (`Busy` while it has snapshots or watchers).
    pub fn remove_image(&self, name: &str) -> Result<()> {
        let n = cstring(name)?;
        // SAFETY: live ioctx, NUL-terminated name.
        let ret = unsafe { libs().rbd_remove(self.raw(), n.as_ptr()) };
        check(ret, || format!("remove image {name}"))?;
        Ok(())
    }

    /// Names of all images of the pool, sorted.
    pub fn list_images(&self) -> Result<Vec<String>> {
        let mut cap: usize = 16;
        loop {
            let mut specs: Vec<sys::rbd_image_spec_t> = vec![
                sys::rbd_image_spec_t {
                    id: ptr::null_mut(),
                    name: ptr::null_mut()
                };
                cap
            ];
            let mut n = cap;
            // SAFETY: specs has room for n entries; librbd fills at most n and reports the count.
            let ret = unsafe { libs().rbd_list2(self.raw(), specs.as_mut_ptr(), &mut n) };
            if ret == -libc::ERANGE {
                cap = n.max(cap * 2);
                continue;
            }
            check(ret, || format!("list images of {}", self.pool()))?;
            let mut names: Vec<String> = specs[..n].iter().map(|s| from_c(s.name)).collect();
            // SAFETY: the first n entries were filled by rbd_list2 and are freed exactly once here.
            unsafe { libs().rbd_image_spec_list_cleanup(specs.as_mut_ptr(), n) };
            names.sort();
            return Ok(names);
        }
    }

    /// Opens an image at its head (`snap == None`) or at a snapshot.
    pub fn open_image(&self, name: &str, snap: Option<&str>, read_only: bool) -> Result<Image> {
        let n = cstring(name)?;
        let s = snap.map(cstring).transpose()?;
        let s_ptr = s.as_ref().map_or(ptr::null(), |s| s.as_ptr());
        let mut raw: sys::rbd_image_t = ptr::null_mut();
        let open = if read_only {
            libs().rbd_open_read_only
        } else {
            libs().rbd_open
        };
        // SAFETY: live ioctx; NUL-terminated names (snap may be NULL = head); raw is a valid
        // out-pointer. librbd duplicates the ioctx internally; we keep ours alive anyway.
        let ret = unsafe { open(self.raw(), n.as_ptr(), &mut raw, s_ptr) };
        let what = match snap {
            Some(s) => format!("open image {name}@{s}"),
            None => format!("open image {name}"),
        };
        check(ret, || what)?;
        Ok(Image {
            raw,
            name: name.to_string(),
            _io: self.inner.clone(),
        })
    }
}

/// An open librbd image. Closed when dropped; [`Image::close`] consumes the handle, so a double
/// close cannot be written.
pub struct Image {
    raw: sys::rbd_image_t,
    name: String,
    _io: Arc<IoCtxHandle>,
}

// SAFETY: an rbd_image_t may be used from any thread (librbd's ImageCtx is internally locked); this
// crate uses each handle from one thread at a time (Image is not Sync).
unsafe impl Send for Image {}

impl Drop for Image {
    fn drop(&mut self) {
        if !self.raw.is_null() {
            // SAFETY: raw is an open image, closed exactly once (close() nulls it before drop).
            let ret = unsafe { libs().rbd_close(self.raw) };
            if ret < 0 {
                tracing::warn!(image = %self.name, ret, "rbd_close failed");
            }
        }
    }
}

/// What a flatten progress callback sees.
struct FlattenState<'a> {
    progress: &'a (dyn Fn(u64, u64) -> bool + Send + Sync),
    panicked: bool,
}

extern "C" fn flatten_progress(done: u64, total: u64, data: *mut c_void) -> c_int {
    // Runs on a librbd thread: never unwind into C.
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: data is the &mut FlattenState passed to rbd_flatten_with_progress, which lives
        // until that call returns; librbd calls back only during the call.
        let state = unsafe { &mut *(data as *mut FlattenState<'_>) };
        if state.panicked {
            return false;
        }
        match catch_unwind(AssertUnwindSafe(|| (state.progress)(done, total))) {
            Ok(go_on) => go_on,
            Err(_) => {
                state.panicked = true;
                false
            }
        }
    }));
    match outcome {
        Ok(true) => 0,
        _ => -libc::ECANCELED,
    }
}

/// No-op completion callback: completions are awaited with `rbd_aio_wait_for_complete`.
extern "C" fn aio_noop(_c: sys::rbd_completion_t, _arg: *mut c_void) {}

/// RAII owner of an `rbd_completion_t`.
pub(crate) struct Completion(sys::rbd_completion_t);

impl Completion {
    fn new() -> Result<Completion> {
        let mut c: sys::rbd_completion_t = ptr::null_mut();
        // SAFETY: c is a valid out-pointer; the callback is a no-op that never unwinds.
        let ret =
            unsafe { libs().rbd_aio_create_completion(ptr::null_mut(), Some(aio_noop), &mut c) };
        check(ret, || "rbd_aio_create_completion".into())?;
        Ok(Completion(c))
    }

    /// Waits for the request and returns its return value.
    pub(crate) fn wait(&self) -> isize {
        // SAFETY: self.0 is a live completion that was handed to an aio request.
        unsafe { libs().rbd_aio_wait_for_complete(self.0) };
        // SAFETY: the request completed (waited above).
        unsafe { libs().rbd_aio_get_return_value(self.0) }
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        // SAFETY: self.0 came from rbd_aio_create_completion and is released exactly once; callers
        // wait for completion before dropping a completion whose request was submitted.
        unsafe { libs().rbd_aio_release(self.0) }
    }
}

/// An asynchronous write in flight: its completion and the buffer librbd reads from.
pub(crate) struct PendingWrite {
    completion: Completion,
    _buf: bytes::Bytes,
    /// Offset and length, for error messages.
    pub(crate) offset: u64,
    pub(crate) len: usize,
}

impl PendingWrite {
    /// Waits for the write; `Err` if it failed or was short.
    pub(crate) fn finish(self, image: &str) -> Result<()> {
        let ret = self.completion.wait();
        if ret < 0 {
            return Err(crate::error::errno_error(
                ret as i64,
                &format!("aio write {image} at {}", self.offset),
            ));
        }
        Ok(())
    }
}

impl Drop for PendingWrite {
    fn drop(&mut self) {
        // The buffer must outlive the request: wait before it (and the completion) are freed. A
        // no-op when finish() already waited.
        self.completion.wait();
    }
}

impl Image {
    /// The image name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Closes the image, reporting a close error (dropping closes too, logging errors).
    pub fn close(mut self) -> Result<()> {
        let raw = std::mem::replace(&mut self.raw, ptr::null_mut());
        // SAFETY: raw is an open image; self.raw is now NULL so Drop will not close it again.
        let ret = unsafe { libs().rbd_close(raw) };
        check(ret, || format!("close image {}", self.name))?;
        Ok(())
    }

    /// Current size in bytes (of the head or of the opened snapshot; after an encryption load, the
    /// size visible through the encryption layer).
    pub fn size(&self) -> Result<u64> {
        let mut size = 0u64;
        // SAFETY: open image; size is a valid out-pointer.
        let ret = unsafe { libs().rbd_get_size(self.raw, &mut size) };
        check(ret, || format!("size of {}", self.name))?;
        Ok(size)
    }

    /// Grows or shrinks the image.
    pub fn resize(&self, size: u64) -> Result<()> {
        // SAFETY: open image.
        let ret = unsafe { libs().rbd_resize(self.raw, size) };
        check(ret, || format!("resize {} to {size}", self.name))?;
        Ok(())
    }

    /// The parent snapshot of a clone, `None` for an image without parent.
    pub fn parent(&self) -> Result<Option<ParentSpec>> {
        let mut image = sys::rbd_linked_image_spec_t {
            pool_id: 0,
            pool_name: ptr::null_mut(),
            pool_namespace: ptr::null_mut(),
            image_id: ptr::null_mut(),
            image_name: ptr::null_mut(),
            trash: false,
        };
        let mut snap = sys::rbd_snap_spec_t {
            id: 0,
            namespace_type: 0,
            name: ptr::null_mut(),
        };
        // SAFETY: open image; both out-structs are valid and freed below only on success.
        let ret = unsafe { libs().rbd_get_parent(self.raw, &mut image, &mut snap) };
        if ret == -libc::ENOENT {
            return Ok(None);
        }
        check(ret, || format!("parent of {}", self.name))?;
        let parent = ParentSpec {
            pool: from_c(image.pool_name),
            image: from_c(image.image_name),
            snapshot: from_c(snap.name),
        };
        // SAFETY: filled by rbd_get_parent and cleaned exactly once.
        unsafe { libs().rbd_linked_image_spec_cleanup(&mut image) };
        // SAFETY: filled by rbd_get_parent and cleaned exactly once.
        unsafe { libs().rbd_snap_spec_cleanup(&mut snap) };
        Ok(Some(parent))
    }

    /// User snapshots in creation order, with their protection flags.
    ///
    /// `rbd_snap_list` lists the snapshots of every namespace: while any client removes a
    /// snapshot, librbd first moves it into the trash namespace under a UUID name (measured on
    /// Pacific 16.2.15), and such an entry answers ENOENT to every lookup by name. Those entries,
    /// and snapshots removed between the listing and the protection query, are left out: their
    /// ENOENT must never read as "the image is gone" (it made the image reconciler report live
    /// volumes as vanished whenever a snapshot of theirs was being removed).
    pub fn snapshots(&self) -> Result<Vec<SnapshotInfo>> {
        let listed = self.snapshot_entries()?;
        let mut out = Vec::with_capacity(listed.len());
        for (_, name, size) in listed {
            let protected = match self.snap_is_protected(&name) {
                Ok(p) => p,
                Err(RbdError::NotFound(_)) => continue,
                Err(e) => return Err(e),
            };
            out.push(SnapshotInfo {
                name,
                size,
                protected,
            });
        }
        Ok(out)
    }

    /// Every snapshot `rbd_snap_list` lists, of any namespace, as `(id, name, size)` in id
    /// (creation) order.
    fn snapshot_entries(&self) -> Result<Vec<(u64, String, u64)>> {
        let mut cap: c_int = 8;
        loop {
            let empty = sys::rbd_snap_info_t {
                id: 0,
                size: 0,
                name: ptr::null(),
            };
            let mut infos = vec![empty; cap as usize];
            let mut max = cap;
            // SAFETY: infos has room for max entries (librbd needs count + 1 for its terminator).
            let ret = unsafe { libs().rbd_snap_list(self.raw, infos.as_mut_ptr(), &mut max) };
            if ret == -libc::ERANGE {
                cap = max.max(cap * 2);
                continue;
            }
            let n = check(ret, || format!("list snapshots of {}", self.name))? as usize;
            let mut listed: Vec<(u64, String, u64)> = infos[..n]
                .iter()
                .map(|i| (i.id, from_c(i.name), i.size))
                .collect();
            // SAFETY: infos was filled by a successful rbd_snap_list (terminated by a NULL name);
            // freed exactly once.
            unsafe { libs().rbd_snap_list_end(infos.as_mut_ptr()) };
            listed.sort_by_key(|(id, _, _)| *id);
            return Ok(listed);
        }
    }

    /// The ids of the trash-namespace snapshots that were user snapshot `snap` before a removal
    /// moved them there (see [`Image::snapshots`]). A removal that ran to its end leaves none; one
    /// interrupted between the move and the removal proper (its client killed) leaves one for good,
    /// holding its data, as does a removal that found clone v2 children (librbd removes that one
    /// when the last child goes).
    pub fn trashed_snapshots_named(&self, snap: &str) -> Result<Vec<u64>> {
        let mut out = Vec::new();
        for (id, _, _) in self.snapshot_entries()? {
            let mut ns: sys::rbd_snap_namespace_type_t = sys::RBD_SNAP_NAMESPACE_TYPE_USER;
            // SAFETY: open image; ns is a valid out-pointer.
            let ret = unsafe { libs().rbd_snap_get_namespace_type(self.raw, id, &mut ns) };
            if ret == -libc::ENOENT {
                continue; // removed since the listing
            }
            check(ret, || format!("namespace of snapshot {}@{id}", self.name))?;
            if ns != sys::RBD_SNAP_NAMESPACE_TYPE_TRASH {
                continue;
            }
            match self.trash_original_name(id) {
                Ok(original) if original == snap => out.push(id),
                Ok(_) | Err(RbdError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// The name a trash-namespace snapshot had in the user namespace.
    fn trash_original_name(&self, id: u64) -> Result<String> {
        let mut cap = 128usize;
        loop {
            let mut buf = vec![0u8; cap];
            let out = buf.as_mut_ptr().cast::<c_char>();
            // SAFETY: open image; buf has room for cap bytes, which is the length librbd is given.
            let ret = unsafe { libs().rbd_snap_get_trash_namespace(self.raw, id, out, cap) };
            if ret == -libc::ERANGE && cap < 1 << 16 {
                cap *= 2;
                continue;
            }
            let what = || format!("original name of trashed snapshot {}@{id}", self.name);
            check(ret, what)?;
            let name = CStr::from_bytes_until_nul(&buf)
                .map_err(|_| RbdError::Other(format!("{}: not NUL-terminated", what())))?;
            return Ok(name.to_string_lossy().into_owned());
        }
    }

    /// Removes a snapshot by id; a trash-namespace one that still has clone v2 children stays
    /// (librbd answers `Busy` and removes it with its last child).
    pub fn snap_remove_by_id(&self, id: u64) -> Result<()> {
        // SAFETY: open image.
        let ret = unsafe { libs().rbd_snap_remove_by_id(self.raw, id) };
        check(ret, || format!("remove snapshot {}@{id}", self.name))?;
        Ok(())
    }

    /// Whether a snapshot exists.
    pub fn snap_exists(&self, snap: &str) -> Result<bool> {
        let s = cstring(snap)?;
        let mut exists = false;
        // SAFETY: open image; s NUL-terminated; exists is a valid out-pointer.
        let ret = unsafe { libs().rbd_snap_exists(self.raw, s.as_ptr(), &mut exists) };
        check(ret, || format!("snapshot {}@{snap} exists", self.name))?;
        Ok(exists)
    }

    /// Creates a snapshot.
    pub fn snap_create(&self, snap: &str) -> Result<()> {
        let s = cstring(snap)?;
        // SAFETY: open image; s NUL-terminated.
        let ret = unsafe { libs().rbd_snap_create(self.raw, s.as_ptr()) };
        check(ret, || format!("create snapshot {}@{snap}", self.name))?;
        Ok(())
    }

    /// Removes a snapshot (`Busy` while protected).
    pub fn snap_remove(&self, snap: &str) -> Result<()> {
        let s = cstring(snap)?;
        // SAFETY: open image; s NUL-terminated.
        let ret = unsafe { libs().rbd_snap_remove(self.raw, s.as_ptr()) };
        check(ret, || format!("remove snapshot {}@{snap}", self.name))?;
        Ok(())
    }

    /// Protects a snapshot (librbd: `Busy` if already protected).
    pub fn snap_protect(&self, snap: &str) -> Result<()> {
        let s = cstring(snap)?;
        // SAFETY: open image; s NUL-terminated.
        let ret = unsafe { libs().rbd_snap_protect(self.raw, s.as_ptr()) };
        check(ret, || format!("protect snapshot {}@{snap}", self.name))?;
        Ok(())
    }

    /// Unprotects a snapshot (`Busy` while it has children; librbd: `InvalidArgument` if unprotected).
    pub fn snap_unprotect(&self, snap: &str) -> Result<()> {
        let s = cstring(snap)?;
        // SAFETY: open image; s NUL-terminated.
        let ret = unsafe { libs().rbd_snap_unprotect(self.raw, s.as_ptr()) };
        check(ret, || format!("unprotect snapshot {}@{snap}", self.name))?;
        Ok(())
    }

    /// Whether a snapshot is protected (`NotFound` if it does not exist).
    pub fn snap_is_protected(&self, snap: &str) -> Result<bool> {
        let s = cstring(snap)?;
        let mut protected: c_int = 0;
        // SAFETY: open image; s NUL-terminated; protected is a valid out-pointer.
        let ret = unsafe { libs().rbd_snap_is_protected(self.raw, s.as_ptr(), &mut protected) };
        check(ret, || format!("snapshot {}@{snap}", self.name))?;
        Ok(protected != 0)
    }

    /// Children (clones) of the opened snapshot, or of every snapshot when opened at the head.
    /// Children in the trash are left out.
    pub fn children(&self) -> Result<Vec<ChildRef>> {
        let mut cap: usize = 8;
        loop {
            let empty = sys::rbd_linked_image_spec_t {
                pool_id: 0,
                pool_name: ptr::null_mut(),
                pool_namespace: ptr::null_mut(),
                image_id: ptr::null_mut(),
                image_name: ptr::null_mut(),
                trash: false,
            };
            let mut specs = vec![empty; cap];
            let mut n = cap;
            // SAFETY: specs has room for n entries; librbd fills at most n and reports the count.
            let ret = unsafe { libs().rbd_list_children3(self.raw, specs.as_mut_ptr(), &mut n) };
            if ret == -libc::ERANGE {
                cap = n.max(cap * 2);
                continue;
            }
            check(ret, || format!("list children of {}", self.name))?;
            let mut out: Vec<ChildRef> = specs[..n]
                .iter()
                .filter(|s| !s.trash)
                .map(|s| ChildRef {
                    pool: from_c(s.pool_name),
                    image: from_c(s.image_name),
                })
                .collect();
            // SAFETY: the first n entries were filled by rbd_list_children3; freed exactly once.
            unsafe { libs().rbd_linked_image_spec_list_cleanup(specs.as_mut_ptr(), n) };
            out.sort();
            out.dedup();
            return Ok(out);
        }
    }

    /// Flattens a clone. `progress(done, total)` is called from a librbd thread (in objects); when
    /// it returns `false` librbd starts no further object copies and this returns `Cancelled`.
    pub fn flatten(&self, progress: &(dyn Fn(u64, u64) -> bool + Send + Sync)) -> Result<()> {
        let mut state = FlattenState {
            progress,
            panicked: false,
        };
        // SAFETY: open image; the callback never unwinds (catch_unwind) and state outlives the call
        // (librbd invokes the callback only until rbd_flatten_with_progress returns).
        let ret = unsafe {
            libs().rbd_flatten_with_progress(
                self.raw,
                Some(flatten_progress),
                &mut state as *mut FlattenState<'_> as *mut c_void,
            )
        };
        if state.panicked {
            return Err(RbdError::Other(format!(
                "flatten {}: progress callback panicked",
                self.name
            )));
        }
        if ret == -libc::ECANCELED {
            return Err(RbdError::Cancelled);
        }
        check(ret, || format!("flatten {}", self.name))?;
        Ok(())
    }

    /// Reads up to `buf.len()` bytes at `offset`; returns the count read.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let mut done = 0usize;
        while done < buf.len() {
            let rest = &mut buf[done..];
            // SAFETY: open image; rest is a writable buffer of rest.len() bytes.
            let ret = unsafe {
                libs().rbd_read(
                    self.raw,
                    offset + done as u64,
                    rest.len(),
                    rest.as_mut_ptr() as *mut c_char,
                )
            };
            if ret < 0 {
                return Err(crate::error::errno_error(
                    ret as i64,
                    &format!("read {} at {offset}", self.name),
                ));
            }
            if ret == 0 {
                break;
            }
            done += ret as usize;
        }
        Ok(done)
    }

    /// Writes all of `data` at `offset` (synchronously).
    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        let mut done = 0usize;
        while done < data.len() {
            let rest = &data[done..];
            // SAFETY: open image; rest is a readable buffer of rest.len() bytes.
            let ret = unsafe {
                libs().rbd_write(
                    self.raw,
                    offset + done as u64,
                    rest.len(),
                    rest.as_ptr() as *const c_char,
                )
            };
            if ret < 0 {
                return Err(crate::error::errno_error(
                    ret as i64,
                    &format!("write {} at {offset}", self.name),
                ));
            }
            if ret == 0 {
                return Err(RbdError::Other(format!(
                    "write {} at {offset}: no progress",
                    self.name
                )));
            }
            done += ret as usize;
        }
        Ok(())
    }

    /// Starts an asynchronous write of `data` at `offset`. The returned request keeps the buffer
    /// alive until it completes (dropping it waits).
    pub(crate) fn aio_write(&self, offset: u64, data: bytes::Bytes) -> Result<PendingWrite> {
        let completion = Completion::new()?;
        // SAFETY: open image; data stays alive (moved into PendingWrite) until the completion is
        // waited for; the completion is live and owned by PendingWrite.
        let ret = unsafe {
            libs().rbd_aio_write(
                self.raw,
                offset,
                data.len(),
                data.as_ptr() as *const c_char,
                completion.0,
            )
        };
        if ret < 0 {
            // Not submitted: the completion is released without waiting.
            return Err(crate::error::errno_error(
                ret.into(),
                &format!("aio write {} at {offset}", self.name),
            ));
        }
        let len = data.len();
        Ok(PendingWrite {
            completion,
            _buf: data,
            offset,
            len,
        })
    }

    /// Flushes cached writes.
    pub fn flush(&self) -> Result<()> {
        // SAFETY: open image.
        let ret = unsafe { libs().rbd_flush(self.raw) };
        check(ret, || format!("flush {}", self.name))?;
        Ok(())
    }

    /// Formats the image with LUKS2 / AES-256.
    pub fn encryption_format_luks2(&self, passphrase: &Passphrase) -> Result<()> {
        let mut opts = self.luks2_options(passphrase);
        // SAFETY: open image; opts is a valid LUKS2 options struct whose passphrase pointer lives
        // for the call; the size matches the struct.
        let ret = unsafe {
            libs().rbd_encryption_format(
                self.raw,
                sys::RBD_ENCRYPTION_FORMAT_LUKS2,
                &mut opts as *mut _ as *mut c_void,
                std::mem::size_of::<sys::rbd_encryption_luks2_format_options_t>(),
            )
        };
        check(ret, || format!("LUKS2 format of {}", self.name))?;
        Ok(())
    }

    /// Loads the LUKS2 layer: later I/O on this handle goes through it.
    pub fn encryption_load_luks2(&self, passphrase: &Passphrase) -> Result<()> {
        let mut opts = self.luks2_options(passphrase);
        // SAFETY: as in encryption_format_luks2.
        let ret = unsafe {
            libs().rbd_encryption_load(
                self.raw,
                sys::RBD_ENCRYPTION_FORMAT_LUKS2,
                &mut opts as *mut _ as *mut c_void,
                std::mem::size_of::<sys::rbd_encryption_luks2_format_options_t>(),
            )
        };
        check(ret, || format!("LUKS2 load of {}", self.name))?;
        Ok(())
    }

    fn luks2_options(&self, passphrase: &Passphrase) -> sys::rbd_encryption_luks2_format_options_t {
        let bytes = passphrase.expose();
        sys::rbd_encryption_luks2_format_options_t {
            alg: sys::RBD_ENCRYPTION_ALGORITHM_AES256,
            passphrase: bytes.as_ptr() as *const c_char,
            passphrase_size: bytes.len(),
        }
    }

    /// One metadata value; `None` if the key is not set.
    pub fn metadata_get(&self, key: &str) -> Result<Option<String>> {
        let k = cstring(key)?;
        let mut cap: usize = 256;
        loop {
            let mut buf = vec![0u8; cap];
            let mut len = cap;
            // SAFETY: open image; k NUL-terminated; buf has len writable bytes.
            let ret = unsafe {
                libs().rbd_metadata_get(
                    self.raw,
                    k.as_ptr(),
                    buf.as_mut_ptr() as *mut c_char,
                    &mut len,
                )
            };
            if ret == -libc::ERANGE {
                cap = len.max(cap * 2);
                continue;
            }
            if ret == -libc::ENOENT {
                return Ok(None);
            }
            check(ret, || format!("metadata {key:?} of {}", self.name))?;
            let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
            return Ok(Some(String::from_utf8_lossy(&buf[..end]).into_owned()));
        }
    }

    /// Sets one metadata value.
    pub fn metadata_set(&self, key: &str, value: &str) -> Result<()> {
        let (k, v) = (cstring(key)?, cstring(value)?);
        // SAFETY: open image; both strings NUL-terminated.
        let ret = unsafe { libs().rbd_metadata_set(self.raw, k.as_ptr(), v.as_ptr()) };
        check(ret, || format!("set metadata {key:?} of {}", self.name))?;
        Ok(())
    }

    /// Removes one metadata key.
    pub fn metadata_remove(&self, key: &str) -> Result<()> {
        let k = cstring(key)?;
        // SAFETY: open image; k NUL-terminated.
        let ret = unsafe { libs().rbd_metadata_remove(self.raw, k.as_ptr()) };
        check(ret, || format!("remove metadata {key:?} of {}", self.name))?;
        Ok(())
    }

    /// All metadata.
    pub fn metadata_list(&self) -> Result<BTreeMap<String, String>> {
        let start = cstring("")?;
        let (mut key_cap, mut val_cap) = (1024usize, 1024usize);
        loop {
            let mut keys = vec![0u8; key_cap];
            let mut vals = vec![0u8; val_cap];
            let (mut key_len, mut val_len) = (key_cap, val_cap);
            // SAFETY: open image; start NUL-terminated; keys/vals have key_len/val_len writable
            // bytes; max = 0 lists every pair.
            let ret = unsafe {
                libs().rbd_metadata_list(
                    self.raw,
                    start.as_ptr(),
                    0,
                    keys.as_mut_ptr() as *mut c_char,
                    &mut key_len,
                    vals.as_mut_ptr() as *mut c_char,
                    &mut val_len,
                )
            };
            if ret == -libc::ERANGE {
                key_cap = key_len.max(key_cap * 2);
                val_cap = val_len.max(val_cap * 2);
                continue;
            }
            check(ret, || format!("list metadata of {}", self.name))?;
            let split = |buf: &[u8], len: usize| -> Vec<String> {
                buf[..len.min(buf.len())]
                    .split(|b| *b == 0)
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect()
            };
            let ks = split(&keys, key_len);
            let vs = split(&vals, val_len);
            return Ok(ks
                .into_iter()
                .zip(vs)
                .filter(|(k, _)| !k.is_empty())
                .collect());
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn call(progress: &(dyn Fn(u64, u64) -> bool + Send + Sync)) -> (c_int, bool) {
        let mut state = FlattenState {
            progress,
            panicked: false,
        };
        let ret = flatten_progress(1, 2, &mut state as *mut FlattenState<'_> as *mut c_void);
        (ret, state.panicked)
    }

    #[test]
    fn flatten_callback_continues_while_the_closure_says_so() {
        assert_eq!(call(&|done, total| done == 1 && total == 2), (0, false));
    }

    #[test]
    fn flatten_callback_cancels_with_a_negative_errno() {
        assert_eq!(call(&|_, _| false), (-libc::ECANCELED, false));
    }

    #[test]
    fn a_panicking_progress_closure_stops_the_flatten_without_unwinding_into_c() {
        let (ret, panicked) = call(&|_, _| panic!("progress sink failed"));
        assert_eq!(ret, -libc::ECANCELED);
        assert!(panicked);
    }
}
