//! `get`: lists volumes, volume snapshots, events, the status and the version, as a table or as
//! JSON/YAML. Read-only: changes nothing on the provider.

use std::collections::BTreeMap;
use std::time::Duration;

use clap::{Args, Subcommand};

use crate::output::{self, Output};
use crate::{connect, list_snapshots, list_volumes, parse_duration, parse_labels, print, rpc_err};
use crate::{ConnArgs, Result};
use iri::volume_v1 as pb;

/// `get`.
#[derive(Debug, Args)]
pub struct GetArgs {
    #[command(flatten)]
    pub(crate) conn: ConnArgs,
    #[command(subcommand)]
    pub(crate) what: GetWhat,
}

#[derive(Debug, Subcommand)]
pub(crate) enum GetWhat {
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

/// Runs `get`.
pub(crate) async fn get(a: GetArgs) -> Result<()> {
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
