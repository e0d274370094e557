// size: five real-cluster scenarios sharing one set of helpers (CLIs, daemons, a flatten case).
//! High availability on a real Ceph cluster: one writer per pool. Several `cephvol` daemons
//! (`--backend ceph`, default `--leader-lease 15s --leader-renew-interval 5s`) share one pool;
//! only the holder of the pool's leader lease reconciles and runs long operations, every daemon
//! serves the IRI socket.
//!
//! * `two_daemons_on_one_pool_run_each_operation_once`: requests go to both sockets (the
//!   standby's too); the leader's runner ran the resolve, the populate and the flatten exactly
//!   once, the standby's runner nothing.
//! * `a_standby_finishes_the_flatten_of_a_killed_leader_without_changing_data`: SIGKILL of the
//!   leader during a flatten: the standby leads within lease + 5 s, the flatten completes, the
//!   clone's data equals the snapshot's.
//! * `a_paused_leader_is_fenced_and_steps_down_without_damage`: SIGSTOP of the leader past its
//!   lease: the standby takes over after blocklisting it; SIGCONT: the old leader's operations are
//!   refused (it is on the blocklist and says so), it exits with code 75, the data is intact.
//! * `a_restarted_daemon_resumes_a_flatten_without_waiting_for_the_killed_clients_locks`: SIGKILL
//!   and restart of a single daemon: the restart takes the lease at once (same identity), fences
//!   its predecessor and the flatten resumes within seconds, not after the ~30 s the OSD needs to
//!   time out a dead client's watches and image locks.
//! * `failover_time_over_repeated_kills`: kills the leader `CEPHVOL_HA_KILLS` times (default 3),
//!   at moments spread over its renewal cycle, and prints the median and maximum time from SIGKILL
//!   to the standby's `cephvol_leader 1`.
//!
//! * `a_second_daemon_on_the_same_local_data_directory_refuses_to_start`: the embedded local
//!   backend has no standby: its data directory lock keeps a second daemon out (runs without Ceph).
//!
//! The tests run one at a time (they share the pool's lease) and observe through the `rbd`/`rados`/
//! `ceph` CLIs (`CEPH_KEYRING` must hold `client.admin` too, as `cargo xtask ceph env` exports it),
//! the daemons' IRI sockets and their metrics endpoints. Everything they create is removed.
//!
//! The Ceph tests are ignored by default. With a cluster from `cargo xtask ceph up`:
//! `eval $(cargo xtask ceph env); cargo test -p tests --features ceph --test e2e_ceph_ha -- --ignored --nocapture`
//! (`CEPHVOL_HA_KILLS=10` for the failover figures). `cargo xtask integration` runs it with
//! `CEPHVOL_INTEGRATION=1`, under which a missing cluster environment fails instead of skipping.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use cli::client::Clients;
use iri::volume_v1 as pb;
use registry_fixture::{pattern, IronImage, TestRegistry};
use serde_json::Value;
use tempfile::TempDir;
use tests::cephvol_bin;
use tests::cluster::{step, var, Ceph, Leftovers, SNAPSHOTS, VOLUMES};
use tests::daemon::{eventually, id_of, ops, restore_req, snapshot_req, volume_req, Daemon};

const MIB: u64 = 1 << 20;
/// Block size of the generated volume data (one rbd object).
const BLOCK: u64 = tests::cluster::BLOCK;
/// The daemon's default lease (the tests run with the default flags).
const LEASE: Duration = Duration::from_secs(15);
/// What the issue promises: a standby leads within this long after the leader died.
const TAKEOVER_BOUND: Duration = Duration::from_secs(20);
/// A class without QoS limits, so the CLIs' own reads and writes are not throttled.
const CLASS: &str = "ha-unthrottled";
/// Bound of ordinary steps.
const STEP: Duration = Duration::from_secs(180);
/// Exit code of a daemon that lost the leadership.
const EXIT_LOST_LEADERSHIP: i32 = 75;

/// The tests share the pool's leader lease: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The cluster from the environment; `None` (skip) unless under `CEPHVOL_INTEGRATION=1`.
struct Env {
    monitors: String,
    pool: String,
    user: String,
    client: String,
    keyring: String,
}

fn env() -> Option<Env> {
    let integration = var("CEPHVOL_INTEGRATION").is_some_and(|v| v == "1");
    let skip = |reason: &str| {
        assert!(
            !integration,
            "CEPHVOL_INTEGRATION=1 but {reason}: the real-Ceph suite must not skip"
        );
        eprintln!("skipped: {reason}");
        None
    };
    if !cfg!(feature = "ceph") && std::env::var_os("CEPHVOL_BIN").is_none() {
        return skip("the daemon is built without --features ceph (and CEPHVOL_BIN is not set)");
    }
    let (Some(monitors), Some(pool), Some(_conf), Some(keyring)) = (
        var("CEPH_MONITORS"),
        var("CEPH_POOL"),
        var("CEPH_CONF"),
        var("CEPH_KEYRING").or_else(|| var("CEPH_USER_KEYRING")),
    ) else {
        return skip(
            "CEPH_MONITORS/CEPH_POOL/CEPH_CONF/CEPH_KEYRING not set (eval $(cargo xtask ceph env))",
        );
    };
    let user = var("CEPH_USER").unwrap_or_else(|| "admin".into());
    let client = var("CEPH_CLIENT").unwrap_or_else(|| format!("client.{user}"));
    Some(Env {
        monitors,
        pool,
        user,
        client,
        keyring,
    })
}

// ----------------------------------------------------------------------------------------- daemons

/// The flags every daemon of a test gets, and the files they name.
struct Setup {
    _files: TempDir,
    flags: Vec<String>,
    ceph: Ceph,
}

impl Setup {
    fn new(env: &Env) -> Setup {
        let files = tempfile::tempdir().expect("tempdir");
        let kek = files.path().join("kek");
        std::fs::write(&kek, [0x5au8; 32]).expect("kek");
        let classes = files.path().join("classes.json");
        std::fs::write(
            &classes,
            format!(r#"[{{"name":"{CLASS}","capabilities":{{"tps":0,"iops":0}}}}]"#),
        )
        .expect("classes");
        let flags = vec![
            "--backend=ceph".to_string(),
            format!("--ceph-monitors={}", env.monitors),
            format!("--ceph-pool={}", env.pool),
            format!("--ceph-user={}", env.user),
            format!("--ceph-client={}", env.client),
            format!("--ceph-keyring-file={}", env.keyring),
            format!("--ceph-kek-path={}", kek.display()),
            format!("--supported-volume-classes={}", classes.display()),
            // A slow populate, so that it is still running when a test looks.
            "--populator-buffer-size=131072".to_string(),
            "--populate-queue-depth=1".to_string(),
            // The flatten case: deleting S must flatten C (the Go provider's deletion policy).
            "--delete-policy=flatten".to_string(),
        ];
        Setup {
            _files: files,
            flags,
            ceph: Ceph {
                pool: env.pool.clone(),
            },
        }
    }
}

/// One daemon with its metrics endpoint.
struct Node {
    name: &'static str,
    d: Daemon,
    metrics: u16,
    c: Clients,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

impl Node {
    /// Starts a daemon in `dir` (a fresh one if `None`: a new socket, so a new identity).
    async fn start(setup: &Setup, name: &'static str, dir: Option<TempDir>) -> Node {
        let metrics = free_port();
        let mut flags = setup.flags.clone();
        flags.push(format!("--metrics-address=127.0.0.1:{metrics}"));
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let dir = dir.unwrap_or_else(|| tempfile::tempdir().expect("tempdir"));
        let d = Daemon::start_in(cephvol_bin!(), dir, &flags).await;
        let c = d.clients().await;
        Node {
            name,
            d,
            metrics,
            c,
        }
    }

    /// The value of an unlabelled metric, `None` if the endpoint or the metric is missing.
    fn metric(&self, name: &str) -> Option<f64> {
        let text = tokio::task::block_in_place(|| {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", self.metrics)).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
            s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
                .ok()?;
            let mut out = String::new();
            s.read_to_string(&mut out).ok()?;
            Some(out)
        })?;
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }

    fn leads(&self) -> bool {
        self.metric("cephvol_leader") == Some(1.0)
    }

    /// The cluster address this daemon's client has (from its start-up log line).
    fn addr(&self) -> String {
        self.d
            .logs()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["message"] == "seeking the leader lease of the pool")
            .and_then(|v| v["addr"].as_str().map(str::to_string))
            .unwrap_or_else(|| panic!("{}: no address in the log:\n{}", self.name, self.d.logs()))
    }

    /// Waits until this daemon leads; returns how long that took.
    async fn wait_leading(&self, bound: Duration) -> Duration {
        let t = Instant::now();
        eventually(bound, &format!("{} to lead", self.name), || {
            let leads = self.leads();
            async move { leads.then_some(()) }
        })
        .await;
        t.elapsed()
    }

    /// Waits until this daemon is a standby that knows the leader.
    async fn wait_standby(&self) {
        eventually(
            Duration::from_secs(30),
            &format!("{} to be a standby", self.name),
            || {
                let standby = self.metric("cephvol_leader") == Some(0.0)
                    && self
                        .d
                        .logs()
                        .contains("standby: another daemon leads the pool");
                async move { standby.then_some(()) }
            },
        )
        .await;
    }

    fn runner(&self, counter: &str) -> u64 {
        self.metric(&format!("cephvol_runner_{counter}_total"))
            .unwrap_or_else(|| panic!("{}: no runner metric {counter}", self.name)) as u64
    }
}

// ------------------------------------------------------------------------------------- a flatten

/// Volume V with data, snapshot S, clone C restored from S, more data on V afterwards.
struct FlattenCase {
    v: String,
    s: String,
    c: String,
    /// SHA-256 of S (what C must hold after the flatten) and of V (unchanged by it).
    s_sha: String,
    v_sha: String,
}

impl FlattenCase {
    fn c_image(&self) -> String {
        format!("img_{}", self.c)
    }

    /// Builds the case through `c` (any daemon's socket).
    async fn create(ceph: &Ceph, c: &mut Clients, left: &Leftovers, size: u64) -> FlattenCase {
        let v = ops::create(c, volume_req(CLASS, size as i64, &[])).await;
        left.volume(&v);
        ops::wait_available(c, &v).await;
        let v_image = format!("img_{v}");
        ceph.write_pattern(&v_image, 0, size, 11);
        let snap = c
            .runtime
            .create_volume_snapshot(snapshot_req(&v, &[]))
            .await
            .expect("CreateVolumeSnapshot");
        let s = id_of(
            &snap
                .into_inner()
                .volume_snapshot
                .expect("snapshot")
                .metadata,
        );
        left.snapshot(&s);
        ops::wait_ready(c, &s).await;
        let s_sha = ceph.export_sha(&format!("{v_image}@{s}"));
        let restored = ops::create(c, restore_req(CLASS, size as i64, &s, &[])).await;
        left.volume(&restored);
        ops::wait_available(c, &restored).await;
        ceph.write_pattern(&v_image, 2 * MIB, 8 * MIB, 99);
        let v_sha = ceph.export_sha(&v_image);
        assert_ne!(v_sha, s_sha, "V changed after S");
        FlattenCase {
            v,
            s,
            c: restored,
            s_sha,
            v_sha,
        }
    }

    /// Deletes S through `c`, which makes the leader flatten C, and waits until a quarter of C is
    /// copied (the flatten is then surely running). Returns C's object count at that point.
    async fn start_flatten(&self, ceph: &Ceph, c: &mut Clients, size: u64) -> usize {
        ops::delete_snapshot(c, &self.s).await;
        let image = self.c_image();
        let quarter = (size / BLOCK / 4) as usize;
        eventually(STEP, "the flatten of C to copy a quarter of C", || {
            let present = ceph.data_objects(&image);
            if present < quarter {
                assert!(
                    ceph.parent(&image).is_some(),
                    "the flatten finished before the test saw it running: raise the size"
                );
            }
            async move { (present >= quarter).then_some(present) }
        })
        .await
    }

    /// Waits until S is gone and C is flat, then checks the data: C holds S, V is unchanged.
    async fn finish(&self, ceph: &Ceph, c: &mut Clients, bound: Duration) {
        let image = self.c_image();
        eventually(bound, "S to be deleted and C to be flat", || {
            let done = ceph.state(SNAPSHOTS, &self.s).is_none() && ceph.parent(&image).is_none();
            async move { done.then_some(()) }
        })
        .await;
        assert!(ops::get_snapshot(c, &self.s).await.is_none(), "S is gone");
        assert_eq!(ceph.export_sha(&image), self.s_sha, "C holds what S held");
        assert_eq!(
            ceph.export_sha(&format!("img_{}", self.v)),
            self.v_sha,
            "V is unchanged"
        );
        for id in [&self.v, &self.c] {
            assert_eq!(
                ceph.state(VOLUMES, id).as_deref(),
                Some("Available"),
                "{id}"
            );
        }
        assert!(
            ceph.snaps(&format!("img_{}", self.v)).is_empty(),
            "no rbd snapshot left on V"
        );
    }

    /// Deletes C and V through `c` and waits until they are gone.
    async fn remove(&self, ceph: &Ceph, c: &mut Clients) {
        for id in [&self.c, &self.v] {
            ops::delete(c, id).await;
        }
        for id in [&self.c, &self.v] {
            eventually(STEP, &format!("volume {id} to be deleted"), || {
                let mut c = c.clone();
                let id = id.clone();
                let gone = ceph.info(&format!("img_{id}")).is_none();
                async move { (ops::get(&mut c, &id).await.is_none() && gone).then_some(()) }
            })
            .await;
        }
    }
}

// ------------------------------------------------------------------------------------------ tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_on_the_same_local_data_directory_refuses_to_start() {
    let first = Daemon::start(cephvol_bin!(), &[]).await;
    let data = format!("--data-dir={}", first.data_dir.display());
    let other = tempfile::tempdir().expect("tempdir");
    let mut second = Daemon::spawn(cephvol_bin!(), other, &[&data]);
    let status = second.wait_exit(Duration::from_secs(30)).await;
    assert!(!status.success(), "the second daemon must not run");
    assert!(
        second
            .logs()
            .contains("another cephvol process uses this data directory"),
        "{}",
        second.logs()
    );
    // The first one still serves.
    let mut c = first.clients().await;
    assert!(ops::list(&mut c).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs ceph: cargo xtask integration"]
async fn two_daemons_on_one_pool_run_each_operation_once() {
    let _serial = SERIAL.lock().await;
    let Some(env) = env() else { return };
    let t0 = Instant::now();
    let setup = Setup::new(&env);
    let ceph = setup.ceph.clone();
    let left = Leftovers::new(&ceph);

    let rootfs = pattern(16 * MIB as usize, 0x4a11);
    let reg = TestRegistry::start();
    let pushed = reg
        .pusher()
        .push_image("os/ha", "1", &IronImage::rootfs(rootfs))
        .await;
    let reference = reg.reference("os/ha", "1");
    let digest = pushed.manifest_digest.clone();

    let mut a = Node::start(&setup, "a", None).await;
    a.wait_leading(LEASE * 2).await;
    let mut b = Node::start(&setup, "b", None).await;
    b.wait_standby().await;
    assert!(a.leads(), "a still leads");
    step(t0, "a leads, b is a standby");

    // Requests through both sockets; the standby's land in the store and the leader does them.
    let v = ops::create(&mut b.c, volume_req(CLASS, 64 * MIB as i64, &[])).await;
    left.volume(&v);
    ops::wait_available(&mut a.c, &v).await;
    let snap =
        b.c.runtime
            .create_volume_snapshot(snapshot_req(&v, &[]))
            .await
            .expect("CreateVolumeSnapshot through the standby");
    let s = id_of(
        &snap
            .into_inner()
            .volume_snapshot
            .expect("snapshot")
            .metadata,
    );
    left.snapshot(&s);
    ops::wait_ready(&mut b.c, &s).await;
    let restored = ops::create(&mut a.c, restore_req(CLASS, 64 * MIB as i64, &s, &[])).await;
    left.volume(&restored);
    ops::wait_available(&mut b.c, &restored).await;
    let mut req = volume_req(CLASS, 64 * MIB as i64, &[]);
    req.volume
        .as_mut()
        .and_then(|v| v.spec.as_mut())
        .expect("spec")
        .volume_data_source = Some(pb::VolumeDataSource {
        image_data_source: Some(pb::ImageDataSource {
            image: reference.clone(),
            architecture: String::new(),
        }),
        snapshot_data_source: None,
    });
    let o = ops::create(&mut b.c, req).await;
    left.volume(&o);
    left.snapshot(&digest);
    ops::wait_available(&mut b.c, &o).await;
    step(
        t0,
        "V, S, C (restored from S) and O (from an OS image: a populate) available",
    );
    // Deleting S flattens C.
    ops::delete_snapshot(&mut b.c, &s).await;
    ops::wait_snapshot_gone(&mut a.c, &s).await;
    let c_image = format!("img_{restored}");
    eventually(STEP, "C to be flat", || {
        let flat = ceph.parent(&c_image).is_none();
        async move { flat.then_some(()) }
    })
    .await;
    step(t0, "S deleted, C flattened");

    let (a_acc, a_ok) = (a.runner("accepted"), a.runner("succeeded"));
    let (b_acc, b_ok) = (b.runner("accepted"), b.runner("succeeded"));
    eprintln!("runner: leader accepted {a_acc} succeeded {a_ok}; standby accepted {b_acc} succeeded {b_ok}");
    assert_eq!((b_acc, b_ok), (0, 0), "the standby ran no long operation");
    assert_eq!(
        (a_acc, a_ok),
        (3, 3),
        "the leader ran O's registry resolution, its populate and C's flatten, each once"
    );
    assert_eq!(a.runner("failed") + a.runner("cancelled"), 0);
    assert!(
        !b.d.logs().contains("controllers started"),
        "the standby never started its controllers"
    );

    // Clean-up through the standby's socket; the cached OS image with the CLIs.
    for id in [&o, &restored, &v] {
        ops::delete(&mut b.c, id).await;
    }
    for id in [&o, &restored, &v] {
        ops::wait_volume_gone(&mut a.c, id).await;
        eventually(STEP, &format!("img_{id} to be removed"), || {
            let gone = ceph.info(&format!("img_{id}")).is_none();
            async move { gone.then_some(()) }
        })
        .await;
    }
    let status = b.d.terminate().await;
    assert!(status.success(), "standby exit {status}");
    let status = a.d.terminate().await;
    assert!(status.success(), "leader exit {status}");
    ceph.remove_os_image(&digest);
    left.done();
    step(t0, "cleaned up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs ceph: cargo xtask integration"]
async fn a_standby_finishes_the_flatten_of_a_killed_leader_without_changing_data() {
    let _serial = SERIAL.lock().await;
    let Some(env) = env() else { return };
    let t0 = Instant::now();
    let setup = Setup::new(&env);
    let ceph = setup.ceph.clone();
    let left = Leftovers::new(&ceph);
    let size = 512 * MIB;

    let mut a = Node::start(&setup, "a", None).await;
    a.wait_leading(LEASE * 2).await;
    let mut b = Node::start(&setup, "b", None).await;
    b.wait_standby().await;
    let case = FlattenCase::create(&ceph, &mut b.c, &left, size).await;
    step(t0, "V, S and C ready");
    let present = case.start_flatten(&ceph, &mut b.c, size).await;
    step(t0, &format!("flatten of C running on a: {present} objects"));

    let killed = Instant::now();
    let status =
        a.d.stop_with(rustix::process::Signal::KILL, Duration::from_secs(30))
            .await;
    assert!(!status.success());
    assert!(
        ceph.parent(&case.c_image()).is_some(),
        "the kill interrupted the flatten"
    );
    b.wait_leading(TAKEOVER_BOUND + Duration::from_secs(5))
        .await;
    let takeover = killed.elapsed();
    step(
        t0,
        &format!("b leads {:.1}s after the kill", takeover.as_secs_f64()),
    );
    assert!(
        takeover <= TAKEOVER_BOUND,
        "the standby took {takeover:?} to take over (bound: lease + 5 s)"
    );
    case.finish(&ceph, &mut b.c, STEP).await;
    step(
        t0,
        &format!(
            "flatten finished by b {:.1}s after the kill; data intact",
            killed.elapsed().as_secs_f64()
        ),
    );
    assert_eq!(b.runner("succeeded"), 1, "b ran the flatten once");
    assert!(b
        .d
        .logs()
        .contains("fenced (blocklisted) the previous leader"));

    case.remove(&ceph, &mut b.c).await;
    let status = b.d.terminate().await;
    assert!(status.success(), "exit {status}");
    left.done();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs ceph: cargo xtask integration"]
async fn a_paused_leader_is_fenced_and_steps_down_without_damage() {
    let _serial = SERIAL.lock().await;
    let Some(env) = env() else { return };
    let t0 = Instant::now();
    let setup = Setup::new(&env);
    let ceph = setup.ceph.clone();
    let left = Leftovers::new(&ceph);
    let size = 512 * MIB;

    let mut a = Node::start(&setup, "a", None).await;
    a.wait_leading(LEASE * 2).await;
    let mut b = Node::start(&setup, "b", None).await;
    b.wait_standby().await;
    let a_addr = a.addr();
    let case = FlattenCase::create(&ceph, &mut b.c, &left, size).await;
    case.start_flatten(&ceph, &mut b.c, size).await;
    step(t0, "flatten of C running on a");

    let pid = rustix::process::Pid::from_raw(a.d.pid() as i32).expect("pid");
    rustix::process::kill_process(pid, rustix::process::Signal::STOP).expect("SIGSTOP");
    let paused = Instant::now();
    b.wait_leading(TAKEOVER_BOUND + Duration::from_secs(5))
        .await;
    step(
        t0,
        &format!(
            "a paused; b leads {:.1}s later",
            paused.elapsed().as_secs_f64()
        ),
    );
    assert!(
        ceph.blocklist().contains(&a_addr),
        "the paused leader {a_addr} is on the blocklist before it can wake up: {:?}",
        ceph.blocklist()
    );
    // Let b get going before a wakes up.
    tokio::time::sleep(Duration::from_secs(2)).await;
    rustix::process::kill_process(pid, rustix::process::Signal::CONT).expect("SIGCONT");
    let woke = Instant::now();
    let status = a.d.wait_exit(Duration::from_secs(60)).await;
    step(
        t0,
        &format!(
            "a woke up and exited after {:.1}s: {status}",
            woke.elapsed().as_secs_f64()
        ),
    );
    assert_eq!(
        status.code(),
        Some(EXIT_LOST_LEADERSHIP),
        "the old leader steps down with the lost-leadership code:\n{}",
        a.d.logs()
    );
    let logs = a.d.logs();
    eprintln!("what the old leader said after waking up (warnings and errors):");
    for l in logs
        .lines()
        .filter(|l| l.contains(r#""level":"WARN""#) || l.contains(r#""level":"ERROR""#))
    {
        eprintln!("  {}", l.chars().take(300).collect::<String>());
    }
    assert!(logs.contains("lost the leader lease"), "{logs}");
    assert!(
        logs.contains("blocklisted"),
        "the old leader's operations were refused (blocklisted):\n{logs}"
    );
    assert!(b.leads(), "b kept the lease");
    case.finish(&ceph, &mut b.c, STEP).await;
    assert!(b.leads(), "b still leads");
    step(t0, "b finished the flatten; data intact");

    case.remove(&ceph, &mut b.c).await;
    let status = b.d.terminate().await;
    assert!(status.success(), "exit {status}");
    left.done();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs ceph: cargo xtask integration"]
async fn a_restarted_daemon_resumes_a_flatten_without_waiting_for_the_killed_clients_locks() {
    let _serial = SERIAL.lock().await;
    let Some(env) = env() else { return };
    let t0 = Instant::now();
    let setup = Setup::new(&env);
    let ceph = setup.ceph.clone();
    let left = Leftovers::new(&ceph);
    let size = 512 * MIB;

    let mut a = Node::start(&setup, "a", None).await;
    a.wait_leading(LEASE * 2).await;
    let a_addr = a.addr();
    let case = FlattenCase::create(&ceph, &mut a.c, &left, size).await;
    case.start_flatten(&ceph, &mut a.c, size).await;
    let status =
        a.d.stop_with(rustix::process::Signal::KILL, Duration::from_secs(30))
            .await;
    assert!(!status.success());
    let image = case.c_image();
    let at_kill = ceph.data_objects(&image);
    assert!(
        ceph.parent(&image).is_some(),
        "the kill interrupted the flatten"
    );
    // The dead client still watches C (until the OSD times it out), so librbd would take it for
    // a live lock owner and wait instead of breaking its lock.
    assert!(
        ceph.watchers(&image).contains(&a_addr),
        "the killed daemon {a_addr} still watches C: {:?}",
        ceph.watchers(&image)
    );
    step(
        t0,
        &format!("a killed during the flatten ({at_kill} objects of C copied)"),
    );

    // Same directory, same socket: the same identity.
    let dir = a.d.into_dir_after_exit();
    let restarted = Instant::now();
    let mut a = Node::start(&setup, "a (restarted)", Some(dir)).await;
    let led = a.wait_leading(Duration::from_secs(10)).await;
    step(
        t0,
        &format!(
            "restarted a leads after {:.1}s",
            restarted.elapsed().as_secs_f64()
        ),
    );
    assert!(
        led < Duration::from_secs(5),
        "the restart waited {led:?} for its dead predecessor's lease"
    );
    assert!(a.d.logs().contains("earlier process"), "{}", a.d.logs());
    let resumed = eventually(Duration::from_secs(60), "the flatten to resume", || {
        let n = ceph.data_objects(&image);
        let flat = ceph.parent(&image).is_none();
        async move { (n > at_kill || flat).then(|| restarted.elapsed()) }
    })
    .await;
    step(
        t0,
        &format!(
            "the flatten resumed {:.1}s after the restart",
            resumed.as_secs_f64()
        ),
    );
    assert!(
        resumed < Duration::from_secs(15),
        "the resumed flatten waited {resumed:?}: the killed client's image lock was not broken \
         at once"
    );
    case.finish(&ceph, &mut a.c, STEP).await;
    step(t0, "flatten finished; data intact");

    case.remove(&ceph, &mut a.c).await;
    let status = a.d.terminate().await;
    assert!(status.success(), "exit {status}");
    left.done();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs ceph: cargo xtask integration"]
async fn failover_time_over_repeated_kills() {
    let _serial = SERIAL.lock().await;
    let Some(env) = env() else { return };
    let t0 = Instant::now();
    let kills: usize = var("CEPHVOL_HA_KILLS")
        .map(|v| v.parse().expect("CEPHVOL_HA_KILLS: a number"))
        .unwrap_or(3);
    let setup = Setup::new(&env);
    let mut leader = Node::start(&setup, "first", None).await;
    leader.wait_leading(LEASE * 2).await;
    let mut standby = Node::start(&setup, "second", None).await;
    standby.wait_standby().await;
    let mut times = Vec::new();
    for round in 1..=kills {
        // Kill at evenly spread moments of the leader's 5 s renewal cycle (a leader that just
        // took over renewed last when it took the lease): the failover time depends on how much
        // of its lease was left.
        let phase = Duration::from_millis(500 * (round as u64 % 10) + 250);
        tokio::time::sleep(phase).await;
        let killed = Instant::now();
        let status = leader
            .d
            .stop_with(rustix::process::Signal::KILL, Duration::from_secs(30))
            .await;
        assert!(!status.success());
        standby
            .wait_leading(TAKEOVER_BOUND + Duration::from_secs(10))
            .await;
        let t = killed.elapsed();
        step(
            t0,
            &format!(
                "kill {round} ({:.2}s after the standby came up): the standby leads after {:.2}s",
                phase.as_secs_f64(),
                t.as_secs_f64()
            ),
        );
        times.push(t);
        // The survivor leads; a fresh daemon becomes the next standby.
        leader = standby;
        standby = Node::start(&setup, "next", None).await;
        standby.wait_standby().await;
    }
    times.sort();
    let median = if times.len() % 2 == 1 {
        times[times.len() / 2]
    } else {
        (times[times.len() / 2 - 1] + times[times.len() / 2]) / 2
    };
    let max = *times.last().expect("at least one kill");
    eprintln!(
        "failover over {kills} kills (SIGKILL → standby's cephvol_leader 1, lease {LEASE:?}): \
         median {:.2}s, max {:.2}s",
        median.as_secs_f64(),
        max.as_secs_f64()
    );
    assert!(
        max <= TAKEOVER_BOUND,
        "a failover took {max:?} (bound: lease + 5 s)"
    );
    let status = standby.d.terminate().await;
    assert!(status.success(), "exit {status}");
    let status = leader.d.terminate().await;
    assert!(status.success(), "exit {status}");
}
