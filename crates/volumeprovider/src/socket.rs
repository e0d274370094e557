//! The daemon's unix socket: safe removal of a stale socket, binding with exact permissions, and
//! removal at shutdown.
//!
//! * An existing path that is **not a socket** is never removed: start-up fails.
//! * An existing socket that **answers a connect** belongs to a live process: start-up fails with
//!   "another process listens on …".
//! * A socket that refuses connections is stale and is removed.
//! * The new socket is bound inside a private `0700` directory next to the target, given its mode
//!   (`--socket-mode`, default `0600`) and then renamed into place, so it is never reachable with
//!   looser permissions, whatever the umask.
//! * Every accepted connection is served through [`grpc_authority::NormalizeAuthority`] (see
//!   [`incoming`]): gRPC C-core, grpc-java and grpc-swift clients send the percent-encoded socket
//!   path as `:authority`, which the HTTP/2 layer under tonic would refuse.

use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use grpc_authority::NormalizeAuthority;
use tokio_stream::{Stream, StreamExt};

use crate::error::{Error, Result};

/// A bound socket and the identity of its file (so that only our own file is removed later).
#[derive(Debug)]
pub struct BoundSocket {
    /// The listener (blocking std listener; convert with `tokio::net::UnixListener::from_std`).
    pub listener: UnixListener,
    /// The socket path.
    pub path: PathBuf,
    dev: u64,
    ino: u64,
}

impl BoundSocket {
    /// Removes the socket file if it is still the one this process bound.
    pub fn remove_file(&self) {
        if let Ok(md) = std::fs::symlink_metadata(&self.path) {
            if md.dev() == self.dev && md.ino() == self.ino {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

fn sock_err(path: &Path, reason: impl Into<String>) -> Error {
    Error::Socket {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Removes `path` if it is a stale socket; fails if it is something else or a live socket.
pub fn clear_stale(path: &Path) -> Result<()> {
    let md = match std::fs::symlink_metadata(path) {
        Ok(md) => md,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(sock_err(path, format!("cannot inspect: {e}"))),
    };
    if !md.file_type().is_socket() {
        return Err(sock_err(
            path,
            "exists and is not a socket; refusing to remove it",
        ));
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(sock_err(
            path,
            format!("another process listens on {}", path.display()),
        )),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused || e.kind() == ErrorKind::NotFound => {
            match std::fs::remove_file(path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
                Err(e) => Err(sock_err(path, format!("cannot remove stale socket: {e}"))),
            }
        }
        Err(e) => Err(sock_err(
            path,
            format!("cannot check whether the socket is live: {e}"),
        )),
    }
}

/// Binds `path` with permissions `mode` after clearing a stale socket (see the module docs).
/// Creates missing parent directories.
pub fn bind(path: &Path, mode: u32) -> Result<BoundSocket> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent)
        .map_err(|e| sock_err(path, format!("cannot create {}: {e}", parent.display())))?;
    clear_stale(path)?;

    let tmp_dir = parent.join(format!(
        ".cephvol-sock-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&tmp_dir)
        .map_err(|e| sock_err(path, format!("cannot create {}: {e}", tmp_dir.display())))?;
    let result = (|| {
        let tmp = tmp_dir.join("s");
        let listener =
            UnixListener::bind(&tmp).map_err(|e| sock_err(path, format!("bind: {e}")))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
            .map_err(|e| sock_err(path, format!("chmod {mode:o}: {e}")))?;
        std::fs::rename(&tmp, path)
            .map_err(|e| sock_err(path, format!("rename into place: {e}")))?;
        let md = std::fs::symlink_metadata(path).map_err(|e| sock_err(path, e.to_string()))?;
        Ok(BoundSocket {
            listener,
            path: path.to_path_buf(),
            dev: md.dev(),
            ino: md.ino(),
        })
    })();
    let _ = std::fs::remove_dir_all(&tmp_dir);
    result
}

/// The connections accepted on `listener`, each wrapped so that an `:authority` the HTTP/2 layer
/// would refuse (a socket path such as `tmp%2Fcephvol.sock`) reaches it as `localhost`; everything
/// else passes through unchanged (see the `grpc-authority` crate).
pub fn incoming(
    listener: tokio::net::UnixListener,
) -> impl Stream<Item = std::io::Result<NormalizeAuthority<tokio::net::UnixStream>>> {
    tokio_stream::wrappers::UnixListenerStream::new(listener)
        .map(|conn| conn.map(NormalizeAuthority::new))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_socket_gets_mode_0600_and_accepts_connections() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("sub/x.sock");
        let s = bind(&p, 0o600).expect("bind");
        let md = std::fs::symlink_metadata(&p).expect("exists");
        assert!(md.file_type().is_socket());
        assert_eq!(md.permissions().mode() & 0o777, 0o600);
        UnixStream::connect(&p).expect("connects");
        // no temporary directory is left behind
        let left: Vec<_> = std::fs::read_dir(p.parent().expect("parent"))
            .expect("ls")
            .collect();
        assert_eq!(left.len(), 1);
        s.remove_file();
        assert!(!p.exists());
    }

    #[test]
    fn the_socket_mode_flag_is_honoured() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("x.sock");
        let _s = bind(&p, 0o660).expect("bind");
        let md = std::fs::symlink_metadata(&p).expect("exists");
        assert_eq!(md.permissions().mode() & 0o777, 0o660);
    }

    #[test]
    fn a_stale_socket_is_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("x.sock");
        drop(UnixListener::bind(&p).expect("bind stale"));
        assert!(p.exists());
        let _s = bind(&p, 0o600).expect("stale socket replaced");
        UnixStream::connect(&p).expect("connects");
    }

    #[test]
    fn a_live_socket_is_not_taken_over() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("x.sock");
        let _live = UnixListener::bind(&p).expect("bind live");
        let e = bind(&p, 0o600).expect_err("must fail").to_string();
        assert!(e.contains("another process listens on"), "{e}");
    }

    #[test]
    fn a_regular_file_is_never_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("x.sock");
        std::fs::write(&p, "data").expect("write");
        let e = bind(&p, 0o600).expect_err("must fail").to_string();
        assert!(e.contains("not a socket"), "{e}");
        assert_eq!(std::fs::read_to_string(&p).expect("still there"), "data");
    }

    #[test]
    fn removal_spares_a_socket_that_replaced_ours() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("x.sock");
        let s = bind(&p, 0o600).expect("bind");
        std::fs::remove_file(&p).expect("rm");
        let _other = UnixListener::bind(&p).expect("other");
        s.remove_file();
        assert!(p.exists(), "someone else's socket must stay");
    }

    #[tokio::test]
    async fn accepted_connections_reach_the_server_with_a_percent_encoded_authority_replaced() {
        use tokio::io::AsyncReadExt;

        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("x.sock");
        let mut conns = Box::pin(incoming(tokio::net::UnixListener::bind(&p).expect("bind")));
        let client = tokio::spawn(async move {
            let s = tokio::net::UnixStream::connect(&p).await.expect("connect");
            let mut c = grpc_authority::raw_client::RawClient::handshake(s)
                .await
                .expect("handshake");
            // No server answers: the request ends when the test drops the connection.
            let headers = [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", "/volume.v1alpha1.VolumeRuntime/Version"),
                (":authority", "tmp%2Fx.sock"),
            ];
            let _ = c.request(&headers, &[]).await;
        });
        let mut conn = conns.next().await.expect("a connection").expect("accepted");
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        let contains = |seen: &[u8], needle: &[u8]| seen.windows(needle.len()).any(|w| w == needle);
        while !contains(&seen, b"localhost") {
            let read =
                tokio::time::timeout(std::time::Duration::from_secs(10), conn.read(&mut buf));
            let n = read
                .await
                .expect("the request arrives rewritten")
                .expect("read");
            assert!(n > 0, "the request never arrived rewritten: {seen:?}");
            seen.extend_from_slice(&buf[..n]);
        }
        assert!(!contains(&seen, b"%2F"));
        assert_eq!(conn.replaced(), 1);
        drop(conn);
        client.await.expect("client");
    }
}
