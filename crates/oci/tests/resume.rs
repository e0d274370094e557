//! `OciClient::open_rootfs_from` against a real registry on loopback (which serves `Range`
//! requests with `206`), through a byte-counting proxy, and against fakes that cannot serve
//! ranges (`200` whatever the range, `206` of the wrong length, `416`).
#![allow(clippy::unwrap_used)]

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use oci::{BlobStream, Error, OciClient, OciOptions, Rootfs};
use registry_fixture::{
    pattern, sha256, CountingProxy, IronImage, RangeAnswer, RangeFake, TestRegistry,
};

/// Headers and the small documents (index, manifest, config) of one open, generously.
const OVERHEAD: u64 = 16 * 1024;

fn source() -> OciClient {
    OciClient::new(OciOptions {
        connect_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(10),
        read_timeout: Duration::from_secs(10),
        ..OciOptions::default()
    })
    .unwrap()
}

/// `data` as the caller reads it back from a device: 64 KiB chunks.
fn prefix(data: &[u8]) -> BlobStream {
    let chunks: Vec<io::Result<Bytes>> = data
        .chunks(64 * 1024)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    Box::pin(futures::stream::iter(chunks))
}

/// A prefix that must never be read; the flag says whether it was.
fn unread_prefix() -> (BlobStream, Arc<AtomicBool>) {
    let polled = Arc::new(AtomicBool::new(false));
    let flag = polled.clone();
    let s = futures::stream::poll_fn(move |_| {
        flag.store(true, Ordering::SeqCst);
        std::task::Poll::Ready(Some(Err(io::Error::other("the prefix was read"))))
    });
    (Box::pin(s), polled)
}

async fn open_from(src: &OciClient, reference: &str, offset: u64, pre: BlobStream) -> Rootfs {
    match src.open_rootfs_from(reference, None, offset, pre).await {
        Ok(r) => r,
        Err(e) => panic!("open_rootfs_from({reference}, {offset}): {e:?}"),
    }
}

async fn read_all(r: Rootfs) -> io::Result<Vec<u8>> {
    let chunks: Vec<Bytes> = r.data.try_collect().await?;
    Ok(chunks.concat())
}

/// Reads `data` to its end and returns the bytes it yielded before its error.
async fn read_to_error(mut data: BlobStream) -> (usize, io::Error) {
    let mut got = 0;
    loop {
        match data.next().await {
            Some(Ok(chunk)) => got += chunk.len(),
            Some(Err(e)) => {
                assert!(data.next().await.is_none(), "nothing after the error");
                return (got, e);
            }
            None => panic!("the stream must not end cleanly"),
        }
    }
}

fn assert_digest_mismatch(err: &io::Error) {
    assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err:?}");
    let inner = err.get_ref().and_then(|e| e.downcast_ref::<Error>());
    assert!(matches!(inner, Some(Error::DigestMismatch(_))), "{err:?}");
}

#[tokio::test]
async fn a_resumed_rootfs_yields_only_the_rest_and_verifies_the_whole_blob() {
    let reg = TestRegistry::start();
    let data = pattern(4 * 1024 * 1024 + 123, 7);
    reg.pusher()
        .push_image("os/resume", "v1", &IronImage::rootfs(data.clone()))
        .await;
    let src = source();
    let offset = data.len() * 7 / 10;
    let rootfs = open_from(
        &src,
        &reg.reference("os/resume", "v1"),
        offset as u64,
        prefix(&data[..offset]),
    )
    .await;
    assert_eq!(rootfs.start, offset as u64);
    assert_eq!(rootfs.size, data.len() as u64);
    assert_eq!(rootfs.layer_digest, sha256(&data));
    assert_eq!(read_all(rootfs).await.unwrap(), &data[offset..]);
}

#[tokio::test]
async fn a_resume_at_the_last_byte_yields_that_byte() {
    let reg = TestRegistry::start();
    let data = pattern(100_000, 8);
    reg.pusher()
        .push_image("os/last", "v1", &IronImage::rootfs(data.clone()))
        .await;
    let offset = data.len() - 1;
    let rootfs = open_from(
        &source(),
        &reg.reference("os/last", "v1"),
        offset as u64,
        prefix(&data[..offset]),
    )
    .await;
    assert_eq!(rootfs.start, offset as u64);
    assert_eq!(read_all(rootfs).await.unwrap(), &data[offset..]);
}

#[tokio::test]
async fn a_tampered_prefix_ends_the_resumed_stream_with_invalid_data() {
    let reg = TestRegistry::start();
    let data = pattern(2 * 1024 * 1024, 9);
    reg.pusher()
        .push_image("os/tampered", "v1", &IronImage::rootfs(data.clone()))
        .await;
    let offset = data.len() / 2;
    let mut written = data[..offset].to_vec();
    written[1234] ^= 0x01;
    let rootfs = open_from(
        &source(),
        &reg.reference("os/tampered", "v1"),
        offset as u64,
        prefix(&written),
    )
    .await;
    assert_eq!(rootfs.start, offset as u64);
    let (got, err) = read_to_error(rootfs.data).await;
    assert_eq!(got, data.len() - offset, "the whole rest arrives first");
    assert_digest_mismatch(&err);
}

#[tokio::test]
async fn a_short_prefix_ends_the_resumed_stream_before_any_of_the_rest() {
    let reg = TestRegistry::start();
    let data = pattern(1024 * 1024, 10);
    reg.pusher()
        .push_image("os/short", "v1", &IronImage::rootfs(data.clone()))
        .await;
    let offset = data.len() / 2;
    let rootfs = open_from(
        &source(),
        &reg.reference("os/short", "v1"),
        offset as u64,
        prefix(&data[..offset - 1]),
    )
    .await;
    let (got, err) = read_to_error(rootfs.data).await;
    assert_eq!(got, 0);
    assert_digest_mismatch(&err);
}

#[tokio::test]
async fn a_corrupted_rest_ends_the_resumed_stream_with_invalid_data() {
    let reg = TestRegistry::start();
    let data = pattern(1024 * 1024, 11);
    let pushed = reg
        .pusher()
        .push_image("os/badrest", "v1", &IronImage::rootfs(data.clone()))
        .await;
    reg.corrupt_blob(&pushed.rootfs.unwrap().digest);
    let offset = data.len() / 3;
    let rootfs = open_from(
        &source(),
        &reg.reference("os/badrest", "v1"),
        offset as u64,
        prefix(&data[..offset]),
    )
    .await;
    let (got, err) = read_to_error(rootfs.data).await;
    assert_eq!(got, data.len() - offset);
    assert_digest_mismatch(&err);
}

#[tokio::test]
async fn offset_zero_or_past_the_layer_opens_the_whole_layer_without_reading_the_prefix() {
    let reg = TestRegistry::start();
    let data = pattern(300_000, 12);
    reg.pusher()
        .push_image("os/whole", "v1", &IronImage::rootfs(data.clone()))
        .await;
    let src = source();
    let reference = reg.reference("os/whole", "v1");
    for offset in [0, data.len() as u64, data.len() as u64 + 1, u64::MAX] {
        let (pre, polled) = unread_prefix();
        let rootfs = open_from(&src, &reference, offset, pre).await;
        assert_eq!(rootfs.start, 0, "offset {offset}");
        assert_eq!(read_all(rootfs).await.unwrap(), data, "offset {offset}");
        assert!(!polled.load(Ordering::SeqCst), "offset {offset}");
    }
}

#[tokio::test]
async fn a_resumed_download_transfers_only_the_rest_of_the_blob() {
    let reg = TestRegistry::start();
    let data = pattern(8 * 1024 * 1024, 13);
    reg.pusher()
        .push_image("os/counted", "v1", &IronImage::rootfs(data.clone()))
        .await;
    let upstream: SocketAddr = reg.host().parse().unwrap();
    let proxy = CountingProxy::start(upstream).unwrap();
    let reference = format!("{}/os/counted:v1", proxy.host());
    let src = source();
    let size = data.len() as u64;

    let whole = src.open_rootfs(&reference, None).await.unwrap();
    assert_eq!(read_all(whole).await.unwrap(), data);
    assert!(proxy.served() >= size, "{} < {size}", proxy.served());

    proxy.reset();
    let offset = size * 7 / 10;
    let rootfs = open_from(&src, &reference, offset, prefix(&data[..offset as usize])).await;
    assert_eq!(rootfs.start, offset);
    assert_eq!(read_all(rootfs).await.unwrap(), &data[offset as usize..]);
    let served = proxy.served();
    assert!(served >= size - offset, "{served}");
    assert!(
        served <= size - offset + OVERHEAD,
        "a resumed download fetched {served} bytes; the rest is {}",
        size - offset
    );
}

/// Opens the image pushed to `reg` through a [`RangeFake`] answering ranges with `answer`, resumed
/// at 60% with a prefix that must stay unread, and checks the whole verified layer comes instead.
async fn a_fake_that_cannot_serve_ranges_gives_the_whole_layer(answer: RangeAnswer) {
    let reg = TestRegistry::start();
    let data = pattern(1024 * 1024 + 5, 14);
    reg.pusher()
        .push_image("os/norange", "v1", &IronImage::rootfs(data.clone()))
        .await;
    let fake = RangeFake::start(reg.host(), answer).await;
    let offset = data.len() as u64 * 6 / 10;
    let (pre, polled) = unread_prefix();
    let reference = format!("{}/os/norange:v1", fake.host());
    let rootfs = open_from(&source(), &reference, offset, pre).await;
    assert_eq!(rootfs.start, 0, "{answer:?}");
    assert_eq!(rootfs.size, data.len() as u64);
    assert_eq!(read_all(rootfs).await.unwrap(), data, "{answer:?}");
    assert!(!polled.load(Ordering::SeqCst), "{answer:?}: prefix read");
    assert_eq!(
        fake.ranges().await,
        vec![format!("bytes={offset}-")],
        "{answer:?}: one ranged request"
    );
}

#[tokio::test]
async fn a_registry_that_ignores_the_range_gives_the_whole_verified_layer() {
    a_fake_that_cannot_serve_ranges_gives_the_whole_layer(RangeAnswer::Ignored).await;
}

#[tokio::test]
async fn a_partial_answer_of_the_wrong_length_falls_back_to_the_whole_layer() {
    a_fake_that_cannot_serve_ranges_gives_the_whole_layer(RangeAnswer::WrongLength).await;
}

#[tokio::test]
async fn a_refused_range_falls_back_to_the_whole_layer() {
    a_fake_that_cannot_serve_ranges_gives_the_whole_layer(RangeAnswer::NotSatisfiable).await;
}

#[tokio::test]
async fn a_corrupted_blob_from_a_registry_that_ignores_the_range_fails_with_invalid_data() {
    let reg = TestRegistry::start();
    let data = pattern(512 * 1024, 15);
    let pushed = reg
        .pusher()
        .push_image("os/norange-bad", "v1", &IronImage::rootfs(data.clone()))
        .await;
    reg.corrupt_blob(&pushed.rootfs.unwrap().digest);
    let fake = RangeFake::start(reg.host(), RangeAnswer::Ignored).await;
    let offset = data.len() as u64 / 2;
    let reference = format!("{}/os/norange-bad:v1", fake.host());
    let rootfs = open_from(
        &source(),
        &reference,
        offset,
        prefix(&data[..offset as usize]),
    )
    .await;
    assert_eq!(rootfs.start, 0);
    let (got, err) = read_to_error(rootfs.data).await;
    assert_eq!(got, data.len());
    assert_digest_mismatch(&err);
}
