//! Watch/notify on rados objects: [`ObjectWatch`] (a registered watch whose notifications arrive
//! on a channel) and [`IoCtx::notify`].
//!
//! librados calls the watch callbacks on its own threads. They only copy the payload, acknowledge
//! the notification (a fire-and-forget op, so the notifier does not wait for its timeout) and send
//! a [`WatchMsg`] on an unbounded channel; they never block and never call back into Rust code
//! that could. The callback context lives in a `Box` owned by the [`ObjectWatch`] and is freed only
//! after `rados_unwatch2` and `rados_watch_flush` (which waits for callbacks already queued), so no
//! callback can see a freed context. A watch whose session fails (the error callback fires, e.g.
//! after the OSD timed the watch out, or when this client is blocklisted) is dead: close it and
//! register a new one, and assume notifications were missed in between.
//!
//! All calls block: run them off the reactor threads.

use std::ffi::{c_char, c_int, c_void, CString};
use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;

use crate::error::check;
use crate::libs::libs;
use crate::rados::{cstring, IoCtx};
use crate::sys;
use rbd::Result;

/// What a watch reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchMsg {
    /// A notification: the sender's client id (`client.<id>`, see [`crate::Rados::instance_id`])
    /// and its payload.
    Notify {
        /// Global id of the notifying client.
        notifier: u64,
        /// The payload.
        payload: Vec<u8>,
    },
    /// The watch session failed with this (negative) errno; the watch is dead.
    Error(i32),
}

/// What the callbacks see; owned (boxed) by the [`ObjectWatch`].
struct WatchCtx {
    io: sys::rados_ioctx_t,
    oid: CString,
    tx: UnboundedSender<WatchMsg>,
}

/// librados' notification callback: copy, acknowledge, forward.
unsafe extern "C" fn on_notify(
    arg: *mut c_void,
    notify_id: u64,
    handle: u64,
    notifier_id: u64,
    data: *mut c_void,
    data_len: usize,
) {
    // SAFETY: arg is the WatchCtx box registered with this watch; it is freed only after
    // unwatch + flush, so it is alive for every callback librados makes.
    let ctx = unsafe { &*(arg as *const WatchCtx) };
    let payload = if data.is_null() || data_len == 0 {
        Vec::new()
    } else {
        // SAFETY: librados passes data_len readable bytes at data, valid during the callback.
        unsafe { std::slice::from_raw_parts(data as *const u8, data_len) }.to_vec()
    };
    // SAFETY: the ioctx outlives the watch (ObjectWatch holds an IoCtx clone); oid is
    // NUL-terminated; no reply payload (NULL, 0). notify_ack only queues an op, it does not wait.
    unsafe {
        libs().rados_notify_ack(
            ctx.io,
            ctx.oid.as_ptr(),
            notify_id,
            handle,
            std::ptr::null(),
            0,
        )
    };
    let _ = ctx.tx.send(WatchMsg::Notify {
        notifier: notifier_id,
        payload,
    });
}

/// librados' watch error callback: forward.
unsafe extern "C" fn on_error(arg: *mut c_void, _cookie: u64, err: c_int) {
    // SAFETY: as in on_notify.
    let ctx = unsafe { &*(arg as *const WatchCtx) };
    let _ = ctx.tx.send(WatchMsg::Error(err));
}

/// A registered watch on one object. Closing (or dropping) it unregisters it and waits for pending
/// callbacks (blocking).
pub struct ObjectWatch {
    io: IoCtx,
    object: String,
    cookie: u64,
    ctx: *mut WatchCtx,
}

// SAFETY: the raw context pointer is only dereferenced by librados callbacks (which only read it)
// and freed once in close; the ioctx is thread-safe for watch calls.
unsafe impl Send for ObjectWatch {}

impl std::fmt::Debug for ObjectWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectWatch")
            .field("object", &self.object)
            .finish_non_exhaustive()
    }
}

impl ObjectWatch {
    /// Watches `object` (which must exist: `NotFound` otherwise); notifications and errors arrive
    /// on `tx`.
    pub fn register(
        io: &IoCtx,
        object: &str,
        tx: UnboundedSender<WatchMsg>,
    ) -> Result<ObjectWatch> {
        let oid = cstring(object)?;
        let ctx = Box::into_raw(Box::new(WatchCtx {
            io: io.raw(),
            oid: oid.clone(),
            tx,
        }));
        let mut cookie: u64 = 0;
        // SAFETY: live ioctx; oid NUL-terminated; cookie a valid out-slot; the callbacks are
        // `extern "C"` with librados' signatures; ctx stays valid until close frees it.
        let ret = unsafe {
            libs().rados_watch2(
                io.raw(),
                oid.as_ptr(),
                &mut cookie,
                Some(on_notify),
                Some(on_error),
                ctx as *mut c_void,
            )
        };
        if ret < 0 {
            // SAFETY: the watch was not registered, so no callback can hold ctx; freed once.
            drop(unsafe { Box::from_raw(ctx) });
            check(ret, || format!("watching {}/{object}", io.pool()))?;
        }
        Ok(ObjectWatch {
            io: io.clone(),
            object: object.to_string(),
            cookie,
            ctx,
        })
    }

    /// The watched object.
    pub fn object(&self) -> &str {
        &self.object
    }

    /// Unregisters the watch, waits for pending callbacks and frees the context (blocking).
    pub fn close(mut self) {
        self.close_inner();
    }

    fn close_inner(&mut self) {
        if self.ctx.is_null() {
            return;
        }
        // SAFETY: cookie came from a successful rados_watch2 on this ioctx and is unwatched
        // once (a failed session still needs the unwatch to free librados' side; its error is
        // irrelevant here).
        let _ = unsafe { libs().rados_unwatch2(self.io.raw(), self.cookie) };
        // SAFETY: the cluster is alive (IoCtx holds it); this waits until every queued callback,
        // including ours, has run.
        let _ = unsafe { libs().rados_watch_flush(self.io.rados_raw()) };
        // SAFETY: no callback of this watch can run any more (unwatched and flushed); the box is
        // freed exactly once (ctx is nulled).
        drop(unsafe { Box::from_raw(self.ctx) });
        self.ctx = std::ptr::null_mut();
    }
}

impl Drop for ObjectWatch {
    fn drop(&mut self) {
        self.close_inner();
    }
}

impl IoCtx {
    /// Notifies the watchers of `object` with `payload` and waits until they acknowledged or
    /// `timeout` passed. Watchers that did not acknowledge in time are not an error (a paused
    /// process keeps its watch until the OSD times it out); a missing object is `NotFound`.
    pub fn notify(&self, object: &str, payload: &[u8], timeout: Duration) -> Result<()> {
        let oid = cstring(object)?;
        let len = c_int::try_from(payload.len()).map_err(|_| {
            rbd::RbdError::InvalidArgument(format!("notify payload of {} bytes", payload.len()))
        })?;
        let mut reply: *mut c_char = std::ptr::null_mut();
        let mut reply_len: usize = 0;
        // SAFETY: live ioctx; oid NUL-terminated; payload readable for len bytes (copied by
        // librados); reply/reply_len valid out-slots.
        let ret = unsafe {
            libs().rados_notify2(
                self.raw(),
                oid.as_ptr(),
                payload.as_ptr() as *const c_char,
                len,
                timeout.as_millis().try_into().unwrap_or(u64::MAX),
                &mut reply,
                &mut reply_len,
            )
        };
        if !reply.is_null() {
            // SAFETY: the reply buffer was allocated by librados for us; freed exactly once.
            unsafe { libs().rados_buffer_free(reply) };
        }
        if ret == -libc::ETIMEDOUT {
            return Ok(());
        }
        check(ret, || {
            format!("notifying the watchers of {}/{object}", self.pool())
        })?;
        Ok(())
    }
}
