//! A single-node Ceph cluster (one mon, one mgr, one bluestore OSD on a sparse file) under `target/ceph`.
//!
//! Everything lives in one directory: `ceph.conf`, keyrings, mon/osd/mgr data, admin sockets, logs, crash
//! dumps and the pid files of the daemons this module started. Daemons run in the foreground mode (`-f`),
//! detached with `setsid`; `down` signals only pids recorded here whose command line names our `ceph.conf`.
//! Settings measured to matter on a 2-core machine: fast paxos (`paxos_propose_interval` 0.05 s — the 1 s
//! default is most of the start-up time), pool size 1 on one OSD, clone v2 compatibility
//! (`mon_osd_initial_require_min_compat_client = mimic`) and a client mount timeout (clients otherwise
//! wait for ever).

use std::fs;
use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use crate::util;

/// Debian packages a cluster (and the clients of the suites: librbd1 and librados2, which the
/// `ceph` crate loads when it connects) needs.
pub const CLUSTER_PACKAGES: &[&str] = &[
    "ceph-mon",
    "ceph-osd",
    "ceph-mgr",
    "ceph-common",
    "librbd1",
    "librados2",
];

/// The pool the provider works in.
const POOL: &str = "cephvol";
/// The rbd-profile client user (without `client.`).
const USER: &str = "cephvol";
/// Placement groups of the pool (autoscaling is off).
const PG_NUM: &str = "8";
/// mgr modules that are not always-on in Pacific (none of them is needed here).
const MGR_DISABLED_MODULES: &str = "alerts,diskprediction_local,influx,insights,iostat,localpool,mirroring,nfs,\
     osd_perf_query,osd_support,prometheus,restful,selftest,snap_schedule,stats,telegraf,test_orchestrator,zabbix";
/// Size of the sparse file behind the bluestore OSD (sparse: only written data takes disk space;
/// the delete figure writes about 10 GiB under the flatten policy).
const OSD_SIZE: u64 = 24 << 30;

/// Health checks about the free space of the host's file system, not about the cluster: with
/// them alone the cluster serves every request, so they do not hold up [`Cluster::wait_healthy`].
/// The disk is shared (build trees, other users), so its free share is not ours to keep above
/// Ceph's thresholds; `mon_data_avail_crit = 0` keeps the mon from refusing to start on a nearly
/// full disk, and a wait that ends with the warning present prints it.
const HOST_DISK_CHECKS: &[&str] = &["MON_DISK_LOW", "MON_DISK_CRIT"];

/// One daemon of the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Daemon {
    /// `mon`, `osd` or `mgr`.
    pub kind: &'static str,
    /// Its id (`a`, `0`, `x`).
    pub id: &'static str,
    /// Binary name.
    pub bin: &'static str,
}

impl Daemon {
    fn name(&self) -> String {
        format!("{}.{}", self.kind, self.id)
    }
}

const MON: Daemon = Daemon {
    kind: "mon",
    id: "a",
    bin: "ceph-mon",
};
const OSD: Daemon = Daemon {
    kind: "osd",
    id: "0",
    bin: "ceph-osd",
};
const MGR: Daemon = Daemon {
    kind: "mgr",
    id: "x",
    bin: "ceph-mgr",
};
/// Start order.
const DAEMONS: [Daemon; 3] = [MON, OSD, MGR];

/// What `up` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpOutcome {
    /// Everything was already running and healthy.
    AlreadyUp,
    /// An existing cluster was (partly) restarted.
    Restarted,
    /// A new cluster was created.
    Created,
}

/// The cluster under `target/ceph` (or `$CEPHVOL_CEPH_DIR`).
#[derive(Debug, Clone)]
pub struct Cluster {
    dir: PathBuf,
    v2_port: u16,
    v1_port: u16,
}

impl Cluster {
    /// The cluster of this work tree. Ports come from `CEPHVOL_MON_PORT` (msgr2, default 3300) and
    /// `CEPHVOL_MON_V1_PORT` (legacy, default 6789) for a new cluster; an existing one keeps its ports.
    pub fn from_env() -> Result<Cluster> {
        let dir = match std::env::var_os("CEPHVOL_CEPH_DIR") {
            Some(d) => PathBuf::from(d),
            None => util::root().join("target").join("ceph"),
        };
        let port = |var: &str, default: u16| -> Result<u16> {
            match std::env::var(var) {
                Ok(v) => v
                    .parse()
                    .with_context(|| format!("{var}={v:?} is not a port")),
                Err(_) => Ok(default),
            }
        };
        let mut cluster = Cluster {
            dir,
            v2_port: port("CEPHVOL_MON_PORT", 3300)?,
            v1_port: port("CEPHVOL_MON_V1_PORT", 6789)?,
        };
        if let Ok(ports) = fs::read_to_string(cluster.dir.join("mon-ports")) {
            let mut it = ports.split_whitespace().map(str::parse::<u16>);
            if let (Some(Ok(v2)), Some(Ok(v1))) = (it.next(), it.next()) {
                cluster.v2_port = v2;
                cluster.v1_port = v1;
            }
        }
        Ok(cluster)
    }

    fn conf(&self) -> PathBuf {
        self.dir.join("ceph.conf")
    }
    fn keyring(&self, entity: &str) -> PathBuf {
        self.dir.join(format!("ceph.{entity}.keyring"))
    }
    fn clients_keyring(&self) -> PathBuf {
        self.dir.join("ceph.clients.keyring")
    }
    /// Writes the keyring with every client key (admin and the test user), see `env_vars`.
    fn write_clients_keyring(&self) -> Result<()> {
        let mut all = fs::read_to_string(self.keyring("client.admin"))?;
        all.push_str(&fs::read_to_string(
            self.keyring(&format!("client.{USER}")),
        )?);
        write_private(&self.clients_keyring(), all.as_bytes())
    }
    fn pid_file(&self, d: Daemon) -> PathBuf {
        self.dir.join("pids").join(format!("{}.pid", d.name()))
    }
    fn created_marker(&self) -> PathBuf {
        self.dir.join("created")
    }
    /// `mon_host` value.
    fn mon_host(&self) -> String {
        format!(
            "[v2:127.0.0.1:{},v1:127.0.0.1:{}]",
            self.v2_port, self.v1_port
        )
    }

    /// Shell exports for clients (tests, the daemon).
    pub fn env_vars(&self) -> Vec<(String, String)> {
        let p = |p: PathBuf| p.display().to_string();
        vec![
            ("CEPH_CONF".into(), p(self.conf())),
            ("CEPH_POOL".into(), POOL.into()),
            ("CEPH_USER".into(), USER.into()),
            ("CEPH_CLIENT".into(), format!("client.{USER}")),
            // Ceph's own tools read CEPH_KEYRING as their `keyring` option: this one holds the
            // keys of client.admin and of the test user, so that both the `ceph`/`rbd` CLIs (as
            // admin) and clients as the test user work with it exported.
            ("CEPH_KEYRING".into(), p(self.clients_keyring())),
            (
                "CEPH_USER_KEYRING".into(),
                p(self.keyring(&format!("client.{USER}"))),
            ),
            (
                "CEPH_KEY_FILE".into(),
                p(self.dir.join(format!("client.{USER}.key"))),
            ),
            ("CEPH_ADMIN_KEYRING".into(), p(self.keyring("client.admin"))),
            (
                "CEPH_MONITORS".into(),
                format!("127.0.0.1:{}", self.v1_port),
            ),
        ]
    }

    /// The pid of a daemon we started, if it is still alive and really ours.
    pub fn running_pid(&self, d: Daemon) -> Option<u32> {
        let pid: u32 = fs::read_to_string(self.pid_file(d))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let conf = self.conf().display().to_string();
        let ours = args.first().is_some_and(|a| a.ends_with(d.bin))
            && args.contains(&conf)
            && args.windows(2).any(|w| w[0] == "-i" && w[1] == d.id);
        // A zombie has an empty command line, so it never counts as running.
        let zombie = fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit(')')
                    .next()
                    .is_some_and(|rest| rest.trim_start().starts_with('Z'))
            })
            .unwrap_or(true);
        (ours && !zombie).then_some(pid)
    }

    fn all_running(&self) -> bool {
        DAEMONS.iter().all(|d| self.running_pid(*d).is_some())
    }

    /// Brings the cluster up: no-op when healthy, restart of an existing one, or a fresh one.
    pub fn up(&self) -> Result<UpOutcome> {
        if self.created_marker().exists() && self.all_running() {
            if self.wait_healthy(Duration::from_secs(60), false).is_ok() {
                self.write_clients_keyring()?;
                return Ok(UpOutcome::AlreadyUp);
            }
            bail!(
                "ceph daemons are running but the cluster is not healthy: see {}",
                self.dir.join("log").display()
            );
        }
        ensure_packages(CLUSTER_PACKAGES)?;
        let outcome = if self.created_marker().exists() {
            self.restart()?;
            UpOutcome::Restarted
        } else {
            self.create()?;
            UpOutcome::Created
        };
        self.write_clients_keyring()?;
        Ok(outcome)
    }

    fn check_mon_ports_free(&self) -> Result<()> {
        for port in [self.v2_port, self.v1_port] {
            if TcpListener::bind(("127.0.0.1", port)).is_err() {
                bail!(
                    "port 127.0.0.1:{port} is busy: a mon cannot bind it (choose others with CEPHVOL_MON_PORT / \
                     CEPHVOL_MON_V1_PORT and remove {})",
                    self.dir.display()
                );
            }
        }
        Ok(())
    }

    fn restart(&self) -> Result<()> {
        let t0 = Instant::now();
        if self.running_pid(MON).is_none() {
            self.check_mon_ports_free()?;
        }
        for d in DAEMONS {
            if self.running_pid(d).is_none() {
                self.spawn_daemon(d)?;
            }
        }
        self.wait_healthy(Duration::from_secs(120), true)?;
        eprintln!(
            "ceph: restarted existing cluster in {:.1}s",
            t0.elapsed().as_secs_f64()
        );
        Ok(())
    }

    fn create(&self) -> Result<()> {
        let t0 = Instant::now();
        // Leftovers of a half-created cluster: stop what runs, then start from scratch.
        self.down()?;
        if self.dir.exists() {
            fs::remove_dir_all(&self.dir)
                .with_context(|| format!("removing {}", self.dir.display()))?;
        }
        self.check_mon_ports_free()?;
        for sub in ["mon/a", "osd/0", "mgr/x", "run", "log", "crash", "pids"] {
            fs::create_dir_all(self.dir.join(sub))?;
        }
        fs::write(
            self.dir.join("mon-ports"),
            format!("{} {}\n", self.v2_port, self.v1_port),
        )?;
        let fsid = new_uuid()?;
        fs::write(self.conf(), self.conf_text(&fsid))?;
        self.write_keyrings()?;

        let monmap = self.dir.join("monmap");
        run_quiet(
            Command::new("monmaptool")
                .args(["--create", "--fsid", &fsid, "--addv", "a"])
                .arg(self.mon_host())
                .arg(&monmap),
        )?;
        run_quiet(
            Command::new("ceph-mon")
                .arg("-c")
                .arg(self.conf())
                .args(["--mkfs", "-i", "a", "--monmap"])
                .arg(&monmap)
                .arg("--keyring")
                .arg(self.dir.join("bootstrap.keyring")),
        )?;
        self.spawn_daemon(MON)?;
        // The mgr only needs the mon; its Python modules take seconds to load: start it first.
        self.spawn_daemon(MGR)?;
        eprintln!(
            "ceph: mon and mgr started at {:.1}s",
            t0.elapsed().as_secs_f64()
        );

        // The OSD's bluestore mkfs does not need the mon: run it while the mon starts.
        let osd_uuid = new_uuid()?;
        let mkfs_log = fs::File::create(self.dir.join("log").join("osd-mkfs.out"))?;
        let mut mkfs: Child = Command::new("ceph-osd")
            .arg("-c")
            .arg(self.conf())
            .args([
                "--no-mon-config",
                "--mkfs",
                "-i",
                OSD.id,
                "--osd-uuid",
                &osd_uuid,
            ])
            .stdin(Stdio::null())
            .stdout(mkfs_log.try_clone()?)
            .stderr(mkfs_log)
            .spawn()
            .context("starting ceph-osd --mkfs")?;
        let new_osd = self.ceph(&["osd", "new", &osd_uuid, OSD.id]);
        let mkfs_status = mkfs.wait()?;
        new_osd?;
        if !mkfs_status.success() {
            bail!(
                "ceph-osd --mkfs failed ({mkfs_status}): see {}/log/osd-mkfs.out",
                self.dir.display()
            );
        }
        self.spawn_daemon(OSD)?;
        eprintln!("ceph: osd started at {:.1}s", t0.elapsed().as_secs_f64());
        self.ceph(&["osd", "pool", "create", POOL, PG_NUM, PG_NUM])?;
        eprintln!("ceph: pool created at {:.1}s", t0.elapsed().as_secs_f64());
        // `rbd pool init` writes to the pool: before the OSD is up its client waits on osdmap
        // retries for seconds, so wait for active+clean PGs first; then it takes a moment.
        self.wait_healthy(Duration::from_secs(180), true)?;
        eprintln!("ceph: healthy at {:.1}s", t0.elapsed().as_secs_f64());
        run_quiet(
            Command::new("rbd")
                .arg("-c")
                .arg(self.conf())
                .args(["pool", "init", POOL]),
        )?;
        self.wait_healthy(Duration::from_secs(60), true)?;
        fs::write(self.created_marker(), b"")?;
        eprintln!(
            "ceph: created a new cluster in {:.1}s",
            t0.elapsed().as_secs_f64()
        );
        Ok(())
    }

    fn conf_text(&self, fsid: &str) -> String {
        let d = self.dir.display();
        format!(
            "# Generated by `cargo xtask ceph up`: a single-node test cluster on loopback.\n\
[global]\n\
fsid = {fsid}\n\
mon_host = {mon_host}\n\
public_addr = 127.0.0.1\n\
cluster_addr = 127.0.0.1\n\
ms_bind_ipv6 = false\n\
ms_bind_port_min = 6800\n\
ms_bind_port_max = 7300\n\
auth_cluster_required = cephx\n\
auth_service_required = cephx\n\
auth_client_required = cephx\n\
keyring = {d}/$cluster.$name.keyring\n\
run_dir = {d}/run\n\
crash_dir = {d}/crash\n\
osd_pool_default_size = 1\n\
osd_pool_default_min_size = 1\n\
mon_allow_pool_size_one = true\n\
mon_warn_on_pool_no_redundancy = false\n\
osd_crush_chooseleaf_type = 0\n\
osd_pool_default_pg_autoscale_mode = off\n\
mon_max_pg_per_osd = 1000\n\
paxos_propose_interval = 0.05\n\
paxos_min_wait = 0.01\n\
mgr_stats_period = 1\n\
mon_osd_initial_require_min_compat_client = mimic\n\
client_mount_timeout = 30\n\
rados_mon_op_timeout = 30\n\
rados_osd_op_timeout = 60\n\
mon_allow_pool_delete = true\n\
auth_allow_insecure_global_id_reclaim = false\n\
mon_warn_on_insecure_global_id_reclaim_allowed = false\n\
mon_data_avail_warn = 2\n\
mon_data_avail_crit = 0\n\
\n\
[mon]\n\
log_file = {d}/log/$cluster-$name.log\n\
mon_data = {d}/mon/$id\n\
mgr_initial_modules =\n\
\n\
[osd]\n\
log_file = {d}/log/$cluster-$name.log\n\
osd_data = {d}/osd/$id\n\
osd_objectstore = bluestore\n\
bluestore_block_create = true\n\
bluestore_fsck_on_mkfs = false\n\
bluestore_block_size = {OSD_SIZE}\n\
osd_memory_target = 939524096\n\
\n\
[mgr]\n\
# No device-health pool (an extra PG to peer at start-up; nothing to monitor here).\n\
mgr/devicehealth/enable_monitoring = false\n\
# Loading a Python module costs ~0.3 s: load only the always-on ones.\n\
mgr_disabled_modules = {MGR_DISABLED_MODULES}\n\
log_file = {d}/log/$cluster-$name.log\n\
mgr_data = {d}/mgr/$id\n",
            mon_host = self.mon_host(),
        )
    }

    /// Keys are generated up front and imported into the mon's store at mkfs: no `ceph auth` calls.
    fn write_keyrings(&self) -> Result<()> {
        let client = format!("client.{USER}");
        let client_mon_caps =
            format!("profile rbd, allow command \"auth get-key\" with entity=\"{client}\"");
        let client_pool_caps = format!("profile rbd pool={POOL}");
        let entities: Vec<(&str, Vec<(&str, &str)>)> = vec![
            ("mon.", vec![("mon", "allow *")]),
            (
                "client.admin",
                vec![
                    ("mds", "allow *"),
                    ("mgr", "allow *"),
                    ("mon", "allow *"),
                    ("osd", "allow *"),
                ],
            ),
            (
                "osd.0",
                vec![
                    ("mgr", "allow profile osd"),
                    ("mon", "allow profile osd"),
                    ("osd", "allow *"),
                ],
            ),
            (
                "mgr.x",
                vec![
                    ("mds", "allow *"),
                    ("mon", "allow profile mgr"),
                    ("osd", "allow *"),
                ],
            ),
            (
                client.as_str(),
                vec![
                    ("mgr", client_pool_caps.as_str()),
                    ("mon", client_mon_caps.as_str()),
                    ("osd", client_pool_caps.as_str()),
                ],
            ),
        ];
        let mut bootstrap = String::new();
        for (entity, caps) in &entities {
            let key = gen_key()?;
            let mut section = format!("[{entity}]\n\tkey = {key}\n");
            for (service, cap) in caps {
                section.push_str(&format!(
                    "\tcaps {service} = \"{}\"\n",
                    cap.replace('"', "\\\"")
                ));
            }
            bootstrap.push_str(&section);
            if *entity != "mon." {
                write_private(&self.keyring(entity), section.as_bytes())?;
            }
            if *entity == client {
                write_private(
                    &self.dir.join(format!("{client}.key")),
                    format!("{key}\n").as_bytes(),
                )?;
            }
        }
        // Outside the mon data directory: `ceph-mon --mkfs` does nothing in a non-empty one.
        write_private(&self.dir.join("bootstrap.keyring"), bootstrap.as_bytes())
    }

    fn spawn_daemon(&self, d: Daemon) -> Result<u32> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("log").join(format!("{}.out", d.name())))?;
        let child = Command::new("setsid")
            .arg(d.bin)
            .arg("-c")
            .arg(self.conf())
            .args(["-f", "-i", d.id])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .current_dir(&self.dir)
            .spawn()
            .with_context(|| format!("starting {}", d.bin))?;
        // `setsid` execs the daemon in place (the child is not a process-group leader), so the pid is
        // the daemon's own. The child is not waited for: it outlives this process.
        let pid = child.id();
        fs::write(self.pid_file(d), format!("{pid}\n"))?;
        Ok(pid)
    }

    /// Runs `ceph -c CONF ARGS` as client.admin and returns stdout.
    fn ceph(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("ceph")
            .arg("-c")
            .arg(self.conf())
            .args(["--connect-timeout", "10"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("running the ceph CLI")?;
        if !out.status.success() {
            bail!(
                "ceph {}: {}: {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Waits for HEALTH_OK (or only [`HOST_DISK_CHECKS`]), the OSD up (with the current pid when
    /// `check_osd_pid`), an available mgr and every PG active+clean.
    fn wait_healthy(&self, timeout: Duration, check_osd_pid: bool) -> Result<()> {
        let start = Instant::now();
        let deadline = start + timeout;
        let mut previous = String::new();
        loop {
            let last = match self.health_state(check_osd_pid) {
                Ok(None) => return Ok(()),
                Ok(Some(why)) => why,
                Err(e) => format!("{e:#}"),
            };
            if last != previous {
                eprintln!(
                    "ceph: waiting ({:.1}s): {last}",
                    start.elapsed().as_secs_f64()
                );
                previous = last.clone();
            }
            for d in DAEMONS {
                if self.running_pid(d).is_none() {
                    bail!(
                        "{} died: see {}/log/{}.out and ceph-{}.log",
                        d.bin,
                        self.dir.display(),
                        d.name(),
                        d.name()
                    );
                }
            }
            if Instant::now() > deadline {
                bail!("ceph cluster not healthy after {timeout:?}: {last}");
            }
            sleep(Duration::from_millis(200));
        }
    }

    /// `None` when healthy, else what is missing.
    fn health_state(&self, check_osd_pid: bool) -> Result<Option<String>> {
        let status: Value = serde_json::from_str(&self.ceph(&["status", "-f", "json"])?)?;
        if let Some(why) = health_blocker(&status) {
            return Ok(Some(why));
        }
        let host_disk_note = (status["health"]["status"] != "HEALTH_OK").then(|| {
            format!(
                "ceph: note: the host's disk is low, not held up by it: {}",
                status["health"]["checks"]
            )
        });
        if status["osdmap"]["num_up_osds"].as_u64() != Some(1) {
            return Ok(Some("osd not up".into()));
        }
        if status["mgrmap"]["available"].as_bool() != Some(true) {
            return Ok(Some("mgr not available".into()));
        }
        let pgmap = &status["pgmap"];
        let total = pgmap["num_pgs"].as_u64().unwrap_or(0);
        let clean: u64 = pgmap["pgs_by_state"]
            .as_array()
            .map(|states| {
                states
                    .iter()
                    .filter(|s| s["state_name"] == "active+clean")
                    .filter_map(|s| s["count"].as_u64())
                    .sum()
            })
            .unwrap_or(0);
        if total == 0 || clean != total {
            return Ok(Some(format!("pgs {clean}/{total} active+clean")));
        }
        if check_osd_pid {
            // After a restart the mon reports the old OSD instance as up for a while.
            let pid = self
                .running_pid(OSD)
                .ok_or_else(|| anyhow!("ceph-osd is not running"))?;
            let dump: Value = serde_json::from_str(&self.ceph(&["osd", "dump", "-f", "json"])?)?;
            let addr = dump["osds"][0]["public_addr"].as_str().unwrap_or("");
            if !addr.ends_with(&format!("/{pid}")) {
                return Ok(Some(format!(
                    "osd address {addr} is not the current instance {pid}"
                )));
            }
        }
        if let Some(note) = host_disk_note {
            eprintln!("{note}");
        }
        Ok(None)
    }

    /// Stops the daemons this module started. Returns whether anything was running.
    pub fn down(&self) -> Result<bool> {
        // OSD and mgr first, while the mon can still acknowledge the OSD's goodbye (else it waits 5 s).
        let first = self.stop(&[OSD, MGR])?;
        let second = self.stop(&[MON])?;
        Ok(first || second)
    }

    fn stop(&self, daemons: &[Daemon]) -> Result<bool> {
        let pids: Vec<(Daemon, u32)> = daemons
            .iter()
            .filter_map(|d| self.running_pid(*d).map(|p| (*d, p)))
            .collect();
        for (_, pid) in &pids {
            signal(*pid, "TERM")?;
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        for (d, pid) in &pids {
            while self.running_pid(*d) == Some(*pid) {
                if Instant::now() > deadline {
                    eprintln!("ceph: {} ({pid}) ignores SIGTERM: SIGKILL", d.bin);
                    signal(*pid, "KILL")?;
                    sleep(Duration::from_millis(200));
                    break;
                }
                sleep(Duration::from_millis(50));
            }
        }
        for d in daemons {
            if self.running_pid(*d).is_none() {
                let _ = fs::remove_file(self.pid_file(*d));
            }
        }
        Ok(!pids.is_empty())
    }

    /// Prints whether the cluster exists and runs.
    pub fn print_status(&self) -> Result<bool> {
        if !self.created_marker().exists() {
            println!("ceph: no cluster in {}", self.dir.display());
            return Ok(false);
        }
        for d in DAEMONS {
            match self.running_pid(d) {
                Some(pid) => println!("ceph: {} running (pid {pid})", d.name()),
                None => println!("ceph: {} stopped", d.name()),
            }
        }
        if self.running_pid(MON).is_none() {
            println!("ceph: down");
            return Ok(false);
        }
        let up = match self.health_state(false) {
            Ok(None) => {
                println!("ceph: up and healthy ({})", self.conf().display());
                true
            }
            Ok(Some(why)) => {
                println!("ceph: running but not healthy: {why}");
                false
            }
            Err(e) => {
                println!("ceph: running but not answering: {e:#}");
                false
            }
        };
        Ok(up && self.all_running())
    }

    /// Stops the cluster and deletes its directory.
    pub fn destroy(&self) -> Result<()> {
        self.down()?;
        if self.dir.exists() {
            fs::remove_dir_all(&self.dir)?;
        }
        Ok(())
    }
}

/// What in `ceph status -f json`'s health holds a wait up: `None` for HEALTH_OK and for warnings
/// that are all [`HOST_DISK_CHECKS`].
fn health_blocker(status: &Value) -> Option<String> {
    let health = status["health"]["status"].as_str().unwrap_or("?");
    if health == "HEALTH_OK" {
        return None;
    }
    let only_host_disk = status["health"]["checks"]
        .as_object()
        .is_some_and(|checks| {
            checks
                .keys()
                .all(|check| HOST_DISK_CHECKS.contains(&check.as_str()))
        });
    (!only_host_disk).then(|| format!("health {health}: {}", status["health"]["checks"]))
}

/// Installs the Debian packages that are missing (one `apt-get update`, then one install).
pub fn ensure_packages(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| !package_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!(
        "xtask: installing missing Debian packages: {}",
        missing.join(" ")
    );
    let apt = |args: &[&str]| {
        util::run(
            Command::new("apt-get")
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .stdin(Stdio::null()),
        )
    };
    apt(&["update", "-q"])?;
    apt(&[
        &["install", "-y", "-q", "--no-install-recommends"][..],
        &missing,
    ]
    .concat())
}

fn package_installed(name: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", name])
        .output()
        .map(|o| {
            o.status.success()
                && String::from_utf8_lossy(&o.stdout).contains("install ok installed")
        })
        .unwrap_or(false)
}

fn run_quiet(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn gen_key() -> Result<String> {
    let out = Command::new("ceph-authtool")
        .arg("--gen-print-key")
        .output()
        .context("running ceph-authtool")?;
    if !out.status.success() {
        bail!("ceph-authtool --gen-print-key failed: {}", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn new_uuid() -> Result<String> {
    Ok(fs::read_to_string("/proc/sys/kernel/random/uuid")?
        .trim()
        .to_string())
}

fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)?;
    Ok(())
}

fn signal(pid: u32, sig: &str) -> Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()?;
    if !status.success() {
        eprintln!("ceph: kill -{sig} {pid} failed ({status})");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::health_blocker;
    use serde_json::json;

    #[test]
    fn a_cluster_warning_only_about_the_host_disk_does_not_hold_a_wait_up() {
        let low_disk = json!({"health": {"status": "HEALTH_WARN", "checks": {
            "MON_DISK_LOW": {"severity": "HEALTH_WARN"}}}});
        assert_eq!(health_blocker(&low_disk), None);
        assert_eq!(
            health_blocker(&json!({"health": {"status": "HEALTH_OK"}})),
            None
        );
    }

    #[test]
    fn any_other_warning_holds_a_wait_up_and_is_named() {
        let osd_down = json!({"health": {"status": "HEALTH_WARN", "checks": {
            "MON_DISK_LOW": {}, "OSD_DOWN": {}}}});
        let why = health_blocker(&osd_down).expect("OSD_DOWN blocks");
        assert!(why.contains("OSD_DOWN"), "{why}");
        let no_checks = json!({"health": {"status": "HEALTH_ERR"}});
        assert!(health_blocker(&no_checks).is_some());
    }
}
