//! The daemon: start-up in a safe order, serving, and graceful shutdown.
//!
//! Start-up (everything that can be wrong is checked before anything starts, so a bad flag or
//! file never leaves a half-started daemon):
//! 1. flags validated; the volume class file loaded and validated (or the built-in class list);
//! 2. local backend: the data directory is created (0700) and locked (`flock`), so two daemons
//!    never share it; the KEK is loaded (`--ceph-kek-path`, exactly 32 bytes) or, on the local
//!    backend only, generated once under the data dir (`kek`, mode 0600);
//! 3. ceph backend: the key is resolved (key file, or the `[client.<user>]` section of the
//!    keyring) and written to a private 0600 key file for librados;
//! 4. the unix socket is bound (stale socket removed, live one refused), the metrics address too;
//! 5. block backend + stores opened, runner, event store, image source and controllers built; the
//!    controllers, event GC and metrics endpoint start, then gRPC is served. One log line says
//!    which backend runs and where the data lives.
//!
//! With the ceph backend every daemon serves the socket, but only the holder of the pool's leader
//! lease runs the controllers (`leader`); a daemon that loses the lease steps down and exits with
//! code 75. On the local backend the data directory lock makes the daemon the only writer.
//!
//! Shutdown on SIGTERM/SIGINT: stop accepting and finish in-flight RPCs, cancel the controllers
//! (each worker finishes its pass), drain the runner for `--shutdown-timeout` (then cancel what is
//! left; cancelled operations leave states the next start resumes), release the leader lease,
//! remove the socket file. A second signal cancels the runner at once.

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use controllers::{ControllerConfig, Controllers, ImageSource, Kek};
use rbd::BlockBackend;
use runner::{Runner, RunnerConfig, ShutdownMode};
use store::{Image, Snapshot, Store};
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::classes::VolumeClasses;
use crate::error::{Error, Result};
use crate::events::EventStore;
use crate::flags::{BackendKind, DaemonArgs};
use crate::leader::{Leadership, LeaseLock, LeaseTiming, Role};
use crate::metrics::{
    EventsCollector, LeaderCollector, Metrics, QueueCollector, RunnerCollector, StoreCollector,
};
use crate::server::{ServerConfig, ServerParts, VolumeServer};
use crate::socket;

/// Name of the generated KEK file under the data dir (local backend).
pub const KEK_FILE: &str = "kek";
/// Sub-directory of the data dir holding the object store (hostdir).
pub const STORE_DIR: &str = "store";
/// Sub-directory of the data dir holding the images (local block backend).
pub const IMAGES_DIR: &str = "images";
/// Reason given for encryption requests on the local backend.
pub const LOCAL_ENCRYPTION: &str = "encryption needs the ceph backend";

/// Loads the class file or the built-in list.
pub fn load_classes(args: &DaemonArgs) -> Result<VolumeClasses> {
    match &args.supported_volume_classes {
        Some(p) => VolumeClasses::load(p),
        None => Ok(VolumeClasses::builtin()),
    }
}

/// Creates `dir` (0700 when new).
fn ensure_dir(dir: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::DataDir {
            path: dir.to_path_buf(),
            reason: e.to_string(),
        })
}

/// An exclusive `flock` on `<data-dir>/.lock`, held for the daemon's lifetime.
#[derive(Debug)]
pub struct DataDirLock {
    _file: std::fs::File,
}

/// Locks the data directory so that a second daemon on it refuses to start.
pub fn lock_data_dir(dir: &Path) -> Result<DataDirLock> {
    let path = dir.join(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| Error::DataDir {
            path: dir.to_path_buf(),
            reason: format!("lock file: {e}"),
        })?;
    // The lock is released by the kernel when the file is closed (process exit included).
    if rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
        return Err(Error::DataDir {
            path: dir.to_path_buf(),
            reason: "another cephvol process uses this data directory".to_string(),
        });
    }
    Ok(DataDirLock { _file: file })
}

/// Loads the KEK from `path`, or (when `path` is `None`) from `<data-dir>/kek`, generating it once.
pub fn load_or_create_kek(path: Option<&Path>, data_dir: &Path) -> Result<(Kek, PathBuf, bool)> {
    if let Some(p) = path {
        let kek = Kek::from_file(p).map_err(|e| Error::Kek(e.to_string()))?;
        return Ok((kek, p.to_path_buf(), false));
    }
    let p = data_dir.join(KEK_FILE);
    if p.exists() {
        let kek = Kek::from_file(&p).map_err(|e| Error::Kek(e.to_string()))?;
        return Ok((kek, p, false));
    }
    let mut key = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut key);
    let tmp = data_dir.join(format!(".{KEK_FILE}.{}", std::process::id()));
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| Error::Kek(format!("creating {}: {e}", tmp.display())))?;
        f.write_all(&key)
            .and_then(|()| f.sync_all())
            .map_err(|e| Error::Kek(format!("writing {}: {e}", tmp.display())))?;
    }
    std::fs::rename(&tmp, &p)
        .map_err(|e| Error::Kek(format!("installing {}: {e}", p.display())))?;
    let kek = Kek::from_bytes(&key).map_err(|e| Error::Kek(e.to_string()))?;
    Ok((kek, p, true))
}

/// A private copy of the ceph key for librados, removed when dropped.
#[derive(Debug)]
pub struct KeyFile {
    path: PathBuf,
}

impl KeyFile {
    /// Writes `key` into a fresh 0600 file in a 0700 directory under the temp dir.
    pub fn write(key: &crate::keyring::SecretString) -> Result<KeyFile> {
        use std::io::Write;
        let dir = std::env::temp_dir().join(format!(
            "cephvol-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| Error::Key(format!("creating {}: {e}", dir.display())))?;
        let path = dir.join("key");
        let mut f = std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| Error::Key(format!("creating {}: {e}", path.display())))?;
        f.write_all(key.expose().as_bytes())
            .map_err(|e| Error::Key(format!("writing {}: {e}", path.display())))?;
        Ok(KeyFile { path })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for KeyFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        if let Some(d) = self.path.parent() {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// What the chosen backend gives the daemon.
struct Opened {
    block: Arc<dyn BlockBackend>,
    objects: Arc<dyn store::Backend>,
    /// The pool's leader lease (ceph); `None`: this daemon is the only writer (local).
    lease: Option<Arc<dyn LeaseLock>>,
    where_: String,
    _guards: Vec<Box<dyn std::any::Any + Send>>,
}

fn open_local(args: &DaemonArgs, data_dir: &Path) -> Result<Opened> {
    let store_dir = data_dir.join(STORE_DIR);
    let images_dir = data_dir.join(IMAGES_DIR);
    ensure_dir(&store_dir)?;
    ensure_dir(&images_dir)?;
    let objects = store::HostDirBackend::open(&store_dir).map_err(|e| {
        Error::Backend(format!("opening object store {}: {e}", store_dir.display()))
    })?;
    let block = rbd::local::LocalBackend::open(&images_dir, &args.pool()).map_err(|e| {
        Error::Backend(format!(
            "opening local images {}: {e}",
            images_dir.display()
        ))
    })?;
    Ok(Opened {
        block: Arc::new(block),
        objects: Arc::new(objects),
        lease: None,
        where_: format!("data in {}", data_dir.display()),
        _guards: Vec::new(),
    })
}

#[cfg(feature = "ceph")]
async fn open_ceph(args: &DaemonArgs) -> Result<Opened> {
    let key = crate::keyring::resolve_key(
        args.ceph_key_file.as_deref(),
        args.ceph_keyring_file.as_deref(),
        &args.ceph_user,
    )?;
    let key_file = KeyFile::write(&key)?;
    let cfg = ceph::CephConfig {
        conf_file: None,
        monitors: Some(args.ceph_monitors.clone()),
        user: args.ceph_user.clone(),
        keyring: None,
        key_file: Some(key_file.path().to_path_buf()),
        pool: args.ceph_pool.clone(),
        connect_timeout: args.ceph_connect_timeout,
        op_timeout: args.ceph_op_timeout,
        mon_timeout: args.ceph_mon_timeout,
        format_concurrency: args.ceph_format_concurrency,
    };
    let backend = ceph::CephBackend::connect(cfg)
        .await
        .map_err(|e| Error::Backend(format!("connecting to ceph ({}): {e}", args.ceph_monitors)))?;
    let objects = ceph::OmapBackend::for_backend(&backend, args.omap_iterator_size)
        .map_err(|e| Error::Backend(format!("omap store: {e}")))?;
    let lease = crate::leader::CephLease::new(&backend, &args.leader_identity())?;
    Ok(Opened {
        block: Arc::new(backend),
        objects: Arc::new(objects),
        lease: Some(Arc::new(lease)),
        where_: format!("data in pool {} at {}", args.ceph_pool, args.ceph_monitors),
        _guards: vec![Box::new(key_file)],
    })
}

#[cfg(not(feature = "ceph"))]
async fn open_ceph(_args: &DaemonArgs) -> Result<Opened> {
    Err(Error::Unsupported(
        "built without ceph support; rebuild with --features ceph".to_string(),
    ))
}

fn image_source(args: &DaemonArgs) -> Result<Arc<dyn ImageSource>> {
    let opts = crate::image_source::OciOptions {
        plain_http: args.registry_insecure_hosts.clone(),
        insecure_skip_tls_verify: args.registry_skip_tls_verify,
        ca_certificates: args.registry_ca_file.clone(),
        docker_config: args.docker_config.clone(),
        ..Default::default()
    };
    let source = crate::image_source::OciImageSource::new(opts)
        .map_err(|e| Error::Backend(format!("image source: {e}")))?;
    Ok(Arc::new(source))
}

/// Resolves when SIGTERM or SIGINT arrives.
async fn terminate_signal(
    term: &mut tokio::signal::unix::Signal,
    int: &mut tokio::signal::unix::Signal,
) -> &'static str {
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

/// Runs the daemon until SIGTERM/SIGINT (see the module docs).
pub async fn serve(args: DaemonArgs) -> Result<()> {
    args.validate()?;
    let classes = load_classes(&args)?;
    let socket_path = args.socket_path();

    // Backend-specific preparation (nothing is started yet).
    let data_dir = args.data_dir();
    let mut lock = None;
    let kek = match args.backend_kind() {
        BackendKind::Local => {
            ensure_dir(&data_dir)?;
            lock = Some(lock_data_dir(&data_dir)?);
            let (kek, path, created) =
                load_or_create_kek(args.ceph_kek_path.as_deref(), &data_dir)?;
            if created {
                info!(path = %path.display(), "generated a new KEK");
            }
            kek
        }
        BackendKind::Ceph => {
            let path = args.ceph_kek_path.as_deref().ok_or_else(|| Error::Flag {
                flag: "--ceph-kek-path",
                reason: "required with --backend ceph".into(),
            })?;
            Kek::from_file(path).map_err(|e| Error::Kek(e.to_string()))?
        }
    };

    let mut term =
        signal(SignalKind::terminate()).map_err(|e| Error::io("installing SIGTERM handler", e))?;
    let mut int =
        signal(SignalKind::interrupt()).map_err(|e| Error::io("installing SIGINT handler", e))?;

    let bound = socket::bind(&socket_path, args.socket_mode)?;
    bound
        .listener
        .set_nonblocking(true)
        .map_err(|e| Error::io("socket non-blocking", e))?;
    let result = run(args, classes, kek, &bound, &mut term, &mut int).await;
    bound.remove_file();
    drop(lock);
    result
}

async fn run(
    args: DaemonArgs,
    classes: VolumeClasses,
    kek: Kek,
    bound: &socket::BoundSocket,
    term: &mut tokio::signal::unix::Signal,
    int: &mut tokio::signal::unix::Signal,
) -> Result<()> {
    let listener = tokio::net::UnixListener::from_std(
        bound
            .listener
            .try_clone()
            .map_err(|e| Error::io("cloning socket", e))?,
    )
    .map_err(|e| Error::io("registering socket", e))?;
    let metrics_listener = match args.metrics_address {
        Some(a) => Some(crate::metrics::bind(a).await?),
        None => None,
    };

    let opened = match args.backend_kind() {
        BackendKind::Local => open_local(&args, &args.data_dir())?,
        BackendKind::Ceph => open_ceph(&args).await?,
    };
    let images = Store::<Image>::open(Arc::clone(&opened.objects))
        .await
        .map_err(|e| Error::Backend(format!("image store: {e}")))?;
    let snapshots = Store::<Snapshot>::open(Arc::clone(&opened.objects))
        .await
        .map_err(|e| Error::Backend(format!("snapshot store: {e}")))?;
    let runner = Runner::new(RunnerConfig {
        max_running: args.async_max_workers,
        classes: args.runner_classes(),
        aging: args.async_aging,
        ..Default::default()
    });
    let events = Arc::new(EventStore::new(args.max_events(), args.volume_event_ttl));
    let source = image_source(&args)?;

    let shutdown = CancellationToken::new();
    let controllers = Controllers::new(
        images.clone(),
        snapshots.clone(),
        Arc::clone(&opened.block),
        source,
        runner.clone(),
        Arc::clone(&events) as Arc<dyn controllers::EventRecorder>,
        ControllerConfig {
            worker_size: args.worker_size,
            monitors: args.monitors(),
            client: args.client(),
            kek: Some(kek.clone()),
            populator_buffer_size: args.populator_buffer(),
            populate_queue_depth: args.populate_queue_depth,
            os_image_gc_grace: args.os_image_gc_grace,
            delete_policy: args.delete_policy,
            resolve_timeout: args.resolve_timeout,
            format_timeout: args.format_timeout,
            list_children_timeout: args.list_children_timeout,
            stall_timeout: (!args.stall_timeout.is_zero()).then_some(args.stall_timeout),
            ..Default::default()
        },
    );
    let probe = controllers.probe();
    // Only the leader runs the controllers (and so the long operations); see `leader`.
    let leadership = match &opened.lease {
        Some(lease) => Leadership::start(
            Arc::clone(lease),
            LeaseTiming::new(args.leader_lease, args.leader_renew_interval),
        ),
        None => Leadership::always(),
    };
    let controllers_task = tokio::spawn(crate::leader::lead(
        leadership.role(),
        controllers,
        runner.clone(),
        shutdown.child_token(),
    ));
    let gc_task = tokio::spawn(
        Arc::clone(&events).run_gc(args.volume_event_resync_interval, shutdown.child_token()),
    );

    let mut metrics = Metrics::new();
    let r = runner.clone();
    metrics.register_collector(Box::new(RunnerCollector::new(move || r.metrics())));
    metrics.register_collector(Box::new(EventsCollector(Arc::clone(&events))));
    metrics.register_collector(Box::new(QueueCollector(probe)));
    metrics.register_collector(Box::new(StoreCollector::new(
        images.clone(),
        snapshots.clone(),
    )));
    let role = leadership.role();
    metrics.register_collector(Box::new(LeaderCollector::new(move || {
        *role.borrow() == Role::Leader
    })));
    let metrics = Arc::new(metrics);
    let metrics_task = metrics_listener.map(|l| {
        info!(address = %args.metrics_address.map(|a| a.to_string()).unwrap_or_default(), "serving metrics");
        tokio::spawn(crate::metrics::serve(l, Arc::clone(&metrics), shutdown.child_token()))
    });

    let server = VolumeServer::new(ServerParts {
        images,
        snapshots,
        backend: Arc::clone(&opened.block),
        events,
        runner: Some(runner.clone()),
        metrics: Some(Arc::clone(&metrics)),
        config: ServerConfig {
            classes: classes.clone(),
            kek: Some(kek),
            encryption_unsupported: (args.backend_kind() == BackendKind::Local)
                .then(|| LOCAL_ENCRYPTION.to_string()),
            burst_factor: args.limits_burst_factor,
            burst_duration: args.limits_burst_duration,
            max_volume_size: args.max_volume_size,
        },
    });

    info!(
        version = env!("CARGO_PKG_VERSION"),
        pool = %opened.block.pool(),
        classes = %classes.names(),
        "serving IRI VolumeRuntime on {} with the {} backend, {}",
        bound.path.display(),
        args.backend_kind().as_str(),
        opened.where_
    );

    let incoming = socket::incoming(listener);
    let (sig_tx, sig_rx) = tokio::sync::oneshot::channel::<&'static str>();
    let serve = tonic::transport::Server::builder()
        .add_service(server.runtime_service())
        .add_service(server.progress_service())
        .serve_with_incoming_shutdown(incoming, async {
            let _ = sig_rx.await;
        });
    tokio::pin!(serve);
    let mut controllers_task = controllers_task;
    // `--shutdown-timeout` bounds the whole shutdown from the signal on: every phase below gets
    // what is left of it.
    let mut signalled_at = None;
    let outcome: Result<()> = tokio::select! {
        res = &mut serve => {
            res.map_err(|e| Error::Backend(format!("gRPC server: {e}")))
        }
        sig = terminate_signal(term, int) => {
            info!(signal = sig, "shutting down: no new requests, finishing in-flight ones");
            signalled_at = Some(tokio::time::Instant::now());
            let _ = sig_tx.send(sig);
            match tokio::time::timeout(args.shutdown_timeout, &mut serve).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!(error = %e, "gRPC server ended with an error"),
                Err(_) => warn!("in-flight requests did not finish within the shutdown timeout"),
            }
            Ok(())
        }
        res = &mut controllers_task => {
            let e = match res {
                Ok(Err(lost @ Error::LostLeadership(_))) => {
                    shutdown.cancel();
                    return finish_lost(lost, &runner, leadership).await;
                }
                Ok(Ok(())) => "controllers stopped unexpectedly".to_string(),
                Ok(Err(e)) => format!("controllers failed: {e}"),
                Err(e) => format!("controllers task failed: {e}"),
            };
            error!("{e}");
            Err(Error::Backend(e))
        }
    };

    // Stop the controllers (workers finish their current pass), then drain long operations.
    shutdown.cancel();
    // A little of it is kept for the process's own exit.
    let margin = (args.shutdown_timeout / 10).min(Duration::from_millis(500));
    let end =
        signalled_at.unwrap_or_else(tokio::time::Instant::now) + args.shutdown_timeout - margin;
    let left = || end.saturating_duration_since(tokio::time::Instant::now());
    if !controllers_task.is_finished() {
        match tokio::time::timeout(left(), &mut controllers_task).await {
            Ok(Ok(Err(e))) => warn!(error = %e, "controllers ended with an error"),
            Ok(_) => {}
            Err(_) => warn!("controllers did not stop within the shutdown timeout"),
        }
    }
    let m = runner.metrics();
    let deadline = left();
    if m.running + m.waiting > 0 {
        info!(running = m.running, waiting = m.waiting, timeout = ?deadline, "draining long operations");
    }
    tokio::select! {
        _ = runner.shutdown(ShutdownMode::Drain { deadline }) => {}
        sig = terminate_signal(term, int) => {
            warn!(signal = sig, "second signal: cancelling long operations");
            runner.shutdown(ShutdownMode::Cancel { deadline: Duration::from_secs(5) }).await;
        }
        reason = crate::leader::lost(leadership.role()) => {
            warn!(reason, "lost the leader lease while draining: cancelling long operations");
            runner.shutdown(ShutdownMode::Cancel { deadline: Duration::from_secs(5) }).await;
        }
    }
    let _ = gc_task.await;
    if let Some(t) = metrics_task {
        let _ = t.await;
    }
    // Releasing the lease lets a standby take over at once; when the cluster does not answer
    // within what is left, the lease expires by itself (`--leader-lease`).
    if tokio::time::timeout(left(), leadership.release())
        .await
        .is_err()
    {
        warn!(
            "the leader lease was not released within the shutdown timeout: it expires by itself"
        );
    }
    info!("stopped");
    drop(opened);
    outcome
}

/// After stepping down (controllers stopped, runner cancelled by `leader::lead`): end the lease
/// loop and exit with the lost-leadership error (the supervisor restarts a standby).
async fn finish_lost(lost: Error, runner: &Runner, leadership: Leadership) -> Result<()> {
    runner
        .shutdown(ShutdownMode::Cancel {
            deadline: Duration::from_secs(5),
        })
        .await;
    leadership.release().await;
    Err(lost)
}

/// Mode bits of a path (tests, diagnostics).
pub fn mode_of(path: &Path) -> std::io::Result<u32> {
    Ok(std::fs::metadata(path)?.permissions().mode() & 0o7777)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_kek_is_32_bytes_mode_0600_and_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (k1, p, created) = load_or_create_kek(None, dir.path()).expect("created");
        assert!(created);
        assert_eq!(std::fs::read(&p).expect("read").len(), 32);
        assert_eq!(mode_of(&p).expect("mode"), 0o600);
        let (k2, _, created) = load_or_create_kek(None, dir.path()).expect("loaded");
        assert!(!created);
        let sealed = k1.encrypt(b"x");
        assert_eq!(k2.decrypt(&sealed).expect("same key"), b"x");
    }

    #[test]
    fn an_explicit_kek_must_be_32_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("k");
        std::fs::write(&p, b"short").expect("write");
        assert!(load_or_create_kek(Some(&p), dir.path()).is_err());
        std::fs::write(&p, [7u8; 32]).expect("write");
        assert!(load_or_create_kek(Some(&p), dir.path()).is_ok());
    }

    #[test]
    fn a_locked_data_dir_refuses_a_second_lock() {
        let dir = tempfile::tempdir().expect("tempdir");
        let l = lock_data_dir(dir.path()).expect("first");
        let e = lock_data_dir(dir.path()).expect_err("second");
        assert!(e.to_string().contains("another cephvol process"), "{e}");
        drop(l);
        lock_data_dir(dir.path()).expect("free again");
    }

    #[test]
    fn the_key_file_is_private_and_removed_on_drop() {
        let k = KeyFile::write(&crate::keyring::SecretString::new("AQB==")).expect("written");
        let p = k.path().to_path_buf();
        assert_eq!(mode_of(&p).expect("mode"), 0o600);
        assert_eq!(std::fs::read_to_string(&p).expect("read"), "AQB==");
        drop(k);
        assert!(!p.exists());
    }
}
