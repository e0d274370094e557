//! Safe librados: the cluster connection ([`Rados`]), pool I/O contexts ([`IoCtx`]), mon commands and
//! the omap operations the store needs. All calls block: run them off the reactor threads.

use std::ffi::{c_char, c_int, CStr, CString};
use std::path::Path;
use std::ptr;
use std::sync::Arc;
use std::time::Duration;

use crate::error::check;
use crate::libs::libs;
use crate::sys;
use rbd::{RbdError, Result};

/// `CString` from a Rust string; interior NULs are an `InvalidArgument`.
pub(crate) fn cstring(s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| RbdError::InvalidArgument(format!("{s:?} contains a NUL byte")))
}

/// Owner of a connected `rados_t`; shut down when the last [`Rados`] / [`IoCtx`] clone is dropped.
struct ClusterHandle(sys::rados_t);

// SAFETY: a connected rados_t is documented thread-safe (librados serialises internally); the
// handle is only shut down in Drop, when no other reference exists.
unsafe impl Send for ClusterHandle {}
// SAFETY: see Send: concurrent calls on one rados_t are allowed by librados.
unsafe impl Sync for ClusterHandle {}

impl Drop for ClusterHandle {
    fn drop(&mut self) {
        // SAFETY: self.0 came from rados_create2 and is shut down exactly once, here; every IoCtx
        // holds an Arc to this handle, so none outlives it.
        unsafe { libs().rados_shutdown(self.0) }
    }
}

/// A connection to a Ceph cluster (librados `rados_t`). Cheap to clone.
#[derive(Clone)]
pub struct Rados {
    cluster: Arc<ClusterHandle>,
}

impl std::fmt::Debug for Rados {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rados").finish_non_exhaustive()
    }
}

/// How to reach and authenticate to the cluster.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions<'a> {
    /// A `ceph.conf` to read first (optional).
    pub conf_file: Option<&'a Path>,
    /// `mon_host` override, e.g. `127.0.0.1:6789` (optional when the conf file names the monitors).
    pub monitors: Option<&'a str>,
    /// User id without `client.`.
    pub user: &'a str,
    /// A keyring file (optional).
    pub keyring: Option<&'a Path>,
    /// A file holding only the key (wins over the keyring, as in the Go provider).
    pub key_file: Option<&'a Path>,
    /// Bound of the connect and authentication (`client_mount_timeout`; at least 1 s).
    pub timeout: Duration,
    /// Bound of every mon command (`rados_mon_op_timeout`); zero: none (librados' default).
    pub mon_op_timeout: Duration,
    /// Bound of every OSD operation, librbd's included (`rados_osd_op_timeout`); zero: none
    /// (librados' default, under which a call on a stuck placement group never returns). A bound
    /// shorter than the OSD failure detection (`osd_heartbeat_grace` 20 s + interval 6 s) makes
    /// an OSD fail-over an error instead of a delay. A timed-out call fails with ETIMEDOUT
    /// ([`RbdError::Transient`]); a timed-out write may still be applied later.
    pub osd_op_timeout: Duration,
}

/// A librados timeout option value: whole seconds, rounded up (zero stays zero: no timeout).
fn timeout_secs(d: Duration) -> String {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    secs.to_string()
}

impl Rados {
    /// Connects (blocking, bounded by `opts.timeout`), with the mon and OSD op timeouts of `opts`
    /// set on the handle before it connects.
    pub fn connect(opts: &ConnectOptions<'_>) -> Result<Rados> {
        let name = cstring(&format!(
            "client.{}",
            opts.user.trim_start_matches("client.")
        ))?;
        let cluster_name = cstring("ceph")?;
        crate::libs::load()?;
        let mut raw: sys::rados_t = ptr::null_mut();
        // SAFETY: raw is a valid out-pointer; the names are NUL-terminated and outlive the call.
        let ret =
            unsafe { libs().rados_create2(&mut raw, cluster_name.as_ptr(), name.as_ptr(), 0) };
        check(ret, || "rados_create2".into())?;
        // From here on the handle is shut down by Drop, even when configuration fails.
        let handle = ClusterHandle(raw);
        if let Some(conf) = opts.conf_file {
            let path = cstring(&conf.display().to_string())?;
            // SAFETY: handle.0 is a created, not yet connected cluster; path is NUL-terminated.
            let ret = unsafe { libs().rados_conf_read_file(handle.0, path.as_ptr()) };
            check(ret, || format!("reading {}", conf.display()))?;
        }
        // Set after the conf file, so that the caller's bounds win over the file's.
        let mut settings: Vec<(&str, String)> = vec![
            (
                "client_mount_timeout",
                timeout_secs(opts.timeout.max(Duration::from_secs(1))),
            ),
            ("rados_mon_op_timeout", timeout_secs(opts.mon_op_timeout)),
            ("rados_osd_op_timeout", timeout_secs(opts.osd_op_timeout)),
        ];
        if let Some(m) = opts.monitors {
            settings.push(("mon_host", m.to_string()));
        }
        if let Some(k) = opts.keyring {
            settings.push(("keyring", k.display().to_string()));
        }
        if let Some(k) = opts.key_file {
            settings.push(("keyfile", k.display().to_string()));
        }
        for (key, value) in settings {
            let (k, v) = (cstring(key)?, cstring(&value)?);
            // SAFETY: handle.0 is a created cluster; both strings are NUL-terminated.
            let ret = unsafe { libs().rados_conf_set(handle.0, k.as_ptr(), v.as_ptr()) };
            check(ret, || format!("setting {key}"))?;
        }
        // SAFETY: handle.0 is configured and not connected yet.
        let ret = unsafe { libs().rados_connect(handle.0) };
        check(ret, || {
            format!("connecting to the cluster as {}", name.to_string_lossy())
        })?;
        Ok(Rados {
            cluster: Arc::new(handle),
        })
    }

    /// An I/O context on `pool`. `NotFound` if the pool does not exist.
    pub fn ioctx(&self, pool: &str) -> Result<IoCtx> {
        let name = cstring(pool)?;
        let mut io: sys::rados_ioctx_t = ptr::null_mut();
        // SAFETY: the cluster is connected (Rados exists only after rados_connect succeeded); io is a
        // valid out-pointer; name is NUL-terminated.
        let ret = unsafe { libs().rados_ioctx_create(self.cluster.0, name.as_ptr(), &mut io) };
        check(ret, || format!("opening pool {pool}"))?;
        Ok(IoCtx {
            inner: Arc::new(IoCtxHandle {
                io,
                _cluster: self.cluster.clone(),
            }),
            pool: pool.to_string(),
        })
    }

    /// This client's global id (`client.<id>` in lock listings and notify senders); unique per
    /// connection, never reused by the cluster.
    pub fn instance_id(&self) -> u64 {
        // SAFETY: the cluster is connected; the call only reads the client's id.
        unsafe { libs().rados_get_instance_id(self.cluster.0) }
    }

    /// This client's address as the cluster sees it (the form `osd blocklist add` takes).
    pub fn addrs(&self) -> Result<String> {
        let mut out: *mut c_char = ptr::null_mut();
        // SAFETY: the cluster is connected; out is a valid out-pointer.
        let ret = unsafe { libs().rados_getaddrs(self.cluster.0, &mut out) };
        check(ret, || "reading this client's address".into())?;
        if out.is_null() {
            return Err(RbdError::Other("rados_getaddrs returned NULL".into()));
        }
        let addrs = from_c(out);
        // SAFETY: librados allocated the string with strdup; it is freed exactly once, with free.
        unsafe { libc::free(out.cast()) };
        Ok(addrs)
    }

    /// Blocklists `addr` on every OSD (`osd blocklist add`, falling back to the pre-Pacific
    /// `blacklist` spelling) for `expire` (zero: the cluster's default, one hour), then waits until
    /// this client has the OSD map carrying the entry, so that every later operation of ours is
    /// ordered after it: from then on the OSDs refuse the blocklisted client's operations and drop
    /// its watches.
    pub fn blocklist_add(&self, addr: &str, expire: Duration) -> Result<()> {
        let c = cstring(addr)?;
        let secs = u32::try_from(expire.as_secs()).unwrap_or(u32::MAX);
        // SAFETY: the cluster is connected; c is NUL-terminated and outlives the call (librados
        // only reads it, the `*mut` in the prototype is historical).
        let ret =
            unsafe { libs().rados_blocklist_add(self.cluster.0, c.as_ptr() as *mut c_char, secs) };
        check(ret, || format!("blocklisting {addr}"))?;
        Ok(())
    }

    /// Sends a JSON mon command and returns the output buffer (the status string goes into errors).
    pub fn mon_command(&self, json: &str) -> Result<Vec<u8>> {
        let cmd = cstring(json)?;
        let cmds = [cmd.as_ptr()];
        let mut out: *mut c_char = ptr::null_mut();
        let mut out_len: usize = 0;
        let mut status: *mut c_char = ptr::null_mut();
        let mut status_len: usize = 0;
        // SAFETY: cmds holds one valid NUL-terminated string that outlives the call; the out-pointers
        // are valid; no input buffer is passed (NULL, 0).
        let ret = unsafe {
            libs().rados_mon_command(
                self.cluster.0,
                cmds.as_ptr() as *mut *const c_char,
                1,
                ptr::null(),
                0,
                &mut out,
                &mut out_len,
                &mut status,
                &mut status_len,
            )
        };
        let take = |buf: *mut c_char, len: usize| -> Vec<u8> {
            if buf.is_null() {
                return Vec::new();
            }
            // SAFETY: librados allocated `len` readable bytes at buf for us.
            let v = unsafe { std::slice::from_raw_parts(buf as *const u8, len) }.to_vec();
            // SAFETY: buf came from librados and is freed exactly once, with its own free function.
            unsafe { libs().rados_buffer_free(buf) };
            v
        };
        let out = take(out, out_len);
        let status = take(status, status_len);
        let prefix = serde_json::from_str::<serde_json::Value>(json)
            .ok()
            .and_then(|v| v.get("prefix").and_then(|p| p.as_str()).map(str::to_string))
            .unwrap_or_else(|| "mon command".into());
        check(ret, || {
            format!(
                "mon command {prefix:?}: {}",
                String::from_utf8_lossy(&status).trim()
            )
        })?;
        Ok(out)
    }
}

/// Owner of a `rados_ioctx_t`, destroyed on drop (before its cluster: it holds the cluster's Arc).
pub(crate) struct IoCtxHandle {
    pub(crate) io: sys::rados_ioctx_t,
    _cluster: Arc<ClusterHandle>,
}

// SAFETY: librados I/O contexts may be used from several threads for I/O operations; this crate
// never changes an ioctx's state (namespace, snap context) after creation.
unsafe impl Send for IoCtxHandle {}
// SAFETY: see Send.
unsafe impl Sync for IoCtxHandle {}

impl Drop for IoCtxHandle {
    fn drop(&mut self) {
        // SAFETY: io came from rados_ioctx_create and is destroyed exactly once, here; every Image
        // opened on it holds an Arc to this handle, so none outlives it.
        unsafe { libs().rados_ioctx_destroy(self.io) }
    }
}

/// An I/O context on one pool. Cheap to clone; keeps its cluster connection alive.
#[derive(Clone)]
pub struct IoCtx {
    pub(crate) inner: Arc<IoCtxHandle>,
    pool: String,
}

impl std::fmt::Debug for IoCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoCtx")
            .field("pool", &self.pool)
            .finish_non_exhaustive()
    }
}

/// Outcome of an omap compare-and-write: the op ran, or one of its asserts failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriteOutcome {
    /// Every assert held and the writes happened.
    Done,
    /// An omap compare failed (ECANCELED): nothing was written.
    CompareFailed,
    /// The object does not exist (ENOENT from a compare/assert on a missing object): nothing was written.
    NoObject,
    /// `create(exclusive)` found the object (EEXIST): nothing was written.
    ObjectExists,
    /// A class call of the op refused with EBUSY (e.g. `lock.assert_locked` on a lock we do not
    /// hold): nothing was written.
    ClassRefused,
    /// This client is blocklisted (EBLOCKLISTED, which is ESHUTDOWN): the OSDs refuse everything.
    Blocklisted,
}

/// One step of a compound write op.
#[derive(Debug, Clone)]
pub(crate) enum WriteStep<'a> {
    /// Create the object; exclusive fails with EEXIST when it exists.
    Create { exclusive: bool },
    /// The omap value of `key` must equal `value` (a missing key compares as the empty value).
    OmapCmpEq { key: &'a str, value: &'a [u8] },
    /// Set one omap key.
    OmapSet { key: &'a str, value: &'a [u8] },
    /// Remove one omap key (no error if absent).
    OmapRm { key: &'a str },
    /// Call an OSD class method (e.g. `lock.assert_locked`); a negative result cancels the op.
    Exec {
        class: &'a str,
        method: &'a str,
        input: &'a [u8],
    },
}

/// RAII owner of a `rados_write_op_t`.
struct WriteOp(sys::rados_write_op_t);

impl Drop for WriteOp {
    fn drop(&mut self) {
        // SAFETY: self.0 came from rados_create_write_op and is released exactly once.
        unsafe { libs().rados_release_write_op(self.0) }
    }
}

/// RAII owner of a `rados_read_op_t`.
struct ReadOp(sys::rados_read_op_t);

impl Drop for ReadOp {
    fn drop(&mut self) {
        // SAFETY: self.0 came from rados_create_read_op and is released exactly once.
        unsafe { libs().rados_release_read_op(self.0) }
    }
}

/// One omap key and its value.
pub(crate) type OmapEntry = (String, Vec<u8>);

/// RAII owner of an omap iterator.
struct OmapIter(sys::rados_omap_iter_t);

impl Drop for OmapIter {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: self.0 was filled in by a successful read op and is ended exactly once.
            unsafe { libs().rados_omap_get_end(self.0) }
        }
    }
}

impl OmapIter {
    /// Drains the iterator into owned pairs.
    fn collect(&self) -> Result<Vec<OmapEntry>> {
        let mut out = Vec::new();
        if self.0.is_null() {
            return Ok(out);
        }
        loop {
            let mut key: *mut c_char = ptr::null_mut();
            let mut val: *mut c_char = ptr::null_mut();
            let mut key_len: usize = 0;
            let mut val_len: usize = 0;
            // SAFETY: self.0 is a live iterator; the out-pointers are valid. The returned buffers are
            // owned by the iterator and copied before the next call.
            let ret = unsafe {
                libs().rados_omap_get_next2(self.0, &mut key, &mut val, &mut key_len, &mut val_len)
            };
            check(ret, || "reading omap values".into())?;
            if key.is_null() {
                return Ok(out);
            }
            // SAFETY: key points to key_len bytes owned by the iterator (valid until the next call).
            let k = unsafe { std::slice::from_raw_parts(key as *const u8, key_len) };
            let v = if val.is_null() {
                Vec::new()
            } else {
                // SAFETY: val points to val_len bytes owned by the iterator (valid until the next call).
                unsafe { std::slice::from_raw_parts(val as *const u8, val_len) }.to_vec()
            };
            out.push((String::from_utf8_lossy(k).into_owned(), v));
        }
    }
}

impl IoCtx {
    /// The pool name.
    pub fn pool(&self) -> &str {
        &self.pool
    }

    /// The cluster connection this context belongs to.
    pub fn rados(&self) -> Rados {
        Rados {
            cluster: self.inner._cluster.clone(),
        }
    }

    pub(crate) fn raw(&self) -> sys::rados_ioctx_t {
        self.inner.io
    }

    /// The raw cluster handle of this context (alive as long as the context).
    pub(crate) fn rados_raw(&self) -> sys::rados_t {
        self.inner._cluster.0
    }

    /// Runs one atomic compound write op on `object`.
    pub(crate) fn write_op(&self, object: &str, steps: &[WriteStep<'_>]) -> Result<WriteOutcome> {
        let oid = cstring(object)?;
        let has_exec = steps.iter().any(|s| matches!(s, WriteStep::Exec { .. }));
        // SAFETY: plain constructor; the result is owned (and released) by WriteOp.
        let op = WriteOp(unsafe { libs().rados_create_write_op() });
        if op.0.is_null() {
            return Err(RbdError::Other(
                "rados_create_write_op returned NULL".into(),
            ));
        }
        // Per-step return values; boxed so their addresses stay fixed until operate returns.
        let mut prvals: Vec<Box<c_int>> = Vec::new();
        // C strings an op step points to (class calls), alive until after operate.
        let mut names: Vec<CString> = Vec::new();
        for step in steps {
            match *step {
                WriteStep::Create { exclusive } => {
                    let mode = if exclusive {
                        sys::LIBRADOS_CREATE_EXCLUSIVE
                    } else {
                        sys::LIBRADOS_CREATE_IDEMPOTENT
                    };
                    // SAFETY: op.0 is a live write op; the category argument is deprecated (NULL ok).
                    unsafe { libs().rados_write_op_create(op.0, mode as c_int, ptr::null()) };
                }
                WriteStep::OmapCmpEq { key, value } => {
                    let mut prval = Box::new(0);
                    // SAFETY: op.0 is live; key/value buffers are copied into the op by librados
                    // (the C API encodes them into the op's bufferlist at call time); prval is a
                    // heap slot that lives until after operate.
                    unsafe {
                        libs().rados_write_op_omap_cmp2(
                            op.0,
                            key.as_ptr() as *const c_char,
                            sys::LIBRADOS_CMPXATTR_OP_EQ as u8,
                            value.as_ptr() as *const c_char,
                            key.len(),
                            value.len(),
                            &mut *prval,
                        )
                    };
                    prvals.push(prval);
                }
                WriteStep::OmapSet { key, value } => {
                    let keys = [key.as_ptr() as *const c_char];
                    let vals = [value.as_ptr() as *const c_char];
                    let key_lens = [key.len()];
                    let val_lens = [value.len()];
                    // SAFETY: op.0 is live; the four arrays have one element each, matching num=1;
                    // librados copies keys and values into the op at call time.
                    unsafe {
                        libs().rados_write_op_omap_set2(
                            op.0,
                            keys.as_ptr(),
                            vals.as_ptr(),
                            key_lens.as_ptr(),
                            val_lens.as_ptr(),
                            1,
                        )
                    };
                }
                WriteStep::Exec {
                    class,
                    method,
                    input,
                } => {
                    let (class, method) = (cstring(class)?, cstring(method)?);
                    let mut prval = Box::new(0);
                    // SAFETY: op.0 is live; class and method are NUL-terminated and kept in `names`
                    // until after operate (librados keeps the pointers); the input is copied into the
                    // op at call time; prval is a heap slot that lives until after operate.
                    unsafe {
                        libs().rados_write_op_exec(
                            op.0,
                            class.as_ptr(),
                            method.as_ptr(),
                            input.as_ptr() as *const c_char,
                            input.len(),
                            &mut *prval,
                        )
                    };
                    names.push(class);
                    names.push(method);
                    prvals.push(prval);
                }
                WriteStep::OmapRm { key } => {
                    let keys = [key.as_ptr() as *const c_char];
                    let key_lens = [key.len()];
                    // SAFETY: op.0 is live; both arrays have one element, matching keys_len=1; the
                    // key is copied into the op at call time.
                    unsafe {
                        libs().rados_write_op_omap_rm_keys2(
                            op.0,
                            keys.as_ptr(),
                            key_lens.as_ptr(),
                            1,
                        )
                    };
                }
            }
        }
        // SAFETY: op.0 is a fully built write op; self.raw() is a live ioctx; oid is NUL-terminated;
        // NULL mtime means "now"; the class/method names live in `names` until after operate.
        let ret = unsafe {
            libs().rados_write_op_operate2(
                op.0,
                self.raw(),
                oid.as_ptr(),
                ptr::null_mut(),
                sys::LIBRADOS_OPERATION_NOFLAG as c_int,
            )
        };
        drop(op);
        drop(prvals);
        drop(names);
        match -ret {
            0 => Ok(WriteOutcome::Done),
            libc::EBUSY if has_exec => Ok(WriteOutcome::ClassRefused),
            libc::ESHUTDOWN => Ok(WriteOutcome::Blocklisted),
            libc::ECANCELED => Ok(WriteOutcome::CompareFailed),
            libc::ENOENT => Ok(WriteOutcome::NoObject),
            libc::EEXIST => Ok(WriteOutcome::ObjectExists),
            _ => {
                check(ret, || format!("write op on {}/{object}", self.pool))?;
                Ok(WriteOutcome::Done)
            }
        }
    }

    /// The value of one omap key; `None` if the key or the object is missing.
    pub(crate) fn omap_get(&self, object: &str, key: &str) -> Result<Option<Vec<u8>>> {
        let oid = cstring(object)?;
        // SAFETY: plain constructor; owned and released by ReadOp.
        let op = ReadOp(unsafe { libs().rados_create_read_op() });
        if op.0.is_null() {
            return Err(RbdError::Other("rados_create_read_op returned NULL".into()));
        }
        let keys = [key.as_ptr() as *const c_char];
        let key_lens = [key.len()];
        let mut iter = OmapIter(ptr::null_mut());
        let mut prval: c_int = 0;
        // SAFETY: op.0 is live; the key arrays have one element (num_keys=1) and stay alive until
        // operate returns; iter.0 and prval are valid out-slots that outlive operate.
        unsafe {
            libs().rados_read_op_omap_get_vals_by_keys2(
                op.0,
                keys.as_ptr(),
                1,
                key_lens.as_ptr(),
                &mut iter.0,
                &mut prval,
            )
        };
        // SAFETY: op.0 is fully built; ioctx live; oid NUL-terminated.
        let ret = unsafe {
            libs().rados_read_op_operate(
                op.0,
                self.raw(),
                oid.as_ptr(),
                sys::LIBRADOS_OPERATION_NOFLAG as c_int,
            )
        };
        if ret == -libc::ENOENT {
            return Ok(None);
        }
        check(ret, || format!("omap get {}/{object} {key:?}", self.pool))?;
        check(prval, || format!("omap get {}/{object} {key:?}", self.pool))?;
        let values = iter.collect()?;
        drop(op);
        Ok(values.into_iter().find(|(k, _)| k == key).map(|(_, v)| v))
    }

    /// One page of omap pairs after `start_after` (exclusive; "" = from the start), at most `max`.
    /// Returns the pairs and whether more follow. A missing object is an empty, final page.
    pub(crate) fn omap_page(
        &self,
        object: &str,
        start_after: &str,
        max: u64,
    ) -> Result<(Vec<OmapEntry>, bool)> {
        let oid = cstring(object)?;
        let start = cstring(start_after)?;
        let prefix = cstring("")?;
        // SAFETY: plain constructor; owned and released by ReadOp.
        let op = ReadOp(unsafe { libs().rados_create_read_op() });
        if op.0.is_null() {
            return Err(RbdError::Other("rados_create_read_op returned NULL".into()));
        }
        let mut iter = OmapIter(ptr::null_mut());
        let mut more: u8 = 0;
        let mut prval: c_int = 0;
        // SAFETY: op.0 is live; start/prefix are NUL-terminated and outlive operate; iter.0, more and
        // prval are valid out-slots that outlive operate.
        unsafe {
            libs().rados_read_op_omap_get_vals2(
                op.0,
                start.as_ptr(),
                prefix.as_ptr(),
                max,
                &mut iter.0,
                &mut more,
                &mut prval,
            )
        };
        // SAFETY: op.0 is fully built; ioctx live; oid NUL-terminated.
        let ret = unsafe {
            libs().rados_read_op_operate(
                op.0,
                self.raw(),
                oid.as_ptr(),
                sys::LIBRADOS_OPERATION_NOFLAG as c_int,
            )
        };
        if ret == -libc::ENOENT {
            return Ok((Vec::new(), false));
        }
        check(ret, || format!("omap list {}/{object}", self.pool))?;
        check(prval, || format!("omap list {}/{object}", self.pool))?;
        let values = iter.collect()?;
        drop(op);
        Ok((values, more != 0))
    }

    /// Removes a whole rados object (tests clean up with it). `NotFound` if it does not exist.
    pub fn remove_object(&self, object: &str) -> Result<()> {
        let oid = cstring(object)?;
        // SAFETY: live ioctx; oid NUL-terminated.
        let ret = unsafe { libs().rados_remove(self.raw(), oid.as_ptr()) };
        check(ret, || format!("removing object {}/{object}", self.pool))?;
        Ok(())
    }
}

/// Reads a C string (NULL → empty).
pub(crate) fn from_c(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: callers pass NUL-terminated strings that librados/librbd returned and still own.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}
