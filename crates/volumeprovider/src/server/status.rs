//! Status (classes and pool capacity) and ListEvents of [`VolumeServer`]. Read-only.

use super::*;

impl VolumeServer {
    pub(super) async fn status_impl(&self) -> Result<pb::StatusResponse, Status> {
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

    pub(super) fn list_events_impl(
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
}
