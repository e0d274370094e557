//! Progress events: the Normal events that tell the people who watch a volume (through IRI
//! `ListEvents`, which the volumepoollet turns into Kubernetes events) how far a long operation
//! is, and a last one with its duration and average throughput when it ends.
//!
//! Owns the decision *when* to record (every 25% crossed, or when `progress_event_interval` has
//! passed since the last event and the operation moved), the message wording and the recipients
//! of an OS-image populate (the volumes waiting for it; the OS-image snapshot itself is internal
//! and never listed). It only records events: the persisted `status.progress` is written by
//! `status::persist_progress`, and starting, stopping or retrying operations is not its business.
//! An operation resumed after a restart reports from where it resumed; its duration counts from
//! the resume.

use tokio::time::Instant;

use crate::ctx::Ctx;
use crate::events::EventType;
use store::keys::INTERNAL_LABEL;
use store::{ListOptions, Metadata, FIELD_SNAPSHOT_REF};

/// What the progress counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unit {
    /// Bytes of data copied.
    Bytes,
    /// Clones flattened (children of an image or snapshot: restored volumes, re-homed snapshots).
    Clones,
    /// Objects of an image flattened (the backend's own count).
    Objects,
}

/// Who the events are about.
pub(crate) enum Audience {
    /// The object the operation works on (a volume, a snapshot).
    Object(Metadata),
    /// The volumes restored from OS-image snapshot `id` that are not deleted: they wait for its
    /// populate (looked up at each event, so a volume created meanwhile hears the rest).
    VolumesOf(String),
}

/// The progress events of one run of a long operation.
pub(crate) struct ProgressEvents {
    audience: Audience,
    /// Event reason while running, and at the end.
    reasons: (&'static str, &'static str),
    action: &'static str,
    /// e.g. "populating OS image" / "populated OS image".
    verbs: (&'static str, &'static str),
    unit: Unit,
    started: Instant,
    /// When the last event was recorded, and the quarter (0..=3) it reported.
    last: Option<(Instant, u64)>,
    last_done: u64,
    /// Where this run continued an interrupted one (0: from the start).
    resumed_at: u64,
}

impl ProgressEvents {
    /// Events about `audience` for an operation that is `verbs.0` while it runs and `verbs.1` once
    /// done, with the reasons `reasons` (running, done) and `action`.
    pub fn new(
        audience: Audience,
        reasons: (&'static str, &'static str),
        action: &'static str,
        verbs: (&'static str, &'static str),
        unit: Unit,
    ) -> Self {
        ProgressEvents {
            audience,
            reasons,
            action,
            verbs,
            unit,
            started: Instant::now(),
            last: None,
            last_done: 0,
            resumed_at: 0,
        }
    }

    /// Records a progress event if `done` of `total` crossed a quarter since the last one, or if
    /// `interval` has passed since the last event (or the start) and `done` moved. Never at 100%:
    /// the end is [`ProgressEvents::finish`]'s.
    pub async fn tick(&mut self, ctx: &Ctx, done: u64, total: u64) {
        if total == 0 || done >= total {
            return;
        }
        let quarter = done.saturating_mul(4) / total;
        let now = Instant::now();
        let (since, last_quarter) = self.last.unwrap_or((self.started, 0));
        let crossed = quarter > last_quarter;
        let due =
            now.duration_since(since) >= ctx.cfg.progress_event_interval && done != self.last_done;
        if !(crossed || due) {
            return;
        }
        self.last = Some((now, quarter));
        self.last_done = done;
        let percent = done.saturating_mul(100) / total;
        let message = match self.unit {
            Unit::Bytes => format!(
                "{}: {percent}%, {} of {}",
                self.verbs.0,
                size(done),
                size(total)
            ),
            Unit::Clones => format!("{}: {percent}%, {done} of {total}", self.verbs.0),
            Unit::Objects => format!("{}: {percent}%", self.verbs.0),
        };
        self.record(ctx, self.reasons.0, message).await;
    }

    /// Records that this run continues an interrupted one at `done` of `total` bytes (e.g.
    /// "populating OS image: resumed at 66%, 680 MiB of 1024 MiB"); the throughput of the last
    /// event then counts only what this run did.
    pub async fn resumed(&mut self, ctx: &Ctx, done: u64, total: u64) {
        if total == 0 || done == 0 || done >= total {
            return;
        }
        self.resumed_at = done;
        self.last_done = done;
        self.last = Some((Instant::now(), done.saturating_mul(4) / total));
        let percent = done.saturating_mul(100) / total;
        let message = format!(
            "{}: resumed at {percent}%, {} of {}",
            self.verbs.0,
            size(done),
            size(total)
        );
        self.record(ctx, self.reasons.0, message).await;
    }

    /// Records the last event: the operation ended after `done` units.
    pub async fn finish(&mut self, ctx: &Ctx, done: u64) {
        let secs = self.started.elapsed().as_secs_f64();
        let message = match self.unit {
            Unit::Bytes => {
                let this_run = done.saturating_sub(self.resumed_at);
                let rate = if secs > 0.0 {
                    format!(", {}/s", size((this_run as f64 / secs) as u64))
                } else {
                    String::new()
                };
                let resumed = if self.resumed_at > 0 {
                    format!(", resumed at {}", size(self.resumed_at))
                } else {
                    String::new()
                };
                format!(
                    "{} {} in {secs:.1} s{rate}{resumed}",
                    self.verbs.1,
                    size(done)
                )
            }
            Unit::Clones => format!("{} {done} in {secs:.1} s", self.verbs.1),
            Unit::Objects => format!("{} in {secs:.1} s", self.verbs.1),
        };
        self.record(ctx, self.reasons.1, message).await;
    }

    async fn record(&self, ctx: &Ctx, reason: &str, message: String) {
        for md in self.recipients(ctx).await {
            ctx.record(&md, EventType::Normal, reason, self.action, message.clone());
        }
    }

    async fn recipients(&self, ctx: &Ctx) -> Vec<Metadata> {
        match &self.audience {
            Audience::Object(md) => vec![md.clone()],
            Audience::VolumesOf(sid) => {
                let opts = ListOptions::default().field(FIELD_SNAPSHOT_REF, sid);
                match ctx.images.list(&opts).await {
                    Ok(images) => images
                        .into_iter()
                        .filter(|i| {
                            !i.metadata.is_deleted()
                                && !i.metadata.labels.contains_key(INTERNAL_LABEL)
                        })
                        .map(|i| i.metadata)
                        .collect(),
                    Err(e) => {
                        tracing::debug!(snapshot = %sid, error = %e, "progress event not recorded");
                        Vec::new()
                    }
                }
            }
        }
    }
}

/// `bytes` for people: MiB below 10 GiB (whole), GiB with one decimal above.
fn size(bytes: u64) -> String {
    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;
    if bytes >= 10 * GIB {
        format!("{:.1} GiB", bytes as f64 / GIB as f64)
    } else if bytes >= MIB {
        format!("{} MiB", bytes / MIB)
    } else {
        format!("{} KiB", bytes.div_ceil(1024))
    }
}

#[cfg(test)]
mod tests {
    use super::size;

    #[test]
    fn sizes_read_in_mib_below_ten_gib_and_in_gib_above() {
        assert_eq!(size(230 << 20), "230 MiB");
        assert_eq!(size(12 << 30), "12.0 GiB");
        assert_eq!(size(1000), "1 KiB");
        assert_eq!(size((9 << 30) + (512 << 20)), "9728 MiB");
    }
}
