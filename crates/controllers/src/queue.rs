//! The reconcilers' work queue, with the client-go rate-limiting queue semantics the reconcilers
//! rely on, on tokio time so that tests can run with paused time.
//!
//! Owns: key deduplication, the "one worker per key" rule, delayed adds, per-key exponential
//! backoff and the global token bucket. It knows nothing about objects or reconcilers.
//!
//! Semantics:
//! * [`WorkQueue::add`]: a key is held at most once while pending. A key added while a worker
//!   processes it is marked dirty and handed out again once after [`WorkQueue::done`]; the same
//!   key is never handed to two workers at once.
//! * [`WorkQueue::add_after`]: the key is added when the delay has passed. Several delayed adds of
//!   one key keep the earliest deadline.
//! * [`WorkQueue::add_rate_limited`]: delay = max(per-key backoff, global token bucket). The per-key
//!   backoff is `base · 2ⁿ` (n = failures so far, capped at `max_delay`) and is reset by
//!   [`WorkQueue::forget`]. A plain `add`/`add_after` never advances it, so "waiting for async work"
//!   requeues do not grow the backoff.
//! * [`WorkQueue::shutdown`]: [`WorkQueue::get`] returns `None` from then on (pending keys are dropped).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// Tuning of a [`WorkQueue`].
#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// First per-key backoff delay (client-go: 5 ms).
    pub base_delay: Duration,
    /// Cap of the per-key backoff.
    pub max_delay: Duration,
    /// Global token bucket refill rate in adds per second (client-go: 10/s). 0 disables the bucket.
    pub rate_per_sec: f64,
    /// Global token bucket size (client-go: 100).
    pub burst: u32,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            base_delay: Duration::from_millis(5),
            max_delay: Duration::from_secs(300),
            rate_per_sec: 10.0,
            burst: 100,
        }
    }
}

/// A deduplicating, rate-limited work queue of string keys. Cheap to clone (shared state).
#[derive(Clone)]
pub struct WorkQueue {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: QueueConfig,
    state: Mutex<State>,
    /// Wakes workers waiting in `get`.
    ready: Notify,
    /// Wakes the delay task when an earlier deadline arrives, on shutdown and on drop.
    delay_changed: Arc<Notify>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.delay_changed.notify_one();
    }
}

#[derive(Default)]
struct State {
    queue: VecDeque<String>,
    /// Keys that need processing (queued, or added again while processing).
    dirty: HashSet<String>,
    processing: HashSet<String>,
    failures: HashMap<String, u32>,
    /// Earliest pending delayed add per key.
    waiting: HashMap<String, Instant>,
    delayed: BinaryHeap<Reverse<(Instant, String)>>,
    bucket: Option<Bucket>,
    shutting_down: bool,
}

struct Bucket {
    tokens: f64,
    last: Instant,
}

impl WorkQueue {
    /// A new queue. Must be called inside a tokio runtime: it spawns the task that performs
    /// delayed adds (it ends on [`WorkQueue::shutdown`]).
    pub fn new(cfg: QueueConfig) -> WorkQueue {
        let delay_changed = Arc::new(Notify::new());
        let inner = Arc::new(Inner {
            cfg,
            state: Mutex::new(State::default()),
            ready: Notify::new(),
            delay_changed: delay_changed.clone(),
        });
        let weak = Arc::downgrade(&inner);
        tokio::spawn(async move {
            loop {
                let changed = delay_changed.notified();
                tokio::pin!(changed);
                // Register interest before looking, so no notification is missed.
                changed.as_mut().enable();
                let next = {
                    let Some(inner) = weak.upgrade() else { return };
                    let q = WorkQueue { inner };
                    if q.lock().shutting_down {
                        return;
                    }
                    q.fire_due()
                };
                match next {
                    Some(at) => {
                        tokio::select! {
                            _ = tokio::time::sleep_until(at) => {}
                            _ = &mut changed => {}
                        }
                    }
                    None => changed.await,
                }
            }
        });
        WorkQueue { inner }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().expect("work queue lock poisoned")
    }

    /// Moves due delayed keys into the queue; returns the next deadline.
    fn fire_due(&self) -> Option<Instant> {
        let now = Instant::now();
        let mut due = Vec::new();
        let next = {
            let mut st = self.lock();
            while let Some(Reverse((at, _))) = st.delayed.peek() {
                if *at > now {
                    break;
                }
                let Reverse((at, key)) = st.delayed.pop().expect("peeked entry exists");
                // Entries superseded by an earlier deadline are stale.
                if st.waiting.get(&key) == Some(&at) {
                    st.waiting.remove(&key);
                    due.push(key);
                }
            }
            st.delayed.peek().map(|Reverse((at, _))| *at)
        };
        for key in due {
            self.add(key);
        }
        next
    }

    /// Adds `key` now (deduplicated; re-run once after `done` if it is being processed).
    pub fn add(&self, key: impl Into<String>) {
        let key = key.into();
        let mut st = self.lock();
        if st.shutting_down || st.dirty.contains(&key) {
            return;
        }
        st.dirty.insert(key.clone());
        if st.processing.contains(&key) {
            return;
        }
        st.queue.push_back(key);
        drop(st);
        self.inner.ready.notify_one();
    }

    /// Adds `key` once `delay` has passed (at once for a zero delay). The earliest of several
    /// pending delayed adds wins.
    pub fn add_after(&self, key: impl Into<String>, delay: Duration) {
        let key = key.into();
        if delay.is_zero() {
            self.add(key);
            return;
        }
        let at = Instant::now() + delay;
        let mut st = self.lock();
        if st.shutting_down {
            return;
        }
        if let Some(existing) = st.waiting.get(&key) {
            if *existing <= at {
                return;
            }
        }
        st.waiting.insert(key.clone(), at);
        st.delayed.push(Reverse((at, key)));
        drop(st);
        self.inner.delay_changed.notify_one();
    }

    /// The delay the next [`WorkQueue::add_rate_limited`] of `key` would use, and advances the
    /// key's failure count and the token bucket as that call does.
    fn next_delay(&self, key: &str) -> Duration {
        let cfg = &self.inner.cfg;
        let mut st = self.lock();
        let n = st.failures.entry(key.to_string()).or_insert(0);
        let exp = (*n).min(63);
        *n = n.saturating_add(1);
        let secs = cfg.base_delay.as_secs_f64() * 2f64.powi(exp as i32);
        let backoff = if secs >= cfg.max_delay.as_secs_f64() {
            cfg.max_delay
        } else {
            Duration::from_secs_f64(secs)
        };
        let bucket_delay = if cfg.rate_per_sec > 0.0 {
            let now = Instant::now();
            let burst = f64::from(cfg.burst.max(1));
            let b = st.bucket.get_or_insert(Bucket {
                tokens: burst,
                last: now,
            });
            let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
            b.tokens = (b.tokens + elapsed * cfg.rate_per_sec).min(burst);
            b.last = now;
            b.tokens -= 1.0;
            if b.tokens >= 0.0 {
                Duration::ZERO
            } else {
                Duration::from_secs_f64(-b.tokens / cfg.rate_per_sec)
            }
        } else {
            Duration::ZERO
        };
        backoff.max(bucket_delay)
    }

    /// Adds `key` after its rate-limited delay (failure backoff); returns that delay.
    pub fn add_rate_limited(&self, key: impl Into<String>) -> Duration {
        let key = key.into();
        let delay = self.next_delay(&key);
        self.add_after(key, delay);
        delay
    }

    /// Like [`WorkQueue::add_rate_limited`] but never waits longer than `cap` (used when the
    /// runner is full: the retry should not sleep for the full failure backoff).
    pub fn add_rate_limited_capped(&self, key: impl Into<String>, cap: Duration) -> Duration {
        let key = key.into();
        let delay = self.next_delay(&key).min(cap);
        self.add_after(key, delay);
        delay
    }

    /// Resets the failure backoff of `key` (after a successful pass).
    pub fn forget(&self, key: &str) {
        self.lock().failures.remove(key);
    }

    /// How many consecutive failures `key` has had since the last `forget`.
    pub fn failures(&self, key: &str) -> u32 {
        self.lock().failures.get(key).copied().unwrap_or(0)
    }

    /// Waits for the next key and marks it as being processed. `None` after shutdown.
    pub async fn get(&self) -> Option<String> {
        loop {
            let notified = self.inner.ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut st = self.lock();
                if st.shutting_down {
                    return None;
                }
                if let Some(key) = st.queue.pop_front() {
                    st.dirty.remove(&key);
                    st.processing.insert(key.clone());
                    let more = !st.queue.is_empty();
                    drop(st);
                    if more {
                        // Pass the wake-up on: notify_one may have been consumed by us.
                        self.inner.ready.notify_one();
                    }
                    return Some(key);
                }
            }
            notified.await;
        }
    }

    /// Marks `key` as processed; if it was added meanwhile it is queued again.
    pub fn done(&self, key: &str) {
        let mut st = self.lock();
        st.processing.remove(key);
        if st.dirty.contains(key) && !st.shutting_down {
            st.queue.push_back(key.to_string());
            drop(st);
            self.inner.ready.notify_one();
        }
    }

    /// Stops handing out keys; waiting and future [`WorkQueue::get`] calls return `None`.
    pub fn shutdown(&self) {
        self.lock().shutting_down = true;
        self.inner.ready.notify_waiters();
        self.inner.delay_changed.notify_one();
    }

    /// Keys queued (not counting delayed or processing ones).
    pub fn len(&self) -> usize {
        self.lock().queue.len()
    }

    /// Whether nothing is queued (delayed and processing keys are not counted).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether nothing is queued, delayed or being processed.
    pub fn is_idle(&self) -> bool {
        let st = self.lock();
        st.queue.is_empty() && st.waiting.is_empty() && st.processing.is_empty()
    }

    /// Keys waiting for a delayed add, with their deadlines (diagnostics and tests).
    pub fn delayed_keys(&self) -> Vec<(String, Instant)> {
        let st = self.lock();
        let mut v: Vec<_> = st.waiting.iter().map(|(k, t)| (k.clone(), *t)).collect();
        v.sort();
        v
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn queue() -> WorkQueue {
        WorkQueue::new(QueueConfig {
            base_delay: Duration::from_millis(5),
            max_delay: Duration::from_secs(1),
            rate_per_sec: 0.0,
            burst: 100,
        })
    }

    async fn get_now(q: &WorkQueue) -> Option<String> {
        tokio::time::timeout(Duration::from_millis(1), q.get())
            .await
            .ok()
            .flatten()
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_added_twice_while_pending_is_handed_out_once() {
        let q = queue();
        q.add("a");
        q.add("a");
        q.add("b");
        assert_eq!(q.len(), 2);
        assert_eq!(get_now(&q).await.as_deref(), Some("a"));
        assert_eq!(get_now(&q).await.as_deref(), Some("b"));
        assert_eq!(get_now(&q).await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_added_while_processing_is_rerun_once_after_done() {
        let q = queue();
        q.add("a");
        let k = get_now(&q).await.unwrap();
        q.add("a");
        q.add("a");
        assert_eq!(
            get_now(&q).await,
            None,
            "never handed to a second worker while processing"
        );
        q.done(&k);
        assert_eq!(get_now(&q).await.as_deref(), Some("a"));
        q.done("a");
        assert_eq!(get_now(&q).await, None, "re-run exactly once");
        assert!(q.is_idle());
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limited_adds_back_off_exponentially_until_forgotten() {
        let q = queue();
        let delays: Vec<_> = (0..10).map(|_| q.add_rate_limited("k")).collect();
        let ms: Vec<u128> = delays.iter().map(|d| d.as_millis()).collect();
        assert_eq!(ms, vec![5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        assert_eq!(q.failures("k"), 10);
        q.forget("k");
        assert_eq!(q.add_rate_limited("k"), Duration::from_millis(5));
    }

    #[tokio::test(start_paused = true)]
    async fn plain_and_delayed_adds_do_not_advance_the_backoff() {
        let q = queue();
        q.add_rate_limited("k");
        q.add("k");
        q.add_after("k", Duration::from_millis(50));
        assert_eq!(q.failures("k"), 1);
        assert_eq!(q.add_rate_limited("k"), Duration::from_millis(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_delayed_add_arrives_after_its_delay_and_the_earliest_wins() {
        let q = queue();
        q.add_after("k", Duration::from_secs(10));
        q.add_after("k", Duration::from_secs(2));
        q.add_after("k", Duration::from_secs(5));
        assert_eq!(q.delayed_keys().len(), 1);
        let start = Instant::now();
        let k = q.get().await.unwrap();
        assert_eq!(k, "k");
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        q.done(&k);
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert_eq!(get_now(&q).await, None, "superseded deadlines do not fire");
    }

    #[tokio::test(start_paused = true)]
    async fn the_global_token_bucket_spreads_bursts() {
        let q = WorkQueue::new(QueueConfig {
            base_delay: Duration::from_millis(5),
            max_delay: Duration::from_secs(1000),
            rate_per_sec: 10.0,
            burst: 3,
        });
        let d: Vec<_> = (0..5)
            .map(|i| q.add_rate_limited(format!("k{i}")))
            .collect();
        assert_eq!(d[0], Duration::from_millis(5));
        assert_eq!(d[2], Duration::from_millis(5));
        assert_eq!(d[3], Duration::from_millis(100));
        assert_eq!(d[4], Duration::from_millis(200));
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_wakes_waiting_workers() {
        let q = queue();
        let q2 = q.clone();
        let waiter = tokio::spawn(async move { q2.get().await });
        tokio::task::yield_now().await;
        q.shutdown();
        assert_eq!(waiter.await.unwrap(), None);
        q.add("late");
        assert_eq!(get_now(&q).await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn many_workers_share_the_keys_without_overlap() {
        let q = queue();
        for i in 0..50 {
            q.add(format!("k{}", i % 10));
        }
        let active = Arc::new(Mutex::new(HashSet::new()));
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let q = q.clone();
            let active = active.clone();
            tasks.push(tokio::spawn(async move {
                let mut n = 0;
                while let Ok(Some(k)) =
                    tokio::time::timeout(Duration::from_millis(50), q.get()).await
                {
                    assert!(
                        active.lock().unwrap().insert(k.clone()),
                        "{k} processed twice"
                    );
                    tokio::time::sleep(Duration::from_millis(3)).await;
                    active.lock().unwrap().remove(&k);
                    q.done(&k);
                    n += 1;
                }
                n
            }));
        }
        let mut total = 0;
        for t in tasks {
            total += t.await.unwrap();
        }
        assert_eq!(total, 10);
    }
}
