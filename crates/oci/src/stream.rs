//! The verifying blob stream: passes chunks through as they arrive (never buffers the layer),
//! counts and hashes them, and ends with an `InvalidData` error instead of a clean end when the size
//! or the sha256 digest differs from the descriptor.

use std::io;
use std::time::Duration;

use crate::BlobStream;
use crate::Error;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use sha2::{Digest as _, Sha256};

struct State<S> {
    inner: S,
    hasher: Sha256,
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

/// Wraps a body stream. Transport failures become `io::Error`s wrapping
/// [`Error::Unavailable`] (kind `TimedOut` when no chunk arrived within `idle`).
pub fn verifying<S, E>(
    inner: S,
    expected_digest: &str,
    expected_size: u64,
    idle: Duration,
) -> BlobStream
where
    S: Stream<Item = Result<Bytes, E>> + Send + Unpin + 'static,
    E: std::fmt::Display + Send + 'static,
{
    let state = State {
        inner,
        hasher: Sha256::new(),
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
                st.hasher.update(&chunk);
                Some((Ok(chunk), st))
            }
            Some(Err(e)) => {
                st.done = true;
                let err = io::Error::other(Error::Unavailable(format!(
                    "blob {}: download failed after {} bytes: {e}",
                    st.expected_digest, st.seen
                )));
                Some((Err(err), st))
            }
            None => {
                st.done = true;
                let actual = format!("sha256:{}", hex::encode(st.hasher.finalize_reset()));
                if st.seen != st.expected_size {
                    let err = digest_mismatch(format!(
                        "blob {}: got {} bytes, its descriptor says {}",
                        st.expected_digest, st.seen, st.expected_size
                    ));
                    Some((Err(err), st))
                } else if actual != st.expected_digest {
                    let err = digest_mismatch(format!(
                        "blob {}: content hashes to {actual}",
                        st.expected_digest
                    ));
                    Some((Err(err), st))
                } else {
                    None
                }
            }
        }
    }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use futures::TryStreamExt;

    fn chunks(parts: &[&'static [u8]]) -> impl Stream<Item = Result<Bytes, String>> + Unpin {
        futures::stream::iter(
            parts
                .iter()
                .map(|p| Ok(Bytes::from_static(p)))
                .collect::<Vec<_>>(),
        )
    }

    fn digest(data: &[u8]) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(data)))
    }

    #[tokio::test]
    async fn intact_data_passes_through_chunk_by_chunk() {
        let s = verifying(
            chunks(&[b"hello ", b"world"]),
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
            chunks(&[b"hello ", b"w0rld"]),
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
            chunks(&[b"hello"]),
            &digest(b"hello world"),
            11,
            Duration::from_secs(5),
        );
        let err = short.try_collect::<Vec<_>>().await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let long = verifying(
            chunks(&[b"hello world!"]),
            &digest(b"hello world"),
            11,
            Duration::from_secs(5),
        );
        let err = long.try_collect::<Vec<_>>().await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn a_stalled_body_times_out() {
        tokio::time::pause();
        let stalled = futures::stream::pending::<Result<Bytes, String>>();
        let s = verifying(stalled, &digest(b""), 0, Duration::from_secs(30));
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

    fn run(data: &[u8], cuts: &[usize], digest: &str, size: u64) -> io::Result<Vec<u8>> {
        let mut parts = Vec::new();
        let mut pos = 0;
        for &c in cuts {
            let end = (pos + c).min(data.len());
            parts.push(Ok::<_, String>(Bytes::copy_from_slice(&data[pos..end])));
            pos = end;
        }
        parts.push(Ok(Bytes::copy_from_slice(&data[pos..])));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let s = verifying(
                futures::stream::iter(parts),
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
