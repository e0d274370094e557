//! `delete`: deletes volumes or volume snapshots (an unknown id is reported, not an error), and with
//! `--wait` waits until each is gone.

use clap::{Args, Subcommand};
use tonic::Code;

use crate::wait::{wait_gone, Kind, WaitArgs};
use crate::{connect, print};
use crate::{ConnArgs, Error, Result};
use iri::volume_v1 as pb;

/// `delete`.
#[derive(Debug, Args)]
pub struct DeleteArgs {
    #[command(flatten)]
    pub(crate) conn: ConnArgs,
    #[command(subcommand)]
    pub(crate) what: DeleteWhat,
}

#[derive(Debug, Subcommand)]
pub(crate) enum DeleteWhat {
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

/// Runs `delete`.
pub(crate) async fn delete(a: DeleteArgs) -> Result<()> {
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
