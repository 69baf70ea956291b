//! Prometheus metrics: what the server counts itself, and what the cluster
//! layer counts, rendered as one Prometheus text exposition (format 0.0.4).
//!
//! * HTTP and outcome counters live in a `prometheus_client` `Registry` owned
//!   by `Metrics`; handlers call `observe_request` and `observe_outcome`.
//! * Cluster figures are read at scrape time (`cluster::Node::stats`,
//!   `status`, `live_holds`) into a `ClusterSnapshot` and encoded by a
//!   collector. The cluster keeps its histograms as power-of-two buckets
//!   (`engine::histogram`); `classic_buckets` turns them into Prometheus
//!   buckets. Every bound is a power of two, so the counts at the bounds we
//!   publish are exact.
//! * `extra` gauges let the server add figures of its own parts (event hub,
//!   alert sinks) without this module knowing them.
//! * `prometheus_client` writes OpenMetrics text; `/metrics` is served as the
//!   classic Prometheus text format, which names a counter family with its
//!   `_total` and has no `# UNIT` or `# EOF` lines. `to_prometheus_text`
//!   makes that small rewrite, so every family keeps its type in Prometheus.
//!
//! Label cardinality is bounded: `route` must be a route template (the
//! matched path, never the raw one), methods outside the standard set become
//! `other`, and past `REQUEST_SERIES_MAX` (`OUTCOME_SERIES_MAX`) label sets
//! new ones are folded into `route="other"` / `code="other"`.

use std::ops::RangeInclusive;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cluster::{ClusterStatus, Node, NodeId, NodeStats, SnapshotStats};
use engine::histogram::{LOG2_BUCKETS, Log2Buckets, log2_bucket_bound};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::encode_registry;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// The content type of `render`'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Distinct `tally_http_requests_total` label sets before new ones fold
/// into `route="other", code="other"`.
pub const REQUEST_SERIES_MAX: usize = 1_000;
/// Distinct `tally_outcomes_total` codes before new ones fold into "other".
pub const OUTCOME_SERIES_MAX: usize = 128;
/// Longer route or code label values are cut (at a character boundary).
pub const LABEL_VALUE_LEN_MAX: usize = 128;
/// How long a scrape waits for the shard actors to count live holds; a
/// scrape must not hang on a shard that is busy applying a burst.
pub const LIVE_HOLDS_TIMEOUT: Duration = Duration::from_millis(500);

/// The label value that takes every label set past a series limit.
const OVERFLOW: &str = "other";

/// HTTP latency bounds in seconds: 100 µs (a stale read on loopback) to
/// 10 s (past any request timeout).
const REQUEST_DURATION_BOUNDS_S: [f64; 16] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: String,
    status: u16,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    code: String,
}

/// Why the HTTP port closed a connection itself.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClosedLabels {
    pub reason: CloseReason,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum CloseReason {
    /// No whole request head within `server.header_read_timeout_ms`.
    header_timeout,
    /// Silent between requests for `server.keep_alive_timeout_ms`.
    idle_timeout,
    /// The TLS handshake failed or took longer than the header timeout.
    tls_handshake,
}

/// The HTTP port's connection figures (`crate::http`).
#[derive(Debug, Default)]
pub struct ConnectionMetrics {
    pub accepted: Counter,
    pub refused: Counter,
    pub open: Gauge,
    pub closed: Family<ClosedLabels, Counter>,
}

fn request_duration_histogram() -> Histogram {
    Histogram::new(REQUEST_DURATION_BOUNDS_S)
}

/// The server's metrics. Share one (`Arc`) between handlers and the
/// `/metrics` route; observing takes no lock beyond the family's read lock
/// once a label set exists.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    outcomes: Family<OutcomeLabels, Counter>,
    pub connections: Arc<ConnectionMetrics>,
    /// Label sets created so far, against the limits above.
    request_series: AtomicUsize,
    outcome_series: AtomicUsize,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let request_duration = Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            request_duration_histogram as fn() -> Histogram,
        );
        let outcomes = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "tally_http_requests",
            "HTTP requests answered, by route template, method, status and problem code (\"ok\" on success).",
            requests.clone(),
        );
        registry.register_with_unit(
            "tally_http_request_duration",
            "Time from request to response, by route template and method.",
            Unit::Seconds,
            request_duration.clone(),
        );
        registry.register(
            "tally_outcomes",
            "Engine outcomes of submitted commands, by code (accepted, or the refusal).",
            outcomes.clone(),
        );
        let connections = Arc::new(ConnectionMetrics::default());
        registry.register(
            "tally_http_connections_accepted",
            "HTTP connections accepted and served (under server.connections_max).",
            connections.accepted.clone(),
        );
        registry.register(
            "tally_http_connections_refused",
            "HTTP connections over server.connections_max: accepted and closed at once, nothing read.",
            connections.refused.clone(),
        );
        registry.register("tally_http_connections_open", "HTTP connections open now.", connections.open.clone());
        registry.register(
            "tally_http_connections_closed",
            "HTTP connections the server closed itself, by reason: header_timeout (no whole request head in \
             server.header_read_timeout_ms), idle_timeout (silent for server.keep_alive_timeout_ms between \
             requests), tls_handshake (failed or too slow).",
            connections.closed.clone(),
        );
        Self {
            registry,
            requests,
            request_duration,
            outcomes,
            connections,
            request_series: AtomicUsize::new(0),
            outcome_series: AtomicUsize::new(0),
        }
    }

    /// Counts one answered request. `route` is the route template (e.g.
    /// `/v1/items/{sku}`), `code` the problem code or `"ok"`.
    pub fn observe_request(&self, route: &str, method: &str, status: u16, code: &str, elapsed: Duration) {
        let mut labels = RequestLabels {
            route: label_value(route),
            method: method_label(method).to_owned(),
            status,
            code: label_value(code),
        };
        if self.requests.get(&labels).is_none() && !take_series(&self.request_series, REQUEST_SERIES_MAX) {
            labels.route = OVERFLOW.to_owned();
            labels.code = OVERFLOW.to_owned();
        }
        self.requests.get_or_create(&labels).inc();
        // (route, method) has no more values than the full label set, so
        // the duration family is bounded by the same limit.
        let route = RouteLabels { route: labels.route, method: labels.method };
        self.request_duration.get_or_create(&route).observe(elapsed.as_secs_f64());
    }

    /// Counts one engine outcome by its code.
    pub fn observe_outcome(&self, code: &str) {
        let mut labels = OutcomeLabels { code: label_value(code) };
        if self.outcomes.get(&labels).is_none() && !take_series(&self.outcome_series, OUTCOME_SERIES_MAX) {
            labels.code = OVERFLOW.to_owned();
        }
        self.outcomes.get_or_create(&labels).inc();
    }

    /// The whole exposition: this registry, the node's figures, and
    /// `extra` as gauges `(name, help, value)`. Extra names that are not
    /// valid metric names are left out (and logged).
    pub async fn render(&self, node: &Node, extra: &[(&str, &str, u64)]) -> String {
        let snapshot = ClusterSnapshot::of(node).await;
        self.render_snapshot(&snapshot, extra)
    }

    /// `render`, from figures already read: no node needed.
    pub fn render_snapshot(&self, cluster: &ClusterSnapshot, extra: &[(&str, &str, u64)]) -> String {
        let mut extra_gauges = Vec::with_capacity(extra.len());
        for (name, help, value) in extra {
            if is_metric_name(name) {
                extra_gauges.push(((*name).to_owned(), help_text(help), *value));
            } else {
                tracing::warn!(name, "extra metric left out: not a valid metric name");
            }
        }
        let mut scrape = Registry::default();
        scrape.register_collector(Box::new(ClusterCollector { cluster: cluster.clone(), extra: extra_gauges }));

        let mut openmetrics = String::with_capacity(16 * 1024);
        let encoded =
            encode_registry(&mut openmetrics, &self.registry).and_then(|()| encode_registry(&mut openmetrics, &scrape));
        if encoded.is_err() {
            // Writing to a String cannot fail; an encoder error means a
            // metric refused to encode. Serve what was written rather than
            // nothing, and say so.
            tracing::error!("metrics exposition is incomplete: an encoder failed");
        }
        to_prometheus_text(&openmetrics)
    }
}

/// The node's figures at one scrape.
#[derive(Clone, Debug)]
pub struct ClusterSnapshot {
    pub node_id: NodeId,
    pub stats: NodeStats,
    pub status: ClusterStatus,
    /// `None` when a shard did not answer within `LIVE_HOLDS_TIMEOUT`; the
    /// gauge is then left out rather than reported wrong.
    pub live_holds: Option<u64>,
    /// Per shard: snapshots built, fallbacks to the actor, last build time.
    pub snapshots: Vec<SnapshotStats>,
    /// Per shard: this node's wall clock minus the shard's log time, in ms.
    pub log_time_behind_wall_ms: Vec<i64>,
    /// The last or running node addition or removal this node ran.
    pub membership: Option<cluster::node::MembershipChange>,
}

impl ClusterSnapshot {
    pub async fn of(node: &Node) -> Self {
        let live_holds = node.live_holds(LIVE_HOLDS_TIMEOUT).await;
        if live_holds.is_none() {
            tracing::debug!("live holds not counted: a shard did not answer in time");
        }
        Self {
            node_id: node.id(),
            stats: node.stats(),
            status: node.status(),
            live_holds,
            snapshots: node.snapshot_stats(),
            log_time_behind_wall_ms: node.clock().behind_wall_ms(),
            membership: node.membership_change(),
        }
    }
}

/// Claims one more label set under `max`; false when the limit is reached.
/// Two requests racing on the same new label set may both claim one: the
/// limit is approximate by that much, never unbounded.
fn take_series(created: &AtomicUsize, max: usize) -> bool {
    created.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| (n < max).then_some(n + 1)).is_ok()
}

fn label_value(value: &str) -> String {
    if value.len() <= LABEL_VALUE_LEN_MAX {
        return value.to_owned();
    }
    let mut end = LABEL_VALUE_LEN_MAX;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    value[..end].to_owned()
}

fn method_label(method: &str) -> &'static str {
    METHODS.iter().find(|known| known.eq_ignore_ascii_case(method)).copied().unwrap_or(OVERFLOW)
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`, the Prometheus metric name syntax.
fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|first| first.is_ascii_alphabetic() || first == '_' || first == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// HELP text is written as is by the encoder: escape what would break the
/// line (the text format escapes backslash and newline in HELP).
fn help_text(help: &str) -> String {
    let mut text = String::with_capacity(help.len());
    for c in help.chars() {
        match c {
            '\\' => text.push_str("\\\\"),
            '\n' => text.push_str("\\n"),
            '\r' => text.push(' '),
            c => text.push(c),
        }
    }
    text
}

/// Rewrites `prometheus_client`'s OpenMetrics text as Prometheus text 0.0.4.
/// The encoder writes each family as `# HELP`, `# TYPE`, an optional
/// `# UNIT`, then its samples, and ends with `# EOF`; samples and label
/// escapes are the same in both formats. What differs: a counter family is
/// named without `_total` in OpenMetrics and with it in 0.0.4 (else
/// Prometheus would not match its samples to their type), OpenMetrics'
/// `unknown` is 0.0.4's `untyped`, and 0.0.4 has no `# UNIT` or `# EOF`.
fn to_prometheus_text(openmetrics: &str) -> String {
    let mut text = String::with_capacity(openmetrics.len());
    let mut help: Option<&str> = None;
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            // Held until the TYPE line says whether the name changes.
            help = Some(rest.split_once(' ').map_or("", |(_, help)| help));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let (suffix, kind) = match kind {
                "counter" => ("_total", "counter"),
                "unknown" => ("", "untyped"),
                kind => ("", kind),
            };
            if let Some(help) = help.take() {
                for part in ["# HELP ", name, suffix, " ", help, "\n"] {
                    text.push_str(part);
                }
            }
            for part in ["# TYPE ", name, suffix, " ", kind, "\n"] {
                text.push_str(part);
            }
            continue;
        }
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        text.push_str(line);
        text.push('\n');
    }
    debug_assert!(help.is_none(), "a HELP line without its TYPE");
    text
}

/// Prometheus buckets from power-of-two buckets, for the encoder (which
/// takes per-bucket counts and accumulates them): one bucket per bound
/// `2^first ..= 2^last` (in recorded units, times `scale` for the published
/// unit), then +Inf. The first bucket takes every value at or below its
/// bound, +Inf every value above `2^last`, so the counts add up to the
/// histogram's count. `last` must be below the overflow bucket.
pub fn classic_buckets(buckets: &Log2Buckets, exponents: RangeInclusive<usize>, scale: f64) -> Vec<(f64, u64)> {
    let (first, last) = (*exponents.start(), *exponents.end());
    debug_assert!(first <= last && last < LOG2_BUCKETS - 1, "bounds 2^{first}..=2^{last} out of range");
    let last = last.min(LOG2_BUCKETS - 2);
    let first = first.min(last);
    let mut classic = Vec::with_capacity(last - first + 2);
    for bucket in first..=last {
        let bound = log2_bucket_bound(bucket).unwrap_or(u64::MAX) as f64 * scale;
        let count = if bucket == first { buckets.counts[..=first].iter().sum() } else { buckets.counts[bucket] };
        classic.push((bound, count));
    }
    classic.push((f64::INFINITY, buckets.counts[last + 1..].iter().sum()));
    debug_assert_eq!(classic.iter().map(|(_, count)| count).sum::<u64>(), buckets.count());
    classic
}

/// How one cluster histogram is published.
struct Log2Export {
    name: &'static str,
    help: &'static str,
    /// Published bounds: 2^first ..= 2^last recorded units.
    exponents: RangeInclusive<usize>,
    /// Recorded unit to published unit (µs → s is 1e-6).
    scale: f64,
    seconds: bool,
}

/// Commands per entry; batch_size_max defaults to 1024, so 1 ..= 4096.
const BATCH_SIZE: Log2Export = Log2Export {
    name: "tally_proposer_batch_size",
    help: "Commands per log entry proposed by this node's shard leaders.",
    exponents: 0..=12,
    scale: 1.0,
    seconds: false,
};
/// 64 µs ..= 16.8 s.
const COMMIT_LATENCY: Log2Export = Log2Export {
    name: "tally_commit_latency",
    help: "Time from proposing a log entry to its outcomes (fsynced on a majority and applied), per entry.",
    exponents: 6..=24,
    scale: 1e-6,
    seconds: true,
};
/// 16 µs ..= 4.2 s.
const FSYNC_LATENCY: Log2Export = Log2Export {
    name: "tally_fsync_latency",
    help: "Duration of each WAL sync round (one fdatasync covers many appends).",
    exponents: 4..=22,
    scale: 1e-6,
    seconds: true,
};
/// 1 ms ..= 65.5 s.
const EXPIRY_LAG: Log2Export = Log2Export {
    name: "tally_expiry_lag",
    help: "Per expired hold: leader clock when its expiry was applied minus its deadline.",
    exponents: 0..=16,
    scale: 1e-3,
    seconds: true,
};

/// Encodes one scrape's cluster figures and extra gauges.
#[derive(Debug)]
struct ClusterCollector {
    cluster: ClusterSnapshot,
    extra: Vec<(String, String, u64)>,
}

impl ClusterCollector {
    fn histogram(
        encoder: &mut DescriptorEncoder,
        export: &Log2Export,
        buckets: &Log2Buckets,
    ) -> Result<(), std::fmt::Error> {
        let unit = export.seconds.then_some(Unit::Seconds);
        let mut metric = encoder.encode_descriptor(export.name, export.help, unit.as_ref(), MetricType::Histogram)?;
        let classic = classic_buckets(buckets, export.exponents.clone(), export.scale);
        metric.encode_histogram::<NoLabelSet>(buckets.sum as f64 * export.scale, buckets.count(), &classic, None)
    }

    /// A gauge with one sample per `(shard, value)`.
    fn shard_gauge(
        encoder: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        samples: impl Iterator<Item = (u32, u64)>,
    ) -> Result<(), std::fmt::Error> {
        let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
        for (shard, value) in samples {
            metric.encode_family(&[("shard", shard)])?.encode_gauge(&value)?;
        }
        Ok(())
    }
}

impl ClusterCollector {
    /// The proposer's and the WAL's histograms and counters.
    fn encode_write_path(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = &self.cluster.stats;
        Self::histogram(encoder, &BATCH_SIZE, &stats.batch_size)?;
        Self::histogram(encoder, &COMMIT_LATENCY, &stats.commit_latency_us)?;
        Self::histogram(encoder, &FSYNC_LATENCY, &stats.fsync_latency_us)?;
        Self::histogram(encoder, &EXPIRY_LAG, &stats.expiry_lag_ms)?;

        let ticks = ConstCounter::new(stats.ticks_proposed);
        let metric = encoder.encode_descriptor(
            "tally_proposer_ticks",
            "Tick entries proposed to expire holds when no other entry flowed.",
            None,
            ticks.metric_type(),
        )?;
        ticks.encode(metric)?;

        let off_thread = ConstCounter::new(stats.write_path_off_thread);
        let metric = encoder.encode_descriptor(
            "tally_write_path_off_thread",
            "Write-path stages (propose, append, apply, answer) that ran off their shard's thread; 0 while each \
             write crosses at most four threads (handler, shard, WAL flusher, shard, handler).",
            None,
            off_thread.metric_type(),
        )?;
        off_thread.encode(metric)?;

        for (name, help, value) in [
            (
                "tally_wal_entries_encoded",
                "Log entries encoded by this node's WAL appends (entries it wrote as leader; encoded once).",
                stats.wal_entries_encoded,
            ),
            (
                "tally_wal_entries_verbatim",
                "Log entries appended as the leader's WAL frames, byte for byte (entries this node replicated).",
                stats.wal_entries_verbatim,
            ),
            (
                "tally_wal_entries_read_memory",
                "Log entries read back to apply or replicate from the WAL's in-memory tail (no disk, no decode).",
                stats.wal_entries_read_from_memory,
            ),
            (
                "tally_wal_entries_read_disk",
                "Log entries read back from WAL segment files and decoded (a follower far behind, recovery).",
                stats.wal_entries_read_from_disk,
            ),
        ] {
            let counter = ConstCounter::new(value);
            let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(metric)?;
        }

        Ok(())
    }

    /// The peer port's refusals and the snapshot transfers it carries.
    fn encode_peer(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = &self.cluster.stats;
        // The peer port (docs/SECURITY.md): refusals an operator should see.
        let peer = &stats.peer;
        for (name, help, value) in [
            (
                "tally_peer_handshakes_refused",
                "Incoming peer connections refused during the handshake: a wrong or missing proof of the cluster \
                 secret, a node id this node does not know, a malformed hello, or no handshake in time.",
                peer.handshakes_refused,
            ),
            (
                "tally_peer_connections_refused",
                "Incoming peer connections closed at once because peer_connections_incoming_max were open.",
                peer.connections_refused,
            ),
            (
                "tally_peer_connections_idle_closed",
                "Incoming peer connections closed after peer_idle_timeout_ms with nothing received and no request \
                 running (the peer reconnects when it next calls).",
                peer.idle_closed,
            ),
            (
                "tally_snapshot_transfers_inbound_dropped",
                "Snapshot transfers from leaders dropped or refused before completion: abandoned for \
                 snapshot_transfer_idle_timeout_ms, replaced, evicted for bytes, beyond \
                 snapshot_transfers_per_peer_max, or out of order.",
                stats.snapshot_transfers_dropped,
            ),
        ] {
            let counter = ConstCounter::new(value);
            let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(metric)?;
        }
        for (name, help, value) in [
            (
                "tally_snapshot_transfers_inbound",
                "Snapshot transfers from leaders in progress on this node (at most snapshot_transfers_per_peer_max \
                 per peer).",
                stats.snapshot_transfers_inbound,
            ),
            (
                "tally_snapshot_inbound_bytes",
                "Bytes of snapshots being received, over all transfers (at most snapshot_bytes_max).",
                stats.snapshot_inbound_bytes,
            ),
        ] {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            metric.encode_gauge(&value)?;
        }

        Ok(())
    }

    /// Live holds and each shard's leader, applied and committed index.
    fn encode_shards(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some(live_holds) = self.cluster.live_holds {
            let mut metric = encoder.encode_descriptor(
                "tally_live_holds",
                "Live holds in this node's copy of every shard (every replica reports the same).",
                None,
                MetricType::Gauge,
            )?;
            metric.encode_gauge(&live_holds)?;
        }

        let shards = &self.cluster.status.shards;
        let node_id = self.cluster.node_id;
        Self::shard_gauge(
            encoder,
            "tally_shard_leader",
            "1 if this node leads the shard's Raft group, else 0.",
            shards.iter().map(|s| (s.shard, u64::from(s.leader == Some(node_id)))),
        )?;
        Self::shard_gauge(
            encoder,
            "tally_shard_applied_index",
            "Last log index this node applied to the shard.",
            shards.iter().map(|s| (s.shard, s.applied_index.unwrap_or(0))),
        )?;
        Self::shard_gauge(
            encoder,
            "tally_shard_commit_index",
            "Last log index this node knows committed for the shard.",
            shards.iter().map(|s| (s.shard, s.committed_index.unwrap_or(0))),
        )?;
        Ok(())
    }

    /// Each shard's snapshots, log time and full state checks.
    fn encode_snapshots(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snapshots = &self.cluster.snapshots;
        let mut metric = encoder.encode_descriptor(
            "tally_shard_snapshots_built",
            "Snapshots this node built of the shard since it started, from the shadow replica or by the actor \
             (snapshots received from a leader are not counted).",
            None,
            MetricType::Counter,
        )?;
        for stats in snapshots {
            ConstCounter::new(stats.built).encode(metric.encode_family(&[("shard", stats.shard)])?)?;
        }
        let mut metric = encoder.encode_descriptor(
            "tally_shard_snapshot_fallbacks",
            "Snapshots the shadow replica could not build (the log did not reach it), built by the shard actor \
             instead, which pauses the shard's writes while it serialises.",
            None,
            MetricType::Counter,
        )?;
        for stats in snapshots {
            ConstCounter::new(stats.fallbacks).encode(metric.encode_family(&[("shard", stats.shard)])?)?;
        }
        let mut metric = encoder.encode_descriptor(
            "tally_shard_snapshots_installed",
            "Snapshots of the shard received from its leader and installed (a follower too far behind the log).",
            None,
            MetricType::Counter,
        )?;
        for stats in snapshots {
            ConstCounter::new(stats.installed).encode(metric.encode_family(&[("shard", stats.shard)])?)?;
        }
        let mut metric = encoder.encode_descriptor(
            "tally_shard_snapshot_last_build",
            "How long the shard's last snapshot build took, start to durable file (0 before the first).",
            Some(&Unit::Seconds),
            MetricType::Gauge,
        )?;
        for stats in snapshots {
            let seconds = stats.last_build_us as f64 * 1e-6;
            metric.encode_family(&[("shard", stats.shard)])?.encode_gauge(&seconds)?;
        }

        let mut metric = encoder.encode_descriptor(
            "tally_shard_log_time_behind_wall",
            "This node's wall clock minus the shard's log time (negative: ahead). Log time never runs ahead of \
             real time, so it falls behind by each election's replication delay, and by a whole cluster's \
             downtime until the shard is first idle under a restarted leader.",
            Some(&Unit::Seconds),
            MetricType::Gauge,
        )?;
        for (shard, behind_ms) in self.cluster.log_time_behind_wall_ms.iter().enumerate() {
            let seconds = *behind_ms as f64 * 1e-3;
            metric.encode_family(&[("shard", shard.to_string())])?.encode_gauge(&seconds)?;
        }

        let mut metric = encoder.encode_descriptor(
            "tally_shard_invariant_checks",
            "Full state checks (every rule of the shard's state) run on a snapshot this node built, off the \
             shard thread.",
            None,
            MetricType::Counter,
        )?;
        for stats in snapshots {
            ConstCounter::new(stats.invariant_checks).encode(metric.encode_family(&[("shard", stats.shard)])?)?;
        }
        let mut metric = encoder.encode_descriptor(
            "tally_shard_invariant_failures",
            "Full state checks that found a broken rule; each stopped the shard on this node (see \
             tally_shard_stopped).",
            None,
            MetricType::Counter,
        )?;
        for stats in snapshots {
            ConstCounter::new(stats.invariant_failures).encode(metric.encode_family(&[("shard", stats.shard)])?)?;
        }

        Ok(())
    }

    /// Stopped shards, follower lag, and the extra gauges.
    fn encode_health(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let shards = &self.cluster.status.shards;
        let node_id = self.cluster.node_id;
        let stopped: Vec<&cluster::ShardFailure> = shards.iter().filter_map(|s| s.failure.as_ref()).collect();
        let mut metric = encoder.encode_descriptor(
            "tally_shards_stopped",
            "Shards stopped on this node (storage failure or broken invariant) until a restart; 0 when all run.",
            None,
            MetricType::Gauge,
        )?;
        metric.encode_gauge(&(stopped.len() as u64))?;
        let mut metric = encoder.encode_descriptor(
            "tally_shard_stopped",
            "1 for each shard stopped on this node, labelled with why: fsync_error, no_space, too_many_open_files, \
             io_error (its storage failed), invariant_broken, raft_stopped. Absent for shards that run.",
            None,
            MetricType::Gauge,
        )?;
        for failure in stopped {
            metric
                .encode_family(&[("shard", failure.shard.to_string()), ("cause", failure.cause.code().to_owned())])?
                .encode_gauge(&1u64)?;
        }

        let mut metric = encoder.encode_descriptor(
            "tally_shard_follower_lag",
            "On the shard's leader: log entries each follower is behind the leader's log.",
            None,
            MetricType::Gauge,
        )?;
        for status in shards {
            for (node, lag) in status.lag.iter().filter(|(node, _)| **node != node_id) {
                metric
                    .encode_family(&[("shard", status.shard.to_string()), ("node", node.to_string())])?
                    .encode_gauge(lag)?;
            }
        }

        for (name, help, value) in &self.extra {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            metric.encode_gauge(value)?;
        }
        Ok(())
    }
}

impl ClusterCollector {
    /// The node addition or removal this node runs (or ran last): whether
    /// one runs, and how many shards it has moved of how many.
    fn encode_membership(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let change = self.cluster.membership.as_ref();
        let running = change.is_some_and(|c| c.state == cluster::node::MembershipChangeState::Running);
        let mut metric = encoder.encode_descriptor(
            "tally_membership_change_running",
            "1 while a node addition or removal started on this node runs, else 0.",
            None,
            MetricType::Gauge,
        )?;
        metric.encode_gauge(&u64::from(running))?;
        let Some(change) = change else { return Ok(()) };
        let labels = [
            ("operation", change.operation.name().to_owned()),
            ("node", change.node.to_string()),
            ("state", change.state.name().to_owned()),
        ];
        for (name, help, value) in [
            (
                "tally_membership_change_shards_done",
                "Shards the last or running node addition or removal on this node has moved (or found moved).",
                change.shards_done,
            ),
            (
                "tally_membership_change_shards_total",
                "Shards the last or running node addition or removal on this node moves in all.",
                change.shards_total,
            ),
        ] {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            metric.encode_family(&labels)?.encode_gauge(&u64::from(value))?;
        }
        Ok(())
    }
}

impl Collector for ClusterCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        self.encode_write_path(&mut encoder)?;
        self.encode_peer(&mut encoder)?;
        self.encode_shards(&mut encoder)?;
        self.encode_snapshots(&mut encoder)?;
        self.encode_health(&mut encoder)?;
        self.encode_membership(&mut encoder)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use cluster::ShardStatus;

    use super::*;

    /// One sample line of the exposition.
    #[derive(Debug)]
    struct Sample {
        name: String,
        labels: Vec<(String, String)>,
        value: f64,
    }

    impl Sample {
        fn label(&self, key: &str) -> Option<&str> {
            self.labels.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
        }
    }

    fn is_label_name(name: &str) -> bool {
        is_metric_name(name) && !name.contains(':')
    }

    /// Parses `text` line by line as Prometheus text 0.0.4, panicking on
    /// any line that is not a HELP, a TYPE or a sample, on a family typed
    /// twice, and on a sample whose family has no TYPE or whose name does
    /// not fit its type (a counter's is the family name, ending `_total`; a
    /// histogram's adds `_bucket`, `_sum` or `_count`).
    fn parse(text: &str) -> Vec<Sample> {
        let mut types: BTreeMap<String, String> = BTreeMap::new();
        let mut samples = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# ") {
                let mut parts = rest.splitn(3, ' ');
                let keyword = parts.next().unwrap_or_default();
                let name = parts.next().unwrap_or_default();
                assert!(matches!(keyword, "HELP" | "TYPE"), "unknown comment: {line}");
                assert!(is_metric_name(name), "bad metric name in: {line}");
                if keyword == "TYPE" {
                    let kind = parts.next().unwrap_or_default();
                    assert!(matches!(kind, "counter" | "gauge" | "histogram"), "bad type: {line}");
                    assert!(types.insert(name.to_owned(), kind.to_owned()).is_none(), "typed twice: {line}");
                }
                continue;
            }
            assert!(!line.starts_with('#') && !line.is_empty(), "not a sample: {line:?}");
            samples.push(parse_sample(line));
        }
        for sample in &samples {
            let name = sample.name.as_str();
            let kind = types.get(name).map(String::as_str).or_else(|| {
                ["_bucket", "_sum", "_count"]
                    .iter()
                    .filter_map(|suffix| name.strip_suffix(suffix))
                    .find_map(|family| types.get(family).filter(|kind| *kind == "histogram"))
                    .map(String::as_str)
            });
            match kind {
                Some("counter") => assert!(name.ends_with("_total"), "counter without _total: {name}"),
                Some("gauge" | "histogram") => {}
                other => panic!("sample {name} has no family type ({other:?})"),
            }
        }
        samples
    }

    fn parse_sample(line: &str) -> Sample {
        let name_end = line.find(['{', ' ']).unwrap_or_else(|| panic!("no value: {line}"));
        let name = &line[..name_end];
        assert!(is_metric_name(name), "bad metric name: {line}");
        let mut rest = &line[name_end..];
        let mut labels = Vec::new();
        if let Some(inner) = rest.strip_prefix('{') {
            let mut chars = inner.char_indices().peekable();
            loop {
                let key_start = chars.peek().map(|(i, _)| *i).unwrap_or_else(|| panic!("open labels: {line}"));
                if inner[key_start..].starts_with('}') {
                    rest = &inner[key_start + 1..];
                    break;
                }
                let eq = inner[key_start..].find("=\"").unwrap_or_else(|| panic!("bad label: {line}")) + key_start;
                let key = &inner[key_start..eq];
                assert!(is_label_name(key), "bad label name {key:?}: {line}");
                while chars.peek().is_some_and(|(i, _)| *i <= eq + 1) {
                    chars.next();
                }
                let mut value = String::new();
                loop {
                    match chars.next() {
                        Some((_, '\\')) => match chars.next() {
                            Some((_, 'n')) => value.push('\n'),
                            Some((_, c @ ('\\' | '"'))) => value.push(c),
                            other => panic!("bad escape {other:?}: {line}"),
                        },
                        Some((_, '"')) => break,
                        Some((_, c)) => value.push(c),
                        None => panic!("open label value: {line}"),
                    }
                }
                labels.push((key.to_owned(), value));
                if chars.peek().is_some_and(|(_, c)| *c == ',') {
                    chars.next();
                }
            }
        }
        let value = rest.strip_prefix(' ').unwrap_or_else(|| panic!("no space before value: {line}"));
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            other => other.parse().unwrap_or_else(|e| panic!("bad value {other:?} ({e}): {line}")),
        };
        Sample { name: name.to_owned(), labels, value }
    }

    fn find<'a>(samples: &'a [Sample], name: &str, labels: &[(&str, &str)]) -> Option<&'a Sample> {
        samples.iter().find(|s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == Some(*v)))
    }

    /// Every histogram's buckets rise with `le`, end at +Inf, and +Inf
    /// equals `_count`. Returns the histograms checked.
    fn check_histograms(samples: &[Sample]) -> Vec<String> {
        let mut checked = Vec::new();
        for count in samples.iter().filter(|s| s.name.ends_with("_count")) {
            let base = count.name.trim_end_matches("_count");
            let bucket_name = format!("{base}_bucket");
            let buckets: Vec<&Sample> = samples
                .iter()
                .filter(|s| s.name == bucket_name)
                .filter(|s| count.labels.iter().all(|(k, v)| s.label(k) == Some(v)))
                .collect();
            assert!(!buckets.is_empty(), "{base} has no buckets");
            let mut previous = (f64::NEG_INFINITY, 0.0);
            for bucket in &buckets {
                let le = bucket.label("le").unwrap_or_else(|| panic!("bucket without le: {bucket:?}"));
                let le: f64 = if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap_or_else(|e| panic!("{e}")) };
                assert!(le > previous.0, "{base}: bounds rise ({le} after {})", previous.0);
                assert!(bucket.value >= previous.1, "{base}: buckets are cumulative");
                previous = (le, bucket.value);
            }
            assert_eq!(previous.0, f64::INFINITY, "{base} ends at +Inf");
            assert_eq!(previous.1, count.value, "{base}: +Inf equals _count");
            checked.push(base.to_owned());
        }
        checked
    }

    fn shard_status(shard: u32, leader: Option<NodeId>, lag: &[(NodeId, u64)]) -> ShardStatus {
        ShardStatus {
            shard,
            leader,
            role: "Leader".into(),
            term: 3,
            last_log_index: Some(42),
            committed_index: Some(41),
            applied_index: Some(40),
            snapshot_index: None,
            purged_index: None,
            lag: lag.iter().copied().collect(),
            voters: vec![1, 2, 3],
            learners: Vec::new(),
            membership_term: 0,
            failure: None,
        }
    }

    fn snapshot() -> ClusterSnapshot {
        let mut stats = NodeStats {
            ticks_proposed: 7,
            write_path_off_thread: 2,
            snapshot_transfers_inbound: 3,
            snapshot_inbound_bytes: 4096,
            snapshot_transfers_dropped: 997,
            ..NodeStats::default()
        };
        stats.peer.handshakes_refused = 11;
        for size in [1, 1, 3, 200, 5_000] {
            stats.batch_size.record(size);
        }
        for latency_us in [10, 300, 1_500, 90_000, u64::from(u32::MAX)] {
            stats.commit_latency_us.record(latency_us);
            stats.fsync_latency_us.record(latency_us / 2);
        }
        for lag_ms in [0, 5, 120, 300] {
            stats.expiry_lag_ms.record(lag_ms);
        }
        ClusterSnapshot {
            node_id: 1,
            stats,
            status: ClusterStatus {
                node_id: 1,
                nodes: BTreeMap::new(),
                shards: vec![shard_status(0, Some(1), &[(1, 0), (2, 0), (3, 5)]), shard_status(1, Some(2), &[]), {
                    let mut stopped = shard_status(2, None, &[]);
                    stopped.failure = Some(cluster::ShardFailure {
                        shard: 2,
                        cause: cluster::FailureCause::Storage(engine::error::StorageFault::NoSpace),
                        detail: "write to WAL segment 1 failed: No space left on device (os error 28)".into(),
                        at_unix_ms: 1,
                    });
                    stopped
                }],
            },
            live_holds: Some(12),
            snapshots: vec![
                SnapshotStats {
                    shard: 0,
                    built: 3,
                    fallbacks: 1,
                    last_build_us: 250_000,
                    installed: 0,
                    invariant_checks: 4,
                    invariant_failures: 1,
                },
                SnapshotStats { shard: 1, built: 0, installed: 2, ..SnapshotStats::default() },
            ],
            log_time_behind_wall_ms: vec![1_500, -2],
            membership: Some(cluster::node::MembershipChange {
                operation: cluster::node::MembershipOperation::Add,
                node: 4,
                addr: Some("127.0.0.1:7004".into()),
                state: cluster::node::MembershipChangeState::Running,
                shard: Some(1),
                shards_done: 1,
                shards_total: 4,
                error: None,
            }),
        }
    }

    #[test]
    fn observed_requests_appear_with_their_labels() {
        let metrics = Metrics::new();
        metrics.observe_request("/v1/items/{sku}", "GET", 200, "ok", Duration::from_millis(3));
        metrics.observe_request("/v1/items/{sku}", "get", 200, "ok", Duration::from_millis(30));
        metrics.observe_request("/v1/reservations", "POST", 409, "insufficient_stock", Duration::from_micros(800));
        metrics.observe_outcome("accepted");
        metrics.observe_outcome("accepted");
        metrics.observe_outcome("insufficient_stock");
        let samples = parse(&metrics.render_snapshot(&snapshot(), &[]));

        let ok = [("route", "/v1/items/{sku}"), ("method", "GET"), ("status", "200"), ("code", "ok")];
        assert_eq!(find(&samples, "tally_http_requests_total", &ok).map(|s| s.value), Some(2.0));
        let refused =
            [("route", "/v1/reservations"), ("method", "POST"), ("status", "409"), ("code", "insufficient_stock")];
        assert_eq!(find(&samples, "tally_http_requests_total", &refused).map(|s| s.value), Some(1.0));
        let route = [("route", "/v1/items/{sku}"), ("method", "GET")];
        let count = find(&samples, "tally_http_request_duration_seconds_count", &route).map(|s| s.value);
        assert_eq!(count, Some(2.0));
        let sum = find(&samples, "tally_http_request_duration_seconds_sum", &route).map_or(0.0, |s| s.value);
        assert!((sum - 0.033).abs() < 1e-9, "sum {sum}");
        let le_5ms = [("route", "/v1/items/{sku}"), ("le", "0.005")];
        assert_eq!(find(&samples, "tally_http_request_duration_seconds_bucket", &le_5ms).map(|s| s.value), Some(1.0));
        assert_eq!(find(&samples, "tally_outcomes_total", &[("code", "accepted")]).map(|s| s.value), Some(2.0));
        assert_eq!(
            find(&samples, "tally_outcomes_total", &[("code", "insufficient_stock")]).map(|s| s.value),
            Some(1.0)
        );
    }

    #[test]
    fn cluster_figures_and_extra_gauges_are_rendered() {
        let metrics = Metrics::new();
        let text = metrics.render_snapshot(
            &snapshot(),
            &[("tally_event_subscribers", "Live event stream subscribers.", 3), ("bad name", "left out", 1)],
        );
        let samples = parse(&text);
        let value = |name: &str, labels: &[(&str, &str)]| find(&samples, name, labels).map(|s| s.value);
        assert_eq!(value("tally_live_holds", &[]), Some(12.0));
        assert_eq!(value("tally_proposer_ticks_total", &[]), Some(7.0));
        assert_eq!(value("tally_write_path_off_thread_total", &[]), Some(2.0));
        assert_eq!(value("tally_peer_handshakes_refused_total", &[]), Some(11.0));
        assert_eq!(value("tally_snapshot_transfers_inbound", &[]), Some(3.0));
        assert_eq!(value("tally_snapshot_inbound_bytes", &[]), Some(4096.0));
        assert_eq!(value("tally_snapshot_transfers_inbound_dropped_total", &[]), Some(997.0));
        assert_eq!(value("tally_shard_leader", &[("shard", "0")]), Some(1.0));
        assert_eq!(value("tally_shard_leader", &[("shard", "1")]), Some(0.0));
        assert_eq!(value("tally_shard_applied_index", &[("shard", "1")]), Some(40.0));
        assert_eq!(value("tally_shard_commit_index", &[("shard", "0")]), Some(41.0));
        assert_eq!(value("tally_shard_follower_lag", &[("shard", "0"), ("node", "3")]), Some(5.0));
        assert_eq!(value("tally_membership_change_running", &[]), Some(1.0));
        let change = [("operation", "add"), ("node", "4"), ("state", "running")];
        assert_eq!(value("tally_membership_change_shards_done", &change), Some(1.0));
        assert_eq!(value("tally_membership_change_shards_total", &change), Some(4.0));
        assert_eq!(value("tally_shard_snapshots_built_total", &[("shard", "0")]), Some(3.0));
        assert_eq!(value("tally_shard_snapshots_built_total", &[("shard", "1")]), Some(0.0));
        assert_eq!(value("tally_shard_snapshot_fallbacks_total", &[("shard", "0")]), Some(1.0));
        assert_eq!(value("tally_shard_snapshot_last_build_seconds", &[("shard", "0")]), Some(0.25));
        assert_eq!(value("tally_shard_log_time_behind_wall_seconds", &[("shard", "0")]), Some(1.5));
        assert_eq!(value("tally_shard_log_time_behind_wall_seconds", &[("shard", "1")]), Some(-0.002));
        assert_eq!(value("tally_shard_snapshots_installed_total", &[("shard", "1")]), Some(2.0));
        assert_eq!(value("tally_shard_invariant_checks_total", &[("shard", "0")]), Some(4.0));
        assert_eq!(value("tally_shard_invariant_failures_total", &[("shard", "0")]), Some(1.0));
        assert_eq!(value("tally_shard_invariant_failures_total", &[("shard", "1")]), Some(0.0));
        assert_eq!(value("tally_shards_stopped", &[]), Some(1.0));
        assert_eq!(value("tally_shard_stopped", &[("shard", "2"), ("cause", "no_space")]), Some(1.0));
        assert_eq!(value("tally_shard_stopped", &[("shard", "0")]), None, "a running shard has no sample");
        assert!(text.contains("# TYPE tally_shard_snapshots_built_total counter\n"));
        assert!(text.contains("# TYPE tally_shard_snapshot_last_build_seconds gauge\n"));
        assert_eq!(value("tally_shard_follower_lag", &[("shard", "0"), ("node", "1")]), None, "not the leader itself");
        assert_eq!(value("tally_event_subscribers", &[]), Some(3.0));
        assert!(!text.contains("bad name"));
        assert!(text.contains("# TYPE tally_commit_latency_seconds histogram\n"));
        assert!(text.contains("# TYPE tally_proposer_ticks_total counter\n"));

        let mut histograms = check_histograms(&samples);
        histograms.sort();
        assert_eq!(
            histograms,
            [
                "tally_commit_latency_seconds",
                "tally_expiry_lag_seconds",
                "tally_fsync_latency_seconds",
                "tally_proposer_batch_size",
            ]
        );
        assert_eq!(value("tally_proposer_batch_size_count", &[]), Some(5.0));
        assert_eq!(value("tally_proposer_batch_size_sum", &[]), Some(5_205.0));
        // 1, 1 and 3 are at most 4; 5000 is past the last bound (4096).
        assert_eq!(value("tally_proposer_batch_size_bucket", &[("le", "4.0")]), Some(3.0));
        assert_eq!(value("tally_proposer_batch_size_bucket", &[("le", "4096.0")]), Some(4.0));
        assert_eq!(value("tally_expiry_lag_seconds_sum", &[]), Some(0.425));
    }

    #[test]
    fn classic_buckets_fold_the_ends_and_add_up_to_the_count() {
        let mut buckets = Log2Buckets::default();
        for value in [0, 1, 2, 16, 17, 1_000, 1 << 40] {
            buckets.record(value);
        }
        let classic = classic_buckets(&buckets, 1..=10, 1.0);
        let bounds: Vec<f64> = classic.iter().map(|(bound, _)| *bound).collect();
        let mut expected: Vec<f64> = (1..=10).map(|exponent| f64::from(1u32 << exponent)).collect();
        expected.push(f64::INFINITY);
        assert_eq!(bounds, expected);
        // 0, 1, 2 fold into le=2; 16 is in le=16, 17 in le=32, 1000 in
        // le=1024; 2^40 is past every bound.
        let counts: Vec<u64> = classic.iter().map(|(_, count)| *count).collect();
        assert_eq!(counts, [3, 0, 0, 1, 1, 0, 0, 0, 0, 1, 1]);
        assert_eq!(counts.iter().sum::<u64>(), buckets.count());

        let empty = classic_buckets(&Log2Buckets::default(), 0..=3, 1e-6);
        assert_eq!(empty.len(), 5);
        assert!(empty.iter().all(|(_, count)| *count == 0));
        assert!((empty[3].0 - 8e-6).abs() < 1e-15);
    }

    #[test]
    fn openmetrics_counters_get_their_total_and_units_and_eof_go() {
        let openmetrics = "# HELP a_requests Requests.\n# TYPE a_requests counter\na_requests_total{x=\"1\"} 3\n\
                           # HELP a_wait_seconds Wait.\n# TYPE a_wait_seconds histogram\n# UNIT a_wait_seconds seconds\n\
                           a_wait_seconds_count 0\n# HELP a_odd Odd.\n# TYPE a_odd unknown\na_odd 1\n# EOF\n";
        assert_eq!(
            to_prometheus_text(openmetrics),
            "# HELP a_requests_total Requests.\n# TYPE a_requests_total counter\na_requests_total{x=\"1\"} 3\n\
             # HELP a_wait_seconds Wait.\n# TYPE a_wait_seconds histogram\na_wait_seconds_count 0\n\
             # HELP a_odd Odd.\n# TYPE a_odd untyped\na_odd 1\n"
        );
    }

    #[test]
    fn label_sets_past_the_limit_fold_into_other() {
        let metrics = Metrics::new();
        for n in 0..REQUEST_SERIES_MAX + 50 {
            metrics.observe_request(&format!("/raw/{n}"), "BREW", 404, "not_found", Duration::from_millis(1));
        }
        // An existing label set still counts as itself.
        metrics.observe_request("/raw/0", "BREW", 404, "not_found", Duration::from_millis(1));
        let samples = parse(&metrics.render_snapshot(&snapshot(), &[]));
        let requests: Vec<&Sample> = samples.iter().filter(|s| s.name == "tally_http_requests_total").collect();
        assert_eq!(requests.len(), REQUEST_SERIES_MAX + 1);
        let other = [("route", "other"), ("method", "other"), ("code", "other")];
        assert_eq!(find(&samples, "tally_http_requests_total", &other).map(|s| s.value), Some(50.0));
        assert_eq!(find(&samples, "tally_http_requests_total", &[("route", "/raw/0")]).map(|s| s.value), Some(2.0));
    }

    #[test]
    fn label_values_are_cut_and_escaped() {
        let metrics = Metrics::new();
        let long = "é".repeat(LABEL_VALUE_LEN_MAX);
        metrics.observe_request(&long, "GET", 200, "a\"quote\\and\nnewline", Duration::ZERO);
        let samples = parse(&metrics.render_snapshot(&snapshot(), &[("tally_x", "multi\nline \"help\"", 1)]));
        let request = find(&samples, "tally_http_requests_total", &[("method", "GET")])
            .unwrap_or_else(|| panic!("request counted"));
        assert_eq!(request.label("code"), Some("a\"quote\\and\nnewline"));
        assert!(request.label("route").is_some_and(|route| route.len() <= LABEL_VALUE_LEN_MAX));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_running_node_renders_every_family() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("addr: {e}")).to_string();
        let config = cluster::ClusterConfig {
            node_id: 1,
            listen: addr.clone(),
            members: vec![cluster::Member { id: 1, addr }],
            shards: 2,
            data_dir: dir.path().to_path_buf(),
            shard_threads: 1,
            heartbeat_ms: 50,
            election_timeout_min_ms: 150,
            election_timeout_max_ms: 300,
            ..cluster::ClusterConfig::default()
        };
        let node = Node::start_on(config, listener).await.unwrap_or_else(|e| panic!("start: {e}"));
        let upsert = engine::testing::upsert("metrics", "w1", 5, 0);
        // Submit retries through the first election.
        let outcome = node.submit(upsert).await.unwrap_or_else(|e| panic!("submit: {e}"));
        assert!(!outcome.is_refused(), "refused: {outcome:?}");

        let metrics = Metrics::new();
        let text = metrics.render(&node, &[("tally_event_subscribers", "Subscribers.", 0)]).await;
        let samples = parse(&text);
        assert_eq!(check_histograms(&samples).len(), 4);
        let value = |name: &str, labels: &[(&str, &str)]| find(&samples, name, labels).map(|s| s.value);
        assert_eq!(value("tally_live_holds", &[]), Some(0.0));
        let shard = engine::shard_of("metrics", 2).to_string();
        assert_eq!(value("tally_shard_leader", &[("shard", &shard)]), Some(1.0));
        assert!(value("tally_shard_applied_index", &[("shard", &shard)]).is_some_and(|index| index >= 1.0));
        assert!(value("tally_proposer_batch_size_count", &[]).is_some_and(|count| count >= 1.0));
        assert!(value("tally_commit_latency_seconds_count", &[]).is_some_and(|count| count >= 1.0));
        assert!(value("tally_fsync_latency_seconds_count", &[]).is_some_and(|count| count >= 1.0));
        assert_eq!(value("tally_event_subscribers", &[]), Some(0.0));
        // Every shard has its snapshot families, before any snapshot.
        assert_eq!(value("tally_shard_snapshots_built_total", &[("shard", &shard)]), Some(0.0));
        assert_eq!(value("tally_shard_snapshot_fallbacks_total", &[("shard", &shard)]), Some(0.0));
        assert_eq!(value("tally_shard_snapshot_last_build_seconds", &[("shard", &shard)]), Some(0.0));
        assert_eq!(value("tally_shard_invariant_checks_total", &[("shard", &shard)]), Some(0.0));
        assert_eq!(value("tally_shards_stopped", &[]), Some(0.0));
        // The peer port's families, zero on a lone node nobody attacked.
        for name in [
            "tally_peer_handshakes_refused_total",
            "tally_peer_connections_refused_total",
            "tally_peer_connections_idle_closed_total",
            "tally_snapshot_transfers_inbound_dropped_total",
            "tally_snapshot_transfers_inbound",
            "tally_snapshot_inbound_bytes",
        ] {
            assert_eq!(value(name, &[]), Some(0.0), "{name}");
        }
        node.shutdown().await;
    }
}
