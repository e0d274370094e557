//! The IRI `volume.v1alpha1.VolumeRuntime` service (all ten RPCs) and cephvol's
//! `cephvol.v1alpha1.Progress` extension, over the image/snapshot stores, the block backend (for
//! pool capacity) and the event store. The controllers do the actual provisioning; this module
//! validates, records desired state and converts.
//!
//! Behaviour beyond SPEC §7.4 (the Go provider's bugs fixed, SPEC §9.1–§9.7):
//! * codes per IRI.md §1.7: unknown ids → `NOT_FOUND` on Delete/Expand/Create-from, `[]` on List;
//!   bad input → `INVALID_ARGUMENT` naming the field; objects of another manager →
//!   `INVALID_ARGUMENT`; state that forbids the call (source not Available, being deleted) →
//!   `FAILED_PRECONDITION`; store outages → `UNAVAILABLE`; concurrent-update races → `ABORTED`;
//! * a request that fails validation changes nothing;
//! * Lists never fail because of one object: unknown states map, broken annotations are skipped
//!   with a log line; internal images (re-homed clones, unmanaged) are never listed;
//! * restore accepts the k8s VolumeSnapshot name (IRI.md §1.6 pitfall 5) and snapshot creation the
//!   k8s Volume name (pitfall 6), resolved through the poollet's labels in the same namespace;
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
    let mut out = Vec::with_capacity(objects.len());
    for obj in objects.iter().filter(|o| visible(o)) {
        match to_iri(obj) {
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

    // ----- volumes ------------------------------------------------------------------------------

    async fn list_volumes_impl(
        &self,
        filter: Option<pb::VolumeFilter>,
    ) -> Result<Vec<pb::Volume>, Status> {
        let filter = filter.unwrap_or_default();
        list_visible(
            &self.inner.images,
            ("volume", "volumes"),
            &filter.id,
            &filter.label_selector,
            |img| !convert::is_internal_image(img),
            convert::volume,
            |v| v.metadata.as_ref(),
        )
        .await
    }

    /// Finds a managed, user-visible volume by id.
    async fn get_volume(&self, field: &str, id: &str) -> Result<Image, Status> {
        let img = match self.inner.images.get(id).await {
            Ok(img) => img,
            Err(StoreError::NotFound(_)) => {
                return Err(Status::not_found(format!("{field}: volume {id} not found")))
            }
            Err(e) => return Err(store_err("volume", e)),
        };
        if convert::is_internal_image(&img) {
            return Err(validate::invalid(
                field,
                format!("volume {id} is not managed by this provider"),
            ));
        }
        Ok(img)
    }

    async fn create_volume_impl(&self, req: pb::CreateVolumeRequest) -> Result<pb::Volume, Status> {
        let cfg = &self.inner.config;
        let plan =
            validate::create_volume(&req, &cfg.classes, cfg.encryption_unsupported.as_deref())?;
        let class = &plan.class;
        let mut spec = ImageSpec {
            size: plan.size,
            limits: limits_for_class(class.iops, class.tps, cfg.burst_factor, cfg.burst_duration),
            ..Default::default()
        };
        let source_kind;
        match &plan.source {
            DataSource::Empty => {
                source_kind = "empty";
            }
            DataSource::Image {
                image,
                architecture,
            } => {
                source_kind = "image";
                spec.image = image.clone();
                spec.image_architecture = architecture.clone();
            }
            DataSource::Snapshot(name) => {
                source_kind = "snapshot";
                self.plan_restore(name, &plan.labels, plan.passphrase.as_deref(), &mut spec)
                    .await?;
            }
        }
        if let (Some(pass), DataSource::Empty | DataSource::Image { .. }) =
            (&plan.passphrase, &plan.source)
        {
            let kek = cfg.kek.as_ref().ok_or_else(|| {
                Status::failed_precondition(
                    "volume.spec.encryption: the provider has no KEK configured",
                )
            })?;
            spec.encryption = Some(EncryptionSpec {
                encryption_type: EncryptionType::Encrypted,
                encrypted_passphrase: kek.encrypt(pass),
            });
        }

        let mut attempts = 0;
        let created = loop {
            attempts += 1;
            let mut img = Image::new(store::new_id(), spec.clone());
            img.metadata.annotations = convert::store_annotations(&plan.labels, &plan.annotations);
            img.metadata
                .labels
                .insert(keys::CLASS_LABEL.to_string(), class.name.clone());
            img.metadata
                .labels
                .insert(keys::MANAGER_LABEL.to_string(), keys::MANAGER.to_string());
            match self.inner.images.create(img).await {
                Ok(img) => break img,
                Err(StoreError::AlreadyExists(_)) if attempts < 3 => continue,
                Err(e) => return Err(store_err("volume", e)),
            }
        };
        info!(
            id = %created.metadata.id,
            class = %class.name,
            size = created.spec.size,
            source = source_kind,
            encrypted = created.spec.encryption.is_some(),
            "volume created"
        );
        convert::volume(&created).map_err(|e| Status::internal(e.to_string()))
    }

    /// Resolves the snapshot of a restore and fills the spec (size, snapshot ref, encryption).
    async fn plan_restore(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
        passphrase: Option<&[u8]>,
        spec: &mut ImageSpec,
    ) -> Result<(), Status> {
        const FIELD: &str = "volume.spec.volume_data_source.snapshot_data_source.snapshot_id";
        let snap = self.resolve_snapshot(FIELD, name, labels).await?;
        let sid = snap.metadata.id.clone();
        if snap.metadata.is_deleted() {
            return Err(Status::failed_precondition(format!(
                "{FIELD}: snapshot {sid} is being deleted"
            )));
        }
        if snap.status.state == SnapshotState::Failed {
            return Err(Status::failed_precondition(format!(
                "{FIELD}: snapshot {sid} has failed"
            )));
        }
        if snap.source.volume_image_id.is_empty() {
            return Err(validate::invalid(
                FIELD,
                format!("snapshot {sid} is not a volume snapshot"),
            ));
        }
        let source = match self.inner.images.get(&snap.source.volume_image_id).await {
            Ok(img) => Some(img),
            Err(StoreError::NotFound(_)) => None,
            Err(e) => return Err(store_err("volume", e)),
        };
        let snap_size = u64::try_from(snap.status.size).unwrap_or(0);
        let source_size = source.as_ref().map(|i| i.spec.size).unwrap_or(snap_size);
        const SIZE: &str = "volume.spec.resources.storage_bytes";
        if spec.size == 0 {
            spec.size = source_size.max(snap_size);
            if spec.size == 0 {
                return Err(Status::failed_precondition(format!(
                    "{SIZE}: the size of snapshot {sid} is not known yet; give a size"
                )));
            }
        } else if spec.size < source_size || round_size(spec.size) < snap_size {
            return Err(validate::invalid(
                SIZE,
                format!(
                    "{} is smaller than snapshot {sid} ({} bytes)",
                    spec.size,
                    source_size.max(snap_size)
                ),
            ));
        }
        let inherited = source.as_ref().and_then(|i| i.spec.encryption.clone());
        if let Some(pass) = passphrase {
            let matches = match (&inherited, &self.inner.config.kek) {
                (Some(enc), Some(kek)) if enc.encryption_type == EncryptionType::Encrypted => kek
                    .decrypt(&enc.encrypted_passphrase)
                    .map(|p| p == pass)
                    .unwrap_or(false),
                _ => false,
            };
            if !matches {
                return Err(validate::invalid(
                    "volume.spec.encryption",
                    "a volume restored from a snapshot inherits the source's encryption; \
                     it cannot have an encryption of its own",
                ));
            }
        }
        spec.encryption = inherited;
        spec.snapshot_ref = Some(sid);
        Ok(())
    }

    /// A snapshot by provider id, else by k8s name (label `volume-snapshot-name`) in the namespace
    /// given by the request's `volume-namespace` label (IRI.md §1.6 pitfall 5).
    async fn resolve_snapshot(
        &self,
        field: &str,
        name: &str,
        request_labels: &BTreeMap<String, String>,
    ) -> Result<Snapshot, Status> {
        if validate::is_valid_id(name) {
            match self.inner.snapshots.get(name).await {
                Ok(s) if convert::is_managed(&s.metadata) => return Ok(s),
                Ok(_) | Err(StoreError::NotFound(_)) => {}
                Err(e) => return Err(store_err("snapshot", e)),
            }
        }
        let namespace = request_labels.get(convert::VOLUME_NAMESPACE_LABEL);
        let all = self
            .inner
            .snapshots
            .list(&managed())
            .await
            .map_err(|e| store_err("snapshots", e))?;
        let candidates: Vec<Snapshot> = all
            .into_iter()
            .filter(|s| !s.metadata.is_deleted())
            .filter(|s| match convert::iri_labels(&s.metadata) {
                Ok(l) => {
                    l.get(convert::SNAPSHOT_NAME_LABEL).map(String::as_str) == Some(name)
                        && l.get(convert::SNAPSHOT_NAMESPACE_LABEL) == namespace
                }
                Err(_) => false,
            })
            .collect();
        if candidates.len() > 1 {
            warn!(
                name,
                count = candidates.len(),
                "several snapshots carry this name; using the newest"
            );
        }
        newest(candidates)
            .ok_or_else(|| Status::not_found(format!("{field}: snapshot {name} not found")))
    }

    /// A volume by provider id, else by k8s name (label `volume-name`) in the namespace given by
    /// the snapshot request's `volume-snapshot-namespace` label (IRI.md §1.6 pitfall 6).
    async fn resolve_volume(
        &self,
        field: &str,
        name: &str,
        request_labels: &BTreeMap<String, String>,
    ) -> Result<Image, Status> {
        match self.inner.images.get(name).await {
            Ok(img) if !convert::is_internal_image(&img) => return Ok(img),
            Ok(_) | Err(StoreError::NotFound(_)) => {}
            Err(e) => return Err(store_err("volume", e)),
        }
        let namespace = request_labels.get(convert::SNAPSHOT_NAMESPACE_LABEL);
        let all = self
            .inner
            .images
            .list(&managed())
            .await
            .map_err(|e| store_err("volumes", e))?;
        let candidates: Vec<Image> = all
            .into_iter()
            .filter(|i| !convert::is_internal_image(i) && !i.metadata.is_deleted())
            .filter(|i| match convert::iri_labels(&i.metadata) {
                Ok(l) => {
                    l.get(convert::VOLUME_NAME_LABEL).map(String::as_str) == Some(name)
                        && l.get(convert::VOLUME_NAMESPACE_LABEL) == namespace
                }
                Err(_) => false,
            })
            .collect();
        if candidates.len() > 1 {
            warn!(
                name,
                count = candidates.len(),
                "several volumes carry this name; using the newest"
            );
        }
        newest(candidates)
            .ok_or_else(|| Status::not_found(format!("{field}: volume {name} not found")))
    }

    async fn expand_volume_impl(&self, req: pb::ExpandVolumeRequest) -> Result<(), Status> {
        let (id, size) = validate::expand_volume(&req)?;
        for _ in 0..5 {
            let mut img = self.get_volume("volume_id", &id).await?;
            if img.metadata.is_deleted() {
                return Err(Status::failed_precondition(format!(
                    "volume_id: volume {id} is being deleted"
                )));
            }
            if size <= img.spec.size {
                return Err(validate::invalid(
                    "resources.storage_bytes",
                    format!(
                        "{size} must be greater than the current size {}",
                        img.spec.size
                    ),
                ));
            }
            let old = img.spec.size;
            img.spec.size = size;
            match self.inner.images.update(&img).await {
                Ok(_) => {
                    info!(id = %id, from = old, to = size, "volume expand requested");
                    return Ok(());
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(store_err("volume", e)),
            }
        }
        Err(Status::aborted(format!(
            "volume {id} keeps changing; retry"
        )))
    }

    async fn delete_volume_impl(&self, req: pb::DeleteVolumeRequest) -> Result<(), Status> {
        validate::id("volume_id", &req.volume_id)?;
        let img = self.get_volume("volume_id", &req.volume_id).await?;
        if img.metadata.is_deleted() {
            return Ok(());
        }
        match self.inner.images.delete(&req.volume_id).await {
            Ok(()) => {
                info!(id = %req.volume_id, "volume deletion requested");
                Ok(())
            }
            Err(StoreError::NotFound(id)) => Err(Status::not_found(format!(
                "volume_id: volume {id} not found"
            ))),
            Err(e) => Err(store_err("volume", e)),
        }
    }

    // ----- snapshots ----------------------------------------------------------------------------

    async fn list_snapshots_impl(
        &self,
        filter: Option<pb::VolumeSnapshotFilter>,
    ) -> Result<Vec<pb::VolumeSnapshot>, Status> {
        let filter = filter.unwrap_or_default();
        list_visible(
            &self.inner.snapshots,
            ("snapshot", "snapshots"),
            &filter.id,
            &filter.label_selector,
            |s| convert::is_managed(&s.metadata),
            convert::volume_snapshot,
            |v| v.metadata.as_ref(),
        )
        .await
    }

    async fn create_snapshot_impl(
        &self,
        req: pb::CreateVolumeSnapshotRequest,
    ) -> Result<pb::VolumeSnapshot, Status> {
        let plan = validate::create_snapshot(&req)?;
        const FIELD: &str = "volume_snapshot.spec.volume_id";
        let vol = self
            .resolve_volume(FIELD, &plan.volume, &plan.labels)
            .await?;
        let vid = vol.metadata.id.clone();
        if vol.metadata.is_deleted() {
            return Err(Status::failed_precondition(format!(
                "{FIELD}: volume {vid} is being deleted"
            )));
        }
        if vol.status.state != ImageState::Available {
            return Err(Status::failed_precondition(format!(
                "{FIELD}: volume {vid} is not available (state {})",
                vol.status.state
            )));
        }
        let mut attempts = 0;
        let created = loop {
            attempts += 1;
            let mut snap = Snapshot::new(
                store::new_id(),
                SnapshotSource {
                    ironcore_image: String::new(),
                    volume_image_id: vid.clone(),
                },
            );
            snap.metadata.annotations = convert::store_annotations(&plan.labels, &plan.annotations);
            snap.metadata
                .annotations
                .insert(SOURCE_VOLUME_ANNOTATION.to_string(), vid.clone());
            snap.metadata
                .labels
                .insert(keys::MANAGER_LABEL.to_string(), keys::MANAGER.to_string());
            match self.inner.snapshots.create(snap).await {
                Ok(s) => break s,
                Err(StoreError::AlreadyExists(_)) if attempts < 3 => continue,
                Err(e) => return Err(store_err("snapshot", e)),
            }
        };
        info!(id = %created.metadata.id, volume = %vid, "volume snapshot created");
        convert::volume_snapshot(&created).map_err(|e| Status::internal(e.to_string()))
    }

    async fn delete_snapshot_impl(
        &self,
        req: pb::DeleteVolumeSnapshotRequest,
    ) -> Result<(), Status> {
        const FIELD: &str = "volume_snapshot_id";
        validate::id(FIELD, &req.volume_snapshot_id)?;
        let id = &req.volume_snapshot_id;
        let snap = match self.inner.snapshots.get(id).await {
            Ok(s) => s,
            Err(StoreError::NotFound(_)) => {
                return Err(Status::not_found(format!(
                    "{FIELD}: snapshot {id} not found"
                )))
            }
            Err(e) => return Err(store_err("snapshot", e)),
        };
        if !convert::is_managed(&snap.metadata) {
            return Err(validate::invalid(
                FIELD,
                format!("snapshot {id} is not managed by this provider"),
            ));
        }
        if snap.metadata.is_deleted() {
            return Ok(());
        }
        match self.inner.snapshots.delete(id).await {
            Ok(()) => {
                info!(id = %id, "volume snapshot deletion requested");
                Ok(())
            }
            Err(StoreError::NotFound(_)) => Err(Status::not_found(format!(
                "{FIELD}: snapshot {id} not found"
            ))),
            Err(e) => Err(store_err("snapshot", e)),
        }
    }

    // ----- status, events -----------------------------------------------------------------------

    async fn status_impl(&self) -> Result<pb::StatusResponse, Status> {
        let usage = self
            .inner
            .backend
            .pool_usage()
            .await
            .map_err(|e| Status::unavailable(format!("pool usage: {e}")))?;
        let quantity = i64::try_from(usage.capacity()).unwrap_or(i64::MAX);
        Ok(pb::StatusResponse {
            volume_class_status: self
                .inner
                .config
                .classes
                .iter()
                .map(|c| pb::VolumeClassStatus {
                    volume_class: Some(pb::VolumeClass {
                        name: c.name.clone(),
                        capabilities: Some(pb::VolumeClassCapabilities {
                            tps: c.tps,
                            iops: c.iops,
                        }),
                    }),
                    quantity,
                })
                .collect(),
        })
    }

    fn list_events_impl(
        &self,
        req: pb::ListEventsRequest,
    ) -> Result<pb::ListEventsResponse, Status> {
        let filter = req.filter.unwrap_or_default();
        validate::selector("filter.label_selector", &filter.label_selector)?;
        let query = EventQuery {
            id: filter.id,
            labels: filter.label_selector,
            from: filter.events_from_time,
            to: filter.events_to_time,
        };
        let events = self
            .inner
            .events
            .list(&query)
            .iter()
            .filter_map(|e| match convert::event(e) {
                Ok(ev) => Some(ev),
                Err(err) => {
                    debug!(id = %e.involved.id, error = %err, "skipping event that cannot be shown");
                    None
                }
            })
            .collect();
        Ok(pb::ListEventsResponse { events })
    }

    // ----- progress -----------------------------------------------------------------------------

    fn live_progress(&self, key: &str) -> Option<(u64, u64)> {
        self.inner
            .runner
            .as_ref()
            .and_then(|r| r.progress(key))
            .map(|p| (p.done, p.total))
    }

    async fn progress_impl(
        &self,
        req: pb_progress::GetProgressRequest,
    ) -> Result<pb_progress::GetProgressResponse, Status> {
        validate::id("id", &req.id)?;
        let id = req.id.as_str();
        let mut out = pb_progress::GetProgressResponse::default();
        let set = |out: &mut pb_progress::GetProgressResponse, p: Option<(u64, u64)>| {
            if let Some((done, total)) = p {
                out.done = done;
                out.total = total;
            }
        };
        if req.kind == pb_progress::ObjectKind::VolumeSnapshot as i32 {
            let snap = self
                .inner
                .snapshots
                .get(id)
                .await
                .map_err(|e| store_err("snapshot", e))?;
            out.state = snap.status.state.to_string();
            out.message = snap.status.message.clone();
            set(
                &mut out,
                snap.status.progress.as_ref().map(|p| (p.done, p.total)),
            );
            set(&mut out, self.live_progress(&format!("snapshot:{id}")));
            out.phase = match &snap.status.state {
                SnapshotState::Pending => "creating the snapshot".to_string(),
                SnapshotState::Populating => {
                    format!("populating from {}", snap.source.ironcore_image)
                }
                SnapshotState::Flattening => "flattening volumes restored from it".to_string(),
                SnapshotState::Flattened => "cleaning up".to_string(),
                _ => String::new(),
            };
            return Ok(out);
        }
        let img = self
            .inner
            .images
            .get(id)
            .await
            .map_err(|e| store_err("volume", e))?;
        out.state = img.status.state.to_string();
        out.message = img.status.message.clone();
        set(
            &mut out,
            img.status.progress.as_ref().map(|p| (p.done, p.total)),
        );
        if img.metadata.is_deleted() {
            out.phase = match img.status.state {
                ImageState::FlatteningChildren => "flattening dependent volumes".to_string(),
                _ => "deleting".to_string(),
            };
        } else if img.status.state == ImageState::Filling {
            out.phase = "copying data from the snapshot".to_string();
        } else if img.status.state != ImageState::Available {
            match img.spec.snapshot_ref.as_deref() {
                Some(sid) => match self.inner.snapshots.get(sid).await {
                    Ok(snap) => {
                        out.phase = match snap.status.state {
                            SnapshotState::Populating => {
                                set(
                                    &mut out,
                                    snap.status.progress.as_ref().map(|p| (p.done, p.total)),
                                );
                                set(&mut out, self.live_progress(&format!("snapshot:{sid}")));
                                format!("populating OS image {}", snap.source.ironcore_image)
                            }
                            SnapshotState::Failed => {
                                if out.message.is_empty() {
                                    out.message = snap.status.message.clone();
                                }
                                format!("snapshot {sid} failed")
                            }
                            SnapshotState::Ready | SnapshotState::Populated => {
                                "cloning from the snapshot".to_string()
                            }
                            _ => format!("waiting for snapshot {sid}"),
                        }
                    }
                    Err(StoreError::NotFound(_)) => {
                        out.phase = format!("waiting for snapshot {sid}")
                    }
                    Err(e) => return Err(store_err("snapshot", e)),
                },
                None if !img.spec.image.is_empty() => {
                    out.phase = format!("resolving OS image {}", img.spec.image)
                }
                None => out.phase = "provisioning".to_string(),
            }
        }
        set(&mut out, self.live_progress(&format!("image:{id}")));
        Ok(out)
    }
}

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
