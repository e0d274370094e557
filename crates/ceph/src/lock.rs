//! [`ExclusiveLock`]: an exclusive advisory lock with an expiry (Ceph's `lock` object class,
//! "cls_lock") on one rados object, the primitive under the daemon's leader lease.
//!
//! What the OSD guarantees (Ceph's `cls/lock`): a lock is a set of lockers, each identified by
//! (client instance `client.<global id>`, cookie) and carrying the client's address and an expiry
//! computed by the OSD from the requested duration. Every lock call first drops expired lockers, so
//! an expired holder is gone for everybody at once (it is then no longer listed either). An
//! exclusive lock with another live locker fails with EBUSY. `MAY_RENEW` re-locks our own entry
//! (new expiry); `MUST_RENEW` does so only if our entry still exists (ENOENT once it expired or was
//! broken). All calls on one object are serialised by its OSD.
//!
//! Besides the calls librados offers as functions (lock, unlock, list lockers, break), this module
//! writes omap keys of the lock object guarded by `lock.assert_locked` in the same write op, so a
//! write happens only while the OSD still counts us as the holder. librados has no C function for
//! that assertion; its input is encoded here by hand ([`assert_locked_input`]) because no crate
//! speaks Ceph's wire encoding: a versioned envelope (`u8` version 1, `u8` compat 1, `u32` length)
//! around the lock name, type (`u8`, exclusive = 1), cookie and tag, strings as `u32` length +
//! bytes, all little-endian.
//!
//! Every call blocks: run it off the reactor threads. A client that the cluster has blocklisted
//! gets EBLOCKLISTED (ESHUTDOWN) from every OSD call; the outcomes below report it as `Fenced`
//! instead of an error, because the leader lease must react to it differently from a failure.

use std::ffi::c_char;
use std::time::Duration;

use crate::error::check;
use crate::libs::libs;
use crate::rados::{cstring, IoCtx, WriteOutcome, WriteStep};
use crate::sys;
use rbd::{RbdError, Result};

/// One holder of a lock, as `rados_list_lockers` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Locker {
    /// The client instance, `client.<global id>`.
    pub client: String,
    /// The cookie the holder locked with.
    pub cookie: String,
    /// The holder's address in the form [`crate::Rados::addrs`] gives (`osd blocklist add` takes
    /// it): the OSD's `v1:`/`v2:`/`any:` type prefix is dropped, as blocklisting ignores the type.
    pub addr: String,
}

/// Drops an address's messenger type prefix (`v1:127.0.0.1:0/42` → `127.0.0.1:0/42`).
pub fn plain_addr(addr: &str) -> String {
    for prefix in ["v1:", "v2:", "any:"] {
        if let Some(rest) = addr.strip_prefix(prefix) {
            return rest.to_string();
        }
    }
    addr.to_string()
}

/// Outcome of taking or renewing the lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockOutcome {
    /// We hold the lock now, with a fresh expiry.
    Held,
    /// Another (client, cookie) holds it (EBUSY), or, for a renewal, our entry is gone (ENOENT).
    NotOurs,
    /// This client is blocklisted: nothing it sends is accepted any more.
    Fenced,
}

/// Outcome of a write guarded by the lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuardedWrite {
    /// We held the lock and the write happened.
    Done,
    /// We do not hold the lock (any more): nothing was written.
    NotLocked,
    /// This client is blocklisted: nothing was written.
    Fenced,
}

/// An exclusive lock `name` on `object`, taken with `cookie` by this client. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ExclusiveLock {
    io: IoCtx,
    object: String,
    name: String,
    cookie: String,
}

/// `lock.assert_locked` input for an exclusive lock `name` held with `cookie` and an empty tag.
pub fn assert_locked_input(name: &str, cookie: &str) -> Vec<u8> {
    let mut body = Vec::new();
    let mut string = |s: &str| {
        body.extend_from_slice(&(s.len() as u32).to_le_bytes());
        body.extend_from_slice(s.as_bytes());
    };
    string(name);
    body.push(1); // ClsLockType::LOCK_EXCLUSIVE
    let mut rest = Vec::new();
    for s in [cookie, ""] {
        rest.extend_from_slice(&(s.len() as u32).to_le_bytes());
        rest.extend_from_slice(s.as_bytes());
    }
    body.extend_from_slice(&rest);
    let mut out = vec![1u8, 1u8];
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// Splits a buffer of NUL-terminated strings (as `rados_list_lockers` fills them).
fn split_nul(buf: &[u8], len: usize) -> Vec<String> {
    buf[..len.min(buf.len())]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

impl ExclusiveLock {
    /// The lock `name` on `object` of `io`'s pool, taken with `cookie` (non-empty).
    pub fn new(io: IoCtx, object: &str, name: &str, cookie: &str) -> ExclusiveLock {
        ExclusiveLock {
            io,
            object: object.to_string(),
            name: name.to_string(),
            cookie: cookie.to_string(),
        }
    }

    /// The cookie this handle locks with.
    pub fn cookie(&self) -> &str {
        &self.cookie
    }

    /// The locked object.
    pub fn object(&self) -> &str {
        &self.object
    }

    fn lock(&self, duration: Duration, description: &str, flags: u32) -> Result<LockOutcome> {
        let (oid, name, cookie, desc) = (
            cstring(&self.object)?,
            cstring(&self.name)?,
            cstring(&self.cookie)?,
            cstring(description)?,
        );
        let mut tv = sys::timeval {
            tv_sec: duration.as_secs() as sys::__time_t,
            tv_usec: duration.subsec_micros() as sys::__suseconds_t,
        };
        // SAFETY: live ioctx; the four strings are NUL-terminated and outlive the call; tv is a
        // valid timeval librados only reads.
        let ret = unsafe {
            libs().rados_lock_exclusive(
                self.io.raw(),
                oid.as_ptr(),
                name.as_ptr(),
                cookie.as_ptr(),
                desc.as_ptr(),
                &mut tv,
                flags as u8,
            )
        };
        match -ret {
            0 => Ok(LockOutcome::Held),
            libc::EBUSY | libc::ENOENT => Ok(LockOutcome::NotOurs),
            libc::ESHUTDOWN => Ok(LockOutcome::Fenced),
            _ => {
                check(ret, || {
                    format!("locking {}/{}", self.io.pool(), self.object)
                })?;
                Ok(LockOutcome::Held)
            }
        }
    }

    /// Takes the lock for `duration` (or extends it if this client already holds it with our
    /// cookie). `NotOurs` when another live holder has it.
    pub fn acquire(&self, duration: Duration, description: &str) -> Result<LockOutcome> {
        self.lock(duration, description, sys::LIBRADOS_LOCK_FLAG_MAY_RENEW)
    }

    /// Extends our lock by `duration` from now; `NotOurs` when our entry is gone (it expired, or
    /// was broken) — a lapsed lease is never silently re-taken by a renewal.
    pub fn renew(&self, duration: Duration, description: &str) -> Result<LockOutcome> {
        self.lock(duration, description, sys::LIBRADOS_LOCK_FLAG_MUST_RENEW)
    }

    /// Releases our lock; `NotOurs` if we did not hold it.
    pub fn release(&self) -> Result<LockOutcome> {
        let (oid, name, cookie) = (
            cstring(&self.object)?,
            cstring(&self.name)?,
            cstring(&self.cookie)?,
        );
        // SAFETY: live ioctx; the strings are NUL-terminated and outlive the call.
        let ret = unsafe {
            libs().rados_unlock(self.io.raw(), oid.as_ptr(), name.as_ptr(), cookie.as_ptr())
        };
        match -ret {
            0 => Ok(LockOutcome::Held),
            libc::ENOENT => Ok(LockOutcome::NotOurs),
            libc::ESHUTDOWN => Ok(LockOutcome::Fenced),
            _ => {
                check(ret, || {
                    format!("unlocking {}/{}", self.io.pool(), self.object)
                })?;
                Ok(LockOutcome::Held)
            }
        }
    }

    /// The live holders of the lock (empty when it is free or expired).
    pub fn lockers(&self) -> Result<Vec<Locker>> {
        let (oid, name) = (cstring(&self.object)?, cstring(&self.name)?);
        let mut size = 256usize;
        loop {
            let mut exclusive: std::ffi::c_int = 0;
            let (mut tag, mut clients, mut cookies, mut addrs) = (
                vec![0u8; size],
                vec![0u8; size],
                vec![0u8; size],
                vec![0u8; size],
            );
            let (mut tag_len, mut clients_len, mut cookies_len, mut addrs_len) =
                (size, size, size, size);
            // SAFETY: live ioctx; names NUL-terminated; every buffer has the length passed with it
            // and outlives the call; librados writes at most that many bytes and the needed sizes.
            let ret = unsafe {
                libs().rados_list_lockers(
                    self.io.raw(),
                    oid.as_ptr(),
                    name.as_ptr(),
                    &mut exclusive,
                    tag.as_mut_ptr() as *mut c_char,
                    &mut tag_len,
                    clients.as_mut_ptr() as *mut c_char,
                    &mut clients_len,
                    cookies.as_mut_ptr() as *mut c_char,
                    &mut cookies_len,
                    addrs.as_mut_ptr() as *mut c_char,
                    &mut addrs_len,
                )
            };
            if ret == -(libc::ERANGE as isize) {
                size = [tag_len, clients_len, cookies_len, addrs_len, size * 2]
                    .into_iter()
                    .max()
                    .unwrap_or(size * 2);
                continue;
            }
            if ret == -(libc::ENOENT as isize) {
                return Ok(Vec::new());
            }
            let ret = std::ffi::c_int::try_from(ret).unwrap_or(-libc::EIO);
            check(ret, || {
                format!("listing the lockers of {}/{}", self.io.pool(), self.object)
            })?;
            let clients = split_nul(&clients, clients_len);
            let cookies = split_nul(&cookies, cookies_len);
            let addrs = split_nul(&addrs, addrs_len);
            return Ok(clients
                .into_iter()
                .zip(cookies)
                .zip(addrs)
                .map(|((client, cookie), addr)| Locker {
                    client,
                    cookie,
                    addr: plain_addr(&addr),
                })
                .collect());
        }
    }

    /// Removes `locker`'s entry (another client's), whatever its expiry. Ok if it is already gone.
    pub fn break_lock(&self, locker: &Locker) -> Result<()> {
        let (oid, name, client, cookie) = (
            cstring(&self.object)?,
            cstring(&self.name)?,
            cstring(&locker.client)?,
            cstring(&locker.cookie)?,
        );
        // SAFETY: live ioctx; the strings are NUL-terminated and outlive the call.
        let ret = unsafe {
            libs().rados_break_lock(
                self.io.raw(),
                oid.as_ptr(),
                name.as_ptr(),
                client.as_ptr(),
                cookie.as_ptr(),
            )
        };
        if ret == -libc::ENOENT {
            return Ok(());
        }
        check(ret, || {
            format!(
                "breaking the lock of {} on {}/{}",
                locker.client,
                self.io.pool(),
                self.object
            )
        })?;
        Ok(())
    }

    /// Sets omap `key` of the lock object to `value`, only while we hold the lock (checked by the
    /// OSD in the same atomic write op).
    pub fn set_if_locked(&self, key: &str, value: &[u8]) -> Result<GuardedWrite> {
        let input = assert_locked_input(&self.name, &self.cookie);
        let steps = [
            WriteStep::Exec {
                class: "lock",
                method: "assert_locked",
                input: &input,
            },
            WriteStep::OmapSet { key, value },
        ];
        match self.io.write_op(&self.object, &steps)? {
            WriteOutcome::Done => Ok(GuardedWrite::Done),
            WriteOutcome::ClassRefused | WriteOutcome::NoObject => Ok(GuardedWrite::NotLocked),
            WriteOutcome::Blocklisted => Ok(GuardedWrite::Fenced),
            other => Err(RbdError::Other(format!(
                "guarded write on {}/{}: unexpected {other:?}",
                self.io.pool(),
                self.object
            ))),
        }
    }

    /// The omap value `key` of the lock object (`None` when absent).
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.io.omap_get(&self.object, key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_assert_locked_input_is_cephs_versioned_encoding() {
        let got = assert_locked_input("lk", "ck");
        let want: Vec<u8> = [
            &[1u8, 1][..],
            &17u32.to_le_bytes(),
            &2u32.to_le_bytes(),
            b"lk",
            &[1],
            &2u32.to_le_bytes(),
            b"ck",
            &0u32.to_le_bytes(),
        ]
        .concat();
        assert_eq!(got, want);
    }

    #[test]
    fn addresses_lose_their_messenger_type() {
        assert_eq!(plain_addr("v1:127.0.0.1:0/42"), "127.0.0.1:0/42");
        assert_eq!(plain_addr("any:10.0.0.1:0/7"), "10.0.0.1:0/7");
        assert_eq!(plain_addr("127.0.0.1:0/42"), "127.0.0.1:0/42");
    }

    #[test]
    fn lists_of_lockers_split_at_nul_bytes() {
        let buf = b"client.1\0client.22\0\0\0";
        assert_eq!(split_nul(buf, 19), vec!["client.1", "client.22"]);
        assert!(split_nul(buf, 0).is_empty());
    }
}
