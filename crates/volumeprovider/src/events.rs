//! The in-memory event store behind `ListEvents`: a ring of at most
//! `--volume-event-max-events` events (oldest overwritten), entries older than `--volume-event-ttl`
//! dropped by a GC loop every `--volume-event-resync-interval`. It implements
//! [`controllers::events::EventRecorder`], so the reconcilers record straight into it.
//!
//! **Repeats are one entry.** An event identical to one held (same object id, type, reason,
//! action and message) does not take a new slot: the held entry counts it, takes its time (the
//! latest occurrence) and the involved object's metadata, and moves to the newest end of the ring
//! (so expiry and overwriting go by the latest occurrence). `ListEvents` shows that entry once,
//! with its message unchanged and `event_time` = the latest occurrence; the IRI `Event` has no
//! count field, so the count is kept here only ([`EventStore::occurrences`], and the debug log
//! line of every repeat). A retry loop therefore never floods the ring or pushes other events out.
//!
//! Queries ([`EventQuery`]) honour `filter.id` (the Go provider ignored it), the label selector (matched
//! against the involved object's IRI labels; objects with undecodable labels are skipped) and the
//! inclusive time window in Unix seconds, applied only when both bounds are > 0. Results keep
//! insertion order, so replies are deterministic.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use controllers::events::{Event, EventRecorder};
use tokio_util::sync::CancellationToken;

use crate::convert;

/// What `ListEvents` asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventQuery {
    /// Only events about this object id (empty: any).
    pub id: String,
    /// Label equalities on the involved object's IRI labels (AND).
    pub labels: BTreeMap<String, String>,
    /// Inclusive lower bound, Unix seconds (window applies only if both bounds are > 0).
    pub from: i64,
    /// Inclusive upper bound, Unix seconds.
    pub to: i64,
}

impl EventQuery {
    /// Whether `ev` satisfies the query.
    pub fn matches(&self, ev: &Event) -> bool {
        if !self.id.is_empty() && ev.involved.id != self.id {
            return false;
        }
        if self.from > 0 && self.to > 0 {
            let t = ev.time.timestamp();
            if t < self.from || t > self.to {
                return false;
            }
        }
        if !self.labels.is_empty() {
            match convert::iri_labels(&ev.involved) {
                Ok(labels) => convert::labels_match(&labels, &self.labels),
                Err(_) => false,
            }
        } else {
            true
        }
    }
}

/// One held event and how often it happened.
#[derive(Debug, Clone)]
struct Entry {
    event: Event,
    count: u64,
}

impl Entry {
    /// Whether `ev` repeats this entry's event (same object, type, reason, action, message).
    fn repeats(&self, ev: &Event) -> bool {
        let e = &self.event;
        e.involved.id == ev.involved.id
            && e.event_type == ev.event_type
            && e.reason == ev.reason
            && e.action == ev.action
            && e.message == ev.message
    }
}

/// The bounded, expiring event store.
#[derive(Debug)]
pub struct EventStore {
    events: Mutex<VecDeque<Entry>>,
    max: usize,
    ttl: Duration,
    recorded: AtomicU64,
    dropped: AtomicU64,
    repeated: AtomicU64,
}

impl EventStore {
    /// A store keeping at most `max` (≥ 1) events for `ttl`.
    pub fn new(max: usize, ttl: Duration) -> EventStore {
        EventStore {
            events: Mutex::new(VecDeque::new()),
            max: max.max(1),
            ttl,
            recorded: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            repeated: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Entry>> {
        // A panic while holding this lock cannot leave the queue inconsistent: keep serving.
        self.events.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds one event, overwriting the oldest when full; a repeat of a held event updates that
    /// entry instead (see the module docs).
    pub fn push(&self, event: Event) {
        self.recorded.fetch_add(1, Ordering::Relaxed);
        let mut q = self.lock();
        if let Some(pos) = q.iter().rposition(|e| e.repeats(&event)) {
            if let Some(mut entry) = q.remove(pos) {
                entry.count += 1;
                tracing::debug!(
                    id = %event.involved.id,
                    reason = %event.reason,
                    count = entry.count,
                    "event repeated"
                );
                entry.event = event;
                q.push_back(entry);
                self.repeated.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        tracing::debug!(
            id = %event.involved.id,
            r#type = event.event_type.as_str(),
            reason = %event.reason,
            action = %event.action,
            message = %event.message,
            "event"
        );
        while q.len() >= self.max {
            q.pop_front();
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        q.push_back(Entry { event, count: 1 });
    }

    /// The events matching `query`, oldest (by latest occurrence) first; a repeated event once.
    pub fn list(&self, query: &EventQuery) -> Vec<Event> {
        self.lock()
            .iter()
            .filter(|e| query.matches(&e.event))
            .map(|e| e.event.clone())
            .collect()
    }

    /// The events matching `query` with how often each happened, as [`EventStore::list`].
    pub fn occurrences(&self, query: &EventQuery) -> Vec<(Event, u64)> {
        self.lock()
            .iter()
            .filter(|e| query.matches(&e.event))
            .map(|e| (e.event.clone(), e.count))
            .collect()
    }

    /// Recorded events that repeated a held one (counted in its entry, no slot of their own).
    pub fn repeats(&self) -> u64 {
        self.repeated.load(Ordering::Relaxed)
    }

    /// Number of events held.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no event is held.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Events recorded since start (repeats included), and held events dropped (overwritten or
    /// expired).
    pub fn totals(&self) -> (u64, u64) {
        (
            self.recorded.load(Ordering::Relaxed),
            self.dropped.load(Ordering::Relaxed),
        )
    }

    /// Drops the events older than the TTL at `now`; returns how many were dropped.
    pub fn expire(&self, now: DateTime<Utc>) -> usize {
        let ttl = chrono::Duration::from_std(self.ttl).unwrap_or(chrono::Duration::MAX);
        let cutoff = now
            .checked_sub_signed(ttl)
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        let mut q = self.lock();
        let before = q.len();
        q.retain(|e| e.event.time >= cutoff);
        let n = before - q.len();
        self.dropped.fetch_add(n as u64, Ordering::Relaxed);
        n
    }

    /// Runs the GC loop every `interval` until `shutdown` is cancelled.
    pub async fn run_gc(self: Arc<Self>, interval: Duration, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(interval.max(Duration::from_millis(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {
                    let n = self.expire(Utc::now());
                    if n > 0 {
                        tracing::debug!(expired = n, "event GC");
                    }
                }
            }
        }
    }
}

impl EventRecorder for EventStore {
    fn record(&self, event: Event) {
        self.push(event);
    }
}

#[cfg(test)]
mod tests {
    use controllers::events::EventType;
    use store::{keys, Metadata};

    use super::*;

    fn ev(id: &str, labels: &str, secs: i64) -> Event {
        let mut md = Metadata::new(id);
        md.annotations
            .insert(keys::LABELS_ANNOTATION.into(), labels.into());
        Event {
            involved: md,
            event_type: EventType::Normal,
            reason: "R".into(),
            action: "A".into(),
            message: format!("{id}@{secs}"),
            time: DateTime::from_timestamp(secs, 0).expect("valid"),
        }
    }

    fn messages(v: Vec<Event>) -> Vec<String> {
        v.into_iter().map(|e| e.message).collect()
    }

    #[test]
    fn the_oldest_event_is_overwritten_when_full() {
        let s = EventStore::new(2, Duration::from_secs(300));
        for i in 1..=3 {
            s.push(ev("a", "{}", i));
        }
        assert_eq!(messages(s.list(&EventQuery::default())), ["a@2", "a@3"]);
        assert_eq!(s.totals(), (3, 1));
    }

    #[test]
    fn expired_events_are_dropped_by_gc() {
        let s = EventStore::new(10, Duration::from_secs(60));
        s.push(ev("a", "{}", 1000));
        s.push(ev("a", "{}", 1050));
        let now = DateTime::from_timestamp(1100, 0).expect("valid");
        assert_eq!(s.expire(now), 1);
        assert_eq!(messages(s.list(&EventQuery::default())), ["a@1050"]);
    }

    #[test]
    fn queries_filter_by_id_labels_and_an_inclusive_window() {
        let s = EventStore::new(10, Duration::from_secs(300));
        s.push(ev("a", r#"{"k":"v"}"#, 10));
        s.push(ev("b", r#"{"k":"v"}"#, 20));
        s.push(ev("c", r#"{"k":"w"}"#, 30));
        s.push(ev("d", "{broken", 30));
        let q = |id: &str, labels: &[(&str, &str)], from, to| EventQuery {
            id: id.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            from,
            to,
        };
        assert_eq!(s.list(&q("", &[], 0, 0)).len(), 4);
        assert_eq!(messages(s.list(&q("b", &[], 0, 0))), ["b@20"]);
        assert_eq!(
            messages(s.list(&q("", &[("k", "v")], 0, 0))),
            ["a@10", "b@20"]
        );
        assert_eq!(messages(s.list(&q("", &[], 10, 20))), ["a@10", "b@20"]);
        assert_eq!(
            messages(s.list(&q("", &[], 20, 30))),
            ["b@20", "c@30", "d@30"]
        );
        // one bound only: no window
        assert_eq!(s.list(&q("", &[], 25, 0)).len(), 4);
        assert_eq!(messages(s.list(&q("a", &[("k", "v")], 10, 10))), ["a@10"]);
    }

    #[test]
    fn a_repeated_event_is_held_once_with_its_count_and_latest_time() {
        let s = EventStore::new(3, Duration::from_secs(300));
        let mut repeat = ev("a", "{}", 10);
        repeat.message = "resizing failed".into();
        s.push(repeat.clone());
        s.push(ev("b", "{}", 11));
        for t in 12..=40 {
            let mut e = repeat.clone();
            e.time = DateTime::from_timestamp(t, 0).expect("valid");
            s.push(e);
        }
        s.push(ev("c", "{}", 41));
        let held = s.occurrences(&EventQuery::default());
        let summary: Vec<(String, i64, u64)> = held
            .iter()
            .map(|(e, n)| (e.message.clone(), e.time.timestamp(), *n))
            .collect();
        assert_eq!(
            summary,
            [
                ("b@11".to_string(), 11, 1),
                ("resizing failed".to_string(), 40, 30),
                ("c@41".to_string(), 41, 1)
            ],
            "the repeats took no slot: b was not pushed out"
        );
        assert_eq!(s.totals(), (32, 0));
        assert_eq!(s.repeats(), 29);
        // Another reason, type or object is another event.
        let mut other = repeat.clone();
        other.reason = "Other".into();
        s.push(other);
        assert_eq!(s.len(), 3);
        assert_eq!(s.totals().1, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_gc_loop_stops_on_shutdown() {
        let s = Arc::new(EventStore::new(10, Duration::from_secs(1)));
        s.push(ev("a", "{}", 1));
        let token = CancellationToken::new();
        let task = tokio::spawn(Arc::clone(&s).run_gc(Duration::from_secs(60), token.clone()));
        tokio::task::yield_now().await;
        assert!(s.is_empty(), "the first tick expires the old event");
        token.cancel();
        task.await.expect("gc loop ends");
    }
}
