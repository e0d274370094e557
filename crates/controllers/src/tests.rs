//! Unit tests of specific failure points with mocks (mockall): a flatten that fails half-way, a
//! populate whose stream breaks, a store conflict on update; and the deadlines of slow calls
//! (a registry that never answers, a format or a child listing that overruns).

#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use mockall::predicate::eq;
use mockall::Sequence;
use rbd::{ChildRef, RbdError};
use rbd_testkit::mock::MockBlockBackend;
use store::keys::{IMAGE_FINALIZER, SNAPSHOT_FINALIZER};
use store::{
    Image, ImageSpec, ImageState, Precondition, Snapshot, SnapshotSource, SnapshotState, StoreError,
};

use crate::ctx::{Action, Ctx, OpEnv};
use crate::{flatten, image, snapshot, status, ImageSource, ResolvedImage, Rootfs, SourceError};

mockall::mock! {
    /// The calls of an image source, synchronous (see [`MockedSource`]).
    pub SourceCalls {
        fn resolve(&self, reference: String, architecture: Option<String>)
            -> Result<ResolvedImage, SourceError>;
        fn open_rootfs(&self, reference: String, architecture: Option<String>)
            -> Result<Rootfs, SourceError>;
    }
}

/// An [`ImageSource`] forwarding to [`MockSourceCalls`] (mockall cannot mock async methods with
/// `Option<&str>` arguments directly).
struct MockedSource(MockSourceCalls);

#[async_trait]
impl ImageSource for MockedSource {
    async fn resolve(&self, r: &str, a: Option<&str>) -> Result<ResolvedImage, SourceError> {
        self.0.resolve(r.to_string(), a.map(str::to_string))
    }
    async fn open_rootfs(&self, r: &str, a: Option<&str>) -> Result<Rootfs, SourceError> {
        self.0.open_rootfs(r.to_string(), a.map(str::to_string))
    }
}

fn no_source() -> Arc<dyn ImageSource> {
    Arc::new(MockedSource(MockSourceCalls::new()))
}

fn env() -> OpEnv {
    OpEnv {
        token: rbd::CancellationToken::new(),
        progress: rbd::no_progress(),
    }
}

fn memory_store() -> Arc<dyn store::Backend> {
    Arc::new(store::MemoryBackend::new())
}

fn child(name: &str) -> ChildRef {
    ChildRef {
        pool: "pool".into(),
        image: name.into(),
    }
}

#[tokio::test]
async fn a_flatten_that_fails_half_way_fails_the_operation_and_is_resumed_by_the_next() {
    let mut rbd = MockBlockBackend::new();
    let mut seq = Sequence::new();
    // First run: two children, the second flatten fails half-way.
    rbd.expect_list_children()
        .withf(|i, s| i == "img_v" && s.is_none())
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_, _| Ok(vec![child("img_a"), child("img_b")]));
    rbd.expect_flatten()
        .withf(|i, _, _| i == "img_a")
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_, p, _| {
            p(1, 1);
            Ok(())
        });
    rbd.expect_flatten()
        .withf(|i, _, _| i == "img_b")
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_, p, _| {
            p(3, 10);
            Err(RbdError::Transient("osd down after 3 of 10 objects".into()))
        });
    // Second run: only the unfinished child is left; then nothing.
    rbd.expect_list_children()
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_, _| Ok(vec![child("img_b")]));
    rbd.expect_flatten()
        .withf(|i, _, _| i == "img_b")
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_, _, _| Ok(()));
    rbd.expect_list_children()
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_, _| Ok(vec![]));
    let ctx = Ctx::for_tests(Arc::new(rbd), no_source(), memory_store()).await;

    let mut img = Image::new(
        "v",
        ImageSpec {
            size: 1 << 20,
            ..Default::default()
        },
    );
    img.metadata.add_finalizer(IMAGE_FINALIZER);
    ctx.images.create(img).await.unwrap();
    ctx.images.delete("v").await.unwrap();
    let mut img = ctx.images.get("v").await.unwrap();
    img.status.state = ImageState::FlatteningChildren;
    ctx.images.update(&img).await.unwrap();

    let err = flatten::flatten_children(ctx.clone(), "v".into(), None, env())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("osd down"), "{err}");
    let img = ctx.images.get("v").await.unwrap();
    assert_eq!(
        img.status.state,
        ImageState::FlatteningChildren,
        "state kept for the retry"
    );
    assert!(
        img.status.message.contains("osd down"),
        "{}",
        img.status.message
    );

    flatten::flatten_children(ctx.clone(), "v".into(), None, env())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_flattened_child_still_listed_is_reported_instead_of_spinning() {
    let mut rbd = MockBlockBackend::new();
    rbd.expect_list_children()
        .times(2)
        .returning(|_, _| Ok(vec![child("img_r")]));
    rbd.expect_flatten().times(1).returning(|_, _, _| Ok(()));
    let ctx = Ctx::for_tests(Arc::new(rbd), no_source(), memory_store()).await;
    let mut img = Image::new("v", ImageSpec::default());
    img.metadata.add_finalizer(IMAGE_FINALIZER);
    ctx.images.create(img).await.unwrap();
    ctx.images.delete("v").await.unwrap();
    let mut img = ctx.images.get("v").await.unwrap();
    img.status.state = ImageState::FlatteningChildren;
    ctx.images.update(&img).await.unwrap();
    let err = flatten::flatten_children(ctx, "v".into(), None, env())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("img_r still depend"), "{err}");
}

const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

async fn populating_snapshot(ctx: &Ctx) {
    let mut s = Snapshot::new(
        DIGEST,
        SnapshotSource {
            ironcore_image: format!("reg/os@{DIGEST}"),
            volume_image_id: String::new(),
        },
    );
    s.metadata.add_finalizer(SNAPSHOT_FINALIZER);
    let mut s = ctx.snapshots.create(s).await.unwrap();
    s.status.state = SnapshotState::Populating;
    ctx.snapshots.update(&s).await.unwrap();
}

fn base() -> String {
    format!("snap_{DIGEST}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_populate_whose_stream_breaks_removes_the_partial_image_and_fails_for_a_retry() {
    let mut rbd = MockBlockBackend::new();
    let mut seq = Sequence::new();
    rbd.expect_is_snapshot_protected()
        .withf(|i, s| i == base() && s == "v1")
        .times(1)
        .in_sequence(&mut seq)
        .returning(|i, _| Err(RbdError::NotFound(i.to_string())));
    rbd.expect_list_snapshots()
        .times(1)
        .in_sequence(&mut seq)
        .returning(|i| Err(RbdError::NotFound(i.to_string())));
    rbd.expect_create_image()
        .withf(|i, size| i == base() && *size == 1 << 20)
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_, _| Ok(()));
    rbd.expect_write_stream()
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_, mut data, opts, _, _| {
            assert!(opts.skip_zeroes);
            assert_eq!(opts.total_hint, 300_000);
            // Consume like the backend does: the second item is the digest error.
            futures::executor::block_on(async {
                let mut n = 0;
                while let Some(item) = data.next().await {
                    match item {
                        Ok(b) => n += b.len(),
                        Err(e) => {
                            return Err(RbdError::Other(format!("reading input stream: {e}")))
                        }
                    }
                }
                Ok(n as u64)
            })
        });
    // The partial image goes.
    rbd.expect_list_snapshots()
        .withf(|i| i == base())
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_| Ok(vec![]));
    rbd.expect_remove_image()
        .withf(|i| i == base())
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_| Ok(()));
    rbd.expect_create_snapshot().times(0);

    let mut src = MockSourceCalls::new();
    src.expect_open_rootfs()
        .with(eq(format!("reg/os@{DIGEST}")), eq(None))
        .times(1)
        .returning(|_, _| {
            let items: Vec<std::io::Result<Bytes>> = vec![
                Ok(Bytes::from(vec![7u8; 100_000])),
                Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "layer digest mismatch",
                )),
            ];
            Ok(Rootfs {
                size: 300_000,
                layer_digest: "sha256:layer".into(),
                manifest_digest: DIGEST.into(),
                start: 0,
                data: Box::pin(futures::stream::iter(items)),
            })
        });
    let ctx = Ctx::for_tests(Arc::new(rbd), Arc::new(MockedSource(src)), memory_store()).await;
    populating_snapshot(&ctx).await;

    let err = snapshot::populate::populate(ctx.clone(), DIGEST.into(), env())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("digest mismatch"), "{err}");
    let s = ctx.snapshots.get(DIGEST).await.unwrap();
    assert_eq!(
        s.status.state,
        SnapshotState::Populating,
        "retryable: not Failed"
    );
    assert!(
        s.status.message.starts_with("retrying:"),
        "{}",
        s.status.message
    );
}

#[tokio::test]
async fn a_populate_without_a_rootfs_fails_the_snapshot_without_creating_anything() {
    let mut rbd = MockBlockBackend::new();
    rbd.expect_is_snapshot_protected()
        .returning(|i, _| Err(RbdError::NotFound(i.to_string())));
    rbd.expect_list_snapshots()
        .returning(|i| Err(RbdError::NotFound(i.to_string())));
    rbd.expect_create_image().times(0);
    let mut src = MockSourceCalls::new();
    src.expect_open_rootfs()
        .times(1)
        .returning(|_, _| Err(SourceError::NoRootfs("no rootfs layer".into())));
    let ctx = Ctx::for_tests(Arc::new(rbd), Arc::new(MockedSource(src)), memory_store()).await;
    populating_snapshot(&ctx).await;
    snapshot::populate::populate(ctx.clone(), DIGEST.into(), env())
        .await
        .unwrap();
    let s = ctx.snapshots.get(DIGEST).await.unwrap();
    assert_eq!(s.status.state, SnapshotState::Failed);
    assert!(
        s.status.message.contains("no root fs"),
        "{}",
        s.status.message
    );
}

mockall::mock! {
    /// A store backend whose calls can be scripted.
    pub StoreBackend {}
    #[async_trait]
    impl store::Backend for StoreBackend {
        async fn get(&self, collection: &str, key: &str) -> store::Result<Option<Vec<u8>>>;
        async fn put(&self, collection: &str, key: &str, value: Vec<u8>, pre: Precondition) -> store::Result<()>;
        async fn remove(&self, collection: &str, key: &str, pre: Precondition) -> store::Result<()>;
        async fn list(&self, collection: &str) -> store::Result<Vec<(String, Vec<u8>)>>;
    }
}

/// A mocked store backend that forwards to memory, except that the first `conflicts`
/// compare-and-set writes fail as if another writer had been faster.
fn conflicting_store(conflicts: usize) -> (Arc<dyn store::Backend>, Arc<AtomicUsize>) {
    let mem = store::MemoryBackend::new();
    let left = Arc::new(AtomicUsize::new(conflicts));
    let mut m = MockStoreBackend::new();
    let g = mem.clone();
    m.expect_get()
        .returning(move |c, k| futures::executor::block_on(store::Backend::get(&g, c, k)));
    let l = mem.clone();
    m.expect_list()
        .returning(move |c| futures::executor::block_on(store::Backend::list(&l, c)));
    let r = mem.clone();
    m.expect_remove()
        .returning(move |c, k, p| futures::executor::block_on(store::Backend::remove(&r, c, k, p)));
    let p = mem;
    let n = left.clone();
    m.expect_put().returning(move |c, k, v, pre| {
        if matches!(pre, Precondition::Equals(_))
            && n.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |x| x.checked_sub(1))
                .is_ok()
        {
            return Err(StoreError::Conflict {
                id: k.to_string(),
                expected: 0,
                actual: 0,
            });
        }
        futures::executor::block_on(store::Backend::put(&p, c, k, v, pre))
    });
    (Arc::new(m), left)
}

#[tokio::test]
async fn a_store_conflict_on_update_fails_the_pass_and_the_next_pass_completes() {
    let (store_backend, left) = conflicting_store(1);
    let rbd = rbd_testkit::fake::MemoryBackend::new("pool");
    let ctx = Ctx::for_tests(Arc::new(rbd.clone()), no_source(), store_backend).await;
    ctx.images
        .create(Image::new(
            "v",
            ImageSpec {
                size: 3 << 20,
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    let err = image::reconcile(&ctx, "v").await.unwrap_err();
    assert!(
        matches!(
            err,
            crate::ControllerError::Store(StoreError::Conflict { .. })
        ),
        "{err}"
    );
    assert_eq!(left.load(Ordering::SeqCst), 0);
    assert_eq!(image::reconcile(&ctx, "v").await.unwrap(), Action::Done);
    let img = ctx.images.get("v").await.unwrap();
    assert_eq!(img.status.state, ImageState::Available);
    assert!(img.metadata.has_finalizer(IMAGE_FINALIZER));
    assert_eq!(
        rbd::BlockBackend::stat(&rbd, "img_v").await.unwrap().size,
        3 << 20
    );
}

#[tokio::test]
async fn status_writes_of_operations_retry_conflicts_and_keep_the_change() {
    let (store_backend, left) = conflicting_store(0);
    let ctx = Ctx::for_tests(
        Arc::new(rbd_testkit::fake::MemoryBackend::new("pool")),
        no_source(),
        store_backend,
    )
    .await;
    populating_snapshot(&ctx).await;
    left.store(3, Ordering::SeqCst);
    status::mark_snapshot_failed(&ctx, DIGEST, None, "broken")
        .await
        .unwrap();
    assert_eq!(left.load(Ordering::SeqCst), 0, "three conflicts absorbed");
    let s = ctx.snapshots.get(DIGEST).await.unwrap();
    assert_eq!(s.status.state, SnapshotState::Failed);
    assert_eq!(s.status.message, "broken");
}

/// An image source that never answers.
struct SilentSource;

#[async_trait]
impl ImageSource for SilentSource {
    async fn resolve(&self, _: &str, _: Option<&str>) -> Result<ResolvedImage, SourceError> {
        futures::future::pending().await
    }
    async fn open_rootfs(&self, _: &str, _: Option<&str>) -> Result<Rootfs, SourceError> {
        futures::future::pending().await
    }
}

#[tokio::test(start_paused = true)]
async fn a_registry_that_never_answers_is_a_retryable_failure_after_the_resolve_deadline() {
    let rbd = rbd_testkit::fake::MemoryBackend::new("pool");
    let ctx = Ctx::for_tests(Arc::new(rbd), Arc::new(SilentSource), memory_store()).await;
    let token = rbd::CancellationToken::new();
    let t0 = tokio::time::Instant::now();
    let err = ctx
        .resolve_image("reg/os:latest", None, &token)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(t0.elapsed(), ctx.cfg.resolve_timeout);
    assert!(err.is_retryable(), "{err}");
    assert!(err.to_string().contains("no answer within"), "{err}");
    let err = match ctx.open_rootfs("reg/os@sha256:x", None, &token).await {
        Ok(Err(e)) => e,
        _ => panic!("the open must time out"),
    };
    assert!(err.is_retryable(), "{err}");

    // A cancelled operation does not wait for the deadline.
    token.cancel();
    let t0 = tokio::time::Instant::now();
    assert!(ctx
        .resolve_image("reg/os:latest", None, &token)
        .await
        .is_err());
    assert_eq!(t0.elapsed(), std::time::Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn a_format_past_its_deadline_is_retryable_and_never_runs_twice_at_once() {
    use rbd::BlockBackend;
    use rbd_testkit::fake::Op;
    let rbd = rbd_testkit::fake::MemoryBackend::new("pool");
    rbd.create_image("img_v", 32 << 20).await.unwrap();
    let deadline = Ctx::for_tests(Arc::new(rbd.clone()), no_source(), memory_store())
        .await
        .cfg
        .format_timeout;
    rbd.set_delay(Op::EncryptionFormat, deadline * 2);
    let ctx = Ctx::for_tests(Arc::new(rbd.clone()), no_source(), memory_store()).await;
    let pass = rbd::Passphrase::new(b"pw".to_vec());
    let token = rbd::CancellationToken::new();

    let t0 = tokio::time::Instant::now();
    let err = ctx.format_luks2("img_v", &pass, &token).await.unwrap_err();
    assert_eq!(t0.elapsed(), deadline);
    assert!(err.is_retryable(), "{err}");
    assert!(err.to_string().contains("did not finish within"), "{err}");

    // The first format still runs in the background: a second one is refused at once.
    rbd.set_delay(Op::EncryptionFormat, std::time::Duration::ZERO);
    let err = ctx.format_luks2("img_v", &pass, &token).await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(err.to_string().contains("still running"), "{err}");
    assert_eq!(rbd.calls(Op::EncryptionFormat), 1);

    // Once it has ended (formatting the image), the next format runs.
    tokio::time::sleep(deadline + std::time::Duration::from_secs(1)).await;
    assert!(rbd.is_encrypted("img_v").unwrap());
    ctx.format_luks2("img_v", &pass, &token).await.unwrap();
    assert_eq!(rbd.calls(Op::EncryptionFormat), 2);
}

#[tokio::test(start_paused = true)]
async fn a_child_listing_past_its_deadline_is_a_retryable_failure() {
    use rbd_testkit::fake::Op;
    let rbd = rbd_testkit::fake::MemoryBackend::new("pool");
    let ctx = Ctx::for_tests(Arc::new(rbd.clone()), no_source(), memory_store()).await;
    rbd.set_delay(Op::ListChildren, ctx.cfg.list_children_timeout * 3);
    let t0 = tokio::time::Instant::now();
    let err = ctx
        .list_children("img_v", None, &rbd::CancellationToken::new())
        .await
        .unwrap_err();
    assert_eq!(t0.elapsed(), ctx.cfg.list_children_timeout);
    assert!(err.is_retryable(), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_resync_whose_re_list_fails_lists_again_until_every_object_is_queued() {
    // Events coalesced into a `Resync` exist nowhere else: a failed re-list must not drop them.
    let mem = store::MemoryBackend::new();
    let ctx = Ctx::for_tests(
        Arc::new(MockBlockBackend::new()),
        no_source(),
        Arc::new(mem.clone()),
    )
    .await;
    ctx.lists_owed.store(0, Ordering::SeqCst);
    ctx.images
        .create(store::Image::new("v", store::ImageSpec::default()))
        .await
        .unwrap();
    mem.fail_next(2);
    crate::wiring::on_image_event(&ctx, store::WatchEvent::Resync).await;
    let key = tokio::time::timeout(std::time::Duration::from_secs(1), ctx.image_queue.get())
        .await
        .expect("the volume is queued");
    assert_eq!(key.as_deref(), Some("v"));
    assert_eq!(
        ctx.lists_owed.load(Ordering::SeqCst),
        0,
        "nothing owed after it"
    );
}
