//! The bounds of the slow calls that long operations make (the crate docs' *Deadlines* table):
//! resolving an OS image reference and opening its rootfs (`resolve_timeout`), LUKS2 format
//! (`format_timeout`, one format per image at a time) and listing the children of an image or
//! snapshot (`list_children_timeout`). Every bounded call also ends when its operation is
//! cancelled. An overrun is a retryable error, so the operation fails, frees its runner slot and
//! is retried with backoff. Owns no state transition; the stall watchdog of stream copies and
//! flattens is `Ctx::drive`.

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rbd::{CancellationToken, ChildRef, Passphrase, RbdError};

use crate::ctx::Ctx;
use crate::{ControllerError, ResolvedImage, Rootfs, SourceError};

/// The operation was cancelled while it waited for a bounded call.
#[derive(Debug)]
pub(crate) struct Cancelled;

impl From<Cancelled> for ControllerError {
    fn from(_: Cancelled) -> Self {
        ControllerError::Rbd(RbdError::Cancelled)
    }
}

/// Why a bounded call did not finish.
enum Interrupted {
    Cancelled,
    TimedOut(Duration),
}

/// Runs `fut` until it ends, `limit` passes or `token` is cancelled. `fut` is dropped when it
/// does not end in time.
async fn bounded<F: Future>(
    fut: F,
    limit: Duration,
    token: &CancellationToken,
) -> Result<F::Output, Interrupted> {
    tokio::select! {
        biased;
        _ = token.cancelled() => Err(Interrupted::Cancelled),
        out = tokio::time::timeout(limit, fut) => out.map_err(|_| Interrupted::TimedOut(limit)),
    }
}

/// A claim on formatting one image; dropping it (when the format has really ended) releases it.
struct FormatClaim {
    set: Arc<Mutex<HashSet<String>>>,
    image: String,
}

impl FormatClaim {
    fn take(set: &Arc<Mutex<HashSet<String>>>, image: &str) -> Option<FormatClaim> {
        let mut s = set.lock().ok()?;
        s.insert(image.to_string()).then(|| FormatClaim {
            set: set.clone(),
            image: image.to_string(),
        })
    }
}

impl Drop for FormatClaim {
    fn drop(&mut self) {
        if let Ok(mut s) = self.set.lock() {
            s.remove(&self.image);
        }
    }
}

impl Ctx {
    /// [`ImageSource::resolve`](crate::ImageSource::resolve) within `resolve_timeout`; an
    /// overrun is [`SourceError::Unavailable`] (retryable).
    pub(crate) async fn resolve_image(
        &self,
        reference: &str,
        architecture: Option<&str>,
        token: &CancellationToken,
    ) -> Result<Result<ResolvedImage, SourceError>, Cancelled> {
        let call = self.source.resolve(reference, architecture);
        match bounded(call, self.cfg.resolve_timeout, token).await {
            Ok(r) => Ok(r),
            Err(Interrupted::Cancelled) => Err(Cancelled),
            Err(Interrupted::TimedOut(d)) => Ok(Err(SourceError::Unavailable(format!(
                "resolving {reference}: no answer within {d:?}"
            )))),
        }
    }

    /// [`ImageSource::open_rootfs`](crate::ImageSource::open_rootfs) within `resolve_timeout`
    /// (up to the layer's response; the body is watched by the registry client's per-chunk
    /// timeout and the stall watchdog); an overrun is [`SourceError::Unavailable`].
    pub(crate) async fn open_rootfs(
        &self,
        reference: &str,
        architecture: Option<&str>,
        token: &CancellationToken,
    ) -> Result<Result<Rootfs, SourceError>, Cancelled> {
        let call = self.source.open_rootfs(reference, architecture);
        self.bounded_open(reference, call, token).await
    }

    /// [`ImageSource::open_rootfs_from`](crate::ImageSource::open_rootfs_from) within
    /// `resolve_timeout`, as [`Ctx::open_rootfs`].
    pub(crate) async fn open_rootfs_from(
        &self,
        reference: &str,
        architecture: Option<&str>,
        offset: u64,
        prefix: rbd::ByteStream,
        token: &CancellationToken,
    ) -> Result<Result<Rootfs, SourceError>, Cancelled> {
        let call = self
            .source
            .open_rootfs_from(reference, architecture, offset, prefix);
        self.bounded_open(reference, call, token).await
    }

    async fn bounded_open(
        &self,
        reference: &str,
        call: impl std::future::Future<Output = Result<Rootfs, SourceError>>,
        token: &CancellationToken,
    ) -> Result<Result<Rootfs, SourceError>, Cancelled> {
        match bounded(call, self.cfg.resolve_timeout, token).await {
            Ok(r) => Ok(r),
            Err(Interrupted::Cancelled) => Err(Cancelled),
            Err(Interrupted::TimedOut(d)) => Ok(Err(SourceError::Unavailable(format!(
                "opening {reference}: no answer within {d:?}"
            )))),
        }
    }

    /// LUKS2 format of `image` within `format_timeout`. An overrun is
    /// [`RbdError::Transient`]: the call cannot be stopped (the Ceph backend runs it on a
    /// blocking thread), so it goes on in the background, and until it has ended another format
    /// of `image` fails as [`RbdError::Transient`] instead of running beside it.
    pub(crate) async fn format_luks2(
        &self,
        image: &str,
        passphrase: &Passphrase,
        token: &CancellationToken,
    ) -> rbd::Result<()> {
        let Some(claim) = FormatClaim::take(&self.formats, image) else {
            return Err(RbdError::Transient(format!(
                "an earlier LUKS2 format of {image} is still running"
            )));
        };
        let backend = self.backend.clone();
        let (name, pass) = (image.to_string(), passphrase.clone());
        let task = crate::wiring::spawn_in_pass_scope(async move {
            let _claim = claim;
            backend.encryption_format(&name, &pass).await
        });
        match bounded(task, self.cfg.format_timeout, token).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(RbdError::Other(format!(
                "LUKS2 format of {image} did not end: {e}"
            ))),
            Err(Interrupted::TimedOut(d)) => Err(RbdError::Transient(format!(
                "LUKS2 format of {image} did not finish within {d:?} (it ends in the background)"
            ))),
            Err(Interrupted::Cancelled) => Err(RbdError::Cancelled),
        }
    }

    /// [`BlockBackend::list_children`](rbd::BlockBackend::list_children) within
    /// `list_children_timeout`; an overrun is [`RbdError::Transient`].
    pub(crate) async fn list_children(
        &self,
        image: &str,
        snap: Option<&str>,
        token: &CancellationToken,
    ) -> rbd::Result<Vec<ChildRef>> {
        let call = self.backend.list_children(image, snap);
        match bounded(call, self.cfg.list_children_timeout, token).await {
            Ok(r) => r,
            Err(Interrupted::Cancelled) => Err(RbdError::Cancelled),
            Err(Interrupted::TimedOut(d)) => Err(RbdError::Transient(format!(
                "listing the children of {image}: no answer within {d:?}"
            ))),
        }
    }

    /// [`Ctx::list_children`] where a missing image or snapshot has no children.
    pub(crate) async fn children_of(
        &self,
        image: &str,
        snap: Option<&str>,
        token: &CancellationToken,
    ) -> rbd::Result<Vec<ChildRef>> {
        match self.list_children(image, snap, token).await {
            Err(RbdError::NotFound(_)) => Ok(Vec::new()),
            other => other,
        }
    }
}
