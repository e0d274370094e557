//! `rbd_testkit::mock::MockBlockBackend` can script exact call sequences (needs `--features mock`).
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use mockall::{predicate::eq, Sequence};
use rbd::{BlockBackend, ChildRef, RbdError};
use rbd_testkit::mock::MockBlockBackend;

/// The Go provider's "remove snapshot" primitive (unprotect if protected, then remove), written
/// against the trait.
async fn remove_snapshot(b: &dyn BlockBackend, image: &str, snap: &str) -> rbd::Result<()> {
    if b.is_snapshot_protected(image, snap).await? {
        b.unprotect_snapshot(image, snap).await?;
    }
    b.remove_snapshot(image, snap).await
}

#[tokio::test]
async fn mock_scripts_an_exact_call_sequence() {
    let mut mock = MockBlockBackend::new();
    let mut seq = Sequence::new();
    mock.expect_is_snapshot_protected()
        .withf(|image, snap| image == "img_1" && snap == "s")
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_, _| Ok(true));
    mock.expect_unprotect_snapshot()
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_, _| Err(RbdError::Busy("has children".into())));
    mock.expect_remove_snapshot().never();
    let b: Arc<dyn BlockBackend> = Arc::new(mock);
    assert_eq!(
        remove_snapshot(b.as_ref(), "img_1", "s").await,
        Err(RbdError::Busy("has children".into()))
    );
}

#[tokio::test]
async fn mock_handles_optional_snapshot_arguments_and_the_pool_name() {
    let mut mock = MockBlockBackend::new();
    mock.expect_pool().return_const("ceph".to_string());
    mock.expect_list_children()
        .withf(|image, snap| image == "snap_x" && *snap == Some("v1"))
        .returning(|_, _| {
            Ok(vec![ChildRef {
                pool: "ceph".into(),
                image: "img_1".into(),
            }])
        });
    mock.expect_stat()
        .with(eq("missing"))
        .returning(|n| Err(RbdError::NotFound(n.to_string())));
    let b: &dyn BlockBackend = &mock;
    assert_eq!(b.pool(), "ceph");
    assert_eq!(
        b.list_children("snap_x", Some("v1")).await.unwrap().len(),
        1
    );
    assert!(
        !b.image_exists("missing").await.unwrap(),
        "default method goes through stat"
    );
}
