// size: one clap struct holding every daemon flag with its doc comment (the --help text), and the tests of their parsing and validation.
//! Daemon flags: the Go provider's names and defaults, plus cephvol's own.
//!
//! Go flags kept: `--address`, `--supported-volume-classes`, `--ceph-monitors`,
//! `--ceph-connect-timeout`, `--ceph-user`, `--ceph-key-file`, `--ceph-keyring-file`, `--ceph-pool`,
//! `--ceph-client`, `--ceph-kek-path`, `--limits-burst-factor`, `--limits-burst-duration`,
//! `--populator-buffer-size`, `--worker-size`, `--omap-iterator-size`, `--volume-event-max-events`,
//! `--volume-event-ttl`, `--volume-event-resync-interval`, `--async-max-workers`, and the zap logging
//! flags (accepted for drop-in compatibility and mapped to our logging where it makes sense).
//!
//! Differences from Go, on purpose: `--worker-size 1` is accepted (any value ≥ 1; Go rejected 1 by
//! mistake); `--ceph-*` flags are required only with the Ceph backend; durations use Go's syntax
//! (`90s`, `5m`, `1h30m`).
//!
//! # Backend selection (never silently on local files)
//! `--backend` picks the backend. Without it, the Go provider's command line (Ceph connection
//! flags: `--ceph-monitors`, `--ceph-pool`, `--ceph-user`, `--ceph-key-file`,
//! `--ceph-keyring-file`) selects the Ceph backend, and a command line without any of them
//! selects the embedded local backend. `--backend local` together with a Ceph connection flag
//! is refused, and so is the Ceph backend in a build without the `ceph` feature (the message
//! says how to get one). `--ceph-client` and `--ceph-kek-path` select nothing: both mean
//! something on the local backend too (access data, passphrase key).
//!
//! Ours: `--backend local|ceph`, `--data-dir`, `--metrics-address`, `--log-format`, `--log-level`,
//! `--socket-mode`, `--populate-queue-depth`, `--registry-insecure-hosts` (alias
//! `--registry-plain-http`), `--registry-skip-tls-verify`, `--registry-ca-file`, `--docker-config`,
//! `--shutdown-timeout`, `--max-volume-size`, `--os-image-gc-grace`, `--delete-policy`, and the leader lease of the Ceph backend: `--leader-lease`,
//! `--leader-renew-interval`, `--leader-id`, the Ceph timeouts `--ceph-op-timeout`,
//! `--ceph-mon-timeout`, `--ceph-format-concurrency`, the runner's classes `--async-populate-share`, `--async-fill-share`,
//! `--async-flatten-share`, `--async-aging`, and the deadlines of long operations
//! `--resolve-timeout`, `--format-timeout`, `--list-children-timeout`, `--stall-timeout`.
//!
//! # Ceph timeouts
//! librados waits for ever by default: with a stuck placement group every call would pin a
//! blocking thread until the process dies, and shutdown could not finish. The daemon bounds every
//! call on its cluster handle: `--ceph-connect-timeout` (10s) the connect and authentication
//! (`client_mount_timeout`), `--ceph-op-timeout` (30s) every OSD operation, librbd's included
//! (`rados_osd_op_timeout`), `--ceph-mon-timeout` (10s) every mon command such as the pool usage of
//! `Status` (`rados_mon_op_timeout`). A call that runs into its bound fails as a transient backend
//! error: the RPC answers with an error and the controllers retry with backoff. `0` turns a bound
//! off. Keep `--ceph-op-timeout` above the OSD failure detection (heartbeat grace 20 s + interval
//! 6 s): shorter, an OSD fail-over becomes a burst of errors instead of a delay.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

use cli::{parse_duration, strip_unix_scheme};

use crate::error::{Error, Result};

/// Default unix socket path (the poollet's well-known provider socket).
pub const DEFAULT_ADDRESS: &str = "/var/run/iri-volumeprovider.sock";
/// Monitors reported in access data on the local backend when `--ceph-monitors` is not given.
pub const LOCAL_MONITORS: &str = "127.0.0.1:6789";
/// Pool name of the local backend when `--ceph-pool` is not given.
pub const LOCAL_POOL: &str = "cephvol";
/// Ceph client reported to consumers on the local backend when `--ceph-client` is not given.
pub const LOCAL_CLIENT: &str = "client.cephvol";

/// Which block backend and store the daemon runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    /// Sparse files and JSON documents under `--data-dir` (the embedded default).
    Local,
    /// librbd/librados on a Ceph cluster, objects in rados omap (needs the `ceph` cargo feature).
    Ceph,
}

impl BackendKind {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Local => "local",
            BackendKind::Ceph => "ceph",
        }
    }
}

/// Parses a byte count: digits, optionally followed by `Ki`, `Mi`, `Gi`, `Ti` or `Pi`.
fn parse_bytes(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid size {s:?} (examples: 1099511627776, 1024Gi, 1Pi)"))?;
    let shift = match unit {
        "" => 0,
        "Ki" => 10,
        "Mi" => 20,
        "Gi" => 30,
        "Ti" => 40,
        "Pi" => 50,
        _ => {
            return Err(format!(
                "invalid size unit in {s:?} (use Ki, Mi, Gi, Ti, Pi)"
            ))
        }
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Every daemon flag.
#[derive(Debug, Clone, Args)]
pub struct DaemonArgs {
    /// Unix socket to serve the IRI VolumeRuntime on (a `unix://` prefix is accepted).
    #[arg(long, default_value = DEFAULT_ADDRESS)]
    pub address: String,

    /// YAML/JSON list of volume classes `[{name, capabilities: {tps, iops}}]`. Without it one
    /// built-in class `standard` (tps 100 MiB/s, iops 3000) is offered.
    #[arg(long, value_name = "FILE")]
    pub supported_volume_classes: Option<PathBuf>,

    /// Ceph monitors `host:port[,host:port]`, copied verbatim into access data (local backend
    /// default: 127.0.0.1:6789, a placeholder).
    #[arg(long, default_value = "", hide_default_value = true)]
    pub ceph_monitors: String,

    /// Timeout of the connection to the Ceph cluster.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub ceph_connect_timeout: Duration,

    /// Bound of every OSD operation (librados rados_osd_op_timeout, librbd's calls included): a
    /// call on a stuck placement group fails after it and is retried; 0: no bound.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub ceph_op_timeout: Duration,

    /// Bound of every mon command (librados rados_mon_op_timeout: pool usage, client keys);
    /// 0: no bound.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub ceph_mon_timeout: Duration,

    /// LUKS2 formats at once on the Ceph backend. librbd derives each key with argon2 (seconds
    /// of CPU on several threads, ~1 GiB of memory): they run one by one by default, at the
    /// lowest CPU priority, so that other volumes' I/O and the OSDs on the same host keep the CPU.
    #[arg(long, default_value_t = 1)]
    pub ceph_format_concurrency: usize,

    /// Rados user id (without `client.`).
    #[arg(long, default_value = "", hide_default_value = true)]
    pub ceph_user: String,

    /// File containing only the user's key (wins over --ceph-keyring-file).
    #[arg(long, value_name = "FILE")]
    pub ceph_key_file: Option<PathBuf>,

    /// Ceph keyring file; the key of section `[client.<ceph-user>]` is used.
    #[arg(long, value_name = "FILE")]
    pub ceph_keyring_file: Option<PathBuf>,

    /// Pool holding the images (local backend default: cephvol).
    #[arg(long, default_value = "", hide_default_value = true)]
    pub ceph_pool: String,

    /// Ceph client whose key consumers get in access data, e.g. `client.volumes` (local backend
    /// default: client.cephvol).
    #[arg(long, default_value = "", hide_default_value = true)]
    pub ceph_client: String,

    /// File with exactly 32 bytes: the AES-256-GCM key protecting volume passphrases at rest.
    /// Local backend: generated under --data-dir when not given.
    #[arg(long, value_name = "FILE")]
    pub ceph_kek_path: Option<PathBuf>,

    /// Burst limit = factor × class limit.
    #[arg(long, default_value_t = 10)]
    pub limits_burst_factor: i64,

    /// Burst duration in seconds.
    #[arg(long, default_value_t = 15)]
    pub limits_burst_duration: i64,

    /// Copy buffer of OS image population, bytes (0 = 5 MiB).
    #[arg(long, default_value_t = 5_242_880)]
    pub populator_buffer_size: usize,

    /// Reconcile workers per controller (≥ 1).
    #[arg(long, default_value_t = 15)]
    pub worker_size: usize,

    /// Page size of omap listing (ceph backend), > 0.
    #[arg(long, default_value_t = 1000)]
    pub omap_iterator_size: usize,

    /// Events kept in memory for ListEvents (≤ 0: 1000).
    #[arg(long, default_value_t = 100, allow_negative_numbers = true)]
    pub volume_event_max_events: i64,

    /// How long an event is kept.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub volume_event_ttl: Duration,

    /// How often expired events are dropped.
    #[arg(long, default_value = "1m", value_parser = parse_duration)]
    pub volume_event_resync_interval: Duration,

    /// Long operations running at once (all classes together), > 0.
    #[arg(long, default_value_t = 10)]
    pub async_max_workers: usize,

    /// Share of --async-max-workers reserved for class `populate` (network-bound: OS-image
    /// resolution and populate). Shares are weights; see the runner's docs for the rounding.
    #[arg(long, default_value_t = 5)]
    pub async_populate_share: usize,

    /// Share reserved for class `fill` (CPU-bound: LUKS2 format, encrypted copies of restores).
    #[arg(long, default_value_t = 3)]
    pub async_fill_share: usize,

    /// Share reserved for class `flatten` (flattening clones before their parent goes).
    #[arg(long, default_value_t = 2)]
    pub async_flatten_share: usize,

    /// A long operation that has waited this long gets the next free slot of any class.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub async_aging: Duration,

    /// Deadline of one OS-image resolution at the registry (and of opening a rootfs up to the
    /// response); the registry client's connect (10s) and per-request (60s) bounds apply within.
    #[arg(long, default_value = "3m", value_parser = parse_duration)]
    pub resolve_timeout: Duration,

    /// Deadline of one LUKS2 format (key derivation takes seconds on Ceph Pacific).
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub format_timeout: Duration,

    /// Deadline of listing the children of an image or snapshot before flattening them.
    #[arg(long, default_value = "1m", value_parser = parse_duration)]
    pub list_children_timeout: Duration,

    /// A stream copy (populate, encrypted fill) or flatten whose progress has not moved for this
    /// long is cancelled and retried with backoff (0 disables the watchdog).
    #[arg(long, default_value = "15m", value_parser = parse_duration)]
    pub stall_timeout: Duration,

    /// Block backend and store: `local` (files under --data-dir) or `ceph`. Without this flag,
    /// any Ceph connection flag (--ceph-monitors, --ceph-pool, --ceph-user, --ceph-key-file,
    /// --ceph-keyring-file) selects `ceph`, and no such flag selects `local`.
    #[arg(long, value_enum)]
    pub backend: Option<BackendKind>,

    /// Where the local backend keeps images, objects and its generated KEK
    /// (default: $CEPHVOL_DATA_DIR, else $XDG_DATA_HOME/cephvol, else ./cephvol-data).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Serve Prometheus metrics on this TCP address, e.g. 127.0.0.1:9090 (off by default).
    #[arg(long, value_name = "ADDR")]
    pub metrics_address: Option<SocketAddr>,

    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log level or tracing filter (`info`, `debug`, `volumeprovider=debug,info`); RUST_LOG wins.
    #[arg(long, default_value = "info")]
    pub log_level: String,

    /// Permissions of the socket file, octal.
    #[arg(long, default_value = "0600", value_parser = parse_mode)]
    pub socket_mode: u32,

    /// Writes in flight while populating an OS image.
    #[arg(long, default_value_t = 4)]
    pub populate_queue_depth: usize,

    /// Registries (`host[:port]` as written in image references) reached over plain HTTP; repeat
    /// or separate with commas. Loopback registries always are.
    #[arg(
        long,
        alias = "registry-plain-http",
        value_delimiter = ',',
        value_name = "HOSTS"
    )]
    pub registry_insecure_hosts: Vec<String>,

    /// Accept any TLS certificate from registries (test registries only).
    #[arg(long)]
    pub registry_skip_tls_verify: bool,

    /// Extra PEM CA certificate(s) to trust for registries; repeatable.
    #[arg(long, value_name = "FILE")]
    pub registry_ca_file: Vec<PathBuf>,

    /// Docker config with registry credentials (default $DOCKER_CONFIG/config.json or
    /// ~/.docker/config.json).
    #[arg(long, value_name = "FILE")]
    pub docker_config: Option<PathBuf>,

    /// Largest volume, in bytes or with a suffix Ki/Mi/Gi/Ti/Pi: bigger CreateVolume and
    /// ExpandVolume requests are refused (INVALID_ARGUMENT). The default is the largest image
    /// librbd creates with its default object map and 4 MiB objects; an encrypted volume needs
    /// 16 MiB of it for its LUKS2 header.
    #[arg(long, default_value = "1000000Gi", value_parser = parse_bytes)]
    pub max_volume_size: u64,

    /// How long an OS image's populated copy is kept once no volume uses it (a cache for the
    /// next volume of that image); 0 keeps them for ever.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    pub os_image_gc_grace: Duration,

    /// What deleting a volume or volume snapshot does with data that restores still need:
    /// `deferred` (zero-copy: the image or rbd snapshot is kept hidden, and removed when its last
    /// snapshot or clone is gone) or `flatten` (the Go provider's: every clone is copied in full
    /// before the deletion finishes).
    #[arg(long, default_value = "deferred", value_parser = parse_delete_policy)]
    pub delete_policy: controllers::DeletePolicy,

    /// Bound of the whole shutdown after SIGTERM/SIGINT: in-flight requests, the controllers'
    /// current passes, draining long operations (cancelled when it runs out; they resume from the
    /// store at the next start) and releasing the leader lease (which otherwise expires by itself).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,

    /// Ceph backend: how long the leader lease lasts without renewal. Only the daemon holding it
    /// reconciles; a standby takes over within about this long after the leader died.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub leader_lease: Duration,

    /// Ceph backend: how often the leader renews its lease (at most half of --leader-lease).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub leader_renew_interval: Duration,

    /// Ceph backend: this replica's name in the leader lease, unique per replica (default:
    /// `<hostname>:<socket path>`). A daemon that finds the lease held under its own name by
    /// another process knows it is a dead earlier run of itself and takes over at once.
    #[arg(long, value_name = "NAME")]
    pub leader_id: Option<String>,

    /// zap compatibility: development mode (ignored).
    #[arg(long, hide = true, num_args = 0..=1, default_missing_value = "true")]
    pub zap_devel: Option<String>,
    /// zap compatibility: `json` selects --log-format json, `console` text.
    #[arg(long, hide = true)]
    pub zap_encoder: Option<String>,
    /// zap compatibility: `debug`, `info`, `error` or a number (≥1 = debug).
    #[arg(long, hide = true)]
    pub zap_log_level: Option<String>,
    /// zap compatibility (ignored).
    #[arg(long, hide = true)]
    pub zap_stacktrace_level: Option<String>,
    /// zap compatibility (ignored).
    #[arg(long, hide = true)]
    pub zap_time_encoding: Option<String>,
}

impl DaemonArgs {
    /// Checks values that clap cannot (ranges, required-by-backend flags). Runs before anything
    /// starts.
    pub fn validate(&self) -> Result<()> {
        let flag = |flag: &'static str, reason: &str| Error::Flag {
            flag,
            reason: reason.into(),
        };
        if self.worker_size < 1 {
            return Err(flag("--worker-size", "must be ≥ 1"));
        }
        if self.async_max_workers < 1 {
            return Err(flag("--async-max-workers", "must be > 0"));
        }
        if self.async_populate_share + self.async_fill_share + self.async_flatten_share == 0 {
            return Err(flag(
                "--async-populate-share/--async-fill-share/--async-flatten-share",
                "at least one share must be > 0",
            ));
        }
        if self.omap_iterator_size < 1 {
            return Err(flag("--omap-iterator-size", "must be > 0"));
        }
        if self.populate_queue_depth < 1 {
            return Err(flag("--populate-queue-depth", "must be ≥ 1"));
        }
        if self.limits_burst_factor < 0 || self.limits_burst_duration < 0 {
            return Err(flag(
                "--limits-burst-factor/--limits-burst-duration",
                "must not be negative",
            ));
        }
        if self.max_volume_size < (1 << 20) {
            return Err(flag("--max-volume-size", "must be at least 1Mi"));
        }
        for (name, d) in [
            ("--resolve-timeout", self.resolve_timeout),
            ("--format-timeout", self.format_timeout),
            ("--list-children-timeout", self.list_children_timeout),
        ] {
            if d.is_zero() {
                return Err(flag(name, "must be > 0"));
            }
        }
        if self.volume_event_resync_interval.is_zero() {
            return Err(flag("--volume-event-resync-interval", "must be > 0"));
        }
        if self.leader_renew_interval.is_zero()
            || self.leader_renew_interval * 2 > self.leader_lease
        {
            return Err(flag(
                "--leader-renew-interval",
                "must be > 0 and at most half of --leader-lease",
            ));
        }
        if self.leader_lease < Duration::from_secs(2) {
            return Err(flag("--leader-lease", "must be at least 2s"));
        }
        if self.leader_id.as_deref().is_some_and(str::is_empty) {
            return Err(flag("--leader-id", "must not be empty"));
        }
        if self.socket_path().as_os_str().is_empty() {
            return Err(flag("--address", "must not be empty"));
        }
        for m in self.monitors().split(',') {
            if !is_host_port(m.trim()) {
                return Err(flag("--ceph-monitors", "each monitor must be host:port"));
            }
        }
        let connection = self.ceph_connection_flags();
        if self.backend == Some(BackendKind::Local) && !connection.is_empty() {
            return Err(Error::Flag {
                flag: "--backend",
                reason: format!(
                    "local cannot be combined with Ceph connection flags ({}): they would be \
                     ignored and volumes written to local files; drop them or use --backend ceph",
                    connection.join(", ")
                ),
            });
        }
        if self.backend_kind() == BackendKind::Ceph {
            if self.ceph_monitors.is_empty() {
                return Err(flag("--ceph-monitors", "required with the ceph backend"));
            }
            if self.ceph_pool.is_empty() {
                return Err(flag("--ceph-pool", "required with the ceph backend"));
            }
            if self.ceph_client.is_empty() {
                return Err(flag("--ceph-client", "required with the ceph backend"));
            }
            if self.ceph_user.is_empty() {
                return Err(flag("--ceph-user", "required with the ceph backend"));
            }
            if self.ceph_key_file.is_none() && self.ceph_keyring_file.is_none() {
                return Err(flag(
                    "--ceph-key-file/--ceph-keyring-file",
                    "one is required with the ceph backend",
                ));
            }
            if self.ceph_kek_path.is_none() {
                return Err(flag("--ceph-kek-path", "required with the ceph backend"));
            }
        }
        if self.backend_kind() == BackendKind::Ceph && !cfg!(feature = "ceph") {
            return Err(Error::Unsupported(format!(
                "the Ceph backend is selected ({}) but this cephvol was built without it: build \
                 it with `cargo build --release -p volumeprovider --features ceph` or use a \
                 release built that way (`cephvol --version` names a build's backends)",
                if self.backend.is_some() {
                    "--backend ceph".to_string()
                } else {
                    connection.join(", ")
                }
            )));
        }
        Ok(())
    }

    /// The backend to run: `--backend` if given, else `ceph` when any Ceph connection flag is
    /// set (the Go provider's command line has no `--backend`), else `local`.
    pub fn backend_kind(&self) -> BackendKind {
        match self.backend {
            Some(kind) => kind,
            None if !self.ceph_connection_flags().is_empty() => BackendKind::Ceph,
            None => BackendKind::Local,
        }
    }

    /// The Ceph connection flags that are set.
    fn ceph_connection_flags(&self) -> Vec<&'static str> {
        let mut set = Vec::new();
        if !self.ceph_monitors.is_empty() {
            set.push("--ceph-monitors");
        }
        if !self.ceph_pool.is_empty() {
            set.push("--ceph-pool");
        }
        if !self.ceph_user.is_empty() {
            set.push("--ceph-user");
        }
        if self.ceph_key_file.is_some() {
            set.push("--ceph-key-file");
        }
        if self.ceph_keyring_file.is_some() {
            set.push("--ceph-keyring-file");
        }
        set
    }

    /// The runner's classes: one per [`controllers::OpClass`], with the configured shares.
    pub fn runner_classes(&self) -> Vec<runner::ClassConfig> {
        controllers::OpClass::ALL
            .iter()
            .map(|c| {
                let share = match c {
                    controllers::OpClass::Populate => self.async_populate_share,
                    controllers::OpClass::Fill => self.async_fill_share,
                    controllers::OpClass::Flatten => self.async_flatten_share,
                };
                runner::ClassConfig::new(c.as_str(), share)
            })
            .collect()
    }

    /// The socket path (`unix://` prefix removed).
    pub fn socket_path(&self) -> PathBuf {
        PathBuf::from(strip_unix_scheme(&self.address))
    }

    /// Monitors for access data (placeholder on the local backend).
    pub fn monitors(&self) -> String {
        if self.ceph_monitors.is_empty() {
            LOCAL_MONITORS.to_string()
        } else {
            self.ceph_monitors.clone()
        }
    }

    /// Pool name (local default `cephvol`).
    pub fn pool(&self) -> String {
        if self.ceph_pool.is_empty() {
            LOCAL_POOL.to_string()
        } else {
            self.ceph_pool.clone()
        }
    }

    /// Ceph client of access data (local default `client.cephvol`).
    pub fn client(&self) -> String {
        if self.ceph_client.is_empty() {
            LOCAL_CLIENT.to_string()
        } else {
            self.ceph_client.clone()
        }
    }

    /// The data directory: `--data-dir`, else `$CEPHVOL_DATA_DIR`, else `$XDG_DATA_HOME/cephvol`,
    /// else `./cephvol-data`.
    pub fn data_dir(&self) -> PathBuf {
        if let Some(d) = &self.data_dir {
            return d.clone();
        }
        if let Some(d) = std::env::var_os("CEPHVOL_DATA_DIR").filter(|d| !d.is_empty()) {
            return PathBuf::from(d);
        }
        match std::env::var_os("XDG_DATA_HOME") {
            Some(x) if !x.is_empty() => PathBuf::from(x).join("cephvol"),
            _ => PathBuf::from("cephvol-data"),
        }
    }

    /// This replica's name in the leader lease: `--leader-id`, else `<hostname>:<absolute socket
    /// path>`. Two live daemons never share the default: on one host the socket is theirs alone (a
    /// live socket refuses a second daemon), and host names differ between hosts.
    pub fn leader_identity(&self) -> String {
        if let Some(id) = &self.leader_id {
            return id.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "localhost".into());
        let socket = self.socket_path();
        let socket = std::path::absolute(&socket).unwrap_or(socket);
        format!("{host}:{}", socket.display())
    }

    /// Event store capacity (Go: ≤ 0 means 1000).
    pub fn max_events(&self) -> usize {
        if self.volume_event_max_events <= 0 {
            1000
        } else {
            usize::try_from(self.volume_event_max_events).unwrap_or(usize::MAX)
        }
    }

    /// Populate copy buffer (0 means 5 MiB).
    pub fn populator_buffer(&self) -> usize {
        if self.populator_buffer_size == 0 {
            5 * 1024 * 1024
        } else {
            self.populator_buffer_size
        }
    }

    /// Log format after the zap compatibility flags.
    pub fn effective_log_format(&self) -> LogFormat {
        match self.zap_encoder.as_deref() {
            Some("json") => LogFormat::Json,
            Some("console") => LogFormat::Text,
            _ => self.log_format,
        }
    }

    /// Log filter after the zap compatibility flags.
    pub fn effective_log_level(&self) -> String {
        match self.zap_log_level.as_deref() {
            Some("debug") => "debug".into(),
            Some("info") => "info".into(),
            Some("error") => "error".into(),
            Some("warn") => "warn".into(),
            Some(n) if n.parse::<i64>().is_ok_and(|n| n >= 1) => "debug".into(),
            _ => self.log_level.clone(),
        }
    }
}

fn is_host_port(s: &str) -> bool {
    match s.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok(),
        None => false,
    }
}

/// Parses an octal file mode such as `0600` or `660`.
pub fn parse_mode(s: &str) -> std::result::Result<u32, String> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    let mode = u32::from_str_radix(digits, 8).map_err(|_| format!("{s:?} is not an octal mode"))?;
    if mode > 0o777 {
        return Err(format!("{s:?}: only permission bits (≤ 0777) are allowed"));
    }
    Ok(mode)
}

/// Parses `--delete-policy` (`deferred` or `flatten`).
fn parse_delete_policy(s: &str) -> std::result::Result<controllers::DeletePolicy, String> {
    s.parse()
        .map_err(|e: controllers::ControllerError| e.to_string())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        d: DaemonArgs,
    }

    fn parse(args: &[&str]) -> DaemonArgs {
        let mut v = vec!["cephvol"];
        v.extend_from_slice(args);
        T::try_parse_from(v).expect("flags parse").d
    }

    #[test]
    fn the_delete_policy_defaults_to_deferred_and_refuses_unknown_names() {
        assert_eq!(
            parse(&[]).delete_policy,
            controllers::DeletePolicy::Deferred
        );
        let d = parse(&["--delete-policy=flatten"]);
        assert_eq!(d.delete_policy, controllers::DeletePolicy::Flatten);
        let err = T::try_parse_from(["cephvol", "--delete-policy=copy"])
            .err()
            .expect("an unknown policy is refused");
        assert!(err.to_string().contains("deferred or flatten"), "{err}");
    }

    #[test]
    fn the_size_bound_and_the_os_image_grace_have_defaults_and_parse() {
        let d = parse(&[]);
        assert_eq!(d.max_volume_size, crate::validate::DEFAULT_MAX_VOLUME_SIZE);
        assert_eq!(d.os_image_gc_grace, controllers::DEFAULT_OS_IMAGE_GC_GRACE);
        let d = parse(&["--max-volume-size=2Pi", "--os-image-gc-grace=0s"]);
        assert_eq!(d.max_volume_size, 2 << 50);
        assert!(d.os_image_gc_grace.is_zero());
        assert_eq!(parse_bytes("1048576"), Ok(1 << 20));
        assert!(parse_bytes("1GB").is_err());
        assert!(parse_bytes("99999999999Pi").is_err());
        let mut d = parse(&[]);
        d.max_volume_size = 1000;
        assert!(d.validate().is_err());
    }

    #[test]
    fn defaults_match_the_go_provider() {
        let d = parse(&[]);
        assert_eq!(d.address, "/var/run/iri-volumeprovider.sock");
        assert_eq!(d.ceph_connect_timeout, Duration::from_secs(10));
        assert_eq!(d.ceph_op_timeout, Duration::from_secs(30));
        assert_eq!(d.ceph_mon_timeout, Duration::from_secs(10));
        assert_eq!(d.ceph_format_concurrency, 1, "LUKS2 formats one by one");
        #[cfg(feature = "ceph")]
        assert_eq!(d.ceph_format_concurrency, ceph::DEFAULT_FORMAT_CONCURRENCY);
        assert_eq!(d.limits_burst_factor, 10);
        assert_eq!(d.limits_burst_duration, 15);
        assert_eq!(d.populator_buffer_size, 5_242_880);
        assert_eq!(d.worker_size, 15);
        assert_eq!(d.omap_iterator_size, 1000);
        assert_eq!(d.volume_event_max_events, 100);
        assert_eq!(d.volume_event_ttl, Duration::from_secs(300));
        assert_eq!(d.volume_event_resync_interval, Duration::from_secs(60));
        assert_eq!(d.async_max_workers, 10);
        assert_eq!(d.resolve_timeout, Duration::from_secs(180));
        assert_eq!(d.format_timeout, Duration::from_secs(300));
        assert_eq!(d.list_children_timeout, Duration::from_secs(60));
        assert_eq!(d.stall_timeout, Duration::from_secs(900));
        let classes = d.runner_classes();
        let shares: Vec<(&str, usize)> =
            classes.iter().map(|c| (c.name.as_str(), c.share)).collect();
        assert_eq!(shares, [("populate", 5), ("fill", 3), ("flatten", 2)]);
        assert_eq!(d.backend, None);
        assert_eq!(d.backend_kind(), BackendKind::Local);
        assert_eq!(d.socket_mode, 0o600);
        assert_eq!(d.populate_queue_depth, 4);
        assert_eq!(d.log_format, LogFormat::Text);
        assert!(d.metrics_address.is_none());
        assert_eq!(d.leader_lease, Duration::from_secs(15));
        assert_eq!(d.leader_renew_interval, Duration::from_secs(5));
        assert_eq!(d.leader_id, None);
        d.validate().expect("defaults are valid");
    }

    #[test]
    fn the_leader_lease_must_leave_room_for_renewals() {
        assert!(parse(&["--leader-lease=4s", "--leader-renew-interval=2s"])
            .validate()
            .is_ok());
        for bad in [
            ["--leader-lease=4s", "--leader-renew-interval=3s"],
            ["--leader-lease=15s", "--leader-renew-interval=0s"],
            ["--leader-lease=1s", "--leader-renew-interval=500ms"],
        ] {
            assert!(parse(&bad).validate().is_err(), "{bad:?}");
        }
        assert!(parse(&["--leader-id="]).validate().is_err());
    }

    #[test]
    fn the_default_leader_identity_names_the_host_and_the_socket() {
        let d = parse(&["--address=unix:///run/a.sock"]);
        let id = d.leader_identity();
        assert!(id.ends_with(":/run/a.sock"), "{id}");
        assert!(id.len() > ":/run/a.sock".len(), "{id}");
        assert_ne!(id, parse(&["--address=/run/b.sock"]).leader_identity());
        assert_eq!(parse(&["--leader-id=r1"]).leader_identity(), "r1");
    }

    #[test]
    fn go_style_flags_parse() {
        let d = parse(&[
            "--address=unix:///tmp/x.sock",
            "--volume-event-ttl=2s",
            "--volume-event-max-events=-1",
            "--worker-size=1",
            "--zap-log-level=2",
            "--zap-devel",
            "--registry-insecure-hosts=localhost:5000,127.0.0.1:5001",
            "--registry-plain-http=reg.test:80",
        ]);
        assert_eq!(d.socket_path(), PathBuf::from("/tmp/x.sock"));
        assert_eq!(d.volume_event_ttl, Duration::from_secs(2));
        assert_eq!(d.max_events(), 1000);
        assert_eq!(d.effective_log_level(), "debug");
        assert_eq!(
            d.registry_insecure_hosts,
            ["localhost:5000", "127.0.0.1:5001", "reg.test:80"]
        );
        d.validate().expect("valid: worker size 1 is accepted");
    }

    #[test]
    fn ceph_timeouts_take_go_durations_and_zero_turns_them_off() {
        let d = parse(&["--ceph-op-timeout=1m30s", "--ceph-mon-timeout=0"]);
        assert_eq!(d.ceph_op_timeout, Duration::from_secs(90));
        assert_eq!(d.ceph_mon_timeout, Duration::ZERO);
        assert_eq!(
            d.backend_kind(),
            BackendKind::Local,
            "timeouts select nothing"
        );
        d.validate().expect("valid");
    }

    #[test]
    fn ceph_backend_requires_its_flags() {
        let e = parse(&["--backend=ceph"])
            .validate()
            .expect_err("must fail");
        assert!(e.to_string().contains("--ceph-monitors"), "{e}");
        let e = parse(&[
            "--backend=ceph",
            "--ceph-monitors=m:1",
            "--ceph-pool=p",
            "--ceph-client=client.x",
            "--ceph-user=x",
            "--ceph-key-file=/k",
        ])
        .validate()
        .expect_err("must fail");
        assert!(e.to_string().contains("--ceph-kek-path"), "{e}");
    }

    fn full_ceph_flags() -> Vec<&'static str> {
        vec![
            "--ceph-monitors=m:1",
            "--ceph-pool=p",
            "--ceph-client=client.x",
            "--ceph-user=x",
            "--ceph-key-file=/k",
            "--ceph-kek-path=/kek",
        ]
    }

    #[test]
    fn the_go_command_line_without_backend_selects_ceph() {
        assert_eq!(parse(&full_ceph_flags()).backend_kind(), BackendKind::Ceph);
        for one in [
            "--ceph-monitors=m:1",
            "--ceph-pool=p",
            "--ceph-user=x",
            "--ceph-key-file=/k",
            "--ceph-keyring-file=/k",
        ] {
            assert_eq!(parse(&[one]).backend_kind(), BackendKind::Ceph, "{one}");
        }
        // Not connection flags: they mean something on the local backend too.
        assert_eq!(
            parse(&["--ceph-client=client.x", "--ceph-kek-path=/kek"]).backend_kind(),
            BackendKind::Local
        );
        assert_eq!(parse(&[]).backend_kind(), BackendKind::Local);
        let go = parse(&["--ceph-monitors=mon1:6789,mon2:6789"]);
        assert_eq!(go.monitors(), "mon1:6789,mon2:6789");
    }

    #[test]
    fn local_backend_with_ceph_connection_flags_is_refused() {
        let mut args = full_ceph_flags();
        args.push("--backend=local");
        let e = parse(&args).validate().expect_err("must fail");
        assert!(
            matches!(
                e,
                Error::Flag {
                    flag: "--backend",
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("--ceph-monitors"), "{e}");
        let e = parse(&["--backend=local", "--ceph-pool=p"])
            .validate()
            .expect_err("must fail");
        assert!(e.to_string().contains("--ceph-pool"), "{e}");
        assert!(parse(&["--backend=local", "--ceph-client=client.x"])
            .validate()
            .is_ok());
    }

    #[test]
    fn the_ceph_backend_in_a_build_without_it_refuses_to_start_and_says_how_to_get_one() {
        let result = parse(&full_ceph_flags()).validate();
        if cfg!(feature = "ceph") {
            assert!(result.is_ok(), "{result:?}");
        } else {
            let e = result.expect_err("must refuse");
            assert!(matches!(e, Error::Unsupported(_)), "{e}");
            assert!(e.to_string().contains("--features ceph"), "{e}");
            assert!(e.to_string().contains("--ceph-monitors"), "{e}");
        }
    }

    #[test]
    fn bad_values_are_rejected_before_start() {
        assert!(parse(&["--worker-size=0"]).validate().is_err());
        assert!(parse(&["--async-max-workers=0"]).validate().is_err());
        assert!(parse(&["--omap-iterator-size=0"]).validate().is_err());
        assert!(parse(&["--ceph-monitors=nohostport"]).validate().is_err());
        assert!(T::try_parse_from(["c", "--socket-mode=999"]).is_err());
        assert!(T::try_parse_from(["c", "--volume-event-ttl=5x"]).is_err());
    }

    #[test]
    fn octal_modes_parse() {
        assert_eq!(parse_mode("0600"), Ok(0o600));
        assert_eq!(parse_mode("660"), Ok(0o660));
        assert!(parse_mode("0800").is_err());
        assert!(parse_mode("01777").is_err());
    }
}
