//! The operator command line of `cephvol`: client commands mirroring irictl-volume that talk to
//! any IRI volume provider over its unix socket (the binary `cephvol` also runs the daemon; that
//! part lives in `volumeprovider`):
//!
//! ```text
//! cephvol get volume|volumesnapshot|status|events|version [-o table|json|yaml]
//! cephvol create volume (-f FILE|- | --class C --size S [--image REF] [--from-snapshot ID]) [--wait]
//! cephvol create volumesnapshot (-f FILE|- | --volume ID) [--wait]
//! cephvol delete volume|volumesnapshot ID... [--wait]
//! cephvol expand volume ID --size S [--wait]
//! ```
//! Every client command takes `--address` (`unix:///path` or a path; else env
//! `IRI_VOLUME_RUNTIME_ENDPOINT`, else the well-known sockets). `--wait` polls until the object is
//! AVAILABLE/READY (or gone, for delete) and shows the progress of a running populate, copy or
//! flatten from cephvol's `Progress` extension service (other providers: state only).

use std::collections::BTreeMap;
use std::io::{IsTerminal, Read, Write};
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use tonic::Code;

use crate::client::Clients;

pub mod client;
mod duration;
mod error;
pub mod output;
pub use crate::client::{socket_path, strip_unix_scheme};
pub use crate::duration::parse_duration;
pub use crate::error::{Error, Result};
use crate::output::Output;
use iri::cephvol::v1alpha1 as pbp;
use iri::meta_v1::ObjectMetadata;
use iri::volume_v1 as pb;

/// The client commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List objects, status, events or the version.
    Get(GetArgs),
    /// Create a volume or a volume snapshot.
    Create(CreateArgs),
    /// Delete volumes or volume snapshots.
    Delete(DeleteArgs),
    /// Grow a volume.
    Expand(ExpandArgs),
}

/// How to reach the provider and how to print.
#[derive(Debug, Clone, Args)]
pub struct ConnArgs {
    /// Provider address: unix:///path or a socket path (default: $IRI_VOLUME_RUNTIME_ENDPOINT, then
    /// /var/run/iri-volumebroker.sock, /var/run/iri-volumeprovider.sock).
    #[arg(long = "address", id = "client_address", global = true)]
    pub address: Option<String>,
    /// Output format (get: table by default; create: a message by default).
    #[arg(short = 'o', long, global = true, value_enum)]
    pub output: Option<Output>,
}

/// `get`.
#[derive(Debug, Args)]
pub struct GetArgs {
    #[command(flatten)]
    conn: ConnArgs,
    #[command(subcommand)]
    what: GetWhat,
}

#[derive(Debug, Subcommand)]
enum GetWhat {
    /// Volumes (all, or the given ids).
    #[command(visible_aliases = ["volumes", "vol", "vols"])]
    Volume {
        /// Only these ids.
        ids: Vec<String>,
        /// Label selector k=v[,k=v].
        #[arg(short = 'l', long)]
        selector: Option<String>,
    },
    /// Volume snapshots (all, or the given ids).
    #[command(visible_aliases = ["volumesnapshots", "volsnap", "volsnaps"])]
    Volumesnapshot {
        /// Only these ids.
        ids: Vec<String>,
        /// Label selector k=v[,k=v].
        #[arg(short = 'l', long)]
        selector: Option<String>,
    },
    /// Volume classes and capacity.
    Status,
    /// Recent events.
    Events {
        /// Label selector k=v[,k=v] on the involved volume.
        #[arg(short = 'l', long)]
        selector: Option<String>,
        /// How far back (Go duration).
        #[arg(short = 'd', long, default_value = "60m", value_parser = parse_duration)]
        duration: Duration,
        /// Only events about this object id.
        #[arg(long)]
        id: Option<String>,
    },
    /// Runtime name and version.
    Version,
}

/// `create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    #[command(flatten)]
    conn: ConnArgs,
    #[command(subcommand)]
    what: CreateWhat,
}

#[derive(Debug, Clone, Args)]
struct WaitArgs {
    /// Wait until the object is ready, showing progress.
    #[arg(short = 'w', long)]
    wait: bool,
    /// Give up waiting after this long.
    #[arg(long, default_value = "30m", value_parser = parse_duration)]
    timeout: Duration,
}

#[derive(Debug, Subcommand)]
enum CreateWhat {
    /// Create a volume from a YAML/JSON file (`-` = stdin) or from flags.
    #[command(visible_aliases = ["vol"])]
    Volume {
        /// YAML/JSON `Volume` (snake_case proto names); `-` reads stdin.
        #[arg(short = 'f', long, conflicts_with_all = ["class", "size", "image", "from_snapshot", "label"])]
        filename: Option<String>,
        /// Volume class.
        #[arg(long)]
        class: Option<String>,
        /// Size (bytes, or with Ki/Mi/Gi/Ti, K/M/G/T).
        #[arg(long, value_parser = output::parse_size)]
        size: Option<i64>,
        /// OS image reference to populate from.
        #[arg(long)]
        image: Option<String>,
        /// Architecture of the OS image (e.g. amd64).
        #[arg(long, requires = "image")]
        architecture: Option<String>,
        /// Snapshot id to restore from.
        #[arg(long, conflicts_with = "image")]
        from_snapshot: Option<String>,
        /// Label k=v (repeatable).
        #[arg(short = 'l', long = "label")]
        label: Vec<String>,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Create a volume snapshot from a YAML/JSON file (`-` = stdin) or from flags.
    #[command(visible_aliases = ["volsnap"])]
    Volumesnapshot {
        /// YAML/JSON `VolumeSnapshot`; `-` reads stdin.
        #[arg(short = 'f', long, conflicts_with_all = ["volume", "label"])]
        filename: Option<String>,
        /// Volume to snapshot.
        #[arg(long)]
        volume: Option<String>,
        /// Label k=v (repeatable).
        #[arg(short = 'l', long = "label")]
        label: Vec<String>,
        #[command(flatten)]
        wait: WaitArgs,
    },
}

/// `delete`.
#[derive(Debug, Args)]
pub struct DeleteArgs {
    #[command(flatten)]
    conn: ConnArgs,
    #[command(subcommand)]
    what: DeleteWhat,
}

#[derive(Debug, Subcommand)]
enum DeleteWhat {
    /// Delete volumes.
    #[command(visible_aliases = ["volumes", "vol", "vols"])]
    Volume {
        /// Ids.
        #[arg(required = true)]
        ids: Vec<String>,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Delete volume snapshots.
    #[command(visible_aliases = ["volumesnapshots", "volsnap", "volsnaps"])]
    Volumesnapshot {
        /// Ids.
        #[arg(required = true)]
        ids: Vec<String>,
        #[command(flatten)]
        wait: WaitArgs,
    },
}

/// `expand`.
#[derive(Debug, Args)]
pub struct ExpandArgs {
    #[command(flatten)]
    conn: ConnArgs,
    #[command(subcommand)]
    what: ExpandWhat,
}

#[derive(Debug, Subcommand)]
enum ExpandWhat {
    /// Grow a volume to a new size.
    #[command(visible_aliases = ["vol"])]
    Volume {
        /// Volume id.
        id: String,
        /// New size (bytes, or with Ki/Mi/Gi/Ti, K/M/G/T).
        #[arg(long, value_parser = output::parse_size)]
        size: i64,
        #[command(flatten)]
        wait: WaitArgs,
    },
}

fn rpc_err(method: &str, s: tonic::Status) -> Error {
    Error::Cli(format!("{method}: {:?}: {}", s.code(), s.message()))
}

fn parse_labels(items: &[String]) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for item in items.iter().flat_map(|s| s.split(',')) {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let (k, v) = item
            .split_once('=')
            .ok_or_else(|| Error::Cli(format!("label {item:?}: expected key=value")))?;
        out.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(out)
}

fn read_input(filename: &str) -> Result<String> {
    if filename == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| Error::io("reading stdin", e))?;
        Ok(s)
    } else {
        std::fs::read_to_string(filename).map_err(|e| Error::io(format!("reading {filename}"), e))
    }
}

fn parse_input<T: serde::de::DeserializeOwned>(filename: &str) -> Result<T> {
    let text = read_input(filename)?;
    serde_yaml::from_str(&text).map_err(|e| Error::Cli(format!("{filename}: {e}")))
}

fn print(s: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(s.as_bytes());
    let _ = out.flush();
}

async fn connect(conn: &ConnArgs) -> Result<Clients> {
    let path = client::resolve(conn.address.as_deref()).await?;
    Clients::connect(&path).await
}

/// Runs a client command.
pub async fn run(cmd: Command) -> Result<()> {
    match cmd {
        Command::Get(a) => get(a).await,
        Command::Create(a) => create(a).await,
        Command::Delete(a) => delete(a).await,
        Command::Expand(a) => expand(a).await,
    }
}

async fn list_volumes(
    c: &mut Clients,
    id: &str,
    sel: BTreeMap<String, String>,
) -> Result<Vec<pb::Volume>> {
    let req = pb::ListVolumesRequest {
        filter: Some(pb::VolumeFilter {
            id: id.to_string(),
            label_selector: sel,
        }),
    };
    Ok(c.runtime
        .list_volumes(req)
        .await
        .map_err(|s| rpc_err("ListVolumes", s))?
        .into_inner()
        .volumes)
}

async fn list_snapshots(
    c: &mut Clients,
    id: &str,
    sel: BTreeMap<String, String>,
) -> Result<Vec<pb::VolumeSnapshot>> {
    let req = pb::ListVolumeSnapshotsRequest {
        filter: Some(pb::VolumeSnapshotFilter {
            id: id.to_string(),
            label_selector: sel,
        }),
    };
    Ok(c.runtime
        .list_volume_snapshots(req)
        .await
        .map_err(|s| rpc_err("ListVolumeSnapshots", s))?
        .into_inner()
        .volume_snapshots)
}

async fn get(a: GetArgs) -> Result<()> {
    let fmt = a.conn.output.unwrap_or(Output::Table);
    let mut c = connect(&a.conn).await?;
    let sel = |s: &Option<String>| parse_labels(s.as_slice());
    match a.what {
        GetWhat::Volume { ids, selector } => {
            let selector = sel(&selector)?;
            let mut vols = Vec::new();
            if ids.is_empty() {
                vols = list_volumes(&mut c, "", selector).await?;
            } else {
                for id in &ids {
                    vols.extend(list_volumes(&mut c, id, BTreeMap::new()).await?);
                }
            }
            print(&match fmt {
                Output::Table => output::volumes_table(&vols),
                f => output::render(&vols, f),
            });
        }
        GetWhat::Volumesnapshot { ids, selector } => {
            let selector = sel(&selector)?;
            let mut snaps = Vec::new();
            if ids.is_empty() {
                snaps = list_snapshots(&mut c, "", selector).await?;
            } else {
                for id in &ids {
                    snaps.extend(list_snapshots(&mut c, id, BTreeMap::new()).await?);
                }
            }
            print(&match fmt {
                Output::Table => output::snapshots_table(&snaps),
                f => output::render(&snaps, f),
            });
        }
        GetWhat::Status => {
            let st = c
                .runtime
                .status(pb::StatusRequest {})
                .await
                .map_err(|s| rpc_err("Status", s))?
                .into_inner();
            print(&match fmt {
                Output::Table => output::status_table(&st),
                f => output::render(&st.volume_class_status, f),
            });
        }
        GetWhat::Events {
            selector,
            duration,
            id,
        } => {
            let now = chrono::Utc::now().timestamp();
            let from = now - i64::try_from(duration.as_secs()).unwrap_or(i64::MAX / 2);
            let req = pb::ListEventsRequest {
                filter: Some(pb::EventFilter {
                    id: id.unwrap_or_default(),
                    label_selector: sel(&selector)?,
                    events_from_time: from.max(1),
                    events_to_time: now,
                }),
            };
            let events = c
                .runtime
                .list_events(req)
                .await
                .map_err(|s| rpc_err("ListEvents", s))?
                .into_inner()
                .events;
            print(&match fmt {
                Output::Table => output::events_table(&events),
                f => output::render(&events, f),
            });
        }
        GetWhat::Version => {
            let v = c
                .runtime
                .version(pb::VersionRequest {
                    version: env!("CARGO_PKG_VERSION").to_string(),
                })
                .await
                .map_err(|s| rpc_err("Version", s))?
                .into_inner();
            print(&match fmt {
                Output::Table => output::version_table(&v),
                f => output::render(&v, f),
            });
        }
    }
    Ok(())
}

async fn create(a: CreateArgs) -> Result<()> {
    let mut c = connect(&a.conn).await?;
    match a.what {
        CreateWhat::Volume {
            filename,
            class,
            size,
            image,
            architecture,
            from_snapshot,
            label,
            wait,
        } => {
            let volume: pb::Volume = match filename {
                Some(f) => parse_input(&f)?,
                None => {
                    let class = class
                        .ok_or_else(|| Error::Cli("give -f FILE or --class and --size".into()))?;
                    let source = match (image, from_snapshot) {
                        (Some(image), _) => Some(pb::VolumeDataSource {
                            image_data_source: Some(pb::ImageDataSource {
                                image,
                                architecture: architecture.unwrap_or_default(),
                            }),
                            snapshot_data_source: None,
                        }),
                        (None, Some(snapshot_id)) => Some(pb::VolumeDataSource {
                            image_data_source: None,
                            snapshot_data_source: Some(pb::SnapshotDataSource { snapshot_id }),
                        }),
                        (None, None) => None,
                    };
                    pb::Volume {
                        metadata: Some(ObjectMetadata {
                            labels: parse_labels(&label)?,
                            ..Default::default()
                        }),
                        spec: Some(pb::VolumeSpec {
                            class,
                            resources: Some(pb::VolumeResources {
                                storage_bytes: size.unwrap_or(0),
                            }),
                            encryption: None,
                            volume_data_source: source,
                        }),
                        status: None,
                    }
                }
            };
            let created = c
                .runtime
                .create_volume(pb::CreateVolumeRequest {
                    volume: Some(volume),
                })
                .await
                .map_err(|s| rpc_err("CreateVolume", s))?
                .into_inner()
                .volume
                .unwrap_or_default();
            let id = created
                .metadata
                .as_ref()
                .map(|m| m.id.clone())
                .unwrap_or_default();
            let mut shown = created;
            if wait.wait {
                if a.conn.output.is_none() {
                    eprintln!("Created volume {id}");
                }
                shown = wait_volume(&mut c, &id, wait.timeout, "", |v| {
                    v.status.as_ref().map(|s| s.state)
                        == Some(pb::VolumeState::VolumeAvailable as i32)
                })
                .await?;
                if a.conn.output.is_none() {
                    print(&format!("Volume {id} is available\n"));
                }
            } else if a.conn.output.is_none() {
                print(&format!("Created volume {id}\n"));
            }
            if let Some(fmt) = a.conn.output {
                print(&match fmt {
                    Output::Table => output::volumes_table(std::slice::from_ref(&shown)),
                    f => output::render(&shown, f),
                });
            }
        }
        CreateWhat::Volumesnapshot {
            filename,
            volume,
            label,
            wait,
        } => {
            let snap: pb::VolumeSnapshot = match filename {
                Some(f) => parse_input(&f)?,
                None => pb::VolumeSnapshot {
                    metadata: Some(ObjectMetadata {
                        labels: parse_labels(&label)?,
                        ..Default::default()
                    }),
                    spec: Some(pb::VolumeSnapshotSpec {
                        volume_id: volume
                            .ok_or_else(|| Error::Cli("give -f FILE or --volume ID".into()))?,
                    }),
                    status: None,
                },
            };
            let created = c
                .runtime
                .create_volume_snapshot(pb::CreateVolumeSnapshotRequest {
                    volume_snapshot: Some(snap),
                })
                .await
                .map_err(|s| rpc_err("CreateVolumeSnapshot", s))?
                .into_inner()
                .volume_snapshot
                .unwrap_or_default();
            let id = created
                .metadata
                .as_ref()
                .map(|m| m.id.clone())
                .unwrap_or_default();
            let mut shown = created;
            if wait.wait {
                if a.conn.output.is_none() {
                    eprintln!("Created volume snapshot {id}");
                }
                shown = wait_snapshot(&mut c, &id, wait.timeout).await?;
                if a.conn.output.is_none() {
                    print(&format!("VolumeSnapshot {id} is ready\n"));
                }
            } else if a.conn.output.is_none() {
                print(&format!("Created volume snapshot {id}\n"));
            }
            if let Some(fmt) = a.conn.output {
                print(&match fmt {
                    Output::Table => output::snapshots_table(std::slice::from_ref(&shown)),
                    f => output::render(&shown, f),
                });
            }
        }
    }
    Ok(())
}

async fn delete(a: DeleteArgs) -> Result<()> {
    let mut c = connect(&a.conn).await?;
    let mut failed = Vec::new();
    match a.what {
        DeleteWhat::Volume { ids, wait } => {
            for id in &ids {
                match c
                    .runtime
                    .delete_volume(pb::DeleteVolumeRequest {
                        volume_id: id.clone(),
                    })
                    .await
                {
                    Ok(_) => {
                        if wait.wait {
                            wait_gone(&mut c, Kind::Volume, id, wait.timeout).await?;
                        }
                        print(&format!("Volume {id} deleted\n"));
                    }
                    Err(s) if s.code() == Code::NotFound => {
                        print(&format!("Volume {id} not found\n"))
                    }
                    Err(s) => {
                        eprintln!("Volume {id}: {:?}: {}", s.code(), s.message());
                        failed.push(id.clone());
                    }
                }
            }
        }
        DeleteWhat::Volumesnapshot { ids, wait } => {
            for id in &ids {
                let req = pb::DeleteVolumeSnapshotRequest {
                    volume_snapshot_id: id.clone(),
                };
                match c.runtime.delete_volume_snapshot(req).await {
                    Ok(_) => {
                        if wait.wait {
                            wait_gone(&mut c, Kind::Snapshot, id, wait.timeout).await?;
                        }
                        print(&format!("VolumeSnapshot {id} deleted\n"));
                    }
                    Err(s) if s.code() == Code::NotFound => {
                        print(&format!("VolumeSnapshot {id} not found\n"))
                    }
                    Err(s) => {
                        eprintln!("VolumeSnapshot {id}: {:?}: {}", s.code(), s.message());
                        failed.push(id.clone());
                    }
                }
            }
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Error::Cli(format!(
            "could not delete {}",
            failed.join(", ")
        )))
    }
}

async fn expand(a: ExpandArgs) -> Result<()> {
    let mut c = connect(&a.conn).await?;
    let ExpandWhat::Volume { id, size, wait } = a.what;
    c.runtime
        .expand_volume(pb::ExpandVolumeRequest {
            volume_id: id.clone(),
            resources: Some(pb::VolumeResources {
                storage_bytes: size,
            }),
        })
        .await
        .map_err(|s| rpc_err("ExpandVolume", s))?;
    if wait.wait {
        let activity = format!("resizing to {}", output::bytes(size));
        wait_volume(&mut c, &id, wait.timeout, &activity, |v| {
            v.status
                .as_ref()
                .and_then(|s| s.resources.as_ref())
                .map(|r| r.storage_bytes)
                .unwrap_or(0)
                >= size
        })
        .await?;
    }
    print(&format!(
        "Volume {id} expanded to {}\n",
        output::bytes(size)
    ));
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Volume,
    Snapshot,
}

/// Shows progress lines on stderr: rewritten in place on a terminal, else printed when they change.
struct ProgressLine {
    tty: bool,
    last: String,
    last_print: Instant,
    dirty: bool,
}

impl ProgressLine {
    fn new() -> ProgressLine {
        ProgressLine {
            tty: std::io::stderr().is_terminal(),
            last: String::new(),
            last_print: Instant::now(),
            dirty: false,
        }
    }

    fn show(&mut self, line: String) {
        if line == self.last {
            return;
        }
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[2K{line}");
            self.dirty = true;
        } else {
            // Without a terminal, print at most every 2 s unless the phase changed.
            let phase = |s: &str| s.split(" (").next().unwrap_or("").to_string();
            if phase(&line) == phase(&self.last)
                && self.last_print.elapsed() < Duration::from_secs(2)
            {
                return;
            }
            let _ = writeln!(err, "{line}");
            self.last_print = Instant::now();
        }
        let _ = err.flush();
        self.last = line;
    }

    fn finish(&mut self) {
        if self.tty && self.dirty {
            let _ = writeln!(std::io::stderr());
            self.dirty = false;
        }
    }
}

fn describe(state: &str, p: Option<&pbp::GetProgressResponse>) -> String {
    let Some(p) = p else { return state.to_string() };
    let mut s = if p.state.is_empty() {
        state.to_string()
    } else {
        p.state.clone()
    };
    if !p.phase.is_empty() {
        s.push_str(": ");
        s.push_str(&p.phase);
    }
    if p.total > 0 {
        let pct = (p.done as f64 / p.total as f64 * 100.0).min(100.0);
        s.push_str(&format!(
            " ({} / {}, {pct:.0}%)",
            output::bytes(p.done as i64),
            output::bytes(p.total as i64)
        ));
    } else if p.done > 0 {
        s.push_str(&format!(" ({})", output::bytes(p.done as i64)));
    }
    if !p.message.is_empty() {
        s.push_str(&format!(" — {}", p.message));
    }
    s
}

async fn progress(
    c: &mut Clients,
    kind: Kind,
    id: &str,
    enabled: &mut bool,
) -> Option<pbp::GetProgressResponse> {
    if !*enabled {
        return None;
    }
    let k = match kind {
        Kind::Volume => pbp::ObjectKind::Volume,
        Kind::Snapshot => pbp::ObjectKind::VolumeSnapshot,
    };
    match c
        .progress
        .get_progress(pbp::GetProgressRequest {
            kind: k as i32,
            id: id.to_string(),
        })
        .await
    {
        Ok(r) => Some(r.into_inner()),
        Err(s) if s.code() == Code::Unimplemented => {
            *enabled = false;
            None
        }
        Err(_) => None,
    }
}

const POLL: Duration = Duration::from_millis(500);

async fn wait_volume(
    c: &mut Clients,
    id: &str,
    timeout: Duration,
    activity: &str,
    done: impl Fn(&pb::Volume) -> bool,
) -> Result<pb::Volume> {
    let deadline = Instant::now() + timeout;
    let mut line = ProgressLine::new();
    let mut with_progress = true;
    loop {
        let v = list_volumes(c, id, BTreeMap::new())
            .await?
            .into_iter()
            .next();
        let Some(v) = v else {
            line.finish();
            return Err(Error::Cli(format!("volume {id} disappeared")));
        };
        if done(&v) {
            line.finish();
            return Ok(v);
        }
        let state = v.status.as_ref().map(|s| s.state).unwrap_or(0);
        let mut p = progress(c, Kind::Volume, id, &mut with_progress).await;
        if let Some(p) = p
            .as_mut()
            .filter(|p| p.phase.is_empty() && !activity.is_empty())
        {
            p.phase = activity.to_string();
        }
        let name = pb::VolumeState::try_from(state)
            .map(|s| s.as_str_name())
            .unwrap_or("UNKNOWN");
        if state == pb::VolumeState::VolumeError as i32 {
            line.finish();
            return Err(Error::Cli(format!(
                "volume {id} failed: {}",
                describe(name, p.as_ref())
            )));
        }
        line.show(describe(name, p.as_ref()));
        if Instant::now() >= deadline {
            line.finish();
            return Err(Error::Cli(format!(
                "timed out waiting for volume {id} ({})",
                describe(name, p.as_ref())
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn wait_snapshot(c: &mut Clients, id: &str, timeout: Duration) -> Result<pb::VolumeSnapshot> {
    let deadline = Instant::now() + timeout;
    let mut line = ProgressLine::new();
    let mut with_progress = true;
    loop {
        let s = list_snapshots(c, id, BTreeMap::new())
            .await?
            .into_iter()
            .next();
        let Some(s) = s else {
            line.finish();
            return Err(Error::Cli(format!("volume snapshot {id} disappeared")));
        };
        let state = s.status.as_ref().map(|s| s.state).unwrap_or(0);
        if state == pb::VolumeSnapshotState::VolumeSnapshotReady as i32 {
            line.finish();
            return Ok(s);
        }
        let p = progress(c, Kind::Snapshot, id, &mut with_progress).await;
        let name = pb::VolumeSnapshotState::try_from(state)
            .map(|s| s.as_str_name())
            .unwrap_or("UNKNOWN");
        if state == pb::VolumeSnapshotState::VolumeSnapshotFailed as i32 {
            line.finish();
            return Err(Error::Cli(format!(
                "volume snapshot {id} failed: {}",
                describe(name, p.as_ref())
            )));
        }
        line.show(describe(name, p.as_ref()));
        if Instant::now() >= deadline {
            line.finish();
            return Err(Error::Cli(format!(
                "timed out waiting for volume snapshot {id} ({})",
                describe(name, p.as_ref())
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn wait_gone(c: &mut Clients, kind: Kind, id: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut line = ProgressLine::new();
    let mut with_progress = true;
    loop {
        let present = match kind {
            Kind::Volume => !list_volumes(c, id, BTreeMap::new()).await?.is_empty(),
            Kind::Snapshot => !list_snapshots(c, id, BTreeMap::new()).await?.is_empty(),
        };
        if !present {
            line.finish();
            return Ok(());
        }
        let p = progress(c, kind, id, &mut with_progress).await;
        line.show(describe("deleting", p.as_ref()));
        if Instant::now() >= deadline {
            line.finish();
            return Err(Error::Cli(format!(
                "timed out waiting for {id} to be deleted"
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use clap::Parser;

    /// The client commands as a binary of their own would parse them.
    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        command: Option<Command>,
    }

    fn parse(args: &[&str]) -> Cli {
        let mut v = vec!["cephvol"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v).expect("parses")
    }

    #[test]
    fn client_commands_take_address_and_output_anywhere() {
        let c = parse(&["get", "vols", "--address", "unix:///x.sock", "-o", "json"]);
        let Some(Command::Get(g)) = c.command else {
            panic!("get")
        };
        assert_eq!(g.conn.address.as_deref(), Some("unix:///x.sock"));
        assert_eq!(g.conn.output, Some(Output::Json));
        let c = parse(&["get", "--address=/y", "volsnap"]);
        assert!(matches!(c.command, Some(Command::Get(_))));
        let c = parse(&["create", "volume", "-f", "-", "--wait"]);
        assert!(matches!(c.command, Some(Command::Create(_))));
        let c = parse(&["expand", "volume", "abc", "--size", "2Gi"]);
        let Some(Command::Expand(e)) = c.command else {
            panic!("expand")
        };
        let ExpandWhat::Volume { size, .. } = e.what;
        assert_eq!(size, 2 << 30);
        assert!(
            Cli::try_parse_from(["cephvol", "delete", "volume"]).is_err(),
            "ids are required"
        );
    }

    #[test]
    fn create_from_a_file_excludes_inline_flags() {
        assert!(
            Cli::try_parse_from(["cephvol", "create", "volume", "-f", "x", "--class", "c"])
                .is_err()
        );
    }

    #[test]
    fn labels_parse() {
        let l = parse_labels(&["a=b,c=d".into(), "e=".into()]).expect("ok");
        assert_eq!(l.len(), 3);
        assert_eq!(l["e"], "");
        assert!(parse_labels(&["x".into()]).is_err());
    }

    #[test]
    fn progress_is_described_with_percentages() {
        let p = pbp::GetProgressResponse {
            state: "Pending".into(),
            phase: "populating OS image r@sha256:x".into(),
            done: 512 << 20,
            total: 1 << 30,
            message: String::new(),
        };
        assert_eq!(
            describe("VOLUME_PENDING", Some(&p)),
            "Pending: populating OS image r@sha256:x (512Mi / 1Gi, 50%)"
        );
        assert_eq!(describe("VOLUME_PENDING", None), "VOLUME_PENDING");
    }
}
