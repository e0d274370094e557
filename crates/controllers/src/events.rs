//! Events recorded by the reconcilers about the objects they work on (SPEC §4.4). The provider keeps
//! them for IRI `ListEvents`; tests collect them. Owns only the event type and the recorder seam.

use std::sync::Mutex;

use chrono::{DateTime, Utc};

/// Kind of an [`Event`] (Kubernetes event types).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    /// Something went as planned.
    Normal,
    /// Something failed or needs attention.
    Warning,
}

impl EventType {
    /// `"Normal"` or `"Warning"` (the IRI wire strings).
    pub fn as_str(&self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// One recorded event about an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Metadata of the object the event is about (id, labels, annotations at the time).
    pub involved: store::Metadata,
    /// Normal or Warning.
    pub event_type: EventType,
    /// CamelCase reason, e.g. `EmptyImageCreationSucceeded`.
    pub reason: String,
    /// CamelCase action, e.g. `CreateImage` (never empty).
    pub action: String,
    /// Human-readable message.
    pub message: String,
    /// When it happened (wall clock).
    pub time: DateTime<Utc>,
}

/// Where events go. Must not block: it is called from reconcile workers.
pub trait EventRecorder: Send + Sync + 'static {
    /// Records one event.
    fn record(&self, event: Event);
}

/// A recorder that drops every event.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoEvents;

impl EventRecorder for NoEvents {
    fn record(&self, _event: Event) {}
}

/// A recorder that keeps every event in memory (tests, diagnostics).
#[derive(Debug, Default)]
pub struct MemoryEvents {
    events: Mutex<Vec<Event>>,
}

impl MemoryEvents {
    /// An empty recorder.
    pub fn new() -> Self {
        Self::default()
    }

    /// All events recorded so far, oldest first.
    pub fn all(&self) -> Vec<Event> {
        self.events.lock().map(|e| e.clone()).unwrap_or_default()
    }

    /// The events about object `id` with `reason`.
    pub fn with_reason(&self, id: &str, reason: &str) -> Vec<Event> {
        self.all()
            .into_iter()
            .filter(|e| e.involved.id == id && e.reason == reason)
            .collect()
    }
}

impl EventRecorder for MemoryEvents {
    fn record(&self, event: Event) {
        if let Ok(mut events) = self.events.lock() {
            events.push(event);
        }
    }
}

pub(crate) fn event(
    involved: &store::Metadata,
    event_type: EventType,
    reason: &str,
    action: &str,
    message: impl Into<String>,
) -> Event {
    Event {
        involved: involved.clone(),
        event_type,
        reason: reason.to_string(),
        action: action.to_string(),
        message: message.into(),
        time: Utc::now(),
    }
}
