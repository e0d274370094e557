//! Cross-process change reports of the omap store ([`store::Backend::remote_changes`]) over rados
//! watch/notify on the collection objects themselves (`ironcore.csi.volumes`, ...).
//!
//! * Sending ([`Notifier`]): after each successful write, [`crate::OmapBackend`] reports
//!   `(collection, key, what the write replaced)`. One task per backend handle batches the reports:
//!   while a notification is in flight, new reports queue up and are coalesced per key (the oldest
//!   `previous` is kept, which is what the receiver must compare against), then go out as one
//!   notification per collection. A notification waits for the watchers' acknowledgements for at
//!   most [`NOTIFY_TIMEOUT`]: a paused process keeps its watch until the OSD times it out, and must
//!   not stall the reports to the others for longer than that.
//! * Receiving ([`follow`]): one task per collection watches the object, drops the notifications
//!   this very client sent (the notifier id is the client's global id), decodes the others into
//!   [`RemoteChange::Key`]s, and sends [`RemoteChange::Resync`] every time the watch is
//!   (re-)established: at the start, after a watch error (session timed out, OSD map change,
//!   blocklisting) and while the object does not exist yet (a watch needs an existing object; the
//!   first write creates it, so the task retries every [`RETRY`] and never creates anything itself).
//!
//! The payload format is ours (both ends are this crate): `b"cvn1"`, a `u32` count, then per change
//! a `u32` key length and the key, one byte saying what was replaced (0 unknown, 1 absent, 2 a
//! value) and for a value a `u32` length and the bytes; integers little-endian. A payload that does
//! not decode is answered with a `Resync`.

use std::collections::HashMap;
use std::time::Duration;

use store::{Previous, RemoteChange, RemoteChanges};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::rados::IoCtx;
use crate::watch::{ObjectWatch, WatchMsg};

/// How long a notification waits for the watchers' acknowledgements.
pub const NOTIFY_TIMEOUT: Duration = Duration::from_secs(3);
/// How often a broken or impossible watch (missing object) is retried.
pub const RETRY: Duration = Duration::from_secs(1);
/// Bound of the queue between a collection's watch task and its store.
const QUEUE: usize = 1024;
/// At most this many changes, or about this many bytes, per notification.
const BATCH_CHANGES: usize = 512;
const BATCH_BYTES: usize = 256 * 1024;
const MAGIC: &[u8; 4] = b"cvn1";

/// Encodes one batch of changes.
pub(crate) fn encode(changes: &[(String, Previous)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(changes.len() as u32).to_le_bytes());
    for (key, previous) in changes {
        out.extend_from_slice(&(key.len() as u32).to_le_bytes());
        out.extend_from_slice(key.as_bytes());
        match previous {
            Previous::Unknown => out.push(0),
            Previous::Absent => out.push(1),
            Previous::Value(v) => {
                out.push(2);
                out.extend_from_slice(&(v.len() as u32).to_le_bytes());
                out.extend_from_slice(v);
            }
        }
    }
    out
}

/// Decodes a batch; `None` if the payload is not one of ours or is damaged.
pub(crate) fn decode(payload: &[u8]) -> Option<Vec<(String, Previous)>> {
    fn take<'a>(p: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if p.len() < n {
            return None;
        }
        let (head, tail) = p.split_at(n);
        *p = tail;
        Some(head)
    }
    fn u32_of(p: &mut &[u8]) -> Option<usize> {
        let b: [u8; 4] = take(p, 4)?.try_into().ok()?;
        usize::try_from(u32::from_le_bytes(b)).ok()
    }
    let mut p = payload;
    if take(&mut p, 4)? != MAGIC {
        return None;
    }
    let count = u32_of(&mut p)?;
    let mut out = Vec::with_capacity(count.min(BATCH_CHANGES));
    for _ in 0..count {
        let len = u32_of(&mut p)?;
        let key = String::from_utf8(take(&mut p, len)?.to_vec()).ok()?;
        let previous = match take(&mut p, 1)?[0] {
            0 => Previous::Unknown,
            1 => Previous::Absent,
            2 => {
                let len = u32_of(&mut p)?;
                Previous::Value(take(&mut p, len)?.to_vec())
            }
            _ => return None,
        };
        out.push((key, previous));
    }
    p.is_empty().then_some(out)
}

/// Reports the writes of one backend handle to the other processes (see the module docs).
#[derive(Debug)]
pub(crate) struct Notifier {
    tx: mpsc::UnboundedSender<(String, String, Previous)>,
}

/// Pending reports of one collection, coalesced per key in arrival order.
#[derive(Default)]
struct Pending {
    order: Vec<(String, Previous)>,
    index: HashMap<String, usize>,
}

impl Pending {
    fn add(&mut self, key: String, previous: Previous) {
        if !self.index.contains_key(&key) {
            self.index.insert(key.clone(), self.order.len());
            self.order.push((key, previous));
        }
    }
}

impl Notifier {
    /// Starts the sending task on the current tokio runtime.
    pub(crate) fn start(io: IoCtx) -> Notifier {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(send_reports(io, rx));
        Notifier { tx }
    }

    /// Queues the report of one successful write.
    pub(crate) fn report(&self, collection: &str, key: &str, previous: Previous) {
        let _ = self
            .tx
            .send((collection.to_string(), key.to_string(), previous));
    }
}

async fn send_reports(io: IoCtx, mut rx: mpsc::UnboundedReceiver<(String, String, Previous)>) {
    while let Some(first) = rx.recv().await {
        let mut pending: Vec<(String, Pending)> = Vec::new();
        let mut add = |(collection, key, previous): (String, String, Previous)| match pending
            .iter_mut()
            .find(|(c, _)| *c == collection)
        {
            Some((_, p)) => p.add(key, previous),
            None => {
                let mut p = Pending::default();
                p.add(key, previous);
                pending.push((collection, p));
            }
        };
        add(first);
        while let Ok(more) = rx.try_recv() {
            add(more);
        }
        for (collection, p) in pending {
            let mut batch = Vec::new();
            let mut bytes = 0;
            let mut changes = p.order.into_iter().peekable();
            while let Some((key, previous)) = changes.next() {
                bytes += key.len()
                    + match &previous {
                        Previous::Value(v) => v.len(),
                        _ => 0,
                    };
                batch.push((key, previous));
                let full = batch.len() >= BATCH_CHANGES || bytes >= BATCH_BYTES;
                if full || changes.peek().is_none() {
                    notify(&io, &collection, encode(&std::mem::take(&mut batch))).await;
                    bytes = 0;
                }
            }
        }
    }
}

async fn notify(io: &IoCtx, object: &str, payload: Vec<u8>) {
    let (io, object) = (io.clone(), object.to_string());
    let obj = object.clone();
    let sent = tokio::task::spawn_blocking(move || io.notify(&obj, &payload, NOTIFY_TIMEOUT)).await;
    match sent {
        Ok(Ok(())) => {}
        Ok(Err(e)) => debug!(object, error = %e, "change notification not sent"),
        Err(e) => warn!(object, error = %e, "change notification task failed"),
    }
}

/// Watches `object` and reports the changes other clients make to it (see the module docs).
pub(crate) fn follow(io: IoCtx, object: &str) -> RemoteChanges {
    let (tx, rx) = mpsc::channel(QUEUE);
    tokio::spawn(watch_loop(io, object.to_string(), tx));
    rx
}

async fn close(watch: ObjectWatch) {
    let _ = tokio::task::spawn_blocking(move || watch.close()).await;
}

async fn watch_loop(io: IoCtx, object: String, out: mpsc::Sender<RemoteChange>) {
    let me = io.rados().instance_id();
    let mut failures = 0u32;
    loop {
        let (raw_tx, mut raw) = mpsc::unbounded_channel();
        let (i, o) = (io.clone(), object.clone());
        let registered =
            tokio::task::spawn_blocking(move || ObjectWatch::register(&i, &o, raw_tx)).await;
        let watch = match registered {
            Ok(Ok(w)) => w,
            other => {
                // A missing object (nothing written to the collection yet) is expected; anything
                // else is worth a warning now and then.
                let (missing, e) = match other {
                    Ok(Err(rbd::RbdError::NotFound(e))) => (true, e),
                    Ok(Err(e)) => (false, e.to_string()),
                    Err(e) => (false, e.to_string()),
                    Ok(Ok(_)) => (false, String::new()),
                };
                if missing {
                    debug!(
                        object,
                        "the collection object does not exist yet: watching it later"
                    );
                } else {
                    if failures % 30 == 0 {
                        warn!(object, error = %e, "cannot watch the collection object (retrying every second)");
                    }
                    failures += 1;
                }
                tokio::select! {
                    _ = tokio::time::sleep(RETRY) => continue,
                    _ = out.closed() => return,
                }
            }
        };
        failures = 0;
        debug!(object, "watching for changes of other daemons");
        if out.send(RemoteChange::Resync).await.is_err() {
            close(watch).await;
            return;
        }
        loop {
            let msg = tokio::select! {
                msg = raw.recv() => msg,
                _ = out.closed() => {
                    close(watch).await;
                    return;
                }
            };
            match msg {
                Some(WatchMsg::Notify { notifier, .. }) if notifier == me => {}
                Some(WatchMsg::Notify { payload, .. }) => {
                    let changes = match decode(&payload) {
                        Some(c) => c
                            .into_iter()
                            .map(|(key, previous)| RemoteChange::Key { key, previous })
                            .collect(),
                        None => {
                            warn!(
                                object,
                                bytes = payload.len(),
                                "undecodable change notification: resync"
                            );
                            vec![RemoteChange::Resync]
                        }
                    };
                    for c in changes {
                        if out.send(c).await.is_err() {
                            close(watch).await;
                            return;
                        }
                    }
                }
                Some(WatchMsg::Error(errno)) => {
                    warn!(
                        object,
                        errno, "the watch broke (notifications may be lost): re-watching"
                    );
                    break;
                }
                None => break,
            }
        }
        close(watch).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_round_trip() {
        let changes = vec![
            ("a".to_string(), Previous::Absent),
            (
                "sha256:b/c%".to_string(),
                Previous::Value(b"{\"x\":1}".to_vec()),
            ),
            (String::new(), Previous::Unknown),
            ("e".to_string(), Previous::Value(Vec::new())),
        ];
        assert_eq!(decode(&encode(&changes)), Some(changes));
        assert_eq!(decode(&encode(&[])), Some(vec![]));
    }

    #[test]
    fn foreign_or_damaged_payloads_do_not_decode() {
        let good = encode(&[("k".to_string(), Previous::Value(b"v".to_vec()))]);
        assert_eq!(decode(b""), None);
        assert_eq!(decode(b"xyz1\0\0\0\0"), None);
        for cut in 0..good.len() {
            assert_eq!(decode(&good[..cut]), None, "cut at {cut}");
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(decode(&trailing), None);
        let mut bad_kind = good;
        bad_kind[4 + 4 + 4 + 1] = 9;
        assert_eq!(decode(&bad_kind), None);
    }

    #[test]
    fn reports_are_coalesced_per_key_keeping_the_oldest_previous() {
        let mut p = Pending::default();
        p.add("a".into(), Previous::Absent);
        p.add("b".into(), Previous::Unknown);
        p.add("a".into(), Previous::Value(b"1".to_vec()));
        assert_eq!(
            p.order,
            vec![
                ("a".into(), Previous::Absent),
                ("b".into(), Previous::Unknown)
            ]
        );
    }
}
