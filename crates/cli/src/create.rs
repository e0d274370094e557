//! `create`: creates a volume or a volume snapshot from a YAML/JSON file or from flags, and with
//! `--wait` waits until it is available or ready.

use clap::{Args, Subcommand};

use crate::output::{self, Output};
use crate::wait::{wait_snapshot, wait_volume, WaitArgs};
use crate::{connect, parse_input, parse_labels, print, rpc_err};
use crate::{ConnArgs, Error, Result};
use iri::meta_v1::ObjectMetadata;
use iri::volume_v1 as pb;

/// `create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    #[command(flatten)]
    pub(crate) conn: ConnArgs,
    #[command(subcommand)]
    pub(crate) what: CreateWhat,
}

#[derive(Debug, Subcommand)]
pub(crate) enum CreateWhat {
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

/// Runs `create`.
pub(crate) async fn create(a: CreateArgs) -> Result<()> {
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
