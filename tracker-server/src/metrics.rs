//! Counters for `/metrics`, rendered in the Prometheus text format.
//!
//! Hand-rolled rather than a metrics crate: a few families, and label values that come only
//! from bounded sets (matched route templates, a fixed list of methods, status codes, store
//! method names), so a client cannot grow the map by sending odd paths or methods.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::http::Method;

use crate::limits::Scope;
use crate::process;
use crate::store::{Counts, PoolStatus};

#[derive(Debug, Default)]
pub struct Metrics {
    /// (route, method, status) → count.
    requests: Mutex<BTreeMap<(String, &'static str, u16), u64>>,
    /// (route, method) → time from the request's arrival to its response head.
    latency: Mutex<BTreeMap<(String, &'static str), Histogram>>,
    /// Store method → time per call, pool wait included (sqlx reports no separate wait).
    store_calls: Mutex<BTreeMap<&'static str, Histogram>>,
    /// Store method → calls that failed.
    store_errors: Mutex<BTreeMap<&'static str, u64>>,
    announces: AtomicU64,
    connections: Arc<ConnectionStats>,
    /// 429 answers by [`Scope`], indexed as [`Scope::ALL`].
    rate_limited: [AtomicU64; 3],
    /// Introductions and the relay (issue 15).
    traversal: Arc<TraversalStats>,
}

/// How a relay join ended, for `torrentguard_relay_sessions_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayOutcome {
    /// Both sides joined: a session ran.
    Paired,
    /// The other side did not join in time.
    Timeout,
    /// Refused: unknown token, not a side of it, over a cap, or not the relay's handshake.
    Refused,
}

impl RelayOutcome {
    pub const ALL: [RelayOutcome; 3] = [
        RelayOutcome::Paired,
        RelayOutcome::Timeout,
        RelayOutcome::Refused,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RelayOutcome::Paired => "paired",
            RelayOutcome::Timeout => "timeout",
            RelayOutcome::Refused => "refused",
        }
    }
}

/// The NAT traversal figures: introductions made, and the relay's sessions and bytes.
#[derive(Debug, Default)]
pub struct TraversalStats {
    /// Indexed: punch, relay.
    introductions: [AtomicU64; 2],
    relay_bytes: AtomicU64,
    /// Indexed as [`RelayOutcome::ALL`]; a pair counts once as paired.
    relay_sessions: [AtomicU64; 3],
    relay_active: AtomicU64,
    relay_waiting: AtomicU64,
    long_polls: AtomicU64,
}

impl TraversalStats {
    pub fn record_introduction(&self, via: torrentguard_protocol::api::IntroVia) {
        let i = match via {
            torrentguard_protocol::api::IntroVia::Punch => 0,
            torrentguard_protocol::api::IntroVia::Relay => 1,
        };
        self.introductions[i].fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_relay_bytes(&self, n: u64) {
        self.relay_bytes.fetch_add(n, Ordering::Relaxed);
    }

    pub fn relay_bytes(&self) -> u64 {
        self.relay_bytes.load(Ordering::Relaxed)
    }

    pub fn record_relay_session(&self, outcome: RelayOutcome) {
        let i = RelayOutcome::ALL
            .iter()
            .position(|o| *o == outcome)
            .unwrap_or(0);
        self.relay_sessions[i].fetch_add(1, Ordering::Relaxed);
    }

    pub fn relay_session_started(&self) {
        self.relay_active.fetch_add(1, Ordering::Relaxed);
    }

    pub fn relay_session_ended(&self) {
        self.relay_active.fetch_sub(1, Ordering::Relaxed);
    }

    /// A long-poll of `GET /introductions` started (`true`) or ended (`false`) waiting.
    pub fn long_poll(&self, started: bool) {
        if started {
            self.long_polls.fetch_add(1, Ordering::Relaxed);
        } else {
            self.long_polls.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// A first side started (`true`) or stopped (`false`) waiting for the second.
    pub fn relay_waiting(&self, started: bool) {
        if started {
            self.relay_waiting.fetch_add(1, Ordering::Relaxed);
        } else {
            self.relay_waiting.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn render(&self, out: &mut String) {
        let name = "torrentguard_introductions_total";
        header(
            out,
            name,
            "counter",
            "Introductions made, by path asked for.",
        );
        for (via, n) in ["punch", "relay"].iter().zip(&self.introductions) {
            let _ = writeln!(out, "{name}{{via=\"{via}\"}} {}", n.load(Ordering::Relaxed));
        }
        single(
            out,
            "torrentguard_introductions_long_polls",
            "gauge",
            "Long-polls of GET /introductions waiting now.",
            self.long_polls.load(Ordering::Relaxed),
        );
        single(
            out,
            "torrentguard_relay_bytes_total",
            "counter",
            "Bytes the relay forwarded, both directions.",
            self.relay_bytes.load(Ordering::Relaxed),
        );
        let name = "torrentguard_relay_sessions_total";
        header(
            out,
            name,
            "counter",
            "Relay joins by outcome: paired (a session, counted once), timeout, refused.",
        );
        for (outcome, n) in RelayOutcome::ALL.iter().zip(&self.relay_sessions) {
            let _ = writeln!(
                out,
                "{name}{{outcome=\"{}\"}} {}",
                outcome.as_str(),
                n.load(Ordering::Relaxed)
            );
        }
        single(
            out,
            "torrentguard_relay_sessions_active",
            "gauge",
            "Relay sessions forwarding bytes now.",
            self.relay_active.load(Ordering::Relaxed),
        );
        single(
            out,
            "torrentguard_relay_joins_waiting",
            "gauge",
            "Relay joins waiting for the other side of their introduction.",
            self.relay_waiting.load(Ordering::Relaxed),
        );
    }
}

/// Upper bounds (seconds) of the latency buckets: from a cached answer to a stalled database.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A Prometheus histogram over [`BUCKETS`]; held under its map's lock, so plain integers.
#[derive(Debug, Default, Clone)]
pub struct Histogram {
    /// Observations at or under each bound (not cumulative; summed when rendered).
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum_nanos: u128,
}

impl Histogram {
    fn observe(&mut self, took: Duration) {
        let secs = took.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|&b| secs <= b) {
            self.buckets[i] += 1;
        }
        self.count += 1;
        self.sum_nanos += took.as_nanos();
    }

    /// The `_bucket`, `_sum` and `_count` lines, with `labels` (`k="v",…`, maybe empty).
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (bound, n) in BUCKETS.iter().zip(self.buckets) {
            cumulative += n;
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let sum = self.sum_nanos as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

/// A poisoned lock only means another request panicked mid-update; the figures are still
/// usable, so keep counting.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `# HELP` and `# TYPE` of a family.
fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A family of one unlabelled sample.
fn single(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    header(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

/// The connection table's figures (see `connections.rs`) and the TLS handshakes of the accept
/// loop (`server.rs`), kept here so `/metrics` shows them.
#[derive(Debug, Default)]
pub struct ConnectionStats {
    open: AtomicU64,
    evicted: AtomicU64,
    refused: AtomicU64,
    idle_closed: AtomicU64,
    handshakes: AtomicU64,
    handshake_errors: AtomicU64,
    handshake_timeouts: AtomicU64,
}

/// Why a TLS handshake did not complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// The client sent something TLS refuses (no common version, a bad certificate, garbage).
    Error,
    /// It did not finish within the handshake timeout.
    Timeout,
}

impl ConnectionStats {
    pub fn set_open(&self, n: usize) {
        self.open.store(n as u64, Ordering::Relaxed);
    }
    pub fn open(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }
    pub fn record_evicted(&self) {
        self.evicted.fetch_add(1, Ordering::Relaxed);
    }
    pub fn record_refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }
    pub fn record_idle_closed(&self) {
        self.idle_closed.fetch_add(1, Ordering::Relaxed);
    }
    pub fn record_handshake(&self) {
        self.handshakes.fetch_add(1, Ordering::Relaxed);
    }
    pub fn record_handshake_failure(&self, why: HandshakeFailure) {
        let counter = match why {
            HandshakeFailure::Error => &self.handshake_errors,
            HandshakeFailure::Timeout => &self.handshake_timeouts,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String) {
        let series: [(&str, &str, &str, &AtomicU64); 5] = [
            (
                "open_connections",
                "gauge",
                "TLS connections open, handshakes included.",
                &self.open,
            ),
            (
                "connections_evicted_total",
                "counter",
                "Idle connections closed to make room for a new one at a connection cap.",
                &self.evicted,
            ),
            (
                "connections_refused_total",
                "counter",
                "New connections closed at once: every connection of their address, or every connection, was busy.",
                &self.refused,
            ),
            (
                "connections_idle_closed_total",
                "counter",
                "Connections closed for sending no request within the first-request or idle timeout.",
                &self.idle_closed,
            ),
            (
                "tls_handshakes_total",
                "counter",
                "TLS handshakes completed.",
                &self.handshakes,
            ),
        ];
        for (name, kind, help, value) in series {
            let name = format!("torrentguard_tracker_{name}");
            single(out, &name, kind, help, value.load(Ordering::Relaxed));
        }
        let name = "torrentguard_tracker_tls_handshake_failures_total";
        header(
            out,
            name,
            "counter",
            "TLS handshakes that failed, by reason (error: refused by TLS; timeout: not finished in time).",
        );
        for (reason, value) in [
            ("error", &self.handshake_errors),
            ("timeout", &self.handshake_timeouts),
        ] {
            let _ = writeln!(
                out,
                "{name}{{reason=\"{reason}\"}} {}",
                value.load(Ordering::Relaxed)
            );
        }
    }
}

/// A method label from a fixed set, so custom methods cannot add series.
fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}

/// Request counts by (route, method, status), as the dashboard reads them.
pub type RequestCounts = BTreeMap<(String, &'static str, u16), u64>;

impl Metrics {
    /// The introduction and relay figures, shared with the relay.
    pub fn traversal(&self) -> &Arc<TraversalStats> {
        &self.traversal
    }

    /// The connection figures, shared with the connection table.
    pub fn connections(&self) -> &Arc<ConnectionStats> {
        &self.connections
    }

    /// `route` is the matched route template, or `None` for a request no route matched;
    /// `took` is the time until the response head was ready.
    pub fn record_request(
        &self,
        route: Option<&str>,
        method: &Method,
        status: u16,
        took: Duration,
    ) {
        let route = route.unwrap_or("unmatched");
        let method = method_label(method);
        *lock(&self.requests)
            .entry((route.to_string(), method, status))
            .or_insert(0) += 1;
        lock(&self.latency)
            .entry((route.to_string(), method))
            .or_default()
            .observe(took);
    }

    /// One call of store method `method` (a name from the `Store` trait) that took `took`.
    pub fn record_store_call(&self, method: &'static str, took: Duration, ok: bool) {
        lock(&self.store_calls)
            .entry(method)
            .or_default()
            .observe(took);
        if !ok {
            *lock(&self.store_errors).entry(method).or_insert(0) += 1;
        }
    }

    pub fn record_announce(&self) {
        self.announces.fetch_add(1, Ordering::Relaxed);
    }

    /// A copy of the request counts.
    pub fn request_counts(&self) -> RequestCounts {
        lock(&self.requests).clone()
    }

    /// The whole exposition. `pool` is the store's connection pool, where it has one.
    pub fn render(&self, counts: Counts, pool: Option<PoolStatus>) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail; the results are ignored for that reason.
        self.render_requests(&mut out);
        single(
            &mut out,
            "torrentguard_tracker_live_peers",
            "gauge",
            "Peers that announced within the TTL.",
            counts.live_peers,
        );
        single(
            &mut out,
            "torrentguard_tracker_files",
            "gauge",
            "Registered manifests.",
            counts.files,
        );
        single(
            &mut out,
            "torrentguard_tracker_announces_total",
            "counter",
            "Announces accepted since start.",
            self.announces.load(Ordering::Relaxed),
        );
        self.connections.render(&mut out);
        self.render_store(&mut out, pool);
        self.render_rate_limited(&mut out);
        self.traversal.render(&mut out);
        process::render(&mut out);
        out
    }

    fn render_requests(&self, out: &mut String) {
        let name = "torrentguard_tracker_http_requests_total";
        header(
            out,
            name,
            "counter",
            "HTTP requests by matched route, method and status.",
        );
        for ((route, method, status), n) in lock(&self.requests).iter() {
            let route = escape_label(route);
            let _ = writeln!(
                out,
                "{name}{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}} {n}"
            );
        }
        let name = "torrentguard_tracker_http_request_duration_seconds";
        header(
            out,
            name,
            "histogram",
            "Time from a request's arrival to its response head, by matched route and method.",
        );
        for ((route, method), h) in lock(&self.latency).iter() {
            let labels = format!("route=\"{}\",method=\"{method}\"", escape_label(route));
            h.render(out, name, &labels);
        }
    }

    fn render_store(&self, out: &mut String, pool: Option<PoolStatus>) {
        let name = "torrentguard_tracker_store_call_duration_seconds";
        header(
            out,
            name,
            "histogram",
            "Time per store call by method, waiting for a pooled connection included.",
        );
        for (method, h) in lock(&self.store_calls).iter() {
            h.render(out, name, &format!("method=\"{method}\""));
        }
        let name = "torrentguard_tracker_store_errors_total";
        header(out, name, "counter", "Store calls that failed, by method.");
        for (method, n) in lock(&self.store_errors).iter() {
            let _ = writeln!(out, "{name}{{method=\"{method}\"}} {n}");
        }
        if let Some(pool) = pool {
            let name = "torrentguard_tracker_db_pool_connections";
            header(
                out,
                name,
                "gauge",
                "Database connections of the pool, by state (idle or in_use).",
            );
            let _ = writeln!(out, "{name}{{state=\"idle\"}} {}", pool.idle);
            let _ = writeln!(
                out,
                "{name}{{state=\"in_use\"}} {}",
                pool.size.saturating_sub(pool.idle)
            );
            single(
                out,
                "torrentguard_tracker_db_pool_max_connections",
                "gauge",
                "The most connections the pool opens.",
                pool.max,
            );
        }
    }

    /// A request refused with 429: `torrentguard_tracker_rate_limited_total{scope}`.
    pub fn record_rate_limited(&self, scope: Scope) {
        let i = Scope::ALL.iter().position(|s| *s == scope).unwrap_or(0);
        self.rate_limited[i].fetch_add(1, Ordering::Relaxed);
    }

    fn render_rate_limited(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP torrentguard_tracker_rate_limited_total Requests refused with 429, by limit: per-identity or per-address write rate, or the concurrency bound."
        );
        let _ = writeln!(
            out,
            "# TYPE torrentguard_tracker_rate_limited_total counter"
        );
        for (scope, n) in Scope::ALL.iter().zip(&self.rate_limited) {
            let _ = writeln!(
                out,
                "torrentguard_tracker_rate_limited_total{{scope=\"{}\"}} {}",
                scope.as_str(),
                n.load(Ordering::Relaxed)
            );
        }
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn renders_every_series() {
        let m = Metrics::default();
        m.record_request(Some("/api/v1/files"), &Method::GET, 200, MS);
        m.record_request(Some("/api/v1/files"), &Method::GET, 200, 3 * MS);
        m.record_request(None, &Method::from_bytes(b"BREW").unwrap(), 404, MS);
        m.record_announce();
        let text = m.render(
            Counts {
                files: 3,
                live_peers: 2,
            },
            None,
        );
        assert!(text.contains(
            "torrentguard_tracker_http_requests_total{route=\"/api/v1/files\",method=\"GET\",status=\"200\"} 2"
        ));
        assert!(text.contains(
            "torrentguard_tracker_http_requests_total{route=\"unmatched\",method=\"other\",status=\"404\"} 1"
        ));
        assert!(text.contains("torrentguard_tracker_live_peers 2\n"));
        assert!(text.contains("torrentguard_tracker_files 3\n"));
        assert!(text.contains("torrentguard_tracker_announces_total 1\n"));
        assert!(text.contains("torrentguard_tracker_rate_limited_total{scope=\"identity\"} 0\n"));
        m.connections().set_open(7);
        m.connections().record_evicted();
        m.connections().record_handshake();
        m.connections()
            .record_handshake_failure(HandshakeFailure::Timeout);
        m.record_rate_limited(Scope::Address);
        let text = m.render(
            Counts {
                files: 0,
                live_peers: 0,
            },
            Some(PoolStatus {
                size: 3,
                idle: 1,
                max: 8,
            }),
        );
        assert!(text.contains("torrentguard_tracker_open_connections 7\n"));
        assert!(text.contains("torrentguard_tracker_connections_evicted_total 1\n"));
        assert!(text.contains("torrentguard_tracker_connections_refused_total 0\n"));
        assert!(text.contains("torrentguard_tracker_tls_handshakes_total 1\n"));
        assert!(
            text.contains(
                "torrentguard_tracker_tls_handshake_failures_total{reason=\"timeout\"} 1\n"
            )
        );
        assert!(
            text.contains(
                "torrentguard_tracker_tls_handshake_failures_total{reason=\"error\"} 0\n"
            )
        );
        assert!(text.contains("torrentguard_tracker_rate_limited_total{scope=\"address\"} 1\n"));
        assert!(text.contains("torrentguard_tracker_db_pool_connections{state=\"in_use\"} 2\n"));
        assert!(text.contains("torrentguard_tracker_db_pool_max_connections 8\n"));
    }

    #[test]
    fn latency_histograms_are_cumulative_by_route_and_method() {
        let m = Metrics::default();
        m.record_request(Some("/a"), &Method::GET, 200, Duration::from_micros(200));
        m.record_request(Some("/a"), &Method::GET, 500, 20 * MS);
        m.record_request(Some("/a"), &Method::GET, 200, Duration::from_secs(60));
        m.record_store_call("announce", 2 * MS, true);
        m.record_store_call("announce", 2 * MS, false);
        let text = m.render(
            Counts {
                files: 0,
                live_peers: 0,
            },
            None,
        );
        let h = "torrentguard_tracker_http_request_duration_seconds";
        let labels = "route=\"/a\",method=\"GET\"";
        assert!(
            text.contains(&format!("{h}_bucket{{{labels},le=\"0.0005\"}} 1\n")),
            "{text}"
        );
        assert!(
            text.contains(&format!("{h}_bucket{{{labels},le=\"0.025\"}} 2\n")),
            "{text}"
        );
        assert!(
            text.contains(&format!("{h}_bucket{{{labels},le=\"10\"}} 2\n")),
            "{text}"
        );
        assert!(
            text.contains(&format!("{h}_bucket{{{labels},le=\"+Inf\"}} 3\n")),
            "{text}"
        );
        assert!(
            text.contains(&format!("{h}_count{{{labels}}} 3\n")),
            "{text}"
        );
        assert!(
            text.contains(&format!("{h}_sum{{{labels}}} 60.0202\n")),
            "{text}"
        );
        let s = "torrentguard_tracker_store_call_duration_seconds";
        assert!(
            text.contains(&format!("{s}_count{{method=\"announce\"}} 2\n")),
            "{text}"
        );
        assert!(text.contains("torrentguard_tracker_store_errors_total{method=\"announce\"} 1\n"));
        assert!(text.contains("# TYPE process_open_fds gauge\n"), "{text}");
    }
}
