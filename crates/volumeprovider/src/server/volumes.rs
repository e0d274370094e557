//! The volume RPCs of [`VolumeServer`]: ListVolumes, CreateVolume (empty, from an OS image, restored
//! from a snapshot), ExpandVolume, DeleteVolume, and the lookups they share (a volume or snapshot
//! by id or by its Kubernetes name). Records desired state only; the controllers provision.

use super::*;

impl VolumeServer {
    pub(super) async fn list_volumes_impl(
        &self,
        filter: Option<pb::VolumeFilter>,
    ) -> Result<Vec<pb::Volume>, Status> {
        let filter = filter.unwrap_or_default();
        list_visible(
            &self.inner.images,
            ("volume", "volumes"),
            &filter.id,
            &filter.label_selector,
            convert::is_visible_volume,
            convert::volume,
            |v| v.metadata.as_ref(),
        )
        .await
    }

    /// Finds a managed, user-visible volume by id (a `Retained` one is gone for clients).
    async fn get_volume(&self, field: &str, id: &str) -> Result<Image, Status> {
        let img = match self.inner.images.get(id).await {
            Ok(img) if img.status.state != ImageState::Retained => img,
            Ok(_) | Err(StoreError::NotFound(_)) => {
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

    pub(super) async fn create_volume_impl(
        &self,
        req: pb::CreateVolumeRequest,
    ) -> Result<pb::Volume, Status> {
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
        validate::size_bound(
            "volume.spec.resources.storage_bytes",
            spec.size,
            plan.passphrase.is_some() || encrypted(&spec),
            cfg.max_volume_size,
        )?;
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
    /// given by the request's `volume-namespace` label.
    async fn resolve_snapshot(
        &self,
        field: &str,
        name: &str,
        request_labels: &BTreeMap<String, String>,
    ) -> Result<Snapshot, Status> {
        if validate::is_valid_id(name) {
            match self.inner.snapshots.get(name).await {
                Ok(s) if convert::is_visible_snapshot(&s) => return Ok(s),
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
    /// the snapshot request's `volume-snapshot-namespace` label.
    pub(super) async fn resolve_volume(
        &self,
        field: &str,
        name: &str,
        request_labels: &BTreeMap<String, String>,
    ) -> Result<Image, Status> {
        match self.inner.images.get(name).await {
            Ok(img) if convert::is_visible_volume(&img) => return Ok(img),
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

    pub(super) async fn expand_volume_impl(
        &self,
        req: pb::ExpandVolumeRequest,
    ) -> Result<(), Status> {
        let (id, size) = validate::expand_volume(&req)?;
        for _ in 0..5 {
            let mut img = self.get_volume("volume_id", &id).await?;
            if img.metadata.is_deleted() {
                return Err(Status::failed_precondition(format!(
                    "volume_id: volume {id} is being deleted"
                )));
            }
            validate::size_bound(
                "resources.storage_bytes",
                size,
                encrypted(&img.spec),
                self.inner.config.max_volume_size,
            )?;
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

    pub(super) async fn delete_volume_impl(
        &self,
        req: pb::DeleteVolumeRequest,
    ) -> Result<(), Status> {
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
}

/// Whether the spec asks for an encrypted volume.
fn encrypted(spec: &ImageSpec) -> bool {
    matches!(&spec.encryption, Some(e) if e.encryption_type == EncryptionType::Encrypted)
}
