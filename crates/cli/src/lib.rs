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
//!
//! One module per command ([`get`], [`create`], [`delete`], [`expand`]) and [`wait`] for the
//! polling loop they share; [`client`] connects, [`output`] prints.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use clap::Subcommand;

use crate::client::Clients;

pub mod client;
mod create;
mod delete;
mod duration;
mod error;
mod expand;
mod get;
pub mod output;
mod wait;
pub use crate::client::{socket_path, strip_unix_scheme};
pub use crate::create::CreateArgs;
pub use crate::delete::DeleteArgs;
pub use crate::duration::parse_duration;
pub use crate::error::{Error, Result};
pub use crate::expand::ExpandArgs;
pub use crate::get::GetArgs;
use crate::output::Output;
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
#[derive(Debug, Clone, clap::Args)]
pub struct ConnArgs {
    /// Provider address: unix:///path or a socket path (default: $IRI_VOLUME_RUNTIME_ENDPOINT, then
    /// /var/run/iri-volumebroker.sock, /var/run/iri-volumeprovider.sock).
    #[arg(long = "address", id = "client_address", global = true)]
    pub address: Option<String>,
    /// Output format (get: table by default; create: a message by default).
    #[arg(short = 'o', long, global = true, value_enum)]
    pub output: Option<Output>,
}

pub(crate) fn rpc_err(method: &str, s: tonic::Status) -> Error {
    Error::Cli(format!("{method}: {:?}: {}", s.code(), s.message()))
}

pub(crate) fn parse_labels(items: &[String]) -> Result<BTreeMap<String, String>> {
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

pub(crate) fn read_input(filename: &str) -> Result<String> {
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

pub(crate) fn parse_input<T: serde::de::DeserializeOwned>(filename: &str) -> Result<T> {
    let text = read_input(filename)?;
    serde_yaml::from_str(&text).map_err(|e| Error::Cli(format!("{filename}: {e}")))
}

pub(crate) fn print(s: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(s.as_bytes());
    let _ = out.flush();
}

pub(crate) async fn connect(conn: &ConnArgs) -> Result<Clients> {
    let path = client::resolve(conn.address.as_deref()).await?;
    Clients::connect(&path).await
}

pub(crate) async fn list_volumes(
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

pub(crate) async fn list_snapshots(
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
/// Runs a client command.
pub async fn run(cmd: Command) -> Result<()> {
    match cmd {
        Command::Get(a) => get::get(a).await,
        Command::Create(a) => create::create(a).await,
        Command::Delete(a) => delete::delete(a).await,
        Command::Expand(a) => expand::expand(a).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use clap::Parser;

    use crate::expand::ExpandWhat;

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
}
