//! cephvol's `Progress` extension service: the state, phase and byte counts of a volume's or a
//! snapshot's running operation, read from the stores and the runner. Read-only.

use super::*;

impl VolumeServer {
    fn live_progress(&self, key: &str) -> Option<(u64, u64)> {
        self.inner
            .runner
            .as_ref()
            .and_then(|r| r.progress(key))
            .map(|p| (p.done, p.total))
    }

    pub(super) async fn progress_impl(
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
        } else if img.status.state == ImageState::Formatting {
            out.phase = "writing the LUKS2 header".to_string();
        } else if img.status.state == ImageState::Resolving {
            out.phase = format!("resolving OS image {}", img.spec.image);
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
