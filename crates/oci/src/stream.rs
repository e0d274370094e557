//! The rootfs stream guard: passes chunks through as they arrive (never buffers the layer), counts
//! them against the descriptor size, bounds the wait for each chunk, and turns every failure into
//! the `io::Error` the crate promises.
//!
//! The sha256 check itself is `oci-client`'s: its blob stream hashes the body and ends with an
//! `io::Error` of kind `Other` wrapping [`oci_client::errors::DigestError`] on a mismatch. This
//! guard adds what that stream does not do (see the crate docs, "Why hand-written"):
//! - the descriptor size: more bytes than described fail at once (a broken or hostile registry
//!   cannot push a volume past the layer size), fewer fail at the end, and a wrong size with the
//!   right digest fails too;
//! - the kind: a digest or size mismatch is `InvalidData` wrapping [`Error::DigestMismatch`], a
//!   stall longer than the idle timeout is `TimedOut` wrapping [`Error::Unavailable`], a broken
//!   body is `Other` wrapping [`Error::Unavailable`].

use std::io;
use std::time::Duration;

use crate::BlobStream;
use crate::Error;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use oci_client::errors::DigestError;

struct State<S> {
    inner: S,
    seen: u64,
    expected_digest: String,
    expected_size: u64,
    idle: Duration,
    done: bool,
}

/// The `io::Error` a stream yields for a corrupt layer: kind `InvalidData`, wrapping
/// [`Error::DigestMismatch`] (callers can `downcast_ref` it).
pub fn digest_mismatch(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, Error::DigestMismatch(msg))
}

/// Maps an error of the inner (digest-verifying) stream: a digest verdict becomes
/// [`digest_mismatch`], anything else a broken download ([`Error::Unavailable`]).
fn inner_error(st: &State<impl Sized>, e: io::Error) -> io::Error {
    match e.get_ref().and_then(|i| i.downcast_ref::<DigestError>()) {
        Some(DigestError::VerificationError { actual, .. }) => digest_mismatch(format!(
            "blob {}: content hashes to {actual}",
            st.expected_digest
        )),
        _ => io::Error::other(Error::Unavailable(format!(
            "blob {}: download failed after {} bytes: {e}",
            st.expected_digest, st.seen
        ))),
    }
}

/// Guards a digest-verifying body stream (see the module docs). `expected_digest` only names the
/// blob in messages.
pub fn guard<S>(inner: S, expected_digest: &str, expected_size: u64, idle: Duration) -> BlobStream
where
    S: Stream<Item = io::Result<Bytes>> + Send + Unpin + 'static,
{
    let state = State {
        inner,
        seen: 0,
        expected_digest: expected_digest.to_string(),
        expected_size,
        idle,
        done: false,
    };
    Box::pin(futures::stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        let next = match tokio::time::timeout(st.idle, st.inner.next()).await {
            Ok(n) => n,
            Err(_) => {
                st.done = true;
                let err = io::Error::new(
                    io::ErrorKind::TimedOut,
                    Error::Unavailable(format!(
                        "blob {}: no data for {:?} after {} bytes",
                        st.expected_digest, st.idle, st.seen
                    )),
                );
                return Some((Err(err), st));
            }
        };
        match next {
            Some(Ok(chunk)) => {
                st.seen += chunk.len() as u64;
                if st.seen > st.expected_size {
                    st.done = true;
                    let err = digest_mismatch(format!(
                        "blob {}: more than the {} bytes of its descriptor",
                        st.expected_digest, st.expected_size
                    ));
                    return Some((Err(err), st));
                }
                Some((Ok(chunk), st))
            }
            Some(Err(e)) => {
                st.done = true;
                let err = inner_error(&st, e);
                Some((Err(err), st))
            }
            None => {
                st.done = true;
                if st.seen != st.expected_size {
                    let err = digest_mismatch(format!(
                        "blob {}: got {} bytes, its descriptor says {}",
                        st.expected_digest, st.seen, st.expected_size
                    ));
                    Some((Err(err), st))
                } else {
                    None
                }
            }
        }
    }))
}

/// A stand-in for `oci-client`'s verifying blob stream in unit tests: hashes the chunks and ends
/// with the error that stream ends with (kind `Other` wrapping `DigestError::VerificationError`).
/// The real one is exercised against a registry in `tests/rootfs.rs`.
#[cfg(test)]
pub(crate) fn verified_like_oci_client(
    parts: Vec<Bytes>,
    expected_digest: &str,
) -> impl Stream<Item = io::Result<Bytes>> + Send + Unpin + 'static {
    use sha2::{Digest as _, Sha256};
    let expected = expected_digest.to_string();
    let mut hasher = Sha256::new();
    for p in &parts {
        hasher.update(p);
    }
    let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
    let verdict = (actual != expected).then(|| {
        Err(io::Error::other(DigestError::VerificationError {
            expected,
            actual,
        }))
    });
    futures::stream::iter(parts.into_iter().map(Ok).chain(verdict))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use futures::TryStreamExt;
    use sha2::{Digest as _, Sha256};

    /// The stand-in verifier over `parts`, then the guard.
    fn verifying(parts: &[&'static [u8]], digest: &str, size: u64, idle: Duration) -> BlobStream {
        let parts = parts.iter().map(|p| Bytes::from_static(p)).collect();
        guard(verified_like_oci_client(parts, digest), digest, size, idle)
    }

    fn digest(data: &[u8]) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(data)))
    }

    #[tokio::test]
    async fn intact_data_passes_through_chunk_by_chunk() {
        let s = verifying(
            &[b"hello ", b"world"],
            &digest(b"hello world"),
            11,
            Duration::from_secs(5),
        );
        let got: Vec<Bytes> = s.try_collect().await.unwrap();
        assert_eq!(
            got,
            vec![Bytes::from_static(b"hello "), Bytes::from_static(b"world")]
        );
    }

    #[tokio::test]
    async fn corrupt_data_fails_at_the_end_with_invalid_data() {
        let mut s = verifying(
            &[b"hello ", b"w0rld"],
            &digest(b"hello world"),
            11,
            Duration::from_secs(5),
        );
        assert!(s.next().await.unwrap().is_ok());
        assert!(s.next().await.unwrap().is_ok());
        let err = s.next().await.unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let inner = err.get_ref().unwrap().downcast_ref::<Error>().unwrap();
        assert!(matches!(inner, Error::DigestMismatch(_)));
        assert!(s.next().await.is_none());
    }

    #[tokio::test]
    async fn short_and_long_data_fail_with_invalid_data() {
        let short = verifying(
            &[b"hello"],
            &digest(b"hello world"),
            11,
            Duration::from_secs(5),
        );
        let err = short.try_collect::<Vec<_>>().await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let long = verifying(
            &[b"hello world!"],
            &digest(b"hello world"),
            11,
            Duration::from_secs(5),
        );
        let err = long.try_collect::<Vec<_>>().await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn the_right_digest_with_the_wrong_descriptor_size_fails_with_invalid_data() {
        // oci-client's stream accepts this (it checks only the digest); the guard does not.
        let s = verifying(
            &[b"hello world"],
            &digest(b"hello world"),
            5,
            Duration::from_secs(5),
        );
        let err = s.try_collect::<Vec<_>>().await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let s = verifying(
            &[b"hello world"],
            &digest(b"hello world"),
            12,
            Duration::from_secs(5),
        );
        let err = s.try_collect::<Vec<_>>().await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn a_broken_body_is_unavailable() {
        let broken = futures::stream::iter(vec![
            Ok(Bytes::from_static(b"he")),
            Err(io::Error::other("connection reset")),
        ]);
        let err = guard(broken, &digest(b"hello"), 5, Duration::from_secs(5))
            .try_collect::<Vec<_>>()
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::Other);
        let inner = err.get_ref().unwrap().downcast_ref::<Error>().unwrap();
        assert!(matches!(inner, Error::Unavailable(_)), "{inner:?}");
    }

    #[tokio::test]
    async fn a_stalled_body_times_out() {
        tokio::time::pause();
        let stalled = futures::stream::pending::<io::Result<Bytes>>();
        let s = guard(stalled, &digest(b""), 0, Duration::from_secs(30));
        let err = s.try_collect::<Vec<_>>().await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod properties {
    use super::*;
    use futures::TryStreamExt;
    use proptest::prelude::*;
    use sha2::{Digest as _, Sha256};

    fn run(data: &[u8], cuts: &[usize], digest: &str, size: u64) -> io::Result<Vec<u8>> {
        let mut parts = Vec::new();
        let mut pos = 0;
        for &c in cuts {
            let end = (pos + c).min(data.len());
            parts.push(Bytes::copy_from_slice(&data[pos..end]));
            pos = end;
        }
        parts.push(Bytes::copy_from_slice(&data[pos..]));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let s = guard(
                verified_like_oci_client(parts, digest),
                digest,
                size,
                Duration::from_secs(5),
            );
            let chunks: Vec<Bytes> = s.try_collect().await?;
            Ok(chunks.concat())
        })
    }

    proptest! {
        #[test]
        fn intact_data_passes_unchanged_whatever_the_chunking(
            data in proptest::collection::vec(any::<u8>(), 0..4096),
            cuts in proptest::collection::vec(0usize..700, 0..12),
        ) {
            let digest = format!("sha256:{}", hex::encode(Sha256::digest(&data)));
            prop_assert_eq!(run(&data, &cuts, &digest, data.len() as u64).unwrap(), data);
        }

        #[test]
        fn any_flipped_byte_or_wrong_size_ends_in_invalid_data(
            data in proptest::collection::vec(any::<u8>(), 1..4096),
            cuts in proptest::collection::vec(0usize..700, 0..12),
            at in any::<prop::sample::Index>(),
            flip in 1u8..=255,
            size_delta in -3i64..=3,
        ) {
            let digest = format!("sha256:{}", hex::encode(Sha256::digest(&data)));
            let mut corrupt = data.clone();
            corrupt[at.index(data.len())] ^= flip;
            let err = run(&corrupt, &cuts, &digest, data.len() as u64).unwrap_err();
            prop_assert_eq!(err.kind(), io::ErrorKind::InvalidData);
            let size = (data.len() as i64 + size_delta).max(0) as u64;
            if size != data.len() as u64 {
                let err = run(&data, &cuts, &digest, size).unwrap_err();
                prop_assert_eq!(err.kind(), io::ErrorKind::InvalidData);
            }
        }
    }
}
