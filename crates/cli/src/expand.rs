//! `expand`: grows a volume, and with `--wait` waits until the provider reports the new size.

use clap::{Args, Subcommand};

use crate::output;
use crate::wait::{wait_volume, WaitArgs};
use crate::{connect, print, rpc_err};
use crate::{ConnArgs, Result};
use iri::volume_v1 as pb;

/// `expand`.
#[derive(Debug, Args)]
pub struct ExpandArgs {
    #[command(flatten)]
    pub(crate) conn: ConnArgs,
    #[command(subcommand)]
    pub(crate) what: ExpandWhat,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ExpandWhat {
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

/// Runs `expand`.
pub(crate) async fn expand(a: ExpandArgs) -> Result<()> {
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
