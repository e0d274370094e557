//! A real `cephvol` daemon in a temporary directory, driven over its unix socket.
//!
//! [`Daemon::start`] runs the binary (`serve --address <tmp>/cephvol.sock --data-dir <tmp>/data
//! --log-format json --log-level debug` plus the test's flags; `--address=`/`--data-dir=` given by
//! the test replace the defaults), captures stdout and stderr in
//! `<tmp>/daemon.log`, waits until the socket accepts gRPC calls and hands out tonic clients. The
//! binary is the one named by `CEPHVOL_BIN`, else the `cephvol-e2e` target of this package (see
//! [`cephvol_bin!`](crate::cephvol_bin)). Dropping a `Daemon` kills it.
//!
//! Waiting: the daemon works asynchronously, so tests poll with [`eventually`] (bounded, 50 ms
//! between attempts) instead of sleeping.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use cli::client::Clients;
use iri::meta_v1::ObjectMetadata;
use iri::volume_v1 as pb;
use tempfile::TempDir;

/// The path of the daemon binary under test: `$CEPHVOL_BIN`, else this package's `cephvol-e2e`.
/// A macro so that `CARGO_BIN_EXE_*` is read where it is defined (in the integration tests).
#[macro_export]
macro_rules! cephvol_bin {
    () => {
        std::env::var_os("CEPHVOL_BIN")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_BIN_EXE_cephvol-e2e")))
    };
}

/// How long the daemon may take to start listening.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long provisioning steps may take in tests.
pub const WAIT: Duration = Duration::from_secs(120);

/// A running daemon (killed on drop).
pub struct Daemon {
    child: Option<Child>,
    /// The daemon's temporary directory (socket, data, log).
    pub dir: TempDir,
    /// The socket path.
    pub socket: PathBuf,
    /// The data directory.
    pub data_dir: PathBuf,
    /// The binary.
    pub bin: PathBuf,
    log: PathBuf,
}

/// Polls `check` every 50 ms until it returns `Some`, for at most `timeout`; panics with `what`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Daemon {
    /// Starts the daemon with extra `flags` in a fresh temporary directory.
    pub async fn start(bin: PathBuf, flags: &[&str]) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        Daemon::start_in(bin, dir, flags).await
    }

    /// Starts the daemon in `dir` (reusing its data, e.g. after a restart).
    pub async fn start_in(bin: PathBuf, dir: TempDir, flags: &[&str]) -> Daemon {
        let mut d = Daemon::spawn(bin, dir, flags);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = d
                .child
                .as_mut()
                .and_then(|c| c.try_wait().expect("try_wait"))
            {
                panic!("daemon exited during start-up ({status}):\n{}", d.logs());
            }
            if std::os::unix::net::UnixStream::connect(&d.socket).is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not listen within {START_TIMEOUT:?}:\n{}",
                d.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        d
    }

    /// Spawns the daemon without waiting for it (start-up failure tests).
    pub fn spawn(bin: PathBuf, dir: TempDir, flags: &[&str]) -> Daemon {
        let given = |name: &str| {
            flags.iter().find_map(|f| {
                f.strip_prefix(name)
                    .and_then(|v| v.strip_prefix('='))
                    .map(PathBuf::from)
            })
        };
        let socket = given("--address").unwrap_or_else(|| dir.path().join("cephvol.sock"));
        let data_dir = given("--data-dir").unwrap_or_else(|| dir.path().join("data"));
        let log = dir.path().join("daemon.log");
        let mut args: Vec<String> = vec![
            "serve".into(),
            format!("--address={}", socket.display()),
            format!("--data-dir={}", data_dir.display()),
            "--log-format=json".into(),
            "--log-level=debug".into(),
        ];
        args.extend(
            flags
                .iter()
                .filter(|f| !f.starts_with("--address=") && !f.starts_with("--data-dir="))
                .map(|s| s.to_string()),
        );
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        let err = out.try_clone().expect("log file");
        let child = Command::new(&bin)
            .args(&args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", bin.display()));
        Daemon {
            child: Some(child),
            dir,
            socket,
            data_dir,
            bin,
            log,
        }
    }

    /// Everything the daemon wrote to stdout and stderr so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("running")
    }

    /// gRPC clients on the daemon's socket.
    pub async fn clients(&self) -> Clients {
        Clients::connect(&self.socket).await.expect("connect")
    }

    /// Sends `signal` and waits (at most `timeout`) for the exit status.
    pub async fn stop_with(
        &mut self,
        signal: rustix::process::Signal,
        timeout: Duration,
    ) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("pid");
        rustix::process::kill_process(pid, signal).expect("signal");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("daemon did not stop within {timeout:?}:\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM and wait for the exit status.
    pub async fn terminate(&mut self) -> ExitStatus {
        self.stop_with(rustix::process::Signal::TERM, Duration::from_secs(60))
            .await
    }

    /// Waits for the daemon to exit by itself (start-up failures).
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("spawned");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("daemon still running after {timeout:?}:\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The daemon's directory once it has exited (see [`Daemon::terminate`]).
    pub fn into_dir_after_exit(mut self) -> TempDir {
        assert!(self.child.is_none(), "stop the daemon first");
        let dir = tempfile::tempdir().expect("placeholder");
        std::mem::replace(&mut self.dir, dir)
    }

    /// Runs a CLI command of the same binary against this daemon (`--address` added).
    pub fn cli(&self, args: &[&str]) -> Output {
        cli_at(&self.bin, &self.socket, args, None)
    }

    /// Runs a CLI command with `stdin` as standard input.
    pub fn cli_stdin(&self, args: &[&str], stdin: &str) -> Output {
        cli_at(&self.bin, &self.socket, args, Some(stdin))
    }
}

/// Runs `bin args… --address unix://<socket>` (with `stdin` if given).
pub fn cli_at(bin: &Path, socket: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .arg(format!("--address=unix://{}", socket.display()))
        .env_remove("IRI_VOLUME_RUNTIME_ENDPOINT")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
    let mut child = cmd.spawn().expect("spawn cli");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
    }
    child.wait_with_output().expect("cli output")
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Labels from pairs.
pub fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A CreateVolume request of `size` bytes in class `class`.
pub fn volume_req(class: &str, size: i64, l: &[(&str, &str)]) -> pb::CreateVolumeRequest {
    pb::CreateVolumeRequest {
        volume: Some(pb::Volume {
            metadata: Some(ObjectMetadata {
                labels: labels(l),
                ..Default::default()
            }),
            spec: Some(pb::VolumeSpec {
                class: class.into(),
                resources: Some(pb::VolumeResources {
                    storage_bytes: size,
                }),
                ..Default::default()
            }),
            status: None,
        }),
    }
}

/// A restore request from snapshot `snapshot_id`.
pub fn restore_req(
    class: &str,
    size: i64,
    snapshot_id: &str,
    l: &[(&str, &str)],
) -> pb::CreateVolumeRequest {
    let mut r = volume_req(class, size, l);
    if let Some(spec) = r.volume.as_mut().and_then(|v| v.spec.as_mut()) {
        spec.volume_data_source = Some(pb::VolumeDataSource {
            image_data_source: None,
            snapshot_data_source: Some(pb::SnapshotDataSource {
                snapshot_id: snapshot_id.into(),
            }),
        });
    }
    r
}

/// A CreateVolumeSnapshot request for volume `volume_id`.
pub fn snapshot_req(volume_id: &str, l: &[(&str, &str)]) -> pb::CreateVolumeSnapshotRequest {
    pb::CreateVolumeSnapshotRequest {
        volume_snapshot: Some(pb::VolumeSnapshot {
            metadata: Some(ObjectMetadata {
                labels: labels(l),
                ..Default::default()
            }),
            spec: Some(pb::VolumeSnapshotSpec {
                volume_id: volume_id.into(),
            }),
            status: None,
        }),
    }
}

/// Id of a volume or snapshot reply.
pub fn id_of(md: &Option<ObjectMetadata>) -> String {
    md.as_ref().map(|m| m.id.clone()).expect("metadata")
}

/// Thin client helpers used by the tests.
pub mod ops {
    use super::*;

    /// The events `ListEvents` shows about object `id`: `(reason, message)`.
    pub async fn events(c: &mut Clients, id: &str) -> Vec<(String, String)> {
        c.runtime
            .list_events(pb::ListEventsRequest {
                filter: Some(pb::EventFilter {
                    id: id.into(),
                    ..Default::default()
                }),
            })
            .await
            .expect("ListEvents")
            .into_inner()
            .events
            .into_iter()
            .filter_map(|e| e.spec)
            .map(|s| (s.reason, s.message))
            .collect()
    }

    /// Creates a volume and returns its id.
    pub async fn create(c: &mut Clients, req: pb::CreateVolumeRequest) -> String {
        let v = c
            .runtime
            .create_volume(req)
            .await
            .expect("CreateVolume")
            .into_inner()
            .volume
            .expect("volume");
        id_of(&v.metadata)
    }

    /// The volume `id`, if listed.
    pub async fn get(c: &mut Clients, id: &str) -> Option<pb::Volume> {
        let req = pb::ListVolumesRequest {
            filter: Some(pb::VolumeFilter {
                id: id.into(),
                ..Default::default()
            }),
        };
        c.runtime
            .list_volumes(req)
            .await
            .expect("ListVolumes")
            .into_inner()
            .volumes
            .pop()
    }

    /// Every listed volume.
    pub async fn list(c: &mut Clients) -> Vec<pb::Volume> {
        c.runtime
            .list_volumes(pb::ListVolumesRequest::default())
            .await
            .expect("ListVolumes")
            .into_inner()
            .volumes
    }

    /// The snapshot `id`, if listed.
    pub async fn get_snapshot(c: &mut Clients, id: &str) -> Option<pb::VolumeSnapshot> {
        let req = pb::ListVolumeSnapshotsRequest {
            filter: Some(pb::VolumeSnapshotFilter {
                id: id.into(),
                ..Default::default()
            }),
        };
        c.runtime
            .list_volume_snapshots(req)
            .await
            .expect("ListVolumeSnapshots")
            .into_inner()
            .volume_snapshots
            .pop()
    }

    /// Every listed snapshot.
    pub async fn list_snapshots(c: &mut Clients) -> Vec<pb::VolumeSnapshot> {
        c.runtime
            .list_volume_snapshots(pb::ListVolumeSnapshotsRequest::default())
            .await
            .expect("ListVolumeSnapshots")
            .into_inner()
            .volume_snapshots
    }

    fn state(v: &pb::Volume) -> i32 {
        v.status.as_ref().map(|s| s.state).unwrap_or(-1)
    }

    /// Waits until volume `id` is AVAILABLE and returns it.
    pub async fn wait_available(c: &mut Clients, id: &str) -> pb::Volume {
        eventually(WAIT, &format!("volume {id} to become available"), || {
            let mut c = c.clone();
            let id = id.to_string();
            async move {
                let v = get(&mut c, &id).await?;
                assert_ne!(
                    state(&v),
                    pb::VolumeState::VolumeError as i32,
                    "volume {id} failed"
                );
                (state(&v) == pb::VolumeState::VolumeAvailable as i32).then_some(v)
            }
        })
        .await
    }

    /// Waits until snapshot `id` is READY and returns it.
    pub async fn wait_ready(c: &mut Clients, id: &str) -> pb::VolumeSnapshot {
        eventually(WAIT, &format!("snapshot {id} to become ready"), || {
            let mut c = c.clone();
            let id = id.to_string();
            async move {
                let s = get_snapshot(&mut c, &id).await?;
                let st = s.status.as_ref().map(|s| s.state).unwrap_or(-1);
                assert_ne!(
                    st,
                    pb::VolumeSnapshotState::VolumeSnapshotFailed as i32,
                    "snapshot {id} failed"
                );
                (st == pb::VolumeSnapshotState::VolumeSnapshotReady as i32).then_some(s)
            }
        })
        .await
    }

    /// Waits until volume `id` is no longer listed.
    pub async fn wait_volume_gone(c: &mut Clients, id: &str) {
        eventually(WAIT, &format!("volume {id} to be gone"), || {
            let mut c = c.clone();
            let id = id.to_string();
            async move { get(&mut c, &id).await.is_none().then_some(()) }
        })
        .await
    }

    /// Waits until snapshot `id` is no longer listed.
    pub async fn wait_snapshot_gone(c: &mut Clients, id: &str) {
        eventually(WAIT, &format!("snapshot {id} to be gone"), || {
            let mut c = c.clone();
            let id = id.to_string();
            async move { get_snapshot(&mut c, &id).await.is_none().then_some(()) }
        })
        .await
    }

    /// Deletes volume `id`.
    pub async fn delete(c: &mut Clients, id: &str) {
        c.runtime
            .delete_volume(pb::DeleteVolumeRequest {
                volume_id: id.into(),
            })
            .await
            .expect("DeleteVolume");
    }

    /// Deletes snapshot `id`.
    pub async fn delete_snapshot(c: &mut Clients, id: &str) {
        c.runtime
            .delete_volume_snapshot(pb::DeleteVolumeSnapshotRequest {
                volume_snapshot_id: id.into(),
            })
            .await
            .expect("DeleteVolumeSnapshot");
    }
}
