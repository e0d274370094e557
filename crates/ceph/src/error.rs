//! errno → [`RbdError`]: the one place that classifies librbd/librados failures.
//!
//! | errno | class | meaning here |
//! |---|---|---|
//! | ENOENT | `NotFound` | the object (pool, image, snapshot, key) is not there: a definite answer of the cluster |
//! | EEXIST | `Exists` | the name is taken |
//! | EBUSY, ENOTEMPTY | `Busy` | in use: children, protection, snapshots, watchers |
//! | EOPNOTSUPP | `Unsupported` | librbd cannot do it at all (e.g. LUKS2 format of a clone) |
//! | EINVAL | `InvalidArgument` | the request is wrong (e.g. clone of an unprotected snapshot) |
//! | ETIMEDOUT | `Transient` | an op or mon command ran into `rados_osd_op_timeout` / `rados_mon_op_timeout` (stuck placement group, unreachable mon): no answer, so nothing is known |
//! | ESHUTDOWN (librados' EBLOCKLISTED), ENOTCONN, ECONNREFUSED, ECONNRESET, ECONNABORTED, ENETDOWN, ENETUNREACH, EHOSTUNREACH | `Transient` | the client is reconnecting, was blocklisted, or the cluster is unreachable |
//! | EAGAIN, EINTR | `Transient` | try again |
//! | anything else (EPERM/EACCES: missing caps, EIO, ENOSPC, EDQUOT, ECANCELED, …) | `Other` | |
//!
//! ECANCELED is `Other` here: only callers that cancel on purpose (flatten) turn it into
//! `Cancelled`. A `NotFound` from one call is only about that call's object: the backend decides
//! that an *image* is missing only when opening it answers ENOENT **and** the pool's image
//! listing does not name it (`CephBackend::stat` / `image_exists`). Every `Transient` error is
//! retryable ([`RbdError::is_retryable`]) and is never taken as "gone".

use std::ffi::c_int;

use rbd::RbdError;

/// Classifies a negative librbd/librados return value (`-errno`) of the call described by `what`
/// (see the table in the module docs).
pub fn errno_error(ret: i64, what: &str) -> RbdError {
    let errno = ret.unsigned_abs().min(c_int::MAX as u64) as c_int;
    let msg = format!(
        "{what}: {} (errno {errno})",
        std::io::Error::from_raw_os_error(errno)
    );
    match errno {
        libc::ENOENT => RbdError::NotFound(msg),
        libc::EEXIST => RbdError::Exists(msg),
        libc::EBUSY | libc::ENOTEMPTY => RbdError::Busy(msg),
        libc::EOPNOTSUPP => RbdError::Unsupported(msg),
        libc::EINVAL => RbdError::InvalidArgument(msg),
        libc::ETIMEDOUT
        | libc::ECONNREFUSED
        | libc::ECONNRESET
        | libc::ECONNABORTED
        | libc::ESHUTDOWN
        | libc::ENOTCONN
        | libc::ENETDOWN
        | libc::ENETUNREACH
        | libc::EHOSTUNREACH
        | libc::EAGAIN
        | libc::EINTR => RbdError::Transient(msg),
        _ => RbdError::Other(msg),
    }
}

/// `Ok(ret)` for `ret >= 0`, else the classified error.
pub(crate) fn check(ret: c_int, what: impl FnOnce() -> String) -> Result<c_int, RbdError> {
    if ret < 0 {
        Err(errno_error(ret.into(), &what()))
    } else {
        Ok(ret)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn errno_values_map_to_their_error_classes() {
        type IsExpected = fn(&RbdError) -> bool;
        let cases: &[(c_int, IsExpected)] = &[
            (libc::ENOENT, |e| matches!(e, RbdError::NotFound(_))),
            (libc::EEXIST, |e| matches!(e, RbdError::Exists(_))),
            (libc::EBUSY, |e| matches!(e, RbdError::Busy(_))),
            (libc::ENOTEMPTY, |e| matches!(e, RbdError::Busy(_))),
            (libc::EOPNOTSUPP, |e| matches!(e, RbdError::Unsupported(_))),
            (libc::EINVAL, |e| matches!(e, RbdError::InvalidArgument(_))),
            (libc::ETIMEDOUT, |e| matches!(e, RbdError::Transient(_))),
            (libc::ECONNREFUSED, |e| matches!(e, RbdError::Transient(_))),
            (libc::ESHUTDOWN, |e| matches!(e, RbdError::Transient(_))),
            (libc::ENOTCONN, |e| matches!(e, RbdError::Transient(_))),
            (libc::ECONNABORTED, |e| matches!(e, RbdError::Transient(_))),
            (libc::EHOSTUNREACH, |e| matches!(e, RbdError::Transient(_))),
            (libc::EPERM, |e| matches!(e, RbdError::Other(_))),
            (libc::EIO, |e| matches!(e, RbdError::Other(_))),
            (libc::EAGAIN, |e| matches!(e, RbdError::Transient(_))),
            (libc::EACCES, |e| matches!(e, RbdError::Other(_))),
            (libc::ECANCELED, |e| matches!(e, RbdError::Other(_))),
        ];
        for (errno, is_expected) in cases {
            let err = errno_error(-i64::from(*errno), "op on img");
            assert!(is_expected(&err), "errno {errno} gave {err:?}");
        }
    }

    #[test]
    fn timeouts_and_lost_connections_are_retryable_and_never_not_found() {
        for errno in [
            libc::ETIMEDOUT,
            libc::ESHUTDOWN,
            libc::ENOTCONN,
            libc::ECONNRESET,
        ] {
            let err = errno_error(-i64::from(errno), "open image img_x");
            assert!(err.is_retryable(), "errno {errno} gave {err:?}");
            assert!(!matches!(err, RbdError::NotFound(_)), "errno {errno}");
        }
    }

    #[test]
    fn error_messages_name_the_operation_and_the_errno() {
        let err = errno_error(-i64::from(libc::ENOENT), "open image img_x");
        let text = err.to_string();
        assert!(text.contains("open image img_x"), "{text}");
        assert!(text.contains("errno 2"), "{text}");
    }

    #[test]
    fn check_passes_non_negative_values_through() {
        assert_eq!(check(0, || unreachable!()).ok(), Some(0));
        assert_eq!(check(7, || unreachable!()).ok(), Some(7));
        assert!(check(-libc::EBUSY, || "x".into()).is_err());
    }
}
