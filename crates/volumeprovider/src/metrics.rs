//! Prometheus metrics (prometheus-client) and the HTTP endpoint (axum) serving them on
//! `--metrics-address` (`GET /metrics`, plus `GET /healthz`). Owns no other listener.
//!
//! Exported:
//! * `cephvol_rpc_requests_total{method,code}` and `cephvol_rpc_duration_seconds{method}` — every
//!   IRI and progress RPC, timed in the handler wrapper of `server`;
//! * `cephvol_runner_waiting`, `cephvol_runner_running` (gauges), `cephvol_runner_{accepted,
//!   deduplicated,rejected_busy,succeeded,failed,panicked,cancelled}_total` and the histogram
//!   `cephvol_runner_duration_seconds`, read from `runner.metrics()` at scrape time;
//! * `cephvol_controller_queue_length{controller}` and `cephvol_controller_queue_delayed{controller}`
//!   from the reconcilers' work queues;
//! * `cephvol_events_recorded_total`, `cephvol_events_dropped_total`, `cephvol_events_held`;
//! * `cephvol_leader`: 1 on the daemon holding the pool's leader lease, 0 on a standby;
//! * `cephvol_build_info{version}`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use runner::RunnerMetrics;
use tokio_util::sync::CancellationToken;

use crate::events::EventStore;

/// Labels of the RPC counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    /// RPC method name, e.g. `CreateVolume`.
    pub method: String,
    /// gRPC code name, e.g. `Ok`, `InvalidArgument`.
    pub code: String,
}

/// Labels of the RPC latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    /// RPC method name.
    pub method: String,
}

fn rpc_histogram() -> Histogram {
    // 0.5 ms … ~16 s
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// The daemon's metrics registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    rpc_requests: Family<RpcLabels, Counter>,
    rpc_duration: Family<MethodLabels, Histogram, fn() -> Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A registry with the RPC metrics and build info.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("cephvol");
        let rpc_requests = Family::<RpcLabels, Counter>::default();
        let rpc_duration =
            Family::<MethodLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                rpc_histogram,
            );
        registry.register(
            "rpc_requests",
            "IRI RPCs served, by method and gRPC code",
            rpc_requests.clone(),
        );
        registry.register(
            "rpc_duration_seconds",
            "IRI RPC latency, by method",
            rpc_duration.clone(),
        );
        registry.register(
            "build",
            "Build information",
            Info::new(vec![(
                "version".to_string(),
                env!("CARGO_PKG_VERSION").to_string(),
            )]),
        );
        Metrics {
            registry,
            rpc_requests,
            rpc_duration,
        }
    }

    /// Adds a collector read at scrape time (runner, events).
    pub fn register_collector(&mut self, collector: Box<dyn Collector>) {
        self.registry.register_collector(collector);
    }

    /// Records one RPC.
    pub fn observe_rpc(&self, method: &str, code: tonic::Code, elapsed: Duration) {
        self.rpc_requests
            .get_or_create(&RpcLabels {
                method: method.to_string(),
                code: format!("{code:?}"),
            })
            .inc();
        self.rpc_duration
            .get_or_create(&MethodLabels {
                method: method.to_string(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

fn counter(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: u64,
) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(v);
    let m = e.encode_descriptor(name, help, None, c.metric_type())?;
    c.encode(m)
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(v);
    let m = e.encode_descriptor(name, help, None, g.metric_type())?;
    g.encode(m)
}

/// Reads the runner's figures at scrape time.
pub struct RunnerCollector {
    read: Box<dyn Fn() -> RunnerMetrics + Send + Sync>,
}

impl std::fmt::Debug for RunnerCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RunnerCollector")
    }
}

impl RunnerCollector {
    /// A collector calling `read` on every scrape (normally `move || runner.metrics()`).
    pub fn new(read: impl Fn() -> RunnerMetrics + Send + Sync + 'static) -> RunnerCollector {
        RunnerCollector {
            read: Box::new(read),
        }
    }
}

impl Collector for RunnerCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let m = (self.read)();
        let to_i64 = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
        gauge(
            &mut e,
            "runner_waiting",
            "Long operations waiting for a slot",
            to_i64(m.waiting),
        )?;
        gauge(
            &mut e,
            "runner_running",
            "Long operations running",
            to_i64(m.running),
        )?;
        counter(&mut e, "runner_accepted", "Operations accepted", m.accepted)?;
        counter(
            &mut e,
            "runner_deduplicated",
            "Submissions of a key already queued or running",
            m.deduplicated,
        )?;
        counter(
            &mut e,
            "runner_rejected_busy",
            "Submissions rejected because the queue was full",
            m.rejected_busy,
        )?;
        counter(
            &mut e,
            "runner_succeeded",
            "Operations that succeeded",
            m.succeeded,
        )?;
        counter(
            &mut e,
            "runner_failed",
            "Operations that failed (panics included)",
            m.failed,
        )?;
        counter(
            &mut e,
            "runner_panicked",
            "Operations that panicked",
            m.panicked,
        )?;
        counter(
            &mut e,
            "runner_cancelled",
            "Operations cancelled",
            m.cancelled,
        )?;
        let buckets = histogram_buckets(&m.duration_buckets, m.duration_count);
        let desc = e.encode_descriptor(
            "runner_duration_seconds",
            "Run time of long operations",
            None,
            prometheus_client::metrics::MetricType::Histogram,
        )?;
        let mut desc = desc;
        desc.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            m.duration_sum.as_secs_f64(),
            m.duration_count,
            &buckets,
            None,
        )?;
        encode_classes(&mut e, &m.classes)
    }
}

/// The runner's cumulative duration buckets as `(upper bound in seconds, count)`, `+Inf` last.
fn histogram_buckets(counts: &[u64], total: u64) -> Vec<(f64, u64)> {
    runner::DURATION_BUCKETS
        .iter()
        .zip(counts.iter())
        .map(|(le, n)| (le.as_secs_f64(), *n))
        .chain(std::iter::once((f64::INFINITY, total)))
        .collect()
}

/// One per-class figure: metric name, help text, and how to read it from a class.
type ClassFigure<T> = (&'static str, &'static str, fn(&runner::ClassMetrics) -> T);

/// The label of the per-class runner figures.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabel {
    class: String,
}

/// The same figures per operation class (`populate`, `fill`, `flatten`): gauges, the outcome
/// counters and the run-time histogram, each labelled `class`.
fn encode_classes(
    e: &mut DescriptorEncoder,
    classes: &[runner::ClassMetrics],
) -> Result<(), std::fmt::Error> {
    use prometheus_client::metrics::MetricType;
    let to_i64 = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
    let gauges: [ClassFigure<usize>; 3] = [
        (
            "runner_class_waiting",
            "Long operations of the class waiting for a slot",
            |c| c.waiting,
        ),
        (
            "runner_class_running",
            "Long operations of the class running",
            |c| c.running,
        ),
        (
            "runner_class_reserved",
            "Running slots the class reserves",
            |c| c.reserved,
        ),
    ];
    for (name, help, read) in gauges {
        let mut desc = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
        for c in classes {
            let label = ClassLabel {
                class: c.name.clone(),
            };
            ConstGauge::new(to_i64(read(c))).encode(desc.encode_family(&label)?)?;
        }
    }
    let counters: [ClassFigure<u64>; 5] = [
        (
            "runner_class_accepted",
            "Operations of the class accepted",
            |c| c.accepted,
        ),
        (
            "runner_class_succeeded",
            "Operations of the class that succeeded",
            |c| c.succeeded,
        ),
        (
            "runner_class_failed",
            "Operations of the class that failed",
            |c| c.failed,
        ),
        (
            "runner_class_cancelled",
            "Operations of the class cancelled",
            |c| c.cancelled,
        ),
        (
            "runner_class_rejected_busy",
            "Submissions into the class rejected as busy",
            |c| c.rejected_busy,
        ),
    ];
    for (name, help, read) in counters {
        let mut desc = e.encode_descriptor(name, help, None, MetricType::Counter)?;
        for c in classes {
            let label = ClassLabel {
                class: c.name.clone(),
            };
            ConstCounter::new(read(c)).encode(desc.encode_family(&label)?)?;
        }
    }
    let mut desc = e.encode_descriptor(
        "runner_class_duration_seconds",
        "Run time of long operations of the class",
        None,
        MetricType::Histogram,
    )?;
    for c in classes {
        let buckets = histogram_buckets(&c.duration_buckets, c.duration_count);
        let label = ClassLabel {
            class: c.name.clone(),
        };
        desc.encode_family(&label)?
            .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                c.duration_sum.as_secs_f64(),
                c.duration_count,
                &buckets,
                None,
            )?;
    }
    Ok(())
}

/// Reads the reconcilers' work queues at scrape time.
pub struct QueueCollector(pub controllers::Probe);

impl std::fmt::Debug for QueueCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("QueueCollector")
    }
}

impl Collector for QueueCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let queues = [
            ("image", self.0.image_queue()),
            ("snapshot", self.0.snapshot_queue()),
        ];
        let mut desc = e.encode_descriptor(
            "controller_queue_length",
            "Object ids queued for a reconcile pass, by controller",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (name, q) in &queues {
            let labels = [("controller", *name)];
            ConstGauge::new(i64::try_from(q.len()).unwrap_or(i64::MAX))
                .encode(desc.encode_family(&labels)?)?;
        }
        let mut desc = e.encode_descriptor(
            "controller_queue_delayed",
            "Object ids waiting for a retry (backoff), by controller",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (name, q) in &queues {
            let labels = [("controller", *name)];
            let n = q.delayed_keys().len();
            ConstGauge::new(i64::try_from(n).unwrap_or(i64::MAX))
                .encode(desc.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// Reads the event store's figures at scrape time.
#[derive(Debug)]
pub struct EventsCollector(pub Arc<EventStore>);

impl Collector for EventsCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (recorded, dropped) = self.0.totals();
        counter(&mut e, "events_recorded", "Events recorded", recorded)?;
        counter(
            &mut e,
            "events_dropped",
            "Events overwritten or expired",
            dropped,
        )?;
        counter(
            &mut e,
            "events_repeated",
            "Events that repeated a held one and were counted in it instead of taking a slot",
            self.0.repeats(),
        )?;
        gauge(
            &mut e,
            "events_held",
            "Events held for ListEvents",
            i64::try_from(self.0.len()).unwrap_or(i64::MAX),
        )
    }
}

/// Reads at scrape time how many undecodable store records the lists have skipped, by
/// collection (`cephvol_store_skipped_records_total{collection="images"}`): a record that no
/// list can decode is hidden from ListVolumes, and this is where an operator sees it.
pub struct StoreCollector {
    read: Box<dyn Fn() -> [(&'static str, u64); 2] + Send + Sync>,
}

impl StoreCollector {
    /// A collector over the image and snapshot stores.
    pub fn new(
        images: store::Store<store::Image>,
        snapshots: store::Store<store::Snapshot>,
    ) -> Self {
        StoreCollector {
            read: Box::new(move || {
                [
                    ("images", images.skipped_records()),
                    ("snapshots", snapshots.skipped_records()),
                ]
            }),
        }
    }
}

impl std::fmt::Debug for StoreCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreCollector")
    }
}

impl Collector for StoreCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut desc = e.encode_descriptor(
            "store_skipped_records",
            "Undecodable store records skipped by lists (once per list), by collection",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (collection, n) in (self.read)() {
            ConstCounter::new(n).encode(desc.encode_family(&[("collection", collection)])?)?;
        }
        Ok(())
    }
}

/// Reads whether this daemon leads its pool at scrape time: `cephvol_leader` is 1 on the leader
/// (the daemon that reconciles and runs long operations) and 0 on a standby.
pub struct LeaderCollector {
    read: Box<dyn Fn() -> bool + Send + Sync>,
}

impl std::fmt::Debug for LeaderCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LeaderCollector")
    }
}

impl LeaderCollector {
    /// A collector calling `is_leader` on every scrape.
    pub fn new(is_leader: impl Fn() -> bool + Send + Sync + 'static) -> LeaderCollector {
        LeaderCollector {
            read: Box::new(is_leader),
        }
    }
}

impl Collector for LeaderCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        gauge(
            &mut e,
            "leader",
            "Whether this daemon holds the pool's leader lease and reconciles (0: standby)",
            i64::from((self.read)()),
        )
    }
}

/// Content type of `GET /metrics`.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The endpoint's routes: `GET /metrics`, `GET /healthz`; `404` for other paths, `405` for other
/// methods.
pub fn router(metrics: Arc<Metrics>) -> axum::Router {
    use axum::http::{header, Method, StatusCode};
    use axum::routing::get;
    let not_found = |method: Method| async move {
        if method == Method::GET {
            (StatusCode::NOT_FOUND, "not found\n")
        } else {
            (StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
        }
    };
    axum::Router::new()
        .route(
            "/metrics",
            get(move || async move {
                (
                    [(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)],
                    metrics.encode(),
                )
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .fallback(not_found)
}

/// Serves [`router`] on `listener` until `shutdown` is cancelled (requests in flight finish).
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let served = axum::serve(listener, router(metrics))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await;
    if let Err(e) = served {
        tracing::warn!(error = %e, "metrics endpoint failed");
    }
}

/// Binds the metrics endpoint (fails start-up early when the address is taken).
pub async fn bind(addr: SocketAddr) -> crate::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| crate::Error::io(format!("binding --metrics-address {addr}"), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn rpc_observations_are_exported() {
        let m = Metrics::new();
        m.observe_rpc("CreateVolume", tonic::Code::Ok, Duration::from_millis(3));
        m.observe_rpc(
            "CreateVolume",
            tonic::Code::InvalidArgument,
            Duration::from_millis(1),
        );
        let text = m.encode();
        assert!(
            text.contains(r#"cephvol_rpc_requests_total{method="CreateVolume",code="Ok"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"code="InvalidArgument""#), "{text}");
        assert!(
            text.contains(r#"cephvol_rpc_duration_seconds_count{method="CreateVolume"} 2"#),
            "{text}"
        );
        assert!(text.contains("cephvol_build_info"), "{text}");
    }

    #[test]
    fn runner_and_event_figures_are_read_at_scrape_time() {
        let mut m = Metrics::new();
        m.register_collector(Box::new(RunnerCollector::new(RunnerMetrics::default)));
        let events = Arc::new(EventStore::new(10, Duration::from_secs(60)));
        m.register_collector(Box::new(EventsCollector(events)));
        let text = m.encode();
        assert!(text.contains("cephvol_runner_waiting 0"), "{text}");
        assert!(text.contains("cephvol_runner_failed_total 0"), "{text}");
        assert!(
            text.contains(r#"cephvol_runner_duration_seconds_bucket{le="+Inf"} 0"#),
            "{text}"
        );
        assert!(text.contains("cephvol_events_held 0"), "{text}");
        assert!(text.contains("cephvol_events_repeated_total 0"), "{text}");
    }

    #[tokio::test]
    async fn skipped_store_records_are_counted_by_collection() {
        let backend: Arc<dyn store::Backend> = Arc::new(store::MemoryBackend::default());
        let images = store::Store::<store::Image>::open(Arc::clone(&backend))
            .await
            .expect("open");
        let snapshots = store::Store::<store::Snapshot>::open(Arc::clone(&backend))
            .await
            .expect("open");
        backend
            .put(
                "ironcore.csi.volumes",
                "0bad",
                b"{\"metadata\": 42".to_vec(),
                store::Precondition::None,
            )
            .await
            .expect("put");
        images
            .list(&store::ListOptions::default())
            .await
            .expect("list");
        let mut m = Metrics::new();
        m.register_collector(Box::new(StoreCollector::new(images, snapshots)));
        let text = m.encode();
        assert!(
            text.contains(r#"cephvol_store_skipped_records_total{collection="images"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"cephvol_store_skipped_records_total{collection="snapshots"} 0"#),
            "{text}"
        );
    }

    #[test]
    fn the_leader_gauge_follows_the_role_at_scrape_time() {
        let leading = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut m = Metrics::new();
        let l = Arc::clone(&leading);
        m.register_collector(Box::new(LeaderCollector::new(move || {
            l.load(std::sync::atomic::Ordering::SeqCst)
        })));
        assert!(m.encode().contains("cephvol_leader 0"));
        leading.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(m.encode().contains("cephvol_leader 1"));
    }

    #[tokio::test]
    async fn every_runner_class_has_its_own_figures() {
        let runner = runner::Runner::new(runner::RunnerConfig {
            max_running: 10,
            classes: vec![
                runner::ClassConfig::new("populate", 5),
                runner::ClassConfig::new("fill", 3),
                runner::ClassConfig::new("flatten", 2),
            ],
            ..Default::default()
        });
        let answer = runner.try_submit_in("flatten", "image:1", |_| async { Ok(()) });
        assert_eq!(answer, Ok(runner::Submitted::Accepted));
        runner
            .shutdown(runner::ShutdownMode::Drain {
                deadline: Duration::from_secs(5),
            })
            .await;
        let mut m = Metrics::new();
        let r = runner.clone();
        m.register_collector(Box::new(RunnerCollector::new(move || r.metrics())));
        let text = m.encode();
        for (class, reserved) in [("populate", 5), ("fill", 3), ("flatten", 2)] {
            assert!(
                text.contains(&format!(
                    "cephvol_runner_class_reserved{{class=\"{class}\"}} {reserved}"
                )),
                "{text}"
            );
        }
        assert!(
            text.contains(r#"cephvol_runner_class_succeeded_total{class="flatten"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"cephvol_runner_class_succeeded_total{class="populate"} 0"#),
            "{text}"
        );
        assert!(
            text.contains(r#"cephvol_runner_class_duration_seconds_count{class="flatten"} 1"#),
            "{text}"
        );
    }

    #[tokio::test]
    async fn the_endpoint_answers_metrics_and_healthz() {
        let listener = bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let token = CancellationToken::new();
        let task = tokio::spawn(serve(listener, Arc::new(Metrics::new()), token.clone()));
        for (path, want) in [
            ("/metrics", "200 OK"),
            ("/healthz", "200 OK"),
            ("/nope", "404"),
        ] {
            let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            s.write_all(request.as_bytes()).await.expect("write");
            let mut out = String::new();
            s.read_to_string(&mut out).await.expect("read");
            assert!(
                out.starts_with(&format!("HTTP/1.1 {want}")),
                "{path}: {out}"
            );
        }
        token.cancel();
        task.await.expect("stops");
    }

    #[tokio::test]
    async fn an_http_client_scrapes_openmetrics_text_and_other_paths_are_not_found() {
        let listener = bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let metrics = Arc::new(Metrics::new());
        metrics.observe_rpc("Version", tonic::Code::Ok, Duration::from_millis(1));
        let token = CancellationToken::new();
        let task = tokio::spawn(serve(listener, metrics, token.clone()));
        let http = reqwest::Client::new();

        let resp = http
            .get(format!("http://{addr}/metrics"))
            .send()
            .await
            .expect("GET /metrics");
        assert_eq!(resp.status(), reqwest::StatusCode::OK);
        assert_eq!(
            resp.headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
            Some(OPENMETRICS_CONTENT_TYPE)
        );
        let text = resp.text().await.expect("body");
        assert!(
            text.contains(r#"cephvol_rpc_requests_total{method="Version",code="Ok"} 1"#),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");

        let healthz = http
            .get(format!("http://{addr}/healthz"))
            .send()
            .await
            .expect("GET /healthz");
        assert_eq!(healthz.status(), reqwest::StatusCode::OK);
        assert_eq!(healthz.text().await.expect("body"), "ok\n");

        let missing = http
            .get(format!("http://{addr}/nope"))
            .send()
            .await
            .expect("GET /nope");
        assert_eq!(missing.status(), reqwest::StatusCode::NOT_FOUND);
        let post = http
            .post(format!("http://{addr}/metrics"))
            .send()
            .await
            .expect("POST /metrics");
        assert_eq!(post.status(), reqwest::StatusCode::METHOD_NOT_ALLOWED);

        token.cancel();
        task.await.expect("stops");
    }
}
