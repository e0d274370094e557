//! Rules on data: positioned reads and writes, `read_stream` and `write_stream` (progress, zero
//! skipping, bounds, cancellation).

use std::sync::{Arc, Mutex};

use futures::StreamExt;
use testdata::pattern;

use rbd::{no_progress, BlockBackend, CancellationToken, WriteOptions};

use super::support::{cleanup, expected_content, name, read_all, stream_of};
use super::{OBJECT, SIZE};

/// Written bytes read back; unwritten ones read as zeroes; reads stop at the image size.
pub(super) async fn written_data_reads_back_and_reads_stop_at_the_image_size(
    b: &dyn BlockBackend,
    ns: &str,
) {
    cleanup(b, ns).await;
    let img = name(ns, "img");
    b.create_image(&img, SIZE).await.expect("create");
    let across = pattern(5000, 3);
    let tail = pattern(10, 4);
    b.write_at(&img, OBJECT - 2500, &across)
        .await
        .expect("write");
    b.write_at(&img, SIZE - 10, &tail)
        .await
        .expect("write tail");
    let got = b.read(&img, None, OBJECT - 2600, 5200).await.expect("read");
    let mut want = vec![0u8; 100];
    want.extend_from_slice(&across);
    want.extend_from_slice(&[0u8; 100]);
    assert_eq!(&got[..], &want[..]);
    let end = b
        .read(&img, None, SIZE - 10, 100)
        .await
        .expect("read at end");
    assert_eq!(&end[..], &tail[..], "read past the end is truncated");
    let past = b
        .read(&img, None, SIZE + 10, 10)
        .await
        .expect("read past end");
    assert!(past.is_empty());
    let all = read_all(b, &img, None).await;
    assert_eq!(
        all,
        expected_content(SIZE, &[(OBJECT - 2500, &across), (SIZE - 10, &tail)])
    );
    cleanup(b, ns).await;
}

/// `write_at` reaching beyond the image size is `InvalidArgument`.
pub(super) async fn writing_beyond_the_image_size_is_invalid(b: &dyn BlockBackend, ns: &str) {
    cleanup(b, ns).await;
    let img = name(ns, "img");
    b.create_image(&img, SIZE).await.expect("create");
    assert_err!(
        b.write_at(&img, SIZE - 2, b"abcd").await,
        InvalidArgument,
        "write across the end"
    );
    assert_err!(
        b.write_at(&img, SIZE + 1, b"a").await,
        InvalidArgument,
        "write past the end"
    );
    assert_eq!(b.stat(&img).await.expect("stat").size, SIZE);
    cleanup(b, ns).await;
}

/// `read_stream` yields the whole head or snapshot from offset 0 in pieces of at most the asked
/// chunk size.
pub(super) async fn read_stream_returns_the_whole_image_or_snapshot(
    b: &dyn BlockBackend,
    ns: &str,
) {
    cleanup(b, ns).await;
    let img = name(ns, "img");
    b.create_image(&img, SIZE).await.expect("create");
    let data = pattern(3333, 12);
    b.write_at(&img, OBJECT - 1111, &data).await.expect("write");
    b.create_snapshot(&img, "s1").await.expect("snapshot");
    b.write_at(&img, 0, b"head only").await.expect("write head");
    let chunk = 1_000_003usize;
    let mut stream = b
        .read_stream(&img, Some("s1"), chunk)
        .await
        .expect("stream");
    let mut got = Vec::new();
    while let Some(piece) = stream.next().await {
        let piece = piece.expect("piece");
        assert!(
            !piece.is_empty() && piece.len() <= chunk,
            "piece of {}",
            piece.len()
        );
        got.extend_from_slice(&piece);
    }
    assert_eq!(got, expected_content(SIZE, &[(OBJECT - 1111, &data)]));
    let head = read_all(b, &img, None).await;
    assert_eq!(&head[..9], b"head only");
    cleanup(b, ns).await;
}

/// `write_stream` writes the stream from offset 0, returns the bytes consumed and reports byte
/// progress up to the total.
pub(super) async fn write_stream_writes_from_offset_zero_and_reports_progress_in_bytes(
    b: &dyn BlockBackend,
    ns: &str,
) {
    cleanup(b, ns).await;
    let img = name(ns, "img");
    b.create_image(&img, SIZE).await.expect("create");
    let len = 3 * 1024 * 1024 + 17;
    let data = pattern(len, 13);
    let reports = Arc::new(Mutex::new(Vec::new()));
    let sink = reports.clone();
    let progress: rbd::ProgressFn = Arc::new(move |done, total| {
        sink.lock().expect("progress log").push((done, total));
    });
    let opts = WriteOptions {
        chunk_size: 1024 * 1024,
        queue_depth: 3,
        skip_zeroes: false,
        start: 0,
        dirty_until: 0,
        total_hint: len as u64,
        passphrase: None,
    };
    let written = b
        .write_stream(
            &img,
            stream_of(data.clone(), 100_000),
            opts,
            progress,
            CancellationToken::new(),
        )
        .await
        .expect("write_stream");
    assert_eq!(written, len as u64);
    assert_eq!(
        read_all(b, &img, None).await,
        expected_content(SIZE, &[(0, &data)])
    );
    let reports = reports.lock().expect("progress log").clone();
    assert_eq!(reports.last(), Some(&(len as u64, len as u64)));
    assert!(
        reports.windows(2).all(|w| w[0].0 <= w[1].0),
        "progress never goes back"
    );
    cleanup(b, ns).await;
}

/// With `skip_zeroes`, all-zero chunks are not written, and a fresh image reads the same.
pub(super) async fn write_stream_with_skip_zeroes_gives_the_same_content(
    b: &dyn BlockBackend,
    ns: &str,
) {
    cleanup(b, ns).await;
    let img = name(ns, "img");
    b.create_image(&img, SIZE).await.expect("create");
    let mut data = vec![0u8; 4 * 1024 * 1024];
    data[1024 * 1024..1024 * 1024 + 10].copy_from_slice(&pattern(10, 14));
    data[3 * 1024 * 1024 + 5] = 9;
    let opts = WriteOptions {
        chunk_size: 512 * 1024,
        queue_depth: 2,
        skip_zeroes: true,
        start: 0,
        dirty_until: 0,
        total_hint: data.len() as u64,
        passphrase: None,
    };
    let written = b
        .write_stream(
            &img,
            stream_of(data.clone(), 300_000),
            opts,
            no_progress(),
            CancellationToken::new(),
        )
        .await
        .expect("write_stream");
    assert_eq!(written, data.len() as u64);
    assert_eq!(
        read_all(b, &img, None).await,
        expected_content(SIZE, &[(0, &data)])
    );
    cleanup(b, ns).await;
}

/// A resumed `write_stream` starts at `opts.start`, returns the offset behind its last byte, writes
/// zero chunks below `opts.dirty_until` (an earlier write may have left data there) and skips the
/// ones behind it (the caller vouches that they read as zeroes already).
pub(super) async fn write_stream_resumes_at_its_start_and_rewrites_zeroes_below_dirty_until(
    b: &dyn BlockBackend,
    ns: &str,
) {
    cleanup(b, ns).await;
    let img = name(ns, "img");
    b.create_image(&img, SIZE).await.expect("create");
    const CHUNK: usize = 512 * 1024;
    let earlier = pattern(5 * CHUNK, 16);
    b.write_at(&img, 0, &earlier).await.expect("earlier write");
    // The rest of the stream from chunk 1 on: two zero chunks, one of data, one more zero chunk.
    let mut rest = vec![0u8; 4 * CHUNK];
    rest[2 * CHUNK..3 * CHUNK].copy_from_slice(&pattern(CHUNK, 17));
    let start = CHUNK as u64;
    let reports = Arc::new(Mutex::new(Vec::new()));
    let sink = reports.clone();
    let progress: rbd::ProgressFn = Arc::new(move |done, total| {
        sink.lock().expect("progress log").push((done, total));
    });
    let total = start + rest.len() as u64;
    let opts = WriteOptions {
        chunk_size: CHUNK,
        queue_depth: 2,
        skip_zeroes: true,
        start,
        dirty_until: 3 * CHUNK as u64,
        total_hint: total,
        passphrase: None,
    };
    let end = b
        .write_stream(
            &img,
            stream_of(rest.clone(), 200_000),
            opts,
            progress,
            CancellationToken::new(),
        )
        .await
        .expect("write_stream");
    assert_eq!(end, total, "the offset behind the last byte");
    // Chunks 1 and 2 are rewritten as zeroes, chunk 3 gets the data, chunk 4 (zero, behind
    // dirty_until) is skipped and keeps what the earlier write left there.
    let head = read_all(b, &img, None).await;
    assert_eq!(
        &head[..CHUNK],
        &earlier[..CHUNK],
        "before the start: untouched"
    );
    assert!(
        head[CHUNK..3 * CHUNK].iter().all(|&x| x == 0),
        "zero chunks below dirty_until are written"
    );
    assert_eq!(&head[3 * CHUNK..4 * CHUNK], &rest[2 * CHUNK..3 * CHUNK]);
    assert_eq!(
        &head[4 * CHUNK..5 * CHUNK],
        &earlier[4 * CHUNK..5 * CHUNK],
        "a zero chunk behind dirty_until is skipped"
    );
    let reports = reports.lock().expect("progress log").clone();
    assert!(
        reports.iter().all(|r| r.0 >= start),
        "progress counts from the start"
    );
    assert_eq!(reports.last(), Some(&(total, total)));
    cleanup(b, ns).await;
}

/// A stream longer than the image is `InvalidArgument`.
pub(super) async fn write_stream_beyond_the_image_size_is_invalid(b: &dyn BlockBackend, ns: &str) {
    cleanup(b, ns).await;
    let img = name(ns, "img");
    b.create_image(&img, 1024 * 1024).await.expect("create");
    let res = b
        .write_stream(
            &img,
            stream_of(pattern(1024 * 1024 + 1, 15), 65536),
            WriteOptions::default(),
            no_progress(),
            CancellationToken::new(),
        )
        .await;
    assert_err!(res, InvalidArgument, "write_stream past the end");
    cleanup(b, ns).await;
}

/// A `write_stream` whose token is cancelled returns `Cancelled`.
pub(super) async fn cancelled_write_stream_returns_cancelled(b: &dyn BlockBackend, ns: &str) {
    cleanup(b, ns).await;
    let img = name(ns, "img");
    b.create_image(&img, SIZE).await.expect("create");
    let cancel = CancellationToken::new();
    cancel.cancel();
    let res = b
        .write_stream(
            &img,
            stream_of(pattern(2 * 1024 * 1024, 16), 65536),
            WriteOptions::default(),
            no_progress(),
            cancel,
        )
        .await;
    assert_err!(res, Cancelled, "cancelled write_stream");
    cleanup(b, ns).await;
}
