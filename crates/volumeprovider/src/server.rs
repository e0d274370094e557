//! The IRI `volume.v1alpha1.VolumeRuntime` service (all ten RPCs) and cephvol's
//! `cephvol.v1alpha1.Progress` extension, over the image/snapshot stores, the block backend (for
//! pool capacity) and the event store. The controllers do the actual provisioning; this module
//! validates, records desired state and converts. The RPC bodies live in the submodules
//! `volumes`, `snapshots`, `status` and `progress`; this module holds the service, its settings,
//! the shared helpers and the tonic dispatch.
//!
//! Behaviour beyond the Go provider's (its bugs fixed):
//! * status codes: unknown ids → `NOT_FOUND` on Delete/Expand/Create-from, `[]` on List;
//!   bad input → `INVALID_ARGUMENT` naming the field; objects of another manager →
//!   `INVALID_ARGUMENT`; state that forbids the call (source not Available, being deleted) →
//!   `FAILED_PRECONDITION`; store outages → `UNAVAILABLE`; concurrent-update races → `ABORTED`;
//! * a request that fails validation changes nothing;
//! * sizes are bounded (`--max-volume-size`, see `validate::size_bound`): a CreateVolume or
//!   ExpandVolume beyond the bound is `INVALID_ARGUMENT` naming the size field, instead of a
//!   volume that stays pending or an expand retried for ever;
//! * Lists never fail because of one object: unknown states map, broken annotations are skipped
//!   with a log line; internal images (re-homed clones, unmanaged) are never listed;
//! * restore accepts the k8s VolumeSnapshot name and snapshot creation the k8s Volume name (the
//!   poollet may send names where ids are expected), resolved through the poollet's labels in the
//!   same namespace;
//! * Status lists classes in file order; ListEvents honours `filter.id`.
//!
//! Every handler is timed and counted (metrics) and logged at debug level with its method and
//! outcome; request bodies are never logged (they can carry passphrases).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use controllers::{limits_for_class, round_size, Kek};
use rbd::BlockBackend;
use store::keys::SOURCE_VOLUME_ANNOTATION;
use store::{
    keys, EncryptionSpec, EncryptionType, Image, ImageSpec, ImageState, ListOptions, Snapshot,
    SnapshotSource, SnapshotState, Store, StoreError,
};
use tonic::{Code, Request, Response, Status};
use tracing::{debug, info, warn, Instrument};

use crate::classes::VolumeClasses;
use crate::convert;
use crate::events::{EventQuery, EventStore};
use crate::metrics::Metrics;
use crate::validate::{self, DataSource};
use iri::cephvol::v1alpha1 as pb_progress;
use iri::volume_v1 as pb;

/// `runtime_name` reported by Version (kept for a drop-in: it is part of k8s volume ids).
pub const RUNTIME_NAME: &str = "ceph-provider";

/// Settings of the server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Supported classes, in file order.
    pub classes: VolumeClasses,
    /// Key-encryption key for passphrases (`None`: encryption requests are refused).
    pub kek: Option<Kek>,
    /// When set, requests with encryption get `FAILED_PRECONDITION` with this reason (local backend).
    pub encryption_unsupported: Option<String>,
    /// `--limits-burst-factor`.
    pub burst_factor: i64,
    /// `--limits-burst-duration`.
    pub burst_duration: i64,
    /// `--max-volume-size`: the largest rbd image a volume may need (see
    /// [`crate::validate::size_bound`]).
    pub max_volume_size: u64,
}

/// Everything the server works on.
pub struct ServerParts {
    /// Volumes.
    pub images: Store<Image>,
    /// Snapshots.
    pub snapshots: Store<Snapshot>,
    /// The block backend (pool capacity for Status).
    pub backend: Arc<dyn BlockBackend>,
    /// Events for ListEvents.
    pub events: Arc<EventStore>,
    /// The runner, for live progress of long operations.
    pub runner: Option<runner::Runner>,
    /// Metrics to record RPCs in.
    pub metrics: Option<Arc<Metrics>>,
    /// Settings.
    pub config: ServerConfig,
}

/// The gRPC services (cheap to clone).
#[derive(Clone)]
pub struct VolumeServer {
    inner: Arc<ServerParts>,
}

fn store_err(what: &str, e: StoreError) -> Status {
    match e {
        StoreError::NotFound(id) => Status::not_found(format!("{what} {id} not found")),
        StoreError::AlreadyExists(id) => {
            Status::already_exists(format!("{what} {id} already exists"))
        }
        StoreError::Conflict { id, .. } => {
            Status::aborted(format!("{what} {id} was changed concurrently; retry"))
        }
        StoreError::Invalid(m) => Status::internal(format!("{what}: {m}")),
        StoreError::Backend(m) => Status::unavailable(format!("store: {m}")),
    }
}

fn managed() -> ListOptions {
    ListOptions::new().label(keys::MANAGER_LABEL, keys::MANAGER)
}

/// The IRI listing shared by ListVolumes and ListVolumeSnapshots: `id` set → that object or an
/// empty list (the selector is then ignored); otherwise every managed object whose IRI labels
/// match `selector`. Objects `visible` rejects are never listed; objects that cannot be
/// converted are skipped with a warning instead of failing the whole list.
async fn list_visible<T, P, E>(
    store: &Store<T>,
    (one, many): (&str, &str),
    id: &str,
    selector: &BTreeMap<String, String>,
    visible: impl Fn(&T) -> bool,
    to_iri: impl Fn(&T) -> Result<P, E>,
    metadata: impl Fn(&P) -> Option<&iri::meta_v1::ObjectMetadata>,
) -> Result<Vec<P>, Status>
where
    T: store::Object,
    E: std::fmt::Display,
{
    validate::selector("filter.label_selector", selector)?;
    let objects = if !id.is_empty() {
        if !validate::is_valid_id(id) {
            return Ok(Vec::new());
        }
        match store.get(id).await {
            Ok(obj) => vec![obj],
            Err(StoreError::NotFound(_)) => return Ok(Vec::new()),
            Err(e) => return Err(store_err(one, e)),
        }
    } else {
        store
            .list(&managed())
            .await
            .map_err(|e| store_err(many, e))?
    };
    // Each stored object is dropped as soon as it is converted, so that the stored objects and
    // their IRI copies are not all held at once; the list holds exactly the visible ones.
    let mut out = Vec::with_capacity(objects.iter().filter(|o| visible(o)).count());
    for obj in objects.into_iter().filter(|o| visible(o)) {
        match to_iri(&obj) {
            Ok(v) => {
                let labels = metadata(&v).map(|m| &m.labels);
                if id.is_empty() && !labels.is_some_and(|l| convert::labels_match(l, selector)) {
                    continue;
                }
                out.push(v);
            }
            Err(e) => {
                let obj_id = &obj.metadata().id;
                warn!(id = %obj_id, error = %e, "skipping {one} that cannot be shown")
            }
        }
    }
    out.shrink_to_fit();
    Ok(out)
}

/// Newest first, then id, so that a choice among several candidates is deterministic.
fn newest<T: store::Object>(mut v: Vec<T>) -> Option<T> {
    v.sort_by(|a, b| {
        b.metadata()
            .created_at
            .cmp(&a.metadata().created_at)
            .then_with(|| a.metadata().id.cmp(&b.metadata().id))
    });
    v.into_iter().next()
}

impl VolumeServer {
    /// A server over these parts.
    pub fn new(parts: ServerParts) -> VolumeServer {
        VolumeServer {
            inner: Arc::new(parts),
        }
    }

    /// The tonic service of the IRI runtime.
    pub fn runtime_service(&self) -> pb::volume_runtime_server::VolumeRuntimeServer<VolumeServer> {
        pb::volume_runtime_server::VolumeRuntimeServer::new(self.clone())
    }

    /// The tonic service of the progress extension.
    pub fn progress_service(&self) -> pb_progress::progress_server::ProgressServer<VolumeServer> {
        pb_progress::progress_server::ProgressServer::new(self.clone())
    }

    async fn rpc<T>(
        &self,
        method: &'static str,
        fut: impl Future<Output = Result<T, Status>>,
    ) -> Result<Response<T>, Status> {
        let start = Instant::now();
        let res = fut.instrument(tracing::debug_span!("rpc", method)).await;
        let elapsed = start.elapsed();
        let code = res.as_ref().map(|_| Code::Ok).unwrap_or_else(Status::code);
        if let Some(m) = &self.inner.metrics {
            m.observe_rpc(method, code, elapsed);
        }
        let ms = elapsed.as_secs_f64() * 1000.0;
        match &res {
            Ok(_) => debug!(method, elapsed_ms = ms, "rpc ok"),
            Err(s) if matches!(s.code(), Code::Internal | Code::Unavailable | Code::Unknown) => {
                warn!(method, code = ?s.code(), message = s.message(), elapsed_ms = ms, "rpc failed")
            }
            Err(s) => {
                debug!(method, code = ?s.code(), message = s.message(), elapsed_ms = ms, "rpc rejected")
            }
        }
        res.map(Response::new)
    }
}

// The RPCs' bodies, one module per group; each adds to `impl VolumeServer` and uses this module's
// imports.
mod progress;
mod snapshots;
mod status;
mod volumes;

#[tonic::async_trait]
impl pb::volume_runtime_server::VolumeRuntime for VolumeServer {
    async fn version(
        &self,
        _request: Request<pb::VersionRequest>,
    ) -> Result<Response<pb::VersionResponse>, Status> {
        self.rpc("Version", async {
            Ok(pb::VersionResponse {
                runtime_name: RUNTIME_NAME.to_string(),
                runtime_version: env!("CARGO_PKG_VERSION").to_string(),
            })
        })
        .await
    }

    async fn list_events(
        &self,
        request: Request<pb::ListEventsRequest>,
    ) -> Result<Response<pb::ListEventsResponse>, Status> {
        self.rpc("ListEvents", async {
            self.list_events_impl(request.into_inner())
        })
        .await
    }

    async fn list_volumes(
        &self,
        request: Request<pb::ListVolumesRequest>,
    ) -> Result<Response<pb::ListVolumesResponse>, Status> {
        self.rpc("ListVolumes", async {
            let volumes = self.list_volumes_impl(request.into_inner().filter).await?;
            Ok(pb::ListVolumesResponse { volumes })
        })
        .await
    }

    async fn create_volume(
        &self,
        request: Request<pb::CreateVolumeRequest>,
    ) -> Result<Response<pb::CreateVolumeResponse>, Status> {
        self.rpc("CreateVolume", async {
            let volume = self.create_volume_impl(request.into_inner()).await?;
            Ok(pb::CreateVolumeResponse {
                volume: Some(volume),
            })
        })
        .await
    }

    async fn expand_volume(
        &self,
        request: Request<pb::ExpandVolumeRequest>,
    ) -> Result<Response<pb::ExpandVolumeResponse>, Status> {
        self.rpc("ExpandVolume", async {
            self.expand_volume_impl(request.into_inner()).await?;
            Ok(pb::ExpandVolumeResponse {})
        })
        .await
    }

    async fn delete_volume(
        &self,
        request: Request<pb::DeleteVolumeRequest>,
    ) -> Result<Response<pb::DeleteVolumeResponse>, Status> {
        self.rpc("DeleteVolume", async {
            self.delete_volume_impl(request.into_inner()).await?;
            Ok(pb::DeleteVolumeResponse {})
        })
        .await
    }

    async fn create_volume_snapshot(
        &self,
        request: Request<pb::CreateVolumeSnapshotRequest>,
    ) -> Result<Response<pb::CreateVolumeSnapshotResponse>, Status> {
        self.rpc("CreateVolumeSnapshot", async {
            let snap = self.create_snapshot_impl(request.into_inner()).await?;
            Ok(pb::CreateVolumeSnapshotResponse {
                volume_snapshot: Some(snap),
            })
        })
        .await
    }

    async fn delete_volume_snapshot(
        &self,
        request: Request<pb::DeleteVolumeSnapshotRequest>,
    ) -> Result<Response<pb::DeleteVolumeSnapshotResponse>, Status> {
        self.rpc("DeleteVolumeSnapshot", async {
            self.delete_snapshot_impl(request.into_inner()).await?;
            Ok(pb::DeleteVolumeSnapshotResponse {})
        })
        .await
    }

    async fn list_volume_snapshots(
        &self,
        request: Request<pb::ListVolumeSnapshotsRequest>,
    ) -> Result<Response<pb::ListVolumeSnapshotsResponse>, Status> {
        self.rpc("ListVolumeSnapshots", async {
            let volume_snapshots = self
                .list_snapshots_impl(request.into_inner().filter)
                .await?;
            Ok(pb::ListVolumeSnapshotsResponse { volume_snapshots })
        })
        .await
    }

    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        self.rpc("Status", self.status_impl()).await
    }
}

#[tonic::async_trait]
impl pb_progress::progress_server::Progress for VolumeServer {
    async fn get_progress(
        &self,
        request: Request<pb_progress::GetProgressRequest>,
    ) -> Result<Response<pb_progress::GetProgressResponse>, Status> {
        self.rpc("GetProgress", self.progress_impl(request.into_inner()))
            .await
    }
}
