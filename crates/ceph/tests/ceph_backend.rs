//! librbd specifics of `CephBackend` against a real cluster, cross-checked with the `rbd` CLI.
//! Run through `cargo xtask integration` (they are ignored otherwise).
#![allow(clippy::unwrap_used)]

mod ceph_support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use ceph_support::{backend, bounded, cleanup, cli, unique};
use rbd::{BlockBackend, ByteStream, CancellationToken, Passphrase, RbdError, WriteOptions};
use testdata::{pattern, sha256_hex};

const MIB: u64 = 1 << 20;

fn stream_of(chunks: Vec<Vec<u8>>) -> ByteStream {
    Box::pin(futures::stream::iter(
        chunks.into_iter().map(|c| Ok(Bytes::from(c))),
    ))
}

/// Every `(done, total)` a progress callback saw.
type Seen = Arc<Mutex<Vec<(u64, u64)>>>;

fn progress_recorder() -> (rbd::ProgressFn, Seen) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    (
        Arc::new(move |d, t| s.lock().expect("lock").push((d, t))),
        seen,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs ceph"]
async fn images_are_created_listed_resized_and_removed() {
    bounded(async {
        let b = backend().await;
        let name = unique("img_basic");
        b.create_image(&name, 8 * MIB).await.expect("create");
        assert!(matches!(
            b.create_image(&name, MIB).await,
            Err(RbdError::Exists(_))
        ));
        assert!(b.list_images().await.expect("list").contains(&name));
        assert!(b.image_exists(&name).await.expect("exists"));
        let info = b.stat(&name).await.expect("stat");
        assert_eq!(
            (info.size, info.parent, info.snapshots.len()),
            (8 * MIB, None, 0)
        );
        b.resize(&name, 16 * MIB).await.expect("grow");
        b.resize(&name, 4 * MIB).await.expect("shrink is allowed");
        assert_eq!(b.stat(&name).await.expect("stat").size, 4 * MIB);
        let rbd_info: serde_json::Value =
            serde_json::from_str(&cli("rbd", &["info", "--format", "json", &name])).expect("json");
        assert_eq!(rbd_info["size"], 4 * MIB);
        b.remove_image(&name).await.expect("remove");
        assert!(!b.image_exists(&name).await.expect("exists"));
        assert!(matches!(
            b.remove_image(&name).await,
            Err(RbdError::NotFound(_))
        ));
        assert!(matches!(b.stat(&name).await, Err(RbdError::NotFound(_))));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs ceph"]
async fn snapshot_rules_follow_librbd() {
    bounded(async {
        let b = backend().await;
        let name = unique("img_snaps");
        b.create_image(&name, 4 * MIB).await.expect("create");
        b.create_snapshot(&name, "s1").await.expect("snap");
        b.create_snapshot(&name, "s2").await.expect("snap");
        assert!(matches!(
            b.create_snapshot(&name, "s1").await,
            Err(RbdError::Exists(_))
        ));
        let names: Vec<String> = b
            .list_snapshots(&name)
            .await
            .expect("list")
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(names, ["s1", "s2"]);
        assert!(
            matches!(b.remove_image(&name).await, Err(RbdError::Busy(_))),
            "image with snapshots"
        );

        b.protect_snapshot(&name, "s1").await.expect("protect");
        b.protect_snapshot(&name, "s1")
            .await
            .expect("protecting twice is a no-op");
        assert!(b
            .is_snapshot_protected(&name, "s1")
            .await
            .expect("protected"));
        assert!(!b
            .is_snapshot_protected(&name, "s2")
            .await
            .expect("protected"));
        assert!(matches!(
            b.is_snapshot_protected(&name, "nope").await,
            Err(RbdError::NotFound(_))
        ));
        assert!(
            matches!(b.remove_snapshot(&name, "s1").await, Err(RbdError::Busy(_))),
            "protected"
        );
        let ls: serde_json::Value =
            serde_json::from_str(&cli("rbd", &["snap", "ls", "--format", "json", &name]))
                .expect("json");
        assert_eq!(ls.as_array().map(Vec::len), Some(2));

        b.unprotect_snapshot(&name, "s1").await.expect("unprotect");
        b.unprotect_snapshot(&name, "s2")
            .await
            .expect("unprotecting an unprotected snapshot is a no-op");
        b.remove_snapshot(&name, "s1").await.expect("remove");
        assert!(matches!(
            b.remove_snapshot(&name, "s1").await,
            Err(RbdError::NotFound(_))
        ));
        b.remove_snapshot(&name, "s2").await.expect("remove");
        b.remove_image(&name).await.expect("remove image");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs ceph"]
async fn clones_need_a_protected_snapshot_and_keep_their_bytes_after_the_parent_is_gone() {
    bounded(async {
        let b = backend().await;
        let parent = unique("img_parent");
        let child = unique("img_child");
        let other = unique("img_child2");
        b.create_image(&parent, 12 * MIB).await.expect("create");
        let data = pattern(3 * MIB as usize, 7);
        b.write_at(&parent, MIB, &data).await.expect("write");
        b.create_snapshot(&parent, "v1").await.expect("snap");

        let unprotected = b.clone_image(&parent, "v1", &child).await;
        assert!(
            matches!(unprotected, Err(RbdError::InvalidArgument(_))),
            "{unprotected:?}"
        );

        b.protect_snapshot(&parent, "v1").await.expect("protect");
        b.clone_image(&parent, "v1", &child).await.expect("clone");
        b.clone_image(&parent, "v1", &other).await.expect("clone");
        let info = b.stat(&child).await.expect("stat");
        let p = info.parent.expect("clone has a parent");
        assert_eq!(
            (p.pool.as_str(), p.image.as_str(), p.snapshot.as_str()),
            (b.pool(), parent.as_str(), "v1")
        );
        assert_eq!(info.size, 12 * MIB);
        let rbd_info: serde_json::Value =
            serde_json::from_str(&cli("rbd", &["info", "--format", "json", &child])).expect("json");
        assert_eq!(rbd_info["parent"]["image"], parent.as_str());
        assert_eq!(rbd_info["parent"]["snapshot"], "v1");

        let mut expected = vec![child.clone(), other.clone()];
        expected.sort();
        let at_snap: Vec<String> = b
            .list_children(&parent, Some("v1"))
            .await
            .expect("children")
            .into_iter()
            .map(|c| c.image)
            .collect();
        assert_eq!(at_snap, expected);
        let at_head: Vec<String> = b
            .list_children(&parent, None)
            .await
            .expect("children")
            .into_iter()
            .map(|c| c.image)
            .collect();
        assert_eq!(at_head, expected);
        let cli_children = cli("rbd", &["children", &format!("{parent}@v1")]);
        assert!(
            cli_children.contains(&child) && cli_children.contains(&other),
            "{cli_children}"
        );
        assert!(
            matches!(
                b.unprotect_snapshot(&parent, "v1").await,
                Err(RbdError::Busy(_))
            ),
            "has children"
        );

        assert_eq!(
            &b.read(&child, None, MIB, 3 * MIB).await.expect("read")[..],
            &data[..],
            "reads through"
        );
        let before = sha256_hex(&cli_bytes(&["export", &child, "-"]));

        let (progress, seen) = progress_recorder();
        b.flatten(&child, progress, CancellationToken::new())
            .await
            .expect("flatten");
        assert!(
            !seen.lock().expect("lock").is_empty(),
            "flatten reports progress"
        );
        assert_eq!(b.stat(&child).await.expect("stat").parent, None);
        b.flatten(&child, rbd::no_progress(), CancellationToken::new())
            .await
            .expect("flatten of a non-clone");
        b.flatten(&other, rbd::no_progress(), CancellationToken::new())
            .await
            .expect("flatten");

        b.unprotect_snapshot(&parent, "v1")
            .await
            .expect("unprotect after flatten");
        b.remove_snapshot(&parent, "v1").await.expect("remove snap");
        b.remove_image(&parent).await.expect("remove parent");
        let after = sha256_hex(&cli_bytes(&["export", &child, "-"]));
        assert_eq!(
            before, after,
            "the clone's bytes survive the deletion of its parent"
        );

        for n in [&child, &other] {
            cleanup(&b, n).await;
        }
    })
    .await;
}

fn cli_bytes(args: &[&str]) -> Vec<u8> {
    let cfg = ceph_support::config();
    let out = std::process::Command::new("rbd")
        .arg("-c")
        .arg(cfg.conf_file.as_ref().expect("conf"))
        .args(["--id", cfg.user.trim_start_matches("client.")])
        .arg("--keyring")
        .arg(cfg.keyring.as_ref().expect("keyring"))
        .args(["-p", &cfg.pool])
        .args(args)
        .output()
        .expect("rbd");
    assert!(
        out.status.success(),
        "rbd {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs ceph"]
async fn flattening_a_clone_with_snapshots_detaches_it_at_once() {
    bounded(async {
        // Pacific copies the data of the clone's snapshots too: the parent snapshot is free at once.
        let b = backend().await;
        let parent = unique("img_fsparent");
        let child = unique("img_fschild");
        b.create_image(&parent, 8 * MIB).await.expect("create");
        let data = pattern(5 * MIB as usize, 11);
        b.write_at(&parent, 0, &data).await.expect("write");
        b.create_snapshot(&parent, "s1").await.expect("snap");
        b.protect_snapshot(&parent, "s1").await.expect("protect");
        b.clone_image(&parent, "s1", &child).await.expect("clone");
        b.create_snapshot(&child, "cs")
            .await
            .expect("snapshot of the clone");
        b.flatten(&child, rbd::no_progress(), CancellationToken::new())
            .await
            .expect("flatten");
        assert_eq!(
            b.list_children(&parent, Some("s1"))
                .await
                .expect("children"),
            vec![]
        );
        b.unprotect_snapshot(&parent, "s1")
            .await
            .expect("unprotect right after the flatten");
        b.remove_snapshot(&parent, "s1").await.expect("remove");
        b.remove_image(&parent).await.expect("remove parent");
        let at_cs = b
            .read(&child, Some("cs"), 0, data.len() as u64)
            .await
            .expect("read snapshot");
        assert_eq!(
            &at_cs[..],
            &data[..],
            "the clone's snapshot keeps its bytes"
        );
        cleanup(&b, &child).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs ceph"]
async fn a_flatten_cancelled_from_its_progress_callback_returns_cancelled_and_keeps_the_clone() {
    bounded(async {
        let b = backend().await;
        let parent = unique("img_fcparent");
        let child = unique("img_fcchild");
        // 16 objects of 4 MiB: flatten reports per object, so a cancel at the first report stops early.
        b.create_image(&parent, 64 * MIB).await.expect("create");
        b.write_at(&parent, 0, &pattern(MIB as usize, 3))
            .await
            .expect("write");
        b.create_snapshot(&parent, "v1").await.expect("snap");
        b.protect_snapshot(&parent, "v1").await.expect("protect");
        b.clone_image(&parent, "v1", &child).await.expect("clone");

        let cancel = CancellationToken::new();
        let calls = Arc::new(AtomicU64::new(0));
        let (c, n) = (cancel.clone(), calls.clone());
        let progress: rbd::ProgressFn = Arc::new(move |_, _| {
            n.fetch_add(1, Ordering::SeqCst);
            c.cancel();
        });
        let result = b.flatten(&child, progress, cancel).await;
        assert_eq!(result, Err(RbdError::Cancelled));
        assert!(calls.load(Ordering::SeqCst) >= 1);
        assert!(
            b.stat(&child).await.expect("stat").parent.is_some(),
            "still a clone"
        );
        assert_eq!(
            &b.read(&child, None, 0, MIB).await.expect("read")[..],
            &pattern(MIB as usize, 3)[..]
        );

        let precancelled = CancellationToken::new();
        precancelled.cancel();
        assert_eq!(
            b.flatten(&child, rbd::no_progress(), precancelled).await,
            Err(RbdError::Cancelled)
        );

        let panicking: rbd::ProgressFn = Arc::new(|_, _| {
            panic!("deliberate panic in a progress callback (this test checks it is caught)")
        });
        let r = b.flatten(&child, panicking, CancellationToken::new()).await;
        assert!(
            matches!(r, Err(RbdError::Other(_))),
            "a panicking callback is an error, not a crash: {r:?}"
        );

        b.flatten(&child, rbd::no_progress(), CancellationToken::new())
            .await
            .expect("flatten");
        assert_eq!(b.stat(&child).await.expect("stat").parent, None);
        cleanup(&b, &child).await;
        cleanup(&b, &parent).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs ceph"]
async fn write_stream_pipelines_skips_zero_chunks_and_reads_back() {
    bounded(async {
        let b = backend().await;
        let name = unique("img_stream");
        b.create_image(&name, 32 * MIB).await.expect("create");
        // One chunk per 4 MiB rbd object, so that skipped chunks leave whole objects unallocated.
        let chunk = 4 * MIB as usize;
        let mut input = Vec::new();
        let mut expected = Vec::new();
        for i in 0..6u8 {
            // Every other chunk is zero; the stream's own pieces do not line up with the chunk size.
            let piece = if i % 2 == 0 {
                vec![0u8; chunk]
            } else {
                pattern(chunk, u64::from(i))
            };
            expected.extend_from_slice(&piece);
            input.extend_from_slice(&piece);
        }
        expected.extend_from_slice(&pattern(1000, 99));
        input.extend_from_slice(&pattern(1000, 99));
        let pieces: Vec<Vec<u8>> = input.chunks(300_001).map(<[u8]>::to_vec).collect();
        let (progress, seen) = progress_recorder();
        let opts = WriteOptions {
            chunk_size: chunk,
            queue_depth: 4,
            skip_zeroes: true,
            start: 0,
            dirty_until: 0,
            total_hint: expected.len() as u64,
            passphrase: None,
        };
        let n = b
            .write_stream(
                &name,
                stream_of(pieces),
                opts,
                progress,
                CancellationToken::new(),
            )
            .await
            .expect("write_stream");
        assert_eq!(n, expected.len() as u64);
        let last = *seen
            .lock()
            .expect("lock")
            .last()
            .expect("progress reported");
        assert_eq!(last, (n, n));
        assert_eq!(
            &b.read(&name, None, 0, n).await.expect("read")[..],
            &expected[..]
        );

        // The zero chunks were not written: the image uses fewer bytes than were streamed.
        let du: serde_json::Value =
            serde_json::from_str(&cli("rbd", &["du", "--format", "json", &name])).expect("json");
        let used = du["images"][0]["used_size"].as_u64().expect("used_size");
        assert_eq!(
            used,
            4 * 4 * MIB,
            "3 data objects and the tail's object of {n} bytes streamed"
        );

        let streamed: Vec<u8> = {
            use futures::TryStreamExt;
            let s = b
                .read_stream(&name, None, 3 * chunk)
                .await
                .expect("read_stream");
            let parts: Vec<Bytes> = s.try_collect().await.expect("stream");
            parts.concat()
        };
        assert_eq!(streamed.len() as u64, 32 * MIB);
        assert_eq!(&streamed[..n as usize], &expected[..]);
        cleanup(&b, &name).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs ceph"]
async fn write_stream_rejects_data_beyond_the_image_and_stops_when_cancelled() {
    bounded(async {
        let b = backend().await;
        let name = unique("img_limits");
        b.create_image(&name, 2 * MIB).await.expect("create");
        let too_much = stream_of(vec![pattern(3 * MIB as usize, 1)]);
        let opts = WriteOptions {
            chunk_size: MIB as usize,
            ..WriteOptions::default()
        };
        let r = b
            .write_stream(
                &name,
                too_much,
                opts.clone(),
                rbd::no_progress(),
                CancellationToken::new(),
            )
            .await;
        assert!(matches!(r, Err(RbdError::InvalidArgument(_))), "{r:?}");

        let cancel = CancellationToken::new();
        cancel.cancel();
        let r = b
            .write_stream(
                &name,
                stream_of(vec![pattern(MIB as usize, 2)]),
                opts.clone(),
                rbd::no_progress(),
                cancel,
            )
            .await;
        assert_eq!(r, Err(RbdError::Cancelled));

        // A stream that never ends is stopped by the token.
        let cancel = CancellationToken::new();
        let endless: ByteStream = Box::pin(futures::stream::pending());
        let c = cancel.clone();
        let writer = b.write_stream(&name, endless, opts.clone(), rbd::no_progress(), cancel);
        let (r, ()) = tokio::join!(writer, async move { c.cancel() });
        assert_eq!(r, Err(RbdError::Cancelled));

        let missing = b.write_stream(
            "nope_missing",
            stream_of(vec![]),
            opts,
            rbd::no_progress(),
            CancellationToken::new(),
        );
        assert!(matches!(missing.await, Err(RbdError::NotFound(_))));
        cleanup(&b, &name).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs ceph"]
async fn metadata_is_stored_as_rbd_image_meta() {
    bounded(async {
        let b = backend().await;
        let name = unique("img_meta");
        b.create_image(&name, MIB).await.expect("create");
        assert_eq!(b.metadata_get(&name, "wwn").await.expect("get"), None);
        b.metadata_set(&name, "wwn", "0123456789abcdef")
            .await
            .expect("set");
        b.metadata_set(&name, "conf_rbd_qos_iops_limit", "15000")
            .await
            .expect("set");
        b.metadata_set(&name, "empty", "").await.expect("set");
        assert_eq!(
            b.metadata_get(&name, "wwn").await.expect("get").as_deref(),
            Some("0123456789abcdef")
        );
        let all = b.metadata_list(&name).await.expect("list");
        assert_eq!(all.len(), 3);
        assert_eq!(all["conf_rbd_qos_iops_limit"], "15000");
        assert_eq!(all["empty"], "");
        assert_eq!(
            cli(
                "rbd",
                &["image-meta", "get", &name, "conf_rbd_qos_iops_limit"]
            )
            .trim(),
            "15000"
        );
        let long = "x".repeat(5000);
        b.metadata_set(&name, "long", &long).await.expect("set");
        assert_eq!(
            b.metadata_get(&name, "long").await.expect("get"),
            Some(long)
        );
        assert!(matches!(
            b.metadata_get("nope_missing", "wwn").await,
            Err(RbdError::NotFound(_))
        ));
        cleanup(&b, &name).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs ceph"]
async fn luks2_formats_plain_images_refuses_clones_and_encrypts_written_data() {
    let _alone = FORMAT_TESTS.lock().await;
    bounded(async {
        let b = backend().await;
        let name = unique("img_luks");
        let parent = unique("img_luksparent");
        let clone = unique("img_lukschild");
        let pass = Passphrase::new(b"correct horse battery staple".to_vec());

        b.create_image(&parent, 32 * MIB).await.expect("create");
        b.create_snapshot(&parent, "v1").await.expect("snap");
        b.protect_snapshot(&parent, "v1").await.expect("protect");
        b.clone_image(&parent, "v1", &clone).await.expect("clone");
        let started = std::time::Instant::now();
        let r = b.encryption_format(&clone, &pass).await;
        assert!(matches!(r, Err(RbdError::Unsupported(_))), "{r:?}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(3),
            "refused up front"
        );

        b.create_image(&name, 64 * MIB).await.expect("create");
        b.encryption_format(&name, &pass).await.expect("format");
        let header = b.read(&name, None, 0, 6).await.expect("read");
        assert_eq!(&header[..], b"LUKS\xba\xbe", "a LUKS header at offset 0");

        let plain = pattern(2 * MIB as usize, 5);
        let opts = WriteOptions {
            chunk_size: MIB as usize,
            passphrase: Some(pass.clone()),
            total_hint: plain.len() as u64,
            ..WriteOptions::default()
        };
        let n = b
            .write_stream(
                &name,
                stream_of(vec![plain.clone()]),
                opts,
                rbd::no_progress(),
                CancellationToken::new(),
            )
            .await
            .expect("write through LUKS");
        assert_eq!(n, plain.len() as u64);
        // The raw image holds ciphertext after the 16 MiB header, never the plaintext.
        let raw = b.read(&name, None, 16 * MIB, 2 * MIB).await.expect("read");
        assert_ne!(&raw[..], &plain[..]);
        assert!(raw.windows(64).all(|w| w != &plain[..64]));

        let wrong = WriteOptions {
            chunk_size: MIB as usize,
            passphrase: Some(Passphrase::new(b"wrong".to_vec())),
            ..WriteOptions::default()
        };
        let r = b
            .write_stream(
                &name,
                stream_of(vec![plain]),
                wrong,
                rbd::no_progress(),
                CancellationToken::new(),
            )
            .await;
        assert!(r.is_err(), "a wrong passphrase cannot load the LUKS layer");
        for n in [&clone, &parent, &name] {
            cleanup(&b, n).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs ceph"]
async fn pool_usage_and_client_key_come_from_mon_commands() {
    bounded(async {
        let b = backend().await;
        let usage = b.pool_usage().await.expect("df");
        assert!(usage.max_avail > 0, "{usage:?}");
        assert!(usage.capacity() >= usage.max_avail);
        let cfg = ceph_support::config();
        let client = format!("client.{}", cfg.user.trim_start_matches("client."));
        let key = b.client_key(&client).await.expect("auth get-key");
        if let Some(key_file) = std::env::var_os("CEPH_KEY_FILE") {
            let expected = std::fs::read_to_string(key_file).expect("key file");
            assert_eq!(key, expected.trim());
        }
        assert!(!key.is_empty());
        let r = b.client_key("client.admin").await;
        assert!(r.is_err(), "the rbd-profile user may read only its own key");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs ceph"]
async fn connecting_to_a_missing_pool_is_not_found() {
    bounded(async {
        let mut cfg = ceph_support::config();
        cfg.pool = unique("nopool");
        let r = ceph::CephBackend::connect(cfg).await;
        assert!(matches!(r, Err(RbdError::NotFound(_))), "{:?}", r.err());
    })
    .await;
}

/// Held by the tests that format: the format threads of one must not be counted by the other.
static FORMAT_TESTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The threads of this process that run LUKS2 formats (`luks2-fmt-<n>`, and the key derivation's
/// threads, which inherit the name): (name, scheduling policy).
fn format_threads() -> Vec<(String, i64)> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .filter_map(|t| {
            let t = t.ok()?;
            let stat = std::fs::read_to_string(t.path().join("stat")).ok()?;
            // pid (comm) state ppid ...; comm may hold spaces.
            let (head, rest) = stat.rsplit_once(')')?;
            let (_, comm) = head.split_once('(')?;
            if !comm.starts_with("luks2-fmt-") {
                return None;
            }
            // Field 41 is the scheduling policy (5: SCHED_IDLE).
            let policy = rest.split_whitespace().nth(38)?.parse().ok()?;
            Some((comm.to_string(), policy))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs ceph"]
async fn luks2_formats_run_one_by_one_at_the_lowest_cpu_priority_that_cryptsetup_cannot_raise() {
    let _alone = FORMAT_TESTS.lock().await;
    bounded(async {
        let b = backend().await;
        let names: Vec<String> = (0..3).map(|_| unique("img_lukseach")).collect();
        for n in &names {
            b.create_image(n, 32 * MIB).await.expect("create");
        }
        let pass = Passphrase::new(b"one at a time".to_vec());
        let formats = futures::future::join_all(names.iter().map(|n| {
            let (b, pass) = (b.clone(), pass.clone());
            let n = n.clone();
            tokio::spawn(async move { b.encryption_format(&n, &pass).await })
        }));
        let watcher = tokio::spawn(async {
            let (mut most, mut seen, mut policies) =
                (0, std::collections::BTreeSet::new(), Vec::new());
            loop {
                let threads = format_threads();
                let formats: std::collections::BTreeSet<&String> =
                    threads.iter().map(|(name, _)| name).collect();
                most = most.max(formats.len());
                for (name, policy) in &threads {
                    seen.insert(name.clone());
                    policies.push(*policy);
                }
                if seen.len() >= 3 {
                    return (most, seen.len(), policies);
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        });
        for r in formats.await {
            r.expect("join").expect("format");
        }
        let (most, threads, policies) =
            tokio::time::timeout(std::time::Duration::from_secs(5), watcher)
                .await
                .expect("every format's thread was seen")
                .expect("join");
        assert_eq!(threads, 3, "one thread (name) per format");
        assert_eq!(most, 1, "never two formats at once");
        // Not nice 19: libcryptsetup raises the deriving thread to nice -18 when it may (root).
        assert!(
            policies.iter().all(|p| *p == libc::SCHED_IDLE as i64),
            "every thread of a format, the key derivation's included, SCHED_IDLE: {policies:?}"
        );
        for n in &names {
            assert!(b.stat(n).await.is_ok());
            cleanup(&b, n).await;
        }
    })
    .await;
}
