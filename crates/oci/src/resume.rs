//! The resumed-rootfs verifier: owns the sha256 check of a blob that is downloaded only from an
//! offset on. `oci-client` verifies a whole blob (`200`) but not a partial one (`206`), so the
//! digest is checked here over the whole blob: the bytes before the offset, read back by the
//! caller and handed in as a stream, then the rest as it passes through.
//!
//! [`verify_resumed`] reads the prefix to its end and hashes it before it polls the rest at all,
//! then passes the rest on chunk by chunk, hashing each chunk, and ends cleanly only when the
//! digest of prefix + rest is the blob's. Neither part is ever buffered whole. It keeps no time
//! limit of its own: the rest is expected to come through [`crate::stream::guard`] (idle timeout
//! and size of the HTTP body), and the prefix, read from a local device, is not timed.
//!
//! Failures end the stream with one `io::Error`:
//! - a prefix of more or fewer than `offset` bytes, or a whole blob hashing to another digest:
//!   kind `InvalidData` wrapping [`Error::DigestMismatch`] ([`crate::digest_mismatch`]);
//! - an `Err` item of the prefix: kind `Other` wrapping [`Error::Unavailable`]
//!   (`blob …: reading the first <offset> bytes back: …`);
//! - an `Err` item of the rest: passed on as it is (the guard has classified it).

use std::io;

use bytes::Bytes;
use futures::StreamExt;
use sha2::{Digest as _, Sha256};

use crate::stream::digest_mismatch;
use crate::{BlobStream, Error};

/// Where [`verify_resumed`] is.
enum Phase {
    /// The prefix has not been read yet.
    Prefix(BlobStream),
    /// The prefix was hashed; the rest is passing through.
    Rest,
    /// An error was yielded or the stream ended.
    Done,
}

struct State {
    phase: Phase,
    rest: BlobStream,
    hasher: Sha256,
    digest: String,
    offset: u64,
}

/// Yields the bytes of `rest` (the blob `digest` from `offset` on) once `prefix` (its first
/// `offset` bytes) was read and hashed, and verifies the digest of both at the end (module docs).
pub(crate) fn verify_resumed(
    prefix: BlobStream,
    rest: BlobStream,
    digest: &str,
    offset: u64,
) -> BlobStream {
    let state = State {
        phase: Phase::Prefix(prefix),
        rest,
        hasher: Sha256::new(),
        digest: digest.to_string(),
        offset,
    };
    Box::pin(futures::stream::unfold(state, |mut st| async move {
        // Done while the prefix is read: an error there ends the stream.
        st.phase = match std::mem::replace(&mut st.phase, Phase::Done) {
            Phase::Prefix(prefix) => {
                if let Err(e) = hash_prefix(&mut st, prefix).await {
                    return Some((Err(e), st));
                }
                Phase::Rest
            }
            other => other,
        };
        if !matches!(st.phase, Phase::Rest) {
            return None;
        }
        match st.rest.next().await {
            Some(Ok(chunk)) => {
                st.hasher.update(&chunk);
                Some((Ok(chunk), st))
            }
            Some(Err(e)) => {
                st.phase = Phase::Done;
                Some((Err(e), st))
            }
            None => {
                st.phase = Phase::Done;
                let actual = format!("sha256:{}", hex::encode(st.hasher.clone().finalize()));
                if actual == st.digest {
                    None
                } else {
                    let err = digest_mismatch(format!(
                        "blob {}: content hashes to {actual} (the first {} bytes read back, the \
                         rest downloaded)",
                        st.digest, st.offset
                    ));
                    Some((Err(err), st))
                }
            }
        }
    }))
}

/// Reads `prefix` to its end into the hasher; it must yield exactly `st.offset` bytes.
async fn hash_prefix(st: &mut State, mut prefix: BlobStream) -> io::Result<()> {
    let mut read = 0u64;
    while let Some(item) = prefix.next().await {
        let chunk: Bytes = item.map_err(|e| {
            io::Error::other(Error::Unavailable(format!(
                "blob {}: reading the first {} bytes back: {e}",
                st.digest, st.offset
            )))
        })?;
        read += chunk.len() as u64;
        if read > st.offset {
            return Err(digest_mismatch(format!(
                "blob {}: the bytes read back run past the resume offset {}",
                st.digest, st.offset
            )));
        }
        st.hasher.update(&chunk);
    }
    if read < st.offset {
        return Err(digest_mismatch(format!(
            "blob {}: only {read} of the first {} bytes could be read back",
            st.digest, st.offset
        )));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use futures::TryStreamExt;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::task::Poll;

    const BLOB: &[u8] = b"the whole blob, in two parts";

    fn digest(data: &[u8]) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(data)))
    }

    /// `data` cut into chunks of `size` bytes.
    fn chunks(data: &[u8], size: usize) -> BlobStream {
        let parts: Vec<io::Result<Bytes>> = data
            .chunks(size)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        Box::pin(futures::stream::iter(parts))
    }

    fn resumed(prefix: &[u8], rest: &[u8], offset: u64) -> BlobStream {
        verify_resumed(chunks(prefix, 3), chunks(rest, 5), &digest(BLOB), offset)
    }

    fn assert_digest_mismatch(err: &io::Error) {
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err:?}");
        let inner = err.get_ref().unwrap().downcast_ref::<Error>().unwrap();
        assert!(matches!(inner, Error::DigestMismatch(_)), "{inner:?}");
    }

    #[tokio::test]
    async fn the_right_prefix_passes_only_the_rest_through_and_ends_cleanly() {
        for offset in [1, 9, BLOB.len() - 1] {
            let s = resumed(&BLOB[..offset], &BLOB[offset..], offset as u64);
            let got: Vec<Bytes> = s.try_collect().await.unwrap();
            assert_eq!(got.concat(), &BLOB[offset..], "offset {offset}");
        }
    }

    #[tokio::test]
    async fn a_wrong_prefix_byte_fails_at_the_end_with_invalid_data() {
        let mut prefix = BLOB[..9].to_vec();
        prefix[4] ^= 0x20;
        let mut s = resumed(&prefix, &BLOB[9..], 9);
        let mut passed = Vec::new();
        let err = loop {
            match s.next().await.unwrap() {
                Ok(chunk) => passed.extend_from_slice(&chunk),
                Err(e) => break e,
            }
        };
        assert_eq!(passed, &BLOB[9..], "the rest passes before the verdict");
        assert_digest_mismatch(&err);
        let msg = err.get_ref().unwrap().to_string();
        assert!(msg.contains("content hashes to"), "{msg}");
        assert!(s.next().await.is_none());
    }

    #[tokio::test]
    async fn a_short_or_long_prefix_fails_before_any_of_the_rest() {
        let mut short = resumed(&BLOB[..8], &BLOB[9..], 9);
        let err = short.next().await.unwrap().unwrap_err();
        assert_digest_mismatch(&err);
        assert!(
            err.to_string().contains("only 8 of the first 9 bytes"),
            "{err}"
        );
        assert!(short.next().await.is_none());

        let mut long = resumed(&BLOB[..10], &BLOB[9..], 9);
        let err = long.next().await.unwrap().unwrap_err();
        assert_digest_mismatch(&err);
        assert!(
            err.to_string().contains("run past the resume offset 9"),
            "{err}"
        );
        assert!(long.next().await.is_none());
    }

    #[tokio::test]
    async fn a_prefix_error_ends_the_stream_as_unavailable() {
        let prefix: BlobStream = Box::pin(futures::stream::iter(vec![
            Ok(Bytes::copy_from_slice(&BLOB[..4])),
            Err(io::Error::other("device gone")),
        ]));
        let mut s = verify_resumed(prefix, chunks(&BLOB[9..], 5), &digest(BLOB), 9);
        let err = s.next().await.unwrap().unwrap_err();
        let inner = err.get_ref().unwrap().downcast_ref::<Error>().unwrap();
        let Error::Unavailable(msg) = inner else {
            panic!("{inner:?}")
        };
        assert!(
            msg.contains("reading the first 9 bytes back: device gone"),
            "{msg}"
        );
        assert!(s.next().await.is_none());
    }

    #[tokio::test]
    async fn a_rest_error_is_passed_on_unchanged() {
        let rest: BlobStream = Box::pin(futures::stream::iter(vec![
            Ok(Bytes::copy_from_slice(&BLOB[9..12])),
            Err(io::Error::new(io::ErrorKind::TimedOut, "stalled")),
        ]));
        let mut s = verify_resumed(chunks(&BLOB[..9], 4), rest, &digest(BLOB), 9);
        assert!(s.next().await.unwrap().is_ok());
        let err = s.next().await.unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(s.next().await.is_none());
    }

    #[tokio::test]
    async fn the_rest_is_not_read_before_the_prefix_is_consumed() {
        let rest_polled = Arc::new(AtomicBool::new(false));
        let flag = rest_polled.clone();
        let mut tail = Some(Bytes::copy_from_slice(&BLOB[9..]));
        let rest: BlobStream = Box::pin(futures::stream::poll_fn(move |_| {
            flag.store(true, Ordering::SeqCst);
            Poll::Ready(tail.take().map(Ok))
        }));
        // The prefix arrives in two parts; the second only when the test sends it.
        let (tx, rx) = futures::channel::mpsc::unbounded::<io::Result<Bytes>>();
        tx.unbounded_send(Ok(Bytes::copy_from_slice(&BLOB[..5])))
            .unwrap();
        let mut s = verify_resumed(Box::pin(rx), rest, &digest(BLOB), 9);

        let pending = futures::poll!(s.next());
        assert!(pending.is_pending(), "the prefix is not finished");
        assert!(!rest_polled.load(Ordering::SeqCst), "rest polled too early");

        tx.unbounded_send(Ok(Bytes::copy_from_slice(&BLOB[5..9])))
            .unwrap();
        let pending = futures::poll!(s.next());
        assert!(pending.is_pending(), "the prefix has not ended yet");
        assert!(!rest_polled.load(Ordering::SeqCst), "rest polled too early");

        drop(tx);
        let first = s.next().await.unwrap().unwrap();
        assert!(rest_polled.load(Ordering::SeqCst));
        assert_eq!(first, &BLOB[9..]);
        assert!(s.next().await.is_none());
    }
}
