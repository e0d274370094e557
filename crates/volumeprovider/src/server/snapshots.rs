//! The snapshot RPCs of [`VolumeServer`]: ListVolumeSnapshots, CreateVolumeSnapshot,
//! DeleteVolumeSnapshot. Records desired state only; the snapshot controller takes them.

use super::*;

impl VolumeServer {
    pub(super) async fn list_snapshots_impl(
        &self,
        filter: Option<pb::VolumeSnapshotFilter>,
    ) -> Result<Vec<pb::VolumeSnapshot>, Status> {
        let filter = filter.unwrap_or_default();
        list_visible(
            &self.inner.snapshots,
            ("snapshot", "snapshots"),
            &filter.id,
            &filter.label_selector,
            convert::is_visible_snapshot,
            convert::volume_snapshot,
            |v| v.metadata.as_ref(),
        )
        .await
    }

    pub(super) async fn create_snapshot_impl(
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

    pub(super) async fn delete_snapshot_impl(
        &self,
        req: pb::DeleteVolumeSnapshotRequest,
    ) -> Result<(), Status> {
        const FIELD: &str = "volume_snapshot_id";
        validate::id(FIELD, &req.volume_snapshot_id)?;
        let id = &req.volume_snapshot_id;
        let snap = match self.inner.snapshots.get(id).await {
            // A `Retained` snapshot was deleted already: gone for clients.
            Ok(s) if s.status.state != SnapshotState::Retained => s,
            Ok(_) | Err(StoreError::NotFound(_)) => {
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
}
