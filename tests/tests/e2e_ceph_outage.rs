//! A stuck cluster on a real Ceph cluster: the OSD is frozen with SIGSTOP (every placement group
//! stops answering, as a stuck PG does; the mon still answers) while the daemon serves, and:
//!
//! * every RPC — ListVolumes as the poollet sends it every few seconds, CreateVolume,
//!   GetVolume-style lists, Status — answers within its deadline (with an error: the cluster
//!   cannot answer) because the daemon bounds every librados call (`--ceph-op-timeout`,
//!   `--ceph-mon-timeout`) instead of waiting for ever and pinning one more blocking thread per call;
//! * SIGTERM still ends the daemon within `--shutdown-timeout` while the OSD is frozen;
//! * after the OSD is continued, a restarted daemon works on the same volume again.
//!
//! **This test freezes the shared test cluster's only OSD.** Every client of the cluster — other
//! suites running at the same moment included — stalls while it is frozen. The freeze is kept
//! short ([`MAX_OUTAGE`], 30 s at most) and is always undone: a guard sends SIGCONT when the test
//! ends, panics included, and a watchdog process started before the SIGSTOP sends SIGCONT after
//! [`MAX_OUTAGE`] even if this test process dies.
//!
//! Ignored by default. With a cluster from `cargo xtask ceph up`:
//! `eval $(cargo xtask ceph env); cargo test -p tests --features ceph --test e2e_ceph_outage -- --ignored --nocapture`.
//! `cargo xtask integration` runs it with `CEPHVOL_INTEGRATION=1`, under which a missing cluster
//! environment fails the test instead of skipping it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use iri::volume_v1 as pb;
use tests::cephvol_bin;
use tests::cluster::{integration, step, var, Ceph, KeepLogOnPanic, Leftovers, VOLUMES};
use tests::daemon::{ops, volume_req, Daemon};

const MIB: i64 = 1 << 20;
/// `--ceph-op-timeout` and `--ceph-mon-timeout` of the daemon under test.
const OP_TIMEOUT: Duration = Duration::from_secs(3);
/// `--shutdown-timeout` of the daemon under test.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(8);
/// How long a caller waits for any RPC during the outage: a few op timeouts (one RPC may make
/// several calls) — far below "for ever".
const RPC_DEADLINE: Duration = Duration::from_secs(12);
/// How long the RPCs are exercised while the OSD is frozen.
const OUTAGE_RPCS: Duration = Duration::from_secs(7);
/// The OSD is never frozen longer than this (the watchdog's bound).
const MAX_OUTAGE: Duration = Duration::from_secs(30);

/// The test cluster's OSD, frozen with SIGSTOP until this guard is dropped (SIGCONT), with a
/// watchdog process that continues it after [`MAX_OUTAGE`] whatever happens to this process.
struct FrozenOsd {
    pid: i32,
    watchdog: Child,
    since: Instant,
}

impl FrozenOsd {
    /// The pid of the cluster's `ceph-osd` (from `<cluster dir>/pids/osd.0.pid`, checked
    /// against its command line).
    fn osd_pid(conf: &Path) -> i32 {
        let dir = conf.parent().expect("cluster directory");
        let pid_file = dir.join("pids").join("osd.0.pid");
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .unwrap_or_else(|e| panic!("{}: {e}", pid_file.display()))
            .trim()
            .parse()
            .expect("pid");
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("osd cmdline");
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        assert!(
            cmdline.contains("ceph-osd") && cmdline.contains(&conf.display().to_string()),
            "pid {pid} is not the test cluster's OSD: {cmdline}"
        );
        pid
    }

    fn freeze(conf: &Path) -> FrozenOsd {
        let pid = FrozenOsd::osd_pid(conf);
        let watchdog = Command::new("sh")
            .arg("-c")
            .arg(format!("sleep {}; kill -CONT {pid}", MAX_OUTAGE.as_secs()))
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn the SIGCONT watchdog");
        signal(pid, rustix::process::Signal::STOP);
        eprintln!("OSD {pid} frozen (SIGSTOP) for at most {MAX_OUTAGE:?}");
        FrozenOsd {
            pid,
            watchdog,
            since: Instant::now(),
        }
    }
}

impl Drop for FrozenOsd {
    fn drop(&mut self) {
        signal(self.pid, rustix::process::Signal::CONT);
        let _ = self.watchdog.kill();
        let _ = self.watchdog.wait();
        eprintln!(
            "OSD {} continued (SIGCONT) after {:.1}s",
            self.pid,
            self.since.elapsed().as_secs_f64()
        );
        heal_after_freeze();
    }
}

/// A frozen OSD comes back with "laggy" placement groups and ops blocked for minutes (Pacific):
/// marking it down makes it peer again at once, so that the suites after this one find a healthy
/// cluster. Waits (at most a minute) until every placement group is `active+clean`.
fn heal_after_freeze() {
    let ceph = |args: &[&str]| {
        Command::new("ceph")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    ceph(&["osd", "down", "0"]);
    let t = Instant::now();
    // The mgr's placement-group figures lag behind the OSD map: give the mark-down time to take
    // effect, then require both clean figures and a read of the store that the OSD serves.
    std::thread::sleep(Duration::from_secs(3));
    let pool = std::env::var("CEPH_POOL").unwrap_or_default();
    let serves = || {
        Command::new("timeout")
            .args(["5", "rados", "-p", &pool, "listomapkeys", VOLUMES])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    while t.elapsed() < Duration::from_secs(60) {
        // e.g. "9 pgs: 9 active+clean; 70 B data, …"
        let clean = pg_stat_all_clean(&ceph(&["pg", "stat"]));
        if clean && serves() {
            eprintln!(
                "cluster healthy again after {:.1}s",
                t.elapsed().as_secs_f64()
            );
            return;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!(
        "the cluster is not active+clean a minute after the freeze: {}",
        ceph(&["pg", "stat"])
    );
}

/// Whether `ceph pg stat` (e.g. `9 pgs: 9 active+clean; 70 B data, …`) counts every placement
/// group `active+clean` and nothing else.
fn pg_stat_all_clean(stat: &str) -> bool {
    let head = stat.split(';').next().unwrap_or_default();
    let Some((total, states)) = head.split_once(':') else {
        return false;
    };
    let total = total.split_whitespace().next();
    let states: Vec<&str> = states.split(',').map(str::trim).collect();
    matches!(states.as_slice(), [one] if one.split_whitespace().collect::<Vec<_>>() == [total.unwrap_or("?"), "active+clean"])
}

fn signal(pid: i32, sig: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(pid).expect("pid");
    if let Err(e) = rustix::process::kill_process(pid, sig) {
        eprintln!("sending {sig:?} to the OSD {pid:?}: {e}");
    }
}

/// Runs `call` with [`RPC_DEADLINE`]; panics if it does not answer in time. Returns how long it
/// took and whether it succeeded.
async fn answers<T, F>(what: &str, call: F) -> (Duration, Result<T, tonic::Status>)
where
    F: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let t0 = Instant::now();
    match tokio::time::timeout(RPC_DEADLINE, call).await {
        Ok(r) => (t0.elapsed(), r.map(tonic::Response::into_inner)),
        Err(_) => panic!("{what} did not answer within {RPC_DEADLINE:?} during the outage"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs a Ceph cluster and freezes its OSD: cargo xtask integration"]
async fn rpcs_answer_and_sigterm_ends_the_daemon_while_the_osd_is_frozen() {
    let needs = |what: &str| {
        assert!(
            !integration(),
            "CEPHVOL_INTEGRATION=1 but {what}: the real-Ceph suite must not skip"
        );
        eprintln!("skipped: {what}");
    };
    if !cfg!(feature = "ceph") && std::env::var_os("CEPHVOL_BIN").is_none() {
        return needs("build with --features ceph (or set CEPHVOL_BIN)");
    }
    let (Some(conf), Some(monitors), Some(pool)) =
        (var("CEPH_CONF"), var("CEPH_MONITORS"), var("CEPH_POOL"))
    else {
        return needs("CEPH_CONF/CEPH_MONITORS/CEPH_POOL not set (eval $(cargo xtask ceph env))");
    };
    let conf = PathBuf::from(conf);
    let user = var("CEPH_USER").unwrap_or_else(|| "admin".into());
    let client = var("CEPH_CLIENT").unwrap_or_else(|| format!("client.{user}"));
    let keyring = var("CEPH_KEYRING").expect("CEPH_KEYRING");
    let t0 = Instant::now();

    let dir = tempfile::tempdir().expect("tempdir");
    let kek = dir.path().join("kek");
    std::fs::write(&kek, [0x3cu8; 32]).expect("kek");
    let secs = |d: Duration| format!("{}s", d.as_secs());
    let flags = [
        "--backend=ceph".to_string(),
        format!("--ceph-monitors={monitors}"),
        format!("--ceph-pool={pool}"),
        format!("--ceph-user={user}"),
        format!("--ceph-client={client}"),
        format!("--ceph-keyring-file={keyring}"),
        format!("--ceph-kek-path={}", kek.display()),
        format!("--ceph-op-timeout={}", secs(OP_TIMEOUT)),
        format!("--ceph-mon-timeout={}", secs(OP_TIMEOUT)),
        format!("--shutdown-timeout={}", secs(SHUTDOWN_TIMEOUT)),
    ];
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    // Declared before the daemon: on a failure the daemon is killed first, then this removes
    // the volume with the CLIs.
    let leftovers = Leftovers {
        ceph: Ceph { pool: pool.clone() },
        volumes: Default::default(),
        snapshots: Default::default(),
    };
    let mut d = Daemon::start_in(cephvol_bin!(), dir, &flags).await;
    let _keep_log = KeepLogOnPanic(d.dir.path().join("daemon.log"), "e2e_ceph_outage");
    let mut c = d.clients().await;
    let id = ops::create(&mut c, volume_req("standard", 8 * MIB, &[])).await;
    leftovers.volume(&id);
    ops::wait_available(&mut c, &id).await;
    step(t0, &format!("volume {id} available; freezing the OSD"));

    let frozen = FrozenOsd::freeze(&conf);
    // The poollet's ListVolumes every second (it does every 5 s), plus a CreateVolume and a
    // Status, all at once: each must answer within its deadline, and the blocking threads they
    // occupy must come back (else the later lists would wait for a free thread).
    let mut calls = tokio::task::JoinSet::new();
    let poll_start = Instant::now();
    let mut n = 0;
    while poll_start.elapsed() < OUTAGE_RPCS {
        let mut cl = c.clone();
        calls.spawn(async move {
            let (took, r) = answers(
                "ListVolumes",
                cl.runtime
                    .list_volumes(pb::ListVolumesRequest { filter: None }),
            )
            .await;
            ("ListVolumes", took, r.map(|_| ()))
        });
        if n == 1 {
            let mut cl = c.clone();
            calls.spawn(async move {
                let (took, r) = answers(
                    "CreateVolume",
                    cl.runtime
                        .create_volume(volume_req("standard", 8 * MIB, &[("outage", "yes")])),
                )
                .await;
                ("CreateVolume", took, r.map(|_| ()))
            });
            let mut cl = c.clone();
            calls.spawn(async move {
                let (took, r) = answers("Status", cl.runtime.status(pb::StatusRequest {})).await;
                ("Status", took, r.map(|_| ()))
            });
        }
        n += 1;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let mut failed = 0;
    while let Some(done) = calls.join_next().await {
        let (what, took, r) = done.expect("RPC task");
        eprintln!(
            "  {what}: {:?} after {:.1}s",
            r.as_ref().map_err(|s| s.code()),
            took.as_secs_f64()
        );
        failed += usize::from(r.is_err());
    }
    assert!(failed > 0, "with the OSD frozen, the store cannot answer");
    step(
        t0,
        "every RPC answered; SIGTERM with calls in flight while the OSD is still frozen",
    );

    // Calls the shutdown must wait for (or give up on): each holds a blocking thread in librados.
    let mut in_flight = tokio::task::JoinSet::new();
    for _ in 0..3 {
        let mut cl = c.clone();
        in_flight.spawn(async move {
            let _ = cl
                .runtime
                .list_volumes(pb::ListVolumesRequest { filter: None })
                .await;
        });
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let term = Instant::now();
    let status = d
        .stop_with(rustix::process::Signal::TERM, SHUTDOWN_TIMEOUT * 3)
        .await;
    let took = term.elapsed();
    step(
        t0,
        &format!(
            "daemon exited ({status}) {:.1}s after SIGTERM",
            took.as_secs_f64()
        ),
    );
    drop(frozen);
    while in_flight.join_next().await.is_some() {}
    assert!(
        took <= SHUTDOWN_TIMEOUT + Duration::from_secs(2),
        "SIGTERM took {took:?}, more than --shutdown-timeout {SHUTDOWN_TIMEOUT:?}:\n{}",
        d.logs()
    );

    // The cluster answers again: a restarted daemon finds the volume and deletes it (and the
    // volume whose CreateVolume may have been recorded before the freeze took hold).
    let dir = d.into_dir_after_exit();
    let mut d = Daemon::start_in(cephvol_bin!(), dir, &flags).await;
    let mut c = d.clients().await;
    ops::wait_available(&mut c, &id).await;
    let mut ours = vec![id.clone()];
    for v in ops::list(&mut c).await {
        let md = v.metadata.as_ref().expect("metadata");
        if md.labels.contains_key("outage") && !ours.contains(&md.id) {
            ours.push(md.id.clone());
        }
    }
    for v in &ours {
        ops::delete(&mut c, v).await;
    }
    for v in &ours {
        ops::wait_volume_gone(&mut c, v).await;
    }
    drop(c);
    assert!(d.terminate().await.success(), "{}", d.logs());
    step(t0, "cleaned up");
}
