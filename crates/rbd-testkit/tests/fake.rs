//! Behaviour of `rbd_testkit::fake::MemoryBackend` beyond the shared conformance rules: queue depth,
//! fault and latency injection, chunk-level flatten, the encryption model, pool usage, keys.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rbd::{
    no_progress, BlockBackend, CancellationToken, Passphrase, ProgressFn, RbdError, WriteOptions,
};
use rbd_testkit::conformance::{read_all, stream_of};
use rbd_testkit::fake::{MemoryBackend, Op, FAKE_LUKS2_MAGIC, LUKS2_HEADER_SIZE};
use testdata::{pattern, sha256_hex};
use tokio::time::Instant;

const MIB: u64 = 1024 * 1024;

fn small(chunk: u64) -> MemoryBackend {
    MemoryBackend::builder("pool").chunk_size(chunk).build()
}

fn opts(chunk_size: usize, queue_depth: usize) -> WriteOptions {
    WriteOptions {
        chunk_size,
        queue_depth,
        skip_zeroes: false,
        start: 0,
        dirty_until: 0,
        total_hint: 0,
        passphrase: None,
    }
}

type ProgressLog = Arc<Mutex<Vec<(u64, u64)>>>;

fn recorder() -> (ProgressFn, ProgressLog) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let sink = log.clone();
    (Arc::new(move |d, t| sink.lock().unwrap().push((d, t))), log)
}

/// A parent of 8 objects filled with data, snapshot `s` protected, and a clone `child` of it.
async fn clone_of_full_parent(b: &MemoryBackend) -> Vec<u8> {
    let size = 8 * b.chunk_size();
    b.create_image("parent", size).await.unwrap();
    let data = pattern(size as usize, 1);
    b.write_at("parent", 0, &data).await.unwrap();
    b.create_snapshot("parent", "s").await.unwrap();
    b.protect_snapshot("parent", "s").await.unwrap();
    b.clone_image("parent", "s", "child").await.unwrap();
    data
}

#[tokio::test(start_paused = true)]
async fn write_stream_keeps_queue_depth_writes_in_flight() {
    for depth in [1, 3, 4] {
        let b = small(1024);
        b.create_image("img", 64 * 1024).await.unwrap();
        b.set_chunk_delay(Op::Write, Duration::from_millis(10));
        let data = pattern(16 * 1024, 2);
        let n = b
            .write_stream(
                "img",
                stream_of(data.clone(), 3000),
                opts(1024, depth),
                no_progress(),
                CancellationToken::new(),
            )
            .await
            .unwrap();
        assert_eq!(n, data.len() as u64);
        assert_eq!(b.max_writes_in_flight(), depth, "depth {depth}");
        assert_eq!(&read_all(&b, "img", None).await[..data.len()], &data[..]);
    }
}

#[tokio::test(start_paused = true)]
async fn injected_chunk_latency_overlaps_across_the_queue_depth() {
    for (depth, expected_ms) in [(1u64, 160u64), (4, 40), (16, 10)] {
        let b = small(1024);
        b.create_image("img", 64 * 1024).await.unwrap();
        b.set_chunk_delay(Op::Write, Duration::from_millis(10));
        let start = Instant::now();
        b.write_stream(
            "img",
            stream_of(pattern(16 * 1024, 3), 1024),
            opts(1024, depth as usize),
            no_progress(),
            CancellationToken::new(),
        )
        .await
        .unwrap();
        assert_eq!(
            start.elapsed(),
            Duration::from_millis(expected_ms),
            "depth {depth}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn injected_delay_waits_in_tokio_time_before_the_call() {
    let b = MemoryBackend::new("pool");
    b.set_delay(Op::Stat, Duration::from_secs(5));
    b.fail_next(Op::Stat, 1, RbdError::Transient("slow and broken".into()));
    let start = Instant::now();
    assert!(matches!(b.stat("x").await, Err(RbdError::Transient(_))));
    assert_eq!(start.elapsed(), Duration::from_secs(5));
    assert!(matches!(b.image_exists("x").await, Ok(false)));
    assert_eq!(start.elapsed(), Duration::from_secs(10));
    assert_eq!(b.calls(Op::Stat), 2);
}

#[tokio::test]
async fn fail_next_fails_exactly_n_calls_without_side_effects() {
    let b = MemoryBackend::new("pool");
    b.create_image("img", MIB).await.unwrap();
    b.fail_next(
        Op::CreateSnapshot,
        2,
        RbdError::Transient("injected".into()),
    );
    for _ in 0..2 {
        assert_eq!(
            b.create_snapshot("img", "s").await,
            Err(RbdError::Transient("injected".into()))
        );
        assert!(b.list_snapshots("img").await.unwrap().is_empty());
    }
    b.create_snapshot("img", "s").await.unwrap();
    assert_eq!(b.calls(Op::CreateSnapshot), 3);
}

#[tokio::test]
async fn injected_failures_happen_before_any_state_change() {
    let b = MemoryBackend::builder("pool").chunk_size(4096).build();
    b.create_image("p", 64 * 1024).await.unwrap();
    b.write_at("p", 100, &pattern(10_000, 4)).await.unwrap();
    b.metadata_set("p", "k", "v").await.unwrap();
    b.create_snapshot("p", "s").await.unwrap();
    b.protect_snapshot("p", "s").await.unwrap();
    b.clone_image("p", "s", "c").await.unwrap();
    b.create_image("lone", 64 * 1024).await.unwrap();
    b.create_snapshot("lone", "u").await.unwrap();
    b.create_image("big", 32 * MIB).await.unwrap();

    async fn state(b: &MemoryBackend) -> (String, Vec<Vec<u8>>) {
        let mut out = String::new();
        let mut contents = Vec::new();
        for img in b.list_images().await.unwrap() {
            let info = b.stat(&img).await.unwrap();
            out += &format!("{info:?} {:?}\n", b.metadata_list(&img).await.unwrap());
            out += &format!(
                "{:?} enc={}\n",
                b.list_children(&img, None).await.unwrap(),
                b.is_encrypted(&img).unwrap()
            );
            contents.push(read_all(b, &img, None).await);
        }
        (out, contents)
    }
    let before = state(&b).await;
    let err = RbdError::Transient("injected".into());
    let ops = [
        Op::CreateImage,
        Op::Resize,
        Op::Remove,
        Op::CreateSnapshot,
        Op::Protect,
        Op::Unprotect,
        Op::RemoveSnapshot,
        Op::Clone,
        Op::Flatten,
        Op::Write,
        Op::WriteAt,
        Op::EncryptionFormat,
        Op::MetadataSet,
    ];
    for op in ops {
        b.fail_next(op, 1, err.clone());
    }
    let none = CancellationToken::new;
    let results = vec![
        b.create_image("new", MIB).await,
        b.resize("c", MIB).await,
        b.remove_image("big").await,
        b.create_snapshot("p", "s2").await,
        b.protect_snapshot("lone", "u").await,
        b.unprotect_snapshot("p", "s")
            .await
            .or(Err(err.clone()))
            .and(b.unprotect_snapshot("lone", "u").await),
        b.remove_snapshot("lone", "u").await,
        b.clone_image("p", "s", "c2").await,
        b.flatten("c", no_progress(), none()).await,
        b.write_stream(
            "c",
            stream_of(vec![7; 5000], 5000),
            opts(4096, 2),
            no_progress(),
            none(),
        )
        .await
        .map(|_| ()),
        b.write_at("c", 0, b"xyz").await,
        b.encryption_format("big", &Passphrase::new("pw")).await,
        b.metadata_set("p", "k", "changed").await,
    ];
    for (op, res) in ops.iter().zip(results) {
        assert_eq!(res, Err(err.clone()), "{op:?}");
    }
    let after = state(&b).await;
    assert_eq!(after.0, before.0);
    assert!(after.1 == before.1, "image contents changed");
}

#[tokio::test]
async fn random_failures_are_deterministic_for_a_seed() {
    async fn outcomes(seed: u64) -> Vec<bool> {
        let b = MemoryBackend::builder("pool").seed(seed).build();
        b.fail_randomly(Op::ListImages, 0.5, RbdError::Transient("coin".into()));
        let mut v = Vec::new();
        for _ in 0..64 {
            v.push(b.list_images().await.is_ok());
        }
        v
    }
    let a = outcomes(7).await;
    assert_eq!(a, outcomes(7).await);
    assert_ne!(a, outcomes(8).await);
    assert!(a.iter().any(|ok| *ok) && a.iter().any(|ok| !*ok));
    let b = MemoryBackend::new("pool");
    b.fail_randomly(Op::ListImages, 1.0, RbdError::Transient("always".into()));
    assert!(b.list_images().await.is_err());
    b.clear_faults();
    assert!(b.list_images().await.is_ok());
}

#[tokio::test]
async fn flatten_reports_progress_per_object() {
    let b = small(MIB);
    let data = clone_of_full_parent(&b).await;
    let (progress, log) = recorder();
    b.flatten("child", progress, CancellationToken::new())
        .await
        .unwrap();
    let want: Vec<(u64, u64)> = (1..=8).map(|i| (i, 8)).collect();
    assert_eq!(*log.lock().unwrap(), want);
    assert_eq!(read_all(&b, "child", None).await, data);
}

#[tokio::test]
async fn cancelled_flatten_leaves_clone_intact() {
    let b = small(MIB);
    let data = clone_of_full_parent(&b).await;
    let cancel = CancellationToken::new();
    let token = cancel.clone();
    let progress: ProgressFn = Arc::new(move |done, _| {
        if done == 3 {
            token.cancel();
        }
    });
    assert_eq!(
        b.flatten("child", progress, cancel).await,
        Err(RbdError::Cancelled)
    );
    let info = b.stat("child").await.unwrap();
    assert!(info.parent.is_some(), "still a clone");
    assert_eq!(b.list_children("parent", Some("s")).await.unwrap().len(), 1);
    assert_eq!(read_all(&b, "child", None).await, data);
    assert_eq!(
        b.unprotect_snapshot("parent", "s").await,
        Err(RbdError::Busy("snapshot parent@s has 1 child(ren)".into()))
    );
    // Three objects were copied; finishing copies the rest.
    let (progress, log) = recorder();
    b.flatten("child", progress, CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(log.lock().unwrap().last(), Some(&(8, 8)));
    b.unprotect_snapshot("parent", "s").await.unwrap();
    b.remove_snapshot("parent", "s").await.unwrap();
    b.remove_image("parent").await.unwrap();
    assert_eq!(read_all(&b, "child", None).await, data);
}

#[tokio::test]
async fn flatten_failing_half_way_leaves_a_valid_clone() {
    let b = small(MIB);
    let data = clone_of_full_parent(&b).await;
    let usage_before = b.pool_usage().await.unwrap().stored;
    b.fail_after_chunks(Op::Flatten, 5, RbdError::Transient("osd went away".into()));
    let (progress, log) = recorder();
    assert_eq!(
        b.flatten("child", progress, CancellationToken::new()).await,
        Err(RbdError::Transient("osd went away".into()))
    );
    assert_eq!(log.lock().unwrap().last(), Some(&(5, 8)));
    assert_eq!(
        b.pool_usage().await.unwrap().stored,
        usage_before + 5 * MIB,
        "5 objects copied"
    );
    assert!(b.stat("child").await.unwrap().parent.is_some());
    assert_eq!(read_all(&b, "child", None).await, data);
    b.flatten("child", no_progress(), CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(b.stat("child").await.unwrap().parent, None);
    assert_eq!(read_all(&b, "child", None).await, data);
}

#[tokio::test]
async fn write_stream_failing_after_some_requests_reports_the_error() {
    let b = small(1024);
    b.create_image("img", 64 * 1024).await.unwrap();
    b.fail_after_chunks(Op::Write, 2, RbdError::Transient("half-way".into()));
    let res = b
        .write_stream(
            "img",
            stream_of(pattern(8 * 1024, 5), 1024),
            opts(1024, 1),
            no_progress(),
            CancellationToken::new(),
        )
        .await;
    assert_eq!(res, Err(RbdError::Transient("half-way".into())));
    let got = read_all(&b, "img", None).await;
    assert_eq!(
        &got[..2048],
        &pattern(2048, 5)[..],
        "the first two requests were written"
    );
    assert!(got[2048..].iter().all(|&x| x == 0));
    b.write_stream(
        "img",
        stream_of(pattern(8 * 1024, 5), 1024),
        opts(1024, 1),
        no_progress(),
        CancellationToken::new(),
    )
    .await
    .unwrap();
}

#[tokio::test(start_paused = true)]
async fn cancelling_a_write_stream_midway_stops_issuing_requests() {
    let b = small(1024);
    b.create_image("img", 64 * 1024).await.unwrap();
    b.set_chunk_delay(Op::Write, Duration::from_millis(10));
    let cancel = CancellationToken::new();
    let token = cancel.clone();
    let progress: ProgressFn = Arc::new(move |done, _| {
        if done >= 4096 {
            token.cancel();
        }
    });
    let res = b
        .write_stream(
            "img",
            stream_of(pattern(32 * 1024, 6), 1024),
            opts(1024, 2),
            progress,
            cancel,
        )
        .await;
    assert_eq!(res, Err(RbdError::Cancelled));
    let got = read_all(&b, "img", None).await;
    // Writes are whole 1 KiB requests: count up to the last one that is not all zero.
    let written = got
        .chunks(1024)
        .rposition(|c| c.iter().any(|&x| x != 0))
        .map_or(0, |p| (p + 1) * 1024);
    assert!(written <= 6 * 1024, "stopped early, wrote {written} bytes");
}

#[tokio::test]
async fn skip_zeroes_allocates_nothing_for_zero_chunks() {
    let b = small(MIB);
    b.create_image("img", 8 * MIB).await.unwrap();
    let mut data = vec![0u8; 8 * MIB as usize];
    data[3 * MIB as usize] = 1;
    let mut o = opts(MIB as usize, 4);
    o.skip_zeroes = true;
    b.write_stream(
        "img",
        stream_of(data.clone(), 65536),
        o,
        no_progress(),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(b.pool_usage().await.unwrap().stored, MIB);
    assert_eq!(read_all(&b, "img", None).await, data);
}

#[tokio::test]
async fn pool_usage_counts_shared_chunks_once() {
    let b = MemoryBackend::builder("pool")
        .chunk_size(MIB)
        .capacity(100 * MIB)
        .build();
    b.create_image("img", 8 * MIB).await.unwrap();
    let usage = b.pool_usage().await.unwrap();
    assert_eq!((usage.stored, usage.max_avail), (0, 100 * MIB));
    b.write_at("img", 10, b"x").await.unwrap();
    assert_eq!(b.pool_usage().await.unwrap().stored, MIB);
    b.create_snapshot("img", "s").await.unwrap();
    assert_eq!(
        b.pool_usage().await.unwrap().stored,
        MIB,
        "a snapshot shares chunks"
    );
    b.write_at("img", 20, b"y").await.unwrap();
    assert_eq!(
        b.pool_usage().await.unwrap().stored,
        2 * MIB,
        "copy on write"
    );
    b.set_capacity(10 * MIB);
    let usage = b.pool_usage().await.unwrap();
    assert_eq!(
        (usage.stored, usage.max_avail, usage.capacity()),
        (2 * MIB, 8 * MIB, 10 * MIB)
    );
}

#[tokio::test]
async fn client_keys_are_derived_deterministically_or_configured() {
    let a = MemoryBackend::new("pool");
    let b = MemoryBackend::builder("pool")
        .client_key("client.volumes", "AQBconfigured==")
        .build();
    assert_eq!(
        a.client_key("client.x").await.unwrap(),
        b.client_key("client.x").await.unwrap()
    );
    assert_ne!(
        a.client_key("client.x").await.unwrap(),
        a.client_key("client.y").await.unwrap()
    );
    assert_eq!(
        b.client_key("client.volumes").await.unwrap(),
        "AQBconfigured=="
    );
    a.set_client_key("client.x", "other");
    assert_eq!(a.client_key("client.x").await.unwrap(), "other");
}

#[tokio::test]
async fn clones_of_the_backend_share_the_pool_across_a_restart() {
    let cluster = MemoryBackend::new("pool");
    {
        let provider: Arc<dyn BlockBackend> = Arc::new(cluster.clone());
        provider.create_image("img", MIB).await.unwrap();
        provider.write_at("img", 0, b"survives").await.unwrap();
    }
    let restarted: Arc<dyn BlockBackend> = Arc::new(cluster.clone());
    assert_eq!(
        &restarted.read("img", None, 0, 8).await.unwrap()[..],
        b"survives"
    );
}

#[tokio::test]
async fn checksum_is_the_sha256_of_the_full_content() {
    let b = small(4096);
    b.create_image("img", 10_000).await.unwrap();
    b.write_at("img", 4000, &pattern(300, 8)).await.unwrap();
    let content = read_all(&b, "img", None).await;
    assert_eq!(content.len(), 10_000);
    let want = sha256_hex(&content);
    assert_eq!(b.checksum("img", None).unwrap(), want);
    assert_eq!(
        rbd_testkit::conformance::checksum(&b, "img", None).await,
        want
    );
    assert!(matches!(
        b.checksum("nope", None),
        Err(RbdError::NotFound(_))
    ));
}

#[tokio::test]
async fn encryption_format_records_the_passphrase_and_reserves_the_header() {
    let b = MemoryBackend::new("pool");
    let size = LUKS2_HEADER_SIZE + 2 * MIB;
    b.create_image("img", size).await.unwrap();
    b.write_at("img", 0, &pattern(100, 9)).await.unwrap();
    let pass = Passphrase::new("correct horse");
    b.encryption_format("img", &pass).await.unwrap();
    assert!(b.is_encrypted("img").unwrap());
    let head = b.read("img", None, 0, LUKS2_HEADER_SIZE).await.unwrap();
    assert_eq!(&head[..FAKE_LUKS2_MAGIC.len()], FAKE_LUKS2_MAGIC);
    assert!(
        head[FAKE_LUKS2_MAGIC.len()..] == vec![0u8; head.len() - FAKE_LUKS2_MAGIC.len()],
        "old data is gone"
    );

    let payload = pattern(MIB as usize + 7, 10);
    let mut o = opts(MIB as usize, 2);
    o.passphrase = Some(pass.clone());
    let n = b
        .write_stream(
            "img",
            stream_of(payload.clone(), 65536),
            o,
            no_progress(),
            CancellationToken::new(),
        )
        .await
        .unwrap();
    assert_eq!(n, payload.len() as u64);
    let raw = b
        .read("img", None, LUKS2_HEADER_SIZE, payload.len() as u64)
        .await
        .unwrap();
    assert_eq!(
        &raw[..],
        &payload[..],
        "payload stored in plaintext after the header"
    );
    let mut plain = payload.clone();
    plain.resize((size - LUKS2_HEADER_SIZE) as usize, 0);
    assert_eq!(
        b.checksum_decrypted("img", &pass).unwrap(),
        sha256_hex(&plain)
    );
    assert!(matches!(
        b.checksum_decrypted("img", &Passphrase::new("nope")),
        Err(RbdError::InvalidArgument(_))
    ));
}

#[tokio::test]
async fn encrypted_writes_are_limited_to_the_size_minus_the_header() {
    let b = MemoryBackend::new("pool");
    b.create_image("img", 17 * MIB).await.unwrap();
    let pass = Passphrase::new("pw");
    b.encryption_format("img", &pass).await.unwrap();
    let mut o = opts(MIB as usize, 1);
    o.passphrase = Some(pass);
    let res = b
        .write_stream(
            "img",
            stream_of(vec![1; MIB as usize + 1], 65536),
            o.clone(),
            no_progress(),
            CancellationToken::new(),
        )
        .await;
    assert!(matches!(res, Err(RbdError::InvalidArgument(_))), "{res:?}");
    b.write_stream(
        "img",
        stream_of(vec![1; MIB as usize], 65536),
        o,
        no_progress(),
        CancellationToken::new(),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn write_stream_with_a_wrong_or_needless_passphrase_is_invalid() {
    let b = MemoryBackend::new("pool");
    b.create_image("enc", 32 * MIB).await.unwrap();
    b.create_image("plain", 32 * MIB).await.unwrap();
    b.encryption_format("enc", &Passphrase::new("right"))
        .await
        .unwrap();
    for (img, pass) in [("enc", "wrong"), ("plain", "any")] {
        let mut o = opts(MIB as usize, 1);
        o.passphrase = Some(Passphrase::new(pass));
        let res = b
            .write_stream(
                img,
                stream_of(vec![1; 10], 10),
                o,
                no_progress(),
                CancellationToken::new(),
            )
            .await;
        assert!(
            matches!(res, Err(RbdError::InvalidArgument(_))),
            "{img}: {res:?}"
        );
    }
}

#[tokio::test]
async fn encryption_format_of_an_image_smaller_than_the_header_is_invalid() {
    let b = MemoryBackend::new("pool");
    b.create_image("img", 8 * MIB).await.unwrap();
    let res = b.encryption_format("img", &Passphrase::new("pw")).await;
    assert!(matches!(res, Err(RbdError::InvalidArgument(_))), "{res:?}");
    assert!(!b.is_encrypted("img").unwrap());
}

#[tokio::test]
async fn clones_inherit_the_format_and_flattened_clones_can_be_formatted() {
    let b = MemoryBackend::new("pool");
    b.create_image("base", 32 * MIB).await.unwrap();
    b.create_image("plain", 32 * MIB).await.unwrap();
    b.encryption_format("base", &Passphrase::new("pw"))
        .await
        .unwrap();
    for img in ["base", "plain"] {
        b.create_snapshot(img, "s").await.unwrap();
        b.protect_snapshot(img, "s").await.unwrap();
    }
    b.clone_image("base", "s", "enc-child").await.unwrap();
    b.clone_image("plain", "s", "plain-child").await.unwrap();
    assert!(b.is_encrypted("enc-child").unwrap());
    assert!(!b.is_encrypted("plain-child").unwrap());
    assert!(matches!(
        b.encryption_format("plain-child", &Passphrase::new("pw"))
            .await,
        Err(RbdError::Unsupported(_))
    ));
    b.flatten("plain-child", no_progress(), CancellationToken::new())
        .await
        .unwrap();
    b.encryption_format("plain-child", &Passphrase::new("pw"))
        .await
        .unwrap();
    assert!(b.is_encrypted("plain-child").unwrap());
}

#[tokio::test]
async fn passphrases_never_show_in_debug_output() {
    let b = MemoryBackend::new("pool");
    b.create_image("img", 32 * MIB).await.unwrap();
    b.encryption_format("img", &Passphrase::new("hunter2"))
        .await
        .unwrap();
    assert!(!format!("{b:?}").contains("hunter2"));
}

#[tokio::test]
async fn flatten_materialises_the_clones_snapshots_in_shared_objects() {
    let b = small(MIB);
    let data = clone_of_full_parent(&b).await;
    b.create_snapshot("child", "cs").await.unwrap();
    let before = b.pool_usage().await.unwrap().stored;
    b.flatten("child", no_progress(), CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(
        b.pool_usage().await.unwrap().stored,
        before + 8 * MIB,
        "one copy serves the head and its snapshot"
    );
    b.unprotect_snapshot("parent", "s").await.unwrap();
    b.remove_snapshot("parent", "s").await.unwrap();
    b.remove_image("parent").await.unwrap();
    assert_eq!(read_all(&b, "child", Some("cs")).await, data);
    assert_eq!(read_all(&b, "child", None).await, data);
}

#[tokio::test]
async fn a_clone_in_another_pool_is_listed_with_its_pool_and_flattened_only_there() {
    let b = small(1024);
    let data = clone_of_full_parent(&b).await;
    b.add_pool("other");
    b.clone_to_pool("parent", "s", "other", "far").unwrap();
    let far = rbd::ChildRef {
        pool: "other".into(),
        image: "far".into(),
    };
    assert!(b
        .list_children("parent", Some("s"))
        .await
        .unwrap()
        .contains(&far));
    assert!(!b.list_images().await.unwrap().contains(&"far".to_string()));
    // Looked up by name in this pool, the child does not exist: the old, wrong way to flatten it.
    assert!(matches!(
        b.flatten("far", no_progress(), CancellationToken::new())
            .await,
        Err(RbdError::NotFound(_))
    ));
    b.flatten_child(&far, no_progress(), CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(b.stat_in_pool("other", "far").unwrap().parent, None);
    b.flatten("child", no_progress(), CancellationToken::new())
        .await
        .unwrap();
    assert!(b.list_children("parent", None).await.unwrap().is_empty());
    b.unprotect_snapshot("parent", "s").await.unwrap();
    b.remove_snapshot("parent", "s").await.unwrap();
    b.remove_image("parent").await.unwrap();
    assert_eq!(b.checksum("child", None).unwrap(), sha256_hex(&data));
    assert_eq!(b.pool_images("other").unwrap(), vec!["far".to_string()]);
    b.remove_in_pool("other", "far").unwrap();
    assert!(b.pool_images("other").unwrap().is_empty());
}

#[tokio::test]
async fn a_clone_in_another_pool_holds_its_parent_snapshot_until_flattened() {
    let b = small(1024);
    clone_of_full_parent(&b).await;
    b.remove_image("child").await.unwrap();
    b.add_pool("other");
    b.clone_to_pool("parent", "s", "other", "far").unwrap();
    assert!(matches!(
        b.unprotect_snapshot("parent", "s").await,
        Err(RbdError::Busy(_))
    ));
    let unknown = rbd::ChildRef {
        pool: "nowhere".into(),
        image: "far".into(),
    };
    assert!(matches!(
        b.flatten_child(&unknown, no_progress(), CancellationToken::new())
            .await,
        Err(RbdError::NotFound(_))
    ));
    assert!(matches!(
        b.clone_to_pool("parent", "s", "nowhere", "x"),
        Err(RbdError::NotFound(_))
    ));
    b.remove_in_pool("other", "far").unwrap();
    b.unprotect_snapshot("parent", "s").await.unwrap();
}

#[tokio::test]
async fn a_half_removed_image_is_listed_exists_and_removing_it_again_finishes_the_removal() {
    let b = small(1024);
    b.create_image("img", 4096).await.unwrap();
    b.write_at("img", 0, b"data").await.unwrap();
    b.interrupt_removal("img").unwrap();
    assert_eq!(b.list_images().await.unwrap(), vec!["img".to_string()]);
    assert!(b.image_exists("img").await.unwrap());
    assert!(matches!(b.stat("img").await, Err(RbdError::Busy(_))));
    assert!(matches!(
        b.metadata_get("img", "k").await,
        Err(RbdError::NotFound(_))
    ));
    assert!(matches!(
        b.create_image("img", 4096).await,
        Err(RbdError::Exists(_))
    ));
    b.remove_image("img").await.unwrap();
    assert!(b.list_images().await.unwrap().is_empty());
    assert!(!b.image_exists("img").await.unwrap());
    assert!(matches!(b.stat("img").await, Err(RbdError::NotFound(_))));
}

#[tokio::test]
async fn a_half_removed_clone_is_not_a_listed_child_but_still_holds_its_parent_snapshot() {
    let b = small(1024);
    clone_of_full_parent(&b).await;
    b.interrupt_removal("child").unwrap();
    assert!(b.list_children("parent", None).await.unwrap().is_empty());
    assert!(matches!(
        b.unprotect_snapshot("parent", "s").await,
        Err(RbdError::Busy(_))
    ));
    b.remove_image("child").await.unwrap();
    b.unprotect_snapshot("parent", "s").await.unwrap();
    b.create_image("snapped", 4096).await.unwrap();
    b.create_snapshot("snapped", "s").await.unwrap();
    assert!(matches!(
        b.interrupt_removal("snapped"),
        Err(RbdError::Busy(_))
    ));
}
