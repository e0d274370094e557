//! Fault paths of `CephBackend` that only a real cluster shows: a clone living in another pool
//! than its parent, images left half-removed by a killed removal, clones interrupted by a kill,
//! snapshots left in the trash namespace by a killed removal, and existence checks racing with
//! snapshot changes. Run through `cargo xtask integration` (they are ignored otherwise).
#![allow(clippy::unwrap_used)]

mod ceph_support;

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ceph::{CephBackend, ImageOptions};
use ceph_support::{admin_backend, admin_cli, backend, bounded, cleanup, cli, config, unique};
use rbd::{BlockBackend, CancellationToken, ChildRef, RbdError};
use testdata::{pattern, sha256_hex};

const MIB: u64 = 1 << 20;

/// A pool this test created, deleted (with everything in it) when the test ends, also on panic.
struct ScratchPool(String);

impl ScratchPool {
    fn create(prefix: &str) -> ScratchPool {
        let name = unique(prefix).replace('_', "-");
        admin_cli("ceph", &["osd", "pool", "create", &name, "8"]);
        let pool = ScratchPool(name);
        admin_cli("rbd", &["pool", "init", &pool.0]);
        pool
    }
}

impl Drop for ScratchPool {
    fn drop(&mut self) {
        let out = Command::new("ceph")
            .arg("-c")
            .arg(config().conf_file.expect("conf"))
            .args(["--id", "admin", "--keyring"])
            .arg(std::env::var("CEPH_ADMIN_KEYRING").unwrap_or_default())
            .args(["osd", "pool", "rm", &self.0, &self.0])
            .arg("--yes-i-really-really-mean-it")
            .output();
        match out {
            Ok(o) if o.status.success() => {}
            other => eprintln!("removing scratch pool {}: {other:?}", self.0),
        }
    }
}

/// Item 9: the controllers used to flatten every listed child by name in their own pool, where a
/// child of another pool does not exist (`NotFound`, taken as "already gone"), so the parent
/// snapshot stayed busy and its deletion retried for ever. `flatten_child` flattens it where it
/// lives, after which the parent goes away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs ceph"]
async fn a_clone_in_another_pool_is_flattened_there_and_its_parent_can_then_be_removed() {
    bounded(async {
        // The rbd-profile test user has caps on the test pool only: the daemon needs caps on
        // every pool its snapshots' children live in; the test works as client.admin.
        let b = admin_backend().await;
        let other = ScratchPool::create("cephvol-xpool");
        let parent = unique("img_xpool_parent");
        let child = unique("img_xpool_child");
        let data = pattern((8 * MIB) as usize, 9);
        b.create_image(&parent, 8 * MIB).await.unwrap();
        b.write_at(&parent, 0, &data).await.unwrap();
        b.create_snapshot(&parent, "s").await.unwrap();
        b.protect_snapshot(&parent, "s").await.unwrap();
        let far_io = b.rados().ioctx(&other.0).unwrap();
        let mut opts = ImageOptions::new().unwrap();
        opts.set_u64(ceph::sys::RBD_IMAGE_OPTION_CLONE_FORMAT, 1)
            .unwrap();
        b.ioctx()
            .clone_image(&parent, "s", &far_io, &child, &opts)
            .unwrap();
        b.write_at(&parent, 0, &pattern(4096, 10)).await.unwrap();

        let listed = b.list_children(&parent, Some("s")).await.unwrap();
        let far = ChildRef {
            pool: other.0.clone(),
            image: child.clone(),
        };
        assert_eq!(listed, vec![far.clone()]);
        // What the controllers did before: the child is not in our pool.
        assert!(matches!(
            b.flatten(&child, rbd::no_progress(), CancellationToken::new())
                .await,
            Err(RbdError::NotFound(_))
        ));
        assert!(matches!(
            b.unprotect_snapshot(&parent, "s").await,
            Err(RbdError::Busy(_))
        ));

        let reports = Arc::new(AtomicU64::new(0));
        let seen = reports.clone();
        b.flatten_child(
            &far,
            Arc::new(move |_, _| {
                seen.fetch_add(1, Ordering::Relaxed);
            }),
            CancellationToken::new(),
        )
        .await
        .expect("flatten in the child's pool");
        assert!(reports.load(Ordering::Relaxed) > 0, "progress reported");
        assert!(b.list_children(&parent, None).await.unwrap().is_empty());
        b.unprotect_snapshot(&parent, "s").await.unwrap();
        b.remove_snapshot(&parent, "s").await.unwrap();
        b.remove_image(&parent).await.unwrap();

        let far_backend = CephBackend::from_parts(b.rados().clone(), far_io);
        assert_eq!(far_backend.stat(&child).await.unwrap().parent, None);
        let content = ceph_rules_read_all(&far_backend, &child).await;
        assert_eq!(sha256_hex(&content), sha256_hex(&data));
        far_backend.remove_image(&child).await.unwrap();
        // A child whose pool is gone: nothing to flatten, and definitely so.
        let gone = ChildRef {
            pool: format!("{}-gone", other.0),
            image: child.clone(),
        };
        assert!(matches!(
            b.flatten_child(&gone, rbd::no_progress(), CancellationToken::new())
                .await,
            Err(RbdError::NotFound(_))
        ));
    })
    .await;
}

async fn ceph_rules_read_all(b: &CephBackend, image: &str) -> Vec<u8> {
    rbd_testkit::conformance::read_all(b, image, None).await
}

/// The rbd image id of `image` in the test pool (`rbd info`).
fn image_id(image: &str) -> String {
    let info: serde_json::Value =
        serde_json::from_str(&cli("rbd", &["info", "--format", "json", image])).unwrap();
    info["id"].as_str().expect("image id").to_string()
}

/// Checks what the backend says about a half-removed `image` and removes it through the backend.
async fn assert_half_removed_then_remove(b: &CephBackend, image: &str) {
    assert!(
        b.list_images().await.unwrap().contains(&image.to_string()),
        "still listed"
    );
    assert!(
        b.image_exists(image).await.unwrap(),
        "a listed image exists, even if it cannot be opened"
    );
    match b.stat(image).await {
        Err(RbdError::Busy(msg)) => assert!(msg.contains("half-removed"), "{msg}"),
        other => panic!("stat of a half-removed image: {:?}", other.map(|_| ())),
    }
    // librbd refuses while the killed client's watch lives (30 s unless blocklisted): retry.
    let t0 = Instant::now();
    loop {
        match b.remove_image(image).await {
            Ok(()) => break,
            Err(RbdError::Busy(e)) if t0.elapsed() < Duration::from_secs(60) => {
                eprintln!("remove_image: {e}; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(e) => panic!("remove_image of a half-removed image: {e}"),
        }
    }
    assert!(!b.list_images().await.unwrap().contains(&image.to_string()));
    assert!(!b.image_exists(image).await.unwrap());
    assert!(matches!(b.stat(image).await, Err(RbdError::NotFound(_))));
}

/// Creates `image` (100 GiB, sparse) and leaves it half-removed: `rbd rm` killed while it deletes
/// the data objects, after librbd moved the image to the trash; the killed client's watch is
/// cleared (blocklisted) so a removal need not wait the 30 s of its expiry.
async fn create_half_removed(image: &str) {
    // Without object-map librbd deletes every possible object of the image: 100 GiB (sparse)
    // keep `rbd rm` busy for many seconds.
    cli(
        "rbd",
        &["create", "-s", "100G", "--image-feature", "layering", image],
    );
    let id = image_id(image);
    let cfg = config();
    let mut rm = Command::new("rbd")
        .arg("-c")
        .arg(cfg.conf_file.as_ref().unwrap())
        .args(["--id", cfg.user.trim_start_matches("client.")])
        .arg("--keyring")
        .arg(cfg.keyring.as_ref().unwrap())
        .args(["-p", &cfg.pool, "rm", image])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = rm.stderr.take().unwrap();
    // Kill it once it reports progress: the image is in the trash and half its objects exist.
    let progress = tokio::task::spawn_blocking(move || {
        let mut seen = String::new();
        let mut buf = [0u8; 256];
        loop {
            let n = stderr.read(&mut buf).unwrap_or(0);
            if n == 0 {
                return Err(seen);
            }
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            if seen.contains("Removing image: 1% complete") {
                return Ok(());
            }
        }
    })
    .await
    .unwrap();
    rm.kill().unwrap();
    let status = rm.wait().unwrap();
    if let Err(out) = progress {
        panic!("rbd rm ended before it could be killed ({status}): {out}");
    }
    assert!(
        cli("rados", &["ls"])
            .lines()
            .any(|o| o == format!("rbd_header.{id}")),
        "the killed removal left the header"
    );
    // Skip the 30 s until the OSD drops the killed client's watch.
    if let Ok(watchers) = Command::new("rados")
        .arg("-c")
        .arg(cfg.conf_file.as_ref().unwrap())
        .args(["--id", "admin", "--keyring"])
        .arg(std::env::var("CEPH_ADMIN_KEYRING").unwrap_or_default())
        .args(["-p", &cfg.pool, "listwatchers", &format!("rbd_header.{id}")])
        .output()
    {
        for addr in String::from_utf8_lossy(&watchers.stdout)
            .split_whitespace()
            .filter_map(|w| w.strip_prefix("watcher="))
        {
            admin_cli("ceph", &["osd", "blocklist", "add", addr]);
        }
    }
}

/// Item 11(a): `rbd rm` killed while it deletes the data objects (after librbd moved the image to
/// the trash) leaves an image that `rbd ls` lists and nobody can open. The backend used to report
/// it as missing (`stat` → `NotFound`, `image_exists` → false), so the deletion pass skipped it
/// and it leaked; now it exists, `stat` says `Busy` and `remove_image` finishes the removal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs ceph"]
async fn an_image_whose_removal_was_killed_is_listed_exists_and_removing_it_again_finishes() {
    bounded(async {
        let b = backend().await;
        let image = unique("img_halfrm");
        create_half_removed(&image).await;
        assert_half_removed_then_remove(&b, &image).await;
    })
    .await;
}

/// Item 11(a), the other half-removed shape: the image's header object is gone (a removal that
/// got past it, or damage), so `rbd ls` lists the image and opening it fails with ENOENT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs ceph"]
async fn an_image_without_its_header_object_is_listed_exists_and_removing_it_finishes() {
    bounded(async {
        let b = backend().await;
        let image = unique("img_nohdr");
        b.create_image(&image, 8 * MIB).await.unwrap();
        b.write_at(&image, 0, b"data").await.unwrap();
        let id = image_id(&image);
        cli("rados", &["rm", &format!("rbd_header.{id}")]);
        assert_half_removed_then_remove(&b, &image).await;
        // Without its header the removal cannot know the data objects: the one written goes here.
        cli("rados", &["rm", &format!("rbd_data.{id}.0000000000000000")]);
    })
    .await;
}

/// Item 11(b): `stat` of a live image read its snapshots in two steps (list, then the protection
/// flag of each); a snapshot removed in between answered ENOENT and `stat` reported the *image*
/// as not found — what the image reconciler calls "vanished". Another client now creates and
/// removes snapshots while `stat` runs in a loop: it must never say `NotFound`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs ceph"]
async fn stat_never_reports_a_live_image_missing_while_its_snapshots_come_and_go() {
    bounded(async {
        let b = backend().await;
        let churn = backend().await;
        let image = unique("img_snapchurn");
        b.create_image(&image, 8 * MIB).await.unwrap();
        for i in 0..8 {
            b.create_snapshot(&image, &format!("keep{i}"))
                .await
                .unwrap();
        }
        let stop = Arc::new(AtomicBool::new(false));
        let churner = {
            let (image, stop) = (image.clone(), stop.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let s = format!("churn{}", n % 4);
                    churn.create_snapshot(&image, &s).await.unwrap();
                    churn.remove_snapshot(&image, &s).await.unwrap();
                    n += 1;
                }
                n
            })
        };
        let t0 = Instant::now();
        let mut stats = 0u64;
        let mut failures = Vec::new();
        while t0.elapsed() < Duration::from_secs(20) {
            match b.stat(&image).await {
                Ok(info) => assert_eq!(info.size, 8 * MIB),
                Err(e) => failures.push(e),
            }
            stats += 1;
        }
        stop.store(true, Ordering::Relaxed);
        let churned = churner.await.unwrap();
        eprintln!("{stats} stats while {churned} snapshots came and went");
        cleanup(&b, &image).await;
        assert!(
            failures.is_empty(),
            "stat of a live image failed {} of {stats} times: {:?}",
            failures.len(),
            &failures[..failures.len().min(5)]
        );
    })
    .await;
}

/// Found by the chaos test: librbd creates a clone's image before it links it to its parent, so
/// a daemon killed in between left an image without parent under the volume's own name, and the
/// restarted daemon took it for the finished clone (the guest got a blank disk). Clones are now
/// made under `<child>.cloning` and renamed when whole: a leftover temporary image of either
/// shape (a whole clone, or the parentless image of a kill between the two steps) is replaced
/// by the next clone, and goes with `remove_image(child)` when the volume is deleted instead. A
/// leftover left half-removed by a kill during its own removal is only in the pool's trash, where
/// the next clone did not collide with it: it stayed listed for the volume's whole life (also
/// found by the chaos test); the next clone now finishes its removal first. A kill between the
/// first two steps of librbd's image creation leaves only the name's id object, which failed
/// every later clone with EEXIST (taken as "the child exists"): the next clone removes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs ceph"]
async fn a_clone_interrupted_before_its_rename_is_made_again_whole_and_never_under_its_own_name() {
    bounded(async {
        let b = backend().await;
        let parent = unique("img_clonetmp_parent");
        let data = pattern((8 * MIB) as usize, 21);
        b.create_image(&parent, 8 * MIB).await.unwrap();
        b.write_at(&parent, 0, &data).await.unwrap();
        b.create_snapshot(&parent, "s").await.unwrap();
        b.protect_snapshot(&parent, "s").await.unwrap();
        let temp = |child: &str| format!("{child}{}", ceph::CLONE_TEMP_SUFFIX);

        // A kill between the two steps of librbd's clone: a parentless image of the clone's size.
        let child = unique("img_clonetmp_a");
        b.create_image(&temp(&child), 8 * MIB).await.unwrap();
        // A kill after the clone, before the rename: a whole clone under the temporary name.
        let other = unique("img_clonetmp_b");
        let mut opts = ImageOptions::new().unwrap();
        opts.set_u64(ceph::sys::RBD_IMAGE_OPTION_CLONE_FORMAT, 1)
            .unwrap();
        b.ioctx()
            .clone_image(&parent, "s", b.ioctx(), &temp(&other), &opts)
            .unwrap();
        // A kill while such a leftover was being removed: the temporary name is free in the
        // pool's directory and the half-removed image stays in its trash (and in `rbd ls`).
        let third = unique("img_clonetmp_c");
        create_half_removed(&temp(&third)).await;
        // A kill inside librbd's creation of the clone's image: named in the pool's directory,
        // without a header object.
        let fourth = unique("img_clonetmp_d");
        b.create_image(&temp(&fourth), 8 * MIB).await.unwrap();
        cli(
            "rados",
            &["rm", &format!("rbd_header.{}", image_id(&temp(&fourth)))],
        );
        // A kill between the first two steps of that creation: only the id object
        // `rbd_id.<name>`, which made every later creation under the name fail with EEXIST.
        let fifth = unique("img_clonetmp_e");
        b.create_image(&temp(&fifth), 8 * MIB).await.unwrap();
        let fifth_id = image_id(&temp(&fifth));
        cli("rados", &["rm", &format!("rbd_header.{fifth_id}")]);
        cli(
            "rados",
            &[
                "rmomapkey",
                "rbd_directory",
                &format!("name_{}", temp(&fifth)),
            ],
        );
        cli(
            "rados",
            &["rmomapkey", "rbd_directory", &format!("id_{fifth_id}")],
        );
        assert!(cli("rados", &["ls"])
            .lines()
            .any(|o| o == format!("rbd_id.{}", temp(&fifth))));
        for name in [&child, &other, &third, &fourth, &fifth] {
            assert!(!b.image_exists(name).await.unwrap(), "{name}");
        }

        b.clone_image(&parent, "s", &child).await.unwrap();
        let info = b.stat(&child).await.unwrap();
        assert_eq!(
            info.parent.map(|p| (p.image, p.snapshot)),
            Some((parent.clone(), "s".to_string()))
        );
        assert_eq!(
            sha256_hex(&ceph_rules_read_all(&b, &child).await),
            sha256_hex(&data)
        );
        assert!(matches!(
            b.clone_image(&parent, "s", &child).await,
            Err(RbdError::Exists(_))
        ));
        for name in [&third, &fourth, &fifth] {
            b.clone_image(&parent, "s", name).await.unwrap();
            assert!(b.stat(name).await.unwrap().parent.is_some(), "{name}");
        }

        // The volume of the other is deleted before any retry: its leftover goes with it.
        assert!(matches!(
            b.remove_image(&other).await,
            Err(RbdError::NotFound(_))
        ));
        let images = b.list_images().await.unwrap();
        assert!(!images.contains(&temp(&child)), "{images:?}");
        assert!(!images.contains(&temp(&other)), "{images:?}");
        assert!(!images.contains(&temp(&third)), "{images:?}");
        assert!(!images.contains(&temp(&fourth)), "{images:?}");
        assert!(!images.contains(&temp(&fifth)), "{images:?}");

        // The fifth was made whole and then cut down to its id object: its object map is not
        // part of the state a kill leaves, and nothing that goes by name can find it.
        cli("rados", &["rm", &format!("rbd_object_map.{fifth_id}")]);
        b.remove_image(&fifth).await.unwrap();
        b.remove_image(&fourth).await.unwrap();
        b.remove_image(&third).await.unwrap();
        b.remove_image(&child).await.unwrap();
        b.unprotect_snapshot(&parent, "s").await.unwrap();
        b.remove_snapshot(&parent, "s").await.unwrap();
        b.remove_image(&parent).await.unwrap();
    })
    .await;
}

/// The snapshots `rbd snap ls --all` lists for `image`: `(id, name, namespace type, original name)`.
fn all_snapshots(image: &str) -> Vec<(u64, String, String, String)> {
    let listed: serde_json::Value = serde_json::from_str(&cli(
        "rbd",
        &["snap", "ls", "--all", "--format", "json", image],
    ))
    .unwrap();
    listed
        .as_array()
        .expect("a JSON array")
        .iter()
        .map(|s| {
            let ns = &s["namespace"];
            (
                s["id"].as_u64().expect("snapshot id"),
                s["name"].as_str().expect("snapshot name").to_string(),
                ns["type"].as_str().unwrap_or_default().to_string(),
                ns["original_name"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Moves snapshot `snap_id` of the image with id `image_id` into the trash namespace with the
/// class call librbd's snapshot removal makes first (`rbd.snapshot_trash_add`, the snapshot id as
/// a little-endian u64), and nothing else: the state a removal killed right after that step
/// leaves. Through the Python `rados` module that the `ceph` command itself runs on.
fn trash_snapshot_as_a_killed_removal_leaves_it(image_id: &str, snap_id: u64) {
    let cfg = ceph_support::admin_config();
    let script = "import rados, struct, sys\n\
        conf, keyring, pool, header, snap = sys.argv[1:]\n\
        c = rados.Rados(conffile=conf, rados_id='admin', conf={'keyring': keyring})\n\
        c.connect()\n\
        io = c.open_ioctx(pool)\n\
        io.execute(header, 'rbd', 'snapshot_trash_add', struct.pack('<Q', int(snap)))\n\
        io.close()\n\
        c.shutdown()\n";
    let out = Command::new("/usr/bin/python3")
        .args(["-c", script])
        .arg(cfg.conf_file.as_ref().expect("conf file"))
        .arg(cfg.keyring.as_ref().expect("admin keyring"))
        .arg(&config().pool)
        .arg(format!("rbd_header.{image_id}"))
        .arg(snap_id.to_string())
        .output()
        .expect("running /usr/bin/python3 (the ceph command's interpreter)");
    assert!(
        out.status.success(),
        "snapshot_trash_add: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A snapshot removal killed after librbd moved the snapshot into the trash namespace left it
/// there for good, renamed to a UUID: removing the name again answered `NotFound` ("already
/// gone") and the volume kept the snapshot's data until the volume itself was deleted (found by
/// `tests/tests/e2e_ceph_chaos.rs`: "left in the trash namespace"). Removing the name again now
/// finishes that removal, and leaves the image's other snapshots alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs ceph"]
async fn a_snapshot_removal_killed_after_its_move_to_the_trash_is_finished_by_removing_it_again() {
    bounded(async {
        let b = backend().await;
        let image = unique("img_snaptrash");
        b.create_image(&image, 8 * MIB).await.unwrap();
        b.write_at(&image, 0, b"before").await.unwrap();
        b.create_snapshot(&image, "gone").await.unwrap();
        b.create_snapshot(&image, "kept").await.unwrap();
        b.write_at(&image, 0, b"after!").await.unwrap();
        let gone = all_snapshots(&image)
            .into_iter()
            .find(|s| s.1 == "gone")
            .expect("snapshot listed")
            .0;
        trash_snapshot_as_a_killed_removal_leaves_it(&image_id(&image), gone);
        let trashed: Vec<_> = all_snapshots(&image)
            .into_iter()
            .filter(|s| s.2 == "trash")
            .collect();
        assert_eq!(
            trashed.len(),
            1,
            "the half-removed snapshot is in the trash"
        );
        assert_eq!((trashed[0].0, trashed[0].3.as_str()), (gone, "gone"));
        let names: Vec<String> = b
            .list_snapshots(&image)
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(names, ["kept"], "the trashed one is not listed by name");

        b.remove_snapshot(&image, "gone").await.unwrap();
        let left: Vec<(String, String)> = all_snapshots(&image)
            .into_iter()
            .map(|s| (s.1, s.2))
            .collect();
        assert_eq!(left, [("kept".to_string(), "user".to_string())]);
        assert!(
            matches!(
                b.remove_snapshot(&image, "gone").await,
                Err(RbdError::NotFound(_))
            ),
            "once finished, the name is not found"
        );
        let kept = b.read(&image, Some("kept"), 0, 6).await.unwrap();
        assert_eq!(&kept[..], b"before", "the other snapshot keeps its data");
        b.remove_snapshot(&image, "kept").await.unwrap();
        b.remove_image(&image).await.unwrap();
    })
    .await;
}

/// The other way a snapshot stays in the trash namespace: clone v2 children, made by another
/// client (the provider's own clones are v1, which need the snapshot protected). Its removal
/// succeeds, the child keeps reading its parent's data, a repeated removal of the name is no
/// error, and librbd removes the trashed snapshot with its last child.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs ceph"]
async fn a_snapshot_with_clone_v2_children_is_removed_into_the_trash_and_goes_with_its_last_child()
{
    bounded(async {
        let b = backend().await;
        let parent = unique("img_v2parent");
        let child = unique("img_v2child");
        b.create_image(&parent, 8 * MIB).await.unwrap();
        b.write_at(&parent, 0, b"parent").await.unwrap();
        b.create_snapshot(&parent, "s").await.unwrap();
        let pool = config().pool;
        admin_cli(
            "rbd",
            &[
                "clone",
                "--rbd-default-clone-format",
                "2",
                &format!("{pool}/{parent}@s"),
                &format!("{pool}/{child}"),
            ],
        );

        b.remove_snapshot(&parent, "s").await.unwrap();
        let namespaces: Vec<String> = all_snapshots(&parent).into_iter().map(|s| s.2).collect();
        assert_eq!(namespaces, ["trash"], "kept in the trash for its child");
        assert_eq!(&b.read(&child, None, 0, 6).await.unwrap()[..], b"parent");
        b.remove_snapshot(&parent, "s").await.unwrap();

        b.remove_image(&child).await.unwrap();
        assert!(
            all_snapshots(&parent).is_empty(),
            "gone with its last child"
        );
        assert!(matches!(
            b.remove_snapshot(&parent, "s").await,
            Err(RbdError::NotFound(_))
        ));
        b.remove_image(&parent).await.unwrap();
    })
    .await;
}
