//! 100 concurrent creates through the real daemon give 100 distinct volumes that all become
//! available and are all deleted cleanly.

use std::collections::BTreeSet;

use tests::cephvol_bin;
use tests::daemon::{ops, volume_req, Daemon};

const VOLUMES: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_creates_give_a_hundred_volumes_all_deleted_cleanly() {
    let d = Daemon::start(cephvol_bin!(), &[]).await;
    let c = d.clients().await;

    let creates = (0..VOLUMES).map(|i| {
        let mut c = c.clone();
        tokio::spawn(async move {
            let uid = format!("uid-{i}");
            ops::create(
                &mut c,
                volume_req(
                    "standard",
                    1 << 20,
                    &[("volumepoollet.ironcore.dev/volume-uid", &uid)],
                ),
            )
            .await
        })
    });
    let ids: Vec<String> = futures::future::join_all(creates)
        .await
        .into_iter()
        .map(|r| r.expect("task"))
        .collect();
    let distinct: BTreeSet<_> = ids.iter().cloned().collect();
    assert_eq!(distinct.len(), VOLUMES, "ids are distinct");

    for id in &ids {
        let mut c = c.clone();
        ops::wait_available(&mut c, id).await;
    }
    let mut c2 = c.clone();
    let listed: BTreeSet<_> = ops::list(&mut c2)
        .await
        .into_iter()
        .map(|v| v.metadata.expect("md").id)
        .collect();
    assert_eq!(listed, distinct);
    let wwns: BTreeSet<_> = ops::list(&mut c2)
        .await
        .into_iter()
        .map(|v| v.status.expect("status").access.expect("access").handle)
        .collect();
    assert_eq!(wwns.len(), VOLUMES, "every volume has its own WWN");

    let deletes = ids.iter().map(|id| {
        let mut c = c.clone();
        let id = id.clone();
        tokio::spawn(async move { ops::delete(&mut c, &id).await })
    });
    for r in futures::future::join_all(deletes).await {
        r.expect("task");
    }
    for id in &ids {
        let mut c = c.clone();
        ops::wait_volume_gone(&mut c, id).await;
    }
    assert!(ops::list(&mut c2).await.is_empty());
}
